"""ResNet V1c with dilated stages (output stride 8): the backbone of every R-50/101-D8 model in the paper.

V1c differs from the torchvision ResNet only in the stem: three 3×3 convolutions
(``3 → stem/2`` stride 2, ``stem/2 → stem/2``, ``stem/2 → stem``, each followed by BN + ReLU) replace
the single 7×7 convolution; then a 3×3 stride-2 max-pool as usual. ``deep_stem=False`` gives that
torchvision ResNet (mmdet's ``ResNet``, "V1b": ``stem.conv1`` 7×7 stride 2, ``stem.bn1``, ReLU), the
backbone of mmdet's Mask R-CNN. Bottlenecks put the stride on the
3×3 convolution ("pytorch" style). The D8 setting keeps stages 3 and 4 at 1/8 resolution with
``strides=(1, 2, 1, 1)``, ``dilations=(1, 1, 2, 4)``; with ``contract_dilation`` the first block of a
dilated stage uses half the stage's dilation (so stage 3 runs 1, 2, 2, …; stage 4 runs 2, 4, 4).

Parameter names follow mmseg/mmcls (``stem.0.weight``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, …) so their published ``resnet*_v1c`` checkpoints load by name;
:mod:`fsanet.models.pretrained` maps timm and torchvision names onto these."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional

from torch import Tensor, nn

__all__ = ["Bottleneck", "RESNET_BACKBONES", "RESNET_DEPTHS", "ResNetV1c", "init_weights"]

#: blocks per stage for the supported depths
RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
#: ``model.backbone`` name → (depth, deep stem)
RESNET_BACKBONES: dict[str, tuple[int, bool]] = {
    "resnet50_v1c": (50, True),
    "resnet101_v1c": (101, True),
    "resnet50": (50, False),
    "resnet101": (101, False),
}


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, unit BN scale, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (stride, dilation) → 1×1 expand (×4), BN after each, residual, ReLU.

    Args:
        in_channels: input channels.
        planes: width of the 3×3 convolution; the block outputs ``4 * planes`` channels.
        stride: stride of the 3×3 convolution.
        dilation: dilation (and padding) of the 3×3 convolution.
        downsample: projection of the shortcut when the shape changes (1×1 conv + BN).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _res_layer(
    in_channels: int, planes: int, blocks: int, stride: int, dilation: int, contract_dilation: bool
) -> nn.Sequential:
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
    layers = [Bottleneck(in_channels, planes, stride, first_dilation, downsample)]
    layers += [Bottleneck(out_channels, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """ResNet V1c backbone returning the four stage features.

    Args:
        depth: 50 or 101.
        stem_channels: output width of the deep stem (its first two convs use half of it).
        base_channels: width of the first stage's 3×3 convs (doubles per stage).
        strides: stride of the first block of each stage.
        dilations: dilation of each stage.
        contract_dilation: first block of a dilated stage uses half the dilation.
        zero_init_residual: zero the last BN scale of every block at random init (each block
            starts as the identity); irrelevant once pretrained weights are loaded.
        deep_stem: the V1c stem of three 3×3 convs; False: torchvision's single 7×7 conv.

    Shapes (D8 defaults): input (B, 3, H, W) → stages (B, 256, H/4, W/4), (B, 512, H/8, W/8),
    (B, 1024, H/8, W/8), (B, 2048, H/8, W/8), each size rounded up (``ceil``).
    """

    def __init__(
        self,
        depth: int = 50,
        stem_channels: int = 64,
        base_channels: int = 64,
        strides: Sequence[int] = (1, 2, 1, 1),
        dilations: Sequence[int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
        zero_init_residual: bool = True,
        deep_stem: bool = True,
    ) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNetV1c depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError(
                f"strides and dilations need 4 entries, got {tuple(strides)} and {tuple(dilations)}"
            )
        self.depth = depth
        half = stem_channels // 2
        self.stem = (
            nn.Sequential(
                nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_channels, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True),
            )
            if deep_stem
            else nn.Sequential(
                OrderedDict(
                    conv1=nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False),
                    bn1=nn.BatchNorm2d(stem_channels),
                    relu=nn.ReLU(inplace=True),
                )
            )
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem_channels
        widths = []
        for i, (blocks, stride, dilation) in enumerate(zip(RESNET_DEPTHS[depth], strides, dilations)):
            planes = base_channels * 2**i
            self.add_module(
                f"layer{i + 1}", _res_layer(in_channels, planes, blocks, stride, dilation, contract_dilation)
            )
            in_channels = planes * Bottleneck.expansion
            widths.append(in_channels)
        self.out_channels: tuple[int, ...] = tuple(widths)
        self.output_stride = 4 * strides[0] * strides[1] * strides[2] * strides[3]
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.stem(x))  # (B, stem, H/4, W/4)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats
