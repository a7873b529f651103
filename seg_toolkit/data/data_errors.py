"""The data layer's errors (re-exported by :mod:`seg_toolkit.data.io`, where they are imported from)."""

from __future__ import annotations

from ..errors import SegToolkitError
from ..rle import RLEError

__all__ = ["DataError", "RLERowError", "ObjectOverlapError"]


class DataError(SegToolkitError, ValueError):
    """Input data (an image, a mask, a CSV row) is not what the config says it should be."""


class RLERowError(DataError, RLEError):
    """A malformed run-length string in a data file: a :class:`DataError` (the row) and an
    :class:`~seg_toolkit.rle.RLEError` (the string); the message names the file, line and id."""


class ObjectOverlapError(DataError):
    """Two truth objects of one image overlap, which an object-matching metric cannot score; the message
    names the image's object files or rows."""
