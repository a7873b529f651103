"""``train.empty_share``: each epoch trains on every image with foreground and a fresh draw of empty ones, as many as
make that share of the epoch (Airbus, SIIM, Severstal: most images empty). Validation, OOF and CV keep every image."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data import EpochSampler

from .conftest import demo_dict

EMPTY = np.array([False] * 5 + [True] * 5)  # images 0..4 with foreground, 5..9 without


def test_each_epoch_holds_every_image_with_foreground_and_its_share_of_empty_ones():
    s = EpochSampler(10, shuffle=True, seed=3, empty=EMPTY, empty_share=0.2)
    assert len(s) == 7  # 5 kept + ceil(0.2 / 0.8 * 5) = 2 empty: at least the share
    drawn = set()
    for epoch in range(12):
        s.set_epoch(epoch)
        ids = [i for i, _ in s]
        assert sorted(ids[:]) == sorted(set(ids)) and set(range(5)) <= set(ids) and len(ids) == 7
        drawn |= set(ids) - set(range(5))
        s.set_epoch(epoch)
        assert [i for i, _ in s] == ids  # the same epoch, the same images, order and seeds
    assert drawn == set(range(5, 10))  # every empty image gets its turn over the epochs
    # share 0: no empty image; a small share of a few images still one (round() drew none: 0.1 of 4); more than
    # there are: all of them
    assert len(EpochSampler(10, True, 3, empty=EMPTY, empty_share=0.0)) == 5
    assert len(EpochSampler(6, True, 3, empty=np.array([False] * 4 + [True] * 2), empty_share=0.1)) == 5
    assert len(EpochSampler(10, True, 3, empty=EMPTY, empty_share=0.9)) == 10
    # ranks split the epoch's draw, disjoint, padded as DistributedSampler pads
    ranks = [EpochSampler(10, True, 3, rank=r, world_size=4, empty=EMPTY, empty_share=0.2) for r in range(4)]
    shares = [[i for i, _ in r] for r in ranks]
    assert [len(x) for x in shares] == [2, 2, 2, 2] and set(range(5)) <= {i for x in shares for i in x}


def test_without_a_share_the_epochs_are_as_before():
    """The draws for the share come after nothing else: off, the order and augmentation seeds are the old ones."""
    s = EpochSampler(7, shuffle=True, seed=5)
    s.set_epoch(2)
    g = torch.Generator().manual_seed(5 * 100_003 + 2)
    order = torch.randperm(7, generator=g)
    seeds = torch.randint(0, 2**31 - 1, (7,), generator=g)
    assert list(s) == [(i, int(seeds[i])) for i in order.tolist()]


def test_a_run_trains_on_the_share_and_scores_every_image(demo_root, tmp_path, caplog):
    train = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    with_fg = set(train.ImageId[train.EncodedPixels != ""])
    n_empty = len(set(train.ImageId)) - len(with_fg)
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2, "empty_share": 0.5}))
    with caplog.at_level(logging.INFO, logger="seg_toolkit.train"):
        cv = run_cv(cfg)
    assert n_empty > 0, "the demo has empty images"
    folds = pd.read_csv(tmp_path / "runs" / "t" / "folds.csv", dtype=str)
    expected = []
    for k in ("0", "1"):
        ids = set(folds.id[folds.fold != k])
        kept, empty = len(ids & with_fg), len(ids - with_fg)
        expected.append(f"train.empty_share 0.5: each epoch {kept} image(s) with foreground and {min(kept, empty)} of "
                        f"the {empty} empty one(s)" + (" (all of them: fewer than the share asks)" if empty < kept else ""))
    lines = [r.getMessage() for r in caplog.records if "train.empty_share" in r.getMessage()]
    assert lines == expected  # once per fold (not again for checkpoint averaging's pass)
    for k, line in zip((0, 1), lines):  # done.json counts both: the training set, and the images each epoch saw
        done = json.loads((tmp_path / "runs" / "t" / f"fold_{k}" / "done.json").read_text())
        kept, drawn = int(line.split("epoch ")[1].split(" ")[0]), int(line.split(" and ")[1].split(" ")[0])
        assert done["n_train"] == 6 and done["n_train_per_epoch"] == kept + drawn
    assert cv["n_images"] == 12  # every image validated and scored


def test_checked_at_load(demo_root, tmp_path):
    with pytest.raises(ConfigError, match=r"train.empty_share: expected a share of each epoch in \[0, 1\)"):
        config_from_dict(demo_dict(demo_root, tmp_path, train={"empty_share": 1.0}))
    with pytest.raises(ConfigError, match="train.empty_share: draws images without foreground for binary and multilabel"):
        config_from_dict({"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "folder"},
                          "folds": {"n_splits": 2}, "loss": {"ce": 1.0}, "submission": {"per_class": True},
                          "train": {"empty_share": 0.2}})
