"""One writer at a time for a run's OOF files (``run.lock``): waiting, naming the holder, a fold finishing during ``tune --tta``."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest

import seg_toolkit.tune as tune_mod
from seg_toolkit.config import config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.ensemble import build_ensemble
from seg_toolkit.errors import SegToolkitError
from seg_toolkit.files import read_json, write_json
from seg_toolkit.inference import predict_test
from seg_toolkit.run import Run
from seg_toolkit.run_lock import lock_holder, run_lock
from seg_toolkit.tta_search import choose_tta

from .conftest import demo_dict

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="run.lock is flock(2): POSIX only")

HOLDER = """
import sys
from seg_toolkit.run import Run
from seg_toolkit.run_lock import run_lock
with run_lock(Run(sys.argv[1]), "seg-toolkit tune runs/x --tta"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def _hold(run: Run) -> subprocess.Popen:
    """Another process holding ``run``'s lock until the test closes its stdin (or kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run.dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path):
    run = Run(tmp_path / "run")
    run.dir.mkdir()
    proc = _hold(run)
    yield run, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _enter_in_thread(run: Run, entered: threading.Event) -> threading.Thread:
    def body():
        with run_lock(run, "train fold 1: its OOF files", poll_s=0.02):
            entered.set()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def test_a_writer_waits_for_the_holder_and_names_it(holder, caplog):
    run, proc = holder
    assert lock_holder(run).startswith(f"`seg-toolkit tune runs/x --tta` (pid {proc.pid} on ")
    entered = threading.Event()
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.run_lock"):
        t = _enter_in_thread(run, entered)
        assert not entered.wait(0.5)  # held by the other process: still waiting
        assert f"waiting for `seg-toolkit tune runs/x --tta` (pid {proc.pid}" in caplog.text
        proc.stdin.close()  # the holder finishes
        assert entered.wait(30)
    t.join(30)
    assert lock_holder(run) is None and not run.lock_file.exists()  # removed on release: no clutter in run folders


def test_a_killed_holder_never_leaves_the_run_locked(holder):
    run, proc = holder
    proc.kill()
    proc.wait()
    entered = threading.Event()
    _enter_in_thread(run, entered).join(30)
    assert entered.is_set() and lock_holder(run) is None
    assert not run.lock_file.exists()  # the killed holder's file was taken over, and removed on release


def test_reentrant_within_a_thread_and_free_after(tmp_path):
    run = Run(tmp_path)
    with run_lock(run, "outer"):
        with run_lock(run, "inner"):  # tune --tta rescoring cv.json and tuning inside its own hold
            assert lock_holder(run) is None  # this thread holds it: nobody else does
        entered = threading.Event()
        t = _enter_in_thread(run, entered)
        assert not entered.wait(0.3)  # another thread still waits: the outer hold is kept
    t.join(30)
    assert entered.is_set()


def test_an_oof_rewrite_in_progress_is_named_as_running_not_as_stopped(holder, tmp_path):
    """oof_incomplete.json with its writer alive: predict says who is rewriting now (was: 'when it stopped')."""
    run, proc = holder
    write_json(run.oof_incomplete_json, {"command": "seg-toolkit tune runs/x --tta", "started": "now"})
    from seg_toolkit.oof import check_oof_complete

    with pytest.raises(SegToolkitError, match=rf"being rewritten now by `seg-toolkit tune runs/x --tta` \(pid {proc.pid}"):
        check_oof_complete(run)
    proc.stdin.close()
    proc.wait()
    with pytest.raises(SegToolkitError, match="when it stopped"):
        check_oof_complete(run)


def test_a_fold_finishing_while_tune_tta_runs_waits_and_makes_its_oof_with_the_choice(demo_root, tmp_path, monkeypatch, caplog):
    """A `--fold 1` job ending while `tune --tta` (on fold 0) was choosing made its OOF files with the old TTA (identity
    here), beside fold 0's rewritten with the choice, and tuned post-processing on the mix. Now it waits for the lock."""
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2, "num_workers": 0},
                                     optim={"lr": 0.05}, scheduler={"name": "none"}, predict={"oof_tta": "identity"}))
    run_cv(cfg, folds=[0])
    inside, go = threading.Event(), threading.Event()
    original = tune_mod.tune_postprocess

    def slow_tune(*args, **kwargs):  # choose_tta tuning its candidates: paused until fold 1 waits for the lock
        inside.set()
        assert go.wait(120)
        return original(*args, **kwargs)

    monkeypatch.setattr(tune_mod, "tune_postprocess", slow_tune)
    chosen = {}
    tuner = threading.Thread(target=lambda: chosen.update(choose_tta(cfg, candidates=[["identity", "hflip"]], merges=["mean_logit"])))
    tuner.start()
    assert inside.wait(120)
    monkeypatch.setattr(tune_mod, "tune_postprocess", original)  # fold 1's own tuning, after the lock, runs normally
    fold_job = threading.Thread(target=run_cv, args=(cfg,), kwargs={"folds": [1]})
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.run_lock"):
        fold_job.start()
        deadline = time.monotonic() + 120
        while "waiting for `seg-toolkit tune" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "before `train fold 1: its OOF files` writes to it" in caplog.text
    assert not Run.of(cfg).done_json(1).exists()  # fold 1 trained, but waits to write its OOF
    go.set()
    tuner.join(300)
    fold_job.join(300)
    run = Run.of(cfg)
    assert chosen["folds"] == [0]
    assert read_json(run.done_json(1))["oof"]["tta"] == ["identity", "hflip"] == chosen["tta"]
    assert read_json(run.done_json(0))["oof"]["tta"] == chosen["tta"]
    cv = read_json(run.cv_json)
    assert cv["folds"] == [0, 1] and cv["oof"]["tta"] == chosen["tta"]  # one TTA across the run's OOF files
    assert read_json(run.postprocess_json)["folds"] == [0, 1]  # tuned by fold 1's job on all of them, after the choice
    predict_test(cfg, out=tmp_path / "sub.csv")


def test_an_ensemble_reads_its_members_only_while_nobody_rewrites_them(demo_root, tmp_path, caplog):
    """`ensemble a b` while `tune b --tta` moved b's files in read a mix (warned of only later, at predict)."""
    cfgs = [config_from_dict(demo_dict(demo_root, tmp_path / "runs", experiment=name, train={"epochs": 1, "batch_size": 4,
                                                                                               "num_workers": 0}))
            for name in ("a", "b")]
    for cfg in cfgs:
        run_cv(cfg)
    proc = _hold(Run.of(cfgs[1]))
    try:
        done = threading.Event()
        with caplog.at_level(logging.WARNING, logger="seg_toolkit.run_lock"):
            t = threading.Thread(target=lambda: (build_ensemble(cfgs, name="ens", weights=[0.5, 0.5]), done.set()), daemon=True)
            t.start()
            assert not done.wait(1.0)
            assert "before `seg-toolkit ensemble: reading its OOF files` writes to it" in caplog.text
        assert not (tmp_path / "runs" / "ens").exists()
        proc.stdin.close()
        t.join(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert done.is_set() and Run(tmp_path / "runs" / "ens").is_ensemble
    assert not any(Run.of(c).lock_file.exists() for c in cfgs)


def test_a_fold_being_trained_is_started_and_not_trained_twice(demo_root, tmp_path):
    """Two `train` processes of one run folder: the second replaced config.yaml while the first was in fold 0's first
    epoch (its folder still empty: 'no fold has started'), so fold 0 trained with one lr and fold 1 with another under
    one config.yaml, or both trained fold 0 at once (6 metrics rows for 3 epochs). fold_<k>/train.lock, held while a
    process trains the fold, makes the fold started and refuses a second trainer by name."""
    from seg_toolkit.cv import _check_config_kept, prepare_run
    from seg_toolkit.run import RunExistsError
    from seg_toolkit.run_lock import fold_lock

    base = demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2})
    run = prepare_run(config_from_dict(base), [0, 1])
    other = {**base, "optim": {"lr": 0.03}}
    with fold_lock(run, 0):
        assert run.started_folds() == [0] and run.fold_lock_file(0).is_file()
        assert read_json(run.fold_lock_file(0))["pid"] > 0
        with pytest.raises(RunExistsError, match=r"fold 0 is being trained by `train` \(pid \d+ on "):
            with fold_lock(run, 0):
                pass
        with pytest.raises(RunExistsError, match=r"was trained with a different config \(optim\.lr"):
            prepare_run(config_from_dict(other), [1], fold_job=True)
        with pytest.raises(RunExistsError, match=r"fold\(s\) \[0\] already have files; use --resume"):
            prepare_run(config_from_dict(base), [0, 1])
        for fold_job in (True, False):  # --overwrite never deletes a fold being trained
            with pytest.raises(RunExistsError, match=r"fold\(s\) \[0\] are being trained by another process"):
                prepare_run(config_from_dict(base), [0], overwrite=True, fold_job=fold_job)
        assert run.fold_lock_file(0).is_file()
    assert not run.fold_lock_file(0).exists() and run.started_folds() == []
    run.fold_lock_file(0).write_text("{}")  # left by a killed trainer: nobody holds it, so the fold has not started
    assert run.started_folds() == []
    # replaced while this process was between prepare_run and its first fold's lock: it stops before training
    prepare_run(config_from_dict(other), [0, 1])
    with pytest.raises(RunExistsError, match=r"config\.yaml was replaced by another process.*optim\.lr: 0\.03 -> "):
        _check_config_kept(run, config_from_dict(base))
