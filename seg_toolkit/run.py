"""The run folder: every artifact path of an experiment is spelled here and nowhere else.

A run is either **trained** (``seg-toolkit train``: one model per fold) or an **ensemble**
(``seg-toolkit ensemble``: a weighted merge of trained runs, ``ensemble.json``). Both hold
what is needed to use them without the YAML they came from::

    runs/<experiment>/
      config.yaml            the resolved config (preprocessing, model, predict, postprocess)
      folds.csv              id -> fold, written once, shared by every member of an ensemble
      fold_<k>/              trained runs: best.pt, last.pt, prev.pt, best_e<epoch>.pt,
                             metrics.csv, done.json (written last), failed_attempt_<n>/
      ensemble.json          ensembles: members (run folders), weights, merge space, folds
      oof/<id>.npy           out-of-fold probabilities (uint8 p*255, C x H x W at the image's
                             own size) made by the predictor with the TTA that predict uses
      oof_summary.json       confusion, per-class and per-image OOF numbers: the report reads it
      cv.json                CV score, per fold, per class, confusion counts, how OOF was made
      postprocess.json       thresholds / min-area / empty gate tuned on oof/
      tta.json               TTA set and merge chosen on OOF (seg-toolkit tune --tta)
      test_probs/<id>.npy    merged test probabilities before post-processing (predict.save_probs)
      evaluate_test.json     held-out score (seg-toolkit evaluate)
      learning_curves.{html,png}, report/

Every JSON / CSV / NPY goes through :func:`atomic_write`: a reader sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .checkpoint import atomic_write
from .config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

__all__ = ["Run", "write_json", "read_json", "write_npy", "write_text"]


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
    def cv_json(self) -> Path:
        return self.dir / "cv.json"

    @property
    def postprocess_json(self) -> Path:
        return self.dir / "postprocess.json"

    @property
    def tta_json(self) -> Path:
        return self.dir / "tta.json"

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
    def evaluate_json(self) -> Path:
        return self.dir / "evaluate_test.json"

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

    def tta_search_dir(self, candidate: int) -> Path:
        """Scratch OOF of one TTA candidate while ``tune --tta`` compares them (removed afterwards)."""
        return self.dir / "tta_search" / f"candidate_{candidate}"

    def oof_path(self, image_id: str, oof_dir: Path | None = None) -> Path:
        return (oof_dir or self.oof_dir) / f"{image_id}.npy"

    def test_prob_path(self, image_id: str) -> Path:
        return self.test_probs_dir / f"{image_id}.npy"

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

    def trained_folds(self) -> list[int]:
        """Folds whose training finished (``done.json`` present), in order."""
        return sorted(int(p.parent.name.split("_")[1]) for p in self.dir.glob("fold_*/done.json"))

    def completed_folds(self) -> list[int]:
        """Folds that have OOF predictions: the trained folds, or for an ensemble the folds all members share."""
        if self.is_ensemble:
            return [int(k) for k in (read_json(self.ensemble_json) or {}).get("folds", [])]
        return self.trained_folds()

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
