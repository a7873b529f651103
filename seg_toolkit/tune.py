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
differently: on TGS fold 0's 750 OOF images the joint search scored 0.004 higher cross-fitted; on the
demo's 64 one CPU's folds put them within 0.001 (0.9012 joint, 0.9011 greedy), another's 0.026 apart the
other way (0.8408 joint, 0.8671 greedy: docs/results_history.md; the README's opening now shows joint 0.8891
against greedy 0.8803). ``auto`` (the default) runs both and
keeps the one with the better cross-fitted score (:mod:`seg_toolkit.tune_crossfit`: each image scored
with what tuning on the others chose), reported under ``search`` in ``postprocess.json``.

Every candidate list also holds the class's current value (from the config), so a step
never lowers the score. Multiclass predictions are the argmax over classes, so there is no
threshold and no gate: only the argmax class weights (with ``postprocess.class_weight_grid``) and ``min_area`` are searched (components of class ``c >= 1``
smaller than it become background, as :func:`~seg_toolkit.postprocess.apply_postprocess`
does; with ``postprocess.min_area_to: runner_up`` components of every class, each pixel to its runner-up class).

Why greedy per class is sound: for binary / multilabel every metric is a function of per
(image, class) counts, and a class's counts depend only on that class's parameters; with
``dice`` / ``iou`` / ``tgs_map`` the score is the mean over (image, class) pairs and with
``miou`` / ``global_dice`` the mean over classes, so the classes separate (with ``empty_score: skip`` the
number of scored pairs depends on the prediction, which is why each candidate is scored
by the exact global metric rather than a per-class share). Multiclass classes do not
separate (removed pixels move to class 0 or their runner-up), and are handled the same way: exact global
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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .config import Config, ConfigError
from .data import class_names
from .evaluator import Evaluator, resolve_metric_name, scored_columns
from .postprocess import PostParams, apply_postprocess, params_from_config, present_classes
from .files import nan_if_null, read_json, write_json
from .run import Run
from .run_lock import run_lock
from .tensors import uint8_to_probs
from .tune_crossfit import cross_fitted_choice, crossfit_groups, public
from .tune_steps import area_grid, search_multiclass, search_sigmoid
from .tune_tables import DEFAULT_MEMORY_BUDGET, OOFData, better

log = logging.getLogger(__name__)

__all__ = ["tune_postprocess", "GATE_GRID"]

#: Empty-gate candidates (None = no gate). A gate at or below a class's threshold changes nothing.
GATE_GRID: tuple[Optional[float], ...] = (None, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


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
    crossfit_out: dict | None = None,
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
    ``cross_fit=False``, default ``postprocess.cross_fit``, or too few images). ``crossfit_out`` receives the groups
    and the cross-fitted dict with its per-image counts (``tune --tta`` nests its choice of TTA set in them).
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

        tables: dict = {}  # one pass per table, shared by the searches and their cross-fitted repeats
        seeds = _split_seeds(cfg, metric, before_params.split_seed[0])

        def search(rows: np.ndarray | None, mode: str, seed: float | None):
            if task == "multiclass":
                return search_multiclass(data, before_params, cfg, metric, empty_score, rows, tables)
            start = replace(before_params, split_seed=[seed] * len(before_params.threshold))
            return search_sigmoid(data, start, cfg, gate_grid, metric, empty_score, rows, tables, joint=mode == "joint")

        cross_fit = cfg.postprocess.cross_fit if cross_fit is None else cross_fit
        grouped = cfg.folds.method in ("group", "stratified_group")  # a data group's images must stay on one side
        groups = crossfit_groups([it.fold for it in data.items], data.folds, grouped) if cross_fit else None
        everything = np.arange(len(data))
        tried, with_seed = {}, {}
        for mode in _search_modes(cfg.postprocess.search, task, groups is not None):
            for seed in seeds:
                name = mode if len(seeds) == 1 else f"{mode} + split_seed {seed}"
                params, steps, fast, _ = search(None, mode, seed)
                tried[name], with_seed[name] = (params, steps, fast, None), (mode, seed)
        nested = None
        if groups is not None:  # each search cross-fitted, and the choice among them inside each group too
            per, nested = cross_fitted_choice(*groups, {
                name: (lambda rows, m=m, s=s: search(rows, m, s)[::3]) for name, (m, s) in with_seed.items()}, better)
            tried = {name: (*t[:3], per[name]) for name, t in tried.items()}
        chosen = _choose_search(tried, everything)
        params, steps, fast, crossed = tried[chosen]
        if nested is not None and len(tried) > 1:  # the choice's own luck out of the score reported
            crossed = nested  # each search's own cross-fitted score: search.compared
        if crossfit_out is not None and crossed is not None and groups is not None:
            crossfit_out.update(groups=groups[0], crossed=crossed)
        # "before" is the config's post-processing: the search that started from the config's split seed counted it
        mode, _ = with_seed[chosen]
        same_start = next(n for n, (m, s) in with_seed.items() if m == mode and s == seeds[0])
        fast_before, fast_after = tried[same_start][2]["before"](everything), fast["after"](everything)
        # int64 also when a fold has no OOF image left (exclude_ids changed after training): np.array([]) is float64
        fold_rows = {k: np.array([i for i, it in enumerate(data.items) if it.fold == k], np.int64) for k in data.folds}

        scored, present = _evaluate(data, cfg, {"before": before_params, "after": params})
        before, after = scored["before"], scored["after"]
        for name, quick, exact in (("before", fast_before, before), ("after", fast_after, after)):
            if not (math.isnan(quick) and math.isnan(exact)) and not abs(quick - exact) <= 1e-9:
                raise RuntimeError(f"tune: the fast {name} score {quick!r} disagrees with the Evaluator's {exact!r} (a bug)")

        report = {
            "metric": metric,
            "empty_score": empty_score,
            "metric_classes": list(cfg.metric.classes) or None,
            "task": task,
            "n_images": len(data),
            "folds": data.folds,
            "cv_json_score": _cv_json_score(run),
            "before": before,
            "after": after,
            "gain": after - before,
            "cross_fitted": public(crossed),
            "search": {"setting": cfg.postprocess.search, "chosen": chosen, "compared": {
                mode: {"after": t[2]["after"](everything), "cross_fitted": t[3]["score"] if t[3] else None}
                for mode, t in tried.items()}},
            "steps": steps,
            "fold_scores": {"folds": data.folds, "before": [tried[same_start][2]["before"](rows) for rows in fold_rows.values()],
                            "after": [fast["after"](rows) for rows in fold_rows.values()]},
            "before_params": asdict(before_params),
            "candidates": {
                "threshold": list(cfg.postprocess.threshold_grid),
                "min_area": area_grid(cfg),
                "empty_gate": list(gate_grid) if task != "multiclass" else [],
                "split_seed": seeds,
            },
            # per class, the share of OOF images whose decided mask is not empty: predict compares the test's
            "decided_present": {"share": (present / max(len(data), 1)).tolist(), "n_images": len(data)},
            "at_grid_edge": _grid_edges(params, before_params, cfg, gate_grid, task),
            "oof_in_memory": data.cache_enabled,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        result = {"params": asdict(params), **report}
        if write:
            write_json(run.postprocess_json, result)
            cf = f" (cross-fitted {crossed['score']:.5f}: tuned on other images, {crossed['groups']})" if crossed else ""
            log.info("tune: %s %.5f -> %.5f%s on %d OOF images with the %s search; wrote %s", metric, before, after, cf,
                     len(data), chosen, run.postprocess_json)
            say_grid_edges(cfg, result)
            if len(tried) > 1 and crossed is not None:
                log.info("tune: search chosen by cross-fitted score: %s", ", ".join(
                    f"{m} {t[3]['score']:.5f} (tuned {t[2]['after'](everything):.5f})" for m, t in tried.items()))
            elif len(tried) > 1:
                log.info("tune: too few OOF images to cross-fit; chosen by tuned score: %s", ", ".join(
                    f"{m} {t[2]['after'](everything):.5f}" for m, t in tried.items()))
        return result


def _search_modes(setting: str, task: str, can_cross_fit: bool) -> list[str]:
    """The searches to run: ``auto`` runs both the greedy chain and the joint search when their cross-fitted
    scores can be compared, else the joint one; multiclass has one search (min_area, and class weights)."""
    if task == "multiclass":
        return ["min_area"]
    if setting == "auto":
        return ["greedy", "joint"] if can_cross_fit else ["joint"]
    return [setting]


def _split_seeds(cfg: Config, metric: str, start: float | None) -> list[float | None]:
    """The split seeds tune tries, the config's first: ``postprocess.split_seed_grid`` under an object-matching
    metric (the objects it cuts apart are what such a metric scores), else the config's alone."""
    from .instance_metrics import INSTANCE_METRICS

    if metric not in INSTANCE_METRICS:
        return [start]
    return list(dict.fromkeys([start, *cfg.postprocess.split_seed_grid]))


def _choose_search(tried: dict, everything: np.ndarray) -> str:
    """The search whose parameters scored best on images they were not tuned on (the cross-fitted score);
    a tie keeps the first tried (the greedy chain: fewer candidates). With one search, that one. Too few OOF
    images to cross-fit (only the joint search runs then, but one per split seed): the best tuned score.

    The score reported is not that largest one, which keeps the choice's luck (the max of noisy estimates: with
    ten split seeds it read as much as the tuned score), but the nested one of
    :func:`~seg_toolkit.tune_crossfit.cross_fitted_choice`, where each group's search was chosen without it."""
    modes = list(tried)
    if len(modes) == 1:
        return modes[0]

    def score(mode: str) -> float:
        _, _, fast, crossed = tried[mode]
        return crossed["score"] if crossed is not None else fast["after"](everything)

    best = modes[0]
    for mode in modes[1:]:
        if better(score(mode), score(best)):
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
        return nan_if_null((read_json(run.cv_json) or {})["score"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- exact scores


def say_grid_edges(cfg: Config, tuned: dict) -> None:
    """Warn of the values postprocess.json's ``at_grid_edge`` names (``tune``, and ``tune --tta``, which writes its
    own): the best may lie beyond the grid."""
    edges = tuned.get("at_grid_edge") or {}
    if edges:
        names = class_names(cfg)
        log.warning("tune: chosen at the end of what was searched, so the best may lie beyond it: %s; widen "
                    "postprocess.*_grid there", "; ".join(f"{key} {value} for {', '.join(names[c] for c in classes)}"
                                                    for key, (value, classes) in _edge_values(PostParams(**tuned["params"]),
                                                                                              edges).items()))


def _grid_edges(params: PostParams, start: PostParams, cfg: Config, gate_grid: Sequence, task: str) -> dict[str, list[int]]:
    """The classes whose chosen threshold is the lowest or highest searched, or whose min_area or empty gate is the
    highest searched (the config's value and the grid: what the search tried); 0 and no gate are where those start.
    Only the classes the search decided: those the metric scores (an unscored class keeps the config's value, every
    candidate tying) and, multiclass, those min_area applies to. A multiclass class_weight is not looked at."""
    p, out = cfg.postprocess, {}
    scored = scored_columns(cfg.metric, task)
    decided = set(range(len(params.threshold))) if scored is None else set(scored.tolist())
    if task == "multiclass":
        decided &= set(params.area_classes())
    tried = {"threshold": [*start.threshold, *p.threshold_grid], "min_area": [*start.min_area, *area_grid(cfg)],
             "empty_gate": [g for g in [*start.empty_gate, *gate_grid] if g is not None]}
    for key, values in tried.items():
        if task == "multiclass" and key != "min_area" or len(set(values)) < 2:
            continue
        ends = {min(values), max(values)} if key == "threshold" else {max(values)}
        hit = [c for c, v in enumerate(getattr(params, key)) if c in decided and v is not None and v in ends]
        if hit:
            out[key] = hit
    return out


def _edge_values(params: PostParams, edges: dict[str, list[int]]) -> dict[str, tuple[str, list[int]]]:
    """For the log: each key's chosen values at the edge (one or several), with their classes."""
    return {key: ("/".join(str(v) for v in dict.fromkeys(getattr(params, key)[c] for c in classes)), classes)
            for key, classes in edges.items()}


def _evaluate(data: OOFData, cfg: Config, params: dict[str, PostParams], count: str = "after",
              ) -> tuple[dict[str, float], np.ndarray]:
    """Score each parameter set with :class:`Evaluator` on :func:`apply_postprocess` masks, as ``cv.json`` scores the
    OOF files; and in how many images set ``count``'s masks hold each class. Torch runs on one thread meanwhile: the
    tensors are one image each, and on a busy machine intra-op threads made this pass 20x slower."""
    task, c = cfg.data.task, cfg.data.num_classes
    evaluators = {name: Evaluator(cfg.metric, task, c) for name in params}
    present = np.zeros(c, np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = next(iter(evaluators.values()))
        for i, (_, q, truth) in enumerate(data.iterate("tune: scoring")):
            probs = uint8_to_probs(q)
            presence = uint8_to_probs(data.presence[i]) if data.presence is not None else None
            target = torch.from_numpy(truth[None])
            objects = [data.objects(i, q.shape[-2:])] if first.instance else None
            for name, p in params.items():
                mask = apply_postprocess(probs, task, p, presence)
                evaluators[name].update_masks(torch.from_numpy(mask[None]), target, objects)
                if name == count:
                    present += present_classes(mask, task, c)
    finally:
        torch.set_num_threads(threads)
    return {name: float(e.compute()["score"]) for name, e in evaluators.items()}, present
