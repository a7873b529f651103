"""Images in nested folders, each id read off its path (``data.image_id_pattern`` / ``data.image_id_format``).

UW-Madison's GI tract scans are ``train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png`` for the
training CSV's id ``case123_day20_slice_0001``: neither the file's name nor any one folder is the id. The pattern is
searched in each image file's path relative to the images folder (``/`` between parts), and its named groups fill
the format into the id. Files it does not match are not images of the competition (a folder's notes, scans of
another kind); an id two files give is an error naming both. Every reader of the csv layout's images (training rows,
unlisted images, the sample submission's ids, a test folder listed without one) finds them here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..config import Config
from .bands import bands_of
from .io import DataError
from .sample import check_id, image_path

__all__ = ["nested_images", "image_finder"]


def nested_images(folder: Path, cfg: Config, on_problem: Callable[[str, str, str], None] | None = None
                  ) -> dict[str, Path]:
    """``{id: image file}`` of every ``data.image_ext`` file under ``folder`` whose path the pattern matches, sorted by
    path. An id that is not a plain name, or that two files give, is a :class:`DataError` naming the files; with
    ``on_problem`` (the audit's collector: kind, where, message) each is reported and the file left out, as the flat
    layout's files are."""
    d = cfg.data

    def problem(kind: str, where: Path, message: str) -> None:
        if on_problem is None:
            raise DataError(message)
        on_problem(kind, str(where), message)

    pattern, ext = re.compile(d.image_id_pattern or ""), d.image_ext.lower()
    out: dict[str, Path] = {}
    for p in sorted(q for q in folder.rglob("*") if q.suffix.lower() == ext and q.is_file()):
        m = pattern.search(p.relative_to(folder).as_posix())
        if m is None:
            continue
        try:
            image_id = check_id(d.image_id_format.format(**m.groupdict()), f"{p} (data.image_id_pattern / image_id_format)")
        except DataError as e:
            problem("bad_id", p, str(e))
            continue
        if image_id in out:
            problem("duplicate_row", p, f"{p}: data.image_id_pattern / image_id_format give it the id {image_id!r} of "
                    f"{out[image_id]} too; one id must name one image: make the pattern take the part of the path that "
                    "tells them apart")
            continue
        out[image_id] = p
    return out


def image_finder(cfg: Config, folder: Path, on_problem: Callable[[str, str, str], None] | None = None
                 ) -> Callable[[str], Path]:
    """``id -> image file`` for the csv layout's ids: ``<folder>/<id><image_ext>`` (the id itself when it carries the
    extension; a band folder), or with ``data.image_id_pattern`` the file under ``folder`` whose path gives the id. An id
    no file gives is a path that is not there, naming the pattern, for the callers' own "no image" errors."""
    d = cfg.data
    if not d.image_id_pattern:
        bands = bands_of(cfg)
        return lambda image_id: image_path(folder, image_id, d.image_ext, bands)
    found = nested_images(folder, cfg, on_problem) if folder.is_dir() else {}
    missing = f"(no file under {folder.name} whose path data.image_id_pattern reads as this id)"
    return lambda image_id: found.get(image_id) or folder / f"{image_id} {missing}"
