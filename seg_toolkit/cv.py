"""All folds: the run folder, folds.csv, training each fold, and the CV score from OOF files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, config_to_dict, load_config, read_yaml, save_config
from .data import Sample, load_or_make_folds, load_target, load_train_samples
from .data.folds import fold_of_ids
from .distributed import get_dist
from .metrics import Evaluator
from .tensors import uint8_to_probs
from .train import completed_folds, fold_dir, train_fold

log = logging.getLogger(__name__)

__all__ = ["RunExistsError", "prepare_run", "run_cv", "compute_cv", "completed_folds"]


class RunExistsError(FileExistsError):
    """The run folder already holds work that this command would overwrite."""


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def prepare_run(cfg: Config, folds: list[int], resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``runs/<experiment>/`` and save the resolved config, refusing to clobber earlier work.

    * ``overwrite``: the whole run folder is deleted first.
    * ``resume``: the saved config must match (``train.epochs`` may grow); folds continue.
    * neither: a fold that already has files is refused. Other folds of the same run (e.g. a
      job array running ``--fold K`` each) may start, if the saved config matches.
    """
    run = cfg.run_dir
    saved = run / "config.yaml"
    if overwrite and run.exists():
        log.warning("--overwrite: deleting %s", run)
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    if saved.is_file():
        diff = [d for d in _config_diff(read_yaml(saved), config_to_dict(cfg)) if not d.startswith(("train.epochs", "predict.", "postprocess.", "submission.", "folds.only"))]
        if diff:
            raise RunExistsError(
                f"{run} was trained with a different config ({'; '.join(diff[:5])}); "
                "use a new experiment name, or --overwrite to start again"
            )
    if not resume:
        started = [k for k in folds if fold_dir(run, k).is_dir() and any(fold_dir(run, k).iterdir())]
        if started:
            raise RunExistsError(
                f"{run}: fold(s) {started} already have files; use --resume to continue, "
                "or --overwrite to delete the run and start again"
            )
    save_config(cfg, saved)
    return run


def run_cv(cfg: Config, folds: list[int] | None = None, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the given folds (default: ``folds.only`` or all), then write and return ``cv.json``."""
    folds = folds if folds is not None else (list(cfg.folds.only) or list(range(cfg.folds.n_splits)))
    d = get_dist()
    samples = load_train_samples(cfg)
    if d.is_main:  # only rank 0 touches the run folder; the others wait and read
        run = prepare_run(cfg, folds, resume=resume, overwrite=overwrite)
        load_or_make_folds(samples, cfg, run / "folds.csv")
    d.barrier()
    run = cfg.run_dir
    folds_df = load_or_make_folds(samples, cfg, run / "folds.csv")
    trained_before = set(completed_folds(run))
    for k in folds:
        log.info("fold %d/%d", k + 1, cfg.folds.n_splits)
        train_fold(cfg, k, samples, folds_df, run, resume=resume)
        if d.is_main:
            _write_curves(run)
    if d.is_main and (run / "tta.json").is_file() and set(folds) - trained_before:
        log.warning("%s was chosen before fold(s) %s were trained; run `seg-toolkit tune --tta` again",
                    run / "tta.json", sorted(set(folds) - trained_before))
    cv = None
    if d.is_main:
        cv = compute_cv(cfg, run, samples)
        if cfg.postprocess.tune and len(cv["folds"]) == cfg.folds.n_splits:
            from .tune import tune_postprocess

            cv["postprocess"] = tune_postprocess(cfg, run)
    return d.broadcast(cv)


def _write_curves(run: Path) -> None:
    """Learning curves (HTML + PNG) of all folds so far; a plotting failure never stops training."""
    from .plots import write_learning_curves

    try:
        write_learning_curves(run)
    except Exception as e:  # noqa: BLE001
        log.warning("learning curves not written: %s", e)


def compute_cv(cfg: Config, run: Path, samples: list[Sample] | None = None) -> dict[str, Any]:
    """Score every OOF file of the completed folds against its target; write ``cv.json``.

    The score is computed once over all OOF images (not the mean of fold scores, which is
    reported beside it), with the metric the config names. ``baseline`` scores an all-empty
    (all-background) prediction, so a number can be read against the trivial answer.
    """
    samples = samples if samples is not None else load_train_samples(cfg)
    done = completed_folds(run)
    if not done:
        raise FileNotFoundError(f"{run}: no completed fold (fold_*/done.json); train first")
    fold_of = fold_of_ids(run / "folds.csv")
    evaluator = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    baseline = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    chosen = [s for s in samples if fold_of.get(s.id) in done]
    for s in tqdm(chosen, desc="CV score", leave=False, disable=None):
        probs = uint8_to_probs(np.load(fold_dir(run, fold_of[s.id]) / "oof" / f"{s.id}.npy"))
        target = _target_tensor(s, cfg, probs.shape[-2:])
        evaluator.update(torch.from_numpy(probs)[None], target)
        empty = torch.zeros_like(target) if cfg.data.task == "multiclass" else torch.zeros(target.shape, dtype=torch.uint8)
        baseline.update_masks(empty, target)
    result = evaluator.compute()
    per_fold = [json.loads((fold_dir(run, k) / "done.json").read_text()) for k in done]
    fold_scores = [f["oof_score"] for f in per_fold]
    cv = {
        "metric": result["metric"],
        "score": float(result["score"]),
        "n_images": len(chosen),
        "folds": done,
        "fold_scores": fold_scores,
        "fold_mean": float(np.mean(fold_scores)),
        "fold_std": float(np.std(fold_scores)),
        "baseline_empty": float(baseline.compute()["score"]),
        "per_class_iou": result.get("per_class_iou"),
        "per_class_dice": result.get("per_class_dice"),
        "pixel_accuracy": result.get("pixel_accuracy"),
        "per_fold": per_fold,
    }
    (run / "cv.json").write_text(json.dumps(cv, indent=2, default=_json_default))
    return cv


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def _target_tensor(sample: Sample, cfg: Config, hw) -> torch.Tensor:
    from .data.dataset import target_to_tensor

    return target_to_tensor(load_target(sample, cfg, tuple(hw)), cfg.data.task)[None]


def load_run_config(run: Path) -> Config:
    return load_config(Path(run) / "config.yaml")
