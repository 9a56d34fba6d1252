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

import torch
from torch import Tensor

from fsanet.band import Band, BandLike, normalize_band

__all__ = [
    "Band",
    "BandLike",
    "band_bases",
    "dct_matrix",
    "dct2",
    "dense_basis",
    "idct2",
    "lowpass",
    "normalize_band",  # re-exported from fsanet.band, the one home of band parsing
]


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
