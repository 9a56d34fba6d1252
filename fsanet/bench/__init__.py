"""The efficiency benchmarks: one timing and memory toolkit, two benchmarks that use it.

* :mod:`fsanet.bench.timing`: FLOPs, peak memory, latency, interleaved rounds and verdicts.
* :mod:`fsanet.bench.attention`: ``fsanet bench attention``, every attention module at the paper's
  setting and over a size sweep (table T1, the efficiency plot).
* :mod:`fsanet.bench.models`: ``fsanet bench models``, params, GFLOPs and fps of every segmentation
  model (the cost columns of table T3).
"""
