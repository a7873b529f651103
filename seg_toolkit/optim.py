"""Optimisers and learning-rate schedules from the config (torch's and timm's implementations).

Schedules are stepped per optimiser update (``step_update``) with warmup, except
reduce-on-plateau, which is stepped per epoch with the validation score. Parameter groups
(encoder learning-rate multiplier, no weight decay on norms and biases) come from
:func:`seg_toolkit.models.param_groups`; the schedules scale every group's own base lr.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler, PlateauLRScheduler, PolyLRScheduler, StepLRScheduler

from .config import Config

log = logging.getLogger(__name__)

__all__ = ["build_optimizer", "LRSchedule"]


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    from .models import param_groups

    o = cfg.optim
    groups = param_groups(model, lr=o.lr, weight_decay=o.weight_decay, encoder_lr_mult=cfg.model.encoder_lr_mult)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)


class LRSchedule:
    """One interface over the schedules: ``step_update(n_updates)`` after each update,
    ``step_epoch(epoch, score)`` after each validation."""

    def __init__(self, cfg: Config, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> None:
        s = cfg.scheduler
        total = max(1, cfg.train.epochs * updates_per_epoch)
        warmup = int(round(s.warmup_epochs * updates_per_epoch))
        self.name = s.name
        common = dict(warmup_t=warmup, warmup_lr_init=s.min_lr if warmup else 0.0)
        self.impl: Any = None
        if s.name == "cosine":
            self.impl = CosineLRScheduler(optimizer, t_initial=total, lr_min=s.min_lr, t_in_epochs=False, warmup_prefix=False, **common)
        elif s.name == "poly":
            self.impl = PolyLRScheduler(optimizer, t_initial=total, power=s.power, lr_min=s.min_lr, t_in_epochs=False, **common)
        elif s.name == "step":
            self.impl = StepLRScheduler(
                optimizer, decay_t=s.step_size * updates_per_epoch, decay_rate=s.gamma, t_in_epochs=False, **common
            )
        elif s.name == "plateau":
            self.impl = PlateauLRScheduler(
                optimizer, decay_rate=s.gamma, patience_t=s.patience, lr_min=s.min_lr, mode="max", **common
            )
        elif s.name == "onecycle":
            self.impl = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in optimizer.param_groups],
                total_steps=total,
                pct_start=max(s.warmup_epochs / cfg.train.epochs, 0.05) if s.warmup_epochs else 0.3,
            )

    def step_update(self, n_updates: int) -> None:
        if self.name in ("cosine", "poly", "step"):
            self.impl.step_update(n_updates)
        elif self.name == "onecycle":
            self.impl.step()

    def step_epoch(self, epoch: int, score: float | None) -> None:
        if self.name == "plateau":
            self.impl.step(epoch + 1, score)

    def state_dict(self) -> dict[str, Any]:
        return self.impl.state_dict() if self.impl is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.impl is not None and state:
            self.impl.load_state_dict(state)
