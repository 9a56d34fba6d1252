"""Mask R-CNN (FPN) on tiny inputs: the train/eval contract, the box geometry against hand-computed
values, the res4 attention placement and a short overfit run."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.models.mask_rcnn import (
    LOSS_KEYS,
    AnchorGenerator,
    DeltaXYWHCoder,
    MaskRCNN,
    MaskRCNNSettings,
    assign_max_iou,
    insert_res4_attention,
    paste_masks,
    roi_levels,
    sample_assigned,
)
from fsanet.models.resnet import ResNetV1c
from fsanet.models.small import SmallBackbone
from fsanet.nn.detection_ops import box_iou
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.nn.non_local import NonLocal2d

NUM_CLASSES = 2


def _settings(**overrides) -> MaskRCNNSettings:
    """The tiny CPU configuration: two levels (strides 4 and 8), no P6, narrow heads, few samples."""
    base = dict(
        frozen_stages=-1,
        norm_eval=False,
        in_indices=(0, 3),
        strides=(4, 8),
        extra_level=False,
        anchor_scale=4,
        fpn_channels=16,
        box_fc=32,
        mask_channels=16,
        mask_convs=1,
        rpn_num=64,
        roi_num=64,
        rpn_pre_nms_train=300,
        rpn_post_nms_train=100,
        rpn_pre_nms_test=300,
        rpn_post_nms_test=50,
    )
    base.update(overrides)
    return MaskRCNNSettings(**base)


def _model(**overrides) -> MaskRCNN:
    return MaskRCNN(SmallBackbone((8, 16, 16, 32)), NUM_CLASSES, _settings(**overrides))


def _target(boxes: list[list[int]], labels: list[int], height: int, width: int) -> dict[str, torch.Tensor]:
    """Filled rectangles: the box (x1, y1, x2, y2) and its mask over the pixels [x1, x2) × [y1, y2)."""
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "masks": masks,
    }


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------
# the model contract


def test_train_forward_gives_five_finite_losses_and_gradients_everywhere():
    model = _model().train()
    images = torch.randn(2, 3, 64, 64)
    targets = [
        _target([[8, 10, 30, 34], [36, 30, 60, 52]], [0, 1], 64, 64),
        _target([[20, 16, 44, 40]], [1], 64, 64),
    ]
    losses = model(images, targets)
    assert tuple(losses) == LOSS_KEYS == model.loss_names
    for key, value in losses.items():
        assert value.shape == () and bool(torch.isfinite(value)), key
    assert float(losses["loss_mask"].detach()) > 0
    sum(losses.values()).backward()
    for part in (model.backbone, model.neck, model.rpn, model.box_head, model.mask_head):
        assert _grad_norm(part) > 0, type(part).__name__


def test_images_without_instances_train():
    model = _model().train()
    images = torch.randn(2, 3, 64, 64)
    empty = _target([], [], 64, 64)
    losses = model(images, [empty, _target([[8, 8, 40, 40]], [0], 64, 64)])
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    losses = model(images, [empty, empty])  # nothing positive anywhere: zero box/mask losses, connected
    values = {k: float(v.detach()) for k, v in losses.items()}
    assert values["loss_rpn_bbox"] == 0 and values["loss_bbox"] == 0
    assert values["loss_mask"] == 0 and values["loss_rpn_cls"] > 0
    sum(losses.values()).backward()
    assert model.mask_head.logits.weight.grad is not None


def test_eval_outputs_shapes_dtypes_and_ranges():
    model = _model().eval()
    height, width = 60, 70  # not a multiple of the stride: padded inside
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, height, width))
    assert len(outputs) == 2
    assert sum(len(o["boxes"]) for o in outputs) > 0  # an untrained model scores ~1/3 per class
    for out in outputs:
        n = out["boxes"].shape[0]
        assert out["boxes"].shape == (n, 4) and out["boxes"].dtype == torch.float32
        assert out["scores"].shape == (n,) and out["labels"].shape == (n,)
        assert out["labels"].dtype == torch.int64 and out["masks"].shape == (n, height, width)
        assert n <= model.settings.max_per_img
        boxes = out["boxes"]
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all())
        assert bool((boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all())
        assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())
        assert bool((out["scores"] > model.settings.score_thr).all() and (out["scores"] <= 1).all())
        assert bool(((out["labels"] >= 0) & (out["labels"] < NUM_CLASSES)).all())
        assert bool(((out["masks"] >= 0) & (out["masks"] <= 1)).all())


def test_eval_without_detections_gives_empty_shapes():
    model = _model(score_thr=1.0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 48))[0]
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
    assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64
    assert out["masks"].shape == (0, 64, 48)


def test_roi_targets_decode_to_the_gt_and_crop_its_mask():
    model = _model()
    target = _target([[8, 8, 36, 36]], [1], 48, 48)
    target["masks"][0, :, 22:] = False  # only the left half, columns 8..21, of the 28×28 box
    gt = model._target(target, (48, 48), torch.zeros(1))
    proposal = torch.tensor([[10.0, 8.0, 38.0, 36.0]])  # shifted 2 px right: IoU 0.87, positive
    sample = model._sample_rois([proposal], [gt])
    assert sample.rois.shape == (2, 5) and sample.pos.tolist() == [0, 1]  # the GT box joins the RoIs
    assert sample.labels.tolist() == [1, 1]
    decoded = model.box_coder.decode(sample.rois[:, 1:], sample.box_targets)
    torch.testing.assert_close(decoded, gt.boxes.expand(2, 4))
    expected = torch.zeros(2, 28, 28)
    expected[0, :, :14] = 1  # the GT box: 1 px per bin, left half
    expected[1, :, :12] = 1  # the proposal starts 2 px further right
    assert torch.equal(sample.mask_targets, expected)


def test_mask_loss_reads_the_gt_class_channel():
    # only the GT box itself is positive (IoU ≥ 0.99); its mask target is all ones
    model = _model(roi_pos_iou=0.99).train()
    images = torch.randn(1, 3, 64, 64)
    target = _target([[8, 10, 40, 42]], [1], 64, 64)
    with torch.no_grad():
        model.mask_head.logits.weight.zero_()
        model.mask_head.logits.bias.copy_(torch.tensor([-20.0, 20.0]))
    assert float(model(images, [target])["loss_mask"].detach()) < 1e-6
    with torch.no_grad():
        model.mask_head.logits.bias.copy_(torch.tensor([20.0, -20.0]))
    assert float(model(images, [target])["loss_mask"].detach()) == pytest.approx(20.0, abs=1e-3)


def test_background_is_the_last_class_logit():
    model = _model().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.box_head.cls.bias[-1] = 50.0  # background wins everywhere: nothing detected
        assert model(images)[0]["boxes"].shape == (0, 4)
        model.box_head.cls.bias[-1] = 0.0
        model.box_head.cls.bias[1] = 50.0  # class 1 wins everywhere
        out = model(images)[0]
    assert out["labels"].numel() > 0 and bool((out["labels"] == 1).all())


def test_levels_of_equal_stride_and_extra_level():
    model = _model(in_indices=(1, 2, 3), strides=(8, 8, 8), extra_level=True, mask_convs=0).train()
    losses = model(torch.randn(1, 3, 48, 56), [_target([[4, 6, 30, 40]], [1], 48, 56)])
    assert all(bool(torch.isfinite(v)) for v in losses.values())


def test_wrong_strides_are_refused():
    model = _model(strides=(4, 16)).train()  # layer4 of the small backbone is at stride 8
    with pytest.raises(ValueError, match="strides"):
        model(torch.randn(1, 3, 64, 64), [_target([], [], 64, 64)])


def test_sampling_uses_torch_global_rng():
    model = _model().train()
    images = torch.randn(2, 3, 64, 64)
    targets = [_target([[8, 10, 30, 34]], [0], 64, 64), _target([[20, 16, 44, 40]], [1], 64, 64)]
    torch.manual_seed(3)
    first = model(images, targets)
    torch.manual_seed(3)
    again = model(images, targets)
    torch.manual_seed(4)
    other = model(images, targets)
    assert all(torch.equal(first[k], again[k]) for k in LOSS_KEYS)
    assert any(not torch.equal(first[k], other[k]) for k in LOSS_KEYS)


def test_param_groups_split_backbone_and_detector():
    model = _model()
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["backbone", "detector"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.backbone.parameters()} == {id(p) for p in groups[0]["params"]}


# ---------------------------------------------------------------------------------------------
# box geometry


def test_anchor_counts_and_boxes_at_one_location():
    gen = AnchorGenerator((4, 8), scale=4.0, ratios=(0.5, 1.0, 2.0))
    assert gen.grid_anchors(0, (16, 12)).shape == (16 * 12 * 3, 4)
    anchors = gen.grid_anchors(1, (5, 6))  # stride 8: side 32, area 1024
    assert anchors.shape == (5 * 6 * 3, 4)
    # location (y=2, x=1) is centred at (8, 16); row-major locations, 3 ratios each
    at = anchors[(2 * 6 + 1) * 3 : (2 * 6 + 1) * 3 + 3]
    r = math.sqrt(2.0)
    w_half = (16 * r, 16.0, 16 / r)  # ratio h/w = 0.5: w = 32·√2, h = 32/√2
    h_half = (16 / r, 16.0, 16 * r)
    expected = torch.tensor([[8 - w, 16 - h, 8 + w, 16 + h] for w, h in zip(w_half, h_half)])
    torch.testing.assert_close(at, expected)
    torch.testing.assert_close(anchors[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    # image 20×30 on a 5×6 map at stride 8: rows < 3, columns < 4 are on the image
    valid = gen.valid_flags(1, (5, 6), (20, 30)).view(5, 6, 3)
    assert int(valid.sum()) == 3 * 4 * 3 and bool(valid[:3, :4].all())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-50, 50), min_size=2, max_size=2),
    st.lists(st.floats(2, 80), min_size=2, max_size=2),
    st.lists(st.floats(-50, 50), min_size=2, max_size=2),
    st.lists(st.floats(2, 80), min_size=2, max_size=2),
    st.sampled_from([(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)]),
)
def test_delta_coder_round_trip(p0, psize, g0, gsize, stds):
    ref = torch.tensor([[p0[0], p0[1], p0[0] + psize[0], p0[1] + psize[1]]], dtype=torch.float64)
    gt = torch.tensor([[g0[0], g0[1], g0[0] + gsize[0], g0[1] + gsize[1]]], dtype=torch.float64)
    coder = DeltaXYWHCoder(stds=stds)
    torch.testing.assert_close(coder.decode(ref, coder.encode(ref, gt)), gt)


def test_delta_coder_hand_values_and_clamp():
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 0.0, 25.0, 20.0]])  # centre +10 in x, twice as wide
    torch.testing.assert_close(coder.encode(ref, gt), torch.tensor([[10.0, 0.0, math.log(2) / 0.2, 0.0]]))
    huge = coder.decode(ref, torch.tensor([[0.0, 0.0, 100.0, 0.0]]), max_shape=(1000, 5000))
    width = 10 * 1000 / 16  # dw clamped at log(1000/16)
    torch.testing.assert_close(huge, torch.tensor([[5 - width / 2, 0.0, 5 + width / 2, 20.0]]).clamp(min=0))


def test_roi_levels_hand_computed():
    sides = torch.tensor([10.0, 56.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    assert roi_levels(boxes, 4, 56).tolist() == [0, 0, 0, 1, 2, 2, 3, 3]
    assert roi_levels(boxes, 2, 56).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    flat = torch.tensor([[0.0, 0.0, 224.0, 56.0]])  # sqrt(area) = 112
    assert roi_levels(flat, 4, 56).tolist() == [1]


def test_assign_max_iou_hand_computed():
    iou = torch.tensor(
        [
            [0.8, 0.5, 0.1, 0.0, 0.25],  # GT 0: box 0 positive by threshold
            [0.1, 0.6, 0.2, 0.35, 0.0],  # GT 1: its best (0.6) is box 1, below 0.7: low-quality match
        ]
    )
    assert assign_max_iou(iou, 0.7, 0.3, 0.3).tolist() == [1, 2, 0, -1, 0]
    assert assign_max_iou(iou, 0.7, 0.3, 0.65).tolist() == [1, -1, 0, -1, 0]
    assert assign_max_iou(torch.zeros(0, 3), 0.7, 0.3, 0.3).tolist() == [0, 0, 0]


def test_sample_assigned_respects_counts():
    assigned = torch.tensor([1] * 30 + [0] * 100 + [-1] * 10)
    pos, neg = sample_assigned(assigned, 64, 0.25)
    assert pos.numel() == 16 and neg.numel() == 48
    assert bool((assigned[pos] > 0).all() and (assigned[neg] == 0).all())
    assert pos.unique().numel() == 16 and neg.unique().numel() == 48
    pos, neg = sample_assigned(torch.tensor([2, 0, 0, -1]), 64, 0.5)
    assert pos.tolist() == [0] and sorted(neg.tolist()) == [1, 2]


@pytest.mark.parametrize("box", [(10, 20, 30, 34), (5, 3, 50, 47), (0, 0, 40, 30)])
def test_paste_all_ones_mask_covers_exactly_the_box(box):
    height, width = 40, 48
    x1, y1, x2, y2 = box
    pasted = paste_masks(torch.ones(1, 28, 28), torch.tensor([box], dtype=torch.float32), height, width)
    assert pasted.shape == (1, height, width)
    expected = torch.zeros(height, width, dtype=torch.bool)
    expected[y1:y2, x1:x2] = True
    assert torch.equal(pasted[0] >= 0.5, expected)
    assert float(pasted.max()) <= 1.0 and float(pasted[0][~expected].max()) < 0.5


def test_paste_follows_the_mask_content():
    mask = torch.zeros(1, 28, 28)
    mask[0, :, :14] = 1.0  # left half
    pasted = paste_masks(mask, torch.tensor([[8.0, 4.0, 36.0, 32.0]]), 40, 40)[0] >= 0.5
    expected = torch.zeros(40, 40, dtype=torch.bool)
    expected[4:32, 8:22] = True
    assert torch.equal(pasted, expected)


# ---------------------------------------------------------------------------------------------
# the res4 attention


def test_res4_attention_after_the_single_block_of_the_small_backbone():
    attention = FrequencySelfAttention(16, band=(2, 2))
    model = MaskRCNN(SmallBackbone((8, 16, 16, 32)), NUM_CLASSES, _settings(), res4_attention=attention)
    assert model.attention_modules() == [attention]
    assert list(model.backbone.layer3.children())[-1] is attention
    assert any(p is attention.theta.weight for p in model.param_groups()[0]["params"])
    seen = []
    attention.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [(1, 16, 8, 8)]
    assert _model().attention_modules() == []


def test_res4_attention_before_the_last_block_of_resnet50():
    backbone = ResNetV1c(depth=50, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))
    last = backbone.layer3[-1]
    names = {k for k in backbone.state_dict() if k.startswith("layer3.5.")}
    attention = NonLocal2d(1024)
    insert_res4_attention(backbone, attention)
    children = list(backbone.layer3.children())
    assert len(children) == 7 and children[-2] is attention and children[-1] is last
    assert names <= set(backbone.state_dict())  # the ResNet blocks keep their checkpoint names
    model = MaskRCNN(backbone, NUM_CLASSES, MaskRCNNSettings(fpn_channels=8, box_fc=8, mask_channels=8))
    assert model.attention_modules() == [attention]
    with pytest.raises(ValueError, match="channels"):
        insert_res4_attention(SmallBackbone((8, 16, 16, 32)), NonLocal2d(8))


def test_resnet_backbone_is_frozen_and_norm_eval_as_in_mmdet():
    """mmdet's R-50 (frozen_stages=1, norm_eval=True): no gradients for the stem and layer1, and every
    backbone BatchNorm keeps its statistics in train mode; the rest of the detector trains."""
    backbone = ResNetV1c(depth=50, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))
    settings = MaskRCNNSettings(fpn_channels=8, box_fc=8, mask_channels=8)
    model = MaskRCNN(backbone, NUM_CLASSES, settings).train()
    frozen = [p for m in (backbone.stem, backbone.layer1) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    trained = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not trained & {id(p) for p in frozen}
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert model.training and backbone.layer2.training and not any(m.training for m in bns)
    assert not backbone.stem.training and not backbone.layer1.training
    assert model.neck.training and model.rpn.training and model.box_head.training
    # a running mean does not move in a training forward
    before = backbone.layer4[0].bn1.running_mean.clone()
    model(torch.randn(1, 3, 64, 64), [_target([[4, 4, 40, 40]], [0], 64, 64)])
    assert torch.equal(backbone.layer4[0].bn1.running_mean, before)
    # the tiny settings (frozen_stages=-1, norm_eval=False) train everything, BN statistics included
    small = _model().train()
    assert all(p.requires_grad for p in small.parameters())
    assert all(m.training for m in small.modules())
    with pytest.raises(ValueError, match="frozen_stages must be in -1..4"):
        MaskRCNNSettings(frozen_stages=5)


class _Plain(torch.nn.Module):
    out_channels = (8, 8, 8, 8)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] * 4


def test_frozen_stages_need_the_named_backbone_parts():
    needle = "frozen_stages=1 needs the backbone's stem, layer1.*frozen_stages=-1"
    with pytest.raises(ValueError, match=needle):
        MaskRCNN(_Plain(), NUM_CLASSES, _settings(frozen_stages=1))


# ---------------------------------------------------------------------------------------------
# learning


def _squares(height: int = 64, width: int = 64) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two images with 1–2 filled squares each: class 0 red, class 1 green, on a dark background."""
    layouts = [
        ([[6, 8, 28, 30], [36, 34, 58, 56]], [0, 1]),
        ([[30, 6, 54, 30]], [1]),
    ]
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0]])
    images = torch.full((len(layouts), 3, height, width), -0.5)
    targets = []
    for i, (boxes, labels) in enumerate(layouts):
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            images[i, :, y1:y2, x1:x2] = colours[label][:, None, None]
        targets.append(_target(boxes, labels, height, width))
    return images, targets


def test_overfits_two_images_of_squares():
    model = _model().train()
    images, targets = _squares()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(80):
        total = sum(model(images, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    start, end = sum(totals[:3]) / 3, sum(totals[-5:]) / 5
    assert end < 0.5 * start, (start, end)
    # and it finds them: each square by a detection of its class, box and mask IoU ≥ 0.5
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, target in zip(outputs, targets):
        iou = box_iou(target["boxes"], out["boxes"])  # (G, N)
        for g, label in enumerate(target["labels"].tolist()):
            hits = torch.nonzero((iou[g] >= 0.5) & (out["labels"] == label)).squeeze(1)
            assert hits.numel() > 0, (g, label)
            best = hits[out["scores"][hits].argmax()]
            mask = out["masks"][best] >= model.settings.mask_thr
            gt_mask = target["masks"][g]
            assert float((mask & gt_mask).sum() / (mask | gt_mask).sum()) >= 0.5
