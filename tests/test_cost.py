"""`fsanet tables cost`: the GPU-hour estimate scales the published reference speed by pixels."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fsanet.cli import main
from fsanet.report.cost import REFERENCE, StudyCost, cost_frame

ROOT = Path(__file__).resolve().parents[1]


def test_the_reference_setting_costs_the_reference_time() -> None:
    one = StudyCost("cityscapes", 1, iterations=3600, batch=2, crop=(512, 1024), gpus_per_job=1)
    assert math.isclose(one.gpu_hours_per_training(), REFERENCE.seconds_per_iter)


def test_cost_scales_with_pixels_iterations_and_trainings() -> None:
    base = StudyCost("ade20k", 3, iterations=1000, batch=16, crop=(512, 512), gpus_per_job=4)
    double = StudyCost("ade20k", 3, iterations=2000, batch=16, crop=(512, 1024), gpus_per_job=4)
    frame = cost_frame([base, double])
    assert frame["gpu_hours"].iloc[1] == pytest.approx(4 * frame["gpu_hours"].iloc[0])
    assert frame["wall_hours_per_training"].iloc[0] == pytest.approx(base.gpu_hours_per_training() / 4)
    total = frame.iloc[-1]
    assert total["dataset"] == "total" and total["trainings"] == 6
    assert total["gpu_hours"] == pytest.approx(frame["gpu_hours"].iloc[:2].sum())


def test_cli_reads_each_datasets_schedule_from_its_configs(tmp_path: Path) -> None:
    cs = [ROOT / "params/data/cityscapes.yaml", ROOT / "params/train/paper_cityscapes.yaml"]
    ade = [ROOT / "params/data/ade20k.yaml", ROOT / "params/train/paper_ade20k.yaml"]
    rc = main(
        [
            "tables", "cost",
            "--trainings", "cityscapes=2", "--trainings", "ade20k=1",
            "--dataset-config", "cityscapes=" + ",".join(map(str, cs)),
            "--dataset-config", "ade20k=" + ",".join(map(str, ade)),
            "--gpus-per-job", "4", "--profile", "paper", "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert rc == 0
    frame = pd.read_csv(tmp_path / "cost.csv")
    cs_row = frame[frame["dataset"] == "Cityscapes"].iloc[0]
    schedule = (cs_row["trainings"], cs_row["iterations"], cs_row["batch"], cs_row["crop"])
    assert schedule == (2, 80000, 8, "769×769")
    expected = 80000 * 8 * 769 * 769 * REFERENCE.gpu_seconds_per_pixel() / 3600
    assert cs_row["gpu_hours_per_training"] == pytest.approx(expected)
    md = (tmp_path / "cost.md").read_text()
    assert "an estimate, not a measurement" in md and "model_zoo.md" in md


def test_cli_names_a_dataset_without_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(ROOT / "params/data/ade20k.yaml")
    args = ["--trainings", "voc=3", "--dataset-config", f"ade20k={cfg}", "--out-dir", str(tmp_path)]
    rc = main(["tables", "cost", *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'voc'" in err and "--dataset-config voc=" in err
    assert not (tmp_path / "cost.md").exists()


def test_cli_refuses_a_malformed_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(ROOT / "params/data/ade20k.yaml")
    rc = main(["tables", "cost", "--trainings", "ade20k=many", "--dataset-config", f"ade20k={cfg}"])
    assert rc == 2
    assert "ade20k=many" in capsys.readouterr().err
