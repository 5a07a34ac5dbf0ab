"""The text-encoder interface: prompts -> per-token embeddings and a padding mask.

Every encoder maps ``list[str]`` to ``(emb (B, L, dim) float32, mask (B, L) bool)`` where
``L`` is the longest tokenised prompt of the batch (at most ``max_length``, at least 1).
An empty or whitespace-only prompt gives a row whose mask is all False: the generator
replaces it by its learned null embedding (unconditional generation). Padding positions
are zero and masked out (``pad_rows``). The encoders are in :mod:`fluid.text.encoders`,
the caches in :mod:`fluid.text.cache`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class PromptTruncatedWarning(UserWarning):
    """A prompt had more encoder tokens than ``max_length`` and was cut."""


class UnknownCaptionError(KeyError):
    """A precomputed encoder was asked for a caption it does not hold."""

    def __str__(self):  # KeyError would show the repr of the message
        return str(self.args[0])


def check_prompts(prompts) -> list[str]:
    """Return ``prompts`` as a list of str, or raise TypeError naming the bad item."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a list of strings, not a single string: wrap it as [prompt]")
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"prompts must be a list of strings, not {type(prompts).__name__}") from None
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str: {_shorten(repr(p))}")
    return prompts


def _shorten(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def pad_rows(rows: list[Tensor], dim: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Stack per-caption embeddings (len_i, dim) into (B, L, dim) float32 + mask (B, L)."""
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
    L = max(1, int(lengths.max()) if len(rows) else 0)  # never an empty sequence axis
    emb = torch.zeros(len(rows), L, dim, device=device)  # (B, L, D)
    for i, r in enumerate(rows):
        emb[i, : r.shape[0]] = r
    mask = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
    return emb, mask.to(device)


class TextEncoder:
    """Frozen prompt encoder. Subclasses implement :meth:`encode` and :meth:`identity`."""

    name: str = "text"
    dim: int
    max_length: int
    device: torch.device = torch.device("cpu")

    def identity(self) -> str:
        """``name-<12 hex>``: the same weights and tokenizer give the same string in every run."""
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        with torch.no_grad():
            return self.encode(prompts)

    def rows(self, prompts: list[str]) -> list[Tensor]:
        """Each prompt's unpadded embedding, (len_i, dim) float32 (len_i = 0 for empty prompts)."""
        emb, mask = self(prompts)
        return [e[:n] for e, n in zip(emb, mask.sum(1).tolist())]

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim}, max_length={self.max_length})"
