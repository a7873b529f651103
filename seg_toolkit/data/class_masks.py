"""``data.mask_per_class`` (multilabel, folder layout): one binary mask file per image and class.

Severstal, Understanding Clouds and Contrails-style sets converted to files keep each class
in its own file. ``data.mask_per_class`` is the file's path in ``data.train_masks`` without
``data.mask_ext``, with the fields

* ``{id}``: the image's id (its file name without the extension);
* ``{cls}``: the class number, 1-based (``1..data.num_classes``: the numbering of per-class CSV
  rows and of ``predict.write_masks``' ``<id>_<class>.png``), or ``{name}``: the class name
  (``data.class_names`` or ``data.classes_csv``).

``"{id}_{cls}"`` reads ``masks/<id>_1.png``, ``masks/<id>_2.png``, ...; ``"{name}/{id}"`` reads
``masks/<class name>/<id>.png``. Each file is binary: 0 and 255, or 0 and 1 (with
``data.mask_threshold``: a value >= it is foreground, for lossy files; with ``data.mask_channel`` the
files are RGB(A) and that channel is read); any other value is a
:class:`~seg_toolkit.data.io.DataError` naming the file and its values. A missing file is an
error naming it, or an empty mask of that class with ``data.missing_class_masks: empty``
(sets that store only non-empty masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..config import Config
from .colors import class_names
from .data_errors import mask_size_error
from .io import DataError, image_size
from .mask_io import read_mask_array

if TYPE_CHECKING:  # pragma: no cover
    from .sample import Sample

__all__ = ["class_mask_paths", "class_mask_target"]


def class_mask_paths(cfg: Config, image_id: str, image: Path, on_problem: Callable[[str, str, str], None]
                     ) -> tuple[Path | None, ...] | None:
    """Each class's file for ``image_id`` (``None``: missing, read as empty with ``data.missing_class_masks:
    empty``); with ``error`` each missing file goes to ``on_problem`` and ``None`` is returned."""
    d = cfg.data
    folder = cfg.data_path(d.train_masks)
    names = class_names(cfg)
    paths: list[Path | None] = []
    ok = True
    for k in range(1, d.num_classes + 1):
        path = folder / (d.mask_per_class.format(id=image_id, cls=k, name=names[k - 1]) + d.mask_ext)
        if path.is_file():
            paths.append(path)
            continue
        paths.append(None)
        if d.missing_class_masks == "error":
            ok = False
            on_problem("missing_mask", str(path),
                       f"{path}: mask of class {k} ({names[k - 1]}) for image {image.name} not found (data.mask_per_class "
                       f"{d.mask_per_class!r}, data.train_masks, data.mask_ext); set data.missing_class_masks: empty "
                       "if a missing file means an empty mask")
    return tuple(paths) if ok else None


def _read_class_mask(path: Path, cfg: Config) -> np.ndarray:
    """A class file as ``bool (H, W)``; values other than 0/255 or 0/1 are refused (module doc). With
    ``data.mask_channel`` each file is multi-channel (RGB 0/255 masks) and that channel is the mask."""
    d = cfg.data
    kind = "channels" if d.mask_channel is not None else "ids"
    arr = read_mask_array(path, d.max_image_pixels, lossy_ok=d.mask_threshold is not None, kind=kind, exif=d.exif_orientation)
    if d.mask_channel is not None:
        if d.mask_channel >= arr.shape[2]:
            raise DataError(f"{path}: mask has {arr.shape[2]} channels; data.mask_channel {d.mask_channel} is outside "
                            f"0..{arr.shape[2] - 1}")
        arr = arr[:, :, d.mask_channel]
    if d.mask_threshold is not None:
        return arr >= d.mask_threshold
    values = np.unique(arr)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        raise DataError(f"{path}: class mask holds values {values[:10].tolist()}{' ...' if values.size > 10 else ''}; "
                        "a class mask is binary, 0 and 255 or 0 and 1 (data.mask_threshold reads lossy or anti-aliased "
                        "masks)")
    return arr > 0


def class_mask_target(sample: Sample, cfg: Config, hw: tuple[int, int] | None) -> np.ndarray:
    """``uint8 (H, W, C)`` 0/1: class ``k``'s file in channel ``k - 1``, an empty channel for a missing file;
    every file must be the image's size ``hw`` (``None``: the image's size is read)."""
    assert sample.class_masks is not None
    hw = tuple(hw) if hw is not None else image_size(sample.image, sample.pair, exif=cfg.data.exif_orientation)
    out = np.zeros((*hw, len(sample.class_masks)), np.uint8)
    for c, path in enumerate(sample.class_masks):
        if path is None:
            continue
        fg = _read_class_mask(path, cfg)
        if fg.shape != hw:
            raise mask_size_error(path, fg.shape, f"its image {sample.image.name}", hw)
        out[:, :, c] = fg
    return out
