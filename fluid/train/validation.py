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

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fluid.config import FluidConfig, Precision, TokenType, resolve_precision
from fluid.shapes.dataset import ShapesDataset

VAL_SEED = 20_241_017


@dataclass
class ValidationSet:
    tokens: torch.Tensor  # (V, N, C) or (V, N)
    text_emb: torch.Tensor  # (V, L, Dt)
    text_mask: torch.Tensor  # (V, L)
    batch_size: int = 64

    @classmethod
    @torch.no_grad()
    def build(cls, cfg: FluidConfig, tokenizer, text_encoder, device="cpu", batch_size: int = 64,
              size: int | None = None) -> "ValidationSet":
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
        tokens, embs, masks = [], [], []
        for start in range(0, n, batch_size):
            images, captions = data.batch(range(start, min(n, start + batch_size)), device)
            tokens.append(tokenizer.encode(images, generator=gen).cpu())
            emb, mask = text_encoder(captions)
            embs.append(emb.cpu())
            masks.append(mask.cpu())
        length = max(e.shape[1] for e in embs)
        pad = lambda x, v: torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1]) if x.dim() == 3 else (0, length - x.shape[1]), value=v)  # noqa: E731
        return cls(torch.cat(tokens).to(device), torch.cat([pad(e, 0.0) for e in embs]).to(device),
                   torch.cat([pad(m, False) for m in masks]).to(device), batch_size)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def loss_name(token_type: TokenType | str) -> str:
    """What ``validation_loss`` measures for a token type (the two are not on one scale)."""
    if TokenType(token_type) is TokenType.CONTINUOUS:
        return "diffusion hybrid loss: eps MSE per channel + model.vlb_weight x L_t (bits)"
    return "cross-entropy, nats per predicted token"


@torch.no_grad()
def validation_loss(model, valset: ValidationSet, precision: Precision = Precision.AUTO,
                    vlb_weight: float | None = None) -> float:
    """Mean loss over the validation set, weighted by batch size; deterministic.

    ``vlb_weight`` overrides the model's (continuous tokens; 0 measures the epsilon MSE alone)."""
    was_training = model.training
    model.eval()
    device = valset.tokens.device
    total, count = 0.0, 0
    bf16 = resolve_precision(precision, device) == Precision.BF16
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for i, start in enumerate(range(0, len(valset), valset.batch_size)):
        sl = slice(start, start + valset.batch_size)
        gen = torch.Generator(device).manual_seed(VAL_SEED + i)  # the same draws for every model
        with ctx:
            loss = model(valset.tokens[sl], valset.text_emb[sl], valset.text_mask[sl], generator=gen, text_dropout=0.0,
                         vlb_weight=vlb_weight)
        b = valset.tokens[sl].shape[0]
        total, count = total + float(loss) * b, count + b
    model.train(was_training)
    return total / count
