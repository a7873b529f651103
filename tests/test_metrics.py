"""Metrics against independent computations: sklearn, plain NumPy loops and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from seg_toolkit.config import IGNORE_INDEX, ConfigError, MetricConfig
from seg_toolkit.evaluator import Evaluator, resolve_metric_name
from seg_toolkit.metrics import (
    binarize,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    multilabel_confusion,
    per_image_scores,
    pixel_accuracy,
)

V = IGNORE_INDEX
EMPTY = {"one": 1.0, "zero": 0.0, "skip": math.nan}


# ----------------------------------------------------------------------------- references


def ref_pair_score(pred: np.ndarray, truth: np.ndarray, metric: str, empty_score: str) -> float:
    """One (image, class): ``pred`` bool, ``truth`` 0/1/void, both flat. Plain NumPy, no tricks."""
    valid = truth != V
    if not valid.any():
        return math.nan
    a, b = pred[valid].astype(bool), truth[valid] == 1
    inter, union = int((a & b).sum()), int((a | b).sum())
    if metric == "tgs_map":  # the classic Kaggle kernel, float thresholds
        if b.sum() == 0:
            return float(a.sum() == 0)
        return float(np.mean(inter / union > np.arange(0.5, 1.0, 0.05)))
    if metric == "dice":
        den = int(a.sum() + b.sum())
        return EMPTY[empty_score] if den == 0 else 2 * inter / den
    return EMPTY[empty_score] if union == 0 else inter / union


def ref_scores_masks(pred: np.ndarray, truth: np.ndarray, metric: str, empty_score: str) -> np.ndarray:
    n, c = pred.shape[:2]
    out = np.empty((n, c))
    for i in range(n):
        for j in range(c):
            out[i, j] = ref_pair_score(pred[i, j].ravel(), truth[i, j].ravel(), metric, empty_score)
    return out


def ref_scores_labels(pred: np.ndarray, truth: np.ndarray, num_classes: int, metric: str, empty_score: str) -> np.ndarray:
    """Multiclass label maps: class c against the rest, void kept void."""
    onehot_p = np.stack([pred == c for c in range(num_classes)], 1)
    onehot_t = np.stack([np.where(truth == V, V, truth == c) for c in range(num_classes)], 1)
    return ref_scores_masks(onehot_p, onehot_t, metric, empty_score)


def random_masks(seed: int, n: int = 6, c: int = 2, h: int = 5, w: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Random hard masks and 0/1/void targets, with an empty-empty pair and an all-void pair."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c, h, w)) < 0.3).astype(np.float32)
    pred = (rng.random((n, c, h, w)) < 0.3).astype(np.uint8)
    truth[rng.random((n, c, h, w)) < 0.15] = V
    truth[0, 0], pred[0, 0] = 0, 0  # empty truth and prediction
    truth[1, c - 1] = V  # every pixel void
    pred[2, 0] = 0  # non-empty truth, empty prediction (most likely)
    return pred, truth


def random_labels(seed: int, n: int = 4, num_classes: int = 4, h: int = 6, w: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_classes, (n, h, w))
    pred = np.where(rng.random((n, h, w)) < 0.6, truth, rng.integers(0, num_classes, (n, h, w)))
    truth[rng.random((n, h, w)) < 0.2] = V
    return pred, truth


# ----------------------------------------------------------------------------- confusion-based


def test_confusion_by_hand() -> None:
    truth = np.array([[0, 1, 2], [1, V, 2]])
    pred = np.array([[0, 2, 2], [1, 0, 1]])
    # pairs (truth, pred) without the void pixel: (0,0) (1,2) (2,2) (1,1) (2,1)
    cm = confusion_matrix(pred, truth, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    assert cm.dtype == np.int64
    # IoU: class 0: 1/1; class 1: TP 1, FP 1, FN 1 -> 1/3; class 2 the same
    np.testing.assert_allclose(iou_per_class(cm), [1, 1 / 3, 1 / 3])
    # dice: 2*1 / (2 + 1 + 1) = 1/2 for classes 1 and 2
    np.testing.assert_allclose(dice_per_class(cm), [1, 0.5, 0.5])
    assert mean_iou(cm) == pytest.approx(5 / 9)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_confusion_iou_dice_accuracy_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    c = 5
    truth = rng.integers(0, c - 1, (3, 8, 9))  # class 4 occurs in neither truth nor prediction
    pred = rng.integers(0, c - 1, (3, 8, 9))
    void = rng.random(truth.shape) < 0.2
    truth[void] = V
    t, p = truth[~void], pred[~void]
    cm = confusion_matrix(pred, truth, c)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, p, labels=list(range(c))))
    iou = iou_per_class(cm)
    ref_iou = skm.jaccard_score(t, p, labels=list(range(c)), average=None, zero_division=0)
    np.testing.assert_allclose(iou[: c - 1], ref_iou[: c - 1])
    assert math.isnan(iou[c - 1])
    assert mean_iou(cm) == pytest.approx(ref_iou[: c - 1].mean())
    ref_dice = skm.f1_score(t, p, labels=list(range(c)), average=None, zero_division=0)
    np.testing.assert_allclose(dice_per_class(cm)[: c - 1], ref_dice[: c - 1])
    assert pixel_accuracy(cm) == pytest.approx(skm.accuracy_score(t, p))


def test_confusion_accepts_tensors() -> None:
    pred, truth = random_labels(1)
    ref = confusion_matrix(pred, truth, 4)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), 4), ref)


def test_class_only_predicted_has_iou_zero_not_nan() -> None:
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    np.testing.assert_allclose(iou_per_class(cm), [0.5, 0.0])


def test_confusion_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match="target has label 3 outside 0..2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="pred has label -1"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 3)


def test_multilabel_confusion_matches_sklearn_per_channel() -> None:
    pred, truth = random_masks(3, c=3)
    cm = multilabel_confusion(pred, truth)
    assert cm.shape == (3, 2, 2)
    for c in range(3):
        valid = truth[:, c] != V
        ref = skm.confusion_matrix(truth[:, c][valid], pred[:, c][valid], labels=[0, 1])
        np.testing.assert_array_equal(cm[c], ref)  # [[TN, FP], [FN, TP]]


# ----------------------------------------------------------------------------- per image


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("empty_score", ["one", "zero", "skip"])
def test_per_image_matches_numpy_loop(metric: str, empty_score: str) -> None:
    pred, truth = random_masks(4)
    ours = per_image_scores(pred, truth, metric, empty_score)
    np.testing.assert_allclose(ours, ref_scores_masks(pred, truth, metric, empty_score), equal_nan=True)
    assert math.isnan(ours[1, 1])  # all void: never scored


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_per_image_multiclass_matches_numpy_loop(metric: str) -> None:
    pred, truth = random_labels(5)
    ours = per_image_scores(pred, truth, metric, "skip", num_classes=4)
    np.testing.assert_allclose(ours, ref_scores_labels(pred, truth, 4, metric, "skip"), equal_nan=True)


def _empty_case() -> tuple[np.ndarray, np.ndarray]:
    """Three 1x4 images: A empty/empty; B perfect; C truth 2 pixels, prediction 1 of them."""
    truth = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float32).reshape(3, 1, 1, 4)
    pred = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.uint8).reshape(3, 1, 1, 4)
    return pred, truth


@pytest.mark.parametrize(
    "empty_score,dice,iou",
    [
        # C: dice 2*1 / (1 + 2) = 2/3, IoU 1/2
        ("one", [1, 1, 2 / 3], [1, 1, 1 / 2]),
        ("zero", [0, 1, 2 / 3], [0, 1, 1 / 2]),
        ("skip", [math.nan, 1, 2 / 3], [math.nan, 1, 1 / 2]),
    ],
)
def test_empty_score(empty_score: str, dice: list, iou: list) -> None:
    pred, truth = _empty_case()
    np.testing.assert_allclose(per_image_scores(pred, truth, "dice", empty_score)[:, 0], dice, equal_nan=True)
    np.testing.assert_allclose(per_image_scores(pred, truth, "iou", empty_score)[:, 0], iou, equal_nan=True)
    ev = Evaluator(MetricConfig(name="dice", empty_score=empty_score), "binary", 1)
    ev.update_masks(pred, truth)
    out = ev.compute()
    np.testing.assert_allclose(out["per_image"], dice, equal_nan=True)
    assert out["score"] == pytest.approx(np.nanmean(dice))  # skip: (1 + 2/3) / 2


def test_tgs_by_hand() -> None:
    def masks(n_truth: int, n_pred: int) -> tuple[np.ndarray, np.ndarray]:
        """10x10 image; truth = first n_truth pixels, prediction = first n_pred pixels."""
        t, p = np.zeros(100, np.float32), np.zeros(100, np.uint8)
        t[:n_truth], p[:n_pred] = 1, 1
        return p.reshape(1, 1, 10, 10), t.reshape(1, 1, 10, 10)

    cases = [
        (masks(50, 31), 0.3),  # IoU 31/50 = 0.62 > 0.50, 0.55, 0.60 -> 3/10
        (masks(50, 30), 0.2),  # IoU exactly 0.60: strict '>' passes 0.50, 0.55 only -> 2/10
        (masks(100, 95), 0.9),  # IoU exactly 0.95: passes all but 0.95 -> 9/10
        (masks(40, 40), 1.0),  # perfect
        (masks(0, 0), 1.0),  # empty truth, empty prediction
        (masks(0, 1), 0.0),  # empty truth, one predicted pixel
        (masks(10, 0), 0.0),  # truth, empty prediction
    ]
    pred = np.concatenate([c[0][0] for c in cases])
    truth = np.concatenate([c[0][1] for c in cases])
    expected = [c[1] for c in cases]
    np.testing.assert_allclose(per_image_scores(pred, truth, "tgs_map")[:, 0], expected)
    ev = Evaluator(MetricConfig(name="tgs_map", empty_score="zero"), "binary", 1)  # empty_score is not used
    ev.update_masks(pred, truth)
    assert ev.compute()["score"] == pytest.approx(3.4 / 7)


def test_tgs_matches_kernel_reference_on_random_masks() -> None:
    rng = np.random.default_rng(6)
    truth = (rng.random((40, 1, 6, 6)) < rng.random((40, 1, 1, 1))).astype(np.float32)
    pred = np.where(rng.random((40, 1, 6, 6)) < 0.85, truth, 1 - truth).astype(np.uint8)
    truth[:5], pred[:3] = 0, 0
    ours = per_image_scores(pred, truth, "tgs_map")
    np.testing.assert_allclose(ours, ref_scores_masks(pred, truth, "tgs_map", "one"))


def grader_histogram_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """The mle-bench TGS grader's per-image score (``iou_metric`` in its
    ``mlebench/competitions/tgs-salt-identification-challenge/grade.py``), restated from its published algorithm: the
    two early returns for an empty truth, then IoU from 2-bin histograms over each mask's own value range."""
    t, p = truth.ravel(), pred.ravel()
    if t.sum() == 0:
        return float(p.sum() == 0)
    inter = np.histogram2d(t, p, bins=(2, 2))[0]
    area_t, area_p = np.histogram(t, bins=2)[0][:, None], np.histogram(p, bins=2)[0][None, :]
    union = (area_t + area_p - inter)[1:, 1:]
    union[union == 0] = 1e-9
    iou = inter[1:, 1:] / union
    precisions = []
    for th in np.arange(0.5, 1.0, 0.05):
        matches = iou > th
        tp, fp, fn = ((matches.sum(1) == 1).sum(), (matches.sum(0) == 0).sum(), (matches.sum(1) == 0).sum())
        precisions.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else 0)
    return float(np.mean(precisions))


def test_tgs_map_mlebench_scores_as_the_grader_does() -> None:
    """The grader gives an empty prediction of a salt image IoU = the salt's share of the image (an all-zero mask's
    histogram range puts every pixel in its foreground bin); tgs_map, Kaggle's definition, gives it 0. By hand on a
    10x10 image, then against the grader's algorithm on random masks, through the Evaluator and the tuner's counts."""
    def masks(n_truth: int, n_pred: int) -> tuple[np.ndarray, np.ndarray]:
        t, p = np.zeros(100, np.float32), np.zeros(100, np.uint8)
        t[:n_truth], p[:n_pred] = 1, 1
        return p.reshape(1, 1, 10, 10), t.reshape(1, 1, 10, 10)

    cases = [(masks(80, 0), 0.6),  # IoU 0.80 > 0.50 .. 0.75: 6 of 10 (tgs_map: 0)
             (masks(55, 0), 0.1),  # 0.55 passes 0.50 only
             (masks(50, 0), 0.0),  # exactly 0.50 passes none
             (masks(100, 0), 1.0),  # all salt, predicted empty
             (masks(50, 31), 0.3), (masks(0, 0), 1.0), (masks(0, 1), 0.0), (masks(100, 95), 0.9)]  # as tgs_map
    pred = np.concatenate([c[0][0] for c in cases])
    truth = np.concatenate([c[0][1] for c in cases])
    np.testing.assert_allclose(per_image_scores(pred, truth, "tgs_map_mlebench")[:, 0], [c[1] for c in cases])
    np.testing.assert_allclose(per_image_scores(pred, truth, "tgs_map")[:4, 0], 0.0)
    rng = np.random.default_rng(11)
    truth = (rng.random((60, 1, 7, 7)) < rng.random((60, 1, 1, 1))).astype(np.float32)
    pred = np.where(rng.random((60, 1, 7, 7)) < 0.85, truth, 1 - truth).astype(np.uint8)
    pred[:25] = 0  # empty predictions of every coverage
    truth[:3] = 0
    want = np.array([grader_histogram_score(truth[i, 0], pred[i, 0]) for i in range(60)])
    assert len(np.unique(want[:25])) > 4  # coverages on both sides of 0.5: the quirk is exercised
    ours = per_image_scores(pred, truth, "tgs_map_mlebench")[:, 0]
    np.testing.assert_allclose(ours, want, atol=1e-12)
    ev = Evaluator(MetricConfig(name="tgs_map_mlebench"), "binary", 1)
    ev.update_masks(pred, truth)
    assert ev.compute()["score"] == pytest.approx(want.mean(), abs=1e-12)
    from seg_toolkit.metrics import image_counts
    from seg_toolkit.tune_tables import sigmoid_score

    counts = image_counts(pred, truth)
    assert sigmoid_score(counts.tp, counts.fp, counts.tp + counts.fn, counts.n_valid, "tgs_map_mlebench",
                         "one") == pytest.approx(want.mean(), abs=1e-12)


def test_tgs_rejects_multichannel() -> None:
    pred, truth = random_masks(7, c=2)
    with pytest.raises(ValueError, match="binary"):
        per_image_scores(pred, truth, "tgs_map")


# ----------------------------------------------------------------------------- evaluator


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n, size)]


@pytest.mark.parametrize("metric", ["dice", "iou", "miou", "pixel_accuracy"])
@pytest.mark.parametrize("task,c", [("binary", 1), ("multilabel", 3)])
def test_evaluator_sigmoid_batches_equal_one_shot_and_reference(task: str, c: int, metric: str) -> None:
    rng = np.random.default_rng(8)
    _, truth = random_masks(9, n=7, c=c)
    probs = rng.random(truth.shape).astype(np.float32)
    cfg = MetricConfig(name=metric, empty_score="skip", threshold=0.6)
    one = Evaluator(cfg, task, c)
    one.update(torch.from_numpy(probs), torch.from_numpy(truth))
    acc = Evaluator(cfg, task, c)
    for s in _batches(7, 3):
        acc.update(probs[s], truth[s])
    a, b = one.compute(), acc.compute()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_equal(a[key], b[key])
    assert a["n_images"] == 7
    pred = probs >= 0.6
    cm = multilabel_confusion(pred, truth)
    assert a["confusion"] == (cm[0] if task == "binary" else cm).tolist()
    np.testing.assert_allclose(a["per_class_iou"], iou_per_class(cm))
    if metric in ("dice", "iou"):
        ref = ref_scores_masks(pred, truth, metric, "skip")
        assert a["score"] == pytest.approx(np.nanmean(ref))  # mean over (image, class) pairs
        np.testing.assert_allclose(a["per_image"], [np.nanmean(r) if not np.isnan(r).all() else np.nan for r in ref], equal_nan=True)
        assert ("per_image_class" in a) == (c > 1)
    elif metric == "miou":
        assert a["score"] == pytest.approx(np.nanmean(iou_per_class(cm)))
        assert "per_image" not in a
    else:
        assert a["score"] == pytest.approx(pixel_accuracy(cm))


@pytest.mark.parametrize("metric", ["auto", "dice", "pixel_accuracy"])
def test_evaluator_multiclass_batches_equal_one_shot_and_sklearn(metric: str) -> None:
    pred, truth = random_labels(10, n=5)
    rng = np.random.default_rng(11)
    # probabilities whose argmax is `pred`
    probs = rng.random((5, 4, 6, 5)).astype(np.float32)
    np.put_along_axis(probs, pred[:, None], 2.0, axis=1)
    cfg = MetricConfig(name=metric, empty_score="skip")
    one = Evaluator(cfg, "multiclass", 4)
    one.update(probs, truth)
    acc = Evaluator(cfg, "multiclass", 4)
    for s in _batches(5, 2):
        acc.update_masks(torch.from_numpy(pred[s]), torch.from_numpy(truth[s]))
    a, b = one.compute(), acc.compute()
    for key in a:
        np.testing.assert_equal(a[key], b[key])
    valid = truth != V
    np.testing.assert_array_equal(a["confusion"], skm.confusion_matrix(truth[valid], pred[valid], labels=[0, 1, 2, 3]))
    if metric == "auto":
        assert a["metric"] == "miou"
        ref = skm.jaccard_score(truth[valid], pred[valid], labels=[0, 1, 2, 3], average=None)
        assert a["score"] == pytest.approx(ref.mean())
    elif metric == "dice":
        ref = ref_scores_labels(pred, truth, 4, "dice", "skip")
        assert a["score"] == pytest.approx(np.nanmean(ref))
        np.testing.assert_allclose(a["per_image_class"], ref, equal_nan=True)
    else:
        assert a["score"] == pytest.approx(skm.accuracy_score(truth[valid], pred[valid]))


@pytest.mark.parametrize("task,c,metric,classes", [
    ("binary", 1, "tgs_map", None), ("binary", 1, "dice", None), ("multilabel", 2, "global_dice", None),
    ("multilabel", 2, "iou", [2]), ("multiclass", 4, "miou", None), ("multiclass", 4, "dice", [1, 3]),
    ("multiclass", 4, "pixel_accuracy", None)])
def test_evaluator_group_scores_as_an_evaluator_of_that_group_alone(task, c, metric, classes) -> None:
    """compute([group]) (a fold's score in the one pass over the OOF files) equals a second Evaluator fed that group's
    images only; the whole is still every image, whatever its group."""
    if task == "multiclass":
        pred, truth = random_labels(12, n=7, num_classes=c)
    else:
        pred, truth = random_masks(12, n=7, c=c)
    groups = ["a", "b", "a", "c", "b", "a", "a"]
    cfg = MetricConfig(name=metric, empty_score="zero", classes=classes)
    pooled, alone, every = Evaluator(cfg, task, c), {g: Evaluator(cfg, task, c) for g in "abc"}, Evaluator(cfg, task, c)
    for i, g in enumerate(groups):
        pooled.update_masks(pred[i:i + 1], truth[i:i + 1], group=g)
        alone[g].update_masks(pred[i:i + 1], truth[i:i + 1])
    every.update_masks(pred, truth)
    assert pooled.groups() == ["a", "b", "c"]
    for g in "abc":
        got, want = pooled.compute([g]), alone[g].compute()
        assert got.keys() == want.keys() and got["n_images"] == groups.count(g)
        for key in want:
            np.testing.assert_equal(got[key], want[key])
    got, want = pooled.compute(), every.compute()
    for key in want:
        np.testing.assert_equal(got[key], want[key])
    both = Evaluator(cfg, task, c)  # groups: the images of any of them (an ensemble's half of the folds)
    for i, g in enumerate(groups):
        if g in "ac":
            both.update_masks(pred[i:i + 1], truth[i:i + 1])
    got, want = pooled.compute(groups=["a", "c"]), both.compute()
    for key in want:
        np.testing.assert_equal(got[key], want[key])
    with pytest.raises(KeyError, match="no images were added with group 'd'"):
        pooled.compute(["d"])


def test_an_empty_multiclass_batch_adds_nothing() -> None:
    ev = Evaluator(MetricConfig(name="miou"), "multiclass", 3)
    ev.update_masks(torch.zeros(0, 4, 5, dtype=torch.long), torch.zeros(0, 4, 5, dtype=torch.long))
    ev.update_masks(torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
    assert ev.n_images == 1 and ev.compute()["score"] == 1.0


def test_confusion_leaves_void_pixels_out_whatever_is_predicted_there() -> None:
    """Void pixels go to a bin of their own: a prediction out of range there is not checked or counted."""
    truth = np.array([[0, 1, V], [2, V, 1]])
    pred = np.array([[0, 2, 9], [2, -4, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, truth, 3), [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    ev = Evaluator(MetricConfig(name="dice", empty_score="skip"), "multiclass", 3)
    ev.update_masks(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    np.testing.assert_array_equal(ev.last_counts.tp, [[1, 1, 1]])
    np.testing.assert_array_equal(ev.last_counts.fp, [[0, 0, 1]])
    np.testing.assert_array_equal(ev.last_counts.fn, [[0, 1, 0]])
    np.testing.assert_array_equal(ev.last_counts.n_valid, [[4, 4, 4]])


def test_evaluator_reset_and_empty() -> None:
    ev = Evaluator(MetricConfig(), "binary", 1)
    with pytest.raises(RuntimeError, match="no images"):
        ev.compute()
    pred, truth = _empty_case()
    ev.update_masks(pred, truth)
    assert ev.n_images == 3
    ev.reset()
    assert ev.n_images == 0


def test_evaluator_all_void_gives_nan_score() -> None:
    ev = Evaluator(MetricConfig(name="dice"), "binary", 1)
    ev.update_masks(np.ones((2, 1, 2, 2), np.uint8), np.full((2, 1, 2, 2), V, np.float32))
    out = ev.compute()
    assert math.isnan(out["score"]) and all(math.isnan(x) for x in out["per_image"])
    assert out["confusion"] == [[0, 0], [0, 0]]


def test_metric_name_resolution() -> None:
    assert resolve_metric_name("auto", "multiclass") == "miou"
    assert resolve_metric_name("auto", "binary") == "dice"
    assert resolve_metric_name("auto", "multilabel") == "dice"
    assert resolve_metric_name("tgs_map", "binary") == "tgs_map"
    for task in ("multilabel", "multiclass"):
        with pytest.raises(ConfigError, match=r"metric\.name: 'tgs_map'.*binary"):
            Evaluator(MetricConfig(name="tgs_map"), task, 3)


def test_evaluator_rejects_wrong_shapes() -> None:
    ev = Evaluator(MetricConfig(), "multilabel", 2)
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        ev.update(np.zeros((1, 3, 2, 2)), np.zeros((1, 3, 2, 2)))
    ev = Evaluator(MetricConfig(), "multiclass", 3)
    with pytest.raises(ValueError, match="label maps"):
        ev.update_masks(np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 2)))


def test_binarize_threshold_is_inclusive_and_per_channel() -> None:
    probs = np.array([0.4, 0.5, 0.6], dtype=np.float32).reshape(1, 1, 1, 3)
    assert binarize(probs, 0.5).ravel().tolist() == [False, True, True]
    two = np.concatenate([probs, probs], axis=1)
    assert binarize(torch.from_numpy(two), [0.5, 0.6]).reshape(2, 3).tolist() == [[False, True, True], [False, False, True]]


def test_global_dice_pools_the_pixels_of_all_images() -> None:
    """Contrails' metric: dice of all pixels pooled, not the mean of per-image dice."""
    truth = np.zeros((2, 1, 4, 4), np.float32)
    pred = np.zeros((2, 1, 4, 4), np.uint8)
    truth[0, 0, 0, :] = 1  # A: 4 pixels, all found -> dice 1
    pred[0, 0, 0, :] = 1
    truth[1, 0, :3, :] = 1  # B: 12 pixels, 6 found -> dice 2*6 / (6 + 12) = 2/3
    pred[1, 0, :2, 1:] = 1
    pred[1, 0, 2, :0] = 1
    assert int(pred[1].sum()) == 6
    ev = Evaluator(MetricConfig(name="global_dice"), "binary", 1)
    ev.update_masks(pred, truth)
    out = ev.compute()
    # pooled: TP 10, FP 0, FN 6 -> 20 / 26; per image it would be (1 + 2/3) / 2 = 5/6
    assert out["score"] == pytest.approx(20 / 26) and out["confusion"] == [[16, 0], [6, 10]]
    per_image = Evaluator(MetricConfig(name="dice"), "binary", 1)
    per_image.update_masks(pred, truth)
    assert per_image.compute()["score"] == pytest.approx(5 / 6)
    # tune's exact scorer from per-image counts agrees
    from seg_toolkit.tune_tables import sigmoid_score
    tp, fp, pos, n = (np.array([[a], [b]]) for a, b in ((4, 6), (0, 0), (4, 12), (16, 16)))
    assert sigmoid_score(tp, fp, pos, n, "global_dice", "one") == pytest.approx(20 / 26)


def test_metric_classes_average_only_the_listed_classes() -> None:
    """The leaderboard scores the submitted classes; the score averaged class 0 too (0.82 where it scores 0.667)."""
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 0, :] = 1  # 10 pixels of class 1
    pred = torch.zeros(1, 10, 10, dtype=torch.long)
    pred[0, 0, :5] = 1  # 5 of them found
    both = Evaluator(MetricConfig(name="dice"), "multiclass", 2)
    both.update_masks(pred, target)
    assert both.compute()["score"] == pytest.approx((180 / 185 + 10 / 15) / 2)
    one = Evaluator(MetricConfig(name="dice", classes=[1]), "multiclass", 2)
    one.update_masks(pred, target)
    out = one.compute()
    assert out["score"] == pytest.approx(10 / 15) and out["per_image"] == [pytest.approx(10 / 15)]
    assert out["per_image_class"] == [[pytest.approx(180 / 185), pytest.approx(10 / 15)]]  # every class still kept
    # mIoU of the confusion [[1, 1], [0, 2]]: class 0 1/2, class 1 2/3; class 1's IoU counts class 0's pixel as its FP
    miou = Evaluator(MetricConfig(name="miou", classes=[1]), "multiclass", 2)
    miou.update_masks(torch.tensor([[[0, 1, 1, 1]]]), torch.tensor([[[0, 0, 1, 1]]]))
    assert miou.compute()["score"] == pytest.approx(2 / 3)
    # multilabel numbers its classes from 1: classes [2] is the second channel
    ml = Evaluator(MetricConfig(name="dice", classes=[2]), "multilabel", 2)
    t = torch.zeros(1, 2, 2, 2)
    t[0, 1, 0, 0] = 1
    p = torch.zeros(1, 2, 2, 2)
    p[0, 0, 1, 1] = 1  # a false positive in channel 1 (class 1), not scored
    p[0, 1, 0, 0] = 1
    ml.update_masks(p, t)
    assert ml.compute()["score"] == 1.0


def test_multiclass_hard_prediction_is_numpys_argmax_ties_to_the_lower_class() -> None:
    """hard_prediction takes the argmax over channels laid out last (2.6x faster on CamVid-size maps than over NCHW):
    the same labels as NumPy's first-maximum argmax, on probabilities quantised to 1/255 so that ties are common."""
    from seg_toolkit.evaluator import hard_prediction

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 4, (3, 11, 37, 53), generator=g).float() / 255  # 4 levels over 11 classes: ties nearly everywhere
    want = q.numpy().argmax(1)
    got = hard_prediction(q, "multiclass", None)
    assert got.shape == (3, 37, 53) and np.array_equal(got.numpy(), want)
    assert np.array_equal(q.argmax(1).numpy(), want)  # as the NCHW argmax it replaces


def test_oof_files_are_argmaxed_as_stored_bytes_with_the_probabilities_ties() -> None:
    """The OOF summary takes the argmax of the uint8 file itself (3.8x faster than of q / 255): the same labels,
    ties included, as the probabilities the predictor's argmax saw."""
    from seg_toolkit.report.summary import predict_mask

    q = np.random.default_rng(3).integers(0, 5, (11, 37, 53), dtype=np.uint8)  # 5 levels over 11 classes: many ties
    got = predict_mask(q, "multiclass", 0.5)
    assert got.shape == (1, 37, 53) and np.array_equal(got[0].numpy(), (q.astype(np.float32) / 255).argmax(0))
