"""Validation loss: the training loss on a fixed held-out set, with every random choice
(masks, orders, diffusion timesteps, noise, posterior samples) fixed by a seed.

Two calls on the same weights give the same number, and runs of different sizes or lengths
are compared on exactly the same draws. Continuous variants report the diffusion head's
hybrid loss (epsilon MSE per channel + ``model.vlb_weight`` x the sampled timestep's VLB term in
bits; ``vlb_weight=0`` gives the epsilon MSE alone, comparable across VLB weights); discrete variants the
cross-entropy in nats per predicted token. The two are not on one scale: compare within a
token type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from fluid.config import FluidConfig, Precision, TokenType
from fluid.data.encode import FrozenEncoder
from fluid.runtime import autocast
from fluid.shapes.dataset import ShapesDataset

VAL_SEED = 20_241_017


@dataclass
class ValidationSet:
    tokens: torch.Tensor  # (V, N, C) or (V, N)
    text_emb: torch.Tensor  # (V, L, Dt)
    text_mask: torch.Tensor  # (V, L)
    batch_size: int = 64
    batches: list[int] | None = None
    """After :meth:`shard`: which batches of the whole set these rows are (None: all)."""
    num_batches: int | None = None
    """After :meth:`shard`: how many batches the whole set has."""

    @classmethod
    @torch.no_grad()
    def build(
        cls, cfg: FluidConfig, tokenizer, text_encoder, device="cpu", batch_size: int = 64, size: int | None = None
    ) -> ValidationSet:
        """Encode the first ``size`` (default ``cfg.train.val_size``) pairs of the validation split once."""
        size = cfg.train.val_size if size is None else int(size)
        if size < 1:
            raise ValueError(f"the validation set needs at least one pair, not {size}")
        if cfg.data.source != "shapes":  # real data: a cache's held-out split or data.val_path
            from fluid.data.heldout import heldout_pairs

            pairs = heldout_pairs(cfg.data, size, tokenizer, text_encoder, device, seed=VAL_SEED, batch_size=batch_size)
            return cls(*pairs, batch_size)
        data = ShapesDataset("val", cfg.data.resolution)
        n = min(size, len(data))
        gen = torch.Generator(device).manual_seed(VAL_SEED)
        encoder = FrozenEncoder(tokenizer, text_encoder, device)  # fp32: the same set under any training precision
        tokens, embs, masks = [], [], []
        for start in range(0, n, batch_size):
            images, captions = data.batch(range(start, min(n, start + batch_size)), device)
            tokens.append(encoder.tokens(images, gen).cpu())
            emb, mask = text_encoder(captions)
            embs.append(emb.cpu())
            masks.append(mask.cpu())
        length = max(e.shape[1] for e in embs)

        def pad(x, v):
            return torch.nn.functional.pad(
                x, (0, 0, 0, length - x.shape[1]) if x.dim() == 3 else (0, length - x.shape[1]), value=v
            )

        return cls(
            torch.cat(tokens).to(device),
            torch.cat([pad(e, 0.0) for e in embs]).to(device),
            torch.cat([pad(m, False) for m in masks]).to(device),
            batch_size,
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def shard(self, rank: int, world: int) -> ValidationSet:
        """Rank ``rank``'s share, batches ``rank, rank + world, ...``, kept in host memory
        (each batch goes to the device when it is evaluated)."""
        total = -(-len(self) // self.batch_size)
        mine = list(range(rank, total, world))
        # A rank with no batch keeps the first one, evaluated uncounted to join the collectives.
        rows = torch.cat(
            [torch.arange(i * self.batch_size, min(len(self), (i + 1) * self.batch_size)) for i in (mine or [0])]
        )
        pick = lambda x: x.cpu()[rows].clone()  # noqa: E731  (clone: do not pin the whole set)
        return ValidationSet(pick(self.tokens), pick(self.text_emb), pick(self.text_mask), self.batch_size, mine, total)


def loss_name(token_type: TokenType | str) -> str:
    """What ``validation_loss`` measures for a token type (the two are not on one scale)."""
    if TokenType(token_type) is TokenType.CONTINUOUS:
        return "diffusion hybrid loss: eps MSE per channel + model.vlb_weight x L_t (bits)"
    return "cross-entropy, nats per predicted token"


@torch.no_grad()
def validation_loss(
    model,
    valset: ValidationSet,
    precision: Precision = Precision.AUTO,
    vlb_weight: float | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Mean loss over the validation set, weighted by batch size; deterministic.

    ``vlb_weight`` overrides the model's (continuous tokens; 0 measures the epsilon MSE alone).
    ``device``: where the model runs (default: where the set is). A set from
    :meth:`ValidationSet.shard` is a collective: every rank evaluates its batches (all ranks
    the same number of forward passes, which a sharded model needs) and the sums are
    all-reduced, giving every rank the loss of the whole set."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else valset.tokens.device
    total, count = 0.0, 0
    sharded = valset.batches is not None
    batches = valset.batches if sharded else list(range(-(-len(valset) // valset.batch_size)))
    world = 1 if not sharded or not dist.is_initialized() else dist.get_world_size()
    rounds = -(-valset.num_batches // world) if sharded else len(batches)
    for j in range(rounds):
        real = j < len(batches)  # ranks with fewer batches repeat their first, uncounted
        sl = slice(j * valset.batch_size if real else 0, (j + 1) * valset.batch_size if real else valset.batch_size)
        i = batches[j] if real else 0
        gen = torch.Generator(device).manual_seed(VAL_SEED + i)  # the same draws for every model
        with autocast(device, precision):
            loss = model(
                *(x[sl].to(device) for x in (valset.tokens, valset.text_emb, valset.text_mask)),
                generator=gen,
                text_dropout=0.0,
                vlb_weight=vlb_weight,
            )
        b = valset.tokens[sl].shape[0]
        if real:
            total, count = total + float(loss) * b, count + b
    if world > 1:
        sums = torch.tensor(
            [total, count], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu"
        )
        dist.all_reduce(sums)
        total, count = sums.tolist()
    model.train(was_training)
    return total / count
