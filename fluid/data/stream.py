"""Training batches, deterministic by step so that a resumed run sees what it would have seen.

A stream yields either :class:`RawBatch` (images + captions) or :class:`EncodedBatch` (tokens
+ text embeddings, read from a prepared cache or an encoded pool); :func:`encoded` passes raw
batches through the one encoder step, :class:`~fluid.data.encode.FrozenEncoder`, so that the
trainer only ever sees encoded ones.

For the built-in data, batch ``k`` of rank ``r`` in a ``world``-process run holds items
``k * B * world + r * B + [0, B)`` of the train split: no two ranks or steps share an item,
and the position to resume from is just the step. With ``accum`` micro-batches per optimizer
step, batch ``k`` is micro-batch ``k % accum`` of step ``k // accum``, so a step holds the same
items (and, from a pool, the same draws) on any number of processes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fluid.config import DataConfig
from fluid.data.batches import EncodedBatch, RawBatch
from fluid.files import atomic_write
from fluid.shapes.dataset import ShapesDataset
from fluid.shapes.digest import renderer_digest
from fluid.shapes.scenes import flip_caption, item_seed


class ShapesStream:
    """Batches of the built-in ``shapes`` data, rendered per batch or drawn from a pool.

    With ``data.pool_encoded`` the pool is encoded once by the frozen tokenizer. Runs that
    share a tokenizer (a sweep's runs, for instance) can share that work: with ``pool_cache``
    naming a folder (``fluid train --pool-cache``), the encoded pool is kept there under a key
    made of the pool's size, the data's settings, the renderer's code and the tokenizer's
    identity, and read back by the next run with the same key.
    """

    def __init__(
        self,
        cfg: DataConfig,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        device: str | torch.device = "cpu",
        tokenizer=None,
        text_encoder=None,
        accum: int = 1,
        pool_cache: str | Path | None = None,
    ):
        self.dataset = ShapesDataset("train", cfg.resolution, holdout=cfg.holdout)
        self.cfg, self.batch_size, self.rank, self.world, self.accum = cfg, batch_size, rank, world, accum
        self.step, self.device = start, device

        self.pool_images, self.pool_captions = self._render_pool(cfg.pool) if cfg.pool else (None, None)
        self.pool_tokens = None
        if cfg.pool_encoded:
            if tokenizer is None or text_encoder is None:
                raise ValueError("data.pool_encoded needs the tokenizer and text encoder")
            self.text_encoder = text_encoder
            if pool_cache is not None:
                self.pool_tokens = self._cached_pool(tokenizer, Path(pool_cache))
            else:
                self.pool_tokens = self._encode_pool(tokenizer)
            self.pool_images = None  # only the encoded form is used from here on

    def pool_key(self, tokenizer) -> str:
        """What the encoded pool depends on, hashed: the same key means the same tensors."""
        c = self.cfg
        what = {
            "format": 1,
            "pool": c.pool,
            "resolution": c.resolution,
            "holdout": c.holdout,
            "renderer": renderer_digest(),
            "tokenizer": tokenizer.identity(),
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def _cached_pool(self, tokenizer, folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        path = folder / f"pool-{self.pool_key(tokenizer)}.safetensors"
        if path.exists():
            try:
                tokens = load_file(path)
                if all(len(v) == len(self.pool_captions) for v in tokens.values()) and tokens:
                    return tokens
            except Exception:  # noqa: BLE001 - a torn or foreign file: encode again and replace it
                pass
        tokens = self._encode_pool(tokenizer)
        folder.mkdir(parents=True, exist_ok=True)
        # Two runs encoding the same pool at once both write whole files.
        atomic_write(path, lambda tmp: save_file({k: v.contiguous().cpu() for k, v in tokens.items()}, tmp))
        return tokens

    @torch.no_grad()
    def _encode_pool(self, tokenizer, chunk: int = 256) -> dict[str, torch.Tensor]:
        """Posterior moments (continuous) or codes (discrete) of every pool image, once."""
        from fluid.data.encode import encode_images

        parts: dict[str, list[torch.Tensor]] = {}
        for start in tqdm(range(0, len(self.pool_captions), chunk), desc="encode pool", unit="chunk", leave=False):
            images = self.pool_images[start : start + chunk].float() / 127.5 - 1.0
            for k, v in encode_images(tokenizer, images, views=1).items():
                parts.setdefault(k, []).append(v[:, 0])  # view 0: the image itself
        return {k: torch.cat(v) for k, v in parts.items()}

    def _render_pool(self, size: int, chunk: int = 4096):
        images, captions = [], []
        for start in tqdm(range(0, size, chunk), desc="render pool", unit="chunk", leave=False):
            img, cap = self.dataset.batch(range(start, min(size, start + chunk)), self.device)
            images.append(((img + 1) * 127.5).round().to(torch.uint8))  # (n, 3, H, W)
            captions += cap
        return torch.cat(images), captions

    def slot(self, k: int) -> tuple[int, int]:
        """(optimizer step, slot in its global batch) of this rank's batch ``k``."""
        return k // self.accum, (k % self.accum) * self.world + self.rank

    def indices(self, step: int) -> list[int]:
        if self.pool_captions is not None:  # a pool, rendered or encoded
            # Draws with replacement, seeded by (step, slot): the same after a resume.
            g = torch.Generator().manual_seed(item_seed(f"pool-{self.slot(step)[1]}", self.slot(step)[0]))
            return torch.randint(len(self.pool_captions), (self.batch_size,), generator=g).tolist()
        first = (step * self.world + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def _batch(self, idx: list[int]):
        if self.pool_images is None:
            return self.dataset.batch(idx, self.device)
        sel = torch.tensor(idx, device=self.pool_images.device)
        return self.pool_images[sel].float() / 127.5 - 1.0, [self.pool_captions[i] for i in idx]

    def _encoded_batch(self, idx: list[int]) -> EncodedBatch:
        from fluid.data.encode import sample_tokens

        sel = torch.tensor(idx, device=next(iter(self.pool_tokens.values())).device)
        if "codes" in self.pool_tokens:
            tokens = self.pool_tokens["codes"][sel]  # (B, N)
        else:
            # A fresh posterior sample per batch, seeded by (rank, step): the same after a resume.
            step, slot = self.slot(self.step)
            g = torch.Generator(sel.device).manual_seed(item_seed(f"posterior-{slot}", step))
            tokens = sample_tokens(self.pool_tokens["mean"][sel], self.pool_tokens["logvar"][sel], g)  # (B, N, D)
        emb, mask = self.text_encoder([self.pool_captions[i] for i in idx])
        return EncodedBatch(tokens.to(self.device), emb.to(self.device), mask.to(self.device))

    def __iter__(self) -> Iterator[RawBatch | EncodedBatch]:
        while True:
            idx = self.indices(self.step)
            if self.pool_tokens is not None:
                batch = self._encoded_batch(idx)
                self.step += 1
                yield batch
                continue
            images, captions = self._batch(idx)
            if self.cfg.flip:
                # Flip about half of the items, chosen by a stable hash of the index; the
                # caption's left/right words swap with the image.
                flip = torch.tensor([item_seed("flip", i) % 2 == 1 for i in idx], device=images.device)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                captions = [flip_caption(c) if f else c for c, f in zip(captions, flip.tolist())]
            self.step += 1
            yield RawBatch(images, captions)


def encoded(
    batches: Iterator[RawBatch | EncodedBatch], encoder, generator: torch.Generator | None = None
) -> Iterator[EncodedBatch]:
    """Every batch of a stream as an :class:`EncodedBatch`: raw pairs go through ``encoder``
    (a :class:`~fluid.data.encode.FrozenEncoder`) when they are drawn, so that a caller who
    seeds ``generator`` before each ``next`` fixes that batch's posterior sample."""
    for batch in batches:
        yield encoder(batch, generator) if isinstance(batch, RawBatch) else batch


def TrainStream(
    cfg: DataConfig,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    start: int = 0,
    device: str | torch.device = "cpu",
    tokenizer=None,
    text_encoder=None,
    accum: int = 1,
    pool_cache: str | Path | None = None,
):
    """The training stream for ``cfg.source``, positioned at batch ``start`` (of ``accum``
    per optimizer step).

    Streaming sources give each rank a contiguous part of every epoch: resumed on another
    number of processes, a run continues at the same point of the epoch, in another order.

    ``shapes`` renders in this process; ``cache`` (EncodedBatch), ``folder``, ``coco`` and
    ``wds`` (RawBatch) stream through :mod:`fluid.data.streaming`, in an order that is a pure
    function of the step. A cache is checked against ``tokenizer`` / ``text_encoder`` when given.
    ``pool_cache``: the folder that keeps encoded ``shapes`` pools (see :class:`ShapesStream`).
    """
    if cfg.source == "shapes":
        return ShapesStream(cfg, batch_size, rank, world, start, device, tokenizer, text_encoder, accum, pool_cache)
    from fluid.data.streaming import open_stream

    return open_stream(cfg, batch_size, rank, world, start, device, tokenizer=tokenizer, text_encoder=text_encoder)
