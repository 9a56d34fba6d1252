"""COCO-Stuff-164k (171 classes): raw stuff+thing maps -> contiguous trainIds, loader.

On disk (``data/coco_stuff164k``; ``train2017.zip``/``val2017.zip`` unzipped into ``images/``,
``stuffthingmaps_trainval2017.zip`` into ``annotations/``)::

    images/{train2017,val2017}/<12-digit id>.jpg
    annotations/{train2017,val2017}/<12-digit id>.png                  raw: value = label id - 1, 255
    unlabeled
    annotations/{train2017,val2017}/<12-digit id>_labelTrainIds.png    from prepare

The raw maps use 182 values (0..181) of which 11 thing ids are never annotated
(:data:`UNUSED_RAW`); trainId = rank of the raw value among the 171 used ones, as mmseg's
``coco_stuff164k.py`` computes it. Unlike mmseg (which leaves an unmapped value unchanged, so it
would read as another class), unused values become 255; values 182..254 are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fsanet.data.base import SegmentationDataset, scan_pairs
from fsanet.data.convert import check_count, missing_summary, parallel_map
from fsanet.data.errors import DataError
from fsanet.data.imageio import read_label, write_label

__all__ = [
    "CLASSES",
    "DIRNAME",
    "PALETTE",
    "RAW_TO_TRAINID",
    "SPLIT_SIZES",
    "UNUSED_RAW",
    "COCOStuffDataset",
    "prepare",
    "raw_to_train_ids",
]

log = logging.getLogger(__name__)

DIRNAME = "coco_stuff164k"

# Raw PNG values (= COCO-Stuff id - 1) of the thing ids never annotated: 12 street sign, 26 hat,
# 29 shoe, 30 eye glasses, 45 plate, 66 mirror, 68 window, 69 desk, 71 door, 83 blender, 91 hair brush.
UNUSED_RAW = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
USED_RAW = tuple(v for v in range(182) if v not in UNUSED_RAW)

#: raw value (0..181, 255) -> trainId (0..170, 255); unused values -> 255; 182..254 -> 255 (the
#: converter refuses them).
RAW_TO_TRAINID = np.full(256, 255, dtype=np.uint8)
RAW_TO_TRAINID[list(USED_RAW)] = np.arange(len(USED_RAW), dtype=np.uint8)

# fmt: off
CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff",
    "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
# fmt: on
# mmseg's palette (visualisation only; it holds duplicate colours).
_PALETTE_HEX = """
    00c040 00c040 004060 80c0c0 004040 00c0e0 00c0c0 80c040 00c060 80c040 8020c0 0000e0 000040
    00a0c0 800060 8000c0 0020c0 8080e0 0000c0 80a0c0 808000 800020 802000 800080 408020 00a000
    000000 c080a0 002000 008080 4080a0 80a000 008000 c08020 806080 000080 400020 00e080 800000
    c000a0 006080 808080 4000a0 80e080 808040 c00020 806000 8000c0 008020 40e000 000040 8080a0
    406000 0080c0 0080a0 c0e000 008040 808020 c02080 0040c0 000020 40a080 804040 8000a0 402080
    80c0c0 0000a0 c0a080 80c000 800060 c02000 804080 408060 40a000 004000 c080e0 402000 00c080
    4080e0 c0a000 00c000 c08060 c06080 004080 400060 40e080 804000 c000e0 406080 80c080 4000e0
    c0e080 80c040 c00060 c06000 8040c0 008060 00e000 404040 8080e0 006000 40c0c0 0080e0 80e000
    40c040 808060 802080 4000c0 004060 00a080 c00040 8040e0 002080 c080c0 0040e0 80a080 c08000
    804020 802040 c00080 40c020 00a040 400000 c0c0a0 002040 408080 40c0a0 80a040 408000 c0c020
    8060c0 400080 404020 00e0c0 c00000 c040a0 0060c0 c08080 4040a0 80e0c0 c08040 c04020 806040
    c000c0 00c020 40e040 400040 80c0a0 406040 4080c0 00c0a0 c0e040 408040 80c020 c020c0 4040c0
    004020 40a0c0 c04040 8040a0 4020c0 c0c0c0 0040a0 c0a0c0 c0c000 804060 c02040 c04080 40c060
    40a040 404000
"""
PALETTE = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _PALETTE_HEX.split()], dtype=np.uint8)

SPLITS = {"train": "train2017", "val": "val2017"}
SPLIT_SIZES = {"train": 118287, "val": 5000}
SUFFIX = "_labelTrainIds.png"


def raw_to_train_ids(raw: np.ndarray, source: str = "label map") -> np.ndarray:
    """Map a raw stuff+thing map to trainIds (0..170, 255 = unlabeled or never-annotated value).

    Raises:
        DataError: values 182..254, which no COCO-Stuff map holds.
    """
    raw = np.asarray(raw)
    bad = (raw >= 182) & (raw != 255)
    if bad.any():
        raise DataError(
            f"{source}: values {np.unique(raw[bad]).tolist()[:5]} are not COCO-Stuff raw labels (0..181, 255)"
        )
    unused = np.isin(raw, list(UNUSED_RAW))
    if unused.any():
        log.warning(
            "%s: %d pixels hold never-annotated raw values %s; mapped to 255",
            source,
            int(unused.sum()),
            np.unique(raw[unused]).tolist(),
        )
    return RAW_TO_TRAINID[raw.astype(np.uint8)]


def _convert_one(raw_path: str) -> bool:
    out = Path(raw_path[: -len(".png")] + SUFFIX)
    if out.is_file():
        return False
    write_label(out, raw_to_train_ids(read_label(raw_path), raw_path))
    return True


def prepare(
    root: str | Path, workers: int = 0, check_split_sizes: bool = True, progress: bool = True
) -> dict:
    """Convert every raw map to ``<stem>_labelTrainIds.png`` after checking the layout and counts.

    Args:
        root: ``data/coco_stuff164k``.
        workers: processes (0 = one per CPU).
        check_split_sizes: compare with 118287 / 5000 (off for miniatures).
        progress: progress bar.

    Returns:
        ``{"splits": {split: count}, "converted": n}``.
    """
    root = Path(root)
    todo, counts = [], {}
    for split, folder in SPLITS.items():
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        for d, archive in ((img_dir, f"{folder}.zip"), (ann_dir, "stuffthingmaps_trainval2017.zip")):
            if not d.is_dir():
                raise DataError(f"{d}: folder not found; unzip {archive} into {d.parent}")
        images = {p.stem for p in img_dir.glob("*.jpg")}
        raws = {p.stem for p in ann_dir.glob("*.png") if not p.name.endswith(SUFFIX)}
        if images != raws:
            raise DataError(
                f"{root}: images/{folder} and annotations/{folder} do not match: "
                f"images without map: {missing_summary(sorted(images - raws)) or 'none'}; "
                f"maps without image: {missing_summary(sorted(raws - images)) or 'none'}"
            )
        check_count(f"{ann_dir} raw maps", len(raws), SPLIT_SIZES[split], (), check_split_sizes)
        counts[split] = len(raws)
        todo += [str(ann_dir / f"{s}.png") for s in sorted(raws)]
    converted = sum(parallel_map(_convert_one, todo, workers, "coco_stuff labelTrainIds", progress))
    return {"splits": counts, "converted": converted}


class COCOStuffDataset(SegmentationDataset):
    """COCO-Stuff-164k: 171 classes (80 things + 91 stuff), no ignore-zero reduction.

    Splits: ``train`` (train2017, 118287), ``val`` (val2017, 5000).
    """

    NAME = "coco_stuff"
    CLASSES = CLASSES
    PALETTE = PALETTE
    SPLIT_SIZES = SPLIT_SIZES
    LAYOUT = (
        "  images/{train2017,val2017}/<12-digit id>.jpg\n"
        "  annotations/{train2017,val2017}/<12-digit id>_labelTrainIds.png  (from prepare)"
    )

    def samples(self) -> list[tuple[Path, Path]]:
        if self.split not in SPLITS:
            raise DataError(f"coco_stuff: unknown split '{self.split}'; choose one of {', '.join(SPLITS)}")
        folder = SPLITS[self.split]
        return scan_pairs(self.root / "images" / folder, ".jpg", self.root / "annotations" / folder, SUFFIX)


DATASET = COCOStuffDataset
