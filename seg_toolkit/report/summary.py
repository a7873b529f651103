"""The OOF summary: everything the report shows that needs the training targets, in one file.

:func:`compute_oof_summary` scores every OOF file of the completed folds against its target in
one streaming pass (one image in memory at a time; only the ``n`` best and worst images are
kept): the CV score of ``cv.json`` (:func:`~seg_toolkit.cv.compute_cv` takes it from here) and
what the report shows. :func:`write_oof_summary` writes it as ``oof_summary.json`` into the run
folder, so the report can be rendered later from the run folder alone, with the data folder gone.
Predictions are made as every score makes them (argmax for multiclass, ``p >= metric.threshold``
otherwise).

``oof_summary.json`` holds (NaN written as null)::

    version, task, metric, threshold, empty_score, image_score (how an image is ranked),
    class_names, class_colors ([r, g, b] per class: the classes CSV may live in the data folder),
    folds, fold_scores (each fold's score on its own OOF images; null: none read),
    n_images, n_unscored, score, baseline_empty, pixel_accuracy,
    per_class_iou, per_class_dice, confusion (multiclass (C, C) rows = truth;
    otherwise (C, 2, 2) [[TN, FP], [FN, TP]]), image_level (binary / multilabel: (C, 2, 2)
    images, truth empty/non-empty x prediction empty/non-empty; null for multiclass),
    true_pixels, pred_pixels, valid_pixels, images_true, images_pred (per class),
    void_pixels, n_examples, best, worst ([{id, fold, score, true_pixels, error_pixels}],
    best first / worst first), unreadable (messages of targets that could not be read)
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import IGNORE_INDEX, Config
from ..data import DataError, Sample, class_colors, class_names
from ..data.scored import scored_target
from ..data.dataset import target_to_tensor
from ..evaluator import Evaluator, hard_prediction, scored_columns, truth_objects
from ..instance_metrics import INSTANCE_METRICS
from ..metrics import PER_IMAGE_METRICS, TGS_METRICS, scores_from_counts
from ..plots import metric_label
from ..files import nan_if_null, read_json, read_oof, write_json
from ..run import Run
from ..tensors import uint8_to_probs

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_VERSION", "Example", "baseline_words", "predict_mask", "image_score_name", "compute_oof_summary",
           "save_oof_summary", "write_oof_summary", "read_oof_summary"]

SUMMARY_VERSION = 1


@dataclass
class Example:
    """One OOF image picked for the overlays (best or worst by per-image score)."""

    id: str
    fold: int
    score: float
    true_pixels: int  # foreground pixels of the truth (multiclass: not class 0), the tie-break for "best"
    error_pixels: int  # wrong pixels (binary / multilabel: FP + FN over channels), the tie-break for "worst"
    # object-matching metrics: [truth objects, predicted objects, matched at IoU > 0.5]; the tie-breaks are then the
    # truth objects ("best") and the objects missed or unmatched ("worst"). None for pixel metrics (and older summaries)
    objects: Optional[list[int]] = None


def predict_mask(q: np.ndarray, task: str, threshold: float, min_area: int = 0) -> torch.Tensor:
    """Hard prediction of a uint8 OOF array: ``(1, H, W)`` label map or ``(1, C, H, W)`` mask, as the CV score makes it
    (``min_area``: the submission's object floor, :func:`~seg_toolkit.postprocess.area_floor`)."""
    if task == "multiclass":  # q / 255 keeps the order and the ties: the argmax of the stored bytes, 3.8x faster
        return hard_prediction(torch.from_numpy(q)[None], task, threshold)
    return hard_prediction(torch.from_numpy(uint8_to_probs(q))[None], task, threshold, min_area)


def baseline_words(task: str, names: list[str]) -> tuple[str, str]:
    """How ``baseline_empty`` (the score of a zero prediction) reads: its name, and what it predicts. Multiclass
    class 0 is a class like the others in CamVid (Sky), so its baseline is no "predicting nothing"."""
    if task == "multiclass":
        return f"all-{names[0]} baseline", f"every pixel {names[0]} (class 0)"
    return "all-empty baseline", "nothing"


def image_score_name(metric: str, cfg: Config) -> str:
    """How the per-image score that ranks the examples is defined, in words."""
    which = f" of classes {list(cfg.metric.classes)}" if cfg.metric.classes and metric != "pixel_accuracy" else ""
    if metric in PER_IMAGE_METRICS:
        how = "" if cfg.data.num_classes == 1 else f", the mean over its classes{which}"
        empty = "" if metric in TGS_METRICS else f" (empty_score={cfg.metric.empty_score})"
        return f"per-image {metric_label(metric)}{how}{empty}"
    if metric in INSTANCE_METRICS:
        return f"per-image {metric_label(metric)}: its 8-connected objects matched with the truth's, over IoU 0.50..0.95"
    if metric in ("miou", "global_dice"):
        return f"per-image mean {'IoU' if metric == 'miou' else 'dice'} over the classes{which} in its truth or prediction"
    return "per-image pixel accuracy"


def _per_image_score(counts: Any, metric: str, empty_score: str, task: str, cols: np.ndarray | None = None) -> float:
    """One image's score; ``cols``: the classes it averages (``metric.classes``, as the CV score; None: all)."""
    if metric in PER_IMAGE_METRICS:
        row = scores_from_counts(counts, metric, empty_score)[0]
    elif metric in ("miou", "global_dice"):
        row = scores_from_counts(counts, "iou" if metric == "miou" else "dice", "skip")[0]
    else:  # pixel accuracy
        tp, fp, fn, n = (np.asarray(x[0], np.int64) for x in counts)
        if task == "multiclass":
            total, correct = int(n[0]), int(tp.sum())
        else:
            total, correct = int(n.sum()), int((n - fp - fn).sum())
        return correct / total if total else math.nan
    if cols is not None:
        row = row[cols]
    row = row[~np.isnan(row)]
    return float(row.mean()) if row.size else math.nan


class _TopN:
    """The ``n`` largest items by key (ties: the larger id), without keeping the rest."""

    def __init__(self, n: int) -> None:
        self.n, self.heap = n, []

    def push(self, key: tuple, item: Example) -> None:
        if self.n <= 0:
            return
        entry = (key, item.id, item)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def items(self) -> list[Example]:
        return [e[2] for e in sorted(self.heap, key=lambda e: e[:2], reverse=True)]


def compute_oof_summary(run: Run, cfg: Config, samples: list[Sample], n_examples: int = 8,
                        strict: bool = False) -> dict[str, Any]:
    """The streaming pass over ``run.oof_items(samples)`` and their targets (see the module doc); NaN where the file
    holds null. A target that cannot be read is listed in ``unreadable`` and left out, or with ``strict`` raises its
    :class:`DataError` (a CV score leaves no image out)."""
    task, n_cls = cfg.data.task, cfg.data.num_classes
    evaluator = Evaluator.of(cfg)
    baseline = Evaluator(cfg.metric, task, n_cls)
    metric = evaluator.metric
    true_px, pred_px, valid_px, img_true, img_pred = (np.zeros(n_cls, np.int64) for _ in range(5))
    image_level = np.zeros((n_cls, 2, 2), np.int64) if task != "multiclass" else None
    void_px, n_images, n_unscored = 0, 0, 0
    best, worst = _TopN(n_examples), _TopN(n_examples)
    unreadable: list[str] = []

    for s, k, path in tqdm(run.oof_items(samples), desc="CV score", leave=False, disable=None):
        q = read_oof(path)
        if q.ndim != 3 or q.shape[0] != n_cls:
            raise ValueError(f"{path}: OOF array has shape {q.shape}; expected ({n_cls}, H, W) for data.num_classes={n_cls}")
        try:
            target = target_to_tensor(scored_target(s, cfg, tuple(q.shape[-2:])), task)[None]
        except DataError as e:  # the data changed since training: report it, score the rest
            if strict:
                raise
            unreadable.append(str(e))
            continue
        pred = predict_mask(q, task, cfg.metric.threshold, evaluator.min_area)
        objects = truth_objects(evaluator, s, cfg, tuple(q.shape[-2:]))
        added = evaluator.update_masks(pred, target, objects, group=k)
        empty = torch.zeros_like(target) if task == "multiclass" else torch.zeros(target.shape, dtype=torch.uint8)
        baseline.update_masks(empty, target, objects)
        counts = evaluator.last_counts
        tp, fp, fn, nv = (np.asarray(x[0], np.int64) for x in counts)
        true_px += tp + fn
        pred_px += tp + fp
        valid_px += nv
        has_true, has_pred = (tp + fn) > 0, (tp + fp) > 0
        img_true += has_true
        img_pred += has_pred
        if image_level is not None:
            image_level[np.arange(n_cls), has_true.astype(int), has_pred.astype(int)] += 1
        void_px += int((target == IGNORE_INDEX).sum())
        n_images += 1
        if objects is not None:  # an object-matching metric: the image's score as the Evaluator matched its objects
            score = added[0][0]
        else:
            score = _per_image_score(counts, metric, cfg.metric.empty_score, task, scored_columns(cfg.metric, task))
        if math.isnan(score):
            n_unscored += 1
            continue
        if task == "multiclass":  # class 0 is usually background; a wrong pixel is one FP (of the predicted class)
            ex = Example(s.id, k, score, int((tp + fn)[1:].sum()), int(fp.sum()))
        else:
            ex = Example(s.id, k, score, int((tp + fn).sum()), int((fp + fn).sum()))
        # an image empty in truth and prediction (multiclass: all class 0, the background of most data) is perfect
        # by definition and is counted in the table; the "best" overlays show images with something in them first
        first = 1 if task == "multiclass" else 0
        content = bool(has_true[first:].any() or has_pred[first:].any())
        if objects is not None:  # ties among object scores: the most truth objects / the most objects wrong
            n_truth, n_pred, matched = evaluator.object_counts[-1]
            ex.objects = [n_truth, n_pred, matched]
            best.push((content, score, n_truth), ex)
            worst.push((-score, n_truth + n_pred - 2 * matched), ex)
            continue
        best.push((content, score, ex.true_pixels), ex)
        worst.push((-score, ex.error_pixels), ex)
    if n_images == 0:
        if not unreadable:  # no OOF item at all: folds.csv's ids and the data's have nothing in common
            raise DataError(f"{run.dir}: no OOF file of a finished fold belongs to a training image of {cfg.data_path('')} "
                            f"({run.folds_csv.name} was made for other data?)")
        raise DataError(f"{run.dir}: no target of the OOF images could be read, e.g. {unreadable[0]}")

    result = evaluator.compute()
    folds, scored = run.completed_folds(), set(evaluator.groups())
    confusion = np.asarray(result["confusion"], np.int64)
    if task == "binary":
        confusion = confusion.reshape(1, 2, 2)
    return {
        "version": SUMMARY_VERSION,
        "task": task, "metric": metric, "threshold": float(cfg.metric.threshold), "empty_score": cfg.metric.empty_score,
        "image_score": image_score_name(metric, cfg),
        "class_names": class_names(cfg), "class_colors": class_colors(cfg).tolist(),
        "folds": folds, "fold_scores": [float(evaluator.compute([k])["score"]) if k in scored else math.nan
                                        for k in folds],
        "n_images": n_images, "n_unscored": n_unscored,
        "score": float(result["score"]), "baseline_empty": float(baseline.compute()["score"]),
        "pixel_accuracy": float(result["pixel_accuracy"]),
        "per_class_iou": [float(x) for x in result["per_class_iou"]],
        "per_class_dice": [float(x) for x in result["per_class_dice"]],
        "confusion": confusion.tolist(), "image_level": None if image_level is None else image_level.tolist(),
        "true_pixels": true_px.tolist(), "pred_pixels": pred_px.tolist(), "valid_pixels": valid_px.tolist(),
        "images_true": img_true.tolist(), "images_pred": img_pred.tolist(), "void_pixels": void_px,
        "n_examples": n_examples,
        "best": [asdict(e) for e in best.items()], "worst": [asdict(e) for e in worst.items()],
        "unreadable": unreadable,
    }


def write_oof_summary(run: Run, cfg: Config, samples: list[Sample], n_examples: int = 8) -> dict[str, Any]:
    """Compute the OOF summary (:func:`compute_oof_summary`), write ``run.oof_summary_json`` and return it.

    ``samples``: the training samples (``load_train_samples(cfg)``); ``n_examples``: how many
    best and how many worst images to keep for the report's overlays.
    """
    return save_oof_summary(run, compute_oof_summary(run, cfg, samples, n_examples))


def save_oof_summary(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary`` (:func:`compute_oof_summary`) as ``run.oof_summary_json`` (NaN as null) and return it."""
    write_json(run.oof_summary_json, summary)  # NaN as null: read_oof_summary reads it back
    log.info("OOF summary written to %s", run.oof_summary_json)
    return summary


def read_oof_summary(run: Run) -> Optional[dict[str, Any]]:
    """``oof_summary.json`` (None when absent or of another version); nulls of float fields back to NaN."""
    s = read_json(run.oof_summary_json)
    if s is None:
        return None
    if s.get("version") != SUMMARY_VERSION:
        log.warning("%s: version %r, expected %d; it is made again when the data can be read",
                    run.oof_summary_json, s.get("version"), SUMMARY_VERSION)
        return None
    return _nulls_to_nan(s)


def _nulls_to_nan(s: dict[str, Any]) -> dict[str, Any]:
    """The summary with the float fields that JSON holds as null (NaN) back to NaN."""
    s = dict(s)
    for key in ("score", "baseline_empty", "pixel_accuracy"):
        s[key] = nan_if_null(s[key])
    for key in ("per_class_iou", "per_class_dice", "fold_scores"):
        s[key] = [nan_if_null(x) for x in s.get(key) or []]
    return s
