"""Benchmark the ONNX Runtime backend (predict.backend: onnx) against PyTorch on the CPU.

Each model is built by seg_toolkit (weights initialised, never downloaded), exported exactly as
``seg-toolkit export`` exports a fold (seg_toolkit.export: the graph without the padding wrapper,
opset 17, dynamic batch and size) and run through :class:`seg_toolkit.export.OnnxModel`, the
module the predictor uses; the baseline is the PyTorch model in ``torch.inference_mode`` (fp32)
with the same number of threads. Outputs are compared before timing, and the script fails (exit
status 1, after every row) when any max |logit difference| exceeds ``--tolerance``; the default
sizes include an odd one (101), which both pad to the model's multiple and crop back.

Timing: after ``--warmup`` calls each, ``--repeats`` rounds alternate the two (so drift from a
shared machine hits both); the ratio is PyTorch's median seconds per batch over ONNX Runtime's
(> 1: ONNX Runtime is faster).

    .venv/bin/python bench/bench_onnx.py                          # both models, 101, 128 and 256, batch 8, 2 threads
    .venv/bin/python bench/bench_onnx.py --models smp --sizes 512 --threads 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from seg_toolkit.config import ModelConfig  # noqa: E402
from seg_toolkit.export import OnnxModel, _export_onnx  # noqa: E402
from seg_toolkit.models import build_model  # noqa: E402

MODELS = {
    "scratch": ("scratch U-Net depth 4 width 32", ModelConfig(arch="scratch_unet", depth=4, base_width=32)),
    "smp": ("smp Unet resnet34", ModelConfig(arch="unet", encoder="resnet34", encoder_weights=None)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", type=int, nargs="+", default=[101, 128, 256], help="square input sides")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest max |logit difference| accepted (fp32)")
    return p.parse_args(argv)


def median_seconds(fns: dict, warmup: int, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU, {args.threads} threads, batch {args.batch}, fp32; ratio = torch s / onnxruntime s (median of "
          f"{args.repeats} alternating calls)")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            label, mc = MODELS[key]
            model = build_model(mc, num_classes=args.classes, in_channels=3).eval()
            path = Path(tmp) / f"{key}.onnx"
            _export_onnx(model, torch.randn(1, 3, 64, 64), str(path), {"bench": key})
            session = OnnxModel(path, threads=args.threads)
            for size in args.sizes:
                x = torch.randn(args.batch, 3, size, size)
                with torch.inference_mode():
                    diff = float((session(x) - model(x)).abs().max())
                if not diff <= args.tolerance:  # NaN fails too
                    failed.append(f"{label} {size}x{size}: max |diff| {diff:.1e} > {args.tolerance:g}")

                def run_torch(x=x):
                    with torch.inference_mode():
                        return model(x)

                t = median_seconds({"torch": run_torch, "onnxruntime": lambda x=x: session(x)}, args.warmup, args.repeats)
                print(f"{label:<32} {size}x{size}: torch {args.batch / t['torch']:6.1f} images/s, onnxruntime "
                      f"{args.batch / t['onnxruntime']:6.1f} images/s, ratio {t['torch'] / t['onnxruntime']:.2f} "
                      f"(max |diff| {diff:.1e})")
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
