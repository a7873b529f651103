"""Time budgets: durations as people write them, and the epochs that fit in ``train.time_budget``.

A Kaggle notebook has a wall-clock limit and a laptop is slower than the machine a config was
tuned on. With ``train.time_budget: 24m`` each fold gets an equal share of the budget (24 min /
the number of folds of the run, ``folds.only`` or ``folds.n_splits``) for its epochs, the
seconds that ``metrics.csv`` records per epoch (training and validation; start-up and the OOF
prediction are outside them). ``train.epochs`` stays the most a fold runs:

* a fold starts with as many epochs as fit in its share (within :data:`TOLERANCE`) at the mean epoch
  time of the folds trained before it in the run (all of ``train.epochs`` when none has been timed yet);
* after each epoch, when the epochs left at the fold's pace (:func:`epoch_pace`: the last epoch's
  time, from the third epoch on the median of the last three) would overrun the share by
  more than :data:`TOLERANCE` (after a fold's first epoch, which also pays for starting the data
  loader's workers and the kernels' first calls: :data:`FIRST_EPOCH_TOLERANCE`), the fold is cut to the epochs that fit, and its learning-rate
  schedule is rebuilt for that total (a cosine then still ends at its minimum). A fold runs at
  least one epoch. From its third epoch on, a fold planned short of ``train.epochs`` is lengthened
  (schedule rebuilt likewise) when more epochs fit in its share itself at its pace (no tolerance: a
  plan is not cut and lengthened by turns). A cut after the first epoch keeps the epochs that
  fit within that tolerance when a second epoch fits the share: the start-up cost would otherwise
  shrink the fold for good (a CamVid fold of 10.5 s epochs cut to 30 epochs after a first of 12.4 s,
  where 36 fit); the cuts after the next epochs, at the real pace, trim it to the share.
* the budget is the run's: what a finished fold left of its share (or took over it) is shared out
  among the folds after it (:func:`seg_toolkit.budget_run.carried`). A TGS run whose first three folds ran all 9 epochs
  in 328-337 s of their 345 cut its last fold (39-47 s per epoch) to 7 epochs; their 36 s to spare keep all 9.

The run-level part (which folds train under ``train.min_fold_epochs``, what a fold's share is once the run's
earlier folds are counted) is :mod:`seg_toolkit.budget_run`.

The plan is part of the fold's checkpoint (``TrainState.epochs``), so ``--resume`` continues the
same schedule (lengthened when the fold was planned short and a bigger budget now fits more: :func:`resumed_plan`); ``done.json`` records it (``epochs_planned``, ``fold_budget_s``). A resumed fold's
earlier epochs (their ``metrics.csv`` rows, and the part of an epoch stopped by Ctrl-C, which the
checkpoint keeps as ``TrainState.seconds``) count against its share and its pace goes on from them.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # config_checks imports this module while config loads
    from .config import Config
    from .distributed import Dist
    from .fold_state import TrainState
    from .run import Run

log = logging.getLogger(__name__)

__all__ = ["parse_duration", "format_duration", "FoldBudget", "fold_budget", "folds_that_fit", "planned_folds",
           "set_aside_seconds", "resumed_plan", "fit_to_budget", "timed_seconds", "epoch_pace", "TOLERANCE",
           "FIRST_EPOCH_TOLERANCE"]

#: How far past its share a fold's projected time may go before the fold is cut: the pace of one
#: epoch is noisy, and cutting a cosine schedule short costs more than a few seconds over.
TOLERANCE = 0.05
#: The same after a fold's first epoch, whose pace includes one-off start-up costs: only a clear
#: overrun (a machine far slower than the config was sized for) cuts the fold that early.
FIRST_EPOCH_TOLERANCE = 0.5

def parse_duration(text: str | float | int, what: str = "--budget") -> float:
    """Seconds in ``9h``, ``30m``, ``1h30m``, ``3600s`` or a plain number of seconds; ``what``
    names the option or config key in the error."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*(?:(\d+(?:\.\d*)?)s?)?", s)
    if not s or m is None or not any(m.groups()):
        raise ConfigError(f"{what} {text!r}: expected a duration such as 9h, 30m, 1h30m or 3600s")
    if (m.group(1) or m.group(2)) and m.group(3) and not s.endswith("s"):  # 1h30 was 1 h 30 s
        fix = f"{s}m (or {s}s)" if m.group(2) is None else f"{s}s"
        raise ConfigError(f"{what} {text!r}: the number after the last unit has none; write {fix}")
    h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + sec


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(round(seconds)) // 60
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(round(seconds)) % 60:02d}s"


@dataclass(frozen=True)
class FoldBudget:
    """One fold's share of ``train.time_budget``: ``share_s`` seconds for at most ``max_epochs`` epochs.

    ``folds``: how many folds share the budget (0: all the run's folds); ``decided`` is False while
    ``train.min_fold_epochs`` waits for the run's first epoch to say how many (the share is then provisional)."""

    share_s: float
    max_epochs: int
    folds: int = 0
    decided: bool = True

    def initial_epochs(self, epoch_s: float | None) -> int:
        """The epochs a fold starts with: those that fit at ``epoch_s`` seconds each (None: not timed yet), within
        :data:`TOLERANCE`, as :meth:`replan` keeps them (split B's fold 3: 7 planned at 35.7 s in 285 s, where 8 fit
        in 299.7; lengthening, which needs the fold's own pace, would come only after its third epoch)."""
        if epoch_s is None or epoch_s <= 0:
            return self.max_epochs
        return max(1, min(self.max_epochs, math.floor(self.share_s * (1 + TOLERANCE) / epoch_s)))

    def fitting(self, done: int, elapsed_s: float, epoch_s: float) -> int:
        """The epochs a fold lengthened after ``done`` epochs that took ``elapsed_s`` gets: those that fit the rest of
        its share at ``epoch_s`` each, without the tolerance (:meth:`replan`, :func:`resumed_plan`), at most ``max_epochs``."""
        return min(self.max_epochs, done + math.floor(max(self.share_s - elapsed_s, 0.0) / epoch_s))

    def replan(self, total: int, done: int, elapsed_s: float, last_epoch_s: float) -> int:
        """The fold's total after ``done`` epochs that took ``elapsed_s``: ``total`` while the rest fits
        at ``last_epoch_s`` per epoch (the fold's pace, :func:`epoch_pace`; within :data:`TOLERANCE`, or
        :data:`FIRST_EPOCH_TOLERANCE` after the first epoch while more than one is left: an epoch after the next then
        trims the fold), else the most epochs that fit (>= ``done``): in the share, or after the first epoch, when a
        second one fits the share, within that tolerance.

        From the third epoch on (a pace that is the median of three) a fold planned short of ``max_epochs`` is
        lengthened to the epochs that fit in the share itself, without the tolerance, so that a plan is not cut
        and lengthened by turns: a fold planned at the pace of slower folds before it, or cut while the machine
        was busy, gets back what the machine's pace now affords (the TGS run of 2026-12-02 whose fold 2 was
        planned 8 epochs at 65 s and ran them at 44-56 s, 393 s of its 529). Not once its planned epochs are
        done: its schedule has ended."""
        if done >= total or last_epoch_s <= 0:
            return total
        # the first epoch's wide tolerance only while a later epoch can still trim the fold: a fold of 2 epochs kept
        # on it would run its second with no check after it, up to 50% past its share (148 s of 100 where a plan of 3
        # is cut to 1)
        tolerance = FIRST_EPOCH_TOLERANCE if done == 1 and total - done >= 2 else TOLERANCE
        room = self.share_s - elapsed_s
        if elapsed_s + (total - done) * last_epoch_s <= self.share_s * (1 + tolerance):
            if done >= 3 and total < self.max_epochs:
                return max(total, self.fitting(done, elapsed_s, last_epoch_s))
            return total
        if done == 1 and elapsed_s + last_epoch_s <= self.share_s:
            # the first epoch's pace includes start-up (15-25% in the TGS and CamVid runs): sized at it, a fold
            # would lose the epochs its real pace affords until its third epoch. So the first cut
            # keeps what fits within FIRST_EPOCH_TOLERANCE; the next epoch, which fits the share even at this
            # pace, times the real pace, and the cuts after it (TOLERANCE) trim the fold to its share
            room = self.share_s * (1 + FIRST_EPOCH_TOLERANCE) - elapsed_s
        fit = math.floor(max(room, 0.0) / last_epoch_s)
        return max(done, 1, min(total, done + fit))


def epoch_pace(seconds: list[float]) -> float:
    """The seconds per epoch a fold's remaining epochs are projected at, from its epochs' times so far:
    the last one's, and from the third epoch on the median of the last three. One epoch slowed by
    something else on the machine (a test run beside it, a busy neighbour in a shared notebook) then
    does not cut the fold for good (a CamVid fold was cut from 44 to 33 epochs by one epoch of 40 s
    among epochs of 22); a lasting slowdown still cuts it, one epoch later."""
    if not seconds:
        raise ValueError("epoch_pace: no epoch timed yet")
    return float(seconds[-1]) if len(seconds) < 3 else float(statistics.median(seconds[-3:]))


def planned_folds(cfg: "Config") -> list[int]:
    """The folds a whole run trains when nothing else decides: ``folds.only``, else all, in order."""
    return list(cfg.folds.only) or list(range(cfg.folds.n_splits))


def folds_that_fit(total_s: float, n_folds: int, min_epochs: int, epoch_s: float) -> int:
    """How many folds get ``min_epochs`` epochs of ``epoch_s`` seconds each from ``total_s``: at least 1, at most all."""
    if min_epochs <= 0 or epoch_s <= 0:
        return n_folds
    return max(1, min(n_folds, math.floor(total_s / (min_epochs * epoch_s))))


def fold_budget(cfg: "Config", first_epoch_s: float | None = None) -> FoldBudget | None:
    """Each fold's share of ``train.time_budget`` (None: no budget); with ``train.min_fold_epochs``, split among
    the folds that fit at ``first_epoch_s`` (None: not timed yet, the share stays provisional)."""
    if cfg.train.time_budget is None:
        return None
    total = parse_duration(cfg.train.time_budget, "train.time_budget")
    n = len(planned_folds(cfg))
    min_epochs = min(cfg.train.min_fold_epochs, cfg.train.epochs)  # `--set train.epochs=1` on a config that asks 6
    if not min_epochs:
        return FoldBudget(total / n, cfg.train.epochs)
    if first_epoch_s is None:
        return FoldBudget(total / n, cfg.train.epochs, n, decided=False)
    m = folds_that_fit(total, n, min_epochs, first_epoch_s)
    return FoldBudget(total / m, cfg.train.epochs, m)


def timed_seconds(run: "Run", fold: int, metrics=None, upto: int | None = None) -> tuple[list[float], float | None]:
    """From the run's ``metrics.csv`` files (:func:`seg_toolkit.plots.read_metrics`, which skips a file
    being written): the seconds of this fold's epochs so far, in epoch order (with ``upto``, epochs
    1..upto only: after a resume, those its checkpoint holds), and the mean epoch time of the run's other
    folds (None: none timed yet)."""
    from .plots import read_metrics  # lazy: the config check imports this module

    df = read_metrics(run.dir) if metrics is None else metrics
    if "seconds" not in df:
        return [], None
    mine = df["fold"] == fold
    others = df.loc[~mine, "seconds"].dropna()
    if upto is not None:
        mine &= df["epoch"] <= upto
    return [float(s) for s in df.loc[mine, "seconds"].dropna()], float(others.mean()) if len(others) else None


def set_aside_seconds(run: "Run", fold: int) -> float:
    """The seconds of the fold's attempts set aside after a NaN loss (``train.nan_retries``: their
    ``metrics.csv`` moved to ``failed_attempt_<n>/``): the machine spent them, so they count against the fold's
    share as its own epochs do; an unreadable file counts as nothing."""
    import pandas as pd

    total = 0.0
    for path in run.failed_attempt_metrics(fold):
        try:
            seconds = pd.to_numeric(pd.read_csv(path, on_bad_lines="skip").get("seconds"), errors="coerce")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError):
            continue
        total += float(seconds.dropna().sum()) if seconds is not None else 0.0
    return total


def resumed_plan(budget: FoldBudget, done: int, planned: int, earlier: list[float]) -> int:
    """A resumed fold's plan: ``planned`` epochs, or, when it was planned short of ``train.epochs`` and has epochs
    left, the epochs that fit its share now (``--resume`` with a bigger budget) at the pace of its ``earlier`` epochs
    (:func:`epoch_pace`), without the tolerance, as :meth:`FoldBudget.replan` lengthens. Never shorter than the plan
    (the cut after its next epoch trims it): a fold cut to 3 epochs and stopped after its first would otherwise
    keep its 3, since a plan is lengthened only from the third epoch and no longer once its epochs are done."""
    if not earlier or done >= planned or planned >= budget.max_epochs:
        return planned
    return max(planned, budget.fitting(done, sum(earlier), epoch_pace(earlier)))


def fit_to_budget(budget: FoldBudget, state: "TrainState", fold: int, elapsed_s: float, epoch_seconds: list[float], d: "Dist") -> bool:
    """After an epoch: cut ``state.epochs`` when the rest, at :func:`epoch_pace` of ``epoch_seconds`` (the times
    of the fold's epochs, those before a resume included), would overrun the fold's share, or lengthen it when more
    fit (:meth:`FoldBudget.replan`; rank 0 decides for every rank); True when it did, and the caller lays the lr
    schedule out again."""
    pace = epoch_pace(epoch_seconds)
    total = d.broadcast(budget.replan(state.epochs, state.epoch, elapsed_s, pace))
    if total == state.epochs:
        return False
    how = "the last" if len(epoch_seconds) < 3 else "the median of the last 3"
    (log.warning if total < state.epochs else log.info)(
        "fold %d: %s of train.time_budget's %s per fold used by %d epoch(s) (%.1f s per epoch, %s): %s from %d to %d "
        "epochs, the lr schedule laid out again", fold, format_duration(elapsed_s), format_duration(budget.share_s),
        state.epoch, pace, how, "cut" if total < state.epochs else "lengthened", state.epochs, total)
    state.epochs = total
    return True
