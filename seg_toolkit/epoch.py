"""One epoch of a fold: the training pass (:func:`train_one_epoch`), validation (:func:`validate_epoch`),
the ``metrics.csv`` row (:func:`log_epoch`), and how a fold stops inside an epoch: Ctrl-C / SIGTERM at
the next optimiser step (:class:`GracefulStop`, :class:`TrainingInterrupted`) or a non-finite loss
(:class:`NonFiniteLossError`). :mod:`seg_toolkit.train` runs the epochs of a fold."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .amp import resolve_amp
from .config import Config
from .device import autocast
from .distributed import get_dist
from .errors import SegToolkitError
from .evaluator import Evaluator
from .files import write_text
from .fold_state import TrainState
from .losses import model_loss
from .models.presence import has_presence, split_presence
from .tensors import activate, resize_target, resize_to

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "GracefulStop", "to_device", "train_one_epoch", "optimizer_step",
           "predict_batches", "validate_epoch", "log_epoch"]


class NonFiniteLossError(SegToolkitError, FloatingPointError):
    """The training or validation loss became NaN or infinite; the message names the fold, epoch and step
    (the CLI prints it as one line: a lower ``optim.lr``, ``train.grad_clip`` or ``train.nan_retries`` are the remedies).
    ``seconds``: the time of the epoch it stopped (set by the fold's loop), which a retry's budget counts."""

    seconds: float = 0.0


class TrainingInterrupted(Exception):
    """Raised inside the epoch loop after a Ctrl-C, at the first optimiser-step boundary."""

    def __init__(self, batches_done: int, partial: dict | None = None) -> None:
        super().__init__(f"interrupted after {batches_done} batches")
        self.batches_done = batches_done
        self.partial = partial or {}  # the loss sums so far, for the epoch's row once resumed (TrainState.partial)


class GracefulStop:
    """While active, a first Ctrl-C (SIGINT) or SIGTERM (``kill``, a scheduler preempting the job)
    only sets a flag; the loop stops at the next optimiser-step boundary and checkpoints.
    A second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: stopping after the current step and saving a checkpoint (send it again to abort at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _ddp_of(model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel module that ``model`` is or wraps (under ``torch.compile``), else None."""
    for m in (model, getattr(model, "_orig_mod", None)):
        if isinstance(m, torch.nn.parallel.DistributedDataParallel):
            return m
    return None


def sync_interval(device: torch.device) -> int:
    """Steps between reads of the loss on the host (each read waits for the device): every step on CPU, where it
    is free, every 10th on an accelerator."""
    return 1 if device.type == "cpu" else 10


def to_device(batch: dict[str, Any], cfg: Config, device: torch.device) -> tuple[torch.Tensor, Any]:
    images = batch["image"].to(device, non_blocking=True)
    if cfg.model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = batch.get("target")
    if isinstance(target, torch.Tensor):
        target = target.to(device, non_blocking=True)
    return images, target


def batch_weight(batch: dict[str, Any], device: torch.device) -> torch.Tensor | None:
    """The batch's U-Net weight map on ``device`` (``data.border_weight``), or None."""
    weight = batch.get("weight")
    return None if weight is None else weight.to(device, non_blocking=True)


def train_one_epoch(cfg, model, ema, loss_fn, optimizer, schedule, scaler, loader, state: TrainState, fold: int, epoch: int, device,
                    stop: GracefulStop | None = None, amp=None, total_epochs: int | None = None) -> dict[str, float]:
    """One pass over the training set; returns mean loss terms, the mean learning rate its updates applied
    (``lr``; the lr after the epoch is the next one's) and images/s.

    Loss values stay on the device and are read back every ``sync_every`` steps (every
    step on CPU, where reading is free), so a GPU is not stalled each step; a NaN/inf loss
    is caught at the next read, named by epoch and step, and stops the fold. Under DDP the reads are at
    optimiser updates and collective: a NaN/inf loss on any rank, or a stop (Ctrl-C / SIGTERM) that reached any rank,
    stops every rank at the same update. A stop at the epoch's last update does not interrupt it: the epoch ends
    (validated, checkpointed) and the caller stops after it. Resumed mid-epoch (``state.partial``), the row
    averages the batches before the stop too, over all ranks, its lr included.
    """
    model.train()
    d = get_dist()
    amp = amp or resolve_amp(cfg.train.amp, device)
    accum = cfg.train.grad_accum
    sync_every = sync_interval(device)
    log_every = cfg.train.log_every  # a log line every so many updates (0: none)
    names: list[str] = []
    sums: torch.Tensor | None = None
    n_images, n_here, t0 = 0, 0, time.perf_counter()
    lr_sum, n_updates = 0.0, 0  # the lr each update of this epoch applied: the row's lr is their mean
    if state.partial:  # resumed mid-epoch: the sums of all ranks before the stop, counted once (by rank 0)
        names, sums = list(state.partial["names"]), torch.tensor(state.partial["sums"], dtype=torch.float32, device=device)
        n_images = int(state.partial["n_images"])
        lr_sum, n_updates = float(state.partial.get("lr_sum", 0.0)), int(state.partial.get("n_updates", 0))
        if not d.is_main:
            sums, n_images = torch.zeros_like(sums), 0
    state.partial = {}
    if len(loader) == 0 and state.batch == 0:
        raise SegToolkitError(
            f"fold {fold}: the training loader gives no batch in epoch {epoch + 1}"
            + (f" on rank {d.rank} of {d.world_size}" if d.enabled else "")
            + f" ({len(getattr(loader, 'sampler', ()))} image(s) for this process, train.batch_size={cfg.train.batch_size})")
    bar = tqdm(loader, desc=f"fold {fold} epoch {epoch + 1}/{total_epochs or cfg.train.epochs}", leave=False, dynamic_ncols=True, disable=None)
    optimizer.zero_grad(set_to_none=True)
    ddp = _ddp_of(model) if accum > 1 else None
    for i, batch in enumerate(bar):
        images, target = to_device(batch, cfg, device)
        last = i + 1 == len(loader)
        boundary = (i + 1) % accum == 0 or last  # an optimiser step ends here
        # DDP: gradients of the micro-batches before an update stay on each rank; the update's last one all-reduces
        # their sum once (it all-reduced every micro-batch)
        with ddp.no_sync() if ddp is not None and not boundary else contextlib.nullcontext():
            with autocast(amp, device):
                out = model(images)
            loss, terms = model_loss(loss_fn, out, target, cfg.model.deep_supervision, cfg.model.classifier,
                                     batch_weight(batch, device))
            # the mean over the batches of this update: the epoch's last group may hold fewer than grad_accum
            group = min(accum, len(loader) - (i // accum) * accum)
            scaler.scale(loss / group).backward()
        if boundary:
            lr_sum += optimizer.param_groups[-1]["lr"]
            n_updates += 1
            optimizer_step(cfg, model, optimizer, scaler)
            state.step += 1
            schedule.step_update(state.step)
            if ema is not None:
                ema.update(model, step=state.step)
        bs = images.shape[0]
        n_images += bs
        n_here += bs
        if sums is None:
            names = ["loss", *terms]
        values = torch.stack([loss.detach(), *(terms[k] for k in names[1:])]).float() * bs
        sums = values if sums is None else sums + values
        # the stop is at an update, and not at the epoch's last one (resumed, no batch of it would be left)
        stopping = stop is not None and stop.requested and boundary and not last
        logging_now = bool(log_every) and boundary and state.step % log_every == 0
        if d.enabled:  # reads at updates, together: every rank has as many batches, so all get here at the same step
            sync = boundary and (n_updates % sync_every == 0 or last or logging_now)
        else:  # a stop reads too: the checkpoint it saves must not hold weights a NaN loss left since the last read
            sync = (i + 1) % sync_every == 0 or last or stopping or logging_now
        if sync:
            host = sums.tolist()
            bad = [] if all(math.isfinite(v) for v in host) else [d.rank]
            if d.enabled:
                bad, stopping = _flags_of_all_ranks(d, device, bool(bad), stopping)
            if bad:
                mean = ", ".join(f"{k}={v / max(n_images, 1):.4g}" for k, v in zip(names, host))
                where = f" on rank(s) {bad} (running means on rank {d.rank}: {mean})" if d.enabled else f" (running means: {mean})"
                raise NonFiniteLossError(
                    f"fold {fold}: loss is not finite at epoch {epoch + 1}, step {state.batch + i + 1} of {state.batch + len(loader)}"
                    f"{where}; the last good checkpoint is kept. Retry it at a lower lr: --resume --set "
                    "train.nan_retries=1; or train again with a lower optim.lr or a train.grad_clip (--overwrite, or a "
                    "new experiment name)"
                )
            bar.set_postfix(loss=f"{host[0] / max(n_images, 1):.4f}", img_s=f"{n_images / (time.perf_counter() - t0):.1f}")
            if logging_now:
                log.info("fold %d epoch %d update %d (step %d): loss %.4f (epoch's running mean), lr %.3g, %.1f images/s",
                         fold, epoch + 1, n_updates, state.step, host[0] / max(n_images, 1),
                         optimizer.param_groups[-1]["lr"], n_images / (time.perf_counter() - t0))
        elif d.enabled:
            stopping = False  # waits for the next read, where the ranks decide together
        if stopping:
            totals = d.all_reduce_sum(torch.cat([sums.detach(), sums.new_tensor([n_images])])).tolist()
            raise TrainingInterrupted(i + 1, {"names": names, "sums": totals[:-1], "n_images": int(totals[-1]),
                                              "lr_sum": lr_sum, "n_updates": n_updates})
    seconds = time.perf_counter() - t0
    if sums is None:  # resumed after the epoch's last batch from a checkpoint without the sums before it
        log.warning("fold %d epoch %d: resumed with no batch left and no record of those before: its row has no train loss",
                    fold, epoch + 1)
        names, sums = ["loss"], torch.full((1,), math.nan, device=device)
    totals = d.all_reduce_sum(torch.cat([sums.detach(), sums.new_tensor([n_images, n_here])]))
    n_all = max(float(totals[-2]), 1.0)
    stats = {f"train_{k}": v / n_all for k, v in zip(names, totals[:-2].tolist())}
    stats["images_per_s"] = float(totals[-1]) / seconds  # the images of this call: a resumed epoch's time is its part
    stats["lr"] = lr_sum / n_updates if n_updates else optimizer.param_groups[-1]["lr"]
    return stats


def _flags_of_all_ranks(d, device, bad: bool, stop: bool) -> tuple[list[int], bool]:
    """The ranks whose loss is not finite, and whether any rank was asked to stop (a collective: all ranks call it)."""
    flags = torch.zeros(d.world_size + 1, device=device)
    flags[d.rank], flags[-1] = float(bad), float(stop)
    values = d.all_reduce_sum(flags).tolist()
    return [r for r in range(d.world_size) if values[r] > 0], values[-1] > 0


def optimizer_step(cfg: Config, model: torch.nn.Module, optimizer, scaler) -> None:
    if cfg.train.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _eval_models(model, ema, cfg: Config) -> dict[str, torch.nn.Module]:
    """The models to validate: the one that is scored first, then the other (raw / EMA) for the log."""
    if ema is None:
        return {"": model}
    if cfg.train.use_ema:
        return {"": ema.module, "raw_": model}
    return {"": model, "ema_": ema.module}


@torch.inference_mode()
def predict_batches(cfg: Config, model: torch.nn.Module, loader: DataLoader, device: torch.device, amp=None):
    """Yield ``(logits, target, objects)`` per batch: logits (float32) at the model's input size, targets as the
    loader gives them (at their original sizes: one tensor, or a list when sizes differ), and the truth objects
    (a list of label maps) under an object-matching metric, else None."""
    model.eval()
    amp = amp or resolve_amp(cfg.train.amp, device)  # the run's choice (amp.json) when training passes it
    for batch in loader:
        images, target = to_device(batch, cfg, device)
        with autocast(amp, device):
            logits = model(images).float()
        yield logits, target, batch.get("objects")


def _pairs(logits: Tensor, target: Tensor | list[Tensor], objects: list | None, device) -> list[tuple[Tensor, Tensor, list | None]]:
    """``(logits, target, objects)`` for the whole batch, or per image when the original sizes differ."""
    if isinstance(target, list):
        return [(logits[j : j + 1], t.unsqueeze(0).to(device), None if objects is None else objects[j : j + 1])
                for j, t in enumerate(target)]
    return [(logits, target, objects)]


def validate_epoch(cfg: Config, model, ema, loss_fn, loader: DataLoader, device, amp=None) -> dict[str, float]:
    """Validation loss and metric (accumulated, never storing images) for the scored model, and the other one's score.

    The metric is computed at each image's scored size (its own, or data.score_size; probabilities resized bilinearly, as
    predictions are); the loss at the model's input size against the nearest-resized target, as the training loss is, so
    the two loss curves measure the same thing (and the loss no longer costs a full-resolution pass).
    An object-matching metric scores the truth objects the validation batches carry."""
    stats: dict[str, float] = {}
    for prefix, m in _eval_models(model, ema, cfg).items():
        evaluator = Evaluator.of(cfg)  # the submission's object floor too
        loss_sum, n = 0.0, 0
        for logits_batch, target_batch, objects_batch in predict_batches(cfg, m, loader, device, amp):
            for logits, target, objects in _pairs(logits_batch, target_batch, objects_batch, device):
                loss, _ = model_loss(loss_fn, logits, resize_target(target, logits.shape[-2:]), 0.0, cfg.model.classifier)
                loss_sum += float(loss) * logits.shape[0]
                n += logits.shape[0]
                masks, _ = split_presence(logits, cfg.data.num_classes, has_presence(cfg))
                if tuple(masks.shape[-2:]) == tuple(target.shape[-2:]) and cfg.data.task == "multiclass":
                    # the argmax of the logits is the softmax's, without the softmax (a third of the metric's time, and
                    # in bf16 its rounding made ties the logits do not have)
                    evaluator.update(masks.float(), target, objects)
                else:  # probabilities resized, as the predictor's are (resized logits argmax to other pixels)
                    evaluator.update(resize_to(activate(masks.float(), cfg.data.task), target.shape[-2:]), target, objects)
        result = evaluator.compute()
        stats[f"{prefix}val_loss"] = loss_sum / max(n, 1)
        stats[f"{prefix}val_score"] = float(result["score"])
        if not prefix:
            stats["metric"] = result["metric"]
    return stats


def _csv_header(path: Path) -> list[str] | None:
    """The column names of a CSV file's first line (None: no file, or an empty one)."""
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        first = next(csv.reader(fh), None)
    return list(first) if first else None


def log_epoch(path: Path, fold: int, epoch: int, train_stats, val_stats, improved: bool, seconds: float) -> None:
    row = {"fold": fold, "epoch": epoch + 1, "lr": train_stats["lr"], **train_stats,
           **{k: v for k, v in val_stats.items() if k != "metric"}, "best": int(improved), "seconds": round(seconds, 3)}
    header = _csv_header(path)
    if header is not None and header != list(row):
        # columns differ from the file's (a resume from an older checkpoint, another loss): the file is written again
        # under the union of both, each value under its own name, instead of a row whose values sit under others' names
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        fields = header + [k for k in row if k not in header]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows([*rows, row])
        write_text(path, buf.getvalue())
    else:
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if header is None:
                writer.writeheader()
            writer.writerow(row)
    log.info(
        "fold %d epoch %d: train loss %.4f | val loss %.4f | %s %.4f%s | %.0f img/s | %.1fs",
        fold, epoch + 1, train_stats["train_loss"], val_stats["val_loss"], val_stats.get("metric", "score"),
        val_stats["val_score"], " *" if improved else "", train_stats["images_per_s"], seconds,
    )
