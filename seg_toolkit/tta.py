"""Batched test-time augmentation (TTA) for segmentation models.

The geometric transforms are the eight elements of the dihedral group D4, in
:mod:`seg_toolkit.tta_transforms` (``TRANSFORMS``, ``expand_tta``, ``apply_transform``, ``invert_transform``;
re-exported here): every inverse is exact, and the variants whose output shape is ``(W, H)`` go through the
model in their own forward passes and are mapped back before merging.

Multi-scale TTA resizes the input (bilinear, ``align_corners=False``), runs the model and
resizes the logits back to the input size; scales combine with the geometric transforms
as a product. A scale of exactly 1.0 does not interpolate at all.

All ``images x transforms x scales`` variants are batched: variants with the same input
shape are concatenated and run in chunks of at most ``max_batch`` images per forward
pass, and each chunk's outputs are merged into a float32 accumulator as they arrive, so
memory holds one chunk plus the ``(N, C, H, W)`` result.

Merge modes (``task`` picks the activation: binary / multilabel -> sigmoid, multiclass ->
softmax over dim 1):

* ``mean_prob``: mean of the probabilities.
* ``mean_logit``: mean of the logits, then the activation.
* ``geometric``: geometric mean of the probabilities, computed in log space. For
  multiclass the result is renormalised over classes; note that this makes it
  mathematically equal to ``mean_logit`` (softmax of the mean log-softmax is the softmax
  of the mean logits). For sigmoid tasks it is ``exp(mean(logsigmoid))``, not
  renormalised against the background.
* ``max``: element-wise maximum of the probabilities (multiclass rows need not sum to 1).

The functions never call ``model.train()``/``model.eval()`` (put the model in eval mode
first: BatchNorm in train mode would mix the variants of a batch) and never move data off
the input's device. They run under :func:`torch.no_grad` (not ``inference_mode``, so the
result is an ordinary tensor the caller may update in place) and work inside a caller's
``inference_mode`` / ``autocast`` block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tensors import activate, resize_to
from .tta_transforms import TRANSFORMS, _check_choice, _check_scales, apply_transform, expand_tta, invert_transform

__all__ = [
    "TRANSFORMS",
    "MERGE_MODES",
    "TASKS",
    "expand_tta",
    "apply_transform",
    "invert_transform",
    "merge_logits",
    "tta_predict",
    "iter_variant_logits",
    "merge_variant_logits",
]

logger = logging.getLogger(__name__)

Predictor = Callable[[Tensor], Tensor]

TASKS = ("binary", "multilabel", "multiclass")
MERGE_MODES = ("mean_prob", "mean_logit", "geometric", "max")

def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    if scale == 1.0:
        return size
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


# ----------------------------------------------------------------------------- merging


def _log_activation(logits: Tensor, task: str) -> Tensor:
    return F.log_softmax(logits, dim=1) if task == "multiclass" else F.logsigmoid(logits)


class _Merger:
    """Streaming merge of logits maps into a float32 ``(N, C, H, W)`` accumulator."""

    def __init__(self, merge: str, task: str, n_variants: int) -> None:
        self.merge = _check_choice("merge mode", merge, MERGE_MODES)
        self.task = _check_choice("task", task, TASKS)
        self.n_variants = n_variants
        self.acc: Tensor | None = None

    def _term(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        if self.merge == "mean_logit":
            return logits
        if self.merge == "geometric":
            return _log_activation(logits, self.task)
        return activate(logits, self.task)

    def add(self, rows: slice, n_images: int, logits: Tensor) -> None:
        """Merge the de-augmented logits of images ``rows`` (of ``n_images``)."""
        term = self._term(logits)
        if self.acc is None:
            fill = float("-inf") if self.merge == "max" else 0.0
            shape = (n_images, *term.shape[1:])
            self.acc = torch.full(shape, fill, dtype=torch.float32, device=term.device)
        if self.merge == "max":
            self.acc[rows] = torch.maximum(self.acc[rows], term)
        else:
            self.acc[rows] += term

    def result(self) -> Tensor:
        if self.acc is None:
            raise RuntimeError("nothing was merged")
        if self.merge == "max":
            return self.acc
        mean = self.acc / self.n_variants
        if self.merge == "mean_prob":
            return mean
        if self.merge == "mean_logit":
            return activate(mean, self.task)
        # geometric: exp(mean log p); softmax renormalises over classes
        return torch.softmax(mean, dim=1) if self.task == "multiclass" else mean.exp()


def merge_logits(logits: Sequence[Tensor] | Tensor, task: str, merge: str = "mean_prob") -> Tensor:
    """Merge aligned logits maps ``(V, N, C, H, W)`` (or a list of V ``(N, C, H, W)``) into
    float32 probabilities ``(N, C, H, W)`` with one of :data:`MERGE_MODES`."""
    items = list(logits.unbind(0)) if isinstance(logits, Tensor) else list(logits)
    if not items:
        raise ValueError("merge_logits: no predictions to merge")
    merger = _Merger(merge, task, len(items))
    for item in items:
        merger.add(slice(None), item.shape[0], item)
    return merger.result()


# ----------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class _Variant:
    transform: str
    scale: float


def _variants(transforms: list[str], scales: list[float]) -> list[_Variant]:
    return [_Variant(t, s) for s in scales for t in transforms]


def _input_shape(variant: _Variant, size: tuple[int, int]) -> tuple[int, int]:
    h, w = _scaled_size(size, variant.scale)
    return (w, h) if TRANSFORMS[variant.transform].swaps_hw else (h, w)


def _group_by_shape(variants: list[_Variant], size: tuple[int, int]) -> list[list[_Variant]]:
    """Variants whose model input has the same shape, in first-seen order."""
    groups: dict[tuple[int, int], list[_Variant]] = {}
    for v in variants:
        groups.setdefault(_input_shape(v, size), []).append(v)
    return list(groups.values())


_Piece = tuple[_Variant, int, int]


def _chunks(group: list[_Variant], n_images: int, max_batch: int) -> Iterator[list[_Piece]]:
    """Split the flat ``(variant, image)`` sequence of a group into chunks of at most
    ``max_batch`` images, as pieces ``(variant, first_image, end_image)``."""
    chunk: list[_Piece] = []
    room = max_batch
    for v in group:
        start = 0
        while start < n_images:
            take = min(room, n_images - start)
            chunk.append((v, start, start + take))
            start += take
            room -= take
            if room == 0:
                yield chunk
                chunk, room = [], max_batch
    if chunk:
        yield chunk


def _passes(variants: list[_Variant], size: tuple[int, int], n_images: int, max_batch: int) -> Iterator[list[_Piece]]:
    """The forward passes of ``variants`` of ``n_images`` images of ``size``, in order: the variants of one input
    shape share passes of at most ``max_batch`` images. Predicting and re-merging stored logits
    (:func:`merge_variant_logits`) both follow it, so they add the same pieces in the same order."""
    for group in _group_by_shape(variants, size):
        yield from _chunks(group, n_images, max_batch)


def _run(model: Predictor, x: Tensor) -> Tensor:
    y = model(x)
    if not isinstance(y, Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0] or y.shape[-2:] != x.shape[-2:]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"TTA expects the model to return logits (N, C, H, W) with the input's N, H, W; "
            f"input {tuple(x.shape)}, output {got}"
        )
    return y


def _deaugment(y: Tensor, variant: _Variant, size: tuple[int, int]) -> Tensor:
    # contiguous: an activation over a strided view (a transpose's inverse) takes another kernel than over the
    # same values laid out densely, a last bit apart; the stored logits of merge_variant_logits are dense
    return resize_to(TRANSFORMS[variant.transform].inverse(y), size).contiguous()


def _validate(images: Tensor, task: str, transforms: Sequence[str], scales: Sequence[float], merge: str,
              max_batch: int) -> tuple[list[str], list[float]]:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"tta_predict expects images (N, C, H, W), got {shape}")
    if images.shape[0] == 0:
        raise ValueError("tta_predict: empty batch")
    _check_choice("task", task, TASKS)
    _check_choice("merge mode", merge, MERGE_MODES)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
    return expand_tta(transforms), _check_scales(scales)


def tta_predict(
    model: nn.Module | Predictor,
    images: Tensor,
    task: str,
    transforms: Sequence[str] = ("identity",),
    scales: Sequence[float] = (1.0,),
    merge: str = "mean_prob",
    max_batch: int = 64,
    batched: bool = True,
) -> Tensor:
    """Merged probabilities ``(N, C, H, W)`` float32 of ``model`` over TTA variants.

    Args:
        model: module or callable mapping ``(n, C_in, h, w)`` to logits ``(n, C, h, w)``;
            used as is (put it in eval mode first).
        images: ``(N, C_in, H, W)`` batch on the model's device, any float dtype
            (autocast-friendly: logits are merged in float32).
        task: ``binary`` | ``multilabel`` (sigmoid) or ``multiclass`` (softmax, dim 1).
        transforms: names from :data:`TRANSFORMS` or ``d4`` (see :func:`expand_tta`).
        scales: input resize factors; each is combined with every transform.
        merge: one of :data:`MERGE_MODES`.
        max_batch: most images per forward pass (``PredictConfig.max_tta_batch``).
        batched: ``False`` runs the sequential reference path: one forward pass of the
            whole batch per (transform, scale) variant, ignoring ``max_batch``.
    """
    names, scale_list = _validate(images, task, transforms, scales, merge, max_batch)
    if isinstance(model, nn.Module) and model.training:
        logger.warning("tta_predict: the model is in training mode; call model.eval() first")
    variants = _variants(names, scale_list)
    with torch.no_grad():
        merger = _Merger(merge, task, len(variants))
        if batched:
            _predict_batched(model, images, variants, max_batch, merger)
        else:
            _predict_sequential(model, images, variants, merger)
        return merger.result()


def _predict_sequential(model: Predictor, images: Tensor, variants: list[_Variant], merger: _Merger) -> None:
    """Reference path: one forward pass of the whole batch per variant."""
    size, n = (int(images.shape[-2]), int(images.shape[-1])), int(images.shape[0])
    for v in variants:
        x = TRANSFORMS[v.transform].forward(resize_to(images, _scaled_size(size, v.scale)))
        merger.add(slice(None), n, _deaugment(_run(model, x), v, size))


def iter_variant_logits(model: Predictor, images: Tensor, variants: list[_Variant],
                        max_batch: int) -> Iterator[tuple[_Variant, slice, Tensor]]:
    """Run ``variants`` of ``images`` batched and yield ``(variant, image slice, de-augmented logits)``.

    Variants with the same input shape share forward passes of at most ``max_batch`` images;
    each piece is already mapped back to the input's geometry and size.
    """
    size, n = (int(images.shape[-2]), int(images.shape[-1])), int(images.shape[0])
    scaled = {v.scale: resize_to(images, _scaled_size(size, v.scale)) for v in variants}
    for chunk in _passes(variants, size, n, max_batch):
        parts = [TRANSFORMS[v.transform].forward(scaled[v.scale][a:b]) for v, a, b in chunk]
        y = _run(model, parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
        offset = 0
        for v, a, b in chunk:
            yield v, slice(a, b), _deaugment(y[offset:offset + b - a], v, size)
            offset += b - a


def merge_variant_logits(logits: dict[_Variant, Tensor], variants: list[_Variant], size: tuple[int, int], task: str,
                         merge: str, max_batch: int) -> Tensor:
    """Merge de-augmented logits kept per variant (``(N, C, H, W)`` each, float32) into what :func:`tta_predict`
    returns for ``variants`` of images of ``size``, bit for bit: the same pieces (shape groups, ``max_batch``
    chunks) merged in the same order, where a plain mean over ``variants`` sums in another order (the last bit
    of a probability, enough to move an OOF file's 1/255 step now and then)."""
    n = int(next(iter(logits.values())).shape[0])
    merger = _Merger(merge, task, len(variants))
    for chunk in _passes(variants, size, n, max_batch):
        for v, a, b in chunk:
            merger.add(slice(a, b), n, logits[v][a:b])
    return merger.result()


def _predict_batched(model: Predictor, images: Tensor, variants: list[_Variant], max_batch: int,
                     merger: _Merger) -> None:
    """Variants with the same input shape share forward passes of at most ``max_batch`` images."""
    n = int(images.shape[0])
    for _, rows, logits in iter_variant_logits(model, images, variants, max_batch):
        merger.add(rows, n, logits)
