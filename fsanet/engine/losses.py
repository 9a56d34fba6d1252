"""Segmentation losses: mmseg's cross-entropy convention and OHEM cross-entropy (FsaNet's CCNet code).

* ``cross_entropy``: per-pixel CE with ``ignore_index``; the mean is over **all** pixels, ignored ones
  contributing 0 (mmseg ``avg_non_ignore=False``, its default).
* ``ohem_cross_entropy``: online hard example mining as in the CCNet code base FsaNet trains with:
  among the labelled pixels, keep those whose softmax probability of the true class is at most a
  threshold, where the threshold is ``thresh`` raised to the ``min_kept``-th smallest probability if
  that is larger (so at least ``min_kept`` pixels survive); if fewer than ``min_kept`` pixels are
  labelled, keep them all. The loss is the CE averaged over the kept pixels.

Logits whose spatial size differs from the label's are bilinearly resized to it first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy", "make_loss", "ohem_cross_entropy", "resize_to"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def resize_to(logits: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinearly resize ``(B, K, h, w)`` logits to ``size`` (no-op when already that size)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _prepare(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize to the label size; half-precision logits (autocast) are upcast to float32."""
    logits = resize_to(logits, size)
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def cross_entropy(logits: Tensor, label: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean CE over all pixels, ignored ones counting 0 (mmseg's default reduction).

    Args:
        logits: (B, K, H, W) (resized to the label's size if needed).
        label: (B, H, W) int64 class ids, ``ignore_index`` where unlabelled.
        ignore_index: label value that contributes no loss.
    """
    logits = _prepare(logits, label.shape[-2:])
    per_pixel = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    return per_pixel.mean()


def ohem_cross_entropy(
    logits: Tensor, label: Tensor, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = 255
) -> Tensor:
    """CE over the hard pixels only (see the module docstring for the selection rule).

    Args:
        logits: (B, K, H, W).
        label: (B, H, W) int64.
        thresh: probability below which (inclusive) a pixel counts as hard.
        min_kept: the threshold is raised until at least this many pixels are kept.
        ignore_index: unlabelled pixels, never kept.
    """
    logits = _prepare(logits, label.shape[-2:])
    flat_label = label.reshape(-1)  # (N,)
    valid = flat_label != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0:
        return logits.sum() * 0.0  # nothing labelled: zero loss, gradients stay finite
    target = flat_label
    if num_valid >= max(min_kept, 1):
        with torch.no_grad():
            prob = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # (N, K)
            true_prob = prob.gather(1, flat_label.clamp(min=0, max=logits.shape[1] - 1)[:, None])[:, 0]
            true_prob = true_prob.masked_fill(~valid, 1.0)  # ignored pixels are never "hard"
            threshold = torch.tensor(thresh, dtype=true_prob.dtype, device=true_prob.device)
            if min_kept > 0:
                k = min(min_kept, true_prob.numel())
                # kthvalue has no deterministic CUDA kernel; a sort gives the same value there
                kth = true_prob.kthvalue(k).values if true_prob.is_cpu else true_prob.sort().values[k - 1]
                threshold = torch.maximum(threshold, kth)
            keep = valid & (true_prob <= threshold)
            target = flat_label.masked_fill(~keep, ignore_index)
    target = target.reshape(label.shape)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)  # mean over kept pixels


def make_loss(kind: str, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = 255) -> LossFn:
    """The main-output loss named by ``train.loss`` (``ce`` or ``ohem``)."""
    if kind == "ce":
        return lambda logits, label: cross_entropy(logits, label, ignore_index)
    if kind == "ohem":
        return lambda logits, label: ohem_cross_entropy(logits, label, thresh, min_kept, ignore_index)
    raise ValueError(f"train.loss: unknown loss '{kind}'; use 'ce' or 'ohem'")
