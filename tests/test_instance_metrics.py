"""Object-matching metrics (``instance_map``: DSB 2018, ``instance_f2``: Airbus) and their wiring through the
Evaluator, CV, tune and ``score_submission``.

Scores are worked out by hand on small label maps, and checked against a brute-force reference written
apart from the toolkit (sets of pixel coordinates, float IoU, every pair compared) on random objects."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from seg_toolkit.config import ConfigError, MetricConfig, config_from_dict
from seg_toolkit.cv import compute_cv
from seg_toolkit.data import load_objects, load_train_samples
from seg_toolkit.data.io import DataError
from seg_toolkit.evaluator import Evaluator
from seg_toolkit.instance_metrics import image_score, label_objects, match_hits, scores_from_hits, stack_objects
from seg_toolkit.rle import rle_encode
from seg_toolkit.run import Run
from seg_toolkit.tune import tune_postprocess

from .conftest import shared_dataset


def reference(truth: np.ndarray, pred_mask: np.ndarray, beta: float | None) -> float:
    """The competitions' definition, written plainly: objects as pixel sets (8-connected components of the
    prediction by flood fill), IoU as a float, a hit when IoU > t; precision TP/(TP+FP+FN) (DSB) or F-beta."""
    h, w = pred_mask.shape
    seen = np.zeros((h, w), bool)
    preds = []
    for y in range(h):
        for x in range(w):
            if pred_mask[y, x] and not seen[y, x]:
                stack, obj = [(y, x)], set()
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    obj.add((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and pred_mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                preds.append(obj)
    truths = [set(zip(*np.nonzero(truth == k))) for k in range(1, int(truth.max()) + 1)]
    truths = [t for t in truths if t]
    if not truths and not preds:
        return 1.0
    out = []
    for t in np.arange(0.5, 1.0, 0.05):
        tp = sum(1 for a in truths for b in preds if len(a & b) / len(a | b) > t)
        fp, fn = len(preds) - tp, len(truths) - tp
        if beta is None:
            out.append(tp / (tp + fp + fn))
        else:
            b2 = beta * beta
            out.append((1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp))
    return float(np.mean(out))


def test_a_hand_worked_image():
    """Truth A (10x6 = 60 px) and B; the prediction covers 36 px of A (IoU exactly 0.6: a hit at 0.50 and 0.55
    only, compared exactly), misses B and adds one object elsewhere."""
    truth = np.zeros((20, 20), np.int32)
    truth[0:10, 0:6] = 1
    truth[14:18, 14:18] = 2
    pred = np.zeros((20, 20), bool)
    pred[0:6, 0:6] = True
    pred[0:3, 10:13] = True
    hits, n_truth, n_pred = match_hits(truth, label_objects(pred)[0])
    assert hits.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0] and (n_truth, n_pred) == (2, 2)
    # DSB: 1 / (1 + 1 + 1) at two thresholds, 0 / (0 + 2 + 2) at eight
    assert image_score(truth, pred, "instance_map") == pytest.approx((2 / 3) / 10, abs=1e-15)
    # Airbus F2: 5 / (5 + 4 + 1) at two thresholds
    assert image_score(truth, pred, "instance_f2") == pytest.approx(1.0 / 10, abs=1e-15)


def test_touching_objects_predicted_as_one_blob_score_nothing():
    """Two touching 3x3 truth objects, predicted perfectly as pixels but as one 8-connected object: IoU 9/18 = 0.5
    with each, not above 0.5: no hit, where per-image pixel dice is 1."""
    truth = np.zeros((5, 8), np.int32)
    truth[1:4, 1:4], truth[1:4, 4:7] = 1, 2
    pred = truth > 0
    assert image_score(truth, pred, "instance_map") == 0.0
    split = pred.copy()
    split[:, 4] = False  # a one-pixel gap: two objects, IoU 9/9 and 6/9 with B
    # B's IoU 6/9 = 0.667 passes 0.50..0.65 (4 thresholds): TP 2 there (1/1), then 1 / (1 + 1 + 1)
    assert image_score(truth, split, "instance_map") == pytest.approx((4 * 1 + 6 * (1 / 3)) / 10, abs=1e-15)


def test_empty_truth_and_empty_prediction():
    empty = np.zeros((6, 6), np.int32)
    blob = np.zeros((6, 6), bool)
    blob[1:3, 1:3] = True
    for metric in ("instance_map", "instance_f2"):
        assert image_score(empty, np.zeros((6, 6), bool), metric) == 1.0
        assert image_score(empty, blob, metric) == 0.0
        assert image_score(blob.astype(np.int32), np.zeros((6, 6), bool), metric) == 0.0


def test_void_pixels_count_in_no_intersection_union_or_object():
    truth = np.zeros((6, 10), np.int32)
    truth[0:2, 0:4] = 1  # 8 px
    pred = np.zeros((6, 10), bool)
    pred[0:2, 0:5] = True  # 10 px: IoU 0.8 with the void column out, 8/10 = 0.8 with it in: same here
    pred[4:6, 7:9] = True  # an object lying wholly on void: not counted
    void = np.zeros((6, 10), bool)
    void[:, 4] = True
    void[4:6, 6:10] = True
    hits, n_truth, n_pred = match_hits(truth, label_objects(pred)[0], void)
    assert (n_truth, n_pred) == (1, 1)
    assert hits.tolist() == [1] * 10  # IoU 8/8 with column 4 void
    assert match_hits(truth, label_objects(pred)[0])[0].tolist() == [1] * 6 + [0] * 4  # 0.8: above 0.50..0.75


def test_label_objects_is_8_connected_and_drops_small_objects():
    m = np.zeros((5, 5), bool)
    m[0, 0] = m[1, 1] = True  # diagonal: one object
    m[3:5, 3:5] = True
    labels, n = label_objects(m)
    assert n == 2 and labels[0, 0] == labels[1, 1]
    labels, n = label_objects(m, min_area=3)
    assert n == 1 and labels[0, 0] == 0 and (labels[3:5, 3:5] == 1).all()


@pytest.mark.parametrize("metric,beta", [("instance_map", None), ("instance_f2", 2.0)])
def test_random_objects_match_the_reference(metric, beta):
    rng = np.random.default_rng(7)
    for _ in range(40):
        truth = np.zeros((24, 24), np.int32)
        for k in range(1, rng.integers(0, 6) + 1):
            y, x = rng.integers(0, 20, size=2)
            h, w = rng.integers(2, 7, size=2)
            truth[y : y + h, x : x + w] = k  # later objects cover earlier ones: some vanish, some are cut
        pred = (truth > 0) ^ (rng.random(truth.shape) < 0.08)
        assert image_score(truth, pred, metric) == pytest.approx(reference(truth, pred, beta), abs=1e-12)


def test_scores_from_hits_by_hand():
    hits = np.array([[3, 3, 2, 2, 1, 1, 0, 0, 0, 0]])
    # 4 predicted, 3 truth objects: DSB tp / (4 + 3 - tp)
    expect = np.mean([3 / 4, 3 / 4, 2 / 5, 2 / 5, 1 / 6, 1 / 6, 0, 0, 0, 0])
    assert scores_from_hits(hits, [4], [3], "instance_map")[0] == pytest.approx(expect, abs=1e-15)
    expect = np.mean([15 / 16, 15 / 16, 10 / 16, 10 / 16, 5 / 16, 5 / 16, 0, 0, 0, 0])  # 5tp / (5tp + 4fn + fp)
    assert scores_from_hits(hits, [4], [3], "instance_f2")[0] == pytest.approx(expect, abs=1e-15)


def test_stack_objects_refuses_overlapping_rows():
    a = np.zeros((4, 4), np.uint8)
    a[0:2, 0:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3, 1:3] = 1
    assert stack_objects([(a, "line 2"), (np.zeros((4, 4)), "line 3")], (4, 4)).max() == 1  # an empty row: no object
    with pytest.raises(ValueError, match="line 4: overlaps line 2 at 1 pixels"):
        stack_objects([(a, "line 2"), (b, "line 4")], (4, 4))


def test_evaluator_needs_the_objects():
    ev = Evaluator(MetricConfig(name="instance_map"), "binary", 1)
    truth = np.zeros((5, 8), np.int32)
    truth[1:4, 1:4], truth[1:4, 4:7] = 1, 2
    pred = torch.from_numpy(truth > 0)[None, None]
    target = torch.from_numpy((truth > 0).astype(np.uint8))[None, None]
    with pytest.raises(ValueError, match="needs each image's truth objects"):
        ev.update_masks(pred, target)
    ev.update_masks(pred, target, [truth])
    split = pred.clone()
    split[..., 4] = False
    ev.update_masks(split, target, [truth])
    out = ev.compute()
    assert out["metric"] == "instance_map" and out["per_image"] == pytest.approx([0.0, 0.6])
    assert out["score"] == pytest.approx(0.3)


def test_config_refuses_object_metrics_without_object_folders(tmp_path):
    base = {"root": str(tmp_path), "task": "binary"}
    with pytest.raises(ConfigError, match="data.instance_folders: true"):
        config_from_dict({"data": base, "metric": {"name": "instance_map"}})
    with pytest.raises(ConfigError, match="matches the objects of one foreground class"):
        config_from_dict({"data": {**base, "task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
                          "submission": {"per_class": True}, "metric": {"name": "instance_f2"}})


# ----------------------------------------------------------------------------- a run on object folders


H, W = 16, 24


def _objects_problem(n: int = 15):
    """Images with two 4x4 squares one column apart, the gap predicted at probability 0.55, a third square in
    two of three images, and a one-pixel speck at 0.96; the objects at 0.90. Threshold 0.6 with min_area 2
    gives every object exactly (object score 1); the default 0.5 bridges the pair into one object and keeps
    the specks."""
    rng = np.random.default_rng(3)
    images = {}
    for k in range(n):
        objects = []
        y = int(rng.integers(0, 4))
        a = np.zeros((H, W), bool)
        a[y : y + 4, 0:4] = True
        b = np.zeros((H, W), bool)
        b[y : y + 4, 5:9] = True
        objects += [a, b]
        if k % 3:
            c = np.zeros((H, W), bool)
            c[10:14, 14 + k % 4 : 18 + k % 4] = True
            objects.append(c)
        q = np.full((1, H, W), 20, np.uint8)
        for m in objects:
            q[0][m] = 230
        q[0, y : y + 4, 4] = 140  # the gap: 0.549, where the model is unsure
        q[0, 15, int(rng.integers(0, W))] = 245  # a speck
        images[f"im{k:02d}"] = (objects, q)
    return images


def _write_object_run(tmp_path: Path, images: dict, rows: bool = False, **sections):
    """Object folders (DSB's layout), or with ``rows`` a CSV of one row per object (Airbus's; an image without
    objects one empty row), and a run whose three folds are done with the images' OOF files."""
    root, runs = tmp_path / "comp", tmp_path / "runs"
    lines = ["id,rle_mask"]
    for i, (objects, _) in images.items():
        folder = root / "train" / "images" if rows else root / "train" / i / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 80, np.uint8)).save(folder / f"{i}.png")
        if rows:
            lines += [f"{i},{rle_encode(m)}" for m in objects] or [f"{i},"]
            continue
        (root / "train" / i / "masks").mkdir()
        for j, m in enumerate(objects):
            Image.fromarray(m.astype(np.uint8) * 255).save(root / "train" / i / "masks" / f"{i}_{j}.png")
    if rows:
        (root / "train.csv").write_text("\n".join(lines) + "\n")
        data = {"layout": "csv", "train_images": "train/images", "rle_instances": True}
    else:
        data = {"layout": "folder", "train_images": "train", "instance_folders": True}
    cfg = config_from_dict({"experiment": "obj", "runs_dir": str(runs), "folds": {"n_splits": 3, "method": "kfold"},
                            "data": {"root": str(root), "task": "binary", **data},
                            "submission": {"instances": True}, "metric": {"name": "instance_map"}, **sections})
    run = Run.of(cfg)
    run.dir.mkdir(parents=True)
    ids = sorted(images)
    run.folds_csv.write_text("id,fold,stratum\n" + "".join(f"{i},{k % 3},x\n" for k, i in enumerate(ids)))
    run.oof_dir.mkdir()
    for i, (_, q) in images.items():
        np.save(run.oof_path(i), q)
    for k in range(3):
        run.fold_dir(k).mkdir()
        run.done_json(k).write_text(json.dumps({"metric": "instance_map", "oof_score": 0.0}))
    return cfg


def test_cv_scores_the_objects_the_submission_keeps(tmp_path):
    """submission.min_instance_area: 2 drops the one-pixel specks from the rows; cv.json (and validation, OOF scores)
    counted them as false positives, so it disagreed with tune's `before` on the same default post-processing."""
    from scipy import ndimage

    images = _objects_problem()
    cfg = _write_object_run(tmp_path, images, rows=True, submission={"instances": True, "min_instance_area": 2})

    def floored(mask):  # independent of the toolkit: 8-connected components of 2+ pixels
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        return np.isin(labels, [k for k in range(1, n + 1) if (labels == k).sum() >= 2])

    expect = np.mean([reference(_truth_labels(o), floored(q[0] >= 128), None) for o, q in images.values()])
    raw = np.mean([reference(_truth_labels(o), q[0] >= 128, None) for o, q in images.values()])
    assert expect > raw  # the specks cost every image
    cv = compute_cv(cfg)
    assert cv["score"] == pytest.approx(expect, abs=1e-12)
    assert tune_postprocess(cfg)["before"] == pytest.approx(cv["score"], abs=1e-12)


def _truth_labels(objects) -> np.ndarray:
    t = np.zeros((H, W), np.int32)
    for j, m in enumerate(objects, start=1):
        t[m] = j
    return t


def test_load_objects_numbers_the_files_by_name_and_refuses_overlap(tmp_path):
    images = _objects_problem(3)
    cfg = _write_object_run(tmp_path, images)
    samples = load_train_samples(cfg)
    objects, _ = images[samples[1].id]
    np.testing.assert_array_equal(load_objects(samples[1], cfg, (H, W)), _truth_labels(objects))
    with pytest.raises(DataError, match="the prediction 8x8"):
        load_objects(samples[1], cfg, (8, 8))
    over = np.zeros((H, W), np.uint8)
    over[0:8, 0:8] = 255
    Image.fromarray(over).save(samples[1].mask / f"{samples[1].id}_9.png")
    with pytest.raises(DataError, match=r"objects im01_0.png and im01_9.png overlap at \d+ pixels"):
        load_objects(samples[1], cfg, (H, W))


@pytest.mark.parametrize("rows", [False, True], ids=["object folders", "a CSV row per object"])
def test_cv_and_tune_score_objects(tmp_path, caplog, rows):
    images = _objects_problem()
    cfg = _write_object_run(tmp_path, images, rows=rows)
    cv = compute_cv(cfg)
    expect = np.mean([reference(_truth_labels(o), q[0] >= 128, None) for o, q in images.values()])
    assert cv["metric"] == "instance_map" and cv["score"] == pytest.approx(expect, abs=1e-12)
    assert expect < 0.5  # the pair bridged into one object, and the specks are false positives
    with caplog.at_level(logging.INFO):
        report = tune_postprocess(cfg)  # raises if its object tables disagree with the Evaluator
    assert report["before"] == pytest.approx(expect, abs=1e-12)
    assert report["after"] == 1.0
    p = report["params"]
    assert 0.55 < p["threshold"][0] <= 0.9 and 2 <= p["min_area"][0] <= 16
    assert report["cross_fitted"]["score"] == 1.0


def test_csv_object_rows_are_numbered_in_order_and_must_not_overlap(tmp_path):
    images = _objects_problem(3)
    images["im03"] = ([], np.zeros((1, H, W), np.uint8))  # no object: one empty row
    cfg = _write_object_run(tmp_path, images, rows=True)
    samples = {s.id: s for s in load_train_samples(cfg)}
    np.testing.assert_array_equal(load_objects(samples["im01"], cfg, (H, W)), _truth_labels(images["im01"][0]))
    assert not load_objects(samples["im03"], cfg, (H, W)).any()
    csv = Path(cfg.data.root) / "train.csv"
    csv.write_text(csv.read_text() + f"im01,{rle_encode(images['im01'][0][0])}\n")  # im01's first object again
    s = {s.id: s for s in load_train_samples(cfg)}["im01"]
    with pytest.raises(DataError, match=r"train.csv line 4 \(id 'im01'\), its object row 4 of 4: overlaps .* row 1 of 4 "
                                        r"at 16 pixels"):
        load_objects(s, cfg, (H, W))


def test_a_pixel_metric_with_instance_rows_still_warns(tmp_path, caplog):
    images = _objects_problem(3)
    with caplog.at_level(logging.WARNING):
        _write_object_run(tmp_path, images, metric={"name": "dice"})
    assert "instance_map (DSB) or instance_f2 (Airbus) scores objects" in caplog.text


# ----------------------------------------------------------------------------- the competition's own files


def test_dsb_solution_scored_against_itself_and_with_an_object_left_out(tmp_path, capsys):
    """DSB 2018 stage 1: the official solution rows of the 11 images, scored by score_submission as Kaggle reads
    them (each row one object). Leaving out one of the 7 objects of the square image scores it 6/7 at every
    threshold (TP 6, FN 1)."""
    from seg_toolkit.submission_score import score_submission

    root = shared_dataset("dsb2018_stage1_test")
    sol = pd.read_csv(root / "stage1_solution_subset.csv", dtype=str, keep_default_na=False)
    ids = list(dict.fromkeys(sol["ImageId"]))
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("ImageId,EncodedPixels\n" + "".join(f"{i},\n" for i in ids))
    data = {"root": str(root), "task": "binary", "layout": "folder", "train_images": "stage1_test",
            "test_images": "stage1_test", "instance_folders": True, "sample_submission": str(sample)}
    cfg = config_from_dict({"data": data, "submission": {"instances": True}, "metric": {"name": "instance_map"}})
    f2 = config_from_dict({"data": data, "submission": {"instances": True}, "metric": {"name": "instance_f2"}})
    solution = tmp_path / "solution.csv"
    sol[["ImageId", "EncodedPixels"]].to_csv(solution, index=False)
    assert score_submission(solution, solution, cfg) == 1.0
    square = sol[sol["ImageId"].str.startswith("0114f484")].index
    assert len(square) == 7
    guess = tmp_path / "guess.csv"
    sol.drop(index=square[3])[["ImageId", "EncodedPixels"]].to_csv(guess, index=False)
    assert score_submission(guess, solution, cfg) == pytest.approx((10 + 6 / 7) / 11, abs=1e-12)
    # Airbus's F2 on the same rows: 5*6 / (5*6 + 4*1) = 30/34 on that image
    assert score_submission(guess, solution, f2) == pytest.approx((10 + 30 / 34) / 11, abs=1e-12)
    # the command line: check-submission --solution prints the score after the checks
    from seg_toolkit.cli import main

    config = tmp_path / "dsb.yaml"
    config.write_text(json.dumps({"data": data, "submission": {"instances": True, "id_column": "ImageId",
                                                                "rle_column": "EncodedPixels"},
                                  "metric": {"name": "instance_map"}}))
    assert main(["check-submission", str(guess), "--sample", str(sample), "--config", str(config),
                 "--solution", str(solution)]) == 0
    assert f"instance_map: {(10 + 6 / 7) / 11:.6f} against {solution}" in capsys.readouterr().out
    assert main(["check-submission", str(guess), "--sample", str(sample), "--solution", str(solution)]) == 2
    assert "--solution needs --config" in capsys.readouterr().err
    # the official solution of all 65 stage-1 images, 54 of them no test image here: a grader scores them all, and a
    # perfect submission of the 11 had read 1.0 where it scores 11/65
    from seg_toolkit.submission import SubmissionError

    full = tmp_path / "full_solution.csv"
    pd.read_csv(root / "stage1_solution.csv", dtype=str, keep_default_na=False)[["ImageId", "EncodedPixels"]].to_csv(
        full, index=False)
    with pytest.raises(SubmissionError, match=r"full_solution.csv: 54 of its 65 images are not test images of this "
                                              r"config \(e.g. \['[0-9a-f]+', .*give a solution of the 11 test images"):
        score_submission(solution, full, cfg)


@pytest.mark.parametrize("seed, by", [(None, "distance"), (0.9, "distance"), (0.9, "probability")])
def test_object_tables_equal_brute_force(tmp_path, seed, by):
    """Every (threshold, min_area) cell of the tune tables against the reference on apply_postprocess's masks; the
    areas include the squares' own size (16: kept) and one more (17: removed); with a split seed, touching nuclei
    whose cores (0.969) are its seeds are cut apart below threshold 0.95."""
    from seg_toolkit.postprocess import PostParams, apply_postprocess
    from seg_toolkit.tensors import uint8_to_probs
    from seg_toolkit.tune_objects import object_tables
    from seg_toolkit.tune_tables import OOFData

    images = {**_objects_problem(6), **{f"t{k}": v for k, v in _touching_problem(4).items()}}
    cfg = _write_object_run(tmp_path, images)
    data = OOFData(cfg, Run.of(cfg).dir)
    thresholds, areas = [0.3, 0.5, 0.55, 0.6, 0.95], [0, 1, 2, 16, 17]
    hits, n_pred, n_truth = object_tables(data, thresholds, areas, seed, by)
    for i, item in enumerate(data.items):
        objects, q = images[item.sample.id]
        for jt, t in enumerate(thresholds):
            for ja, a in enumerate(areas):
                params = PostParams(threshold=[t], min_area=[a], empty_gate=[None], split_seed=[seed], split_by=by)
                mask = apply_postprocess(uint8_to_probs(q), "binary", params)
                got = scores_from_hits(hits[i, 0, jt, ja], n_pred[i, 0, jt, ja], n_truth[i, 0], "instance_map")
                assert got == pytest.approx(reference(_truth_labels(objects), mask[0] > 0, None), abs=1e-12), (i, t, a)


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are given per image id order: the OOF probabilities of the problem, as logits."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits, self.k = logits, 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack(self.logits[self.k : self.k + x.shape[0]])
        self.k += x.shape[0]
        return out + 0 * self.w


@pytest.mark.parametrize("batch", [1, 4])
def test_each_epochs_validation_scores_objects(tmp_path, batch):
    """The validation batches carry the truth objects, so the epoch's score is the object score (early stopping and
    the best checkpoint follow the competition's metric), equal to the reference on the same masks."""
    from torch.utils.data import DataLoader

    from seg_toolkit.data.dataset import SegDataset, collate
    from seg_toolkit.epoch import validate_epoch
    from seg_toolkit.losses import build_loss

    images = _objects_problem(5)
    cfg = _write_object_run(tmp_path, images)
    samples = load_train_samples(cfg)
    ds = SegDataset(samples, cfg, "valid")
    np.testing.assert_array_equal(ds[2]["objects"], _truth_labels(images[samples[2].id][0]))
    assert "objects" not in SegDataset(samples, cfg, "train")[0]
    probs = [torch.from_numpy(images[s.id][1].astype(np.float32) / 255).clamp(1e-4, 1 - 1e-4) for s in samples]
    model = _Fixed([torch.log(p / (1 - p)) for p in probs])
    loader = DataLoader(ds, batch_size=batch, collate_fn=collate)
    stats = validate_epoch(cfg, model, None, build_loss(cfg), loader, torch.device("cpu"))
    expect = np.mean([reference(_truth_labels(images[s.id][0]), p[0].numpy() >= 0.5, None) for s, p in zip(samples, probs)])
    assert stats["metric"] == "instance_map" and stats["val_score"] == pytest.approx(expect, abs=1e-12)


def test_tune_on_objects_streams_as_it_caches(tmp_path):
    """Over the memory budget the OOF files and object files are read again each pass: the same search and scores."""
    cfg = _write_object_run(tmp_path, _objects_problem(9))
    cached, streamed = tune_postprocess(cfg, write=False), tune_postprocess(cfg, write=False, memory_budget=0)
    assert cached["oof_in_memory"] and not streamed["oof_in_memory"]
    for key in ("params", "before", "after", "cross_fitted", "steps"):
        assert streamed[key] == cached[key], key


# ----------------------------------------------------------------------------- splitting touching objects


def test_split_objects_by_hand():
    """A 4x8 blob (p 0.6, columns 1-8) with two cores (p 0.95) in columns 2-3 and 6-7: column 4 is nearer the left
    core, column 5 the right one; the right part's pixels that touch the left part (column 5) become background."""
    from seg_toolkit.postprocess import split_objects

    p = np.zeros((6, 11), np.float32)
    p[1:5, 1:9] = 0.6
    p[1:5, 2:4] = p[1:5, 6:8] = 0.95
    p[1:3, 10] = 0.97  # a lone core: its own object, one seed, unchanged
    mask = p >= 0.5
    out = split_objects(p, mask, 0.9)
    expect = mask.copy()
    expect[1:5, 5] = False
    np.testing.assert_array_equal(out, expect)
    assert label_objects(out)[1] == 3 and label_objects(mask)[1] == 2
    np.testing.assert_array_equal(split_objects(p, mask, 0.96), mask)  # one seed (the lone core's): nothing to cut
    np.testing.assert_array_equal(split_objects(p, mask, 0.5), mask)  # the seeds are the objects themselves
    p[1:3, 10] = 0.7  # the lone object without a core: as many seeds as objects, yet the blob holds both
    np.testing.assert_array_equal(split_objects(p, p >= 0.5, 0.9), expect)


def test_split_by_probability_follows_the_valley():
    """A 5x20 blob: a big core (p 0.95, columns 0-5) and a small one (columns 16-19), p falling from each core to a
    valley at column 14 (0.55). The nearest core cuts at the midpoint: columns 0-10 | 12-19, column 11 (the right
    part's side of the meeting line) background. The watershed on p cuts at the valley: column 14 goes to the
    small core (flooded first from it: its neighbour 15 is higher than 13), the meeting line there is background."""
    from seg_toolkit.postprocess import split_objects

    p = np.zeros((5, 20), np.float32)
    p[:, :6] = p[:, 16:] = 0.95
    p[:, 6:15] = np.linspace(0.85, 0.55, 9)  # columns 6..14
    p[:, 15] = 0.75
    mask = p >= 0.5
    cut = {by: np.flatnonzero(~split_objects(p, mask, 0.9, by).any(axis=0)).tolist() for by in ("distance", "probability")}
    assert cut == {"distance": [11], "probability": [14]}
    for by in ("distance", "probability"):
        assert label_objects(split_objects(p, mask, 0.9, by))[1] == 2


def test_split_by_config_checks(tmp_path, monkeypatch):
    images = _touching_problem(6)
    with pytest.raises(ConfigError, match="postprocess.split_by: 'probability' says how objects are cut apart, but there is no"):
        _write_object_run(tmp_path / "no_seed", images, postprocess={"split_by": "probability"})
    cfg = _write_object_run(tmp_path, images, postprocess={"split_seed_grid": [None, 0.9], "split_by": "probability"})
    report = tune_postprocess(cfg)  # the tables on watershed cuts, checked against the Evaluator's masks
    assert report["params"]["split_seed"] == [0.9] and report["params"]["split_by"] == "probability"
    # the cores sit in the middle of each nucleus and p is flat between them: the watershed cuts where the nearest
    # core does (columns 6 | 7), the same score as the distance split (test_tune_searches_the_split_seed_on_objects)
    assert report["after"] == pytest.approx((6 * 1 + 4 * (2 / 4)) / 10, abs=1e-12)
    from seg_toolkit.postprocess import load_params

    assert load_params(cfg, Run.of(cfg)).split_by == "probability"
    import sys

    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # scikit-image not installed
    from seg_toolkit.postprocess import split_objects

    p = np.zeros((5, 20), np.float32)
    p[:, :6] = p[:, 16:] = 0.95
    p[:, 6:16] = 0.6
    with pytest.raises(ConfigError, match=r"split_by: 'probability' \(the tuned post-processing\).*seg_toolkit\[instances\]"):
        split_objects(p, p >= 0.5, 0.9, "probability")
    with pytest.raises(ConfigError, match=r"pip install 'seg_toolkit\[instances\]'"):
        config_from_dict({"data": {"root": str(tmp_path), "task": "binary", "layout": "folder", "instance_folders": True},
                          "metric": {"name": "instance_map"}, "postprocess": {"split_seed": 0.9, "split_by": "probability"}})


def _touching_problem(n: int = 12):
    """Two 4x5 nuclei side by side with no gap (truth objects that touch) and a lone one; probability 0.8 over
    every nucleus with a 0.97 core in its middle: any threshold gives the pair as one object."""
    rng = np.random.default_rng(11)
    images = {}
    for k in range(n):
        y = int(rng.integers(0, 8))
        a, b, c = (np.zeros((H, W), bool) for _ in range(3))
        a[y : y + 4, 2:7], b[y : y + 4, 7:12], c[10:14, 16:20] = True, True, True
        q = np.full((1, H, W), 15, np.uint8)
        for m in (a, b, c):
            q[0][m] = 204
        q[0, y + 1 : y + 3, 3:6] = q[0, y + 1 : y + 3, 8:11] = q[0, 11:13, 17:19] = 247  # the cores
        images[f"im{k:02d}"] = ([a, b, c], q)
    return images


def test_tune_searches_the_split_seed_on_objects(tmp_path):
    images = _touching_problem()
    cfg = _write_object_run(tmp_path, images, postprocess={"split_seed_grid": [None, 0.9]})
    report = tune_postprocess(cfg)  # raises if the split object tables disagree with the Evaluator on split masks
    assert report["candidates"]["split_seed"] == [None, 0.9]
    assert report["params"]["split_seed"] == [0.9]
    # without a split the pair is one object (IoU 20/40 with each: no hit), the lone nucleus exact: 1/(1 + 1 + 2)
    assert report["before"] == pytest.approx(0.25, abs=1e-12)
    # split between the cores (columns 6 | 7 of the 10-wide pair: the nearest core), the right part loses its
    # column 7: parts of 20 and 16 pixels, IoU 1 and 16/20 = 0.8 (a hit up to 0.75): TP 3 at 6 thresholds, 2 at 4
    assert report["after"] == pytest.approx((6 * 1 + 4 * (2 / 4)) / 10, abs=1e-12)
    run = Run.of(cfg)
    from seg_toolkit.postprocess import load_params

    assert load_params(cfg, run).split_seed == [0.9]  # what predict and evaluate apply


def test_too_few_images_to_cross_fit_choose_the_seed_by_tuned_score(tmp_path):
    """Under tune_crossfit.MIN_IMAGES OOF images there is no cross-fitted score; with a seed grid there are still
    several searches (one per seed), chosen by their tuned scores (this failed on None['score'])."""
    from seg_toolkit.tune_crossfit import MIN_IMAGES

    images = _touching_problem(6)
    assert len(images) < MIN_IMAGES
    cfg = _write_object_run(tmp_path, images, postprocess={"split_seed_grid": [None, 0.9]})
    report = tune_postprocess(cfg)
    assert report["cross_fitted"] is None and report["params"]["split_seed"] == [0.9]
    assert report["search"]["chosen"] == "joint + split_seed 0.9" and report["after"] > report["before"]


def test_split_seed_config_checks(tmp_path):
    base = {"root": str(tmp_path), "task": "binary"}
    for key, value in (("split_seed_grid", [0.9]), ("split_seed", 0.9)):
        with pytest.raises(ConfigError, match=f"postprocess.{key}: cuts touching objects apart, which only an object-matching"):
            config_from_dict({"data": base, "postprocess": {key: value}})
    with pytest.raises(ConfigError, match=r"postprocess.split_seed: expected a probability in \(0, 1\]"):
        config_from_dict({"data": base, "postprocess": {"split_seed": 0}})
    images = _objects_problem(3)
    cfg = _write_object_run(tmp_path, images, postprocess={"split_seed": 0.9})
    report = tune_postprocess(cfg)  # the config's seed is where the search starts, and "before" applies it
    assert report["before_params"]["split_seed"] == [0.9] and report["params"]["split_seed"] == [0.9]
    assert report["candidates"]["split_seed"] == [0.9]


def test_object_files_are_read_again_when_they_change(tmp_path, monkeypatch):
    """The target and the truth objects of an image share one read of its object files; a file rewritten, added or
    removed since is read again."""
    import seg_toolkit.data.masks as masks_mod
    from seg_toolkit.data import load_target

    images = _objects_problem(2)
    cfg = _write_object_run(tmp_path, images)
    s = load_train_samples(cfg)[0]
    reads = []
    real = masks_mod.mask_ids
    monkeypatch.setattr(masks_mod, "mask_ids", lambda sample, c: (sample.mask.is_file() and reads.append(sample.mask.name))
                        or real(sample, c))  # the object files read (load_target passes the folder first)
    load_target(s, cfg, (H, W))
    first = load_objects(s, cfg, (H, W))
    assert sorted(reads) == ["im00_0.png", "im00_1.png"]  # once each, for both
    moved = np.zeros((H, W), np.uint8)
    moved[12:16, 20:24] = 255
    Image.fromarray(moved).save(s.mask / f"{s.id}_0.png")  # object 1 elsewhere
    again = load_objects(s, cfg, (H, W))
    assert (again == 1).sum() == 16 and (again[12:16, 20:24] == 1).all() and (first[12:16, 20:24] == 0).all()
    (s.mask / f"{s.id}_1.png").unlink()
    assert load_objects(s, cfg, (H, W)).max() == 1
    assert len(reads) == 2 + 2 + 1


def test_kept_object_sets_are_the_files_and_stay_within_their_bound(tmp_path, monkeypatch):
    """Each object is kept as its box and the mask inside it, equal to its file; the kept sets stay within
    object_files.CACHE_BYTES, the least recently used going first, and a set that went is read again."""
    import seg_toolkit.data.masks as masks_mod
    from seg_toolkit.data import object_files

    images = _objects_problem(4)
    cfg = _write_object_run(tmp_path, images)
    samples = load_train_samples(cfg)
    object_files.clear_kept()
    reads = []
    real = masks_mod.mask_ids
    monkeypatch.setattr(masks_mod, "mask_ids", lambda sample, c: (sample.mask.is_file() and reads.append(sample.mask.name))
                        or real(sample, c))
    first = object_files.read_object_set(samples[0], cfg)
    for k, m in enumerate(images[samples[0].id][0]):
        np.testing.assert_array_equal(first.full(k), m)
        assert first.crops[k].shape == (4, 4)  # the 4x4 square's box
    size = [16 * len(images[s.id][0]) for s in samples]  # 4x4 squares: 16 bytes each
    monkeypatch.setattr(object_files, "CACHE_BYTES", size[2] + size[3])  # room for the last two sets read
    for s in samples[1:]:
        object_files.read_object_set(s, cfg)
    assert len(object_files._CACHE) == 2 and object_files._KEPT_BYTES[0] == size[2] + size[3] and len(reads) == sum(len(images[s.id][0]) for s in samples)
    object_files.read_object_set(samples[3], cfg)  # kept: no read
    assert len(reads) == sum(len(images[s.id][0]) for s in samples)
    again = object_files.read_object_set(samples[0], cfg)  # went first: read again, the same objects
    assert len(reads) == sum(len(images[s.id][0]) for s in samples) + len(images[samples[0].id][0])
    assert all((a == b).all() for a, b in zip(again.crops, first.crops)) and again.boxes == first.boxes


def test_report_overlays_show_objects_matched_or_not(tmp_path):
    """Under an object metric the overlays colour objects by whether they are matched at IoU > 0.5, and draw the
    line between touching ones; the report of an object run builds."""
    from seg_toolkit.report import build_report
    from seg_toolkit.report.overlays import _object_edges, _object_status

    truth = np.zeros((6, 10), np.int32)
    truth[1:4, 1:4], truth[1:4, 4:7] = 1, 2  # touching
    pred = np.zeros((6, 10), np.int32)
    pred[1:4, 1:4] = 1  # object 1 exactly
    pred[5, 8:10] = 2  # a speck
    matched, unmatched = _object_status(truth, pred, None)
    np.testing.assert_array_equal(matched, truth == 1)
    np.testing.assert_array_equal(unmatched, truth == 2)
    matched, unmatched = _object_status(pred, truth, None)
    np.testing.assert_array_equal(matched, pred == 1)
    np.testing.assert_array_equal(unmatched, pred == 2)
    edges = _object_edges(truth)
    assert edges[1:4, 3].all() and edges[1:4, 4].all() and edges.sum() == 6  # the columns either side of the line

    from seg_toolkit.config import save_config

    cfg = _write_object_run(tmp_path, _objects_problem(6))
    save_config(cfg, Run.of(cfg).config_yaml)
    compute_cv(cfg)
    page = Path(build_report(cfg.run_dir))
    assert (page.parent / "overlays_worst.png").is_file() and (page.parent / "overlays_best.png").is_file()


def test_report_examples_count_objects_under_an_object_metric(tmp_path):
    """The report's best / worst images carry (truth objects, predicted objects, matched at IoU > 0.5), counted
    here apart (flood fill, pixel sets), and its tables show them instead of pixel counts."""
    from scipy import ndimage

    from seg_toolkit.config import save_config
    from seg_toolkit.report import build_report
    from seg_toolkit.report.summary import compute_oof_summary

    images = _objects_problem(6)
    cfg = _write_object_run(tmp_path, images)
    save_config(cfg, Run.of(cfg).config_yaml)
    compute_cv(cfg)
    summary = compute_oof_summary(Run.of(cfg), cfg, load_train_samples(cfg), n_examples=6)
    for ex in summary["best"] + summary["worst"]:
        objects, q = images[ex["id"]]
        pred, n_pred = ndimage.label(q[0] >= 128, structure=np.ones((3, 3)))  # p >= 0.5: q >= 127.5
        truth = [set(zip(*np.nonzero(m))) for m in objects]
        found = [set(zip(*np.nonzero(pred == k))) for k in range(1, n_pred + 1)]
        matched = sum(1 for t in truth for f in found if 2 * len(t & f) > len(t | f))
        assert ex["objects"] == [len(objects), n_pred, matched], ex["id"]
    assert {tuple(ex["objects"]) for ex in summary["best"]} == {(2, 2, 0), (3, 3, 1)}  # the pair bridged, + a speck
    page = Path(build_report(cfg.run_dir)).read_text()
    assert "truth objects" in page and "unmatched predictions" in page and "true foreground pixels" not in page
    assert "green when matched with one of the other side at IoU &gt; 0.5" in page and "Colours are the classes" not in page


def test_touching_objects_by_hand():
    from seg_toolkit.instance_metrics import touching

    labels = np.zeros((6, 12), np.int32)
    labels[0:2, 0:2] = 1
    labels[2:4, 2:4] = 2  # diagonal neighbour of 1: 8-adjacent
    labels[0:2, 5:7] = 3  # one column from 4
    labels[0:2, 8:10] = 4
    labels[4:6, 8:10] = 5  # shares an edge with 6
    labels[4:6, 10:12] = 6
    assert touching(labels).tolist() == [1, 2, 5, 6]
    assert touching(np.zeros((3, 3), np.int32)).tolist() == []


def test_audit_counts_objects_and_those_that_touch(tmp_path):
    from seg_toolkit.audit import audit
    from seg_toolkit.audit_report import format_audit

    images = _touching_problem(4)  # a touching pair of 20 pixels each and a lone nucleus of 16
    cfg = _write_object_run(tmp_path, images)
    res = audit(cfg)
    assert res.objects_per_image == [3, 3, 3, 3] and res.object_areas == [20, 20, 16] * 4 and res.touching_objects == 8
    assert ("objects: 12 in 4 image(s) (per image median 3, max 3); pixels per object median 20, 5th percentile 16, "
            "smallest 16; 8 (66.67%) touch another object") in format_audit(res)
    rows = _write_object_run(tmp_path / "rows", images, rows=True)
    assert audit(rows).touching_objects == 8  # the same objects from CSV rows


def test_split_objects_keeps_each_pixel_with_its_own_objects_seeds():
    """Blob A (rows 0-1) has its cores at its two ends; blob C below (rows 3-4, one row apart) has its cores in
    its middle, nearer A's middle than A's own cores are. A still splits in two, never into a third piece that
    went to C's seed across the gap."""
    from seg_toolkit.postprocess import split_objects

    p = np.zeros((5, 12), np.float32)
    p[0:2, 0:12] = 0.6
    p[0:2, 0] = p[0:2, 11] = 0.95
    p[3:5, 3:9] = 0.6
    p[3:5, 4] = p[3:5, 7] = 0.95
    out = split_objects(p, p >= 0.5, 0.9)
    assert label_objects(out)[1] == 4
    assert out[0:2].sum() == 24 - 2 and out[3:5].sum() == 12 - 2  # one column cut from each blob


def _bright_squares(root: Path, names: list[str], seed: int) -> None:
    """Object folders of 32x32 images: 2-3 bright 5x5 squares (200 on 30), the first two side by side touching."""
    rng = np.random.default_rng(seed)
    for name in names:
        image = np.full((32, 32, 3), 30, np.uint8)
        y, x = int(rng.integers(1, 20)), int(rng.integers(1, 12))
        boxes = [(y, x), (y, x + 5)] + ([(int(rng.integers(20, 26)), int(rng.integers(20, 26)))] if rng.random() < 0.7 else [])
        (root / name / "masks").mkdir(parents=True)
        (root / name / "images").mkdir()
        for j, (r, c) in enumerate(boxes):
            m = np.zeros((32, 32), np.uint8)
            m[r : r + 5, c : c + 5] = 255
            image[r : r + 5, c : c + 5] = 200
            Image.fromarray(m).save(root / name / "masks" / f"{name}_{j}.png")
        Image.fromarray(image).save(root / name / "images" / f"{name}.png")


def test_evaluate_on_an_object_folder_scores_the_predictors_objects(tmp_path):
    """A tiny run trained on object folders, evaluated on a folder of other labelled images (DSB's layout): the
    score is the mean of the brute-force reference over the predictor's post-processed masks, each image's truth
    objects read from its files here."""
    from seg_toolkit.cv import run_cv
    from seg_toolkit.evaluate import evaluate_on
    from seg_toolkit.postprocess import apply_postprocess, load_params
    from seg_toolkit.predictor import Predictor

    _bright_squares(tmp_path / "comp" / "train", [f"a{k}" for k in range(6)], 0)
    _bright_squares(tmp_path / "hold" / "train", [f"b{k}" for k in range(4)], 1)
    cfg = config_from_dict({
        "experiment": "objects", "runs_dir": str(tmp_path / "runs"), "folds": {"n_splits": 2, "method": "kfold"},
        "data": {"root": str(tmp_path / "comp"), "task": "binary", "layout": "folder", "train_images": "train",
                 "instance_folders": True, "instance_target": "borders"},
        "model": {"arch": "scratch_unet", "depth": 2, "base_width": 8},
        "train": {"epochs": 8, "batch_size": 3, "num_workers": 0, "amp": "none"}, "optim": {"lr": 0.02},
        "transforms": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "metric": {"name": "instance_map"}, "predict": {"batch_size": 2}, "submission": {"instances": True}})
    run_cv(cfg)
    got = evaluate_on(cfg, tmp_path / "hold")
    assert got["metric"] == "instance_map" and got["n_images"] == 4
    on = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path / "hold")))
    run = Run.of(cfg)
    params = load_params(cfg, run)
    samples = {s.id: s for s in load_train_samples(on)}
    scores = []
    for image_id, probs, _ in Predictor.from_run(run, batch_size=1, num_workers=0).iter_probs(list(samples.values())):
        mask = apply_postprocess(probs.numpy(), "binary", params)[0] > 0
        scores.append(reference(load_objects(samples[image_id], on, mask.shape), mask, None))
    assert len(scores) == 4 and got["score"] == pytest.approx(float(np.mean(scores)), abs=1e-12)
    assert max(scores) > 0  # the model found some squares (here: 0, 0, 0.175, 0.125): the comparison is not 0 == 0


@pytest.mark.parametrize("rows", [False, True])
def test_overlapping_truth_objects_are_named_before_anything_is_written(tmp_path, rows):
    """Training takes overlapping objects (their union is the target), the object metric cannot score them: the run
    stopped at the first validation of the fold holding one, after the folds before it had trained. Now train
    refuses before it writes anything, naming each image at fault (object files, or object rows compared run by run)."""
    from seg_toolkit.cv import run_cv

    def square(r, c, w=3):
        m = np.zeros((H, W), bool)
        m[r:r + 3, c:c + w] = True
        return m

    images = {f"i{k}": ([square(1, 1), square(1, 6)], np.zeros((1, H, W), np.uint8)) for k in range(6)}
    images["i2"] = ([square(1, 1), square(1, 3)], images["i2"][1])  # column 3 of rows 1-3 in both objects
    images["i4"] = ([square(1, 1, 5), square(1, 5)], images["i4"][1])  # column 5 in both
    cfg = _write_object_run(tmp_path, images, rows=rows, model={"arch": "scratch_unet", "depth": 2, "base_width": 4},
                            train={"epochs": 1, "batch_size": 2, "num_workers": 0})
    cfg = dataclasses.replace(cfg, experiment="fresh")
    if rows:
        # 1-based column-major pixels: i2's objects share the pixel at row 1, column 3 (3 * H + 2)
        message = (rf"2 training image\(s\) have truth objects that overlap, which instance_map cannot score .*"
                   rf"train.csv line \d+ \(id 'i2'\), its object row 2 of 2: overlaps its object row 1 at pixel {3 * H + 2}; .*'i4'")
    else:
        message = (r"2 training image\(s\) have truth objects that overlap, which instance_map cannot score .*i2/masks: objects "
                   r"i2_0.png and i2_1.png overlap at 3 pixels; .*i4/masks: objects i4_0.png and i4_1.png overlap at 3 pixels")
    with pytest.raises(DataError, match=message):
        run_cv(cfg)
    assert not Run.of(cfg).dir.exists()


def test_an_unreadable_object_file_is_its_own_error_not_an_overlap(tmp_path):
    """check_truth_objects gathers the overlaps of every image under one heading; an object file that cannot be
    read is another fault, which had been listed under "truth objects that overlap"."""
    from seg_toolkit.cv import run_cv

    m = np.zeros((H, W), bool)
    m[1:4, 1:4] = True
    cfg = _write_object_run(tmp_path, {f"i{k}": ([m], np.zeros((1, H, W), np.uint8)) for k in range(6)},
                            model={"arch": "scratch_unet", "depth": 2, "base_width": 4},
                            train={"epochs": 1, "batch_size": 2, "num_workers": 0})
    cfg = dataclasses.replace(cfg, experiment="fresh")
    bad = Path(cfg.data.root) / "train" / "i3" / "masks" / "i3_0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError) as caught:
        run_cv(cfg)
    assert "i3_0.png" in str(caught.value) and "overlap" not in str(caught.value)
    assert not Run.of(cfg).dir.exists()
