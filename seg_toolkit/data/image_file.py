"""Opening an image or mask file before its pixels are used: the size limit before decoding, the EXIF
orientation tag (``data.exif_orientation``), 16-bit-per-channel colour PNGs and TIFFs (which Pillow would read as
8-bit, keeping the high byte only: they are read exactly with OpenCV), lossy WebP files, and TIFFs Pillow would
read otherwise than stored (several pages, extra bands, an orientation tag: :func:`check_tiff`, refused).

``data.exif_orientation`` says what a file tagged with an EXIF orientation other than 1 (a phone photo
stored sideways; every viewer, OpenCV and annotation tool shows it turned) means:

* ``error`` (default): refused, naming the file, the tag and the two choices;
* ``apply``: turned as a viewer shows it (:func:`PIL.ImageOps.exif_transpose`), images and masks alike,
  and :func:`~seg_toolkit.data.io.image_size` reports the turned size;
* ``ignore``: the pixels as stored.

The readers take the choice as ``exif=``: every caller passes its config's (the data layer, the predictor,
the submission writer and checker, the audit), so test images are read exactly as the training images were;
a reader called without one refuses a turned file (``error``) rather than guess.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .data_errors import DataError

__all__ = ["EXIF_CHOICES", "exif_choice", "check_file", "check_tiff", "open_header", "open_image", "orientation",
           "unreadable",
           "oriented_size", "color16", "read_color16", "lossy_webp"]

EXIF_CHOICES = ("error", "apply", "ignore")
_ORIENTATION = 0x0112
#: EXIF orientations that turn (5..8) or mirror the stored pixels; 1 (and an absent or invalid tag) is as stored
_TURNED = {2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down", 5: "transposed",
           6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise"}


def exif_choice(exif: str | None) -> str:
    """``exif`` checked; None (a caller without a config) is ``error``: a turned file is refused, never guessed."""
    if exif is None:
        return "error"
    if exif not in EXIF_CHOICES:
        raise ValueError(f"data.exif_orientation must be one of {EXIF_CHOICES}, got {exif!r}")
    return exif


def check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")


_TIFF_ORIENTATION, _SAMPLES_PER_PIXEL, _NEW_SUBFILE_TYPE = 274, 277, 254


def check_tiff(im: Image.Image, path: Path) -> None:
    """A TIFF that Pillow would read other than it is stored, refused naming the file (every reader and the size from
    the header call this): several pages (a z-stack, a time series, one page per class: page 0 was read alone), more
    samples per pixel than Pillow's mode has (an 8-bit R, G, B, NIR file opens as RGB: the NIR band was dropped), or
    an orientation tag other than 1 (Pillow turns such TIFFs itself as it decodes them, scrambling some grey ones, so
    neither data.exif_orientation choice could be kept)."""
    if im.format != "TIFF":
        return
    tags = getattr(im, "tag_v2", {})
    pages, first_full = _full_pages(im)
    save = "save it as a .npy array (H, W, C) with data.image_ext: .npy and data.in_channels: C"
    if not first_full:
        raise DataError(f"{path}: a TIFF whose page 0 is a reduced-resolution page (a thumbnail or overview first), "
                        f"which would be read for the image: {save}, or save the full image first")
    if pages > 1:
        raise DataError(f"{path}: a TIFF of {pages} pages; one image per file is read (page 0 alone would be): {save}, "
                        "or one file per page")
    samples, bands = int(tags.get(_SAMPLES_PER_PIXEL, 1) or 1), len(im.getbands())
    if samples > bands:
        raise DataError(f"{path}: a TIFF of {samples} samples per pixel, which Pillow reads as {im.mode} ({bands} "
                        f"band(s)): the other {samples - bands} would be lost; {save}")
    tag = tags.get(_TIFF_ORIENTATION, 1)
    if tag not in (None, 1):
        raise DataError(f"{path}: TIFF orientation tag {tag}: Pillow turns such a TIFF as it reads it (and scrambles "
                        "some), so it is read neither as stored nor as shown; save the pixels as stored with "
                        "orientation 1 (tifffile.imwrite(path, tifffile.imread(path)))")


def _full_pages(im: Image.Image) -> tuple[int, bool]:
    """``(a TIFF's full-resolution pages, whether page 0 is one)``: reduced-resolution pages (NewSubfileType bit 0: a
    COG's or GeoTIFF's overviews, a thumbnail) and transparency masks (bit 2) are not images of their own. The header
    is left at page 0."""
    full = []
    try:
        for k in range(getattr(im, "n_frames", 1)):
            im.seek(k)
            full.append(not int(im.tag_v2.get(_NEW_SUBFILE_TYPE, 0) or 0) & 0b101)
    finally:
        im.seek(0)
    return sum(full), bool(full and full[0])


def unreadable(path: Path, e: Exception) -> DataError:
    """The error for a file Pillow cannot open; a TIFF's says which TIFFs Pillow does not read (it is not corrupt)."""
    hint = ""
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            if f.read(4) in _TIFF_SIGNATURES:
                hint = ("; a TIFF Pillow does not read (more than 4 bands, float colour, 16-bit grey + alpha, ...) "
                        "is read as a .npy array (H, W, C): data.image_ext: .npy and data.in_channels: C")
    return DataError(f"{path}: not a readable image ({type(e).__name__}: {e}){hint}")


def orientation(im: Image.Image, path: Path, exif: str | None) -> int:
    """The file's EXIF orientation 2..8 that ``exif`` (``data.exif_orientation``) applies, else 1; with
    ``error`` a turned file raises, naming the tag and the choices."""
    choice = exif_choice(exif)
    if choice == "ignore":
        return 1
    try:
        if im.format == "PNG" and "exif" not in im.info:  # Pillow would decode the image to look past IDAT
            data = _png_exif_chunk(path)
            tag = None if data is None else _exif_of(data).get(_ORIENTATION)
        else:
            tag = im.getexif().get(_ORIENTATION)
    except Exception as e:  # a truncated file (PNG reads its chunks to find an eXIf), a corrupt EXIF block
        raise DataError(f"{path}: image data is truncated or corrupt (reading its EXIF orientation: "
                        f"{type(e).__name__}: {e}; data.exif_orientation: ignore does not look at it)") from None
    if tag not in _TURNED:
        return 1
    if choice == "error":
        raise DataError(f"{path}: EXIF orientation tag {tag} ({_TURNED[tag]} when shown by viewers, OpenCV and "
                        "annotation tools); set data.exif_orientation: apply (turn images and masks as shown) or "
                        "ignore (read the pixels as stored)")
    return int(tag)


def _exif_of(data: bytes) -> Image.Exif:
    ex = Image.Exif()
    ex.load(data)
    return ex


def _png_exif_chunk(path: Path) -> bytes | None:
    """The data of a PNG's eXIf chunk, found by its chunk headers (nothing is decompressed); None without one."""
    with open(path, "rb") as f:
        f.seek(8)
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            size, kind = struct.unpack(">I", head[:4])[0], head[4:]
            if kind == b"eXIf":
                return f.read(size)
            if kind == b"IEND":
                return None
            f.seek(size + 4, 1)  # the data and its CRC


def oriented_size(tag: int, h: int, w: int) -> tuple[int, int]:
    """``(height, width)`` of a stored ``h`` x ``w`` file after its orientation ``tag``."""
    return (w, h) if tag in (5, 6, 7, 8) else (h, w)


def _open_unguarded(path: str | Path) -> Image.Image:
    """``Image.open`` (the header; nothing decoded) with PIL's own bomb guard off: its 89-megapixel warning and
    179-megapixel refusal at open would overrule ``data.max_image_pixels``, which the readers check before decoding."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@contextlib.contextmanager
def open_header(path: str | Path) -> Iterator[Image.Image]:
    """The file's header (size, mode, tags) for the ``with`` block, whatever its size (:func:`_open_unguarded`)."""
    with _open_unguarded(path) as im:
        yield im


def open_image(path: Path, max_pixels: int, exif: str | None = None) -> Image.Image:
    """A PIL image, decoded: refused before decoding when over ``max_pixels``, then turned by its EXIF
    orientation as ``exif`` says (module doc)."""
    check_file(path)
    try:
        im = _open_unguarded(path)  # a 100-megapixel image data.max_image_pixels allows was PIL's refusal
    except Exception as e:  # PIL raises several types for unreadable files
        raise unreadable(path, e) from None
    try:
        check_tiff(im, path)
    except DataError:
        im.close()
        raise
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
    tag = orientation(im, path, exif)
    if tag != 1:
        fmt = im.format
        im = ImageOps.exif_transpose(im)
        im.format = fmt  # the lossy-format check reads it
    return im


# ----------------------------------------------------------------------------- 16-bit colour files

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF, then BigTIFF


def color16(path: str | Path) -> bool:
    """A file of 16 bits per channel with more than one channel, which Pillow opens as 8-bit (the high byte of each
    value): a PNG, RGB, RGBA or grey + alpha (IHDR bit depth 16, colour type 2, 6 or 4), or a TIFF with 2 or more
    samples per pixel of more than 8 bits (48-bit RGB microscopy). Other files cost one 33-byte read."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError:
        return False
    if len(head) == 33 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24] == 16 and head[25] in (2, 4, 6)
    if head[:4] not in _TIFF_SIGNATURES:
        return False
    try:
        with open_header(path) as im:
            bits = im.tag_v2.get(258, (1,))
    except Exception:  # unreadable: the reader names it
        return False
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) >= 2 and max(bits) > 8


#: EXIF orientation -> the same turn on an (H, W, ...) array (as PIL.ImageOps.exif_transpose)
_NUMPY_TURN = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def turn_array(arr: np.ndarray, tag: int) -> np.ndarray:
    """``arr`` turned as EXIF orientation ``tag`` says (1: as it is)."""
    return np.ascontiguousarray(_NUMPY_TURN[tag](arr)) if tag in _NUMPY_TURN else arr


def read_color16(path: Path, max_pixels: int, exif: str | None = None) -> np.ndarray:
    """A :func:`color16` file exactly: ``uint16 (H, W, 3 or 4)`` in RGB(A) order (grey + alpha as RGBA with equal
    colour channels), turned by its EXIF orientation as ``exif`` says."""
    import cv2  # lazy: only these files need it

    check_file(path)
    try:
        with open_header(path) as im:  # the header: size limit and orientation tag before decoding
            check_tiff(im, path)
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(f"{path}: refused before decoding, {w}x{h} = {w * h} pixels is over "
                                f"data.max_image_pixels={max_pixels}")
            tag = orientation(im, path, exif)
    except DataError:
        raise
    except Exception as e:
        raise unreadable(path, e) from None
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        what = "nothing" if arr is None else f"{arr.dtype} {arr.shape}"
        raise DataError(f"{path}: 16 bits per channel, but OpenCV read {what}; the file is truncated or corrupt, or "
                        "stored in a way OpenCV does not read (save it as a 16-bit PNG or TIFF of 3 or 4 channels)")
    arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]  # BGR(A) -> RGB(A)
    return turn_array(arr, tag)


# ----------------------------------------------------------------------------- lossy WebP


def lossy_webp(path: str | Path) -> bool:
    """A WebP file holding lossy (VP8) image data: a ``VP8 `` chunk (a lossless file holds ``VP8L``), at the top
    level or in an animation frame."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False

    def chunks(start: int, end: int):
        pos = start
        while pos + 8 <= end:
            fourcc, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            yield fourcc, pos + 8, min(pos + 8 + size, end)
            pos += 8 + size + (size & 1)

    for fourcc, begin, end in chunks(12, len(data)):
        if fourcc == b"VP8 ":
            return True
        if fourcc == b"ANMF" and any(f == b"VP8 " for f, _, _ in chunks(begin + 16, end)):
            return True
    return False
