"""Study plots under ``results/plots/`` (matplotlib Agg, every file written atomically).

* :func:`ablation_plot`: mIoU against the number of kept DCT coefficients K (log x) for FsaNet retrained
  per band and for the full-band non-local model truncated without retraining; error bars = sample std
  over seeds; horizontal lines = each series' full-band mean. The plotted numbers also go to a CSV
  (``results/plots/ablation_<dataset>.csv`` in the study) for ``dvc plots``.
* :func:`qualitative_grid`: the same validation images through several checkpoints, rows = images,
  columns = image | truth | each method, in the dataset's palette.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fsanet.data.imageio import IGNORE_COLOUR, colorize
from fsanet.io import atomic_path
from fsanet.report.names import dataset_display, method_display
from fsanet.report.summary import ablation_points, band_model, load_summary, select_runs

__all__ = ["ablation_plot", "qualitative_grid"]

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "dataset",
    "series",
    "model",
    "band",
    "K",
    "mIoU_mean",
    "mIoU_std",
    "n",
    "full_mIoU_mean",
    "delta_vs_full",
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def ablation_plot(
    summary_json: str | Path,
    out_png: str | Path,
    out_csv: Optional[str | Path] = None,
    dataset: Optional[str] = None,
    setting: Optional[str] = None,
    retrained_model: Optional[str] = None,
    truncated_model: str = "nonlocal",
    band_mode: str = "dot",
) -> list[Path]:
    """Plot the band ablation of one dataset (and write its data as CSV).

    Args:
        summary_json: ``results/metrics/summary.json``.
        out_png: the figure.
        out_csv: the plotted points (finite K only; the full-band mean is a column), or None.
        dataset: which dataset; default the only one with ablation runs.
        setting: evaluation setting (default: single-scale, see :func:`fsanet.report.summary.select_runs`).
        retrained_model, truncated_model: the two series' model names (default: the band model, and
            non-local).
        band_mode: the FSA kernel of the retrained series (and of a banded truncated model).

    Returns:
        The paths written.
    """
    summary = load_summary(summary_json)
    runs = select_runs(summary, dataset=dataset, setting=setting)
    retrained_model = retrained_model or band_model(runs)
    per_dataset = {}
    for name in sorted({r["dataset"] for r in runs}):
        points = ablation_points(
            [r for r in runs if r["dataset"] == name],
            retrained_model,
            truncated_model,
            retrained_mode=band_mode,
        )
        if points:
            per_dataset[name] = points
    if not per_dataset:
        raise ValueError(
            f"{summary_json}: no band-ablation runs of '{retrained_model}' or '{truncated_model}'"
            + (f" for dataset '{dataset}'" if dataset else "")
        )
    if len(per_dataset) > 1:
        raise ValueError(
            f"{summary_json}: ablation runs for several datasets ({', '.join(per_dataset)}); "
            "choose one with --dataset"
        )
    name, points = next(iter(per_dataset.items()))
    model_of = {"retrained": retrained_model, "truncated": truncated_model}
    ret_name, tr_name = method_display(retrained_model), method_display(truncated_model)
    styles = {
        "retrained": {"label": f"{ret_name}, retrained per band", "color": "tab:blue", "marker": "o"},
        "truncated": {
            "label": f"{tr_name}, trained at full band, truncated at evaluation",
            "color": "tab:orange",
            "marker": "s",
        },
    }
    names = {"retrained": ret_name, "truncated": f"{tr_name} untruncated"}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = []
    finite_ks = [p["K"] for p in points if not math.isinf(p["K"])]
    for series in ("retrained", "truncated"):
        pts = [p for p in points if p["series"] == series]
        full = next((p for p in pts if math.isinf(p["K"])), None)
        finite = [p for p in pts if not math.isinf(p["K"]) and p["mean"] is not None]
        style = styles[series]
        if finite:
            ax.errorbar(
                [p["K"] for p in finite],
                [p["mean"] for p in finite],
                yerr=[p["std"] or 0.0 for p in finite],
                capsize=3,
                linewidth=1.5,
                **style,
            )
        if full is not None and full["mean"] is not None:
            ax.axhline(
                full["mean"],
                color=style["color"],
                linestyle="--",
                linewidth=1,
                label=f"{names[series]} at full band: {full['mean']:.2f} (n={full['n']})",
            )
            if full["std"]:
                ax.axhspan(
                    full["mean"] - full["std"], full["mean"] + full["std"], color=style["color"], alpha=0.1
                )
        for p in pts:
            rows.append(
                {
                    "dataset": name,
                    "series": series,
                    "model": model_of[series],
                    "band": p["label"],
                    "K": None if math.isinf(p["K"]) else int(p["K"]),
                    "mIoU_mean": p["mean"],
                    "mIoU_std": p["std"],
                    "n": p["n"],
                    "full_mIoU_mean": full["mean"] if full else None,
                    "delta_vs_full": p["delta"],
                }
            )
    context = (summary.get("context") or {}).get(name)
    oracle_ax = None
    if context:
        acc = sorted((int(k), v) for k, v in context["accuracy"].items() if v is not None)
        top = max(finite_ks) if finite_ks else max(k * k for k, _ in acc)
        curve = [(k * k, 100.0 * v) for k, v in acc if k * k <= top]
        oracle_ax = ax.twinx()
        oracle_ax.plot(
            [k for k, _ in curve],
            [v for _, v in curve],
            color="tab:green",
            linestyle=":",
            marker=".",
            linewidth=1.2,
            label="oracle: decidable disc pixels after the n×n low-pass (right axis)",
        )
        oracle_ax.set_ylabel("oracle: decidable disc pixels (%)", fontsize=8, color="tab:green")
        oracle_ax.set_ylim(0, 105)
        knee = context.get("knee")
        if knee:
            ax.axvline(knee[0] * knee[1], color="tab:green", linewidth=0.8, alpha=0.6)
            ax.text(
                knee[0] * knee[1],
                ax.get_ylim()[0],
                f" predicted knee {knee[0]}×{knee[1]}",
                fontsize=6,
                color="tab:green",
                va="bottom",
            )
        for k, v in curve:
            rows.append(
                {
                    "dataset": name,
                    "series": "oracle",
                    "model": "",
                    "band": f"{int(math.isqrt(k))}x{int(math.isqrt(k))}",
                    "K": k,
                    "mIoU_mean": v,
                    "mIoU_std": None,
                    "n": None,
                    "full_mIoU_mean": None,
                    "delta_vs_full": None,
                }
            )
    ax.set_xscale("log")
    if finite_ks:
        ticks = sorted(set(finite_ks))
        ax.set_xticks(ticks, [str(int(k)) for k in ticks])
        ax.minorticks_off()
    ax.set_xlabel("K = kept DCT coefficients (log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"Band ablation: {dataset_display(name)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if oracle_ax is not None:
        more = oracle_ax.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=6)
    fig.text(
        0.01,
        0.01,
        "mean ± sample std over seeds; dashed: full-band mean (shaded: ± std)",
        fontsize=6,
        color="gray",
    )
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    paths = [out_png]
    if out_csv is not None:
        finite_rows = [r for r in rows if r["K"] is not None]  # dvc plots needs a numeric x
        lines = [",".join(CSV_COLUMNS)] + [
            ",".join(_csv_value(r[c]) for c in CSV_COLUMNS) for r in finite_rows
        ]
        with atomic_path(out_csv) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        paths.append(Path(out_csv))
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


# --------------------------------------------------------------------------------------------
# Qualitative grid
# --------------------------------------------------------------------------------------------
def _to_rgb(image: Any, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    import torch.nn.functional as F

    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    rgb = image.permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)  # (H, W, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def qualitative_grid(
    checkpoints: Mapping[str, str | Path | tuple[str | Path, Sequence[str]]],
    out_png: str | Path,
    n: int = 4,
    overrides: Sequence[str] = (),
    *,
    build_model: Optional[Callable[..., Any]] = None,
    build_dataset: Optional[Callable[..., Any]] = None,
) -> Path:
    """Run every checkpoint on the first ``n`` validation images and draw them side by side.

    Each checkpoint is evaluated with its stored config plus ``overrides`` (e.g. ``data.root=...``)
    plus its own overrides (e.g. ``eval.eval_band=[0,8,0,8]`` for a truncated column), with its own
    inference settings (mode, scales, flip) on CPU. The images come from the first checkpoint's dataset;
    all checkpoints must share its classes.

    Args:
        checkpoints: column label → ``model.pt``, or → ``(model.pt, [key=value, ...])`` (order kept).
        out_png: the figure.
        n: number of images (rows).
        overrides: ``key=value`` applied to every checkpoint's config.
        build_model, build_dataset: default ``fsanet.models.build_model`` / ``fsanet.data.build_dataset``.
    """
    import torch

    from fsanet.engine.checkpoint import load_checkpoint
    from fsanet.engine.evaluate import apply_eval_band, eval_config
    from fsanet.engine.inference import predict
    from fsanet.models import load_trained_weights

    if not checkpoints:
        raise ValueError("no checkpoints given: pass at least one --checkpoint LABEL=PATH")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if build_model is None:
        from fsanet.models import build_model
    if build_dataset is None:
        from fsanet.data import build_dataset
    paths: dict[str, Path] = {}
    configs = {}
    for label, spec in checkpoints.items():
        path, own = (spec[0], list(spec[1])) if isinstance(spec, tuple) else (spec, [])
        paths[label] = Path(path)
        configs[label] = eval_config(path, (), [*overrides, *own])
    first = next(iter(configs.values()))
    dataset = build_dataset(first.data, first.data.val_split, False, seed=first.train.seed)
    classes = [str(c) for c in dataset.CLASSES]
    count = min(n, len(dataset))
    items = [dataset[i] for i in range(count)]
    preds: dict[str, list[np.ndarray]] = {}
    for label, path in paths.items():
        cfg = configs[label]
        state = load_checkpoint(path)
        if [str(c) for c in state.get("classes", classes)] != classes:
            raise ValueError(
                f"{path}: trained on classes {state.get('classes')}, but the images come from "
                f"dataset '{first.data.name}' with classes {classes}"
            )
        model = build_model(cfg.model, len(classes), pretrained=False)  # weights from the checkpoint
        load_trained_weights(model, state, path)
        model.eval()
        if cfg.eval.eval_band is not None:
            apply_eval_band(model, [int(b) for b in cfg.eval.eval_band])
        ec = cfg.eval
        out = []
        with torch.inference_mode():
            for item in items:
                probs = predict(
                    model,
                    item["image"],
                    tuple(item["label"].shape[-2:]),
                    len(classes),
                    mode=getattr(ec.mode, "value", ec.mode),
                    crop=list(ec.crop_size),
                    stride=list(ec.stride),
                    scales=list(ec.scales),
                    flip=bool(ec.flip),
                    align_corners=bool(ec.align_corners),
                )
                out.append(probs.argmax(0).numpy())  # (H, W)
        preds[label] = out
        log.info("qualitative: %s done (%d images)", label, count)

    palette = np.asarray(dataset.PALETTE, dtype=np.uint8)
    ignore = int(first.data.ignore_index)
    cols = 2 + len(checkpoints)
    plt = _pyplot()
    fig, axes = plt.subplots(count, cols, figsize=(2.4 * cols, 2.4 * count), squeeze=False)
    for r, item in enumerate(items):
        label = item["label"].numpy()
        panels = [
            (_to_rgb(item["image"], label.shape, first.data.mean, first.data.std), str(item.get("name", r))),
            (colorize(label, palette, ignore), "truth"),
        ]
        panels += [(colorize(preds[name][r], palette, ignore), method_display(name)) for name in checkpoints]
        for c, (panel, title) in enumerate(panels):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    # a legend of the classes that appear in the truth or a prediction (all of them for ≤ 40 classes)
    shown = sorted(
        {int(v) for item in items for v in np.unique(item["label"].numpy()) if 0 <= v < len(classes)}
        | {int(v) for p in preds.values() for a in p for v in np.unique(a) if 0 <= v < len(classes)}
    )
    if len(classes) <= 40:
        shown = list(range(len(classes)))
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=palette[k] / 255.0, edgecolor="black", linewidth=0.3, label=classes[k]) for k in shown
    ]
    if any((item["label"].numpy() == ignore).any() for item in items):
        white = np.asarray(IGNORE_COLOUR) / 255.0
        handles.append(Patch(facecolor=white, edgecolor="black", linewidth=0.3, label="ignore"))
    ncol = min(len(handles), max(cols, 4))
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(handles) / ncol), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    log.info("wrote %s", out_png)
    return out_png
