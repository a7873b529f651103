"""The losses named in the config, validated and combined: :func:`build_loss` turns ``cfg.loss``
(names to weights) and ``cfg.loss_params`` into a :class:`LossCombo`; :func:`model_loss` adds the
deep-supervision and empty-mask classifier terms of a model's output."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor, nn

from seg_toolkit.config import IGNORE_INDEX, Config, ConfigError
from seg_toolkit.errors import closest

from .lovasz import LovaszLoss
from .region import RegionLoss
from .terms import _SIGMOID_TASKS, TASKS, CrossEntropyLoss, FocalLoss, MaskedBCEWithLogitsLoss

__all__ = ["LOSS_NAMES", "PIXEL_WEIGHTED", "TASKS", "LossCombo", "build_loss", "build_loss_term", "model_loss"]

logger = logging.getLogger(__name__)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v: Any, where: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 1e-5 (no dot) as a string, as every float key of the config accepts
        try:
            v = float(v)
        except ValueError:
            pass
    if not _is_number(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    v = float(v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"{where}: expected {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{where}: expected <= {hi}, got {v}")
    return v


def _number_list(v: Any, n: int, where: str, lo: float = 0.0) -> list[float]:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ConfigError(f"{where}: expected a list of {n} numbers (one per class), got {v!r}")
    return [_number(x, f"{where}[{i}]", lo=lo) for i, x in enumerate(v)]


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true/false, got {v!r}")
    return v


@dataclass(frozen=True)
class _LossSpec:
    tasks: tuple[str, ...]
    params: tuple[str, ...]  # accepted keyword arguments
    make: Callable[[str, int, dict[str, Any], str], nn.Module]  # (task, num_classes, params, path)


def _make_ce(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    weights = p.get("class_weights")
    if weights is not None:
        weights = _number_list(weights, num_classes, f"{path}.class_weights")
        if sum(weights) <= 0:
            raise ConfigError(f"{path}.class_weights: at least one weight must be > 0")
    ls = _number(p.get("label_smoothing", 0.0), f"{path}.label_smoothing", 0.0, 1.0)
    if ls == 1.0:
        raise ConfigError(f"{path}.label_smoothing: expected < 1 (1 makes every target uniform: perfect logits score "
                          "worse than a uniform guess), got 1.0")
    return CrossEntropyLoss(class_weights=weights, label_smoothing=ls)


def _make_bce(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    pw = p.get("pos_weight")
    if isinstance(pw, (list, tuple)):
        pw = _number_list(pw, num_classes, f"{path}.pos_weight")
        zero = [i for i, w in enumerate(pw) if not w > 0]
        if zero:  # as a single number: a weight of 0 drops that channel's positive pixels from the loss
            raise ConfigError(f"{path}.pos_weight[{zero[0]}]: expected > 0 (0 drops that class's positive pixels), got {pw[zero[0]]}")
    elif pw is not None:
        pw = _number(pw, f"{path}.pos_weight", 0.0, lo_open=True)
    return MaskedBCEWithLogitsLoss(pos_weight=pw)


def _region_kwargs(p: dict[str, Any], path: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"smooth": _number(p.get("smooth", 0.0), f"{path}.smooth", 0.0)}
    if "log_loss" in p:
        kw["log_loss"] = _bool(p["log_loss"], f"{path}.log_loss")
    return kw


def _make_dice(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    return RegionLoss("dice", task, **_region_kwargs(p, path))


def _make_jaccard(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    return RegionLoss("jaccard", task, **_region_kwargs(p, path))


def _make_tversky(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    alpha = _number(p.get("alpha", 0.5), f"{path}.alpha", 0.0)
    beta = _number(p.get("beta", 0.5), f"{path}.beta", 0.0)
    for key, value, why in (("alpha", alpha, "no false positive would count: a mask of every pixel scores 0"),
                            ("beta", beta, "no false negative would count: one right pixel scores 0")):
        if value == 0:
            raise ConfigError(f"{path}.{key}: expected > 0 ({why}), got 0")
    smooth = _number(p.get("smooth", 0.0), f"{path}.smooth", 0.0)
    return RegionLoss("tversky", task, smooth=smooth, alpha=alpha, beta=beta)


def _make_focal(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    gamma = _number(p.get("gamma", 2.0), f"{path}.gamma", 0.0)
    alpha = p.get("alpha")
    if alpha is not None:
        if task == "multiclass":
            if _is_number(alpha):
                raise ConfigError(
                    f"{path}.alpha: for a multiclass task alpha is a list of {num_classes} class weights "
                    f"(a single number only rescales the loss), got {alpha!r}"
                )
            alpha = _number_list(alpha, num_classes, f"{path}.alpha")
            if not sum(alpha) > 0:  # as ce's class_weights: all zero is a loss of exactly 0
                raise ConfigError(f"{path}.alpha: at least one class weight must be > 0")
        else:
            alpha = _number(alpha, f"{path}.alpha", 0.0, 1.0)
            if alpha in (0.0, 1.0):
                raise ConfigError(f"{path}.alpha: expected between 0 and 1, not either (the weight of the positive "
                                  f"pixels, 1 - alpha the negatives': {alpha:g} drops the "
                                  f"{'positives' if alpha == 0 else 'negatives'}, and predicting "
                                  f"{'nothing' if alpha == 0 else 'everything'} scores 0), got {alpha:g}")
    return FocalLoss(task, gamma=gamma, alpha=alpha)


def _make_lovasz(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    symmetric = _bool(p.get("symmetric", False), f"{path}.symmetric")
    if symmetric and task == "multiclass":
        raise ConfigError(f"{path}.symmetric: the hinge of binary / multilabel tasks (the foreground's and the "
                          "background's IoU); a multiclass task's Lovasz-softmax already scores every class, background too")
    return LovaszLoss(task, per_image=_bool(p.get("per_image", False), f"{path}.per_image"), symmetric=symmetric)


_LOSSES: dict[str, _LossSpec] = {
    "ce": _LossSpec(("multiclass",), ("class_weights", "label_smoothing"), _make_ce),
    "bce": _LossSpec(_SIGMOID_TASKS, ("pos_weight",), _make_bce),
    "dice": _LossSpec(TASKS, ("smooth", "log_loss"), _make_dice),
    "jaccard": _LossSpec(TASKS, ("smooth", "log_loss"), _make_jaccard),
    "focal": _LossSpec(TASKS, ("gamma", "alpha"), _make_focal),
    "lovasz": _LossSpec(TASKS, ("per_image", "symmetric"), _make_lovasz),
    "tversky": _LossSpec(TASKS, ("alpha", "beta", "smooth"), _make_tversky),
}

#: The terms the U-Net weight map (``data.border_weight``) weighs: the pixel cross-entropies.
PIXEL_WEIGHTED: tuple[str, ...] = ("bce", "focal")

#: Every loss name ``cfg.loss`` accepts.
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def build_loss_term(name: str, task: str, num_classes: int, params: Optional[dict[str, Any]] = None,
                    section: str = "loss") -> nn.Module:
    """One loss module by name, its parameters validated (errors name the config path: ``section``, ``loss`` or
    ``loss_aux``, for the name)."""
    params = dict(params or {})
    spec = _LOSSES.get(name)
    if spec is None:
        close = closest(name, LOSS_NAMES, cutoff=0.5)
        hint = f"; did you mean {close!r}?" if close else ""
        raise ConfigError(f"{section}.{name}: unknown loss {name!r}{hint} (valid names: {', '.join(LOSS_NAMES)})")
    if task not in spec.tasks:
        alt = {"ce": " (use bce for binary/multilabel)", "bce": " (use ce for multiclass)"}.get(name, "")
        raise ConfigError(
            f"{section}.{name}: {name!r} supports task {' / '.join(spec.tasks)} only, "
            f"but data.task is {task!r}{alt}"
        )
    for key in params:
        if key not in spec.params:
            close = closest(key, spec.params, cutoff=0.5)
            hint = f"; did you mean {close!r}?" if close else ""
            raise ConfigError(
                f"loss_params.{name}.{key}: unknown parameter{hint} "
                f"({name} accepts: {', '.join(spec.params)})"
            )
    return spec.make(task, num_classes, params, f"loss_params.{name}")


class LossCombo(nn.Module):
    """Weighted sum of named loss terms.

    ``forward(logits, target)`` returns ``(total, terms)``: ``total`` is the scalar
    ``sum(weight * term)`` with grad, ``terms`` maps each name to its *unweighted* value,
    detached (for logging). Logits are cast to float32 first so that the region losses'
    sums over all pixels cannot overflow under fp16 autocast.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float], task: str, num_classes: int) -> None:
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError("terms and weights must have the same names")
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.aux: Optional[LossCombo] = None  # the loss of deep supervision's heads (cfg.loss_aux); None: this one
        self.task = task
        self.num_classes = num_classes

    def _check(self, logits: Tensor, target: Tensor) -> None:
        if logits.dim() < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"loss: expected logits (N, {self.num_classes}, H, W) for data.num_classes={self.num_classes}, "
                f"got {tuple(logits.shape)}"
            )
        if self.task == "multiclass":
            want = (logits.shape[0], *logits.shape[2:])
            if tuple(target.shape) != want:
                raise ValueError(f"loss: multiclass target must be (N, H, W) = {want}, got {tuple(target.shape)}")
            if target.is_floating_point():
                raise ValueError(f"loss: multiclass target must be an integer label map, got {target.dtype}")
        elif target.shape != logits.shape:
            raise ValueError(
                f"loss: {self.task} target must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )

    def forward(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``weight``: the U-Net weight map ``(N, 1, H, W)`` (``data.border_weight``), passed to the pixel terms
        (:data:`PIXEL_WEIGHTED`); the region terms (dice, jaccard, tversky, lovasz) count every pixel once."""
        self._check(logits, target)
        if weight is not None and tuple(weight.shape) != (target.shape[0], 1, *target.shape[2:]):
            raise ValueError(f"loss: the weight map must be (N, 1, H, W) = {(target.shape[0], 1, *target.shape[2:])}, "
                             f"got {tuple(weight.shape)}")
        logits = logits.float()
        target = target.long() if self.task == "multiclass" else target.float()
        total: Optional[Tensor] = None
        parts: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = term(logits, target, weight) if weight is not None and name in PIXEL_WEIGHTED else term(logits, target)
            parts[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, parts

    def extra_repr(self) -> str:
        return f"task={self.task!r}, weights={self.weights}"


def model_loss(loss_fn: nn.Module, out: Tensor | tuple, target: Tensor, aux_weight: float = 0.0,
               presence_weight: float = 0.0, weight: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of a model output: plain logits, or ``(logits, [aux logits])`` from a deeply
    supervised model, whose loss is ``loss(logits) + aux_weight * mean(loss(aux))`` (term ``aux``; ``loss_fn.aux``,
    from ``cfg.loss_aux``, when set).
    With ``presence_weight`` > 0 the logits carry the empty-mask classifier's channels
    (:mod:`seg_toolkit.models.presence`): ``+ presence_weight * BCE(presence, mask non-empty)`` (term ``cls``).
    ``weight``: the batch's U-Net weight map (``data.border_weight``), for the main and the auxiliary outputs."""
    from ..models.presence import presence_loss, split_presence

    logits, aux = (out, None) if not isinstance(out, tuple) else out
    presence = None
    if presence_weight > 0:
        logits, presence = split_presence(logits, target.shape[1], True)
    extra = {} if weight is None else {"weight": weight}
    loss, terms = loss_fn(logits.float(), target, **extra)
    if aux:  # a model with no coarser stage gives an empty list (config loading refuses that; a model built by hand may not)
        aux_fn = getattr(loss_fn, "aux", None) or loss_fn
        aux_loss = sum(aux_fn(a.float(), target, **extra)[0] for a in aux) / len(aux)
        loss, terms = loss + aux_weight * aux_loss, {**terms, "aux": aux_loss.detach()}
    if presence is not None:
        cls_loss = presence_loss(presence, target)
        loss, terms = loss + presence_weight * cls_loss, {**terms, "cls": cls_loss.detach()}
    return loss, terms


def build_loss(cfg: Config) -> LossCombo:
    """The :class:`LossCombo` described by ``cfg.loss``, ``cfg.loss_params`` and ``cfg.data``; with ``cfg.loss_aux``,
    its ``aux`` is the combo of deep supervision's heads (:func:`model_loss`).

    Raises :class:`ConfigError` for an unknown loss name, a loss not valid for
    ``data.task``, an unknown or invalid parameter, or a bad weight.
    """
    task, num_classes = cfg.data.task, cfg.data.num_classes
    if task not in TASKS:
        raise ConfigError(f"data.task: {task!r} is not one of {', '.join(TASKS)}")
    if task == "multiclass" and num_classes > IGNORE_INDEX:
        raise ConfigError(
            f"data.num_classes: {num_classes} classes collide with the void label {IGNORE_INDEX} "
            f"(at most {IGNORE_INDEX} classes)"
        )
    if not cfg.loss:
        raise ConfigError("loss: name at least one loss with a weight, e.g. {bce: 0.5, dice: 0.5}")
    named = {**cfg.loss, **(cfg.loss_aux or {})}
    for name in cfg.loss_params:
        if name not in named:
            raise ConfigError(f"loss_params.{name}: there is no loss {name!r} in loss ({', '.join(cfg.loss)})"
                              + (f" or loss_aux ({', '.join(cfg.loss_aux)})" if cfg.loss_aux else ""))
    combo = _combo(cfg, cfg.loss, "loss")
    if cfg.loss_aux:
        if not cfg.model.deep_supervision:
            raise ConfigError("loss_aux: the loss of model.deep_supervision's heads, which is 0 (off); set "
                              "model.deep_supervision or remove loss_aux")
        combo.aux = _combo(cfg, cfg.loss_aux, "loss_aux")
    return combo


def _combo(cfg: Config, named: dict[str, float], key: str) -> LossCombo:
    """The :class:`LossCombo` of ``named`` (``loss`` or ``loss_aux``: names to weights), with ``cfg.loss_params``."""
    task, num_classes = cfg.data.task, cfg.data.num_classes
    terms: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for name, weight in named.items():
        if not _is_number(weight) or weight < 0:
            raise ConfigError(f"{key}.{name}: the weight must be a finite number >= 0, got {weight!r}")
        terms[name] = build_loss_term(name, task, num_classes, cfg.loss_params.get(name), key)
        weights[name] = float(weight)
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"{key}: at least one weight must be > 0, got {weights}")
    logger.debug("%s: %s", key, " + ".join(f"{w:g}*{n}" for n, w in weights.items()))
    return LossCombo(terms, weights, task, num_classes)
