"""``data.instance_folders`` (Kaggle DSB 2018): one mask file per object, read into one target.

Each image is a folder ``<id>/images/<id><ext>`` with its objects in ``<id>/masks/*``, each
file read as any mask file is (:func:`seg_toolkit.data.masks.mask_ids`: 0 and one foreground
value, or ``data.mask_threshold`` / ``data.mask_values``). ``data.instance_target`` says what
target the objects make:

* ``union``: every object pixel is foreground. Touching objects merge into one blob, so the
  8-connected components of a prediction (``submission.instances``) cannot split them;
* ``borders``: as the U-Net paper (Ronneberger et al. 2015) separates touching cells, a pixel
  within ``data.instance_border_px`` pixels (Chebyshev distance: the ``2r+1`` square around it)
  of two different objects, or inside two overlapping objects, is **background**. Touching
  objects then lie ``2r`` pixels apart in the target, a model learns to predict that gap, and
  the components of its predictions are the separate objects the instance writer needs.
  Background, not void: a void border is not scored, so nothing would teach the gap (the DSB
  2018 winners likewise trained on the touching border as background, or as an extra class
  subtracted afterwards). Objects farther apart than one pixel are unchanged with ``r = 1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..config import Config
from .colors import VOID_ID
from .data_errors import ObjectOverlapError
from .io import DataError
from .object_files import ObjectSet, as_object_set, object_files, read_object_set

if TYPE_CHECKING:  # pragma: no cover
    from .sample import Sample

__all__ = ["instance_ids", "load_objects", "object_rows", "touching_borders", "check_truth_objects"]

def touching_borders(objects: ObjectSet | list[np.ndarray], radius: int) -> np.ndarray:
    """``bool (H, W)``: pixels within ``radius`` pixels (the ``2*radius+1`` square) of two different objects,
    and pixels inside two overlapping objects. ``objects``: an :class:`ObjectSet`, or boolean masks of one shape
    (at least one)."""
    from scipy import ndimage  # lazy: only instance targets need it

    if not isinstance(objects, ObjectSet):
        objects = as_object_set(objects, objects[0].shape)
    shape = objects.shape
    labels = np.zeros(shape, np.int32)
    count = np.zeros(shape, np.int32)
    for k, (box, crop) in enumerate(objects, start=1):
        labels[box][crop] = k
        count[box] += crop
    size = 2 * radius + 1
    if (count > 1).any():  # overlapping objects: one label per pixel would hide one, so count each object's reach
        reach = np.zeros(shape, np.int32)
        for (rows, cols), crop in objects:
            if not crop.size:
                continue
            y0, x0 = max(rows.start - radius, 0), max(cols.start - radius, 0)
            y1, x1 = min(rows.stop + radius, shape[0]), min(cols.stop + radius, shape[1])
            local = np.zeros((y1 - y0, x1 - x0), bool)
            local[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = crop
            reach[y0:y1, x0:x1] += ndimage.binary_dilation(local, np.ones((size, size), bool))
        return reach > 1
    # one label per pixel: a pixel is near two objects when its square holds two different labels
    big = len(objects) + 1
    hi = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
    return (hi > 0) & (lo < big) & (hi != lo)


def instance_ids(sample: Sample, cfg: Config) -> np.ndarray:
    """The target ids ``int32 (H, W)`` of an object folder: 1 = object, 0 = background, -1 = void, made as
    ``data.instance_target`` says (module doc). No object: an empty mask of the image's size."""
    d = cfg.data
    objects = read_object_set(sample, cfg)
    out = objects.union().astype(np.int32)
    if d.instance_target == "borders" and len(objects) > 1:
        out[touching_borders(objects, d.instance_border_px)] = 0
    if objects.void is not None:
        out[objects.void & (out == 0)] = VOID_ID
    return out


def load_objects(sample: Sample, cfg: Config, hw: tuple[int, int] | None = None) -> np.ndarray:
    """The truth objects of a sample as one label map for the object-matching metrics
    (:mod:`seg_toolkit.instance_metrics`): ``int32 (H, W)``, 0 = none, ``k`` = the k-th object file by name
    (``data.instance_folders``) or the k-th non-empty row (``data.rle_instances``: ``hw`` needed). Objects
    that overlap are refused (both competitions' solutions have none), naming the two; ``hw``: the size the
    scored prediction has (a different size is refused: objects are scored at the image's own size)."""
    if cfg.data.rle_instances and sample.rles is not None:
        return _row_objects(sample, cfg, hw)
    if not cfg.data.instance_folders or sample.mask is None:
        raise ValueError(f"id {sample.id!r}: truth objects come from data.instance_folders (one mask file per object) "
                         "or data.rle_instances (one row per object)")
    objects = read_object_set(sample, cfg)
    size = objects.shape
    if hw is not None and tuple(hw) != tuple(size):
        raise DataError(f"{sample.mask}: objects are {size[0]}x{size[1]}, the prediction {hw[0]}x{hw[1]}")
    labels = np.zeros(size, np.int32)
    for k, (box, crop) in enumerate(objects, start=1):
        taken = labels[box][crop]
        if taken.any():
            files = object_files(sample)
            other = files[int(taken[taken > 0][0]) - 1].name
            raise ObjectOverlapError(f"{sample.mask}: objects {other} and {files[k - 1].name} overlap at {int((taken > 0).sum())} "
                            "pixels; object-matching metrics need objects that do not overlap")
        labels[box][crop] = k
    return labels


def object_rows(sample: Sample, cfg: Config, hw: tuple[int, int]) -> list[tuple[np.ndarray, str]]:
    """``data.rle_instances``: the image's rows decoded, each ``(uint8 (H, W) mask, where it was listed)`` (an image
    listed without rows: none); a malformed row is a :class:`~seg_toolkit.data.io.RLERowError` naming it."""
    from ..rle import RLEError
    from .io import RLERowError
    from .masks import train_rle_spec

    spec = train_rle_spec(cfg)
    rows = sample.objects or ()
    try:
        return [(spec.decode(r, hw, w), w) for r, w in zip(rows, _row_wheres(sample))]
    except RLEError as e:
        raise RLERowError(str(e)) from None


def _row_wheres(sample: Sample) -> list[str]:
    """Where each of a ``data.rle_instances`` image's object rows was listed, as errors name it."""
    rows = sample.objects or ()
    return [f"{sample.where} (id {sample.id!r}), its object row {k + 1} of {len(rows)}" for k in range(len(rows))]


def _row_objects(sample: Sample, cfg: Config, hw: tuple[int, int] | None) -> np.ndarray:
    """``data.rle_instances``: each of the image's rows one object (an image listed without rows: none)."""
    from ..instance_metrics import stack_objects

    if hw is None:
        raise ValueError("load_objects: RLE rows need the image size hw")
    try:
        return stack_objects(object_rows(sample, cfg, tuple(hw)), tuple(hw))
    except ValueError as e:
        raise DataError(str(e)) from None


def check_truth_objects(samples: list[Sample], cfg: Config) -> None:
    """Before anything is written: every training image's truth objects (object files, or object rows compared
    run by run, nothing decoded) can be scored by an object-matching metric, i.e. no two overlap. Training takes
    overlapping objects (their union is the target), so without this the run stopped at the first validation of
    the fold holding one, after the folds before it had trained. Each image at fault is named."""
    from ..rle import RLEError, instance_overlap
    from .masks import train_rle_spec

    bad: list[str] = []
    spec = train_rle_spec(cfg)
    for s in samples:
        if cfg.data.instance_folders and s.mask is not None:
            try:
                load_objects(s, cfg)
            except ObjectOverlapError as e:  # any other DataError (an unreadable object file) is its own error
                bad.append(str(e))
        elif cfg.data.rle_instances and s.objects:
            where = _row_wheres(s)
            try:
                hit = instance_overlap([spec.runs(r, np.iinfo(np.int64).max, w) for r, w in zip(s.objects, where)])
            except RLEError:
                continue  # a malformed row: the reader names it when the image is read
            if hit is not None:
                bad.append(f"{where[hit[1]]}: overlaps its object row {hit[0] + 1} at pixel {hit[2] + spec.index_base}")
    if bad:
        raise DataError(f"{len(bad)} training image(s) have truth objects that overlap, which {cfg.metric.name} cannot "
                        f"score (a pixel would belong to two objects): {'; '.join(bad[:3])}"
                        + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
                        + ". Remove each overlap from one of its two objects (DSB 2018's stage-1 training masks had "
                          "a few), or leave the image out (data.exclude_ids)")
