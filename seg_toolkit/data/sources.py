"""Where samples come from: a competition folder in one of the two common Kaggle layouts.

* ``csv``: images plus a CSV of RLE masks, one row per image, or one row per image and
  class (``data.class_column``), or one per object (``data.rle_instances``), in the RLE style of
  the ``data.rle_*`` keys (:mod:`seg_toolkit.data.csv_rows`).
  Images without a row are a declared choice (``data.unlisted_images``: ignore, empty, error).
* ``folder``: images plus mask files, found by id in ``data.train_masks`` or listed as
  ``image mask`` lines in ``data.train_lists``; or image and label side by side in one file
  (``data.pair_split``: the sample's ``pair`` says which part is which); or one folder per
  image holding one mask file per object (``data.instance_folders``, DSB 2018); or one binary
  file per image and class (``data.mask_per_class``, multilabel).

:func:`list_train_samples` is the one lister: training stops at the first problem, the audit
passes ``on_problem`` and collects them all, so both see the same samples.

A :class:`Sample` only names files and strings; pixels are read by
:func:`seg_toolkit.data.masks.load_target` (every declared mask format) and
``read_image(s.image, ..., pair=s.pair)`` when a dataset asks for them. Targets use the
toolkit's convention (see :data:`seg_toolkit.config.IGNORE_INDEX`): multiclass ``uint8 (H, W)``
label map, binary/multilabel ``uint8 (H, W, C)`` with 0/1, void = 255 in both.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from ..config import Config
from ..errors import closest
from .bands import Bands, band_image_files, bands_of
from .class_masks import class_mask_paths
from .colors import class_colors, class_ids_by_name, class_names
from .csv_rows import raise_problem, read_train_csv, unlisted_samples
from .io import DataError, _ext_hint, _line, read_csv_strict
from .masks import check_train_samples, load_target, train_rle_spec
from .sample import Sample, check_id, instance_image, pair_of
from .nested import image_finder, nested_images
from .id_formats import class_of_match, format_fields, parse_submission_id, training_ids_carry_ext  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

__all__ = [
    "Sample",
    "list_train_samples",
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


def _folder_ext_hint(folder: Path, key: str) -> str:
    """``; it holds 12 '.jpg' file(s): set data.image_ext: '.jpg'`` for a folder without the expected files."""
    counts = Counter(p.suffix.lower() for p in folder.iterdir() if p.is_file() and p.suffix)
    if not counts:
        return "; it holds no files"
    ext, n = counts.most_common(1)[0]
    return f"; it holds {n} {ext!r} file(s): set {key}: {ext!r}"


OnProblem = Callable[[str, str, str], None]


def check_data_root(cfg: Config, paths: list[str | None], lists: list[str] | None = None) -> None:
    """``data.root`` must be a folder when a path the command reads lies under it (``paths`` relative, or list files,
    whose lines are relative to it): a mistyped root was reported as its first file missing, under another key. A
    command whose paths are all absolute (predict with the training data gone) never reads it."""
    root = Path(cfg.data.root)
    if not lists and all(p is None or Path(p).is_absolute() for p in paths):
        return
    if not root.is_dir():
        where = "" if root.is_absolute() else f", {root.resolve()} from the working directory {Path.cwd()}"
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"data.root: the data folder {str(root)!r} {what}{where}; set data.root (or --set data.root=PATH)")


def list_train_samples(cfg: Config, on_problem: OnProblem | None = None) -> tuple[list[Sample], set[str]]:
    """All labelled training samples in file order (at most ``data.limit``), and the ids whose target
    is known to be unreadable (a malformed CSV row).

    ``on_problem(kind, where, message)``: ``None`` raises at the first problem (training); the
    audit passes its collector and gets every problem, the bad line or file skipped.

    With ``data.unlisted_images: empty`` and ``data.limit``, listed and unlisted images are ordered by image
    file name (the folder's order) before the limit, so the first N keep the data's share of empty masks (the
    CSV lists only non-empty ones: its rows first would keep none)."""
    d = cfg.data
    csv = d.layout == "csv"
    check_data_root(cfg, [d.train_csv if csv else None, d.train_images, None if csv else d.train_masks], d.train_lists)
    report = on_problem or raise_problem
    bad: set[str] = set()
    unlisted: list[Sample] = []
    if d.layout == "csv":
        samples, bad = read_train_csv(cfg, report)
        unlisted = unlisted_samples(cfg, samples, on_problem)
        samples += unlisted
    elif d.train_lists:
        samples = list(iter_list_samples(cfg, d.train_lists, report))
    else:
        samples = _folder_samples(cfg, report)
    if d.exclude_ids:
        samples = _without_excluded(samples, d.exclude_ids, report)
    if d.limit is None:
        return samples, bad
    if unlisted:
        samples = sorted(samples, key=lambda s: s.image)  # stable: an image's order is its file name's
        kept = samples[: d.limit]
        empty = {s.image for s in unlisted}
        n_unlisted = sum(s.image in empty for s in kept)
        log.info("data.limit %d: kept %d image(s) with a row in %s and %d without one (empty masks, data.unlisted_images: "
                 "empty), the first %d of %d in file name order", d.limit, len(kept) - n_unlisted,
                 cfg.data_path(d.train_csv), n_unlisted, len(kept), len(samples))
        return kept, bad
    return samples[: d.limit], bad


def _without_excluded(samples: list[Sample], exclude: list[str], report: OnProblem) -> list[Sample]:
    """``samples`` less ``data.exclude_ids``; an id that is not among them is a config problem naming it."""
    ids = {s.id for s in samples}
    for x in exclude:
        if x not in ids:
            close = closest(x, sorted(ids))
            hint = f"; did you mean {close!r}?" if close else ""
            report("config", "data.exclude_ids", f"data.exclude_ids: {x!r} is not one of the {len(ids)} training ids{hint}")
    drop = set(exclude)
    kept = [s for s in samples if s.id not in drop]
    if len(kept) < len(samples):
        log.info("data.exclude_ids: %d of %d training images left out", len(samples) - len(kept), len(samples))
    return kept


def load_train_samples(cfg: Config) -> list[Sample]:
    """All labelled training samples of the competition, in file order; the first problem raises."""
    return list_train_samples(cfg)[0]


def _image_files(folder: Path, ext: str, on_problem: OnProblem = raise_problem) -> list[Path]:
    """The files of ``folder`` whose extension is ``ext`` in any case (``.png``, ``.PNG``), sorted; each id (the file's
    stem) must be usable (:func:`check_id`: kind ``bad_id``) and name one file: ``a.png`` beside ``a.PNG`` would be
    one id for two pictures (kind ``duplicate_row``), and either problem leaves the file out."""
    files: dict[str, Path] = {}
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() == ext.lower()):
        try:
            check_id(p.stem, str(p))
        except DataError as e:
            on_problem("bad_id", str(p), str(e))
            continue
        if p.stem in files:
            on_problem("duplicate_row", str(p), f"{p}: id {p.stem!r} is also the id of {files[p.stem].name} in the same "
                       "folder (extensions that differ only in case); one id must name one image: rename or remove one")
            continue
        files[p.stem] = p
    return list(files.values())


def _folder_samples(cfg: Config, on_problem: OnProblem = raise_problem) -> list[Sample]:
    d = cfg.data
    images = cfg.data_path(d.train_images)
    masks = cfg.data_path(d.train_masks)
    if not images.is_dir():
        what = "is a file, not a folder" if images.exists() else "not found"
        on_problem("missing_file", str(images), f"{images}: image folder (data.train_images) {what}")
        return []
    if d.instance_folders:
        return _instance_samples(images, d.image_ext, "data.train_images", on_problem=on_problem)
    if bands_of(cfg) is not None:
        return _band_samples(cfg, images, masks, on_problem)
    files = _image_files(images, d.image_ext, on_problem)
    if not files:
        on_problem("missing_file", str(images),
                   f"{images}: no *{d.image_ext} images (data.image_ext){_folder_ext_hint(images, 'data.image_ext')}")
        return []
    pair = pair_of(cfg)
    if pair is not None:  # the label is in the image's own file
        return [Sample(p.stem, p, mask=p, where=str(p), pair=pair) for p in files]
    out = []
    for p in files:
        if d.mask_per_class:
            paths = class_mask_paths(cfg, p.stem, p, on_problem)
            if paths is not None:
                out.append(Sample(p.stem, p, class_masks=paths, where=str(p)))
            continue
        mask = masks / f"{p.stem}{d.mask_ext}"
        if not mask.is_file():
            on_problem("missing_mask", str(mask), f"{mask}: mask for image {p.name} not found (data.train_masks, "
                       f"data.mask_ext){_ext_hint(masks, p.stem, 'data.mask_ext')}")
            continue
        out.append(Sample(p.stem, p, mask=mask, where=str(p)))
    return out


def _band_files(folder: Path, bands: Bands, key: str, on_problem: OnProblem) -> list[Path]:
    """The first band file of every complete band folder in ``folder``; a folder missing a band is a problem."""
    files, incomplete = band_image_files(folder, bands)
    for p in incomplete:
        on_problem("missing_file", str(p), f"{p}: band file not found (data.bands.files {list(bands.files)}, "
                   f"data.image_ext){_ext_hint(p.parent, p.stem, 'data.image_ext')}")
    if not files and not incomplete:
        on_problem("missing_file", str(folder), f"{folder}: no image folders ({key} with data.bands: <id>/"
                   f"{bands.files[0]}{bands.ext}, ...)")
    return files


def _band_samples(cfg: Config, images: Path, masks: Path, on_problem: OnProblem) -> list[Sample]:
    """``data.bands``, folder layout: one sample per complete band folder; its mask is ``data.bands.mask`` in the
    same folder, or ``data.train_masks/<id><data.mask_ext>``."""
    d, bands = cfg.data, bands_of(cfg)
    out = []
    for p in _band_files(images, bands, "data.train_images", on_problem):
        try:
            image_id = check_id(p.parent.name, str(p.parent))
        except DataError as e:
            on_problem("bad_id", str(p.parent), str(e))
            continue
        mask = p.parent / d.bands.mask if d.bands.mask else masks / f"{image_id}{d.mask_ext}"
        if not mask.is_file():
            key = "data.bands.mask" if d.bands.mask else "data.train_masks, data.mask_ext"
            on_problem("missing_mask", str(mask), f"{mask}: mask of image folder {image_id} not found ({key})")
            continue
        out.append(Sample(image_id, p, mask=mask, where=str(p.parent)))
    return out


def _instance_samples(folder: Path, ext: str, key: str, with_masks: bool = True,
                      on_problem: OnProblem = raise_problem) -> list[Sample]:
    """``data.instance_folders``: one sample per sub-folder ``<id>/`` of ``folder``; its ``mask`` is
    the folder ``<id>/masks`` (its files are the objects: :mod:`seg_toolkit.data.instances`); test folders have none."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not subs:
        on_problem("missing_file", str(folder),
                   f"{folder}: no image folders ({key} with data.instance_folders: <id>/images/<id>{ext})")
        return []
    out = []
    for sub in subs:
        image = instance_image(folder, sub.name, ext)
        if not image.is_file():
            on_problem("missing_file", str(image),
                       f"{image}: image of folder {sub.name} not found (data.instance_folders: <id>/images/<id>{ext}, "
                       f"data.image_ext){_ext_hint(image.parent, sub.name, 'data.image_ext')}")
            continue
        try:
            image_id = check_id(sub.name, str(sub))
        except DataError as e:
            on_problem("bad_id", str(sub), str(e))
            continue
        masks = sub / "masks"
        if not with_masks:
            out.append(Sample(image_id, image, where=str(sub)))
            continue
        if not masks.is_dir():
            on_problem("missing_mask", str(masks),
                       f"{masks}: folder of object masks not found (data.instance_folders: <id>/masks/*)")
            continue
        out.append(Sample(image_id, image, mask=masks, where=str(sub)))
    return out


def iter_list_samples(cfg: Config, lists: list[str], on_problem: OnProblem = raise_problem) -> Iterator[Sample]:
    """Samples from list files of ``image mask`` lines (paths relative to ``data.root``).

    Each problem goes to ``on_problem(kind, where, message)`` and its line is skipped; the
    default raises :class:`DataError` at the first one (the audit collects them instead).
    Kinds: ``missing_file``, ``bad_line``, ``bad_id``, ``duplicate_row``, ``duplicate_mask`` (one mask file
    listed for two images: a mask is one image's label).
    """
    root = Path(cfg.data.root)
    pair = pair_of(cfg)
    seen: dict[str, str] = {}
    labels: dict[Path, str] = {}  # mask file -> the line that listed it
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
                why = ("; the paths are split at spaces, so a file name with a space cannot be listed: rename it"
                       if len(parts) > 2 else "")
                on_problem("bad_line", where, f"{where}: expected {expected}, got {line!r}{why}")
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
            label = mask.resolve()
            if pair is None and label in labels:
                on_problem("duplicate_mask", where, f"{where}: mask {parts[1]} of image {parts[0]} is also listed at "
                           f"{labels[label]} for another image; a mask file is the label of one image (list each "
                           "image with its own mask)")
                continue
            seen[image_id] = where
            labels[label] = where
            yield Sample(image_id, image, mask=mask, where=where, pair=pair)


def load_list_samples(cfg: Config, lists: list[str]) -> list[Sample]:
    """Samples from list files of ``image mask`` lines; the first problem raises :class:`DataError`."""
    return list(iter_list_samples(cfg, lists))


_SAID_HEADER_ONLY: set[Path] = set()  # header-only samples said once per process (every command step loads the test set)


def _no_test_images(folder: Path, sample_path: Path) -> list[Sample]:
    """A code competition's public run: no test image and a sample of its header only, whose header is the submission."""
    log.info("%s: no test images; with %s's header only, the submission is that header", folder, sample_path.name)
    return []


def load_test_samples(cfg: Config, images: bool = True) -> list[Sample]:
    """Test images in the order of ``sample_submission.csv`` (or sorted file names without one, or with a sample of a
    header only). ``images=False``:
    the sample's ids even when their images are not there (yet): training checks the sample so
    (:func:`seg_toolkit.inference.check_sample_submission`) where a code competition's test set is hidden."""
    d, s = cfg.data, cfg.submission
    if images:
        check_data_root(cfg, [d.test_images, d.sample_submission], d.test_lists)
    folder = cfg.data_path(d.test_images)
    sample_path = cfg.data_path(d.sample_submission)
    if d.test_lists:
        return load_list_samples(cfg, d.test_lists)
    df = read_csv_strict(sample_path, [], "sample submission (data.sample_submission)") if sample_path.is_file() else None
    if df is not None:
        id_col = s.id_column or df.columns[0]
        if id_col not in df.columns:
            raise DataError(f"{sample_path}: no column {id_col!r} (submission.id_column); it has {list(df.columns)}")
    header_only = df is not None and df.empty  # a code competition's public sample: its header only, the test hidden
    with_ext, source = training_ids_carry_ext(cfg) if header_only else (False, "")
    if header_only:
        if sample_path not in _SAID_HEADER_ONLY:
            _SAID_HEADER_ONLY.add(sample_path)
            log.info("%s has no rows (its header only, as a code competition's public sample may): rows for every "
                     "test image in %s, in file name order, under its columns, ids as file names %s the extension (as "
                     "the training ids are: %s)", sample_path, folder, "with" if with_ext else "without", source)
        if not folder.is_dir() and not images:
            return []
        if folder.is_dir() and not any(folder.iterdir()):  # a code competition's public run: the test set hidden
            return _no_test_images(folder, sample_path)
    elif df is not None:
        ids: list[str] = []
        seen: set[str] = set()
        split = parse_submission_id(s.id_format, class_ids_by_name(cfg)) if s.per_class else None
        for k, raw in enumerate(df[id_col].tolist()):
            where = f"{sample_path} line {_line(k, df)}"
            if split is not None:
                m = split.fullmatch(raw)
                if not m:
                    names = f" (class names {class_names(cfg)})" if "name" in format_fields(s.id_format) else ""
                    raise DataError(f"{where}: id {raw!r} does not match submission.id_format {s.id_format!r}{names}")
                raw = m.group("id")
            if raw not in seen:
                seen.add(raw)
                ids.append(check_id(raw, where))
        image_of = image_finder(cfg, folder)
        samples = [Sample(i, instance_image(folder, i, d.image_ext) if d.instance_folders else image_of(i),
                          where=str(sample_path), pair=pair_of(cfg)) for i in ids]
        missing = [x for x in samples if not x.image.is_file()] if images else []
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
    if bands_of(cfg) is not None:
        return [Sample(check_id(p.parent.name, str(p.parent)), p, where=str(p.parent))
                for p in _band_files(folder, bands_of(cfg), "data.test_images", raise_problem)]
    if d.image_id_pattern:  # nested folders, in path order
        found = nested_images(folder, cfg)
        if not found and header_only:
            return _no_test_images(folder, sample_path)
        if not found:
            raise DataError(f"{folder}: no *{d.image_ext} file whose path data.image_id_pattern {d.image_id_pattern!r} "
                            "matches (test images, data.test_images)")
        return [Sample(i, p, where=str(p), pair=pair_of(cfg)) for i, p in found.items()]
    files = _image_files(folder, d.image_ext)
    if not files and header_only:  # as above, the folder holding other files only
        return _no_test_images(folder, sample_path)
    if not files:
        raise DataError(f"{folder}: no *{d.image_ext} test images{_folder_ext_hint(folder, 'data.image_ext')}")
    return [Sample(p.name if with_ext else p.stem, p, where=str(p), pair=pair_of(cfg)) for p in files]

