"""Multi-stage training: fold k of a run starts from fold k of an earlier run (``train.init_from``).

The usual second stage of a Kaggle pipeline (a higher resolution, another loss such as lovasz,
a lower learning rate) continues from the first stage's weights. Doing it per fold keeps CV
honest: fold k's new model has only ever seen fold k's training images, because the earlier
run was split by the same ``folds.csv`` (checked: every id in the same fold, else refused)
and fold k of it never trained on fold k's validation images. Starting every fold from one
model (or from another fold's) would carry validation images into training, so it is not
offered. The architecture must match key for key; the training resolution may differ.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from .checkpoint import chosen_weights, load_checkpoint
from .config import Config, ConfigError
from .run import Run

log = logging.getLogger(__name__)

__all__ = ["init_run", "init_source", "check_same_folds", "check_init_folds", "load_fold_init"]


def init_run(cfg: Config) -> Run | None:
    """The run named by ``train.init_from`` (None when unset); refused if it is not a trained run."""
    if cfg.train.init_from is None:
        return None
    run = Run(Path(cfg.train.init_from).expanduser())
    if not run.config_yaml.is_file() or run.is_ensemble:
        raise ConfigError(f"train.init_from: {run.dir} is not a trained run folder (no config.yaml, or an ensemble)")
    if run.dir.resolve() == Run.of(cfg).dir.resolve():
        raise ConfigError(f"train.init_from: {run.dir} is this run itself; use --resume to continue a run")
    return run


def check_same_folds(prev: Run, folds: pd.DataFrame, key: str) -> None:
    """Every image of ``folds`` must be in the same fold in ``prev``'s ``folds.csv`` (error names ``key``)."""
    if not prev.folds_csv.is_file():
        raise ConfigError(f"{key}: {prev.folds_csv} not found")
    from .data.folds import read_folds

    theirs = read_folds(prev.folds_csv)  # ids as written: "NA" or "null" is an id, not a missing value
    ours = folds[["id", "fold"]].astype({"id": str})
    merged = ours.merge(theirs[["id", "fold"]], on="id", how="left", suffixes=("", "_prev"))
    missing = merged["fold_prev"].isna()
    if missing.any():
        ids = merged.loc[missing, "id"].tolist()
        raise ConfigError(f"{key}: {len(ids)} image(s) of this run are not in {prev.folds_csv} (e.g. {ids[:3]}); "
                          "a fold would learn from a model that may have trained on its validation images")
    moved = merged[merged["fold"] != merged["fold_prev"].astype(int)]
    if len(moved):
        r = moved.iloc[0]
        raise ConfigError(f"{key}: {len(moved)} image(s) are in another fold in {prev.folds_csv} "
                          f"(e.g. {r['id']!r}: fold {int(r['fold_prev'])} there, {int(r['fold'])} here); use the same folds "
                          "(same folds settings and data), or fold k would learn from weights trained on its validation images")


def check_same_classes(cfg: Config, teacher: Run, key: str = "pseudo.teacher") -> None:
    """The earlier run's output channels (a ``pseudo.teacher``'s, or a ``train.init_from`` stage's) mean this run's
    classes: the same task and number of classes and, where both name them (``data.class_names`` or
    ``data.classes_csv``), the same names in the same order (a teacher of ``[b, a]`` would label a student of
    ``[a, b]`` with its channels swapped; a stage 2 would start from weights whose channel 0 is another class)."""
    from .data.colors import class_names

    tcfg = teacher.config()
    if tcfg.data.task != cfg.data.task or tcfg.data.num_classes != cfg.data.num_classes:
        raise ConfigError(f"{key}: {teacher.dir} predicts {tcfg.data.task} with {tcfg.data.num_classes} classes; "
                          f"this run is {cfg.data.task} with {cfg.data.num_classes}")
    named = [bool(c.data.class_names or c.data.classes_csv) for c in (tcfg, cfg)]
    if all(named) and class_names(tcfg) != class_names(cfg):
        raise ConfigError(f"{key}: {teacher.dir} names its classes {class_names(tcfg)}, this run "
                          f"{class_names(cfg)}: its channels would label other classes; give the two runs the same "
                          "classes in the same order")


#: trained keys a later stage may change: the resolution, the dropout, which weights (EMA or not) it keeps
STAGE_KEYS = ("transforms.resize", "model.dropout", "train.use_ema")


def check_init_run(cfg: Config, folds_to_train: list[int]) -> None:
    """Before anything is written: the earlier run must read its inputs as this one does (task, classes, channels,
    value range, bands, normalisation, architecture; the resolution may differ) and have a trained model for each
    fold to train. :func:`check_init_folds` checks its folds once this run's are made."""
    from .run_settings import TRAINED_KEYS, diff_of_keys

    prev = init_run(cfg)
    if prev is None:
        return
    diff = diff_of_keys(prev.config(), cfg, [k for k in TRAINED_KEYS if k not in STAGE_KEYS])
    if diff:  # e.g. another transforms.mean: the weights fitted to other inputs, fine-tuned without a word
        raise ConfigError(f"train.init_from: {prev.dir} was trained on inputs read otherwise than this config reads them "
                          f"({'; '.join(diff[:6])}); a later stage may change {', '.join(STAGE_KEYS)} and the training "
                          "settings, not how images and masks are read or the model")
    check_same_classes(cfg, prev, "train.init_from")  # data.class_names is not a trained key: the order is checked here
    done = set(prev.trained_folds())
    untrained = [k for k in folds_to_train if k not in done]
    if untrained:
        raise ConfigError(f"train.init_from: {prev.dir} has no trained fold(s) {untrained} (a fold is trained once its "
                          "done.json is written; a best.pt without it is a fold stopped mid-training: finish it with --resume)")


def check_init_folds(cfg: Config, folds: pd.DataFrame) -> None:
    """The earlier run (:func:`check_init_run`) has the same fold of every image as this run's ``folds``."""
    prev = init_run(cfg)
    if prev is not None:
        check_same_folds(prev, folds, "train.init_from")


def init_source(cfg: Config, fold: int) -> str | None:
    """The checkpoint fold ``fold`` started from (None without ``train.init_from``)."""
    prev = init_run(cfg)
    return str(prev.best_pt(fold)) if prev is not None else None


def load_fold_init(cfg: Config, fold: int, model: torch.nn.Module, ema=None) -> str | None:
    """Load fold ``fold``'s weights of ``train.init_from`` into ``model`` (and the EMA copy); the source path."""
    prev = init_run(cfg)
    if prev is None:
        return None
    path = prev.best_pt(fold)
    state = load_checkpoint(path)
    weights = chosen_weights(state, bool(state.get("config", {}).get("train", {}).get("use_ema", False)))
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in weights], [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"train.init_from: {path} does not fit this model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, other shapes {shapes[:3]}); the architecture must be the same")
    model.load_state_dict(weights)
    if ema is not None:
        ema.set(model)
    whence = (f"the mean of epochs {state['averaged_from']}" if state.get("averaged_from") else f"epoch {state.get('epoch')}")
    log.info("fold %d starts from %s (%s, val score %s)", fold, path, whence, state.get("best_score"))
    return str(path)
