"""Detection ops in plain torch: box IoU, greedy NMS (single and per class) and RoIAlign.

These follow the public semantics of torchvision's ``box_iou``, ``nms``, ``batched_nms`` and
``roi_align`` (Detectron2's ``ROIAlign``), written with ordinary tensor ops so that a future
Mask R-CNN needs no compiled extension. Conventions:

* **Boxes** are ``(x1, y1, x2, y2)`` in continuous coordinates with ``x1 <= x2`` and ``y1 <= y2``;
  the area is ``(x2 - x1)·(y2 - y1)`` (no ``+1``). Boxes that only share an edge have IoU 0; a pair
  whose union has zero area (two degenerate boxes) has IoU 0 by definition here.
* **NMS** is the greedy sweep: boxes are ranked by decreasing score, ties broken by the lower index
  first (a stable sort), and a box is dropped when its IoU with an already kept box is strictly
  greater than ``iou_threshold``. So ``iou_threshold = 1`` keeps every box, and ``0`` drops any box
  that overlaps a kept one with positive area (touching boxes survive). The result is the kept
  indices in rank order.
* **RoIAlign** takes ``rois`` ``(K, 5)`` = ``(batch index, x1, y1, x2, y2)`` in image coordinates
  and a map ``(B, C, H, W)``. Feature value ``features[b, c, i, j]`` sits at the continuous point
  ``(y, x) = (i, j)``. A RoI edge ``u`` maps to ``u·spatial_scale - offset`` with:

  - ``aligned=True``: ``offset = 0.5``. Image pixel ``j`` spans ``[j, j + 1)`` and its centre is
    ``j + 0.5``; the shift puts feature pixel centres on the integers. RoI sizes are used as they
    are, so an empty or inverted RoI is allowed.
  - ``aligned=False``: ``offset = 0`` (the original Mask R-CNN), and the RoI height and width are
    clamped to at least 1 feature pixel.

  The RoI is cut into ``ph × pw`` bins of size ``(h / ph, w / pw)``. Each bin averages a regular
  ``gh × gw`` grid of samples at ``(i + 0.5) / g`` of the bin along each axis, where
  ``g = sampling_ratio`` if it is positive, else ``ceil(roi_size / output_size)`` separately for
  height and width (adaptive). A bin with no samples (adaptive grid of an empty or inverted RoI)
  is 0.
* **Boundary rules** for one sample ``(y, x)``: if ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``
  it contributes 0 (it still counts in the bin's mean). Otherwise a negative coordinate is clamped
  to 0, and a sample whose ``floor`` reaches the last row (column) is snapped to it. The value is
  then bilinear in the four neighbouring pixels.

As in torchvision, the RoI geometry is computed in the dtype of ``features``, and only
``features`` receives a gradient (the sampling positions are not differentiated).

Implementation. Bilinear sampling factorises into a row weight times a column weight, and so do
the boundary rules and the mean over a ``gh × gw`` grid. Per RoI, :func:`roi_align` builds the
row weights ``(ph, Ly)`` and column weights ``(pw, Lx)`` over the window of rows and columns that
its samples touch, gathers those ``Ly × Lx`` windows from a channels-last copy of the map
(``index_select``) and contracts them with two batched matmuls. RoIs are sorted by window area
and processed in chunks of bounded memory; there is no Python loop over RoIs, and autograd
differentiates the gather and the matmuls. :func:`roi_align_reference` is the literal per-sample
loop, slow, for tests.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["batched_nms", "box_iou", "nms", "roi_align", "roi_align_reference"]

# Work sizes, in elements: small enough to stay in cache (and to reuse allocator blocks). An IoU
# block stays under torch's intra-op grain size (32768), so its ops run on the calling thread with
# no hand-off to the thread pool (which costs a scheduler tick per op on a busy machine).
_NMS_CHUNK = 1 << 15  # IoU entries per block of rows
_ROI_CHUNK = 1 << 19  # gathered feature elements per RoIAlign chunk


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``(x2 - x1)·(y2 - y1)`` of boxes ``(N, 4)``, shape ``(N,)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")


def _columns(boxes: Tensor) -> Tensor:
    """``(5, N)``: the rows x1, y1, x2, y2 and the area, each contiguous, in a floating dtype."""
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.get_default_dtype())
    return torch.cat([boxes.t(), box_area(boxes)[None]]).contiguous()


def _iou_block(ca: Tensor, cb: Tensor, out: Tensor, tmp: Tensor, tmp2: Tensor) -> Tensor:
    """IoU of the boxes ``ca`` ``(5, R)`` against ``cb`` ``(5, M)`` (see :func:`_columns`) into ``out``.

    ``inter = clamp(min(x2) - max(x1), 0) · clamp(min(y2) - max(y1), 0)``,
    ``union = (area_a + area_b) - inter``, ``iou = inter / union`` and 0 where ``union <= 0``;
    computed in place in the ``(R, M)`` buffers ``out``, ``tmp`` and ``tmp2``.
    """
    x1a, y1a, x2a, y2a, area_a = ca[:, :, None]
    x1b, y1b, x2b, y2b, area_b = cb[:, None, :]
    torch.minimum(x2a, x2b, out=out)
    out.sub_(torch.maximum(x1a, x1b, out=tmp)).clamp_(min=0)
    torch.minimum(y2a, y2b, out=tmp)
    tmp.sub_(torch.maximum(y1a, y1b, out=tmp2)).clamp_(min=0)
    out.mul_(tmp)
    torch.add(area_a, area_b, out=tmp).sub_(out)
    out.div_(tmp)
    return out.masked_fill_(tmp <= 0, 0.0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union of two sets of boxes.

    Args:
        a: boxes ``(N, 4)`` as ``(x1, y1, x2, y2)``.
        b: boxes ``(M, 4)`` as ``(x1, y1, x2, y2)``, on the device of ``a``.

    Returns:
        ``(N, M)``: ``inter / (area_a + area_b - inter)``, and 0 where the union is empty. Integer
        boxes give the default floating dtype.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    ca, cb = _columns(a), _columns(b)
    dtype = torch.promote_types(ca.dtype, cb.dtype)
    ca, cb = ca.to(dtype), cb.to(dtype)
    if torch.is_grad_enabled() and (ca.requires_grad or cb.requires_grad):
        # Differentiable path: the same arithmetic, out of place.
        x1a, y1a, x2a, y2a, area_a = ca[:, :, None]
        x1b, y1b, x2b, y2b, area_b = cb[:, None, :]
        inter = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp(min=0) * (
            torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)
        ).clamp(min=0)
        union = (area_a + area_b) - inter
        return torch.where(union > 0, inter / union.where(union > 0, 1.0), 0.0)
    n, m = ca.shape[1], cb.shape[1]
    out = ca.new_empty((n, m))
    if n == 0 or m == 0:
        return out
    rows = max(1, _NMS_CHUNK // max(m, 1))
    tmp = ca.new_empty((2, min(rows, n) * m))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        size = (r1 - r0) * m
        _iou_block(ca[:, r0:r1], cb, out[r0:r1], tmp[0, :size].view(-1, m), tmp[1, :size].view(-1, m))
    return out


def _greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None) -> Tensor:
    """Greedy NMS; with ``idxs``, only boxes of the same class can suppress each other."""
    _check_boxes(boxes)
    n = boxes.shape[0]
    if scores.shape != (n,) or (idxs is not None and idxs.shape != (n,)):
        raise ValueError(f"scores (and idxs) must be ({n},), got {tuple(scores.shape)}")
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    cols = _columns(boxes.detach()[order])
    cls = idxs[order] if idxs is not None else None
    rows = max(1, _NMS_CHUNK // n)
    buf = cols.new_empty((3, min(rows, n) * n))
    # removed[j]: box j (in rank order) overlaps a kept box. The sweep takes the next `rows` boxes
    # not yet removed, computes their IoU with every box from the first of them on (only those can
    # still be affected), and then visits them in order. Flags set on earlier boxes are never read.
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    pos = 0
    while pos < n:
        cand = np.flatnonzero(~removed[pos:])[:rows] + pos
        if cand.size == 0:
            break
        c0 = int(cand[0])
        size = cand.size * (n - c0)
        out, tmp, tmp2 = (buf[i, :size].view(cand.size, n - c0) for i in range(3))
        rows_t = torch.from_numpy(cand).to(cols.device)
        _iou_block(cols[:, rows_t], cols[:, c0:], out, tmp, tmp2)
        hit = out > iou_threshold
        if cls is not None:
            hit &= cls[rows_t, None] == cls[None, c0:]
        hit_np = hit.cpu().numpy()
        for r, i in enumerate(cand.tolist()):
            if removed[i]:
                continue
            keep.append(i)
            removed[c0:] |= hit_np[r]
        pos = int(cand[-1]) + 1
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Boxes are visited by decreasing score, ties broken by the lower index first; a box is dropped
    when its IoU with an already kept box is strictly greater than ``iou_threshold``. The IoU is
    computed in blocks of rows, only for boxes that are still candidates, against the boxes ranked
    below them (memory ``O(N)``, work at most ``N²``); the sequential sweep runs on the host.

    Args:
        boxes: ``(N, 4)`` as ``(x1, y1, x2, y2)``.
        scores: ``(N,)``.
        iou_threshold: boxes overlapping a kept box with IoU above this are discarded.

    Returns:
        int64 indices into ``boxes`` of the kept boxes, by decreasing score (empty for ``N = 0``).
    """
    return _greedy_nms(boxes, scores, iou_threshold, None)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS: boxes with different ``idxs`` never suppress each other.

    Neither the coordinate-offset trick nor a loop over classes: the suppression test of
    :func:`nms` is masked by ``idxs[i] == idxs[j]``. This is exact (offsets of size ``class ×
    extent`` would round the float IoU differently near the threshold) and runs one sweep over
    all boxes together.

    Args:
        boxes: ``(N, 4)`` as ``(x1, y1, x2, y2)``.
        scores: ``(N,)``.
        idxs: ``(N,)`` integer class (or level, or image) of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        int64 indices into ``boxes`` of the kept boxes, by decreasing score, ties by lower index.
    """
    return _greedy_nms(boxes, scores, iou_threshold, idxs)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    ph, pw = (size, size) if isinstance(size, int) else size
    if ph < 1 or pw < 1:
        raise ValueError(f"output_size must be positive, got {size}")
    return int(ph), int(pw)


def _check_roi_args(features: Tensor, rois: Tensor) -> None:
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, H, W), got {tuple(features.shape)}")
    if rois.ndim != 2 or rois.shape[-1] != 5:
        raise ValueError(f"rois must be (K, 5) = (batch index, x1, y1, x2, y2), got {tuple(rois.shape)}")


def _axis_weights(
    start: Tensor, length: Tensor, bins: int, sampling_ratio: int, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-RoI interpolation weights along one axis.

    Args:
        start: ``(K,)`` RoI start along the axis in feature coordinates (after scale and offset).
        length: ``(K,)`` RoI extent along the axis (already clamped for ``aligned=False``).
        bins: output bins along the axis.
        sampling_ratio: samples per bin, or adaptive if ``<= 0``.
        size: feature map extent along the axis (H or W).

    Returns:
        ``weights`` ``(K, bins, L)`` over the window of rows ``lo[k] + 0..L-1`` (the mean over the
        grid folded in), ``lo`` ``(K,)`` and ``span`` ``(K,)``, the window length each RoI needs.
    """
    k = start.shape[0]
    bin_size = length / bins
    if sampling_ratio > 0:
        grid = torch.full((k,), sampling_ratio, dtype=torch.long, device=start.device)
    else:
        grid = torch.ceil(length / bins).long().clamp(min=0)
    g_max = max(int(grid.max()), 1)
    p = torch.arange(bins, device=start.device, dtype=start.dtype)
    s = torch.arange(g_max, device=start.device)
    gridf = grid.to(start.dtype)
    # Same association as the reference: start + p·bin + ((s + 0.5)·bin) / grid.
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]) + (
        (s.to(start.dtype)[None, None, :] + 0.5) * bin_size[:, None, None]
    ) / gridf.clamp(min=1)[:, None, None]
    valid = (s[None, None, :] < grid[:, None, None]) & (pos >= -1) & (pos <= size)
    pos = pos.clamp(min=0)
    low = torch.floor(pos).long()
    last = low >= size - 1
    low = torch.where(last, size - 1, low)
    high = torch.where(last, size - 1, low + 1)
    frac = torch.where(last, torch.zeros_like(pos), pos - low.to(pos.dtype))
    big = torch.iinfo(torch.long).max
    lo = torch.where(valid, low, big).amin(dim=(1, 2))
    hi = torch.where(valid, high, -1).amax(dim=(1, 2))
    empty = hi < 0
    lo = torch.where(empty, 0, lo)
    span = torch.where(empty, 1, hi - lo + 1)
    width = int(span.max())
    norm = valid.to(pos.dtype) / gridf.clamp(min=1)[:, None, None]  # the bin mean, folded in
    idx_low = (low - lo[:, None, None]).clamp(0, width - 1)
    idx_high = (high - lo[:, None, None]).clamp(0, width - 1)
    weights = pos.new_zeros(k, bins, width)
    weights.scatter_add_(2, idx_low, (1 - frac) * norm)
    weights.scatter_add_(2, idx_high, frac * norm)
    return weights, lo, span


def _roi_geometry(rois: Tensor, spatial_scale: float, aligned: bool) -> tuple[Tensor, ...]:
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    w = rois[:, 3] * spatial_scale - offset - x0
    h = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        w = w.clamp(min=1.0)
        h = h.clamp(min=1.0)
    return y0, x0, h, w


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign (torchvision / Detectron2 semantics, see the module docstring), vectorised.

    Args:
        features: ``(B, C, H, W)`` feature map.
        rois: ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` in image coordinates.
        output_size: ``(ph, pw)`` bins per RoI (an int means square).
        spatial_scale: feature-map size over image size (e.g. ``1/16`` at stride 16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` is adaptive,
            ``ceil(roi_size / output_size)`` per axis and per RoI.
        aligned: subtract half a pixel after scaling (``True``) or use the legacy geometry with
            RoI sizes clamped to at least one pixel (``False``).

    Returns:
        ``(K, C, ph, pw)`` in the dtype of ``features``, differentiable w.r.t. ``features``.
    """
    _check_roi_args(features, rois)
    ph, pw = _pair(output_size)
    n_img, chans, height, width = features.shape
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros((0, chans, ph, pw))
    geo = rois.detach().to(device=features.device, dtype=features.dtype)
    batch = rois[:, 0].detach().to(device=features.device).long()
    if bool(((batch < 0) | (batch >= n_img)).any()):
        raise ValueError(f"RoI batch indices must lie in [0, {n_img})")
    with torch.no_grad():
        y0, x0, h, w = _roi_geometry(geo, spatial_scale, aligned)
        wy, lo_y, span_y = _axis_weights(y0, h, ph, sampling_ratio, height)
        wx, lo_x, span_x = _axis_weights(x0, w, pw, sampling_ratio, width)
        # Chunks of RoIs sorted by window area; each chunk pads to its own largest window.
        order = torch.argsort(span_y * span_x)
    flat = features.permute(0, 2, 3, 1).reshape(n_img * height * width, chans)
    out = features.new_empty((k, ph, pw, chans))
    start = 0
    while start < k:
        # Cost of taking the next n RoIs: n times the padded window, times the channels.
        rest = order[start:]
        count = torch.arange(1, k - start + 1, device=rest.device)
        cost = count * span_y[rest].cummax(0).values * span_x[rest].cummax(0).values * chans
        n_take = max(1, int((cost <= _ROI_CHUNK).sum()))
        sel = order[start : start + n_take]
        ly = int(span_y[sel].max())
        lx = int(span_x[sel].max())
        rows = (lo_y[sel, None] + torch.arange(ly, device=sel.device)).clamp(max=height - 1)
        cols = (lo_x[sel, None] + torch.arange(lx, device=sel.device)).clamp(max=width - 1)
        index = (batch[sel, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        win = flat.index_select(0, index.reshape(-1)).view(n_take, ly, lx * chans)
        t = torch.bmm(wy[sel, :, :ly], win).view(n_take, ph, lx, chans)
        out[sel] = torch.matmul(wx[sel, None, :, :lx], t)  # (n, ph, pw, C)
        start += n_take
    return out.permute(0, 3, 1, 2).contiguous()


def _bilinear_reference(fmap, y: float, x: float, height: int, width: int):
    """One bilinear sample of ``fmap`` ``(C, H, W)`` (numpy) with the RoIAlign boundary rules."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(math.floor(y))
    x_low = int(math.floor(x))
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def roi_align_reference(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign as a literal loop over RoIs, bins and samples (slow; for tests).

    The geometry is computed in Python floats (float64), so it matches :func:`roi_align` exactly
    for float64 inputs. No gradient.

    Args:
        features: ``(B, C, H, W)`` feature map.
        rois: ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` in image coordinates.
        output_size: ``(ph, pw)`` bins per RoI (an int means square).
        spatial_scale: feature-map size over image size.
        sampling_ratio: samples per bin along each axis; ``<= 0`` is adaptive.
        aligned: half-pixel offset (``True``) or legacy geometry (``False``).

    Returns:
        ``(K, C, ph, pw)`` in the dtype of ``features``.
    """
    _check_roi_args(features, rois)
    ph, pw = _pair(output_size)
    _, chans, height, width = features.shape
    fmaps = features.detach().cpu().double().numpy()
    out = np.zeros((rois.shape[0], chans, ph, pw))
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.detach().cpu().double().tolist()):
        fmap = fmaps[int(b)]
        x_start = x1 * spatial_scale - offset
        y_start = y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - x_start
        roi_h = y2 * spatial_scale - offset - y_start
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_h = roi_h / ph
        bin_w = roi_w / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw)
        count = max(grid_h * grid_w, 1)
        for p in range(ph):
            for q in range(pw):
                total = np.zeros(chans)
                for iy in range(grid_h):
                    y = y_start + p * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x_start + q * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + _bilinear_reference(fmap, y, x, height, width)
                out[k, :, p, q] = total / count
    return torch.from_numpy(out).to(dtype=features.dtype, device=features.device)
