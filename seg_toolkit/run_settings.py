"""What a trained run fixes and how it predicts: the config keys training fixed (a command line that changes one
for an existing run is refused), the predict keys its OOF files were made with, and its TTA choice (``tta.json``,
else its ``predict.tta`` / ``predict.merge``). Read by the predictor, ``oof``, ``tune --tta``, ensembles and export."""

from __future__ import annotations

from typing import Sequence

from .config import Config, ConfigError, config_diff, config_to_dict
from .files import read_json
from .run import Run
from .tta import MERGE_MODES, expand_tta

__all__ = ["TRAINED_KEYS", "PREDICT_KEYS", "key_named", "diff_of_keys", "check_same_training", "check_fold_trained_as",
           "tta_settings"]

#: Config keys fixed by training: what a trained run's models were made with and its OOF
#: files were predicted with. A command line that changes one of them for an existing run
#: is refused (``seg-toolkit oof`` remakes the OOF after a change of the predict keys).
TRAINED_KEYS = ("data.task", "data.num_classes", "data.in_channels", "data.image_range", "data.exif_orientation",
                "data.pair_split", "data.pair_split_at", "data.bands.files",
                "data.bands.frame", "data.bands.ash", "data.ignore_index", "data.score_size", "transforms.resize",
                "transforms.mean", "transforms.std", "model.arch", "model.encoder", "model.depth", "model.base_width",
                "model.norm", "model.upsample", "model.dropout", "model.params.", "model.classifier", "train.use_ema")
# not in it: model.encoder_weights (a checkpoint holds every weight; offline kernels set it to null),
# model.channels_last (speed only), and the training-only keys (freeze_encoder_epochs, encoder_lr_mult, ...)
PREDICT_KEYS = ("predict.tta", "predict.scales", "predict.merge", "predict.tile_size", "predict.tile_overlap",
                "predict.oof_tta")


def key_named(key: str, prefixes: Sequence[str]) -> bool:
    """Whether the dotted config ``key`` is one of ``prefixes`` (a name ending in "." names a section)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def diff_of_keys(old: Config, new: Config, prefixes: Sequence[str]) -> list[str]:
    """:func:`~seg_toolkit.config.config_diff` restricted to the keys named in ``prefixes`` (:func:`key_named`)."""
    return [line for line in config_diff(config_to_dict(old), config_to_dict(new)) if key_named(line.split(": ", 1)[0], prefixes)]


def check_fold_trained_as(trained: Config, cfg: Config, run: Run, fold: int) -> None:
    """A fold's checkpoint, trained with ``trained`` (its own config), must fit ``cfg`` (the run's ``config.yaml``) on
    the trained keys: the file edited, or another run's best.pt copied in, gives preprocessing from one and the model from the
    other. The predictor refuses such a fold, and so does ``bundle``, before it reaches the target."""
    diff = diff_of_keys(trained, cfg, TRAINED_KEYS)
    if diff:
        raise ConfigError(f"{run.best_pt(fold)} was trained with other settings than {run.config_yaml} says "
                          f"({'; '.join(diff[:6])}); the run folder's files disagree: restore its config.yaml, or train "
                          "the fold again")


def check_same_training(cfg: Config, run: Run, also_predict: bool = True, skip: Sequence[str] = ()) -> None:
    """Refuse a config (e.g. with ``--set``) that would silently change how a trained run predicts
    (``skip``: predict keys the caller sets itself, as ``tune --tta`` does ``predict.tta`` and ``predict.merge``)."""
    if not run.config_yaml.is_file():
        return
    saved = run.config()
    if run.is_ensemble:  # each member predicts with its own saved settings: a --set of them would be ignored
        diff = diff_of_keys(saved, cfg, TRAINED_KEYS + PREDICT_KEYS + ("predict.ensemble_space",))
        if diff:
            raise ConfigError(f"{run.dir} is an ensemble: its members predict with their own saved settings and its "
                              f"weights were chosen in its saved space, so {'; '.join(diff[:6])} would be ignored; change "
                              "a member (`seg-toolkit oof MEMBER --set ...`) and build the ensemble again")
        return
    diff = diff_of_keys(saved, cfg, TRAINED_KEYS + (tuple(k for k in PREDICT_KEYS if k not in skip) if also_predict else ()))
    if diff:
        hint = ("; the predict keys are changed with `seg-toolkit oof CONFIG --set ...`, which remakes the OOF "
                "files and post-processing with them" if any(d.startswith("predict.") for d in diff) else
                "; those are fixed when the run is trained: train a new experiment to change them")
        raise ConfigError(f"{run.dir} was made with other settings than this config: {'; '.join(diff[:6])}{hint}")


def tta_settings(cfg: Config, run: Run | None = None) -> tuple[list[str], str]:
    """``(transforms, merge)``: the choice of ``tune --tta`` in the run's ``tta.json``, else ``predict.tta`` / ``predict.merge``."""
    run = run or Run.of(cfg)
    data = read_json(run.tta_json)
    if data is None:
        return list(cfg.predict.tta), cfg.predict.merge
    try:
        tta, merge = list(data["tta"]), data["merge"]
        expand_tta(tta)
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{run.tta_json}: not a TTA choice ({type(e).__name__}: {e}); run `seg-toolkit tune CONFIG --tta` again or delete it") from None
    except ConfigError as e:
        raise ConfigError(f"{run.tta_json}: not a TTA choice ({e}); run `seg-toolkit tune CONFIG --tta` again or delete it") from None
    if merge not in MERGE_MODES:
        raise ConfigError(f"{run.tta_json}: merge {merge!r} is not one of {', '.join(MERGE_MODES)}")
    return tta, merge
