"""Post-processing search on out-of-fold predictions: thresholds, minimum area, empty gate.

``tune_postprocess(cfg)`` reads the OOF probabilities of the completed folds (never a test
prediction or a test image), searches the post-processing parameters that maximise the
configured CV metric and writes them to ``run_dir/postprocess.json``, which the predictor
reads through :func:`seg_toolkit.postprocess.load_params`.

Steps, in order, each greedy per class with the other classes held fixed:

1. ``threshold`` per class from ``postprocess.threshold_grid``;
2. ``min_area`` per class from ``postprocess.min_area_grid`` (at the chosen threshold);
3. ``empty_gate`` per class (binary / multilabel): the class of an image is left empty
   unless its gate score reaches the gate. The score is the class's max probability, or,
   for a model trained with the empty-mask classifier (``model.classifier``), the
   classifier's probability (``oof/presence/``): both sources are searched, the better
   kept (``gate_source``), and the step's ``best_by_source`` reports each one's best
   score, the comparison of the two gates on OOF. A gate usually pays off with a *lower*
   threshold than the one chosen without it, so for a class whose min_area is 0 or 1 this
   step searches (threshold, gate) pairs together; that is exact and free from the
   threshold histograms. With a min_area > 1 the threshold stays as step 1 chose it.

Every candidate list also holds the class's current value (from the config), so a step
never lowers the score. Multiclass predictions are the argmax over classes, so there is no
threshold and no gate: only ``min_area`` is searched (components of class ``c >= 1``
smaller than it become background, as :func:`~seg_toolkit.postprocess.apply_postprocess`
does).

Why greedy per class is sound: for binary / multilabel every metric is a function of per
(image, class) counts, and a class's counts depend only on that class's parameters; with
``dice`` / ``iou`` / ``tgs_map`` the score is the mean over (image, class) pairs and with
``miou`` the mean over classes, so the classes separate (with ``empty_score: skip`` the
number of scored pairs depends on the prediction, which is why each candidate is scored
by the exact global metric rather than a per-class share). Multiclass classes do not
separate (removed pixels move to class 0), and are handled the same way: exact global
score, one class changed at a time.

How it stays fast and memory-bounded (probabilities are uint8, ``q / 255``):

* thresholds: one 256-bin histogram per (image, class) of the quantised probabilities of
  truth-positive and truth-negative pixels gives TP and FP at *every* threshold as suffix
  sums, in one pass over the data, with no thresholded copies;
* min_area: connected components are labelled once per (image, class), at the chosen
  threshold only; each component's size and TP / FP pixels give the counts for every
  min_area candidate (multiclass: the truth histogram of each component of the argmax map);
* empty gate: only needs each (image, class)'s max probability, kept from the first pass
  (and the classifier's probability, read once: one byte per image and class).

Only these counts (a few integers per image, class and candidate) are kept. The uint8 OOF
arrays and targets are cached in memory when their total is under ``memory_budget``
bytes, else the files are read again for each pass (three passes; two for multiclass).

The scores in the report: ``before`` and ``after`` are computed with
:class:`seg_toolkit.metrics.Evaluator` on the masks :func:`apply_postprocess` makes, the
same way ``cv.json`` is computed (so with the default post-processing, ``before`` equals
``cv.json``'s score); the per-step scores come from the counts through
:func:`seg_toolkit.metrics.scores_from_counts` / :func:`~seg_toolkit.metrics.mean_iou` /
:func:`~seg_toolkit.metrics.pixel_accuracy`, and the fast path is checked against the
Evaluator at ``before`` and ``after``.

Choosing the TTA transforms and merge mode is :func:`seg_toolkit.tta_search.choose_tta`
(``seg-toolkit tune --tta``): it needs the fold models, since the OOF files hold one
(un-augmented) prediction per image.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from .config import IGNORE_INDEX, Config, ConfigError
from .data import Sample, load_target, load_train_samples
from .metrics import PER_IMAGE_METRICS, Evaluator, ImageCounts, mean_iou, pixel_accuracy, resolve_metric_name, scores_from_counts
from .postprocess import PostParams, apply_postprocess, params_from_config
from .tensors import uint8_to_probs
from .run import Run, read_json, read_oof, write_json

log = logging.getLogger(__name__)

__all__ = ["tune_postprocess", "GATE_GRID", "DEFAULT_MEMORY_BUDGET", "OOFData", "threshold_cut"]

#: Empty-gate candidates (None = no gate). A gate at or below a class's threshold changes nothing.
GATE_GRID: tuple[Optional[float], ...] = (None, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
#: OOF arrays + targets are kept in memory when they fit in this many bytes, else re-read per pass.
DEFAULT_MEMORY_BUDGET = 1 << 30

_STRUCTURE = np.ones((3, 3), bool)  # 8-connectivity, as postprocess.remove_small
_LEVELS = uint8_to_probs(np.arange(256, dtype=np.uint8))  # the probability of each uint8 value
_EPS = 1e-12  # a candidate must beat the incumbent by more than this to replace it


# ----------------------------------------------------------------------------- reading the OOF files


@dataclass(frozen=True)
class OOFItem:
    """One OOF image: its training sample, fold and ``.npy`` file."""

    sample: Sample
    fold: int
    path: Path


class OOFData:
    """The OOF probabilities of the completed folds with their targets.

    Iterating yields ``(item, q, truth)``: ``q`` uint8 ``(C, H, W)`` as saved, ``truth`` uint8
    ``(C, H, W)`` 0/1/255 for binary / multilabel or ``(H, W)`` labels (255 void) for
    multiclass. Images come in training-sample order (the order ``compute_cv`` scores them).
    The first pass keeps the arrays in memory when their estimated size is at most
    ``memory_budget`` bytes; otherwise every pass reads the files again. Only OOF files of
    the completed folds and training targets are read.
    """

    def __init__(self, cfg: Config, run_dir: Path, memory_budget: int = DEFAULT_MEMORY_BUDGET, oof_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.task = cfg.data.task
        self.num_classes = cfg.data.num_classes
        run = Run(self.run_dir)
        self.folds = run.completed_folds()
        items = [OOFItem(s, k, path) for s, k, path in run.oof_items(load_train_samples(cfg), oof_dir)]
        self.items: list[OOFItem] = items
        #: the empty-mask classifier's uint8 OOF probabilities (N, C), or None for a model without one
        self.presence: np.ndarray | None = self._read_presence(run, oof_dir)
        # the .npy size is C*H*W (+ header); the target is as large (binary/multilabel) or 1/C of it
        per_byte = 2.0 if self.task != "multiclass" else 1.0 + 1.0 / self.num_classes
        self.estimated_bytes = int(sum(it.path.stat().st_size for it in items) * per_byte)
        self.cache_enabled = self.estimated_bytes <= memory_budget
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        log.info(
            "OOF: %d images of folds %s, ~%.1f MB with targets (%s)", len(items), self.folds,
            self.estimated_bytes / 1e6, "kept in memory" if self.cache_enabled else "over the memory budget: re-read per pass",
        )

    def _read_presence(self, run: Run, oof_dir: Path | None) -> np.ndarray | None:
        paths = [run.oof_presence_path(it.sample.id, oof_dir) for it in self.items]
        if not paths or not paths[0].is_file():
            return None
        out = np.zeros((len(paths), self.num_classes), np.uint8)
        for i, path in enumerate(paths):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the classifier's OOF file of id {self.items[i].sample.id!r} is missing "
                                        f"({paths[0].name} and others exist); remake them with `seg-toolkit oof CONFIG`")
            q = read_oof(path, ndim=1)
            if q.shape != (self.num_classes,):
                raise ValueError(f"{path}: expected uint8 ({self.num_classes},) presence probabilities, got {q.dtype} {q.shape}")
            out[i] = q
        return out

    def __len__(self) -> int:
        return len(self.items)

    def iterate(self, desc: str) -> Iterator[tuple[OOFItem, np.ndarray, np.ndarray]]:
        """One pass over the images, with a progress bar."""
        if self._cache is not None:
            yield from zip(tqdm(self.items, desc=desc, leave=False, disable=None), *zip(*self._cache))
            return
        cache: list[tuple[np.ndarray, np.ndarray]] | None = [] if self.cache_enabled else None
        for item in tqdm(self.items, desc=desc, leave=False, disable=None):
            q, truth = self.read(item)
            if cache is not None:
                cache.append((q, truth))
            yield item, q, truth
        if cache is not None and len(cache) == len(self.items):
            self._cache = cache

    def read(self, item: OOFItem) -> tuple[np.ndarray, np.ndarray]:
        """The OOF array and the target of one image (checked against each other)."""
        q = read_oof(item.path)
        c = self.num_classes
        if q.dtype != np.uint8 or q.ndim != 3 or q.shape[0] != c:
            raise ValueError(f"{item.path}: expected uint8 (C={c}, H, W) OOF probabilities, got {q.dtype} {q.shape}")
        truth = load_target(item.sample, self.cfg, tuple(q.shape[1:]))
        if self.task == "multiclass":
            bad = (truth != IGNORE_INDEX) & (truth >= c)
            if bad.any():
                raise ValueError(f"id {item.sample.id!r}: target labels {np.unique(truth[bad])[:5].tolist()} outside 0..{c - 1}")
            return q, np.ascontiguousarray(truth)
        if truth.shape[-1] != c:
            raise ValueError(f"id {item.sample.id!r}: target has {truth.shape[-1]} channels, the config {c}")
        return q, np.ascontiguousarray(truth.transpose(2, 0, 1))


# ----------------------------------------------------------------------------- scoring counts


def threshold_cut(threshold: float) -> int:
    """The smallest uint8 value ``v`` with ``v / 255 >= threshold`` (256 when none), computed as
    :func:`apply_postprocess` compares the float32 probabilities, so ``q >= cut`` is exact."""
    hit = _LEVELS >= threshold
    return int(np.argmax(hit)) if hit.any() else 256


def _mean_score(scores: np.ndarray) -> float:
    """Mean of the non-NaN scores (NaN when none), as :class:`Evaluator` averages them."""
    a = np.asarray(scores, dtype=np.float64).ravel()
    keep = ~np.isnan(a)
    return float(a[keep].mean()) if keep.any() else math.nan


def _sigmoid_score(tp: np.ndarray, fp: np.ndarray, pos: np.ndarray, n_valid: np.ndarray, metric: str, empty_score: str) -> float:
    """The CV score of binary / multilabel predictions from per (image, class) counts ``(N, C)``."""
    counts = ImageCounts(tp, fp, pos - tp, n_valid)
    if metric in PER_IMAGE_METRICS:
        return _mean_score(scores_from_counts(counts, metric, empty_score))
    tp_s, fp_s, fn_s = tp.sum(0), fp.sum(0), (pos - tp).sum(0)
    tn_s = n_valid.sum(0) - tp_s - fp_s - fn_s
    cm = np.stack([np.stack([tn_s, fp_s], -1), np.stack([fn_s, tp_s], -1)], 1)  # (C, 2, 2) [[TN, FP], [FN, TP]]
    return mean_iou(cm) if metric == "miou" else pixel_accuracy(cm)


def _multiclass_score(conf: np.ndarray, metric: str, empty_score: str) -> float:
    """The CV score of multiclass predictions from per-image confusion counts ``(N, C, C)`` (rows truth)."""
    if metric in PER_IMAGE_METRICS:
        tp = np.diagonal(conf, axis1=1, axis2=2)
        counts = ImageCounts(tp, conf.sum(1) - tp, conf.sum(2) - tp, np.broadcast_to(conf.sum((1, 2))[:, None], tp.shape))
        return _mean_score(scores_from_counts(counts, metric, empty_score))
    cm = conf.sum(0)
    return mean_iou(cm) if metric == "miou" else pixel_accuracy(cm)


def _replace(tp: np.ndarray, fp: np.ndarray, k: int, tp_k: np.ndarray, fp_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the (N, C) counts with class k's column replaced."""
    tp, fp = tp.copy(), fp.copy()
    tp[:, k], fp[:, k] = tp_k, fp_k
    return tp, fp


def _better(score: float, best: float) -> bool:
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best + _EPS


def _candidates(current: object, grid: Sequence) -> list:
    """The current value first, then the grid's values in order, without repeats."""
    out = [current]
    for v in grid:
        if v not in out:
            out.append(v)
    return out


def _components(mask: np.ndarray, code: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of ``mask``: sizes ``(n,)`` (every pixel, void too, as
    :func:`remove_small` counts them) and histograms ``(n, n_codes)`` of ``code`` inside each."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, n_codes), np.int64)
    key = labels.ravel().astype(np.int64) * n_codes + code.ravel()
    hist = np.bincount(key, minlength=(n + 1) * n_codes).reshape(n + 1, n_codes)[1:]
    return hist.sum(1), hist


def _sigmoid_code(truth: np.ndarray) -> np.ndarray:
    """0 = truth negative, 1 = truth positive, 2 = void, per pixel of ``(C, H, W)`` targets."""
    return np.where(truth == IGNORE_INDEX, 2, truth == 1).astype(np.uint8)


def _kept_tp_fp(sizes: np.ndarray, hist: np.ndarray, area: int) -> tuple[int, int]:
    """TP and FP pixels of the components that ``remove_small(mask, area)`` keeps."""
    keep = sizes >= area if area > 1 else np.ones(len(sizes), bool)
    return int(hist[keep, 1].sum()), int(hist[keep, 0].sum())


# ----------------------------------------------------------------------------- per-pass tables (binary / multilabel)


@dataclass
class ThresholdTables:
    """Per (image, class) counts at every threshold candidate, from one pass.

    ``tp`` / ``fp`` ``(N, C, T)``: foreground pixels ``q >= cut[t]`` that are truth positive /
    negative (no min_area); ``pos`` / ``n_valid`` ``(N, C)``: truth-positive / non-void pixels;
    ``qmax`` ``(N, C)``: the max uint8 probability (void pixels included, as the gate sees
    them); ``area_tp`` / ``area_fp``: the same as ``tp`` / ``fp`` after removing components
    smaller than the class's configured min_area, for the classes whose min_area is > 1.
    """

    tp: np.ndarray
    fp: np.ndarray
    pos: np.ndarray
    n_valid: np.ndarray
    qmax: np.ndarray
    area_tp: dict[int, np.ndarray]
    area_fp: dict[int, np.ndarray]


def threshold_tables(data: OOFData, thresholds: Sequence[float], config_area: Sequence[int]) -> ThresholdTables:
    """One pass: 256-bin histograms of truth-positive / -negative probabilities per (image, class),
    turned into TP / FP at every threshold by suffix sums."""
    n, c = len(data), data.num_classes
    cuts = np.array([threshold_cut(t) for t in thresholds], np.int64)
    tp = np.zeros((n, c, len(cuts)), np.int64)
    fp = np.zeros_like(tp)
    pos = np.zeros((n, c), np.int64)
    n_valid = np.zeros((n, c), np.int64)
    qmax = np.zeros((n, c), np.int64)
    slow = [k for k in range(c) if config_area[k] > 1]
    area_tp = {k: np.zeros((n, len(cuts)), np.int64) for k in slow}
    area_fp = {k: np.zeros((n, len(cuts)), np.int64) for k in slow}
    offset = (768 * np.arange(c, dtype=np.int32))[:, None, None]
    for i, (_, q, truth) in enumerate(data.iterate("tune: threshold histograms")):
        code = _sigmoid_code(truth)
        key = q.astype(np.int32) + 256 * code.astype(np.int32) + offset
        h = np.bincount(key.ravel(), minlength=768 * c).reshape(c, 3, 256)  # [class, neg/pos/void, value]
        suffix = np.zeros((c, 3, 257), np.int64)  # suffix[..., v] = pixels with value >= v
        suffix[..., :256] = h[..., ::-1].cumsum(-1)[..., ::-1]
        tp[i], fp[i] = suffix[:, 1, cuts], suffix[:, 0, cuts]
        pos[i] = suffix[:, 1, 0]
        n_valid[i] = suffix[:, 0, 0] + suffix[:, 1, 0]
        present = h.sum(1) > 0
        qmax[i] = np.where(present.any(1), 255 - np.argmax(present[:, ::-1], axis=1), 0)
        for k in slow:  # a configured min_area > 1 changes the counts at each threshold
            for j, cut in enumerate(cuts):
                sizes, hist = _components(q[k] >= cut, code[k], 3)
                area_tp[k][i, j], area_fp[k][i, j] = _kept_tp_fp(sizes, hist, config_area[k])
    return ThresholdTables(tp, fp, pos, n_valid, qmax, area_tp, area_fp)


def area_tables(data: OOFData, thresholds: Sequence[float], areas: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One pass: TP / FP ``(N, C, A)`` at each class's threshold after removing components
    smaller than each min_area candidate; components are labelled once per (image, class)."""
    n, c = len(data), data.num_classes
    cuts = [threshold_cut(t) for t in thresholds]
    tp = np.zeros((n, c, len(areas)), np.int64)
    fp = np.zeros_like(tp)
    for i, (_, q, truth) in enumerate(data.iterate("tune: components")):
        code = _sigmoid_code(truth)
        for k in range(c):
            sizes, hist = _components(q[k] >= cuts[k], code[k], 3)
            for j, a in enumerate(areas):
                tp[i, k, j], fp[i, k, j] = _kept_tp_fp(sizes, hist, a)
    return tp, fp


def gate_open(qmax: np.ndarray, gate: Optional[float]) -> np.ndarray:
    """Where a class keeps its mask: ``score >= gate`` (everywhere when there is no gate); ``qmax``: the
    uint8 gate scores (the max probability, or the classifier's probability)."""
    if gate is None:
        return np.ones(qmax.shape, bool)
    return _LEVELS[qmax] >= gate


# ----------------------------------------------------------------------------- per-pass tables (multiclass)


@dataclass
class MulticlassTables:
    """``base`` ``(N, C, C)``: per-image confusion of the argmax (rows truth); ``removed[c]``:
    ``(image indices (M,), pixels (M, A, C))``: per min_area candidate, the truth histogram of
    the class-``c`` pixels that become background (class 0), for the images where any do."""

    base: np.ndarray
    removed: dict[int, tuple[np.ndarray, np.ndarray]]


def multiclass_tables(data: OOFData, areas: Sequence[int]) -> MulticlassTables:
    """One pass: argmax confusion per image, and per class the pixels each min_area removes."""
    n, c = len(data), data.num_classes
    base = np.zeros((n, c, c), np.int64)
    rows: dict[int, list[tuple[int, np.ndarray]]] = {k: [] for k in range(1, c)}
    for i, (_, q, truth) in enumerate(data.iterate("tune: components")):
        label = q.argmax(0)  # same as the argmax of q / 255: the map is strictly increasing
        valid = truth != IGNORE_INDEX
        base[i] = np.bincount(truth[valid].astype(np.int64) * c + label[valid], minlength=c * c).reshape(c, c)
        tcode = np.where(valid, truth, c)
        for k in range(1, c):
            mask = label == k
            if not mask.any():
                continue
            sizes, hist = _components(mask, tcode, c + 1)
            gone = np.zeros((len(areas), c), np.int64)
            for j, a in enumerate(areas):
                if a > 1:
                    gone[j] = hist[sizes < a, :c].sum(0)
            if gone.any():
                rows[k].append((i, gone))
    removed = {}
    for k, r in rows.items():
        idx = np.array([i for i, _ in r], np.int64)
        removed[k] = (idx, np.stack([g for _, g in r]) if r else np.zeros((0, len(areas), c), np.int64))
    return MulticlassTables(base, removed)


def _move_to_background(conf: np.ndarray, idx: np.ndarray, pixels: np.ndarray, k: int) -> None:
    """Predicted-class-``k`` pixels ``pixels`` ``(M, C)`` (by truth class) of images ``idx`` become class 0."""
    conf[idx, :, k] -= pixels
    conf[idx, :, 0] += pixels


# ----------------------------------------------------------------------------- the search


def tune_postprocess(
    cfg: Config,
    run_dir: Path | None = None,
    *,
    gate_grid: Sequence[Optional[float]] = GATE_GRID,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    oof_dir: Path | None = None,
    write: bool = True,
) -> dict:
    """Tune thresholds, min_area and the empty gate on the OOF predictions; write ``postprocess.json``.

    ``run_dir`` defaults to ``cfg.run_dir``. Candidates come from ``postprocess.threshold_grid``,
    ``postprocess.min_area_grid`` and ``gate_grid``, each plus the config's value. Returns the
    report that ``run_dir/postprocess.json`` holds: ``params`` (the tuned values, as
    :func:`load_params` reads them), ``before`` / ``after`` (CV score with the config's / the
    tuned post-processing), ``steps`` (the score and values after each step), ``fold_scores``
    and what was searched. Never reads test images or test predictions.

    ``oof_dir`` (default the run's ``oof/``) and ``write=False`` let ``tune --tta`` tune each
    TTA candidate's OOF probabilities without touching the run's files.
    """
    t0 = time.perf_counter()
    run = Run(run_dir) if run_dir is not None else Run.of(cfg)
    task = cfg.data.task
    metric = resolve_metric_name(cfg.metric.name, task)
    empty_score = cfg.metric.empty_score
    before_params = params_from_config(cfg)
    _check_grids(cfg, gate_grid)
    data = OOFData(cfg, run.dir, memory_budget, oof_dir)

    if task == "multiclass":
        params, steps, fast = _search_multiclass(data, before_params, cfg, metric, empty_score)
    else:
        params, steps, fast = _search_sigmoid(data, before_params, cfg, gate_grid, metric, empty_score)
    everything = np.arange(len(data))
    fast_before, fast_after = fast["before"](everything), fast["after"](everything)
    fold_rows = {k: np.array([i for i, it in enumerate(data.items) if it.fold == k]) for k in data.folds}

    scored = _evaluate(data, cfg, {"before": before_params, "after": params})
    before, after = scored["before"], scored["after"]
    for name, quick, exact in (("before", fast_before, before), ("after", fast_after, after)):
        if not (math.isnan(quick) and math.isnan(exact)) and not abs(quick - exact) <= 1e-9:
            raise RuntimeError(f"tune: the fast {name} score {quick!r} disagrees with the Evaluator's {exact!r} (a bug)")

    report = {
        "metric": metric,
        "task": task,
        "n_images": len(data),
        "folds": data.folds,
        "cv_json_score": _cv_json_score(run),
        "before": before,
        "after": after,
        "gain": after - before,
        "steps": steps,
        "fold_scores": {"folds": data.folds, **{name: [fast[name](rows) for rows in fold_rows.values()] for name in ("before", "after")}},
        "before_params": asdict(before_params),
        "candidates": {
            "threshold": list(cfg.postprocess.threshold_grid),
            "min_area": list(cfg.postprocess.min_area_grid),
            "empty_gate": list(gate_grid) if task != "multiclass" else [],
        },
        "oof_in_memory": data.cache_enabled,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    result = {"params": asdict(params), **report}
    if write:
        write_json(run.postprocess_json, result)
        log.info("tune: %s %.5f -> %.5f on %d OOF images; wrote %s", metric, before, after, len(data), run.postprocess_json)
    return result


def _check_grids(cfg: Config, gate_grid: Sequence[Optional[float]]) -> None:
    p = cfg.postprocess
    if not p.threshold_grid or not p.min_area_grid:
        raise ConfigError("postprocess.threshold_grid and postprocess.min_area_grid need at least one value")
    for t in list(p.threshold_grid) + list(p.threshold):
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"postprocess.threshold / threshold_grid: {t} is not a probability in [0, 1]")
    for a in list(p.min_area_grid) + list(p.min_area):
        if a < 0:
            raise ConfigError(f"postprocess.min_area / min_area_grid: {a} is negative")
    for g in list(gate_grid) + [p.empty_gate]:
        if g is not None and not 0.0 <= g <= 1.0:
            raise ConfigError(f"empty gate {g} is not a probability in [0, 1]")


def _cv_json_score(run: Run) -> float | None:
    try:
        return float((read_json(run.cv_json) or {})["score"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def _step_log(step: str, before: float, after: float, values: dict) -> None:
    log.info("tune step %s: %.5f -> %.5f (%s)", step, before, after, ", ".join(f"{k}={v}" for k, v in values.items()))


def _search_sigmoid(
    data: OOFData, start: PostParams, cfg: Config, gate_grid: Sequence[Optional[float]], metric: str, empty_score: str
) -> tuple[PostParams, list[dict], dict[str, Callable[[np.ndarray], float]]]:
    """Binary / multilabel: threshold, then min_area, then gate (with threshold), greedy per class."""
    c = data.num_classes
    thr = [float(t) for t in start.threshold]
    area = [int(a) for a in start.min_area]
    gate = [None if g is None else float(g) for g in start.empty_gate]
    src = list(start.gate_source)
    presence = getattr(data, "presence", None)
    sources = ["max_prob", "classifier"] if presence is not None else ["max_prob"]
    if presence is None and "classifier" in [s_ for g, s_ in zip(gate, src) if g is not None]:
        raise ConfigError("tune: the starting post-processing gates on the classifier, but the OOF files hold no "
                          "classifier probabilities (oof/presence/)")
    thr_cands = [_candidates(thr[k], [float(t) for t in cfg.postprocess.threshold_grid]) for k in range(c)]
    all_thr = _candidates(thr[0], [t for cands in thr_cands for t in cands])
    col = {t: j for j, t in enumerate(all_thr)}

    tab = threshold_tables(data, all_thr, area)
    score = lambda tp, fp: _sigmoid_score(tp, fp, tab.pos, tab.n_valid, metric, empty_score)  # noqa: E731

    def at_threshold(k: int, t: float, use_config_area: bool) -> tuple[np.ndarray, np.ndarray]:
        j = col[t]
        if use_config_area and k in tab.area_tp:
            return tab.area_tp[k][:, j], tab.area_fp[k][:, j]
        return tab.tp[:, k, j], tab.fp[:, k, j]

    def gated(k: int, g: Optional[float], tp_k: np.ndarray, fp_k: np.ndarray, source: str | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
        scores = presence if (source or src[k]) == "classifier" else tab.qmax
        open_ = gate_open(scores[:, k], g)
        return np.where(open_, tp_k, 0), np.where(open_, fp_k, 0)

    # current counts (N, C) with the config's parameters
    TP = np.zeros((len(data), c), np.int64)
    FP = np.zeros_like(TP)
    for k in range(c):
        TP[:, k], FP[:, k] = gated(k, gate[k], *at_threshold(k, thr[k], True))
    best = score(TP, FP)
    start_counts = (TP.copy(), FP.copy())
    steps = []

    def greedy(k: int, options: list[tuple[object, np.ndarray, np.ndarray]]) -> object:
        """Score each option for class k with the others fixed; the first option is the current
        value, and another replaces it only when strictly better (ties keep the earlier one)."""
        nonlocal best
        chosen, best_cols = None, None
        for value, tp_k, fp_k in options:
            s = score(*_replace(TP, FP, k, tp_k, fp_k))
            if best_cols is None or _better(s, best):
                chosen, best_cols, best = value, (tp_k, fp_k), s
        TP[:, k], FP[:, k] = best_cols
        return chosen

    # 1) threshold (min_area and gate as configured)
    prev = best
    for k in range(c):
        thr[k] = greedy(k, [(t, *gated(k, gate[k], *at_threshold(k, t, True))) for t in thr_cands[k]])
    steps.append({"step": "threshold", "score": best, "threshold": list(thr)})
    _step_log("threshold", prev, best, {"threshold": thr})

    # 2) min_area at the chosen thresholds
    prev = best
    area_cands = [_candidates(area[k], [int(a) for a in cfg.postprocess.min_area_grid]) for k in range(c)]
    all_area = _candidates(area[0], [a for cands in area_cands for a in cands])
    acol = {a: j for j, a in enumerate(all_area)}
    atp, afp = area_tables(data, thr, all_area)
    for k in range(c):
        area[k] = greedy(k, [(a, *gated(k, gate[k], atp[:, k, acol[a]], afp[:, k, acol[a]])) for a in area_cands[k]])
    steps.append({"step": "min_area", "score": best, "min_area": list(area)})
    _step_log("min_area", prev, best, {"min_area": area})

    # 3) empty gate on each source (max probability; the classifier when the model has one); with
    # min_area <= 1 the threshold is searched with it (exact from the histograms)
    prev = best
    by_source: dict[str, list[float]] = {s_: [] for s_ in sources}
    for k in range(c):
        options = []
        for g in _candidates(gate[k], list(gate_grid)):
            for s_ in ([src[k]] + [x for x in sources if x != src[k]]) if g is not None else [src[k]]:
                if area[k] > 1:
                    options.append(((thr[k], g, s_), *gated(k, g, atp[:, k, acol[area[k]]], afp[:, k, acol[area[k]]], s_)))
                else:
                    options += [((t, g, s_), *gated(k, g, *at_threshold(k, t, False), s_)) for t in _candidates(thr[k], thr_cands[k])]
        for s_ in sources:  # the best of each source alone (the others fixed), for the report
            by_source[s_].append(max(_sigmoid_score(*_replace(TP, FP, k, tp_k, fp_k), tab.pos, tab.n_valid, metric, empty_score)
                                     for (_, g, s2), tp_k, fp_k in options if s2 == s_ or g is None))
        thr[k], gate[k], src[k] = greedy(k, options)
    steps.append({"step": "empty_gate", "score": best, "empty_gate": list(gate), "gate_source": list(src),
                  "threshold": list(thr), "best_by_source": by_source})
    _step_log("empty_gate", prev, best, {"empty_gate": gate, "gate_source": src, "threshold": thr,
                                         **{f"best with {s_}": [round(v, 5) for v in by_source[s_]] for s_ in sources}})

    def scorer(tp: np.ndarray, fp: np.ndarray) -> Callable[[np.ndarray], float]:
        """The fast score of these counts over a subset of images (rows)."""
        return lambda rows: _sigmoid_score(tp[rows], fp[rows], tab.pos[rows], tab.n_valid[rows], metric, empty_score)

    fast = {"before": scorer(*start_counts), "after": scorer(TP, FP)}
    return PostParams(threshold=thr, min_area=area, empty_gate=gate, gate_source=src), steps, fast


def _search_multiclass(
    data: OOFData, start: PostParams, cfg: Config, metric: str, empty_score: str
) -> tuple[PostParams, list[dict], dict[str, Callable[[np.ndarray], float]]]:
    """Multiclass: only min_area per class 1..C-1 (the argmax decides the class: no threshold, no gate)."""
    c = data.num_classes
    area = [int(a) for a in start.min_area]
    area_cands = [_candidates(area[k], [int(a) for a in cfg.postprocess.min_area_grid]) for k in range(c)]
    all_area = _candidates(area[0], [a for cands in area_cands for a in cands])
    acol = {a: j for j, a in enumerate(all_area)}
    tab = multiclass_tables(data, all_area)
    conf = tab.base.copy()
    for k in range(1, c):
        idx, gone = tab.removed[k]
        _move_to_background(conf, idx, gone[:, acol[area[k]]], k)
    best = _multiclass_score(conf, metric, empty_score)
    start_conf = conf
    skipped = {"score": best, "skipped": "multiclass: the argmax decides the class"}
    steps: list[dict] = [{"step": "threshold", **skipped}]

    prev = best
    for k in range(1, c):
        idx, gone = tab.removed[k]
        cur = acol[area[k]]
        for a in area_cands[k][1:]:
            trial = conf.copy()
            _move_to_background(trial, idx, gone[:, acol[a]] - gone[:, cur], k)
            s = _multiclass_score(trial, metric, empty_score)
            if _better(s, best):
                best, conf, cur, area[k] = s, trial, acol[a], a
    steps.append({"step": "min_area", "score": best, "min_area": list(area)})
    _step_log("min_area", prev, best, {"min_area": area})
    steps.append({"step": "empty_gate", **{**skipped, "score": best}})
    scorer = lambda cm: lambda rows: _multiclass_score(cm[rows], metric, empty_score)  # noqa: E731
    fast = {"before": scorer(start_conf), "after": scorer(conf)}
    return PostParams(threshold=list(start.threshold), min_area=area, empty_gate=list(start.empty_gate),
                      gate_source=list(start.gate_source)), steps, fast


# ----------------------------------------------------------------------------- exact scores


def _evaluate(data: OOFData, cfg: Config, params: dict[str, PostParams]) -> dict[str, float]:
    """Score each parameter set with :class:`Evaluator` on :func:`apply_postprocess` masks, as
    ``cv.json`` scores the OOF files. Torch runs on one thread meanwhile: the tensors are one
    image each, and on a busy machine intra-op threads made this pass 20x slower."""
    task, c = cfg.data.task, cfg.data.num_classes
    evaluators = {name: Evaluator(cfg.metric, task, c) for name in params}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, (_, q, truth) in enumerate(data.iterate("tune: scoring")):
            probs = uint8_to_probs(q)
            presence = uint8_to_probs(data.presence[i]) if data.presence is not None else None
            target = torch.from_numpy(truth[None])
            for name, p in params.items():
                evaluators[name].update_masks(torch.from_numpy(apply_postprocess(probs, task, p, presence)[None]), target)
    finally:
        torch.set_num_threads(threads)
    return {name: float(e.compute()["score"]) for name, e in evaluators.items()}
