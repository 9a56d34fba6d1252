"""mmseg-standard pipelines (fsanet.data.transforms): shapes, seeding, cat_max_ratio, test mode, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.color import hsv2rgb, rgb2hsv

from fsanet.config import load_config
from fsanet.data.transforms import (
    IMAGENET_MEAN,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    build_transform,
    hsv_to_rgb,
    rescale_size,
    rgb_to_hsv,
    sample_rng,
)


def _sample(h: int = 40, w: int = 60, classes: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "label": rng.integers(0, classes, (h, w), dtype=np.uint8),
    }


def _cfg(*overrides: str):
    return load_config([], list(overrides)).data


# ---------------------------------------------------------------------------------------- resize
def test_rescale_size_is_mmcv_keep_ratio() -> None:
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)  # Cityscapes: unchanged
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)  # ADE: short side bound
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # VOC: 512/375 = 1.3653 -> 682.67 -> 683
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long side bound wins
    assert rescale_size(96, 96, (96, 96)) == (96, 96)


def test_resize_image_bilinear_label_nearest() -> None:
    s = _sample(20, 30)
    out = Resize((60, 40))(dict(s))
    assert out["image"].shape == (40, 60, 3) and out["image"].dtype == np.uint8
    assert out["label"].shape == (40, 60)
    assert set(np.unique(out["label"])) <= set(np.unique(s["label"]))
    np.testing.assert_array_equal(out["label"], s["label"].repeat(2, 0).repeat(2, 1))  # exact x2 nearest


@pytest.mark.parametrize("seed", range(5))
def test_random_resize_within_ratio_range(seed: int) -> None:
    s = _sample(50, 100)
    out = RandomResize((200, 100), (0.5, 2.0))(dict(s), np.random.default_rng(seed))
    h, w = out["image"].shape[:2]
    assert out["label"].shape == (h, w)
    assert 0.5 * 100 - 1 <= h <= 2.0 * 100 + 1 and abs(w / h - 2.0) < 0.05


def test_ratio_one_is_identity() -> None:
    s = _sample(96, 96)
    out = RandomResize((96, 96), (1.0, 1.0))(dict(s), np.random.default_rng(0))
    assert out["image"] is s["image"] and out["label"] is s["label"]


# ---------------------------------------------------------------------------------------- crop
def test_random_crop_shapes_and_small_images() -> None:
    out = RandomCrop((16, 24))(_sample(40, 60), np.random.default_rng(0))
    assert out["image"].shape == (16, 24, 3) and out["label"].shape == (16, 24)
    out = RandomCrop((64, 64))(_sample(40, 60), np.random.default_rng(0))  # smaller than the crop: whole
    assert out["image"].shape == (40, 60, 3)


def test_random_crop_content_matches_source() -> None:
    s = _sample(40, 60)
    s["image"][..., 0] = np.arange(60)[None, :]
    s["image"][..., 1] = np.arange(40)[:, None]
    out = RandomCrop((10, 20), cat_max_ratio=1.0)(dict(s), np.random.default_rng(3))
    x1, y1 = int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])
    np.testing.assert_array_equal(out["label"], s["label"][y1 : y1 + 10, x1 : x1 + 20])


def _band_label() -> np.ndarray:
    # class 0 everywhere except columns 48..63 (class 1); a 32×32 window is acceptable
    # (max class share < 0.75) iff its left edge x1 >= 25: 8 of the 33 positions
    label = np.zeros((32, 64), np.uint8)
    label[:, 48:] = 1
    return label


def _acceptable_share(cat_max_ratio: float, n: int = 200) -> float:
    ok = 0
    for seed in range(n):
        s = {"image": np.zeros((32, 64, 3), np.uint8), "label": _band_label()}
        out = RandomCrop((32, 32), cat_max_ratio=cat_max_ratio)(s, np.random.default_rng(seed))
        counts = np.bincount(out["label"].ravel(), minlength=2)
        ok += counts.max() / counts.sum() < 0.75
    return ok / n


def test_cat_max_ratio_rejects_dominated_crops() -> None:
    # without the check about 8/33 = 24 % of crops are acceptable; with 10 re-draws 1 - (25/33)^11 = 95 %
    assert _acceptable_share(1.0) < 0.4
    assert _acceptable_share(0.75) > 0.85


def test_cat_max_ratio_ignores_ignore_pixels_and_needs_two_classes() -> None:
    crop = RandomCrop((4, 4), cat_max_ratio=0.75)
    assert not crop._acceptable(np.zeros((4, 4), np.uint8))  # a single class
    lab = np.full((4, 4), 255, np.uint8)
    lab.ravel()[:2] = 0
    lab.ravel()[2:4] = 1
    assert crop._acceptable(lab)  # 255 is not counted: shares 2/4, 2/4
    lab.ravel()[4:6] = 1
    assert crop._acceptable(lab)  # 4/6 = 0.67 < 0.75
    lab.ravel()[6:8] = 1
    assert not crop._acceptable(lab)  # 6/8 = 0.75 is not < 0.75


# ---------------------------------------------------------------------------------------- flip / colour
def test_flip() -> None:
    s = _sample(5, 7)
    out = RandomFlip(1.0)(dict(s), np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"], s["image"][:, ::-1])
    np.testing.assert_array_equal(out["label"], s["label"][:, ::-1])
    out = RandomFlip(0.0)(dict(s), np.random.default_rng(0))
    assert out["image"] is s["image"]


def test_photometric_distortion_changes_only_the_image_and_is_seeded() -> None:
    s = _sample(16, 16)
    outs = [PhotoMetricDistortion()(dict(s), np.random.default_rng(k)) for k in range(8)]
    again = PhotoMetricDistortion()(dict(s), np.random.default_rng(3))
    np.testing.assert_array_equal(outs[3]["image"], again["image"])
    for o in outs:
        assert o["image"].dtype == np.uint8 and o["image"].shape == s["image"].shape
        assert o["label"] is s["label"]
    assert any(not np.array_equal(o["image"], s["image"]) for o in outs)


_rgb = arrays(np.uint8, (6, 5, 3), elements=st.integers(0, 255))


@settings(max_examples=60, deadline=None)
@given(_rgb)
def test_hsv_matches_skimage_and_inverts(rgb: np.ndarray) -> None:
    hsv = rgb_to_hsv(rgb / 255.0)
    ref = rgb2hsv(rgb)
    np.testing.assert_allclose(hsv[..., 1:], ref[..., 1:], atol=1e-6)
    # hue is only defined for coloured pixels (and wraps at 1)
    coloured = ref[..., 1] > 1e-6
    dh = np.abs(hsv[..., 0] - ref[..., 0])[coloured]
    assert np.all(np.minimum(dh, 1 - dh) < 1e-5)
    np.testing.assert_allclose(hsv_to_rgb(hsv), rgb / 255.0, atol=1e-5)
    np.testing.assert_allclose(hsv_to_rgb(ref.astype(np.float32)), hsv2rgb(ref), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(_rgb, st.floats(0.5, 1.5))
def test_saturation_blend_equals_hsv_route(rgb: np.ndarray, alpha: float) -> None:
    # the distortion scales S as a blend towards V; compare with scaling S in HSV space
    hsv = rgb2hsv(rgb)
    hsv[..., 1] = np.clip(hsv[..., 1] * alpha, 0, 1)
    ref = np.clip(np.rint(hsv2rgb(hsv) * 255), 0, 255)

    class Fixed:
        def __init__(self):
            self.calls = 0

        def integers(self, *a, **k):  # brightness off, contrast last, saturation on, hue off, contrast off
            self.calls += 1
            return [0, 0, 1, 0, 0][self.calls - 1]

        def uniform(self, *a, **k):
            return alpha

    out = PhotoMetricDistortion()({"image": rgb}, Fixed())["image"]
    assert np.abs(out.astype(int) - ref).max() <= 1  # rounding of float32 vs float64


# ---------------------------------------------------------------------------------------- normalise / pad
def test_normalize_and_pad_values() -> None:
    img = np.broadcast_to(np.array(IMAGENET_MEAN, np.float32).round().astype(np.uint8), (3, 5, 3)).copy()
    out = Normalize()({"image": img, "label": np.zeros((3, 5), np.uint8)})
    assert out["image"].dtype == np.float32 and np.abs(out["image"]).max() < 0.01
    out["image"] += 1.0
    out = Pad((4, 7), img_value=0.0, seg_value=255)(out)
    assert out["image"].shape == (4, 7, 3) and out["label"].shape == (4, 7)
    assert (
        (out["image"][3] == 0).all()
        and (out["image"][:, 5:] == 0).all()
        and (out["image"][:3, :5] > 0.9).all()
    )
    assert (
        (out["label"][3] == 255).all()
        and (out["label"][:, 5:] == 255).all()
        and (out["label"][:3, :5] == 0).all()
    )


# ---------------------------------------------------------------------------------------- pipelines
def test_train_pipeline_shapes_and_seeding() -> None:
    cfg = _cfg("data.base_scale=[120,40]", "data.crop_size=[32,48]", "data.ratio_range=[0.5,2.0]")
    tf = build_transform(cfg, train=True)
    s = _sample(40, 60)
    a = tf(dict(s), sample_rng(0, 0, 7))
    b = tf(dict(s), sample_rng(0, 0, 7))
    assert a["image"].shape == (3, 32, 48) and a["image"].dtype == torch.float32
    assert a["label"].shape == (32, 48) and a["label"].dtype == torch.int64
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    others = [tf(dict(s), sample_rng(0, e, 7))["image"] for e in range(1, 5)]
    assert not all(torch.equal(a["image"], o) for o in others)
    assert s["label"].shape == (40, 60)  # the input sample is not modified


def test_pad_reaches_crop_for_small_images() -> None:
    cfg = _cfg("data.base_scale=[30,20]", "data.crop_size=[32,48]", "data.ratio_range=[1.0,1.0]")
    out = build_transform(cfg, train=True)(_sample(40, 60), sample_rng(0, 0, 0))  # resized to 20×30
    assert out["image"].shape == (3, 32, 48)
    assert (out["label"][20:] == 255).all() and (out["label"][:, 30:] == 255).all()
    assert (out["image"][:, 20:] == 0).all()


def test_test_pipeline_keeps_label_at_original_size() -> None:
    cfg = _cfg("data.base_scale=[40,20]")
    s = _sample(50, 80)
    out = build_transform(cfg, train=False)(dict(s))
    assert out["image"].shape == (3, 20, 32)  # factor min(40/80, 20/50) = 0.4
    assert out["label"].shape == (50, 80)
    np.testing.assert_array_equal(out["label"].numpy(), s["label"])


def test_sample_rng_is_pure_and_validates() -> None:
    assert sample_rng(1, 2, 3).random() == sample_rng(1, 2, 3).random()
    assert sample_rng(1, 2, 3).random() != sample_rng(1, 2, 4).random()
    with pytest.raises(ValueError, match="non-negative"):
        sample_rng(-1, 0, 0)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="ratio_range"):
        RandomResize((10, 10), (2.0, 1.0))
    with pytest.raises(ValueError, match="crop_size"):
        RandomCrop((0, 4))
    with pytest.raises(ValueError, match="prob"):
        RandomFlip(1.5)
