"""The frozen text encoder of a training run, or none at all.

Training from a prepared cache reads text embeddings from its shards: T5-XXL (4.7B weights)
is then never loaded. The run still carries the identity of the encoder that made the cache
(written into checkpoints, and what samplers later load). Otherwise the encoder is built in
``text.dtype`` (bf16 on CUDA by default) and its outputs memoised in host memory.
"""

from __future__ import annotations

import torch

from fluid.config import FluidConfig
from fluid.text.base import TextEncoder
from fluid.text.cache import CachedTextEncoder, PrecomputedTextEncoder
from fluid.text.encoders import build_text_encoder


class RecordedTextEncoder(TextEncoder):
    """Stands in for the encoder that made a cache: its name, width and identity, no weights."""

    def __init__(self, name: str, identity: str, dim: int, max_length: int):
        self.name, self._identity, self.dim, self.max_length = name, identity, dim, max_length

    def identity(self) -> str:
        return self._identity

    def encode(self, prompts: list[str]):
        raise RuntimeError(
            f"the text encoder {self._identity} was not loaded: this run reads its text embeddings "
            f"from the prepared cache, which should have held these captions"
        )


def needs_text_encoder(cfg: FluidConfig) -> bool:
    """False when every caption of the run comes with its embedding: a cache source, and
    validation (if any) from a cache too."""
    from fluid.data.cache import is_cache

    if cfg.data.source != "cache":
        return True
    return bool(cfg.train.val_every and cfg.data.val_path and not is_cache(cfg.data.val_path))


def encoder_dtype(cfg: FluidConfig, device: str | torch.device) -> torch.dtype:
    if cfg.text.dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[cfg.text.dtype]


def training_text_encoder(cfg: FluidConfig, device: str | torch.device, embeddings: str | None = None) -> TextEncoder:
    """The run's text encoder: a precomputed-embedding file, the cache's record, or the real one."""
    if embeddings:
        return PrecomputedTextEncoder(embeddings)  # rows stay in host memory
    if not needs_text_encoder(cfg):
        from fluid.data.cache import Cache

        m = Cache(cfg.data.path).manifest["text_encoder"]
        if int(m["dim"]) != cfg.text.dim:
            raise ValueError(f"cache {cfg.data.path} holds {m['dim']}-d text embeddings but text.dim={cfg.text.dim}")
        return RecordedTextEncoder(m["identity"].rpartition("-")[0], m["identity"], int(m["dim"]), cfg.text.max_length)
    dtype = encoder_dtype(cfg, device)
    return CachedTextEncoder(build_text_encoder(cfg.text, device=device, dtype=dtype))
