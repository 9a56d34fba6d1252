"""The banded separable DCT as two torch custom ops, with streaming CPU kernels (numba).

Fused FSA touches the N positions only twice: one forward transform of ``x`` and one inverse
transform added to the residual. For a narrow band both are *skinny* products,
``(B·C·H, W) @ (W, kw)`` and ``(B·C·H, kw) @ (kw, W)`` with kw ≈ 5, which BLAS runs well below memory
bandwidth on CPU; and an out-of-place ``addmm`` first copies ``x`` into the output, so the inverse
makes two passes over the map. The kernels here make one streaming pass each:

``band_dct2(x, C_H, C_W)`` -> ``C_H · x · C_Wᵀ``
    per map, H axis first: each row of ``x`` is read once from memory and multiply-added, with its kh
    weights from ``C_H``, into kh accumulator rows held in L1; the kh×kw coefficients are then the
    dot products of those rows with the kw rows of ``C_W``.
``band_idct2(y, C_H, C_W, residual, shift)`` -> ``residual + C_Hᵀ · y · C_W + shift``
    per map and row: ``z_h = C_Hᵀ[h] · y`` (kw numbers), then the output row
    ``residual_h + shift + Σ_j z_h[j] · C_W[j]`` is written once, :data:`GROUP` basis rows per pass.

Both walk a map four rows at a time, p, p + q, p + 2q and p + 3q with q = H // 4, so each thread
keeps four ascending memory streams in flight (one or two streams per thread leave much of this
CPU's bandwidth idle). Both run in parallel over the leading (batch × channel) maps with
``numba.prange``; each map's arithmetic is sequential, so results do not depend on the thread count.
Shapes: ``x``/``residual`` ``(..., H, W)``, ``y`` ``(..., kh, kw)``, ``C_H`` ``(kh, H)``, ``C_W``
``(kw, W)``, ``shift`` ``(...)``.

The torch path (the same products with ``matmul``/``addmm``) runs where the kernels do not apply:
other devices (CUDA's GEMMs handle skinny shapes well), dtypes other than float32/float64, bands
wider than :data:`MAX_KERNEL_BAND` along either axis, maps smaller than :data:`MIN_KERNEL_ELEMENTS` in all
(unless :func:`use_kernels` forces them), or when :func:`use_kernels` turns them off. Parity
tests compare the two. As custom ops the transforms carry their own autograd (each is the other's
adjoint), a fake implementation for tracing, and a FLOP formula, so ``FlopCounterMode`` counts
them as the matrix products they are, M maps: ``2·M·kh·W·(H + kw)`` forward (H axis first, then W)
and ``2·M·H·kw·(kh + W)`` inverse.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

__all__ = [
    "GROUP",
    "MAX_KERNEL_BAND",
    "MIN_KERNEL_ELEMENTS",
    "band_dct2",
    "band_idct2",
    "describe",
    "kernels_available",
    "use_kernels",
    "warm_up",
]

log = logging.getLogger(__name__)

#: Widest band (along either axis) that the CPU kernels take; wider bands use BLAS, efficient there.
MAX_KERNEL_BAND = 16
#: Below this many map elements (M·H·W) the torch path runs by default: the kernels' gain there is
#: smaller than the ~1 s it takes a process to import numba and load them (e.g. the study's 12×12 maps).
MIN_KERNEL_ELEMENTS = 1 << 20
_state: dict[str, Optional[bool]] = {"enabled": None}  # None: by size; True/False: forced
#: Basis rows the kernels combine per pass over four rows (the paper's 5×5 band takes one pass). The
#: kernels unroll exactly this many terms, so changing it means rewriting their inner loops.
GROUP = 5
#: The dtypes the kernels are compiled for; others take the torch path.
_KERNEL_DTYPES = (torch.float32, torch.float64)


@contextlib.contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Force the numba kernels on (for every size they support) or off (the torch path everywhere).

    Outside such a block the kernels run on maps of at least :data:`MIN_KERNEL_ELEMENTS` elements.
    """
    before = _state["enabled"]
    _state["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _state["enabled"] = before


@functools.cache
def _kernels() -> Optional[tuple]:
    """Compile (or load from numba's cache) the two kernels; ``None`` if numba is missing."""
    try:
        import numba
        import numpy as np
    except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
        log.warning("numba is not importable: the banded DCT falls back to BLAS (slower on CPU)")
        return None
    njit = functools.partial(numba.njit, parallel=True, fastmath=True, cache=True, nogil=True)

    # Both kernels walk a map four rows at a time, rows p, p + q, p + 2q and p + 3q (q = H // 4), so
    # every thread keeps four ascending memory streams in flight (fewer streams per thread leave much
    # of the memory bandwidth idle; the README gives the timings); the last H − 4q rows go one at a time. The
    # unrolled axis is zero-padded to a multiple of GROUP basis rows and handled GROUP rows at a time,
    # with the 4 × GROUP weights of a pass held in registers. A further group (bands over GROUP along the
    # unrolled axis) sweeps the map again, mostly from cache (one 97² map is 37 KB). Parallel over the
    # M maps; within a map the order of operations is fixed, so results do not depend on threads.

    @njit
    def dct2_kernel(x, chg, cw, y):
        # x (M·H, W), chg (khg, H) = C_H zero-padded to khg rows, cw (kw, W) -> y (M, kh, kw).
        # H first: r[u] = Σ_h chg[u, h] x[m, h] (vertical multiply-adds into rows held in L1, no
        # horizontal sums in the streaming pass), then y[m, u, j] = r[u] · cw[j].
        m_maps, kh, kw = y.shape
        khg, h_size = chg.shape
        w_size = x.shape[1]
        q = h_size // 4
        zero = cw[0, 0] - cw[0, 0]  # 0 in the inputs' dtype (a literal 0 would promote float32 to 64)
        for m in numba.prange(m_maps):
            # accumulator rows padded by 24 elements: rows exactly W apart alias x's rows at power-of-two W
            r = np.zeros((khg, w_size + 24), y.dtype)
            base = m * h_size
            for g in range(0, khg, GROUP):  # GROUP accumulator rows per sweep over the map
                # 2-D indexing (r[g, w], x[row, w]), not row views: numba compiles nine 1-D views in
                # the inner loop into a slower forward (the README gives the timings)
                for p in range(q):
                    ha, hb, hc, hd = p, p + q, p + 2 * q, p + 3 * q
                    xa, xb, xc, xd = base + ha, base + hb, base + hc, base + hd  # rows of x
                    a0, a1, a2, a3, a4 = (
                        chg[g, ha],
                        chg[g + 1, ha],
                        chg[g + 2, ha],
                        chg[g + 3, ha],
                        chg[g + 4, ha],
                    )
                    b0, b1, b2, b3, b4 = (
                        chg[g, hb],
                        chg[g + 1, hb],
                        chg[g + 2, hb],
                        chg[g + 3, hb],
                        chg[g + 4, hb],
                    )
                    c0, c1, c2, c3, c4 = (
                        chg[g, hc],
                        chg[g + 1, hc],
                        chg[g + 2, hc],
                        chg[g + 3, hc],
                        chg[g + 4, hc],
                    )
                    d0, d1, d2, d3, d4 = (
                        chg[g, hd],
                        chg[g + 1, hd],
                        chg[g + 2, hd],
                        chg[g + 3, hd],
                        chg[g + 4, hd],
                    )
                    for w in range(w_size):
                        va, vb, vc, vd = x[xa, w], x[xb, w], x[xc, w], x[xd, w]
                        r[g, w] += a0 * va + b0 * vb + c0 * vc + d0 * vd
                        r[g + 1, w] += a1 * va + b1 * vb + c1 * vc + d1 * vd
                        r[g + 2, w] += a2 * va + b2 * vb + c2 * vc + d2 * vd
                        r[g + 3, w] += a3 * va + b3 * vb + c3 * vc + d3 * vd
                        r[g + 4, w] += a4 * va + b4 * vb + c4 * vc + d4 * vd
                for h in range(4 * q, h_size):  # the last H mod 4 rows
                    a0, a1, a2, a3, a4 = chg[g, h], chg[g + 1, h], chg[g + 2, h], chg[g + 3, h], chg[g + 4, h]
                    for w in range(w_size):
                        va = x[base + h, w]
                        r[g, w] += a0 * va
                        r[g + 1, w] += a1 * va
                        r[g + 2, w] += a2 * va
                        r[g + 3, w] += a3 * va
                        r[g + 4, w] += a4 * va
            for u in range(kh):  # fold the W axis: kh·kw dot products of length W
                for j in range(kw):
                    s = zero
                    for w in range(w_size):
                        s += r[u, w] * cw[j, w]
                    y[m, u, j] = s

    @njit
    def idct2_kernel(y, ch, cwg, residual, shift, out, has_residual):
        # y (M, kh, kw), ch (kh, H), cwg (kwg, W) = C_W zero-padded to kwg rows, residual/out (M·H, W),
        # shift (M,): out[m·H + h] = residual[m·H + h] + shift[m] + Σ_j z[j, h] cwg[j], z = (ch.T @ y[m]).T
        m_maps, kh, kw = y.shape
        h_size, kwg = ch.shape[1], cwg.shape[0]
        w_size = out.shape[1]
        q = h_size // 4
        for m in numba.prange(m_maps):
            z = np.zeros((kwg, h_size), out.dtype)  # rows kw.. stay 0, matching cwg's padding
            for u in range(kh):
                for j in range(kw):
                    a = y[m, u, j]
                    for h in range(h_size):
                        z[j, h] += a * ch[u, h]
            sh = shift[m]
            base = m * h_size
            for g in range(0, kwg, GROUP):  # GROUP basis rows per sweep; the first one reads residual
                e0, e1, e2, e3, e4 = cwg[g], cwg[g + 1], cwg[g + 2], cwg[g + 3], cwg[g + 4]
                for p in range(q):
                    ha, hb, hc, hd = p, p + q, p + 2 * q, p + 3 * q
                    oa, ob, oc, od = out[base + ha], out[base + hb], out[base + hc], out[base + hd]
                    a0, a1, a2, a3, a4 = z[g, ha], z[g + 1, ha], z[g + 2, ha], z[g + 3, ha], z[g + 4, ha]
                    b0, b1, b2, b3, b4 = z[g, hb], z[g + 1, hb], z[g + 2, hb], z[g + 3, hb], z[g + 4, hb]
                    c0, c1, c2, c3, c4 = z[g, hc], z[g + 1, hc], z[g + 2, hc], z[g + 3, hc], z[g + 4, hc]
                    d0, d1, d2, d3, d4 = z[g, hd], z[g + 1, hd], z[g + 2, hd], z[g + 3, hd], z[g + 4, hd]
                    if g == 0 and has_residual:  # the one pass over memory: read residual, write out
                        ra, rb = residual[base + ha], residual[base + hb]
                        rc, rd = residual[base + hc], residual[base + hd]
                        for w in range(w_size):
                            f0, f1, f2, f3, f4 = e0[w], e1[w], e2[w], e3[w], e4[w]
                            oa[w] = ra[w] + sh + a0 * f0 + a1 * f1 + a2 * f2 + a3 * f3 + a4 * f4
                            ob[w] = rb[w] + sh + b0 * f0 + b1 * f1 + b2 * f2 + b3 * f3 + b4 * f4
                            oc[w] = rc[w] + sh + c0 * f0 + c1 * f1 + c2 * f2 + c3 * f3 + c4 * f4
                            od[w] = rd[w] + sh + d0 * f0 + d1 * f1 + d2 * f2 + d3 * f3 + d4 * f4
                    elif g == 0:
                        for w in range(w_size):
                            f0, f1, f2, f3, f4 = e0[w], e1[w], e2[w], e3[w], e4[w]
                            oa[w] = sh + a0 * f0 + a1 * f1 + a2 * f2 + a3 * f3 + a4 * f4
                            ob[w] = sh + b0 * f0 + b1 * f1 + b2 * f2 + b3 * f3 + b4 * f4
                            oc[w] = sh + c0 * f0 + c1 * f1 + c2 * f2 + c3 * f3 + c4 * f4
                            od[w] = sh + d0 * f0 + d1 * f1 + d2 * f2 + d3 * f3 + d4 * f4
                    else:  # further groups of basis rows add to the rows written by the first
                        for w in range(w_size):
                            f0, f1, f2, f3, f4 = e0[w], e1[w], e2[w], e3[w], e4[w]
                            oa[w] += a0 * f0 + a1 * f1 + a2 * f2 + a3 * f3 + a4 * f4
                            ob[w] += b0 * f0 + b1 * f1 + b2 * f2 + b3 * f3 + b4 * f4
                            oc[w] += c0 * f0 + c1 * f1 + c2 * f2 + c3 * f3 + c4 * f4
                            od[w] += d0 * f0 + d1 * f1 + d2 * f2 + d3 * f3 + d4 * f4
                for h in range(4 * q, h_size):  # the last H mod 4 rows
                    oa = out[base + h]
                    a0, a1, a2, a3, a4 = z[g, h], z[g + 1, h], z[g + 2, h], z[g + 3, h], z[g + 4, h]
                    if g == 0 and has_residual:
                        ra = residual[base + h]
                        for w in range(w_size):
                            oa[w] = (
                                ra[w] + sh + a0 * e0[w] + a1 * e1[w] + a2 * e2[w] + a3 * e3[w] + a4 * e4[w]
                            )
                    elif g == 0:
                        for w in range(w_size):
                            oa[w] = sh + a0 * e0[w] + a1 * e1[w] + a2 * e2[w] + a3 * e3[w] + a4 * e4[w]
                    else:
                        for w in range(w_size):
                            oa[w] += a0 * e0[w] + a1 * e1[w] + a2 * e2[w] + a3 * e3[w] + a4 * e4[w]

    return numba, dct2_kernel, idct2_kernel


def kernels_available() -> bool:
    """Whether the numba kernels can run in this environment."""
    return _kernels() is not None


def warm_up(dtypes: tuple[torch.dtype, ...] = _KERNEL_DTYPES) -> float:
    """Compile the kernels now (or load them from numba's on-disk cache) for each of ``dtypes``.

    numba compiles a kernel on its first call for each dtype: seconds to tens of seconds on a 2-core
    CPU, in whatever call comes first. A benchmark calls this before timing anything, so that no
    module's first forward (its time-out probe) pays for the compile.

    Args:
        dtypes: float32 and/or float64, the dtypes the kernels take.

    Returns:
        The seconds it took; 0.0 when the kernels are turned off or numba is missing.
    """
    bad = [d for d in dtypes if d not in _KERNEL_DTYPES]
    if bad:
        raise ValueError(f"warm_up: the kernels take float32 and float64, not {bad}")
    if _state["enabled"] is False or _kernels() is None:
        return 0.0
    t0 = time.perf_counter()
    with use_kernels(True), torch.no_grad():
        for dtype in dtypes:
            x = torch.ones(1, 4, 4, dtype=dtype)  # (M, H, W): one map of 4 rows, one 4-row pass
            ch, cw = torch.ones(1, 4, dtype=dtype), torch.ones(1, 4, dtype=dtype)  # (kh, H), (kw, W)
            y = band_dct2(x, ch, cw)  # (M, 1, 1)
            band_idct2(y, ch, cw, residual=x, shift=torch.zeros(1, dtype=dtype))
    return time.perf_counter() - t0


def describe() -> str:
    """What runs the CPU transforms: numba's version and threading layer, or why not."""
    if _state["enabled"] is False:
        return "off (torch/BLAS path)"
    kernels = _kernels()
    if kernels is None:
        return "unavailable (numba not importable; torch/BLAS path)"
    numba = kernels[0]
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        layer = "not yet chosen"
    return (
        f"numba {numba.__version__} (threading layer {layer}; maps of ≥ {MIN_KERNEL_ELEMENTS} elements, "
        f"bands up to {MAX_KERNEL_BAND}×{MAX_KERNEL_BAND}, 4 rows × {GROUP} basis rows per pass)"
    )


def _kernel_applies(*tensors: Tensor, band: int, elements: int) -> bool:
    enabled = _state["enabled"]
    if enabled is False or band > MAX_KERNEL_BAND or (enabled is None and elements < MIN_KERNEL_ELEMENTS):
        return False
    dtype = tensors[0].dtype
    if dtype not in _KERNEL_DTYPES:
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    return _kernels() is not None


def _np(t: Tensor):  # noqa: ANN202 - numpy array view of a contiguous CPU tensor
    return t.detach().contiguous().numpy()


def _pad_to_group(basis: Tensor) -> Tensor:
    """``basis`` with zero rows appended up to a multiple of :data:`GROUP` (the kernels' group size)."""
    return torch.nn.functional.pad(basis, (0, 0, 0, -basis.shape[0] % GROUP))


def _set_threads(numba) -> None:  # noqa: ANN001
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _check(x: Tensor, ch: Tensor, cw: Tensor, name: str) -> None:
    if ch.dim() != 2 or cw.dim() != 2:
        raise ValueError(
            f"{name}: bases must be 2-D (kh, H) and (kw, W), got {tuple(ch.shape)}, {tuple(cw.shape)}"
        )
    if ch.requires_grad or cw.requires_grad:
        raise ValueError(f"{name}: the DCT bases are constants; pass them without requires_grad")


# ---------------------------------------------------------------------------------- forward DCT
def _direct_call_ok(*tensors: Optional[Tensor]) -> bool:
    """Whether going through the custom op would add nothing to calling its implementation.

    The ops exist for autograd, tracing (fake tensors, ``torch.compile``) and dispatch modes such as
    ``FlopCounterMode``; on CPU a call through the op's Python dispatch costs ~0.1 ms, a few percent of
    a fused FSA forward at 128². Plain eager calls with nothing to record (no mode or transform active,
    plain tensors, no input that needs a gradient) run the implementation directly; every other call
    goes through the op. ``tests/test_dct_ops.py`` checks that both give the same result.
    """
    if (
        torch._C._len_torch_dispatch_stack() > 0
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._are_functorch_transforms_active()
        or torch.compiler.is_compiling()
    ):
        return False
    present = [t for t in tensors if t is not None]
    if any(type(t) is not Tensor for t in present):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in present))


def _band_dct2_impl(x: Tensor, ch: Tensor, cw: Tensor) -> Tensor:
    *lead, h, w = x.shape
    kh, kw = ch.shape[0], cw.shape[0]
    x3 = x.reshape(-1, h, w)  # (M, H, W)
    if _kernel_applies(x, ch, cw, band=max(kh, kw), elements=x.numel()):
        numba, dct2_kernel, _ = _kernels()
        _set_threads(numba)
        y = x.new_empty(x3.shape[0], kh, kw)
        dct2_kernel(_np(x3).reshape(-1, w), _np(_pad_to_group(ch)), _np(cw), y.numpy())
    else:
        t = ch @ x3  # (M, kh, W): the H axis first, as the kernel, one pass over x
        y = t @ cw.T  # (M, kh, kw)
    return y.view(*lead, kh, kw)


_band_dct2_op = torch.library.custom_op("fsanet::band_dct2", _band_dct2_impl, mutates_args=())


@_band_dct2_op.register_fake
def _(x: Tensor, ch: Tensor, cw: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-2], ch.shape[0], cw.shape[0])


def _band_dct2_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    _, ch, cw = inputs
    ctx.save_for_backward(ch, cw)


def _band_dct2_backward(ctx, gy: Tensor):  # noqa: ANN001, ANN202
    # Under autocast the forward may have mixed a bf16/fp16 map with float32 bases; the backward runs
    # outside autocast, so the bases take the gradient's dtype here.
    ch, cw = (b.to(gy.dtype) for b in ctx.saved_tensors)
    return _band_idct2_op(gy.contiguous(), ch, cw, None, None), None, None


_band_dct2_op.register_autograd(_band_dct2_backward, setup_context=_band_dct2_setup)


def band_dct2(x: Tensor, ch: Tensor, cw: Tensor) -> Tensor:
    """Forward 2-D DCT onto a band: ``C_H · x · C_Wᵀ``.

    Args:
        x: ``(..., H, W)`` maps.
        ch: ``(kh, H)``, the band's rows of the H-axis basis (:func:`fsanet.nn.dct.band_bases`).
        cw: ``(kw, W)``, the band's rows of the W-axis basis.

    Returns:
        ``(..., kh, kw)`` coefficients.
    """
    _check(x, ch, cw, "band_dct2")
    if x.shape[-2:] != (ch.shape[1], cw.shape[1]):
        raise ValueError(
            f"band_dct2: map {tuple(x.shape[-2:])} does not match bases for {ch.shape[1]}×{cw.shape[1]}"
        )
    return _band_dct2_impl(x, ch, cw) if _direct_call_ok(x) else _band_dct2_op(x, ch, cw)


# ---------------------------------------------------------------------------------- inverse DCT (+ residual)
def _band_idct2_impl(
    y: Tensor, ch: Tensor, cw: Tensor, residual: Optional[Tensor], shift: Optional[Tensor]
) -> Tensor:
    *lead, kh, kw = y.shape
    h, w = ch.shape[1], cw.shape[1]
    y3 = y.reshape(-1, kh, kw)  # (M, kh, kw)
    m_maps = y3.shape[0]
    parts = [y, ch, cw] + [t for t in (residual, shift) if t is not None]
    if _kernel_applies(*parts, band=max(kh, kw), elements=m_maps * h * w):
        numba, _, idct2_kernel = _kernels()
        _set_threads(numba)
        out = y.new_empty(m_maps * h, w)
        res = residual.reshape(m_maps * h, w) if residual is not None else out  # unread when absent
        sh = shift.reshape(m_maps) if shift is not None else y.new_zeros(m_maps)
        idct2_kernel(
            _np(y3), _np(ch), _np(_pad_to_group(cw)), _np(res), _np(sh), out.numpy(), residual is not None
        )
    else:
        z = torch.einsum("uh,muv->mhv", ch, y3)  # (M, H, kw): C_Hᵀ on every map as one GEMM
        if shift is not None:  # carry the shift as an extra basis row of ones
            z = torch.cat([z, shift.reshape(m_maps, 1, 1).expand(m_maps, h, 1).to(z.dtype)], -1)
            cw = torch.cat([cw, cw.new_ones(1, w)])  # (kw + 1, W)
        z2 = z.reshape(m_maps * h, -1)
        if residual is not None:
            out = torch.addmm(residual.reshape(m_maps * h, w), z2, cw)  # residual + IDCT, one GEMM
        else:
            out = z2 @ cw
    return out.view(*lead, h, w)


_band_idct2_op = torch.library.custom_op("fsanet::band_idct2", _band_idct2_impl, mutates_args=())


@_band_idct2_op.register_fake
def _(y: Tensor, ch: Tensor, cw: Tensor, residual: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    return y.new_empty(*y.shape[:-2], ch.shape[1], cw.shape[1])


def _band_idct2_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    _, ch, cw, residual, shift = inputs
    ctx.save_for_backward(ch, cw)
    ctx.has_residual, ctx.has_shift = residual is not None, shift is not None


def _band_idct2_backward(ctx, g: Tensor):  # noqa: ANN001, ANN202
    ch, cw = (b.to(g.dtype) for b in ctx.saved_tensors)  # see _band_dct2_backward
    gy = _band_dct2_op(g.contiguous(), ch, cw)
    g_res = g if ctx.has_residual else None
    g_shift = g.sum((-2, -1)) if ctx.has_shift else None
    return gy, None, None, g_res, g_shift


_band_idct2_op.register_autograd(_band_idct2_backward, setup_context=_band_idct2_setup)


def band_idct2(
    y: Tensor, ch: Tensor, cw: Tensor, residual: Optional[Tensor] = None, shift: Optional[Tensor] = None
) -> Tensor:
    """Inverse 2-D DCT from band coefficients, optionally plus a residual: ``res + C_Hᵀ · y · C_W + shift``.

    Args:
        y: ``(..., kh, kw)`` coefficients.
        ch: ``(kh, H)`` and ``cw``: ``(kw, W)``, the bases :func:`band_dct2` used.
        residual: ``(..., H, W)`` added to the result in the same pass, or ``None``.
        shift: ``(...)``, one constant per map added in the same pass, or ``None``.

    Returns:
        ``(..., H, W)``, in ``y``'s dtype.
    """
    _check(y, ch, cw, "band_idct2")
    lead = y.shape[:-2]
    if y.shape[-2:] != (ch.shape[0], cw.shape[0]):
        raise ValueError(
            f"band_idct2: coefficients {tuple(y.shape[-2:])} do not match bases ({ch.shape[0]}×{cw.shape[0]})"
        )
    if residual is not None and residual.shape != (*lead, ch.shape[1], cw.shape[1]):
        raise ValueError(
            f"band_idct2: residual {tuple(residual.shape)} must be {(*lead, ch.shape[1], cw.shape[1])}"
        )
    if shift is not None and shift.shape != lead:
        raise ValueError(f"band_idct2: shift {tuple(shift.shape)} must be {tuple(lead)}")
    if _direct_call_ok(y, residual, shift):
        return _band_idct2_impl(y, ch, cw, residual, shift)
    return _band_idct2_op(y, ch, cw, residual, shift)


# ---------------------------------------------------------------------------------- FLOP formulas
@register_flop_formula(torch.ops.fsanet.band_dct2)
def _band_dct2_flops(x_shape, ch_shape, cw_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    *lead, h, w = x_shape
    maps = math.prod(lead)
    kh, kw = ch_shape[0], cw_shape[0]
    return 2 * maps * kh * w * (h + kw)  # (kh, H)@(H, W) per map, then (M·kh, W)@(W, kw)


@register_flop_formula(torch.ops.fsanet.band_idct2)
def _band_idct2_flops(y_shape, ch_shape, cw_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    *lead, kh, kw = y_shape
    maps = math.prod(lead)
    h, w = ch_shape[1], cw_shape[1]
    return 2 * maps * h * kw * (kh + w)  # (H, kh)@(kh, kw) per map, then (M·H, kw)@(kw, W)
