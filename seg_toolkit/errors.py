"""The one base class of every error a user can cause (a config key, a file, a row, a run folder).

The CLI prints such an error as one line and exits with code 2; anything else is a bug
and keeps its traceback. Each subclass also derives from the builtin that fits
(``ValueError``, ``FileNotFoundError`` ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional

__all__ = ["SegToolkitError", "ConfigError", "closest"]


def closest(value: object, choices: Iterable[object], cutoff: float = 0.6) -> Optional[str]:
    """The choice spelled most like ``value`` (difflib), for an error's "did you mean" hint; None when none is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=cutoff)
    return close[0] if close else None


class SegToolkitError(Exception):
    """Something the user supplied (config, data, a run folder, a file) is not what was expected."""


class ConfigError(SegToolkitError, ValueError):
    """A config value or key is not what the schema expects (raised at load; re-exported by ``seg_toolkit.config``)."""
