"""``evaluate --on DIR`` scores any labelled folder as ``predict`` would decide it; ``predict.write_masks``
writes the decided (submitted) masks as PNG files.

One tiny run (2 folds x 1 epoch on the tiny demo, hflip TTA, post-processing tuned on OOF) is
scored on a copy of part of the demo (``holdout``: 6 of its 12 training images and their rows)
and on a folder that also holds the demo's test images with their hidden answers.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from seg_toolkit.cli import main
from seg_toolkit.config import config_from_dict, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.data import class_colors, load_target, load_train_samples
from seg_toolkit.evaluate import evaluation_name, metric_tag
from seg_toolkit.inference import mask_pngs
from seg_toolkit.evaluator import Evaluator
from seg_toolkit.postprocess import apply_postprocess, load_params
from seg_toolkit.predictor import Predictor
from seg_toolkit.files import read_json, write_json
from seg_toolkit.run import Run
from seg_toolkit.submission import submission_spec

from .conftest import demo_dict

TRAIN = {"epochs": 1, "batch_size": 2, "num_workers": 0}


def _copy_subset(src: Path, dst: Path, ids: list[str]) -> Path:
    """A labelled folder laid out like the demo (train/images + train.csv) with only ``ids``."""
    (dst / "train/images").mkdir(parents=True)
    for i in ids:
        shutil.copy(src / "train/images" / f"{i}.png", dst / "train/images" / f"{i}.png")
    df = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    df[df.ImageId.isin(ids)].to_csv(dst / "train.csv", index=False)
    return dst


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalon")
    cfg = config_from_dict(demo_dict(demo_root, tmp / "runs", experiment="e", train=TRAIN, optim={"lr": 0.05},
                                     predict={"batch_size": 4, "tta": ["identity", "hflip"]},
                                     submission={"per_class": True, "path": str(tmp / "e.csv")}))
    run_cv(cfg)
    save_config(cfg, tmp / "e.yaml")
    ids = [s.id for s in load_train_samples(cfg)][::2]
    holdout = _copy_subset(demo_root, tmp / "holdout", ids)
    return cfg, tmp / "e.yaml", holdout, tmp


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _independent_score(cfg, folder: Path) -> float:
    """The run's predictor probabilities -> the tuned post-processing -> an Evaluator, each target read here."""
    on = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(folder)))
    samples = {s.id: s for s in load_train_samples(on)}
    run = Run.of(cfg)
    params = load_params(cfg, run)
    ev = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    n = 0
    for image_id, probs, _ in Predictor.from_run(run, batch_size=3, num_workers=0).iter_probs(list(samples.values())):
        target = load_target(samples[image_id], on, tuple(probs.shape[-2:]))
        mask = apply_postprocess(probs.numpy(), cfg.data.task, params)
        ev.update_masks(torch.from_numpy(mask)[None], torch.from_numpy(target.transpose(2, 0, 1).astype(np.float32))[None])
        n += 1
    assert n == len(samples)
    return float(ev.compute()["score"])


def test_evaluate_on_a_labelled_folder_scores_as_predict_decides(trained, capsys):
    cfg, yaml_path, holdout, _ = trained
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--on", str(holdout))
    assert code == 0, err
    lines = out.strip().splitlines()
    metric, value = lines[-1].split(": ")
    assert metric == "dice" and "pixel accuracy" in out and "class_2" in out and "IoU" in out
    run = Run.of(cfg)
    path = run.evaluate_json_for(evaluation_name(holdout))
    saved = read_json(path)
    assert f"written to {path}" in out and saved["on"] == str(holdout.resolve())
    assert saved["n_images"] == 6 and saved["training_ids_left_out"] == 0 and saved["metric"] == "dice"
    want = _independent_score(cfg, holdout)
    assert saved["score"] == pytest.approx(want, abs=1e-9)
    assert float(value) == pytest.approx(want, abs=5e-5)  # printed with 4 decimals
    assert saved["predictor"][0]["tta"] == ["identity", "hflip"] and saved["predictor"][0]["folds"] == [0, 1]
    assert len(saved["per_class_iou"]) == 3 and 0.0 <= saved["pixel_accuracy"] <= 1.0
    # the run folder is the way to name the run too; the second evaluation replaces the first's file
    code, out2, _ = _run(capsys, "evaluate", str(run.dir), "--on", str(holdout))
    assert code == 0 and out2.strip().splitlines()[-1] == lines[-1]
    assert sorted(p.name for p in run.evaluations_dir.iterdir()) == [path.name]
    assert run.foreign_entries() == []  # evaluations/ is a run entry: `train --overwrite` may remove the run


def test_the_training_folder_leaves_out_the_runs_training_ids(trained, capsys, demo_root):
    cfg, yaml_path, holdout, tmp = trained
    # the run's own data root: every id is a training id of the run
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--on", str(demo_root))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "is the training data of" in lines[0] and "all its 12 labelled ids are training ids" in lines[0]
    assert "cv.json" in lines[0]
    # a training root that also holds unseen labelled images (the demo's test images and hidden answers)
    mixed = tmp / "mixed"
    shutil.copytree(holdout, mixed)
    sol = pd.read_csv(demo_root / "test_solution.csv", dtype=str, keep_default_na=False)
    ids = sol.ImageId_ClassId.str.rsplit("_", n=1)
    extra = pd.DataFrame({"ImageId": ids.str[0], "ClassId": ids.str[1], "EncodedPixels": sol.EncodedPixels})
    for i in extra.ImageId.unique():
        shutil.copy(demo_root / "test/images" / f"{i}.png", mixed / "train/images" / f"{i}.png")
    pd.concat([pd.read_csv(mixed / "train.csv", dtype=str, keep_default_na=False), extra]).to_csv(mixed / "train.csv", index=False)
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--set", f"data.root={mixed}", "--on", str(mixed))
    assert code == 0, err
    saved = read_json(Run.of(cfg).evaluate_json_for(evaluation_name(mixed)))
    assert saved["n_images"] == 4 and saved["training_ids_left_out"] == 6
    assert "4 labelled images; 6 training ids of the run left out" in out
    unseen = _copy_subset(mixed, tmp / "unseen", list(extra.ImageId.unique()))
    assert saved["score"] == pytest.approx(_independent_score(cfg, unseen), abs=1e-9)
    # ids the run's data.exclude_ids set aside (labels known wrong) are not held-out images: left out too
    bad = sorted(extra.ImageId.unique())[0]
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--set", f"data.root={mixed}", "--set",
                          f"data.exclude_ids=[{bad}]", "--on", str(mixed))
    assert code == 0, err
    saved = read_json(Run.of(cfg).evaluate_json_for(evaluation_name(mixed)))
    assert saved["n_images"] == 3 and saved["training_ids_left_out"] == 6 and saved["excluded_ids_left_out"] == 1


def test_another_metric_gets_its_own_file_and_keeps_the_runs(trained, capsys):
    cfg, yaml_path, holdout, _ = trained
    run = Run.of(cfg)
    assert _run(capsys, "evaluate", str(yaml_path), "--on", str(holdout))[0] == 0
    own = run.evaluate_json_for(evaluation_name(holdout))
    dice = read_json(own)
    # `auto` resolves to dice for this binary task: the run's own metric, the run's own file
    assert metric_tag(dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, name="dice")), run) == ""
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--set", "metric.name=iou", "--on", str(holdout))
    assert code == 0, err
    iou_cfg = dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, name="iou"))
    tag = metric_tag(iou_cfg, run)
    assert tag.startswith("iou-") and len(tag) == len("iou-") + 6
    other = run.evaluate_json_for(f"{evaluation_name(holdout)}.{tag}")
    assert f"written to {other}" in out
    assert read_json(own) == dice  # the run's evaluation is not replaced
    saved = read_json(other)
    assert saved["metric"] == "iou" and saved["score"] == pytest.approx(_independent_score(iou_cfg, holdout), abs=1e-9)
    # a threshold is a metric key too: its own file again
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--set", "metric.name=iou", "--set", "metric.threshold=0.3",
                          "--on", str(holdout))
    assert code == 0, err
    assert len(list(run.evaluations_dir.glob(f"{evaluation_name(holdout)}*.json"))) == 3
    assert run.foreign_entries() == []


@pytest.mark.parametrize("case", ["missing", "file", "no_labels", "no_images"])
def test_a_bad_folder_is_one_error_line(trained, capsys, tmp_path, case):
    cfg, yaml_path, holdout, _ = trained
    folder = tmp_path / "dir"
    if case == "file":
        folder.write_text("x")
    elif case == "no_labels":  # images but no train.csv
        shutil.copytree(holdout / "train", folder / "train")
    elif case == "no_images":  # rows but no images
        folder.mkdir()
        shutil.copy(holdout / "train.csv", folder / "train.csv")
        (folder / "train/images").mkdir(parents=True)
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--on", str(folder))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    want = {"missing": "dir: folder not found", "file": "dir: is a file, not a folder",
            "no_labels": "train.csv: training CSV (data.train_csv) not found",
            "no_images": "of 6 labelled ids have no image"}[case]
    assert want in lines[0]
    if case == "no_labels":
        assert "evaluate --on reads" in lines[0] and "data.train_csv 'train.csv'" in lines[0]
    assert not Run.of(cfg).evaluate_json_for(evaluation_name(folder)).exists()


def test_a_foreign_file_in_the_evaluations_folder_is_not_replaced(trained, capsys, tmp_path):
    cfg, yaml_path, holdout, _ = trained
    other = shutil.copytree(holdout, tmp_path / "other")
    path = Run.of(cfg).evaluate_json_for(evaluation_name(other))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"mine": 1}')
    code, out, err = _run(capsys, "evaluate", str(yaml_path), "--on", str(other))
    assert code == 2 and "is not the evaluation of" in err and path.read_text() == '{"mine": 1}'
    path.unlink()


# ----------------------------------------------------------------------------- mask files


def test_written_mask_pngs_are_the_submitted_masks(trained, capsys):
    cfg, yaml_path, _, tmp = trained
    run = Run.of(cfg)
    sub = tmp / "masks.csv"
    # one epoch leaves every probability near 0.5: thresholds that keep some pixels give the check teeth
    tuned = read_json(run.postprocess_json)
    write_json(run.postprocess_json, {**tuned, "params": {"threshold": [0.45, 0.5, 0.45], "min_area": [0, 5, 0],
                                                          "empty_gate": [None, None, None]}})
    code, out, err = _run(capsys, "predict", str(yaml_path), "--set", "predict.write_masks=png", "--out", str(sub))
    assert code == 0, err
    rows = pd.read_csv(sub, dtype=str, keep_default_na=False)
    spec = submission_spec(cfg)
    files = sorted(p.name for p in run.test_masks_dir.iterdir())
    assert len(files) == len(rows) == 4 * 3  # one 0/255 PNG per image and class, named like its row
    assert sum(spec.decode(r, (48, 64)).sum() for r in rows.EncodedPixels) > 0  # something was predicted
    for row_id, rle in zip(rows.ImageId_ClassId, rows.EncodedPixels):
        image_id, cls = row_id.rsplit("_", 1)
        png = Image.open(run.test_mask_path(image_id, int(cls)))
        assert png.mode == "L" and png.size == (64, 48)
        arr = np.asarray(png)
        assert set(np.unique(arr)) <= {0, 255}
        assert np.array_equal(arr == 255, spec.decode(rle, (48, 64)).astype(bool)), row_id
    # colour files: one RGB PNG per image, each class's pixels in its colour, the highest class on top
    code, _, err = _run(capsys, "predict", str(yaml_path), "--set", "predict.write_masks=color", "--out", str(sub), "--overwrite")
    assert code == 0, err
    colors = class_colors(cfg)
    assert sorted(p.name for p in run.test_masks_dir.iterdir()) == sorted({f"{r.rsplit('_', 1)[0]}.png" for r in rows.ImageId_ClassId})
    for image_id in {r.rsplit("_", 1)[0] for r in rows.ImageId_ClassId}:
        rgb = np.asarray(Image.open(run.test_mask_path(image_id)))
        want = np.zeros((48, 64, 3), np.uint8)
        for k in (1, 2, 3):
            want[spec.decode(rows.EncodedPixels[rows.ImageId_ClassId == f"{image_id}_{k}"].iat[0], (48, 64)).astype(bool)] = colors[k - 1]
        assert np.array_equal(rgb, want), image_id
    assert run.foreign_entries() == []
    write_json(run.postprocess_json, tuned)


def _decode(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)))


def test_mask_png_formats_by_hand():
    label = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)  # multiclass: class ids as pixel values
    ((cls, png),) = mask_pngs(label, "multiclass", "png")
    assert cls is None and np.array_equal(_decode(png), label)
    colors = np.array([[0, 0, 0], [10, 20, 30], [200, 100, 50]], np.uint8)
    ((_, png),) = mask_pngs(label, "multiclass", "color", colors)
    assert _decode(png)[0, 1].tolist() == [10, 20, 30] and _decode(png)[1, 0].tolist() == [200, 100, 50]
    binary = np.array([[[0, 1, 1], [0, 0, 1]]], np.uint8)  # (1, H, W) 0/1
    ((cls, png),) = mask_pngs(binary, "binary", "png")
    assert cls is None and _decode(png).tolist() == [[0, 255, 255], [0, 0, 255]]
    multi = np.stack([binary[0], 1 - binary[0]])
    out = mask_pngs(multi, "multilabel", "png")
    assert [c for c, _ in out] == [1, 2] and np.array_equal(_decode(out[1][1]), (1 - binary[0]) * 255)
    both = np.stack([np.ones((2, 3), np.uint8), binary[0]])  # class 2 painted over class 1 where both are set
    ((_, png),) = mask_pngs(both, "multilabel", "color", colors[1:])
    assert _decode(png)[0, 1].tolist() == [200, 100, 50] and _decode(png)[0, 0].tolist() == [10, 20, 30]
