"""Prepared caches: the on-disk format and reading it back.

A cache is a folder written by ``fluid prepare`` (:mod:`fluid.data.prepare`)::

    plan.json                  what is being prepared (source, tokenizer, text encoder, resolution, ...)
    shard-000000.safetensors   one shard per source unit (see below)
    shard-000000.json          that shard's counts, skipped and repaired records (also its completion mark)
    manifest.json              plan + totals, skip reasons, per-shard counts: written when all shards are done
    report.jsonl               one line per skipped or repaired record

A shard holds ``n`` records, ``V`` views (the image and, by default, its mirror):

    mean, logvar  (n, V, N, D)  continuous: token-space posterior moments      (float16 by default)
    codes         (n, V, N)     discrete: code indices                         (int16 / int32)
    text          (T, Dt)       every caption's token embeddings, concatenated (float16 by default)
    text_len      (n,)          rows of ``text`` per record (0: never; empty captions are skipped)
    flippable     (n,)          1 unless the caption names a side ("left", "right")
    split         (n,)          0 train, 1 held out for validation

and, in the safetensors metadata, the records' keys and captions.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

from fluid.config import TokenType

CACHE_FORMAT = "fluid-cache/1"
MANIFEST, PLAN, REPORT = "manifest.json", "plan.json", "report.jsonl"
VIEWS = ("image", "mirror")


class CacheMismatchError(ValueError):
    """A cache made for another tokenizer, text encoder, resolution or token type."""


def shard_file(unit: int) -> str:
    return f"shard-{unit:06d}.safetensors"


def stats_file(unit: int) -> str:
    return f"shard-{unit:06d}.json"


def is_cache(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / MANIFEST).is_file() or (p / PLAN).is_file())


class Shard:
    """One shard, memory-mapped: the per-record index tensors are read at once, token and text
    rows only when asked for (a shard with T5-XXL embeddings holds ~1 MB per record)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.file = safe_open(str(path), framework="pt")
        lengths = self.file.get_tensor("text_len").long()
        self.offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        self.offsets[1:] = lengths.cumsum(0)
        self.split = self.file.get_tensor("split")
        self.flippable = self.file.get_tensor("flippable")
        self._rows: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.split)

    def get(self, name: str, row: int, view: int | None = None) -> torch.Tensor:
        """``name[row]`` (or ``name[row, view]``) read from the file alone."""
        sl = self.file.get_slice(name)
        return sl[row] if view is None else sl[row, view]

    def tensor(self, name: str) -> torch.Tensor:
        """A whole tensor (for inspection and tests)."""
        return self.file.get_tensor(name)

    def rows(self, split: str) -> torch.Tensor:
        """Storage rows of the records in ``split`` (``train``, ``val`` or ``all``), in order."""
        if split not in self._rows:
            if split == "all":
                self._rows[split] = torch.arange(len(self.split))
            else:
                self._rows[split] = torch.nonzero(self.split == (1 if split == "val" else 0)).flatten()
        return self._rows[split]

    def text(self, row: int) -> torch.Tensor:
        """(len, Dt) embeddings of one record's caption."""
        return self.file.get_slice("text")[int(self.offsets[row]) : int(self.offsets[row + 1])]


class Cache:
    """Read access to a finished cache; refuses one made by other frozen parts (:meth:`check`)."""

    def __init__(self, path: str | Path, max_open: int = 4):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"cache folder {self.path} does not exist")
        if not (self.path / MANIFEST).is_file():
            if (self.path / PLAN).is_file():
                raise ValueError(
                    f"cache {self.path} is not finished (no {MANIFEST}): rerun the same `fluid prepare` "
                    f"command to complete it"
                )
            raise FileNotFoundError(
                f"{self.path} is not a prepared cache (no {MANIFEST}); make one with `fluid prepare`"
            )
        self.manifest = json.loads((self.path / MANIFEST).read_text())
        if self.manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache {self.path} has format {self.manifest.get('format')!r}; expected {CACHE_FORMAT!r}")
        m = self.manifest
        self.token_type = TokenType(m["token_type"])
        self.resolution, self.num_tokens = int(m["resolution"]), int(m["num_tokens"])
        self.token_dim, self.vocab_size = int(m["token_dim"]), int(m["vocab_size"])
        self.text_dim = int(m["text_encoder"]["dim"])
        self.views = len(m["views"])
        self.shards = m["shards"]
        self.max_open = max_open
        self._open: OrderedDict[int, Shard] = OrderedDict()

    def __repr__(self):
        c = self.manifest["counts"]
        return f"Cache({self.path}, {c['written']} records, {self.token_type.value}, {self.resolution}px)"

    def __getstate__(self):  # open files do not pickle (DataLoader workers under spawn): reopen lazily
        return {**self.__dict__, "_open": OrderedDict()}

    def check(self, tokenizer=None, text_encoder=None, resolution: int | None = None) -> Cache:
        """Raise :class:`CacheMismatchError` unless the cache was made by these frozen parts."""
        m, problems = self.manifest, []
        if tokenizer is not None:
            if tokenizer.identity() != m["tokenizer"]["identity"]:
                problems.append(
                    f"its tokens come from tokenizer {m['tokenizer']['identity']}, "
                    f"but this run uses {tokenizer.identity()}"
                )
            elif tokenizer.token_type != self.token_type:
                problems.append(
                    f"it holds {self.token_type.value} tokens, this run needs {tokenizer.token_type.value} ones"
                )
        if text_encoder is not None and text_encoder.identity() != m["text_encoder"]["identity"]:
            problems.append(
                f"its text embeddings come from {m['text_encoder']['identity']}, "
                f"but this run uses {text_encoder.identity()}"
            )
        if resolution is not None and resolution != self.resolution:
            problems.append(f"it was prepared at {self.resolution}px, this run trains at data.resolution={resolution}")
        if problems:
            raise CacheMismatchError(
                f"cache {self.path} does not fit this run: {'; '.join(problems)}. Prepare a new cache with the run's "
                "tokenizer and text encoder (`fluid prepare ... --out NEW_FOLDER`), or train with "
                "the ones it was made with."
            )
        return self

    # ------------------------------------------------------------------------- records

    def sizes(self, split: str = "train") -> list[int]:
        """Records per shard in ``split`` (``train``, ``val`` or ``all``), in shard order."""
        key = {"train": "train", "val": "val", "all": "count"}[split]
        return [int(s[key]) for s in self.shards]

    def shard(self, i: int) -> Shard:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        file = self.shards[i]["file"]
        if file is None:
            raise IndexError(f"shard {i} of {self.path} holds no records")
        shard = Shard(self.path / file)
        self._open[i] = shard
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return shard

    def gather(self, refs: list[tuple[int, int]], views: list[int] | None = None, split: str = "train"):
        """Records ``(shard, index within split)`` -> (dict of stacked token tensors, text rows).

        ``views[i]`` picks the image (0) or its mirror (1) for record i. Returns ``mean``/``logvar``
        (B, N, D) or ``codes`` (B, N) in their stored dtype, and a list of (len_i, Dt) rows.
        """
        views = views or [0] * len(refs)
        names = ("mean", "logvar") if self.token_type == TokenType.CONTINUOUS else ("codes",)
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        text = []
        for (s, i), v in zip(refs, views):
            shard = self.shard(s)
            row = int(shard.rows(split)[i])
            for n in names:
                parts[n].append(shard.get(n, row, v))
            text.append(shard.text(row))
        return {n: torch.stack(p) for n, p in parts.items()}, text

    def flippable(self, refs: list[tuple[int, int]], split: str = "train") -> list[bool]:
        out = []
        for s, i in refs:
            shard = self.shard(s)
            out.append(bool(shard.flippable[int(shard.rows(split)[i])]))
        return out

    def metadata(self, shard: int) -> dict:
        """Keys and captions of a shard's records (from the safetensors header)."""
        from safetensors import safe_open

        with safe_open(str(self.path / self.shards[shard]["file"]), framework="pt") as f:
            return json.loads(f.metadata()["fluid"])
