"""Held-out evaluation through the submission's predictor: ``evaluate --split test`` and ``evaluate --on DIR``.

``evaluate_split`` scores the labelled held-out lists (``data.test_lists``), ``evaluate_on`` any labelled folder laid
out like the training data; both take the config of a run, trained or ensemble, get its predictor from
:func:`~seg_toolkit.inference.run_predictor` (every member's own preprocessing and TTA) and share one scoring loop
(:func:`score_samples`), which decides each image's mask exactly as ``predict`` does before it is encoded, with the
run's ``postprocess.json`` (tuned on OOF probabilities made by the same predictor). One batch of images is alive at a
time, whatever the number of images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .data import DataError, Sample, load_list_samples, load_train_samples
from .evaluator import Evaluator, resolve_metric_name, truth_objects
from .files import read_json, write_json
from .inference import _one, run_predictor
from .postprocess import apply_postprocess, load_params, on_oof_grid
from .predictor import Predictor
from .run import Run, RunExistsError

log = logging.getLogger(__name__)

__all__ = ["evaluate_split", "evaluate_on", "score_samples", "evaluation_name", "metric_tag"]


def score_samples(cfg: Config, run: Run, predictor: Predictor, samples: list[Sample], target_cfg: Config,
                  desc: str) -> dict[str, Any]:
    """Score the predictor on labelled ``samples`` (targets read with ``target_cfg``) as ``predict`` decides them.

    Each image's probabilities go through the run's post-processing (:func:`load_params`,
    :func:`apply_postprocess`), exactly as the submission does; the score before post-processing (of the same
    probabilities on the OOF files' grid) is kept beside. Returns the configured metric, mean IoU, per-class IoU and dice, and pixel accuracy
    (void ignored), the number of images and how the predictor ran.
    """
    params = load_params(cfg, run)
    task, c = cfg.data.task, cfg.data.num_classes
    probs_eval, masks_eval = Evaluator.of(cfg), Evaluator(cfg.metric, task, c)
    by_id = {s.id: s for s in samples}
    for image_id, probs, presence, target in tqdm(predictor.iter_predictions(samples, target_cfg=target_cfg),
                                                  total=len(samples), desc=desc, disable=None):
        objects = truth_objects(probs_eval, by_id[image_id], target_cfg, probs.shape[-2:])
        # on the OOF files' 1/255 grid, as apply_postprocess, cv.json and tune see them: the difference between the
        # two scores is what post-processing did, not rounding (float ties of a weak multiclass model broke apart)
        probs_eval.update(torch.from_numpy(on_oof_grid(probs))[None], target[None], objects)
        mask = apply_postprocess(probs.numpy(), task, params, presence)
        masks_eval.update_masks(torch.from_numpy(mask)[None], target[None], objects)
    raw, post = probs_eval.compute(), masks_eval.compute()
    return {
        "n_images": len(samples), "metric": post["metric"],
        "score": float(post["score"]), "score_before_postprocess": float(raw["score"]),
        "per_class_iou": post.get("per_class_iou"), "per_class_dice": post.get("per_class_dice"),
        "pixel_accuracy": post.get("pixel_accuracy"), "predictor": predictor.settings(),
    }


def evaluate_split(cfg: Config) -> dict:
    """Score the run (trained or ensemble) on the labelled held-out lists (``data.test_lists``), never trained on.

    Uses the submission's predictor and post-processing (:func:`score_samples`) and writes
    ``evaluate_test.json`` (under another ``metric.*`` than the run's: ``evaluations/evaluate_test.<tag>.json``,
    :func:`metric_tag`); the returned dict also says where (``written_to``).
    """
    cfg = _one(cfg)
    if not cfg.data.test_lists:
        raise ConfigError("data.test_lists: name the list file(s) of the labelled held-out split, e.g. [test.txt]")
    samples = load_list_samples(cfg, cfg.data.test_lists)
    leaked = {s.id for s in samples} & {s.id for s in load_train_samples(cfg)}
    if leaked:
        raise DataError(f"{len(leaked)} held-out ids are also training ids (e.g. {sorted(leaked)[:3]}); the test split must be unseen")
    run, predictor = run_predictor(cfg)
    tag = metric_tag(cfg, run)
    path = run.evaluate_json_for(f"evaluate_test.{tag}") if tag else run.evaluate_json
    scored = score_samples(cfg, run, predictor, samples, cfg, f"evaluate {len(samples)} held-out images")
    result = {"split": "test", "lists": cfg.data.test_lists, **scored}
    write_json(path, result)
    return {**result, "written_to": str(path)}


def metric_tag(cfg: Config, run: Run) -> str:
    """``""`` when ``cfg`` scores with the run's own ``metric.*`` (its ``config.yaml``), else the metric's name and 6
    hex digits of its keys (``tgs_map_mlebench-1a2b3c``): an evaluation under another metric gets a file of its own
    (:func:`evaluate_split`, :func:`evaluate_on`) and never replaces the run's."""
    def keys(m: Any) -> dict[str, Any]:
        return {**dataclasses.asdict(m), "name": resolve_metric_name(m.name, cfg.data.task)}

    mine = keys(cfg.metric)
    if mine == keys(run.config().metric):
        return ""
    return f"{mine['name']}-{hashlib.sha1(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:6]}"


def evaluation_name(folder: str | Path) -> str:
    """The name of ``folder``'s evaluation file: its base name (made file-safe) and 8 hex digits of its
    resolved path, so two folders of one name (``valid``) never share a file."""
    p = Path(folder).resolve()
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", p.name).strip("._") or "root"
    return f"{base}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


def _layout(cfg: Config) -> dict[str, Any]:
    """The data keys that say where a folder's labelled samples are."""
    d = cfg.data
    keys = ["layout", "train_images"] + (["train_csv"] if d.layout == "csv" else ["train_lists"] if d.train_lists else ["train_masks"])
    return {k: getattr(d, k) for k in keys}


def _layout_keys(cfg: Config) -> str:
    return ", ".join(f"data.{k} {v!r}" for k, v in _layout(cfg).items())


def _training_roots(cfg: Config, run: Run) -> set[Path]:
    """The data folders the run was trained from: this config's ``data.root`` and the saved config's."""
    roots = {Path(cfg.data.root).resolve()}
    if run.config_yaml.is_file():
        roots.add(Path(run.config().data.root).resolve())
    return roots


def evaluate_on(cfg: Config, folder: str | Path) -> dict:
    """Score the run (trained or ensemble) on every labelled sample of ``folder``, laid out like the training data.

    ``folder`` is read with the config's data keys (``data.layout``, ``train_images``,
    ``train_masks`` / ``train_csv``, ``train_lists``, ...) re-rooted there (``data.limit`` is
    not applied), and scored with the submission's predictor and post-processing
    (:func:`score_samples`). When ``folder`` is the run's own training data (``data.root``), the
    run's training ids are left out (``training_ids_left_out``; all of them: an error): their
    honest score is the OOF one of ``cv.json``; so are its ``data.exclude_ids`` (``excluded_ids_left_out``), images set
    aside on purpose, not held out. The result goes to the run's
    ``evaluations/<name>.json`` (:func:`evaluation_name`; under another ``metric.*`` than the run's,
    ``<name>.<tag>.json``, :func:`metric_tag`; a file there that is not this folder's evaluation is never replaced); the returned dict also says where (``written_to``).
    """
    cfg = _one(cfg)
    folder = Path(folder)
    what = "evaluate --on DIR: a labelled folder laid out like the training data"
    if not folder.exists():
        raise DataError(f"{folder}: folder not found ({what})")
    if not folder.is_dir():
        raise DataError(f"{folder}: is a file, not a folder ({what})")
    run, predictor = run_predictor(cfg)
    # the whole folder is scored: data.limit and data.exclude_ids are about the run's own training data
    on_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(folder), limit=None, exclude_ids=[]))
    try:
        samples = load_train_samples(on_cfg)
    except DataError as e:
        raise DataError(f"{e} (evaluate --on reads {folder} with the config's {_layout_keys(cfg)})") from None
    if not samples:
        raise DataError(f"{folder}: no labelled sample ({_layout_keys(cfg)})")
    missing = [s for s in samples if not s.image.is_file()]
    if missing:
        raise DataError(f"{missing[0].where}: {len(missing)} of {len(samples)} labelled ids have no image, e.g. "
                        f"{missing[0].id!r} (expected {missing[0].image}; data.train_images, data.image_ext)")
    on = str(folder.resolve())
    tag = metric_tag(cfg, run)
    path = run.evaluate_json_for(evaluation_name(folder) + (f".{tag}" if tag else ""))
    old = read_json(path)
    if path.exists() and (not isinstance(old, dict) or old.get("on") != on):
        raise RunExistsError(f"{path}: exists and is not the evaluation of {folder}; move it away (it is not replaced)")
    train_ids = set(run.fold_of()) if run.folds_csv.is_file() else set()
    excluded_left_out = 0
    if folder.resolve() in _training_roots(cfg, run):
        # data.exclude_ids of the run's own data: ids set aside on purpose (labels known wrong), not held-out images
        excluded = set(cfg.data.exclude_ids) | (set(run.config().data.exclude_ids) if run.config_yaml.is_file() else set())
        kept = [s for s in samples if s.id not in excluded]
        excluded_left_out = len(samples) - len(kept)
        if excluded_left_out:
            log.warning("%s is the training data of %s: its %d data.exclude_ids are left out too", folder, run.dir,
                        excluded_left_out)
        if not kept:
            raise DataError(f"{folder}: every labelled id is in data.exclude_ids of {run.dir}: nothing to score")
        samples = kept
    shared = [s.id for s in samples if s.id in train_ids]
    left_out = 0
    if shared and folder.resolve() in _training_roots(cfg, run):
        if len(shared) == len(samples):
            raise DataError(
                f"{folder} is the training data of {run.dir} (data.root) and all its {len(samples)} labelled ids are "
                "training ids of the run, never scored here: the held-out score of training images is the OOF score "
                "of cv.json (`seg-toolkit cv`); evaluate a folder of other labelled images")
        left_out = len(shared)
        samples = [s for s in samples if s.id not in train_ids]
        log.warning("%s is the training data of %s: its %d training ids are left out, %d other labelled ids scored",
                    folder, run.dir, left_out, len(samples))
    elif shared:
        log.warning("%d of the %d ids in %s are also training ids of %s (e.g. %s); if they are the same images, "
                    "the score is optimistic", len(shared), len(samples), folder, run.dir, shared[:3])
    scored = score_samples(cfg, run, predictor, samples, on_cfg, f"evaluate {len(samples)} images of {folder.name}")
    result = {"on": on, "data": _layout(cfg), "training_ids_left_out": left_out, "excluded_ids_left_out": excluded_left_out,
              **scored}
    write_json(path, result)
    return {**result, "written_to": str(path)}
