"""Study profiles: published train/test pairings of the paper profiles; every profile plans a dry run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import _copy_pipeline, _run

from fsanet.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "params" / "profiles"
BIN = Path(sys.executable).parent


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / f"{name}.yaml").read_text())


def _dataset_cfg(profile: str, dataset: str):
    files = _profile(profile)["fsanet_configs"][dataset]
    return load_config([ROOT / f for f in files], ["model.pretrained=null"])


def test_paper_cityscapes_is_the_769_pairing():
    """FsaNet and mmseg 769×769: scale (2049, 1025), crop 769, align_corners, slide 769 at stride 513."""
    cfg = _dataset_cfg("paper", "cityscapes")
    assert list(cfg.data.base_scale) == [2049, 1025] and list(cfg.data.crop_size) == [769, 769]
    assert list(cfg.data.ratio_range) == [0.5, 2.0]
    assert cfg.model.align_corners is True and cfg.eval.align_corners is True
    assert cfg.eval.mode.value == "slide"
    assert list(cfg.eval.crop_size) == [769, 769] and list(cfg.eval.stride) == [513, 513]
    # the OS8 feature map of a training crop is the benchmark's paper size
    bench = load_config([]).bench
    assert [math.ceil(s / 8) for s in cfg.data.crop_size] == list(bench.paper_size) == [97, 97]


def test_cityscapes_512x1024_profile_is_mmseg_default_pairing():
    """mmseg 512×1024: scale (2048, 1024), crop 512×1024, no align_corners, whole-image testing."""
    cfg = _dataset_cfg("paper_cityscapes_512x1024", "cityscapes")
    assert list(cfg.data.base_scale) == [2048, 1024] and list(cfg.data.crop_size) == [512, 1024]
    assert cfg.model.align_corners is False and cfg.eval.align_corners is False
    assert cfg.eval.mode.value == "whole"
    assert _profile("paper_cityscapes_512x1024")["datasets"] == ["cityscapes"]


@pytest.mark.parametrize("profile", ["paper", "paper_cityscapes_512x1024"])
def test_paper_profiles_pair_training_and_testing(profile):
    """A sliding window is the training crop; the model and the test resize agree on align_corners."""
    for dataset in _profile(profile)["datasets"]:
        cfg = _dataset_cfg(profile, dataset)
        assert cfg.model.align_corners == cfg.eval.align_corners, dataset
        if cfg.eval.mode.value == "slide":
            assert list(cfg.eval.crop_size) == list(cfg.data.crop_size), dataset


@pytest.mark.parametrize(
    "profile", sorted(p.stem for p in PROFILES.glob("*.yaml") if not p.stem.endswith("_overrides"))
)
def test_every_profile_plans_a_dry_run(profile, tmp_path):
    repo = _copy_pipeline(tmp_path)
    res = _run(
        [str(BIN / "snakemake"), "-n", "all_tables", "--configfile", f"params/profiles/{profile}.yaml"],
        repo,
        300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Job stats" in out or "Nothing to be done" in out, out[-3000:]


def test_paper_cost_table_counts_the_profiles_trainings(tmp_path):
    """`snakemake cost_table` renders one --trainings per dataset, counted from the study's own matrix."""
    repo = _copy_pipeline(tmp_path)
    res = _run(
        [str(BIN / "snakemake"), "-n", "-p", "cost_table", "--configfile", "params/profiles/paper.yaml"],
        repo,
        300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    prof = _profile("paper")
    extra_bands = set(prof["fsanet_bands"]) - {prof["fsanet_default_band"]}
    fsanet_band_runs = len(extra_bands) * len(prof["band_seeds"])
    method_runs = (len(prof["methods"]) - 1) * len(prof["method_seeds"]) + len(prof["fsanet_modes"]) * len(
        prof["method_seeds"]
    )
    expected = method_runs + fsanet_band_runs
    for ds in prof["datasets"]:
        assert f"--trainings {ds}={expected}" in out, out[-3000:]
    assert "--gpus-per-job 4" in out


def _plan(tmp_path, profile: str, *config: str) -> str:
    """`snakemake -n -p all_tables` on a copy of the pipeline with `profile` (and `--config` items): its
    output, after checking that the plan succeeded."""
    repo = _copy_pipeline(tmp_path)
    args = [
        str(BIN / "snakemake"),
        "-n",
        "-p",
        "all_tables",
        "--configfile",
        f"params/profiles/{profile}.yaml",
    ]
    res = _run(args + (["--config", *config] if config else []), repo, 300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    return out


def _ablation_commands(out: str) -> list[str]:
    """The planned `fsanet tables ablation`, `plots ablation` and `tables findings` command lines."""
    return [
        next(line for line in out.splitlines() if f"fsanet -q {command}" in line)
        for command in ("tables ablation", "plots ablation", "tables findings")
    ]


def test_transformers_profile_names_its_ablation_series(tmp_path):
    """The profile's retrained and truncated models reach the ablation table, its plot and findings;
    it writes only under studies/transformers/, so its FCN runs are not the default study's."""
    out = _plan(tmp_path, "transformers")
    for line in _ablation_commands(out):
        assert "--truncated-model segformer" in line and "--retrained-model segformer_fsa" in line, line
    trains = [line for line in out.splitlines() if "fsanet -q train" in line]
    assert len(trains) == 15 and all(
        "--out-dir studies/transformers/results/runs/synthetic/" in line
        and "> studies/transformers/logs/train/" in line
        for line in trains
    ), trains[:2]
    outputs = [p for line in out.splitlines() if line.strip().startswith("output:") for p in line.split()[1:]]
    assert outputs and all(p.rstrip(",").startswith("studies/transformers/") for p in outputs), outputs[:5]


def test_bands_profile_has_its_own_data_and_one_protocol(tmp_path):
    """The bands profile prepares its own two-stripe set and writes only under studies/bands/; every one
    of its trainings (FCN included) reads the same protocol: positional code and 4000 iterations."""
    cfg = _dataset_cfg("bands", "synthetic")
    assert cfg.data.synthetic.layout == "cells" and cfg.data.synthetic.cells == 2
    assert (
        cfg.data.root == "studies/bands/data/synthetic"
        and _profile("bands")["data_root"] == "studies/bands/data"
    )
    assert cfg.model.head_position == 6 and cfg.train.max_iters == 4000
    out = _plan(tmp_path, "bands")
    prepare = next(line for line in out.splitlines() if "fsanet -q data prepare" in line)
    assert "--root studies/bands/data " in prepare and "params/profiles/bands_overrides.yaml" in prepare
    trains = [line for line in out.splitlines() if "fsanet -q train" in line]
    assert len(trains) == 24 and all(
        "--config params/profiles/bands_overrides.yaml" in line
        and "--out-dir studies/bands/results/runs/synthetic/" in line
        for line in trains
    ), trains[:2]
    outputs = [p for line in out.splitlines() if line.strip().startswith("output:") for p in line.split()[1:]]
    assert outputs and all(p.rstrip(",").startswith("studies/bands/") for p in outputs), outputs[:5]


def test_a_band_model_is_truncated_from_its_full_band_runs(tmp_path):
    """`truncation_model: fsanet` truncates FsaNet trained at the full band in the band mode (not a run
    at band 'none'), evaluates it untruncated too (the series' full point), and hands the band mode to
    the ablation table, its plot and the findings."""
    out = _plan(tmp_path, "smoke", "truncation_model=fsanet", "fsanet_bands=['1','2']")
    jobs = [line for line in out.splitlines() if "fsanet -q eval --checkpoint" in line]
    assert jobs and all("runs/synthetic/fsanet/band~full/mode~dot/seed~" in line for line in jobs), jobs
    assert "fsanet/band~none" not in out
    trains = [line for line in out.splitlines() if "fsanet -q train" in line and "model.name=fsanet" in line]
    assert any("band~full/mode~dot" in line and "model.attention.band=null" in line for line in trains)
    for line in _ablation_commands(out):
        assert "--truncated-model fsanet" in line and "--band-mode dot" in line, line
