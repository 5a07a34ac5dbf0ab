"""Training memory per GPU, from meta-device builds of a preset (no weights are allocated).

Fixed state is what a rank holds for the whole run, by parallel mode:

* DDP:  fp32 weights (4 B/param) + fp32 gradients (4) + DDP's gradient buckets (4) + AdamW's
  two moments (8) + the EMA (4): 24 bytes per parameter on every GPU.
* FSDP2 over ``world`` ranks: weights, gradients, moments and EMA (20 B/param) sharded along
  each parameter's first dimension (padded to a multiple of ``world``), plus the working set
  it gathers: the root's parameters (embeddings, head, norms) and two transformer blocks
  (the one running and the one prefetched) in bf16, and one block's unsharded fp32 gradients
  before they are reduce-scattered.
* The frozen text encoder: T5-XXL in bf16 (2 B/param), or nothing when training from a cache.

Activation checkpointing leaves the fixed state as it is and shrinks the activations.
``python -m fluid.train.memory`` prints the table of docs/distributed.md.
"""

from __future__ import annotations

import argparse
import math

import torch

from fluid.config import FluidConfig, get_preset
from fluid.model.counts import meta_generator

GIB = 2**30
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64)


def sharded_numel(shape: torch.Size, world: int) -> int:
    """Elements of one rank's FSDP2 shard: dim 0 split in ``world`` equal, padded chunks."""
    if len(shape) == 0:
        return 1
    return math.ceil(shape[0] / world) * math.prod(shape[1:])


def t5_xxl_params() -> int:
    """Parameters of the T5-v1.1-XXL encoder, counted on a meta-device build."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**T5_XXL, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    return sum(p.numel() for p in model.parameters())


def state_bytes(cfg: FluidConfig, world: int) -> dict[str, float]:
    """Fixed training state per GPU in bytes: ``ddp``, ``fsdp`` (sharded part + gathered
    working set), and their parts."""
    from fluid.train.parallel import transformer_blocks

    model = meta_generator(cfg.model, cfg.text)
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    shard = sum(sharded_numel(p.shape, world) for p in params)
    blocks = transformer_blocks(model)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = sum(p.numel() for p in params if id(p) not in in_blocks)
    largest_block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    gathered = 2 * (root + 2 * largest_block) + 4 * largest_block
    return {
        "params": total,
        "ddp": 24 * total,
        "fsdp_sharded": 20 * shard,
        "fsdp_gathered": gathered,
        "fsdp": 20 * shard + gathered,
    }


def activation_bytes(cfg: FluidConfig, micro: int, checkpointing: bool, bf16: bool = True) -> dict[str, float]:
    """A real training step of ``micro`` random images on the CPU, measured with PyTorch's
    tracker of live tensor storages: activations the forward pass leaves for the backward
    pass, and the peak of the whole step (weights, activations, gradients). Slow for the
    large presets (a real forward and backward)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from fluid.model import Generator
    from fluid.train.parallel import apply_activation_checkpointing

    torch.manual_seed(0)
    model = Generator(cfg.model, cfg.text)
    if checkpointing:
        apply_activation_checkpointing(model)
    g = torch.Generator().manual_seed(0)
    m, t = cfg.model, cfg.text
    tokens = torch.randn(micro, m.num_tokens, m.token_dim, generator=g)  # (B, N, C)
    emb = torch.randn(micro, t.max_length, t.dim, generator=g)  # (B, L, Dt)
    tracker = MemTracker()
    tracker.track_external(model)
    cpu = torch.device("cpu")
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(tokens, emb, torch.ones(micro, t.max_length, dtype=torch.bool), g)
        held = tracker.get_tracker_snapshot("current")[cpu]
        loss.backward()
    peak = tracker.get_tracker_snapshot("peak")[cpu]
    kind = lambda snap, name: sum(v for k, v in snap.items() if str(k).split(".")[-1].upper() == name)  # noqa: E731
    return {"held_for_backward": kind(held, "ACT"), "peak": kind(peak, "TOTAL") or sum(peak.values())}


def table(presets: list[str], world: int, text_params: int | None = None) -> str:
    text_params = t5_xxl_params() if text_params is None else text_params
    rows = [
        "| preset | parameters | DDP | FSDP sharded | FSDP gathered | FSDP total | + T5-XXL bf16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in presets:
        s = state_bytes(get_preset(name), world)
        rows.append(
            f"| {name} | {s['params'] / 1e9:.3f}B | {s['ddp'] / GIB:.2f} GiB | {s['fsdp_sharded'] / GIB:.2f} GiB | "
            f"{s['fsdp_gathered'] / GIB:.2f} GiB | {s['fsdp'] / GIB:.2f} GiB | {2 * text_params / GIB:.2f} GiB |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description="fixed training state per GPU, from meta-device builds")
    p.add_argument("--world", type=int, default=8)
    p.add_argument(
        "--presets", nargs="*", default=["fluid-166m", "fluid-369m", "fluid-665m", "fluid-3.1b", "fluid-10.5b"]
    )
    p.add_argument(
        "--activations",
        type=int,
        default=0,
        metavar="MICRO",
        help="instead: measure a real CPU step of MICRO images per preset, with and without checkpointing",
    )
    args = p.parse_args()
    if args.activations:
        torch.set_num_threads(1)
        for name in args.presets:
            for ac in (False, True):
                r = activation_bytes(get_preset(name), args.activations, ac)
                print(
                    f"{name} micro-batch {args.activations} checkpointing={ac}: activations held for backward "
                    f"{r['held_for_backward'] / 2**20:.1f} MiB, step peak {r['peak'] / 2**20:.1f} MiB",
                    flush=True,
                )
        return
    print(f"T5-XXL encoder: {t5_xxl_params() / 1e9:.3f}B parameters; world = {args.world}")
    print(table(args.presets, args.world))


if __name__ == "__main__":
    main()
