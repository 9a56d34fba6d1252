"""``fsanet mlflow publish``: put a finished study's results on its MLflow parent run.

The study's parent run (made by ``fsanet mlflow init``) is where a user lands in the MLflow UI.
Publishing reopens it and logs:

* metrics: for every group of ``summary.json``'s ``aggregate`` (dataset / model / mode / band /
  truncation / setting), ``mIoU_mean/<group>``, ``mIoU_std/<group>`` and ``n/<group>``; and the
  number of findings per verdict, ``findings/pass`` … ``findings/untestable``;
* artifacts: ``summary.json``, the findings (markdown and JSON) and every table and plot given,
  under ``results/<folder>/``;

then marks the parent run FINISHED. Rerunning replaces the artifacts and appends the metrics again
(MLflow keeps a metric's history; the UI shows the latest value).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from fsanet.config import TrackingConfig
from fsanet.io import read_json, write_json
from fsanet.tracking import Tracker, read_marker, redact

__all__ = ["VERDICTS", "publish_study", "study_metrics"]

log = logging.getLogger(__name__)

VERDICTS = ("pass", "fail", "unstable", "untestable")


def study_metrics(
    summary: Mapping[str, Any], findings: Optional[Mapping[str, Any]] = None
) -> dict[str, float]:
    """The parent run's metrics: per-group mIoU mean/std/n from the summary, and findings per verdict.

    Args:
        summary: the content of ``summary.json``.
        findings: the content of ``findings.json`` (``fsanet tables findings --json``), if any.
    """
    out: dict[str, float] = {}
    for group, agg in summary.get("aggregate", {}).items():
        for key in ("mIoU_mean", "mIoU_std", "n"):
            if agg.get(key) is not None:
                out[f"{key}/{group}"] = float(agg[key])
    if findings is not None:
        items = findings.get("findings", [])
        for verdict in VERDICTS:
            out[f"findings/{verdict}"] = float(sum(f.get("verdict") == verdict for f in items))
    return out


def publish_study(
    marker: str | Path,
    summary: str | Path,
    artifacts: Sequence[str | Path] = (),
    findings: Optional[str | Path] = None,
    out: Optional[str | Path] = None,
) -> dict[str, Any]:
    """Log the study's metrics and files on its parent run and finish it.

    Args:
        marker: the JSON written by ``fsanet mlflow init`` (names the store and the parent run).
        summary: ``summary.json``; also logged as an artifact.
        artifacts: further files (tables, plots), each logged under ``results/<its folder name>``.
        findings: ``findings.json``; its verdict counts become metrics and it is logged too.
        out: a receipt JSON to write (parent run id, metric and artifact counts).

    Returns:
        The receipt.

    Raises:
        FileNotFoundError: the marker, the summary or an artifact does not exist.
    """
    info = read_marker(marker)
    files = [Path(summary), *(Path(a) for a in artifacts), *([Path(findings)] if findings else [])]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"fsanet mlflow publish: not found: {', '.join(missing)}")
    metrics = study_metrics(read_json(summary), read_json(findings) if findings else None)
    cfg = OmegaConf.structured(TrackingConfig(uri=info["tracking_uri"], experiment=info["experiment"]))
    receipt_dir = Path(out).parent if out else Path(summary).parent
    tracker = Tracker(
        cfg,
        receipt_dir,
        str(info.get("study", "study")),
        resume_run_id=info["parent_run_id"],
        require_store=f"the study of marker {marker}",
    )
    tracker.log_metrics(metrics, step=0)
    for path in files:
        tracker.log_artifact(path, f"results/{path.parent.name}")
    tracker.finish("FINISHED")
    receipt = {
        "parent_run_id": tracker.run_id,
        "requested_parent_run_id": info["parent_run_id"],
        "tracking_uri": redact(info["tracking_uri"]),
        "experiment": info["experiment"],
        "metrics": len(metrics),
        "artifacts": [p.as_posix() for p in files],
        "offline": tracker.offline_reason,
    }
    if tracker.run_id != info["parent_run_id"]:
        log.warning(
            "the study's parent run %s could not be reopened; published to run %s instead",
            info["parent_run_id"],
            tracker.run_id,
        )
    if out is not None:
        write_json(out, receipt)
    return receipt
