"""COCO 2017 instances (80 classes, Mask R-CNN): category ids, pycocotools loading, checks, loader.

On disk (``data/coco``; ``train2017.zip``, ``val2017.zip`` and ``annotations_trainval2017.zip``
unzipped into it)::

    annotations/instances_{train,val}2017.json
    {train2017,val2017}/<12-digit id>.jpg

Annotations are read with pycocotools; the per-image rules are mmdet's ``CocoDataset``: skip
``ignore`` objects, boxes with no area inside the image, ``area <= 0``, ``w < 1`` or ``h < 1``, and
categories outside the 80; boxes become ``[x1, y1, x1 + w, y1 + h]``; crowd objects are kept with an
ignore flag. The train split drops images without a usable object or with a side under 32 pixels.
Labels are contiguous 0..79 (``CAT_IDS.index(category_id)``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fsanet.data.coco_stuff import CLASSES as _COCO_STUFF_CLASSES
from fsanet.data.convert import check_count, missing_summary
from fsanet.data.errors import DataError
from fsanet.data.imageio import read_image
from fsanet.data.transforms import to_tensor

__all__ = [
    "CAT_IDS",
    "CLASSES",
    "DIRNAME",
    "PALETTE",
    "SPLIT_SIZES",
    "COCOInstances",
    "load_coco",
    "parse_annotations",
    "prepare",
]

log = logging.getLogger(__name__)

DIRNAME = "coco"

#: COCO category id of each contiguous label 0..79 (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 unused).
# fmt: off
CAT_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
# fmt: on
CAT_TO_LABEL = {cat: i for i, cat in enumerate(CAT_IDS)}
CLASSES: tuple[str, ...] = _COCO_STUFF_CLASSES[:80]  # the things come first in COCO-Stuff, same order
# mmdet's palette.
_PALETTE_HEX = """
    dc143c 770b20 00008e 0000e6 6a00e4 003c64 005064 000046 0000c0 faaa1e 64aa1e dcdc00 af74af
    fa001e a52a2a ff4dff 00e2fc b6b6ff 005200 78a69d 6e4c00 ae39ff c76400 480076 ffb3f0 007d5c
    d10097 bcd0b6 00dcb0 ff63a4 5c0049 8581ff 4eb4ff 00e400 aefff3 2d59ff 868667 9194ae ffd0ba
    c5e2ff ab8601 6d3f36 cf8aff 97005f 09503d 546933 4a4169 a6c466 d0c3d2 ff6d41 008f95 b300c2
    d1636a 057900 e3ffcd 93bad0 994501 035fa1 a3ff00 7700aa 00b6c7 00a578 b78258 5f2000 827287
    6e8185 a64a76 db8eb9 4fd272 b25a3e 41460f 7fa773 3b696a 8e6c2d c4ac00 5f3650 804cff c93901
    f6007a bfa2d0
"""
PALETTE = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _PALETTE_HEX.split()], dtype=np.uint8)

SPLITS = {"train": "train2017", "val": "val2017"}
SPLIT_SIZES = {"train": 118287, "val": 5000}


def annotation_file(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{SPLITS[split]}.json"


def load_coco(path: str | Path):
    """A ``pycocotools.coco.COCO`` index of an instances JSON (pycocotools' prints silenced).

    Raises:
        DataError: missing file, invalid JSON, or not a COCO instances file.
    """
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: annotation file not found; unzip annotations_trainval2017.zip into {path.parent.parent}"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data
    ]
    if missing:
        raise DataError(f"{path}: not a COCO instances file (no {', '.join(missing)})")
    ids = [a["id"] for a in data["annotations"]]
    if len(ids) != len(set(ids)):
        raise DataError(f"{path}: annotation ids are not unique")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def parse_annotations(coco: Any, image_id: int, with_masks: bool = True) -> dict[str, np.ndarray]:
    """The usable objects of one image, by mmdet's rules.

    Args:
        coco: a :func:`load_coco` index.
        image_id: the COCO image id.
        with_masks: decode the masks (polygons and RLE through pycocotools); False leaves ``(0, H, W)``.

    Returns:
        ``boxes`` float32 ``(N, 4)`` xyxy, ``labels`` int64 ``(N,)`` in 0..79, ``masks`` uint8
        ``(N, H, W)``, ``ignore`` bool ``(N,)`` (crowd objects).
    """
    info = coco.imgs[image_id]
    h, w = int(info["height"]), int(info["width"])
    boxes, labels, masks, ignore = [], [], [], []
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("ignore", False):
            continue
        x1, y1, bw, bh = ann["bbox"]
        inter_w = max(0.0, min(x1 + bw, w) - max(x1, 0.0))
        inter_h = max(0.0, min(y1 + bh, h) - max(y1, 0.0))
        if inter_w * inter_h == 0 or ann["area"] <= 0 or bw < 1 or bh < 1:
            continue
        if ann["category_id"] not in CAT_TO_LABEL:
            continue
        boxes.append([x1, y1, x1 + bw, y1 + bh])
        labels.append(CAT_TO_LABEL[ann["category_id"]])
        if with_masks:
            with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy-2 DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                masks.append(coco.annToMask(ann))
        ignore.append(bool(ann.get("iscrowd", 0)))
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "masks": np.asarray(masks, dtype=np.uint8).reshape(-1, h, w),
        "ignore": np.asarray(ignore, dtype=bool),
    }


def _keep_for_training(coco: Any, image_id: int, min_size: int) -> bool:
    info = coco.imgs[image_id]
    if min(info["width"], info["height"]) < min_size:
        return False
    return bool(len(parse_annotations(coco, image_id, with_masks=False)["labels"]))


def prepare(
    root: str | Path, workers: int = 0, check_split_sizes: bool = True, progress: bool = True
) -> dict:
    """Check that both annotation files load and that every image they list is on disk.

    Args:
        root: ``data/coco``.
        workers, progress: unused (nothing is converted).
        check_split_sizes: compare the image counts with 118287 / 5000.

    Returns:
        ``{"splits": {split: images}, "annotations": {split: n}, "converted": 0}``.
    """
    root = Path(root)
    images, anns = {}, {}
    for split, folder in SPLITS.items():
        coco = load_coco(annotation_file(root, split))
        files = [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)]
        missing = [f for f in files if not (root / folder / f).is_file()]
        if missing:
            raise DataError(
                f"{root / folder}: images listed in {annotation_file(root, split).name} are missing: "
                f"{missing_summary(missing)}"
            )
        check_count(
            f"{annotation_file(root, split)} images", len(files), SPLIT_SIZES[split], (), check_split_sizes
        )
        images[split], anns[split] = len(files), len(coco.anns)
    return {"splits": images, "annotations": anns, "converted": 0}


class COCOInstances(Dataset):
    """COCO 2017 instance segmentation through pycocotools.

    Args:
        root: ``data/coco``.
        split: ``train`` or ``val``.
        transform: optional callable applied to the output dict.
        filter_empty_gt: drop images without a usable object (default: on for ``train``, as mmdet).
        min_size: with ``filter_empty_gt``, also drop images whose shorter side is below this.

    Items: ``{"image": float (3,H,W) 0..255, "boxes": (N,4) xyxy, "labels": (N,) int64, "masks":
    (N,H,W) uint8, "ignore": (N,) bool, "image_id": int, "name": str, "ori_size": (H, W)}``.
    """

    NAME = "coco"
    CLASSES = CLASSES
    PALETTE = PALETTE
    SPLIT_SIZES = SPLIT_SIZES

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        filter_empty_gt: bool | None = None,
        min_size: int = 32,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise DataError(f"coco: unknown split '{split}'; choose one of {', '.join(SPLITS)}")
        self.root, self.split, self.transform = Path(root), split, transform
        self.coco = load_coco(annotation_file(self.root, split))
        ids = sorted(self.coco.imgs)
        if filter_empty_gt if filter_empty_gt is not None else split == "train":
            ids = [i for i in ids if _keep_for_training(self.coco, i, min_size)]
        if not ids:
            raise DataError(f"{annotation_file(self.root, split)}: no usable image")
        self.image_ids = ids

    @classmethod
    def missing_message(cls, root: Path) -> str:
        return (
            f"{root}: coco dataset folder not found; create it with `fsanet data download coco`\n"
            "expected layout:\n  annotations/instances_{train,val}2017.json\n  {train2017,val2017}/<id>.jpg"
        )

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.root / SPLITS[self.split] / info["file_name"]
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise DataError(
                f"{path}: size {image.shape[1]}x{image.shape[0]} differs from the annotation's "
                f"{info['width']}x{info['height']}"
            )
        ann = parse_annotations(self.coco, image_id)
        out = {
            "image": to_tensor(image),
            "boxes": torch.from_numpy(ann["boxes"]),
            "labels": torch.from_numpy(ann["labels"]),
            "masks": torch.from_numpy(ann["masks"]),
            "ignore": torch.from_numpy(ann["ignore"]),
            "image_id": int(image_id),
            "name": Path(info["file_name"]).stem,
            "ori_size": (int(info["height"]), int(info["width"])),
        }
        return self.transform(out) if self.transform is not None else out

    def category_counts(self) -> dict[str, int]:
        """Objects per class over the split's images (crowd objects included)."""
        counts = dict.fromkeys(CLASSES, 0)
        for i in self.image_ids:
            for label in parse_annotations(self.coco, i, with_masks=False)["labels"]:
                counts[CLASSES[int(label)]] += 1
        return counts


DATASET = COCOInstances
