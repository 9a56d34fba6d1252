"""DCT bands: the one place that parses, normalises, labels and sizes them.

A band is a rectangle ``[u0, u1) × [v0, v1)`` of 2-D DCT coefficients (u along the height, v along
the width). It is written in four ways, all handled here:

=====================  =========================================================================
``None``               the full spectrum (also the band of a model without a band option)
``(n_u, n_v)``         the top-left block ``[0, n_u) × [0, n_v)``
``(u0, u1, v0, v1)``   any block; an upper bound of ``-1`` (or ``None``) means "to the end"
text                   ``full`` / ``none``, ``5`` (= 5×5), ``4x6``, ``0,5,0,5`` (CLI and wildcards)
=====================  =========================================================================

The nn modules (:mod:`fsanet.nn.dct`), the CLI, ``summary.json``, the tables, the plots and the
Snakemake helpers all use these functions, so a band means the same thing everywhere. This module
imports nothing from the package (it is a leaf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

__all__ = [
    "Band",
    "BandError",
    "BandLike",
    "band_label",
    "band_size",
    "fit_band",
    "band_slug",
    "is_full",
    "normalize_band",
    "parse_band",
    "stored_band",
]

Band = tuple[int, int, int, int]
#: ``None`` (full), ``(n_u, n_v)`` or ``(u0, u1, v0, v1)`` with ``-1``/``None`` upper bounds = to the end.
BandLike = Union[None, Sequence[Optional[int]]]


class BandError(ValueError):
    """A band is malformed, empty or does not fit its map; the message names the band and the fix."""


def normalize_band(band: BandLike, h: Optional[int] = None, w: Optional[int] = None) -> Band:
    """``(u0, u1, v0, v1)`` from any band spec, checked against an ``h``×``w`` map when given.

    Args:
        band: ``None`` for the full spectrum, ``(n_u, n_v)`` for ``[0, n_u) × [0, n_v)``, or
            ``(u0, u1, v0, v1)``; ``-1``/``None`` as an upper bound means the map's size.
        h, w: the map size. If omitted, open upper bounds stay ``-1`` and only the size-independent
            checks run.

    Raises:
        BandError: the band is malformed, empty, or reaches outside the ``h``×``w`` map.
    """
    if band is None:
        band = (0, None, 0, None)
    vals = list(band)
    if len(vals) == 2:
        vals = [0, vals[0], 0, vals[1]]
    if len(vals) != 4:
        raise BandError(
            f"band {tuple(band)!r} must be None, (n_u, n_v) or (u0, u1, v0, v1); got {len(vals)} numbers"
        )
    if any(
        v is not None
        and (isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer())
        for v in vals
    ):
        raise BandError(f"band {tuple(band)!r}: bounds must be integers")
    u0, u1, v0, v1 = (None if v is None else int(v) for v in vals)
    if u0 is None or v0 is None:
        raise BandError(f"band {tuple(band)!r}: lower bounds u0 and v0 must be integers")
    u1 = -1 if u1 is None else u1
    v1 = -1 if v1 is None else v1
    if u0 < 0 or v0 < 0 or u1 < -1 or v1 < -1:
        raise BandError(
            f"band {tuple(band)!r}: lower bounds must be ≥ 0 and upper bounds ≥ 1 (or -1 = to the end)"
        )
    if h is not None and u1 == -1:
        u1 = h
    if w is not None and v1 == -1:
        v1 = w
    for lo, hi, axis, size in ((u0, u1, "u (height)", h), (v0, v1, "v (width)", w)):
        if hi != -1 and hi <= lo:
            short = (
                (
                    f"; two numbers mean [0, n_u) × [0, n_v), so {tuple(band)!r} is [0, {vals[1]}) × "
                    f"[0, {vals[3]}): for the n×n low band write [n, n] or [0, n, 0, n]"
                )
                if len(band) == 2
                else ""
            )
            raise BandError(
                f"band {tuple(band)!r} is empty along {axis}: need lower < upper, got [{lo}, {hi}){short}"
            )
        if size is not None and hi > size:
            raise BandError(
                f"band {tuple(band)!r} reaches outside the map along {axis}: "
                f"upper bound {hi} > map size {size}; use a band within [0, {size}]"
            )
    return (u0, u1, v0, v1)


def stored_band(band: Any) -> Optional[list[int]]:
    """The form kept in configs and result files: ``None`` or a ``[u0, u1, v0, v1]`` list (open
    bounds stay ``-1``). The full spectrum written as a block (``[0, -1, 0, -1]``) stays a list.

    Raises:
        BandError: anything :func:`normalize_band` refuses, or a value that is not a list of integers.
    """
    if band is None:
        return None
    if not isinstance(band, (list, tuple)) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in band
    ):
        raise BandError(f"expected null, [n_u, n_v] or [u0, u1, v0, v1] integers, got {band!r}")
    return list(normalize_band(band))


def parse_band(text: str) -> Optional[list[int]]:
    """A band from text: ``full``/``none``/``null`` → None; ``5`` → ``[0,5,0,5]``; ``4x6`` →
    ``[0,4,0,6]``; ``0,5,0,5`` → that band.

    Raises:
        BandError: naming the text and the accepted forms.
    """
    t = str(text).strip().lower()
    if t in ("full", "none", "null"):
        return None
    try:
        values = [int(v) for v in t.replace("×", "x").replace("x", ",").split(",")]
    except ValueError:
        raise BandError(f"band {text!r}: expected 'full', 'N', 'NxM' or 'u0,u1,v0,v1'") from None
    if len(values) == 1:
        values = [values[0], values[0]]
    if len(values) not in (2, 4):
        raise BandError(f"band {text!r}: expected 'full', 'N', 'NxM' or 'u0,u1,v0,v1'")
    return list(normalize_band(values))


def is_full(band: Optional[Sequence[int]]) -> bool:
    """Whether a normalised band (or ``None``) keeps the whole spectrum."""
    return band is None or (band[0] == 0 and band[2] == 0 and band[1] == -1 and band[3] == -1)


def band_label(band: Optional[Sequence[int]], pretty: bool = False) -> str:
    """``full``, ``5x5`` or ``4x4@(2,2)`` (``×`` with ``pretty``); open upper bounds read ``2:end``."""
    if is_full(band):
        return "full"
    u0, u1, v0, v1 = band  # type: ignore[misc]
    times = "×" if pretty else "x"

    def side(a: int, b: int) -> str:
        return f"{a}:end" if b == -1 else str(b - a)

    text = f"{side(u0, u1)}{times}{side(v0, v1)}"
    if (u0, v0) != (0, 0) and u1 != -1 and v1 != -1:
        text += f"@({u0},{v0})"
    return text


def band_slug(band: Optional[Sequence[int]]) -> str:
    """A file-name-safe form: ``band0-5-0-5`` (``band0--1-0--1`` for open bounds), ``full`` for None."""
    return "full" if band is None else "band" + "-".join(str(int(b)) for b in band)


def band_size(band: Optional[Sequence[int]]) -> float:
    """Number of kept coefficients K; ``inf`` for the full spectrum or an open-ended band."""
    if band is None or band[1] == -1 or band[3] == -1:
        return math.inf
    return float((band[1] - band[0]) * (band[3] - band[2]))


def fit_band(band: BandLike, h: int, w: int) -> Band:
    """``band`` cut to an ``h``×``w`` map: an upper bound past the map becomes the map's size, so a band
    larger than the map keeps the whole map. For modules that run at several scales with one band.

    Raises:
        BandError: the band is malformed, or its lower bounds lie outside the map.
    """
    u0, u1, v0, v1 = normalize_band(band)
    u1 = h if u1 == -1 else min(u1, h)
    v1 = w if v1 == -1 else min(v1, w)
    return normalize_band((u0, u1, v0, v1), h, w)
