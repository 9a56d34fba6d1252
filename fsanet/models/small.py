"""A small output-stride-8 CNN for the CPU study: seconds per thousand iterations on 64–128 px images.

It keeps the ResNet-D8 interface (four stage features, the last two at 1/8 resolution, stage 3 for the
auxiliary head and stage 4 for the decode head) but has a deliberately *bounded* receptive field:
only the stem and the first two stages contain 3×3 convolutions; stages 3 and 4 are pointwise
residual blocks. Every output pixel of stage 4 therefore sees exactly a 39×39 input window:

=====================  ========  =====  ===================
layer                  stride    jump   receptive field (px)
=====================  ========  =====  ===================
stem 3×3 s2            2         2      3
stage 1: 3×3 s2, 3×3   4         4      7, 15
stage 2: 3×3 s2, 3×3   8         8      23, 39
stage 3: 1×1, 1×1      8         8      39
stage 4: 1×1, 1×1      8         8      39
=====================  ========  =====  ===================

(RF grows by ``(k - 1) · jump`` per k×k conv; the strided 1×1 shortcuts stay inside it.) A cue more
than 19 px away from a pixel is thus invisible to the backbone; with the head's skeleton convs set
to 1×1 (``model.head_kernel=1``, the CPU profile) a plain FCN head keeps this 39 px field, whereas
every 3×3 head conv at stride 8 would add 16 px. Long-range context can then only come from an
attention block. ``tests/test_models.py`` checks the 39 px field by back-propagating from one pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fsanet.models.resnet import init_weights

__all__ = ["SmallBackbone", "SMALL_RECEPTIVE_FIELD"]

#: receptive field (px) of one stage-4 pixel, see the module docstring
SMALL_RECEPTIVE_FIELD = 39


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        ),
        nn.BatchNorm2d(out_channels),
    ]


class ResidualBlock(nn.Module):
    """Two k×k conv-BN layers with a residual; the first carries the stride. k=3: basic block; k=1: pointwise.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the 1×1 shortcut projection).
        kernel_size: 3 or 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, out_channels, kernel_size, stride)
        self.conv2, self.bn2 = _conv_bn(out_channels, out_channels, kernel_size)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class SmallBackbone(nn.Module):
    """Four-stage CNN, output stride 8, 39 px receptive field (see the module docstring).

    Args:
        channels: output widths of the four stages; the stem uses ``channels[0]``.

    Shapes: input (B, 3, H, W) → (B, c1, H/4, W/4), (B, c2, H/8, W/8), (B, c3, H/8, W/8),
    (B, c4, H/8, W/8), each size rounded up.
    """

    output_stride = 8
    receptive_field = SMALL_RECEPTIVE_FIELD

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(
                f"small backbone channels (model.small_channels) must be 4 positive widths, got {channels}"
            )
        c1, c2, c3, c4 = channels
        self.stem = nn.Sequential(*_conv_bn(3, c1, 3, stride=2), nn.ReLU(inplace=True))  # /2
        self.layer1 = ResidualBlock(c1, c1, stride=2, kernel_size=3)  # /4
        self.layer2 = ResidualBlock(c1, c2, stride=2, kernel_size=3)  # /8
        self.layer3 = ResidualBlock(c2, c3, stride=1, kernel_size=1)  # /8, pointwise
        self.layer4 = ResidualBlock(c3, c4, stride=1, kernel_size=1)  # /8, pointwise
        self.out_channels = channels
        init_weights(self)
        for m in self.modules():  # every residual block starts as its shortcut
            if isinstance(m, ResidualBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats
