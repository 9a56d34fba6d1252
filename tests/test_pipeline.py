"""The study DAG: lint, formatting, the SLURM dry run, and the smoke study end to end (≤ 2 min)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMOKE = "studies/smoke"  # where the smoke study writes (profile key study_dir: studies/<study>)
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


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the real check runs through `make gpu-check`
        return
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path / "out")],
        cwd=ROOT,
        env={**_env(), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gpu-check: no CUDA device (torch" in proc.stdout and "nothing to check" in proc.stdout


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
        [
            str(BIN / "snakemake"),
            "-n",
            "-p",
            "--profile",
            "profiles/slurm",
            "all_tables",
            "--configfile",
            "params/profiles/paper.yaml",
        ],
        repo,
        180,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "slurm" in out.lower()
    # 8 methods x 3 seeds x 4 datasets, plus 6 extra FsaNet bands per dataset
    stats = {
        ln.split()[0]: int(ln.split()[1])
        for ln in out.splitlines()
        if len(ln.split()) == 2 and ln.split()[1].isdigit()
    }
    assert stats["train"] == 4 * (8 * 3 + 6), stats
    # every training is one torchrun of 4 processes (one per GPU); rank 0 evaluates. (Threads are
    # resolved on the compute node, whose cores the job gets; a dry run here caps them at this host's.)
    trains = [ln.split("Shell command:")[-1].strip() for ln in out.splitlines() if " -q train " in ln]
    assert len(trains) == stats["train"], out[-3000:]
    assert all(
        ln.startswith("torchrun --standalone --nproc-per-node 4 -m fsanet.cli -q train ") for ln in trains
    ), trains[0]
    assert all("--eval-out " in ln for ln in trains), trains[0]


def test_default_profile_dry_run_plans_the_study(tmp_path):
    repo = _copy_pipeline(tmp_path)
    res = _run([str(BIN / "snakemake"), "-n", "all_tables"], repo, 180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    stats = {
        ln.split()[0]: int(ln.split()[1])
        for ln in out.splitlines()
        if len(ln.split()) == 2 and ln.split()[1].isdigit()
    }
    # (8 methods + FsaNet LinSoftmax) x 3 seeds + 5 extra FsaNet (dot) bands x 3 seeds, each train job
    # evaluating its own model; one process per NL seed evaluates its 5 truncation bands
    assert stats["train"] == 9 * 3 + 5 * 3 and stats["evaluate_truncation"] == 3, stats
    assert "evaluate" not in stats, stats
    assert stats["findings"] == 1
    assert stats["mlflow_init"] == 1 and stats["prepare_data"] == 1


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("methods=[fcn,segnext]", "profile key 'methods': unknown name 'segnext'"),
        ("datasets=[synthetic,kitti]", "profile key 'datasets': unknown name 'kitti'"),
        ("band_seed=[0]", "band_seed"),  # a misspelt key (band_seeds) is refused, not ignored
        ("fsanet_bands=[2x2]", "2x2"),
        ("study_dir=/tmp/elsewhere", "profile key 'study_dir'"),
        ("study_dir=studies/../results", "profile key 'study_dir'"),
    ],
)
def test_profile_with_a_wrong_key_or_name_is_refused_at_parse_time(tmp_path, override, needle):
    repo = _copy_pipeline(tmp_path)
    res = _run([str(BIN / "snakemake"), "-n", "all_tables", "--config", override], repo, 120)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and needle in out, out[-3000:]
    assert "Job stats" not in out  # nothing was planned
    line = next(ln for ln in out.splitlines() if needle in ln)
    assert line.startswith("profile"), line  # one line of ours, not a schema dump


def test_smoke_study_end_to_end(tmp_path):
    """The smoke profile runs the whole DAG (data -> mlflow -> train -> eval -> tables) in ≤ 2 min."""
    repo = _copy_pipeline(tmp_path)
    store = tmp_path / "mlflow.db"
    start = time.perf_counter()
    res = _run(
        [str(BIN / "snakemake"), "--cores", "2", "all_tables", "--configfile", "params/profiles/smoke.yaml"],
        repo,
        300,
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
    )
    elapsed = time.perf_counter() - start
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    print(f"smoke study: {elapsed:.1f} s")

    assert not (repo / "results").exists()  # nothing of the default study's folders is touched
    summary = json.loads((repo / SMOKE / "results/metrics/summary.json").read_text())
    runs = summary["runs"]
    keys = {
        "dataset",
        "model",
        "band",
        "eval_band",
        "seed",
        "retrained",
        "mIoU",
        "mAcc",
        "aAcc",
        "mlflow_run_id",
    }
    assert all(keys <= r.keys() for r in runs)
    # 3 methods (FsaNet at its 2x2 default band) + FsaNet 1x1 and full + 2 NL truncations
    assert len(runs) == 7
    truncated = [r for r in runs if not r["retrained"]]
    assert {tuple(r["eval_band"]) for r in truncated} == {(0, 1, 0, 1), (0, 2, 0, 2)}
    assert all(r["model"] == "nonlocal" and r["band"] is None for r in truncated)
    assert {tuple(r["band"]) if r["band"] else None for r in runs if r["model"] == "fsanet"} == {
        (0, 1, 0, 1),
        (0, 2, 0, 2),
        None,
    }

    tables = repo / SMOKE / "results/tables"
    for name in ("efficiency", "ablation", "methods_synthetic", "per_class_synthetic"):
        for ext in ("md", "tex", "csv"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, name
    assert "synthetic" in (tables / "ablation.md").read_text().lower()
    assert "Provenance" in (tables / "methods_synthetic.md").read_text()
    for plot in ("ablation_synthetic.png", "efficiency_scaling.png", "qualitative_synthetic.png"):
        assert (repo / SMOKE / "results/plots" / plot).read_bytes()[:4] == b"\x89PNG"

    # MLflow: the study is the parent, trainings are its children, evaluations nest under their training
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    df = mlflow.search_runs(experiment_names=["fsanet/smoke"], output_format="list")
    kind = {r.info.run_id: r.data.tags.get("fsanet.kind", r.data.tags.get("fsanet.role")) for r in df}
    parent_of = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in df}
    parents = [r for r in df if r.data.tags.get("fsanet.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    trains = [r for r in df if kind[r.info.run_id] == "train"]
    evals = [r for r in df if kind[r.info.run_id] == "eval"]
    assert len(trains) == 5 and len(evals) == 7
    assert all(parent_of[r.info.run_id] == parent.info.run_id for r in trains)
    assert all(kind[parent_of[r.info.run_id]] == "train" for r in evals)
    assert all(r.data.tags["fsanet.study_run_id"] == parent.info.run_id for r in trains + evals)
    # params carry only what the model reads
    for r in trains:
        has_band = "model.attention.band" in r.data.params
        assert has_band == (r.data.params["model.name"] == "fsanet"), r.data.params["model.name"]
        if r.data.params["model.name"] == "fcn":
            assert not any(k.startswith("model.attention.") for k in r.data.params)
    # the parent holds the results: tables as artifacts, per-group mIoU and findings as metrics
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "results/tables")}
    assert {
        "results/tables/methods_synthetic.md",
        "results/tables/ablation.md",
        "results/tables/findings.md",
        "results/tables/findings.json",
    } <= logged
    assert any(k.startswith("mIoU_mean/synthetic/nonlocal") for k in parent.data.metrics)
    assert "findings/pass" in parent.data.metrics and parent.info.status == "FINISHED"

    # an immediate rerun has nothing to do
    res = _run(
        [str(BIN / "snakemake"), "-n", "all_tables", "--configfile", "params/profiles/smoke.yaml"],
        repo,
        120,
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
    )
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-2000:]


TWO_DATASETS = """\
# Two datasets in one study: the smoke synthetic set and the fake Cityscapes miniature (tiny R50).
profile: two
experiment: fsanet/two
study: two
data_root: studies/smoke/data
datasets: [synthetic, cityscapes]
fsanet_configs:
  synthetic:
    - params/data/synthetic.yaml
    - params/train/cpu.yaml
    - params/profiles/smoke_overrides.yaml
  cityscapes:
    - params/data/cityscapes.yaml
    - params/train/cpu.yaml
    - params/profiles/tiny_r50.yaml
train_overrides: []
eval_overrides: ["eval.figures=false"]
train_threads: 1
gpus_per_job: 0
train_procs: null
methods: [fcn, nonlocal, fsanet]
method_seeds: [0]
fsanet_default_band: "2"
fsanet_modes: [dot]
fsanet_band_mode: dot
fsanet_bands: ["1", "2"]
band_seeds: [0]
truncation_model: nonlocal
truncation_bands: ["1"]
bench_params: null
bench_overrides: ["bench.modules=[fsa,nonlocal]", "bench.channels=16", "bench.paper_size=[16,16]",
                  "bench.paper_bands=[[0,2,0,2]]", "bench.sweep_sizes=[8,16]", "bench.repeats=4",
                  "bench.warmup=1", "bench.rounds=2"]
"""
TINY_R50 = """\
data:
  root: studies/smoke/data/cityscapes
  check_split_sizes: false
  cache: false
  base_scale: [64, 32]
  crop_size: [32, 64]
  ratio_range: [1.0, 1.0]
  photometric_distortion: false
model:
  backbone: resnet50_v1c
  pretrained: null
  head_channels: 16
  aux_channels: 8
train:
  max_iters: 2
  batch_size: 1
  log_interval: 1
  ckpt_interval: 2
eval:
  num_qualitative: 1
"""


@pytest.mark.slow
def test_two_dataset_study_runs_to_the_end(tmp_path):
    """synthetic + fake Cityscapes (archives as the official ones, tiny R50) through all_tables: per-dataset
    tables and plots, one summary, findings and the MLflow publish step."""
    from fakes import pack_fake_archives

    repo = _copy_pipeline(tmp_path)
    (repo / "params/profiles/two.yaml").write_text(TWO_DATASETS)
    (repo / "params/profiles/tiny_r50.yaml").write_text(TINY_R50)
    archives = tmp_path / "archives_by_hand"
    pack_fake_archives("cityscapes", archives)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    res = _run(
        [
            str(BIN / "fsanet"),
            "-q",
            "data",
            "download",
            "cityscapes",
            "--root",
            "studies/smoke/data",
            "--from",
            str(archives),
            "--config",
            "params/data/cityscapes.yaml",
        ],
        repo,
        120,
        **env,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = _run(
        [str(BIN / "snakemake"), "--cores", "2", "all_tables", "--configfile", "params/profiles/two.yaml"],
        repo,
        900,
        **env,
    )
    two = repo / "studies/two"  # the study 'two' writes under studies/two (profile key study_dir)
    logs = (
        "".join(p.read_text()[-1500:] for p in sorted((two / "logs").rglob("*.log"))[-6:])
        if (two / "logs").is_dir()
        else ""
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + logs
    for ds in ("synthetic", "cityscapes"):
        assert (two / f"results/plots/ablation_{ds}.png").read_bytes()[:4] == b"\x89PNG"
        assert (two / f"results/plots/qualitative_{ds}.png").read_bytes()[:4] == b"\x89PNG"
        assert (two / f"results/tables/methods_{ds}.md").stat().st_size > 0
    summary = json.loads((two / "results/metrics/summary.json").read_text())
    assert {r["dataset"] for r in summary["runs"]} == {"synthetic", "cityscapes"}
    assert "ResNet-50" in (two / "results/tables/methods_cityscapes.md").read_text()
    metrics = json.loads((two / "metrics/study.json").read_text())
    assert set(metrics) == {"synthetic", "cityscapes"}
    assert (two / "results/mlflow/two.published.json").is_file()


@pytest.mark.slow
def test_train_rule_launches_two_ddp_processes_on_cpu(tmp_path):
    """`train_procs: 2` makes the train rule a 2-process torchrun (gloo on CPU) that trains and evaluates."""
    repo = _copy_pipeline(tmp_path)
    run = f"{SMOKE}/results/runs/synthetic/fcn/band~none/mode~none/seed~0"
    res = _run(
        [
            str(BIN / "snakemake"),
            "--cores",
            "2",
            "-p",
            f"{run}/eval/none/metrics.json",
            "--configfile",
            "params/profiles/smoke.yaml",
            "--config",
            "train_procs=2",
        ],
        repo,
        300,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, (
        out[-4000:]
        + (repo / SMOKE / "logs/train/synthetic/fcn/band~none/mode~none/seed~0.log").read_text()[-4000:]
    )
    assert "torchrun --standalone --nproc-per-node 2 -m fsanet.cli -q train" in out
    info = json.loads((repo / run / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "finished"
    metrics = json.loads((repo / run / "eval/none/metrics.json").read_text())
    assert metrics["model"] == "fcn" and metrics["num_images"] == 8


@pytest.mark.slow
def test_dvc_exp_run_trains_only_the_new_band(tmp_path):
    """`dvc exp run -S` on a changed band list reruns only the new band's jobs (smoke-sized study)."""
    repo = _copy_pipeline(tmp_path)
    # the smoke settings as the default study, which writes the folders that dvc.yaml names (results/, …)
    smoke = (repo / "params/profiles/smoke.yaml").read_text()
    assert "\nstudy: smoke\n" in smoke
    (repo / "params/profiles/default.yaml").write_text(
        smoke.replace("\nstudy: smoke\n", "\nstudy: default\n")
    )
    shutil.copytree(ROOT / "fsanet", repo / "fsanet")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"],
    ):
        assert _run(cmd, repo, 60).returncode == 0
    res = _run([str(BIN / "dvc"), "repro", "study"], repo, 600, **env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _run(["git", "add", "dvc.lock", "metrics/study.json"], repo, 60).returncode == 0
    assert (
        _run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock"], repo, 60
        ).returncode
        == 0
    )
    res = _run(
        [
            str(BIN / "dvc"),
            "exp",
            "run",
            "-S",
            'params/profiles/default.yaml:fsanet_bands=["1","2","4","full"]',
            "study",
        ],
        repo,
        600,
        **env,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    logs = sorted((repo / ".snakemake/log").glob("*.log"))
    last = logs[-1].read_text()
    assert "band~4" in last
    assert last.count("rule train:") == 1, last  # only the new FsaNet 4x4 training

    # both main and the experiment report real numbers, and the diff has the new band's row
    res = _run([str(BIN / "dvc"), "exp", "show", "--json"], repo, 120)
    assert res.returncode == 0, res.stderr[-2000:]
    shown = json.loads(res.stdout)

    def metric(entry: dict, row: str) -> float:
        data = entry["data"]["metrics"]["metrics/study.json"]["data"]
        return data["synthetic"]["retrained"][row]["mIoU_mean"]

    main = next(e for e in shown if e["rev"] == "workspace" or e.get("name") == "main" or e["rev"] == "HEAD")
    assert isinstance(metric(main, "nonlocal"), float)
    experiments = [x for e in shown for x in (e.get("experiments") or []) for x in x.get("revs", [])]
    assert experiments and any(isinstance(metric(x, "fsanet_dot_4x4"), float) for x in experiments), shown
    res = _run([str(BIN / "dvc"), "metrics", "show", "--json"], repo, 120)
    assert res.returncode == 0 and "mIoU_mean" in res.stdout, res.stderr[-2000:]

    # dvc plots show with the offline page: the page's own scripts, no CDN tag (`make plots`)
    from fsanet.report.dvc_plots import _PAGE

    template = tmp_path / "page.html"
    template.write_text(_PAGE.format(versions="test", scripts="<script>function vegaEmbed(){}</script>"))
    res = _run(
        [str(BIN / "dvc"), "plots", "show", "--html-template", str(template), "-o", "plots_out"], repo, 120
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    page = (repo / "plots_out" / "index.html").read_text()
    assert "function vegaEmbed(){}" in page and "cdn.jsdelivr" not in page and "ablation_synthetic" in page
