"""A fold's training state and its files: :class:`TrainState` (epoch, step, best score, patience),
the checkpoints written every epoch (``last.pt``, the one before as ``prev.pt``, ``best.pt``, the k best
``best_e<epoch>.pt``; paths from :class:`seg_toolkit.run.Run`) and :func:`restore`, which resumes from
the newest readable one and drops the metrics rows written after it."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, config_to_dict
from .distributed import Dist
from .files import write_text
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
    # the loss sums of those batches, over all ranks ({"names", "sums", "n_images", "lr_sum", "n_updates"}): the epoch's
    # row averages them all, its lr too
    partial: dict = dataclasses.field(default_factory=dict)
    # the score early stopping's patience counts from: the last one that beat its predecessor by min_delta
    patience_score: float = -math.inf
    # the processes (torchrun's WORLD_SIZE) and optimiser updates per epoch the checkpoint's lr schedule is laid out
    # for (0: saved before they were kept); a resume with others lays it out again, or refuses one mid-epoch (train.py)
    world_size: int = 0
    updates_per_epoch: int = 0
    # the SHA-256 of the train.init_from checkpoint the fold started from ("" without one, or saved before it was kept)
    init_sha256: str = ""
    # the SHA-256 of the pseudo-labels file the fold started on ("" without pseudo.teacher, or saved before it was kept)
    pseudo_sha256: str = ""


def update_best(state: TrainState, score: float, epoch: int, min_delta: float) -> bool:
    """Whether ``score`` is the fold's best so far (it becomes best.pt). ``min_delta`` only decides whether the epoch
    counts as progress for the patience: with min_delta 0.01 an epoch at 0.308 after one at 0.301 is not progress,
    but it is the better model (best.pt stayed at 0.301 before)."""
    if math.isnan(score):
        state.bad_epochs += 1
        return False
    if score > state.patience_score + min_delta:
        state.patience_score, state.bad_epochs = score, 0
    else:
        state.bad_epochs += 1
    if score > state.best_score or (epoch == state.best_epoch and score >= state.best_score):
        # the second: the epoch whose best.pt a resume adopted (_adopt_newer_best), run again to the same score, is
        # the improvement it was the first time (its row says best, as the uninterrupted run's did)
        state.best_score, state.best_epoch = score, epoch
        return True
    return False


def should_stop(state: TrainState, cfg: Config) -> bool:
    patience = cfg.train.early_stopping_patience
    return patience is not None and state.bad_epochs >= patience


# ----------------------------------------------------------------------------- files


def checkpoint_state(cfg, model, ema, optimizer, schedule, scaler, state: TrainState,
                     rank_rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything a resume needs. ``rank_rngs``: under DDP every rank's RNG states (:meth:`Dist.gather`), kept as
    ``rng_ranks`` so each rank goes on with its own dropout stream (``rng`` is rank 0's, as a single process's)."""
    ckpt = {
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
    if rank_rngs is not None and len(rank_rngs) > 1:
        ckpt["rng_ranks"] = rank_rngs
    return ckpt


def weights_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What ``best.pt`` keeps of a checkpoint: enough to rebuild and run the model, nothing to resume."""
    return {k: ckpt[k] for k in ("model", "ema", "config", "model_args", "epoch", "best_score")}


def save_epoch(cfg, run: Run, fold: int, model, ema, optimizer, schedule, scaler, state: TrainState, improved: bool,
               score: float | None = None, rank_rngs: list[dict[str, Any]] | None = None) -> None:
    """``last.pt`` every epoch (the previous one kept as ``prev.pt``), ``best.pt`` when improved, and with
    ``train.keep_best_k > 1`` the k best epochs as ``best_e<epoch>.pt`` (for checkpoint averaging or ensembles).
    ``rank_rngs``: every rank's RNG states under DDP (:func:`checkpoint_state`)."""
    keep_k = cfg.train.keep_best_k > 1 and score is not None and not math.isnan(score)
    if keep_k:
        state.top_k = sorted(state.top_k + [[float(score), state.epoch]], key=lambda x: (-x[0], x[1]))
        dropped, state.top_k = state.top_k[cfg.train.keep_best_k :], state.top_k[: cfg.train.keep_best_k]
    ckpt = checkpoint_state(cfg, model, ema, optimizer, schedule, scaler, state, rank_rngs)
    weights = weights_only(ckpt)
    # best.pt before last.pt: killed in between, the resume (from the older last.pt) finds a best.pt from the epoch it
    # is about to run again and keeps it as the best so far (restore); the other way round best.pt would be an epoch
    # older than the state that says it is the best, and the OOF files would be made from it
    if improved:
        save_checkpoint(weights, run.best_pt(fold))
    if keep_k and [score, state.epoch] in state.top_k:
        save_checkpoint(weights, run.best_epoch_pt(fold, state.epoch))
    last, prev = run.last_pt(fold), run.prev_pt(fold)
    if last.is_file():
        os.replace(last, prev)
    save_checkpoint(ckpt, last)
    if keep_k:
        for _, epoch in dropped:
            run.best_epoch_pt(fold, epoch).unlink(missing_ok=True)


def restore(run: Run, fold: int, model, ema, optimizer, schedule, scaler, d: Dist | None = None) -> TrainState:
    """Load the newest readable checkpoint (``last.pt``, else ``prev.pt``) into every component; drop the metrics
    rows of epochs after it (all of them when the fold starts from scratch) and the temporary files of checkpoint
    writes that a kill cut short.

    Under DDP (``d``) every rank calls it and loads the checkpoint; only rank 0 changes files (the others wait for it
    at a barrier before loading, and again before returning, so none reads a metrics file being rewritten)."""
    main = d is None or d.is_main
    if main:
        _remove_partial_writes(run.fold_dir(fold))
    if d is not None:
        d.barrier()
    state = _load_newest(run, fold, model, ema, optimizer, schedule, scaler, d.rank if d is not None else 0)
    if main:  # the rows of epochs after the restored one (all of them when the fold starts from scratch)
        _truncate_metrics(run.metrics_csv(fold), state.epoch)
        _remove_dropped_best(run, fold, state)
    if d is not None:
        d.barrier()
    return state


def _restore_rng(ckpt: dict[str, Any], rank: int) -> None:
    """This rank's RNG states as saved (``rng_ranks``), rank 0's (``rng``) on rank 0 or a single process. A rank the
    checkpoint has none for (saved by fewer processes, or before ranks had streams of their own) goes on from rank 0's
    state reseeded for the rank and the update reached (:func:`~seg_toolkit.device.seed_rank`), never with rank 0's."""
    ranks = ckpt.get("rng_ranks") or []
    if rank < len(ranks):
        set_rng_state(ranks[rank])
        return
    set_rng_state(ckpt["rng"])  # the CUDA generators of GPUs this process never draws from, as before
    if rank > 0:
        from .device import seed_rank

        seed_rank(int(ckpt.get("step", 0)), rank)


def _load_newest(run: Run, fold: int, model, ema, optimizer, schedule, scaler, rank: int = 0) -> TrainState:
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
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        elif scaler.is_enabled():  # saved in fp32 / bf16 (on a CPU, or a GPU with bf16), resumed in fp16
            log.warning("fold %d: %s was saved without loss scaling; it continues in fp16 with a fresh GradScaler",
                        fold, path)
        _restore_rng(ckpt, rank)
        if errors and rank == 0 and run.last_pt(fold).is_file():
            # set aside, or the next save would rotate it over prev.pt, the one good checkpoint (a kill then lost the fold)
            os.replace(run.last_pt(fold), run.last_pt_unreadable(fold))
            log.warning("fold %d: the unreadable last.pt is kept as %s", fold, run.last_pt_unreadable(fold).name)
        state = TrainState(**ckpt["train_state"])
        if "patience_score" not in ckpt["train_state"]:  # saved before min_delta had a score of its own
            state.patience_score = state.best_score
        _adopt_newer_best(run, fold, state)
        if state.epoch >= state.epochs > 0:
            log.info("resumed %s: all %d epochs trained (step %d); the fold's OOF files come next", path, state.epochs, state.step)
        else:
            log.info("resumed %s at epoch %d (step %d)", path, state.epoch + 1, state.step)
        return state
    if errors:
        log.warning("no readable checkpoint in %s; the fold starts from scratch", run.fold_dir(fold))
    elif run.metrics_csv(fold).is_file():
        log.info("fold %d: killed before its first checkpoint; it starts from scratch", fold)
    return TrainState()


def _adopt_newer_best(run: Run, fold: int, state: TrainState) -> None:
    """A ``best.pt`` of an epoch after the restored state's (killed between writing it and ``last.pt``, see
    :func:`save_epoch`) is the best so far: the state takes its score and epoch, so the epoch run again replaces it
    only by doing better, and best.pt never holds other weights than the state says."""
    path = run.best_pt(fold)
    if not path.is_file():
        return
    try:
        best = load_checkpoint(path)
        epoch, score = int(best["epoch"]), float(best["best_score"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return
    if epoch > state.epoch and score > state.best_score:
        log.warning("%s holds epoch %d, written after %s's epoch %d (stopped between the two): kept as the best so far "
                    "(%.4f)", path, epoch, run.last_pt(fold).name, state.epoch, score)
        # the patience is left as last.pt has it: the epoch run again counts it as it did (min_delta may not count a
        # new best as progress; setting bad_epochs to 0 here stopped early two epochs later than the uninterrupted run)
        state.best_score, state.best_epoch = score, epoch - 1


def _remove_dropped_best(run: Run, fold: int, state: TrainState) -> None:
    """``train.keep_best_k``: the ``best_e<epoch>.pt`` files the restored state does not keep. Killed after an epoch's
    ``last.pt`` and before the epoch that fell out of the top k was deleted (:func:`save_epoch`), the file stayed,
    one checkpoint more than k for ever; one of an epoch after the state's is made again when that epoch reruns."""
    kept = {int(epoch) for _, epoch in state.top_k}
    for p in run.fold_dir(fold).glob("best_e*.pt"):
        m = re.fullmatch(r"best_e(\d+)\.pt", p.name)
        if m and int(m.group(1)) not in kept:
            log.info("removing %s: not among the %d best epochs the resumed state keeps", p, len(kept))
            p.unlink(missing_ok=True)


def _remove_partial_writes(folder: Path) -> None:
    """Temporary files of checkpoint writes a kill cut short (``.last.pt.<random>.tmp``, :func:`seg_toolkit.files.atomic_write`):
    never read, each the size of a checkpoint."""
    from .run_guard import delete_path, is_partial_write

    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and is_partial_write(p.name):
                log.info("removing %s, a checkpoint write cut short", p)
                delete_path(p, announce=False)


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop rows of epochs that ran after the checkpoint (a run killed between the row and the next checkpoint), rewritten
    atomically; an unreadable file (cut short by a kill during an older rewrite) is set aside, not fatal."""
    if not path.is_file():
        return
    try:
        df = pd.read_csv(path)
        keep = df[df["epoch"] <= epochs_done]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, UnicodeDecodeError) as e:
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        log.warning("%s is unreadable (%s); moved to %s, the fold's rows start again from here", path, e, aside.name)
        return
    if len(keep) != len(df):
        write_text(path, keep.to_csv(index=False))
