"""Linear attention (Li, Su, Duan, Zheng 2020): softmax replaced by its first-order Taylor expansion.

With L2-normalised queries and keys the similarity ``1 + q̂ᵢᵀk̂ⱼ`` is non-negative, and the
sums over j factor out of the per-query computation, so the cost is linear in N = H·W.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

__all__ = ["LinearAttention"]


class LinearAttention(AttentionModule):
    """Position-branch linear attention, a drop-in for DANet's PAM::

        out_i = [Σ_j v_j + (Σ_j v_j k̂_jᵀ) q̂_i] / [N + q̂_iᵀ(Σ_j k̂_j + ε)]
        out   = x + γ·out,   γ learnable, starts at 0 (identity)

    q, k: 1×1 convs C→d, L2-normalised over channels at each position; v: 1×1 conv C→C (all with bias).
    ``ε`` is added to every component of ``Σ_j k̂_j`` as in the reference code.

    Cost in MACs (N = H·W): ``N·C·(2d + C) + 2·N·d·C + N·d`` per image (projections, ``K·Vᵀ``,
    its product with ``Q``, and the denominator ``Qᵀ·ΣK``). The usual closed form omits the last
    ``N·d`` term (< 0.02 % at C=512).

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs).

    Args:
        channels: input/output channels C.
        qk_channels: query/key channels d; default max(C // 8, 1).
        eps: the ε of the denominator.
    """

    name = "linear"
    display = "Linear attention"

    def __init__(self, channels: int, qk_channels: Optional[int] = None, eps: float = 1e-6) -> None:
        super().__init__(channels)
        d = max(channels // 8, 1) if qk_channels is None else qk_channels
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"LinearAttention: qk_channels must be an integer ≥ 1, got {qk_channels!r}")
        if not eps >= 0:
            raise ValueError(f"LinearAttention: eps must be ≥ 0, got {eps!r}")
        self.qk_channels = d
        self.eps = eps
        self.query = nn.Conv2d(channels, d, 1)
        self.key = nn.Conv2d(channels, d, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, c, h, w = x.shape
        a = self.attention_input(x)
        q = F.normalize(self.query(a).flatten(2), dim=1)  # (B, d, N), unit columns
        k = F.normalize(self.key(a).flatten(2), dim=1)  # (B, d, N)
        v = self.value(a).flatten(2)  # (B, C, N)
        kv = k @ v.transpose(1, 2)  # (B, d, C) = Σ_j k̂_j v_jᵀ
        numerator = v.sum(dim=-1, keepdim=True) + kv.transpose(1, 2) @ q  # (B, C, N)
        k_sum = (k.sum(dim=-1) + self.eps).unsqueeze(1)  # (B, 1, d)
        denominator = (h * w) + k_sum @ q  # (B, 1, N)
        out = numerator / denominator  # (B, C, N)
        return x + self.gamma * out.view(b, c, h, w)

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        n, c, d = h * w, self.channels, self.qk_channels
        macs = n * c * (2 * d + c) + 2 * n * d * c + n * d + self.eval_band_macs(h, w)
        return 2 * batch * macs
