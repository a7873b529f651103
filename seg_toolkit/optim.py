"""Optimisers and learning-rate schedules from the config (torch's and timm's implementations).

Schedules are stepped per optimiser update (``step_update``) with warmup, except
reduce-on-plateau (torch's), which is stepped per epoch with the validation score after a linear warmup. Parameter groups
(encoder learning-rate multiplier, no weight decay on norms and biases) come from
:func:`seg_toolkit.models.param_groups`; the schedules scale every group's own base lr.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler

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
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)  # Nesterov needs momentum


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
        # warmup is a prefix: the lr reaches its configured value when warmup ends, then decays
        # over the remaining updates to min_lr at the last one
        decay = max(1, total - warmup)
        if s.name == "cosine":
            self.impl = CosineLRScheduler(optimizer, t_initial=decay, lr_min=s.min_lr, t_in_epochs=False, warmup_prefix=True, **common)
        elif s.name == "poly":
            self.impl = PolyLRScheduler(optimizer, t_initial=decay, power=s.power, lr_min=s.min_lr, t_in_epochs=False,
                                        warmup_prefix=True, **common)
        elif s.name == "step":
            self.impl = StepLRScheduler(
                optimizer, decay_t=s.step_size * updates_per_epoch, decay_rate=s.gamma, t_in_epochs=False, **common
            )
        elif s.name == "plateau":
            # torch's, not timm's: timm's plateau state is not checkpointed, which would break exact resume
            self.impl = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=s.gamma, patience=s.patience, min_lr=s.min_lr
            )
            self.base_lrs = [g["lr"] for g in optimizer.param_groups]
            self.optimizer, self.warmup, self.warmup_from = optimizer, warmup, s.min_lr
            if warmup:
                self._set_warmup(0)
        elif s.name == "onecycle":
            self.impl = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g.get("max_lr", g["lr"]) for g in optimizer.param_groups],  # a rebuilt schedule keeps the first's
                total_steps=total,
                pct_start=max(s.warmup_epochs / cfg.train.epochs, 0.05) if s.warmup_epochs else 0.3,
            )

    #: the schedules whose course depends on the number of epochs (rebuilt when train.time_budget cuts a fold)
    SHAPED_BY_TOTAL = ("cosine", "poly", "onecycle")

    def for_epochs(self, cfg: Config, optimizer: torch.optim.Optimizer, updates_per_epoch: int, epochs: int,
                   n_updates: int) -> "LRSchedule":
        """This schedule laid out again for ``epochs`` epochs in all and moved to update ``n_updates``
        (a fold cut short by ``train.time_budget``); itself when its course does not depend on the total."""
        if self.name not in self.SHAPED_BY_TOTAL:
            return self
        new = LRSchedule(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs)), optimizer, updates_per_epoch)
        if new.name == "onecycle":
            with warnings.catch_warnings():  # torch warns of a step before optimizer.step(): it came before
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(n_updates):
                    new.impl.step()
        else:
            new.step_update(n_updates)
        return new

    def _set_warmup(self, n_updates: int) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.warmup_from + (base - self.warmup_from) * n_updates / self.warmup

    def step_update(self, n_updates: int) -> None:
        if self.name in ("cosine", "poly", "step"):
            self.impl.step_update(n_updates)
        elif self.name == "onecycle":
            self.impl.step()
        elif self.name == "plateau" and n_updates <= self.warmup:
            self._set_warmup(n_updates)

    def step_epoch(self, epoch: int, score: float | None) -> None:
        if self.name == "plateau" and score is not None and not math.isnan(score):
            self.impl.step(score)

    def state_dict(self) -> dict[str, Any]:
        return self.impl.state_dict() if self.impl is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.impl is not None and state:
            self.impl.load_state_dict(state)
