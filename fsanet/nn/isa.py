"""Interlaced sparse self-attention (ISANet, Huang, Yuan et al. 2019) with mmseg ``ISAHead`` semantics.

Dense attention is factorised into two sparse steps: a long-range step inside each of the
``lh·lw`` stride-``(lh, lw)`` sub-sampled grids, then a short-range step inside each contiguous
``lh×lw`` block. Maps whose size is not a multiple of the factor are zero-padded (pad // 2 before,
the rest after) and the zeros are attended to, not masked, as in mmseg and the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

__all__ = ["InterlacedSparseSelfAttention"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """1×1 conv (no bias) → BatchNorm2d → ReLU, mmcv ``ConvModule`` style."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _SelfAttentionBlock(nn.Module):
    """Dense self-attention within each input map (each map is one group); no residual.

    ``q``, ``k``: (1×1 conv-BN-ReLU C→Ck, then Ck→Ck); ``v``: plain 1×1 conv C→C with bias;
    ``A = softmax(qᵀk · Ck^-0.5)``; output ``ConvBNReLU1x1(C→C)(v·Aᵀ)``.

    Cost in MACs for n maps of P pixels each: ``n·P·(2·(C·Ck + Ck²) + 2·C²) + n·P²·(Ck + C)``.
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.query = nn.Sequential(
            _conv_bn_relu(channels, key_channels), _conv_bn_relu(key_channels, key_channels)
        )
        self.key = nn.Sequential(
            _conv_bn_relu(channels, key_channels), _conv_bn_relu(key_channels, key_channels)
        )
        self.value = nn.Conv2d(channels, channels, 1)
        self.output_project = _conv_bn_relu(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (n, Ck, P)
        k = self.key(x).flatten(2)  # (n, Ck, P)
        v = self.value(x).flatten(2)  # (n, C, P)
        attn = (q.transpose(1, 2) @ k * self.key_channels**-0.5).softmax(dim=-1)  # (n, P, P)
        context = (v @ attn.transpose(1, 2)).view(n, c, h, w)  # (n, C, h, w)
        return self.output_project(context)


class InterlacedSparseSelfAttention(AttentionModule):
    """ISA block with the head's fusion conv inside: ``out = ConvBNReLU1x1(2C→C)(cat[ISA(x), x])``.

    With ``(lh, lw) = down_factor``, ``gh = ceil(H / lh)``, ``gw = ceil(W / lw)`` and the padded size
    ``Np = gh·lh·gw·lw``: the long-range step attends inside ``lh·lw`` groups of ``gh×gw`` pixels
    ``{(a·lh + i, b·lw + j)}``, the short-range step inside ``gh·gw`` contiguous ``lh×lw`` blocks.
    Each step is a :class:`_SelfAttentionBlock` with its own weights.

    Cost in MACs (N = H·W, Ck = key_channels), per image::

        2 · Np·(2·(C·Ck + Ck²) + 2·C²)                       # projections of both steps
        + (lh·lw·(gh·gw)² + gh·gw·(lh·lw)²)·(Ck + C)         # long- and short-range attention
        + N·2C·C                                             # fusion conv on cat[ISA(x), x]

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs).

    Args:
        channels: input/output channels C.
        key_channels: query/key channels Ck; default max(C // 2, 1) (mmseg ``isa_channels=256`` at C=512).
        down_factor: ``(lh, lw)``, the short-range block size = the long-range sampling stride;
            an int means the same for both axes.
    """

    name = "isa"
    display = "ISA (8×8)"

    def __init__(
        self,
        channels: int,
        key_channels: Optional[int] = None,
        down_factor: Union[int, Sequence[int]] = (8, 8),
    ) -> None:
        super().__init__(channels)
        ck = max(channels // 2, 1) if key_channels is None else key_channels
        if not isinstance(ck, int) or ck < 1:
            raise ValueError(
                f"InterlacedSparseSelfAttention: key_channels must be an integer ≥ 1, got {key_channels!r}"
            )
        factor = (down_factor, down_factor) if isinstance(down_factor, int) else tuple(down_factor)
        if len(factor) != 2 or not all(isinstance(f, int) and f >= 1 for f in factor):
            raise ValueError(
                "InterlacedSparseSelfAttention: down_factor must be an integer ≥ 1 or a pair (lh, lw) of "
                f"them, got {down_factor!r}"
            )
        self.key_channels = ck
        self.down_factor: tuple[int, int] = (factor[0], factor[1])
        self.global_attention = _SelfAttentionBlock(channels, ck)
        self.local_attention = _SelfAttentionBlock(channels, ck)
        self.fuse = _conv_bn_relu(2 * channels, channels)

    def _geometry(self, h: int, w: int) -> tuple[int, int, int, int, int, int]:
        """``(lh, lw, gh, gw, pad_h, pad_w)`` for an H×W map."""
        lh, lw = self.down_factor
        gh, gw = math.ceil(h / lh), math.ceil(w / lw)
        return lh, lw, gh, gw, gh * lh - h, gw * lw - w

    def _context(self, a: Tensor) -> Tensor:
        """Long-range then short-range attention of ``a``: (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = a.shape
        lh, lw, gh, gw, pad_h, pad_w = self._geometry(h, w)
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:
            a = F.pad(a, (left, pad_w - left, top, pad_h - top))  # (B, C, gh·lh, gw·lw)
        # long range: group (i, j) holds pixels (g·lh + i, f·lw + j)
        y = a.view(b, c, gh, lh, gw, lw).permute(0, 3, 5, 1, 2, 4).reshape(b * lh * lw, c, gh, gw)
        y = self.global_attention(y)
        # short range: group (g, f) is the contiguous block rows g·lh.., cols f·lw..
        y = y.view(b, lh, lw, c, gh, gw).permute(0, 4, 5, 3, 1, 2).reshape(b * gh * gw, c, lh, lw)
        y = self.local_attention(y)
        y = y.view(b, gh, gw, c, lh, lw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * lh, gw * lw)
        return y[:, :, top : top + h, left : left + w]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        context = self._context(self.attention_input(x))
        return self.fuse(torch.cat([context, x], dim=1))

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        c, ck = self.channels, self.key_channels
        lh, lw, gh, gw, _, _ = self._geometry(h, w)
        n_pad = gh * lh * gw * lw
        projections = 2 * n_pad * (2 * (c * ck + ck * ck) + 2 * c * c)
        attention = (lh * lw * (gh * gw) ** 2 + gh * gw * (lh * lw) ** 2) * (ck + c)
        fusion = h * w * 2 * c * c
        return 2 * batch * (projections + attention + fusion + self.eval_band_macs(h, w))
