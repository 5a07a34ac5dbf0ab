"""The global batch, gradient accumulation, DDP and FSDP2 against one process, sharded
checkpoints resumed on another number of processes, activation checkpointing, and the text
side at scale. Several processes run on CPU with the gloo backend, as torchrun would start them.

Tolerances (fp32): processes add the same per-item gradients in another order, so weights
agree to float32 rounding amplified by AdamW over a few steps (atol 2e-5 on weights of
O(0.1), against updates of ~1e-3 per step); the validation loss, a sum of the same per-batch
losses, to 1e-6 relative.
"""

import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import WordHashEncoder, make_tokenizer, tiny_config

from fluid.config import ConfigError, get_preset

ATOL = 2e-5


def _full_state(model) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from fluid.checkpoint import unwrap
    from fluid.train.parallel import is_sharded

    if is_sharded(model):  # a collective: every rank gathers
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def _train(rank: int, world: int, init_file: str | None, spec: dict) -> None:
    """One process of a run: train ``spec['steps']``, rank 0 saves the full weights to ``spec['out']``."""
    from fluid.train.distributed import DistInfo
    from fluid.train.trainer import Trainer

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # fp32: bf16 matmuls round differently with the batch size, hiding what is compared.
        cfg = tiny_config(spec.get("variant", "continuous-random"), **{"precision": "fp32", **spec["train"]})
        for k, v in spec.get("model", {}).items():
            setattr(cfg.model, k, v)
        trainer = Trainer(
            cfg,
            spec["run"],
            make_tokenizer("kl" if cfg.model.token_type.value == "continuous" else "vq"),
            WordHashEncoder(),
            resume=spec.get("resume", False),
            dist=DistInfo(rank, world, 0, "cpu"),
            show_progress=False,
        )
        for steps in spec.get("stops", [None]):  # stopping at a checkpoint and going on changes nothing
            last = trainer.fit(steps)
        state = {
            "model": _full_state(trainer.model),
            "ema": _full_state(trainer.ema.model),
            "last": last,
            "step": trainer.step,
        }
        if rank == 0:
            torch.save(state, spec["out"])
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(world: int, tmp_path, name: str, **spec) -> dict:
    spec = {"run": str(tmp_path / name), "out": str(tmp_path / f"{name}.pt"), **spec}
    if world == 1:
        _train(0, 1, None, spec)
    else:
        mp.spawn(_train, args=(world, spec["out"] + ".init", spec), nprocs=world, join=True)  # a fresh store per run
    return torch.load(spec["out"], weights_only=False)


def initial_weights() -> dict[str, torch.Tensor]:
    from fluid.model import Generator

    cfg = tiny_config()
    torch.manual_seed(cfg.train.seed)  # as the trainer does
    return Generator(cfg.model, cfg.text).state_dict()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ----------------------------------------------------------------------------- the global batch


def test_the_global_batch_is_split_over_processes_and_micro_steps():
    from fluid.train.parallel import batch_split

    cfg = get_preset("fluid-166m").train
    assert batch_split(cfg, 8) == (256, 1)  # the paper's 2048 on 8 GPUs: 256 each
    cfg.micro_batch_size = 64
    assert batch_split(cfg, 8) == (64, 4) and batch_split(cfg, 1) == (64, 32)
    cfg.micro_batch_size = 48
    with pytest.raises(ValueError, match="cannot be split"):
        batch_split(cfg, 8)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        get_preset("debug", overrides={"train.micro_batch_size": -1})


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    # Discrete raster with no text dropout draws nothing at random and predicts every token,
    # so 4 micro-batches of 2 must give the update of one batch of 8.
    train = dict(steps=3, batch_size=8, grad_clip=0.05)  # a clip that acts: it must see the whole batch
    fixed = dict(variant="discrete-raster", model={"text_dropout": 0.0})
    big = run(1, tmp_path, "big", train=train, **fixed)
    acc = run(1, tmp_path, "acc", train={**train, "micro_batch_size": 2}, **fixed)
    assert max_diff(big["model"], acc["model"]) < ATOL
    assert abs(big["last"]["loss"] - acc["last"]["loss"]) < 1e-5
    # The comparison can fail: the same split with text dropout (random per micro-batch) differs.
    drop = run(1, tmp_path, "drop", train={**train, "micro_batch_size": 2}, variant="discrete-raster")
    assert max_diff(big["model"], drop["model"]) > 100 * ATOL


# ----------------------------------------------------------------------------- DDP / FSDP2 vs one process


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    return run(1, tmp, "ref", train=dict(steps=3, batch_size=8, micro_batch_size=2, val_every=3, val_size=130))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_give_the_weights_of_one(tmp_path, one_process, parallel):
    two = run(
        2,
        tmp_path,
        parallel,
        train=dict(steps=3, batch_size=8, micro_batch_size=2, val_every=3, val_size=130, parallel=parallel),
    )
    d = max_diff(one_process["model"], two["model"])
    assert d < ATOL, d
    assert max_diff(one_process["ema"], two["ema"]) < ATOL
    # Validation is sharded (3 batches over 2 ranks) and all-reduced: the loss of the whole set.
    assert two["last"]["val_loss"] == pytest.approx(one_process["last"]["val_loss"], rel=1e-6)
    # The run did train: the weights moved (3 warm-up steps of AdamW, ~1e-3) far beyond the tolerance.
    assert max_diff(initial_weights(), two["model"]) > 20 * ATOL


@pytest.mark.slow
def test_a_sharded_checkpoint_saved_on_4_processes_resumes_on_2(tmp_path):
    from safetensors.torch import load_file

    from fluid import checkpoint as ckpt

    train = dict(steps=4, batch_size=8, micro_batch_size=2, parallel="fsdp", ckpt_every=2)
    # 4 ranks x 1 micro-batch of 2, uninterrupted, with a checkpoint kept from step 2.
    straight = run(4, tmp_path, "straight", train={**train, "keep_checkpoints": 5}, stops=[2, 4])
    shutil.copytree(tmp_path / "straight" / "step-0000002", tmp_path / "cut" / "step-0000002")
    latest = ckpt.resolve(tmp_path / "cut")
    assert (latest / "sharded" / ".metadata").is_file() and not (latest / "model.safetensors").exists()
    # 2 ranks x 2 micro-batches of 2: the same global batches, resliced weights and AdamW state.
    resumed = run(2, tmp_path, "cut", train=train, resume=True, out=str(tmp_path / "resumed.pt"))
    assert resumed["step"] == 4
    assert max_diff(straight["model"], resumed["model"]) < ATOL
    assert max_diff(straight["ema"], resumed["ema"]) < ATOL
    # `fluid export` writes the single-file fp16 inference form from the shards.
    out = ckpt.export(tmp_path / "cut", tmp_path / "export")
    exported = load_file(str(out / "ema.safetensors"))
    assert all(v.dtype == torch.float16 for v in exported.values())
    assert max_diff(exported, {k: v.half() for k, v in resumed["ema"].items()}) == 0.0


# ----------------------------------------------------------------------------- activation checkpointing


def test_activation_checkpointing_gives_the_same_gradients_with_fewer_saved_activations():
    from torch.distributed._tools.mem_tracker import MemTracker

    from fluid.model import Generator
    from fluid.train.parallel import apply_activation_checkpointing

    cfg = tiny_config()
    cfg.model.timestep_multiplier = 1  # let the backbone, not the head, hold most activations

    def step(checkpointing: bool):
        torch.manual_seed(0)
        model = Generator(cfg.model, cfg.text)
        if checkpointing:
            apply_activation_checkpointing(model)
        g = torch.Generator().manual_seed(1)
        tokens, emb = torch.randn(16, 16, 16, generator=g), torch.randn(16, 32, 384, generator=g)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            loss = model(tokens, emb, torch.ones(16, 32, dtype=torch.bool), g)
            # What the forward pass leaves alive for the backward pass (PyTorch's own tracker
            # of live tensor storages, by kind).
            held = tracker.get_tracker_snapshot("current")[torch.device("cpu")]
            loss.backward()
        return [p.grad for p in model.parameters()], next(v for k, v in held.items() if "ACT" in str(k).upper())

    grads, act = step(False)
    grads_ac, act_ac = step(True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ac))
    assert act_ac < 0.7 * act, (act_ac, act)


# ----------------------------------------------------------------------------- text side, validation


def test_training_from_a_cache_never_builds_the_text_encoder(tmp_path, minilm, monkeypatch):
    from tiny_data import BOMB_PIXELS

    from fluid.data.images import ImagePolicy
    from fluid.data.prepare import PrepareOptions, prepare
    from fluid.data.sources import ShapesSource
    from fluid.train import text_side
    from fluid.train.trainer import Trainer

    kl = make_tokenizer("kl")
    prepare(
        ShapesSource(20, 32, shard_size=8),
        tmp_path / "cache",
        kl,
        minilm,
        ImagePolicy(resolution=32, max_pixels=BOMB_PIXELS),
        PrepareOptions(workers=0, batch_size=8, progress=False),
    )

    def refuse(*a, **k):
        raise AssertionError("the text encoder was built")

    monkeypatch.setattr(text_side, "build_text_encoder", refuse)
    cfg = tiny_config(steps=2, batch_size=4)
    cfg.data.source, cfg.data.path = "cache", str(tmp_path / "cache")
    encoder = text_side.training_text_encoder(cfg, "cpu")
    assert encoder.identity() == minilm.identity()
    Trainer(cfg, tmp_path / "run", kl, encoder, show_progress=False).fit()
    cfg.data.source = "shapes"  # a source of raw captions does need it
    with pytest.raises(AssertionError, match="was built"):
        text_side.training_text_encoder(cfg, "cpu")


def test_missing_validation_data_fails_at_start_up(tmp_path):
    from fluid.train.trainer import Trainer

    cfg = tiny_config(val_every=100)
    cfg.data.source, cfg.data.path = "wds", str(tmp_path / "shard-{000..009}.tar")
    with pytest.raises(ValueError, match="needs held-out pairs"):
        Trainer(cfg, tmp_path / "run", make_tokenizer("kl"), WordHashEncoder(), show_progress=False)
    assert not (tmp_path / "run").exists()  # nothing was started


# ----------------------------------------------------------------------------- memory at the paper's size


def test_fluid_10_5b_sharded_over_8_ranks_matches_the_docs_table():
    """fluid-10.5b built on the meta device and sharded by FSDP2 over a fake 8-rank mesh:
    rank 0's shards, x 5 fp32 copies (weights, gradients, two AdamW moments, EMA), are the
    'FSDP sharded' figure of docs/distributed.md."""
    import re
    from pathlib import Path

    from torch.testing._internal.distributed.fake_pg import FakeStore

    from fluid.model import Generator
    from fluid.train.distributed import DistInfo
    from fluid.train.memory import GIB, state_bytes
    from fluid.train.parallel import shard_fsdp

    cfg = get_preset("fluid-10.5b")
    with torch.device("meta"):
        model = Generator(cfg.model, cfg.text)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
    try:
        shard_fsdp(model, DistInfo(0, 8, 0, "cpu"), cfg.train.precision)
        local = sum(p.to_local().numel() for p in model.parameters())
    finally:
        dist.destroy_process_group()
    full = sum(p.numel() for p in model.parameters())
    assert full / 8 <= local < full / 8 * 1.01  # an eighth, plus the padding of dim 0
    assert state_bytes(cfg, 8)["fsdp_sharded"] == 20 * local
    doc = (Path(__file__).parents[1] / "docs" / "distributed.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| fluid-10.5b |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert re.fullmatch(r"[\d.]+ GiB", cells[3]) and float(cells[3].split()[0]) == round(20 * local / GIB, 2)
    assert float(cells[2].split()[0]) == round(24 * full / GIB, 2)  # DDP: 24 bytes per parameter


def _hang(rank: int, world: int, init_file: str, out: str) -> None:
    import time
    from datetime import timedelta

    from fluid.train.distributed import CollectiveTimeout, DistInfo, explain_timeouts

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=3)
    )
    if rank == 1:
        time.sleep(8)  # a hung rank: never joins the all-reduce
        os._exit(0)
    try:
        with explain_timeouts(3, DistInfo(rank, world, 0, "cpu")):
            dist.all_reduce(torch.ones(1))
    except CollectiveTimeout as e:
        with open(out, "w") as f:
            f.write(str(e))
    # As `fluid train` does: a group with a pending collective aborts in its destructor.
    os._exit(0)


@pytest.mark.slow
def test_a_hung_rank_fails_the_job_with_a_clear_message(tmp_path):
    out = tmp_path / "message.txt"
    mp.spawn(_hang, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    assert "train.dist_timeout_s=3" in out.read_text() and "hung or died" in out.read_text()


def test_webdataset_shards_from_pipes_and_urls(tmp_path):
    import io
    import tarfile

    from fluid.data.sources import WdsSource
    from fluid.data.tar import RemoteShard, expand_shards

    shard = tmp_path / "data-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, text in (("a", b"a red circle"), ("b", b"two blue squares")):
            for ext, data in (("png", b"not decoded here"), ("txt", text)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    local, piped = WdsSource(str(shard)), WdsSource(f"pipe:cat {shard}")
    assert isinstance(piped.shards[0], RemoteShard) and piped.sizes() == local.sizes() == [2]
    assert [r.caption for r in piped.read(0)] == [r.caption for r in local.read(0)]
    assert [r.caption for r in piped.read(0, start=1)] == [r.caption for r in local.read(0, start=1)]
    urls = expand_shards("https://host/train-{000..002}.tar")
    assert [u.url for u in urls] == [f"https://host/train-00{i}.tar" for i in range(3)]
    assert [u.name for u in urls] == [f"train-00{i}.tar" for i in range(3)]


def test_presets_pick_their_engine_and_the_text_encoder_its_dtype():
    from fluid.config import Parallel
    from fluid.train.text_side import encoder_dtype

    assert get_preset("fluid-166m").train.parallel == Parallel.DDP
    for name in ("fluid-3.1b", "fluid-10.5b"):
        t = get_preset(name).train
        assert t.parallel == Parallel.FSDP and t.activation_checkpointing
    cfg = get_preset("fluid-10.5b")
    assert encoder_dtype(cfg, "cuda") == torch.bfloat16 and encoder_dtype(cfg, "cpu") == torch.float32
    cfg.text.dtype = "bf16"
    assert encoder_dtype(cfg, "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="text.dtype"):
        get_preset("debug", overrides={"text.dtype": "fp16"})


def test_a_checkpoint_from_before_the_global_batch_names_the_batch_to_resume_with(tmp_path):
    from fluid import checkpoint as ckpt
    from fluid.train.trainer import Trainer

    tok, enc = make_tokenizer("kl"), WordHashEncoder()
    Trainer(tiny_config(steps=1, batch_size=4), tmp_path / "run", tok, enc, show_progress=False).fit()
    path = ckpt.resolve(tmp_path / "run") / "training_state.pt"
    state = torch.load(path, weights_only=True)
    del state["global_batch"]
    state["world"] = 2  # as written by 2 processes of 4 images each, when batch_size was per process
    torch.save(state, path)
    with pytest.raises(ValueError, match="train.batch_size=8"):
        Trainer(tiny_config(steps=2, batch_size=4), tmp_path / "run", tok, enc, resume=True, show_progress=False)
    assert (
        Trainer(tiny_config(steps=2, batch_size=8), tmp_path / "run", tok, enc, resume=True, show_progress=False).step
        == 1
    )
