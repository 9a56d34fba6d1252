"""mmseg-standard data pipelines in plain numpy/torch: seeded, reproducible, no global RNG.

Train (mmseg 1.x pipelines)::

    RandomResize(scale=(L, S), ratio 0.5-2.0, keep_ratio) -> RandomCrop(crop, cat_max_ratio=0.75)
    -> RandomFlip(0.5) -> PhotoMetricDistortion -> Normalize (ImageNet mean/std, RGB)
    -> Pad to crop (image 0, label 255) -> ToTensor

Test::

    Resize(scale=(L, S), keep_ratio) of the IMAGE only (the label keeps its original size, so metrics
    are computed at the original resolution) -> Normalize -> ToTensor

Every op is a callable ``op(sample, rng) -> sample`` on a dict holding ``"image"`` (``(H,W,3)``;
uint8 until Normalize, float32 after) and ``"label"`` (``uint8 (H,W)``). Random ops draw only from
the ``np.random.Generator`` they are given; the dataset passes ``sample_rng(seed, epoch, index)``
so an item's augmentation is a pure function of those numbers (reproducible across DataLoader
workers, resumes and machines).

Differences from mmcv, on purpose: resizing uses ``torch.nn.functional.interpolate`` (bilinear with
half-pixel centres for images = cv2 ``INTER_LINEAR`` up to rounding; ``nearest`` for labels = cv2
``INTER_NEAREST``); HSV maths is done in float (not cv2's 8-bit HSV, which quantises hue to 2°),
with the mmseg hue delta (18 in cv2's 0-180 hue units = 36 degrees) converted accordingly. Images are RGB
from the start, so there is no BGR->RGB swap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "Resize",
    "ToTensor",
    "build_transform",
    "hsv_to_rgb",
    "rgb_to_hsv",
    "rescale_size",
    "sample_rng",
    "to_tensor",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)

Sample = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------
def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one item's augmentation: a pure function of ``(seed, epoch, index)``.

    Args:
        seed: the run's data seed (non-negative).
        epoch: epoch, or any stream counter such as the global iteration (non-negative).
        index: item index (non-negative).
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(f"sample_rng needs non-negative seed/epoch/index, got {(seed, epoch, index)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with keep_ratio: factor = min(L/long edge, S/short edge).

    Args:
        h, w: current size.
        scale: ``(L, S)`` in any order (the larger is the long-edge bound).

    Returns:
        ``(new_h, new_w)`` rounded half up, as mmcv does.
    """
    long_bound, short_bound = max(scale), min(scale)
    factor = min(long_bound / max(h, w), short_bound / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, no antialias) of a uint8 ``(H,W,3)`` image to ``size=(h, w)``."""
    if image.shape[:2] == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 ``(H,W)`` label map to ``size=(h, w)``."""
    if label.shape == tuple(size):
        return label
    t = torch.from_numpy(np.ascontiguousarray(label))[None, None]  # (1, 1, H, W) uint8
    return F.interpolate(t, size=tuple(size), mode="nearest")[0, 0].numpy()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H,W,3)`` array -> float32 tensor ``(3,H,W)`` (values unchanged)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> HSV with hue in [0, 1) (fraction of a turn), float32, shape kept (..., 3)."""
    rgb = rgb.astype(np.float32, copy=False)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, np.mod(h / 6.0, 1.0), 0.0)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`: channel n in (R, G, B) = (5, 3, 1) is V - V*S*clip(min(k, 4-k), 0, 1)
    with k = (n + 6H) mod 6."""
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = np.mod(np.array([5.0, 3.0, 1.0], dtype=np.float32) + 6.0 * h, 6.0)  # (..., 3)
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------------------------
class RandomResize:
    """Resize by a random ratio of a base scale, keeping the aspect ratio (mmcv ``RandomResize``).

    Args:
        scale: base ``(L, S)``; the target is ``(int(L*r), int(S*r))`` with ``r ~ U(ratio_range)``.
        ratio_range: ``(low, high)``.
        keep_ratio: fit inside the target (mmcv ``imrescale``); False resizes to exactly
            ``(h, w) = (S*r, L*r)``.
    """

    def __init__(
        self, scale: Sequence[int], ratio_range: Sequence[float] = (0.5, 2.0), keep_ratio: bool = True
    ):
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"RandomResize scale must be two positive ints (L, S), got {list(scale)}")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                f"RandomResize ratio_range must be (low, high) with 0 < low <= high, got {list(ratio_range)}"
            )
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        lo, hi = self.ratio_range
        r = rng.random() * (hi - lo) + lo
        target = (int(self.scale[0] * r), int(self.scale[1] * r))
        return Resize(target, keep_ratio=self.keep_ratio)(sample, rng)

    def __repr__(self) -> str:
        return (
            f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"
        )


class Resize:
    """Deterministic resize to ``scale`` (mmcv ``Resize``).

    Args:
        scale: ``(L, S)``: with keep_ratio the long edge is bounded by ``max(scale)`` and the short
            edge by ``min(scale)``; without, the output is exactly ``(h, w) = (scale[1], scale[0])``.
        keep_ratio: keep the aspect ratio.
        resize_label: also resize the label (nearest). False in test pipelines: the label stays at
            the original size for evaluation.
    """

    def __init__(self, scale: Sequence[int], keep_ratio: bool = True, resize_label: bool = True):
        self.scale = (int(scale[0]), int(scale[1]))
        self.keep_ratio = keep_ratio
        self.resize_label = resize_label

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        h, w = sample["image"].shape[:2]
        size = rescale_size(h, w, self.scale) if self.keep_ratio else (self.scale[1], self.scale[0])
        sample["image"] = resize_image(sample["image"], size)
        if self.resize_label and sample.get("label") is not None:
            sample["label"] = resize_label(sample["label"], size)
        return sample

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, keep_ratio={self.keep_ratio}, resize_label={self.resize_label})"


class RandomCrop:
    """Random crop that avoids crops dominated by one class (mmseg ``RandomCrop``).

    A candidate window is drawn uniformly; while it holds at most one non-ignore class, or one class
    covers ``>= cat_max_ratio`` of its non-ignore pixels, a new one is drawn (at most ``max_tries``
    re-draws; the last draw is kept, as mmseg does). An image smaller than the crop is taken whole
    (Pad brings it to size later).

    Args:
        crop_size: ``(h, w)``.
        cat_max_ratio: largest allowed share of one class; ``>= 1`` disables the check.
        ignore_index: label value not counted.
        max_tries: number of re-draws.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        max_tries: int = 10,
    ):
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"RandomCrop crop_size must be two positive ints (h, w), got {list(crop_size)}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _bbox(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        ch, cw = self.crop_size
        y1 = int(rng.integers(0, max(h - ch, 0) + 1))
        x1 = int(rng.integers(0, max(w - cw, 0) + 1))
        return y1, min(y1 + ch, h), x1, min(x1 + cw, w)

    def _acceptable(self, label: np.ndarray) -> bool:
        counts = np.bincount(label.ravel(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["image"].shape[:2]
        y1, y2, x1, x2 = self._bbox(h, w, rng)
        only_window = h <= self.crop_size[0] and w <= self.crop_size[1]  # re-drawing cannot change it
        if self.cat_max_ratio < 1.0 and not only_window:
            for _ in range(self.max_tries):
                if self._acceptable(sample["label"][y1:y2, x1:x2]):
                    break
                y1, y2, x1, x2 = self._bbox(h, w, rng)
        sample["image"] = sample["image"][y1:y2, x1:x2]
        sample["label"] = sample["label"][y1:y2, x1:x2]
        return sample

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomFlip:
    """Horizontal flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.prob:
            sample["image"] = sample["image"][:, ::-1]
            sample["label"] = sample["label"][:, ::-1]
        return sample

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion``; each step applied with probability 0.5, 8-bit between steps.

    Order: brightness, then contrast either first or last (coin flip), saturation, hue.

    Args:
        brightness_delta: add ``U(-d, d)``.
        contrast_range: multiply by ``U(lo, hi)``.
        saturation_range: multiply HSV saturation by ``U(lo, hi)`` (clipped).
        hue_delta: shift the hue by an integer in ``[-d, d)`` in cv2 units (180 = full turn).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample["image"]
        if rng.integers(2):  # brightness
            img = _to_uint8(
                img.astype(np.float32) + rng.uniform(-self.brightness_delta, self.brightness_delta)
            )
        contrast_first = bool(rng.integers(2))
        if contrast_first:
            img = self._contrast(img, rng)
        if rng.integers(2):  # saturation: scale S, keep H and V (a per-pixel blend towards V = max channel)
            alpha = rng.uniform(*self.saturation_range)
            x = img.astype(np.float32)
            v = x.max(-1, keepdims=True)
            spread = v - x.min(-1, keepdims=True)
            # S' = min(alpha * S, 1): the blend factor is capped where the smallest channel would go below 0
            alpha = np.minimum(alpha, v / np.where(spread > 0, spread, 1.0))
            img = _to_uint8(v - alpha * (v - x))
        if rng.integers(2):  # hue
            shift = int(rng.integers(-self.hue_delta, self.hue_delta)) / 180.0
            hsv = rgb_to_hsv(img / np.float32(255.0))
            hsv[..., 0] = np.mod(hsv[..., 0] + shift, 1.0)
            img = _to_uint8(hsv_to_rgb(hsv) * 255.0)
        if not contrast_first:
            img = self._contrast(img, rng)
        sample["image"] = img
        return sample

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _to_uint8(img.astype(np.float32) * rng.uniform(*self.contrast_range))
        return img

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )


class Normalize:
    """``(image - mean) / std`` per RGB channel; the image becomes float32."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                f"Normalize needs 3 means and 3 positive stds, got mean={list(mean)} std={list(std)}"
            )
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample["image"] = (sample["image"].astype(np.float32) - self.mean) / self.std
        return sample

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Pad:
    """Pad bottom/right to at least ``size=(h, w)``: image with ``img_value``, label with ``seg_value``.

    Runs after Normalize, like mmseg's data preprocessor, so ``img_value=0`` is 0 in normalised units.
    """

    def __init__(self, size: Sequence[int], img_value: float = 0.0, seg_value: int = 255):
        self.size = (int(size[0]), int(size[1]))
        self.img_value = img_value
        self.seg_value = seg_value

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        h, w = sample["image"].shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph or pw:
            sample["image"] = np.pad(
                sample["image"], ((0, ph), (0, pw), (0, 0)), constant_values=self.img_value
            )
            if sample.get("label") is not None:
                sample["label"] = np.pad(sample["label"], ((0, ph), (0, pw)), constant_values=self.seg_value)
        return sample

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, img_value={self.img_value}, seg_value={self.seg_value})"


class ToTensor:
    """Image -> float32 ``(3,H,W)``; label -> int64 ``(H,W)``."""

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample["image"] = to_tensor(sample["image"])
        if sample.get("label") is not None:
            sample["label"] = torch.from_numpy(np.ascontiguousarray(sample["label"], dtype=np.int64))
        return sample

    def __repr__(self) -> str:
        return "ToTensor()"


class Compose:
    """Apply ops in order, all drawing from one generator.

    Args:
        ops: callables ``op(sample, rng) -> sample``.
    """

    def __init__(self, ops: Sequence[Any]):
        self.ops = list(ops)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = np.random.default_rng(0) if rng is None else rng
        sample = dict(sample)
        for op in self.ops:
            sample = op(sample, rng)
        return sample

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(op) for op in self.ops)
        return f"Compose([\n  {inner}\n])"


def build_transform(cfg: Any, train: bool) -> Compose:
    """The train or test pipeline from a :class:`fsanet.config.DataConfig`.

    Args:
        cfg: the ``data`` config section (``base_scale``, ``crop_size``, ``ratio_range``,
            ``cat_max_ratio``, ``ignore_index``, ``flip_prob``, ``photometric_distortion``, ``mean``,
            ``std``).
        train: the augmenting train pipeline, else the test pipeline (label kept at original size).
    """
    normalize = Normalize(list(cfg.mean), list(cfg.std))
    if not train:
        return Compose(
            [Resize(list(cfg.base_scale), keep_ratio=True, resize_label=False), normalize, ToTensor()]
        )
    ops: list[Any] = [
        RandomResize(list(cfg.base_scale), list(cfg.ratio_range), keep_ratio=True),
        RandomCrop(list(cfg.crop_size), cfg.cat_max_ratio, cfg.ignore_index),
        RandomFlip(cfg.flip_prob),
    ]
    if cfg.photometric_distortion:
        ops.append(PhotoMetricDistortion())
    ops += [normalize, Pad(list(cfg.crop_size), 0.0, cfg.ignore_index), ToTensor()]
    return Compose(ops)
