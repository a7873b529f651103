"""Multiclass class weights tuned on OOF: the label is the argmax of ``weight[c] x probability[c]``.

A softmax model trained on few images under-predicts its rare, thin classes (CamVid's poles, signs
and pedestrians): their pixels' probabilities are often the second highest. A weight above 1 on such
a class wins some back; mIoU, which averages classes, can gain more there than the big classes lose.
The search is coordinate ascent over ``postprocess.class_weight_grid`` (class 0 stays at 1: the argmax
ignores a common scale), two rounds over classes 1..C-1, each candidate scored exactly: the per-image
confusion of :func:`~seg_toolkit.postprocess.apply_postprocess`'s own labels (with the starting
min_area) on the OOF probabilities, so the step's score is what ``evaluate`` and ``predict`` would get
on these files. Weights chosen here are then fixed while ``min_area`` is searched.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .config import IGNORE_INDEX
from .postprocess import PostParams, apply_postprocess
from .tensors import uint8_to_probs
from .tune_tables import better, confusion

__all__ = ["weighted_confusion", "coordinate_confusions", "search_class_weights", "ROUNDS", "CACHE_BYTES"]

#: passes over the classes
ROUNDS = 2
#: the per-image confusions of the weight vectors scored so far are kept (searches on other rows for the
#: cross-fitted score often ask for the same ones) until they hold this many bytes
CACHE_BYTES = 256 * 2**20


def weighted_confusion(data, weights: Sequence[float], min_area: Sequence[int], min_area_to: str = "background") -> np.ndarray:
    """Per-image confusion ``(N, C, C)`` (rows truth, void excluded) of the labels :func:`apply_postprocess`
    gives each OOF image with these class weights and min_areas (and where min_area's pixels go)."""
    c = data.num_classes
    params = PostParams(threshold=[0.5] * c, min_area=list(min_area), empty_gate=[None] * c, class_weight=list(weights),
                        min_area_to=min_area_to)
    out = np.zeros((len(data), c, c), np.int64)
    for i, (_, q, truth) in enumerate(data.iterate("tune: class weights")):
        label = apply_postprocess(uint8_to_probs(q), "multiclass", params)
        valid = truth != IGNORE_INDEX
        out[i] = confusion(truth[valid], label[valid], c)
    return out


def coordinate_confusions(data, weights: Sequence[float], k: int, candidates: Sequence[float]) -> np.ndarray:
    """Per-image confusions ``(G, N, C, C)`` for each candidate weight of class ``k``, the other weights fixed, in one
    pass (no min_area): the same labels as :func:`weighted_confusion`, bit for bit. Per pixel the other classes'
    weighted maximum ``m`` and its first index ``a`` are computed once; a candidate ``w`` labels the pixel ``k`` when
    ``float32(w x p_k) > m``, or equals it and ``k < a`` (``argmax`` takes the first maximum), else ``a``."""
    c = data.num_classes
    w = np.asarray(weights, np.float32)[:, None, None]
    cand = np.asarray(candidates, np.float32)
    others = [j for j in range(c) if j != k]
    out = np.zeros((len(cand), len(data), c, c), np.int64)
    for i, (_, q, truth) in enumerate(data.iterate("tune: class weights")):
        probs = uint8_to_probs(q)
        rest = probs[others] * w[others]
        a = np.asarray(others)[rest.argmax(0)]
        m = rest.max(0)
        valid = truth != IGNORE_INDEX
        t, a_v, m_v, pk = truth[valid], a[valid], m[valid], probs[k][valid]
        for g, wk in enumerate(cand):
            v = pk * wk
            out[g, i] = confusion(t, np.where((v > m_v) | ((v == m_v) & (k < a_v)), k, a_v), c)
    return out


def search_class_weights(data, start: PostParams, grid: Sequence[float], score: Callable[[np.ndarray], float],
                         tables: dict) -> tuple[list[float], float, np.ndarray]:
    """Coordinate ascent from ``start.class_weight`` over ``grid`` (classes 1..C-1, :data:`ROUNDS` rounds; a
    candidate replaces the current weight only when ``score`` of its confusions is strictly higher). Returns
    the weights, their score and the per-image confusions of ``start``'s weights (the search's "before")."""
    cache = tables.setdefault("class_weight", {})
    fast = all(a <= 1 for a in start.min_area)  # a starting min_area > 1 needs each candidate's components

    def keep(key, value: np.ndarray) -> np.ndarray:
        if sum(v.nbytes for v in cache.values()) + value.nbytes <= CACHE_BYTES:
            cache[key] = value
        return value

    def candidates_of(weights: list[float], k: int, values: list[float]) -> np.ndarray:
        """(G, N, C, C): the per-image confusions of each value of class k's weight."""
        key = (tuple(weights[:k]), tuple(weights[k + 1:]), k, tuple(values))
        if key in cache:
            return cache[key]
        if fast:
            return keep(key, coordinate_confusions(data, weights, k, values))
        return keep(key, np.stack([weighted_confusion(data, weights[:k] + [v] + weights[k + 1:], start.min_area,
                                                          start.min_area_to) for v in values]))

    weights = list(start.class_weight)
    values = [float(w) for w in grid]
    # the start's confusions come out of the first coordinate's pass (class 1, multiclass has at least 2 classes):
    # its current weight joins that pass's candidates, so the start costs no pass of its own
    opening = values if weights[1] in values else values + [weights[1]]
    first = candidates_of(weights, 1, opening)[opening.index(weights[1])]
    best = score(first)
    for r in range(ROUNDS):
        moved = False
        for k in range(1, data.num_classes):
            tried = opening if (r, k) == (0, 1) else values  # round 0's class 1: the pass above, from the cache
            for v, conf in zip(tried, candidates_of(weights, k, tried)):
                if v == weights[k]:
                    continue
                s = score(conf)
                if better(s, best):
                    best, weights, moved = s, weights[:k] + [v] + weights[k + 1:], True
        if not moved:
            break
    return weights, best, first
