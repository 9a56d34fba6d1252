"""The synthetic study set as a COCO instance-segmentation set: one instance per drawn shape.

What is an instance
-------------------
Every disc, triangle and bar that :func:`fsanet.data.synthetic.generate_sample` draws is one object
instance, of category ``disc_red_cue`` (3), ``disc_blue_cue`` (4), ``triangle`` (5) or ``bar`` (6);
the COCO category id is the shape's label value in the label maps, so ids and semantic labels agree.
The cue bands are *not* instances: they are "stuff" (one band, or a row of stripe segments, per image,
whose role is to colour the discs' labels), as is the background.

Where the instances come from
-----------------------------
The generator keeps no geometry: it returns the image, the label map and shape counts only. Rather
than edit it (or segment the label maps into connected components, which would merge touching shapes
and lose the geometry), this module re-runs the generator's *own code* with its drawing helpers
observed. :func:`trace_sample` builds copies of ``generate_sample``, ``_generate_cells`` and
``_distractors`` (same code objects) whose global names ``disk``, ``polygon`` and ``_place`` point to
recording wrappers around the real functions; the wrappers pass every argument and result through
unchanged, so the traced run consumes the same random numbers and returns bit-identical images and
label maps (tested). The module :mod:`fsanet.data.synthetic` itself is never modified, not even
temporarily, so tracing is safe beside other threads that generate samples.

From the recorded calls, in drawing order:

* ``disk(centre, radius)`` draws a disc. Its class is the governing cue's: ``info["cue"]`` in the
  ``band`` layout, ``info["cells"][cx // stripe_width]`` in the ``cells`` layout (a disc lies inside
  one stripe). The pixels are the ones ``disk`` returned, i.e. exactly the ones the generator filled.
* ``_place`` without a far-from box that found a spot, followed by ``polygon(rows, cols)``, is a
  triangle (pixels: what ``polygon`` returned; geometry: its three vertices).
* ``_place`` without a far-from box that found a spot and is *not* followed by ``polygon`` is a bar:
  the generator fills the rectangle ``spot ± (half_h, half_w)`` (end inclusive) by slicing.
* ``_place`` with a far-from box places a disc (drawn later through ``disk``) and is skipped.

Occlusion: a shape drawn later overwrites earlier pixels, so each instance's mask is its drawn pixels
less those of every later instance (empty masks are dropped). With the generator's spacing rule (more
than 2 px between shape boxes) no shapes overlap today, but the masks stay right if that changes. The
cue bands are drawn before every shape, so they never occlude one.

Every traced image is checked (:func:`check_instances`): each instance mask lies inside its class's
pixels in the label map, and the masks of a class together cover all of them. If the generator
changes its drawing so that the tracer no longer explains its label maps, the check fails loudly
instead of exporting wrong instances.

COCO export (:func:`export_coco`)
---------------------------------
``images``: ``id`` = split index + 1, ``file_name`` = ``{split}_{i:05d}.png`` (as under
``images/{split}/`` of a prepared set), ``height``, ``width``. ``annotations``: ``segmentation`` a
compressed RLE (``pycocotools.mask.encode``; ``counts`` as an ASCII string), ``bbox`` ``[x, y, w, h]``
and ``area`` of the visible mask, ``iscrowd`` 0, plus ``geometry`` (the shape's parameters, x/y
order). ``categories``: the four shape classes with their label values as ids.
"""

from __future__ import annotations

import inspect
import json
import logging
import types
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fsanet.data.synthetic as syn
from fsanet.config import SyntheticConfig
from fsanet.data.errors import DataError
from fsanet.io import write_text

__all__ = [
    "CATEGORIES",
    "ImageInstances",
    "ShapeInstance",
    "check_instances",
    "coco_dict",
    "export_coco",
    "rle_encode",
    "synthetic_instances",
    "trace_sample",
]

log = logging.getLogger(__name__)

#: the instance classes: COCO category id (= label value) -> name
CATEGORIES: dict[int, str] = {k: syn.CLASSES[k] for k in (syn.DISC_RED, syn.DISC_BLUE, syn.TRIANGLE, syn.BAR)}
_SUPERCATEGORY = {syn.DISC_RED: "disc", syn.DISC_BLUE: "disc", syn.TRIANGLE: "triangle", syn.BAR: "bar"}

#: the generator's functions that are copied with their drawing helpers observed
_TRACED = ("generate_sample", "_generate_cells", "_distractors")
_ORIGINALS: dict[str, Callable[..., Any]] = {name: getattr(syn, name) for name in _TRACED}
#: the drawing helpers they call, observed by pass-through wrappers
_HELPERS: dict[str, Callable[..., Any]] = {"disk": syn.disk, "polygon": syn.polygon, "_place": syn._place}


@dataclass(frozen=True)
class ShapeInstance:
    """One drawn shape.

    Args:
        category_id: its label value (3 disc_red_cue, 4 disc_blue_cue, 5 triangle, 6 bar).
        mask: bool ``(S, S)``, the pixels of the shape visible in the label map.
        bbox: ``[x, y, w, h]`` of ``mask`` (COCO convention, pixel units).
        area: pixels in ``mask``.
        geometry: the shape's parameters as drawn, x/y order: ``{"shape": "disc", "center": [x, y],
            "radius": r}`` (``disk``'s radius, i.e. integer radius + 0.5), ``{"shape": "triangle",
            "vertices": [[x, y], ...]}``, ``{"shape": "bar", "box": [x0, y0, x1, y1]}`` (end exclusive).
    """

    category_id: int
    mask: np.ndarray
    bbox: list[float]
    area: int
    geometry: dict[str, Any]

    @property
    def name(self) -> str:
        return CATEGORIES[self.category_id]


@dataclass
class ImageInstances:
    """The instances of one generated image.

    Args:
        index: the image's index in its split.
        name: ``{split}_{index:05d}`` (its file stem on disk).
        label: the label map (uint8 ``(S, S)``), as the generator returned it.
        instances: in drawing order.
    """

    index: int
    name: str
    label: np.ndarray
    instances: list[ShapeInstance] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Tracing the generator
# --------------------------------------------------------------------------------------------
class _Recorder:
    """Pass-through wrappers of the generator's drawing helpers that log each call in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], Any]] = []
        self._signatures = {k: inspect.signature(f) for k, f in _HELPERS.items()}

    def _wrap(self, name: str) -> Callable[..., Any]:
        real, signature = _HELPERS[name], self._signatures[name]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.events.append((name, dict(bound.arguments), result))
            return result

        return wrapper

    def globals_for(self) -> dict[str, Any]:
        """A copy of the generator module's globals with the helpers wrapped and the traced functions
        re-bound to it."""
        env = dict(vars(syn))
        env.update({name: self._wrap(name) for name in _HELPERS})
        for name, fn in _ORIGINALS.items():
            clone = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
            clone.__kwdefaults__ = fn.__kwdefaults__
            env[name] = clone
        return env


def _xy(rows: Any, cols: Any) -> list[list[float]]:
    return [[float(c), float(r)] for r, c in zip(np.asarray(rows), np.asarray(cols))]


def _drawn_shapes(
    events: Sequence[tuple[str, dict[str, Any], Any]], settings: SyntheticConfig, info: dict[str, Any]
) -> list[tuple[int, np.ndarray, dict[str, Any]]]:
    """``(category_id, pixels (S, S) bool, geometry)`` per drawn shape, in drawing order."""
    s = settings.image_size
    shapes: list[tuple[int, np.ndarray, dict[str, Any]]] = []
    pending: dict[str, Any] | None = None  # a distractor spot whose drawing is not yet known

    def pixels(rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        m = np.zeros((s, s), dtype=bool)
        m[rr, cc] = True
        return m

    def flush_bar() -> None:
        nonlocal pending
        if pending is not None:  # a spot not used by a polygon: the generator filled a bar there
            (cy, cx), hy, hx = pending["spot"], int(pending["half_h"]), int(pending["half_w"])
            y0, x0, y1, x1 = cy - hy, cx - hx, cy + hy + 1, cx + hx + 1
            m = np.zeros((s, s), dtype=bool)
            m[y0:y1, x0:x1] = True
            shapes.append((syn.BAR, m, {"shape": "bar", "box": [x0, y0, x1, y1]}))
            pending = None

    for name, args, result in events:
        if name == "disk":
            flush_bar()
            cy, cx = (int(v) for v in args["center"])
            if settings.layout == "cells":
                cue = info["cells"][cx // (s // settings.cells)]
            else:
                cue = info["cue"]
            category = syn.DISC_RED if cue == "red" else syn.DISC_BLUE
            geometry = {"shape": "disc", "center": [cx, cy], "radius": float(args["radius"])}
            shapes.append((category, pixels(*result), geometry))
        elif name == "polygon":
            if pending is None:
                raise DataError(
                    "fsanet/data/synthetic_coco.py: the generator drew a polygon without placing it first; "
                    "update the tracer to fsanet/data/synthetic.py's current drawing code"
                )
            pending = None
            geometry = {"shape": "triangle", "vertices": _xy(args["r"], args["c"])}
            shapes.append((syn.TRIANGLE, pixels(*result), geometry))
        elif name == "_place":
            flush_bar()
            if args["far_from"] is None and result is not None:  # a distractor; discs come via disk
                pending = {"spot": result, "half_h": args["half_h"], "half_w": args["half_w"]}
    flush_bar()
    return shapes


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def trace_sample(
    settings: SyntheticConfig, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[ShapeInstance]]:
    """Generate one sample with the generator's own code and return its shape instances too.

    Args:
        settings: checked generator settings (:func:`fsanet.data.synthetic.check_settings`).
        seed: the split's seed (:func:`fsanet.data.synthetic.split_seed`).
        index: the image's index in its split.

    Returns:
        ``(image, label, info, instances)``: the first three bit-identical to
        ``generate_sample(settings, seed, index)``; ``instances`` in drawing order, each mask less the
        pixels of later shapes, fully occluded shapes dropped.

    Raises:
        DataError: the instances do not explain the label map (see :func:`check_instances`).
    """
    recorder = _Recorder()
    generate = recorder.globals_for()["generate_sample"]
    image, label, info = generate(settings, seed, index)
    shapes = _drawn_shapes(recorder.events, settings, info)
    instances = []
    later = np.zeros(label.shape, dtype=bool)  # pixels of the shapes drawn after the current one
    for category, pixels, geometry in reversed(shapes):
        visible = pixels & ~later
        later |= pixels
        if visible.any():
            instances.append(ShapeInstance(category, visible, _bbox(visible), int(visible.sum()), geometry))
    instances.reverse()
    check_instances(label, instances, where=f"seed {seed}, index {index}")
    return image, label, info, instances


def check_instances(
    label: np.ndarray, instances: Sequence[ShapeInstance], exact: bool = True, where: str = ""
) -> None:
    """Check that instances and a label map come from the same drawing.

    Args:
        label: the label map.
        instances: its instances (:func:`trace_sample`).
        exact: also require that each class's instance masks together cover all its label-map pixels
            (and that no two masks share a pixel).
        where: names the sample in the error message.

    Raises:
        DataError: a mask has pixels of another class, masks overlap, or (``exact``) class pixels that
            no instance covers.
    """
    at = f" ({where})" if where else ""
    covered = np.zeros(label.shape, dtype=np.int32)
    for k, inst in enumerate(instances):
        outside = int((inst.mask & (label != inst.category_id)).sum())
        if outside:
            raise DataError(
                f"fsanet/data/synthetic_coco.py{at}: instance {k} ({inst.name}) has {outside} pixels of "
                "other classes in the label map; the tracer no longer matches fsanet/data/synthetic.py"
            )
        covered += inst.mask
    if not exact:
        return
    if (covered > 1).any():
        raise DataError(
            f"fsanet/data/synthetic_coco.py{at}: instance masks overlap; occlusion handling broke"
        )
    for category, name in CATEGORIES.items():
        missed = int(((label == category) & (covered == 0)).sum())
        if missed:
            raise DataError(
                f"fsanet/data/synthetic_coco.py{at}: {missed} {name} pixels of the label map are in no "
                "instance; the tracer no longer matches fsanet/data/synthetic.py"
            )


def _settings(data_cfg: Any) -> SyntheticConfig:
    if data_cfg is None:
        return syn.check_settings(SyntheticConfig())
    if isinstance(data_cfg, SyntheticConfig):
        return syn.check_settings(data_cfg)
    return syn.settings_from_config(data_cfg)


def _indices(settings: SyntheticConfig, split: str, indices: Sequence[int] | None) -> list[int]:
    if split not in syn.SPLITS:
        raise ValueError(f"synthetic split '{split}': choose one of {list(syn.SPLITS)}")
    count = syn.split_count(settings, split)
    chosen = list(range(count)) if indices is None else [int(i) for i in indices]
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise ValueError(
            f"synthetic split '{split}' has {count} images (data.synthetic.num_{split}); indices {bad[:5]} "
            "are out of range"
        )
    return chosen


def _iter_instances(
    settings: SyntheticConfig, split: str, indices: Sequence[int] | None
) -> Iterator[ImageInstances]:
    """The traced images of ``split`` (the split and indices are checked before the first is made)."""
    chosen, seed = _indices(settings, split, indices), syn.split_seed(settings, split)

    def items() -> Iterator[ImageInstances]:
        for i in chosen:
            _, label, _, instances = trace_sample(settings, seed, i)
            yield ImageInstances(i, f"{split}_{i:05d}", label, instances)

    return items()


def synthetic_instances(
    data_cfg: Any = None, split: str = "val", indices: Sequence[int] | None = None
) -> list[ImageInstances]:
    """The shape instances of a split's images, made from the generator's drawing (not the label maps).

    Discs (two classes, by their cue), triangles and bars are instances; cue bands and background are
    stuff and have none (see the module docstring).

    Args:
        data_cfg: ``cfg.data``, ``cfg.data.synthetic``, a mapping of
            :class:`fsanet.config.SyntheticConfig` keys or a ``SyntheticConfig``; None = the defaults.
        split: ``"val"`` (default) or ``"train"``.
        indices: the images to trace; None = the whole split.

    Returns:
        One :class:`ImageInstances` per image, in ``indices`` order.
    """
    settings = _settings(data_cfg)
    return list(_iter_instances(settings, split, indices))


# --------------------------------------------------------------------------------------------
# COCO export
# --------------------------------------------------------------------------------------------
def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """A binary mask as a COCO compressed RLE with an ASCII ``counts`` string (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_dict(data_cfg: Any = None, split: str = "val", indices: Sequence[int] | None = None) -> dict:
    """A split as a COCO instances dict (what :func:`export_coco` writes).

    Args:
        data_cfg: as :func:`synthetic_instances`.
        split: ``"val"`` or ``"train"``.
        indices: the images to include; None = the whole split.
    """
    settings = _settings(data_cfg)
    s = settings.image_size
    images, annotations = [], []
    counts: Counter[str] = Counter()
    for item in _iter_instances(settings, split, indices):
        image_id = item.index + 1
        images.append({"id": image_id, "file_name": f"{item.name}.png", "height": s, "width": s})
        for inst in item.instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": inst.category_id,
                    "segmentation": rle_encode(inst.mask),
                    "area": inst.area,
                    "bbox": inst.bbox,
                    "iscrowd": 0,
                    "geometry": inst.geometry,
                }
            )
            counts[inst.name] += 1
    log.info(
        "synthetic %s: %d images, %d instances (%s)",
        split,
        len(images),
        len(annotations),
        ", ".join(f"{name} {counts[name]}" for name in CATEGORIES.values()),
    )
    return {
        "info": {
            "description": f"fsanet synthetic set, split {split}: one instance per disc, triangle and bar",
            "settings": syn._settings_record(settings),
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k, "name": name, "supercategory": _SUPERCATEGORY[k]} for k, name in CATEGORIES.items()
        ],
    }


def export_coco(
    data_cfg: Any, split: str, out_json: str | Path, indices: Sequence[int] | None = None
) -> Path:
    """Write a split's instances as a COCO instances JSON, atomically.

    The whole dict is built before anything is written, and the file goes to a temporary name that is
    renamed onto ``out_json`` only when complete: a failed or interrupted export leaves no partial file
    (an older ``out_json`` stays as it was).

    Args:
        data_cfg: as :func:`synthetic_instances`.
        split: ``"val"`` or ``"train"``.
        out_json: destination file.
        indices: the images to include; None = the whole split.

    Returns:
        ``out_json``.
    """
    data = coco_dict(data_cfg, split, indices)
    path = write_text(out_json, json.dumps(data, separators=(",", ":")) + "\n")
    log.info("%s: wrote %d images, %d annotations", path, len(data["images"]), len(data["annotations"]))
    return path
