"""Prediction overhead: the toolkit's Predictor against a hand-written inference loop.

Both run the same fold models, TTA and DataLoader settings over the same test images in this
process, alternating A/B so that machine load affects both alike. The hand-written loop is
what a careful person writes: read + normalise, ``tta_predict`` per fold model, average, resize
back to the image's size. The Predictor adds: per-member preprocessing from the run folder,
weights, the probability/logit space and per-image hand-over. The printed figure is the ratio
of median throughputs (Predictor / hand-written); 1.00 means it adds nothing.

    python bench/bench_predict.py [--rounds 5] [--images 256] [--size 101 101] [--tta identity hflip]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.checkpoint import load_model, save_checkpoint  # noqa: E402
from seg_toolkit.config import config_from_dict, config_to_dict, save_config  # noqa: E402
from seg_toolkit.data import SegDataset, collate, load_test_samples  # noqa: E402
from seg_toolkit.data.demo import make_demo  # noqa: E402
from seg_toolkit.predictor import Member, Predictor  # noqa: E402
from seg_toolkit.run import Run  # noqa: E402
from seg_toolkit.tensors import resize_to  # noqa: E402
from seg_toolkit.train import build_model_and_ema  # noqa: E402
from seg_toolkit.tta import tta_predict  # noqa: E402


def fake_run(cfg, folds: int) -> Run:
    """Fold checkpoints of freshly initialised models: prediction cost does not depend on training."""
    run = Run.of(cfg)
    run.dir.mkdir(parents=True)
    save_config(cfg, run.config_yaml)
    for k in range(folds):
        torch.manual_seed(k)
        model, _ = build_model_and_ema(cfg, torch.device("cpu"))
        run.fold_dir(k).mkdir()
        save_checkpoint({"model": model.state_dict(), "ema": None, "config": config_to_dict(cfg),
                         "model_args": {"num_classes": cfg.data.num_classes, "in_channels": cfg.data.in_channels},
                         "epoch": 1, "best_score": 0.0}, run.best_pt(k))
        run.done_json(k).write_text(json.dumps({"fold": k}))
    return run


def hand_written(cfg, run: Run, samples, folds: int, tta: list[str]) -> float:
    models = [load_model(run.best_pt(k))[0].eval() for k in range(folds)]
    loader = DataLoader(SegDataset(samples, cfg, "test"), batch_size=cfg.predict.batch_size, collate_fn=collate)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            probs = sum(tta_predict(m, batch["image"], cfg.data.task, tta, [1.0], "mean_prob", cfg.predict.batch_size)
                        for m in models) / len(models)
            for j in range(probs.shape[0]):
                p = resize_to(probs[j : j + 1], tuple(batch["size"][j].tolist()))[0]
                n += int(p.numel() > 0)
    return n / (time.perf_counter() - t0)


def toolkit(predictor: Predictor, samples) -> float:
    n, t0 = 0, time.perf_counter()
    for _, p, _ in predictor.iter_probs(samples):
        n += int(p.numel() > 0)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, nargs=2, default=[101, 101])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tta", nargs="+", default=["identity", "hflip"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo(Path(tmp) / "demo", n_train=2, n_test=args.images, height=args.size[0], width=args.size[1])
        cfg = config_from_dict({
            "runs_dir": str(Path(tmp) / "runs"), "experiment": "bench",
            "data": {"root": str(root), "task": "multilabel", "num_classes": 3, "id_column": "ImageId",
                     "class_column": "ClassId", "rle_column": "EncodedPixels"},
            "model": {"arch": "scratch_unet", "depth": 4, "base_width": 16},
            "train": {"num_workers": 0, "device": "cpu"},
            "predict": {"batch_size": args.batch, "tta": args.tta},
            "submission": {"per_class": True},
        })
        run = fake_run(cfg, args.folds)
        samples = load_test_samples(cfg)
        predictor = Predictor([Member.load(run)], device="cpu")
        hand_written(cfg, run, samples[: args.batch], args.folds, args.tta), toolkit(predictor, samples[: args.batch])  # warm-up
        a, b = [], []
        for _ in range(args.rounds):
            a.append(toolkit(predictor, samples))
            b.append(hand_written(cfg, run, samples, args.folds, args.tta))
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"settings: {args.images} test images {args.size[0]}x{args.size[1]}, {args.folds} folds x TTA {'+'.join(args.tta)}, "
          f"batch {args.batch}, scratch U-Net depth 4 width 16, CPU threads {torch.get_num_threads()}, {args.rounds} alternating rounds")
    print(f"hand-written loop : {tb:7.1f} images/s (median; runs {', '.join(f'{x:.1f}' for x in b)})")
    print(f"seg_toolkit Predictor: {ta:7.1f} images/s (median; runs {', '.join(f'{x:.1f}' for x in a)})")
    print(f"ratio Predictor / hand-written: {ta / tb:.3f}")


if __name__ == "__main__":
    main()
