"""Where samples come from: a competition folder in one of the two common Kaggle layouts.

* ``csv``: images plus a CSV of RLE masks, one row per image, or one row per image and
  class (``data.class_column``), empty RLE = empty mask.
* ``folder``: images plus mask files (binary, or label maps with a void id; 8- or 16-bit),
  found by id in ``data.train_masks`` or listed as ``image mask`` lines in ``data.train_lists``.

A :class:`Sample` only names files and strings; pixels are read by :func:`load_target`
when a dataset asks for them. Targets use the toolkit's convention (see
:data:`seg_toolkit.config.IGNORE_INDEX`): multiclass ``uint8 (H, W)`` label map,
binary/multilabel ``uint8 (H, W, C)`` with 0/1, void = 255 in both.
"""

from __future__ import annotations

import glob
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ..config import IGNORE_INDEX, Config, ConfigError
from ..rle import RLEError, RLESpec
from .io import IMAGE_EXTS, DataError, image_size, read_mask

log = logging.getLogger(__name__)

__all__ = [
    "Sample",
    "load_train_samples",
    "load_test_samples",
    "load_list_samples",
    "iter_list_samples",
    "load_target",
    "check_train_samples",
    "read_csv_strict",
    "check_id",
    "class_names",
    "class_colors",
]


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path | None = None  # folder layout
    rles: tuple[str, ...] | None = None  # csv layout: one string per output channel / class id 1..
    group: str | None = None
    where: str = ""  # where the sample was listed, for error messages


def check_id(image_id: str, where: str) -> str:
    """Refuse ids that could escape a folder or are not usable as file names."""
    if not image_id or image_id.strip() != image_id:
        raise DataError(f"{where}: id {image_id!r} is empty or has surrounding spaces")
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\x00" in image_id:
        raise DataError(f"{where}: id {image_id!r} contains a path separator or is a relative path; ids must be plain names")
    return image_id


def _image_path(folder: Path, image_id: str, ext: str) -> Path:
    # Some competitions' ids already carry the extension (Severstal: "0002cc93b.jpg").
    if Path(image_id).suffix.lower() in IMAGE_EXTS:
        return folder / image_id
    return folder / f"{image_id}{ext}"


def _ext_hint(folder: Path, stem: str, key: str) -> str:
    """``; found 'x.jpg' there: set data.image_ext: '.jpg'`` when a file of that stem has another ending."""
    if not folder.is_dir():
        return f"; the folder {folder} does not exist"
    found = sorted(p.name for p in folder.glob(glob.escape(stem) + "*") if p.is_file())
    return f"; found {found[0]!r} there: set {key}: {found[0][len(stem):]!r}" if found else ""


def _folder_ext_hint(folder: Path, key: str) -> str:
    """``; it holds 12 '.jpg' file(s): set data.image_ext: '.jpg'`` for a folder without the expected files."""
    counts = Counter(p.suffix.lower() for p in folder.iterdir() if p.is_file() and p.suffix)
    if not counts:
        return "; it holds no files"
    ext, n = counts.most_common(1)[0]
    return f"; it holds {n} {ext!r} file(s): set {key}: {ext!r}"


def read_csv_strict(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """Read a CSV as strings (empty fields stay ``""``) and check the needed columns exist.

    A UTF-8 byte-order mark and CRLF line ends are accepted; every failure names the file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected the {what} file")
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); expected the {what} with a header line")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read {what} as CSV ({type(e).__name__}: {' '.join(str(e).split())})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; it has {', '.join(map(repr, df.columns))} "
            "(set data.id_column / data.rle_column / data.class_column to match)"
        )
    return df


def _line(i: int) -> int:
    return i + 2  # header is line 1


def load_train_samples(cfg: Config) -> list[Sample]:
    """All labelled training samples of the competition, in file order."""
    d = cfg.data
    if d.layout == "csv":
        samples = _csv_samples(cfg)
    elif d.train_lists:
        samples = load_list_samples(cfg, d.train_lists)
    else:
        samples = _folder_samples(cfg)
    return samples[: d.limit] if d.limit is not None else samples


def train_rle_spec(cfg: Config) -> RLESpec:
    """How ``data.train_csv``'s strings are read: Kaggle's RLE (1-based, absolute starts, empty
    field = empty mask) in the pixel order ``data.rle_order``."""
    return RLESpec(order=cfg.data.rle_order)


def _csv_samples(cfg: Config) -> list[Sample]:
    d = cfg.data
    path = cfg.data_path(d.train_csv)
    cols = [d.id_column, d.rle_column] + ([d.class_column] if d.class_column else [])
    if d.group_column:
        cols.append(d.group_column)
    df = read_csv_strict(path, cols, "training CSV (data.train_csv)")
    if df.empty:
        raise DataError(f"{path}: no data rows (only the header {', '.join(map(repr, df.columns))}): nothing to train on")
    images = cfg.data_path(d.train_images)
    ids = df[d.id_column].tolist()
    rles = df[d.rle_column].tolist()
    spec = train_rle_spec(cfg)
    for i, (image_id, rle) in enumerate(zip(ids, rles)):
        where = f"{path} line {_line(i)} (id {image_id!r})"
        check_id(image_id, where)
        try:
            spec.runs(rle, np.iinfo(np.int64).max, where)
        except RLEError as e:
            nan = rle.strip().lower() in ("nan", "none", "null", "na", "<na>", "n/a")
            raise DataError(f"{e}" + ("; a NaN written as text? an empty mask is an empty field" if nan else "")) from None

    if d.class_column is None:
        if d.task != "binary":
            raise ConfigError(
                f"data.class_column: a {d.task} task read from a CSV needs a class column (one row per image and class)"
            )
        dup = df[d.id_column].duplicated(keep="first")
        if dup.any():
            rows = [_line(int(i)) for i in np.flatnonzero(dup.to_numpy())[:5]]
            raise DataError(f"{path}: duplicate id(s) {df[d.id_column][dup].unique()[:5].tolist()} at line(s) {rows}")
        groups = df[d.group_column].tolist() if d.group_column else [None] * len(df)
        return [
            Sample(i_, _image_path(images, i_, d.image_ext), rles=(r,), group=g, where=f"{path} line {_line(k)}")
            for k, (i_, r, g) in enumerate(zip(ids, rles, groups))
        ]

    # one row per image and class
    n_cls = d.num_classes if d.task == "multilabel" else d.num_classes - 1
    first_row: dict[str, int] = {}
    per_image: dict[str, list[str]] = {}
    group_of: dict[str, str | None] = {}
    for k, (image_id, rle, cls) in enumerate(zip(ids, rles, df[d.class_column].tolist())):
        where = f"{path} line {_line(k)}"
        try:
            c = int(cls)
        except ValueError:
            raise DataError(f"{where}: class {cls!r} in column {d.class_column!r} is not an integer") from None
        if not 1 <= c <= n_cls:
            raise DataError(f"{where}: class {c} is outside 1..{n_cls} (data.num_classes={d.num_classes}, task {d.task})")
        slots = per_image.setdefault(image_id, [""] * n_cls)
        first_row.setdefault(image_id, k)
        if d.group_column:
            group_of[image_id] = df[d.group_column].iat[k]
        if slots[c - 1] and rle:
            raise DataError(f"{where}: second non-empty row for image {image_id!r} class {c}")
        slots[c - 1] = slots[c - 1] or rle
    return [
        Sample(
            i_, _image_path(images, i_, d.image_ext), rles=tuple(r), group=group_of.get(i_),
            where=f"{path} line {_line(first_row[i_])}",
        )
        for i_, r in per_image.items()
    ]


def _folder_samples(cfg: Config) -> list[Sample]:
    d = cfg.data
    images = cfg.data_path(d.train_images)
    masks = cfg.data_path(d.train_masks)
    if not images.is_dir():
        what = "is a file, not a folder" if images.exists() else "not found"
        raise DataError(f"{images}: image folder (data.train_images) {what}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() == d.image_ext.lower())
    if not files:
        raise DataError(f"{images}: no *{d.image_ext} images (data.image_ext){_folder_ext_hint(images, 'data.image_ext')}")
    out = []
    for p in files:
        mask = masks / f"{p.stem}{d.mask_ext}"
        if not mask.is_file():
            raise DataError(f"{mask}: mask for image {p.name} not found (data.train_masks, data.mask_ext)"
                            f"{_ext_hint(masks, p.stem, 'data.mask_ext')}")
        out.append(Sample(p.stem, p, mask=mask, where=str(p)))
    return out


def _raise(kind: str, where: str, message: str) -> None:
    raise DataError(message)


def iter_list_samples(cfg: Config, lists: list[str], on_problem: Callable[[str, str, str], None] = _raise) -> Iterator[Sample]:
    """Samples from list files of ``image mask`` lines (paths relative to ``data.root``).

    Each problem goes to ``on_problem(kind, where, message)`` and its line is skipped; the
    default raises :class:`DataError` at the first one (the audit collects them instead).
    Kinds: ``missing_file``, ``bad_line``, ``bad_id``, ``duplicate_row``.
    """
    root = Path(cfg.data.root)
    seen: dict[str, str] = {}
    for rel in lists:
        path = root / rel
        if not path.is_file():
            what = "is a folder; expected a text file of 'image mask' lines" if path.is_dir() else "not found"
            on_problem("missing_file", str(path), f"{path}: list file (data.train_lists / data.test_lists) {what}")
            continue
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            on_problem("bad_line", str(path), f"{path}: list file is not UTF-8 text ({e.reason} at byte {e.start})")
            continue
        if not text.strip():
            on_problem("bad_line", str(path), f"{path}: list file is empty; expected 'image mask' lines")
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path} line {n}"
            if len(parts) != 2:
                on_problem("bad_line", where, f"{where}: expected 'image mask' (two relative paths), got {line!r}")
                continue
            image, mask = root / parts[0], root / parts[1]
            missing = [p for p in (image, mask) if not p.is_file()]
            for p in missing:
                on_problem("missing_file", where, f"{where}: {p} not found")
            if missing:
                continue
            try:
                image_id = check_id(Path(parts[0]).stem, where)
            except DataError as e:
                on_problem("bad_id", where, str(e))
                continue
            if image_id in seen:
                on_problem("duplicate_row", where, f"{where}: id {image_id!r} listed twice (also at {seen[image_id]})")
                continue
            seen[image_id] = where
            yield Sample(image_id, image, mask=mask, where=where)


def load_list_samples(cfg: Config, lists: list[str]) -> list[Sample]:
    """Samples from list files of ``image mask`` lines; the first problem raises :class:`DataError`."""
    return list(iter_list_samples(cfg, lists))


_FORMAT_FIELD = re.compile(r"\{(id|cls)\}")


def parse_submission_id(fmt: str) -> re.Pattern:
    """A regex that splits a per-class submission id made with ``fmt`` back into id and class."""
    pattern, pos = "", 0
    for m in _FORMAT_FIELD.finditer(fmt):
        pattern += re.escape(fmt[pos : m.start()])
        pattern += "(?P<id>.+)" if m.group(1) == "id" else r"(?P<cls>\d+)"
        pos = m.end()
    return re.compile(pattern + re.escape(fmt[pos:]))


def load_test_samples(cfg: Config) -> list[Sample]:
    """Test images in the order of ``sample_submission.csv`` (or sorted file names without one)."""
    d, s = cfg.data, cfg.submission
    folder = cfg.data_path(d.test_images)
    sample_path = cfg.data_path(d.sample_submission)
    if d.test_lists:
        return load_list_samples(cfg, d.test_lists)
    if sample_path.is_file():
        df = read_csv_strict(sample_path, [], "sample submission (data.sample_submission)")
        if df.empty:
            raise DataError(f"{sample_path}: no rows (only the header); a sample submission lists every test id")
        id_col = s.id_column or df.columns[0]
        if id_col not in df.columns:
            raise DataError(f"{sample_path}: no column {id_col!r} (submission.id_column); it has {list(df.columns)}")
        ids: list[str] = []
        seen: set[str] = set()
        split = parse_submission_id(s.id_format) if s.per_class else None
        for k, raw in enumerate(df[id_col].tolist()):
            where = f"{sample_path} line {_line(k)}"
            if split is not None:
                m = split.fullmatch(raw)
                if not m:
                    raise DataError(f"{where}: id {raw!r} does not match submission.id_format {s.id_format!r}")
                raw = m.group("id")
            if raw not in seen:
                seen.add(raw)
                ids.append(check_id(raw, where))
        samples = [Sample(i, _image_path(folder, i, d.image_ext), where=str(sample_path)) for i in ids]
        missing = [x for x in samples if not x.image.is_file()]
        if missing:
            raise DataError(
                f"{sample_path}: {len(missing)} of {len(samples)} ids have no image in {folder}, e.g. "
                f"{missing[0].id!r} (expected {missing[0].image}){_ext_hint(folder, missing[0].id, 'data.image_ext')}"
            )
        return samples
    if not folder.is_dir():
        raise DataError(f"{folder}: test image folder (data.test_images) not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == d.image_ext.lower())
    if not files:
        raise DataError(f"{folder}: no *{d.image_ext} test images{_folder_ext_hint(folder, 'data.image_ext')}")
    return [Sample(p.stem, p, where=str(p)) for p in files]


def load_target(sample: Sample, cfg: Config, hw: tuple[int, int]) -> np.ndarray:
    """The sample's target at image size ``hw`` in the toolkit's convention (see module doc)."""
    d = cfg.data
    if sample.rles is not None:
        where = f"{sample.where} (id {sample.id!r})"
        try:
            spec = train_rle_spec(cfg)
            chans = [spec.decode(r, hw, where=where) for r in sample.rles]
        except RLEError as e:
            raise DataError(str(e)) from None
        if d.task == "multiclass":
            label = np.zeros(hw, np.uint8)
            for c, m in enumerate(chans, start=1):
                label[m.astype(bool)] = c
            return label
        return np.stack(chans, axis=-1)

    assert sample.mask is not None
    mask = read_mask(sample.mask, d.max_image_pixels, lossy_ok=d.mask_threshold is not None)
    if mask.shape != tuple(hw):
        raise DataError(
            f"{sample.mask}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {sample.image.name} "
            f"is {hw[0]}x{hw[1]}; image and mask must have the same size"
        )
    void = mask == d.ignore_index if d.ignore_index is not None else None
    if d.task == "multiclass":
        bad = mask >= d.num_classes
        if void is not None:
            bad &= ~void
        if bad.any():
            vals = np.unique(mask[bad])[:10].tolist()
            hint = ""
            if vals == [255] and d.ignore_index is None:
                hint = ("; 0/255 masks are binary masks (data.task: binary), unless 255 marks void pixels "
                        "(data.ignore_index: 255)")
            raise DataError(
                f"{sample.mask}: mask values {vals} are outside the classes 0..{d.num_classes - 1}"
                + (f" and the void id {d.ignore_index}" if d.ignore_index is not None else "")
                + f" (data.num_classes / data.ignore_index){hint}"
            )
        label = mask.astype(np.uint8)
        if void is not None:
            label[void] = IGNORE_INDEX
        return label
    if d.task == "binary":
        fg = (mask >= d.mask_threshold if d.mask_threshold is not None else mask > 0).astype(np.uint8)
        if void is not None:
            fg[void] = IGNORE_INDEX
        return fg[:, :, None]
    raise ConfigError("data.task: multilabel masks need the csv layout with data.class_column")


def check_train_samples(samples: list[Sample], cfg: Config) -> None:
    """What training needs, checked before anything is written or trained: every image file
    exists, and some mask has foreground.

    A training set whose masks are all empty (all background) is refused: it can only teach a
    model to predict nothing, and its CV score would measure nothing (with ``metric.empty_score:
    one`` a perfect 1.0); it is nearly always a reading mistake (wrong column, folder or
    threshold), which the message names. A class without any pixel is warned about in the csv
    layout, where seeing it costs nothing. Mask files are read only until one has foreground.
    """
    d = cfg.data
    missing = [s for s in samples if not s.image.is_file()]
    if missing:
        m = missing[0]
        raise DataError(
            f"{m.where}: {len(missing)} of {len(samples)} training ids have no image in {m.image.parent}, e.g. "
            f"{m.id!r} (expected {m.image}; data.train_images, data.image_ext){_ext_hint(m.image.parent, m.id, 'data.image_ext')}"
        )
    if not samples:
        return
    if samples[0].rles is not None:
        n, spec = len(samples[0].rles), train_rle_spec(cfg)
        present = [any(s.rles and not spec.is_empty(s.rles[c]) for s in samples) for c in range(n)]
        if not any(present):
            raise DataError(
                f"{cfg.data_path(d.train_csv)}: every mask is empty (column {d.rle_column!r} is empty for all "
                f"{len(samples)} training images): training would learn to predict nothing and the CV score would "
                "mean nothing; check data.rle_column"
            )
        names = class_names(cfg)
        for c, ok in enumerate(present):
            if not ok and n > 1:
                k = c + 1 if d.task == "multiclass" else c
                log.warning("class %s (%s) has no pixel in any of the %d training masks of %s: the model cannot learn it",
                            k, names[k] if k < len(names) else "?", len(samples), cfg.data_path(d.train_csv))
        return
    largest = 0
    for s in samples:
        target = load_target(s, cfg, image_size(s.image))
        if ((target != 0) & (target != IGNORE_INDEX)).any():
            return
        assert s.mask is not None
        raw = read_mask(s.mask, d.max_image_pixels, lossy_ok=True)
        raw = raw[raw != d.ignore_index] if d.ignore_index is not None else raw
        largest = max(largest, int(raw.max()) if raw.size else 0)
    if d.task == "multiclass":
        read, keys = "a class id other than 0" + (f" or the void id {d.ignore_index}" if d.ignore_index is not None else ""), "data.ignore_index"
    else:
        read = f"a value >= data.mask_threshold={d.mask_threshold}" if d.mask_threshold is not None else "a value > 0"
        keys = "data.mask_threshold"
    where = samples[0].mask.parent if samples[0].mask is not None else cfg.data_path(d.train_masks)
    besides = " apart from the void id" if d.ignore_index is not None else ""
    raise DataError(
        f"{where}: all {len(samples)} training masks are empty (no pixel with {read}; the largest mask value{besides} "
        f"is {largest}): training would learn to predict nothing and the CV score would mean nothing; check "
        f"data.train_masks / data.train_lists and {keys}"
    )


def _classes_csv(cfg: Config) -> pd.DataFrame | None:
    if not cfg.data.classes_csv:
        return None
    path = cfg.data_path(cfg.data.classes_csv)
    df = read_csv_strict(path, ["id", "name"], "classes CSV (data.classes_csv)")
    for col in ("id", "r", "g", "b"):
        if col in df.columns:
            bad = [k for k, v in enumerate(df[col]) if not v.strip().isdigit()]
            if bad:
                raise DataError(f"{path} line {_line(bad[0])}: {col} {df[col].iat[bad[0]]!r} is not a non-negative integer")
    return df


def class_names(cfg: Config) -> list[str]:
    """Names of the output classes: config, then classes CSV, then ``class_0..``."""
    d = cfg.data
    if d.class_names:
        return list(d.class_names)
    df = _classes_csv(cfg)
    if df is not None:
        names = dict(zip(df["id"].astype(int), df["name"]))
        offset = 1 if (d.task != "multiclass") and 0 not in names else 0
        return [names.get(i + offset, f"class_{i + offset}") for i in range(d.num_classes)]
    if d.task == "binary":
        return ["foreground"]
    return [f"class_{i}" for i in range(d.num_classes)]


def class_colors(cfg: Config) -> np.ndarray:
    """``uint8 (num_classes, 3)`` display colours: classes CSV r,g,b, else a fixed palette."""
    df = _classes_csv(cfg)
    n = cfg.data.num_classes
    if df is not None and {"r", "g", "b"} <= set(df.columns):
        table = {int(i): (int(r), int(g), int(b)) for i, r, g, b in zip(df["id"], df["r"], df["g"], df["b"])}
        offset = 1 if (cfg.data.task != "multiclass") and 0 not in table else 0
        return np.array([table.get(i + offset, (255, 255, 255)) for i in range(n)], np.uint8)
    palette = np.array(
        [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
         (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)],
        np.uint8,
    )
    return palette[np.arange(n) % len(palette)]
