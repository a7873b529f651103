"""Train one fold. ``train_fold`` reads like its table of contents; each step is a function.

Files (paths from :class:`seg_toolkit.run.Run`; checkpoints written by :mod:`seg_toolkit.fold_state`):
``fold_<k>/last.pt`` (every epoch, atomically; the previous one kept as ``prev.pt``), ``best.pt``
(best validation score), ``metrics.csv`` (one row per epoch), the fold's out-of-fold probabilities in the run's
``oof/`` (made from ``best.pt`` by the predictor that ``predict`` uses, see
:mod:`seg_toolkit.oof`) and ``done.json`` (written last: a fold with it is never trained again).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .checkpoint import rng_state, save_checkpoint
from .config import Config
from .data import EpochSampler, Sample, SegDataset, collate
from .fold_state import TrainState, checkpoint_state, restore, save_epoch, should_stop, update_best, weights_only
from .amp import run_amp
from .budget import fit_to_budget
from .budget_run import decide_folds, plan_fold
from .device import resolve_device, seed_everything, seed_rank, tf32_state
from .distributed import Dist, get_dist
from .losses import build_loss, model_loss
from .optim import LRSchedule, build_optimizer
from .files import read_json, sha256_file, write_json
from .run import Run
from .pseudo import check_labels_unchanged, fold_sets, pseudo_info
from .stages import init_source, load_fold_init
from .versions import library_versions
from .epoch import GracefulStop, NonFiniteLossError, TrainingInterrupted, log_epoch, to_device, train_one_epoch, validate_epoch
from .errors import SegToolkitError
from . import track

log = logging.getLogger(__name__)

__all__ = ["train_fold", "train_attempt", "build_loaders", "build_model_and_ema", "NonFiniteLossError"]


# ----------------------------------------------------------------------------- the fold


def train_fold(cfg: Config, fold: int, samples: list[Sample], folds: pd.DataFrame, run: Run, resume: bool = False) -> dict[str, Any]:
    """Train fold ``fold`` (validating on it), write its files, and return its summary.

    A NaN/inf loss stops the attempt; with ``train.nan_retries`` the fold starts again with
    ``optim.lr * train.nan_lr_factor``, the failed attempt's files moved to ``failed_attempt_<n>/``.
    """
    out = run.fold_dir(fold)
    done = run.done_json(fold)
    if done.is_file():
        log.info("fold %d already complete (%s); not retrained", fold, done)
        return read_json(done)  # a damaged file is an error naming it
    out.mkdir(parents=True, exist_ok=True)
    d = get_dist()
    if d.is_main:
        finish_setting_aside(run, fold)
    d.barrier()
    # a resumed fold goes on with the attempt it was in: the attempts set aside before lowered its lr, which its
    # checkpoint's optimiser and schedule hold (restarted at attempt 0 the lr was cut twice, and the next set-aside
    # folder already existed)
    first = run.failed_attempts(fold)
    attempt_cfg = _with_lr(cfg, cfg.optim.lr * cfg.train.nan_lr_factor ** first) if first else cfg
    if first:
        log.info("fold %d: %d attempt(s) set aside after a NaN loss; this one runs with optim.lr=%g", fold, first,
                 attempt_cfg.optim.lr)
    last_attempt = max(cfg.train.nan_retries, first)
    for attempt in range(first, last_attempt + 1):
        try:
            return train_attempt(attempt_cfg, fold, samples, folds, run, resume)
        except NonFiniteLossError as e:
            if attempt == last_attempt:
                raise
            # every rank raised here, at the same step (epoch.py): rank 0 moves the files, the others wait
            aside = set_attempt_aside(run, fold, attempt + 1) if d.is_main else run.failed_attempt_dir(fold, attempt + 1)
            if d.is_main:
                record_lost_epoch(run.failed_attempt_metrics_csv(fold, attempt + 1), fold, e.seconds)
            d.barrier()
            lr = attempt_cfg.optim.lr * cfg.train.nan_lr_factor
            attempt_cfg = _with_lr(attempt_cfg, lr)
            (log.warning if d.is_main else log.debug)(  # once, from rank 0
                "%s\nretrying fold %d from scratch with optim.lr=%g (retry %d of %d); the failed attempt's files are in %s",
                e, fold, lr, attempt + 1, cfg.train.nan_retries, aside)
            resume = False
    raise AssertionError("unreachable")  # pragma: no cover


def _with_lr(cfg: Config, lr: float) -> Config:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))


def train_attempt(cfg: Config, fold: int, samples: list[Sample], folds: pd.DataFrame, run: Run, resume: bool) -> dict[str, Any]:
    """One training attempt of a fold, from scratch or from its last checkpoint."""
    d = get_dist()
    device = resolve_device(cfg.train.device, d)
    seed_everything(cfg.train.seed + fold, cfg.train.deterministic, cfg.train.cudnn_benchmark)
    train_set, valid_set, pseudo = fold_sets(cfg, run, fold, samples, folds, d)  # pseudo labels: training only
    train_loader, valid_loader = build_loaders(cfg, train_set, valid_set, device, d)
    model, ema = build_model_and_ema(cfg, device)
    optimizer = build_optimizer(cfg, model)
    updates_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
    schedule = LRSchedule(cfg, optimizer, updates_per_epoch)
    loss_fn = build_loss(cfg).to(device)
    amp = run_amp(cfg, run, device, model, loss_fn, train_set, d, lambda b: to_device(b, cfg, device))
    # an explicit precision this device does not run (fp16 on a CPU: fp32) is a warning, once (rank 0); auto's choice
    # is information (which the other ranks do not log)
    overridden = amp.requested in ("fp16", "bf16") and amp.mode != amp.requested and d.is_main
    log.log(logging.WARNING if overridden else logging.INFO, "fold %d: %s", fold, amp.describe())
    scaler = torch.amp.GradScaler(device.type, enabled=amp.uses_scaler)
    state = TrainState()
    if resume:
        state = restore(run, fold, model, ema, optimizer, schedule, scaler, d)
    fresh = state.epoch == 0 and state.batch == 0
    laid_out = state.epochs  # the epochs the restored schedule spans (0: a fresh fold's, train.epochs)
    per_epoch_changed = not fresh and resumed_layout(cfg, fold, state, d, updates_per_epoch)
    budget, epoch_seconds = plan_fold(cfg, run, fold, state, d)  # the fold's epochs' times (before a resume too)
    elapsed = sum(epoch_seconds)
    epochs_changed = bool(laid_out) and laid_out != state.epochs  # by the plan or a new train.epochs
    if fresh and state.epochs != cfg.train.epochs:  # planned shorter from the start: the schedule spans the plan
        schedule = schedule.for_epochs(cfg, optimizer, updates_per_epoch, state.epochs, 0)
    elif not fresh and (epochs_changed or per_epoch_changed) and state.epoch < state.epochs:
        # resumed with another train.epochs: the restored schedule would end at its old total (the new epochs at the
        # floor lr); laid out again for the new total from the step reached, as a fold planned so would have it
        if epochs_changed:
            log.warning("fold %d: resumed with %d epochs planned instead of %d; its learning-rate schedule is laid out "
                        "again for %d epochs from update %d", fold, state.epochs, laid_out, state.epochs, state.step)
        schedule = schedule.for_epochs(cfg, optimizer, updates_per_epoch, state.epochs, state.step, per_epoch_changed)
    elif not fresh and epochs_changed:  # fewer epochs than the fold has run: it ends with them, without a word
        log.warning("fold %d: resumed with %d epochs planned, but %d have run (laid out for %d); it ends with those %d",
                    fold, state.epochs, state.epoch, laid_out, state.epoch)
    state.world_size, state.updates_per_epoch = d.world_size, updates_per_epoch  # what the schedule is laid out for
    initialised = load_fold_init(cfg, fold, model, ema) if fresh else init_source(cfg, fold)
    if initialised and fresh:
        state.init_sha256 = sha256_file(initialised)
    elif initialised and state.init_sha256 and sha256_file(initialised) != state.init_sha256:
        log.warning("fold %d started from %s, which has changed since (retrained?); the fold continues from its own "
                    "checkpoint: done.json's init_from_sha256 names the weights it started from", fold, initialised)
    check_labels_unchanged(cfg, run, fold, state, fresh)  # pseudo.teacher: one label set per fold
    forward_model = wrap_for_training(cfg, model, device, d, loss_fn, train_set)
    if fresh:  # the models are built alike; from here each rank draws its own dropout masks (resumed: restore's states)
        seed_rank(cfg.train.seed + fold, d.rank)

    saved_from = None  # when the last epoch's row was written: its checkpoint's save counts in the next epoch's time
    with GracefulStop() as stop:
        while state.epoch < state.epochs and not should_stop(state, cfg):  # resumed after an early stop: none
            epoch = state.epoch
            set_frozen_encoder(model, epoch < cfg.model.freeze_encoder_epochs)
            train_loader.sampler.set_epoch(epoch, start=state.batch * cfg.train.batch_size)
            t0 = time.perf_counter() if saved_from is None else saved_from
            try:
                train_stats = train_one_epoch(cfg, forward_model, ema, loss_fn, optimizer, schedule, scaler, train_loader,
                                              state, fold, epoch, device, stop, amp, total_epochs=state.epochs)
            except NonFiniteLossError as e:  # the epoch's time so far: the retry's budget counts it (record_lost_epoch)
                e.seconds = time.perf_counter() - t0 + state.seconds
                raise
            except TrainingInterrupted as e:
                state.batch += e.batches_done
                state.partial = e.partial
                state.seconds += time.perf_counter() - t0  # the epoch's time so far: its row, once resumed, has it all
                rank_rngs = d.gather(rng_state()) if d.enabled else None  # each rank's dropout stream, for the resume
                if d.is_main:
                    save_epoch(cfg, run, fold, model, ema, optimizer, schedule, scaler, state, improved=False,
                               rank_rngs=rank_rngs)
                d.barrier()  # every rank stopped at this update; none exits (torchrun then stops the rest) before the save
                raise KeyboardInterrupt(
                    f"fold {fold} interrupted in epoch {epoch + 1} after {state.batch} batches; "
                    f"checkpoint saved to {run.last_pt(fold)}: add --resume to continue exactly from there"
                ) from None
            state.batch = 0
            d.average_buffers(model)
            val_stats = d.broadcast(validate_epoch(cfg, model, ema, loss_fn, valid_loader, device, amp) if d.is_main else None)
            if not math.isfinite(val_stats["val_loss"]):  # diverged weights (the losses score an all-void batch 0, never NaN)
                err = NonFiniteLossError(f"fold {fold}: validation loss is {val_stats['val_loss']} after epoch {epoch + 1} "
                                         "(the weights diverged); the last good checkpoint is kept; lower optim.lr, set "
                                         "train.grad_clip, or train.nan_retries to retry with a lower lr")
                err.seconds = time.perf_counter() - t0 + state.seconds
                raise err
            schedule.step_epoch(epoch, val_stats["val_score"])
            improved = update_best(state, val_stats["val_score"], epoch, cfg.train.early_stopping_min_delta)
            state.epoch = epoch + 1
            seconds = time.perf_counter() - t0 + state.seconds  # with the part of an interrupted epoch run before a resume
            state.seconds = 0.0
            elapsed += seconds
            epoch_seconds.append(seconds)
            if budget is not None and not budget.decided:  # train.min_fold_epochs: the run's first epoch decides the folds
                budget = decide_folds(cfg, budget, fold, round(seconds, 3), d, run)
            if budget is not None and fit_to_budget(budget, state, fold, elapsed, epoch_seconds, d):
                schedule = schedule.for_epochs(cfg, optimizer, updates_per_epoch, state.epochs, state.step)
            saved_from = time.perf_counter()  # the row, checkpoints and tracker are the machine's time too (the budget's)
            rank_rngs = d.gather(rng_state()) if d.enabled else None
            if d.is_main:
                # the row first: killed before the checkpoint, a resume drops the row and runs the epoch again; the
                # other way round the checkpoint would hold an epoch whose row (its time, its curve point) never comes
                log_epoch(run.metrics_csv(fold), fold, epoch, train_stats, val_stats, improved, seconds)
                save_epoch(cfg, run, fold, model, ema, optimizer, schedule, scaler, state, improved, val_stats["val_score"],
                           rank_rngs)
                track.log_epoch(fold, epoch + 1, {**train_stats, **val_stats})
            if d.any(stop.requested):  # Ctrl-C / SIGTERM to any rank after the epoch's last update (or at it), once saved
                raise KeyboardInterrupt(f"fold {fold} stopped after epoch {epoch + 1}; checkpoint saved to "
                                        f"{run.last_pt(fold)}: add --resume to continue exactly from there")
            if should_stop(state, cfg):
                log.info("fold %d: early stop after epoch %d (best %.4f at epoch %d)", fold, epoch + 1, state.best_score, state.best_epoch + 1)

    summary, averaged = None, {}
    if d.is_main and cfg.train.average_best:
        from .averaging import average_best_epochs

        kept = [e for _, e in state.top_k]  # 1-based, as state.epoch
        if 0 < max(kept or [state.epoch]) <= cfg.model.freeze_encoder_epochs:  # every epoch averaged (or, with none
            # kept, every epoch) ran with the encoder frozen: its norm layers keep the statistics the decoder learned
            # on, in the EMA copy (made before freezing) and after a resume that ran no epoch, too; a later unfrozen
            # epoch the average leaves out does not decide it
            for m in [model] + ([ema.module] if ema is not None else []):
                set_frozen_encoder(m, True)

        # BatchNorm re-estimated over the whole training set in this process (not rank 0's shard), no image dropped
        bn_loader = whole_train_loader(cfg, train_set, device, max(state.epoch - 1, 0))
        averaged = average_best_epochs(cfg, run, fold, model, ema, [e for _, e in state.top_k], (state.best_epoch, state.best_score),
                                       bn_loader, lambda: validate_epoch(cfg, model, ema, loss_fn, valid_loader, device, amp)["val_score"],
                                       lambda batch: to_device(batch, cfg, device)[0], amp, device)
    if d.is_main:
        from .oof import write_fold_oof
        from .run_lock import run_lock

        if not run.best_pt(fold).is_file():  # no epoch scored (NaN every epoch): predict with the final weights
            log.warning("fold %d: no epoch improved the validation score; best.pt is the final weights", fold)
            save_checkpoint(weights_only(checkpoint_state(cfg, model, ema, optimizer, schedule, scaler, state)), run.best_pt(fold))
        with run_lock(run, f"train fold {fold}: its OOF files"):  # after a concurrent `tune --tta`: with its choice
            summary = write_fold_oof(cfg, run, fold, valid_set)
            summary.update(fold=fold, best_epoch=state.best_epoch + 1, best_val_score=state.best_score, epochs_run=state.epoch,
                           epochs_planned=state.epochs, stopped_early=should_stop(state, cfg) and state.epoch < state.epochs, epochs_configured=cfg.train.epochs, fold_budget_s=budget.share_s if budget else None,
                           budget_folds=budget.folds if budget and budget.folds else None,
                           n_train=len(train_set), n_valid=len(valid_set), world_size=d.world_size, optim_lr=cfg.optim.lr,
                           n_train_per_epoch=train_loader.sampler.n_epoch,  # fewer with train.empty_share
                           amp=amp.mode, amp_reason=amp.reason, tf32=tf32_state(device), init_from=initialised,
                           init_from_sha256=state.init_sha256 or None, pseudo_sha256=state.pseudo_sha256 or None,
                           n_pseudo=len(pseudo), pseudo=pseudo_info(cfg), versions=library_versions(), **averaged)
            write_json(run.done_json(fold), summary)
    return d.broadcast(summary)


def set_attempt_aside(run: Run, fold: int, n: int) -> Path:
    """Move a failed attempt's files into ``fold_<k>/failed_attempt_<n>/`` (nothing is deleted): first into
    :meth:`~seg_toolkit.run.Run.failed_attempt_partial_dir`, renamed when all are in. Moved one by one into the
    final folder, a kill left ``failed_attempt_<n>/`` (counted as set aside) beside the attempt's own ``last.pt``,
    and the resume went on with the diverged attempt; :func:`finish_setting_aside` completes a move cut short."""
    partial = run.failed_attempt_partial_dir(fold, n)
    partial.mkdir(exist_ok=True)
    out = run.fold_dir(fold)
    for p in list(out.iterdir()):  # the fold's lock stays: this process goes on training the fold
        if not p.name.startswith(("failed_attempt_", ".failed_attempt_")) and p != run.fold_lock_file(fold):
            os.replace(p, partial / p.name)
    aside = run.failed_attempt_dir(fold, n)
    os.replace(partial, aside)
    return aside


def finish_setting_aside(run: Run, fold: int) -> None:
    """Complete a :func:`set_attempt_aside` a kill cut short: the files still beside its partial folder are the failed
    attempt's (the next one had not started)."""
    for n in range(1, run.failed_attempts(fold) + 2):
        if run.failed_attempt_partial_dir(fold, n).is_dir():
            log.warning("fold %d: setting attempt %d aside was cut short; finishing it (%s)", fold, n, run.failed_attempt_dir(fold, n))
            set_attempt_aside(run, fold, n)


def record_lost_epoch(metrics_csv: Path, fold: int, seconds: float) -> None:
    """Add the epoch a NaN loss stopped to the set-aside attempt's ``metrics.csv``, as a row with its fold and seconds
    only (nothing was scored): :func:`~seg_toolkit.budget.set_aside_seconds` then counts the time the machine spent
    on it against the fold's share, as it counts the attempt's finished epochs (they were all it counted)."""
    if seconds <= 0:
        return
    header = metrics_csv.read_text().splitlines()[0].split(",") if metrics_csv.is_file() and metrics_csv.stat().st_size else []
    fresh = not header
    if fresh:  # the NaN came in the attempt's first epoch: no row was written
        header = ["fold", "epoch", "seconds"]
    values = {"fold": str(fold), "seconds": f"{seconds:.3f}"}
    with open(metrics_csv, "a", newline="") as f:
        if fresh:
            f.write(",".join(header) + "\n")
        f.write(",".join(values.get(c, "") for c in header) + "\n")


# ----------------------------------------------------------------------------- set-up steps


def _loader_args(cfg: Config, device: torch.device, persistent: bool = True) -> dict[str, Any]:
    t = cfg.train
    # the loaders get generators of their own: creating an iterator must not draw from torch's
    # global RNG (used by dropout), or a run resumed mid-epoch would replay different masks
    return dict(num_workers=t.num_workers, pin_memory=t.pin_memory and device.type == "cuda", collate_fn=collate,
                persistent_workers=persistent and t.persistent_workers and t.num_workers > 0,
                generator=torch.Generator().manual_seed(t.seed), worker_init_fn=_leave_stops_to_the_main_process)


def _leave_stops_to_the_main_process(worker_id: int) -> None:
    """In a loader worker: ignore Ctrl-C (SIGINT) and SIGTERM. They reach every process of the group (a terminal's
    Ctrl-C, SLURM preempting a job), and torch's worker dies of a SIGTERM not sent by its parent; the main process then
    failed on "DataLoader worker killed" before :class:`~seg_toolkit.epoch.GracefulStop` could save at the next
    update. The main process still ends its workers as usual (they also exit when it dies)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loaders(cfg: Config, train_set: list[Sample], valid_set: list[Sample], device: torch.device,
                  d: Dist | None = None) -> tuple[DataLoader, DataLoader]:
    """The training loader (seeded per epoch, sharded by rank) and the validation loader.

    The last partial batch is dropped when this process's share (all of the set, or under DDP ``ceil(n / ranks)``)
    holds more than one batch: a share of at most ``train.batch_size`` images is one batch, never none."""
    t, d = cfg.train, d or Dist()
    sampler = train_sampler(cfg, train_set, d)
    common = _loader_args(cfg, device)  # one generator for both, as before
    train_loader = DataLoader(SegDataset(train_set, cfg, "train"), batch_size=t.batch_size, sampler=sampler,
                              drop_last=sampler.per_rank > t.batch_size, **common)
    valid_loader = DataLoader(SegDataset(valid_set, cfg, "valid"), batch_size=cfg.predict.batch_size, shuffle=False, **common)
    return train_loader, valid_loader


def train_sampler(cfg: Config, train_set: list[Sample], d: Dist | None = None, say: bool = True) -> EpochSampler:
    """The training images' sampler: every image each epoch, or with ``train.empty_share`` every image with foreground
    and a draw of empty ones (their foreground from the RLE rows, or one read of each mask file)."""
    t, d = cfg.train, d or Dist()
    empty = None
    if t.empty_share is not None:
        from .data.folds import class_presence

        empty = np.array([not class_presence(s, cfg).any() for s in train_set], bool)
    sampler = EpochSampler(len(train_set), shuffle=True, seed=t.seed, rank=d.rank, world_size=d.world_size,
                           empty=empty, empty_share=t.empty_share)
    if empty is not None and d.rank == 0 and say:
        log.info("train.empty_share %g: each epoch %d image(s) with foreground and %d of the %d empty one(s)%s",
                 t.empty_share, int((~empty).sum()), sampler.n_empty, int(empty.sum()),
                 " (all of them: fewer than the share asks)" if sampler.n_empty < sampler.wanted else "")
    return sampler


def whole_train_loader(cfg: Config, train_set: list[Sample], device: torch.device, epoch: int) -> DataLoader:
    """Every image of epoch ``epoch`` (all the training set, or its draw under ``train.empty_share``) in this one
    process (not sharded by rank), in that epoch's order and
    augmentation, batches of ``train.batch_size`` with none dropped: a last batch of one image joins the one before
    (BatchNorm cannot train on one value per channel). For checkpoint averaging's BatchNorm pass (:mod:`.averaging`)."""
    sampler = train_sampler(cfg, train_set, say=False)  # the epoch's images (train.empty_share), all in this process
    sampler.set_epoch(epoch)
    items, size = list(sampler), cfg.train.batch_size
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [batches[-2] + batches[-1]]
    return DataLoader(SegDataset(train_set, cfg, "train"), batch_sampler=batches, **_loader_args(cfg, device, persistent=False))


def resumed_layout(cfg: Config, fold: int, state: TrainState, d: Dist, updates_per_epoch: int) -> bool:
    """Check a resumed fold against the processes and updates per epoch its lr schedule was laid out for
    (``state.world_size``, ``state.updates_per_epoch``; 0 in checkpoints from before they were kept).

    A checkpoint saved mid-epoch resumes only with as many processes (the epoch's images are shared among them):
    another number is refused, naming both. At an epoch's end another number of updates per epoch (another number
    of processes) is taken: ``state.step`` becomes the updates a run of this shape has made at that point and True
    is returned, so the caller lays the schedule out again (a run with 2 processes resumed with 1 would otherwise
    spend its last epochs at the floor lr, or step a one-cycle schedule past its end)."""
    old_world, old_upe = state.world_size, state.updates_per_epoch
    if old_world and old_world != d.world_size and state.batch:
        how = "without torchrun" if old_world == 1 else f"under torchrun with {old_world} processes in all"
        raise SegToolkitError(
            f"fold {fold}: its checkpoint was saved in the middle of epoch {state.epoch + 1} (after {state.batch} batches "
            f"per process) by a run of {old_world} process(es); this run has {d.world_size}: the epoch's images are "
            f"shared among the processes and its lr schedule is laid out for {old_upe} updates per epoch, so a "
            f"mid-epoch checkpoint resumes only with as many; resume it {how} (WORLD_SIZE={old_world})")
    if not old_upe or old_upe == updates_per_epoch:
        return False
    step = state.epoch * updates_per_epoch + math.ceil(state.batch / cfg.train.grad_accum)
    log.warning("fold %d: resumed with %d process(es) instead of %d: %d updates per epoch instead of %d; the lr schedule is "
                "laid out again from epoch %d (update %d, was %d)", fold, d.world_size, old_world or d.world_size,
                updates_per_epoch, old_upe, state.epoch + 1, step, state.step)
    state.step = step
    return True


def build_model_and_ema(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, Any]:
    from .models import build_model

    model = build_model(cfg.model, num_classes=cfg.data.num_classes, in_channels=cfg.data.in_channels).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.train.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
    return model, ema


def wrap_for_training(cfg: Config, model: torch.nn.Module, device: torch.device, d: Dist, loss_fn=None,
                      train_set: list[Sample] | None = None) -> torch.nn.Module:
    """DistributedDataParallel across ranks and ``torch.compile`` when configured; the raw model is kept for saving.

    DDP waits for a gradient of every parameter unless told to look for unused ones (``find_unused_parameters``, a
    graph walk each step): told so for a frozen encoder, and when parameters get no gradient from the loss (found by
    :func:`unused_parameters` on rank 0 with ``loss_fn`` and ``train_set``), e.g. the stride-32 stage of an encoder
    under a Unet with ``encoder_depth: 4``; without it DDP fails at the second step ("Expected to have finished
    reduction in the prior iteration")."""
    wrapped = model
    if d.enabled:
        find_unused = cfg.model.freeze_encoder_epochs > 0
        if not find_unused and loss_fn is not None and train_set:
            unused = d.broadcast(unused_parameters(cfg, model, loss_fn, train_set, device) if d.is_main else None)
            if unused:
                log.info("%d parameter tensor(s) get no gradient from the loss (%s%s): DistributedDataParallel looks "
                         "for unused parameters each step", len(unused), ", ".join(unused[:3]), ", ..." if len(unused) > 3 else "")
                find_unused = True
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused,
        )
    return torch.compile(wrapped) if cfg.train.compile else wrapped


def unused_parameters(cfg: Config, model: torch.nn.Module, loss_fn, train_set: list[Sample], device: torch.device) -> list[str]:
    """The trainable parameters of ``model`` that get no gradient from the training loss of a batch of (up to) two
    training images: one forward and backward, in training mode (deep-supervision and classifier heads act only
    there), of a copy of the model, with torch's RNG put back after it (dropout); the model itself is not touched."""
    import copy

    dataset = SegDataset(train_set[:2], cfg, "train")
    images, target = to_device(collate([dataset[(i % len(dataset), i)] for i in range(2)]), cfg, device)
    probe = copy.deepcopy(model).train()
    named = [(n, p) for n, p in probe.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss, _ = model_loss(loss_fn, probe(images), target, cfg.model.deep_supervision, cfg.model.classifier)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads) if g is None]


def set_frozen_encoder(model: torch.nn.Module, frozen: bool) -> None:
    from .models import set_encoder_frozen

    if getattr(model, "_encoder_frozen", None) != frozen:
        set_encoder_frozen(model, frozen)
        model._encoder_frozen = frozen
