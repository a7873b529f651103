"""Folds: class-presence stratification, StratifiedGroupKFold, the fold balance file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.model_selection import StratifiedKFold

from seg_toolkit.config import ConfigError, config_from_dict, load_config
from seg_toolkit.data.folds import (
    class_presence, fold_balance, load_or_make_folds, make_folds, presence_columns, presence_matrix, read_folds,
)
from seg_toolkit.data.sources import Sample
from seg_toolkit.data.sample import labels_fingerprint
from seg_toolkit.run import Run


def _presence_table(n: int = 30) -> np.ndarray:
    """``bool (30, 4)``: class 1 in 18 images, class 2 in 7, class 3 in 5, class 4 in 3; 9 images empty."""
    rng = np.random.default_rng(0)
    p = np.zeros((n, 4), bool)
    p[:18, 0] = True
    for c, k in ((1, 7), (2, 5), (3, 3)):
        p[rng.choice(n, k, replace=False), c] = True
    assert p.sum(0).tolist() == [18, 7, 5, 3] and (~p.any(1)).sum() == 9
    return p


def _cfg(task: str, num_classes: int, folds: dict | None = None, **data) -> object:
    extra = {"class_column": "ClassId"} if task == "multilabel" else {"layout": "folder"}
    return config_from_dict({
        "data": {"task": task, "num_classes": num_classes, **extra, **data},
        "folds": {"n_splits": 5, "method": "stratified", "seed": 42, **(folds or {})},
        "loss": {"ce": 1.0} if task == "multiclass" else {"bce": 1.0},
        "submission": {"per_class": True},
    })


def _rle_samples(p: np.ndarray, groups: list[str] | None = None) -> list[Sample]:
    """Multilabel csv-layout samples: a non-empty RLE where the class is present (no image needed for folds)."""
    return [Sample(f"im{i}", Path("unused.png"), rles=tuple("3 4" if x else "" for x in row),
                   group=groups[i] if groups else None, where="train.csv") for i, row in enumerate(p)]


def _label_map_samples(p: np.ndarray, folder: Path) -> list[Sample]:
    """Multiclass label maps (8x8 PNG): background everywhere but a 2x2 patch of each class present."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, row in enumerate(p):
        m = np.zeros((8, 8), np.uint8)
        for c in np.flatnonzero(row):
            m[0:2, 2 * c : 2 * c + 2] = c + 1
        Image.fromarray(m).save(folder / f"im{i}.png")
        out.append(Sample(f"im{i}", folder / "unused.png", mask=folder / f"im{i}.png"))
    return out


def _per_fold(folds: pd.DataFrame, p: np.ndarray, n_splits: int = 5) -> np.ndarray:
    """``(n_splits, classes + 1)`` images per validation fold holding each class, then empty ones: counted here."""
    cols = np.concatenate([p, ~p.any(1, keepdims=True)], axis=1)
    fold = folds["fold"].to_numpy()
    return np.array([cols[fold == k].sum(0) for k in range(n_splits)])


def _within_one_of_even(per_fold: np.ndarray) -> bool:
    total = per_fold.sum(0)
    return bool((np.abs(per_fold - total / len(per_fold)) < 1).all())


# ----------------------------------------------------------------------------- stratified by class presence


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_multilabel_class_presence_within_one_image_of_even(seed):
    p = _presence_table()
    folds = make_folds(_rle_samples(p), _cfg("multilabel", 4, {"seed": seed}))
    per_fold = _per_fold(folds, p)
    assert per_fold.sum(0).tolist() == [18, 7, 5, 3, 9]
    assert _within_one_of_even(per_fold), per_fold  # e.g. the 3 images of class 4 in 3 different folds
    names = {"class_1", "class_2", "class_3", "class_4", "empty"}  # multilabel classes are numbered from 1
    assert "empty" in set(folds["stratum"]) and all(set(s.split("+")) <= names for s in folds["stratum"])


def test_multiclass_presence_beats_dominant_class_stratification(tmp_path):
    """Background dominates every label map, so the old rule (dominant class) had one stratum for all
    images: the rare classes fell where the shuffle put them. Class presence spreads them evenly."""
    p = _presence_table()
    samples = _label_map_samples(p, tmp_path / "masks")
    for seed in range(10):
        cfg = _cfg("multiclass", 5, {"seed": seed})
        new = _per_fold(make_folds(samples, cfg), p)
        assert _within_one_of_even(new), (seed, new)

        # the previous rule, on the same masks: argmax of the pixel counts (background: class 0 everywhere)
        old_strata = [f"class_{np.bincount(np.asarray(Image.open(s.mask)).ravel()).argmax()}" for s in samples]
        assert set(old_strata) == {"class_0"}
        old_fold = np.zeros(len(samples), int)
        for k, (_, valid) in enumerate(StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(30), old_strata)):
            old_fold[valid] = k
        old = _per_fold(pd.DataFrame({"fold": old_fold}), p)
        assert not _within_one_of_even(old), (seed, old)
        spread_old, spread_new = old.max(0) - old.min(0), new.max(0) - new.min(0)
        assert spread_old.max() >= 2 and spread_new.max() <= 1


def test_binary_keeps_empty_nonempty_strata():
    p = np.array([[i % 3 == 0] for i in range(30)])  # 10 non-empty, 20 empty
    cfg = _cfg("multilabel", 1, {"n_splits": 5})
    binary = config_from_dict({"data": {"task": "binary", "num_classes": 1}, "folds": {"n_splits": 5, "seed": 42}})
    folds = make_folds(_rle_samples(p), binary)
    assert sorted(set(folds["stratum"])) == ["empty", "nonempty"]
    assert _per_fold(folds, p).tolist() == [[2, 4]] * 5
    assert presence_columns(binary) == ["foreground", "empty"] and presence_columns(cfg) == ["class_1", "empty"]


def test_class_presence_of_label_maps_skips_background_and_void(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[0, 0], m[1, 1], m[2, 2] = 2, 255, 3  # classes 2 and 3, one void pixel
    Image.fromarray(m).save(tmp_path / "a.png")
    Image.fromarray(np.where(np.arange(36).reshape(6, 6) % 2, 255, 0).astype(np.uint8)).save(tmp_path / "b.png")
    mc = _cfg("multiclass", 4, ignore_index=255)
    assert class_presence(Sample("a", tmp_path / "x", mask=tmp_path / "a.png"), mc).tolist() == [False, True, True]
    assert class_presence(Sample("b", tmp_path / "x", mask=tmp_path / "b.png"), mc).tolist() == [False, False, False]
    binary = config_from_dict({"data": {"task": "binary", "layout": "folder", "ignore_index": 255}})
    assert class_presence(Sample("b", tmp_path / "x", mask=tmp_path / "b.png"), binary).tolist() == [False]
    assert class_presence(Sample("a", tmp_path / "x", mask=tmp_path / "a.png"), binary).tolist() == [True]
    samples = [Sample(s, tmp_path / "x", mask=tmp_path / f"{s}.png") for s in "ab"]
    assert presence_matrix(samples, mc).tolist() == [[False, True, True, False], [False, False, False, True]]


# ----------------------------------------------------------------------------- StratifiedGroupKFold


def _patients() -> tuple[np.ndarray, list[str]]:
    """20 patients x 3 slices: an organ (class 0) in 15 patients, a tumour (class 1) in 2 slices of 5 patients."""
    rows, groups = [], []
    for pt in range(20):
        for s in range(3):
            rows.append([pt % 4 != 3, pt in (2, 6, 9, 13, 17) and s > 0])
            groups.append(f"p{pt}")
    return np.array(rows), groups


def test_stratified_group_never_splits_a_group_and_balances_the_label():
    p, groups = _patients()
    samples = _rle_samples(p, groups)
    group_spread = []
    for seed in range(10):
        cfg = _cfg("multilabel", 2, {"method": "stratified_group", "seed": seed}, group_column="patient")
        folds = make_folds(samples, cfg)
        assert folds["stratum"].tolist() == groups
        assert folds.groupby("stratum")["fold"].nunique().max() == 1  # no patient in two folds
        per_fold = _per_fold(folds, p)
        # the rarest class present (tumour) labels its patients' slices: one tumour patient per fold
        assert per_fold[:, 1].tolist() == [2] * 5 and per_fold[:, 0].tolist() == [9] * 5, (seed, per_fold)
        plain = make_folds(samples, _cfg("multilabel", 2, {"method": "group", "seed": seed}, group_column="patient"))
        assert plain.groupby("stratum")["fold"].nunique().max() == 1
        tumour = _per_fold(plain, p)[:, 1]
        group_spread.append(int(tumour.max() - tumour.min()))
    assert max(group_spread) >= 2  # GroupKFold alone puts two tumour patients in one fold for some seeds


def test_stratified_group_with_group_pattern_on_label_maps(tmp_path):
    p, groups = _patients()
    samples = _label_map_samples(p, tmp_path / "m")
    samples = [Sample(f"{g}_{s.id}", s.image, mask=s.mask) for g, s in zip(groups, samples)]
    folds = make_folds(samples, _cfg("multiclass", 3, {"method": "stratified_group"}, group_pattern="^(p\\d+)_"))
    assert folds.groupby("stratum")["fold"].nunique().max() == 1 and folds["stratum"].nunique() == 20
    assert _per_fold(folds, p)[:, 1].tolist() == [2] * 5


def test_stratified_group_needs_a_group_source_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"task": "binary"}, "folds": {"method": "stratified_group"}}))
    with pytest.raises(ConfigError, match=r"c.yaml: folds.method: 'stratified_group' needs data.group_column .*group_pattern"):
        load_config(path)
    assert load_config(path, ["data.group_pattern=^(\\w+)_"]).folds.method == "stratified_group"
    with pytest.raises(ConfigError, match=r"folds.method.*stratified_grup.*did you mean 'stratified_group'"):
        load_config(path, ["folds.method=stratified_grup"])


# ----------------------------------------------------------------------------- the balance file


def test_fold_balance_worked_by_hand():
    cfg = _cfg("multilabel", 2, {"n_splits": 2}, class_names=["cat", "dog"])
    #                 cat    dog    (empty)
    p = np.array([[True, False],   # im0, fold 0
                  [True, True],    # im1, fold 1
                  [False, False],  # im2, fold 0: empty
                  [False, True],   # im3, fold 1
                  [False, False]])  # im4, fold 1: empty
    balance = fold_balance(np.array([0, 1, 0, 1, 1]), presence_matrix(_rle_samples(p), cfg), cfg)
    assert balance.to_csv(index=False) == "fold,images,cat,dog,empty\n0,2,1,0,1\n1,3,1,2,1\nall,5,2,2,2\n"


def test_balance_written_once_with_folds_csv_and_old_folds_still_read(tmp_path, caplog):
    p = _presence_table()
    cfg = _cfg("multilabel", 4, class_names=["a", "b", "c", "d"])
    samples = _rle_samples(p)
    run = Run(tmp_path / "runs" / "x")
    with caplog.at_level("INFO", logger="seg_toolkit.data.folds"):
        folds = load_or_make_folds(samples, cfg, run.folds_csv)
    table = caplog.text[caplog.text.index("fold balance"):]
    assert re.search(r"fold\s+images\s+a\s+b\s+c\s+d\s+empty\n", table) and re.search(r"all\s+30\s+18\s+7\s+5\s+3\s+9\n", table)
    on_disk = pd.read_csv(run.fold_balance_csv, dtype={"fold": str})
    expected = _per_fold(folds, p)
    assert on_disk.columns.tolist() == ["fold", "images", "a", "b", "c", "d", "empty"]
    assert on_disk["fold"].tolist() == ["0", "1", "2", "3", "4", "all"]
    assert on_disk.iloc[:5, 2:].to_numpy().tolist() == expected.tolist()
    assert on_disk.iloc[:5]["images"].tolist() == np.bincount(folds["fold"], minlength=5).tolist()
    assert on_disk.iloc[5, 1:].tolist() == [30, 18, 7, 5, 3, 9]
    assert read_folds(run.folds_csv).columns.tolist() == ["id", "fold", "stratum"]  # format unchanged
    assert run.foreign_entries() == []  # the run knows its new file (--overwrite may delete it)

    # written once: reading the folds again rewrites neither file
    run.fold_balance_csv.write_text("kept\n")
    again = load_or_make_folds(samples, cfg, run.folds_csv)
    assert again["fold"].tolist() == folds["fold"].tolist() and run.fold_balance_csv.read_text() == "kept\n"

    # a folds.csv from before (no balance file beside it) is read as it is
    old = Run(tmp_path / "runs" / "old")
    old.dir.mkdir(parents=True)
    old.folds_csv.write_text("id,fold,stratum\n" + "".join(f"im{i},{i % 5},class_0\n" for i in range(30)))
    assert load_or_make_folds(samples, cfg, old.folds_csv)["fold"].tolist() == [i % 5 for i in range(30)]
    assert not old.fold_balance_csv.exists()

    # folds written elsewhere than a run's folds.csv: logged, no balance file beside them
    load_or_make_folds(samples, cfg, tmp_path / "elsewhere" / "my_folds.csv")
    assert sorted(q.name for q in (tmp_path / "elsewhere").iterdir()) == ["my_folds.csv"]


def test_a_folds_csv_made_with_other_settings_is_refused(tmp_path):
    """lr-find writes the run's folds.csv (no config.yaml yet); a later `train --set folds.method=group` reused it:
    groups split across folds, the CV leaking, the saved config saying group."""
    from seg_toolkit.data import DataError
    from seg_toolkit.data.folds import load_or_make_folds

    p = np.array([[i % 3 == 0, i % 4 == 0, i % 5 == 0, False] for i in range(30)])
    samples = _rle_samples(p, groups=[f"g{i // 3}" for i in range(30)])
    run = Run(tmp_path / "runs" / "x")
    first = load_or_make_folds(samples, _cfg("multilabel", 4), run.folds_csv)
    assert json.loads(run.folds_json.read_text()) == {"n_splits": 5, "method": "stratified", "seed": 42,
                                                      "group_column": None, "group_pattern": None,
                                                      "labels": labels_fingerprint(samples)}
    assert load_or_make_folds(samples, _cfg("multilabel", 4), run.folds_csv).equals(first)  # same settings: reused
    with pytest.raises(DataError, match=r"folds.csv was made with other fold settings \(method: 'stratified' -> 'group'; "
                                        r"group_pattern: None -> '\^\(g.*\); reusing it would not be the split"):
        load_or_make_folds(samples, _cfg("multilabel", 4, {"method": "group"}, group_pattern=r"^(g\d+)"), run.folds_csv)
    with pytest.raises(DataError, match=r"\(seed: 42 -> 7\)"):
        load_or_make_folds(samples, _cfg("multilabel", 4, {"seed": 7}), run.folds_csv)
    # the same ids with one image's labels edited between folds of the run: fold 0 learned the old ones, and cv.json
    # scored it against the new
    edited = [dataclasses.replace(samples[0], rles=tuple("1 1" for _ in samples[0].rles))] + samples[1:]
    with pytest.raises(DataError, match=r"folds\.csv was made from other training labels than these"):
        load_or_make_folds(edited, _cfg("multilabel", 4), run.folds_csv)
    assert load_or_make_folds(samples, _cfg("multilabel", 4), run.folds_csv).equals(first)


def test_the_labels_fingerprint_sees_an_edited_mask_not_a_moved_folder(tmp_path):
    import shutil

    from seg_toolkit.data.sample import Sample

    def samples(root):
        return [Sample(k, root / f"{k}.png", mask=root / "masks" / f"{k}.png") for k in ("a", "b")]

    (tmp_path / "d" / "masks").mkdir(parents=True)
    for k, n in (("a", 10), ("b", 20)):
        (tmp_path / "d" / "masks" / f"{k}.png").write_bytes(b"m" * n)
    before = labels_fingerprint(samples(tmp_path / "d"))
    shutil.copytree(tmp_path / "d", tmp_path / "moved")
    assert labels_fingerprint(samples(tmp_path / "moved")) == before  # names and sizes, not paths or times
    (tmp_path / "moved" / "masks" / "b.png").write_bytes(b"m" * 21)  # saved again with another content
    assert labels_fingerprint(samples(tmp_path / "moved")) != before
    rle = [Sample("a", tmp_path / "a.png", rles=("1 2", ""))]
    assert labels_fingerprint(rle) != labels_fingerprint([Sample("a", tmp_path / "a.png", rles=("1 2", "3 1"))])


def test_a_rare_label_is_spread_over_the_folds_not_merged():
    """Two empty masks among 20, five folds: the pool of rare labels was merged into the biggest label, which left
    binary folds unstratified (both empties in one fold for 23 of 200 seeds); now each goes to its own fold."""
    from types import SimpleNamespace

    from seg_toolkit.data.folds import _stratified_binary

    labels = ["salt"] * 18 + ["empty"] * 2
    for seed in range(50):
        fold = _stratified_binary(labels, SimpleNamespace(n_splits=5, seed=seed))
        assert fold[18] != fold[19], seed
        assert sorted(np.bincount(fold).tolist()) == [4] * 5


def test_a_group_pattern_whose_group_can_match_nothing_is_refused(tmp_path):
    """``^(?:patient(\\d+)_)?``: ids without the prefix matched with an empty group, and str(None) made them all one
    group 'None'."""
    from seg_toolkit.data import DataError
    from seg_toolkit.data.folds import sample_group
    from seg_toolkit.data.sample import Sample

    cfg = config_from_dict({"data": {"group_pattern": r"^(?:patient(\d+)_)?"}, "folds": {"method": "group"}})
    assert sample_group(Sample("patient7_a", tmp_path / "x.png", where="train.csv line 2"), cfg) == "7"
    with pytest.raises(DataError, match=r"train.csv line 3: data.group_pattern .* matches id 'scan1' but its first "
                                        r"group is empty"):
        sample_group(Sample("scan1", tmp_path / "y.png", where="train.csv line 3"), cfg)
