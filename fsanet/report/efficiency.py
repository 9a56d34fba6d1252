"""Table T1 (module-level efficiency, Markdown/LaTeX/CSV) and the efficiency plot, from a report of
``fsanet bench attention``. The caption says the inputs are random tensors; the footer gives the
provenance (git SHA, bench config hash).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from fsanet.band import band_label
from fsanet.config import config_hash
from fsanet.io import atomic_path, read_json
from fsanet.report.names import module_display
from fsanet.report.text import fmt, with_spread, write_table

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


def _label(row: dict[str, Any]) -> str:
    name = row.get("display") or module_display(row["module"])
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

    ``Latency (ms)`` is the median over all rounds and ``× floor`` the median of the per-round ratios;
    the ``… round min``/``… round max`` columns beside them hold the lowest and highest per-round figure
    (empty with one round).

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
            cell = with_spread(cell, *_round_spread(r, value))
        table.setdefault(key, {})[f"{r['h']}²"] = cell
    return pd.DataFrame.from_dict(table, orient="index", columns=[f"{s}²" for s in sizes])


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """The efficiency frame as text, each spread beside its value (``4.70 (4.41–5.30)``) in place of
    its own columns."""
    shown = frame.map(fmt)
    for col, (lo, hi) in SPREAD_COLUMNS.items():
        shown[col] = [with_spread(v, a, b) for v, a, b in zip(frame[col], frame[lo], frame[hi])]
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
        "latency = median of the timed runs. Δ = change against the non-local block. × floor = the module's "
        "median latency over that of torch.add(x, x) timed in alternation with it (paired floor), per "
        "round, and the median of those ratios." + _rounds_caption(report)
    )


def _rounds_caption(report: dict[str, Any]) -> str:
    rounds = _rounds(report)
    if rounds < 2:
        return ""
    return (
        f" The timed runs were split over {rounds} interleaved rounds (in each round every module of the "
        "same size in turn, the order rotating); (a–b) = the lowest and highest per-round figure: a "
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
    """Write ``efficiency.{md,tex,csv}`` (table T1) from a benchmark report.

    The Markdown file also carries the scaling sweep (latency, latency × paired floor, peak memory).
    """
    report = _load_bench(bench_json)
    paper = efficiency_frame(report, "paper")
    sweep: list[str] = []
    lat = sweep_frame(report, "latency_ms", spread=True)
    if not lat.empty:
        sweep += [
            "**Scaling sweep: latency (ms)** over square maps (same run; `timeout`/`oom`/`skipped` "
            "where a module did not finish).",
            "",
            lat.map(fmt).to_markdown(),
            "",
        ]
        ratio = sweep_frame(report, "x_floor", spread=True)
        paired = any(r.get("x_floor") is not None for r in report["results"] if r.get("setting") == "sweep")
        if not ratio.empty and paired:
            sweep += [
                "**Scaling sweep: latency × floor**, each against `torch.add(x, x)` timed in alternation "
                "with it (paired floor).",
                "",
                ratio.map(fmt).to_markdown(),
                "",
            ]
        mem = sweep_frame(report, "peak_memory_bytes")
        sweep += ["**Scaling sweep: peak memory (MiB).**", "", mem.map(fmt).to_markdown(), ""]
    return write_table(
        Path(out_dir),
        "efficiency",
        [("Table 1", _caption(report), _shown(paper))],
        paper,
        _footer(report),
        "fsanet tables efficiency",
        md_extra=sweep,
    )


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
