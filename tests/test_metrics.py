"""mmseg metrics: hand-computed values, NaN handling, set-level accumulation, fast/reference parity."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.engine.metrics import SegmentationMetric, confusion_matrix, intersect_and_union, summarize


def _metric(pairs, k):
    m = SegmentationMetric(k)
    for pred, label in pairs:
        m.update(torch.tensor(pred), torch.tensor(label))
    return m.compute()


def test_hand_computed_example():
    label = [[0, 0, 1], [1, 2, 255]]
    pred = [[0, 1, 1], [1, 1, 0]]  # the last pixel is ignored whatever is predicted
    r = _metric([(pred, label)], 3)
    # class 0: I=1, U=2 ; class 1: I=2, U=4 ; class 2: I=0, U=1
    assert r["IoU"] == pytest.approx({"0": 50.0, "1": 50.0, "2": 0.0})
    assert r["Acc"] == pytest.approx({"0": 50.0, "1": 100.0, "2": 0.0})
    assert r["mIoU"] == pytest.approx(100 / 3)
    assert r["mAcc"] == pytest.approx(50.0)
    assert r["aAcc"] == pytest.approx(60.0)  # 3 of 5 labelled pixels right
    assert r["area_label"] == {"0": 2, "1": 2, "2": 1}
    assert r["area_pred"] == {"0": 1, "1": 4, "2": 0}


def test_absent_class_is_nan_and_skipped_but_false_positive_counts():
    label = [[0, 0, 1], [1, 2, 255]]
    pred = [[0, 1, 1], [1, 1, 0]]
    r = _metric([(pred, label)], 5)  # classes 3 and 4 appear nowhere
    assert math.isnan(r["IoU"]["3"]) and math.isnan(r["IoU"]["4"]) and math.isnan(r["Acc"]["4"])
    assert r["mIoU"] == pytest.approx(100 / 3)
    pred_fp = [[0, 1, 1], [1, 3, 0]]  # class 3 predicted, never labelled: IoU 0, counted in the mean
    r = _metric([(pred_fp, label)], 5)
    assert r["IoU"]["3"] == 0.0
    assert math.isnan(r["Acc"]["3"])  # no labelled pixels: accuracy undefined
    # class 0: I=1, U=2; class 1: I=2, U=3 (pred 3 px, label 2 px); class 2: 0/1; class 3: 0/1
    assert r["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 0 + 0) / 4)


def test_areas_are_summed_over_the_set_not_averaged_per_image():
    a = ([[0, 0, 0, 0]], [[0, 0, 0, 0]])  # image 1: class 0 perfect (4 px)
    b = ([[1]], [[0]])  # image 2: one class-0 pixel predicted as 1
    r = _metric([a, b], 2)
    assert r["IoU"]["0"] == pytest.approx(100 * 4 / 5)  # per-image mean would give (100 + 0) / 2
    assert r["IoU"]["1"] == 0.0
    assert r["aAcc"] == pytest.approx(80.0)


def test_all_ignored_gives_nan_not_an_error():
    r = _metric([([[0, 1]], [[255, 255]])], 2)
    assert math.isnan(r["mIoU"]) and math.isnan(r["aAcc"])


def test_bad_labels_and_shapes_are_named():
    with pytest.raises(ValueError, match="label value 7"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="class names"):
        summarize(torch.eye(3, dtype=torch.int64), ["a", "b"])


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    n_images=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    ignore_frac=st.floats(0, 0.5),
)
def test_fast_path_matches_mmseg_reference(k, n_images, seed, ignore_frac):
    g = torch.Generator().manual_seed(seed)
    metric = SegmentationMetric(k)
    totals = torch.zeros(4, k, dtype=torch.float64)
    for _ in range(n_images):
        h, w = torch.randint(1, 9, (2,), generator=g).tolist()
        label = torch.randint(0, k, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < ignore_frac] = 255
        pred = torch.randint(0, k, (h, w), generator=g)
        metric.update(pred, label)
        totals += torch.stack(intersect_and_union(pred, label, k))
    inter, union, area_pred, area_label = totals
    cm = metric.cm.double()
    assert torch.equal(cm.diag(), inter)
    assert torch.equal(cm.sum(0), area_pred)
    assert torch.equal(cm.sum(1), area_label)
    assert torch.equal(cm.sum(0) + cm.sum(1) - cm.diag(), union)
    r = metric.compute()
    ref_iou = inter / union
    expect = 100 * ref_iou[~ref_iou.isnan()].mean().item() if (~ref_iou.isnan()).any() else math.nan
    assert (math.isnan(r["mIoU"]) and math.isnan(expect)) or r["mIoU"] == pytest.approx(expect)
