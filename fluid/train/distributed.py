"""Process-group setup for ``torchrun`` (DDP), and the few collectives the trainer needs.

Model code stays single-device; parallelism is applied here, around it.
Launch: ``torchrun --nproc_per_node=8 -m fluid.cli train ...`` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor (equal shapes), on every rank, in rank order."""
        if self.world == 1:
            return [state]
        out = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(out, state.to(self._comm_device()))
        return [o.cpu() for o in out]

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if dist.get_backend() == "nccl" else torch.device("cpu")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(device: str | None = None, timeout_s: float = 900) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    A collective that waits more than ``timeout_s`` (a rank hung or died) raises instead of
    stalling the job (see :func:`explain_timeouts`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = device or default_device()
    if world == 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if info.world == 1:
        return model
    ids = [torch.device(info.device).index] if info.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class CollectiveTimeout(RuntimeError):
    """A collective operation timed out: another rank hung, died or is far slower."""


@contextmanager
def explain_timeouts(timeout_s: float, info: DistInfo):
    """Turn a backend's timeout error into one that says what happened and what to do."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        if info.world == 1 or "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
            raise
        raise CollectiveTimeout(
            f"rank {info.rank} of {info.world} waited more than train.dist_timeout_s={timeout_s:g} s for the other "
            f"ranks: one of them hung or died (see its log). Restart from the last checkpoint with --resume; raise "
            f"train.dist_timeout_s if steps are legitimately that slow. Backend said: {str(e).splitlines()[0]}"
        ) from e


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> float:
    if info.world > 1:
        x = x.detach().clone().to(info._comm_device())
        dist.all_reduce(x)
        x /= info.world
    return float(x)


def any_rank(flags: list[bool | torch.Tensor], info: DistInfo) -> list[bool]:
    """Each flag, True if it is True on any rank: every rank takes the same branch (skip a
    step, stop the run), or the next collective would wait forever for the ones that did not."""
    x = torch.stack([torch.as_tensor(f, dtype=torch.float32).reshape(()).cpu() for f in flags])  # (F,)
    if info.world > 1:
        x = x.to(info._comm_device())
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return [bool(v) for v in x.tolist()]
