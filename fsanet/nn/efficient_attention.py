"""Segformer's efficient self-attention: multi-head attention over a spatially reduced key/value map.

One Segformer block's attention sub-layer (Xie et al. 2021, "SegFormer: simple and efficient design
for semantic segmentation with transformers") on ``x`` of shape ``(B, C, H, W)``, ``N = H·W``::

    y      = LN(x)                                   # per position, over channels
    q      = W_q · y                                 # (B, N, C), every position queries
    s      = LN_sr(Conv_sr(y))  if sr_ratio > 1 else y   # (B, M, C), M = ⌊H/r⌋·⌊W/r⌋
    k, v   = W_kv · s                                # (B, M, C) each
    a      = softmax(q_h k_hᵀ / sqrt(C/heads)) v_h   # per head h
    out    = x + drop_path(W_proj · a)

``Conv_sr`` is a ``Conv2d(C, C, kernel=r, stride=r)`` with bias; the projections carry biases
(``qkv_bias``; the output projection always has one).

Parameter layout (``norm``, ``q``, ``kv``, ``proj``, ``sr``, ``sr_norm``): ``kv`` stacks the key rows on
top of the value rows and each of q, k, v splits its C output features into ``heads`` contiguous
chunks, as the official NVlabs ``Attention`` does; mmseg's ``nn.MultiheadAttention`` ``in_proj``
(q; k; v stacked) maps onto ``q`` and ``kv`` by slicing (:mod:`fsanet.models.segformer_keys`).

Two implementations share the parameters: ``impl="sdpa"`` uses
:func:`torch.nn.functional.scaled_dot_product_attention`; ``impl="reference"`` forms the
``(N, M)`` attention matrix with a plain softmax.

Band truncation without retraining (``eval_band`` set): the keys and values are computed from
``lowpass(LN(x), eval_band)`` (before the spatial reduction); the queries and the residual keep the
full map. At the full band the module is unchanged. One band serves every stage of the encoder: on a
stage map smaller than the band the whole map is kept (``clamp_eval_band``).

Cost in MACs per image (``M`` as above; ``M = N`` when ``sr_ratio`` is 1)::

    2·N·C²              query and output projections
    + r²·M·C²           spatial-reduction conv (only when r > 1)
    + 2·M·C²            key/value projection
    + 2·N·M·C           q·kᵀ and attention·v over all heads

LayerNorm, softmax and the residual are not counted. With ``eval_band`` the low-pass of the
normalised map adds ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)``. ``flops`` returns 2× the MACs:
what ``torch.utils.flop_counter.FlopCounterMode`` counts, except that on CPU the counter sees no
FLOPs in the fused SDPA kernel (use ``impl="reference"`` or the math SDPA backend to cross-check).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule
from fsanet.nn.dct import Band

__all__ = ["IMPLS", "EfficientSelfAttention", "drop_path", "init_segformer_weights"]

IMPLS = ("sdpa", "reference")


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of ``x`` with probability ``p``, scale the rest by 1/(1-p).

    Args:
        x: ``(B, ...)``; one Bernoulli draw per sample.
        p: drop probability in [0, 1).
        training: identity when False (or when ``p`` is 0).
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ...)
    return x * mask / keep


def init_segformer_weights(module: nn.Module) -> None:
    """Segformer's initialisation for one module (use with ``Module.apply``).

    Linear: truncated normal (std 0.02), zero bias; LayerNorm: weight 1, bias 0; Conv2d:
    ``N(0, sqrt(2 / fan_out))`` with ``fan_out = k_h·k_w·C_out / groups``, zero bias.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class EfficientSelfAttention(AttentionModule):
    """Segformer attention sub-layer ``x + drop_path(attn(LN(x)))``, ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input/output channels C; divisible by ``heads``.
        heads: attention heads.
        sr_ratio: spatial-reduction ratio r of the key/value map (1: no reduction).
        qkv_bias: biases on the query and key/value projections.
        drop_path: stochastic-depth probability of the residual branch (training only).
        ln_eps: epsilon of both LayerNorms (mmseg's Segformer: 1e-6).
        impl: ``"sdpa"`` (``scaled_dot_product_attention``) or ``"reference"`` (explicit softmax).
    """

    name = "efficient"
    display = "Efficient SA (Segformer)"
    clamp_eval_band = True  # one eval_band serves all four stages; a stage smaller than it is kept whole

    @classmethod
    def bench_variants(cls, setting: str, bands: Sequence[Band]) -> list[dict[str, Any]]:
        """One row: 8 heads (head width 64 at C = 512) and Segformer's finest reduction ratio, 8."""
        return [{"heads": 8, "sr_ratio": 8}]

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        ln_eps: float = 1e-6,
        impl: str = "sdpa",
    ) -> None:
        super().__init__(channels)
        if not isinstance(heads, int) or heads < 1 or channels % heads:
            raise ValueError(
                f"EfficientSelfAttention: heads must be an integer ≥ 1 dividing channels={channels}, "
                f"got {heads!r}"
            )
        if not isinstance(sr_ratio, int) or sr_ratio < 1:
            raise ValueError(f"EfficientSelfAttention: sr_ratio must be an integer ≥ 1, got {sr_ratio!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"EfficientSelfAttention: drop_path must be in [0, 1), got {drop_path!r}")
        self.heads = heads
        self.head_dim = channels // heads
        self.sr_ratio = sr_ratio
        self.drop_path = float(drop_path)
        self.impl = impl
        c = channels
        self.norm = nn.LayerNorm(c, eps=ln_eps)
        self.q = nn.Linear(c, c, bias=qkv_bias)
        self.kv = nn.Linear(c, 2 * c, bias=qkv_bias)
        self.proj = nn.Linear(c, c)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(c, c, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(c, eps=ln_eps)
        self.apply(init_segformer_weights)

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"EfficientSelfAttention: unknown impl {value!r}; allowed: {', '.join(IMPLS)}")
        self._impl = value

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, heads={self.heads}, sr_ratio={self.sr_ratio}, "
            f"drop_path={self.drop_path}, impl={self.impl!r}"
        )

    def reduced_size(self, h: int, w: int) -> tuple[int, int]:
        """Size of the key/value map for an ``h``×``w`` input (the strided conv's output size)."""
        r = self.sr_ratio
        if r == 1:
            return h, w
        if h < r or w < r:
            raise ValueError(
                f"EfficientSelfAttention: a {h}×{w} map is smaller than the reduction kernel {r}×{r}"
            )
        return (h - r) // r + 1, (w - r) // r + 1

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        out = self.forward_tokens(tokens, h, w)  # (B, N, C)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def forward_tokens(self, x: Tensor, h: int, w: int) -> Tensor:
        """The same sub-layer on a token sequence ``(B, N, C)``, ``N = h·w`` in row-major order."""
        b, n, c = x.shape
        if n != h * w or c != self.channels:
            raise ValueError(
                f"EfficientSelfAttention expects (B, {h}·{w}, {self.channels}) tokens, got {tuple(x.shape)}"
            )
        self.reduced_size(h, w)  # size check with a clear message
        y = self.norm(x)  # (B, N, C)
        q = self.q(y).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

        source = y
        if self.eval_band is not None or self.sr_ratio > 1:
            y_map = y.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
            y_map = self.attention_input(y_map)  # low-passed when eval_band is set
            if self.sr_ratio > 1:
                reduced = self.sr(y_map).flatten(2).transpose(1, 2)  # (B, M, C)
                source = self.sr_norm(reduced)
            else:
                source = y_map.flatten(2).transpose(1, 2)  # (B, N, C)
        m = source.shape[1]
        kv = self.kv(source).view(b, m, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, heads, M, d) each

        if self._impl == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        else:
            a = self._attend_reference(q, k, v)
        a = a.transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return x + drop_path(self.proj(a), self.drop_path, self.training)

    def _attend_reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``softmax(q kᵀ / sqrt(d)) v`` with the explicit ``(N, M)`` matrix per head."""
        logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, heads, N, M)
        return logits.softmax(dim=-1) @ v  # (B, heads, N, d)

    # ------------------------------------------------------------------ cost
    def flops(self, h: int, w: int, batch: int = 1) -> int:
        """Forward FLOPs (2 per MAC) on ``(batch, C, h, w)``; see the module docstring for the formula."""
        hr, wr = self.reduced_size(h, w)
        n, m, c, r = h * w, hr * wr, self.channels, self.sr_ratio
        macs = 2 * n * c * c + 2 * m * c * c + 2 * n * m * c + self.eval_band_macs(h, w)
        if r > 1:
            macs += r * r * m * c * c
        return 2 * batch * macs
