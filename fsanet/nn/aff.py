"""AFFormer's adaptive frequency filter (Dong, Wang, Wang, AAAI 2023), as a residual attention module.

Three filters on one set of ``q, k, v`` tokens, summed and projected:

* FSK (frequency similarity kernel): linear attention ``d^-0.5 · q·(softmax_N(k)ᵀ·v)``, O(N·d²).
* DLF (dynamic low-pass): ``v`` as an image, split into 4 channel groups, each average-pooled to
  1×1, 2×2, 3×3 and 6×6, upsampled bilinearly back, then ReLU.
* DHF (dynamic high-pass): depthwise convs with kernels 3, 5, 7 on groups of heads of ``v``,
  gated element-wise by ``q``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

__all__ = ["FrequencyFilter", "split_heads"]


def split_heads(num_heads: int, num_kernels: int) -> tuple[int, ...]:
    """Spread ``num_heads`` over ``num_kernels`` kernel sizes as evenly as possible, the remainder
    going to the largest kernels: 8 heads over (3, 5, 7) -> (2, 3, 3), AFFormer's split.

    Entries may be 0 (e.g. 2 heads -> (0, 1, 1)); those kernel sizes are then unused.
    """
    base, rem = divmod(num_heads, num_kernels)
    return tuple(base + (1 if i >= num_kernels - rem else 0) for i in range(num_kernels))


class FrequencyFilter(AttentionModule):
    """AFFormer frequency filter block: ``out = x + proj(FSK + DHF + DLF)`` computed on ``LN(x)`` tokens.

    Tokens ``(B, N, C)``, ``d = C / num_heads``; ``q, k, v = Linear(C→3C)(LN(x))`` split into heads
    ``(B, heads, N, d)``; channel ``head·d + j`` of the value image is element ``j`` of that head.
    Heads are spread over the kernel sizes by :func:`split_heads` (8 heads -> 2×k3, 3×k5, 3×k7).

    Cost in MACs (N = H·W), per image: ``4·N·C² + 2·N·C·d + N·d·Σ_k n_k·k²`` (qkv and output
    projections, ``softmax(k)ᵀ·v`` and ``q·S``, the depthwise convs with ``n_k`` heads on kernel
    ``k``). LayerNorm, softmax, pooling and interpolation are not counted.

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs).

    Args:
        channels: input/output channels C; must be divisible by ``num_heads`` and by the number of
            pooling scales (4).
        num_heads: attention heads.
        pool_sizes: output sizes of the low-pass pooling, one per channel group.
        kernel_sizes: odd depthwise kernel sizes of the high-pass filters.
        qkv_bias: bias of the qkv projection.
    """

    name = "aff"
    display = "AFFormer filter"

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        pool_sizes: Sequence[int] = (1, 2, 3, 6),
        kernel_sizes: Sequence[int] = (3, 5, 7),
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(channels)
        if not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"FrequencyFilter: channels ({channels}) must be divisible by num_heads ({num_heads!r}); "
                "pick num_heads among the divisors of channels"
            )
        pool_sizes, kernel_sizes = tuple(pool_sizes), tuple(kernel_sizes)
        if not pool_sizes or not all(isinstance(s, int) and s >= 1 for s in pool_sizes):
            raise ValueError(f"FrequencyFilter: pool_sizes must be integers ≥ 1, got {pool_sizes!r}")
        if channels % len(pool_sizes):
            raise ValueError(
                f"FrequencyFilter: channels ({channels}) must be divisible by the number of pooling scales "
                f"({len(pool_sizes)}, pool_sizes={pool_sizes})"
            )
        if not kernel_sizes or not all(isinstance(k, int) and k >= 1 and k % 2 for k in kernel_sizes):
            raise ValueError(f"FrequencyFilter: kernel_sizes must be odd integers ≥ 1, got {kernel_sizes!r}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.pool_sizes = pool_sizes
        heads = split_heads(num_heads, len(kernel_sizes))
        self.high_pass_kernels = tuple((k, n) for k, n in zip(kernel_sizes, heads) if n > 0)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.high_pass = nn.ModuleList(
            nn.Conv2d(n * self.head_dim, n * self.head_dim, k, padding=k // 2, groups=n * self.head_dim)
            for k, n in self.high_pass_kernels
        )
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, c, h, w = x.shape
        n, heads, d = h * w, self.num_heads, self.head_dim
        tokens = self.norm(self.attention_input(x).flatten(2).transpose(1, 2))  # (B, N, C)
        q, k, v = self.qkv(tokens).view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (B, heads, N, d)

        # FSK: linear-attention kernel
        kernel = k.softmax(dim=2).transpose(-2, -1) @ v  # (B, heads, d, d)
        fsk = (q @ kernel) * d**-0.5  # (B, heads, N, d)

        v_img = v.transpose(-2, -1).reshape(b, c, h, w)  # (B, C, H, W), channel = head·d + j

        # DHF: depthwise high-pass filters on head groups, gated by q
        parts = v_img.split([nh * d for _, nh in self.high_pass_kernels], dim=1)
        high = torch.cat([conv(p) for conv, p in zip(self.high_pass, parts)], dim=1)  # (B, C, H, W)
        dhf = q * high.view(b, heads, d, n).transpose(-2, -1)  # (B, heads, N, d)

        # DLF: multi-scale average pooling on channel groups, upsampled back
        groups = v_img.split(c // len(self.pool_sizes), dim=1)
        low = torch.cat(
            [
                F.interpolate(F.adaptive_avg_pool2d(g, s), size=(h, w), mode="bilinear", align_corners=False)
                for s, g in zip(self.pool_sizes, groups)
            ],
            dim=1,
        ).relu()  # (B, C, H, W)
        dlf = low.view(b, heads, d, n).transpose(-2, -1)  # (B, heads, N, d)

        y = (fsk + dhf + dlf).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        out = x.flatten(2).transpose(1, 2) + self.proj(y)  # (B, N, C)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        n, c, d = h * w, self.channels, self.head_dim
        depthwise = sum(nh * d * k * k for k, nh in self.high_pass_kernels)
        macs = 4 * n * c * c + 2 * n * c * d + n * depthwise + self.eval_band_macs(h, w)
        return 2 * batch * macs
