"""Training techniques: checkpoint averaging, multi-stage training (train.init_from), lr-find."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from seg_toolkit.averaging import average_checkpoints, average_state_dicts, recompute_batchnorm
from seg_toolkit.checkpoint import load_checkpoint, save_checkpoint
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.lr_find import lr_find, lr_sweep, suggest
from seg_toolkit.run import Run

from .conftest import demo_dict


# ----------------------------------------------------------------------------- averaging


def test_average_state_dicts_is_the_hand_computed_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5], dtype=torch.float16), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.5], dtype=torch.float16), "n": torch.tensor(5)}
    c = {"w": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0], dtype=torch.float16), "n": torch.tensor(4)}
    out = average_state_dicts([a, b, c])
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0]))
    assert out["b"].dtype == torch.float16 and out["b"].item() == 1.0
    assert out["n"].item() == 5  # counters: the largest
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, {"w": a["w"]}])


def test_average_checkpoints_files(tmp_path):
    paths = []
    for i, v in enumerate((1.0, 2.0, 6.0)):
        p = tmp_path / f"best_e{i:03d}.pt"
        save_checkpoint({"model": {"w": torch.full((2,), v)}, "ema": None, "config": {}, "model_args": {}, "epoch": i + 1,
                         "best_score": 0.0}, p)
        paths.append(p)
    out = average_checkpoints(paths, use_ema=False)
    assert torch.equal(out["model"]["w"], torch.full((2,), 3.0)) and out["averaged_from"] == [1, 2, 3]
    assert out["ema"] is None


def test_recompute_batchnorm_gives_the_training_set_statistics():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(2, momentum=0.1)
    bn.running_mean.fill_(7.0)  # stale statistics, as an average of epochs would have
    data = [torch.randn(4, 2, 3, 3) * 2 + 1 for _ in range(5)]
    n = recompute_batchnorm(torch.nn.Sequential(bn), data, torch.device("cpu"), lambda m, x: m(x))
    assert n == 1 and bn.momentum == 0.1  # momentum restored
    allx = torch.cat(data)
    # cumulative average of per-batch means equals the overall mean (equal batch sizes)
    assert torch.allclose(bn.running_mean, allx.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in data]).mean(0)
    assert torch.allclose(bn.running_var, per_batch_var, atol=1e-5)


def test_recompute_batchnorm_keeps_a_frozen_encoders_statistics():
    """The encoder frozen through the last epoch (a second stage with freeze_encoder_epochs >= epochs): its BN layers
    stay in eval mode under model.train() and never see a batch; they were reset to mean 0 / var 1 all the same."""
    from seg_toolkit.config import ModelConfig
    from seg_toolkit.models import build_model, set_encoder_frozen

    model = build_model(ModelConfig(arch="scratch_unet", depth=2, base_width=4, norm="batch"), 1)
    set_encoder_frozen(model, True)
    enc = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    dec = [m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not n.startswith("encoder")]
    assert enc and dec
    for m in enc + dec:
        m.running_mean.fill_(0.25)
        m.running_var.fill_(0.75)
    data = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    n = recompute_batchnorm(model, data, torch.device("cpu"), lambda m, x: m(x))
    assert n == len(dec)
    assert all(torch.all(m.running_mean == 0.25) and torch.all(m.running_var == 0.75) for m in enc)
    assert all(not torch.all(m.running_var == 0.75) for m in dec)


def _cfg(demo_root, runs, name="t", **train):
    return config_from_dict(demo_dict(demo_root, runs, experiment=name, folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                      train={"epochs": 3, "batch_size": 2, **train}))


def test_average_best_epochs_becomes_best_pt(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "runs", keep_best_k=2, average_best=True, epochs=3)
    cv = run_cv(cfg, folds=[0])
    run = Run.of(cfg)
    done = json.loads(run.done_json(0).read_text())
    kept = sorted(run.fold_dir(0).glob("best_e*.pt"))
    assert len(kept) == 2 and done["averaged_epochs"] == [int(p.stem[6:]) for p in kept]
    best = load_checkpoint(run.best_pt(0))
    assert best["averaged_from"] == done["averaged_epochs"]
    assert best["epoch"] is None  # of no one epoch: the first kept one's had been left, and a stage 2 named it
    mean = average_state_dicts([load_checkpoint(p)["model"] for p in kept])
    for k, v in best["model"].items():  # the weights are the mean; BatchNorm statistics were recomputed
        if "running_" not in k and "num_batches" not in k:
            assert torch.allclose(v, mean[k]), k
    assert any(not torch.equal(best["model"][k], mean[k]) for k in best["model"] if "running_mean" in k)
    assert math.isfinite(done["averaged_val_score"]) and done["single_best_val_score"] == done["best_val_score"]
    assert cv["per_fold"][0]["averaged_val_score"] == done["averaged_val_score"]


def test_average_best_needs_kept_epochs(tmp_path):
    with pytest.raises(ConfigError, match="keep_best_k >= 2"):
        config_from_dict({"data": {"root": str(tmp_path)}, "train": {"average_best": True}})


# ----------------------------------------------------------------------------- multi-stage


def test_init_from_loads_the_same_fold_and_refuses_other_folds(demo_root, tmp_path, caplog):
    runs = tmp_path / "runs"
    first = _cfg(demo_root, runs, "stage1", epochs=1)
    run_cv(first)
    second = _cfg(demo_root, runs, "stage2", epochs=1, init_from=str(runs / "stage1"))
    starts = {}
    import seg_toolkit.train as train_mod

    original = train_mod.load_fold_init

    def spy(cfg, fold, model, ema=None):
        out = original(cfg, fold, model, ema)
        starts[fold] = {k: v.clone() for k, v in model.state_dict().items()}
        return out

    train_mod.load_fold_init = spy
    try:
        cv = run_cv(second)
    finally:
        train_mod.load_fold_init = original
    for k in (0, 1):  # fold k started exactly from stage 1's fold k
        prev = load_checkpoint(runs / "stage1" / f"fold_{k}" / "best.pt")["model"]
        assert all(torch.equal(starts[k][n], prev[n]) for n in prev)
        assert cv["per_fold"][k]["init_from"] == str(runs / "stage1" / f"fold_{k}" / "best.pt")
        source = (runs / "stage1" / f"fold_{k}" / "best.pt").read_bytes()
        assert cv["per_fold"][k]["init_from_sha256"] == hashlib.sha256(source).hexdigest()
    # stage 1 retrained while stage 2's fold 0 was unfinished (killed after its last epoch, before done.json): the
    # resume continues from fold 0's own checkpoint, warns, and done.json still names the weights it started from
    started = cv["per_fold"][0]["init_from_sha256"]
    Run.of(second).done_json(0).unlink()
    shutil.copy(runs / "stage1" / "fold_1" / "best.pt", runs / "stage1" / "fold_0" / "best.pt")
    with caplog.at_level(logging.WARNING):
        run_cv(second, folds=[0], resume=True)
    assert any("fold 0 started from" in r.getMessage() and "has changed since" in r.getMessage() for r in caplog.records)
    assert json.loads(Run.of(second).done_json(0).read_text())["init_from_sha256"] == started

    # another fold assignment: refused before training, naming an image that moved
    other = config_from_dict({**demo_dict(demo_root, runs, experiment="stage2b", train={"epochs": 1, "batch_size": 2,
                                                                                           "init_from": str(runs / "stage1")}),
                              "folds": {"n_splits": 2, "method": "kfold", "seed": 7}})
    folds = pd.read_csv(runs / "stage1" / "folds.csv")
    with pytest.raises(ConfigError, match="in another fold"):
        run_cv(other)
    assert set(folds["fold"]) == {0, 1}


def test_init_from_refuses_another_architecture(demo_root, tmp_path):
    runs = tmp_path / "runs"
    run_cv(_cfg(demo_root, runs, "s1", epochs=1), folds=[0])
    wide = config_from_dict(demo_dict(demo_root, runs, experiment="s2", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                      model={"arch": "scratch_unet", "depth": 2, "base_width": 8},
                                      train={"epochs": 1, "batch_size": 2, "init_from": str(runs / "s1")}))
    with pytest.raises(ConfigError, match=r"was trained on inputs read otherwise .*\(model.base_width: 4 -> 8\)"):
        run_cv(wide, folds=[0])
    assert not Run.of(wide).dir.exists()  # refused before the run folder was written (it was, and kept folds.csv)
    # the same model on inputs normalised otherwise: it loaded, and fine-tuned weights fitted to other inputs
    other = config_from_dict(demo_dict(demo_root, runs, experiment="s3", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                       transforms={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
                                       train={"epochs": 1, "batch_size": 2, "init_from": str(runs / "s1")}))
    with pytest.raises(ConfigError, match=r"train.init_from: .*s1 was trained on inputs read otherwise than this config "
                                          r"reads them \(transforms.mean: \[0.485, 0.456, 0.406\] -> \[0.5, 0.5, 0.5\]"):
        run_cv(other, folds=[0])
    assert not Run.of(other).done_json(0).exists()
    # a higher resolution (and another dropout) is what a later stage is for: accepted
    hi = config_from_dict(demo_dict(demo_root, runs, experiment="s4", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                    transforms={"resize": [64, 80]}, model={"arch": "scratch_unet", "depth": 2, "base_width": 4,
                                                                           "dropout": 0.2},
                                    train={"epochs": 1, "batch_size": 2, "init_from": str(runs / "s1")}))
    run_cv(hi, folds=[0])


# ----------------------------------------------------------------------------- lr-find


def test_lr_sweep_on_a_quadratic_with_a_known_stable_range():
    """Gradient descent on 0.5*L*w^2 contracts for lr < 2/L and diverges above it; the fastest
    descent is near lr = 1/L. With L = 10 the suggestion must lie below 2/L = 0.2."""
    L, w = 10.0, [1.0]

    def step(lr: float) -> float:
        w[0] -= lr * L * w[0]
        return 0.5 * L * w[0] ** 2 + 1.0  # + a floor, as a real loss has

    sweep = lr_sweep(step, start=1e-4, end=10.0, steps=100)
    assert sweep["lr"][-1] < 10.0  # stopped when the loss diverged
    found = suggest(sweep)
    assert 1e-3 <= found["suggested_lr"] < 0.2, found
    assert found["suggested_lr"] == min(found["steep"], found["valley"])


def test_lr_find_plot_shows_every_raw_loss_below_its_top():
    """The y range came from the smoothed curve only: the raw losses under its minimum, the lowest of all included,
    were cut off the picture (audit: 25 of 100). The divergence at the end may still leave the top."""
    from seg_toolkit.lr_find import _y_range

    raw = [1.0, 0.98, 0.9, 0.5, 0.24, 0.6, 0.7, 5.0, float("inf")]
    smooth = [1.0, 0.99, 0.96, 0.85, 0.66, 0.65, 0.67, 1.9, 1.9]
    bottom, top = _y_range({"loss": raw, "smooth": smooth})
    assert bottom < 0.24 and top > 1.0 and top < 5.0


def test_lr_find_command_on_the_demo(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "runs", "lr")
    r = lr_find(cfg, fold=0, start=1e-6, end=10.0, steps=40)
    assert math.isfinite(r["suggested_lr"]) and 1e-6 <= r["suggested_lr"] <= 10.0
    run = Run.of(cfg)
    saved = json.loads(run.lr_find_json.read_text())
    assert saved["suggested_lr"] == r["suggested_lr"] and len(saved["lr"]) == len(saved["loss"]) >= 10
    assert run.lr_find_png.stat().st_size > 5000
    run_cv(cfg, folds=[0])  # the folder lr-find wrote into is still a run folder that training accepts
    # the trained run's folder: a sweep of another model would have written its lr_find.json there without a word
    import dataclasses

    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base_width=cfg.model.base_width * 2))
    before = run.lr_find_json.read_bytes()
    with pytest.raises(ConfigError, match=r"was made with other settings than this config: model.base_width"):
        lr_find(other, fold=0, start=1e-6, end=10.0, steps=40)
    assert run.lr_find_json.read_bytes() == before


def test_train_refused_on_lr_finds_folds_leaves_the_folder_as_lr_find_left_it(demo_root, tmp_path):
    """lr-find writes folds.csv beside no config.yaml; a train with other fold settings was refused after it had saved
    its own config, which then refused the settings the folds were made with (only --overwrite, deleting lr-find's
    files, got out)."""
    import dataclasses

    cfg = _cfg(demo_root, tmp_path / "runs", "lr")
    lr_find(cfg, fold=0, start=1e-4, end=1e-1, steps=12)
    run = Run.of(cfg)
    other = dataclasses.replace(cfg, folds=dataclasses.replace(cfg.folds, n_splits=cfg.folds.n_splits + 1))
    with pytest.raises(Exception, match=r"folds.csv was made with other fold settings"):
        run_cv(other, folds=[0])
    assert not run.config_yaml.exists() and run.lr_find_json.is_file()
    run_cv(cfg, folds=[0])  # the settings lr-find's folds were made with: accepted


def test_lr_find_reads_the_runs_precision_but_never_writes_amp_json(demo_root, tmp_path, monkeypatch):
    """A sweep measured on another machine, or with another --set model, must not decide (or change) the precision
    the run trains and predicts in: amp.json is training's alone."""
    from seg_toolkit import amp as amp_mod

    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: {"fp32_s": 1.0, "bf16_s": 0.5})
    cfg = _cfg(demo_root, tmp_path / "runs", "lr_amp", amp="auto")
    run = Run.of(cfg)
    assert lr_find(cfg, fold=0, start=1e-6, end=10.0, steps=12)["amp"] == "bf16"  # measured (2x), not recorded
    assert not run.amp_json.exists()
    recorded = {"mode": "none", "requested": "auto", "device_type": "cpu", "reason": "measured: 1.02x",
                "timings": {"fp32_s": 1.0, "bf16_s": 0.98, "bf16_speedup": 1.02}}
    run.amp_json.write_text(json.dumps(recorded))
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: pytest.fail("the recorded choice is the run's"))
    assert lr_find(cfg, fold=0, start=1e-6, end=10.0, steps=12)["amp"] == "none"
    assert json.loads(run.amp_json.read_text()) == recorded


# ----------------------------------------------------------------------------- deep supervision


def test_deep_supervision_needs_a_coarser_stage(tmp_path, demo_root):
    """A depth-1 scratch U-Net has no decoder stage below full resolution: deep supervision had no head, and the loss
    then failed on an empty list ('float' object has no attribute 'detach'); refused at load now."""
    from seg_toolkit.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"model.deep_supervision: scratch_unet of model.depth 1 has no coarser decoder stage"):
        config_from_dict(demo_dict(demo_root, tmp_path, model={"arch": "scratch_unet", "depth": 1, "base_width": 4,
                                                               "deep_supervision": 0.4}))


def test_deep_supervision_heads_in_training_only():
    from seg_toolkit.config import ModelConfig
    from seg_toolkit.models import build_model

    model = build_model(ModelConfig(arch="scratch_unet", depth=3, base_width=4, deep_supervision=0.4), num_classes=2)
    x = torch.randn(2, 3, 45, 61)  # padded to 48x64 inside, cropped back
    model.train()
    main, aux = model(x)
    assert main.shape == (2, 2, 45, 61) and len(aux) == 2 and all(a.shape == main.shape for a in aux)
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 45, 61)
    plain = build_model(ModelConfig(arch="scratch_unet", depth=3, base_width=4), num_classes=2)
    # the same network plus 1x1 heads on the 16- and 8-channel decoder stages (widths 4, 8, 16, 32): nothing else
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == (16 * 2 + 2) + (8 * 2 + 2)


def test_shallower_unet_pads_less_and_keeps_its_heads():
    """``params.encoder_depth: 4`` (what tgs_cpu.yaml uses): the encoder stops at stride 16, so a
    101x101 image is padded to 112x112, not 128x128; deep supervision gets one head per decoder
    stage but the last (3) and the classifier its presence channel, in training and through eval."""
    from seg_toolkit.config import ModelConfig
    from seg_toolkit.models import build_model

    cfg = ModelConfig(arch="unet", encoder="tu-test_resnet", encoder_weights=None, deep_supervision=0.4, classifier=0.2,
                      params={"encoder_depth": 4, "decoder_channels": [16, 8, 8, 8]})
    model = build_model(cfg, num_classes=1, in_channels=1)
    assert model.pad_multiple == 16 and len(model.aux_heads) == 3
    seen = []
    model.encoder.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    x = torch.randn(2, 1, 101, 101)
    main, aux = model.train()(x)
    assert seen == [(112, 112)]  # 5 + 6 reflected rows and columns; depth 5 would pad to 128
    assert main.shape == (2, 2, 101, 101) and len(aux) == 3 and all(a.shape == (2, 1, 101, 101) for a in aux)
    assert model.eval()(x).shape == (2, 2, 101, 101)


def test_model_loss_adds_the_weighted_mean_of_the_aux_losses():
    from seg_toolkit.losses import model_loss

    def loss_fn(logits, target):
        v = (logits - target).abs().mean()
        return v, {"l1": v.detach()}

    t = torch.zeros(1, 1, 2, 2)
    main, aux = torch.full_like(t, 1.0), [torch.full_like(t, 2.0), torch.full_like(t, 4.0)]
    loss, terms = model_loss(loss_fn, (main, aux), t, aux_weight=0.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 * 3.0) and terms["aux"].item() == pytest.approx(3.0)
    assert model_loss(loss_fn, main, t, 0.5)[0].item() == 1.0


def test_loss_aux_scores_the_deep_supervision_heads_with_their_own_loss():
    """``loss_aux`` (the heads' loss): the main logits keep ``loss``, each aux map is scored with ``loss_aux``, checked
    against each term computed alone; a config without deep supervision, or loss_params of a loss in neither, is
    refused at load."""
    import torch

    from seg_toolkit.config import ConfigError, config_from_dict
    from seg_toolkit.losses import build_loss, build_loss_term, model_loss

    base = {"data": {"task": "multiclass", "num_classes": 3, "layout": "folder"}, "model": {"arch": "scratch_unet", "depth": 2,
            "base_width": 4, "deep_supervision": 0.4}, "loss": {"ce": 1.0, "lovasz": 0.5},
            "submission": {"per_class": True}}
    cfg = config_from_dict({**base, "loss_aux": {"ce": 1.0, "dice": 0.25}, "loss_params": {"dice": {"smooth": 0.5}}})
    fn = build_loss(cfg)
    g = torch.Generator().manual_seed(0)
    main, aux = torch.randn(2, 3, 8, 8, generator=g), [torch.randn(2, 3, 8, 8, generator=g) for _ in range(2)]
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    ce, lovasz = (build_loss_term(n, "multiclass", 3) for n in ("ce", "lovasz"))
    dice = build_loss_term("dice", "multiclass", 3, {"smooth": 0.5})
    want_main = ce(main, target) + 0.5 * lovasz(main, target)
    want_aux = sum(ce(a, target) + 0.25 * dice(a, target) for a in aux) / 2
    loss, terms = model_loss(fn, (main, aux), target, aux_weight=0.4)
    assert loss.item() == pytest.approx((want_main + 0.4 * want_aux).item(), rel=1e-6)
    assert terms["aux"].item() == pytest.approx(want_aux.item(), rel=1e-6) and "dice" not in terms
    # without loss_aux the heads take loss itself
    same = model_loss(build_loss(config_from_dict(base)), (main, aux), target, aux_weight=0.4)[0]
    want_same = want_main + 0.4 * sum(ce(a, target) + 0.5 * lovasz(a, target) for a in aux) / 2
    assert same.item() == pytest.approx(want_same.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="loss_aux: the loss of model.deep_supervision's heads, which is 0"):
        config_from_dict({**base, "model": {**base["model"], "deep_supervision": 0}, "loss_aux": {"ce": 1.0}})
    with pytest.raises(ConfigError, match=r"loss_params\.focal: there is no loss 'focal' in loss \(ce, lovasz\) or loss_aux"):
        config_from_dict({**base, "loss_aux": {"ce": 1.0}, "loss_params": {"focal": {"gamma": 2}}})
    with pytest.raises(ConfigError, match=r"loss_aux\.dcie: unknown loss 'dcie'; did you mean 'dice'"):
        config_from_dict({**base, "loss_aux": {"dcie": 1.0}})


@pytest.mark.parametrize("model", [{"arch": "scratch_unet", "depth": 2, "base_width": 4},
                                   {"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": None,
                                    "params": {"decoder_channels": [16, 16, 8, 8, 8]}}], ids=["scratch_unet", "unet"])
def test_deep_supervision_trains_and_is_checked(demo_root, tmp_path, model):
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     model={**model, "deep_supervision": 0.4},
                                     train={"epochs": 1, "batch_size": 2}))
    cv = run_cv(cfg, folds=[0])
    assert math.isfinite(cv["score"])
    assert "aux" in pd.read_csv(Run.of(cfg).metrics_csv(0)).columns.str.cat(sep=",")
    state = load_checkpoint(Run.of(cfg).fold_dir(0) / "best.pt")["model"]
    assert any(k.startswith("aux_heads.") for k in state)
    with pytest.raises(ConfigError, match="model.deep_supervision: auxiliary heads are built for scratch_unet, unet; model.arch is 'fpn'"):
        config_from_dict(demo_dict(demo_root, tmp_path / "r2", model={"arch": "fpn", "encoder": "tu-test_resnet",
                                                                      "deep_supervision": 0.4}))


def _ds_unet(classifier: float = 0.0) -> torch.nn.Module:
    from seg_toolkit.config import ModelConfig
    from seg_toolkit.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(arch="unet", encoder="tu-test_resnet", encoder_weights=None, deep_supervision=0.4,
                                   classifier=classifier, params={"decoder_channels": [16, 16, 8, 8, 8]}), 2)


def test_smp_unet_deep_supervision_heads_see_the_right_stages_and_crop_like_the_logits():
    import torch.nn.functional as F

    model = _ds_unet().train()
    blocks = list(model.decoder.blocks)
    assert [h.in_channels for h in model.aux_heads] == [16, 16, 8, 8] and len(blocks) == 5
    seen = {}
    for i, b in enumerate(blocks):  # an independent record of each stage's output
        b.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out.detach()))
    x = torch.randn(2, 3, 70, 90)  # padded to 96 x 96: top 13, bottom 13, left 3, right 3
    main, aux = model(x)
    assert main.shape == (2, 2, 70, 90) and len(aux) == 4 and all(a.shape == (2, 2, 70, 90) for a in aux)
    assert seen[0].shape[-2:] == (6, 6) and seen[3].shape[-2:] == (48, 48)
    for i, a in enumerate(aux):
        want = F.interpolate(model.aux_heads[i](seen[i]), size=(96, 96), mode="bilinear", align_corners=False)
        torch.testing.assert_close(a, want[..., 13:83, 3:93])
    assert not any("_ds_stage" in b.__dict__ for b in blocks)  # nothing kept after the step
    # every head gets a gradient from the aux loss
    (main.mean() + sum(a.mean() for a in aux)).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.aux_heads)


def test_smp_unet_deep_supervision_leaves_inference_unchanged():
    import copy
    import pickle

    from seg_toolkit.config import ModelConfig
    from seg_toolkit.models import build_model

    model = _ds_unet().eval()
    plain = build_model(ModelConfig(arch="unet", encoder="tu-test_resnet", encoder_weights=None,
                                    params={"decoder_channels": [16, 16, 8, 8, 8]}), 2).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")}
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    assert not any("_ds_stage" in b.__dict__ for b in model.decoder.blocks)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        main, aux = clone(x)
        assert len(aux) == 4


def test_smp_unet_deep_supervision_with_the_classifier():
    model = _ds_unet(classifier=0.2).train()
    main, aux = model(torch.randn(2, 3, 64, 64))
    assert main.shape == (2, 4, 64, 64)  # 2 mask channels + 2 presence channels
    assert [a.shape[1] for a in aux] == [2, 2, 2, 2]
    assert isinstance(model.eval()(torch.randn(2, 3, 64, 64)), torch.Tensor)


def test_same_folds_check_reads_ids_as_written(tmp_path):
    """An image id "NA" (or "null", "nan") was read as a missing value from the earlier run's folds.csv and reported
    as "not in folds.csv", refusing a run whose folds are the same."""
    from seg_toolkit.run import Run
    from seg_toolkit.stages import check_same_folds

    prev = Run(tmp_path / "prev")
    prev.dir.mkdir()
    prev.folds_csv.write_text("id,fold\nNA,0\nnull,1\nx1,1\n")
    ours = pd.DataFrame({"id": ["NA", "null", "x1"], "fold": [0, 1, 1]})
    check_same_folds(prev, ours, "train.init_from")
    with pytest.raises(ConfigError, match=r"train.init_from: 1 image\(s\) are in another fold .*'null': fold 1 there, 0 here"):
        check_same_folds(prev, ours.assign(fold=[0, 0, 1]), "train.init_from")


def test_averaging_keeps_a_frozen_encoders_statistics_in_the_ema_copy(demo_root, tmp_path):
    """Every epoch ran with the encoder frozen, so its BatchNorm statistics stayed at their start (here 0 / 1); the
    EMA copy, made before freezing, had them reset and re-estimated from the data by the averaging."""
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     model={"arch": "scratch_unet", "depth": 2, "base_width": 4, "freeze_encoder_epochs": 3},
                                     train={"epochs": 3, "batch_size": 2, "keep_best_k": 2, "average_best": True,
                                            "use_ema": True, "ema_decay": 0.5}))
    run_cv(cfg, folds=[0])
    best = load_checkpoint(Run.of(cfg).best_pt(0))
    for which in ("model", "ema"):
        enc = {k: v for k, v in best[which].items() if k.startswith("encoder.") and "running_" in k}
        assert enc, which
        for k, v in enc.items():
            assert torch.equal(v, torch.zeros_like(v) if "mean" in k else torch.ones_like(v)), (which, k)
        dec = [v for k, v in best[which].items() if not k.startswith("encoder.") and "running_mean" in k]
        assert any(v.abs().sum() > 0 for v in dec), which  # the decoder's were re-estimated


def test_averaging_keeps_a_frozen_encoders_statistics_when_the_kept_epochs_were_frozen(demo_root, tmp_path):
    """The encoder's statistics were kept only when the fold's last epoch ran frozen; with the kept epochs all frozen
    and a later, unfrozen (and here wrecked: encoder_lr_mult 1000) epoch left out of the average, they were re-estimated
    from the data, though every kept checkpoint holds the same ones (an audit: 0.305 against 0.163 on its toy)."""
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     model={"arch": "scratch_unet", "depth": 2, "base_width": 8, "freeze_encoder_epochs": 6,
                                            "encoder_lr_mult": 1000.0},
                                     optim={"name": "adamw", "lr": 0.01},
                                     train={"epochs": 7, "batch_size": 2, "keep_best_k": 2, "average_best": True}))
    run_cv(cfg, folds=[0])
    run = Run.of(cfg)
    done = json.loads(run.done_json(0).read_text())
    assert max(done["averaged_epochs"]) <= 6 and done["epochs_run"] == 7  # the case: every kept epoch frozen
    kept = load_checkpoint(run.best_epoch_pt(0, done["averaged_epochs"][0]))["model"]
    best = load_checkpoint(run.best_pt(0))["model"]
    enc = [k for k in best if k.startswith("encoder.") and "running_" in k]
    assert enc and all(torch.equal(best[k], kept[k]) for k in enc)


def test_the_report_names_the_averaged_weights_a_fold_submits():
    """Under train.average_best, best.pt (the OOF files, predict) is the mean of the kept epochs; the report's fold
    table named the single best epoch and its score (0.3009 where the average scored 0.0332)."""
    from seg_toolkit.report.page import _epoch, _val_score

    averaged = {"best_epoch": 1, "best_val_score": 0.3009, "averaged_epochs": [1, 2], "averaged_val_score": 0.0332,
                "single_best_val_score": 0.3009}
    assert _epoch(averaged) == "mean of 1, 2" and _val_score(averaged) == "0.0332 (single best 0.3009)"
    single = {"best_epoch": 3, "best_val_score": 0.5}
    assert _epoch(single) == "3" and _val_score(single) == "0.5000"


def test_a_short_sweep_is_smoothed_over_its_own_length():
    """The visual audit: a 40-step sweep smoothed as fastai's 100-step one (beta 0.98) lagged so far that a loss falling
    from 0.78 to 0.42 over its last 12 steps read as "no descent" (0.062 < 0.1); smoothed over its own length it reads
    0.159. Flat for 28 steps, then 0.03 lower each step."""
    from seg_toolkit.lr_find import MIN_DESCENT

    losses = [0.78] * 28 + [0.78 - 0.03 * k for k in range(1, 13)]

    def sweep(beta):
        it = iter(losses)
        return suggest(lr_sweep(lambda lr: next(it), start=1e-4, end=1.0, steps=40, beta=beta))

    assert sweep(None)["descent"] == pytest.approx(0.159, abs=1e-3) and sweep(None)["descent"] >= MIN_DESCENT
    assert sweep(0.98)["descent"] == pytest.approx(0.062, abs=1e-3)


def test_a_cv_below_predicting_nothing_is_said(capsys):
    from seg_toolkit.commands import _print_cv

    cv = {"metric": "miou", "score": 0.0103, "n_images": 12, "folds": [0, 1], "fold_scores": [0.01, 0.0106],
          "baseline_empty": 0.2209, "baseline": "all-background baseline"}
    _print_cv(cv, Path("runs/x"))
    assert "note: the CV is below the all-background baseline" in capsys.readouterr().out
    _print_cv({**cv, "score": 0.5}, Path("runs/x"))
    assert "note:" not in capsys.readouterr().out
