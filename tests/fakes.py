"""Tiny copies of the five benchmarks in their real on-disk form, and archives shaped like the official ones.

:func:`write_fake` writes what extracting the official archives into a data root gives (same folder
layout, file names and formats: Cityscapes labelIds/instanceIds/colour PNGs and polygon JSON, VOC
palette PNGs and SBD ``.mat`` structs, ADE 0..150 grey PNGs, COCO-Stuff raw maps, COCO instances JSON
with a polygon and a crowd RLE), with one or two images per split. :func:`pack_fake_archives` packs
the same files into ``gtFine_trainvaltest.zip``, ``VOCtrainval_11-May-2012.tar``, ``benchmark.tgz``
... with the official member paths, so that the download tests exercise the real extraction layout.
Archives are byte-reproducible (fixed timestamps and owners).

The label maps are simple block patterns so that tests can write the expected arrays by hand:

* Cityscapes (H=32, W=64): polygons road ``(0,16)-(63,31)``, cargroup ``(5,5)-(20,15)``, license
  plate inside the car (never drawn). Test split: ego vehicle on rows 28..31.
* ADE20K (H=32, W=48): rows 0..15 × cols 0..23 = 0, rows 0..15 × cols 24..47 = 1, rows 16..31 = 150.
* VOC (H=30, W=40): VOC PNGs 0 with ``[5:15, 5:20] = 1``, ``[15:25, 20:35] = 15``, row 0 = 255; SBD
  ``cls`` maps 0 with ``[10:20, 10:30] = SBD_CLASS[id]``.
* COCO-Stuff (H=48, W=64, the COCO images): 10-column stripes of raw values 0, 12, 91, 181, 255 and,
  in train, 11 (never annotated); columns 60..63 and, in val, the sixth stripe are 0.
* COCO (H=48, W=64): person polygon ``[10,30)²``, crowd toothbrush RLE rows 30..39 × cols 40..49;
  train adds an object of an unknown category (12) and one 0.5 px wide (both dropped by the loader).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from fsanet.data import cityscapes, coco, voc
from fsanet.data.imageio import write_image, write_label
from fsanet.io import atomic_path, write_text

__all__ = ["ARCHIVES", "FAKES", "pack_fake_archives", "write_fake"]

# --------------------------------------------------------------------------------------------
# Per-dataset writers: each writes under data_root exactly what the official archives extract to.
# --------------------------------------------------------------------------------------------
CITYSCAPES_SAMPLES = {
    "train": "aachen/aachen_000000_000019",
    "val": "frankfurt/frankfurt_000000_000294",
    "test": "berlin/berlin_000000_000019",
}
CITYSCAPES_OBJECTS = [
    {"label": "road", "polygon": [[0, 16], [63, 16], [63, 31], [0, 31]]},
    {"label": "cargroup", "polygon": [[5, 5], [20, 5], [20, 15], [5, 15]]},
    {"label": "license plate", "polygon": [[8, 8], [10, 8], [10, 10]]},
]
CITYSCAPES_TEST_OBJECTS = [{"label": "ego vehicle", "polygon": [[0, 28], [63, 28], [63, 31], [0, 31]]}]

VOC_IDS = ("2007_000032", "2007_000033", "2008_000001", "2009_000002")
VOC_SPLITS = {"train": ["2007_000032"], "val": ["2007_000033"]}
SBD_SPLITS = {"train": ["2007_000032", "2008_000001"], "val": ["2007_000033", "2009_000002"]}
SBD_CLASS = {"2007_000032": 1, "2007_000033": 15, "2008_000001": 7, "2009_000002": 20}

COCO_IMAGES = {"train": 25, "val": 9}  # COCO image ids of the one image per split
COCO_STUFF_STRIPES = {"train": (0, 12, 91, 181, 255, 11), "val": (0, 12, 91, 181, 255, 0)}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _fake_cityscapes(data_root: Path) -> Path:
    root = data_root / cityscapes.DIRNAME
    h, w = 32, 64
    for i, (split, name) in enumerate(CITYSCAPES_SAMPLES.items()):
        objects = CITYSCAPES_TEST_OBJECTS if split == "test" else CITYSCAPES_OBJECTS
        polygons = {"imgHeight": h, "imgWidth": w, "objects": objects}
        gt = root / "gtFine" / split / f"{name}_gtFine"
        write_image(root / "leftImg8bit" / split / f"{name}_leftImg8bit.png", _image(h, w, i))
        write_text(f"{gt}_polygons.json", json.dumps(polygons, indent=2))
        ids = cityscapes.render_polygons(polygons, "ids")
        write_label(f"{gt}_labelIds.png", ids)
        # Groups and non-instance classes store the plain id (instances would be id * 1000 + k).
        with atomic_path(f"{gt}_instanceIds.png") as tmp:
            Image.fromarray(ids.astype(np.uint16)).save(tmp, format="PNG")  # 16-bit
        colours = np.zeros((256, 4), dtype=np.uint8)
        for lb in cityscapes.LABELS:
            if lb.id >= 0:
                colours[lb.id] = (*lb.color, 255)
        with atomic_path(f"{gt}_color.png") as tmp:
            Image.fromarray(colours[ids]).save(tmp, format="PNG")
    write_text(root / "license.txt", "fake Cityscapes licence (test miniature)\n")
    write_text(root / "README", "fake Cityscapes README (test miniature)\n")
    return root


def ade20k_label(h: int = 32, w: int = 48) -> np.ndarray:
    label = np.full((h, w), 150, dtype=np.uint8)
    label[: h // 2, : w // 2] = 0
    label[: h // 2, w // 2 :] = 1
    return label


def _fake_ade20k(data_root: Path) -> Path:
    root = data_root / "ade" / "ADEChallengeData2016"
    for i, (folder, prefix) in enumerate((("training", "ADE_train_"), ("validation", "ADE_val_"))):
        name = f"{prefix}00000001"
        write_image(root / "images" / folder / f"{name}.jpg", _image(32, 48, 10 + i), quality=95)
        write_label(root / "annotations" / folder / f"{name}.png", ade20k_label())
    write_text(root / "objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    write_text(root / "sceneCategories.txt", "ADE_train_00000001 airport_terminal\nADE_val_00000001 abbey\n")
    return root


def voc_label(h: int = 30, w: int = 40) -> np.ndarray:
    label = np.zeros((h, w), dtype=np.uint8)
    label[5:15, 5:20] = 1
    label[15:25, 20:35] = 15
    label[0, :] = 255
    return label


def sbd_segmentation(image_id: str, h: int = 30, w: int = 40) -> np.ndarray:
    seg = np.zeros((h, w), dtype=np.uint8)
    seg[10:20, 10:30] = SBD_CLASS[image_id]
    return seg


def _sparse_cells(n: int, h: int, w: int) -> np.ndarray:
    cells = np.empty((n, 1), dtype=object)
    for k in range(n):
        cells[k, 0] = scipy.sparse.csc_matrix((h, w), dtype=np.uint8)
    return cells


def _savemat(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        scipy.io.savemat(str(tmp), data)
        # The 116-byte text header holds the creation time: fix it so the archives are reproducible.
        raw = bytearray(tmp.read_bytes())
        raw[:116] = b"MATLAB 5.0 MAT-file, fsanet fake".ljust(116, b" ")
        tmp.write_bytes(bytes(raw))


def _fake_voc(data_root: Path) -> Path:
    devkit = data_root / "VOCdevkit"
    root = devkit / "VOC2012"
    h, w = 30, 40
    for i, image_id in enumerate(VOC_IDS):
        write_image(root / "JPEGImages" / f"{image_id}.jpg", _image(h, w, 20 + i), quality=95)
    for image_id in VOC_SPLITS["train"] + VOC_SPLITS["val"]:
        write_label(root / "SegmentationClass" / f"{image_id}.png", voc_label(h, w), voc.voc_palette())
    lists = root / "ImageSets" / "Segmentation"
    for split, ids in {**VOC_SPLITS, "trainval": VOC_SPLITS["train"] + VOC_SPLITS["val"]}.items():
        write_text(lists / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    sbd = devkit / "benchmark_RELEASE" / "dataset"
    for i, image_id in enumerate(VOC_IDS):
        seg = sbd_segmentation(image_id, h, w)
        cls = np.array([[SBD_CLASS[image_id]]], dtype=np.uint8)
        _savemat(
            sbd / "cls" / f"{image_id}.mat",
            {"GTcls": {"Segmentation": seg, "Boundaries": _sparse_cells(20, h, w), "CategoriesPresent": cls}},
        )
        _savemat(
            sbd / "inst" / f"{image_id}.mat",
            {
                "GTinst": {
                    "Segmentation": (seg > 0).astype(np.uint8),
                    "Boundaries": _sparse_cells(1, h, w),
                    "Categories": cls,
                }
            },
        )
        write_image(sbd / "img" / f"{image_id}.jpg", _image(h, w, 20 + i), quality=95)
    for split, ids in SBD_SPLITS.items():
        write_text(sbd / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return root


def coco_stuff_raw(split: str, h: int = 48, w: int = 64) -> np.ndarray:
    raw = np.zeros((h, w), dtype=np.uint8)
    for k, value in enumerate(COCO_STUFF_STRIPES[split]):
        raw[:, 10 * k : 10 * (k + 1)] = value
    return raw


def _coco_file(split: str) -> str:
    return f"{COCO_IMAGES[split]:012d}"


def _fake_coco_stuff(data_root: Path) -> Path:
    root = data_root / "coco_stuff164k"
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        write_image(root / "images" / folder / f"{_coco_file(split)}.jpg", _coco_image(split), quality=95)
        write_label(root / "annotations" / folder / f"{_coco_file(split)}.png", coco_stuff_raw(split))
    return root


def _coco_image(split: str) -> np.ndarray:
    return _image(48, 64, 30 + COCO_IMAGES[split])


def coco_instances(split: str) -> dict:
    """The instances JSON of the fake (all 80 categories with their real ids)."""
    image_id = COCO_IMAGES[split]
    rle = [1950] + [10, 38] * 9 + [10, 680]  # rows 30..39 x cols 40..49, column-major
    anns = [
        {
            "id": 1,
            "image_id": image_id,
            "category_id": 1,
            "iscrowd": 0,
            "area": 400.0,
            "bbox": [10, 10, 20, 20],
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
        },
        {
            "id": 2,
            "image_id": image_id,
            "category_id": 90,
            "iscrowd": 1,
            "area": 100.0,
            "bbox": [40, 30, 10, 10],
            "segmentation": {"size": [48, 64], "counts": rle},
        },
    ]
    if split == "train":
        anns += [
            {
                "id": 3,
                "image_id": image_id,
                "category_id": 12,
                "iscrowd": 0,
                "area": 16.0,
                "bbox": [0, 0, 4, 4],
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
            },
            {
                "id": 4,
                "image_id": image_id,
                "category_id": 3,
                "iscrowd": 0,
                "area": 5.0,
                "bbox": [50, 0, 0.5, 10],
                "segmentation": [[50, 0, 50.5, 0, 50.5, 10, 50, 10]],
            },
        ]
    supercategory = {1: "person", 90: "indoor"}
    return {
        "info": {"description": "fake COCO 2017 (test miniature)"},
        "licenses": [],
        "images": [{"id": image_id, "file_name": f"{_coco_file(split)}.jpg", "width": 64, "height": 48}],
        "annotations": anns,
        "categories": [
            {"id": c, "name": n, "supercategory": supercategory.get(c, "thing")}
            for c, n in zip(coco.CAT_IDS, coco.CLASSES)
        ],
    }


def _fake_coco(data_root: Path) -> Path:
    root = data_root / "coco"
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        write_image(root / folder / f"{_coco_file(split)}.jpg", _coco_image(split), quality=95)
        write_text(root / "annotations" / f"instances_{folder}.json", json.dumps(coco_instances(split)))
    return root


FAKES = {
    "cityscapes": _fake_cityscapes,
    "ade20k": _fake_ade20k,
    "voc": _fake_voc,
    "coco_stuff": _fake_coco_stuff,
    "coco": _fake_coco,
}


def write_fake(name: str, data_root: str | Path) -> Path:
    """Write the miniature of benchmark ``name`` under ``data_root``, as the official archives extract.

    Returns:
        The dataset folder (what the dataset class takes as ``root``).
    """
    if name not in FAKES:
        raise KeyError(f"no fake for '{name}'; choose one of {', '.join(FAKES)}")
    return FAKES[name](Path(data_root))


# --------------------------------------------------------------------------------------------
# Archives shaped like the official ones
# --------------------------------------------------------------------------------------------
#: dataset -> [(archive name, folder under the data root it extracts into, its top-level entries)]
ARCHIVES: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "cityscapes": [
        ("gtFine_trainvaltest.zip", "cityscapes", ("gtFine", "license.txt", "README")),
        ("leftImg8bit_trainvaltest.zip", "cityscapes", ("leftImg8bit", "license.txt", "README")),
    ],
    "ade20k": [("ADEChallengeData2016.zip", "ade", ("ADEChallengeData2016",))],
    "voc": [
        ("VOCtrainval_11-May-2012.tar", ".", ("VOCdevkit/VOC2012",)),
        ("benchmark.tgz", "VOCdevkit", ("benchmark_RELEASE",)),
    ],
    "coco_stuff": [
        ("train2017.zip", "coco_stuff164k/images", ("train2017",)),
        ("val2017.zip", "coco_stuff164k/images", ("val2017",)),
        ("stuffthingmaps_trainval2017.zip", "coco_stuff164k/annotations", ("train2017", "val2017")),
    ],
    "coco": [
        ("train2017.zip", "coco", ("train2017",)),
        ("val2017.zip", "coco", ("val2017",)),
        ("annotations_trainval2017.zip", "coco", ("annotations",)),
    ],
}


def _walk(base: Path, entries: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of each entry and everything below it, parents first, sorted."""
    for entry in entries:
        top = base / entry
        parts = Path(entry).parts
        for k in range(1, len(parts)):
            yield "/".join(parts[:k]) + "/", base.joinpath(*parts[:k])
        if top.is_dir():
            yield entry.rstrip("/") + "/", top
            for p in sorted(top.rglob("*")):
                rel = p.relative_to(base).as_posix()
                yield (rel + "/" if p.is_dir() else rel), p
        else:
            yield entry, top


def _write_zip(dest: Path, base: Path, entries: tuple[str, ...]) -> None:
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in _walk(base, entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o40755 if name.endswith("/") else 0o100644) << 16
            zf.writestr(info, b"" if name.endswith("/") else path.read_bytes())


def _write_tar(dest: Path, base: Path, entries: tuple[str, ...], gz: bool) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, path in _walk(base, entries):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        if gz:
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
                g.write(buf.getvalue())
        else:
            f.write(buf.getvalue())


def pack_fake_archives(name: str, out_dir: str | Path) -> dict[str, Path]:
    """Write the miniature of ``name`` and pack it into archives named and laid out like the official ones.

    Returns:
        ``{archive file name: path}``; extracting each into ``<data_root>/<folder>`` (see
        :data:`ARCHIVES`, the same folders as ``extract_to`` in params/data) rebuilds :func:`write_fake`.
    """
    if name not in ARCHIVES:
        raise KeyError(f"no fake archives for '{name}'; choose one of {', '.join(ARCHIVES)}")
    out_dir = Path(out_dir)
    out = {}
    with tempfile.TemporaryDirectory(prefix="fsanet-fake-") as tmp:
        write_fake(name, tmp)
        for archive, folder, entries in ARCHIVES[name]:
            base = Path(tmp) / folder
            dest = out_dir / archive
            if archive.endswith(".zip"):
                _write_zip(dest, base, entries)
            else:
                _write_tar(dest, base, entries, gz=archive.endswith((".tgz", ".tar.gz")))
            out[archive] = dest
    return out
