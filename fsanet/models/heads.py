"""Decode heads on ONE shared skeleton, so that the compared models differ only in their attention block.

The skeleton is mmseg's ``NLHead``/``FCNHead(num_convs=2, concat_input=True)`` and FsaNet's
``FSAHead1d`` (the official FsaNet code's head)::

    x   (B, C_in, h, w)  stage-4 features
    y = ConvBNReLU_k(C_in → C)(x)                    # (B, C, h, w)
    y = attention(y)  × recurrence (shared weights)  # residual inside the block
    y = ConvBNReLU_k(C → C)(y)
    y = ConvBNReLU_k(C_in + C → C)(cat[x, y])
    logits = Conv1×1(C → classes)(Dropout2d(p)(y))   # (B, classes, h, w)

with k = 3 in the paper (``model.head_kernel``). The heads:

===============  ===========================================================================
``fcn``          no attention (identity): the plain FCN baseline
``fsanet``       :class:`~fsanet.nn.fsa.FrequencySelfAttention` (band, mode, impl, reduction)
``nonlocal``     :class:`~fsanet.nn.non_local.NonLocal2d` (embedded Gaussian, C' = C/2)
``danet``        PAM + CAM on the same features, outputs summed (see :class:`DualAttention`)
``criss_cross``  :class:`~fsanet.nn.criss_cross.CrissCrossAttention`, recurrence 2
``isa``          :class:`~fsanet.nn.isa.InterlacedSparseSelfAttention`
``linear``       :class:`~fsanet.nn.linear.LinearAttention` (Li et al. 2020 position branch)
``aff``          :class:`~fsanet.nn.aff.FrequencyFilter` (AFFormer's adaptive frequency filter)
===============  ===========================================================================

Deviations from the original heads, made so that only the attention differs: mmseg's ``DAHead`` has
two separate conv branches with three classifiers (pam, cam, pam+cam) and no input concat, and
``ISAHead`` has no second 3×3 conv nor input concat; here both use the shared skeleton and one
classifier.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from fsanet.config import AttentionConfig
from fsanet.models.segmentor import Method
from fsanet.nn.aff import FrequencyFilter
from fsanet.nn.criss_cross import CrissCrossAttention
from fsanet.nn.danet import ChannelAttention, PositionAttention
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.nn.isa import InterlacedSparseSelfAttention
from fsanet.nn.linear import LinearAttention
from fsanet.nn.non_local import NonLocal2d

__all__ = [
    "AFFHead",
    "AuxHead",
    "CCHead",
    "ConvBNReLU",
    "DAHead",
    "DecodeHead",
    "DualAttention",
    "FCNHead",
    "FSAHead",
    "ISAHead",
    "LinearHead",
    "NLHead",
    "build_fsa",
]


def _value(x: Any) -> Any:
    return x.value if isinstance(x, Enum) else x


def _given(**kwargs: Any) -> dict[str, Any]:
    """Keyword options that were set (None = keep the module's own default)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def build_fsa(channels: int, opts: AttentionConfig, *, clamp_band: bool = False) -> FrequencySelfAttention:
    """The FSA block that ``model.attention`` (band, mode, impl, reduction) describes, on ``channels``."""
    band = None if opts.band is None else tuple(opts.band)
    return FrequencySelfAttention(
        channels,
        reduction=opts.reduction,
        band=band,
        mode=_value(opts.mode),
        impl=_value(opts.impl),
        clamp_band=clamp_band,
    )


def position_encoding(freqs: int, channels: int, h: int, w: int) -> Tensor:
    """A fixed (1, channels, h, w) positional code made of 1-D DCT basis functions.

    Channel ``k - 1`` holds ``cos(π k (j + ½) / w)`` along the width (column j) and channel
    ``freqs + k - 1`` the same along the height, for k = 1…freqs; the other channels are 0. Each
    channel is one DCT frequency, so ``lowpass(·, (n, n))`` keeps exactly the channels with k < n: a
    band limit on the attention input is also a limit on how finely the code tells positions apart.
    """
    k = torch.arange(1, freqs + 1, dtype=torch.float64)[:, None]  # (P, 1)
    cols = torch.cos(math.pi * k * (torch.arange(w, dtype=torch.float64) + 0.5) / w)  # (P, w)
    rows = torch.cos(math.pi * k * (torch.arange(h, dtype=torch.float64) + 0.5) / h)  # (P, h)
    code = torch.zeros(1, channels, h, w, dtype=torch.float64)
    code[0, :freqs] = cols[:, None, :]
    code[0, freqs : 2 * freqs] = rows[:, :, None]
    return code.float()


class ConvBNReLU(nn.Sequential):
    """k×k convolution (no bias, same padding) → BatchNorm2d → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _init_classifier(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, std=0.01)  # mmseg conv_seg init
    nn.init.zeros_(conv.bias)


class DecodeHead(Method, nn.Module):
    """The shared skeleton; subclasses only implement :meth:`build_attention`.

    Args:
        in_channels: channels of the stage-4 features.
        channels: head width C (512 in the paper).
        num_classes: output classes.
        attention: attention options (each head reads the ones it uses); defaults to the paper's.
        kernel_size: kernel of the three skeleton convs (3 in the paper; 1 keeps the head local).
        dropout: Dropout2d probability before the classifier.
        position: P > 0 adds a fixed positional encoding to the attention input: the 1-D DCT basis
            functions 1…P along the width and along the height (:func:`position_encoding`). 0 = none.
        position_scale: the amplitude of that code (each channel is a cosine of this amplitude).
    """

    #: the skeleton's heads all read ``recurrence`` (how often the block is applied)
    attention_options: ClassVar[tuple[str, ...]] = ("recurrence",)
    #: applications of the attention block when ``attention.recurrence`` is None
    default_recurrence: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        attention: Optional[AttentionConfig] = None,
        kernel_size: int = 3,
        dropout: float = 0.1,
        position: int = 0,
        position_scale: float = 1.0,
    ) -> None:
        super().__init__()
        attention = AttentionConfig() if attention is None else attention
        recurrence = self.default_recurrence if attention.recurrence is None else int(attention.recurrence)
        if recurrence < 1:
            raise ValueError(f"attention.recurrence must be ≥ 1, got {recurrence}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"head kernel_size must be a positive odd number, got {kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0 <= 2 * position <= channels:
            raise ValueError(f"position must be in 0..channels/2 = {channels // 2}, got {position}")
        self.recurrence = recurrence
        if position:
            # buffers, so that the code travels with the weights: a checkpoint trained with it does not
            # load into a head without it, and the reverse
            self.register_buffer("position_freqs", torch.tensor(position))
            self.register_buffer("position_scale", torch.tensor(float(position_scale)))
        self.conv_in = ConvBNReLU(in_channels, channels, kernel_size)
        self.attention = self.build_attention(channels, attention)
        self.conv_out = ConvBNReLU(channels, channels, kernel_size)
        self.fuse = ConvBNReLU(in_channels + channels, channels, kernel_size)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        _init_classifier(self.classifier)

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        """The block applied between the two convs: (B, C, h, w) → (B, C, h, w), residual inside."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_in(x)  # (B, C, h, w)
        if hasattr(self, "position_freqs"):
            code = position_encoding(int(self.position_freqs), y.shape[1], y.shape[2], y.shape[3])
            y = y + self.position_scale * code.to(y)  # (B, C, h, w)
        for _ in range(self.recurrence):
            y = self.attention(y)  # (B, C, h, w)
        y = self.conv_out(y)
        y = self.fuse(torch.cat([x, y], dim=1))  # (B, C_in + C, h, w) -> (B, C, h, w)
        return self.classifier(self.dropout(y))  # (B, classes, h, w)


class FCNHead(DecodeHead):
    """The skeleton with no attention: mmseg ``FCNHead(num_convs=2, concat_input=True)``."""

    name = "fcn"
    display = "FCN (no attention)"
    baseline = True
    attention_classes = ()
    attention_options = ()

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return nn.Identity()


class FSAHead(DecodeHead):
    """FsaNet: frequency self-attention (``FSAHead1d``); options band, mode, impl, reduction."""

    name = "fsanet"
    display = "FsaNet"
    attention_classes = (FrequencySelfAttention,)
    attention_options = ("band", "mode", "impl", "reduction", "recurrence")

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return build_fsa(channels, opts)


class NLHead(DecodeHead):
    """Non-local (embedded Gaussian), mmseg ``NLHead``; options reduction, nonlocal_mode, use_scale."""

    name = "nonlocal"
    display = "NLNet (non-local)"
    attention_classes = (NonLocal2d,)
    attention_options = ("reduction", "nonlocal_mode", "nonlocal_use_scale", "recurrence")

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return NonLocal2d(
            channels,
            reduction=opts.reduction,
            mode=_value(opts.nonlocal_mode),
            use_scale=opts.nonlocal_use_scale,
        )


class DualAttention(nn.Module):
    """DANet's two attentions on the same features, summed: ``PAM(x) + CAM(x)``.

    Each branch keeps its own residual (``x + γ·…``), so at initialisation (γ = 0) this returns
    ``2x``; the BN of the following skeleton conv removes the constant factor.
    """

    def __init__(self, position: nn.Module, channel: nn.Module) -> None:
        super().__init__()
        self.position = position
        self.channel = channel

    def forward(self, x: Tensor) -> Tensor:
        return self.position(x) + self.channel(x)


class DAHead(DecodeHead):
    """DANet: position (PAM) + channel (CAM) attention; option qk_channels (null = C // 8)."""

    name = "danet"
    display = "DANet"
    attention_classes = (PositionAttention, ChannelAttention)
    attention_options = ("qk_channels", "recurrence")

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return DualAttention(
            PositionAttention(channels, **_given(qk_channels=opts.qk_channels)), ChannelAttention(channels)
        )


class CCHead(DecodeHead):
    """CCNet: criss-cross attention ``recurrence`` (default 2) times, shared weights; option qk_channels."""

    name = "criss_cross"
    display = "CCNet"
    attention_classes = (CrissCrossAttention,)
    attention_options = ("qk_channels", "recurrence")

    default_recurrence = 2

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        # The skeleton loops over the block (as mmseg's CCHead does), so the module runs once per call.
        return CrissCrossAttention(channels, recurrence=1, **_given(qk_channels=opts.qk_channels))


class ISAHead(DecodeHead):
    """ISANet: interlaced sparse self-attention; options isa_key_channels (null = C // 2), isa_down_factor."""

    name = "isa"
    display = "ISANet"
    attention_classes = (InterlacedSparseSelfAttention,)
    attention_options = ("isa_key_channels", "isa_down_factor", "recurrence")

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return InterlacedSparseSelfAttention(
            channels, down_factor=tuple(opts.isa_down_factor), **_given(key_channels=opts.isa_key_channels)
        )


class LinearHead(DecodeHead):
    """Linear attention (Li et al. 2020, position branch); option qk_channels (null = C // 8)."""

    name = "linear"
    display = "Linear attention"
    attention_classes = (LinearAttention,)
    attention_options = ("qk_channels", "recurrence")

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return LinearAttention(channels, **_given(qk_channels=opts.qk_channels))


class AFFHead(DecodeHead):
    """AFFormer's adaptive frequency filter as the attention block; option aff_heads."""

    name = "aff"
    display = "AFFormer filter"
    attention_classes = (FrequencyFilter,)
    attention_options = ("aff_heads", "recurrence")

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return FrequencyFilter(channels, num_heads=opts.aff_heads)


class AuxHead(nn.Module):
    """Auxiliary FCN head on stage 3: ConvBNReLU_k → Dropout2d → 1×1 classifier (mmseg ``num_convs=1``).

    Args:
        in_channels: channels of the stage-3 features.
        channels: hidden width (256 in the paper).
        num_classes: output classes.
        kernel_size: kernel of the conv (3 in the paper).
        dropout: Dropout2d probability.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, *, kernel_size: int = 3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, kernel_size)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        _init_classifier(self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))  # (B, classes, h, w)
