"""Orthonormal 2-D DCT-II restricted to a rectangular frequency band, as separable matrix products.

For a map X of size H×W the (u, v) coefficient is ``Σ_ij C_H[u, i] · X[i, j] · C_W[v, j]`` with the
orthonormal 1-D basis ``C_N[0, x] = 1/sqrt(N)`` and ``C_N[u, x] = sqrt(2/N)·cos(π·u·(2x+1)/(2N))``.
Each axis is scaled by its own length (the official FsaNet ``getP`` scales the W axis by sqrt(2/H),
which is not orthonormal when H ≠ W).

A band ``[u0, u1) × [v0, v1)`` keeps rows ``u0..u1-1`` of ``C_H`` and rows ``v0..v1-1`` of ``C_W``,
so the forward transform is ``C_H,band · X · C_W,bandᵀ`` (kh×kw coefficients) and the inverse is
``C_H,bandᵀ · Y · C_W,band``: the orthogonal projection onto the band when composed. Nothing ever
forms the dense (H·W)×K matrix except :func:`dense_basis`, which reference code and small-K
algebra use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "Band",
    "BandLike",
    "band_bases",
    "dct_matrix",
    "dct2",
    "dense_basis",
    "idct2",
    "lowpass",
    "normalize_band",
]

Band = tuple[int, int, int, int]
#: A band as accepted by the public API: ``None`` (full), ``(n_u, n_v)`` (top-left block),
#: or ``(u0, u1, v0, v1)`` where an upper bound of ``-1`` or ``None`` means "to the end".
BandLike = Union[None, Sequence[Optional[int]]]


def normalize_band(band: BandLike, h: Optional[int] = None, w: Optional[int] = None) -> Band:
    """Turn a band spec into ``(u0, u1, v0, v1)`` and check it against an ``h``×``w`` map.

    Args:
        band: ``None`` for the full spectrum, ``(n_u, n_v)`` for ``[0, n_u) × [0, n_v)``, or
            ``(u0, u1, v0, v1)``; ``-1``/``None`` as an upper bound means the map's size.
        h, w: the map size. If omitted, open upper bounds are kept as ``-1`` and only the
            size-independent checks run.

    Raises:
        ValueError: the band is malformed, empty, or reaches outside the ``h``×``w`` map.
    """
    if band is None:
        band = (0, None, 0, None)
    vals = list(band)
    if len(vals) == 2:
        vals = [0, vals[0], 0, vals[1]]
    if len(vals) != 4:
        raise ValueError(
            f"band {tuple(band)!r} must be None, (n_u, n_v) or (u0, u1, v0, v1); got {len(vals)} numbers"
        )
    u0, u1, v0, v1 = (None if v is None else int(v) for v in vals)
    if u0 is None or v0 is None:
        raise ValueError(f"band {tuple(band)!r}: lower bounds u0 and v0 must be integers")
    u1 = -1 if u1 is None else u1
    v1 = -1 if v1 is None else v1
    if u0 < 0 or v0 < 0:
        raise ValueError(f"band {tuple(band)!r}: lower bounds must be ≥ 0")
    if h is not None and u1 == -1:
        u1 = h
    if w is not None and v1 == -1:
        v1 = w
    for lo, hi, axis, size in ((u0, u1, "u (height)", h), (v0, v1, "v (width)", w)):
        if hi != -1 and hi <= lo:
            short = (f"; two numbers mean [0, n_u) × [0, n_v), so {tuple(band)!r} is [0, {vals[1]}) × "
                     f"[0, {vals[3]}): for the n×n low band write [n, n] or [0, n, 0, n]") if len(band) == 2 else ""
            raise ValueError(
                f"band {tuple(band)!r} is empty along {axis}: need lower < upper, got [{lo}, {hi}){short}"
            )
        if size is not None and hi > size:
            raise ValueError(
                f"band {tuple(band)!r} reaches outside the map along {axis}: "
                f"upper bound {hi} > map size {size}; use a band within [0, {size}]"
            )
    return (u0, u1, v0, v1)


@functools.lru_cache(maxsize=256)
def _dct_matrix_cpu64(n: int) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return _build_dct_matrix(n)


def _build_dct_matrix(n: int) -> Tensor:
    x = torch.arange(n, dtype=torch.float64)
    u = torch.arange(n, dtype=torch.float64)[:, None]
    c = torch.cos(math.pi * u * (2 * x + 1) / (2 * n)) * math.sqrt(2.0 / n)
    c[0] = 1.0 / math.sqrt(n)
    return c  # (n, n), rows are basis vectors


def dct_matrix(n: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """The orthonormal DCT-II matrix ``C`` (n×n): ``C @ x`` transforms, ``C.T @ y`` inverts."""
    if n < 1:
        raise ValueError(f"DCT size must be ≥ 1, got {n}")
    return _dct_matrix_cpu64(n).to(device=device, dtype=dtype or torch.get_default_dtype())


@functools.lru_cache(maxsize=512)
def _bases(h: int, w: int, band: Band, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    u0, u1, v0, v1 = band
    # Built outside inference mode so that a cache filled by a benchmark still serves autograd later.
    with torch.inference_mode(False), torch.no_grad():
        ch = _dct_matrix_cpu64(h)[u0:u1].to(device=device, dtype=dtype).contiguous()
        cw = _dct_matrix_cpu64(w)[v0:v1].to(device=device, dtype=dtype).contiguous()
    return ch, cw


def band_bases(
    h: int, w: int, band: BandLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """The band's rows of the two 1-D bases, cached per (size, band, device, dtype).

    Returns:
        ``(C_H,band, C_W,band)`` of shapes ``(kh, H)`` and ``(kw, W)``. Treat them as read-only.
    """
    b = normalize_band(band, h, w)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _bases(h, w, b, dev, dtype or torch.get_default_dtype())


def dct2(x: Tensor, band: BandLike = None) -> Tensor:
    """Forward 2-D DCT of the last two dims, keeping only ``band``.

    Args:
        x: ``(..., H, W)``.
        band: see :func:`normalize_band`.

    Returns:
        ``(..., kh, kw)`` coefficients.
    """
    h, w = x.shape[-2:]
    ch, cw = band_bases(h, w, band, x.device, x.dtype)
    # (kh, H) @ (..., H, W) -> (..., kh, W); then (..., kh, W) @ (W, kw) -> (..., kh, kw)
    return (ch @ x) @ cw.T


def idct2(y: Tensor, size: tuple[int, int], band: BandLike = None) -> Tensor:
    """Inverse 2-D DCT from band coefficients, with every coefficient outside ``band`` taken as 0.

    Args:
        y: ``(..., kh, kw)`` coefficients of ``band``.
        size: the output map size ``(H, W)``.
        band: the band ``y`` belongs to.

    Returns:
        ``(..., H, W)``.
    """
    h, w = size
    ch, cw = band_bases(h, w, band, y.device, y.dtype)
    if y.shape[-2:] != (ch.shape[0], cw.shape[0]):
        raise ValueError(
            f"coefficients of shape {tuple(y.shape[-2:])} do not match band {normalize_band(band, h, w)} "
            f"({ch.shape[0]}×{cw.shape[0]})"
        )
    # (H, kh) @ (..., kh, kw) -> (..., H, kw); then @ (kw, W) -> (..., H, W)
    return (ch.T @ y) @ cw


def lowpass(x: Tensor, band: BandLike) -> Tensor:
    """Project ``x`` onto the band: ``IDCT(mask_band(DCT(x)))``. The full band returns ``x`` unchanged."""
    h, w = x.shape[-2:]
    b = normalize_band(band, h, w)
    if b == (0, h, 0, w):
        return x
    return idct2(dct2(x, b), (h, w), b)


def dense_basis(
    h: int, w: int, band: BandLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The band's 2-D basis images as a dense ``(K, H·W)`` matrix (row ``u·kw + v`` is ``C_H[u] ⊗ C_W[v]``).

    This is ``Pᵀ`` of the official code. Use it only where a K×N object is inherent (reference paths,
    K×K Gram algebra); apply the transform to feature maps with :func:`dct2` / :func:`idct2`.
    """
    ch, cw = band_bases(h, w, band, device, dtype)
    return (ch[:, None, :, None] * cw[None, :, None, :]).reshape(ch.shape[0] * cw.shape[0], h * w)
