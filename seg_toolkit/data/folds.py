"""Seeded cross-validation folds, written once to ``folds.csv`` and reused by every command.

``folds.method``:

* ``kfold``: shuffled K-fold, no stratification.
* ``stratified`` (default): folds that hold each kind of mask in even shares.

  - binary: by empty / non-empty mask (sklearn ``StratifiedKFold``).
  - multilabel: by **class presence**: a 0/1 vector per image, one column per class
    (the image has at least one pixel of it) plus an ``empty`` column (no class at all),
    split by iterative stratification (``iterstrat``'s ``MultilabelStratifiedKFold``,
    Sechidis et al. 2011), which places the rarest classes first and spreads each class as
    evenly as the overlaps between classes allow: typically a class present in 7 images lands
    in 1 or 2 images of each of 5 folds. It balances presence, not absence: a class missing
    from only a few images may miss from them unevenly.
  - multiclass: the same, with the classes 1..num_classes-1 (class 0 is background and the
    void id never counts; ``empty`` = nothing but background). Stratifying by the dominant
    class, as before, stratified by background, which dominates almost every image.
* ``group``: sklearn ``GroupKFold``; the group of an image is its ``data.group_column``
  value or the first match group of ``data.group_pattern`` on its id (patient, video,
  sequence): a group never spans two folds.
* ``stratified_group``: sklearn ``StratifiedGroupKFold``: groups as ``group``, stratified by
  one label per image: binary empty / non-empty; multilabel and multiclass the **rarest class
  present** in the image (fewest images in the training set), ``empty`` when none is: an
  image holding a rare class counts under it (its dominant class by area would hide it under a
  common one). Groups stay whole, so with few large groups the folds differ in size.

The ``stratum`` column of ``folds.csv`` says what each image was split by: ``empty`` /
``nonempty``, the classes present (the balance file's column names joined by ``+``, e.g.
``cat+dog``, or ``empty``), or the group (``group``, ``stratified_group``).

After making folds, the **fold balance** is logged as a table and written beside a run's
``folds.csv`` (:attr:`seg_toolkit.run.Run.fold_balance_csv`): per validation fold the number
of images, of images containing each class, and of empty images, then an ``all`` row.
Class presence is read one mask at a time: from the RLE strings without decoding (csv
layout), or one mask file at a time (folder layout).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from ..config import Config
from ..files import atomic_write, read_json, write_json, write_text
from ..run import Run
from .io import DataError
from .masks import class_names, load_target, mask_ids, train_rle_spec
from .sample import labels_fingerprint
from .sources import Sample, read_csv_strict

log = logging.getLogger(__name__)

__all__ = [
    "class_presence", "presence_matrix", "presence_columns", "sample_stratum", "make_folds", "fold_balance",
    "load_or_make_folds", "read_folds", "fold_of_ids", "split_fold",
]


def presence_columns(cfg: Config) -> list[str]:
    """Names of the class-presence columns: the foreground classes (multiclass without class 0), then ``empty``."""
    names = class_names(cfg)
    if cfg.data.task == "multiclass":
        ids, names = list(range(1, cfg.data.num_classes)), names[1:]
    else:
        ids = list(range(len(names)))
    reserved = {"fold", "images", "empty", "all"}
    out = [n if n not in reserved and names.count(n) == 1 else f"class_{i}" for i, n in zip(ids, names)]
    return out + ["empty"]


def class_presence(sample: Sample, cfg: Config, emptied: list | None = None) -> np.ndarray:
    """``bool (K,)``: which foreground classes have at least one pixel in the sample's mask.

    K is 1 for binary, ``num_classes`` for multilabel and ``num_classes - 1`` for multiclass
    (classes 1..; class 0 is background, the void id never counts). RLE strings are only
    checked for emptiness (they were validated when the CSV was read); a mask file is read
    once, through the same declared steps as training targets (:func:`~seg_toolkit.data.masks.mask_ids`),
    and nothing is kept. ``emptied``: gets ``(mask, largest value)`` of a binary mask that ``data.mask_threshold``
    reads as empty although it holds non-zero values (:func:`presence_matrix` names them).
    """
    d = cfg.data
    k = d.num_classes - 1 if d.task == "multiclass" else d.num_classes
    if sample.rles is not None:
        spec = train_rle_spec(cfg)
        return np.array([not spec.is_empty(r) for r in sample.rles], bool)
    if sample.class_masks is not None:  # data.mask_per_class: one file per class
        return load_target(sample, cfg, None).reshape(-1, k).any(axis=0)
    ids = mask_ids(sample, cfg)  # class ids after every declared mask step (masks module); void = -1
    if d.task == "binary" and d.mask_threshold is not None and not d.instance_folders:  # objects: 0/1 ids already
        present = bool((ids >= d.mask_threshold).any())
        if not present and emptied is not None and (ids > 0).any():
            emptied.append((sample.mask, int(ids.max())))
        return np.array([present])
    counts = np.bincount(ids.ravel() + 1, minlength=k + 2)  # one pass, no sort; slot 0 = void, c + 1 = class c
    if d.task == "binary":
        return np.array([bool(counts[2:].any())])
    return counts[2 : k + 2] > 0  # ids above the classes are refused when the target is read


def presence_matrix(samples: list[Sample], cfg: Config) -> np.ndarray:
    """``bool (n, K + 1)``: :func:`class_presence` of every sample, then the ``empty`` column."""
    k = len(presence_columns(cfg)) - 1
    out = np.zeros((len(samples), k + 1), bool)
    emptied: list = []
    for i, s in enumerate(samples):
        out[i, :k] = class_presence(s, cfg, emptied)
    out[:, k] = ~out[:, :k].any(axis=1)
    if emptied:  # a set of 0/1 and 0/255 masks under mask_threshold: 128 loses its 0/1 masks without a word
        log.warning("%d of %d masks hold non-zero values but none >= data.mask_threshold=%s, so they are read as empty "
                    "(e.g. %s, largest value %d%s); if their foreground is stored as a smaller value, lower "
                    "data.mask_threshold", len(emptied), len(samples), cfg.data.mask_threshold, emptied[0][0],
                    emptied[0][1], "".join(f"; {m}: {v}" for m, v in emptied[1:3]))
    return out


def sample_stratum(sample: Sample, cfg: Config) -> str:
    """What ``stratified`` splits the sample by, as written in ``folds.csv``: ``empty`` / ``nonempty``
    for binary, else the classes present joined by ``+`` (or ``empty``)."""
    return _strata(presence_matrix([sample], cfg), cfg)[0]


def _strata(presence: np.ndarray, cfg: Config) -> list[str]:
    if cfg.data.task == "binary":
        return ["nonempty" if row[0] else "empty" for row in presence]
    cols = presence_columns(cfg)
    return ["+".join(c for c, p in zip(cols, row) if p) for row in presence]


def _rarest_present(presence: np.ndarray, cfg: Config) -> list[str]:
    """One label per image: binary ``empty``/``nonempty``; else the rarest class present, or ``empty``."""
    if cfg.data.task == "binary":
        return _strata(presence, cfg)
    cols = presence_columns(cfg)
    fg = presence[:, :-1]
    counts = fg.sum(axis=0)
    order = np.argsort(counts, kind="stable")  # rarest first; ties by class order
    labels = []
    for row in fg:
        hit = [c for c in order if row[c]]
        labels.append(cols[hit[0]] if hit else "empty")
    return labels


def sample_group(sample: Sample, cfg: Config) -> str:
    """The sample's group: its ``data.group_column`` value, or the first match group of ``data.group_pattern`` on its id."""
    if cfg.data.group_pattern:
        m = re.search(cfg.data.group_pattern, sample.id)
        if not m:
            raise DataError(f"{sample.where}: id {sample.id!r} does not match data.group_pattern {cfg.data.group_pattern!r}")
        if not m.group(1):  # an optional group that matched nothing: str(None) made every such id one group "None"
            raise DataError(f"{sample.where}: data.group_pattern {cfg.data.group_pattern!r} matches id {sample.id!r} but its "
                            "first group is empty: every such id would be one group; make the group match in every id")
        return m.group(1)
    if not sample.group:
        raise DataError(f"{sample.where}: data.group_column {cfg.data.group_column!r} is empty for id {sample.id!r}")
    return sample.group


def _groups(samples: list[Sample], cfg: Config) -> list[str]:
    groups = [str(sample_group(s, cfg)) for s in samples]
    if len(set(groups)) < cfg.folds.n_splits:
        raise DataError(f"{len(set(groups))} groups cannot make folds.n_splits={cfg.folds.n_splits} folds")
    return groups


def _stratified_binary(labels: list[str], f) -> np.ndarray:
    """sklearn ``StratifiedKFold`` on labels; labels too rare to appear in every fold are pooled, and a pool itself
    too small for every fold stays a stratum of its own, spread one image per fold (it was merged into the biggest
    label: with two labels, 2 empty masks of 20 then shared a fold in 23 of 200 seeds)."""
    counts = Counter(labels)
    pooled = [s if counts[s] >= f.n_splits else "rare" for s in labels]
    with warnings.catch_warnings():  # a stratum under n_splits members: sklearn warns, and spreads it as asked
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(StratifiedKFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed).split(np.zeros(len(labels)), pooled))
    return _fold_array(splits, len(labels))


def _fold_array(splits, n: int) -> np.ndarray:
    fold = np.full(n, -1, np.int64)
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    assert (fold >= 0).all()
    return fold


def _make(samples: list[Sample], cfg: Config) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``(folds, presence matrix or None when the method did not need it)``."""
    f = cfg.folds
    ids = [s.id for s in samples]
    n = len(ids)
    if n < f.n_splits:
        raise DataError(f"{n} training samples cannot make folds.n_splits={f.n_splits} folds")
    presence = None
    if f.method == "group":
        strata = _groups(samples, cfg)
        splitter = GroupKFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed)
        fold = _fold_array(splitter.split(np.zeros(n), groups=strata), n)
    elif f.method == "stratified_group":
        strata = _groups(samples, cfg)
        presence = presence_matrix(samples, cfg)
        labels = _rarest_present(presence, cfg)
        splitter = StratifiedGroupKFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed)
        with warnings.catch_warnings():  # a label rarer than n_splits is expected (that is the point)
            warnings.filterwarnings("ignore", message="The least populated class")
            fold = _fold_array(splitter.split(np.zeros(n), labels, groups=strata), n)
    elif f.method == "stratified":
        presence = presence_matrix(samples, cfg)
        strata = _strata(presence, cfg)
        if cfg.data.task == "binary":
            fold = _stratified_binary(strata, f)
        else:
            from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

            splitter = MultilabelStratifiedKFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed)
            fold = _fold_array(splitter.split(np.zeros((n, 1)), presence.astype(np.int64)), n)
    else:
        strata = [""] * n
        fold = _fold_array(KFold(n_splits=f.n_splits, shuffle=True, random_state=f.seed).split(np.zeros(n)), n)
    empty = sorted(set(range(f.n_splits)) - set(fold.tolist()))
    if empty:
        raise DataError(f"folds.method {f.method!r} left fold(s) {empty} without images ({n} samples); use fewer folds.n_splits")
    return pd.DataFrame({"id": ids, "fold": fold, "stratum": strata}), presence


def make_folds(samples: list[Sample], cfg: Config) -> pd.DataFrame:
    """A ``DataFrame[id, fold, stratum]`` with every sample in exactly one validation fold (see the module doc)."""
    return _make(samples, cfg)[0]


def fold_balance(folds: pd.DataFrame | np.ndarray, presence: np.ndarray, cfg: Config) -> pd.DataFrame:
    """Per validation fold: ``images``, images containing each class, ``empty`` images; then an ``all`` row.

    ``folds`` is the folds table (or its ``fold`` column) in the order of ``presence``'s rows
    (:func:`presence_matrix`).
    """
    fold = np.asarray(folds["fold"] if isinstance(folds, pd.DataFrame) else folds, np.int64)
    cols = presence_columns(cfg)
    rows = []
    for k in range(cfg.folds.n_splits):
        sel = presence[fold == k]
        rows.append([str(k), len(sel), *sel.sum(axis=0).tolist()])
    rows.append(["all", len(presence), *presence.sum(axis=0).tolist()])
    return pd.DataFrame(rows, columns=["fold", "images", *cols])


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


def fold_settings(cfg: Config) -> dict:
    """What decides the split besides the ids: kept in the run's ``folds.json`` beside ``folds.csv``."""
    f, d = cfg.folds, cfg.data
    return {"n_splits": f.n_splits, "method": f.method, "seed": f.seed, "group_column": d.group_column,
            "group_pattern": d.group_pattern}


def _labels_where(cfg: Config) -> str:
    d = cfg.data
    return f"data.train_csv row ({d.train_csv})" if d.layout == "csv" else "or re-saved mask file"


def load_or_make_folds(samples: list[Sample], cfg: Config, path: Path) -> pd.DataFrame:
    """Read ``path`` if it exists (checking it covers exactly these ids), else make and write it.

    A new ``folds.csv`` of a run comes with its fold balance (:func:`fold_balance`), logged and
    written to the run's ``fold_balance.csv`` first, so a ``folds.csv`` present means both are.
    """
    ids = [s.id for s in samples]
    run = Run(path.parent)
    own = Path(path) == run.folds_csv
    if path.is_file():
        made = read_json(run.folds_json) if own and run.folds_json.is_file() else None
        changed = [] if made is None else [f"{k}: {made.get(k)!r} -> {v!r}" for k, v in fold_settings(cfg).items()
                                           if made.get(k) != v]
        if changed:
            raise DataError(f"{path} was made with other fold settings ({'; '.join(changed)}); reusing it would not be "
                            "the split the config asks for: use a new experiment name, or --overwrite to start this one again")
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
        if made is not None and made.get("labels") not in (None, labels_fingerprint(samples)):
            raise DataError(f"{path} was made from other training labels than these (an edited {_labels_where(cfg)}): the "
                            "run's trained folds learned the old ones, and cv.json would score them against the new; "
                            "restore the labels, or use a new experiment name (or --overwrite) to train on these")
        return df.set_index("id").loc[ids].reset_index()
    df, presence = _make(samples, cfg)
    if presence is None:
        presence = presence_matrix(samples, cfg)
    balance = fold_balance(df, presence, cfg)
    log.info("fold balance (validation images per fold; images containing each class; empty images):\n%s",
             balance.to_string(index=False))
    if own:
        write_text(run.fold_balance_csv, balance.to_csv(index=False))
        write_json(run.folds_json, {**fold_settings(cfg), "labels": labels_fingerprint(samples)})
    # a temporary name of its own: two `train --fold K` jobs started together make the same folds, and a fixed
    # folds.csv.tmp had one job's rename fail under the other's
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    log.info("wrote %s (%d samples, %d folds, method %s)", path, len(df), cfg.folds.n_splits, cfg.folds.method)
    return df


def split_fold(samples: list, folds: pd.DataFrame, fold: int) -> tuple[list, list]:
    """``(training samples, validation samples)`` of ``fold``: validation is the samples whose fold it is."""
    fold_of = dict(zip(folds["id"], folds["fold"]))
    train = [s for s in samples if fold_of[s.id] != fold]
    valid = [s for s in samples if fold_of[s.id] == fold]
    return train, valid
