"""The instance-segmentation study's table and findings (``fsanet tables coco``).

Reads the ``metrics.json`` of detector evaluations (``task: instances``), groups them by method (model,
band, attention kernel) and writes, for each dataset:

* ``coco_{dataset}.{md,tex,csv}``: box AP, mask AP, the context classes' mask AP (the synthetic set's
  two disc classes, whose class only long-range context decides) and the other classes' mask AP, each
  as mean ± std (n; min–max) over seeds;
* ``coco_findings.md`` and ``coco.json`` (every run's numbers, and each claim with its verdict): the
  claim that a method with attention in res4 beats the plain detector on the context classes by at
  least ``margin`` AP in every seed (the FsaNet paper's "FSA can also enhance Mask R-CNN").
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from fsanet.io import read_json, write_json, write_text
from fsanet.provenance import git_info
from fsanet.report.names import method_display
from fsanet.report.text import pm, write_table

__all__ = ["coco_tables", "load_instance_runs"]

COMMAND = "fsanet tables coco"


def load_instance_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One record per detector evaluation: method, seed and the APs (percent).

    Raises:
        ValueError: a file that is not a detector's evaluation (no ``task: instances``), named.
    """
    runs = []
    for path in paths:
        m = read_json(path)
        if m.get("task") != "instances":
            raise ValueError(f"{path}: not a detector evaluation (metrics.json without task=instances)")
        context = list(m.get("context_classes") or [])
        local = [c for c in m["mask"]["per_class"] if c not in context]
        local_ap = [m["mask"]["per_class"][c] for c in local if m["mask"]["per_class"][c] is not None]
        runs.append(
            {
                "path": str(path),
                "dataset": m["dataset"],
                "model": m["model"],
                "band": m.get("band"),
                "mode": m.get("attention_mode") if m.get("band") is not None else None,
                "eval_band": m.get("eval_band"),
                "seed": m["seed"],
                "box_AP": m["box_AP"],
                "mask_AP": m["mask_AP"],
                "context_mask_AP": m.get("context_mask_AP"),
                "context_box_AP": m.get("context_box_AP"),
                "local_mask_AP": statistics.fmean(local_ap) if local_ap else None,
                "context_classes": context,
                "mask_per_class": m["mask"]["per_class"],
                "num_images": m["num_images"],
                "mlflow_run_id": m.get("mlflow_run_id"),
            }
        )
    return runs


def _label(run: dict[str, Any]) -> str:
    name = method_display(run["model"])
    if run["band"] is not None:
        n = run["band"][1] - run["band"][0] if len(run["band"]) == 4 else None
        name += f" {run['mode']} ({n}×{n})" if n else f" {run['mode']}"
    if run["eval_band"] is not None:
        k = run["eval_band"][1]
        name += f", truncated to {k}×{k}"
    return name


def _stats(values: list[Optional[float]]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(vals),
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "min": min(vals),
        "max": max(vals),
    }


METRICS = (
    ("box_AP", "Box AP"),
    ("mask_AP", "Mask AP"),
    ("context_mask_AP", "Context-class mask AP"),
    ("local_mask_AP", "Other-class mask AP"),
)


def _claims(groups: dict[str, list[dict[str, Any]]], margin: float) -> list[dict[str, Any]]:
    """Each attention method (untruncated) against the plain detector on the context classes."""
    plain = {k: v for k, v in groups.items() if v[0]["model"] == "mask_rcnn" and v[0]["eval_band"] is None}
    claims = []
    for base_label, base in plain.items():
        base_mean = _stats([r["context_mask_AP"] for r in base])["mean"]
        for label, runs in groups.items():
            first = runs[0]
            if (
                first["model"] == "mask_rcnn"
                or first["eval_band"] is not None
                or first["dataset"] != base[0]["dataset"]
            ):
                continue
            if base_mean is None:
                continue
            bar = base_mean + margin
            seeds = {r["seed"]: r["context_mask_AP"] for r in sorted(runs, key=lambda r: r["seed"])}
            ok = bool(seeds) and all(v is not None and v >= bar for v in seeds.values())
            worst = min((v for v in seeds.values() if v is not None), default=None)
            claims.append(
                {
                    "dataset": first["dataset"],
                    "claim": f"{label}: context-class mask AP ≥ {base_label} mean + {margin:g} = {bar:.2f} "
                    "in every seed",
                    "verdict": "PASS" if ok else "FAIL",
                    "seeds": seeds,
                    "baseline_mean": base_mean,
                    "bar": bar,
                    "worst_margin": None if worst is None else worst - bar,
                }
            )
    return claims


def _footer(runs: list[dict[str, Any]]) -> str:
    """Provenance: the inputs, the git commit the tables were written at, the evaluations' MLflow runs."""
    info = git_info()
    sha = info["git_sha"] or "unknown"
    dirty = " (uncommitted changes)" if info["git_dirty"] else ""
    ids = sorted(r["mlflow_run_id"] for r in runs if r.get("mlflow_run_id"))
    tracked = f"; MLflow evaluation runs ({len(ids)}): {', '.join(ids)}" if ids else ""
    return f"Provenance: {len(runs)} evaluations; tables written at git {sha}{dirty}{tracked}."


def coco_tables(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    summary: Optional[str | Path] = None,
    margin: float = 5.0,
) -> list[Path]:
    """Write the instance-segmentation table per dataset, the findings and (optionally) ``summary``.

    Args:
        paths: detector ``metrics.json`` files.
        out_dir: the tables' folder.
        summary: where to write every run's numbers and the claims (JSON); None = not written.
        margin: the context-class AP gain that the attention methods must show in every seed.

    Returns:
        The files written.
    """
    out_dir = Path(out_dir)
    runs = load_instance_runs(paths)
    if not runs:
        raise ValueError("fsanet tables coco: no metrics.json given")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[_label(run)].append(run)
    written: list[Path] = []
    for dataset in sorted({r["dataset"] for r in runs}):
        labels = [k for k, v in groups.items() if v[0]["dataset"] == dataset]
        shown, numeric = [], []
        for label in labels:
            row = {"Method": label}
            num: dict[str, Any] = {"method": label, "model": groups[label][0]["model"]}
            for key, title in METRICS:
                st = _stats([r[key] for r in groups[label]])
                row[title] = pm(st["mean"], st["std"], st["n"], st["min"], st["max"])
                num.update({f"{key}_{k}": v for k, v in st.items()})
            shown.append(row)
            numeric.append(num)
        context = ", ".join(groups[labels[0]][0]["context_classes"]) or "none"
        synthetic = (
            "the built-in synthetic set (procedural shapes, not a benchmark)"
            if dataset == "synthetic"
            else dataset
        )
        caption = (
            f"Mask R-CNN instance segmentation on {synthetic}, val split: COCO AP (%, pycocotools COCOeval, "
            f"IoU 0.50:0.95) as mean ± sample std over seeds (n; min–max). Context classes ({context}): "
            "their class is decided only by context beyond the detector's receptive field; other classes: "
            "the rest, decidable locally."
        )
        written += write_table(
            out_dir,
            f"coco_{dataset}",
            [("Table C", caption, pd.DataFrame(shown))],
            pd.DataFrame(numeric),
            _footer([r for r in runs if r["dataset"] == dataset]),
            COMMAND,
        )
    claims = _claims(groups, margin)
    lines = [
        f"Generated by `{COMMAND}` from {len(runs)} detector evaluations. "
        "A failing claim is printed as failing.",
        "",
    ]
    for c in claims:
        seeds = ", ".join(f"s{s} {v:.2f}" if v is not None else f"s{s} –" for s, v in c["seeds"].items())
        worst = "" if c["worst_margin"] is None else f"; worst seed {c['worst_margin']:+.2f} vs the bar"
        lines.append(f"- **{c['verdict']}**: {c['claim']}: {seeds} (n={len(c['seeds'])}){worst}")
    if not claims:
        lines.append("- no claim: the plain detector or an attention variant is missing")
    written.append(write_text(out_dir / "coco_findings.md", "\n".join(lines) + "\n"))
    if summary is not None:
        written.append(write_json(Path(summary), {"runs": runs, "claims": claims}))
    return written
