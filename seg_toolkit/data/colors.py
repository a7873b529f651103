"""Classes: names, display colours, and the colour tables that colour-coded masks are read through.

``data.mask_format: colors`` maps each pixel's RGB to a class through a table (``data.mask_colors``
and ``data.mask_void_colors``, or the ``classes_csv`` r,g,b columns): exactly for lossless files
(an unknown colour is an error naming it), or to the nearest table colour within
``data.mask_color_tolerance`` for lossy ones (farther pixels are void). A file whose pixels are
mostly far from every colour is refused, not guessed (:data:`MAX_FAR_SHARE`,
:func:`check_color_masks`).

Opt-in for lossy masks whose class edges hold blended colours (JPEG, downscaling): with
``data.mask_color_support_px`` and ``data.mask_color_clean``, a pixel within ``clean`` of its nearest
table colour takes it as above; any other pixel may only take a class (or a void colour) that has such
a clean pixel within ``support_px`` pixels (square window), the nearest of those within the tolerance,
else void. Without it, a sky/building blend is nearest to wall's colour and reads as wall
(:func:`colors_to_ids`, ``support_px``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..config import Config, ConfigError
from .io import DataError, _line, read_csv_strict
from .mask_io import read_mask_array

if TYPE_CHECKING:  # pragma: no cover
    from .sources import Sample

__all__ = ["class_names", "class_colors", "color_table", "colors_to_ids", "check_color_masks", "VOID_ID"]

#: void inside the id step of mask reading (ids read from files are >= 0)
VOID_ID = -1

#: a colour mask with more than this share of its pixels farther than the tolerance from every
#: table colour is refused: it is not a colour mask of this table (wrong half of a pair, wrong table)
MAX_FAR_SHARE = 0.5


#: classes CSVs read and checked, by (path, its bytes, what the checks read of the config): a class's name is looked up
#: for every submission row (class names in ids or a class column), which parsed and checked the file once per image
_READ: dict[tuple, pd.DataFrame] = {}


def _classes_csv(cfg: Config) -> pd.DataFrame | None:
    """The classes CSV (``data.classes_csv``), checked; parsed once while the file is unchanged."""
    if not cfg.data.classes_csv:
        return None
    path = cfg.data_path(cfg.data.classes_csv)
    d = cfg.data
    try:
        key = (str(path.resolve()), path.read_bytes(), d.task, d.num_classes, d.mask_per_class)
    except OSError:
        key = None  # read_csv_strict names the missing file
    if key is not None and key in _READ:
        return _READ[key].copy()  # a caller's edit stays its own
    df = _read_classes_csv(cfg, path)
    if key is not None:
        if len(_READ) > 8:
            _READ.clear()
        _READ[key] = df.copy()
    return df


def _read_classes_csv(cfg: Config, path) -> pd.DataFrame:
    df = read_csv_strict(path, ["id", "name"], "classes CSV (data.classes_csv)")
    for col in ("id", "r", "g", "b"):
        if col in df.columns:
            bad = [k for k, v in enumerate(df[col]) if not v.strip().isdigit()]
            if bad:
                raise DataError(f"{path} line {_line(bad[0], df)}: {col} {df[col].iat[bad[0]]!r} is not a non-negative integer")
    if "ignore" in df.columns:
        bad = [k for k, v in enumerate(df["ignore"]) if v.strip().lower() not in _IGNORE_FLAGS]
        if bad:
            raise DataError(f"{path} line {_line(bad[0], df)}: ignore {df['ignore'].iat[bad[0]]!r} is not a flag: expected "
                            "1 / true (a void colour) or 0 / false / empty")
    d = cfg.data
    ids = {int(v) for v in df["id"]}
    if d.task != "multiclass" and 0 in ids and d.num_classes not in ids:
        # binary and multilabel channels are classes 1..K wherever the data numbers them ({cls}, class columns,
        # submission ids): ids 0..K-1 would name every channel after the class below it
        raise DataError(f"{path}: {d.task} classes are numbered 1..{d.num_classes} (0 is the background), but this "
                        f"classes CSV lists ids {sorted(ids)[:12]} without {d.num_classes}; number the classes from 1")
    if d.mask_per_class and "{name}" in d.mask_per_class:
        for k, n in enumerate(df["name"]):
            if not n.strip() or any(c in n for c in "/\\\x00") or n.strip() in (".", ".."):
                raise DataError(f"{path} line {_line(k, df)}: name {n!r} names a folder or file of data.mask_per_class; "
                                "it cannot be empty or hold a path separator")
    return df


#: The ``ignore`` column's values, as their lower-case text: true ones mark void colours.
_IGNORE_FLAGS = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def _void_rows(df: pd.DataFrame) -> list[bool]:
    """Each classes-CSV row's ``ignore`` flag (1 / true / yes: the row's colour or id is void); False without the column."""
    return [_IGNORE_FLAGS[v.strip().lower()] for v in df["ignore"]] if "ignore" in df.columns else [False] * len(df)


def class_names(cfg: Config) -> list[str]:
    """Names of the output classes: config, then classes CSV, then ``class_0..`` (multilabel ``class_1..``)."""
    d = cfg.data
    if d.class_names:
        return list(d.class_names)
    df = _classes_csv(cfg)
    if df is not None:
        names = dict(zip(df["id"].astype(int), df["name"]))
        offset = 1 if d.task != "multiclass" else 0  # binary / multilabel: classes 1..K (0, if listed, is the background)
        return [names.get(i + offset, f"class_{i + offset}") for i in range(d.num_classes)]
    if d.task == "binary":
        return ["foreground"]
    # multilabel classes are numbered from 1 wherever the data names them (data.class_column, per-class submission
    # ids, data.mask_per_class's {cls}); multiclass ids are the label map's values, from 0
    first = 1 if d.task == "multilabel" else 0
    return [f"class_{i + first}" for i in range(d.num_classes)]


def class_ids_by_name(cfg: Config) -> dict[str, int]:
    """Each class name's number as rows and ids write it (multilabel and binary 1..K, multiclass 0..K-1): what
    ``{name}`` in ``data.id_format`` / ``submission.id_format`` stands for. A name given to two classes is refused
    (data.class_names is checked at load; data.classes_csv here)."""
    first = 0 if cfg.data.task == "multiclass" else 1
    names = class_names(cfg)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"data.classes_csv: class name(s) {twice} given to more than one class; {{name}} in an id needs "
                        "one name per class")
    return {name: i + first for i, name in enumerate(names)}


def unnamed_classes(cfg: Config) -> list[int]:
    """The class numbers (as rows write them: multiclass from 0, else from 1) that neither ``data.class_names`` nor the
    classes CSV names: :func:`class_names` calls them ``class_<k>``, a name no grader knows."""
    d = cfg.data
    if d.class_names:
        return []
    df = _classes_csv(cfg)
    listed = set(df["id"].astype(int)) if df is not None else set()
    first = 0 if d.task == "multiclass" else 1
    return [i + first for i in range(d.num_classes) if i + first not in listed]


def class_colors(cfg: Config) -> np.ndarray:
    """``uint8 (num_classes, 3)`` display colours: ``data.mask_colors``, classes CSV r,g,b, else a fixed palette."""
    n, d = cfg.data.num_classes, cfg.data
    if d.mask_colors and d.task == "multiclass" and len(d.mask_colors) >= n:
        return np.array(d.mask_colors[:n], np.uint8)
    df = _classes_csv(cfg)
    if df is not None and {"r", "g", "b"} <= set(df.columns):
        table = {int(i): (int(r), int(g), int(b)) for i, r, g, b in zip(df["id"], df["r"], df["g"], df["b"])}
        offset = 1 if cfg.data.task != "multiclass" else 0  # as class_names
        return np.array([table.get(i + offset, (255, 255, 255)) for i in range(n)], np.uint8)
    return distinct_colors(n)


#: 19 colours told apart at a glance (Trubetskoy's list without white, black and grey: grey is void in the pictures)
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128)]


def distinct_colors(n: int) -> np.ndarray:
    """``uint8 (n, 3)``: the palette's colours, then hues a golden angle apart at alternating brightness (the palette
    was cycled every 12 classes: Cityscapes' class 12 had class 0's colour)."""
    import colorsys

    out = list(_PALETTE[:n])
    for i in range(len(out), n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75 if i % 2 else 0.55, 0.95 if i % 3 else 0.7)
        out.append((round(255 * r), round(255 * g), round(255 * b)))
    return np.array(out, np.uint8).reshape(n, 3)


_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray, str]] = {}


def color_table(cfg: Config) -> tuple[np.ndarray, np.ndarray, str]:
    """``(colors uint8 (K, 3), ids int (K,), source)`` of ``data.mask_format: colors``; id -1 = void.

    From ``data.mask_colors`` (class i = the i-th colour) and ``data.mask_void_colors``, else from
    the classes CSV: each row's ``id`` and ``r,g,b``, void where its ``ignore`` column is 1 (or
    its id is ``data.ignore_index``). A colour listed twice with different meanings is an error.
    """
    d = cfg.data
    if d.mask_colors:
        colors = [tuple(c) for c in d.mask_colors] + [tuple(c) for c in d.mask_void_colors]
        ids = list(range(len(d.mask_colors))) + [VOID_ID] * len(d.mask_void_colors)
        source, where = "data.mask_colors / data.mask_void_colors", ["data.mask_colors"] * len(d.mask_colors) + [
            "data.mask_void_colors"] * len(d.mask_void_colors)
        key: tuple = ("config", tuple(colors), tuple(ids))
    else:
        if not d.classes_csv:
            raise ConfigError("data.mask_format: colors needs a colour table: data.mask_colors, or data.classes_csv with r,g,b")
        path = cfg.data_path(d.classes_csv)
        key = ("csv", str(path), path.stat().st_mtime_ns if path.is_file() else None, d.ignore_index)
        if key in _TABLES:
            return _TABLES[key]
        df = _classes_csv(cfg)
        assert df is not None
        if not {"r", "g", "b"} <= set(df.columns):
            raise DataError(f"{path}: data.mask_format: colors reads class colours from columns r,g,b, which this classes CSV lacks")
        ignore = _void_rows(df)
        colors = [(int(r), int(g), int(b)) for r, g, b in zip(df["r"], df["g"], df["b"])]
        ids = [VOID_ID if ig or int(i) == d.ignore_index else int(i) for i, ig in zip(df["id"], ignore)]
        source, where = str(path), [f"{path} line {_line(k, df)}" for k in range(len(df))]
    if key in _TABLES:
        return _TABLES[key]
    for c in colors:
        if any(not 0 <= v <= 255 for v in c):
            raise DataError(f"{source}: colour {list(c)} has a value outside 0..255")
    seen: dict[tuple, int] = {}
    for k, (c, i) in enumerate(zip(colors, ids)):
        if c in seen and ids[seen[c]] != i:
            raise DataError(f"{where[k]}: colour {list(c)} is listed twice ({where[seen[c]]} too) with different classes")
        seen.setdefault(c, k)
    table = (np.array(colors, np.uint8).reshape(-1, 3), np.array(ids, np.int32), source)
    _TABLES[key] = table
    return table


def colors_to_ids(rgb: np.ndarray, colors: np.ndarray, ids: np.ndarray, tolerance: float | None, where: str,
                  source: str = "the colour table", return_far: bool = False, support_px: int | None = None,
                  clean: float | None = None) -> np.ndarray | tuple[np.ndarray, int]:
    """``uint8 (H, W, 3)`` colours -> ``int32 (H, W)`` ids (-1 = void) through a colour table.

    ``tolerance`` None: every pixel must be a table colour exactly, else :class:`DataError`
    naming the unknown colours. A number: the nearest table colour (Euclidean RGB distance)
    if it is within ``tolerance``, else void; more than :data:`MAX_FAR_SHARE` of the pixels
    far from every colour is an error (not a colour mask of this table). Each colour's answer is
    remembered in a lookup table, so a dataset's JPEG noise colours are searched once.
    ``return_far``: also return the number of pixels made void by the cut-off.

    ``support_px`` (with ``clean``: ``data.mask_color_support_px`` / ``mask_color_clean``; needs a ``tolerance``): a pixel within ``clean`` of its nearest colour takes that colour's id as above; any
    other pixel takes the nearest colour within ``tolerance`` among the classes (and void colours) that
    have such a clean pixel within ``support_px`` pixels (Chebyshev), else void. The far count
    (``return_far``, :data:`MAX_FAR_SHARE`) stays the pixels farther than ``tolerance`` from every colour.
    """
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    if support_px is not None or clean is not None:
        if support_px is None or clean is None or tolerance is None or support_px < 1 or not 0 <= clean <= tolerance:
            raise ValueError(f"colors_to_ids: support_px {support_px} needs clean {clean} in 0..tolerance {tolerance}, "
                             "and support_px >= 1")
        from .color_support import supported_ids

        out, n_bad = supported_ids(keys, np.asarray(colors), ids, float(tolerance), int(support_px), float(clean))
        _check_far(n_bad, keys.size, tolerance, where, source)
        return (out, n_bad) if return_far else out
    lut = _color_lut(colors, ids, tolerance)
    out = lut[keys]
    todo = out == _NOT_YET
    if todo.any():  # colours not seen before: nearest table colour, remembered in the LUT
        new = np.unique(keys[todo])
        u = np.stack([(new >> 16) & 255, (new >> 8) & 255, new & 255], axis=1).astype(np.int64)
        d2 = ((u[:, None, :] - colors[None, :, :].astype(np.int64)) ** 2).sum(-1)
        k = d2.argmin(1)
        best = d2[np.arange(len(new)), k]
        limit = 0 if tolerance is None else tolerance * tolerance
        lut[new] = np.where(best <= limit, ids[k], _UNKNOWN if tolerance is None else _FAR).astype(lut.dtype)
        out = lut[keys]
    bad = out == (_UNKNOWN if tolerance is None else _FAR)
    n_bad = int(bad.sum())
    if tolerance is None and n_bad:
        flat = rgb.reshape(-1, 3)[bad.ravel()]
        cols, counts = np.unique(flat, axis=0, return_counts=True)
        top = np.argsort(-counts, kind="stable")[:5]
        shown = ", ".join(f"{cols[i].tolist()} x{int(counts[i])}" for i in top)
        raise DataError(
            f"{where}: {n_bad} of {keys.size} pixels have colours not in {source} ({len(cols)} distinct, e.g. {shown}); "
            "add them to the table (or to data.mask_void_colors), or for a lossy (JPEG, lossy WebP) file set "
            "data.mask_color_tolerance"
        )
    _check_far(n_bad, keys.size, tolerance, where, source)
    out = out.astype(np.int32)
    out[bad] = VOID_ID
    return (out, n_bad) if return_far else out


def _check_far(n_bad: int, size: int, tolerance: float | None, where: str, source: str) -> None:
    if n_bad > MAX_FAR_SHARE * size:
        raise DataError(
            f"{where}: {n_bad} of {size} pixels ({100 * n_bad / size:.0f}%) are farther than "
            f"data.mask_color_tolerance={tolerance:g} from every colour of {source}: this is not a colour mask of that "
            "table (the photo half of a pair? data.pair_split) or the tolerance is too small"
        )


#: masks checked before training by :func:`check_color_masks`, and the mean share of pixels
#: beyond the cut-off above which they are refused
N_COLOR_CHECK, MAX_MEAN_FAR_SHARE = 8, 0.3


def check_color_masks(samples: list[Sample], cfg: Config) -> None:
    """Before training: the first :data:`N_COLOR_CHECK` colour masks read with a cut-off must, on
    average, lose at most :data:`MAX_MEAN_FAR_SHARE` of their pixels to it. More means the files
    are not colour masks of this table (the photo half of a pair: ``data.pair_split``), or the
    tolerance is far too small; the per-mask :data:`MAX_FAR_SHARE` catches only the blatant cases."""
    d = cfg.data
    _check_palette_ids(samples, cfg)
    if d.mask_format != "colors" or d.mask_color_tolerance is None:
        return
    table, table_ids, source = color_table(cfg)
    shares = []
    for s in [x for x in samples if x.mask is not None][:N_COLOR_CHECK]:
        rgb = read_mask_array(s.mask, d.max_image_pixels, lossy_ok=True, kind="colors", pair=s.pair,
                              exif=d.exif_orientation)
        _, far = colors_to_ids(rgb, table, table_ids, d.mask_color_tolerance, str(s.mask), source, return_far=True)
        shares.append(far / max(rgb.shape[0] * rgb.shape[1], 1))
    if shares and float(np.mean(shares)) > MAX_MEAN_FAR_SHARE:
        first = samples[0].mask
        raise DataError(
            f"{first}: in the first {len(shares)} masks, {100 * float(np.mean(shares)):.0f}% of the pixels are farther than "
            f"data.mask_color_tolerance={d.mask_color_tolerance:g} from every colour of {source}: these are not colour masks "
            "of that table (the photo half of an image|label file? data.pair_split), or the tolerance is far too small"
        )


def _check_palette_ids(samples: list[Sample], cfg: Config) -> None:
    """Palette masks read by index (``data.mask_format: ids``, as VOC's: the index is the class) whose palette gives an
    index another class's colour of the classes CSV: a colour label image saved as a palette PNG (pngquant, optipng
    and PIL's quantize number the colours by first use), whose indices are not class ids. The first
    :data:`N_COLOR_CHECK` such masks are read before training; a palette of other colours (VOC's own) passes."""
    from .image_file import open_header

    d = cfg.data
    ids_read = d.mask_format == "ids" and d.mask_channel is None and not d.mask_values and d.task != "binary"
    df = _classes_csv(cfg) if ids_read else None
    if df is None or not {"r", "g", "b"} <= set(df.columns):
        return
    void = _void_rows(df)
    # the classes' colours, not the void rows' (VOC's void is listed under any id)
    class_of = {(int(r), int(g), int(b)): int(i) for i, r, g, b, v in zip(df["id"], df["r"], df["g"], df["b"], void)
                if not v and int(i) != d.ignore_index}
    for s in [x for x in samples if x.mask is not None and x.pair is None][:N_COLOR_CHECK]:
        with open_header(s.mask) as im:
            if im.mode != "P" or im.size[0] * im.size[1] > d.max_image_pixels:
                return
            palette = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
            used = np.flatnonzero(np.bincount(np.asarray(im).ravel(), minlength=len(palette)))
        for i in used[used < len(palette)]:
            if palette[i].tolist() == [i, i, i]:  # a grey ramp (an id mask converted to P, Pillow's default palette)
                continue
            j = class_of.get(tuple(palette[i].tolist()))
            if j is not None and j != i:
                raise DataError(f"{s.mask}: a palette mask whose index {i} is coloured {palette[i].tolist()}, the colour "
                                f"{d.classes_csv} gives class {j}: its indices are not class ids (a colour label image "
                                "saved as a palette PNG numbers its colours by first use); read its colours with "
                                "data.mask_format: colors")


_NOT_YET, _UNKNOWN, _FAR = -2, -3, -4  # LUT entries besides ids and void (-1)
_LUTS: dict[tuple, np.ndarray] = {}


def _color_lut(colors: np.ndarray, ids: np.ndarray, tolerance: float | None) -> np.ndarray:
    """``int16 (2**24,)``: packed RGB -> id, filled lazily (32 MB per colour table, a few kept)."""
    key = (colors.tobytes(), ids.tobytes(), tolerance)
    if key not in _LUTS:
        if len(_LUTS) >= 4:
            _LUTS.pop(next(iter(_LUTS)))
        lut = np.full(1 << 24, _NOT_YET, np.int16 if int(ids.max(initial=0)) < 2**15 else np.int32)
        _LUTS[key] = lut
    return _LUTS[key]
