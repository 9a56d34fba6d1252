"""The context oracle of the synthetic set: how much of its context survives a low DCT band.

Frequency self-attention injects into every position a signal built from the ``n × n`` lowest DCT
coefficients of the (output-stride-8) feature map: whatever it carries from far away is a linear
combination of those basis functions. The oracle asks, without any training, whether such a
band-limited signal can still tell each disc its class. It takes the ideal context signal of a
val image, the *cue map* ``m`` (+1 where the governing cue is red, -1 where it is blue; constant
over each cue's cell), and for every band ``n``:

1. average-pools ``m`` to the feature grid (``image_size / output_stride`` per side);
2. keeps the ``n × n`` lowest coefficients of its orthonormal 2-D DCT-II and inverts (the low-pass
   that FSA and the band truncation apply);
3. up-samples bilinearly back to the image (``align_corners=False``, as the models do);
4. counts a disc pixel as *decidable* when the sign of the result is its own cue's sign.

``accuracy[n]`` is the decidable share of all disc pixels of the split. The **predicted knee** is
the smallest ``n`` whose accuracy reaches :data:`KNEE_ACCURACY`; bands below it lose context that
the rule needs, bands at or above it keep it.

Why the knee sits at ``n = c`` for ``c`` stripes (the ``cells`` layout): the cue map depends on the
column only and is piecewise constant over ``c`` equal stripes. Along the width, the DCT basis
function of index ``k`` changes sign ``k`` times, so a sum of the first ``n`` of them changes sign
at most ``n - 1`` times. A cue pattern that alternates between neighbouring stripes changes sign
``c - 1`` times, so it needs ``n >= c``: with fewer coefficients at least one stripe gets the
wrong sign for every such pattern, and patterns with fewer sign changes lose their finer runs.
With ``n = c`` the sign changes fall near the stripe boundaries and the discs, which keep a margin
from them, are decided correctly (measured: 0.991 of disc pixels for ``c = 4`` on a 12-wide grid,
1.0 from ``n = 6``). For the ``band`` layout the cue map is one constant per image, which its DC
coefficient carries exactly: the knee is ``n = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.fft import dctn, idctn

__all__ = ["KNEE_ACCURACY", "cue_map", "lowpass", "oracle_counts", "oracle_curve", "predicted_knee"]

#: decidable share of disc pixels from which a band counts as keeping the context
KNEE_ACCURACY = 0.98


def cue_map(info: dict[str, Any], size: int) -> np.ndarray:
    """The ideal context signal of one sample: +1 (red cue) / -1 (blue cue), float (S, S).

    Args:
        info: the ``info`` dict of :func:`fsanet.data.synthetic.generate_sample`.
        size: the image side S.
    """
    if "cells" in info:
        signs = np.array([1.0 if c == "red" else -1.0 for c in info["cells"]])
        columns = np.repeat(signs, size // len(signs))
        return np.broadcast_to(columns[None, :], (size, size)).astype(np.float64)
    return np.full((size, size), 1.0 if info["cue"] == "red" else -1.0)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square (g, g) map to (size, size), ``align_corners=False``."""
    g = grid.shape[0]
    pos = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, g - 1)
    frac = pos - lo
    rows = grid[lo] * (1 - frac)[:, None] + grid[hi] * frac[:, None]  # (size, g)
    return rows[:, lo] * (1 - frac)[None, :] + rows[:, hi] * frac[None, :]  # (size, size)


def lowpass(m: np.ndarray, n: int, output_stride: int = 8) -> np.ndarray:
    """``m`` (S, S) pooled to the feature grid, cut to the ``n × n`` lowest DCT coefficients, and
    brought back to (S, S)."""
    size = m.shape[0]
    g = size // output_stride
    grid = (
        m[: g * output_stride, : g * output_stride].reshape(g, output_stride, g, output_stride).mean((1, 3))
    )
    coeffs = dctn(grid, type=2, norm="ortho")
    coeffs[n:, :] = 0.0
    coeffs[:, n:] = 0.0
    return _upsample(idctn(coeffs, type=2, norm="ortho"), size)


def oracle_counts(
    samples: Sequence[tuple[np.ndarray, dict[str, Any]]], disc_classes: Sequence[int], output_stride: int = 8
) -> tuple[np.ndarray, int]:
    """Decidable disc pixels at every square band ``n = 1 .. grid``, and all disc pixels.

    Args:
        samples: ``(label (S, S), info)`` pairs.
        disc_classes: ``(red-cue class, blue-cue class)`` label values.
        output_stride: feature-map stride of the models (the FSA grid is ``S / output_stride``).

    Returns:
        ``(hits (grid,), total)``: ``hits[n - 1]`` disc pixels decided right by band ``n``.
    """
    red, blue = disc_classes
    size = samples[0][0].shape[0]
    g = size // output_stride
    hits = np.zeros(g, dtype=np.int64)
    total = 0
    for label, info in samples:
        truth = np.where(label == red, 1.0, np.where(label == blue, -1.0, 0.0))
        disc = truth != 0
        if not disc.any():
            continue
        total += int(disc.sum())
        m = cue_map(info, size)
        for n in range(1, g + 1):
            hits[n - 1] += int((np.sign(lowpass(m, n, output_stride))[disc] == truth[disc]).sum())
    return hits, total


def oracle_curve(hits: np.ndarray, total: int) -> dict[str, Any]:
    """The oracle record from :func:`oracle_counts` (summed over a split).

    Returns:
        ``{"grid": g, "accuracy": {"1": a1, ..., "g": ag}, "knee": [n, n] or None, "disc_pixels": total,
        "threshold": KNEE_ACCURACY}``.
    """
    accuracy = {str(n + 1): (float(h / total) if total else None) for n, h in enumerate(hits)}
    return {
        "grid": len(hits),
        "accuracy": accuracy,
        "knee": predicted_knee(accuracy),
        "disc_pixels": int(total),
        "threshold": KNEE_ACCURACY,
    }


def predicted_knee(accuracy: dict[str, Any], threshold: float = KNEE_ACCURACY) -> list[int] | None:
    """``[n, n]`` for the smallest band whose accuracy reaches ``threshold`` (None if none does)."""
    for key in sorted(accuracy, key=int):
        value = accuracy[key]
        if value is not None and value >= threshold:
            return [int(key), int(key)]
    return None
