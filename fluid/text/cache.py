"""Text embeddings kept instead of recomputed: a per-caption memo around any encoder
(:class:`CachedTextEncoder`), and a file of precomputed embeddings (:func:`save_embeddings`,
:class:`PrecomputedTextEncoder`), so a machine without the encoder (or its package) can
still train on known captions.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from fluid.text.base import TextEncoder, UnknownCaptionError, _shorten, check_prompts, pad_rows

EMBEDDINGS_FORMAT = "fluid-text-embeddings/1"


class CachedTextEncoder(TextEncoder):
    """Memoises each caption's (len, dim) embedding, least recently used evicted first.
    A caption's embedding is that of the caption encoded alone, whatever batch asked for it.

    The built-in data has a few hundred distinct captions, so after the first epoch the
    encoder never runs. ``dtype`` is the storage dtype (float32 keeps results identical to
    the wrapped encoder; bf16 halves the memory); results are always float32.
    """

    def __init__(self, encoder: TextEncoder, max_items: int = 100_000, dtype: torch.dtype = torch.float32):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, not {max_items}")
        self.encoder, self.max_items, self.dtype = encoder, max_items, dtype
        self.name, self.dim, self.max_length = encoder.name, encoder.dim, encoder.max_length
        self.device = encoder.device
        self._rows: OrderedDict[str, Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def identity(self) -> str:
        return self.encoder.identity()

    def __len__(self):
        return len(self._rows)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._rows]
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        # Each new caption is encoded alone. In a batch its numbers can change in the last
        # bits with the batch (a multi-threaded matmul splits its work by the batch's size),
        # and a cache would keep whichever batch came first: a resumed run, whose cache
        # starts empty, would then train on other embeddings than the uninterrupted run.
        fresh = {p: self.encoder.rows([p])[0] for p in missing}
        rows = []
        for p in prompts:
            if p in fresh:
                row = fresh[p]
                # In host memory (a T5-XXL row is up to 128 x 4096 floats); clone: do not pin the batch.
                self._rows[p] = row.to("cpu", self.dtype).clone()
            else:
                row = self._rows[p]
                self._rows.move_to_end(p)
            rows.append(row)
        while len(self._rows) > self.max_items:
            self._rows.popitem(last=False)
        return pad_rows(rows, self.dim, self.device)


def save_embeddings(
    encoder: TextEncoder,
    captions: Iterable[str],
    path: str | Path,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Encode every distinct caption and write them to one safetensors file.

    Layout: ``embeddings`` (sum of lengths, dim) in ``dtype`` and ``offsets`` (N + 1,) int64;
    caption i is ``embeddings[offsets[i]:offsets[i+1]]``. The JSON header (key ``fluid``)
    holds the format, the encoder's name and identity, dim, max_length and the captions.
    Meant for caption sets up to ~10^5 (the header holds them all); large datasets store
    embeddings in their prepared shards instead.
    """
    from fluid.files import atomic_write, save_safetensors

    captions = list(dict.fromkeys(check_prompts(captions)))
    rows = []
    for start in range(0, len(captions), batch_size):
        rows.extend(r.cpu() for r in encoder.rows(captions[start : start + batch_size]))
    flat = torch.cat(rows) if rows else torch.zeros(0, encoder.dim)  # (sum len, D)
    stored = flat.to(dtype)
    if not torch.isfinite(stored).all():
        raise ValueError(f"embeddings overflow {dtype}; pass dtype=torch.bfloat16 or torch.float32")
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([r.shape[0] for r in rows], dtype=torch.long).cumsum(0)
    meta = {
        "format": EMBEDDINGS_FORMAT,
        "encoder": encoder.name,
        "identity": encoder.identity(),
        "dim": encoder.dim,
        "max_length": encoder.max_length,
        "captions": captions,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"embeddings": stored.contiguous(), "offsets": offsets}
    return atomic_write(path, lambda tmp: save_safetensors(tensors, tmp, metadata={"fluid": json.dumps(meta)}))


def load_embeddings(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read a :func:`save_embeddings` file: ({caption: (len, dim) float32}, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text embeddings file {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        header = (f.metadata() or {}).get("fluid")
        if header is None:
            raise ValueError(f"{path} is not a fluid text-embeddings file (no 'fluid' metadata)")
        meta = json.loads(header)
        if meta.get("format") != EMBEDDINGS_FORMAT:
            raise ValueError(f"{path} has format {meta.get('format')!r}; expected {EMBEDDINGS_FORMAT!r}")
        flat, offsets = f.get_tensor("embeddings").float(), f.get_tensor("offsets")
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    return dict(zip(meta["captions"], torch.split(flat, lengths))), meta


class PrecomputedTextEncoder(TextEncoder):
    """Serves captions from a :func:`save_embeddings` file; same identity as the encoder that wrote it.

    An empty or whitespace-only prompt is always served (mask all False). Other unknown
    prompts go to ``fallback`` (which must have the same identity), or raise
    :class:`UnknownCaptionError`.
    """

    def __init__(self, path: str | Path, fallback: TextEncoder | None = None, device: torch.device | str = "cpu"):
        self.path = Path(path)
        table, meta = load_embeddings(self.path)
        self.device = torch.device(device)
        self._rows = {c: r.to(self.device) for c, r in table.items()}
        self.meta = meta
        self.name, self.dim, self.max_length = meta["encoder"], int(meta["dim"]), int(meta["max_length"])
        self._identity = meta["identity"]
        if fallback is not None and fallback.identity() != self._identity:
            raise ValueError(
                f"fallback encoder {fallback.identity()} differs from {self._identity}, which wrote {self.path}"
            )
        self.fallback = fallback

    def identity(self) -> str:
        return self._identity

    def __len__(self):
        return len(self._rows)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        empty = torch.zeros(0, self.dim, device=self.device)
        unknown = [p for p in dict.fromkeys(prompts) if p not in self._rows and p.strip()]
        if unknown and self.fallback is None:
            raise UnknownCaptionError(
                f"{len(unknown)} prompt(s) are not in the precomputed text embeddings {self.path}, "
                f"e.g. {_shorten(unknown[0])!r}; pass fallback=<encoder> to encode them live, "
                f"or write them with save_embeddings"
            )
        live = dict(zip(unknown, self.fallback.rows(unknown))) if unknown else {}
        rows = [self._rows.get(p, live.get(p, empty)) for p in prompts]
        return pad_rows(rows, self.dim, self.device)
