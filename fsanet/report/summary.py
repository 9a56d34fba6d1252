"""``results/metrics/summary.json``: one record per evaluation, built from the ``metrics.json`` files.

The study's tables and plots read this file (never MLflow). Each record says what was evaluated::

    {"dataset": "synthetic", "model": "fsanet", "band": [0, 5, 0, 5], "eval_band": null, "seed": 0,
     "retrained": true, "mIoU": 71.2, "mAcc": ..., "aAcc": ..., "mlflow_run_id": "...", ...}

* ``band``: the DCT band the model was trained with; null for the full spectrum, and null for models
  whose decode head has no band option (everything but :func:`band_models`), whatever their config says.
* ``eval_band``: the band applied at evaluation time (truncation without retraining), or null.
* ``retrained``: true unless ``eval_band`` is set: a truncated row is a full-band model cut down
  after training, not a model trained at that band.
* ``setting``: ``<split>/<mode>/<ss|ms>[+flip]``, so single-scale and multi-scale evaluations of the same
  checkpoint stay apart.

The top level carries provenance (git SHA, a hash over the runs' resolved configs, the inputs' SHA-256,
how many files) and ``aggregate``: mIoU mean/std/n per group, a flat view for ``dvc metrics``.
Records are sorted, and nothing time-dependent is written, so the same inputs give the same bytes.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from fsanet.band import BandError, band_label, band_size, is_full, stored_band
from fsanet.config import config_hash
from fsanet.io import read_json, write_json

__all__ = [
    "band_model",
    "band_models",
    "baseline_models",
    "method_module",
    "headline_metrics",
    "SummaryError",
    "ablation_points",
    "band_label",
    "band_size",
    "build_summary",
    "expand_inputs",
    "load_summary",
    "mean_std",
    "normalize_band",
    "read_metrics",
    "select_runs",
    "write_summary",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REQUIRED_KEYS = ("mIoU", "mAcc", "aAcc", "dataset", "model", "band", "eval_band", "seed")
RUN_KEYS = (
    "dataset",
    "model",
    "mode",
    "band",
    "eval_band",
    "seed",
    "retrained",
    "context_band",
    "mIoU",
    "mAcc",
    "aAcc",
    "mlflow_run_id",
)
_GLOB_CHARS = set("*?[")


class SummaryError(ValueError):
    """A metrics or summary file is missing a key or holds a bad value; the message names the file."""


# --------------------------------------------------------------------------------------------
# Methods: what the reports need to know about each model, read from its head's declaration
# (fsanet.models.MODELS; imported on first use, as it loads torch)
# --------------------------------------------------------------------------------------------
def _heads() -> Mapping[str, Any]:
    from fsanet.models import MODELS

    return MODELS


def band_models() -> frozenset[str]:
    """Models trained at a DCT band (their heads read ``model.attention.band``)."""
    from fsanet.models import band_models as declared

    return declared()


def baseline_models() -> frozenset[str]:
    """The attention-free baseline models (``Method.baseline``: the FCN)."""
    return frozenset(name for name, head in _heads().items() if head.baseline)


def band_model(runs: Optional[Iterable[Mapping[str, Any]]] = None) -> str:
    """The model trained at a band: the default retrained series of the band ablation.

    Args:
        runs: the summary's runs; if given, the band model among them that was trained at the most
            bands (the study's band sweep), so that other band models in the same study (Segformer
            + FSA at its default band, say) do not make the choice ambiguous.

    Raises:
        SummaryError: there is none, or several tie (then name one with ``--retrained-model``).
    """
    names = sorted(band_models())
    if runs is not None:
        bands_of: dict[str, set[str]] = {}
        for r in runs:
            if r["model"] in names and r.get("eval_band") is None:
                bands_of.setdefault(r["model"], set()).add(band_label(r["band"]))
        ranked = sorted(bands_of.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        if len(ranked) == 1 or (len(ranked) > 1 and len(ranked[0][1]) > len(ranked[1][1])):
            return ranked[0][0]
        names = [name for name, _ in ranked] or names
    if len(names) != 1:
        raise SummaryError(
            f"expected one model with a band, found {names or 'none'}; name one with --retrained-model"
        )
    return names[0]


def method_module(model: str) -> Optional[str]:
    """Name of the model's (first) attention module in the benchmark, or None without attention."""
    head = _heads().get(model)
    return head.attention_classes[0].name if head is not None and head.attention_classes else None


# --------------------------------------------------------------------------------------------
# Bands
# --------------------------------------------------------------------------------------------
def normalize_band(band: Any, where: str = "band") -> Optional[list[int]]:
    """``None`` or ``[u0, u1, v0, v1]`` from a stored band (:func:`fsanet.band.stored_band`).

    Raises:
        SummaryError: naming ``where`` (the file and key) and what is wrong with the band.
    """
    try:
        return stored_band(band)
    except BandError as err:
        raise SummaryError(f"{where}: {err}") from None


def _band_key(band: Optional[Sequence[int]]) -> tuple:
    return (band_size(band), band_label(band))


# --------------------------------------------------------------------------------------------
# Reading metrics files
# --------------------------------------------------------------------------------------------
def expand_inputs(patterns: Iterable[str | Path]) -> list[Path]:
    """Files named directly or by glob pattern, sorted and without duplicates.

    Raises:
        FileNotFoundError: a named file does not exist, or a pattern matches nothing.
    """
    found: set[Path] = set()
    for pattern in patterns:
        text = str(pattern)
        if Path(text).is_file():
            found.add(Path(text))
        elif _GLOB_CHARS & set(text):
            matches = [Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file()]
            if not matches:
                raise FileNotFoundError(f"{text}: the pattern matches no file")
            found.update(matches)
        else:
            raise FileNotFoundError(f"{text}: metrics file not found (make it with `fsanet eval`)")
    return sorted(found, key=lambda p: p.as_posix())


def _number(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SummaryError(f"{where}: expected a number or null, got {value!r}")
    return None if math.isnan(value) else float(value)


def _run_dir(metrics_path: Path, checkpoint: Optional[str]) -> Optional[Path]:
    """The training folder: beside the checkpoint (``model.pt`` / ``checkpoints/iter_N.pt``), else
    three levels above ``<run>/eval/<tag>/metrics.json``."""
    candidates = []
    if checkpoint:
        ckpt = Path(checkpoint)
        candidates.append(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    candidates.append(metrics_path.parent.parent.parent)
    for folder in candidates:
        if (folder / "run_info.json").is_file():
            return folder
    return None


def _train_info(run_dir: Optional[Path]) -> dict[str, Any]:
    if run_dir is None:
        return {"train_seconds": None, "train_git_sha": None, "train_status": None}
    try:
        info = read_json(run_dir / "run_info.json")
    except (ValueError, FileNotFoundError) as err:
        log.warning("ignoring %s", err)
        return {"train_seconds": None, "train_git_sha": None, "train_status": None}
    env = info.get("environment") or {}
    return {
        "train_seconds": info.get("train_seconds"),
        "train_git_sha": env.get("git_sha"),
        "train_status": info.get("status"),
    }


def _config_hash_of(metrics_path: Path) -> Optional[str]:
    """Hash of the resolved config ``fsanet eval`` wrote beside the metrics (None when absent)."""
    path = metrics_path.parent / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SummaryError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return config_hash(data if isinstance(data, dict) else {"value": data})


def _setting(split: str, mode: str, scales: Sequence[float], flip: bool) -> str:
    ss = "ss" if list(scales) == [1.0] else "ms"
    return f"{split}/{mode}/{ss}{'+flip' if flip else ''}"


def read_metrics(path: str | Path) -> dict[str, Any]:
    """One summary record from an ``fsanet eval`` ``metrics.json``.

    Raises:
        FileNotFoundError: the file is missing.
        SummaryError: not JSON, not an object, a missing key or a bad value (the message names file and key).
    """
    path = Path(path)
    try:
        m = read_json(path)
    except ValueError as err:
        raise SummaryError(str(err)) from None
    if not isinstance(m, dict):
        raise SummaryError(f"{path}: expected a JSON object written by `fsanet eval`, got {type(m).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise SummaryError(
            f"{path}: missing key(s) {', '.join(missing)}; is this an `fsanet eval` metrics.json?"
        )
    for key in ("dataset", "model"):
        if not isinstance(m[key], str) or not m[key]:
            raise SummaryError(f"{path}: key '{key}' must be a non-empty string, got {m[key]!r}")
    if isinstance(m["seed"], bool) or not isinstance(m["seed"], int):
        raise SummaryError(f"{path}: key 'seed' must be an integer, got {m['seed']!r}")
    band = normalize_band(m["band"], f"{path}: key 'band'")
    eval_band = normalize_band(m["eval_band"], f"{path}: key 'eval_band'")
    attention_mode = m.get("attention_mode")
    if m["model"] not in band_models():
        band = None  # the head has no band option: the config value is meaningless
        attention_mode = None  # nor an FSA mode
    scores = {k: _number(m[k], f"{path}: key '{k}'") for k in ("mIoU", "mAcc", "aAcc")}
    if scores["mIoU"] is None:
        log.warning("%s: mIoU is null (no labelled pixels?)", path)
    iou = m.get("IoU")
    if iou is not None and not isinstance(iou, (dict, list)):
        raise SummaryError(
            f"{path}: key 'IoU' must map class names to values (or list them), got {type(iou).__name__}"
        )
    if isinstance(iou, dict):
        iou = {str(c): _number(v, f"{path}: key 'IoU.{c}'") for c, v in iou.items()}
    elif isinstance(iou, list):
        iou = [_number(v, f"{path}: key 'IoU[{i}]'") for i, v in enumerate(iou)]
    split = str(m.get("split", "val"))
    inference = str(m.get("mode", "whole"))
    scales = m.get("scales", [1.0]) or [1.0]
    flip = bool(m.get("flip", False))
    checkpoint = m.get("checkpoint")
    record = {
        "dataset": m["dataset"],
        "model": m["model"],
        "band": band,
        "eval_band": eval_band,
        "seed": m["seed"],
        "retrained": eval_band is None,
        **scores,
        "mlflow_run_id": m.get("mlflow_run_id"),
        "train_mlflow_run_id": m.get("train_mlflow_run_id"),
        "mode": attention_mode,
        "context_band": (m.get("context") or {}).get("knee"),
        "backbone": m.get("backbone"),
        "split": split,
        "inference": inference,
        "scales": [float(s) for s in scales],
        "flip": flip,
        "setting": _setting(split, inference, scales, flip),
        "num_images": m.get("num_images"),
        "band_energy_kept": _number(m.get("band_energy_kept"), f"{path}: key 'band_energy_kept'"),
        "iteration": m.get("iteration"),
        "checkpoint": checkpoint,
        "metrics_file": path.as_posix(),
        "config_hash": _config_hash_of(path),
        **_train_info(_run_dir(path, checkpoint)),
        "IoU": iou,
    }
    return record


def _record_key(r: Mapping[str, Any]) -> tuple:
    eb = r["eval_band"]
    return (
        r["dataset"],
        r["model"],
        str(r.get("mode")),
        _band_key(r["band"]),
        eb is not None,
        _band_key(eb),
        r["seed"],
        r["setting"],
        r["metrics_file"],
    )


def _group_name(r: Mapping[str, Any]) -> str:
    trunc = "none" if r["eval_band"] is None else band_label(r["eval_band"])
    mode = f"/mode={r['mode']}" if r.get("mode") else ""
    return f"{r['dataset']}/{r['model']}{mode}/band={band_label(r['band'])}/eval_band={trunc}/{r['setting']}"


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    """Mean, sample standard deviation (ddof=1; None for one value) and count of the non-null values."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def build_summary(files: Sequence[str | Path]) -> dict[str, Any]:
    """The summary of ``files`` (``metrics.json`` paths): records, aggregate and provenance."""
    from fsanet.provenance import git_info

    paths = sorted({Path(f) for f in files}, key=lambda p: p.as_posix())
    if not paths:
        raise SummaryError("no metrics files given: pass --metrics FILE... (or glob patterns)")
    runs = sorted((read_metrics(p) for p in paths), key=_record_key)
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    groups: dict[str, list[Optional[float]]] = {}
    for r in runs:
        groups.setdefault(_group_name(r), []).append(r["mIoU"])
    aggregate = {}
    for name, values in groups.items():
        mean, std, n = mean_std(values)
        aggregate[name] = {"mIoU_mean": mean, "mIoU_std": std, "n": n}
    git = git_info()
    provenance = {
        "git_sha": git["git_sha"],
        "git_dirty": git["git_dirty"],
        "config_hash": config_hash({"run_configs": [r["config_hash"] for r in runs]}),
        "inputs_sha256": digest.hexdigest(),
        "created_from": len(paths),
        "train_git_shas": sorted({r["train_git_sha"] for r in runs if r["train_git_sha"]}),
        "runs_without_config": sum(r["config_hash"] is None for r in runs),
    }
    context: dict[str, Any] = {}
    for p in paths:
        ctx = read_json(p).get("context")
        if ctx:
            context.setdefault(read_json(p)["dataset"], ctx)
    return {
        "schema": SCHEMA_VERSION,
        "provenance": provenance,
        "runs": runs,
        "aggregate": aggregate,
        "context": context,
    }


def write_summary(files: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Build the summary of ``files`` (paths or glob patterns) and write it atomically to ``out``."""
    summary = build_summary(expand_inputs(files))
    write_json(out, summary)
    log.info("wrote %s (%d evaluations)", out, len(summary["runs"]))
    return summary


# --------------------------------------------------------------------------------------------
# Reading it back (tables, plots)
# --------------------------------------------------------------------------------------------
def load_summary(path: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` and check its schema.

    Raises:
        FileNotFoundError / SummaryError: naming the file and what is wrong with it.
    """
    try:
        data = read_json(path)
    except ValueError as err:
        raise SummaryError(str(err)) from None
    if not isinstance(data, dict) or "runs" not in data or "provenance" not in data:
        raise SummaryError(
            f"{path}: not a study summary (expected keys 'runs' and 'provenance'); "
            "make it with `fsanet tables summary --metrics ... --out PATH`"
        )
    if data.get("schema") != SCHEMA_VERSION:
        raise SummaryError(
            f"{path}: summary schema {data.get('schema')!r}, expected {SCHEMA_VERSION}; rebuild it"
        )
    for i, r in enumerate(data["runs"]):
        missing = [k for k in (*RUN_KEYS, "setting") if k not in r]
        if missing:
            raise SummaryError(f"{path}: runs[{i}] lacks key(s) {', '.join(missing)}; rebuild the summary")
    return data


def select_runs(
    summary: Mapping[str, Any], dataset: Optional[str] = None, setting: Optional[str] = None
) -> list[dict[str, Any]]:
    """The records of one evaluation setting, optionally of one dataset.

    Args:
        summary: a loaded summary.
        dataset: keep only this dataset.
        setting: e.g. ``val/slide/ms+flip``; None keeps the single-scale, no-flip evaluations.

    Raises:
        SummaryError: two evaluations of the same run in the same setting (named), or nothing left.
    """
    runs = [r for r in summary["runs"] if dataset is None or r["dataset"] == dataset]
    if setting is None:
        runs = [r for r in runs if r["setting"].split("/")[-1] == "ss"]
    else:
        runs = [r for r in runs if r["setting"] == setting]
    seen: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        key = (
            r["dataset"],
            r["model"],
            r.get("mode"),
            band_label(r["band"]),
            band_label(r["eval_band"]) if r["eval_band"] else None,
            r["seed"],
            r["setting"],
        )
        if key in seen:
            raise SummaryError(
                f"two evaluations of the same run in setting {r['setting']}: {seen[key].get('metrics_file')} "
                f"and {r.get('metrics_file')}; pass only one of them (or choose a setting)"
            )
        seen[key] = r
    if not runs:
        settings = sorted({r["setting"] for r in summary["runs"]})
        raise SummaryError(
            f"no evaluations for dataset={dataset or 'any'} setting={setting or '<single-scale>'}; "
            f"the summary has settings {settings} and datasets "
            f"{sorted({r['dataset'] for r in summary['runs']})}"
        )
    return runs


def ablation_points(
    runs: Sequence[Mapping[str, Any]],
    retrained_model: Optional[str] = None,
    truncated_model: str = "nonlocal",
    retrained_mode: Optional[str] = "dot",
) -> list[dict[str, Any]]:
    """The band ablation (T2 and its plot) of one dataset's records.

    Two series: ``retrained``: ``retrained_model`` (default: :func:`band_model`) trained at each band
    (no eval-time truncation);
    ``truncated``: ``truncated_model`` trained once at the full band and evaluated at each ``eval_band``
    (its ``full`` point is the untruncated evaluation). The two may be one model: FsaNet trained at each
    band, and FsaNet trained at the full band then truncated; its untruncated full-band runs are then the
    ``full`` point of both series. With ``retrained_mode`` set, only runs of that attention mode count,
    in the retrained series and for a banded truncated model (runs without a recorded mode count as any
    mode).

    Each point: ``series``, ``band``, ``label``, ``K`` (coefficients; inf = full), ``mean``, ``std``, ``n``,
    ``seeds``, ``run_ids``, ``delta`` (mean minus the series' full-band mean; None without a full point),
    ``energy_kept`` / ``_min`` / ``_max`` (over seeds, the share of the attention inputs' energy that the
    eval band kept: :mod:`fsanet.engine.band_energy`; None where no run recorded it).
    """
    retrained_model = retrained_model or band_model(runs)
    banded = band_models()
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    bands: dict[tuple[str, str], Optional[list[int]]] = {}
    for r in runs:
        in_mode = not retrained_mode or r.get("mode") in (None, retrained_mode)
        memberships = []
        if r["model"] == retrained_model and r["eval_band"] is None and in_mode:
            memberships.append(("retrained", r["band"]))
        # a banded model (FsaNet) is truncated from its full-band runs of the band mode; its untruncated
        # full-band run is then the full point of both series
        if r["model"] == truncated_model and (r["model"] not in banded or (is_full(r["band"]) and in_mode)):
            memberships.append(("truncated", r["eval_band"]))
        for series, band in memberships:
            key = (series, band_label(band))
            groups.setdefault(key, []).append(r)
            bands[key] = band
    points = []
    for (series, label), rs in groups.items():
        mean, std, n = mean_std(r["mIoU"] for r in rs)
        band = bands[(series, label)]
        values = [r["mIoU"] for r in rs if r["mIoU"] is not None]
        energy = [r["band_energy_kept"] for r in rs if r.get("band_energy_kept") is not None]
        points.append(
            {
                "series": series,
                "band": band,
                "label": label,
                "K": band_size(band),
                "mean": mean,
                "std": std,
                "n": n,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "values": [r["mIoU"] for r in sorted(rs, key=lambda r: r["seed"])],
                "seeds": sorted(r["seed"] for r in rs),
                "run_ids": sorted(str(r["mlflow_run_id"]) for r in rs if r.get("mlflow_run_id")),
                # share of the attention inputs' energy the eval band kept (truncated points), over seeds
                "energy_kept": sum(energy) / len(energy) if energy else None,
                "energy_kept_min": min(energy) if energy else None,
                "energy_kept_max": max(energy) if energy else None,
            }
        )
    full = {p["series"]: p["mean"] for p in points if p["label"] == "full"}
    for p in points:
        ref = full.get(p["series"])
        p["delta"] = None if ref is None or p["mean"] is None else p["mean"] - ref
    points.sort(key=lambda p: (p["series"] != "retrained", p["K"], p["label"]))
    return points


def headline_metrics(
    summary: Mapping[str, Any], findings: Optional[Mapping[str, Any]] = None
) -> dict[str, Any]:
    """The study's numbers as a small nested mapping, for ``dvc metrics`` / ``dvc exp show``.

    ``{dataset: {"retrained": {row: stats}, "truncated": {row: stats}, "findings": {verdict: count}}}`` where
    a row is ``model[_mode][_band]`` (``nonlocal``, ``fsanet_dot_5x5``) or, truncated, ``model_eval<band>``,
    and stats are ``mIoU_mean``, ``mIoU_std``, ``mIoU_min``, ``mIoU_max`` and ``n`` over seeds, on the
    single-scale evaluations.

    Args:
        summary: a loaded summary.
        findings: the content of ``findings.json`` (``fsanet tables findings --json``), if any.
    """
    groups: dict[tuple[str, str, str], list[float]] = {}
    banded = band_models()
    for r in select_runs(summary):
        if r["mIoU"] is None:
            continue
        row = r["model"] + (f"_{r['mode']}" if r.get("mode") else "")
        if r["model"] in banded:
            row += f"_{band_label(r['band'])}"
        kind = "retrained" if r["eval_band"] is None else "truncated"
        if kind == "truncated":
            row += f"_eval{band_label(r['eval_band'])}"
        groups.setdefault((r["dataset"], kind, row), []).append(float(r["mIoU"]))
    out: dict[str, Any] = {}
    for (dataset, kind, row), values in sorted(groups.items()):
        mean, std, n = mean_std(values)
        out.setdefault(dataset, {}).setdefault(kind, {})[row] = {
            "mIoU_mean": mean,
            "mIoU_std": std,
            "mIoU_min": min(values),
            "mIoU_max": max(values),
            "n": n,
        }
    for f in (findings or {}).get("findings", []):
        counts = out.setdefault(f.get("dataset", "all"), {}).setdefault("findings", {})
        counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
    return out
