"""Faults: NaN losses, full disks, untrusted checkpoints; nothing the user made is lost."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from seg_toolkit import checkpoint, train
from seg_toolkit.budget import set_aside_seconds
from seg_toolkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from seg_toolkit.config import config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.run import Run
from seg_toolkit.submission import SubmissionWriter
from seg_toolkit.train import NonFiniteLossError

from .conftest import demo_dict


def _nan_after(monkeypatch, n_calls: int, times: int = 1, on_nan=None):
    """Make the training loss NaN on calls n_calls+1 .. n_calls+times of the loss function (``on_nan()`` called then)."""
    original = train.build_loss
    calls = [0]

    def build(cfg):
        loss_fn = original(cfg)
        inner = loss_fn.forward

        def forward(logits, target):
            total, terms = inner(logits, target)
            if logits.requires_grad:
                calls[0] += 1
                if n_calls < calls[0] <= n_calls + times:
                    total = total * float("nan")
                    if on_nan is not None:
                        on_nan()
            return total, terms

        loss_fn.forward = forward
        return loss_fn

    monkeypatch.setattr(train, "build_loss", build)


def _cfg(demo_root, tmp_path, **train_opts):
    return config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "only": [0]},
                                      train={"epochs": 3, "batch_size": 2, **train_opts}))


def test_nan_loss_stops_the_fold_naming_epoch_and_step(demo_root, tmp_path, monkeypatch):
    _nan_after(monkeypatch, n_calls=4)  # 3 updates per epoch: the 5th training step is epoch 2, step 2
    cfg = _cfg(demo_root, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"fold 0: loss is not finite at epoch 2, step 2 of 3"):
        run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    assert load_checkpoint(fold / "last.pt")["epoch"] == 1  # the last good checkpoint is kept
    assert not (fold / "done.json").exists()


def test_the_retry_a_nan_error_offers_is_taken_on_resume(demo_root, tmp_path, monkeypatch):
    """The error offered train.nan_retries, which --resume then refused as a changed config."""
    _nan_after(monkeypatch, n_calls=4, times=2)  # the 5th step, and the same step when the resume runs it again
    cfg = _cfg(demo_root, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"Retry it at a lower lr: --resume --set train\.nan_retries=1"):
        run_cv(cfg)
    cv = run_cv(_cfg(demo_root, tmp_path, nan_retries=1), resume=True)  # NaN again, then the fold again at lr / 10
    done = json.loads((cfg.run_dir / "fold_0" / "done.json").read_text())
    assert cv["folds"] == [0] and done["optim_lr"] == pytest.approx(1e-4) and done["epochs_run"] == 3


def test_a_kill_while_setting_an_attempt_aside_is_finished_on_resume(demo_root, tmp_path, monkeypatch):
    """Files were moved one by one into failed_attempt_1/: killed after the first, the resume counted the attempt as
    set aside, loaded the diverged attempt's last.pt still beside it and failed again with no retry left."""
    import os

    moved, real_replace = [], os.replace

    def killed_after_one(src, dst):  # from the NaN on: the set-aside's first move goes through, then the kill
        if moved:
            raise KeyboardInterrupt("killed")
        moved.append(src)
        real_replace(src, dst)

    _nan_after(monkeypatch, n_calls=4, on_nan=lambda: monkeypatch.setattr(os, "replace", killed_after_one))
    cfg = _cfg(demo_root, tmp_path, nan_retries=1, nan_lr_factor=0.1)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    assert not (fold / "failed_attempt_1").exists() and (fold / ".failed_attempt_1.partial").is_dir()
    assert Run.of(cfg).foreign_entries() == []  # the partial folder is the run's own (--overwrite may remove it)
    monkeypatch.setattr(os, "replace", real_replace)
    cv = run_cv(cfg, resume=True)
    done = json.loads((fold / "done.json").read_text())
    assert cv["folds"] == [0] and done["optim_lr"] == pytest.approx(1e-4)  # the retry, from scratch at lr / 10
    assert load_checkpoint(fold / "failed_attempt_1" / "last.pt")["epoch"] == 1  # the failed attempt, whole, aside
    assert not (fold / ".failed_attempt_1.partial").exists()


def test_nan_loss_retries_with_lower_lr(demo_root, tmp_path, monkeypatch):
    _nan_after(monkeypatch, n_calls=4)
    cfg = _cfg(demo_root, tmp_path, nan_retries=1, nan_lr_factor=0.1)
    cv = run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    done = json.loads((fold / "done.json").read_text())
    assert done["optim_lr"] == pytest.approx(1e-4) and done["epochs_run"] == 3
    assert load_checkpoint(fold / "failed_attempt_1" / "last.pt")["epoch"] == 1  # the failed attempt is kept aside
    assert cv["folds"] == [0]
    # the epoch the NaN stopped counts against the fold's budget with the attempt's finished one (was: uncounted)
    failed = pd.read_csv(fold / "failed_attempt_1" / "metrics.csv")
    assert list(failed["epoch"].isna()) == [False, True] and failed["seconds"].iloc[1] > 0
    assert set_aside_seconds(Run.of(cfg), 0) == pytest.approx(failed["seconds"].sum())


def test_a_nan_in_the_first_epoch_records_its_time_for_the_retry(demo_root, tmp_path, monkeypatch):
    _nan_after(monkeypatch, n_calls=1)  # the second step of epoch 1: no metrics row written yet
    cfg = _cfg(demo_root, tmp_path, nan_retries=1, nan_lr_factor=0.1, time_budget="1h")
    assert run_cv(cfg)["folds"] == [0]
    failed = cfg.run_dir / "fold_0" / "failed_attempt_1" / "metrics.csv"
    lines = failed.read_text().splitlines()
    assert lines[0] == "fold,epoch,seconds" and len(lines) == 2 and lines[1].startswith("0,,")
    assert 0 < set_aside_seconds(Run.of(cfg), 0) == pytest.approx(float(lines[1].split(",")[2]))
    done = json.loads((cfg.run_dir / "fold_0" / "done.json").read_text())
    assert done["fold_budget_s"] == pytest.approx(3600 - set_aside_seconds(Run.of(cfg), 0), abs=1e-3)  # folds.only: one fold


def test_nan_loss_through_the_cli_is_one_line_with_the_remedies(demo_root, tmp_path, monkeypatch, capsys):
    """It was a full traceback, exit 1 (NonFiniteLossError was not one of the toolkit's errors)."""
    from seg_toolkit.cli import main
    from seg_toolkit.config import save_config

    _nan_after(monkeypatch, n_calls=4)
    save_config(_cfg(demo_root, tmp_path), tmp_path / "c.yaml")
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: fold 0: loss is not finite at epoch 2, step 2 of 3") and "lower optim.lr" in last
    assert "Traceback" not in err


def test_a_non_finite_validation_loss_is_a_failed_epoch_not_a_best_one(demo_root, tmp_path, monkeypatch):
    """Weights blown up by a huge lr (training loss still finite at its last check) gave val_loss nan, and the epoch
    was kept as best.pt with a finite dice; the fold 'finished'. Now the epoch fails like a NaN training loss."""
    original = train.validate_epoch
    calls = [0]

    def validate(*args, **kwargs):
        stats = original(*args, **kwargs)
        calls[0] += 1
        return {**stats, "val_loss": float("nan")} if calls[0] == 2 else stats

    monkeypatch.setattr(train, "validate_epoch", validate)
    cfg = _cfg(demo_root, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"fold 0: validation loss is nan after epoch 2 \(the weights diverged\)"):
        run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    assert load_checkpoint(fold / "last.pt")["epoch"] == 1 and not (fold / "done.json").exists()
    calls[0] = 0
    cv = run_cv(_cfg(demo_root, tmp_path / "retry", nan_retries=1))  # retried from scratch at a lower lr
    assert cv["folds"] == [0]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_checkpointing_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    before = path.read_bytes()

    def partial_then_full(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # the open temporary file
        _disk_full()

    monkeypatch.setattr(checkpoint.torch, "save", partial_then_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    """torch.save to a path names the archive after the file, here atomic_write's random temporary one: the same
    checkpoint saved twice had another SHA-256, which bundles and a pseudo teacher's record compare."""
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 4}
    save_checkpoint(state, tmp_path / "a" / "best.pt")
    save_checkpoint(state, tmp_path / "b" / "best.pt")
    assert (tmp_path / "a" / "best.pt").read_bytes() == (tmp_path / "b" / "best.pt").read_bytes()
    assert torch.equal(load_checkpoint(tmp_path / "b" / "best.pt")["model"]["w"], state["model"]["w"])


def test_full_disk_while_writing_submission_keeps_previous_file(tmp_path, monkeypatch):
    import csv

    from seg_toolkit import submission

    real_writer = csv.writer

    class FillsUp:  # a csv writer on a disk that fills up at the third row
        def __init__(self, fh, **kw):
            self.inner, self.rows = real_writer(fh, **kw), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows == 3:
                _disk_full()
            self.inner.writerow(row)

    monkeypatch.setattr(submission.csv, "writer", FillsUp)
    out = tmp_path / "sub.csv"
    out.write_text("id,rle\na,1 1\n")
    with pytest.raises(OSError, match="No space left"):
        with SubmissionWriter(out, ("id", "rle"), ["a", "b"]) as writer:
            writer.write([("a", "1 2"), ("b", "3 4")])
    assert out.read_text() == "id,rle\na,1 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


class Payload:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_pickled_payload_in_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds objects other than tensors"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(CheckpointError, match="cannot be read, truncated or not a checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a seg_toolkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_stop_between_loss_reads_checks_the_loss_before_it_saves(demo_root, tmp_path, monkeypatch):
    """On an accelerator the loss is read every 10th step; a Ctrl-C / SIGTERM at an update in between saved the
    weights a NaN had left since the last read as last.pt (the good one rotated away), so every --resume failed."""
    import seg_toolkit.epoch as epoch_mod

    box = {}
    original_enter = epoch_mod.GracefulStop.__enter__

    def enter(self):
        box["stop"] = self
        return original_enter(self)

    monkeypatch.setattr(epoch_mod.GracefulStop, "__enter__", enter)
    monkeypatch.setattr(epoch_mod, "sync_interval", lambda device: 10)  # as on a GPU
    # epoch 2, step 2 (3 steps per epoch): NaN, and a stop requested at this update
    _nan_after(monkeypatch, n_calls=4, on_nan=lambda: setattr(box["stop"], "requested", True))
    cfg = _cfg(demo_root, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"loss is not finite at epoch 2, step 2 of 3"):
        run_cv(cfg)
    assert load_checkpoint(cfg.run_dir / "fold_0" / "last.pt")["epoch"] == 1  # the good one, not a NaN mid-epoch save


def test_train_log_every_logs_the_running_loss(demo_root, tmp_path, caplog):
    cfg = _cfg(demo_root, tmp_path, epochs=1, log_every=2)
    with caplog.at_level("INFO", logger="seg_toolkit.epoch"):
        run_cv(cfg)
    lines = [r.getMessage() for r in caplog.records if "(step " in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["fold 0 epoch 1 update 2 (step 2)"]  # 3 updates: step 2 only
    assert "loss " in lines[0] and "lr " in lines[0] and "images/s" in lines[0]


def test_state_files_are_on_disk_before_their_rename(tmp_path, monkeypatch):
    """write_text / write_json fsync the temporary file before it takes the name: after a power loss the rename may
    survive without the data, and an empty done.json then failed every later run."""
    import os

    from seg_toolkit.files import write_json

    synced = []
    original = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), original(fd))[1])
    write_json(tmp_path / "done.json", {"fold": 0})
    assert len(synced) == 1 and json.loads((tmp_path / "done.json").read_text()) == {"fold": 0}


def test_a_retry_stopped_and_resumed_keeps_its_lowered_lr(demo_root, tmp_path, monkeypatch):
    """Resumed, the fold restarted its attempts at 0 with the configured lr while the checkpoint held the retry's:
    the schedule cut the lr twice (1e-5 for 1e-4), and a second NaN found failed_attempt_1/ already there."""
    _nan_after(monkeypatch, n_calls=4)  # attempt 1 fails in epoch 2
    original, saves = train.save_epoch, [0]

    def save_then_stop(*a, **k):
        original(*a, **k)
        saves[0] += 1
        if saves[0] == 2:  # the retry's first epoch is saved: the job is preempted
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(train, "save_epoch", save_then_stop)
    cfg = _cfg(demo_root, tmp_path, nan_retries=1, nan_lr_factor=0.1)
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg)
    fold = cfg.run_dir / "fold_0"
    assert Run.of(cfg).failed_attempts(0) == 1
    monkeypatch.setattr(train, "save_epoch", original)
    run_cv(cfg, resume=True)
    done = json.loads((fold / "done.json").read_text())
    assert done["optim_lr"] == pytest.approx(1e-4) and done["epochs_run"] == 3
    lrs = pd.read_csv(fold / "metrics.csv")["lr"].tolist()
    assert len(lrs) == 3 and max(lrs) <= 1e-4 * (1 + 1e-6) and lrs[1] > 1e-5  # the retry's schedule, not cut again


def test_a_deletion_cut_short_leaves_no_half_folder_and_its_leftover_goes_next_time(tmp_path, monkeypatch):
    """`train --overwrite` killed while deleting the run kept fold_1's checkpoints, cv.json and config.yaml but not
    folds.csv or oof/: the resume remade the folds, kept fold 1 'complete' and failed on its missing OOF files. The folder
    is moved aside first; an aside one whose process is gone is removed by the next deletion of that name, and is not
    taken for a user's file meanwhile."""
    import os
    import shutil

    from seg_toolkit import run_guard
    from seg_toolkit.files import aside_folder
    from seg_toolkit.run_guard import delete_path

    run = tmp_path / "runs" / "t"
    (run / "fold_1").mkdir(parents=True)
    for name in ("config.yaml", "folds.csv", "fold_1/best.pt"):
        (run / name).write_text("x")
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        (Path(path) / "folds.csv").unlink()  # part of it deleted, then the process is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(run_guard.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        delete_path(run)
    monkeypatch.setattr(run_guard.shutil, "rmtree", real_rmtree)
    assert not run.exists() and sorted(p.name for p in aside_folder(run, "deleting").iterdir()) == ["config.yaml", "fold_1"]
    # the same leftover of a process that is gone: a pid no process has
    gone = run.with_name(aside_folder(run, "deleting").name.replace(f".{os.getpid()}-", ".999999999-"))
    aside_folder(run, "deleting").rename(gone)
    run.mkdir()
    (run / "config.yaml").write_text("x")
    (run / "fold_1").mkdir()
    aside_folder(run / "fold_1", "deleting").mkdir()  # `train --fold 1 --overwrite` cut short, inside the run
    assert Run(run).foreign_entries() == []
    delete_path(run)
    assert not run.exists() and not gone.exists() and list(run.parent.iterdir()) == []
    # this pid's own leftover (a container's command is pid 1 again after a restart): it was in the way of the rename
    (aside_folder(run, "deleting") / "fold_0").mkdir(parents=True)
    run.mkdir()
    delete_path(run)
    assert list(run.parent.iterdir()) == []
