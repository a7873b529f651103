"""Pseudo-labelling: confidence filter, labels = the teacher's submitted masks, fold isolation, honest CV."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data.masks import train_rle_spec
from seg_toolkit.data.sources import load_test_samples
from seg_toolkit.postprocess import apply_postprocess, load_params
from seg_toolkit.predictor import Predictor
from seg_toolkit.pseudo import confident_fraction
from seg_toolkit.run import Run

from .conftest import demo_dict

FOLDS = {"n_splits": 2, "method": "kfold", "seed": 0}


def test_confident_fraction_by_hand():
    probs = np.array([[[0.95, 0.5], [0.02, 0.91]], [[0.99, 0.99], [0.05, 0.2]]])  # 2 classes, 2x2
    # pixel confident when every class is >= 0.9 or <= 0.1: (0,0) yes; (0,1) no (0.5); (1,0) yes; (1,1) no (0.2)
    assert confident_fraction(probs, "multilabel", 0.9) == 0.5
    mc = np.array([[[0.95, 0.4]], [[0.05, 0.6]]])  # multiclass: max >= 0.9 at the first pixel only
    assert confident_fraction(mc, "multiclass", 0.9) == 0.5


@pytest.fixture(scope="module")
def teacher(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("pseudo") / "runs"
    cfg = config_from_dict(demo_dict(demo_root, runs, experiment="teacher", folds=FOLDS, train={"epochs": 1, "batch_size": 2}))
    run_cv(cfg)
    return runs


def _student(demo_root, runs, name, **pseudo):
    return config_from_dict(demo_dict(demo_root, runs, experiment=name, folds=FOLDS, train={"epochs": 1, "batch_size": 2},
                                      pseudo={"teacher": str(runs / "teacher"), "confidence": 0.5,
                                              "min_confident_fraction": 0.0, **pseudo}))


def test_per_fold_labels_are_the_teachers_fold_k_masks_and_never_validated(demo_root, teacher):
    cfg = _student(demo_root, teacher, "student")
    cv = run_cv(cfg)
    run, trun = Run.of(cfg), Run(teacher / "teacher")
    tests = load_test_samples(cfg)
    spec, params = train_rle_spec(cfg), load_params(trun.config(), trun)
    predictor = Predictor.from_run(trun)
    for k in (0, 1):
        df = pd.read_csv(run.pseudo_csv(k), dtype=str, keep_default_na=False)
        assert sorted(df["id"]) == sorted(s.id for s in tests)  # confidence 0.5: every image passes
        expected = {i: apply_postprocess(p.numpy(), "multilabel", params) for i, p, _ in predictor.iter_probs(tests, fold=k)}
        for _, row in df.iterrows():
            mask = expected[row["id"]]
            for c in range(3):
                assert np.array_equal(spec.decode(row[f"rle_{c}"], mask.shape[1:]), mask[c]), (k, row["id"], c)
        done = json.loads(run.done_json(k).read_text())
        assert done["n_pseudo"] == len(tests) and done["n_train"] == 6 + len(tests) and done["n_valid"] == 6
        assert done["pseudo"]["leaky"] is False
    # OOF (and so CV) holds the 12 labelled images only
    assert cv["n_images"] == 12 and not any(p.stem.startswith("pseudo_") for p in run.oof_dir.glob("*.npy"))
    assert cv["pseudo"]["per_fold"] is True


def test_folds_that_differ_from_the_teachers_are_refused(demo_root, teacher):
    cfg = config_from_dict({**demo_dict(demo_root, teacher, experiment="other", train={"epochs": 1, "batch_size": 2},
                                        pseudo={"teacher": str(teacher / "teacher")}),
                            "folds": {"n_splits": 2, "method": "kfold", "seed": 5}})
    with pytest.raises(ConfigError, match="pseudo.teacher: .* in another fold"):
        run_cv(cfg)


def test_filter_and_cap(demo_root, teacher):
    cfg = _student(demo_root, teacher, "capped", max_images=2, confidence=0.6)
    run_cv(cfg, folds=[0])
    df = pd.read_csv(Run.of(cfg).pseudo_csv(0))
    assert len(df) <= 2 and df["confident_fraction"].is_monotonic_decreasing
    strict = _student(demo_root, teacher, "strict", confidence=1.0, min_confident_fraction=1.0)
    run_cv(strict, folds=[0])  # nothing is that sure: no pseudo images, training goes on
    assert len(pd.read_csv(Run.of(strict).pseudo_csv(0))) == 0


def test_shared_labels_are_reported_as_leaky(demo_root, teacher, caplog):
    cfg = _student(demo_root, teacher, "leaky", per_fold=False)
    with caplog.at_level(logging.WARNING):
        cv = run_cv(cfg)
    assert Run.of(cfg).pseudo_csv(None).is_file() and not Run.of(cfg).pseudo_csv(0).exists()
    assert cv["pseudo"]["leaky"] is True
    assert any("CV is optimistic" in r.message for r in caplog.records)


def test_checks(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="pseudo.confidence"):
        config_from_dict(demo_dict(demo_root, tmp_path, pseudo={"teacher": "x", "confidence": 0.3}))
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", pseudo={"teacher": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match="pseudo.teacher: .* is not a run folder"):
        run_cv(cfg)
    assert not (tmp_path / "runs").exists()  # refused before anything was written
