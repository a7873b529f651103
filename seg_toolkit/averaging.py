"""Checkpoint averaging: the mean of a fold's k best epochs, BatchNorm statistics recomputed.

With ``train.keep_best_k: k`` (k >= 2) and ``train.average_best: true``, after the last epoch
the weights of the k best epochs (``fold_<n>/best_e<epoch>.pt``) are averaged tensor by tensor
(uniform weights, the "checkpoint averaging" / SWA-of-best-epochs of segmentation write-ups),
the BatchNorm running statistics of the average are recomputed by one pass over the training
set (averaged statistics do not belong to averaged weights; every image of the fold's training set, under DDP too,
where rank 0 makes the pass alone: :func:`seg_toolkit.train.whole_train_loader`), and the result is scored on the
fold's validation set beside the single best epoch. The average becomes the fold's
``best.pt`` (the declared choice; the single best stays as its ``best_e<epoch>.pt``), so OOF,
post-processing and predict all use it; ``done.json`` and ``cv.json`` keep both scores.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["average_state_dicts", "recompute_batchnorm", "average_checkpoints", "average_best_epochs"]


def average_state_dicts(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (computed in float64, stored in each tensor's dtype);
    integer tensors (``num_batches_tracked``) take the largest value. Keys must agree."""
    if not dicts:
        raise ValueError("average_state_dicts: no state dicts")
    keys = list(dicts[0])
    for i, d in enumerate(dicts[1:], 1):
        if list(d) != keys:
            raise ValueError(f"average_state_dicts: state dict {i} has other keys than state dict 0")
    out = {}
    for k in keys:
        values = [d[k] for d in dicts]
        if values[0].is_floating_point():
            out[k] = (sum(v.double() for v in values) / len(values)).to(values[0].dtype)
        else:
            out[k] = torch.stack(values).max(0).values
    return out


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, loader: DataLoader, device: torch.device, forward) -> int:
    """Reset the running mean/var of every BatchNorm that trains and re-estimate them over ``loader`` as a
    cumulative average (momentum None), as ``torch.optim.swa_utils.update_bn`` does; ``forward``
    runs a batch (the caller's autocast and input layout). Returns the number of BN layers re-estimated.

    A layer that ``model.train()`` leaves in eval mode (a frozen encoder's, :class:`EncoderFreezeMixin`) keeps its
    statistics: it would not see a batch in training mode, and a reset left it at mean 0 / var 1 (a fold's
    score fell from 0.30 to 0.02)."""
    was_training = model.training
    model.train()
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    if not norms:
        model.train(was_training)
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    for batch in loader:
        forward(model, batch)
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


def average_checkpoints(paths: list, use_ema: bool) -> dict[str, Any]:
    """A weights checkpoint (as ``best.pt``) whose ``model`` (and ``ema``) are the means of ``paths``'."""
    ckpts = [load_checkpoint(p) for p in paths]
    out = dict(ckpts[0])
    out["model"] = average_state_dicts([c["model"] for c in ckpts])
    if all(c.get("ema") is not None for c in ckpts):
        out["ema"] = average_state_dicts([c["ema"] for c in ckpts])
    out["averaged_from"] = [int(c["epoch"]) for c in ckpts]
    out["epoch"] = None  # of no one epoch (the first kept one's had been left: a stage 2 named it as where it started)
    return out


def average_best_epochs(cfg, run, fold: int, model: torch.nn.Module, ema, kept_epochs: list[int], single_best: tuple[int, float],
                        train_loader: DataLoader, validate, images_of, amp, device: torch.device) -> dict[str, Any]:
    """``train.average_best`` for one fold: average the kept epochs (``best_e<epoch>.pt``) into ``model``
    (and the EMA copy), recompute BatchNorm over ``train_loader`` (the whole training set, no batch dropped), score
    with ``validate()`` and write
    ``best.pt``. ``images_of(batch)`` gives a batch's input tensor on the device; ``single_best`` is
    (epoch index, score) of the single best epoch. Returns what ``done.json`` records."""
    from .checkpoint import save_checkpoint
    from .device import autocast

    epochs = sorted(kept_epochs)
    best_epoch, best_score = single_best
    if len(epochs) < 2:
        log.warning("fold %d: train.average_best needs 2 or more kept epochs, got %s; best.pt is the single best", fold, epochs)
        return {}
    ckpt = average_checkpoints([run.best_epoch_pt(fold, e) for e in epochs], cfg.train.use_ema)
    model.load_state_dict(ckpt["model"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.module.load_state_dict(ckpt["ema"])

    def forward(m, batch) -> None:
        with autocast(amp, device):
            m(images_of(batch))

    for m in [model] + ([ema.module] if ema is not None else []):
        recompute_batchnorm(m, train_loader, device, forward)
    ckpt["model"] = model.state_dict()
    if ema is not None:
        ckpt["ema"] = ema.module.state_dict()
    score = float(validate())
    ckpt["best_score"] = score
    save_checkpoint(ckpt, run.best_pt(fold))
    log.log(logging.INFO if score >= best_score else logging.WARNING,
            "fold %d: average of epochs %s scores %.4f on validation; the single best epoch %d scored %.4f; best.pt is the average",
            fold, epochs, score, best_epoch + 1, best_score)
    return {"averaged_epochs": epochs, "averaged_val_score": score, "single_best_val_score": best_score}
