"""``seg-toolkit audit CONFIG``: what the training data holds, and everything wrong with it.

:func:`audit` reads every training sample the config names, in every layout training reads
(the samples come from the same lister, :func:`seg_toolkit.data.sources.list_train_samples`:
RLE rows in any style, mask files, list files, image|label files, object folders, one file per
class) and for all three tasks, and collects (never raises) each problem with the file or CSV
line and what was expected: missing, empty, unreadable or truncated images, masks of the wrong size or
with values outside the classes, malformed RLE rows, bad ids, duplicate rows, masks
without an image and images without a row, and binary mask files that mark foreground with
different values (0/1 in most, 0/2 in one: each read as foreground, but often a label of
another kind). The messages are the data layer's own
(:class:`seg_toolkit.data.DataError`), so they read exactly as training would report them,
except that training stops at the first one.

It also counts, over the samples that could be read: class pixel frequencies (void apart),
images containing each class, empty masks (binary / multilabel: per class and images empty
in every class), and for mask files the raw values found; and over every image that could be
opened, its mask read or not: image sizes and PIL modes (so they can add up to more than the
samples read).

:mod:`seg_toolkit.audit_report` renders it: :func:`~seg_toolkit.audit_report.format_audit` as text,
:func:`~seg_toolkit.audit_report.write_audit` as ``audit.html``
(self-contained), ``audit_problems.csv`` (every problem, one per row) and two pictures
(:mod:`seg_toolkit.audit_pictures`), each drawn once (the PNG beside the page is the picture in it), so that a wrong channel, colour
table or label remap is seen before training on it:

* ``audit_samples.png``: a seeded sample of images spread over the dataset (one per equal
  slice of the listing order), each as the model reads it (``data.in_channels``) beside the
  same image with its decoded mask painted in the class colours (the report's overlay painting);
* ``audit_batch.png``: the first augmented training batch of epoch 0 (``SegDataset`` in
  ``train`` mode, the training sampler's order and seeds over all samples read), images
  after ``transforms.train`` and the resize, de-normalised, with the masks that went with them.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .config import IGNORE_INDEX, Config, ConfigError
from .data import DataError, Sample, class_names, load_objects, load_target
from .data.io import WIDE_MODES, image_size, is_array_image, narrow_sixteen_bit, sixteen_bit, wide_values
from .data.masks import mask_ids
from .data.bands import band_image_files, bands_of
from .data.image_file import color16, open_header
from .data.sample import read_config_image
from .data.sources import list_train_samples
from .instance_metrics import touching

log = logging.getLogger(__name__)

__all__ = ["Problem", "AuditResult", "audit"]


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
    present_pixels: list[int] = field(default_factory=list)  # non-void pixels of the images that hold the class
    all_empty_images: Optional[int] = None  # binary / multilabel: images without foreground in any class
    overlap_pixels: Optional[int] = None  # multilabel: pixels in more than one class
    image_sizes: Counter = field(default_factory=Counter)  # (height, width) -> images
    image_modes: Counter = field(default_factory=Counter)  # PIL mode -> images
    mask_values: Counter = field(default_factory=Counter)  # class id as training reads it (void: data.ignore_index, else -1) -> pixels
    wide_values: dict[str, list[float]] = field(default_factory=dict)  # images over 8 bits: PIL mode -> [min, max]
    # binary mask files read as "> 0": the one foreground value of a file -> the files using it
    foreground_files: dict[int, list[str]] = field(default_factory=dict, repr=False)
    # binary mask files whose foreground is lost: every non-zero pixel void (data.ignore_index), or every non-zero
    # value below data.mask_threshold (file -> its largest value)
    void_only_files: list[str] = field(default_factory=list, repr=False)
    faint_files: dict[str, int] = field(default_factory=dict, repr=False)
    foreground_masks: int = field(default=0, repr=False)  # binary mask files with foreground as training reads them
    void_beside_foreground: int = field(default=0, repr=False)  # of those, files with void pixels too (a void label)
    # object data (data.instance_folders, or data.rle_instances on a binary task): objects per image, each object's
    # pixels, and the objects 8-adjacent to another (merged by a mask unless kept apart)
    objects_per_image: list[int] = field(default_factory=list, repr=False)
    object_areas: list[int] = field(default_factory=list, repr=False)
    touching_objects: Optional[int] = None
    problems: list[Problem] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list, repr=False)  # the samples read without a problem, listed order

    def add(self, kind: str, where: str, message: str) -> None:
        self.problems.append(Problem(kind, str(where), message))

    @property
    def class_frequency(self) -> list[float]:
        """Class pixels / non-void pixels, per class (NaN without pixels)."""
        return [p / v if v else float("nan") for p, v in zip(self.class_pixels, self.valid_pixels)]

    def median_frequency_weights(self, power: float = 1.0) -> list[float]:
        """Median frequency balancing (Eigen & Fergus, 2015), for ``loss_params.ce.class_weights``:
        ``freq_c`` = class pixels / non-void pixels of the images that hold the class, weight
        ``(median(freq) / freq_c) ** power`` (``power`` 0.5: the milder square root). A class
        never seen gets weight 0 (nothing to learn from)."""
        freq = [p / v if p and v else float("nan") for p, v in zip(self.class_pixels, self.present_pixels)]
        seen = [f for f in freq if f == f]
        if not seen:
            return [0.0] * len(freq)
        median = statistics.median(seen)
        return [0.0 if f != f else (median / f) ** power for f in freq]

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
    ("overlap on", "class_overlap"),  # multiclass rows of two classes sharing pixels (load_target refuses them)
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


def _listed_samples(cfg: Config, res: AuditResult) -> list[_Listed]:
    """The samples training uses (:func:`seg_toolkit.data.sources.list_train_samples`, the one lister of every
    layout), each problem collected instead of raised; then mask files without an image (plain folder layout)."""
    d = cfg.data
    samples, bad = list_train_samples(cfg, res.add)
    plain_folder = d.layout == "folder" and not (d.train_lists or d.pair_split or d.instance_folders or d.mask_per_class
                                                 or d.bands.mask)
    masks, images, bands = cfg.data_path(d.train_masks), cfg.data_path(d.train_images), bands_of(cfg)
    if plain_folder and masks.is_dir() and images.is_dir():
        stems = ({p.parent.name for p in band_image_files(images, bands)[0]} if bands else
                 {p.stem for p in images.iterdir() if p.suffix.lower() == d.image_ext.lower()})
        for m in sorted(masks.iterdir()):
            if m.name.lower().endswith(d.mask_ext.lower()) and m.name[: -len(d.mask_ext)] not in stems:
                res.add("orphan_mask", m, f"{m}: mask without an image ({images / (m.name[: -len(d.mask_ext)] + d.image_ext)} "
                        "not found)")
    return [_Listed(s, bad_target=s.id in bad) for s in samples]


# ----------------------------------------------------------------------------- the pass over samples


def _check_image(s: Sample, cfg: Config, res: AuditResult, decode: bool) -> Optional[tuple[int, int]]:
    """The image's (height, width), its mode counted; None (and a problem) when it cannot be read."""
    try:
        if decode:
            hw = read_config_image(s.image, cfg, s.pair).shape[:2]
        else:
            if s.image.is_file() and s.image.stat().st_size == 0:
                raise DataError(f"{s.image}: file is empty (0 bytes)")
            hw = image_size(s.image, pair=s.pair, exif=cfg.data.exif_orientation)
    except DataError as e:
        res.add(_kind(str(e), "image"), s.image, str(e))
        return None
    b = bands_of(cfg)
    try:
        if b is not None:  # the folder's bands stacked, as training reads them
            res.image_modes[f"band folder: {len(b.files)} x npy {np.load(s.image, mmap_mode='r').dtype}" +
                            (" as the ash colour" if b.ash else "")] += 1
            wide = decode and not b.ash
        elif is_array_image(s.image):
            arr = np.load(s.image, mmap_mode="r", allow_pickle=False)
            res.image_modes[f"npy {arr.dtype} x{arr.shape[2] if arr.ndim == 3 else 1}"] += 1
            wide = decode and arr.dtype != np.uint8 and arr.dtype.kind != "b"
        else:
            deep = color16(s.image)  # 16 bits per channel: Pillow says RGB(A), the toolkit reads them exactly
            with open_header(s.image) as im:
                res.image_modes[im.mode + (";16" if deep else "")] += 1
                wide = (deep or im.mode in WIDE_MODES) and decode
    except Exception:  # read above, so this does not happen; the mode is only informative
        res.image_modes["?"] += 1
        wide = False
    wide = wide and wide_values(s.image, cfg.data.max_image_pixels, b, cfg.data.in_channels)  # None: the ash colour (fixed ranges)
    if wide:
        mode, lo, hi = wide
        span = res.wide_values.setdefault(mode, [lo, hi])
        span[:] = [min(span[0], lo), max(span[1], hi)]
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
    d = cfg.data
    fg = [v for v in values.tolist() if v not in (0, -1)]
    if d.task == "binary" and len(fg) == 1 and not d.mask_values and d.mask_threshold is None and not d.instance_folders:
        res.foreground_files.setdefault(int(fg[0]), []).append(str(s.mask))
    if d.task == "binary" and not d.instance_folders:
        if d.ignore_index is not None and not fg and -1 in values:
            res.void_only_files.append(str(s.mask))
        elif d.mask_threshold is not None and fg and max(fg) < d.mask_threshold:
            res.faint_files[str(s.mask)] = int(max(fg))
        elif fg:
            res.foreground_masks += 1
            res.void_beside_foreground += -1 in values
    return True


def _check_lost_foreground(res: AuditResult, cfg: Config) -> None:
    """Binary masks whose every non-zero pixel training reads as void or background, in a set where other masks have
    foreground: a 0/255 mask among 0/1 ones with data.ignore_index: 255 (its whole object void), or a 0/1 JPEG mask
    among 0/255 ones read with data.mask_threshold: 128 (its object background). Each file alone reads as asked."""
    d = cfg.data
    if not res.foreground_masks:
        return
    # most masks with objects have void too: void is a label of its own (a border), not a lost object
    if res.void_only_files and res.void_beside_foreground * 2 < res.foreground_masks:
        files = res.void_only_files
        res.add("void_foreground", files[0],
                f"{files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else "") + f": every non-zero pixel "
                f"is void (data.ignore_index: {d.ignore_index}), no foreground, where other masks have some: a 0/"
                f"{d.ignore_index} mask among 0/1 ones loses its whole object to void; if so, drop data.ignore_index "
                "or declare the values: data.mask_values")
    if res.faint_files:
        (first, top), more = next(iter(res.faint_files.items())), len(res.faint_files) - 1
        res.add("faint_foreground", first,
                f"{first}" + (f" and {more} more" if more else "") + f": non-zero values up to {top}, all below "
                f"data.mask_threshold: {d.mask_threshold}, so read as empty, where other masks have foreground: a 0/1 "
                "mask among 0/255 ones? Save it as 0/255, or lower the threshold")


def _check_foreground_values(res: AuditResult) -> None:
    """Binary mask files read as "> 0" that mark foreground with different values (0/1 in most, 0/2 in one):
    each file alone is a valid binary mask and training reads every such value as foreground, but a file
    unlike the rest is often a label of another kind (a class id map, a trimap's one value): named here,
    the less common values first, each at its first file."""
    if len(res.foreground_files) < 2:
        return
    by_use = sorted(res.foreground_files.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    summary = ", ".join(f"{v} in {len(files)} file(s)" for v, files in by_use)
    common = by_use[0][0]
    for v, files in by_use[1:]:
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        res.add("mixed_foreground", files[0],
                f"{files[0]}{more}: binary mask marks foreground with {v}, most masks with {common} ({summary}); "
                "training reads every value > 0 as foreground. If this file is a label of another kind (class ids, a "
                "trimap), fix it, or declare the values: data.mask_values (e.g. {" + f"{common}: 1, {v}: 0" + "})")


def _check_image_range(res: AuditResult, cfg: Config) -> None:
    """16-bit images read over 0..65535 (no ``data.image_range``) whose values span under a quarter of it: 12-bit
    microscopy in 16-bit files becomes 0..16 of 0..255, most of its contrast lost; the range over all files is the fix."""
    if cfg.data.image_range is not None:
        return
    for mode, (lo, hi) in res.wide_values.items():
        if narrow_sixteen_bit(mode, lo, hi):
            n = sum(k for m, k in res.image_modes.items() if sixteen_bit(m))
            res.add("image_range", cfg.data_path(cfg.data.train_images),
                    f"16-bit images ({mode}) hold values {lo:g}..{hi:g} over all {n} file(s); read over 0..65535 "
                    f"they become {round(lo * 255 / 65535)}..{round(hi * 255 / 65535)} of 0..255, "
                    f"{(hi - lo) / 65535:.1%} of the contrast: set data.image_range: [{lo:g}, {hi:g}]")


#: PIL modes of 8 bits per value, read as they are whatever data.image_range says
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "npy uint8")


def _check_mixed_depth(res: AuditResult, cfg: Config) -> None:
    """8-bit and 16-bit images in one training set: the 8-bit ones are read as they are and the 16-bit ones over
    ``data.image_range`` (0..65535 without it), so the same scene stored both ways differs by a factor of up to
    256 in what the model sees."""
    eight = sum(n for m, n in res.image_modes.items() if m in EIGHT_BIT_MODES)
    sixteen = {m: n for m, n in res.image_modes.items() if sixteen_bit(m)}
    if eight and sixteen:
        span = cfg.data.image_range or [0, 65535]
        res.add("mixed_bit_depth", cfg.data_path(cfg.data.train_images),
                f"{eight} 8-bit image(s) and {sum(sixteen.values())} 16-bit one(s) ({', '.join(sorted(sixteen))}): the "
                f"8-bit ones are read as they are (0..255) and the 16-bit ones over {span[0]:g}..{span[1]:g}, so the "
                "same values stored in each differ by up to 256x; convert the images to one bit depth")


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
            res.present_pixels[c] += valid if counts[c] > 0 else 0
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
        res.present_pixels[c] += int(hw - n_void[c]) if per_class[c] > 0 else 0
    res.void_pixels += int(n_void.sum())
    res.all_empty_images = (res.all_empty_images or 0) + int(per_class.sum() == 0)
    if d.task == "multilabel":
        res.overlap_pixels = (res.overlap_pixels or 0) + int((fg.sum(-1) > 1).sum())


def _count_objects(labels: np.ndarray, res: AuditResult) -> None:
    areas = np.bincount(labels.ravel(), minlength=1)[1:]
    areas = areas[areas > 0]
    res.objects_per_image.append(len(areas))
    res.object_areas += areas.tolist()
    res.touching_objects = (res.touching_objects or 0) + len(touching(labels))


def audit(cfg: Config, decode_images: bool = True) -> AuditResult:
    """Audit the training data ``cfg`` names (see the module doc); problems are collected, not raised.

    ``decode_images``: decode every image fully (finds truncated files); ``False`` reads only
    headers, which is faster but only finds missing, empty and unreadable files. Targets are
    always decoded, since their pixels are counted.
    """
    d = cfg.data
    n = d.num_classes
    res = AuditResult(root=str(d.root), task=d.task, layout=d.layout, class_names=class_names(cfg),
                      class_pixels=[0] * n, valid_pixels=[0] * n, images_with_class=[0] * n, present_pixels=[0] * n)
    if d.task != "multiclass":
        res.all_empty_images = 0
    if d.task == "multilabel":
        res.overlap_pixels = 0
    if d.instance_folders or (d.rle_instances and d.task == "binary"):
        res.touching_objects = 0
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
        if res.touching_objects is not None:
            try:
                _count_objects(load_objects(s, cfg, hw), res)
            except DataError as e:  # overlapping objects: an object metric refuses them
                res.add(_kind(str(e), "objects"), s.mask if s.mask is not None else s.where, str(e))
                continue
        _count_target(target, cfg, res)
        res.n_read += 1
        res.samples.append(s)
    _check_lost_foreground(res, cfg)
    _check_foreground_values(res)
    _check_image_range(res, cfg)
    _check_mixed_depth(res, cfg)
    log.info("audit of %s: %d samples, %d read, %d problem(s)", d.root, res.n_listed, res.n_read, len(res.problems))
    return res


def __getattr__(name: str):
    """``format_audit`` / ``write_audit`` live in :mod:`seg_toolkit.audit_report`; still importable from here."""
    if name in ("format_audit", "write_audit"):
        from . import audit_report

        return getattr(audit_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
