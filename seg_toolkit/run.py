"""The run folder: every artifact path of an experiment is spelled here and nowhere else.

A run is either **trained** (``seg-toolkit train``: one model per fold) or an **ensemble**
(``seg-toolkit ensemble``: a weighted merge of trained runs, ``ensemble.json``). Both hold
what is needed to use them without the YAML they came from::

    runs/<experiment>/
      config.yaml            the resolved config (preprocessing, model, predict, postprocess)
      folds.csv              id -> fold, written once, shared by every member of an ensemble
      fold_balance.csv       images per validation fold holding each class / empty (with folds.csv)
      fold_<k>/              trained runs: best.pt, last.pt, prev.pt, best_e<epoch>.pt,
                             metrics.csv, done.json (written last), failed_attempt_<n>/
      ensemble.json          ensembles: members (run folders), weights, merge space, folds
      oof/<id>.npy           out-of-fold probabilities (uint8 p*255, C x H x W at the image's
                             own size) made by the predictor with the TTA that predict uses
      oof_summary.json       confusion, per-class and per-image OOF numbers: the report reads it
      cv.json                CV score, per fold, per class, confusion counts, how OOF was made
      postprocess.json       thresholds / min-area / empty gate tuned on oof/
      tta.json               TTA set and merge chosen on OOF (seg-toolkit tune --tta)
      lr_find.{json,png}     learning-rate range test (seg-toolkit lr-find)
      pseudo/fold_<k>.csv    pseudo-labelled test images added to fold k's training set (pseudo.teacher)
      amp.json               the precision train.amp resolved to (auto: measured once), used by every fold and by inference
      tracker.json           where the run is tracked (MLflow run ids / TensorBoard folder; seg_toolkit/track.py)
      tensorboard/           TensorBoard event files (track.backend: tensorboard, default track.uri)
      test_probs/<id>.npy    merged test probabilities before post-processing (predict.save_probs)
      test_masks/<id>.png    decided test masks, the submitted ones (predict.write_masks)
      evaluate_test.json     held-out score (seg-toolkit evaluate --split test)
      evaluations/<name>.json  score on a labelled folder (seg-toolkit evaluate --on DIR)
      export/fold_<k>.onnx   fold models exported to ONNX, export/export.json (seg-toolkit export)
      estimate.json          projected predict time (seg-toolkit predict --estimate)
      audit.html, audit_problems.csv, audit_samples.png, audit_batch.png   seg-toolkit audit
      learning_curves.{html,png}, report/

Every JSON / CSV / NPY goes through :func:`atomic_write`: a reader sees the old file or
the new one, never half of one. Every OOF file is read by :func:`read_oof`, which names a bad
file. Nothing is deleted except by :meth:`Run.remove`, which removes only what a run wrote:
never a folder that is, holds or lies inside the data the config reads (:meth:`Run.check_location`),
never a folder that does not look like a run, never a file the toolkit did not write.
"""

from __future__ import annotations

import io
import os
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from .checkpoint import atomic_write
from .config import Config, ConfigError, load_config
from .errors import SegToolkitError

log = logging.getLogger(__name__)

__all__ = ["Run", "RunExistsError", "write_json", "read_json", "write_npy", "write_text", "read_oof", "input_paths"]


class RunExistsError(SegToolkitError, FileExistsError):
    """The run folder already holds work (or files that are not a run's) that this command would overwrite."""


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_text(path: str | Path, text: str) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is absent; a damaged file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); delete it or write it again") from None


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


#: What a run writes directly in its folder, besides ``fold_<k>/`` (names from the properties of
#: :class:`Run`) and the temporary files of :func:`atomic_write` (``.<name>.<random>.tmp``).
_RUN_FILES = ("config.yaml", "folds.csv", "folds.csv.tmp", "fold_balance.csv", "cv.json", "postprocess.json", "tta.json", "ensemble.json", "amp.json", "lr_find.json", "lr_find.png", "pseudo",
              "oof", "oof_summary.json", "test_probs", "evaluate_test.json", "report", "learning_curves.html",
              "learning_curves.png", "audit.html", "audit_problems.csv", "tta_search", "test_masks", "evaluations",
              "audit_samples.png", "audit_batch.png", "tracker.json", "tensorboard",
              "export", "estimate.json")
_FOLD_FILE = re.compile(r"(best|last|prev)\.pt|best_e\d+\.pt|metrics\.csv|done\.json|failed_attempt_\d+")
_FOLD_DIR = re.compile(r"fold_\d+")
_TMP_FILE = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")
_OS_CLUTTER = (".DS_Store", "Thumbs.db", "desktop.ini")


def delete_path(target: Path, announce: bool = True) -> None:
    """The one place the package deletes a file or folder. Callers check first that it is theirs:
    :meth:`Run.remove` (a run's own files), ``bundle`` (its own partial folder, or a folder holding
    its ``bundle.json`` under ``--overwrite``)."""
    if announce:
        log.warning("deleting %s", target)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()  # a file, or a link (never followed)


class Run:
    """One run folder. Construct from a path (``Run("runs/tgs")``) or a config (``Run.of(cfg)``)."""

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)

    @classmethod
    def of(cls, cfg: Config) -> "Run":
        return cls(Path(cfg.runs_dir) / cfg.experiment)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.dir.resolve() == other.dir.resolve()

    def __hash__(self) -> int:
        return hash(self.dir.resolve())

    # ------------------------------------------------------------------ run-level files
    @property
    def config_yaml(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def folds_csv(self) -> Path:
        return self.dir / "folds.csv"

    @property
    def fold_balance_csv(self) -> Path:
        """Images per validation fold containing each class, and empty ones; written with folds.csv."""
        return self.dir / "fold_balance.csv"

    @property
    def cv_json(self) -> Path:
        return self.dir / "cv.json"

    @property
    def postprocess_json(self) -> Path:
        return self.dir / "postprocess.json"

    def pseudo_csv(self, fold: int | None) -> Path:
        """Pseudo-labels of fold ``fold``'s training set (None: one file for every fold, ``pseudo.per_fold: false``)."""
        return self.dir / "pseudo" / (f"fold_{fold}.csv" if fold is not None else "all.csv")

    def pseudo_soft_path(self, fold: int | None, image_id: str) -> Path:
        """The teacher's probabilities of one pseudo-labelled image (``pseudo.soft``; uint8 (C, H, W))."""
        return self.dir / "pseudo" / (f"fold_{fold}" if fold is not None else "all") / f"{image_id}.npy"

    @property
    def lr_find_json(self) -> Path:
        """``seg-toolkit lr-find``: every step's lr and loss, and the suggestions."""
        return self.dir / "lr_find.json"

    @property
    def lr_find_png(self) -> Path:
        return self.dir / "lr_find.png"

    @property
    def amp_json(self) -> Path:
        """The precision ``train.amp`` resolved to for this run (:mod:`seg_toolkit.amp`)."""
        return self.dir / "amp.json"

    @property
    def tta_json(self) -> Path:
        return self.dir / "tta.json"

    @property
    def tracker_json(self) -> Path:
        """Where the run is tracked: backend, URI, MLflow parent and per-fold run ids (``--resume`` continues them)."""
        return self.dir / "tracker.json"

    @property
    def ensemble_json(self) -> Path:
        return self.dir / "ensemble.json"

    @property
    def oof_dir(self) -> Path:
        return self.dir / "oof"

    @property
    def oof_summary_json(self) -> Path:
        """Everything the report shows that needs the targets (confusion, per-class and per-image
        numbers), written with cv.json so the report works when the data folder is gone."""
        return self.dir / "oof_summary.json"

    @property
    def test_probs_dir(self) -> Path:
        return self.dir / "test_probs"

    @property
    def test_masks_dir(self) -> Path:
        """Decided test masks as PNG files (``predict.write_masks``), exactly what the submission encodes."""
        return self.dir / "test_masks"

    def test_mask_path(self, image_id: str, cls: int | None = None) -> Path:
        """``test_masks/<id>.png``, or ``test_masks/<id>_<cls>.png`` for one class of a multilabel task."""
        return self.test_masks_dir / (f"{image_id}.png" if cls is None else f"{image_id}_{cls}.png")

    @property
    def evaluate_json(self) -> Path:
        return self.dir / "evaluate_test.json"

    @property
    def evaluations_dir(self) -> Path:
        """Scores of ``seg-toolkit evaluate --on DIR``, one JSON per labelled folder."""
        return self.dir / "evaluations"

    def evaluate_json_for(self, name: str) -> Path:
        """``evaluations/<name>.json``: the score of the run on one labelled folder (``name`` from :func:`evaluation_name`)."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ConfigError(f"evaluation name {name!r} must be a plain file name")
        return self.evaluations_dir / f"{name}.json"

    @property
    def export_dir(self) -> Path:
        """Exported fold models (``seg-toolkit export``): ``fold_<k>.onnx`` and ``export.json``."""
        return self.dir / "export"

    def onnx_path(self, fold: int) -> Path:
        return self.export_dir / f"fold_{fold}.onnx"

    @property
    def export_json(self) -> Path:
        """What was exported from which checkpoint, and the parity check against PyTorch."""
        return self.export_dir / "export.json"

    @property
    def estimate_json(self) -> Path:
        """The last ``seg-toolkit predict --estimate``: measured seconds per image and the projection."""
        return self.dir / "estimate.json"

    @property
    def audit_samples_png(self) -> Path:
        return self.dir / "audit_samples.png"

    @property
    def audit_batch_png(self) -> Path:
        return self.dir / "audit_batch.png"

    @property
    def report_dir(self) -> Path:
        return self.dir / "report"

    @property
    def learning_curves_html(self) -> Path:
        return self.dir / "learning_curves.html"

    @property
    def learning_curves_png(self) -> Path:
        return self.dir / "learning_curves.png"

    @property
    def audit_html(self) -> Path:
        return self.dir / "audit.html"

    @property
    def tta_search_root(self) -> Path:
        """Scratch folder of ``tune --tta`` (removed when it ends)."""
        return self.dir / "tta_search"

    def tta_search_dir(self, candidate: int) -> Path:
        """Scratch OOF of one TTA candidate while ``tune --tta`` compares them (removed afterwards)."""
        return self.tta_search_root / f"candidate_{candidate}"

    def oof_path(self, image_id: str, oof_dir: Path | None = None) -> Path:
        return (oof_dir or self.oof_dir) / f"{image_id}.npy"

    def oof_presence_path(self, image_id: str, oof_dir: Path | None = None) -> Path:
        """The empty-mask classifier's OOF probabilities of one image (``uint8 (C,)``; model.classifier)."""
        return (oof_dir or self.oof_dir) / "presence" / f"{image_id}.npy"

    def test_prob_path(self, image_id: str) -> Path:
        return self.test_probs_dir / f"{image_id}.npy"

    def test_presence_path(self, image_id: str) -> Path:
        """The empty-mask classifier's test probabilities of one image (``predict.save_probs``)."""
        return self.test_probs_dir / "presence" / f"{image_id}.npy"

    # ------------------------------------------------------------------ fold files
    def fold_dir(self, fold: int) -> Path:
        return self.dir / f"fold_{fold}"

    def best_pt(self, fold: int) -> Path:
        return self.fold_dir(fold) / "best.pt"

    def last_pt(self, fold: int) -> Path:
        return self.fold_dir(fold) / "last.pt"

    def prev_pt(self, fold: int) -> Path:
        return self.fold_dir(fold) / "prev.pt"

    def best_epoch_pt(self, fold: int, epoch: int) -> Path:
        return self.fold_dir(fold) / f"best_e{epoch:03d}.pt"

    def metrics_csv(self, fold: int) -> Path:
        return self.fold_dir(fold) / "metrics.csv"

    def done_json(self, fold: int) -> Path:
        return self.fold_dir(fold) / "done.json"

    def failed_attempt_dir(self, fold: int, n: int) -> Path:
        return self.fold_dir(fold) / f"failed_attempt_{n}"

    def metrics_csvs(self) -> list[Path]:
        """Every fold's ``metrics.csv``, in fold order."""
        return sorted(self.dir.glob("fold_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))

    # ------------------------------------------------------------------ state
    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_json.is_file()

    def member_ref(self, member: "Run") -> str:
        """How ``ensemble.json`` names a member: relative to this folder, so runs/ can move as a whole."""
        return os.path.relpath(member.dir.resolve(), self.dir.resolve())

    def members(self) -> list[tuple["Run", float]]:
        """An ensemble's member runs (resolved against this folder) and weights, from ``ensemble.json``."""
        data = read_json(self.ensemble_json) or {}
        return [(Run(os.path.normpath(self.dir / m["run"])), float(m["weight"])) for m in data.get("members", [])]

    def trained_folds(self) -> list[int]:
        """Folds whose training finished (``done.json`` present), in order."""
        return sorted(int(p.parent.name.split("_")[1]) for p in self.dir.glob("fold_*/done.json"))

    def completed_folds(self) -> list[int]:
        """Folds that have OOF predictions: the trained folds, or for an ensemble the folds all members share."""
        if self.is_ensemble:
            return [int(k) for k in (read_json(self.ensemble_json) or {}).get("folds", [])]
        return self.trained_folds()

    # ------------------------------------------------------------------ safety: where a run may be, what it may delete
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

    def _marker(self) -> str | None:
        """The first sign that the folder was made by this toolkit, or None."""
        if self.config_yaml.is_file():
            try:
                data = yaml.safe_load(self.config_yaml.read_text(encoding="utf-8"))
                if isinstance(data, dict) and {"experiment", "data", "model"} <= set(data):
                    return self.config_yaml.name
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                pass
        if self.folds_csv.is_file():
            try:
                with self.folds_csv.open(encoding="utf-8") as fh:
                    if fh.readline().startswith("id,fold"):
                        return self.folds_csv.name
            except (OSError, UnicodeDecodeError):
                pass
        if self.ensemble_json.is_file():
            return self.ensemble_json.name
        for p in self.dir.glob("fold_*"):
            if _FOLD_DIR.fullmatch(p.name) and p.is_dir() and any(_FOLD_FILE.fullmatch(q.name) for q in p.iterdir()):
                return p.name + "/"
        return None

    def looks_like_run(self) -> bool:
        """True when the folder holds a config.yaml / folds.csv / ensemble.json / fold_<k>/ of this toolkit."""
        return self.dir.is_dir() and self._marker() is not None

    def foreign_entries(self) -> list[Path]:
        """Entries of the folder (and of its ``fold_<k>/``) that no run writes: files the user put there."""
        out = []
        for p in sorted(self.dir.iterdir()):
            if p.name in _OS_CLUTTER or _TMP_FILE.fullmatch(p.name):
                continue
            if _FOLD_DIR.fullmatch(p.name) and p.is_dir():
                out += [q for q in sorted(p.iterdir())
                        if not (_FOLD_FILE.fullmatch(q.name) or _TMP_FILE.fullmatch(q.name) or q.name in _OS_CLUTTER)]
            elif p.name not in _RUN_FILES:
                out.append(p)
        return out

    def check_writable(self, cfg: Config) -> None:
        """Before a command writes into the folder: it is apart from the data, and if it already holds
        files it is a run folder (a run would otherwise write its files among the user's)."""
        self.check_location(cfg)
        if self.dir.exists() and not self.dir.is_dir():
            raise RunExistsError(f"{self.dir} is a file, not a run folder; choose another experiment name or runs_dir")
        if self.dir.is_dir() and any(self.dir.iterdir()) and not self.looks_like_run():
            raise RunExistsError(
                f"{self.dir} holds files but is not a run folder (no config.yaml, folds.csv, ensemble.json or "
                "fold_<k>/ of seg_toolkit); choose another experiment name or runs_dir"
            )

    def remove(self, cfg: Config, path: Path | None = None) -> None:
        """Delete the run folder (``path=None``) or one entry of it that runs write (``path``, e.g.
        :attr:`tta_search_root`): the only way anything is deleted. Nothing is deleted when

        * the run folder is, contains or lies inside the data the config reads (:meth:`check_location`);
        * the folder does not look like a run folder (:meth:`looks_like_run`), or it is deleted whole
          and holds files no run writes (:meth:`foreign_entries`): they are named;
        * ``path`` is not a run entry inside this folder.

        A missing folder or entry is not an error.
        """
        self.check_location(cfg)
        target = self.dir if path is None else Path(path)
        if path is not None:
            rel = target.resolve().relative_to(self.dir.resolve()) if self.dir.resolve() in target.resolve().parents else None
            if rel is None or rel.parts[0] not in _RUN_FILES and not _FOLD_DIR.fullmatch(rel.parts[0]):
                raise RunExistsError(f"refusing to delete {target}: it is not a file that runs write inside {self.dir}")
        if not target.exists():
            return
        if not self.looks_like_run():
            raise RunExistsError(
                f"refusing to delete {self.dir}: it does not look like a run folder (no config.yaml, folds.csv, "
                "ensemble.json or fold_<k>/ of seg_toolkit); choose another experiment name or runs_dir"
            )
        if path is None:
            foreign = self.foreign_entries()
            if foreign:
                names = ", ".join(str(p.relative_to(self.dir)) + ("/" if p.is_dir() else "") for p in foreign[:5])
                more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
                raise RunExistsError(
                    f"refusing to delete {self.dir}: it holds {len(foreign)} file(s) that seg_toolkit did not write "
                    f"({names}{more}); move them out, or choose another experiment name"
                )
        delete_path(target)

    def fold_summaries(self) -> list[dict[str, Any]]:
        return [read_json(self.done_json(k)) or {} for k in self.trained_folds()]

    def config(self) -> Config:
        """The resolved config saved when the run was made."""
        if not self.config_yaml.is_file():
            raise ConfigError(f"{self.config_yaml}: not found; is {self.dir} a run folder (runs/<experiment>/)?")
        return load_config(self.config_yaml)

    def fold_of(self) -> dict[str, int]:
        from .data.folds import fold_of_ids

        if not self.folds_csv.is_file():
            raise ConfigError(f"{self.folds_csv}: not found; train the run first")
        return fold_of_ids(self.folds_csv)

    def oof_items(self, samples: list, oof_dir: Path | None = None) -> Iterator[tuple[Any, int, Path]]:
        """``(sample, fold, oof file)`` of every training sample in a completed fold, in sample order.

        A missing OOF file of a completed fold is an error naming it (the run is damaged).
        """
        folds = set(self.completed_folds())
        if not folds:
            raise FileNotFoundError(f"{self.dir}: no completed fold (fold_*/done.json); train first")
        fold_of = self.fold_of()
        n = 0
        for s in samples:
            k = fold_of.get(s.id)
            if k in folds:
                path = self.oof_path(s.id, oof_dir)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: OOF file of id {s.id!r} (fold {k}, completed) not found; "
                                            "remake it with `seg-toolkit oof CONFIG`")
                n += 1
                yield s, k, path
        if not n:
            raise FileNotFoundError(f"{self.dir}: the completed folds {sorted(folds)} hold no training id of {self.folds_csv}")
