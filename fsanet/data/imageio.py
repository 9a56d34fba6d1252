"""Reading and writing segmentation images and label maps (Pillow).

Images are returned as ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order. Label maps are
single-channel ``uint8`` arrays ``(H, W)``; palette ('P') PNGs are read as their palette *indices*
(``np.array(Image.open(p))``), never converted to colours. Every write goes through
:func:`fsanet.io.atomic_path`, so a crash never leaves a half-written file under the final name.

Any file that is missing, truncated or not an image raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fsanet.data.errors import DataError
from fsanet.io import atomic_path

__all__ = [
    "IGNORE_COLOUR",
    "DataError",
    "colorize",
    "palette_to_pil",
    "read_image",
    "read_label",
    "write_image",
    "write_label",
]

log = logging.getLogger(__name__)

# Pillow raises these for truncated, corrupt or non-image files.
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError)


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open ``path`` and force a full decode, so that truncation is caught here and not later."""
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: truncated PNG/JPEG data fails here
            return img.copy()
    except _DECODE_ERRORS as err:
        raise DataError(
            f"{path}: cannot read {what} ({type(err).__name__}: {err}); the file is truncated or not an "
            f"image: delete it and re-run the download/prepare step that made it"
        ) from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB.

    Args:
        path: any format Pillow reads (PNG, JPEG, ...). Grey, palette and RGBA images are converted to RGB
            (alpha is dropped).

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        DataError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    img = _open_decoded(path, "image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DataError(
            f"{path}: image has mode {img.mode!r} (16/32-bit); expected an 8-bit RGB or grey image"
        )
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as class indices.

    Palette PNGs give their indices; grey ('L') PNGs give their values; 16-bit single-channel PNGs are
    accepted when every value fits in ``uint8``.

    Args:
        path: a single-channel PNG (mode 'L', 'P', or 16-bit 'I;16'/'I').

    Returns:
        ``uint8`` array of shape ``(H, W)``.

    Raises:
        DataError: the file is missing/truncated/unreadable, has colour channels, or holds values > 255.
    """
    path = Path(path)
    img = _open_decoded(path, "label")
    arr = np.array(img)
    if arr.ndim != 2:
        raise DataError(
            f"{path}: label map has mode {img.mode!r} with shape {arr.shape}; expected a single-channel "
            f"index PNG (mode 'L' or 'P'); colour-coded labels must be converted to class ids first"
        )
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(
                f"{path}: label values range {int(arr.min())}..{int(arr.max())} do not fit in uint8 "
                f"(class ids must be 0..254, 255 = ignore)"
            )
        arr = arr.astype(np.uint8)
    return arr


def write_image(path: str | Path, arr: np.ndarray, **save_kwargs) -> Path:
    """Write an RGB (or grey) ``uint8`` image atomically; the format follows the file suffix.

    Args:
        path: destination (``.png``, ``.jpg``, ...).
        arr: ``uint8`` array ``(H, W, 3)`` or ``(H, W)``.
        **save_kwargs: passed to ``PIL.Image.save`` (e.g. ``quality=95`` for JPEG).
    """
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"{path}: write_image needs uint8 (H,W,3) or (H,W), got {arr.dtype} {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    with atomic_path(path) as tmp:
        img.save(tmp, format=_format_of(path), **save_kwargs)
    return Path(path)


# Ignored pixels (label ``ignore_index``) in every coloured label map: white, which no dataset palette
# uses (VOC, COCO-Stuff and the synthetic set draw a class in black).
IGNORE_COLOUR = (255, 255, 255)


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """A label map ``(H, W)`` in its dataset's palette colours ``(H, W, 3)`` uint8.

    Args:
        label: class indices; ``ignore_index`` and values outside the palette are drawn in
            :data:`IGNORE_COLOUR` (white).
        palette: ``(K, 3)`` uint8 colours of classes ``0 … K-1``.
        ignore_index: the ignore label.
    """
    label = np.asarray(label)
    palette = np.asarray(palette, dtype=np.uint8)
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[...] = IGNORE_COLOUR
    valid = (label >= 0) & (label < len(palette)) & (label != ignore_index)
    out[valid] = palette[label[valid]]
    return out


def palette_to_pil(palette: np.ndarray) -> list[int]:
    """A ``(K, 3)`` uint8 palette as Pillow's flat 768-entry list (unused entries black)."""
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] > 256:
        raise ValueError(f"palette must be (K<=256, 3) uint8, got shape {palette.shape}")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    return flat.reshape(-1).tolist()


def write_label(path: str | Path, arr: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write a label map atomically as a PNG.

    Args:
        path: destination ``.png``.
        arr: ``uint8`` array ``(H, W)`` of class indices (255 = ignore).
        palette: optional ``(K, 3)`` uint8 colours; when given the PNG is a palette ('P') image whose
            indices are the labels (it then displays in colour and still reads back as indices).
    """
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: write_label needs a 2-D (H,W) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{path}: label values {int(arr.min())}..{int(arr.max())} do not fit in uint8")
        arr = arr.astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr))  # mode 'L'
    if palette is not None:
        img.putpalette(palette_to_pil(palette))  # 'L' -> 'P' with the same indices
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def _format_of(path: str | Path) -> str:
    ext = Path(path).suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
    if ext not in formats:
        raise ValueError(f"{path}: unknown image suffix {ext!r}; use one of {sorted(formats)}")
    return formats[ext]
