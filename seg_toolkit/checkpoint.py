"""Checkpoints: written atomically, loaded with ``weights_only=True``, able to rebuild their model.

A checkpoint is a plain dict of tensors and builtins (nanoGPT-style): ``model`` (state
dict), ``config`` (the resolved config as a dict), ``model_args`` (``num_classes``,
``in_channels``), and for resuming ``optimizer``, ``scheduler``, ``scaler``, ``ema``,
``rng``, ``epoch``, ``step``, ``best_score``. Nothing in it needs pickle's arbitrary
globals, so untrusted files are safe to open.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, config_from_dict
from .errors import SegToolkitError
from .files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "chosen_weights", "rng_state", "set_rng_state"]


class CheckpointError(SegToolkitError, RuntimeError):
    """A checkpoint file is missing, truncated, or holds something other than weights."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`, into an open file: saved to a path, the archive is named after the
    temporary file, so the same weights saved twice differed in their bytes (and SHA-256, which bundles and a pseudo
    teacher's record fingerprint); through a file handle torch names it ``archive``, the same every time."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)

    atomic_write(path, write)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; a pickled payload or a damaged file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with path.open("rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise CheckpointError(f"{path}: cannot be read, truncated or not a checkpoint (not a torch.save zip archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain values "
            f"(loaded with weights_only=True; only open checkpoints you trust otherwise). Detail: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read, truncated or not a checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a seg_toolkit checkpoint (no 'model' entry)")
    return state


def load_model(path: str | Path, map_location: str | torch.device = "cpu", use_ema: bool | None = None) -> tuple[torch.nn.Module, Config]:
    """Rebuild the model from the checkpoint alone and load its weights (EMA ones if asked or configured)."""
    from .models import build_model

    state = load_checkpoint(path, map_location)
    try:
        cfg = config_from_dict(state["config"], trained=True)  # the pretrained encoder file may be gone
        args = dict(state["model_args"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a seg_toolkit model checkpoint: its config / model_args entry is missing or "
                              f"unreadable ({type(e).__name__}: {e})") from None
    # the checkpoint holds every weight: don't download or re-read the pretrained encoder (offline Kaggle kernels)
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None), **args)
    try:
        model.load_state_dict(chosen_weights(state, cfg.train.use_ema if use_ema is None else use_ema))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the model its own config describes "
                              f"({str(e).splitlines()[0]})") from None
    model.eval()
    return model.to(map_location), cfg


def chosen_weights(state: dict[str, Any], use_ema: bool) -> dict[str, Any]:
    """The EMA weights when asked for and present, else the raw ones."""
    return state["ema"] if use_ema and state.get("ema") is not None else state["model"]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors / builtins (safe for ``weights_only``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_device"] = torch.cuda.current_device()  # the GPU this process drew from
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state.get("cuda_device")
        if saved is None or not 0 <= int(saved) < len(state["cuda"]):  # saved before the device was recorded
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            # the generator of the GPU the saving process drew from, onto this process's GPU: under DDP rank 0 saves,
            # and every rank (seeded alike, drawing alike) goes on from there on its own GPU; restoring all of rank
            # 0's put the never-used state of GPU r on rank r, which replayed its dropout from the start
            torch.cuda.set_rng_state(state["cuda"][int(saved)], device=torch.cuda.current_device())


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
