"""End to end on generated data: K-fold training -> OOF -> cv.json -> submission CSV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.config import config_from_dict
from seg_toolkit.cv import RunExistsError, compute_cv, run_cv
from seg_toolkit.data.io import image_size
from seg_toolkit.inference import predict_test
from seg_toolkit.rle import rle_decode
from seg_toolkit.run import Run
from seg_toolkit.submission_check import check_submission

from .conftest import demo_dict


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = config_from_dict(demo_dict(demo_root, runs))
    cv = run_cv(cfg)
    return cfg, cv


def test_cv_json_and_fold_files(trained):
    cfg, cv = trained
    run = Run.of(cfg)
    assert cv["metric"] == "dice" and 0.0 <= cv["score"] <= 1.0
    assert cv["folds"] == [0, 1] and cv["n_images"] == 12
    assert cv["oof"] == {"tta": ["identity"], "merge": "mean_prob", "scales": [1.0], "tile_size": None}
    assert json.loads(run.cv_json.read_text())["score"] == pytest.approx(cv["score"])
    folds = pd.read_csv(run.folds_csv, dtype={"id": str})
    assert sorted(p.stem for p in run.oof_dir.iterdir()) == sorted(folds.id)  # one OOF file per training id
    for k in (0, 1):
        assert {"best.pt", "last.pt", "metrics.csv", "done.json"} <= {p.name for p in run.fold_dir(k).iterdir()}
        ids = sorted(folds[folds.fold == k].id)
        q = np.load(run.oof_path(ids[0]))
        assert q.dtype == np.uint8 and q.shape == (3, 48, 64)
    metrics = pd.read_csv(run.metrics_csv(0))
    assert list(metrics.epoch) == [1] and {"train_bce", "train_dice", "val_loss", "val_score", "lr"} <= set(metrics.columns)


def test_cv_score_recomputed_from_oof_files(trained):
    cfg, cv = trained
    again = compute_cv(cfg, cfg.run_dir)
    assert again["score"] == pytest.approx(cv["score"])


def test_submission_rows_are_the_predictors_probabilities_thresholded_as_tuned(demo_root, tmp_path):
    """Every row decodes to the run's predictor's probabilities (two folds averaged), on the OOF 1/255 grid, at
    postprocess.json's per-class thresholds: worked out here with NumPy from the predictor's output, not with the
    submission code. Random-weight folds (one trained epoch leaves every probability within 1/255 of 0.5)."""
    from seg_toolkit.data import load_test_samples
    from seg_toolkit.files import write_json
    from seg_toolkit.predictor import Predictor

    from .test_inference import fake_run

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs"))
    fake_run(cfg, seeds=(1, 2))
    run = Run.of(cfg)
    # these folds predict about 0.54, 0.50 and 0.54 (+- 0.005) for the three classes. On the 1/255 grid: 0.543 -> stored
    # value >= 139 (138.465 of 255), 0.5 -> >= 128 (127.5), 0.54 -> >= 138 (137.7): none sits on a threshold
    write_json(run.postprocess_json, {"params": {"threshold": [0.543, 0.5, 0.54], "min_area": [0, 0, 0],
                                                 "empty_gate": [None, None, None]}})
    out = predict_test(cfg)
    sample = pd.read_csv(demo_root / "sample_submission.csv", dtype=str, keep_default_na=False)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sub.columns) == list(sample.columns) and sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    assert check_submission(out, demo_root / "sample_submission.csv") == []
    rows = dict(zip(sub.iloc[:, 0], sub.iloc[:, 1]))
    cut = np.array([139, 128, 138])[:, None, None]
    fractions = []
    for image_id, probs, _ in Predictor.from_run(run).iter_probs(load_test_samples(cfg)):
        want = np.rint(np.clip(probs.numpy(), 0, 1) * 255) >= cut  # (3, H, W)
        hw = image_size(demo_root / "test/images" / f"{image_id}.png")
        assert want.shape == (3, *hw)
        for c in range(3):
            got = rle_decode(rows.pop(f"{image_id}_{c + 1}"), hw, "F")  # column-major, 1-based runs
            assert np.array_equal(got.astype(bool), want[c]), (image_id, c)
            fractions.append(want[c].mean())
    assert rows == {}  # every row checked
    # the check has teeth: every image's every class mask is partly set (a class swap or a wrong threshold shows)
    assert 0 < min(fractions) and max(fractions) < 1


def test_second_train_refuses_without_resume_or_overwrite(trained):
    cfg, _ = trained
    with pytest.raises(RunExistsError, match=r"fold\(s\) \[0, 1\] already have files; use --resume"):
        run_cv(cfg)


def test_resume_keeps_finished_folds(trained):
    cfg, cv = trained
    stamp = (cfg.run_dir / "fold_0" / "done.json").stat().st_mtime_ns
    again = run_cv(cfg, resume=True)
    assert (cfg.run_dir / "fold_0" / "done.json").stat().st_mtime_ns == stamp
    assert again["score"] == pytest.approx(cv["score"])


def test_resume_may_change_the_time_budget(trained):
    cfg, cv = trained
    data = demo_dict(cfg.data.root, cfg.run_dir.parent)
    more_time = config_from_dict({**data, "train": {**data["train"], "time_budget": "1h"}})
    assert run_cv(more_time, resume=True)["score"] == pytest.approx(cv["score"])  # finished folds stay finished


def test_resume_after_a_stopped_oof_rewrite_names_it(trained, tmp_path):
    """`oof --set predict.tta=[identity]` killed half-way saved its settings first: `train --resume` then said the folds
    'made their OOF files with other predict settings', which most had not; it names the rewrite to finish."""
    import dataclasses
    import shutil

    from seg_toolkit.errors import SegToolkitError
    from seg_toolkit.oof import mark_oof_rewrite

    cfg, _ = trained
    copy = dataclasses.replace(cfg, runs_dir=str(tmp_path / "runs"))
    shutil.copytree(cfg.run_dir, copy.run_dir)
    mark_oof_rewrite(Run.of(copy), f"seg-toolkit oof {copy.run_dir}")
    from seg_toolkit.config import load_config, save_config

    saved = load_config(Run.of(copy).config_yaml)  # oof saves its settings before it rewrites the files
    save_config(dataclasses.replace(saved, predict=dataclasses.replace(saved.predict, tta=["hflip"])), Run.of(copy).config_yaml)
    with pytest.raises(SegToolkitError, match=rf"its OOF files were being rewritten by `seg-toolkit oof {copy.run_dir}`"):
        run_cv(copy, resume=True)


def _refuse(name):
    raise AssertionError(f"{name} is not standard JSON")


def test_write_json_writes_standard_json(tmp_path):
    from seg_toolkit.files import nan_if_null, read_json, write_json
    path = write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.5, np.float32("inf"), -np.inf],
                                            "c": np.array([np.nan, 2.0]), "d": (np.int64(3), np.bool_(True)),
                                            "e": {"f": np.float64(0.25), np.int64(2): 1}, "g": None})
    data = json.loads(path.read_text(), parse_constant=_refuse)
    assert data == {"a": None, "b": [1.5, None, None], "c": [None, 2.0], "d": [3, True], "e": {"f": 0.25, "2": 1}, "g": None}
    assert read_json(path) == data and np.isnan(nan_if_null(data["a"])) and nan_if_null(data["e"]["f"]) == 0.25


def test_a_folds_only_run_is_tuned_when_its_folds_end_and_a_fold_job_is_not(demo_root, tmp_path):
    # folds.only: [1] of 3 is the whole run (fold 1's 4 OOF images tune it); a `--fold 0` job of a
    # 3-fold array is a third of one, whose last job tunes
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "a", folds={"n_splits": 3, "only": [1]}))
    cv = run_cv(cfg)
    tuned = json.loads(Run.of(cfg).postprocess_json.read_text())
    assert cv["folds"] == [1] and cv["n_images"] == 4
    assert tuned["folds"] == [1] and tuned["n_images"] == 4 and cv["postprocess"]["after"] == tuned["after"]
    job = config_from_dict(demo_dict(demo_root, tmp_path / "b", folds={"n_splits": 3}))
    cv = run_cv(job, folds=[0])
    assert cv["folds"] == [0] and "postprocess" not in cv and not Run.of(job).postprocess_json.exists()
    # fold 0's 4 images hold no rectangle and none is predicted: its IoU is undefined, NaN in memory and null on disk
    # (standard JSON, which JavaScript's JSON.parse reads; Python's json wrote a bare NaN)
    written = Run.of(job).cv_json.read_text()
    assert np.isnan(cv["per_class_iou"][1]) and json.loads(written, parse_constant=_refuse)["per_class_iou"][1] is None
    from seg_toolkit.report.summary import read_oof_summary
    assert np.isnan(read_oof_summary(Run.of(job))["per_class_iou"][1])  # read back as NaN for the report


def test_changed_config_is_refused(trained):
    cfg, _ = trained
    changed = config_from_dict({**demo_dict(cfg.data.root, cfg.run_dir.parent), "optim": {"lr": 0.5}})
    with pytest.raises(RunExistsError, match=r"different config \(optim.lr: 0.001 -> 0.5\)"):
        run_cv(changed, resume=True)


def test_submission_refused_when_ids_differ(tmp_path):
    from seg_toolkit.submission import SubmissionError, SubmissionWriter

    out = tmp_path / "sub.csv"
    out.write_text("previous\n")
    with pytest.raises(SubmissionError, match="row 2: id 'b' where the sample has 'c'"):
        with SubmissionWriter(out, ("id", "rle"), ["a", "c"]) as w:
            w.write([("a", ""), ("b", "1 1")])
    assert out.read_text() == "previous\n"  # the earlier file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temporary left behind


def test_predict_refuses_to_replace_a_submission(trained):
    cfg, _ = trained
    out = cfg.run_dir.parent / "kept.csv"
    out.write_text("my earlier submission\n")
    with pytest.raises(FileExistsError, match="kept.csv exists; pass --overwrite"):
        predict_test(cfg, out=out)
    assert out.read_text() == "my earlier submission\n"
    assert predict_test(cfg, out=out, overwrite=True) == out and out.read_text().startswith("ImageId_ClassId,")


# ----------------------------------------------------------------------------- data.exclude_ids


def test_excluded_ids_are_in_no_fold_no_oof_and_no_score(demo_root, tmp_path):
    from seg_toolkit.data import load_train_samples

    everything = [s.id for s in load_train_samples(config_from_dict(demo_dict(demo_root, tmp_path / "all")))]
    bad = everything[3:5]
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", data={"exclude_ids": bad}))
    assert [s.id for s in load_train_samples(cfg)] == [i for i in everything if i not in bad]  # file order kept
    cv = run_cv(cfg)
    run = Run.of(cfg)
    folds = pd.read_csv(run.folds_csv, dtype={"id": str})
    assert len(everything) == 12 and cv["n_images"] == 10 and sorted(folds.id) == sorted(set(everything) - set(bad))
    assert sorted(p.stem for p in run.oof_dir.iterdir()) == sorted(folds.id)
    assert json.loads(run.postprocess_json.read_text())["n_images"] == 10  # tuned on the 10 as well
    # the same run without the exclusion is other data: refused, never silently re-folded
    whole = config_from_dict(demo_dict(demo_root, tmp_path / "runs"))
    with pytest.raises(RunExistsError, match="data.exclude_ids"):
        run_cv(whole, resume=True)


def test_an_excluded_id_that_is_not_a_training_id_is_named(demo_root, tmp_path):
    from seg_toolkit.audit import audit
    from seg_toolkit.config import ConfigError
    from seg_toolkit.data import load_train_samples

    first = load_train_samples(config_from_dict(demo_dict(demo_root, tmp_path)))[0].id
    typo = first[:-1] + ("x" if first[-1] != "x" else "y")
    cfg = config_from_dict(demo_dict(demo_root, tmp_path, data={"exclude_ids": [first, typo]}))
    with pytest.raises(ConfigError, match=rf"data.exclude_ids: '{typo}' is not one of the 12 training ids; did you mean '{first}'\?"):
        load_train_samples(cfg)
    problems = audit(cfg, decode_images=False).problems  # the audit lists it with everything else
    assert [(p.kind, p.where) for p in problems] == [("config", "data.exclude_ids")]


@pytest.mark.parametrize("ids, message", [
    (["a", "b", "a"], "data.exclude_ids: listed more than once: 'a'"),
    (["a", ""], r"data.exclude_ids\[1\]: expected a training id \(a non-empty string\), got ''"),
])
def test_exclude_ids_checked_when_the_config_loads(demo_root, tmp_path, ids, message):
    from seg_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        config_from_dict(demo_dict(demo_root, tmp_path, data={"exclude_ids": ids}))
