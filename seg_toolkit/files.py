"""Files written whole or not at all, and read back with errors that name them.

Every JSON / text / NPY artifact of a run goes through :func:`atomic_write` (a temporary file in
the same folder, then a rename): a reader sees the old file or the new one, never half of one,
and a failed write leaves the old file as it was. :func:`read_oof` is the one reader of OOF
probability files. Where each file lives is :class:`seg_toolkit.run.Run`'s business.
"""

from __future__ import annotations

import contextlib
import logging
import csv
import glob
import hashlib
import io
import json
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["atomic_write", "stale_writes", "aside_folder", "stale_asides", "remove_stale_writes", "temp_prefix", "wide_csv_fields", "default_file_mode", "write_text", "write_json", "json_ready", "nan_if_null", "read_json", "write_npy", "read_oof"]


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
#: ``<pid>-<host>`` in a temporary file's or folder's name (:func:`temp_prefix`): the process that made it, and where
WRITER = r"(?P<pid>\d+)-(?P<host>[A-Za-z0-9_-]+)"
#: ``.<name>.<pid>-<host>.<random>.tmp``: an :func:`atomic_write` in progress, or one a kill cut short
_WRITE_TMP = re.compile(rf"\..+\.{WRITER}\.[A-Za-z0-9_]+(\.rows)?\.tmp")


def temp_prefix(path: Path) -> str:
    """``.<name>.<pid>-<host>.``: the start of a temporary file's name beside ``path`` (``mkstemp(prefix=...)``), so a
    later command tells one a killed writer left (:func:`stale_writes`) from one being written."""
    return f".{path.name}.{os.getpid()}-{_HOST}."


def stale_writes(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The temporary files under ``folder`` of :func:`atomic_write` calls whose process is gone (killed mid-write):
    written on this host by a pid that no longer runs. Another process's write in progress, or one from another
    host sharing the folder, is not one of them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        m = _WRITE_TMP.fullmatch(p.name)
        if m and p.is_file() and _gone(m):
            out.append(p)
    return sorted(out)


def _gone(m: re.Match) -> bool:
    """The writer a temporary name's ``pid`` and ``host`` groups name is gone: on this host, and not running."""
    return m["host"] == _HOST and not _alive(int(m["pid"]))


def aside_folder(path: Path, kind: str) -> Path:
    """``.<name>.<pid>-<host>.<kind>`` beside ``path``: a folder this process works in before it renames it to
    ``path`` (``partial``: a bundle being built), or that it moved ``path`` to (``deleting``:
    :func:`seg_toolkit.run_guard.delete_path`), so a kill leaves the whole folder, or none of it, under its name."""
    return path.with_name(f"{temp_prefix(path)}{kind}")


def stale_asides(path: Path, kind: str) -> list[Path]:
    """The :func:`aside_folder` folders of ``path`` left by a process that is gone (killed on this host), and this
    process's own (a container's command is pid 1 again after a restart, on the same host name)."""
    out = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.{kind}"):
        m = re.fullmatch(rf"\.{re.escape(path.name)}\.{WRITER}\.{re.escape(kind)}", p.name)
        if m and p.is_dir() and (_gone(m) or p == aside_folder(path, kind)):
            out.append(p)
    return sorted(out)


def remove_stale_writes(folder: str | Path, recursive: bool = False, name: str | None = None) -> None:
    """Delete :func:`stale_writes` (only those of ``name``'s writes when given), each logged."""
    for p in stale_writes(folder, recursive):
        if name is None or p.name.startswith(f".{name}."):
            log.info("removing %s: a write cut short (its process is gone)", p)
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def atomic_write(path: str | Path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename over ``path``: readers see the old file or the new one.

    If writing fails (a full disk, an interrupt) the previous file is left untouched and
    the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextlib.contextmanager
def wide_csv_fields():
    """Python's ``csv`` module without its 131,072-character field limit while the block runs (restored after): one
    RLE field of a large image runs to megabytes (HuBMAP's kidney masks), which pandas reads but ``csv.reader`` refused
    with a bare ``_csv.Error``."""
    old = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the largest the C long of every platform holds
    try:
        yield
    finally:
        csv.field_size_limit(old)


def default_file_mode() -> int:
    """What ``open()`` would give a new file under the current umask (0644 with the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _json_default(x: Any) -> Any:  # what json_ready left: NumPy values are Python numbers by then
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints, exports, bundles, ensemble members)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8, atomically (:func:`atomic_write`) and on disk before the rename (fsync): the small state
    files (done.json, cv.json, folds.csv, ...) survive a power loss or a killed VM whole, not as an empty file
    under the new name. Large files (checkpoints, OOF arrays) skip the fsync: a checkpoint is checked when read and
    falls back to prev.pt, OOF files are remade by ``seg-toolkit oof``."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)
    return Path(path)


def json_ready(x: Any) -> Any:
    """``x`` as standard JSON holds it: NaN and infinities as null (Python's ``json`` writes a bare ``NaN``, which
    JavaScript's ``JSON.parse`` and other strict parsers refuse), NumPy scalars and arrays as Python numbers and
    lists. :func:`nan_if_null` reads a float field back."""
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, dict):  # a NumPy key (a class id) as the Python number json can write
        return {(k.item() if isinstance(k, np.generic) else k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


def nan_if_null(x: Any) -> float:
    """A float field of a JSON file written by :func:`write_json`: null (a NaN when written) back to NaN."""
    return math.nan if x is None else float(x)


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented standard JSON (:func:`json_ready`: NaN written as null), atomically."""
    return write_text(path, json.dumps(json_ready(data), indent=2, default=_json_default, allow_nan=False))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is absent; a damaged file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); delete it or write it again") from None
    if not isinstance(data, dict):  # every JSON file the toolkit writes is an object: a list here was .get() -> traceback
        raise ConfigError(f"{path}: expected a JSON object ({{...}}), got {type(data).__name__}; delete it or write it again")
    return data


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    return Path(path)


def read_oof(path: str | Path, ndim: int = 3) -> np.ndarray:
    """One OOF file: ``uint8 (C, H, W)`` probabilities ``round(p * 255)`` (``ndim=1``: the classifier's
    ``(C,)``). Anything else is a :class:`~seg_toolkit.data.io.DataError` naming the file (never
    unpickled: ``allow_pickle=False``)."""
    from .data.io import DataError  # lazy: the data package imports torch and albumentations

    path = Path(path)
    remake = "remake it with `seg-toolkit oof CONFIG`"
    if not path.is_file():
        raise DataError(f"{path}: OOF file not found; {remake}")
    try:
        q = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: OOF file holds pickled Python objects, which are never loaded; {remake}") from None
        raise DataError(f"{path}: not a readable .npy OOF file ({e}); {remake}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy OOF file ({type(e).__name__}: {e}); {remake}") from None
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8 or q.ndim != ndim:
        what = f"{q.dtype} array of shape {q.shape}" if isinstance(q, np.ndarray) else type(q).__name__
        raise DataError(f"{path}: expected uint8 {'(C, H, W)' if ndim == 3 else '(C,)'} OOF probabilities, got a {what}; {remake}")
    return q
