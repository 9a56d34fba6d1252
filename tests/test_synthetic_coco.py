"""The synthetic set as COCO instances (traced from the generator) and COCO AP evaluation."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk, polygon

import fsanet.data.synthetic as syn
import fsanet.data.synthetic_coco as sc
from fsanet.config import SyntheticConfig, load_config
from fsanet.data.errors import DataError
from fsanet.engine.coco_eval import coco_ap

PARAMS = Path(__file__).resolve().parents[1] / "params" / "data" / "synthetic.yaml"
TINY = ["data.synthetic.image_size=64", "data.synthetic.num_val=8", "data.synthetic.min_cue_distance=30"]
KIND = {syn.DISC_RED: "discs", syn.DISC_BLUE: "discs", syn.TRIANGLE: "triangles", syn.BAR: "bars"}


def _settings(**kw) -> SyntheticConfig:
    return syn.check_settings(SyntheticConfig(**kw))


@pytest.fixture(scope="module")
def data_cfg():
    return load_config([PARAMS], TINY).data


@pytest.fixture(scope="module")
def gt_json(tmp_path_factory: pytest.TempPathFactory, data_cfg) -> Path:
    return sc.export_coco(data_cfg, "val", tmp_path_factory.mktemp("coco") / "instances_val.json")


def _coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# ---------------------------------------------------------------------------------------- the tracer
@pytest.mark.parametrize("layout", ["band", "cells"])
def test_traced_generation_is_bit_identical(layout: str) -> None:
    settings = _settings(layout=layout)
    for seed in (0, 1, 7):
        for index in (0, 3, 11):
            image, label, info = syn.generate_sample(settings, seed, index)
            t_image, t_label, t_info, _ = sc.trace_sample(settings, seed, index)
            assert np.array_equal(image, t_image) and image.dtype == t_image.dtype
            assert np.array_equal(label, t_label) and label.dtype == t_label.dtype
            assert info == t_info
    # the generator module is left as it was: its helpers are the real ones, its functions its own
    assert syn.disk is disk and syn.polygon is polygon
    assert syn.generate_sample.__globals__ is vars(syn)


@pytest.mark.parametrize("layout", ["band", "cells"])
def test_instances_are_the_drawn_shapes(layout: str) -> None:
    settings = _settings(layout=layout, num_val=30)
    s = settings.image_size
    for item in sc.synthetic_instances(settings, "val"):
        _, label, info = syn.generate_sample(settings, settings.val_seed, item.index)
        np.testing.assert_array_equal(item.label, label)
        counts = {"discs": 0, "triangles": 0, "bars": 0}
        union = np.zeros_like(label, dtype=bool)
        for inst in item.instances:
            counts[KIND[inst.category_id]] += 1
            # every mask lies inside its class's pixels of the label map
            assert inst.mask.any() and np.all(label[inst.mask] == inst.category_id)
            assert not (union & inst.mask).any()
            union |= inst.mask
            ys, xs = np.nonzero(inst.mask)
            assert inst.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert inst.area == inst.mask.sum()
            # the mask is the shape rendered from its geometry (no shapes overlap at these settings)
            geo, render = inst.geometry, np.zeros((s, s), dtype=bool)
            if geo["shape"] == "disc":
                cx, cy = geo["center"]
                render[disk((cy, cx), geo["radius"], shape=(s, s))] = True
            elif geo["shape"] == "triangle":
                v = np.array(geo["vertices"])
                render[polygon(v[:, 1], v[:, 0], shape=(s, s))] = True
            else:
                x0, y0, x1, y1 = geo["box"]
                render[y0:y1, x0:x1] = True
            np.testing.assert_array_equal(render, inst.mask)
        assert counts == {k: info[k] for k in counts}
        # ... and together they are exactly the shape pixels of the label map (cue bands are stuff)
        np.testing.assert_array_equal(union, np.isin(label, list(sc.CATEGORIES)))


def test_occluded_pixels_belong_to_the_later_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the spacing rule switched off shapes overlap; each mask keeps only its visible pixels."""
    monkeypatch.setattr(syn, "_GAP", -1000)
    settings = _settings()
    occluded = 0
    for index in range(40):
        _, label, _, instances = sc.trace_sample(settings, 3, index)  # runs check_instances (exact)
        for inst in instances:
            assert np.all(label[inst.mask] == inst.category_id)
            if inst.geometry["shape"] == "bar":
                x0, y0, x1, y1 = inst.geometry["box"]
                occluded += inst.area < (x1 - x0) * (y1 - y0)
            elif inst.geometry["shape"] == "disc":
                cx, cy = inst.geometry["center"]
                occluded += inst.area < len(disk((cy, cx), inst.geometry["radius"], shape=label.shape)[0])
    assert occluded > 0


def test_check_instances_rejects_a_label_map_from_another_drawing() -> None:
    _, label, _, instances = sc.trace_sample(_settings(), 1, 0)
    sc.check_instances(label, instances)
    moved = label.copy()
    moved[instances[0].mask] = syn.BACKGROUND
    with pytest.raises(DataError, match=r"instance 0 \(disc_\w+\) has \d+ pixels of other classes"):
        sc.check_instances(moved, instances)
    extra = label.copy()
    extra[0, 0] = syn.TRIANGLE if label[0, 0] != syn.TRIANGLE else syn.BAR
    with pytest.raises(DataError, match="pixels of the label map are in no instance"):
        sc.check_instances(extra, instances)
    sc.check_instances(extra, instances, exact=False)  # subset only


# ---------------------------------------------------------------------------------------- the export
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # its Cython decode under numpy 2
def test_export_is_valid_coco(gt_json: Path, data_cfg) -> None:
    from pycocotools import mask as mask_utils

    coco = _coco(gt_json)
    settings = syn.settings_from_config(data_cfg)
    assert sorted(coco.getImgIds()) == list(range(1, 9))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {
        3: "disc_red_cue",
        4: "disc_blue_cue",
        5: "triangle",
        6: "bar",
    }
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) == len(set(ann_ids)) > 8
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        assert info["file_name"] == f"val_{image_id - 1:05d}.png" and info["height"] == info["width"] == 64
        _, label, _ = syn.generate_sample(settings, settings.val_seed, image_id - 1)
        union = np.zeros_like(label, dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            mask = coco.annToMask(ann).astype(bool)
            assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
            assert np.all(label[mask] == ann["category_id"])  # mask ⊆ the label map's pixels of its class
            assert ann["area"] == mask.sum()
            assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]).tolist()
            union |= mask
        np.testing.assert_array_equal(union, np.isin(label, [3, 4, 5, 6]))
    assert json.loads(gt_json.read_text())["info"]["settings"]["image_size"] == 64


def test_failed_export_leaves_no_partial_json(
    tmp_path: Path, data_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "instances_val.json"
    real = sc.trace_sample
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(sc, "trace_sample", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        sc.export_coco(data_cfg, "val", out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(sc, "trace_sample", real)

    out.write_text("old\n")  # an interrupted write keeps the previous file and leaves no temporary

    def half_write(self: Path, text: str, *args, **kwargs) -> int:
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(OSError, match="disk full"):
        sc.export_coco(data_cfg, "val", out)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [out.name] and out.read_text() == "old\n"


def test_bad_split_or_indices(data_cfg) -> None:
    with pytest.raises(ValueError, match="synthetic split 'test'"):
        sc.synthetic_instances(data_cfg, "test")
    with pytest.raises(ValueError, match=r"has 8 images \(data.synthetic.num_val\); indices \[8\]"):
        sc.synthetic_instances(data_cfg, "val", [0, 8])


# ---------------------------------------------------------------------------------------- COCO AP
def _detections(gt_json: Path, shift: bool = False) -> list[dict]:
    data = json.loads(gt_json.read_text())
    cats = sorted(c["id"] for c in data["categories"])
    other = {c: cats[(i + 1) % len(cats)] for i, c in enumerate(cats)}
    return [
        {
            "image_id": a["image_id"],
            "category_id": other[a["category_id"]] if shift else a["category_id"],
            "score": 1.0,
            "bbox": a["bbox"],
            "segmentation": a["segmentation"],
        }
        for a in data["annotations"]
    ]


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_ap_is_100_for_the_ground_truth_and_0_with_shifted_classes(gt_json: Path, iou_type: str) -> None:
    dets = _detections(gt_json)
    before = json.dumps(dets)
    perfect = coco_ap(gt_json, dets, iou_type)
    assert json.dumps(dets) == before  # the input is not modified
    for key in ("AP", "AP50", "AP75", "APs"):
        assert perfect[key] == pytest.approx(100.0)
    assert math.isnan(perfect["APm"]) and math.isnan(perfect["APl"])  # every shape is "small" (< 32² px)
    assert set(perfect["per_class"]) == set(sc.CATEGORIES.values())
    assert all(v == pytest.approx(100.0) for v in perfect["per_class"].values())

    shifted = coco_ap(gt_json, _detections(gt_json, shift=True), iou_type)
    for key in ("AP", "AP50", "AP75", "APs"):
        assert shifted[key] == 0.0
    assert all(v == 0.0 for v in shifted["per_class"].values())


def test_ap_per_class_nan_without_ground_truth_and_partial_detections(gt_json: Path) -> None:
    data = json.loads(gt_json.read_text())
    data["categories"].append({"id": 9, "name": "ghost", "supercategory": "none"})
    bars = [d for d in _detections(gt_json) if d["category_id"] != syn.BAR]
    result = coco_ap(data, bars, "bbox")  # a dict is accepted as the ground truth
    assert math.isnan(result["per_class"]["ghost"])  # no ground truth of that class: undefined
    assert result["per_class"]["bar"] == 0.0  # objects but no detections
    assert result["per_class"]["triangle"] == pytest.approx(100.0)
    assert result["AP"] == pytest.approx(75.0)  # mean over the 4 defined classes


def test_ap_errors(gt_json: Path, tmp_path: Path) -> None:
    dets = _detections(gt_json)
    with pytest.raises(ValueError, match="detection list is empty"):
        coco_ap(gt_json, [], "segm")
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: 999"):
        coco_ap(gt_json, dets + [{**dets[0], "image_id": 999}], "segm")
    with pytest.raises(ValueError, match=r"category ids not in the ground truth: 1, 42"):
        coco_ap(gt_json, [{**dets[0], "category_id": 42}, {**dets[1], "category_id": 1}], "bbox")
    with pytest.raises(ValueError, match="iou_type='keypoints'"):
        coco_ap(gt_json, dets, "keypoints")
    with pytest.raises(ValueError, match="detection 0 has no bbox"):
        coco_ap(gt_json, [{k: v for k, v in dets[0].items() if k != "bbox"}], "bbox")
    with pytest.raises(ValueError, match="detection 0 segmentation is not an RLE dict"):
        coco_ap(gt_json, [{**dets[0], "segmentation": [[0, 0, 5, 0, 5, 5]]}], "segm")
    with pytest.raises(FileNotFoundError, match="nothing.json: ground-truth file not found"):
        coco_ap(tmp_path / "nothing.json", dets, "segm")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(
        DataError, match=r"bad.json: not a COCO instances file \(no annotations, categories\)"
    ):
        coco_ap(tmp_path / "bad.json", dets, "segm")
