"""Run-length encoding in the Kaggle convention.

A mask of shape ``(height, width)`` is flattened in an explicit pixel ``order``:
``"F"`` column-major (top to bottom, then left to right: the Kaggle default, as in TGS
Salt, DSB 2018, Severstal) or ``"C"`` row-major (left to right, then top to bottom: e.g.
Airbus). The string is space-separated ``start length`` pairs, starts 1-indexed, runs
sorted and not overlapping. An empty mask encodes as the empty string.

Both directions are vectorised with NumPy (no Python loop over runs or pixels).
"""

from __future__ import annotations

import re

import numpy as np

from .errors import SegToolkitError

__all__ = ["RLEError", "rle_encode", "rle_decode", "rle_to_runs", "rle_area"]

_ORDERS = ("F", "C")
_INT = re.compile(r"-?[0-9]+")
_ALL_INTS = re.compile(r"\s*-?[0-9]+(?:\s+-?[0-9]+)*\s*")


class RLEError(SegToolkitError, ValueError):
    """A run-length string is malformed; the message names where it came from."""


def _check_order(order: str) -> None:
    if order not in _ORDERS:
        raise ValueError(f"order must be 'F' (column-major) or 'C' (row-major), got {order!r}")


def rle_encode(mask: np.ndarray, order: str = "F") -> str:
    """Encode the non-zero pixels of a 2-D ``mask`` as a Kaggle RLE string.

    ``order`` is the pixel order, ``"F"`` (column-major) or ``"C"`` (row-major).
    """
    _check_order(order)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D (height, width) mask, got shape {mask.shape}")
    pixels = np.zeros(mask.size + 2, dtype=np.int8)
    pixels[1:-1] = mask.ravel(order=order) != 0
    # indices (1-based) where the value changes: starts and ends of runs alternate
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    if changes.size == 0:
        return ""
    changes[1::2] -= changes[::2]
    return " ".join(changes.astype(str).tolist())


def rle_to_runs(rle: str | None, n_pixels: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate ``rle`` into 0-based ``(starts, lengths)`` arrays.

    Raises :class:`RLEError` naming ``where`` (e.g. ``"train.csv row 17 (id abc)"``) for an
    odd token count, a token that is not an integer, a start < 1, a length < 1, runs that
    are unsorted or overlap, or a run past the last of ``n_pixels`` pixels.
    """
    ctx = f"{where}: " if where else ""
    if rle is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"{ctx}RLE must be a string of 'start length' pairs, got {type(rle).__name__} {rle!r}")
    tokens = rle.split()
    if not tokens:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(tokens) % 2:
        raise RLEError(f"{ctx}RLE has an odd number of tokens ({len(tokens)}); expected 'start length' pairs")
    if not _ALL_INTS.fullmatch(rle):
        bad = next(t for t in tokens if not _INT.fullmatch(t))
        raise RLEError(f"{ctx}RLE token {bad!r} is not an integer; expected 'start length' pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except OverflowError:
        raise RLEError(f"{ctx}RLE has a number too large for any image") from None
    starts, lengths = values[0::2], values[1::2]
    if (starts < 1).any():
        i = int(np.argmax(starts < 1))
        raise RLEError(f"{ctx}RLE start {starts[i]} (pair {i + 1}) is < 1; starts are 1-indexed")
    if (lengths < 1).any():
        i = int(np.argmax(lengths < 1))
        raise RLEError(f"{ctx}RLE length {lengths[i]} (pair {i + 1}) is < 1; every run must cover a pixel")
    ends = starts + lengths - 1  # last pixel of each run, 1-based
    if len(starts) > 1:
        bad = starts[1:] <= ends[:-1]
        if bad.any():
            i = int(np.argmax(bad)) + 1
            kind = "unsorted" if starts[i] < starts[i - 1] else "overlapping"
            raise RLEError(
                f"{ctx}RLE runs are {kind}: pair {i + 1} starts at {starts[i]} but pair {i} "
                f"covers {starts[i - 1]}..{ends[i - 1]}; runs must be sorted and not overlap"
            )
    if ends[-1] > n_pixels:
        raise RLEError(
            f"{ctx}RLE run {starts[-1]} {lengths[-1]} ends at pixel {ends[-1]}, past the image's {n_pixels} pixels"
        )
    return starts - 1, lengths


def rle_decode(rle: str | None, shape: tuple[int, int], order: str = "F", where: str = "") -> np.ndarray:
    """Decode ``rle`` into a ``uint8`` mask of ``shape = (height, width)`` with 1 = foreground.

    ``order`` must be the order the string was encoded in. Malformed input raises
    :class:`RLEError` naming ``where``.
    """
    _check_order(order)
    height, width = (int(s) for s in shape)
    n = height * width
    starts, lengths = rle_to_runs(rle, n, where)
    delta = np.zeros(n + 1, dtype=np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + lengths, -1)
    flat = np.cumsum(delta[:-1], dtype=np.int32).astype(np.uint8)
    return flat.reshape((height, width), order=order)


def rle_area(rle: str | None, where: str = "") -> int:
    """Number of foreground pixels of ``rle`` without decoding it (no bound check on the image)."""
    _, lengths = rle_to_runs(rle, np.iinfo(np.int64).max, where)
    return int(lengths.sum())
