"""Counts from out-of-fold predictions, for the post-processing search in :mod:`seg_toolkit.tune`.

:class:`OOFData` reads the OOF probabilities of a run's completed folds with their training
targets (never a test prediction or a test image); the table functions turn one pass over
them into per (image, class) counts at every candidate threshold, min_area and gate, and
:func:`sigmoid_score` / :func:`multiclass_score` score such counts exactly as
:class:`seg_toolkit.evaluator.Evaluator` scores masks.

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

"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from .config import IGNORE_INDEX, Config
from .data import Sample, load_objects, load_train_samples
from .data.scored import scored_target
from .instance_metrics import INSTANCE_METRICS, scores_from_hits
from .metrics import PER_IMAGE_METRICS, ImageCounts, confusion_score, scores_from_counts
from .files import read_oof
from .postprocess import runner_up
from .run import Run
from .tensors import uint8_to_probs

log = logging.getLogger(__name__)

__all__ = ["OOFData", "OOFItem", "DEFAULT_MEMORY_BUDGET", "threshold_cut", "sigmoid_score", "multiclass_score",
           "ThresholdTables", "threshold_tables", "area_tables", "gate_open", "MulticlassTables", "multiclass_tables",
           "move_removed", "confusion", "better", "EPS"]

#: OOF arrays + targets are kept in memory when they fit in this many bytes, else re-read per pass.
DEFAULT_MEMORY_BUDGET = 1 << 30

_STRUCTURE = np.ones((3, 3), bool)  # 8-connectivity, as postprocess.remove_small
_LEVELS = uint8_to_probs(np.arange(256, dtype=np.uint8))  # the probability of each uint8 value


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
        # the .npy size is C*H*W (+ header); the target is as large (binary/multilabel) or 1/C of it; an
        # object-matching metric's truth objects (uint16 label maps) twice that
        self.instance = cfg.metric.name in INSTANCE_METRICS
        per_byte = (4.0 if self.instance else 2.0) if self.task != "multiclass" else 1.0 + 1.0 / self.num_classes
        self.estimated_bytes = int(sum(it.path.stat().st_size for it in items) * per_byte)
        self.cache_enabled = self.estimated_bytes <= memory_budget
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._objects: dict[int, np.ndarray] = {}
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

    def objects(self, i: int, hw: tuple[int, int]) -> np.ndarray:
        """Image ``i``'s truth objects (:func:`~seg_toolkit.data.load_objects`: a label map of size ``hw``), read once
        when the OOF data fits in memory (an image's object files are many: DSB's hold up to hundreds)."""
        if i in self._objects:
            return self._objects[i]
        labels = load_objects(self.items[i].sample, self.cfg, tuple(hw))
        if self.cache_enabled:
            self._objects[i] = labels.astype(np.uint16) if labels.max(initial=0) < 1 << 16 else labels
        return labels

    def read(self, item: OOFItem) -> tuple[np.ndarray, np.ndarray]:
        """The OOF array and the target of one image (checked against each other)."""
        q = read_oof(item.path)
        c = self.num_classes
        if q.dtype != np.uint8 or q.ndim != 3 or q.shape[0] != c:
            raise ValueError(f"{item.path}: expected uint8 (C={c}, H, W) OOF probabilities, got {q.dtype} {q.shape}")
        truth = scored_target(item.sample, self.cfg, tuple(q.shape[1:]))
        if self.task == "multiclass":
            bad = (truth != IGNORE_INDEX) & (truth >= c)
            if bad.any():
                raise ValueError(f"id {item.sample.id!r}: target labels {np.unique(truth[bad])[:5].tolist()} outside 0..{c - 1}")
            return q, np.ascontiguousarray(truth)
        if truth.shape[-1] != c:
            raise ValueError(f"id {item.sample.id!r}: target has {truth.shape[-1]} channels, the config {c}")
        return q, np.ascontiguousarray(truth.transpose(2, 0, 1))


# ----------------------------------------------------------------------------- scoring counts


#: a candidate must beat the incumbent by more than this to replace it
EPS = 1e-12


def better(score: float, best: float) -> bool:
    """Whether a search's candidate ``score`` replaces the incumbent ``best`` (NaN never wins; anything beats NaN)."""
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best + EPS


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


def sigmoid_score(tp: np.ndarray, fp: np.ndarray, pos: np.ndarray, n_valid: np.ndarray, metric: str, empty_score: str,
                  cols: np.ndarray | None = None) -> float:
    """The CV score of binary / multilabel predictions from per (image, class) counts ``(N, C)``; ``cols``: the
    channels it averages (``metric.classes``, :func:`~seg_toolkit.evaluator.scored_columns`; None: all).

    An object-matching metric takes :func:`seg_toolkit.tune_objects.object_tables`' counts instead: ``tp`` the hits
    ``(N, C, 10)``, ``fp`` the predicted objects and ``pos`` the truth objects ``(N, C)``."""
    if metric in INSTANCE_METRICS:
        return _mean_score(scores_from_hits(tp, fp, pos, metric))
    counts = ImageCounts(tp, fp, pos - tp, n_valid)
    if metric in PER_IMAGE_METRICS:
        scores = scores_from_counts(counts, metric, empty_score)
        return _mean_score(scores if cols is None else scores[:, cols])
    tp_s, fp_s, fn_s = tp.sum(0), fp.sum(0), (pos - tp).sum(0)
    tn_s = n_valid.sum(0) - tp_s - fp_s - fn_s
    cm = np.stack([np.stack([tn_s, fp_s], -1), np.stack([fn_s, tp_s], -1)], 1)  # (C, 2, 2) [[TN, FP], [FN, TP]]
    return confusion_score(cm, metric, cols)


def multiclass_score(conf: np.ndarray, metric: str, empty_score: str, cols: np.ndarray | None = None) -> float:
    """The CV score of multiclass predictions from per-image confusion counts ``(N, C, C)`` (rows truth); ``cols``
    as :func:`sigmoid_score`."""
    if metric in PER_IMAGE_METRICS:
        tp = np.diagonal(conf, axis1=1, axis2=2)
        counts = ImageCounts(tp, conf.sum(1) - tp, conf.sum(2) - tp, np.broadcast_to(conf.sum((1, 2))[:, None], tp.shape))
        scores = scores_from_counts(counts, metric, empty_score)
        return _mean_score(scores if cols is None else scores[:, cols])
    return confusion_score(conf.sum(0), metric, cols)








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
    them). The counts after removing small components are :func:`area_tables`'.
    """

    tp: np.ndarray
    fp: np.ndarray
    pos: np.ndarray
    n_valid: np.ndarray
    qmax: np.ndarray


def threshold_tables(data: OOFData, thresholds: Sequence[float]) -> ThresholdTables:
    """One pass: 256-bin histograms of truth-positive / -negative probabilities per (image, class),
    turned into TP / FP at every threshold by suffix sums."""
    n, c = len(data), data.num_classes
    cuts = np.array([threshold_cut(t) for t in thresholds], np.int64)
    tp = np.zeros((n, c, len(cuts)), np.int64)
    fp = np.zeros_like(tp)
    pos = np.zeros((n, c), np.int64)
    n_valid = np.zeros((n, c), np.int64)
    qmax = np.zeros((n, c), np.int64)
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
    return ThresholdTables(tp, fp, pos, n_valid, qmax)


def area_tables(data: OOFData, thresholds: Sequence[float], areas: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One pass: TP / FP ``(N, C, T, A)`` at every threshold candidate after removing components smaller than
    every min_area candidate (the pairs are searched together: the best min_area depends on the threshold);
    components are labelled once per (image, class, threshold)."""
    n, c = len(data), data.num_classes
    cuts = [threshold_cut(t) for t in thresholds]
    tp = np.zeros((n, c, len(cuts), len(areas)), np.int64)
    fp = np.zeros_like(tp)
    for i, (_, q, truth) in enumerate(data.iterate("tune: components")):
        code = _sigmoid_code(truth)
        for k in range(c):
            for jt, cut in enumerate(cuts):
                sizes, hist = _components(q[k] >= cut, code[k], 3)
                for ja, a in enumerate(areas):
                    tp[i, k, jt, ja], fp[i, k, jt, ja] = _kept_tp_fp(sizes, hist, a)
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
    ``(image indices (M,), pixels)``: per min_area candidate, the truth histogram of the class-``c`` pixels that
    become background (class 0), ``(M, A, C)``, or with ``min_area_to: runner_up`` the histogram of (truth, runner-up
    class) pairs of those pixels, ``(M, A, C, C)``; for the images where any are removed."""

    base: np.ndarray
    removed: dict[int, tuple[np.ndarray, np.ndarray]]


def confusion(truth: np.ndarray, label: np.ndarray, c: int) -> np.ndarray:
    """``(C, C)`` pixel counts, rows truth, of the (non-void) ``truth`` and ``label`` pixels given."""
    return np.bincount(truth.astype(np.int64) * c + label, minlength=c * c).reshape(c, c)


def multiclass_tables(data: OOFData, areas: Sequence[int], class_weight: Sequence[float] | None = None,
                      min_area_to: str = "background") -> MulticlassTables:
    """One pass: argmax confusion per image, and per class the pixels each min_area removes; with
    ``class_weight`` (not all 1) the argmax of weight x probability, as :func:`apply_postprocess` takes it; with
    ``min_area_to: runner_up`` where each removed pixel goes (its runner-up on the same scores), class 0 searched too."""
    n, c = len(data), data.num_classes
    weights = None if class_weight is None or all(w == 1.0 for w in class_weight) else np.asarray(class_weight, np.float32)
    to_runner_up = min_area_to == "runner_up"
    first = 0 if to_runner_up else 1
    base = np.zeros((n, c, c), np.int64)
    rows: dict[int, list[tuple[int, np.ndarray]]] = {k: [] for k in range(first, c)}
    for i, (_, q, truth) in enumerate(data.iterate("tune: components")):
        # unweighted: the argmax of q / 255 (the map is strictly increasing); weighted: in float32, as apply_postprocess
        scores = q if weights is None else uint8_to_probs(q) * weights[:, None, None]
        label = scores.argmax(0)
        valid = truth != IGNORE_INDEX
        base[i] = confusion(truth[valid], label[valid], c)
        tcode = np.where(valid, truth, c).astype(np.int64)
        if to_runner_up:  # (truth, destination) pairs; void (truth c) counted in the sizes only
            flat = scores.reshape(c, -1)
            code, shape = tcode * c + runner_up(flat, label.ravel()).reshape(label.shape), (c + 1, c)
        else:
            code, shape = tcode, (c + 1,)
        for k in range(first, c):
            mask = label == k
            if not mask.any():
                continue
            sizes, hist = _components(mask, code, int(np.prod(shape)))
            hist = hist.reshape(-1, *shape)[:, :c]
            gone = np.zeros((len(areas), *hist.shape[1:]), np.int64)
            for j, a in enumerate(areas):
                if a > 1:
                    gone[j] = hist[sizes < a].sum(0)
            if gone.any():
                rows[k].append((i, gone))
    removed = {}
    for k, r in rows.items():
        idx = np.array([i for i, _ in r], np.int64)
        empty = (0, len(areas), c, c) if to_runner_up else (0, len(areas), c)
        removed[k] = (idx, np.stack([g for _, g in r]) if r else np.zeros(empty, np.int64))
    return MulticlassTables(base, removed)


def move_removed(conf: np.ndarray, idx: np.ndarray, pixels: np.ndarray, k: int) -> None:
    """Predicted-class-``k`` pixels of images ``idx`` (one row each) leave class ``k``: ``pixels`` ``(M, C)`` (by
    truth class) become class 0; ``(M, C, C)`` (truth, destination) go each to its runner-up."""
    if pixels.ndim == 2:
        conf[idx, :, k] -= pixels
        conf[idx, :, 0] += pixels
    else:
        conf[idx, :, k] -= pixels.sum(-1)
        conf[idx] += pixels
