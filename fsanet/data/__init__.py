"""Datasets: a plain dict from name to dataset class, and ``build_dataset`` for the engine.

>>> ds = build_dataset(cfg.data, split=cfg.data.train_split, train=True, seed=cfg.train.seed)
"""

from __future__ import annotations

from typing import Any

from fsanet.data.ade20k import ADE20KDataset
from fsanet.data.base import DataError, SegmentationDataset
from fsanet.data.cityscapes import CityscapesDataset
from fsanet.data.coco_stuff import COCOStuffDataset
from fsanet.data.synthetic import SyntheticDataset
from fsanet.data.transforms import build_transform
from fsanet.data.voc import VOCDataset

__all__ = ["DATASETS", "DataError", "SegmentationDataset", "build_dataset"]

DATASETS: dict[str, type[SegmentationDataset]] = {
    "synthetic": SyntheticDataset,
    "cityscapes": CityscapesDataset,
    "ade20k": ADE20KDataset,
    "voc": VOCDataset,
    "coco_stuff": COCOStuffDataset,
}


def build_dataset(cfg: Any, split: str, train: bool, seed: int = 0) -> SegmentationDataset:
    """The dataset ``cfg.name`` at ``cfg.root`` with the train or test pipeline.

    Args:
        cfg: the ``data`` config section (:class:`fsanet.config.DataConfig`).
        split: split name, e.g. ``cfg.train_split`` / ``cfg.val_split``.
        train: augmenting train pipeline; else the test pipeline (label at original size).
        seed: base seed of the per-item augmentation (see :func:`fsanet.data.transforms.sample_rng`).

    Raises:
        KeyError: unknown dataset name (the message lists the known ones).
        ValueError: ``cfg.num_classes`` disagrees with the dataset's class list.
        DataError: the dataset folder is missing or malformed.
    """
    if cfg.name not in DATASETS:
        raise KeyError(f"data.name={cfg.name!r} is not a known dataset; choose one of {sorted(DATASETS)}")
    cls = DATASETS[cfg.name]
    if cfg.num_classes != len(cls.CLASSES):
        raise ValueError(
            f"data.num_classes={cfg.num_classes} but dataset {cfg.name!r} has {len(cls.CLASSES)} classes; "
            f"set data.num_classes={len(cls.CLASSES)}"
        )
    return cls(
        cfg.root,
        split,
        transform=build_transform(cfg, train),
        check_labels=cfg.check_labels,
        check_split_size=cfg.check_split_sizes,
        seed=seed,
        cache=cfg.cache,
    )
