"""The auxiliary empty-mask classifier (``model.classifier: <loss weight>``), for binary / multilabel.

What TGS, Severstal and SIIM winners did: a per-class "is there any mask?" logit from the
encoder's deepest features (global average pooling + linear, smp's classification head),
trained with the segmentation loss (``+ classifier * BCE(logit, mask is non-empty)``),
and a post-processing gate on its probability tuned on OOF (``tune``), next to the
max-probability gate.

How the second output travels: the model's output gets ``C`` more channels, each holding
its class's presence logit over the whole image (``(N, 2C, H, W)``). Everything between
the model and the predictor's output (padding and cropping, TTA flips and rotations,
scales, tiles, resizing, fold and member merging in probability space) treats a
constant channel as a constant channel, so the presence probability is averaged over TTA
variants, folds and members exactly as the masks are: no second code path. The split
happens once, at the ends: :func:`split_presence` in the training loss and validation,
and in the predictor (``Predictor.iter_predictions`` yields the per-image presence
probabilities beside the ``(C, H, W)`` mask probabilities). The OOF files keep them in
``oof/presence/<id>.npy`` (uint8, like the masks), which ``tune`` reads.

The head is attached with forward hooks that take the module as an argument (no closures),
so ``copy.deepcopy`` (EMA, amp measurement), ``state_dict`` (keys ``presence_head.*``
beside the base model's) and ONNX tracing all see one self-contained module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["add_presence_head", "with_presence", "split_presence", "presence_target", "presence_known", "presence_loss", "has_presence"]


def _keep_deepest(encoder: nn.Module, inputs: Any, features: Any) -> None:
    encoder._presence_feature = features[-1]


def _attach(seg: Tensor, logits: Tensor) -> Tensor:
    n, c = logits.shape
    return torch.cat([seg, logits.to(seg.dtype)[:, :, None, None].expand(n, c, *seg.shape[-2:])], dim=1)


def _append_presence(model: nn.Module, inputs: Any, output: Any) -> Any:
    return with_presence(model, output)


def with_presence(model: nn.Module, output: Any) -> Any:
    """``output`` with the presence channels of the encoder's last call appended (the model's forward
    hook; called directly by code that runs a model's inner forward, e.g. the ONNX export)."""
    feature = model.encoder.__dict__.pop("_presence_feature")
    logits = model.presence_head(feature)
    if isinstance(output, tuple):  # deep supervision in training: (main, [aux]); the aux heads stay plain
        return (_attach(output[0], logits), *output[1:])
    return _attach(output, logits)


def add_presence_head(model: nn.Module, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Give ``model`` (with ``.encoder`` returning a feature list) a presence head on its deepest feature."""
    channels = model.encoder.out_channels[-1]
    model.presence_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(channels, num_classes))
    model.encoder.register_forward_hook(_keep_deepest)
    model.register_forward_hook(_append_presence)
    return model


def has_presence(cfg: Any) -> bool:
    """Whether a config's (or ModelConfig's) model has the presence head."""
    model = getattr(cfg, "model", cfg)
    return float(getattr(model, "classifier", 0.0) or 0.0) > 0


def split_presence(out: Tensor, num_classes: int, present: bool) -> tuple[Tensor, Tensor | None]:
    """``(mask channels (N, C, H, W), presence (N, C) or None)`` of a model output or of probabilities
    made from it (the presence channels are spatially constant up to resizing: their mean is taken)."""
    if not present:
        return out, None
    if out.shape[1] != 2 * num_classes:
        raise ValueError(f"expected {2 * num_classes} channels (masks + presence) from a model with a classifier, got {out.shape[1]}")
    return out[:, :num_classes], out[:, num_classes:].mean(dim=(-2, -1))


def presence_target(target: Tensor) -> Tensor:
    """``(N, C)`` float: 1 where a class has any foreground pixel, a target >= 0.5 (soft pseudo-labels
    included; void pixels, 255, are not foreground)."""
    return ((target >= 0.5) & (target != 255)).flatten(2).any(dim=-1).float()


def presence_known(target: Tensor) -> Tensor:
    """``(N, C)`` bool: whether an image's class has any pixel that is not void (255). A class all void
    in an image (a padded tile, an image outside the labelled area) is neither present nor empty."""
    return (target != 255).flatten(2).any(dim=-1)


def presence_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of the presence logits ``(N, C)`` against :func:`presence_target`, averaged
    over the entries :func:`presence_known` says are labelled (0 when none is)."""
    known = presence_known(target).float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), presence_target(target), reduction="none")
    return (bce * known).sum() / known.sum().clamp(min=1.0)
