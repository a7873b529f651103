"""Reading mask files: single-channel class ids (8- or 16-bit, palette, ``.npy``), the channels of a
multi-channel file, or the colours of a colour mask; a lossy (JPEG, lossy WebP) mask is refused unless the config
says how to read it. Class ids are whole numbers >= 0: a float (mode F) mask holding other values and a signed
(mode I) mask holding negative values are refused, as ``.npy`` masks are. A 16-bit-per-channel RGB(A) PNG (which
Pillow reads as 8-bit) is read exactly for ``data.mask_channel`` and refused as a colour mask. Every error names the
file and what was expected. Images are read by :mod:`seg_toolkit.data.io`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .image_file import lossy_webp, color16, read_color16
from .io import DataError, PairSplit, _open, check_array_header, is_array_image

__all__ = ["read_mask", "read_mask_array", "LOSSY_FORMATS"]

#: PIL formats whose compression changes pixel values: a mask stored so is not what was drawn (a WebP file
#: is lossy when it holds VP8 data, :func:`~seg_toolkit.data.image_file.lossy_webp`; a TIFF when its compression
#: is one of :data:`LOSSY_TIFF`)
LOSSY_FORMATS = ("JPEG", "MPO")
#: TIFF compressions (PIL's names) that change pixel values
LOSSY_TIFF = ("jpeg", "tiff_jpeg", "webp")


def _refuse_lossy(path: Path, im, remedy: str) -> None:
    """A mask stored in a lossy format (by content, whatever the extension) is an error naming ``remedy``."""
    what = (im.format if im.format in LOSSY_FORMATS else "lossy WebP (VP8)" if im.format == "WEBP" and lossy_webp(path)
            else f"TIFF ({im.info['compression']} compression)" if im.format == "TIFF" and im.info.get("compression") in LOSSY_TIFF
            else None)
    if what:
        raise DataError(f"{path}: mask is a {what} file (lossy: compression noise changes pixel values near every "
                        f"edge, so the mask is not what was drawn); {remedy}")


_RGB_HINT = ("; if every channel holds the same class id (many Kaggle 0/255 masks are saved as RGB), set "
             "data.mask_channel: 0; if the colours are classes, set data.mask_format: colors with data.mask_colors")


def _whole_ids(path: Path, im) -> np.ndarray:
    """The values of a 32-bit (mode I or F) mask as int32 class ids: whole numbers >= 0, or an error naming them."""
    arr = np.asarray(im)
    if not arr.size:
        return arr.astype(np.int32)
    if im.mode == "F":
        bad = ~np.isfinite(arr) | (arr != np.floor(arr))
        if bad.any():
            shown = np.unique(arr[bad])[:5].tolist()
            raise DataError(f"{path}: float mask (PIL mode F) holds {int(bad.sum())} value(s) that are not whole numbers, "
                            f"e.g. {shown}; expected class ids (whole numbers >= 0), which a float mask would be read "
                            "as only by truncating; save the class ids as an 8- or 16-bit PNG")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        raise DataError(f"{path}: mask (PIL mode {im.mode}) holds negative values (min {lo:g}, "
                        f"{int((arr < 0).sum())} pixel(s)); expected class ids >= 0 (mark void with a value >= 0 and "
                        "data.ignore_index, or data.mask_values: {value: void})")
    if hi > np.iinfo(np.int32).max:
        raise DataError(f"{path}: mask (PIL mode {im.mode}) holds values up to {hi:g}; expected class ids")
    return arr.astype(np.int32)


def read_mask(path: str | Path, max_pixels: int = 50_000_000, lossy_ok: bool = False, exif: str | None = None) -> np.ndarray:
    """Read a single-channel mask (8- or 16-bit, or palette indices: :func:`_check_grey_palette`) as an integer ``(H, W)`` array.

    An RGB(A) mask is refused: a label map must hold class ids, not colours. A JPEG mask (by its
    content, whatever its extension) is refused unless ``lossy_ok`` (the config said how to read
    it: ``data.mask_threshold``). ``exif``: ``data.exif_orientation`` (:mod:`seg_toolkit.data.image_file`).
    """
    path = Path(path)
    if is_array_image(path):
        return _read_array_mask(path, max_pixels, channels=False)
    im = _open(path, max_pixels, exif)
    if not lossy_ok:
        _refuse_lossy(path, im, "convert the masks to PNG, or for binary masks set data.mask_threshold (e.g. 128 for "
                                "0/255 masks)")
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
        depth = ", 16 bits per channel" if color16(path) else ""
        raise DataError(
            f"{path}: mask is {im.mode} ({len(im.getbands())} channels{depth}); expected a single-channel "
            f"label map (mode L, P or 16-bit I;16) whose values are class ids{_RGB_HINT}"
        )
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("I", "F"):
        return _whole_ids(path, im)
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has shape {arr.shape}; expected (height, width)")
    if im.mode == "P":
        _check_grey_palette(path, im, arr)
    return arr.astype(np.int32 if arr.dtype != np.uint8 else np.uint8, copy=False)


def _check_grey_palette(path: Path, im, arr: np.ndarray) -> None:
    """A palette mask is read by its indices (VOC-style: the index is the class, the palette only colours it). When
    every palette entry the mask uses is a grey, though, the file shows a grey mask, and tools that quantize or save a
    0/255 mask as GIF put white at index 0: read by index, it would be the inverse of what it shows. So a grey palette
    must show black at index 0 only and greys that rise with their indices; otherwise the picture and the ids
    disagree, and the mask is refused, naming both."""
    palette = im.getpalette()
    if not palette:
        return
    table = np.asarray(palette, np.int64).reshape(-1, 3)
    used = np.flatnonzero(np.bincount(arr.ravel(), minlength=len(table)))
    if not used.size or used[-1] >= len(table):
        return
    colors = table[used]
    if not (colors == colors[:, :1]).all():  # a colour palette: the index is the class (VOC)
        return
    greys = colors[:, 0]
    if ((greys == 0) == (used == 0)).all() and (np.diff(greys) > 0).all():
        return
    shown = ", ".join(f"{i} shown as grey {g}" for i, g in zip(used[:6].tolist(), greys[:6].tolist()))
    raise DataError(f"{path}: palette mask whose palette is grey but does not rise with the indices ({shown}): read "
                    "by index (as palette masks are: the index is the class) it would not be the mask it shows, e.g. the "
                    "inverse of a 0/255 mask saved as GIF or quantized; save the masks as grey (mode L) PNGs of class "
                    "ids or 0/255, or set data.mask_format: colors with data.mask_colors listing the greys")


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
                    pair: PairSplit | None = None, exif: str | None = None) -> np.ndarray:
    """A mask file as an array, the label part only for a ``pair`` file.

    ``kind``: ``ids`` -> integer ``(H, W)`` (single-channel files only, as :func:`read_mask`);
    ``channels`` -> ``(H, W, C)`` of a multi-channel file (its channels as stored);
    ``colors`` -> ``uint8 (H, W, 3)`` RGB of a colour (RGB, RGBA or palette) file.
    ``exif``: ``data.exif_orientation`` (:mod:`seg_toolkit.data.image_file`).
    """
    if kind == "ids":
        arr = read_mask(path, max_pixels, lossy_ok, exif)
    elif is_array_image(path):
        if kind != "channels":
            raise DataError(f"{path}: a .npy mask holds class ids, not colours; data.mask_format: colors needs RGB image files")
        arr = _read_array_mask(Path(path), max_pixels, channels=True)
    elif kind in ("channels", "colors") and color16(path):  # Pillow would keep the high byte only
        if kind == "colors":
            raise DataError(f"{path}: colour mask of 16 bits per channel; data.mask_colors / the classes CSV hold 8-bit "
                            "[r, g, b] colours: save the masks as 8-bit RGB PNG, or read ids from one channel "
                            "(data.mask_channel)")
        arr = read_color16(Path(path), max_pixels, exif)
    else:
        path = Path(path)
        im = _open(path, max_pixels, exif)
        if not lossy_ok:
            _refuse_lossy(path, im, "for colour masks set data.mask_color_tolerance (nearest colour within that distance, "
                                    "farther -> void), or convert the masks to PNG" if kind == "colors" else
                          "convert the masks to PNG (class ids in a channel cannot be read back from a lossy file), or "
                          "for binary masks set data.mask_threshold")
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
