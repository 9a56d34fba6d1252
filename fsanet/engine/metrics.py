"""Segmentation metrics with mmseg's conventions: mIoU, mAcc and aAcc from areas summed over the set.

Per image, pixels whose label is ``ignore_index`` are dropped; the intersection, union, predicted
and labelled areas of every class are accumulated over the whole set (never averaged per image).
Then ``IoU_c = ΣI_c / ΣU_c``, ``Acc_c = ΣI_c / ΣGT_c``, ``aAcc = ΣI / ΣGT``, and ``mIoU``/``mAcc``
are NaN-means over classes, so a class absent from both labels and predictions (union 0) is left
out, while a class that is predicted but never labelled counts with IoU 0. Values are percentages.

Two implementations, kept in parity by a test: the fast path accumulates a confusion matrix with one
``bincount``; the reference path follows mmseg's per-class histograms literally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["SegmentationMetric", "confusion_matrix", "intersect_and_union", "summarize"]


def confusion_matrix(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Counts ``cm[t, p]`` of pixels labelled ``t`` and predicted ``p`` (fast path).

    Args:
        pred: predicted class ids, any shape.
        label: true class ids, same shape; ``ignore_index`` pixels are skipped.
        num_classes: K.
        ignore_index: label value that marks pixels to ignore.

    Returns:
        (K, K) int64 tensor.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    pred, label = pred.reshape(-1).long(), label.reshape(-1).long()
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        bad = label[(label < 0) | (label >= num_classes)][0].item()
        raise ValueError(
            f"label value {bad} outside 0..{num_classes - 1} (and not ignore_index {ignore_index})"
        )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"prediction outside 0..{num_classes - 1}")
    counts = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def intersect_and_union(
    pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mmseg's per-class areas of one image (reference path).

    Returns:
        ``(intersect, union, area_pred, area_label)``, each (K,) float64.
    """
    keep = label != ignore_index
    pred, label = pred[keep].double(), label[keep].double()
    intersect = pred[pred == label]
    hist = lambda x: torch.histc(x, bins=num_classes, min=0, max=num_classes - 1)  # noqa: E731
    area_i, area_p, area_l = hist(intersect), hist(pred), hist(label)
    return area_i, area_p + area_l - area_i, area_p, area_l


def summarize(cm: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, mAcc, aAcc and per-class IoU/Acc (percent; NaN where a class has no union/no label)."""
    cm = cm.double()
    inter = cm.diag()
    area_label, area_pred = cm.sum(1), cm.sum(0)
    union = area_label + area_pred - inter
    iou = inter / union  # 0/0 -> NaN: class absent from labels and predictions
    acc = inter / area_label
    total = area_label.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(cm.shape[0])]
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names for {cm.shape[0]} classes")
    return {
        "aAcc": 100 * float(inter.sum() / total) if total > 0 else math.nan,
        "mIoU": 100 * float(iou.nanmean()),
        "mAcc": 100 * float(acc.nanmean()),
        "IoU": {n: 100 * float(v) for n, v in zip(names, iou)},
        "Acc": {n: 100 * float(v) for n, v in zip(names, acc)},
        "area_label": {n: int(v) for n, v in zip(names, area_label)},
        "area_pred": {n: int(v) for n, v in zip(names, area_pred)},
    }


class SegmentationMetric:
    """Accumulates a confusion matrix over a set of images.

    Args:
        num_classes: K.
        ignore_index: label value to skip.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, label: Tensor) -> None:
        self.cm += confusion_matrix(pred, label, self.num_classes, self.ignore_index)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return summarize(self.cm, class_names)
