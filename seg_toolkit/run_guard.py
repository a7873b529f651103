"""What a command may write into a run folder, and what it may delete: never the user's data or files.

:class:`RunGuard` is the safety half of :class:`seg_toolkit.run.Run` (which names every file):

* a run folder is never the data folder, inside it, or around it (:meth:`RunGuard.check_location`,
  against every input the config reads: :func:`input_paths`);
* a command writes only into an empty folder or a run folder (:meth:`RunGuard.check_writable`);
* nothing is deleted except by :meth:`RunGuard.remove`, and only files that runs write, in a
  folder that looks like a run (:meth:`RunGuard.looks_like_run`); files the user put there are named
  (:meth:`RunGuard.foreign_entries`) and the deletion refused. :func:`delete_path` is the package's
  one call that deletes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from .config import Config, ConfigError
from .config_yaml import read_yaml
from .files import WRITER, aside_folder, read_json, stale_asides
from .errors import SegToolkitError

log = logging.getLogger(__name__)

__all__ = ["RunGuard", "RunExistsError", "input_paths", "check_not_input", "check_not_run_file", "delete_path",
           "is_partial_write", "first_line", "OS_CLUTTER"]

#: Temporary files of :func:`seg_toolkit.files.atomic_write` (``.<name>.<random>.tmp``), folders :func:`delete_path`
#: moved aside whose deletion a kill cut short (``.<name>.<pid>-<host>.deleting``), and what operating systems leave
#: in folders (OS_CLUTTER): none is a user's file.
_TMP_FILE = re.compile(rf"\..+\.([A-Za-z0-9_]+\.tmp|{WRITER}\.deleting)")
OS_CLUTTER = (".DS_Store", "Thumbs.db", "desktop.ini")


def _foreign_inside(folder: Path, written: re.Pattern) -> list[Path]:
    """The files under ``folder`` whose path relative to it (``/`` between parts) is not one ``written`` matches (a
    run's), leaving out interrupted writes and the OS's clutter."""
    out = []
    for f in sorted(folder.rglob("*")):
        if f.is_dir() and not f.is_symlink():
            continue
        if f.name in OS_CLUTTER or _TMP_FILE.fullmatch(f.name) or written.fullmatch(f.relative_to(folder).as_posix()):
            continue
        out.append(f)
    return out


def is_partial_write(name: str) -> bool:
    """Whether a file name is a temporary file of :func:`seg_toolkit.files.atomic_write` (a write a kill cut short)."""
    return bool(_TMP_FILE.fullmatch(name))


class RunExistsError(SegToolkitError, FileExistsError):
    """The run folder already holds work (or files that are not a run's) that this command would overwrite."""


def input_paths(cfg: Config) -> list[tuple[str, Path]]:
    """``(config key, path)`` of everything the config reads as input: the data root, every
    file and folder below it that the config names (relative ones resolved against ``data.root``),
    and a local encoder weights file."""
    d = cfg.data
    out: list[tuple[str, Path]] = [("data.root", Path(d.root))]
    for key in ("train_images", "train_masks", "train_csv", "test_images", "sample_submission", "classes_csv"):
        value = getattr(d, key)
        if value:
            out.append((f"data.{key}", cfg.data_path(value)))
    for key in ("train_lists", "test_lists"):
        out += [(f"data.{key}", cfg.data_path(v)) for v in getattr(d, key)]
    w = cfg.model.encoder_weights
    if w and ("/" in w or "\\" in w or w.lower().endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))):
        out.append(("model.encoder_weights", Path(w).expanduser()))
    return out


def check_not_input(cfg: Config, path: Path, what: str) -> None:
    """Refuse to write ``path`` (``what``: the option that named it) when it is a file the config reads, or lies in a
    folder of them other than ``data.root`` itself (``--out data/train.csv --overwrite`` replaced the labels)."""
    here = Path(path).resolve()
    for key, p in input_paths(cfg):
        p = p.resolve()
        if here == p or (key != "data.root" and p in here.parents):
            how = "is" if here == p else "lies inside"
            raise ConfigError(f"{what} {path} {how} {key} {p}, which the config reads; write it elsewhere "
                              "(--overwrite never replaces the data)")


def check_not_run_file(path: Path, runs: list[Path], header: str, what: str, data_root: Path | None = None) -> None:
    """Refuse an output that is a folder, an existing file inside ``data_root`` (``--out data/test_solution.csv
    --overwrite`` replaced the user's answers, whose header is a submission's), or an existing file inside a run
    folder the command reads unless it is an earlier submission (its first line is ``header``): ``predict --out
    runs/x/fold_0/best.pt --overwrite`` replaced the checkpoint with the CSV."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; name a file, e.g. {path / 'submission.csv'}")
    if not path.exists():
        return
    here = path.resolve()
    earlier_submission = first_line(path).lstrip("\ufeff").rstrip("\r\n") == header
    for run in runs:
        if Path(run).resolve() in here.parents and not earlier_submission:
            raise ConfigError(f"{what} {path} is a file of the run {run}, which this command reads; write the submission "
                              "elsewhere (--overwrite never replaces a run's files)")
    if data_root is not None and Path(data_root).resolve() in here.parents:
        raise ConfigError(f"{what} {path} is a file in data.root {data_root}; write the submission elsewhere (--overwrite "
                          "never replaces the data)")


def delete_path(target: Path, announce: bool = True) -> None:
    """The one place the package deletes a file or folder. Callers check first that it is theirs:
    :meth:`Run.remove` (a run's own files), ``bundle`` (its own partial folder, or a folder holding
    its ``bundle.json`` under ``--overwrite``)."""
    if announce:
        log.warning("deleting %s", target)
    if target.is_dir() and not target.is_symlink():
        left = stale_asides(target, "deleting")  # earlier deletions of it that a kill cut short
        if left:
            log.info("removing %s: deletion(s) cut short (their process is gone)", ", ".join(map(str, left)))
        for folder in (*left, target):  # the leftovers first: one of this pid's would be in the way of the rename
            if folder == target:  # a kill while deleting leaves the whole folder, or none of it, under its name
                folder = aside_folder(target, "deleting")
                os.replace(target, folder)
            shutil.rmtree(folder)
    else:
        target.unlink()  # a file, or a link (never followed)


def first_line(path: Path) -> str:
    """The first line of a text file; "" when it is missing or unreadable."""
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline()
    except (OSError, UnicodeDecodeError):
        return ""


class RunGuard:
    """Mixin of :class:`seg_toolkit.run.Run`: the checks before a run folder is written or deleted.
    ``RUN_FILES``, ``FOLD_FILE`` and ``FOLD_DIR`` (what runs write) are spelled on ``Run`` beside the paths."""

    dir: Path
    RUN_FILES: tuple[str, ...]
    FOLD_FILE: re.Pattern
    FOLD_DIR: re.Pattern

    def check_location(self, cfg: Config) -> None:
        """Refuse a run folder that is, contains or lies inside ``data.root`` or any input the config
        names (:func:`input_paths`): deleting or writing it would touch the user's data."""
        here = self.dir.resolve()
        for key, path in input_paths(cfg):
            p = path.resolve()
            if here == p:
                how = "is"
            elif here in p.parents:
                how = "contains"
            elif p in here.parents:
                how = "lies inside"
            else:
                continue
            raise ConfigError(
                f"run folder {self.dir} (runs_dir/experiment) {how} {key} {path}; a run folder must be apart "
                "from the data it reads: set runs_dir (or experiment) to a folder outside the data"
            )

    def _marker(self, audit: bool = False) -> str | None:
        """The first sign that the folder was made by this toolkit (``audit``: or by ``audit`` alone), or None."""
        if self.config_yaml.is_file():
            try:
                data = read_yaml(self.config_yaml)  # as load_config reads it
                if {"experiment", "data", "model"} <= set(data):
                    return self.config_yaml.name
            except (ConfigError, OSError):  # not YAML, not a mapping, unreadable: not a sign
                pass
        if first_line(self.folds_csv).startswith("id,fold"):
            return self.folds_csv.name
        if self.ensemble_json.is_file():
            return self.ensemble_json.name
        try:  # the mark of an OOF rewrite, or of an ensemble's build stopped before its ensemble.json
            if isinstance((read_json(self.oof_incomplete_json) or {}).get("command"), str):
                return self.oof_incomplete_json.name
        except ConfigError:
            pass
        if audit and first_line(self.audit_problems_csv).strip() == "kind,where,message":  # `audit` before `train`
            return self.audit_problems_csv.name
        for p in self.dir.glob("fold_*"):
            if self.FOLD_DIR.fullmatch(p.name) and p.is_dir() and any(self.FOLD_FILE.fullmatch(q.name) for q in p.iterdir()):
                return p.name + "/"
        return None

    def looks_like_run(self, audit: bool = False) -> bool:
        """True when the folder holds a config.yaml / folds.csv / ensemble.json / fold_<k>/ of this toolkit
        (``audit``: or the audit_problems.csv that ``audit CONFIG`` writes there before training)."""
        return self.dir.is_dir() and self._marker(audit) is not None

    def foreign_entries(self) -> list[Path]:
        """Entries of the folder, of its ``fold_<k>/`` (and their ``failed_attempt_<n>/``) and of the folders runs
        write (``oof/``, ``report/``, ...: ``RUN_DIR_FILES``) that no run writes: files the user put there."""
        out = []
        for p in sorted(self.dir.iterdir()):
            if p.name in OS_CLUTTER or _TMP_FILE.fullmatch(p.name):
                continue
            if self.FOLD_DIR.fullmatch(p.name) and p.is_dir():
                for q in sorted(p.iterdir()):
                    if q.name in OS_CLUTTER or _TMP_FILE.fullmatch(q.name):
                        continue
                    if not self.FOLD_FILE.fullmatch(q.name):
                        out.append(q)
                    elif q.is_dir() and not q.is_symlink():  # failed_attempt_<n>/: an attempt's fold files
                        out += _foreign_inside(q, self.FOLD_FILE)
            elif p.name not in self.RUN_FILES:
                out.append(p)
            elif p.name in self.RUN_DIR_FILES and p.is_dir() and not p.is_symlink():
                out += _foreign_inside(p, re.compile(self.RUN_DIR_FILES[p.name]))
        return out

    def check_writable(self, cfg: Config) -> None:
        """Before a command writes into the folder: it is apart from the data, and if it already holds
        files it is a run folder (a run would otherwise write its files among the user's)."""
        self.check_location(cfg)
        if self.dir.exists() and not self.dir.is_dir():
            raise RunExistsError(f"{self.dir} is a file, not a run folder; choose another experiment name or runs_dir")
        if self.dir.is_dir() and not self.looks_like_run(audit=True) and any(
                p.name not in OS_CLUTTER and not _TMP_FILE.fullmatch(p.name) for p in self.dir.iterdir()):
            # a kill while a new run wrote its first config.yaml leaves only that write's temporary file
            raise RunExistsError(
                f"{self.dir} holds files but is not a run folder (no config.yaml, folds.csv, ensemble.json or "
                "fold_<k>/ of seg_toolkit); choose another experiment name or runs_dir"
            )

    def check_removable(self, cfg: Config, path: Path | None = None) -> None:
        """What :meth:`remove` checks before it deletes anything, raising :class:`RunExistsError` (or
        :class:`ConfigError` for the data); callers deleting several entries check them all first. Refused when

        * the run folder is, contains or lies inside the data the config reads (:meth:`check_location`);
        * ``path`` is not a run entry inside this folder;
        * the folder does not look like a run folder (:meth:`looks_like_run`);
        * the folder, or the entry (a ``fold_<k>/``), holds files no run writes (:meth:`foreign_entries`): they are named.

        A missing folder or entry passes (there is nothing to delete).
        """
        self.check_location(cfg)
        target = self.dir if path is None else Path(path)
        rel: tuple[str, ...] = ()
        if path is not None:
            inside = self.dir.resolve() in target.resolve().parents
            rel = target.resolve().relative_to(self.dir.resolve()).parts if inside else ()
            if not rel or rel[0] not in self.RUN_FILES and not self.FOLD_DIR.fullmatch(rel[0]):
                raise RunExistsError(f"refusing to delete {target}: it is not a file that runs write inside {self.dir}")
        if not target.exists():
            return
        if not self.looks_like_run(audit=True):
            raise RunExistsError(
                f"refusing to delete {self.dir}: it does not look like a run folder (no config.yaml, folds.csv, "
                "ensemble.json or fold_<k>/ of seg_toolkit); choose another experiment name or runs_dir"
            )
        foreign = [p for p in self.foreign_entries() if p.relative_to(self.dir).parts[:len(rel)] == rel]
        if foreign:
            names = ", ".join(str(p.relative_to(target)) + ("/" if p.is_dir() else "") for p in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise RunExistsError(
                f"refusing to delete {target}: it holds {len(foreign)} file(s) that seg_toolkit did not write "
                f"({names}{more}); move them out, or choose another experiment name"
            )

    def remove(self, cfg: Config, path: Path | None = None, scratch: bool = False) -> None:
        """Delete the run folder (``path=None``) or one entry of it that runs write (``path``, e.g. a
        ``fold_<k>/`` or :attr:`tta_search_root`): the only way anything is deleted, after
        :meth:`check_removable`. A missing folder or entry is not an error. ``scratch``: a command's own working
        folder, removed as it ends (said at INFO: a warning read as something gone wrong)."""
        self.check_removable(cfg, path)
        target = self.dir if path is None else Path(path)
        if target.exists():
            if scratch:
                log.info("removing %s (working files)", target)
            delete_path(target, announce=not scratch)
