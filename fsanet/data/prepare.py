"""Shared machinery of ``fsanet data prepare/stats/show``: dispatch to the dataset modules, markers.

A dataset module (``cityscapes``, ``ade20k``, ``voc``, ``coco_stuff``, ``coco``) exposes

* ``DIRNAME``: its folder under the data root (e.g. ``"cityscapes"``, ``"VOCdevkit/VOC2012"``);
* ``prepare(dataset_root, workers, check_split_sizes, progress) -> dict``: convert the raw download
  into what the loader reads, check it and return a summary;
* a dataset class (``DATASET``) that reads the prepared folder.

Preparation is resumable and never leaves a folder that looks complete after a failure: each output
file is written under a temporary name and renamed, files already converted are skipped on a rerun,
split lists are written after every file they name, and the marker ``.fsanet-prepared.json`` (which
:func:`is_prepared` tests) comes last, only once the counts match the known split sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fsanet.data.convert import check_count, missing_summary, parallel_map
from fsanet.data.errors import DataError
from fsanet.data.imageio import colorize
from fsanet.io import read_json, write_json

__all__ = [
    "PREPARED_MARKER",
    "check_count",
    "clear_prepared",
    "dataset_module",
    "is_prepared",
    "mark_prepared",
    "missing_summary",
    "parallel_map",
    "prepare_dataset",
]

log = logging.getLogger(__name__)

PREPARED_MARKER = ".fsanet-prepared.json"


def dataset_module(name: str) -> ModuleType:
    """The module of benchmark ``name`` (imported lazily: the modules import this one)."""
    from fsanet.data import ade20k, cityscapes, coco, coco_stuff, voc

    modules = {"cityscapes": cityscapes, "ade20k": ade20k, "voc": voc, "coco_stuff": coco_stuff, "coco": coco}
    if name not in modules:
        raise KeyError(f"unknown dataset '{name}'; choose one of {', '.join(modules)}")
    return modules[name]


def is_prepared(dataset_root: str | Path) -> bool:
    return (Path(dataset_root) / PREPARED_MARKER).is_file()


def clear_prepared(dataset_root: str | Path) -> None:
    (Path(dataset_root) / PREPARED_MARKER).unlink(missing_ok=True)


def mark_prepared(dataset_root: str | Path, summary: Mapping[str, Any]) -> None:
    write_json(Path(dataset_root) / PREPARED_MARKER, dict(summary))


def prepared_summary(dataset_root: str | Path) -> dict[str, Any] | None:
    marker = Path(dataset_root) / PREPARED_MARKER
    return read_json(marker) if marker.is_file() else None


def prepare_dataset(
    name: str,
    data_root: str | Path,
    workers: int = 0,
    check_split_sizes: bool = True,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Run the preparation of benchmark ``name`` under ``data_root`` (skipped when already marked done).

    Returns:
        The summary stored in the marker (counts per split, what was converted).
    """
    module = dataset_module(name)
    root = Path(data_root) / module.DIRNAME
    done = prepared_summary(root) if is_prepared(root) else None
    # A set prepared without the size check (a miniature) does not count as done for a checked run.
    if not force and done is not None and (done.get("check_split_sizes", True) or not check_split_sizes):
        log.info("%s already prepared (%s); use --force to redo", name, root / PREPARED_MARKER)
        return done
    if not root.is_dir():
        raise DataError(module.DATASET.missing_message(root))
    clear_prepared(root)
    summary = module.prepare(root, workers=workers, check_split_sizes=check_split_sizes, progress=progress)
    summary = {"dataset": name, "check_split_sizes": check_split_sizes, **summary}
    mark_prepared(root, summary)
    log.info("%s prepared in %s: %s", name, root, summary)
    return summary


# --------------------------------------------------------------------------------------------
# stats / show
# --------------------------------------------------------------------------------------------
def dataset_dir(name: str, data_root: str | Path) -> Path:
    """The folder of dataset ``name`` under ``data_root`` (``synthetic`` -> ``<data_root>/synthetic``)."""
    if name == "synthetic":
        return Path(data_root) / "synthetic"
    return Path(data_root) / dataset_module(name).DIRNAME


def _dataset_class(name: str) -> Any:
    if name == "synthetic":
        from fsanet.data.synthetic import SyntheticDataset

        return SyntheticDataset
    return dataset_module(name).DATASET


def dataset_stats(
    name: str, data_root: str | Path, splits: Sequence[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Sample counts and class frequencies of each split (every label map is read once).

    Returns:
        ``{split: {"samples": n, "classes": {class: pixels}, "ignore": pixels}}``; for COCO instances
        ``{split: {"samples": n, "classes": {class: objects}}}``.
    """
    cls = _dataset_class(name)
    root = dataset_dir(name, data_root)
    if not root.is_dir():
        raise DataError(cls.missing_message(root))
    out: dict[str, Any] = {}
    for split in splits or list(cls.SPLIT_SIZES or ("train", "val")):
        if name == "coco":
            ds = cls(root, split, filter_empty_gt=False)
            out[split] = {"samples": len(ds), "classes": ds.category_counts()}
            continue
        ds = cls(root, split)
        counts = ds.validate(progress=progress)
        ignore = counts.pop("ignore")
        out[split] = {"samples": len(ds), "classes": counts, "ignore": ignore}
    return out


def show_samples(
    name: str, data_root: str | Path, out: str | Path, split: str = "val", n: int = 4, height: int = 256
) -> Path:
    """Write a PNG grid, one row per sample: image | coloured label (palette colours, ignore white).

    For COCO instances the right column is the image with each object's mask in its class colour.

    Args:
        name: dataset.
        data_root: the data folder.
        out: the PNG to write.
        split: which split.
        n: how many samples (the first ``n``).
        height: row height in pixels (each image is resized to it, keeping its aspect ratio).
    """
    from PIL import Image

    from fsanet.data.imageio import write_image

    cls = _dataset_class(name)
    root = dataset_dir(name, data_root)
    if not root.is_dir():
        raise DataError(cls.missing_message(root))
    ds = cls(root, split)
    rows = []
    for i in range(min(n, len(ds))):
        item = ds[i]
        image = item["image"].permute(1, 2, 0).numpy().clip(0, 255).astype(np.uint8)
        if name == "coco":
            right = image.copy()
            for mask, label in zip(item["masks"].numpy(), item["labels"].numpy()):
                sel = mask.astype(bool)
                right[sel] = (0.5 * right[sel] + 0.5 * cls.PALETTE[int(label)]).astype(np.uint8)
        else:
            right = colorize(item["label"].numpy(), cls.PALETTE)
        pair = np.concatenate([image, right], axis=1)
        w = max(1, round(pair.shape[1] * height / pair.shape[0]))
        rows.append(np.asarray(Image.fromarray(pair).resize((w, height), Image.NEAREST)))
    width = max(r.shape[1] for r in rows)
    grid = np.full((height * len(rows), width, 3), 255, dtype=np.uint8)
    for k, r in enumerate(rows):
        grid[k * height : (k + 1) * height, : r.shape[1]] = r
    return write_image(out, grid)
