"""Test-time inference with mmseg's semantics: whole image, sliding window, multi-scale + flip.

* ``whole``: one forward pass over the image.
* ``slide``: windows of ``crop`` at ``stride``; ``max(H - crop + stride - 1, 0) // stride + 1`` rows
  (same for columns), the last window shifted back to end at the border; logits of overlapping windows
  are summed and divided by the per-pixel window count.
* ``predict``: for every scale ratio (and, with ``flip``, its mirror image) the logits are resized to
  the original label size, softmaxed (a flipped view is flipped back) and the probabilities averaged;
  the class map is their argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["predict", "slide_inference", "slide_windows", "whole_inference"]


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    out = model(images)
    return out["out"] if isinstance(out, dict) else out


def whole_inference(model: nn.Module, images: Tensor) -> Tensor:
    """Logits (B, K, H, W) from one forward pass over ``images`` (B, 3, H, W)."""
    logits = _logits(model, images)
    if tuple(logits.shape[-2:]) != tuple(images.shape[-2:]):
        raise ValueError(
            f"model returned logits of size {tuple(logits.shape[-2:])} for input {tuple(images.shape[-2:])}; "
            "SegmentationModel must return logits at input size"
        )
    return logits


def slide_windows(
    h: int, w: int, crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of every window, in mmseg's order and grid."""
    (hc, wc), (hs, ws) = crop, stride
    if min(hc, wc, hs, ws) < 1:
        raise ValueError(f"eval.crop_size {list(crop)} and eval.stride {list(stride)} must be positive")
    rows = max(h - hc + hs - 1, 0) // hs + 1
    cols = max(w - wc + ws - 1, 0) // ws + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * hs + hc, h), min(c * ws + wc, w)
            windows.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return windows


def slide_inference(
    model: nn.Module, images: Tensor, num_classes: int, crop: Sequence[int], stride: Sequence[int]
) -> Tensor:
    """Logits (B, K, H, W) averaged over overlapping ``crop`` windows."""
    b, _, h, w = images.shape
    total = images.new_zeros(b, num_classes, h, w)
    count = images.new_zeros(1, 1, h, w)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        total[:, :, y1:y2, x1:x2] += whole_inference(model, images[:, :, y1:y2, x1:x2])
        count[:, :, y1:y2, x1:x2] += 1
    return total / count


def predict(
    model: nn.Module,
    image: Tensor,
    out_size: Sequence[int],
    num_classes: int,
    mode: str = "whole",
    crop: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    align_corners: bool = False,
) -> Tensor:
    """Class probabilities (K, H_out, W_out) of one image, averaged over scales and flips.

    Args:
        model: in eval mode; ``model(x)["out"]`` are logits at the size of ``x``.
        image: (3, H, W) normalised image (already at the test scale).
        out_size: size of the label the prediction is scored against (the original image size).
        num_classes: K.
        mode: ``whole`` or ``slide``.
        crop, stride: sliding-window size and step (h, w).
        scales: ratios applied to the image size (multi-scale test); ``[1.0]`` is single scale.
        flip: also run each scale on the horizontally mirrored image.
        align_corners: of the bilinear resizes.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"eval.mode: unknown inference mode '{mode}'; use whole or slide")
    if not scales:
        raise ValueError("eval.scales is empty; use [1.0] for single-scale testing")
    images = image[None]  # (1, 3, H, W)
    h, w = images.shape[-2:]
    out_size = (int(out_size[0]), int(out_size[1]))
    probs = images.new_zeros(1, num_classes, *out_size)
    views = 0
    for ratio in scales:
        if ratio <= 0:
            raise ValueError(f"eval.scales must be positive, got {ratio}")
        size = (max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1))
        scaled = (
            images
            if size == (h, w)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=align_corners)
        )
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            if mode == "whole":
                logits = whole_inference(model, x)
            else:
                logits = slide_inference(model, x, num_classes, crop, stride)
            logits = logits.float()
            if tuple(logits.shape[-2:]) != out_size:
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=align_corners)
            p = logits.softmax(1)
            probs += p.flip(-1) if flipped else p
            views += 1
    return (probs / views)[0]
