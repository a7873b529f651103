"""bench/holdout_split.py: a stratified labelled held-out split of a csv-layout competition, as symlinks."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from seg_toolkit.config import load_config
from seg_toolkit.data import load_train_samples

from .conftest import demo_dict

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "holdout_split.py"


def _script():
    spec = importlib.util.spec_from_file_location("_holdout_split", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(demo_root: Path, tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(demo_dict(demo_root, tmp_path / "runs")))
    return path


def test_split_is_stratified_disjoint_and_readable(demo_root, tmp_path):
    demo_root = Path(shutil.copytree(demo_root, tmp_path / "demo"))  # the fixture is shared: edit a copy
    # the demo's 12 images made 4 empty (every third: all three class rows emptied) and 8 not (class 1 gets
    # pixels 1-5 where the demo drew none)
    rows = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    ids = sorted(rows["ImageId"].unique())
    empty = set(ids[::3])
    rows.loc[rows["ImageId"].isin(empty), "EncodedPixels"] = ""
    fill = ~rows["ImageId"].isin(empty) & (rows["ClassId"] == "1") & (rows["EncodedPixels"] == "")
    rows.loc[fill, "EncodedPixels"] = "1 5"
    rows.to_csv(demo_root / "train.csv", index=False)
    cfg_path = _config(demo_root, tmp_path)
    out = tmp_path / "split"
    n_train, n_held = _script().split(str(cfg_path), out, 0.25, 0, [])
    assert (n_train, n_held) == (9, 3)
    kept = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    held = pd.read_csv(out / "holdout" / "train.csv", dtype=str, keep_default_na=False)
    kept_ids, held_ids = set(kept["ImageId"]), set(held["ImageId"])
    assert kept_ids.isdisjoint(held_ids) and kept_ids | held_ids == set(ids)
    assert len(held_ids & empty) == 1  # 1 of 3 held out is empty, as 4 of 12 overall
    assert len(kept) + len(held) == len(rows) and len(held) == 3 * 3  # every class row of an id goes with it
    for folder, want in ((out, kept_ids), (out / "holdout", held_ids)):
        links = sorted((folder / "train" / "images").iterdir())
        assert {p.stem for p in links} == want
        assert all(p.is_symlink() and p.resolve() == (demo_root / "train" / "images" / p.name).resolve() for p in links)
    assert (out / "test").is_symlink() and (out / "sample_submission.csv").is_symlink()
    cfg = load_config(cfg_path)
    for folder, want in ((out, kept_ids), (out / "holdout", held_ids)):
        samples = load_train_samples(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(folder))))
        assert {s.id for s in samples} == want
    assert (demo_root / "train" / "images").is_dir() and len(list((demo_root / "train" / "images").iterdir())) == 12


def test_refuses_an_existing_folder(demo_root, tmp_path):
    cfg_path = _config(demo_root, tmp_path)
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit, match="taken: exists"):
        _script().split(str(cfg_path), tmp_path / "taken", 0.25, 0, [])
    assert not any((tmp_path / "taken").iterdir())
