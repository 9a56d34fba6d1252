"""MLflow tracking: URIs, params in chunks, buffered metrics, study parent runs across 8 processes,
offline fallback when the server is unreachable."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from engine_stubs import build_tiny_dataset, build_tiny_model
from omegaconf import OmegaConf

from fsanet.config import TrackingConfig, load_config
from fsanet.engine.train import train
from fsanet.tracking import (
    Tracker,
    artifact_root,
    flatten,
    init_study,
    project_root,
    resolve_uri,
    sanitize_key,
)


def _cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TrackingConfig), kw)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_flatten_and_sanitize():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert sanitize_key("test/IoU/traffic light") == "test/IoU/traffic light"
    assert sanitize_key("test/IoU/tv(monitor)") == "test/IoU/tv_monitor_"
    assert sanitize_key("a//b/../c/") == "a/b/_/c"


def test_uri_precedence_and_project_root(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert project_root(sub) == tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(root=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert resolve_uri(root=tmp_path) == f"sqlite:///{tmp_path / 'other.db'}"
    assert resolve_uri(marker_uri="http://h:1", root=tmp_path) == "http://h:1"
    assert resolve_uri("sqlite:////abs/x.db", "http://h:1", root=tmp_path) == "sqlite:////abs/x.db"
    assert artifact_root(f"sqlite:///{tmp_path / 'mlflow.db'}") == (tmp_path / "mlruns").as_uri()
    assert artifact_root("http://h:1") is None


def test_tracker_logs_params_in_chunks_metrics_buffered_and_artifacts(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(_cfg(uri=uri, experiment="exp", flush_interval=10), tmp_path / "run", "r1", {"seed": 3})
    params = {f"group{i // 50}.key{i}": i for i in range(250)}
    params["long.value"] = "x" * 7000
    tracker.log_params(params)
    client = MlflowClient(uri)
    for step in range(1, 10):
        tracker.log_metrics({"train/loss": 1.0 / step}, step=step)
        tracker.maybe_flush(step)
    assert client.get_metric_history(tracker.run_id, "train/loss") == []  # buffered until step 10
    tracker.log_metrics({"train/loss": 0.1}, step=10)
    tracker.maybe_flush(10)
    assert len(client.get_metric_history(tracker.run_id, "train/loss")) == 10
    art = tmp_path / "table.csv"
    art.write_text("a,b\n1,2\n")
    tracker.log_artifact(art, "tables")
    tracker.finish()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["seed"] == "3"
    assert len(run.data.params) == 251 and run.data.params["group4.key249"] == "249"
    assert len(run.data.params["long.value"]) == 6000
    assert [a.path for a in client.list_artifacts(tracker.run_id, "tables")] == ["tables/table.csv"]
    assert not (tmp_path / "run" / "mlflow_offline").exists()
    # a resumed training reopens the same run and may log the same params again
    again = Tracker(_cfg(uri=uri, experiment="exp"), tmp_path / "run", "r1", resume_run_id=tracker.run_id)
    assert again.run_id == tracker.run_id
    again.log_params({"group0.key1": 1})
    again.finish()
    assert not again.offline


def test_unreachable_server_keeps_everything_offline(tmp_path, caplog):
    cfg = _cfg(uri=f"http://127.0.0.1:{_closed_port()}", retries=2, backoff_s=0.01, http_timeout_s=2)
    with caplog.at_level(logging.WARNING, logger="fsanet.tracking"):
        tracker = Tracker(cfg, tmp_path, "offline-run", {"model": "fsanet"})
    assert tracker.offline and tracker.run_id is None
    assert any("mlflow_offline" in r.getMessage() for r in caplog.records)
    tracker.log_params({"a.b": 1})
    tracker.log_metrics({"train/loss": 0.5}, step=1, flush=True)
    (tmp_path / "m.json").write_text("{}")
    tracker.log_artifact(tmp_path / "m.json", "eval")
    tracker.finish()
    off = tmp_path / "mlflow_offline"
    assert json.loads((off / "params.json").read_text()) == {"a.b": "1"}
    assert json.loads((off / "metrics.json").read_text())[0]["value"] == 0.5
    run = json.loads((off / "run.json").read_text())
    assert (
        run["tags"]["model"] == "fsanet"
        and "failed" in run["reason"]
        and run["tags"]["fsanet.status"] == "FINISHED"
    )
    assert (off / "artifacts" / "eval" / "m.json").is_file()


def test_training_survives_an_unreachable_tracking_server(tmp_path, caplog):
    cfg = load_config(
        [],
        [
            f"tracking.uri=http://127.0.0.1:{_closed_port()}",
            "tracking.retries=2",
            "tracking.backoff_s=0.01",
            "train.progress=false",
            "train.max_iters=4",
            "train.log_interval=2",
            "train.ckpt_interval=2",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="fsanet.tracking"):
        result = train(cfg, tmp_path, build_model=build_tiny_model, build_dataset=build_tiny_dataset)
    assert result.iterations == 4 and (tmp_path / "model.pt").is_file()
    assert any("tracking unavailable" in r.getMessage() for r in caplog.records)
    off = tmp_path / "mlflow_offline"
    steps = [m["step"] for m in json.loads((off / "metrics.json").read_text()) if m["key"] == "train/loss"]
    assert steps == [2, 4]
    assert json.loads((off / "params.json").read_text())["train.max_iters"] == "4"
    assert (off / "artifacts" / "run_info.json").is_file()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["mlflow_offline"] and info["mlflow_run_id"] is None


CHILD = """
import sys
from omegaconf import OmegaConf
from fsanet.config import TrackingConfig
from fsanet.tracking import Tracker
cfg = OmegaConf.merge(OmegaConf.structured(TrackingConfig), {"study_marker": sys.argv[1], "retries": 5,
                      "backoff_s": 0.2})
t = Tracker(cfg, sys.argv[2], "child-" + sys.argv[3], {"seed": sys.argv[3]})
t.log_params({"index": sys.argv[3], **{f"p{i}": i for i in range(120)}})
t.log_metrics({"train/loss": float(sys.argv[3])}, step=1)
t.finish()
assert not t.offline, t.offline_reason
print(t.run_id)
"""


def test_study_init_then_8_concurrent_children(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    marker = tmp_path / "study.json"
    data = init_study("fsanet/ablation", "band", marker)
    assert json.loads(marker.read_text()) == data and data["tracking_uri"] == uri
    assert (
        init_study("fsanet/ablation", "band", tmp_path / "again.json")["parent_run_id"]
        == data["parent_run_id"]
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("MLFLOW_TRACKING_URI")  # the children find the store through the marker
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(marker), str(tmp_path / f"run{i}"), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fsanet/ablation")
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{data['parent_run_id']}'"
    )
    assert len(children) == 8
    assert sorted(r.data.params["index"] for r in children) == [str(i) for i in range(8)]
    assert all(r.info.status == "FINISHED" and len(r.data.params) == 121 for r in children)
    assert all(r.data.metrics["train/loss"] == float(r.data.params["index"]) for r in children)
    assert all(not (tmp_path / f"run{i}" / "mlflow_offline").exists() for i in range(8))


def test_marker_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"experiment": "x"}))
    with pytest.raises(ValueError, match="not an `fsanet mlflow init` marker"):
        Tracker(_cfg(study_marker=str(bad)), tmp_path, "r")
    with pytest.raises(FileNotFoundError):
        Tracker(_cfg(study_marker=str(tmp_path / "missing.json")), tmp_path, "r")


def test_init_against_unreachable_server_is_one_clear_error(tmp_path):
    from fsanet.tracking import TrackingError

    uri = f"http://127.0.0.1:{_closed_port()}"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingError, match="cannot initialise study 'band'"):
        init_study("fsanet/x", "band", tmp_path / "m.json", uri=uri, retries=2, backoff_s=0.01)
    assert not (tmp_path / "m.json").exists()
