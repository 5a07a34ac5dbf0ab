"""Streaming training data: per-rank and per-worker sharding, resumption, flips, validation,
and a model training from every source kind."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import WordHashEncoder, make_tokenizer, tiny_config
from tiny_data import (
    BOMB_PIXELS,
    build_items,
    single_thread,  # noqa: F401  (autouse fixture)
    write_coco,
    write_folder,
    write_wds,
)

from fluid.config import DataConfig, apply_overrides
from fluid.data.cache import Cache
from fluid.data.images import ImagePolicy
from fluid.data.prepare import PrepareOptions, prepare
from fluid.data.sources import FolderSource, WdsSource
from fluid.data.stream import EncodedBatch, RawBatch, TrainStream
from fluid.data.streaming import BatchMaker, DataStream, Plan
from fluid.train.trainer import Trainer
from fluid.train.validation import ValidationSet

FAST = dict(workers=0, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("stream")
    items = build_items(12)
    d = SimpleNamespace(
        root=root,
        folder=write_folder(root / "folder", items),
        coco=write_coco(root / "coco", items),
        wds=write_wds(root / "wds", items),
        kl=make_tokenizer("kl"),
        vq=make_tokenizer("vq"),
    )
    policy = ImagePolicy(resolution=32, max_pixels=BOMB_PIXELS)
    prepare(
        FolderSource(d.folder, shard_size=5),
        root / "cache-kl",
        d.kl,
        minilm,
        policy,
        PrepareOptions(val_fraction=0.25, **FAST),
    )
    prepare(WdsSource(d.wds), root / "cache-vq", d.vq, minilm, policy, PrepareOptions(**FAST))
    return d


class IdBatches(BatchMaker):
    """Batches of (epoch, record id) pairs plus the worker that made them: what the sharding decides."""

    def __call__(self, k):
        info = torch.utils.data.get_worker_info()
        located = [self.plan.locate(p) for p in self.positions(k)]
        return (
            torch.tensor([[e, gid] for e, _, _, gid in located]),
            torch.tensor(k),
            torch.tensor(-1 if info is None else info.id),
        )


@pytest.mark.parametrize("start", [0, 3])
def test_two_ranks_of_two_workers_see_every_record_once_per_epoch(start):
    sizes, B, W = [5, 7, 3, 0, 9, 4], 3, 2
    total = sum(sizes)
    per_epoch: dict[int, list[int]] = {}
    for rank in range(2):
        plan = Plan(sizes, rank, 2, window=4, seed=11)
        stream = DataStream(IdBatches(plan, B, flip=False, seed=11), start=start, num_workers=W)
        steps = start + math.ceil(3 * plan.length / B)
        for step, (pairs, k, worker) in zip(range(start, steps), stream):
            assert int(k) == step and int(worker) == (step - start) % W  # step order, round-robin workers
            for e, gid in pairs.tolist():
                per_epoch.setdefault(e, []).append(gid)
        assert stream.step == steps
    assert sorted(per_epoch[1]) == list(range(total))  # epoch 1: every record exactly once over both ranks
    if start == 0:
        assert sorted(per_epoch[0]) == list(range(total))


def _batches(cfg, n, start=0, **kw):
    stream = TrainStream(cfg, 4, start=start, **kw)
    return [b for _, b in zip(range(n), stream)]


def _same(a, b):
    assert type(a) is type(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y) if torch.is_tensor(x) else x == y


@pytest.mark.parametrize("source", ["cache-kl", "cache-vq", "wds", "coco"])
def test_resuming_or_adding_workers_gives_the_same_batches(data, source):
    path = {
        "cache-kl": data.root / "cache-kl",
        "cache-vq": data.root / "cache-vq",
        "wds": data.wds[0].parent,
        "coco": data.coco,
    }[source]
    kind = "cache" if source.startswith("cache") else source
    cfg = DataConfig(source=kind, path=str(path), resolution=32, shuffle_buffer=6, flip=True)
    ref = _batches(cfg, 7)
    assert isinstance(ref[0], EncodedBatch if kind == "cache" else RawBatch)
    for a, b in zip(ref[3:], _batches(cfg, 4, start=3)):
        _same(a, b)
    workers = DataConfig(**{**vars(cfg), "num_workers": 2})
    for a, b in zip(ref[2:], _batches(workers, 5, start=2)):
        _same(a, b)
    other = _batches(DataConfig(**{**vars(cfg), "seed": 1}), 7)
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(ref, other))  # the seed matters


def test_local_tars_read_by_seeking_give_the_batches_of_piped_ones_with_any_workers(data):
    """Local tars are read sample by sample (random access), the same tars through ``pipe:``
    window by window (sequentially): the batches are the same, broken shard included, with 0
    or 2 workers and when resumed."""
    local = DataConfig(source="wds", path=str(data.wds[0].parent), resolution=32, shuffle_buffer=6, flip=True)
    piped = DataConfig(**{**vars(local), "path": ",".join(f"pipe:cat {p}" for p in data.wds)})
    maker, piped_maker = TrainStream(local, 4).maker, TrainStream(piped, 4).maker
    assert maker.source.random_access and maker.windows is None and piped_maker.windows is not None
    n = 9  # more than an epoch (every shard, the broken one too)
    assert n * 4 > maker.plan.total
    ref = _batches(local, n)
    for cfg in (
        piped,
        DataConfig(**{**vars(local), "num_workers": 2}),
        DataConfig(**{**vars(piped), "num_workers": 2}),
    ):
        for a, b in zip(ref, _batches(cfg, n), strict=True):
            _same(a, b)
    for a, b in zip(ref[5:], _batches(piped, 4, start=5), strict=True):
        _same(a, b)


def test_each_worker_reads_only_the_samples_of_its_own_batches(tmp_path, monkeypatch):
    """With 2 DataLoader workers, each reads from the local tars exactly the samples of its own
    batches (k = i, i + 2, ...): half the reads each, instead of every sample of every window."""
    import os

    from fluid.data import tar

    log = tmp_path / "reads"
    log.mkdir()
    real = tar.read_sample

    def logged(path, start, end):  # runs in the (forked) workers
        with open(log / str(os.getpid()), "a") as f:
            f.write(f"{path.name} {start}\n")
        return real(path, start, end)

    monkeypatch.setattr(tar, "read_sample", logged)
    # Good records only (but the one without an image): no batch borrows a record from further on.
    clean = write_wds(tmp_path / "wds", [it for it in build_items(16) if not it.skip], broken=False)
    cfg = DataConfig(source="wds", path=str(clean[0].parent), resolution=32, shuffle_buffer=6, num_workers=2)
    stream, B, steps = TrainStream(cfg, 4), 4, 6
    assert len([b for _, b in zip(range(steps), stream)]) == steps
    del stream
    import gc

    gc.collect()  # stops the workers (they may have made a few batches ahead)
    maker = TrainStream(DataConfig(**{**vars(cfg), "num_workers": 0}), B).maker
    shards = maker.source.shards
    starts = [tar.scan(p)[0] for p in shards]

    def reads(worker, batches):  # what worker i reads for its first batches, in order
        out = []
        for k in range(worker, 2 * batches, 2):
            for p in maker.positions(k):
                _, unit, index, _ = maker.plan.locate(p)
                out.append(f"{shards[unit].name} {starts[unit][index]}")
        return out

    logs = list(log.iterdir())
    assert len(logs) == 2, "two workers read"
    made = []
    for lines in (f.read_text().splitlines() for f in logs):
        worker = next(i for i in (0, 1) if lines[:B] == reads(i, 1)[:B])
        assert lines == reads(worker, steps)[: len(lines)]  # only its own batches' samples, in order
        assert steps // 2 * B <= len(lines) <= (steps // 2 + 3) * B  # its batches, and at most a few made ahead
        made.append(worker)
    assert sorted(made) == [0, 1]
    assert sum(maker.plan.sizes) < 2 * steps * B  # (sequentially, each would read every sample of every window)


def test_cache_stream_serves_the_train_split_and_mirrors_only_side_free_captions(data):
    cache = Cache(data.root / "cache-vq")
    cfg = DataConfig(source="cache", path=str(data.root / "cache-vq"), resolution=32, flip=True, shuffle_buffer=5)
    stream = TrainStream(cfg, 4)
    maker = stream.maker
    n = sum(cache.sizes("train"))
    flipped = 0
    for k in range(math.ceil(n / 4)):
        batch = maker(k)
        refs = maker.refs(k)
        for row, (_, shard, index, _) in enumerate(refs):
            stored = int(cache.shard(shard).rows("train")[index])
            codes = cache.shard(shard).get("codes", stored).long()  # (V, N)
            caption = cache.metadata(shard)["captions"][stored]
            view = 0 if torch.equal(batch.tokens[row], codes[0]) else 1
            assert torch.equal(batch.tokens[row], codes[view])
            if "left" in caption:
                assert view == 0
            flipped += view
    assert 0 < flipped < n
    kl = Cache(data.root / "cache-kl")
    train_only = TrainStream(DataConfig(source="cache", path=str(kl.path), resolution=32), 4)
    assert sum(kl.sizes("val")) > 0 and train_only.maker.plan.total == sum(kl.sizes("train"))


@pytest.mark.parametrize("source", ["folder", "coco", "wds", "cache-kl", "cache-vq"])
def test_a_model_trains_from_each_source(tmp_path, data, minilm, source):
    variant = "discrete-random" if source == "cache-vq" else "continuous-random"
    tok = data.vq if source == "cache-vq" else data.kl
    path = {"folder": data.folder, "coco": data.coco, "wds": data.wds[0].parent}.get(source, data.root / source)
    kind = "cache" if source.startswith("cache") else source
    cfg = tiny_config(variant, steps=3, batch_size=4, ckpt_every=100)
    cfg = apply_overrides(cfg, {"data.source": kind, "data.path": str(path), "data.flip": True})
    trainer = Trainer(cfg, tmp_path / "run", tok, minilm, show_progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    last = trainer.fit()
    assert trainer.step == 3 and math.isfinite(last["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_training_from_a_cache_resumes_exactly(tmp_path, data, minilm):
    def cfg():
        c = tiny_config(steps=4, batch_size=4, ckpt_every=2)
        return apply_overrides(c, {"data.source": "cache", "data.path": str(data.root / "cache-kl"), "data.flip": True})

    Trainer(cfg(), tmp_path / "a", data.kl, minilm, show_progress=False).fit()
    Trainer(cfg(), tmp_path / "b", data.kl, minilm, show_progress=False).fit(steps=2)
    Trainer(cfg(), tmp_path / "b", data.kl, minilm, resume=True, show_progress=False).fit()
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "a/latest/model.safetensors")),
        load_file(str(tmp_path / "b/latest/model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [r["loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "a")[2:] == losses(tmp_path / "b")[2:]


def test_validation_sets_from_a_held_out_split_or_a_val_path(data, minilm):
    cfg = tiny_config(val_size=100)
    cfg = apply_overrides(cfg, {"data.source": "cache", "data.path": str(data.root / "cache-kl")})
    held = sum(Cache(data.root / "cache-kl").sizes("val"))
    a, b = ValidationSet.build(cfg, data.kl, minilm), ValidationSet.build(cfg, data.kl, minilm)
    assert len(a) == held and torch.equal(a.tokens, b.tokens) and torch.equal(a.text_emb, b.text_emb)
    raw = apply_overrides(
        cfg, {"data.source": "folder", "data.path": str(data.folder), "data.val_path": str(data.folder)}
    )
    v = ValidationSet.build(raw, data.kl, minilm)
    # Every good pair of the folder, and the "bomb": 1.2 Mpx is within the default pixel limit.
    assert len(v) == Cache(data.root / "cache-kl").manifest["counts"]["written"] + 1
    from_cache = apply_overrides(raw, {"data.val_path": str(data.root / "cache-kl")})
    assert len(ValidationSet.build(from_cache, data.kl, minilm)) == len(v) - 1  # a cache: all its records
    with pytest.raises(ValueError, match="needs held-out pairs"):
        ValidationSet.build(apply_overrides(raw, {"data.val_path": None}), data.kl, minilm)
    no_split = apply_overrides(cfg, {"data.path": str(data.root / "cache-vq")})
    with pytest.raises(ValueError, match="no held-out records"):
        ValidationSet.build(no_split, data.vq, minilm)


def test_the_rendered_pool_that_trained_the_shipped_models_draws_from_it_and_resumes_exactly(tmp_path):
    """``data.pool`` (the shipped models' recipe, 100,000 scenes rendered once): every batch
    holds pool items, drawn by (rank, step), so a resumed run sees the batches it would have
    seen, and two ranks draw different ones."""
    from fluid.shapes.dataset import ShapesDataset

    pool = 24
    data_cfg = apply_overrides(tiny_config(), {"data.pool": pool}).data
    stream = TrainStream(data_cfg, 6)
    batches = [b for _, b in zip(range(8), stream)]
    drawn = [stream.indices(k) for k in range(8)]
    assert all(0 <= i < pool for idx in drawn for i in idx) and len({i for idx in drawn for i in idx}) > pool // 2
    for batch, idx in zip(batches, drawn):  # the images and captions of those train items (kept as uint8)
        images, captions = ShapesDataset("train", 32).batch(idx)
        assert isinstance(batch, RawBatch) and batch.captions == captions
        assert (batch.images - images).abs().max() <= 0.5 / 127.5 + 1e-6
    later = next(iter(TrainStream(data_cfg, 6, start=5)))
    assert torch.equal(later.images, batches[5].images) and later.captions == batches[5].captions
    assert TrainStream(data_cfg, 6, rank=1, world=2).indices(0) != TrainStream(data_cfg, 6, rank=0, world=2).indices(0)

    def cfg():
        return apply_overrides(tiny_config(steps=4, batch_size=4, ckpt_every=2), {"data.pool": pool})

    tok, enc = make_tokenizer("kl"), WordHashEncoder()
    Trainer(cfg(), tmp_path / "a", tok, enc, show_progress=False).fit()
    Trainer(cfg(), tmp_path / "b", tok, enc, show_progress=False).fit(steps=2)
    Trainer(cfg(), tmp_path / "b", tok, enc, resume=True, show_progress=False).fit()
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "a/latest/model.safetensors")),
        load_file(str(tmp_path / "b/latest/model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_an_encoded_shapes_pool_serves_posterior_samples_and_resumes_exactly(tmp_path, minilm, kind):
    """``data.pool_encoded``: the pool is encoded once; each batch is a fresh posterior sample
    of the pool items (or their codes), a function of the step, and training resumes exactly."""
    from fluid.data.encode import token_moments
    from fluid.shapes.dataset import ShapesDataset

    tok = make_tokenizer(kind)
    data_cfg = apply_overrides(tiny_config(), {"data.pool": 24, "data.pool_encoded": True}).data
    stream = iter(TrainStream(data_cfg, 5, tokenizer=tok, text_encoder=minilm))
    first, second = next(stream), next(stream)
    assert isinstance(first, EncodedBatch) and first.tokens.shape[0] == 5
    again = TrainStream(data_cfg, 5, start=1, tokenizer=tok, text_encoder=minilm)
    assert torch.equal(next(iter(again)).tokens, second.tokens)  # step 1 is step 1, resumed or not

    # The tokens are the tokenizer's own encoding of the pool items the step draws.
    raw = TrainStream(apply_overrides(tiny_config(), {"data.pool": 24}).data, 5)
    idx = raw.indices(0)
    images, captions = ShapesDataset("train", 32).batch(range(24), "cpu")
    images = images[idx]
    if kind == "vq":
        assert torch.equal(first.tokens, tok.encode(images))
    else:
        mean, logvar = token_moments(tok, images)
        z = (first.tokens - mean) / torch.exp(0.5 * logvar)  # standardised posterior draws
        assert z.abs().max() < 6 and 0.7 < z.std() < 1.3
    emb, _ = minilm([captions[i] for i in idx])
    torch.testing.assert_close(first.text_emb[:, : emb.shape[1]], emb)

    def cfg():
        c = tiny_config("continuous-random" if kind == "kl" else "discrete-random", steps=4, batch_size=4, ckpt_every=2)
        return apply_overrides(c, {"data.pool": 24, "data.pool_encoded": True})

    Trainer(cfg(), tmp_path / "a", tok, minilm, show_progress=False).fit()
    Trainer(cfg(), tmp_path / "b", tok, minilm, show_progress=False).fit(steps=2)
    Trainer(cfg(), tmp_path / "b", tok, minilm, resume=True, show_progress=False).fit()
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "a/latest/model.safetensors")),
        load_file(str(tmp_path / "b/latest/model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_encoded_pool_is_shared_through_a_cache_keyed_by_tokenizer_and_data(tmp_path, minilm, monkeypatch):
    """``pool_cache`` (``fluid train --pool-cache``): the second stream with the same tokenizer and pool reads the
    first one's encoding (and yields the same batches) instead of encoding again; another
    tokenizer, another pool size or a torn file means encoding again."""
    from fluid.data.stream import ShapesStream

    data_cfg = apply_overrides(tiny_config(), {"data.pool": 24, "data.pool_encoded": True}).data
    tok = make_tokenizer("kl")
    cache = tmp_path / "cache"
    first = ShapesStream(data_cfg, 5, tokenizer=tok, text_encoder=minilm, pool_cache=cache)
    assert len(list((tmp_path / "cache").glob("pool-*.safetensors"))) == 1

    calls = []
    real = ShapesStream._encode_pool
    monkeypatch.setattr(ShapesStream, "_encode_pool", lambda self, t, **kw: calls.append(t) or real(self, t, **kw))
    second = ShapesStream(data_cfg, 5, tokenizer=tok, text_encoder=minilm, pool_cache=cache)
    assert calls == []
    assert all(torch.equal(first.pool_tokens[k], second.pool_tokens[k]) for k in first.pool_tokens)
    assert torch.equal(next(iter(first)).tokens, next(iter(second)).tokens)

    other = make_tokenizer("kl")
    with torch.no_grad():
        next(other.parameters()).add_(0.5)  # other weights: another identity
    ShapesStream(data_cfg, 5, tokenizer=other, text_encoder=minilm, pool_cache=cache)
    bigger = apply_overrides(tiny_config(), {"data.pool": 32, "data.pool_encoded": True}).data
    ShapesStream(bigger, 5, tokenizer=tok, text_encoder=minilm, pool_cache=cache)
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("pool-*.safetensors"))) == 3

    path = tmp_path / "cache" / f"pool-{first.pool_key(tok)}.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # torn: encoded again and replaced
    third = ShapesStream(data_cfg, 5, tokenizer=tok, text_encoder=minilm, pool_cache=cache)
    assert len(calls) == 3
    assert all(torch.equal(first.pool_tokens[k], third.pool_tokens[k]) for k in first.pool_tokens)
    assert ShapesStream(data_cfg, 5, tokenizer=tok, text_encoder=minilm, pool_cache=cache) and len(calls) == 3


def test_an_encoded_pool_needs_a_pool_and_no_flips():
    from fluid.config import ConfigError

    for bad in ({"data.pool_encoded": True}, {"data.pool": 8, "data.pool_encoded": True, "data.flip": True}):
        with pytest.raises(ConfigError, match="pool_encoded"):
            apply_overrides(tiny_config(), bad)
