"""The study DAG: lint, formatting, the SLURM dry run, and the smoke study end to end (≤ 2 min)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PIPELINE_FILES = ("Snakefile", "workflow", "params", "profiles", "environment.yml", "dvc.yaml", ".dvc")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1", MPLBACKEND="Agg")
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _copy_pipeline(dest: Path) -> Path:
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def test_snakemake_lint_is_clean():
    res = _run([str(BIN / "snakemake"), "--lint"], ROOT, 120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dvc_yaml_is_valid_and_wraps_the_study():
    res = _run([str(BIN / "dvc"), "stage", "list"], ROOT, 120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # one stage: the study. (A smoke stage shared results/ with it and clobbered the study's markers.)
    assert [line.split()[0] for line in res.stdout.splitlines() if line.strip()] == ["study"], res.stdout


def test_snakefmt_check_is_clean():
    res = _run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], ROOT, 120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_slurm_profile_dry_run_submits_the_paper_study(tmp_path):
    repo = _copy_pipeline(tmp_path)
    res = _run(
        [str(BIN / "snakemake"), "-n", "--profile", "profiles/slurm", "all_tables",
         "--configfile", "params/profiles/paper.yaml"],
        repo, 180,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "slurm" in out.lower()
    # 8 methods x 3 seeds x 4 datasets, plus 6 extra FsaNet bands per dataset
    stats = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines()
             if len(ln.split()) == 2 and ln.split()[1].isdigit()}
    assert stats["train"] == 4 * (8 * 3 + 6), stats


def test_default_profile_dry_run_plans_the_study(tmp_path):
    repo = _copy_pipeline(tmp_path)
    res = _run([str(BIN / "snakemake"), "-n", "all_tables"], repo, 180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    stats = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines()
             if len(ln.split()) == 2 and ln.split()[1].isdigit()}
    # (8 methods + FsaNet LinSoftmax) x 3 seeds + 5 extra FsaNet (dot) bands x 3 seeds, each train job
    # evaluating its own model; one process per NL seed evaluates its 5 truncation bands
    assert stats["train"] == 9 * 3 + 5 * 3 and stats["evaluate_truncation"] == 3, stats
    assert "evaluate" not in stats, stats
    assert stats["findings"] == 1
    assert stats["mlflow_init"] == 1 and stats["prepare_data"] == 1


def test_smoke_study_end_to_end(tmp_path):
    """The smoke profile runs the whole DAG (data -> mlflow -> train -> eval -> tables) in ≤ 2 min."""
    repo = _copy_pipeline(tmp_path)
    store = tmp_path / "mlflow.db"
    start = time.perf_counter()
    res = _run(
        [str(BIN / "snakemake"), "--cores", "2", "all_tables", "--configfile", "params/profiles/smoke.yaml"],
        repo, 300, MLFLOW_TRACKING_URI=f"sqlite:///{store}",
    )
    elapsed = time.perf_counter() - start
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    print(f"smoke study: {elapsed:.1f} s")

    summary = json.loads((repo / "results/metrics/summary.json").read_text())
    runs = summary["runs"]
    keys = {"dataset", "model", "band", "eval_band", "seed", "retrained", "mIoU", "mAcc", "aAcc", "mlflow_run_id"}
    assert all(keys <= r.keys() for r in runs)
    # 3 methods (FsaNet at its 2x2 default band) + FsaNet 1x1 and full + 2 NL truncations
    assert len(runs) == 7
    truncated = [r for r in runs if not r["retrained"]]
    assert {tuple(r["eval_band"]) for r in truncated} == {(0, 1, 0, 1), (0, 2, 0, 2)}
    assert all(r["model"] == "nonlocal" and r["band"] is None for r in truncated)
    assert {tuple(r["band"]) if r["band"] else None for r in runs if r["model"] == "fsanet"} == {
        (0, 1, 0, 1), (0, 2, 0, 2), None}

    tables = repo / "results/tables"
    for name in ("efficiency", "ablation", "methods_synthetic", "per_class_synthetic"):
        for ext in ("md", "tex", "csv"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, name
    assert "synthetic" in (tables / "ablation.md").read_text().lower()
    assert "Provenance" in (tables / "methods_synthetic.md").read_text()
    for plot in ("ablation.png", "efficiency_scaling.png", "qualitative_synthetic.png"):
        assert (repo / "results/plots" / plot).read_bytes()[:4] == b"\x89PNG"

    # every training and evaluation is in the store, children of the study's parent run
    with sqlite3.connect(store) as db:
        names = [r[0] for r in db.execute("select name from runs")]
        parents = db.execute("select count(*) from tags where key='mlflow.parentRunId'").fetchone()[0]
    assert len(names) >= 1 + 5 + 7 and parents >= 5 + 7

    # an immediate rerun has nothing to do
    res = _run([str(BIN / "snakemake"), "-n", "all_tables", "--configfile", "params/profiles/smoke.yaml"],
               repo, 120, MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-2000:]


@pytest.mark.slow
def test_dvc_exp_run_trains_only_the_new_band(tmp_path):
    """`dvc exp run -S` on a changed band list reruns only the new band's jobs (smoke-sized study)."""
    repo = _copy_pipeline(tmp_path)
    shutil.copy2(repo / "params/profiles/smoke.yaml", repo / "params/profiles/default.yaml")
    shutil.copytree(ROOT / "fsanet", repo / "fsanet")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        assert _run(cmd, repo, 60).returncode == 0
    res = _run([str(BIN / "dvc"), "repro", "study"], repo, 600, **env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _run(["git", "add", "dvc.lock"], repo, 60).returncode == 0
    assert _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock"],
                repo, 60).returncode == 0
    res = _run([str(BIN / "dvc"), "exp", "run", "-S",
                'params/profiles/default.yaml:fsanet_bands=["1","2","4","full"]', "study"], repo, 600, **env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    logs = sorted((repo / ".snakemake/log").glob("*.log"))
    last = logs[-1].read_text()
    assert "band~4" in last
    assert last.count("rule train:") == 1, last  # only the new FsaNet 4x4 training
