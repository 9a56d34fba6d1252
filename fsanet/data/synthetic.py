"""The built-in synthetic study set: a segmentation task where long-range context decides some labels.

Why it exists
-------------
The study compares attention heads (FsaNet, non-local, ...) with a plain FCN head on a 2-core CPU in
minutes. Real benchmarks are far too large for that, and on small crops their context effects are
weak. This set is generated procedurally from a seed and built so that attention *must* help: some
pixels are locally identical yet carry different labels depending on a cue far away.

Classes (index = label value, 255 unused)
-----------------------------------------
====  ===============  =====================================================================
  0   background       grey, slightly tinted, linearly shaded, noisy
  1   cue_red          a red cue band (``band`` layout: ONE band along part of one border,
                       ``cue_thickness`` ± 2 px thick (10-14 by default), half to all of the side)
  2   cue_blue         the same in blue
  3   disc_red_cue     a light-grey disc whose governing cue is red
  4   disc_blue_cue    a light-grey disc whose governing cue is blue
  5   triangle         green triangle (random rotation), anywhere
  6   bar              orange-yellow filled rectangle (1:2-1:3, horizontal or vertical), anywhere
====  ===============  =====================================================================

The cue pixels are labelled by their colour. With one ``cue`` class for both colours (format
version 1) the local loss pushed the backbone towards colour-invariant cue features, i.e. away from
the one feature the context rule needs, and the heads whose attention starts switched off learned
the rule late or not at all in a CPU budget (measured in ``params/train/cpu.yaml``).

(Sizes are for the default 96×96 images and scale with ``image_size``.)

The context rule
----------------
Every image has exactly one cue band, red or blue with probability 1/2, and 2-4 discs (radius
7-11 px). A disc is class 2 if the cue is red and class 3 if it is blue. Discs of both classes are
drawn from the *same* distribution (size, grey level, position, noise): the cue colour is drawn
independently of everything else and changes only the cue's own pixels and the disc labels. Every
disc pixel lies at Chebyshev distance >= ``min_cue_distance`` (default 36 px) from every cue pixel.
Hence a predictor that sees only a square window of radius ``R < min_cue_distance`` around a disc
pixel sees exactly the same distribution under both labels and cannot beat chance on discs, while
one that sees the whole image is exact. The other classes (background, the two cues, triangle, bar)
are decidable locally, so an FCN is not useless: at best it is perfect on 5 classes and at chance on
2 (about (5 + 2/3) / 7 = 81 % mIoU, see ``context_stats``); a model that uses the cue can reach 100 %.
About 9 % of all pixels (the discs) are context-dependent.

The FCN's reach: with the small CPU backbone (39 px receptive field at output stride 8) and 1×1 head
convolutions, an output pixel depends on input pixels at most 30 px away (measured by
back-propagating from single pixels: the 39 px field plus bilinear up-sampling between neighbouring
1/8 cells). 36 px leaves a margin. Every 3×3 convolution at stride 8 added to the head adds 8 px of
reach per side; with three of them (the paper's head) the FCN could see the cue and this set would
stop separating the heads.

The cue is a band rather than a small marker on purpose: its area (about 9 % of the image at the
default ``cue_thickness``) sets how strongly it shows up in globally pooled features at
initialisation, and so how fast an attention head learns to use it. With a 14-18 px square (3 % of
the image) non-local attention had barely started to use the cue after 1000 iterations; with the
band it solves the rule in that budget.

Why low frequencies suffice (and where they would not)
------------------------------------------------------
The rule depends only on an image-level quantity: "is there red cue material anywhere?". For a
feature channel that detects red-cue pixels, that is its spatial mean, i.e. its DC DCT coefficient
(up to a constant). Frequency self-attention keeps the lowest ``n × n`` DCT coefficients of the
feature map (DC included), so it can carry this cue to every pixel exactly; a 5×5 band on the
12×12 stride-8 map of a 96×96 image loses nothing the rule needs. Non-local attention can do the
same by attending to cue positions (or by averaging). A rule that needed the cue's precise
*position* would defeat a low band: e.g. "a disc takes the colour of the nearest of several cues",
or "of the cue in the same row" — that needs spatial resolution of a few pixels, i.e. DCT
frequencies beyond 5 per axis; the 5×5 band localises only to about 12/5 ≈ 2.4 cells ≈ 19 px.
This set deliberately avoids such rules, so FsaNet (5×5) should match non-local attention here.

Pipeline notes
--------------
The synthetic params keep ``ratio_range = [1, 1]`` and crop the whole image: rescaling and cropping
would cut the cue out of some crops and make disc labels undecidable (label noise). Flips are
harmless; so is photometric distortion (a hue shift of at most 36° cannot turn red into blue), which
the synthetic params switch off only for speed (the generator already randomises appearance).

Context at a known frequency: the ``cells`` layout
--------------------------------------------------
``layout: cells`` splits the image into ``cells`` (c) vertical stripes of equal width. A cue band
runs along the top (or, per image, the bottom) border, and each stripe's segment of it is red or
blue independently; every disc lies inside one stripe (1 px margin) and takes the colour of its own
stripe's segment, at least ``min_cue_distance`` px away. The context signal a disc needs is then a
function of the column, piecewise constant over c stripes: a cue pattern that alternates between
neighbouring stripes changes sign c - 1 times, and a sum of the n lowest DCT basis functions along
the width changes sign at most n - 1 times, so a low band needs n >= c coefficients per axis to
keep it. :mod:`fsanet.data.oracle` measures this without training (``context_oracle``: the share of
disc pixels whose class survives the n×n low-pass of the val split's cue maps); for c = 4 on the
12×12 feature grid of 96 px images it is 0.57 / 0.77 / 0.95 / 0.997 / 0.997 / 1.0 for n = 1…6,
so the predicted knee is 4×4. ``prepare`` records the curve and the knee in READY.json.

The ``cells`` layout is not the default study's: no head learned it in the CPU budget. At 600
iterations (AdamW, lr 5e-3, seed 0, c = 4) non-local and dot-mode FsaNet (5×5) stayed at the FCN's
level on it (71.98 and 72.21 mIoU; the discs collapsed to one class). With the single cue class of
format version 1 (AdamW, lr 2e-3) non-local, dot and LinSoftmax FsaNet stayed at 67.6-68.0 against
the FCN's 66.3-67.4, with and without ``position_hint`` = 60 (a fixed left-to-right ramp that lets
local features tell their column). Routing a cue to the disc below it
needs position: content-based attention has none in the interior of the map (the small backbone's
39 px field sees no border there), and once local features do carry the column, a low band can
carry every stripe's cue in its own channel, which defeats the band limit. The default ``band``
layout has its knee at 1×1 (the DC coefficient carries its single cue).

The ``bands`` study profile (``params/profiles/bands.yaml``) does learn it, with c = 2: the heads get
position from ``model.head_position`` (a fixed code of DCT basis functions added to the attention
input, after the backbone, so features cannot multiplex the stripes' cues into channels) and train
4000 iterations. Retrained FsaNet then has the oracle's knee (1×1 stays at the DC's level).

On disk (``prepare_synthetic``)
-------------------------------
::

    data/synthetic/images/{train,val}/{split}_{i:05d}.png    RGB
    data/synthetic/labels/{train,val}/{split}_{i:05d}.png    palette PNG, indices = labels
    data/synthetic/splits/{train,val}.txt                    one name per line
    data/synthetic/packed/{split}_{images,labels}.npy        the decoded splits (uint8), in split order
    data/synthetic/READY.json                                settings, counts, content digest, pack sha256

With ``data.cache`` on, :class:`SyntheticDataset` reads a split's two packed arrays in one go instead
of decoding 2 PNGs per sample (2,000 train pairs: about 3 s per training process on the 2-core host);
the arrays are decoded from the written PNGs, so both paths give the same pixels.

Image ``i`` of a split depends only on ``(seed, i)`` (train) or ``(val_seed, i)`` (val), so the set is
bit-identical across runs and machines and independent of the number of worker processes.
Generation writes into ``.synthetic.partial`` beside the target, verifies it, writes ``READY.json``
and renames the folder into place; a failed run leaves no complete-looking folder, and a rerun
reuses the files already written to the partial folder (if the settings match).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
from skimage.draw import disk, polygon
from tqdm import tqdm

from fsanet.config import SyntheticConfig
from fsanet.data.base import SegmentationDataset, read_split_list
from fsanet.data.errors import DataError
from fsanet.data.imageio import read_image, read_label, write_image, write_label
from fsanet.data.oracle import oracle_counts, oracle_curve
from fsanet.io import atomic_path, read_json, write_json, write_text

__all__ = [
    "CLASSES",
    "PALETTE",
    "SPLITS",
    "READY_FILE",
    "GENERATOR_KEYS",
    "SyntheticDataset",
    "check_settings",
    "context_oracle",
    "context_stats",
    "generate_sample",
    "prepare_synthetic",
    "settings_from_config",
    "split_count",
    "split_seed",
]

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = (
    "background",
    "cue_red",
    "cue_blue",
    "disc_red_cue",
    "disc_blue_cue",
    "triangle",
    "bar",
)
PALETTE = np.array(
    [
        [0, 0, 0],
        [255, 150, 150],
        [150, 180, 255],
        [220, 40, 40],
        [40, 80, 220],
        [40, 170, 60],
        [235, 175, 30],
    ],
    dtype=np.uint8,
)
BACKGROUND, CUE_RED, CUE_BLUE, DISC_RED, DISC_BLUE, TRIANGLE, BAR = range(7)
CUE_CLASSES = (CUE_RED, CUE_BLUE)
CONTEXT_CLASSES = (DISC_RED, DISC_BLUE)
SPLITS = ("train", "val")
READY_FILE = "READY.json"
PACKED_DIR = "packed"  # the decoded splits as .npy, for one-read loading (``data.cache``)
FORMAT_VERSION = 2  # bump when the generator changes its output

LAYOUTS = ("band", "cells")
_CUE_HUE = {"red": 0.0, "blue": 228.0}  # degrees
_GAP = 2  # least free pixels between any two shapes


#: the settings keys that decide the generated files (all of :class:`SyntheticConfig` but ``processes``)
GENERATOR_KEYS = tuple(f.name for f in fields(SyntheticConfig) if f.name != "processes")
#: generator keys added after READY.json files of this format version were written, each with the value
#: that reproduces those sets; a READY.json without the key is read as having that value
_ADDED_KEYS = {"cue_thickness": 12}


def check_settings(settings: SyntheticConfig) -> SyntheticConfig:
    """``settings`` if the generator can make a set with them, else a ValueError naming the key.

    Args:
        settings: ``data.synthetic`` (:class:`fsanet.config.SyntheticConfig`, whose docstring says what
            each key means).

    Raises:
        ValueError: e.g. an image under 48 px, equal train and val seeds, a cue distance that leaves no
            room for a disc, or a ``cells`` count that does not divide the image into wide-enough stripes.
    """
    s = settings.image_size
    if s < 48:
        raise ValueError(f"data.synthetic.image_size={s}: must be at least 48 px")
    if settings.num_train < 1 or settings.num_val < 1:
        raise ValueError(
            f"data.synthetic.num_train={settings.num_train}, num_val={settings.num_val}: both must be >= 1"
        )
    if settings.seed < 0 or settings.val_seed < 0 or settings.seed == settings.val_seed:
        raise ValueError(
            f"data.synthetic.seed={settings.seed}, val_seed={settings.val_seed}: must be non-negative and "
            "different"
        )
    if settings.layout not in LAYOUTS:
        raise ValueError(f"data.synthetic.layout={settings.layout!r}: choose one of {list(LAYOUTS)}")
    if settings.layout == "cells":
        width = s // max(settings.cells, 1)
        if settings.cells < 1 or s % settings.cells or width < 2 * _cell_disc_radius(s)[1] + 3:
            raise ValueError(
                f"data.synthetic.cells={settings.cells}: must divide image_size={s} into stripes at least "
                f"{2 * _cell_disc_radius(s)[1] + 3} px wide (the largest disc plus a margin)"
            )
    if not 0 <= settings.position_hint <= 128:
        raise ValueError(
            f"data.synthetic.position_hint={settings.position_hint}: must be in 0..128 grey levels"
        )
    # the cue band may cover a whole side, so the far side must hold a disc: band + distance + disc
    if settings.cue_thickness < 3:
        raise ValueError(f"data.synthetic.cue_thickness={settings.cue_thickness}: must be at least 3 px")
    sizes = _sizes(s, settings.cue_thickness)
    need = settings.min_cue_distance + sizes["cue_thickness"][1] + 2 * sizes["disc"][1] + 3
    if settings.min_cue_distance < 1 or need > s:
        raise ValueError(
            f"data.synthetic.min_cue_distance={settings.min_cue_distance} with "
            f"cue_thickness={settings.cue_thickness} does not fit a {s}px image "
            f"(needs band + distance + disc <= {s}; with this cue the largest distance is "
            f"{s - need + settings.min_cue_distance})"
        )
    return settings


def split_count(settings: SyntheticConfig, split: str) -> int:
    """Images in ``split`` (train or val)."""
    return {"train": settings.num_train, "val": settings.num_val}[split]


def split_seed(settings: SyntheticConfig, split: str) -> int:
    """The seed of ``split`` (train or val)."""
    return {"train": settings.seed, "val": settings.val_seed}[split]


def settings_from_config(cfg: Any) -> SyntheticConfig:
    """Checked settings from ``cfg.data``, ``cfg.data.synthetic`` or a mapping of the same keys."""
    section = getattr(cfg, "synthetic", cfg)
    keys = [f.name for f in fields(SyntheticConfig)]
    values = {k: (str(section[k]) if k == "layout" else int(section[k])) for k in keys if k in section}
    return check_settings(SyntheticConfig(**values))


def _sizes(s: int, cue_thickness: int = SyntheticConfig.cue_thickness) -> dict[str, tuple[int, int]]:
    """Shape size ranges (inclusive) scaled from the 96 px design; ``cue_thickness`` is the middle of
    the cue band's range at 96 px (``data.synthetic.cue_thickness``)."""
    u = s / 96.0

    def rng(lo: float, hi: float) -> tuple[int, int]:
        return max(2, round(lo * u)), max(2, round(hi * u))

    return {
        "cue_thickness": rng(cue_thickness - 2, cue_thickness + 2),
        "disc": rng(7, 11),  # radius
        "triangle": rng(10, 14),  # circumradius
        "bar": rng(18, 26),  # long side (the short side is 7-9 px at 96)
    }


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------
Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)


def _box_distance(a: Box, b: Box) -> int:
    """Chebyshev distance between the pixel sets of two boxes (0 if they touch or overlap)."""
    gap_y = max(b[0] - (a[2] - 1), a[0] - (b[2] - 1), 0)
    gap_x = max(b[1] - (a[3] - 1), a[1] - (b[3] - 1), 0)
    return max(gap_y, gap_x)


def _hsv_to_rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (hue in degrees, s, v in [0, 1]) as float RGB 0..255."""
    h = (h_deg % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return (np.array([r, g, b]) + m) * 255.0


def _place(
    rng: np.random.Generator,
    size: int,
    half_h: int,
    half_w: int,
    boxes: Sequence[Box],
    far_from: Box | None,
    distance: int,
    tries: int = 200,
) -> tuple[int, int] | None:
    """A centre whose ``(2*half_h+1, 2*half_w+1)`` box lies inside the image (1 px margin), keeps more
    than ``_GAP`` px from ``boxes`` and (if ``far_from``) at least ``distance`` from that box; None when
    no spot is found in ``tries`` draws."""
    for _ in range(tries):
        cy = int(rng.integers(half_h + 1, size - half_h - 1))
        cx = int(rng.integers(half_w + 1, size - half_w - 1))
        box = (cy - half_h, cx - half_w, cy + half_h + 1, cx + half_w + 1)
        if far_from is not None and _box_distance(box, far_from) < distance:
            continue
        if all(_box_distance(box, b) > _GAP for b in boxes):
            return cy, cx
    return None


def _cell_disc_radius(s: int) -> tuple[int, int]:
    """Disc radius range of the ``cells`` layout (px, inclusive): 5-9 at 96 px."""
    u = s / 96.0
    return max(2, round(5 * u)), max(2, round(9 * u))


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Grey with a slight tint and a linear shading of random direction, float (S, S, 3)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1) - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    shade = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0, 40)
    base = rng.uniform(50, 110) + rng.uniform(-8, 8, size=3)
    return base[None, None, :] + shade[..., None]


def generate_sample(settings: SyntheticConfig, seed: int, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Generate one image/label pair; a pure function of the settings' geometry, ``seed`` and ``index``.

    Returns:
        ``(image uint8 (S,S,3), label uint8 (S,S), info)`` where ``info`` holds the number of shapes
        of each kind and the cue: ``cue`` ("red"/"blue") for the ``band`` layout, ``cells`` (one of
        "red"/"blue" per stripe, left to right) and ``cue_side`` for the ``cells`` layout.
    """
    if settings.layout == "cells":
        return _generate_cells(settings, seed, index)
    s = settings.image_size
    sizes = _sizes(s, settings.cue_thickness)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, FORMAT_VERSION]))

    # background: grey with a slight tint and a linear shading of random direction
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1) - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    shade = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0, 40)
    base = rng.uniform(50, 110) + rng.uniform(-8, 8, size=3)
    image = base[None, None, :] + shade[..., None]  # (S, S, 3) float
    label = np.zeros((s, s), dtype=np.uint8)

    cue = "red" if rng.random() < 0.5 else "blue"
    disc_class = DISC_RED if cue == "red" else DISC_BLUE

    for _attempt in range(50):
        # cue: a band along part of one border (thickness t, length between half and all of the side)
        t = int(rng.integers(sizes["cue_thickness"][0], sizes["cue_thickness"][1] + 1))
        length = int(rng.integers(s // 2, s + 1))
        along = int(rng.integers(0, s - length + 1))
        side = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
        across = 0 if side in (0, 2) else s - t
        if side in (0, 1):
            cue_box = (across, along, across + t, along + length)
        else:
            cue_box = (along, across, along + length, across + t)
        # discs: 2-4 attempted (at least one placed), all far from the cue
        n_discs = int(rng.integers(2, 5))
        discs = []
        boxes: list[Box] = [cue_box]
        for _ in range(n_discs):
            r = int(rng.integers(sizes["disc"][0], sizes["disc"][1] + 1))
            spot = _place(rng, s, r, r, boxes, cue_box, settings.min_cue_distance)
            if spot is not None:
                discs.append((spot, r))
                boxes.append((spot[0] - r, spot[1] - r, spot[0] + r + 1, spot[1] + r + 1))
        if discs:
            break
    else:  # pragma: no cover - check_settings rejects geometries where this can happen
        raise RuntimeError(f"could not place a disc (seed {seed}, index {index}, settings {settings})")

    # cue pixels
    hue = _CUE_HUE[cue] + rng.uniform(-12, 12)
    y0, x0, y1, x1 = cue_box
    image[y0:y1, x0:x1] = _hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
    label[y0:y1, x0:x1] = CUE_RED if cue == "red" else CUE_BLUE

    # discs: light grey, same distribution whatever the cue
    for (cy, cx), r in discs:
        rr, cc = disk((cy, cx), r + 0.5, shape=(s, s))
        image[rr, cc] = rng.uniform(165, 230) + rng.uniform(-4, 4, size=3)
        label[rr, cc] = disc_class

    # locally decidable distractors, anywhere
    n_tri, n_bar = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    placed = {"triangles": 0, "bars": 0}
    for _ in range(n_tri):
        r = int(rng.integers(sizes["triangle"][0], sizes["triangle"][1] + 1))
        spot = _place(rng, s, r, r, boxes, None, 0)
        if spot is None:
            continue
        theta = rng.uniform(0, 2 * math.pi) + np.arange(3) * 2 * math.pi / 3
        rr, cc = polygon(spot[0] + r * np.sin(theta), spot[1] + r * np.cos(theta), shape=(s, s))
        image[rr, cc] = _hsv_to_rgb(
            120 + rng.uniform(-15, 15), rng.uniform(0.6, 0.9), rng.uniform(0.55, 0.85)
        )
        label[rr, cc] = TRIANGLE
        placed["triangles"] += 1
        boxes.append((spot[0] - r, spot[1] - r, spot[0] + r + 1, spot[1] + r + 1))
    for _ in range(n_bar):
        long_half = int(rng.integers(sizes["bar"][0], sizes["bar"][1] + 1)) // 2
        short_half = max(1, round(long_half * rng.uniform(0.33, 0.45)))
        hy, hx = (short_half, long_half) if rng.random() < 0.5 else (long_half, short_half)
        spot = _place(rng, s, hy, hx, boxes, None, 0)
        if spot is None:
            continue
        box = (spot[0] - hy, spot[1] - hx, spot[0] + hy + 1, spot[1] + hx + 1)
        image[box[0] : box[2], box[1] : box[3]] = _hsv_to_rgb(
            42 + rng.uniform(-8, 8), rng.uniform(0.7, 0.95), rng.uniform(0.8, 1.0)
        )
        label[box[0] : box[2], box[1] : box[3]] = BAR
        placed["bars"] += 1
        boxes.append(box)

    image += rng.normal(0.0, 6.0, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    info = {"cue": cue, "discs": len(discs), **placed}
    return image, label, info


def _distractors(
    rng: np.random.Generator, s: int, image: np.ndarray, label: np.ndarray, boxes: list[Box]
) -> dict[str, int]:
    """0-2 green triangles and 0-2 orange bars, anywhere free (the ``cells`` layout's copy of the
    ``band`` layout's distractors, with the same distributions)."""
    sizes = _sizes(s)
    n_tri, n_bar = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    placed = {"triangles": 0, "bars": 0}
    for _ in range(n_tri):
        r = int(rng.integers(sizes["triangle"][0], sizes["triangle"][1] + 1))
        spot = _place(rng, s, r, r, boxes, None, 0)
        if spot is None:
            continue
        theta = rng.uniform(0, 2 * math.pi) + np.arange(3) * 2 * math.pi / 3
        rr, cc = polygon(spot[0] + r * np.sin(theta), spot[1] + r * np.cos(theta), shape=(s, s))
        image[rr, cc] = _hsv_to_rgb(
            120 + rng.uniform(-15, 15), rng.uniform(0.6, 0.9), rng.uniform(0.55, 0.85)
        )
        label[rr, cc] = TRIANGLE
        placed["triangles"] += 1
        boxes.append((spot[0] - r, spot[1] - r, spot[0] + r + 1, spot[1] + r + 1))
    for _ in range(n_bar):
        long_half = int(rng.integers(sizes["bar"][0], sizes["bar"][1] + 1)) // 2
        short_half = max(1, round(long_half * rng.uniform(0.33, 0.45)))
        hy, hx = (short_half, long_half) if rng.random() < 0.5 else (long_half, short_half)
        spot = _place(rng, s, hy, hx, boxes, None, 0)
        if spot is None:
            continue
        box = (spot[0] - hy, spot[1] - hx, spot[0] + hy + 1, spot[1] + hx + 1)
        image[box[0] : box[2], box[1] : box[3]] = _hsv_to_rgb(
            42 + rng.uniform(-8, 8), rng.uniform(0.7, 0.95), rng.uniform(0.8, 1.0)
        )
        label[box[0] : box[2], box[1] : box[3]] = BAR
        placed["bars"] += 1
        boxes.append(box)
    return placed


def _generate_cells(settings: SyntheticConfig, seed: int, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ``cells`` layout: ``c`` vertical stripes, each with its own cue segment along the top (or
    bottom) border; a disc takes the cue colour of the stripe it lies in."""
    s, c = settings.image_size, settings.cells
    width = s // c
    sizes = _sizes(s, settings.cue_thickness)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, FORMAT_VERSION, 2]))
    image = _background(rng, s)
    if settings.position_hint:
        ramp = (np.arange(s, dtype=np.float32) / (s - 1) - 0.5) * settings.position_hint
        image[..., 1] += ramp[None, :]
    label = np.zeros((s, s), dtype=np.uint8)

    cues = ["red" if rng.random() < 0.5 else "blue" for _ in range(c)]
    side = "top" if rng.random() < 0.5 else "bottom"
    t = int(rng.integers(sizes["cue_thickness"][0], sizes["cue_thickness"][1] + 1))
    y0 = 0 if side == "top" else s - t
    cue_box = (y0, 0, y0 + t, s)
    for j, cue in enumerate(cues):
        x0, x1 = j * width, (j + 1) * width
        hue = _CUE_HUE[cue] + rng.uniform(-12, 12)
        image[y0 : y0 + t, x0:x1] = _hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
        label[y0 : y0 + t, x0:x1] = CUE_RED if cue == "red" else CUE_BLUE

    boxes: list[Box] = [cue_box]
    discs = []
    r_lo, r_hi = _cell_disc_radius(s)
    for _ in range(int(rng.integers(2, 5))):
        r = int(rng.integers(r_lo, r_hi + 1))
        j = int(rng.integers(c))
        for _try in range(100):  # inside stripe j with a 1 px margin, far from the cue band
            cx = int(rng.integers(j * width + r + 1, (j + 1) * width - r - 1))
            cy = int(rng.integers(r + 1, s - r - 1))
            box = (cy - r, cx - r, cy + r + 1, cx + r + 1)
            if _box_distance(box, cue_box) >= settings.min_cue_distance and all(
                _box_distance(box, b) > _GAP for b in boxes
            ):
                discs.append(((cy, cx), r, j))
                boxes.append(box)
                break
    for (cy, cx), r, j in discs:  # light grey, same distribution whatever the cue
        rr, cc = disk((cy, cx), r + 0.5, shape=(s, s))
        image[rr, cc] = rng.uniform(165, 230) + rng.uniform(-4, 4, size=3)
        label[rr, cc] = DISC_RED if cues[j] == "red" else DISC_BLUE
    placed = _distractors(rng, s, image, label, boxes)

    image += rng.normal(0.0, 6.0, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    info = {"cells": cues, "cue_side": side, "discs": len(discs), **placed}
    return image, label, info


# --------------------------------------------------------------------------------------------
# Writing a split set to disk
# --------------------------------------------------------------------------------------------
def _name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _write_chunk(folder: str, settings: SyntheticConfig, split: str, indices: Sequence[int]) -> int:
    """Worker: write the images/labels of ``indices`` (skipping files already there); returns the count."""
    root = Path(folder)
    seed = split_seed(settings, split)
    for i in indices:
        img_path = root / "images" / split / f"{_name(split, i)}.png"
        lbl_path = root / "labels" / split / f"{_name(split, i)}.png"
        if img_path.is_file() and lbl_path.is_file():
            continue  # written atomically by an earlier (interrupted) run with the same settings
        image, label, _ = generate_sample(settings, seed, i)
        write_image(img_path, image)
        write_label(lbl_path, label, palette=PALETTE)
    return len(indices)


def _oracle_chunk(settings: SyntheticConfig, split: str, indices: Sequence[int]) -> tuple[np.ndarray, int]:
    """Worker: the context oracle's counts (:func:`fsanet.data.oracle.oracle_counts`) over ``indices``."""
    seed = split_seed(settings, split)
    samples = []
    for i in indices:
        _, label, info = generate_sample(settings, seed, i)
        samples.append((label, info))
    return oracle_counts(samples, CONTEXT_CLASSES)


def context_oracle(settings: SyntheticConfig, split: str = "val", processes: int = 1) -> dict[str, Any]:
    """The oracle curve and predicted knee of ``split`` (see :mod:`fsanet.data.oracle`)."""
    chunks = [
        list(range(a, min(a + 64, split_count(settings, split))))
        for a in range(0, split_count(settings, split), 64)
    ]
    if processes == 1:
        parts = [_oracle_chunk(settings, split, c) for c in chunks]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(processes, len(chunks)), mp_context=ctx) as pool:
            parts = list(pool.map(_oracle_chunk, [settings] * len(chunks), [split] * len(chunks), chunks))
    hits = sum(p[0] for p in parts)
    total = sum(p[1] for p in parts)
    return {"split": split, **oracle_curve(hits, total)}


def _digest(root: Path, settings: SyntheticConfig) -> str:
    """sha256 over every file of the set in a fixed order (names and contents)."""
    h = hashlib.sha256()
    for split in SPLITS:
        paths = [root / "splits" / f"{split}.txt"]
        for i in range(split_count(settings, split)):
            paths += [
                root / "images" / split / f"{_name(split, i)}.png",
                root / "labels" / split / f"{_name(split, i)}.png",
            ]
        for p in paths:
            if not p.is_file():
                raise DataError(f"{p}: expected file missing after generation")
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _sha256(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pack_files(split: str) -> tuple[str, str]:
    return f"{PACKED_DIR}/{split}_images.npy", f"{PACKED_DIR}/{split}_labels.npy"


def _write_pack(root: Path, split: str, count: int) -> dict[str, str]:
    """Decode the split's PNGs into two ``.npy`` arrays (images ``(N, H, W, 3)``, labels ``(N, H, W)``,
    uint8, in split-list order); returns their sha256 by relative path."""
    names = [_name(split, i) for i in range(count)]
    images = np.stack([read_image(root / "images" / split / f"{n}.png") for n in names])
    labels = np.stack([read_label(root / "labels" / split / f"{n}.png") for n in names])
    out = {}
    for rel, array in zip(_pack_files(split), (images, labels)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
        out[rel] = _sha256(path)
    return out


def _settings_record(settings: SyntheticConfig) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **{k: getattr(settings, k) for k in GENERATOR_KEYS}}


def _ready_ok(root: Path, settings: SyntheticConfig, verify: bool) -> bool:
    ready_file = root / READY_FILE
    if not ready_file.is_file():
        return False
    try:
        ready = read_json(ready_file)
    except ValueError:
        return False
    stored = ready.get("settings")
    if isinstance(stored, dict):
        stored = {**_ADDED_KEYS, **stored}
    if stored != _settings_record(settings):
        return False
    if not verify:
        return True
    packs_ok = all(
        _sha256(root / f) == h for split in (ready.get("packed") or {}).values() for f, h in split.items()
    )
    return packs_ok and ready.get("digest") == _digest(root, settings)


def prepare_synthetic(
    root: str | Path,
    cfg: Any = None,
    processes: int | None = None,
    force: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> Path:
    """Generate the synthetic set into ``root`` (atomically); skip if it is already there and complete.

    Args:
        root: destination folder (``data/synthetic``).
        cfg: ``cfg.data``, ``cfg.data.synthetic`` or a mapping with the keys of
            :class:`fsanet.config.SyntheticConfig`; None = defaults.
        processes: worker processes; None = ``cfg.processes`` (0 = all cores); 1 = in this process.
        force: regenerate even if ``root`` holds a complete set with other settings (it is replaced).
        progress: show a tqdm bar.
        verify: when ``root`` is already complete, re-hash its files against READY.json before skipping.

    Returns:
        ``root``.

    Raises:
        DataError: ``root`` exists but is not a complete synthetic set with these settings (and
            ``force`` is off), or generation failed verification.
    """
    root = Path(root)
    settings = check_settings(SyntheticConfig()) if cfg is None else settings_from_config(cfg)
    if processes is None:
        section = getattr(cfg, "synthetic", cfg) if cfg is not None else {}
        processes = int(section.get("processes", 0)) if hasattr(section, "get") else 0
    if processes <= 0:
        processes = os.cpu_count() or 1

    if root.exists():
        if _ready_ok(root, settings, verify):
            log.info("%s: synthetic set complete (READY.json matches); nothing to do", root)
            return root
        if not force:
            raise DataError(
                f"{root}: exists but is not a complete synthetic set with these settings "
                f"({_settings_record(settings)}); delete it, pass --force, or set data.root elsewhere"
            )

    partial = root.parent / f".{root.name}.partial"
    record = _settings_record(settings)
    settings_file = partial / "settings.json"
    if partial.exists():
        try:
            same = read_json(settings_file) == record
        except (FileNotFoundError, ValueError):
            same = False
        if not same:
            log.info("%s: discarding a partial set made with other settings", partial)
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(settings_file, record)

    jobs = [
        (split, list(range(start, min(start + 64, split_count(settings, split)))))
        for split in SPLITS
        for start in range(0, split_count(settings, split), 64)
    ]
    total = settings.num_train + settings.num_val
    with tqdm(total=total, desc=f"synthetic -> {root}", unit="img", disable=not progress) as bar:
        if processes == 1:
            for split, idx in jobs:
                bar.update(_write_chunk(str(partial), settings, split, idx))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=ctx) as pool:
                futures = [
                    pool.submit(_write_chunk, str(partial), settings, split, idx) for split, idx in jobs
                ]
                for fut in as_completed(futures):
                    bar.update(fut.result())

    for split in SPLITS:
        names = "".join(f"{_name(split, i)}\n" for i in range(split_count(settings, split)))
        write_text(partial / "splits" / f"{split}.txt", names)
    settings_file.unlink()
    digest = _digest(partial, settings)  # also checks that every file exists
    counts = {split: split_count(settings, split) for split in SPLITS}
    context = context_oracle(settings, "val", processes)
    packed = {split: _write_pack(partial, split, split_count(settings, split)) for split in SPLITS}
    write_json(
        partial / READY_FILE,
        {
            "dataset": "synthetic",
            "settings": record,
            "counts": counts,
            "digest": digest,
            "context": context,
            "packed": packed,
        },
    )
    if root.exists():  # force: replace the old set only now that the new one is complete
        old = root.parent / f".{root.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(root, old)
        os.replace(partial, root)
        shutil.rmtree(old)
    else:
        os.replace(partial, root)
    log.info(
        "%s: wrote %d train + %d val images (digest %s)",
        root,
        settings.num_train,
        settings.num_val,
        digest[:12],
    )
    return root


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
class SyntheticDataset(SegmentationDataset):
    """The synthetic study set as written by :func:`prepare_synthetic` (splits ``train`` and ``val``)."""

    NAME = "synthetic"
    CLASSES = CLASSES
    PALETTE = PALETTE
    LAYOUT = (
        "  images/{train,val}/<name>.png   RGB images\n"
        "  labels/{train,val}/<name>.png   label maps (palette PNG, indices 0..5)\n"
        "  splits/{train,val}.txt          one <name> per line\n"
        "  READY.json                      written last by `fsanet data prepare synthetic`"
    )
    FETCH = "fsanet data prepare synthetic"

    def samples(self) -> list[tuple[Path, Path]]:
        if self.split not in SPLITS:
            raise DataError(f"{self.root}: the synthetic set has splits {list(SPLITS)}, not '{self.split}'")
        ready = self.root / READY_FILE
        if not ready.is_file():
            raise DataError(
                f"{self.root}: no {READY_FILE}, so the synthetic set is incomplete; re-create it with "
                f"`{self.FETCH}` (delete the folder first)"
            )
        counts = read_json(ready).get("counts", {})
        self.SPLIT_SIZES = {k: int(v) for k, v in counts.items()}  # known sizes for the base-class check
        split_dir = self.root / "splits" / f"{self.split}.txt"
        return read_split_list(
            split_dir, self.root / "images" / self.split, ".png", self.root / "labels" / self.split, ".png"
        )

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair from the packed arrays when ``cache`` is on and the pack matches the split list;
        otherwise decoded from the PNGs (the base class). Both give the same arrays."""
        if self._cache is None:
            return super().load(index)
        if not hasattr(self, "_packed"):
            self._packed = self._open_pack()
        if self._packed is None:
            return super().load(index)
        images, labels = self._packed
        return images[index], labels[index]

    def _open_pack(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        names = [img.stem for img, _ in self._samples]
        if names != [_name(self.split, i) for i in range(len(names))]:
            log.info("%s: split list differs from the generated order; decoding the PNGs", self.root)
            return None
        paths = [self.root / rel for rel in _pack_files(self.split)]
        if not all(p.is_file() for p in paths):
            return None  # a set prepared before the packs existed
        try:
            images, labels = (np.load(p, allow_pickle=False) for p in paths)
        except (OSError, ValueError) as err:
            raise DataError(
                f"{paths[0].parent}: unreadable packed arrays ({err}); re-create the set with "
                f"`{self.FETCH} --force`"
            ) from None
        if (
            images.dtype != np.uint8
            or labels.dtype != np.uint8
            or images.ndim != 4
            or labels.ndim != 3
            or len(images) != len(names)
            or len(labels) != len(names)
            or images.shape[:3] != labels.shape
        ):
            raise DataError(
                f"{paths[0].parent}: packed arrays {images.shape}/{labels.shape} do not match the "
                f"{len(names)} samples of split '{self.split}'; re-create the set with "
                f"`{self.FETCH} --force`"
            )
        if self.check_labels:
            self.check_label(labels, paths[1])
        images.flags.writeable = False  # shared by every item: a transform writing into it fails loudly
        labels.flags.writeable = False
        return images, labels


# --------------------------------------------------------------------------------------------
# Design checks (used by tests and the report)
# --------------------------------------------------------------------------------------------
def context_stats(labels: Sequence[np.ndarray]) -> dict[str, Any]:
    """Facts about the context rule over label maps.

    Returns:
        ``context_pixel_share``: share of pixels whose label depends on the cue (classes 2 and 3);
        ``min_cue_distance``: least Chebyshev distance from a context pixel to a cue pixel;
        ``best_context_free_miou``: mIoU (%) of the best predictor that is perfect on the four local
        classes but cannot see the cue (it labels disc pixels red/blue with a probability that does not
        depend on the truth; about 77.8 for balanced classes);
        ``oracle_miou``: 100.
    """
    from scipy.ndimage import distance_transform_cdt

    hist = np.zeros(256, dtype=np.int64)
    min_dist = math.inf
    for lab in labels:
        hist += np.bincount(lab.ravel(), minlength=256)
        ctx = np.isin(lab, CONTEXT_CLASSES)
        if ctx.any():
            dist = distance_transform_cdt(~np.isin(lab, CUE_CLASSES), metric="chessboard")
            min_dist = min(min_dist, int(dist[ctx].min()))
    n_red, n_blue = float(hist[DISC_RED]), float(hist[DISC_BLUE])
    # a context-free rule labels a disc pixel "red" with some probability p independent of the truth:
    # IoU_red = p R / (R + p B), IoU_blue = (1-p) B / (B + (1-p) R); take the best p
    p = np.linspace(0.0, 1.0, 1001)
    disc_iou = p * n_red / np.maximum(n_red + p * n_blue, 1e-12) + (1 - p) * n_blue / np.maximum(
        n_blue + (1 - p) * n_red, 1e-12
    )
    return {
        "context_pixel_share": float((n_red + n_blue) / max(hist.sum(), 1)),
        "min_cue_distance": float(min_dist),
        "best_context_free_miou": 100.0 * (len(CLASSES) - 2 + float(disc_iou.max())) / len(CLASSES),
        "oracle_miou": 100.0,
        "class_pixel_share": {c: float(hist[k] / max(hist.sum(), 1)) for k, c in enumerate(CLASSES)},
    }


def read_ready(root: str | Path) -> dict[str, Any]:
    """The READY.json record of a generated set."""
    return json.loads((Path(root) / READY_FILE).read_text())
