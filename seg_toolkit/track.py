"""Experiment trackers: the run folder stays the record; a tracker mirrors it for browsing runs side by side.

``track.backend``: ``auto`` (MLflow when installed, else none; ``$SEG_TOOLKIT_TRACK`` replaces ``auto``),
``mlflow``, ``tensorboard`` or ``none``.

**MLflow: one parent run per experiment, one nested child run per fold.** The parent (named after the
run folder, in the MLflow experiment ``track.experiment``, default the config's ``experiment``) holds
the resolved config as params (dotted keys, values cut to MLflow's limit), ``cv.json`` as metrics
(``cv_score``, ``cv_fold_mean``, ``cv_fold_std``, ``cv_fold_<k>``, ...), tuned post-processing
(``tuned_score``, tags ``postprocess.<param>``) and the TTA choice (tags ``tta``, ``tta_merge``) when
``postprocess.json`` / ``tta.json`` exist, and the artifacts cv.json, config.yaml, postprocess.json,
tta.json, learning_curves.{html,png} and report/. Child ``fold_<k>`` (tag ``mlflow.parentRunId``):
every ``metrics.csv`` row with step = epoch (1-based, as there) and ``done.json``'s ``oof_score``,
``best_val_score``, ``best_epoch``, ``epochs_run``. Store: ``track.uri``, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///<runs_dir>/mlflow.db`` beside the run folders (artifacts in ``<runs_dir>/mlartifacts``).
The run ids live in the run folder's ``tracker.json``: ``--resume`` or another ``--fold`` continues
the same runs, ``tune`` / ``oof`` / ``report`` add their results, and the report names the run. The
``train --fold K`` jobs of an array share one parent: ``tracker.json`` is read and written under its own
``tracker.lock`` (:mod:`seg_toolkit.run_lock`, ``path=Run.tracker_lock_file``; not ``run.lock``), each job ends only its own fold runs, and the parent is ended
by the job that finishes while no other fold run is RUNNING.
**TensorBoard**: scalars ``fold_<k>/<metric>`` and ``cv/<number>``, config and choices as text, in
``track.uri`` (default ``<run folder>/tensorboard``).

**A tracker never stops training**: every call is guarded; the first failure (locked database, unwritable
folder, full disk) is one warning naming the backend and the error, and the tracker does nothing after it
but one try to mark what it had opened as ended (MLflow: the parent and its running fold runs ``FAILED``, the
error in the parent's tag ``seg_toolkit.tracking_stopped``; not left ``RUNNING`` for ever).
Only rank 0 tracks; MLflow is imported when a tracker starts, never when a config loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from .config import Config, config_to_dict
from .files import read_json, write_json
from .run import Run
from .run_lock import run_lock
from .track_backends import Backend, MLflowBackend, TensorBoardBackend

log = logging.getLogger(__name__)

__all__ = ["resolve_backend", "tracking", "fold_start", "log_epoch", "fold_end", "log_run_files", "tracker_sentence",
           "flatten_params", "Tracker"]

ENV = "SEG_TOOLKIT_TRACK"
_BACKENDS = ("mlflow", "tensorboard", "none")


def resolve_backend(name: str) -> str:
    """``auto`` -> ``$SEG_TOOLKIT_TRACK`` if set, else ``mlflow`` when importable, else ``none``."""
    if name != "auto":
        return name
    env = os.environ.get(ENV, "").strip().lower()
    if env in _BACKENDS:
        return env
    return "mlflow" if importlib.util.find_spec("mlflow") is not None else "none"


def redact_uri(uri: Any) -> Any:
    """``uri`` without the password of its user part (``https://alice:s3cret@host`` -> ``https://alice:***@host``): what
    may be logged as a parameter or shown in a report; anything else as it is."""
    if not isinstance(uri, str):
        return uri
    return re.sub(r"^([A-Za-z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def flatten_params(data: dict[str, Any], prefix: str = "", max_len: int = 6000) -> dict[str, str]:
    """``{"train.epochs": "10", "loss.bce": "0.5", ...}``: leaves of a nested dict as strings (lists as JSON),
    keys limited to the characters MLflow accepts, values cut to ``max_len``."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = re.sub(r"[^\w./\- ]", "_", f"{prefix}{k}")[:250]
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key + ".", max_len))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[key] = text if len(text) <= max_len else text[: max_len - 3] + "..."
    return out


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def results_of(run: Run) -> tuple[dict[str, float], dict[str, str]]:
    """The run-level numbers (metrics) and choices (tags) of a run folder: ``cv.json``, ``postprocess.json``, ``tta.json``."""
    cv = read_json(run.cv_json) or {}
    keys = ("score", "fold_mean", "fold_std", "baseline_empty", "pixel_accuracy", "n_images")
    metrics: dict[str, Any] = {f"cv_{k}": cv.get(k) for k in keys}
    metrics.update({f"cv_fold_{k}": s for k, s in zip(cv.get("folds") or [], cv.get("fold_scores") or [])})
    for name in ("iou", "dice"):
        metrics.update({f"cv_{name}_class_{c}": v for c, v in enumerate(cv.get(f"per_class_{name}") or [])})
    tags = {"metric": str(cv["metric"])} if cv.get("metric") else {}
    if isinstance(cv.get("oof"), dict):
        tags["oof_tta"] = " ".join(cv["oof"].get("tta") or [])
    pp = read_json(run.postprocess_json) or {}
    if isinstance(pp.get("after"), (int, float)):
        metrics.update(tuned_score=pp["after"], untuned_score=pp.get("before"))
        tags.update({f"postprocess.{k}": json.dumps(v) for k, v in (pp.get("params") or {}).items()})
    tta = read_json(run.tta_json) or {}
    if tta.get("tta"):
        tags.update(tta=" ".join(tta["tta"]), tta_merge=str(tta.get("merge")))
        metrics["tta_tuned_score"] = tta.get("score")
    return _numbers(metrics), tags


def _artifacts(run: Run) -> list[Path]:
    files = [run.cv_json, run.config_yaml, run.postprocess_json, run.tta_json, run.learning_curves_html,
             run.learning_curves_png, run.report_dir]
    return [p for p in files if p.exists()]


def _backend_for(cfg: Config, run: Run) -> Backend:
    name, t = resolve_backend(cfg.track.backend), cfg.track
    if name == "mlflow":
        uri = t.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + str((run.dir.parent / "mlflow.db").resolve())
        return MLflowBackend(uri, t.experiment or cfg.experiment)
    if name == "tensorboard":
        return TensorBoardBackend(t.uri or str(run.dir / "tensorboard"))
    return Backend()


# ----------------------------------------------------------------------------- the guarded tracker


class Tracker:
    """A backend behind a guard: started on first use, every call wrapped; the first failure warns once
    (naming the backend and the error) and turns the tracker into a no-op."""

    def __init__(self, backend: Backend, run: Run, cfg: Optional[Config] = None) -> None:
        self.backend, self.run, self.cfg = backend, run, cfg
        self.active = backend.name != "none"
        self.started = False
        self.folds: set[int] = set()

    def _guard(self, what: str, fn, *args) -> Any:
        if not self.active:
            return None
        try:
            if not self.started:
                self.started = True
                params = flatten_params(config_to_dict(self.cfg), max_len=_max_param_len()) if self.cfg else {}
                if "track.uri" in params:  # a store's password is no experiment parameter
                    params["track.uri"] = redact_uri(params["track.uri"])
                self._update(lambda state: self.backend.open(self.run, params, state))
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            self.active = False
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            log.warning("experiment tracking with %s stopped at %s (%s); training goes on without it, and everything "
                        "is still in the run folder %s", self.backend.name, what, msg[:400], self.run.dir)
            with contextlib.suppress(Exception):  # the store may be gone: nothing more to say then
                self.backend.abandon(f"{what}: {msg}", read_json(self.run.tracker_json) or {})
            return None

    def _update(self, change) -> None:
        """``tracker.json`` <- ``change(tracker.json)`` under the run's lock: the ``train --fold K`` jobs of an array
        start at once, and each must find the parent run the first one created (and keep the others' fold runs)."""
        with run_lock(self.run, "experiment tracking", path=self.run.tracker_lock_file):  # not run.lock: tune --tta holds that
            state = change(read_json(self.run.tracker_json) or {})
            if state and state != read_json(self.run.tracker_json):
                write_json(self.run.tracker_json, state)

    def fold_start(self, fold: int) -> None:
        if self.run.done_json(fold).is_file():  # finished earlier: train_fold will not train it again
            return
        self.folds.add(fold)
        self._guard("fold start", self._update, lambda state: self.backend.fold_start(fold, state))

    def log_epoch(self, fold: int, epoch: int, metrics: dict[str, Any]) -> None:
        if fold in self.folds:
            self._guard("epoch logging", self.backend.log_epoch, fold, epoch, _numbers(metrics))

    def fold_end(self, fold: int, status: str = "FINISHED") -> None:
        if fold not in self.folds:
            return
        self.folds.discard(fold)
        done = read_json(self.run.done_json(fold)) or {}
        keep = ("oof_score", "best_val_score", "best_epoch", "epochs_run")
        self._guard("fold end", self.backend.fold_end, fold, _numbers({k: done.get(k) for k in keep}), status)

    def log_results(self) -> None:
        """Whatever the run folder holds now: cv.json numbers, tuning choices, artifacts."""
        self._guard("logging results", lambda: self.backend.log_results(*results_of(self.run), _artifacts(self.run)))

    def close(self, status: str = "FINISHED") -> None:
        if self.started:
            self._guard("closing", self._update, lambda state: self.backend.close(status, state) or state)


def _max_param_len() -> int:
    try:  # MLflow's own limit (6000 in MLflow 3); 250 in old versions, or without MLflow
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
        return int(MAX_PARAM_VAL_LENGTH)
    except Exception:  # noqa: BLE001
        return 250


# ----------------------------------------------------------------------------- the current tracker (run_cv opens it)

_CURRENT: Optional[Tracker] = None


@contextlib.contextmanager
def tracking(cfg: Config, run: Optional[Run] = None) -> Iterator[Optional[Tracker]]:
    """Make a tracker the current one while ``run_cv`` trains (rank 0 only). Nothing is created until the
    first fold starts or results are logged; on success the run folder's results are logged at the end."""
    from .distributed import get_dist

    global _CURRENT
    if not get_dist().is_main or _CURRENT is not None:
        yield None
        return
    run = run or Run.of(cfg)
    tracker = _CURRENT = Tracker(_backend_for(cfg, run), run, cfg)
    status = "FAILED"
    try:
        yield tracker
        tracker.log_results()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _CURRENT = None
        for k in list(tracker.folds):
            tracker.fold_end(k, status)
        tracker.close(status)


def fold_start(fold: int) -> None:
    if _CURRENT is not None:
        _CURRENT.fold_start(fold)


def log_epoch(fold: int, epoch: int, metrics: dict[str, Any]) -> None:
    """One epoch of one fold (``epoch`` 1-based, as in ``metrics.csv``); non-numeric values are left out."""
    if _CURRENT is not None:
        _CURRENT.log_epoch(fold, epoch, metrics)


def fold_end(fold: int) -> None:
    if _CURRENT is not None:
        _CURRENT.fold_end(fold)


def log_run_files(run_dir: str | Path) -> None:
    """After ``tune``, ``oof`` or ``report``: add the run folder's results to the tracked run named in its
    ``tracker.json`` (nothing when the run was not tracked). Never raises."""
    run = Run(run_dir)
    try:
        state = read_json(run.tracker_json) or {}
    except Exception:  # noqa: BLE001 - a damaged tracker.json only loses the tracking
        state = {}
    backend: Backend
    if state.get("backend") == "mlflow" and importlib.util.find_spec("mlflow") is not None:
        backend = MLflowBackend(state.get("uri", ""), state.get("experiment") or run.dir.name, reopen=True)
    elif state.get("backend") == "tensorboard" and importlib.util.find_spec("tensorboard") is not None:
        backend = TensorBoardBackend(state.get("uri") or str(run.dir / "tensorboard"))
    else:
        return
    tracker = Tracker(backend, run)
    tracker.log_results()
    if backend.name == "tensorboard":
        tracker.close()  # an MLflow run keeps the status training gave it


def tracker_sentence(run_dir: str | Path) -> Optional[tuple[str, Optional[str]]]:
    """``(sentence, link)`` naming where the run is tracked (from ``tracker.json``), or None."""
    try:
        state = read_json(Run(run_dir).tracker_json) or {}
    except Exception:  # noqa: BLE001
        return None
    if state.get("backend") == "mlflow" and state.get("run_id"):
        link = f"http://127.0.0.1:5000/#/experiments/{state.get('experiment_id')}/runs/{state['run_id']}"
        return f"tracked in MLflow run {state['run_id']} (mlflow ui --backend-store-uri {redact_uri(state.get('uri'))})", link
    if state.get("backend") == "tensorboard":
        return f"tracked in TensorBoard (tensorboard --logdir {state.get('uri')})", None
    return None
