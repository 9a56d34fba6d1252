"""The contract between models and the engine: :class:`SegmentationModel`.

* ``model(images)`` with ``images`` (B, 3, H, W) float returns a dict: ``"out"`` = logits
  (B, classes, H, W) bilinearly resized to the input size, and in train mode also ``"aux"`` (same
  shape) when the model has an auxiliary head. In eval mode only ``"out"``.
* ``model.attention_modules()`` lists every :class:`~fsanet.nn.base.AttentionModule` inside; the
  engine sets ``eval_band`` on them to truncate the attention to a DCT band without retraining
  (works for any trained model: FSA, non-local, …; empty for ``fcn``).
* ``model.num_classes``, ``model.name``, ``model.output_stride``; ``model.param_groups()`` splits the
  parameters into backbone / decode head / auxiliary head for per-group optimiser settings.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """Backbone (4 stage features) → decode head on stage 4 (+ auxiliary head on stage 3).

    Args:
        backbone: returns a list of 4 feature maps; has ``out_channels`` and ``output_stride``.
        decode_head: maps stage-4 features to logits.
        num_classes: number of classes the heads predict.
        aux_head: optional head on stage-3 features (used for the auxiliary loss in training).
        align_corners: ``align_corners`` of the bilinear upsampling of the logits.
        name: the model's name in :data:`fsanet.models.MODELS`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        num_classes: int,
        aux_head: Optional[nn.Module] = None,
        *,
        align_corners: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.name = name
        self.output_stride: int = getattr(backbone, "output_stride", 8)

    def _resize(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects float images of shape (B, 3, H, W), "
                f"got {tuple(images.shape)} {images.dtype}"
            )
        size = (images.shape[-2], images.shape[-1])
        feats = self.backbone(images)  # 4 × (B, C_i, h_i, w_i)
        out = {"out": self._resize(self.decode_head(feats[3]), size)}  # (B, classes, H, W)
        if self.training and self.aux_head is not None:
            out["aux"] = self._resize(self.aux_head(feats[2]), size)
        return out

    def attention_modules(self) -> list[AttentionModule]:
        """Every attention block in the model (set ``eval_band`` on these for band truncation)."""
        return [m for m in self.modules() if isinstance(m, AttentionModule)]

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameters by part: ``[{"name": "backbone", "params": [...]}, "decode_head", "aux_head"]``."""
        groups = [("backbone", self.backbone), ("decode_head", self.decode_head), ("aux_head", self.aux_head)]
        return [
            {"name": name, "params": [p for p in module.parameters() if p.requires_grad]}
            for name, module in groups
            if module is not None
        ]
