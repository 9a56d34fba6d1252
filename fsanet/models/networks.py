"""The whole networks as methods of the study: their :class:`~fsanet.models.segmentor.Network`
declarations (what :data:`fsanet.models.MODELS` lists), apart from the architectures
(:mod:`fsanet.models.segformer`, :mod:`fsanet.models.afformer`) and their checkpoint key mappings
(:mod:`fsanet.models.segformer_keys`, :mod:`fsanet.models.afformer_keys`), which import the
architectures. Each declaration builds its network from ``model.*`` and loads released weights::

    segformer / segformer_fsa     MiT-B0…B5 + all-MLP decoder (+ FSA on the fused decoder map)
    afformer  / afformer_fsa      AFFormer tiny/small/base (+ FSA in place of every AFF)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Optional

from torch import nn

from fsanet.config import ModelConfig
from fsanet.models.afformer import AFFORMER_SETTINGS, AFFormer, FilterFactory
from fsanet.models.afformer_keys import load_afformer_checkpoint
from fsanet.models.heads import build_fsa
from fsanet.models.segformer import DECODER_CHANNELS, MIT_SETTINGS, build_segformer
from fsanet.models.segformer_keys import load_segformer_checkpoint
from fsanet.models.segmentor import Network, SegmentationModel
from fsanet.nn.efficient_attention import EfficientSelfAttention
from fsanet.nn.fsa import FrequencySelfAttention

__all__ = ["AFFormerFSANet", "AFFormerNet", "SegformerFSANet", "SegformerNet"]

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
