"""Post-processing search on out-of-fold predictions: thresholds, minimum area, empty gate.

``tune_postprocess(cfg)`` reads the OOF probabilities of the completed folds (never a test
prediction or a test image), searches the post-processing parameters that maximise the
configured CV metric and writes them to ``run_dir/postprocess.json``, which the predictor
reads through :func:`seg_toolkit.postprocess.load_params`.

Steps, in order, each greedy per class with the other classes held fixed:

1. ``threshold`` per class from ``postprocess.threshold_grid``;
2. ``min_area`` per class from ``postprocess.min_area_grid``, searched as (threshold, min_area)
   pairs: the best min_area depends on the threshold, and a threshold chosen without it can
   miss a much better pair (on 24 binary images a greedy chain kept (0.5, 60) at dice 0.448
   where (0.6, 20) scores 0.524);
3. ``empty_gate`` per class (binary / multilabel): the class of an image is left empty
   unless its gate score reaches the gate. The score is the class's max probability, or,
   for a model trained with the empty-mask classifier (``model.classifier``), the
   classifier's probability (``oof/presence/``): both sources are searched, the better
   kept (``gate_source``), and the step's ``best_by_source`` reports each one's best
   score, the comparison of the two gates on OOF. A gate usually pays off with a *lower*
   threshold than the one chosen without it, so this step searches (threshold, min_area,
   gate) together; that is exact, from the same tables.

Steps 2 and 3 search the threshold again (the ``joint`` search, as described); ``postprocess.search:
greedy`` keeps each step's values fixed in the later steps instead (fewer candidates). They over-fit
differently: on TGS fold 0's 750 OOF images the joint search scored 0.004 higher cross-fitted, on the
demo's 64 it scored 0.001 lower and 0.022 lower on the hidden test. ``auto`` (the default) runs both and
keeps the one with the better cross-fitted score (:mod:`seg_toolkit.tune_crossfit`: each image scored
with what tuning on the others chose), reported under ``search`` in ``postprocess.json``.

Every candidate list also holds the class's current value (from the config), so a step
never lowers the score. Multiclass predictions are the argmax over classes, so there is no
threshold and no gate: only ``min_area`` is searched (components of class ``c >= 1``
smaller than it become background, as :func:`~seg_toolkit.postprocess.apply_postprocess`
does).

Why greedy per class is sound: for binary / multilabel every metric is a function of per
(image, class) counts, and a class's counts depend only on that class's parameters; with
``dice`` / ``iou`` / ``tgs_map`` the score is the mean over (image, class) pairs and with
``miou`` / ``global_dice`` the mean over classes, so the classes separate (with ``empty_score: skip`` the
number of scored pairs depends on the prediction, which is why each candidate is scored
by the exact global metric rather than a per-class share). Multiclass classes do not
separate (removed pixels move to class 0), and are handled the same way: exact global
score, one class changed at a time.

The counts behind every step come from :mod:`seg_toolkit.tune_tables`: one pass over the
uint8 OOF files per step, a few integers per image, class and candidate kept, so the search
is exact and memory-bounded however many images the run has.

The scores in the report: ``before`` and ``after`` are computed with
:class:`seg_toolkit.evaluator.Evaluator` on the masks :func:`apply_postprocess` makes, the
same way ``cv.json`` is computed (so with the default post-processing, ``before`` equals
``cv.json``'s score); the per-step scores come from the counts through
:func:`seg_toolkit.metrics.scores_from_counts` / :func:`~seg_toolkit.metrics.mean_iou` /
:func:`~seg_toolkit.metrics.pixel_accuracy`, and the fast path is checked against the
Evaluator at ``before`` and ``after``.

Choosing the TTA transforms and merge mode is :func:`seg_toolkit.tta_search.choose_tta`
(``seg-toolkit tune --tta``): it needs the fold models, since the OOF files hold one
(un-augmented) prediction per image.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import Config, ConfigError
from .evaluator import Evaluator, resolve_metric_name
from .postprocess import PostParams, apply_postprocess, params_from_config
from .files import read_json, write_json
from .run import Run
from .run_lock import run_lock
from .tensors import uint8_to_probs
from .tune_crossfit import Counts, cross_fitted, crossfit_groups
from .tune_weights import search_class_weights
from .tune_tables import (
    DEFAULT_MEMORY_BUDGET,
    OOFData,
    area_tables,
    better,
    gate_open,
    move_to_background,
    multiclass_score,
    multiclass_tables,
    sigmoid_score,
    threshold_tables,
)

log = logging.getLogger(__name__)

__all__ = ["tune_postprocess", "GATE_GRID"]

#: Empty-gate candidates (None = no gate). A gate at or below a class's threshold changes nothing.
GATE_GRID: tuple[Optional[float], ...] = (None, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


# ----------------------------------------------------------------------------- search helpers

def _replace(tp: np.ndarray, fp: np.ndarray, k: int, tp_k: np.ndarray, fp_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the (N, C) counts with class k's column replaced."""
    tp, fp = tp.copy(), fp.copy()
    tp[:, k], fp[:, k] = tp_k, fp_k
    return tp, fp


def _candidates(current: object, grid: Sequence) -> list:
    """The current value first, then the grid's values in order, without repeats."""
    out = [current]
    for v in grid:
        if v not in out:
            out.append(v)
    return out


# ----------------------------------------------------------------------------- the search


def tune_postprocess(
    cfg: Config,
    run_dir: Path | None = None,
    *,
    gate_grid: Sequence[Optional[float]] = GATE_GRID,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    oof_dir: Path | None = None,
    write: bool = True,
    cross_fit: bool | None = None,
) -> dict:
    """Tune thresholds, min_area and the empty gate on the OOF predictions; write ``postprocess.json``.

    ``run_dir`` defaults to ``cfg.run_dir``. Candidates come from ``postprocess.threshold_grid``,
    ``postprocess.min_area_grid`` and ``gate_grid``, each plus the config's value. Returns the
    report that ``run_dir/postprocess.json`` holds: ``params`` (the tuned values, as
    :func:`load_params` reads them), ``before`` / ``after`` (CV score with the config's / the
    tuned post-processing), ``steps`` (the score and values after each step), ``fold_scores``
    and what was searched. Never reads test images or test predictions.

    ``oof_dir`` (default the run's ``oof/``) and ``write=False`` let ``tune --tta`` tune each
    TTA candidate's OOF probabilities without touching the run's files. ``cross_fitted``: the
    tuned score without the tuning's optimism (:mod:`seg_toolkit.tune_crossfit`; None with
    ``cross_fit=False``, default ``postprocess.cross_fit``, or too few images).
    """
    t0 = time.perf_counter()
    run = Run(run_dir) if run_dir is not None else Run.of(cfg)
    own = oof_dir is None  # the run's own OOF files (not a tune --tta candidate's): not while another process rewrites them
    with run_lock(run, f"seg-toolkit tune {run.dir}") if own else nullcontext():
        if own:
            from .oof import check_oof_complete

            check_oof_complete(run)
        task = cfg.data.task
        metric = resolve_metric_name(cfg.metric.name, task)
        empty_score = cfg.metric.empty_score
        before_params = params_from_config(cfg)
        _check_grids(cfg, gate_grid)
        data = OOFData(cfg, run.dir, memory_budget, oof_dir)

        tables: dict = {}  # one pass per table, shared by the search and its cross-fitted repeats

        def search(rows: np.ndarray | None, mode: str):
            if task == "multiclass":
                return _search_multiclass(data, before_params, cfg, metric, empty_score, rows, tables)
            return _search_sigmoid(data, before_params, cfg, gate_grid, metric, empty_score, rows, tables,
                                   joint=mode == "joint")

        cross_fit = cfg.postprocess.cross_fit if cross_fit is None else cross_fit
        grouped = cfg.folds.method in ("group", "stratified_group")  # a data group's images must stay on one side
        groups = crossfit_groups([it.fold for it in data.items], data.folds, grouped) if cross_fit else None
        everything = np.arange(len(data))
        tried = {}
        for mode in _search_modes(cfg.postprocess.search, task, groups is not None):
            params, steps, fast, _ = search(None, mode)
            crossed = cross_fitted(*groups, lambda rows: search(rows, mode)[::3]) if groups is not None else None
            tried[mode] = (params, steps, fast, crossed)
        chosen = _choose_search(tried)
        params, steps, fast, crossed = tried[chosen]
        fast_before, fast_after = fast["before"](everything), fast["after"](everything)
        fold_rows = {k: np.array([i for i, it in enumerate(data.items) if it.fold == k]) for k in data.folds}

        scored = _evaluate(data, cfg, {"before": before_params, "after": params})
        before, after = scored["before"], scored["after"]
        for name, quick, exact in (("before", fast_before, before), ("after", fast_after, after)):
            if not (math.isnan(quick) and math.isnan(exact)) and not abs(quick - exact) <= 1e-9:
                raise RuntimeError(f"tune: the fast {name} score {quick!r} disagrees with the Evaluator's {exact!r} (a bug)")

        report = {
            "metric": metric,
            "task": task,
            "n_images": len(data),
            "folds": data.folds,
            "cv_json_score": _cv_json_score(run),
            "before": before,
            "after": after,
            "gain": after - before,
            "cross_fitted": crossed,
            "search": {"setting": cfg.postprocess.search, "chosen": chosen, "compared": {
                mode: {"after": t[2]["after"](everything), "cross_fitted": t[3]["score"] if t[3] else None}
                for mode, t in tried.items()}},
            "steps": steps,
            "fold_scores": {"folds": data.folds, **{name: [fast[name](rows) for rows in fold_rows.values()] for name in ("before", "after")}},
            "before_params": asdict(before_params),
            "candidates": {
                "threshold": list(cfg.postprocess.threshold_grid),
                "min_area": list(cfg.postprocess.min_area_grid),
                "empty_gate": list(gate_grid) if task != "multiclass" else [],
            },
            "oof_in_memory": data.cache_enabled,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        result = {"params": asdict(params), **report}
        if write:
            write_json(run.postprocess_json, result)
            cf = f" (cross-fitted {crossed['score']:.5f}: tuned on other images, {crossed['groups']})" if crossed else ""
            log.info("tune: %s %.5f -> %.5f%s on %d OOF images with the %s search; wrote %s", metric, before, after, cf,
                     len(data), chosen, run.postprocess_json)
            if len(tried) > 1:
                log.info("tune: search chosen by cross-fitted score: %s", ", ".join(
                    f"{m} {t[3]['score']:.5f} (tuned {t[2]['after'](everything):.5f})" for m, t in tried.items()))
        return result


def _search_modes(setting: str, task: str, can_cross_fit: bool) -> list[str]:
    """The searches to run: ``auto`` runs both the greedy chain and the joint search when their cross-fitted
    scores can be compared, else the joint one; multiclass has one search (min_area, and class weights)."""
    if task == "multiclass":
        return ["min_area"]
    if setting == "auto":
        return ["greedy", "joint"] if can_cross_fit else ["joint"]
    return [setting]


def _choose_search(tried: dict) -> str:
    """The search whose parameters scored best on images they were not tuned on (the cross-fitted score);
    a tie keeps the first tried (the greedy chain: fewer candidates). With one search, that one.

    Choosing the larger of two cross-fitted scores leaves a little optimism in the one reported (the max
    of two noisy estimates); far less than the tuned score's own, which searches hundreds of candidates."""
    modes = list(tried)
    if len(modes) == 1:
        return modes[0]
    best = modes[0]
    for mode in modes[1:]:
        if better(tried[mode][3]["score"], tried[best][3]["score"]):
            best = mode
    return best


def _check_grids(cfg: Config, gate_grid: Sequence[Optional[float]]) -> None:
    p = cfg.postprocess
    if not p.threshold_grid or not p.min_area_grid:
        raise ConfigError("postprocess.threshold_grid and postprocess.min_area_grid need at least one value")
    for t in list(p.threshold_grid) + list(p.threshold):
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"postprocess.threshold / threshold_grid: {t} is not a probability in [0, 1]")
    for a in list(p.min_area_grid) + list(p.min_area):
        if a < 0:
            raise ConfigError(f"postprocess.min_area / min_area_grid: {a} is negative")
    for g in list(gate_grid) + [p.empty_gate]:
        if g is not None and not 0.0 <= g <= 1.0:
            raise ConfigError(f"empty gate {g} is not a probability in [0, 1]")


def _cv_json_score(run: Run) -> float | None:
    try:
        return float((read_json(run.cv_json) or {})["score"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def _step_log(step: str, before: float, after: float, values: dict) -> None:
    log.info("tune step %s: %.5f -> %.5f (%s)", step, before, after, ", ".join(f"{k}={v}" for k, v in values.items()))


def _search_sigmoid(
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

    area_cands = [_candidates(area[k], [int(a) for a in cfg.postprocess.min_area_grid]) for k in range(c)]
    all_area = _candidates(area[0], [a for cands in area_cands for a in cands])
    acol = {a: j for j, a in enumerate(all_area)}
    if "threshold" not in tables:  # shared by the cross-fitted searches: they do not depend on what the searches choose
        tables["threshold"] = threshold_tables(data, all_thr)
        tables["area"] = area_tables(data, all_thr, all_area)
    tab = tables["threshold"]
    atp, afp = tables["area"]
    score = lambda tp, fp: sigmoid_score(tp[rows], fp[rows], tab.pos[rows], tab.n_valid[rows], metric, empty_score)  # noqa: E731
    log_step = (lambda *a: None) if quiet else _step_log

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
        return np.where(open_, tp_k, 0), np.where(open_, fp_k, 0)

    # current counts (N, C) with the config's parameters
    TP = np.zeros((len(data), c), np.int64)
    FP = np.zeros_like(TP)
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
        return lambda rows: sigmoid_score(tp[rows], fp[rows], tab.pos[rows], tab.n_valid[rows], metric, empty_score)

    fast = {"before": scorer(*start_counts), "after": scorer(TP, FP)}
    counts = Counts(lambda tp_fp: sigmoid_score(*tp_fp, tab.pos, tab.n_valid, metric, empty_score), (TP, FP))
    return PostParams(threshold=thr, min_area=area, empty_gate=gate, gate_source=src), steps, fast, counts


def _search_multiclass(
    data: OOFData, start: PostParams, cfg: Config, metric: str, empty_score: str,
    rows: np.ndarray | None = None, tables: dict | None = None,
) -> tuple[PostParams, list[dict], dict[str, Callable[[np.ndarray], float]], Counts]:
    """Multiclass: with ``postprocess.class_weight_grid`` the argmax's class weights (:mod:`seg_toolkit.tune_weights`),
    then min_area per class 1..C-1 (the argmax decides the class: no threshold, no gate). ``rows`` and
    ``tables`` as :func:`_search_sigmoid`'s."""
    quiet = rows is not None
    rows = slice(None) if rows is None else rows
    tables = {} if tables is None else tables
    c = data.num_classes
    score = lambda cm: multiclass_score(cm[rows], metric, empty_score)  # noqa: E731
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
    area_cands = [_candidates(area[k], [int(a) for a in cfg.postprocess.min_area_grid]) for k in range(c)]
    all_area = _candidates(area[0], [a for cands in area_cands for a in cands])
    acol = {a: j for j, a in enumerate(all_area)}
    key = ("multiclass", tuple(weights))
    if key not in tables:
        tables[key] = multiclass_tables(data, all_area, weights)
    tab = tables[key]
    conf = tab.base.copy()
    for k in range(1, c):
        idx, gone = tab.removed[k]
        move_to_background(conf, idx, gone[:, acol[area[k]]], k)
    best = score(conf)
    if start_conf is None:
        start_conf = conf
        steps.append({"step": "threshold", "score": best, **skipped})

    prev = best
    for k in range(1, c):
        idx, gone = tab.removed[k]
        cur = acol[area[k]]
        for a in area_cands[k][1:]:
            trial = conf.copy()
            move_to_background(trial, idx, gone[:, acol[a]] - gone[:, cur], k)
            s = score(trial)
            if better(s, best):
                best, conf, cur, area[k] = s, trial, acol[a], a
    steps.append({"step": "min_area", "score": best, "min_area": list(area)})
    if not quiet:
        _step_log("min_area", prev, best, {"min_area": area})
    steps.append({"step": "empty_gate", "score": best, **skipped})
    scorer = lambda cm: lambda rows: multiclass_score(cm[rows], metric, empty_score)  # noqa: E731
    fast = {"before": scorer(start_conf), "after": scorer(conf)}
    counts = Counts(lambda cm: multiclass_score(cm[0], metric, empty_score), (conf,))
    return PostParams(threshold=list(start.threshold), min_area=area, empty_gate=list(start.empty_gate),
                      gate_source=list(start.gate_source), class_weight=weights), steps, fast, counts


# ----------------------------------------------------------------------------- exact scores


def _evaluate(data: OOFData, cfg: Config, params: dict[str, PostParams]) -> dict[str, float]:
    """Score each parameter set with :class:`Evaluator` on :func:`apply_postprocess` masks, as
    ``cv.json`` scores the OOF files. Torch runs on one thread meanwhile: the tensors are one
    image each, and on a busy machine intra-op threads made this pass 20x slower."""
    task, c = cfg.data.task, cfg.data.num_classes
    evaluators = {name: Evaluator(cfg.metric, task, c) for name in params}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, (_, q, truth) in enumerate(data.iterate("tune: scoring")):
            probs = uint8_to_probs(q)
            presence = uint8_to_probs(data.presence[i]) if data.presence is not None else None
            target = torch.from_numpy(truth[None])
            for name, p in params.items():
                evaluators[name].update_masks(torch.from_numpy(apply_postprocess(probs, task, p, presence)[None]), target)
    finally:
        torch.set_num_threads(threads)
    return {name: float(e.compute()["score"]) for name, e in evaluators.items()}
