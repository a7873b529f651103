"""A fold's training state and its files: :class:`TrainState` (epoch, step, best score, patience),
the checkpoints written every epoch (``last.pt``, the one before as ``prev.pt``, ``best.pt``, the k best
``best_e<epoch>.pt``; paths from :class:`seg_toolkit.run.Run`) and :func:`restore`, which resumes from
the newest readable one and drops the metrics rows written after it."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, config_to_dict
from .run import Run

log = logging.getLogger(__name__)

__all__ = ["TrainState", "update_best", "should_stop", "save_epoch", "restore", "checkpoint_state", "weights_only"]


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimiser updates so far
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    batch: int = 0  # batches already done in epoch ``epoch`` (a checkpoint saved on Ctrl-C)
    top_k: list = dataclasses.field(default_factory=list)  # [score, epoch] of the kept best_e<epoch>.pt files
    epochs: int = 0  # the fold's planned epochs: train.epochs, or fewer under train.time_budget (budget.py); 0 before it was kept
    seconds: float = 0.0  # seconds spent on the ``batch`` batches done in epoch ``epoch``: counted into that epoch's time


def update_best(state: TrainState, score: float, epoch: int, min_delta: float) -> bool:
    if not math.isnan(score) and score > state.best_score + min_delta:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        return True
    state.bad_epochs += 1
    return False


def should_stop(state: TrainState, cfg: Config) -> bool:
    patience = cfg.train.early_stopping_patience
    return patience is not None and state.bad_epochs >= patience


# ----------------------------------------------------------------------------- files


def checkpoint_state(cfg, model, ema, optimizer, schedule, scaler, state: TrainState) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "config": config_to_dict(cfg),
        "model_args": {"num_classes": cfg.data.num_classes, "in_channels": cfg.data.in_channels},
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "train_state": asdict(state),
        "epoch": state.epoch,
        "step": state.step,
        "best_score": state.best_score,
    }


def weights_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What ``best.pt`` keeps of a checkpoint: enough to rebuild and run the model, nothing to resume."""
    return {k: ckpt[k] for k in ("model", "ema", "config", "model_args", "epoch", "best_score")}


def save_epoch(cfg, run: Run, fold: int, model, ema, optimizer, schedule, scaler, state: TrainState, improved: bool,
               score: float | None = None) -> None:
    """``last.pt`` every epoch (the previous one kept as ``prev.pt``), ``best.pt`` when improved, and with
    ``train.keep_best_k > 1`` the k best epochs as ``best_e<epoch>.pt`` (for checkpoint averaging or ensembles)."""
    keep_k = cfg.train.keep_best_k > 1 and score is not None and not math.isnan(score)
    if keep_k:
        state.top_k = sorted(state.top_k + [[float(score), state.epoch]], key=lambda x: (-x[0], x[1]))
        dropped, state.top_k = state.top_k[cfg.train.keep_best_k :], state.top_k[: cfg.train.keep_best_k]
    ckpt = checkpoint_state(cfg, model, ema, optimizer, schedule, scaler, state)
    last, prev = run.last_pt(fold), run.prev_pt(fold)
    if last.is_file():
        os.replace(last, prev)
    save_checkpoint(ckpt, last)
    weights = weights_only(ckpt)
    if improved:
        save_checkpoint(weights, run.best_pt(fold))
    if keep_k:
        if [score, state.epoch] in state.top_k:
            save_checkpoint(weights, run.best_epoch_pt(fold, state.epoch))
        for _, epoch in dropped:
            run.best_epoch_pt(fold, epoch).unlink(missing_ok=True)


def restore(run: Run, fold: int, model, ema, optimizer, schedule, scaler) -> TrainState:
    """Load the newest readable checkpoint (``last.pt``, else ``prev.pt``) into every component."""
    errors = []
    for path in (run.last_pt(fold), run.prev_pt(fold)):
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            log.warning("cannot resume from %s (%s); trying the previous checkpoint", path, e)
            continue
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = TrainState(**ckpt["train_state"])
        _truncate_metrics(run.metrics_csv(fold), state.epoch)
        log.info("resumed %s at epoch %d (step %d)", path, state.epoch + 1, state.step)
        return state
    if errors:
        log.warning("no readable checkpoint in %s; the fold starts from scratch", run.fold_dir(fold))
    return TrainState()


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop rows of epochs that ran after the checkpoint (a run killed between the row and the next checkpoint)."""
    if not path.is_file():
        return
    df = pd.read_csv(path)
    df[df["epoch"] <= epochs_done].to_csv(path, index=False)
