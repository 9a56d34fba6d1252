"""Detection ops: RoIAlign on analytic maps and against the loop reference, NMS against a brute-force
greedy sweep, box IoU on hand-computed cases."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.nn import detection_ops
from fsanet.nn.detection_ops import batched_nms, box_iou, nms, roi_align, roi_align_reference


@contextlib.contextmanager
def _chunk(name: str, value: int):
    """Override one of the module's work sizes (to exercise several chunks on small inputs)."""
    with mock.patch.object(detection_ops, name, value):
        yield


# ---------------------------------------------------------------------------------------------
# box_iou


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor(
        [
            [3.0, 3.0, 4.0, 4.0],  # disjoint from a[0], a[2]; inside a[1] (area 1 of 16)
            [2.0, 0.0, 4.0, 2.0],  # shares an edge with a[0]; inside a[1] (4 of 16)
            [1.0, 1.0, 3.0, 3.0],  # overlaps a[0] in a 1×1 square; touches a[2] at a corner
            [0.5, 0.0, 1.5, 1.0],  # half of a[2]
        ]
    )
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0 / 7.0, 1.0 / 4.0],
            [1.0 / 16.0, 4.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0],
            [0.0, 0.0, 0.0, 0.5 / 1.5],
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (3, 4)
    torch.testing.assert_close(iou, expected)
    torch.testing.assert_close(box_iou(b, a), expected.t())


def test_box_iou_identical_nested_and_degenerate():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 7.0], [2.0, 3.0, 4.0, 5.0], [3.0, 3.0, 3.0, 3.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 0] == 1.0 and iou[1, 1] == 1.0
    assert iou[0, 1] == iou[1, 0] == pytest.approx(4.0 / 20.0)  # nested: inner area / outer area
    assert iou[2, 2] == 0.0  # empty union: 0 by definition, not NaN
    assert not iou.isnan().any()


def test_box_iou_shapes_and_dtypes():
    b = torch.rand(3, 4) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 3)
    assert box_iou(b, torch.zeros(0, 4)).shape == (3, 0)
    ints = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])
    out = box_iou(ints, ints)
    assert out.dtype == torch.get_default_dtype()
    assert out[0, 1].item() == pytest.approx(1.0 / 7.0)
    assert box_iou(b.double(), b.double()).dtype == torch.float64
    with pytest.raises(ValueError):
        box_iou(torch.zeros(2, 5), b)
    full = box_iou(b, b)
    with _chunk("_NMS_CHUNK", 2):  # one row per block
        assert torch.equal(box_iou(b, b), full)


def test_box_iou_autograd_and_nms_on_boxes_with_grad():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.5, 4.0, 3.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, 0.6, 2.5, 3.5], [3.2, 2.1, 4.3, 4.5]], dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        plain = box_iou(a, b)
    assert torch.equal(box_iou(a, b), plain)  # the differentiable path computes the same numbers
    assert torch.autograd.gradcheck(box_iou, (a, b))
    keep = nms(a, torch.tensor([0.5, 0.7], requires_grad=True), 0.2)  # IoU(a0, a1) = 0.15
    assert keep.tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------
# NMS


def _iou_scalar(a, b) -> float:
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_brute(boxes: torch.Tensor, scores: torch.Tensor, thr: float, classes=None) -> list[int]:
    """Greedy NMS from its definition: a box is kept iff no kept, higher-ranked box of its class has
    IoU > thr with it; rank = decreasing score, then increasing index."""
    b, s = boxes.tolist(), scores.tolist()
    cls = classes.tolist() if classes is not None else [0] * len(b)
    keep: list[int] = []
    for i in sorted(range(len(b)), key=lambda i: (-s[i], i)):
        if all(cls[i] != cls[j] or _iou_scalar(b[i], b[j]) <= thr for j in keep):
            keep.append(i)
    return keep


@st.composite
def box_sets(draw, max_n: int = 40):
    """Boxes on a small integer grid (many identical and touching boxes, exact IoU ties), optionally
    jittered, and scores with many ties."""
    n = draw(st.integers(0, max_n))
    coord = st.integers(0, 8)
    size = st.integers(0, 5)
    rows = []
    for _ in range(n):
        x, y, w, h = draw(coord), draw(coord), draw(size), draw(size)
        rows.append([x, y, x + w, y + h])
    boxes = torch.tensor(rows, dtype=torch.float64).reshape(n, 4)
    if draw(st.booleans()):
        jitter = draw(st.lists(st.floats(0, 0.5), min_size=4 * n, max_size=4 * n))
        boxes = boxes + torch.tensor(jitter, dtype=torch.float64).reshape(n, 4).sort(dim=1).values
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], 1)
    if draw(st.booleans()):
        scores = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    else:
        scores = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    return boxes, scores.to(torch.float64)


thresholds = st.one_of(st.sampled_from([0.0, 1.0 / 7.0, 0.25, 0.5, 0.7, 1.0]), st.floats(0, 1))


@settings(max_examples=150, deadline=None)
@given(data=box_sets(), thr=thresholds, chunk=st.sampled_from([1, 5, 64, 1 << 16]))
def test_nms_matches_brute_force(data, thr, chunk):
    boxes, scores = data
    with _chunk("_NMS_CHUNK", chunk):
        keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.long
    assert keep.tolist() == _nms_brute(boxes, scores, thr)


@settings(max_examples=100, deadline=None)
@given(data=box_sets(), thr=thresholds, n_cls=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_batched_nms_is_per_class(data, thr, n_cls, seed):
    boxes, scores = data
    classes = torch.randint(0, n_cls, (len(boxes),), generator=torch.Generator().manual_seed(seed))
    keep = batched_nms(boxes, scores, classes, thr).tolist()
    assert keep == _nms_brute(boxes, scores, thr, classes)
    # The same, assembled from one plain NMS per class: nothing is suppressed across classes.
    union = []
    for c in range(n_cls):
        idx = (classes == c).nonzero().flatten()
        union += idx[nms(boxes[idx], scores[idx], thr)].tolist()
    assert sorted(keep) == sorted(union)


def test_batched_nms_keeps_identical_boxes_of_other_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4 + [[1.0, 1.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = torch.tensor([0, 1, 0, 2, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [4, 0, 3]
    assert nms(boxes, scores, 0.5).tolist() == [4]
    # Exact per class: at a threshold equal to a pair's float32 IoU the pair survives, with the
    # IoU computed on the given coordinates (not shifted by class × extent, which rounds again).
    pair = torch.tensor([[0.1, 0.2, 3.7, 2.9], [0.3, 0.1, 3.3, 3.1]])
    thr = box_iou(pair[:1], pair[1:]).item()
    boxes = torch.cat([pair, torch.tensor([[0.0, 0.0, 1000.3, 1000.7]] * 79)])
    classes = torch.cat([torch.tensor([79, 79]), torch.arange(79)])
    scores = torch.cat([torch.tensor([0.9, 0.8]), torch.full((79,), 0.5)])
    assert nms(pair, scores[:2], thr).tolist() == [0, 1]
    assert batched_nms(boxes, scores, classes, thr).tolist() == list(range(81))
    below = torch.nextafter(torch.tensor(thr), torch.tensor(0.0)).item()  # one float32 ulp lower
    assert batched_nms(boxes, scores, classes, below).tolist() == [0] + list(range(2, 81))


def test_nms_edge_cases():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    same = torch.tensor([[1.0, 1.0, 3.0, 4.0]] * 5)
    tied = torch.ones(5)
    assert nms(same, tied, 0.5).tolist() == [0]  # ties: the lowest index wins
    assert nms(same, tied, 0.999).tolist() == [0]
    assert nms(same, tied, 1.0).tolist() == [0, 1, 2, 3, 4]  # IoU 1 is not above 1: nothing goes
    assert nms(same, torch.tensor([0.1, 0.5, 0.5, 0.9, 0.1]), 1.0).tolist() == [3, 1, 2, 0, 4]
    # threshold 0: any overlap of positive area suppresses, touching boxes do not
    boxes = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 4.0, 2.0], [1.9, 1.9, 5.0, 5.0], [0.0, 2.0, 2.0, 4.0]]
    )
    assert nms(boxes, torch.tensor([4.0, 3.0, 2.0, 1.0]), 0.0).tolist() == [0, 1, 3]
    assert nms(boxes, torch.tensor([4.0, 3.0, 2.0, 1.0]), 1.0).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        nms(boxes, torch.ones(3), 0.5)


def test_nms_on_2000_boxes_keeps_a_proper_subset():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2000, 2, generator=g) * 800
    boxes = torch.cat([xy, xy + torch.rand(2000, 2, generator=g) * 200 + 1], 1)
    scores = torch.rand(2000, generator=g)
    keep = nms(boxes, scores, 0.5)
    assert 0 < len(keep) < 2000
    assert (box_iou(boxes[keep], boxes[keep]).fill_diagonal_(0) <= 0.5).all()


# ---------------------------------------------------------------------------------------------
# RoIAlign: analytic maps


def _ramp(b: int, c: int, h: int, w: int, coef) -> torch.Tensor:
    """``f[n, k, i, j] = a·j + b·i + c`` with per-(image, channel) coefficients ``coef[n][k]``."""
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    return torch.stack([torch.stack([a * j + bb * i + cc for a, bb, cc in coef[n]]) for n in range(b)])


# RoIs in *feature* coordinates (x1, y1, x2, y2), all samples inside [0, W-1] × [0, H-1] of a 12×16 map.
_FEATURE_ROIS = [
    (1.0, 2.0, 9.5, 7.25),
    (0.0, 0.0, 15.0, 11.0),
    (3.3, 4.1, 3.9, 4.6),  # smaller than a pixel (clamped to 1×1 when aligned=False)
    (10.0, 1.0, 14.5, 10.5),
    (2.0, 3.0, 2.0, 3.0),  # empty: aligned=False makes it 1×1, aligned=True gives zeros
]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("out_hw", [(2, 3), (3, 1), (7, 5)])
def test_roi_align_linear_ramp_is_exact(aligned, scale, sampling_ratio, out_hw):
    h, w = 12, 16
    coef = [[(1.5, -2.0, 3.0), (0.25, 0.5, -1.0)], [(-1.0, 4.0, 0.0), (2.0, 0.0, 7.0)]]
    feats = _ramp(2, 2, h, w, coef)
    off = 0.5 if aligned else 0.0
    ph, pw = out_hw
    rois, expected = [], []
    for n, (fx1, fy1, fx2, fy2) in enumerate(_FEATURE_ROIS):
        bidx = n % 2
        # image coordinates that map onto this feature-space box: u_img·scale - off = u_feat
        rois.append([bidx] + [(u + off) / scale for u in (fx1, fy1, fx2, fy2)])
        rw, rh = fx2 - fx1, fy2 - fy1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        assert fx1 >= 0 and fy1 >= 0 and fx1 + rw <= w - 1 and fy1 + rh <= h - 1  # samples inside
        box = torch.zeros(2, ph, pw, dtype=torch.float64)
        if rw > 0 and rh > 0 or sampling_ratio > 0:
            for p in range(ph):
                for q in range(pw):
                    cy = fy1 + (p + 0.5) * rh / ph  # the centre of bin (p, q)
                    cx = fx1 + (q + 0.5) * rw / pw
                    for k, (a, b, c) in enumerate(coef[bidx]):
                        box[k, p, q] = a * cx + b * cy + c
        expected.append(box)
    rois = torch.tensor(rois, dtype=torch.float64)
    out = roi_align(feats, rois, out_hw, scale, sampling_ratio, aligned)
    assert out.shape == (len(_FEATURE_ROIS), 2, ph, pw)
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-10)
    torch.testing.assert_close(
        roi_align_reference(feats, rois, out_hw, scale, sampling_ratio, aligned),
        torch.stack(expected),
        rtol=0,
        atol=1e-10,
    )


def test_roi_align_hand_computed():
    # f = x on a 4×8 map; RoI x ∈ [2, 6] (image = feature, scale 1)
    feats = torch.arange(8, dtype=torch.float64).expand(1, 1, 4, 8).clone()
    roi = torch.tensor([[0.0, 2.0, 0.0, 6.0, 2.0]], dtype=torch.float64)
    # aligned: feature x ∈ [1.5, 5.5], two bins of width 2, centres 2.5 and 4.5
    assert roi_align(feats, roi, (1, 2), 1.0, 0, True).flatten().tolist() == [2.5, 4.5]
    # legacy: x ∈ [2, 6], centres 3 and 5
    assert roi_align(feats, roi, (1, 2), 1.0, 0, False).flatten().tolist() == [3.0, 5.0]
    # stride 2: x ∈ [3.5, 11.5], adaptive grid of 4 per bin: 4, 5, 6, 7 | 8, 9, 10, 11. x = 8 = W
    # is kept and snapped to the last column (7); 9, 10, 11 > W count as 0 → 5.5 and 7 / 4
    assert roi_align(feats, roi, (1, 2), 2.0, 0, True).flatten().tolist() == [5.5, 1.75]
    # legacy, x ∈ [5, 13], 2 samples per bin: 6, 8 (snapped to 7) | 10, 12 (both beyond W)
    roi = torch.tensor([[0.0, 5.0, 0.0, 13.0, 2.0]], dtype=torch.float64)
    assert roi_align(feats, roi, (1, 2), 1.0, 2, False).flatten().tolist() == [6.5, 0.0]


def test_roi_align_constant_map_and_boundary_rules():
    feats = torch.full((2, 3, 8, 10), 3.5, dtype=torch.float64)
    inside = torch.tensor(
        [
            [0, 0.0, 0.0, 10.0, 8.0],  # the whole map (samples in [-0.5, 9.5] × [-0.5, 7.5])
            [1, 2.5, 1.25, 7.0, 6.0],
            [1, 4.0, 4.0, 4.3, 4.2],  # tiny
            [0, -0.4, -0.4, 9.9, 7.9],  # reaches the border bands [-1, 0) and (W - 1, W]
        ],
        dtype=torch.float64,
    )
    for aligned in (True, False):
        for sr in (0, 1, 3):
            out = roi_align(feats, inside, (3, 4), 1.0, sr, aligned)
            torch.testing.assert_close(out, torch.full_like(out, 3.5), rtol=0, atol=1e-12)
    ones = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    # x ∈ [-6, 2], two bins, 2 samples each: -5, -3 (beyond -1: zero) | -1 (kept, clamped), 1
    roi = torch.tensor([[0, -6.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    assert roi_align(ones, roi, (1, 2), 1.0, 2, False).flatten().tolist() == [0.0, 1.0]
    # nudge the -1 sample outside: that bin loses half its mass
    roi = torch.tensor([[0, -6.0 - 1e-9, 0.0, 2.0 - 1e-9, 2.0]], dtype=torch.float64)
    out = roi_align(ones, roi, (1, 2), 1.0, 2, False).flatten().tolist()
    assert out == [0.0, 0.5]
    # far outside: zeros; an empty RoI under aligned=True with the adaptive grid: zeros too
    far = torch.tensor([[0, 20.0, 20.0, 30.0, 30.0], [0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert roi_align(ones, far, (2, 2), 1.0, 0, True).abs().sum() == 0


def test_roi_align_empty_and_errors():
    feats = torch.randn(1, 4, 5, 5)
    out = roi_align(feats, torch.zeros(0, 5), (7, 7), 1.0)
    assert out.shape == (0, 4, 7, 7)
    assert roi_align(feats, torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]]), 3, 1.0).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError):
        roi_align(feats, torch.zeros(2, 4), (2, 2), 1.0)
    with pytest.raises(ValueError):
        roi_align(feats, torch.tensor([[1, 0.0, 0.0, 4.0, 4.0]]), (2, 2), 1.0)


# ---------------------------------------------------------------------------------------------
# RoIAlign: the vectorised version against the loop


@st.composite
def roi_cases(draw):
    b, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    scale = draw(st.sampled_from([0.5, 1.0, 2.0]))
    k = draw(st.integers(1, 4))
    extent = st.one_of(
        st.just(0.0),  # empty
        st.floats(0.0, 1e-3),  # degenerate, tiny
        st.floats(-1.0, 0.0),  # inverted
        st.floats(0.0, 10.0),
    )
    rois = []
    for _ in range(k):
        x1, y1 = draw(st.floats(-4.0, 10.0)), draw(st.floats(-4.0, 10.0))  # partly outside too
        rois.append([draw(st.integers(0, b - 1)), x1, y1, x1 + draw(extent), y1 + draw(extent)])
    out_hw = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    sr = draw(st.sampled_from([0, 0, 1, 2, 3]))
    aligned = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    feats = torch.randn(b, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return feats, torch.tensor(rois, dtype=torch.float64), out_hw, scale, sr, aligned


@settings(max_examples=120, deadline=None)
@given(case=roi_cases(), chunk=st.sampled_from([1, 64, 1 << 19]))
def test_roi_align_matches_reference(case, chunk):
    feats, rois, out_hw, scale, sr, aligned = case
    with _chunk("_ROI_CHUNK", chunk):
        fast = roi_align(feats, rois, out_hw, scale, sr, aligned)
    ref = roi_align_reference(feats, rois, out_hw, scale, sr, aligned)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


def test_roi_align_float32_many_rois_in_chunks():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, 20, 24, generator=g)
    xy = torch.rand(60, 2, generator=g) * 90 - 10
    wh = torch.rand(60, 2, generator=g) * 60
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).float(), xy, xy + wh], 1)
    ref = roi_align_reference(feats, rois, (7, 5), 0.25, 0, True)
    for chunk in (1, 1000, 1 << 19):
        with _chunk("_ROI_CHUNK", chunk):
            out = roi_align(feats, rois, (7, 5), 0.25, 0, True)
        assert out.dtype == torch.float32 and out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 2)])
def test_roi_align_gradcheck(aligned, sampling_ratio):
    feats = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [
            [0, 1.0, 0.5, 9.0, 7.0],
            [1, -3.0, -2.0, 4.0, 6.0],  # partly outside
            [1, 6.0, 6.0, 6.2, 6.1],  # tiny
            [0, 9.0, 7.0, 14.0, 12.0],  # over the far border
        ],
        dtype=torch.float64,
    )

    def fn(x):
        return roi_align(x, rois, (2, 3), 0.75, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(fn, (feats,))
    # the gradient spreads each output's weights back onto the map: ones in, the total mass out
    out = fn(feats)
    out.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
