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


def split(config: str, out: Path, fraction: float, seed: int, overrides: list[str]) -> tuple[int, int]:
    cfg = load_config(config, overrides)
    d = cfg.data
    if d.layout != "csv":
        raise SystemExit(f"{config}: data.layout is {d.layout!r}; this script splits the csv layout (train.csv + images)")
    root = Path(d.root)
    csv = root / d.train_csv
    if not csv.is_file():
        raise SystemExit(f"{csv}: not found (data.root {d.root!r}, data.train_csv {d.train_csv!r})")
    if out.exists():
        raise SystemExit(f"{out}: exists; choose a new folder (nothing is overwritten)")
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for col in (d.id_column, d.rle_column):
        if col not in rows.columns:
            raise SystemExit(f"{csv}: no column {col!r} (data.id_column / data.rle_column); columns: {list(rows.columns)}")
    empty_tokens = {"", d.rle_empty_token}
    non_empty = rows.groupby(d.id_column, sort=True)[d.rle_column].agg(lambda s: any(v.strip() not in empty_tokens for v in s))
    train_ids, held_ids = train_test_split(non_empty.index.to_numpy(), test_size=fraction, random_state=seed,
                                           stratify=non_empty.to_numpy())
    for folder, ids in ((out, set(train_ids)), (out / "holdout", set(held_ids))):
        images = folder / d.train_images
        images.mkdir(parents=True)
        part = rows[rows[d.id_column].isin(ids)]
        (folder / d.train_csv).parent.mkdir(parents=True, exist_ok=True)
        part.to_csv(folder / d.train_csv, index=False)
        for i in sorted(ids):
            src = (root / d.train_images / f"{i}{d.image_ext}").resolve()
            if not src.is_file():
                raise SystemExit(f"{src}: image of id {i!r} in {csv} not found")
            os.symlink(src, images / src.name)
    first = {Path(d.train_csv).parts[0], Path(d.train_images).parts[0]}
    for entry in sorted(root.iterdir()):
        if entry.name == "holdout":
            raise SystemExit(f"{entry}: the source already has a 'holdout' entry, the name this split gives its held-out folder")
        if entry.name not in first:
            os.symlink(entry.resolve(), out / entry.name)
    return len(train_ids), len(held_ids)


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
