"""The built-in demo competition: synthetic scenes laid out like a Kaggle competition.

Three shape classes (1 disc, 2 rectangle, 3 triangle) on textured, non-square backgrounds;
shapes may overlap (a multilabel task, like Severstal), about one image in six is empty.
Files written, all deterministic from ``seed``::

    train/images/<id>.png       train.csv   ImageId,ClassId,EncodedPixels (one row per image and class)
    test/images/<id>.png        sample_submission.csv   ImageId_ClassId,EncodedPixels ("1 1" placeholders)
    test_solution.csv           the hidden test answers, in the submission's format (for self-checks)

``make_demo(..., overwrite=True)`` replaces only a folder holding nothing but these files (its images folders are
emptied first). ``seg-toolkit demo CONFIG`` makes the data only in a missing or empty ``data.root`` of a config that
reads it as written here (:func:`demo_data_needed`), and replaces only the submission it wrote itself
(:func:`check_demo_submission`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..rle import rle_encode

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

__all__ = ["make_demo", "render_scene", "DEMO_CLASSES", "DEMO_DATA", "demo_layout_problems", "demo_data_needed",
           "check_demo_submission", "record_demo_submission"]

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

    Refuses a non-empty ``out_dir`` unless ``overwrite``, and even then one holding anything else than a demo
    competition's files (:func:`_not_demo`); the old images go first, so none is left beside the new ones.
    """
    out = Path(out_dir)
    if n_train < 1 or n_test < 0:
        raise ConfigError(f"make-demo: expected --n-train >= 1 and --n-test >= 0, got {n_train} and {n_test}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; make-demo writes a folder: name a new or empty one")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace the demo competition there "
                                  "(only a folder that holds one and nothing else)")
        foreign = _not_demo(out)
        if foreign:
            names = ", ".join(str(p.relative_to(out)) for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise FileExistsError(f"{out} is not a demo competition of make-demo: it holds {names}, which make-demo does not "
                                  "write (or not with that header); --overwrite replaces only a demo: name a new or empty folder")
        from ..run_guard import delete_path

        for sub in ("train/images", "test/images"):
            if (out / sub).is_dir():
                delete_path(out / sub)
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


#: make-demo's files at the top of its folder, with their headers; images are <8 hex digits>.png in train/images, test/images
_DEMO_CSVS = {"train.csv": "ImageId,ClassId,EncodedPixels", "sample_submission.csv": "ImageId_ClassId,EncodedPixels",
              "test_solution.csv": "ImageId_ClassId,EncodedPixels"}
_DEMO_IMAGE = re.compile(r"[0-9a-f]{8}\.png")


def _not_demo(out: Path) -> list[Path]:
    """Entries of ``out`` that make-demo does not write (a CSV of its name with another header counts): the user's."""
    from ..run_guard import OS_CLUTTER, first_line
    bad: list[Path] = []
    for p in sorted(out.iterdir()):
        if p.name in OS_CLUTTER:
            continue
        if p.name in _DEMO_CSVS:
            if not (p.is_file() and not p.is_symlink() and first_line(p).rstrip("\r\n") == _DEMO_CSVS[p.name]):
                bad.append(p)
        elif p.name in ("train", "test") and p.is_dir() and not p.is_symlink():
            for q in sorted(p.iterdir()):
                if q.name == "images" and q.is_dir() and not q.is_symlink():
                    bad += [r for r in sorted(q.iterdir()) if r.name not in OS_CLUTTER
                            and not (_DEMO_IMAGE.fullmatch(r.name) and r.is_file() and not r.is_symlink())]
                elif q.name not in OS_CLUTTER:
                    bad.append(q)
        else:
            bad.append(p)
    return bad


#: how a config's data section reads what make_demo writes (data.<key>: value); path keys compare normalised
DEMO_DATA = {"task": "multilabel", "num_classes": 3, "layout": "csv", "train_images": "train/images", "train_csv": "train.csv",
             "id_column": "ImageId", "class_column": "ClassId", "rle_column": "EncodedPixels", "rle_order": "F",
             "rle_index_base": 1, "rle_starts": "absolute", "rle_instances": False, "image_ext": ".png",
             "test_images": "test/images", "sample_submission": "sample_submission.csv", "pair_split": None,
             "classes_csv": None}
_DEMO_PATHS = ("train_images", "train_csv", "test_images", "sample_submission")


def demo_layout_problems(cfg: "Config") -> list[str]:
    """How ``cfg``'s ``data.*`` keys differ from reading the demo competition (:data:`DEMO_DATA`); [] when they do not."""
    out = []
    for key, want in DEMO_DATA.items():
        have = getattr(cfg.data, key)
        same = (os.path.normpath(have) == want) if key in _DEMO_PATHS and isinstance(have, str) else have == want
        if not same:
            out.append(f"data.{key} is {have!r}, the demo's {want!r}")
    if cfg.data.bands.files:
        out.append(f"data.bands.files is {cfg.data.bands.files!r}, the demo's []")
    return out


def demo_data_needed(cfg: "Config") -> bool:
    """``seg-toolkit demo``: whether to make the demo competition in ``data.root`` (missing or an empty folder). A folder
    holding anything is the user's data, used as it is; a missing or empty one is filled only for a config that reads
    the demo's files, else a ConfigError names ``data.root`` and the keys that differ."""
    root = Path(cfg.data.root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data.root {root} is a file; expected the competition folder")
    if root.is_dir() and any(root.iterdir()):
        return False
    problems = demo_layout_problems(cfg)
    if problems:
        raise ConfigError(f"data.root {root} is {'empty' if root.exists() else 'missing'}: put the competition's files there "
                          "(data.train_csv / data.train_images, ...); `seg-toolkit demo` makes its synthetic competition only "
                          f"for a config that reads it as configs/demo.yaml does, and this one differs: {'; '.join(problems[:4])}"
                          + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""))
    return True


def _record_path(cfg: "Config") -> Path:
    """Where ``demo`` records the submission it wrote (path, SHA-256)."""
    from ..run import Run

    return Run.of(cfg).demo_submission_json


def check_demo_submission(cfg: "Config", out: Path, overwrite: bool) -> None:
    """Before ``demo`` makes data or trains: ``out`` is a path predict may write (not the data, a run's file, a folder),
    and an existing file there is replaced only with ``overwrite`` or when it is, unchanged, the one an earlier ``demo``
    of this run wrote (:func:`record_demo_submission`): ``make demo`` twice in a row replaces its own file only."""
    from ..files import read_json, sha256_file
    from ..inference import check_out

    check_out(cfg, out, True)
    if not out.exists() or overwrite:
        return
    try:
        record = read_json(_record_path(cfg)) or {}
    except ConfigError:
        record = {}
    if record.get("submission") == str(out.resolve()) and record.get("sha256") == sha256_file(out):
        return
    raise FileExistsError(f"{out} exists and is not the submission that an earlier `seg-toolkit demo` of {cfg.run_dir} "
                          f"wrote (recorded with its SHA-256 in {_record_path(cfg)}; a file changed since is not it either); "
                          "pass --overwrite to replace it, or write elsewhere with --set submission.path=FILE")


def record_demo_submission(cfg: "Config", out: Path) -> None:
    """Record the submission ``demo`` just wrote (see :func:`check_demo_submission`)."""
    from ..files import sha256_file, write_json

    write_json(_record_path(cfg), {"submission": str(Path(out).resolve()), "sha256": sha256_file(out)})
