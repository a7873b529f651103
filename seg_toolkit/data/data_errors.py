"""The data layer's errors (re-exported by :mod:`seg_toolkit.data.io`, where they are imported from)."""

from __future__ import annotations

from ..errors import SegToolkitError
from ..rle import RLEError

__all__ = ["DataError", "RLERowError", "ObjectOverlapError", "mask_size_error"]


class DataError(SegToolkitError, ValueError):
    """Input data (an image, a mask, a CSV row) is not what the config says it should be."""


def mask_size_error(path: object, got: tuple[int, ...], image: str, hw: tuple[int, ...]) -> DataError:
    """A mask file of ``got`` (H, W) beside ``image`` (its name in words) of ``hw``: one wording for the check before
    training and the readers'."""
    return DataError(f"{path}: mask is {got[0]}x{got[1]} (HxW) but {image} is {hw[0]}x{hw[1]}; image and mask must have "
                     "the same size")


class RLERowError(DataError, RLEError):
    """A malformed run-length string in a data file: a :class:`DataError` (the row) and an
    :class:`~seg_toolkit.rle.RLEError` (the string); the message names the file, line and id."""


class ObjectOverlapError(DataError):
    """Two truth objects of one image overlap, which an object-matching metric cannot score; the message
    names the image's object files or rows."""
