"""Reading images and masks with errors that name the file and say what was expected."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SegToolkitError

log = logging.getLogger(__name__)

__all__ = ["DataError", "read_image", "read_mask", "image_size", "IMAGE_EXTS"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")


class DataError(SegToolkitError, ValueError):
    """Input data (an image, a mask, a CSV row) is not what the config says it should be."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused before decoding, image too large ({e})") from None
    except Exception as e:  # PIL raises several types for unreadable files
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise DataError(
            f"{path}: refused before decoding, {w}x{h} = {w * h} pixels is over data.max_image_pixels={max_pixels}"
        )
    try:
        im.load()
    except Exception as e:
        raise DataError(f"{path}: image data is truncated or corrupt ({type(e).__name__}: {e})") from None
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return h, w


def read_image(path: str | Path, in_channels: int = 3, max_pixels: int = 50_000_000) -> np.ndarray:
    """Read an image as ``uint8 (H, W, in_channels)``.

    Grayscale becomes RGB when 3 channels are asked for, RGBA keeps alpha only for 4;
    16-bit images are scaled to 8 bits.
    """
    path = Path(path)
    im = _open(path, max_pixels)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[in_channels]
    if im.mode != mode:
        im = im.convert(mode)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


#: PIL formats whose compression changes pixel values: a mask stored so is not what was drawn
LOSSY_FORMATS = ("JPEG", "MPO")


def read_mask(path: str | Path, max_pixels: int = 50_000_000, lossy_ok: bool = False) -> np.ndarray:
    """Read a single-channel mask (8- or 16-bit, or palette indices) as an integer ``(H, W)`` array.

    An RGB(A) mask is refused: a label map must hold class ids, not colours. A JPEG mask (by its
    content, whatever its extension) is refused unless ``lossy_ok`` (the config said how to read
    it: ``data.mask_threshold``).
    """
    path = Path(path)
    im = _open(path, max_pixels)
    if im.format in LOSSY_FORMATS and not lossy_ok:
        raise DataError(
            f"{path}: mask is a {im.format} file (lossy: compression noise changes pixel values near every edge, "
            "so the mask is not what was drawn); convert the masks to PNG, or for binary masks set "
            "data.mask_threshold (e.g. 128 for 0/255 masks)"
        )
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
        raise DataError(
            f"{path}: mask is {im.mode} ({len(im.getbands())} channels); expected a single-channel "
            "label map (mode L, P or 16-bit I;16) whose values are class ids"
        )
    if im.mode == "1":
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has shape {arr.shape}; expected (height, width)")
    return arr.astype(np.int32 if arr.dtype != np.uint8 else np.uint8, copy=False)
