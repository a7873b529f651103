"""train.time_budget: the epochs that fit, planned per fold, cut after an epoch, kept on resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from seg_toolkit.budget import (FoldBudget, epoch_pace, fit_to_budget, fold_budget, folds_that_fit, set_aside_seconds,
                                timed_seconds)
from seg_toolkit.budget_run import carried, decide_folds, first_epoch_seconds, left_out_folds, plan_fold, run_folds
from seg_toolkit.checkpoint import load_checkpoint
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.distributed import Dist
from seg_toolkit.fold_state import TrainState
from seg_toolkit.optim import LRSchedule
from seg_toolkit.plots import read_metrics
from seg_toolkit.run import Run

from .conftest import demo_dict


def _cfg(demo_root, tmp_path, budget, epochs=3, train=None, **sections):
    train = {"epochs": epochs, "batch_size": 4, "num_workers": 0, "time_budget": budget, **(train or {})}
    return config_from_dict(demo_dict(demo_root, tmp_path / "runs", train=train, **sections))


@pytest.mark.parametrize("budget, share", [("24m", 720.0), ("1h30m", 2700.0), (90, 45.0), ("90s", 45.0)])
def test_each_fold_gets_an_equal_share(demo_root, tmp_path, budget, share):
    b = fold_budget(_cfg(demo_root, tmp_path, budget))  # 2 folds
    assert b == FoldBudget(share_s=share, max_epochs=3)


def test_folds_only_divides_among_the_folds_trained(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "10m", folds={"n_splits": 4, "method": "kfold", "only": [1]})
    assert fold_budget(cfg).share_s == 600.0
    assert fold_budget(_cfg(demo_root, tmp_path, None)) is None


@pytest.mark.parametrize("bad", ["soon", "10 minutes", "0s", 0])
def test_a_bad_budget_is_refused_when_the_config_loads(demo_root, tmp_path, bad):
    with pytest.raises(ConfigError, match="train.time_budget"):
        _cfg(demo_root, tmp_path, bad)


def test_initial_epochs():
    b = FoldBudget(share_s=300.0, max_epochs=9)
    assert b.initial_epochs(None) == 9  # nothing timed yet: the configured epochs
    assert b.initial_epochs(31.0) == 9  # 300 / 31 = 9.7
    assert b.initial_epochs(40.0) == 7  # 7.5, 7.875 with the tolerance
    assert b.initial_epochs(39.0) == 8  # 300 / 39 = 7.7, but 8 x 39 = 312 is within the 5% (315) that replan keeps
    # split B's fold 3 on the slow bf16 CPU: 285.4 s, 35.7 s per epoch on folds 0-2: 7 planned (and never lengthened)
    # where 8 (285.6 s) fit; what the plan starts with is what the cuts after each epoch would keep
    assert FoldBudget(285.4, 9).initial_epochs(35.7) == 8
    for pace in (10.0, 31.0, 33.0, 35.0, 39.0, 40.0, 100.0):
        planned = b.initial_epochs(pace)
        assert b.replan(planned, 0, 0.0, pace) == planned and (planned == 9 or b.replan(planned + 1, 0, 0.0, pace) < planned + 1)
    assert b.initial_epochs(10.0) == 9  # never more than train.epochs
    assert b.initial_epochs(400.0) == 1  # at least one


def test_replan_keeps_the_plan_within_the_tolerance_and_cuts_beyond_it():
    b = FoldBudget(share_s=300.0, max_epochs=9)
    assert b.replan(9, 2, 66.0, 33.0) == 9  # 66 + 7 x 33 = 297 <= 300
    assert b.replan(9, 2, 70.0, 35.0) == 9  # 70 + 7 x 35 = 315 = 300 x 1.05: still within
    assert b.replan(9, 2, 72.0, 36.0) == 8  # 324 > 315: 2 + floor(228 / 36) = 8
    # after the first epoch (start-up included) only a projected overrun beyond 50% cuts
    assert b.replan(9, 1, 50.0, 50.0) == 9  # 450 = 300 x 1.5
    # 459 > 450, but a second epoch fits the share (102 <= 300): the cut keeps what fits within the 50%,
    # 1 + floor((450 - 51) / 51) = 8, not 1 + floor(249 / 51) = 5 at a pace that includes start-up
    assert b.replan(9, 1, 51.0, 51.0) == 8
    assert b.replan(9, 1, 151.0, 151.0) == 1  # a second epoch would overrun the share (302): 1 + floor(149 / 151) = 1
    assert b.replan(9, 1, 140.0, 140.0) == 3  # 280 <= 300: 1 + floor((450 - 140) / 140) = 3, provisionally ...
    assert b.replan(3, 2, 270.0, 130.0) == 2  # ... the next epoch, at its own pace, trims it: 270 + 130 > 315
    assert b.replan(9, 4, 250.0, 40.0) == 5  # pace of the last epoch: 250 + 5 x 40 > 315; 4 + floor(50 / 40)
    assert b.replan(9, 3, 400.0, 130.0) == 3  # over already: stop after the epochs done
    assert b.replan(5, 5, 900.0, 300.0) == 5  # finished: nothing to plan
    # a plan of 2: no epoch after the second would trim it, so the first epoch gets the 5% only; a bigger plan never
    # runs longer than a smaller one (before: 2 kept at 74 s, 148 s of a 100 s share, while a plan of 3 was cut to 1)
    small = FoldBudget(share_s=100.0, max_epochs=9)
    assert small.replan(2, 1, 74.0, 74.0) == 1 and small.replan(3, 1, 74.0, 74.0) == 1
    assert small.replan(2, 1, 52.0, 52.0) == 2  # 104 <= 105
    assert small.replan(2, 1, 54.0, 54.0) == 1  # 108 > 105, and a second epoch does not fit the share (108 > 100)
    assert small.replan(3, 1, 40.0, 40.0) == 3  # 120 <= 150: kept, and the epoch after the next can still cut it
    for pace in (30.0, 40.0, 50.0, 60.0, 74.0, 99.0):
        plans = replay(small, small.initial_epochs(pace), [pace] * 9)
        assert pace * plans[-1] <= 100.0 * 1.05 or plans[-1] == 1  # every fold ends within its share's 5%, or at one epoch


def replay(b: FoldBudget, planned: int, times: list[float]) -> list[int]:
    """The fold's plan after each of its epochs, as the training loop replans it, for epochs that take ``times``."""
    total, plans = planned, []
    for done in range(1, len(times) + 1):
        if done > total:
            break
        total = b.replan(total, done, sum(times[:done]), epoch_pace(times[:done]))
        plans.append(total)
    return plans


def test_a_slow_first_epoch_does_not_shrink_the_fold_for_good():
    """The CamVid fold of this README's bf16 rerun: a 6m20s share (380 s), 48 epochs planned, a first epoch of
    12.4 s (start-up included) and then 9.4-11.7 s. Cut after the first epoch at its pace alone, the fold got 30
    epochs; now the first cut keeps 45 (within the 50% tolerance), the second epoch's pace cuts to 40, the third's
    (median 10.5) to 36, which then fits: 36 epochs in about the share."""
    b = FoldBudget(share_s=380.0, max_epochs=48)
    times = [12.4, 9.4, 10.5, 11.7, 10.6, 10.9, 10.3] + [10.6] * 40
    plans = replay(b, 48, times)
    total = plans[-1]
    assert plans[:4] == [45, 40, 36, 36]  # 1 + floor(557.6 / 12.4); 2 + floor(358.2 / 9.4); 3 + floor(347.7 / 10.5)
    assert total == 36 and sum(times[:36]) <= 380.0 * 1.05
    # the rule before: 1 + floor((380 - 12.4) / 12.4) = 30 after the first epoch, never lengthened again


def test_a_fold_planned_short_is_lengthened_from_its_third_epoch_when_more_fit():
    """Fold 2 of the TGS run of 2026-12-02 on a contended CPU: planned 8 epochs in its 529.2 s at the 65.4 s per
    epoch of folds 0-1 (their machine was busier), it ran them at 44-56 s and left 137 s unused."""
    b = FoldBudget(share_s=529.2, max_epochs=9)
    times = [56.2, 55.6, 51.7, 46.1, 46.2, 47.8, 43.7, 45.3, 45.0]
    plans = replay(b, 8, times)
    # after epochs 1 and 2 the pace is one epoch's (the first pays for start-up): kept; after the third, the median
    # (55.6 s) says 3 + floor((529.2 - 163.5) / 55.6) = 9 fit in the share itself: lengthened to train.epochs
    assert plans == [8, 8, 9, 9, 9, 9, 9, 9, 9]
    assert sum(times) <= 529.2
    assert b.replan(8, 8, 392.6, 45.0) == 8  # its planned epochs done: its schedule has ended, not lengthened
    # lengthened only to what fits in the share itself, cut only beyond the 5%: no cut and lengthen by turns
    b = FoldBudget(share_s=300.0, max_epochs=9)
    assert b.replan(7, 3, 120.0, 40.0) == 7  # 3 + floor(180 / 40) = 7
    assert b.replan(7, 3, 120.0, 36.0) == 8  # 3 + floor(180 / 36) = 8
    assert b.replan(8, 4, 157.0, 37.0) == 8  # 157 + 4 x 37 = 305 <= 315: kept, though 4 + floor(143 / 37) = 7
    assert b.replan(7, 2, 72.0, 30.0) == 7  # before the third epoch: a pace of one epoch does not lengthen
    state = TrainState(epoch=3, epochs=7)
    assert fit_to_budget(b, state, 2, 108.0, [36.0, 36.0, 36.0], Dist()) and state.epochs == 8  # the loop rebuilds the lr
    assert not fit_to_budget(b, state, 2, 108.0, [36.0, 36.0, 36.0], Dist()) and state.epochs == 8


def test_epoch_pace_is_the_last_epoch_then_the_median_of_the_last_three():
    assert epoch_pace([30.0]) == 30.0
    assert epoch_pace([30.0, 20.0]) == 20.0  # two epochs: the last (the first paid for start-up)
    assert epoch_pace([30.0, 20.0, 21.0]) == 21.0
    assert epoch_pace([25.3, 22.0, 22.4, 26.5, 39.8]) == 26.5  # one slowed epoch is outvoted
    assert epoch_pace([22.0, 22.0, 40.0, 41.0]) == 40.0  # a lasting slowdown wins at its second epoch
    with pytest.raises(ValueError):
        epoch_pace([])


def test_one_slow_epoch_does_not_cut_the_fold_a_lasting_slowdown_does():
    # like the CamVid fold that a test run beside it cut from 44 to 33 epochs: a 19 min share (1140 s,
    # 1197 with the 5% tolerance), 44 planned; 12 epochs took 290 s, the last 39.8 s
    b = FoldBudget(share_s=1140.0, max_epochs=48)
    times = [25.3] + [22.0] * 8 + [22.4, 26.5, 39.8]
    assert sum(times) == pytest.approx(290.0)
    assert b.replan(44, 12, 290.0, times[-1]) == 33  # at the last epoch's pace: 12 + floor(850 / 39.8) = 12 + 21
    assert b.replan(44, 12, 290.0, epoch_pace(times)) == 44  # median 26.5: 290 + 32 x 26.5 = 1138 <= 1197
    slow = times + [40.0]  # the machine stays slow: median 39.8, 330 + 31 x 39.8 > 1197
    assert b.replan(44, 13, 330.0, epoch_pace(slow)) == 33  # 13 + floor(810 / 39.8) = 13 + 20


def test_schedule_laid_out_again_matches_one_built_for_the_new_total(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, None, epochs=4, scheduler={"name": "cosine", "warmup_epochs": 0.5, "min_lr": 1e-5})
    short = _cfg(demo_root, tmp_path, None, epochs=2, scheduler={"name": "cosine", "warmup_epochs": 0.5, "min_lr": 1e-5})

    def lrs(schedule_cfg, rebuilt: bool) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        s = LRSchedule(schedule_cfg, opt, updates_per_epoch=10)
        for n in range(1, 11):
            s.step_update(n)
        if rebuilt:
            s = s.for_epochs(schedule_cfg, opt, 10, 2, 10)
        out = [opt.param_groups[0]["lr"]]
        for n in range(11, 21):
            s.step_update(n)
            out.append(opt.param_groups[0]["lr"])
        return out

    cut, reference = lrs(cfg, True), lrs(short, False)
    assert cut == pytest.approx(reference, rel=1e-12)
    assert cut[-1] == pytest.approx(1e-5)  # the cut schedule still ends at its minimum
    assert lrs(cfg, False)[-1] > 0.04  # the uncut one is half way down at update 20


def test_onecycle_laid_out_again_keeps_its_peak(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, None, epochs=4, scheduler={"name": "onecycle"})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s = LRSchedule(cfg, opt, updates_per_epoch=10)
    for n in range(1, 11):
        opt.step()
        s.step_update(n)
    s = s.for_epochs(cfg, opt, 10, 2, 10)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=[0.1], total_steps=20, pct_start=0.3)
    for _ in range(10):
        ref_opt.step()
        ref.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)


def test_plateau_is_not_rebuilt(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, None, scheduler={"name": "plateau"})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s = LRSchedule(cfg, opt, updates_per_epoch=10)
    assert s.for_epochs(cfg, opt, 10, 1, 5) is s


def test_a_tiny_budget_cuts_fold_0_after_its_first_epoch_and_plans_fold_1_from_it(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "0.01s", scheduler={"name": "cosine", "min_lr": 1e-5})
    run_cv(cfg)
    run = Run.of(cfg)
    for k in (0, 1):
        done = json.loads(run.done_json(k).read_text())
        # fold 0 ran its one epoch over its 0.005 s: the run's budget is spent, fold 1 still runs one epoch
        assert (done["epochs_run"], done["epochs_planned"], done["fold_budget_s"]) == (1, 1, 0.005 if k == 0 else 0.0)
        rows = pd.read_csv(run.metrics_csv(k))
        assert list(rows["epoch"]) == [1]
        last = load_checkpoint(run.last_pt(k))
        # the schedule laid out for one epoch ended at its minimum (metrics.csv's lr is the mean the epoch applied)
        assert last["optimizer"]["param_groups"][-1]["lr"] == pytest.approx(1e-5)
        assert rows["lr"].iloc[-1] > 1e-5
        assert last["train_state"]["epochs"] == 1  # --resume keeps the plan


def test_a_generous_budget_changes_nothing(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "10h", epochs=2)
    run_cv(cfg)
    run = Run.of(cfg)
    used = pd.read_csv(run.metrics_csv(0))["seconds"].sum()
    for k, share in ((0, 18000.0), (1, 36000.0 - used)):  # fold 1 gets what fold 0 left of its half
        done = json.loads(run.done_json(k).read_text())
        assert (done["epochs_run"], done["epochs_planned"]) == (2, 2)
        assert done["fold_budget_s"] == pytest.approx(share, abs=1e-6)
        assert len(pd.read_csv(run.metrics_csv(k))) == 2


def test_a_resumed_fold_keeps_its_plan_and_no_budget_means_train_epochs(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "1s", epochs=5)
    run = Run(tmp_path / "empty")
    state = TrainState(epoch=1, epochs=2)  # restored from a checkpoint planned for 2 epochs
    budget, earlier = plan_fold(cfg, run, 0, state, Dist())
    assert (budget.share_s, earlier, state.epochs) == (0.5, [], 2)
    fresh = TrainState()
    plan_fold(cfg, run, 0, fresh, Dist())
    assert fresh.epochs == 5  # nothing timed yet in the run: train.epochs, cut after the first epoch if need be
    unbudgeted = TrainState(epochs=2)
    assert plan_fold(_cfg(demo_root, tmp_path, None, epochs=5), run, 0, unbudgeted, Dist()) == (None, [])
    assert unbudgeted.epochs == 5  # train.epochs may grow on --resume, as before



def test_a_fold_planned_short_and_resumed_with_a_bigger_budget_is_lengthened(demo_root, tmp_path):
    """Was: a fold cut to 3 of 9 epochs and stopped after its first kept its 3 whatever budget it resumed with (a plan
    is lengthened only from its third epoch, and not once its epochs are done)."""
    run = _timed_run(tmp_path / "cut", {0: [10.0]})  # its first epoch took 10 s

    def resumed(budget, epoch=1, epochs=3):
        state = TrainState(epoch=epoch, epochs=epochs)
        plan_fold(_cfg(demo_root, tmp_path, budget, epochs=9), run, 0, state, Dist())
        return state.epochs

    assert resumed("200s") == 9  # 100 s per fold: 1 + floor(90 / 10) = 10, at most train.epochs
    assert resumed("100s") == 5  # 50 s: 1 + floor(40 / 10)
    assert resumed("40s") == 3  # 20 s fit 2: never shortened here (the cut after the next epoch trims it)
    assert resumed("200s", epoch=3, epochs=3) == 3  # its planned epochs done: its schedule has ended
    assert resumed(None) == 9  # no budget: train.epochs, as before
    assert FoldBudget(100.0, 9).replan(3, 2, 20.0, 10.0) == 3  # what lengthening waited for before: the third epoch


def test_timed_seconds_reads_this_folds_time_and_the_others_pace(demo_root, tmp_path):
    run = Run(tmp_path / "run")
    rows = {0: [10.0, 20.0], 1: [4.0, 6.0, 8.0], 2: [30.0]}
    for k, seconds in rows.items():
        run.fold_dir(k).mkdir(parents=True)
        pd.DataFrame({"fold": k, "epoch": range(1, len(seconds) + 1), "val_score": 0.5, "seconds": seconds}).to_csv(
            run.metrics_csv(k), index=False)
    assert timed_seconds(run, 1) == ([4.0, 6.0, 8.0], 20.0)  # its epochs; (10 + 20 + 30) / 3
    assert timed_seconds(run, 1, upto=2) == ([4.0, 6.0], 20.0)  # those a checkpoint after epoch 2 holds
    assert timed_seconds(run, 3) == ([], 78.0 / 6)  # a fold not started yet
    assert timed_seconds(Run(tmp_path / "empty"), 0) == ([], None)
    cfg = _cfg(demo_root, tmp_path, "90s", epochs=9)  # 45 s per fold
    state = TrainState()
    assert plan_fold(cfg, run, 3, state, Dist())[1] == []
    assert state.epochs == 3  # floor(45 / 13)
    resumed = TrainState(epoch=2, epochs=9)  # fold 1 resumed from its checkpoint after epoch 2
    assert plan_fold(cfg, run, 1, resumed, Dist())[1] == [4.0, 6.0]


def _timed_run(path, seconds_by_fold, done=()):
    run = Run(path)
    for k, seconds in seconds_by_fold.items():
        run.fold_dir(k).mkdir(parents=True)
        pd.DataFrame({"fold": k, "epoch": range(1, len(seconds) + 1), "val_score": 0.5, "seconds": seconds}).to_csv(
            run.metrics_csv(k), index=False)
    for k in done:
        run.done_json(k).write_text("{}")
    return run


def test_what_finished_folds_leave_of_their_shares_goes_to_the_folds_after_them(demo_root, tmp_path):
    # the committed TGS config's run on the bf16 CPU (2026-12-02): 23 min over 4 folds, 345 s each; folds 0-2 ran
    # all 9 epochs in 334.108, 328.058 and 336.841 s, and fold 3 (42-47 s per epoch) was cut to 7 in its 345 s
    cfg = _cfg(demo_root, tmp_path, "23m", epochs=9, folds={"n_splits": 4, "method": "kfold"})
    tgs = {0: [41.639, 34.374, 33.432, 35.782, 40.194, 37.37, 35.666, 36.939, 38.712],  # 334.108 s
           1: [41.219, 37.169, 34.154, 37.785, 35.567, 35.805, 33.175, 36.68, 36.504],  # 328.058
           2: [42.522, 33.393, 34.186, 35.695, 36.293, 37.939, 38.047, 38.202, 40.564]}  # 336.841
    run = _timed_run(tmp_path / "tgs", tgs, done=(0, 1, 2))
    metrics = read_metrics(run.dir)
    b = fold_budget(cfg)
    assert carried(b, cfg, run, 0, metrics) == b  # nothing before fold 0
    assert carried(b, cfg, run, 3, metrics).share_s == pytest.approx(345 + 10.892 + 16.942 + 8.159)  # all of it to the last
    assert carried(b, cfg, run, 2, metrics).share_s == pytest.approx(345 + (10.892 + 16.942) / 2)  # shared with fold 3
    state = TrainState()
    assert plan_fold(cfg, run, 3, state, Dist())[0].share_s == pytest.approx(380.993)  # what the fold plans and done.json keeps
    assert state.epochs == 9  # floor(380.993 / 36.98), the mean epoch of folds 0-2, is 10: train.epochs
    # fold 3's epochs (47.078, 43.803, 42.303, 42.759, 38.603, 39.292, 39.671 s): its 345 s cut it to 7 after the
    # second (90.881 + 7 x 43.803 > 362.25); 380.993 s keep all 9 (<= 400.04, the 5% tolerance) at each epoch's pace
    fold3 = [47.078, 43.803, 42.303, 42.759, 38.603, 39.292, 39.671]
    assert FoldBudget(345.0, 9).replan(9, 2, sum(fold3[:2]), epoch_pace(fold3[:2])) == 7
    for done in range(2, 8):
        assert FoldBudget(380.993, 9).replan(9, done, sum(fold3[:done]), epoch_pace(fold3[:done])) == 9
    # a fold still training (no done.json: a --fold job beside this one) counts as its share
    running = _timed_run(tmp_path / "running", tgs, done=(0, 2))
    assert carried(b, cfg, running, 2, read_metrics(running.dir)).share_s == pytest.approx(345 + 10.892 / 2)
    # an earlier fold over its share takes it from the later ones, down to nothing (a fold still runs one epoch)
    over = _timed_run(tmp_path / "over", {0: [200.0, 200.0]}, done=(0,))
    assert carried(b, cfg, over, 1, read_metrics(over.dir)).share_s == pytest.approx(345 - 55 / 3)
    spent = _timed_run(tmp_path / "spent", {0: [2000.0]}, done=(0,))
    assert carried(b, cfg, spent, 1, read_metrics(spent.dir)).share_s == 0.0
    # the folds that share: folds.only's order, and under min_fold_epochs only those the first epoch let in
    only = _cfg(demo_root, tmp_path, "23m", epochs=9, folds={"n_splits": 4, "method": "kfold", "only": [2, 0]})
    assert carried(fold_budget(only), only, run, 0, metrics).share_s == pytest.approx(690 + 690 - 336.841)
    assert carried(fold_budget(only), only, run, 2, metrics).share_s == 690.0
    two = FoldBudget(690.0, 9, folds=2)
    assert carried(two, cfg, run, 1, metrics).share_s == pytest.approx(690 + 690 - 334.108)
    assert carried(two, cfg, run, 3, metrics) == two  # left out by min_fold_epochs: not one of the folds sharing


def test_the_first_epoch_after_a_resume_is_one_vote_of_three():
    # a fold resumed after 6 epochs of 100 s in a 900 s share (945 with the tolerance), 9 planned: the first
    # epoch after the resume pays for starting up again (workers, first kernel calls) and takes 130 s
    b = FoldBudget(share_s=900.0, max_epochs=9)
    after = [100.0] * 6 + [130.0]
    assert b.replan(9, 7, 730.0, 130.0) == 8  # at that epoch's pace alone: 730 + 2 x 130 > 945, 7 + floor(170 / 130)
    assert b.replan(9, 7, 730.0, epoch_pace(after)) == 9  # the median of 100, 100, 130: 730 + 2 x 100 = 930 <= 945


# ----------------------------------------------------------------------------- train.min_fold_epochs


def test_folds_that_fit():
    assert folds_that_fit(1380.0, 4, 6, 160.0) == 1  # 23 min at 160 s per epoch: floor(1380 / 960)
    assert folds_that_fit(1380.0, 4, 4, 160.0) == 2  # floor(1380 / 640)
    assert folds_that_fit(1380.0, 4, 6, 30.0) == 4  # 7 would fit: never more than planned
    assert folds_that_fit(100.0, 4, 6, 500.0) == 1  # not even one: at least one
    assert folds_that_fit(1380.0, 4, 0, 160.0) == 4  # off


def test_the_first_epoch_decides_how_many_folds_share_the_budget(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "23m", epochs=9, folds={"n_splits": 4, "method": "kfold"}, train={"min_fold_epochs": 6})
    assert fold_budget(cfg) == FoldBudget(345.0, 9, 4, decided=False)  # not timed yet: the equal share, provisional
    assert fold_budget(cfg, 160.0) == FoldBudget(1380.0, 9, 1)  # one fold of 8 epochs instead of four of 2
    assert fold_budget(cfg, 100.0) == FoldBudget(690.0, 9, 2)  # floor(1380 / 600)
    assert fold_budget(cfg, 30.0) == FoldBudget(345.0, 9, 4)
    # asking more than train.epochs (`--set train.epochs=2` on a config that asks 6): a fold is worth train.epochs
    two = _cfg(demo_root, tmp_path, "23m", epochs=2, folds={"n_splits": 4, "method": "kfold"}, train={"min_fold_epochs": 6})
    assert fold_budget(two, 200.0) == FoldBudget(460.0, 2, 3)  # floor(1380 / (2 x 200)); with 6: 1
    assert decide_folds(cfg, fold_budget(cfg), 0, 160.0, Dist()) == FoldBudget(1380.0, 9, 1)
    decided = FoldBudget(690.0, 9, 2)
    assert decide_folds(cfg, decided, 0, 30.0, Dist()) is decided  # decided once, by the run's first epoch


def test_first_epoch_seconds_is_epoch_1_of_the_first_planned_fold_timed(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "1h", folds={"n_splits": 4, "method": "kfold", "only": [2, 1, 3]}, train={"min_fold_epochs": 2})
    rows = pd.DataFrame({"fold": [1, 1, 2, 0], "epoch": [1, 2, 2, 1], "seconds": [40.0, 30.0, 20.0, 10.0]})
    assert first_epoch_seconds(cfg, rows) == 40.0  # fold 2 (first in folds.only) has no epoch-1 row; fold 0 is not planned
    assert first_epoch_seconds(cfg, rows.iloc[:0]) is None
    assert run_folds(cfg, Run(tmp_path / "empty")) == [2, 1, 3]  # nothing timed: all planned


def test_a_budget_that_fits_one_fold_trains_and_tunes_it_and_resume_with_more_trains_the_rest(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "0.01s", epochs=3, folds={"n_splits": 3, "method": "kfold"}, train={"min_fold_epochs": 2})
    cv = run_cv(cfg)
    run = Run.of(cfg)
    assert cv["folds"] == [0] and cv["n_images"] == 4 and run.trained_folds() == [0]
    assert cv["time_budget"] == {"budget": "0.01s", "min_fold_epochs": 2, "folds": [0], "left_out": [1, 2]}
    assert not run.fold_dir(1).exists()
    assert json.loads(run.first_epoch_json.read_text())["fold"] == 0  # the decision's epoch, recorded by the loop
    done = json.loads(run.done_json(0).read_text())
    assert (done["budget_folds"], done["fold_budget_s"], done["epochs_run"]) == (1, 0.01, 1)  # the whole budget
    assert json.loads(run.postprocess_json.read_text())["folds"] == [0]  # the run's folds are done: tuned
    from seg_toolkit.report.data import compute_report_data

    assert any("fold(s) [1, 2] were left out" in w for w in compute_report_data(run.dir).warnings)
    from seg_toolkit.compare import collect

    assert collect([run.dir])[0].status == "partial: 1/3 folds; [1, 2] left out by the time budget"
    more = _cfg(demo_root, tmp_path, "10h", epochs=3, folds={"n_splits": 3, "method": "kfold"}, train={"min_fold_epochs": 2})
    cv = run_cv(more, resume=True)
    assert cv["folds"] == [0, 1, 2] and cv["time_budget"]["left_out"] == []
    assert json.loads(run.done_json(1).read_text())["budget_folds"] == 3


@pytest.mark.parametrize("train, match", [({"min_fold_epochs": 2, "time_budget": None}, "set a time_budget"),
                                          ({"min_fold_epochs": -1}, "got -1"), ({"min_fold_epochs": 2.5}, "expected int, got float 2.5")])
def test_min_fold_epochs_is_checked_when_the_config_loads(demo_root, tmp_path, train, match):
    with pytest.raises(ConfigError, match=rf"train.min_fold_epochs.*{match}|{match}"):
        _cfg(demo_root, tmp_path, "10m", train=train)


def test_an_attempt_set_aside_after_a_nan_loss_counts_against_its_folds_share(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "4m", epochs=9, folds={"n_splits": 4, "method": "kfold"})  # 60 s per fold
    run = _timed_run(tmp_path / "run", {0: [10.0, 10.0]}, done=(0,))
    aside = run.failed_attempt_dir(0, 1)
    aside.mkdir()
    pd.DataFrame({"fold": 0, "epoch": [1, 2, 3], "val_score": 0.5, "seconds": [9.0, 8.0, 7.0]}).to_csv(aside / "metrics.csv", index=False)
    assert set_aside_seconds(run, 0) == 24.0 and set_aside_seconds(run, 1) == 0.0
    metrics = read_metrics(run.dir)
    assert len(metrics) == 2  # the learning curves keep to the attempt that counts
    # fold 0 spent 20 + 24 s of its 60: fold 1 gets (60 - 44) / 3 more
    assert carried(fold_budget(cfg), cfg, run, 1, metrics).share_s == pytest.approx(60 + 16 / 3)
    # a fold retried after a NaN loss plans its new attempt in what the failed one left of its share
    retried = _timed_run(tmp_path / "retried", {})
    retried.fold_dir(1).mkdir(parents=True)
    retried.failed_attempt_dir(1, 1).mkdir()
    pd.DataFrame({"fold": 1, "epoch": [1, 2], "seconds": [20.0, 15.0]}).to_csv(retried.failed_attempt_dir(1, 1) / "metrics.csv", index=False)
    state = TrainState()
    budget, earlier = plan_fold(cfg, retried, 1, state, Dist())
    assert budget.share_s == 25.0 and earlier == [] and state.epochs == 9  # nothing timed in this attempt yet
    assert budget.replan(9, 1, 15.0, 15.0) == 1  # 15 + 15 > 25: the retry stops after its first epoch


def test_the_first_epochs_decision_keeps_what_a_nan_attempt_took_from_the_fold(demo_root, tmp_path):
    """plan_fold took the set-aside attempt's seconds off the share; the first epoch's decision (min_fold_epochs)
    then gave the fold the whole share again (15.6 s of a 14 s budget in the audit's run)."""
    cfg = _cfg(demo_root, tmp_path, "23m", epochs=9, folds={"n_splits": 4, "method": "kfold"}, train={"min_fold_epochs": 6})
    run = _timed_run(tmp_path / "run", {})
    run.fold_dir(0).mkdir(parents=True)
    run.failed_attempt_dir(0, 1).mkdir()
    pd.DataFrame({"fold": 0, "epoch": [1, 2], "seconds": [20.0, 15.0]}).to_csv(run.failed_attempt_dir(0, 1) / "metrics.csv", index=False)
    assert decide_folds(cfg, fold_budget(cfg), 0, 160.0, Dist(), run) == FoldBudget(1380.0 - 35.0, 9, 1)


def test_the_runs_first_epoch_is_recorded_once_and_decides_for_every_fold(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, "23m", epochs=9, folds={"n_splits": 4, "method": "kfold"}, train={"min_fold_epochs": 6})
    # a `--fold 2` job timed first: its first epoch (160 s) decides one fold; fold 0, run later at 30 s per epoch,
    # does not change that decision (before, the epoch-1 row of the first planned fold did, whenever it came)
    run = _timed_run(tmp_path / "run", {2: [160.0, 150.0]}, done=(2,))
    assert decide_folds(cfg, fold_budget(cfg), 2, 160.0, Dist(), run) == FoldBudget(1380.0, 9, 1)
    assert json.loads(run.first_epoch_json.read_text()) == {"fold": 2, "seconds": 160.0}
    assert decide_folds(cfg, fold_budget(cfg), 0, 30.0, Dist(), run) == FoldBudget(1380.0, 9, 1)  # the recorded epoch decides
    assert json.loads(run.first_epoch_json.read_text()) == {"fold": 2, "seconds": 160.0}  # not overwritten
    run.fold_dir(0).mkdir()  # fold 0's first epoch, as its job writes it
    pd.DataFrame({"fold": 0, "epoch": [1], "val_score": 0.5, "seconds": [30.0]}).to_csv(run.metrics_csv(0), index=False)
    metrics = read_metrics(run.dir)
    assert first_epoch_seconds(cfg, metrics) == 30.0  # the rows alone would now say fold 0's 30 s ...
    assert first_epoch_seconds(cfg, metrics, run) == 160.0  # ... the recorded first epoch is what decides
    # fold 2 was trained by its job: the run's folds are fold 0 (the decision) and fold 2; it is never "left out"
    assert run_folds(cfg, run) == [0, 2] and left_out_folds(cfg, run) == [1, 3]
    assert not list(run.dir.glob(".first_epoch.json.*"))  # no temporary file left behind


def test_a_fold_left_out_by_the_first_epoch_trains_when_the_runs_folds_leave_enough(demo_root, tmp_path):
    """Split B's held-out TGS run (tf_efficientnet_lite0, 2026-12-03): the first epoch (66.2 s, start-up included)
    let one fold of 8+ epochs into 17m15s; fold 0 ran all 9 epochs in 476.6 s and the run stopped with 558.4 s unused."""
    from seg_toolkit.budget_run import admit_fold, admitted_folds, record_first_epoch

    cfg = _cfg(demo_root, tmp_path, "17m15s", epochs=9, folds={"n_splits": 4, "method": "kfold"}, train={"min_fold_epochs": 8})
    fold0 = [66.2, 52.5, 46.6, 42.7, 52.5, 50.0, 57.3, 54.2, 54.6]  # 476.6 s, 52.956 s per epoch
    run = _timed_run(tmp_path / "b", {0: fold0})
    record_first_epoch(run, 0, 66.2)
    assert run_folds(cfg, run) == [0]  # floor(1035 / (8 x 66.2)) = 1
    assert not admit_fold(cfg, run, 1)  # fold 0 still training: nothing is known of what it leaves
    run.done_json(0).write_text("{}")
    assert admit_fold(cfg, run, 1)  # 1035 - 476.6 = 558.4 s left >= 8 x 52.956 = 423.6
    assert json.loads(run.admitted_folds_json.read_text()) == {"folds": [{"fold": 1, "seconds_left": 558.4, "epoch_s": 52.956}]}
    assert run_folds(cfg, run) == [0, 1] and left_out_folds(cfg, run) == [2, 3] and admitted_folds(run) == [1]
    metrics = read_metrics(run.dir)
    assert carried(fold_budget(cfg, 66.2), cfg, run, 1, metrics).share_s == pytest.approx(558.4)  # all that is left
    state = TrainState()
    assert plan_fold(cfg, run, 1, state, Dist())[0].share_s == pytest.approx(558.4)
    assert state.epochs == 9  # floor(558.4 x 1.05 / 52.956) = 11: train.epochs
    # fold 1 runs its 9 epochs in 468 s: 90.4 s left, not 8 epochs: fold 2 stays out, and so does fold 3
    run = _timed_run(tmp_path / "b2", {0: fold0, 1: [52.0] * 9}, done=(0, 1))
    record_first_epoch(run, 0, 66.2)
    run.admitted_folds_json.write_text(json.dumps({"folds": [{"fold": 1, "seconds_left": 558.4, "epoch_s": 52.956}]}))
    assert not admit_fold(cfg, run, 2) and run_folds(cfg, run) == [0, 1]
    assert not admit_fold(cfg, run, 1)  # already one of the run's folds: nothing to admit
    # without min_fold_epochs no fold is ever left out, so none is admitted; nor before the first epoch decided
    plain = _cfg(demo_root, tmp_path, "17m15s", epochs=9, folds={"n_splits": 4, "method": "kfold"})
    assert not admit_fold(plain, run, 2)
    assert not admit_fold(cfg, _timed_run(tmp_path / "none", {}), 1)


def test_the_first_epoch_is_recorded_once_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    import errno

    import seg_toolkit.budget_run as budget_mod
    from seg_toolkit.budget_run import record_first_epoch

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(budget_mod.os, "link", no_links)
    run = _timed_run(tmp_path / "r", {})
    run.dir.mkdir()
    assert record_first_epoch(run, 2, 41.5) == 41.5
    assert record_first_epoch(run, 0, 66.2) == 41.5  # the first fold timed wins, as with links
    assert json.loads(run.first_epoch_json.read_text()) == {"fold": 2, "seconds": 41.5}
    assert [p.name for p in run.first_epoch_json.parent.iterdir() if p.name.endswith(".tmp")] == []
