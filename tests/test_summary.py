"""summary.json from handmade metrics.json files, band helpers, model costs and the `tables summary` CLI."""

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fsanet.cli import main
from fsanet.report.summary import (
    SummaryError,
    ablation_points,
    band_label,
    band_models,
    band_size,
    build_summary,
    expand_inputs,
    headline_metrics,
    load_summary,
    mean_std,
    normalize_band,
    read_metrics,
    select_runs,
    write_summary,
)

CLASSES = ["background", "cue_red", "cue_blue", "disc_red_cue", "disc_blue_cue", "triangle", "bar"]


def write_metrics(
    root,
    dataset="synthetic",
    model="fsanet",
    band=(0, 5, 0, 5),
    eval_band=None,
    seed=0,
    miou=50.0,
    run_id=None,
    iou=None,
    **extra,
):
    """A metrics.json laid out like `fsanet eval` writes it, at results/runs/.../eval/<tag>/metrics.json."""
    band_dir = "full" if band is None else "-".join(map(str, band))
    tag = "val" if eval_band is None else "val_band" + "-".join(map(str, eval_band))
    path = root / dataset / model / f"band~{band_dir}" / f"seed~{seed}" / "eval" / tag / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "mIoU": miou,
        "mAcc": miou + 10,
        "aAcc": 90.0,
        "units": "percent",
        "IoU": iou if iou is not None else {c: miou for c in CLASSES},
        "Acc": {c: 80.0 for c in CLASSES},
        "dataset": dataset,
        "split": "val",
        "model": model,
        "band": None if band is None else list(band),
        "eval_band": None if eval_band is None else list(eval_band),
        "seed": seed,
        "checkpoint": str(path.parent.parent.parent / "model.pt"),
        "iteration": 100,
        "mode": "whole",
        "scales": [1.0],
        "flip": False,
        "num_images": 8,
        "mlflow_run_id": run_id or f"run-{model}-{band_dir}-{tag}-{seed}",
        "train_mlflow_run_id": "train-run",
    }
    data.update(extra)
    path.write_text(json.dumps(data))
    return path


def test_records_have_the_schema_flags_and_sorted_order(tmp_path):
    files = [
        write_metrics(
            tmp_path, model="nonlocal", band=(0, 5, 0, 5), eval_band=(0, 2, 0, 2), seed=1, miou=40.0
        ),
        write_metrics(tmp_path, model="fsanet", band=None, seed=0, miou=70.0),
        write_metrics(tmp_path, model="fsanet", band=(0, 5, 0, 5), seed=1, miou=66.0),
        write_metrics(tmp_path, model="fsanet", band=(0, 5, 0, 5), seed=0, miou=64.0),
        write_metrics(tmp_path, model="nonlocal", band=(0, 5, 0, 5), seed=1, miou=60.0),
    ]
    summary = build_summary(files)
    runs = summary["runs"]
    assert [
        (r["model"], band_label(r["band"]), band_label(r["eval_band"]) if r["eval_band"] else None, r["seed"])
        for r in runs
    ] == [
        ("fsanet", "5x5", None, 0),
        ("fsanet", "5x5", None, 1),
        ("fsanet", "full", None, 0),
        ("nonlocal", "full", None, 1),
        ("nonlocal", "full", "2x2", 1),
    ]
    for r in runs:
        assert {
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
        } <= set(r)
        assert r["retrained"] is (r["eval_band"] is None)
        assert r["setting"] == "val/whole/ss"
    # the non-local head has no band option: its config value (5x5 here) must not leak into the record
    assert all(r["band"] is None for r in runs if r["model"] == "nonlocal")
    prov = summary["provenance"]
    assert prov["created_from"] == 5 and len(prov["inputs_sha256"]) == 64 and "git_sha" in prov
    agg = summary["aggregate"]["synthetic/fsanet/band=5x5/eval_band=none/val/whole/ss"]
    assert agg == {"mIoU_mean": 65.0, "mIoU_std": pytest.approx(math.sqrt(2)), "n": 2}  # (64, 66) by hand


def test_headline_metrics_by_hand(tmp_path, capsys):
    files = [
        write_metrics(tmp_path, model="fsanet", band=(0, 5, 0, 5), seed=0, miou=64.0, attention_mode="dot"),
        write_metrics(tmp_path, model="fsanet", band=(0, 5, 0, 5), seed=1, miou=66.0, attention_mode="dot"),
        write_metrics(tmp_path, model="nonlocal", band=(0, 5, 0, 5), seed=0, miou=60.0),
        write_metrics(
            tmp_path, model="nonlocal", band=(0, 5, 0, 5), eval_band=(0, 2, 0, 2), seed=0, miou=40.0
        ),
    ]
    summary = build_summary(files)
    findings = {
        "findings": [
            {"dataset": "synthetic", "verdict": "pass"},
            {"dataset": "synthetic", "verdict": "fail"},
            {"dataset": "synthetic", "verdict": "pass"},
        ]
    }
    tree = headline_metrics(summary, findings)["synthetic"]
    fsa = tree["retrained"]["fsanet_dot_5x5"]
    assert (fsa["mIoU_mean"], fsa["mIoU_min"], fsa["mIoU_max"], fsa["n"]) == (65.0, 64.0, 66.0, 2)
    assert fsa["mIoU_std"] == pytest.approx(math.sqrt(2))
    assert tree["retrained"]["nonlocal"]["mIoU_std"] is None  # one seed
    assert tree["truncated"] == {
        "nonlocal_eval2x2": {"mIoU_mean": 40.0, "mIoU_std": None, "mIoU_min": 40.0, "mIoU_max": 40.0, "n": 1}
    }
    assert tree["findings"] == {"pass": 2, "fail": 1}
    out = tmp_path / "summary.json"
    out.write_text(json.dumps(summary))
    fj = tmp_path / "findings.json"
    fj.write_text(json.dumps(findings))
    assert (
        main(
            [
                "tables",
                "metrics",
                "--summary",
                str(out),
                "--findings",
                str(fj),
                "--out",
                str(tmp_path / "m" / "study.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m" / "study.json").read_text())["synthetic"] == json.loads(
        json.dumps(tree)
    )


def test_summary_file_is_deterministic_and_reads_back(tmp_path):
    files = [write_metrics(tmp_path / "r", seed=s, miou=60.0 + s) for s in (2, 0, 1)]
    out1, out2 = tmp_path / "a" / "summary.json", tmp_path / "b" / "summary.json"
    write_summary(list(reversed(files)), out1)
    write_summary([str(tmp_path / "r" / "**" / "metrics.json")], out2)  # a glob gives the same file set
    assert out1.read_bytes() == out2.read_bytes()
    assert [r["seed"] for r in load_summary(out1)["runs"]] == [0, 1, 2]
    assert not list((tmp_path / "a").glob(".*tmp*"))  # atomic write left no temporary file


def test_config_hash_and_training_info_are_picked_up(tmp_path):
    path = write_metrics(tmp_path, seed=0)
    (path.parent / "config.yaml").write_text("model:\n  name: fsanet\n")
    run_dir = path.parent.parent.parent
    (run_dir / "run_info.json").write_text(
        json.dumps({"status": "finished", "train_seconds": 120.0, "environment": {"git_sha": "abc123"}})
    )
    other = write_metrics(tmp_path, seed=1)
    rec, rec2 = read_metrics(path), read_metrics(other)
    assert rec["config_hash"] and rec2["config_hash"] is None
    assert (
        rec["train_seconds"] == 120.0 and rec["train_git_sha"] == "abc123" and rec2["train_seconds"] is None
    )
    summary = build_summary([path, other])
    assert summary["provenance"]["train_git_shas"] == ["abc123"]
    assert summary["provenance"]["runs_without_config"] == 1
    (path.parent / "config.yaml").write_text("model:\n  name: nonlocal\n")
    assert build_summary([path, other])["provenance"]["config_hash"] != summary["provenance"]["config_hash"]


def test_bad_metrics_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: metrics file not found"):
        expand_inputs([tmp_path / "nope.json"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*" / "metrics.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SummaryError, match="bad.json: not valid JSON"):
        read_metrics(bad)
    path = write_metrics(tmp_path)
    data = json.loads(path.read_text())
    del data["seed"]
    path.write_text(json.dumps(data))
    with pytest.raises(SummaryError, match=r"metrics.json: missing key\(s\) seed"):
        read_metrics(path)
    data["seed"] = 0
    data["band"] = [0, 5, 0]
    path.write_text(json.dumps(data))
    with pytest.raises(SummaryError, match="key 'band'"):
        read_metrics(path)
    data["band"], data["mIoU"] = [0, 5, 0, 5], "high"
    path.write_text(json.dumps(data))
    with pytest.raises(SummaryError, match="key 'mIoU': expected a number"):
        read_metrics(path)
    with pytest.raises(SummaryError, match="no metrics files"):
        build_summary([])


def test_select_runs_rejects_two_evaluations_of_the_same_run(tmp_path):
    a = write_metrics(tmp_path / "a", seed=0)
    b = write_metrics(tmp_path / "b", seed=0)
    summary = build_summary([a, b])
    with pytest.raises(SummaryError, match="two evaluations of the same run"):
        select_runs(summary)
    c = write_metrics(tmp_path / "c", seed=0, scales=[0.5, 1.0], flip=True)
    summary = build_summary([a, c])
    assert len(select_runs(summary)) == 1  # default: single-scale only
    assert [r["setting"] for r in select_runs(summary, setting="val/whole/ms+flip")] == ["val/whole/ms+flip"]
    with pytest.raises(SummaryError, match="no evaluations"):
        select_runs(summary, dataset="cityscapes")


def test_ablation_points_by_hand(tmp_path):
    files = [
        write_metrics(tmp_path, model="fsanet", band=(0, 1, 0, 1), seed=s, miou=m)
        for s, m in ((0, 50), (1, 54))
    ]
    files += [
        write_metrics(tmp_path, model="fsanet", band=None, seed=s, miou=m) for s, m in ((0, 60), (1, 62))
    ]
    files += [
        write_metrics(tmp_path, model="nonlocal", band=None, seed=0, miou=70.0),
        write_metrics(tmp_path, model="nonlocal", band=None, eval_band=(0, 1, 0, 1), seed=0, miou=67.5),
        write_metrics(tmp_path, model="fcn", band=None, seed=0, miou=30.0),
    ]
    points = ablation_points(build_summary(files)["runs"])
    got = {(p["series"], p["label"]): (p["K"], p["mean"], p["std"], p["n"], p["delta"]) for p in points}
    assert got == {
        ("retrained", "1x1"): (1.0, 52.0, pytest.approx(math.sqrt(8)), 2, -9.0),
        ("retrained", "full"): (math.inf, 61.0, pytest.approx(math.sqrt(2)), 2, 0.0),
        ("truncated", "1x1"): (1.0, 67.5, None, 1, -2.5),
        ("truncated", "full"): (math.inf, 70.0, None, 1, 0.0),
    }


def test_ablation_points_one_model_retrained_and_truncated(tmp_path):
    """FsaNet in both series: trained at each band, and trained at the full band then truncated. Its
    untruncated full-band runs are the full point of both; another attention mode's runs count in neither."""
    files = [
        write_metrics(tmp_path, model="fsanet", band=(0, 1, 0, 1), seed=s, miou=m, attention_mode="dot")
        for s, m in ((0, 88.0), (1, 90.0))
    ]
    files += [
        write_metrics(tmp_path, model="fsanet", band=None, seed=s, miou=m, attention_mode="dot")
        for s, m in ((0, 91.0), (1, 93.0))
    ]
    files += [
        write_metrics(
            tmp_path, model="fsanet", band=None, eval_band=(0, 1, 0, 1), seed=s, miou=m, attention_mode="dot"
        )
        for s, m in ((0, 70.0), (1, 72.0))
    ]
    other = tmp_path / "linsoftmax"
    files += [
        write_metrics(other, model="fsanet", band=None, seed=0, miou=10.0, attention_mode="linsoftmax"),
        write_metrics(
            other,
            model="fsanet",
            band=None,
            eval_band=(0, 1, 0, 1),
            seed=0,
            miou=5.0,
            attention_mode="linsoftmax",
        ),
    ]
    points = ablation_points(build_summary(files)["runs"], truncated_model="fsanet")
    got = {(p["series"], p["label"]): (p["mean"], p["n"], p["delta"]) for p in points}
    assert got == {
        ("retrained", "1x1"): (89.0, 2, -3.0),
        ("retrained", "full"): (92.0, 2, 0.0),
        ("truncated", "1x1"): (71.0, 2, -21.0),
        ("truncated", "full"): (92.0, 2, 0.0),
    }


@given(st.integers(1, 64), st.integers(1, 64), st.integers(0, 8), st.integers(0, 8))
def test_band_label_and_size_identities(n, m, u0, v0):
    from fsanet.bench.models import parse_band

    band = [u0, u0 + n, v0, v0 + m]
    assert band_size(band) == n * m
    assert normalize_band(band) == band
    if (u0, v0) == (0, 0):
        assert band_label(band) == f"{n}x{m}" and parse_band(band_label(band)) == band
        assert normalize_band([n, m]) == band  # the [n_u, n_v] shorthand
    else:
        assert band_label(band, pretty=True) == f"{n}×{m}@({u0},{v0})"


def test_band_helpers_edge_cases():
    assert band_label(None) == "full" and band_label([0, -1, 0, -1]) == "full"
    assert band_size(None) == math.inf and band_size([0, -1, 0, 4]) == math.inf
    assert band_label([2, -1, 0, 3]) == "2:endx3"
    for bad in ([0, 0, 0, 4], [3, 2, 0, 4], [0, 4, -1, 4], [0.5, 4, 0, 4], "full", [True, 4]):
        with pytest.raises(SummaryError):
            normalize_band(bad)
    assert mean_std([1.0, None, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert mean_std([None]) == (None, None, 0)


def test_band_models_match_the_model_heads():
    from fsanet.models import MODELS
    from fsanet.nn.fsa import FrequencySelfAttention

    # the band models are the methods with an FSA block (FsaNet, Segformer, AFFormer, Mask R-CNN + FSA)
    with_fsa = {name for name, m in MODELS.items() if FrequencySelfAttention in m.attention_classes}
    assert with_fsa == set(band_models()) == {"fsanet", "segformer_fsa", "afformer_fsa", "mask_rcnn_fsa"}


def test_model_costs_on_a_tiny_input():
    from fsanet.bench.models import model_costs, parse_band
    from fsanet.config import load_config

    tiny = ["data.crop_size=[32,32]", "bench.models.names=[fcn,fsanet]", "bench.models.bands=[1,full]"]
    cfg = load_config([], [*tiny, "bench.models.warmup=0", "bench.models.repeats=1"])
    threads = torch.get_num_threads()
    report = model_costs(cfg)
    assert torch.get_num_threads() == threads  # restored
    rows = {(r["model"], r["band_label"]): r for r in report["rows"]}
    assert set(rows) == {("fcn", "full"), ("fsanet", "1x1"), ("fsanet", "full")}
    assert report["input_size"] == [32, 32] and report["env"]["threads"] == 1
    from fsanet.models import build_model

    expect = sum(p.numel() for p in build_model(cfg.model, cfg.data.num_classes).parameters())
    assert rows[("fsanet", "1x1")]["params"] == expect == rows[("fsanet", "full")]["params"]
    # more kept coefficients, more DCT/attention work; no attention block at all, least
    assert (
        rows[("fcn", "full")]["flops"] < rows[("fsanet", "1x1")]["flops"] < rows[("fsanet", "full")]["flops"]
    )
    assert all(r["fps"] > 0 for r in rows.values())
    with pytest.raises(ValueError, match="bench.models.names: unknown or non-segmentation model"):
        model_costs(load_config([], ["bench.models.names=[resnet]"]))
    with pytest.raises(ValueError, match=r"model\(s\) mask_rcnn; choose from fcn"):
        model_costs(load_config([], ["bench.models.names=[mask_rcnn]"]))
    with pytest.raises(ValueError, match="bench.models.bands: .*expected 'full'"):
        model_costs(load_config([], ["bench.models.bands=[wide]"]))
    with pytest.raises(ValueError, match="expected 'full'"):
        parse_band("wide")


def test_cli_summary_writes_and_reports_errors_in_one_line(tmp_path, capsys):
    files = [write_metrics(tmp_path / "r", seed=s) for s in (0, 1)]
    out = tmp_path / "summary.json"
    assert main(["tables", "summary", "--metrics", *map(str, files), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["runs"]) == 2
    assert main(["tables", "summary", "--metrics", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json: metrics file not found" in err[0]
    junk = tmp_path / "junk.json"
    junk.write_text("[]")
    assert main(["tables", "summary", "--metrics", str(junk), "--out", str(out)]) == 2
    assert "junk.json: expected a JSON object" in capsys.readouterr().err


def test_cli_bench_models(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert (
        main(
            [
                "bench",
                "models",
                "--out",
                str(out),
                "bench.models.names=[fcn]",
                "bench.models.bands=[full]",
                "bench.models.input_size=[32,32]",
                "bench.models.warmup=0",
                "bench.models.repeats=1",
                "data.num_classes=3",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["rows"]] == ["fcn"] and report["num_classes"] == 3
    assert main(["bench", "models", "--out", str(out), "bench.models.bands=[wide]"]) == 2
    err = capsys.readouterr().err
    assert "bench.models.bands" in err and "band 'wide'" in err
    assert main(["bench", "models", "--out", str(out), "bench.models.repeats=0"]) == 2
    assert "bench.models.repeats" in capsys.readouterr().err


def write_truncated(root, seed, miou, energy, band=(0, 2, 0, 2)):
    """A non-local evaluation truncated to ``band`` that recorded the kept energy ``energy``."""
    return write_metrics(
        root, model="nonlocal", band=None, eval_band=band, seed=seed, miou=miou, band_energy_kept=energy
    )


def test_ablation_points_carry_the_kept_energy_of_the_truncated_runs(tmp_path):
    files = [write_metrics(tmp_path, model="nonlocal", band=None, seed=s, miou=70.0 + s) for s in (0, 1, 2)]
    files += [write_truncated(tmp_path, s, 60.0, e) for s, e in ((0, 0.20), (1, 0.25), (2, 0.30))]
    runs = build_summary(files)["runs"]
    assert sorted(r["band_energy_kept"] for r in runs if r["eval_band"]) == [0.20, 0.25, 0.30]
    points = ablation_points(runs, retrained_model="fsanet")
    point = next(p for p in points if p["series"] == "truncated" and p["label"] == "2x2")
    assert point["energy_kept"] == pytest.approx(0.25)
    assert (point["energy_kept_min"], point["energy_kept_max"]) == (0.20, 0.30)
    full = next(p for p in points if p["series"] == "truncated" and p["label"] == "full")
    assert full["energy_kept"] is None  # untruncated runs record none


def test_a_bad_kept_energy_is_an_error_naming_the_file(tmp_path):
    path = write_metrics(tmp_path, model="nonlocal", band=None, eval_band=(0, 2, 0, 2), band_energy_kept="x")
    with pytest.raises(SummaryError, match="band_energy_kept"):
        build_summary([path])
