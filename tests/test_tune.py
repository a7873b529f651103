"""Post-processing search on OOF predictions (``seg_toolkit.tune``), on generated runs.

No training: each test writes a tiny competition (images + RLE CSV), a run folder with
``folds.csv``, fold folders with ``done.json`` and ``oof/<id>.npy`` whose probabilities are
built from the truth, then checks the search against brute force
(:func:`apply_postprocess` + :func:`per_image_scores`).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import seg_toolkit.data as data_pkg
import seg_toolkit.data.dataset as dataset_mod
import seg_toolkit.data.io as io_mod
import seg_toolkit.data.sample as sample_mod
import seg_toolkit.data.sources as sources_mod
from seg_toolkit.config import IGNORE_INDEX, Config, ConfigError, config_from_dict, config_to_dict
from seg_toolkit.cv import compute_cv
from seg_toolkit.run import Run
from seg_toolkit.metrics import image_counts, mean_iou, per_image_scores, pixel_accuracy, scores_from_counts
from seg_toolkit.postprocess import PostParams, apply_postprocess, load_params
from seg_toolkit.rle import rle_encode
from seg_toolkit.tensors import uint8_to_probs
from seg_toolkit.tune import tune_postprocess
from seg_toolkit.tune_tables import (
    area_tables,
    gate_open,
    multiclass_score,
    move_removed,
    multiclass_tables,
    sigmoid_score,
    threshold_cut,
    threshold_tables,
)

H, W = 32, 40
V = IGNORE_INDEX


# ----------------------------------------------------------------------------- writing a run


def write_run(
    tmp_path: Path,
    task: str,
    num_classes: int,
    truths: dict[str, np.ndarray],
    oofs: dict[str, np.ndarray],
    fold_of: dict[str, int],
    done: list[int],
    n_splits: int,
    **sections,
) -> Config:
    """A competition folder (images, RLE CSV, test images, sample submission) and a run folder
    (config-independent files only: folds.csv, fold_k/done.json for ``done``, oof/*.npy of every
    fold (finished or not), test_probs/*.npy). ``truths``: (C, H, W) 0/1 (binary / multilabel) or (H, W) labels."""
    root, runs = tmp_path / "comp", tmp_path / "runs"
    (root / "train" / "images").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    rows = []
    for i, truth in truths.items():
        Image.fromarray(np.full((*truth.shape[-2:], 3), 90, np.uint8)).save(root / "train" / "images" / f"{i}.png")
        if task == "binary":
            rows.append(f"{i},{rle_encode(truth[0])}")
        elif task == "multilabel":
            rows += [f"{i},{c + 1},{rle_encode(truth[c])}" for c in range(num_classes)]
        else:
            rows += [f"{i},{c},{rle_encode(truth == c)}" for c in range(1, num_classes)]
    header = "id,rle_mask" if task == "binary" else "id,cls,rle_mask"
    (root / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    for t in ("t0", "t1"):
        Image.fromarray(np.full((H, W, 3), 30, np.uint8)).save(root / "test" / "images" / f"{t}.png")
    (root / "sample_submission.csv").write_text("id,rle_mask\nt0,1 1\nt1,1 1\n")
    data = {"root": str(root), "task": task, "num_classes": num_classes, "layout": "csv"}
    if task != "binary":
        data["class_column"] = "cls"
    defaults = {"submission": {"per_class": num_classes > 1 and task != "binary"}}
    if task == "multiclass":
        defaults["loss"] = {"ce": 1.0}
    cfg_dict = {"experiment": "exp", "runs_dir": str(runs), "data": data,
                "folds": {"n_splits": n_splits, "method": "kfold"}, **defaults, **sections}
    cfg = config_from_dict(cfg_dict)
    run = Run.of(cfg)
    run.dir.mkdir(parents=True)
    run.folds_csv.write_text("id,fold,stratum\n" + "".join(f"{i},{k},x\n" for i, k in fold_of.items()))
    run.oof_dir.mkdir()
    for i, q in oofs.items():
        np.save(run.oof_path(i), q)
    for k in done:
        run.fold_dir(k).mkdir(exist_ok=True)
        run.done_json(k).write_text(json.dumps({"metric": "dice", "oof_score": 0.0}))
    run.test_probs_dir.mkdir()
    for t in ("t0", "t1"):  # a test prediction a careless tuner could pick up
        np.save(run.test_prob_path(t), np.full((num_classes, H, W), 255, np.uint8))
    return cfg


def brute_score(cfg: Config, params: PostParams, ids: list[str], truths: dict, oofs: dict, metric: str = "dice") -> float:
    """Mean over (image, class) of :func:`per_image_scores` of :func:`apply_postprocess` masks."""
    pred = np.stack([apply_postprocess(uint8_to_probs(oofs[i]), cfg.data.task, params) for i in ids])
    target = np.stack([truths[i] for i in ids])
    return float(np.nanmean(per_image_scores(pred, target, metric, cfg.metric.empty_score, cfg.data.num_classes)))


def done_ids(fold_of: dict[str, int], done: list[int]) -> list[str]:
    return [i for i, k in fold_of.items() if k in done]


# ----------------------------------------------------------------------------- problem 1: noise blobs and haze

SPOTS = [(y, x) for y in (2, 7, 12) for x in (26, 31, 36)]  # blob corners, 3+ pixels apart
SHAPES = [(1, 1), (2, 2), (1, 3), (2, 3)]  # blobs of 1..6 pixels


def blob_problem(seed: int = 0, n: int = 24):
    """Binary: a rectangle (64..196 px) at p=0.90 in 2 of 3 images, background p < 0.24, and
    spurious blobs of 1..6 pixels at p=0.96 in every image; every other image also has an
    80-pixel patch of haze at p=0.55. Threshold 0.6 + min_area 10 give exactly the truth."""
    rng = np.random.default_rng(seed)
    truths, oofs, blobs = {}, {}, {}
    for k in range(n):
        i = f"img{k:02d}"
        t = np.zeros((1, H, W), np.uint8)
        if k % 3 != 0:
            h, w = rng.integers(8, 15, size=2)
            y, x = rng.integers(2, 30 - h + 1), rng.integers(2, 22 - w + 1)
            t[0, y : y + h, x : x + w] = 1
        q = rng.integers(0, 60, size=(1, H, W)).astype(np.uint8)
        q[t == 1] = 230
        if k % 2 == 0:
            q[0, 20:28, 26:36] = 140  # haze: 0.549, above 0.5
        b = np.zeros((H, W), bool)
        for s in rng.permutation(len(SPOTS))[: rng.integers(1, 4)]:
            (y, x), (dy, dx) = SPOTS[s], SHAPES[rng.integers(len(SHAPES))]
            b[y : y + dy, x : x + dx] = True
        q[0][b] = 245
        truths[i], oofs[i], blobs[i] = t, q, b
    fold_of = {f"img{k:02d}": (k // 2) % 3 for k in range(n)}
    return truths, oofs, blobs, fold_of


@pytest.fixture
def blob_run(tmp_path):
    truths, oofs, blobs, fold_of = blob_problem()
    # fold 2 is not finished: its OOF files are garbage and must be ignored
    rng = np.random.default_rng(5)
    garbage = {i: (rng.random((1, H, W)) * 255).astype(np.uint8) for i, k in fold_of.items() if k == 2}
    cfg = write_run(tmp_path, "binary", 1, truths, {**oofs, **garbage}, fold_of, done=[0, 1], n_splits=3)
    return cfg, truths, oofs, blobs, fold_of


def test_blobs_threshold_and_min_area_improve_oof(blob_run):
    cfg, truths, oofs, blobs, fold_of = blob_run
    ids = done_ids(fold_of, [0, 1])
    report = tune_postprocess(cfg)

    # before = the config's post-processing (0.5, no min_area), scored by brute force
    before = brute_score(cfg, PostParams([0.5], [0], [None]), ids, truths, oofs)
    assert report["before"] == pytest.approx(before, abs=1e-12)
    assert report["before"] == pytest.approx(0.4289, abs=1e-4)  # measured: blobs and haze cost more than half
    assert report["n_images"] == len(ids) == 16 and report["folds"] == [0, 1]
    steps = {s["step"]: s for s in report["steps"]}
    # 1) 0.6 drops the haze (0.549), not the blobs (0.96); 0.7 ties and the earlier grid value is kept
    assert steps["threshold"]["threshold"] == [0.6]
    assert steps["threshold"]["score"] == pytest.approx(0.4855, abs=1e-4)
    # 2) min_area 10 drops every blob (<= 6 px) and no truth (>= 64 px); 50 ties, 100 would cut truths
    assert steps["min_area"]["min_area"] == [10]
    assert steps["min_area"]["score"] == 1.0
    assert steps["empty_gate"]["empty_gate"] == [None] and steps["empty_gate"]["score"] == 1.0
    assert report["after"] == 1.0 and report["after"] - report["before"] > 0.57  # measured gain 0.5711
    assert report["params"] == {"threshold": [0.6], "min_area": [10], "empty_gate": [None], "gate_source": ["max_prob"],
                                "class_weight": [1.0], "split_seed": [None], "split_by": "distance",
                                "min_area_to": "background"}

    # the chosen parameters remove every blob and reproduce the truth exactly
    params = load_params(cfg, cfg.run_dir)
    assert params == PostParams([0.6], [10], [None])
    for i in ids:
        pred = apply_postprocess(uint8_to_probs(oofs[i]), "binary", params)
        assert not pred[0][blobs[i]].any()
        assert np.array_equal(pred, truths[i])
    assert brute_score(cfg, params, ids, truths, oofs) == 1.0

    saved = json.loads((cfg.run_dir / "postprocess.json").read_text())
    assert saved == json.loads(json.dumps(report))  # the file holds the returned report
    assert saved["fold_scores"]["after"] == [1.0, 1.0]
    for k, got in zip((0, 1), saved["fold_scores"]["before"]):
        assert got == pytest.approx(brute_score(cfg, PostParams([0.5], [0], [None]), done_ids(fold_of, [k]), truths, oofs), abs=1e-12)


@pytest.mark.parametrize("metric", ["dice", "iou", "tgs_map", "miou", "pixel_accuracy"])
def test_before_equals_cv_json_with_default_postprocess(blob_run, metric):
    cfg, *_ = blob_run
    cfg.metric.name = metric
    cv = compute_cv(cfg, cfg.run_dir)
    report = tune_postprocess(cfg)
    assert report["before"] == cv["score"]
    assert report["cv_json_score"] == cv["score"]
    # threshold 0.6 and min_area 10 (both in the default grids) reproduce every truth exactly (see above), and
    # every one of these metrics scores exact masks 1: the search finds them whatever the metric
    assert report["after"] == 1.0 and report["params"]["threshold"] == [0.6] and report["params"]["min_area"] == [10]
    assert report["metric"] == metric


def test_streaming_gives_the_same_result_as_the_cache(blob_run):
    cfg, *_ = blob_run
    cached = tune_postprocess(cfg)
    streamed = tune_postprocess(cfg, memory_budget=0)
    assert cached["oof_in_memory"] and not streamed["oof_in_memory"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "oof_in_memory")}  # noqa: E731
    assert strip(cached) == strip(streamed)


def test_never_reads_test_images_or_test_predictions(blob_run, monkeypatch):
    cfg, *_ = blob_run
    run = cfg.run_dir

    def refuse(*args, **kwargs):
        raise AssertionError(f"tuning read test data or an image: {args}")

    for mod in (data_pkg, sources_mod):
        monkeypatch.setattr(mod, "load_test_samples", refuse)
    for mod in (data_pkg, io_mod, sample_mod):
        monkeypatch.setattr(mod, "read_image", refuse)
    monkeypatch.setattr(dataset_mod, "read_config_image", refuse)
    loaded: list[Path] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: loaded.append(Path(path)) or real_load(path, *a, **k))
    first = tune_postprocess(cfg)

    allowed = {Run(run).oof_path(i) for i, k in Run(run).fold_of().items() if k in (0, 1)}
    assert loaded and set(loaded) <= allowed  # no test_probs, no unfinished fold
    # the result does not depend on the test files
    import shutil

    shutil.rmtree(run / "test_probs")
    shutil.rmtree(Path(cfg.data.root) / "test")
    (Path(cfg.data.root) / "sample_submission.csv").unlink()
    second = tune_postprocess(cfg)
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}


# ----------------------------------------------------------------------------- problem 2: the empty gate


def gate_problem(n: int = 24):
    """Binary: 14 images with a 12x12 object whose 8x8 core is at p=0.98 and whose rim (80 of
    144 px) is at p=0.6; 10 empty images with a 12x12 faint region at p=0.6. A threshold
    cannot separate rims from faint regions; a gate on the max probability can."""
    rng = np.random.default_rng(3)
    truths, oofs = {}, {}
    for k in range(n):
        i = f"g{k:02d}"
        t = np.zeros((1, H, W), np.uint8)
        q = rng.integers(0, 60, size=(1, H, W)).astype(np.uint8)
        y, x = rng.integers(2, H - 14), rng.integers(2, W - 14)
        q[0, y : y + 12, x : x + 12] = 153  # p = 0.6 exactly
        if k < 14:
            t[0, y : y + 12, x : x + 12] = 1
            q[0, y + 2 : y + 10, x + 2 : x + 10] = 250
        truths[i], oofs[i] = t, q
    return truths, oofs, {f"g{k:02d}": k % 2 for k in range(n)}


def test_empty_gate_helps_on_empty_images_with_faint_regions(tmp_path):
    truths, oofs, fold_of = gate_problem()
    cfg = write_run(tmp_path, "binary", 1, truths, oofs, fold_of, done=[0, 1], n_splits=2)
    report = tune_postprocess(cfg)
    steps = {s["step"]: s for s in report["steps"]}
    # before (0.5): every rim kept, every faint region predicted: 14 ones, 10 zeros
    assert report["before"] == pytest.approx(14 / 24)
    # threshold alone trades the rims for the empty images: 0.7 keeps only the cores
    assert steps["threshold"]["threshold"] == [0.7]
    assert steps["threshold"]["score"] == pytest.approx((14 * 2 * 64 / (64 + 144) + 10) / 24)
    assert steps["min_area"]["score"] == steps["threshold"]["score"]
    # the gate (max p >= 0.65 empties the faint images) lets the threshold go back down
    assert steps["empty_gate"]["empty_gate"] == [0.65] and steps["empty_gate"]["threshold"] == [0.5]
    assert report["after"] == 1.0 and report["after"] - steps["min_area"]["score"] > 0.2
    ids = list(truths)
    assert brute_score(cfg, load_params(cfg, cfg.run_dir), ids, truths, oofs) == 1.0


# ----------------------------------------------------------------------------- problem 3: multiclass


def test_multiclass_tunes_min_area_only(tmp_path):
    rng = np.random.default_rng(7)
    truths, oofs = {}, {}
    for k in range(12):
        i = f"m{k:02d}"
        label = np.zeros((H, W), np.uint8)
        label[4:16, 4:16] = 1
        label[18:28, 20:34] = 2
        p = np.full((3, H, W), 20, np.uint8)
        p[0] = 215
        for c in (1, 2):
            p[:, label == c] = 20
            p[c, label == c] = 215
        for y, x in [(2, 36), (10, 30)][: 1 + k % 2]:  # class-2 specks of 2x2 in the background
            p[:, y : y + 2, x : x + 2] = 20
            p[2, y : y + 2, x : x + 2] = 215
        truths[i], oofs[i] = label, p + rng.integers(0, 5, size=p.shape).astype(np.uint8)
    fold_of = {i: k % 2 for k, i in enumerate(truths)}
    cfg = write_run(tmp_path, "multiclass", 3, truths, oofs, fold_of, done=[0, 1], n_splits=2)
    report = tune_postprocess(cfg)
    assert report["metric"] == "miou"
    steps = {s["step"]: s for s in report["steps"]}
    assert "skipped" in steps["threshold"] and "skipped" in steps["empty_gate"]
    assert report["params"]["min_area"] == [0, 0, 10]  # class 1 has no specks: ties keep 0
    assert report["after"] == 1.0 > report["before"]
    assert report["before"] == pytest.approx(compute_cv(cfg, cfg.run_dir)["score"], abs=0)
    assert load_params(cfg, cfg.run_dir).min_area == [0, 0, 10]
    # scoring only classes 1 and 2 (metric.classes): tune's fast counts agree with the Evaluator (tune checks it)
    # and with cv.json; the perfect masks still score 1
    scored = write_run(tmp_path / "scored", "multiclass", 3, truths, oofs, fold_of, done=[0, 1], n_splits=2,
                       metric={"classes": [1, 2]})
    report = tune_postprocess(scored)
    assert report["after"] == 1.0 and report["params"]["min_area"] == [0, 0, 10]
    assert report["before"] == pytest.approx(compute_cv(scored, scored.run_dir)["score"], abs=0) != report["after"]


# ----------------------------------------------------------------------------- fast path == brute force


class Stub:
    """In-memory stand-in for OOFData (the table builders only iterate)."""

    def __init__(self, qs: list[np.ndarray], truths: list[np.ndarray], num_classes: int) -> None:
        self.qs, self.truths, self.num_classes = qs, truths, num_classes

    def __len__(self) -> int:
        return len(self.qs)

    def iterate(self, desc: str):
        for q, t in zip(self.qs, self.truths):
            yield None, q, t


def smooth_probs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.5) -> np.ndarray:
    """uint8 probabilities with blobs of all sizes (so components and thresholds matter)."""
    x = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(0,) * (len(shape) - 2) + (sigma, sigma))
    x = (x - x.min()) / (x.max() - x.min() + 1e-9)
    return np.rint(x * 255).astype(np.uint8)


def sigmoid_stub(seed: int, c: int) -> Stub:
    rng = np.random.default_rng(seed)
    qs, truths = [], []
    for k in range(6):
        q = smooth_probs(rng, (c, 24, 30))
        t = (smooth_probs(rng, (c, 24, 30), 3.0) > 140).astype(np.uint8)
        if k == 1:
            t[:, :4] = V  # a band of void
        if k == 2:
            t[-1] = V  # a class of an image wholly void: never scored
        if k == 3:
            t[0] = 0  # empty truth
        if k == 4:
            q[0] = np.minimum(q[0], 100)  # a faint class, for the gate
        qs.append(q)
        truths.append(t)
    return Stub(qs, truths, c)


THRESHOLDS = [0.0, 0.2, 0.3, 0.5, 0.6, 153 / 255, 0.7, 0.99, 1.0]


@pytest.mark.parametrize("c", [1, 2])
def test_threshold_histograms_equal_brute_force(c):
    stub = sigmoid_stub(11, c)
    tab = threshold_tables(stub, THRESHOLDS)
    target = np.stack(stub.truths)
    for j, t in enumerate(THRESHOLDS):
        for gate in (None, 0.3, 0.5):
            params = PostParams([t] * c, [0] * c, [gate] * c)
            pred = np.stack([apply_postprocess(uint8_to_probs(q), "multilabel", params) for q in stub.qs])
            ref = image_counts(pred, target)
            open_ = gate_open(tab.qmax, gate)
            tp, fp = np.where(open_, tab.tp[:, :, j], 0), np.where(open_, tab.fp[:, :, j], 0)
            assert np.array_equal(tp, ref.tp) and np.array_equal(fp, ref.fp)
            assert np.array_equal(tab.pos - tp, ref.fn) and np.array_equal(tab.n_valid, ref.n_valid)
            metrics = ["dice", "iou"] + (["tgs_map"] if c == 1 else [])
            for metric in metrics:
                for empty in ("one", "zero", "skip"):
                    want = per_image_scores(pred, target, metric, empty)
                    got = scores_from_counts(type(ref)(tp, fp, tab.pos - tp, tab.n_valid), metric, empty)
                    assert np.array_equal(got, want, equal_nan=True)
                    fast = sigmoid_score(tp, fp, tab.pos, tab.n_valid, metric, empty)
                    assert fast == pytest.approx(float(np.nanmean(want)), abs=1e-15)
            cm = np.stack([[[n - a - b - d, b], [d, a]] for a, b, d, n in zip(ref.tp.sum(0), ref.fp.sum(0), ref.fn.sum(0), ref.n_valid.sum(0))])
            assert sigmoid_score(tp, fp, tab.pos, tab.n_valid, "miou", "one") == mean_iou(cm)
            assert sigmoid_score(tp, fp, tab.pos, tab.n_valid, "pixel_accuracy", "one") == pixel_accuracy(cm)


def test_threshold_cut_matches_float_comparison():
    levels = uint8_to_probs(np.arange(256, dtype=np.uint8))
    for t in list(np.linspace(0, 1, 401)) + [k / 255 for k in range(256)]:
        cut = threshold_cut(float(t))
        assert np.array_equal(np.arange(256) >= cut, levels >= float(t))


def test_min_area_components_equal_brute_force():
    stub = sigmoid_stub(12, 2)
    areas = [0, 1, 2, 5, 10, 40]
    target = np.stack(stub.truths)
    thresholds = [0.5, 0.6, 0.3, 0.7]
    tp, fp = area_tables(stub, thresholds, areas)  # (N, C, T, A): every (threshold, min_area) pair
    assert tp.shape == (len(stub.qs), 2, 4, 6)
    for jt, t in enumerate(thresholds):
        for j, a in enumerate(areas):
            params = PostParams([t, t], [a, a], [None, None])
            pred = np.stack([apply_postprocess(uint8_to_probs(q), "multilabel", params) for q in stub.qs])
            ref = image_counts(pred, target)
            assert np.array_equal(tp[:, :, jt, j], ref.tp) and np.array_equal(fp[:, :, jt, j], ref.fp)
    # min_area 0 removes nothing: the threshold histograms' counts
    tab = threshold_tables(stub, thresholds)
    assert np.array_equal(tp[:, :, :, 0], tab.tp) and np.array_equal(fp[:, :, :, 0], tab.fp)


@pytest.mark.parametrize("to", ["background", "runner_up"])
@pytest.mark.parametrize("weights", [None, [1.0, 1.6, 0.7]])
def test_multiclass_tables_equal_brute_force(weights, to):
    rng = np.random.default_rng(13)
    qs, truths = [], []
    for k in range(5):
        q = smooth_probs(rng, (3, 24, 30), 1.2)
        t = np.argmax(smooth_probs(rng, (3, 24, 30), 3.0), axis=0).astype(np.uint8)
        if k == 1:
            t[:, :5] = V
        qs.append(q)
        truths.append(t)
    areas = [0, 1, 3, 8, 20]
    tab = multiclass_tables(Stub(qs, truths, 3), areas, weights, to)
    assert sorted(tab.removed) == ([0, 1, 2] if to == "runner_up" else [1, 2])
    moved = 0
    for a0, a1, a2 in itertools.product(range(len(areas)) if to == "runner_up" else [0], range(len(areas)), range(len(areas))):
        params = PostParams([0.5] * 3, [areas[a0], areas[a1], areas[a2]], [None] * 3, class_weight=weights or [],
                            min_area_to=to)
        pred = np.stack([apply_postprocess(uint8_to_probs(q), "multiclass", params) for q in qs])
        conf = tab.base.copy()
        for k, j in ((0, a0), (1, a1), (2, a2)):
            if k in tab.removed:
                idx, gone = tab.removed[k]
                move_removed(conf, idx, gone[:, j], k)
        ref = image_counts(pred, np.stack(truths), num_classes=3)
        diag = np.diagonal(conf, axis1=1, axis2=2)
        assert np.array_equal(diag, ref.tp) and np.array_equal(conf.sum(1) - diag, ref.fp)
        assert np.array_equal(conf.sum(2) - diag, ref.fn)
        moved += int((conf != tab.base).any())
        for metric in ("dice", "iou"):
            want = float(np.nanmean(per_image_scores(pred, np.stack(truths), metric, "skip", num_classes=3)))
            assert multiclass_score(conf, metric, "skip") == pytest.approx(want, abs=1e-15)
        assert not math.isnan(multiclass_score(conf, "miou", "one"))
    assert moved > 10  # the areas remove pixels in most combinations: the comparison is not base == base


def test_min_area_to_runner_up_by_hand():
    """Class 0 a class like the others (CamVid's Sky): a speck min_area removes goes, pixel by pixel, to the best of
    the other classes, not to class 0; with runner_up class 0's own specks are removed too."""
    probs = np.zeros((3, 3, 6), np.float32)
    probs[1] = 0.6  # class 1 everywhere ...
    probs[0] = 0.3
    probs[2] = 0.1
    probs[:, 0, 0] = [0.2, 0.3, 0.5]  # ... but a 2-pixel class-2 speck: runner-up 1 at (0, 0), 0 at (0, 1)
    probs[:, 0, 1] = [0.35, 0.25, 0.4]
    probs[:, 2, 5] = [0.5, 0.2, 0.3]  # a 1-pixel class-0 speck: runner-up 2
    before = PostParams([0.5] * 3, [0, 0, 0], [None] * 3)
    label = apply_postprocess(probs, "multiclass", before)
    assert label[0, :2].tolist() == [2, 2] and label[2, 5] == 0 and (label == 1).sum() == 15
    background = PostParams([0.5] * 3, [2, 0, 3], [None] * 3)  # class 0's min_area is not applied: it would stay 0
    assert apply_postprocess(probs, "multiclass", background)[0, :2].tolist() == [0, 0]
    assert apply_postprocess(probs, "multiclass", background)[2, 5] == 0
    runner = PostParams([0.5] * 3, [2, 0, 3], [None] * 3, min_area_to="runner_up")
    got = apply_postprocess(probs, "multiclass", runner)
    assert got[0, :2].tolist() == [1, 0] and got[2, 5] == 2 and (got == 1).sum() == 16
    # weighted scores decide the runner-up too: class 0 x 0.5 loses (0, 1) to class 1 (0.175 < 0.25)
    weighted = PostParams([0.5] * 3, [2, 0, 3], [None] * 3, class_weight=[0.5, 1.0, 1.0], min_area_to="runner_up")
    assert apply_postprocess(probs, "multiclass", weighted)[0, :2].tolist() == [1, 1]


def test_min_area_to_runner_up_is_multiclass_only(tmp_path):
    with pytest.raises(ConfigError, match="postprocess.min_area_to: 'runner_up' .* data.task is binary"):
        config_from_dict({"data": {"root": str(tmp_path), "task": "binary", "layout": "csv"},
                          "postprocess": {"min_area_to": "runner_up"}})


def test_multiclass_tune_with_runner_up_removes_specks_where_background_cannot(tmp_path):
    """Class-2 specks inside class 1 (class 0 a class like the others): made class 0 they stay wrong, and tune keeps
    min_area 0; sent to their runner-up (class 1) they are right, and tune removes them; predict then does the same."""
    rng = np.random.default_rng(3)
    truths, oofs = {}, {}
    for k in range(12):
        i = f"m{k:02d}"
        label = np.ones((H, W), np.uint8)
        label[:4, :10] = 0  # class 0 small: specks made class 0 cost it more than class 2 gains
        label[28:] = 2
        p = np.full((3, H, W), 20, np.uint8)
        for c in range(3):
            p[c, label == c] = 215
        for y, x in [(8, 10), (16, 24)][: 1 + k % 2]:  # class-2 specks inside class 1, class 1 their runner-up
            p[:, y : y + 2, x : x + 2] = [[[30]], [[100]], [[125]]]
        truths[i], oofs[i] = label, p + rng.integers(0, 5, size=p.shape).astype(np.uint8)
    fold_of = {i: k % 2 for k, i in enumerate(truths)}
    plain = write_run(tmp_path / "bg", "multiclass", 3, truths, oofs, fold_of, done=[0, 1], n_splits=2)
    report = tune_postprocess(plain)
    assert report["params"]["min_area"][2] == 0 and report["params"]["min_area_to"] == "background"
    assert report["after"] == report["before"] < 1.0
    runner = write_run(tmp_path / "ru", "multiclass", 3, truths, oofs, fold_of, done=[0, 1], n_splits=2,
                       postprocess={"min_area_to": "runner_up"})
    report = tune_postprocess(runner)
    assert report["params"]["min_area"][2] == 10 and report["params"]["min_area_to"] == "runner_up"
    assert report["after"] == 1.0 > report["before"]
    params = load_params(runner, runner.run_dir)
    for i in truths:
        assert np.array_equal(apply_postprocess(uint8_to_probs(oofs[i]), "multiclass", params), truths[i])


def test_post_processing_tuned_on_fewer_folds_than_trained_is_named(demo_root, tmp_path, caplog):
    """`train --fold 0`, `tune`, `train --fold 1` with `postprocess.tune: false`: predict used parameters tuned on fold 0's
    images only, silently."""
    from seg_toolkit.cv import run_cv
    from seg_toolkit.tune import tune_postprocess

    from .conftest import demo_dict

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2, "num_workers": 0},
                                     postprocess={"tune": False}))
    run_cv(cfg, folds=[0])
    tune_postprocess(cfg)
    load_params(cfg, Run.of(cfg))
    assert "was tuned on the OOF images of fold(s)" not in caplog.text
    run_cv(cfg, folds=[1])
    load_params(cfg, Run.of(cfg))
    assert "was tuned on the OOF images of fold(s) [0], but the run's trained folds are now [0, 1]" in caplog.text


@pytest.mark.parametrize("params, message", [
    ({"threshold": [float("nan")], "min_area": [0], "empty_gate": [None]}, r"threshold of class 0: expected a probability in \[0, 1\], got nan"),
    ({"threshold": [-1], "min_area": [0], "empty_gate": [None]}, r"threshold of class 0: expected a probability"),
    ({"threshold": ["0.5"], "min_area": [0], "empty_gate": [None]}, r"threshold of class 0: .* got '0.5'"),
    ({"threshold": [0.5], "min_area": [-3], "empty_gate": [None]}, r"min_area of class 0: expected a whole number >= 0, got -3"),
    ({"threshold": [0.5], "min_area": [2.5], "empty_gate": [None]}, r"min_area of class 0: expected a whole number"),
    ({"threshold": [0.5], "min_area": [0], "empty_gate": ["x"]}, r"empty_gate of class 0: expected null or a probability"),
    ({"threshold": 0.5, "min_area": [0], "empty_gate": [None]}, r"threshold: expected a list with a value per class"),
])
def test_a_postprocess_json_with_bad_values_is_named(tmp_path, params, message):
    """A NaN threshold left the class empty in every row, -1 filled the image, a string failed inside numpy (exit 1):
    each value is checked when the file is read, naming the file, the key and the class."""
    from seg_toolkit.config import ConfigError
    from seg_toolkit.run import Run

    run = Run(tmp_path)
    run.postprocess_json.write_text(json.dumps({"params": params}))
    cfg = config_from_dict({"data": {"task": "binary", "num_classes": 1}})
    with pytest.raises(ConfigError, match=rf"postprocess.json: not a post-processing file \(ValueError: {message}"):
        load_params(cfg, run)
    ok = {"threshold": [0.4], "min_area": [12.0], "empty_gate": [0.7]}
    run.postprocess_json.write_text(json.dumps({"params": ok}))
    assert load_params(cfg, run) == PostParams([0.4], [12], [0.7])


def test_a_postprocess_override_on_a_tuned_run_is_refused(blob_run):
    """`predict RUN --set postprocess.threshold=0` wrote the tuned submission unchanged (the file won, silently)."""
    import dataclasses

    from seg_toolkit.config import save_config
    from seg_toolkit.postprocess import load_params

    cfg, *_ = blob_run
    save_config(cfg, Run(cfg.run_dir).config_yaml)
    tune_postprocess(cfg)
    assert load_params(cfg, Run(cfg.run_dir)).threshold == [0.6]  # the tuned value
    changed = dataclasses.replace(cfg, postprocess=dataclasses.replace(cfg.postprocess, threshold=[0.0]))
    with pytest.raises(ConfigError, match=r"postprocess.threshold: \[0.0\] differs from the run's \[0.5\], but .*"
                                          r"postprocess.json \(tuned on OOF\) decides the masks"):
        load_params(changed, Run(cfg.run_dir))


def test_parameters_tuned_for_another_metric_are_named(blob_run, caplog):
    import dataclasses

    from seg_toolkit.postprocess import load_params

    cfg, *_ = blob_run
    report = tune_postprocess(cfg)
    assert (report["metric"], report["empty_score"]) == ("dice", "one")
    with caplog.at_level("WARNING"):
        load_params(cfg, Run(cfg.run_dir))
    assert "tuned for metric" not in caplog.text
    other = dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, name="tgs_map"))
    with caplog.at_level("WARNING"):
        assert load_params(other, Run(cfg.run_dir)).threshold == [0.6]  # still the tuned values, with a warning
    assert ("was tuned for metric dice (empty_score one, classes all), but the config scores tgs_map (empty_score one, "
            "classes all)") in caplog.text


def test_a_trained_fold_without_oof_images_left_is_tuned_around(blob_run):
    """exclude_ids (not a training setting) grown after training to every image of fold 1: its fold score is NaN
    (np.array([]) was float64 and indexing with it raised IndexError)."""
    import dataclasses

    cfg, truths, oofs, blobs, fold_of = blob_run
    gone = [i for i, k in fold_of.items() if k == 1]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, exclude_ids=gone))
    report = tune_postprocess(cfg)
    assert report["n_images"] == 8 and report["fold_scores"]["folds"] == [0, 1]
    assert math.isnan(report["fold_scores"]["after"][1]) and not math.isnan(report["fold_scores"]["after"][0])


#: the pairs problem's threshold, min_area and gate grids
PAIRS_GRIDS = ([0.3, 0.45, 0.5, 0.6, 0.7], [0, 8, 20, 60], [None, 0.9, 0.95, 0.99])


def pairs_problem() -> tuple[dict, dict, dict]:
    """24 binary images (about a third empty) of 3 folds: smooth blobs, probabilities lifted on them over smooth
    noise, and bright specks that min_area removes; truths, OOF uint8 probabilities, folds."""
    rng = np.random.default_rng(2)
    truths, oofs = {}, {}
    for k in range(24):
        t = (smooth_probs(rng, (1, H, W), 3.0) > 150).astype(np.uint8)
        if rng.random() < 0.35:
            t[0] = 0
        q = np.clip(0.8 * smooth_probs(rng, (1, H, W)).astype(float) + np.where(t == 1, 45, 0) + rng.integers(0, 25, (1, H, W)),
                    0, 255).astype(np.uint8)
        q[rng.random((1, H, W)) < 0.004] = 250
        rng.integers(0, 110)
        truths[f"n{k:02d}"], oofs[f"n{k:02d}"] = t, q
    return truths, oofs, {f"n{k:02d}": k % 3 for k in range(24)}


def test_threshold_and_min_area_are_searched_as_pairs(tmp_path):
    """A greedy chain (threshold at min_area 0, then min_area at that threshold) kept (0.5, 60) at dice 0.448 on these
    24 images where (0.6, 20) scores 0.524; tune now finds the best pair, and the best (threshold, min_area, gate)
    triple, as a brute force over the same grids scores them with apply_postprocess and per-image dice."""
    import itertools

    from seg_toolkit.metrics import per_image_scores

    truths, oofs, fold_of = pairs_problem()
    thr, areas, gates = PAIRS_GRIDS
    cfg = write_run(tmp_path, "binary", 1, truths, oofs, fold_of, done=[0, 1, 2], n_splits=3, metric={"name": "dice"},
                    postprocess={"threshold_grid": thr, "min_area_grid": areas, "cross_fit": False})
    ids = sorted(truths)
    target = np.stack([truths[i] for i in ids])

    def score(t, a, g=None):
        pred = np.stack([apply_postprocess(uint8_to_probs(oofs[i]), "binary", PostParams([t], [a], [g])) for i in ids])
        return float(np.nanmean(per_image_scores(pred, target, "dice")))

    rep = tune_postprocess(cfg, write=False, gate_grid=gates)
    steps = {s["step"]: s for s in rep["steps"]}
    assert (steps["min_area"]["threshold"], steps["min_area"]["min_area"]) == ([0.6], [20])
    assert steps["min_area"]["score"] == pytest.approx(score(0.6, 20), abs=1e-12) == pytest.approx(0.52412, abs=1e-5)
    assert score(0.5, 60) == pytest.approx(0.44787, abs=1e-5)  # what the chain kept
    best = max(score(t, a, g) for t, a, g in itertools.product(thr, areas, gates))
    p = rep["params"]
    assert rep["after"] == pytest.approx(best, abs=1e-12) == pytest.approx(score(p["threshold"][0], p["min_area"][0], p["empty_gate"][0]), abs=1e-12)


def test_classifier_gate_compares_as_tune_does():
    """tune compares the uint8 gate scores in float32; predict compared the classifier's probability in float64, so
    a gate within a float32 step of a level (as a 7-decimal gate can be) opened in tune and stayed shut at predict."""
    from seg_toolkit.tune_tables import gate_open

    level = uint8_to_probs(np.array([8], np.uint8))  # 8/255 in float32
    gate = float(level[0]) + 1e-9  # above the level in float64, the level itself in float32
    assert gate_open(np.array([8]), gate)[0]
    probs = np.full((1, 4, 4), 0.9, np.float32)
    params = PostParams([0.5], [0], [gate], ["classifier"])
    assert apply_postprocess(probs, "binary", params, presence=level).all()
    assert not apply_postprocess(probs, "binary", params, presence=np.array([7 / 255], np.float32)).any()


def test_predict_decides_on_the_grid_tune_scored_on():
    """OOF files hold round(255 p): tune counted a pixel of 0.399 as 102 / 255 >= 0.4 (foreground), a max of
    0.599 as 153 / 255 >= 0.6 (gate open), and 0.399 / 0.400 as a tie won by the lower class. predict compared the
    float32 values, so the same parameters gave another mask within half a step of a threshold or gate."""
    from seg_toolkit.tune_tables import gate_open

    assert threshold_cut(0.4) == 102 and gate_open(np.array([153]), 0.6)[0]
    probs = np.array([[[0.399, 0.397], [0.9, 0.1]]], np.float32)  # 0.397 -> 101: below the cut in both
    params = PostParams([0.4], [0], [None], ["max_prob"])
    assert apply_postprocess(probs, "binary", params).tolist() == [[[1, 0], [1, 0]]]
    faint = np.full((1, 2, 2), 0.599, np.float32)
    gated = PostParams([0.5], [0], [0.6], ["max_prob"])
    assert apply_postprocess(faint, "binary", gated).all()  # gate open as tune scored it (the mask: 153 >= 128)
    assert apply_postprocess(faint, "binary", PostParams([0.5], [0], [0.6], ["classifier"]), presence=np.array([0.599])).all()
    tie = np.array([[[0.399]], [[0.400]], [[0.201]]], np.float32)  # 102, 102, 51 on the grid
    assert apply_postprocess(tie, "multiclass", PostParams([0.5] * 3, [0] * 3, [None] * 3, ["max_prob"] * 3)).item() == 0
    oof = uint8_to_probs(np.arange(256, dtype=np.uint8)).reshape(1, 16, 16)  # already on the grid: unchanged
    from seg_toolkit.postprocess import on_oof_grid

    assert np.array_equal(on_oof_grid(oof), oof)


def test_instance_rows_min_area_is_the_floor_of_what_is_tuned_and_scored(tmp_path, caplog):
    """submission.min_instance_area drops 8-connected objects below it after post-processing, as min_area does: tuned
    below it, tune and evaluate scored objects that are never submitted."""
    from seg_toolkit.postprocess import load_params

    truths, oofs, _, fold_of = blob_problem()
    cfg = write_run(tmp_path, "binary", 1, truths, oofs, fold_of, done=[0, 1, 2], n_splits=3,
                    submission={"instances": True, "min_instance_area": 30})
    report = tune_postprocess(cfg)
    assert report["candidates"]["min_area"] == [30, 50, 100]  # [0, 10, 50, 100], each at least 30
    assert report["before_params"]["min_area"] == [30] and report["params"]["min_area"][0] >= 30
    ids = done_ids(fold_of, [0, 1, 2])
    assert report["after"] == pytest.approx(brute_score(cfg, PostParams(**report["params"]), ids, truths, oofs), abs=1e-12)
    run = Run(cfg.run_dir)
    data = json.loads(run.postprocess_json.read_text())
    data["params"]["min_area"] = [10]  # a file tuned before the floor
    run.postprocess_json.write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        assert load_params(cfg, run).min_area == [30]
    assert "min_area [10] is below submission.min_instance_area=30, which the submission applies: 30 is used" in caplog.text


def test_a_choice_at_the_end_of_its_grid_is_named():
    """The tuning audit: the demo chose threshold 0.7, the grid's highest, for two classes and min_area 100, the
    highest, without a word; the best may lie beyond. postprocess.json's at_grid_edge names the classes."""
    from seg_toolkit.postprocess import PostParams
    from seg_toolkit.tune import _edge_values, _grid_edges

    cfg = config_from_dict({"data": {"task": "multilabel", "num_classes": 3, "class_column": "c"},
                            "submission": {"per_class": True},
                            "postprocess": {"threshold_grid": [0.3, 0.5, 0.7], "min_area_grid": [0, 50, 100]}})
    start = PostParams(threshold=[0.5] * 3, min_area=[0] * 3, empty_gate=[None] * 3)
    chosen = PostParams(threshold=[0.7, 0.5, 0.3], min_area=[100, 50, 0], empty_gate=[None, 0.9, 0.5])
    edges = _grid_edges(chosen, start, cfg, [None, 0.5, 0.9], "multilabel")
    assert edges == {"threshold": [0, 2], "min_area": [0], "empty_gate": [1]}
    assert _edge_values(chosen, edges) == {"threshold": ("0.7/0.3", [0, 2]), "min_area": ("100", [0]),
                                           "empty_gate": ("0.9", [1])}
    # a class the metric does not score keeps the config's value (every candidate ties): nothing chose it
    scored = config_from_dict({**config_to_dict(cfg), "metric": {"classes": [1]}})
    assert _grid_edges(chosen, start, scored, [None, 0.5, 0.9], "multilabel") == {"threshold": [0], "min_area": [0]}
    # multiclass: min_area of the classes it applies to (class 0's small parts would become class 0 again)
    mc_cfg = config_from_dict({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
                               "submission": {"per_class": True}, "postprocess": {"min_area_grid": [0, 50, 100]}})
    mc = PostParams(threshold=[0.5] * 3, min_area=[100, 100, 50], empty_gate=[None] * 3)
    assert _grid_edges(mc, start, mc_cfg, [], "multiclass") == {"min_area": [1]}
    # a multiclass task searches min_area only; a grid of one value has no edge to speak of
    mc = config_from_dict({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
                           "submission": {"per_class": True},
                           "postprocess": {"min_area_grid": [0]}})
    assert _grid_edges(PostParams(threshold=[0.5] * 3, min_area=[0] * 3, empty_gate=[None] * 3), start, mc, [], "multiclass") == {}
