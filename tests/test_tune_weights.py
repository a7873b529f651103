"""Multiclass class weights (``postprocess.class_weight_grid``): applied as the argmax of weight x probability,
searched on OOF by coordinate ascent (``seg_toolkit.tune_weights``), checked when the config loads."""

from __future__ import annotations

import numpy as np
import pytest

from seg_toolkit.config import ConfigError
from seg_toolkit.postprocess import PostParams, apply_postprocess, load_params
from seg_toolkit.tensors import uint8_to_probs
from seg_toolkit.tune import tune_postprocess

from .test_tune import H, W, write_run


def test_a_weight_moves_the_argmax_by_hand():
    probs = np.zeros((3, 1, 3), np.float32)
    probs[:, 0, 0] = [0.50, 0.30, 0.20]  # class 1 at 2x: 0.60 > 0.50
    probs[:, 0, 1] = [0.60, 0.25, 0.15]  # 0.50 < 0.60: stays 0
    probs[:, 0, 2] = [0.20, 0.30, 0.50]  # class 2's 0.50 loses to class 1's 2 x 0.30 = 0.60
    plain = PostParams([0.5] * 3, [0] * 3, [None] * 3)
    assert apply_postprocess(probs, "multiclass", plain).tolist() == [[0, 0, 2]]
    weighted = PostParams([0.5] * 3, [0] * 3, [None] * 3, class_weight=[1, 2, 1])
    assert apply_postprocess(probs, "multiclass", weighted).tolist() == [[1, 0, 1]]
    assert weighted.class_weight == [1.0, 2.0, 1.0] and weighted.weighted() and not plain.weighted()
    assert plain.class_weight == [1.0] * 3  # a postprocess.json written before the weights existed reads as all 1


@pytest.mark.parametrize("bad", [[1.0, 0.0, 1.0], [1.0, -2.0, 1.0], [1.0, float("inf"), 1.0], [1.0, 1.0]])
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValueError, match="class_weight"):
        PostParams([0.5] * 3, [0] * 3, [None] * 3, class_weight=bad)


def under_predicted_problem(n: int = 12):
    """3 classes: every image has a class-2 square (36 px) whose probabilities are (0.45, 0.15, 0.40): the argmax says
    0, 1.25 x 0.40 = 0.50 says 2; and a class-0 patch at (0.55, 0.10, 0.35): 1.25 x 0.35 = 0.4375 stays 0, but
    2.0 x 0.35 = 0.70 would turn it to 2. Class 1 is a plain rectangle. Weight 1.25 on class 2 is exactly right."""
    truths, oofs = {}, {}
    for k in range(n):
        label = np.zeros((H, W), np.uint8)
        label[4:16, 4:16] = 1
        label[20:26, 22:28] = 2
        p = np.zeros((3, H, W), np.float64)
        p[:] = np.array([0.80, 0.10, 0.10])[:, None, None]
        p[:, label == 1] = np.array([0.10, 0.80, 0.10])[:, None]
        p[:, label == 2] = np.array([0.45, 0.15, 0.40])[:, None]
        p[:, 2:8, 30:36] = np.array([0.55, 0.10, 0.35])[:, None, None]  # true class 0
        truths[f"w{k:02d}"], oofs[f"w{k:02d}"] = label, np.rint(p * 255).astype(np.uint8)
    return truths, oofs


def test_the_search_finds_the_weight_that_wins_the_rare_class_back(tmp_path):
    truths, oofs = under_predicted_problem()
    fold_of = {i: k % 3 for k, i in enumerate(sorted(truths))}
    cfg = write_run(tmp_path, "multiclass", 3, truths, oofs, fold_of, done=[0, 1, 2], n_splits=3,
                    postprocess={"class_weight_grid": [0.8, 1.25, 2.0], "min_area_grid": [0]})
    report = tune_postprocess(cfg)
    steps = {s["step"]: s for s in report["steps"]}
    assert report["params"]["class_weight"] == [1.0, 1.0, 1.25]
    # before: class 2 is never predicted (IoU 0), class 1 is exact (IoU 1), class 0 also takes class 2's 36 px per image
    iou0 = (W * H - 144 - 36) / (W * H - 144)
    assert report["before"] == pytest.approx((iou0 + 1 + 0) / 3, abs=1e-12)
    assert steps["class_weight"]["score"] == report["after"] == 1.0
    assert report["cross_fitted"]["score"] == 1.0  # every fold's search finds it too
    params = load_params(cfg, cfg.run_dir)  # what evaluate and predict apply
    for i in truths:
        assert np.array_equal(apply_postprocess(uint8_to_probs(oofs[i]), "multiclass", params), truths[i])


def test_one_pass_per_class_and_round_the_start_included(tmp_path, monkeypatch):
    """The search on the problem above: round 0 scores class 1 (its grid and the start's weight 1, which gives the
    start's confusions: one pass) and class 2 (one pass, moves to 1.25); round 1 scores class 1 again under the new
    class-2 weight (one pass) and class 2 under unchanged others (cached): 3 passes over the OOF files, not 4."""
    import seg_toolkit.tune_weights as tw

    truths, oofs = under_predicted_problem()
    fold_of = {i: k % 3 for k, i in enumerate(sorted(truths))}
    cfg = write_run(tmp_path, "multiclass", 3, truths, oofs, fold_of, done=[0, 1, 2], n_splits=3,
                    postprocess={"class_weight_grid": [0.8, 1.25, 2.0], "min_area_grid": [0], "cross_fit": False})
    passes: list[tuple[int, tuple[float, ...]]] = []
    real = tw.coordinate_confusions

    def counting(data, weights, k, candidates):
        passes.append((k, tuple(candidates)))
        return real(data, weights, k, candidates)

    monkeypatch.setattr(tw, "coordinate_confusions", counting)
    report = tune_postprocess(cfg)
    assert passes == [(1, (0.8, 1.25, 2.0, 1.0)), (2, (0.8, 1.25, 2.0)), (1, (0.8, 1.25, 2.0))]
    assert report["params"]["class_weight"] == [1.0, 1.0, 1.25] and report["after"] == 1.0
    iou0 = (W * H - 144 - 36) / (W * H - 144)
    assert {s["step"]: s for s in report["steps"]}["class_weight"]["score"] == 1.0
    assert report["before"] == pytest.approx((iou0 + 1 + 0) / 3, abs=1e-12)


def test_off_by_default_and_multiclass_only(tmp_path):
    truths, oofs = under_predicted_problem()
    fold_of = {i: k % 3 for k, i in enumerate(sorted(truths))}
    cfg = write_run(tmp_path, "multiclass", 3, truths, oofs, fold_of, done=[0, 1, 2], n_splits=3)
    report = tune_postprocess(cfg)
    assert report["params"]["class_weight"] == [1.0] * 3 and "class_weight" not in {s["step"] for s in report["steps"]}
    with pytest.raises(ConfigError, match="postprocess.class_weight_grid: weighs a multiclass argmax"):
        write_run(tmp_path / "b", "binary", 1, {"a": np.zeros((1, H, W), np.uint8)}, {"a": np.zeros((1, H, W), np.uint8)},
                  {"a": 0}, done=[0], n_splits=2, postprocess={"class_weight_grid": [1.5]})
    with pytest.raises(ConfigError, match=r"postprocess.class_weight_grid: expected positive weights .* got \[0\.0\]"):
        write_run(tmp_path / "c", "multiclass", 3, truths, oofs, fold_of, done=[0], n_splits=3,
                  postprocess={"class_weight_grid": [1.5, 0]})


def test_one_pass_per_coordinate_gives_the_labels_of_apply_postprocess_bit_for_bit():
    from seg_toolkit.tune_weights import coordinate_confusions, weighted_confusion

    from .test_tune import Stub

    rng = np.random.default_rng(21)
    # coarse uint8 levels so that ties are everywhere: 50 at weight 2 equals 100 at weight 1 in float32
    qs = [rng.choice(np.array([0, 25, 50, 100, 150], np.uint8), size=(4, 12, 14)) for _ in range(6)]
    truths = [rng.integers(0, 4, size=(12, 14)).astype(np.uint8) for _ in range(6)]
    truths[2][:, :3] = 255  # void
    stub = Stub(qs, truths, 4)
    weights = [1.0, 2.0, 0.5, 1.0]
    values = [0.5, 1.0, 2.0, 4.0]
    for k in (1, 2, 3):
        fast = coordinate_confusions(stub, weights, k, values)
        for g, v in enumerate(values):
            slow = weighted_confusion(stub, weights[:k] + [v] + weights[k + 1:], [0] * 4)
            assert np.array_equal(fast[g], slow), (k, v)
