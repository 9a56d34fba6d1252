"""Tiny stand-ins for the engine tests: a segmentation model and a dataset honouring the contracts.

Model: ``model(x)`` → ``{"out": (B, K, H, W), "aux": ...}`` in train mode, ``{"out": ...}`` in eval;
``attention_modules()`` lists :class:`fsanet.nn.base.AttentionModule` instances.
Dataset: items ``{"image", "label", "name", "ori_size"}``; train mode draws a random crop with NumPy's
global generator and a flip with torch's, so the seeding of the data stream is exercised.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule


class TinyAttention(AttentionModule):
    """x + W · mean-pooled context of attention_input(x): cheap, and ``eval_band`` changes its output."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        a = self.attention_input(x)
        return x + self.proj(a) * a.mean(dim=(2, 3), keepdim=True)

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        return 2 * batch * self.channels**2 * h * w


class TinyNet(nn.Module):
    """conv3×3 → norm → ReLU → TinyAttention → (dropout) → 1×1 classifier, plus a 1×1 aux head."""

    def __init__(
        self,
        num_classes: int,
        width: int = 8,
        norm: str = "group",
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.GroupNorm(2, width) if norm == "group" else nn.BatchNorm2d(width)
        self.attn = TinyAttention(width)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.aux = nn.Conv2d(width, num_classes, 1)
        self.to(dtype)
        self.dtype = dtype

    def attention_modules(self) -> list[AttentionModule]:
        return [m for m in self.modules() if isinstance(m, AttentionModule)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = F.relu(self.norm(self.stem(x.to(self.dtype))))
        out = {"out": self.cls(self.drop(self.attn(f)))}
        if self.training:
            out["aux"] = self.aux(f)
        return out


class TinySegDataset(torch.utils.data.Dataset):
    """``n`` random images whose label is the argmax of a fixed smoothing of the image (learnable)."""

    CLASSES = ("a", "b", "c")
    PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

    def __init__(self, n: int = 8, size: int = 20, crop: int = 16, train: bool = True) -> None:
        self.n, self.size, self.crop, self.train = n, size, crop, train

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key  # (index, stream): stream unused, global RNGs drawn
        if not 0 <= index < self.n:
            raise IndexError(index)
        g = torch.Generator().manual_seed(1000 + index)
        image = torch.randn(3, self.size, self.size, generator=g)
        label = F.avg_pool2d(image[None], 3, 1, 1)[0].argmax(0)
        label[:2, :3] = 255  # some ignored pixels
        if self.train:
            top, left = np.random.randint(0, self.size - self.crop + 1, size=2)
            image = image[:, top : top + self.crop, left : left + self.crop]
            label = label[top : top + self.crop, left : left + self.crop]
            if torch.rand(()) < 0.5:
                image, label = image.flip(-1), label.flip(-1)
            image = image + 0.01 * random.random()
        return {
            "image": image.contiguous(),
            "label": label.contiguous().long(),
            "name": f"img{index}",
            "ori_size": (self.size, self.size),
        }


def build_tiny_model(model_cfg: Any, num_classes: int, **_: Any) -> TinyNet:
    return TinyNet(num_classes, dropout=0.1)


def build_tiny_model_f64(model_cfg: Any, num_classes: int, **_: Any) -> TinyNet:
    return TinyNet(num_classes, dtype=torch.float64)


def build_tiny_dataset(data_cfg: Any, split: str, train: bool, seed: int = 0) -> TinySegDataset:
    return TinySegDataset(train=train)
