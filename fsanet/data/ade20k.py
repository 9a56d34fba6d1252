"""ADE20K / MIT SceneParsing (ADEChallengeData2016, 150 classes): classes, palette, checks, loader.

On disk (``data/ade/ADEChallengeData2016`` after unzipping ``ADEChallengeData2016.zip`` into ``data/ade``)::

    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    annotations/{training,validation}/<same stem>.png      mode L, 0 = other (not evaluated), k = class k

There is nothing to convert: the loader applies mmseg's ``reduce_zero_label`` (0 -> 255, k -> k-1)
when reading, so class indices are 0..149. Preparation checks the layout and the split sizes
(20210 / 2000) and names the missing files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fsanet.data.base import SegmentationDataset, scan_pairs
from fsanet.data.convert import check_count, missing_summary
from fsanet.data.errors import DataError

__all__ = ["CLASSES", "DIRNAME", "PALETTE", "SPLIT_SIZES", "ADE20KDataset", "prepare", "reduce_zero_label"]

log = logging.getLogger(__name__)

DIRNAME = "ade/ADEChallengeData2016"

# Index = trainId 0..149 (raw PNG value - 1), objectInfo150 order (mmseg spells index 7 'bed ').
# fmt: off
CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# fmt: on
_PALETTE_HEX = """
    787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d
    787846 08ff33 ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0
    0907e6 dcdcdc ff095c 7009ff 08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06
    ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00
    ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff 0bc8c8 ff5200 00fff5 003dff 00ff70
    00ff85 ff0000 ffa300 ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99
    ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 00ff52
    000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00
    08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff
    9900ff 47ff00 ff00a3 ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00
    00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8
    005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff
"""
PALETTE = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _PALETTE_HEX.split()], dtype=np.uint8)

SPLITS = {"train": "training", "val": "validation"}
SPLIT_SIZES = {"train": 20210, "val": 2000}
_PREFIX = {"train": "ADE_train_", "val": "ADE_val_"}


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg ``reduce_zero_label``: 0 -> 255 (ignored), k -> k-1, 255 stays 255."""
    label = np.asarray(label)
    out = label.astype(np.int16) - 1
    out[label == 0] = 255
    out[label == 255] = 255
    return out.astype(np.uint8)


def prepare(
    root: str | Path, workers: int = 0, check_split_sizes: bool = True, progress: bool = True
) -> dict:
    """Check the layout: every image has an annotation and each split has its known size.

    Args:
        root: ``data/ade/ADEChallengeData2016``.
        workers, progress: unused (nothing is converted); kept for the common signature.
        check_split_sizes: compare with 20210 / 2000 and name the missing files (off for miniatures).

    Returns:
        ``{"splits": {split: count}, "converted": 0}``.
    """
    root = Path(root)
    counts = {}
    for split, folder in SPLITS.items():
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DataError(f"{d}: folder not found; unzip ADEChallengeData2016.zip into {root.parent}")
        images = {p.stem for p in img_dir.glob("*.jpg")}
        labels = {p.stem for p in ann_dir.glob("*.png")}
        if images != labels:
            raise DataError(
                f"{root}: images/{folder} and annotations/{folder} do not match: "
                f"without annotation: {missing_summary(sorted(images - labels)) or 'none'}; "
                f"without image: {missing_summary(sorted(labels - images)) or 'none'}"
            )
        expected = SPLIT_SIZES[split]
        missing = sorted({f"{_PREFIX[split]}{i:08d}" for i in range(1, expected + 1)} - images)
        check_count(f"{img_dir} images", len(images), expected, missing, check_split_sizes)
        counts[split] = len(images)
    return {"splits": counts, "converted": 0}


class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing: 150 classes, raw value 0 ignored (``reduce_zero_label``).

    Splits: ``train`` (images/training, 20210), ``val`` (images/validation, 2000).
    """

    NAME = "ade20k"
    CLASSES = CLASSES
    PALETTE = PALETTE
    SPLIT_SIZES = SPLIT_SIZES
    LAYOUT = (
        "  images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg\n"
        "  annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png"
    )

    def samples(self) -> list[tuple[Path, Path]]:
        if self.split not in SPLITS:
            raise DataError(f"ade20k: unknown split '{self.split}'; choose one of {', '.join(SPLITS)}")
        folder = SPLITS[self.split]
        return scan_pairs(self.root / "images" / folder, ".jpg", self.root / "annotations" / folder, ".png")

    def convert_label(self, label: np.ndarray) -> np.ndarray:
        return reduce_zero_label(label)


DATASET = ADE20KDataset
