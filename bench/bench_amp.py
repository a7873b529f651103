"""Mixed precision on this machine: a training step under bf16 autocast against fp32, per model.

For each model the same step (forward, dice+BCE loss, backward, AdamW step) runs in fp32 and
under ``torch.autocast(<device>, bfloat16)``, alternating A/B rounds in this process so that
machine load hits both alike; the printed figure is the ratio of median step times
(fp32 / bf16: above 1 means bf16 is faster). The last column is what ``train.amp: auto``
picks for the model here: ``seg_toolkit.amp.choose_amp``, which measures the model on the same
batch itself as training does (bf16 only when it wins by ``MIN_GAIN``), so a wrong pick shows.

Models with depthwise convolutions run them in fp32 under CPU bf16 autocast
(``seg_toolkit.models.precision``); for those, a third timing runs the same step with the
depthwise layers in bf16 too (what plain autocast does), and ``dw-bf16/bf16`` is how much the
exception saves (above 1: it pays).

    python bench/bench_amp.py [--rounds 3] [--steps 4] [--batch 16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.config import ModelConfig, config_from_dict  # noqa: E402
from seg_toolkit.amp import choose_amp  # noqa: E402
from seg_toolkit.losses import build_loss  # noqa: E402
from seg_toolkit.models import build_model  # noqa: E402
from seg_toolkit.models.precision import follow_autocast  # noqa: E402

MODELS = [  # (label, model config, image size, channels_last)
    ("scratch U-Net d4 w16", {"arch": "scratch_unet", "depth": 4, "base_width": 16}, 101, False),
    ("smp Unet resnet34", {"arch": "unet", "encoder": "resnet34", "encoder_weights": None}, 128, False),
    ("smp Unet tu-efficientnet_lite0 (CL)", {"arch": "unet", "encoder": "tu-efficientnet_lite0", "encoder_weights": None}, 128, True),
    ("smp Unet tu-mobilenetv3_large_100 (CL)", {"arch": "unet", "encoder": "tu-mobilenetv3_large_100", "encoder_weights": None},
     128, True),
]


def all_bf16_twin(model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy whose depthwise convolutions follow autocast like every other layer (None: it has none)."""
    twin = copy.deepcopy(model)
    return twin if follow_autocast(twin) else None


def step_time(model, loss_fn, opt, x, y, dtype, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss, _ = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds per model (after one warm-up each)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    loss_fn = build_loss(config_from_dict({"data": {"root": ".", "task": "binary"}, "loss": {"bce": 0.5, "dice": 0.5}}))
    print(f"bf16 training step vs fp32 on {device} ({torch.get_num_threads()} threads), batch {args.batch}")
    print(f"{'model':40s} {'size':>5s} {'fp32 s':>8s} {'bf16 s':>8s} {'fp32/bf16':>10s} {'dw-bf16/bf16':>13s}  auto picks")
    for label, spec, size, channels_last in MODELS:
        model = build_model(ModelConfig(**spec), num_classes=1, in_channels=3)
        x = torch.randn(args.batch, 3, size, size)
        y = (torch.rand(args.batch, 1, size, size) > 0.5).float()
        twin = all_bf16_twin(model)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            model = model.to(memory_format=torch.channels_last)
            twin = twin.to(memory_format=torch.channels_last) if twin is not None else None
        runs = [("fp32", model, None), ("bf16", model, torch.bfloat16)]
        if twin is not None:
            runs.append(("dw-bf16", twin, torch.bfloat16))
        opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m, _ in runs}
        for name, m, dtype in runs:  # warm-up: oneDNN builds its kernels on the first call
            step_time(m, loss_fn, opts[name], x, y, dtype, 1)
        times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        for _ in range(args.rounds):
            for name, m, dtype in runs:
                times[name].append(step_time(m, loss_fn, opts[name], x, y, dtype, args.steps))
        med = {name: statistics.median(v) for name, v in times.items()}
        a, b = med["fp32"], med["bf16"]
        dw = f"{med['dw-bf16'] / b:13.2f}" if "dw-bf16" in med else f"{'-':>13s}"
        # what training would pick: choose_amp's own measurement on this model and batch (fp32 model, like training)
        pick = choose_amp("auto", device, model, None, lambda: (x, y), loss_fn)
        print(f"{label:40s} {size:5d} {a:8.3f} {b:8.3f} {a / b:10.2f} {dw}  {pick.mode} ({pick.reason})")


if __name__ == "__main__":
    main()
