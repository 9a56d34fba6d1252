"""Study tables T2–T4 (Markdown, LaTeX, CSV), rendered from ``results/metrics/summary.json``.

Every table states in its caption where its numbers come from (synthetic data says so) and ends with a
provenance footer (git SHA, config hash, MLflow run ids). Tables are built from result files, never
from MLflow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from fsanet.band import band_label, band_size
from fsanet.io import read_json
from fsanet.report.names import BACKBONE_NAMES, MODE_NAMES, dataset_display, method_display, method_order
from fsanet.report.text import fmt, pm, signed, write_table

log = logging.getLogger(__name__)

__all__ = [
    "ablation_frame",
    "ablation_tables",
    "methods_frame",
    "methods_tables",
    "per_class_frame",
    "per_class_tables",
    "study_tables",
]

#: T4 puts classes in columns up to this many classes, in rows beyond (ADE20K's 150)
MAX_CLASS_COLUMNS = 25


def _dataset_phrase(dataset: str, setting: str) -> str:
    split, mode, scales = (setting.split("/") + ["", "", ""])[:3]
    how = {
        "ss": "single-scale",
        "ms": "multi-scale",
        "ss+flip": "single-scale + flip",
        "ms+flip": "multi-scale + flip",
    }.get(scales, scales)
    return f"{dataset_display(dataset)}, {split} split, {mode}-image {how} inference"


def _method_label(model: str, band: Optional[list[int]], mode: Optional[str] = None) -> str:
    from fsanet.report.summary import band_models

    name = method_display(model)
    if mode:
        name = f"{name} {MODE_NAMES.get(mode, mode)}"
    return f"{name} ({band_label(band, pretty=True)})" if model in band_models() else name


def _method_key(model: str, band: Optional[list[int]]) -> tuple:
    return (method_order(model), model, band_size(band), band_label(band))


def _run_ids(runs: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({str(r["mlflow_run_id"]) for r in runs if r.get("mlflow_run_id")})


def _study_footer(summary: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
    prov = summary["provenance"]
    dirty = " (dirty)" if prov.get("git_dirty") else ""
    train = ", ".join(prov.get("train_git_shas") or []) or "unknown"
    ids = _run_ids(runs)
    return (
        f"Provenance: git {prov.get('git_sha') or 'unknown'}{dirty}; config hash {prov.get('config_hash')} "
        f"(resolved configs of the {prov.get('created_from')} evaluations in the summary; inputs sha256 "
        f"{str(prov.get('inputs_sha256'))[:16]}); training code at git {train}; "
        f"MLflow evaluation runs ({len(ids)}): {', '.join(ids) if ids else 'none recorded'}."
    )


def _datasets(runs: Sequence[dict[str, Any]], wanted: Optional[Sequence[str]]) -> list[str]:
    present = sorted({r["dataset"] for r in runs})
    if wanted:
        missing = [d for d in wanted if d not in present]
        if missing:
            raise ValueError(
                f"dataset(s) {', '.join(missing)} not in the summary (it has {', '.join(present)})"
            )
        return list(wanted)
    return present


# -- T2: band ablation -------------------------------------------------------------------------
def _delta(point: Optional[dict[str, Any]], label: str) -> str:
    if point is None:
        return "–"
    return "ref." if label == "full" else signed(point["delta"])


def _energy(point: Optional[dict[str, Any]], label: str) -> str:
    """The truncated series' kept energy as ``mean (min–max)`` in percent; 100 for the full band."""
    if label == "full" and point is not None:
        return "100"
    if point is None or point.get("energy_kept") is None:
        return "–"
    mean, low, high = (100 * point[k] for k in ("energy_kept", "energy_kept_min", "energy_kept_max"))
    return f"{mean:.1f} ({low:.1f}–{high:.1f})"


def ablation_frame(
    runs: Sequence[dict[str, Any]],
    retrained_model: Optional[str] = None,
    truncated_model: str = "nonlocal",
    band_mode: str = "dot",
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """T2 for one dataset's records: (shown, numeric, runs used). ``band_mode`` is the FSA kernel of the
    retrained series (and of a banded truncated model).

    Rows are the bands of both series sorted by K with ``full`` last; cells are mIoU mean ± std over seeds.
    """
    from fsanet.report.summary import ablation_points, band_model

    retrained_model = retrained_model or band_model(runs)
    points = ablation_points(runs, retrained_model, truncated_model, retrained_mode=band_mode)
    if not points:
        raise ValueError(
            f"no band-ablation runs: need '{retrained_model}' evaluations without eval_band and/or "
            f"'{truncated_model}' evaluations (full band, with and without eval_band)"
        )
    by = {(p["series"], p["label"]): p for p in points}
    labels = sorted(
        {p["label"] for p in points},
        key=lambda lab: next((p["K"], p["label"]) for p in points if p["label"] == lab),
    )
    ret_name, tr_name = method_display(retrained_model), method_display(truncated_model)
    # one model in both series (FsaNet retrained, and FsaNet truncated): name each Δ column by its series
    ret_delta, tr_delta = (
        (f"Δ {ret_name} retrained", f"Δ {tr_name} truncated")
        if ret_name == tr_name
        else (f"Δ {ret_name}", f"Δ {tr_name}")
    )
    measured = any(p.get("energy_kept") is not None for p in points if p["series"] == "truncated")
    energy_col = f"{tr_name} truncated: input energy kept (%)"
    shown, numeric = [], []
    for label in labels:
        ret, tr = by.get(("retrained", label)), by.get(("truncated", label))
        k = (ret or tr)["K"]  # type: ignore[index]
        pretty = label.replace("x", "×")
        shown.append(
            {
                "Band (u×v)": pretty,
                "K": "all" if math.isinf(k) else str(int(k)),
                f"{ret_name} retrained: mIoU (%)": pm(*(ret[x] for x in ("mean", "std", "n", "min", "max")))
                if ret
                else "–",
                ret_delta: _delta(ret, label),
                f"{tr_name} truncated: mIoU (%)": pm(*(tr[x] for x in ("mean", "std", "n", "min", "max")))
                if tr
                else "–",
                tr_delta: _delta(tr, label),
            }
        )
        if measured:
            shown[-1][energy_col] = _energy(tr, label)
        row: dict[str, Any] = {"band": label, "K": None if math.isinf(k) else int(k)}
        for series, p in (("retrained", ret), ("truncated", tr)):
            row.update(
                {
                    f"{series}_mIoU_mean": p and p["mean"],
                    f"{series}_mIoU_std": p and p["std"],
                    f"{series}_mIoU_min": p and p["min"],
                    f"{series}_mIoU_max": p and p["max"],
                    f"{series}_n": p["n"] if p else 0,
                    f"{series}_delta_vs_full": p and p["delta"],
                    f"{series}_seeds": ";".join(map(str, p["seeds"])) if p else "",
                }
            )
        for stat in ("", "_min", "_max"):
            row[f"truncated_energy_kept{stat}"] = tr.get(f"energy_kept{stat}") if tr else None
        row["mlflow_run_ids"] = ";".join(
            sorted(set((ret or {}).get("run_ids", []) + (tr or {}).get("run_ids", [])))
        )
        numeric.append(row)
    used = [
        r
        for r in runs
        if (r["model"] == retrained_model and r["eval_band"] is None and r.get("mode") in (None, band_mode))
        or r["model"] == truncated_model
    ]
    numeric_frame = pd.DataFrame(numeric)
    numeric_frame["K"] = numeric_frame["K"].astype("Int64")  # integers, empty for the full band
    return pd.DataFrame(shown), numeric_frame, used


def ablation_tables(
    summary_json: str | Path,
    out_dir: str | Path,
    datasets: Optional[Sequence[str]] = None,
    setting: Optional[str] = None,
    retrained_model: Optional[str] = None,
    truncated_model: str = "nonlocal",
    band_mode: str = "dot",
) -> list[Path]:
    """Write ``ablation.{md,tex,csv}`` (table T2): one table per dataset that has ablation runs;
    ``band_mode`` is the FSA kernel of the retrained series."""
    from fsanet.report.summary import band_model, load_summary, select_runs

    summary = load_summary(summary_json)
    runs = select_runs(summary, setting=setting)
    retrained_model = retrained_model or band_model(runs)
    blocks, numeric, used = [], [], []
    for dataset in _datasets(runs, datasets):
        ds_runs = [r for r in runs if r["dataset"] == dataset]
        try:
            shown, num, u = ablation_frame(ds_runs, retrained_model, truncated_model, band_mode)
        except ValueError:
            if datasets:
                raise
            continue  # a dataset with method runs only
        ret_name, tr_name = method_display(retrained_model), method_display(truncated_model)
        kernel = "dot-product" if band_mode == "dot" else MODE_NAMES.get(band_mode, band_mode)
        caption = (
            f"Band ablation on {_dataset_phrase(dataset, ds_runs[0]['setting'])}. mIoU (%) as mean ± sample "
            "standard deviation over seeds (n = runs; min–max after the semicolon). K = number of kept DCT "
            "coefficients (the u×v low-frequency "
            f"block of the feature map's spectrum); full = whole spectrum. {ret_name} retrained: a separate "
            "model "
            f"trained at each band, {kernel} mode. {tr_name} truncated: one model trained at full band "
            "whose attention input is "
            "low-passed to the band at evaluation time, without retraining. Δ = mean minus the mean of the "
            "same model's full row (ref.), in mIoU points."
        )
        if "truncated_energy_kept" in num and num["truncated_energy_kept"].notna().any():
            caption += (
                " Input energy kept = the share of the truncated model's attention inputs' energy inside the "
                "band (Σ‖low-pass(x)‖² / Σ‖x‖² over the val images, `fsanet.engine.band_energy`), mean over "
                "seeds (min–max): what the truncated attention still reads, whereas the context oracle says "
                "what the band could carry."
            )
        blocks.append(("Table 2", caption, shown))
        numeric.append(num.assign(dataset=dataset))
        used += u
    if not blocks:
        raise ValueError(
            f"no dataset in {summary_json} has band-ablation runs of '{retrained_model}' "
            f"or '{truncated_model}'"
        )
    frame = pd.concat(numeric, ignore_index=True)
    frame = frame[["dataset"] + [c for c in frame.columns if c != "dataset"]]
    return write_table(
        Path(out_dir), "ablation", blocks, frame, _study_footer(summary, used), "fsanet tables ablation"
    )


# -- T3: method comparison ---------------------------------------------------------------------
def _load_costs(path: Optional[str | Path]) -> Optional[dict[str, Any]]:
    if path is None:
        return None
    report = read_json(path)
    if not isinstance(report, dict) or "rows" not in report or "input_size" not in report:
        raise ValueError(
            f"{path}: not a model cost report (expected keys 'rows' and 'input_size'); "
            "make it with `fsanet bench models --out PATH.json`"
        )
    for i, row in enumerate(report["rows"]):
        missing = [k for k in ("model", "band_label", "params", "flops", "fps") if k not in row]
        if missing:
            raise ValueError(f"{path}: rows[{i}] lacks key(s) {', '.join(missing)}")
    return report


def _method_groups(
    runs: Sequence[dict[str, Any]], bands: Optional[Sequence[str]]
) -> list[tuple[tuple, list]]:
    from fsanet.report.summary import band_models

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r["eval_band"] is not None:
            continue  # truncated without retraining: that is T2's business
        if bands and r["model"] in band_models() and band_label(r["band"]) not in bands:
            continue
        groups.setdefault((r["model"], r.get("mode"), band_label(r["band"])), []).append(r)
    return sorted(
        groups.items(), key=lambda kv: (*_method_key(kv[1][0]["model"], kv[1][0]["band"]), str(kv[0][1]))
    )


def methods_frame(
    runs: Sequence[dict[str, Any]],
    costs: Optional[dict[str, Any]] = None,
    bands: Optional[Sequence[str]] = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """T3 for one dataset's records: (shown, numeric, runs used); costs joined on (model, band)."""
    from fsanet.report.summary import mean_std

    cost_rows = {(c["model"], c["band_label"]): c for c in (costs or {}).get("rows", [])}
    shown, numeric, used = [], [], []
    for (model, mode, label), rs in _method_groups(runs, bands):
        mean, std, n = mean_std(r["mIoU"] for r in rs)
        values = [r["mIoU"] for r in rs if r["mIoU"] is not None]
        low, high = (min(values), max(values)) if values else (None, None)
        # the cost report is made with the profile's model config (FSA in dot mode)
        cost = cost_rows.get((model, label)) if mode in (None, "dot") else None
        if costs is not None and cost is None:
            log.warning("no cost row for %s band %s in the cost report", model, label)
        secs = [r.get("train_seconds") for r in rs]
        train_min = sum(secs) / len(secs) / 60 if secs and all(s is not None for s in secs) else None
        params = cost["params"] / 1e6 if cost else None
        gflops = cost["flops"] / 1e9 if cost else None
        fps = cost["fps"] if cost else None
        shown.append(
            {
                "Method": _method_label(model, rs[0]["band"], mode),
                "mIoU (%)": pm(mean, std, n, low, high),
                "Params (M)": fmt(params),
                "GFLOPs": fmt(gflops),
                "fps (CPU)": fmt(fps),
                "Train time (min)": fmt(train_min),
            }
        )
        numeric.append(
            {
                "method": _method_label(model, rs[0]["band"], mode),
                "model": model,
                "mode": mode,
                "band": label,
                "mIoU_mean": mean,
                "mIoU_std": std,
                "mIoU_min": low,
                "mIoU_max": high,
                "n": n,
                "seeds": ";".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"])),
                "params": cost["params"] if cost else None,
                "flops": cost["flops"] if cost else None,
                "fps": fps,
                "train_minutes_mean": train_min,
                "mlflow_run_ids": ";".join(_run_ids(rs)),
            }
        )
        used += rs
    if not shown:
        raise ValueError("no retrained evaluations (eval_band null) to compare")
    return pd.DataFrame(shown), pd.DataFrame(numeric), used


def methods_tables(
    summary_json: str | Path,
    out_dir: str | Path,
    costs_json: Optional[str | Path] = None,
    datasets: Optional[Sequence[str]] = None,
    setting: Optional[str] = None,
    bands: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Write ``methods_{dataset}.{md,tex,csv}`` (table T3) for each dataset of the summary."""
    from fsanet.report.summary import load_summary, select_runs

    summary = load_summary(summary_json)
    runs = select_runs(summary, setting=setting)
    costs = _load_costs(costs_json)
    paths = []
    for dataset in _datasets(runs, datasets):
        ds_runs = [r for r in runs if r["dataset"] == dataset]
        shown, numeric, used = methods_frame(ds_runs, costs, bands)
        if costs is not None:
            env = costs.get("env", {})
            h, w = costs["input_size"]
            cost_text = (
                f"Params (all weights, auxiliary head included), GFLOPs (torch.utils.flop_counter, 2 per "
                f"multiply-accumulate, one {h}×{w} image) and fps (1 / median latency of "
                f"{costs.get('repeats')} "
                f"forwards at batch 1, timed in {costs.get('rounds', 1)} interleaved round(s) of all models, "
                f"on {env.get('device')} ({env.get('device_name') or 'unknown CPU'}), "
                f"{env.get('threads')} thread(s)) come from `fsanet bench models`, model config hash "
                f"{costs.get('config_hash')}."
            )
        else:
            cost_text = "No cost report was given: params, GFLOPs and fps are left empty."
        backbones = sorted({str(r.get("backbone")) for r in used if r.get("backbone")})
        backbone_text = (
            f"Backbone: {', '.join(BACKBONE_NAMES.get(b, b) for b in backbones)}; "
            if backbones
            else "Backbone: not recorded in these metrics files; "
        )
        caption = (
            f"Methods on {_dataset_phrase(dataset, ds_runs[0]['setting'])}. {backbone_text}mIoU (%) as mean "
            "± sample standard "
            "deviation over seeds (n = runs), every model trained and evaluated with the same protocol; "
            "min–max over seeds after the semicolon; the band of FsaNet is the DCT block it was trained "
            f"with, dot / LinSoftmax its attention kernel. {cost_text} Costs are those of the dot mode; the "
            "LinSoftmax "
            "row has none. Train time = mean wall-clock minutes of the training loop (run_info.json)."
        )
        paths += write_table(
            Path(out_dir),
            f"methods_{dataset}",
            [("Table 3", caption, shown)],
            numeric,
            _study_footer(summary, used),
            "fsanet tables methods",
        )
    return paths


# -- T4: per-class IoU -------------------------------------------------------------------------
def _class_names(dataset: str, runs: Sequence[dict[str, Any]]) -> list[str]:
    try:
        from fsanet.data import DATASETS

        known = [str(c) for c in DATASETS[dataset].CLASSES] if dataset in DATASETS else None
    except ImportError:  # pragma: no cover - the data package is part of fsanet
        known = None
    for r in runs:
        iou = r.get("IoU")
        if isinstance(iou, dict):
            if known is not None and set(iou) != set(known):
                raise ValueError(
                    f"{r.get('metrics_file')}: its IoU classes {sorted(iou)} are not the classes of "
                    f"dataset '{dataset}' ({known})"
                )
            return known or list(iou)
        if isinstance(iou, list):
            if known is None or len(iou) != len(known):
                raise ValueError(
                    f"{r.get('metrics_file')}: IoU is a list of {len(iou)} values but dataset "
                    f"'{dataset}' has no class list of that length"
                )
            return known
    raise ValueError(
        f"no per-class IoU in the summary for dataset '{dataset}'; rebuild it from metrics.json "
        "files that hold 'IoU'"
    )


def _iou_of(record: dict[str, Any], classes: list[str]) -> list[Optional[float]]:
    iou = record.get("IoU")
    if isinstance(iou, dict):
        return [iou.get(c) for c in classes]
    if isinstance(iou, list):
        return list(iou)
    raise ValueError(f"{record.get('metrics_file')}: no per-class IoU")


def per_class_frame(
    runs: Sequence[dict[str, Any]], dataset: str, bands: Optional[Sequence[str]] = None
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]], list[str]]:
    """T4 for one dataset's records: (shown, numeric, runs used, classes); IoU means over seeds."""
    from fsanet.report.summary import mean_std

    groups = _method_groups(runs, bands)
    if not groups:
        raise ValueError(f"no retrained evaluations (eval_band null) for dataset '{dataset}'")
    classes = _class_names(dataset, [r for _, rs in groups for r in rs])
    shown, numeric, used = [], [], []
    for (model, mode, label), rs in groups:
        per_seed = [_iou_of(r, classes) for r in rs]
        means = [mean_std(v[k] for v in per_seed)[0] for k in range(len(classes))]
        miou, _, n = mean_std(r["mIoU"] for r in rs)
        name = _method_label(model, rs[0]["band"], mode)
        shown.append(
            {
                "Method": name,
                **{c: _fmt_iou(v) for c, v in zip(classes, means)},
                "mIoU": _fmt_iou(miou),
                "n": str(n),
            }
        )
        numeric.append(
            {
                "method": name,
                "model": model,
                "band": label,
                **dict(zip(classes, means)),
                "mIoU": miou,
                "n": n,
                "mlflow_run_ids": ";".join(_run_ids(rs)),
            }
        )
        used += rs
    return pd.DataFrame(shown), pd.DataFrame(numeric), used, classes


def _fmt_iou(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1f}"


def per_class_tables(
    summary_json: str | Path,
    out_dir: str | Path,
    datasets: Optional[Sequence[str]] = None,
    setting: Optional[str] = None,
    bands: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Write ``per_class_{dataset}.{md,tex,csv}`` (T4): per-class IoU (%) per method, mean over seeds."""
    from fsanet.report.summary import load_summary, select_runs

    summary = load_summary(summary_json)
    runs = select_runs(summary, setting=setting)
    paths = []
    for dataset in _datasets(runs, datasets):
        ds_runs = [r for r in runs if r["dataset"] == dataset]
        shown, numeric, used, classes = per_class_frame(ds_runs, dataset, bands)
        transposed = len(classes) > MAX_CLASS_COLUMNS
        if transposed:  # classes down the rows, methods across
            shown = shown.set_index("Method").T.reset_index().rename(columns={"index": "Class"})
        caption = (
            f"Per-class IoU (%) on {_dataset_phrase(dataset, ds_runs[0]['setting'])}, mean over seeds "
            "(n = runs; – = the class had no labelled or predicted pixels in any run). mIoU is the mean over "
            "seeds of each run's mIoU (classes absent from labels and predictions left out, mmseg "
            "convention)." + (" Classes are rows, methods columns." if transposed else "")
        )
        paths += write_table(
            Path(out_dir),
            f"per_class_{dataset}",
            [("Table 4", caption, shown)],
            numeric,
            _study_footer(summary, used),
            "fsanet tables per-class",
        )
    return paths


def study_tables(
    summary_json: str | Path,
    out_dir: str | Path,
    costs_json: Optional[str | Path] = None,
    setting: Optional[str] = None,
) -> list[Path]:
    """T2 (when the summary has ablation runs), T3 and T4 for every dataset."""
    paths: list[Path] = []
    try:
        paths += ablation_tables(summary_json, out_dir, setting=setting)
    except ValueError as err:
        log.warning("no ablation table: %s", err)
    paths += methods_tables(summary_json, out_dir, costs_json, setting=setting)
    paths += per_class_tables(summary_json, out_dir, setting=setting)
    return paths
