"""Run-length encoding against the plainest NumPy code that does the same, on masks with few and many runs.

Three masks: Severstal-like (256x1600, two defects: 1,100 runs), 5000x5000 blobs (60,705 runs, 206 pixels each)
and 2000x2000 speckle (5% noise: 190,050 runs of 1-2 pixels). For each, ``rle_encode`` against
``" ".join`` of the run boundaries, and ``rle_decode`` (which also validates the string: integers, pairs, sorted,
inside the image) against ``np.fromstring`` and a slice per run. Alternating rounds in this process; the
printed figure is the ratio of median times (toolkit / plain: 1.0 means no overhead). The outputs are checked equal.

    python bench/bench_rle.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.rle import rle_decode, rle_encode  # noqa: E402


def plain_encode(mask: np.ndarray) -> str:
    flat = np.concatenate([[0], mask.ravel(order="F") != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat))
    edges[1::2] -= edges[0::2]
    edges[0::2] += 1
    return " ".join(map(str, edges.tolist()))


def plain_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    values = np.fromstring(rle, dtype=np.int64, sep=" ")
    out = np.zeros(shape[0] * shape[1], np.uint8)
    for start, length in zip(values[0::2].tolist(), values[1::2].tolist()):
        out[start - 1 : start - 1 + length] = 1
    return out.reshape(shape, order="F")


def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    severstal = np.zeros((256, 1600), np.uint8)
    severstal[60:200, 300:900] = 1
    severstal[10:40, 1000:1500] = 1
    blobs = (rng.random((50, 50)) > 0.5).repeat(100, 0).repeat(100, 1).astype(np.uint8)
    speckle = (rng.random((2000, 2000)) > 0.95).astype(np.uint8)
    return {"severstal 256x1600": severstal, "blobs 5000x5000": blobs, "speckle 2000x2000": speckle}


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("RLE: toolkit / plain NumPy (median of alternating rounds; 1.0 = no overhead)")
    for name, mask in masks().items():
        rle = rle_encode(mask)
        assert rle == plain_encode(mask) and np.array_equal(rle_decode(rle, mask.shape), plain_decode(rle, mask.shape))
        runs = len(rle.split()) // 2
        fns = {"encode": lambda: rle_encode(mask), "plain encode": lambda: plain_encode(mask),
               "decode": lambda: rle_decode(rle, mask.shape), "plain decode": lambda: plain_decode(rle, mask.shape)}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds + 1):  # the first round warms up
            for k, fn in fns.items():
                times[k].append(once(fn))
        e, pe, d, pd = (statistics.median(times[k][1:]) for k in fns)
        print(f"  {name:18s} {runs:7d} runs  encode {e * 1e3:8.1f} ms ({e / pe:4.2f}x)   "
              f"decode {d * 1e3:8.1f} ms ({d / pd:4.2f}x)")


if __name__ == "__main__":
    main()
