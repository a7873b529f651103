"""Masks -> targets: every declared way a dataset stores its labels, read exactly or refused.

A mask file is read in three steps, each declared in the config (checked when it loads,
:func:`seg_toolkit.config_data_checks._check_masks`):

1. **the file**: the whole file, or the label part of an image|label file
   (``data.pair_split``, :class:`~seg_toolkit.data.io.PairSplit`);
2. **ids**: the pixel values of a single-channel file; the values of one channel of an RGB(A)
   file (``data.mask_channel``, e.g. CARLA's red channel); or colours mapped through a colour
   table (``data.mask_format: colors`` with ``data.mask_colors`` / ``data.mask_void_colors`` or
   the ``classes_csv`` r,g,b columns): exactly (an unknown colour is an error), or for lossy files
   to the nearest colour within ``data.mask_color_tolerance`` (farther pixels are void);
3. **remap** (``data.mask_values``): each id -> a class id or void; an id not listed is an error.
   Without it, ``data.ignore_index`` marks the void id.

``data.instance_folders`` (DSB 2018): the mask is a folder of object masks, each read as above,
and the target is their union, or their union with the pixels where two objects touch made
background (``data.instance_target: borders``; :mod:`seg_toolkit.data.instances`).
``data.mask_per_class`` (multilabel): one binary file per class (:mod:`seg_toolkit.data.class_masks`).

Then the target in the toolkit's convention (:data:`seg_toolkit.config.IGNORE_INDEX` = void):
multiclass ``uint8 (H, W)``; binary ``uint8 (H, W, 1)``. A binary mask read without
``mask_values`` / ``mask_threshold`` must hold 0 and at most one other value, so a trimap or an
anti-aliased mask is refused instead of read as all foreground. CSV-layout targets are RLE rows.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

from ..config import IGNORE_INDEX, Config, ConfigError
from ..files import read_oof
from ..rle import RLEError, RLESpec
from .colors import VOID_ID, check_color_masks, class_names, color_table, colors_to_ids
from .bands import bands_of
from .instances import instance_ids
from .data_errors import mask_size_error
from .io import (DataError, RLERowError, _ext_hint, image_size, narrow_sixteen_bit, read_image, say_narrow, sixteen_bit,
                 wide_values)
from .mask_io import read_mask_array

if TYPE_CHECKING:  # pragma: no cover
    from .sources import Sample

log = logging.getLogger(__name__)

__all__ = ["VOID", "train_rle_spec", "load_target", "mask_ids", "remap_values", "check_train_samples", "class_names"]

#: the word that marks void in ``data.mask_values``
VOID = "void"


def train_rle_spec(cfg: Config) -> RLESpec:
    """The one spec ``data.train_csv``'s strings are read with (reader, targets, folds, audit), from the
    ``data.rle_*`` keys as the submission's from ``submission.*`` (:func:`seg_toolkit.submission.submission_spec`):
    pixel order ``data.rle_order``, starts from ``data.rle_index_base``, ``data.rle_starts``, and an empty
    mask as an empty field or ``data.rle_empty_token``. Rows repeating an id (``data.rle_instances``) are
    unioned by the reader (:mod:`seg_toolkit.data.csv_rows`), so the spec reads one string per mask."""
    d = cfg.data
    return RLESpec(order=d.rle_order, index_base=d.rle_index_base, starts=d.rle_starts, empty=d.rle_empty_token)


def remap_values(values: np.ndarray, mapping: dict[int, int | str], where: str) -> np.ndarray:
    """``data.mask_values``: each id -> class id, or -1 for void (``"void"``); ids already -1 stay void.

    A value that is not a key is a :class:`DataError` naming ``where`` and the values."""
    present = np.unique(values)
    present = present[present != VOID_ID]
    unknown = [int(v) for v in present if int(v) not in mapping]
    if unknown:
        raise DataError(
            f"{where}: mask values {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not in data.mask_values "
            f"(declared: {sorted(mapping)}); every value in a mask must be declared"
        )
    top = max(int(present.max()) if present.size else 0, 0)
    lut = np.full(top + 2, VOID_ID, np.int32)  # the last slot is the void of the input (index -1)
    for k, v in mapping.items():
        if k <= top:
            lut[k] = VOID_ID if v == VOID else int(v)
    return lut[values]


def mask_ids(sample: Sample, cfg: Config) -> np.ndarray:
    """A mask file's class ids ``int32 (H, W)``, void = -1, after every declared step (module doc)."""
    d = cfg.data
    assert sample.mask is not None
    if d.instance_folders:
        return instance_ids(sample, cfg)
    where = str(sample.mask)
    colors = d.mask_format == "colors"
    lossy_ok = d.mask_threshold is not None or (colors and d.mask_color_tolerance is not None)
    kind = "colors" if colors else "channels" if d.mask_channel is not None else "ids"
    arr = read_mask_array(sample.mask, d.max_image_pixels, lossy_ok=lossy_ok, kind=kind, pair=sample.pair,
                          exif=d.exif_orientation)
    if colors:
        table, table_ids, source = color_table(cfg)
        ids = colors_to_ids(arr, table, table_ids, d.mask_color_tolerance, where, source,
                            support_px=d.mask_color_support_px, clean=d.mask_color_clean)
    elif d.mask_channel is not None:
        if d.mask_channel >= arr.shape[2]:
            raise DataError(f"{where}: mask has {arr.shape[2]} channels; data.mask_channel {d.mask_channel} is outside 0..{arr.shape[2] - 1}")
        channel = arr[:, :, d.mask_channel]
        if channel.size and channel.dtype.kind in "iu" and (int(channel.min()) < 0 or int(channel.max()) > np.iinfo(np.int32).max):
            # as a one-channel mask's ids are checked (mask_io): the cast made -1 void (255 after the wrap) and 2**32 + 2 class 2
            raise DataError(f"{where}: channel {d.mask_channel} (data.mask_channel) holds values {int(channel.min())}.."
                            f"{int(channel.max())}; expected class ids >= 0")
        ids = channel.astype(np.int32)
    else:
        ids = arr.astype(np.int32)
    if d.mask_values:
        return remap_values(ids, d.mask_values, where)
    if d.ignore_index is not None:
        ids[ids == d.ignore_index] = VOID_ID
    return ids


# ----------------------------------------------------------------------------- targets


def _soft_target(sample: Sample, hw: tuple[int, int] | None) -> np.ndarray:
    """A soft pseudo-label: float32 ``(H, W, C)`` probabilities from the teacher's uint8 ``(C, H, W)`` file."""
    q = read_oof(sample.soft)
    if hw is not None and q.shape[1:] != tuple(hw):
        raise DataError(f"{sample.soft}: soft label is {q.shape[1]}x{q.shape[2]} (HxW) but its image {sample.image.name} "
                        f"is {hw[0]}x{hw[1]}; delete the run's pseudo/ folder to label again")
    return np.ascontiguousarray(q.transpose(1, 2, 0), dtype=np.float32) / np.float32(255)


def _refuse_overlap(chans: list[np.ndarray], where: str) -> None:
    """Multiclass from per-class RLE rows: a pixel in the masks of two classes has no one class; an error naming
    the first such pair of classes (1-based) and how many pixels they share."""
    if len(chans) < 2:
        return
    fg = [m.astype(bool) for m in chans]
    count = np.sum(fg, axis=0, dtype=np.int32)
    if not (count > 1).any():
        return
    total = int((count > 1).sum())
    for a in range(len(fg)):
        for b in range(a + 1, len(fg)):
            n = int((fg[a] & fg[b]).sum())
            if n:
                raise DataError(
                    f"{where}: the masks of classes {a + 1} and {b + 1} overlap on {n} pixel(s) ({total} pixel(s) are in "
                    "more than one class); a multiclass target has one class per pixel: fix the rows, or use "
                    "data.task: multilabel if classes may overlap (`seg-toolkit audit` lists every image whose rows overlap)")


def check_rle_ends(sample: Sample, cfg: Config, hw: tuple[int, int]) -> None:
    """A training CSV row whose runs go past the image's ``hw`` pixels: an :class:`RLERowError` naming that row's own
    line (and class), where the image's unioned string would name its first row and runs made by the union."""
    n = hw[0] * hw[1]
    for c, rows in enumerate(sample.row_ends or (), start=1):
        for line, end in rows:
            if end > n:
                d, spec = cfg.data, train_rle_spec(cfg)
                where = f"{cfg.data_path(d.train_csv)} line {line} (id {sample.id!r}{f', class {c}' if d.class_column or d.id_format else ''})"
                if len(rows) == 1 and sample.rles is not None:  # the row's own string: the error quotes its run
                    try:
                        spec.runs(sample.rles[c - 1], n, where)
                    except RLEError as e:
                        raise RLERowError(f"{e} ({sample.image})") from None
                base = spec.index_base
                raise RLERowError(f"{where}: its RLE runs reach pixel {end - 1 + base}"
                                  f"{'' if base == 1 else f' (numbered from {base})'}, past the image's {hw[0]}x{hw[1]} = "
                                  f"{n} pixels ({sample.image})")


def _check_rle_ends_early(samples: list[Sample], cfg: Config) -> None:
    """:func:`check_rle_ends` before training, from the images' headers: every image's up to 20,000 training images,
    else those whose rows reach past the first image's size (all of them where the images share one size; a row past
    a smaller image of a larger set is named when its mask is first read)."""
    listed = [s for s in samples if s.row_ends and s.image.is_file()]
    if not listed:
        return
    d = cfg.data
    h, w = image_size(listed[0].image, listed[0].pair, exif=d.exif_orientation)
    for s in listed:
        if len(listed) <= 20_000 or max(e for rows in s.row_ends for _, e in rows) > h * w:
            check_rle_ends(s, cfg, image_size(s.image, s.pair, exif=d.exif_orientation))


def _check_mask_sizes_early(samples: list[Sample], cfg: Config) -> None:
    """Each training image's mask file(s) against the image's size, from the headers (the first 20,000 images: 1 s):
    a pair of other sizes is refused before anything is written, not when a fold's epoch reaches it."""
    d = cfg.data
    if d.instance_folders:  # a folder of object masks: check_truth_objects and the reader check each
        return
    for s in samples[:20_000]:
        files = [s.mask] if s.mask is not None else [p for p in s.class_masks or () if p is not None]
        files = [p for p in files if p.is_file()] if s.pair is None and s.soft is None else []
        if not files:
            continue
        h, w = image_size(s.image, exif=d.exif_orientation)
        for path in files:
            mh, mw = image_size(path, exif=d.exif_orientation)
            if (mh, mw) != (h, w):
                raise mask_size_error(path, (mh, mw), f"its image {s.image.name}", (h, w))


def load_target(sample: Sample, cfg: Config, hw: tuple[int, int] | None) -> np.ndarray:
    """The sample's target in the toolkit's convention (module doc), checked to be ``hw`` (HxW)
    when given (``None``: a mask file's own size; RLE rows need ``hw``)."""
    d = cfg.data
    if sample.label_hw is not None and hw is not None and tuple(hw) != tuple(sample.label_hw):
        from .scored import nearest_resize  # lazy: scored imports this module

        return nearest_resize(load_target(dataclasses.replace(sample, label_hw=None), cfg, sample.label_hw), hw)
    if sample.soft is not None:
        return _soft_target(sample, hw)
    if sample.rles is not None:
        if hw is None:
            raise ValueError("load_target: RLE rows need the image size hw")
        where = f"{sample.where} (id {sample.id!r})"
        check_rle_ends(sample, cfg, hw)
        try:
            spec = train_rle_spec(cfg)
            chans = [spec.decode(r, hw, where=where) for r in sample.rles]
        except RLEError as e:
            raise RLERowError(str(e)) from None
        if d.task == "multiclass":
            _refuse_overlap(chans, where)
            label = np.zeros(hw, np.uint8)
            for c, m in enumerate(chans, start=1):
                label[m.astype(bool)] = c
            return label
        return np.stack(chans, axis=-1)

    if sample.class_masks is not None:
        from .class_masks import class_mask_target  # lazy: class_masks imports colors

        return class_mask_target(sample, cfg, hw)
    assert sample.mask is not None
    if d.task == "multilabel":
        raise ConfigError("data.task: multilabel masks need the csv layout with data.class_column, or one file per "
                          "class (data.mask_per_class)")
    ids = mask_ids(sample, cfg)
    if hw is not None and ids.shape != tuple(hw):
        what = f"its image {sample.image.name}" if sample.pair is None else "the image part of the same file"
        raise mask_size_error(sample.mask, ids.shape, what, hw)
    void = ids == VOID_ID
    if d.task == "multiclass":
        bad = ((ids >= d.num_classes) | (ids < 0)) & ~void
        if bad.any():
            vals = np.unique(ids[bad])[:10].tolist()
            hint = ""
            if vals == [255] and d.ignore_index is None and not d.mask_values:
                hint = ("; 0/255 masks are binary masks (data.task: binary), unless 255 marks void pixels "
                        "(data.ignore_index: 255)")
            declared = ("data.mask_values" if d.mask_values else "data.num_classes / data.ignore_index")
            raise DataError(
                f"{sample.mask}: mask values {vals} are outside the classes 0..{d.num_classes - 1}"
                + (f" and the void id {d.ignore_index}" if d.ignore_index is not None else "")
                + f" ({declared}){hint}"
            )
        label = ids.astype(np.uint8)
        label[void] = IGNORE_INDEX
        return label
    if d.mask_threshold is not None and not d.instance_folders:  # object files were thresholded one by one (instances)
        fg = (ids >= d.mask_threshold).astype(np.uint8)
    else:
        if not d.mask_values:
            values = ids[(ids != 0) & ~void]
            if values.size and (values != values.flat[0]).any():
                shown = np.unique(values)
                raise DataError(
                    f"{sample.mask}: binary mask holds values {shown[:10].tolist()}{' ...' if shown.size > 10 else ''} "
                    "besides 0; a binary mask is 0 and one foreground value. Declare how to read it: data.mask_values "
                    "(e.g. {1: 1, 2: 0, 3: void} for an Oxford-IIIT Pet trimap) or data.mask_threshold (lossy or "
                    "anti-aliased masks)"
                )
        fg = (ids > 0).astype(np.uint8)
    fg[void] = IGNORE_INDEX
    return fg[:, :, None]


def _check_first_image_values(sample: Sample, cfg: Config) -> None:
    """The first training image, read as training will: a 32-bit image without ``data.image_range`` is refused
    now rather than at the first batch, and 16-bit values spanning under a quarter of 0..65535 are warned about
    (12-bit data read over 0..65535 keeps 17 grey levels of 256; ``seg-toolkit audit`` gives the range over all files)."""
    d = cfg.data
    if d.image_range is not None:
        return
    wide = wide_values(sample.image, d.max_image_pixels, bands_of(cfg), d.in_channels)
    if wide is None:
        return
    mode, lo, hi = wide
    if not sixteen_bit(mode):
        read_image(sample.image, d.in_channels, d.max_image_pixels, pair=sample.pair, bands=bands_of(cfg),
                   exif=d.exif_orientation)  # raises, naming the file and range
    elif narrow_sixteen_bit(mode, lo, hi):
        say_narrow(sample.image, lo, hi)  # now, before anything is written: not again when training reads it


def check_train_samples(samples: list[Sample], cfg: Config) -> None:
    """What training needs, checked before anything is written or trained: every image file
    exists, each mask file has its image's size, some mask has foreground, and colour masks read with a cut-off are colour masks of
    the table (:func:`~seg_toolkit.data.colors.check_color_masks`).

    A training set whose masks are all empty (all background) is refused: it can only teach a
    model to predict nothing, and its CV score would measure nothing (with ``metric.empty_score:
    one`` a perfect 1.0); it is nearly always a reading mistake (wrong column, folder or
    threshold), which the message names. A class without any pixel is warned about in the csv
    layout, where seeing it costs nothing. Mask files are read only until one has foreground.
    """
    d = cfg.data
    missing = [s for s in samples if not s.image.is_file()]
    if missing:
        m = missing[0]
        raise DataError(
            f"{m.where}: {len(missing)} of {len(samples)} training ids have no image in {m.image.parent}, e.g. "
            f"{m.id!r} (expected {m.image}; data.train_images, data.image_ext){_ext_hint(m.image.parent, m.id, 'data.image_ext')}"
        )
    if not samples:
        return
    _check_first_image_values(samples[0], cfg)
    if samples[0].rles is None:
        _check_mask_sizes_early(samples, cfg)
    from ..instance_metrics import INSTANCE_METRICS

    if cfg.metric.name in INSTANCE_METRICS:  # objects it cannot score: found now, not at a later fold's validation
        from .instances import check_truth_objects

        check_truth_objects(samples, cfg)
    if samples[0].rles is not None:
        _check_rle_ends_early(samples, cfg)
        n, spec = len(samples[0].rles), train_rle_spec(cfg)
        present = [any(s.rles and not spec.is_empty(s.rles[c]) for s in samples) for c in range(n)]
        if not any(present):
            raise DataError(
                f"{cfg.data_path(d.train_csv)}: every mask is empty (column {d.rle_column!r} is empty for all "
                f"{len(samples)} training images): training would learn to predict nothing and the CV score would "
                "mean nothing; check data.rle_column"
            )
        names = class_names(cfg)
        for c, ok in enumerate(present):
            if not ok and n > 1:
                # rows of classes 1..K: multiclass names hold class 0 first, multilabel names start at class 1
                name = names[c + 1] if d.task == "multiclass" else names[c]
                log.warning("class %d (%s) has no pixel in any of the %d training masks of %s: the model cannot learn it",
                            c + 1, name, len(samples), cfg.data_path(d.train_csv))
        return
    check_color_masks(samples, cfg)
    largest = 0
    for s in samples:
        target = load_target(s, cfg, image_size(s.image, s.pair, exif=d.exif_orientation))
        if ((target != 0) & (target != IGNORE_INDEX)).any():
            return
        if s.class_masks is not None:
            largest = max(largest, int(target.max()))
            continue
        ids = mask_ids(s, cfg)
        ids = ids[ids != VOID_ID]
        largest = max(largest, int(ids.max()) if ids.size else 0)
    if d.task == "multiclass":
        read, keys = "a class id other than 0" + (f" or the void id {d.ignore_index}" if d.ignore_index is not None else ""), "data.ignore_index"
    else:
        read = f"a value >= data.mask_threshold={d.mask_threshold}" if d.mask_threshold is not None else "a value > 0"
        keys = "data.mask_threshold"
    where = samples[0].mask.parent if samples[0].mask is not None else cfg.data_path(d.train_masks)
    besides = " apart from the void id" if d.ignore_index is not None else ""
    raise DataError(
        f"{where}: all {len(samples)} training masks are empty (no pixel with {read}; the largest mask value{besides} "
        f"is {largest}): training would learn to predict nothing and the CV score would mean nothing; check "
        f"data.train_masks / data.train_lists and {keys}"
    )
