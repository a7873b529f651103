"""Multi-GPU / multi-node training through PyTorch's own engine (``torchrun``).

``torchrun --nproc_per_node N -m seg_toolkit.cli train CONFIG`` starts N processes; each
reads its rank from the environment torchrun sets. Training data is sharded by rank,
gradients are averaged by DistributedDataParallel, training losses are summed across
ranks for the log, BatchNorm statistics are averaged at the end of each epoch, and only rank 0 validates, writes files and decides early stopping
(its decision is broadcast so every rank leaves the loop together). What stops a rank stops them all at the same step:
a non-finite loss on any rank, or a Ctrl-C / SIGTERM that reached any rank (:func:`seg_toolkit.epoch.train_one_epoch`).
The ranks build their models alike, then each draws its own dropout / drop-path masks (:func:`seg_toolkit.device.seed_rank`);
every rank's RNG states go into the checkpoint, so a resume goes on with each rank's own stream.

``train.device`` under torchrun is ``auto``, ``cuda`` (each process on the GPU of its ``LOCAL_RANK``) or ``cpu``;
an explicit ``cuda:N`` is refused (:func:`seg_toolkit.device.resolve_device`): it would put every rank on GPU N.

Timeout: while rank 0 alone validates, writes a fold's out-of-fold files, averages checkpoints, makes pseudo-labels
or tunes post-processing, the other ranks wait in a barrier or broadcast. The process group's timeout bounds that
wait; torch's defaults (30 min for gloo, 10 min for NCCL) end such a run on real data, so it is
:data:`DEFAULT_TIMEOUT_S` (6 hours), or the seconds in the environment variable ``SEG_TOOLKIT_DDP_TIMEOUT_S``
(e.g. ``SEG_TOOLKIT_DDP_TIMEOUT_S=86400 torchrun ...``). A rank that crashed is still noticed at once by torchrun,
which stops the others; the timeout only ends a wait on a rank that hangs.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = ["Dist", "init_distributed", "close_distributed", "get_dist", "ddp_timeout_s", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV"]

#: the process group's timeout unless :data:`TIMEOUT_ENV` says otherwise: how long the other ranks may wait for rank 0
DEFAULT_TIMEOUT_S = 6 * 3600
TIMEOUT_ENV = "SEG_TOOLKIT_DDP_TIMEOUT_S"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (a collective: all ranks call it)."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) across ranks.

        DDP broadcasts rank 0's buffers before each forward, but the last forward of an
        epoch leaves each rank with statistics of its own batch; averaging makes every
        rank's model, and so the checkpoint, the same.
        """
        if not self.enabled:
            return
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world_size)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer; a collective: all ranks call it)."""
        if not self.enabled:
            return bool(flag)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        return bool(self.all_reduce_sum(torch.tensor([float(bool(flag))], device=device)).item() > 0)


_CURRENT = Dist()


def get_dist() -> Dist:
    return _CURRENT


def init_distributed(device_name: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (a no-op for a single process)."""
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CURRENT = Dist()
        return _CURRENT
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=ddp_timeout_s()))
    _CURRENT = Dist(rank=rank, world_size=world, local_rank=local)
    log.info("distributed: rank %d of %d (%s)", rank, world, "nccl" if use_cuda else "gloo")
    return _CURRENT


def ddp_timeout_s() -> float:
    """The process group's timeout in seconds: ``SEG_TOOLKIT_DDP_TIMEOUT_S`` when set, else :data:`DEFAULT_TIMEOUT_S`."""
    from .errors import ConfigError

    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={raw!r}: expected a positive number of seconds "
                          f"(the distributed process group's timeout; default {DEFAULT_TIMEOUT_S})")
    return seconds


def close_distributed() -> None:
    """Leave the process group, on every rank, once the run has finished (after its last collective).

    Without it Gloo's worker threads can outlive the interpreter's teardown and abort the process
    (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489): a finished
    two-process CPU run then exits 1 now and then. Called only after a run that finished: a rank
    that failed may leave a collective unfinished on the others, and tearing down then could block.
    """
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Dist()
