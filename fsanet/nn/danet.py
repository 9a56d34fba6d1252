"""DANet's two attention modules (Fu et al. 2019) with mmseg ``DAHead`` semantics.

``PositionAttention`` (PAM) attends over the N = H·W positions, ``ChannelAttention`` (CAM) over the
C channels. Both scale their output by a learnable ``γ`` that starts at 0, so they begin as identity.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

__all__ = ["ChannelAttention", "PositionAttention"]


class PositionAttention(AttentionModule):
    """Position attention module: ``out = x + γ · v·Aᵀ``, ``A = softmax_j(q_iᵀ k_j)`` (no scaling).

    ``q``, ``k`` are plain 1×1 convs C→d with bias, ``v`` a 1×1 conv C→C with bias.

    Cost in MACs (N = H·W): ``N·C·(2d + C) + N²·(d + C)`` per image.

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs).

    Args:
        channels: input/output channels C.
        qk_channels: query/key channels d; default max(C // 8, 1) (mmseg ``pam_channels=64`` at C=512).
    """

    name = "danet_pam"
    display = "DANet PAM"

    def __init__(self, channels: int, qk_channels: Optional[int] = None) -> None:
        super().__init__(channels)
        d = max(channels // 8, 1) if qk_channels is None else qk_channels
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"PositionAttention: qk_channels must be an integer ≥ 1, got {qk_channels!r}")
        self.qk_channels = d
        self.query = nn.Conv2d(channels, d, 1)
        self.key = nn.Conv2d(channels, d, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, c, h, w = x.shape
        a = self.attention_input(x)
        q = self.query(a).flatten(2)  # (B, d, N)
        k = self.key(a).flatten(2)  # (B, d, N)
        v = self.value(a).flatten(2)  # (B, C, N)
        attn = (q.transpose(1, 2) @ k).softmax(dim=-1)  # (B, N, N)
        out = v @ attn.transpose(1, 2)  # (B, C, N)
        return x + self.gamma * out.view(b, c, h, w)

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        n, c, d = h * w, self.channels, self.qk_channels
        macs = n * c * (2 * d + c) + n * n * (d + c) + self.eval_band_macs(h, w)
        return 2 * batch * macs


class ChannelAttention(AttentionModule):
    """Channel attention module: ``out = x + γ · A·X`` with ``X = x.view(B, C, N)``,
    ``E = X·Xᵀ`` and ``A = softmax(rowmax(E) − E)`` (row-wise). No learned projections.

    Cost in MACs (N = H·W): ``2·C²·N`` per image.

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs).

    Args:
        channels: input/output channels C.
    """

    name = "danet_cam"
    display = "DANet CAM"

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, c, h, w = x.shape
        feats = self.attention_input(x).flatten(2)  # (B, C, N)
        energy = feats @ feats.transpose(1, 2)  # (B, C, C)
        energy = energy.amax(dim=-1, keepdim=True) - energy
        attn = energy.softmax(dim=-1)  # (B, C, C)
        out = attn @ feats  # (B, C, N)
        return x + self.gamma * out.view(b, c, h, w)

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        return 2 * batch * (2 * self.channels**2 * h * w + self.eval_band_macs(h, w))
