"""``seg-toolkit report RUN_DIR``: one self-contained HTML page about a trained run.

``build_report(run_dir)`` writes ``run_dir/report/``:

* ``index.html``: CV summary, per-class table, confusion, learning curves and overlays of
  the best and worst OOF images; plotly.js is inlined and the overlays are base64 PNGs,
  so the page opens offline and can be mailed as one file;
* ``confusion.png``, ``learning_curves.png``, ``overlays_best.png``, ``overlays_worst.png``:
  the same pictures for reading the folder on a remote machine;
* ``report.json``: the numbers behind the page (confusion counts, per-class table, the
  per-image scores of the examples).

Everything is computed in one streaming pass over the OOF files of the completed folds
(one image in memory at a time); only the ids of the ``n`` best and worst images are kept
and their files are read again for the overlays. Predictions are made exactly as the CV
score does (argmax for multiclass, ``p >= metric.threshold`` otherwise), so the score here
equals ``cv.json``'s unless that file is stale.
"""

from __future__ import annotations

import base64
import heapq
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import IGNORE_INDEX, Config, load_config
from .data import DataError, Sample, class_colors, class_names, load_target, load_train_samples, read_image
from .data.dataset import target_to_tensor
from .data.folds import fold_of_ids
from .train import completed_folds
from .metrics import PER_IMAGE_METRICS, Evaluator, image_counts, scores_from_counts
from .plots import atomic_write, figure_png, learning_curves, learning_curves_png, metric_label, new_figure
from .tensors import uint8_to_probs

log = logging.getLogger(__name__)

__all__ = ["Example", "ReportData", "compute_report_data", "build_report", "render_overlays", "confusion_figure", "confusion_png"]

VOID_COLOR = (128, 128, 128)
FILL_ALPHA = 0.4
MIN_PANEL_HEIGHT = 200  # tiny images are upscaled (nearest neighbour) to at least this many pixels
MAX_PANEL_HEIGHT = 512
MAX_PANEL_WIDTH = 1600


@dataclass
class Example:
    """One OOF image picked for the overlays (best or worst by per-image score)."""

    id: str
    fold: int
    score: float
    true_pixels: int  # foreground pixels of the truth (multiclass: not class 0), the tie-break for "best"
    error_pixels: int  # wrong pixels (binary / multilabel: FP + FN over channels), the tie-break for "worst"


@dataclass
class ReportData:
    """What the report shows, computed from the run folder and the training data."""

    run_dir: Path
    cfg: Config
    metric: str
    image_score: str  # how the per-image score that ranks the examples is defined
    class_names: list[str]
    folds: list[int]
    fold_of: dict[str, int]
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
    cv: Optional[dict[str, Any]]  # cv.json as written by the trainer (None when absent)
    best: list[Example] = field(default_factory=list)
    worst: list[Example] = field(default_factory=list)
    n_unscored: int = 0  # images whose per-image score is NaN (all void, or skipped empties)
    missing: list[str] = field(default_factory=list)  # ids of completed folds without an OOF file
    unreadable: list[str] = field(default_factory=list)  # targets that could not be read (DataError messages)
    warnings: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.cfg.data.task

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (``report.json``)."""
        def f(x: Any) -> Any:
            if isinstance(x, float) and math.isnan(x):
                return None
            return x

        return {
            "run_dir": str(self.run_dir),
            "task": self.task,
            "metric": self.metric,
            "image_score": self.image_score,
            "score": f(self.score),
            "baseline_empty": f(self.baseline_empty),
            "pixel_accuracy": f(self.pixel_accuracy),
            "n_images": self.n_images,
            "folds": self.folds,
            "per_fold": self.per_fold,
            "class_names": self.class_names,
            "per_class": [
                {k: f(v) for k, v in row.items()} for row in _per_class_rows(self)
            ],
            "confusion": self.confusion.tolist(),
            "image_level": None if self.image_level is None else self.image_level.tolist(),
            "void_pixels": self.void_pixels,
            "best": [vars(e) for e in self.best],
            "worst": [vars(e) for e in self.worst],
            "n_unscored": self.n_unscored,
            "missing": self.missing,
            "unreadable": self.unreadable,
            "warnings": self.warnings,
        }


# ----------------------------------------------------------------------------- the streaming pass


def _load_run(run_dir: Path) -> tuple[Config, list[Sample]]:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not found; is {run_dir} a run folder (runs/<experiment>/)?")
    cfg = load_config(cfg_path)
    try:
        samples = load_train_samples(cfg)
    except DataError as e:
        raise DataError(
            f"report: cannot read the training data of {run_dir}: {e} (data.root in {cfg_path} is "
            f"{cfg.data.root!r}; a relative root is read from the current directory)"
        ) from None
    return cfg, samples


def _image_score_name(metric: str, cfg: Config) -> str:
    if metric in PER_IMAGE_METRICS:
        how = "" if cfg.data.num_classes == 1 else ", the mean over its classes"
        empty = "" if metric == "tgs_map" else f" (empty_score={cfg.metric.empty_score})"
        return f"per-image {metric_label(metric)}{how}{empty}"
    if metric == "miou":
        return "per-image mean IoU over the classes in its truth or prediction"
    return "per-image pixel accuracy"


def _predict(q: np.ndarray, task: str, threshold: float) -> torch.Tensor:
    """Hard prediction ``(1, H, W)`` label map or ``(1, C, H, W)`` mask, as the CV score makes it."""
    probs = torch.from_numpy(uint8_to_probs(q))[None]
    if task == "multiclass":
        return probs.argmax(1)
    return probs >= threshold


def _per_image_score(counts: Any, metric: str, empty_score: str, task: str) -> float:
    if metric in PER_IMAGE_METRICS:
        row = scores_from_counts(counts, metric, empty_score)[0]
    elif metric == "miou":
        row = scores_from_counts(counts, "iou", "skip")[0]
    else:  # pixel accuracy
        tp, fp, fn, n = (np.asarray(x[0], np.int64) for x in counts)
        if task == "multiclass":
            total, correct = int(n[0]), int(tp.sum())
        else:
            total, correct = int(n.sum()), int((n - fp - fn).sum())
        return correct / total if total else math.nan
    row = row[~np.isnan(row)]
    return float(row.mean()) if row.size else math.nan


class _TopN:
    """The ``n`` largest items by key, without keeping the rest."""

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


def compute_report_data(run_dir: Path, n_examples: int = 4) -> ReportData:
    """Read a run folder and score its OOF files in one streaming pass (see the module doc)."""
    run_dir = Path(run_dir)
    cfg, samples = _load_run(run_dir)
    return _compute(run_dir, n_examples, cfg, samples)


def _compute(run_dir: Path, n_examples: int, cfg: Config, samples: list[Sample]) -> ReportData:
    task, n_cls = cfg.data.task, cfg.data.num_classes
    fold_of = fold_of_ids(run_dir / "folds.csv")
    done = completed_folds(run_dir)
    if not done:
        raise FileNotFoundError(f"{run_dir}: no completed fold (fold_*/done.json); train first")
    evaluator = Evaluator(cfg.metric, task, n_cls)
    baseline = Evaluator(cfg.metric, task, n_cls)
    metric = evaluator.metric

    true_px = np.zeros(n_cls, np.int64)
    pred_px = np.zeros(n_cls, np.int64)
    valid_px = np.zeros(n_cls, np.int64)
    img_true = np.zeros(n_cls, np.int64)
    img_pred = np.zeros(n_cls, np.int64)
    image_level = np.zeros((n_cls, 2, 2), np.int64) if task != "multiclass" else None
    void_px, n_images, n_unscored = 0, 0, 0
    best, worst = _TopN(n_examples), _TopN(n_examples)
    missing: list[str] = []
    unreadable: list[str] = []

    chosen = [s for s in samples if fold_of.get(s.id) in done]
    chosen.sort(key=lambda s: fold_of[s.id])  # stable: file order within a fold
    for s in tqdm(chosen, desc="report", leave=False, disable=None):
        k = fold_of[s.id]
        path = run_dir / f"fold_{k}" / "oof" / f"{s.id}.npy"
        if not path.is_file():
            missing.append(s.id)
            continue
        q = np.load(path)
        if q.ndim != 3 or q.shape[0] != n_cls:
            raise ValueError(f"{path}: OOF array has shape {q.shape}; expected ({n_cls}, H, W) for data.num_classes={n_cls}")
        try:
            target = target_to_tensor(load_target(s, cfg, tuple(q.shape[-2:])), task)[None]
        except DataError as e:  # the data changed since training: report it, score the rest
            unreadable.append(str(e))
            continue
        pred = _predict(q, task, cfg.metric.threshold)
        evaluator.update_masks(pred, target)
        empty = torch.zeros_like(target) if task == "multiclass" else torch.zeros(target.shape, dtype=torch.uint8)
        baseline.update_masks(empty, target)
        counts = image_counts(pred, target, n_cls)
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
        score = _per_image_score(counts, metric, cfg.metric.empty_score, task)
        if math.isnan(score):
            n_unscored += 1
            continue
        if task == "multiclass":  # class 0 is usually background; a wrong pixel is one FP (of the predicted class)
            ex = Example(s.id, k, score, int((tp + fn)[1:].sum()), int(fp.sum()))
        else:
            ex = Example(s.id, k, score, int((tp + fn).sum()), int((fp + fn).sum()))
        # binary / multilabel: an image empty in truth and prediction is perfect by definition and is
        # counted in the table; the "best" overlays show images with something in them first
        content = task == "multiclass" or bool(has_true.any() or has_pred.any())
        best.push((content, score, ex.true_pixels), ex)
        worst.push((-score, ex.error_pixels), ex)
    if n_images == 0:
        raise FileNotFoundError(f"{run_dir}: the completed folds {done} have no OOF files (fold_*/oof/<id>.npy)")

    result = evaluator.compute()
    confusion = np.asarray(result["confusion"], np.int64)
    if task == "binary":
        confusion = confusion.reshape(1, 2, 2)
    cv = _read_json(run_dir / "cv.json")
    per_fold = []
    for k in done:
        info = _read_json(run_dir / f"fold_{k}" / "done.json") or {}
        per_fold.append({"fold": k, **{key: info.get(key) for key in
                                        ("oof_score", "best_val_score", "best_epoch", "epochs_run", "n_train", "n_valid")}})
    data = ReportData(
        run_dir=run_dir, cfg=cfg, metric=metric, image_score=_image_score_name(metric, cfg),
        class_names=class_names(cfg), folds=done, fold_of=fold_of, n_images=n_images,
        score=float(result["score"]), baseline_empty=float(baseline.compute()["score"]),
        pixel_accuracy=float(result["pixel_accuracy"]), per_class_iou=list(result["per_class_iou"]),
        per_class_dice=list(result["per_class_dice"]), confusion=confusion, true_pixels=true_px,
        pred_pixels=pred_px, valid_pixels=valid_px, void_pixels=void_px, images_true=img_true,
        images_pred=img_pred, image_level=image_level, per_fold=per_fold, cv=cv,
        best=best.items(), worst=worst.items(), n_unscored=n_unscored, missing=missing, unreadable=unreadable,
    )
    data.warnings = _warnings(data)
    for w in data.warnings:
        log.warning("report: %s", w)
    return data


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        log.warning("report: cannot read %s (%s)", path, e)
        return None


def _warnings(d: ReportData) -> list[str]:
    out = []
    n_splits = d.cfg.folds.n_splits
    expected = sorted(d.cfg.folds.only) or list(range(n_splits))
    if d.folds != expected:
        todo = [k for k in expected if k not in d.folds]
        out.append(f"only fold(s) {d.folds} are complete; {todo} are missing, so the CV covers {d.n_images} images")
    if d.missing:
        out.append(f"{len(d.missing)} image(s) of completed folds have no OOF file, e.g. {d.missing[:3]}")
    if d.unreadable:
        out.append(f"{len(d.unreadable)} target(s) could not be read and are left out, e.g. {d.unreadable[0]}")
    if not math.isnan(d.score) and not math.isnan(d.baseline_empty) and d.score <= d.baseline_empty:
        out.append(
            f"the CV {metric_label(d.metric)} {d.score:.4f} is not above the all-empty baseline {d.baseline_empty:.4f}: "
            "the model does no better than predicting nothing"
        )
    if d.cv is not None and d.cv.get("score") is not None and d.folds == list(d.cv.get("folds", [])):
        old = float(d.cv["score"])
        if not (math.isnan(old) and math.isnan(d.score)) and abs(old - d.score) > 1e-6:
            out.append(f"cv.json says {old:.6f} but the OOF files score {d.score:.6f}; cv.json is stale (run `seg-toolkit cv`)")
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


def _per_class_rows(d: ReportData) -> list[dict[str, Any]]:
    rows = []
    for c, name in enumerate(d.class_names):
        valid = d.valid_pixels[c]
        row: dict[str, Any] = {
            "class": name,
            "iou": float(d.per_class_iou[c]),
            "dice": float(d.per_class_dice[c]),
            "true_frequency": float(d.true_pixels[c] / valid) if valid else math.nan,
            "pred_frequency": float(d.pred_pixels[c] / valid) if valid else math.nan,
            "true_pixels": int(d.true_pixels[c]),
            "pred_pixels": int(d.pred_pixels[c]),
            "images_with_class": int(d.images_true[c]),
            "images_predicted": int(d.images_pred[c]),
        }
        if d.image_level is not None:
            (tn, fp), (fn, tp) = d.image_level[c].tolist()
            row.update(empty_images=tn + fp, empty_correct=tn, empty_false_positive=fp,
                       missed_images=fn, found_images=tp)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- overlays


def _display_size(h: int, w: int) -> tuple[int, int]:
    """Panel size: tiny images upscaled by an integer factor to >= MIN_PANEL_HEIGHT, big ones shrunk."""
    s = float(math.ceil(MIN_PANEL_HEIGHT / h)) if h < MIN_PANEL_HEIGHT else 1.0
    if h * s > MAX_PANEL_HEIGHT:
        s = MAX_PANEL_HEIGHT / h
    if w * s > MAX_PANEL_WIDTH:
        s = MAX_PANEL_WIDTH / w
    return max(1, round(h * s)), max(1, round(w * s))


def _resize(arr: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == tuple(hw):
        return arr
    if arr.dtype == bool:
        return np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 127
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), method))


def _erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return mask | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion)."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def _paint(image: np.ndarray, masks: list[Optional[np.ndarray]], colors: np.ndarray,
           void: Optional[np.ndarray] = None) -> np.ndarray:
    """Alpha-blend class masks (bool, display size) over ``image``, outlined in full colour; void grey."""
    out = image.astype(np.float32)
    width = 2 if image.shape[0] >= 300 else 1
    layers = [(m, np.asarray(colors[c], np.float32)) for c, m in enumerate(masks) if m is not None and m.any()]
    if void is not None and void.any():
        layers.insert(0, (void, np.asarray(VOID_COLOR, np.float32)))
    for m, col in layers:
        out[m] = (1 - FILL_ALPHA) * out[m] + FILL_ALPHA * col
    for m, col in layers:  # a dark ring outside, the class colour inside: visible on any background
        out[_dilate(m) & ~m] = 0.25 * out[_dilate(m) & ~m]
        out[_outline(m, width)] = col
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _painted_classes(cfg: Config, names: list[str], colors: np.ndarray) -> list[bool]:
    """Which classes are drawn: all but an implied multiclass background (csv layout, or named so, or black)."""
    out = []
    for c, name in enumerate(names):
        skip = False
        if cfg.data.task == "multiclass" and c == 0:
            skip = (cfg.data.layout == "csv" or name.strip().lower().strip("_") in ("background", "bg", "backgrounds")
                    or tuple(int(v) for v in colors[0]) == (0, 0, 0))
        out.append(not skip)
    return out


def _example_panels(d: ReportData, samples: dict[str, Sample], ex: Example, colors: np.ndarray,
                    painted: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image, truth overlay and prediction overlay of one example, at display size."""
    cfg = d.cfg
    s = samples[ex.id]
    q = np.load(d.run_dir / f"fold_{ex.fold}" / "oof" / f"{ex.id}.npy")
    hw = tuple(q.shape[-2:])
    image = read_image(s.image, 3, cfg.data.max_image_pixels)
    if image.shape[:2] != hw:  # should not happen: OOF files are at the image's size
        image = _resize(image, hw, nearest=False)
    target = load_target(s, cfg, hw)
    pred = _predict(q, cfg.data.task, cfg.metric.threshold)[0].numpy()
    size = _display_size(*hw)
    up = size[0] >= hw[0]
    image = _resize(image, size, nearest=up)
    n = cfg.data.num_classes
    if cfg.data.task == "multiclass":
        void = target == IGNORE_INDEX
        truth = [target == c if painted[c] else None for c in range(n)]
        predm = [pred == c if painted[c] else None for c in range(n)]
    else:
        void = (target == IGNORE_INDEX).any(-1)
        truth = [target[..., c] == 1 for c in range(n)]
        predm = [pred[c] for c in range(n)]
    fit = lambda m: None if m is None else _resize(m, size, nearest=True)  # noqa: E731
    truth_img = _paint(image, [fit(m) for m in truth], colors, fit(void))
    pred_img = _paint(image, [fit(m) for m in predm], colors)
    return image, truth_img, pred_img


def render_overlays(d: ReportData, examples: list[Example], title: str, samples: Optional[dict[str, Sample]] = None) -> bytes:
    """A PNG of ``examples``: one row per image (image | ground truth | prediction), legend on top.

    Wide images (width > 2.5 x height) are stacked in three rows per example instead.
    """
    from matplotlib.patches import Patch

    if samples is None:
        samples = {s.id: s for s in load_train_samples(d.cfg)}
    colors = class_colors(d.cfg)
    painted = _painted_classes(d.cfg, d.class_names, colors)
    panels = [_example_panels(d, samples, ex, colors, painted) for ex in examples]
    label = metric_label(d.metric)
    dpi, gap, head, top = 100, 12, 40, 70
    if not panels:
        fig = new_figure(6, 1.2, dpi)
        fig.text(0.5, 0.5, f"{title}: no scored images", ha="center", va="center")
        return figure_png(fig)
    ph = max(p[0].shape[0] for p in panels)
    pw = max(p[0].shape[1] for p in panels)
    wide = pw > 2.5 * ph
    per_row = 1 if wide else 3
    block_h = (3 * (ph + 20) + head) if wide else (ph + head)
    W = per_row * pw + (per_row + 1) * gap
    H = top + len(panels) * (block_h + gap)
    fig = new_figure(W / dpi, H / dpi, dpi)
    names = ("image", "ground truth", "prediction")
    for i, (ex, imgs) in enumerate(zip(examples, panels)):
        y0 = H - top - i * (block_h + gap)  # top edge of this block, in pixels from the bottom
        fig.text(gap / W, (y0 - 14) / H, f"#{i + 1}  {ex.id}   fold {ex.fold}   {label} {ex.score:.3f}",
                 ha="left", va="center", fontsize=11, fontweight="bold")
        for j, (img, name) in enumerate(zip(imgs, names)):
            h, w = img.shape[:2]
            if wide:
                left, bottom = gap, y0 - head - j * (ph + 20) - h
            else:
                left, bottom = gap + j * (pw + gap), y0 - head - h
            ax = fig.add_axes((left / W, bottom / H, w / W, h / H))
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9, pad=3)
    handles = [Patch(facecolor=np.asarray(colors[c]) / 255, edgecolor="black", label=n)
               for c, n in enumerate(d.class_names) if painted[c]]
    if d.task == "multiclass" and not all(painted):
        handles.append(Patch(facecolor="none", edgecolor="black", label=f"{d.class_names[0]} (not drawn)"))
    if d.void_pixels:
        handles.append(Patch(facecolor=np.asarray(VOID_COLOR) / 255, edgecolor="black", label="void (not scored)"))
    fig.text(0.5, 1 - 14 / H, title, ha="center", va="center", fontsize=12, fontweight="bold")
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 24 / H), ncol=min(len(handles), 6),
               fontsize=9, frameon=False, handlelength=1.2, columnspacing=1.2)
    return figure_png(fig)


# ----------------------------------------------------------------------------- confusion figures


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)


def _short(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def confusion_figure(d: ReportData) -> Any:
    """Plotly: row-normalised CxC heatmap (multiclass) or TP / FP / FN pixels per class."""
    import plotly.graph_objects as go

    names = d.class_names
    if d.task == "multiclass":
        cm = d.confusion
        norm = _row_normalised(cm)
        text = [["" if np.isnan(v) else f"{v:.0%}" for v in row] for row in norm]
        fig = go.Figure(go.Heatmap(
            z=norm, x=names, y=names, text=text if len(names) <= 20 else None,
            texttemplate="%{text}" if len(names) <= 20 else None, customdata=cm, colorscale="Blues", zmin=0, zmax=1,
            colorbar=dict(title="share of<br>true pixels", tickformat=".0%"),
            hovertemplate="truth %{y} → predicted %{x}<br>%{z:.2%} of the true pixels (%{customdata:,} px)<extra></extra>",
        ))
        side = max(420, 40 * len(names) + 200)
        fig.update_layout(
            title="Pixels: rows = truth, row-normalised",
            xaxis=dict(title="predicted", side="bottom", type="category"),
            yaxis=dict(title="truth", autorange="reversed", type="category"),
            width=max(560, side + 120), height=side, template="plotly_white",
        )
        return fig
    tp, fp, fn = d.confusion[:, 1, 1], d.confusion[:, 0, 1], d.confusion[:, 1, 0]
    fig = go.Figure()
    for vals, name, color in ((tp, "TP", "#2ca02c"), (fp, "FP", "#ff7f0e"), (fn, "FN", "#d62728")):
        fig.add_trace(go.Bar(x=names, y=vals, name=name, marker_color=color, text=[_short(v) for v in vals],
                             textposition="outside", hovertemplate=f"%{{x}} {name}: %{{y:,}} px<extra></extra>"))
    fig.update_layout(
        title=f"Pixels per class at threshold {d.cfg.metric.threshold:g} (void excluded)", barmode="group",
        yaxis_title="pixels", template="plotly_white", height=430, width=max(520, 140 * len(names) + 200),
    )
    return fig


def confusion_png(d: ReportData) -> bytes:
    """Matplotlib version of :func:`confusion_figure`."""
    names = d.class_names
    n = len(names)
    if d.task == "multiclass":
        norm = _row_normalised(d.confusion)
        side = max(5.0, 0.55 * n + 2.5)
        fig = new_figure(side + 1.2, side)
        ax = fig.add_subplot(1, 1, 1)
        masked = np.ma.masked_invalid(norm)
        im = ax.imshow(masked, cmap="Blues", vmin=0, vmax=1)
        ax.set_facecolor("#eeeeee")  # rows without true pixels
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if not np.isnan(norm[i, j]):
                        ax.text(j, i, f"{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                                color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title("Confusion (pixels, row-normalised, void excluded)", fontsize=10)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label("share of true pixels")
        fig.tight_layout()
        return figure_png(fig)
    tp, fp, fn = d.confusion[:, 1, 1], d.confusion[:, 0, 1], d.confusion[:, 1, 0]
    fig = new_figure(max(5.0, 1.3 * n + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    for k, (vals, name, color) in enumerate(((tp, "TP", "#2ca02c"), (fp, "FP", "#ff7f0e"), (fn, "FN", "#d62728"))):
        bars = ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=name, color=color)
        ax.bar_label(bars, [_short(v) for v in vals], fontsize=7, padding=2)
    ax.set_xticks(x, names, rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylabel("pixels")
    ax.set_title(f"Pixels per class at threshold {d.cfg.metric.threshold:g} (void excluded)", fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


# ----------------------------------------------------------------------------- html


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px} h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:14px} th,td{border:1px solid #ddd;padding:4px 9px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} td.l{white-space:nowrap} .muted{color:#777;font-size:13px}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 12px;margin:6px 0}
.big{font-size:30px;font-weight:600} .swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:middle}
img.fig{max-width:100%;border:1px solid #eee}
"""


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f"<th class='l'>{h}</th>" if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _png_tag(png: bytes, alt: str) -> str:
    return f"<img class='fig' alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _summary_html(d: ReportData) -> str:
    e = html.escape
    cfg = d.cfg
    label = metric_label(d.metric)
    parts = [f"<p><span class='big'>{label} {_fmt(d.score)}</span> &nbsp; <span class='muted'>CV over "
             f"{d.n_images} OOF images of fold(s) {d.folds}; all-empty baseline {_fmt(d.baseline_empty)}; "
             f"pixel accuracy {_fmt(d.pixel_accuracy)}</span></p>"]
    if d.cv:
        parts.append(f"<p class='muted'>cv.json: {e(str(d.cv.get('metric')))} {_fmt(d.cv.get('score'))}, fold mean "
                     f"{_fmt(d.cv.get('fold_mean'))} ± {_fmt(d.cv.get('fold_std'))}</p>")
    def epoch(f: dict[str, Any]) -> str:  # 1-based in done.json, as in metrics.csv and the curves
        e = f.get("best_epoch")
        return str(int(e)) if isinstance(e, int) and e >= 1 else "–"

    rows = [[str(f["fold"]), _fmt(f.get("oof_score")), _fmt(f.get("best_val_score")), epoch(f),
             _fmt(f.get("epochs_run")), _fmt(f.get("n_train")), _fmt(f.get("n_valid"))] for f in d.per_fold]
    parts.append(_table(["fold", f"OOF {label}", "best val score", "best epoch", "epochs run", "train images",
                         "valid images"], rows))
    m = cfg.model
    setup = [
        ["task", e(f"{cfg.data.task}, {cfg.data.num_classes} class(es), layout {cfg.data.layout}")],
        ["model", e(f"{m.arch}" + (f" / {m.encoder}" if m.encoder else "") + (f" ({m.encoder_weights})" if m.encoder_weights else ""))],
        ["loss", e(", ".join(f"{k} {v:g}" for k, v in cfg.loss.items()))],
        ["training", e(f"{cfg.train.epochs} epoch(s), batch {cfg.train.batch_size}, {cfg.optim.name} lr {cfg.optim.lr:g}, "
                       f"scheduler {cfg.scheduler.name}, resize {cfg.transforms.resize or 'native'}")],
        ["metric", e(f"{d.metric} (empty_score {cfg.metric.empty_score}, threshold {cfg.metric.threshold:g})")],
        ["folds", e(f"{cfg.folds.n_splits}-fold {cfg.folds.method}, seed {cfg.folds.seed}")],
    ]
    parts.append(_table(["setting", "value"], setup, left=2))
    return "\n".join(parts)


def _class_table_html(d: ReportData) -> str:
    colors = class_colors(d.cfg)
    rows = []
    for c, r in enumerate(_per_class_rows(d)):
        sw = f"<span class='swatch' style='background:rgb{tuple(int(v) for v in colors[c])}'></span>"
        row = [sw + html.escape(r["class"]), _fmt(r["iou"]), _fmt(r["dice"]), _fmt(r["true_frequency"], ".3%"),
               _fmt(r["pred_frequency"], ".3%"), f"{r['images_with_class']} / {d.n_images}",
               f"{r['images_predicted']} / {d.n_images}"]
        if d.image_level is not None:
            row += [f"{r['empty_correct']} / {r['empty_images']}", str(r["empty_false_positive"]), str(r["missed_images"])]
        rows.append(row)
    header = ["class", "IoU", "dice", "pixel freq. (truth)", "pixel freq. (pred.)", "images with class",
              "images predicted"]
    if d.image_level is not None:
        header += ["empty images kept empty", "false alarms (empty truth)", "missed images (empty pred.)"]
    note = ("<p class='muted'>IoU and dice from pixels summed over all OOF images (void excluded); frequency = class "
            f"pixels / non-void pixels. Void pixels: {d.void_pixels:,}.</p>")
    return _table(header, rows) + note


def _examples_table(d: ReportData, examples: list[Example]) -> str:
    rows = [[html.escape(ex.id), str(ex.fold), _fmt(ex.score), f"{ex.true_pixels:,}", f"{ex.error_pixels:,}"]
            for ex in examples]
    if d.task == "multiclass":
        header = ["id", "fold", "score", f"true pixels (not {html.escape(d.class_names[0])})", "wrong pixels"]
    else:
        header = ["id", "fold", "score", "true foreground pixels", "wrong pixels (FP + FN)"]
    return _table(header, rows)


def _page(d: ReportData, sections: list[tuple[str, str]]) -> str:
    title = f"Report: {d.run_dir.name}"
    warn = "".join(f"<div class='warn'>{html.escape(w)}</div>" for w in d.warnings)
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='muted'>{html.escape(str(d.run_dir.resolve()))}</p>{warn}\n{body}\n</body></html>"
    )


def build_report(run_dir: Path, n_examples: int = 4) -> Path:
    """Write ``run_dir/report/index.html`` (self-contained), PNG copies and ``report.json``; return the page's path.

    ``n_examples``: how many best and how many worst OOF images get overlays (0 = none).
    """
    run_dir = Path(run_dir)
    cfg, sample_list = _load_run(run_dir)
    d = _compute(run_dir, n_examples, cfg, sample_list)
    samples = {s.id: s for s in sample_list}
    out = run_dir / "report"
    out.mkdir(exist_ok=True)

    conf_fig = confusion_figure(d)
    curves_fig = learning_curves(run_dir)
    atomic_write(out / "confusion.png", confusion_png(d))
    atomic_write(out / "learning_curves.png", learning_curves_png(run_dir))
    plot_cfg = {"displaylogo": False}
    conf_html = conf_fig.to_html(full_html=False, include_plotlyjs=True, config=plot_cfg)
    curves_html = curves_fig.to_html(full_html=False, include_plotlyjs=False, config=plot_cfg)

    sections = [("CV summary", _summary_html(d)), ("Per class", _class_table_html(d))]
    conf_note = ("<p class='muted'>Rows are the true class; each row sums to 100% of that class's non-void pixels.</p>"
                 if d.task == "multiclass" else
                 "<p class='muted'>TP / FP / FN pixels of each class's channel; the image-level columns of the table "
                 "above count whole images (empty truth vs. empty prediction).</p>")
    sections.append(("Confusion", conf_html + conf_note))
    sections.append(("Learning curves", curves_html))
    if n_examples > 0:
        for kind, examples in (("best", d.best), ("worst", d.worst)):
            png = render_overlays(d, examples, f"{kind} {len(examples)} OOF images by {d.image_score}", samples)
            atomic_write(out / f"overlays_{kind}.png", png)
            sections.append((f"{kind.capitalize()} OOF images",
                             f"<p class='muted'>Ranked by {html.escape(d.image_score)}"
                             + ("; images empty in both truth and prediction (perfect by definition, counted in the "
                                "table above) are shown last among the best" if kind == "best" and d.task != "multiclass" else "")
                             + ". Colours are the classes' (filled at 40%, outlined); void is grey.</p>" + _png_tag(png, f"{kind} overlays")
                             + _examples_table(d, examples)))
    page = atomic_write(out / "index.html", _page(d, sections))
    atomic_write(out / "report.json", json.dumps(d.to_json(), indent=2))
    log.info("report written to %s", page)
    return page
