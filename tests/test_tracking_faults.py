"""Tracking under faults: kills and interrupts between checkpoints, a stop right after model.pt, a store
that is deleted or turns read-only mid-run, a store gone at evaluation time, offline copies synced later,
many processes opening a fresh store at once, credentials in the tracking URI, stale temporary files.

Each test injects the fault and checks what the store, the run folder and the log output hold after it.
The real-process versions (SIGKILL/SIGINT/SIGTERM of an `fsanet train`-like process) are marked slow.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_stubs import build_tiny_dataset, build_tiny_model
from omegaconf import OmegaConf

import fsanet.engine.train as train_module
from fsanet.config import TrackingConfig, load_config
from fsanet.engine.checkpoint import list_checkpoints
from fsanet.engine.evaluate import eval_config, evaluate
from fsanet.engine.train import train
from fsanet.tracking import Tracker, init_study, redact, split_credentials

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TRAIN_KEYS = ("train/loss", "train/loss_main", "train/loss_aux", "train/lr", "train/it_per_s")
SECRET = "s3cret-pw"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def _cfg(tmp: Path, *overrides: str, uri: str | None = None):
    uri = uri or f"sqlite:///{tmp / 'mlflow.db'}"
    base = {
        "train.progress": "false",
        "train.batch_size": "4",
        "data.num_workers": "0",
        "tracking.uri": uri,
        "tracking.experiment": "fsanet/faults",
        "tracking.retries": "2",
        "tracking.backoff_s": "0.01",
        "tracking.http_timeout_s": "2",
        "train.max_iters": "12",
        "train.log_interval": "1",
        "train.ckpt_interval": "4",
    }
    base.update(o.split("=", 1) for o in overrides)
    return load_config([], [f"{k}={v}" for k, v in base.items()])


def _train(cfg, run: Path, callback=None):
    return train(cfg, run, build_model=build_tiny_model, build_dataset=build_tiny_dataset, callback=callback)


def _client(tmp: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _assert_each_point_once(client, run_id: str, steps: list[int], keys=TRAIN_KEYS) -> None:
    for key in keys:
        got = _steps(client, run_id, key)
        dup = [s for s, n in collections.Counter(got).items() if n > 1]
        assert not dup, f"{key}: steps logged more than once: {dup}"
        assert got == steps, f"{key}: {got} != {steps}"


def _info(run: Path) -> dict:
    return json.loads((run / "run_info.json").read_text())


def _log_steps(run: Path) -> list[int]:
    return [e["iteration"] for e in json.loads((run / "train_log.json").read_text())]


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, and the tracker's finish is disabled meanwhile."""


def _kill_at(k: int):
    def callback(it: int) -> None:
        if it == k:
            raise Killed(f"killed after iteration {k}")

    return callback


def _interrupt_at(k: int):
    def callback(it: int) -> None:
        if it == k:
            raise KeyboardInterrupt

    return callback


@pytest.fixture
def records():
    """Every log record of fsanet, MLflow, SQLAlchemy and alembic (the last three do not propagate)."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("", "mlflow", "sqlalchemy", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    yield got
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture
def clean_credentials(monkeypatch):
    """Undo the MLflow credential variables a test's tracker sets for the process."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    yield


def _make_read_only(db: Path, read_only: bool = True) -> None:
    """SQLite treats a file whose header write-version byte is > 2 as read-only (for every connection,
    also as root, where chmod would not stop writes); the change counter tells open connections."""
    with open(db, "r+b") as f:
        f.seek(18)
        f.write(bytes([3 if read_only else 1]))
        f.seek(24)
        counter = int.from_bytes(f.read(4), "big")
        f.seek(24)
        f.write((counter + 1).to_bytes(4, "big"))


# --------------------------------------------------------------------------------------------
# kills and interrupts
# --------------------------------------------------------------------------------------------
def test_kill_between_checkpoints_keeps_flushed_metrics_and_resume_fills_the_rest(tmp_path, monkeypatch):
    """A kill loses only what came after the last checkpoint; the resumed run logs each point once."""
    cfg = _cfg(tmp_path, "tracking.flush_interval=100")
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Tracker, "finish", lambda self, status="FINISHED": None)  # a killed process closes nothing
        with pytest.raises(Killed):
            _train(cfg, run, callback=_kill_at(10))
    run_id = _info(run)["mlflow_run_id"]
    client = _client(tmp_path)
    assert [i for i, _ in list_checkpoints(run)] == [4, 8]
    _assert_each_point_once(client, run_id, list(range(1, 9)))  # flushed at each checkpoint
    result = _train(cfg, run)
    assert result.resumed_from == 8 and result.mlflow_run_id == run_id
    _assert_each_point_once(client, run_id, list(range(1, 13)))
    assert _log_steps(run) == list(range(1, 13))
    by_step = {e["iteration"]: e["loss"] for e in json.loads((run / "train_log.json").read_text())}
    assert all(
        m.value == pytest.approx(by_step[m.step]) for m in client.get_metric_history(run_id, "train/loss")
    )
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _info(run)["status"] == "finished" and _info(run)["segments"] == 2


def test_interrupts_and_resumes_never_log_a_point_twice(tmp_path):
    cfg = _cfg(tmp_path, "tracking.flush_interval=1")
    run = tmp_path / "run"
    client = _client(tmp_path)
    for stop in (7, 10):  # each interrupt comes after points past the newest checkpoint reached the store
        with pytest.raises(KeyboardInterrupt):
            _train(cfg, run, callback=_interrupt_at(stop))
        info = _info(run)
        assert info["status"] == "interrupted" and info["iterations"] == stop
        assert client.get_run(info["mlflow_run_id"]).info.status == "KILLED"
        _assert_each_point_once(client, info["mlflow_run_id"], list(range(1, stop + 1)))
    result = _train(cfg, run)
    assert result.resumed_from == 8
    _assert_each_point_once(client, result.mlflow_run_id, list(range(1, 13)))
    assert _steps(client, result.mlflow_run_id, "train/seconds") == [12]
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    runs = client.search_runs([client.get_experiment_by_name("fsanet/faults").experiment_id])
    assert len(runs) == 1  # every segment went into the same run


def test_a_stop_right_after_model_pt_is_closed_by_the_rerun(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "train.max_iters=8")
    run = tmp_path / "run"
    real_save = train_module.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        if Path(path).name == "model.pt":
            raise KeyboardInterrupt  # Ctrl-C just after the final model was written

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            _train(cfg, run)
    assert (run / "model.pt").is_file()
    info = _info(run)
    client = _client(tmp_path)
    assert info["status"] == "interrupted"
    assert client.get_run(info["mlflow_run_id"]).info.status == "KILLED"
    mtime = (run / "model.pt").stat().st_mtime_ns
    result = _train(cfg, run)
    assert result.iterations == 8 and (run / "model.pt").stat().st_mtime_ns == mtime  # not retrained
    info = _info(run)
    assert info["status"] == "finished" and info["mlflow_status"] == "FINISHED" and info["train_seconds"] > 0
    mlflow_run = client.get_run(result.mlflow_run_id)
    assert mlflow_run.info.status == "FINISHED" and result.mlflow_run_id == info["mlflow_run_id"]
    assert _steps(client, result.mlflow_run_id, "train/seconds") == [8]
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id)} >= {
        "run_info.json",
        "train_log.json",
    }
    _assert_each_point_once(client, result.mlflow_run_id, list(range(1, 9)))
    # a third run has nothing left to do
    assert _train(cfg, run).iterations == 8 and _info(run)["finished"] == info["finished"]


def test_sigterm_is_recorded_as_an_interrupt(tmp_path):
    """A scheduler's SIGTERM ends the run like Ctrl-C: run_info `interrupted`, MLflow run KILLED."""

    class NotHandled(Exception):
        pass

    def outside(signum, frame):  # reached only if training does not handle SIGTERM itself
        raise NotHandled("SIGTERM reached the test's handler")

    def term_at(it: int) -> None:
        if it == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, outside)
    try:
        with pytest.raises(KeyboardInterrupt):
            _train(_cfg(tmp_path), tmp_path / "run", callback=term_at)
        assert signal.getsignal(signal.SIGTERM) is outside  # restored afterwards
    finally:
        signal.signal(signal.SIGTERM, previous)
    info = _info(tmp_path / "run")
    assert info["status"] == "interrupted" and "SIGTERM" in info["error"]
    assert _client(tmp_path).get_run(info["mlflow_run_id"]).info.status == "KILLED"


def test_train_seconds_sum_every_segment(tmp_path):
    def slow_then_crash(it: int) -> None:
        time.sleep(0.15)
        if it == 5:
            raise RuntimeError("crash after iteration 5")

    cfg = _cfg(tmp_path, "tracking.enabled=false")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _train(cfg, run, callback=slow_then_crash)
    assert _info(run)["status"] == "failed"
    _train(cfg, run)  # the rest, fast
    info = _info(run)
    assert info["train_seconds"] >= 3 * 0.15  # checkpoint 4 was written after 3 slow callbacks
    assert info["segments"] == 2


# --------------------------------------------------------------------------------------------
# store failures
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["deleted", "read-only"])
def test_a_store_failing_mid_run_gives_one_warning_and_the_offline_copy_keeps_everything(
    tmp_path, fault, records, capfd
):
    db = tmp_path / "mlflow.db"

    def break_store(it: int) -> None:
        if it == 6:
            db.unlink() if fault == "deleted" else _make_read_only(db)

    cfg = _cfg(tmp_path, "tracking.flush_interval=1")
    run = tmp_path / "run"
    result = _train(cfg, run, callback=break_store)
    assert result.iterations == 12
    out, err = capfd.readouterr()
    noisy = [r for r in records if r.levelno >= logging.WARNING or r.exc_info]
    assert len(noisy) == 1, [r.getMessage()[:300] for r in noisy]
    message = noisy[0].getMessage()
    assert str(db) in message and str(run / "mlflow_offline") in message and "\n" not in message
    assert "Traceback" not in out + err and "Traceback" not in "".join(r.getMessage() for r in records)
    off = run / "mlflow_offline"
    metrics = json.loads((off / "metrics.json").read_text())
    for key in TRAIN_KEYS:
        assert sorted(m["step"] for m in metrics if m["key"] == key) == list(range(1, 13)), key
    assert json.loads((off / "params.json").read_text())["train.max_iters"] == "12"
    assert {p.name for p in (off / "artifacts").iterdir()} == {
        "config.yaml",
        "run_info.json",
        "train_log.json",
    }
    copy = json.loads((off / "run.json").read_text())
    assert copy["run_id"] == result.mlflow_run_id and copy["status"] == "FINISHED"
    assert _info(run)["mlflow_offline"] and _info(run)["mlflow_status"] == "offline"
    if fault == "read-only":  # the store comes back: sync fills the same run, each point once
        _make_read_only(db, False)  # (this process's pooled connections stay read-only: sync in another)
        sync = subprocess.run(
            [sys.executable, "-m", "fsanet.cli", "mlflow", "sync", str(run)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=240,
        )
        assert sync.returncode == 0, sync.stderr[-2000:]
        assert f"existing run {result.mlflow_run_id}" in sync.stdout
        client = _client(tmp_path)
        _assert_each_point_once(client, result.mlflow_run_id, list(range(1, 13)))
        assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"


def test_a_store_deleted_before_evaluation_is_an_error_not_a_new_store(tmp_path, capsys):
    from fsanet.cli import main

    cfg = _cfg(tmp_path, "train.max_iters=4")
    run = tmp_path / "run"
    _train(cfg, run)
    db = tmp_path / "mlflow.db"
    db.unlink()
    with pytest.raises(FileNotFoundError, match=f"MLflow store {db} does not exist") as err:
        evaluate(
            eval_config(run / "model.pt"),
            run / "model.pt",
            tmp_path / "eval",
            build_model=build_tiny_model,
            build_dataset=build_tiny_dataset,
        )
    assert "\n" not in str(err.value) and "tracking.uri" in str(err.value)
    assert not db.exists()
    # through the CLI: one line, exit status 2
    capsys.readouterr()
    assert main(["-q", "eval", "--checkpoint", str(run / "model.pt"), "--out-dir", str(tmp_path / "e")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(db) in lines[0] and lines[0].startswith("fsanet eval: error:")
    assert not db.exists()


def test_a_study_marker_whose_store_is_gone_is_an_error(tmp_path):
    db = tmp_path / "mlflow.db"
    marker = tmp_path / "study.json"
    init_study("fsanet/faults", "s", marker, uri=f"sqlite:///{db}")
    db.unlink()
    cfg = OmegaConf.merge(OmegaConf.structured(TrackingConfig), {"study_marker": str(marker)})
    with pytest.raises(FileNotFoundError, match=f"{db} does not exist.*fsanet mlflow init"):
        Tracker(cfg, tmp_path / "run", "r")
    assert not db.exists()
    # a training run without a marker may create a store
    fresh = tmp_path / "new" / "mlflow.db"
    t = Tracker(
        OmegaConf.merge(OmegaConf.structured(TrackingConfig), {"uri": f"sqlite:///{fresh}"}),
        tmp_path / "run2",
        "r",
    )
    t.finish()
    assert fresh.is_file() and not t.offline


# --------------------------------------------------------------------------------------------
# fsanet mlflow sync
# --------------------------------------------------------------------------------------------
def test_sync_uploads_offline_train_and_eval_runs_once(tmp_path, capsys):
    from fsanet.cli import main

    run = tmp_path / "run"
    cfg = _cfg(tmp_path, "train.max_iters=4", uri=f"http://127.0.0.1:{_closed_port()}")
    result = _train(cfg, run)
    assert result.mlflow_run_id is None and (run / "mlflow_offline" / "run.json").is_file()
    evaluate(
        eval_config(run / "model.pt"),
        run / "model.pt",
        run / "eval" / "val",
        build_model=build_tiny_model,
        build_dataset=build_tiny_dataset,
    )
    assert (run / "eval" / "val" / "mlflow_offline" / "run.json").is_file()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()
    assert main(["mlflow", "sync", str(run), "--uri", uri]) == 2  # no store there yet: not created
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "mlflow.db").exists()
    init_study("fsanet/init", "study", tmp_path / "study.json", uri=uri)

    assert main(["mlflow", "sync", str(run), "--uri", uri]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all("new run" in line for line in out)
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("fsanet/faults")
    runs = {r.data.tags["fsanet.kind"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"train", "eval"}
    tr, ev = runs["train"], runs["eval"]
    assert tr.info.status == "FINISHED" and ev.info.status == "FINISHED"
    assert tr.info.run_name == json.loads((run / "run_info.json").read_text())["run_name"]
    assert ev.data.tags["mlflow.parentRunId"] == tr.info.run_id  # nested under its (synced) training
    assert tr.data.params == json.loads((run / "mlflow_offline" / "params.json").read_text())
    _assert_each_point_once(client, tr.info.run_id, [1, 2, 3, 4])
    assert {a.path for a in client.list_artifacts(tr.info.run_id)} == {
        "config.yaml",
        "run_info.json",
        "train_log.json",
    }
    assert "eval/metrics.json" in {a.path for a in client.list_artifacts(ev.info.run_id, "eval")}
    assert "test/mIoU" in ev.data.metrics
    synced = json.loads((run / "mlflow_offline" / "run.json").read_text())["synced"]
    assert synced["run_id"] == tr.info.run_id and synced["complete"]

    # again: nothing is added
    assert main(["mlflow", "sync", str(run), "--uri", uri]) == 0
    again = capsys.readouterr().out
    assert again.count("added 0 params, 0 metric points, 0 tags, 0 artifacts") == 2 and "new run" not in again
    assert len(client.search_runs([exp.experiment_id])) == 2
    _assert_each_point_once(client, tr.info.run_id, [1, 2, 3, 4])


def test_a_resumed_run_uploads_the_offline_copy_of_its_earlier_segment(tmp_path):
    """Segment 1 runs offline (server down), segment 2 reaches the store: one run with every point once."""
    run = tmp_path / "run"
    offline = _cfg(tmp_path, uri=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(Killed):
        _train(offline, run, callback=_kill_at(6))
    assert _info(run)["mlflow_run_id"] is None
    init_study("fsanet/faults", "study", tmp_path / "study.json", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = _train(_cfg(tmp_path), run)
    client = _client(tmp_path)
    _assert_each_point_once(client, result.mlflow_run_id, list(range(1, 13)))
    assert (
        json.loads((run / "mlflow_offline" / "run.json").read_text())["synced"]["run_id"]
        == result.mlflow_run_id
    )
    exp = client.get_experiment_by_name("fsanet/faults")
    assert len(client.search_runs([exp.experiment_id], "tags.`fsanet.kind` = 'train'")) == 1


# --------------------------------------------------------------------------------------------
# a fresh store opened by many processes at once
# --------------------------------------------------------------------------------------------
OPENER = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from fsanet.config import TrackingConfig
from fsanet.tracking import Tracker
import mlflow  # imported before the start line, so that the processes open the store together
go = Path(sys.argv[3])
Path(sys.argv[2]).mkdir(parents=True)
(Path(sys.argv[2]) / "ready").touch()
while not go.exists():
    time.sleep(0.005)
cfg = OmegaConf.merge(OmegaConf.structured(TrackingConfig), {"uri": sys.argv[1], "experiment": "fsanet/race",
                      "retries": 2, "backoff_s": 0.05})
t = Tracker(cfg, sys.argv[2], "r" + sys.argv[4])
t.log_metrics({"x": 1.0}, step=1)
t.finish()
print("offline" if t.offline else t.run_id)
"""


def test_many_processes_on_a_fresh_store_all_stay_online(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    n = 6
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, uri, str(tmp_path / f"run{i}"), str(go), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    deadline = time.time() + 180
    while time.time() < deadline and not all((tmp_path / f"run{i}" / "ready").exists() for i in range(n)):
        time.sleep(0.05)  # every process has imported MLflow and waits at the start line
    go.touch()
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    assert [o[0].strip() for o in outs].count("offline") == 0, [o[1][-1500:] for o in outs]
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("fsanet/race")
    assert len(client.search_runs([exp.experiment_id])) == n
    assert not any((tmp_path / f"run{i}" / "mlflow_offline").exists() for i in range(n))


# --------------------------------------------------------------------------------------------
# credentials
# --------------------------------------------------------------------------------------------
def test_redact_and_split_credentials():
    assert redact("http://user:pw1@host:5000/x") == "http://user:***@host:5000/x"
    assert redact("https://tok123@host") == "https://***@host"
    assert (
        redact("error at http://u:p@ss@host/api and ?token=abc&x=1")
        == "error at http://u:***@host/api and ?token=***&x=1"
    )
    assert redact("sqlite:////a/b/mlflow.db") == "sqlite:////a/b/mlflow.db"
    assert split_credentials("http://user:p%40ss@host:5000") == ("http://host:5000", "user", "p@ss")
    assert split_credentials("http://user:***@host") == ("http://host", "user", None)
    assert split_credentials("http://host") == ("http://host", None, None)


def _files_without(folder: Path, secret: str) -> None:
    leaks = [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, f"{secret!r} found in {leaks}"


@pytest.mark.parametrize("where", ["config", "environment"])
def test_a_password_in_the_tracking_uri_is_never_written_or_logged(
    tmp_path, where, monkeypatch, clean_credentials, caplog, capfd
):
    port = _closed_port()
    uri = f"http://user:{SECRET}@127.0.0.1:{port}"
    if where == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = _cfg(tmp_path, "train.max_iters=4", "tracking.retries=1", uri="null")
    else:
        cfg = _cfg(tmp_path, "train.max_iters=4", "tracking.retries=1", uri=uri)
    run = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        _train(cfg, run)
        evaluate(
            eval_config(run / "model.pt"),
            run / "model.pt",
            run / "eval" / "val",
            build_model=build_tiny_model,
            build_dataset=build_tiny_dataset,
        )
    out, err = capfd.readouterr()
    _files_without(tmp_path, SECRET)
    assert SECRET not in caplog.text and SECRET not in out + err
    assert any("127.0.0.1" in r.getMessage() and "mlflow_offline" in r.getMessage() for r in caplog.records)
    # MLflow gets the credentials through its own variables; the URI it is given has none
    assert (
        os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET and os.environ["MLFLOW_TRACKING_USERNAME"] == "user"
    )
    assert SECRET not in os.environ.get("MLFLOW_TRACKING_URI", "")
    info = _info(run)
    assert info["mlflow_tracking_uri"] == f"http://user:***@127.0.0.1:{port}"
    if where == "config":
        assert info["config"]["tracking"]["uri"] == f"http://user:***@127.0.0.1:{port}"


def test_params_and_tags_in_a_sqlite_store_hold_no_password(tmp_path, monkeypatch, clean_credentials):
    """The password sits in the environment ($MLFLOW_TRACKING_URI of another server, and
    $MLFLOW_TRACKING_PASSWORD) and in a config string; none of it reaches the store or the files."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    cfg = _cfg(tmp_path, "train.max_iters=4", f"tracking.run_name=see https://bob:{SECRET}@example.org/x")
    run = tmp_path / "run"
    result = _train(cfg, run)
    client = _client(tmp_path)
    logged = client.get_run(result.mlflow_run_id).data
    text = json.dumps({"params": logged.params, "tags": logged.tags})
    assert SECRET not in text and len(logged.params) > 50
    assert "https://bob:***@example.org/x" in text
    _files_without(run, SECRET)


# --------------------------------------------------------------------------------------------
# stale temporary files
# --------------------------------------------------------------------------------------------
def test_stale_temporary_files_are_removed_when_the_run_starts_again(tmp_path, caplog):
    cfg = _cfg(tmp_path, "tracking.enabled=false")
    run = tmp_path / "run"
    with pytest.raises(Killed):
        _train(cfg, run, callback=_kill_at(6))
    stale = [
        run / "checkpoints" / ".iter_000008.pt.tmp-k1ll3d.pt",
        run / ".run_info.json.tmp-abc.json",
        run / "mlflow_offline" / "artifacts" / ".config.yaml.tmp-x.yaml",
    ]
    keep = [run / ".hidden", run / "notes.tmp-1", run / "eval" / "val" / ".metrics.json.tmp-1.json"]
    for path in stale + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    with caplog.at_level(logging.INFO, logger="fsanet.engine.checkpoint"):
        assert _train(cfg, run).resumed_from == 4
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    lines = [r.getMessage() for r in caplog.records if "stale temporary" in r.getMessage()]
    assert (
        len(lines) == 1
        and "3 stale temporary file(s)" in lines[0]
        and ".iter_000008.pt.tmp-k1ll3d.pt" in lines[0]
    )


# --------------------------------------------------------------------------------------------
# real processes (slow)
# --------------------------------------------------------------------------------------------
RUNNER = """
import signal, sys, time
# Ctrl-C raises KeyboardInterrupt, as in a terminal: a launcher that runs the suite in the background
# (`nohup make test-slow &`) leaves SIGINT ignored, and a child inherits that
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
from engine_stubs import build_tiny_dataset, build_tiny_model
from fsanet.cli import setup_logging
from fsanet.config import load_config
from fsanet.engine.train import train
setup_logging(-1)  # as `fsanet -q`
delay, hold_at = float(sys.argv[3]), int(sys.argv[4])
train(load_config([], sys.argv[5:]), sys.argv[2], build_model=build_tiny_model,
      build_dataset=build_tiny_dataset, callback=lambda it: time.sleep(120 if it == hold_at else delay))
print("done")
"""


def _runner(tmp: Path, run: Path, delay: float, *overrides: str, hold_at: int = 0) -> subprocess.Popen:
    """A training of 40 iterations in a subprocess, sleeping ``delay`` s after each iteration and 120 s
    after iteration ``hold_at`` (0: never), so that a signal sent before then cannot arrive too late."""
    args = [
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment=fsanet/faults",
        "train.progress=false",
        "train.batch_size=4",
        "data.num_workers=0",
        "train.max_iters=40",
        "train.log_interval=1",
        "train.ckpt_interval=4",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(TESTS), str(run), str(delay), str(hold_at), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        done = [i for i, _ in list_checkpoints(run)]
        if done and done[-1] >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint ≥ {at_least} in time (exit {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["KILL", "INT", "TERM"])
def test_a_real_process_stopped_by_a_signal_then_rerun(tmp_path, sig):
    """A real training process stopped by SIGKILL, SIGINT or SIGTERM, then rerun: every point in the
    store once and equal to train_log.json, the run FINISHED, train_seconds over both segments."""
    run = tmp_path / "run"
    # held at iteration 16: on a busy host the 40 iterations could otherwise end before the signal
    proc = _runner(tmp_path, run, 0.05, "tracking.flush_interval=1000", hold_at=16)
    _wait_for_checkpoint(run, proc, 8)
    time.sleep(0.1)  # some points past the checkpoint
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "done" not in out, "the process finished before the signal"
    info = _info(run)
    client = _client(tmp_path)
    if sig == signal.SIGKILL:
        assert info["status"] == "running"
        last = max(i for i, _ in list_checkpoints(run))
        assert set(range(1, last + 1)) <= set(_steps(client, info["mlflow_run_id"], "train/loss"))
    else:
        assert info["status"] == "interrupted", err[-2000:]
        assert client.get_run(info["mlflow_run_id"]).info.status == "KILLED"
        assert "Traceback" not in err or "KeyboardInterrupt" in err
    first = info.get("train_seconds") or 0.0
    proc = _runner(tmp_path, run, 0.0, "tracking.flush_interval=1000")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "done" in out, err[-2000:]
    assert err.strip() == ""  # `-q`: nothing to say
    info = _info(run)
    assert info["status"] == "finished" and info["segments"] == 2
    assert info["train_seconds"] >= min(first, 8 * 0.05)
    _assert_each_point_once(client, info["mlflow_run_id"], list(range(1, 41)))
    assert _log_steps(run) == list(range(1, 41))
    assert client.get_run(info["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_real_quiet_process_whose_store_is_deleted_prints_one_line(tmp_path):
    run = tmp_path / "run"
    proc = _runner(tmp_path, run, 0.05, "tracking.flush_interval=1")
    _wait_for_checkpoint(run, proc, 4)
    (tmp_path / "mlflow.db").unlink()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "done" in out, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "WARNING" in lines[0] and "mlflow_offline" in lines[0], err[-3000:]
    metrics = json.loads((run / "mlflow_offline" / "metrics.json").read_text())
    assert sorted(m["step"] for m in metrics if m["key"] == "train/loss") == list(range(1, 41))
