"""Object-matching metrics: Kaggle DSB 2018's mean average precision and Airbus's F2, over IoU 0.50..0.95.

Both competitions score objects, not pixels. Per image, every predicted object (an 8-connected component
of the predicted mask: what ``submission.instances`` writes as one row) is matched with the truth objects.
At each IoU threshold t in 0.50, 0.55, ..., 0.95 a predicted object is a hit when its IoU with a truth
object is **greater than** t (the evaluation pages' words); for t >= 0.5 a truth object can be hit by one
predicted object at most, so the matching is unique and no assignment problem arises. Then, at each t:

* ``instance_map`` (DSB 2018): ``TP / (TP + FP + FN)``;
* ``instance_f2`` (Airbus): ``5 TP / (5 TP + 4 FN + FP)`` (F-beta with beta = 2).

The image's score is the mean over the ten thresholds; the competition's score is the mean over images.
An image with neither truth nor predicted objects scores 1 (as TGS's metric, and the public Airbus
kernels); with truth objects and no prediction 0. The comparison ``IoU > (10 + k) / 20`` is done
exactly in integers (``20 * I > (10 + k) * U``), as :mod:`seg_toolkit.metrics` does for TGS.

Truth objects are a label map (0 = none, k = object k; objects must not overlap, as in both
competitions' solution files) with the void pixels given apart: a void pixel counts in no
intersection and no union, and is left out of the object sizes; the components are still found on
the whole predicted mask, so what is scored is what the instance writer submits. An object with no
non-void pixel is not counted.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["INSTANCE_METRICS", "label_objects", "stack_objects", "touching", "component_hits", "match_hits",
           "scores_from_hits", "image_match", "image_score"]

INSTANCE_METRICS = ("instance_map", "instance_f2")
N_LEVELS = 10  # IoU thresholds 0.50, 0.55, ..., 0.95
_EIGHT = np.ones((3, 3), bool)


def label_objects(mask: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, int]:
    """8-connected objects of a 2-D mask (nonzero = foreground): ``int32`` labels ``1..n`` (0 = none) and ``n``.
    Objects smaller than ``min_area`` pixels are dropped and the rest renumbered in order (as
    ``submission.min_instance_area`` drops their rows)."""
    from scipy import ndimage  # lazy: only instance metrics and instance rows need it

    labels, n = ndimage.label(np.asarray(mask) != 0, structure=_EIGHT)
    labels = labels.astype(np.int32, copy=False)
    if n and min_area > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_area
        keep[0] = False
        new = np.zeros(n + 1, np.int32)
        new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels, n = new[labels], int(keep.sum())
    return labels, int(n)


def stack_objects(masks: Iterable[tuple[np.ndarray, str]], hw: tuple[int, int]) -> np.ndarray:
    """One label map ``int32 hw`` of object masks given as ``(mask, where)`` (an instance row each: its object is
    the row, not a component of the union); empty masks are no object. Objects that overlap raise ValueError
    naming both ``where``s."""
    labels = np.zeros(hw, np.int32)
    names: list[str] = []
    for mask, where in masks:
        m = np.asarray(mask) != 0
        if not m.any():
            continue
        taken = labels[m]
        if taken.any():
            raise ValueError(f"{where}: overlaps {names[int(taken[taken > 0][0]) - 1]} at {int((taken > 0).sum())} "
                             "pixels; objects must not overlap")
        names.append(where)
        labels[m] = len(names)
    return labels


def touching(labels: np.ndarray) -> np.ndarray:
    """The objects (label numbers) of a label map with a pixel 8-adjacent to another object's: the ones a mask
    merges with a neighbour unless something keeps them apart (``data.instance_target: borders``,
    ``postprocess.split_seed``)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    big = int(labels.max(initial=0)) + 1
    hi = ndimage.maximum_filter(labels, size=3, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=3, mode="constant", cval=big)
    near = (labels > 0) & ((hi != labels) | ((lo != labels) & (lo < big)))
    return np.unique(labels[near])


def component_hits(truth: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per predicted object ``1..n`` (``n = pred.max()``): its hits ``bool (n, 10)`` (IoU with some truth object
    greater than (10 + k) / 20: one at most above 0.5), whether it counts ``bool (n,)`` (it has a non-void
    pixel), and the number of truth objects with a non-void pixel.

    ``truth`` / ``pred``: label maps of one shape (0 = none, objects numbered from 1; numbers may be unused);
    ``void``: pixels scored as neither (None: none)."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth objects {truth.shape} and predicted objects {pred.shape} must have the same shape")
    n_p = int(np.max(pred, initial=0))
    t, p = np.asarray(truth).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    if void is not None:
        keep = ~np.asarray(void, bool).ravel()
        t, p = t[keep], p[keep]
    n_t = int(t.max(initial=0))
    t_size = np.bincount(t, minlength=n_t + 1)
    p_size = np.bincount(p, minlength=n_p + 1)
    hits = np.zeros((n_p, N_LEVELS), bool)
    both = (t > 0) & (p > 0)
    if both.any():
        pair, inter = np.unique(p[both] * (n_t + 1) + t[both], return_counts=True)  # only the pairs that touch
        pi, ti = pair // (n_t + 1), pair % (n_t + 1)
        union = t_size[ti] + p_size[pi] - inter
        k = np.arange(N_LEVELS, dtype=np.int64)
        np.logical_or.at(hits, pi - 1, 20 * inter[:, None] > (10 + k) * union[:, None])
    return hits, p_size[1:] > 0, int((t_size[1:] > 0).sum())


def match_hits(truth: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """``(hits, n_truth, n_pred)``: ``hits`` ``int64 (10,)`` holds, at each IoU threshold (10 + k) / 20, the number
    of (truth, predicted) object pairs whose IoU is greater than it (each a true positive: the matching is
    one-to-one above 0.5); ``n_truth`` / ``n_pred`` count the objects with a non-void pixel (arguments as
    :func:`component_hits`)."""
    hits, counted, n_truth = component_hits(truth, pred, void)
    return hits.sum(0).astype(np.int64), n_truth, int(counted.sum())


def scores_from_hits(hits: np.ndarray, n_pred: np.ndarray, n_truth: np.ndarray, metric: str) -> np.ndarray:
    """Per-image scores ``float64 (...)`` from hits ``(..., 10)`` and object counts ``(...)`` (module doc)."""
    if metric not in INSTANCE_METRICS:
        raise ValueError(f"metric must be one of {INSTANCE_METRICS}, got {metric!r}")
    tp = np.asarray(hits, np.int64)
    n_pred = np.asarray(n_pred, np.int64)[..., None]
    n_truth = np.asarray(n_truth, np.int64)[..., None]
    fp, fn = n_pred - tp, n_truth - tp
    if metric == "instance_map":
        num, den = tp, tp + fp + fn
    else:
        num, den = 5 * tp, 5 * tp + 4 * fn + fp
    per_level = np.divide(num, den, out=np.ones(tp.shape, np.float64), where=den > 0)  # nothing on either side: 1
    return per_level.mean(-1)


def image_match(truth: np.ndarray, pred_mask: np.ndarray, void: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """:func:`match_hits` of ``pred_mask``'s 8-connected objects against the truth label map (small objects are
    post-processing's to drop: ``min_area``, ``submission.min_instance_area``)."""
    return match_hits(truth, label_objects(pred_mask)[0], void)


def image_score(truth: np.ndarray, pred_mask: np.ndarray, metric: str, void: np.ndarray | None = None) -> float:
    """One image's score: :func:`image_match`'s hits and object counts under ``metric``."""
    hits, n_truth, n_pred = image_match(truth, pred_mask, void)
    return float(scores_from_hits(hits, n_pred, n_truth, metric))
