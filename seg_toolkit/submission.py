"""Submission CSVs: rows streamed as predictions arrive, then checked against the sample.

The competition's convention is all config (``submission.*``): column names (default: the
sample's), the RLE spec (:class:`~seg_toolkit.rle.RLESpec`: pixel order, index base, absolute
or relative starts, the empty token, one row per object), one row per image or per image and
class (``id_format``, e.g. ``{id}_{cls}``, or the class in a column of its own, ``class_column``; which
classes: ``classes``, class 0 included when listed). With instance rows an id repeats, once per object;
with a class column, once per class. The file appears only when complete and valid:
rows go to a temporary file that replaces the target at the end, so a crash or a full
disk never leaves half a submission or destroys the previous one.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .files import default_file_mode, remove_stale_writes, temp_prefix
from .config import Config
from .config_submission_checks import submitted_classes
from .errors import SegToolkitError
from .rle import RLESpec

log = logging.getLogger(__name__)

__all__ = [
    "SubmissionError",
    "SubmissionWriter",
    "mask_rows",
    "submission_path",
    "submission_columns",
    "submission_header",
    "row_fields",
    "repeated_ids",
    "submission_spec",
    "submission_classes",
    "class_column_names",
    "class_text",
    "class_of_text",
]


class SubmissionError(SegToolkitError, ValueError):
    """A submission does not match the competition's format."""


def submission_path(cfg: Config) -> Path:
    return Path(cfg.submission.path) if cfg.submission.path else Path("submissions") / f"{cfg.experiment}.csv"


def _sample_header(cfg: Config) -> list[str]:
    """The sample submission's column names, or none when the competition ships no sample."""
    sample = cfg.data_path(cfg.data.sample_submission)
    return list(pd.read_csv(sample, nrows=0).columns) if sample.is_file() else []


def sample_rle_column(cols: Sequence[str], class_column: str | None) -> str | None:
    """The RLE column of a sample submission with columns ``cols``: the first after the id that is not the class
    column (Severstal's and UW-Madison's put the class before the RLE: ``ImageId,ClassId,EncodedPixels``)."""
    return next((c for c in cols[1:] if c != class_column), None)


def submission_columns(cfg: Config) -> tuple[str, str]:
    """``(id column, rle column)``: the config's, else the sample submission's first and :func:`sample_rle_column`."""
    s = cfg.submission
    cols = _sample_header(cfg)
    id_col = s.id_column or (cols[0] if cols else cfg.data.id_column)
    rle_col = s.rle_column or sample_rle_column(cols, s.class_column) or cfg.data.rle_column
    return id_col, rle_col


def row_fields(cfg: Config) -> tuple[str, ...]:
    """What each row of :func:`mask_rows` holds, in tuple order: the id and RLE columns, then
    ``submission.class_column`` when the class has a column of its own."""
    cls = cfg.submission.class_column
    return submission_columns(cfg) + ((cls,) if cls else ())


def submission_header(cfg: Config) -> list[str]:
    """The submission's columns in file order: the sample's, which must be exactly :func:`row_fields`'s (any other
    column could not be filled in, and a file without it fails the grader), else :func:`row_fields`."""
    fields = row_fields(cfg)
    header = _sample_header(cfg)
    if not header:
        return list(fields)
    path = cfg.data_path(cfg.data.sample_submission)
    missing = [c for c in fields if c not in header]
    if missing:
        keys = dict(zip(fields, ("submission.id_column", "submission.rle_column", "submission.class_column")))
        raise SubmissionError(f"{path}: columns {header}; no column {missing[0]!r} ({keys[missing[0]]})")
    extra = [c for c in header if c not in fields]
    if extra:
        hint = (f"; if {extra[0]!r} holds each row's class (Severstal's ClassId), set submission.class_column: {extra[0]}"
                if len(extra) == 1 and "class" in extra[0].lower() and not cfg.submission.class_column else "")
        raise SubmissionError(f"{path}: columns {header}; a submission here has {len(fields)} columns, {list(fields)}, so {extra} "
                              "could not be filled in; remove them from the sample, or set submission.id_column / "
                              f"submission.rle_column if other columns are the ones to write{hint}")
    return header


def submission_spec(cfg: Config) -> RLESpec:
    """The submission's RLE spec from ``submission.*``; each of the pixel order, index base, starts and empty token
    left unset is the training CSV's (``data.rle_*``): :func:`~seg_toolkit.config_submission_checks.submission_style`."""
    from .config_submission_checks import submission_style

    s = cfg.submission
    order, index_base, starts, empty = submission_style(cfg)
    return RLESpec(order=order, index_base=index_base, starts=starts, empty=empty, instances=s.instances,
                   min_instance_area=s.min_instance_area)


def submission_classes(cfg: Config) -> list[int]:
    """The classes that get rows, in :func:`mask_rows`'s order: ``submission.classes``, else binary/multilabel
    ``1..C`` and multiclass ``1..C-1`` (class 0, background, only when listed). With a sample submission the file's
    rows follow the sample's order (:class:`SubmissionWriter`)."""
    return submitted_classes(cfg)


def mask_rows(image_id: str, mask: np.ndarray, cfg: Config) -> list[tuple[str, ...]]:
    """Submission rows for one image's decided mask, each a tuple of :func:`row_fields`.

    ``mask``: binary/multilabel ``(C, H, W)`` 0/1, multiclass ``(H, W)`` label map. Classes are
    numbered as in the data: multilabel channel ``k`` is class ``k+1``; multiclass label ``k``
    is class ``k`` (0 is background, with rows only when ``submission.classes`` lists it).
    With ``submission.instances`` each class gives one row per object (the id repeated), or
    one ``empty_token`` row when it has none. With ``submission.class_column`` each class gives
    one row ``(image id, rle, class)``.
    """
    s = cfg.submission
    spec = submission_spec(cfg)
    classes = submission_classes(cfg)
    if cfg.data.task == "multiclass":
        channels = [(k, mask == k) for k in classes]
    else:
        channels = [(k, mask[k - 1]) for k in classes]
    if not s.per_class and not s.class_column and len(channels) != 1:
        raise SubmissionError(
            f"{len(channels)} classes but submission.per_class is false; set it (and submission.id_format) "
            "for one row per image and class, or submission.class_column"
        )
    rows: list[tuple[str, ...]] = []
    ids = row_ids(cfg, image_id)  # one per class (submission.classes' order, as channels), or the image id
    names = class_column_names(cfg)
    for i, (k, m) in enumerate(channels):
        if s.class_column:
            rows.extend((image_id, rle, class_text(k, names)) for rle in spec.encode_rows(m))
            continue
        rows.extend((ids[i] if s.per_class else ids[0], rle) for rle in spec.encode_rows(m))
    return rows


class SubmissionWriter:
    """Write rows incrementally in the sample's order; ``close()`` checks ids against ``expected_ids`` and publishes the file.

    ``columns``: the header; rows are tuples of ``fields`` (default: ``columns``), the id first,
    written in the header's order.

    Without ``repeated_ids`` each row goes to its id's place in ``expected_ids`` (the sample's order),
    whatever order the rows come in: a row whose turn has come is written at once, a row ahead of its
    turn waits in a spool file beside the output (``.<name>.<random>.rows.tmp``, removed at the end)
    until the rows before it are written. Written image by image (each :meth:`write` one image's rows,
    placed in the sample's order), a sample listing one image's rows in another order than
    :func:`mask_rows` (``submission.classes: [3, 2, 1]``, string-sorted ``a_1, a_10, a_2``) never
    spools; one that interleaves images (class-major ``a_1, b_1, a_2, b_2``) holds nearly every row
    there until the end: up to the submission's size on disk, and 16 bytes of memory per sample row.

    With ``repeated_ids`` (instance rows: one per object; a class column: one per class) consecutive
    rows may repeat an id and rows come in the sample's order: the distinct ids, in order, are what
    must match ``expected_ids`` (whose consecutive repeats count once).
    """

    def __init__(
        self,
        path: str | Path,
        columns: tuple[str, ...] | list[str],
        expected_ids: list[str] | None = None,
        repeated_ids: bool = False,
        fields: tuple[str, ...] | None = None,
    ) -> None:
        fields = tuple(fields or columns)
        if sorted(fields) != sorted(columns):
            raise ValueError(f"row fields {list(fields)} are not the columns {list(columns)}")
        self._order = [fields.index(c) for c in columns]
        if repeated_ids and expected_ids is not None:
            expected_ids = [x for k, x in enumerate(expected_ids) if k == 0 or x != expected_ids[k - 1]]
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_writes(self.path.parent, name=self.path.name)  # a killed predict's, to this file
        fd, self._tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        self._fh = os.fdopen(fd, "w", newline="", encoding="utf-8")  # whatever the locale: ids as the sample has them
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(columns)
        self.expected = expected_ids
        self.repeated_ids = repeated_ids
        self.n = 0  # rows written
        self.n_ids = 0  # ids written (rows, less the repeats of instance rows)
        self._last: str | None = None
        self._mismatch: str | None = None
        # the sample's place of each id (rows are put there), the next place to write, and the spool of rows ahead
        self._place: dict[str, int] | None = None
        if expected_ids is not None and not repeated_ids:
            self._place = {}
            for k, x in enumerate(expected_ids):
                self._place.setdefault(x, k)
        self._next = 0
        self._spool: Any = None
        self._spool_path: str | None = None
        self._held = np.empty((0, 2), np.int64)  # per sample row: (offset, bytes) in the spool; offset -1: not held

    def write(self, rows: Iterable[tuple[str, ...]]) -> None:
        if self._place is None:
            self._write_in_turn(rows)
            return
        end = len(self.expected)
        for row in sorted(rows, key=lambda r: self._place.get(r[0], end)):  # one image's rows in the sample's order
            self.n += 1
            k = self._place.get(row[0])
            if k is None or k < self._next or (len(self._held) and self._held[k, 0] >= 0):
                if self._mismatch is None:
                    want = self.expected[self._next] if self._next < end else "(end of sample)"
                    why = "not a sample id" if k is None else "written already"
                    self._mismatch = f"row {self.n}: id {row[0]!r} where the sample has {want!r} ({why})"
                continue
            self.n_ids += 1
            cells = [row[i] for i in self._order]
            if k == self._next:
                self._writer.writerow(cells)
                self._next += 1
                self._release()
            else:
                self._hold(k, cells)

    def _write_in_turn(self, rows: Iterable[tuple[str, ...]]) -> None:
        """Rows in the order they come (no sample, or repeated ids), compared with the sample as they are written."""
        for row in rows:
            repeat = self.repeated_ids and self.n > 0 and row[0] == self._last
            if not repeat:
                if self.expected is not None and self._mismatch is None:
                    k = self.n_ids
                    if k >= len(self.expected) or self.expected[k] != row[0]:
                        want = self.expected[k] if k < len(self.expected) else "(end of sample)"
                        self._mismatch = f"row {self.n + 1}: id {row[0]!r} where the sample has {want!r}"
                self.n_ids += 1
            self._last = row[0]
            self._writer.writerow([row[i] for i in self._order])
            self.n += 1

    def _hold(self, k: int, cells: list[str]) -> None:
        """Spool the row of sample place ``k`` until its turn."""
        if self._spool is None:
            fd, self._spool_path = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=".rows.tmp", dir=self.path.parent)
            self._spool = os.fdopen(fd, "w+b")
            self._held = np.full((len(self.expected), 2), -1, np.int64)
            log.info("%s: the sample interleaves images' rows; rows ahead of their turn wait in %s until it comes",
                     self.path, self._spool_path)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        data = buf.getvalue().encode("utf-8")
        self._held[k] = (self._spool.seek(0, os.SEEK_END), len(data))
        self._spool.write(data)

    def _release(self) -> None:
        """Write the spooled rows whose turn has come."""
        while self._spool is not None and self._next < len(self._held) and self._held[self._next, 0] >= 0:
            offset, size = self._held[self._next].tolist()
            self._spool.seek(offset)
            self._fh.write(self._spool.read(size).decode("utf-8"))
            self._held[self._next] = -1
            self._next += 1

    def _drop_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
        if self._spool_path and os.path.exists(self._spool_path):
            os.unlink(self._spool_path)

    def close(self) -> Path:
        try:
            self._fh.close()
            if self.expected is not None:
                if self._mismatch is None and self._place is not None and self._next < len(self.expected):
                    k = self._next
                    self._mismatch = (f"{self.n} rows written, the sample has {len(self.expected)}: none for its line {k + 2} "
                                      f"(id {self.expected[k]!r})")
                if self._mismatch is None and self.n_ids != len(self.expected):
                    what = f"{self.n_ids} ids in {self.n} rows" if self.repeated_ids else f"{self.n} rows"
                    self._mismatch = f"{what} written, the sample has {len(self.expected)}"
                if self._mismatch:
                    raise SubmissionError(f"refusing to write {self.path}: ids differ from the sample submission: {self._mismatch}")
            os.chmod(self._tmp, default_file_mode())
            os.replace(self._tmp, self.path)
        finally:
            self._drop_spool()
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return self.path

    def abort(self) -> None:
        try:
            self._fh.close()
        finally:
            self._drop_spool()
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def row_ids(cfg: Config, image_id: str) -> list[str]:
    """One image's submission row ids: one per submitted class (``submission.id_format``), or the image id (also
    with a class column, whose rows repeat it)."""
    s = cfg.submission
    if not s.per_class:
        return [image_id]
    from .data.id_formats import format_fields  # lazy: the data package imports torch

    if "name" not in format_fields(s.id_format):
        return [s.id_format.format(id=image_id, cls=k) for k in submission_classes(cfg)]
    from .data.colors import class_ids_by_name

    name_of = {k: name for name, k in class_ids_by_name(cfg).items()}
    return [s.id_format.format(id=image_id, name=name_of[k]) for k in submission_classes(cfg)]


def class_column_names(cfg: Config) -> dict[str, int] | None:
    """The names ``submission.class_column`` writes each row's class with (``class_format: '{name}'``, UW-Madison's
    ``large_bowel``), name -> class number; None when it writes the numbers (Severstal's ``ClassId``)."""
    if cfg.submission.class_format != "{name}":
        return None
    from .data.colors import class_ids_by_name, unnamed_classes  # lazy: the data package imports torch

    unnamed = [k for k in unnamed_classes(cfg) if k in submission_classes(cfg)]
    if unnamed:
        raise SubmissionError(f"submission.class_format: '{{name}}' writes each class's name, and class(es) {unnamed} "
                              f"have none in {cfg.data.classes_csv} (data.classes_csv): name every submitted class there, or "
                              "in data.class_names")
    return {name.strip(): k for name, k in class_ids_by_name(cfg).items()}  # as a grader reads a CSV field


def class_text(k: int, names: dict[str, int] | None) -> str:
    """Class ``k`` as a class column writes it: its number, or its name with ``names`` (:func:`class_column_names`)."""
    if names is None:
        return str(k)
    return next(name for name, c in names.items() if c == k)


def class_of_text(text: Any, names: dict[str, int] | None) -> int | None:
    """A class column's value read back as :func:`class_text` writes it: the class number of a whole number, or with
    ``names`` of a class name; None when it is not one (surrounding spaces aside)."""
    t = str(text).strip()
    if names is not None:
        return names.get(t)
    return int(t) if t.isdigit() and t.isascii() else None


def class_text_problem(raw: Any, names: dict[str, int] | None) -> str:
    """Why a class column's value reads as no class (:func:`class_of_text` gave None), with what it should be."""
    if names is not None:
        also = " (a number: submission.class_format '{name}' writes names)" if class_of_text(raw, None) is not None else ""
        return f"class {raw!r} is not a class name of this submission ({list(names)}){also}"
    also = "; a class name? submission.class_format: '{name}' writes names" if str(raw).strip() else ""
    return f"class {raw!r} is not a whole number{also}"


def repeated_ids(cfg: Config) -> bool:
    """Whether consecutive submission rows repeat an id: one row per object, or per class with a class column."""
    return cfg.submission.instances or bool(cfg.submission.class_column)


def row_pixels(cfg: Config) -> dict[str, int]:
    """Each submission row id's mask size in pixels (``height * width``: ``data.score_size``, else from the test
    images' headers), so that :func:`~seg_toolkit.submission_check.check_submission` finds a run past the mask's last
    pixel, as the competition's scorer would."""
    from .data import load_test_samples
    from .data.scored import sample_score_hw

    out: dict[str, int] = {}
    for x in load_test_samples(cfg):
        h, w = sample_score_hw(x, cfg)
        out.update(dict.fromkeys(row_ids(cfg, x.id), h * w))
    return out


def __getattr__(name: str):
    """``check_submission`` / ``score_submission`` lived here before :mod:`seg_toolkit.submission_check` /
    :mod:`seg_toolkit.submission_score`: scripts and
    notebooks that import them from this module keep working (imported lazily: that module imports this one)."""
    if name == "check_submission":
        from .submission_check import check_submission

        return check_submission
    if name == "score_submission":
        from .submission_score import score_submission

        return score_submission
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
