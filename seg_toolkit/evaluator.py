"""The metric over validation batches: :class:`Evaluator` accumulates confusion counts and per-image scores.

It keeps counts and one float per (image, class), never images, and scores with the pure functions of
:mod:`seg_toolkit.metrics` (whose docstring states the shapes and conventions); every command that scores
(training's validation, OOF, tune, evaluate, ensembles, the report) uses it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from seg_toolkit.config import IGNORE_INDEX, ConfigError, MetricConfig
from seg_toolkit.instance_metrics import INSTANCE_METRICS, image_match, scores_from_hits
from seg_toolkit.metrics import (
    EMPTY_SCORES,
    METRIC_NAMES,
    PER_IMAGE_METRICS,
    TGS_METRICS,
    TASKS,
    ArrayLike,
    ImageCounts,
    _as_tensor,
    _counts_from_image_confusion,
    _multiclass_image_confusion,
    _nanmean,
    _row_nanmean,
    _sigmoid_confusion_from_counts,
    binarize,
    confusion_score,
    dice_per_class,
    image_counts,
    iou_per_class,
    pixel_accuracy,
    scores_from_counts,
)

__all__ = ["Evaluator", "hard_prediction", "resolve_metric_name", "scored_columns", "truth_objects"]

logger = logging.getLogger(__name__)


def resolve_metric_name(name: str, task: str) -> str:
    """``auto`` -> ``miou`` (multiclass) or ``dice`` (binary / multilabel); checks the task fits."""
    if task not in TASKS:
        raise ConfigError(f"data.task: {task!r} is not one of {', '.join(TASKS)}")
    if name == "auto":
        return "miou" if task == "multiclass" else "dice"
    if name not in METRIC_NAMES:
        raise ConfigError(f"metric.name: {name!r} is not one of auto, {', '.join(METRIC_NAMES)}")
    if name in TGS_METRICS and task != "binary":
        raise ConfigError(f"metric.name: {name!r} (TGS Salt mAP) is for binary tasks only, data.task is {task!r}")
    if name in INSTANCE_METRICS and task != "binary":
        raise ConfigError(f"metric.name: {name!r} matches the objects of one foreground class; data.task is {task!r}")
    return name


def scored_columns(metric_cfg: MetricConfig, task: str) -> np.ndarray | None:
    """The output channels the score averages: ``metric.classes`` (multiclass ids 0..C-1, binary / multilabel
    classes 1..C) as channel indices; None: all."""
    if not metric_cfg.classes:
        return None
    first = 0 if task == "multiclass" else 1
    return np.asarray([int(c) - first for c in metric_cfg.classes], np.int64)


def hard_prediction(probs: torch.Tensor, task: str, threshold, min_area: int = 0) -> torch.Tensor:
    """What :meth:`Evaluator.update` scores of probabilities ``(N, C, H, W)``: the argmax label maps (multiclass), or
    masks at ``threshold`` without the 8-connected objects smaller than ``min_area`` (the submission's floor)."""
    if task == "multiclass":  # over channels laid out last: the same labels (ties to the lower class), 2.6x faster
        return probs.contiguous(memory_format=torch.channels_last).argmax(1) if probs.dim() == 4 else probs.argmax(1)
    pred = binarize(probs, threshold)
    if min_area > 1:
        from .postprocess import remove_small

        kept = pred.cpu().numpy().astype(bool)
        for i, c in np.ndindex(*kept.shape[:2]):
            kept[i, c] = remove_small(kept[i, c], min_area)
        pred = torch.from_numpy(kept).to(device=pred.device, dtype=pred.dtype)
    return pred


class Evaluator:
    """Accumulates confusion counts and per-image scores over validation batches.

    Only counts and one float per (image, class) are kept, never images. ``update`` takes
    probabilities ``(N, C, H, W)`` (sigmoid: foreground where ``p >= metric_cfg.threshold``;
    softmax: argmax over C); ``update_masks`` takes hard predictions (binary / multilabel:
    ``(N, C, H, W)`` masks, multiclass: ``(N, H, W)`` label maps). Targets follow the loss
    convention (void = ``ignore_index``).

    ``compute()`` returns a dict:

    * ``metric``: the resolved metric name; ``score``: the CV score (float, NaN if nothing
      could be scored)
    * ``per_class_iou``, ``per_class_dice``: dataset-level, from the summed counts (for
      binary / multilabel the foreground of each channel; NaN for a class that never occurs)
    * ``pixel_accuracy``; ``confusion``: ``(C, C)`` rows = truth for multiclass, ``2x2``
      ``[[TN, FP], [FN, TP]]`` for binary, ``(C, 2, 2)`` for multilabel (nested lists)
    * ``n_images``
    * per-image metrics only: ``per_image`` (one float per image in update order: the mean
      over its classes, NaN where all were skipped) and, when C > 1, ``per_image_class``
      (``(N, C)`` nested lists).

    ``compute(groups=[k])`` scores the images added with group ``k`` (say, a fold) alone: one pass over the
    images gives the score of all, of each group and of groups of groups, each image counted once.

    ``miou`` for binary / multilabel is the mean over channels of the foreground IoU
    (background is not averaged in); ``global_dice`` the same of the foreground dice (contrails).

    ``min_area`` (binary / multilabel): ``update`` drops 8-connected objects smaller than it after the
    threshold, as the submission's instance rows do (``submission.min_instance_area``); :meth:`of`
    takes it from the config, so CV, validation and OOF scores count the objects that are submitted.
    """

    def __init__(
        self, metric_cfg: MetricConfig, task: str, num_classes: int, ignore_index: int = IGNORE_INDEX, min_area: int = 0,
    ) -> None:
        self.task = task
        self.min_area = int(min_area) if task != "multiclass" else 0
        self.metric = resolve_metric_name(metric_cfg.name, task)
        if metric_cfg.empty_score not in EMPTY_SCORES:
            raise ConfigError(f"metric.empty_score: {metric_cfg.empty_score!r} is not one of {', '.join(EMPTY_SCORES)}")
        if not 0.0 <= metric_cfg.threshold <= 1.0:
            raise ConfigError(f"metric.threshold: expected a probability in [0, 1], got {metric_cfg.threshold}")
        if task == "binary" and num_classes != 1:
            raise ConfigError(f"data.num_classes: a binary task has 1 output channel, got {num_classes}")
        if num_classes < 1:
            raise ConfigError(f"data.num_classes: expected >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.cols = scored_columns(metric_cfg, task)
        if self.cols is not None and (self.cols.min() < 0 or self.cols.max() >= num_classes):
            raise ConfigError(f"metric.classes: {list(metric_cfg.classes)} are not all classes of this {task} task")
        self.empty_score = metric_cfg.empty_score
        self.threshold = float(metric_cfg.threshold)
        self.ignore_index = ignore_index
        self.reset()

    @property
    def per_image(self) -> bool:
        return self.metric in PER_IMAGE_METRICS or self.instance

    @classmethod
    def of(cls, cfg) -> Evaluator:
        """The config's metric, task and classes, with the submission's object floor
        (:func:`~seg_toolkit.postprocess.area_floor`)."""
        from .postprocess import area_floor

        return cls(cfg.metric, cfg.data.task, cfg.data.num_classes, min_area=area_floor(cfg))

    @property
    def instance(self) -> bool:
        """An object-matching metric (:mod:`seg_toolkit.instance_metrics`): ``update`` needs the truth objects."""
        return self.metric in INSTANCE_METRICS

    @property
    def n_images(self) -> int:
        return self._n_images

    def reset(self) -> None:
        c = self.num_classes
        shape = (c, c) if self.task == "multiclass" else (c, 2, 2)
        self._confusion = np.zeros(shape, dtype=np.int64)
        self._scores: list[list[float]] = []
        self._n_images = 0
        self._group_confusion: dict[Any, np.ndarray] = {}  # group -> its images' summed confusion
        self._image_groups: list[Any] = []  # per image added, its group (None: none)
        #: the per (image, class) pixel counts of the last batch added
        self.last_counts: Optional[ImageCounts] = None
        #: object-matching metrics: per image added, (truth objects, predicted objects, matched at IoU > 0.5)
        self.object_counts: list[tuple[int, int, int]] = []

    def groups(self) -> list[Any]:
        """The groups images were added with, in the order first seen."""
        return list(self._group_confusion)

    def update(self, probs: ArrayLike, target: ArrayLike, objects: Sequence[np.ndarray] | None = None,
               group: Any = None) -> None:
        """Add a batch of probabilities ``(N, C, H, W)`` and its target (``objects``, ``group``: as
        :meth:`update_masks`)."""
        p = _as_tensor(probs)
        if p.dim() != 4 or p.shape[1] != self.num_classes:
            raise ValueError(f"update: expected probabilities (N, {self.num_classes}, H, W), got {tuple(p.shape)}")
        self.update_masks(hard_prediction(p, self.task, self.threshold, self.min_area), target, objects, group)

    def update_masks(self, pred: ArrayLike, target: ArrayLike, objects: Sequence[np.ndarray] | None = None,
                     group: Any = None) -> list[list[float]]:
        """Add a batch of hard predictions and its target. An object-matching metric also needs ``objects``: each
        image's truth objects as an ``(H, W)`` label map (0 = none; :func:`seg_toolkit.data.load_objects`).
        ``group`` (hashable, not None): the batch also counts toward ``compute(groups=[group, ...])``.
        Returns the per-image scores it added (one row per image, one value per class; empty for a dataset-level
        metric); the batch's pixel counts are :attr:`last_counts`."""
        p, t = _as_tensor(pred), _as_tensor(target)
        c = self.num_classes
        if self.task == "multiclass":
            if p.dim() != 3 or t.shape != p.shape:
                raise ValueError(
                    f"update_masks: multiclass needs label maps pred (N, H, W) and target of the same shape, "
                    f"got {tuple(p.shape)} and {tuple(t.shape)}"
                )
            img_cm = _multiclass_image_confusion(p, t, c, self.ignore_index)
            added = img_cm.sum(0).cpu().numpy().astype(np.int64)
            counts = _counts_from_image_confusion(img_cm)
        else:
            if p.dim() != 4 or p.shape[1] != c or t.shape != p.shape:
                raise ValueError(
                    f"update_masks: {self.task} needs masks pred (N, {c}, H, W) and target of the same shape, "
                    f"got {tuple(p.shape)} and {tuple(t.shape)}"
                )
            counts = image_counts(p, t, c, self.ignore_index)
            added = _sigmoid_confusion_from_counts(counts)
        rows: list[list[float]] = []
        if self.instance:
            rows = [[s] for s in self._object_scores(p, t, objects)]
        elif self.per_image:
            rows = scores_from_counts(counts, self.metric, self.empty_score).tolist()
        self._confusion += added
        if group is not None:
            self._group_confusion[group] = self._group_confusion.get(group, 0) + added
        self._scores.extend(rows)
        self._image_groups.extend([group] * int(p.shape[0]))
        self._n_images += int(p.shape[0])
        self.last_counts = counts
        return rows

    def _object_scores(self, pred: Any, target: Any, objects: Sequence[np.ndarray] | None) -> list[float]:
        """Each image's object-matching score: the 8-connected components of its mask against its truth objects.
        Each image's ``(truth objects, predicted objects, matched at IoU > 0.5)`` goes to :attr:`object_counts`."""
        n = int(pred.shape[0])
        if objects is None or len(objects) != n:
            got = "none" if objects is None else len(objects)
            raise ValueError(f"metric {self.metric}: needs each image's truth objects (label maps), got {got} for {n} images")
        masks = pred[:, 0].cpu().numpy()
        void = (target[:, 0] == self.ignore_index).cpu().numpy()
        scores = []
        for mask, truth, v in zip(masks, objects, void):
            hits, n_truth, n_pred = image_match(np.asarray(truth), mask, v if v.any() else None)
            scores.append(float(scores_from_hits(hits, n_pred, n_truth, self.metric)))
            self.object_counts.append((n_truth, n_pred, int(hits[0])))
        return scores

    def compute(self, groups: Iterable[Any] | None = None) -> dict[str, Any]:
        """The metrics of everything added since the last ``reset`` (see the class docstring); with ``groups``, of the
        images added with any of those groups (a fold; an ensemble's half of the folds)."""
        if groups is None:
            cm, n_images, rows = self._confusion, self._n_images, self._scores
        else:
            chosen = list(groups)
            unknown = [g for g in chosen if g not in self._group_confusion]
            if unknown:
                raise KeyError(f"Evaluator.compute(): no images were added with group {unknown[0]!r}")
            picked = [i for i, g in enumerate(self._image_groups) if g in chosen]
            cm, n_images = sum(self._group_confusion[g] for g in chosen), len(picked)
            rows = [self._scores[i] for i in picked] if self._scores else []
        if n_images == 0:
            raise RuntimeError("Evaluator.compute(): no images were added")
        iou = iou_per_class(cm)
        out: dict[str, Any] = {
            "metric": self.metric,
            "score": math.nan,
            "per_class_iou": iou.tolist(),
            "per_class_dice": dice_per_class(cm).tolist(),
            "pixel_accuracy": pixel_accuracy(cm),
            "confusion": (cm[0] if self.task == "binary" else cm).tolist(),
            "n_images": n_images,
        }
        if cm.sum() == 0:
            logger.warning("every pixel of the %d images was void (target == %d)", n_images, self.ignore_index)
        if self.per_image:
            scores = np.asarray(rows, dtype=np.float64).reshape(n_images, -1)
            scored = scores if self.cols is None else scores[:, self.cols]  # metric.classes
            out["per_image"] = _row_nanmean(scored).tolist()
            if scores.shape[1] > 1:
                out["per_image_class"] = scores.tolist()
            out["score"] = _nanmean(scored)
        else:
            out["score"] = confusion_score(cm, self.metric, self.cols)
        if math.isnan(out["score"]):
            logger.warning("metric %s: nothing could be scored over %d images, score is NaN", self.metric, n_images)
        return out


def truth_objects(evaluator: Evaluator, sample: Any, cfg: Any, hw: tuple[int, int]) -> list[np.ndarray] | None:
    """``[label map]`` of one labelled sample's truth objects when ``evaluator`` matches objects, else None (what
    :meth:`Evaluator.update` takes as ``objects`` for a batch of that one image)."""
    if not evaluator.instance:
        return None
    from seg_toolkit.data import load_objects  # lazy: data imports heavier modules

    return [load_objects(sample, cfg, tuple(int(x) for x in hw))]
