"""What the report shows: the run folder's files (config, ``oof_summary.json``, ``cv.json``,
the folds' ``done.json``, ``ensemble.json``) gathered into one :class:`ReportData`.

The training data is needed only to (re)make the OOF summary and to draw the overlays. When
it cannot be read the summary on disk is used as it is (with a warning if it is older than
``cv.json`` or the OOF files) and :attr:`ReportData.data_problem` says why, in one sentence.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..budget_run import left_out_folds, run_folds
from ..config import Config, ConfigError
from ..data import DataError, Sample, load_train_samples
from ..plots import metric_label
from ..postprocess import tuned_elsewhere
from ..files import read_json
from ..run import Run
from .summary import Example, baseline_words, read_oof_summary, write_oof_summary

log = logging.getLogger(__name__)

__all__ = ["ReportData", "compute_report_data", "per_class_rows"]

#: Best / worst images kept when the report has to write the summary itself (as many as it shows, at least).
SUMMARY_EXAMPLES = 8


@dataclass
class ReportData:
    """What the report shows, read from the run folder (and the training data when it is there)."""

    run: Run
    cfg: Config
    metric: str
    image_score: str  # how the per-image score that ranks the examples is defined
    class_names: list[str]
    class_colors: np.ndarray  # uint8 (C, 3)
    folds: list[int]
    n_images: int
    score: float  # recomputed from the OOF files
    baseline_empty: float
    pixel_accuracy: float
    per_class_iou: list[float]
    per_class_dice: list[float]
    confusion: np.ndarray  # multiclass (C, C) rows = truth; binary / multilabel (C, 2, 2) [[TN, FP], [FN, TP]]
    true_pixels: np.ndarray  # (C,) truth pixels per class
    pred_pixels: np.ndarray  # (C,) predicted pixels per class (non-void pixels only)
    valid_pixels: np.ndarray  # (C,) non-void pixels (the denominator of the frequencies)
    void_pixels: int  # multiclass: void pixels; binary / multilabel: (pixel, channel) pairs that are void
    images_true: np.ndarray  # (C,) images whose truth has the class
    images_pred: np.ndarray  # (C,) images whose prediction has the class
    image_level: Optional[np.ndarray]  # binary / multilabel: (C, 2, 2) images, truth empty/non-empty x prediction
    per_fold: list[dict[str, Any]]
    cv: Optional[dict[str, Any]]  # cv.json (None when absent)
    ensemble: Optional[dict[str, Any]]  # ensemble.json of an ensemble run (None for a trained run)
    best: list[Example] = field(default_factory=list)
    worst: list[Example] = field(default_factory=list)
    n_unscored: int = 0  # images whose per-image score is NaN (all void, or skipped empties)
    unreadable: list[str] = field(default_factory=list)  # targets that could not be read (DataError messages)
    samples: Optional[dict[str, Sample]] = None  # the training samples by id; None when the data cannot be read
    data_problem: Optional[str] = None  # why the images cannot be shown (one sentence), None when they can
    warnings: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.run.dir

    @property
    def task(self) -> str:
        return self.cfg.data.task

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary of the page (``report.json``)."""
        def f(x: Any) -> Any:
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "run_dir": str(self.run_dir), "task": self.task, "metric": self.metric, "image_score": self.image_score,
            "score": f(self.score), "baseline_empty": f(self.baseline_empty), "pixel_accuracy": f(self.pixel_accuracy),
            "n_images": self.n_images, "folds": self.folds, "per_fold": self.per_fold, "class_names": self.class_names,
            "per_class": [{k: f(v) for k, v in row.items()} for row in per_class_rows(self)],
            "confusion": self.confusion.tolist(),
            "image_level": None if self.image_level is None else self.image_level.tolist(),
            "void_pixels": self.void_pixels, "best": [vars(e) for e in self.best], "worst": [vars(e) for e in self.worst],
            "n_unscored": self.n_unscored, "unreadable": self.unreadable, "data_problem": self.data_problem,
            "warnings": self.warnings,
        }


def per_class_rows(d: ReportData) -> list[dict[str, Any]]:
    """The per-class table: IoU, dice, pixel frequencies, image counts (and image-level counts for sigmoid tasks)."""
    rows = []
    for c, name in enumerate(d.class_names):
        valid = d.valid_pixels[c]
        row: dict[str, Any] = {
            "class": name, "iou": float(d.per_class_iou[c]), "dice": float(d.per_class_dice[c]),
            "true_frequency": float(d.true_pixels[c] / valid) if valid else math.nan,
            "pred_frequency": float(d.pred_pixels[c] / valid) if valid else math.nan,
            "true_pixels": int(d.true_pixels[c]), "pred_pixels": int(d.pred_pixels[c]),
            "images_with_class": int(d.images_true[c]), "images_predicted": int(d.images_pred[c]),
        }
        if d.image_level is not None:
            (tn, fp), (fn, tp) = d.image_level[c].tolist()
            row.update(empty_images=tn + fp, empty_correct=tn, empty_false_positive=fp,
                       missed_images=fn, found_images=tp)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- reading the run


def _samples(cfg: Config) -> tuple[Optional[list[Sample]], Optional[str]]:
    """The training samples, or None and one sentence naming the folder that cannot be read."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        return None, f"the training data folder {root.resolve()} (data.root) is not there"
    try:
        return load_train_samples(cfg), None
    except (DataError, ConfigError) as e:
        return None, f"the training data under {root.resolve()} (data.root) cannot be read: {e}"


def _stale_reason(run: Run) -> Optional[str]:
    """Why ``oof_summary.json`` is older than what it summarises, or None."""
    t = run.oof_summary_json.stat().st_mtime
    if run.cv_json.is_file() and run.cv_json.stat().st_mtime > t:
        return f"{run.cv_json.name} is newer"
    if run.oof_dir.is_dir() and any(p.stat().st_mtime > t for p in run.oof_dir.glob("*.npy")):
        return f"OOF files in {run.oof_dir.name}/ are newer"
    return None


def _per_fold(run: Run, cv: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("oof_score", "best_val_score", "best_epoch", "epochs_run", "stopped_early", "n_train", "n_valid")
    if not run.is_ensemble:
        return [{"fold": k, **{key: info.get(key) for key in keys}}
                for k, info in zip(run.trained_folds(), run.fold_summaries())]
    cv = cv or {}
    return [{"fold": int(k), "oof_score": s} for k, s in zip(cv.get("folds", []), cv.get("fold_scores", []))]


def _summary(run: Run, cfg: Config, samples: Optional[list[Sample]], problem: Optional[str],
             n_examples: int) -> tuple[dict[str, Any], list[str]]:
    """``oof_summary.json``, (re)written first when it is absent, stale or too short and the data can be read."""
    summary = read_oof_summary(run)
    stale = _stale_reason(run) if summary is not None else None
    if summary is not None and stale is None:
        # written with other metric settings (`seg-toolkit cv --set metric.threshold=0.4`): its numbers and ranking
        # would sit beside overlays, titles and a setup table drawn with the run's own
        from ..evaluator import resolve_metric_name

        now = (resolve_metric_name(cfg.metric.name, cfg.data.task), float(cfg.metric.threshold), cfg.metric.empty_score)
        was = (summary.get("metric"), summary.get("threshold"), summary.get("empty_score"))
        if was != now:
            stale = f"made with metric {was[0]}, threshold {was[1]}, empty_score {was[2]}; the run's config says {now}"

    short = summary is not None and summary.get("n_examples", 0) < n_examples
    if summary is None or ((stale or short) and samples is not None):
        if samples is None:
            raise DataError(
                f"{run.oof_summary_json}: not found (or of an older version), and it cannot be made without the "
                f"training data: {problem}; restore data.root in {run.config_yaml} (or run `seg-toolkit cv` where the "
                f"data is) and run `seg-toolkit report {run.dir}` again")
        why = "absent" if summary is None else (f"stale ({stale})" if stale else f"holds fewer than {n_examples} examples")
        log.info("report: %s is %s; computing it from the OOF files and the targets", run.oof_summary_json, why)
        return write_oof_summary(run, cfg, samples, max(n_examples, SUMMARY_EXAMPLES)), []
    if stale:
        return summary, [f"{run.oof_summary_json.name} is older than what it summarises ({stale}) and the training "
                         "data cannot be read to remake it: the numbers below may be out of date"]
    return summary, []


def compute_report_data(run_dir: Path, n_examples: int = 4) -> ReportData:
    """Gather a run folder's numbers for the report (see the module doc).

    ``oof_summary.json`` is written first when it is absent (or stale) and the training data
    can be read; absent with the data unreadable is a :class:`DataError` saying what to run.
    """
    run = Run(run_dir)
    cfg = run.config()
    samples, problem = _samples(cfg)
    s, warnings = _summary(run, cfg, samples, problem, n_examples)
    cv = read_json(run.cv_json)
    d = ReportData(
        run=run, cfg=cfg, metric=s["metric"], image_score=s["image_score"], class_names=s["class_names"],
        class_colors=np.asarray(s["class_colors"], np.uint8), folds=s["folds"], n_images=s["n_images"],
        score=s["score"], baseline_empty=s["baseline_empty"], pixel_accuracy=s["pixel_accuracy"],
        per_class_iou=s["per_class_iou"], per_class_dice=s["per_class_dice"],
        confusion=np.asarray(s["confusion"], np.int64), true_pixels=np.asarray(s["true_pixels"], np.int64),
        pred_pixels=np.asarray(s["pred_pixels"], np.int64), valid_pixels=np.asarray(s["valid_pixels"], np.int64),
        void_pixels=s["void_pixels"], images_true=np.asarray(s["images_true"], np.int64),
        images_pred=np.asarray(s["images_pred"], np.int64),
        image_level=None if s["image_level"] is None else np.asarray(s["image_level"], np.int64),
        per_fold=_per_fold(run, cv), cv=cv, ensemble=read_json(run.ensemble_json) if run.is_ensemble else None,
        best=[Example(**e) for e in s["best"][:max(n_examples, 0)]],
        worst=[Example(**e) for e in s["worst"][:max(n_examples, 0)]],
        n_unscored=s["n_unscored"], unreadable=s["unreadable"],
        samples=None if samples is None else {x.id: x for x in samples}, data_problem=problem,
    )
    d.warnings = warnings + _warnings(d)
    for w in d.warnings:
        log.warning("report: %s", w)
    return d


def _warnings(d: ReportData) -> list[str]:
    out = []
    expected = sorted(run_folds(d.cfg, d.run))
    if d.folds != expected:
        todo = [k for k in expected if k not in d.folds]
        out.append(f"only fold(s) {d.folds} are complete; {todo} are missing, so the CV covers {d.n_images} images")
    left_out = sorted(left_out_folds(d.cfg, d.run))
    if left_out:
        out.append(f"fold(s) {left_out} were left out: train.time_budget {d.cfg.train.time_budget} gave "
                   f"train.min_fold_epochs={d.cfg.train.min_fold_epochs} epochs to {len(expected)} fold(s) only, so the CV "
                   f"covers {d.n_images} images and the submission averages {len(expected)} model(s)")
    if d.unreadable:
        out.append(f"{len(d.unreadable)} target(s) could not be read and are left out, e.g. {d.unreadable[0]}")
    if not math.isnan(d.score) and not math.isnan(d.baseline_empty) and d.score <= d.baseline_empty:
        named, what = baseline_words(d.task, d.class_names)
        out.append(
            f"the CV {metric_label(d.metric)} {d.score:.4f} is not above the {named} {d.baseline_empty:.4f}: "
            f"the model does no better than predicting {what}"
        )
    if d.cv is not None and d.cv.get("score") is not None and d.folds == list(d.cv.get("folds", [])):
        old = float(d.cv["score"])
        if not (math.isnan(old) and math.isnan(d.score)) and abs(old - d.score) > 1e-6:
            out.append(f"cv.json says {old:.6f} but the OOF files score {d.score:.6f}; cv.json is stale (run `seg-toolkit cv`)")
    tuned = read_json(d.run.postprocess_json)  # cv_json_score: the OOF files' score when post-processing was tuned on them
    elsewhere = tuned_elsewhere(tuned, d.folds, d.score)
    if elsewhere == "folds":
        out.append(f"postprocess.json was tuned on the OOF files of fold(s) {sorted(tuned['folds'])}, these are of fold(s) "
                   f"{d.folds}: its parameters and the tuned score shown are of those; run `seg-toolkit tune` (predict "
                   "applies them as they are)")
    elif elsewhere == "score":
        out.append(f"postprocess.json was tuned on OOF files that scored {tuned['cv_json_score']:.6f} and these score "
                   f"{d.score:.6f}: its parameters (and the tuned score shown) fit other probabilities; run `seg-toolkit "
                   "tune` (predict applies them as they are)")
    never = [d.class_names[c] for c in range(len(d.class_names)) if d.true_pixels[c] > 0 and d.pred_pixels[c] == 0]
    if never:
        out.append(f"class(es) {', '.join(never)} occur in the truth but are never predicted")
    if d.task == "multiclass" and d.pred_pixels.sum() > 0:
        top = int(np.argmax(d.pred_pixels))
        share = d.pred_pixels[top] / d.pred_pixels.sum()
        if share > 0.99 and (d.true_pixels > 0).sum() > 1:
            out.append(f"the model predicts {d.class_names[top]!r} for {share:.1%} of the pixels (collapsed to one class)")
    if d.n_unscored:
        out.append(f"{d.n_unscored} image(s) have no per-image score (all void, or empty truth and prediction with "
                   "empty_score=skip) and are not ranked")
    return out
