"""Where samples come from: a competition folder in one of the two common Kaggle layouts.

* ``csv``: images plus a CSV of RLE masks, one row per image, or one row per image and
  class (``data.class_column``), empty RLE = empty mask.
  Images without a row are a declared choice (``data.unlisted_images``: ignore, empty, error).
* ``folder``: images plus mask files, found by id in ``data.train_masks`` or listed as
  ``image mask`` lines in ``data.train_lists``; or image and label side by side in one file
  (``data.pair_split``: the sample's ``pair`` says which part is which); or one folder per
  image holding one mask file per object (``data.instance_folders``, DSB 2018).

A :class:`Sample` only names files and strings; pixels are read by
:func:`seg_toolkit.data.masks.load_target` (every declared mask format) and
``read_image(s.image, ..., pair=s.pair)`` when a dataset asks for them. Targets use the
toolkit's convention (see :data:`seg_toolkit.config.IGNORE_INDEX`): multiclass ``uint8 (H, W)``
label map, binary/multilabel ``uint8 (H, W, C)`` with 0/1, void = 255 in both.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..config import Config, ConfigError
from ..rle import RLEError
from .colors import class_colors, class_names
from .io import IMAGE_EXTS, DataError, PairSplit, _ext_hint, _line, read_csv_strict
from .masks import check_train_samples, load_target, train_rle_spec

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
    "train_rle_spec",
    "pair_of",
]


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path | None = None  # folder layout
    rles: tuple[str, ...] | None = None  # csv layout: one string per output channel / class id 1..
    group: str | None = None
    where: str = ""  # where the sample was listed, for error messages
    pair: PairSplit | None = None  # image and label side by side in ``image`` (then ``mask`` is the same file)


def pair_of(cfg: Config) -> PairSplit | None:
    """``data.pair_split`` / ``data.pair_split_at`` as the :class:`PairSplit` every sample of ``cfg`` carries."""
    d = cfg.data
    return PairSplit(d.pair_split.removeprefix("image_"), d.pair_split_at) if d.pair_split else None


def check_id(image_id: str, where: str) -> str:
    """Refuse ids that could escape a folder or are not usable as file names."""
    if not image_id or image_id.strip() != image_id:
        raise DataError(f"{where}: id {image_id!r} is empty or has surrounding spaces")
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\x00" in image_id:
        raise DataError(f"{where}: id {image_id!r} contains a path separator or is a relative path; ids must be plain names")
    return image_id


def _instance_image(folder: Path, image_id: str, ext: str) -> Path:
    """``data.instance_folders`` (DSB 2018): ``<folder>/<id>/images/<id><ext>``."""
    return folder / image_id / "images" / f"{image_id}{ext}"


def _image_path(folder: Path, image_id: str, ext: str) -> Path:
    # Some competitions' ids already carry the extension (Severstal: "0002cc93b.jpg").
    if Path(image_id).suffix.lower() in IMAGE_EXTS:
        return folder / image_id
    return folder / f"{image_id}{ext}"


def _folder_ext_hint(folder: Path, key: str) -> str:
    """``; it holds 12 '.jpg' file(s): set data.image_ext: '.jpg'`` for a folder without the expected files."""
    counts = Counter(p.suffix.lower() for p in folder.iterdir() if p.is_file() and p.suffix)
    if not counts:
        return "; it holds no files"
    ext, n = counts.most_common(1)[0]
    return f"; it holds {n} {ext!r} file(s): set {key}: {ext!r}"


def load_train_samples(cfg: Config) -> list[Sample]:
    """All labelled training samples of the competition, in file order."""
    d = cfg.data
    if d.layout == "csv":
        samples = _csv_samples(cfg)
        samples += _unlisted_samples(cfg, samples)
    elif d.train_lists:
        samples = load_list_samples(cfg, d.train_lists)
    else:
        samples = _folder_samples(cfg)
    return samples[: d.limit] if d.limit is not None else samples


def _unlisted_samples(cfg: Config, listed: list[Sample]) -> list[Sample]:
    """``data.unlisted_images``: the images of ``data.train_images`` that have no row in the CSV.

    ``ignore``: none (their number is logged); ``empty``: each as a sample with empty masks
    (Severstal lists only non-empty masks); ``error``: :class:`DataError` naming a few."""
    d = cfg.data
    images = cfg.data_path(d.train_images)
    if not images.is_dir() or not listed:
        return []  # check_train_samples names the missing images
    paths = {s.image for s in listed}
    exts = {d.image_ext.lower()} | {p.suffix.lower() for p in paths}
    unlisted = sorted(p for p in images.iterdir() if p.suffix.lower() in exts and p not in paths and p.is_file())
    if not unlisted:
        return []
    csv = cfg.data_path(d.train_csv)
    head = f"{len(unlisted)} image(s) in {images} have no row in {csv}, e.g. {[p.name for p in unlisted[:3]]}"
    if d.unlisted_images == "error":
        raise DataError(f"{csv}: {head} (data.unlisted_images: error; 'empty' reads them as empty masks, "
                        "'ignore' leaves them out)")
    if d.unlisted_images == "ignore":
        log.warning("%s: not used for training (data.unlisted_images: ignore; set it to 'empty' if a missing row "
                    "means an empty mask, as in Severstal)", head)
        return []
    log.info("%s: trained on as empty masks (data.unlisted_images: empty)", head)
    with_ext = Path(listed[0].id).suffix.lower() in IMAGE_EXTS  # ids carry the extension (Severstal)
    n = len(listed[0].rles or ("",))
    return [Sample(p.name if with_ext else p.stem, p, rles=("",) * n, where=f"{p} (no row in {csv})") for p in unlisted]


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
    if d.instance_folders:
        return _instance_samples(images, d.image_ext, "data.train_images")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() == d.image_ext.lower())
    if not files:
        raise DataError(f"{images}: no *{d.image_ext} images (data.image_ext){_folder_ext_hint(images, 'data.image_ext')}")
    pair = pair_of(cfg)
    if pair is not None:  # the label is in the image's own file
        return [Sample(p.stem, p, mask=p, where=str(p), pair=pair) for p in files]
    out = []
    for p in files:
        mask = masks / f"{p.stem}{d.mask_ext}"
        if not mask.is_file():
            raise DataError(f"{mask}: mask for image {p.name} not found (data.train_masks, data.mask_ext)"
                            f"{_ext_hint(masks, p.stem, 'data.mask_ext')}")
        out.append(Sample(p.stem, p, mask=mask, where=str(p)))
    return out


def _instance_samples(folder: Path, ext: str, key: str, with_masks: bool = True) -> list[Sample]:
    """``data.instance_folders``: one sample per sub-folder ``<id>/`` of ``folder``; its ``mask`` is
    the folder ``<id>/masks`` (the union of its files is the target); test folders have none."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not subs:
        raise DataError(f"{folder}: no image folders ({key} with data.instance_folders: <id>/images/<id>{ext})")
    out = []
    for sub in subs:
        image = _instance_image(folder, sub.name, ext)
        if not image.is_file():
            raise DataError(f"{image}: image of folder {sub.name} not found (data.instance_folders: <id>/images/<id>{ext}, "
                            f"data.image_ext){_ext_hint(image.parent, sub.name, 'data.image_ext')}")
        masks = sub / "masks"
        if not with_masks:
            out.append(Sample(check_id(sub.name, str(sub)), image, where=str(sub)))
            continue
        if not masks.is_dir():
            raise DataError(f"{masks}: folder of object masks not found (data.instance_folders: <id>/masks/*)")
        out.append(Sample(check_id(sub.name, str(sub)), image, mask=masks, where=str(sub)))
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
    pair = pair_of(cfg)
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
            if pair is not None and len(parts) == 1:  # an image|label file names itself once
                parts = parts * 2
            if len(parts) != 2:
                expected = "'image mask' (two relative paths)" + (" or one image|label file" if pair else "")
                on_problem("bad_line", where, f"{where}: expected {expected}, got {line!r}")
                continue
            image, mask = root / parts[0], root / parts[1]
            missing = list(dict.fromkeys(p for p in (image, mask) if not p.is_file()))
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
            yield Sample(image_id, image, mask=mask, where=where, pair=pair)


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
        path_of = _instance_image if d.instance_folders else _image_path
        samples = [Sample(i, path_of(folder, i, d.image_ext), where=str(sample_path), pair=pair_of(cfg)) for i in ids]
        missing = [x for x in samples if not x.image.is_file()]
        if missing:
            raise DataError(
                f"{sample_path}: {len(missing)} of {len(samples)} ids have no image in {folder}, e.g. "
                f"{missing[0].id!r} (expected {missing[0].image}){_ext_hint(folder, missing[0].id, 'data.image_ext')}"
            )
        return samples
    if not folder.is_dir():
        raise DataError(f"{folder}: test image folder (data.test_images) not found")
    if d.instance_folders:
        return _instance_samples(folder, d.image_ext, "data.test_images", with_masks=False)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == d.image_ext.lower())
    if not files:
        raise DataError(f"{folder}: no *{d.image_ext} test images{_folder_ext_hint(folder, 'data.image_ext')}")
    return [Sample(p.stem, p, where=str(p), pair=pair_of(cfg)) for p in files]
