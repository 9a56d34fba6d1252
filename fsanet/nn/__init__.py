"""Attention modules behind one interface (see :mod:`fsanet.nn.base`): ``Module(channels, **options)``,
``(B, C, H, W) -> (B, C, H, W)`` with the residual inside, an analytic ``flops(h, w)`` and ``eval_band``.

``ATTENTION`` is the plain name -> class dict used by the benchmark and the model heads.
"""

from fsanet.nn.aff import FrequencyFilter
from fsanet.nn.base import AttentionModule
from fsanet.nn.criss_cross import CrissCrossAttention
from fsanet.nn.danet import ChannelAttention, PositionAttention
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.nn.isa import InterlacedSparseSelfAttention
from fsanet.nn.linear import LinearAttention
from fsanet.nn.non_local import NonLocal2d

ATTENTION: dict[str, type[AttentionModule]] = {
    "fsa": FrequencySelfAttention,
    "nonlocal": NonLocal2d,
    "danet_pam": PositionAttention,
    "danet_cam": ChannelAttention,
    "criss_cross": CrissCrossAttention,
    "isa": InterlacedSparseSelfAttention,
    "linear": LinearAttention,
    "aff": FrequencyFilter,
}

__all__ = [
    "ATTENTION",
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
