"""The Lovasz losses (Berman et al., 2018): the hinge per channel for binary / multilabel, the
softmax version for multiclass; why they are our own and not smp's is in :mod:`seg_toolkit.losses`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seg_toolkit.config import IGNORE_INDEX

from .terms import TASKS, computed_in

__all__ = ["LovaszLoss", "lovasz_grad", "lovasz_hinge_flat", "lovasz_softmax_flat"]



def lovasz_grad(gt_sorted: Tensor, gts: Tensor | None = None) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted descending.

    ``gt_sorted``: float ``(P,)`` of 0/1 labels in the order of the sorted errors, P >= 1.
    Algorithm 1 of Berman et al. (2018): ``J_i = 1 - |gt \\ first i| / |gt u first i|``,
    the result is ``J_1, J_2 - J_1, ..., J_P - J_{P-1}``. ``gts``: the number of positive
    labels in the whole ranking when ``gt_sorted`` is only its top (default: ``gt_sorted.sum()``);
    the first entries depend on nothing else.
    """
    gts = gt_sorted.sum() if gts is None else gts
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_hinge_flat(logits: Tensor, labels: Tensor, symmetric: bool = False) -> Tensor:
    """Binary Lovasz hinge of flat ``(P,)`` logits vs 0/1 labels (no void); 0 when P = 0.

    ``symmetric``: the mean of the hinge of the foreground and the hinge of the background
    (``-logits`` vs ``1 - labels``, the TGS Salt solutions' "symmetric Lovasz"), so the IoU of the
    empty part is optimised too. Negating both the logits and the signs leaves every hinge error
    as it was: the two share one sort and differ only in the Jaccard weights.

    Only the pixels with a positive hinge error (margin below 1) are sorted: the ones below
    them in the ranking add ``relu(error) = 0`` to the loss and to its gradient, and the weights
    of the ones above depend only on the labels ranked above them and on the total number of
    positives. The value and the gradient are those of sorting every pixel; the sort, the
    largest cost of the loss, shrinks to the pixels not yet fitted (7-10% of a TGS batch for
    a trained fold: the loss 4x faster, ``bench/bench_lovasz.py``).
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    active = errors > 0
    errors_sorted, perm = torch.sort(errors[active], descending=True)
    gt_sorted = labels[active][perm]
    weights = lovasz_grad(gt_sorted, labels.sum())
    if symmetric:
        weights = 0.5 * (weights + lovasz_grad(1.0 - gt_sorted, labels.numel() - labels.sum()))
    # a product-sum rather than torch.dot: stays float32 under autocast
    return (errors_sorted * weights).sum()


def lovasz_softmax_flat(probs: Tensor, labels: Tensor) -> Tensor:
    """Lovasz-softmax of flat ``(P, C)`` probabilities vs ``(P,)`` labels (no void).

    Averages over the classes present in ``labels``; 0 when P = 0. The present classes are ranked in one batched
    sort of their ``(C', P)`` errors and :func:`lovasz_grad`'s recurrence runs along each row: the same loss and
    gradient as one sort per class, 1.42x faster on CamVid's batch of 4 x 11 classes x 176x240 (106 vs 151 ms forward and
    backward; the sort is most of it: ``bench/bench_lovasz.py``).
    """
    if labels.numel() == 0:
        return probs.sum() * 0.0
    fg = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).to(probs.dtype).t()  # (C, P)
    present = fg.sum(1) > 0
    fg, p = fg[present], probs.t()[present]
    errors_sorted, perm = torch.sort((fg - p).abs(), dim=1, descending=True)
    fg_sorted = fg.gather(1, perm)
    gts = fg_sorted.sum(1, keepdim=True)
    jaccard = 1.0 - (gts - fg_sorted.cumsum(1)) / (gts + (1.0 - fg_sorted).cumsum(1))  # union >= 1 everywhere
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (errors_sorted * grad).sum(1).mean()


class LovaszLoss(nn.Module):
    """Lovasz loss: hinge per channel (binary / multilabel) or softmax (multiclass).

    Units: binary / multilabel -> one ranking per channel (over the whole batch, or per
    image and channel when ``per_image``), multiclass -> one ranking over the batch (or per
    image). The loss is the mean over the units that have at least one non-void pixel;
    0 (with zero gradients) when none has. ``symmetric`` (binary / multilabel): each unit's
    hinge is the mean of the foreground's and the background's (:func:`lovasz_hinge_flat`).
    """

    def __init__(self, mode: str, per_image: bool = False, ignore_index: int = IGNORE_INDEX, symmetric: bool = False) -> None:
        super().__init__()
        if mode not in TASKS:
            raise ValueError(f"mode must be one of {TASKS}, got {mode!r}")
        self.mode = mode
        if symmetric and mode == "multiclass":
            raise ValueError("symmetric is the binary / multilabel hinge's; Lovasz-softmax already scores every class")
        self.per_image = per_image
        self.symmetric = symmetric
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits, losses = computed_in(logits), []
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
                    if not valid.all():  # masks without void skip the two gathers (and their backward)
                        if not valid.any():
                            continue
                        flat_x, flat_t = flat_x[valid], flat_t[valid]
                    # soft targets (pseudo.soft) are cut at 0.5: the Lovasz extension needs 0/1 labels
                    losses.append(lovasz_hinge_flat(flat_x, (flat_t >= 0.5).to(flat_x.dtype), self.symmetric))
        if not losses:
            return logits.sum() * 0.0
        return torch.stack(losses).mean()
