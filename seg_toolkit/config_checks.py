"""Everything knowable when a config loads, checked when it loads (called by ``config_from_dict``).

Each rule fails with one line naming the dotted key and what was expected; sections are
checked in the order of :class:`~seg_toolkit.config.Config`, so the first problem in the file
is the one reported. Augmentations, TTA names, losses and the architecture name are checked by
the modules that use them, imported lazily (no import cycle; no model is built); the ``data``
section's rules are in :mod:`seg_toolkit.config_data_checks`, the ``transforms`` section's in
:mod:`seg_toolkit.config_transform_checks`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from .config import Config, ConfigError, check_deep_supervision_arch
from .config_data_checks import check_data_config
from .config_consistency import check_consistency
from .config_submission_checks import check_data_empty_token, check_submission_config
from .config_transform_checks import check_transforms, finite_number, warn_normalisation

__all__ = ["check_config"]

log = logging.getLogger(__name__)


def check_config(cfg: Config, trained: bool = False) -> None:
    """Cross-field rules the types cannot say: everything knowable at load time.

    ``trained``: the config of a trained run (its ``config.yaml``, a checkpoint's copy): the pretrained
    encoder file (``model.encoder_weights``) is not needed any more, every weight is in the checkpoints,
    so it is not looked for (a run folder moved to a machine without it, an offline kernel, still predicts).

    Each rule fails with one line naming the dotted key and what was expected; sections are
    checked in the order of :class:`Config`, so the first problem in the file is the one
    reported. Augmentations, TTA names, losses and the architecture name are checked by the
    modules that use them, imported lazily (no import cycle; no model is built).
    ``train.device`` is not checked here (see :func:`_check_train`).
    """
    for check in (
        _check_experiment,
        check_data_config,
        check_data_empty_token,
        _check_folds,
        check_transforms,
        *(() if trained else (_check_weights_file,)),
        _check_model,
        *(() if trained else (warn_normalisation,)),
        _check_loss,
        _check_numbers,
        _check_train,
        _check_metric,
        _check_pseudo,
        _check_predict,
        _check_postprocess,
        check_submission_config,
        *(() if trained else (_check_track,)),  # a trained run's predict / report / bundle track nothing
        check_consistency,
    ):
        check(cfg)


def _check_unit(values: list[float], key: str) -> None:
    """Every value a probability in [0, 1]."""
    for i, v in enumerate(values):
        if not (finite_number(v) and 0.0 <= v <= 1.0):
            where = f"{key}[{i}]" if len(values) > 1 else key
            raise ConfigError(f"{where}: expected a probability in [0, 1], got {v}")


def _check_non_negative(values: list[int], key: str) -> None:
    for i, v in enumerate(values):
        if v < 0:
            where = f"{key}[{i}]" if len(values) > 1 else key
            raise ConfigError(f"{where}: expected >= 0, got {v}")


def _check_experiment(cfg: Config) -> None:
    check_run_name(cfg.experiment, "experiment")
    for key, value in (("runs_dir", cfg.runs_dir), ("data.root", cfg.data.root)):
        if not value.strip():  # a folder read as the working directory, and data.root's absence then named train.csv
            raise ConfigError(f"{key}: an empty string; expected a folder ('.' for the working directory)")


def check_run_name(name: str, key: str) -> None:
    """A run's folder name (``experiment``, ``ensemble --name``): one plain folder inside ``runs_dir``."""
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise ConfigError(f"{key}: {name!r} must be a plain folder name")


def _check_folds(cfg: Config) -> None:
    f, d = cfg.folds, cfg.data
    if f.n_splits < 2:
        raise ConfigError(f"folds.n_splits: expected >= 2, got {f.n_splits}")
    if f.method in ("group", "stratified_group") and not (d.group_column or d.group_pattern):
        raise ConfigError(
            f"folds.method: {f.method!r} needs data.group_column (a column of data.train_csv) or data.group_pattern"
        )
    for i in f.only:
        if not 0 <= i < f.n_splits:
            raise ConfigError(f"folds.only: fold {i} is outside 0..{f.n_splits - 1}")


def _number_rules(cfg: Config) -> list[tuple[str, Any, Callable[[float], bool], str]]:
    """(key, value, test, what was expected) for the numbers whose range the types cannot say."""
    m, o, s, t = cfg.model, cfg.optim, cfg.scheduler, cfg.train
    return [
        ("data.max_image_pixels", cfg.data.max_image_pixels, lambda v: v >= 1, "a number of pixels >= 1"),
        ("model.depth", m.depth, lambda v: v >= 1, "a number of down-sampling steps >= 1"),
        ("model.base_width", m.base_width, lambda v: v >= 1, "a number of channels >= 1"),
        ("model.dropout", m.dropout, lambda v: 0 <= v < 1, "a probability in [0, 1)"),
        ("model.freeze_encoder_epochs", m.freeze_encoder_epochs, lambda v: v >= 0, "a number of epochs >= 0"),
        ("model.encoder_lr_mult", m.encoder_lr_mult, lambda v: v >= 0, "a factor >= 0"),
        ("optim.lr", o.lr, lambda v: v > 0, "a learning rate > 0"),
        ("optim.weight_decay", o.weight_decay, lambda v: v >= 0, ">= 0"),
        ("optim.momentum", o.momentum, lambda v: 0 <= v < 1, "a momentum in [0, 1)"),
        ("scheduler.warmup_epochs", s.warmup_epochs, lambda v: v >= 0, "a number of epochs >= 0"),
        ("scheduler.min_lr", s.min_lr, lambda v: v >= 0, "a learning rate >= 0"),
        ("scheduler.power", s.power, lambda v: v > 0, "an exponent > 0"),
        ("scheduler.step_size", s.step_size, lambda v: v >= 1, "a number of epochs >= 1"),
        ("scheduler.gamma", s.gamma, lambda v: 0 < v <= 1, "a decay factor in (0, 1]"),
        ("scheduler.patience", s.patience, lambda v: v >= 0, "a number of epochs >= 0"),
        ("train.num_workers", t.num_workers, lambda v: v >= 0, "a number of loader processes >= 0"),
        ("train.empty_share", t.empty_share, lambda v: 0 <= v < 1,
         "a share of each epoch in [0, 1) (0: no empty image; 0.2: one image in five empty), or null (every image)"),
        ("train.grad_clip", t.grad_clip, lambda v: v > 0, "a gradient norm > 0, or null (no clipping)"),
        ("train.ema_decay", t.ema_decay, lambda v: 0 < v < 1, "a decay in (0, 1) such as 0.999, or null (no EMA)"),
        ("train.early_stopping_patience", t.early_stopping_patience, lambda v: v >= 1, "a number of epochs >= 1, or null"),
        ("train.early_stopping_min_delta", t.early_stopping_min_delta, lambda v: 0 <= v < 1,
         "0 <= delta < 1 (every metric scores in [0, 1]: a delta of 1 or more is never met, so every fold stopped after "
         "train.early_stopping_patience epochs)"),
        ("train.nan_retries", t.nan_retries, lambda v: v >= 0, "a number of retries >= 0"),
        ("train.nan_lr_factor", t.nan_lr_factor, lambda v: 0 < v <= 1, "a factor in (0, 1]"),
        ("train.log_every", t.log_every, lambda v: v >= 0, "a number of steps >= 0 (0: off)"),
    ]


def _check_numbers(cfg: Config) -> None:
    """A negative learning rate, a clip norm that flips the gradients' sign, an EMA decay above 1: refused at load,
    before the run folder is written (torch and timm refused some of them later with a traceback, others not at all)."""
    for key, value, ok, expected in _number_rules(cfg):
        if value is None and "null" in expected:
            continue
        if isinstance(value, bool) or not finite_number(value) or not ok(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    t, s = cfg.train, cfg.scheduler
    if t.use_ema and t.ema_decay is None:
        raise ConfigError("train.use_ema scores and predicts with the EMA weights: set train.ema_decay (e.g. 0.999), "
                          "or use_ema: false")
    if s.name == "onecycle" and s.warmup_epochs >= t.epochs:
        raise ConfigError(f"scheduler.warmup_epochs: onecycle warms up for part of train.epochs ({t.epochs}); "
                          f"expected fewer than that, got {s.warmup_epochs}")


def _check_train(cfg: Config) -> None:
    # train.device is deliberately not checked: a run config saved on a GPU machine must
    # still load on a laptop (reports); the CLI checks the device before any work.
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("train.epochs, train.batch_size and train.grad_accum must be >= 1")
    if t.keep_best_k < 1:
        raise ConfigError(f"train.keep_best_k: expected >= 1, got {t.keep_best_k}")
    if t.average_best and t.keep_best_k < 2:
        raise ConfigError(f"train.average_best averages the train.keep_best_k best epochs: set keep_best_k >= 2 (got {t.keep_best_k})")
    if t.time_budget is not None:
        from .budget import parse_duration

        if parse_duration(t.time_budget, "train.time_budget") <= 0:
            raise ConfigError(f"train.time_budget: expected a positive duration such as 24m, got {t.time_budget!r}")
    if isinstance(t.min_fold_epochs, bool) or not isinstance(t.min_fold_epochs, int) or t.min_fold_epochs < 0:
        raise ConfigError(f"train.min_fold_epochs: expected a number of epochs >= 0 (0: off), got {t.min_fold_epochs!r}")
    if t.empty_share is not None and cfg.data.task == "multiclass":
        raise ConfigError("train.empty_share: draws images without foreground for binary and multilabel tasks; a multiclass "
                          "label map's class 0 is a class like the others (its empty images are not drawn apart)")
    if t.min_fold_epochs and t.time_budget is None:
        raise ConfigError("train.min_fold_epochs chooses how many folds fit train.time_budget; set a time_budget, or 0")
    if t.init_from is not None and not str(t.init_from).strip():
        raise ConfigError("train.init_from: expected a run folder (runs/<experiment>) or null")


def _check_pseudo(cfg: Config) -> None:
    p = cfg.pseudo
    if p.teacher is not None and not str(p.teacher).strip():  # Path("") is the working directory
        raise ConfigError("pseudo.teacher: expected a run folder (runs/<experiment>) or null")
    if not 0.5 <= p.confidence <= 1.0:
        raise ConfigError(f"pseudo.confidence: expected a probability in [0.5, 1], got {p.confidence}")
    if not 0.0 <= p.min_confident_fraction <= 1.0:
        raise ConfigError(f"pseudo.min_confident_fraction: expected a fraction in [0, 1], got {p.min_confident_fraction}")
    if p.max_images is not None and p.max_images < 1:
        raise ConfigError(f"pseudo.max_images: expected null (all) or >= 1, got {p.max_images}")
    if p.soft is True and cfg.data.task == "multiclass":
        raise ConfigError("pseudo.soft: soft targets are probabilities per channel (data.task binary or multilabel); "
                          "a multiclass label map holds one class id per pixel")
    if not isinstance(p.soft, bool):
        raise ConfigError(f"pseudo.soft: expected true or false, got {p.soft!r}")


def _check_metric(cfg: Config) -> None:
    _check_unit([cfg.metric.threshold], "metric.threshold")


def _check_postprocess(cfg: Config) -> None:
    p, n = cfg.postprocess, cfg.data.num_classes
    for key, values in (("threshold", p.threshold), ("min_area", p.min_area)):
        if len(values) not in (1, n):
            raise ConfigError(
                f"postprocess.{key}: {len(values)} values for data.num_classes={n} (give one, or one per class)"
            )
    _check_unit(p.threshold, "postprocess.threshold")
    _check_non_negative(p.min_area, "postprocess.min_area")
    if p.empty_gate is not None:
        _check_unit([p.empty_gate], "postprocess.empty_gate")
    if not p.threshold_grid:
        raise ConfigError("postprocess.threshold_grid: give at least one threshold, e.g. [0.3, 0.4, 0.5, 0.6, 0.7]")
    _check_unit(p.threshold_grid, "postprocess.threshold_grid")
    if not p.min_area_grid:
        raise ConfigError("postprocess.min_area_grid: give at least one area, e.g. [0, 10, 50, 100]")
    _check_non_negative(p.min_area_grid, "postprocess.min_area_grid")
    bad = [w for w in p.class_weight_grid if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < float("inf")]
    if bad:
        raise ConfigError(f"postprocess.class_weight_grid: expected positive weights (e.g. [0.6, 0.8, 1.25, 1.6]), got {bad}")
    if p.search != "auto" and cfg.data.task == "multiclass":
        raise ConfigError(f"postprocess.search: {p.search} chooses how thresholds, min_area and gates are searched together; "
                          "a multiclass run has no threshold or gate (only min_area and class weights): remove it")
    if p.class_weight_grid and cfg.data.task != "multiclass":
        raise ConfigError(f"postprocess.class_weight_grid: weighs a multiclass argmax; data.task is {cfg.data.task} "
                          "(tune its thresholds: postprocess.threshold_grid)")
    _check_split(cfg)


def _check_split(cfg: Config) -> None:
    """``postprocess.split_seed`` / ``split_seed_grid``: probabilities in (0, 1] (the grid may hold null: no split), on
    a binary or multilabel task, under an object-matching metric, the one that scores the split (tune's pixel
    tables do not cut objects apart)."""
    from .instance_metrics import INSTANCE_METRICS

    p, task = cfg.postprocess, cfg.data.task
    for key, values in (("split_seed", [p.split_seed]), ("split_seed_grid", p.split_seed_grid)):
        bad = [v for v in values if v is not None and (isinstance(v, bool) or not finite_number(v) or not 0 < v <= 1)]
        if bad:
            raise ConfigError(f"postprocess.{key}: expected a probability in (0, 1] (the seeds are p >= it), got {bad[0]!r}")
        if task == "multiclass" and any(v is not None for v in values):
            raise ConfigError(f"postprocess.{key}: cuts touching objects of a binary / multilabel mask apart; data.task is "
                              "multiclass")
    for key, on in (("split_seed", p.split_seed is not None), ("split_seed_grid", bool(p.split_seed_grid))):
        if on and cfg.metric.name not in INSTANCE_METRICS:
            raise ConfigError(f"postprocess.{key}: cuts touching objects apart, which only an object-matching metric "
                              f"scores (metric.name: instance_map or instance_f2); metric.name is {cfg.metric.name!r}")
    if p.min_area_to != "background" and task != "multiclass":
        raise ConfigError(f"postprocess.min_area_to: {p.min_area_to!r} says which class a multiclass label map gives the "
                          f"pixels min_area removes; data.task is {task} (its removed pixels are simply left out)")
    if p.split_by != "distance":
        if p.split_seed is None and not any(v is not None for v in p.split_seed_grid):
            raise ConfigError(f"postprocess.split_by: {p.split_by!r} says how objects are cut apart, but there is no "
                              "postprocess.split_seed or split_seed_grid to cut them")
        try:
            import skimage.segmentation  # noqa: F401
        except ImportError:
            raise ConfigError("postprocess.split_by: 'probability' cuts along a watershed of scikit-image, which is not "
                              "installed: pip install 'seg_toolkit[instances]' (or scikit-image), or split_by: distance") from None


def _check_predict(cfg: Config) -> None:
    p = cfg.predict
    if p.batch_size < 1:
        raise ConfigError(f"predict.batch_size: expected >= 1, got {p.batch_size}")
    if not p.scales:
        raise ConfigError("predict.scales: give at least one scale, e.g. [1.0]")
    for i, s in enumerate(p.scales):
        if not (finite_number(s) and s > 0):
            raise ConfigError(f"predict.scales[{i}]: expected a number > 0, got {s}")
    if p.tile_size is not None and (len(p.tile_size) != 2 or min(p.tile_size) < 1):
        raise ConfigError(f"predict.tile_size: expected null or [height, width] of positive ints, got {p.tile_size}")
    if not (finite_number(p.tile_overlap) and 0.0 <= p.tile_overlap < 1.0):
        raise ConfigError(f"predict.tile_overlap: expected 0 <= overlap < 1, got {p.tile_overlap}")
    if p.max_tta_batch is not None and p.max_tta_batch < 1:
        raise ConfigError(f"predict.max_tta_batch: expected null or >= 1, got {p.max_tta_batch}")
    from .tta import expand_tta  # lazy: tta imports torch and this module

    try:
        expand_tta(p.tta)
    except ConfigError as e:
        raise ConfigError(f"predict.tta: {e}") from None


def _check_loss(cfg: Config) -> None:
    if not cfg.loss:
        raise ConfigError("loss: name at least one loss with a weight, e.g. {bce: 0.5, dice: 0.5}")
    from .losses import build_loss  # lazy: imports torch; builds small modules, no model

    build_loss(cfg)  # names, task support, parameters and weights; errors name loss.* / loss_params.*


def _check_model(cfg: Config) -> None:
    ds = cfg.model.deep_supervision
    if not (isinstance(ds, (int, float)) and 0 <= ds <= 10):
        raise ConfigError(f"model.deep_supervision: expected a loss weight in [0, 10] (0 = off), got {ds!r}")
    if ds > 0:
        check_deep_supervision_arch(cfg.model.arch)
    cls = cfg.model.classifier
    if not (isinstance(cls, (int, float)) and not isinstance(cls, bool) and 0 <= cls <= 10):
        raise ConfigError(f"model.classifier: expected a loss weight in [0, 10] (0 = off), got {cls!r}")
    if cls > 0 and cfg.data.task == "multiclass":
        raise ConfigError("model.classifier: the empty-mask classifier gates per-class masks (data.task binary or "
                          "multilabel); a multiclass argmax has no empty mask to gate")
    if cls > 0 and cfg.predict.tile_size is not None:
        raise ConfigError(f"model.classifier with predict.tile_size {cfg.predict.tile_size}: the classifier answers whether "
                          "the image it sees holds the class, so by tiles it answers per tile, and the blended answer "
                          "for one small object in a large image fell from 0.9999 to 0.05; predict whole images "
                          "(predict.tile_size: null; the models pad) or train without the classifier")
    arch = cfg.model.arch
    if cls > 0 and arch == "dpt":  # smp's ViT encoder returns (features, prefix tokens): the head got a list
        raise ConfigError("model.classifier with model.arch dpt: the classifier head reads the encoder's deepest feature "
                          "map, which smp's ViT encoder returns with its prefix tokens; use another architecture or no "
                          "classifier")
    if arch == "scratch_unet":  # always registered; spares importing smp and timm
        from .models.scratch_unet import check_scratch_keys

        check_scratch_keys(cfg.model)
        return
    from .models.registry import check_model_keys, closest_names, list_architectures  # lazy: imports smp and timm
    from .models.smp_models import check_decoder_depth

    names = list_architectures()
    if arch not in names:
        close = closest_names(arch.lower(), names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.arch: unknown architecture {arch!r}{hint} (valid: {', '.join(names)})")
    check_decoder_depth(arch, cfg.model.params or {})
    check_model_keys(cfg.model)  # the encoder name, params and weight-set name, before any data is read


def _check_weights_file(cfg: Config) -> None:
    """A weights file must exist now, not after the data is read; ``encoder_weights_map: order`` needs a tu- file."""
    m = cfg.model
    from .models.weights import check_order_mappable, is_weights_path, resolve_weights_path  # lazy: imports torch

    is_file = m.encoder_weights is not None and is_weights_path(m.encoder_weights)
    if is_file:
        path = resolve_weights_path(m.encoder_weights)
        if not os.path.isfile(path):
            raise ConfigError(f"model.encoder_weights: weights file not found: {m.encoder_weights!r} (looked for {path})")
    if m.encoder_weights_map == "order":
        if not is_file:
            raise ConfigError(f"model.encoder_weights_map: order maps a weights file; model.encoder_weights is {m.encoder_weights!r}")
        if not (m.encoder or "").startswith("tu-"):
            raise ConfigError(f"model.encoder_weights_map: order maps onto a timm model; model.encoder {m.encoder!r} is not a tu- encoder")
        check_order_mappable(m.encoder_weights)


def _check_track(cfg: Config) -> None:
    """An explicitly chosen tracker must be installed (looked up without importing it: config loading stays light)."""
    import importlib.util

    backend = cfg.track.backend
    need = {"mlflow": "mlflow", "tensorboard": "tensorboard"}.get(backend)
    if need and importlib.util.find_spec(need) is None:
        raise ConfigError(f"track.backend: {backend} is not installed; pip install seg_toolkit[{backend}] "
                          f"(or pip install {need}), or set track.backend: auto or none")
    if cfg.track.experiment is not None and not cfg.track.experiment.strip():
        raise ConfigError("track.experiment: expected a name or null (null: the config's experiment name)")
