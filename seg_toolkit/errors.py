"""The one base class of every error a user can cause (a config key, a file, a row, a run folder).

The CLI prints such an error as one line and exits with code 2; anything else is a bug
and keeps its traceback. Each subclass also derives from the builtin that fits
(``ValueError``, ``FileNotFoundError`` ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["SegToolkitError", "ConfigError"]


class SegToolkitError(Exception):
    """Something the user supplied (config, data, a run folder, a file) is not what was expected."""


class ConfigError(SegToolkitError, ValueError):
    """A config value or key is not what the schema expects (raised at load; re-exported by ``seg_toolkit.config``)."""
