"""The object-matching score of one image (``instance_map``, DSB 2018) against the public DSB kernel's way.

Every epoch's validation, OOF scoring, ``evaluate`` and the report score each image this way, so its cost is
paid per image and epoch. The baseline is the "example metric implementation" of the DSB 2018 kernels: an IoU
matrix of every (truth, prediction) label pair from ``np.histogram2d`` of the two label maps, then matches
counted from it at each threshold. The toolkit's (:func:`seg_toolkit.instance_metrics.image_score`) counts only
the pairs that touch (``np.unique`` of pair codes) and compares IoU with each threshold exactly in integers.
Both label the prediction's 8-connected objects with ``scipy.ndimage.label``. The two scores are asserted equal
on every image (the random shapes put no IoU exactly on a threshold). Ratio = kernel seconds / toolkit seconds
(above 1: the toolkit's is faster), medians of alternating rounds, on synthetic nuclei images the size of DSB's.

    python bench/bench_objects.py [--rounds 5] [--images 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_toolkit.instance_metrics import image_score  # noqa: E402


def kernel_score(truth: np.ndarray, pred_mask: np.ndarray) -> float:
    """The DSB 2018 kernels' metric: histogram2d IoU matrix, matches per threshold (float IoU > t)."""
    pred, _ = ndimage.label(pred_mask, structure=np.ones((3, 3), bool))
    n_true, n_pred = int(truth.max()), int(pred.max())
    if n_true == 0 and n_pred == 0:
        return 1.0
    inter = np.histogram2d(truth.ravel(), pred.ravel(), bins=(n_true + 1, n_pred + 1),
                           range=((-0.5, n_true + 0.5), (-0.5, n_pred + 0.5)))[0]
    area_true = np.histogram(truth, bins=n_true + 1, range=(-0.5, n_true + 0.5))[0][:, None]
    area_pred = np.histogram(pred, bins=n_pred + 1, range=(-0.5, n_pred + 0.5))[0][None, :]
    union = area_true + area_pred - inter
    iou = inter[1:, 1:] / union[1:, 1:]
    out = []
    for t in np.arange(0.5, 1.0, 0.05):
        matches = iou > t
        tp = int((matches.sum(1) == 1).sum())
        fp = int((matches.sum(0) == 0).sum())
        fn = int((matches.sum(1) == 0).sum())
        out.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(out))


def nuclei(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth: ``n`` ellipses (later ones cover earlier ones; none overlap in the label map); prediction: each
    ellipse shifted by a pixel or two, some dropped, some spurious blobs, and touching ones merged."""
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros((h, w), np.int32)
    pred = np.zeros((h, w), bool)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(3, 12, size=2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        truth[inside] = k
        if rng.random() < 0.9:
            dy, dx = rng.integers(-2, 3, size=2)
            pred |= ((yy - cy - dy) / ry) ** 2 + ((xx - cx - dx) / rx) ** 2 <= 1
    for _ in range(n // 10):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        pred[y : y + 3, x : x + 3] = True
    # relabel the truth 1..m (covered ellipses vanish)
    ids = np.unique(truth)
    ids = ids[ids > 0]
    lut = np.zeros(n + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[truth], pred


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for h, w, n in ((256, 256, 40), (520, 696, 300)):
        images = [nuclei(rng, h, w, n) for _ in range(args.images)]
        for truth, pred in images:
            a, b = kernel_score(truth, pred), image_score(truth, pred, "instance_map")
            if abs(a - b) > 1e-12:
                print(f"scores differ: kernel {a!r}, toolkit {b!r}", file=sys.stderr)
                return 1
        times: dict[str, list[float]] = {"kernel": [], "toolkit": []}
        for _ in range(args.rounds):
            for name, fn in (("kernel", kernel_score), ("toolkit", lambda t, p: image_score(t, p, "instance_map"))):
                t0 = time.perf_counter()
                for truth, pred in images:
                    fn(truth, pred)
                times[name].append((time.perf_counter() - t0) / len(images))
        k, t = float(np.median(times["kernel"])), float(np.median(times["toolkit"]))
        print(f"{h}x{w}, {n} nuclei: kernel {k * 1e3:.2f} ms, toolkit {t * 1e3:.2f} ms per image; "
              f"ratio kernel / toolkit: {k / t:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
