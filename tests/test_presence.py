"""The auxiliary empty-mask classifier (``model.classifier``): head, loss, TTA, OOF, tune's gate, predict."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from seg_toolkit.config import ConfigError, ModelConfig, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.inference import predict_test
from seg_toolkit.losses import build_loss, model_loss
from seg_toolkit.models import build_model
from seg_toolkit.models.presence import presence_loss, presence_target, split_presence
from seg_toolkit.postprocess import PostParams, apply_postprocess, load_params
from seg_toolkit.predictor import Predictor
from seg_toolkit.files import read_oof
from seg_toolkit.run import Run
from seg_toolkit.tta import tta_predict, apply_transform
from seg_toolkit.tune import tune_postprocess
from tests.conftest import demo_dict
from tests.test_tune import H, W, write_run

MODELS = [
    ModelConfig(arch="scratch_unet", depth=2, base_width=4, classifier=0.5),
    ModelConfig(arch="unet", encoder="tu-test_resnet", classifier=0.5, params={"decoder_channels": [16, 8, 8, 8, 8]}),
]


@pytest.mark.parametrize("mcfg", MODELS, ids=["scratch", "smp"])
def test_head_adds_constant_presence_channels_equal_to_a_hand_computed_logit(mcfg):
    torch.manual_seed(0)
    model = build_model(mcfg, num_classes=2, in_channels=3).eval()
    x = torch.randn(3, 3, 64, 64)  # a multiple of 32: no padding, so the encoder sees x itself
    with torch.no_grad():
        out = model(x)
        deepest = model.encoder(x)[-1]
    assert out.shape == (3, 4, 64, 64)
    linear = model.presence_head[-1]
    by_hand = F.linear(deepest.mean(dim=(2, 3)), linear.weight, linear.bias)
    assert torch.allclose(out[:, 2:], by_hand[:, :, None, None].expand(3, 2, 64, 64), atol=1e-5)
    masks, presence = split_presence(out, 2, True)
    assert masks.shape == (3, 2, 64, 64) and torch.allclose(presence, by_hand, atol=1e-5)
    # odd sizes pad and crop: the presence channels stay constant; a deep copy (EMA) predicts the same
    with torch.no_grad():
        y = model(torch.randn(2, 3, 37, 45))
    assert y.shape == (2, 4, 37, 45) and float(y[:, 2:].std(dim=(2, 3)).max()) == 0.0
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    assert {k for k in model.state_dict() if k.startswith("presence_head.")} == {"presence_head.3.weight", "presence_head.3.bias"}


def test_deep_supervision_keeps_plain_aux_heads():
    model = build_model(ModelConfig(arch="scratch_unet", depth=2, base_width=4, classifier=1.0, deep_supervision=0.3), 1).train()
    main, aux = model(torch.randn(2, 3, 32, 32))
    assert main.shape == (2, 2, 32, 32) and all(a.shape == (2, 1, 32, 32) for a in aux)


def test_loss_adds_weighted_bce_of_the_presence_logits():
    cfg = config_from_dict({"data": {"root": ".", "task": "multilabel", "num_classes": 2, "class_column": "c"}, "loss": {"bce": 1.0},
                            "submission": {"per_class": True}})
    loss_fn = build_loss(cfg)
    target = torch.zeros(2, 2, 4, 4)
    target[0, 0, 1, 1] = 1  # image 0 class 0 present
    target[1, 1] = 255  # image 1 class 1: all void, so neither present nor empty: left out of the classifier's loss
    seg = torch.zeros(2, 2, 4, 4)  # sigmoid 0.5 everywhere: BCE = log 2 on every non-void pixel
    z = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    out = torch.cat([seg, z[:, :, None, None].expand(2, 2, 4, 4)], dim=1)
    loss, terms = model_loss(loss_fn, out, target, 0.0, 0.25)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.equal(presence_target(target), y)
    # the three labelled entries: (0, 0) present, (0, 1) and (1, 0) empty; (1, 1) is all void
    bce = -(torch.log(torch.sigmoid(z[0, 0])) + torch.log(1 - torch.sigmoid(z[0, 1])) + torch.log(1 - torch.sigmoid(z[1, 0]))) / 3
    assert terms["cls"].item() == pytest.approx(bce.item(), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(2) + 0.25 * bce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="expected 4 channels"):
        model_loss(loss_fn, seg, target, 0.0, 0.25)
    # a batch whose every entry is all void (padded tiles) adds nothing, and no NaN
    assert presence_loss(z, torch.full((2, 2, 4, 4), 255.0)).item() == 0.0


def test_tta_merges_the_presence_probability_as_the_masks_are():
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="scratch_unet", depth=2, base_width=4, classifier=1.0), 1).eval()
    x = torch.randn(2, 3, 32, 48)
    names = ["identity", "hflip", "vflip"]
    with torch.no_grad():
        probs = tta_predict(model, x, "binary", names, [1.0], "mean_prob", max_batch=8)
        by_hand = torch.stack([torch.sigmoid(model(apply_transform(x, t))[:, 1, 0, 0]) for t in names]).mean(0)
    masks, presence = split_presence(probs, 1, True)
    assert masks.shape == (2, 1, 32, 48)
    assert torch.allclose(presence[:, 0], by_hand, atol=1e-6)
    assert float(probs[:, 1].std(dim=(1, 2)).max()) < 1e-6


def test_config_checks(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="model.classifier: the empty-mask classifier gates per-class masks"):
        config_from_dict(demo_dict(demo_root, tmp_path / "r", data={"task": "multiclass", "num_classes": 3, "class_column": "ClassId"},
                                   model={"arch": "scratch_unet", "classifier": 1.0}, loss={"ce": 1.0}))
    with pytest.raises(ConfigError, match=r"model.classifier: expected a loss weight in \[0, 10\]"):
        config_from_dict(demo_dict(demo_root, tmp_path / "r", model={"arch": "scratch_unet", "classifier": -1}))


def test_gate_source_classifier_in_apply_postprocess():
    probs = np.zeros((2, 4, 4), np.float32)
    probs[:, 1:3, 1:3] = 0.9
    params = PostParams(threshold=[0.5, 0.5], min_area=[0, 0], empty_gate=[0.6, 0.6], gate_source=["classifier", "max_prob"])
    out = apply_postprocess(probs, "multilabel", params, np.array([0.3, 0.1], np.float32))
    assert out[0].sum() == 0 and out[1].sum() == 4  # class 0: the classifier says empty; class 1: max prob 0.9 >= 0.6
    assert apply_postprocess(probs, "multilabel", params, np.array([0.7, 0.1], np.float32))[0].sum() == 4
    with pytest.raises(ValueError, match="no classifier output"):
        apply_postprocess(probs, "multilabel", params)
    assert PostParams([0.5], [0], [None]).gate_source == ["max_prob"]  # postprocess.json files from before
    with pytest.raises(ValueError, match="gate_source"):
        PostParams([0.5], [0], [0.6], gate_source=["max"])


def test_tune_picks_the_classifier_gate_where_max_probability_cannot_separate(tmp_path):
    """14 images with an object and 10 empty ones that look the same to the mask head (8x8 core at
    p=0.98, 12x12 at p=0.6): no threshold or max-probability gate separates them (best 14/24:
    predict every object); a classifier that says which are empty gives 1.0."""
    rng = np.random.default_rng(3)
    truths, oofs, presence = {}, {}, {}
    for k in range(24):
        i = f"g{k:02d}"
        t = np.zeros((1, H, W), np.uint8)
        q = rng.integers(0, 60, size=(1, H, W)).astype(np.uint8)
        y, x = rng.integers(2, H - 14), rng.integers(2, W - 14)
        q[0, y : y + 12, x : x + 12] = 153
        q[0, y + 2 : y + 10, x + 2 : x + 10] = 250
        if k < 14:
            t[0, y : y + 12, x : x + 12] = 1
        truths[i], oofs[i] = t, q
        presence[i] = np.array([200 if k < 14 else 40], np.uint8)  # 0.78 vs 0.16
    fold_of = {i: k % 2 for k, i in enumerate(truths)}
    cfg = write_run(tmp_path, "binary", 1, truths, oofs, fold_of, done=[0, 1], n_splits=2)
    run = Run.of(cfg)
    report = tune_postprocess(cfg)  # no presence files: the max-probability gate only
    gate_step = {s["step"]: s for s in report["steps"]}["empty_gate"]
    assert report["after"] == pytest.approx(14 / 24) and list(gate_step["best_by_source"]) == ["max_prob"]
    for i, p in presence.items():
        run.oof_presence_path(i).parent.mkdir(exist_ok=True)
        np.save(run.oof_presence_path(i), p)
    report = tune_postprocess(cfg)
    gate_step = {s["step"]: s for s in report["steps"]}["empty_gate"]
    assert gate_step["best_by_source"]["max_prob"] == [pytest.approx(14 / 24)]
    assert gate_step["best_by_source"]["classifier"] == [1.0]
    assert report["after"] == 1.0 and report["params"]["gate_source"] == ["classifier"]
    assert 0.16 < report["params"]["empty_gate"][0] <= 0.78
    params = load_params(cfg, run)
    assert params.gate_source == ["classifier"]
    # a missing presence file among present ones names the file
    run.oof_presence_path("g05").unlink()
    with pytest.raises(FileNotFoundError, match="g05.npy: the classifier's OOF file"):
        tune_postprocess(cfg)


def test_trains_oof_tunes_and_predicts_with_the_classifier(demo_root, tmp_path):
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", model={"arch": "scratch_unet", "depth": 2, "base_width": 4,
                                                                          "classifier": 0.5},
                                     train={"epochs": 2, "batch_size": 4}, predict={"batch_size": 4, "tta": ["identity", "hflip"]}))
    cv = run_cv(cfg)
    assert math.isfinite(cv["score"])
    run = Run.of(cfg)
    assert "train_cls" in pd.read_csv(run.metrics_csv(0)).columns
    ids = pd.read_csv(run.folds_csv)["id"].tolist()
    saved = {i: read_oof(run.oof_presence_path(i), ndim=1) for i in ids}
    assert all(q.dtype == np.uint8 and q.shape == (3,) for q in saved.values())
    # the OOF presence is the fold model's, through the same predictor (TTA hflip): recompute one image
    fold_of = dict(zip(*pd.read_csv(run.folds_csv)[["id", "fold"]].T.values))
    from seg_toolkit.data import load_train_samples
    sample = next(s for s in load_train_samples(cfg) if s.id == ids[0])
    _, _, pres, _ = next(Predictor.from_run(run).iter_predictions([sample], fold=int(fold_of[ids[0]])))
    assert np.array_equal(np.round(pres.numpy() * 255).astype(np.uint8), saved[ids[0]])
    post = json.loads(run.postprocess_json.read_text())
    gate_step = {s["step"]: s for s in post["steps"]}["empty_gate"]
    assert set(gate_step["best_by_source"]) == {"max_prob", "classifier"}
    assert len(post["params"]["gate_source"]) == 3
    from seg_toolkit.report import build_report

    page = build_report(run.dir).read_text()
    assert "empty gate on OOF, best" in page and "classifier" in page
    # a classifier gate above every test presence empties the whole submission
    post["params"].update(empty_gate=[1.0] * 3, gate_source=["classifier"] * 3)
    run.postprocess_json.write_text(json.dumps(post))
    out = predict_test(cfg)
    sub = pd.read_csv(out, keep_default_na=False)
    assert len(sub) > 0 and (sub["EncodedPixels"] == "").all()
    # the classifier is fixed by training: another value for an existing run is refused
    other = config_from_dict({**demo_dict(demo_root, tmp_path / "runs"), "model": {"arch": "scratch_unet", "depth": 2,
                                                                                     "base_width": 4, "classifier": 1.0}})
    with pytest.raises(ConfigError, match="model.classifier"):
        predict_test(other, out=tmp_path / "x.csv")


def test_tta_choice_keeps_the_winners_presence_and_tunes_on_it(demo_root, tmp_path):
    from seg_toolkit.tta_search import choose_tta

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", model={"arch": "scratch_unet", "depth": 2, "base_width": 4,
                                                                          "classifier": 0.5},
                                     train={"epochs": 1, "batch_size": 2}, optim={"lr": 0.05}, scheduler={"name": "none"}))
    run_cv(cfg)
    run = Run.of(cfg)
    result = choose_tta(cfg, candidates=[["identity"], ["identity", "vflip"]], merges=["mean_prob"])
    assert not run.tta_search_root.exists()
    # the run's OOF presence is now the winner's: recompute it through the predictor with the chosen TTA
    from seg_toolkit.data import load_train_samples
    from seg_toolkit.predictor import Member

    fold_of = run.fold_of()
    sample = load_train_samples(cfg)[0]
    member = Member.load(run, tta=result["tta"], merge=result["merge"])
    _, _, pres, _ = next(Predictor([member]).iter_predictions([sample], fold=fold_of[sample.id]))
    assert np.array_equal(np.round(pres.numpy() * 255).astype(np.uint8), read_oof(run.oof_presence_path(sample.id), ndim=1))
    post = json.loads(run.postprocess_json.read_text())
    assert set({s["step"]: s for s in post["steps"]}["empty_gate"]["best_by_source"]) == {"max_prob", "classifier"}
