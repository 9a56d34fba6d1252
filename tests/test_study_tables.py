"""Study tables T2–T4 and plots from a small handmade study (expected numbers computed by hand)."""

import csv
import json
import math

import pytest
from engine_stubs import TinyNet, build_tiny_dataset, build_tiny_model
from test_summary import CLASSES, write_metrics, write_truncated
from torch import nn

from fsanet.cli import main
from fsanet.config import load_config, to_container
from fsanet.engine.checkpoint import save_checkpoint
from fsanet.report.plots import ablation_plot, qualitative_grid
from fsanet.report.study_tables import ablation_tables, methods_tables, per_class_tables
from fsanet.report.summary import write_summary

SYNTH = "synthetic (built-in procedural set, not a benchmark)"


@pytest.fixture()
def study(tmp_path):
    """synthetic: FsaNet 1x1 / 5x5 / full (2 seeds), NL full, cut to 1x1 / 5x5 (2 seeds), FCN (1 seed)."""
    root = tmp_path / "runs"
    files = []
    fsa = {(0, 1, 0, 1): (50.0, 54.0), (0, 5, 0, 5): (60.0, 62.0), None: (64.0, 66.0)}
    for band, values in fsa.items():
        for seed, m in enumerate(values):
            files.append(write_metrics(root, model="fsanet", band=band, seed=seed, miou=m))
    nl = {None: (70.0, 72.0), (0, 1, 0, 1): (40.0, 50.0), (0, 5, 0, 5): (69.0, 69.0)}
    for eval_band, values in nl.items():
        for seed, m in enumerate(values):
            files.append(
                write_metrics(root, model="nonlocal", band=None, eval_band=eval_band, seed=seed, miou=m)
            )
    iou = dict.fromkeys(CLASSES, 30.0)
    iou["bar"] = None  # class absent in that run
    files.append(write_metrics(root, model="fcn", band=None, seed=0, miou=30.0, iou=iou))
    out = tmp_path / "summary.json"
    write_summary(files, out)
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ablation_table_numbers_caption_and_footer(study, tmp_path):
    paths = ablation_tables(study, tmp_path / "tables")
    assert [p.name for p in paths] == ["ablation.md", "ablation.tex", "ablation.csv"]
    rows = read_csv(tmp_path / "tables" / "ablation.csv")
    assert [r["band"] for r in rows] == ["1x1", "5x5", "full"]
    one = rows[0]
    # FsaNet 1x1: (50, 54) → 52 ± 2.828; full (64, 66) → 65; Δ = −13. NL 1x1: (40, 50) → 45 ± 7.07; full 71 →
    # Δ −26
    assert float(one["retrained_mIoU_mean"]) == 52.0 and float(one["retrained_delta_vs_full"]) == -13.0
    assert float(one["retrained_mIoU_std"]) == pytest.approx(math.sqrt(8))
    assert float(one["truncated_mIoU_mean"]) == 45.0 and float(one["truncated_delta_vs_full"]) == -26.0
    assert one["K"] == "1" and rows[2]["K"] == "" and one["retrained_seeds"] == "0;1"
    assert float(rows[1]["truncated_mIoU_std"]) == 0.0  # (69, 69)
    md = (tmp_path / "tables" / "ablation.md").read_text()
    assert (
        "52.00 ± 2.83 (n=2; 50.00–54.00)" in md and "−13.00" in md and "45.00 ± 7.07 (n=2; 40.00–50.00)" in md
    )
    assert "−26.00" in md
    assert float(one["retrained_mIoU_min"]) == 50.0 and float(one["truncated_mIoU_max"]) == 50.0
    assert "| 5×5" in md and "| full" in md
    assert SYNTH in md and "without retraining" in md
    assert "Provenance: git" in md and "config hash" in md
    assert "run-nonlocal-full-val_band0-1-0-1-1" in md and "run-fsanet-0-5-0-5-val-0" in md
    assert "run-fcn" not in md  # FCN runs are not part of the ablation
    tex = (tmp_path / "tables" / "ablation.tex").read_text()
    assert "\\caption{Band ablation on synthetic" in tex and "52.00 $\\pm$ 2.83 (n=2; 50.00--54.00)" in tex
    assert "\\begin{tabular}" in tex and "5$\\times$5" in tex
    assert "run-nonlocal-full-val\\_band0-1-0-1-1" in tex  # '_' escaped in the footer


def test_methods_table_joins_costs_and_orders_methods(study, tmp_path):
    costs = tmp_path / "models.json"
    costs.write_text(
        json.dumps(
            {
                "env": {"device": "cpu", "device_name": "test cpu", "threads": 1},
                "input_size": [96, 96],
                "repeats": 5,
                "config_hash": "abc",
                "rows": [
                    {
                        "model": "fsanet",
                        "band_label": "5x5",
                        "params": 98044,
                        "flops": 31458432,
                        "fps": 200.0,
                    },
                    {
                        "model": "nonlocal",
                        "band_label": "full",
                        "params": 98140,
                        "flops": 35721216,
                        "fps": 250.0,
                    },
                ],
            }
        )
    )
    methods_tables(study, tmp_path / "t", costs_json=costs)
    rows = read_csv(tmp_path / "t" / "methods_synthetic.csv")
    assert [(r["model"], r["band"]) for r in rows] == [
        ("fcn", "full"),
        ("nonlocal", "full"),
        ("fsanet", "1x1"),
        ("fsanet", "5x5"),
        ("fsanet", "full"),
    ]
    nl = rows[1]
    assert (
        float(nl["mIoU_mean"]) == 71.0 and nl["n"] == "2" and float(nl["params"]) == 98140
    )  # truncated rows excluded
    assert rows[0]["mIoU_std"] == "" and rows[0]["n"] == "1"
    md = (tmp_path / "t" / "methods_synthetic.md").read_text()
    assert (
        "| FsaNet (5×5)" in md
        and "61.00 ± 1.41 (n=2; 60.00–62.00)" in md
        and "0.098" in md
        and "0.0315" in md
    )
    assert "200.0" in md and SYNTH in md and "96×96" in md
    lines = [line for line in md.splitlines() if line.startswith("| FsaNet (1×1)")]
    assert lines and lines[0].count("–") >= 3  # no cost row for 1x1: params, GFLOPs, fps empty
    methods_tables(study, tmp_path / "t2", bands=["5x5"])
    rows = read_csv(tmp_path / "t2" / "methods_synthetic.csv")
    assert [(r["model"], r["band"]) for r in rows] == [
        ("fcn", "full"),
        ("nonlocal", "full"),
        ("fsanet", "5x5"),
    ]
    assert "No cost report" in (tmp_path / "t2" / "methods_synthetic.md").read_text()


def test_per_class_table_means_over_seeds(study, tmp_path):
    per_class_tables(study, tmp_path / "t")
    rows = {(r["model"], r["band"]): r for r in read_csv(tmp_path / "t" / "per_class_synthetic.csv")}
    assert (
        float(rows[("fsanet", "5x5")]["cue_red"]) == 61.0
    )  # write_metrics sets every class to the run's mIoU
    assert rows[("fcn", "full")]["bar"] == "" and float(rows[("fcn", "full")]["triangle"]) == 30.0
    md = (tmp_path / "t" / "per_class_synthetic.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", *CLASSES, "mIoU", "n"]
    assert "Per-class IoU" in md and SYNTH in md


def test_per_class_table_transposes_many_classes_and_checks_class_names(tmp_path):
    many = {f"class{i}": float(i) for i in range(30)}
    files = [write_metrics(tmp_path, dataset="toy", model="fcn", band=None, seed=s, iou=many) for s in (0, 1)]
    write_summary(files, tmp_path / "s.json")
    per_class_tables(tmp_path / "s.json", tmp_path / "t")
    md = (tmp_path / "t" / "per_class_toy.md").read_text()
    assert "| Class" in md and "| class29" in md and "Classes are rows" in md
    bad = write_metrics(tmp_path / "bad", model="fcn", band=None, iou={"a": 1.0})
    write_summary([bad], tmp_path / "b.json")
    with pytest.raises(ValueError, match="not the classes of dataset 'synthetic'"):
        per_class_tables(tmp_path / "b.json", tmp_path / "t")


def test_ablation_plot_writes_png_and_dvc_csv(study, tmp_path):
    png, data = ablation_plot(study, tmp_path / "p" / "ablation.png", tmp_path / "p" / "ablation.csv")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(data)
    assert [(r["series"], r["K"]) for r in rows] == [
        ("retrained", "1"),
        ("retrained", "25"),
        ("truncated", "1"),
        ("truncated", "25"),
    ]
    assert float(rows[1]["mIoU_mean"]) == 61.0 and float(rows[1]["full_mIoU_mean"]) == 65.0
    assert float(rows[3]["delta_vs_full"]) == -2.0 and rows[3]["model"] == "nonlocal"


def _checkpoint(path, classes=("a", "b", "c")):
    cfg = load_config([], ["tracking.enabled=false", "train.progress=false"])
    model = TinyNet(3)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": to_container(cfg),
            "classes": list(classes),
            "num_classes": 3,
            "iteration": 1,
            "mlflow_run_id": None,
        },
    )
    return path


def test_qualitative_grid_runs_every_checkpoint(tmp_path):
    a, b = _checkpoint(tmp_path / "a" / "model.pt"), _checkpoint(tmp_path / "b" / "model.pt")
    out = qualitative_grid(
        {"A": a, "B truncated": (b, ["eval.eval_band=[0,2,0,2]"])},
        tmp_path / "q.png",
        n=2,
        overrides=["eval.num_qualitative=2"],
        build_model=build_tiny_model,
        build_dataset=build_tiny_dataset,
    )
    from PIL import Image

    with Image.open(out) as im:
        w, h = im.size
    assert w > h  # 2 rows × 4 columns (image, truth, A, B)
    other = _checkpoint(tmp_path / "c" / "model.pt", classes=("x", "y", "z"))
    with pytest.raises(ValueError, match="trained on classes"):
        qualitative_grid(
            {"A": a, "C": other},
            tmp_path / "q2.png",
            build_model=build_tiny_model,
            build_dataset=build_tiny_dataset,
        )
    assert not (tmp_path / "q2.png").exists()
    from fsanet.config import ConfigError

    with pytest.raises(ConfigError, match="eval.no_such_key"):
        qualitative_grid(
            {"A": (a, ["eval.no_such_key=1"])},
            tmp_path / "q3.png",
            build_model=build_tiny_model,
            build_dataset=build_tiny_dataset,
        )


def test_cli_tables_and_plots(study, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["tables", "ablation", "--summary", str(study), "--out-dir", str(out)]) == 0
    assert main(["tables", "methods", "--summary", str(study), "--out-dir", str(out), "--band", "5x5"]) == 0
    assert (
        main(
            ["tables", "per-class", "--summary", str(study), "--out-dir", str(out), "--dataset", "synthetic"]
        )
        == 0
    )
    assert (
        main(
            [
                "plots",
                "ablation",
                "--summary",
                str(study),
                "--out",
                str(out / "a.png"),
                "--csv",
                str(out / "a.csv"),
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} >= {
        "ablation.md",
        "methods_synthetic.tex",
        "per_class_synthetic.csv",
        "a.png",
        "a.csv",
    }
    capsys.readouterr()
    assert main(["tables", "methods", "--summary", str(tmp_path / "none.json")]) == 2
    assert "none.json: file not found" in capsys.readouterr().err
    assert main(["tables", "ablation", "--summary", str(study), "--dataset", "cityscapes"]) == 2
    assert "cityscapes not in the summary" in capsys.readouterr().err
    assert main(["tables", "methods", "--summary", str(study), "--setting", "val/slide/ss"]) == 2
    assert "no evaluations" in capsys.readouterr().err
    assert main(["plots", "qualitative", "--checkpoint", "nolabel", "--out", str(out / "q.png")]) == 2
    assert "expected LABEL=PATH" in capsys.readouterr().err
    assert (
        main(
            ["plots", "qualitative", "--checkpoint", f"X={tmp_path / 'gone.pt'}", "--out", str(out / "q.png")]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        main(
            ["plots", "qualitative", "--checkpoint", "X=a.pt", "--set", "Y:eval.flip=true", "--out", "q.png"]
        )
        == 2
    )
    assert "expected LABEL:key=value with LABEL one of ['X']" in capsys.readouterr().err


def test_ablation_table_of_one_model_in_both_series(tmp_path):
    """`--truncated-model fsanet`: FsaNet trained at each band beside FsaNet trained at the full band and
    truncated; the untruncated full row is shared, and each series keeps its own Δ column."""
    root = tmp_path / "runs"
    files = []
    for seed, (one, full, cut) in enumerate(((88.0, 91.0, 70.0), (90.0, 93.0, 72.0))):
        files.append(write_metrics(root, model="fsanet", band=(0, 1, 0, 1), seed=seed, miou=one))
        files.append(write_metrics(root, model="fsanet", band=None, seed=seed, miou=full))
        files.append(
            write_metrics(root, model="fsanet", band=None, eval_band=(0, 1, 0, 1), seed=seed, miou=cut)
        )
    write_summary(files, tmp_path / "summary.json")
    ablation_tables(tmp_path / "summary.json", tmp_path / "tables", truncated_model="fsanet")
    rows = read_csv(tmp_path / "tables" / "ablation.csv")
    assert [r["band"] for r in rows] == ["1x1", "full"]
    assert (
        float(rows[0]["retrained_delta_vs_full"]) == -3.0
        and float(rows[0]["truncated_delta_vs_full"]) == -21.0
    )
    assert float(rows[1]["truncated_mIoU_mean"]) == 92.0 == float(rows[1]["retrained_mIoU_mean"])
    md = (tmp_path / "tables" / "ablation.md").read_text()
    assert "Δ FsaNet retrained" in md and "Δ FsaNet truncated" in md and "−21.00" in md and "−3.00" in md


def test_ablation_table_follows_the_band_mode(tmp_path):
    """A LinSoftmax band sweep (`fsanet_band_mode: linsoftmax`) is T2's retrained series under
    `band_mode='linsoftmax'`, and the dot-mode runs beside it are not."""
    root = tmp_path / "runs"
    files = []
    for mode, values in (("linsoftmax", (80.0, 82.0)), ("dot", (10.0, 12.0))):
        for seed, m in enumerate(values):
            files.append(
                write_metrics(
                    root / mode, model="fsanet", band=(0, 1, 0, 1), seed=seed, miou=m, attention_mode=mode
                )
            )
    files.append(write_metrics(root, model="nonlocal", band=None, seed=0, miou=70.0))
    write_summary(files, tmp_path / "summary.json")
    ablation_tables(tmp_path / "summary.json", tmp_path / "tables", band_mode="linsoftmax")
    rows = read_csv(tmp_path / "tables" / "ablation.csv")
    assert float(rows[0]["retrained_mIoU_mean"]) == 81.0 and rows[0]["retrained_n"] == "2"
    assert "trained at each band, LinSoftmax mode" in (tmp_path / "tables" / "ablation.md").read_text()
    ablation_tables(tmp_path / "summary.json", tmp_path / "dot", band_mode="dot")
    assert float(read_csv(tmp_path / "dot" / "ablation.csv")[0]["retrained_mIoU_mean"]) == 11.0


def test_ablation_table_shows_the_kept_energy_when_the_runs_record_it(tmp_path):
    root = tmp_path / "runs"
    files = [write_metrics(root, model="fsanet", band=(0, 1, 0, 1), seed=0, miou=90.0)]
    for seed, (full, cut, energy) in enumerate(((91.0, 70.0, 0.20), (93.0, 72.0, 0.30))):
        files.append(write_metrics(root, model="nonlocal", band=None, seed=seed, miou=full))
        files.append(write_truncated(root, seed, cut, energy, band=(0, 1, 0, 1)))
    write_summary(files, tmp_path / "summary.json")
    ablation_tables(tmp_path / "summary.json", tmp_path / "tables")
    rows = read_csv(tmp_path / "tables" / "ablation.csv")
    assert float(rows[0]["truncated_energy_kept"]) == pytest.approx(0.25)
    assert (float(rows[0]["truncated_energy_kept_min"]), float(rows[0]["truncated_energy_kept_max"])) == (
        0.2,
        0.3,
    )
    md = (tmp_path / "tables" / "ablation.md").read_text()
    assert "input energy kept (%)" in md and "25.0 (20.0–30.0)" in md and "Σ‖low-pass(x)‖²" in md


def test_ablation_table_without_recorded_energy_has_no_energy_column(study, tmp_path):
    ablation_tables(study, tmp_path / "tables")
    assert "energy kept" not in (tmp_path / "tables" / "ablation.md").read_text()
