"""``seg-toolkit lr-find CONFIG``: the learning-rate range test (Smith 2017; fastai's ``lr_find``).

The run's own model, loss, optimiser, precision and training batches (fold ``--fold``'s
training split with its pseudo-labelled images, augmented as in training) take optimiser steps as training's first epoch
does (:func:`~seg_toolkit.epoch.optimizer_step`: ``train.grad_clip``, fp16's GradScaler;
``train.grad_accum`` batches per step; the encoder frozen when ``model.freeze_encoder_epochs``
> 0) while the learning rate grows geometrically from ``start`` to ``end``, once per optimiser
step. The loss is smoothed (an exponential moving average, bias-corrected) and the sweep stops
once it exceeds ``diverge`` times its minimum (``stopped: diverged``), at a NaN/inf loss
(``stopped: nan``: named, with its step; early in the sweep a NaN is usually the data, not
the lr) or after its steps (``stopped: end``). Two suggestions are reported, as fastai does:

* ``steep``: where the smoothed loss falls fastest (most negative slope against log lr);
* ``valley``: a tenth of the lr at the smoothed minimum (a conservative choice).

``suggested_lr`` is the smaller of the two, the one less likely to diverge. A warning says when
the smoothed minimum is not at least ``MIN_DESCENT`` below the starting loss (``descent`` in the
file): no descent was found, and the suggestion is read off a flat curve. Writes
``lr_find.json`` (every step's lr and loss) and ``lr_find.png`` into the run folder, with the
run's ``folds.csv`` (and ``pseudo.teacher``'s labels file) if it has none yet (training then uses
the same folds and labels); nothing is trained there (the sweep's weights are thrown away).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

from .config import Config, ConfigError

log = logging.getLogger(__name__)

__all__ = ["lr_sweep", "suggest", "lr_find", "nan_message", "MIN_DESCENT"]

#: the smoothed minimum must lie this fraction below the starting loss, else "no descent found" is warned
MIN_DESCENT = 0.1


def lr_sweep(step: Callable[[float], float], start: float = 1e-7, end: float = 1.0, steps: int = 100,
             beta: float | None = None, diverge: float = 4.0) -> dict[str, Any]:
    """Call ``step(lr)`` (one update at that lr, returning its loss) for geometrically growing lrs;
    stop early when the smoothed loss passes ``diverge`` x its minimum or is not finite.

    ``beta``: the loss's exponential smoothing; default ``1 - max(0.02, 5 / steps)``, a smoothed loss lagging about a
    sixth of the sweep (6 of 40 steps, 17 of 100; fastai's fixed 0.98 lagged a 40-step sweep so far behind that its
    smoothed loss fell from 0.78 to 0.71 where the loss itself reached 0.50: "no descent", and a suggestion 10x the
    working lr).

    Returns ``lr``, ``loss``, ``smooth`` (the finite steps), ``stopped`` (``nan``: a NaN/inf loss,
    ``diverged``, or ``end``), ``stop_step`` (1-based step at which it stopped; the NaN's own step) and
    ``stop_lr`` (that step's lr) and, for ``nan``, ``nan_loss`` (``NaN``, ``inf`` or ``-inf``)."""
    if not (0 < start < end) or steps < 5:
        raise ConfigError(f"lr-find: expected 0 < start < end and steps >= 5, got start={start}, end={end}, steps={steps}")
    beta = 1 - max(0.02, 5 / steps) if beta is None else beta
    lrs, losses, smooth = [], [], []
    avg, best = 0.0, math.inf
    stopped: dict[str, Any] = {"stopped": "end", "stop_step": steps, "stop_lr": end}
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        loss = float(step(lr))
        if not math.isfinite(loss):
            stopped = {"stopped": "nan", "stop_step": i + 1, "stop_lr": lr, "nan_loss": "NaN" if math.isnan(loss) else str(loss)}
            break
        avg = beta * avg + (1 - beta) * loss
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr), losses.append(loss), smooth.append(s)
        best = min(best, s)
        if i > 4 and s > diverge * best:
            stopped = {"stopped": "diverged", "stop_step": i + 1, "stop_lr": lr}
            break
    return {"lr": lrs, "loss": losses, "smooth": smooth, **stopped}


def nan_message(sweep: dict[str, Any], diverge: float = 4.0) -> str:
    """What a sweep that ended on a NaN/inf loss says about it (empty when it did not)."""
    if sweep.get("stopped") != "nan":
        return ""
    smooth = sweep["smooth"]
    rising = bool(smooth) and smooth[-1] > 0.5 * (1 + diverge) * min(smooth)  # past half-way to the divergence stop
    where = f"a {sweep.get('nan_loss', 'NaN')} loss at step {sweep['stop_step']} (lr {sweep['stop_lr']:.3g}) ended the sweep"
    if rising:
        return (f"lr-find: {where}, after the smoothed loss had risen to {smooth[-1] / min(smooth):.2g}x its minimum: the "
                "sweep diverged there")
    return (f"lr-find: {where}, while the smoothed loss was {'not rising' if smooth else 'not yet measured'}: a NaN that "
            "is not preceded by divergence is usually the data, not the learning rate (a NaN/inf or out-of-range value in "
            "an image or mask, a class index past data.num_classes, an empty target the loss divides by); check the "
            "data (`seg-toolkit audit CONFIG`) before trusting a suggestion")


def suggest(sweep: dict[str, Any], skip_start: int = 5, skip_end: int = 3) -> dict[str, float]:
    """``steep``, ``valley`` and ``suggested_lr`` (see the module docstring) from a sweep, with ``start_loss``
    (the mean of the first ``skip_start`` losses), ``min_loss`` (the smoothed minimum read) and ``descent``
    (``1 - min_loss / start_loss``)."""
    lrs, smooth = np.asarray(sweep["lr"]), np.asarray(sweep["smooth"])
    if len(lrs) < skip_start + skip_end + 3:
        if sweep.get("stopped") == "nan":
            raise ConfigError(f"{nan_message(sweep)}; only {len(lrs)} finite steps before it, too few for a suggestion")
        raise ConfigError(f"lr-find: only {len(lrs)} steps before the loss diverged; lower the start lr or add steps")
    lo, hi = skip_start, len(lrs) - skip_end
    slopes = np.gradient(smooth[lo:hi], np.log10(lrs[lo:hi]))
    steep = float(lrs[lo + int(np.argmin(slopes))])
    valley = float(lrs[lo + int(np.argmin(smooth[lo:hi]))] / 10)
    start_loss, min_loss = float(np.mean(sweep["loss"][:skip_start])), float(np.min(smooth[lo:hi]))
    descent = 1.0 - min_loss / start_loss if start_loss > 0 else float(start_loss - min_loss > 0)
    return {"steep": steep, "valley": valley, "suggested_lr": min(steep, valley), "start_loss": start_loss,
            "min_loss": min_loss, "descent": descent}


def _y_range(sweep: dict[str, list[float]]) -> tuple[float, float]:
    """The plot's loss range: from the lowest loss, raw or smoothed (the smoothed curve lags: cut at its minimum, a
    quarter of the raw losses and the lowest of all fell below the picture), to the smoothed curve's highest in the
    sweep's first half (the divergence at the end would flatten the rest)."""
    raw = [v for v in sweep["loss"] if math.isfinite(v)]
    lo = min([*sweep["smooth"], *raw])
    hi = max(sweep["smooth"][: max(1, len(sweep["smooth"]) // 2)])
    return lo - 0.1 * (hi - lo + 1e-9), hi + 0.5 * (hi - lo + 1e-9)


def _plot(sweep: dict[str, list[float]], found: dict[str, float], path, title: str) -> None:
    from .plots import new_figure, write_figure

    fig = new_figure(7, 4.2, dpi=110)  # no pyplot: no global backend, nothing left open
    ax = fig.add_subplot()
    ax.plot(sweep["lr"], sweep["loss"], color="#c8c8c8", lw=1, label="loss per step")
    ax.plot(sweep["lr"], sweep["smooth"], color="#1f77b4", lw=2, label="smoothed")
    for name, color in (("steep", "#d62728"), ("valley", "#2ca02c")):
        ax.axvline(found[name], color=color, ls="--", lw=1.2, label=f"{name} {found[name]:.2g}")
    ax.set_xscale("log")
    ax.set_ylim(*_y_range(sweep))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    weak = " (weak: no clear descent)" if found["descent"] < MIN_DESCENT else ""
    ax.set_title(f"{title}: suggested lr {found['suggested_lr']:.2g}{weak}")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    write_figure(fig, path)  # atomically: a kill leaves the earlier plot or none


#: the fewest sweep steps :func:`suggest` can read a suggestion from (5 skipped at the start, 3 at the end, 3 to read)
MIN_STEPS = 11


def lr_find(cfg: Config, fold: int = 0, start: float = 1e-7, end: float = 1.0, steps: int = 100) -> dict[str, Any]:
    """Run the range test on fold ``fold``'s training split; write and return ``lr_find.json``."""
    if steps < MIN_STEPS:  # before any data is read or weight updated (5 passed, then 'only 5 steps before ...')
        raise ConfigError(f"lr-find --steps {steps}: expected >= {MIN_STEPS} (a suggestion reads the smoothed loss past "
                          "its first 5 and before its last 3 steps)")
    import torch

    from .amp import run_amp
    from .data import load_or_make_folds, load_train_samples
    from .device import resolve_device, seed_everything
    from .distributed import get_dist
    from .losses import build_loss
    from .optim import build_optimizer
    from .pseudo import fold_sets
    from .files import write_json
    from .run import Run
    from .run_settings import check_same_training
    from .stages import load_fold_init
    from .epoch import to_device
    from .train import build_loaders, build_model_and_ema, set_frozen_encoder

    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed + fold, cfg.train.deterministic, cfg.train.cudnn_benchmark)
    samples = load_train_samples(cfg)
    run = Run.of(cfg)
    run.check_writable(cfg)  # apart from the data; an existing folder must be a run
    check_same_training(cfg, run, also_predict=False)  # a trained run's folder: its lr_find.json describes its model
    folds = load_or_make_folds(samples, cfg, run.folds_csv)  # the folds training will use (written once)
    # training's own sets: under pseudo.teacher the pseudo-labelled images join the sweep's batches (their labels are
    # written once into the run folder, as training would write them, and training reads the same file)
    train_set, valid_set, pseudo = fold_sets(cfg, run, fold, samples, folds, get_dist())
    train_loader, _ = build_loaders(cfg, train_set, valid_set[:1], device)
    model, _ = build_model_and_ema(cfg, device)
    load_fold_init(cfg, fold, model)
    optimizer = build_optimizer(cfg, model)
    ratios = [g["lr"] / cfg.optim.lr for g in optimizer.param_groups]  # encoder_lr_mult keeps its ratio
    loss_fn = build_loss(cfg).to(device)
    # the precision training uses (its amp.json when it has one; measured here otherwise), never written back: a
    # sweep on another machine or with another --set model must not change what a trained run predicts in
    amp = run_amp(cfg, run, device, model, loss_fn, train_set, get_dist(), lambda b: to_device(b, cfg, device), record=False)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.uses_scaler)  # fp16: scaled as training scales it
    model.train()
    frozen = cfg.model.freeze_encoder_epochs > 0  # the sweep is training's first epoch: frozen there too
    if frozen:
        set_frozen_encoder(model, True)
        log.info("lr-find: encoder frozen, as in training's first %d epoch(s) (model.freeze_encoder_epochs): the "
                 "suggestion is for them; the encoder's lr after it is optim.lr x model.encoder_lr_mult", cfg.model.freeze_encoder_epochs)
    step = _training_step(cfg, model, optimizer, ratios, loss_fn, amp, scaler, train_loader, device)

    sweep = lr_sweep(step, start, end, steps)
    message = nan_message(sweep)
    found = suggest(sweep)  # too few finite steps: raises, naming a NaN
    result = {"fold": fold, "optimizer": cfg.optim.name, "configured_lr": cfg.optim.lr, "amp": amp.mode,
              "n_train": len(train_set), "n_pseudo": len(pseudo),
              "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum, "grad_clip": cfg.train.grad_clip,
              "frozen_encoder": frozen, "no_descent": found["descent"] < MIN_DESCENT, **found, **sweep}
    run.dir.mkdir(parents=True, exist_ok=True)
    write_json(run.lr_find_json, result)
    _plot(sweep, found, run.lr_find_png, f"{cfg.experiment} fold {fold}")
    if message:
        log.warning("%s", message)
    if result["no_descent"]:
        log.warning("lr-find: no descent found: the smoothed loss's minimum %.4g is not clearly below the starting loss "
                    "%.4g (%.1f%% lower; at least %.0f%% expected), so the suggestion is read off a flat curve; widen the "
                    "range (--start lower, --end higher) or add --steps%s", found["min_loss"], found["start_loss"],
                    100 * found["descent"], 100 * MIN_DESCENT,
                    ", and see the NaN above" if message else "; if it stays flat, check the data and the loss")
    log.info("lr-find: steep %.3g, valley %.3g -> suggested optim.lr %.3g (configured %.3g); stopped: %s at step %d; plot %s",
             found["steep"], found["valley"], found["suggested_lr"], cfg.optim.lr, sweep["stopped"], sweep["stop_step"],
             run.lr_find_png)
    return result


def _training_step(cfg: Config, model, optimizer, ratios: list[float], loss_fn, amp, scaler, loader, device
                   ) -> Callable[[float], float]:
    """``step(lr)``: one optimiser update at ``lr`` as :func:`~seg_toolkit.epoch.train_one_epoch` makes it:
    ``train.grad_accum`` batches (each loss / grad_accum, scaled by ``scaler``), then
    :func:`~seg_toolkit.epoch.optimizer_step` (``train.grad_clip``, the scaler's step); returns the batches' mean loss."""
    from . import losses
    from .device import autocast
    from .epoch import batch_weight, optimizer_step, to_device

    batches = iter(())
    accum = cfg.train.grad_accum

    def step(lr: float) -> float:
        nonlocal batches
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accum):
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            images, target = to_device(batch, cfg, device)
            with autocast(amp, device):
                out = model(images)
            loss, _ = losses.model_loss(loss_fn, out, target, cfg.model.deep_supervision, cfg.model.classifier,
                                        batch_weight(batch, device))
            scaler.scale(loss / accum).backward()
            total += float(loss.detach())
        optimizer_step(cfg, model, optimizer, scaler)
        return total / accum

    return step
