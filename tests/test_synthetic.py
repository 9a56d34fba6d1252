"""The synthetic study set: determinism, on-disk form, atomicity, and the context rule itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fsanet.data.synthetic as syn
from fsanet.config import SyntheticConfig, load_config
from fsanet.data import build_dataset
from fsanet.data.base import DataError
from fsanet.data.imageio import read_image, read_label
from fsanet.data.synthetic import (
    CLASSES,
    READY_FILE,
    SyntheticDataset,
    context_stats,
    generate_sample,
    prepare_synthetic,
)

PARAMS = Path(__file__).resolve().parents[1] / "params" / "data" / "synthetic.yaml"
SMALL = {"image_size": 64, "num_train": 5, "num_val": 3, "seed": 0, "val_seed": 1, "min_cue_distance": 30}


def _settings(**kw) -> SyntheticConfig:
    """Checked generator settings (the defaults with ``kw`` replaced)."""
    return syn.check_settings(SyntheticConfig(**kw))


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _cue_is_red(image: np.ndarray, label: np.ndarray) -> bool:
    cue = image[np.isin(label, syn.CUE_CLASSES)].astype(float).mean(0)  # mean RGB of the cue pixels
    return bool(cue[0] > cue[2])


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    return prepare_synthetic(root, SMALL, processes=1, progress=False)


# ---------------------------------------------------------------------------------------- on disk
def test_layout_split_lists_and_ready(small_set: Path) -> None:
    assert (small_set / "splits" / "train.txt").read_text().split() == [f"train_{i:05d}" for i in range(5)]
    assert (small_set / "splits" / "val.txt").read_text().split() == [f"val_{i:05d}" for i in range(3)]
    assert len(list((small_set / "images" / "train").glob("*.png"))) == 5
    assert len(list((small_set / "labels" / "val").glob("*.png"))) == 3
    ready = syn.read_ready(small_set)
    assert ready["counts"] == {"train": 5, "val": 3}
    assert ready["settings"]["image_size"] == 64
    assert not (small_set.parent / ".synthetic.partial").exists()


def test_ready_file_from_before_cue_thickness_still_matches(tmp_path: Path) -> None:
    # a READY.json written before the key existed means the design's 12 px cue: still complete, no rebuild
    root = prepare_synthetic(tmp_path / "synthetic", SMALL, processes=1, progress=False)
    ready = json.loads((root / "READY.json").read_text())
    del ready["settings"]["cue_thickness"]
    (root / "READY.json").write_text(json.dumps(ready))
    assert syn._ready_ok(root, syn.settings_from_config(SMALL), verify=True)
    assert not syn._ready_ok(root, syn.settings_from_config({**SMALL, "cue_thickness": 16}), verify=False)


def test_same_seed_same_bytes_and_worker_count_irrelevant(small_set: Path, tmp_path: Path) -> None:
    again = prepare_synthetic(tmp_path / "a" / "synthetic", SMALL, processes=2, progress=False)
    assert _files(again) == _files(small_set)


def test_different_seed_different_images(small_set: Path, tmp_path: Path) -> None:
    other = prepare_synthetic(tmp_path / "synthetic", {**SMALL, "seed": 7}, processes=1, progress=False)
    a, b = _files(small_set), _files(other)
    assert a["images/train/train_00000.png"] != b["images/train/train_00000.png"]
    assert a["images/val/val_00000.png"] == b["images/val/val_00000.png"]  # val has its own seed
    # the val split is drawn with val_seed, not seed
    assert a["images/val/val_00000.png"] != a["images/train/train_00000.png"]
    img_val, _, _ = generate_sample(_settings(**SMALL), SMALL["val_seed"], 0)
    np.testing.assert_array_equal(read_image(small_set / "images/val/val_00000.png"), img_val)


def test_dataset_reads_the_set(small_set: Path) -> None:
    ds = SyntheticDataset(small_set, "train", check_split_size=True)
    assert len(ds) == 5 and ds.CLASSES == CLASSES and ds.PALETTE.shape == (7, 3)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["label"].dtype == torch.int64
    assert item["name"] == "train_00000"
    with pytest.raises(DataError, match="splits \\['train', 'val'\\], not 'test'"):
        SyntheticDataset(small_set, "test")


def test_packed_arrays_equal_the_pngs(small_set: Path, tmp_path: Path) -> None:
    """With ``cache`` on, items come from the packed .npy arrays; they equal the decoded PNGs bit for bit,
    and a set without packs (or with a reordered split list) falls back to the PNGs."""
    ready = syn.read_ready(small_set)
    assert set(ready["packed"]) == {"train", "val"}
    for split, n in (("train", 5), ("val", 3)):
        png = SyntheticDataset(small_set, split, cache=False)
        packed = SyntheticDataset(small_set, split, cache=True)
        for i in range(n):
            a, b = png.load(i), packed.load(i)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
            assert b[0].dtype == np.uint8 and not b[0].flags.writeable
        assert packed._packed is not None  # the pack was used, not the PNG fallback
        for k in range(n):
            torch.testing.assert_close(png[(k, 3)]["image"], packed[(k, 3)]["image"], rtol=0, atol=0)

    copy = tmp_path / "synthetic"
    import shutil

    shutil.copytree(small_set, copy)
    shutil.rmtree(copy / syn.PACKED_DIR)
    old = SyntheticDataset(copy, "train", cache=True)
    np.testing.assert_array_equal(old.load(2)[0], read_image(small_set / "images/train/train_00002.png"))
    assert old._packed is None
    names = (copy / "splits" / "train.txt").read_text().split()
    shutil.copytree(small_set / syn.PACKED_DIR, copy / syn.PACKED_DIR)
    (copy / "splits" / "train.txt").write_text("\n".join(reversed(names)) + "\n")
    flipped = SyntheticDataset(copy, "train", cache=True)
    np.testing.assert_array_equal(flipped.load(0)[1], read_label(small_set / "labels/train/train_00004.png"))
    assert flipped._packed is None
    # a damaged pack is refused by name, never silently used
    (copy / "splits" / "train.txt").write_text("\n".join(names) + "\n")
    np.save(copy / syn.PACKED_DIR / "train_labels.npy", np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(DataError, match="packed arrays"):
        SyntheticDataset(copy, "train", cache=True).load(0)
    with pytest.raises(DataError, match="not a complete synthetic set"):  # and fails prepare's verification
        prepare_synthetic(copy, SMALL, processes=1, progress=False)


def test_build_dataset_pipelines(small_set: Path) -> None:
    cfg = load_config(
        [PARAMS], [f"data.root={small_set}", "data.base_scale=[64,64]", "data.crop_size=[64,64]"]
    ).data
    train = build_dataset(cfg, "train", train=True, seed=0)
    val = build_dataset(cfg, "val", train=False)
    assert train[(1, 0)]["image"].shape == (3, 64, 64) and val[2]["label"].shape == (64, 64)
    assert abs(float(val[0]["image"].mean())) < 3  # normalised


def test_missing_or_incomplete_set_errors(tmp_path: Path, small_set: Path) -> None:
    with pytest.raises(DataError, match="create it with `fsanet data prepare synthetic`"):
        SyntheticDataset(tmp_path / "nothing", "train")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no READY.json"):
        SyntheticDataset(tmp_path / "half", "train")


# ---------------------------------------------------------------------------------------- atomicity
def test_failure_leaves_no_complete_looking_folder_and_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "synthetic"
    real = syn.generate_sample
    calls = {"n": 0}

    def failing(settings, seed, index):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("power cut")
        return real(settings, seed, index)

    monkeypatch.setattr(syn, "generate_sample", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        prepare_synthetic(root, SMALL, processes=1, progress=False)
    assert not root.exists()
    partial = tmp_path / ".synthetic.partial"
    assert partial.is_dir() and not (partial / READY_FILE).exists()
    assert not (partial / "splits").exists()
    with pytest.raises(DataError):
        SyntheticDataset(partial, "train")

    counted = {"n": 0}

    def counting(settings, seed, index):
        counted["n"] += 1
        return real(settings, seed, index)

    monkeypatch.setattr(syn, "generate_sample", counting)
    prepare_synthetic(root, SMALL, processes=1, progress=False)
    # the three pairs written before the failure are reused; the context oracle regenerates the 3 val samples
    assert counted["n"] == 8 - 3 + 3
    assert not partial.exists()
    reference = prepare_synthetic(tmp_path / "ref" / "synthetic", SMALL, processes=1, progress=False)
    assert _files(root) == _files(reference)

    counted["n"] = 0
    assert prepare_synthetic(root, SMALL, processes=1, progress=False) == root  # complete: skipped
    assert counted["n"] == 0


def test_existing_set_with_other_settings(small_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    prepare_synthetic(root, SMALL, processes=1, progress=False)
    changed = {**SMALL, "num_train": 4}
    with pytest.raises(DataError, match="not a complete synthetic set with these settings"):
        prepare_synthetic(root, changed, processes=1, progress=False)
    prepare_synthetic(root, changed, processes=1, progress=False, force=True)
    assert syn.read_ready(root)["counts"]["train"] == 4
    (root / "labels" / "train" / "train_00001.png").write_bytes(b"tampered")
    with pytest.raises(DataError):  # the digest no longer matches READY.json
        prepare_synthetic(root, changed, processes=1, progress=False)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="seed=3, val_seed=3"):
        _settings(seed=3, val_seed=3)
    with pytest.raises(ValueError, match="min_cue_distance=70 with cue_thickness=12 does not fit a 96px"):
        _settings(min_cue_distance=70)
    with pytest.raises(ValueError, match="cue_thickness=36 does not fit a 96px image"):
        _settings(cue_thickness=36)
    with pytest.raises(ValueError, match="cue_thickness=2: must be at least 3 px"):
        _settings(cue_thickness=2)
    cfg = load_config([PARAMS], ["data.synthetic.num_train=7"])
    assert syn.settings_from_config(cfg.data).num_train == 7


# ---------------------------------------------------------------------------------------- the rule
def _samples(n: int, settings: SyntheticConfig, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    return [generate_sample(settings, seed, i) for i in range(n)]


def test_context_rule_holds_on_disk(small_set: Path) -> None:
    for split, n in (("train", 5), ("val", 3)):
        for i in range(n):
            image = read_image(small_set / "images" / split / f"{split}_{i:05d}.png")
            label = read_label(small_set / "labels" / split / f"{split}_{i:05d}.png")
            values = set(np.unique(label).tolist())
            assert values <= set(range(len(CLASSES)))
            # the cue is labelled by its colour
            assert values & set(syn.CUE_CLASSES) == (
                {syn.CUE_RED} if _cue_is_red(image, label) else {syn.CUE_BLUE}
            )
            discs = values & {syn.DISC_RED, syn.DISC_BLUE}
            assert discs == ({syn.DISC_RED} if _cue_is_red(image, label) else {syn.DISC_BLUE})


def test_context_rule_at_default_size() -> None:
    settings = _settings()
    samples = _samples(60, settings)
    cues = []
    for image, label, info in samples:
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and label.shape == (96, 96)
        red = _cue_is_red(image, label)
        assert red == (info["cue"] == "red")
        assert (label == (syn.DISC_BLUE if red else syn.DISC_RED)).sum() == 0
        assert 2 <= info["discs"] <= 4
        cues.append(red)
    assert 0.25 < np.mean(cues) < 0.75
    stats = context_stats([lab for _, lab, _ in samples])
    assert stats["min_cue_distance"] >= settings.min_cue_distance  # no cue pixel within the FCN's reach
    assert 0.04 < stats["context_pixel_share"] < 0.2
    assert 80 < stats["best_context_free_miou"] < 82  # (5 local classes + ~2/3 on the discs) / 7


@pytest.mark.parametrize("layout", ["band", "cells"])
@pytest.mark.parametrize("thickness", [12, 24])
def test_cue_thickness_setting(layout: str, thickness: int) -> None:
    # the cue band's short side is drawn from cue_thickness ± 2 (px at 96), in both layouts
    settings = _settings(layout=layout, cells=2, cue_thickness=thickness)
    seen = set()
    for _, label, _ in _samples(40, settings):
        ys, xs = np.nonzero(np.isin(label, syn.CUE_CLASSES))
        seen.add(min(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    assert seen <= set(range(thickness - 2, thickness + 3)) and len(seen) >= 3


def test_discs_look_the_same_whatever_the_cue() -> None:
    # the disc appearance does not depend on the cue colour: compare mean disc colour and radius by cue
    samples = _samples(300, _settings(), seed=5)
    by_cue: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for image, label, info in samples:
        mask = np.isin(label, (syn.DISC_RED, syn.DISC_BLUE))
        by_cue[info["cue"] == "red"].append(np.r_[image[mask].mean(0), mask.sum() / info["discs"]])
    red, blue = np.array(by_cue[True]), np.array(by_cue[False])
    spread = np.sqrt(red.var(0) / len(red) + blue.var(0) / len(blue))
    assert np.all(np.abs(red.mean(0) - blue.mean(0)) < 4 * spread)  # colour channels and disc area


# ---------------------------------------------------------------------------------------- cells layout
def test_cells_layout_each_disc_follows_the_cue_of_its_stripe() -> None:
    settings = _settings(layout="cells", cells=4)
    width = settings.image_size // settings.cells
    for _image, label, info in _samples(40, settings):
        assert len(info["cells"]) == 4 and info["cue_side"] in ("top", "bottom")
        for j, cue in enumerate(info["cells"]):
            stripe = label[:, j * width : (j + 1) * width]
            expected_cue = syn.CUE_RED if cue == "red" else syn.CUE_BLUE
            assert set(np.unique(stripe[np.isin(stripe, syn.CUE_CLASSES)]).tolist()) == {expected_cue}
            wrong = syn.DISC_BLUE if cue == "red" else syn.DISC_RED
            assert not (stripe == wrong).any()  # a disc takes its own stripe's cue
        stats = context_stats([label])
        if stats["context_pixel_share"] > 0:
            assert stats["min_cue_distance"] >= settings.min_cue_distance


def test_cells_layout_validation() -> None:
    with pytest.raises(ValueError, match="data.synthetic.cells=5"):
        _settings(layout="cells", cells=5)  # 96 is not a multiple of 5
    with pytest.raises(ValueError, match="data.synthetic.layout='grid'"):
        _settings(layout="grid")


def test_band_layout_files_do_not_depend_on_the_cells_options() -> None:
    a = generate_sample(_settings(), 0, 3)
    b = generate_sample(_settings(cells=2, position_hint=0), 0, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_oracle_knee_band_layout_is_dc_and_cells_layout_is_c() -> None:
    band = syn.context_oracle(_settings(num_val=40), "val")
    assert band["knee"] == [1, 1] and band["accuracy"]["1"] == 1.0
    cells = syn.context_oracle(_settings(layout="cells", cells=4, num_val=150), "val")
    acc = {int(k): v for k, v in cells["accuracy"].items()}
    assert cells["knee"] == [4, 4]
    assert acc[1] < 0.7 and acc[2] < 0.9 and acc[3] < 0.98 <= acc[4]  # below the knee the cue is lost
    assert acc[12] == 1.0  # the full band keeps the whole cue map
    two = syn.context_oracle(_settings(layout="cells", cells=2, num_val=40), "val")
    assert two["knee"] == [2, 2]
