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

from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule

if TYPE_CHECKING:
    from fsanet.config import ModelConfig


class Method:
    """What a method declares about itself, once. Everything else (:data:`fsanet.models.MODELS`, the
    display names in the tables, which models have a band, the benchmark's module list, the CLI and
    profile choices) is derived from these. Two kinds of method share it: a decode head on the shared
    skeleton (:class:`fsanet.models.heads.DecodeHead`) and a whole network (:class:`Network`).
    """

    #: ``model.name``, and the method's key in paths, summary.json and study profiles
    name: ClassVar[str] = ""
    #: the method's name in the tables and plots
    display: ClassVar[str] = ""
    #: the attention modules the method builds; the first one is the method's row in the benchmark
    attention_classes: ClassVar[tuple[type[AttentionModule], ...]] = ()
    #: the attention-free baseline that the study's "above the FCN" claims compare against
    baseline: ClassVar[bool] = False
    #: the ``model.attention`` options the method reads; build_model refuses others that were set,
    #: and only these are logged as the run's params. A method that reads ``band`` is a band model.
    attention_options: ClassVar[tuple[str, ...]] = ()
    #: what the method predicts: ``"semantic"`` (a :class:`SegmentationModel`: per-pixel logits, mIoU)
    #: or ``"instances"`` (a detector, :class:`fsanet.models.mask_rcnn.MaskRCNN`: boxes, classes and
    #: masks, COCO AP); the engine picks the data pipeline, the loss and the metrics by it
    task: ClassVar[str] = "semantic"

    @classmethod
    def has_band(cls) -> bool:
        """Whether the method is trained at a DCT band (``model.attention.band``)."""
        return "band" in cls.attention_options


class Network(Method):
    """A method that is a whole network with its own encoder and decoder (Segformer, AFFormer), not a
    head on the shared skeleton. It ignores ``model.backbone``, ``model.small_channels`` and
    ``model.head_*``; ``model.variant`` picks its size.
    """

    #: the sizes ``model.variant`` may name; the first is the default
    variants: ClassVar[tuple[str, ...]] = ()
    #: stochastic depth when ``model.drop_path`` is null: the rate of the network's official configs
    default_drop_path: ClassVar[float] = 0.0

    @classmethod
    def drop_path(cls, cfg: ModelConfig) -> float:
        return cls.default_drop_path if cfg.drop_path is None else float(cfg.drop_path)

    @classmethod
    def variant(cls, cfg: ModelConfig) -> str:
        """The size asked for by ``model.variant`` (default: the first), checked against :attr:`variants`."""
        name = cfg.variant or cls.variants[0]
        if name not in cls.variants:
            raise ValueError(
                f"model.variant={name} is not a size of model.name={cls.name}; "
                f"choose one of: {', '.join(cls.variants)}"
            )
        return name

    @classmethod
    def build(cls, cfg: ModelConfig, num_classes: int) -> SegmentationModel:
        """The network for ``cfg`` (random initialisation)."""
        raise NotImplementedError

    @classmethod
    def load_checkpoint(cls, model: SegmentationModel, state: dict[str, Any], source: str) -> None:
        """Load released weights (the network's own key names, mapped where they differ), strictly."""
        raise NotImplementedError


__all__ = ["Method", "Network", "SegmentationModel"]


class SegmentationModel(nn.Module):
    """Backbone (4 stage features) → decode head on stage 4, or on all four stages when the head has
    ``takes_all_stages = True`` (+ auxiliary head on stage 3).

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
        # a head that fuses every stage (Segformer's all-MLP decoder) says so; others read stage 4
        self.head_takes_all_stages: bool = bool(getattr(decode_head, "takes_all_stages", False))

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
        head_in = feats if self.head_takes_all_stages else feats[3]
        out = {"out": self._resize(self.decode_head(head_in), size)}  # (B, classes, H, W)
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
