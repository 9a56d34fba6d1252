"""Segmentation models: ``MODELS`` (name → method) and ``build_model(cfg.model, num_classes)``.

A method is either a decode head on the shared skeleton (:data:`HEADS`: the backbone is
``model.backbone``, the head differs only in its attention block) or a whole network with its own
encoder and decoder (:data:`NETWORKS`: Segformer, AFFormer; ``model.variant`` picks the size). Both
declare themselves through :class:`~fsanet.models.segmentor.Method`.

The names are used verbatim in configs, result paths and ``summary.json``::

    model = build_model(cfg.model, num_classes=19)   # SegmentationModel
    model(images)            # {"out": (B, K, H, W), "aux": (B, K, H, W)} in train mode; {"out"} in eval
    model.attention_modules()  # set .eval_band on these for band truncation without retraining
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Union

from omegaconf import DictConfig, OmegaConf
from torch import nn

from fsanet.config import AttentionConfig, Backbone, ModelConfig
from fsanet.models.heads import (
    AFFHead,
    AuxHead,
    CCHead,
    DAHead,
    DecodeHead,
    FCNHead,
    FSAHead,
    ISAHead,
    LinearHead,
    NLHead,
)
from fsanet.models.networks import (
    AFFormerFSANet,
    AFFormerNet,
    MaskRCNNFSANet,
    MaskRCNNNet,
    MaskRCNNNonLocalNet,
    SegformerFSANet,
    SegformerNet,
)
from fsanet.models.pretrained import fetch_checkpoint, load_pretrained, read_state_dict
from fsanet.models.resnet import RESNET_BACKBONES, ResNetV1c
from fsanet.models.segmentor import Method, Network, SegmentationModel
from fsanet.models.small import SmallBackbone
from fsanet.nn.base import AttentionModule

__all__ = [
    "HEADS",
    "MODELS",
    "NETWORKS",
    "Method",
    "Network",
    "SegmentationModel",
    "attention_modules",
    "band_models",
    "bench_modules",
    "build_backbone",
    "build_model",
    "display_name",
    "load_trained_weights",
]

log = logging.getLogger(__name__)

#: the decode heads, in table order; each declares its name, display name, attention and options
HEADS: tuple[type[DecodeHead], ...] = (FCNHead, NLHead, DAHead, CCHead, ISAHead, LinearHead, AFFHead, FSAHead)

#: the whole networks, in table order
NETWORKS: tuple[type[Network], ...] = (
    SegformerNet,
    SegformerFSANet,
    AFFormerNet,
    AFFormerFSANet,
    MaskRCNNNet,
    MaskRCNNFSANet,
    MaskRCNNNonLocalNet,
)

#: model name → method (a decode head on the shared skeleton, or a whole network). A plain dict: a
#: new method is one class added here (or inserted at run time, as a test does).
MODELS: dict[str, type[Method]] = {method.name: method for method in (*HEADS, *NETWORKS)}


def attention_modules() -> dict[str, type[AttentionModule]]:
    """Attention-module name → class, over every head's ``attention_classes`` (the benchmark's choices)."""
    return {cls.name: cls for head in MODELS.values() for cls in head.attention_classes}


def bench_modules() -> list[str]:
    """The benchmark's default modules: each method's first attention module, in table order."""
    names = [head.attention_classes[0].name for head in MODELS.values() if head.attention_classes]
    return list(dict.fromkeys(names))


def band_models() -> frozenset[str]:
    """Names of the methods trained at a DCT band (their heads read ``model.attention.band``)."""
    return frozenset(name for name, head in MODELS.items() if head.has_band())


def display_name(model: str) -> str:
    """A method's name in tables and plots (its own name if it is not a known method)."""
    head = MODELS.get(model)
    return head.display if head is not None and head.display else model


def _as_model_config(cfg: Union[ModelConfig, DictConfig, Mapping[str, Any]]) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg))  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        try:
            merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.create(dict(cfg)))
        except Exception as err:  # omegaconf validation errors name the key
            key = getattr(err, "full_key", None)
            where = f"model.{key}" if key else "model config"
            raise ValueError(f"{where}: {str(err).splitlines()[0]}") from None
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    raise TypeError(f"build_model expects a ModelConfig, DictConfig or dict, got {type(cfg).__name__}")


def _check_attention_options(cfg: ModelConfig) -> None:
    """Refuse a ``model.attention.*`` option set away from its default that the chosen head never reads."""
    head = MODELS[cfg.name]
    defaults = AttentionConfig()
    for key in dataclasses.fields(AttentionConfig):
        value, default = getattr(cfg.attention, key.name), getattr(defaults, key.name)
        if key.name not in head.attention_options and _plain(value) != _plain(default):
            reads = ", ".join(head.attention_options) or "none"
            raise ValueError(
                f"model.attention.{key.name}={_plain(value)} is not read by model.name={cfg.name} (it reads: "
                f"{reads}); remove the setting, or choose a model that uses it"
            )


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, (list, tuple)) else value


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """The backbone named by ``cfg.backbone`` (random init; see :func:`build_model` for weights)."""
    backbone = Backbone(cfg.backbone)
    if backbone is Backbone.small:
        return SmallBackbone(cfg.small_channels)
    depth, deep_stem = RESNET_BACKBONES[backbone.value]
    return ResNetV1c(depth=depth, deep_stem=deep_stem)


def build_model(
    model_cfg: Union[ModelConfig, DictConfig, Mapping[str, Any]], num_classes: int, *, pretrained: bool = True
) -> SegmentationModel:
    """Build backbone + decode head ``model_cfg.name`` (+ auxiliary FCN head) and load pretrained weights.

    Args:
        model_cfg: the ``model`` section (structured DictConfig, :class:`ModelConfig` or a plain dict).
        num_classes: classes to predict.
        pretrained: load ``model.pretrained`` (and warn when it is not set); False when a trained
            checkpoint's weights are loaded next (evaluation, plots), which makes both pointless.

    Raises:
        ValueError: unknown model name (the message lists :data:`MODELS`), bad sizes or attention
            options (naming the ``model.*`` key), or an unusable pretrained checkpoint.
        FileNotFoundError: ``model.pretrained`` names a missing file.
    """
    cfg = _as_model_config(model_cfg)
    if cfg.name not in MODELS:
        raise ValueError(f"model.name={cfg.name!r} is not a known model; choose one of: {', '.join(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
    for key in ("head_channels", "aux_channels"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"model.{key} must be ≥ 1, got {getattr(cfg, key)}")

    _check_attention_options(cfg)
    method = MODELS[cfg.name]
    if issubclass(method, Network):
        if cfg.head_position:
            raise ValueError(
                f"model.head_position={cfg.head_position} is an option of the decode heads on the shared "
                f"skeleton; model.name={cfg.name} is a whole network: set model.head_position=0"
            )
        return _build_network(method, cfg, num_classes, pretrained)
    if cfg.variant is not None:
        networks = ", ".join(n for n, m in MODELS.items() if issubclass(m, Network)) or "none"
        raise ValueError(
            f"model.variant={cfg.variant} is not read by model.name={cfg.name} (its size comes from "
            f"model.backbone and model.head_*); only whole networks have variants ({networks})"
        )
    backbone = build_backbone(cfg)
    if not pretrained:
        pass  # the caller loads a full trained state dict
    elif cfg.pretrained:
        path = fetch_checkpoint(cfg.pretrained, cfg.cache_dir, cfg.pretrained_sha256)
        load_pretrained(backbone, path)
    else:
        level = logging.INFO if Backbone(cfg.backbone) is Backbone.small else logging.WARNING
        log.log(
            level,
            "model.pretrained is not set: the %s backbone starts from random initialisation",
            Backbone(cfg.backbone).value,
        )

    in3, in4 = backbone.out_channels[2], backbone.out_channels[3]
    try:
        head = MODELS[cfg.name](
            in4,
            cfg.head_channels,
            num_classes,
            attention=cfg.attention,
            kernel_size=cfg.head_kernel,
            dropout=cfg.dropout,
            position=cfg.head_position,
            position_scale=cfg.head_position_scale,
        )
    except ValueError as err:
        raise ValueError(
            f"model.name={cfg.name}: bad head/attention option (model.head_*, model.attention.*): {err}"
        ) from None
    aux = None
    if cfg.aux:
        aux = AuxHead(in3, cfg.aux_channels, num_classes, kernel_size=cfg.head_kernel, dropout=cfg.dropout)
    return SegmentationModel(backbone, head, num_classes, aux, align_corners=cfg.align_corners, name=cfg.name)


def _build_network(
    method: type[Network], cfg: ModelConfig, num_classes: int, pretrained: bool
) -> SegmentationModel:
    """A whole network of size ``model.variant``, with ``model.pretrained`` loaded through its key mapping."""
    method.variant(cfg)  # refuses an unknown size, naming the choices
    try:
        model = method.build(cfg, num_classes)
    except ValueError as err:
        raise ValueError(f"model.name={cfg.name}: bad model option (model.*): {err}") from None
    if pretrained and cfg.pretrained:
        path = fetch_checkpoint(cfg.pretrained, cfg.cache_dir, cfg.pretrained_sha256)
        method.load_checkpoint(model, read_state_dict(path), str(path))
    elif pretrained:
        log.info("model.pretrained is not set: %s starts from random initialisation", cfg.name)
    return model


def load_trained_weights(model: nn.Module, state: Mapping[str, Any], source: Union[str, Path]) -> None:
    """Load a trained checkpoint's weights into ``model`` (strict), or say in one line why they do not fit.

    Args:
        model: the model built from the (possibly overridden) ``model`` section.
        state: the checkpoint (``{"model": state_dict, "config": resolved config, ...}``).
        source: the checkpoint's path, named in the error.

    Raises:
        ValueError: the weights and the model disagree (missing or unexpected keys, other shapes); the
            message names the checkpoint's own ``model.*`` settings where they differ from the model's.
    """
    weights = state["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        trained = (state.get("config") or {}).get("model") or {}
        built = getattr(model, "name", "?")
        hints = []
        if trained.get("name") not in (None, built):
            hints.append(
                f"it was trained as model.name={trained['name']}, but model.name={built} was asked for"
            )
        if trained.get("backbone") is not None:
            hints.append(f"its backbone is {trained['backbone']}")
        parts = [
            f"{n} {what} (e.g. {keys[0]})"
            for n, what, keys in (
                (len(missing), "missing", missing),
                (len(unexpected), "unexpected", unexpected),
                (len(reshaped), "with another shape", reshaped),
            )
            if n
        ]
        raise ValueError(
            f"{source}: the checkpoint's weights do not fit the model ({'; '.join(parts)})"
            + (f": {'; '.join(hints)}" if hints else "")
            + "; drop the model.* overrides so the checkpoint's own model settings are used"
        )
    model.load_state_dict(weights)
