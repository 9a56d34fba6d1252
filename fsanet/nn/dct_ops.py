"""The banded separable DCT as two torch custom ops, with streaming CPU kernels (numba).

Fused FSA touches the N positions only twice: one forward transform of ``x`` and one inverse
transform added to the residual. For a narrow band both are *skinny* products,
``(B·C·H, W) @ (W, kw)`` and ``(B·C·H, kw) @ (kw, W)`` with kw ≈ 5, which BLAS runs well below memory
bandwidth on CPU; and an out-of-place ``addmm`` first copies ``x`` into the output, so the inverse
makes two passes over the map. The kernels here make one streaming pass each:

``band_dct2(x, C_H, C_W)`` -> ``C_H · x · C_Wᵀ``
    per map: each row of ``x`` is read once from memory and dotted with the kw basis rows (held in
    cache); the kw results are folded into the (kh, kw) coefficients with ``C_H``'s column.
``band_idct2(y, C_H, C_W, residual, shift)`` -> ``residual + C_Hᵀ · y · C_W + shift``
    per map and row: ``z_h = C_Hᵀ[h] · y`` (kw numbers), then the output row
    ``residual_h + shift + Σ_j z_h[j] · C_W[j]`` is written once, :data:`GROUP` basis rows per pass.

Both walk a map two rows at a time, h and h + ceil(H/2), so each thread keeps two ascending memory
streams in flight (one stream per thread leaves much of this CPU's bandwidth idle). Both run in
parallel over the leading (batch × channel) maps with ``numba.prange``; each map's arithmetic is
sequential, so results do not depend on the thread count. Shapes: ``x``/``residual``
``(..., H, W)``, ``y`` ``(..., kh, kw)``, ``C_H`` ``(kh, H)``, ``C_W`` ``(kw, W)``, ``shift`` ``(...)``.

The torch path (the same products with ``matmul``/``addmm``) runs where the kernels do not apply:
other devices (CUDA's GEMMs handle skinny shapes well), dtypes other than float32/float64, bands
wider than :data:`MAX_KERNEL_BAND` along W, maps smaller than :data:`MIN_KERNEL_ELEMENTS` in all
(unless :func:`use_kernels` forces them), or when :func:`use_kernels` turns them off. Parity
tests compare the two. As custom ops the transforms carry their own autograd (each is the other's
adjoint), a fake implementation for tracing, and a FLOP formula, so ``FlopCounterMode`` counts
them as the matrix products they are: ``2·M·H·kw·(W + kh)`` for either direction, M maps.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
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
]

log = logging.getLogger(__name__)

#: Widest band along W that the CPU kernels take; wider bands use BLAS, which is efficient there.
MAX_KERNEL_BAND = 16
#: Below this many map elements (M·H·W) the torch path runs by default: the kernels' gain there is
#: smaller than the ~1 s it takes a process to import numba and load them (e.g. the study's 12×12 maps).
MIN_KERNEL_ELEMENTS = 1 << 20
_state: dict[str, Optional[bool]] = {"enabled": None}  # None: by size; True/False: forced
#: Basis rows the kernels combine per pass over a row (the paper's 5×5 band takes one pass). The
#: kernels unroll exactly this many terms, so changing it means rewriting their inner loops.
GROUP = 5


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

    # Both kernels take C_W zero-padded to a multiple of GROUP rows (cwg) and work on the basis rows
    # in groups of GROUP: one vectorised pass over cached rows per group, with the GROUP weights of
    # each row held in registers. Each pass handles two rows of a map, h and h + ceil(H/2), so every
    # thread streams two ascending regions of memory at once (one stream per thread leaves this CPU's
    # memory bandwidth idle: ~0.87 vs ~1.4 ms for the forward at 512×128², 2 threads), and each basis
    # row loaded serves both. For odd H the last pass pairs the middle row with itself. Parallel over
    # the M maps; within a map the order of operations is fixed.

    @njit
    def dct2_kernel(x, ch, cwg, y):
        # x (M·H, W), ch (kh, H), cwg (kwg, W) -> y (M, kh, kw) = ch @ x[m] @ cw.T per map
        m_maps, kh, kw = y.shape
        h_size, kwg = ch.shape[1], cwg.shape[0]
        w_size = x.shape[1]
        half = (h_size + 1) // 2
        zero = cwg[0, 0] - cwg[0, 0]  # 0 in the inputs' dtype (a literal 0 would promote float32 to 64)
        for m in numba.prange(m_maps):
            t = np.empty((kwg, h_size), y.dtype)  # t[j, h] = x[m, h] · cw[j]
            for p in range(half):
                ha = p
                hb = p + half if p + half < h_size else p  # odd H: the middle row pairs with itself
                ra, rb = m * h_size + ha, m * h_size + hb
                for g in range(0, kwg, GROUP):  # 2·GROUP dot products in one pass over two rows
                    s0, s1, s2, s3, s4 = zero, zero, zero, zero, zero
                    q0, q1, q2, q3, q4 = zero, zero, zero, zero, zero
                    for w in range(w_size):
                        a, b = x[ra, w], x[rb, w]
                        c = cwg[g, w]
                        s0 += a * c
                        q0 += b * c
                        c = cwg[g + 1, w]
                        s1 += a * c
                        q1 += b * c
                        c = cwg[g + 2, w]
                        s2 += a * c
                        q2 += b * c
                        c = cwg[g + 3, w]
                        s3 += a * c
                        q3 += b * c
                        c = cwg[g + 4, w]
                        s4 += a * c
                        q4 += b * c
                    t[g, ha], t[g + 1, ha], t[g + 2, ha], t[g + 3, ha], t[g + 4, ha] = s0, s1, s2, s3, s4
                    t[g, hb], t[g + 1, hb], t[g + 2, hb], t[g + 3, hb], t[g + 4, hb] = q0, q1, q2, q3, q4
            for u in range(kh):  # fold the H axis: y[m, u, j] = Σ_h ch[u, h] t[j, h]
                for j in range(kw):
                    s = zero
                    for h in range(h_size):
                        s += ch[u, h] * t[j, h]
                    y[m, u, j] = s

    @njit
    def idct2_kernel(y, ch, cwg, residual, shift, out, has_residual):
        # y (M, kh, kw), ch (kh, H), cwg (kwg, W), residual/out (M·H, W), shift (M,)
        # out[m·H + h] = residual[m·H + h] + shift[m] + Σ_j z[j, h] cw[j] with z = (ch.T @ y[m]).T
        m_maps, kh, kw = y.shape
        h_size, kwg = ch.shape[1], cwg.shape[0]
        w_size = out.shape[1]
        half = (h_size + 1) // 2
        zero = cwg[0, 0] - cwg[0, 0]
        for m in numba.prange(m_maps):
            z = np.zeros((kwg, h_size), out.dtype)  # rows kw.. stay 0, matching cwg's padding
            for u in range(kh):
                for j in range(kw):
                    a = y[m, u, j]
                    for h in range(h_size):
                        z[j, h] += a * ch[u, h]
            b = shift[m]
            for p in range(half):
                ha = p
                hb = p + half if p + half < h_size else p  # odd H: the middle row pairs with itself
                ra, rb = m * h_size + ha, m * h_size + hb
                for g in range(0, kwg, GROUP):
                    z0, z1, z2, z3, z4 = z[g, ha], z[g + 1, ha], z[g + 2, ha], z[g + 3, ha], z[g + 4, ha]
                    v0, v1, v2, v3, v4 = z[g, hb], z[g + 1, hb], z[g + 2, hb], z[g + 3, hb], z[g + 4, hb]
                    if g == 0 and has_residual:  # the one pass over memory: read residual, write out
                        for w in range(w_size):
                            c0, c1, c2, c3, c4 = cwg[0, w], cwg[1, w], cwg[2, w], cwg[3, w], cwg[4, w]
                            out[ra, w] = residual[ra, w] + b + z0 * c0 + z1 * c1 + z2 * c2 + z3 * c3 + z4 * c4
                            out[rb, w] = residual[rb, w] + b + v0 * c0 + v1 * c1 + v2 * c2 + v3 * c3 + v4 * c4
                    elif g == 0:  # (writing a self-paired row twice stores the same value twice)
                        for w in range(w_size):
                            c0, c1, c2, c3, c4 = cwg[0, w], cwg[1, w], cwg[2, w], cwg[3, w], cwg[4, w]
                            out[ra, w] = b + z0 * c0 + z1 * c1 + z2 * c2 + z3 * c3 + z4 * c4
                            out[rb, w] = b + v0 * c0 + v1 * c1 + v2 * c2 + v3 * c3 + v4 * c4
                    else:  # further groups of basis rows, on the output rows now in L1
                        if hb == ha:  # a self-paired row must get each term once, not twice
                            v0, v1, v2, v3, v4 = zero, zero, zero, zero, zero
                        for w in range(w_size):
                            c0, c1, c2, c3, c4 = cwg[g, w], cwg[g + 1, w], cwg[g + 2, w], cwg[g + 3, w], cwg[g + 4, w]  # fmt: skip
                            out[ra, w] += z0 * c0 + z1 * c1 + z2 * c2 + z3 * c3 + z4 * c4
                            out[rb, w] += v0 * c0 + v1 * c1 + v2 * c2 + v3 * c3 + v4 * c4

    return numba, dct2_kernel, idct2_kernel


def kernels_available() -> bool:
    """Whether the numba kernels can run in this environment."""
    return _kernels() is not None


def describe() -> str:
    """What runs the CPU transforms, for benchmark reports: numba's version and threading layer, or why not."""
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
        f"bands up to {MAX_KERNEL_BAND} wide, {GROUP} basis rows per pass)"
    )


def _kernel_applies(*tensors: Tensor, kw: int, elements: int) -> bool:
    enabled = _state["enabled"]
    if enabled is False or kw > MAX_KERNEL_BAND or (enabled is None and elements < MIN_KERNEL_ELEMENTS):
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    return _kernels() is not None


def _np(t: Tensor):  # noqa: ANN202 - numpy array view of a contiguous CPU tensor
    return t.detach().contiguous().numpy()


def _pad_to_group(cw: Tensor) -> Tensor:
    """``cw`` with zero rows appended up to a multiple of :data:`GROUP` (the kernels' group size)."""
    return torch.nn.functional.pad(cw, (0, 0, 0, -cw.shape[0] % GROUP))


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
    if _kernel_applies(x, ch, cw, kw=kw, elements=x.numel()):
        numba, dct2_kernel, _ = _kernels()
        _set_threads(numba)
        y = x.new_empty(x3.shape[0], kh, kw)
        dct2_kernel(_np(x3).reshape(-1, w), _np(ch), _np(_pad_to_group(cw)), y.numpy())
    else:
        t = x3.reshape(-1, w) @ cw.T  # (M·H, kw): one skinny GEMM over x
        y = ch @ t.view(x3.shape[0], h, kw)  # (M, kh, kw)
    return y.view(*lead, kh, kw)


_band_dct2_op = torch.library.custom_op("fsanet::band_dct2", _band_dct2_impl, mutates_args=())


@_band_dct2_op.register_fake
def _(x: Tensor, ch: Tensor, cw: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-2], ch.shape[0], cw.shape[0])


def _band_dct2_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    _, ch, cw = inputs
    ctx.save_for_backward(ch, cw)


def _band_dct2_backward(ctx, gy: Tensor):  # noqa: ANN001, ANN202
    ch, cw = ctx.saved_tensors
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
    if _kernel_applies(*parts, kw=kw, elements=m_maps * h * w):
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
    ch, cw = ctx.saved_tensors
    gy = _band_dct2_op(g.contiguous(), ch, cw)
    g_res = g if ctx.has_residual else None
    g_shift = g.sum((-2, -1)) if ctx.has_shift else None
    return gy, None, None, g_res, g_shift


_band_idct2_op.register_autograd(_band_idct2_backward, setup_context=_band_idct2_setup)


def band_idct2(
    y: Tensor, ch: Tensor, cw: Tensor, residual: Optional[Tensor] = None, shift: Optional[Tensor] = None
) -> Tensor:
    """Inverse 2-D DCT from band coefficients, optionally added to a residual: ``res + C_Hᵀ · y · C_W + shift``.

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
    return 2 * maps * h * kw * (w + kh)  # (M·H, W)@(W, kw), then (kh, H)@(H, kw) per map


@register_flop_formula(torch.ops.fsanet.band_idct2)
def _band_idct2_flops(y_shape, ch_shape, cw_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    *lead, kh, kw = y_shape
    maps = math.prod(lead)
    h, w = ch_shape[1], cw_shape[1]
    return 2 * maps * h * kw * (kh + w)  # (H, kh)@(kh, kw) per map, then (M·H, kw)@(kw, W)
