"""Mixed precision: what ``train.amp`` means on this device for this model, chosen once per run.

``train.amp: auto`` picks the fastest precision that is safe:

* CUDA: bf16 where the GPU has it (no loss scaling), else fp16 with a GradScaler.
* CPU with native bf16 kernels (AVX512-BF16 / AMX, through oneDNN): the faster of fp32 and
  bf16, *measured* on the run's own model, loss and a real training batch before fold 0
  trains (a few steps each, alternating, on a copy of the model with every RNG restored, so
  training is unchanged by the measurement). bf16 must win by ``MIN_GAIN``. Measured here
  (``bench/bench_amp.py``) it is 1.7-1.9x for the scratch U-Net, 1.5-4x for smp Unet/resnet34
  and 1.5x for efficientnet_lite0 / mobilenetv3 Unets, whose depthwise convolutions train in
  fp32 inside the bf16 step (:mod:`seg_toolkit.models.precision`: oneDNN's bf16 depthwise
  backward is the slow part); the gain varies with model, batch and size, so it is measured.
* a CPU without native bf16: fp32.

The choice is written to the run's ``amp.json`` (device type, mode, reason, the timings), so
every fold, a resumed fold and the run's inference (OOF, evaluate, predict) on the same
device type use the same precision: what is tuned is what is submitted. Predicting on
another device type resolves by the rules above, without measuring (bf16 on a bf16 CPU).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .config import ConfigError
from .losses import model_loss

log = logging.getLogger(__name__)

__all__ = ["AmpChoice", "resolve_amp", "oof_precision", "choose_amp", "run_amp", "cpu_has_fast_bf16", "MIN_GAIN"]

MIN_GAIN = 1.1  # bf16 must be at least this much faster than fp32 to be picked on a CPU


@dataclass(frozen=True)
class AmpChoice:
    """``mode`` is none, fp16 or bf16; ``timings`` holds a measured choice's seconds per step; ``fallback``: this
    machine's stand-in for a recorded bf16 it only emulates, never written over the run's record."""

    mode: str
    requested: str
    reason: str
    device_type: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    fallback: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mode)

    @property
    def uses_scaler(self) -> bool:
        return self.mode == "fp16"

    def describe(self) -> str:
        return f"amp {self.mode} (train.amp: {self.requested}; {self.reason})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["fallback"]
        return data


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix kernels natively (AVX512-BF16 or AMX), through oneDNN."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an old torch or a build without oneDNN
        return False


def oof_precision(done: dict[str, Any]) -> str | None:
    """The precision a fold's OOF files were predicted in, as its ``done.json`` records it: ``oof_amp``, written with
    the files (by training, ``oof`` and ``tune --tta``), else the fold's training ``amp`` (runs from before it)."""
    return done.get("oof_amp", done.get("amp"))


def resolve_amp(requested: str, device: torch.device, recorded: dict[str, Any] | None = None) -> AmpChoice:
    """``train.amp`` on ``device`` without measuring: ``recorded`` (a run's ``amp.json``) wins on
    its own device type; ``auto`` on a CPU then falls back to bf16 where the CPU has native
    bf16 kernels (for every model: depthwise convolutions train in fp32, and their bf16
    forward is the faster one for inference). An explicit ``fp16`` on a CPU runs fp32 (CPU fp16 autocast is
    slow and unscaled); ``bf16`` is honoured everywhere."""
    kind = device.type
    if requested == "none":
        return AmpChoice("none", requested, "fp32 as configured", kind)
    if requested in ("fp16", "bf16"):
        if requested == "fp16" and kind != "cuda":
            return AmpChoice("none", requested, f"fp16 runs on CUDA only; fp32 on {kind}", kind)
        return AmpChoice(requested, requested, "as configured", kind)
    if requested != "auto":
        raise ConfigError(f"train.amp: expected auto, none, fp16 or bf16, got {requested!r}")
    if recorded and recorded.get("device_type") == kind and recorded.get("requested") == "auto":
        if recorded.get("mode") not in ("none", "fp16", "bf16"):  # "fp64" ran as fp32, "bf16 " failed somewhere else
            raise ConfigError(f"amp.json: mode {recorded.get('mode')!r} is not one of none, fp16, bf16; delete the run's "
                              "amp.json to measure again")
        native = cpu_has_fast_bf16() if kind == "cpu" else cuda_has_native_bf16(device) if kind == "cuda" else False
        if recorded["mode"] == "bf16" and not native:
            # chosen where bf16 runs in hardware; here it is emulated (a Kaggle CPU or T4 predicting a bundle made on
            # a bf16 machine): several times slower than fp32 / fp16, so this machine's own choice (probabilities differ
            # a little from the OOF files': the predictor names that)
            fallback = "fp16" if kind == "cuda" else "none"
            return AmpChoice(fallback, requested, "amp.json recorded bf16, which this machine only emulates: "
                             + ("fp16 with loss scaling" if kind == "cuda" else "fp32"), kind, fallback=True)
        return AmpChoice(recorded["mode"], requested, recorded.get("reason", "recorded in amp.json"), kind,
                         dict(recorded.get("timings") or {}))
    if kind == "cuda":
        name = torch.cuda.get_device_name(device)
        if cuda_has_native_bf16(device):
            return AmpChoice("bf16", requested, f"{name} has bf16", kind)
        return AmpChoice("fp16", requested, f"{name} lacks native bf16: fp16 with loss scaling", kind)
    if kind != "cpu":
        return AmpChoice("none", requested, f"no mixed precision on {kind}", kind)
    if not cpu_has_fast_bf16():
        return AmpChoice("none", requested, "this CPU has no native bf16 kernels", kind)
    return AmpChoice("bf16", requested, "not measured; the CPU has native bf16 kernels", kind)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU runs bf16 in hardware (compute capability 8.0+: A100, RTX 30xx, H100). torch's
    ``is_bf16_supported()`` also says yes where bf16 is only emulated (T4, P100, V100: Kaggle's GPUs), where it has
    no tensor cores and runs far slower than fp16 with loss scaling."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def _step_seconds(step: Callable[[torch.dtype | None], None], dtype: torch.dtype | None, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(dtype)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_cpu_bf16(model: torch.nn.Module, loss_fn: torch.nn.Module, batch: Callable[[], tuple[torch.Tensor, Any]],
                     rounds: int = 3, steps: int = 2) -> dict[str, float]:
    """Seconds per training step (forward, loss, backward, optimiser step) in fp32 and bf16.

    ``batch()`` gives (images, target) on the device. Runs on a deep copy of ``model`` with a
    zero-lr optimiser, inside forked RNG state (python, NumPy, torch: reading the batch may
    augment), so the caller's model, RNG streams and therefore its training are exactly as
    without it.
    """
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        images, target = batch()
        twin = copy.deepcopy(model).train()
        opt = torch.optim.SGD(twin.parameters(), lr=0.0)

        def step(dtype: torch.dtype | None) -> None:
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = twin(images)
            # weight 1 for the aux / classifier terms the model has: a weight scales a term, the work is the same
            loss, _ = model_loss(loss_fn, out, target, 1.0, float(hasattr(twin, "presence_head")))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for dtype in (None, torch.bfloat16):  # warm-up: oneDNN builds its kernels on first use
            step(dtype)
        fp32, bf16 = [], []
        # ABBA order, and the fastest round of each: other work on the machine only ever adds time,
        # so the minimum is the least disturbed reading (a TGS run once measured 1.09x with the median
        # while another job held the other core for a few seconds, and trained 1.7x slower in fp32)
        for r in range(rounds):
            for dtype in ((None, torch.bfloat16) if r % 2 == 0 else (torch.bfloat16, None)):
                (fp32 if dtype is None else bf16).append(_step_seconds(step, dtype, steps))
    random.setstate(py_state)
    np.random.set_state(np_state)
    return {"fp32_s": min(fp32), "bf16_s": min(bf16)}


def choose_amp(requested: str, device: torch.device, model: torch.nn.Module, recorded: dict[str, Any] | None,
               batch: Callable[[], tuple[torch.Tensor, Any]], loss_fn: torch.nn.Module) -> AmpChoice:
    """The run's precision for training: :func:`resolve_amp`, except that ``auto`` on a bf16 CPU
    with no record yet measures both on ``batch()`` (images, target on the device)."""
    choice = resolve_amp(requested, device, recorded)
    if requested != "auto" or device.type != "cpu" or not cpu_has_fast_bf16() or choice.timings:
        return choice
    t = measure_cpu_bf16(model, loss_fn, batch)
    gain = t["fp32_s"] / t["bf16_s"]
    t["bf16_speedup"] = round(gain, 3)
    mode = "bf16" if gain >= MIN_GAIN else "none"
    reason = (f"measured on this model and batch: bf16 step {t['bf16_s']:.3f}s vs fp32 {t['fp32_s']:.3f}s "
              f"({gain:.2f}x; bf16 needs >= {MIN_GAIN}x)")
    return AmpChoice(mode, requested, reason, device.type, t)


def run_amp(cfg, run, device: torch.device, model: torch.nn.Module, loss_fn, train_set: list, d, to_device,
            record: bool = True) -> AmpChoice:
    """The run's precision (:func:`choose_amp`), measured once on a real training batch and kept in
    the run's ``amp.json``; rank 0 decides, every rank gets its choice. ``to_device(batch)`` gives
    (images, target) on the device as the training loop has them. ``record=False`` (``lr-find``) reads
    ``amp.json`` but never writes it: only training decides the precision its folds and OOF files are made in."""
    from .data import SegDataset, collate
    from .files import read_json, write_json

    amp = None
    if d.is_main:
        recorded = read_json(run.amp_json)

        def batch():
            dataset = SegDataset(train_set, cfg, "train")
            return to_device(collate([dataset[i] for i in range(min(cfg.train.batch_size, len(train_set)))]))

        amp = choose_amp(cfg.train.amp, device, model, recorded, batch, loss_fn)
        # a fallback is this machine's, not the run's: written, it would be the record the bf16 machine (or GPU)
        # then measures again (a CPU record without timings) or trains every later fold in (a GPU's fp16)
        if record and cfg.train.amp == "auto" and not amp.fallback and recorded != amp.to_json():
            write_json(run.amp_json, amp.to_json())
    return d.broadcast(amp)
