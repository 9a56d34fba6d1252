"""Result tables (Markdown, LaTeX, CSV) and plots, rendered from the study's result files.

Every table states in its caption where its numbers come from (synthetic data says so) and ends with a
provenance footer (git SHA, config hash). Tables are built from result files, never from MLflow.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from fsanet.config import config_hash
from fsanet.io import atomic_path, read_json, write_text

log = logging.getLogger(__name__)

__all__ = ["efficiency_frame", "efficiency_plot", "efficiency_tables"]

REFERENCE = "nonlocal"
DISPLAY = {
    "fsa": "FSA",
    "nonlocal": "Non-local (emb. Gaussian)",
    "danet_pam": "DANet PAM",
    "criss_cross": "CCNet RCCA (R=2)",
    "isa": "ISA (8×8)",
    "linear": "Linear attention",
    "aff": "AFFormer filter",
    "floor": "floor: torch.add(x, x)",
}
REQUIRED_ROW_KEYS = (
    "module", "mode", "impl", "h", "w", "channels", "band", "params", "flops",
    "peak_memory_bytes", "latency_ms", "latency_ms_min", "latency_ms_max", "status",
)


def _load_bench(path: str | Path) -> dict[str, Any]:
    report = read_json(path)
    if not isinstance(report, dict) or "results" not in report or "env" not in report:
        raise ValueError(f"{path}: not a benchmark report (expected keys 'env' and 'results'); "
                         "make it with `fsanet bench attention --out PATH.json`")
    for i, row in enumerate(report["results"]):
        missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}: results[{i}] lacks key(s) {', '.join(missing)}")
    return report


def _label(row: dict[str, Any]) -> str:
    name = DISPLAY.get(row["module"], row["module"])
    if row["module"] == "fsa":
        u0, u1, v0, v1 = row["band"]
        band = f"{u1 - u0}×{v1 - v0}" + ("" if (u0, v0) == (0, 0) else f"@({u0},{v0})")
        return f"{name} {band} {row['mode']} {row['impl']}"
    return name


def _pct(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or ref == 0:
        return None
    return 100.0 * (value - ref) / ref


def efficiency_frame(report: dict[str, Any], setting: str = "paper") -> pd.DataFrame:
    """The paper-layout efficiency table: one row per module configuration, reductions against non-local."""
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
        out.append({
            "Module": _label(r),
            "Input": f"{r.get('batch', 1)}×{r['channels']}×{r['h']}×{r['w']}",
            "Params (M)": r["params"] / 1e6 if r["params"] is not None else None,
            "GFLOPs": r["flops"] / 1e9 if ok and r["flops"] is not None else None,
            "ΔFLOPs (%)": _pct(r["flops"], ref and ref["flops"]) if ok and r["module"] != "floor" else None,
            "Memory (MiB)": mem / 2**20 if ok and mem is not None else None,
            "ΔMemory (%)": _pct(mem, ref and ref["peak_memory_bytes"]) if ok and r["module"] != "floor" else None,
            "Latency (ms)": r["latency_ms"] if ok else None,
            "ΔLatency (%)": _pct(r["latency_ms"], ref and ref["latency_ms"]) if ok and r["module"] != "floor" else None,
            "× floor": (r["latency_ms"] / floor["latency_ms"]) if ok and floor else None,
            "Status": r["status"],
        })
    return pd.DataFrame(out)


def sweep_frame(report: dict[str, Any], value: str = "latency_ms") -> pd.DataFrame:
    """Module configuration × map size, one measured quantity per cell (status shown where it failed)."""
    rows = [r for r in report["results"] if r.get("setting") == "sweep"]
    if not rows:
        return pd.DataFrame()
    sizes = sorted({r["h"] for r in rows})
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = _label(r)
        cell = r[value] if r["status"] == "ok" else r["status"]
        if value == "peak_memory_bytes" and r["status"] == "ok":
            cell = r[value] / 2**20
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


def _caption(report: dict[str, Any]) -> str:
    env = report["env"]
    r0 = next(r for r in report["results"] if r.get("setting", "paper") == "paper")
    return (
        f"Module-level efficiency at {r0.get('batch', 1)}×{r0['channels']}×{r0['h']}×{r0['w']} "
        f"(the OS8 feature map of a 769×769 crop), fp32 inference, on {env.get('device')} "
        f"({env.get('device_name') or 'unknown'}; {env.get('threads')} threads; torch {env.get('torch')}). "
        "Inputs are random tensors: no dataset is involved. FLOPs from torch.utils.flop_counter "
        "(2 per multiply-accumulate); memory = peak tensor bytes allocated during one forward, input excluded; "
        "latency = median of the timed runs. Δ = change against the non-local block."
    )


def _footer(report: dict[str, Any]) -> str:
    env = report["env"]
    sha = env.get("git_sha") or "unknown"
    dirty = " (dirty)" if env.get("git_dirty") else ""
    return (
        f"Provenance: git {sha}{dirty}; bench config hash {config_hash(report.get('config', {}))}; "
        f"fsanet source hash {env.get('fsanet_source_hash')}; MLflow runs: none (benchmark is not a training run)."
    )


def efficiency_tables(bench_json: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``efficiency.{md,tex,csv}`` (table T1) from a benchmark report."""
    report = _load_bench(bench_json)
    out_dir = Path(out_dir)
    paper = efficiency_frame(report, "paper")
    caption, footer = _caption(report), _footer(report)

    with atomic_path(out_dir / "efficiency.csv") as tmp:
        paper.to_csv(tmp, index=False)

    shown = paper.map(_fmt)
    md = [f"**Table 1.** {caption}", "", shown.to_markdown(index=False), ""]
    lat = sweep_frame(report, "latency_ms")
    if not lat.empty:
        md += [
            "**Scaling sweep: latency (ms)** over square maps (same run; `timeout`/`oom`/`skipped` "
            "where a module did not finish).", "", lat.map(_fmt).to_markdown(), "",
        ]
        mem = sweep_frame(report, "peak_memory_bytes")
        md += ["**Scaling sweep: peak memory (MiB).**", "", mem.map(_fmt).to_markdown(), ""]
    md += [f"_{footer}_", ""]
    write_text(out_dir / "efficiency.md", "\n".join(md))

    latex_body = shown.to_latex(index=False, escape=True, column_format="l" + "r" * (len(shown.columns) - 1))
    tex = "\n".join([
        "% Generated by `fsanet tables efficiency`; do not edit.",
        "\\begin{table}[t]", "\\centering", "\\small",
        f"\\caption{{{_latex_escape(caption)}}}", "\\label{tab:efficiency}",
        "\\resizebox{\\linewidth}{!}{%", latex_body.rstrip() + "}",
        f"\\par\\footnotesize {_latex_escape(footer)}", "\\end{table}", "",
    ])
    write_text(out_dir / "efficiency.tex", tex)
    paths = [out_dir / f"efficiency.{ext}" for ext in ("md", "tex", "csv")]
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def _latex_escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("×", "$\\times$"), ("Δ", "$\\Delta$"), ("²", "$^2$")):
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
        if not ok:
            continue
        n = [r["h"] * r["w"] for r in ok]
        style = {"linestyle": "--", "color": "black"} if rs[0]["module"] == "floor" else {"marker": "o"}
        axes[0].plot(n, [r["latency_ms"] for r in ok], label=label, **style)
        if rs[0]["module"] != "floor":
            axes[1].plot(n, [r["peak_memory_bytes"] / 2**20 for r in ok], label=label, **style)
        failed = [r for r in rs if r["status"] in ("timeout", "oom")]
        for r in failed[:1]:
            axes[0].annotate(r["status"], (r["h"] * r["w"], ok[-1]["latency_ms"]), fontsize=7)
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
