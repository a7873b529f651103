"""Which post-processing search ``tune`` keeps (``postprocess.search``): the greedy chain (each step keeps the
previous steps' values), the joint search (threshold searched again beside min_area and gate), or, by default,
the one whose cross-fitted score is higher. Checked against brute force on the pairs problem of test_tune.py."""

from __future__ import annotations

import numpy as np
import pytest

from seg_toolkit.config import ConfigError
from seg_toolkit.metrics import per_image_scores
from seg_toolkit.postprocess import PostParams, apply_postprocess
from seg_toolkit.tensors import uint8_to_probs
from seg_toolkit.tune import tune_postprocess

from .test_tune import PAIRS_GRIDS, pairs_problem, write_run
from .test_tune_crossfit import brute_cross_fitted


def pairs_run(tmp_path, metric: str, search: str, cross_fit: bool = True):
    truths, oofs, fold_of = pairs_problem()
    thr, areas, _ = PAIRS_GRIDS
    cfg = write_run(tmp_path, "binary", 1, truths, oofs, fold_of, done=[0, 1, 2], n_splits=3, metric={"name": metric},
                    postprocess={"threshold_grid": thr, "min_area_grid": areas, "cross_fit": cross_fit, "search": search})
    return cfg, truths, oofs, fold_of


def dice_of(truths, oofs, t, a, g=None) -> float:
    ids = sorted(truths)
    pred = np.stack([apply_postprocess(uint8_to_probs(oofs[i]), "binary", PostParams([t], [a], [g])) for i in ids])
    return float(np.nanmean(per_image_scores(pred, np.stack([truths[i] for i in ids]), "dice")))


def test_the_greedy_chain_keeps_each_steps_threshold(tmp_path):
    """Greedy: min_area is searched at step 1's threshold (0.5), and keeps (0.5, 60) at dice 0.448 where the joint
    search finds (0.6, 20) at 0.524 (test_tune.py); the gate step keeps that pair too."""
    cfg, truths, oofs, _ = pairs_run(tmp_path, "dice", "greedy", cross_fit=False)
    rep = tune_postprocess(cfg, write=False, gate_grid=PAIRS_GRIDS[2])
    steps = {s["step"]: s for s in rep["steps"]}
    assert steps["threshold"]["threshold"] == [0.5]
    assert (steps["min_area"]["threshold"], steps["min_area"]["min_area"]) == ([0.5], [60])
    assert steps["min_area"]["score"] == pytest.approx(dice_of(truths, oofs, 0.5, 60), abs=1e-12) == pytest.approx(0.44787, abs=1e-5)
    p = rep["params"]
    assert (p["threshold"], p["min_area"]) == ([0.5], [60])
    best_gate = max(dice_of(truths, oofs, 0.5, 60, g) for g in PAIRS_GRIDS[2])
    assert rep["after"] == pytest.approx(best_gate, abs=1e-12)
    assert rep["search"] == {"setting": "greedy", "chosen": "greedy", "compared": {"greedy": {
        "after": pytest.approx(rep["after"], abs=1e-12), "cross_fitted": None}}}


@pytest.mark.parametrize("metric, winner", [("dice", "greedy"), ("tgs_map", "joint")])
def test_auto_keeps_the_search_with_the_better_cross_fitted_score(tmp_path, metric, winner):
    """On these 24 images the joint search tunes dice higher (0.577 against 0.569) but over-fits: cross-fitted
    0.518 against the greedy chain's 0.574, so auto keeps the chain; with tgs_map the joint search wins both."""
    forced = {}
    for search in ("greedy", "joint"):
        cfg, truths, oofs, fold_of = pairs_run(tmp_path / search, metric, search)
        forced[search] = tune_postprocess(cfg, write=False, gate_grid=PAIRS_GRIDS[2])
    cfg, truths, oofs, fold_of = pairs_run(tmp_path / "auto", metric, "auto")
    rep = tune_postprocess(cfg, gate_grid=PAIRS_GRIDS[2])
    compared = rep["search"]["compared"]
    for search, r in forced.items():
        assert compared[search]["after"] == pytest.approx(r["after"], abs=1e-12)
        assert compared[search]["cross_fitted"] == pytest.approx(r["cross_fitted"]["score"], abs=1e-12)
    scores = {s: compared[s]["cross_fitted"] for s in compared}
    assert rep["search"]["chosen"] == winner == max(scores, key=scores.get)
    assert rep["params"] == forced[winner]["params"]
    # the score reported is the nested one: each fold's search chosen by the cross-fitted score of the other two folds.
    # Without any one fold the greedy chain scores more in both cases, so every fold took it: with tgs_map the joint
    # search's lead over all three folds is that choice's luck, and the score reported is the chain's
    nested = rep["cross_fitted"]
    assert nested["searches"] == ["greedy"] * 3 and nested["choice"].startswith("nested")
    assert {k: v for k, v in nested.items() if k not in ("searches", "choice")} == forced["greedy"]["cross_fitted"]
    assert rep["cross_fitted"]["score"] == pytest.approx(brute_cross_fitted(cfg, rep, truths, oofs, fold_of), abs=1e-12)
    if metric == "dice":  # the joint search's tuned score is the higher one, and still not chosen
        assert compared["joint"]["after"] > compared["greedy"]["after"]
        assert scores == {"greedy": pytest.approx(0.57393, abs=1e-5), "joint": pytest.approx(0.51800, abs=1e-5)}


def test_auto_without_a_cross_fitted_score_is_the_joint_search(tmp_path):
    cfg, *_ = pairs_run(tmp_path, "dice", "auto", cross_fit=False)
    rep = tune_postprocess(cfg, write=False, gate_grid=PAIRS_GRIDS[2])
    assert rep["search"]["chosen"] == "joint" and list(rep["search"]["compared"]) == ["joint"]


def test_a_search_setting_on_a_multiclass_run_is_refused_at_load(tmp_path):
    from seg_toolkit.config import config_from_dict

    data = {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "csv", "class_column": "c"}
    with pytest.raises(ConfigError, match="postprocess.search: greedy .* a multiclass run has no threshold or gate"):
        config_from_dict({"experiment": "e", "data": data, "loss": {"ce": 1.0}, "postprocess": {"search": "greedy"}})
    with pytest.raises(ConfigError, match="postprocess.search"):
        config_from_dict({"experiment": "e", "data": {**data, "task": "binary", "num_classes": 1},
                          "postprocess": {"search": "greedily"}})
