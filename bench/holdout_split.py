"""A labelled held-out split of a csv-layout competition, to estimate what the test set would score.

Kaggle grades the ensemble of K fold models, with the post-processing tuned on their OOF, on images
none of them saw; the tuned CV is only a proxy for that. This script sets aside ``--fraction`` of the
labelled images (stratified by empty / non-empty mask, seeded) and writes two folders of symlinks
(nothing is copied; the source folder is only read):

* ``OUT/``: the competition without them (``train.csv`` rows and ``train_images`` links; every other
  top-level entry of the source, such as ``test/`` and ``sample_submission.csv``, linked as it is);
* ``OUT/holdout/``: the held-out rows and images, laid out the same way.

Then train on ``OUT`` and score the held-out folder with the submission's predictor:

    python bench/holdout_split.py configs/tgs_cpu.yaml /tmp/tgs_hold --set data.root=../shared/data/tgs_salt
    seg-toolkit train configs/tgs_cpu.yaml --set data.root=/tmp/tgs_hold --set experiment=tgs_hold
    seg-toolkit evaluate configs/tgs_cpu.yaml --set data.root=/tmp/tgs_hold --set experiment=tgs_hold \\
        --on /tmp/tgs_hold/holdout

Each model then trains on (1 - fraction) of the images, so the estimate is of a slightly weaker run
than the full one (README: TGS with 25% held out).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_toolkit.config import load_config  # noqa: E402
from seg_toolkit.data import load_train_samples  # noqa: E402
from seg_toolkit.data.masks import train_rle_spec  # noqa: E402


def split(config: str, out: Path, fraction: float, seed: int, overrides: list[str]) -> tuple[int, int]:
    """Write the split; everything is checked before the first folder is made."""
    cfg = load_config(config, overrides)
    d = cfg.data
    if d.layout != "csv":
        raise SystemExit(f"{config}: data.layout is {d.layout!r}; this script splits the csv layout (train.csv + images)")
    if out.exists():
        raise SystemExit(f"{out}: exists; choose a new folder (nothing is overwritten)")
    root = Path(d.root)
    if (root / "holdout").exists():
        raise SystemExit(f"{root / 'holdout'}: the source has an entry named like the split's held-out folder")
    samples = load_train_samples(cfg)  # the toolkit's own reader: its checks, its RLE style, its image paths
    missing = [s for s in samples if not s.image.is_file()]
    if missing:
        raise SystemExit(f"{missing[0].image}: image of id {missing[0].id!r} ({missing[0].where}) not found; "
                         f"{len(missing)} of {len(samples)} missing")
    spec = train_rle_spec(cfg)
    non_empty = [any(not spec.is_empty(r) for r in s.rles) for s in samples]
    kept, held = train_test_split(samples, test_size=fraction, random_state=seed, stratify=non_empty)
    rows = pd.read_csv(root / d.train_csv, dtype=str, keep_default_na=False)  # written back as they are
    for folder, part in ((out, kept), (out / "holdout", held)):
        images = folder / d.train_images
        images.mkdir(parents=True)
        (folder / d.train_csv).parent.mkdir(parents=True, exist_ok=True)
        rows[rows[d.id_column].isin({s.id for s in part})].to_csv(folder / d.train_csv, index=False)
        for s in part:
            os.symlink(s.image.resolve(), images / s.image.name)
    first = {Path(d.train_csv).parts[0], Path(d.train_images).parts[0]}
    for entry in sorted(root.iterdir()):
        if entry.name not in first:
            os.symlink(entry.resolve(), out / entry.name)
    return len(kept), len(held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("out", type=Path, help="new folder for the split (symlinks)")
    ap.add_argument("--fraction", type=float, default=0.25, help="share of the labelled images held out (default 0.25)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    n_train, n_held = split(a.config, a.out, a.fraction, a.seed, a.overrides)
    print(f"{a.out}: {n_train} training images; {a.out / 'holdout'}: {n_held} held-out images")


if __name__ == "__main__":
    main()
