"""Segformer (Xie et al. 2021): the Mix Transformer encoder MiT-B0…B5 and the all-MLP decoder, in plain torch.

The structure follows mmseg's ``MixVisionTransformer`` and ``SegformerHead``, so that mmseg and NVlabs
checkpoints load strictly after the key mapping of :mod:`fsanet.models.segformer_keys`::

    encoder, per stage i = 1..4 (strides 4, 8, 16, 32):
        tokens = LN(Conv_{k_i, s_i}(x))                       # OverlapPatchEmbed, (B, N_i, C_i)
        tokens = block(tokens) × depth_i                       # attention + Mix-FFN sub-layers
        x      = LN(tokens) as (B, C_i, H/s, W/s)              # stage output
    block:  t = t + drop_path(EfficientSelfAttention(LN(t)))   # fsanet.nn.efficient_attention
            t = t + drop_path(fc2(GELU(DWConv3×3(fc1(LN(t))))))   # MixFFN, hidden = 4·C_i
    decoder (SegformerHead):
        f_i = ReLU(BN(Conv1×1(x_i)))  → bilinear to stage-1 size  (i = 1..4)
        y   = ReLU(BN(Conv1×1(cat[f_1, f_2, f_3, f_4])))       # 4·C_dec → C_dec
        y   = attention(y)                                     # optional, e.g. an FSA block
        logits = Conv1×1(Dropout2d(y))                         # stride 4

Every LayerNorm has eps 1e-6, as in mmseg (the official NVlabs code uses 1e-6 in the blocks and stage
norms but PyTorch's default 1e-5 in the patch-embedding norm and the spatial-reduction norm).

Decoder width: 256 for B0/B1 and 768 for B2–B5 (the official NVlabs configs and the paper's decoder
parameter counts). mmseg's configs use 256 for every size: build with ``decoder_channels=256`` to load
mmseg's B2–B5 segmentor checkpoints.

``stage_act=False`` drops the ReLU after each per-stage branch: the official NVlabs head has plain
linear layers there (with bias), which :func:`fsanet.models.segformer_keys.from_nvlabs` maps onto
conv + BN; only without the ReLU does the mapped head compute the same function.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.models.segmentor import SegmentationModel
from fsanet.nn.efficient_attention import EfficientSelfAttention, drop_path, init_segformer_weights

log = logging.getLogger(__name__)

__all__ = [
    "DECODER_CHANNELS",
    "MIT_SETTINGS",
    "MiTBlock",
    "MiTStage",
    "MixFFN",
    "MixVisionTransformer",
    "OverlapPatchEmbed",
    "SegformerHead",
    "build_segformer",
]


def _mit(embed_dims: tuple[int, ...], depths: tuple[int, ...]) -> dict[str, Any]:
    return {
        "embed_dims": embed_dims,
        "num_heads": (1, 2, 5, 8),
        "depths": depths,
        "sr_ratios": (8, 4, 2, 1),
        "mlp_ratio": 4,
        "patch_sizes": (7, 3, 3, 3),
        "strides": (4, 2, 2, 2),
    }


#: MiT encoder settings per size (Segformer Table 6; mmseg and NVlabs configs)
MIT_SETTINGS: dict[str, dict[str, Any]] = {
    "b0": _mit((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": _mit((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": _mit((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": _mit((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": _mit((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": _mit((64, 128, 320, 512), (3, 6, 40, 3)),
}

#: all-MLP decoder width per size (NVlabs configs; mmseg's configs use 256 for all sizes)
DECODER_CHANNELS: dict[str, int] = {"b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}


def _to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


class MixFFN(nn.Module):
    """Mix-FFN sub-layer ``x + drop_path(fc2(GELU(DWConv3×3(fc1(LN(x))))))`` on tokens ``(B, N, C)``.

    ``fc1``/``fc2`` are linear layers (mmseg stores them as 1×1 convs); the depthwise 3×3 conv with
    bias gives the positional information.

    Args:
        channels: token channels C.
        hidden_channels: hidden width (``mlp_ratio·C``).
        drop_path: stochastic-depth probability of the residual branch (training only).
        ln_eps: epsilon of the LayerNorm.
    """

    def __init__(
        self, channels: int, hidden_channels: int, drop_path: float = 0.0, ln_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.drop_path = float(drop_path)
        self.norm = nn.LayerNorm(channels, eps=ln_eps)
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, groups=hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, channels)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """``x``: tokens ``(B, N, C)`` of an ``h``×``w`` map in row-major order."""
        y = self.fc1(self.norm(x))  # (B, N, hidden)
        y = self.dwconv(_to_map(y, h, w)).flatten(2).transpose(1, 2)  # (B, N, hidden)
        y = self.fc2(self.act(y))  # (B, N, C)
        return x + drop_path(y, self.drop_path, self.training)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``Conv2d(k, stride s, padding k // 2)`` then LayerNorm over channels.

    Args:
        in_channels: input channels.
        embed_dim: output channels.
        patch_size: kernel size k.
        stride: stride s.
        ln_eps: epsilon of the LayerNorm.
    """

    def __init__(
        self, in_channels: int, embed_dim: int, patch_size: int, stride: int, ln_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=ln_eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """``(B, C_in, H, W)`` → tokens ``(B, h·w, embed_dim)`` and the output size ``h, w``."""
        x = self.proj(x)  # (B, C, h, w)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class MiTBlock(nn.Module):
    """One Segformer transformer block on tokens: attention sub-layer then Mix-FFN sub-layer.

    Args:
        channels: token channels C.
        heads: attention heads.
        sr_ratio: spatial-reduction ratio of the attention's keys/values.
        mlp_ratio: Mix-FFN hidden width over C.
        qkv_bias: biases on the query and key/value projections.
        drop_path: stochastic-depth probability of both residual branches.
        ln_eps: epsilon of the LayerNorms.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: int = 4,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        ln_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.attn = EfficientSelfAttention(
            channels, heads=heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, drop_path=drop_path, ln_eps=ln_eps
        )
        self.ffn = MixFFN(channels, mlp_ratio * channels, drop_path=drop_path, ln_eps=ln_eps)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.ffn(self.attn.forward_tokens(x, h, w), h, w)  # (B, N, C)


class MiTStage(nn.Module):
    """Patch embedding, ``depth`` blocks and the stage LayerNorm; returns the stage map ``(B, C, h, w)``."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        patch_size: int,
        stride: int,
        depth: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        qkv_bias: bool,
        drop_paths: Sequence[float],
        ln_eps: float,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, channels, patch_size, stride, ln_eps)
        self.blocks = nn.ModuleList(
            MiTBlock(channels, heads, sr_ratio, mlp_ratio, qkv_bias, drop_paths[j], ln_eps)
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(channels, eps=ln_eps)

    def forward(self, x: Tensor) -> Tensor:
        tokens, h, w = self.patch_embed(x)  # (B, N, C)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        return _to_map(self.norm(tokens), h, w)  # (B, C, h, w)


class MixVisionTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32; ``forward`` returns the four stage maps.

    Build a named size with :meth:`from_name` (``MixVisionTransformer.from_name("b2")``) or pass the
    settings of :data:`MIT_SETTINGS` yourself.

    Args:
        embed_dims: channels C_i of the four stages.
        num_heads: attention heads per stage.
        depths: blocks per stage.
        sr_ratios: spatial-reduction ratio of the attention per stage.
        mlp_ratio: Mix-FFN hidden width over C_i.
        patch_sizes: patch-embedding kernel per stage.
        strides: patch-embedding stride per stage.
        in_channels: image channels.
        qkv_bias: biases on the query and key/value projections.
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this value at the
            last block (0.1 in Segformer's configs).
        ln_eps: epsilon of every LayerNorm.
    """

    output_stride = 32

    def __init__(
        self,
        embed_dims: Sequence[int],
        num_heads: Sequence[int],
        depths: Sequence[int],
        sr_ratios: Sequence[int],
        mlp_ratio: int = 4,
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        in_channels: int = 3,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        ln_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        lists = (embed_dims, num_heads, depths, sr_ratios, patch_sizes, strides)
        if len({len(v) for v in lists}) != 1:
            raise ValueError(
                "MixVisionTransformer: embed_dims, num_heads, depths, sr_ratios, patch_sizes and strides "
                f"must have one entry per stage, got lengths {[len(v) for v in lists]}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"MixVisionTransformer: drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.out_channels: list[int] = [int(c) for c in embed_dims]
        self.depths = [int(d) for d in depths]
        total = sum(self.depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        stages, start, c_in = [], 0, in_channels
        for i, c in enumerate(self.out_channels):
            stages.append(
                MiTStage(
                    c_in,
                    c,
                    patch_size=patch_sizes[i],
                    stride=strides[i],
                    depth=self.depths[i],
                    heads=num_heads[i],
                    sr_ratio=sr_ratios[i],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_paths=rates[start : start + self.depths[i]],
                    ln_eps=ln_eps,
                )
            )
            start += self.depths[i]
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.apply(init_segformer_weights)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MixVisionTransformer:
        """MiT-``name`` (``"b0"`` … ``"b5"``) with :data:`MIT_SETTINGS`, any setting overridable."""
        key = name.lower().removeprefix("mit_").removeprefix("mit-")
        if key not in MIT_SETTINGS:
            raise ValueError(f"unknown MiT size {name!r}; choose one of: {', '.join(MIT_SETTINGS)}")
        return cls(**{**MIT_SETTINGS[key], **overrides})

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H/s_i, W/s_i)
            outs.append(x)
        return outs


class _ConvBNReLU(nn.Module):
    """1×1 conv (no bias) → BatchNorm2d (→ ReLU), named like mmcv's ``ConvModule`` (``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SegformerHead(nn.Module):
    """Segformer's all-MLP decoder (mmseg ``SegformerHead``), optional attention block after the fusion.

    Args:
        in_channels: channels of the four encoder stages, finest first.
        channels: decoder width C.
        num_classes: output classes.
        attention: optional ``(B, C, h, w) -> (B, C, h, w)`` module run on the fused map (e.g.
            ``FrequencySelfAttention(C, band=(5, 5))``); none by default.
        dropout: Dropout2d probability before the classifier.
        align_corners: of the bilinear upsampling of the stage branches.
        stage_act: ReLU after each per-stage branch (mmseg); False for the NVlabs head, whose stage
            branches are linear.
    """

    #: :class:`SegmentationModel` passes all four stage maps, not only the last
    takes_all_stages = True

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        attention: Optional[nn.Module] = None,
        dropout: float = 0.1,
        *,
        align_corners: bool = False,
        stage_act: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1 or num_classes < 1:
            raise ValueError(
                f"SegformerHead: channels and num_classes must be ≥ 1, got {channels}, {num_classes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SegformerHead: dropout must be in [0, 1), got {dropout}")
        self.in_channels = [int(c) for c in in_channels]
        self.channels = channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.stage_act = stage_act
        self.convs = nn.ModuleList(_ConvBNReLU(c, channels, act=stage_act) for c in self.in_channels)
        self.fusion_conv = _ConvBNReLU(len(self.in_channels) * channels, channels)
        self.attention = attention if attention is not None else nn.Identity()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Stage maps ``[(B, C_1, H/4, W/4), …, (B, C_4, H/32, W/32)]`` → ``(B, classes, H/4, W/4)``."""
        if len(feats) != len(self.convs):
            raise ValueError(f"SegformerHead expects {len(self.convs)} feature maps, got {len(feats)}")
        size = feats[0].shape[-2:]
        outs = []
        for x, conv in zip(feats, self.convs):
            y = conv(x)  # (B, C, h_i, w_i)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)
            outs.append(y)
        y = self.fusion_conv(torch.cat(outs, dim=1))  # (B, C, H/4, W/4)
        y = self.attention(y)
        return self.classifier(self.dropout(y))  # (B, classes, H/4, W/4)


def build_segformer(
    size: str = "b0",
    num_classes: int = 150,
    *,
    attention: Optional[nn.Module] = None,
    decoder_channels: Optional[int] = None,
    drop_path_rate: float = 0.1,
    dropout: float = 0.1,
    stage_act: bool = True,
    align_corners: bool = False,
    name: str = "segformer",
) -> SegmentationModel:
    """MiT encoder (``backbone``) + :class:`SegformerHead` (``decode_head``) as a :class:`SegmentationModel`.

    Args:
        size: ``"b0"`` … ``"b5"``.
        num_classes: output classes.
        attention: optional attention block of the head (see :class:`SegformerHead`).
        decoder_channels: decoder width; default :data:`DECODER_CHANNELS` of the size.
        drop_path_rate: stochastic depth of the encoder.
        dropout: Dropout2d probability before the classifier.
        stage_act: see :class:`SegformerHead` (False to run converted NVlabs segmentor checkpoints).
        align_corners: of the decoder's and the logits' bilinear upsampling.
        name: the model's name in :data:`fsanet.models.MODELS`.
    """
    backbone = MixVisionTransformer.from_name(size, drop_path_rate=drop_path_rate)
    key = size.lower().removeprefix("mit_").removeprefix("mit-")
    width = DECODER_CHANNELS[key] if decoder_channels is None else decoder_channels
    head = SegformerHead(
        backbone.out_channels,
        width,
        num_classes,
        attention,
        dropout,
        align_corners=align_corners,
        stage_act=stage_act,
    )
    return SegmentationModel(backbone, head, num_classes, None, align_corners=align_corners, name=name)
