"""Everything knowable when a config loads, checked when it loads (called by ``config_from_dict``).

Each rule fails with one line naming the dotted key and what was expected; sections are
checked in the order of :class:`~seg_toolkit.config.Config`, so the first problem in the file
is the one reported. Augmentations, TTA names, losses and the architecture name are checked by
the modules that use them, imported lazily (no import cycle; no model is built).
"""

from __future__ import annotations

import copy
import math
import os
import re
import string
import warnings
from typing import Any

from .config import Config, ConfigError, check_deep_supervision_arch

__all__ = ["check_config"]


def check_config(cfg: Config) -> None:
    """Cross-field rules the types cannot say: everything knowable at load time.

    Each rule fails with one line naming the dotted key and what was expected; sections are
    checked in the order of :class:`Config`, so the first problem in the file is the one
    reported. Augmentations, TTA names, losses and the architecture name are checked by the
    modules that use them, imported lazily (no import cycle; no model is built).
    ``train.device`` is not checked here (see :func:`_check_train`).
    """
    for check in (
        _check_experiment,
        _check_data,
        _check_masks,
        _check_mask_layouts,
        _check_folds,
        _check_transforms,
        _check_model,
        _check_loss,
        _check_train,
        _check_metric,
        _check_pseudo,
        _check_predict,
        _check_postprocess,
        _check_submission,
        _check_track,
    ):
        check(cfg)


def _finite(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _check_unit(values: list[float], key: str) -> None:
    """Every value a probability in [0, 1]."""
    for i, v in enumerate(values):
        if not (_finite(v) and 0.0 <= v <= 1.0):
            where = f"{key}[{i}]" if len(values) > 1 else key
            raise ConfigError(f"{where}: expected a probability in [0, 1], got {v}")


def _check_non_negative(values: list[int], key: str) -> None:
    for i, v in enumerate(values):
        if v < 0:
            where = f"{key}[{i}]" if len(values) > 1 else key
            raise ConfigError(f"{where}: expected >= 0, got {v}")


def _check_experiment(cfg: Config) -> None:
    if not cfg.experiment or any(c in cfg.experiment for c in "/\\") or cfg.experiment in (".", ".."):
        raise ConfigError(f"experiment: {cfg.experiment!r} must be a plain folder name")


def _check_data(cfg: Config) -> None:
    d = cfg.data
    if d.num_classes < 1:
        raise ConfigError(f"data.num_classes: expected >= 1, got {d.num_classes}")
    if d.task == "binary" and d.num_classes != 1:
        raise ConfigError(f"data.num_classes: a binary task has 1 output channel, got {d.num_classes}")
    if d.task == "multiclass" and d.num_classes < 2:
        raise ConfigError("data.num_classes: a multiclass task needs >= 2 classes (background counts)")
    if d.class_names and len(d.class_names) != d.num_classes:
        raise ConfigError(
            f"data.class_names: {len(d.class_names)} names for data.num_classes={d.num_classes}"
        )
    if d.in_channels not in (1, 3, 4):
        raise ConfigError(f"data.in_channels: expected 1, 3 or 4, got {d.in_channels}")
    if d.limit is not None and d.limit < 1:
        raise ConfigError(f"data.limit: expected null (all samples) or >= 1, got {d.limit}")
    _check_mask_reading(cfg)
    if d.group_pattern is not None:
        try:
            if re.compile(d.group_pattern).groups < 1:
                raise ConfigError(f"data.group_pattern: {d.group_pattern!r} needs a capture group, e.g. '^([^_]+)_'")
        except re.error as e:
            raise ConfigError(f"data.group_pattern: {d.group_pattern!r} is not a valid regex ({e})") from None


#: mask file formats whose compression changes pixel values (a label map cannot survive it)
LOSSY_MASK_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif")


def _check_mask_reading(cfg: Config) -> None:
    """Mask files are read exactly: a lossy format is refused unless the config says how to read it
    (binary: ``data.mask_threshold``); a threshold applies to binary masks only."""
    d = cfg.data
    if d.mask_threshold is not None:
        if d.task != "binary" and not d.mask_per_class:
            raise ConfigError(
                f"data.mask_threshold: applies to binary masks only (data.task is {d.task}); label map values are "
                "class ids and are read as they are"
            )
        if d.mask_threshold < 1:
            raise ConfigError(f"data.mask_threshold: expected >= 1 (a value >= it is foreground), got {d.mask_threshold}")
    if d.layout != "folder" or d.train_lists or d.pair_split:
        return  # list files name each mask; read_mask refuses a JPEG mask by its content; pairs: _check_masks
    if d.mask_format == "colors" and d.mask_color_tolerance is not None:
        return  # lossy colour masks are read by nearest colour (_check_masks)
    ext = d.mask_ext.lower()
    if ext.endswith(LOSSY_MASK_EXTS) and d.mask_threshold is None:
        if d.task == "binary" or d.mask_per_class:
            raise ConfigError(
                f"data.mask_ext: {d.mask_ext!r} is a lossy format: compression noise makes pixels near every edge "
                "non-zero, so reading 'any value > 0' inflates every mask; set data.mask_threshold (e.g. 128 for "
                "0/255 masks) or convert the masks to PNG"
            )
        raise ConfigError(
            f"data.mask_ext: {d.mask_ext!r} is a lossy format: a {d.task} label map cannot be read back from it "
            "(compression noise turns class ids at every edge into other ids); convert the masks to PNG"
        )


_MASK_KEYS = ("mask_format", "mask_channel", "mask_colors", "mask_void_colors", "mask_color_tolerance", "mask_values",
              "pair_split", "pair_split_at", "instance_folders", "instance_target", "instance_border_px",
              "mask_per_class", "missing_class_masks")


def _check_masks(cfg: Config) -> None:
    """How mask files hold their classes (:mod:`seg_toolkit.data.masks`): channel, colour table,
    value remapping, image|label pairs; and what an image without a CSV row means."""
    d = cfg.data
    defaults = type(d)()
    if d.layout == "csv":
        for key in _MASK_KEYS:
            if getattr(d, key) != getattr(defaults, key):
                raise ConfigError(f"data.{key}: describes mask files (data.layout: folder); the csv layout's masks are RLE rows")
    elif d.unlisted_images != defaults.unlisted_images:
        raise ConfigError("data.unlisted_images: applies to the csv layout (images without a row in data.train_csv); "
                          "the folder layout pairs every image with its mask file")
    if d.unlisted_images == "empty" and d.group_column:
        raise ConfigError("data.unlisted_images: 'empty' adds images that have no data.group_column value; "
                          "group them with data.group_pattern instead")
    if d.task == "multilabel" and d.layout == "folder" and d.mask_values:
        raise ConfigError("data.mask_values: multilabel masks are read from the csv layout only")
    colors = d.mask_format == "colors"
    if d.mask_channel is not None:
        if colors:
            raise ConfigError("data.mask_channel: reads class ids from one channel; data.mask_format: colors reads "
                              "the RGB colours instead (use one of them)")
        if not 0 <= d.mask_channel <= 3:
            raise ConfigError(f"data.mask_channel: expected 0..3 (0 = red, 1 = green, 2 = blue, 3 = alpha), got {d.mask_channel}")
    if not colors:
        for key in ("mask_colors", "mask_void_colors", "mask_color_tolerance"):
            if getattr(d, key) != getattr(defaults, key):
                raise ConfigError(f"data.{key}: only used with data.mask_format: colors (mask pixels are colours)")
    else:
        if not d.mask_colors and not d.classes_csv:
            raise ConfigError("data.mask_format: colors needs a colour table: data.mask_colors ([r, g, b] of class "
                              "0, 1, ...) or data.classes_csv with r,g,b columns")
        if d.mask_void_colors and not d.mask_colors:
            raise ConfigError("data.mask_void_colors: give it with data.mask_colors (a classes CSV marks void rows "
                              "with its ignore column)")
        seen: dict[tuple, str] = {}
        for key in ("mask_colors", "mask_void_colors"):
            for i, c in enumerate(getattr(d, key)):
                where = f"data.{key}[{i}]"
                if len(c) != 3 or any(not 0 <= v <= 255 for v in c):
                    raise ConfigError(f"{where}: expected [r, g, b] with values 0..255, got {c}")
                if tuple(c) in seen:
                    raise ConfigError(f"{where}: colour {c} is listed twice (also {seen[tuple(c)]})")
                seen[tuple(c)] = where
        if d.mask_colors and not d.mask_values:
            want = d.num_classes if d.task == "multiclass" else 2
            if len(d.mask_colors) != want:
                what = (f"data.num_classes={d.num_classes}" if d.task == "multiclass"
                        else "a binary task (background, foreground)")
                raise ConfigError(f"data.mask_colors: {len(d.mask_colors)} colours for {what}; give {want} (class i = "
                                  "the i-th colour), or map them with data.mask_values")
        t = d.mask_color_tolerance
        if t is not None and not (_finite(t) and t > 0):
            raise ConfigError(f"data.mask_color_tolerance: expected a distance > 0 (e.g. 40), or null for exact colours, got {t}")
        if d.mask_threshold is not None:
            raise ConfigError("data.mask_threshold: reads gray values; colour masks (data.mask_format: colors) are read "
                              "through the colour table")
    if d.mask_values:
        if d.mask_threshold is not None:
            raise ConfigError("data.mask_values: declares every value exactly; data.mask_threshold reads a range: use one of them")
        if d.ignore_index is not None:
            raise ConfigError(f"data.ignore_index: with data.mask_values, declare the void value there "
                              f"(e.g. {{{d.ignore_index}: void}}) and set data.ignore_index: null")
        top = 1 if d.task == "binary" else d.num_classes - 1
        for k, v in d.mask_values.items():
            if k < 0:
                raise ConfigError(f"data.mask_values.{k}: mask values are >= 0")
            if isinstance(v, str):
                if v != "void":
                    raise ConfigError(f"data.mask_values.{k}: {v!r} is not a class id or 'void'")
            elif not 0 <= v <= top:
                raise ConfigError(f"data.mask_values.{k}: class {v} is outside 0..{top} (data.task={d.task}, "
                                  f"data.num_classes={d.num_classes}) or 'void'")
        if colors and d.mask_colors:
            n = len(d.mask_colors)
            extra = sorted(k for k in d.mask_values if k >= n)
            if extra:
                raise ConfigError(f"data.mask_values: keys {extra} are not ids of data.mask_colors (0..{n - 1})")
    if d.instance_folders:
        if d.task != "binary":
            raise ConfigError(f"data.instance_folders: the union of object masks is a binary mask; data.task is {d.task}")
        if d.pair_split or d.train_lists or d.mask_format != "ids":
            raise ConfigError("data.instance_folders: one folder per image with one mask file per object; it does not "
                              "combine with data.pair_split, data.train_lists or data.mask_format: colors")
    if d.pair_split is None:
        if d.pair_split_at is not None:
            raise ConfigError("data.pair_split_at: only used with data.pair_split (image and label in one file)")
        return
    if d.layout != "folder":
        return  # refused above
    if d.pair_split_at is not None and d.pair_split_at < 1:
        raise ConfigError(f"data.pair_split_at: expected the first column (row) of the second part, >= 1, got {d.pair_split_at}")
    lossy = d.image_ext.lower().endswith(LOSSY_MASK_EXTS)
    if lossy and not ((colors and d.mask_color_tolerance is not None) or d.mask_threshold is not None):
        how = ("set data.mask_color_tolerance (nearest colour within that distance, farther -> void)" if colors
               else "set data.mask_threshold (binary)" if d.task == "binary"
               else "a label map of ids cannot be read back from a lossy file")
        raise ConfigError(f"data.pair_split: the labels are in the {d.image_ext!r} images, a lossy format; {how}")


_RLE_KEYS = ("rle_index_base", "rle_starts", "rle_empty_token", "rle_instances")


def _check_mask_layouts(cfg: Config) -> None:
    """The csv layout's RLE style (``data.rle_*``), object folders (``data.instance_*``) and one mask file
    per class (``data.mask_per_class``): each key only where it applies, each value in its range."""
    d = cfg.data
    defaults = type(d)()
    if d.layout != "csv":
        for key in _RLE_KEYS:
            if getattr(d, key) != getattr(defaults, key):
                raise ConfigError(f"data.{key}: describes the RLE rows of data.train_csv (data.layout: csv)")
    if d.rle_index_base not in (0, 1):
        raise ConfigError(f"data.rle_index_base: expected 0 or 1 (the number of the first pixel), got {d.rle_index_base}")
    if not d.instance_folders:
        for key in ("instance_target", "instance_border_px"):
            if getattr(d, key) != getattr(defaults, key):
                raise ConfigError(f"data.{key}: only used with data.instance_folders: true (one mask file per object)")
    if d.instance_border_px < 1:
        raise ConfigError(f"data.instance_border_px: expected >= 1 (pixels within it of two objects become background), "
                          f"got {d.instance_border_px}")
    if d.mask_per_class is None:
        if d.missing_class_masks != defaults.missing_class_masks:
            raise ConfigError("data.missing_class_masks: only used with data.mask_per_class (one mask file per class)")
        if d.task == "multilabel" and d.layout == "folder":
            raise ConfigError("data.mask_per_class: a multilabel task in the folder layout needs one mask file per class, "
                              "e.g. '{id}_{cls}' (masks/<id>_1.png, ...) or '{name}/{id}'; or use the csv layout with "
                              "data.class_column")
        return
    where = f"data.mask_per_class: {d.mask_per_class!r}"
    if d.task != "multilabel" or d.layout != "folder":
        raise ConfigError(f"{where}: one binary file per class is a multilabel task's masks in the folder layout "
                          f"(data.task is {d.task}, data.layout {d.layout})")
    if d.train_lists or d.pair_split or d.instance_folders or d.mask_format != "ids" or d.mask_channel is not None:
        raise ConfigError(f"{where}: does not combine with data.train_lists, data.pair_split, data.instance_folders, "
                          "data.mask_format: colors or data.mask_channel (each class file is one binary mask)")
    if d.ignore_index is not None:
        raise ConfigError("data.ignore_index: per-class mask files are binary (0 and 255, or 0 and 1); no value marks void")
    try:
        fields = [(n, spec, conv) for _, n, spec, conv in string.Formatter().parse(d.mask_per_class) if n is not None]
    except ValueError as e:
        raise ConfigError(f"{where} is not a valid pattern ({e}); e.g. '{{id}}_{{cls}}'") from None
    names = [n for n, _, _ in fields]
    for n, spec, conv in fields:
        if n not in ("id", "cls", "name") or spec or conv:
            raise ConfigError(f"{where}: unknown field {{{n}}}; use {{id}}, and {{cls}} (1-based class number) or {{name}}")
    if names.count("id") != 1 or names.count("cls") + names.count("name") != 1:
        raise ConfigError(f"{where}: needs {{id}} once and one of {{cls}} / {{name}}, e.g. '{{id}}_{{cls}}' or '{{name}}/{{id}}'")
    parts = d.mask_per_class.replace("\\", "/").split("/")
    if d.mask_per_class.startswith(("/", "\\")) or ".." in parts:
        raise ConfigError(f"{where}: a path inside data.train_masks, without '..' or a leading '/'")
    if "name" in names:
        if not d.class_names and not d.classes_csv:
            raise ConfigError(f"{where}: {{name}} needs the class names: data.class_names (or data.classes_csv)")
        for i, n in enumerate(d.class_names):
            if not n or any(c in n for c in "/\\\x00") or n in (".", ".."):
                raise ConfigError(f"data.class_names[{i}]: {n!r} names a folder or file of data.mask_per_class; "
                                  "it cannot be empty or hold a path separator")


def _check_folds(cfg: Config) -> None:
    f, d = cfg.folds, cfg.data
    if f.n_splits < 2:
        raise ConfigError(f"folds.n_splits: expected >= 2, got {f.n_splits}")
    if f.method in ("group", "stratified_group") and not (d.group_column or d.group_pattern):
        raise ConfigError(
            f"folds.method: {f.method!r} needs data.group_column (a column of data.train_csv) or data.group_pattern"
        )
    for i in f.only:
        if not 0 <= i < f.n_splits:
            raise ConfigError(f"folds.only: fold {i} is outside 0..{f.n_splits - 1}")


def _check_train(cfg: Config) -> None:
    # train.device is deliberately not checked: a run config saved on a GPU machine must
    # still load on a laptop (reports); the CLI checks the device before any work.
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("train.epochs, train.batch_size and train.grad_accum must be >= 1")
    if t.keep_best_k < 1:
        raise ConfigError(f"train.keep_best_k: expected >= 1, got {t.keep_best_k}")
    if t.average_best and t.keep_best_k < 2:
        raise ConfigError(f"train.average_best averages the train.keep_best_k best epochs: set keep_best_k >= 2 (got {t.keep_best_k})")
    if t.init_from is not None and not str(t.init_from).strip():
        raise ConfigError("train.init_from: expected a run folder (runs/<experiment>) or null")


def _check_pseudo(cfg: Config) -> None:
    p = cfg.pseudo
    if not 0.5 <= p.confidence <= 1.0:
        raise ConfigError(f"pseudo.confidence: expected a probability in [0.5, 1], got {p.confidence}")
    if not 0.0 <= p.min_confident_fraction <= 1.0:
        raise ConfigError(f"pseudo.min_confident_fraction: expected a fraction in [0, 1], got {p.min_confident_fraction}")
    if p.max_images is not None and p.max_images < 1:
        raise ConfigError(f"pseudo.max_images: expected null (all) or >= 1, got {p.max_images}")
    if p.soft is True and cfg.data.task == "multiclass":
        raise ConfigError("pseudo.soft: soft targets are probabilities per channel (data.task binary or multilabel); "
                          "a multiclass label map holds one class id per pixel")
    if not isinstance(p.soft, bool):
        raise ConfigError(f"pseudo.soft: expected true or false, got {p.soft!r}")


def _check_metric(cfg: Config) -> None:
    _check_unit([cfg.metric.threshold], "metric.threshold")


def _check_postprocess(cfg: Config) -> None:
    p, n = cfg.postprocess, cfg.data.num_classes
    for key, values in (("threshold", p.threshold), ("min_area", p.min_area)):
        if len(values) not in (1, n):
            raise ConfigError(
                f"postprocess.{key}: {len(values)} values for data.num_classes={n} (give one, or one per class)"
            )
    _check_unit(p.threshold, "postprocess.threshold")
    _check_non_negative(p.min_area, "postprocess.min_area")
    if p.empty_gate is not None:
        _check_unit([p.empty_gate], "postprocess.empty_gate")
    if not p.threshold_grid:
        raise ConfigError("postprocess.threshold_grid: give at least one threshold, e.g. [0.3, 0.4, 0.5, 0.6, 0.7]")
    _check_unit(p.threshold_grid, "postprocess.threshold_grid")
    if not p.min_area_grid:
        raise ConfigError("postprocess.min_area_grid: give at least one area, e.g. [0, 10, 50, 100]")
    _check_non_negative(p.min_area_grid, "postprocess.min_area_grid")


def _submitted_classes(cfg: Config) -> list[int]:
    """The classes a submission has rows for, in row order: ``submission.classes``, else all
    (multiclass: 1..C-1; class 0 is background and gets rows only when listed)."""
    d, s = cfg.data, cfg.submission
    if s.classes:
        return list(s.classes)
    return list(range(1, d.num_classes)) if d.task == "multiclass" else list(range(1, d.num_classes + 1))


def _check_submission(cfg: Config) -> None:
    s, d = cfg.submission, cfg.data
    if d.task == "multiclass":
        valid, span = range(d.num_classes), f"0..{d.num_classes - 1} (0 = background, in a row only if listed)"
    else:
        valid, span = range(1, d.num_classes + 1), f"1..{d.num_classes} (class 0 is background, which only a multiclass label map has)"
    for i, c in enumerate(s.classes):
        if c not in valid:
            raise ConfigError(f"submission.classes[{i}]: class {c} is outside {span} for data.task={d.task}, data.num_classes={d.num_classes}")
        if c in s.classes[:i]:
            raise ConfigError(f"submission.classes[{i}]: class {c} is listed twice")
    if s.rle_index_base not in (0, 1):
        raise ConfigError(f"submission.rle_index_base: expected 0 or 1 (the number of the first pixel), got {s.rle_index_base}")
    if s.min_instance_area < 0:
        raise ConfigError(f"submission.min_instance_area: expected >= 0, got {s.min_instance_area}")
    if s.min_instance_area > 1 and not s.instances:
        raise ConfigError("submission.min_instance_area: only applies to instance rows; set submission.instances: true "
                          "(small regions of a per-image mask are removed by postprocess.min_area)")
    classes = _submitted_classes(cfg)
    k = len(classes)
    if k > 1 and not s.per_class:
        if s.classes:
            why = f"{k} classes {classes} (submission.classes)"
        else:
            why = f"{k} classes (1..{k}; class 0 is background)" if d.task == "multiclass" else f"{k} classes"
        raise ConfigError(
            f"submission.per_class: data.task={d.task} with data.num_classes={d.num_classes} submits {why}, "
            f"so it needs submission.per_class: true (one row per image and class, ids from submission.id_format)"
        )
    fmt = s.id_format
    where = f"submission.id_format: {fmt!r}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(fmt) if name is not None]
    except ValueError as e:
        raise ConfigError(f"{where} is not a valid format string ({e}); use {{id}} and {{cls}}, e.g. '{{id}}_{{cls}}'") from None
    names = [name for name, _, _ in fields]
    for name, spec, conv in fields:
        if name not in ("id", "cls"):
            raise ConfigError(f"{where}: unknown field {{{name}}}; only {{id}} and {{cls}} are filled in")
        if spec or conv:
            # sample submission ids are split back into id and class with the plain fields
            raise ConfigError(f"{where}: write the field as {{{name}}}, without a format spec or conversion")
    needed = ("id", "cls") if s.per_class else ("id",)
    for name in needed:
        if names.count(name) != 1:
            also = " (submission.per_class is true)" if name == "cls" else ""
            raise ConfigError(f"{where} must contain {{{name}}} exactly once{also}, e.g. '{{id}}_{{cls}}'")
    try:
        fmt.format(id="x", cls=1)
    except (KeyError, IndexError, ValueError, AttributeError) as e:  # pragma: no cover - caught above
        raise ConfigError(f"{where} does not format ({type(e).__name__}: {e})") from None


def _check_predict(cfg: Config) -> None:
    p = cfg.predict
    if p.batch_size < 1:
        raise ConfigError(f"predict.batch_size: expected >= 1, got {p.batch_size}")
    if not p.scales:
        raise ConfigError("predict.scales: give at least one scale, e.g. [1.0]")
    for i, s in enumerate(p.scales):
        if not (_finite(s) and s > 0):
            raise ConfigError(f"predict.scales[{i}]: expected a number > 0, got {s}")
    if p.tile_size is not None and (len(p.tile_size) != 2 or min(p.tile_size) < 1):
        raise ConfigError(f"predict.tile_size: expected null or [height, width] of positive ints, got {p.tile_size}")
    if not (_finite(p.tile_overlap) and 0.0 <= p.tile_overlap < 1.0):
        raise ConfigError(f"predict.tile_overlap: expected 0 <= overlap < 1, got {p.tile_overlap}")
    if p.max_tta_batch is not None and p.max_tta_batch < 1:
        raise ConfigError(f"predict.max_tta_batch: expected null or >= 1, got {p.max_tta_batch}")
    from .tta import expand_tta  # lazy: tta imports torch and this module

    try:
        expand_tta(p.tta)
    except ConfigError as e:
        raise ConfigError(f"predict.tta: {e}") from None


def _normalize_length_ok(n: int, in_channels: int) -> bool:
    """The lengths ``data.dataset._normalize`` accepts: one value per channel, or 3 (RGB
    statistics, averaged for grayscale, extended with 0.5 for the alpha channel of RGBA)."""
    return n == in_channels or (n == 3 and in_channels in (1, 4))


def _check_transforms(cfg: Config) -> None:
    t, c = cfg.transforms, cfg.data.in_channels
    if t.resize is not None and (len(t.resize) != 2 or min(t.resize) < 1):
        raise ConfigError(f"transforms.resize: expected [height, width] of positive ints, got {t.resize}")
    if not _normalize_length_ok(len(t.mean), c):
        ok = f"{c} or 3" if c in (1, 4) else f"{c}"
        raise ConfigError(f"transforms.mean: {len(t.mean)} values for data.in_channels={c} (give {ok})")
    if len(t.std) != len(t.mean):
        raise ConfigError(f"transforms.std: {len(t.std)} values, transforms.mean has {len(t.mean)} (give one std per mean)")
    for i, v in enumerate(t.mean):
        if not _finite(v):
            raise ConfigError(f"transforms.mean[{i}]: expected a finite number, got {v}")
    for i, v in enumerate(t.std):
        if not (_finite(v) and v > 0):
            raise ConfigError(f"transforms.std[{i}]: expected a number > 0, got {v}")
    for i, spec in enumerate(t.train):
        _check_augmentation(spec, f"transforms.train[{i}]")


def _check_augmentation(spec: Any, where: str) -> None:
    """Build one ``transforms.train`` entry as training will, so that an unknown transform or
    argument fails now; albumentations only warns about unknown arguments, so that warning
    fails too."""
    from .data.dataset import _aug_from_spec  # lazy: albumentations is slow to import

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # a copy: _aug_from_spec pops the inner transforms of OneOf/SomeOf/Sequential
            _aug_from_spec(copy.deepcopy(spec), where)
        except ConfigError as e:  # pydantic's messages span lines; the CLI prints one
            raise ConfigError(" ".join(line.strip() for line in str(e).splitlines() if line.strip())) from None
    for w in caught:
        if "not valid for transform" in str(w.message):
            name = next(iter(spec)) if isinstance(spec, dict) and spec else spec
            raise ConfigError(f"{where}: {name}: {w.message}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _check_loss(cfg: Config) -> None:
    if not cfg.loss:
        raise ConfigError("loss: name at least one loss with a weight, e.g. {bce: 0.5, dice: 0.5}")
    for name in cfg.loss_params:
        if name not in cfg.loss:
            raise ConfigError(f"loss_params.{name}: there is no loss {name!r} in loss ({', '.join(cfg.loss)})")
    from .losses import build_loss  # lazy: imports torch; builds small modules, no model

    build_loss(cfg)  # names, task support, parameters and weights; errors name loss.* / loss_params.*


def _check_model(cfg: Config) -> None:
    _check_weights_file(cfg)
    ds = cfg.model.deep_supervision
    if not (isinstance(ds, (int, float)) and 0 <= ds <= 10):
        raise ConfigError(f"model.deep_supervision: expected a loss weight in [0, 10] (0 = off), got {ds!r}")
    if ds > 0:
        check_deep_supervision_arch(cfg.model.arch)
    cls = cfg.model.classifier
    if not (isinstance(cls, (int, float)) and not isinstance(cls, bool) and 0 <= cls <= 10):
        raise ConfigError(f"model.classifier: expected a loss weight in [0, 10] (0 = off), got {cls!r}")
    if cls > 0 and cfg.data.task == "multiclass":
        raise ConfigError("model.classifier: the empty-mask classifier gates per-class masks (data.task binary or "
                          "multilabel); a multiclass argmax has no empty mask to gate")
    arch = cfg.model.arch
    if arch == "scratch_unet":  # always registered; spares importing smp and timm
        return
    from .models.registry import closest_names, list_architectures  # lazy: imports smp and timm

    names = list_architectures()
    if arch not in names:
        close = closest_names(arch.lower(), names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.arch: unknown architecture {arch!r}{hint} (valid: {', '.join(names)})")


def _check_weights_file(cfg: Config) -> None:
    """A weights file must exist now, not after the data is read; ``encoder_weights_map: order`` needs a tu- file."""
    m = cfg.model
    from .models.weights import is_weights_path, resolve_weights_path  # lazy: imports torch

    is_file = m.encoder_weights is not None and is_weights_path(m.encoder_weights)
    if is_file:
        path = resolve_weights_path(m.encoder_weights)
        if not os.path.isfile(path):
            raise ConfigError(f"model.encoder_weights: weights file not found: {m.encoder_weights!r} (looked for {path})")
    if m.encoder_weights_map == "order":
        if not is_file:
            raise ConfigError(f"model.encoder_weights_map: order maps a weights file; model.encoder_weights is {m.encoder_weights!r}")
        if not (m.encoder or "").startswith("tu-"):
            raise ConfigError(f"model.encoder_weights_map: order maps onto a timm model; model.encoder {m.encoder!r} is not a tu- encoder")


def _check_track(cfg: Config) -> None:
    """An explicitly chosen tracker must be installed (looked up without importing it: config loading stays light)."""
    import importlib.util

    backend = cfg.track.backend
    need = {"mlflow": "mlflow", "tensorboard": "tensorboard"}.get(backend)
    if need and importlib.util.find_spec(need) is None:
        raise ConfigError(f"track.backend: {backend} is not installed; pip install seg_toolkit[{backend}] "
                          f"(or pip install {need}), or set track.backend: auto or none")
    if cfg.track.experiment is not None and not cfg.track.experiment.strip():
        raise ConfigError("track.experiment: expected a name or null (null: the config's experiment name)")
