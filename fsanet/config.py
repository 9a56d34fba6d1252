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
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List

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
    # A single forward slower than this is recorded as a time-out; larger sizes of that module are skipped.
    timeout_s: float = 10.0
    # Allocations beyond this (CPU: address-space limit; CUDA: caught OOM) are recorded as out-of-memory.
    memory_budget_gb: float = 8.0
    threads: int = 0  # 0 keeps torch's default
    device: Device = Device.auto
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Data (datasets work): `fsanet data ...`, and the `data` section of train/eval.
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    pass


# --------------------------------------------------------------------------------------------
# Model (models work)
# --------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    pass


# --------------------------------------------------------------------------------------------
# Training, evaluation, tracking (engine work)
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    pass


@dataclass
class EvalConfig:
    pass


@dataclass
class TrackingConfig:
    pass


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
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command line: {_describe(err)}") from None
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

