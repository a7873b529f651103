"""``seg-toolkit lr-find CONFIG``: the learning-rate range test (Smith 2017; fastai's ``lr_find``).

The run's own model, loss, optimiser, precision and training batches (fold ``--fold``'s
training split, augmented as in training) take one optimiser step per batch while the
learning rate grows geometrically from ``start`` to ``end``. The loss is smoothed (an
exponential moving average, bias-corrected) and the sweep stops once it exceeds
``diverge`` times its minimum. Two suggestions are reported, as fastai does:

* ``steep``: where the smoothed loss falls fastest (most negative slope against log lr);
* ``valley``: a tenth of the lr at the smoothed minimum (a conservative choice).

``suggested_lr`` is the smaller of the two, the one less likely to diverge. Writes
``lr_find.json`` (every step's lr and loss) and ``lr_find.png`` into the run folder, with the
run's ``folds.csv`` if it has none yet (training then uses the same folds); nothing is trained
there (the sweep's weights are thrown away).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

from .config import Config, ConfigError

log = logging.getLogger(__name__)

__all__ = ["lr_sweep", "suggest", "lr_find"]


def lr_sweep(step: Callable[[float], float], start: float = 1e-7, end: float = 1.0, steps: int = 100,
             beta: float = 0.98, diverge: float = 4.0) -> dict[str, list[float]]:
    """Call ``step(lr)`` (one update at that lr, returning its loss) for geometrically growing lrs;
    stop early when the smoothed loss passes ``diverge`` x its minimum or is not finite."""
    if not (0 < start < end) or steps < 5:
        raise ConfigError(f"lr-find: expected 0 < start < end and steps >= 5, got start={start}, end={end}, steps={steps}")
    lrs, losses, smooth = [], [], []
    avg, best = 0.0, math.inf
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        loss = float(step(lr))
        if not math.isfinite(loss):
            break
        avg = beta * avg + (1 - beta) * loss
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr), losses.append(loss), smooth.append(s)
        best = min(best, s)
        if i > 4 and s > diverge * best:
            break
    return {"lr": lrs, "loss": losses, "smooth": smooth}


def suggest(sweep: dict[str, list[float]], skip_start: int = 5, skip_end: int = 3) -> dict[str, float]:
    """``steep``, ``valley`` and ``suggested_lr`` (see the module docstring) from a sweep."""
    lrs, smooth = np.asarray(sweep["lr"]), np.asarray(sweep["smooth"])
    if len(lrs) < skip_start + skip_end + 3:
        raise ConfigError(f"lr-find: only {len(lrs)} steps before the loss diverged; lower the start lr or add steps")
    lo, hi = skip_start, len(lrs) - skip_end
    slopes = np.gradient(smooth[lo:hi], np.log10(lrs[lo:hi]))
    steep = float(lrs[lo + int(np.argmin(slopes))])
    valley = float(lrs[lo + int(np.argmin(smooth[lo:hi]))] / 10)
    return {"steep": steep, "valley": valley, "suggested_lr": min(steep, valley)}


def _plot(sweep: dict[str, list[float]], found: dict[str, float], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(sweep["lr"], sweep["loss"], color="#c8c8c8", lw=1, label="loss per step")
    ax.plot(sweep["lr"], sweep["smooth"], color="#1f77b4", lw=2, label="smoothed")
    for name, color in (("steep", "#d62728"), ("valley", "#2ca02c")):
        ax.axvline(found[name], color=color, ls="--", lw=1.2, label=f"{name} {found[name]:.2g}")
    ax.set_xscale("log")
    lo, hi = min(sweep["smooth"]), max(sweep["smooth"][: max(1, len(sweep["smooth"]) // 2)])
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.5 * (hi - lo + 1e-9))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"{title}: suggested lr {found['suggested_lr']:.2g}")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: the fewest sweep steps :func:`suggest` can read a suggestion from (5 skipped at the start, 3 at the end, 3 to read)
MIN_STEPS = 11


def lr_find(cfg: Config, fold: int = 0, start: float = 1e-7, end: float = 1.0, steps: int = 100) -> dict[str, Any]:
    """Run the range test on fold ``fold``'s training split; write and return ``lr_find.json``."""
    if steps < MIN_STEPS:  # before any data is read or weight updated (5 passed, then 'only 5 steps before ...')
        raise ConfigError(f"lr-find --steps {steps}: expected >= {MIN_STEPS} (a suggestion reads the smoothed loss past "
                          "its first 5 and before its last 3 steps)")
    from .amp import run_amp
    from .data import load_or_make_folds, load_train_samples
    from .data.folds import split_fold
    from .device import autocast, resolve_device, seed_everything
    from .distributed import get_dist
    from .losses import build_loss, model_loss
    from .optim import build_optimizer
    from .files import write_json
    from .run import Run
    from .stages import load_fold_init
    from .epoch import to_device
    from .train import build_loaders, build_model_and_ema

    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed + fold, cfg.train.deterministic)
    samples = load_train_samples(cfg)
    run = Run.of(cfg)
    run.check_writable(cfg)  # apart from the data; an existing folder must be a run
    folds = load_or_make_folds(samples, cfg, run.folds_csv)  # the folds training will use (written once)
    train_set, valid_set = split_fold(samples, folds, fold)
    train_loader, _ = build_loaders(cfg, train_set, valid_set[:1], device)
    model, _ = build_model_and_ema(cfg, device)
    load_fold_init(cfg, fold, model)
    optimizer = build_optimizer(cfg, model)
    ratios = [g["lr"] / cfg.optim.lr for g in optimizer.param_groups]  # encoder_lr_mult keeps its ratio
    loss_fn = build_loss(cfg).to(device)
    # the precision training will use: measured once per run (amp.json), so training reuses this choice
    amp = run_amp(cfg, run, device, model, loss_fn, train_set, get_dist(), lambda b: to_device(b, cfg, device))
    model.train()
    batches = iter(())

    def step(lr: float) -> float:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(train_loader)
            batch = next(batches)
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        images, target = to_device(batch, cfg, device)
        with autocast(amp, device):
            out = model(images)
        loss, _ = model_loss(loss_fn, out, target, cfg.model.deep_supervision, cfg.model.classifier)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    sweep = lr_sweep(step, start, end, steps)
    found = suggest(sweep)
    result = {"fold": fold, "optimizer": cfg.optim.name, "configured_lr": cfg.optim.lr, "amp": amp.mode,
              "batch_size": cfg.train.batch_size, **found, **sweep}
    run.dir.mkdir(parents=True, exist_ok=True)
    write_json(run.lr_find_json, result)
    _plot(sweep, found, run.lr_find_png, f"{cfg.experiment} fold {fold}")
    log.info("lr-find: steep %.3g, valley %.3g -> suggested optim.lr %.3g (configured %.3g); plot %s",
             found["steep"], found["valley"], found["suggested_lr"], cfg.optim.lr, run.lr_find_png)
    return result
