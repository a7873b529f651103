"""Optimisers and learning-rate schedules from the config (torch's and timm's implementations).

Schedules are stepped per optimiser update (``step_update``) with warmup, except
reduce-on-plateau (torch's), which is stepped per epoch with the validation score after a linear warmup. Parameter groups
(encoder learning-rate multiplier, no weight decay on norms and biases) come from
:func:`seg_toolkit.models.param_groups`; every schedule keeps each group at its ``lr_mult`` times the
schedule's lr, the warmup's start and the ``min_lr`` floor included.
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
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)  # Nesterov needs momentum


class LRSchedule:
    """One interface over the schedules: ``step_update(n_updates)`` after each update,
    ``step_epoch(epoch, score)`` after each validation."""

    def __init__(self, cfg: Config, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> None:
        s = cfg.scheduler
        total = max(1, cfg.train.epochs * updates_per_epoch)
        warmup = int(round(s.warmup_epochs * updates_per_epoch))
        if s.name in ("cosine", "poly") and warmup > 0.9 * total:
            # a fold train.time_budget cut to no more epochs than warmup_epochs was all warmup and ended at the peak lr;
            # at most 90% of it warms up (as onecycle's pct_start), so the decay still ends at min_lr
            log.warning("scheduler.warmup_epochs %g of a %d-epoch fold: the warmup is cut to %d of its %d updates, so the "
                        "%s decay still ends at min_lr", s.warmup_epochs, cfg.train.epochs, int(0.9 * total), total, s.name)
            warmup = int(0.9 * total)
        elif s.name in ("step", "plateau") and warmup >= total:
            log.warning("scheduler.warmup_epochs %g of a %d-epoch fold: the learning rate rises from min_lr all the fold "
                        "and never reaches optim.lr", s.warmup_epochs, cfg.train.epochs)
        self.name = s.name
        self.optimizer = optimizer
        self._ref: torch.optim.Optimizer | None = None
        common = dict(warmup_t=warmup, warmup_lr_init=s.min_lr if warmup else 0.0)
        self.impl: Any = None
        # warmup is a prefix: the lr reaches its configured value when warmup ends, then decays
        # over the remaining updates to min_lr at the last one
        decay = max(1, total - warmup)
        if s.name in ("cosine", "poly", "step"):
            # timm's schedules run on one reference group at the lr of a group with lr_mult 1 (optim.lr); each real
            # group takes its own base lr times the reference's fraction of its base, so the encoder's multiplier holds
            # from the warmup's start to the floor (min_lr x lr_mult): with one absolute min_lr for all groups, an
            # encoder at lr x mult below it rose towards it
            for g in optimizer.param_groups:
                g.setdefault("scheduled_lr", g["lr"])  # the base, kept in the optimizer's state (a rebuilt schedule, a resume)
            self._base = next((g["scheduled_lr"] / _mult(g) for g in optimizer.param_groups if _mult(g) > 0), cfg.optim.lr)
            self._ref = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self._base)
            if s.name == "cosine":
                self.impl = CosineLRScheduler(self._ref, t_initial=decay, lr_min=s.min_lr, t_in_epochs=False, warmup_prefix=True, **common)
            elif s.name == "poly":
                self.impl = PolyLRScheduler(self._ref, t_initial=decay, power=s.power, lr_min=s.min_lr, t_in_epochs=False,
                                            warmup_prefix=True, **common)
            else:
                self.impl = StepLRScheduler(self._ref, decay_t=s.step_size * updates_per_epoch, decay_rate=s.gamma,
                                            t_in_epochs=False, **common)
            self._follow_ref()
        elif s.name == "plateau":
            # torch's, not timm's: timm's plateau state is not checkpointed, which would break exact resume
            self.impl = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=s.gamma, patience=s.patience,
                min_lr=[s.min_lr * _mult(g) for g in optimizer.param_groups],
            )
            self.base_lrs = [g["lr"] for g in optimizer.param_groups]
            self.warmup, self.warmup_from = warmup, s.min_lr
            if warmup:
                self._set_warmup(0)
        elif s.name == "onecycle":
            # momentum (SGD) and beta1 (Adam) stay as optim.* sets them: torch cycles them by default, which replaced
            # a configured momentum of 0.5 by 0.85-0.95. The warmup share stays below 1 when train.time_budget cuts
            # the run to no more epochs than warmup_epochs (pct_start 1 divided by zero), and its updates above 1
            # (torch divides by pct_start x total_steps - 1: a 4-epoch run of one update per epoch warming up for 1)
            steps = max(total, 3)  # steps beyond the run's last are allowed (never taken)
            pct = min(s.warmup_epochs / cfg.train.epochs, 0.9) if s.warmup_epochs else 0.3  # 0: torch's default share
            self.impl = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g.get("max_lr", g["lr"]) for g in optimizer.param_groups],  # a rebuilt schedule keeps the first's
                total_steps=steps,
                pct_start=min(max(pct, 1.5 / steps), 0.9),
                cycle_momentum=False,
            )

    #: the schedules whose course depends on the number of epochs (rebuilt when train.time_budget cuts a fold)
    SHAPED_BY_TOTAL = ("cosine", "poly", "onecycle")

    def for_epochs(self, cfg: Config, optimizer: torch.optim.Optimizer, updates_per_epoch: int, epochs: int,
                   n_updates: int, per_epoch_changed: bool = False) -> "LRSchedule":
        """This schedule laid out again for ``epochs`` epochs in all and moved to update ``n_updates``
        (a fold cut short by ``train.time_budget``); itself when its course does not depend on the total.
        ``per_epoch_changed``: ``updates_per_epoch`` is not the one it was laid out for (a fold resumed with another
        number of processes), which the step schedule's course depends on too; plateau's does on neither."""
        if self.name not in self.SHAPED_BY_TOTAL and not (per_epoch_changed and self.name == "step"):
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

    def _follow_ref(self) -> None:
        fraction = self._ref.param_groups[0]["lr"] / self._base if self._base else 0.0
        for g in self.optimizer.param_groups:
            g["lr"] = g["scheduled_lr"] * fraction

    def _set_warmup(self, n_updates: int) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            start = self.warmup_from * _mult(g)
            g["lr"] = start + (base - start) * n_updates / self.warmup

    def step_update(self, n_updates: int) -> None:
        if self.name in ("cosine", "poly", "step"):
            self.impl.step_update(n_updates)
            self._follow_ref()
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


def _mult(group: dict[str, Any]) -> float:
    """A parameter group's learning-rate multiplier (:func:`seg_toolkit.models.param_groups`; 1 for other groups)."""
    return float(group.get("lr_mult", 1.0))
