"""The whole networks as methods of the study: their :class:`~fsanet.models.segmentor.Network`
declarations (what :data:`fsanet.models.MODELS` lists), apart from the architectures
(:mod:`fsanet.models.segformer`, :mod:`fsanet.models.afformer`) and their checkpoint key mappings
(:mod:`fsanet.models.segformer_keys`, :mod:`fsanet.models.afformer_keys`), which import the
architectures. Each declaration builds its network from ``model.*`` and loads released weights::

    segformer / segformer_fsa     MiT-B0…B5 + all-MLP decoder (+ FSA on the fused decoder map)
    afformer  / afformer_fsa      AFFormer tiny/small/base (+ FSA in place of every AFF)
    mask_rcnn / mask_rcnn_fsa / mask_rcnn_nonlocal
                                  Mask R-CNN FPN on model.backbone (+ FSA or non-local in res4)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Optional

from torch import nn

from fsanet.config import Backbone, ModelConfig
from fsanet.models.afformer import AFFORMER_SETTINGS, AFFormer, FilterFactory
from fsanet.models.afformer_keys import load_afformer_checkpoint
from fsanet.models.heads import _value, build_fsa
from fsanet.models.mask_rcnn import MaskRCNN, MaskRCNNSettings
from fsanet.models.pretrained import load_pretrained
from fsanet.models.resnet import RESNET_BACKBONES, ResNetV1c
from fsanet.models.segformer import DECODER_CHANNELS, MIT_SETTINGS, build_segformer
from fsanet.models.segformer_keys import load_segformer_checkpoint
from fsanet.models.segmentor import Network, SegmentationModel
from fsanet.models.small import SmallBackbone
from fsanet.nn.efficient_attention import EfficientSelfAttention
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.nn.non_local import NonLocal2d

__all__ = [
    "AFFormerFSANet",
    "AFFormerNet",
    "MaskRCNNFSANet",
    "MaskRCNNNet",
    "MaskRCNNNonLocalNet",
    "SegformerFSANet",
    "SegformerNet",
]

log = logging.getLogger(__name__)


def _load(
    loader: Callable[[nn.Module, dict[str, Any]], str],
    model: SegmentationModel,
    state: dict[str, Any],
    source: str,
    name: str,
) -> None:
    """Run a key-mapping loader; its one-line error gets the checkpoint's path in front."""
    try:
        kind = loader(model, state)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    log.info("loaded %s (%s) into %s", source, kind, name)


class SegformerNet(Network):
    """Segformer (MiT-B0…B5 + all-MLP decoder): ``model.name=segformer``, ``model.variant=b0``…``b5``.

    Its attention is the encoder's efficient self-attention; ``eval_band`` on those modules is the band
    truncation without retraining (keys and values from the low-passed map, every stage).
    ``model.pretrained`` takes mmseg or NVlabs checkpoints (ImageNet ``mit_b*`` encoders, or whole
    segmentors of the same classes) through :func:`~fsanet.models.segformer_keys.load_segformer_checkpoint`.
    """

    name = "segformer"
    display = "Segformer"
    attention_classes = (EfficientSelfAttention,)
    attention_options = ()
    variants = tuple(MIT_SETTINGS)
    default_drop_path = 0.1  # mmseg's and NVlabs' Segformer configs

    @classmethod
    def head_attention(cls, channels: int, cfg: ModelConfig) -> Optional[nn.Module]:
        """The block on the decoder's fused map (none for plain Segformer)."""
        return None

    @classmethod
    def build(cls, cfg: ModelConfig, num_classes: int) -> SegmentationModel:
        size = cls.variant(cfg)
        return build_segformer(
            size,
            num_classes,
            attention=cls.head_attention(DECODER_CHANNELS[size], cfg),
            drop_path_rate=cls.drop_path(cfg),
            dropout=cfg.dropout,
            align_corners=cfg.align_corners,
            name=cls.name,
        )

    @classmethod
    def load_checkpoint(cls, model: SegmentationModel, state: dict[str, Any], source: str) -> None:
        _load(load_segformer_checkpoint, model, state, source, cls.name)


class SegformerFSANet(SegformerNet):
    """Segformer with an FSA block on the decoder's fused map (``model.attention``: band, mode, impl,
    reduction, as for the FsaNet head); trained with it (FSA with retraining)."""

    name = "segformer_fsa"
    display = "Segformer + FSA"
    attention_classes = (EfficientSelfAttention, FrequencySelfAttention)
    attention_options = ("band", "mode", "impl", "reduction")

    @classmethod
    def head_attention(cls, channels: int, cfg: ModelConfig) -> Optional[nn.Module]:
        return build_fsa(channels, cfg.attention)


class AFFormerNet(Network):
    """AFFormer (``model.name=afformer``, ``model.variant=tiny|small|base``) with its official adaptive
    frequency filters. The filter runs on prototype tokens inside the encoder's transformer blocks and
    is not an :class:`~fsanet.nn.base.AttentionModule`: no ``eval_band`` truncation, no T1 row (the
    shared-skeleton ``aff`` head's :class:`~fsanet.nn.aff.FrequencyFilter` computes the same maths).
    ``model.pretrained`` takes the released checkpoints (:mod:`fsanet.models.afformer_keys`)."""

    name = "afformer"
    display = "AFFormer"
    attention_classes = ()
    attention_options = ()
    variants = tuple(AFFORMER_SETTINGS)
    default_drop_path = 0.0  # the official ADE20K configs keep the backbone's default, 0.0

    @classmethod
    def filter_factory(cls, cfg: ModelConfig) -> Optional[FilterFactory]:
        """What replaces each adaptive frequency filter (None: the official AFF)."""
        return None

    @classmethod
    def build(cls, cfg: ModelConfig, num_classes: int) -> SegmentationModel:
        return AFFormer(
            cls.variant(cfg),
            num_classes,
            cls.filter_factory(cfg),
            cls.drop_path(cfg),
            cfg.dropout,
            align_corners=cfg.align_corners,
            name=cls.name,
        )

    @classmethod
    def load_checkpoint(cls, model: SegmentationModel, state: dict[str, Any], source: str) -> None:
        _load(load_afformer_checkpoint, model, state, source, cls.name)


class AFFormerFSANet(AFFormerNet):
    """AFFormer with an FSA block in place of every adaptive frequency filter (``model.attention``:
    band, mode, impl, reduction). One band serves every stage; on a prototype map smaller than the band
    the block attends over the whole map (``clamp_band``)."""

    name = "afformer_fsa"
    display = "AFFormer + FSA"
    attention_classes = (FrequencySelfAttention,)
    attention_options = ("band", "mode", "impl", "reduction")

    @classmethod
    def filter_factory(cls, cfg: ModelConfig) -> Optional[FilterFactory]:
        return lambda channels: build_fsa(channels, cfg.attention, clamp_band=True)


#: Mask R-CNN on the small CPU backbone (``model.backbone=small``): the levels and sizes for 96 px
#: synthetic images. The FPN takes the stride-4 and stride-8 outputs (stages 1 and 4; stages 2-4 are
#: all at stride 8) with 1×1 output convs, as the CPU segmentation heads use 1×1 convs: every box and
#: mask feature then sees at most about 26 px around its RoI (the backbone's 39 px field, the stride-8
#: upsampling, the box's corners), less than the 36 px between a disc and its cue, so only a block in
#: res4 can tell the two disc classes apart. Anchors of 16 and 32 px fit the 9-25 px shapes. The RPN
#: and RoI sample counts are cut (mmdet's suit ~100 objects in 800×1333 images, here 4-8 in 96×96) and
#: the heads narrowed; the mask head's 3×3 convs over every positive RoI dominate a step, so RoIs (64
#: per image, 16 positive) and mask width (32) set its cost. Measured, one core, batch 4, FSA in res4:
#: 219 ms per step with 128 RoIs and width 64, 123 ms with 64 RoIs, 128 ms with width 32, 90 ms with
#: both (the setting here).
SMALL_MASK_RCNN: dict[str, Any] = {
    "frozen_stages": -1,  # trained from scratch: nothing frozen, BatchNorm learns its statistics
    "norm_eval": False,
    "in_indices": (0, 3),
    "strides": (4, 8),
    "extra_level": False,
    "fpn_channels": 64,
    "fpn_kernel": 1,
    "anchor_scale": 4.0,
    "rpn_num": 128,
    "rpn_pre_nms_train": 500,
    "rpn_post_nms_train": 200,
    "rpn_pre_nms_test": 500,
    "rpn_post_nms_test": 200,
    "roi_num": 64,
    "box_fc": 256,
    "mask_convs": 2,
    "mask_channels": 32,
}


class MaskRCNNNet(Network):
    """Mask R-CNN with an FPN (``model.name=mask_rcnn``) on ``model.backbone``: an instance-segmentation
    method (``task = "instances"``: trained on instance targets, scored with COCO box and mask AP).

    Unlike the segmentation networks it reads ``model.backbone``: a ResNet without dilation (strides
    4-32, the FPN setting), ``resnet50`` / ``resnet101`` (torchvision's 7×7 stem, as in mmdet's
    configs, for torchvision's ImageNet weights) or ``resnet50_v1c`` / ``resnet101_v1c`` (mmcls's
    weights), or ``small`` (:data:`SMALL_MASK_RCNN`). ``model.mask_rcnn`` overrides single settings of
    :class:`~fsanet.models.mask_rcnn.MaskRCNNSettings`. ``model.pretrained`` is the backbone's
    ImageNet checkpoint.
    """

    name = "mask_rcnn"
    display = "Mask R-CNN"
    attention_classes = ()
    attention_options = ()
    variants = ("fpn",)
    task = "instances"

    @classmethod
    def res4_attention(cls, channels: int, cfg: ModelConfig) -> Optional[nn.Module]:
        """The block placed in the backbone's res4 stage (none for plain Mask R-CNN)."""
        return None

    @classmethod
    def settings(cls, cfg: ModelConfig) -> MaskRCNNSettings:
        """mmdet's defaults (ResNet) or :data:`SMALL_MASK_RCNN`, updated by ``model.mask_rcnn``."""
        base = SMALL_MASK_RCNN if Backbone(cfg.backbone) is Backbone.small else {}
        known = set(MaskRCNNSettings.__dataclass_fields__)
        unknown = sorted(set(cfg.mask_rcnn) - known)
        if unknown:
            raise ValueError(
                f"model.mask_rcnn.{unknown[0]} is not a Mask R-CNN setting; "
                f"choose from {', '.join(sorted(known))}"
            )
        values = {**base, **{k: _value(v) for k, v in cfg.mask_rcnn.items()}}
        return MaskRCNNSettings(**values)

    @classmethod
    def build(cls, cfg: ModelConfig, num_classes: int) -> MaskRCNN:  # type: ignore[override]
        backbone_kind = Backbone(cfg.backbone)
        if backbone_kind is Backbone.small:
            backbone: nn.Module = SmallBackbone(cfg.small_channels)
        else:
            depth, deep_stem = RESNET_BACKBONES[backbone_kind.value]
            backbone = ResNetV1c(depth, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), deep_stem=deep_stem)
        attention = cls.res4_attention(backbone.out_channels[2], cfg)
        return MaskRCNN(backbone, num_classes, cls.settings(cfg), res4_attention=attention, name=cls.name)

    @classmethod
    def load_checkpoint(cls, model: SegmentationModel, state: dict[str, Any], source: str) -> None:
        # ImageNet weights into the backbone by name: the res4 block keeps ResNet's names, and its own
        # weights are reported missing (they start from their initialisation)
        load_pretrained(model.backbone, state)
        log.info("loaded %s into the backbone of %s", source, cls.name)


class MaskRCNNFSANet(MaskRCNNNet):
    """Mask R-CNN with an FSA block in res4 (``model.attention``: band, mode, impl, reduction); its
    ``eval_band`` is the band truncation without retraining. A band larger than the res4 map keeps it
    whole."""

    name = "mask_rcnn_fsa"
    display = "Mask R-CNN + FSA"
    attention_classes = (FrequencySelfAttention,)
    attention_options = ("band", "mode", "impl", "reduction")

    @classmethod
    def res4_attention(cls, channels: int, cfg: ModelConfig) -> Optional[nn.Module]:
        return build_fsa(channels, cfg.attention, clamp_band=True)


class MaskRCNNNonLocalNet(MaskRCNNNet):
    """Mask R-CNN with one non-local block in res4, the placement of Wang et al. (2018) for Mask R-CNN
    (``model.attention``: reduction, nonlocal_mode, nonlocal_use_scale)."""

    name = "mask_rcnn_nonlocal"
    display = "Mask R-CNN + non-local"
    attention_classes = (NonLocal2d,)
    attention_options = ("reduction", "nonlocal_mode", "nonlocal_use_scale")

    @classmethod
    def res4_attention(cls, channels: int, cfg: ModelConfig) -> Optional[nn.Module]:
        opts = cfg.attention
        return NonLocal2d(
            channels,
            reduction=opts.reduction,
            mode=_value(opts.nonlocal_mode),
            use_scale=opts.nonlocal_use_scale,
        )
