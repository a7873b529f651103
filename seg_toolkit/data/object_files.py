"""An image's object files (``data.instance_folders``: DSB 2018's ``<id>/masks/*.png``), read once and kept.

A DSB image has up to hundreds of object files, and decoding them was most of the time a training
item took (0.26 of 0.31 s for the 329 nuclei of one 520x696 image), every epoch. Each object is kept
as its bounding box and the boolean mask inside it (:class:`ObjectSet`: a nucleus is a few hundred
pixels), so every image of a competition's training set stays read in a few tens of MB, bounded by
:data:`CACHE_BYTES` per process (least recently used first out). A folder is read again when a file
in it is changed, added or removed, or under another data config.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..config import Config
from .colors import VOID_ID
from .io import DataError, image_size

if TYPE_CHECKING:  # pragma: no cover
    from .sample import Sample

__all__ = ["CACHE_BYTES", "ObjectSet", "as_object_set", "clear_kept", "object_files", "read_object_set"]

#: the most bytes of object sets one process keeps (each worker of a data loader has its own)
CACHE_BYTES = 256 << 20

Box = tuple[slice, slice]


@dataclass(frozen=True)
class ObjectSet:
    """Objects of one ``shape``: object ``k`` (1-based, in file or row order) covers ``crops[k-1]`` (bool) placed
    at ``boxes[k-1]``, its bounding box (an empty object: an empty box). ``void``: the void pixels (None: none).
    The arrays are shared: callers do not modify them."""

    shape: tuple[int, int]
    boxes: tuple[Box, ...]
    crops: tuple[np.ndarray, ...]
    void: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self) -> Iterator[tuple[Box, np.ndarray]]:
        return iter(zip(self.boxes, self.crops))

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.crops) + (0 if self.void is None else self.void.nbytes)

    def full(self, k: int) -> np.ndarray:
        """Object ``k`` (0-based) as a boolean ``shape`` mask."""
        out = np.zeros(self.shape, bool)
        out[self.boxes[k]] = self.crops[k]
        return out

    def union(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        for box, crop in self:
            out[box] |= crop
        return out


def _bounding(mask: np.ndarray) -> Box:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def as_object_set(masks: list[np.ndarray], shape: tuple[int, int], void: np.ndarray | None = None) -> ObjectSet:
    """Full-size boolean masks (CSV rows decoded, components of a pseudo label) as an :class:`ObjectSet`."""
    boxes = tuple(_bounding(m) for m in masks)
    return ObjectSet(tuple(shape), boxes, tuple(np.ascontiguousarray(m[b], dtype=bool) for m, b in zip(masks, boxes)), void)


def object_files(sample: Sample) -> list:
    """The object files of ``sample.mask`` (a folder), sorted by name; hidden files left out."""
    assert sample.mask is not None
    return sorted(p for p in sample.mask.iterdir() if p.is_file() and not p.name.startswith("."))


#: folder -> (its files' names, sizes and mtimes with the data config, its objects, their bytes), oldest first
_CACHE: OrderedDict[str, tuple[tuple, ObjectSet, int]] = OrderedDict()
_KEPT_BYTES = [0]  # the bytes of everything in _CACHE


def clear_kept() -> None:
    """Forget every kept object set (the next read of each folder decodes its files again)."""
    _CACHE.clear()
    _KEPT_BYTES[0] = 0


def read_object_set(sample: Sample, cfg: Config) -> ObjectSet:
    """The object files of ``sample.mask``, sorted by name. Each file must be binary (0 and one value) unless
    ``mask_threshold`` / ``mask_values`` say how to read it; files of different sizes are an error naming both.
    Kept after the first read (module doc): a file changed, added or removed since, or another data config,
    reads the folder again."""
    files = object_files(sample)
    folder = str(sample.mask)
    stamp = (repr(cfg.data), tuple((f.name, s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()]))
    kept = _CACHE.pop(folder, None)
    if kept is not None:
        _KEPT_BYTES[0] -= kept[2]
        if kept[0] == stamp:
            _CACHE[folder] = kept  # now the most recently used
            _KEPT_BYTES[0] += kept[2]
            return kept[1]
    value = _read(sample, files, cfg)
    _CACHE[folder] = (stamp, value, value.nbytes)
    _KEPT_BYTES[0] += value.nbytes
    while _KEPT_BYTES[0] > CACHE_BYTES and len(_CACHE) > 1:
        _KEPT_BYTES[0] -= _CACHE.popitem(last=False)[1][2]
    return value


def _read(sample: Sample, files: list, cfg: Config) -> ObjectSet:
    from .masks import mask_ids  # masks imports instances, which imports this module

    d = cfg.data
    one = dataclasses.replace(cfg, data=dataclasses.replace(d, instance_folders=False))  # how each file is read
    boxes, crops = [], []
    shape: tuple[int, int] | None = None
    void: np.ndarray | None = None
    for f in files:
        ids = mask_ids(dataclasses.replace(sample, mask=f), one)
        if d.mask_threshold is not None:
            fg = ids >= d.mask_threshold
        else:
            values = ids[ids > 0]
            if not d.mask_values and values.size and (values != values.flat[0]).any():
                raise DataError(f"{f}: object mask holds values {np.unique(values)[:10].tolist()} besides 0; expected 0 and "
                                "one foreground value (data.mask_threshold for lossy masks)")
            fg = ids > 0
        if shape is not None and fg.shape != shape:
            raise DataError(f"{f}: object mask is {fg.shape[0]}x{fg.shape[1]} but {files[0].name} is {shape[0]}x{shape[1]}")
        shape = fg.shape
        box = _bounding(fg)
        boxes.append(box)
        crops.append(np.ascontiguousarray(fg[box]))
        if (ids == VOID_ID).any():
            void = (ids == VOID_ID) if void is None else void | (ids == VOID_ID)
    if shape is None:  # no object file: the image's own size
        shape = image_size(sample.image, exif=d.exif_orientation)
    return ObjectSet(tuple(shape), tuple(boxes), tuple(crops), void)
