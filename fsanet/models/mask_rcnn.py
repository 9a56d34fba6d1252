"""Mask R-CNN with a feature pyramid (FPN), in plain torch, with mmdet's ``mask_rcnn_r50_fpn_1x`` defaults.

The contract with the engine (task ``"instances"``):

* ``model(images, targets)`` in train mode, ``images`` (B, 3, H, W) normalised floats and one target
  dict per image (``"boxes"`` (N, 4) xyxy in input pixels, ``"labels"`` (N,) int64 in
  ``0..num_classes-1``, ``"masks"`` (N, H, W) bool/uint8; N may be 0), returns the scalar losses
  :data:`LOSS_KEYS`. Their sum is the training objective (every weight is 1 by default).
* In eval mode ``model(images)`` returns one dict per image: ``"boxes"`` (N, 4) clipped to the
  image, ``"scores"`` (N,), ``"labels"`` (N,) int64 and ``"masks"`` (N, H, W) float probabilities
  (the 28×28 mask pasted bilinearly at the box; threshold at ``mask_thr`` for the binary mask).
* ``attention_modules()``, ``param_groups()``, ``num_classes`` and ``name`` as for the segmentation
  models (:mod:`fsanet.models.segmentor`).

Pipeline (mmdet v2 semantics, see each class for details):

1. Images are zero-padded at the bottom/right to a multiple of the coarsest stride; the backbone
   levels named by ``in_indices`` feed the :class:`FPN`; an extra level P6 (max-pool of the coarsest
   output, stride 2) is used by the RPN only.
2. :class:`RPNHead` scores ``len(anchor_ratios)`` anchors per location (:class:`AnchorGenerator`),
   trained on anchors assigned by :func:`assign_max_iou` and sampled by :func:`sample_assigned`.
   Proposals: per level top-k, decode, clip, drop empty boxes, NMS per level, keep the best.
3. RoIs (train: proposals + GT boxes, sampled; test: proposals) are pooled from one FPN level
   (:func:`roi_levels`) by RoIAlign (7×7 for :class:`BoxHead`, 14×14 for :class:`MaskHead`).
4. Test: class-specific boxes, score threshold, per-class NMS, then masks for the kept boxes,
   pasted into the image by :func:`paste_masks`.

Deviations from mmdet, all small: GT boxes with zero width or height are dropped inside the model
(mmdet's COCO loader drops them before); the whole batch shares one padded size (it is one tensor);
the pasted masks are computed on the full image for every detection (mmdet pastes into the box's
neighbourhood only; the values differ only below the threshold).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsanet.nn.base import AttentionModule
from fsanet.nn.detection_ops import batched_nms, box_iou, roi_align

__all__ = [
    "LOSS_KEYS",
    "AnchorGenerator",
    "BoxHead",
    "DeltaXYWHCoder",
    "FPN",
    "MaskHead",
    "MaskRCNN",
    "MaskRCNNSettings",
    "MultiLevelRoIAlign",
    "RPNHead",
    "assign_max_iou",
    "insert_res4_attention",
    "paste_masks",
    "roi_levels",
    "sample_assigned",
]

log = logging.getLogger(__name__)

#: the keys of the training losses, in this order
LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")


@dataclass
class MaskRCNNSettings:
    """Hyper-parameters; the defaults are mmdet's ``mask_rcnn_r50_fpn_1x`` model, train and test configs."""

    # backbone (mmdet's ResNet: frozen_stages=1, norm_eval=True)
    frozen_stages: int = 1  # the stem and layer1…layer<n> get no gradients and stay in eval mode; -1: none
    norm_eval: bool = True  # every BatchNorm of the backbone keeps its (ImageNet) statistics in training
    # FPN / anchors
    in_indices: tuple[int, ...] = (0, 1, 2, 3)  # backbone outputs that feed the FPN, finest first
    strides: tuple[int, ...] = (4, 8, 16, 32)  # their strides (in input pixels)
    fpn_channels: int = 256
    fpn_kernel: int = 3  # FPN output conv kernel (1 on the CPU study: keeps the receptive field small)
    extra_level: bool = True  # P6 = max-pool(stride 2) of the coarsest level, RPN only (mmdet num_outs=5)
    anchor_scale: float = 8.0  # anchor side = scale · stride (mmdet scales=[8])
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # h / w
    # RPN
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_num: int = 256  # sampled anchors per image
    rpn_pos_fraction: float = 0.5
    rpn_pre_nms_train: int = 2000  # per level
    rpn_post_nms_train: int = 1000  # per image
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 0.0  # proposals need width and height > this
    # RoI heads
    roi_pos_iou: float = 0.5  # positive at ≥, negative below
    roi_num: int = 512  # sampled RoIs per image
    roi_pos_fraction: float = 0.25
    finest_scale: int = 56  # RoIs of side below 2·finest_scale are pooled from the finest level
    box_roi_size: int = 7
    roi_sampling_ratio: int = 0  # RoIAlign samples per bin, 0 = adaptive
    box_fc: int = 1024
    mask_convs: int = 4
    mask_channels: int = 256
    mask_size: int = 28  # mask head output; the mask RoIs are pooled at half of it
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    mask_thr: float = 0.5
    # loss weights (mmdet: all 1; sigmoid BCE + L1 for the RPN, CE + L1 for the boxes, BCE for masks)
    rpn_cls_weight: float = 1.0
    rpn_bbox_weight: float = 1.0
    cls_weight: float = 1.0
    bbox_weight: float = 1.0
    mask_weight: float = 1.0

    def __post_init__(self) -> None:
        self.in_indices = tuple(int(i) for i in self.in_indices)
        self.strides = tuple(int(s) for s in self.strides)
        self.anchor_ratios = tuple(float(r) for r in self.anchor_ratios)
        if not self.in_indices or len(self.in_indices) != len(self.strides):
            raise ValueError(
                f"MaskRCNNSettings: in_indices {self.in_indices} and strides {self.strides} "
                "must be non-empty and of the same length"
            )
        if min(self.strides) < 1 or list(self.strides) != sorted(self.strides):
            raise ValueError(f"MaskRCNNSettings: strides must be positive, finest first, got {self.strides}")
        if self.mask_size < 2 or self.mask_size % 2:
            raise ValueError(f"MaskRCNNSettings: mask_size must be even, got {self.mask_size}")
        if self.fpn_kernel < 1 or self.fpn_kernel % 2 == 0:
            raise ValueError(f"MaskRCNNSettings: fpn_kernel must be odd, got {self.fpn_kernel}")
        if not self.anchor_ratios or min(self.anchor_ratios) <= 0:
            raise ValueError(f"MaskRCNNSettings: anchor_ratios must be positive, got {self.anchor_ratios}")
        if not -1 <= self.frozen_stages <= 4:
            raise ValueError(f"MaskRCNNSettings: frozen_stages must be in -1..4, got {self.frozen_stages}")


# ---------------------------------------------------------------------------------------------
# Box geometry: the delta coder, anchors, RoI levels, assignment and sampling, mask pasting


class DeltaXYWHCoder:
    """mmdet's ``DeltaXYWHBBoxCoder``: box ↔ normalised (dx, dy, dw, dh) relative to a reference box.

    ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``, ``dh = log(gh / ph)``
    (centres and sizes, no ``+1``), then ``(d - means) / stds``. Decoding clamps ``dw``, ``dh`` to
    ``±log(1000 / 16)`` and optionally clips the boxes to an image.

    Args:
        stds: per-coordinate standard deviations (RPN: 1; RoI head: (0.1, 0.1, 0.2, 0.2)).
        means: per-coordinate means (0 in mmdet).
    """

    max_log_ratio = abs(math.log(16 / 1000))

    def __init__(
        self,
        stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    ) -> None:
        self.stds = stds
        self.means = means

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return like.new_tensor(self.means), like.new_tensor(self.stds)

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` that move ``boxes`` ``(..., 4)`` onto ``gt`` ``(..., 4)``."""
        pwh = boxes[..., 2:] - boxes[..., :2]
        pxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        gwh = gt[..., 2:] - gt[..., :2]
        gxy = (gt[..., :2] + gt[..., 2:]) * 0.5
        deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=-1)
        means, stds = self._stats(deltas)
        return (deltas - means) / stds

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """Boxes ``(..., 4)`` from reference ``boxes`` and ``deltas`` (broadcast against each other).

        Args:
            boxes: reference boxes ``(..., 4)`` xyxy.
            deltas: normalised deltas ``(..., 4)``.
            max_shape: ``(H, W)``: clip x to ``[0, W]`` and y to ``[0, H]``.
        """
        means, stds = self._stats(deltas)
        deltas = deltas * stds + means
        pwh = boxes[..., 2:] - boxes[..., :2]
        pxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        dwh = deltas[..., 2:].clamp(-self.max_log_ratio, self.max_log_ratio)
        gxy = pxy + pwh * deltas[..., :2]
        gwh = pwh * dwh.exp()
        out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if max_shape is not None:
            height, width = max_shape
            out = torch.stack(
                [
                    out[..., 0].clamp(0, width),
                    out[..., 1].clamp(0, height),
                    out[..., 2].clamp(0, width),
                    out[..., 3].clamp(0, height),
                ],
                dim=-1,
            )
        return out


class AnchorGenerator:
    """mmdet's ``AnchorGenerator`` with one scale: ``len(ratios)`` anchors per location and level.

    At level stride ``s`` the anchors have area ``(scale·s)²`` and ``h / w = ratio``, and are centred
    on ``(x·s, y·s)`` (centre offset 0). They are ordered location-major (row by row, then column),
    ratio-minor, matching an ``(B, A, h, w)`` head output permuted to ``(B, h, w, A)``.

    Args:
        strides: stride of each level.
        scale: anchor side in units of the stride.
        ratios: anchor aspect ratios ``h / w``.
    """

    def __init__(self, strides: tuple[int, ...], scale: float, ratios: tuple[float, ...]) -> None:
        self.strides = tuple(strides)
        self.scale = float(scale)
        self.ratios = tuple(ratios)

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.ratios)

    def base_anchors(self, stride: int, device: torch.device | None = None) -> Tensor:
        """``(A, 4)``: the anchors of one location at the origin."""
        h_ratio = torch.tensor(self.ratios, device=device).sqrt()
        side = self.scale * stride
        ws = side / h_ratio
        hs = side * h_ratio
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)

    def grid_anchors(self, level: int, size: tuple[int, int], device: torch.device | None = None) -> Tensor:
        """``(h·w·A, 4)``: every anchor of a level whose map is ``size = (h, w)``."""
        stride = self.strides[level]
        ys = torch.arange(size[0], device=device, dtype=torch.float32) * stride
        xs = torch.arange(size[1], device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (h·w, 1, 4)
        return (shifts + self.base_anchors(stride, device)[None]).reshape(-1, 4)

    def valid_flags(
        self,
        level: int,
        size: tuple[int, int],
        image_size: tuple[int, int],
        device: torch.device | None = None,
    ) -> Tensor:
        """``(h·w·A,)`` bool: the anchor's location lies on the image, not on its padding (mmdet)."""
        stride = self.strides[level]
        valid_h = min(math.ceil(image_size[0] / stride), size[0])
        valid_w = min(math.ceil(image_size[1] / stride), size[1])
        rows = torch.arange(size[0], device=device) < valid_h
        cols = torch.arange(size[1], device=device) < valid_w
        flags = rows[:, None] & cols[None, :]  # (h, w)
        return flags.reshape(-1, 1).expand(-1, self.num_anchors).reshape(-1)


def roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56) -> Tensor:
    """FPN level of each RoI (mmdet ``SingleRoIExtractor.map_roi_levels``).

    ``floor(log2(sqrt(w·h) / finest_scale + 1e-6))`` clamped to ``[0, num_levels - 1]``: with the
    default 56, sides below 112 go to level 0, [112, 224) to level 1, [224, 448) to 2, and so on.

    Args:
        boxes: ``(K, 4)`` xyxy.
        num_levels: pyramid levels available to the RoI heads.
        finest_scale: the scale that maps to level 0.

    Returns:
        ``(K,)`` int64.
    """
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    levels = torch.floor(torch.log2(area.sqrt() / finest_scale + 1e-6))
    return levels.clamp(0, num_levels - 1).long()


def assign_max_iou(iou: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float) -> Tensor:
    """mmdet's ``MaxIoUAssigner`` (low-quality matches on, every best match of a GT kept).

    A box is negative if its best IoU is below ``neg_iou``, positive (matched to its best GT) at
    ``pos_iou`` or more, and ignored in between. Then every GT claims the boxes that reach its own
    best IoU, if that is at least ``min_pos_iou``; when several GTs claim a box, the last one wins
    (mmdet's loop order).

    Args:
        iou: ``(G, N)`` IoU of G ground-truth boxes with N boxes.
        pos_iou: positive threshold.
        neg_iou: negative threshold.
        min_pos_iou: least IoU of a low-quality match.

    Returns:
        ``(N,)`` int64: ``-1`` ignored, ``0`` negative, ``g + 1`` matched to GT ``g``.
    """
    num_gt, n = iou.shape
    if num_gt == 0:
        return torch.zeros(n, dtype=torch.long, device=iou.device)
    assigned = torch.full((n,), -1, dtype=torch.long, device=iou.device)
    if n == 0:
        return assigned
    best, best_gt = iou.max(dim=0)  # (N,)
    assigned[(best >= 0) & (best < neg_iou)] = 0
    pos = best >= pos_iou
    assigned[pos] = best_gt[pos] + 1
    gt_best = iou.max(dim=1).values  # (G,)
    claims = (iou == gt_best[:, None]) & (gt_best[:, None] >= min_pos_iou)  # (G, N)
    ids = torch.arange(1, num_gt + 1, device=iou.device)[:, None]
    last = (claims.long() * ids).max(dim=0).values  # (N,) last claiming GT + 1, or 0
    return torch.where(last > 0, last, assigned)


def _choose(indices: Tensor, count: int) -> Tensor:
    """At most ``count`` of ``indices``, uniformly at random (torch's global CPU generator)."""
    if indices.numel() <= count:
        return indices
    return indices[torch.randperm(indices.numel())[:count].to(indices.device)]


def sample_assigned(assigned: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """mmdet's ``RandomSampler``: up to ``int(num · pos_fraction)`` positives, negatives fill to ``num``.

    Args:
        assigned: ``(N,)`` from :func:`assign_max_iou`.
        num: samples wanted.
        pos_fraction: the largest share of positives.

    Returns:
        indices of the sampled positives and of the sampled negatives.
    """
    pos = _choose(torch.nonzero(assigned > 0).squeeze(1), int(num * pos_fraction))
    neg = _choose(torch.nonzero(assigned == 0).squeeze(1), num - pos.numel())
    return pos, neg


def _paste_weights(lo: Tensor, hi: Tensor, size: int, extent: int) -> Tensor:
    """``(N, extent, size)``: linear-interpolation weights of the image pixels along one axis.

    Image pixel ``p`` (centre ``p + 0.5``) reads the mask at ``(p + 0.5 - lo) / (hi - lo) · size - 0.5``
    (mask pixel centres on the integers), by the hat function ``max(0, 1 - |s - i|)``: bilinear with
    zeros outside the mask, i.e. ``grid_sample(align_corners=False)`` as mmdet pastes.
    """
    centres = torch.arange(extent, device=lo.device, dtype=lo.dtype) + 0.5
    length = (hi - lo).clamp(min=1e-6)
    pos = (centres[None, :] - lo[:, None]) / length[:, None] * size - 0.5  # (N, extent)
    grid = torch.arange(size, device=lo.device, dtype=lo.dtype)
    return (1 - (pos[..., None] - grid).abs()).clamp(min=0)


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Paste ``M×M`` mask probabilities into the image at their boxes, bilinearly.

    The mask covers its box exactly; outside it the values fall to 0 within a mask pixel. As the
    interpolation is separable, each image is ``Wy · mask · Wxᵀ`` with the weights of
    :func:`_paste_weights`; no ``(N, H, W, 2)`` sampling grid is built.

    Args:
        masks: ``(N, M, M)`` (or ``(N, Mh, Mw)``) probabilities.
        boxes: ``(N, 4)`` xyxy in image pixels.
        height: image height H.
        width: image width W.

    Returns:
        ``(N, H, W)`` in ``[0, 1]``; threshold at ``mask_thr`` for binary masks.
    """
    boxes = boxes.to(masks.dtype)
    wy = _paste_weights(boxes[:, 1], boxes[:, 3], masks.shape[1], height)  # (N, H, Mh)
    wx = _paste_weights(boxes[:, 0], boxes[:, 2], masks.shape[2], width)  # (N, W, Mw)
    return torch.bmm(torch.bmm(wy, masks), wx.transpose(1, 2)).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# Network parts


class FPN(nn.Module):
    """Feature pyramid (mmdet ``FPN``, no norm, no activation): lateral 1×1 convs, top-down pathway
    (nearest upsampling to the finer level's size, then add), a ``kernel``×``kernel`` output conv per
    level, and optionally one extra level = max-pool (kernel 1, stride 2) of the coarsest output.

    Convolutions are Xavier-uniform with zero bias (mmdet).

    Args:
        in_channels: widths of the input levels, finest first.
        channels: width of every output level.
        kernel: output conv kernel (odd).
        extra_level: append the pooled level.

    Shapes: L maps (B, in_i, h_i, w_i) → L (+1) maps (B, channels, h_i, w_i).
    """

    def __init__(
        self, in_channels: tuple[int, ...], channels: int, kernel: int = 3, extra_level: bool = True
    ):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel, padding=kernel // 2) for _ in in_channels
        )
        self.extra_level = extra_level
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):  # coarse to fine; sizes need not halve
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        if self.extra_level:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class RPNHead(nn.Module):
    """Region proposal head shared by all levels: 3×3 conv + ReLU, then 1×1 convs to one objectness
    logit (sigmoid) and 4 deltas per anchor. All convs are N(0, 0.01) with zero bias (mmdet).

    Args:
        channels: input (and hidden) width.
        num_anchors: anchors per location A.

    Shapes: L maps (B, C, h_l, w_l) → logits (B, N) and deltas (B, N, 4), N = Σ h_l·w_l·A, in the
    order of :class:`AnchorGenerator`.
    """

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls = nn.Conv2d(channels, num_anchors, 1)
        self.reg = nn.Conv2d(channels, 4 * num_anchors, 1)
        for m in (self.conv, self.cls, self.reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        logits, deltas = [], []
        for x in feats:
            h = F.relu(self.conv(x))
            b = x.shape[0]
            logits.append(self.cls(h).permute(0, 2, 3, 1).reshape(b, -1))  # (B, h·w·A)
            deltas.append(self.reg(h).permute(0, 2, 3, 1).reshape(b, -1, 4))  # (B, h·w·A, 4)
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (aligned) from the pyramid level of each RoI (:func:`roi_levels`; mmdet
    ``SingleRoIExtractor``).

    Args:
        strides: stride of each level.
        output_size: pooled side.
        finest_scale: see :func:`roi_levels`.
        sampling_ratio: samples per bin, 0 = adaptive.

    Shapes: L maps (B, C, h_l, w_l), rois (K, 5) = (batch index, x1, y1, x2, y2) → (K, C, s, s).
    """

    def __init__(
        self, strides: tuple[int, ...], output_size: int, finest_scale: float = 56, sampling_ratio: int = 0
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.output_size = output_size
        self.finest_scale = finest_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        s = self.output_size
        levels = roi_levels(rois[:, 1:], len(self.strides), self.finest_scale)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], s, s))
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(x, rois[idx], s, 1.0 / stride, self.sampling_ratio, aligned=True)
        return out

    def extra_repr(self) -> str:
        return f"strides={self.strides}, output_size={self.output_size}, finest_scale={self.finest_scale}"


class BoxHead(nn.Module):
    """mmdet ``Shared2FCBBoxHead``: flatten → fc → ReLU → fc → ReLU → class logits (K + 1, background
    last) and class-specific deltas (4K).

    Init (mmdet): shared fcs Xavier-uniform, classifier N(0, 0.01), regressor N(0, 0.001), zero biases.

    Args:
        in_channels: RoI feature width C.
        roi_size: pooled side s.
        fc: hidden width.
        num_classes: K.

    Shapes: (R, C, s, s) → (R, K + 1), (R, 4K).
    """

    def __init__(self, in_channels: int, roi_size: int, fc: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * roi_size * roi_size, fc)
        self.fc2 = nn.Linear(fc, fc)
        self.cls = nn.Linear(fc, num_classes + 1)
        self.reg = nn.Linear(fc, 4 * num_classes)
        for m in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        for m in (self.fc1, self.fc2, self.cls, self.reg):
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls(x), self.reg(x)


class MaskHead(nn.Module):
    """mmdet ``FCNMaskHead``: ``convs`` × (3×3 conv + ReLU), 2×2 stride-2 transposed conv + ReLU, 1×1
    conv to one mask logit map per class. Every conv is Kaiming-normal (fan_out, ReLU), zero bias.

    Args:
        in_channels: RoI feature width C.
        convs: number of 3×3 convs.
        channels: their width (and the transposed conv's).
        num_classes: K.

    Shapes: (P, C, s, s) → (P, K, 2s, 2s).
    """

    def __init__(self, in_channels: int, convs: int, channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(channels if convs else in_channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(F.relu(self.upsample(self.convs(x))))


def insert_res4_attention(backbone: nn.Module, attention: nn.Module) -> None:
    """Put `attention` in the backbone's res4 stage (`layer3`): right before its last residual block
    when layer3 is an nn.Sequential (ResNet: the placement Wang et al. 2018 used for Mask R-CNN: one
    non-local block before the last block of res4), or right after it when layer3 is a single block
    (the small CPU backbone).

    The ResNet blocks keep their parameter names (``layer3.0`` … ``layer3.5``; the block is
    ``layer3.res4_attention``), so a ResNet checkpoint still loads by name; a single-block ``layer3``
    becomes ``layer3.block`` + ``layer3.res4_attention``.

    Args:
        backbone: has ``layer3`` and ``out_channels``.
        attention: maps (B, C3, H, W) to the same shape, C3 = ``backbone.out_channels[2]``.
    """
    layer3 = getattr(backbone, "layer3", None)
    if layer3 is None:
        raise ValueError(f"insert_res4_attention: {type(backbone).__name__} has no layer3")
    channels = getattr(attention, "channels", None)
    widths = getattr(backbone, "out_channels", None)
    if channels is not None and widths is not None and channels != widths[2]:
        raise ValueError(f"insert_res4_attention: attention has {channels} channels, res4 has {widths[2]}")
    if isinstance(layer3, nn.Sequential) and len(layer3) > 0:
        named = list(layer3.named_children())
        parts = OrderedDict(named[:-1] + [("res4_attention", attention), named[-1]])
    else:
        parts = OrderedDict([("block", layer3), ("res4_attention", attention)])
    backbone.layer3 = nn.Sequential(parts)


# ---------------------------------------------------------------------------------------------
# The detector


class _Target(NamedTuple):
    boxes: Tensor  # (G, 4) float
    labels: Tensor  # (G,) int64
    masks: Tensor  # (G, H, W) any dtype


class _RoISample(NamedTuple):
    rois: Tensor  # (R, 5) batch index + box; per image its positives, then its negatives
    labels: Tensor  # (R,) class, K for background
    pos: Tensor  # (P,) indices of the positive RoIs in `rois`
    box_targets: Tensor  # (P, 4) encoded deltas of the positives
    mask_targets: Tensor  # (P, M, M) binary float masks of the positives


class MaskRCNN(nn.Module):
    """Mask R-CNN with FPN (He et al. 2017) on any backbone that returns a list of stage features.

    Args:
        backbone: returns a list of feature maps (indexed by ``settings.in_indices``) and has
            ``out_channels``; with ``res4_attention`` it needs ``layer3``. Load its pretrained
            weights *before* constructing the model: inserting the attention may rename layers.
        num_classes: K object classes (no background).
        settings: hyper-parameters (mmdet's defaults if None).
        res4_attention: an attention block put into the backbone's res4 stage by
            :func:`insert_res4_attention`.
        name: ``model.name``.

    The attention block belongs to the backbone (``param_groups()`` puts it in ``"backbone"``).
    ``settings`` (with ``mask_thr``) and ``loss_names`` are attributes; see the module docstring for
    the forward contract.
    """

    task: ClassVar[str] = "instances"
    #: the keys of the training losses (the engine logs each and optimises their sum)
    loss_names: ClassVar[tuple[str, ...]] = LOSS_KEYS

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        settings: MaskRCNNSettings | None = None,
        *,
        res4_attention: nn.Module | None = None,
        name: str = "mask_rcnn",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MaskRCNN needs at least one class, got {num_classes}")
        st = settings if settings is not None else MaskRCNNSettings()
        widths = tuple(backbone.out_channels)
        if max(st.in_indices) >= len(widths) or min(st.in_indices) < 0:
            raise ValueError(f"MaskRCNN: in_indices {st.in_indices} out of range for {len(widths)} levels")
        if res4_attention is not None:
            insert_res4_attention(backbone, res4_attention)
        self.settings = st
        self.num_classes = num_classes
        self.name = name
        self.backbone = backbone
        self.neck = FPN(
            tuple(widths[i] for i in st.in_indices), st.fpn_channels, st.fpn_kernel, st.extra_level
        )
        rpn_strides = st.strides + ((2 * st.strides[-1],) if st.extra_level else ())
        self.anchors = AnchorGenerator(rpn_strides, st.anchor_scale, st.anchor_ratios)
        self.rpn = RPNHead(st.fpn_channels, self.anchors.num_anchors)
        self.box_roi = MultiLevelRoIAlign(st.strides, st.box_roi_size, st.finest_scale, st.roi_sampling_ratio)
        self.mask_roi = MultiLevelRoIAlign(
            st.strides, st.mask_size // 2, st.finest_scale, st.roi_sampling_ratio
        )
        self.box_head = BoxHead(st.fpn_channels, st.box_roi_size, st.box_fc, num_classes)
        self.mask_head = MaskHead(st.fpn_channels, st.mask_convs, st.mask_channels, num_classes)
        self.rpn_coder = DeltaXYWHCoder()
        self.box_coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
        for module in self._frozen():
            module.requires_grad_(False)

    def _frozen(self) -> list[nn.Module]:
        """The backbone parts that ``frozen_stages`` freezes: its ``stem``, then ``layer1``…"""
        n = self.settings.frozen_stages
        names = ["stem", *(f"layer{i}" for i in range(1, n + 1))] if n >= 0 else []
        missing = [name for name in names if not isinstance(getattr(self.backbone, name, None), nn.Module)]
        if missing:
            raise ValueError(
                f"MaskRCNN: frozen_stages={n} needs the backbone's {', '.join(missing)}, which "
                f"{type(self.backbone).__name__} lacks; set model.mask_rcnn.frozen_stages=-1"
            )
        return [getattr(self.backbone, name) for name in names]

    def train(self, mode: bool = True) -> MaskRCNN:
        """Train mode, except the frozen stages and (``norm_eval``) the backbone's BatchNorms."""
        super().train(mode)
        if mode:
            for module in self._frozen():
                module.eval()
            if self.settings.norm_eval:
                for m in self.backbone.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    # ------------------------------------------------------------------ public
    def attention_modules(self) -> list[AttentionModule]:
        """Every attention block in the model (set ``eval_band`` on these for band truncation)."""
        return [m for m in self.modules() if isinstance(m, AttentionModule)]

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters by part: ``[{"name": "backbone", ...}, {"name": "detector", ...}]``."""
        own = {id(p) for p in self.backbone.parameters()}
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {
                "name": "detector",
                "params": [p for p in self.parameters() if p.requires_grad and id(p) not in own],
            },
        ]

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (train mode, ``targets`` required) or detections (eval mode); see the module docstring.

        Args:
            images: (B, 3, H, W) normalised images.
            targets: one dict per image with ``"boxes"``, ``"labels"``, ``"masks"``.
        """
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                "MaskRCNN expects float images of shape (B, 3, H, W), "
                f"got {tuple(images.shape)} {images.dtype}"
            )
        image_size = (images.shape[-2], images.shape[-1])
        feats = self._features(images)  # L (+1) × (B, C, h_l, w_l)
        logits, deltas = self.rpn(feats)  # (B, N), (B, N, 4)
        sizes = [tuple(x.shape[-2:]) for x in feats]
        anchors = torch.cat([self.anchors.grid_anchors(i, s, images.device) for i, s in enumerate(sizes)])
        anchors = anchors.to(images.dtype)  # (N, 4)
        counts = [s[0] * s[1] * self.anchors.num_anchors for s in sizes]
        roi_feats = feats[: len(self.settings.strides)]
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError("MaskRCNN in train mode needs one target dict per image")
            gts = [self._target(t, image_size, images) for t in targets]
            valid = torch.cat(
                [self.anchors.valid_flags(i, s, image_size, images.device) for i, s in enumerate(sizes)]
            )
            losses = dict(zip(LOSS_KEYS[:2], self._rpn_losses(logits, deltas, anchors, valid, gts)))
            proposals = self._proposals(logits, deltas, anchors, counts, image_size, train=True)
            sample = self._sample_rois(proposals, gts)
            losses.update(zip(LOSS_KEYS[2:], self._roi_losses(roi_feats, sample)))
            return losses
        proposals = self._proposals(logits, deltas, anchors, counts, image_size, train=False)
        return self._detect(roi_feats, proposals, image_size)

    # ------------------------------------------------------------------ features
    def _features(self, images: Tensor) -> list[Tensor]:
        """Pad to the coarsest stride, run the backbone and the FPN; check the strides."""
        st = self.settings
        h, w = images.shape[-2:]
        div = st.strides[-1]
        ph, pw = -(-h // div) * div, -(-w // div) * div
        if (ph, pw) != (h, w):
            images = F.pad(images, (0, pw - w, 0, ph - h))
        stages = self.backbone(images)
        used = [stages[i] for i in st.in_indices]
        for x, stride in zip(used, st.strides):
            if tuple(x.shape[-2:]) != (ph // stride, pw // stride):
                raise ValueError(
                    f"MaskRCNN: a {ph}×{pw} input gives a {tuple(x.shape[-2:])} map where settings.strides "
                    f"{st.strides} expect stride {stride}; fix strides or in_indices"
                )
        return self.neck(used)

    def _target(self, target: dict[str, Tensor], image_size: tuple[int, int], like: Tensor) -> _Target:
        """One image's target on the model's device, checked; boxes without area are dropped."""
        boxes = target["boxes"].to(device=like.device, dtype=like.dtype).reshape(-1, 4)
        labels = target["labels"].to(device=like.device, dtype=torch.long).reshape(-1)
        masks = target["masks"].to(device=like.device)
        if masks.numel() == 0:
            masks = masks.reshape(0, *image_size)
        if masks.shape != (boxes.shape[0], *image_size) or labels.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"MaskRCNN target: boxes {tuple(boxes.shape)}, labels {tuple(labels.shape)} and masks "
                f"{tuple(masks.shape)} disagree (image {image_size})"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"MaskRCNN target: labels must lie in [0, {self.num_classes})")
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not bool(keep.all()):
            log.debug("MaskRCNN: dropping %d GT boxes without area", int((~keep).sum()))
            return _Target(boxes[keep], labels[keep], masks[keep])
        return _Target(boxes, labels, masks)

    # ------------------------------------------------------------------ RPN
    def _rpn_losses(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, valid: Tensor, gts: list[_Target]
    ) -> tuple[Tensor, Tensor]:
        """Sigmoid BCE over the sampled anchors and L1 over the positives' deltas, both divided by the
        number of sampled anchors in the batch (mmdet counts at least one positive and one negative
        per image)."""
        st = self.settings
        n = anchors.shape[0]
        valid_idx = torch.nonzero(valid).squeeze(1)
        valid_anchors = anchors[valid_idx]
        pos_flat, neg_flat, pos_anchor, pos_gt = [], [], [], []
        num_samples = 0
        with torch.no_grad():
            for b, gt in enumerate(gts):
                assigned = assign_max_iou(
                    box_iou(gt.boxes, valid_anchors), st.rpn_pos_iou, st.rpn_neg_iou, st.rpn_min_pos_iou
                )
                pos, neg = sample_assigned(assigned, st.rpn_num, st.rpn_pos_fraction)
                num_samples += max(pos.numel(), 1) + max(neg.numel(), 1)
                pos_flat.append(valid_idx[pos] + b * n)
                neg_flat.append(valid_idx[neg] + b * n)
                pos_anchor.append(valid_anchors[pos])
                pos_gt.append(gt.boxes[assigned[pos] - 1])
            pos_flat_t = torch.cat(pos_flat)
            sampled = torch.cat([pos_flat_t, *neg_flat])
            labels = torch.zeros(sampled.shape[0], dtype=logits.dtype, device=logits.device)
            labels[: pos_flat_t.numel()] = 1
            targets = self.rpn_coder.encode(torch.cat(pos_anchor), torch.cat(pos_gt))  # (P, 4)
        loss_cls = F.binary_cross_entropy_with_logits(logits.reshape(-1)[sampled], labels, reduction="sum")
        if pos_flat_t.numel():
            pred = deltas.reshape(-1, 4)[pos_flat_t]
            loss_bbox = F.l1_loss(pred, targets, reduction="sum")
        else:
            loss_bbox = deltas.sum() * 0.0
        return st.rpn_cls_weight * loss_cls / num_samples, st.rpn_bbox_weight * loss_bbox / num_samples

    @torch.no_grad()
    def _proposals(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        counts: list[int],
        image_size: tuple[int, int],
        train: bool,
    ) -> list[Tensor]:
        """Per image ``(P, 4)`` proposals (detached): per-level top-k anchors by objectness, decoded and
        clipped, boxes of side ``<= rpn_min_size`` dropped, NMS within each level, the best kept."""
        st = self.settings
        pre = st.rpn_pre_nms_train if train else st.rpn_pre_nms_test
        post = st.rpn_post_nms_train if train else st.rpn_post_nms_test
        scores = logits.float().sigmoid()  # (B, N); float32 under autocast too
        deltas = deltas.float()
        picks, level_ids = [], []
        start = 0
        for level, count in enumerate(counts):
            k = min(pre, count)
            picks.append(scores[:, start : start + count].topk(k, dim=1).indices + start)  # (B, k)
            level_ids.append(torch.full((k,), level, dtype=torch.long, device=logits.device))
            start += count
        idx = torch.cat(picks, dim=1)  # (B, Kt)
        levels = torch.cat(level_ids)  # (Kt,)
        top_scores = scores.gather(1, idx)
        top_deltas = deltas.gather(1, idx[..., None].expand(-1, -1, 4))
        boxes = self.rpn_coder.decode(anchors[idx].float(), top_deltas, max_shape=image_size)  # (B, Kt, 4)
        out = []
        for b in range(boxes.shape[0]):
            wh = boxes[b, :, 2:] - boxes[b, :, :2]
            keep = torch.nonzero((wh > st.rpn_min_size).all(dim=1)).squeeze(1)
            bx, sc, lv = boxes[b, keep], top_scores[b, keep], levels[keep]
            out.append(bx[batched_nms(bx, sc, lv, st.rpn_nms_iou)[:post]])
        return out

    # ------------------------------------------------------------------ RoI heads, training
    @torch.no_grad()
    def _sample_rois(self, proposals: list[Tensor], gts: list[_Target]) -> _RoISample:
        """Per image: GT boxes join the proposals, max-IoU assignment at ``roi_pos_iou``, random
        sampling; the positives' box deltas and ``mask_size``² mask targets (RoIAlign of the GT mask,
        aligned, adaptive sampling, then ``>= 0.5``, as mmdet crops masks)."""
        st = self.settings
        m = st.mask_size
        rois, labels, pos_idx, box_targets, mask_targets = [], [], [], [], []
        offset = 0
        for b, (props, gt) in enumerate(zip(proposals, gts)):
            boxes = torch.cat([gt.boxes, props])
            thr = st.roi_pos_iou
            assigned = assign_max_iou(box_iou(gt.boxes, boxes), thr, thr, thr)
            pos, neg = sample_assigned(assigned, st.roi_num, st.roi_pos_fraction)
            gt_idx = assigned[pos] - 1
            pos_boxes = boxes[pos]
            rois.append(F.pad(torch.cat([pos_boxes, boxes[neg]]), (1, 0), value=float(b)))
            labels.append(torch.cat([gt.labels[gt_idx], gt_idx.new_full((neg.numel(),), self.num_classes)]))
            pos_idx.append(torch.arange(offset, offset + pos.numel(), device=pos.device))
            offset += pos.numel() + neg.numel()
            box_targets.append(self.box_coder.encode(pos_boxes, gt.boxes[gt_idx]))
            if pos.numel():
                height, width = gt.masks.shape[-2:]
                clipped = torch.stack(
                    [
                        pos_boxes[:, 0].clamp(0, width),
                        pos_boxes[:, 1].clamp(0, height),
                        pos_boxes[:, 2].clamp(0, width),
                        pos_boxes[:, 3].clamp(0, height),
                    ],
                    dim=1,
                )
                crop_rois = torch.cat([gt_idx[:, None].to(clipped.dtype), clipped], dim=1)
                crops = roi_align(gt.masks[:, None].to(clipped.dtype), crop_rois, m, 1.0, 0, aligned=True)
                mask_targets.append((crops[:, 0] >= 0.5).to(clipped.dtype))  # (p, M, M)
            else:
                mask_targets.append(pos_boxes.new_zeros((0, m, m)))
        return _RoISample(
            torch.cat(rois),
            torch.cat(labels),
            torch.cat(pos_idx),
            torch.cat(box_targets),
            torch.cat(mask_targets),
        )

    def _roi_losses(self, feats: list[Tensor], sample: _RoISample) -> tuple[Tensor, Tensor, Tensor]:
        """Softmax CE over the sampled RoIs; L1 on the positives' deltas of their GT class, divided by
        the number of sampled RoIs; per-pixel BCE of the GT class's mask, mean over the positives."""
        st = self.settings
        num_rois = max(sample.rois.shape[0], 1)
        cls_logits, reg = self.box_head(self.box_roi(feats, sample.rois))  # (R, K + 1), (R, 4K)
        loss_cls = F.cross_entropy(cls_logits, sample.labels, reduction="sum") / num_rois
        pos_labels = sample.labels[sample.pos]
        mask_logits = self.mask_head(self.mask_roi(feats, sample.rois[sample.pos]))  # (P, K, M, M)
        if sample.pos.numel():
            pred = reg.view(reg.shape[0], self.num_classes, 4)[sample.pos, pos_labels]  # (P, 4)
            loss_bbox = F.l1_loss(pred, sample.box_targets, reduction="sum") / num_rois
            pos_masks = mask_logits[torch.arange(pos_labels.numel(), device=pos_labels.device), pos_labels]
            loss_mask = F.binary_cross_entropy_with_logits(pos_masks, sample.mask_targets)
        else:  # keep every head in the graph
            loss_bbox = reg.sum() * 0.0
            loss_mask = mask_logits.sum() * 0.0
        return st.cls_weight * loss_cls, st.bbox_weight * loss_bbox, st.mask_weight * loss_mask

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _detect(
        self, feats: list[Tensor], proposals: list[Tensor], image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        """Boxes: softmax scores, class-specific decoded boxes clipped to the image, ``score > score_thr``,
        NMS per class, the ``max_per_img`` best. Masks: the mask head on the kept boxes, sigmoid of the
        label's channel, pasted into the image."""
        st = self.settings
        k = self.num_classes
        height, width = image_size
        rois = torch.cat([F.pad(p, (1, 0), value=float(b)) for b, p in enumerate(proposals)])
        cls_logits, reg = self.box_head(self.box_roi(feats, rois))
        cls_logits, reg = cls_logits.float(), reg.float()
        scores = F.softmax(cls_logits, dim=1)[:, :k]  # (R, K), background dropped
        deltas = reg.view(reg.shape[0], k, 4)
        boxes = self.box_coder.decode(rois[:, None, 1:], deltas, max_shape=image_size)  # (R, K, 4)
        dets = []
        start = 0
        for p in proposals:
            sc, bx = scores[start : start + p.shape[0]], boxes[start : start + p.shape[0]]
            start += p.shape[0]
            roi_idx, label = torch.nonzero(sc > st.score_thr, as_tuple=True)
            det_boxes, det_scores = bx[roi_idx, label], sc[roi_idx, label]
            keep = batched_nms(det_boxes, det_scores, label, st.nms_iou)[: st.max_per_img]
            dets.append((det_boxes[keep], det_scores[keep], label[keep]))
        det_rois = torch.cat([F.pad(d[0], (1, 0), value=float(b)) for b, d in enumerate(dets)])
        mask_logits = self.mask_head(self.mask_roi(feats, det_rois))  # (D, K, M, M)
        all_labels = torch.cat([d[2] for d in dets])
        rows = torch.arange(all_labels.numel(), device=all_labels.device)
        probs = mask_logits[rows, all_labels].float().sigmoid()  # (D, M, M)
        out = []
        start = 0
        for det_boxes, det_scores, det_labels in dets:
            n = det_boxes.shape[0]
            masks = paste_masks(probs[start : start + n], det_boxes, height, width)
            start += n
            out.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels, "masks": masks})
        return out
