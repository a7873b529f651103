"""Reading mask files: single-channel class ids (8- or 16-bit, palette, ``.npy``), the channels of a
multi-channel file, or the colours of a colour mask; a lossy (JPEG) mask is refused unless the config says how
to read it. Every error names the file and what was expected. Images are read by :mod:`seg_toolkit.data.io`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import DataError, PairSplit, _open, check_array_header, is_array_image

__all__ = ["read_mask", "read_mask_array", "LOSSY_FORMATS"]

#: PIL formats whose compression changes pixel values: a mask stored so is not what was drawn
LOSSY_FORMATS = ("JPEG", "MPO")


def _refuse_lossy(path: Path, im, remedy: str) -> None:
    """A mask stored in a lossy format (by content, whatever the extension) is an error naming ``remedy``."""
    if im.format in LOSSY_FORMATS:
        raise DataError(f"{path}: mask is a {im.format} file (lossy: compression noise changes pixel values near every "
                        f"edge, so the mask is not what was drawn); {remedy}")


def read_mask(path: str | Path, max_pixels: int = 50_000_000, lossy_ok: bool = False) -> np.ndarray:
    """Read a single-channel mask (8- or 16-bit, or palette indices) as an integer ``(H, W)`` array.

    An RGB(A) mask is refused: a label map must hold class ids, not colours. A JPEG mask (by its
    content, whatever its extension) is refused unless ``lossy_ok`` (the config said how to read
    it: ``data.mask_threshold``).
    """
    path = Path(path)
    if is_array_image(path):
        return _read_array_mask(path, max_pixels, channels=False)
    im = _open(path, max_pixels)
    if not lossy_ok:
        _refuse_lossy(path, im, "convert the masks to PNG, or for binary masks set data.mask_threshold (e.g. 128 for 0/255 masks)")
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


def _read_array_mask(path: Path, max_pixels: int, channels: bool) -> np.ndarray:
    """An ``.npy`` mask: integers or booleans; ``(H, W)`` or ``(H, W, 1)`` of ids, or with ``channels`` ``(H, W, C)``."""
    arr = np.asarray(check_array_header(path, max_pixels))
    if arr.dtype.kind not in "biu":
        raise DataError(f"{path}: mask array of dtype {arr.dtype}; expected integers (class ids) or booleans")
    if channels:
        if arr.ndim != 3 or arr.shape[2] < 2:
            raise DataError(f"{path}: mask array of shape {arr.shape} has one channel but data.mask_channel says the ids "
                            "are in one channel of a multi-channel mask; remove data.mask_channel")
        return arr
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: mask array of shape {arr.shape}; expected (height, width) or (height, width, 1) class ids")
    if arr.dtype.kind == "b" or arr.dtype == np.uint8:
        return arr.astype(np.uint8)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(np.int32).max):
        raise DataError(f"{path}: mask array holds values {int(arr.min())}..{int(arr.max())}; expected class ids >= 0")
    return arr.astype(np.int32)


#: what each kind of mask file read by :func:`read_mask_array` may be (PIL modes)
_ID_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")
_MULTI_MODES = ("RGB", "RGBA", "LA", "CMYK")


def read_mask_array(path: str | Path, max_pixels: int = 50_000_000, lossy_ok: bool = False, kind: str = "ids",
                    pair: PairSplit | None = None) -> np.ndarray:
    """A mask file as an array, the label part only for a ``pair`` file.

    ``kind``: ``ids`` -> integer ``(H, W)`` (single-channel files only, as :func:`read_mask`);
    ``channels`` -> ``(H, W, C)`` of a multi-channel file (its channels as stored);
    ``colors`` -> ``uint8 (H, W, 3)`` RGB of a colour (RGB, RGBA or palette) file.
    """
    if kind == "ids":
        arr = read_mask(path, max_pixels, lossy_ok)
    elif is_array_image(path):
        if kind != "channels":
            raise DataError(f"{path}: a .npy mask holds class ids, not colours; data.mask_format: colors needs RGB image files")
        arr = _read_array_mask(Path(path), max_pixels, channels=True)
    else:
        path = Path(path)
        im = _open(path, max_pixels)
        if not lossy_ok:
            _refuse_lossy(path, im, "for colour masks set data.mask_color_tolerance (nearest colour within that distance, "
                                    "farther -> void), or convert the masks to PNG")
        if kind == "channels":
            if im.mode not in _MULTI_MODES:
                raise DataError(
                    f"{path}: mask is {im.mode} (one channel) but data.mask_channel says the ids are in one channel "
                    "of a multi-channel (RGB/RGBA) file; remove data.mask_channel for single-channel masks"
                )
            arr = np.asarray(im)
        elif kind == "colors":
            if im.mode not in ("RGB", "RGBA", "P"):
                raise DataError(
                    f"{path}: mask is {im.mode}; data.mask_format: colors expects an RGB, RGBA or palette file whose "
                    "pixel colours are class colours"
                )
            arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
        else:
            raise ValueError(f"kind must be ids, channels or colors, got {kind!r}")
    if pair is not None:
        arr = np.ascontiguousarray(arr[pair.boxes(*arr.shape[:2], path)[1]])
    return arr
