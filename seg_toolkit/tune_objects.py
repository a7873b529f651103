"""Object-matching counts from out-of-fold predictions, for ``tune`` under ``instance_map`` / ``instance_f2``.

The pixel tables of :mod:`seg_toolkit.tune_tables` cannot score objects: a threshold that joins two
nuclei into one blob adds pixels that are true positives and loses two objects. This pass gives, per
image and at every (threshold, min_area) candidate, the counts the object scores need
(:func:`seg_toolkit.instance_metrics.scores_from_hits`): the hits at each IoU threshold and the number
of predicted objects; and per image the number of truth objects. The search in
:func:`seg_toolkit.tune_steps.search_sigmoid` then runs unchanged, with these in place of TP / FP
pixel counts (a closed gate zeroes both, which is the empty prediction), and its scores equal the
:class:`~seg_toolkit.evaluator.Evaluator`'s on :func:`~seg_toolkit.postprocess.apply_postprocess` masks.

Why a component's hits do not depend on the other components: they are disjoint, so removing the
small ones (min_area) changes no other component's intersection or union. Components are labelled
once per (image, threshold) on the whole mask, sizes counting void pixels as ``remove_small`` does;
intersections and unions leave void pixels out, as the Evaluator does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import IGNORE_INDEX
from .data import load_objects
from .instance_metrics import N_LEVELS, label_objects
from .tune_tables import OOFData, threshold_cut

__all__ = ["object_tables", "component_hits"]


def component_hits(truth: np.ndarray, labels: np.ndarray, n: int, void: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """For each component ``1..n`` of ``labels``: its hits ``bool (n, 10)`` (IoU with some truth object greater
    than (10 + k) / 20) and whether it counts ``bool (n,)`` (it has a non-void pixel)."""
    t, p = truth.ravel().astype(np.int64), labels.ravel().astype(np.int64)
    if void is not None:
        keep = ~void.ravel()
        t, p = t[keep], p[keep]
    p_size = np.bincount(p, minlength=n + 1)
    counted = p_size[1:] > 0
    hits = np.zeros((n, N_LEVELS), bool)
    both = (t > 0) & (p > 0)
    if not both.any():
        return hits, counted
    n_t = int(t.max())
    t_size = np.bincount(t, minlength=n_t + 1)
    pair, inter = np.unique(p[both] * (n_t + 1) + t[both], return_counts=True)
    pi, ti = pair // (n_t + 1), pair % (n_t + 1)
    union = t_size[ti] + p_size[pi] - inter
    k = np.arange(N_LEVELS, dtype=np.int64)
    np.logical_or.at(hits, pi - 1, 20 * inter[:, None] > (10 + k) * union[:, None])
    return hits, counted


def object_tables(data: OOFData, thresholds: Sequence[float], areas: Sequence[int],
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass: hits ``(N, 1, T, A, 10)``, predicted objects ``(N, 1, T, A)`` at every (threshold, min_area)
    candidate, and truth objects ``(N, 1)`` (binary: one class)."""
    n = len(data)
    cuts = [threshold_cut(t) for t in thresholds]
    hits = np.zeros((n, 1, len(cuts), len(areas), N_LEVELS), np.int64)
    n_pred = np.zeros((n, 1, len(cuts), len(areas)), np.int64)
    n_truth = np.zeros((n, 1), np.int64)
    for i, (item, q, truth) in enumerate(data.iterate("tune: objects")):
        objects = load_objects(item.sample, data.cfg, tuple(q.shape[1:]))
        void = truth[0] == IGNORE_INDEX
        void = void if void.any() else None
        kept = objects if void is None else np.where(void, 0, objects)
        n_truth[i, 0] = np.count_nonzero(np.bincount(kept.ravel(), minlength=1)[1:])
        for jt, cut in enumerate(cuts):
            labels, m = label_objects(q[0] >= cut)
            sizes = np.bincount(labels.ravel(), minlength=m + 1)[1:]  # every pixel, void too, as remove_small
            comp_hits, counted = component_hits(objects, labels, m, void)
            for ja, a in enumerate(areas):
                keep = sizes >= a if a > 1 else np.ones(m, bool)
                hits[i, 0, jt, ja] = comp_hits[keep].sum(0)
                n_pred[i, 0, jt, ja] = int(counted[keep].sum())
    return hits, n_pred, n_truth
