"""Reading images, mask files and CSVs with errors that name the file and say what was expected.

Files are opened by :mod:`seg_toolkit.data.image_file`: the size limit before decoding, the EXIF orientation
(``data.exif_orientation``) and 16-bit-per-channel RGB(A) PNGs, read exactly (Pillow alone keeps the high byte).

An image and its label may share one file side by side (:class:`PairSplit`, ``data.pair_split``):
:func:`read_image` and :func:`image_size` then see only the image part, and
:func:`~seg_toolkit.data.mask_io.read_mask_array` only the label part, so every reader crops the same way.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..files import wide_csv_fields
from .data_errors import DataError, RLERowError
from .image_file import check_file as _check_file
from .image_file import check_tiff, color16, open_header, open_image, orientation, oriented_size, read_color16, unreadable

log = logging.getLogger(__name__)

__all__ = ["DataError", "RLERowError", "PairSplit", "read_image", "wide_values", "WIDE_MODES", "ARRAY_EXTS", "is_array_image", "sixteen_bit",
           "narrow_sixteen_bit", "image_size", "read_csv_strict",
           "IMAGE_EXTS", "check_array_header"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".npy")
#: image files that are numpy arrays ``(H, W)`` or ``(H, W, C)``, any number of channels (multispectral bands,
#: time steps), read with ``np.load(allow_pickle=False)``; everything else is read with PIL
ARRAY_EXTS = (".npy",)


def is_array_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in ARRAY_EXTS


def _open(path: Path, max_pixels: int, exif: str | None = None) -> Image.Image:
    """A decoded PIL image (:func:`~seg_toolkit.data.image_file.open_image`: size limit, EXIF orientation)."""
    return open_image(path, max_pixels, exif)


@dataclass(frozen=True)
class PairSplit:
    """An image and its label side by side in one file (pix2pix / Kaggle "Cityscapes Image Pairs").

    ``image``: where the image part is (``left``, ``right``, ``top`` or ``bottom``); the label
    is the other part. ``at``: the column (row for top/bottom) where the second part starts;
    ``None`` = the middle, which then must split the file into two equal parts.
    """

    image: str
    at: int | None = None

    def boxes(self, h: int, w: int, path: Path | str) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """``(image_box, label_box)``: index tuples into an ``(H, W, ...)`` array of the whole file."""
        horizontal = self.image in ("left", "right")
        n = w if horizontal else h
        if self.at is None:
            if n % 2:
                raise DataError(
                    f"{path}: {'width' if horizontal else 'height'} {n} is odd, so the file does not split into two "
                    "equal halves; set data.pair_split_at (the first column/row of the second part)"
                )
            at = n // 2
        else:
            at = self.at
        if not 0 < at < n:
            raise DataError(f"{path}: data.pair_split_at={at} is outside the file's {'width' if horizontal else 'height'} 1..{n - 1}")
        first, second = slice(0, at), slice(at, n)
        img, lab = (first, second) if self.image in ("left", "top") else (second, first)
        full = slice(None)
        return ((full, img), (full, lab)) if horizontal else ((img, full), (lab, full))


def check_array_header(path: Path, max_pixels: int) -> np.ndarray:
    """An ``.npy`` image (or band) as a memory map, checked from its header: 2 or 3 dimensions, numbers, not too large."""
    path = Path(path)
    _check_file(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # ValueError (a pickle, a bad header, a file shorter than its header says), OSError
        raise DataError(f"{path}: not a readable .npy array, or truncated ({type(e).__name__}: {e})") from None
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: array of shape {arr.shape}; expected (height, width) or (height, width, channels)")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: array of dtype {arr.dtype}; expected numbers (integers or floats)")
    h, w = arr.shape[:2]
    if h * w > max_pixels:
        raise DataError(f"{path}: refused before reading, {w}x{h} = {w * h} pixels is over data.max_image_pixels={max_pixels}")
    return arr


def image_size(path: str | Path, pair: PairSplit | None = None, exif: str | None = None) -> tuple[int, int]:
    """``(height, width)`` from the header only (of the image part, for a ``pair`` file), as :func:`read_image`
    returns it: turned by the EXIF orientation with ``exif: apply`` (``data.exif_orientation``)."""
    path = Path(path)
    try:
        if is_array_image(path):
            h, w = check_array_header(path, np.iinfo(np.int64).max).shape[:2]
        else:
            with open_header(path) as im:  # the size of a file over PIL's own limit too (the readers check theirs)
                check_tiff(im, path)
                h, w = oriented_size(orientation(im, path, exif), im.size[1], im.size[0])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:
        raise unreadable(path, e) from None
    if pair is not None:
        box = pair.boxes(h, w, path)[0]
        return len(range(h)[box[0]]), len(range(w)[box[1]])
    return h, w


#: PIL modes of images with more than 8 bits per value: 16-bit, 32-bit integer and 32-bit float
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def wide_values(path: str | Path, max_pixels: int = 50_000_000, bands=None,
                in_channels: int = 3) -> tuple[str, float, float] | None:
    """``(PIL mode, min, max)`` of an image with more than 8 bits per value, None for an 8-bit image: what
    ``data.image_range`` should span (``audit`` and training's first image report it). ``bands``
    (:class:`~seg_toolkit.data.bands.Bands`): the raw values of the folder's bands (None for the ash colour).
    A 16-bit-per-channel colour PNG is ``RGB;16`` / ``RGBA;16`` (its values, read exactly); its alpha counts
    only when ``in_channels`` is 4, since :func:`read_image` drops it otherwise (a 16-bit grey + alpha file's
    opaque alpha, 65535, would have stretched the range to the top). The values do not depend on the EXIF
    orientation, which is not looked at here."""
    path = Path(path)
    if bands is not None:
        from .bands import read_bands

        if bands.ash:
            return None
        arr = read_bands(path, bands, max_pixels)
        return "bands float32", float(arr.min()), float(arr.max())
    if is_array_image(path):
        arr = check_array_header(path, max_pixels)
        if arr.dtype == np.uint8 or arr.dtype.kind == "b":
            return None
        mode = f"npy {arr.dtype.newbyteorder('=')}"  # a big-endian uint16 is one too
    elif color16(path):
        arr = read_color16(path, max_pixels, "ignore")
        mode = "RGBA;16" if arr.shape[2] == 4 else "RGB;16"
        if arr.shape[2] == 4 and in_channels != 4:
            arr = arr[:, :, :3]  # the values read_image keeps
    else:
        im = _open(path, max_pixels, "ignore")
        if im.mode not in WIDE_MODES:
            return None
        mode, arr = im.mode, im
    arr = np.asarray(arr, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return mode, float(finite.min()) if finite.size else math.nan, float(finite.max()) if finite.size else math.nan


def sixteen_bit(mode: str) -> bool:
    """A :func:`wide_values` mode of 16-bit values (read over 0..65535 without ``data.image_range``)."""
    return mode.startswith("I;16") or mode in ("npy uint16", "RGB;16", "RGBA;16")


def narrow_sixteen_bit(mode: str, lo: float, hi: float) -> bool:
    """16-bit values spanning under a quarter of 0..65535: read over all of it, they keep under 64 grey levels
    (12-bit microscopy: 17), the case for ``data.image_range``."""
    return sixteen_bit(mode) and hi - lo < 65536 / 4


#: what :func:`_to_uint8` has said in this process (each kind once: every image of a set is read alike)
_SAID: set[str] = set()


def say_narrow(path: Path, lo: float, hi: float) -> None:
    """Warn, once per process, of a 16-bit image whose values (``lo..hi``) span under a quarter of 0..65535
    (:func:`narrow_sixteen_bit`): training's first image before anything is written, else any image read."""
    if "narrow" in _SAID:
        return
    _SAID.add("narrow")
    log.warning("%s: a 16-bit image with values %g..%g, read over 0..65535 as 0..%d of 0..255; if the images hold fewer "
                "bits (12-bit microscopy, or 8-bit values saved in 16-bit files), set data.image_range (`seg-toolkit "
                "audit` measures it over all files)", path, lo, hi, round(hi * 255 / 65535))


def _to_uint8(arr: np.ndarray, value_range: tuple[float, float], path: Path, default: bool = False) -> np.ndarray:
    """Raw values -> uint8: ``value_range`` maps linearly onto 0..255, clipped, rounded to nearest.

    Said once per process, naming the file, since every image is read so (training's first image is checked before
    epoch 1, but test images only here): most values clipped (``data.image_range`` that does not fit the files, e.g.
    [0, 1] on 8-bit images: all white), and with the ``default`` 16-bit range, values spanning under a quarter of it
    (a 16-bit file of 8-bit values is read nearly black)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{path}: image holds {int((~np.isfinite(arr)).sum())} NaN or infinite value(s); expected finite "
                        "values (fill them in the file)")
    lo, hi = float(value_range[0]), float(value_range[1])
    if arr.size and "clipped" not in _SAID:
        clipped = int(np.count_nonzero(arr > hi)) + int(np.count_nonzero(arr < lo))
        if clipped > arr.size // 2:
            _SAID.add("clipped")
            log.warning("%s: %d%% of the values lie outside data.image_range [%g, %g] (values %g..%g) and are clipped "
                        "to 0 or 255; the range does not fit these files (`seg-toolkit audit` measures it)", path,
                        100 * clipped // arr.size, lo, hi, float(arr.min()), float(arr.max()))
    if default and arr.size and "narrow" not in _SAID and narrow_sixteen_bit("I;16", float(arr.min()), float(arr.max())):
        say_narrow(path, float(arr.min()), float(arr.max()))
    scaled = (arr.astype(np.float64) - lo) * 255.0 / (hi - lo)
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def _no_range(path: Path, what: str, arr: np.ndarray) -> DataError:
    """The error for an image with no default range (32-bit, float): ``what`` names it, ``{span}`` its values."""
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    span = f"{float(finite.min()):g}..{float(finite.max()):g}" if finite.size else "none finite"
    return DataError(f"{path}: {what.format(span=span)} has no fixed range to read it over; set data.image_range: "
                     "[low, high], the raw values that become 0 and 255 for every image (`seg-toolkit audit` reports "
                     "the range over all files)")


def read_image(path: str | Path, in_channels: int = 3, max_pixels: int = 50_000_000,
               pair: PairSplit | None = None, value_range: Sequence[float] | None = None, bands=None,
               exif: str | None = None) -> np.ndarray:
    """Read an image as ``uint8 (H, W, in_channels)``.

    Grayscale becomes RGB when 3 channels are asked for, RGBA keeps alpha only for 4. Values
    (``value_range``, ``data.image_range``): ``[low, high]`` of the raw values maps linearly onto
    0..255, clipped, the same for every image (12-bit microscopy in 16-bit files: ``[0, 4095]``;
    for an 8-bit image it stretches every channel). Without it 8-bit images are read as they
    are and 16-bit ones over 0..65535; a 32-bit integer or float image is refused (each file
    would otherwise be scaled by its own range, so equal values would differ between images).
    With ``pair`` (a sample's ``Sample.pair``) only the image part of an image|label file is returned.
    With ``bands`` (:class:`~seg_toolkit.data.bands.Bands`, ``data.bands``) ``path`` is the first band file of a
    folder of bands, which are stacked (raw values over ``value_range``, or the ash false colour as it is).
    A 16-bit-per-channel RGB(A) PNG is read exactly (OpenCV) and over ``value_range`` as a 16-bit grey one.
    ``exif`` (``data.exif_orientation``: error, apply, ignore; :mod:`seg_toolkit.data.image_file`): what an
    EXIF orientation tag means.
    """
    path = Path(path)
    if bands is not None:
        return _read_band_image(path, in_channels, max_pixels, value_range, bands)
    if is_array_image(path):
        return _read_array_image(path, in_channels, max_pixels, pair, value_range)
    if color16(path):  # Pillow would keep only the high byte of each value
        wide = read_color16(path, max_pixels, exif)
        im = Image.fromarray(_to_uint8(wide, value_range or (0.0, 65535.0), path, default=value_range is None))
        value_range = None
    else:
        im = _open(path, max_pixels, exif)
    if im.mode in WIDE_MODES:
        arr = np.asarray(im)
        if value_range is None:
            if not im.mode.startswith("I;16"):
                kind = "32-bit float" if im.mode == "F" else "signed or 32-bit integer"  # Pillow reads int16 as I
                raise _no_range(path, f"a {kind} image (PIL mode {im.mode}; values {{span}} in this file)", arr)
            im = Image.fromarray(_to_uint8(arr, (0.0, 65535.0), path, default=True))
        else:
            im = Image.fromarray(_to_uint8(arr, value_range, path))
        value_range = None
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[in_channels]
    if im.mode != mode:
        im = im.convert(mode)
    arr = np.asarray(im, dtype=np.uint8)
    if value_range is not None:
        arr = _to_uint8(arr, value_range, path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pair is not None:
        arr = np.ascontiguousarray(arr[pair.boxes(*arr.shape[:2], path)[0]])
    return arr


def _read_array_image(path: Path, in_channels: int, max_pixels: int, pair: PairSplit | None,
                      value_range: Sequence[float] | None) -> np.ndarray:
    """An ``.npy`` image: its channels must be ``in_channels`` (none are made up or dropped); uint8 (and bool:
    0/255) as it is, uint16 over 0..65535, any other type over ``value_range``, which is required for it."""
    arr = np.asarray(check_array_header(path, max_pixels))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] != in_channels:
        first = ("; it looks channels-first (C, H, W): save it as (H, W, C), np.moveaxis(a, 0, -1)"
                 if arr.shape[0] == in_channels else "")
        raise DataError(f"{path}: array of shape {arr.shape} has {arr.shape[2]} channel(s); data.in_channels is "
                        f"{in_channels}{first}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8) * np.uint8(255)
    if value_range is None:
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # either byte order
            arr = _to_uint8(arr, (0.0, 65535.0), path, default=True)
        elif arr.dtype != np.uint8:
            raise _no_range(path, f"a {arr.dtype} array (values {{span}} in this file)", arr)
    else:
        arr = _to_uint8(arr, value_range, path)
    if pair is not None:
        arr = arr[pair.boxes(*arr.shape[:2], path)[0]]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _read_band_image(path: Path, in_channels: int, max_pixels: int, value_range: Sequence[float] | None,
                     bands) -> np.ndarray:
    from .bands import read_bands

    arr = read_bands(path, bands, max_pixels)
    if arr.shape[2] != in_channels:
        raise DataError(f"{path.parent}: {arr.shape[2]} band(s) make {arr.shape[2]} channel(s); data.in_channels is {in_channels}")
    if arr.dtype != np.uint8:
        if value_range is None:
            raise _no_range(path.parent, f"bands {', '.join(bands.files)} (values {{span}} in this folder)", arr)
        arr = _to_uint8(arr, value_range, path.parent)
    return np.ascontiguousarray(arr)


def _line(i: int, df: pd.DataFrame | None = None) -> int:
    """The file line of data row ``i`` of a CSV read by :func:`read_csv_strict` (``df``): pandas skips blank lines
    and a quoted field may span lines, so the row's own line is kept when it was read; else ``i + 2`` (the header
    is line 1)."""
    lines = df.attrs.get("lines") if df is not None else None
    return lines[i] if lines is not None and 0 <= i < len(lines) else i + 2


def read_csv_strict(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """Read a CSV as strings (empty fields stay ``""``) and check the needed columns exist.

    A UTF-8 byte-order mark and CRLF line ends are accepted; every failure names the file. A data row with more
    fields than the header (a trailing comma: pandas would read the first column as the row index, shifting every
    column by one) or fewer (a truncated line: pandas would read the missing fields as empty, an RLE column as an
    empty mask) is an error naming its line. Each row's file line is kept for the messages (:func:`_line`)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected the {what} file")
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); expected the {what} with a header line")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # extra fields: refused below, naming the line
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig",
                             index_col=False)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read {what} as CSV ({type(e).__name__}: {' '.join(str(e).split())})") from None
    lines = _row_lines(path, what)
    if len(lines) == len(df):  # the same rows as pandas read (else the messages count lines from the header)
        df.attrs["lines"] = lines
    missing = [c for c in columns if c not in df.columns]
    if missing:
        spaced = [c for c in df.columns if c != c.strip() and c.strip() in missing]  # SIIM: " EncodedPixels"
        hint = f"; note the spaces in {spaced[0]!r}: name the column exactly so" if spaced else ""
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; it has {', '.join(map(repr, df.columns))} "
            f"(set data.id_column / data.rle_column / data.class_column to match){hint}"
        )
    return df


def _row_lines(path: Path, what: str) -> list[int]:
    """The file line each data row of ``path`` starts on, the rows pandas reads (blank and whitespace-only lines
    skipped); a row with more or fewer fields than the header is a :class:`DataError` naming its line."""
    lines: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as f, wide_csv_fields():
        reader = csv.reader(f)
        try:
            header = next(reader, [])
            start = reader.line_num + 1
            for row in reader:
                if row and not (len(row) == 1 and not row[0].strip()):
                    if len(row) != len(header):
                        raise DataError(_ragged(path, what, start, row, header))
                    lines.append(start)
                start = reader.line_num + 1
        except csv.Error as e:  # a NUL byte: pandas read it, the line count cannot
            raise DataError(f"{path} line {reader.line_num}: not CSV as Python's csv module reads it ({e})") from None
    return lines


def _ragged(path: Path, what: str, line: int, row: list[str], header: list[str]) -> str:
    names = ", ".join(map(repr, header))
    if len(row) > len(header):
        extra = ", trailing comma" if row[len(header):] == [""] * (len(row) - len(header)) else ""
        return (f"{path} line {line}: {len(row)} fields{extra}, but the header has {len(header)} ({names}); every row "
                f"of the {what} must have the header's fields (remove the extra field)")
    return (f"{path} line {line}: {len(row)} field(s), but the header has {len(header)} ({names}); every row of the "
            f"{what} must have the header's fields (a truncated line? an empty field is written with its comma, e.g. "
            "'id,' for an empty mask)")


def _ext_hint(folder: Path, stem: str, key: str) -> str:
    """``; found 'x.jpg' there: set data.image_ext: '.jpg'`` when a file of that stem has another ending."""
    if not folder.is_dir():
        return f"; the folder {folder} does not exist"
    found = sorted(p.name for p in folder.glob(glob.escape(stem) + "*") if p.is_file())
    return f"; found {found[0]!r} there: set {key}: {found[0][len(stem):]!r}" if found else ""
