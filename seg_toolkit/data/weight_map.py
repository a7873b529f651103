"""The U-Net paper's weight map (Ronneberger et al. 2015, eq. 2): background pixels between two
close objects weigh more in the pixel cross-entropy, so the model learns the narrow gaps that keep
touching cells apart.

``w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` on the target's background pixels, 1 on
the others, where ``d1`` and ``d2`` are the Euclidean distances to the nearest and the second
nearest object (the paper: w0 = 10, sigma = 5 pixels). The paper's class-balancing ``w_c`` is left
to ``loss_params.bce.pos_weight``. With ``data.instance_target: borders`` the touching border pixels
are background in the target and inside an object, so they weigh about ``1 + w0``: the gap the
model must predict weighs most. Set by ``data.border_weight`` (w0) and ``data.border_sigma``; the
loss terms it weighs are ``bce`` and ``focal`` (:mod:`seg_toolkit.losses.terms`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..config import Config
from .io import DataError
from .object_files import ObjectSet, as_object_set, read_object_set

if TYPE_CHECKING:  # pragma: no cover
    from .sample import Sample

__all__ = ["border_weight_map", "sample_weight_map", "weight_reach"]


def weight_reach(sigma: float) -> int:
    """Pixels beyond which an object is not measured: ``d1 + d2 >= 6 sigma`` makes the term at most
    ``w0 * exp(-18)`` (1.5e-8 w0), below float32's resolution at 1, so the map equals the unbounded one."""
    return int(math.ceil(6.0 * sigma))


def border_weight_map(objects: ObjectSet | list[np.ndarray], background: np.ndarray, w0: float, sigma: float,
                      ) -> np.ndarray:
    """``float32 (H, W)``: ``1 + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` where ``background`` is true, 1 elsewhere.
    ``objects``: an :class:`~seg_toolkit.data.object_files.ObjectSet`, or boolean ``(H, W)`` masks, one per object
    (they may overlap); fewer than two objects: all 1. Each object's distance is measured only within
    :func:`weight_reach` pixels of its box (the rest cannot change the map), so the cost grows with the objects'
    boxes, not with the image times the objects."""
    from scipy import ndimage  # lazy: only instance targets need it

    shape = background.shape
    out = np.ones(shape, np.float32)
    if not isinstance(objects, ObjectSet):
        objects = as_object_set(objects, shape)
    placed = [(box, crop) for box, crop in objects if crop.any()]
    if w0 == 0 or len(placed) < 2:
        return out
    reach = weight_reach(sigma)
    d1 = np.full(shape, np.inf, np.float64)
    d2 = np.full(shape, np.inf, np.float64)
    for (rows, cols), crop in placed:
        y0, x0 = max(rows.start - reach, 0), max(cols.start - reach, 0)
        box = (slice(y0, min(rows.stop + reach, shape[0])), slice(x0, min(cols.stop + reach, shape[1])))
        outside = np.ones((box[0].stop - y0, box[1].stop - x0), bool)
        outside[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = ~crop
        d = ndimage.distance_transform_edt(outside)
        a, b = d1[box], d2[box]
        b[:] = np.where(d < a, a, np.minimum(b, d))  # the second nearest: the old nearest when d beats it
        np.minimum(a, d, out=a)
    near = background & np.isfinite(d2)
    out[near] += (w0 * np.exp(-((d1[near] + d2[near]) ** 2) / (2.0 * sigma * sigma))).astype(np.float32)
    return out


def _objects_of(sample: Sample, cfg: Config, target: np.ndarray) -> ObjectSet | list[np.ndarray]:
    """The sample's objects as boolean masks: its object files (``data.instance_folders``) or its rows
    (``data.rle_instances``), overlaps allowed (the target is their union). A pseudo-labelled image
    (``pseudo``: one row or soft file per image) has no truth objects: the 8-connected components of its
    target (>= 0.5) are its objects, as the submission's rows of that prediction would be."""
    hw = target.shape
    if cfg.data.instance_folders and sample.mask is not None:
        return read_object_set(sample, cfg)
    if sample.objects is None:  # a pseudo-labelled image: neither object files nor object rows
        from ..instance_metrics import label_objects

        labels, n = label_objects((target >= 0.5) & (target <= 1.0))  # void (IGNORE_INDEX) is no object
        return [labels == k for k in range(1, n + 1)]
    from .instances import object_rows

    return [m.astype(bool) for m, _ in object_rows(sample, cfg, hw)]


def sample_weight_map(sample: Sample, cfg: Config, target: np.ndarray) -> np.ndarray:
    """The weight map of one training sample at its image's size, ``float32 (H, W)``: :func:`border_weight_map`
    of its objects on the target's background (``target`` ``(H, W, 1)`` or ``(H, W)``: 0 background, 1
    object, void elsewhere; a soft pseudo-label's probabilities cut at 0.5)."""
    t = target[..., 0] if target.ndim == 3 else target
    objects = _objects_of(sample, cfg, t)
    shape = objects.shape if isinstance(objects, ObjectSet) else objects[0].shape if objects else t.shape
    if tuple(shape) != t.shape:
        raise DataError(f"{sample.mask}: objects are {shape[0]}x{shape[1]}, the target {t.shape[0]}x{t.shape[1]}")
    # background: below 0.5, the cut the objects are taken at (a soft pseudo-label's background is rarely exactly 0:
    # with t == 0 its gaps between objects had weight 1); void (IGNORE_INDEX) is neither
    return border_weight_map(objects, t < 0.5, cfg.data.border_weight, cfg.data.border_sigma)
