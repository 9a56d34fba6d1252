"""The MLflow UI shows the study's runs and their band params: a real server, a real headless Chromium.

The store is a small synthetic one made here (parent run "smoke study" with child runs made by
``fsanet.tracking``), or a copy of the SQLite store named by ``FSANET_MLFLOW_UI_STORE`` (a path to
``mlflow.db`` or a ``sqlite:///`` URI; the copy gets the view tag below, the original is never touched).

Child runs sit collapsed under their parent in the runs table, and param columns are hidden by
default. So the test saves a *shared view* on the experiment, which is what the UI's own "share view"
writes: an experiment tag ``mlflow.sharedViewState.<key>`` holding the view state as JSON (columns
``params.`model.attention.band``` etc., runs grouped by that param), and opens
``#/experiments/<id>/runs?viewStateShareKey=<key>``. Chromium (``apt-get install -y chromium``;
installed by the test when missing and apt is usable, otherwise the test fails) dumps the DOM and takes
``results/screenshots/mlflow_runs.png``. Everything listens on 127.0.0.1 only, with bounded timeouts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "results" / "screenshots" / "mlflow_runs.png"
BAND_PARAM = "model.attention.band"
SHARE_KEY = "fsanet-band-view"
STUDY = "smoke study"
ENV = {
    **os.environ,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GIT_PYTHON_REFRESH": "quiet",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--virtual-time-budget=15000",
]


# --------------------------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------------------------
def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium() -> str:
    """The chromium executable; installs the Debian package when missing and apt is usable, else fails."""
    found = _find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**ENV, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            [apt, "install", "-y", "-q", "chromium"],
            [apt, "update", "-q"],
            [apt, "install", "-y", "-q", "chromium"],
        ):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
            found = _find_chromium()
            if found:
                return found
    pytest.fail(
        "headless Chromium is needed for the MLflow UI test but `chromium` is not on PATH and could not "
        "be installed (needs apt-get as root): run `apt-get install -y chromium`"
    )


def browse(url: str, profile: Path, screenshot: Path, height: int) -> str:
    """Load ``url`` in headless Chromium; returns the rendered DOM and writes a PNG screenshot."""
    cmd = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size=1600,{height}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-2000:]}"
    assert screenshot.is_file(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"
    return done.stdout


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------
def synthetic_store(folder: Path) -> str:
    """A sqlite store with parent "smoke study" and three child runs logged through fsanet.tracking, with
    the params a training logs (``run_params``)."""
    from fsanet.config import load_config, to_container
    from fsanet.engine.train import run_params
    from fsanet.tracking import Tracker, init_study

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    marker = folder / "study.json"
    init_study("fsanet/smoke", STUDY, marker, uri=uri)
    for model, band, miou in (
        ("fsanet", [0, 5, 0, 5], 61.0),
        ("fsanet", [0, 8, 0, 8], 63.5),
        ("nonlocal", None, 65.0),
    ):
        band_text = "null" if band is None else "[" + ",".join(map(str, band)) + "]"
        cfg = load_config(
            [],
            [
                f"tracking.study_marker={marker}",
                f"model.name={model}",
                f"model.attention.band={band_text}",
                "train.seed=0",
            ],
        )
        name = f"{model}_{'full' if band is None else f'{band[1]}x{band[3]}'}_s0"
        tracker = Tracker(cfg.tracking, folder / name, name, {"dataset": "synthetic", "model": model})
        tracker.log_params(run_params(to_container(cfg)))  # what a training logs: no band on non-local
        tracker.log_metrics({"test/mIoU": miou}, step=1, flush=True)
        tracker.finish("FINISHED")
        assert tracker.run_id and not tracker.offline, tracker.offline_reason
    return uri


def copied_store(spec: str, folder: Path) -> str:
    """A copy of the SQLite store named by FSANET_MLFLOW_UI_STORE (path or sqlite:/// URI)."""
    path = Path(spec[len("sqlite:///") :]) if spec.startswith("sqlite:///") else Path(spec)
    if "://" in spec and not spec.startswith("sqlite:///"):
        pytest.fail(
            f"FSANET_MLFLOW_UI_STORE={spec}: only a SQLite store (path or sqlite:/// URI) can be used"
        )
    if not path.is_file():
        pytest.fail(f"FSANET_MLFLOW_UI_STORE={spec}: no such SQLite file")
    copy = folder / "mlflow.db"
    shutil.copyfile(path, copy)
    return f"sqlite:///{copy}"


def study_runs(uri: str) -> tuple[str, str, list]:
    """(experiment id, parent run name, child runs) of the study's parent run (fsanet.role = parent)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    parents = client.search_runs(
        [e.experiment_id for e in experiments], filter_string="tags.`fsanet.role` = 'parent'", max_results=100
    )
    if not parents:
        pytest.fail(
            f"{uri}: no study parent run (tag fsanet.role = parent); make one with `fsanet mlflow init`"
        )
    parent = next((r for r in parents if r.data.tags.get("fsanet.study") == STUDY), parents[0])
    children = client.search_runs(
        [parent.info.experiment_id],
        max_results=1000,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    if not children:
        pytest.fail(f"{uri}: the parent run {parent.info.run_name} has no child runs")
    return parent.info.experiment_id, parent.info.run_name, children


def share_band_view(uri: str, experiment_id: str) -> None:
    """Save the shared view: band/model/mIoU columns, runs grouped by the band param."""
    from mlflow import MlflowClient

    state = {
        "selectedColumns": [
            f"params.`{BAND_PARAM}`",
            "params.`model.name`",
            "params.`train.seed`",
            "metrics.`test/mIoU`",
        ],
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": BAND_PARAM}],
        },
    }
    MlflowClient(tracking_uri=uri).set_experiment_tag(
        experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(state)
    )


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout_s:.0f}s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI, its uvicorn worker and job runner), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def mlflow_cli() -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]


def start_server(uri: str, folder: Path) -> tuple[str, subprocess.Popen]:
    """An MLflow server on a free 127.0.0.1 port for the store ``uri``, once healthy: (base URL, process)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                *mlflow_cli(),
                "server",
                "--backend-store-uri",
                uri,
                "--default-artifact-root",
                (folder / "artifacts").as_uri(),
                "--workers",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
            cwd=folder,
        )
    try:
        wait_healthy(base, proc, log)
    except BaseException:
        stop(proc)
        raise
    return base, proc


# --------------------------------------------------------------------------------------------
def test_mlflow_ui_lists_study_runs_with_band_params(tmp_path):
    from PIL import Image

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    spec = os.environ.get("FSANET_MLFLOW_UI_STORE")
    uri = copied_store(spec, store_dir) if spec else synthetic_store(store_dir)
    experiment_id, parent_name, children = study_runs(uri)
    share_band_view(uri, experiment_id)
    banded = [r for r in children if BAND_PARAM in r.data.params]
    assert banded, f"no child run of '{parent_name}' has the param {BAND_PARAM}"

    base, proc = start_server(uri, tmp_path)
    try:
        runs_url = f"{base}/#/experiments/{experiment_id}/runs"
        # default view: the parent run is listed (its children are folded under it)
        dom = browse(runs_url, tmp_path / "profile-default", tmp_path / "default.png", 900)
        assert parent_name in dom, f"parent run '{parent_name}' not in the runs table"
        # shared view grouped by band: every child run and its band value
        height = min(
            max(900, 400 + 45 * (2 * len(banded) + 2)), 6000
        )  # rows outside the viewport are not rendered
        shot = tmp_path / "mlflow_runs.png"
        dom = browse(f"{runs_url}?viewStateShareKey={SHARE_KEY}", tmp_path / "profile-band", shot, height)
        assert "share key" not in dom, "the UI rejected the shared view state"
        assert BAND_PARAM in dom, f"no {BAND_PARAM} column in the runs table"
        missing_runs = [r.info.run_name for r in banded if r.info.run_name not in dom]
        assert not missing_runs, f"runs not shown: {missing_runs}"
        bands = sorted({r.data.params[BAND_PARAM] for r in banded})
        missing_bands = [b for b in bands if f"Group: {b}" not in dom or dom.count(b) < 2]
        assert not missing_bands, f"band values not shown as groups and cells: {missing_bands}"
    finally:
        stop(proc)
    assert proc.poll() is not None, "mlflow server still running"

    with Image.open(shot) as im:
        assert im.size[0] == 1600 and im.size[1] >= 900
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.tmp-{os.getpid()}.png")
    shutil.copyfile(shot, tmp)
    os.replace(tmp, SCREENSHOT)


def test_mlflow_compare_view_shows_band_only_where_the_model_has_one(tmp_path):
    """Compare FsaNet 5×5 with non-local in the UI: the band row shows FsaNet's band and nothing for
    non-local (its run has no such param), the other params are equal, and mIoU is shown for both."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    uri = synthetic_store(store_dir)
    experiment_id, _, children = study_runs(uri)
    fsa = next(
        r
        for r in children
        if r.data.params.get("model.name") == "fsanet" and r.data.params.get(BAND_PARAM) == "[0, 5, 0, 5]"
    )
    nl = next(r for r in children if r.data.params.get("model.name") == "nonlocal")
    assert BAND_PARAM not in nl.data.params and "model.attention.mode" not in nl.data.params
    differ = sorted(
        k
        for k in set(fsa.data.params) | set(nl.data.params)
        if fsa.data.params.get(k) != nl.data.params.get(k)
    )
    assert differ == sorted(
        [
            "model.name",
            BAND_PARAM,
            "model.attention.mode",
            "model.attention.impl",
            "model.attention.nonlocal_mode",
            "model.attention.nonlocal_use_scale",
        ]
    ), differ

    base, proc = start_server(uri, tmp_path)
    try:
        runs = json.dumps([fsa.info.run_id, nl.info.run_id])
        url = f"{base}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment_id])}"
        dom = browse(url, tmp_path / "profile-compare", tmp_path / "compare.png", 2400)
    finally:
        stop(proc)
    assert fsa.info.run_name in dom and nl.info.run_name in dom, "the compared runs are not named"
    assert BAND_PARAM in dom, "no band row or axis"
    assert re.search(r"\[\s*0,\s*5,\s*0,\s*5\s*\]", dom), "FsaNet's band value is not shown"
    assert "nonlocal_mode" in dom, "the non-local-only params are not shown"
    assert "test/mIoU" in dom, "mIoU is not shown"
    for value in ("61", "65"):
        assert value in dom, f"mIoU {value} not shown"
