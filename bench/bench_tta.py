"""Benchmark D4 TTA: seg_toolkit.tta.tta_predict (batched) against ttach.

Both run the same smp model on the same batch in this process. ttach's
``SegmentationTTAWrapper(model, d4_transform(), merge_mode="mean")`` returns the mean of
the de-augmented LOGITS, so the like-for-like comparison is
``activation(ttach_output) == tta_predict(..., merge="mean_logit")`` (the activation of
the mean logits); the script asserts that before timing.

Timing: after ``--warmup`` calls each, ``--repeats`` rounds alternate the methods (so
drift from a shared machine hits both); images/s is given for the median and for the
fastest call (the least disturbed one on a shared machine).

    .venv/bin/python bench/bench_tta.py                     # defaults sized for 2 CPU cores
    .venv/bin/python bench/bench_tta.py --encoder resnet18 --size 256 --device cuda
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from seg_toolkit.tensors import activate as activation  # noqa: E402
from seg_toolkit.tta import tta_predict  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="Unet", help="smp architecture class")
    p.add_argument("--encoder", default="tu-test_resnet", help="smp encoder (weights are never downloaded)")
    p.add_argument("--classes", type=int, default=1)
    p.add_argument("--task", default="binary", choices=["binary", "multilabel", "multiclass"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="square input side")
    p.add_argument("--max-batch", type=int, nargs="+", default=[64, 8],
                   help="tta_predict max_batch values to time (images per forward pass)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_model(arch: str, encoder: str, classes: int, device: str) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=classes)
    return model.to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_methods(methods: dict[str, Callable[[], Tensor]], warmup: int, repeats: int,
                 device: str) -> dict[str, list[float]]:
    """Seconds per call of each method; the rounds interleave the methods."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def check_outputs(model: nn.Module, wrapper: nn.Module, x: Tensor, task: str) -> float:
    """Assert tta_predict (batched and sequential) equals ttach; return the max abs diff."""
    ours = tta_predict(model, x, task, transforms=["d4"], merge="mean_logit")
    sequential = tta_predict(model, x, task, transforms=["d4"], merge="mean_logit", batched=False)
    theirs = activation(wrapper(x), task)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, sequential, atol=1e-5, rtol=0)
    return (ours - theirs).abs().max().item()


def non_square_note(model: nn.Module, wrapper: nn.Module, size: int, task: str, device: str) -> str:
    """What ttach's d4 does on a non-square input (size x size+32)."""
    xr = torch.randn(2, 3, size, size + 32, device=device)
    where = f"on a {size}x{size + 32} input"
    try:
        diff = check_outputs(model, wrapper, xr, task)
    except Exception as e:  # noqa: BLE001 - report whatever ttach does
        return f"{where} it did not match tta_predict: {type(e).__name__}: {e}"
    return f"{where} it matched tta_predict here (max diff {diff:.2e})"


def report(times: dict[str, list[float]], batch: int) -> None:
    """Print ms/call and images/s (median and fastest call) and the ratios to ttach."""
    rates, best = {}, {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rates[name], best[name] = batch / med, batch / min(ts)
        print(f"  {name:24s} median {med * 1e3:8.1f} ms/call {rates[name]:7.1f} images/s | "
              f"fastest {min(ts) * 1e3:8.1f} ms/call {best[name]:7.1f} images/s | "
              f"slowest {max(ts) * 1e3:.1f} ms")
    for name in (n for n in times if n.startswith("tta_predict")):
        print(f"ratio {name} / ttach d4 throughput: median {rates[name] / rates['ttach d4']:.2f}x, "
              f"fastest {best[name] / best['ttach d4']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ttach

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, args.encoder, args.classes, args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    wrapper = ttach.SegmentationTTAWrapper(model, ttach.aliases.d4_transform(), merge_mode="mean")

    def ours(max_batch: int) -> Tensor:
        return tta_predict(model, x, args.task, transforms=["d4"], merge="mean_logit", max_batch=max_batch)

    methods: dict[str, Callable[[], Tensor]] = {"plain (no TTA)": lambda: activation(model(x), args.task)}
    for mb in args.max_batch:
        methods[f"tta_predict max_batch={mb}"] = functools.partial(ours, mb)
    methods["ttach d4"] = lambda: activation(wrapper(x), args.task)

    with torch.inference_mode():  # both methods run under the same mode
        diff = check_outputs(model, wrapper, x, args.task)
        print(f"outputs match: max |tta_predict(d4, mean_logit) - activation(ttach d4 mean)| = {diff:.2e}")
        rect_note = non_square_note(model, wrapper, args.size, args.task, args.device)
        times = time_methods(methods, args.warmup, args.repeats, args.device)

    print(f"\nmodel smp.{args.arch}({args.encoder}, weights=None, classes={args.classes}), "
          f"task {args.task}, batch {args.batch}x3x{args.size}x{args.size}, device {args.device}, "
          f"threads {args.threads}, warmup {args.warmup}, repeats {args.repeats}")
    per_group = args.batch * 4  # two shape groups (rotations swap H and W) of 4 transforms each
    for mb in args.max_batch:
        print(f"tta_predict max_batch={mb}: {2 * -(-per_group // mb)} forward passes "
              f"of <= {min(mb, per_group)} images")
    print(f"ttach d4: 8 forward passes of {args.batch} images")
    report(times, args.batch)
    print("\nnote: ttach d4 = {hflip} x {rot 0/90/180/270} is meant for square inputs: for H != W the "
          "rotated variants have shape (W, H), which the model must accept (e.g. both sides divisible "
          f"by 32 for a U-Net); {rect_note}. tta_predict groups the (H, W) and (W, H) variants and "
          "supports non-square inputs by design.")


if __name__ == "__main__":
    main()
