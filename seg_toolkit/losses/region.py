"""Dice, Jaccard and Tversky losses: smp's formulas and conventions, computed from three sums per channel.

Each score needs only, per channel over the whole batch and the non-void pixels: the soft true
positives ``I = sum(min(p, t))`` (smp >= 0.6's soft intersection; ``sum(p * t)`` for 0/1 targets),
the predicted mass ``P = sum(p)`` and the true mass ``T = sum(t)``, so ``FP = P - I`` and
``FN = T - I``. smp's ``DiceLoss`` builds a one-hot ``(N, C, H*W)`` target, reshapes the
(channels-last) probabilities into it and reduces permuted tensors; here a multiclass ``I`` is the
probability of each pixel's own class gathered and added into its class's bin, ``P`` one
contraction and ``T`` a count per class, which makes a CamVid-sized term (4 x 11 x 176 x 240) about 2x
faster forward + backward (``bench/bench_region.py``), and more accurate in float32. Values and gradients equal smp's
(``tests/test_losses.py`` compares them for every task, with void pixels, ``smooth``, ``log_loss``
and soft targets).

smp's conventions, kept: probabilities are the softmax (multiclass) or sigmoid (binary, multilabel)
of the logits; void pixels (``ignore_index``) are left out of all three sums; a channel with no
true pixel in the batch contributes 0 but still counts in the mean over channels;
``score = (I + smooth) / max(I + alpha FP + beta FN + smooth, eps)`` with ``(alpha, beta)`` =
``(0.5, 0.5)`` for dice (so ``smooth`` weighs twice what it would in ``(2I + smooth) / (P + T + smooth)``)
and ``(1, 1)`` for jaccard; the loss is ``1 - score`` (``-log(max(score, eps))`` with ``log_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seg_toolkit.config import IGNORE_INDEX

from .terms import TASKS, computed_in

__all__ = ["RegionLoss", "REGION_KINDS", "region_sums"]

REGION_KINDS = ("dice", "jaccard", "tversky")


def region_sums(logits: Tensor, target: Tensor, mode: str, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor, Tensor]:
    """``(I, P, T)``, each ``(C,)``: soft true positives ``sum(min(p, t))``, predicted mass and true mass per channel over the
    batch's non-void pixels. ``logits`` ``(N, C, ...)``; ``target`` int ``(N, ...)`` (multiclass) or float
    ``(N, C, ...)`` of 0..1 (binary, multilabel; soft targets allowed). Half-precision logits are summed in float32."""
    logits = computed_in(logits)
    if mode == "multiclass":
        probs = logits.softmax(dim=1)
        valid = target != ignore_index
        labels = torch.where(valid, target, torch.zeros_like(target)).long()
        weight = valid.to(probs.dtype)
        own = probs.gather(1, labels.unsqueeze(1)).squeeze(1) * weight  # each pixel's probability of its class
        c = probs.shape[1]
        flat = labels.reshape(-1)  # index_add, not bincount: deterministic on CUDA too
        inter = probs.new_zeros(c).index_add(0, flat, own.reshape(-1))
        pred = torch.einsum("nc...,n...->c", probs, weight)
        true = probs.new_zeros(c).index_add(0, flat, weight.reshape(-1))
        return inter, pred, true
    probs = torch.sigmoid(logits)
    valid = target != ignore_index
    truth = torch.where(valid, target, torch.zeros_like(target)).to(probs.dtype)
    probs = probs * valid
    dims = (0, *range(2, logits.dim()))
    return torch.minimum(probs, truth).sum(dims), probs.sum(dims), truth.sum(dims)


class RegionLoss(nn.Module):
    """``kind`` ``dice`` / ``jaccard`` / ``tversky`` (``alpha`` weighs FP, ``beta`` FN) for ``mode``
    binary / multilabel / multiclass, the mean over channels; see the module's docstring."""

    def __init__(self, kind: str, mode: str, smooth: float = 0.0, log_loss: bool = False, alpha: float = 0.5,
                 beta: float = 0.5, eps: float = 1e-7, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if kind not in REGION_KINDS:
            raise ValueError(f"kind must be one of {REGION_KINDS}, got {kind!r}")
        if mode not in TASKS:
            raise ValueError(f"mode must be one of {TASKS}, got {mode!r}")
        self.kind, self.mode = kind, mode
        self.smooth, self.log_loss, self.alpha, self.beta = float(smooth), bool(log_loss), float(alpha), float(beta)
        self.eps, self.ignore_index = float(eps), ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        inter, pred, true = region_sums(logits, target, self.mode, self.ignore_index)
        alpha, beta = {"dice": (0.5, 0.5), "jaccard": (1.0, 1.0)}.get(self.kind, (self.alpha, self.beta))
        den = inter + alpha * (pred - inter) + beta * (true - inter)
        score = (inter + self.smooth) / (den + self.smooth).clamp_min(self.eps)
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        return (loss * (true > 0).to(loss.dtype)).mean()

    def extra_repr(self) -> str:
        extra = f", alpha={self.alpha}, beta={self.beta}" if self.kind == "tversky" else ""
        return f"{self.kind}, mode={self.mode!r}, smooth={self.smooth}, log_loss={self.log_loss}{extra}"
