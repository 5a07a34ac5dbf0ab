"""``fluid prepare``: raw image-caption pairs -> a sharded cache of tokens and text embeddings.

    prepare(source, out, tokenizer, text_encoder, policy, PrepareOptions(workers=4))

Worker processes decode, center crop and resize (:mod:`fluid.data.pool`); this process
encodes every image and its mirror with the frozen tokenizer (KL moments or VQ codes) and
every caption with the text encoder, and writes one shard per source unit. Layout and
fields: :mod:`fluid.data.cache`.

Resumable: a shard and then its stats file are each written under a temporary name and
renamed, and the stats file marks the shard done. A restarted run checks that ``plan.json``
matches, skips done shards and redoes the rest; each shard depends only on its own unit,
so the finished cache is byte-for-byte the one an uninterrupted run writes (same machine,
same batch size). ``manifest.json`` and ``report.jsonl`` are rebuilt from the stats files.

Many processes at once (``PrepareOptions(rank=r, world=n)``; ``fluid prepare --rank/--world``
or torchrun's ``RANK``/``WORLD_SIZE``): process ``r`` prepares the units ``u`` with
``u % n == r`` into the same folder. They need no process group, only a shared folder: all
of them write or check one ``plan.json`` (created once, atomically; a process with another
plan is refused), and a process that finds every unit done when it ends writes the manifest
(the last one to finish; two at once write the same files). The others end with the list
of units still to do. Rerunning any of them, or a single process, finishes what is left.

The output folder, shared by the processes: :mod:`fluid.data.outfolder`.

Bad records are skipped and counted by :class:`~fluid.data.records.Skip` reason, repairs by
:class:`~fluid.data.records.Fix`; ``strict=True`` stops at the first skipped record instead.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fluid.config import Precision
from fluid.data.cache import CACHE_FORMAT, MANIFEST, VIEWS, shard_file, stats_file
from fluid.data.encode import caption_token_counts, encode_images, encode_text
from fluid.data.images import ImagePolicy, to_tensor
from fluid.data.outfolder import (
    PrepareError,
    check_rank,
    finish,
    open_folder,
    write_json,
)
from fluid.data.pool import decoded
from fluid.data.records import Decoded, Fix, Source, flippable, stable_fraction
from fluid.files import atomic_write, save_safetensors
from fluid.runtime import resolve_precision

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class PrepareOptions:
    batch_size: int = 64
    """Images encoded per tokenizer call (the mirror doubles it)."""
    workers: int = 2
    """Decoding processes (0: decode in this process)."""
    dtype: str = "float16"
    """Storage of moments and text embeddings: float16, bfloat16 or float32."""
    flip: bool = True
    """Also encode each image's horizontal mirror (for data.flip at training time)."""
    val_fraction: float = 0.0
    """Hold this fraction of records out for validation (chosen by a hash of the record key)."""
    strict: bool = False
    """Stop at the first record that would be skipped."""
    precision: Precision = Precision.FP32
    """Encoding precision (``auto``: bf16 where fast); fp32 keeps caches bit-reproducible."""
    overwrite: bool = False
    """Delete a different preparation found in the output folder instead of refusing."""
    progress: bool = True
    rank: int = 0
    """This process prepares the units ``u`` with ``u % world == rank``."""
    world: int = 1
    """Processes preparing the same folder at once (see the module docstring)."""

    def __post_init__(self):
        check_rank(self.rank, self.world)
        if self.overwrite and self.world > 1:
            raise ValueError(
                "overwrite cannot be combined with world > 1 (the processes would delete each other's "
                "shards): empty the folder first, or overwrite with a single process"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        self.precision = Precision(self.precision)


@dataclass
class PrepareResult:
    manifest: dict | None  # None: units of other processes are still to do (``remaining``)
    seconds: float = 0.0
    records: int = 0  # records read in this run (done shards not counted)
    written: int = 0  # records encoded in this run
    stats: dict = field(default_factory=dict)
    remaining: list[int] = field(default_factory=list)  # units not done yet (of other processes)
    units: int = 0  # units of this process (rank)

    @property
    def images_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def make_plan(source: Source, tokenizer, text_encoder, policy: ImagePolicy, opt: PrepareOptions) -> dict:
    r = policy.resolution
    tok_id, text_id = tokenizer.identity(), text_encoder.identity()  # hashes the weights: once
    return {
        "format": CACHE_FORMAT,
        "source": source.describe(),
        "units": source.units(),
        "resolution": r,
        "policy": policy.to_dict(),
        "token_type": tokenizer.token_type.value,
        "num_tokens": tokenizer.num_tokens(r),
        "token_dim": int(tokenizer.token_dim),
        "vocab_size": int(getattr(tokenizer, "vocab_size", 0) or 0),
        "tokenizer": {
            "identity": tok_id,
            "name": getattr(tokenizer, "name", type(tokenizer).__name__),
            "hash": tok_id.rpartition(":")[2],
        },
        "text_encoder": {
            "identity": text_id,
            "hash": text_id.rpartition("-")[2],
            "dim": int(text_encoder.dim),
            "max_length": int(text_encoder.max_length),
        },
        "dtype": opt.dtype,
        # fp32 and bf16 encodings differ: shards of both must not end up in one cache.
        "precision": resolve_precision(opt.precision, tokenizer.device).value,
        "views": list(VIEWS[: 2 if opt.flip else 1]),
        "val_fraction": opt.val_fraction,
    }


class _UnitWriter:
    """Accumulates one unit's encoded chunks, then writes its shard and stats."""

    def __init__(self, unit: int, name: str, dtype: torch.dtype, code_dtype: torch.dtype, val_fraction: float):
        self.unit, self.name, self.dtype, self.code_dtype, self.val_fraction = (
            unit,
            name,
            dtype,
            code_dtype,
            val_fraction,
        )
        self.tensors: dict[str, list[torch.Tensor]] = {}
        self.text: list[torch.Tensor] = []
        self.keys, self.captions, self.skipped, self.fixed = [], [], [], []
        self.seen = 0

    def add(self, keys, captions, encoded: dict[str, torch.Tensor], text_rows, fixes: list[list[Fix]]) -> None:
        for k, v in encoded.items():
            self.tensors.setdefault(k, []).append(v.cpu())
        self.text += text_rows
        self.keys += keys
        self.captions += captions
        self.fixed += [[k, [f.value for f in fx]] for k, fx in zip(keys, fixes) if fx]

    def write(self, out: Path) -> dict:
        n = len(self.keys)
        split = [1 if stable_fraction(k, "val") < self.val_fraction else 0 for k in self.keys]
        file = None
        if n:
            store = {}
            for k, parts in self.tensors.items():
                t = torch.cat(parts)
                if t.is_floating_point():
                    t = t.to(self.dtype)
                    if not torch.isfinite(t).all():
                        raise PrepareError(
                            f"unit {self.name}: {k} overflows {self.dtype}; use --dtype bfloat16 or float32"
                        )
                else:
                    t = t.to(self.code_dtype)
                store[k] = t.contiguous()
            text = torch.cat(self.text).to(self.dtype)  # (T, Dt)
            if not torch.isfinite(text).all():
                raise PrepareError(
                    f"unit {self.name}: text embeddings overflow {self.dtype}; use --dtype bfloat16 or float32"
                )
            store["text"] = text.contiguous()
            store["text_len"] = torch.tensor([r.shape[0] for r in self.text], dtype=torch.int32)
            store["flippable"] = torch.tensor([flippable(c) for c in self.captions], dtype=torch.uint8)
            store["split"] = torch.tensor(split, dtype=torch.uint8)
            meta = {"fluid": json.dumps({"unit": self.name, "keys": self.keys, "captions": self.captions})}
            file = shard_file(self.unit)
            atomic_write(out / file, lambda p: save_safetensors(store, p, metadata=meta))
        else:
            (out / shard_file(self.unit)).unlink(missing_ok=True)  # a stale shard of an interrupted run
        stats = {
            "unit": self.name,
            "index": self.unit,
            "file": file,
            "seen": self.seen,
            "count": n,
            "val": sum(split),
            "train": n - sum(split),
            "skipped": self.skipped,
            "fixed": self.fixed,
        }
        write_json(out / stats_file(self.unit), stats)
        return stats


def prepare(
    source: Source,
    out: str | Path,
    tokenizer,
    text_encoder,
    policy: ImagePolicy,
    options: PrepareOptions | None = None,
    *,
    _fail_after: int | None = None,
) -> PrepareResult:
    """Prepare (or finish preparing) the cache in ``out``; see the module docstring.

    ``_fail_after`` (tests only) raises after writing that many shards, as a crash would.
    """
    opt = options or PrepareOptions()
    out = Path(out)
    tokenizer.grid_size(policy.resolution)  # a resolution the tokenizer cannot tile fails here, not mid-run
    plan = make_plan(source, tokenizer, text_encoder, policy, opt)
    if open_folder(out, plan, opt.overwrite):
        return PrepareResult(json.loads((out / MANIFEST).read_text()))
    units = plan["units"]
    mine = [u for u in range(len(units)) if u % opt.world == opt.rank]
    pending = [u for u in mine if not (out / stats_file(u)).is_file()]
    run = _Run(out, plan, opt, tokenizer, text_encoder)
    # Record totals of indexed sources are free; tar shards would need a scan of every header.
    sizes = source.sizes() if source.sizes_known else None
    part = f" {opt.rank}/{opt.world}" if opt.world > 1 else ""
    bar = tqdm(
        total=sum(sizes[u] for u in mine) if sizes else None,
        initial=sum(sizes[u] for u in mine) - sum(sizes[u] for u in pending) if sizes else 0,
        unit="img",
        desc=f"prepare {out.name}{part}",
        disable=not opt.progress,
        dynamic_ncols=True,
    )
    t0, done_now = time.perf_counter(), 0
    stream = decoded(source, pending, policy, opt.workers, opt.batch_size)
    try:
        for unit, chunk in stream:
            bar.update(run.consume(unit, chunk))
            bar.set_postfix(skipped=run.skipped, shards=f"{len(mine) - len(pending) + done_now}/{len(mine)}")
            if chunk is None:
                done_now += 1
                if _fail_after is not None and done_now >= _fail_after:
                    raise RuntimeError(f"injected failure after {_fail_after} shard(s)")
    finally:
        stream.close()  # stops the decode workers, also on errors
        bar.close()
    seconds = time.perf_counter() - t0
    # Whoever finds every unit done writes the manifest: with several processes, the last to finish.
    remaining = [u for u in range(len(units)) if not (out / stats_file(u)).is_file()]
    manifest = None if remaining else finish(out, plan)
    return PrepareResult(manifest, seconds, run.records, run.written, remaining=remaining, units=len(mine))


class _Run:
    """One preparation run: turns decoded chunks into shards, unit by unit."""

    def __init__(self, out: Path, plan: dict, opt: PrepareOptions, tokenizer, text_encoder):
        self.out, self.units, self.opt = out, plan["units"], opt
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.views, self.dtype = len(plan["views"]), DTYPES[opt.dtype]
        self.code_dtype = torch.int16 if plan["vocab_size"] <= 2**15 else torch.int32
        self.device = tokenizer.device
        self.amp = resolve_precision(opt.precision, self.device) == Precision.BF16
        self.writer: _UnitWriter | None = None
        self.records = self.written = self.skipped = 0

    def consume(self, unit: int, chunk) -> int:
        """One event of the decode stream (a chunk, or None at the end of a unit); returns records read."""
        if self.writer is None:
            self.writer = _UnitWriter(unit, self.units[unit], self.dtype, self.code_dtype, self.opt.val_fraction)
        if chunk is None:
            self.writer.write(self.out)
            self.writer = None
            return 0
        good = [item for item in chunk if isinstance(item, Decoded)]
        for item in chunk:
            if not isinstance(item, Decoded):
                if self.opt.strict:
                    raise PrepareError(
                        f"record {item.key} in unit {self.units[unit]}: {item.reason.value} "
                        f"({item.detail}); --strict stops at the first bad record "
                        f"(without it, bad records are skipped and counted)"
                    )
                self.writer.skipped.append([item.key, item.reason.value, item.detail])
                self.skipped += 1
        self.writer.seen += len(chunk)
        self.records += len(chunk)
        if good:
            self._encode(good)
        return len(chunk)

    def _encode(self, good: list[Decoded]) -> None:
        encoded = _encode_chunk(good, self.tokenizer, self.views, self.device, self.amp)
        captions = [g.caption for g in good]
        counts = caption_token_counts(self.text_encoder, captions)
        fixes = [list(g.fixes) for g in good]
        if counts is not None:
            for f, c in zip(fixes, counts):
                if c > self.text_encoder.max_length:
                    f.append(Fix.CAPTION_TRUNCATED)
        self.writer.add([g.key for g in good], captions, encoded, encode_text(self.text_encoder, captions), fixes)
        self.written += len(good)


def _encode_chunk(good: list[Decoded], tokenizer, views: int, device, amp: bool) -> dict[str, torch.Tensor]:
    """Encode each distinct image once (COCO: several captions share one), then index per record."""
    first: dict[str, int] = {}
    for g in good:
        first.setdefault(g.image_id, len(first))
    unique = [None] * len(first)
    for g in good:
        if unique[first[g.image_id]] is None:
            unique[first[g.image_id]] = g.image
    images = to_tensor(np.stack(unique)).to(device)  # (U, 3, R, R)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    with ctx:
        enc = encode_images(tokenizer, images, views)
    index = torch.tensor([first[g.image_id] for g in good])
    return {k: (v.float() if v.is_floating_point() else v)[index.to(v.device)].cpu() for k, v in enc.items()}
