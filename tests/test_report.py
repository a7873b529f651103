"""Run report and learning curves: a tiny trained run, and a hand-made multiclass run with void."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seg_toolkit.config import config_from_dict, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.plots import write_learning_curves
from seg_toolkit.report import _display_size, build_report, compute_report_data
from seg_toolkit.rle import rle_decode

from .conftest import demo_dict

EXTERNAL = re.compile(r"<(script|link|img|iframe)[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.I)
PNGS = ("confusion.png", "learning_curves.png", "overlays_best.png", "overlays_worst.png")


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """A 2-fold x 1-epoch multilabel run on the demo data, with its report."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = config_from_dict(demo_dict(demo_root, runs))
    cv = run_cv(cfg)
    page = build_report(cfg.run_dir, n_examples=3)
    return cfg, cv, page


def test_report_page_is_self_contained_and_complete(trained):
    cfg, cv, page = trained
    assert page == cfg.run_dir / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert not EXTERNAL.search(text), EXTERNAL.search(text).group(0)
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js is inlined, once
    assert text.count("plotly.js v") <= 2
    assert f"{cv['score']:.4f}" in text and f"{cv['baseline_empty']:.4f}" in text
    for score in cv["fold_scores"]:
        assert f"{score:.4f}" in text
    for name in ("class_0", "class_1", "class_2"):
        assert name in text
    assert text.count("src='data:image/png;base64,") == 2  # best and worst overlays


def test_report_pngs_are_valid_and_legible(trained):
    cfg, _, _ = trained
    out = cfg.run_dir / "report"
    sizes = {name: _valid_png(out / name) for name in PNGS}
    w, h = sizes["overlays_best.png"]
    assert h >= 3 * 200 and w >= 3 * 200  # three examples, panels upscaled to >= 200 px


def _independent_multilabel(cfg, run: Path) -> tuple[np.ndarray, dict[str, float], dict[str, bool]]:
    """(C, 2, 2) confusion and per-image dice from the OOF files and train.csv, without the toolkit's readers."""
    df = pd.read_csv(Path(cfg.data.root) / "train.csv", dtype=str, keep_default_na=False)
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    cm = np.zeros((3, 2, 2), np.int64)
    scores, content = {}, {}
    for image_id, fold in zip(folds.id, folds.fold):
        q = np.load(run / f"fold_{fold}" / "oof" / f"{image_id}.npy")
        pred = q.astype(np.float64) / 255 >= cfg.metric.threshold
        rows = df[df.ImageId == image_id].set_index("ClassId").EncodedPixels
        truth = np.stack([rle_decode(rows[str(c + 1)], q.shape[1:], "F") for c in range(3)]).astype(bool)
        dice = []
        for c in range(3):
            t, p = truth[c], pred[c]
            cm[c] += [[(~t & ~p).sum(), (~t & p).sum()], [(t & ~p).sum(), (t & p).sum()]]
            den = t.sum() + p.sum()
            dice.append(1.0 if den == 0 else 2 * (t & p).sum() / den)
        scores[image_id] = float(np.mean(dice))
        content[image_id] = bool(truth.any() or pred.any())
    return cm, scores, content


def test_report_numbers_agree_with_an_independent_computation(trained):
    cfg, cv, _ = trained
    run = cfg.run_dir
    rep = json.loads((run / "report" / "report.json").read_text())
    cm, scores, content = _independent_multilabel(cfg, run)
    assert np.array_equal(np.asarray(rep["confusion"]), cm)
    assert rep["score"] == pytest.approx(cv["score"]) == pytest.approx(np.mean(list(scores.values())))
    assert rep["baseline_empty"] == pytest.approx(cv["baseline_empty"])
    tp, fp, fn = cm[:, 1, 1], cm[:, 0, 1], cm[:, 1, 0]
    for c, row in enumerate(rep["per_class"]):
        union = tp[c] + fp[c] + fn[c]
        assert row["iou"] == (pytest.approx(tp[c] / union) if union else None)
        assert row["true_pixels"] == tp[c] + fn[c] and row["pred_pixels"] == tp[c] + fp[c]
    worst = [e["score"] for e in rep["worst"]]
    assert worst == pytest.approx(sorted(scores.values())[:3])
    for e in rep["best"] + rep["worst"]:
        assert e["score"] == pytest.approx(scores[e["id"]])
    ranked = sorted((content[i], s) for i, s in scores.items())[::-1][:3]  # content first, then score
    assert [e["score"] for e in rep["best"]] == pytest.approx([s for _, s in ranked])


# ----------------------------------------------------------------------------- multiclass with void, made by hand


CLASSES = [("sky", (135, 206, 235)), ("road", (128, 64, 128)), ("car", (0, 0, 142))]


@pytest.fixture
def multiclass_run(tmp_path):
    """A folder-layout multiclass competition with void, and a run folder whose fold 0 has random OOF files."""
    root = tmp_path / "comp"
    rng = np.random.default_rng(3)
    ids = [f"m{i}" for i in range(6)]
    for i in ids:
        (root / "train/images").mkdir(parents=True, exist_ok=True)
        (root / "train/masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(root / "train/images" / f"{i}.png")
        mask = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(10, 14), p=[0.5, 0.25, 0.15, 0.1])
        Image.fromarray(mask).save(root / "train/masks" / f"{i}.png")
    pd.DataFrame([{"id": k, "name": n, "r": c[0], "g": c[1], "b": c[2]} for k, (n, c) in enumerate(CLASSES)]).to_csv(
        root / "classes.csv", index=False)
    cfg = config_from_dict({
        "experiment": "mc", "runs_dir": str(tmp_path / "runs"),
        "data": {"root": str(root), "task": "multiclass", "num_classes": 3, "layout": "folder", "ignore_index": 255,
                 "classes_csv": "classes.csv"},
        "folds": {"n_splits": 2, "method": "kfold"}, "loss": {"ce": 1.0},
    })
    run = cfg.run_dir
    (run / "fold_0" / "oof").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    pd.DataFrame({"id": ids, "fold": [k % 2 for k in range(6)], "stratum": "x"}).to_csv(run / "folds.csv", index=False)
    for i in ids[::2]:
        logits = rng.normal(size=(3, 10, 14))
        p = np.exp(logits) / np.exp(logits).sum(0)
        np.save(run / "fold_0" / "oof" / f"{i}.npy", np.rint(p * 255).astype(np.uint8))
    (run / "fold_0" / "done.json").write_text(json.dumps({"metric": "miou", "oof_score": 0.3, "best_epoch": 1,
                                                          "epochs_run": 1, "n_train": 3, "n_valid": 3}))
    (run / "fold_0" / "metrics.csv").write_text(
        "fold,epoch,lr,train_loss,train_ce,images_per_s,val_loss,val_score,best,seconds\n"
        "0,1,0.001,1.2,1.2,50.0,1.1,0.3,1,0.5\n")
    return cfg, ids[::2]


def test_multiclass_confusion_equals_sklearn(multiclass_run):
    from sklearn.metrics import confusion_matrix

    cfg, ids = multiclass_run
    truth, pred = [], []
    for i in ids:
        q = np.load(cfg.run_dir / "fold_0" / "oof" / f"{i}.npy")
        t = np.asarray(Image.open(Path(cfg.data.root) / "train/masks" / f"{i}.png"))
        keep = t != 255
        truth.append(t[keep])
        pred.append(q.argmax(0)[keep])
    expected = confusion_matrix(np.concatenate(truth), np.concatenate(pred), labels=[0, 1, 2])
    data = compute_report_data(cfg.run_dir, n_examples=2)
    assert np.array_equal(data.confusion, expected)
    assert data.void_pixels == sum(int((np.asarray(Image.open(Path(cfg.data.root) / "train/masks" / f"{i}.png")) == 255).sum())
                                   for i in ids)
    assert data.class_names == ["sky", "road", "car"] and data.n_images == 3
    iou = np.diag(expected) / (expected.sum(0) + expected.sum(1) - np.diag(expected))
    assert data.per_class_iou == pytest.approx(iou.tolist())
    assert data.score == pytest.approx(iou.mean())
    assert any("only fold(s) [0] are complete; [1] are missing" in w for w in data.warnings)


def test_report_warns_about_stale_cv_and_missing_oof(multiclass_run):
    cfg, ids = multiclass_run
    (cfg.run_dir / "fold_0" / "oof" / f"{ids[0]}.npy").unlink()
    (cfg.run_dir / "cv.json").write_text(json.dumps({"metric": "miou", "score": 0.99, "folds": [0]}))
    data = compute_report_data(cfg.run_dir, n_examples=1)
    assert data.n_images == 2 and data.missing == [ids[0]]
    assert any("have no OOF file" in w for w in data.warnings)
    assert any("cv.json says 0.990000 but the OOF files score" in w for w in data.warnings)
    assert len(data.best) == len(data.worst) == 1


def test_multiclass_report_page(multiclass_run):
    cfg, _ = multiclass_run
    page = build_report(cfg.run_dir, n_examples=2)
    text = page.read_text(encoding="utf-8")
    assert not EXTERNAL.search(text)
    for name, _ in CLASSES:
        assert name in text
    for name in PNGS:
        _valid_png(page.parent / name)
    with Image.open(page.parent / "overlays_worst.png") as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] >= 2 * 200  # 10 px tall images are upscaled for legibility
    # the truth panels show the classes' own colours (outlines drawn at full colour)
    for _, colour in CLASSES:
        assert (arr == colour).all(-1).any()


def test_report_without_examples_and_missing_run(multiclass_run, tmp_path):
    cfg, _ = multiclass_run
    page = build_report(cfg.run_dir, n_examples=0)
    assert "Best OOF images" not in page.read_text(encoding="utf-8")
    assert not (page.parent / "overlays_best.png").exists()
    with pytest.raises(FileNotFoundError, match="config.yaml: not found"):
        build_report(tmp_path / "nothing")


# ----------------------------------------------------------------------------- learning curves


def test_learning_curves_files(trained):
    cfg, _, _ = trained
    paths = write_learning_curves(cfg.run_dir)
    assert [p.name for p in paths] == ["learning_curves.html", "learning_curves.png"]
    text = paths[0].read_text(encoding="utf-8")
    assert not EXTERNAL.search(text) and "fold 0" in text and "fold 1" in text
    _valid_png(paths[1])


def test_learning_curves_tolerate_partial_and_empty_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    paths = write_learning_curves(run)  # nothing logged yet
    assert all(p.stat().st_size > 0 for p in paths)
    (run / "fold_2").mkdir()
    (run / "fold_2" / "metrics.csv").write_text(
        "fold,epoch,lr,train_loss,images_per_s,val_loss,val_score,ema_val_score,best,seconds\n"
        "2,1,0.001,0.9,10,0.8,0.4,0.35,1,1.0\n"
        "2,2,0.0005,0.7,10,0.75,0.5,0.45,1,1.0\n"
        "2,3,0.0")  # a row being written right now
    from seg_toolkit.plots import learning_curves, read_metrics

    df = read_metrics(run)
    assert df.epoch.tolist() == [1, 2]  # the partial row is dropped
    fig = learning_curves(run)
    names = {t.name for t in fig.data}
    assert {"fold 2", "fold 2 ema"} <= names
    write_learning_curves(run)
    _valid_png(run / "learning_curves.png")


def test_display_size():
    assert _display_size(48, 64) == (240, 320)  # x5, nearest neighbour
    assert _display_size(101, 101) == (202, 202)
    assert _display_size(256, 1600) == (256, 1600)
    assert _display_size(4000, 3000) == (512, 384)
