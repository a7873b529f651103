"""What one labelled or test sample is: the files and strings it comes from (no pixels).

A :class:`Sample` names where its target is, in exactly one of four ways: ``rles`` (csv
layout: one RLE string per output channel), ``mask`` (one mask file, an image|label file, or
with ``data.instance_folders`` a folder of object masks) or ``class_masks`` (multilabel, one
binary file per class: ``data.mask_per_class``); test samples have none. Pixels are read by
:func:`seg_toolkit.data.masks.load_target`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from .bands import bands_of
from .io import IMAGE_EXTS, DataError, PairSplit, read_image

__all__ = ["Sample", "labels_fingerprint", "check_id", "pair_of", "image_path", "instance_image", "read_config_image"]


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path | None = None  # folder layout
    rles: tuple[str, ...] | None = None  # csv layout: one string per output channel / class id 1..
    group: str | None = None
    where: str = ""  # where the sample was listed, for error messages
    pair: PairSplit | None = None  # image and label side by side in ``image`` (then ``mask`` is the same file)
    # data.mask_per_class: one binary file per class 1..C (None: no file, read as empty with missing_class_masks: empty)
    class_masks: tuple[Path | None, ...] | None = None
    # pseudo.soft: the teacher's probabilities, uint8 (C, H, W) .npy; the target is q / 255 (float)
    soft: Path | None = None
    # data.rle_instances (binary): the image's rows, one object each, as the object-matching metrics read them
    objects: tuple[str, ...] | None = None
    # csv layout: per channel, ``(file line, end)`` of each non-empty row, ``end`` one past its last pixel (0-based):
    # its rows are one unioned string by now, so a run past the image is named by its own line (check_rle_ends)
    row_ends: tuple[tuple[tuple[int, int], ...], ...] | None = None
    # pseudo-labels of a teacher with data.score_size: its rows (and soft file) are at this (height, width), resized to
    # the image's own size by the nearest pixel centre when read for training
    label_hw: tuple[int, int] | None = None


def pair_of(cfg: Config) -> PairSplit | None:
    """``data.pair_split`` / ``data.pair_split_at`` as the :class:`PairSplit` every sample of ``cfg`` carries."""
    d = cfg.data
    return PairSplit(d.pair_split.removeprefix("image_"), d.pair_split_at) if d.pair_split else None


def read_config_image(path: Path, cfg: Config, pair: PairSplit | None = None, in_channels: int | None = None) -> np.ndarray:
    """An image read as ``cfg``'s models see it (``data.in_channels``, ``image_range``, ``bands``,
    ``exif_orientation``), uint8 ``(H, W, C)``."""
    d = cfg.data
    return read_image(path, in_channels or d.in_channels, d.max_image_pixels, pair=pair, value_range=d.image_range,
                      bands=bands_of(cfg), exif=d.exif_orientation)


def check_id(image_id: str, where: str) -> str:
    """Refuse ids that could escape a folder or are not usable as file names."""
    if not image_id or image_id.strip() != image_id:
        raise DataError(f"{where}: id {image_id!r} is empty or has surrounding spaces")
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\x00" in image_id:
        raise DataError(f"{where}: id {image_id!r} contains a path separator or is a relative path; ids must be plain names")
    return image_id


def instance_image(folder: Path, image_id: str, ext: str) -> Path:
    """``data.instance_folders`` (DSB 2018): ``<folder>/<id>/images/<id><ext>``."""
    return folder / image_id / "images" / f"{image_id}{ext}"


def carries_ext(image_id: str) -> bool:
    """Whether an id ends with an image extension (Severstal's ``0002cc93b.jpg``): its file is the id itself."""
    return Path(str(image_id)).suffix.lower() in IMAGE_EXTS


def image_path(folder: Path, image_id: str, ext: str, bands=None) -> Path:
    """The image file of ``image_id``; some competitions' ids already carry the extension (Severstal: "0002cc93b.jpg").
    With ``bands`` (``data.bands``) the image is the folder ``<id>/``, named by its first band file."""
    if bands is not None:
        return bands.image(folder / image_id)
    if carries_ext(image_id):
        return folder / image_id
    return folder / f"{image_id}{ext}"


def labels_fingerprint(samples: list[Sample]) -> str:
    """SHA-256 of the training labels as listed: each id with its RLE strings (csv layout), else the names and sizes
    of its mask files (a folder of object masks: every file in it), so an edited ``train.csv`` row or a mask saved
    again is seen, while moving the data elsewhere is not (no paths, no times). ``folds.json`` keeps it: the folds a
    run trained are refused against changed labels (:func:`~seg_toolkit.data.folds.load_or_make_folds`)."""
    h = hashlib.sha256()

    def add(*parts: object) -> None:
        h.update("\x1f".join(map(str, parts)).encode() + b"\x1e")

    for s in sorted(samples, key=lambda x: x.id):
        add("id", s.id)
        for r in s.rles or ():
            add("rle", r)
        for f in [s.mask] + list(s.class_masks or ()):
            if f is None:
                add("none")
            elif f.is_dir():
                for q in sorted(f.iterdir()):
                    add(q.name, q.stat().st_size if q.is_file() else "dir")
            elif f.exists():
                add(f.name, f.stat().st_size)
    return h.hexdigest()
