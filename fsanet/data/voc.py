"""PASCAL VOC 2012 + SBD ("VOCaug", 21 classes): palette, SBD ``.mat`` conversion, train_aug lists, loader.

On disk, after extracting ``VOCtrainval_11-May-2012.tar`` into ``data/`` and ``benchmark.tgz`` into
``data/VOCdevkit/``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette PNG, indices 0..20, 255 = border
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/benchmark_RELEASE/dataset/{cls/<id>.mat, img/, inst/, train.txt, val.txt}
        (mmseg's location ``VOCdevkit/VOCaug/dataset`` is accepted as well)

Preparation (mmseg ``voc_aug.py``) converts each SBD ``cls/<id>.mat`` (``GTcls.Segmentation``) to
``VOC2012/SegmentationClassAug/<id>.png`` (mode L) and writes, under ``ImageSets/Segmentation``,
``trainaug.txt`` = (VOC train ∪ SBD train ∪ SBD val) − VOC val (10582 ids) and ``aug.txt`` = that set
minus VOC train (9118 ids), both sorted. The ``train_aug`` split is VOC ``train.txt`` read from
``SegmentationClass`` followed by ``aug.txt`` read from ``SegmentationClassAug`` (1464 + 9118 = 10582).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.io

from fsanet.data.base import SegmentationDataset, read_split_list
from fsanet.data.convert import check_count, missing_summary, parallel_map
from fsanet.data.errors import DataError
from fsanet.data.imageio import write_label
from fsanet.io import write_text

__all__ = [
    "CLASSES",
    "DIRNAME",
    "PALETTE",
    "SPLIT_SIZES",
    "VOCDataset",
    "aug_lists",
    "load_sbd_segmentation",
    "prepare",
    "sbd_dir",
    "voc_palette",
]

log = logging.getLogger(__name__)

DIRNAME = "VOCdevkit/VOC2012"
SBD_DIRS = ("VOCaug/dataset", "benchmark_RELEASE/dataset")  # relative to VOCdevkit

# fmt: off
CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
# fmt: on

SPLIT_SIZES = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582}
SBD_SIZES = {"train": 8498, "val": 2857}
AUG_SIZE = 10582 - 1464  # 9118


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map: bit ``3j+c`` of the index sets bit ``7-j`` of channel ``c``. ``(n, 3)`` uint8."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        out[i] = rgb
    return out


PALETTE = voc_palette(len(CLASSES))


def load_sbd_segmentation(path: str | Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as ``uint8 (H, W)`` with values 0..20.

    Raises:
        DataError: unreadable file, missing field or values outside 0..20.
    """
    try:
        mat = scipy.io.loadmat(str(path))
        seg = np.asarray(mat["GTcls"][0]["Segmentation"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"{path}: not an SBD class annotation (GTcls.Segmentation): {err}") from None
    if seg.ndim != 2:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected (H, W)")
    if seg.size and (seg.min() < 0 or seg.max() > 20):
        bad = np.unique(seg[(seg < 0) | (seg > 20)]).tolist()[:5]
        raise DataError(f"{path}: GTcls.Segmentation holds values {bad} outside 0..20")
    return seg.astype(np.uint8)


def _convert_one(job: tuple[str, str]) -> bool:
    mat, out = job
    if Path(out).is_file():
        return False
    write_label(out, load_sbd_segmentation(mat))
    return True


def aug_lists(
    voc_train: list[str], voc_val: list[str], sbd_train: list[str], sbd_val: list[str]
) -> tuple[list[str], list[str]]:
    """``(trainaug, aug)``, sorted.

    trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val; aug = (SBD train ∪ SBD val) − VOC train − VOC val.
    """
    full_aug = set(sbd_train) | set(sbd_val)
    trainaug = (set(voc_train) | full_aug) - set(voc_val)
    aug = full_aug - set(voc_train) - set(voc_val)
    return sorted(trainaug), sorted(aug)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def sbd_dir(voc_root: str | Path) -> Path:
    """The SBD ``dataset`` folder beside ``VOC2012`` (``VOCaug/dataset`` or ``benchmark_RELEASE/dataset``)."""
    devkit = Path(voc_root).parent
    for rel in SBD_DIRS:
        if (devkit / rel / "cls").is_dir():
            return devkit / rel
    raise DataError(
        f"{devkit}: SBD not found (looked for {' and '.join(str(devkit / r / 'cls') for r in SBD_DIRS)}); "
        f"extract benchmark.tgz into {devkit} (`fsanet data download voc`)"
    )


def prepare(
    root: str | Path, workers: int = 0, check_split_sizes: bool = True, progress: bool = True
) -> dict:
    """Convert SBD ``.mat`` labels to PNG and write ``trainaug.txt`` / ``aug.txt``.

    Args:
        root: ``data/VOCdevkit/VOC2012``.
        workers: processes (0 = one per CPU).
        check_split_sizes: compare with 1464/1449/2913, SBD 8498/2857, trainaug 10582, aug 9118.
        progress: progress bar.

    Returns:
        ``{"splits": {...}, "converted": n}``.

    Raises:
        DataError: missing lists or files (named), sizes that differ, malformed ``.mat`` files.
    """
    root = Path(root)
    lists = root / "ImageSets" / "Segmentation"
    voc = {s: _read_ids(lists / f"{s}.txt") for s in ("train", "val", "trainval")}
    for split, ids in voc.items():
        check_count(f"{lists / split}.txt ids", len(ids), SPLIT_SIZES[split], (), check_split_sizes)
        missing = [i for i in ids if not (root / "SegmentationClass" / f"{i}.png").is_file()]
        missing += [f"{i}.jpg" for i in ids if not (root / "JPEGImages" / f"{i}.jpg").is_file()]
        if missing:
            raise DataError(
                f"{root}: files of {split}.txt missing from SegmentationClass/JPEGImages: "
                f"{missing_summary(missing)}"
            )
    sbd = sbd_dir(root)
    sbd_ids = {s: _read_ids(sbd / f"{s}.txt") for s in ("train", "val")}
    for split, ids in sbd_ids.items():
        check_count(f"{sbd / split}.txt ids", len(ids), SBD_SIZES[split], (), check_split_sizes)
    full = sorted(set(sbd_ids["train"]) | set(sbd_ids["val"]))
    no_mat = [f"{i}.mat" for i in full if not (sbd / "cls" / f"{i}.mat").is_file()]
    if no_mat:
        raise DataError(f"{sbd / 'cls'}: class annotations missing: {missing_summary(no_mat)}")
    trainaug, aug = aug_lists(voc["train"], voc["val"], sbd_ids["train"], sbd_ids["val"])
    check_count("VOC trainaug ids", len(trainaug), SPLIT_SIZES["train_aug"], (), check_split_sizes)
    check_count("VOC aug ids", len(aug), AUG_SIZE, (), check_split_sizes)
    no_jpg = [f"{i}.jpg" for i in trainaug if not (root / "JPEGImages" / f"{i}.jpg").is_file()]
    if no_jpg:
        raise DataError(f"{root / 'JPEGImages'}: images of trainaug missing: {missing_summary(no_jpg)}")
    out_dir = root / "SegmentationClassAug"
    jobs = [(str(sbd / "cls" / f"{i}.mat"), str(out_dir / f"{i}.png")) for i in full]
    converted = sum(parallel_map(_convert_one, jobs, workers, "voc SegmentationClassAug", progress))
    write_text(lists / "trainaug.txt", "".join(f"{i}\n" for i in trainaug))
    write_text(lists / "aug.txt", "".join(f"{i}\n" for i in aug))
    splits = {s: len(v) for s, v in voc.items()}
    splits.update(train_aug=len(voc["train"]) + len(aug), aug=len(aug), sbd=len(full))
    return {"splits": splits, "converted": converted, "sbd_dir": str(sbd)}


class VOCDataset(SegmentationDataset):
    """PASCAL VOC 2012 segmentation, optionally with the SBD augmentation.

    Splits: ``train`` (1464), ``val`` (1449), ``trainval`` (2913) from ``SegmentationClass``;
    ``train_aug`` (10582) = ``train.txt`` (SegmentationClass) + ``aug.txt`` (SegmentationClassAug).
    """

    NAME = "voc"
    CLASSES = CLASSES
    PALETTE = PALETTE
    SPLIT_SIZES = SPLIT_SIZES
    LAYOUT = (
        "  JPEGImages/<id>.jpg\n  SegmentationClass/<id>.png           (palette PNG)\n"
        "  SegmentationClassAug/<id>.png        (from prepare, for train_aug)\n"
        "  ImageSets/Segmentation/{train,val,trainval}.txt, aug.txt (from prepare)"
    )

    def samples(self) -> list[tuple[Path, Path]]:
        lists, images = self.root / "ImageSets" / "Segmentation", self.root / "JPEGImages"
        if self.split in ("train", "val", "trainval"):
            return read_split_list(
                lists / f"{self.split}.txt", images, ".jpg", self.root / "SegmentationClass", ".png"
            )
        if self.split == "train_aug":
            if not (lists / "aug.txt").is_file():
                raise DataError(
                    f"{lists / 'aug.txt'}: not found; run `fsanet data prepare voc` for train_aug"
                )
            return read_split_list(
                lists / "train.txt", images, ".jpg", self.root / "SegmentationClass", ".png"
            ) + read_split_list(lists / "aug.txt", images, ".jpg", self.root / "SegmentationClassAug", ".png")
        raise DataError(f"voc: unknown split '{self.split}'; choose one of {', '.join(SPLIT_SIZES)}")


DATASET = VOCDataset
