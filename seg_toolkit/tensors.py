"""Small tensor helpers shared by training, validation and inference."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["activate", "resize_to", "probs_to_uint8", "uint8_to_probs", "to_merge_space", "from_merge_space"]


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Probabilities from logits ``(N, C, H, W)``: softmax over classes for multiclass, else sigmoid."""
    logits = logits.float()
    return logits.softmax(dim=1) if task == "multiclass" else logits.sigmoid()


def resize_to(x: torch.Tensor, hw: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` maps to ``hw`` (a no-op when already that size)."""
    hw = (int(hw[0]), int(hw[1]))
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x.float(), size=hw, mode="bilinear", align_corners=False)


def resize_target(target: torch.Tensor, hw: tuple[int, int] | torch.Size) -> torch.Tensor:
    """A target resized by the nearest pixel centre (as the training transforms resize masks, and the scored ground
    truth is: :func:`~seg_toolkit.data.scored.nearest_resize`) to ``hw``:
    multiclass ids ``(N, H, W)`` or binary / multilabel ``(N, C, H, W)``; dtype kept."""
    hw = (int(hw[0]), int(hw[1]))
    if tuple(target.shape[-2:]) == hw:
        return target
    x = target[:, None] if target.dim() == 3 else target
    out = F.interpolate(x.float(), size=hw, mode="nearest-exact").to(target.dtype)
    return out[:, 0] if target.dim() == 3 else out


def probs_to_uint8(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Quantise probabilities in [0, 1] to ``uint8`` (p * 255, rounded): 4x smaller than float32.

    Thresholding the quantised value at ``t`` agrees with thresholding the float at ``t``
    except within 1/510 of ``t``.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)


def uint8_to_probs(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / 255.0


#: the lowest probability the ``logit`` space takes: half a step of the uint8 OOF files (logit -6.23)
LOGIT_FLOOR = 0.5 / 255.0


def to_merge_space(p: torch.Tensor, space: str, task: str) -> torch.Tensor:
    """Probabilities ``(C, H, W)`` in the space where ensembles average: ``prob`` (as probabilities), or
    ``logit`` (log-probabilities for multiclass, logits for sigmoid tasks).

    In both spaces each probability is first put on the 1/255 grid the OOF files store it on
    (:func:`probs_to_uint8`), so that an ensemble's OOF (merged from its members' uint8 files) and its
    predictions (merged from floats) merge the same numbers. In ``prob`` space the unrounded merge moved
    6% of the values one step off the OOF's (a pixel at a tuned threshold could flip); in ``logit`` space
    each is also kept at least :data:`LOGIT_FLOOR` from 0 and 1: below 1/510 a float of 0.0015 and a
    stored 0 became logits -6.5 and -13.8, and a merge of 0.649 at predict time was 0.177 in the OOF
    the weights and post-processing were tuned on.
    """
    q = on_grid(p)
    if space == "prob":
        return q
    return q.clamp_min(LOGIT_FLOOR).log() if task == "multiclass" else torch.logit(q.clamp(LOGIT_FLOOR, 1 - LOGIT_FLOOR))


def on_grid(p: torch.Tensor) -> torch.Tensor:
    """Probabilities put on the 1/255 grid the OOF files store them on (:func:`probs_to_uint8`, then back), as a
    tensor where it is (the predictor's device); :func:`seg_toolkit.postprocess.on_oof_grid` is the same for the
    NumPy arrays post-processing reads."""
    return (p.clamp(0.0, 1.0) * 255.0).round_() / 255.0


def add_weighted(acc: torch.Tensor | None, w: float, t: torch.Tensor) -> torch.Tensor:
    """``acc + w * t`` (``w * t`` when ``acc`` is None), the product rounded before the sum: the one rule by which
    an ensemble's OOF (:func:`seg_toolkit.ensemble.merge_probs`) and the predictor add their members, so the two
    round alike (``add_(t, alpha=w)`` rounds once, and 1.8% of 4 members' merged values had come out one uint8
    step apart)."""
    return t * w if acc is None else acc.add_(t * w)


def from_merge_space(acc: torch.Tensor, space: str, task: str) -> torch.Tensor:
    """Back to probabilities from a weighted sum made in :func:`to_merge_space`'s space (classes on dim 0)."""
    if space == "prob":
        return acc
    return acc.softmax(0) if task == "multiclass" else acc.sigmoid()
