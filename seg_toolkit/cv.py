"""All folds: the run folder, folds.csv, training each fold, and the CV score from the OOF files."""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, ConfigError, anchored, config_diff, config_from_dict, config_to_dict, read_yaml, save_config
from .data import Sample, load_or_make_folds, load_train_samples
from .data.dataset import check_train_transforms
from .data.sources import check_train_samples
from .budget import planned_folds
from .budget_run import admit_fold, left_out_folds, run_folds
from .device import resolve_device
from .distributed import get_dist
from .files import read_json, remove_stale_writes, write_json
from .run import Run, RunExistsError
from .run_lock import fold_lock, lock_held, run_lock
from .pseudo import check_teacher, pseudo_info, teacher_run
from .stages import check_init_folds, check_init_run
from . import track

log = logging.getLogger(__name__)

__all__ = ["RunExistsError", "prepare_run", "run_cv", "compute_cv"]


#: keys a run's saved config may differ in on --resume or a --fold job: where the run folder is (it was found, moved,
#: or given by a relative path), how data is loaded and where (results do not depend on them: exact resume holds for
#: any number of workers), and what training does not read (predict, post-processing, submission, tracking)
RESUME_FREE_KEYS = ("runs_dir", "experiment", "train.epochs", "train.time_budget", "train.min_fold_epochs", "train.device",
                    "train.nan_retries", "train.nan_lr_factor",  # they act only once a loss is NaN: what the error offers
                    "train.num_workers", "train.pin_memory", "train.persistent_workers", "predict.", "postprocess.",
                    "submission.", "folds.only", "track")


def prepare_run(cfg: Config, folds: list[int], resume: bool = False, overwrite: bool = False,
                fold_job: bool = False) -> Run:
    """Create ``runs/<experiment>/`` and save the resolved config, refusing to clobber earlier work.

    * always: the run folder must be apart from the data (:meth:`Run.check_location`), and a
      folder that already holds files must be a run folder (:meth:`Run.check_writable`).
    * ``overwrite``: the run folder is deleted first, through :meth:`Run.remove` (never a data
      folder, never a folder holding files that runs do not write). ``fold_job`` (``train --fold K``): only the
      folders of ``folds`` go, and what was tuned on every fold's OOF files (:func:`_remove_folds`).
    * ``resume``: the saved config must match but for :data:`RESUME_FREE_KEYS` (``train.epochs`` may change: a
      fold in progress lays its schedule out again; ``train.time_budget`` too: a fold's plan follows the new budget
      from its next epoch; ``data.root`` compares as a resolved path); folds continue.
    * neither: a fold that already has files is refused. Other folds of the same run (e.g. a
      job array running ``--fold K`` each) may start, if the saved config matches.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: continue the run, or delete it and start again, not both")
    run = Run.of(cfg)
    saved = run.config_yaml
    run.check_writable(cfg)
    if run.is_ensemble:
        raise RunExistsError(f"{run.dir} is an ensemble run ({run.ensemble_json}); use another experiment name")
    if overwrite:  # never a fold another process is training now: its files would go from under it
        busy = [k for k in (folds if fold_job else run.started_folds()) if lock_held(run.fold_lock_file(k))]
        if busy:
            raise RunExistsError(f"{run.dir}: fold(s) {busy} are being trained by another process ({run.fold_lock_file(busy[0])}); "
                                 "--overwrite deletes them only once it has ended (or been stopped)")
    if overwrite and fold_job:
        _remove_folds(cfg, run, folds)
    elif overwrite:
        run.remove(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    remove_stale_writes(run.dir, recursive=True)  # what killed commands left half-written (a live one's are kept)
    old = _with_defaults(read_yaml(saved)) if saved.is_file() else None  # read once: the checks below compare with it
    if old is not None:
        diff = _config_changes(run, cfg, old)
        # stopped before any fold wrote a file (a config error met at the first batch, too many folds for the images):
        # the corrected config replaces it, unless it changes what a folds.csv or pseudo/ already made were made from
        started, made = run.started_folds(), _made_from_data(run)
        if diff and not started and (not made or not any(d.startswith(_FOLDS_FROM) for d in diff)):
            log.warning("%s: no fold has started; its config.yaml is replaced (%s)", run.dir, "; ".join(diff[:5]))
            run.remove(cfg, run.amp_json)  # measured on the old model and batch
            run.remove(cfg, run.first_epoch_json)  # timed on them too: train.min_fold_epochs would decide the folds by it
        elif diff:
            what = "was trained" if started else f"made {', '.join(p.name for p in made)} (no fold has started)"
            raise RunExistsError(
                f"{run.dir} {what} with a different config ({'; '.join(diff[:5])}); "
                f"use a new experiment name, or --overwrite{' without --fold' if fold_job else ''} to start again"
            )
    _check_predict_keys(run, cfg, run.trained_folds() if saved.is_file() else [])
    if old is not None:
        _say_other_epochs(run, cfg, folds, (old.get("train") or {}).get("epochs"))
    if not resume:
        started = sorted(set(folds) & set(run.started_folds()))
        if started:
            raise RunExistsError(
                f"{run.dir}: fold(s) {started} already have files; use --resume to continue, "
                "or --overwrite to delete the run and start again (with --fold: that fold only)"
            )
    save_config(anchored(cfg), saved)  # its data and earlier runs by absolute path: the same from any directory
    return run


#: config keys that decide what folds.csv and pseudo/ are made from: a run's config.yaml is not replaced when they change
_FOLDS_FROM = ("data.", "folds.", "pseudo.")


def _made_from_data(run: Run) -> list[Path]:
    """The files of ``run`` made from its data, folds and pseudo keys (folds.csv, pseudo-labels), that a changed config
    would contradict."""
    pseudo = run.pseudo_csv(None).parent
    return [p for p in (run.folds_csv, pseudo) if p.is_file() or (p.is_dir() and any(p.iterdir()))]


def _check_predict_keys(run: Run, cfg: Config, trained: list[int]) -> None:
    """The trained folds' OOF files (and the post-processing tuned on them) were made with the saved predict keys:
    a fold trained with others would mix two TTA settings in oof/ (`train --fold 1 --set predict.tta=...`)."""
    if not trained:
        return
    from .oof import check_oof_complete
    from .run_settings import PREDICT_KEYS, diff_of_keys

    check_oof_complete(run)  # an `oof --set predict...` that stopped saved its settings before rewriting the files

    changed = diff_of_keys(run.config(), cfg, PREDICT_KEYS)
    if changed:
        raise RunExistsError(f"{run.dir}: fold(s) {trained} made their OOF files with other predict settings "
                             f"({'; '.join(changed[:4])}); train with the run's, then remake every fold's OOF files "
                             "with `seg-toolkit oof CONFIG --set ...`")


def _config_changes(run: Run, cfg: Config, old: dict | None = None) -> list[str]:
    """How ``cfg`` differs from the run's saved config.yaml (``old``: as :func:`_with_defaults` read it), but for
    :data:`RESUME_FREE_KEYS`."""
    old = copy.deepcopy(old) if old is not None else _with_defaults(read_yaml(run.config_yaml))
    new = config_to_dict(cfg)
    for c in (old, new):  # the same folder however it is spelled (relative, data/./demo; saved absolute: anchored)
        for section, key in (("data", "root"), ("train", "init_from"), ("pseudo", "teacher")):
            if isinstance(c.get(section), dict) and c[section].get(key):
                c[section][key] = str(Path(c[section][key]).expanduser().resolve())
    return [d for d in config_diff(old, new) if not d.startswith(RESUME_FREE_KEYS)]


def _say_other_epochs(run: Run, cfg: Config, folds: list[int], saved: int | None) -> None:
    """``train.epochs`` may change on --resume, for the fold in progress (its schedule is laid out again); a fold that
    starts or goes on now under another number than the trained folds' (`train --fold 1 --set train.epochs=8`) trains a
    CV of two lengths, and a finished fold is not trained further: both are said, not refused (a budget's folds differ
    in length too; each fold's done.json has its own)."""
    trained = set(run.trained_folds())
    # done.json's own number (a --resume of a finished fold saved config.yaml with the new one); older runs: the file's
    other = {k: e for k in sorted(trained) if (e := (read_json(run.done_json(k)) or {}).get("epochs_configured", saved))
             != cfg.train.epochs}
    if not other:
        return
    lengths = "/".join(map(str, sorted(set(other.values()))))
    going = sorted(set(folds) - trained)
    if going:
        log.warning("%s: fold(s) %s trained with train.epochs %s, fold(s) %s train with %s: the CV mixes folds trained "
                    "for different lengths (keep the run's train.epochs for its folds, or use a new experiment name)",
                    run.dir, sorted(other), lengths, going, cfg.train.epochs)
    finished = sorted(set(folds) & set(other))
    if finished:
        log.warning("%s: fold(s) %s finished with train.epochs %s and are not trained further with %s (--resume goes on "
                    "with unfinished folds only; a new experiment name trains a run of %s epochs)", run.dir, finished,
                    lengths, cfg.train.epochs, cfg.train.epochs)


def _check_config_kept(run: Run, cfg: Config) -> None:
    """The run's config.yaml is still this process's, now that it holds the fold's lock: another ``train`` of the run
    replaced it while no fold had started (this process between prepare_run and its first fold's lock)."""
    diff = _config_changes(run, cfg)
    if diff:
        raise RunExistsError(f"{run.config_yaml} was replaced by another process since this one saved it "
                             f"({'; '.join(diff[:5])}); this run stops before training on it: run one `train` per run "
                             "folder, or --fold jobs of one config")


def _with_defaults(saved: dict) -> dict:
    """A saved config.yaml as this version reads it: the keys a later version added, which an older one did not
    write, at their defaults (compared raw, ``train.log_every: None -> 0`` refused to resume any older run). A file
    this version cannot read compares as written."""
    try:
        return config_to_dict(config_from_dict(saved, trained=True))
    except (ConfigError, TypeError, ValueError):
        return saved


def _remove_folds(cfg: Config, run: Run, folds: list[int]) -> None:
    """``train --fold K --overwrite``: one job of a job array starts its fold again. ``fold_K/`` goes, and
    ``postprocess.json`` (tuned on every fold's OOF files, the old fold K's among them; the job that ends the run tunes
    again); the other folds, folds.csv and config.yaml stay. ``cv.json`` is remade when the fold ends (until then
    predict refuses the run: it scores a fold without a model); the fold's OOF files are rewritten by its training.
    Refused, before anything is deleted, when the fold holds files no run writes, or when other folds have files and
    the config differs from theirs (the whole run starts again with ``--overwrite`` without ``--fold``)."""
    others = sorted(set(run.started_folds()) - set(folds))
    diff = _config_changes(run, cfg) if run.config_yaml.is_file() else []
    if diff and (others or any(d.startswith(_FOLDS_FROM) for d in diff)):
        beside = f"beside fold(s) {others}, which were trained with" if others else "with folds.csv made from"
        raise RunExistsError(
            f"{run.dir}: --fold {','.join(map(str, folds))} --overwrite trains that fold again {beside} another config "
            f"({'; '.join(diff[:5])}); use a new experiment name, or `train CONFIG --overwrite` without --fold to start "
            "the whole run again")
    _check_predict_keys(run, cfg, sorted(set(run.trained_folds()) - set(folds)))
    for k in folds:  # every fold checked before any is deleted
        run.check_removable(cfg, run.fold_dir(k))
    run.check_removable(cfg, run.postprocess_json)
    for k in folds:
        run.remove(cfg, run.fold_dir(k))
    run.remove(cfg, run.postprocess_json)


def run_cv(cfg: Config, folds: list[int] | None = None, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the given folds (default: ``folds.only`` or all), then write and return ``cv.json``;
    mirrored to the experiment tracker (``track:``, :mod:`seg_toolkit.track`), which never stops training.
    ``resume`` and ``overwrite`` exclude each other; with ``folds`` given (``train --fold K``), ``overwrite`` starts
    those folds again and keeps the others (:func:`prepare_run`)."""
    if resume and overwrite:  # before anything is read
        raise ConfigError("--resume and --overwrite: continue the run, or delete it and start again, not both")
    with track.tracking(cfg):
        return _run_cv(cfg, folds, resume, overwrite)


def _run_cv(cfg: Config, folds: list[int] | None, resume: bool, overwrite: bool) -> dict[str, Any]:
    whole_run = folds is None  # not a --fold job: train.min_fold_epochs may leave the last folds out
    folds = folds if folds is not None else planned_folds(cfg)
    d = get_dist()
    resolve_device(cfg.train.device, d)  # a device this machine lacks fails before anything is written
    # so does a model.params value smp refuses, and BatchNorm on one image at a 1x1 bottleneck (the batch size at resize)
    from .models.registry import check_model_builds  # lazy: imports smp and timm, which `cv` and `report` need not
    from .train import train_fold

    check_model_builds(cfg.model, cfg.data.num_classes, cfg.data.in_channels, cfg.train.batch_size,
                       tuple(cfg.transforms.resize) if cfg.transforms.resize else None)
    samples = load_train_samples(cfg)
    check_train_samples(samples, cfg)  # images present, some foreground: before anything is written
    if d.is_main:
        from .data.sources import load_test_samples
        from .inference import check_sample_submission  # lazy: the predictor's modules

        # a crop larger than the smallest images too, the test images that pseudo-labels add included
        check_train_transforms(samples + (load_test_samples(cfg) if cfg.pseudo.teacher else []), cfg)
        check_sample_submission(cfg)  # the sample submission against submission.*: now, not after the folds
    check_init_run(cfg, folds)  # train.init_from: a run folder read as this one reads, every fold trained there
    teacher = teacher_run(cfg)  # pseudo.teacher: a run folder; both checked before anything is written
    if teacher is not None and d.is_main:
        from .postprocess import load_params

        load_params(teacher.config(), teacher)  # its post-processing makes the labels: tuned, when it was to be
    run = Run.of(cfg)
    if d.is_main and not overwrite and run.folds_csv.is_file() and not run.config_yaml.is_file():
        # folds.csv without a config beside it (lr-find's): checked against these fold settings before prepare_run
        # saves this config, which a refusal left behind to refuse the settings the folds were made with
        load_or_make_folds(samples, cfg, run.folds_csv)
    if d.is_main:  # only rank 0 touches the run folder; the others wait and read
        prepare_run(cfg, folds, resume=resume, overwrite=overwrite, fold_job=not whole_run)
        load_or_make_folds(samples, cfg, run.folds_csv)
    d.barrier()
    folds_df = load_or_make_folds(samples, cfg, run.folds_csv)
    check_init_folds(cfg, folds_df)  # train.init_from: the same folds
    check_teacher(cfg, folds_df, folds)  # pseudo.teacher: the same, before the first fold trains
    trained_before = set(run.trained_folds())
    left_out: list[int] = []
    for k in folds:
        # decided by the run's first epoch, or let in by what the run's folds left of the budget (budget_run.py): rank 0's read
        if whole_run and not d.broadcast(k in run_folds(cfg, run) or (d.is_main and admit_fold(cfg, run, k))):
            left_out.append(k)
            continue
        log.info("fold %d (%d of %d)", k, k + 1, cfg.folds.n_splits)  # numbered from 0, as fold_<k>/, metrics.csv and the report
        track.fold_start(k)
        with fold_lock(run, k) if d.is_main else contextlib.nullcontext():
            if d.is_main:
                _check_config_kept(run, cfg)
            train_fold(cfg, k, samples, folds_df, run, resume=resume)
        track.fold_end(k)
        if d.is_main:
            _write_curves(run)
    if left_out:
        log.warning("fold(s) %s not trained: train.time_budget %s gives train.min_fold_epochs=%d epochs to %d fold(s) "
                    "at the pace of the run's first epoch (--resume with a bigger budget trains them)", left_out,
                    cfg.train.time_budget, cfg.train.min_fold_epochs, len(folds) - len(left_out))
    if d.is_main and run.tta_json.is_file() and set(folds) - trained_before:
        log.warning("%s was chosen before fold(s) %s were trained; run `seg-toolkit tune --tta` again",
                    run.tta_json, sorted(set(folds) - trained_before))
    cv = None
    if d.is_main:
        with run_lock(run, "train: cv.json and postprocess.json"):  # the other --fold jobs of an array, `tune --tta`
            cv = compute_cv(cfg, run, samples)
            _write_curves(run)  # again, now with cv.json's all-empty baseline (the last epoch's curves were drawn before it)
            # a --fold job of an array tunes when the last one ends; a run that the budget cut short, when its folds have
            if cfg.postprocess.tune and set(run_folds(cfg, run)) <= set(cv["folds"]):
                from .tune import tune_postprocess

                cv["postprocess"] = tune_postprocess(cfg, run.dir)
    return d.broadcast(cv)


def _write_curves(run: Run) -> None:
    """Learning curves (HTML + PNG) of all folds so far; a plotting failure never stops training."""
    from .plots import write_learning_curves

    try:
        write_learning_curves(run.dir)
    except Exception as e:  # noqa: BLE001
        log.warning("learning curves not written: %s", e)


def compute_cv(cfg: Config, run: Run | None = None, samples: list[Sample] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every OOF file of the completed folds against its target; write ``cv.json``.

    The score is computed once over all OOF images (not the mean of fold scores, which is
    reported beside it), with the metric the config names; fold scores are computed from
    the same files. ``baseline`` scores an all-empty (all-background) prediction, so a
    number can be read against the trivial answer. ``oof`` says how the files were made
    (the TTA of each fold's prediction). ``extra`` is merged in (an ensemble's members).
    """
    from .report.summary import baseline_words, compute_oof_summary, save_oof_summary

    run = run if isinstance(run, Run) else Run(run) if run is not None else Run.of(cfg)
    samples = samples if samples is not None else load_train_samples(cfg)
    result = compute_oof_summary(run, cfg, samples, strict=True)  # one pass: the CV score and the report's numbers
    done, fold_scores = result["folds"], result["fold_scores"]
    per_fold = run.fold_summaries() if not run.is_ensemble else []
    made = [f.get("oof") for f in per_fold if f.get("oof") is not None]
    if run.is_ensemble and extra is None:  # `seg-toolkit cv` on an ensemble: how it was built stays recorded
        extra = {k: v for k, v in (read_json(run.cv_json) or {}).items() if k in ("ensemble", "pseudo")}
    cv = {
        "metric": result["metric"],
        "score": float(result["score"]),
        "n_images": result["n_images"],
        "folds": done,
        "fold_scores": fold_scores,
        "fold_mean": float(np.mean(fold_scores)),
        "fold_std": float(np.std(fold_scores)),
        "baseline_empty": result["baseline_empty"],
        "baseline": baseline_words(cfg.data.task, result["class_names"])[0],
        "per_class_iou": result["per_class_iou"],
        "per_class_dice": result["per_class_dice"],
        "pixel_accuracy": result["pixel_accuracy"],
        "amp": sorted({f["amp"] for f in per_fold if f.get("amp")}) or None,
        "pseudo": _pseudo_record(cfg, run, per_fold),
        "oof": made[0] if made and all(m == made[0] for m in made) else (made or None),
        "per_fold": per_fold,
        "time_budget": _budget_record(cfg, run),
        **(extra or {}),
    }
    if len(made) > 1 and any(m != made[0] for m in made):
        log.warning("the OOF files of %s were made with different TTA per fold (%s); remake them with `seg-toolkit oof`", run.dir, made)
    write_json(run.cv_json, cv)
    save_oof_summary(run, result)  # after cv.json: a summary older than cv.json reads as stale
    return cv


def _pseudo_record(cfg: Config, run: Run, per_fold: list[dict[str, Any]]) -> dict[str, Any] | None:
    """cv.json's ``pseudo``: :func:`~seg_toolkit.pseudo.pseudo_info` of the config now, leaky also when a fold's
    ``done.json`` says it trained leaky (its teacher or ``init_from`` was leaky then and has been retrained since, or
    moved away): a fold's weights keep what they learned, whatever the config or those runs say later."""
    if run.is_ensemble:
        return None  # the members' record comes with the ensemble (extra)
    try:
        now = pseudo_info(cfg)
    except ConfigError as e:  # the teacher or init_from run is not where the config says any more
        log.warning("cv.json's pseudo record from the folds' done.json only: %s", e)
        now = None
    leaked = [f for f in per_fold if isinstance(f.get("pseudo"), dict) and f["pseudo"].get("leaky")]
    if not leaked:
        return now
    out = dict(now or leaked[0]["pseudo"])
    out["leaky"] = True
    out["leaky_from"] = sorted({*(out.get("leaky_from") or []), *(x for f in leaked for x in f["pseudo"].get("leaky_from") or [])})
    out["leaky_folds"] = sorted(int(f["fold"]) for f in leaked if "fold" in f)
    return out


def _budget_record(cfg: Config, run: Run) -> dict[str, Any] | None:
    """``train.time_budget`` and, under ``train.min_fold_epochs``, the folds it left out (None: no budget)."""
    if cfg.train.time_budget is None or run.is_ensemble:
        return None
    return {"budget": cfg.train.time_budget, "min_fold_epochs": cfg.train.min_fold_epochs, "folds": run_folds(cfg, run),
            "left_out": left_out_folds(cfg, run)}

