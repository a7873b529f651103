"""Seeded cross-validation folds, written once to ``folds.csv`` and reused by every command."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

from ..config import Config
from ..rle import rle_area
from .io import DataError, read_mask
from .sources import Sample, read_csv_strict

log = logging.getLogger(__name__)

__all__ = ["sample_stratum", "make_folds", "load_or_make_folds", "read_folds", "fold_of_ids", "split_fold"]


def _class_areas(sample: Sample, cfg: Config) -> np.ndarray:
    """Foreground pixels per output class, from RLE lengths (no decoding) or the mask file."""
    d = cfg.data
    if sample.rles is not None:
        return np.array([rle_area(r, sample.where) for r in sample.rles], np.int64)
    mask = read_mask(sample.mask, d.max_image_pixels, lossy_ok=d.mask_threshold is not None)
    if d.task == "binary" and d.mask_threshold is not None:
        return np.array([int((mask >= d.mask_threshold).sum())], np.int64)
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=max(d.num_classes, int(mask.max()) + 1))
    if d.ignore_index is not None and d.ignore_index < len(counts):
        counts[d.ignore_index] = 0
    if d.task == "binary":
        return np.array([counts[1:].sum()], np.int64)
    return counts[: d.num_classes]


def sample_stratum(sample: Sample, cfg: Config) -> str:
    """``empty`` / ``nonempty`` for binary; the dominant class for multilabel and multiclass.

    Multiclass ignores class 0 when the data came from per-class RLE rows (0 is background there).
    """
    areas = _class_areas(sample, cfg)
    if cfg.data.task == "binary":
        return "nonempty" if areas[0] > 0 else "empty"
    if cfg.data.task == "multiclass" and sample.rles is not None:
        areas = np.concatenate([[0], areas])  # rles hold classes 1.., 0 is background
        areas[0] = 0
    return f"class_{int(np.argmax(areas))}" if areas.sum() > 0 else "empty"


def sample_group(sample: Sample, cfg: Config) -> str:
    """The sample's group: its ``data.group_column`` value, or the first match group of ``data.group_pattern`` on its id."""
    if cfg.data.group_pattern:
        m = re.search(cfg.data.group_pattern, sample.id)
        if not m:
            raise DataError(f"{sample.where}: id {sample.id!r} does not match data.group_pattern {cfg.data.group_pattern!r}")
        return m.group(1)
    if not sample.group:
        raise DataError(f"{sample.where}: data.group_column {cfg.data.group_column!r} is empty for id {sample.id!r}")
    return sample.group


def make_folds(samples: list[Sample], cfg: Config) -> pd.DataFrame:
    """A ``DataFrame[id, fold, stratum]`` with every sample in exactly one validation fold."""
    f = cfg.folds
    ids = [s.id for s in samples]
    n = len(ids)
    if n < f.n_splits:
        raise DataError(f"{n} training samples cannot make folds.n_splits={f.n_splits} folds")
    fold = np.full(n, -1, np.int64)
    strata = [""] * n
    if f.method == "group":
        groups = [sample_group(s, cfg) for s in samples]
        if len(set(groups)) < f.n_splits:
            raise DataError(f"{len(set(groups))} groups cannot make {f.n_splits} folds")
        splitter = GroupKFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed)
        splits = splitter.split(np.zeros(n), groups=groups)
        strata = [str(g) for g in groups]
    elif f.method == "stratified":
        strata = [sample_stratum(s, cfg) for s in samples]
        counts = Counter(strata)
        # strata too small to appear in every fold are pooled, so sklearn can split them
        labels = [s if counts[s] >= f.n_splits else "rare" for s in strata]
        if Counter(labels)["rare"] and Counter(labels)["rare"] < f.n_splits:
            biggest = Counter(labels).most_common(1)[0][0]
            labels = [biggest if lab == "rare" else lab for lab in labels]
        splits = StratifiedKFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed).split(np.zeros(n), labels)
    else:
        splits = KFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed).split(np.zeros(n))
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    assert (fold >= 0).all()
    return pd.DataFrame({"id": ids, "fold": fold, "stratum": strata})


def read_folds(path: Path) -> pd.DataFrame:
    """A run's ``folds.csv`` (``id`` as str, ``fold`` as int)."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"{path}: not found; `seg-toolkit train` writes it in the run folder (runs/<experiment>/)")
    df = read_csv_strict(path, ["id", "fold"], "folds file (id,fold)")
    bad = [k for k, v in enumerate(df["fold"]) if not v.strip().isdigit()]
    if bad:
        raise DataError(f"{path} line {bad[0] + 2}: fold {df['fold'].iat[bad[0]]!r} is not a fold number (0, 1, ...)")
    return df.astype({"fold": int})


def fold_of_ids(path: Path) -> dict[str, int]:
    """``id -> validation fold`` from a run's ``folds.csv``."""
    df = read_folds(path)
    return dict(zip(df["id"].tolist(), df["fold"].tolist()))


def load_or_make_folds(samples: list[Sample], cfg: Config, path: Path) -> pd.DataFrame:
    """Read ``path`` if it exists (checking it covers exactly these ids), else make and write it."""
    ids = [s.id for s in samples]
    if path.is_file():
        df = read_folds(path)
        have = set(df["id"])
        if have != set(ids) or len(df) != len(ids):
            extra, missing = len(have - set(ids)), len(set(ids) - have)
            raise DataError(
                f"{path} was made for other data ({extra} ids not in the training set, {missing} training ids "
                "missing); use a new experiment name, or --overwrite to start this one again"
            )
        if df["fold"].max() + 1 != cfg.folds.n_splits:
            raise DataError(f"{path} has {df['fold'].max() + 1} folds but folds.n_splits={cfg.folds.n_splits}")
        return df.set_index("id").loc[ids].reset_index()
    df = make_folds(samples, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    log.info("wrote %s (%d samples, %d folds, method %s)", path, len(df), cfg.folds.n_splits, cfg.folds.method)
    return df


def split_fold(samples: list, folds: pd.DataFrame, fold: int) -> tuple[list, list]:
    """``(training samples, validation samples)`` of ``fold``: validation is the samples whose fold it is."""
    fold_of = dict(zip(folds["id"], folds["fold"]))
    train = [s for s in samples if fold_of[s.id] != fold]
    valid = [s for s in samples if fold_of[s.id] == fold]
    return train, valid
