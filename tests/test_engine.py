"""Training engine pieces: EMA, encoder freezing, bf16 on CPU, schedules, early stopping, accumulation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from seg_toolkit import train
from seg_toolkit.checkpoint import load_checkpoint, load_model
from seg_toolkit.config import config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.optim import LRSchedule

from .conftest import demo_dict


def _cfg(demo_root, tmp_path, train_opts=None, **sections):
    return config_from_dict(demo_dict(
        demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "only": [0]},
        train={"epochs": 2, "batch_size": 2, **(train_opts or {})}, **sections,
    ))


@pytest.mark.parametrize("use_ema", [False, True])
def test_ema_weights_differ_and_config_decides(demo_root, tmp_path, use_ema):
    cfg = _cfg(demo_root, tmp_path, {"ema_decay": 0.5, "use_ema": use_ema})
    run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    ckpt = load_checkpoint(fold / "best.pt")
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["model"] if ckpt["model"][k].is_floating_point())
    model, _ = load_model(fold / "best.pt")
    chosen = ckpt["ema"] if use_ema else ckpt["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, chosen[k]), k
    cols = set(pd.read_csv(fold / "metrics.csv").columns)
    assert ("raw_val_score" in cols) if use_ema else ("ema_val_score" in cols)  # the other one is logged too


def test_encoder_frozen_for_first_epochs(demo_root, tmp_path, monkeypatch):
    calls = []
    original = train.set_frozen_encoder
    monkeypatch.setattr(train, "set_frozen_encoder", lambda m, frozen: (calls.append(frozen), original(m, frozen)))
    cfg = _cfg(demo_root, tmp_path, {"epochs": 1}, model={"arch": "scratch_unet", "depth": 2, "base_width": 4, "freeze_encoder_epochs": 1})
    # the initial weights: same seed, same order of draws as train_attempt
    train.seed_everything(cfg.train.seed + 0, cfg.train.deterministic)
    initial, _ = train.build_model_and_ema(cfg, torch.device("cpu"))
    run_cv(cfg)
    assert calls == [True]
    trained = load_checkpoint(cfg.run_dir / "fold_0" / "last.pt")["model"]
    enc = [k for k in trained if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    dec = [k for k in trained if not k.startswith("encoder.") and trained[k].is_floating_point()]
    assert enc and all(torch.equal(trained[k], initial.state_dict()[k]) for k in enc)
    assert any(not torch.equal(trained[k], initial.state_dict()[k]) for k in dec)


def test_bf16_autocast_on_cpu_and_grad_accumulation(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, {"epochs": 1, "amp": "bf16", "grad_accum": 2, "grad_clip": 1.0})
    cv = run_cv(cfg)
    assert math.isfinite(cv["score"])
    # 6 training images, batch 2 -> 3 batches; accumulating 2 -> updates after batch 2 and after the last one
    assert load_checkpoint(cfg.run_dir / "fold_0" / "last.pt")["step"] == 2


def test_early_stopping_with_patience(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "validate_epoch", lambda *a, **k: {"val_loss": 1.0, "val_score": 0.5, "metric": "dice"})
    cfg = _cfg(demo_root, tmp_path, {"epochs": 6, "early_stopping_patience": 2})
    run_cv(cfg)
    rows = pd.read_csv(cfg.run_dir / "fold_0" / "metrics.csv")
    assert rows["epoch"].tolist() == [1, 2, 3]  # best at 1, then two epochs without improvement
    assert rows["best"].tolist() == [1, 0, 0]
    # done.json says why the fold ended before its 6 epochs, and the report shows it (it said only "16 epoch(s)")
    from seg_toolkit.files import read_json
    from seg_toolkit.report import build_report

    assert read_json(cfg.run_dir / "fold_0" / "done.json")["stopped_early"] is True
    text = build_report(cfg.run_dir).read_text(encoding="utf-8")
    assert ">3 (early stop)<" in text
    assert "6 epoch(s), early stopping after 2 epoch(s) without improvement" in text


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(name, epochs=10, per_epoch=10, **sched):
    cfg = config_from_dict({"train": {"epochs": epochs}, "optim": {"lr": 1.0}, "scheduler": {"name": name, **sched}})
    opt = _opt()
    s = LRSchedule(cfg, opt, per_epoch)
    out = []
    for step in range(1, epochs * per_epoch + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step_update(step)
    return out, opt


def test_cosine_with_warmup():
    lrs, opt = _lrs("cosine", warmup_epochs=1, min_lr=0.01)
    assert lrs[0] == pytest.approx(0.01)  # warmup starts at min_lr
    assert max(lrs) == pytest.approx(1.0, abs=0.01) and lrs.index(max(lrs)) in (10, 11)  # peak right after warmup
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01, abs=1e-3)  # ends at min_lr


def test_poly_step_and_onecycle():
    poly, _ = _lrs("poly", power=1.0, min_lr=0.0)
    assert poly[50] == pytest.approx(0.5, abs=0.02)  # linear decay halfway
    step, _ = _lrs("step", step_size=4, gamma=0.1)
    assert step[39] == pytest.approx(1.0) and step[41] == pytest.approx(0.1)
    one, _ = _lrs("onecycle")
    assert one[0] < 0.1 and max(one) == pytest.approx(1.0, rel=1e-3) and one[-1] < 1e-3
    assert one.index(max(one)) == 29  # warmup_epochs 0: torch's 30% of the 100 updates
    # a warmup of 0.2 epochs is 2 updates (pct_start 0.02); it was raised to 5% without a word (a peak at update 4)
    short, _ = _lrs("onecycle", warmup_epochs=0.2)
    assert short.index(max(short)) == 1 and max(short) == pytest.approx(1.0, rel=1e-3)


def test_plateau_reduces_after_patience():
    cfg = config_from_dict({"train": {"epochs": 10}, "scheduler": {"name": "plateau", "patience": 1, "gamma": 0.5}})
    opt = _opt()
    s = LRSchedule(cfg, opt, 5)
    for epoch, score in enumerate([0.5, 0.5, 0.5]):
        s.step_epoch(epoch, score)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # best, then 2 epochs > patience 1 without gain
    restored = LRSchedule(cfg, _opt(), 5)
    restored.load_state_dict(s.state_dict())  # its counters travel in the checkpoint
    assert restored.impl.num_bad_epochs == s.impl.num_bad_epochs and restored.impl.best == s.impl.best


def test_plateau_warmup():
    cfg = config_from_dict({"train": {"epochs": 10}, "scheduler": {"name": "plateau", "warmup_epochs": 1, "min_lr": 0.0}})
    opt = _opt()
    s = LRSchedule(cfg, opt, 4)
    assert opt.param_groups[0]["lr"] == 0.0
    s.step_update(2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    s.step_update(4)
    s.step_update(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_keep_best_k_checkpoints(demo_root, tmp_path, monkeypatch):
    scores = iter([0.3, 0.6, 0.4, 0.5, 0.2])
    monkeypatch.setattr(train, "validate_epoch", lambda *a, **k: {"val_loss": 1.0, "val_score": next(scores), "metric": "dice"})
    cfg = _cfg(demo_root, tmp_path, {"epochs": 5, "keep_best_k": 2})
    run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    assert sorted(p.name for p in fold.glob("best_e*.pt")) == ["best_e002.pt", "best_e004.pt"]  # scores 0.6 and 0.5
    assert load_checkpoint(fold / "best.pt")["epoch"] == 2
    assert load_checkpoint(fold / "best_e004.pt")["epoch"] == 4


def test_validation_loss_at_model_size_and_score_at_original_size(demo_root, tmp_path):
    """The val loss is the training loss at the model's input size (target resized by the nearest pixel centre, as the
    training transforms resize masks), the score is computed on probabilities resized bilinearly to each original size,
    as the predictor's are (resized logits, activated after, scored other pixels)."""
    import torch.nn.functional as F

    from seg_toolkit.losses import build_loss
    from seg_toolkit.evaluator import Evaluator
    from seg_toolkit.tensors import resize_target

    cfg = _cfg(demo_root, tmp_path, loss={"bce": 1.0, "dice": 0.0})
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    images = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    same = (torch.rand(2, 3, 32, 32) > 0.5).float()  # one batch of equal original sizes (x2)
    mixed = [(torch.rand(3, 32, 32) > 0.5).float(), (torch.rand(3, 48, 48) > 0.5).float()]  # x2 and x3: a list
    loader = [{"image": images[0], "target": same}, {"image": images[1], "target": mixed}]
    stats = train.validate_epoch(cfg, model, None, build_loss(cfg), loader, torch.device("cpu"), amp=None)

    with torch.no_grad():
        lg0, lg1 = model(images[0]), model(images[1])
    # the centre of output pixel i is input pixel (i + 0.5) * s: x2 takes rows 1, 3, ..., x3 rows 1, 4, ...
    per_image = [F.binary_cross_entropy_with_logits(lg0[j], same[j][:, 1::2, 1::2]) for j in range(2)]
    per_image += [F.binary_cross_entropy_with_logits(lg1[0], mixed[0][:, 1::2, 1::2]),
                  F.binary_cross_entropy_with_logits(lg1[1], mixed[1][:, 1::3, 1::3])]
    assert stats["val_loss"] == pytest.approx(float(torch.stack(per_image).mean()), rel=1e-5)

    ev = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    ev.update(F.interpolate(torch.sigmoid(lg0), size=(32, 32), mode="bilinear", align_corners=False), same)
    for j, t in enumerate(mixed):
        ev.update(F.interpolate(torch.sigmoid(lg1[j : j + 1]), size=t.shape[-2:], mode="bilinear", align_corners=False), t[None])
    assert stats["val_score"] == pytest.approx(float(ev.compute()["score"]), abs=1e-6)

    ids = torch.arange(36).reshape(1, 6, 6)  # multiclass ids (N, H, W): the centres are rows / columns 1, 3, 5
    assert torch.equal(resize_target(ids, (3, 3)), ids[:, 1::2, 1::2])
    assert resize_target(ids, (6, 6)) is ids


def _two_groups(lr=1.0, mult=0.01):
    """An encoder group at lr x mult and a decoder group at lr, as models.param_groups makes them."""
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * mult, "lr_mult": mult},
                            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "lr_mult": 1.0}], lr=lr)


@pytest.mark.parametrize("name", ["cosine", "poly", "step", "plateau"])
def test_encoder_lr_mult_holds_through_warmup_and_the_floor(name):
    """min_lr was one absolute value for every group: an encoder at lr x 0.01 = 0.01 below min_lr 0.05 rose towards
    it (and warmup started every group at min_lr). Each group is now its multiplier times the schedule's lr."""
    extra = {"step_size": 2} if name == "step" else {"min_lr": 0.05}
    cfg = config_from_dict({"train": {"epochs": 4}, "optim": {"lr": 1.0}, "scheduler": {"name": name, "warmup_epochs": 1, **extra}})
    opt = _two_groups()
    s = LRSchedule(cfg, opt, 5)
    seen = []
    for step in range(1, 21):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        s.step_update(step)
        if step % 5 == 0:
            s.step_epoch(step // 5 - 1, 0.5)  # a flat score: plateau reduces
    for enc, dec in seen:
        assert enc == pytest.approx(0.01 * dec, rel=1e-9)
    if name != "step":  # (step warms up from 0)
        assert seen[0][1] == pytest.approx(0.05)  # warmup from min_lr (the decoder) and min_lr x 0.01 (the encoder)
        assert seen[-1][0] >= 0.05 * 0.01 - 1e-12  # the encoder's floor is min_lr x 0.01, not min_lr


def test_onecycle_keeps_the_configured_momentum_and_survives_a_cut_to_its_warmup():
    cfg = config_from_dict({"train": {"epochs": 3}, "optim": {"name": "sgd", "lr": 1.0, "momentum": 0.5},
                            "scheduler": {"name": "onecycle", "warmup_epochs": 1}})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.5)
    s = LRSchedule(cfg, opt, 4)
    for step in range(1, 5):
        opt.step()
        s.step_update(step)
        assert opt.param_groups[0]["momentum"] == 0.5  # torch cycled it 0.95 -> 0.85
    # train.time_budget cuts the run to 1 epoch = warmup_epochs: pct_start was 1.0 (ZeroDivisionError on every resume)
    cut = s.for_epochs(cfg, opt, 4, epochs=1, n_updates=2)
    for step in range(3, 5):
        opt.step()
        cut.step_update(step)
    assert math.isfinite(opt.param_groups[0]["lr"])


def test_onecycle_with_one_update_of_warmup_runs():
    """4 epochs of one update each, warming up for 1: torch's OneCycleLR divided by pct_start x total_steps - 1 = 0
    (a ZeroDivisionError when fold 0 built its schedule, found by a config audit). The lr now rises towards optim.lr and
    falls back, finite at every step."""
    cfg = config_from_dict({"train": {"epochs": 4}, "optim": {"lr": 1.0}, "scheduler": {"name": "onecycle", "warmup_epochs": 1}})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LRSchedule(cfg, opt, 1)
    lrs = [opt.param_groups[0]["lr"]]
    for step in range(1, 4):
        opt.step()
        s.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert all(math.isfinite(v) for v in lrs) and lrs[0] < max(lrs) <= 1.0 and lrs[-1] < max(lrs)
    one = config_from_dict({"train": {"epochs": 1}, "optim": {"lr": 1.0}, "scheduler": {"name": "onecycle"}})
    LRSchedule(one, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1)  # a single update: no error


@pytest.mark.parametrize("name", ["cosine", "poly"])
def test_a_fold_cut_to_its_warmup_still_decays_to_min_lr(name):
    """train.time_budget cut a 10-epoch cosine with 2 warmup epochs to 2 epochs: all of it was warmup, and the fold
    ended at the peak lr (0.05 of 0.05) where the README promises min_lr."""
    cfg = config_from_dict({"train": {"epochs": 10}, "optim": {"lr": 1.0},
                            "scheduler": {"name": name, "warmup_epochs": 2, "min_lr": 0.01,
                                          **({"power": 1.0} if name == "poly" else {})}})
    opt = _opt()
    cut = LRSchedule(cfg, opt, 4).for_epochs(cfg, opt, 4, epochs=2, n_updates=0)  # 8 updates, 7 of them warmup
    lrs = []
    for step in range(1, 9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cut.step_update(step)
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(1.0, abs=0.01)  # the warmup still reaches the peak
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01, abs=1e-3)  # and the last update ends at min_lr


def test_patience_running_out_at_the_last_planned_epoch_is_no_early_stop(demo_root, tmp_path, monkeypatch):
    """Patience 2 spent at epoch 3 of 3: the fold ran every epoch, and the report had said '3 (early stop)' (review)."""
    from seg_toolkit.files import read_json

    monkeypatch.setattr(train, "validate_epoch", lambda *a, **k: {"val_loss": 1.0, "val_score": 0.5, "metric": "dice"})
    cfg = _cfg(demo_root, tmp_path, {"epochs": 3, "early_stopping_patience": 2})
    run_cv(cfg)
    done = read_json(cfg.run_dir / "fold_0" / "done.json")
    assert done["epochs_run"] == 3 and done["stopped_early"] is False


def test_min_delta_counts_patience_but_best_pt_is_the_best_epoch(demo_root, tmp_path, monkeypatch):
    """0.301 then 0.308 with min_delta 0.01: the second is not progress for the patience, but it is the better model
    (best.pt, best_epoch and the fold's CV stayed at the first)."""
    scores = iter([0.301, 0.300, 0.308, 0.305, 0.309])
    monkeypatch.setattr(train, "validate_epoch", lambda *a, **k: {"val_loss": 1.0, "val_score": next(scores), "metric": "dice"})
    cfg = _cfg(demo_root, tmp_path, {"epochs": 5, "early_stopping_patience": 3, "early_stopping_min_delta": 0.01})
    run_cv(cfg)
    rows = pd.read_csv(cfg.run_dir / "fold_0" / "metrics.csv")
    assert rows["epoch"].tolist() == [1, 2, 3, 4]  # no epoch beat 0.301 by 0.01: stopped after 3 without progress
    assert rows["best"].tolist() == [1, 0, 1, 0]
    assert load_checkpoint(cfg.run_dir / "fold_0" / "best.pt")["epoch"] == 3


def test_grad_accum_last_group_is_its_own_mean_and_the_lr_column_is_what_was_applied(demo_root, tmp_path):
    """3 batches with grad_accum 2: the second update comes from one batch and was divided by 2 (half a step with
    SGD). metrics.csv's lr was the lr after the epoch (the next epoch's); it is the mean the epoch's updates applied."""
    from seg_toolkit.epoch import train_one_epoch
    from seg_toolkit.fold_state import TrainState

    model = torch.nn.Conv2d(1, 1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.0)
    data = [{"image": torch.ones(1, 1, 2, 2) * v, "target": torch.zeros(1, 1, 2, 2)} for v in (1.0, 2.0, 3.0)]
    cfg = config_from_dict({"train": {"epochs": 1, "grad_accum": 2, "amp": "none"}, "optim": {"lr": 1.0},
                            "scheduler": {"name": "step", "step_size": 100}, "data": {"in_channels": 1}})
    seen = []

    def loss_fn(out, target):
        return (out - target).mean(), {}

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    orig = opt.step

    def step(*a, **k):
        seen.append(float(model.weight.grad))
        return orig(*a, **k)

    opt.step = step
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    sched = LRSchedule(cfg, opt, 2)
    stats = train_one_epoch(cfg, model, None, loss_fn, opt, sched, scaler, data, TrainState(), 0, 0, torch.device("cpu"))
    # d mean(w * x) / dw = x: the first update the mean of 1 and 2, the second batch 3 alone (was 3 / 2)
    assert seen == pytest.approx([1.5, 3.0])
    assert stats["lr"] == pytest.approx(1.0)


def test_an_epochs_checkpoint_save_counts_in_the_next_epochs_time(demo_root, tmp_path, monkeypatch):
    """The budget is the machine's time: the checkpoint written after epoch 1 (here made to take 0.3 s) is in epoch
    2's ``seconds``, not lost between the rows."""
    import time

    original = train.save_epoch
    monkeypatch.setattr(train, "save_epoch", lambda *a, **k: (time.sleep(0.3), original(*a, **k))[1])
    cfg = _cfg(demo_root, tmp_path, {"epochs": 2}, model={"arch": "scratch_unet", "depth": 2, "base_width": 4})
    t0 = time.perf_counter()
    run_cv(cfg)
    rows = pd.read_csv(cfg.run_dir / "fold_0" / "metrics.csv")
    assert rows["seconds"].iloc[1] >= 0.3  # epoch 1's save
    assert rows["seconds"].sum() <= time.perf_counter() - t0  # each second counted once


def test_train_cudnn_benchmark_is_applied_unless_deterministic(monkeypatch):
    """train.cudnn_benchmark (default true) was never read: cuDNN kept torch's default, no algorithm search."""
    from seg_toolkit.device import seed_everything

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seed_everything(0, deterministic=False, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is True
    seed_everything(0, deterministic=False, cudnn_benchmark=False)
    assert torch.backends.cudnn.benchmark is False
    seed_everything(0, deterministic=True, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False
    seed_everything(0, deterministic=False)  # leave the process as the other tests expect


def test_training_loader_workers_outlive_a_sigterm_to_the_process_group(demo_root, tmp_path):
    """SLURM's preemption SIGTERM reaches the workers too; torch's worker died of it, and the epoch failed on
    'DataLoader worker killed' before the graceful stop could save."""
    import os
    import signal

    from seg_toolkit.data import load_train_samples

    cfg = _cfg(demo_root, tmp_path, {"num_workers": 1, "persistent_workers": True})
    samples = load_train_samples(cfg)
    train_loader, _ = train.build_loaders(cfg, samples[:6], samples[6:], torch.device("cpu"))
    it = iter(train_loader)
    next(it)
    (worker,) = it._workers
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=1.0)
    assert worker.is_alive()
    assert sum(1 for _ in it) == len(train_loader) - 1  # the epoch goes on
    del it


def test_a_metrics_row_with_other_columns_keeps_each_value_under_its_name(tmp_path):
    """A resume from an older checkpoint (train_loss only) appended rows under the file's header by position."""
    from seg_toolkit.epoch import log_epoch

    path = tmp_path / "metrics.csv"
    train_stats = {"lr": 0.1, "train_loss": 0.5, "bce": 0.3, "dice": 0.2, "images_per_s": 10.0}
    log_epoch(path, 0, 0, train_stats, {"val_loss": 0.4, "val_score": 0.6, "metric": "dice"}, True, 1.0)
    older = {"lr": 0.05, "train_loss": 0.45, "images_per_s": 11.0}  # no loss terms
    log_epoch(path, 0, 1, older, {"val_loss": 0.35, "val_score": 0.65, "metric": "dice", "ema_val_score": 0.66}, True, 2.0)
    rows = pd.read_csv(path)
    assert list(rows.columns) == ["fold", "epoch", "lr", "train_loss", "bce", "dice", "images_per_s", "val_loss",
                                  "val_score", "best", "seconds", "ema_val_score"]
    assert rows["val_score"].tolist() == [0.6, 0.65] and rows["seconds"].tolist() == [1.0, 2.0]
    assert rows["bce"].isna().tolist() == [False, True] and rows["ema_val_score"].isna().tolist() == [True, False]
    log_epoch(path, 0, 2, older, {"val_loss": 0.3, "val_score": 0.7, "metric": "dice", "ema_val_score": 0.7}, True, 3.0)
    assert pd.read_csv(path)["val_score"].tolist() == [0.6, 0.65, 0.7]
