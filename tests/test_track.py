"""Experiment tracking: MLflow parent/child runs read back with MlflowClient, a failing tracker never
stopping training, resume continuing the same runs, TensorBoard scalars, and the config checks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from seg_toolkit import track
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.distributed import Dist
from seg_toolkit.run import Run

from .conftest import demo_dict

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def _track_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "seg_toolkit.track" and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def tracked(demo_root, tmp_path_factory):
    """A tiny 2-fold run, 2 epochs, tracked in a sqlite store of its own: fold 0 first (as one job of a job array),
    then ``--resume`` trains fold 1, which must land in the same MLflow parent run."""
    runs = tmp_path_factory.mktemp("runs")
    uri = f"sqlite:///{runs / 'store' / 'mlflow.db'}"
    cfg = config_from_dict(demo_dict(demo_root, runs, train={"epochs": 2}, track={"backend": "mlflow", "uri": uri}))
    run_cv(cfg, folds=[0])
    first = json.loads(Run.of(cfg).tracker_json.read_text())
    cv = run_cv(cfg, resume=True)
    return cfg, cv, uri, first


def test_mlflow_parent_and_fold_runs_hold_config_epochs_and_cv(tracked):
    cfg, cv, uri, first = tracked
    run = Run.of(cfg)
    state = json.loads(run.tracker_json.read_text())
    assert state["run_id"] == first["run_id"] and first["folds"] == {"0": state["folds"]["0"]}  # resumed, not a new run
    assert state["backend"] == "mlflow" and state["uri"] == uri and sorted(state["folds"]) == ["0", "1"]
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(state["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "t"
    assert client.get_experiment(parent.info.experiment_id).name == "t"  # default: the config's experiment name
    p = parent.data.params
    assert p["train.epochs"] == "2" and p["model.arch"] == "scratch_unet" and p["data.num_classes"] == "3"
    assert p["folds.n_splits"] == "2" and p["loss.bce"] == "0.5" and p["predict.tta"] == '["identity"]'
    m = parent.data.metrics
    assert m["cv_score"] == pytest.approx(cv["score"]) and m["cv_fold_std"] == pytest.approx(cv["fold_std"])
    assert [m["cv_fold_0"], m["cv_fold_1"]] == pytest.approx(cv["fold_scores"])
    pp = json.loads(run.postprocess_json.read_text())  # tuned at the end of CV (all folds trained)
    assert m["tuned_score"] == pytest.approx(pp["after"])
    assert parent.data.tags["postprocess.threshold"] == json.dumps(pp["params"]["threshold"])
    assert parent.data.tags["metric"] == "dice" and parent.data.tags["oof_tta"] == "identity"
    artifacts = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"cv.json", "config.yaml", "postprocess.json", "learning_curves.png"} <= artifacts

    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{state['run_id']}'")
    assert sorted(c.info.run_name for c in children) == ["fold_0", "fold_1"]
    for k in (0, 1):
        child = client.get_run(state["folds"][str(k)])
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == state["run_id"]
        rows = pd.read_csv(run.metrics_csv(k))
        history = sorted(client.get_metric_history(child.info.run_id, "val_score"), key=lambda x: x.step)
        assert [h.step for h in history] == [1, 2] == list(rows.epoch)  # step = the epoch, as in metrics.csv
        assert [h.value for h in history] == pytest.approx(list(rows.val_score))
        loss = sorted(client.get_metric_history(child.info.run_id, "train_loss"), key=lambda x: x.step)
        assert [h.value for h in loss] == pytest.approx(list(rows.train_loss))
        done = json.loads(run.done_json(k).read_text())
        assert child.data.metrics["oof_score"] == pytest.approx(done["oof_score"]) == pytest.approx(cv["fold_scores"][k])


def test_resume_continues_the_same_runs_and_report_names_them(tracked):
    cfg, _, uri, _ = tracked
    run = Run.of(cfg)
    before = json.loads(run.tracker_json.read_text())
    more = config_from_dict(demo_dict(cfg.data.root, Path(cfg.runs_dir), train={"epochs": 3},
                                      track={"backend": "mlflow", "uri": uri}))
    cv = run_cv(more, resume=True)  # folds are done: nothing retrained, the same parent run gets the new results
    assert json.loads(run.tracker_json.read_text()) == before
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(before["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["cv_score"] == pytest.approx(cv["score"])
    assert parent.data.params["train.epochs"] == "2" and parent.data.tags["changed.train.epochs"] == "3"
    exp = parent.info.experiment_id
    assert len(client.search_runs([exp], "tags.mlflow.parentRunId = '%s'" % before["run_id"])) == 2  # no new child

    from seg_toolkit.report import build_report

    page = build_report(run.dir, n_examples=0).read_text()
    assert f"tracked in MLflow run {before['run_id']} (mlflow ui --backend-store-uri {uri})" in page
    track.log_run_files(run.dir)  # what `seg-toolkit report` / `tune` do afterwards
    assert "report" in {a.path for a in client.list_artifacts(before["run_id"])}
    assert client.get_run(before["run_id"]).info.status == "FINISHED"  # adding results keeps the status


def test_unwritable_store_warns_once_and_training_finishes(demo_root, tmp_path, caplog):
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 2},
                                     track={"backend": "mlflow", "uri": "sqlite:////proc/nonexistent/x.db"}))
    with caplog.at_level(logging.WARNING):
        cv = run_cv(cfg)
    run = Run.of(cfg)
    assert run.cv_json.is_file() and json.loads(run.cv_json.read_text())["score"] == pytest.approx(cv["score"])
    assert len(run.trained_folds()) == 2 and not run.tracker_json.exists()
    warned = _track_warnings(caplog)
    assert len(warned) == 1, [r.getMessage() for r in warned]
    msg = warned[0].getMessage()
    assert "mlflow" in msg and "/proc/nonexistent" in msg and str(run.dir) in msg


class _Flaky(track.Backend):
    """Starts fine, then every call fails (a database that locks, a disk that fills up)."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0
        self.abandoned: list[str] = []

    def open(self, run, params, state):
        return {"backend": self.name}

    def abandon(self, reason, state):
        self.abandoned.append(reason)

    def log_epoch(self, fold, step, metrics):
        self.calls += 1
        raise OSError(28, "No space left on device")


def test_a_failing_call_midway_warns_once_then_does_nothing(tmp_path, caplog):
    backend = _Flaky()
    tracker = track.Tracker(backend, Run(tmp_path / "exp"))
    (tmp_path / "exp").mkdir()
    tracker.fold_start(0)
    with caplog.at_level(logging.WARNING):
        for epoch in (1, 2, 3):
            tracker.log_epoch(0, epoch, {"val_score": 0.5, "metric": "dice"})
        tracker.fold_end(0)
        tracker.log_results()
        tracker.close()
    assert backend.calls == 1
    warned = _track_warnings(caplog)
    assert len(warned) == 1 and "flaky" in warned[0].getMessage() and "No space left" in warned[0].getMessage()
    assert backend.abandoned == ["epoch logging: OSError: [Errno 28] No space left on device"]  # once, with the reason


def test_a_failing_mlflow_store_leaves_its_runs_failed_not_running(tmp_path, caplog):
    """A call that fails midway (here the fold run's metric batch) stops the tracker; the parent and the running fold
    run are then marked FAILED with the error as a tag, so the MLflow UI does not show them RUNNING for ever; a fold
    that had finished keeps FINISHED."""
    (tmp_path / "exp").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    backend = track.MLflowBackend(uri, "e")
    tracker = track.Tracker(backend, Run(tmp_path / "exp"))
    tracker.fold_start(0)
    tracker.log_epoch(0, 1, {"val_score": 0.5})
    tracker.fold_end(0)
    tracker.fold_start(1)
    real = backend.client.log_batch

    def full_disk(run_id, **kw):
        if run_id == backend.children[1]:
            raise OSError(28, "No space left on device")
        return real(run_id, **kw)

    backend.client.log_batch = full_disk
    with caplog.at_level(logging.WARNING):
        tracker.log_epoch(1, 1, {"val_score": 0.6})
        tracker.log_epoch(1, 2, {"val_score": 0.7})  # the tracker is off: not called
        tracker.close()
    assert len(_track_warnings(caplog)) == 1
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(backend.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["seg_toolkit.tracking_stopped"] == "epoch logging: OSError: [Errno 28] No space left on device"
    assert client.get_run(backend.children[0]).info.status == "FINISHED"
    assert client.get_run(backend.children[1]).info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(backend.children[0], "val_score")] == [0.5]
    assert client.get_metric_history(backend.children[1], "val_score") == []


def test_a_failed_upload_after_training_leaves_the_finished_run_finished(tmp_path, caplog, monkeypatch):
    """tune / oof / report add their results to the run training tracked (reopen): a failure there (a full disk while
    uploading the report) stops that tracking with a tag, but the runs keep the FINISHED training gave them."""
    exp = tmp_path / "exp"
    exp.mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    backend = track.MLflowBackend(uri, "e")
    tracker = track.Tracker(backend, Run(exp))
    tracker.fold_start(0)
    tracker.log_epoch(0, 1, {"val_score": 0.5})
    tracker.fold_end(0)
    tracker.close()
    (exp / "cv.json").write_text(json.dumps({"score": 0.5}))

    def full_disk(self, run_id, local_dir, artifact_path=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_artifacts", full_disk)
    monkeypatch.setattr(MlflowClient, "log_artifact", full_disk)
    (exp / "report").mkdir()
    with caplog.at_level(logging.WARNING):
        track.log_run_files(exp)
    assert len(_track_warnings(caplog)) == 1
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(backend.run_id)
    assert parent.info.status == "FINISHED" and client.get_run(backend.children[0]).info.status == "FINISHED"
    assert "No space left on device" in parent.data.tags["seg_toolkit.tracking_stopped"]


def test_mlflow_http_calls_are_bounded_unless_the_environment_says(monkeypatch, tmp_path):
    """MLflow's defaults retry 7 times with a 120 s timeout: a server that does not answer held each fold job minutes."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    track.MLflowBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", "e")._connect()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"  # the user's own setting kept
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # not left behind for other tests


def test_only_rank_zero_tracks(monkeypatch, demo_cfg):
    import seg_toolkit.distributed as dist

    monkeypatch.setattr(dist, "_CURRENT", Dist(rank=1, world_size=2))
    with track.tracking(demo_cfg) as tracker:
        assert tracker is None and track._CURRENT is None
        track.log_epoch(0, 1, {"val_score": 1.0})  # a no-op on the other ranks


def test_backend_resolution_and_default_locations(monkeypatch, demo_root, tmp_path):
    monkeypatch.delenv(track.ENV, raising=False)
    assert track.resolve_backend("auto") == "mlflow"  # installed here
    monkeypatch.setenv(track.ENV, "none")
    assert track.resolve_backend("auto") == "none" and track.resolve_backend("mlflow") == "mlflow"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", track={"backend": "mlflow"}))
    b = track._backend_for(cfg, Run.of(cfg))
    assert b.uri == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}" and b.experiment == "t"
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", track={"backend": "tensorboard"}))
    assert track._backend_for(cfg, Run.of(cfg)).logdir == str(tmp_path / "runs" / "t" / "tensorboard")


def test_params_are_flat_dotted_and_cut_to_the_limit():
    flat = track.flatten_params({"a": {"b": 1, "c": [1, 2], "d": {}, "e": None}, "x y!": "v" * 50}, max_len=10)
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "a.d": "{}", "a.e": "null", "x y_": "vvvvvvv..."}


def test_mlflow_backend_missing_is_a_config_error(monkeypatch, demo_root, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"track\.backend: mlflow is not installed; pip install seg_toolkit\[mlflow\]"):
        config_from_dict(demo_dict(demo_root, tmp_path, track={"backend": "mlflow"}))


def test_loading_a_config_does_not_import_mlflow(demo_root, tmp_path):
    code = ("import sys; from pathlib import Path; from seg_toolkit.config import config_from_dict; "
            "from tests.conftest import demo_dict; "
            f"config_from_dict(demo_dict(Path({str(demo_root)!r}), Path({str(tmp_path)!r}), track={{'backend': 'mlflow'}})); "
            "import seg_toolkit.cv; assert 'mlflow' not in sys.modules, 'mlflow imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]


def test_tensorboard_scalars_per_fold(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Run(tmp_path / "exp")
    run.dir.mkdir()
    tracker = track.Tracker(track.TensorBoardBackend(str(run.dir / "tensorboard")), run)
    tracker.fold_start(0)
    for epoch, score in ((1, 0.25), (2, 0.5)):
        tracker.log_epoch(0, epoch, {"val_score": score, "metric": "dice"})
    tracker.fold_end(0)
    (run.cv_json).write_text(json.dumps({"metric": "dice", "score": 0.5, "folds": [0], "fold_scores": [0.5]}))
    tracker.log_results()
    tracker.close()
    acc = EventAccumulator(str(run.dir / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("fold_0/val_score")] == [(1, 0.25), (2, 0.5)]
    assert acc.Scalars("cv/cv_score")[0].value == 0.5
    assert json.loads(run.tracker_json.read_text())["backend"] == "tensorboard"


def test_fold_jobs_of_an_array_share_one_parent_and_end_only_their_own_runs(tmp_path):
    """Two ``train --fold K`` jobs (two trackers on one run folder, interleaved as an array runs them): the second
    finds the parent the first created, tracker.json keeps both fold runs, the job that ends first ends only its
    fold run (the other is still training), and the parent ends with the last job."""
    (tmp_path / "exp").mkdir()
    run = Run(tmp_path / "exp")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    a, b = track.MLflowBackend(uri, "e"), track.MLflowBackend(uri, "e")
    job_a, job_b = track.Tracker(a, run), track.Tracker(b, run)
    job_a.fold_start(0)
    job_b.fold_start(1)  # opened after job a's parent was written: the same parent
    job_a.log_epoch(0, 1, {"val_score": 0.5})
    job_b.log_epoch(1, 1, {"val_score": 0.6})
    state = json.loads(run.tracker_json.read_text())
    assert a.run_id == b.run_id == state["run_id"]
    assert state["folds"] == {"0": a.children[0], "1": b.children[1]}  # job b's write kept job a's fold run
    client = MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_run(a.run_id).info.experiment_id])) == 3  # one parent, two folds

    job_a.fold_end(0)
    job_a.close()
    assert client.get_run(a.children[0]).info.status == "FINISHED"
    assert client.get_run(b.children[1]).info.status == "RUNNING"  # job b still trains fold 1
    assert client.get_run(a.run_id).info.status == "RUNNING"
    job_b.fold_end(1)
    job_b.close()
    assert client.get_run(b.children[1]).info.status == "FINISHED"
    assert client.get_run(a.run_id).info.status == "FINISHED"
    assert json.loads(run.tracker_json.read_text())["folds"] == {"0": a.children[0], "1": b.children[1]}


def test_tracking_a_fold_does_not_wait_for_the_runs_lock(tmp_path):
    """tracker.json was updated under run.lock, which tune --tta / oof / ensemble hold for minutes: a train --fold job
    sat idle before its fold until they finished. It has a lock of its own."""
    import fcntl
    import os
    import threading

    run = Run(tmp_path / "exp")
    run.dir.mkdir()
    tracker = track.Tracker(_Flaky(), run)
    fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's tune --tta
    try:
        t = threading.Thread(target=tracker._update, args=(lambda state: {**state, "fold_0": "r0"},), daemon=True)
        t.start()
        t.join(timeout=5)
        assert not t.is_alive()
    finally:
        os.close(fd)
    assert json.loads(run.tracker_json.read_text()) == {"fold_0": "r0"} and not run.tracker_lock_file.exists()
    assert run.foreign_entries() == []


def test_only_tensorboard_event_files_are_a_runs_own(tmp_path):
    """Any file under tensorboard/ counted as the run's, so `train --overwrite` deleted a notebook kept there."""
    run = Run(tmp_path / "r")
    (run.dir / "tensorboard").mkdir(parents=True)
    run.config_yaml.write_text("experiment: r\n")
    (run.dir / "tensorboard" / "events.out.tfevents.1733300000.host.123.0").write_bytes(b"")
    assert run.foreign_entries() == []
    (run.dir / "tensorboard" / "my_analysis.ipynb").write_text("{}")
    assert run.foreign_entries() == [run.dir / "tensorboard" / "my_analysis.ipynb"]
