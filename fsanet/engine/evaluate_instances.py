"""The instance-segmentation part of ``fsanet eval``: a detector's predictions scored with COCO AP.

:func:`fsanet.engine.evaluate.evaluate` builds the model, applies ``eval.eval_band`` and records the
run; for a detector (a method whose ``task`` is ``"instances"``) it calls :func:`instance_inference`
and :func:`instance_metrics` from here instead of the per-pixel metrics.

* Inference: one image at a time, as mmdet tests; boxes are scaled back to the original image and
  masks resized to it (bilinear on the pasted mask probabilities, then ``mask_thr``).
* Scoring: pycocotools ``COCOeval`` (:func:`fsanet.engine.coco_eval.coco_ap`) for boxes (``bbox``) and
  masks (``segm``): AP, AP50, AP75, APs/m/l and AP per class. The ground truth is the COCO instances
  file of the split: for the synthetic set the export of :func:`fsanet.data.synthetic_coco.coco_dict`
  (made in memory from the same settings), for COCO ``annotations/instances_val2017.json``.
* ``context_mask_AP`` / ``context_box_AP``: the mean AP over the classes whose identity depends on
  long-range context (the synthetic set's two disc classes), the study's measure of what attention adds.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from fsanet.data.synthetic_coco import rle_encode
from fsanet.engine.coco_eval import coco_ap
from fsanet.io import write_text

__all__ = ["instance_inference", "instance_metrics", "write_instance_tables"]

log = logging.getLogger(__name__)


@torch.inference_mode()
def instance_inference(
    cfg: DictConfig, model: torch.nn.Module, dataset: Any, device: torch.device
) -> dict[str, Any]:
    """Run the detector over the validation items; COCO-format detections and per-image latency.

    Returns:
        ``{"detections": [{"image_id", "category_id", "bbox", "score", "segmentation"}, ...],
        "num_images", "seconds" (per image), "image_ids"}``.
    """
    ec = cfg.eval
    n = len(dataset) if ec.limit <= 0 else min(ec.limit, len(dataset))
    thr = float(model.settings.mask_thr)
    detections: list[dict[str, Any]] = []
    seconds, image_ids = [], []
    for i in tqdm(
        range(n),
        desc=f"eval {cfg.data.val_split}",
        unit="img",
        mininterval=1.0,
        disable=not cfg.train.progress,
    ):
        item = dataset[i]
        t0 = time.perf_counter()
        out = model(item["image"][None].to(device))[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        image_ids.append(int(item["image_id"]))
        if not len(out["scores"]):
            continue
        scale, (h0, w0) = float(item["scale"]), item["ori_size"]
        boxes = (out["boxes"].cpu() / scale).numpy()
        masks = out["masks"].float()
        if masks.shape[-2:] != (h0, w0):
            masks = F.interpolate(masks[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        masks = (masks >= thr).cpu().numpy()
        for k in range(len(boxes)):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            detections.append(
                {
                    "image_id": int(item["image_id"]),
                    "category_id": int(dataset.CATEGORY_IDS[int(out["labels"][k])]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(out["scores"][k]),
                    "segmentation": rle_encode(masks[k]),
                }
            )
    return {"detections": detections, "num_images": n, "seconds": seconds, "image_ids": image_ids}


def _ground_truth(cfg: DictConfig, image_ids: list[int]) -> Any:
    """The split's COCO instances (a dict for the synthetic set, the annotation file for COCO), cut to the
    images evaluated (``eval.limit``)."""
    if cfg.data.name == "synthetic":
        from fsanet.data.synthetic_coco import coco_dict

        return coco_dict(cfg.data, cfg.data.val_split, [i - 1 for i in image_ids])
    from fsanet.data.coco import annotation_file
    from fsanet.io import read_json

    gt = read_json(annotation_file(cfg.data.root, cfg.data.val_split))
    wanted = set(image_ids)
    if len(wanted) < len(gt["images"]):
        gt = {
            **gt,
            "images": [im for im in gt["images"] if im["id"] in wanted],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in wanted],
        }
    return gt


def instance_metrics(cfg: DictConfig, dataset: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Box and mask COCO AP of ``result`` (from :func:`instance_inference`), in percent.

    Returns:
        ``{"box": {"AP", "AP50", …, "per_class"}, "mask": {…}, "box_AP", "mask_AP", "context_classes",
        "context_box_AP", "context_mask_AP"}``; with no detection at all every AP is 0.
    """
    gt = _ground_truth(cfg, result["image_ids"])
    out: dict[str, Any] = {}
    for key, iou_type in (("box", "bbox"), ("mask", "segm")):
        if result["detections"]:
            out[key] = coco_ap(gt, result["detections"], iou_type)
        else:  # COCOeval refuses an empty result; nothing detected scores 0 everywhere
            log.warning("the detector found nothing in %d images: every AP is 0", result["num_images"])
            zero = dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 0.0)
            out[key] = {**zero, "per_class": dict.fromkeys(dataset.CLASSES, 0.0)}
    context = list(getattr(dataset, "CONTEXT_CLASSES", ()))
    out.update(box_AP=out["box"]["AP"], mask_AP=out["mask"]["AP"], context_classes=context)
    for key in ("box", "mask"):
        values = [out[key]["per_class"][c] for c in context]
        defined = [v for v in values if not math.isnan(v)]
        out[f"context_{key}_AP"] = statistics.fmean(defined) if defined else None
    return out


def write_instance_tables(out_dir: Path, classes: list[str], metrics: dict[str, Any]) -> None:
    """``per_class.csv`` and ``per_class.md``: box and mask AP per class."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    rows = [(c, metrics["box"]["per_class"].get(c), metrics["mask"]["per_class"].get(c)) for c in classes]
    csv = "class,box_AP,mask_AP\n" + "".join(f"{c},{fmt(b)},{fmt(m)}\n" for c, b, m in rows)
    md = "| class | box AP | mask AP |\n|---|---:|---:|\n" + "".join(
        f"| {c} | {fmt(b)} | {fmt(m)} |\n" for c, b, m in rows
    )
    write_text(out_dir / "per_class.csv", csv)
    write_text(out_dir / "per_class.md", md)
