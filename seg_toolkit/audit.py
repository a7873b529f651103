"""``seg-toolkit audit CONFIG``: what the training data holds, and everything wrong with it.

:func:`audit` reads every training sample the config names, in either layout and for all
three tasks, and collects (never raises) each problem with the file or CSV line and what
was expected: missing, empty, unreadable or truncated images, masks of the wrong size or
with values outside the classes, malformed RLE rows, bad ids, duplicate rows, masks
without an image and images without a row. The messages are the data layer's own
(:class:`seg_toolkit.data.DataError`), so they read exactly as training would report them,
except that training stops at the first one.

It also counts, over the samples that could be read: class pixel frequencies (void apart),
images containing each class, empty masks (binary / multilabel: per class and images empty
in every class), image sizes and PIL modes, and for mask files the raw values found.

:func:`format_audit` renders a text report, :func:`write_audit` writes ``audit.html``
(self-contained), ``audit_problems.csv`` (every problem, one per row) and two pictures, each
drawn once (the PNG beside the page is the picture in it), so that a wrong channel, colour
table or label remap is seen before training on it:

* ``audit_samples.png``: a seeded sample of images spread over the dataset (one per equal
  slice of the listing order), each as the model reads it (``data.in_channels``) beside the
  same image with its decoded mask painted in the class colours (the report's overlay painting);
* ``audit_batch.png``: the first augmented training batch of epoch 0 (``SegDataset`` in
  ``train`` mode, the training sampler's order and seeds over all samples read), images
  after ``transforms.train`` and the resize, de-normalised, with the masks that went with them.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .config import IGNORE_INDEX, Config, ConfigError
from .data import DataError, EpochSampler, Sample, SegDataset, class_colors, class_names, load_target, read_image
from .data.io import IMAGE_EXTS, image_size
from .data.masks import mask_ids
from .data.sources import check_id, iter_list_samples, read_csv_strict
from .rle import RLEError, rle_area, rle_to_runs

log = logging.getLogger(__name__)

__all__ = ["Problem", "AuditResult", "audit", "format_audit", "write_audit"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: its kind, where (file or CSV line) and the full message."""

    kind: str
    where: str
    message: str


@dataclass
class AuditResult:
    """Counts over the readable samples, and every problem found."""

    root: str
    task: str
    layout: str
    class_names: list[str]
    n_listed: int = 0  # samples the config names (rows / image files / list lines that could be parsed)
    n_read: int = 0  # samples whose image and target were read without a problem (the counts below)
    class_pixels: list[int] = field(default_factory=list)  # per class (binary / multilabel: per channel)
    valid_pixels: list[int] = field(default_factory=list)  # non-void pixels per class: the frequencies' denominator
    void_pixels: int = 0  # multiclass: void pixels; binary / multilabel: (pixel, channel) pairs that are void
    total_pixels: int = 0  # pixels of the read images
    images_with_class: list[int] = field(default_factory=list)
    all_empty_images: Optional[int] = None  # binary / multilabel: images without foreground in any class
    overlap_pixels: Optional[int] = None  # multilabel: pixels in more than one class
    image_sizes: Counter = field(default_factory=Counter)  # (height, width) -> images
    image_modes: Counter = field(default_factory=Counter)  # PIL mode -> images
    mask_values: Counter = field(default_factory=Counter)  # mask files: raw value -> pixels
    problems: list[Problem] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list, repr=False)  # the samples read without a problem, listed order

    def add(self, kind: str, where: str, message: str) -> None:
        self.problems.append(Problem(kind, str(where), message))

    @property
    def class_frequency(self) -> list[float]:
        """Class pixels / non-void pixels, per class (NaN without pixels)."""
        return [p / v if v else float("nan") for p, v in zip(self.class_pixels, self.valid_pixels)]

    @property
    def empty_images(self) -> list[int]:
        """Images (read) without the class."""
        return [self.n_read - n for n in self.images_with_class]

    def problem_counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)


# ----------------------------------------------------------------------------- problem kinds


_KINDS = (  # (substring of a data-layer message, kind), first match wins
    ("(0 bytes)", "empty_file"),
    ("truncated or corrupt", "corrupt_image"),
    ("too large", "image_too_large"),
    ("max_image_pixels", "image_too_large"),
    ("not a readable image", "unreadable_file"),
    ("must have the same size", "size_mismatch"),
    ("outside the classes", "mask_values"),
    ("label map", "mask_format"),
    ("(lossy", "mask_format"),
    ("expected (height, width)", "mask_format"),
    ("RLE", "malformed_rle"),
    ("not found", "missing_file"),
)


def _kind(message: str, default: str) -> str:
    for needle, kind in _KINDS:
        if needle in message:
            return kind
    return default


# ----------------------------------------------------------------------------- listing samples, tolerantly


@dataclass
class _Listed:
    sample: Sample
    bad_target: bool = False  # a row of its target was already found malformed: the target is not read


def _image_path(folder: Path, image_id: str, ext: str) -> Path:
    """The image file of ``image_id`` (the rule of :mod:`seg_toolkit.data.sources`: ids may carry the extension)."""
    if Path(image_id).suffix.lower() in IMAGE_EXTS:
        return folder / image_id
    return folder / f"{image_id}{ext}"


def _csv_listed(cfg: Config, res: AuditResult) -> list[_Listed]:
    """Samples of the csv layout, one problem per bad row instead of stopping at the first."""
    d = cfg.data
    path = cfg.data_path(d.train_csv)
    cols = [d.id_column, d.rle_column] + ([d.class_column] if d.class_column else [])
    try:
        df = read_csv_strict(path, cols, "training CSV (data.train_csv)")
    except DataError as e:
        res.add(_kind(str(e), "csv"), path, str(e))
        return []
    if d.class_column is None and d.task != "binary":
        res.add("config", "data.class_column",
                f"data.class_column: a {d.task} task read from a CSV needs a class column (one row per image and class)")
        return []
    images = cfg.data_path(d.train_images)
    n_cls = 1 if d.class_column is None else (d.num_classes if d.task == "multilabel" else d.num_classes - 1)
    rles: dict[str, list[str]] = {}
    bad: set[str] = set()
    first: dict[str, int] = {}
    classes = df[d.class_column].tolist() if d.class_column else [None] * len(df)
    for k, (image_id, rle, cls) in enumerate(zip(df[d.id_column].tolist(), df[d.rle_column].tolist(), classes)):
        line = k + 2  # the header is line 1
        where = f"{path} line {line}"
        try:
            check_id(image_id, f"{where} (id {image_id!r})")
        except DataError as e:
            res.add("bad_id", where, str(e))
            continue
        try:
            rle_to_runs(rle, np.iinfo(np.int64).max, f"{where} (id {image_id!r})")
        except RLEError as e:
            res.add("malformed_rle", where, str(e))
            bad.add(image_id)
            rle = ""
        if cls is None:
            if image_id in rles:
                res.add("duplicate_row", where, f"{where}: duplicate id {image_id!r} (first at line {first[image_id] + 2}); "
                        "expected one row per image")
                continue
            first[image_id] = k
            rles[image_id] = [rle]
            continue
        try:
            c = int(cls)
        except ValueError:
            res.add("bad_class", where, f"{where}: class {cls!r} in column {d.class_column!r} is not an integer")
            continue
        if not 1 <= c <= n_cls:
            res.add("bad_class", where,
                    f"{where}: class {c} is outside 1..{n_cls} (data.num_classes={d.num_classes}, task {d.task})")
            continue
        slots = rles.setdefault(image_id, [""] * n_cls)
        first.setdefault(image_id, k)
        if slots[c - 1] and rle:
            res.add("duplicate_row", where, f"{where}: second non-empty row for image {image_id!r} class {c}")
            bad.add(image_id)
            continue
        slots[c - 1] = slots[c - 1] or rle
    listed = [
        _Listed(Sample(i, _image_path(images, i, d.image_ext), rles=tuple(r), where=f"{path} line {first[i] + 2}"),
                bad_target=i in bad)
        for i, r in rles.items()
    ]
    if images.is_dir():  # images the CSV does not name are silently unused by training
        named = {s.sample.image.name for s in listed}
        for p in sorted(images.iterdir()):
            if p.suffix.lower() == d.image_ext.lower() and p.name not in named:
                res.add("unlisted_image", p, f"{p}: image has no row in {path}; training does not use it "
                        "(if such images have empty masks, add rows with an empty mask)")
    return listed


def _folder_listed(cfg: Config, res: AuditResult) -> list[_Listed]:
    d = cfg.data
    images = cfg.data_path(d.train_images)
    masks = cfg.data_path(d.train_masks)
    if not images.is_dir():
        res.add("missing_file", images, f"{images}: image folder (data.train_images) not found")
        return []
    files = sorted(p for p in images.iterdir() if p.suffix.lower() == d.image_ext.lower())
    if not files:
        res.add("missing_file", images, f"{images}: no *{d.image_ext} images (data.image_ext)")
        return []
    out = []
    for p in files:
        mask = masks / f"{p.stem}{d.mask_ext}"
        if not mask.is_file():
            res.add("missing_mask", mask, f"{mask}: mask for image {p.name} not found (data.train_masks)")
            continue
        out.append(_Listed(Sample(p.stem, p, mask=mask, where=str(p))))
    if masks.is_dir():
        stems = {p.stem for p in files}
        for m in sorted(masks.iterdir()):
            if m.suffix.lower() == d.mask_ext.lower() and m.stem not in stems:
                res.add("orphan_mask", m, f"{m}: mask without an image ({images / (m.stem + d.image_ext)} not found)")
    return out


def _list_file_listed(cfg: Config, res: AuditResult) -> list[_Listed]:
    return [_Listed(s) for s in iter_list_samples(cfg, cfg.data.train_lists, res.add)]


def _listed_samples(cfg: Config, res: AuditResult) -> list[_Listed]:
    if cfg.data.layout == "csv":
        return _csv_listed(cfg, res)
    if cfg.data.train_lists:
        return _list_file_listed(cfg, res)
    return _folder_listed(cfg, res)


# ----------------------------------------------------------------------------- the pass over samples


def _check_image(s: Sample, cfg: Config, res: AuditResult, decode: bool) -> Optional[tuple[int, int]]:
    """The image's (height, width), its mode counted; None (and a problem) when it cannot be read."""
    try:
        if decode:
            hw = read_image(s.image, cfg.data.in_channels, cfg.data.max_image_pixels, pair=s.pair).shape[:2]
        else:
            if s.image.is_file() and s.image.stat().st_size == 0:
                raise DataError(f"{s.image}: file is empty (0 bytes)")
            hw = image_size(s.image, pair=s.pair)
    except DataError as e:
        res.add(_kind(str(e), "image"), s.image, str(e))
        return None
    try:
        with Image.open(s.image) as im:
            res.image_modes[im.mode] += 1
    except Exception:  # read above, so this does not happen; the mode is only informative
        res.image_modes["?"] += 1
    res.image_sizes[(int(hw[0]), int(hw[1]))] += 1
    return int(hw[0]), int(hw[1])


def _check_mask_values(s: Sample, cfg: Config, res: AuditResult) -> bool:
    """Decode a mask file the way training reads it (channel, colours, remap, threshold: the config's
    declared steps) and count its class ids (void as data.ignore_index); False (one problem) if it cannot."""
    assert s.mask is not None
    try:
        ids = mask_ids(s, cfg)
    except DataError as e:
        res.add(_kind(str(e), "mask"), s.mask, str(e))
        return False
    void = cfg.data.ignore_index if cfg.data.ignore_index is not None else -1  # shown as the file's void id
    values, counts = np.unique(ids, return_counts=True)
    for v, n in zip(values.tolist(), counts.tolist()):
        res.mask_values[void if v == -1 else int(v)] += int(n)
    return True


def _count_target(target: np.ndarray, cfg: Config, res: AuditResult) -> None:
    d = cfg.data
    res.total_pixels += int(target.shape[0] * target.shape[1])
    if d.task == "multiclass":
        counts = np.bincount(target.ravel(), minlength=256)
        valid = int(counts.sum() - counts[IGNORE_INDEX])
        for c in range(d.num_classes):
            res.class_pixels[c] += int(counts[c])
            res.valid_pixels[c] += valid
            res.images_with_class[c] += int(counts[c] > 0)
        res.void_pixels += int(counts[IGNORE_INDEX])
        return
    fg = target == 1
    void = target == IGNORE_INDEX
    per_class = fg.sum((0, 1))
    n_void = void.sum((0, 1))
    hw = target.shape[0] * target.shape[1]
    for c in range(d.num_classes):
        res.class_pixels[c] += int(per_class[c])
        res.valid_pixels[c] += int(hw - n_void[c])
        res.images_with_class[c] += int(per_class[c] > 0)
    res.void_pixels += int(n_void.sum())
    res.all_empty_images = (res.all_empty_images or 0) + int(per_class.sum() == 0)
    if d.task == "multilabel":
        res.overlap_pixels = (res.overlap_pixels or 0) + int((fg.sum(-1) > 1).sum())


def _check_overlap(s: Sample, target: np.ndarray, cfg: Config, res: AuditResult) -> None:
    """Multiclass from per-class RLE rows: pixels claimed by two classes keep only the highest one."""
    if cfg.data.task != "multiclass" or s.rles is None or len(s.rles) < 2:
        return
    claimed = sum(rle_area(r) for r in s.rles)
    overlap = claimed - int((target != 0).sum())
    if overlap > 0:
        res.add("class_overlap", s.where,
                f"{s.where} (id {s.id!r}): the RLE rows of different classes overlap on {overlap} pixel(s); a multiclass "
                "label map keeps the highest class there (data.task multilabel would keep every class)")


def audit(cfg: Config, decode_images: bool = True) -> AuditResult:
    """Audit the training data ``cfg`` names (see the module doc); problems are collected, not raised.

    ``decode_images``: decode every image fully (finds truncated files); ``False`` reads only
    headers, which is faster but only finds missing, empty and unreadable files. Targets are
    always decoded, since their pixels are counted.
    """
    d = cfg.data
    n = d.num_classes
    res = AuditResult(root=str(d.root), task=d.task, layout=d.layout, class_names=class_names(cfg),
                      class_pixels=[0] * n, valid_pixels=[0] * n, images_with_class=[0] * n)
    if d.task != "multiclass":
        res.all_empty_images = 0
    if d.task == "multilabel":
        res.overlap_pixels = 0
    if d.layout == "folder" and d.task == "multilabel":
        res.add("config", "data.task", "data.task: multilabel masks need the csv layout with data.class_column")
        return res
    listed = _listed_samples(cfg, res)
    res.n_listed = len(listed)
    for item in tqdm(listed, desc="audit", unit="image", leave=False, disable=None):
        s = item.sample
        hw = _check_image(s, cfg, res, decode_images)
        if hw is None or item.bad_target:
            continue
        if s.mask is not None and not _check_mask_values(s, cfg, res):
            continue
        try:
            target = load_target(s, cfg, hw)
        except (DataError, ConfigError) as e:
            res.add(_kind(str(e), "mask"), s.mask if s.mask is not None else s.where, str(e))
            continue
        _count_target(target, cfg, res)
        _check_overlap(s, target, cfg, res)
        res.n_read += 1
        res.samples.append(s)
    log.info("audit of %s: %d samples, %d read, %d problem(s)", d.root, res.n_listed, res.n_read, len(res.problems))
    return res


# ----------------------------------------------------------------------------- text


def _pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.2f}%" if den else "-"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _class_rows(res: AuditResult) -> list[list[str]]:
    rows = []
    for c, name in enumerate(res.class_names):
        row = [name, f"{res.class_pixels[c]:,}", _pct(res.class_pixels[c], res.valid_pixels[c]),
               f"{res.images_with_class[c]} ({_pct(res.images_with_class[c], res.n_read)})"]
        if res.task != "multiclass":
            row.append(f"{res.empty_images[c]} ({_pct(res.empty_images[c], res.n_read)})")
        rows.append(row)
    return rows


def _class_header(res: AuditResult) -> list[str]:
    header = ["class", "pixels", "share of non-void", "images with class"]
    return header + (["empty images"] if res.task != "multiclass" else [])


def _sizes(res: AuditResult) -> list[tuple[str, int]]:
    return [(f"{h}x{w}", n) for (h, w), n in res.image_sizes.most_common()]


def format_audit(result: AuditResult, max_per_kind: int = 20) -> str:
    """A plain-text report of ``result``: counts, then the problems grouped by kind (``max_per_kind`` shown each)."""
    r = result
    out = [f"Audit of {r.root} ({r.task}, {r.layout} layout): {r.n_listed} sample(s) listed, "
           f"{r.n_read} read without a problem, {len(r.problems)} problem(s)", ""]
    out.append("Class pixels (of the samples read; frequencies exclude void):")
    out += ["  " + x for x in _text_table(_class_header(r), _class_rows(r))]
    void_what = "pixels" if r.task == "multiclass" else "(pixel, class) pairs"
    out.append(f"  void: {r.void_pixels:,} {void_what}"
               + (f" ({_pct(r.void_pixels, r.total_pixels)} of all pixels)" if r.task == "multiclass" else ""))
    if r.all_empty_images is not None:
        out.append(f"  images empty in every class: {r.all_empty_images} of {r.n_read} ({_pct(r.all_empty_images, r.n_read)})")
    if r.overlap_pixels is not None:
        out.append(f"  pixels in more than one class: {r.overlap_pixels:,}")
    out.append("")
    sizes = _sizes(r)
    out.append(f"Image sizes (HxW), {len(sizes)} distinct: " + (", ".join(f"{s}: {n}" for s, n in sizes[:12]) or "-")
               + (f", ... ({len(sizes) - 12} more)" if len(sizes) > 12 else ""))
    out.append("Image modes: " + (", ".join(f"{m}: {n}" for m, n in r.image_modes.most_common()) or "-"))
    if r.mask_values:
        vals = sorted(r.mask_values.items())
        out.append(f"Mask file values ({len(vals)} distinct, pixels): " + ", ".join(f"{v}: {n:,}" for v, n in vals[:20])
                   + (" ..." if len(vals) > 20 else ""))
    out.append("")
    if not r.problems:
        out.append("No problems found.")
        return "\n".join(out)
    counts = r.problem_counts()
    out.append(f"Problems ({len(r.problems)}): " + ", ".join(f"{k} {n}" for k, n in counts.most_common()))
    for kind, n in counts.most_common():
        out.append(f"  [{kind}]")
        shown = [p for p in r.problems if p.kind == kind][:max_per_kind]
        out += [f"    {p.message}" for p in shown]
        if n > len(shown):
            out.append(f"    ... and {n - len(shown)} more (all in audit_problems.csv)")
    return "\n".join(out)


# ----------------------------------------------------------------------------- pictures

N_EXAMPLES = 8  # images in audit_samples.png
MAX_BATCH = 8  # at most this many items of the training batch in audit_batch.png
THUMB_MIN_HEIGHT, THUMB_MAX_SIDE = 160, 288  # panel size: small images upscaled by an integer factor, large ones shrunk
FIG_WIDTH = 1240  # pixels: the page's width, so the picture shows at its own size (two tiles a row up to 288-pixel panels)


def spread_pick(n: int, k: int, seed: int) -> list[int]:
    """``k`` indices of ``0..n-1`` spread over the range: one at random (seeded) in each of ``k`` equal slices."""
    if n <= k:
        return list(range(n))
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [int(rng.integers(a, b)) for a, b in zip(edges[:-1], edges[1:])]


def _thumb_size(h: int, w: int) -> tuple[int, int]:
    s = float(-(-THUMB_MIN_HEIGHT // h)) if h < THUMB_MIN_HEIGHT else 1.0
    s = min(s, THUMB_MAX_SIDE / h, THUMB_MAX_SIDE / w) if max(h, w) * s > THUMB_MAX_SIDE else s
    return max(1, round(h * s)), max(1, round(w * s))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 1|3|4)`` uint8 as RGB for display: grey repeated, alpha dropped."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def _class_masks(target: np.ndarray, task: str, painted: list[bool]) -> tuple[list[Optional[np.ndarray]], np.ndarray]:
    """Boolean masks per class (None: not drawn) and the void mask of a target in the toolkit's convention
    (multiclass ``(H, W)`` label map; binary / multilabel ``(H, W, C)`` 0/1), void = 255."""
    if task == "multiclass":
        return [target == c if painted[c] else None for c in range(len(painted))], target == IGNORE_INDEX
    return [target[..., c] == 1 for c in range(target.shape[-1])], (target == IGNORE_INDEX).any(-1)


def overlay_panels(image: np.ndarray, target: np.ndarray, cfg: Config, colors: np.ndarray,
                   painted: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """``(image, image with its mask painted)`` at thumbnail size, RGB uint8: classes blended in their colours
    and outlined, void grey (:func:`seg_toolkit.report.overlays._paint`, the report's painting)."""
    from .report.overlays import _paint, _resize

    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    size = _thumb_size(h, w)
    shown = _resize(rgb, size, nearest=size[0] >= h)
    masks, void = _class_masks(target, cfg.data.task, painted)
    fit = lambda m: None if m is None else _resize(m, size, nearest=True)  # noqa: E731
    return shown, _paint(shown, [fit(m) for m in masks], colors, fit(void))


def _sample_tiles(cfg: Config, samples: list[Sample], colors: np.ndarray, painted: list[bool]) -> list[tuple[str, tuple]]:
    tiles = []
    for s in samples:
        try:
            image = read_image(s.image, cfg.data.in_channels, cfg.data.max_image_pixels, pair=s.pair)
            target = load_target(s, cfg, image.shape[:2])
        except (DataError, ConfigError) as e:  # a header-only audit did not decode it
            log.warning("audit picture: %s", e)
            continue
        h, w = image.shape[:2]
        tiles.append((f"{s.id}  ({h}x{w})", overlay_panels(image, target, cfg, colors, painted)))
    return tiles


def _batch_tiles(cfg: Config, samples: list[Sample], colors: np.ndarray, painted: list[bool]) -> list[tuple[str, tuple]]:
    """The first training batch of epoch 0 (sampler order and augmentation seeds as training has them)."""
    from .data.dataset import _normalize

    ds = SegDataset(samples, cfg, "train")
    norm = _normalize(cfg)
    mean, std = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
    keys = list(EpochSampler(len(samples), shuffle=True, seed=cfg.train.seed))[: min(cfg.train.batch_size, MAX_BATCH)]
    tiles = []
    for key in keys:
        item = ds[key]
        x = item["image"].numpy().transpose(1, 2, 0)
        image = np.clip((x * std + mean) * float(norm.max_pixel_value) + 0.5, 0, 255).astype(np.uint8)
        t = item["target"].numpy()
        target = t.astype(np.uint8) if cfg.data.task == "multiclass" else t.transpose(1, 2, 0).astype(np.uint8)
        h, w = image.shape[:2]
        tiles.append((f"{item['id']}  ({h}x{w}, seed {key[1]})", overlay_panels(image, target, cfg, colors, painted)))
    return tiles


def _tiles_figure(tiles: list[tuple[str, tuple]], title: str, names: list[str], colors: np.ndarray,
                  painted: list[bool], task: str, void: bool) -> Any:
    """Tiles of (image | overlay) pairs, as many per row as fit :data:`FIG_WIDTH`; a legend on top. Each panel is
    placed at its own pixel size (no resampling: the painted colours are the file's pixels)."""
    from matplotlib.patches import Patch

    from .plots import new_figure

    handles = [Patch(facecolor=np.asarray(colors[c]) / 255, edgecolor="black", label=n) for c, n in enumerate(names) if painted[c]]
    if task == "multiclass" and not all(painted):
        handles.append(Patch(facecolor="none", edgecolor="black", label=f"{names[0]} (not drawn)"))
    if void:
        from .report.overlays import VOID_COLOR

        handles.append(Patch(facecolor=np.asarray(VOID_COLOR) / 255, edgecolor="black", label="void (not scored)"))
    ncol = max(1, min(len(handles), 8))
    dpi, gap, head = 100, 12, 22
    top = 44 + 20 * -(-len(handles) // ncol)  # the title, then the legend's rows
    pw = max(t[1][0].shape[1] for t in tiles)
    tile_w = 2 * pw + gap
    per_row = max(1, min(len(tiles), (FIG_WIDTH - gap) // (tile_w + 2 * gap)))
    row_h = [max(t[1][0].shape[0] for t in tiles[i : i + per_row]) + head + gap for i in range(0, len(tiles), per_row)]
    row_top = np.concatenate([[0], np.cumsum(row_h)])  # pixels below the legend
    content = per_row * (tile_w + 2 * gap) - gap
    W = max(FIG_WIDTH, content + 2 * gap)
    left = (W - content) // 2
    H = top + int(row_top[-1])
    fig = new_figure(W / dpi, H / dpi, dpi)
    for i, (label, panels) in enumerate(tiles):
        r, c = divmod(i, per_row)
        x0, y0 = left + c * (tile_w + 2 * gap), H - top - int(row_top[r])  # top-left corner, pixels from the bottom
        fig.text(x0 / W, (y0 - 10) / H, f"#{i + 1}  {label}", ha="left", va="center", fontsize=9)
        for j, img in enumerate(panels):
            h, w = img.shape[:2]
            ax = fig.add_axes(((x0 + j * (w + gap)) / W, (y0 - head - h) / H, w / W, h / H))
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
    fig.text(0.5, 1 - 14 / H, title, ha="center", va="center", fontsize=11, fontweight="bold")
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 24 / H), ncol=ncol,
               fontsize=9, frameon=False, handlelength=1.2, columnspacing=1.2, borderaxespad=0, borderpad=0.2)
    return fig


def _pictures(cfg: Config, res: AuditResult, out_dir: Path) -> str:
    """Draw both pictures once, write their PNGs into ``out_dir`` and return the page's sections for them."""
    from .plots import write_figure
    from .report.html import esc, note, png_tag, section
    from .report.overlays import FILL_ALPHA, _painted_classes
    from .run import Run

    run = Run(out_dir)
    if not res.samples:
        return section("Samples with their masks", note("No sample could be read, so there is nothing to show."))
    names, colors = class_names(cfg), class_colors(cfg)
    painted = _painted_classes(cfg, names, colors)
    void = res.void_pixels > 0
    seed = cfg.train.seed
    picks = [res.samples[i] for i in spread_pick(len(res.samples), N_EXAMPLES, seed)]
    tiles = _sample_tiles(cfg, picks, colors, painted)
    out = []
    if tiles:
        fig = _tiles_figure(tiles, f"{len(tiles)} of {len(res.samples)} images (one per equal slice of the listing, seed {seed}): "
                            "image as read | decoded mask in the class colours", names, colors, painted, cfg.data.task, void)
        png = write_figure(fig, run.audit_samples_png)
        out.append(section("Samples with their masks", png_tag(png, "samples with their masks") + note(
            f"Each image as the model reads it (data.in_channels {cfg.data.in_channels}) beside the same image with its "
            f"decoded mask: classes filled at {round(100 * FILL_ALPHA)}% and outlined in their colour, void grey. The same picture is "
            f"{esc(run.audit_samples_png.name)} beside this page.")))
    try:
        batch = _batch_tiles(cfg, res.samples, colors, painted)
    except Exception as e:  # the pictures must not hide the audit; training would stop at the same error
        log.warning("audit: the augmented batch could not be drawn: %s", e)
        out.append(section("One augmented training batch",
                           f"<div class='warn'>{esc(f'could not be drawn: {type(e).__name__}: {e}')}</div>"))
        return "\n".join(out)
    aug = ", ".join(next(iter(a)) if isinstance(a, dict) else str(a) for a in cfg.transforms.train) or "none"
    fig = _tiles_figure(batch, f"first training batch of epoch 0 (sampler seed {seed}), after augmentation and resize: "
                        "image | mask", names, colors, painted, cfg.data.task, void)
    png = write_figure(fig, run.audit_batch_png)
    out.append(section("One augmented training batch", png_tag(png, "one augmented training batch") + note(
        f"The first {len(batch)} items of epoch 0 in the training sampler's order over all {len(res.samples)} samples read "
        f"(train.seed {seed}; training draws from one fold's share), after transforms.train ({esc(aug)}) and "
        f"transforms.resize ({esc(cfg.transforms.resize or 'native')}), de-normalised with transforms.mean/std, with the "
        f"mask each was given; tile titles carry the augmentation seed. The same picture is {esc(run.audit_batch_png.name)}.")))
    return "\n".join(out)


# ----------------------------------------------------------------------------- html


def _audit_html(r: AuditResult, colors: np.ndarray, max_problems: int = 5000, pictures: str = "") -> str:
    from .report.html import esc, note, page, section, table

    freqs = r.class_frequency
    top = max([f for f in freqs if f == f] or [0.0]) or 1.0
    rows = []
    for c, row in enumerate(_class_rows(r)):
        f = freqs[c]
        width = 0 if f != f else max(1, round(260 * f / top))
        rgb = tuple(int(v) for v in colors[c])
        bar = f"<span class='bar' style='width:{width}px;background:rgb{rgb}'></span> {_pct(r.class_pixels[c], r.valid_pixels[c])}"
        rows.append([esc(row[0]), row[1], bar] + row[3:])
    status = ("<span class='ok'>no problems found</span>" if not r.problems
              else f"<span class='bad'>{len(r.problems)} problem(s)</span>")
    images = [table(["size (HxW)", "images"], [[s, str(n)] for s, n in _sizes(r)]),
              table(["mode", "images"], [[esc(m), str(n)] for m, n in r.image_modes.most_common()])]
    if r.mask_values:
        images.append(table(["mask file value", "pixels"], [[str(v), f"{n:,}"] for v, n in sorted(r.mask_values.items())]))
    if r.problems:
        shown = r.problems[:max_problems]
        problems = (table(["kind", "count"], [[esc(k), str(n)] for k, n in r.problem_counts().most_common()])
                    + table(["kind", "where", "message"], [[esc(p.kind), esc(p.where), esc(p.message)] for p in shown],
                            left=2, cls=["l", "l", "msg"]))
        if len(r.problems) > len(shown):
            problems += note(f"{len(r.problems) - len(shown)} more in audit_problems.csv")
    else:
        problems = "<p class='ok'>No problems found.</p>"
    classes = table(_class_header(r), rows, cls=["l", "", "l"]) + note(
        "Over the samples read without a problem. Share = class pixels / non-void pixels (bars relative to the largest "
        "class). " + esc(f"Void: {r.void_pixels:,} " + ("pixels" if r.task == "multiclass" else "(pixel, class) pairs") + ".")
        + (esc(f" Images empty in every class: {r.all_empty_images} of {r.n_read} ({_pct(r.all_empty_images, r.n_read)}).")
           if r.all_empty_images is not None else "")
        + (esc(f" Pixels in more than one class: {r.overlap_pixels:,}.") if r.overlap_pixels is not None else ""))
    body = "\n".join([
        f"<p>{esc(r.task)} task, {esc(r.layout)} layout: {r.n_listed} sample(s) listed, {r.n_read} read without a "
        f"problem; {status}.</p>",
        section("Classes", classes), pictures, section("Images", "".join(images)), section("Problems", problems),
    ])
    return page(f"Data audit: {r.root}", body)


def write_audit(cfg: Config, out_dir: Path, result: Optional[AuditResult] = None) -> Path:
    """Audit (unless ``result`` is given) and write ``audit.html``, ``audit_problems.csv``, ``audit_samples.png``
    and ``audit_batch.png`` into ``out_dir`` (see the module doc).

    Returns the path of ``audit.html``.
    """
    from .run import write_text

    from .run import Run

    res = result if result is not None else audit(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = _pictures(cfg, res, out_dir)
    page = write_text(Run(out_dir).audit_html, _audit_html(res, class_colors(cfg), pictures=pictures))
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["kind", "where", "message"])
    w.writerows([p.kind, p.where, p.message] for p in res.problems)
    write_text(out_dir / "audit_problems.csv", buf.getvalue())
    log.info("audit written to %s", page)
    return page
