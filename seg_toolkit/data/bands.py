"""Images stored as a folder of band files (``data.bands``): one ``.npy`` array per spectral band, as the
Google Research contrails competition ships them (``<record_id>/band_08.npy`` .. ``band_16.npy``, each
``(H, W, T)`` float32 brightness temperatures over ``T`` time steps, and ``human_pixel_masks.npy`` beside them).

The image of a band folder is named by its first band file (``<id>/<files[0]>.npy``): that path is the
sample's ``image``, so every "does the image exist / how large is it" question reads one header, and the
sample's id is the folder's name. :func:`read_bands` stacks the named bands (at ``frame`` for time series)
into ``(H, W, C)``: raw values, which :func:`seg_toolkit.data.io.read_image` maps over ``data.image_range``
like any float image, or with ``ash`` the contrails false colour, whose ranges are fixed:

* R = band 15 - band 14 over -4..2 K, G = band 14 - band 11 over -4..5 K, B = band 14 over 243..303 K,

each clipped to 0..1 (the competition's own notebook, after Kulik 2019), here as uint8 rounded to nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from .io import DataError, check_array_header

__all__ = ["Bands", "bands_of", "band_image_files", "image_id_of", "read_bands", "ASH_BOUNDS"]

#: the ash false colour: (lower, upper) kelvin of R = b15 - b14, G = b14 - b11, B = b14
ASH_BOUNDS = ((-4.0, 2.0), (-4.0, 5.0), (243.0, 303.0))


@dataclass(frozen=True)
class Bands:
    files: tuple[str, ...]  # band file names without the extension, in channel order (ash: bands 11, 14, 15)
    ext: str  # data.image_ext
    frame: int | None  # the time step of (H, W, T) files; None: (H, W) files
    ash: bool

    def image(self, record: Path) -> Path:
        """The path that names the image of the band folder ``record``: its first band file."""
        return record / f"{self.files[0]}{self.ext}"

    def paths(self, image: Path) -> list[Path]:
        """Every band file of the folder whose first band file is ``image``."""
        return [image.parent / f"{f}{self.ext}" for f in self.files]


def bands_of(cfg: Config) -> Bands | None:
    """``data.bands`` as the :class:`Bands` every image read of ``cfg`` uses; None when images are files."""
    b = cfg.data.bands
    return Bands(tuple(b.files), cfg.data.image_ext, b.frame, b.ash) if b.files else None


def image_id_of(image: Path, bands: Bands | None) -> str:
    """The id of an image file: its stem, or for a band folder's first band file the folder's name."""
    return image.parent.name if bands is not None else image.stem


def band_image_files(folder: Path, bands: Bands) -> tuple[list[Path], list[Path]]:
    """``(images, incomplete)``: the first band file of every sub-folder of ``folder`` holding all the bands, in
    name order, and the sub-folders missing one (named by the first missing band file)."""
    images, incomplete = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        paths = bands.paths(bands.image(sub))
        missing = [p for p in paths if not p.is_file()]
        (incomplete if missing else images).append(missing[0] if missing else paths[0])
    return images, incomplete


def _band(path: Path, frame: int | None, max_pixels: int) -> np.ndarray:
    """One band as float32 ``(H, W)``: the file, or its time step ``frame``."""
    arr = check_array_header(path, max_pixels)
    if frame is None:
        if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[2] == 1):
            raise DataError(f"{path}: band of shape {arr.shape}; expected (height, width) without data.bands.frame "
                            "(set data.bands.frame for (height, width, time) files)")
        out = arr.reshape(arr.shape[:2])
    else:
        if arr.ndim != 3:
            raise DataError(f"{path}: band of shape {arr.shape}; data.bands.frame={frame} expects (height, width, time)")
        if frame >= arr.shape[2]:
            raise DataError(f"{path}: band of shape {arr.shape} has {arr.shape[2]} time steps; data.bands.frame is {frame}")
        out = arr[:, :, frame]
    out = np.asarray(out, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: band holds {int((~np.isfinite(out)).sum())} NaN or infinite value(s); expected finite values")
    return out


def read_bands(image: Path, bands: Bands, max_pixels: int) -> np.ndarray:
    """The bands of ``image``'s folder stacked ``(H, W, C)``: float32 raw values, or uint8 for ``ash``."""
    planes, paths = [], bands.paths(Path(image))
    for path in paths:
        plane = _band(path, bands.frame, max_pixels)
        if planes and plane.shape != planes[0].shape:
            raise DataError(f"{path}: band of {plane.shape[1]}x{plane.shape[0]} pixels; {paths[0].name} "
                            f"beside it is {planes[0].shape[1]}x{planes[0].shape[0]}")
        planes.append(plane)
    if not bands.ash:
        return np.stack(planes, axis=-1)
    b11, b14, b15 = planes
    out = np.empty(b14.shape + (3,), np.uint8)
    for c, (value, (lo, hi)) in enumerate(zip((b15 - b14, b14 - b11, b14), ASH_BOUNDS)):
        out[..., c] = np.floor(np.clip((value - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5)
    return out
