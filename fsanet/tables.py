"""Result tables (Markdown, LaTeX, CSV) and plots, rendered from the study's result files.

Every table states in its caption where its numbers come from (synthetic data says so) and ends with a
provenance footer (git SHA, config hash). Tables are built from result files, never from MLflow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from fsanet.band import band_label, band_size
from fsanet.config import config_hash
from fsanet.io import atomic_path, read_json, write_text

log = logging.getLogger(__name__)

__all__ = ["efficiency_frame", "efficiency_plot", "efficiency_tables"]

REFERENCE = "nonlocal"
REQUIRED_ROW_KEYS = (
    "module",
    "mode",
    "impl",
    "h",
    "w",
    "channels",
    "band",
    "params",
    "flops",
    "peak_memory_bytes",
    "latency_ms",
    "latency_ms_min",
    "latency_ms_max",
    "status",
)


def _load_bench(path: str | Path) -> dict[str, Any]:
    report = read_json(path)
    if not isinstance(report, dict) or "results" not in report or "env" not in report:
        raise ValueError(
            f"{path}: not a benchmark report (expected keys 'env' and 'results'); "
            "make it with `fsanet bench attention --out PATH.json`"
        )
    for i, row in enumerate(report["results"]):
        missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}: results[{i}] lacks key(s) {', '.join(missing)}")
    return report


def _module_display(module: str) -> str:
    """T1 name of a module, for reports written before rows carried their ``display``."""
    from fsanet.bench.attention import FLOOR_DISPLAY
    from fsanet.models import attention_modules

    if module == "floor":
        return FLOOR_DISPLAY
    cls = attention_modules().get(module)
    return cls.display if cls is not None else module


def _label(row: dict[str, Any]) -> str:
    name = row.get("display") or _module_display(row["module"])
    if row.get("band") is not None:  # a banded module: one row per band, mode and implementation
        return f"{name} {band_label(row['band'], pretty=True)} {row['mode']} {row['impl']}"
    return name


def _pct(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or ref == 0:
        return None
    return 100.0 * (value - ref) / ref


def _x_floor(row: dict[str, Any], floor: Optional[dict[str, Any]]) -> Optional[float]:
    """Latency over the floor: the floor timed in alternation with the row when the report has it
    (``x_floor``, see :mod:`fsanet.bench.attention`), else the size's separate floor row."""
    if row["module"] == "floor":
        return 1.0
    if row.get("x_floor") is not None:
        return row["x_floor"]
    return row["latency_ms"] / floor["latency_ms"] if floor and row["latency_ms"] is not None else None


# Row keys of fsanet.bench.attention: a figure -> (its per-round medians, their [min, max]).
ROUND_KEYS = {
    "latency_ms": ("latency_round_ms", "latency_spread_ms"),
    "x_floor": ("x_floor_round", "x_floor_spread"),
}


def _round_spread(row: dict[str, Any], value: str) -> tuple[Optional[float], Optional[float]]:
    """``(min, max)`` of the per-round medians of ``value`` (a key of :data:`ROUND_KEYS`) in a result
    row; ``(None, None)`` for a failed row, a report without rounds, or a row timed in one round."""
    per_round, spread = (row.get(k) for k in ROUND_KEYS[value])
    if row.get("status") != "ok" or not spread or not per_round or len(per_round) < 2:
        return None, None
    return spread[0], spread[1]


# Columns of efficiency_frame that hold a spread, and the column each one belongs to.
SPREAD_COLUMNS = {
    "Latency (ms)": ("Latency round min (ms)", "Latency round max (ms)"),
    "× floor": ("× floor round min", "× floor round max"),
}


def efficiency_frame(report: dict[str, Any], setting: str = "paper") -> pd.DataFrame:
    """The paper-layout efficiency table: one row per module configuration, reductions against non-local.

    ``Latency (ms)`` and ``× floor`` are the medians over all rounds; the ``… round min``/``… round max``
    columns beside them hold the lowest and highest per-round median (empty with one round).

    Args:
        report: a benchmark report (see :func:`fsanet.bench.attention.run_attention_benchmark`).
        setting: ``"paper"`` or ``"sweep"``.
    """
    rows = [r for r in report["results"] if r.get("setting", "paper") == setting]
    if not rows:
        raise ValueError(f"the benchmark report has no rows for setting '{setting}'")
    ref = next((r for r in rows if r["module"] == REFERENCE and r["status"] == "ok"), None)
    floor = next((r for r in rows if r["module"] == "floor" and r["status"] == "ok"), None)
    if ref is None:
        log.warning("no successful '%s' row: reductions are left empty", REFERENCE)
    out = []
    for r in rows:
        ok = r["status"] == "ok"
        mem = r["peak_memory_bytes"]
        lat_lo, lat_hi = _round_spread(r, "latency_ms")
        x_lo, x_hi = _round_spread(r, "x_floor")
        out.append(
            {
                "Module": _label(r),
                "Input": f"{r.get('batch', 1)}×{r['channels']}×{r['h']}×{r['w']}",
                "Params (M)": r["params"] / 1e6 if r["params"] is not None else None,
                "GFLOPs": r["flops"] / 1e9 if ok and r["flops"] is not None else None,
                "ΔFLOPs (%)": _pct(r["flops"], ref and ref["flops"])
                if ok and r["module"] != "floor"
                else None,
                "Memory (MiB)": mem / 2**20 if ok and mem is not None else None,
                "ΔMemory (%)": _pct(mem, ref and ref["peak_memory_bytes"])
                if ok and r["module"] != "floor"
                else None,
                "Latency (ms)": r["latency_ms"] if ok else None,
                "Latency round min (ms)": lat_lo,
                "Latency round max (ms)": lat_hi,
                "ΔLatency (%)": _pct(r["latency_ms"], ref and ref["latency_ms"])
                if ok and r["module"] != "floor"
                else None,
                "× floor": _x_floor(r, floor) if ok else None,
                "× floor round min": x_lo,
                "× floor round max": x_hi,
                "Status": r["status"],
            }
        )
    return pd.DataFrame(out)


def sweep_frame(report: dict[str, Any], value: str = "latency_ms", spread: bool = False) -> pd.DataFrame:
    """Module configuration × map size, one measured quantity per cell (status shown where it failed).

    Args:
        report: a benchmark report.
        value: the row key shown: ``latency_ms``, ``x_floor`` or ``peak_memory_bytes`` (in MiB).
        spread: for ``latency_ms`` and ``x_floor``, cells become text with the per-round spread beside
            the value, e.g. ``4.70 (4.41–5.30)``.
    """
    rows = [r for r in report["results"] if r.get("setting") == "sweep"]
    if not rows:
        return pd.DataFrame()
    sizes = sorted({r["h"] for r in rows})
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = _label(r)
        cell = r.get(value) if r["status"] == "ok" else r["status"]
        if value == "peak_memory_bytes" and r["status"] == "ok":
            cell = r[value] / 2**20
        if value == "x_floor" and r["status"] == "ok" and r["module"] == "floor":
            cell = 1.0
        if spread and value in ("latency_ms", "x_floor") and r["status"] == "ok" and r.get(value) is not None:
            cell = _with_spread(cell, *_round_spread(r, value))
        table.setdefault(key, {})[f"{r['h']}²"] = cell
    return pd.DataFrame.from_dict(table, orient="index", columns=[f"{s}²" for s in sizes])


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.1f}"
        if abs(x) >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    return str(x)


def _with_spread(value: Any, low: Optional[float], high: Optional[float]) -> str:
    """``value (low–high)``, or the value alone where there is no spread (``None`` or NaN)."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (value, low, high)):
        return _fmt(value)
    return f"{_fmt(value)} ({_fmt(low)}–{_fmt(high)})"


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """The efficiency frame as text, each spread beside its value (``4.70 (4.41–5.30)``) in place of
    its own columns."""
    shown = frame.map(_fmt)
    for col, (lo, hi) in SPREAD_COLUMNS.items():
        shown[col] = [_with_spread(v, a, b) for v, a, b in zip(frame[col], frame[lo], frame[hi])]
    return shown.drop(columns=[c for pair in SPREAD_COLUMNS.values() for c in pair])


def _rounds(report: dict[str, Any]) -> int:
    """Interleaved rounds the report was timed in (1 for reports from before rounds)."""
    rounds = report.get("config", {}).get("rounds")
    return int(rounds) if rounds else 1


def _caption(report: dict[str, Any]) -> str:
    env = report["env"]
    r0 = next(r for r in report["results"] if r.get("setting", "paper") == "paper")
    return (
        f"Module-level efficiency at {r0.get('batch', 1)}×{r0['channels']}×{r0['h']}×{r0['w']} "
        f"(the OS8 feature map of a 769×769 crop), fp32 inference, on {env.get('device')} "
        f"({env.get('device_name') or 'unknown'}; {env.get('threads')} threads; torch {env.get('torch')}). "
        "Inputs are random tensors: no dataset is involved. FLOPs from torch.utils.flop_counter "
        "(2 per multiply-accumulate); memory = peak tensor bytes allocated during one forward, input "
        "excluded; "
        "latency = median of the timed runs. Δ = change against the non-local block. × floor = latency over "
        "the median of torch.add(x, x) timed in alternation with the module (paired floor)."
        + _rounds_caption(report)
    )


def _rounds_caption(report: dict[str, Any]) -> str:
    rounds = _rounds(report)
    if rounds < 2:
        return ""
    return (
        f" The timed runs were split over {rounds} interleaved rounds (in each round every module of the "
        "same size in turn, the order rotating); (a–b) = the lowest and highest per-round median: a "
        "finding whose spread crosses its threshold is unstable."
    )


def _footer(report: dict[str, Any]) -> str:
    env = report["env"]
    sha = env.get("git_sha") or "unknown"
    dirty = " (dirty)" if env.get("git_dirty") else ""
    return (
        f"Provenance: git {sha}{dirty}; bench config hash {config_hash(report.get('config', {}))}; "
        f"fsanet source hash {env.get('fsanet_source_hash')}; MLflow runs: none (benchmark is not a training "
        "run)."
    )


def efficiency_tables(bench_json: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``efficiency.{md,tex,csv}`` (table T1) from a benchmark report."""
    report = _load_bench(bench_json)
    out_dir = Path(out_dir)
    paper = efficiency_frame(report, "paper")
    caption, footer = _caption(report), _footer(report)

    with atomic_path(out_dir / "efficiency.csv") as tmp:
        paper.to_csv(tmp, index=False)

    shown = _shown(paper)
    md = [f"**Table 1.** {caption}", "", shown.to_markdown(index=False), ""]
    lat = sweep_frame(report, "latency_ms", spread=True)
    if not lat.empty:
        md += [
            "**Scaling sweep: latency (ms)** over square maps (same run; `timeout`/`oom`/`skipped` "
            "where a module did not finish).",
            "",
            lat.map(_fmt).to_markdown(),
            "",
        ]
        ratio = sweep_frame(report, "x_floor", spread=True)
        paired = any(r.get("x_floor") is not None for r in report["results"] if r.get("setting") == "sweep")
        if not ratio.empty and paired:
            md += [
                "**Scaling sweep: latency × floor**, each against `torch.add(x, x)` timed in alternation "
                "with it (paired floor).",
                "",
                ratio.map(_fmt).to_markdown(),
                "",
            ]
        mem = sweep_frame(report, "peak_memory_bytes")
        md += ["**Scaling sweep: peak memory (MiB).**", "", mem.map(_fmt).to_markdown(), ""]
    md += [f"_{footer}_", ""]
    write_text(out_dir / "efficiency.md", "\n".join(md))

    latex_body = shown.to_latex(index=False, escape=True, column_format="l" + "r" * (len(shown.columns) - 1))
    tex = "\n".join(
        [
            "% Generated by `fsanet tables efficiency`; do not edit.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{_latex_escape(caption)}}}",
            "\\label{tab:efficiency}",
            "\\resizebox{\\linewidth}{!}{%",
            latex_body.rstrip() + "}",
            f"\\par\\footnotesize {_latex_escape(footer)}",
            "\\end{table}",
            "",
        ]
    )
    write_text(out_dir / "efficiency.tex", tex)
    paths = [out_dir / f"efficiency.{ext}" for ext in ("md", "tex", "csv")]
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("×", "$\\times$"),
        ("Δ", "$\\Delta$"),
        ("²", "$^2$"),
    ):
        text = text.replace(a, b)
    return text


def efficiency_plot(bench_json: str | Path, out_png: str | Path) -> Path:
    """Log-log plot of latency and peak memory against N = H·W for every module configuration of the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = _load_bench(bench_json)
    rows = [r for r in report["results"] if r.get("setting") == "sweep"]
    if not rows:
        raise ValueError(f"{bench_json}: no sweep rows to plot; set bench.sweep_sizes")
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(_label(r), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, rs in series.items():
        ok = sorted((r for r in rs if r["status"] == "ok"), key=lambda r: r["h"] * r["w"])
        failed = sorted((r for r in rs if r["status"] != "ok"), key=lambda r: r["h"] * r["w"])
        if failed:  # every module stays in the legend, with the sizes it did not finish
            first = failed[0]
            label = f"{label} ({first['status']} at N ≥ {first['h'] * first['w']})"
        if not ok:
            axes[0].plot([], [], linestyle="none", marker="x", color="grey", label=label)
            continue
        n = [r["h"] * r["w"] for r in ok]
        style = {"linestyle": "--", "color": "black"} if rs[0]["module"] == "floor" else {"marker": "o"}
        line = axes[0].plot(n, [r["latency_ms"] for r in ok], label=label, **style)[0]
        if rs[0]["module"] != "floor":
            axes[1].plot(n, [r["peak_memory_bytes"] / 2**20 for r in ok], label=label, **style)
        if failed:
            axes[0].plot(
                [failed[0]["h"] * failed[0]["w"]],
                [ok[-1]["latency_ms"]],
                marker="x",
                linestyle="none",
                color=line.get_color(),
            )
    env = report["env"]
    for ax, title in zip(axes, ("latency (ms)", "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N = H·W (tokens)")
        ax.set_ylabel(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Attention modules, C={rows[0]['channels']}, fp32 inference on {env.get('device')} "
        f"({env.get('threads')} threads); random inputs, no dataset",
        fontsize=10,
    )
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out_png


# ============================================================================================
# Study tables T2–T4, rendered from results/metrics/summary.json (see fsanet/summary.py)
# ============================================================================================
__all__ += [
    "ablation_frame",
    "ablation_tables",
    "methods_frame",
    "methods_tables",
    "per_class_frame",
    "per_class_tables",
    "study_tables",
]

#: model name → display name; the order is the row order of T3/T4 (the paper's own method last)
DATASET_NAMES = {
    "synthetic": "synthetic (built-in procedural set, not a benchmark)",
    "cityscapes": "Cityscapes",
    "ade20k": "ADE20K",
    "voc": "PASCAL VOC 2012 (aug)",
    "coco_stuff": "COCO-Stuff",
}
#: T4 puts classes in columns up to this many classes, in rows beyond (ADE20K's 150)
MAX_CLASS_COLUMNS = 25
_TEX = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "×": "$\\times$",
    "Δ": "$\\Delta$",
    "±": "$\\pm$",
    "−": "$-$",
    "–": "--",
    "²": "$^2$",
    "≥": "$\\geq$",
    "≤": "$\\leq$",
}


def _tex(text: Any) -> str:
    """LaTeX-escape a cell or caption in one pass (so inserted commands are not escaped again)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _dataset_phrase(dataset: str, setting: str) -> str:
    split, mode, scales = (setting.split("/") + ["", "", ""])[:3]
    how = {
        "ss": "single-scale",
        "ms": "multi-scale",
        "ss+flip": "single-scale + flip",
        "ms+flip": "multi-scale + flip",
    }.get(scales, scales)
    return f"{DATASET_NAMES.get(dataset, dataset)}, {split} split, {mode}-image {how} inference"


MODE_NAMES = {"dot": "dot", "linsoftmax": "LinSoftmax"}
BACKBONE_NAMES = {
    "small": "the small CPU backbone (output stride 8, 39 px receptive field, `fsanet/models/small.py`)",
    "resnet50_v1c": "ResNet-50-V1c-D8",
    "resnet101_v1c": "ResNet-101-V1c-D8",
}


def _method_label(model: str, band: Optional[list[int]], mode: Optional[str] = None) -> str:
    from fsanet.summary import band_models, method_display

    name = method_display(model)
    if mode:
        name = f"{name} {MODE_NAMES.get(mode, mode)}"
    return f"{name} ({band_label(band, pretty=True)})" if model in band_models() else name


def _method_key(model: str, band: Optional[list[int]]) -> tuple:
    from fsanet.summary import method_order

    return (method_order(model), model, band_size(band), band_label(band))


def _pm(
    mean: Optional[float],
    std: Optional[float],
    n: int,
    low: Optional[float] = None,
    high: Optional[float] = None,
) -> str:
    """``mean ± std (n=3; min–max)``; the range is left out for a single run."""
    if mean is None:
        return "–"
    spread = f" ± {std:.2f}" if std is not None else ""
    extent = f"; {low:.2f}–{high:.2f}" if low is not None and high is not None and n > 1 else ""
    return f"{mean:.2f}{spread} (n={n}{extent})"


def _signed(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}".replace("-", "−")


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


def _write_study_table(
    out_dir: Path,
    stem: str,
    blocks: Sequence[tuple[str, str, pd.DataFrame]],
    numeric: pd.DataFrame,
    footer: str,
    command: str,
) -> list[Path]:
    """``stem.{md,tex,csv}``: Markdown/LaTeX get one captioned table per block, the CSV the numbers."""
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        numeric.to_csv(tmp, index=False)
    md: list[str] = []
    tex = [f"% Generated by `{command}`; do not edit. Needs \\usepackage{{booktabs,graphicx}}."]
    for title, caption, shown in blocks:
        cells = shown.map(_md_cell)
        cells.columns = [_md_cell(c) for c in shown.columns]
        md += [f"**{title}.** {caption}", "", cells.to_markdown(index=False, disable_numparse=True), ""]
        body = shown.map(_tex)
        body.columns = [_tex(c) for c in shown.columns]
        latex = body.to_latex(index=False, escape=False, column_format="l" + "r" * (len(shown.columns) - 1))
        tex += [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{_tex(caption)}}}",
            f"\\label{{tab:{stem}}}",
            "\\resizebox{\\linewidth}{!}{%",
            latex.rstrip() + "}",
            f"\\par\\footnotesize {_tex(footer)}",
            "\\end{table}",
            "",
        ]
    md += [f"_{footer}_", ""]
    write_text(out_dir / f"{stem}.md", "\n".join(md))
    write_text(out_dir / f"{stem}.tex", "\n".join(tex))
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


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
    return "ref." if label == "full" else _signed(point["delta"])


def ablation_frame(
    runs: Sequence[dict[str, Any]], retrained_model: Optional[str] = None, truncated_model: str = "nonlocal"
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """T2 for one dataset's records: (shown, numeric, runs used).

    Rows are the bands of both series sorted by K with ``full`` last; cells are mIoU mean ± std over seeds.
    """
    from fsanet.summary import ablation_points, band_model, method_display

    retrained_model = retrained_model or band_model()
    points = ablation_points(runs, retrained_model, truncated_model)
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
    shown, numeric = [], []
    for label in labels:
        ret, tr = by.get(("retrained", label)), by.get(("truncated", label))
        k = (ret or tr)["K"]  # type: ignore[index]
        pretty = label.replace("x", "×")
        shown.append(
            {
                "Band (u×v)": pretty,
                "K": "all" if math.isinf(k) else str(int(k)),
                f"{ret_name} retrained: mIoU (%)": _pm(*(ret[x] for x in ("mean", "std", "n", "min", "max")))
                if ret
                else "–",
                f"Δ {ret_name}": _delta(ret, label),
                f"{tr_name} truncated: mIoU (%)": _pm(*(tr[x] for x in ("mean", "std", "n", "min", "max")))
                if tr
                else "–",
                f"Δ {tr_name}": _delta(tr, label),
            }
        )
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
        row["mlflow_run_ids"] = ";".join(
            sorted(set((ret or {}).get("run_ids", []) + (tr or {}).get("run_ids", [])))
        )
        numeric.append(row)
    used = [
        r
        for r in runs
        if (r["model"] == retrained_model and r["eval_band"] is None and r.get("mode") in (None, "dot"))
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
) -> list[Path]:
    """Write ``ablation.{md,tex,csv}`` (table T2): one table per dataset that has ablation runs."""
    from fsanet.summary import band_model, load_summary, method_display, select_runs

    retrained_model = retrained_model or band_model()
    summary = load_summary(summary_json)
    runs = select_runs(summary, setting=setting)
    blocks, numeric, used = [], [], []
    for dataset in _datasets(runs, datasets):
        ds_runs = [r for r in runs if r["dataset"] == dataset]
        try:
            shown, num, u = ablation_frame(ds_runs, retrained_model, truncated_model)
        except ValueError:
            if datasets:
                raise
            continue  # a dataset with method runs only
        ret_name, tr_name = method_display(retrained_model), method_display(truncated_model)
        caption = (
            f"Band ablation on {_dataset_phrase(dataset, ds_runs[0]['setting'])}. mIoU (%) as mean ± sample "
            "standard deviation over seeds (n = runs; min–max after the semicolon). K = number of kept DCT "
            "coefficients (the u×v low-frequency "
            f"block of the feature map's spectrum); full = whole spectrum. {ret_name} retrained: a separate "
            "model "
            f"trained at each band, dot-product mode. {tr_name} truncated: one model trained at full band "
            "whose attention input is "
            "low-passed to the band at evaluation time, without retraining. Δ = mean minus the mean of the "
            "same model's full row (ref.), in mIoU points."
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
    return _write_study_table(
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
    from fsanet.summary import band_models

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
    from fsanet.summary import mean_std

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
                "mIoU (%)": _pm(mean, std, n, low, high),
                "Params (M)": _fmt(params),
                "GFLOPs": _fmt(gflops),
                "fps (CPU)": _fmt(fps),
                "Train time (min)": _fmt(train_min),
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
    from fsanet.summary import load_summary, select_runs

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
        paths += _write_study_table(
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
    from fsanet.summary import mean_std

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
    from fsanet.summary import load_summary, select_runs

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
        paths += _write_study_table(
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
