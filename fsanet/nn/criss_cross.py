"""Recurrent criss-cross attention (CCNet, Huang et al. 2019), pure torch with einsum.

Each position attends to the H + W − 1 positions of its row and column (itself counted once);
repeating the block ``recurrence`` times with shared weights lets information reach every position.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

__all__ = ["CrissCrossAttention"]


class CrissCrossAttention(AttentionModule):
    """Criss-cross attention applied ``recurrence`` times with the same weights.

    One step on input ``x`` (q, k: 1×1 convs C→d; v: 1×1 conv C→C; all with bias)::

        E_col[h, w, i] = q[:, h, w]·k[:, i, w]   (−inf where i == h: self is counted in the row term)
        E_row[h, w, j] = q[:, h, w]·k[:, h, j]
        A = softmax(cat[E_col, E_row])           # joint over the H + W entries of the cross
        out[:, h, w] = Σ_i A_col·v[:, i, w] + Σ_j A_row·v[:, h, j]
        x ← x + γ·out                            # γ learnable, starts at 0 (identity)

    With ``eval_band`` set, each step's q/k/v see ``lowpass`` of that step's input; the residual does not.

    Cost in MACs (N = H·W), per step: ``N·C·(2d + C) + N·(H + W)·(d + C)``; times ``recurrence``.

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs, once per recurrence step).

    Args:
        channels: input/output channels C.
        recurrence: number of steps R (mmseg CCHead: 2).
        qk_channels: query/key channels d; default max(C // 8, 1) as in mmcv.
    """

    name = "criss_cross"
    display = "CCNet RCCA (R=2)"

    def __init__(self, channels: int, recurrence: int = 2, qk_channels: Optional[int] = None) -> None:
        super().__init__(channels)
        if not isinstance(recurrence, int) or recurrence < 1:
            raise ValueError(f"CrissCrossAttention: recurrence must be an integer ≥ 1, got {recurrence!r}")
        d = max(channels // 8, 1) if qk_channels is None else qk_channels
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"CrissCrossAttention: qk_channels must be an integer ≥ 1, got {qk_channels!r}")
        self.recurrence = recurrence
        self.qk_channels = d
        self.query = nn.Conv2d(channels, d, 1)
        self.key = nn.Conv2d(channels, d, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _cross(self, a: Tensor) -> Tensor:
        """One criss-cross aggregation (without γ and residual) of ``a``: (B, C, H, W) -> (B, C, H, W)."""
        h = a.shape[2]
        q = self.query(a)  # (B, d, H, W)
        k = self.key(a)  # (B, d, H, W)
        v = self.value(a)  # (B, C, H, W)
        e_col = torch.einsum("bchw,bciw->bhwi", q, k)  # (B, H, W, H)
        self_mask = torch.eye(h, dtype=torch.bool, device=a.device)[:, None, :]  # (H, 1, H): i == h
        e_col = e_col.masked_fill(self_mask, float("-inf"))
        e_row = torch.einsum("bchw,bchj->bhwj", q, k)  # (B, H, W, W)
        attn = torch.cat([e_col, e_row], dim=-1).softmax(dim=-1)  # (B, H, W, H + W)
        a_col, a_row = attn[..., :h], attn[..., h:]
        out = torch.einsum("bhwi,bciw->bchw", a_col, v)
        return out + torch.einsum("bhwj,bchj->bchw", a_row, v)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        for _ in range(self.recurrence):
            x = x + self.gamma * self._cross(self.attention_input(x))
        return x

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        n, c, d = h * w, self.channels, self.qk_channels
        macs = n * c * (2 * d + c) + n * (h + w) * (d + c) + self.eval_band_macs(h, w)
        return 2 * batch * self.recurrence * macs
