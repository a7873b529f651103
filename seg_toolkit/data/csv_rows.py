"""The csv layout's training rows -> samples, in every RLE style :class:`~seg_toolkit.rle.RLESpec` writes.

Each row's string is read with ONE spec built from the ``data.rle_*`` keys
(:func:`~seg_toolkit.data.masks.train_rle_spec`): pixel order ``data.rle_order``, starts from
``data.rle_index_base`` (1 Kaggle, 0), ``absolute`` or ``relative`` starts
(``data.rle_starts``: SIIM), and an empty mask as an empty field or ``data.rle_empty_token``
(``-1`` in SIIM). Rows are one per image (binary), or one per image and class
(``data.class_column``); with ``data.rle_instances`` an id (and class) may repeat, one row per
object (Airbus, DSB 2018, SIIM), and its rows are unioned into that image's (class's) mask:
their runs are merged into one string of the same spec, so a :class:`Sample` still holds one
string per channel. A malformed row is an :class:`~seg_toolkit.data.io.RLERowError` naming
the CSV, its line and the id.

Problems go to ``on_problem(kind, where, message)``: the default raises at the first (training);
the audit collects them all and goes on, so both list exactly the same samples. An image's rows must agree on
``data.group_column`` (``bad_group``), and every row must have the header's fields (a trailing comma is refused
by :func:`~seg_toolkit.data.io.read_csv_strict`, naming its line).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..config import Config, ConfigError
from ..rle import RLEError, RLESpec
from .io import DataError, RLERowError, _line, read_csv_strict
from .masks import train_rle_spec
from .bands import band_image_files, bands_of, image_id_of
from .sample import Sample, carries_ext, check_id
from .nested import image_finder, nested_images

log = logging.getLogger(__name__)

__all__ = ["read_train_csv", "csv_samples", "unlisted_samples", "union_rle", "raise_problem"]

OnProblem = Callable[[str, str, str], None]
_NO_BOUND = np.iinfo(np.int64).max  # the image size is not known yet: run ends are checked when decoded
_NAN_WORDS = ("nan", "none", "null", "na", "<na>", "n/a")


def raise_problem(kind: str, where: str, message: str) -> None:
    """The training default for ``on_problem``: stop at the first problem."""
    if kind == "config":
        raise ConfigError(message)
    if kind == "malformed_rle":
        raise RLERowError(message)
    raise DataError(message)


def union_rle(rows: list[str], spec: RLESpec) -> str:
    """One string (of ``spec``) for the union of ``rows`` (strings of ``spec``, already validated);
    a single non-empty row is returned as it is, no non-empty row gives ``""``."""
    full = [r for r in rows if not spec.is_empty(r)]
    if len(full) <= 1:
        return full[0] if full else ""
    runs = [spec.runs(r, _NO_BOUND) for r in full]
    starts = np.concatenate([s for s, _ in runs])
    ends = starts + np.concatenate([n for _, n in runs])
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)  # furthest end so far: a run starting after it begins a new merged run
    new = starts[1:] > reach[:-1]
    first, last = np.concatenate([[True], new]), np.concatenate([new, [True]])
    return spec.format_runs(starts[first], reach[last] - starts[first])


def _rle_hint(rle: str, spec: RLESpec) -> str:
    text = rle.strip().lower()
    if text in _NAN_WORDS:
        return "; a NaN written as text? an empty mask is an empty field (or data.rle_empty_token)"
    if text == "-1" and spec.empty.strip() != "-1":
        return "; is -1 an empty mask (SIIM)? set data.rle_empty_token: '-1'"
    return ""


def read_train_csv(cfg: Config, on_problem: OnProblem = raise_problem) -> tuple[list[Sample], set[str]]:
    """The samples of ``data.train_csv`` in first-row order, and the ids with a malformed row
    (listed, so their images are checked, but their target is not to be read)."""
    d = cfg.data
    path = cfg.data_path(d.train_csv)
    cols = [d.id_column, d.rle_column] + ([d.class_column] if d.class_column else [])
    if d.group_column:
        cols.append(d.group_column)
    try:
        df = read_csv_strict(path, cols, "training CSV (data.train_csv)")
    except DataError as e:
        on_problem("missing_file" if "not found" in str(e) else "csv", str(path), str(e))
        return [], set()
    if df.empty:
        on_problem("csv", str(path), f"{path}: no data rows (only the header {', '.join(map(repr, df.columns))}): "
                   "nothing to train on")
        return [], set()
    from ..config_data_checks import class_column_missing  # config_data_checks imports this package

    if (missing := class_column_missing(d)) is not None:
        on_problem("config", "data.class_column", missing)
        return [], set()
    spec = train_rle_spec(cfg)
    per_class = d.class_column is not None or d.id_format is not None
    n_cls = 1 if not per_class else (d.num_classes if d.task == "multilabel" else d.num_classes - 1)
    split, by_name = None, {}
    if d.id_format is not None:  # the class in the id: Severstal's first train.csv, Understanding Clouds
        from .colors import class_ids_by_name
        from .id_formats import class_of_match, format_fields, parse_submission_id

        by_name = class_ids_by_name(cfg)
        split = parse_submission_id(d.id_format, by_name)
    rows: dict[str, list[list[str]]] = {}  # id -> per channel, its rows
    first: dict[str, int] = {}
    filled: dict[tuple[str, int], tuple[int, bool]] = {}  # (id, channel) -> (line, non-empty) of its first row
    groups: dict[str, tuple[str | None, int]] = {}  # id -> (group, line) of its first row
    ends: dict[str, list[list[tuple[int, int]]]] = {}  # id -> per channel, (line, end) of its non-empty rows
    bad: set[str] = set()
    classes = df[d.class_column].tolist() if d.class_column else [None] * len(df)
    group_col = df[d.group_column].tolist() if d.group_column else [None] * len(df)
    for k, (image_id, rle, cls, group) in enumerate(zip(df[d.id_column].tolist(), df[d.rle_column].tolist(),
                                                         classes, group_col)):
        line = _line(k, df)
        where = f"{path} line {line}"
        named = f"{where} (id {image_id!r})"
        if split is not None:
            m = split.fullmatch(str(image_id))
            if m is None:
                on_problem("bad_id", where, f"{named}: the id does not read as data.id_format {d.id_format!r}"
                           + (f" (class names {list(by_name)})" if "name" in format_fields(d.id_format) else ""))
                continue
            image_id, cls = m.group("id"), class_of_match(m, by_name)
        try:
            check_id(image_id, named)
        except DataError as e:
            on_problem("bad_id", where, str(e))
            continue
        c = 1
        if cls is not None:
            try:
                c = int(cls)
            except ValueError:  # a class name (UW-Madison's 'large_bowel'), when the config names the classes
                if not by_name:
                    from .colors import class_ids_by_name

                    by_name = class_ids_by_name(cfg)
                if str(cls) not in by_name:
                    on_problem("bad_class", where, f"{where}: class {cls!r} in column {d.class_column!r} is neither a "
                               f"class number nor a class name ({list(by_name)}: data.class_names / classes_csv)")
                    continue
                c = by_name[str(cls)]
            if not 1 <= c <= n_cls:  # named by the row's id: data.id_format's class (background's name) is in it
                on_problem("bad_class", where,
                           f"{named if split is not None else where}: class {c} is outside 1..{n_cls} "
                           f"(data.num_classes={d.num_classes}, task {d.task})")
                continue
        elif image_id in rows and not d.rle_instances:
            on_problem("duplicate_row", where,
                       f"{where}: duplicate id {image_id!r} (first at line {_line(first[image_id], df)}); expected one row per "
                       "image, or set data.rle_instances: true if each row is one object of the image (Airbus, DSB 2018)")
            continue
        try:
            starts, lengths = spec.runs(rle, _NO_BOUND, named)
        except RLEError as e:
            on_problem("malformed_rle", where, f"{e}{_rle_hint(rle, spec)}")
            bad.add(image_id)
            rle, starts = "", []
        if image_id in groups and groups[image_id][0] != group:
            before, line0 = groups[image_id]
            on_problem("bad_group", where,
                       f"{where}: id {image_id!r} has group {group!r} in column {d.group_column!r}, but {before!r} at line "
                       f"{line0}; every row of an image must name the same group (data.group_column), or the image's "
                       "group is not known")
            bad.add(image_id)
            continue
        slots = rows.setdefault(image_id, [[] for _ in range(n_cls)])
        first.setdefault(image_id, k)
        groups.setdefault(image_id, (group, line))
        full = not spec.is_empty(rle)
        if (image_id, c) in filled and not d.rle_instances and (full or filled[image_id, c][1]):  # two empty rows agree
            before, was_full = filled[image_id, c]
            what = "second non-empty row" if full and was_full else "an empty and a non-empty row"
            on_problem("duplicate_row", where,
                       f"{where}: {what} for image {image_id!r} class {c} (first at line {before}); one row per "
                       "image and class, or data.rle_instances: true if each row is one object")
            bad.add(image_id)
            continue
        filled.setdefault((image_id, c), (line, full))
        slots[c - 1].append(rle)
        if len(starts):
            ends.setdefault(image_id, [[] for _ in range(n_cls)])[c - 1].append((line, int(starts[-1] + lengths[-1])))
    image_of = image_finder(cfg, cfg.data_path(d.train_images), on_problem)
    samples = [
        Sample(i, image_of(i), rles=tuple(union_rle(r, spec) for r in per_class),
               group=groups[i][0], where=f"{path} line {_line(first[i], df)}",
               objects=tuple(per_class[0]) if d.rle_instances and d.task == "binary" else None,
               row_ends=tuple(map(tuple, ends[i])) if i in ends else None)
        for i, per_class in rows.items()
    ]
    return samples, bad


def csv_samples(cfg: Config) -> list[Sample]:
    """Training samples of the csv layout (listed rows, then ``data.unlisted_images``); the first problem raises."""
    listed, _ = read_train_csv(cfg)
    return listed + unlisted_samples(cfg, listed)


def unlisted_samples(cfg: Config, listed: list[Sample], on_problem: OnProblem | None = None) -> list[Sample]:
    """``data.unlisted_images``: the images of ``data.train_images`` that have no row in the CSV.

    ``ignore``: none (their number is logged); ``empty``: each as a sample with empty masks
    (Severstal lists only non-empty masks); ``error``: :class:`DataError` naming a few. With
    ``on_problem`` (the audit), ``ignore`` and ``error`` report each image instead."""
    d = cfg.data
    images = cfg.data_path(d.train_images)
    if not images.is_dir() or not listed:
        return []  # check_train_samples names the missing images
    paths = {s.image for s in listed}
    exts = {d.image_ext.lower()} | {p.suffix.lower() for p in paths}
    bands = bands_of(cfg)
    # a file whose id is bad or taken was reported when the rows looked their images up in this folder
    quiet = (lambda kind, where, message: None) if on_problem is not None else None
    nested = {p: i for i, p in nested_images(images, cfg, quiet).items()} if d.image_id_pattern else None
    on_disk = (list(nested) if nested is not None else band_image_files(images, bands)[0] if bands else
               [p for p in images.iterdir() if p.suffix.lower() in exts and p.is_file()])
    unlisted = sorted(p for p in on_disk if p not in paths)
    if not unlisted:
        return []
    csv = cfg.data_path(d.train_csv)
    if d.unlisted_images != "empty" and on_problem is not None:
        for p in unlisted:
            on_problem("unlisted_image", str(p), f"{p}: image has no row in {csv}; data.unlisted_images: "
                       f"{d.unlisted_images} (set it to 'empty' if a missing row means an empty mask)")
        return []
    head = f"{len(unlisted)} image(s) in {images} have no row in {csv}, e.g. {[p.name for p in unlisted[:3]]}"
    if d.unlisted_images == "error":
        raise DataError(f"{csv}: {head} (data.unlisted_images: error; 'empty' reads them as empty masks, "
                        "'ignore' leaves them out)")
    if d.unlisted_images == "ignore":
        log.warning("%s: not used for training (data.unlisted_images: ignore; set it to 'empty' if a missing row "
                    "means an empty mask, as in Severstal)", head)
        return []
    log.info("%s: trained on as empty masks (data.unlisted_images: empty)", head)
    with_ext = carries_ext(listed[0].id)  # ids carry the extension (Severstal)
    n = len(listed[0].rles or ("",))
    return [Sample(nested[p] if nested is not None else image_id_of(p, bands) if not with_ext else p.name, p, rles=("",) * n,
                   where=f"{p} (no row in {csv})") for p in unlisted]
