"""``results/tables/findings.md``: the study's claims, each checked against ``summary.json`` and T1.

Every claim is one line with its numbers and a verdict:

* **pass**: the claim holds (for claims over seeds: in every seed);
* **fail**: it does not; the line says by how much;
* **unstable**: a timing whose spread over benchmark rounds straddles its threshold;
* **untestable**: the study has no run that could test it (the line says which runs are missing).

The claims (thresholds in :data:`BARS`):

1. FsaNet at the default band is within ``fsa_vs_nl`` mIoU of non-local (means), for each FSA mode.
2. Every attention method is above the attention-free FCN by at least ``above_fcn`` in every seed.
3. The seed spread (sample std) of every method row, and of every band row at or above the
   predicted knee (retrained, and truncated without retraining), is at most ``max_std``.
4. The retrained band curve has its knee at the predicted band: every band at or above the
   dataset's predicted knee (:mod:`fsanet.data.oracle`) is within ``knee_within`` of the full band,
   every band below it at least ``knee_drop`` below (means).
5. The same for the truncation curve (the non-local model low-passed at evaluation time).
6. FsaNet's cost at the paper's setting (T1): FLOPs, memory and latency against non-local, and
   latency against its paired floor at the largest swept size of at least 128².
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from fsanet.io import read_json, write_json, write_text
from fsanet.report.names import method_display
from fsanet.report.summary import (
    ablation_points,
    band_label,
    band_model,
    band_models,
    band_size,
    baseline_models,
    load_summary,
    mean_std,
    method_module,
    select_runs,
)

__all__ = ["BARS", "Finding", "findings", "write_findings"]

BARS = {
    "fsa_vs_nl": 1.0,  # mIoU points
    "above_fcn": 10.0,
    "max_std": 1.0,
    "knee_within": 1.0,
    "knee_drop": 5.0,
    "flops_cut": 99.5,  # % fewer FLOPs than non-local (fused FSA-dot 5×5)
    "memory_cut": 90.0,
    "latency_cut": 99.5,
    "max_x_floor": 3.0,
}

Finding = dict[str, Any]  # {"claim": str, "verdict": str, "detail": str}


def _f(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}"


def _finding(claim: str, ok: Optional[bool], detail: str, verdict: Optional[str] = None) -> Finding:
    if verdict is None:
        verdict = "untestable" if ok is None else ("pass" if ok else "fail")
    return {"claim": claim, "verdict": verdict, "detail": detail}


def _groups(runs: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Retrained runs grouped by (model, mode, band label)."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in runs:
        if r["eval_band"] is None and r["mIoU"] is not None:
            out.setdefault((r["model"], r.get("mode"), band_label(r["band"])), []).append(r)
    return out


def _method_findings(runs: Sequence[Mapping[str, Any]], default_band: str) -> list[Finding]:
    groups = _groups(runs)
    out = []
    banded, baselines = band_models(), baseline_models()
    fcn = [r for (m, _, lab), rs in groups.items() if m in baselines and lab == "full" for r in rs]
    nl = groups.get(("nonlocal", None, "full"))
    # the claim is FsaNet's; other band models (Segformer + FSA, …) are checked against the FCN below
    fsa = {mode: rs for (m, mode, lab), rs in groups.items() if m == "fsanet" and lab == default_band}
    # 1. FsaNet vs non-local
    for mode, rs in sorted(fsa.items(), key=lambda kv: str(kv[0])):
        claim = f"FsaNet {mode} ({default_band}) within {BARS['fsa_vs_nl']:.1f} mIoU of non-local (means)"
        if not nl:
            out.append(_finding(claim, None, "no non-local runs"))
            continue
        a, _, na = mean_std(r["mIoU"] for r in rs)
        b, _, nb = mean_std(r["mIoU"] for r in nl)
        diff = a - b  # type: ignore[operator]
        out.append(
            _finding(
                claim,
                abs(diff) <= BARS["fsa_vs_nl"],
                f"FsaNet {_f(a)} (n={na}) − non-local {_f(b)} (n={nb}) = {diff:+.2f}",
            )
        )
    # 2. above FCN in every seed
    if not fcn:
        out.append(_finding("every attention method ≥ FCN + 10 in every seed", None, "no FCN runs"))
    else:
        ref, _, nf = mean_std(r["mIoU"] for r in fcn)
        bar = ref + BARS["above_fcn"]  # type: ignore[operator]
        for (model, mode, label), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
            if model in baselines or (model in banded and label != default_band):
                continue
            name = model if mode is None else f"{model} {mode} ({label})"
            worst = min(r["mIoU"] for r in rs)
            seeds = ", ".join(f"s{r['seed']} {r['mIoU']:.2f}" for r in sorted(rs, key=lambda r: r["seed"]))
            out.append(
                _finding(
                    f"{name} ≥ FCN mean + {BARS['above_fcn']:.0f} = {bar:.2f} in every seed",
                    worst >= bar,
                    f"{seeds} (FCN mean {ref:.2f}, n={nf}); worst seed {worst - bar:+.2f} vs the bar",
                )
            )
    return out


def _spread_findings(
    runs: Sequence[Mapping[str, Any]], default_band: str, knee: Optional[list[int]]
) -> list[Finding]:
    out = []
    banded = band_models()
    knee_k = None if knee is None else band_size([0, knee[0], 0, knee[1]])
    for (model, mode, label), rs in sorted(_groups(runs).items(), key=lambda kv: tuple(map(str, kv[0]))):
        if model in banded and label != default_band:
            band = rs[0]["band"]
            if knee_k is None or band_size(band) < knee_k or mode not in (None, "dot"):
                continue  # below the knee (or a mode outside the ablation): no spread claim
        _, std, n = mean_std(r["mIoU"] for r in rs)
        out.append(_std_finding(model if mode is None else f"{model} {mode} ({label})", std, n))
    return out


def _std_finding(name: str, std: Optional[float], n: int, extra: str = "") -> Finding:
    """Claim 3 for one row: its seed std is at most ``max_std``."""
    claim = f"seed std of {name} ≤ {BARS['max_std']:.1f}"
    if std is None:
        return _finding(claim, None, f"n={n}: needs at least 2 seeds")
    return _finding(claim, std <= BARS["max_std"], f"std {std:.2f} (n={n}{extra})")


def _truncated_spread_findings(
    points: Sequence[Mapping[str, Any]], knee: Optional[list[int]], model: str
) -> list[Finding]:
    """Claim 3 for the truncation series: the seed std of each truncated band at or above the knee."""
    if knee is None:
        return []
    knee_k = band_size([0, knee[0], 0, knee[1]])
    out = []
    for p in sorted(
        (p for p in points if p["series"] == "truncated" and p["label"] != "full"), key=lambda p: p["K"]
    ):
        if p["K"] < knee_k:
            continue
        out.append(
            _std_finding(
                f"{model} truncated to {p['label']}", p["std"], p["n"], f"; {_f(p['min'])}–{_f(p['max'])}"
            )
        )
    return out


def _measured_knee(points: Sequence[Mapping[str, Any]], full: float) -> str:
    """The smallest band from which every larger band is within ``knee_within`` of ``full`` (means), or
    "full" if even the largest truncated band is not."""
    knee = "full"
    for p in sorted((p for p in points if p["label"] != "full"), key=lambda p: -p["K"]):
        if abs(p["mean"] - full) > BARS["knee_within"]:
            break
        knee = p["label"].replace("x", "×")
    return knee


def _knee_finding(
    points: Sequence[Mapping[str, Any]], series: str, knee: Optional[list[int]], what: str
) -> Finding:
    claim = (
        f"{what}: bands ≥ the predicted knee within {BARS['knee_within']:.1f} of full, bands below it "
        f"≥ {BARS['knee_drop']:.0f} below (means)"
    )
    pts = [p for p in points if p["series"] == series and p["mean"] is not None]
    full = next((p for p in pts if p["label"] == "full"), None)
    if knee is None or full is None:
        return _finding(claim, None, "no predicted knee" if knee is None else "no full-band runs")
    knee_k = band_size([0, knee[0], 0, knee[1]])
    parts, ok, below = [], True, 0
    for p in pts:
        if p["label"] == "full":
            continue
        d = p["mean"] - full["mean"]
        if p["K"] >= knee_k:
            good = abs(d) <= BARS["knee_within"]
        else:
            below += 1
            good = d <= -BARS["knee_drop"]
        ok &= good
        parts.append(f"{p['label']} {d:+.2f}{'' if good else ' ✗'}")
    detail = f"predicted knee {knee[0]}×{knee[1]}; full {full['mean']:.2f}; Δ vs full: " + ", ".join(parts)
    detail += f"; measured knee {_measured_knee(pts, full['mean'])}"
    at_knee = next((p for p in pts if list(p.get("band") or []) == [0, knee[0], 0, knee[1]]), None)
    if at_knee is not None and at_knee.get("energy_kept") is not None:
        mean, low, high = (100 * at_knee[k] for k in ("energy_kept", "energy_kept_min", "energy_kept_max"))
        detail += (
            f"; the {knee[0]}×{knee[1]} band keeps {mean:.1f} % of the attention inputs' energy "
            f"({low:.1f}–{high:.1f} %)"
        )
    if below == 0:
        detail += "; no band below the knee was run, so only the upper half of the claim is tested"
    return _finding(claim, ok, detail)


def _cost_findings(bench: Mapping[str, Any]) -> list[Finding]:
    from fsanet.bench.timing import verdict

    rows = bench.get("results", [])  # run_attention_benchmark's report
    paper = [r for r in rows if r.get("setting") == "paper" and r.get("status") == "ok"]
    module = method_module("fsanet")  # FsaNet's attention module (FSA)
    nl = next((r for r in paper if r["module"] == method_module("nonlocal")), None)
    fsa = next(
        (
            r
            for r in paper
            if r["module"] == module
            and r.get("mode") == "dot"
            and r.get("impl") == "fused"
            and list(r.get("band") or []) == [0, 5, 0, 5]
        ),
        None,
    )
    if nl is None or fsa is None:
        return [
            _finding(
                "FsaNet's cost at the paper's setting (T1)", None, "no fused FSA-dot 5×5 or non-local row"
            )
        ]
    out = []
    h, w = fsa["h"], fsa["w"]
    for key, name, bar in (
        ("flops", "FLOPs", "flops_cut"),
        ("peak_memory_bytes", "peak memory", "memory_cut"),
    ):
        cut = 100.0 * (1 - fsa[key] / nl[key])
        out.append(
            _finding(
                f"fused FSA-dot 5×5 at {h}×{w}: ≥ {BARS[bar]:.1f} % less {name} than non-local",
                cut >= BARS[bar],
                f"−{cut:.2f} %",
            )
        )
    lat = fsa["latency_ms"]
    lo_hi = fsa.get("latency_spread_ms") or [lat, lat]
    nl_lo_hi = nl.get("latency_spread_ms") or [nl["latency_ms"], nl["latency_ms"]]
    cut = 100.0 * (1 - lat / nl["latency_ms"])
    worst = 100.0 * (1 - lo_hi[1] / nl_lo_hi[0])
    best = 100.0 * (1 - lo_hi[0] / nl_lo_hi[1])
    out.append(
        _finding(
            f"fused FSA-dot 5×5 at {h}×{w}: ≥ {BARS['latency_cut']:.1f} % less latency than non-local",
            None,
            f"−{cut:.2f} % ({lat:.2f} vs {nl['latency_ms']:.1f} ms); over the rounds' spread −{worst:.2f} … "
            f"−{best:.2f} %",
            verdict(worst, best, BARS["latency_cut"], better="higher"),
        )
    )
    sweep = [
        r
        for r in rows
        if r.get("setting") == "sweep"
        and r["module"] == module
        and r.get("mode") == "dot"
        and r.get("impl") == "fused"
        and r.get("status") == "ok"
        and r["h"] >= 128
    ]
    if sweep:
        r = max(sweep, key=lambda r: r["h"])
        x = r.get("x_floor")
        lo, hi = r.get("x_floor_spread") or [x, x]
        out.append(
            _finding(
                f"fused FSA-dot 5×5 at {r['h']}²: ≤ {BARS['max_x_floor']:.0f}× its paired floor",
                None,
                f"{_f(x)}× (rounds {_f(lo)}–{_f(hi)}×)",
                verdict(lo, hi, BARS["max_x_floor"], better="lower"),
            )
        )
    return out


def findings(
    summary: Mapping[str, Any],
    bench: Optional[Mapping[str, Any]],
    dataset: str,
    default_band: str = "5x5",
    truncated_model: str = "nonlocal",
    retrained_model: Optional[str] = None,
    band_mode: str = "dot",
) -> list[Finding]:
    """The study's claims on ``dataset`` (see the module docstring). ``retrained_model`` defaults to
    the band model with the band sweep (:func:`fsanet.report.summary.band_model`); ``band_mode`` is the
    FSA kernel of its band sweep."""
    runs = select_runs(summary, dataset=dataset)
    knee = (summary.get("context") or {}).get(dataset, {}).get("knee")
    out = _method_findings(runs, default_band)
    out += _spread_findings(runs, default_band, knee)
    points = ablation_points(
        runs, retrained_model=retrained_model, truncated_model=truncated_model, retrained_mode=band_mode
    )
    out += _truncated_spread_findings(points, knee, truncated_model)
    retrained = method_display(retrained_model or band_model(runs))
    out.append(_knee_finding(points, "retrained", knee, f"retrained {retrained} ({band_mode}) band curve"))
    out.append(_knee_finding(points, "truncated", knee, f"truncated {truncated_model} band curve"))
    if bench is not None:
        out += _cost_findings(bench)
    return out


def write_findings(
    summary_json: str | Path,
    out: str | Path,
    bench_json: Optional[str | Path] = None,
    dataset: Optional[str] = None,
    default_band: str = "5x5",
    json_out: Optional[str | Path] = None,
    truncated_model: str = "nonlocal",
    retrained_model: Optional[str] = None,
    band_mode: str = "dot",
) -> list[Finding]:
    """Write ``findings.md`` for every dataset of the summary (or ``dataset``), and the same claims as a
    JSON list (``dataset``, ``claim``, ``verdict``, ``detail``) to ``json_out`` when given."""
    summary = load_summary(summary_json)
    bench = read_json(bench_json) if bench_json else None
    datasets = [dataset] if dataset else sorted({r["dataset"] for r in summary["runs"]})
    lines = [
        "# Findings",
        "",
        "Generated by `fsanet tables findings` from "
        f"`{Path(summary_json).as_posix()}`"
        + (f" and `{Path(bench_json).as_posix()}`" if bench_json else "")
        + f" (git {summary['provenance']['git_sha']}). Each claim is checked in every seed where it is about "
        "seeds; a failing claim is printed as failing.",
        "",
    ]
    everything: list[Finding] = []
    for ds in datasets:
        items = [
            {"dataset": ds, **f}
            for f in findings(
                summary,
                bench if ds == datasets[0] else None,
                ds,
                default_band,
                truncated_model,
                retrained_model,
                band_mode,
            )
        ]
        ctx = (summary.get("context") or {}).get(ds)
        lines += [f"## {ds}", ""]
        if ctx:
            acc = ", ".join(
                f"{k}×{k} {v:.3f}"
                for k, v in sorted(ctx["accuracy"].items(), key=lambda kv: int(kv[0]))
                if v is not None and not math.isnan(v)
            )
            lines += [
                "Context oracle (decidable share of disc pixels after the n×n low-pass; no training): "
                f"{acc}. "
                f"Predicted knee: {ctx.get('knee')}.",
                "",
            ]
        counts: dict[str, int] = {}
        for f in items:
            counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
            lines.append(f"- **{f['verdict'].upper()}**: {f['claim']}: {f['detail']}")
        lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
        everything += items
    write_text(out, "\n".join(lines))
    if json_out is not None:
        write_json(
            json_out,
            {
                "summary": Path(summary_json).as_posix(),
                "git_sha": summary["provenance"]["git_sha"],
                "findings": everything,
            },
        )
    return everything
