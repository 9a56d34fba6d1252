"""The dataset contract (fsanet.data.base) and image I/O (fsanet.data.imageio): reading, checks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsanet.config import load_config
from fsanet.data import DATASETS, build_dataset
from fsanet.data.base import DataError, SegmentationDataset, read_split_list, scan_pairs
from fsanet.data.imageio import IGNORE_COLOUR, colorize, read_image, read_label, write_image, write_label
from fsanet.data.transforms import Compose, Normalize, Pad, RandomCrop, RandomFlip, RandomResize, ToTensor

PALETTE3 = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)


class Tiny(SegmentationDataset):
    """Three classes; ``root/img/<name>.png`` + ``root/ann/<name>.png`` listed in ``root/<split>.txt``."""

    NAME = "tiny"
    CLASSES = ("a", "b", "c")
    PALETTE = PALETTE3
    SPLIT_SIZES = {"train": 3}
    LAYOUT = "  img/<name>.png\n  ann/<name>.png\n  <split>.txt"

    def samples(self):
        return read_split_list(
            self.root / f"{self.split}.txt", self.root / "img", ".png", self.root / "ann", ".png"
        )


def _make(root: Path, n: int = 3, size: tuple[int, int] = (12, 16), split: str = "train") -> Path:
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(n)]
    for name in names:
        write_image(root / "img" / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        label = rng.integers(0, 3, size, dtype=np.uint8)
        label[0, 0] = 255
        write_label(root / "ann" / f"{name}.png", label, palette=PALETTE3)
    (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


# ---------------------------------------------------------------------------------------- imageio
def test_label_roundtrip_palette_png_reads_indices(tmp_path: Path) -> None:
    label = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10) % 3
    label[3, 4] = 255
    path = write_label(tmp_path / "l.png", label, palette=PALETTE3)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert img.getpalette()[:9] == PALETTE3.ravel().tolist()
    np.testing.assert_array_equal(read_label(path), label)
    write_label(tmp_path / "g.png", label)  # no palette: grey 'L'
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == "L"
    np.testing.assert_array_equal(read_label(tmp_path / "g.png"), label)


def test_colorize_draws_classes_in_palette_colours_and_ignore_black() -> None:
    palette = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.uint8)
    label = np.array([[0, 1], [255, 7]])  # 7 lies outside the palette
    out = colorize(label, palette, ignore_index=255)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [40, 50, 60]
    assert out[1, 0].tolist() == list(IGNORE_COLOUR) == out[1, 1].tolist()
    assert colorize(np.array([[1]]), palette, ignore_index=1)[0, 0].tolist() == list(IGNORE_COLOUR)


def test_image_roundtrip_and_grey_to_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "i.png", rgb)), rgb)
    grey = rgb[..., 0]
    out = read_image(write_image(tmp_path / "g.png", grey))
    assert out.shape == (7, 9, 3) and (out == grey[..., None]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "i.png"]  # no temporary files left


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_label(tmp_path / "l.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reader", [read_image, read_label])
def test_truncated_png_names_the_file(tmp_path: Path, reader) -> None:
    full = write_label(
        tmp_path / "full.png", np.random.default_rng(0).integers(0, 3, (64, 64), dtype=np.uint8)
    )
    data = full.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*truncated"):
        reader(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"junk\.png"):
        reader(junk)
    with pytest.raises(DataError, match=r"missing\.png: .*not found"):
        reader(tmp_path / "missing.png")


def test_rgb_label_is_refused(tmp_path: Path) -> None:
    path = write_image(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"rgb\.png.*single-channel"):
        read_label(path)


def test_16bit_label_with_large_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l16.png"
    Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(path)
    with pytest.raises(DataError, match=r"l16\.png.*uint8"):
        read_label(path)
    Image.fromarray(np.full((4, 4), 7, dtype=np.uint16)).save(path)
    assert read_label(path).dtype == np.uint8 and (read_label(path) == 7).all()


# ---------------------------------------------------------------------------------------- dataset
def test_item_contract(tmp_path: Path) -> None:
    ds = Tiny(_make(tmp_path), "train")
    assert len(ds) == 3 and ds.num_classes == 3
    item = ds[1]
    assert set(item) == {"image", "label", "name", "ori_size"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 12, 16)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (12, 16)
    assert item["name"] == "s1" and item["ori_size"] == (12, 16)
    assert int(item["label"][0, 0]) == 255  # ignore is allowed
    np.testing.assert_array_equal(
        item["image"].permute(1, 2, 0).numpy(), read_image(tmp_path / "img" / "s1.png")
    )


def test_missing_root_names_layout_and_command(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        Tiny(tmp_path / "nowhere", "train")
    msg = str(err.value)
    assert "nowhere" in msg and "fsanet data download tiny" in msg and "fsanet data prepare tiny" in msg
    assert "ann/<name>.png" in msg


def test_split_list_naming_missing_files(tmp_path: Path) -> None:
    root = _make(tmp_path)
    (root / "train.txt").write_text("s0\nghost\n")
    with pytest.raises(DataError, match=r"train\.txt.*ghost\.png"):
        Tiny(root, "train")
    with pytest.raises(DataError, match=r"val\.txt: split list not found"):
        Tiny(root, "val")


def test_label_values_outside_class_set(tmp_path: Path) -> None:
    root = _make(tmp_path)
    bad = np.zeros((12, 16), np.uint8)
    bad[2, 2] = 7
    write_label(root / "ann" / "s2.png", bad)
    ds = Tiny(root, "train")
    ds[0]
    with pytest.raises(DataError, match=r"s2\.png: label values \[7\] are outside the 3 classes"):
        ds[2]
    assert Tiny(root, "train", check_labels=False)[2]["label"].max() == 7


def test_image_label_size_mismatch(tmp_path: Path) -> None:
    root = _make(tmp_path)
    write_label(root / "ann" / "s0.png", np.zeros((12, 15), np.uint8))
    with pytest.raises(DataError, match=r"ann/s0\.png: label size 15x12.*img/s0\.png size 16x12"):
        Tiny(root, "train")[0]


def test_truncated_file_in_dataset(tmp_path: Path) -> None:
    root = _make(tmp_path)
    path = root / "img" / "s1.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"img/s1\.png"):
        Tiny(root, "train")[1]


def test_split_size_check(tmp_path: Path) -> None:
    root = _make(tmp_path, n=2)
    with pytest.raises(DataError, match=r"split 'train' has 2 samples, expected 3.*check_split_sizes=false"):
        Tiny(root, "train", check_split_size=True)
    assert len(Tiny(root, "train", check_split_size=False)) == 2


def test_scan_pairs_sorted_and_missing_label(tmp_path: Path) -> None:
    for rel in ("b/x_img.png", "a/z_img.png", "a/y_img.png"):
        write_image(tmp_path / "images" / rel, np.zeros((2, 2, 3), np.uint8))
        write_label(tmp_path / "labels" / rel.replace("_img", "_seg"), np.zeros((2, 2), np.uint8))
    pairs = scan_pairs(tmp_path / "images", "_img.png", tmp_path / "labels", "_seg.png")
    assert [p[0].relative_to(tmp_path).as_posix() for p in pairs] == [
        "images/a/y_img.png",
        "images/a/z_img.png",
        "images/b/x_img.png",
    ]
    assert pairs[0][1] == tmp_path / "labels" / "a" / "y_seg.png"
    (tmp_path / "labels" / "b" / "x_seg.png").unlink()
    with pytest.raises(DataError, match=r"x_seg\.png"):
        scan_pairs(tmp_path / "images", "_img.png", tmp_path / "labels", "_seg.png")


def test_cache_returns_readonly_arrays(tmp_path: Path) -> None:
    ds = Tiny(_make(tmp_path), "train", cache=True)
    image, label = ds.load(0)
    assert ds.load(0)[0] is image
    with pytest.raises(ValueError):
        label[0, 0] = 1
    assert ds[0]["label"].shape == (12, 16)


def _train_transform() -> Compose:
    ops = [RandomResize((16, 12), (0.5, 2.0)), RandomCrop((8, 8)), RandomFlip(0.5), Normalize(), Pad((8, 8))]
    return Compose([*ops, ToTensor()])


def test_augmentation_is_pure_function_of_seed_epoch_index(tmp_path: Path) -> None:
    ds = Tiny(_make(tmp_path), "train", transform=_train_transform(), seed=3)
    a, b = ds[(1, 5)], ds[(1, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    ds.set_epoch(5)
    assert torch.equal(ds[1]["image"], a["image"])
    others = [ds[(1, e)]["image"] for e in range(6)]
    assert any(o.shape != a["image"].shape or not torch.equal(o, a["image"]) for o in others)


def test_dataloader_workers_give_the_same_batches(tmp_path: Path) -> None:
    ds = Tiny(_make(tmp_path, n=6), "train", transform=_train_transform(), seed=1)
    ds.set_epoch(2)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, shuffle=False)
        return [torch.cat([b["image"].flatten(), b["label"].flatten().float()]) for b in loader]

    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------------------- factory
def test_build_dataset_errors(tmp_path: Path) -> None:
    cfg = load_config([], [f"data.root={tmp_path}"])
    assert "synthetic" in DATASETS
    with pytest.raises(KeyError, match="synthetic"):
        build_dataset(load_config([], ["data.name=nope"]).data, "train", True)
    with pytest.raises(ValueError, match="data.num_classes=5.*set data.num_classes=7"):
        build_dataset(load_config([], ["data.num_classes=5"]).data, "train", True)
    with pytest.raises(DataError, match="fsanet data prepare synthetic"):
        build_dataset(load_config([], [f"data.root={tmp_path / 'none'}"]).data, "train", True)
    assert cfg.data.root == str(tmp_path)
