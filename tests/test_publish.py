"""`fsanet mlflow publish`: the study's results land on its parent run; evaluations nest under trainings."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from fsanet.config import TrackingConfig
from fsanet.publish import publish_study, study_metrics
from fsanet.tracking import Tracker, init_study

SUMMARY = {
    "aggregate": {
        "synthetic/nonlocal/band=full/eval_band=none/val/whole/ss": {
            "mIoU_mean": 90.1,
            "mIoU_std": 0.2,
            "n": 3,
        },
        "synthetic/fcn/band=full/eval_band=none/val/whole/ss": {"mIoU_mean": 72.3, "mIoU_std": None, "n": 1},
    },
}
FINDINGS = {
    "findings": [
        {"dataset": "synthetic", "claim": "a", "verdict": "pass", "detail": ""},
        {"dataset": "synthetic", "claim": "b", "verdict": "fail", "detail": ""},
        {"dataset": "synthetic", "claim": "c", "verdict": "pass", "detail": ""},
    ]
}


def test_study_metrics_from_summary_and_findings():
    m = study_metrics(SUMMARY, FINDINGS)
    assert m["mIoU_mean/synthetic/nonlocal/band=full/eval_band=none/val/whole/ss"] == 90.1
    assert "mIoU_std/synthetic/fcn/band=full/eval_band=none/val/whole/ss" not in m  # one seed: no std
    assert (m["findings/pass"], m["findings/fail"], m["findings/unstable"]) == (2, 1, 0)


def test_publish_logs_on_the_parent_and_evals_nest_under_trainings(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    marker = tmp_path / "results" / "mlflow" / "study.json"
    study = init_study("fsanet/test", "study", marker)
    cfg = OmegaConf.structured(TrackingConfig(study_marker=str(marker)))
    train = Tracker(cfg, tmp_path / "run", "train")
    train.finish()
    evaluation = Tracker(cfg, tmp_path / "run" / "eval", "eval", parent_run_id=train.run_id)
    evaluation.finish()
    stray = Tracker(cfg, tmp_path / "other", "eval2", parent_run_id="0" * 32)  # not in this store
    stray.finish()
    client = MlflowClient(uri)
    tags = {r: client.get_run(r).data.tags for r in (train.run_id, evaluation.run_id, stray.run_id)}
    assert tags[train.run_id]["mlflow.parentRunId"] == study["parent_run_id"]
    assert tags[evaluation.run_id]["mlflow.parentRunId"] == train.run_id
    assert tags[stray.run_id]["mlflow.parentRunId"] == study["parent_run_id"]
    assert all(t["fsanet.study_run_id"] == study["parent_run_id"] for t in tags.values())

    (tmp_path / "results" / "metrics").mkdir(parents=True)
    (tmp_path / "results" / "tables").mkdir(parents=True)
    summary = tmp_path / "results" / "metrics" / "summary.json"
    summary.write_text(json.dumps(SUMMARY))
    findings = tmp_path / "results" / "tables" / "findings.json"
    findings.write_text(json.dumps(FINDINGS))
    table = tmp_path / "results" / "tables" / "methods_synthetic.md"
    table.write_text("| a |\n")
    receipt = publish_study(
        marker, summary, [table], findings, tmp_path / "results" / "mlflow" / "published.json"
    )
    assert receipt["parent_run_id"] == study["parent_run_id"] and receipt["offline"] is None
    parent = client.get_run(study["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["findings/pass"] == 2
    assert parent.data.metrics["mIoU_mean/synthetic/nonlocal/band_full/eval_band_none/val/whole/ss"] == 90.1
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "results/tables")}
    assert logged == {"results/tables/methods_synthetic.md", "results/tables/findings.json"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "results/metrics")] == [
        "results/metrics/summary.json"
    ]

    with pytest.raises(FileNotFoundError, match="missing.md"):
        publish_study(marker, summary, [tmp_path / "missing.md"])


def test_a_copied_store_reads_its_artifacts_after_relocate(tmp_path, capsys):
    import shutil

    from mlflow import MlflowClient

    from fsanet.cli import main

    old = tmp_path / "old"
    old.mkdir()
    uri = f"sqlite:///{old / 'mlflow.db'}"
    marker = old / "study.json"
    init_study("fsanet/test", "study", marker, uri=uri)
    cfg = OmegaConf.structured(TrackingConfig(study_marker=str(marker)))
    run = Tracker(cfg, old / "run", "train")
    (old / "note.txt").write_text("hello")
    run.log_artifact(old / "note.txt", "files")
    run.finish()
    new = tmp_path / "moved"
    shutil.copytree(old, new)
    shutil.rmtree(old)  # the original is gone: nothing may still point there
    assert main(["mlflow", "relocate", str(new / "mlflow.db")]) == 0
    assert "1 experiment and 2 run locations" in capsys.readouterr().out  # the study parent and the run
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    got = client.download_artifacts(run.run_id, "files/note.txt", str(tmp_path / "dl"))
    assert open(got).read() == "hello"
    assert client.get_experiment_by_name("fsanet/test").artifact_location.startswith(
        (new / "mlruns").as_uri()
    )
    assert main(["mlflow", "relocate", str(new / "mlflow.db")]) == 0  # again: nothing left to change
    assert "0 experiment and 0 run locations" in capsys.readouterr().out
    (tmp_path / "junk.db").write_text("not sqlite")
    assert main(["mlflow", "relocate", str(tmp_path / "junk.db")]) == 2
    assert "not an MLflow tracking store" in capsys.readouterr().err
