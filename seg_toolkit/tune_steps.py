"""The post-processing searches on out-of-fold counts: one per task, each greedy per class.

:func:`search_sigmoid` (binary / multilabel: threshold, then (threshold, min_area), then the empty
gate) and :func:`search_multiclass` (class weights of the argmax, then min_area per class) score
every candidate exactly from the tables of :mod:`seg_toolkit.tune_tables`. :mod:`seg_toolkit.tune`
runs them (over all OOF images and, for the cross-fitted score, over subsets), compares the
greedy chain with the joint search and writes ``postprocess.json``; its docstring says why each
step searches what it does.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np

from .config import Config, ConfigError
from .evaluator import scored_columns
from .instance_metrics import INSTANCE_METRICS
from .postprocess import PostParams, area_floor
from .tune_crossfit import Counts
from .tune_objects import object_tables
from .tune_weights import search_class_weights
from .tune_tables import (
    OOFData,
    area_tables,
    better,
    gate_open,
    move_removed,
    multiclass_score,
    multiclass_tables,
    sigmoid_score,
    threshold_tables,
)

log = logging.getLogger("seg_toolkit.tune")

__all__ = ["search_sigmoid", "search_multiclass"]


def _replace(tp: np.ndarray, fp: np.ndarray, k: int, tp_k: np.ndarray, fp_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the (N, C) counts with class k's column replaced."""
    tp, fp = tp.copy(), fp.copy()
    tp[:, k], fp[:, k] = tp_k, fp_k
    return tp, fp


def area_grid(cfg: Config) -> list[int]:
    """``postprocess.min_area_grid`` with each area raised to :func:`~seg_toolkit.postprocess.area_floor` (instance
    rows drop smaller objects whatever is tuned), without repeats."""
    floor = area_floor(cfg)
    return list(dict.fromkeys(max(int(a), floor) for a in cfg.postprocess.min_area_grid))


def _candidates(current: object, grid: Sequence) -> list:
    """The current value first, then the grid's values in order, without repeats."""
    out = [current]
    for v in grid:
        if v not in out:
            out.append(v)
    return out


def _step_log(step: str, before: float, after: float, values: dict) -> None:
    log.info("tune step %s: %.5f -> %.5f (%s)", step, before, after, ", ".join(f"{k}={v}" for k, v in values.items()))


def search_sigmoid(
    data: OOFData, start: PostParams, cfg: Config, gate_grid: Sequence[Optional[float]], metric: str, empty_score: str,
    rows: np.ndarray | None = None, tables: dict | None = None, joint: bool = True,
) -> tuple[PostParams, list[dict], dict[str, Callable[[np.ndarray], float]], Counts]:
    """Binary / multilabel: threshold, then min_area, then gate (with threshold), greedy per class.

    ``joint``: steps 2 and 3 search the threshold again beside min_area (and min_area beside the gate);
    without it each step keeps what the previous ones chose (the "greedy" chain: fewer candidates, less
    room to fit the tuning images' luck).

    ``rows``: the images whose score the search maximises (None: all; the cross-fitted estimate
    tunes on some and scores the others); ``tables``: the per-pass tables, shared between such
    searches (a dict filled on first use). Returns the counts of every image under the chosen
    parameters too."""
    quiet = rows is not None
    rows = slice(None) if rows is None else rows
    tables = {} if tables is None else tables
    c = data.num_classes
    cols = scored_columns(cfg.metric, cfg.data.task)  # metric.classes: what the score averages
    thr = [float(t) for t in start.threshold]
    area = [int(a) for a in start.min_area]
    gate = [None if g is None else float(g) for g in start.empty_gate]
    src = list(start.gate_source)
    presence = getattr(data, "presence", None)
    sources = ["max_prob", "classifier"] if presence is not None else ["max_prob"]
    if presence is None and "classifier" in [s_ for g, s_ in zip(gate, src) if g is not None]:
        raise ConfigError("tune: the starting post-processing gates on the classifier, but the OOF files hold no "
                          "classifier probabilities (oof/presence/)")
    thr_cands = [_candidates(thr[k], [float(t) for t in cfg.postprocess.threshold_grid]) for k in range(c)]
    all_thr = _candidates(thr[0], [t for cands in thr_cands for t in cands])
    col = {t: j for j, t in enumerate(all_thr)}

    area_cands = [_candidates(area[k], area_grid(cfg)) for k in range(c)]
    all_area = _candidates(area[0], [a for cands in area_cands for a in cands])
    acol = {a: j for j, a in enumerate(all_area)}
    # shared by the cross-fitted searches: they do not depend on what the searches choose; the component counts
    # depend on the split seed the search starts from (the objects it cuts apart), the threshold histograms do not
    if "threshold" not in tables:
        tables["threshold"] = threshold_tables(data, all_thr)
    seed = start.split_seed[0]
    if ("area", seed) not in tables:
        if metric in INSTANCE_METRICS:  # TP: hits per IoU threshold, FP: predicted objects, pos: truth objects
            *tables["area", seed], tables["pos", seed] = object_tables(data, all_thr, all_area, seed, start.split_by)
        else:
            tables["area", seed], tables["pos", seed] = area_tables(data, all_thr, all_area), tables["threshold"].pos
    tab, pos = tables["threshold"], tables["pos", seed]
    atp, afp = tables["area", seed]
    score = lambda tp, fp: sigmoid_score(tp[rows], fp[rows], pos[rows], tab.n_valid[rows], metric, empty_score, cols)  # noqa: E731
    search = "joint" if joint else "greedy"  # both searches run: the log says which one each step belongs to
    log_step = (lambda *a: None) if quiet else (lambda step, *a: _step_log(f"{step} ({search} search)", *a))

    def at(k: int, t: float, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Class k's counts at threshold t after removing its components smaller than a."""
        return atp[:, k, col[t], acol[a]], afp[:, k, col[t], acol[a]]

    def at_threshold(k: int, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Class k's counts at threshold t with its current min_area (step 1: the configured one)."""
        return at(k, t, area[k])

    def gated(k: int, g: Optional[float], tp_k: np.ndarray, fp_k: np.ndarray, source: str | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
        scores = presence if (source or src[k]) == "classifier" else tab.qmax
        open_ = gate_open(scores[:, k], g)
        return np.where(open_.reshape(-1, *[1] * (tp_k.ndim - 1)), tp_k, 0), np.where(open_, fp_k, 0)

    # current counts (N, C) with the config's parameters ((N, C, 10) hits for an object-matching metric)
    TP = np.zeros((len(data), c, *atp.shape[4:]), np.int64)
    FP = np.zeros((len(data), c), np.int64)
    for k in range(c):
        TP[:, k], FP[:, k] = gated(k, gate[k], *at_threshold(k, thr[k]))
    best = score(TP, FP)
    start_counts = (TP.copy(), FP.copy())
    steps = []

    def greedy(k: int, options: list[tuple[object, np.ndarray, np.ndarray]]) -> object:
        """Score each option for class k with the others fixed; the first option is the current
        value, and another replaces it only when strictly better (ties keep the earlier one)."""
        nonlocal best
        chosen, best_cols = None, None
        for value, tp_k, fp_k in options:
            s = score(*_replace(TP, FP, k, tp_k, fp_k))
            if best_cols is None or better(s, best):
                chosen, best_cols, best = value, (tp_k, fp_k), s
        TP[:, k], FP[:, k] = best_cols
        return chosen

    # 1) threshold (min_area and gate as configured)
    prev = best
    for k in range(c):
        thr[k] = greedy(k, [(t, *gated(k, gate[k], *at_threshold(k, t))) for t in thr_cands[k]])
    steps.append({"step": "threshold", "score": best, "threshold": list(thr)})
    log_step("threshold", prev, best, {"threshold": thr})

    # 2) min_area, with the threshold searched again beside it: the best (threshold, min_area) pair is often not
    # the best threshold without min_area (a lower cut keeps more of a true region and more specks, which min_area
    # then removes). The counts of every pair come from one pass (components labelled once per threshold)
    prev = best

    def pairs(k: int) -> list[tuple[float, int]]:  # the current pair first
        return [(t, a) for t in _candidates(thr[k], thr_cands[k]) for a in area_cands[k]]

    def after_area(k: int) -> list[tuple[float, int]]:  # step 3's (threshold, min_area) candidates
        return pairs(k) if joint else [(thr[k], area[k])]

    for k in range(c):
        step2 = pairs(k) if joint else [(thr[k], a) for a in area_cands[k]]
        thr[k], area[k] = greedy(k, [((t, a), *gated(k, gate[k], *at(k, t, a))) for t, a in step2])
    steps.append({"step": "min_area", "score": best, "min_area": list(area), "threshold": list(thr)})
    log_step("min_area", prev, best, {"min_area": area, "threshold": thr})

    # 3) empty gate on each source (max probability; the classifier when the model has one), searched with the
    # (threshold, min_area) pair: a gate usually pays off with a lower threshold (exact, from the same tables)
    prev = best
    by_source: dict[str, list[float]] = {s_: [] for s_ in sources}
    for k in range(c):
        options = []
        for g in _candidates(gate[k], list(gate_grid)):
            for s_ in ([src[k]] + [x for x in sources if x != src[k]]) if g is not None else [src[k]]:
                options += [((t, a, g, s_), *gated(k, g, *at(k, t, a), s_)) for t, a in after_area(k)]
        for s_ in sources:  # the best of each source alone (the others fixed), for the report
            by_source[s_].append(max(score(*_replace(TP, FP, k, tp_k, fp_k)) for (_, _, g, s2), tp_k, fp_k in options
                                     if s2 == s_ or g is None))
        thr[k], area[k], gate[k], src[k] = greedy(k, options)
    steps.append({"step": "empty_gate", "score": best, "empty_gate": list(gate), "gate_source": list(src),
                  "threshold": list(thr), "min_area": list(area), "best_by_source": by_source})
    log_step("empty_gate", prev, best, {"empty_gate": gate, "gate_source": src, "threshold": thr, "min_area": area,
                                         **{f"best with {s_}": [round(v, 5) for v in by_source[s_]] for s_ in sources}})

    def scorer(tp: np.ndarray, fp: np.ndarray) -> Callable[[np.ndarray], float]:
        """The fast score of these counts over a subset of images (rows)."""
        return lambda rows: sigmoid_score(tp[rows], fp[rows], pos[rows], tab.n_valid[rows], metric, empty_score, cols)

    fast = {"before": scorer(*start_counts), "after": scorer(TP, FP)}
    counts = Counts(lambda tp_fp, rows=slice(None): sigmoid_score(tp_fp[0][rows], tp_fp[1][rows], pos[rows],
                                                                  tab.n_valid[rows], metric, empty_score, cols), (TP, FP))
    return (PostParams(threshold=thr, min_area=area, empty_gate=gate, gate_source=src, split_seed=list(start.split_seed),
                       split_by=start.split_by),
            steps, fast, counts)


def search_multiclass(
    data: OOFData, start: PostParams, cfg: Config, metric: str, empty_score: str,
    rows: np.ndarray | None = None, tables: dict | None = None,
) -> tuple[PostParams, list[dict], dict[str, Callable[[np.ndarray], float]], Counts]:
    """Multiclass: with ``postprocess.class_weight_grid`` the argmax's class weights (:mod:`seg_toolkit.tune_weights`),
    then min_area per class 1..C-1 (0..C-1 with ``min_area_to: runner_up``; the argmax decides the class: no threshold,
    no gate). ``rows`` and
    ``tables`` as :func:`search_sigmoid`'s."""
    quiet = rows is not None
    rows = slice(None) if rows is None else rows
    tables = {} if tables is None else tables
    c = data.num_classes
    cols = scored_columns(cfg.metric, cfg.data.task)  # metric.classes: what the score averages
    score = lambda cm: multiclass_score(cm[rows], metric, empty_score, cols)  # noqa: E731
    skipped = {"skipped": "multiclass: the argmax decides the class"}
    steps: list[dict] = []
    weights, start_conf = list(start.class_weight), None
    grid = [float(w) for w in cfg.postprocess.class_weight_grid]
    if grid:
        weights, weighted_best, start_conf = search_class_weights(data, start, grid, score, tables)
        steps.append({"step": "threshold", "score": score(start_conf), **skipped})
        steps.append({"step": "class_weight", "score": weighted_best, "class_weight": list(weights)})
        if not quiet:
            _step_log("class_weight", steps[0]["score"], weighted_best, {"class_weight": weights})
    area = [int(a) for a in start.min_area]
    area_cands = [_candidates(area[k], area_grid(cfg)) for k in range(c)]
    all_area = _candidates(area[0], [a for cands in area_cands for a in cands])
    acol = {a: j for j, a in enumerate(all_area)}
    key = ("multiclass", tuple(weights), start.min_area_to)
    if key not in tables:
        tables[key] = multiclass_tables(data, all_area, weights, start.min_area_to)
    tab = tables[key]
    conf = tab.base.copy()
    for k in start.area_classes():
        idx, gone = tab.removed[k]
        move_removed(conf, idx, gone[:, acol[area[k]]], k)
    best = score(conf)
    if start_conf is None:
        start_conf = conf
        steps.append({"step": "threshold", "score": best, **skipped})

    prev = best
    for k in start.area_classes():
        idx, gone = tab.removed[k]
        cur = acol[area[k]]
        for a in area_cands[k][1:]:
            trial = conf.copy()
            move_removed(trial, idx, gone[:, acol[a]] - gone[:, cur], k)
            s = score(trial)
            if better(s, best):
                best, conf, cur, area[k] = s, trial, acol[a], a
    steps.append({"step": "min_area", "score": best, "min_area": list(area)})
    if not quiet:
        _step_log("min_area", prev, best, {"min_area": area})
    steps.append({"step": "empty_gate", "score": best, **skipped})
    scorer = lambda cm: lambda rows: multiclass_score(cm[rows], metric, empty_score, cols)  # noqa: E731
    fast = {"before": scorer(start_conf), "after": scorer(conf)}
    counts = Counts(lambda cm, rows=slice(None): multiclass_score(cm[0][rows], metric, empty_score, cols), (conf,))
    return PostParams(threshold=list(start.threshold), min_area=area, empty_gate=list(start.empty_gate),
                      gate_source=list(start.gate_source), class_weight=weights, min_area_to=start.min_area_to), steps, fast, counts
