"""Segmentation losses and their weighted combination, built from the config.

Conventions (the same for every loss here):

* ``logits``: float ``(N, C, H, W)``. Binary: ``C == 1``; multilabel: one sigmoid per
  channel; multiclass: softmax over dim 1.
* ``target``: multiclass -> int64 ``(N, H, W)`` with classes ``0..C-1``; binary /
  multilabel -> float ``(N, C, H, W)`` with 0.0 / 1.0. Void pixels carry
  :data:`seg_toolkit.config.IGNORE_INDEX` (255) in both and never contribute to a loss
  value or a gradient.
* A batch whose pixels are all void gives a loss of exactly 0 with finite (zero)
  gradients, never NaN.

``cfg.loss`` maps loss names to weights (``{bce: 0.5, dice: 0.5}``) and
``cfg.loss_params`` maps names to keyword arguments (``{focal: {gamma: 2.0}}``).
:func:`build_loss` validates both and returns a :class:`LossCombo`, whose ``forward``
returns the weighted total and each term's unweighted value (detached, for logging).

Which implementation each name uses, and why:

* ``dice``, ``jaccard``, ``tversky``: ``segmentation_models_pytorch.losses`` as-is. Their
  ignore handling is right for all three tasks (void pixels are zeroed in both prediction
  and truth before the sums), an all-void or empty batch gives 0 with finite gradients,
  and the scores are computed over the whole batch per channel (``dims=(0, 2)``).
  smp's convention, kept: a channel with no true pixel in the batch contributes 0 (but
  still counts in the mean over channels), so these losses do not penalise false
  positives on an all-empty batch; pair them with ``bce`` / ``ce`` / ``focal``.
* ``ce``: our own on top of ``F.cross_entropy``, because its ``mean`` reduction is 0/0 =
  NaN for an all-void batch. Same value as torch's ``mean`` otherwise (class weights and
  label smoothing included).
* ``bce``: our own. smp's ``SoftBCEWithLogitsLoss`` zeroes void pixels but still divides
  by *all* pixels (void pixels dilute the mean), and a per-channel ``pos_weight`` must be
  shaped ``(C, 1, 1)`` to broadcast over ``(N, C, H, W)``.
* ``focal``: our own. smp's ``FocalLoss`` is NaN on an all-void binary batch (mean of an
  empty tensor), raises IndexError for multilabel targets with void pixels (a 4-D mask
  indexing a 3-D channel slice), and in multiclass mode it applies a *sigmoid* focal loss
  to each channel of softmax logits; ours is the softmax focal loss for multiclass.
* ``lovasz``: our own (after Berman et al., 2018). smp's multiclass ``LovaszLoss`` returns
  an empty ``(0, C)`` tensor instead of a scalar on an all-void batch, and its
  binary/multilabel hinge flattens all channels into one ranking (the IoU of the
  concatenated channels, not the mean of the per-channel IoUs).
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_toolkit.config import IGNORE_INDEX, Config, ConfigError

__all__ = [
    "LOSS_NAMES",
    "LossCombo",
    "build_loss",
    "build_loss_term",
    "CrossEntropyLoss",
    "MaskedBCEWithLogitsLoss",
    "FocalLoss",
    "LovaszLoss",
    "lovasz_grad",
    "lovasz_hinge_flat",
    "lovasz_softmax_flat",
]

logger = logging.getLogger(__name__)

TASKS = ("binary", "multilabel", "multiclass")
_SIGMOID_TASKS = ("binary", "multilabel")


# ----------------------------------------------------------------------------- helpers


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over the ``valid`` positions; exactly 0 when none is valid.

    ``values`` must already be finite at the void positions (the callers replace void
    targets by 0 before computing), so that their gradient there is an exact 0.
    """
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1).to(values.dtype)


def _sigmoid_valid(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(valid mask, float target with void replaced by 0) for binary/multilabel targets."""
    valid = target != ignore_index
    clean = torch.where(valid, target, torch.zeros_like(target)).to(torch.float32)
    return valid, clean


# ----------------------------------------------------------------------------- ce / bce


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy for multiclass targets, mean over non-void pixels.

    Equal to ``F.cross_entropy(..., reduction="mean")`` (which divides by the summed class
    weights of the non-void targets) whenever one pixel is non-void; exactly 0 for an
    all-void batch, where torch's mean is 0/0 = NaN.

    Shapes: logits ``(N, C, H, W)``, target int64 ``(N, H, W)``.
    """

    def __init__(
        self,
        class_weights: Optional[list[float]] = None,
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        per_pixel = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )  # (N, H, W), 0 at void pixels
        valid = target != self.ignore_index
        if self.weight is None:
            denom = valid.sum().to(per_pixel.dtype)
        else:
            safe = torch.where(valid, target, torch.zeros_like(target))
            denom = (self.weight.to(per_pixel.dtype)[safe] * valid).sum()
        total = per_pixel.sum()
        return torch.where(denom > 0, total / denom.clamp_min(1e-12), total * 0.0)


class MaskedBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy with logits, mean over non-void elements (pixels x channels).

    ``pos_weight``: one float for every channel or one per channel (shaped ``(C, 1, 1)``
    so that it broadcasts over ``(N, C, H, W)``); it multiplies the positive term.

    Shapes: logits and target ``(N, C, H, W)``; target 0.0 / 1.0, void = ``ignore_index``.
    """

    def __init__(
        self,
        pos_weight: Optional[float | list[float]] = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        pw = None
        if pos_weight is not None:
            pw = torch.tensor(pos_weight if isinstance(pos_weight, list) else [pos_weight], dtype=torch.float32)
            pw = pw.view(-1, 1, 1)
        self.register_buffer("pos_weight", pw, persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, clean = _sigmoid_valid(target, self.ignore_index)
        pw = self.pos_weight
        if pw is not None and logits.dim() != 4:
            pw = pw.view(-1)  # (C,) broadcasts along the last dim only for (N, C)
        per_elem = F.binary_cross_entropy_with_logits(logits, clean, pos_weight=pw, reduction="none")
        return _masked_mean(per_elem, valid)


# ----------------------------------------------------------------------------- focal

_FOCAL_EPS = 1e-12  # keeps (1 - p_t) ** gamma differentiable for gamma < 1 when p_t rounds to 1


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t * (1 - p_t) ** gamma * log(p_t)``, mean over non-void pixels.

    * binary / multilabel: sigmoid per channel, ``alpha`` a float in [0, 1] weighting
      the positives (``alpha`` for 1, ``1 - alpha`` for 0) or None (no weighting); the mean
      is over non-void elements (pixels x channels).
    * multiclass: softmax over channels, ``alpha`` None or a list of one weight per class
      (``alpha_t`` = the weight of the pixel's true class); the mean is over non-void
      pixels.

    ``gamma = 0`` and ``alpha = None`` give (b)ce.
    """

    def __init__(
        self,
        mode: str,
        gamma: float = 2.0,
        alpha: Optional[float | list[float]] = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if mode not in TASKS:
            raise ValueError(f"mode must be one of {TASKS}, got {mode!r}")
        self.mode = mode
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.alpha_scalar: Optional[float] = None
        class_alpha = None
        if alpha is not None:
            if mode == "multiclass":
                class_alpha = torch.tensor(alpha, dtype=torch.float32)
            else:
                self.alpha_scalar = float(alpha)
        self.register_buffer("class_alpha", class_alpha, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.mode == "multiclass":
            return self._softmax_focal(logits, target)
        return self._sigmoid_focal(logits, target)

    def _modulator(self, one_minus_pt: Tensor) -> Tensor:
        if self.gamma == 0.0:
            return torch.ones_like(one_minus_pt)
        return one_minus_pt.clamp_min(_FOCAL_EPS).pow(self.gamma)

    def _sigmoid_focal(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, t = _sigmoid_valid(target, self.ignore_index)
        nll = F.binary_cross_entropy_with_logits(logits, t, reduction="none")  # -log p_t
        # 1 - p_t = sigmoid(x) for a negative, sigmoid(-x) for a positive (no cancellation)
        one_minus_pt = torch.sigmoid(torch.where(t > 0.5, -logits, logits))
        loss = self._modulator(one_minus_pt) * nll
        if self.alpha_scalar is not None:
            loss = loss * (self.alpha_scalar * t + (1.0 - self.alpha_scalar) * (1.0 - t))
        return _masked_mean(loss, valid)

    def _softmax_focal(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        log_pt = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (N, H, W)
        one_minus_pt = -torch.expm1(log_pt)
        loss = self._modulator(one_minus_pt) * (-log_pt)
        if self.class_alpha is not None:
            loss = loss * self.class_alpha.to(loss.dtype)[safe]
        return _masked_mean(loss, valid)


# ----------------------------------------------------------------------------- lovasz


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted descending.

    ``gt_sorted``: float ``(P,)`` of 0/1 labels in the order of the sorted errors, P >= 1.
    Algorithm 1 of Berman et al. (2018): ``J_i = 1 - |gt \\ first i| / |gt u first i|``,
    the result is ``J_1, J_2 - J_1, ..., J_P - J_{P-1}``.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_hinge_flat(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary Lovasz hinge of flat ``(P,)`` logits vs 0/1 labels (no void); 0 when P = 0."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    # a product-sum rather than torch.dot: stays float32 under autocast
    return (F.relu(errors_sorted) * lovasz_grad(labels[perm])).sum()


def lovasz_softmax_flat(probs: Tensor, labels: Tensor) -> Tensor:
    """Lovasz-softmax of flat ``(P, C)`` probabilities vs ``(P,)`` labels (no void).

    Averages over the classes present in ``labels``; 0 when P = 0.
    """
    if labels.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append((errors_sorted * lovasz_grad(fg[perm])).sum())
    return torch.stack(losses).mean()


class LovaszLoss(nn.Module):
    """Lovasz loss: hinge per channel (binary / multilabel) or softmax (multiclass).

    Units: binary / multilabel -> one ranking per channel (over the whole batch, or per
    image and channel when ``per_image``), multiclass -> one ranking over the batch (or per
    image). The loss is the mean over the units that have at least one non-void pixel;
    0 (with zero gradients) when none has.
    """

    def __init__(self, mode: str, per_image: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if mode not in TASKS:
            raise ValueError(f"mode must be one of {TASKS}, got {mode!r}")
        self.mode = mode
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        losses = []
        if self.mode == "multiclass":
            probs = logits.softmax(dim=1)
            groups = [(probs[i : i + 1], target[i : i + 1]) for i in range(len(probs))] if self.per_image else [(probs, target)]
            for p, t in groups:
                flat_p = p.movedim(1, -1).reshape(-1, p.shape[1])
                flat_t = t.reshape(-1)
                valid = flat_t != self.ignore_index
                if valid.any():
                    losses.append(lovasz_softmax_flat(flat_p[valid], flat_t[valid]))
        else:
            for c in range(logits.shape[1]):
                x, t = logits[:, c], target[:, c]
                groups = [(x[i], t[i]) for i in range(len(x))] if self.per_image else [(x, t)]
                for xi, ti in groups:
                    flat_x, flat_t = xi.reshape(-1), ti.reshape(-1)
                    valid = flat_t != self.ignore_index
                    if valid.any():
                        # soft targets (pseudo.soft) are cut at 0.5: the Lovasz extension needs 0/1 labels
                        losses.append(lovasz_hinge_flat(flat_x[valid], (flat_t[valid] >= 0.5).to(flat_x.dtype)))
        if not losses:
            return logits.sum() * 0.0
        return torch.stack(losses).mean()


# ----------------------------------------------------------------------------- registry


def _smp_losses() -> Any:
    import segmentation_models_pytorch.losses as smp_losses

    return smp_losses


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v: Any, where: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
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
    return CrossEntropyLoss(class_weights=weights, label_smoothing=ls)


def _make_bce(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    pw = p.get("pos_weight")
    if isinstance(pw, (list, tuple)):
        pw = _number_list(pw, num_classes, f"{path}.pos_weight")
    elif pw is not None:
        pw = _number(pw, f"{path}.pos_weight", 0.0, lo_open=True)
    return MaskedBCEWithLogitsLoss(pos_weight=pw)


def _region_kwargs(p: dict[str, Any], path: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"smooth": _number(p.get("smooth", 0.0), f"{path}.smooth", 0.0)}
    if "log_loss" in p:
        kw["log_loss"] = _bool(p["log_loss"], f"{path}.log_loss")
    return kw


def _make_dice(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    return _smp_losses().DiceLoss(task, from_logits=True, ignore_index=IGNORE_INDEX, **_region_kwargs(p, path))


def _make_jaccard(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    return _smp_losses().JaccardLoss(task, from_logits=True, ignore_index=IGNORE_INDEX, **_region_kwargs(p, path))


def _make_tversky(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    alpha = _number(p.get("alpha", 0.5), f"{path}.alpha", 0.0)
    beta = _number(p.get("beta", 0.5), f"{path}.beta", 0.0)
    if alpha + beta <= 0:
        raise ConfigError(f"{path}: alpha + beta must be > 0, got alpha={alpha}, beta={beta}")
    smooth = _number(p.get("smooth", 0.0), f"{path}.smooth", 0.0)
    return _smp_losses().TverskyLoss(
        task, from_logits=True, ignore_index=IGNORE_INDEX, alpha=alpha, beta=beta, smooth=smooth
    )


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
        else:
            alpha = _number(alpha, f"{path}.alpha", 0.0, 1.0)
    return FocalLoss(task, gamma=gamma, alpha=alpha)


def _make_lovasz(task: str, num_classes: int, p: dict[str, Any], path: str) -> nn.Module:
    return LovaszLoss(task, per_image=_bool(p.get("per_image", False), f"{path}.per_image"))


_LOSSES: dict[str, _LossSpec] = {
    "ce": _LossSpec(("multiclass",), ("class_weights", "label_smoothing"), _make_ce),
    "bce": _LossSpec(_SIGMOID_TASKS, ("pos_weight",), _make_bce),
    "dice": _LossSpec(TASKS, ("smooth", "log_loss"), _make_dice),
    "jaccard": _LossSpec(TASKS, ("smooth", "log_loss"), _make_jaccard),
    "focal": _LossSpec(TASKS, ("gamma", "alpha"), _make_focal),
    "lovasz": _LossSpec(TASKS, ("per_image",), _make_lovasz),
    "tversky": _LossSpec(TASKS, ("alpha", "beta", "smooth"), _make_tversky),
}

#: Every loss name ``cfg.loss`` accepts.
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def build_loss_term(name: str, task: str, num_classes: int, params: Optional[dict[str, Any]] = None) -> nn.Module:
    """One loss module by name, its parameters validated (errors name the config path)."""
    params = dict(params or {})
    spec = _LOSSES.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), LOSS_NAMES, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"loss.{name}: unknown loss {name!r}{hint} (valid names: {', '.join(LOSS_NAMES)})")
    if task not in spec.tasks:
        alt = {"ce": " (use bce for binary/multilabel)", "bce": " (use ce for multiclass)"}.get(name, "")
        raise ConfigError(
            f"loss.{name}: {name!r} supports task {' / '.join(spec.tasks)} only, "
            f"but data.task is {task!r}{alt}"
        )
    for key in params:
        if key not in spec.params:
            close = difflib.get_close_matches(str(key), spec.params, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
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

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self._check(logits, target)
        logits = logits.float()
        target = target.long() if self.task == "multiclass" else target.float()
        total: Optional[Tensor] = None
        parts: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = term(logits, target)
            parts[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, parts

    def extra_repr(self) -> str:
        return f"task={self.task!r}, weights={self.weights}"


def model_loss(loss_fn: nn.Module, out: Tensor | tuple, target: Tensor, aux_weight: float = 0.0,
               presence_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of a model output: plain logits, or ``(logits, [aux logits])`` from a deeply
    supervised model, whose loss is ``loss(logits) + aux_weight * mean(loss(aux))`` (term ``aux``).
    With ``presence_weight`` > 0 the logits carry the empty-mask classifier's channels
    (:mod:`seg_toolkit.models.presence`): ``+ presence_weight * BCE(presence, mask non-empty)`` (term ``cls``)."""
    from .models.presence import presence_loss, split_presence

    logits, aux = (out, None) if not isinstance(out, tuple) else out
    presence = None
    if presence_weight > 0:
        logits, presence = split_presence(logits, target.shape[1], True)
    loss, terms = loss_fn(logits.float(), target)
    if aux is not None:
        aux_loss = sum(loss_fn(a.float(), target)[0] for a in aux) / max(len(aux), 1)
        loss, terms = loss + aux_weight * aux_loss, {**terms, "aux": aux_loss.detach()}
    if presence is not None:
        cls_loss = presence_loss(presence, target)
        loss, terms = loss + presence_weight * cls_loss, {**terms, "cls": cls_loss.detach()}
    return loss, terms


def build_loss(cfg: Config) -> LossCombo:
    """The :class:`LossCombo` described by ``cfg.loss``, ``cfg.loss_params`` and ``cfg.data``.

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
    for name in cfg.loss_params:
        if name not in cfg.loss:
            raise ConfigError(f"loss_params.{name}: there is no loss {name!r} in loss ({', '.join(cfg.loss)})")
    terms: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for name, weight in cfg.loss.items():
        if not _is_number(weight) or weight < 0:
            raise ConfigError(f"loss.{name}: the weight must be a finite number >= 0, got {weight!r}")
        terms[name] = build_loss_term(name, task, num_classes, cfg.loss_params.get(name))
        weights[name] = float(weight)
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"loss: at least one weight must be > 0, got {weights}")
    logger.debug("loss: %s", " + ".join(f"{w:g}*{n}" for n, w in weights.items()))
    return LossCombo(terms, weights, task, num_classes)
