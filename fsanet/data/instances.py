"""Instance-segmentation data for Mask R-CNN: the synthetic shapes and COCO 2017, one item format.

Items (what :func:`collate_instances` batches and the detector's training and evaluation read)::

    {"image": float (3, H, W) normalised, "boxes": float (N, 4) x1 y1 x2 y2 (pixel edges),
     "labels": int64 (N,) in 0..K-1, "masks": uint8 (N, H, W), "image_id": int (the COCO image id),
     "name": str, "ori_size": (H0, W0), "scale": float (resized / original)}

* ``synthetic``: :class:`SyntheticInstances` draws the split with the generator's own code and records
  every disc, triangle and bar as an instance (:mod:`fsanet.data.synthetic_coco`). The classes are the
  four shape categories, label ``k`` = category id ``CATEGORY_IDS[k]``; image ids are the COCO export's
  (index + 1), so predictions are scored against :func:`fsanet.data.synthetic_coco.coco_dict` directly.
  Nothing is read from disk: a split of 2,000 images is traced in about 5 s.
* ``coco``: :class:`fsanet.data.coco.COCOInstances` (pycocotools, mmdet's filtering rules).

The pipeline (:class:`InstanceTransform`) is mmdet's for Mask R-CNN: keep-ratio resize into
``data.base_scale`` (``[1333, 800]`` for COCO; the 96 px synthetic images stay as they are), random
horizontal flip (``data.flip_prob``, train only), normalisation (``data.mean``/``data.std``). The flip
draws from :func:`fsanet.data.transforms.sample_rng`, a pure function of ``(seed, stream, index)``,
so an item is the same in every run and on resume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from fsanet.data.errors import DataError
from fsanet.data.synthetic import CONTEXT_CLASSES as CONTEXT_CATEGORY_IDS
from fsanet.data.synthetic_coco import CATEGORIES, trace_sample
from fsanet.data.transforms import sample_rng, to_tensor

__all__ = [
    "INSTANCE_DATASETS",
    "InstanceTransform",
    "SyntheticInstances",
    "build_instance_dataset",
    "collate_instances",
]

log = logging.getLogger(__name__)


class InstanceTransform:
    """Keep-ratio resize into ``base_scale``, random horizontal flip (train), normalisation.

    Args:
        base_scale: ``[L, S]``: the long side is at most L and the short side at most S.
        mean, std: per RGB channel, on 0..255 values.
        flip_prob: probability of a horizontal flip (train only).
        train: augment (flip); evaluation items are only resized and normalised.
        seed: the run's data seed.
    """

    def __init__(
        self,
        base_scale: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        flip_prob: float,
        train: bool,
        seed: int = 0,
    ) -> None:
        if len(base_scale) != 2 or min(base_scale) < 1:
            raise ValueError(f"data.base_scale must be [long, short] > 0, got {list(base_scale)}")
        self.long, self.short = max(base_scale), min(base_scale)
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)
        self.flip_prob = float(flip_prob) if train else 0.0
        self.seed = int(seed)

    def __call__(self, item: dict[str, Any], stream: int, index: int) -> dict[str, Any]:
        image, boxes, masks = (
            item["image"],
            item["boxes"].float(),
            item["masks"],
        )  # (3, H, W), (N, 4), (N, H, W)
        h, w = image.shape[-2:]
        scale = min(self.long / max(h, w), self.short / min(h, w))
        if abs(scale - 1.0) > 1e-9:
            size = (max(round(h * scale), 1), max(round(w * scale), 1))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            if masks.shape[0]:
                masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0].to(torch.uint8)
            else:
                masks = masks.new_zeros((0, *size))
            boxes = boxes * torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
            h, w = size
        if self.flip_prob > 0 and sample_rng(self.seed, stream, index).random() < self.flip_prob:
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        image = (image - self.mean) / self.std
        return {
            **item,
            "image": image.contiguous(),
            "boxes": boxes,
            "masks": masks.contiguous(),
            "scale": scale,
        }


class SyntheticInstances(Dataset):
    """The synthetic set's discs, triangles and bars as instances (see the module docstring).

    Args:
        data_cfg: ``cfg.data`` (its ``synthetic`` settings choose the images).
        split: ``"train"`` or ``"val"``.
        transform: the item pipeline (:class:`InstanceTransform`); None = raw 0..255 images.
    """

    NAME = "synthetic"
    #: the instance classes in label order, and their COCO category ids (the label values of the
    #: semantic label maps)
    CATEGORY_IDS: tuple[int, ...] = tuple(CATEGORIES)
    CLASSES: tuple[str, ...] = tuple(CATEGORIES.values())
    #: the classes that only long-range context decides (a disc's class is its governing cue's colour)
    CONTEXT_CLASSES: tuple[str, ...] = tuple(CATEGORIES[k] for k in CONTEXT_CATEGORY_IDS)

    def __init__(self, data_cfg: Any, split: str, transform: InstanceTransform | None = None) -> None:
        from fsanet.data import synthetic as syn

        super().__init__()
        settings = syn.settings_from_config(data_cfg)
        if split not in ("train", "val"):
            raise DataError(f"synthetic instances: unknown split {split!r}; choose train or val")
        self.split, self.transform = split, transform
        seed, count = syn.split_seed(settings, split), syn.split_count(settings, split)
        label_of = {cat: k for k, cat in enumerate(self.CATEGORY_IDS)}
        self._items: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(count):
            image, _, _, instances = trace_sample(settings, seed, i)
            boxes = np.array(
                [[x, y, x + bw, y + bh] for x, y, bw, bh in (inst.bbox for inst in instances)],
                dtype=np.float32,
            ).reshape(-1, 4)
            labels = np.array([label_of[inst.category_id] for inst in instances], dtype=np.int64)
            masks = (
                np.stack([inst.mask for inst in instances]) if instances else np.zeros((0, *image.shape[:2]))
            )
            self._items.append((image, boxes, labels, masks.astype(np.uint8)))
        log.info("synthetic %s: %d images, %d instances", split, count, sum(len(it[2]) for it in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, stream = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        image, boxes, labels, masks = self._items[index]
        item = {
            "image": to_tensor(image),
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "masks": torch.from_numpy(masks.copy()),
            "image_id": index + 1,
            "name": f"{self.split}_{index:05d}",
            "ori_size": tuple(image.shape[:2]),
            "scale": 1.0,
        }
        return item if self.transform is None else self.transform(item, stream, index)


class _COCOItems(Dataset):
    """:class:`fsanet.data.coco.COCOInstances` with the instance pipeline and ``(index, stream)`` keys;
    crowd objects (``ignore``) are left out of the training targets."""

    def __init__(self, data_cfg: Any, split: str, transform: InstanceTransform, train: bool) -> None:
        from fsanet.data.coco import CAT_IDS, COCOInstances

        self.base = COCOInstances(data_cfg.root, split)
        self.CLASSES, self.CATEGORY_IDS, self.NAME = COCOInstances.CLASSES, CAT_IDS, "coco"
        self.transform, self.train = transform, train

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, stream = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        item = dict(self.base[index])
        keep = ~item.pop("ignore")
        if self.train:
            item.update(boxes=item["boxes"][keep], labels=item["labels"][keep], masks=item["masks"][keep])
        item["scale"] = 1.0
        return self.transform(item, stream, index)


#: the datasets with instance annotations
INSTANCE_DATASETS = ("synthetic", "coco")


def build_instance_dataset(cfg: Any, split: str, train: bool, seed: int = 0) -> Dataset:
    """The instance dataset ``cfg.name`` (``synthetic`` or ``coco``) with the train or test pipeline.

    Args:
        cfg: the ``data`` config section.
        split: split name (``cfg.train_split`` / ``cfg.val_split``).
        train: random flips; else resize and normalise only.
        seed: the data seed of the flips.

    Raises:
        KeyError: a dataset without instance annotations (the message lists the ones with them).
        ValueError: ``cfg.num_classes`` disagrees with the dataset's instance classes.
    """
    if cfg.name not in INSTANCE_DATASETS:
        raise KeyError(
            f"data.name={cfg.name!r} has no instance annotations for a detector (model.name=mask_rcnn…); "
            f"choose one of {', '.join(INSTANCE_DATASETS)}"
        )
    transform = InstanceTransform(cfg.base_scale, cfg.mean, cfg.std, cfg.flip_prob, train, seed)
    if cfg.name == "synthetic":
        dataset: Any = SyntheticInstances(cfg, split, transform)
    else:
        dataset = _COCOItems(cfg, split, transform, train)
    if cfg.num_classes != len(dataset.CLASSES):
        raise ValueError(
            f"data.num_classes={cfg.num_classes} but the {cfg.name} instance set has {len(dataset.CLASSES)} "
            f"classes ({', '.join(dataset.CLASSES[:6])}…); set data.num_classes={len(dataset.CLASSES)}"
        )
    return dataset


def collate_instances(items: Sequence[dict[str, Any]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Batch items: images zero-padded at the bottom/right to the largest size (B, 3, H, W), and one
    target dict per image (masks padded alike; the other keys as they are)."""
    h = max(it["image"].shape[-2] for it in items)
    w = max(it["image"].shape[-1] for it in items)
    images = items[0]["image"].new_zeros((len(items), 3, h, w))
    targets = []
    for b, it in enumerate(items):
        ih, iw = it["image"].shape[-2:]
        images[b, :, :ih, :iw] = it["image"]
        masks = it["masks"]
        if masks.shape[-2:] != (h, w):
            masks = F.pad(masks, (0, w - iw, 0, h - ih))
        targets.append({k: v for k, v in it.items() if k != "image"} | {"masks": masks})
    return images, targets
