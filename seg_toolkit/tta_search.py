"""Choose the TTA transforms and merge mode by out-of-fold score: ``run_dir/tta.json``.

``choose_tta(cfg)`` predicts each completed fold's validation images (from ``folds.csv``)
with that fold's ``best.pt`` under every candidate TTA set and merge mode, turns the
probabilities into the masks that would be submitted (resized to each image's own size,
post-processed with the parameters of ``postprocess.json`` when present, else the
config's) and scores them with :class:`~seg_toolkit.metrics.Evaluator` over all OOF
images at once, as ``cv.json`` does. The best pair is written to ``run_dir/tta.json``,
which :func:`seg_toolkit.inference.tta_settings` reads, so ``predict``, ``ensemble`` and
``evaluate`` follow it. Test images are never read.

Work is shared: for each batch, every distinct (transform, scale) variant over all
candidates is run through the model once (batched like :func:`~seg_toolkit.tta.tta_predict`,
at most ``predict.max_tta_batch`` images per forward pass) and its de-augmented logits
are merged for each (candidate, merge) with :func:`~seg_toolkit.tta.merge_logits`. So
``identity`` runs once, not once per candidate and merge mode. Memory holds one batch's
logits per distinct variant.

Ties (equal score) go to the candidate with fewer transforms, then to the earlier one
(candidates in the order given, merge modes in the order given).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .checkpoint import load_model
from .config import Config, ConfigError
from .data import load_train_samples
from .data.folds import read_folds
from .metrics import Evaluator, resolve_metric_name
from .postprocess import apply_postprocess, load_params
from .tensors import resize_to
from .train import _autocast, build_loaders, completed_folds_dirs, resolve_device, split_fold
from .tta import MERGE_MODES, expand_tta, iter_variant_logits, merge_logits
from .tta import _Variant, _variants

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_MERGES", "choose_tta", "TTA_FILE"]

DEFAULT_CANDIDATES: list[list[str]] = [["identity"], ["identity", "hflip"], ["identity", "hflip", "vflip"], ["d4"]]
DEFAULT_MERGES: list[str] = ["mean_prob", "mean_logit"]
TTA_FILE = "tta.json"


def _check_candidates(candidates: Sequence[Sequence[str]], merges: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    if isinstance(merges, str):
        merges = [merges]
    cands = [[candidate] if isinstance(candidate, str) else list(candidate) for candidate in candidates]
    if not cands or not merges:
        raise ConfigError("choose_tta: give at least one TTA candidate and one merge mode")
    for c in cands:
        expand_tta(c)  # names checked, with the closest valid one in the error
    for m in merges:
        if m not in MERGE_MODES:
            import difflib

            close = difflib.get_close_matches(str(m), MERGE_MODES, n=1)
            raise ConfigError(f"unknown merge mode {m!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                              f"choices: {', '.join(MERGE_MODES)}")
    return cands, list(dict.fromkeys(merges))


def _variant_logits(model, images: torch.Tensor, variants: list[_Variant], max_batch: int) -> dict[_Variant, torch.Tensor]:
    """De-augmented float32 logits ``(N, C, H, W)`` of each variant, batched as ``tta_predict`` batches them."""
    n = int(images.shape[0])
    out: dict[_Variant, torch.Tensor] = {}
    for v, rows, logits in iter_variant_logits(model, images, variants, max_batch):
        if v not in out:
            out[v] = torch.empty((n, *logits.shape[1:]), dtype=torch.float32, device=logits.device)
        out[v][rows] = logits.float()
    return out


def _better(score: float, n_transforms: int, best: tuple[float, int] | None) -> bool:
    """Strictly higher score, or the same score with fewer transforms (NaN never wins)."""
    if math.isnan(score):
        return False
    if best is None or math.isnan(best[0]):
        return True
    return score > best[0] or (score == best[0] and n_transforms < best[1])


def choose_tta(
    cfg: Config,
    run_dir: str | Path | None = None,
    candidates: Sequence[Sequence[str]] | None = None,
    merges: Sequence[str] | None = None,
) -> dict:
    """Score every (TTA set, merge mode) on the OOF images of the completed folds; write ``tta.json``.

    Returns what ``run_dir/tta.json`` holds: ``tta`` and ``merge`` (the choice), ``score``
    (its OOF score), ``metric``, ``scores`` (one entry per pair: ``tta``, ``merge``,
    ``n_transforms``, ``score`` over all OOF images and ``fold_scores``), ``folds``,
    ``n_images``, ``scales``, ``forward_passes`` and ``postprocess`` (which parameters made
    the masks). ``predict.scales`` combine with every candidate, as in prediction.
    """
    t0 = time.perf_counter()
    run = Path(run_dir) if run_dir is not None else cfg.run_dir
    cands, merge_list = _check_candidates(candidates if candidates is not None else DEFAULT_CANDIDATES,
                                          merges if merges is not None else DEFAULT_MERGES)
    fold_dirs = completed_folds_dirs(run)
    if not fold_dirs:
        raise FileNotFoundError(f"{run}: no completed fold (fold_*/done.json); train first")
    folds_csv = run / "folds.csv"
    folds_df = read_folds(folds_csv)
    samples = load_train_samples(cfg)
    known = {s.id for s in samples}
    unknown = [i for i in folds_df["id"] if i not in known]
    if unknown:
        raise FileNotFoundError(f"{folds_csv} names {len(unknown)} ids that are not training samples (e.g. {unknown[0]!r}); "
                                "it was made for other data")

    task, c = cfg.data.task, cfg.data.num_classes
    p = cfg.predict
    scales = list(dict.fromkeys(float(s) for s in p.scales))
    expanded = [expand_tta(cand) for cand in cands]
    union = list(dict.fromkeys(t for names in expanded for t in names))
    all_variants = _variants(union, scales)
    cand_variants = [_variants(names, scales) for names in expanded]  # tta_predict's order: scales outer
    params_path = run / "postprocess.json"
    params = load_params(cfg, run)
    pairs = [(i, m) for i in range(len(cands)) for m in merge_list]
    overall = {pair: Evaluator(cfg.metric, task, c) for pair in pairs}
    fold_scores: dict[tuple[int, str], list[float]] = {pair: [] for pair in pairs}
    device = resolve_device(cfg.train.device)
    folds, n_images, passes = [], 0, 0
    log.info("choose_tta: %d candidates x %d merge modes on the OOF images of %d folds (%d distinct variants per image)",
             len(cands), len(merge_list), len(fold_dirs), len(all_variants))

    for d in fold_dirs:
        k = int(d.name.split("_")[1])
        _, valid = split_fold(samples, folds_df, k)
        if not valid:
            continue
        folds.append(k)
        model, _ = load_model(d / "best.pt", map_location=device, use_ema=cfg.train.use_ema)
        if p.tile_size:
            from .inference import TiledModel

            model = TiledModel(model, p.tile_size, p.tile_overlap, cfg.tta_batch(device.type))
        model.eval()
        _, loader = build_loaders(cfg, [], valid, device)
        per_fold = {pair: Evaluator(cfg.metric, task, c) for pair in pairs}
        for batch in tqdm(loader, desc=f"choose_tta fold {k}", leave=False, disable=None):
            images = batch["image"].to(device)
            targets = batch["target"] if isinstance(batch["target"], list) else list(batch["target"])
            with torch.inference_mode(), _autocast(cfg, device):
                logits = _variant_logits(model, images, all_variants, cfg.tta_batch(device.type))
            passes += len(all_variants) * images.shape[0]
            for i, variants in enumerate(cand_variants):
                for merge in merge_list:
                    probs = merge_logits([logits[v] for v in variants], task, merge)
                    for j, target in enumerate(targets):
                        prob = resize_to(probs[j : j + 1], target.shape[-2:])[0].cpu().numpy()
                        mask = torch.from_numpy(apply_postprocess(prob, task, params))[None]
                        overall[(i, merge)].update_masks(mask, target[None])
                        per_fold[(i, merge)].update_masks(mask, target[None])
            n_images += images.shape[0]
            del logits
        for pair in pairs:
            fold_scores[pair].append(float(per_fold[pair].compute()["score"]))
        del model

    if not n_images:
        raise FileNotFoundError(f"{run}: the completed folds have no validation images in {folds_csv}")
    scores, best, chosen = [], None, None
    for i, merge in pairs:
        score = float(overall[(i, merge)].compute()["score"])
        n_t = len(cand_variants[i])
        scores.append({"tta": cands[i], "merge": merge, "n_transforms": n_t, "score": score,
                       "fold_scores": fold_scores[(i, merge)]})
        if _better(score, n_t, best):
            best, chosen = (score, n_t), scores[-1]
    if chosen is None:
        raise RuntimeError("choose_tta: every candidate scored NaN (nothing could be scored)")
    result = {
        "tta": chosen["tta"],
        "merge": chosen["merge"],
        "score": chosen["score"],
        "metric": resolve_metric_name(cfg.metric.name, task),
        "scores": scores,
        "folds": folds,
        "n_images": n_images,
        "scales": scales,
        "forward_passes": passes,
        "postprocess": str(params_path) if params_path.is_file() else "config",
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out = run / TTA_FILE
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    log.info("choose_tta: %s merge=%s (%s %.5f on %d OOF images); wrote %s",
             chosen["tta"], chosen["merge"], result["metric"], chosen["score"], n_images, out)
    return result
