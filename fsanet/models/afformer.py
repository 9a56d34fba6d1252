"""AFFormer (Dong, Wang, Wang, "Head-Free Lightweight Semantic Segmentation with Linear Transformer",
AAAI 2023) in plain torch: the tiny / small / base networks of the official ADE20K configs.

Structure (official ``tools/afformer.py`` backbone + ``CLS`` decode head; ``C_i = embed_dims[i]``)::

    stem          ConvBN 3×3/2 (3 → C_0/2) → ConvBN 3×3/2 (C_0/2 → C_0), Hardswish   # stride 4
    stage i       patch embedding: two chained depthwise-separable 3×3 convs (DWConv → PWConv → BN →
                  Hardswish) giving the pixel map F (first) and the prototype map G (second)
                      stage 0: both stride 1            stage 1: F stride 2, G stride 1
                      stage 2: F stride 1, G stride 2   stage 3: F stride 1, G stride 4
                  stage 0: out = aggregate(Restore(F + G))                 (CNN only)
                  stage ≥1: out = aggregate(Restore(F) + up(Encoder(G)))   (up: bilinear, align_corners)
                  Restore: x + ConvBN1×1(C→C/2, Hardswish) → DW3×3 → BN → Hardswish → ConvBN1×1(C/2→C)
                  aggregate: ConvBN1×1 (C_i → C_{i+1}, last stage keeps C_3), Hardswish
    Encoder       (stages ≥ 1, on G as tokens) ``num_layers[i]`` prototype-learning blocks:
                  x = x + DWConv3×3(x)                     (conv. position encoding, shared by the blocks)
                  x = x + DropPath(AFF(LN(x)))              (the adaptive frequency filter)
                  x = x + DropPath(fc2(GELU(h + DWConv3×3(h)))),  h = fc1(LN(x))   (mlp ratio 2)
    head (CLS)    logits = Conv1×1(256 → classes)(Dropout2d(0.1)(ReLU(GN32(Conv1×1(C_3 → 256)(stage 4)))))

The encoder returns the four stage outputs at strides 4, 8, 8, 8 (channels ``C_1, C_2, C_3, C_3``);
the head reads only the last one, so the logits are at output stride 8. ``num_path`` is 1 in every
released model (and the official stage code only works for 1), so each stage has two patch
embeddings and one encoder.

AFF, the adaptive frequency filter, on LayerNorm-ed tokens ``(B, N, C)``, ``d = C/8`` (8 heads)::

    q, k, v = split(Linear(C → 3C)(x))                              # each (B, 8, N, d)
    FSK = d^-0.5 · q · (softmax_N(k)ᵀ · v)                           # frequency similarity kernel
    DHF = q ⊙ DWConv_{3,5,7}(v as an image; heads split 2/3/3)      # dynamic high-pass filters
    DLF = ReLU(up(AvgPool_{1,2,3,6}(v as an image; 4 channel groups)))  # dynamic low-pass filters
    AFF(x) = Linear(C → C)(FSK + DHF + DLF)

The depthwise high-pass convolutions (``crpe``) are one module per encoder, shared by all its blocks,
as is the position encoding (``cpe``); the official code registers each shared module under every
owner, so the state dict repeats those tensors under several names, and so does ours.

``fsanet.nn.aff.FrequencyFilter`` computes the same filter maths but is not reused here: it owns its
high-pass convolutions (official: shared per encoder), carries its own LayerNorm (eps 1e-5 against
the block's 1e-6) and residual, and its parameter names differ from the released checkpoints'.

``filter`` hook (e.g. "FSA replaces AFF"): with a factory ``channels -> module`` whose module maps
``(B, C, H, W) -> (B, C, H, W)`` with the residual inside (the :mod:`fsanet.nn` contract), each block's
attention sub-layer becomes ``x + DropPath(f(y) - y)``, ``y = LN(x)`` as a ``(B, C, H, W)`` map: the
module's residual branch takes the place of ``AFF`` (``qkv``, FSK, DHF, DLF and ``proj``) inside the
unchanged pre-norm residual. The encoders then have no ``crpe`` (the DHF convolutions); ``norm1``,
the position encoding, the MLP, the CNN branch and the head are unchanged.

Parameter and buffer names equal the official ones (``backbone.*``, ``decode_head.*``), so the
released checkpoints load with the identity mapping (:mod:`fsanet.models.afformer_keys`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.models.segmentor import SegmentationModel

__all__ = [
    "AFFORMER_SETTINGS",
    "AFFormer",
    "AFFormerEncoder",
    "AFFormerHead",
    "AFFormerSetting",
    "AdaptiveFrequencyFilter",
    "DropPath",
]

log = logging.getLogger(__name__)

FilterFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class AFFormerSetting:
    """One AFFormer size (official ``afformer_{tiny,small,base}`` backbones and ADE20K configs).

    Args:
        embed_dims: channels C_0..C_3 of the four stages.
        num_layers: prototype-learning blocks per stage (stage 0 has none: its entry only shifts
            the drop-path schedule, as in the official ``dpr_generator``).
        mlp_ratios: MLP expansion per stage.
        num_heads: attention heads per stage.
        head_channels: channels of the ``CLS`` head (``channels`` and ``aff_channels`` in the configs).
    """

    embed_dims: tuple[int, int, int, int]
    num_layers: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (8, 8, 8, 8)
    head_channels: int = 256


#: the official sizes (``configs/AFFormer/AFFormer_{size}_ade20k.py`` + ``afformer_{size}`` backbones)
AFFORMER_SETTINGS: dict[str, AFFormerSetting] = {
    "tiny": AFFormerSetting(embed_dims=(32, 64, 160, 216), num_layers=(1, 2, 4, 2)),
    "small": AFFormerSetting(embed_dims=(32, 64, 176, 216), num_layers=(1, 2, 4, 2)),
    "base": AFFormerSetting(embed_dims=(32, 96, 176, 216), num_layers=(1, 2, 6, 2)),
}

#: depthwise high-pass kernel → heads it filters (official ``crpe_window``)
HIGH_PASS_WINDOWS: dict[int, int] = {3: 2, 5: 3, 7: 3}
#: low-pass pooling sizes, one per channel quarter
LOW_PASS_SIZES: tuple[int, ...] = (1, 2, 3, 6)


def _tokens_to_map(x: Tensor, h: int, w: int) -> Tensor:
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


def _map_to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, N, C)


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` (training only),
    scaling the kept ones by ``1 / (1 - p)``.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvBN(nn.Module):
    """Bias-free convolution → BatchNorm2d → optional activation (official ``Conv2d_BN``).

    Args:
        in_channels, out_channels: channels.
        kernel_size, stride, padding: of the convolution.
        act: activation class (None: identity).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        act: Optional[type[nn.Module]] = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act_layer = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act_layer(self.bn(self.conv(x)))


class DWConvBN(nn.Module):
    """Depthwise k×k conv (stride s) → pointwise conv → BN → Hardswish (official ``DWConv2d_BN``).

    Args:
        channels: input and output channels.
        kernel_size: odd depthwise kernel size.
        stride: depthwise stride.
    """

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            channels, channels, kernel_size, stride, (kernel_size - 1) // 2, groups=channels, bias=False
        )
        self.pwconv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.Hardswish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.pwconv(self.dwconv(x))))


class PatchEmbed(nn.Module):
    """One patch embedding (official ``DWCPatchEmbed``): a 3×3 :class:`DWConvBN`.

    Args:
        channels: input and output channels.
        stride: spatial stride.
    """

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.patch_conv = DWConvBN(channels, 3, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.patch_conv(x)


class StagePatchEmbed(nn.Module):
    """Two chained patch embeddings of one stage (official ``Patch_Embed_stage``, ``num_path = 1``):
    the first gives the pixel map F, the second (applied to F) the prototype map G.

    Args:
        channels: stage channels.
        stage: stage index 0..3 (sets the strides, see the module docstring).
    """

    def __init__(self, channels: int, stage: int) -> None:
        super().__init__()
        pixel_stride = 2 if stage == 1 else 1
        proto_stride = {0: 1, 1: 1, 2: 2, 3: 4}[stage]
        self.patch_embeds = nn.ModuleList(
            [PatchEmbed(channels, pixel_stride), PatchEmbed(channels, proto_stride)]
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for embed in self.patch_embeds:
            x = embed(x)
            outs.append(x)
        return outs  # [F, G]


class ConvPosEnc(nn.Module):
    """Convolutional position encoding on tokens: ``x + DWConv3×3(x)`` (official ``ConvPosEnc``).

    Args:
        channels: token channels.
        kernel_size: depthwise kernel size.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        feat = _tokens_to_map(x, *size)  # (B, C, H, W)
        return _map_to_tokens(self.proj(feat) + feat)  # (B, N, C)


class LowPass(nn.Module):
    """DLF: the value image split into channel quarters, each average-pooled to 1, 2, 3, 6 squares,
    upsampled bilinearly back (``align_corners=False``) and concatenated, then ReLU. No parameters.

    Args:
        channels: input channels (divisible by 4).
        sizes: pooling output sizes, one per channel group.
    """

    def __init__(self, channels: int, sizes: Sequence[int] = LOW_PASS_SIZES) -> None:
        super().__init__()
        if channels % len(sizes):
            raise ValueError(f"LowPass: channels ({channels}) must be divisible by {len(sizes)}")
        self.sizes = tuple(sizes)
        self.channel_splits = [channels // len(sizes)] * len(sizes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        groups = x.split(self.channel_splits, dim=1)
        pooled = [
            F.interpolate(F.adaptive_avg_pool2d(g, s), size=(h, w), mode="bilinear", align_corners=False)
            for s, g in zip(self.sizes, groups)
        ]
        return self.relu(torch.cat(pooled, dim=1))  # (B, C, H, W)


class HighLowFilters(nn.Module):
    """DHF + DLF of AFF: ``q ⊙ DWConv(v) + LowPass(v)`` (official ``FilterModule``; one per encoder,
    shared by its blocks).

    Args:
        head_dim: channels per head d.
        num_heads: heads h.
        windows: depthwise kernel size → number of heads it filters (heads in order).
    """

    def __init__(self, head_dim: int, num_heads: int, windows: Optional[dict[int, int]] = None) -> None:
        super().__init__()
        windows = dict(HIGH_PASS_WINDOWS if windows is None else windows)
        if sum(windows.values()) != num_heads:
            raise ValueError(
                f"HighLowFilters: the windows {windows} cover {sum(windows.values())} heads, not {num_heads}"
            )
        self.conv_list = nn.ModuleList(
            nn.Conv2d(n * head_dim, n * head_dim, k, padding=k // 2, groups=n * head_dim)
            for k, n in windows.items()
        )
        self.channel_splits = [n * head_dim for n in windows.values()]
        self.LP = LowPass(head_dim * num_heads)

    def forward(self, q: Tensor, v: Tensor, size: tuple[int, int]) -> Tensor:
        b, heads, n, d = q.shape
        h, w = size
        v_img = v.transpose(-2, -1).reshape(b, heads * d, h, w)  # (B, C, H, W), channel = head·d + j
        low = self.LP(v_img)  # (B, C, H, W)
        parts = v_img.split(self.channel_splits, dim=1)
        high = torch.cat([conv(p) for conv, p in zip(self.conv_list, parts)], dim=1)  # (B, C, H, W)
        high = high.view(b, heads, d, n).transpose(-2, -1)  # (B, h, N, d)
        low = low.view(b, heads, d, n).transpose(-2, -1)  # (B, h, N, d)
        return q * high + low


class AdaptiveFrequencyFilter(nn.Module):
    """AFF on tokens (official ``Frequency_FilterModule``): ``proj(FSK + DHF + DLF)``, no residual.

    Args:
        channels: token channels C.
        num_heads: heads (C divisible by it).
        shared_filters: the encoder's :class:`HighLowFilters` (DHF + DLF).
        qkv_bias: bias of the qkv projection.
    """

    def __init__(
        self, channels: int, num_heads: int, shared_filters: HighLowFilters, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"AdaptiveFrequencyFilter: channels ({channels}) not divisible by {num_heads}")
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.crpe = shared_filters

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        kernel = k.softmax(dim=2).transpose(-2, -1) @ v  # (B, h, d, d)
        fsk = q @ kernel  # (B, h, N, d)
        y = self.scale * fsk + self.crpe(q, v, size)  # (B, h, N, d)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))  # (B, N, C)


class _MlpDWConv(nn.Module):
    """Depthwise 3×3 conv on tokens (the official ``DWConv`` wrapper, kept for its ``dwconv`` name)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return _map_to_tokens(self.dwconv(_tokens_to_map(x, *size)))


class Mlp(nn.Module):
    """``fc2(GELU(h + DWConv3×3(h)))``, ``h = fc1(x)`` on tokens (official ``Mlp``).

    Args:
        channels: token channels.
        hidden: hidden channels.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = _MlpDWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.fc1(x)  # (B, N, hidden)
        return self.fc2(self.act(x + self.dwconv(x, size)))  # (B, N, C)


class PrototypeBlock(nn.Module):
    """One prototype-learning block on tokens (official ``MHCABlock``).

    Official: ``x = cpe(x); x += DropPath(AFF(LN(x))); x += DropPath(Mlp(LN(x)))``. With ``filter``
    the attention sub-layer is ``x += DropPath(f(y) - y)``, ``y = LN(x)`` as a (B, C, H, W) map.

    Args:
        channels: token channels C.
        num_heads: AFF heads.
        mlp_ratio: MLP expansion.
        drop_path: stochastic-depth probability of both residual branches.
        shared_cpe: the encoder's position encoding.
        shared_crpe: the encoder's DHF/DLF filters (None with ``filter``).
        filter: a (B, C, H, W) module with the residual inside replacing AFF, or None.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: int,
        drop_path: float,
        shared_cpe: ConvPosEnc,
        shared_crpe: Optional[HighLowFilters],
        filter: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.cpe = shared_cpe
        self.crpe = shared_crpe
        if filter is None:
            assert shared_crpe is not None
            self.factoratt_crpe: Optional[AdaptiveFrequencyFilter] = AdaptiveFrequencyFilter(
                channels, num_heads, shared_crpe
            )
            self.filter: Optional[nn.Module] = None
        else:
            self.factoratt_crpe = None
            self.filter = filter
        self.mlp = Mlp(channels, channels * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)

    def _filter_branch(self, y: Tensor, size: tuple[int, int]) -> Tensor:
        assert self.filter is not None
        y_map = _tokens_to_map(y, *size)  # (B, C, H, W)
        out = self.filter(y_map)
        if out.shape != y_map.shape:
            raise ValueError(
                f"AFFormer filter {type(self.filter).__name__} must map (B, C, H, W) to the same shape; "
                f"got {tuple(y_map.shape)} -> {tuple(out.shape)}"
            )
        return _map_to_tokens(out - y_map)  # (B, N, C): the module's residual branch

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.cpe(x, size)
        y = self.norm1(x)
        if self.factoratt_crpe is not None:
            x = x + self.drop_path(self.factoratt_crpe(y, size))
        else:
            x = x + self.drop_path(self._filter_branch(y, size))
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class PrototypeEncoder(nn.Module):
    """The transformer branch of a stage on the prototype map G (official ``MHCAEncoder``).

    Args:
        channels: channels C.
        num_layers: blocks.
        num_heads: AFF heads.
        mlp_ratio: MLP expansion.
        drop_paths: stochastic-depth probability of each block.
        filter_factory: replaces AFF (see :class:`PrototypeBlock`), or None.
    """

    def __init__(
        self,
        channels: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        drop_paths: Sequence[float],
        filter_factory: Optional[FilterFactory] = None,
    ) -> None:
        super().__init__()
        if len(drop_paths) < num_layers:
            raise ValueError(f"PrototypeEncoder: {num_layers} blocks need as many drop-path rates")
        self.cpe = ConvPosEnc(channels, 3)
        self.crpe = HighLowFilters(channels // num_heads, num_heads) if filter_factory is None else None
        self.MHCA_layers = nn.ModuleList(
            PrototypeBlock(
                channels,
                num_heads,
                mlp_ratio,
                drop_paths[i],
                self.cpe,
                self.crpe,
                None if filter_factory is None else filter_factory(channels),
            )
            for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        tokens = _map_to_tokens(x)  # (B, N, C)
        for layer in self.MHCA_layers:
            tokens = layer(tokens, size)
        return _tokens_to_map(tokens, *size)  # (B, C, H, W)


class Restore(nn.Module):
    """CNN pixel descriptor ``x + ConvBN(DW3×3 → BN → Hardswish)(ConvBN_hswish(x))`` with C/2 hidden
    channels (official ``Restore``).

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels // 2
        self.conv1 = ConvBN(channels, hidden, act=nn.Hardswish)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv2 = ConvBN(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.act(self.norm(self.dwconv(self.conv1(x))))
        return x + self.conv2(feat)


class AFFStage(nn.Module):
    """One stage after its patch embedding (official ``MHCA_stage``, ``num_path = 1``).

    Args:
        channels: stage channels C_i.
        out_channels: output channels (C_{i+1}, or C_3 for the last stage).
        stage: stage index (stage 0 has no transformer branch).
        num_layers, num_heads, mlp_ratio, drop_paths, filter_factory: of the :class:`PrototypeEncoder`.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        stage: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: int,
        drop_paths: Sequence[float],
        filter_factory: Optional[FilterFactory] = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.Restore = Restore(channels)
        self.aggregate = ConvBN(channels, out_channels, act=nn.Hardswish)
        if stage > 0:
            self.mhca_blks = nn.ModuleList(
                [PrototypeEncoder(channels, num_layers, num_heads, mlp_ratio, drop_paths, filter_factory)]
            )

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        pixels, prototypes = inputs  # F, G
        if self.stage == 0:
            return self.aggregate(self.Restore(pixels + prototypes))
        restored = self.Restore(pixels)  # (B, C, h, w)
        learned = self.mhca_blks[0](prototypes)  # (B, C, h', w')
        if learned.shape[-2:] != restored.shape[-2:]:
            learned = F.interpolate(learned, size=restored.shape[-2:], mode="bilinear", align_corners=True)
        return self.aggregate(restored + learned)


def _drop_path_schedule(rate: float, num_layers: Sequence[int]) -> list[list[float]]:
    """Linear 0 → ``rate`` over the ``sum(num_layers)`` blocks, split per stage (``dpr_generator``)."""
    rates = torch.linspace(0, rate, sum(num_layers)).tolist()
    out, start = [], 0
    for n in num_layers:
        out.append(rates[start : start + n])
        start += n
    return out


def _init_afformer_weights(module: nn.Module, skip: set[int]) -> None:
    """Official random init: Linear trunc-normal(0.02), LayerNorm/BN (1, 0), Conv2d normal with
    std sqrt(2 / (k·k·out/groups)), zero biases; modules whose id is in ``skip`` are left alone."""
    for m in module.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AFFormerEncoder(nn.Module):
    """The AFFormer backbone: stem + four stages; ``forward`` returns the four stage outputs.

    Args:
        setting: the size (:data:`AFFORMER_SETTINGS`).
        drop_path_rate: the last block's stochastic-depth rate (linear schedule from 0).
        filter: factory ``channels -> module`` replacing every AFF (see the module docstring), or None.
        in_channels: image channels.
    """

    output_stride = 8

    def __init__(
        self,
        setting: AFFormerSetting,
        drop_path_rate: float = 0.1,
        filter: Optional[FilterFactory] = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        dims = setting.embed_dims
        self.out_channels: tuple[int, ...] = (dims[1], dims[2], dims[3], dims[3])
        schedule = _drop_path_schedule(drop_path_rate, setting.num_layers)
        self.stem = nn.Sequential(
            ConvBN(in_channels, dims[0] // 2, 3, 2, 1, act=nn.Hardswish),
            ConvBN(dims[0] // 2, dims[0], 3, 2, 1, act=nn.Hardswish),
        )
        self.patch_embed_stages = nn.ModuleList(StagePatchEmbed(dims[i], i) for i in range(4))
        self.mhca_stages = nn.ModuleList(
            AFFStage(
                dims[i],
                dims[i + 1] if i < 3 else dims[i],
                i,
                setting.num_layers[i],
                setting.num_heads[i],
                setting.mlp_ratios[i],
                schedule[i],
                filter,
            )
            for i in range(4)
        )
        blocks = [b for m in self.modules() if isinstance(m, PrototypeBlock) for b in [m]]
        if filter is None:
            self.filters: list[nn.Module] = [b.factoratt_crpe for b in blocks if b.factoratt_crpe is not None]
            skip: set[int] = set()
        else:
            self.filters = [b.filter for b in blocks if b.filter is not None]
            skip = {id(m) for f in self.filters for m in f.modules()}
        _init_afformer_weights(self, skip)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)  # (B, C_0, H/4, W/4)
        outs = []
        for embed, stage in zip(self.patch_embed_stages, self.mhca_stages):
            x = stage(embed(x))
            outs.append(x)
        return outs  # strides 4, 8, 8, 8; channels C_1, C_2, C_3, C_3


class ConvGNReLU(nn.Module):
    """mmcv ``ConvModule`` with a GroupNorm(32) norm: bias-free 1×1 conv → GN → ReLU (attribute names
    ``conv``, ``gn``, ``activate`` as in mmcv, so the checkpoint keys match).

    Args:
        in_channels, out_channels: channels.
        num_groups: GroupNorm groups.
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.gn(self.conv(x)))


class AFFormerHead(nn.Module):
    """The official ``CLS`` decode head: ``conv_seg(Dropout2d(squeeze(x)))`` on the last stage.

    ``align`` exists in the official head (and its checkpoints) but is never called; it is kept,
    unused, so the released weights load strictly (under DistributedDataParallel this needs
    ``find_unused_parameters=True``, as the official configs set).

    Args:
        in_channels: channels of the last stage (216 for every size).
        channels: head channels (256).
        num_classes: classes.
        dropout: Dropout2d probability before the classifier.
        in_index: the stage read when ``forward`` gets the list of stage outputs.
    """

    takes_all_stages = False

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, in_index: int = 3
    ) -> None:
        super().__init__()
        self.in_index = in_index
        self.squeeze = ConvGNReLU(in_channels, channels)
        self.align = ConvGNReLU(channels, channels)  # unused in forward, as in the official head
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        x = inputs if isinstance(inputs, Tensor) else inputs[self.in_index]  # (B, C_3, h, w)
        return self.conv_seg(self.dropout(self.squeeze(x)))  # (B, classes, h, w)


class AFFormer(SegmentationModel):
    """AFFormer tiny/small/base as a :class:`SegmentationModel`: ``model(images)["out"]`` is the logits
    (computed at output stride 8) resized to the input; there is no auxiliary head.

    Submodules ``backbone`` (:class:`AFFormerEncoder`) and ``decode_head`` (:class:`AFFormerHead`)
    carry the official mmseg names, so ``state_dict`` keys equal the released checkpoints'.

    Args:
        size: ``"tiny"``, ``"small"`` or ``"base"``.
        num_classes: classes (150 for ADE20K).
        filter: factory ``channels -> module`` ((B, C, H, W) -> same, residual inside) used in place of
            every adaptive frequency filter, e.g. ``lambda c: FrequencySelfAttention(c, band=(5, 5))``;
            None keeps the official AFF. The modules are listed in :attr:`filters`.
        drop_path_rate: stochastic depth of the last transformer block (linear schedule from 0).
            Note: the official ADE20K configs leave the backbone's default, 0.0.
        dropout: Dropout2d probability before the classifier (official 0.1).
        align_corners: of the logits' bilinear upsampling.
        name: the model's name in :data:`fsanet.models.MODELS`.
    """

    def __init__(
        self,
        size: str = "tiny",
        num_classes: int = 150,
        filter: Optional[FilterFactory] = None,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        *,
        align_corners: bool = False,
        name: str = "afformer",
    ) -> None:
        if size not in AFFORMER_SETTINGS:
            raise ValueError(
                f"AFFormer: unknown size {size!r}; choose one of: {', '.join(AFFORMER_SETTINGS)}"
            )
        if num_classes < 1:
            raise ValueError(f"AFFormer: num_classes must be ≥ 1, got {num_classes}")
        setting = AFFORMER_SETTINGS[size]
        backbone = AFFormerEncoder(setting, drop_path_rate, filter)
        head = AFFormerHead(backbone.out_channels[3], setting.head_channels, num_classes, dropout)
        super().__init__(backbone, head, num_classes, None, align_corners=align_corners, name=name)
        self.size = size
        self.filters: list[nn.Module] = list(backbone.filters)
        log.debug(
            "AFFormer-%s: %d filter modules (%s)", size, len(self.filters), "custom" if filter else "AFF"
        )

    def logits(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` → logits ``(B, classes, H/8, W/8)`` (not resized)."""
        return self.decode_head(self.backbone(images)[3])
