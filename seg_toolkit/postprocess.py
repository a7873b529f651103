"""Turning probabilities into the masks that are submitted.

Parameters (one value per class): probability ``threshold``, ``min_area`` (connected
components with fewer pixels are dropped), for multiclass a ``class_weight`` (the label is the
argmax of weight x probability: a rare class's pixels won back from its neighbours; tuned on OOF
from ``postprocess.class_weight_grid``) and, for binary/multilabel, an image-level
``empty_gate`` (a class is left empty unless its gate score reaches the gate) with its
``gate_source``: the class's max probability (``max_prob``), or the probability of the
empty-mask classifier (``classifier``, a model trained with ``model.classifier``).
They come from ``postprocess.json`` in the run folder when tuned on OOF predictions
(``seg-toolkit tune``), else from the config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from .config import Config, ConfigError
from .tensors import probs_to_uint8, uint8_to_probs

log = logging.getLogger(__name__)

__all__ = ["PostParams", "apply_postprocess", "on_oof_grid", "area_floor", "remove_small", "runner_up", "split_objects",
           "params_from_config", "load_params"]


#: what an empty gate compares with its value
GATE_SOURCES = ("max_prob", "classifier")
#: how :func:`split_objects` gives an object's pixels to its seeds
SPLIT_BY = ("distance", "probability")
#: multiclass: where the pixels of a component smaller than its class's min_area go
MIN_AREA_TO = ("background", "runner_up")


@dataclass
class PostParams:
    threshold: list[float]
    min_area: list[int]
    empty_gate: list[float | None]
    gate_source: list[str] = field(default_factory=list)  # per class; empty = max_prob everywhere (older files)
    class_weight: list[float] = field(default_factory=list)  # multiclass: argmax of weight x probability; empty = all 1
    split_seed: list[float | None] = field(default_factory=list)  # binary / multilabel: split_objects' seed; empty = off
    split_by: str = "distance"  # split_objects' way of cutting: nearest seed (distance) or a watershed on p (probability)
    min_area_to: str = "background"  # multiclass: a small component's pixels become class 0, or each its runner-up class

    def __post_init__(self) -> None:
        self._check_values()
        if not self.gate_source:
            self.gate_source = ["max_prob"] * len(self.empty_gate)
        bad = [g for g in self.gate_source if g not in GATE_SOURCES]
        if bad or len(self.gate_source) != len(self.empty_gate):
            raise ValueError(f"gate_source: expected one of {GATE_SOURCES} per class, got {self.gate_source!r}")
        if not self.split_seed:
            self.split_seed = [None] * len(self.threshold)
        if len(self.split_seed) != len(self.threshold) or not all(
                s is None or (isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 < s <= 1.0)
                for s in self.split_seed):
            raise ValueError(f"split_seed: expected null or a probability in (0, 1] per class, got {self.split_seed!r}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by: expected one of {SPLIT_BY}, got {self.split_by!r}")
        if self.min_area_to not in MIN_AREA_TO:
            raise ValueError(f"min_area_to: expected one of {MIN_AREA_TO}, got {self.min_area_to!r}")
        if not self.class_weight:
            self.class_weight = [1.0] * len(self.threshold)
        self.class_weight = [float(w) for w in self.class_weight]
        if len(self.class_weight) != len(self.threshold) or not all(0 < w < float("inf") for w in self.class_weight):
            raise ValueError(f"class_weight: expected a positive weight per class, got {self.class_weight!r}")

    def _check_values(self) -> None:
        """Each class's threshold a probability, min_area a whole number >= 0, gate a probability or null (a NaN
        threshold left a class empty everywhere, -1 filled it, a string failed inside numpy)."""
        def number(x) -> bool:
            return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)

        for name, values, ok, want in (
            ("threshold", self.threshold, lambda x: number(x) and 0.0 <= x <= 1.0, "a probability in [0, 1]"),
            ("min_area", self.min_area, lambda x: number(x) and x >= 0 and float(x).is_integer(), "a whole number >= 0"),
            ("empty_gate", self.empty_gate, lambda x: x is None or (number(x) and 0.0 <= x <= 1.0), "null or a probability in [0, 1]"),
        ):
            if not isinstance(values, list):
                raise ValueError(f"{name}: expected a list with a value per class, got {values!r}")
            for c, x in enumerate(values):
                if not ok(x):
                    raise ValueError(f"{name} of class {c}: expected {want}, got {x!r}")
        self.min_area = [int(a) for a in self.min_area]

    def weighted(self) -> bool:
        """Whether the multiclass argmax weighs the classes (any weight other than 1)."""
        return any(w != 1.0 for w in self.class_weight)

    def for_class(self, c: int) -> tuple[float, int, float | None]:
        return self.threshold[c], self.min_area[c], self.empty_gate[c]

    def area_classes(self) -> range:
        """Multiclass: the classes whose small components min_area removes (class 0's only when they go to their
        runner-up: made background, they would stay class 0)."""
        return range(0 if self.min_area_to == "runner_up" else 1, len(self.min_area))

    def needs_presence(self) -> bool:
        """Whether some class gates on the classifier's probability."""
        return any(g is not None and s == "classifier" for g, s in zip(self.empty_gate, self.gate_source))


def _broadcast(values: list, n: int, name: str) -> list:
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ValueError(f"postprocess.{name}: {len(values)} values for {n} classes (give one, or one per class)")
    return list(values)


def tuned_elsewhere(tuned: dict | None, folds: list[int], score: float | None) -> str | None:
    """How ``postprocess.json``'s data ``tuned`` does not fit OOF files of ``folds`` that score ``score`` (None: it
    fits, or is not known): ``"folds"`` when it was tuned on other folds' files, ``"score"`` when on files that scored
    otherwise (remade since). The report and ``compare`` say it beside the tuned score they show."""
    if not isinstance(tuned, dict):
        return None
    tuned_folds = tuned.get("folds")
    if isinstance(tuned_folds, list) and tuned_folds and sorted(tuned_folds) != sorted(folds):
        return "folds"
    was = tuned.get("cv_json_score")
    if (isinstance(was, (int, float)) and isinstance(score, (int, float)) and not math.isnan(score)
            and abs(was - score) > 1e-6):
        return "score"
    return None


def area_floor(cfg: Config) -> int:
    """The smallest ``min_area`` the submission keeps: with instance rows, ``submission.min_instance_area`` drops
    smaller 8-connected objects as ``min_area`` does, so tuning, CV and evaluate take it as the floor of every
    ``min_area`` and score the masks that are submitted."""
    s = cfg.submission
    return int(s.min_instance_area) if s.instances and s.min_instance_area > 1 else 0


def params_from_config(cfg: Config) -> PostParams:
    n, p = cfg.data.num_classes, cfg.postprocess
    floor = area_floor(cfg)
    return PostParams(
        threshold=_broadcast(p.threshold, n, "threshold"),
        min_area=[max(int(a), floor) for a in _broadcast(p.min_area, n, "min_area")],
        empty_gate=[p.empty_gate] * n,
        split_seed=[p.split_seed] * n,
        split_by=p.split_by,
        min_area_to=p.min_area_to,
    )


def params_in_use(params: dict, task: str) -> dict:
    """The parameters of ``postprocess.json``'s ``params`` that decide ``task``'s masks (what `tune` and the report
    show): a multiclass argmax has no threshold or empty gate, and an unset gate or split seed decides nothing."""
    if task == "multiclass":
        keys = ["class_weight", "min_area", "min_area_to"]
    else:
        keys = ["threshold", "min_area", "empty_gate"]
        keys += ["gate_source"] if any(g is not None for g in params.get("empty_gate") or []) else []
        keys += ["split_seed", "split_by"] if any(x is not None for x in params.get("split_seed") or []) else []
    return {k: params[k] for k in keys if k in params}


def _refuse_missing_tuning(cfg: Config, run) -> None:
    """``postprocess.tune`` with every fold of the run in cv.json, and no ``postprocess.json``: training (or an
    ensemble) stopped between the two, and the config's values would be submitted without a word (24 of 72 rows of
    the demo differed from the tuned run's)."""
    from .budget_run import run_folds
    from .config import ConfigError
    from .files import read_json

    cv = read_json(run.cv_json)
    # the run's own setting decides whether training tuned (a run trained with tune: false predicts untuned)
    trained_tuned = run.config().postprocess.tune if run.config_yaml.is_file() else cfg.postprocess.tune
    if not (cfg.postprocess.tune and trained_tuned) or cv is None or not set(run_folds(cfg, run)) <= set(cv.get("folds") or []):
        return
    raise ConfigError(f"{run.dir}: trained with postprocess.tune true and cv.json scores every fold, but there is no "
                      f"{run.postprocess_json.name} (stopped after cv.json, before tuning?): run `seg-toolkit tune "
                      f"{run.dir}` (predict and evaluate also take --set postprocess.tune=false: the config's values)")


def load_params(cfg: Config, run=None) -> PostParams:
    """Tuned parameters from the run's ``postprocess.json`` (a :class:`~seg_toolkit.run.Run` or
    its folder) if present, else the config's."""
    from .config import ConfigError
    from .files import read_json
    from .run import Run

    if run is None:
        return params_from_config(cfg)
    run = run if isinstance(run, Run) else Run(run)
    data = read_json(run.postprocess_json)
    if data is None:
        _refuse_missing_tuning(cfg, run)
        return params_from_config(cfg)
    saved = run.config() if run.config_yaml.is_file() else None
    changed = [k for k in ("threshold", "min_area", "empty_gate", "split_seed", "split_by", "min_area_to")
               if saved is not None and getattr(saved.postprocess, k) != getattr(cfg.postprocess, k)]
    if changed:  # `predict RUN --set postprocess.threshold=0.3` was ignored silently for the tuned values
        raise ConfigError(f"postprocess.{changed[0]}: {getattr(cfg.postprocess, changed[0])} differs from the run's "
                          f"{getattr(saved.postprocess, changed[0])}, but {run.postprocess_json} (tuned on OOF) decides "
                          "the masks; change the tuned values with `seg-toolkit tune` (its grids), or move the file "
                          "away to use the config's")
    try:
        params = PostParams(**data["params"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{run.postprocess_json}: not a post-processing file ({type(e).__name__}: {e}); "
                          "run `seg-toolkit tune CONFIG` again or delete it") from None
    floor = area_floor(cfg)
    if floor and any(a < floor for a in params.min_area):  # tuned before the floor, or min_instance_area raised since
        log.warning("%s: min_area %s is below submission.min_instance_area=%d, which the submission applies: %d is "
                    "used; run `seg-toolkit tune CONFIG` again to tune above it", run.postprocess_json, params.min_area,
                    floor, floor)
        params = replace(params, min_area=[max(int(a), floor) for a in params.min_area])
    n = cfg.data.num_classes
    if not (len(params.threshold) == len(params.min_area) == len(params.empty_gate) == n):
        raise ConfigError(f"{run.postprocess_json}: parameters for {len(params.threshold)} classes, data.num_classes is {n}")
    tuned_on, trained = data.get("folds"), run.trained_folds()
    if tuned_on is not None and not run.is_ensemble and sorted(tuned_on) != trained:
        log.warning("%s was tuned on the OOF images of fold(s) %s, but the run's trained folds are now %s; run "
                    "`seg-toolkit tune CONFIG` so that the post-processing fits what the folds predict", run.postprocess_json,
                    sorted(tuned_on), trained)
    from .evaluator import resolve_metric_name

    now = (resolve_metric_name(cfg.metric.name, cfg.data.task), cfg.metric.empty_score, list(cfg.metric.classes) or None)
    # files from before empty_score / metric_classes were recorded: those unknown, taken as now
    then = (data.get("metric"), data.get("empty_score", now[1]), data.get("metric_classes", now[2]))
    if then[0] is not None and then != now:
        log.warning("%s was tuned for metric %s (empty_score %s, classes %s), but the config scores %s (empty_score %s, "
                    "classes %s): its thresholds and gates fit the other metric; run `seg-toolkit tune CONFIG` again",
                    run.postprocess_json, *[v if v is not None else "all" for v in (*then, *now)])
    log.info("post-processing tuned on OOF: %s", run.postprocess_json)
    return params


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components of a boolean mask with fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def on_oof_grid(p) -> np.ndarray:
    """``p`` (a NumPy array or a tensor of probabilities) as float32 values on the uint8 OOF files' grid: what
    ``tune`` scored. Values already on it (OOF probabilities) come back unchanged."""
    return uint8_to_probs(probs_to_uint8(p))


def apply_postprocess(probs: np.ndarray, task: str, params: PostParams, presence=None) -> np.ndarray:
    """Masks from probabilities ``(C, H, W)`` (and the classifier's ``presence`` ``(C,)``, a NumPy array
    or a CPU tensor as the predictor yields it, which a ``gate_source: classifier`` needs).

    Binary/multilabel -> ``uint8 (C, H, W)``; multiclass -> ``uint8 (H, W)`` label map: the argmax
    of ``class_weight[c] x probs[c]`` (float32; all weights 1: the plain argmax, ties to the lower class), where
    the components of a class smaller than its min_area (8-connected, found on that argmax map for every class at
    once) then become background (class 0), or with ``min_area_to: runner_up`` each pixel its runner-up: the
    argmax of the same scores without its own class.

    The probabilities and ``presence`` are first put on the 1/255 grid the OOF files store them on
    (:func:`~seg_toolkit.tensors.probs_to_uint8`), where ``tune`` chose the parameters: a threshold or gate of 0.4
    (102 / 255) then decides a pixel of 0.399 (stored as 102) as tuning scored it, not the other way.
    """
    probs = on_oof_grid(probs)
    if presence is not None:
        presence = on_oof_grid(presence)
    if task == "multiclass":
        scores = probs * np.asarray(params.class_weight, np.float32)[:, None, None] if params.weighted() else probs
        label = scores.argmax(axis=0).astype(np.uint8)
        drop = np.zeros(label.shape, bool)
        for c in params.area_classes():
            if params.min_area[c] > 1:
                m = label == c
                drop |= m & ~remove_small(m, params.min_area[c])
        if drop.any():
            label[drop] = 0 if params.min_area_to == "background" else runner_up(scores[:, drop], label[drop])
        return label
    if presence is None and params.needs_presence():
        raise ValueError("post-processing gates on the empty-mask classifier (gate_source: classifier), but this "
                         "prediction has no classifier output (a model trained without model.classifier?)")
    out = np.zeros(probs.shape, np.uint8)
    for c in range(probs.shape[0]):
        thr, area, gate = params.for_class(c)
        if gate is not None:
            # float32 like the probabilities (a Python float gate is compared in float32), as tune's gate_open does
            score = np.float32(float(presence[c])) if params.gate_source[c] == "classifier" else probs[c].max()
            if score < gate:
                continue
        mask = probs[c] >= thr
        if params.split_seed[c] is not None:
            mask = split_objects(probs[c], mask, params.split_seed[c], params.split_by)
        out[c] = remove_small(mask, area)
    return out


def present_classes(mask: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """``bool (C,)``: the classes a decided mask (:func:`apply_postprocess`'s) has any pixel of."""
    if task == "multiclass":
        return np.bincount(mask.ravel(), minlength=num_classes)[:num_classes] > 0
    return mask.reshape(mask.shape[0], -1).any(axis=1)


def present_drift(oof: dict | None, counts: np.ndarray, n: int, names: list[str]) -> list[str]:
    """Classes whose share of non-empty decided masks on ``n`` test images (``counts``) lies far from the OOF's under
    the same parameters (``oof``: postprocess.json's ``decided_present``): more than 0.1 and four standard errors of
    the difference of two shares apart (pooled, from both counts). The OOF is each fold model's own prediction, the test the folds' mean, whose maxima sit lower: a
    gate tuned at the top of the OOF's range can shut on every test image (the audit: 27% of OOF images open, 0% of
    test; the submission scored under the untuned one). One line per such class."""
    if not oof or n < 20 or len(oof.get("share", [])) != len(counts):
        return []
    lines, m = [], max(int(oof.get("n_images", 1)), 1)
    for c, (p, k) in enumerate(zip(oof["share"], counts)):
        q = k / n
        pooled = (p * m + k) / (m + n)  # 30 OOF images beside 2000 test ones: the OOF's share is the uncertain one
        se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
        if abs(q - p) > max(0.1, 4 * se):
            lines.append(f"{names[c]}: {q:.0%} of {n} test images decided non-empty, {p:.0%} of the OOF images")
    return lines


def runner_up(scores: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per pixel of ``scores`` ``(C, M)`` the argmax without its ``label`` ``(M,)`` (ties to the lower class, as
    ``argmax`` takes them), ``uint8 (M,)``. ``scores`` of any real or integer dtype (the OOF files' uint8 too)."""
    masked = scores.astype(np.float32 if scores.dtype.kind == "f" else np.int16, copy=True)
    masked[label, np.arange(masked.shape[1])] = -1
    return masked.argmax(axis=0).astype(np.uint8)


def split_objects(probs: np.ndarray, mask: np.ndarray, seed: float, by: str = "distance") -> np.ndarray:
    """``mask`` with each 8-connected object that holds two or more seeds (8-connected regions of
    ``probs >= seed``, the object's cores) cut apart: each of its pixels goes to one of its own seeds, and the
    pixels where two parts meet become background, so the parts are separate 8-connected objects (one instance
    row each). Objects with one seed or none are unchanged. Touching nuclei merged at the threshold come apart
    between their cores.

    ``by``: ``distance`` gives each pixel to the nearest seed (Euclidean, ``scipy.ndimage.distance_transform_edt``):
    between a big and a small nucleus the cut sits halfway between their cores. ``probability`` floods ``1 - p``
    from the seeds (``skimage.segmentation.watershed``, 8-connected, ties to the earlier flood), so the cut
    follows the valley of the model's probability between them."""
    from .instance_metrics import label_objects

    objects, n = label_objects(mask)
    seeds, n_seeds = label_objects(mask & (probs >= seed))
    if n_seeds < 2:
        return mask
    pairs = np.unique(objects[seeds > 0].astype(np.int64) * (n_seeds + 1) + seeds[seeds > 0])
    several = np.flatnonzero(np.bincount(pairs // (n_seeds + 1), minlength=n + 1)[1:] >= 2) + 1
    if not several.size:
        return mask
    parts = np.zeros(objects.shape, np.int32)
    boxes = ndimage.find_objects(objects)
    for k in several:  # each object apart: a pixel never goes to a seed of another object across a gap
        box = boxes[k - 1]
        inside = objects[box] == k
        own = np.where(inside, seeds[box], 0)
        if by == "probability":
            try:
                from skimage.segmentation import watershed  # the extra seg_toolkit[instances]; config loading checks it
            except ImportError:  # parameters from a postprocess.json whose run's config was not loaded here
                raise ConfigError("split_by: 'probability' (the tuned post-processing) cuts objects along a watershed of "
                                  "scikit-image, which is not installed: pip install 'seg_toolkit[instances]'") from None
            parts[box][inside] = watershed(1.0 - probs[box], own, mask=inside, connectivity=2)[inside]
        else:
            nearest = ndimage.distance_transform_edt(own == 0, return_distances=False, return_indices=True)
            parts[box][inside] = own[tuple(nearest)][inside]
    big = np.int32(n_seeds + 1)
    lowest = ndimage.minimum_filter(np.where(parts > 0, parts, big), size=3, mode="constant", cval=big)
    out = mask.copy()
    out[(parts > 0) & (lowest < parts)] = False  # the higher-numbered side of every meeting line
    return out
