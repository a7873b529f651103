"""Validation loss: at the model's input size (the target nearest-resized, as training does) against
the old way, at each image's original size (the logits bilinearly resized up first).

The CamVid CPU shape: 11 classes, logits 176x240, targets 360x480, CE + dice, one 8-image
validation batch. Alternating A/B rounds in this process; the printed figure is the ratio of
median times (original size / model size: above 1 means the model-size loss is faster). The
metric is still computed at the original size either way (not timed here).

    python bench/bench_validation.py [--rounds 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.config import IGNORE_INDEX, config_from_dict  # noqa: E402
from seg_toolkit.losses import build_loss  # noqa: E402
from seg_toolkit.tensors import resize_target, resize_to  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = config_from_dict({
        "experiment": "bench", "data": {"root": ".", "task": "multiclass", "num_classes": 11, "ignore_index": 11,
                                          "layout": "folder"},
        "model": {"arch": "scratch_unet"}, "loss": {"ce": 1.0, "dice": 0.5}, "submission": {"per_class": True},
    })
    loss_fn = build_loss(cfg)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, 11, 176, 240, generator=g)
    target = torch.randint(0, 12, (args.batch, 360, 480), generator=g)
    target[target == 11] = IGNORE_INDEX  # void, as the data layer hands it over
    ways = {
        "original size (before)": lambda: loss_fn(resize_to(logits, target.shape[-2:]), target)[0],
        "model size (now)": lambda: loss_fn(logits, resize_target(target, logits.shape[-2:]))[0],
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    with torch.inference_mode():
        for f in ways.values():
            f()  # warm-up
        for _ in range(args.rounds):
            for name, f in ways.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:24s} {v * 1000:8.1f} ms per {args.batch}-image batch")
    print(f"validation loss, original size / model size: {med['original size (before)'] / med['model size (now)']:.2f}x")


if __name__ == "__main__":
    main()
