"""One writer at a time for a run's OOF files, ``cv.json`` and ``postprocess.json``: ``run.lock``.

A run can be written by several processes at once: the ``train --fold K`` jobs of an array,
and ``tune --tta`` or ``oof`` started while one of them still trains. Each of these rewrites
files that must agree with one another (the OOF probabilities, the TTA they were made with,
the post-processing tuned on them, cv.json). :func:`run_lock` makes those rewrites take turns:
a fold job that finishes while ``tune --tta`` runs waits for it, then makes its OOF files with
the TTA it chose, instead of with the old one beside files already rewritten.

The lock is ``flock(2)`` on ``Run.lock_file``, which names its holder (command, pid, host, start)
for whoever waits and is removed on release; the kernel drops the lock when its holder exits, so a
killed process never leaves a run locked (only the file, which the next writer takes over). Within
one thread the lock is re-entrant (``tune --tta`` rescoring cv.json and tuning inside its own hold). Where ``fcntl`` does not
exist (Windows), or the run folder is read-only, the lock is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .files import remove_stale_writes
from .run import Run

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger(__name__)

__all__ = ["run_lock", "lock_holder", "fold_lock", "lock_held"]

_held = threading.local()  # per thread: {lock path: depth}
WAIT_LOG_S = 60.0


def _holder_text(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        data = {}
    if not data:
        return "another process"
    return f"`{data.get('command', '?')}` (pid {data.get('pid', '?')} on {data.get('host', '?')}, since {data.get('started', '?')})"


def _name_holder(fd: int, command: str) -> None:
    """Write who holds the lock into its file, for whoever waits for it or is refused (:func:`_holder_text`)."""
    info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def run_lock(run: Run, command: str, poll_s: float = 0.5, path: Path | None = None) -> Iterator[None]:
    """Hold ``run``'s lock while the block rewrites its OOF files / cv.json / postprocess.json (``path``: another lock
    file of the run, e.g. :attr:`~seg_toolkit.run.Run.tracker_lock_file`).

    Waits for the holder (logged with its command, pid and start time, and again every minute);
    ``command`` is what waiters see. Re-entrant within a thread."""
    path = Path(run.lock_file if path is None else path)
    depth = getattr(_held, "depth", None)
    if depth is None:
        depth = _held.depth = {}
    key = str(path.resolve())
    if fcntl is None or depth.get(key):
        depth[key] = depth.get(key, 0) + 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    try:
        fd = _acquire(run, path, command, poll_s)
    except OSError as e:  # a read-only run folder (a Kaggle input dataset): nothing can be rewritten there anyway
        log.debug("%s: no lock (%s)", path, e)
        fd = None
    if fd is None:
        yield
        return
    try:
        _name_holder(fd, command)
        if path == Path(run.lock_file):  # the writers of the run's shared files: what killed ones left half-written
            remove_stale_writes(run.dir, recursive=True)
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
            path.unlink(missing_ok=True)  # still held: a waiter on this file sees it gone and opens the next one
    finally:
        os.close(fd)  # releases the flock


def _acquire(run: Run, path: Path, command: str, poll_s: float) -> int:
    """Open ``path`` and flock it, waiting for the holder; retried when the holder removed the file meanwhile."""
    t0 = last = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while not _try_lock(fd):  # polled, not a blocking flock: Ctrl-C stays immediate
                now = time.monotonic()
                if t0 is None:
                    t0 = last = now
                    log.warning("%s: waiting for %s to finish with this run before `%s` writes to it", run.dir,
                                _holder_text(fd), command)
                elif now - last >= WAIT_LOG_S:
                    last = now
                    log.warning("%s: still waiting for %s (%.0f s)", run.dir, _holder_text(fd), now - t0)
                time.sleep(poll_s)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                if t0 is not None:
                    log.info("%s: the lock is free after %.1f s", run.dir, time.monotonic() - t0)
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file its holder removed on release: take the current one


@contextmanager
def fold_lock(run: Run, fold: int, command: str = "train") -> Iterator[None]:
    """Hold ``fold_<k>/train.lock`` while this process trains the fold. Held by another process (a second ``train``
    of the same run, a job of an array given the same ``--fold``), it is a :class:`~seg_toolkit.run.RunExistsError`
    naming that process, not a second writer of the fold's checkpoints and metrics. Its file makes the fold started
    from its first step (:meth:`~seg_toolkit.run.Run.started_folds`), so another process can neither replace the
    run's config.yaml nor start the fold meanwhile; it is removed when the fold ends, kept (not held) by a kill."""
    from .run import RunExistsError

    path = run.fold_lock_file(fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:  # a read-only run folder: nothing can be trained there anyway
        log.debug("%s: no lock (%s)", path, e)
        yield
        return
    try:
        if not _try_lock(fd):
            raise RunExistsError(f"{run.dir}: fold {fold} is being trained by {_holder_text(fd)}; wait for it to end "
                                 "(then --resume trains what is left), or train another fold with --fold")
        _name_holder(fd, command)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Whether a process holds the flock of ``path`` now (this one included, through another open file)."""
    return _holder_of(path) is not None


def lock_holder(run: Run) -> str | None:
    """Who holds ``run``'s lock now (command, pid, start), or None when nobody does (or this thread does)."""
    path = Path(run.lock_file)
    if getattr(_held, "depth", {}).get(str(path.resolve())):
        return None
    return _holder_of(path)


def _holder_of(path: Path) -> str | None:
    """The text naming whoever holds the flock of ``path`` now; None when nobody does or there is no such file."""
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return None if _try_lock(fd) else _holder_text(fd)
    finally:
        os.close(fd)  # releases a lock the probe took
