"""``fluid distill-head``: a checkpoint's diffusion head distilled into a few-step one
(:func:`fluid.diffusion.distill.distill_head`), saved beside its weights
(:mod:`fluid.checkpoint`).

The student learns on the conditions the head meets: the generator's own backbone outputs for
training images of the checkpoint's data, random-order masks drawn as in training, each token
with its caption and with the null caption (the two branches that guidance mixes). Only the
head trains; the backbone runs once per image, up front.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fluid.checkpoint import save_distilled_head
from fluid.checkpoint.folder import Checkpoint
from fluid.data.encode import FrozenEncoder
from fluid.data.stream import TrainStream, encoded
from fluid.diffusion.distill import distill_head
from fluid.model.masking import random_orders, training_mask


@torch.no_grad()
def condition_bank(
    model, batches: Iterator, images: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens x0 (M, C), backbone conditions z (M, 2, W)) for the masked tokens of ``images``
    training images: each token's condition with its caption and with the null one. Random
    order only."""
    if model.causal or not model.continuous:
        raise ValueError("a distilled head is for continuous random-order models")
    xs, zs, seen = [], [], 0
    while seen < images:
        batch = next(batches)
        tokens = batch.tokens[: images - seen]
        emb, mask = batch.text_emb[: len(tokens)], batch.text_mask[: len(tokens)]
        b, n = tokens.shape[:2]
        predict = training_mask(random_orders(b, n, generator, tokens.device), generator, model.cfg.mask_schedule.value)
        x = model.embed_masked(tokens, known=~predict)  # (B, N, W)
        pair = []
        for null in (False, True):
            text, text_mask = model.aligner(emb, mask, torch.full((b,), null, device=tokens.device))
            pair.append(model.backbone(x, text, text_mask)[predict].float())  # (M, W)
        xs.append(tokens[predict].float())
        zs.append(torch.stack(pair, dim=1))  # (M, 2, W): with its caption, with the null one
        seen += b
    return torch.cat(xs), torch.cat(zs)


def distill_checkpoint(
    path: str | Path,
    steps: int = 4,
    substeps: int = 8,
    iterations: int = 3000,
    images: int = 8192,
    batch_size: int = 512,
    lr: float = 3e-4,
    seed: int = 0,
    progress: bool = True,
    tokenizer=None,
    text_encoder=None,
    guided: bool = True,
) -> Path:
    """Distil the head of the checkpoint at ``path`` into ``steps`` DDIM steps (the teacher
    making each of them in ``substeps``) and save it in the checkpoint's folder; returns the
    path of its ``head-distilled.json``. ``tokenizer`` / ``text_encoder``: instead of the
    checkpoint's own (as ``FluidPipeline.from_pretrained`` takes them). ``guided``: distil the
    guided sampler at the scales of the checkpoint's sample config (``cfg``; from 1 to ``cfg``
    for the linear schedule), else each branch alone."""
    start = time.time()
    ckpt = Checkpoint.open(path)
    model = ckpt.generator().eval()
    if model.causal or not model.continuous:
        raise ValueError(f"a distilled head is for continuous random-order models, not {ckpt.config.model.variant}")
    generator = torch.Generator().manual_seed(seed)
    data = ckpt.config.data
    if data.source == "shapes":  # render per batch: a pool would be drawn in full before the first batch
        data = dataclasses.replace(data, pool=0, pool_encoded=False)
    tokenizer = ckpt.tokenizer() if tokenizer is None else tokenizer
    text_encoder = ckpt.text_encoder() if text_encoder is None else text_encoder
    stream = TrainStream(data, 256, tokenizer=tokenizer, text_encoder=text_encoder)
    x0, z = condition_bank(
        model, encoded(iter(stream), FrozenEncoder(tokenizer, text_encoder), generator), images, generator
    )
    bank_s = time.time() - start

    def batches():
        while True:
            idx = torch.randint(0, x0.shape[0], (batch_size,), generator=generator)
            yield x0[idx], z[idx]

    bar = tqdm(total=iterations, desc=f"distil head -> {steps} steps", unit="it", disable=not progress)
    losses: list[float] = []

    def on_step(i: int, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        if (i + 1) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")

    sample = ckpt.config.sample
    guidance = None
    if guided and sample.cfg != 1.0:  # the scales the checkpoint's sampling uses
        guidance = (1.0, sample.cfg) if sample.cfg_schedule.value == "linear" else (sample.cfg, sample.cfg)
        guidance = (min(guidance), max(guidance))
    else:
        z = z.flatten(0, 1)  # each branch alone, as its own row
        x0 = x0.repeat_interleave(2, dim=0)
    student = distill_head(
        model.head,
        model.diffusion,
        batches(),
        steps,
        substeps,
        iterations,
        lr=lr,
        prediction="v",
        guidance=guidance,
        generator=generator,
        on_step=on_step,
    )
    bar.close()
    info = {
        "steps": steps,
        "prediction": "v",
        "teacher_steps": steps * substeps,
        "substeps": substeps,
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": lr,
        "images": images,
        "guidance": list(guidance) if guidance is not None else None,
        "conditions": int(x0.shape[0]),
        "seed": seed,
        "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "seconds": round(time.time() - start, 1),
        "bank_seconds": round(bank_s, 1),
    }
    return save_distilled_head(ckpt.folder, student, model.head, info)
