"""What a study profile would cost on GPUs: trainings, iterations and estimated GPU-hours per dataset.

The only published training speed from mmseg that fixes the hardware, the model and the batch is the
"Speed benchmark" section of mmsegmentation's ``docs/en/model_zoo.md``: PSPNet with ResNet-101-V1c at
1024×512, batch 2 per GPU, on Tesla V100 (32 GB) GPUs, takes 0.83 s per iteration (:data:`REFERENCE`).
The estimate scales that rate by the pixels each training pushes through the network::

    GPU-seconds = iterations × global batch × (crop h · crop w) / (512 · 1024) × 0.83 s / 2

It assumes that time is proportional to pixels (true for the convolutional backbone, which dominates
a ResNet-101-D8 segmenter at these sizes) and that the attention heads cost about what PSPNet's
pyramid pooling head costs. It leaves out evaluation, data loading stalls and queueing. A table
made from it says so in its caption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fsanet.report.names import dataset_display
from fsanet.report.text import fmt, write_table

__all__ = ["REFERENCE", "Reference", "StudyCost", "cost_frame", "cost_tables", "studies_from_configs"]


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published training speed: seconds per iteration of one model at one batch on one GPU type."""

    source: str
    model: str
    gpu: str
    crop: tuple[int, int]  # (h, w)
    batch_per_gpu: int
    seconds_per_iter: float

    def gpu_seconds_per_pixel(self) -> float:
        return self.seconds_per_iter / (self.batch_per_gpu * self.crop[0] * self.crop[1])


#: mmsegmentation ``docs/en/model_zoo.md``, "Speed benchmark" → "Training speed" (MMSegmentation row)
REFERENCE = Reference(
    source="mmsegmentation docs/en/model_zoo.md, 'Speed benchmark: Training speed' (MMSegmentation, PSPNet)",
    model="PSPNet R-101-V1c",
    gpu="Tesla V100 32GB",
    crop=(512, 1024),
    batch_per_gpu=2,
    seconds_per_iter=0.83,
)


@dataclasses.dataclass(frozen=True)
class StudyCost:
    """One dataset of a study: how many trainings, at what schedule.

    Args:
        dataset: the dataset's name.
        trainings: trainings the study runs on it (every method, band and seed).
        iterations: ``train.max_iters`` of each.
        batch: the global batch (``train.batch_size``).
        crop: ``data.crop_size`` as (h, w).
        gpus_per_job: GPUs one training uses.
    """

    dataset: str
    trainings: int
    iterations: int
    batch: int
    crop: tuple[int, int]
    gpus_per_job: int

    def gpu_hours_per_training(self, ref: Reference = REFERENCE) -> float:
        pixels = self.iterations * self.batch * self.crop[0] * self.crop[1]
        return pixels * ref.gpu_seconds_per_pixel() / 3600.0


def cost_frame(studies: Sequence[StudyCost], ref: Reference = REFERENCE) -> pd.DataFrame:
    """One row per dataset plus a total row; the numbers unformatted."""
    rows: list[dict[str, Any]] = []
    for s in studies:
        per = s.gpu_hours_per_training(ref)
        rows.append(
            {
                "dataset": dataset_display(s.dataset),
                "trainings": s.trainings,
                "iterations": s.iterations,
                "batch": s.batch,
                "crop": f"{s.crop[0]}×{s.crop[1]}",
                "gpus_per_job": s.gpus_per_job,
                "gpu_hours_per_training": per,
                "wall_hours_per_training": per / s.gpus_per_job,
                "gpu_hours": per * s.trainings,
            }
        )
    if rows:
        rows.append(
            {
                "dataset": "total",
                "trainings": sum(r["trainings"] for r in rows),
                "iterations": None,
                "batch": None,
                "crop": None,
                "gpus_per_job": None,
                "gpu_hours_per_training": None,
                "wall_hours_per_training": None,
                "gpu_hours": sum(r["gpu_hours"] for r in rows),
            }
        )
    return pd.DataFrame(rows)


def cost_tables(
    studies: Sequence[StudyCost], out_dir: str | Path, profile: str, ref: Reference = REFERENCE
) -> list[Path]:
    """Write ``cost.{md,tex,csv}``: the study's trainings and their estimated GPU-hours.

    Args:
        studies: one entry per dataset of the study.
        out_dir: the folder for the files.
        profile: the study profile's name, named in the caption.
        ref: the published speed the estimate scales.
    """
    numeric = cost_frame(studies, ref)
    shown = pd.DataFrame(
        {
            "Dataset": numeric["dataset"],
            "Trainings": numeric["trainings"].map(str),
            "Iterations": numeric["iterations"].map(lambda x: "–" if pd.isna(x) else f"{int(x):,}"),
            "Batch": numeric["batch"].map(lambda x: "–" if pd.isna(x) else str(int(x))),
            "Crop": numeric["crop"].map(lambda x: x if isinstance(x, str) else "–"),
            "GPUs / job": numeric["gpus_per_job"].map(lambda x: "–" if pd.isna(x) else str(int(x))),
            "GPU-h / training": numeric["gpu_hours_per_training"].map(_hours),
            "Wall h / training": numeric["wall_hours_per_training"].map(_hours),
            "GPU-h (all trainings)": numeric["gpu_hours"].map(_hours),
        }
    )
    caption = (
        f"Estimated training cost of the `{profile}` study profile (an estimate, not a measurement). "
        f"GPU-hours on {ref.gpu} = iterations × batch × crop pixels × {ref.seconds_per_iter} s / "
        f"({ref.batch_per_gpu} × {ref.crop[0]}×{ref.crop[1]} px), the published training speed of "
        f"{ref.model} in {ref.source}; it assumes time ∝ pixels and an attention head costing about "
        "what PSPNet's head costs, and it leaves out evaluation."
    )
    footer = f"Generated by `fsanet tables cost` for the {profile} profile."
    blocks = [("Training cost", caption, shown)]
    return write_table(Path(out_dir), "cost", blocks, numeric, footer, "fsanet tables cost")


def _hours(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else fmt(float(x))


def studies_from_configs(
    counts: Mapping[str, int], configs: Mapping[str, Any], gpus_per_job: int
) -> list[StudyCost]:
    """:class:`StudyCost` per dataset from its resolved config (``data.crop_size``, ``train.*``)."""
    out = []
    for dataset, n in counts.items():
        if dataset not in configs:
            raise ValueError(
                f"dataset {dataset!r} has trainings but no config; give --dataset-config {dataset}=FILE,FILE"
            )
        cfg = configs[dataset]
        crop = tuple(int(v) for v in cfg.data.crop_size)
        out.append(
            StudyCost(
                dataset=dataset,
                trainings=n,
                iterations=int(cfg.train.max_iters),
                batch=int(cfg.train.batch_size),
                crop=(crop[0], crop[-1]),
                gpus_per_job=max(int(gpus_per_job), 1),
            )
        )
    return out
