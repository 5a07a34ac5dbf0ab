"""Sharded checkpoints (``torch.distributed.checkpoint``) for FSDP2 runs.

Under ``train.parallel=fsdp`` no process ever holds the whole model, so a checkpoint folder
holds, instead of ``model.safetensors`` / ``ema.safetensors``,

* ``sharded/``            every rank's shards of the weights (``model.*``), the EMA
                          (``ema.*``) and the AdamW state (``optimizer.*``), keyed by
                          parameter name, with DCP's ``.metadata`` index,

beside the usual ``config.json``, ``meta.json`` and a small ``training_state.pt`` (step,
scheduler, log; written by rank 0). DCP re-slices on load, so a checkpoint saved on 4
processes resumes on 2 or 1, and a single process without a process group can read the full
weights back (sampling, ``fluid export``). The random state needs no saving: every random
choice of a step is a function of (seed, step, slot) (:mod:`fluid.train.parallel`), and the
data position is the step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

SHARDED = "sharded"


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / SHARDED / ".metadata").is_file()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _state(model: nn.Module, ema_model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "ema": get_model_state_dict(ema_model), "optimizer": optim_sd}


def save_sharded(
    folder: Path, model: nn.Module, ema_model: nn.Module, opt: torch.optim.Optimizer, is_main: bool, write_rest
) -> None:
    """Every rank writes its shards into ``folder.tmp/sharded``; then rank 0 calls
    ``write_rest(tmp)`` (config, meta, training state, and the rename to ``folder``).
    A collective: every rank calls it. The file system must be shared by the ranks."""
    tmp = folder.with_name(folder.name + ".tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_state(model, ema_model, opt), checkpoint_id=str(tmp / SHARDED))
    _barrier()  # every shard is on disk before rank 0 renames the folder
    if is_main:
        write_rest(tmp)
    _barrier()


def load_sharded(folder: Path, model: nn.Module, ema_model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load weights, EMA and optimizer state into the (sharded or plain) model, whatever the
    number of processes that saved them."""
    state = _state(model, ema_model, opt)  # the targets, shaped for this run's sharding
    dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    set_model_state_dict(ema_model, state["ema"])


def read_full(folder: Path, shapes: dict[str, torch.Tensor], ema: bool = True) -> dict[str, torch.Tensor]:
    """The full weights (``ema`` or raw) of a sharded checkpoint, in one process, as plain
    CPU tensors shaped like ``shapes`` (a state dict, e.g. of a meta-device model)."""
    prefix = "ema" if ema else "model"
    state = {prefix: {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}}
    dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED), no_dist=True)
    return state[prefix]
