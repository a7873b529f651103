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
from .instance_metrics import N_LEVELS, component_hits, label_objects
from .postprocess import split_objects
from .tensors import uint8_to_probs
from .tune_tables import OOFData, threshold_cut

__all__ = ["object_tables"]


def object_tables(data: OOFData, thresholds: Sequence[float], areas: Sequence[int], split_seed: float | None = None,
                  split_by: str = "distance") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass: hits ``(N, 1, T, A, 10)``, predicted objects ``(N, 1, T, A)`` at every (threshold, min_area)
    candidate, and truth objects ``(N, 1)`` (binary: one class); with ``split_seed`` the objects are cut apart
    as :func:`~seg_toolkit.postprocess.split_objects` cuts them (``split_by``) before min_area, as the predictor does."""
    n = len(data)
    cuts = [threshold_cut(t) for t in thresholds]
    hits = np.zeros((n, 1, len(cuts), len(areas), N_LEVELS), np.int64)
    n_pred = np.zeros((n, 1, len(cuts), len(areas)), np.int64)
    n_truth = np.zeros((n, 1), np.int64)
    for i, (_, q, truth) in enumerate(data.iterate("tune: objects")):
        objects = data.objects(i, q.shape[1:])
        void = truth[0] == IGNORE_INDEX
        void = void if void.any() else None
        probs = uint8_to_probs(q[0]) if split_seed is not None else None
        for jt, cut in enumerate(cuts):
            mask = q[0] >= cut
            labels, m = label_objects(mask if probs is None else split_objects(probs, mask, split_seed, split_by))
            sizes = np.bincount(labels.ravel(), minlength=m + 1)[1:]  # every pixel, void too, as remove_small
            comp_hits, counted, n_truth[i, 0] = component_hits(objects, labels, void)
            for ja, a in enumerate(areas):
                keep = sizes >= a if a > 1 else np.ones(m, bool)
                hits[i, 0, jt, ja] = comp_hits[keep].sum(0)
                n_pred[i, 0, jt, ja] = int(counted[keep].sum())
    return hits, n_pred, n_truth
