"""The experiment engine: training, evaluation and what they are built from.

* ``train``: :func:`fsanet.engine.train.train` (``fsanet train``): iteration-based, resumable, DDP.
* ``evaluate``: :func:`fsanet.engine.evaluate.evaluate` (``fsanet eval``): mmseg metrics and reports.
* ``inference`` (whole / slide / multi-scale + flip), ``metrics`` (mIoU, mAcc, aAcc), ``losses``
  (CE, OHEM), ``schedule`` (poly), ``loader`` (the seeded data stream), ``checkpoint``, ``distributed``.

Submodules are imported where they are used, so ``import fsanet.engine`` stays light.
"""
