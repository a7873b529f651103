"""Out-of-fold probabilities, made by the same :class:`~seg_toolkit.predictor.Predictor` as the submission.

After a fold trains, :func:`write_fold_oof` predicts its validation images with that fold's
``best.pt``, the run's preprocessing and the TTA that ``predict`` will use (``tta.json`` when
chosen, else ``predict.tta`` / ``predict.merge``; ``predict.oof_tta: identity`` keeps the
cheaper un-augmented OOF, and cv.json says which). Post-processing is tuned on these files,
so the thresholds fit the probabilities that are submitted.

``seg-toolkit oof CONFIG`` (:func:`remake_oof`) predicts the OOF files of every trained fold
again, e.g. after ``--set predict.tta=[identity,hflip]``, saves those predict settings into
the run's config, rescores cv.json and re-tunes the post-processing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError, save_config
from .data import Sample, load_train_samples
from .data.folds import split_fold, read_folds
from .errors import SegToolkitError
from .evaluator import Evaluator, truth_objects
from .predictor import Member, Predictor
from .run_settings import check_same_training, tta_settings
from .files import read_json, write_json, write_npy
from .run import Run
from .run_lock import lock_holder, run_lock
from .tensors import probs_to_uint8, uint8_to_probs

log = logging.getLogger(__name__)

__all__ = ["oof_settings", "oof_predictor", "write_fold_oof", "remake_oof", "save_oof", "mark_oof_rewrite", "end_oof_rewrite", "check_oof_complete", "ENSEMBLE_MARK", "is_ensemble_mark"]


def oof_settings(cfg: Config, run: Run) -> tuple[list[str], str]:
    """The ``(tta, merge)`` the OOF files are made with: predict's, or identity when ``predict.oof_tta: identity``;
    once ``tune --tta`` chose on them (``tta.json``), its choice, with which it rewrote them: a fold trained after it
    makes its OOF files as the folds before it were left."""
    if cfg.predict.oof_tta == "identity" and not run.tta_json.is_file():
        return ["identity"], "mean_prob"
    return tta_settings(cfg, run)


def oof_predictor(cfg: Config, run: Run, folds: list[int] | None = None) -> Predictor:
    """The run's predictor with the OOF TTA (:func:`oof_settings`), for ``folds`` (default: the finished ones)."""
    tta, merge = oof_settings(cfg, run)
    return Predictor([Member.load(run, cfg=cfg, tta=tta, merge=merge, folds=folds)])


def save_oof(run: Run, image_id: str, probs: torch.Tensor, oof_dir=None, presence: torch.Tensor | None = None):
    """Quantise and write one OOF array (and the classifier's presence probabilities, when given);
    returns the probabilities exactly as saved (for scoring)."""
    q = probs_to_uint8(probs)
    write_npy(run.oof_path(image_id, oof_dir), q)
    if presence is not None:
        write_npy(run.oof_presence_path(image_id, oof_dir), probs_to_uint8(presence))
    return torch.from_numpy(uint8_to_probs(q))


def write_fold_oof(cfg: Config, run: Run, fold: int, valid: list[Sample], predictor: Predictor | None = None) -> dict[str, Any]:
    """Predict fold ``fold``'s validation images into ``oof/`` and score exactly what was saved.

    Returns ``metric``, ``oof_score`` and ``oof`` (how the files were made), which go into the
    fold's ``done.json``.
    """
    predictor = predictor or oof_predictor(cfg, run, folds=[fold])
    evaluator = Evaluator.of(cfg)
    desc = f"OOF fold {fold} ({predictor.passes_per_image(fold)} passes/image)"
    by_id = {s.id: s for s in valid}
    for image_id, probs, presence, target in tqdm(predictor.iter_predictions(valid, fold=fold, target_cfg=cfg),
                                                  total=len(valid), desc=desc, leave=False, disable=None):
        objects = truth_objects(evaluator, by_id[image_id], cfg, probs.shape[-2:])
        evaluator.update(save_oof(run, image_id, probs, presence=presence)[None], target[None], objects)
    result = evaluator.compute()
    return {"metric": result["metric"], "oof_score": float(result["score"]), "oof": predictor.members[0].made(),
            "oof_amp": predictor.members[0].amp(fold, predictor.device).mode}


def mark_oof_rewrite(run: Run, command: str) -> None:
    """Write ``oof_incomplete.json`` before the run's OOF files are rewritten by ``command`` (``tune --tta`` moving its
    winner's files in, ``oof`` predicting them again; its remedy if it stops); :func:`end_oof_rewrite` removes it once
    the files, ``done.json`` and ``cv.json`` agree again. A rewrite that stops half-way leaves it, and
    :func:`check_oof_complete` refuses the mixed files."""
    write_json(run.oof_incomplete_json, {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")})


#: how an ensemble's build marks its run (:func:`mark_oof_rewrite`) until its OOF files and cv.json are written
ENSEMBLE_MARK = "seg-toolkit ensemble --name "


def is_ensemble_mark(command: object) -> bool:
    """Whether an ``oof_incomplete.json`` command is an ensemble build's mark (:data:`ENSEMBLE_MARK`)."""
    return isinstance(command, str) and command.startswith(ENSEMBLE_MARK)


def end_oof_rewrite(run: Run) -> None:
    run.oof_incomplete_json.unlink(missing_ok=True)


def check_oof_complete(run: Run) -> None:
    """Refuse a run whose OOF files an interrupted ``tune --tta`` or ``oof`` left part old, part new: tuning on them,
    or predicting with post-processing tuned on them, would not be what the run's predictor makes."""
    data = read_json(run.oof_incomplete_json)
    if data is not None:
        command = data.get("command", "seg-toolkit oof")
        holder = lock_holder(run)
        if holder is not None:
            raise SegToolkitError(f"{run.dir}: its OOF files are being rewritten now by {holder}; run this again when it "
                                  "has finished")
        if is_ensemble_mark(command):
            raise SegToolkitError(f"{run.dir}: the `seg-toolkit ensemble` that made it stopped (started {data.get('started')}) "
                                  f"before its OOF files and cv.json were all written ({run.oof_incomplete_json}); run "
                                  "that command again with --overwrite")
        raise SegToolkitError(f"{run.dir}: its OOF files were being rewritten by `{command}` (started {data.get('started')}) "
                              f"when it stopped ({run.oof_incomplete_json}): some are from before, some after. Run "
                              f"`{command}` again (or `seg-toolkit oof CONFIG`) before tuning, predicting or ensembling")


def remake_oof(cfg: Config) -> dict[str, Any]:
    """Predict every trained fold's OOF files again with ``cfg``'s predict settings; rescore and re-tune.

    The config may differ from the saved one only in ``predict.*`` (and paths, devices,
    post-processing grids): the new predict settings are saved into the run's config.yaml,
    so later commands predict the same way. Returns the new cv.json (with ``postprocess``).
    From the saved config to the new ``postprocess.json`` the run is marked (``oof_incomplete.json``): stopped
    before the tuning is written, the old post-processing (tuned on the old files) is never used with the new ones.
    """
    from .tune import tune_postprocess
    from .cv import compute_cv

    run = Run.of(cfg)
    run.refuse_ensemble("seg-toolkit oof")
    check_same_training(cfg, run, also_predict=False)
    with run_lock(run, f"seg-toolkit oof {run.dir}"):  # not beside a --fold job writing its OOF or `tune --tta`
        folds = run.trained_folds()
        if not folds:
            raise FileNotFoundError(f"{run.dir}: no completed fold (fold_*/done.json); train first")
        saved = run.config()
        if run.tta_json.is_file() and (cfg.predict.tta, cfg.predict.merge) != (saved.predict.tta, saved.predict.merge):
            raise ConfigError(f"predict.tta / predict.merge: {run.tta_json} (chosen by `tune --tta`) decides the TTA of this run; "
                              "delete it to predict with the config's predict.tta / predict.merge")
        samples = load_train_samples(cfg)
        folds_df = read_folds(run.folds_csv)
        predictor = oof_predictor(cfg, run)
        log.info("remaking OOF of folds %s: %s", folds, predictor.describe(fold=folds[0]))
        mark_oof_rewrite(run, f"seg-toolkit oof {run.dir}")
        save_config(dataclasses.replace(saved, predict=cfg.predict, postprocess=cfg.postprocess), run.config_yaml)
        for k in folds:
            _, valid = split_fold(samples, folds_df, k)
            summary = write_fold_oof(cfg, run, k, valid, predictor)
            done = read_json(run.done_json(k)) or {}
            write_json(run.done_json(k), {**done, **summary})
        cv = compute_cv(cfg, run, samples)
        # the run's own files, named so the tuning does not wait for this rewrite's mark (this process holds the lock)
        cv["postprocess"] = tune_postprocess(cfg, run.dir, oof_dir=run.oof_dir)
        end_oof_rewrite(run)  # files, config.yaml, done.json, cv.json and postprocess.json agree
    return cv
