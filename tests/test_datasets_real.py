"""The five benchmarks on their miniatures: tables against the spec, conversions, split checks, loaders, CLI.

Every expected label array here is written out by hand from the fake's documented block pattern
(see ``tests/fakes.py``), not computed by the code under test. Table digests are sha256 over
``json.dumps`` of the lists as printed by the reference implementations (cityscapesScripts, mmseg, mmdet).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from fakes import write_fake
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from fsanet.cli import main
from fsanet.config import load_config
from fsanet.data import DATASETS, ade20k, build_dataset, cityscapes, coco, coco_stuff, voc
from fsanet.data.errors import DataError
from fsanet.data.imageio import read_image, read_label
from fsanet.data.prepare import dataset_stats, is_prepared, parallel_map, prepare_dataset, show_samples


def digest(items) -> str:
    return hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()[:16]


def hexes(palette: np.ndarray) -> list[str]:
    return [f"{r:02x}{g:02x}{b:02x}" for r, g, b in palette.tolist()]


# --------------------------------------------------------------------------------------------
# tables against the reference implementations
# --------------------------------------------------------------------------------------------
SPEC_CITYSCAPES_LUT = [
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    0,
    1,
    255,
    255,
    2,
    3,
    4,
    255,
    255,
    255,
    5,
    255,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    255,
    255,
    16,
    17,
    18,
]
SPEC_CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
SPEC_CITYSCAPES_PALETTE = (
    "804080 f423e8 464646 66669c be9999 999999 faaa1e dcdc00 6b8e23 98fb98 4682b4 dc143c "
    "ff0000 00008e 000046 003c64 005064 0000e6 770b20"
).split()
SPEC_VOC_PALETTE = (
    "000000 800000 008000 808000 000080 800080 008080 808080 400000 c00000 408000 c08000 400080 "
    "c00080 408080 c08080 004000 804000 00c000 80c000 004080"
).split()
SPEC_COCO_IDS = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]


def test_cityscapes_tables():
    assert cityscapes.ID_TO_TRAINID[:34].tolist() == SPEC_CITYSCAPES_LUT
    assert (cityscapes.ID_TO_TRAINID[34:] == 255).all()
    assert list(cityscapes.CLASSES) == SPEC_CITYSCAPES_CLASSES
    assert hexes(cityscapes.PALETTE) == SPEC_CITYSCAPES_PALETTE
    assert digest(SPEC_CITYSCAPES_PALETTE) == "bb8ebe0caa46a65e"  # the list above is cityscapesScripts'
    assert len(cityscapes.LABELS) == 35 and cityscapes.NAME_TO_LABEL["license plate"].id == -1
    assert sum(cityscapes.TRAIN_CITY_SIZES.values()) == cityscapes.SPLIT_SIZES["train"] == 2975
    assert cityscapes.SPLIT_SIZES == {"train": 2975, "val": 500, "test": 1525}


def test_ade20k_tables():
    assert len(ade20k.CLASSES) == 150 and ade20k.PALETTE.shape == (150, 3)
    assert digest(ade20k.CLASSES) == "9bf5f612ed5c7d1d"
    assert digest(hexes(ade20k.PALETTE)) == "ce6c1daca5204f7d"
    assert (ade20k.CLASSES[0], ade20k.CLASSES[7], ade20k.CLASSES[149]) == ("wall", "bed", "flag")
    assert hexes(ade20k.PALETTE[[0, 149]]) == ["787878", "5c00ff"]
    assert ade20k.SPLIT_SIZES == {"train": 20210, "val": 2000}


def test_voc_tables():
    assert digest(voc.CLASSES) == "fd55ca4d47c05e3b"
    assert hexes(voc.PALETTE) == SPEC_VOC_PALETTE and digest(SPEC_VOC_PALETTE) == "4888f272c6a9756b"
    assert hexes(voc.voc_palette()[[255]]) == ["e0e0c0"]
    assert voc.SPLIT_SIZES == {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582}


def test_coco_stuff_tables():
    assert digest(coco_stuff.CLASSES) == "0d1caff40f22c2f8"
    assert digest(hexes(coco_stuff.PALETTE)) == "063b4f65089acd66"
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    assert coco_stuff.UNUSED_RAW == unused
    used = [v for v in range(182) if v not in unused]
    lut = coco_stuff.RAW_TO_TRAINID
    assert [int(lut[v]) for v in used] == list(range(171))
    assert all(lut[v] == 255 for v in unused) and lut[255] == 255
    assert (lut[0], lut[12], lut[91], lut[181]) == (0, 11, 80, 170)
    assert (coco_stuff.CLASSES[11], coco_stuff.CLASSES[80], coco_stuff.CLASSES[170]) == (
        "stop sign",
        "banner",
        "wood",
    )


def test_coco_tables():
    assert list(coco.CAT_IDS) == SPEC_COCO_IDS and digest(SPEC_COCO_IDS) == "a760c533947c1726"
    assert digest(hexes(coco.PALETTE)) == "e0f12e1a24b53753"
    assert coco.CLASSES == coco_stuff.CLASSES[:80] and coco.CLASSES[-1] == "toothbrush"


# --------------------------------------------------------------------------------------------
# label maps as pure functions (hypothesis: the identities hold on any array)
# --------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (5, 7), elements=st.integers(0, 33)))
def test_cityscapes_lut_elementwise(ids):
    expected = np.array([[SPEC_CITYSCAPES_LUT[v] for v in row] for row in ids.tolist()], dtype=np.uint8)
    np.testing.assert_array_equal(cityscapes.label_ids_to_train_ids(ids), expected)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (4, 6)))
def test_reduce_zero_label_identity(label):
    expected = np.where((label == 0) | (label == 255), 255, label.astype(int) - 1)
    np.testing.assert_array_equal(ade20k.reduce_zero_label(label), expected)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (4, 6), elements=st.sampled_from([*range(182), 255])))
def test_coco_stuff_map_is_rank_among_used(raw):
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    rank = {v: sum(1 for u in range(v) if u not in unused) for v in range(182) if v not in unused}
    expected = np.vectorize(lambda v: rank.get(int(v), 255))(raw)
    np.testing.assert_array_equal(coco_stuff.raw_to_train_ids(raw), expected)


def test_hand_made_label_ids():
    np.testing.assert_array_equal(
        cityscapes.label_ids_to_train_ids(np.array([[0, 7, 26, 29]], np.uint8)), [[255, 0, 13, 255]]
    )
    with pytest.raises(ValueError, match="40"):
        cityscapes.label_ids_to_train_ids(np.array([[7, 40]], np.uint8))
    with pytest.raises(DataError, match="200"):
        coco_stuff.raw_to_train_ids(np.array([[0, 200]], np.uint8))


# --------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------
def cityscapes_expected(ids: bool) -> np.ndarray:
    out = np.full((32, 64), 0 if ids else 255, np.uint8)
    out[16:32, :] = 7 if ids else 0  # road polygon (0,16)-(63,31)
    out[5:16, 5:21] = 26 if ids else 13  # cargroup -> car, polygon (5,5)-(20,15) inclusive
    return out  # license plate: id -1, never drawn


def test_cityscapes_fake_is_real_form(tmp_path):
    root = write_fake("cityscapes", tmp_path)
    gt = root / "gtFine/train/aachen/aachen_000000_000019_gtFine"
    ids_png = Image.open(f"{gt}_labelIds.png")
    assert ids_png.mode == "L" and ids_png.size == (64, 32)
    np.testing.assert_array_equal(np.array(ids_png), cityscapes_expected(ids=True))
    assert Image.open(f"{gt}_color.png").mode == "RGBA"
    assert Image.open(f"{gt}_instanceIds.png").mode.startswith("I")
    poly = json.loads(open(f"{gt}_polygons.json").read())
    assert (poly["imgHeight"], poly["imgWidth"]) == (32, 64) and poly["objects"][1]["label"] == "cargroup"
    assert read_image(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").shape == (
        32,
        64,
        3,
    )


def test_cityscapes_prepare_and_load(tmp_path):
    root = write_fake("cityscapes", tmp_path)
    summary = prepare_dataset("cityscapes", tmp_path, workers=2, check_split_sizes=False, progress=False)
    assert summary["splits"] == {"train": 1, "val": 1, "test": 1} and summary["converted"] == 3
    assert (root / "train.txt").read_text() == "aachen/aachen_000000_000019\n"
    assert (root / "val.txt").read_text() == "frankfurt/frankfurt_000000_000294\n"
    gt = root / "gtFine/train/aachen/aachen_000000_000019_gtFine"
    train_ids = read_label(f"{gt}_labelTrainIds.png")
    np.testing.assert_array_equal(train_ids, cityscapes_expected(ids=False))
    assert set(np.unique(train_ids)) <= {0, 13, 255}
    # reference path: the polygons rendered with trainIds agree with the LUT on labelIds
    np.testing.assert_array_equal(cityscapes.render_polygons(f"{gt}_polygons.json", "trainIds"), train_ids)
    test_ids = read_label(root / "gtFine/test/berlin/berlin_000000_000019_gtFine_labelTrainIds.png")
    assert (test_ids == 255).all()  # test GT only has ego vehicle
    ds = cityscapes.CityscapesDataset(root, "train")
    item = ds[0]
    assert item["name"] == "aachen_000000_000019" and item["ori_size"] == (32, 64)
    np.testing.assert_array_equal(item["label"].numpy(), cityscapes_expected(ids=False))
    assert item["image"].shape == (3, 32, 64)
    assert is_prepared(root)


def test_cityscapes_split_sizes_name_missing_cities(tmp_path):
    write_fake("cityscapes", tmp_path)
    with pytest.raises(DataError) as err:
        prepare_dataset("cityscapes", tmp_path, workers=1, progress=False)
    msg = str(err.value)
    assert "found 1, expected 2975" in msg and "aachen (1 of 174)" in msg and "bochum (0 of 96)" in msg
    assert "check_split_sizes=false" in msg
    assert not is_prepared(tmp_path / "cityscapes")


def test_cityscapes_failed_prepare_does_not_look_complete(tmp_path):
    root = write_fake("cityscapes", tmp_path)
    bad = root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(DataError, match="frankfurt_000000_000294_gtFine_labelIds.png"):
        prepare_dataset("cityscapes", tmp_path, workers=1, check_split_sizes=False, progress=False)
    assert not is_prepared(root) and not (root / "train.txt").exists()
    assert not list(root.rglob(".*.tmp-*"))  # no half-written outputs
    with pytest.raises(DataError, match="labelTrainIds"):
        cityscapes.CityscapesDataset(root, "val")
    bad.write_bytes(good)
    prepare_dataset("cityscapes", tmp_path, workers=1, check_split_sizes=False, progress=False)
    assert is_prepared(root) and len(cityscapes.CityscapesDataset(root, "val")) == 1


def test_cityscapes_image_without_label_is_named(tmp_path):
    root = write_fake("cityscapes", tmp_path)
    (root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="aachen/aachen_000000_000019"):
        cityscapes.prepare(root, workers=1, check_split_sizes=False, progress=False)


# --------------------------------------------------------------------------------------------
# ADE20K
# --------------------------------------------------------------------------------------------
def ade_expected() -> np.ndarray:
    out = np.full((32, 48), 149, np.uint8)  # raw 150 -> 149
    out[:16, :24] = 255  # raw 0 -> ignore
    out[:16, 24:] = 0  # raw 1 -> 0
    return out


def test_ade20k_prepare_and_load(tmp_path):
    root = write_fake("ade20k", tmp_path)
    raw = Image.open(root / "annotations/training/ADE_train_00000001.png")
    assert raw.mode == "L" and set(np.unique(np.array(raw))) == {0, 1, 150}
    assert prepare_dataset("ade20k", tmp_path, check_split_sizes=False, progress=False)["splits"] == {
        "train": 1,
        "val": 1,
    }
    for split, name in (("train", "ADE_train_00000001"), ("val", "ADE_val_00000001")):
        item = ade20k.ADE20KDataset(root, split)[0]
        assert item["name"] == name
        np.testing.assert_array_equal(item["label"].numpy(), ade_expected())


def test_ade20k_checks(tmp_path):
    root = write_fake("ade20k", tmp_path)
    with pytest.raises(DataError, match=r"found 1, expected 20210; missing: ADE_train_00000002"):
        ade20k.prepare(root, check_split_sizes=True)
    (root / "annotations/validation/ADE_val_00000001.png").unlink()
    with pytest.raises(DataError, match="without annotation: ADE_val_00000001"):
        ade20k.prepare(root, check_split_sizes=False)


# --------------------------------------------------------------------------------------------
# VOC + SBD
# --------------------------------------------------------------------------------------------
def voc_expected() -> np.ndarray:
    out = np.zeros((30, 40), np.uint8)
    out[5:15, 5:20] = 1  # aeroplane
    out[15:25, 20:35] = 15  # person
    out[0, :] = 255  # void
    return out


def sbd_expected(value: int) -> np.ndarray:
    out = np.zeros((30, 40), np.uint8)
    out[10:20, 10:30] = value
    return out


def test_aug_lists_by_hand():
    trainaug, aug = voc.aug_lists(["a", "b"], ["c"], ["a", "d", "c"], ["e"])
    assert trainaug == ["a", "b", "d", "e"] and aug == ["d", "e"]


def test_voc_prepare_and_load(tmp_path):
    root = write_fake("voc", tmp_path)
    png = Image.open(root / "SegmentationClass/2007_000032.png")
    assert png.mode == "P"  # palette PNG, read as indices
    np.testing.assert_array_equal(read_label(root / "SegmentationClass/2007_000032.png"), voc_expected())
    mat = tmp_path / "VOCdevkit/benchmark_RELEASE/dataset/cls/2008_000001.mat"
    np.testing.assert_array_equal(voc.load_sbd_segmentation(mat), sbd_expected(7))
    summary = prepare_dataset("voc", tmp_path, workers=1, check_split_sizes=False, progress=False)
    assert summary["converted"] == 4 and summary["splits"]["train_aug"] == 3
    lists = root / "ImageSets/Segmentation"
    assert (lists / "trainaug.txt").read_text().split() == ["2007_000032", "2008_000001", "2009_000002"]
    assert (lists / "aug.txt").read_text().split() == ["2008_000001", "2009_000002"]
    aug_png = Image.open(root / "SegmentationClassAug/2009_000002.png")
    assert aug_png.mode == "L"
    np.testing.assert_array_equal(np.array(aug_png), sbd_expected(20))
    ds = voc.VOCDataset(root, "train_aug")
    assert [ds.sample_name(i) for i in range(len(ds))] == ["2007_000032", "2008_000001", "2009_000002"]
    np.testing.assert_array_equal(ds[0]["label"].numpy(), voc_expected())  # VOC's own PNG for VOC train
    np.testing.assert_array_equal(ds[1]["label"].numpy(), sbd_expected(7))  # SBD for the aug ids
    assert len(voc.VOCDataset(root, "trainval")) == 2
    with pytest.raises(DataError, match="unknown split"):
        voc.VOCDataset(root, "test")


def test_voc_checks(tmp_path):
    root = write_fake("voc", tmp_path)
    with pytest.raises(DataError, match="found 1, expected 1464"):
        voc.prepare(root, workers=1, check_split_sizes=True, progress=False)
    with pytest.raises(DataError, match="aug.txt"):
        voc.VOCDataset(root, "train_aug")  # before prepare
    mat = tmp_path / "VOCdevkit/benchmark_RELEASE/dataset/cls/2009_000002.mat"
    mat.unlink()
    with pytest.raises(DataError, match="2009_000002.mat"):
        voc.prepare(root, workers=1, check_split_sizes=False, progress=False)
    import scipy.io

    scipy.io.savemat(str(mat), {"GTcls": {"Segmentation": np.full((30, 40), 25, np.uint8)}})
    with pytest.raises(DataError, match=r"values \[25\] outside 0..20"):
        voc.prepare(root, workers=1, check_split_sizes=False, progress=False)
    assert not (root / "ImageSets/Segmentation/trainaug.txt").exists()


# --------------------------------------------------------------------------------------------
# COCO-Stuff
# --------------------------------------------------------------------------------------------
def coco_stuff_expected(split: str) -> np.ndarray:
    out = np.zeros((48, 64), np.uint8)
    out[:, 10:20] = 11  # raw 12 (stop sign)
    out[:, 20:30] = 80  # raw 91 (banner)
    out[:, 30:40] = 170  # raw 181 (wood)
    out[:, 40:50] = 255  # raw 255 (unlabeled)
    out[:, 50:60] = 255 if split == "train" else 0  # raw 11 is never annotated -> 255; val has raw 0
    return out


def test_coco_stuff_prepare_and_load(tmp_path):
    root = write_fake("coco_stuff", tmp_path)
    assert (
        prepare_dataset("coco_stuff", tmp_path, workers=1, check_split_sizes=False, progress=False)[
            "converted"
        ]
        == 2
    )
    for split, stem in (("train", "000000000025"), ("val", "000000000009")):
        folder = f"{split}2017"
        np.testing.assert_array_equal(
            read_label(root / f"annotations/{folder}/{stem}_labelTrainIds.png"), coco_stuff_expected(split)
        )
        item = coco_stuff.COCOStuffDataset(root, split)[0]
        assert item["name"] == stem
        np.testing.assert_array_equal(item["label"].numpy(), coco_stuff_expected(split))
    with pytest.raises(DataError, match="found 1, expected 118287"):
        coco_stuff.prepare(root, workers=1, check_split_sizes=True, progress=False)


# --------------------------------------------------------------------------------------------
# COCO instances
# --------------------------------------------------------------------------------------------
def test_coco_instances_load(tmp_path):
    root = write_fake("coco", tmp_path)
    summary = prepare_dataset("coco", tmp_path, check_split_sizes=False, progress=False)
    assert summary["splits"] == {"train": 1, "val": 1} and summary["annotations"] == {"train": 4, "val": 2}
    for split in ("train", "val"):
        ds = coco.COCOInstances(root, split)
        item = ds[0]
        assert item["ori_size"] == (48, 64) and item["image"].shape == (3, 48, 64)
        # train drops category 12 (not one of the 80) and the 0.5 px wide box
        assert item["labels"].tolist() == [0, 79]
        assert item["boxes"].tolist() == [[10, 10, 30, 30], [40, 30, 50, 40]]
        assert item["ignore"].tolist() == [False, True]
        person = np.zeros((48, 64), np.uint8)
        person[10:30, 10:30] = 1  # polygon (10,10)-(30,30): pixels 10..29
        crowd = np.zeros((48, 64), np.uint8)
        crowd[30:40, 40:50] = 1  # RLE: rows 30..39, cols 40..49
        np.testing.assert_array_equal(item["masks"][0].numpy(), person)
        np.testing.assert_array_equal(item["masks"][1].numpy(), crowd)
    assert coco.COCOInstances(root, "train").category_counts()["toothbrush"] == 1
    with pytest.raises(DataError, match="no usable image"):
        coco.COCOInstances(root, "train", min_size=64)  # the 64x48 image is below the size filter


def test_coco_checks(tmp_path):
    root = write_fake("coco", tmp_path)
    with pytest.raises(DataError, match="instances_train2017.json images: found 1, expected 118287"):
        coco.prepare(root, check_split_sizes=True, progress=False)
    ann = root / "annotations/instances_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][1]["id"] = 1
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="not unique"):
        coco.load_coco(ann)
    ann.write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        coco.load_coco(ann)
    (root / "train2017/000000000025.jpg").unlink()
    with pytest.raises(DataError, match="000000000025.jpg"):
        coco.prepare(root, check_split_sizes=False)


# --------------------------------------------------------------------------------------------
# shared machinery, stats/show, build_dataset, CLI
# --------------------------------------------------------------------------------------------
def _square(x: int) -> int:
    return x * x


def test_parallel_map_keeps_order():
    assert parallel_map(_square, list(range(7)), workers=2, progress=False) == [0, 1, 4, 9, 16, 25, 36]


def test_marker_of_a_miniature_does_not_satisfy_a_checked_run(tmp_path):
    write_fake("ade20k", tmp_path)
    prepare_dataset("ade20k", tmp_path, check_split_sizes=False, progress=False)
    with pytest.raises(DataError, match="expected 20210"):
        prepare_dataset("ade20k", tmp_path, check_split_sizes=True, progress=False)


def test_stats_and_show(tmp_path):
    write_fake("ade20k", tmp_path)
    stats = dataset_stats("ade20k", tmp_path, ["train"], progress=False)["train"]
    assert stats["samples"] == 1 and stats["ignore"] == 16 * 24
    assert stats["classes"]["wall"] == 16 * 24 and stats["classes"]["flag"] == 16 * 48
    assert sum(stats["classes"].values()) == 16 * 24 + 16 * 48
    out = show_samples("ade20k", tmp_path, tmp_path / "grid.png", "val", n=4, height=64)
    grid = read_image(out)
    assert grid.shape == (64, 192, 3)  # one sample: (48 + 48) wide x 32 high, scaled by 2
    assert grid[10, 96 + 60].tolist() == [120, 120, 120]  # wall (raw 1), top right
    assert grid[10, 96 + 10].tolist() == [255, 255, 255]  # ignore, top left
    assert grid[50, 96 + 10].tolist() == [92, 0, 255]  # flag (raw 150), bottom


def test_build_dataset_with_params_file(tmp_path):
    root = write_fake("voc", tmp_path)
    prepare_dataset("voc", tmp_path, workers=1, check_split_sizes=False, progress=False)
    cfg = load_config(["params/data/voc.yaml"], [f"data.root={root}", "data.check_split_sizes=false"])
    assert set(DATASETS) >= {"cityscapes", "ade20k", "voc", "coco_stuff"}
    ds = build_dataset(cfg.data, cfg.data.train_split, train=False)
    assert len(ds) == 3
    item = ds[1]
    assert item["label"].shape == (30, 40) and item["image"].shape[0] == 3
    cfg = load_config(["params/data/voc.yaml"], [f"data.root={root}"])
    with pytest.raises(DataError, match="expected 10582"):
        build_dataset(cfg.data, cfg.data.train_split, train=False)


def test_cli_prepare_stats_show(tmp_path, capsys):
    write_fake("coco_stuff", tmp_path)
    args = ["-q", "data", "prepare", "coco_stuff", "--root", str(tmp_path), "--workers", "1"]
    assert main(args) == 2  # the miniature is refused by the size check ...
    err = capsys.readouterr().err
    assert "expected 118287" in err and err.strip().count("\n") == 0
    assert main([*args, "data.check_split_sizes=false"]) == 0  # ... unless it is switched off
    assert "prepared (train 1, val 1; 2 files converted)" in capsys.readouterr().out
    assert main(["-q", "data", "stats", "coco_stuff", "--root", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "coco_stuff/val: 1 samples" in out and "stop sign" in out
    png = tmp_path / "show.png"
    assert main(["-q", "data", "show", "coco_stuff", "--root", str(tmp_path), "--out", str(png)]) == 0
    assert read_image(png).shape[0] == 256
    shutil.rmtree(tmp_path / "coco_stuff164k")
    assert main(["-q", "data", "stats", "coco_stuff", "--root", str(tmp_path)]) == 2
    assert "fsanet data download coco_stuff" in capsys.readouterr().err
