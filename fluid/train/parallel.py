"""Parallelism applied around the single-device model: the global batch, DDP or FSDP2,
activation checkpointing, and the few helpers the trainer needs to treat them alike.

The global batch
    ``train.batch_size`` images per optimizer step, whatever the number of processes: each of
    ``world`` processes runs ``accum`` micro-steps of ``micro`` images (``batch_size = world x
    accum x micro``). Micro-batch ``a`` of rank ``r`` fills *slot* ``a * world + r`` of the
    global batch; the data it holds and every random choice made on it (masks, orders,
    timesteps, noise, posterior samples) are functions of (seed, step, slot) only. So the same
    config gives the same global batch on 1, 2 or 8 processes as long as ``micro`` is the same,
    and a checkpoint resumes on any number of processes.

FSDP2
    ``fully_shard`` on every transformer block (aligner and backbone), then on the root (the
    embeddings, the output head and the norms): each rank keeps 1/world of the weights,
    gradients and AdamW state, and gathers one block's weights at a time. On CUDA the gathered
    weights are bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``); on CPU
    everything stays fp32. The EMA copy is sharded the same way, so its update is local.
"""

from __future__ import annotations

import functools
import hashlib
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from fluid.config import Parallel, Precision, TrainConfig
from fluid.runtime import resolve_precision
from fluid.train.distributed import DistInfo, wrap_ddp


def batch_split(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(micro-batch per process, accumulation steps) for the global ``cfg.batch_size``."""
    micro = cfg.micro_batch_size or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % (world * micro):
        raise ValueError(
            f"train.batch_size={cfg.batch_size} (the global batch) cannot be split into {world} process(es) x "
            f"micro-batches of {micro or cfg.micro_batch_size}: choose a batch_size divisible by "
            f"{world} x train.micro_batch_size (the global batch is the same on any number of processes)"
        )
    return micro, cfg.batch_size // (world * micro)


def slot_seed(seed: int, step: int, slot: int) -> int:
    """A stable 63-bit seed for the random choices of one micro-batch slot of one step."""
    key = f"fluid-train/v1/{seed}/{step}/{slot}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The units of sharding and recomputation: the aligner's blocks, then the backbone's."""
    return [*model.aligner.blocks, *model.blocks]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass instead of storing its activations.

    The block's ``forward`` is wrapped in place (its parameter names do not change, so
    checkpoints are unaffected); nothing is recomputed under ``torch.no_grad`` (sampling).
    """
    for block in transformer_blocks(model):
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def shard_fsdp(model: nn.Module, info: DistInfo, precision: Precision, trainable: bool = True) -> None:
    """FSDP2 per transformer block, then the root; in place (the parameters become DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = torch.device(info.device)
    mesh = init_device_mesh(device.type, (info.world,))
    bf16 = trainable and device.type == "cuda" and resolve_precision(precision, device) == Precision.BF16
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def parallelize(model: nn.Module, ema_model: nn.Module, info: DistInfo, cfg: TrainConfig) -> nn.Module:
    """Apply ``cfg.parallel`` (and activation checkpointing) to the model and its EMA copy;
    returns the module to call in training. Build the optimizer afterwards: FSDP2 replaces
    the parameters."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if info.world == 1 or cfg.parallel == Parallel.NONE:
        return model
    if cfg.parallel == Parallel.DDP:
        return wrap_ddp(model, info)
    shard_fsdp(model, info, cfg.precision)
    shard_fsdp(ema_model, info, cfg.precision, trainable=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync(train_model: nn.Module, model: nn.Module, sync: bool):
    """Reduce gradients over the ranks only on the last micro-step of an optimizer step."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        yield
        return
    ddp = getattr(train_model, "_orig_mod", train_model)  # under torch.compile
    with nullcontext() if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel) else ddp.no_sync():
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also works on sharded (DTensor) gradients: the norm is over
    the whole model, the same on every rank, returned as a plain tensor."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
