"""How much of the tuned CV is the tuning's own luck: post-processing tuned on some OOF images, scored on the others.

``tune`` picks thresholds, min_area and gates that maximise the CV on the OOF images, and then
reports the CV of those same images (``after``): an estimate biased upwards, by more the fewer the
images and the more candidates searched. The cross-fitted score removes that bias: the images are
split into groups; for each group the same search runs on the other groups' images only, and the
group is scored with what they chose; the groups' counts, each under its own parameters, are scored
together by the run's metric (exactly, as ``after`` is: per-image metrics average over all images,
``miou``, ``global_dice`` and pixel accuracy sum the confusion counts of all of them).

The groups are the run's folds when at least :data:`MIN_FOLDS` are done (so images a
``folds.method: group`` split keeps together stay together, and each group's predictions come from
a model the tuning did not see, as a test set's do); otherwise (one or two folds trained, e.g. under
``train.min_fold_epochs``) :data:`GROUPS` groups drawn from a seeded permutation of the images.

``postprocess.json`` keeps it as ``cross_fitted`` (``score``, how the groups were made and the
parameters each group's search chose, whose spread shows how stable the tuning is).

When tune compares several searches (the greedy chain and the joint search, split seeds), choosing the one
whose cross-fitted score is highest would leave that choice's luck in the score reported: on 15 images
whose best seed was a coin toss it read 0.577, the tuned score itself, where images no choice had seen
scored 0.489. :func:`cross_fitted_choice` makes the choice inside each group too: the search whose
cross-fitted score over the other groups alone is best gives the group's parameters (the nested score),
beside each search's own cross-fitted score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Counts", "crossfit_groups", "cross_fitted_choice", "GROUPS", "MIN_FOLDS", "MIN_IMAGES", "SEED"]

#: Random groups when fewer than MIN_FOLDS folds are done.
GROUPS = 5
MIN_FOLDS = 3
#: Fewer OOF images than this: no cross-fitted score (a group would hold one or two images).
MIN_IMAGES = 10
SEED = 0


@dataclass
class Counts:
    """Per-image counts of every OOF image under one post-processing: ``arrays``, each indexed by image
    first (binary / multilabel: TP and FP per image and class; multiclass: the per-image confusion), and
    ``score(arrays, rows=all)``, the run's metric of such arrays over the images ``rows``."""

    score: Callable[..., float]
    arrays: tuple[np.ndarray, ...]


def crossfit_groups(image_folds: Sequence[int], done_folds: Sequence[int], grouped: bool = False) -> tuple[np.ndarray, str] | None:
    """Each image's group (0..k-1) and how the groups were made; None with fewer than :data:`MIN_IMAGES` images.
    ``grouped`` (``folds.method: group / stratified_group``): images of one data group (a patient, a video) stay in
    one fold, and random groups would split them, tuning on an image's near-copies: the folds are the groups even when
    only 2 are done, and with 1 there is no cross-fitted score."""
    n = len(image_folds)
    if n < MIN_IMAGES:
        return None
    if len(done_folds) >= MIN_FOLDS or (grouped and len(done_folds) >= 2):
        index = {k: g for g, k in enumerate(done_folds)}
        return np.array([index[k] for k in image_folds], np.int64), "folds"
    if grouped:
        return None
    perm = np.random.default_rng(SEED).permutation(n)
    groups = np.empty(n, np.int64)
    groups[perm] = np.arange(n) % GROUPS
    return groups, f"random: {GROUPS} groups, seed {SEED}"


def cross_fitted_choice(groups: np.ndarray, how: str, searches: Mapping[str, Callable[[np.ndarray], tuple[object, Counts]]],
                        better: Callable[[float, float], bool]) -> tuple[dict[str, dict], dict]:
    """Each of ``searches`` cross-fitted (``search(rows)`` tunes on the images ``rows`` and returns its parameters and
    every image's counts under them; each group is scored with the parameters tuned without it), and the choice
    among them cross-fitted too.

    tune keeps the search of the best cross-fitted score; here each group's search is chosen the same way without
    the group: by each search's cross-fitted score over the other groups alone (searched on the images of neither
    the group nor the one scored: one search per pair of groups). The group is then scored with what that search
    tuned on all the other groups. With two groups there is no third to hold out, and the choice is by the score
    on the other group's images themselves. ``better(score, best)`` decides, a tie keeping the first search.
    Returns ``({name: that search's own cross-fitted dict}, the nested dict)``; the nested one's ``searches`` name
    the search each group took (its ``params``)."""
    names = list(searches)
    n_groups = int(groups.max()) + 1
    outer = [{n: searches[n](np.flatnonzero(groups != g)) for n in names} for g in range(n_groups)]
    pairs: dict[tuple[int, int, str], Counts] = {}  # searched without groups g and h (g < h): scored on either

    def inner_score(n: str, g: int) -> float:
        """Search ``n``'s cross-fitted score over the groups other than ``g``."""
        rest = [h for h in range(n_groups) if h != g]
        if len(rest) < 2:
            counts = outer[g][n][1]
            return float(counts.score(counts.arrays, np.flatnonzero(groups != g)))
        assembled: list[np.ndarray] | None = None
        for h in rest:
            key = (min(g, h), max(g, h), n)
            if key not in pairs:
                pairs[key] = searches[n](np.flatnonzero((groups != g) & (groups != h)))[1]
            assembled = _take(assembled, pairs[key], groups == h)
        assert assembled is not None
        return float(pairs[key].score(tuple(assembled), np.flatnonzero(groups != g)))

    def assemble(pick: Callable[[int], str]) -> tuple[float, list[dict], dict]:
        arrays: list[np.ndarray] | None = None
        chosen, rest = [], []
        for g in range(n_groups):
            params, counts = outer[g][pick(g)]
            arrays = _take(arrays, counts, groups == g)
            chosen.append(asdict(params))
            rest.append(float(counts.score(counts.arrays, np.flatnonzero(groups != g))))
        assert arrays is not None
        score_fn = outer[0][names[0]][1].score
        # for a choice made above this one (tune --tta's TTA set, nested_choice): each image's counts under its
        # group's parameters, and each group's parameters scored on the other groups' images (they were tuned there)
        return float(score_fn(tuple(arrays))), chosen, {COUNTS: Counts(score_fn, tuple(arrays)), REST: rest}

    per = {}
    for n in names:
        score, chosen, inner = assemble(lambda g, n=n: n)
        per[n] = {"score": score, "groups": how, "n_groups": n_groups, "params": chosen, **inner}
    if len(names) == 1:  # nothing to choose: the one search's own score (no pair searches)
        return per, {**per[names[0]], "searches": names * n_groups}
    picks = []
    for g in range(n_groups):
        best, best_score = names[0], inner_score(names[0], g)
        for n in names[1:]:
            score = inner_score(n, g)
            if better(score, best_score):
                best, best_score = n, score
        picks.append(best)
    score, chosen, inner = assemble(lambda g: picks[g])
    return per, {"score": score, "groups": how, "n_groups": n_groups,
                 "params": chosen, "searches": picks,
                 "choice": "nested: each group's search chosen by cross-fitted score without it", **inner}


#: keys of a cross-fitted dict that are not written to JSON (:func:`public`): the per-image counts and rest scores
COUNTS, REST = "_counts", "_rest"


def public(crossed: dict | None) -> dict | None:
    """A cross-fitted dict without its in-memory parts, as ``postprocess.json`` keeps it."""
    return None if crossed is None else {k: v for k, v in crossed.items() if k not in (COUNTS, REST)}


def nested_choice(groups: np.ndarray, crossed: Sequence[dict], better: Callable[[int, int, int], bool]) -> tuple[float, list[int]]:
    """The cross-fitted score of a choice among several tunings of the same images (``tune --tta``'s TTA sets, each
    tuned on its own OOF probabilities; ``crossed``: each one's cross-fitted dict), made inside each group without it:
    group g takes the tuning whose parameters tuned without g score best on the other groups' images
    (``better(g, i, j)``: whether tuning i beats j there, from each one's :data:`REST`), and is scored with that
    tuning's counts under them. Returns the score and each group's pick. Choosing on every image's tuned score
    (what tune --tta keeps) and reporting the winner's own cross-fitted score left that choice's luck in it."""
    n_groups = int(groups.max()) + 1
    picks, arrays = [], None
    for g in range(n_groups):
        best = 0
        for i in range(1, len(crossed)):
            if better(g, i, best):
                best = i
        picks.append(best)
        arrays = _take(arrays, crossed[best][COUNTS], groups == g)
    assert arrays is not None
    return float(crossed[0][COUNTS].score(tuple(arrays))), picks


def _take(arrays: list[np.ndarray] | None, counts: Counts, rows: np.ndarray) -> list[np.ndarray]:
    """``arrays`` (a copy of ``counts``' when None) with the images ``rows`` (a mask) taken from ``counts``."""
    if arrays is None:
        arrays = [a.copy() for a in counts.arrays]
    for whole, part in zip(arrays, counts.arrays):
        whole[rows] = part[rows]
    return arrays
