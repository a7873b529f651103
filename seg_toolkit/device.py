"""Where and how tensors run: the device, autocast, seeding. Shared by training and prediction."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .config import ConfigError

__all__ = ["resolve_device", "check_device", "autocast", "seed_everything", "seed_rank", "tf32_state"]


def check_device(name: str, key: str = "train.device") -> None:
    """Refuse a device this machine does not have, naming the config key (called when a config loads)."""
    if name in ("auto", "cpu"):
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ConfigError(f"{key}: {name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(name: str, d=None) -> torch.device:
    """The torch device for ``train.device`` (``auto``: CUDA when present); under DDP the rank's GPU.

    Under torchrun (``d.enabled``) each process trains on the GPU of its ``LOCAL_RANK`` (``auto`` or ``cuda``), where
    :func:`seg_toolkit.distributed.init_distributed` put it; an explicit ``cuda:N`` is refused with a
    :class:`ConfigError` naming ``train.device``: it would put every rank on GPU N (``CUDA_VISIBLE_DEVICES``
    chooses the GPUs torchrun's processes use)."""
    if d is not None and d.enabled and name not in ("auto", "cpu"):
        check_device(name)
        index = torch.device(name).index
        if index is not None:
            raise ConfigError(
                f"train.device: {name!r} names one GPU, but under torchrun ({d.world_size} processes) each process "
                f"trains on its own GPU (LOCAL_RANK; this one: cuda:{d.local_rank}); expected 'auto' or 'cuda' "
                "(CUDA_VISIBLE_DEVICES chooses which GPUs torchrun uses)")
    if d is not None and d.enabled and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(choice, device: torch.device):
    """An :class:`~seg_toolkit.amp.AmpChoice` as a context manager."""
    dtype = choice.dtype
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def tf32_state(device: torch.device) -> dict | None:
    """On CUDA, whether float32 matmuls and convolutions may run in TF32 (Ampere and later: faster, 10-bit
    mantissa), as the fold trained: ``done.json`` records it, so two runs that differ only there can be told
    apart. None on other devices."""
    if device.type != "cuda":
        return None
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def seed_everything(seed: int, deterministic: bool, cudnn_benchmark: bool = False) -> None:
    """Seed python, numpy and torch; in deterministic mode also pin cuDNN and torch's algorithms, else let cuDNN
    time its convolution algorithms on the first batch of each shape (``train.cudnn_benchmark``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def seed_rank(seed: int, rank: int) -> None:
    """Under DDP, give rank ``rank`` > 0 random streams of its own (python, NumPy, torch: CPU and every GPU), derived
    from ``seed`` and the rank; rank 0 keeps the ones :func:`seed_everything` gave it, so it draws as a single process
    would. Every rank is seeded alike first (their models start alike); without this they then drew the same dropout
    and drop-path masks at each step, on different images. Augmentation draws from per-image seeds, not from here."""
    if rank <= 0:
        return
    import hashlib

    derived = int.from_bytes(hashlib.sha256(f"seg_toolkit rank stream {seed} {rank}".encode()).digest()[:8], "little")
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived % 2**63)
