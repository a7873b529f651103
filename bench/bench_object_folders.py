"""Training items of object folders (``data.instance_folders``, DSB 2018's layout): object files read every
epoch against read once and kept (:mod:`seg_toolkit.data.object_files`).

A DSB image's target is made from one PNG per nucleus, up to hundreds; before, every training item of every
epoch decoded them all again. The baseline clears the kept object sets before each item (what every epoch
did); the toolkit keeps them, as from the second epoch on. Both make the ``borders`` target and, with
``--weight``, the U-Net weight map, on synthetic images the size of DSB's with touching nuclei; the items are
asserted equal. Ratio = baseline seconds / kept seconds per item (above 1: keeping is faster), medians of
alternating rounds.

    python bench/bench_object_folders.py [--rounds 5] [--images 4] [--nuclei 150] [--weight 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_toolkit.config import config_from_dict  # noqa: E402
from seg_toolkit.data import load_train_samples  # noqa: E402
from seg_toolkit.data import object_files  # noqa: E402
from seg_toolkit.data.dataset import SegDataset  # noqa: E402


def write_folders(root: Path, images: int, nuclei: int, seed: int = 0) -> None:
    """``images`` 520x696 images, each with ``nuclei`` discs of radius 5-12 (some touching), one PNG per disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:520, :696]
    for i in range(images):
        name = f"img{i:02d}"
        (root / "train" / name / "images").mkdir(parents=True)
        (root / "train" / name / "masks").mkdir()
        taken = np.zeros((520, 696), bool)
        image = np.full((520, 696, 3), 20, np.uint8)
        k = 0
        while k < nuclei:
            cy, cx, r = rng.integers(15, 505), rng.integers(15, 681), rng.integers(5, 13)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if (disc & taken).any():
                continue
            taken |= disc
            image[disc] = 200
            Image.fromarray(disc.astype(np.uint8) * 255).save(root / "train" / name / "masks" / f"{name}_{k:03d}.png")
            k += 1
        Image.fromarray(image).save(root / "train" / name / "images" / f"{name}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--nuclei", type=int, default=150)
    ap.add_argument("--weight", type=float, default=10.0, help="data.border_weight (0: the target only)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folders(root, args.images, args.nuclei)
        data = {"root": str(root), "task": "binary", "layout": "folder", "train_images": "train", "instance_folders": True,
                "instance_target": "borders", "border_weight": args.weight}
        cfg = config_from_dict({"data": data, "loss": {"bce": 0.5, "dice": 0.5}, "folds": {"n_splits": 2},
                                "transforms": {"train": [{"RandomCrop": {"height": 256, "width": 256}}]}})
        ds = SegDataset(load_train_samples(cfg), cfg, "train")
        keys = [(i, 7 + i) for i in range(len(ds))]

        def every_epoch() -> list:
            out = []
            for key in keys:
                object_files.clear_kept()  # what reading each item's files every epoch did
                out.append(ds[key])
            return out

        def kept() -> list:
            return [ds[key] for key in keys]

        def warm() -> None:  # the baseline's round emptied what was kept: the first epoch reads it again, untimed
            kept()

        first = kept()  # the first epoch reads them once
        times: dict[str, list[float]] = {"every epoch": [], "kept": []}
        for _ in range(args.rounds):
            for name, fn in (("every epoch", every_epoch), ("kept", kept)):
                if fn is kept:
                    warm()
                t0 = time.perf_counter()
                items = fn()
                times[name].append((time.perf_counter() - t0) / len(keys))
                for a, b in zip(items, first):
                    assert all((a[k] == b[k]).all() for k in ("image", "target") + (("weight",) if args.weight else ()))
        base, ours = statistics.median(times["every epoch"]), statistics.median(times["kept"])
        print(f"object folders: {args.images} images 520x696 x {args.nuclei} nuclei, borders target"
              + (f" + weight map (w0 {args.weight:g})" if args.weight else "") + ", 256x256 crops")
        print(f"  per item: read every epoch {1000 * base:.1f} ms, kept {1000 * ours:.1f} ms; "
              f"ratio every epoch / kept: {base / ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
