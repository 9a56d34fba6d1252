"""The dataset contract every segmentation dataset follows (mmseg 1.x conventions).

A subclass sets the class-level facts (``CLASSES``, ``PALETTE``, ``SPLIT_SIZES``, the expected on-disk
``LAYOUT``) and implements :meth:`SegmentationDataset.samples`, which lists ``(image, label)`` file
pairs for ``self.split``, usually with :func:`read_split_list` (one ``name`` per line) or
:func:`scan_pairs` (recursive scan, sorted by image path). The base class reads, checks and
transforms each pair:

>>> ds = SyntheticDataset("data/synthetic", "train", transform=build_transform(cfg.data, train=True))
>>> item = ds[0]   # {"image": (3,H,W) float32, "label": (H,W) int64, "name": str, "ori_size": (H, W)}

Randomness: the transform of item ``i`` draws from ``sample_rng(seed, epoch, i)``, a generator that
depends only on those three numbers. The same item therefore gets the same augmentation whichever
DataLoader worker loads it, and a resumed run sees exactly the data it would have seen. Set the
epoch with :meth:`SegmentationDataset.set_epoch`, or index with a pair ``ds[(i, step)]`` to pass it
explicitly (what an iteration-based sampler does; it also works with persistent workers).

Bad input fails with a :class:`DataError` naming the file and the fix: a missing dataset folder (with
the expected layout and the command that fetches it), split lists naming missing files, unreadable or
truncated files, image/label size mismatches, label values outside ``[0, K) ∪ {255}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from fsanet.data.errors import DataError
from fsanet.data.imageio import read_image, read_label
from fsanet.data.transforms import sample_rng, to_tensor

__all__ = ["DataError", "SegmentationDataset", "read_split_list", "scan_pairs"]

log = logging.getLogger(__name__)

# A transform maps {"image": uint8 (H,W,3), "label": uint8 (H,W)} and a generator to the output dict.
Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]

_MAX_LISTED = 5  # how many missing files an error message names before summarising


def _missing_summary(missing: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in missing[:_MAX_LISTED])
    more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    return f"{len(missing)} missing: {shown}{more}"


def read_split_list(
    list_file: str | Path,
    img_dir: str | Path,
    img_suffix: str,
    ann_dir: str | Path,
    seg_suffix: str,
) -> list[tuple[Path, Path]]:
    """Pairs from a split list: each stripped, non-empty line ``name`` gives
    ``(img_dir/name+img_suffix, ann_dir/name+seg_suffix)``, in file order (mmseg ``ann_file``).

    Raises:
        DataError: the list file is missing or empty, or names files that do not exist (all missing
            files are counted, the first few named).
    """
    list_file, img_dir, ann_dir = Path(list_file), Path(img_dir), Path(ann_dir)
    if not list_file.is_file():
        raise DataError(f"{list_file}: split list not found")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{list_file}: split list is empty")
    pairs = [(img_dir / f"{n}{img_suffix}", ann_dir / f"{n}{seg_suffix}") for n in names]
    missing = [p for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DataError(
            f"{list_file}: the split list names files that do not exist ({_missing_summary(missing)}); "
            f"re-run the prepare step or fix the list"
        )
    return pairs


def scan_pairs(
    img_dir: str | Path, img_suffix: str, ann_dir: str | Path, seg_suffix: str
) -> list[tuple[Path, Path]]:
    """Pairs from a recursive scan of ``img_dir`` for ``*img_suffix``, sorted by image path; the label
    is the same relative path under ``ann_dir`` with the suffix swapped (mmseg without ``ann_file``).

    Raises:
        DataError: ``img_dir`` is missing or holds no matching image, or an image has no label.
    """
    img_dir, ann_dir = Path(img_dir), Path(ann_dir)
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found")
    images = sorted(p for p in img_dir.rglob(f"*{img_suffix}") if p.is_file())
    if not images:
        raise DataError(f"{img_dir}: no files ending in {img_suffix!r} found (recursive scan)")
    pairs = []
    for img in images:
        rel = img.relative_to(img_dir).as_posix()
        pairs.append((img, ann_dir / f"{rel[: -len(img_suffix)]}{seg_suffix}"))
    missing = [lbl for _, lbl in pairs if not lbl.is_file()]
    if missing:
        raise DataError(
            f"{ann_dir}: label files missing for some images in {img_dir} ({_missing_summary(missing)})"
        )
    return pairs


class SegmentationDataset(Dataset):
    """Image/label pairs with a fixed class list. Subclasses set CLASSES, PALETTE and implement `samples()`.

    Class attributes a subclass sets:
        NAME: the dataset's name in ``fsanet data ... NAME`` and ``DATASETS``.
        CLASSES: class names, index = label value.
        PALETTE: ``(K, 3)`` uint8 colours for visualisation.
        IGNORE_INDEX: label value excluded from training and metrics (255).
        SPLIT_SIZES: known number of samples per split, checked when ``check_split_size`` is on
            (empty = unknown).
        LAYOUT: the expected on-disk layout under ``root``, shown when it is missing.
        FETCH: the command(s) that produce ``root``.

    Args:
        root: the dataset folder.
        split: split name (``"train"``, ``"val"``, ...); its meaning is the subclass's.
        transform: maps ``({"image", "label"}, rng)`` to ``{"image": Tensor, "label": Tensor, ...}``
            (see :mod:`fsanet.data.transforms`). ``None``: the raw image as float ``(3,H,W)`` in 0..255
            and the label as int64, unnormalised.
        check_labels: check every loaded label against ``[0, K) ∪ {IGNORE_INDEX}``.
        check_split_size: compare the number of samples with ``SPLIT_SIZES[split]``.
        seed: base seed of the per-item augmentation generators.
        cache: keep every checked raw pair in memory after its first load (per process; small sets only).
    """

    NAME: ClassVar[str] = ""
    CLASSES: ClassVar[tuple[str, ...]] = ()
    PALETTE: ClassVar[np.ndarray] = np.zeros((0, 3), dtype=np.uint8)
    IGNORE_INDEX: ClassVar[int] = 255
    SPLIT_SIZES: ClassVar[dict[str, int]] = {}
    LAYOUT: ClassVar[str] = ""
    FETCH: ClassVar[str] = "fsanet data download {name} && fsanet data prepare {name}"

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        check_labels: bool = True,
        check_split_size: bool = False,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        super().__init__()
        if len(self.CLASSES) == 0 or np.asarray(self.PALETTE).shape != (len(self.CLASSES), 3):
            raise TypeError(
                f"{type(self).__name__}: CLASSES must be non-empty and PALETTE of shape (len(CLASSES), 3); "
                f"got {len(self.CLASSES)} classes and palette shape {np.asarray(self.PALETTE).shape}"
            )
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.check_labels = check_labels
        self.seed = int(seed)
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        if not self.root.is_dir():
            raise DataError(self.missing_message(self.root))
        self._samples: list[tuple[Path, Path]] = [(Path(i), Path(lb)) for i, lb in self.samples()]
        if not self._samples:
            raise DataError(
                f"{self.root}: split '{split}' of {self.NAME or type(self).__name__} has no samples"
            )
        expected = self.SPLIT_SIZES.get(split)
        if check_split_size and expected is not None and expected != len(self._samples):
            raise DataError(
                f"{self.root}: split '{split}' has {len(self._samples)} samples, expected {expected}; the "
                f"dataset is incomplete or mixed up (set data.check_split_sizes=false for a subset)"
            )

    # ---------------------------------------------------------------- subclass API
    def samples(self) -> list[tuple[Path, Path]]:
        """``(image, label)`` file pairs of ``self.split``; raise DataError if a listed file is missing."""
        raise NotImplementedError(f"{type(self).__name__} must implement samples()")

    def convert_label(self, label: np.ndarray) -> np.ndarray:
        """Map a label as stored on disk to class indices (identity; ADE overrides: reduce_zero_label)."""
        return label

    def sample_name(self, index: int) -> str:
        """A short name for item ``index`` (default: the image file name without its extension)."""
        return self._samples[index][0].stem

    @classmethod
    def missing_message(cls, root: Path) -> str:
        """The error text for a missing dataset folder: the layout expected and how to fetch it."""
        name = cls.NAME or cls.__name__
        layout = f"\nexpected layout under {root}:\n{cls.LAYOUT.rstrip()}" if cls.LAYOUT else ""
        fetch = cls.FETCH.format(name=name, root=root)
        return f"{root}: {name} dataset folder not found; create it with `{fetch}`{layout}"

    # ---------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    @property
    def files(self) -> list[tuple[Path, Path]]:
        """The ``(image, label)`` pairs (a copy)."""
        return list(self._samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream used by plain integer indexing."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._samples)

    # ---------------------------------------------------------------- loading
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked raw pair: RGB ``uint8 (H,W,3)`` and class-index ``uint8 (H,W)`` (after convert_label).

        Transforms must not modify these arrays in place (they may be cached).
        """
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img_path, lbl_path = self._samples[index]
        image = read_image(img_path)
        label = self.convert_label(read_label(lbl_path))
        if image.shape[:2] != label.shape:
            raise DataError(
                f"{lbl_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from image "
                f"{img_path} size {image.shape[1]}x{image.shape[0]}; the pair does not belong together"
            )
        if self.check_labels:
            self.check_label(label, lbl_path)
        if self._cache is not None:
            image.flags.writeable = False  # a transform writing into a cached array fails loudly
            label.flags.writeable = False
            self._cache[index] = (image, label)
        return image, label

    def check_label(self, label: np.ndarray, path: Path | str) -> None:
        """Raise DataError if ``label`` holds values outside ``[0, K) ∪ {IGNORE_INDEX}``."""
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = values[(values >= self.num_classes) & (values != self.IGNORE_INDEX)]
        if bad.size:
            raise DataError(
                f"{path}: label values {bad.tolist()[:10]} are outside the {self.num_classes} classes of "
                f"{self.NAME or type(self).__name__} (valid: 0..{self.num_classes - 1} and "
                f"{self.IGNORE_INDEX} = ignore); the label map was not converted (run `fsanet data prepare "
                f"{self.NAME or '<name>'}`) or belongs to another dataset"
            )

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, (tuple, list)):
            index, epoch = int(index[0]), int(index[1])
        else:
            index, epoch = int(index), self.epoch
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image, label = self.load(index)
        ori_size = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is None:
            out = {"image": to_tensor(image), "label": torch.from_numpy(label.astype(np.int64))}
        else:
            out = dict(self.transform({"image": image, "label": label}, sample_rng(self.seed, epoch, index)))
        out["name"] = self.sample_name(index)
        out["ori_size"] = ori_size
        return out

    def validate(self, progress: bool = False) -> dict[str, int]:
        """Read every pair once (checks readability, sizes and label values); return pixel counts per class.

        Returns:
            ``{class name: pixel count}`` plus ``"ignore"``.
        """
        from tqdm import tqdm

        counts = np.zeros(256, dtype=np.int64)
        for i in tqdm(range(len(self)), desc=f"check {self.NAME}/{self.split}", disable=not progress):
            _, label = self.load(i)
            counts += np.bincount(label.ravel(), minlength=256)
        out = {name: int(counts[k]) for k, name in enumerate(self.CLASSES)}
        out["ignore"] = int(counts[self.IGNORE_INDEX])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
