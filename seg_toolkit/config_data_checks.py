"""The ``data`` section checked when a config loads (called by :func:`seg_toolkit.config_checks.check_config`,
first, in the order of the file): class counts and names, how mask files are read (a lossy format
only with a threshold or colour tolerance), mask colours and channels, image pairs, the csv layout's
RLE style, object folders and one mask file per class. Each rule fails with one line naming the
dotted key and what was expected."""

from __future__ import annotations

import math
import re
import string

from .config import Config, ConfigError
from .data.io import ARRAY_EXTS

__all__ = ["check_data_config", "LOSSY_MASK_EXTS"]


def check_data_config(cfg: Config) -> None:
    """Every rule on ``data.*`` keys, in order."""
    for check in (_check_id_format, _check_image_id_pattern, _check_data, _check_masks, _check_mask_layouts,
                  _check_border_weight, _check_bands):
        check(cfg)


def class_column_missing(d) -> str | None:
    """What is wrong when a multilabel or multiclass task reads its masks from RLE rows without ``data.class_column``
    (checked at load; the CSV reader says it too for a config changed after loading); None when nothing is."""
    if d.layout != "csv" or d.task == "binary" or d.class_column is not None or d.id_format is not None:
        return None
    return (f"data.class_column: a {d.task} task read from a CSV (data.layout: csv, the default) needs a class column "
            "(one row per image and class: Severstal's ClassId; mask files are read with data.layout: folder), or "
            "data.id_format when the id holds the class, with data.id_column naming that column: '{id}_{cls}' for "
            "Severstal's older train.csv (ids such as '0002cc93b.jpg_1' in ImageId_ClassId), '{id}_{name}' for "
            "Understanding Clouds' Image_Label")


def _check_id_format(cfg: Config) -> None:
    """``data.id_format``: the class in the ids of the training CSV's rows, one per image and class."""
    d = cfg.data
    if d.id_format is None:
        return
    if d.layout != "csv" or d.task == "binary" or d.class_column is not None:
        raise ConfigError(f"data.id_format: {d.id_format!r} reads the class out of the training CSV's ids: a multilabel "
                          f"or multiclass task in the csv layout without data.class_column (data.task is {d.task}, "
                          f"data.layout {d.layout}, data.class_column {d.class_column!r})")
    from .config_submission_checks import check_id_format

    check_id_format(d.id_format, "data.id_format", True, bool(d.class_names or d.classes_csv))


def _check_image_id_pattern(cfg: Config) -> None:
    """At load: the pattern compiles, has named groups, fills every field of the format, and the layout reads it."""
    d = cfg.data
    if d.image_id_pattern is None:
        if d.image_id_format != "{id}":
            raise ConfigError(f"data.image_id_format: {d.image_id_format!r} makes ids out of data.image_id_pattern's "
                              "groups, and there is none")
        return
    where = f"data.image_id_pattern: {d.image_id_pattern!r}"
    if "\\\\" in d.image_id_pattern:  # an escaped backslash: a Windows folder boundary
        raise ConfigError(f"{where}: paths are matched with '/' between folders, on every system; write '/' where "
                          "the pattern meant a folder boundary")
    try:
        groups = set(re.compile(d.image_id_pattern).groupindex)
    except re.error as e:
        raise ConfigError(f"{where} is not a regular expression ({e})") from None
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(d.image_id_format) if name is not None]
    except ValueError as e:
        raise ConfigError(f"data.image_id_format: {d.image_id_format!r} is not a format string ({e})") from None
    if not fields:
        raise ConfigError(f"data.image_id_format: {d.image_id_format!r} names no group of data.image_id_pattern, so every "
                          "image would have one id; e.g. '{day}_{slice}'")
    unknown = [f for f in fields if f not in groups]
    if unknown:
        raise ConfigError(f"data.image_id_format: {d.image_id_format!r} names {unknown}, which are not named groups of "
                          f"{where} ({sorted(groups) or 'none'}; a group is named as (?P<day>...))")
    if d.layout != "csv" or d.instance_folders or d.bands.files:
        raise ConfigError(f"{where}: reads the images of the csv layout (data.train_csv's ids), one file each; not "
                          "with data.layout: folder, data.instance_folders or data.bands")


def _check_data(cfg: Config) -> None:
    d = cfg.data
    if d.num_classes < 1:
        raise ConfigError(f"data.num_classes: expected >= 1, got {d.num_classes}")
    if d.task == "binary" and d.num_classes != 1:
        raise ConfigError(f"data.num_classes: a binary task has 1 output channel, got {d.num_classes}")
    if d.task == "multiclass" and d.num_classes < 2:
        raise ConfigError("data.num_classes: a multiclass task needs >= 2 classes (background counts)")
    if d.task == "binary" and d.class_column is not None and d.layout == "csv":  # folder layout: config_consistency
        raise ConfigError(f"data.class_column: {d.class_column!r} gives rows per image and class, but a binary task reads "
                          "one mask per image (one row per image); remove data.class_column, or use data.task: multilabel "
                          "with data.num_classes = the number of classes")
    if (missing := class_column_missing(d)) is not None:
        raise ConfigError(missing)
    if d.class_names and len(d.class_names) != d.num_classes:
        raise ConfigError(
            f"data.class_names: {len(d.class_names)} names for data.num_classes={d.num_classes}"
        )
    if d.image_ext.lower() in ARRAY_EXTS:
        if d.in_channels < 1:
            raise ConfigError(f"data.in_channels: expected the channels of the {d.image_ext} images (>= 1), got {d.in_channels}")
    elif d.in_channels not in (1, 3, 4):
        raise ConfigError(f"data.in_channels: expected 1, 3 or 4 (any number for .npy images, data.image_ext: .npy), "
                          f"got {d.in_channels}")
    if d.image_range is not None:
        r = d.image_range
        if len(r) != 2 or not all(math.isfinite(x) for x in r) or not r[0] < r[1]:
            raise ConfigError(f"data.image_range: expected [low, high] with low < high (the raw values that become 0 and "
                              f"255, e.g. [0, 4095] for 12-bit images), got {r}")
    if d.limit is not None and d.limit < 1:
        raise ConfigError(f"data.limit: expected null (all samples) or >= 1, got {d.limit}")
    for i, x in enumerate(d.exclude_ids):
        if not isinstance(x, str) or not x.strip():
            raise ConfigError(f"data.exclude_ids[{i}]: expected a training id (a non-empty string), got {x!r}")
    twice = sorted({x for x in d.exclude_ids if d.exclude_ids.count(x) > 1})
    if twice:
        raise ConfigError(f"data.exclude_ids: listed more than once: {', '.join(map(repr, twice))}")
    _check_mask_reading(cfg)
    if d.group_pattern is not None:
        try:
            if re.compile(d.group_pattern).groups < 1:
                raise ConfigError(f"data.group_pattern: {d.group_pattern!r} needs a capture group, e.g. '^([^_]+)_'")
        except re.error as e:
            raise ConfigError(f"data.group_pattern: {d.group_pattern!r} is not a valid regex ({e})") from None


#: mask file formats whose compression changes pixel values (a label map cannot survive it); a .webp file may be
#: lossy or lossless, so it is judged by its content when read (a VP8 chunk: :func:`seg_toolkit.data.image_file.lossy_webp`)
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
        return  # list files name each mask; read_mask refuses a JPEG or lossy WebP mask by its content; pairs: _check_masks
    if d.mask_format == "colors" and d.mask_color_tolerance is not None:
        return  # lossy colour masks are read by nearest colour (_check_masks)
    ext = d.mask_ext.lower()
    if ext.endswith(LOSSY_MASK_EXTS) and d.mask_threshold is None:  # .webp: refused when read if it is lossy
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


_MASK_KEYS = ("train_masks", "mask_ext", "train_lists", "mask_threshold", "mask_format", "mask_channel", "mask_colors",
              "mask_void_colors", "mask_color_tolerance", "mask_color_support_px",
              "mask_color_clean", "mask_values", "pair_split", "pair_split_at", "instance_folders",
              "instance_target", "instance_border_px", "mask_per_class", "missing_class_masks")


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
        for key in ("mask_colors", "mask_void_colors", "mask_color_tolerance", "mask_color_support_px", "mask_color_clean"):
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
        if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ConfigError(f"data.mask_color_tolerance: expected a distance > 0 (e.g. 40), or null for exact colours, got {t}")
        _check_color_support(d.mask_color_support_px, d.mask_color_clean, t)
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


def _check_color_support(support: int | None, clean: float | None, tolerance: float | None) -> None:
    """``data.mask_color_support_px`` and ``data.mask_color_clean`` (the neighbourhood rule of
    :func:`seg_toolkit.data.colors.colors_to_ids`): both or neither, with a tolerance, clean <= tolerance."""
    if support is None:
        if clean is not None:
            raise ConfigError("data.mask_color_clean: only used with data.mask_color_support_px (the neighbourhood rule "
                              "for blended colours); set both, or neither")
        return
    if tolerance is None:
        raise ConfigError("data.mask_color_support_px: reads blended colours of lossy colour masks and needs "
                          "data.mask_color_tolerance (null reads exact colours, which have no blends)")
    if support < 1:
        raise ConfigError(f"data.mask_color_support_px: expected pixels >= 1 (a class must have a clean pixel within "
                          f"that many pixels), or null for the plain nearest colour, got {support}")
    if clean is None:
        raise ConfigError("data.mask_color_clean: required with data.mask_color_support_px: the distance within which a "
                          "pixel is a clean colour that supports its class (e.g. 15)")
    if not (math.isfinite(clean) and clean >= 0):
        raise ConfigError(f"data.mask_color_clean: expected a distance >= 0 (e.g. 15), got {clean}")
    if clean > tolerance:
        raise ConfigError(f"data.mask_color_clean: {clean:g} is more than data.mask_color_tolerance={tolerance:g}; a "
                          "clean pixel is one within the tolerance, so it must be at most that")


_RLE_KEYS = ("train_csv", "id_column", "rle_column", "rle_index_base", "rle_starts", "rle_empty_token", "rle_instances")


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
    if d.instance_border_px < 1:
        raise ConfigError(f"data.instance_border_px: expected >= 1 (pixels within it of two objects become background), "
                          f"got {d.instance_border_px}")
    if not d.instance_folders:
        for key in ("instance_target", "instance_border_px"):
            if getattr(d, key) != getattr(defaults, key):
                raise ConfigError(f"data.{key}: only used with data.instance_folders: true (one mask file per object)")
    elif d.instance_target != "borders" and d.instance_border_px != defaults.instance_border_px:
        raise ConfigError("data.instance_border_px: only used with data.instance_target: borders (the gap it makes "
                          f"between touching objects); data.instance_target is {d.instance_target!r}")
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
    if d.train_lists or d.pair_split or d.instance_folders or d.mask_format != "ids":
        raise ConfigError(f"{where}: does not combine with data.train_lists, data.pair_split, data.instance_folders "
                          "or data.mask_format: colors (each class file is one binary mask; data.mask_channel reads it "
                          "from one channel of RGB files)")
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


def _check_border_weight(cfg: Config) -> None:
    """``data.border_weight`` / ``border_sigma`` (:mod:`seg_toolkit.data.weight_map`): numbers in range, objects to
    measure, and a loss term the map weighs."""
    d = cfg.data
    for key, ok, want in (("border_weight", lambda v: v >= 0, ">= 0 (0 = off; the U-Net paper: 10)"),
                          ("border_sigma", lambda v: v > 0, "> 0 pixels (the U-Net paper: 5)")):
        v = getattr(d, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise ConfigError(f"data.{key}: expected a number {want}, got {v!r}")
    if not d.border_weight:
        if d.border_sigma != type(d)().border_sigma:
            raise ConfigError("data.border_sigma: only used with data.border_weight > 0 (the U-Net weight map)")
        return
    if not (d.instance_folders or d.rle_instances):
        raise ConfigError("data.border_weight: the weight map measures each pixel's distance to the two nearest objects, "
                          "which come from data.instance_folders: true (one mask file per object) or data.rle_instances: "
                          "true (one CSV row per object)")
    if d.task != "binary":
        raise ConfigError(f"data.border_weight: the weight map separates the objects of a binary mask; data.task is {d.task}")
    from .losses import PIXEL_WEIGHTED

    weighed = [n for n in PIXEL_WEIGHTED if (cfg.loss or {}).get(n)]
    if not weighed:
        raise ConfigError(f"data.border_weight: the weight map weighs the pixel terms bce and focal, and loss has neither "
                          f"with a weight > 0 ({cfg.loss}); add e.g. bce: 0.5")


def _check_bands(cfg: Config) -> None:
    """``data.bands``: images as folders of ``.npy`` band files; its channels, range and mask file fit."""
    d, b = cfg.data, cfg.data.bands
    if not b.files:
        for key, default in (("frame", None), ("ash", False), ("mask", None)):
            if getattr(b, key) != default:
                raise ConfigError(f"data.bands.{key}: only used with data.bands.files (images as folders of band files)")
        return
    for i, f in enumerate(b.files):
        if not f or f != f.strip() or "/" in f or "\\" in f or f in (".", ".."):
            raise ConfigError(f"data.bands.files[{i}]: expected a band file name in each image's folder, without "
                              f"{d.image_ext}, e.g. band_11; got {f!r}")
    twice = sorted({f for f in b.files if b.files.count(f) > 1})
    if twice:
        raise ConfigError(f"data.bands.files: listed more than once: {', '.join(map(repr, twice))}")
    if d.image_ext.lower() not in ARRAY_EXTS:
        raise ConfigError(f"data.image_ext: band files are .npy arrays (data.bands); got {d.image_ext!r}")
    if b.frame is not None and b.frame < 0:
        raise ConfigError(f"data.bands.frame: expected the time step of (height, width, time) band files, >= 0, got {b.frame}")
    if b.ash:
        numbers = [re.search(r"(\d+)$", f) for f in b.files]
        if len(b.files) != 3 or (all(numbers) and [int(m.group(1)) for m in numbers] != [11, 14, 15]):
            raise ConfigError(f"data.bands.ash: the ash false colour is made of bands 11, 14 and 15, in that order "
                              f"(e.g. [band_11, band_14, band_15]); data.bands.files is {b.files}")
        if d.in_channels != 3:
            raise ConfigError(f"data.in_channels: the ash false colour has 3 channels; got {d.in_channels}")
        if d.image_range is not None:
            raise ConfigError("data.image_range: the ash false colour has fixed ranges (data.bands.ash); remove it")
    else:
        if d.in_channels != len(b.files):
            raise ConfigError(f"data.in_channels: {len(b.files)} band file(s) in data.bands.files make {len(b.files)} "
                              f"channel(s); got {d.in_channels}")
        if d.image_range is None:
            raise ConfigError("data.image_range: band values (brightness temperatures, reflectances) have no fixed range; "
                              "set [low, high], the raw values that become 0 and 255 for every band (`seg-toolkit "
                              "audit` reports the range over all folders), or data.bands.ash for the contrails colour")
    others = [k for k, on in (("data.pair_split", d.pair_split), ("data.instance_folders", d.instance_folders),
                              ("data.mask_per_class", d.mask_per_class), ("data.train_lists", d.train_lists),
                              ("data.test_lists", d.test_lists)) if on]
    if others:
        raise ConfigError(f"data.bands: images as folders of band files do not combine with {', '.join(others)}")
    if b.mask is not None:
        if d.layout != "folder":
            raise ConfigError(f"data.bands.mask: the mask file in each image's folder is the folder layout's; data.layout "
                              f"is {d.layout} (its masks are data.train_csv's rows)")
        if not b.mask or "/" in b.mask or "\\" in b.mask or b.mask in (".", ".."):
            raise ConfigError(f"data.bands.mask: expected a file name in each image's folder, e.g. human_pixel_masks.npy; "
                              f"got {b.mask!r}")
        if b.mask.removesuffix(d.image_ext) in b.files:
            raise ConfigError(f"data.bands.mask: {b.mask!r} is one of data.bands.files")
