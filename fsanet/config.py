"""Typed configuration: OmegaConf dataclass schemas, YAML files under ``params/``, CLI dotlist overrides.

Every command loads one :class:`Config`: the schema below supplies types and defaults, then each
YAML file given with ``--config`` is merged in order, then ``key=value`` overrides from the command
line. An unknown key, a wrong type or a missing value fails at load time with one line naming the key
and the file (or ``command line``) it came from.

OmegaConf is held below 2.4 by dvc's hydra-core, so the schemas use ``Enum`` rather than ``Literal``
and ``Optional[...]`` rather than ``X | None``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "MISSING",
    "BenchConfig",
    "Config",
    "ConfigError",
    "Device",
    "config_hash",
    "load_config",
    "to_container",
]

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file or override is invalid. The message names the key and its source."""


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# --------------------------------------------------------------------------------------------
# Efficiency benchmark (`fsanet bench attention`)
# --------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """Settings of the module-level efficiency benchmark.

    ``bands`` are ``[u0, u1, v0, v1]`` DCT blocks; the paper setting uses each of them for FSA.
    """

    modules: List[str] = field(
        default_factory=lambda: ["fsa", "nonlocal", "danet_pam", "criss_cross", "isa", "linear", "aff"]
    )
    channels: int = 512
    batch: int = 1
    paper_size: List[int] = field(default_factory=lambda: [97, 97])
    paper_bands: List[List[int]] = field(default_factory=lambda: [[0, 5, 0, 5], [0, 8, 0, 8]])
    sweep_sizes: List[int] = field(default_factory=lambda: [32, 48, 64, 96, 128, 192, 256])
    sweep_band: List[int] = field(default_factory=lambda: [0, 5, 0, 5])
    warmup: int = 3
    repeats: int = 20
    # The timed runs of each case are split over this many interleaved rounds (>= 1): in every round each
    # case of a size gets its share in turn, the order rotating, and the spread of the per-round medians
    # is recorded (see fsanet.bench).
    rounds: int = 5
    # A single forward slower than this is recorded as a time-out; larger sizes of that module are skipped.
    timeout_s: float = 10.0
    # Allocations beyond this (CPU: address-space limit; CUDA: caught OOM) are recorded as out-of-memory.
    memory_budget_gb: float = 8.0
    # A forward of a sweep case slower than this is a time-out (null: same as timeout_s). The default
    # study uses a lower value to fit its time budget; params/bench.yaml measures everything it can.
    sweep_timeout_s: Optional[float] = None
    threads: int = 0  # 0 keeps torch's default
    device: Device = Device.auto
    seed: int = 0
    pin_allocator: bool = True  # CPU: keep freed large buffers (see fsanet.bench)
    # Time every module in alternation with the floor (module, floor, module, …) and record that paired
    # floor and the ratio, so both see the same machine state (see fsanet.bench).
    paired_floor: bool = True


# --------------------------------------------------------------------------------------------
# Data (datasets work): `fsanet data ...`, and the `data` section of train/eval.
# --------------------------------------------------------------------------------------------
@dataclass
class SyntheticConfig:
    """The built-in synthetic study set (``fsanet/data/synthetic.py``; the design is in its docstring).

    ``min_cue_distance``: least Chebyshev distance (px) between the cue marker and any object whose
    class it decides; it must exceed the FCN's reach (30 px for the small backbone with 1×1 head convs).
    ``processes``: worker processes for ``prepare`` (0 = all cores).
    """

    image_size: int = 96
    num_train: int = 2000
    num_val: int = 500
    seed: int = 0
    val_seed: int = 1
    min_cue_distance: int = 36
    layout: str = "band"  # "band" (one cue: DC suffices) or "cells" (one cue per vertical stripe)
    cells: int = 4  # stripes of the "cells" layout
    position_hint: int = 0  # grey levels of a fixed left-to-right green ramp (0 = none)
    processes: int = 0


@dataclass
class ArchiveConfig:
    """One archive of a benchmark (``fsanet data download``): where it comes from and where it goes.

    ``checksum`` is ``"ALGO:HEX"`` (md5/sha1/sha256) or null when the publisher gives none;
    Cityscapes uses ``site`` + ``package_id`` (login flow) instead of ``url``.
    """

    name: str = MISSING
    url: Optional[str] = None
    mirrors: List[str] = field(default_factory=list)
    site: Optional[str] = None
    package_id: Optional[int] = None
    checksum: Optional[str] = None
    extract_to: Optional[str] = None


@dataclass
class DataConfig:
    """Dataset and data pipeline (spec datasets §0).

    Dataset-specific defaults are the synthetic study set's (``params/data/synthetic.yaml`` spells
    them out and also switches on ``cache`` and off ``photometric_distortion``); pipeline conventions
    default to mmseg's. Scales are mmseg's: ``base_scale`` = ``[L, S]`` (a keep-ratio resize bounds
    the long edge by L and the short edge by S; train draws ``ratio_range`` times it); ``crop_size`` =
    ``[h, w]``. ``num_classes`` must match the dataset's class list (checked by ``build_dataset``).
    ``cache`` keeps decoded images in memory (per process): only for small sets.
    """

    name: str = "synthetic"  # a key of fsanet.data.DATASETS
    root: str = "data/${data.name}"
    num_classes: int = 7
    train_split: str = "train"
    val_split: str = "val"
    base_scale: List[int] = field(default_factory=lambda: [96, 96])
    crop_size: List[int] = field(default_factory=lambda: [96, 96])
    ratio_range: List[float] = field(default_factory=lambda: [1.0, 1.0])
    cat_max_ratio: float = 0.75
    ignore_index: int = 255
    flip_prob: float = 0.5
    photometric_distortion: bool = True
    mean: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])  # RGB
    std: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    check_labels: bool = True
    check_split_sizes: bool = True  # false for miniatures/subsets
    cache: bool = False
    num_workers: int = 0  # DataLoader workers
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    download: List[ArchiveConfig] = field(default_factory=list)  # official archives (datasets part B)


# --------------------------------------------------------------------------------------------
# Model (models work)
# --------------------------------------------------------------------------------------------
class Backbone(str, Enum):
    resnet50_v1c = "resnet50_v1c"
    resnet101_v1c = "resnet101_v1c"
    small = "small"


class AttentionMode(str, Enum):
    dot = "dot"
    linsoftmax = "linsoftmax"


class AttentionImpl(str, Enum):
    fused = "fused"
    reference = "reference"


class NonLocalMode(str, Enum):
    embedded_gaussian = "embedded_gaussian"
    dot_product = "dot_product"


@dataclass
class AttentionConfig:
    """Options of the attention block inside the decode head; each head reads the ones it uses.

    ``band`` is the FSA DCT block ``[u0, u1, v0, v1]`` (``-1`` = to the end; null = full spectrum).
    ``recurrence``: how often the block (shared weights) is applied; null = the head's default
    (criss_cross 2, all others 1).
    """

    band: Optional[List[int]] = field(default_factory=lambda: [0, 5, 0, 5])
    mode: AttentionMode = AttentionMode.dot  # FSA kernel: dot product or LinSoftmax
    impl: AttentionImpl = AttentionImpl.fused  # FSA implementation
    reduction: int = 2  # FSA / non-local inner width C' = C // reduction
    recurrence: Optional[int] = None
    nonlocal_mode: NonLocalMode = NonLocalMode.embedded_gaussian
    nonlocal_use_scale: bool = True
    qk_channels: Optional[int] = None  # DANet PAM, criss-cross, linear attention: null = C // 8
    isa_key_channels: Optional[int] = None  # null = C // 2
    isa_down_factor: List[int] = field(default_factory=lambda: [8, 8])
    aff_heads: int = 8


@dataclass
class ModelConfig:
    """Segmentation model: backbone + decode head (``name``) + optional auxiliary FCN head.

    The defaults are the CPU profile (small backbone, 64-wide head with 1×1 skeleton convs so the
    FCN head's receptive field is the backbone's); ``params/model/paper_r101.yaml`` holds the paper
    setting (ResNet-101-V1c-D8, 512-wide head with 3×3 convs, ImageNet weights).
    """

    name: str = "fsanet"  # one of fsanet.models.MODELS
    backbone: Backbone = Backbone.small
    small_channels: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    pretrained: Optional[str] = None  # local file or http(s) URL of backbone weights
    pretrained_sha256: Optional[str] = None
    cache_dir: str = "data/pretrained"  # where downloaded weights are kept
    head_channels: int = 64
    head_kernel: int = 1  # kernel of the head's skeleton convs (3 in the paper)
    dropout: float = 0.1
    align_corners: bool = False
    aux: bool = True
    aux_channels: int = 32
    aux_weight: float = 0.4
    attention: AttentionConfig = field(default_factory=AttentionConfig)


# --------------------------------------------------------------------------------------------
# Training, evaluation, tracking (engine work)
# --------------------------------------------------------------------------------------------
class LossKind(str, Enum):
    ce = "ce"
    ohem = "ohem"


class OptimizerKind(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class AmpDtype(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class InferenceMode(str, Enum):
    whole = "whole"
    slide = "slide"


@dataclass
class TrainConfig:
    """`fsanet train`: iteration-based SGD + poly schedule (mmseg protocol), checkpoints, determinism.

    ``batch_size`` is the global batch, split evenly over torchrun processes. The split trained on is
    ``data.train_split``; DataLoader workers are ``data.num_workers``.
    ``optimizer``: ``sgd`` (mmseg: momentum, L2 ``weight_decay``) or ``adamw`` (``betas``, decoupled
    ``weight_decay``, as in mmseg's Segformer configs). ``warmup_iters``: linear warm-up from
    ``warmup_ratio`` × the poly rate to the poly rate over the first iterations (mmseg ``LinearLR``).
    """

    max_iters: int = 300  # CPU profile: 60–95 ms/it at batch 8 on one core (synthetic 96×96) → ≤ 35 s a model
    batch_size: int = 8
    optimizer: OptimizerKind = OptimizerKind.sgd
    lr: float = 0.01
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    head_lr_mult: float = 1.0  # lr multiplier of the decode and auxiliary heads
    lr_power: float = 0.9
    min_lr: float = 1e-4
    loss: LossKind = LossKind.ce
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    seed: int = 0
    deterministic: bool = True
    warn_only: bool = True  # CUDA has no deterministic bilinear backward; CPU kernels are deterministic
    device: Device = Device.auto
    threads: int = 1  # torch intra-op threads; 0 keeps torch's default
    amp: AmpDtype = AmpDtype.bf16  # autocast dtype on CUDA (fp16 adds a GradScaler); CPU runs in float32
    sync_bn: bool = True  # SyncBatchNorm when several CUDA processes train
    find_unused_parameters: bool = False
    log_interval: int = 10  # iterations between logged training metrics (and the NaN check on CUDA)
    ckpt_interval: int = 50  # iterations between checkpoints (the last iteration is always saved)
    keep_ckpts: int = 2  # newest checkpoints kept; 0 keeps all
    progress: bool = True  # tqdm progress bar


@dataclass
class EvalConfig:
    """`fsanet eval`: mmseg inference (whole/slide, multi-scale + flip) and metrics.

    ``eval_band`` ([u0, u1, v0, v1] or [n_u, n_v]) low-passes the input of every attention module's
    attention branch at evaluation time: the band-truncation ablation without retraining. The split
    evaluated is ``data.val_split``.
    """

    mode: InferenceMode = InferenceMode.whole
    crop_size: List[int] = field(default_factory=lambda: [512, 512])  # slide window (h, w)
    stride: List[int] = field(default_factory=lambda: [341, 341])  # slide stride (h, w)
    scales: List[float] = field(default_factory=lambda: [1.0])  # multi-scale ratios (mmseg aug test: 0.5..1.75)
    flip: bool = False
    align_corners: bool = False  # when resizing logits back to the label's size
    eval_band: Optional[List[int]] = None
    device: Device = Device.auto
    threads: int = 1
    limit: int = 0  # evaluate only the first N images (0 = all)
    num_qualitative: int = 4  # rows of the image | truth | prediction grid
    figures: bool = True  # draw confusion.png and qualitative.png (the CSV and markdown reports are always written)


@dataclass
class TrackingConfig:
    """MLflow. URI precedence: ``uri`` > the study marker's > ``$MLFLOW_TRACKING_URI`` >
    ``sqlite:///mlflow.db`` at the project root (artifacts in ``mlruns/`` beside it)."""

    enabled: bool = True
    uri: Optional[str] = None
    experiment: str = "fsanet/debug"
    run_name: Optional[str] = None  # default: <model>_<dataset>_s<seed>
    study_marker: Optional[str] = None  # JSON written by `fsanet mlflow init`: parent run of the study
    flush_interval: int = 100  # iterations between metric uploads (metrics are buffered in between)
    retries: int = 3  # attempts per MLflow call before falling back to <out_dir>/mlflow_offline/
    backoff_s: float = 1.0  # first retry delay; doubles each attempt
    http_timeout_s: int = 10


# --------------------------------------------------------------------------------------------
# Root
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    """The root schema. Each command reads the sections it needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"key '{key}': {msg}" if key else msg


def load_config(
    paths: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    schema: type = Config,
) -> DictConfig:
    """Merge the schema, YAML files and ``key=value`` overrides into one validated config.

    Args:
        paths: YAML files merged in order onto the schema defaults.
        overrides: OmegaConf dotlist entries such as ``bench.repeats=30``.
        schema: the dataclass to validate against.

    Returns:
        A structured ``DictConfig`` (read-only) with every interpolation resolvable.

    Raises:
        ConfigError: naming the file (or ``command line``) and the key at fault.
    """
    cfg = OmegaConf.structured(schema)
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come from ruamel/pyyaml
            raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe(err)}") from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"command line: override '{bad[0]}' is not of the form key=value")
        seen: set[str] = set()
        for item in overrides:
            key, _, text = item.partition("=")
            key = key.strip()
            if key in seen:  # later wins (profiles append to a rule's defaults), but never silently
                log.warning("command line: %s is given more than once; the last value (%s) wins", key, text)
            seen.add(key)
            try:
                value = OmegaConf.from_dotlist([f"value={text}"])["value"]  # YAML-typed, as from_dotlist does
                # update() walks list indices (data.download.0.url=...) where a merged dotlist cannot
                OmegaConf.update(cfg, key, value, merge=True)
            except OmegaConfBaseException as err:
                raise ConfigError(f"command line: {item!r}: {_describe(err)}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        sources = ", ".join(str(p) for p in paths) or "no config file"
        raise ConfigError(
            f"missing value for key '{missing[0]}' (read from {sources}); "
            f"set it in a params file or on the command line as {missing[0]}=..."
        )
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"interpolation failed: {_describe(err)}") from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python types (Enums become their values)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def config_hash(cfg: DictConfig | dict, length: int = 12) -> str:
    """A short, stable hash of the resolved config (used in provenance footers)."""
    data = cfg if isinstance(cfg, dict) else to_container(cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]

