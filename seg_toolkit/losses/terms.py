"""The pixel losses written here rather than taken from smp: masked cross-entropy, masked BCE
and focal (binary / multilabel / multiclass); why each is our own is in :mod:`seg_toolkit.losses`.
Void pixels (:data:`~seg_toolkit.config.IGNORE_INDEX`) never contribute, and an all-void batch
gives exactly 0 with finite gradients."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_toolkit.config import IGNORE_INDEX

__all__ = ["TASKS", "CrossEntropyLoss", "MaskedBCEWithLogitsLoss", "FocalLoss", "computed_in"]

TASKS = ("binary", "multilabel", "multiclass")
_SIGMOID_TASKS = ("binary", "multilabel")

# ----------------------------------------------------------------------------- helpers


def _masked_mean(values: Tensor, valid: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Mean of ``values`` over the ``valid`` positions; exactly 0 when none is valid. With ``weight``
    (the U-Net weight map, broadcastable to ``values``) the weighted mean ``sum(w * v) / sum(w)``.

    ``values`` must already be finite at the void positions (the callers replace void
    targets by 0 before computing), so that their gradient there is an exact 0.
    """
    if weight is not None:
        w = torch.where(valid, weight.to(values.dtype).expand_as(values), torch.zeros_like(values))
        total = (torch.where(valid, values, torch.zeros_like(values)) * w).sum()
        return torch.where(w.sum() > 0, total / w.sum().clamp_min(1e-12), total * 0.0)
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1).to(values.dtype)


def computed_in(logits: Tensor) -> Tensor:
    """The logits a loss computes with: float32 for half-precision ones (bf16 / fp16 sums of a whole batch round small
    additions away: a multiclass dice of 0.75 read 0.98), float32 and float64 as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _sigmoid_valid(target: Tensor, ignore_index: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(valid mask, target of the logits' ``dtype`` with void replaced by 0) for binary/multilabel targets."""
    valid = target != ignore_index
    clean = torch.where(valid, target, torch.zeros_like(target)).to(dtype)
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
        target, logits = target.long(), computed_in(logits)
        per_pixel = F.cross_entropy(
            logits,
            target,
            weight=None if self.weight is None else self.weight.to(logits.dtype),
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

    def forward(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """``weight``: per-pixel weights ``(N, 1, H, W)`` (the U-Net weight map), a weighted mean over non-void elements."""
        logits = computed_in(logits)
        valid, clean = _sigmoid_valid(target, self.ignore_index, logits.dtype)
        pw = self.pos_weight
        if pw is not None and logits.dim() != 4:
            pw = pw.view(-1)  # (C,) broadcasts along the last dim only for (N, C)
        pw = None if pw is None else pw.to(logits.dtype)
        per_elem = F.binary_cross_entropy_with_logits(logits, clean, pos_weight=pw, reduction="none")
        return _masked_mean(per_elem, valid, weight)


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

    def forward(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """``weight``: per-pixel weights (binary / multilabel: the U-Net weight map), a weighted mean."""
        logits = computed_in(logits)
        if self.mode == "multiclass":
            if weight is not None:
                raise ValueError("focal: per-pixel weights apply to binary / multilabel targets")
            return self._softmax_focal(logits, target)
        return self._sigmoid_focal(logits, target, weight)

    def _modulator(self, one_minus_pt: Tensor) -> Tensor:
        if self.gamma == 0.0:
            return torch.ones_like(one_minus_pt)
        return one_minus_pt.clamp_min(_FOCAL_EPS).pow(self.gamma)

    def _sigmoid_focal(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        valid, t = _sigmoid_valid(target, self.ignore_index, logits.dtype)
        nll = F.binary_cross_entropy_with_logits(logits, t, reduction="none")  # -log p_t
        # 1 - p_t = sigmoid(x) for a negative, sigmoid(-x) for a positive (no cancellation); a soft target (pseudo.soft)
        # gets |t - p| (quality focal loss, Li et al. 2020), the same for 0 / 1 and smallest at p = t: the hard cut at
        # 0.5 trained a 0.7 target towards 1
        one_minus_pt = torch.sigmoid(torch.where(t > 0.5, -logits, logits))
        soft = (t > 0) & (t < 1)
        if soft.any():
            one_minus_pt = torch.where(soft, (t - torch.sigmoid(logits)).abs(), one_minus_pt)
        loss = self._modulator(one_minus_pt) * nll
        if self.alpha_scalar is not None:
            loss = loss * (self.alpha_scalar * t + (1.0 - self.alpha_scalar) * (1.0 - t))
        return _masked_mean(loss, valid, weight)

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
