"""The budget is the run's: which folds a run trains, and each fold's share once the run's earlier folds are counted.

With ``train.min_fold_epochs: n`` the budget also decides how many folds the run trains: when the
run's first epoch (the first epoch timed in the run, as ``first_epoch.json`` records it once) says that an equal
share would give each fold fewer than ``n`` epochs, the run trains only the first folds that each get
``n`` at that pace (at least one: ``floor(budget / (n x first epoch))``), and those share the whole
budget. On a machine several times slower than the one a config was sized on, one or two folds of
enough epochs score more than every fold cut to one or two (README). The first epoch pays for start-up and a fold
stops at ``train.epochs``, so the folds let in may finish early: when they are done, the next planned fold trains
too if what they left of the budget fits ``n`` epochs at their mean epoch time (:func:`admit_fold`; recorded in
``admitted_folds.json``, its share is all that is left). A TGS held-out run whose first epoch (66 s) let in one fold
of a 17m15s budget ran its 9 epochs in 8.7 min and left the rest unused. The folds still left out are not trained
(``cv.json``'s ``time_budget`` names them); ``--resume`` with a bigger budget trains them.

A finished fold's unused seconds (or those it took over its share) are shared out among the folds after it
(:func:`carried`); :func:`plan_fold` sets a fold's epochs from its share at the start of the fold or on resume. The
arithmetic of a share (durations, :class:`~seg_toolkit.budget.FoldBudget`, cuts and lengthening) is
:mod:`seg_toolkit.budget`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from .budget import (FoldBudget, epoch_pace, fold_budget, format_duration, parse_duration, planned_folds, resumed_plan,
                     set_aside_seconds, timed_seconds)
from .files import read_json

if TYPE_CHECKING:
    from .config import Config
    from .distributed import Dist
    from .fold_state import TrainState
    from .run import Run

log = logging.getLogger(__name__)

__all__ = ["first_epoch_seconds", "record_first_epoch", "run_folds", "admitted_folds", "admit_fold", "left_out_folds",
           "carried", "plan_fold", "decide_folds"]


def first_epoch_seconds(cfg: "Config", metrics, run: "Run | None" = None) -> float | None:
    """The seconds of the run's first epoch: what ``first_epoch.json`` recorded (:func:`record_first_epoch`), else
    (a run made before that file, or only ``metrics`` at hand) epoch 1 of the first of :func:`planned_folds` that
    has one in ``metrics`` (:func:`seg_toolkit.plots.read_metrics`' frame). Written once and kept on resume, so
    every fold and every later call decides the same number of folds, whichever fold was timed first (a
    ``--fold 2`` job before fold 0) and whatever a NaN retry set aside."""
    if run is not None:
        data = read_json(run.first_epoch_json)
        if data and data.get("seconds") is not None:
            return float(data["seconds"])
    if "seconds" not in metrics:
        return None
    for k in planned_folds(cfg):
        s = metrics.loc[(metrics["fold"] == k) & (metrics["epoch"] == 1), "seconds"].dropna()
        if len(s):
            return float(s.iloc[0])
    return None


def record_first_epoch(run: "Run", fold: int, seconds: float) -> float:
    """Write ``first_epoch.json`` unless it exists (the first fold timed wins, also against a ``--fold`` job
    beside this one: the file is created exclusively) and return the seconds it holds."""
    target = run.first_epoch_json
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # jobs of one PID on other hosts
    tmp.write_text(json.dumps({"fold": fold, "seconds": seconds}))
    try:
        os.link(tmp, target)  # whole or not at all, and never over another's
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links (some FUSE and SMB mounts): created exclusively, then written
        try:
            with open(target, "x", encoding="utf-8") as f:
                f.write(tmp.read_text())
        except FileExistsError:
            pass
    finally:
        tmp.unlink()
    return float(read_json(target)["seconds"])


def run_folds(cfg: "Config", run: "Run") -> list[int]:
    """The folds the whole run trains: :func:`planned_folds`, or under ``train.min_fold_epochs`` the first of
    them that fit the budget once the run's first epoch is timed, and any other planned fold trained anyway
    (a ``--fold K`` job): a trained fold is never left out."""
    planned = planned_folds(cfg)
    if cfg.train.time_budget is None or not cfg.train.min_fold_epochs:
        return planned
    from .plots import read_metrics  # lazy: the config check imports this module

    budget = fold_budget(cfg, first_epoch_seconds(cfg, read_metrics(run.dir), run))
    if budget is None or not budget.decided:
        return planned
    extra = set(run.trained_folds()) | set(admitted_folds(run))
    return [k for i, k in enumerate(planned) if i < budget.folds or k in extra]


def admitted_folds(run: "Run") -> list[int]:
    """The folds :func:`admit_fold` let into the run after the first epoch had left them out."""
    data = read_json(run.admitted_folds_json)
    return [int(entry["fold"]) for entry in data.get("folds", [])] if data else []


def _left(cfg: "Config", run: "Run", folds: list[int], metrics) -> tuple[float, float | None]:
    """The seconds of ``train.time_budget`` that ``folds`` left (less their epochs and their attempts set aside after a
    NaN loss) and their mean epoch time (None: none timed)."""
    seconds = [float(v) for v in metrics.loc[metrics["fold"].isin(folds), "seconds"].dropna()] if "seconds" in metrics else []
    spent = sum(seconds) + sum(set_aside_seconds(run, j) for j in folds)
    total = parse_duration(cfg.train.time_budget, "train.time_budget")
    return total - spent, (sum(seconds) / len(seconds) if seconds else None)


def admit_fold(cfg: "Config", run: "Run", fold: int) -> bool:
    """Under ``train.min_fold_epochs``, whether a fold the run's first epoch left out trains after all: every fold of
    the run (:func:`run_folds`) is finished and what they left of ``train.time_budget`` fits ``min_fold_epochs``
    epochs at their mean epoch time (first epochs included: a cautious pace). When it does, the fold is recorded in
    ``admitted_folds.json`` (the rest of the run, a resume, cv.json and the tuning then count it as one of the run's
    folds) and its share is all that is left (:func:`carried`). Called by rank 0 only."""
    if cfg.train.time_budget is None or not cfg.train.min_fold_epochs:
        return False
    from .files import write_json
    from .plots import read_metrics  # lazy: the config check imports this module

    metrics = read_metrics(run.dir)
    budget = fold_budget(cfg, first_epoch_seconds(cfg, metrics, run))
    current = run_folds(cfg, run)
    if budget is None or not budget.decided or fold in current or fold not in planned_folds(cfg):
        return False
    if any(not run.done_json(j).is_file() for j in current):  # a fold of the run still training (a --fold job)
        return False
    left, pace = _left(cfg, run, current, metrics)
    need = min(cfg.train.min_fold_epochs, cfg.train.epochs)
    if pace is None or left < need * pace:
        return False
    entries = (read_json(run.admitted_folds_json) or {}).get("folds", [])
    write_json(run.admitted_folds_json, {"folds": [*entries, {"fold": fold, "seconds_left": round(left, 3),
                                                             "epoch_s": round(pace, 3)}]})
    log.info("fold %d: the run's folds %s finished with %s of train.time_budget %s left, %d epochs at their %.1f s per "
             "epoch: fold %d trains too (it was left out by the run's first epoch)", fold, current, format_duration(left),
             cfg.train.time_budget, min(cfg.train.epochs, math.floor(left / pace)), pace, fold)
    return True


def left_out_folds(cfg: "Config", run: "Run") -> list[int]:
    """The folds of :func:`planned_folds` that ``train.min_fold_epochs`` leaves out of the run (none before its first epoch)."""
    trained = run_folds(cfg, run)
    return [k for k in planned_folds(cfg) if k not in trained]


def carried(budget: FoldBudget, cfg: "Config", run: "Run", fold: int, metrics) -> FoldBudget:
    """The fold's share once the run's earlier folds are counted: the budget is the run's, so the seconds a
    finished fold left unused (all its epochs fit with time to spare, or it stopped early), or took over its
    share (within :data:`TOLERANCE`, or its one epoch), are shared out among the folds still to train, this one
    and those after it. Earlier: before ``fold`` among the folds sharing the budget (:func:`planned_folds`, the
    first ``budget.folds`` of them); finished: ``done.json`` written (a fold still training, e.g. a ``--fold``
    job beside this one, counts as its share); its seconds include attempts set aside after a NaN loss
    (:func:`set_aside_seconds`). The same files give a resumed fold the same share. A share is never below 0 (a
    fold still runs its one epoch)."""
    if not budget.decided:  # the run's first epoch is not timed yet: no fold of the run has finished
        return budget
    sharing = planned_folds(cfg)[: budget.folds or None]
    if fold not in sharing and fold in admitted_folds(run):  # let in late: all that the run's other folds left
        others = [j for j in run_folds(cfg, run) if j != fold and run.done_json(j).is_file()]
        left = _left(cfg, run, others, metrics)[0]
        log.info("fold %d: admitted after the run's folds %s: %s of the budget left for it", fold, others,
                 format_duration(max(0.0, left)))
        return replace(budget, share_s=max(0.0, left))
    if fold not in sharing:
        return budget
    i = sharing.index(fold)
    carry = 0.0
    for j in sharing[:i]:
        seconds = metrics.loc[metrics["fold"] == j, "seconds"].dropna() if "seconds" in metrics else ()
        if run.done_json(j).is_file() and len(seconds):
            carry += budget.share_s - float(seconds.sum()) - set_aside_seconds(run, j)
    if not carry:
        return budget
    share = max(0.0, budget.share_s + carry / (len(sharing) - i))
    what = f"left {carry:.1f} s of their shares unused" if carry > 0 else f"ran {-carry:.1f} s over their shares"
    log.info("fold %d: the run's earlier folds %s, shared among the %d fold(s) still to train: %s for this fold", fold, what,
             len(sharing) - i, format_duration(share))
    return replace(budget, share_s=share)


def _fold_share(budget: FoldBudget, cfg: "Config", run: "Run", fold: int, metrics) -> FoldBudget:
    """``budget`` made this fold's: the earlier folds' time left over or overrun (:func:`carried`), less what its
    attempts set aside after a NaN loss took (they count against its share)."""
    budget = carried(budget, cfg, run, fold, metrics)
    aside = set_aside_seconds(run, fold)
    if aside:
        log.info("fold %d: its attempt(s) set aside after a NaN loss took %s of its %s share", fold, format_duration(aside),
                 format_duration(budget.share_s))
        budget = replace(budget, share_s=max(0.0, budget.share_s - aside))
    return budget


def plan_fold(cfg: "Config", run: "Run", fold: int, state: "TrainState", d: "Dist") -> tuple[FoldBudget | None, list[float]]:
    """Set ``state.epochs``, the fold's planned epochs: ``train.epochs``, or under ``train.time_budget``
    those that fit the fold's share (:mod:`seg_toolkit.budget`; a resumed fold keeps its plan). Returns
    the fold's budget (None: no budget; its share less what attempts set aside after a NaN loss took) and the
    seconds of the epochs it ran before a resume: they count against its share, and its pace (:func:`epoch_pace`)
    goes on from them, so the first epoch after a resume, which pays for starting up again (or finishes an
    interrupted epoch), is one vote of three."""
    if cfg.train.time_budget is None:
        state.epochs = cfg.train.epochs
        return None, []
    from .plots import read_metrics  # lazy: the config check imports this module

    metrics = read_metrics(run.dir)
    budget = d.broadcast(_fold_share(fold_budget(cfg, first_epoch_seconds(cfg, metrics, run)), cfg, run, fold, metrics))
    earlier, epoch_s = timed_seconds(run, fold, metrics, upto=state.epoch)
    if state.epochs:
        state.epochs = min(state.epochs, cfg.train.epochs)
        grown = d.broadcast(resumed_plan(budget, state.epoch, state.epochs, earlier))
        if grown > state.epochs:
            log.info("fold %d: resumed after %d epoch(s) (%s, %.1f s per epoch) with %s per fold: lengthened from %d to "
                     "%d epochs", fold, state.epoch, format_duration(sum(earlier)), epoch_pace(earlier),
                     format_duration(budget.share_s), state.epochs, grown)
            state.epochs = grown
    else:
        state.epochs = d.broadcast(budget.initial_epochs(epoch_s))
        pace = f"{epoch_s:.1f} s per epoch on the run's other folds" if epoch_s else "no epoch timed yet in this run"
        log.info("fold %d: train.time_budget %s, %s per fold (%s): %d of train.epochs=%d epochs planned", fold,
                 cfg.train.time_budget, format_duration(budget.share_s), pace, state.epochs, cfg.train.epochs)
    return budget, earlier


def decide_folds(cfg: "Config", budget: FoldBudget, fold: int, first_epoch_s: float, d: "Dist",
                 run: "Run | None" = None) -> FoldBudget:
    """After a fold's first epoch, when ``train.min_fold_epochs`` was waiting for it (the run's first epoch):
    the fold's budget once the number of folds is known (rank 0's timing for every rank). With ``run``, the epoch
    is recorded in ``first_epoch.json`` (:func:`record_first_epoch`), and when another fold's was recorded first
    (a ``--fold`` job beside this one), that one decides."""
    if budget.decided:
        return budget
    if run is not None and d.is_main:
        first_epoch_s = record_first_epoch(run, fold, first_epoch_s)
    first_epoch_s = d.broadcast(first_epoch_s)
    decided = fold_budget(cfg, first_epoch_s)
    if run is not None:  # this fold's share of it, as plan_fold makes it (a NaN attempt set aside counts: was dropped)
        from .plots import read_metrics

        decided = _fold_share(decided, cfg, run, fold, read_metrics(run.dir))
    decided = d.broadcast(decided)
    planned = planned_folds(cfg)
    if decided.folds < len(planned):
        log.warning("train.time_budget %s: the run's first epoch took %.1f s, so %d fold(s) of train.min_fold_epochs=%d "
                    "epochs fit where %d were planned: fold(s) %s train with %s each, fold(s) %s are left out (--resume "
                    "with a bigger budget trains them)", cfg.train.time_budget, first_epoch_s, decided.folds,
                    cfg.train.min_fold_epochs, len(planned), planned[: decided.folds], format_duration(decided.share_s),
                    planned[decided.folds:])
        if fold not in planned[: decided.folds]:  # a `train --fold K` job: the fold it was asked for trains all the same
            log.warning("fold %d trains all the same, as `train --fold %d` asked, with the share of one of them (%s); "
                        "cv.json counts it with the run's folds", fold, fold, format_duration(decided.share_s))
    else:
        log.info("fold %d: train.time_budget: all %d folds fit train.min_fold_epochs=%d at %.1f s per epoch", fold,
                 len(planned), cfg.train.min_fold_epochs, first_epoch_s)
    return decided
