"""Prediction on test images: experiments x folds x TTA (x tiles), streamed to the submission.

Memory stays bounded whatever the number of test images: one batch of images and
probabilities is alive at a time, and each image's rows are written as soon as it is
decided.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import load_model
from .config import Config
from .data import Sample, SegDataset, collate, load_test_samples
from .postprocess import PostParams, apply_postprocess, load_params
from .submission import SubmissionWriter, mask_rows, submission_columns, submission_path
from .tensors import probs_to_uint8, resize_to
from .train import _autocast, completed_folds_dirs, resolve_device
from .tta import expand_tta, tta_predict

log = logging.getLogger(__name__)

__all__ = ["Member", "load_members", "predict_probs", "iter_test_probs", "predict_test", "tta_settings"]


class TiledModel(nn.Module):
    """A model run by sliding window: tiles of ``tile_size`` with Gaussian-weighted overlap."""

    def __init__(self, model: nn.Module, tile_size: list[int], overlap: float, max_batch: int) -> None:
        super().__init__()
        self.model, self.tile_size, self.overlap, self.max_batch = model, tuple(tile_size), overlap, max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .tiling import sliding_window_predict

        return sliding_window_predict(self.model, x, self.tile_size, self.overlap, max_batch=self.max_batch)


# ----------------------------------------------------------------------------- TTA chosen on OOF (tta_search)


def tta_settings(cfg: Config) -> tuple[list[str], str]:
    """``(transforms, merge mode)`` for prediction: those chosen on OOF in ``run_dir/tta.json``
    (written by ``seg-toolkit tune --tta``, :func:`seg_toolkit.tta_search.choose_tta`) when it
    exists, else ``predict.tta`` / ``predict.merge``. The choice is logged."""
    import json

    from .config import ConfigError
    from .tta import MERGE_MODES

    path = cfg.run_dir / "tta.json"
    if not path.is_file():
        return list(cfg.predict.tta), cfg.predict.merge
    try:
        data = json.loads(path.read_text())
        tta, merge = data["tta"], data["merge"]
        expand_tta(tta)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a TTA choice ({type(e).__name__}: {e}); run `seg-toolkit tune CONFIG --tta` again or delete it") from None
    if merge not in MERGE_MODES:
        raise ConfigError(f"{path}: merge {merge!r} is not one of {', '.join(MERGE_MODES)}")
    log.info("TTA chosen on OOF (%s): %s, merge %s (config: %s, %s)", path, tta, merge, cfg.predict.tta, cfg.predict.merge)
    return list(tta), merge


@dataclass
class Member:
    """One experiment of an ensemble: its config, fold models and weight.

    ``tta`` / ``merge`` default to :func:`tta_settings` (the OOF choice in ``tta.json``, else the config's).
    """

    cfg: Config
    models: list[nn.Module]
    weight: float = 1.0
    tta: list[str] | None = None
    merge: str | None = None

    def __post_init__(self) -> None:
        if self.tta is None or self.merge is None:
            tta, merge = tta_settings(self.cfg)
            self.tta = self.tta if self.tta is not None else tta
            self.merge = self.merge or merge


def load_members(cfgs: list[Config], weights: list[float] | None, device: torch.device) -> list[Member]:
    from .config import ConfigError

    weights = weights or [1.0] * len(cfgs)
    if len(weights) != len(cfgs):
        raise ConfigError(f"--weights: {len(weights)} weights for {len(cfgs)} experiments")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"--weights: expected non-negative weights with a positive sum, got {weights}")
    total = float(sum(weights))
    members = []
    for cfg, w in zip(cfgs, weights):
        paths = [d / "best.pt" for d in completed_folds_dirs(cfg.run_dir)]
        if not paths:
            raise FileNotFoundError(f"{cfg.run_dir}: no completed fold with best.pt; run `seg-toolkit train` first")
        models = []
        for p in paths:
            model, _ = load_model(p, map_location=device, use_ema=cfg.train.use_ema)
            if cfg.predict.tile_size:
                model = TiledModel(model, cfg.predict.tile_size, cfg.predict.tile_overlap, cfg.tta_batch(device.type))
            models.append(model.eval())
        members.append(Member(cfg, models, w / total))
    return members


@torch.inference_mode()
def predict_probs(members: list[Member], images: torch.Tensor, task: str) -> torch.Tensor:
    """Weighted mean over experiments and folds of each model's TTA probabilities ``(N, C, H, W)``.

    Averaging is in probability space, or in logit space when ``predict.ensemble_space: logit``.
    """
    space = members[0].cfg.predict.ensemble_space
    acc = None
    for m in members:
        p = m.cfg.predict
        for model in m.models:
            with _autocast(m.cfg, images.device):
                probs = tta_predict(model, images, task, expand_tta(m.tta), p.scales, m.merge, m.cfg.tta_batch(images.device.type)).float()
            if space == "logit":
                probs = torch.logit(probs.clamp(1e-6, 1 - 1e-6)) if task != "multiclass" else probs.clamp_min(1e-6).log()
            w = m.weight / len(m.models)
            acc = probs * w if acc is None else acc.add_(probs, alpha=w)
    if space == "logit":
        acc = acc.softmax(1) if task == "multiclass" else acc.sigmoid()
    return acc


def iter_test_probs(members: list[Member], samples: list[Sample], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(id, probabilities (C, H, W))`` at each image's original size, one batch alive at a time."""
    cfg = members[0].cfg
    loader = DataLoader(SegDataset(samples, cfg, "test"), batch_size=cfg.predict.batch_size, shuffle=False,
                        num_workers=cfg.train.num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        probs = predict_probs(members, images, cfg.data.task)
        for j, image_id in enumerate(batch["id"]):
            h, w = batch["size"][j].tolist()
            yield image_id, resize_to(probs[j : j + 1], (h, w))[0]


def forward_passes_per_image(members: list[Member]) -> int:
    n = 0
    for m in members:
        p = m.cfg.predict
        n += len(m.models) * len(expand_tta(m.tta)) * len(p.scales)
    return n


def predict_test(cfgs: list[Config], weights: list[float] | None = None, out: str | Path | None = None,
                 overwrite: bool = False) -> Path:
    """Predict the test images with every completed fold of each experiment and write the submission.

    Post-processing parameters come from the first experiment's ``postprocess.json`` (tuned
    on OOF) or its config. Rows follow ``sample_submission.csv``; the file is written only if
    its ids match the sample exactly.
    """
    cfg = cfgs[0]
    device = resolve_device(cfg.train.device)
    members = load_members(cfgs, weights, device)
    samples = load_test_samples(cfg)
    params: PostParams = load_params(cfg, cfg.run_dir)
    out = Path(out) if out else submission_path(cfg)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it, or --out for another file")
    columns = submission_columns(cfg)
    expected = _expected_ids(cfg, samples)
    probs_dir = cfg.run_dir / "test_probs" if cfg.predict.save_probs != "none" else None
    if probs_dir:
        probs_dir.mkdir(parents=True, exist_ok=True)
    passes = forward_passes_per_image(members)
    log.info("predicting %d test images: %d forward passes each (%s)", len(samples), passes,
             " + ".join(f"{len(m.models)} folds x {len(expand_tta(m.tta))} TTA x {len(m.cfg.predict.scales)} scales" for m in members))
    with SubmissionWriter(out, columns, expected) as writer:
        bar = tqdm(iter_test_probs(members, samples, device), total=len(samples), desc=f"predict ({passes} passes/image)", disable=None)
        for image_id, probs in bar:
            p = probs.cpu().numpy()
            if probs_dir is not None:
                _save_probs(probs_dir / f"{image_id}.npy", p, cfg.predict.save_probs)
            writer.write(mask_rows(image_id, apply_postprocess(p, cfg.data.task, params), cfg))
    log.info("wrote %s", out)
    return out


def _save_probs(path: Path, probs: np.ndarray, kind: str) -> None:
    np.save(path, probs.astype(np.float16) if kind == "float16" else probs_to_uint8(probs))


def _expected_ids(cfg: Config, samples: list[Sample]) -> list[str] | None:
    """The sample submission's id column, in order (None when the competition ships no sample)."""
    import pandas as pd

    path = cfg.data_path(cfg.data.sample_submission)
    if not path.is_file() or cfg.data.test_lists:
        return None
    id_col = submission_columns(cfg)[0]
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=[id_col])[id_col].tolist()



def evaluate_split(cfgs: list[Config], weights: list[float] | None = None) -> dict:
    """Score the ensemble on the labelled held-out lists (``data.test_lists``), never trained on.

    Uses the same predictor as the submission (folds x TTA, post-processing tuned on OOF)
    and writes ``runs/<experiment>/evaluate_test.json``: the configured metric, mean IoU,
    per-class IoU and dice, and pixel accuracy, void ignored.
    """
    import json

    from .config import ConfigError
    from .data import DataError, load_list_samples, load_train_samples
    from .metrics import Evaluator
    from .tensors import resize_to

    cfg = cfgs[0]
    if not cfg.data.test_lists:
        raise ConfigError("data.test_lists: name the list file(s) of the labelled held-out split, e.g. [test.txt]")
    samples = load_list_samples(cfg, cfg.data.test_lists)
    leaked = {s.id for s in samples} & {s.id for s in load_train_samples(cfg)}
    if leaked:
        raise DataError(f"{len(leaked)} held-out ids are also training ids (e.g. {sorted(leaked)[:3]}); the test split must be unseen")
    device = resolve_device(cfg.train.device)
    members = load_members(cfgs, weights, device)
    params = load_params(cfg, cfg.run_dir)
    probs_eval = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    masks_eval = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    loader = DataLoader(SegDataset(samples, cfg, "valid"), batch_size=cfg.predict.batch_size, shuffle=False,
                        num_workers=cfg.train.num_workers, collate_fn=collate)
    for batch in tqdm(loader, desc=f"evaluate {len(samples)} held-out images", disable=None):
        probs = predict_probs(members, batch["image"].to(device), cfg.data.task)
        targets = batch["target"] if isinstance(batch["target"], list) else list(batch["target"])
        for j, target in enumerate(targets):
            p = resize_to(probs[j : j + 1], target.shape[-2:]).cpu()
            probs_eval.update(p, target[None])
            mask = apply_postprocess(p[0].numpy(), cfg.data.task, params)
            masks_eval.update_masks(torch.from_numpy(mask)[None], target[None])
    raw, post = probs_eval.compute(), masks_eval.compute()
    result = {
        "split": "test", "lists": cfg.data.test_lists, "n_images": len(samples), "metric": post["metric"],
        "score": float(post["score"]), "score_before_postprocess": float(raw["score"]),
        "per_class_iou": post.get("per_class_iou"), "per_class_dice": post.get("per_class_dice"),
        "pixel_accuracy": post.get("pixel_accuracy"), "folds": [len(m.models) for m in members],
    }
    out = cfg.run_dir / "evaluate_test.json"
    out.write_text(json.dumps(result, indent=2, default=float))
    return result
