"""Cityscapes (gtFine, 19 evaluated classes): label table, labelIds -> trainIds, loader.

On disk (``data/cityscapes``, after unzipping ``gtFine_trainvaltest.zip`` and
``leftImg8bit_trainvaltest.zip``)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_{labelIds.png,polygons.json,...}

Preparation maps every ``*_gtFine_labelIds.png`` through the 34-entry labelId -> trainId table
(:data:`ID_TO_TRAINID`, 255 = ignore) into ``*_gtFine_labelTrainIds.png`` and writes
``{train,val,test}.txt`` (``aachen/aachen_000000_000019`` per line), as mmseg's converter does.
:func:`render_polygons` is the reference path: it draws the ``*_polygons.json`` the way
cityscapesScripts' ``json2labelImg`` does, and the tests check both paths agree.

The archives need a login to the Cityscapes site: see :mod:`fsanet.data.cityscapes_site`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from fsanet.data.base import SegmentationDataset, scan_pairs
from fsanet.data.convert import check_count, missing_summary, parallel_map
from fsanet.data.errors import DataError
from fsanet.data.imageio import read_label, write_label
from fsanet.io import write_text

__all__ = [
    "CLASSES",
    "DIRNAME",
    "ID_TO_TRAINID",
    "LABELS",
    "PALETTE",
    "SPLIT_SIZES",
    "CityscapesDataset",
    "Label",
    "label_ids_to_train_ids",
    "prepare",
    "render_polygons",
]

log = logging.getLogger(__name__)

DIRNAME = "cityscapes"


class Label(NamedTuple):
    id: int
    name: str
    train_id: int  # 255 = not evaluated, -1 = never drawn
    category: str
    cat_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


# cityscapesScripts labels.py: id|name|trainId|category|catId|hasInstances|ignoreInEval|colour
_TABLE = """
0|unlabeled|255|void|0|0|1|000000
1|ego vehicle|255|void|0|0|1|000000
2|rectification border|255|void|0|0|1|000000
3|out of roi|255|void|0|0|1|000000
4|static|255|void|0|0|1|000000
5|dynamic|255|void|0|0|1|6f4a00
6|ground|255|void|0|0|1|510051
7|road|0|flat|1|0|0|804080
8|sidewalk|1|flat|1|0|0|f423e8
9|parking|255|flat|1|0|1|faaaa0
10|rail track|255|flat|1|0|1|e6968c
11|building|2|construction|2|0|0|464646
12|wall|3|construction|2|0|0|66669c
13|fence|4|construction|2|0|0|be9999
14|guard rail|255|construction|2|0|1|b4a5b4
15|bridge|255|construction|2|0|1|966464
16|tunnel|255|construction|2|0|1|96785a
17|pole|5|object|3|0|0|999999
18|polegroup|255|object|3|0|1|999999
19|traffic light|6|object|3|0|0|faaa1e
20|traffic sign|7|object|3|0|0|dcdc00
21|vegetation|8|nature|4|0|0|6b8e23
22|terrain|9|nature|4|0|0|98fb98
23|sky|10|sky|5|0|0|4682b4
24|person|11|human|6|1|0|dc143c
25|rider|12|human|6|1|0|ff0000
26|car|13|vehicle|7|1|0|00008e
27|truck|14|vehicle|7|1|0|000046
28|bus|15|vehicle|7|1|0|003c64
29|caravan|255|vehicle|7|1|1|00005a
30|trailer|255|vehicle|7|1|1|00006e
31|train|16|vehicle|7|1|0|005064
32|motorcycle|17|vehicle|7|1|0|0000e6
33|bicycle|18|vehicle|7|1|0|770b20
-1|license plate|-1|vehicle|7|0|1|00008e
"""

LABELS: tuple[Label, ...] = tuple(
    Label(int(i), n, int(t), c, int(ci), h == "1", g == "1", _hex(col))
    for i, n, t, c, ci, h, g, col in (line.split("|") for line in _TABLE.strip().splitlines())
)
NAME_TO_LABEL: dict[str, Label] = {lb.name: lb for lb in LABELS}

#: labelId (0..33) -> trainId (0..18, 255 = ignore); ids 34..255 do not exist and map to 255.
ID_TO_TRAINID = np.full(256, 255, dtype=np.uint8)
for _lb in LABELS:
    if 0 <= _lb.id and 0 <= _lb.train_id < 255:
        ID_TO_TRAINID[_lb.id] = _lb.train_id

_EVAL = sorted((lb for lb in LABELS if 0 <= lb.train_id < 255), key=lambda lb: lb.train_id)
CLASSES: tuple[str, ...] = tuple(lb.name for lb in _EVAL)
PALETTE = np.array([lb.color for lb in _EVAL], dtype=np.uint8)

# fmt: off
TRAIN_CITIES = (
    "aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
    "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich",
)
# fmt: on
# Per-city train counts from third-party code (they sum to 2975); used to name what is missing.
TRAIN_CITY_SIZES = dict(
    zip(TRAIN_CITIES, (174, 96, 316, 154, 85, 221, 109, 248, 196, 119, 99, 94, 365, 196, 144, 95, 142, 122))
)
VAL_CITIES = ("frankfurt", "lindau", "munster")
TEST_CITIES = ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich")
CITIES = {"train": TRAIN_CITIES, "val": VAL_CITIES, "test": TEST_CITIES}
SPLIT_SIZES = {"train": 2975, "val": 500, "test": 1525}

IMG_SUFFIX = "_leftImg8bit.png"
IDS_SUFFIX = "_gtFine_labelIds.png"
TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"


# --------------------------------------------------------------------------------------------
# Label conversion: LUT on labelIds (fast path) and polygon rendering (reference path)
# --------------------------------------------------------------------------------------------
def label_ids_to_train_ids(ids: np.ndarray) -> np.ndarray:
    """Map a labelIds map (values 0..33) to trainIds (0..18, 255 = ignore).

    Raises:
        ValueError: values above 33 (not a Cityscapes labelIds map).
    """
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) > 33:
        bad = np.unique(ids[ids > 33]).tolist()[:5]
        raise ValueError(f"labelIds values {bad} are not Cityscapes ids (0..33); is this a labelIds map?")
    return ID_TO_TRAINID[ids.astype(np.uint8)]


def _resolve_label(name: str, source: str) -> Label:
    if name not in NAME_TO_LABEL and name.endswith("group"):
        name = name[: -len("group")]
    if name not in NAME_TO_LABEL:
        raise DataError(f"{source}: unknown Cityscapes label '{name}'")
    return NAME_TO_LABEL[name]


def render_polygons(polygons: dict[str, Any] | str | Path, encoding: str = "trainIds") -> np.ndarray:
    """Draw a ``*_gtFine_polygons.json`` into a label map, like cityscapesScripts ``json2labelImg``.

    The canvas starts as 'unlabeled' (id 0 / trainId 255); objects are filled in file order with
    their id or trainId; 'deleted' objects and labels with a negative id (license plate) are skipped;
    a ``...group`` label draws as its class.

    Args:
        polygons: the parsed JSON or its path.
        encoding: ``"ids"`` or ``"trainIds"``.

    Returns:
        ``uint8 (imgHeight, imgWidth)``.
    """
    source = "polygons"
    if not isinstance(polygons, dict):
        source = str(polygons)
        try:
            polygons = json.loads(Path(polygons).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{source}: cannot read polygon JSON ({err})") from None
    if encoding not in ("ids", "trainIds"):
        raise ValueError(f"encoding must be 'ids' or 'trainIds', got {encoding!r}")
    background = NAME_TO_LABEL["unlabeled"]
    fill = background.id if encoding == "ids" else background.train_id
    img = Image.new("L", (int(polygons["imgWidth"]), int(polygons["imgHeight"])), fill)
    draw = ImageDraw.Draw(img)
    for obj in polygons["objects"]:
        if obj.get("deleted"):
            continue
        label = _resolve_label(obj["label"], source)
        if label.id < 0:
            continue
        value = label.id if encoding == "ids" else label.train_id
        draw.polygon([(float(x), float(y)) for x, y in obj["polygon"]], fill=int(value))
    return np.array(img, dtype=np.uint8)


def _convert_one(ids_path: str) -> bool:
    """``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png``; False if it already existed."""
    out = Path(ids_path[: -len(IDS_SUFFIX)] + TRAINIDS_SUFFIX)
    if out.is_file():
        return False
    try:
        train_ids = label_ids_to_train_ids(read_label(ids_path))
    except ValueError as err:
        raise DataError(f"{ids_path}: {err}") from None
    write_label(out, train_ids)  # mode 'L', as cityscapesScripts writes it
    return True


# --------------------------------------------------------------------------------------------
# Preparation
# --------------------------------------------------------------------------------------------
def _name(ids_path: Path, split_dir: Path) -> str:
    rel = ids_path.relative_to(split_dir).as_posix()
    return rel[: -len(IDS_SUFFIX)]


def _split_missing(split: str, names: list[str]) -> list[str]:
    """What is missing from a split, by city (the only granularity known without the file list)."""
    by_city: dict[str, int] = {}
    for n in names:
        by_city[n.split("/")[0]] = by_city.get(n.split("/")[0], 0) + 1
    if split == "train":
        return [
            f"{c} ({by_city.get(c, 0)} of {k})" for c, k in TRAIN_CITY_SIZES.items() if by_city.get(c, 0) < k
        ]
    return [f"{c} (no files)" for c in CITIES[split] if c not in by_city]


def prepare(
    root: str | Path, workers: int = 0, check_split_sizes: bool = True, progress: bool = True
) -> dict:
    """Convert every labelIds map to trainIds and write ``{split}.txt``.

    Args:
        root: ``data/cityscapes``.
        workers: processes (0 = one per CPU).
        check_split_sizes: compare each split with 2975/500/1525 (off for miniatures).
        progress: progress bar.

    Returns:
        ``{"splits": {split: count}, "converted": n}``.

    Raises:
        DataError: missing folders, split sizes that differ (naming the cities short of files), images
            without a label map or the reverse, or label maps that are not labelIds.
    """
    root = Path(root)
    splits: dict[str, list[str]] = {}
    for split in SPLIT_SIZES:
        gt_dir, img_dir = root / "gtFine" / split, root / "leftImg8bit" / split
        if not gt_dir.is_dir() and not check_split_sizes:
            continue
        if not gt_dir.is_dir() or not img_dir.is_dir():
            raise DataError(
                f"{gt_dir if not gt_dir.is_dir() else img_dir}: folder not found; unzip "
                f"gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip into {root} "
                f"(`fsanet data download cityscapes`)"
            )
        names = sorted(_name(p, gt_dir) for p in gt_dir.rglob(f"*{IDS_SUFFIX}"))
        images = {
            p.relative_to(img_dir).as_posix()[: -len(IMG_SUFFIX)] for p in img_dir.rglob(f"*{IMG_SUFFIX}")
        }
        no_image = sorted(set(names) - images)
        no_label = sorted(images - set(names))
        if no_image or no_label:
            raise DataError(
                f"{root}: leftImg8bit/{split} and gtFine/{split} do not match: "
                + (f"label maps without image: {missing_summary(no_image)}; " if no_image else "")
                + (f"images without labelIds map: {missing_summary(no_label)}" if no_label else "")
            )
        check_count(
            f"{root}/gtFine/{split} labelIds maps",
            len(names),
            SPLIT_SIZES[split],
            _split_missing(split, names),
            check_split_sizes,
        )
        splits[split] = names
    if not splits:
        raise DataError(f"{root}: no gtFine/<split> folder found")
    todo = [str(root / "gtFine" / s / f"{n}{IDS_SUFFIX}") for s, names in splits.items() for n in names]
    converted = sum(parallel_map(_convert_one, todo, workers, "cityscapes labelTrainIds", progress))
    for split, names in splits.items():
        write_text(root / f"{split}.txt", "".join(f"{n}\n" for n in names))
    return {"splits": {s: len(n) for s, n in splits.items()}, "converted": converted}


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>`` paired with ``*_gtFine_labelTrainIds.png``.

    Splits: ``train`` (2975), ``val`` (500), ``test`` (1525, labels withheld: all ignore).
    """

    NAME = "cityscapes"
    CLASSES = CLASSES
    PALETTE = PALETTE
    SPLIT_SIZES = SPLIT_SIZES
    LAYOUT = (
        "  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  (from prepare)"
    )

    def samples(self) -> list[tuple[Path, Path]]:
        if self.split not in SPLIT_SIZES:
            raise DataError(
                f"cityscapes: unknown split '{self.split}'; choose one of {', '.join(SPLIT_SIZES)}"
            )
        img_dir = self.root / "leftImg8bit" / self.split
        ann_dir = self.root / "gtFine" / self.split
        if not img_dir.is_dir():
            raise DataError(self.missing_message(self.root))
        if ann_dir.is_dir() and not any(ann_dir.rglob(f"*{TRAINIDS_SUFFIX}")):
            raise DataError(f"{ann_dir}: no *{TRAINIDS_SUFFIX} files; run `fsanet data prepare cityscapes`")
        return scan_pairs(img_dir, IMG_SUFFIX, ann_dir, TRAINIDS_SUFFIX)

    def sample_name(self, index: int) -> str:
        return self._samples[index][0].name[: -len(IMG_SUFFIX)]


DATASET = CityscapesDataset
