"""Training-loop overhead: the toolkit's ``train_one_epoch`` against a hand-written PyTorch loop.

Both loops run the same model, loss, optimiser and DataLoader in this process, alternating
A/B so that machine load affects both alike; the printed figure is the ratio of median
throughputs (toolkit / hand-written). 1.00 means the toolkit adds nothing.

    python bench/bench_train_loop.py [--epochs 5] [--size 96 128] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.config import config_from_dict  # noqa: E402
from seg_toolkit.data import load_train_samples  # noqa: E402
from seg_toolkit.data.demo import make_demo  # noqa: E402
from seg_toolkit.losses import build_loss  # noqa: E402
from seg_toolkit.optim import LRSchedule, build_optimizer  # noqa: E402
from seg_toolkit.epoch import train_one_epoch  # noqa: E402
from seg_toolkit.fold_state import TrainState  # noqa: E402
from seg_toolkit.train import build_loaders, build_model_and_ema  # noqa: E402


def hand_written_epoch(model, loss_fn, optimizer, loader) -> float:
    """The loop a careful person writes by hand: forward, loss, backward, step."""
    model.train()
    n, t0 = 0, time.perf_counter()
    for batch in loader:
        images, target = batch["image"], batch["target"]
        loss, _ = loss_fn(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += images.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per loop (after one warm-up each)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, nargs=2, default=[96, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo(Path(tmp) / "demo", n_train=args.images, n_test=1, height=args.size[0], width=args.size[1])
        cfg = config_from_dict({
            "data": {"root": str(root), "task": "multilabel", "num_classes": 3, "id_column": "ImageId",
                     "class_column": "ClassId", "rle_column": "EncodedPixels"},
            "model": {"arch": "scratch_unet", "depth": 3, "base_width": args.width},
            "loss": {"bce": 0.5, "dice": 0.5},
            "submission": {"per_class": True, "id_format": "{id}_{cls}"},
            "scheduler": {"name": "none"},
            "train": {"epochs": args.epochs, "batch_size": args.batch, "num_workers": 0, "device": "cpu"},
        })
        device = torch.device("cpu")
        samples = load_train_samples(cfg)
        loader, _ = build_loaders(cfg, samples, samples[:1], device)
        model, ema = build_model_and_ema(cfg, device)
        loss_fn = build_loss(cfg)
        optimizer = build_optimizer(cfg, model)
        schedule = LRSchedule(cfg, optimizer, len(loader))
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        state = TrainState()

        def toolkit() -> float:
            return train_one_epoch(cfg, model, ema, loss_fn, optimizer, schedule, scaler, loader, state, 0, 0, device)["images_per_s"]

        def hand() -> float:
            return hand_written_epoch(model, loss_fn, optimizer, loader)

        toolkit(), hand()  # warm-up
        a, b = [], []
        for _ in range(args.epochs):
            a.append(toolkit())
            b.append(hand())
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"settings: {args.images} images {args.size[0]}x{args.size[1]}, batch {args.batch}, scratch U-Net width {args.width}, "
          f"CPU threads {torch.get_num_threads()}, {args.epochs} alternating epochs each")
    print(f"hand-written loop : {tb:7.1f} images/s (median; runs {', '.join(f'{x:.1f}' for x in b)})")
    print(f"seg_toolkit loop  : {ta:7.1f} images/s (median; runs {', '.join(f'{x:.1f}' for x in a)})")
    print(f"ratio toolkit / hand-written: {ta / tb:.3f}")


if __name__ == "__main__":
    main()
