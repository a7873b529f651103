"""The training step of ``configs/tgs_cpu.yaml`` against the choices that set its speed.

The baseline is the committed config's step as ``seg-toolkit train`` runs it on a CPU: a batch of
32 one-channel 101x101 slices, channels-last, bf16 autocast (depthwise convolutions in fp32,
:mod:`seg_toolkit.models.precision`), BCE + Lovasz with the deep-supervision and classifier
terms (:func:`seg_toolkit.losses.model_loss`), AdamW. Each variant changes one thing; all run
in this process, alternating rounds, and the printed ratio is baseline seconds / variant
seconds (above 1: the variant is faster). Weights are random (speed does not depend on them),
so neither the data nor the weights package is needed.

Variants: the PyTorch-style ``efficientnet_lite0`` the config used before ``tf_efficientnet_lite0`` (symmetric
padding, BatchNorm eps 1e-5, the same tensors), the depthwise convolutions left in bf16 (without the fp32 exception of
:mod:`seg_toolkit.models.precision`), the encoder at its full depth 5 (stride 32: 101 is padded to 128 instead of 112;
the config before encoder_depth 4), the same depth-4 model fed 128x128 (``min_input_size``: is
112 an awkward size for the kernels?), smp's default decoder widths, the same step in fp32, and
``torch.compile`` of the model (``train.compile: true``; its one-off compile time is printed
apart; ``--no-compile`` skips it). ``--fp32`` runs every variant in fp32 against the config's step
in fp32: what ``train.amp: auto`` trains on a CPU without native bf16, where the bf16 step is
emulated and several times slower.

    python bench/bench_tgs_step.py [--rounds 4] [--steps 2] [--no-compile] [--fp32]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_toolkit.config import load_config  # noqa: E402
from seg_toolkit.losses import build_loss, model_loss  # noqa: E402
from seg_toolkit.models import build_model  # noqa: E402
from seg_toolkit.models.precision import follow_autocast  # noqa: E402


def make_step(cfg, model_params: dict | None, dtype: torch.dtype | None, compiled: bool, x, y, min_size: int = 0,
              encoder: str | None = None, depthwise_bf16: bool = False):
    """A closure running one training step of the config's model (with ``model_params`` and ``encoder`` if given, its
    input padded to at least ``min_size``; with ``depthwise_bf16`` its depthwise convolutions left in the autocast dtype,
    without :mod:`seg_toolkit.models.precision`'s fp32 exception)."""
    mcfg = dataclasses.replace(cfg.model, encoder_weights=None, encoder_weights_map="names",
                               params=model_params if model_params is not None else cfg.model.params,
                               encoder=encoder or cfg.model.encoder)
    torch.manual_seed(0)
    model = build_model(mcfg, cfg.data.num_classes, cfg.data.in_channels).to(memory_format=torch.channels_last).train()
    model.min_input_size = max(int(getattr(model, "min_input_size", 0)), min_size)
    if depthwise_bf16:
        assert follow_autocast(model) > 0, "the model has no depthwise convolution in fp32 to undo"
    net = torch.compile(model) if compiled else model
    loss_fn = build_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        loss, _ = model_loss(loss_fn, out, y, cfg.model.deep_supervision, cfg.model.classifier)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (after a warm-up step each)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (about a minute to compile)")
    ap.add_argument("--fp32", action="store_true", help="every variant in fp32, against the config's step in fp32 (a CPU without bf16)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    cfg = load_config(ROOT / "configs" / "tgs_cpu.yaml", overrides=["data.root=."])
    b = cfg.train.batch_size
    x = torch.randn(b, cfg.data.in_channels, 101, 101).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(b, 1, 101, 101) > 0.5).float()
    depth5 = {"decoder_channels": [128, 64, 32, 16, 8]}
    smp_default = {**cfg.model.params, "decoder_channels": [256, 128, 64, 32]}
    amp = None if args.fp32 else torch.bfloat16
    baseline = f"tgs_cpu.yaml ({'fp32' if args.fp32 else 'bf16'})"
    variants = {
        baseline: (None, amp, False, 0, None, False),
        "tu-efficientnet_lite0 (before)": (None, amp, False, 0, "tu-efficientnet_lite0", False),
        "encoder depth 5 (pad to 128)": (depth5, amp, False, 0, None, False),
        "depth 4, input padded to 128": (None, amp, False, 128, None, False),
        "smp's decoder widths": (smp_default, amp, False, 0, None, False),
    }
    if not args.fp32:
        variants["fp32"] = (None, None, False, 0, None, False)
        variants["depthwise convs in bf16"] = (None, amp, False, 0, None, True)
    if not args.no_compile:
        variants["torch.compile"] = (None, amp, True, 0, None, False)
    steps, first = {}, {}
    for name, (params, dtype, compiled, min_size, encoder, depthwise_bf16) in variants.items():
        steps[name] = make_step(cfg, params, dtype, compiled, x, y, min_size, encoder, depthwise_bf16)
        t0 = time.perf_counter()
        steps[name]()  # warm-up: oneDNN builds its kernels (and inductor compiles) on the first call
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            times[name].append((time.perf_counter() - t0) / args.steps)
    best = {name: min(v) for name, v in times.items()}  # other load only adds time: the fastest round is the cleanest
    base = best[baseline]
    print(f"configs/tgs_cpu.yaml training step on CPU ({torch.get_num_threads()} threads), batch {b}, 101x101, "
          f"fastest of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':32s} {'s/step':>8s} {'baseline/this':>14s}  first step")
    for name, t in best.items():
        print(f"{name:32s} {t:8.3f} {base / t:14.2f}  {first[name]:.1f} s")


if __name__ == "__main__":
    main()
