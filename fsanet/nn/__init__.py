"""Attention modules behind one interface (see :mod:`fsanet.nn.base`): ``Module(channels, **options)``,
``(B, C, H, W) -> (B, C, H, W)`` with the residual inside, an analytic ``flops(h, w)`` and ``eval_band``.

Which modules exist as methods is declared by the decode heads (``fsanet.models.heads``); the
benchmark's name → class dict is :func:`fsanet.models.attention_modules`.
"""

from fsanet.nn.aff import FrequencyFilter
from fsanet.nn.base import AttentionModule
from fsanet.nn.criss_cross import CrissCrossAttention
from fsanet.nn.danet import ChannelAttention, PositionAttention
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.nn.isa import InterlacedSparseSelfAttention
from fsanet.nn.linear import LinearAttention
from fsanet.nn.non_local import NonLocal2d

__all__ = [
    "AttentionModule",
    "ChannelAttention",
    "CrissCrossAttention",
    "FrequencyFilter",
    "FrequencySelfAttention",
    "InterlacedSparseSelfAttention",
    "LinearAttention",
    "NonLocal2d",
    "PositionAttention",
]
