"""Mixed precision on this machine: a training step under bf16 autocast against fp32, per model.

For each model the same step (forward, dice+BCE loss, backward, AdamW step) runs in fp32 and
under ``torch.autocast(<device>, bfloat16)``, alternating A/B rounds in this process so that
machine load hits both alike; the printed figure is the ratio of median step times
(fp32 / bf16: above 1 means bf16 is faster). The last column is what ``train.amp: auto``
picks for the model here (``seg_toolkit.device.resolve_amp``), so a wrong pick shows.

    python bench/bench_amp.py [--rounds 3] [--steps 4] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.config import ModelConfig, config_from_dict  # noqa: E402
from seg_toolkit.amp import resolve_amp  # noqa: E402
from seg_toolkit.losses import build_loss  # noqa: E402
from seg_toolkit.models import build_model  # noqa: E402

MODELS = [  # (label, model config, image size)
    ("scratch U-Net d4 w16", {"arch": "scratch_unet", "depth": 4, "base_width": 16}, 101),
    ("smp Unet resnet34", {"arch": "unet", "encoder": "resnet34", "encoder_weights": None}, 128),
    ("smp Unet tu-efficientnet_lite0", {"arch": "unet", "encoder": "tu-efficientnet_lite0", "encoder_weights": None}, 128),
]


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
    print(f"{'model':34s} {'size':>5s} {'fp32 s':>8s} {'bf16 s':>8s} {'fp32/bf16':>10s}  auto picks")
    for label, spec, size in MODELS:
        model = build_model(ModelConfig(**spec), num_classes=1, in_channels=3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(args.batch, 3, size, size)
        y = (torch.rand(args.batch, 1, size, size) > 0.5).float()
        for dtype in (None, torch.bfloat16):  # warm-up: oneDNN builds its kernels on the first call
            step_time(model, loss_fn, opt, x, y, dtype, 1)
        fp32, bf16 = [], []
        for _ in range(args.rounds):
            fp32.append(step_time(model, loss_fn, opt, x, y, None, args.steps))
            bf16.append(step_time(model, loss_fn, opt, x, y, torch.bfloat16, args.steps))
        a, b = statistics.median(fp32), statistics.median(bf16)
        pick = resolve_amp("auto", device, model)
        print(f"{label:34s} {size:5d} {a:8.3f} {b:8.3f} {a / b:10.2f}  {pick.mode} ({pick.reason})")


if __name__ == "__main__":
    main()
