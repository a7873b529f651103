"""``evaluate --split test`` scores ``data.test_lists`` as ``predict`` decides them, on a tiny list-layout dataset.

Eight 32x32 training images and four held-out ones, three classes drawn as rectangles; one run of 2 folds x 1
epoch. The score is recomputed here by hand (pixels pooled over the held-out images, class by class) from the
run's own predictor, and a second metric goes to a file of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from seg_toolkit.cli import main
from seg_toolkit.config import config_from_dict, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.data import load_list_samples
from seg_toolkit.evaluate import metric_tag
from seg_toolkit.files import read_json
from seg_toolkit.postprocess import apply_postprocess, load_params
from seg_toolkit.predictor import Predictor
from seg_toolkit.run import Run


def _write(root, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    (root / f"{split}annot").mkdir()
    lines = []
    for i in range(n):
        mask = np.zeros((32, 32), np.uint8)
        for cls in (1, 2):
            y, x = rng.integers(0, 20, 2)
            mask[y:y + 12, x:x + 12] = cls
        image = np.stack([mask * 100, 255 - mask * 100, rng.integers(0, 40, (32, 32))], -1).astype(np.uint8)
        name = f"{split}_{i:02d}.png"
        Image.fromarray(image).save(root / split / name)
        Image.fromarray(mask).save(root / f"{split}annot" / name)
        lines.append(f"{split}/{name} {split}annot/{name}")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalsplit")
    root = tmp / "data"
    _write(root, "train", 8, 0)
    _write(root, "test", 4, 1)
    cfg = config_from_dict({
        "experiment": "s", "runs_dir": str(tmp / "runs"),
        "data": {"root": str(root), "task": "multiclass", "num_classes": 3, "layout": "folder",
                 "train_lists": ["train.txt"], "test_lists": ["test.txt"]},
        "folds": {"n_splits": 2, "method": "kfold", "seed": 0},
        "model": {"arch": "scratch_unet", "depth": 2, "base_width": 4},
        "loss": {"ce": 1.0}, "optim": {"lr": 0.05},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0},
        "predict": {"batch_size": 3, "tta": ["identity", "hflip"]},
        "metric": {"name": "miou"},
        "submission": {"per_class": True, "path": str(tmp / "s.csv")},
    })
    run_cv(cfg)
    save_config(cfg, tmp / "s.yaml")
    return cfg, tmp / "s.yaml"


def _by_hand(cfg, metric: str) -> float:
    """miou: per class, intersection over union of the pixels of all held-out images pooled, then the mean;
    pixel_accuracy: the share of pixels whose decided class is the true one."""
    samples = load_list_samples(cfg, ["test.txt"])
    run = Run.of(cfg)
    params = load_params(cfg, run)
    inter, union = np.zeros(3), np.zeros(3)
    right = total = 0
    for s, (image_id, probs, _) in zip(samples, Predictor.from_run(run, batch_size=2, num_workers=0).iter_probs(samples)):
        assert image_id == s.id
        truth = np.asarray(Image.open(s.mask))
        pred = apply_postprocess(probs.numpy(), "multiclass", params)
        pred = pred.argmax(0) if pred.ndim == 3 else pred
        for c in range(3):
            inter[c] += np.sum((pred == c) & (truth == c))
            union[c] += np.sum((pred == c) | (truth == c))
        right += int(np.sum(pred == truth))
        total += truth.size
    return float(np.mean(inter / union)) if metric == "miou" else right / total


def test_the_split_is_scored_as_predict_decides_and_another_metric_keeps_the_runs(trained, capsys):
    cfg, yaml_path = trained
    run = Run.of(cfg)
    assert main(["evaluate", str(yaml_path), "--split", "test"]) == 0
    out = capsys.readouterr().out
    saved = read_json(run.evaluate_json)
    assert saved["split"] == "test" and saved["n_images"] == 4 and saved["metric"] == "miou"
    assert saved["score"] == pytest.approx(_by_hand(cfg, "miou"), abs=1e-9)
    assert f"written to {run.evaluate_json}" in out
    code = main(["evaluate", str(yaml_path), "--split", "test", "--set", "metric.name=pixel_accuracy"])
    out = capsys.readouterr().out
    assert code == 0
    other_cfg = config_from_dict({**yaml.safe_load(yaml_path.read_text()), "metric": {"name": "pixel_accuracy"}})
    tag = metric_tag(other_cfg, run)
    assert tag.startswith("pixel_accuracy-")
    other = run.evaluate_json_for(f"evaluate_test.{tag}")
    assert f"written to {other}" in out
    assert read_json(run.evaluate_json) == saved  # the run's own evaluation is kept
    acc = read_json(other)
    assert acc["metric"] == "pixel_accuracy" and acc["score"] == pytest.approx(_by_hand(cfg, "pixel_accuracy"), abs=1e-9)
    assert run.foreign_entries() == []


def test_a_held_out_id_that_is_also_a_training_id_is_refused(trained, capsys):
    cfg, yaml_path = trained
    leak = Path(cfg.data.root) / "leak.txt"
    leak.write_text("train/train_00.png trainannot/train_00.png\n")
    try:
        code = main(["evaluate", str(yaml_path), "--split", "test", "--set", "data.test_lists=[leak.txt]"])
        err = capsys.readouterr().err
        assert code == 2 and "held-out ids are also training ids" in err and "train_00" in err
    finally:
        leak.unlink()


def test_the_score_before_postprocessing_sees_the_probabilities_on_the_oof_grid(trained, tmp_path):
    """evaluate's "before post-processing" scored the unrounded floats, the submission (and cv.json, tune) their 1/255
    grid: class 1 at 0.5010 over class 0 at 0.5005 won in float, but both are 128/255 on the grid, where the tie goes
    to class 0. With no post-processing the two scores must be the same number."""
    import torch

    from seg_toolkit.evaluate import score_samples

    cfg, _ = trained

    class Fixed:  # a predictor whose every pixel is that near tie, truth class 1
        def iter_predictions(self, samples, target_cfg=None):
            for s in samples:
                probs = torch.tensor([0.5005, 0.5010, 0.0]).reshape(3, 1, 1).expand(3, 4, 5).contiguous()
                yield s.id, probs, None, torch.ones(4, 5, dtype=torch.long)

        def settings(self):
            return {}

    samples = load_list_samples(cfg, ["test.txt"])
    out = score_samples(cfg, Run(tmp_path / "no_postprocess"), Fixed(), samples, cfg, "t")
    assert out["score"] == out["score_before_postprocess"] == 0.0  # every pixel decided class 0 on the grid
