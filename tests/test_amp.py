"""train.amp: the rules of resolve_amp, the measured CPU choice, and one precision per run (amp.json)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from seg_toolkit import amp as amp_mod
from seg_toolkit.amp import choose_amp, measure_cpu_bf16, resolve_amp
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.predictor import Member
from seg_toolkit.run import Run

from .conftest import demo_dict

CPU = torch.device("cpu")


class _Depthwise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = torch.nn.Conv2d(3, 8, 1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise
        self.head = torch.nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.head(self.grouped(self.dw(self.pw(x))))


def test_explicit_modes():
    assert resolve_amp("none", CPU).mode == "none"
    assert resolve_amp("bf16", CPU).mode == "bf16"
    fp16 = resolve_amp("fp16", CPU)
    assert fp16.mode == "none" and "CUDA only" in fp16.reason and not fp16.uses_scaler
    with pytest.raises(ConfigError, match="train.amp"):
        resolve_amp("fp8", CPU)


def test_auto_fallback_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    assert resolve_amp("auto", CPU).mode == "bf16"  # any model: depthwise convolutions train in fp32 (test_precision)
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: False)
    assert resolve_amp("auto", CPU).mode == "none"


@pytest.mark.parametrize("capability, name, mode", [((7, 5), "Tesla T4", "fp16"), ((6, 0), "Tesla P100", "fp16"),
                                                   ((8, 0), "A100", "bf16"), ((9, 0), "H100", "bf16")])
def test_auto_on_cuda_takes_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, name, mode):
    """torch's is_bf16_supported() is True on a T4 or P100 (emulated bf16, no tensor cores): auto took bf16 there,
    far slower than fp16 with a scaler. The compute capability decides."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    choice = resolve_amp("auto", torch.device("cuda"))
    assert choice.mode == mode and choice.uses_scaler == (mode == "fp16") and name in choice.reason


def test_a_recorded_bf16_is_not_emulated_on_a_machine_without_it(monkeypatch):
    """A run measured bf16 on this AVX512-BF16 CPU and bundled for Kaggle: a CPU there without native bf16 ran the
    recorded bf16 emulated, several times slower than fp32 (a code competition's time limit)."""
    rec = {"mode": "bf16", "requested": "auto", "reason": "measured 1.3x", "device_type": "cpu", "timings": {}}
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    assert resolve_amp("auto", CPU, rec).mode == "bf16"
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: False)
    choice = resolve_amp("auto", CPU, rec)
    assert choice.mode == "none" and "only emulates" in choice.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    gpu = resolve_amp("auto", torch.device("cuda"), dict(rec, device_type="cuda"))
    assert gpu.mode == "fp16" and gpu.uses_scaler


def test_recorded_choice_wins_on_its_device_type_only(monkeypatch):
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    rec = {"mode": "none", "requested": "auto", "reason": "measured", "device_type": "cpu", "timings": {"fp32_s": 1.0}}
    assert resolve_amp("auto", CPU, rec).mode == "none"
    other = dict(rec, device_type="cuda")
    assert resolve_amp("auto", CPU, other).mode == "bf16"
    assert resolve_amp("none", CPU, dict(rec, mode="bf16")).mode == "none"  # explicit config wins


@pytest.mark.parametrize("fp32,bf16,expected", [(1.0, 0.5, "bf16"), (1.0, 0.95, "none"), (1.0, 1.4, "none")])
def test_measured_choice_needs_a_real_gain(monkeypatch, fp32, bf16, expected):
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: {"fp32_s": fp32, "bf16_s": bf16})
    choice = choose_amp("auto", CPU, _Depthwise(), None, lambda: None, None)
    assert choice.mode == expected
    assert choice.timings["bf16_speedup"] == pytest.approx(fp32 / bf16, abs=1e-3)
    # a recorded measurement is reused, not measured again
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: pytest.fail("measured twice"))
    assert choose_amp("auto", CPU, _Depthwise(), choice.to_json(), lambda: None, None).mode == expected


def test_measuring_leaves_model_and_rng_untouched():
    torch.manual_seed(0)
    model = _Depthwise()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda logits, y: (torch.nn.functional.binary_cross_entropy_with_logits(logits, y), {})  # noqa: E731

    def batch():  # draws from every RNG, as augmentation does
        random.random(), np.random.rand()
        return torch.randn(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()

    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    t = measure_cpu_bf16(model, loss, batch, rounds=1, steps=1)
    after = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    assert after == (torch.rand(1).item(), random.random(), np.random.rand())
    assert t["fp32_s"] > 0 and t["bf16_s"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("slow_calls", [{2}, {2, 3}, {1, 4}], ids=["one bf16 round", "two bf16 rounds", "two fp32 rounds"])
def test_measurement_alternates_order_and_load_on_the_machine_does_not_decide(monkeypatch, slow_calls):
    """Rounds run fp32 first, then bf16 first (ABBA); rounds slowed by other work on the machine
    (timed at 5 s instead of 1.0 s fp32 / 0.5 s bf16), even 2 of the 3 rounds of one precision,
    do not flip the choice: the fastest round of each is kept."""
    calls = []

    def fake_seconds(step, dtype, steps):
        calls.append("bf16" if dtype is not None else "fp32")
        return 5.0 if len(calls) in slow_calls else (1.0 if dtype is None else 0.5)

    monkeypatch.setattr(amp_mod, "_step_seconds", fake_seconds)
    loss = lambda logits, y: (torch.nn.functional.binary_cross_entropy_with_logits(logits, y), {})  # noqa: E731
    t = measure_cpu_bf16(_Depthwise(), loss, lambda: (torch.randn(2, 3, 8, 8), torch.ones(2, 1, 8, 8)))
    assert calls == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    assert t == {"fp32_s": 1.0, "bf16_s": 0.5}


def test_auto_is_measured_once_and_used_by_training_and_inference(demo_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    calls = []

    def fake_measure(model, loss_fn, batch, **k):
        images, target = batch()  # a real training batch of the run
        calls.append(tuple(images.shape))
        return {"fp32_s": 1.0, "bf16_s": 0.4}

    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", fake_measure)
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     train={"epochs": 1, "batch_size": 2, "amp": "auto"}))
    cv = run_cv(cfg)
    assert calls == [(2, 3, 48, 64)]  # fold 0 measured; fold 1 read amp.json
    run = Run.of(cfg)
    # the curves are drawn again once cv.json exists: with its all-empty baseline (the last epoch's were drawn before it)
    assert f"all-empty baseline {cv['baseline_empty']:.4f}" in run.learning_curves_html.read_text()
    rec = json.loads(run.amp_json.read_text())
    assert rec["mode"] == "bf16" and rec["timings"]["bf16_speedup"] == 2.5
    assert cv["amp"] == ["bf16"] and all(f["amp"] == "bf16" for f in cv["per_fold"])
    assert all(f["tf32"] is None for f in cv["per_fold"])  # TF32 is CUDA's: nothing to record on a CPU
    member = Member.load(run)
    assert member.amp(0, CPU).mode == "bf16"
    # predicting in another precision than the OOF files were made in (what tune scored) is named, once
    import dataclasses

    fp32 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp="none"))
    other = Member.load(run, cfg=fp32)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert other.amp(0, CPU).mode == "none" and other.amp(1, CPU).mode == "none"
    assert caplog.text.count("predicted in bf16, this prediction runs in none") == 1


def test_validation_runs_in_the_precision_training_measured(demo_root, tmp_path, monkeypatch):
    """The measured choice (here: bf16 slower, so fp32) holds for the epoch's validation too, although the
    unmeasured rule would pick bf16 for this model (bf16 on a bf16 CPU)."""
    import seg_toolkit.epoch as epoch_mod

    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: {"fp32_s": 1.0, "bf16_s": 2.0})
    modes = []
    real = epoch_mod.autocast
    monkeypatch.setattr(epoch_mod, "autocast", lambda choice, device: (modes.append(choice.mode), real(choice, device))[1])
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     train={"epochs": 1, "batch_size": 2, "amp": "auto"}))
    assert resolve_amp("auto", CPU).mode == "bf16"  # what the rule alone would say
    run_cv(cfg, folds=[0])
    assert modes and set(modes) == {"none"}  # training steps and validation batches alike


def test_lr_find_measures_like_training_and_reads_but_never_writes_amp_json(demo_root, tmp_path, monkeypatch):
    """lr-find runs in the precision training will pick (measured as training measures), not the unmeasured rule:
    here bf16 measures slower, so both run fp32. amp.json is training's alone (a sweep on another machine or model
    must not decide a run's precision): training measures again and writes it, a later lr-find reads it."""
    from seg_toolkit.lr_find import lr_find

    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    calls = []

    def fake_measure(model, loss_fn, batch, **k):
        calls.append(1)
        return {"fp32_s": 1.0, "bf16_s": 2.0}

    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", fake_measure)
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     train={"epochs": 1, "batch_size": 2, "amp": "auto"}))
    r = lr_find(cfg, fold=0, start=1e-5, end=1.0, steps=12)
    assert r["amp"] == "none" and calls == [1]  # the unmeasured rule would say bf16 (bf16 on a bf16 CPU)
    assert not Run.of(cfg).amp_json.exists()
    cv = run_cv(cfg, folds=[0])
    assert calls == [1, 1] and cv["amp"] == ["none"]
    assert json.loads(Run.of(cfg).amp_json.read_text())["mode"] == "none"
    assert lr_find(cfg, fold=0, start=1e-5, end=1.0, steps=12)["amp"] == "none" and calls == [1, 1]


def test_tf32_state_is_read_from_torch_on_cuda_only():
    """done.json's ``tf32`` on CUDA: the matmul and cuDNN flags and the float32 matmul precision as the fold trained
    (read from the flags, which exist without a GPU); None on other devices."""
    from seg_toolkit.device import tf32_state

    assert tf32_state(torch.device("cpu")) is None
    was = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # torch's own setters: no monkeypatch
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        state = tf32_state(torch.device("cuda"))
        assert state["matmul"] is True and state["cudnn"] is False and state["float32_matmul_precision"] == "high"
        torch.backends.cuda.matmul.allow_tf32 = False
        assert tf32_state(torch.device("cuda"))["float32_matmul_precision"] == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was


def test_a_machine_that_only_emulates_the_recorded_bf16_leaves_amp_json_alone(demo_root, tmp_path, monkeypatch):
    """amp.json is the run's one precision. A fold trained (or resumed) on a CPU without native bf16 falls back to
    fp32 for itself, and wrote that fallback, without timings, over the record: the bf16 machine then measured again
    for the next fold, and folds of one run flipped between precisions (on CUDA a T4's fp16 stayed the A100's)."""
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: {"fp32_s": 1.0, "bf16_s": 0.5})
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "method": "kfold", "seed": 0},
                                     train={"epochs": 1, "batch_size": 2, "amp": "auto"}))
    run_cv(cfg, folds=[0])
    run = Run.of(cfg)
    measured = json.loads(run.amp_json.read_text())
    assert measured["mode"] == "bf16" and measured["timings"]["bf16_speedup"] == 2.0
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: False)  # fold 1 on an AVX2-only machine
    cv = run_cv(cfg, folds=[1])
    assert [f["amp"] for f in cv["per_fold"]] == ["bf16", "none"]
    assert json.loads(run.amp_json.read_text()) == measured
    monkeypatch.setattr(amp_mod, "cpu_has_fast_bf16", lambda: True)  # back on the bf16 machine: the record, unmeasured
    monkeypatch.setattr(amp_mod, "measure_cpu_bf16", lambda *a, **k: pytest.fail("measured again"))
    assert Member.load(run).amp(1, CPU).mode == "bf16"
    assert "fallback" not in measured and resolve_amp("auto", CPU, measured).fallback is False


def test_an_explicit_fp16_that_runs_fp32_on_this_device_is_a_warning(demo_root, tmp_path, caplog):
    """`train.amp: fp16` on a CPU trains in fp32; it was said at INFO only, beside auto's choices."""
    import logging


    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 4, "num_workers": 0,
                                                                         "amp": "fp16", "device": "cpu"},
                                     folds={"n_splits": 2, "method": "kfold", "seed": 0, "only": [0]}))
    with caplog.at_level(logging.INFO):
        run_cv(cfg)
    said = [r for r in caplog.records if "amp none (train.amp: fp16; fp16 runs on CUDA only; fp32 on cpu)" in r.getMessage()]
    assert said and said[0].levelno == logging.WARNING
