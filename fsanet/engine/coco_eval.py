"""COCO average precision of instance detections through ``pycocotools.cocoeval.COCOeval``, quietly.

Returned numbers are percentages (AP 1.0 in COCOeval's terms is 100.0 here).

Undefined entries (NaN)
-----------------------
COCOeval writes ``-1`` where a quantity is undefined: a summary AP over an area range that holds no
ground-truth object (e.g. ``APm`` and ``APl`` on the 96 px synthetic set, whose shapes are all
"small", under 32² px), or a category's precision when the ground truth has no object of that
category. :func:`coco_ap` returns NaN for those, never -1 or 0: a per-class AP averages only the
precision entries above -1 (IoU thresholds 0.50:0.95, all recall thresholds, area ``all``, 100
detections per image) and is NaN when none is defined. A category with objects but no correct
detection gets 0, not NaN.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fsanet.data.errors import DataError

__all__ = ["IOU_TYPES", "SUMMARY_KEYS", "coco_ap", "load_coco_gt"]

log = logging.getLogger(__name__)

IOU_TYPES = ("segm", "bbox")
#: the first six entries of ``COCOeval.stats``, in order
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@contextlib.contextmanager
def _quiet(buffer: io.StringIO):
    """Capture pycocotools' prints and its numpy-2 DeprecationWarning from the Cython mask code."""
    with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def load_coco_gt(gt_json: str | Path | Mapping[str, Any]):
    """A ``pycocotools.coco.COCO`` index of a ground-truth instances file (or dict), quietly.

    Args:
        gt_json: path of a COCO instances JSON, or the dict itself.

    Raises:
        FileNotFoundError: no such file.
        DataError: not valid JSON, or no ``images``/``annotations``/``categories``.
    """
    from pycocotools.coco import COCO

    if isinstance(gt_json, Mapping):
        where, data = "ground-truth dict", copy.deepcopy(dict(gt_json))
    else:
        path = Path(gt_json)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: ground-truth file not found; export one first (e.g. "
                "fsanet.data.synthetic_coco.export_coco)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err}); re-export it") from None
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data
    ]
    if missing:
        raise DataError(f"{where}: not a COCO instances file (no {', '.join(missing)})")
    coco = COCO()
    coco.dataset = data
    with _quiet(io.StringIO()):
        coco.createIndex()
    return coco


def _some(values: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _prepare(coco_gt: Any, detections: Sequence[Mapping[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Checked copies of the detections in the form ``COCO.loadRes`` expects for ``iou_type``."""
    from pycocotools import mask as mask_utils

    if len(detections) == 0:
        raise ValueError(
            "coco_ap: the detection list is empty; pass at least one dict with image_id, category_id, "
            "score and " + ("segmentation (RLE)" if iou_type == "segm" else "bbox")
        )
    geometry_key = "segmentation" if iou_type == "segm" else "bbox"
    out = []
    for k, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise ValueError(f"coco_ap: detection {k} is a {type(det).__name__}, not a dict")
        keys = ("image_id", "category_id", "score", geometry_key)
        absent = [key for key in keys if key not in det]
        if absent:
            raise ValueError(f"coco_ap: detection {k} has no {', '.join(absent)} (iou_type={iou_type!r})")
        try:
            d = {
                "image_id": int(det["image_id"]),
                "category_id": int(det["category_id"]),
                "score": float(det["score"]),
            }
        except (TypeError, ValueError):
            raise ValueError(
                f"coco_ap: detection {k} needs integer image_id/category_id and a numeric score, got "
                f"{det['image_id']!r}/{det['category_id']!r}/{det['score']!r}"
            ) from None
        if not math.isfinite(d["score"]):
            raise ValueError(f"coco_ap: detection {k} has score {det['score']!r}; scores must be finite")
        if iou_type == "bbox":
            try:
                box = [float(v) for v in det["bbox"]]
            except (TypeError, ValueError):
                box = []
            if len(box) != 4 or box[2] < 0 or box[3] < 0:
                raise ValueError(
                    f"coco_ap: detection {k} bbox {det['bbox']!r} is not [x, y, w, h] with w, h >= 0"
                )
            d["bbox"] = box  # no segmentation: loadRes then takes the box area as the detection's area
        else:
            seg = det["segmentation"]
            if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
                raise ValueError(
                    f"coco_ap: detection {k} segmentation is not an RLE dict with 'size' and 'counts' "
                    "(encode masks with pycocotools.mask.encode)"
                )
            h, w = (int(v) for v in seg["size"])
            info = coco_gt.imgs.get(d["image_id"])
            if info is not None and (h, w) != (int(info["height"]), int(info["width"])):
                raise ValueError(
                    f"coco_ap: detection {k} mask is {w}x{h} but image {d['image_id']} is "
                    f"{info['width']}x{info['height']}"
                )
            counts = seg["counts"]
            if isinstance(counts, list):  # uncompressed RLE: compress it
                rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            else:
                rle = {
                    "size": [h, w],
                    "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
                }
            d["segmentation"] = rle  # no bbox: loadRes then takes the mask area and box
        out.append(d)

    unknown_images = sorted({d["image_id"] for d in out} - set(coco_gt.getImgIds()))
    if unknown_images:
        raise ValueError(
            f"coco_ap: detections name image ids not in the ground truth: {_some(unknown_images)}; "
            "use the ground-truth file's image ids"
        )
    unknown_cats = sorted({d["category_id"] for d in out} - set(coco_gt.getCatIds()))
    if unknown_cats:
        raise ValueError(
            f"coco_ap: detections name category ids not in the ground truth: {_some(unknown_cats)}; "
            f"its categories are {sorted(coco_gt.getCatIds())}"
        )
    return out


def _percent(value: float) -> float:
    return float("nan") if value < 0 else 100.0 * float(value)


def coco_ap(
    gt_json: str | Path | Mapping[str, Any], detections: Sequence[Mapping[str, Any]], iou_type: str = "segm"
) -> dict[str, Any]:
    """COCO AP of ``detections`` against a ground-truth instances file.

    Args:
        gt_json: path of a COCO instances JSON (e.g. from
            :func:`fsanet.data.synthetic_coco.export_coco`) or the dict itself.
        detections: one dict per detection: ``image_id``, ``category_id``, ``score`` and, for
            ``iou_type="bbox"``, ``bbox`` ``[x, y, w, h]``; for ``"segm"``, ``segmentation`` as an RLE
            dict (``counts`` compressed str/bytes or an uncompressed list). The other key, if present,
            is ignored (as detectron2 does, so that the area ranges use the evaluated geometry). The
            input is not modified.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"`` (box IoU).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent (``COCOeval.stats[:6]`` × 100) and
        ``"per_class"``: ``{category name: AP}`` (mean precision over IoU 0.50:0.95 and the 101 recall
        thresholds, area "all", 100 detections per image). Undefined values (COCOeval's -1) are NaN;
        see the module docstring.

    Raises:
        ValueError: unknown ``iou_type``, an empty detection list, a malformed detection (its index and
            key are named), or image/category ids absent from the ground truth (listed).
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"coco_ap: iou_type={iou_type!r}; choose one of {list(IOU_TYPES)}")
    coco_gt = load_coco_gt(gt_json)
    dets = _prepare(coco_gt, detections, iou_type)
    if not coco_gt.getAnnIds():
        log.warning("coco_ap: the ground truth has no annotations; every AP is NaN")

    printed = io.StringIO()
    with _quiet(printed):
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("COCOeval (%s):\n%s", iou_type, printed.getvalue())

    result: dict[str, Any] = {key: _percent(v) for key, v in zip(SUMMARY_KEYS, evaluator.stats[:6])}
    params = evaluator.params
    precision = evaluator.eval["precision"]  # (IoU thresholds, recall thresholds, classes, areas, maxDets)
    area = params.areaRngLbl.index("all")
    max_dets = params.maxDets.index(100)
    per_class = {}
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, area, max_dets]
        defined = p[p > -1]
        per_class[coco_gt.cats[cat_id]["name"]] = (
            float(100.0 * np.mean(defined)) if defined.size else float("nan")
        )
    result["per_class"] = per_class
    return result
