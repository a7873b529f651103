"""Checking a submission CSV against the competition's sample (scoring one against known answers is
:mod:`seg_toolkit.submission_score`).

:func:`check_submission` lists every way a file differs from the format the grader expects (columns, ids and
their order, every RLE string as the competition's spec reads it); :func:`check_sample_rows` checks, before anything is predicted, that the sample's rows are ones the writer can
produce, each of them, in an order it can write.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .config import Config, ConfigError
from .files import wide_csv_fields
from .rle import RLEError, RLESpec, empty_token_reads_as, instance_overlap
from .submission import (SubmissionError, class_column_names, class_of_text, class_text_problem, repeated_ids, row_ids,
                         sample_rle_column, submission_classes)

log = logging.getLogger(__name__)

__all__ = ["check_submission", "check_sample_rows", "config_check_args"]


def check_sample_rows(cfg: Config, path: Path, ids: list[str], samples: Sequence[Any],
                      class_values: list[str] | None = None) -> dict[str, str]:
    """Before any image is predicted: every row of the sample (``ids``, its id column) is one this submission makes
    (line named), once; with repeated ids (instance rows, a class column) an image's rows are together, as they are
    written; every row the submission makes for an image of the sample (``samples``, in the sample's order) is in
    it. Rows are written in the sample's order (:class:`~seg_toolkit.submission.SubmissionWriter`), said here when it
    is not the order :func:`~seg_toolkit.submission.mask_rows` makes them. ``class_values``: the sample's
    ``submission.class_column``; when it lists classes (not Severstal's placeholder 0), each image's are the ones
    written. Returns each listed row's image id."""
    s = cfg.submission
    if s.class_column and class_values is not None:
        _check_sample_classes(cfg, path, ids, class_values)
    made = {row: x.id for x in samples for row in row_ids(cfg, x.id)}
    repeats = repeated_ids(cfg)
    seen: dict[str, int] = {}
    for line, row_id in enumerate(ids, start=2):  # line 1 is the header
        if row_id not in made:
            what = f"test images x classes {submission_classes(cfg)}" if s.per_class else "test image ids"
            raise SubmissionError(f"{path} line {line}: id {row_id!r} is not a row this submission makes ({what}, "
                                  f"e.g. {next(iter(made))!r}); check submission.id_format / classes, or the file")
        if row_id in seen and not repeats:
            raise SubmissionError(f"{path} line {line}: id {row_id!r} again (first on line {seen[row_id]}); a sample "
                                  "submission names each row once")
        if row_id in seen and ids[line - 3] != row_id:
            how = "instance rows (submission.instances)" if s.instances else "one row per class (submission.class_column)"
            raise SubmissionError(f"{path} line {line}: id {row_id!r} again, apart from its rows from line {seen[row_id]}; "
                                  f"this submission writes an image's rows together ({how}), so it could never match")
        seen.setdefault(row_id, line)
    listed_images = {made[row] for row in seen}
    missing = [row for row in made if row not in seen and made[row] in listed_images]
    if missing:
        classes = submission_classes(cfg)
        cls_of = {row: k for x in samples for row, k in zip(row_ids(cfg, x.id), classes)} if s.per_class else {}
        listed = {k for row, k in cls_of.items() if row in seen}
        same = s.per_class and all(sum(row in seen for row in row_ids(cfg, x.id)) == len(listed) for x in samples)
        hint = (f"the sample lists classes {sorted(listed)} of every image: set submission.classes: {sorted(listed)}"
                if same else f"every image of the sample needs a row per class of submission.classes {classes}")
        row = missing[0]
        which = f" (image {made[row]!r}, class {cls_of[row]})" if s.per_class else ""
        raise SubmissionError(f"{path}: no row for id {row!r}{which}, which this submission writes; {hint} "
                              f"({len(missing)} such rows missing)")
    produced = [row for x in samples for row in row_ids(cfg, x.id)]
    if repeats:
        _check_repeated_order(cfg, path, ids, produced)
    else:
        _say_order(path, ids, produced, made)
    return {row: made[row] for row in seen}


def _check_sample_classes(cfg: Config, path: Path, ids: list[str], class_values: list[str]) -> None:
    """A sample whose class column lists each image's classes must list the ones this submission writes for it
    (:func:`~seg_toolkit.submission.submission_classes`), or the file would have rows the grader lacks or misses
    some it needs."""
    names = class_column_names(cfg)
    pairs = sample_class_pairs(ids, class_values, names)
    if pairs is None:
        return
    for line, raw in enumerate(class_values, start=2):
        if class_of_text(raw, names) is None:
            raise SubmissionError(f"{path} line {line}: {cfg.submission.class_column}: {class_text_problem(raw, names)}")
    written = set(submission_classes(cfg))
    listed: dict[str, tuple[int, set[int]]] = {}
    for (image, cls), line in pairs.items():
        listed.setdefault(image, (line, set()))[1].add(cls)
    for image, (line, got) in listed.items():
        if got != written:
            same = all(classes == got for _, classes in listed.values())
            hint = (f"set submission.classes: {sorted(got)}" if same else
                    f"every image of the sample needs a row per class of submission.classes {sorted(written)}")
            raise SubmissionError(
                f"{path} line {line}: image {image!r} is listed with classes {sorted(got)} in "
                f"{cfg.submission.class_column}; this submission writes classes {sorted(written)} for each image; {hint}")


def _check_repeated_order(cfg: Config, path: Path, ids: list[str], produced: list[str]) -> None:
    """With repeated ids the rows are written in the order they are made (the writer cannot move an image's instance
    or class rows as a block), so the sample's order must be that order: said before any image is predicted, where the
    writer would find it only after the last one."""
    starts = [i for i in range(len(ids)) if i == 0 or ids[i - 1] != ids[i]]  # the first line of each run of one id
    listed = [ids[i] for i in starts]
    if listed == produced:
        return
    k = next((i for i, (a, b) in enumerate(zip(listed, produced)) if a != b), min(len(listed), len(produced)))
    got = f"id {listed[k]!r}" if k < len(listed) else "the end of the file"
    want = repr(produced[k]) if k < len(produced) else "no more rows"
    how = "instance rows (submission.instances)" if cfg.submission.instances else "one row per class (submission.class_column)"
    order = "each image's classes in the order of submission.classes, " if cfg.submission.per_class else ""
    line = starts[k] + 2 if k < len(starts) else len(ids) + 2
    raise SubmissionError(f"{path} line {line}: {got} where this submission writes {want}: with {how} the rows are "
                          f"written in the order they are made ({order}images in the sample's order), so the sample "
                          "must list them in that order" + (" (submission.classes sets the classes' order)" if order else ""))


def _say_order(path: Path, ids: list[str], produced: list[str], image_of: dict[str, str]) -> None:
    """Log where the sample's row order differs from the order the rows are made in (written in the sample's)."""
    if produced == ids:
        return
    k = next((i for i, (a, b) in enumerate(zip(ids, produced)) if a != b), min(len(ids), len(produced)) - 1)
    images = [image_of[row] for row in ids]
    apart = sum(1 for i in range(1, len(images)) if images[i] != images[i - 1]) + 1 != len(set(images))
    log.info("%s lists rows in another order than they are made (line %d: %r, made: %r); they are written in the "
             "sample's order%s", path, k + 2, ids[k], produced[k],
             ": it interleaves images' rows, so rows ahead of their turn wait in a file beside the submission "
             "until it comes (up to the submission's size on disk)" if apart else "")


def _ragged_line(path: Path) -> str | None:
    """The first line whose number of fields differs from the header's (a trailing comma, an unquoted comma), named."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh, wide_csv_fields():
            rows = csv.reader(fh)
            header = next(rows, None)
            if header is None:
                return None
            for line, row in enumerate(rows, start=2):
                if row and len(row) != len(header):
                    more = " (a trailing comma?)" if len(row) == len(header) + 1 and row[-1] == "" else ""
                    return f"{path} line {line}: {len(row)} fields, the header {len(header)}{more}"
    except (UnicodeDecodeError, csv.Error):
        return None  # pandas reports what it cannot read
    return None


def config_check_args(cfg: Config) -> dict[str, Any]:
    """:func:`check_submission`'s keyword arguments from a config's ``submission.*`` keys: the RLE spec, the columns
    when named, the class column with the classes it writes and their names (``class_format: '{name}'``)."""
    from .submission import submission_columns, submission_spec

    s = cfg.submission
    return {"spec": submission_spec(cfg), "columns": submission_columns(cfg) if s.id_column or s.rle_column else None,
            "class_column": s.class_column, "classes": submission_classes(cfg) if s.class_column else None,
            "class_names": class_column_names(cfg)}


def check_submission(
    csv_path: str | Path,
    sample_path: str | Path,
    empty_tokens: tuple[str, ...] | None = None,
    n_pixels: dict[str, int] | int | None = None,
    max_problems: int = 20,
    spec: RLESpec | None = None,
    columns: tuple[str, str] | None = None,
    class_column: str | None = None,
    classes: list[int] | None = None,
    class_names: dict[str, int] | None = None,
) -> list[str]:
    """Every way ``csv_path`` differs from the competition's format; an empty list means it is valid.

    ``columns``: ``(id column, RLE column)``; default the sample's first two, as the writer's
    (:func:`submission_columns`), so a third column after them (Severstal's ``ClassId``) is never
    read as the RLE.

    Checks the columns (names and order), the row count, the ids and their order against the
    sample (not against a sample of its header only, a code competition's), duplicate ids, and every RLE string as ``spec`` (default: the Kaggle one) reads it:
    pairs of integers, starts >= the index base, lengths >= 1, absolute starts sorted and not
    overlapping, and within ``n_pixels`` of the image when given (keyed by row id).
    ``empty_tokens`` (default: ``spec.empty``) are how an empty mask may be written.

    With ``spec.instances`` an id may repeat on consecutive rows, one per object: then the
    distinct ids, in order, must be the sample's, an image's rows must be together, an empty
    row must be its image's only row, and one image's objects must not overlap.

    ``class_column`` (Severstal's ``ClassId``): each row's class is in that column, an image's rows
    (one per class) are together and in the sample's order of images, and each class is a whole
    number from ``classes`` (when given), once per image; with ``class_names`` (name -> number) each class is
    written as its name (``submission.class_format: '{name}'``).
    """
    problems: list[str] = []
    if not Path(csv_path).is_file():
        from .data.io import DataError

        raise DataError(f"{csv_path}: submission file not found" + (" (it is a folder)" if Path(csv_path).is_dir() else ""))
    ragged = _ragged_line(Path(csv_path))
    if ragged:  # a trailing comma on every row: pandas took the ids for an index and named RLE strings as ids
        return [ragged]
    try:
        sub = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig", index_col=False)
    except Exception as e:
        return [f"{csv_path}: cannot be read as CSV ({type(e).__name__}: {' '.join(str(e).split())})"]
    from .data.sources import read_csv_strict  # lazy: the data package imports torch

    # unreadable: DataError naming it (exit 2). A header only (a code competition's public sample): the rows predict
    # writes stand for it when they are known (n_pixels: the config's test images, --config), else only the columns,
    # duplicates and every row's strings are checked
    sample = read_csv_strict(Path(sample_path), [], "sample submission")
    stand_in = sample.empty and isinstance(n_pixels, dict)  # the rows predict writes (none: no test image)
    if stand_in:
        ids = list(n_pixels)
        sample = pd.DataFrame({c: ids if c == (columns[0] if columns else sample.columns[0]) else
                               ["0" if c == class_column else ""] * len(ids) for c in sample.columns})
    elif sample.empty:
        log.warning("%s lists no rows (its header only): the ids of %s are not checked; give the config (--config) to "
                    "check them against the test images' rows", sample_path, csv_path)
    if list(sub.columns) != list(sample.columns):
        problems.append(f"columns are {list(sub.columns)}; the sample has {list(sample.columns)}")
        return problems
    id_col, rle_col = columns or (sample.columns[0], sample_rle_column(list(sample.columns), class_column) or sample.columns[0])
    named = {id_col: "submission.id_column", rle_col: "submission.rle_column"}
    if class_column:
        named[class_column] = "submission.class_column"
    missing = [c for c in named if c not in sample.columns]
    if missing:
        return problems + [f"no column {missing[0]!r} ({named[missing[0]]}); the sample has {list(sample.columns)}"]
    spec = spec or RLESpec()
    tokens = (spec.empty,) if empty_tokens is None else tuple(empty_tokens)
    for token in tokens:  # '1 1' as the empty token would pass every one-pixel placeholder row as empty
        reads = empty_token_reads_as(dataclasses.replace(spec, empty=token))
        if reads is not None:
            raise ConfigError(f"empty token {token!r} reads as a run-length string (starts counted from {spec.index_base}, "
                              f"{spec.starts}): {reads}; the scorer paints those pixels, so rows written so are not empty "
                              "masks. Empty masks are '' (most competitions), '-1' (SIIM), '-' (contrails)")
    classes_of = None if not class_column else (
        sub[class_column].to_numpy(dtype=object), classes, class_names,
        sample_class_pairs(sample[id_col].tolist(), sample[class_column].tolist(), class_names))
    return problems + _row_problems(sub, sample, id_col, rle_col, spec, tokens, n_pixels, max_problems, classes_of,
                                    listed=stand_in or not sample.empty)


def _id_groups(ids: np.ndarray) -> np.ndarray:
    """Row index where each run of equal consecutive ids starts."""
    if ids.size == 0:
        return np.empty(0, np.int64)
    return np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))


def _row_problems(
    sub: pd.DataFrame,
    sample: pd.DataFrame,
    id_col: str,
    rle_col: str,
    spec: RLESpec,
    empty_tokens: tuple[str, ...],
    n_pixels: dict[str, int] | int | None,
    max_problems: int,
    classes_of: tuple[np.ndarray, list[int] | None, dict[str, int] | None, dict[tuple[str, int], int] | None] | None = None,
    listed: bool = True,
) -> list[str]:
    """The row checks of :func:`check_submission` (ids against the sample, then every string); ``classes_of``: each
    row's class column, the classes allowed, the class names it is written with (None: numbers) and the sample's
    (image, class) pairs, when the class has a column."""
    problems: list[str] = []
    ids = sub[id_col].to_numpy(dtype=object)
    want = sample[id_col].to_numpy(dtype=object)
    grouped = spec.instances or classes_of is not None  # an id repeats on consecutive rows
    if grouped:
        # one image's rows are consecutive; compare the distinct ids (the sample may have one row per id)
        first = _id_groups(ids)
        got, lines = ids[first], first + 2
        want = want[_id_groups(want)]
        n_got = len(set(got))  # an id whose rows are split is one id (said below: its rows are not together)
        counted = f"{n_got} distinct ids (in {len(ids)} rows)"
    else:
        got, lines = ids, np.arange(len(ids)) + 2
        n_got, counted = len(ids), f"{len(ids)} rows"
    # listed: the ids are known (the sample's, or the test images' rows standing in for a sample of its header only)
    if n_got != len(want) and listed:
        problems.append(f"{counted}; the sample has {len(want)}")
    seen: dict[str, int] = {}
    dups: list[str] = []
    dup_lines: list[str] = []
    for k, row_id in enumerate(got):
        if row_id in seen and row_id not in dups:
            dups.append(row_id)
            dup_lines.append(f"{row_id!r} (lines {seen[row_id]} and {lines[k]})")
            if grouped:
                what = "instance rows" if spec.instances else "rows (one per class)"
                problems.append(f"rows of id {row_id!r} are not together (lines {seen[row_id]} and {lines[k]}); "
                                f"one image's {what} must be consecutive")
        seen.setdefault(row_id, int(lines[k]))
    if dups and not grouped:
        problems.append(f"duplicate ids: {', '.join(dup_lines[:5])}" + (f" and {len(dups) - 5} more" if len(dups) > 5 else ""))
    missing = set(want) - set(got)
    extra = set(got) - set(want) if listed else set()
    if missing:
        problems.append(f"{len(missing)} sample ids missing, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{len(extra)} ids not in the sample, e.g. {sorted(extra)[:3]}")
    if not missing and not extra and len(got) == len(want):
        diff = np.flatnonzero(got != want)
        if diff.size:
            i = int(diff[0])
            problems.append(f"rows are in a different order than the sample: line {lines[i]} has {got[i]!r}, the sample {want[i]!r}")
    if classes_of is not None:
        values, allowed, names, pairs = classes_of
        problems.extend(_class_problems(ids, values, allowed, max_problems, names, pairs))

    strict = dataclasses.replace(spec, empty="")  # which empty tokens are allowed is decided here
    if spec.instances:
        sizes = np.diff(np.append(_id_groups(ids), len(ids)))
        group_size = np.repeat(sizes, sizes)  # rows of each row's image
    stripped_tokens = {t.strip() for t in empty_tokens}
    objects: list[tuple[np.ndarray, np.ndarray]] = []  # the current image's objects
    object_lines: list[int] = []

    def check_overlap() -> None:
        hit = instance_overlap(objects)
        if hit is not None:
            a, b, pixel = hit
            problems.append(f"line {object_lines[b]} (id {ids[object_lines[b] - 2]!r}): this object overlaps the one on "
                            f"line {object_lines[a]} at pixel {pixel + spec.index_base}; one image's objects must not overlap")
        objects.clear()
        object_lines.clear()

    for i, (row_id, rle) in enumerate(zip(ids, sub[rle_col])):
        if len(problems) >= max_problems:
            problems.append("(more problems not listed)")
            break
        where = f"line {i + 2} (id {row_id!r})"
        if spec.instances and i > 0 and row_id != ids[i - 1]:
            check_overlap()
        if rle.strip() in stripped_tokens:  # spaces around a token ignored, as the decoder and scorers split them off
            if spec.instances and group_size[i] > 1:
                problems.append(f"{where}: an empty mask among the {group_size[i]} instance rows of this id; "
                                "an image without objects has exactly one row")
            continue
        if rle.strip() == "":
            problems.append(f"{where}: empty field, but an empty mask is written as "
                            f"{' or '.join(repr(t) for t in empty_tokens)} in this competition")
            continue
        limit = n_pixels.get(row_id) if isinstance(n_pixels, dict) else n_pixels
        try:
            runs = strict.runs(rle, limit if limit else np.iinfo(np.int64).max, where=where)
        except RLEError as e:
            problems.append(str(e))
            continue
        if spec.instances:
            objects.append(runs)
            object_lines.append(i + 2)
    else:
        check_overlap()
    return problems


def sample_class_pairs(ids: Sequence[str], values: Sequence[Any],
                       names: dict[str, int] | None = None) -> dict[tuple[str, int], int] | None:
    """The ``(image id, class) -> line`` pairs a sample's class column lists, or None when it holds no classes: every
    value 0 or blank, the placeholder of Severstal's sample (one row per image, ``ClassId`` 0), which says nothing of
    the classes a submission has rows for. ``names``: classes written as names (:func:`class_column_names`). A value
    that reads as no class is left to the row checks."""
    texts = [str(v).strip() for v in values]
    if all(t in ("", "0") for t in texts):
        return None
    pairs: dict[tuple[str, int], int] = {}
    for line, (i, t) in enumerate(zip(ids, texts), start=2):
        cls = class_of_text(t, names)
        if cls is not None:
            pairs.setdefault((str(i), cls), line)  # a pair listed twice is named by its first line
    return pairs


def _class_problems(ids: np.ndarray, values: np.ndarray, classes: list[int] | None, max_problems: int,
                    names: dict[str, int] | None = None, sample_pairs: dict[tuple[str, int], int] | None = None) -> list[str]:
    """A class column's problems: a value that is not a whole number (or not one of ``classes``), a class twice for
    one image, an image without a row for each of ``classes`` (the writer's one row per image and class), and
    ``(image, class)`` pairs that differ from ``sample_pairs`` (a sample that lists each image's classes). Without
    ``classes`` or listed classes, a row of class 0 when the sample's column is only that placeholder."""
    problems: list[str] = []
    allowed = None if classes is None else {int(c) for c in classes}
    seen: dict[tuple[str, int], int] = {}
    of_image: dict[str, tuple[int, set[int]]] = {}  # image id -> (its first line, its classes)
    unread: set[str] = set()
    for i, (row_id, raw) in enumerate(zip(ids, values)):
        if len(problems) >= max_problems:
            return problems
        where = f"line {i + 2} (id {row_id!r})"
        got = of_image.setdefault(row_id, (i + 2, set()))[1]
        cls = class_of_text(raw, names)
        if cls is None:
            problems.append(f"{where}: {class_text_problem(raw, names)}")
            unread.add(row_id)  # which class its row is for is not known: no class is called missing
            continue
        got.add(cls)
        if allowed is not None and cls not in allowed:
            problems.append(f"{where}: class {cls} is not one this competition submits ({sorted(allowed)})")
        elif (row_id, cls) in seen:
            problems.append(f"{where}: class {cls} again for this image; one row per image and class")
        elif allowed is None and sample_pairs is None and cls == 0:
            problems.append(f"{where}: class 0, the sample's placeholder (its class column is 0 on every row), not a "
                            "class; a row per image and class names the class")
        seen.setdefault((row_id, cls), i + 2)
    if allowed is not None:
        for row_id, (line, got) in of_image.items():
            if len(problems) >= max_problems:
                return problems
            if allowed - got and row_id not in unread:
                problems.append(f"line {line} (id {row_id!r}): no row for class(es) {sorted(allowed - got)} of this "
                                f"image; this submission has one row per image and class {sorted(allowed)}")
    if sample_pairs is not None:
        absent = [pair for pair in sample_pairs if pair not in seen and pair[0] in of_image]
        extra = [pair for pair in seen if pair not in sample_pairs and pair[0] in {p[0] for p in sample_pairs}]
        for (row_id, cls) in absent[:3]:
            problems.append(f"id {row_id!r} class {cls} (sample line {sample_pairs[(row_id, cls)]}): no such row here")
        for (row_id, cls) in extra[:3]:
            problems.append(f"line {seen[(row_id, cls)]} (id {row_id!r}): class {cls}, which the sample does not list "
                            "for this image")
        if len(absent) + len(extra) > 6:
            problems.append(f"({len(absent)} rows of the sample absent, {len(extra)} not in it, in all)")
    return problems[:max_problems]
