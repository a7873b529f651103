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
def reference(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref")
    proc = _run(_cfg(demo_root, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _weights(runs)


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


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(demo_root, tmp_path, reference, sig):
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
