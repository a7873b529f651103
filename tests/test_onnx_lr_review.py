"""Review fixes: the ONNX backend refuses what would make its submission differ from what was tuned (a member that
predicts in bf16/fp16; a config.yaml that disagrees with the exported best.pt), and lr-find steps as training does
(grad_clip, grad_accum, the frozen encoder, fp16's scaler) and says why its sweep stopped (a NaN, divergence, the end)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math

import pytest
import torch

from seg_toolkit.config import ConfigError, config_from_dict, config_to_dict, load_config, save_config
from seg_toolkit.run import Run

from .conftest import demo_dict
from .test_inference import fake_run

needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
                                reason="the onnx extra is not installed (pip install -e '.[onnx]')")


def _cfg(demo_root, runs, **sections):
    return config_from_dict(demo_dict(demo_root, runs, **sections))


def _with(cfg, **sections):
    data = config_to_dict(cfg)
    for k, v in sections.items():
        data[k] = {**data[k], **v}
    return config_from_dict(data)


def _write_folds(cfg) -> None:
    from seg_toolkit.data import load_train_samples

    ids = [s.id for s in load_train_samples(cfg)]
    Run.of(cfg).folds_csv.write_text("id,fold\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))


# ----------------------------------------------------------------------------- ONNX: precision


@needs_onnx
def test_onnx_backend_refuses_a_member_that_predicts_in_bf16(demo_root, tmp_path, caplog):
    """A run predicting with bf16 autocast (its OOF files, so its thresholds, are bf16) was predicted in fp32 by ONNX
    Runtime: probabilities up to ~2e-3 apart and another submission. Export now measures that gap and says the backend
    will refuse; predict.backend: onnx refuses, naming the run, the precision and the remedy (train.amp: none + oof)."""
    from seg_toolkit.data import load_test_samples
    from seg_toolkit.export import export_run
    from seg_toolkit.inference import run_predictor

    cfg = _cfg(demo_root, tmp_path / "runs", model={"arch": "scratch_unet", "depth": 2, "base_width": 4},
               train={"epochs": 1, "batch_size": 4, "num_workers": 0, "amp": "bf16", "device": "cpu"})
    fake_run(cfg)
    _write_folds(cfg)
    run = Run.of(cfg)
    with caplog.at_level(logging.WARNING, logger="seg_toolkit"):
        export_run(cfg)
    entry = json.loads(run.export_json.read_text())["folds"]["0"]
    assert entry["predictor_amp"] == "bf16"
    for p in entry["parity"]:  # fp32 parity holds; the gap to the predictor's own bf16 output is measured and recorded
        assert p["max_abs_diff"] <= p["bound"] and p["predictor_amp"] == "bf16"
        assert p["max_abs_diff_vs_predictor"] > p["bound"] and 0 < p["max_abs_prob_diff_vs_predictor"] < 1
    assert "predict.backend: onnx will refuse" in caplog.text and "predictor's bf16" in caplog.text

    onnx_cfg = _with(cfg, predict={"backend": "onnx"})
    with pytest.raises(ConfigError, match=rf"{run.dir} predicts in bf16.*train.amp: bf16.*set `train.amp: none` in "
                                          rf"{run.config_yaml}.*`seg-toolkit oof {run.dir}`"):
        run_predictor(onnx_cfg)
    # a predict-time --set train.amp=none does not change what the OOF files were made with: still refused
    with pytest.raises(ConfigError, match="predicts in bf16"):
        run_predictor(_with(onnx_cfg, train={"amp": "none"}))

    # half the remedy: config.yaml edited to fp32, but the OOF files (training's, as done.json records) still bf16
    from seg_toolkit.oof import remake_oof

    done = json.loads(run.done_json(0).read_text())
    run.done_json(0).write_text(json.dumps({**done, "amp": "bf16"}))  # as training writes it
    fp32 = _with(cfg, train={"amp": "none"})
    save_config(fp32, run.config_yaml)
    with pytest.raises(ConfigError, match=r"predicts in bf16, not fp32 \(fold 0 made its OOF files in bf16"):
        run_predictor(_with(fp32, predict={"backend": "onnx"}))
    # the whole remedy: `seg-toolkit oof` re-makes them in fp32 and says so; ONNX and torch then predict the same
    remake_oof(fp32)
    assert json.loads(run.done_json(0).read_text())["oof_amp"] == "none"
    samples = load_test_samples(cfg)[:3]
    probs = {}
    for backend in ("torch", "onnx"):
        _, predictor = run_predictor(_with(fp32, predict={"backend": backend}))
        probs[backend] = torch.stack([p for _, p, _ in predictor.iter_probs(samples)])
    assert float((probs["torch"] - probs["onnx"]).abs().max()) < 1e-4


@needs_onnx
def test_onnx_backend_refuses_a_fold_trained_in_mixed_precision_elsewhere(demo_root, tmp_path, monkeypatch):
    """train.amp: auto trained (and made its OOF files) in bf16 on a GPU, predicted on a CPU without bf16: the rule
    alone says fp32 here, the fold's done.json says bf16."""
    from seg_toolkit import amp as amp_mod
    from seg_toolkit.export import export_run
    from seg_toolkit.inference import run_predictor

    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: False)
    cfg = _cfg(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 4, "num_workers": 0, "amp": "auto",
                                                    "device": "cpu"})
    fake_run(cfg)
    _write_folds(cfg)
    export_run(cfg)
    run = Run.of(cfg)
    run_predictor(_with(cfg, predict={"backend": "onnx"}))  # fp32 everywhere: accepted
    done = json.loads(run.done_json(0).read_text())
    run.done_json(0).write_text(json.dumps({**done, "amp": "bf16"}))
    with pytest.raises(ConfigError, match=r"predicts in bf16.*fold 0 made its OOF files in bf16"):
        run_predictor(_with(cfg, predict={"backend": "onnx"}))


# ----------------------------------------------------------------------------- ONNX: config.yaml against best.pt


@needs_onnx
def test_onnx_backend_refuses_a_config_yaml_that_disagrees_with_best_pt(demo_root, tmp_path):
    """An edited config.yaml (transforms.resize) is refused by the torch backend (best.pt's own config says otherwise)
    and was used silently by the ONNX one; the export now records best.pt's trained keys and the backend compares them."""
    from seg_toolkit.export import export_run
    from seg_toolkit.inference import run_predictor

    cfg = _cfg(demo_root, tmp_path / "runs")
    fake_run(cfg)
    _write_folds(cfg)
    export_run(cfg)
    run = Run.of(cfg)
    manifest = json.loads(run.export_json.read_text())
    assert manifest["folds"]["0"]["trained_keys"]["transforms.resize"] is None
    assert manifest["folds"]["0"]["trained_keys"]["model.arch"] == "scratch_unet"
    run_predictor(load_config(run.config_yaml, ["predict.backend=onnx"]))  # as exported: fine

    save_config(_with(cfg, transforms={"resize": [64, 96]}), run.config_yaml)
    with pytest.raises(ConfigError, match=r"best.pt was trained with other settings .*transforms.resize: None -> \[64, 96\]"):
        run_predictor(load_config(run.config_yaml))[1].members[0].model(0, torch.device("cpu"))  # torch: at model load
    with pytest.raises(ConfigError, match=r"fold_0.onnx was exported from a best.pt trained with other settings than "
                                          r".*config.yaml says \(transforms.resize: None -> \[64, 96\]\); the run folder's "
                                          r"files disagree: restore its config.yaml, or train the fold again"):
        run_predictor(load_config(run.config_yaml, ["predict.backend=onnx"]))

    # an export made before the record: refused, naming the command that records it
    save_config(cfg, run.config_yaml)
    del manifest["folds"]["0"]["trained_keys"]
    run.export_json.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"does not record the settings fold 0's best.pt was trained with.*seg-toolkit export"):
        run_predictor(load_config(run.config_yaml, ["predict.backend=onnx"]))


# ----------------------------------------------------------------------------- lr-find: steps as training's


def _lr_cfg(demo_root, runs, model=None, **train):
    return config_from_dict(demo_dict(demo_root, runs, experiment="lr", model=model or {"arch": "scratch_unet", "depth": 2, "base_width": 4},
                                      train={"epochs": 3, "batch_size": 2, "num_workers": 0, "device": "cpu", **train}))


def test_lr_find_clips_accumulates_and_freezes_as_training(demo_root, tmp_path, monkeypatch):
    """lr-find took one plain optimizer.step per batch: no train.grad_clip, no train.grad_accum (12 steps for 12 lrs of
    1 batch each with grad_accum 4), the encoder trained while training's first epochs freeze it."""
    import seg_toolkit.epoch as epoch_mod
    import seg_toolkit.losses as losses_mod
    import seg_toolkit.train as train_mod
    from seg_toolkit.lr_find import lr_find

    clips, steps, forwards, built = [], [], [0], {}
    real_clip, real_step, real_loss, real_build = (torch.nn.utils.clip_grad_norm_, epoch_mod.optimizer_step,
                                                   losses_mod.model_loss, train_mod.build_model_and_ema)

    def clip(params, max_norm, *a, **k):
        clips.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    def step(cfg, model, optimizer, scaler):
        steps.append(optimizer.param_groups[-1]["lr"])
        return real_step(cfg, model, optimizer, scaler)

    def loss(*a, **k):
        forwards[0] += 1
        return real_loss(*a, **k)

    def build(cfg, device):
        model, ema = real_build(cfg, device)
        built["model"], built["before"] = model, {k: v.clone() for k, v in model.state_dict().items()}
        return model, ema

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(epoch_mod, "optimizer_step", step)
    monkeypatch.setattr(losses_mod, "model_loss", loss)
    monkeypatch.setattr(train_mod, "build_model_and_ema", build)
    cfg = _lr_cfg(demo_root, tmp_path / "runs", model={"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": None,
                                                       "freeze_encoder_epochs": 1},
                  grad_clip=0.5, grad_accum=4)
    r = lr_find(cfg, fold=0, start=1e-5, end=1e-1, steps=12)
    assert clips == [0.5] * 12  # every optimiser step clipped at train.grad_clip
    assert len(steps) == 12 and forwards[0] == 48  # 4 batches per lr step
    assert all(a < b for a, b in zip(steps, steps[1:]))  # the lr changes once per optimiser step
    assert r["grad_accum"] == 4 and r["grad_clip"] == 0.5 and r["frozen_encoder"] is True
    saved = json.loads(Run.of(cfg).lr_find_json.read_text())
    assert saved["frozen_encoder"] is True and saved["stopped"] in ("end", "diverged")
    after = built["model"].state_dict()
    encoder = [k for k in after if k.startswith("encoder.")]
    assert encoder and all(torch.equal(after[k], built["before"][k]) for k in encoder)  # weights and BN statistics
    assert any(not torch.equal(after[k], built["before"][k]) for k in after if not k.startswith("encoder."))


def test_lr_find_step_accumulates_grad_accum_batches_per_update():
    """12 batches with grad_accum 4: 3 optimiser updates, each at its own lr, on the mean of its 4 batches' losses."""
    from seg_toolkit.amp import AmpChoice
    from seg_toolkit.lr_find import _training_step

    class Cfg:  # what the step reads of a config
        class train:
            grad_accum, grad_clip = 4, None

        class model:
            channels_last, deep_supervision, classifier = False, 0.0, 0.0

    model = torch.nn.Conv2d(3, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [{"image": torch.randn(2, 3, 4, 4), "target": torch.rand(2, 1, 4, 4).round()} for _ in range(12)]
    applied, seen = [], []
    real = optimizer.step

    def opt_step(*a, **k):
        applied.append(optimizer.param_groups[0]["lr"])
        return real(*a, **k)

    optimizer.step = opt_step
    loss_fn = torch.nn.BCEWithLogitsLoss()

    class Loss(torch.nn.Module):
        def forward(self, out, target):
            seen.append(1)
            value = loss_fn(out, target)
            return value, {"bce": value.detach()}

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = _training_step(Cfg, model, optimizer, [1.0], Loss(), AmpChoice("none", "none", "test"), scaler, batches,
                          torch.device("cpu"))
    losses = [step(lr) for lr in (1e-3, 1e-2, 1e-1)]
    assert applied == [1e-3, 1e-2, 1e-1] and len(seen) == 12 and all(math.isfinite(v) for v in losses)


def test_lr_find_scales_fp16_as_training(demo_root, tmp_path, monkeypatch):
    """fp16 (CUDA) trains with a GradScaler; lr-find had none (underflowing fp16 gradients, another curve)."""
    import seg_toolkit.amp as amp_mod
    from seg_toolkit.amp import AmpChoice
    from seg_toolkit.lr_find import lr_find

    made = []

    class Scaler(torch.amp.GradScaler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.steps = 0
            made.append(self)

        def step(self, optimizer, *a, **k):
            self.steps += 1
            return super().step(optimizer, *a, **k)

    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    monkeypatch.setattr(amp_mod, "run_amp", lambda *a, **k: AmpChoice("fp16", "fp16", "test", "cpu"))
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast")
    cfg = _lr_cfg(demo_root, tmp_path / "runs")
    r = lr_find(cfg, fold=0, start=1e-5, end=1e-1, steps=12)
    assert r["amp"] == "fp16"
    assert len(made) == 1 and made[0].is_enabled() and made[0].steps == len(r["lr"]) + (r["stopped"] == "nan")


# ----------------------------------------------------------------------------- lr-find: why the sweep stopped


def test_lr_sweep_records_why_it_stopped():
    from seg_toolkit.lr_find import MIN_DESCENT, lr_sweep, suggest

    L, w = 10.0, [1.0]

    def quadratic(lr: float) -> float:
        w[0] -= lr * L * w[0]
        return 0.5 * L * w[0] ** 2 + 1.0

    diverged = lr_sweep(quadratic, start=1e-4, end=10.0, steps=100)
    assert diverged["stopped"] == "diverged" and diverged["stop_step"] == len(diverged["lr"])
    assert suggest(diverged)["descent"] > MIN_DESCENT
    end = lr_sweep(lambda lr: 1.0 + 1e-3 * math.sin(1e6 * lr), start=1e-4, end=1e-2, steps=20)
    assert end["stopped"] == "end" and end["stop_step"] == 20 and len(end["lr"]) == 20
    assert suggest(end)["descent"] < MIN_DESCENT  # flat: no descent found


def test_lr_find_names_a_nan_and_a_flat_curve(demo_root, tmp_path, monkeypatch, caplog):
    """A NaN loss ended the sweep silently: a suggestion from the flat start of the curve, no word of the NaN; one early
    in the sweep was blamed on divergence ("lower the start lr"). A NaN is usually the data."""
    import seg_toolkit.losses as losses_mod
    from seg_toolkit.lr_find import lr_find

    real = losses_mod.model_loss
    calls = [0]

    def nan_at(k):
        def loss(*a, **kw):
            value, terms = real(*a, **kw)
            calls[0] += 1
            return (value * float("nan") if calls[0] == k else value), terms
        return loss

    monkeypatch.setattr(losses_mod, "model_loss", nan_at(25))
    cfg = _lr_cfg(demo_root, tmp_path / "runs")
    with caplog.at_level(logging.WARNING, logger="seg_toolkit"):
        r = lr_find(cfg, fold=0, start=1e-7, end=1e-5, steps=40)  # a tiny lr: the loss barely moves, then a NaN
    saved = json.loads(Run.of(cfg).lr_find_json.read_text())
    assert saved["stopped"] == r["stopped"] == "nan" and saved["stop_step"] == 25 and len(saved["lr"]) == 24
    assert "a NaN loss at step 25" in caplog.text and "usually the data" in caplog.text
    assert saved["no_descent"] is True and "no descent found" in caplog.text

    calls[0] = 0
    monkeypatch.setattr(losses_mod, "model_loss", nan_at(3))
    with pytest.raises(ConfigError, match=r"a NaN loss at step 3 \(lr .*\) ended the sweep.*usually the data.*only 2 finite steps"):
        lr_find(cfg, fold=0, start=1e-7, end=1e-5, steps=40)
