"""The tracker backends: MLflow (a parent run per experiment, a child per fold) and TensorBoard.

Each may raise: :class:`seg_toolkit.track.Tracker` guards every call (the first failure warns once
and turns the tracker off). What each backend logs, and where, is described in :mod:`seg_toolkit.track`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

from .run import Run

__all__ = ["Backend", "MLflowBackend", "TensorBoardBackend", "sqlite_path"]


class Backend:
    """What a tracker backend does (this one: nothing); ``state`` is what ``tracker.json`` keeps between processes."""

    name = "none"

    def open(self, run: Run, params: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
        return state

    def fold_start(self, fold: int, state: dict[str, Any]) -> dict[str, Any]:
        return state

    def log_epoch(self, fold: int, step: int, metrics: dict[str, float]) -> None: ...
    def fold_end(self, fold: int, metrics: dict[str, float], status: str) -> None: ...
    def log_results(self, metrics: dict[str, float], tags: dict[str, str], artifacts: list[Path]) -> None: ...
    def close(self, status: str, state: dict[str, Any]) -> None: ...

    def abandon(self, reason: str, state: dict[str, Any]) -> None:
        """After a failed call: leave what was logged in a finished state (best effort; may raise)."""
        self.close("FAILED", state)


#: MLflow's HTTP settings when the environment does not set them: a tracking server that does not answer costs one
#: failed call of at most ~30 s (then the tracker stops and training goes on), not minutes per call
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


class MLflowBackend(Backend):
    name = "mlflow"

    def __init__(self, uri: str, experiment: str, reopen: bool = False) -> None:
        self.uri, self.experiment = uri, experiment
        self.reopen = reopen  # only add results to the run in tracker.json (tune, oof, report): never a new run
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.children: dict[int, str] = {}  # every fold run of the parent known here (tracker.json's and this process's)
        self.mine: set[int] = set()  # the folds this process started or resumed: the only ones it closes

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient  # lazy: only a started tracker imports MLflow

        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        # an HTTP store that does not answer: MLflow's defaults (7 retries with backoff, a 120 s timeout per try) held
        # every fold job for 4-16 minutes per call; the environment still decides when it sets them
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.client = MlflowClient(tracking_uri=self.uri)

    def _alive(self, run_id: Optional[str]) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - deleted or from another store: start a new one
            return False

    def open(self, run: Run, params: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Param

        self._connect()
        c = self.client
        same_store = state.get("backend") == self.name and state.get("uri") == self.uri
        if self.reopen and not (same_store and self._alive(state.get("run_id"))):
            raise LookupError(f"the MLflow run {state.get('run_id')} of tracker.json is not in {self.uri} (deleted?)")
        if same_store and self._alive(state.get("run_id")):
            self.run_id = state["run_id"]
            if not self.reopen:
                c.update_run(self.run_id, status="RUNNING")
            self._merge(state)  # its fold runs that are still there
            old = c.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in old and old[k] != v}
            params = {k: v for k, v in params.items() if k not in old}
            for k, v in changed.items():  # MLflow params are immutable; a grown train.epochs is kept as a tag
                c.set_tag(self.run_id, f"changed.{k}"[:250], v)
        else:
            exp = c.get_experiment_by_name(self.experiment)
            if exp is None:
                artifacts = sqlite_path(self.uri)
                exp_id = c.create_experiment(self.experiment, artifact_location=(
                    (artifacts.parent / "mlartifacts").resolve().as_uri() if artifacts is not None else None))
            else:
                exp_id = exp.experiment_id
            self.run_id = c.create_run(exp_id, run_name=run.dir.name,
                                       tags={"seg_toolkit.run_dir": str(run.dir.resolve())}).info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            c.log_batch(self.run_id, params=items[i : i + 100])
        return self._state()

    def _state(self) -> dict[str, Any]:
        info = self.client.get_run(self.run_id).info
        return {"backend": self.name, "uri": self.uri, "experiment": self.experiment, "experiment_id": info.experiment_id,
                "run_id": self.run_id, "folds": {str(k): v for k, v in sorted(self.children.items())}}

    def _merge(self, state: dict[str, Any]) -> None:
        """Learn the fold runs that other ``--fold`` jobs of the array added to tracker.json since this one opened."""
        if state.get("run_id") == self.run_id:
            for k, v in (state.get("folds") or {}).items():
                if int(k) not in self.children and self._alive(v):
                    self.children[int(k)] = v

    def fold_start(self, fold: int, state: dict[str, Any]) -> dict[str, Any]:
        """``state``: tracker.json as it is now (read under the run's lock): the fold runs that other ``--fold`` jobs
        of the array created since this one opened are kept in it, not overwritten."""
        self._merge(state)
        self.mine.add(fold)
        if fold in self.children and self._alive(self.children[fold]):
            self.client.update_run(self.children[fold], status="RUNNING")
            return self._state()
        exp_id = self.client.get_run(self.run_id).info.experiment_id
        child = self.client.create_run(exp_id, run_name=f"fold_{fold}",
                                       tags={"mlflow.parentRunId": self.run_id, "fold": str(fold)})
        self.children[fold] = child.info.run_id
        return self._state()

    def log_epoch(self, fold: int, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.children[fold], metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def fold_end(self, fold: int, metrics: dict[str, float], status: str) -> None:
        if fold not in self.children:
            return
        for k, v in metrics.items():
            self.client.log_metric(self.children[fold], k, v)
        self.client.set_terminated(self.children[fold], status=status)

    def log_results(self, metrics: dict[str, float], tags: dict[str, str], artifacts: list[Path]) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, v, step=0)
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v[:5000])
        for p in artifacts:
            if p.is_dir():
                self.client.log_artifacts(self.run_id, str(p), artifact_path=p.name)
            else:
                self.client.log_artifact(self.run_id, str(p))

    def close(self, status: str, state: dict[str, Any]) -> None:
        """End this process's fold runs still RUNNING, and the parent unless another job's fold run is still RUNNING
        (the ``train --fold K`` jobs of an array share the parent: the last one to finish ends it)."""
        self._merge(state)
        running = {k: self.client.get_run(v).info.status == "RUNNING" for k, v in self.children.items()}
        for k in sorted(self.mine & set(self.children)):
            if running[k]:
                self.client.set_terminated(self.children[k], status=status)
        if not any(running[k] for k in self.children if k not in self.mine):
            self.client.set_terminated(self.run_id, status=status)

    def abandon(self, reason: str, state: dict[str, Any]) -> None:
        """The parent and its RUNNING fold runs FAILED, the reason as the parent's tag ``seg_toolkit.tracking_stopped``:
        not left RUNNING for ever in the MLflow UI after the tracker stopped (when the store still answers)."""
        if self.client is None or self.run_id is None:
            return
        self.client.set_tag(self.run_id, "seg_toolkit.tracking_stopped", reason[:5000])
        if not self.reopen:  # tune / oof / report adding results: the run keeps the status training gave it
            self.close("FAILED", state)


class TensorBoardBackend(Backend):
    name = "tensorboard"

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.writer: Any = None

    def open(self, run: Run, params: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=self.logdir)
        table = "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v[:200]} |" for k, v in params.items())
        self.writer.add_text("hparams", table)
        return {"backend": self.name, "uri": self.logdir}

    def log_epoch(self, fold: int, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"fold_{fold}/{k}", v, step)
        self.writer.flush()

    def fold_end(self, fold: int, metrics: dict[str, float], status: str) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"fold_{fold}/{k}", v, 0)

    def log_results(self, metrics: dict[str, float], tags: dict[str, str], artifacts: list[Path]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"cv/{k}", v, 0)
        if tags:
            self.writer.add_text("results", "\n".join(f"- {k}: {v}" for k, v in sorted(tags.items())))
        self.writer.flush()

    def close(self, status: str, state: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()


def sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
