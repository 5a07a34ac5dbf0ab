"""Streaming training batches from a prepared cache or a raw source, in an order that is a pure
function of (seed, rank, step): a resumed run sees exactly what it would have seen.

The order (:class:`Plan`)
    Every epoch the units (cache shards, tar files, records of an indexed source) are
    permuted with a seed that depends on the epoch only, and their records are laid end to
    end. Rank ``r`` of ``world`` takes the ``r``-th of ``world`` contiguous, equal parts
    (sizes differ by at most one record), so every record is seen exactly once per epoch
    across ranks, and each rank reads runs of whole shards. Within its part, a rank cuts the
    sequence into windows of ``shuffle_buffer`` records and emits each window in a seeded
    random order: a shuffle buffer whose state never has to be saved.

Batches and workers
    Batch ``k`` of a rank is positions ``[k * B, (k + 1) * B)`` of its sequence (epochs follow
    one another). With ``W`` DataLoader workers, worker ``i`` makes batches ``start + i,
    start + i + W, ...``, and the DataLoader returns them round-robin, so batches arrive in
    step order and their content does not depend on ``W``. Resuming at step ``s`` just starts
    at batch ``s``: no stream state to checkpoint (the number of ranks must stay the same).

Reading
    A worker reads only the records of its own batches from random-access sources: caches,
    folder and COCO indexes, and WebDataset shards that are local, uncompressed tars (each
    worker seeks to the samples it needs, through an index of a shard's headers that it
    builds the first time it reads from that shard). Remote shards (``pipe:`` commands,
    http(s) URLs) and compressed tars can only be read in order: every worker reads each
    window of them whole and keeps its own records, so ``W`` workers read them ``W`` times.
    Both ways give the same batches (flips follow a record's place in the source, not how
    it was read).

Content
    Cache: posterior samples drawn from the stored moments with a generator seeded by
    (seed, rank, step), the mirrored view when ``data.flip`` says so (never for captions that
    name a side), and the text embeddings padded to the longest in the batch. Raw: decoded and
    center-cropped images; a bad record is replaced by a good one of the same batch.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import count

import numpy as np
import torch

from fluid.data.batches import EncodedBatch, RawBatch
from fluid.data.images import ImagePolicy, decode_record, to_tensor
from fluid.data.records import Decoded, RawRecord, Skip, flippable, stable_fraction


class Plan:
    """Which record sits at each position of one rank's infinite sequence."""

    def __init__(self, sizes, rank: int = 0, world: int = 1, window: int = 1000, seed: int = 0):
        self.sizes = np.asarray(list(sizes), dtype=np.int64)
        total = int(self.sizes.sum())
        if total < world:
            raise ValueError(f"{total} record(s) cannot be split over {world} rank(s)")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        base, extra = divmod(total, world)
        self.rank, self.world, self.seed, self.total = rank, world, seed, total
        self.length = base + (rank < extra)  # records per epoch for this rank
        self.begin = rank * base + min(rank, extra)  # where this rank's part starts in an epoch's order
        self.window = max(1, min(int(window), self.length))
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])  # unpermuted: stable record ids
        self._epochs: OrderedDict = OrderedDict()
        self._windows: OrderedDict = OrderedDict()

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(units in this epoch's order, cumulative record counts in that order); shared by all ranks."""
        if epoch not in self._epochs:
            perm = self._rng(epoch, 0).permutation(len(self.sizes))
            self._epochs[epoch] = (perm, np.cumsum(self.sizes[perm]))
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def window_order(self, epoch: int, w: int) -> np.ndarray:
        """The order in which window ``w`` of ``epoch`` emits its records (offsets within the window)."""
        key = (epoch, w)
        if key not in self._windows:
            size = min(self.window, self.length - w * self.window)
            self._windows[key] = self._rng(epoch, 1, self.rank, w).permutation(size)
            while len(self._windows) > 4:
                self._windows.popitem(last=False)
        return self._windows[key]

    def window_of(self, position: int) -> tuple[int, int]:
        epoch, q = divmod(position, self.length)
        return epoch, q // self.window

    def locate(self, position: int) -> tuple[int, int, int, int]:
        """Position -> (epoch, unit, index in the unit, stable record id)."""
        epoch, q = divmod(position, self.length)
        w, o = divmod(q, self.window)
        g = self.begin + w * self.window + int(self.window_order(epoch, w)[o])  # offset in the epoch's order
        perm, ends = self.epoch_order(epoch)
        j = int(np.searchsorted(ends, g, side="right"))
        unit = int(perm[j])
        index = g - int(ends[j] - self.sizes[unit])
        return epoch, unit, index, int(self.offsets[unit]) + index

    def window_runs(self, epoch: int, w: int) -> list[tuple[int, int, int, int]]:
        """Window ``w`` as runs ``(unit, first, stop, first position)`` of consecutive records,
        for sources that can only be read in order; the position is where that record is emitted."""
        perm, ends = self.epoch_order(epoch)
        size = min(self.window, self.length - w * self.window)
        g0 = self.begin + w * self.window
        inverse = np.argsort(self.window_order(epoch, w))  # offset in window -> emission slot
        base = epoch * self.length + w * self.window
        runs, j = [], int(np.searchsorted(ends, g0, side="right"))
        while j < len(perm) and ends[j] - self.sizes[perm[j]] < g0 + size:
            unit, start = int(perm[j]), int(ends[j] - self.sizes[perm[j]])
            a, b = max(g0, start) - start, min(g0 + size, int(ends[j])) - start
            if b > a:
                runs.append((unit, a, b, [base + int(inverse[start + i - g0]) for i in range(a, b)]))
            j += 1
        return runs


class _Windows:
    """Sequential sources (remote or compressed tar shards): reads each window once, keeps the
    records this worker needs."""

    def __init__(self, source, plan: Plan):
        self.source, self.plan = source, plan
        self.held: OrderedDict[tuple[int, int], dict[int, RawRecord]] = OrderedDict()
        # Open tar readers by unit, with the index of the next record: consecutive windows
        # continue where the last one stopped instead of re-reading the tar from its start.
        self.cursors: OrderedDict[int, tuple[object, int]] = OrderedDict()

    def fetch(self, positions: list[int], keep) -> list[RawRecord]:
        for key in dict.fromkeys(self.plan.window_of(p) for p in positions):
            if key not in self.held:
                self.held[key] = self._read(*key, keep)
        out = [self.held[self.plan.window_of(p)].pop(p) for p in positions]
        for key in [k for k, v in self.held.items() if not v]:
            del self.held[key]
        return out

    def _read(self, epoch: int, w: int, keep) -> dict[int, RawRecord]:
        records = {}
        for unit, first, stop, slots in self.plan.window_runs(epoch, w):
            it, at = self.cursors.pop(unit, (None, -1))
            if at != first:
                it = self.source.read(unit, start=first)
            broken = None
            for slot in slots:
                rec = broken or next(it, None)
                if rec is None:  # fewer samples than the header scan counted
                    rec = broken = RawRecord(f"unit{unit}/end", error=(Skip.BROKEN_SHARD, "fewer samples than counted"))
                elif rec.error is not None and rec.error[0] == Skip.BROKEN_SHARD:
                    broken = rec  # the rest of this tar is unreadable
                if keep(slot):
                    records[slot] = rec
            self.cursors[unit] = (it, stop)
            while len(self.cursors) > 2:
                self.cursors.popitem(last=False)
        return records

    def __getstate__(self):  # open readers do not pickle: a copy starts afresh
        return {**self.__dict__, "held": OrderedDict(), "cursors": OrderedDict()}


class BatchMaker:
    """Batch ``k`` of one rank, as a pure function of ``k``. Picklable: DataLoader workers get a copy."""

    def __init__(self, plan: Plan, batch_size: int, flip: bool, seed: int):
        self.plan, self.batch_size, self.flip, self.seed = plan, batch_size, flip, seed
        self.residue, self.workers = 0, 1  # which batches this copy makes (set by bind)

    def bind(self, residue: int, workers: int) -> None:
        self.residue, self.workers = residue, workers

    def positions(self, k: int) -> list[int]:
        return list(range(k * self.batch_size, (k + 1) * self.batch_size))

    def flip_of(self, epoch: int, record_id: int, caption_ok: bool) -> bool:
        return self.flip and caption_ok and stable_fraction(f"{self.seed}/{epoch}/{record_id}", "flip") < 0.5

    def __call__(self, k: int):
        raise NotImplementedError


class CacheBatches(BatchMaker):
    """EncodedBatch from a prepared cache (train split)."""

    def __init__(self, cache, plan: Plan, batch_size: int, flip: bool, seed: int, split: str = "train"):
        super().__init__(plan, batch_size, flip and cache.views > 1, seed)
        self.cache, self.split = cache, split

    def refs(self, k: int) -> list[tuple[int, int, int, int]]:
        return [self.plan.locate(p) for p in self.positions(k)]

    def __call__(self, k: int):
        from fluid.data.encode import sample_tokens
        from fluid.text.base import pad_rows

        located = self.refs(k)
        refs = [(u, i) for _, u, i, _ in located]
        ok = self.cache.flippable(refs, self.split) if self.flip else [False] * len(refs)
        views = [int(self.flip_of(e, gid, f)) for (e, _, _, gid), f in zip(located, ok)]
        data, text = self.cache.gather(refs, views, self.split)
        if "codes" in data:
            tokens = data["codes"].long()  # (B, N)
        else:
            g = torch.Generator().manual_seed(
                int(stable_fraction(f"{self.seed}/{self.plan.rank}/{k}", "noise") * 2**62)
            )
            tokens = sample_tokens(data["mean"], data["logvar"], g)  # (B, N, D)
        emb, mask = pad_rows([t.float() for t in text], self.cache.text_dim, "cpu")  # (B, L, Dt), (B, L)
        return EncodedBatch(tokens, emb, mask)


class RawBatches(BatchMaker):
    """RawBatch (images in [-1, 1], captions) decoded from a raw source."""

    def __init__(self, source, policy: ImagePolicy, plan: Plan, batch_size: int, flip: bool, seed: int):
        super().__init__(plan, batch_size, flip, seed)
        self.source, self.policy = source, policy
        self.windows = None if source.random_access else _Windows(source, plan)

    def records(self, k: int) -> list[tuple[RawRecord, int, int]]:
        positions = self.positions(k)
        located = [self.plan.locate(p) for p in positions]
        if self.windows is not None:
            keep = lambda p: (p // self.batch_size - self.residue) % self.workers == 0  # noqa: E731
            recs = self.windows.fetch(positions, keep)
        else:
            recs = [self.source.get(unit, index) for _, unit, index, _ in located]
        return [(r, epoch, gid) for r, (epoch, _, _, gid) in zip(recs, located)]

    def __call__(self, k: int):
        items = []
        for rec, epoch, gid in self.records(k):
            d = decode_record(rec, self.policy)
            if isinstance(d, Decoded):
                if self.flip_of(epoch, gid, flippable(d.caption)):
                    d.image = d.image[:, ::-1]
                items.append(d)
            else:
                items.append(None)
        good = [d for d in items if d is not None] or self._rescue(k)
        # A bad record is replaced by the next good one of the batch: duplicates are harmless,
        # a short batch would not be (every rank must step with the same batch size).
        filled = [d if d is not None else good[i % len(good)] for i, d in enumerate(items)]
        images = to_tensor(np.stack([d.image for d in filled]))  # (B, 3, R, R)
        return RawBatch(images, [d.caption for d in filled])

    def _rescue(self, k: int, tries: int = 1000) -> list[Decoded]:
        """A batch of bad records only: borrow the first good record after it (rare, so read directly)."""
        for p in range((k + 1) * self.batch_size, (k + 1) * self.batch_size + tries):
            _, unit, index, _ = self.plan.locate(p)
            rec = (
                self.source.get(unit, index) if self.source.random_access else next(self.source.read(unit, index), None)
            )
            d = decode_record(rec, self.policy) if rec is not None else None
            if isinstance(d, Decoded):
                return [d]
        raise RuntimeError(
            f"batch {k}: its records and the {tries} after it are all bad; check the data with `fluid prepare`"
        )


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, maker: BatchMaker, start: int):
        self.maker, self.start = maker, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        self.maker.bind((self.start + w) % W, W)
        for k in count(self.start + w, W):
            yield self.maker(k)


class DataStream:
    """Iterates batches from ``start`` on (through DataLoader workers if ``num_workers``),
    moving them to ``device``; ``step`` is the next batch's index."""

    def __init__(self, maker: BatchMaker, start: int = 0, num_workers: int = 0, device="cpu"):
        self.maker, self.step, self.num_workers = maker, start, num_workers
        self.device = torch.device(device)

    def __iter__(self):
        if self.num_workers > 0:
            loader = torch.utils.data.DataLoader(
                _Batches(self.maker, self.step),
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
        else:
            loader = _Batches(self.maker, self.step)
        for batch in loader:
            self.step += 1
            yield _to_device(batch, self.device)


def _to_device(batch, device: torch.device):
    moved = [x.to(device, non_blocking=True) if torch.is_tensor(x) else x for x in batch]
    return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)


def open_stream(
    cfg, batch_size: int, rank: int = 0, world: int = 1, start: int = 0, device="cpu", tokenizer=None, text_encoder=None
) -> DataStream:
    """The training stream of a ``cache``, ``folder``, ``coco`` or ``wds`` :class:`~fluid.config.DataConfig`.

    For a cache, ``tokenizer`` / ``text_encoder`` (when given) must be the ones it was made
    with (:class:`~fluid.data.cache.CacheMismatchError` otherwise); its resolution must be
    ``cfg.resolution`` in any case.
    """
    from fluid.data.cache import Cache
    from fluid.data.sources import open_source

    if not cfg.path:
        raise ValueError(f"data.source={cfg.source} needs data.path (the {cfg.source} to read)")
    if cfg.source == "cache":
        cache = Cache(cfg.path).check(tokenizer, text_encoder, cfg.resolution)
        plan = Plan(cache.sizes("train"), rank, world, cfg.shuffle_buffer, cfg.seed)
        maker: BatchMaker = CacheBatches(cache, plan, batch_size, cfg.flip, cfg.seed)
    else:
        # Indexed sources are read one record per unit: every epoch is a full permutation.
        source = open_source(
            cfg.source, cfg.path, images=cfg.images, shard_size=1, outside_root=cfg.images_outside_root
        )
        plan = Plan(source.sizes(), rank, world, cfg.shuffle_buffer, cfg.seed)
        maker = RawBatches(source, ImagePolicy.from_data_config(cfg), plan, batch_size, cfg.flip, cfg.seed)
    return DataStream(maker, start, cfg.num_workers, device)
