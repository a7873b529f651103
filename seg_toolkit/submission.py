"""Submission CSVs: rows streamed as predictions arrive, then checked against the sample.

The competition's convention is all config (``submission.*``): column names (default: the
sample's), pixel order, the empty token, one row per image or per image and class
(``id_format``, e.g. ``{id}_{cls}``). The file appears only when complete and valid:
rows go to a temporary file that replaces the target at the end, so a crash or a full
disk never leaves half a submission or destroys the previous one.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .checkpoint import default_file_mode
from .config import Config
from .errors import SegToolkitError
from .rle import RLEError, rle_encode, rle_to_runs

log = logging.getLogger(__name__)

__all__ = ["SubmissionError", "SubmissionWriter", "mask_rows", "check_submission", "submission_path", "submission_columns"]


class SubmissionError(SegToolkitError, ValueError):
    """A submission does not match the competition's format."""


def submission_path(cfg: Config) -> Path:
    return Path(cfg.submission.path) if cfg.submission.path else Path("submissions") / f"{cfg.experiment}.csv"


def submission_columns(cfg: Config) -> tuple[str, str]:
    """``(id column, rle column)``: the config's, else the sample submission's first two."""
    s = cfg.submission
    sample = cfg.data_path(cfg.data.sample_submission)
    cols: list[str] = []
    if sample.is_file():
        cols = list(pd.read_csv(sample, nrows=0).columns)
    id_col = s.id_column or (cols[0] if cols else cfg.data.id_column)
    rle_col = s.rle_column or (cols[1] if len(cols) > 1 else cfg.data.rle_column)
    return id_col, rle_col


def mask_rows(image_id: str, mask: np.ndarray, cfg: Config) -> list[tuple[str, str]]:
    """Submission rows for one image's decided mask.

    ``mask``: binary/multilabel ``(C, H, W)`` 0/1, multiclass ``(H, W)`` label map. Per-class
    rows number classes from 1: multilabel channel ``k`` is class ``k+1``; multiclass label
    ``k >= 1`` is class ``k`` (0 is background and has no row).
    """
    s = cfg.submission
    order = s.rle_order or cfg.data.rle_order
    enc = lambda m: rle_encode(m, order) or s.empty_token  # noqa: E731
    if cfg.data.task == "multiclass":
        channels = [(k, mask == k) for k in range(1, cfg.data.num_classes)]
    else:
        channels = [(k + 1, mask[k]) for k in range(mask.shape[0])]
    if not s.per_class:
        if len(channels) != 1:
            raise SubmissionError(
                f"{len(channels)} classes but submission.per_class is false; set it (and submission.id_format) "
                "for one row per image and class"
            )
        return [(image_id, enc(channels[0][1]))]
    return [(s.id_format.format(id=image_id, cls=k), enc(m)) for k, m in channels]


class SubmissionWriter:
    """Write rows incrementally; ``close()`` checks ids against ``expected_ids`` and publishes the file."""

    def __init__(self, path: str | Path, columns: tuple[str, str], expected_ids: list[str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._fh = os.fdopen(fd, "w", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(columns)
        self.expected = expected_ids
        self.n = 0
        self._mismatch: str | None = None

    def write(self, rows: Iterable[tuple[str, str]]) -> None:
        for row in rows:
            if self.expected is not None and self._mismatch is None:
                if self.n >= len(self.expected) or self.expected[self.n] != row[0]:
                    want = self.expected[self.n] if self.n < len(self.expected) else "(end of sample)"
                    self._mismatch = f"row {self.n + 1}: id {row[0]!r} where the sample has {want!r}"
            self._writer.writerow(row)
            self.n += 1

    def close(self) -> Path:
        self._fh.close()
        try:
            if self.expected is not None:
                if self._mismatch is None and self.n != len(self.expected):
                    self._mismatch = f"{self.n} rows written, the sample has {len(self.expected)}"
                if self._mismatch:
                    raise SubmissionError(f"refusing to write {self.path}: ids differ from the sample submission: {self._mismatch}")
            os.chmod(self._tmp, default_file_mode())
            os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return self.path

    def abort(self) -> None:
        self._fh.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_submission(
    csv_path: str | Path,
    sample_path: str | Path,
    empty_tokens: tuple[str, ...] = ("",),
    n_pixels: dict[str, int] | int | None = None,
    max_problems: int = 20,
) -> list[str]:
    """Every way ``csv_path`` differs from the competition's format; an empty list means it is valid.

    Checks the columns (names and order), the row count, the ids and their order against the
    sample, duplicate ids, and every RLE string (pairs of integers, starts >= 1, lengths >= 1,
    sorted, not overlapping, and within ``n_pixels`` of the image when given).
    """
    problems: list[str] = []
    try:
        sub = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as e:
        return [f"{csv_path}: cannot be read as CSV ({type(e).__name__}: {e})"]
    sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False, na_filter=False)
    if list(sub.columns) != list(sample.columns):
        problems.append(f"columns are {list(sub.columns)}; the sample has {list(sample.columns)}")
        return problems
    id_col, rle_col = sample.columns[0], sample.columns[-1]
    if len(sub) != len(sample):
        problems.append(f"{len(sub)} rows; the sample has {len(sample)}")
    dup = sub[id_col][sub[id_col].duplicated()]
    if len(dup):
        problems.append(f"duplicate ids: {dup.unique()[:5].tolist()}")
    missing = set(sample[id_col]) - set(sub[id_col])
    extra = set(sub[id_col]) - set(sample[id_col])
    if missing:
        problems.append(f"{len(missing)} sample ids missing, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{len(extra)} ids not in the sample, e.g. {sorted(extra)[:3]}")
    if not missing and not extra and len(sub) == len(sample):
        diff = np.flatnonzero(sub[id_col].to_numpy() != sample[id_col].to_numpy())
        if diff.size:
            i = int(diff[0])
            problems.append(f"rows are in a different order than the sample: line {i + 2} has {sub[id_col].iat[i]!r}, the sample {sample[id_col].iat[i]!r}")
    for i, (image_id, rle) in enumerate(zip(sub[id_col], sub[rle_col])):
        if len(problems) >= max_problems:
            problems.append("(more problems not listed)")
            break
        if rle in empty_tokens:
            continue
        if rle.strip() == "":
            problems.append(f"line {i + 2} (id {image_id!r}): empty field, but an empty mask is written as "
                            f"{' or '.join(repr(t) for t in empty_tokens)} in this competition")
            continue
        limit = n_pixels.get(image_id) if isinstance(n_pixels, dict) else n_pixels
        try:
            rle_to_runs(rle, limit if limit else np.iinfo(np.int64).max, where=f"line {i + 2} (id {image_id!r})")
        except RLEError as e:
            problems.append(str(e))
    return problems


def score_submission(csv_path: str | Path, solution_path: str | Path, cfg: Config) -> float:
    """Score a submission against a solution CSV of the same format with the config's metric.

    Image sizes come from the test images; both files are decoded with the submission's
    pixel order. Used by the demo, whose answers are known.
    """
    import torch

    from .data import load_test_samples
    from .data.io import image_size
    from .metrics import Evaluator
    from .rle import rle_decode
    from .data.sources import parse_submission_id

    s = cfg.submission
    order = s.rle_order or cfg.data.rle_order
    sub = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False)
    sol = pd.read_csv(solution_path, dtype=str, keep_default_na=False, na_filter=False)
    pred = dict(zip(sub.iloc[:, 0], sub.iloc[:, -1]))
    split = parse_submission_id(s.id_format) if s.per_class else None
    rows: dict[str, dict[int, tuple[str, str]]] = {}
    for row_id, truth in zip(sol.iloc[:, 0], sol.iloc[:, -1]):
        image_id, cls = (row_id, 1)
        if split is not None:
            m = split.fullmatch(row_id)
            image_id, cls = m.group("id"), int(m.group("cls"))
        rows.setdefault(image_id, {})[cls] = (truth, pred.get(row_id, ""))
    evaluator = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    empties = {"", s.empty_token}
    for sample in load_test_samples(cfg):
        hw = image_size(sample.image)
        cls_rows = rows[sample.id]
        dec = lambda r: rle_decode("" if r in empties else r, hw, order)  # noqa: E731
        classes = sorted(cls_rows)
        truth = np.stack([dec(cls_rows[c][0]) for c in classes])
        guess = np.stack([dec(cls_rows[c][1]) for c in classes])
        if cfg.data.task == "multiclass":
            t = np.zeros(hw, np.int64)
            g = np.zeros(hw, np.int64)
            for k, c in enumerate(classes):
                t[truth[k] > 0], g[guess[k] > 0] = c, c
            evaluator.update_masks(torch.from_numpy(g)[None], torch.from_numpy(t)[None])
        else:
            evaluator.update_masks(torch.from_numpy(guess)[None], torch.from_numpy(truth).float()[None])
    return float(evaluator.compute()["score"])
