"""Held-out pairs for the validation loss on real data.

Where they come from, in order:

1. ``data.val_path`` naming a prepared cache: its first records (all splits);
2. ``data.val_path`` naming a raw source of the same kind as ``data.source``: its first good
   records, encoded here with the run's tokenizer and text encoder;
3. no ``val_path`` and ``data.source=cache``: the cache's held-out split
   (``fluid prepare --val-fraction``).

Posterior samples are drawn with a fixed generator, so every call gives the same set.
"""

from __future__ import annotations

from itertools import islice

import numpy as np
import torch

from fluid.data.cache import Cache, is_cache
from fluid.data.encode import FrozenEncoder, sample_tokens
from fluid.data.images import ImagePolicy, decode_record, to_tensor
from fluid.data.records import Decoded
from fluid.data.sources import open_source
from fluid.text.base import pad_rows


def heldout_pairs(
    data_cfg, n: int, tokenizer, text_encoder, device="cpu", seed: int = 0, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (V, N, C) or (V, N), text_emb (V, L, Dt), text_mask (V, L)) for up to ``n`` pairs, on ``device``."""
    where = check_heldout(data_cfg)
    if where == "val_cache":
        return _from_cache(
            Cache(data_cfg.val_path), "all", n, tokenizer, text_encoder, data_cfg.resolution, device, seed
        )
    if where == "val_source":
        return _from_source(data_cfg, n, tokenizer, text_encoder, device, seed, batch_size)
    return _from_cache(Cache(data_cfg.path), "val", n, tokenizer, text_encoder, data_cfg.resolution, device, seed)


def check_heldout(data_cfg) -> str:
    """Where the held-out pairs come from (``shapes``, ``val_cache``, ``val_source`` or
    ``cache_split``), or ValueError saying what to set. Cheap: a trainer calls it at start-up,
    so that a run without validation data fails at once, not at its first validation."""
    if data_cfg.source == "shapes":
        return "shapes"
    if data_cfg.val_path:
        if is_cache(data_cfg.val_path):
            return "val_cache"
        if data_cfg.source == "cache":
            raise ValueError(f"data.val_path={data_cfg.val_path} is not a prepared cache (data.source=cache needs one)")
        return "val_source"
    if data_cfg.source == "cache":
        if sum(Cache(data_cfg.path).sizes("val")) == 0:
            raise ValueError(
                f"cache {data_cfg.path} has no held-out records: prepare it with --val-fraction, set "
                f"data.val_path to a validation cache, or train without validation (train.val_every=0)"
            )
        return "cache_split"
    raise ValueError(
        f"validation on data.source={data_cfg.source} needs held-out pairs: set data.val_path to a "
        f"prepared cache or a {data_cfg.source} source, or train.val_every=0"
    )


def _from_cache(cache: Cache, split: str, n: int, tokenizer, text_encoder, resolution, device, seed):
    cache.check(tokenizer, text_encoder, resolution)
    refs = list(islice(((s, i) for s, size in enumerate(cache.sizes(split)) for i in range(size)), n))
    data, text = cache.gather(refs, split=split)
    if "codes" in data:
        tokens = data["codes"].long()  # (V, N)
    else:
        tokens = sample_tokens(data["mean"], data["logvar"], torch.Generator().manual_seed(seed))  # (V, N, D)
    emb, mask = pad_rows([t.float() for t in text], cache.text_dim, "cpu")
    return tokens.to(device), emb.to(device), mask.to(device)


@torch.no_grad()
def _from_source(data_cfg, n, tokenizer, text_encoder, device, seed, batch_size):
    source = open_source(
        data_cfg.source, data_cfg.val_path, images=data_cfg.images, outside_root=data_cfg.images_outside_root
    )
    policy = ImagePolicy.from_data_config(data_cfg)
    good: list[Decoded] = []
    for unit in range(len(source.sizes())):
        for rec in source.read(unit):
            d = decode_record(rec, policy)
            if isinstance(d, Decoded):
                good.append(d)
            if len(good) == n:
                break
        if len(good) == n:
            break
    if not good:
        raise ValueError(f"data.val_path={data_cfg.val_path}: no usable pairs (run `fluid prepare` on it to see why)")
    gen = torch.Generator(device).manual_seed(seed)
    encoder = FrozenEncoder(tokenizer, text_encoder, device)
    tokens, rows = [], []
    for s in range(0, len(good), batch_size):
        part = good[s : s + batch_size]
        images = to_tensor(np.stack([d.image for d in part])).to(device)  # (b, 3, R, R)
        tokens.append(encoder.tokens(images, gen).cpu())
        rows += [r.float().cpu() for r in text_encoder.rows([d.caption for d in part])]
    emb, mask = pad_rows(rows, text_encoder.dim, "cpu")
    return torch.cat(tokens).to(device), emb.to(device), mask.to(device)
