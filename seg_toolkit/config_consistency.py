"""Rules between keys, checked when a config loads (called last by :func:`seg_toolkit.config_checks.check_config`):
settings that each have a valid value but contradict one another, so the run would do something else than the
config says, silently (group keys without a group split, a void id that is a class, a floor learning rate above
the learning rate) or fail late (a metric that does not fit the task, a seed sklearn
refuses, metric.classes outside the task's classes). Each rule fails with one line naming the keys and what was
expected; scored classes other than the submitted ones are named with a warning."""

from __future__ import annotations

import logging

from .config import Config, ConfigError

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def warn_once(logger: logging.Logger, msg: str, *args: object) -> None:
    """A load-time warning once per process, for every config check (this module's and the transforms'): a run's
    config is loaded again by every command step (its members, its folds, the resume check), and one warning had
    filled a train log 16 times."""
    text = msg % args if args else msg
    if text not in _WARNED:
        _WARNED.add(text)
        logger.warning("%s", text)

__all__ = ["check_consistency", "warn_once"]

#: seeds go to numpy / sklearn, which take 0 .. 2**32 - 1
_MAX_SEED = 2**32 - 1


def check_consistency(cfg: Config) -> None:
    for check in (_check_score_size, _check_folds, _check_classes, _check_schedule, _check_metric_fits, _check_unused):
        check(cfg)


def _check_score_size(cfg: Config) -> None:
    """``data.score_size``: [height, width] of positive ints, and not under an object-matching metric (its truth
    objects are matched at the image's own size)."""
    size = cfg.data.score_size
    if size is None:
        return
    if len(size) != 2 or min(size) < 1:  # ints: the config's types
        raise ConfigError(f"data.score_size: expected null (each image's own size) or [height, width] of positive ints, "
                          f"e.g. [350, 525], got {size}")
    from .instance_metrics import INSTANCE_METRICS

    if cfg.metric.name in INSTANCE_METRICS:
        raise ConfigError(f"data.score_size: {cfg.metric.name!r} matches objects at each image's own size; a resized "
                          "mask merges and drops objects. Remove data.score_size, or score with a pixel metric")


def _unused_keys(cfg: Config) -> list[tuple[str, bool, str]]:
    """``(dotted key, whether it applies, what it applies to)`` for keys only some settings read."""
    s, multiclass = cfg.scheduler.name, cfg.data.task == "multiclass"
    return [
        ("optim.momentum", cfg.optim.name == "sgd", "optim.name: sgd"),
        ("optim.nesterov", cfg.optim.name == "sgd", "optim.name: sgd"),
        ("scheduler.power", s == "poly", "scheduler.name: poly"),
        ("scheduler.step_size", s == "step", "scheduler.name: step"),
        ("scheduler.gamma", s in ("step", "plateau"), "scheduler.name: step or plateau"),
        ("scheduler.patience", s == "plateau", "scheduler.name: plateau"),
        # timm's step schedule has no floor: there min_lr is only where a warmup starts
        ("scheduler.min_lr", s in ("cosine", "poly", "plateau") or (s == "step" and cfg.scheduler.warmup_epochs > 0),
         "the cosine, poly and plateau schedules (their floor), and a step schedule's warmup (its start)"),
        ("scheduler.warmup_epochs", s != "none", "a schedule (scheduler.name is none)"),
        ("postprocess.threshold", not multiclass, "binary and multilabel tasks (a multiclass mask is the argmax)"),
        ("postprocess.empty_gate", not multiclass, "binary and multilabel tasks (a multiclass mask is the argmax)"),
        ("metric.threshold", not multiclass, "binary and multilabel tasks (a multiclass mask is the argmax)"),
        ("data.class_column", cfg.data.layout == "csv", "the csv layout (data.train_csv's rows)"),
        ("metric.empty_score", cfg.metric.name in ("dice", "iou", "auto") and not multiclass or cfg.metric.name in ("dice", "iou"),
         "the per-image dice and iou (what an empty prediction of an empty mask scores)"),
        ("predict.tile_overlap", cfg.predict.tile_size is not None, "predict.tile_size (sliding-window tiles)"),
        ("train.early_stopping_min_delta", cfg.train.early_stopping_patience is not None and cfg.train.early_stopping_patience > 0,
         "train.early_stopping_patience"),
        ("train.nan_lr_factor", cfg.train.nan_retries > 0, "train.nan_retries > 0"),
        *((f"pseudo.{k}", cfg.pseudo.teacher is not None, "pseudo.teacher (pseudo-labelling)")
          for k in ("per_fold", "confidence", "min_confident_fraction", "max_images", "soft")),
    ]


def _check_unused(cfg: Config) -> None:
    """A key set away from its default where nothing reads it is refused, as the data section's are: a user who
    set it expects it to act."""
    defaults = type(cfg)()
    for key, applies, where in _unused_keys(cfg):
        section, name = key.split(".")
        value, default = getattr(getattr(cfg, section), name), getattr(getattr(defaults, section), name)
        if not applies and value != default:
            raise ConfigError(f"{key}: {value!r} is read only with {where}; remove it (the default is {default!r})")


def _check_folds(cfg: Config) -> None:
    f, d = cfg.folds, cfg.data
    if d.group_column is not None and d.layout != "csv":
        raise ConfigError(f"data.group_column: {d.group_column!r} is a column of data.train_csv (the csv layout); the "
                          "folder layout has no CSV to hold it: give each id's group with data.group_pattern (a regex "
                          "whose first group, matched on the id, is its group, e.g. '^([^_]+)_')")
    if f.method not in ("group", "stratified_group"):
        for key in ("group_column", "group_pattern"):
            if getattr(d, key) is not None:
                raise ConfigError(f"data.{key}: groups are kept whole only by folds.method: group or stratified_group; "
                                  f"folds.method is {f.method}, which would split them silently")
    twice = sorted({k for k in f.only if f.only.count(k) > 1})
    if twice:
        raise ConfigError(f"folds.only: fold(s) {twice} listed more than once")
    for key, seed in (("folds.seed", f.seed), ("train.seed", cfg.train.seed)):
        if not 0 <= seed <= _MAX_SEED:
            raise ConfigError(f"{key}: expected 0..{_MAX_SEED} (numpy's and sklearn's seeds), got {seed}")


def _check_classes(cfg: Config) -> None:
    d = cfg.data
    twice = sorted({n for n in d.class_names if d.class_names.count(n) > 1})
    if twice:
        raise ConfigError(f"data.class_names: {twice} named more than once (names find per-class files and label the "
                          "report's columns; each class needs its own)")
    if d.ignore_index is None:
        return
    if d.ignore_index < 0:
        raise ConfigError(f"data.ignore_index: expected the mask value that marks void (>= 0), got {d.ignore_index}")
    if d.layout == "csv":
        raise ConfigError("data.ignore_index: marks void pixels in mask files; the csv layout's masks are RLE rows, "
                          "which hold no void value (remove it)")
    if d.task != "multiclass" and d.ignore_index == 0 and not d.mask_values:
        raise ConfigError(f"data.ignore_index: 0 is the background of a {d.task} mask: every background pixel would be "
                          "void, never trained or scored (a model predicting all foreground would score near 1); give "
                          "the void value of the mask files, or remap values with data.mask_values")
    if d.task == "multiclass" and d.ignore_index < d.num_classes:
        raise ConfigError(f"data.ignore_index: {d.ignore_index} is a class id (0..{d.num_classes - 1} with "
                          f"data.num_classes={d.num_classes}): its pixels would never be trained or scored; give the "
                          "void value of the mask files, or remap values with data.mask_values")


def _check_schedule(cfg: Config) -> None:
    # not refused: warmup as long as the run (`--set train.epochs=1` smoke runs of a config warming up for 1) and an
    # encoder frozen for the whole run (decoder-only training on a pretrained encoder)
    s, o = cfg.scheduler, cfg.optim
    if s.name in ("cosine", "poly", "plateau") and s.min_lr >= o.lr:
        raise ConfigError(f"scheduler.min_lr: {s.min_lr} is not below optim.lr ({o.lr}); the floor of a decaying "
                          "learning rate must be lower than its start")
    if s.name == "step" and s.warmup_epochs and s.min_lr >= o.lr:  # the warmup rises from min_lr
        raise ConfigError(f"scheduler.min_lr: {s.min_lr} is not below optim.lr ({o.lr}); the step schedule's warmup "
                          "(scheduler.warmup_epochs) rises from min_lr to optim.lr")
    if s.name == "step" and s.step_size >= cfg.train.epochs:  # warned, not refused: a one-epoch smoke run of a config
        warn_once(log, "scheduler.step_size: %d epochs between decays, but train.epochs is %d: the step schedule never "
                  "decays in this run (a constant learning rate); lower step_size, or scheduler.name: none to say so",
                  s.step_size, cfg.train.epochs)


def _check_metric_fits(cfg: Config) -> None:
    from .evaluator import resolve_metric_name  # lazy: imports torch

    resolve_metric_name(cfg.metric.name, cfg.data.task)  # tgs_map on a multilabel task, ...
    from .config_submission_checks import check_class_list, submitted_classes

    m, d = cfg.metric, cfg.data
    check_class_list(cfg, m.classes, "metric.classes")
    if m.classes and m.name == "pixel_accuracy":
        raise ConfigError("metric.classes: pixel_accuracy counts every pixel, whatever its class; remove metric.classes")
    from .instance_metrics import INSTANCE_METRICS

    if m.name in INSTANCE_METRICS:
        if not (d.instance_folders or d.rle_instances):
            raise ConfigError(f"metric.name: {m.name!r} matches predicted objects with the truth objects, which come from "
                              "data.instance_folders: true (one mask file per object) or data.rle_instances: true (one "
                              "CSV row per object); a mask or one row per image holds their union, in which touching "
                              "objects are one")
        if not cfg.submission.instances:
            warn_once(log, "metric.name %r scores the 8-connected objects of each mask, but submission.instances is off: the "
                        "submission writes one row per image (the union), which an object-matching grader reads as one "
                        "object", m.name)
    elif cfg.submission.instances:
        warn_once(log, "submission.instances: the competition scores objects (DSB 2018: precision over IoU thresholds of "
                    "matched objects; Airbus: F2), but metric.name %r scores pixels: CV, tuning and evaluate do not see "
                    "touching objects merged into one (which scores well here and nothing there) or one object split in "
                    "two. metric.name: instance_map (DSB) or instance_f2 (Airbus) scores objects",
                    resolve_metric_name(m.name, d.task))
    if m.name != "pixel_accuracy":
        every = range(d.num_classes) if d.task == "multiclass" else range(1, d.num_classes + 1)
        scored, submitted = sorted(m.classes or every), sorted(submitted_classes(cfg))
        if scored != submitted:
            note = " (class 0 gets rows only when submission.classes lists it)" if d.task == "multiclass" else ""
            warn_once(log, "metric: the score averages classes %s but the submission has rows for %s%s: CV and tuning then "
                        "score classes that are not submitted, or the other way round. Set metric.classes: %s to score "
                        "what is submitted, or submission.classes to submit what is scored", scored, submitted, note, submitted)

