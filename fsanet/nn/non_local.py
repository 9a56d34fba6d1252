"""Non-local block (Wang et al. 2018) with the mmcv ``NonLocal2d`` semantics used by mmseg's NLHead.

Every position attends to every other position of the map: an ``N×N`` attention map, N = H·W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from fsanet.nn.base import AttentionModule
from fsanet.nn.dct import Band

__all__ = ["NonLocal2d"]


_MODES = ("embedded_gaussian", "dot_product")


class NonLocal2d(AttentionModule):
    """Non-local block: ``out = x + BN(conv_out(y))``, ``y_i = Σ_j A_ij · g(x)_j``.

    * ``embedded_gaussian``: ``A = softmax_j(θ_iᵀ φ_j / sqrt(C'))`` (the scale only if ``use_scale``).
    * ``dot_product``: ``A = θ_iᵀ φ_j / N`` (no softmax).

    ``g``, ``θ``, ``φ`` are 1×1 convs C→C' with bias, initialised N(0, 0.01) with zero bias;
    ``conv_out`` is a bias-free 1×1 conv C'→C followed by BatchNorm2d whose weight starts at zero,
    so the block is the identity at initialisation.

    Cost in MACs (N = H·W, C' = C // reduction): ``4·N·C·C' + 2·N²·C'`` per image
    (three input projections + output projection, then ``θᵀφ`` and ``A·g``); BatchNorm and softmax
    are not counted.

    With ``eval_band`` set, ``flops`` adds the low-pass of the attention input (2-D DCT + inverse,
    ``C·(kh·H·W + kh·W·kw + H·kh·kw + H·kw·W)`` MACs).

    Args:
        channels: input/output channels C.
        reduction: C' = max(C // reduction, 1).
        mode: ``"embedded_gaussian"`` or ``"dot_product"``.
        use_scale: divide the embedded-gaussian logits by sqrt(C').
    """

    name = "nonlocal"
    display = "Non-local (emb. Gaussian)"

    @classmethod
    def bench_variants(cls, setting: str, bands: Sequence[Band]) -> list[dict[str, Any]]:
        """The embedded-Gaussian form (mmseg's default), named in the row."""
        return [{"mode": "embedded_gaussian"}]

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        mode: str = "embedded_gaussian",
        use_scale: bool = True,
    ) -> None:
        super().__init__(channels)
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"NonLocal2d: reduction must be an integer ≥ 1, got {reduction!r}")
        if mode not in _MODES:
            raise ValueError(f"NonLocal2d: mode must be one of {_MODES}, got {mode!r}")
        self.reduction = reduction
        self.mode = mode
        self.use_scale = use_scale
        self.inter_channels = max(channels // reduction, 1)
        ci = self.inter_channels
        self.g = nn.Conv2d(channels, ci, 1)
        self.theta = nn.Conv2d(channels, ci, 1)
        self.phi = nn.Conv2d(channels, ci, 1)
        self.conv_out = nn.Conv2d(ci, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.01) -> None:
        """mmcv initialisation: N(0, std) projections, Kaiming conv_out, zero BN weight (identity block)."""
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=std)
            nn.init.zeros_(conv.bias)
        nn.init.kaiming_normal_(self.conv_out.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def attend(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """The attention map ``A`` (B, N, N) and its output ``y`` (B, C', N) over attention input ``a``."""
        g = self.g(a).flatten(2)  # (B, C', N)
        theta = self.theta(a).flatten(2)  # (B, C', N)
        phi = self.phi(a).flatten(2)  # (B, C', N)
        if self.mode == "embedded_gaussian" and self.use_scale:
            theta = theta / math.sqrt(self.inter_channels)  # scale the (C', N) queries, not the (N, N) logits
        logits = theta.transpose(1, 2) @ phi  # (B, N, N): row i = query position i
        if self.mode == "embedded_gaussian":
            attn = logits.softmax(dim=-1)
        else:
            attn = logits / logits.shape[-1]
        return attn, g @ attn.transpose(1, 2)  # y: (B, C', N), y_i = Σ_j A_ij g_j

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, _, h, w = x.shape
        _, y = self.attend(self.attention_input(x))
        y = y.view(b, self.inter_channels, h, w)
        return x + self.norm(self.conv_out(y))

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        n, c, ci = h * w, self.channels, self.inter_channels
        macs = 4 * n * c * ci + 2 * n * n * ci + self.eval_band_macs(h, w)
        return 2 * batch * macs
