"""The run folder: every artifact path of an experiment is spelled here and nowhere else.

A run is either **trained** (``seg-toolkit train``: one model per fold) or an **ensemble**
(``seg-toolkit ensemble``: a weighted merge of trained runs, ``ensemble.json``). Both hold
what is needed to use them without the YAML they came from::

    runs/<experiment>/
      config.yaml            the resolved config (preprocessing, model, predict, postprocess)
      folds.csv              id -> fold, written once, shared by every member of an ensemble
      folds.json             how folds.csv was made (method, seed, groups, the labels' fingerprint): a changed
                             setting, or labels edited since, is refused
      fold_balance.csv       images per validation fold holding each class / empty (with folds.csv)
      fold_<k>/              trained runs: best.pt, last.pt (last.pt.unreadable: one resume fell back from), prev.pt, best_e<epoch>.pt,
                             metrics.csv (metrics.csv.unreadable: one set aside), done.json (written last),
                             failed_attempt_<n>/ (an attempt set aside after a NaN loss), train.lock (flocked by
                             the process training the fold: a second one is refused, and the fold counts as started)
      first_epoch.json       train.min_fold_epochs: the run's first timed epoch, which decides its folds
      admitted_folds.json    folds first left out, trained later with the budget's time left
      ensemble.json          ensembles: members (run folders), weights, merge space, folds
      oof/<id>.npy           out-of-fold probabilities (uint8 p*255, C x H x W at the image's
                             own size) made by the predictor with the TTA that predict uses
      oof/presence/<id>.npy  the empty-mask classifier's OOF probabilities (model.classifier)
      oof_incomplete.json    present while tune --tta / oof rewrite oof/ (left by one that stopped)
      run.lock, tracker.lock flock files: OOF / cv.json / postprocess.json writers; tracker.json
      tta_search/            tune --tta's scratch (each candidate's OOF), removed when it ends
      oof_summary.json       confusion, per-class and per-image OOF numbers: the report reads it
      cv.json                CV score, per fold, per class, confusion counts, how OOF was made
      postprocess.json       thresholds / min-area / empty gate tuned on oof/
      tta.json               TTA set and merge chosen on OOF (seg-toolkit tune --tta)
      lr_find.{json,png}     learning-rate range test (seg-toolkit lr-find)
      pseudo/fold_<k>.csv    pseudo-labelled test images added to fold k's training set (pseudo.teacher)
      pseudo/fold_<k>.teacher.json  the teacher's files those labels were made from, with their SHA-256
      pseudo/fold_<k>/<id>.npy      soft pseudo-labels (pseudo.soft); pseudo/all.*: one set for every fold
      amp.json               the precision train.amp resolved to (auto: measured once), used by every fold and by inference
      tracker.json           where the run is tracked (MLflow run ids / TensorBoard folder; seg_toolkit/track.py)
      tensorboard/           TensorBoard event files (track.backend: tensorboard, default track.uri)
      test_probs/<id>.npy    merged test probabilities before post-processing (predict.save_probs;
                             test_probs/presence/<id>.npy: the classifier's)
      test_masks/<id>.png    decided test masks, the submitted ones (predict.write_masks; <id>_<cls>.png per class)
      evaluate_test.json     held-out score (seg-toolkit evaluate --split test)
      evaluations/<name>.json  score on a labelled folder (seg-toolkit evaluate --on DIR); under another metric.* than
                             the run's: <name>.<metric>-<hash>.json, and evaluate_test.<metric>-<hash>.json for --split test
      export/fold_<k>.onnx   fold models exported to ONNX, export/export.json (seg-toolkit export)
      estimate.json          projected predict time (seg-toolkit predict --estimate)
      demo_submission.json   the submission seg-toolkit demo wrote (path, SHA-256): the next demo replaces it only if unchanged
      audit.html, audit_problems.csv, audit_samples.png, audit_batch.png   seg-toolkit audit
      learning_curves.{html,png}, report/

Every JSON / CSV / NPY goes through :func:`seg_toolkit.files.atomic_write`: a reader sees the old
file or the new one, never half of one. Every OOF file is read by :func:`seg_toolkit.files.read_oof`,
which names a bad file. Nothing is deleted except by :meth:`Run.remove`, which removes only what a run wrote:
never a folder that is, holds or lies inside the data the config reads (:meth:`Run.check_location`),
never a folder that does not look like a run, never a file the toolkit did not write.
"""

from __future__ import annotations

import re
from pathlib import Path

from .config import Config, ConfigError
from .run_guard import RunExistsError, RunGuard
from .run_state import RunState

__all__ = ["Run", "RunExistsError"]


class Run(RunState, RunGuard):
    """One run folder. Construct from a path (``Run("runs/tgs")``) or a config (``Run.of(cfg)``).
    What it holds now (trained folds, ensemble members, its config, OOF items): :class:`seg_toolkit.run_state.RunState`;
    what may be written or deleted in it: :class:`seg_toolkit.run_guard.RunGuard`."""

    #: What a run writes directly in its folder, besides ``fold_<k>/`` (names from the properties
    #: below) and the temporary files of :func:`seg_toolkit.files.atomic_write`.
    RUN_FILES = ("config.yaml", "folds.csv", "folds.csv.tmp", "folds.json", "fold_balance.csv", "cv.json", "postprocess.json", "tta.json",
                 "ensemble.json", "amp.json", "lr_find.json", "lr_find.png", "pseudo", "oof", "oof_summary.json", "test_probs",
                 "evaluate_test.json", "report", "learning_curves.html", "learning_curves.png", "audit.html",
                 "audit_problems.csv", "tta_search", "test_masks", "evaluations", "audit_samples.png", "audit_batch.png",
                 "tracker.json", "tracker.lock", "tensorboard", "export", "estimate.json", "first_epoch.json", "oof_incomplete.json", "run.lock",
                 "demo_submission.json", "admitted_folds.json")
    #: The files of ``report/`` (:func:`seg_toolkit.report.build_report`): the page, its data, its figures
    REPORT_FILES = ("index.html", "report.json", "confusion.png", "learning_curves.png", "overlays_best.png",
                    "overlays_worst.png")
    #: What a run writes inside the folders of RUN_FILES, as paths relative to the folder (``/`` between parts); any
    #: other file there is the user's, and deleting the folder is refused (:meth:`RunGuard.foreign_entries`): the
    #: report's and the evaluations' by name (a user's notes.html beside the report went with the run)
    RUN_DIR_FILES = {
        "oof": r"(presence/)?[^/]+\.npy",
        "test_probs": r"(presence/)?[^/]+\.npy",
        "test_masks": r"[^/]+\.png",
        "report": "|".join(map(re.escape, REPORT_FILES)),
        # evaluate --on DIR: <folder name>-<8 hex of its path>[.<metric>-<6 hex>].json; --split test under another
        # metric: evaluate_test.<metric>-<6 hex>.json (seg_toolkit.evaluate.evaluation_name / metric_tag)
        "evaluations": r"([A-Za-z0-9._-]+-[0-9a-f]{8}|evaluate_test)(\.[a-z0-9_]+-[0-9a-f]{6})?\.json",
        "export": r"fold_\d+\.onnx|export\.json",
        "pseudo": r"(fold_\d+|all)(\.csv|\.teacher\.json|/[^/]+\.npy)",
        "tensorboard": r"events\.out\.tfevents\.[^/]+",  # the summary writer's event files (track_backends.py)
        "tta_search": r".+",  # tune --tta's scratch, removed when it ends
    }
    #: What a run writes in ``fold_<k>/`` (the fold methods below)
    FOLD_FILE = re.compile(r"(best|prev)\.pt|last\.pt(\.unreadable)?|best_e\d+\.pt|metrics\.csv(\.unreadable)?|done\.json|\.?failed_attempt_\d+(\.partial)?"
                           r"|train\.lock")
    FOLD_DIR = re.compile(r"fold_\d+")

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
    def folds_json(self) -> Path:
        """The ``folds.*`` / group keys ``folds.csv`` was made with; written with it (runs before 2026-12-03: none)."""
        return self.dir / "folds.json"

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

    def pseudo_teacher_json(self, fold: int | None) -> Path:
        """What :meth:`pseudo_csv`'s labels were made from: the teacher's files and their SHA-256."""
        return self.dir / "pseudo" / (f"fold_{fold}.teacher.json" if fold is not None else "all.teacher.json")

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
    def oof_incomplete_json(self) -> Path:
        """Present while ``tune --tta`` or ``oof`` rewrites the run's OOF files; left behind by one that stopped
        half-way (:func:`seg_toolkit.oof.check_oof_complete`)."""
        return self.dir / "oof_incomplete.json"

    @property
    def lock_file(self) -> Path:
        """``flock``ed while a process rewrites the run's OOF files, cv.json or postprocess.json
        (:func:`seg_toolkit.run_lock.run_lock`); its text names the last holder."""
        return self.dir / "run.lock"

    @property
    def tracker_lock_file(self) -> Path:
        """``flock``ed while a process updates ``tracker.json``: a lock of its own, so a fold job's tracking never
        waits for a long holder of :attr:`lock_file` (``tune --tta``, ``oof``, ``ensemble``)."""
        return self.dir / "tracker.lock"

    @property
    def first_epoch_json(self) -> Path:
        """``train.min_fold_epochs``: the run's first timed epoch (fold, seconds), written once; it decides how many
        folds share ``train.time_budget`` (:func:`seg_toolkit.budget_run.first_epoch_seconds`)."""
        return self.dir / "first_epoch.json"

    @property
    def admitted_folds_json(self) -> Path:
        """The folds ``train.min_fold_epochs`` first left out and the run then trained with the time its folds left
        of ``train.time_budget`` (:func:`seg_toolkit.budget_run.admit_fold`)."""
        return self.dir / "admitted_folds.json"

    @property
    def demo_submission_json(self) -> Path:
        """The submission ``seg-toolkit demo`` wrote (path, SHA-256): a later demo replaces that file only if unchanged."""
        return self.dir / "demo_submission.json"

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
        """Scores of ``seg-toolkit evaluate --on DIR``, one JSON per labelled folder and metric (and ``--split test``'s
        under another metric than the run's)."""
        return self.dir / "evaluations"

    def evaluate_json_for(self, name: str) -> Path:
        """``evaluations/<name>.json``: the score of the run on one labelled folder (``name`` from
        :func:`~seg_toolkit.evaluate.evaluation_name`, with :func:`~seg_toolkit.evaluate.metric_tag`)."""
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
    def audit_problems_csv(self) -> Path:
        """``audit``'s problems, one per row; its header ``kind,where,message`` marks a folder audit made."""
        return self.dir / "audit_problems.csv"

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

    def fold_lock_file(self, fold: int) -> Path:
        """``flock``ed while a process trains the fold (:func:`seg_toolkit.run_lock.fold_lock`); its text names it."""
        return self.fold_dir(fold) / "train.lock"

    def best_pt(self, fold: int) -> Path:
        return self.fold_dir(fold) / "best.pt"

    def last_pt(self, fold: int) -> Path:
        return self.fold_dir(fold) / "last.pt"

    def prev_pt(self, fold: int) -> Path:
        return self.fold_dir(fold) / "prev.pt"

    def last_pt_unreadable(self, fold: int) -> Path:
        """An unreadable ``last.pt`` that resume fell back from, set aside: the next save would rotate it over prev.pt."""
        return self.fold_dir(fold) / "last.pt.unreadable"

    def best_epoch_pt(self, fold: int, epoch: int) -> Path:
        return self.fold_dir(fold) / f"best_e{epoch:03d}.pt"

    def metrics_csv(self, fold: int) -> Path:
        return self.fold_dir(fold) / "metrics.csv"

    def done_json(self, fold: int) -> Path:
        return self.fold_dir(fold) / "done.json"

    def failed_attempt_dir(self, fold: int, n: int) -> Path:
        return self.fold_dir(fold) / f"failed_attempt_{n}"

    def failed_attempt_partial_dir(self, fold: int, n: int) -> Path:
        """Where a failed attempt's files gather before the folder is renamed :meth:`failed_attempt_dir` (a kill
        mid-way leaves this, never a ``failed_attempt_<n>/`` without the attempt's checkpoints)."""
        return self.fold_dir(fold) / f".failed_attempt_{n}.partial"

    def failed_attempt_metrics_csv(self, fold: int, n: int) -> Path:
        """``metrics.csv`` of the fold's ``n``-th attempt set aside (its epochs, and the one the NaN stopped)."""
        return self.failed_attempt_dir(fold, n) / "metrics.csv"

    def failed_attempts(self, fold: int) -> int:
        """How many of the fold's attempts were set aside after a NaN loss (``failed_attempt_1/`` .. ``_<n>/``)."""
        n = 0
        while self.failed_attempt_dir(fold, n + 1).is_dir():
            n += 1
        return n

    def failed_attempt_metrics(self, fold: int) -> list[Path]:
        """The ``metrics.csv`` of the fold's attempts set aside after a NaN loss (``train.nan_retries``)."""
        return sorted(self.fold_dir(fold).glob("failed_attempt_*/metrics.csv"))

    def metrics_csvs(self) -> list[Path]:
        """Every fold's ``metrics.csv``, in fold order."""
        return sorted(self.dir.glob("fold_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
