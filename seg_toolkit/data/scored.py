"""The size masks are scored, post-processed and submitted at: ``data.score_size`` when set (Understanding Clouds
scores 350x525 masks of 1400x2100 images), else each image's own.

Everything that scores or submits takes its size from :func:`score_hw` and its ground truth from
:func:`scored_target`: the predictor (OOF files, evaluate, predict, the TTA chooser), validation during training,
ensembles, tuning, the report and the submission's checks. Probabilities are resized to that size bilinearly (as to
an image's own size); the ground truth is read at the image's own size and resized by the nearest pixel centre
(:func:`nearest_resize`). Training itself sees the images and masks at their own size, through ``transforms``.
"""

from __future__ import annotations

import numpy as np

from ..config import Config
from .io import DataError, image_size
from .masks import load_target
from .sample import Sample

__all__ = ["nearest_resize", "sample_score_hw", "score_hw", "scored_target"]


def score_hw(cfg: Config, image_hw: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` an image of size ``image_hw`` is scored and submitted at under ``cfg``."""
    size = cfg.data.score_size
    return (int(size[0]), int(size[1])) if size else (int(image_hw[0]), int(image_hw[1]))


def sample_score_hw(sample: Sample, cfg: Config) -> tuple[int, int]:
    """:func:`score_hw` of a sample without decoding it: ``data.score_size``, else its image's size from the header."""
    return score_hw(cfg, cfg.data.score_size or image_size(sample.image, sample.pair, exif=cfg.data.exif_orientation))


def nearest_resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``a`` ``(H, W[, C])`` resized to ``hw`` by the nearest pixel centre: output row ``i`` is input row
    ``floor((i + 0.5) * H / h)`` (exactly, in integers), columns alike: torch's ``nearest-exact``, and PIL's ``NEAREST``
    but where a centre falls on a pixel edge (64 -> 25), which PIL's float arithmetic gives the earlier pixel;
    1400 -> 350 takes rows 2, 6, 10, ... The array itself when it has that size already."""
    (H, W), (h, w) = a.shape[:2], (int(hw[0]), int(hw[1]))
    if (H, W) == (h, w):
        return a
    rows = ((2 * np.arange(h) + 1) * H) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * W) // (2 * w)
    return np.ascontiguousarray(a[rows[:, None], cols[None, :]])


def scored_target(sample: Sample, cfg: Config, hw: tuple[int, int], image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The sample's target as it is scored, at ``hw`` (what :func:`score_hw` gives: the size its OOF file or its
    prediction has). With ``data.score_size`` it is read at the image's own size (``image_hw``, else from the image's
    header) and resized by :func:`nearest_resize`; an ``hw`` other than ``data.score_size`` is refused (OOF files made
    at another size)."""
    size = cfg.data.score_size
    if not size:
        return load_target(sample, cfg, hw)
    if tuple(int(x) for x in hw) != tuple(size):
        raise DataError(f"id {sample.id!r}: predicted at {hw[0]}x{hw[1]}, but data.score_size is {list(size)}: these "
                        "probabilities were made at another size; remake the OOF files (`seg-toolkit oof CONFIG`)")
    if image_hw is None:
        image_hw = image_size(sample.image, sample.pair, exif=cfg.data.exif_orientation)
    return nearest_resize(load_target(sample, cfg, image_hw), size)
