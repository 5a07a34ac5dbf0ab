"""The two kinds of training batch every stream yields (:mod:`fluid.data.stream`)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class RawBatch(NamedTuple):
    """Images and captions, encoded on the way to the trainer by :class:`~fluid.data.encode.FrozenEncoder`."""

    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    captions: list[str]


class EncodedBatch(NamedTuple):
    """Tokens and text embeddings read from a prepared cache (or an encoded pool)."""

    tokens: torch.Tensor  # (B, N, C) float or (B, N) long
    text_emb: torch.Tensor  # (B, L, Dt)
    text_mask: torch.Tensor  # (B, L) bool
