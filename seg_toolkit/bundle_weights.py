"""A bundled fold's weights: the ones predict uses, as a weights-only ``best.pt``, float32 or, with ``--fp16``, float16
with the probability gap that costs measured on the fold's own validation images and said in a warning."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .bundle_check import BundleError, offline_config
from .checkpoint import chosen_weights, load_checkpoint, save_checkpoint
from .files import sha256_file
from .run import Run

__all__ = ["write_weights", "fp16_warning"]


def _half(name: str, t: Any, where: Path) -> Any:
    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float16):
        return t
    h = t.half()
    if not torch.isfinite(h).all() and torch.isfinite(t).all():
        raise BundleError(f"{where}: {name} has values beyond float16's range (max |x| {t.abs().max().item():.4g}); "
                          "bundle without --fp16")
    return h


def write_weights(run: Run, fold: int, dst: Path, use_ema: bool, fp16: bool) -> dict[str, Any]:
    """A weights-only checkpoint of ``run``'s fold (the weights predict uses, stored float16 with ``fp16``) that
    :func:`~seg_toolkit.checkpoint.load_model` reads like any ``best.pt``; one trained otherwise than the run's
    config.yaml says is refused here, as predict refuses it (on the target)."""
    from .config import config_from_dict
    from .run_settings import check_fold_trained_as

    src = run.best_pt(fold)

    state = load_checkpoint(src)
    missing = [k for k in ("config", "model_args") if k not in state]
    if missing:  # load_model names the same case
        raise BundleError(f"{src}: a checkpoint without {' and '.join(missing)} (made by another tool, or before the toolkit "
                          "kept them): train the fold again")
    check_fold_trained_as(config_from_dict(state["config"], trained=True), run.config(), run, fold)
    weights = chosen_weights(state, use_ema)
    gap = None
    if fp16:
        weights = {k: _half(k, v, src) for k, v in weights.items()}
        gap, moved = _fp16_gap(run, fold)
    config = offline_config(state["config"])  # the weights are all here: no download, no tracker
    save_checkpoint({"model": weights, "ema": None, "config": config, "model_args": state["model_args"],
                     "epoch": state.get("epoch"), "best_score": state.get("best_score")}, dst)
    return {"sha256": sha256_file(dst), "bytes": dst.stat().st_size, "dtype": "float16" if fp16 else "float32",
            "ema": bool(use_ema and state.get("ema") is not None), "source_sha256": sha256_file(src),
            **({"fp16_max_prob_diff": gap, "fp16_grid_moved": moved} if gap is not None else {})}


def _fp16_gap(run: Run, fold: int) -> tuple[float, float]:
    """How far float16-rounded weights move the fold's probabilities: the largest ``|p16 - p32|``, and the share of
    values that move a step on the 1/255 grid where post-processing and ensembles see them (a gap far below a step
    still moves the values that lie near a step's edge: a whole step each), on two of its validation images (an
    odd-sized copy too: :func:`~seg_toolkit.export.parity_inputs`), each preprocessed, padded and run in the precision
    predict runs the fold in on a CPU. Not zero: pixels near a tuned threshold can flip."""
    from .device import autocast
    from .export import parity_inputs
    from .models.presence import split_presence
    from .predictor import Member
    from .tensors import activate, probs_to_uint8

    cpu = torch.device("cpu")
    member = Member.load(run, folds=[fold])
    model = member.model(fold, cpu)
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.state_dict().values():  # the tensors themselves: what loading the float16 file gives
            if t.is_floating_point():
                t.copy_(t.half().float())
    d = member.cfg.data
    gap, moved, total = 0.0, 0, 0
    inputs, _ = parity_inputs(member, fold)
    for x in inputs:
        with torch.inference_mode(), autocast(member.amp(fold, cpu), cpu):
            a, b = model(x).float(), rounded(x).float()
        present = a.shape[1] == 2 * d.num_classes
        pa, pb = (activate(split_presence(t, d.num_classes, present)[0], d.task) for t in (a, b))
        gap = max(gap, float((pa - pb).abs().max()))
        moved += int((probs_to_uint8(pa) != probs_to_uint8(pb)).sum())
        total += pa.numel()
    return gap, moved / max(total, 1)


def fp16_warning(infos: list[dict[str, Any]]) -> str:
    """What ``--fp16`` costs in exactness, measured per fold (``fp16_max_prob_diff``): said, never silent."""
    gaps = [(w["fp16_max_prob_diff"], f"{i['name']} fold {k}") for i in infos for k, w in i.get("weights", {}).items()]
    worst, where = max(gaps) if gaps else (0.0, "")
    moved = max((w.get("fp16_grid_moved", 0.0) for i in infos for w in i.get("weights", {}).values()), default=0.0)
    ensembles = [i["name"] for i in infos if i.get("kind") == "ensemble"]
    merged = (f"; an ensemble ({', '.join(ensembles)}) merges its members' values on that grid, so each moved value "
              "moves its merge by a step times the member's weight" if ensembles else "")
    return (f"--fp16: the float16 weights move the probabilities by up to {worst:.3g} ({worst * 255:.2g} steps of "
            f"1/255, {where}; on two validation images per fold), and {moved:.2%} of the values move a whole step on "
            f"the 1/255 grid post-processing reads{merged}: a pixel near a tuned threshold can flip and the submission "
            "can differ a little from what was tuned and scored on OOF; bundle without --fp16 for the exact one")
