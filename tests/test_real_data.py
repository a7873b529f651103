"""Small slices of the real datasets in ../shared/data, end to end (skipped when the folder is absent).

Each runs 2 folds x 1 epoch of a tiny model on a handful of images: the point is that the
configs shipped in configs/ read the real files and every command completes with output in
the competition's exact format, not the score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.config import load_config
from seg_toolkit.cv import run_cv
from seg_toolkit.evaluate import evaluate_split
from seg_toolkit.inference import predict_test
from seg_toolkit.submission_check import check_submission

from .conftest import SHARED_DATA, shared_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["folds.n_splits=2", "train.epochs=1", "train.num_workers=0",
        # the configs' Unet on the offline ImageNet efficientnet_lite0 (tests/test_weights_order.py loads those
        # weights), with timm's test-sized EfficientNet instead: the data and formats are what is tested here
        "model.encoder=tu-test_efficientnet", "model.encoder_weights=null", "model.encoder_weights_map=names"]


def test_tgs_slice_train_tune_predict_submission(tmp_path):
    root = shared_dataset("tgs_salt")
    sub = tmp_path / "tgs.csv"
    cfg = load_config(CONFIGS / "tgs_cpu.yaml", TINY + [f"data.root={root}", f"runs_dir={tmp_path}", "data.limit=24",
                                                       f"submission.path={sub}", "predict.batch_size=250"])
    cv = run_cv(cfg)
    assert cv["metric"] == "tgs_map" and cv["n_images"] == 24
    tuned = json.loads((cfg.run_dir / "postprocess.json").read_text())
    assert tuned["after"] >= tuned["before"]
    out = predict_test(cfg)
    assert check_submission(out, root / "sample_submission.csv") == []
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(got) == 1000 and list(got.columns) == ["id", "rle_mask"]


def test_camvid_slice_train_and_evaluate_held_out(tmp_path):
    root = shared_dataset("camvid")
    cfg = load_config(CONFIGS / "camvid_cpu.yaml", TINY + [f"data.root={root}", f"runs_dir={tmp_path}", "data.limit=8",
                                                          "transforms.resize=[88, 120]", "data.test_lists=[test.txt]"])
    cv = run_cv(cfg)
    assert cv["metric"] == "miou" and cv["n_images"] == 8
    assert len(cv["per_class_iou"]) == 11  # void (11) is not a class
    result = evaluate_split(cfg)
    assert result["n_images"] == 59 and 0.0 <= result["score"] <= 1.0
    assert 0.0 < result["pixel_accuracy"] <= 1.0
    assert (cfg.run_dir / "evaluate_test.json").is_file()


def test_dsb_objects_train_tune_predict_score(tmp_path):
    """configs/dsb_cpu.yaml on the 11 DSB stage-1 images: CV, tune and the submission scored as objects, the
    submission's rows checked and graded against the official solution rows."""
    from seg_toolkit.rle import RLESpec
    from seg_toolkit.submission_score import score_submission

    root = shared_dataset("dsb2018_stage1_test")
    sub = tmp_path / "dsb.csv"
    cfg = load_config(CONFIGS / "dsb_cpu.yaml", TINY + [f"data.root={root}", f"runs_dir={tmp_path}", f"submission.path={sub}"])
    cv = run_cv(cfg)
    assert cv["metric"] == "instance_map" and cv["n_images"] == 11 and 0.0 <= cv["score"] <= 1.0
    tuned = json.loads((cfg.run_dir / "postprocess.json").read_text())
    assert tuned["metric"] == "instance_map" and tuned["after"] >= tuned["before"]
    out = predict_test(cfg)
    sample = tmp_path / "sample.csv"
    solution = pd.read_csv(root / "stage1_solution_subset.csv", dtype=str, keep_default_na=False)
    ids = list(dict.fromkeys(solution["ImageId"]))
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got.columns) == ["ImageId", "EncodedPixels"]  # stage 1's header (no sample file to read it from)
    assert list(dict.fromkeys(got["ImageId"])) == sorted(ids)  # no sample submission: file-name order
    sample.write_text("ImageId,EncodedPixels\n" + "".join(f"{i},\n" for i in sorted(ids)))
    assert check_submission(out, sample, spec=RLESpec(order="F", instances=True)) == []
    answers = tmp_path / "solution.csv"
    solution[["ImageId", "EncodedPixels"]].to_csv(answers, index=False)
    assert score_submission(answers, answers, cfg) == 1.0
    assert 0.0 <= score_submission(out, answers, cfg) < 1.0


def test_camvid_void_is_mapped_and_ignored():
    root = shared_dataset("camvid")
    from seg_toolkit.data import load_target, load_train_samples

    cfg = load_config(CONFIGS / "camvid_cpu.yaml", [f"data.root={root}", "data.limit=2"])
    s = load_train_samples(cfg)[0]
    raw = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(s.mask))
    target = load_target(s, cfg, raw.shape)
    assert ((raw == 11) == (target == 255)).all() and target[raw != 11].max() <= 10


def test_skip_reason_names_the_folder(monkeypatch):
    from . import conftest

    monkeypatch.setattr(conftest, "SHARED_DATA", SHARED_DATA / "no-such-folder")
    with pytest.raises(pytest.skip.Exception, match="not available: .*no-such-folder/tgs_salt does not exist"):
        conftest.shared_dataset("tgs_salt")
