"""The trainer's own step timed on one random pre-encoded batch: what ``fluid bench``
measures, and what ``fluid scale`` uses to say how long a plan will take before it starts.

The tokenizer, the text encoder and data loading are left out: the stream hands out one
batch of random tokens and text embeddings again and again; everything else is the real
``Trainer.fit`` (autocast, backward, clipping, AdamW, EMA, LR schedule).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from fluid.config import FluidConfig, TokenType, apply_overrides
from fluid.train.trainer import Trainer

TEXT_LEN = 12  # prompt tokens of the random text (shapes captions are ~8-12 MiniLM tokens)


class Geometry:
    """Stands in for the tokenizer, which the trainer only asks for the token geometry here
    (the batches come pre-encoded): the config's own, not a shipped tokenizer's."""

    def __init__(self, m):
        self.token_type, self.token_dim, self.vocab_size, self._n = (
            m.token_type,
            m.token_dim,
            m.vocab_size,
            m.num_tokens,
        )

    def num_tokens(self, resolution: int) -> int:
        return self._n

    def to(self, device):
        return self

    def eval(self):
        return self

    def requires_grad_(self, flag: bool):
        return self


class SameBatch:
    """A training stream that hands out one pre-encoded batch (tokens, text, mask) forever."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def random_batch(cfg: FluidConfig, batch: int, device: torch.device, seed: int = 0):
    """Random tokens of the config's geometry and random text embeddings of ``TEXT_LEN`` tokens."""
    m, g = cfg.model, torch.Generator().manual_seed(seed)
    if m.token_type == TokenType.CONTINUOUS:
        tokens = torch.randn(batch, m.num_tokens, m.token_dim, generator=g)
    else:
        tokens = torch.randint(0, m.vocab_size, (batch, m.num_tokens), generator=g)
    emb = torch.randn(batch, TEXT_LEN, cfg.text.dim, generator=g)
    return tokens.to(device), emb.to(device), torch.ones(batch, TEXT_LEN, dtype=torch.bool, device=device)


def train_once(
    cfg: FluidConfig,
    precision: str,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    run_dir: Path | None = None,
    memory=None,
) -> dict:
    """Images/s (and per process CPU second) of the trainer's step over ``steps`` steps after
    ``warmup`` steps. ``memory(row)``, if given, is a context manager that records the peak
    memory of the measurement into ``row``."""
    cfg = apply_overrides(
        cfg,
        {
            "train.precision": precision,
            "train.batch_size": batch,
            "train.log_every": 10**9,
            "train.val_every": 0,
            "train.ckpt_every": 10**9,
            "data.pool": 0,
            "data.pool_encoded": False,
        },
    )
    row: dict = {}
    with tempfile.TemporaryDirectory(prefix="fluid-probe-") as tmp:
        ctx = memory(row) if memory is not None else _nothing()
        with ctx:
            trainer = Trainer(
                cfg, Path(run_dir or tmp), Geometry(cfg.model), text_encoder=None, device=device, show_progress=False
            )
            trainer.stream = SameBatch(random_batch(cfg, batch, device))
            trainer.save = lambda: None  # no checkpoints: not part of a step
            trainer.fit(warmup)
            cpu, wall = time.process_time(), time.perf_counter()
            last = trainer.fit(warmup + steps)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    row["images_per_s"] = last["images_per_s"]
    row["images_per_cpu_s"] = batch * steps / cpu
    row["seconds"] = wall
    return row


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
