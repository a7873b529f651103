"""Exact resume: a training process killed mid-epoch (SIGKILL) and resumed ends with the same
weights as an uninterrupted run; a truncated newest checkpoint falls back to the previous one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from seg_toolkit.checkpoint import load_checkpoint

from .conftest import demo_dict

# Runs training in a child process; with KILL_AT > 0 the process SIGKILLs itself right after
# that many optimiser updates (a real kill: no cleanup, no finally blocks run), or sends
# itself the signal named by the fifth argument (SIGINT = Ctrl-C, SIGTERM = kill / preemption).
CHILD = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    from seg_toolkit import epoch, train
    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import run_cv

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(json.loads(sys.argv[1]))
    kill_at, resume = int(sys.argv[2]), sys.argv[3] == "1"
    sig = getattr(signal, sys.argv[4])
    if kill_at > 0:
        original, count = epoch.optimizer_step, [0]
        def step(*args, **kwargs):
            original(*args, **kwargs)
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), sig)
        epoch.optimizer_step = step
    run_cv(cfg, resume=resume)
    """
)


def _run(cfg_data: dict, kill_at: int = 0, resume: bool = False, signal_name: str = "SIGKILL") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg_data), str(kill_at), "1" if resume else "0", signal_name],
        capture_output=True, text=True, timeout=300,
    )


def _cfg(demo_root, runs, epochs=3):
    # fold 0 only: 6 training images, batch 2 -> 3 updates per epoch; dropout and
    # augmentation make the run depend on every RNG that must be restored
    return demo_dict(
        demo_root, runs,
        folds={"n_splits": 2, "method": "kfold", "seed": 0, "only": [0]},
        model={"arch": "scratch_unet", "depth": 2, "base_width": 4, "dropout": 0.3},
        transforms={"train": [{"HorizontalFlip": {"p": 0.5}}, {"RandomBrightnessContrast": {"p": 0.5}}]},
        train={"epochs": epochs, "batch_size": 2, "num_workers": 0, "deterministic": True, "ema_decay": 0.9},
    )


def _weights(run, name="last.pt"):
    return load_checkpoint(run / "t" / "fold_0" / name)


def _assert_same(a: dict, b: dict) -> None:
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"


@pytest.fixture(scope="module")
def reference_runs(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref")
    proc = _run(_cfg(demo_root, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs


@pytest.fixture(scope="module")
def reference(reference_runs):
    return _weights(reference_runs)


def test_killed_mid_epoch_then_resumed_equals_uninterrupted(demo_root, tmp_path, reference):
    runs = tmp_path / "runs"
    killed = _run(_cfg(demo_root, runs), kill_at=4)  # first update of epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert _weights(runs)["epoch"] == 1  # only epoch 1 was checkpointed
    resumed = _run(_cfg(demo_root, runs), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr
    final = _weights(runs)
    assert final["epoch"] == 3
    _assert_same(final, reference)


def test_truncated_checkpoint_falls_back_to_previous(demo_root, tmp_path, reference):
    runs = tmp_path / "runs"
    killed = _run(_cfg(demo_root, runs), kill_at=8)  # mid epoch 3: last.pt = epoch 2, prev.pt = epoch 1
    assert killed.returncode == -signal.SIGKILL
    last = runs / "t" / "fold_0" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # e.g. the disk filled up while it was copied
    resumed = _run(_cfg(demo_root, runs), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "cannot resume from" in resumed.stderr and "last.pt" in resumed.stderr
    assert "trying the previous checkpoint" in resumed.stderr
    _assert_same(_weights(runs), reference)  # replayed from epoch 1 to the same end


def test_an_unreadable_last_pt_is_set_aside_not_rotated_over_prev_pt(demo_root, tmp_path, reference):
    """Resumed from prev.pt past a truncated last.pt, the next save moved that last.pt over prev.pt: a kill before the
    new last.pt was written then left no readable checkpoint, and the fold started from scratch."""
    runs = tmp_path / "runs"
    assert _run(_cfg(demo_root, runs), kill_at=8).returncode == -signal.SIGKILL  # last.pt = epoch 2, prev.pt = epoch 1
    fold = runs / "t" / "fold_0"
    data = (fold / "last.pt").read_bytes()
    (fold / "last.pt").write_bytes(data[: len(data) // 2])
    resumed = _run(_cfg(demo_root, runs), kill_at=4, resume=True)  # epoch 2 again, saved, then killed in epoch 3
    assert resumed.returncode == -signal.SIGKILL
    assert "the unreadable last.pt is kept as last.pt.unreadable" in resumed.stderr
    assert (fold / "last.pt.unreadable").read_bytes() == data[: len(data) // 2]
    assert _weights(runs, "prev.pt")["epoch"] == 1 and _weights(runs)["epoch"] == 2  # prev.pt was the broken file
    assert _run(_cfg(demo_root, runs), resume=True).returncode == 0
    _assert_same(_weights(runs), reference)


def test_a_fold_resumed_with_fewer_epochs_than_it_has_run_says_so(demo_root, tmp_path):
    """Resumed after 2 epochs with train.epochs 1, the fold ended with epochs_run 2 of 1 planned without a word."""
    runs = tmp_path / "runs"
    assert _run(_cfg(demo_root, runs), kill_at=7).returncode == -signal.SIGKILL  # last.pt = epoch 2 of 3
    resumed = _run(_cfg(demo_root, runs, epochs=1), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fold 0: resumed with 1 epochs planned, but 2 have run (laid out for 3); it ends with those 2" in resumed.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(demo_root, tmp_path, reference, reference_runs, sig):
    runs = tmp_path / "runs"
    stopped = _run(_cfg(demo_root, runs), kill_at=5, signal_name=sig)  # second update of epoch 2
    assert stopped.returncode != 0
    assert "fold 0 interrupted in epoch 2 after 2 batches" in stopped.stderr
    ckpt = _weights(runs)
    assert (ckpt["epoch"], ckpt["train_state"]["batch"], ckpt["step"]) == (1, 2, 5)
    before = ckpt["train_state"]["seconds"]  # the two batches' time, kept for the budget
    assert before > 0
    resumed = _run(_cfg(demo_root, runs), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(_weights(runs), reference)  # the rest of epoch 2 replayed from batch 3 on
    rows = pd.read_csv(runs / "t" / "fold_0" / "metrics.csv")
    assert list(rows["epoch"]) == [1, 2, 3]
    assert rows.loc[1, "seconds"] > before  # epoch 2's row: the time before the stop and after the resume
    # and its losses average all of epoch 2's batches, as the uninterrupted run's row (was: only those after the resume)
    ref = pd.read_csv(reference_runs / "t" / "fold_0" / "metrics.csv")
    losses = [c for c in ref.columns if c.startswith("train_")]
    assert losses and rows[losses].values.tolist() == ref[losses].values.tolist()
    assert _weights(runs)["train_state"]["seconds"] == 0.0


def test_killed_between_an_epochs_row_and_its_checkpoint_runs_that_epoch_again(demo_root, tmp_path, reference):
    """The metrics row is written before the checkpoint: killed in between, the resume drops the row and runs the epoch
    again, so every epoch has its row (its time counts against train.time_budget) and the weights are the same."""
    runs = tmp_path / "runs"
    child = CHILD.replace("run_cv(cfg, resume=resume)", textwrap.dedent(
        """
        if kill_at > 0:
            original_save, saves = train.save_epoch, [0]
            def save(*args, **kwargs):
                saves[0] += 1
                if saves[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                original_save(*args, **kwargs)
            train.save_epoch = save
            epoch.optimizer_step = original
        run_cv(cfg, resume=resume)
        """))
    cfg = json.dumps(_cfg(demo_root, runs))
    killed = subprocess.run([sys.executable, "-c", child, cfg, "2", "0", "SIGKILL"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    metrics = runs / "t" / "fold_0" / "metrics.csv"
    assert list(pd.read_csv(metrics)["epoch"]) == [1, 2] and _weights(runs)["epoch"] == 1  # epoch 2's row, no checkpoint
    resumed = _run(_cfg(demo_root, runs), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(pd.read_csv(metrics)["epoch"]) == [1, 2, 3]  # epoch 2 ran again and wrote its row once
    _assert_same(_weights(runs), reference)


def _child_with(patch: str) -> str:
    """The child with ``patch`` run before training (kill_at 0: the optimiser steps are left alone)."""
    return CHILD.replace("run_cv(cfg, resume=resume)", textwrap.dedent(patch) + "\nrun_cv(cfg, resume=resume)")


def test_killed_while_writing_the_first_checkpoint_starts_again_without_a_second_row(demo_root, tmp_path, reference_runs):
    """Epoch 1's row and best.pt written, killed writing last.pt: no checkpoint to resume from, so the fold starts again;
    the row of the epoch it runs again is dropped (it was kept: epoch 1 twice in metrics.csv, its time charged twice)."""
    runs = tmp_path / "runs"
    child = _child_with("""
        from seg_toolkit import fold_state
        original_save = fold_state.save_checkpoint
        def save(ckpt, path):
            if path.name == "last.pt" and not resume:
                os.kill(os.getpid(), signal.SIGKILL)
            original_save(ckpt, path)
        fold_state.save_checkpoint = save
        """)
    cfg = json.dumps(_cfg(demo_root, runs))
    killed = subprocess.run([sys.executable, "-c", child, cfg, "0", "0", "SIGKILL"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    fold = runs / "t" / "fold_0"
    assert (fold / "best.pt").is_file() and not (fold / "last.pt").exists()  # best.pt is written first now
    assert list(pd.read_csv(fold / "metrics.csv")["epoch"]) == [1]
    resumed = subprocess.run([sys.executable, "-c", child, cfg, "0", "1", "SIGKILL"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "killed before its first checkpoint; it starts from scratch" in resumed.stderr
    assert list(pd.read_csv(fold / "metrics.csv")["epoch"]) == [1, 2, 3]
    _assert_same(_weights(runs), _weights(reference_runs))
    _assert_same(_weights(runs, "best.pt"), _weights(reference_runs, "best.pt"))


def test_a_best_pt_newer_than_the_last_checkpoint_is_the_best_so_far(tmp_path):
    """Killed between best.pt (epoch 2, 0.6) and last.pt (still epoch 1, best 0.5): the resumed state says epoch 2's 0.6
    is the best, which is what best.pt holds; epoch 2 run again replaces it by reaching that score (its row says best,
    as the uninterrupted run's did), and its patience counts as it did: the adoption set bad_epochs to 0, so with
    min_delta the resumed run stopped early later than the uninterrupted one, and the row said best=0."""
    from seg_toolkit.checkpoint import save_checkpoint
    from seg_toolkit.fold_state import TrainState, _adopt_newer_best, update_best
    from seg_toolkit.run import Run

    run = Run(tmp_path)
    run.fold_dir(0).mkdir(parents=True)
    save_checkpoint({"model": {}, "ema": None, "config": {}, "model_args": {}, "epoch": 2, "best_score": 0.6}, run.best_pt(0))
    state = TrainState(epoch=1, best_score=0.5, best_epoch=0, bad_epochs=1, epochs=3, patience_score=0.5)
    _adopt_newer_best(run, 0, state)
    assert (state.best_score, state.best_epoch, state.bad_epochs) == (0.6, 1, 1)
    again = TrainState(**{**state.__dict__})
    assert update_best(again, 0.6, 1, min_delta=0.5)  # epoch 2 again, the same score: the best, as it was
    assert again.bad_epochs == 2  # 0.6 is not 0.5 + min_delta: no progress, as in the uninterrupted run
    assert not update_best(TrainState(**{**state.__dict__}), 0.59, 1, min_delta=0.0)  # below what best.pt holds: kept
    older = TrainState(epoch=2, best_score=0.6, best_epoch=1, epochs=3)  # best.pt of the state's own best: nothing to do
    _adopt_newer_best(run, 0, older)
    assert (older.best_score, older.best_epoch) == (0.6, 1)


def test_ctrl_c_during_the_last_validation_stops_the_run(demo_root, tmp_path, reference):
    """A Ctrl-C after an epoch's last optimiser step (here: in the last epoch's validation) was only a flag the next
    step would read; there was none, so the run went on through OOF, the other folds and tuning, and exited 0."""
    runs = tmp_path / "runs"
    child = _child_with("""
        original_validate, calls = train.validate_epoch, [0]
        def validate(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3 and not resume:
                os.kill(os.getpid(), signal.SIGINT)
            return original_validate(*args, **kwargs)
        train.validate_epoch = validate
        """)
    cfg = json.dumps(_cfg(demo_root, runs))
    stopped = subprocess.run([sys.executable, "-c", child, cfg, "0", "0", "SIGINT"], capture_output=True, text=True, timeout=300)
    assert stopped.returncode != 0 and "fold 0 stopped after epoch 3" in stopped.stderr
    assert not (runs / "t" / "fold_0" / "done.json").exists() and not (runs / "t" / "cv.json").exists()
    resumed = subprocess.run([sys.executable, "-c", child, cfg, "0", "1", "SIGINT"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "all 3 epochs trained" in resumed.stderr and (runs / "t" / "cv.json").is_file()
    _assert_same(_weights(runs), reference)


def test_resumed_with_more_epochs_the_schedule_is_laid_out_for_them(demo_root, tmp_path):
    """train.epochs 3 -> 5 on --resume: the restored cosine ended at 3 epochs, so epochs 4-5 ran at the floor lr.
    Laid out again from the update reached, every later lr is the one a 5-epoch run has at that update."""
    five = tmp_path / "five"
    assert _run(_cfg(demo_root, five, epochs=5)).returncode == 0
    runs = tmp_path / "runs"
    assert _run(_cfg(demo_root, runs, epochs=3), kill_at=4).returncode == -signal.SIGKILL  # update 1 of epoch 2
    resumed = _run(_cfg(demo_root, runs, epochs=5), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed with 5 epochs planned instead of 3; its learning-rate schedule is laid out again" in resumed.stderr
    lr = pd.read_csv(runs / "t" / "fold_0" / "metrics.csv")["lr"].tolist()
    lr5 = pd.read_csv(five / "t" / "fold_0" / "metrics.csv")["lr"].tolist()
    assert len(lr) == 5 and lr[1:] == pytest.approx(lr5[1:], rel=1e-9)  # epoch 1 ran on the 3-epoch course
    assert lr[0] != pytest.approx(lr5[0])


def test_resume_accepts_what_does_not_change_results(demo_root, tmp_path):
    """--resume refused a relative run path, a data root spelled another way, another device or number of workers,
    and advised --overwrite (deleting the run); those keys may differ now, training keys still may not."""
    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import prepare_run
    from seg_toolkit.run_guard import RunExistsError

    base = _cfg(demo_root, tmp_path / "runs")
    run = prepare_run(config_from_dict(base), [0])
    run.fold_dir(0).mkdir()
    run.metrics_csv(0).write_text("fold,epoch\n0,1\n")  # fold 0 started: the saved config is the run's
    same = json.loads(json.dumps(base))
    same["data"]["root"] = str(demo_root) + "/./"
    same["train"].update(num_workers=2, pin_memory=False, device="cpu")
    prepare_run(config_from_dict(same), [0], resume=True)
    other = json.loads(json.dumps(base))
    other["optim"] = {"lr": 0.5}
    with pytest.raises(RunExistsError, match="optim.lr"):
        prepare_run(config_from_dict(other), [0], resume=True)


def test_partial_writes_and_an_unreadable_metrics_file_do_not_stop_a_resume(tmp_path, caplog):
    """A kill during a checkpoint write leaves .last.pt.<random>.tmp (a checkpoint's size, one per kill); a kill during
    the old in-place metrics rewrite left an empty metrics.csv, and every later resume ended in a pandas traceback."""
    import logging

    from seg_toolkit.fold_state import restore
    from seg_toolkit.run import Run

    run = Run(tmp_path)
    fold = run.fold_dir(0)
    fold.mkdir(parents=True)
    (fold / ".last.pt.k3j9x_2a.tmp").write_bytes(b"x" * 100)
    run.metrics_csv(0).write_text("")
    with caplog.at_level(logging.INFO):
        state = restore(run, 0, None, None, None, None, None)
    assert state.epoch == 0 and sorted(p.name for p in fold.iterdir()) == ["metrics.csv.unreadable"]
    assert "a checkpoint write cut short" in caplog.text and "is unreadable" in caplog.text
    assert run.foreign_entries() == []  # the set-aside file is a run's own: --overwrite may delete it


def test_a_rank_resumes_its_own_gpus_generator_from_the_saving_gpus(monkeypatch):
    """Rank 0 saved every GPU's generator as its process saw them; rank 1 restored them all, putting GPU 1's untouched
    state on its own GPU: its dropout masks replayed from the start after a resume."""
    from seg_toolkit.checkpoint import rng_state, set_rng_state

    g0, g1 = torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([9, 9, 9], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [g0, g1])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # rank 0 saves
    state = rng_state()
    assert state["cuda_device"] == 0
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=None: restored.append((s.tolist(), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(("all", None)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # rank 1 restores on GPU 1
    set_rng_state(state)
    assert restored == [([1, 2, 3], 1)]
    restored.clear()
    set_rng_state({k: v for k, v in state.items() if k != "cuda_device"})  # an older checkpoint: as before
    assert restored == [("all", None)]


def test_a_checkpoint_saved_without_loss_scaling_resumes_in_fp16(demo_root, tmp_path, monkeypatch, caplog):
    """A fold checkpointed in fp32 / bf16 (its GradScaler off, saved as {}) and resumed where train.amp resolves to
    fp16 (a CPU run continued on a T4, an A100's bf16 run resumed on a T4): an enabled GradScaler refuses an empty
    state, and the resume stopped with torch's RuntimeError. It now continues with a fresh scaler, said once.
    fp16 on CUDA is stood in for by a CPU GradScaler, which loads a state as the CUDA one does."""
    import seg_toolkit.train as train_mod
    from seg_toolkit.amp import AmpChoice
    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import run_cv
    from seg_toolkit.run import Run

    data = _cfg(demo_root, tmp_path / "runs", epochs=2)
    assert _run(data, kill_at=4).returncode == -signal.SIGKILL  # update 1 of epoch 2: last.pt holds epoch 1
    run = Run.of(config_from_dict(data))
    assert load_checkpoint(run.last_pt(0))["scaler"] == {}
    monkeypatch.setattr(train_mod, "run_amp", lambda cfg, run, device, *a, **k: AmpChoice("fp16", "auto", "a T4", device.type))
    with caplog.at_level("WARNING"):
        run_cv(config_from_dict(data), resume=True)
    assert caplog.text.count("was saved without loss scaling; it continues in fp16 with a fresh GradScaler") == 1
    ckpt = load_checkpoint(run.last_pt(0))
    assert ckpt["epoch"] == 2 and ckpt["scaler"]["scale"] > 0  # the fp16 epoch's scaler, saved


def test_a_run_saved_without_keys_added_since_resumes(demo_root, tmp_path):
    """A run made by an older version has no line for a key added since: compared raw, `train.log_every: None -> 0`
    refused --resume and advised --overwrite (deleting the run). The saved file is read as this version reads it."""
    import yaml

    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import prepare_run
    from seg_toolkit.run_guard import RunExistsError

    base = _cfg(demo_root, tmp_path / "runs")
    run = prepare_run(config_from_dict(base), [0])
    run.fold_dir(0).mkdir()
    run.metrics_csv(0).write_text("fold,epoch\n0,1\n")
    saved = yaml.safe_load(run.config_yaml.read_text())
    del saved["train"]["log_every"], saved["optim"]["nesterov"]  # keys of later versions, at their defaults here
    run.config_yaml.write_text(yaml.safe_dump(saved))
    prepare_run(config_from_dict(base), [0], resume=True)
    other = json.loads(json.dumps(base))
    other["train"]["log_every"] = 7  # a value that is not the default is still a change
    run.config_yaml.write_text(yaml.safe_dump(saved))
    with pytest.raises(RunExistsError, match=r"train\.log_every: 0 -> 7"):
        prepare_run(config_from_dict(other), [0], resume=True)


def test_a_replaced_config_drops_the_first_epochs_time_too(demo_root, tmp_path):
    """No fold had a file yet (killed after first_epoch.json, before fold 0's first row): the corrected config replaced
    config.yaml and amp.json, but first_epoch.json kept the old model's 0.157 s, so train.min_fold_epochs let every
    fold in, each cut to one epoch."""
    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import prepare_run

    base = _cfg(demo_root, tmp_path / "runs")
    run = prepare_run(config_from_dict(base), [0])
    run.first_epoch_json.write_text('{"seconds": 0.157}')
    run.amp_json.write_text("{}")
    wider = json.loads(json.dumps(base))
    wider["model"]["base_width"] = 16
    prepare_run(config_from_dict(wider), [0])
    assert not run.first_epoch_json.exists() and not run.amp_json.exists()
    assert run.config().model.base_width == 16


def test_a_folder_holding_only_a_cut_short_write_starts_a_run(demo_root, tmp_path):
    """Killed while a new run wrote its first config.yaml, the folder held only `.config.yaml.<random>.tmp`: train,
    --resume and --overwrite all refused it as 'not a run folder' until the user found and deleted it."""
    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import prepare_run
    from seg_toolkit.run import Run

    cfg = config_from_dict(_cfg(demo_root, tmp_path / "runs"))
    Run.of(cfg).dir.mkdir(parents=True)
    (Run.of(cfg).dir / ".config.yaml.x8k2_q1.tmp").write_text("experiment: t\n")
    (Run.of(cfg).dir / ".DS_Store").write_bytes(b"\0")
    assert prepare_run(cfg, [0]).config_yaml.is_file()
    other = tmp_path / "runs2" / "t"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")  # a user's file still makes the folder not a run's
    with pytest.raises(Exception, match="holds files but is not a run folder"):
        prepare_run(config_from_dict(_cfg(demo_root, tmp_path / "runs2")), [0])


def test_a_best_epoch_checkpoint_that_fell_out_of_the_top_k_goes_on_resume(tmp_path):
    """keep_best_k: killed after an epoch's last.pt and before the checkpoint that fell out of the top k was deleted,
    that best_e<epoch>.pt stayed for ever (k + 1 files)."""
    from seg_toolkit.fold_state import TrainState, _remove_dropped_best
    from seg_toolkit.run import Run

    run = Run(tmp_path)
    run.fold_dir(0).mkdir(parents=True)
    for e in (2, 3, 4, 5):
        run.best_epoch_pt(0, e).write_bytes(b"w")
    _remove_dropped_best(run, 0, TrainState(epoch=5, top_k=[[0.9, 5], [0.8, 3], [0.7, 4]]))
    assert sorted(p.name for p in run.fold_dir(0).iterdir()) == ["best_e003.pt", "best_e004.pt", "best_e005.pt"]


def test_a_new_fold_with_other_epochs_than_the_trained_ones_is_said(demo_root, tmp_path, caplog):
    """`train --fold 1 --set train.epochs=8` beside a fold 0 trained for 3 was accepted without a word (train.epochs may
    change for the fold in progress); config.yaml then said 8 and cv.json averaged a 3- and an 8-epoch fold."""
    import logging

    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import prepare_run

    base = _cfg(demo_root, tmp_path / "runs")
    run = prepare_run(config_from_dict(base), [0])
    run.fold_dir(0).mkdir()
    run.done_json(0).write_text('{"epochs_configured": 3}')
    longer = json.loads(json.dumps(base))
    longer["train"]["epochs"] = 8
    with caplog.at_level(logging.WARNING):
        prepare_run(config_from_dict(longer), [0], resume=True)  # fold 0 is done: nothing new starts
        assert "different lengths" not in caplog.text
        # ... and it is not trained further: that resume rewrote config.yaml to 8 without a word (compare: 3/8 epochs)
        assert "fold(s) [0] finished with train.epochs 3 and are not trained further with 8" in caplog.text
        prepare_run(config_from_dict(longer), [1], fold_job=True)
    # the fold's own number: the resume above saved config.yaml with 8
    assert "fold(s) [0] trained with train.epochs 3, fold(s) [1] train with 8: the CV mixes folds" in caplog.text
    # a fold in progress goes on with another length beside the finished one: said too (it was only the lr's re-layout)
    run.fold_dir(1).mkdir()
    (run.fold_dir(1) / "last.pt").write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare_run(config_from_dict(longer), [1], resume=True, fold_job=True)
    assert "fold(s) [0] trained with train.epochs 3, fold(s) [1] train with 8" in caplog.text


def test_writes_a_kill_cut_short_are_removed_by_the_next_command_not_live_ones(demo_root, tmp_path):
    """A killed train left `.cv.json.<random>.tmp`, `oof/.<id>.npy.<random>.tmp`, ... for ever (only fold folders were
    cleaned). A temporary file now names its writer's pid and host: the next train (or writer of the run's shared
    files, or predict to the same file) removes those whose process is gone, and keeps a live process's write, another
    host's, and any other file."""
    import subprocess

    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import prepare_run
    from seg_toolkit.files import _HOST, temp_prefix
    from seg_toolkit.run_lock import run_lock
    from seg_toolkit.submission import SubmissionWriter

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    cfg = config_from_dict(_cfg(demo_root, tmp_path / "runs"))
    run = prepare_run(cfg, [0])
    (run.dir / "oof").mkdir()
    stale = [run.dir / f".cv.json.{dead}-{_HOST}.k2j_9.tmp", run.dir / "oof" / f".a.npy.{dead}-{_HOST}.x1.tmp"]
    kept = [run.dir / f"{temp_prefix(run.dir / 'cv.json')}live1.tmp",  # this process: a write in progress
            run.dir / f".cv.json.{dead}-otherhost.q.tmp",  # another machine sharing the folder
            run.dir / ".cv.json.k3j9x_2a.tmp"]  # an older version's name: whose it is is not known
    for p in stale + kept:
        p.write_text("x")
    prepare_run(cfg, [0])
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    again = run.dir / "oof" / f".b.npy.{dead}-{_HOST}.y.tmp"
    again.write_text("x")
    with run_lock(run, "tune"):
        assert not again.exists()
    sub = tmp_path / "subs" / "s.csv"
    sub.parent.mkdir()
    left = [sub.parent / f".s.csv.{dead}-{_HOST}.z.tmp", sub.parent / f".s.csv.{dead}-{_HOST}.z.rows.tmp"]
    other = sub.parent / f".t.csv.{dead}-{_HOST}.z.tmp"  # another submission's: not this predict's to touch
    for p in left + [other]:
        p.write_text("x")
    SubmissionWriter(sub, ["id", "rle_mask"]).close()
    assert not any(p.exists() for p in left) and other.exists()
