"""The built-in demo competition: synthetic scenes laid out like a Kaggle competition.

Three shape classes (1 disc, 2 rectangle, 3 triangle) on textured, non-square backgrounds;
shapes may overlap (a multilabel task, like Severstal), about one image in six is empty.
Files written, all deterministic from ``seed``::

    train/images/<id>.png       train.csv   ImageId,ClassId,EncodedPixels (one row per image and class)
    test/images/<id>.png        sample_submission.csv   ImageId_ClassId,EncodedPixels ("1 1" placeholders)
    test_solution.csv           the hidden test answers, in the submission's format (for self-checks)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..rle import rle_encode

log = logging.getLogger(__name__)

__all__ = ["make_demo", "render_scene", "DEMO_CLASSES"]

DEMO_CLASSES = ("disc", "rectangle", "triangle")
_TINTS = np.array([[1.0, 0.45, 0.35], [0.4, 1.0, 0.45], [0.4, 0.5, 1.0]])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    base = rng.uniform(60, 150, size=3)
    for _ in range(4):  # smooth stripes and waves
        fy, fx = rng.uniform(-0.25, 0.25, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        img += rng.uniform(5, 20, size=3) * np.sin(fy * yy + fx * xx + phase)[..., None]
    img += base + rng.normal(0, 8, size=(h, w, 3))
    return img


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    size = rng.uniform(0.08, 0.2) * min(h, w)
    if cls == 1:  # disc
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
    if cls == 2:  # axis-aligned rectangle
        ry, rx = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle pointing up: inside three half-planes
    top, base_y = cy - size, cy + size
    half = size * rng.uniform(0.8, 1.3)
    t = (yy - top) / max(base_y - top, 1e-6)
    return (yy >= top) & (yy <= base_y) & (np.abs(xx - cx) <= t * half)


def render_scene(rng: np.random.Generator, h: int, w: int, p_class: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """One image ``uint8 (h, w, 3)`` and its masks ``uint8 (3, h, w)``."""
    img = _background(rng, h, w)
    masks = np.zeros((3, h, w), np.uint8)
    for cls in (1, 2, 3):
        if rng.random() >= p_class:
            continue
        m = _shape_mask(rng, cls, h, w)
        brightness = rng.uniform(150, 240)
        colour = _TINTS[cls - 1] * brightness
        img[m] = 0.25 * img[m] + 0.75 * colour + rng.normal(0, 6, size=(int(m.sum()), 3))
        masks[cls - 1] = m
    return np.clip(img, 0, 255).astype(np.uint8), masks


def make_demo(
    out_dir: str | Path,
    n_train: int = 64,
    n_test: int = 24,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the demo competition into ``out_dir`` and return it.

    Refuses a non-empty ``out_dir`` unless ``overwrite``.
    """
    out = Path(out_dir)
    if n_train < 1 or n_test < 0:
        raise ConfigError(f"make-demo: expected --n-train >= 1 and --n-test >= 0, got {n_train} and {n_test}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to replace the demo data there")
    rng = np.random.default_rng(seed)
    ids = [f"{x:08x}" for x in rng.choice(2**32, size=n_train + n_test, replace=False)]
    for sub in ("train/images", "test/images"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    train_rows, sample_rows, solution_rows = [], [], []
    for k, image_id in enumerate(ids):
        img, masks = render_scene(rng, height, width)
        split = "train" if k < n_train else "test"
        Image.fromarray(img).save(out / split / "images" / f"{image_id}.png")
        for cls in (1, 2, 3):
            rle = rle_encode(masks[cls - 1], order="F")
            if split == "train":
                train_rows.append(f"{image_id},{cls},{rle}")
            else:
                sample_rows.append(f"{image_id}_{cls},1 1")
                solution_rows.append(f"{image_id}_{cls},{rle}")
    (out / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "\n".join(train_rows) + "\n")
    (out / "sample_submission.csv").write_text("ImageId_ClassId,EncodedPixels\n" + "\n".join(sample_rows) + "\n")
    (out / "test_solution.csv").write_text("ImageId_ClassId,EncodedPixels\n" + "\n".join(solution_rows) + "\n")
    log.info("demo competition written to %s (%d train, %d test, %dx%d)", out, n_train, n_test, height, width)
    return out
