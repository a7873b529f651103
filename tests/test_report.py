"""Run report and learning curves, on run folders made by hand (no training): a multilabel run on
the demo data, a multiclass run with void, an ensemble run; the OOF summary against an
independent computation."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from seg_toolkit.config import ConfigError, config_from_dict, save_config
from seg_toolkit.data import load_train_samples
from seg_toolkit.plots import write_learning_curves
from seg_toolkit.report import build_report, compute_report_data, write_oof_summary
from seg_toolkit.report.overlays import display_size
from seg_toolkit.rle import rle_decode
from seg_toolkit.run import Run

from .conftest import demo_dict

EXTERNAL = re.compile(r"<(script|link|img|iframe)[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.I)
PNGS = ("confusion.png", "learning_curves.png", "overlays_best.png", "overlays_worst.png")
METRICS_CSV = ("fold,epoch,lr,train_loss,val_loss,val_score,best,seconds\n"
               "{k},1,0.001,0.9,0.8,0.40,1,1.0\n{k},2,0.0005,0.7,0.75,0.45,1,1.0\n")


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)]


# ----------------------------------------------------------------------------- a multilabel run on the demo data


def _truth(root: Path, image_id: str, hw: tuple[int, int]) -> np.ndarray:
    """(3, H, W) bool truth of a demo image, decoded from train.csv without the toolkit's readers."""
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    rows = df[df.ImageId == image_id].set_index("ClassId").EncodedPixels
    return np.stack([rle_decode(rows[str(c + 1)], hw, "F") for c in range(3)]).astype(bool)


def _multilabel_run(root: Path, runs: Path, seed: int = 0):
    """A 2-fold run folder on the demo data: noisy OOF probabilities around the truth, done.json,
    metrics.csv and a cv.json scored independently; returns (cfg, independent numbers)."""
    cfg = config_from_dict(demo_dict(root, runs))
    run = Run.of(cfg)
    run.dir.mkdir(parents=True)
    save_config(cfg, run.config_yaml)
    ids = [s.id for s in load_train_samples(cfg)]
    folds = {i: k % 2 for k, i in enumerate(ids)}
    pd.DataFrame({"id": ids, "fold": [folds[i] for i in ids]}).to_csv(run.folds_csv, index=False)
    rng = np.random.default_rng(seed)
    run.oof_dir.mkdir()
    cm = np.zeros((3, 2, 2), np.int64)
    scores, base, content, fold_scores = {}, {}, {}, {0: [], 1: []}
    for i in ids:
        t = _truth(root, i, (48, 64))
        p = np.clip(0.45 * t + rng.uniform(0, 0.3, (3, 1, 1)) + rng.uniform(0, 0.25, t.shape), 0, 1)
        q = np.rint(p * 255).astype(np.uint8)
        np.save(run.oof_path(i), q)
        pred = q.astype(np.float64) / 255 >= cfg.metric.threshold
        dice, empty = [], []
        for c in range(3):
            tc, pc = t[c], pred[c]
            cm[c] += [[(~tc & ~pc).sum(), (~tc & pc).sum()], [(tc & ~pc).sum(), (tc & pc).sum()]]
            den = tc.sum() + pc.sum()
            dice.append(1.0 if den == 0 else 2 * (tc & pc).sum() / den)
            empty.append(0.0 if tc.any() else 1.0)
        scores[i], base[i] = float(np.mean(dice)), float(np.mean(empty))
        content[i] = bool(t.any() or pred.any())
        fold_scores[folds[i]].append(scores[i])
    for k in (0, 1):
        run.fold_dir(k).mkdir()
        run.done_json(k).write_text(json.dumps({"oof_score": float(np.mean(fold_scores[k])), "best_val_score": 0.45,
                                                "best_epoch": 2, "epochs_run": 2, "n_train": 6, "n_valid": 6}))
        run.metrics_csv(k).write_text(METRICS_CSV.format(k=k))
    fs = [float(np.mean(fold_scores[k])) for k in (0, 1)]
    cv = {"metric": "dice", "score": float(np.mean(list(scores.values()))), "folds": [0, 1], "fold_scores": fs,
          "fold_mean": float(np.mean(fs)), "fold_std": float(np.std(fs)),
          "baseline_empty": float(np.mean(list(base.values())))}
    run.cv_json.write_text(json.dumps(cv))
    return cfg, {"cm": cm, "scores": scores, "content": content, "cv": cv, "folds": folds}


@pytest.fixture(scope="module")
def multilabel(demo_root, tmp_path_factory):
    """The hand-made multilabel run with its summary (3 examples) and its report."""
    cfg, ref = _multilabel_run(demo_root, tmp_path_factory.mktemp("runs"))
    summary = write_oof_summary(Run.of(cfg), cfg, load_train_samples(cfg), n_examples=3)
    page = build_report(cfg.run_dir, n_examples=3)
    return cfg, ref, summary, page


def test_oof_summary_agrees_with_an_independent_computation(multilabel):
    cfg, ref, s, _ = multilabel
    assert json.loads(Run.of(cfg).oof_summary_json.read_text()) == s  # what was written is what was returned
    cm, scores, content = ref["cm"], ref["scores"], ref["content"]
    assert np.array_equal(np.asarray(s["confusion"]), cm)
    assert s["score"] == pytest.approx(ref["cv"]["score"])
    assert s["baseline_empty"] == pytest.approx(ref["cv"]["baseline_empty"])
    assert s["n_images"] == 12 and s["folds"] == [0, 1] and s["n_unscored"] == 0 and s["unreadable"] == []
    tp, fp, fn = cm[:, 1, 1], cm[:, 0, 1], cm[:, 1, 0]
    assert s["true_pixels"] == (tp + fn).tolist() and s["pred_pixels"] == (tp + fp).tolist()
    assert s["per_class_iou"] == pytest.approx((tp / (tp + fp + fn)).tolist())
    assert s["class_names"] == ["class_1", "class_2", "class_3"] and len(s["class_colors"]) == 3
    assert [e["score"] for e in s["worst"]] == pytest.approx(sorted(scores.values())[:3])
    ranked = sorted((content[i], sc) for i, sc in scores.items())[::-1][:3]  # content first, then score
    assert [e["score"] for e in s["best"]] == pytest.approx([sc for _, sc in ranked])
    for e in s["best"] + s["worst"]:
        assert e["score"] == pytest.approx(scores[e["id"]]) and e["fold"] == ref["folds"][e["id"]]


def test_cv_reads_each_oof_file_once_for_cv_json_and_the_summary(demo_root, tmp_path, monkeypatch):
    """compute_cv scored every OOF file three times (all images, its fold, then the report's summary) and read each
    twice; one pass now gives cv.json's score and fold scores and oof_summary.json, which the report finds fresh."""
    from seg_toolkit.cv import compute_cv

    cfg, ref = _multilabel_run(demo_root, tmp_path / "runs")
    run = Run.of(cfg)
    reads: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda p, *a, **k: reads.append(Path(p).name) or real_load(p, *a, **k))
    cv = compute_cv(cfg, run)
    assert sorted(reads) == sorted(run.oof_path(i).name for i in ref["folds"])  # 12 files, each once
    assert cv["score"] == pytest.approx(ref["cv"]["score"]) and cv["n_images"] == 12
    assert cv["fold_scores"] == pytest.approx(ref["cv"]["fold_scores"])  # each fold on its own 6 images
    assert cv["baseline_empty"] == pytest.approx(ref["cv"]["baseline_empty"])
    s = json.loads(run.oof_summary_json.read_text())
    assert s["score"] == cv["score"] and s["fold_scores"] == cv["fold_scores"] and s["folds"] == cv["folds"] == [0, 1]
    assert compute_report_data(run.dir).warnings == []  # the summary is not older than cv.json


def test_report_page_is_self_contained_and_complete(multilabel):
    cfg, ref, _, page = multilabel
    assert page == Run.of(cfg).report_dir / "index.html"
    text = page.read_text(encoding="utf-8")
    assert not EXTERNAL.search(text) and "<script" not in text
    cv = ref["cv"]
    assert f"{cv['score']:.4f}" in text and f"{cv['baseline_empty']:.4f}" in text
    for score in cv["fold_scores"]:
        assert f"{score:.4f}" in text
    for name in ("class_1", "class_2", "class_3", "Learning curves", "Best OOF images", "Worst OOF images"):
        assert name in text
    # each chart drawn once: the pictures in the page are byte for byte the PNG files beside it
    embedded = _embedded_pngs(text)
    assert embedded == [(page.parent / name).read_bytes() for name in PNGS]
    w, h = _valid_png(page.parent / "overlays_best.png")
    assert h >= 3 * 200 and w >= 3 * 200  # three examples, panels upscaled to >= 200 px
    rep = json.loads((page.parent / "report.json").read_text())
    assert rep["score"] == pytest.approx(cv["score"]) and rep["data_problem"] is None and rep["warnings"] == []


def test_report_from_the_run_folder_alone(demo_root, tmp_path, caplog):
    import shutil

    from seg_toolkit.cli import main

    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    cfg, ref = _multilabel_run(data, tmp_path / "runs")
    run = Run.of(cfg)
    write_oof_summary(run, cfg, load_train_samples(cfg))
    shutil.rmtree(data)  # the data folder is gone

    page = build_report(run.dir)
    text = page.read_text(encoding="utf-8")
    assert f"{ref['cv']['score']:.4f}" in text and f"{ref['cv']['baseline_empty']:.4f}" in text
    sentence = f"The best and worst OOF images are not shown: the training data folder {data.resolve()} (data.root) is not there"
    assert sentence in text
    for name in ("Per class", "Confusion", "Learning curves", "class_2"):
        assert name in text
    assert len(_embedded_pngs(text)) == 2  # confusion and learning curves
    assert not (page.parent / "overlays_best.png").exists()
    best = json.loads(run.oof_summary_json.read_text())["best"]
    assert best[0]["id"] in text  # the examples are still listed, by id

    caplog.clear()
    assert main(["report", str(run.dir)]) == 0  # the command works and says so in one sentence
    assert any(sentence in r.getMessage() for r in caplog.records)


def test_report_without_summary_or_data_says_what_to_run(demo_root, tmp_path, capsys):
    import shutil

    from seg_toolkit.cli import main
    from seg_toolkit.data import DataError

    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    cfg, _ = _multilabel_run(data, tmp_path / "runs")
    run = Run.of(cfg)
    page = build_report(run.dir, n_examples=1)  # no summary yet, data readable: the report writes it
    assert run.oof_summary_json.is_file() and "Best OOF images" in page.read_text(encoding="utf-8")

    run.oof_summary_json.unlink()
    shutil.rmtree(data)
    with pytest.raises(DataError, match=r"oof_summary.json: not found .* is not there; restore data.root"):
        build_report(run.dir)
    assert main(["report", str(run.dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "seg-toolkit cv" in err and "Traceback" not in err


def test_stale_summary_is_remade_with_data_and_warned_about_without(demo_root, tmp_path):
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    cfg, ref = _multilabel_run(data, tmp_path / "runs")
    run = Run.of(cfg)
    write_oof_summary(run, cfg, load_train_samples(cfg))
    t = run.oof_summary_json.stat().st_mtime
    os.utime(run.oof_summary_json, (t - 100, t - 100))  # older than cv.json and the OOF files

    d = compute_report_data(run.dir)  # data there: made again, no warning
    assert run.oof_summary_json.stat().st_mtime > t - 50 and d.warnings == []

    os.utime(run.oof_summary_json, (t - 100, t - 100))
    shutil.rmtree(data)
    d = compute_report_data(run.dir)  # data gone: the old summary, with a warning
    assert d.score == pytest.approx(ref["cv"]["score"])
    (w,) = d.warnings
    assert "oof_summary.json is older than what it summarises (cv.json is newer)" in w
    assert w in build_report(run.dir).read_text(encoding="utf-8")


def test_ensemble_run_report(multilabel, tmp_path):
    """An ensemble run: ensemble.json, OOF, cv.json and the summary; no fold folders, no metrics.csv."""
    import shutil

    cfg, ref, _, _ = multilabel
    member = Run.of(cfg)
    ens = Run(tmp_path / "ens")
    ens.dir.mkdir()
    for src, dst in ((member.config_yaml, ens.config_yaml), (member.folds_csv, ens.folds_csv)):
        shutil.copyfile(src, dst)
    shutil.copytree(member.oof_dir, ens.oof_dir)
    # as build_ensemble names them: ensemble.json relative to the ensemble's folder, cv.json by path; matched by
    # name the two never met, and the page showed the member's own cv.json score (other folds' images too)
    members = [{"run": os.path.relpath(member.dir, ens.dir), "weight": 0.7}, {"run": "../other", "weight": 0.3}]
    ens.ensemble_json.write_text(json.dumps({"members": members, "space": "logit", "folds": [0, 1]}))
    cv = {**ref["cv"], "ensemble": {"members": [{"run": str(member.dir), "weight": 0.7, "score": 0.8123},
                                                {"run": "runs/other", "weight": 0.3, "score": 0.7011}]}}
    ens.cv_json.write_text(json.dumps(cv))
    write_oof_summary(ens, cfg, load_train_samples(cfg))

    page = build_report(ens.dir, n_examples=2)
    text = page.read_text(encoding="utf-8")
    assert f"Ensemble of runs {members[0]['run']}, ../other (weights 0.7, 0.3; merged in logit space)" in text
    assert "0.8123" in text and "0.7011" in text and f"{cv['score']:.4f}" in text and "its own cv.json" not in text
    assert "member CV score on the ensemble&#x27;s OOF images" in text or "member CV score on the ensemble's OOF images" in text
    assert "Learning curves" not in text and not (page.parent / "learning_curves.png").exists()
    assert "Best OOF images" in text and "Traceback" not in text
    assert len(_embedded_pngs(text)) == 3  # confusion, best and worst overlays
    assert "In-sample" not in text  # weights given or equal: nothing was fitted to these images
    # searched weights kept: the CV is the best of the weightings tried on these same images (the visual audit: the
    # page said nothing where cv.json and the CLI did)
    search = {"searched": 11, "in_sample": True, "cross_half_score": 0.7838}
    ens.ensemble_json.write_text(json.dumps({"members": members, "space": "logit", "folds": [0, 1], "weights_search": search}))
    text = build_report(ens.dir, n_examples=0).read_text(encoding="utf-8")
    assert ("In-sample: the ensemble&#x27;s weights were chosen on these OOF images among 11 weightings" in text
            or "In-sample: the ensemble's weights were chosen on these OOF images among 11 weightings" in text)
    assert "the other half scores 0.7838" in text


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
        "folds": {"n_splits": 2, "method": "kfold"}, "loss": {"ce": 1.0}, "submission": {"per_class": True},
    })
    run = Run.of(cfg)
    run.fold_dir(0).mkdir(parents=True)
    run.oof_dir.mkdir()
    save_config(cfg, run.config_yaml)
    pd.DataFrame({"id": ids, "fold": [k % 2 for k in range(6)], "stratum": "x"}).to_csv(run.folds_csv, index=False)
    for i in ids[::2]:
        logits = rng.normal(size=(3, 10, 14))
        p = np.exp(logits) / np.exp(logits).sum(0)
        np.save(run.oof_path(i), np.rint(p * 255).astype(np.uint8))
    run.done_json(0).write_text(json.dumps({"metric": "miou", "oof_score": 0.3, "best_epoch": 1,
                                            "epochs_run": 1, "n_train": 3, "n_valid": 3}))
    run.metrics_csv(0).write_text(
        "fold,epoch,lr,train_loss,train_ce,images_per_s,val_loss,val_score,best,seconds\n"
        "0,1,0.001,1.2,1.2,50.0,1.1,0.3,1,0.5\n")
    return cfg, ids[::2]


def _mask(cfg, i: str) -> np.ndarray:
    return np.asarray(Image.open(Path(cfg.data.root) / "train/masks" / f"{i}.png"))


def test_multiclass_confusion_equals_sklearn(multiclass_run):
    from sklearn.metrics import confusion_matrix

    cfg, ids = multiclass_run
    truth, pred = [], []
    for i in ids:
        q = np.load(Run.of(cfg).oof_path(i))
        t = _mask(cfg, i)
        keep = t != 255
        truth.append(t[keep])
        pred.append(q.argmax(0)[keep])
    expected = confusion_matrix(np.concatenate(truth), np.concatenate(pred), labels=[0, 1, 2])
    data = compute_report_data(cfg.run_dir, n_examples=2)  # no summary yet: written from the data
    assert Run.of(cfg).oof_summary_json.is_file()
    assert np.array_equal(data.confusion, expected)
    assert data.void_pixels == sum(int((_mask(cfg, i) == 255).sum()) for i in ids)
    assert data.class_names == ["sky", "road", "car"] and data.n_images == 3
    assert data.class_colors.tolist() == [list(c) for _, c in CLASSES]
    iou = np.diag(expected) / (expected.sum(0) + expected.sum(1) - np.diag(expected))
    assert data.per_class_iou == pytest.approx(iou.tolist())
    assert data.score == pytest.approx(iou.mean())
    assert any("only fold(s) [0] are complete; [1] are missing" in w for w in data.warnings)


def test_multiclass_best_overlays_show_images_with_something_in_them_first(multiclass_run):
    """An image all class 0 (background) in truth and prediction scores 1.0: the 'best' overlays were such blank
    images; as for binary tasks, an image with a class other than 0 comes first."""
    cfg, ids = multiclass_run
    run = Run.of(cfg)
    Image.fromarray(np.zeros((10, 14), np.uint8)).save(Path(cfg.data.root) / "train/masks" / f"{ids[0]}.png")
    blank = np.zeros((3, 10, 14), np.uint8)
    blank[0] = 255
    np.save(run.oof_path(ids[0]), blank)
    data = compute_report_data(run.dir, n_examples=3)
    scores = {ex.id: ex.score for ex in data.best}
    assert scores[ids[0]] == pytest.approx(1.0) and max(scores.values()) == scores[ids[0]]  # the top score, yet
    assert [ex.id for ex in data.best][-1] == ids[0] and data.best[0].id != ids[0]  # shown after the others


def test_report_warns_about_stale_cv_and_names_a_missing_oof_file(multiclass_run):
    cfg, ids = multiclass_run
    run = Run.of(cfg)
    run.cv_json.write_text(json.dumps({"metric": "miou", "score": 0.99, "folds": [0]}))
    data = compute_report_data(run.dir, n_examples=1)
    assert any("cv.json says 0.990000 but the OOF files score" in w for w in data.warnings)
    assert len(data.best) == len(data.worst) == 1
    run.oof_path(ids[0]).unlink()
    run.oof_summary_json.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{ids[0]}.npy: OOF file of id '{ids[0]}' \(fold 0, completed\) not found"):
        compute_report_data(run.dir)


def test_report_warns_about_post_processing_tuned_on_other_oof_files(multiclass_run):
    """tune keeps the OOF files' score at tuning time (cv_json_score); OOF files remade since score otherwise."""
    cfg, _ = multiclass_run
    run = Run.of(cfg)
    score = compute_report_data(run.dir, n_examples=1).score
    for was, stale in ((score, False), (score + 0.01, True)):
        run.postprocess_json.write_text(json.dumps({"folds": [0], "cv_json_score": was, "before": 0.1, "after": 0.2,
                                                    "params": {}}))
        warnings = compute_report_data(run.dir, n_examples=1).warnings
        said = [w for w in warnings if w.startswith("postprocess.json was tuned on OOF files that scored")]
        assert said == ([f"postprocess.json was tuned on OOF files that scored {was:.6f} and these score {score:.6f}: its "
                         "parameters (and the tuned score shown) fit other probabilities; run `seg-toolkit tune` (predict "
                         "applies them as they are)"] if stale else [])
    # tuned after fold 0 alone, then fold 1 trained without tuning: the page showed its tuned score as these files'
    run.postprocess_json.write_text(json.dumps({"folds": [1], "cv_json_score": score, "before": 0.1, "after": 0.2,
                                                "params": {}}))
    warnings = compute_report_data(run.dir, n_examples=1).warnings
    assert "postprocess.json was tuned on the OOF files of fold(s) [1], these are of fold(s) [0]" in " ".join(warnings)
    run.postprocess_json.unlink()


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
    # the class table's swatches are the colours drawn: grey for a background the overlays leave undrawn (it was red)
    from seg_toolkit.report.overlays import UNDRAWN_GREY, painted_classes

    swatches = re.findall(r"class='swatch' style='background:rgb\((\d+), (\d+), (\d+)\)'", text)
    drawn = painted_classes(cfg, [n for n, _ in CLASSES], np.array([c for _, c in CLASSES]))
    assert [tuple(map(int, sw)) for sw in swatches[:len(CLASSES)]] == [
        tuple(c) if p else UNDRAWN_GREY for (_, c), p in zip(CLASSES, drawn)]
    assert "<div class='scroll'><table>" in text and "best.pt val score (no TTA)" in text


def test_multiclass_words_say_what_the_argmax_and_its_baseline_are(multiclass_run, capsys):
    """Class 0 here is sky, a class like the others: the baseline is all sky, not "predicting nothing"; an argmax has
    no threshold or empty gate, so neither the page, the metric's settings nor `tune`'s print name them (audit)."""
    from seg_toolkit.commands import _print_tune
    from seg_toolkit.cv import compute_cv
    from seg_toolkit.tune import tune_postprocess

    cfg, _ = multiclass_run
    cv = compute_cv(cfg)
    assert cv["baseline"] == "all-sky baseline"
    report = tune_postprocess(cfg)
    _print_tune(report)
    out = capsys.readouterr().out
    assert "after min_area" in out and "after threshold" not in out and "after empty_gate" not in out
    assert "'class_weight'" in out and "'threshold'" not in out and "'empty_gate'" not in out
    text = build_report(cfg.run_dir, n_examples=2).read_text(encoding="utf-8")
    assert "all-sky baseline" in text and "all-empty" not in text and "predicting nothing" not in text
    assert "<td class='l'>miou</td>" in text  # no empty_score or threshold beside a dataset-level argmax metric
    assert "postprocess.json&#x27;s class weights and minimum areas on top" in text
    assert "'threshold'" not in text and "&#x27;threshold&#x27;" not in text


def test_a_baseline_named_after_a_class_with_dollars_or_markup_draws(demo_root, tmp_path):
    """cv.json's baseline names class 0: 'all-cost_$5_$10 baseline' went into a matplotlib annotation unquoted (mathtext
    raised, and the report with it) and '<i>' into the learning curves' HTML unescaped (review)."""
    cfg, _ = _multilabel_run(demo_root, tmp_path / "runs")
    run = Run.of(cfg)
    cv = json.loads(run.cv_json.read_text())
    run.cv_json.write_text(json.dumps({**cv, "baseline": "all-<i>cost_$5_$10</i> baseline"}))
    html_path, png = write_learning_curves(run.dir)
    assert "all-&lt;i&gt;cost_$5_$10&lt;/i&gt; baseline" in html_path.read_text(encoding="utf-8") and png.is_file()


def test_params_in_use_by_hand():
    from seg_toolkit.postprocess import params_in_use

    p = {"threshold": [0.4], "min_area": [10], "empty_gate": [None], "gate_source": ["max_prob"], "class_weight": [1.0],
         "split_seed": [None], "split_by": "distance", "min_area_to": "background"}
    assert params_in_use(p, "binary") == {"threshold": [0.4], "min_area": [10], "empty_gate": [None]}
    gated = {**p, "empty_gate": [0.7], "split_seed": [0.9]}
    assert list(params_in_use(gated, "binary")) == ["threshold", "min_area", "empty_gate", "gate_source", "split_seed",
                                                    "split_by"]
    assert params_in_use(p, "multiclass") == {"class_weight": [1.0], "min_area": [10], "min_area_to": "background"}


def test_report_without_examples_and_missing_run(multiclass_run, tmp_path):
    cfg, _ = multiclass_run
    build_report(cfg.run_dir, n_examples=1)
    page = build_report(cfg.run_dir, n_examples=0)
    assert "Best OOF images" not in page.read_text(encoding="utf-8")
    assert not (page.parent / "overlays_best.png").exists()  # the earlier report's overlays are gone
    with pytest.raises(ConfigError, match="config.yaml: not found"):
        build_report(tmp_path / "nothing")


# ----------------------------------------------------------------------------- learning curves


def test_learning_curves_files(multilabel):
    cfg, _, _, _ = multilabel
    paths = write_learning_curves(cfg.run_dir)
    assert paths == [Run.of(cfg).learning_curves_html, Run.of(cfg).learning_curves_png]
    text = paths[0].read_text(encoding="utf-8")
    assert not EXTERNAL.search(text) and "fold 0" in text and "fold 1" in text
    assert _embedded_pngs(text) == [paths[1].read_bytes()]  # the page shows the PNG file itself
    assert "0.4500" in text  # each fold's best validation score, in the table under the chart
    _valid_png(paths[1])


def test_learning_curves_tolerate_partial_and_empty_runs(tmp_path):
    run = Run(tmp_path / "run")
    run.dir.mkdir()
    paths = write_learning_curves(run.dir)  # nothing logged yet
    assert all(p.stat().st_size > 0 for p in paths) and "No epochs logged yet" in paths[0].read_text()
    run.fold_dir(2).mkdir()
    run.metrics_csv(2).write_text(
        "fold,epoch,lr,train_loss,images_per_s,val_loss,val_score,ema_val_score,best,seconds\n"
        "2,1,0.001,0.9,10,0.8,0.4,0.35,1,1.0\n"
        "2,2,0.0005,0.7,10,0.75,0.5,0.45,1,1.0\n"
        "2,3,0.0")  # a row being written right now
    from seg_toolkit.plots import fold_rows, learning_curves, read_metrics

    df = read_metrics(run.dir)
    assert df.epoch.tolist() == [1, 2] and df.fold.tolist() == [2, 2]  # the partial row is dropped
    assert fold_rows(df) == [{"fold": 2, "epochs": 2, "best_epoch": 2, "best_val_score": 0.5,
                              "last_train_loss": 0.7, "last_val_loss": 0.75}]
    fig = learning_curves(run.dir)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fold 2"]
    ax_score = fig.axes[1]
    assert len(ax_score.lines) == 3  # validation score, best-epoch star, EMA score (dotted)
    assert ax_score.lines[2].get_linestyle() == ":"
    write_learning_curves(run.dir)
    _valid_png(run.learning_curves_png)


def test_learning_curves_take_the_deep_supervision_term_out_of_the_training_loss(tmp_path, demo_root):
    from seg_toolkit.plots import learning_curves

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", model={"arch": "scratch_unet", "depth": 2, "base_width": 4,
                                                                          "deep_supervision": 0.4}))
    run = Run.of(cfg)
    run.fold_dir(0).mkdir(parents=True)
    save_config(cfg, run.config_yaml)
    run.metrics_csv(0).write_text(
        "fold,epoch,lr,train_loss,train_bce,train_aux,images_per_s,val_loss,val_score,best,seconds\n"
        "0,1,0.001,1.0,0.6,1.0,10,0.7,0.4,1,1.0\n"
        "0,2,0.001,0.8,0.4,0.5,10,0.5,0.5,1,1.0\n")
    fig = learning_curves(run.dir)
    train_line = fig.axes[0].lines[0]
    assert train_line.get_ydata().tolist() == pytest.approx([1.0 - 0.4 * 1.0, 0.8 - 0.4 * 0.5])
    assert "less 0.4 x aux" in fig.axes[0].get_title()
    run.metrics_csv(0).write_text("fold,epoch,lr,train_loss,images_per_s,val_loss,val_score,best,seconds\n"
                                  "0,1,0.001,1.0,10,0.7,0.4,1,1.0\n")  # no aux column: the loss as logged
    fig = learning_curves(run.dir)
    assert fig.axes[0].lines[0].get_ydata().tolist() == [1.0] and "aux" not in fig.axes[0].get_title()


def test_display_size():
    assert display_size(48, 64) == (240, 320)  # x5, nearest neighbour
    assert display_size(101, 101) == (202, 202)
    assert display_size(256, 1600) == (256, 1600)
    assert display_size(4000, 3000) == (512, 384)


# ----------------------------------------------------------------------------- a legend of many classes

CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@pytest.mark.parametrize("hw", [(32, 64), (48, 12)])  # wide panels, and panels narrower than the legend
def test_legend_of_19_classes_stays_above_the_panels(tmp_path, hw):
    from seg_toolkit.report.overlays import overlays_figure

    root = tmp_path / "comp"
    rng = np.random.default_rng(0)
    ids = ["a", "b"]
    for i in ids:
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "lbl").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        mask = (np.arange(hw[0] * hw[1]).reshape(hw) % 20).astype(np.uint8)
        mask[mask == 19] = 255
        Image.fromarray(mask).save(root / "lbl" / f"{i}.png")
    cfg = config_from_dict({
        "experiment": "c19", "runs_dir": str(tmp_path / "runs"),
        "data": {"root": str(root), "task": "multiclass", "num_classes": 19, "layout": "folder", "ignore_index": 255,
                 "class_names": CITYSCAPES, "train_images": "img", "train_masks": "lbl"},
        "folds": {"n_splits": 2, "method": "kfold"}, "loss": {"ce": 1.0}, "submission": {"per_class": True}})
    run = Run.of(cfg)
    run.fold_dir(0).mkdir(parents=True)
    run.oof_dir.mkdir()
    save_config(cfg, run.config_yaml)
    pd.DataFrame({"id": ids, "fold": [0, 1], "stratum": "x"}).to_csv(run.folds_csv, index=False)
    p = rng.dirichlet(np.ones(19), size=hw).transpose(2, 0, 1)
    np.save(run.oof_path("a"), np.rint(p * 255).astype(np.uint8))
    run.done_json(0).write_text(json.dumps({"metric": "miou", "oof_score": 0.1, "best_epoch": 1, "epochs_run": 1,
                                            "n_train": 1, "n_valid": 1}))
    data = compute_report_data(run.dir, n_examples=1)
    fig = overlays_figure(data, data.best, "best")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert len(legend.get_texts()) == 20  # 19 classes and void
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width  # inside the figure
    for ax in fig.axes:  # and above every panel and its title
        assert box.y0 > ax.get_tightbbox(renderer).y1
    for text in fig.texts:  # and clear of the example headers
        if text.get_text().startswith("#"):
            assert box.y0 > text.get_window_extent(renderer).y1


def test_overlay_blocks_are_as_tall_as_their_own_images(tmp_path):
    """Portrait and landscape photos in one figure (Oxford pets): each example's block is as tall as its own
    panels and its three panels sit side by side at their own width, so a landscape photo below a portrait
    one leaves no blank band (each block used to be as tall as the tallest image, and as wide as the widest)."""
    from seg_toolkit.report.overlays import overlays_figure

    root = tmp_path / "comp"
    rng = np.random.default_rng(0)
    sizes = {"tall": (96, 48), "flat": (40, 96)}
    for d in ("img", "lbl"):
        (root / d).mkdir(parents=True)
    for i, hw in sizes.items():
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray((np.arange(hw[0] * hw[1]).reshape(hw) % 3).astype(np.uint8)).save(root / "lbl" / f"{i}.png")
    cfg = config_from_dict({
        "experiment": "shapes", "runs_dir": str(tmp_path / "runs"),
        "data": {"root": str(root), "task": "multiclass", "num_classes": 3, "layout": "folder",
                 "train_images": "img", "train_masks": "lbl"},
        "folds": {"n_splits": 2, "method": "kfold"}, "loss": {"ce": 1.0}, "submission": {"per_class": True}})
    run = Run.of(cfg)
    for k in (0, 1):
        run.fold_dir(k).mkdir(parents=True)
        run.done_json(k).write_text(json.dumps({"metric": "miou", "oof_score": 0.1, "best_epoch": 1, "epochs_run": 1,
                                                "n_train": 1, "n_valid": 1}))
    run.oof_dir.mkdir()
    save_config(cfg, run.config_yaml)
    pd.DataFrame({"id": list(sizes), "fold": [0, 1], "stratum": "x"}).to_csv(run.folds_csv, index=False)
    for i, hw in sizes.items():
        p = rng.dirichlet(np.ones(3), size=hw).transpose(2, 0, 1)
        np.save(run.oof_path(i), np.rint(p * 255).astype(np.uint8))
    data = compute_report_data(run.dir, n_examples=2)
    examples = data.best + [e for e in data.worst if e.id not in {x.id for x in data.best}]
    assert sorted(e.id for e in examples) == ["flat", "tall"]
    fig = overlays_figure(data, examples, "both")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert len(boxes) == 6
    heads = sorted((t.get_window_extent(renderer) for t in fig.texts if t.get_text().startswith("#")), key=lambda b: -b.y0)
    for i, ex in enumerate(examples):
        row = boxes[3 * i: 3 * i + 3]
        h, w = row[0].height, row[0].width
        assert {round(b.height) for b in row} == {round(h)} and {round(b.y0) for b in row} == {round(row[0].y0)}
        assert abs(h / w - sizes[ex.id][0] / sizes[ex.id][1]) < 0.05  # the image's own aspect
        gaps = [row[j + 1].x0 - row[j].x1 for j in (0, 1)]
        assert gaps[0] == pytest.approx(gaps[1], abs=1) and 0 < gaps[0] < 20  # packed side by side
        assert heads[i].y0 > max(b.y1 for b in row)  # the header above its panels
        if i + 1 < len(examples):  # the next block starts just below this one's panels (titles and a gap)
            assert 0 < row[0].y0 - heads[i + 1].y1 < 30


def test_report_written_with_a_class_never_present_does_not_crash(multiclass_run):
    """The report made the summary itself (absent, stale, or more examples asked) and used it as written, nulls and
    all: a class in neither truth nor prediction (IoU NaN) failed with float(None)."""
    cfg, ids = multiclass_run
    run = Run.of(cfg)
    for i in ids:  # class 2 (car) in no mask and never predicted
        path = Path(cfg.data.root) / "train/masks" / f"{i}.png"
        m = np.asarray(Image.open(path)).copy()
        m[m == 2] = 1
        Image.fromarray(m).save(path)
        q = np.load(run.oof_path(i))
        q[2] = 0
        np.save(run.oof_path(i), q)
    data = compute_report_data(cfg.run_dir, n_examples=2)  # no summary yet: written, then used
    assert np.isnan(data.per_class_iou[2]) and not np.isnan(data.per_class_iou[0])
    page = build_report(cfg.run_dir, n_examples=12)  # more examples than kept: written again
    assert page.is_file()


def test_an_overlay_of_an_image_gone_from_the_data_is_a_data_error(multiclass_run):
    """A summary naming an id the data no longer holds failed the whole page with a KeyError."""
    from seg_toolkit.data import DataError
    from seg_toolkit.report.overlays import _example_panels

    cfg, ids = multiclass_run
    data = compute_report_data(cfg.run_dir, n_examples=2)
    ex = data.best[0]
    del data.samples[ex.id]
    with pytest.raises(DataError, match=rf"{ex.id}: an OOF image of oof_summary.json is not in the training data"):
        _example_panels(data, ex, data.class_colors, [True] * 3)


def test_examples_are_ranked_by_the_classes_the_score_averages(multiclass_run):
    """With metric.classes the CV score leaves class 0 out, but the best / worst images were ranked with it."""
    import dataclasses

    from seg_toolkit.metrics import image_counts, scores_from_counts
    from seg_toolkit.report import write_oof_summary
    from seg_toolkit.report.summary import predict_mask

    cfg, ids = multiclass_run
    cfg = dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, name="iou", classes=[1, 2]))
    summary = write_oof_summary(Run.of(cfg), cfg, load_train_samples(cfg), n_examples=3)
    assert "of classes [1, 2]" in summary["image_score"]
    for ex in summary["best"]:
        q = np.load(Run.of(cfg).oof_path(ex["id"]))
        pred = predict_mask(q, "multiclass", 0.5)
        target = torch.from_numpy(_mask(cfg, ex["id"]).astype(np.int64))[None]
        row = scores_from_counts(image_counts(pred, target, 3, 255), "iou", "one")[0]
        assert ex["score"] == pytest.approx(np.nanmean(row[[1, 2]]))


def test_a_summary_made_with_other_metric_settings_is_made_again(multiclass_run, caplog):
    """`cv --set metric.threshold=0.4` wrote a summary at 0.4; the page drew overlays and titles at the config's 0.5
    beside numbers and a ranking at 0.4."""
    import dataclasses

    cfg, ids = multiclass_run
    run = Run.of(cfg)
    other = dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, name="dice", empty_score="zero"))
    write_oof_summary(run, other, load_train_samples(other), n_examples=2)
    assert json.loads(run.oof_summary_json.read_text())["metric"] == "dice"
    with caplog.at_level("INFO"):
        data = compute_report_data(run.dir, n_examples=2)
    assert data.metric == "miou" and json.loads(run.oof_summary_json.read_text())["metric"] == "miou"
    assert "made with metric dice" in caplog.text


def test_void_is_drawn_apart_from_a_grey_class():
    """CamVid's Sky is (128, 128, 128), void's grey: the overlays, the legend and the audit pictures drew unscored
    pixels as sky (audit). Void now takes the candidate farthest from every class colour when one is that close."""
    from seg_toolkit.report.overlays import VOID_COLOR, _paint, class_legend_handles, void_color

    camvid = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                       [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]])
    void = void_color(camvid)
    assert void == (255, 0, 255)  # magenta: farther from CamVid's colours than white, cyan, dark grey or yellow
    assert np.linalg.norm(camvid - np.asarray(void), axis=1).min() > 100
    assert void_color(np.array([[255, 0, 0], [0, 0, 255]])) == VOID_COLOR  # no grey class: grey as before
    handles = class_legend_handles(["Sky", "Building"], camvid[:2], [True, True], "multiclass", void=True)
    assert [h.get_label() for h in handles] == ["Sky", "Building", "void (not scored)"]
    assert tuple(handles[-1].get_facecolor()[:3]) != tuple(handles[0].get_facecolor()[:3])
    image = np.zeros((8, 8, 3), np.uint8)
    sky, unscored = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    sky[:, :4], unscored[:, 4:] = True, True
    out = _paint(image, [sky, None], camvid[:2], unscored)
    assert not np.array_equal(out[3, 1], out[3, 6])  # inside each region, away from the outlines


def test_files_a_user_keeps_beside_the_report_are_never_the_runs(multilabel, tmp_path):
    """foreign_entries took any .html / .png / .json in report/ and any .json in evaluations/ for the run's own, so
    `train --overwrite` deleted a user's analysis and leaderboard notes with the run. The report's files are named."""
    import shutil

    cfg, _, _, page = multilabel
    run = Run(tmp_path / Run.of(cfg).dir.name)
    shutil.copytree(Run.of(cfg).dir, run.dir)
    assert sorted(p.name for p in run.report_dir.iterdir()) == sorted(Run.REPORT_FILES)  # every one of them written
    assert run.foreign_entries() == []
    (run.report_dir / "my_analysis.html").write_text("mine")
    run.evaluations_dir.mkdir(exist_ok=True)
    (run.evaluations_dir / "my_lb_scores.json").write_text("{}")
    ours = ["valid-0123abcd.json", "valid-0123abcd.tgs_map_mlebench-1a2b3c.json", "evaluate_test.miou-abcdef.json"]
    for name in ours:
        (run.evaluations_dir / name).write_text("{}")
    assert run.foreign_entries() == [run.evaluations_dir / "my_lb_scores.json", run.report_dir / "my_analysis.html"]


def test_legend_colours_grey_out_an_undrawn_background():
    """The visual audit: the class table and audit bars showed a multiclass background in red, which no picture draws."""
    from seg_toolkit.report.overlays import UNDRAWN_GREY, legend_colors

    cfg = config_from_dict({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
                            "submission": {"per_class": True}})
    colors = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200)], np.uint8)
    shown = legend_colors(cfg, ["background", "cat", "dog"], colors)
    assert shown.tolist() == [list(UNDRAWN_GREY), [60, 180, 75], [0, 130, 200]]
    assert legend_colors(cfg, ["sky", "road", "car"], colors).tolist() == colors.tolist()  # a class like the others


def test_report_names_a_tuned_value_at_the_end_of_its_grid_and_the_search_kept(multilabel, tmp_path):
    import shutil

    cfg, *_ = multilabel
    run = Run(tmp_path / "copy")
    shutil.copytree(Run.of(cfg).dir, run.dir)
    params = {"threshold": [0.5] * 3, "min_area": [100, 0, 100], "empty_gate": [None] * 3}
    run.postprocess_json.write_text(json.dumps({"before": 0.5, "after": 0.6, "params": params,
                                                "search": {"chosen": "joint"}, "at_grid_edge": {"min_area": [0, 2]}}))
    text = build_report(run.dir, n_examples=0).read_text(encoding="utf-8")
    assert "(joint search)" in text
    assert "Chosen at the end of the searched grid: min_area of class_1, class_3" in text
