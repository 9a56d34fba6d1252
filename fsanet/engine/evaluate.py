"""``fsanet eval``: score a trained checkpoint with mmseg's inference and metrics, write reports.

The config is the one stored in the checkpoint, with ``--config`` files and ``key=value`` overrides
merged on top (e.g. ``eval.eval_band=[0,8,0,8]`` for band truncation without retraining,
``eval.mode=slide``, ``eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true`` for MS+flip).

Outputs in ``out_dir`` (each written atomically): ``metrics.json``, ``per_class.csv`` and
``per_class.md`` (IoU/Acc per class), ``confusion.csv`` and ``confusion.png`` (rows: truth, columns:
prediction), ``qualitative.png`` (image | truth | prediction in the dataset's palette). The two PNGs
are skipped with ``eval.figures=false``.

:func:`evaluate_bands` scores one checkpoint at several truncation bands in one process, loading the
validation split once: the truncation ablation without a Python start-up per band.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fsanet.config import ConfigError, Device, InferenceMode, load_config, to_container
from fsanet.data.imageio import colorize
from fsanet.engine.band_energy import BandEnergyMeter
from fsanet.engine.checkpoint import load_checkpoint
from fsanet.engine.distributed import resolve_device
from fsanet.engine.evaluate_instances import instance_inference, instance_metrics, write_instance_tables
from fsanet.engine.inference import predict
from fsanet.engine.metrics import SegmentationMetric
from fsanet.engine.train import (
    BuildDataset,
    BuildModel,
    dataset_builder,
    default_run_name,
    describe,
    model_task,
    run_params,
    run_tags,
)
from fsanet.io import atomic_path, read_json, write_json, write_text
from fsanet.models import load_trained_weights
from fsanet.repro import deterministic_mode, seed_everything
from fsanet.tracking import Tracker, check_store, redact_config, sanitize_key

__all__ = [
    "apply_eval_band",
    "default_eval_dir",
    "eval_config",
    "eval_tag",
    "evaluate",
    "evaluate_bands",
    "with_eval_band",
]

log = logging.getLogger(__name__)


def eval_config(
    checkpoint: str | Path, paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()
) -> DictConfig:
    """The checkpoint's stored config with ``paths`` and ``overrides`` merged on top, validated."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(tmp) / "stored_config.yaml"
        stored.write_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
        try:
            return load_config([stored, *paths], overrides)
        except ConfigError as err:
            raise ConfigError(str(err).replace(str(stored), f"{checkpoint} (stored config)")) from None


def eval_tag(cfg: DictConfig) -> str:
    """A name for the evaluation setting that differs whenever the setting does: ``val``,
    ``val_band0-8-0-8``, ``val_slide769x769s513x513_ms0.5-0.75-1-1.25-1.5-1.75_flip`` …"""
    ec = cfg.eval
    parts = [cfg.data.val_split]
    if ec.eval_band is not None:
        parts.append("band" + "-".join(str(int(b)) for b in ec.eval_band))
    if InferenceMode(ec.mode) is InferenceMode.slide:
        crop, stride = (f"{int(a)}x{int(b)}" for a, b in (ec.crop_size, ec.stride))
        parts.append(f"slide{crop}s{stride}")
    if list(ec.scales) != [1.0]:
        parts.append("ms" + "-".join(f"{float(x):g}" for x in ec.scales))
    if ec.flip:
        parts.append("flip")
    if ec.limit:
        parts.append(f"first{ec.limit}")
    return "_".join(parts)


def default_eval_dir(checkpoint: str | Path, cfg: DictConfig) -> Path:
    """``<run dir>/eval/<tag>`` for ``<run dir>/model.pt`` (or ``<run dir>/checkpoints/iter_N.pt``)."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "eval" / eval_tag(cfg)


def apply_eval_band(model: torch.nn.Module, band: Optional[Sequence[int]]) -> int:
    """Set ``eval_band`` on every attention module of ``model``; returns how many there are.

    Raises:
        ValueError: a band is given but the model has no attention module (e.g. ``fcn``).
    """
    modules = model.attention_modules()
    if band is not None and not modules:
        raise ValueError(
            f"eval.eval_band={list(band)}: model '{getattr(model, 'name', type(model).__name__)}' has no "
            "attention modules to truncate"
        )
    for module in modules:
        module.eval_band = None if band is None else list(band)
    return len(modules)


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def _dataset_context(dataset: Any) -> Optional[dict[str, Any]]:
    """The context oracle that ``fsanet data prepare`` recorded for a generated set (None for others)."""
    ready = Path(getattr(dataset, "root", "")) / "READY.json"
    if not ready.is_file():
        return None
    try:
        return read_json(ready).get("context")
    except ValueError:
        return None


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return value


def evaluate(
    cfg: DictConfig,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    build_model: Optional[BuildModel] = None,
    build_dataset: Optional[BuildDataset] = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``cfg.data.val_split`` and write the reports to ``out_dir``.

    Args:
        cfg: the resolved config (usually :func:`eval_config`).
        checkpoint: ``model.pt`` or a training checkpoint.
        out_dir: where the reports go.
        build_model: default ``fsanet.models.build_model``.
        build_dataset: default ``fsanet.data.build_dataset``.

    Returns:
        The content of ``metrics.json`` (percentages; ``None`` for classes without pixels).
    """
    if build_model is None:
        from fsanet.models import build_model
    if build_dataset is None:
        build_dataset = dataset_builder(cfg.model.name)
    ec, out_dir, checkpoint = cfg.eval, Path(out_dir), Path(checkpoint)
    state = load_checkpoint(checkpoint)
    threads_before = torch.get_num_threads()
    if ec.threads > 0:
        torch.set_num_threads(ec.threads)
    try:
        with deterministic_mode(cfg.train.deterministic, cfg.train.warn_only):
            return _evaluate(cfg, state, checkpoint, out_dir, build_model, build_dataset)
    finally:
        torch.set_num_threads(threads_before)


def with_eval_band(cfg: DictConfig, band: Optional[Sequence[int]]) -> DictConfig:
    """A read-only copy of ``cfg`` with ``eval.eval_band`` set to ``band`` (``None``: no truncation)."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    out.eval.eval_band = None if band is None else [int(b) for b in band]
    OmegaConf.set_readonly(out, True)
    return out


def evaluate_bands(
    cfg: DictConfig,
    checkpoint: str | Path,
    runs: Sequence[tuple[Optional[Sequence[int]], str | Path]],
    *,
    build_model: Optional[BuildModel] = None,
    build_dataset: Optional[BuildDataset] = None,
) -> list[dict[str, Any]]:
    """Evaluate ``checkpoint`` once per ``(eval_band, out_dir)`` of ``runs``, in this process.

    Each evaluation is the one :func:`evaluate` does with ``eval.eval_band`` set to that band (``None``:
    no truncation), with its own reports and MLflow run; the validation split is built once and shared.

    Args:
        cfg: the resolved config (usually :func:`eval_config`); its ``eval.eval_band`` is replaced.
        checkpoint: ``model.pt`` or a training checkpoint.
        runs: the bands and the report folder of each.
        build_model: default ``fsanet.models.build_model``.
        build_dataset: default ``fsanet.data.build_dataset``.

    Returns:
        The ``metrics.json`` content of each run, in order.
    """
    if build_dataset is None:
        build_dataset = dataset_builder(cfg.model.name)
    cache: dict[tuple[str, bool], Any] = {}
    base = build_dataset

    def shared_dataset(data_cfg: Any, split: str, train: bool, *, seed: int) -> Any:
        key = (split, train)
        if key not in cache:
            cache[key] = base(data_cfg, split, train, seed=seed)
        return cache[key]

    results = []
    for band, out_dir in runs:
        results.append(
            evaluate(
                with_eval_band(cfg, band),
                checkpoint,
                out_dir,
                build_model=build_model,
                build_dataset=shared_dataset,
            )
        )
    return results


def _evaluate(
    cfg: DictConfig,
    state: dict[str, Any],
    checkpoint: Path,
    out_dir: Path,
    build_model: BuildModel,
    build_dataset: BuildDataset,
) -> dict[str, Any]:
    ec = cfg.eval
    train_run_id = state.get("mlflow_run_id")
    # the run is nested under its training run: the store that run was logged to must still exist
    require_store = f"the training run {train_run_id} of {checkpoint}" if train_run_id else None
    check_store(cfg.tracking, require_store)  # before the slow part
    device = resolve_device(Device(ec.device).value, key="eval.device")
    seed_everything(cfg.train.seed)
    dataset = build_dataset(cfg.data, cfg.data.val_split, False, seed=cfg.train.seed)
    classes = [str(c) for c in dataset.CLASSES]
    if classes != list(state.get("classes", classes)):
        raise ValueError(
            f"{checkpoint}: trained on classes {state['classes']} but dataset '{cfg.data.name}' has {classes}"
        )
    num_classes = len(classes)
    model = build_model(cfg.model, num_classes, pretrained=False)  # the checkpoint holds every weight
    load_trained_weights(model, state, checkpoint)
    model.to(device).eval()
    band = None if ec.eval_band is None else [int(b) for b in ec.eval_band]
    if band is not None:
        count = apply_eval_band(model, band)
        log.info("eval_band %s set on %d attention module(s)", band, count)

    tag = eval_tag(cfg)
    tags = run_tags(cfg, "eval", device, out_dir)
    tags.update(
        {
            "eval_band": str(band),
            "eval.tag": tag,
            "checkpoint": str(checkpoint),
            "train_run_id": str(state.get("mlflow_run_id")),
        }
    )
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    tracker = Tracker(
        cfg.tracking,
        out_dir,
        f"{default_run_name(cfg)}_eval_{tag}",
        tags,
        parent_run_id=train_run_id,
        parent_dir=run_dir,
        require_store=require_store,
    )
    try:
        if model_task(cfg.model.name) == "instances":
            metrics = _evaluate_instances(
                cfg, state, checkpoint, model, dataset, device, out_dir, band, tracker
            )
            tracker.finish("FINISHED")
            return metrics
        # the share of the attention inputs' energy that the band keeps, over this evaluation's images
        with BandEnergyMeter(model.attention_modules() if band is not None else ()) as meter:
            result = _run_inference(cfg, model, dataset, device, classes, out_dir)
        cost = _inference_cost(cfg, model, dataset, device, result.pop("seconds"))
        metrics = {
            "mIoU": result["mIoU"],
            "mAcc": result["mAcc"],
            "aAcc": result["aAcc"],
            "units": "percent",
            "IoU": result["IoU"],
            "Acc": result["Acc"],
            **_run_fields(cfg, state, checkpoint, band),
            "mode": InferenceMode(ec.mode).value,
            "scales": list(ec.scales),
            "flip": bool(ec.flip),
            "num_images": result["num_images"],
            "band_energy_kept": meter.share(),  # None without eval_band
            "mlflow_run_id": tracker.run_id,
            "train_mlflow_run_id": state.get("mlflow_run_id"),
            "attention_mode": _value(cfg.model.attention.mode),
            "context": _dataset_context(dataset),
            "backbone": _value(cfg.model.backbone),
            "pretrained": cfg.model.pretrained,
            "cost": cost,
        }
        metrics = _nan_to_none(metrics)
        write_json(out_dir / "metrics.json", metrics)
        _write_tables(out_dir, classes, result)
        _write_confusion_csv(out_dir, classes, result["confusion"])
        figures = ("confusion.png", "qualitative.png") if ec.figures else ()
        for name in ("confusion.png", "qualitative.png"):
            if name not in figures:  # no stale figure from an earlier evaluation beside the new reports
                (out_dir / name).unlink(missing_ok=True)
        if ec.figures:
            _write_confusion_png(out_dir, classes, result["confusion"])
            _write_qualitative(
                out_dir,
                result["samples"],
                np.asarray(dataset.PALETTE, dtype=np.uint8),
                cfg.data.mean,
                cfg.data.std,
                cfg.data.ignore_index,
            )
        resolved = redact_config(to_container(cfg))
        write_text(out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
        tracker.log_params({**run_params(resolved), "checkpoint": str(checkpoint)})
        scalars = {f"test/{k}": result[k] for k in ("mIoU", "mAcc", "aAcc") if not math.isnan(result[k])}
        for name, value in result["IoU"].items():
            if not math.isnan(value):
                scalars[f"test/IoU/{sanitize_key(name)}"] = value
        scalars.update(
            {f"cost/{k}": v for k, v in cost.items() if isinstance(v, (int, float)) and v is not None}
        )
        if metrics["band_energy_kept"] is not None:
            scalars["test/band_energy_kept"] = metrics["band_energy_kept"]
        tracker.log_metrics(scalars, step=int(state.get("iteration") or 0))
        for name in (
            "config.yaml",
            "metrics.json",
            "per_class.csv",
            "per_class.md",
            "confusion.csv",
            *figures,
        ):
            tracker.log_artifact(out_dir / name, "eval")
        tracker.finish("FINISHED")
    except BaseException as err:
        tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    log.info(
        "%s: mIoU %.2f  mAcc %.2f  aAcc %.2f  (%d images)",
        tag,
        result["mIoU"],
        result["mAcc"],
        result["aAcc"],
        result["num_images"],
    )
    return metrics


def _run_fields(
    cfg: DictConfig, state: dict[str, Any], checkpoint: Path, band: Optional[list[int]]
) -> dict[str, Any]:
    """What every metrics.json says about the evaluated run: data, model, band, seed, checkpoint."""
    info = describe(cfg)
    return {
        "dataset": info["dataset"],
        "split": cfg.data.val_split,
        "model": info["model"],
        "band": info["band"],
        "eval_band": band,
        "seed": info["seed"],
        "checkpoint": str(checkpoint),
        "iteration": state.get("iteration"),
    }


def _evaluate_instances(
    cfg: DictConfig,
    state: dict[str, Any],
    checkpoint: Path,
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device,
    out_dir: Path,
    band: Optional[list[int]],
    tracker: Tracker,
) -> dict[str, Any]:
    """A detector's evaluation (COCO box and mask AP): metrics.json, per_class.*, config.yaml, MLflow."""
    with BandEnergyMeter(model.attention_modules() if band is not None else ()) as meter:
        result = instance_inference(cfg, model, dataset, device)
    scores = instance_metrics(cfg, dataset, result)
    cost = _inference_cost(cfg, model, dataset, device, result["seconds"])
    metrics = _nan_to_none(
        {
            "task": "instances",
            **scores,
            "units": "percent",
            **_run_fields(cfg, state, checkpoint, band),
            "num_images": result["num_images"],
            "num_detections": len(result["detections"]),
            "band_energy_kept": meter.share(),  # None without eval_band
            "mlflow_run_id": tracker.run_id,
            "train_mlflow_run_id": state.get("mlflow_run_id"),
            "attention_mode": _value(cfg.model.attention.mode),
            "backbone": _value(cfg.model.backbone),
            "pretrained": cfg.model.pretrained,
            "cost": cost,
        }
    )
    write_json(out_dir / "metrics.json", metrics)
    write_instance_tables(out_dir, [str(c) for c in dataset.CLASSES], metrics)
    resolved = redact_config(to_container(cfg))
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    tracker.log_params({**run_params(resolved), "checkpoint": str(checkpoint)})
    scalars: dict[str, float] = {}
    for kind in ("box", "mask"):
        for key, value in metrics[kind].items():
            if key == "per_class":
                scalars.update(
                    {f"test/{kind}_AP/{sanitize_key(c)}": v for c, v in value.items() if v is not None}
                )
            elif value is not None:
                scalars[f"test/{kind}_{key}"] = value
        if metrics[f"context_{kind}_AP"] is not None:
            scalars[f"test/context_{kind}_AP"] = metrics[f"context_{kind}_AP"]
    scalars.update({f"cost/{k}": v for k, v in cost.items() if isinstance(v, (int, float)) and v is not None})
    if metrics["band_energy_kept"] is not None:
        scalars["test/band_energy_kept"] = metrics["band_energy_kept"]
    tracker.log_metrics(scalars, step=int(state.get("iteration") or 0))
    for name in ("config.yaml", "metrics.json", "per_class.csv", "per_class.md"):
        tracker.log_artifact(out_dir / name, "eval")
    log.info(
        "%s: box AP %.2f  mask AP %.2f  (%d images, %d detections)",
        eval_tag(cfg),
        metrics["box_AP"] or 0.0,
        metrics["mask_AP"] or 0.0,
        result["num_images"],
        len(result["detections"]),
    )
    return metrics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inference_cost(
    cfg: DictConfig, model: torch.nn.Module, dataset: Any, device: torch.device, seconds: Sequence[float]
) -> dict[str, Any]:
    """The model's params, GFLOPs of one forward (the first val image, or one slide window) and the
    evaluation's own per-image latency: median wall time of the whole inference of an image (all
    scales, flips and windows), measured in the loop above, and fps = 1 / that median."""
    from torch.utils.flop_counter import FlopCounterMode

    params = int(sum(p.numel() for p in model.parameters()))
    flops, size = None, None
    if len(dataset):
        image = dataset[0]["image"]
        h, w = image.shape[-2:]
        if InferenceMode(cfg.eval.mode) is InferenceMode.slide:
            h, w = min(h, int(cfg.eval.crop_size[0])), min(w, int(cfg.eval.crop_size[1]))
        size = [int(h), int(w)]
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(image[None, :, :h, :w].to(device))
        flops = int(counter.get_total_flops())
    median = statistics.median(seconds) * 1e3 if seconds else None
    return {
        "params_M": params / 1e6,
        "gflops": None if flops is None else flops / 1e9,
        "flops_input": size,
        "latency_ms": median,
        "fps": None if not median else 1000.0 / median,
        "timed_images": len(seconds),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


@torch.inference_mode()
def _run_inference(
    cfg: DictConfig,
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device,
    classes: list[str],
    out_dir: Path,
) -> dict[str, Any]:
    ec = cfg.eval
    n = len(dataset) if ec.limit <= 0 else min(ec.limit, len(dataset))
    metric = SegmentationMetric(len(classes), cfg.data.ignore_index)
    samples = []
    seconds = []
    for i in tqdm(
        range(n),
        desc=f"eval {cfg.data.val_split}",
        unit="img",
        mininterval=1.0,
        dynamic_ncols=True,
        disable=not cfg.train.progress,
    ):
        item = dataset[i]
        label = item["label"]
        _sync(device)
        t0 = time.perf_counter()
        probs = predict(
            model,
            item["image"].to(device),
            tuple(label.shape[-2:]),
            len(classes),
            mode=InferenceMode(ec.mode).value,
            crop=list(ec.crop_size),
            stride=list(ec.stride),
            scales=list(ec.scales),
            flip=bool(ec.flip),
            align_corners=bool(ec.align_corners),
        )
        pred = probs.argmax(0).cpu()  # (H, W) at the label's (original) size
        seconds.append(time.perf_counter() - t0)
        metric.update(pred, label)
        if len(samples) < ec.num_qualitative:
            samples.append((item["image"].cpu(), label.cpu(), pred, str(item.get("name", i))))
    result = metric.compute(classes)
    result["confusion"] = metric.cm
    result["samples"] = samples
    result["num_images"] = n
    result["seconds"] = seconds
    return result


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _write_tables(out_dir: Path, classes: list[str], result: dict[str, Any]) -> None:
    rows = [
        (c, result["IoU"][c], result["Acc"][c], result["area_label"][c], result["area_pred"][c])
        for c in classes
    ]
    csv = ["class,IoU,Acc,label_pixels,pred_pixels"]
    csv += [
        f"{_csv_cell(c)},{'' if math.isnan(i) else repr(i)},{'' if math.isnan(a) else repr(a)},{lp},{pp}"
        for c, i, a, lp, pp in rows
    ]
    write_text(out_dir / "per_class.csv", "\n".join(csv) + "\n")
    md = ["| class | IoU (%) | Acc (%) | label pixels | predicted pixels |", "|---|---:|---:|---:|---:|"]
    md += [f"| {c} | {_fmt(i)} | {_fmt(a)} | {lp} | {pp} |" for c, i, a, lp, pp in rows]
    md.append(f"| **mean** | **{_fmt(result['mIoU'])}** | **{_fmt(result['mAcc'])}** | | |")
    md.append("")
    md.append(
        f"aAcc {_fmt(result['aAcc'])} %. Means are NaN-means over classes with pixels in the labels or "
        "the predictions (mmseg)."
    )
    write_text(out_dir / "per_class.md", "\n".join(md) + "\n")


def _csv_cell(text: str) -> str:
    return f'"{text}"' if any(ch in text for ch in ',"\n') else text


def _write_confusion_csv(out_dir: Path, classes: list[str], cm: torch.Tensor) -> None:
    lines = ["true\\pred," + ",".join(_csv_cell(c) for c in classes)]
    lines += [_csv_cell(c) + "," + ",".join(str(int(v)) for v in row) for c, row in zip(classes, cm.tolist())]
    write_text(out_dir / "confusion.csv", "\n".join(lines) + "\n")


def _write_confusion_png(out_dir: Path, classes: list[str], cm: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = cm.double()
    norm = (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy()  # each true class's row sums to 1
    k = len(classes)
    size = min(max(4.0, 0.35 * k + 2), 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    with atomic_path(out_dir / "confusion.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _write_qualitative(
    out_dir: Path,
    samples: list,
    palette: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    rows = max(len(samples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for r, (image, label, pred, name) in enumerate(samples):
        if tuple(image.shape[-2:]) != tuple(label.shape):
            image = F.interpolate(
                image[None].float(), size=tuple(label.shape), mode="bilinear", align_corners=False
            )[0]
        rgb = image.permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
        panels = (
            np.clip(rgb, 0, 255).astype(np.uint8),
            colorize(label.numpy(), palette, ignore_index),
            colorize(pred.numpy(), palette, ignore_index),
        )
        for c, (panel, title) in enumerate(zip(panels, ("image", "truth", "prediction"))):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_title(f"{name}: {title}" if c == 0 else title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_dir / "qualitative.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
