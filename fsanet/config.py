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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "MISSING",
    "BenchConfig",
    "Config",
    "ConfigError",
    "Device",
    "config_hash",
    "flatten",
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
# Efficiency benchmarks (`fsanet bench attention`, `fsanet bench models`)
# --------------------------------------------------------------------------------------------
@dataclass
class ModelBenchConfig:
    """``fsanet bench models``: params, GFLOPs and CPU fps of whole segmentation models (T3's costs).

    Each model of ``names`` is built from the config's ``model`` section (FsaNet once per band of
    ``bands``) and measured on one ``(1, 3, H, W)`` input in eval mode.
    """

    names: Optional[List[str]] = None  # models of fsanet.models.MODELS; null = all of them
    # FsaNet bands: full, N, NxM or u0,u1,v0,v1; null = model.attention.band
    bands: Optional[List[str]] = None
    input_size: Optional[List[int]] = None  # (H, W); null = data.crop_size
    warmup: int = 2  # untimed forwards of each model
    repeats: int = 10  # timed forwards of each model; the median is reported
    rounds: int = 5  # interleaved rounds: every model is timed in each, so load hits all alike
    # torch threads while timing (0 = torch's default). One: on a busy shared CPU, OpenMP threads that
    # spin-wait for a core make multi-thread timings swing by two orders of magnitude.
    threads: int = 1


@dataclass
class BenchConfig:
    """Settings of the module-level efficiency benchmark.

    ``bands`` are ``[u0, u1, v0, v1]`` DCT blocks; the paper setting uses each of them for FSA.
    """

    modules: Optional[List[str]] = None  # null = each method's attention module (fsanet.models.bench_modules)
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
    # is recorded (see fsanet.bench.attention).
    rounds: int = 5
    # A single forward slower than this is recorded as a time-out; larger sizes of that module are skipped.
    timeout_s: float = 10.0
    # Allocations beyond this (CPU: address-space limit; CUDA: caught OOM) are recorded as out-of-memory.
    memory_budget_gb: float = 8.0
    # A forward of a sweep case slower than this is a time-out (null: same as timeout_s). The default
    # study uses a lower value to fit its time budget; `make bench` measures everything it can.
    sweep_timeout_s: Optional[float] = None
    threads: int = 0  # 0 keeps torch's default
    device: Device = Device.auto
    seed: int = 0
    pin_allocator: bool = True  # CPU: keep freed large buffers (see fsanet.bench.attention)
    # Time every module in alternation with the floor (module, floor, module, …) and record that paired
    # floor and the ratio, so both see the same machine state (see fsanet.bench.attention).
    paired_floor: bool = True
    models: ModelBenchConfig = field(default_factory=ModelBenchConfig)  # `fsanet bench models`


# --------------------------------------------------------------------------------------------
# Data: `fsanet data ...`, and the `data` section of train/eval.
# --------------------------------------------------------------------------------------------
@dataclass
class SyntheticConfig:
    """The built-in synthetic study set (``fsanet/data/synthetic.py``; the design is in its docstring).

    The one declaration of its settings: the generator reads them as they are and checks them
    (``fsanet.data.synthetic.check_settings``); all but ``processes`` are recorded in READY.json.

    Args:
        image_size: side of the square images (px, at least 48).
        num_train, num_val: images per split.
        seed, val_seed: the splits' seeds (different).
        min_cue_distance: least Chebyshev distance (px) between a cue and any disc whose class it
            decides; it must exceed the FCN's reach (30 px for the small backbone with 1×1 head convs).
        layout: ``"band"`` (one cue for the whole image: the rule needs only the DC coefficient) or
            ``"cells"`` (``cells`` vertical stripes, each with its own cue: the rule needs ``cells``
            DCT frequencies along the width).
        cells: stripes of the ``cells`` layout (``image_size`` must be a multiple of it).
        position_hint: amplitude (grey levels, 0..128) of a fixed left-to-right ramp added to the green
            channel, so that local features can tell a pixel's column; 0 = none.
        cue_thickness: middle of the cue band's thickness range (px at a 96 px image, scaled with
            ``image_size``); each cue is drawn from ``cue_thickness ± 2``. 12 (10-14 px) is the design.
        processes: worker processes for ``prepare`` (0 = all cores).
    """

    image_size: int = 96
    num_train: int = 2000
    num_val: int = 500
    seed: int = 0
    val_seed: int = 1
    min_cue_distance: int = 36
    layout: str = "band"
    cells: int = 4
    position_hint: int = 0
    cue_thickness: int = 12
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
    # Expected total uncompressed size of the members (bytes), from the dataset's manifest; extraction
    # refuses an archive that holds more than this plus data.extract.size_margin. null = not known.
    unpacked_bytes: Optional[int] = None


@dataclass
class ExtractConfig:
    """Limits on archive extraction (``fsanet.data.archive.safe_extract``) against decompression bombs.

    The limits are checked on the sizes the archive declares, before anything is written; a member
    that produces more bytes than it declares is refused while it is read. Each refusal names the key
    to raise for a genuine archive.
    """

    # Largest expansion (uncompressed / compressed size) of a zip member, and of a whole archive (tar
    # members have no compressed size of their own). Images and PNG labels are ~1:1, JSON and text
    # 5–20:1; decompression bombs reach 1000:1. Checked from ratio_min_bytes uncompressed on, so small
    # very compressible files (lists, empty masks) are never refused.
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1048576  # 1 MiB
    # With data.download[].unpacked_bytes set, an archive may hold at most that total plus this share.
    size_margin: float = 0.05
    # The target's disk must have the uncompressed total plus this share (file-system blocks and
    # metadata) plus min_free_bytes free before extraction starts.
    free_margin: float = 0.05
    min_free_bytes: int = 67108864  # 64 MiB


@dataclass
class DataConfig:
    """Dataset and data pipeline (mmseg 1.x conventions).

    Dataset-specific defaults are the synthetic study set's (``params/data/synthetic.yaml`` switches
    on ``cache`` and off ``photometric_distortion`` for it); pipeline conventions default to mmseg's.
    Scales are mmseg's: ``base_scale`` = ``[L, S]`` (a keep-ratio resize bounds the long edge by L and
    the short edge by S; train draws ``ratio_range`` times it); ``crop_size`` = ``[h, w]``.
    ``num_classes`` must match the dataset's class list (checked by ``build_dataset``). ``cache`` keeps
    decoded images in memory (per process): only for small sets.
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
    extract: ExtractConfig = field(default_factory=ExtractConfig)  # limits on unpacking them


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class Backbone(str, Enum):
    resnet50_v1c = "resnet50_v1c"  # deep stem (mmseg, mmcls weights)
    resnet101_v1c = "resnet101_v1c"
    resnet50 = "resnet50"  # torchvision's 7×7 stem (mmdet, torchvision weights)
    resnet101 = "resnet101"
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

    The defaults are the CPU study model: the small OS8 backbone (39 px receptive field) and a 64-wide
    head whose skeleton convs are 1×1, so a plain FCN head cannot see beyond 39 px and long-range
    context can only come from the attention block. ``params/model/paper_r101.yaml`` holds the paper
    setting (ResNet-101-V1c-D8, 512-wide head with 3×3 convs, ImageNet weights).
    """

    name: str = "fsanet"  # one of fsanet.models.MODELS
    # size of a whole-network model (segformer: b0…b5, afformer: tiny/small/base); null = its smallest.
    # The decode-head models on the shared skeleton take their size from backbone/head_* instead.
    variant: Optional[str] = None
    # stochastic depth of a whole network's transformer blocks; null = its official configs' rate
    # (segformer 0.1, afformer 0.0)
    drop_path: Optional[float] = None
    backbone: Backbone = Backbone.small
    small_channels: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    pretrained: Optional[str] = None  # local file or http(s) URL of backbone weights
    pretrained_sha256: Optional[str] = None
    cache_dir: str = "data/pretrained"  # where downloaded weights are kept
    head_channels: int = 64
    head_kernel: int = 1  # kernel of the head's skeleton convs (3 in the paper)
    # P > 0: a fixed positional code (DCT basis functions 1…P per axis) added to the attention input
    head_position: int = 0
    head_position_scale: float = 1.0  # amplitude of that code
    dropout: float = 0.1
    align_corners: bool = False
    aux: bool = True
    aux_channels: int = 32
    aux_weight: float = 0.4
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # Mask R-CNN settings (model.name=mask_rcnn…) that differ from its defaults: keys of
    # fsanet.models.mask_rcnn.MaskRCNNSettings, checked when the model is built. The defaults are
    # mmdet's mask_rcnn_r50_fpn_1x; on the small CPU backbone the CPU-scale ones (see MaskRCNNNet).
    mask_rcnn: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Training, evaluation, tracking
# --------------------------------------------------------------------------------------------
class LossKind(str, Enum):
    ce = "ce"
    ohem = "ohem"


class OptimizerKind(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(str, Enum):
    poly = "poly"
    step = "step"


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

    max_iters: int = 300
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
    # poly (mmseg) or step (mmdet's 1x: the lr drops by step_gamma at each iteration in `steps`)
    schedule: Schedule = Schedule.poly
    steps: List[int] = field(default_factory=list)
    step_gamma: float = 0.1
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
    scales: List[float] = field(default_factory=lambda: [1.0])  # multi-scale ratios (aug test: 0.5..1.75)
    flip: bool = False
    align_corners: bool = False  # when resizing logits back to the label's size
    eval_band: Optional[List[int]] = None
    device: Device = Device.auto
    threads: int = 1
    limit: int = 0  # evaluate only the first N images (0 = all)
    num_qualitative: int = 4  # rows of the image | truth | prediction grid
    # draw confusion.png and qualitative.png (the CSV and markdown reports are always written)
    figures: bool = True


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


def _leaf_keys(node: Any, prefix: str = "") -> set[str]:
    """Dotted keys of every value in a loaded YAML tree (lists count as values)."""
    if isinstance(node, DictConfig):
        keys: set[str] = set()
        for k in node.keys():
            keys |= _leaf_keys(node._get_node(k), f"{prefix}{k}.")
        return keys
    return {prefix.rstrip(".")}


def _source_of(key: Optional[str], sources: list[tuple[str, set[str]]]) -> Optional[str]:
    """The last source (file or ``command line``) that set ``key`` or one of its parents/children."""
    if not key:
        return None
    for name, keys in reversed(sources):
        if any(k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in keys):
            return name
    return None


# Allowed ranges: key -> (lowest, highest, what the value means). Lists are checked element-wise;
# null (an optional value left unset) is always allowed. ``lowest``/``highest`` are inclusive.
_INF = float("inf")
RANGES: dict[str, tuple[float, float, str]] = {
    "bench.channels": (1, _INF, "channels of the benchmarked maps"),
    "bench.batch": (1, _INF, "batch size"),
    "bench.paper_size": (1, _INF, "map size in pixels"),
    "bench.sweep_sizes": (1, _INF, "map sizes in pixels"),
    "bench.warmup": (0, _INF, "untimed runs"),
    "bench.repeats": (1, _INF, "timed runs"),
    "bench.rounds": (1, _INF, "interleaved rounds"),
    "bench.timeout_s": (0.0, _INF, "seconds"),
    "bench.sweep_timeout_s": (0.0, _INF, "seconds"),
    "bench.memory_budget_gb": (1e-3, _INF, "GiB"),
    "bench.threads": (0, _INF, "torch threads; 0 keeps torch's default"),
    "bench.models.input_size": (1, _INF, "pixels"),
    "bench.models.warmup": (0, _INF, "untimed forwards"),
    "bench.models.repeats": (1, _INF, "timed forwards"),
    "bench.models.rounds": (1, _INF, "interleaved rounds"),
    "bench.models.threads": (0, _INF, "torch threads; 0 keeps torch's default"),
    "data.num_classes": (1, _INF, "classes"),
    "data.base_scale": (1, _INF, "pixels"),
    "data.crop_size": (1, _INF, "pixels"),
    "data.ratio_range": (1e-6, _INF, "scale ratios"),
    "data.cat_max_ratio": (1e-6, 1.0, "largest share of one class in a crop"),
    "data.flip_prob": (0.0, 1.0, "a probability"),
    "data.std": (1e-12, _INF, "per-channel std (divides)"),
    "data.num_workers": (0, _INF, "DataLoader workers"),
    "data.synthetic.image_size": (16, _INF, "pixels"),
    "data.synthetic.num_train": (1, _INF, "images"),
    "data.synthetic.num_val": (1, _INF, "images"),
    "data.synthetic.min_cue_distance": (0, _INF, "pixels"),
    "data.synthetic.cells": (1, _INF, "stripes"),
    "data.synthetic.position_hint": (0, 255, "grey levels"),
    "data.synthetic.cue_thickness": (3, _INF, "pixels at a 96 px image"),
    "data.synthetic.processes": (0, _INF, "processes; 0 = all cores"),
    "data.extract.max_ratio": (1.0, _INF, "uncompressed / compressed size"),
    "data.extract.ratio_min_bytes": (0, _INF, "bytes"),
    "data.extract.size_margin": (0.0, _INF, "share of data.download[].unpacked_bytes"),
    "data.extract.free_margin": (0.0, _INF, "share of the uncompressed size"),
    "data.extract.min_free_bytes": (0, _INF, "bytes"),
    "model.small_channels": (1, _INF, "channels"),
    "model.head_channels": (1, _INF, "channels"),
    "model.head_kernel": (1, _INF, "kernel size"),
    "model.head_position": (0, _INF, "DCT frequencies per axis"),
    "model.head_position_scale": (0.0, _INF, "code amplitude"),
    "model.dropout": (0.0, 0.999, "a dropout probability below 1"),
    "model.drop_path": (0.0, 0.999, "a stochastic depth rate below 1"),
    "model.aux_channels": (1, _INF, "channels"),
    "model.aux_weight": (0.0, _INF, "loss weight"),
    "model.attention.reduction": (1, _INF, "channel reduction factor"),
    "model.attention.recurrence": (1, _INF, "applications of the block"),
    "model.attention.qk_channels": (1, _INF, "channels"),
    "model.attention.isa_key_channels": (1, _INF, "channels"),
    "model.attention.isa_down_factor": (1, _INF, "pooling factor"),
    "model.attention.aff_heads": (1, _INF, "heads"),
    "train.max_iters": (1, _INF, "iterations"),
    "train.batch_size": (1, _INF, "images per step (global)"),
    "train.lr": (1e-12, _INF, "learning rate"),
    "train.momentum": (0.0, 0.999999, "SGD momentum below 1"),
    "train.betas": (0.0, 0.999999, "AdamW betas below 1"),
    "train.weight_decay": (0.0, _INF, "weight decay"),
    "train.warmup_iters": (0, _INF, "iterations"),
    "train.warmup_ratio": (1e-12, 1.0, "share of the learning rate at the start of warm-up"),
    "train.head_lr_mult": (1e-12, _INF, "learning-rate multiplier"),
    "train.lr_power": (0.0, _INF, "poly exponent"),
    "train.min_lr": (0.0, _INF, "learning rate"),
    "train.ohem_thresh": (1e-12, 1.0, "a probability"),
    "train.ohem_min_kept": (0, _INF, "pixels"),
    "train.seed": (0, 2**63 - 1, "a non-negative seed"),
    "train.threads": (0, _INF, "torch threads; 0 keeps torch's default"),
    "train.log_interval": (1, _INF, "iterations"),
    "train.ckpt_interval": (1, _INF, "iterations"),
    "train.keep_ckpts": (0, _INF, "checkpoints; 0 keeps all"),
    "eval.crop_size": (1, _INF, "pixels"),
    "eval.stride": (1, _INF, "pixels"),
    "eval.scales": (1e-6, _INF, "scale ratios"),
    "eval.threads": (0, _INF, "torch threads; 0 keeps torch's default"),
    "eval.limit": (0, _INF, "images; 0 = all"),
    "eval.num_qualitative": (0, _INF, "rows"),
    "tracking.flush_interval": (1, _INF, "iterations"),
    "tracking.retries": (1, _INF, "attempts"),
    "tracking.backoff_s": (0.0, _INF, "seconds"),
    "tracking.http_timeout_s": (1, _INF, "seconds"),
}


def _check_ranges(cfg: DictConfig, sources: list[tuple[str, set[str]]]) -> None:
    for key, (lo, hi, meaning) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        items = list(value) if OmegaConf.is_list(value) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not lo <= item <= hi:
                bound = f"≥ {lo:g}" if hi == _INF else f"between {lo:g} and {hi:g}"
                where = _source_of(key, sources) or "the schema default"
                shown = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
                raise ConfigError(f"{where}: {key}={shown} is out of range: must be {bound} ({meaning})")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested mapping: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``.

    Lists and empty mappings stay values (so an emptied section still shows up as a key).
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_config(
    paths: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    schema: type = Config,
) -> DictConfig:
    """Merge the schema, YAML files and ``key=value`` overrides into one validated config.

    Args:
        paths: YAML files merged in order onto the schema defaults.
        overrides: OmegaConf dotlist entries such as ``bench.repeats=30``; each key at most once.
        schema: the dataclass to validate against.

    Returns:
        A structured ``DictConfig`` (read-only) with every interpolation resolvable and every value
        of :data:`RANGES` in range.

    Raises:
        ConfigError: naming the file (or ``command line``) and the key at fault: an empty or
            non-mapping file, an unknown key, a wrong type, a key given twice on the command line, a
            missing value, a failed interpolation or a value out of range.
    """
    cfg = OmegaConf.structured(schema)
    sources: list[tuple[str, set[str]]] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come from ruamel/pyyaml
            raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections (data:, model:, …), "
                f"not a {type(loaded).__name__.replace('Config', '').lower()}"
            )
        if len(loaded) == 0:
            raise ConfigError(
                f"{path}: the file sets nothing (empty, or comments only); add settings or "
                "leave it off the command line"
            )
        sources.append((str(path), _leaf_keys(loaded)))
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe(err)}") from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"command line: override '{bad[0]}' is not of the form key=value")
        seen: dict[str, str] = {}
        for item in overrides:
            key, _, text = item.partition("=")
            key = key.strip()
            if key in seen:
                raise ConfigError(
                    f"command line: {key} is given twice ({key}={seen[key]} and {key}={text}); "
                    "give each key once"
                )
            seen[key] = text
            try:
                # YAML-typed, as from_dotlist does; interpolations stay unresolved until the end
                value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)[
                    "value"
                ]
                # update() walks list indices (data.download.0.url=...) where a merged dotlist cannot
                OmegaConf.update(cfg, key, value, merge=True)
            except OmegaConfBaseException as err:
                raise ConfigError(f"command line: {item!r}: {_describe(err)}") from None
        sources.append(("command line", set(seen)))
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = _source_of(key, sources) or "config"
        raise ConfigError(f"{where}: interpolation failed: {_describe(err)}") from None
    if missing:
        src = ", ".join(str(p) for p in paths) or "no config file"
        raise ConfigError(
            f"missing value for key '{missing[0]}' (read from {src}); "
            f"set it in a params file or on the command line as {missing[0]}=..."
        )
    _check_ranges(cfg, sources)
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
