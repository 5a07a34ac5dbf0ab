"""Training batches, deterministic by step so that a resumed run sees what it would have seen.

A stream yields either :class:`RawBatch` (images + captions, encoded by the trainer with the
frozen tokenizer and text encoder) or :class:`EncodedBatch` (tokens + text embeddings read
from a prepared cache).

For the built-in data, batch ``k`` of rank ``r`` in a ``world``-process run holds items
``k * B * world + r * B + [0, B)`` of the train split: no two ranks or steps share an item,
and the position to resume from is just the step.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

from fluid.config import DataConfig
from fluid.data.shapes import ShapesDataset, flip_caption, item_seed


class RawBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    captions: list[str]


class EncodedBatch(NamedTuple):
    tokens: torch.Tensor  # (B, N, C) float or (B, N) long
    text_emb: torch.Tensor  # (B, L, Dt)
    text_mask: torch.Tensor  # (B, L) bool


class ShapesStream:
    def __init__(self, cfg: DataConfig, batch_size: int, rank: int = 0, world: int = 1, start: int = 0,
                 device: str | torch.device = "cpu"):
        self.dataset = ShapesDataset("train", cfg.resolution, holdout=cfg.holdout)
        self.cfg, self.batch_size, self.rank, self.world = cfg, batch_size, rank, world
        self.step, self.device = start, device

    def indices(self, step: int) -> range:
        first = (step * self.world + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def __iter__(self) -> Iterator[RawBatch]:
        while True:
            idx = self.indices(self.step)
            images, captions = self.dataset.batch(idx, self.device)
            if self.cfg.flip:
                # Flip about half of the items, chosen by a stable hash of the index; the
                # caption's left/right words swap with the image.
                flip = torch.tensor([item_seed("flip", i) % 2 == 1 for i in idx], device=images.device)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                captions = [flip_caption(c) if f else c for c, f in zip(captions, flip.tolist())]
            self.step += 1
            yield RawBatch(images, captions)


def TrainStream(cfg: DataConfig, batch_size: int, rank: int = 0, world: int = 1, start: int = 0,
                device: str | torch.device = "cpu"):
    """The training stream for ``cfg.source``, positioned at step ``start``."""
    if cfg.source == "shapes":
        return ShapesStream(cfg, batch_size, rank, world, start, device)
    raise NotImplementedError(f"data.source={cfg.source!r} is not available yet")
