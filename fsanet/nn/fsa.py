"""Frequency self-attention (FSA): non-local attention over a band of 2-D DCT coefficients.

The official ``FreNonLocal`` block (FsaNet, arXiv 2211.15595) on ``x`` of shape ``(B, C, H, W)`` with
``N = H·W`` positions, a DCT band of ``K = kh·kw`` coefficients and ``C' = C / reduction``:

* tokens ``Xf = DCT_band(x)`` ``(B, C, K)``; ``Qf, Kf, Vf = θ(Xf), φ(Xf), g(Xf)`` ``(B, C', K)``;
* ``dot``: ``Yf = Vf · (Kfᵀ Qf) / N`` (K×K attention among frequency tokens);
* ``linsoftmax``: spatial attention on the low-passed ``q_i, k_j, v_j`` with the kernel
  ``(1 + cos(q_i, k_j)) / Σ_j (1 + cos(q_i, k_j))``, evaluated without any N×N matrix;
* ``out = x + BN(out_conv(IDCT(Yf)))``, BN weight zero-initialised so the block starts as the identity.

Both modes equal spatial non-local attention (same kernel) applied to ``lowpass(x, band)``: the
high frequencies pass through the residual untouched.

Two implementations share one set of parameters (one ``state_dict`` serves both; ``impl`` can be
flipped on an existing instance):

``reference``
    The official structure with the dense basis ``P`` (K×N): the spatial ``out_conv`` and a plain
    ``nn.BatchNorm2d`` run after the inverse transform. Forward cost in MACs (B = 1)::

        dot:        C·N·K + 3·C'·C·K + 2·C'·K² + C'·K·N + C·C'·N
        linsoftmax: C·N·K + 3·C'·C·K + C'·K² + K³ + K² + 2·K²·N + K·N + 3·C'·K·N + C·C'·N

``fused``
    Everything that commutes with the transform runs on the K tokens. The only passes over the N
    positions are one separable forward DCT of ``x`` and one inverse DCT fused with the residual
    add (:mod:`fsanet.nn.dct_ops`: streaming CPU kernels, BLAS elsewhere); ``out_conv`` and BN
    (including its training-mode batch statistics, via the DC coefficient and Parseval) act on the
    tokens. Forward cost in MACs (B = 1)::

        transforms: C·kh·H·W + C·kh·W·kw                    (forward DCT)
                    C·H·kh·kw + C·H·kw·W                    (inverse DCT + residual)
        dot:        transforms + 3·C'·C·K + 2·C'·K² + C·C'·K
        linsoftmax: C·kh·H·W + C·kh·W·kw + 3·C'·C·K + C·C'·K + 3·C'·K²
                    + 5·K²·N + 2·K·N + C·(K + 1)·N
                    [+ K²·N + C·K + C·K² for the training-mode BN statistics]

    With C = 512, C' = 256, K = 25 (5×5) at 97×97: dot ≈ 0.064 GMAC fused against ≈ 1.42 GMAC
    reference; linsoftmax ≈ 0.19 against ≈ 1.56 GMAC. The reference cost is dominated by the
    spatial ``out_conv`` (C·C'·N), which the fused path moves onto the K tokens.

In ``linsoftmax`` the per-position normalisation does not commute with the transform; the fused
path keeps it linear in N with K×K Gram algebra (``‖q_i‖² = p_iᵀ QfᵀQf p_i``, never the C'×N maps)
and ends with one ``baddbmm``: ``x + [scale·W_out·Vf, shift] @ [Wmix; 1]`` with the (K, N) mixing
weights ``Wmix``. The full band (``band=None``) makes K = N: fine for tests, not for large maps.

Training-mode BN statistics on the fused path are exact: per image, the spatial mean and the
spatial variance of the pre-BN map come from the tokens, and they are combined as within-image
plus between-image variance (no ``E[z²] − mean²`` cancellation). Under ``torch.distributed``
(``sync_stats``) the sums and then the squared deviations are all-reduced with autograd, so the
result equals ``nn.BatchNorm2d`` on the concatenated batch, as ``SyncBatchNorm`` does.

``flops(h, w, batch)`` returns 2× the MACs of the instance's impl, mode and BN state, and adds the
eval-band low-pass when ``eval_band`` is set; it matches ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fsanet.band import fit_band
from fsanet.nn.base import AttentionModule
from fsanet.nn.dct import Band, BandLike, band_bases, dense_basis, normalize_band
from fsanet.nn.dct_ops import band_dct2, band_idct2

__all__ = ["IMPLS", "MODES", "FrequencySelfAttention"]

MODES = ("dot", "linsoftmax")
IMPLS = ("fused", "reference")


@functools.lru_cache(maxsize=16)  # (K, N) each: keep few, the full band at 97×97 is 354 MB in fp32
def _dense_basis_cached(h: int, w: int, band: Band, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Built outside inference mode so a cache filled under inference_mode still serves autograd.
    with torch.inference_mode(False), torch.no_grad():
        return dense_basis(h, w, band, device, dtype)  # (K, N)


def _acc(t: Tensor) -> Tensor:
    """Batch statistics in at least float32 (as ``nn.BatchNorm2d`` computes them under autocast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the final residual GEMM, so the output keeps ``x``'s dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _distributed_world() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: Tensor) -> Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


class FrequencySelfAttention(AttentionModule):
    """Frequency self-attention block, ``(B, C, H, W) -> (B, C, H, W)`` with the residual inside.

    Args:
        channels: input/output channels C.
        reduction: C' = C // reduction channels for queries, keys and values.
        band: the DCT band attended over, anything :func:`fsanet.nn.dct.normalize_band` accepts:
            ``None`` (full spectrum), ``(n_u, n_v)`` or ``(u0, u1, v0, v1)`` with ``-1`` meaning
            "to the end of the map". Checked against each input's H×W at forward time.
        mode: ``'dot'`` (``Vf·Kfᵀ·Qf / N``) or ``'linsoftmax'`` (``(1+cos)/Σ(1+cos)`` kernel).
        impl: ``'fused'`` (token-domain fast path) or ``'reference'`` (official structure).
        eps: added to the q/k norms and to the denominator in ``linsoftmax``.
        sync_stats: in training mode under ``torch.distributed`` with world size > 1, the fused
            path all-reduces the BN batch statistics across processes (as ``SyncBatchNorm``).
        clamp_band: a band (and an ``eval_band``) larger than the map keeps the whole map (for a block
            that runs at several map sizes with one band, as in AFFormer's stages); by default that is
            an error.
    """

    name = "fsa"
    display = "FSA"

    @classmethod
    def bench_variants(cls, setting: str, bands: Sequence[Band]) -> list[dict[str, Any]]:
        """Per band: both modes × both implementations at the paper size; in the sweep, fused dot,
        fused LinSoftmax and the dot reference (the scaling of the unfused path)."""
        kinds = (
            [(m, i) for m in MODES for i in IMPLS]
            if setting == "paper"
            else [("dot", "fused"), ("linsoftmax", "fused"), ("dot", "reference")]
        )
        return [{"band": tuple(b), "mode": m, "impl": i} for b in bands for m, i in kinds]

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        band: BandLike = (5, 5),
        mode: str = "dot",
        impl: str = "fused",
        eps: float = 1e-12,
        sync_stats: bool = True,
        clamp_band: bool = False,
    ) -> None:
        super().__init__(channels)
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"FrequencySelfAttention: reduction must be an integer ≥ 1, got {reduction!r}")
        if channels % reduction:
            raise ValueError(
                f"FrequencySelfAttention: channels={channels} is not divisible by reduction={reduction}; "
                f"use a reduction that divides {channels}"
            )
        if not eps >= 0:
            raise ValueError(f"FrequencySelfAttention: eps must be ≥ 0, got {eps!r}")
        try:
            self.band: Band = normalize_band(band)  # size-independent; -1 = to the end
        except (ValueError, TypeError) as e:
            raise ValueError(f"FrequencySelfAttention: bad band: {e}") from None
        self.mode = mode
        self.impl = impl
        self.reduction = reduction
        self.inner = channels // reduction
        self.eps = float(eps)
        self.sync_stats = bool(sync_stats)
        self.clamp_band = bool(clamp_band)
        self.clamp_eval_band = self.clamp_band  # the same rule for the evaluation-time truncation

        c, ci = channels, self.inner
        self.theta = nn.Conv1d(c, ci, 1, bias=False)
        self.phi = nn.Conv1d(c, ci, 1, bias=False)
        self.g = nn.Conv1d(c, ci, 1, bias=False)
        self.out_conv = nn.Conv2d(ci, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
        self.out_conv.reset_parameters()
        self.bn.reset_parameters()
        nn.init.zeros_(self.bn.weight)  # the block starts as the identity

    # ------------------------------------------------------------------ options
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"FrequencySelfAttention: unknown mode {value!r}; allowed: {', '.join(MODES)}")
        self._mode = value

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"FrequencySelfAttention: unknown impl {value!r}; allowed: {', '.join(IMPLS)}")
        self._impl = value

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, band={self.band}, "
            f"mode={self.mode!r}, impl={self.impl!r}"
        )

    def resolve_band(self, h: int, w: int) -> Band:
        """The band as ``(u0, u1, v0, v1)`` for an ``h``×``w`` map; ValueError if it does not fit."""
        try:
            return fit_band(self.band, h, w) if self.clamp_band else normalize_band(self.band, h, w)
        except ValueError as e:
            raise ValueError(
                f"FrequencySelfAttention: band {self.band} does not fit the {h}×{w} feature map: {e}"
            ) from None

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        band = self.resolve_band(*x.shape[-2:])
        if self._impl == "reference":
            return self._forward_reference(x, band)
        if self._mode == "dot":
            return self._forward_fused_dot(x, band)
        return self._forward_fused_linsoftmax(x, band)

    def _forward_reference(self, x: Tensor, band: Band) -> Tensor:
        B, C, H, W = x.shape
        N = H * W
        xa = self.attention_input(x)
        P = _dense_basis_cached(H, W, band, x.device, x.dtype)  # (K, N)
        xf = xa.reshape(B, C, N) @ P.T  # (B, C, K)
        q, k, v = self.theta(xf), self.phi(xf), self.g(xf)  # (B, C', K)
        if self._mode == "dot":
            a = k.mT @ q / N  # (B, K, K)
            y = (v @ a) @ P  # (B, C', N)
        else:
            # back to space only for the per-position norms, as the official code does
            a_q = 1.0 / (torch.linalg.vector_norm(q @ P, dim=1) + self.eps)  # (B, N)
            a_k = 1.0 / (torch.linalg.vector_norm(k @ P, dim=1) + self.eps)  # (B, N)
            p_q = P * a_q[:, None, :]  # (B, K, N)
            p_k = P * a_k[:, None, :]  # (B, K, N)
            f = k.mT @ q  # (B, K, K)
            num = ((p_k @ P.T) @ f) @ p_q + P.sum(1)[:, None]  # (B, K, N)
            den = (p_k.sum(-1)[:, None, :] @ f) @ p_q + (N + self.eps)  # (B, 1, N)
            y = v @ (num / den)  # (B, C', N)
        z = self.bn(self.out_conv(y.view(B, self.inner, H, W)))
        return x + z

    def _tokens(self, xa: Tensor, ch: Tensor, cw: Tensor) -> Tensor:
        """Separable forward DCT: ``(B, C, H, W)`` -> ``(B, C, K)``, one streaming pass over ``x``."""
        return band_dct2(xa, ch, cw).flatten(-2)  # (B, C, kh, kw) -> (B, C, K)

    def _qkv(self, xf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(conv.weight[:, :, 0] @ xf for conv in (self.theta, self.phi, self.g))  # (B, C', K)

    def _forward_fused_dot(self, x: Tensor, band: Band) -> Tensor:
        B, C, H, W = x.shape
        N = H * W
        ch, cw = band_bases(H, W, band, x.device, x.dtype)  # (kh, H), (kw, W)
        kh, kw = ch.shape[0], cw.shape[0]
        has_dc = band[0] == 0 and band[2] == 0
        q, k, v = self._qkv(self._tokens(self.attention_input(x), ch, cw))  # (B, C', K)
        a = k.mT @ q / N  # (B, K, K)
        u = self.out_conv.weight.view(C, self.inner) @ (v @ a)  # (B, C, K): out_conv on tokens

        def stats() -> tuple[Tensor, Tensor]:
            # per-image spatial mean: only the DC basis image (constant 1/sqrt(N)) has a nonzero sum;
            # per-image spatial variance: Parseval on the remaining coefficients.
            uf = _acc(u)
            if has_dc:
                return uf[..., 0] / math.sqrt(N), uf[..., 1:].square().sum(-1) / N
            return uf.new_zeros(B, C), uf.square().sum(-1) / N

        scale, shift = self._bn_scale_shift(stats, N)
        us = u * scale[:, None]  # (B, C, K)
        if has_dc:  # the constant shift lives in the DC coefficient
            us[:, :, 0] += shift * math.sqrt(N)
        # no DC token (band without DC): the constant shift is added in the same pass
        shift_map = None if has_dc else shift.to(x.dtype).expand(B, C)
        with _full_precision(x):  # the residual stream keeps x's dtype, as x + BN(...) does
            out = band_idct2(us.view(B, C, kh, kw).to(x.dtype), ch, cw, residual=x, shift=shift_map)
        return out  # (B, C, H, W) = x + IDCT(us) [+ shift], one pass over x

    def _forward_fused_linsoftmax(self, x: Tensor, band: Band) -> Tensor:
        B, C, H, W = x.shape
        N = H * W
        ch, cw = band_bases(H, W, band, x.device, x.dtype)
        P = _dense_basis_cached(H, W, band, x.device, x.dtype)  # (K, N); column p_i = basis at i
        K = P.shape[0]
        has_dc = band[0] == 0 and band[2] == 0
        q, k, v = self._qkv(self._tokens(self.attention_input(x), ch, cw))  # (B, C', K)
        u = self.out_conv.weight.view(C, self.inner) @ v  # (B, C, K): out_conv on value tokens

        # ‖q_i‖² = p_iᵀ (QfᵀQf) p_i, ‖k_j‖² likewise; F = KfᵀQf gives q_iᵀk_j = p_jᵀ F p_i
        gram = torch.cat([q.mT @ q, k.mT @ k, k.mT @ q], 1) @ P  # (B, 3K, N)
        g_q, g_k, f_p = gram.split(K, 1)
        a_q = 1.0 / ((g_q * P).sum(1).clamp_min(0).sqrt() + self.eps)  # (B, N) = 1/(‖q_i‖+eps)
        a_k = 1.0 / ((g_k * P).sum(1).clamp_min(0).sqrt() + self.eps)  # (B, N)
        t = f_p * a_q[:, None, :]  # (B, K, N): column i = F p_i / ‖q_i‖
        d = (P * a_k[:, None, :]) @ P.T  # (B, K, K) = Σ_j p_j p_jᵀ / ‖k_j‖
        r = a_k @ P.T  # (B, K) = Σ_j p_j / ‖k_j‖
        num = d @ t  # (B, K, N): Σ_j s_ij p_j
        if has_dc:  # + Σ_j p_j, which is sqrt(N) at the DC coefficient and 0 elsewhere
            num[:, 0, :] += math.sqrt(N)
        den = r[:, None, :] @ t + (N + self.eps)  # (B, 1, N) = N + Σ_j s_ij + eps
        wmix = num / den  # (B, K, N): y_i = Vf wmix[:, :, i]

        def stats() -> tuple[Tensor, Tensor]:
            uf, wf = _acc(u), _acc(wmix)
            m = wf.mean(-1)  # (B, K)
            wc = wf - m[..., None]  # centred, so the variance needs no cancellation
            mc = wc @ wc.mT  # (B, K, K)
            return (uf @ m[..., None]).squeeze(-1), ((uf @ mc) * uf).sum(-1) / N  # (B, C) each

        scale, shift = self._bn_scale_shift(stats, N)
        lhs = torch.cat([u * scale[:, None], shift.view(1, C, 1).expand(B, C, 1)], -1)  # (B, C, K+1)
        rhs = torch.cat([wmix, wmix.new_ones(B, 1, N)], 1)  # (B, K+1, N)
        with _full_precision(x):
            out = torch.baddbmm(x.reshape(B, C, N), lhs.to(x.dtype), rhs.to(x.dtype))
        return out.view(B, C, H, W)

    # ------------------------------------------------------------------ BN on tokens
    def _bn_scale_shift(
        self, stats: Callable[[], tuple[Tensor, Tensor]], n_img: int
    ) -> tuple[Tensor, Tensor]:
        """``self.bn`` as a per-channel affine map ``scale·z + shift``, exactly as ``nn.BatchNorm2d``.

        Args:
            stats: returns the per-image, per-channel spatial mean and (biased) variance of the
                pre-BN map ``z``, each ``(B, C)``; called only when batch statistics are needed.
            n_img: positions per image (H·W).
        """
        bn = self.bn
        use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        if use_batch:
            zbar, within = stats()
            mean, var, count = self._batch_moments(zbar, within, n_img)
            if bn.training and bn.track_running_stats:
                self._update_running_stats(mean, var, count)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return scale, shift

    def _batch_moments(
        self, zbar: Tensor, within: Tensor, n_img: int
    ) -> tuple[Tensor, Tensor, float | Tensor]:
        """Mean and biased variance over (batch, positions[, processes]) from per-image moments."""
        sync = self.sync_stats and self.bn.training and _distributed_world()
        count: float | Tensor = float(zbar.shape[0] * n_img)
        if not sync and count <= 1:
            raise ValueError(
                f"FrequencySelfAttention: batch norm in training mode needs more than 1 value per channel, "
                f"got batch {zbar.shape[0]} × {n_img} positions"
            )
        first = torch.cat([zbar.sum(0) * n_img, zbar.new_full((1,), count)])  # (C + 1): Σ z, number of values
        if sync:
            first = _all_reduce(first)
            count = first[-1].detach()
        mean = first[:-1] / count
        # total squared deviation = within-image part + between-image part (no E[z²]−mean² cancellation)
        m2 = (within.sum(0) + (zbar - mean).square().sum(0)) * n_img  # (C,)
        if sync:
            m2 = _all_reduce(m2)
        return mean, m2 / count, count

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float | Tensor) -> None:
        bn = self.bn
        if bn.running_mean is None or bn.running_var is None:
            return
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        unbiased = var * (count / (count - 1))
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)

    # ------------------------------------------------------------------ cost
    def flops(self, h: int, w: int, batch: int = 1) -> int:
        """Forward FLOPs (2 per MAC) of this instance's impl/mode/BN state on ``(batch, C, h, w)``.

        Counts exactly the matrix products and convolutions the forward runs, i.e. what
        ``torch.utils.flop_counter.FlopCounterMode`` counts; elementwise work is not counted.
        """
        u0, u1, v0, v1 = self.resolve_band(h, w)
        kh, kw = u1 - u0, v1 - v0
        K, N, C, Ci = kh * kw, h * w, self.channels, self.inner
        macs = self.eval_band_macs(h, w)  # lowpass(x, eval_band), 0 when unset
        qkv = 3 * Ci * C * K
        if self.impl == "reference":
            macs += C * N * K + qkv + Ci * C * N  # DCT, θφg, out_conv
            if self.mode == "dot":
                macs += 2 * Ci * K * K + Ci * K * N
            else:
                macs += 2 * Ci * K * N + Ci * K * K + K**3 + K * K + 2 * K * K * N + K * N + Ci * K * N
            return 2 * batch * macs
        bn = self.bn
        use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        macs += C * kh * h * w + C * kh * w * kw + qkv  # forward DCT (H axis first), θφg
        if self.mode == "dot":
            macs += 2 * Ci * K * K + C * Ci * K  # attention, out_conv on tokens
            macs += C * h * kh * kw + C * h * kw * w  # inverse DCT + residual (+ shift: elementwise)
        else:
            macs += C * Ci * K + 3 * K * Ci * K  # out_conv on tokens, Grams
            macs += 5 * K * K * N + 2 * K * N  # norms, D, numerator, r, denominator
            if use_batch:
                macs += K * K * N + C * K + C * K * K
            macs += C * (K + 1) * N  # mix + inverse + residual
        return 2 * batch * macs
