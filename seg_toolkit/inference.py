"""Test predictions and held-out evaluation, through the one :class:`~seg_toolkit.predictor.Predictor`.

``predict_test`` and ``evaluate_split`` take the config of a run, trained or ensemble; the
predictor reads every member's preprocessing and TTA from its own run folder, and the
post-processing comes from the run's ``postprocess.json`` (tuned on OOF probabilities made
by the same predictor). Memory stays bounded whatever the number of test images: one batch
of images and probabilities is alive at a time, and each image's rows are written as soon
as it is decided.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .data import DataError, Sample, load_list_samples, load_test_samples, load_train_samples
from .device import resolve_device
from .metrics import Evaluator
from .postprocess import apply_postprocess, load_params
from .predictor import Predictor, check_same_training
from .run import Run, read_json, write_json, write_npy
from .submission import SubmissionWriter, mask_rows, submission_columns, submission_path
from .tensors import probs_to_uint8

log = logging.getLogger(__name__)

__all__ = ["run_predictor", "predict_test", "evaluate_split"]


def run_predictor(cfg: Config) -> tuple[Run, Predictor]:
    """The run of ``cfg`` and its predictor; a ``--set`` that changes how the run predicts is refused."""
    run = Run.of(cfg)
    if not run.config_yaml.is_file():
        raise FileNotFoundError(f"{run.dir}: no run folder (config.yaml); train the experiment first")
    check_same_training(cfg, run)
    device = resolve_device(cfg.train.device)
    predictor = Predictor.from_run(run, cfg=None if run.is_ensemble else cfg, device=device,
                                   batch_size=cfg.predict.batch_size, num_workers=cfg.train.num_workers)
    _warn_if_oof_differs(run, predictor)
    return run, predictor


def _warn_if_oof_differs(run: Run, predictor: Predictor) -> None:
    """Post-processing was tuned on OOF files made with some TTA; say so when prediction uses another
    (a hand-edited tta.json, or a run trained with ``predict.oof_tta: identity``)."""
    made = (read_json(run.cv_json) or {}).get("oof")
    if run.is_ensemble or not isinstance(made, dict):
        return
    m = predictor.members[0]
    now = {"tta": m.tta, "merge": m.merge, "scales": list(m.cfg.predict.scales), "tile_size": m.cfg.predict.tile_size}
    if any(made.get(k) != v for k, v in now.items()):
        log.warning("the OOF files of %s (and the post-processing tuned on them) were made with %s, but prediction uses %s; "
                    "remake them with `seg-toolkit oof CONFIG` so that what is tuned is what is submitted", run.dir, made, now)


def predict_test(cfg: Config, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Predict the test images with the run's predictor and write the submission.

    Rows follow ``sample_submission.csv``; the file is written only if its ids match the
    sample exactly. With ``predict.save_probs`` the merged probabilities (before
    post-processing) go to the run's ``test_probs/``.
    """
    if isinstance(cfg, (list, tuple)):
        if len(cfg) != 1:
            raise ConfigError("predict one run at a time; combine runs with `seg-toolkit ensemble`, which makes an ensemble run")
        cfg = cfg[0]
    out = Path(out) if out else submission_path(cfg)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it, or --out for another file")
    run, predictor = run_predictor(cfg)
    samples = load_test_samples(cfg)
    params = load_params(cfg, run)
    columns = submission_columns(cfg)
    expected = _expected_ids(cfg, samples)
    save = cfg.predict.save_probs
    passes = predictor.passes_per_image()
    log.info("predicting %d test images: %d forward passes each (%s)", len(samples), passes, predictor.describe())
    with SubmissionWriter(out, columns, expected, instance_rows=cfg.submission.instances) as writer:
        bar = tqdm(predictor.iter_probs(samples), total=len(samples), desc=f"predict ({passes} passes/image)", disable=None)
        for image_id, probs, _ in bar:
            p = probs.numpy()
            if save != "none":
                write_npy(run.test_prob_path(image_id), p.astype(np.float16) if save == "float16" else probs_to_uint8(p))
            writer.write(mask_rows(image_id, apply_postprocess(p, cfg.data.task, params), cfg))
    log.info("wrote %s", out)
    return out


def _expected_ids(cfg: Config, samples: list[Sample]) -> list[str] | None:
    """The sample submission's id column, in order (None when the competition ships no sample)."""
    import pandas as pd

    path = cfg.data_path(cfg.data.sample_submission)
    if not path.is_file() or cfg.data.test_lists:
        return None
    id_col = submission_columns(cfg)[0]
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=[id_col])[id_col].tolist()


def evaluate_split(cfg: Config) -> dict:
    """Score the run (trained or ensemble) on the labelled held-out lists (``data.test_lists``), never trained on.

    Uses the submission's predictor and post-processing and writes ``evaluate_test.json``:
    the configured metric, mean IoU, per-class IoU and dice, and pixel accuracy, void ignored.
    """
    if isinstance(cfg, (list, tuple)):
        cfg = cfg[0]
    if not cfg.data.test_lists:
        raise ConfigError("data.test_lists: name the list file(s) of the labelled held-out split, e.g. [test.txt]")
    samples = load_list_samples(cfg, cfg.data.test_lists)
    leaked = {s.id for s in samples} & {s.id for s in load_train_samples(cfg)}
    if leaked:
        raise DataError(f"{len(leaked)} held-out ids are also training ids (e.g. {sorted(leaked)[:3]}); the test split must be unseen")
    run, predictor = run_predictor(cfg)
    params = load_params(cfg, run)
    task, c = cfg.data.task, cfg.data.num_classes
    probs_eval, masks_eval = Evaluator(cfg.metric, task, c), Evaluator(cfg.metric, task, c)
    for _, probs, target in tqdm(predictor.iter_probs(samples, target_cfg=cfg), total=len(samples),
                                 desc=f"evaluate {len(samples)} held-out images", disable=None):
        probs_eval.update(probs[None], target[None])
        mask = apply_postprocess(probs.numpy(), task, params)
        masks_eval.update_masks(torch.from_numpy(mask)[None], target[None])
    raw, post = probs_eval.compute(), masks_eval.compute()
    result = {
        "split": "test", "lists": cfg.data.test_lists, "n_images": len(samples), "metric": post["metric"],
        "score": float(post["score"]), "score_before_postprocess": float(raw["score"]),
        "per_class_iou": post.get("per_class_iou"), "per_class_dice": post.get("per_class_dice"),
        "pixel_accuracy": post.get("pixel_accuracy"), "predictor": predictor.settings(),
    }
    write_json(run.evaluate_json, result)
    return result
