"""`fluid prepare`: counts and skip reasons per source kind, cache contents, resume after a
crash and after a real SIGKILL (byte-for-byte), worker independence, --strict, and refusal of mismatched caches."""

import json
import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import make_tokenizer
from tiny_data import (
    BOMB_PIXELS,
    build_items,
    single_thread,  # noqa: F401  (autouse fixture)
    write_coco,
    write_folder,
    write_wds,
)

from fluid.config import DataConfig
from fluid.data.cache import Cache, CacheMismatchError
from fluid.data.encode import token_moments
from fluid.data.images import ImagePolicy, load_image, to_tensor
from fluid.data.outfolder import PrepareError
from fluid.data.prepare import PrepareOptions, prepare
from fluid.data.sources import CocoSource, FolderSource, ShapesSource, WdsSource
from fluid.data.stream import TrainStream
from fluid.tokenizers.autoencoder import KLAutoencoder

POLICY = ImagePolicy(resolution=32, max_pixels=BOMB_PIXELS)
FAST = dict(workers=0, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    items = build_items()
    return SimpleNamespace(
        items=items,
        folder=write_folder(root / "folder", items),
        coco=write_coco(root / "coco", items),
        wds=write_wds(root / "wds", items),
        root=root,
    )


@pytest.fixture(scope="module")
def kl():
    return make_tokenizer("kl")


def expected(items, kind: str):
    skips = Counter(it.skip for it in items if it.skip)
    fixes = Counter(f for it in items for f in it.fixes)
    extra = {"folder": 1, "coco": 1 + sum(it.name.startswith("good") for it in items), "wds": 0}[kind]
    seen = len(items) + extra
    skips["bad_metadata"] += 1  # folder: a cut-off line; coco: an unknown image; wds: a sample without image
    if kind == "wds":
        skips["missing_file"] -= 1  # a tar cannot hold a missing file ...
        skips["broken_shard"] += 1  # ... but it can be truncated: 2 good samples, then the break
        seen += 1 + 2
    return seen, +skips, fixes


@pytest.mark.parametrize("kind", ["folder", "coco", "wds"])
def test_counts_and_skip_reasons_per_source(tmp_path, raw, kl, minilm, kind):
    source = {
        "folder": lambda: FolderSource(raw.folder, shard_size=10),
        "coco": lambda: CocoSource(raw.coco, shard_size=10),
        "wds": lambda: WdsSource(raw.wds),
    }[kind]()
    m = prepare(source, tmp_path / "cache", kl, minilm, POLICY, PrepareOptions(**FAST)).manifest
    seen, skips, fixes = expected(raw.items, kind)
    assert m["counts"]["seen"] == seen
    assert m["skipped"] == dict(skips)
    assert m["fixed"] == dict(fixes)
    assert m["counts"]["written"] == seen - sum(skips.values()) == sum(s["count"] for s in m["shards"])
    report = [json.loads(line) for line in open(tmp_path / "cache" / m["report"])]
    assert Counter(r["reason"] for r in report if r["status"] == "skipped") == skips
    assert all(r["key"] and r["unit"] for r in report)
    assert m["tokenizer"]["identity"] == kl.identity() and m["text_encoder"]["identity"] == minilm.identity()
    assert m["resolution"] == 32 and m["views"] == ["image", "mirror"]


def test_cache_holds_the_tokenizer_moments_of_both_views_and_the_text(tmp_path, raw, kl, minilm):
    source = FolderSource(raw.folder, shard_size=6)
    prepare(source, tmp_path / "c", kl, minilm, POLICY, PrepareOptions(dtype="float32", **FAST))
    cache = Cache(tmp_path / "c")
    meta = cache.metadata(0)
    shard = cache.shard(0)
    images = to_tensor(np.stack([load_image(source.root / k.split(":", 1)[1], POLICY)[0] for k in meta["keys"]]))
    mean, logvar = token_moments(kl, images)
    mean_m, logvar_m = token_moments(kl, images.flip(-1))
    t = {name: shard.tensor(name) for name in ("mean", "logvar")}
    torch.testing.assert_close(t["mean"][:, 0], mean)
    torch.testing.assert_close(t["logvar"][:, 0], logvar)
    torch.testing.assert_close(t["mean"][:, 1], mean_m)
    # The mean is what the tokenizer's deterministic encode gives.
    torch.testing.assert_close(t["mean"][:, 0], kl.encode(images, sample=False), atol=1e-5, rtol=1e-5)
    for row, caption in enumerate(meta["captions"]):
        torch.testing.assert_close(shard.text(row), minilm.rows([caption])[0], atol=1e-5, rtol=1e-5)
    # Posterior samples from the moments have the tokenizer's per-token spread.
    assert isinstance(kl, KLAutoencoder)
    z, _ = kl.posterior(images)
    assert t["mean"].shape == (len(meta["keys"]), 2, kl.num_tokens(32), kl.token_dim) and z.shape[0] == len(
        meta["keys"]
    )


def test_vq_cache_holds_codes(tmp_path, raw, minilm):
    vq = make_tokenizer("vq")
    m = prepare(
        FolderSource(raw.folder, shard_size=50), tmp_path / "c", vq, minilm, POLICY, PrepareOptions(**FAST)
    ).manifest
    cache = Cache(tmp_path / "c")
    assert m["token_type"] == "discrete" and cache.shard(0).tensor("codes").dtype == torch.int16
    meta = cache.metadata(0)
    images = to_tensor(np.stack([load_image(raw.folder / k.split(":", 1)[1], POLICY)[0] for k in meta["keys"]]))
    codes = cache.shard(0).tensor("codes").long()
    assert torch.equal(codes[:, 0], vq.encode(images)) and torch.equal(codes[:, 1], vq.encode(images.flip(-1)))


def test_shapes_source_prepares_without_skips(tmp_path, kl, minilm):
    m = prepare(ShapesSource(20, 32, shard_size=8), tmp_path / "c", kl, minilm, POLICY, PrepareOptions(**FAST)).manifest
    assert m["counts"]["written"] == 20 and m["skipped"] == {} and len(m["shards"]) == 3


def test_a_crashed_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path, raw, kl, minilm):
    source = FolderSource(raw.folder, shard_size=5)
    full = prepare(source, tmp_path / "full", kl, minilm, POLICY, PrepareOptions(**FAST))
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare(source, part, kl, minilm, POLICY, PrepareOptions(**FAST), _fail_after=2)
    assert not (part / "manifest.json").exists()
    # What a kill can leave besides finished shards: a half-written temporary file, and a shard
    # renamed into place whose stats file (the completion mark) was never written.
    (part / "shard-000003.safetensors.tmp").write_bytes(b"half a shard")
    (part / "shard-000002.safetensors").write_bytes(b"a shard without its stats file")
    with pytest.raises(ValueError, match="not finished"):
        Cache(part)
    resumed = prepare(source, part, kl, minilm, POLICY, PrepareOptions(**FAST))
    assert resumed.records == full.records - 10  # only the 3 unfinished shards were redone
    files = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert files == sorted(p.name for p in part.iterdir())
    for name in files:
        assert (tmp_path / "full" / name).read_bytes() == (part / name).read_bytes(), name
    # A finished cache is not redone.
    assert prepare(source, part, kl, minilm, POLICY, PrepareOptions(**FAST)).records == 0


def test_worker_processes_give_the_same_cache(tmp_path, raw, kl, minilm):
    source = WdsSource(raw.wds)
    prepare(source, tmp_path / "a", kl, minilm, POLICY, PrepareOptions(**FAST))
    prepare(source, tmp_path / "b", kl, minilm, POLICY, PrepareOptions(**{**FAST, "workers": 2}))
    for p in (tmp_path / "a").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def _same_files(a, b):
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ranks_prepare_their_units_and_the_last_to_finish_writes_the_manifest(tmp_path, raw, kl, minilm):
    """Two processes (here one after the other) over one folder: rank r prepares units
    u % 2 == r; the first to end leaves the manifest to the last, and the cache is the one
    a single process writes."""
    source = WdsSource(raw.wds)  # 5 tars, the last one truncated
    prepare(source, tmp_path / "one", kl, minilm, POLICY, PrepareOptions(**FAST))
    many = tmp_path / "many"
    first = prepare(source, many, kl, minilm, POLICY, PrepareOptions(rank=1, world=2, **FAST))
    assert first.manifest is None and first.units == 2 and first.remaining == [0, 2, 4]
    assert not (many / "manifest.json").exists() and not (many / "report.jsonl").exists()
    assert sorted(p.name for p in many.glob("shard-*.json")) == ["shard-000001.json", "shard-000003.json"]
    last = prepare(source, many, kl, minilm, POLICY, PrepareOptions(rank=0, world=2, **FAST))
    assert (
        last.remaining == [] and last.units == 3 and last.manifest == json.loads((many / "manifest.json").read_text())
    )
    _same_files(tmp_path / "one", many)
    # Rerun: nothing to do, with any split; a single process finishes a split run too.
    assert prepare(source, many, kl, minilm, POLICY, PrepareOptions(rank=1, world=2, **FAST)).records == 0
    (many / "manifest.json").unlink()
    (many / "shard-000004.json").unlink()  # as if rank 0 had been killed before its last unit
    resumed = prepare(source, many, kl, minilm, POLICY, PrepareOptions(**FAST))
    assert resumed.records == 3 and resumed.manifest is not None
    _same_files(tmp_path / "one", many)


def test_processes_share_one_plan_and_one_with_other_settings_is_refused(tmp_path, raw, kl, minilm):
    from fluid.data.outfolder import _create_plan, open_folder

    source = FolderSource(raw.folder, shard_size=10)
    out = tmp_path / "c"
    prepare(source, out, kl, minilm, POLICY, PrepareOptions(rank=0, world=3, **FAST))
    plan = json.loads((out / "plan.json").read_text())
    with pytest.raises(PrepareError, match="another preparation.*dtype"):
        prepare(source, out, kl, minilm, POLICY, PrepareOptions(rank=1, world=3, dtype="float32", **FAST))
    with pytest.raises(PrepareError, match="another preparation.*val_fraction"):
        prepare(source, out, kl, minilm, POLICY, PrepareOptions(rank=2, world=3, val_fraction=0.5, **FAST))
    assert json.loads((out / "plan.json").read_text()) == plan  # untouched
    # Processes starting together: plan.json is created once, never replaced; the others compare.
    race = tmp_path / "race"
    race.mkdir()
    (race / "plan.json.0badc0de.tmp").write_text("{")  # another process writing its plan: not a foreign file
    assert open_folder(race, plan, overwrite=False) is False
    assert _create_plan(race, {**plan, "dtype": "float32"}) is False  # the later one does not replace it
    assert json.loads((race / "plan.json").read_text()) == plan
    assert open_folder(race, plan, overwrite=False) is False
    with pytest.raises(PrepareError, match="another preparation.*dtype"):
        open_folder(race, {**plan, "dtype": "float32"}, overwrite=False)


def test_bad_rank_and_world_values_are_refused_clearly(tmp_path, raw, kl, minilm, capsys):
    from fluid.cli import main
    from fluid.data.outfolder import process_rank

    for rank, world, message in (
        (2, 2, r"rank must be .* in \[0, 1\] for world 2, not 2"),
        (-1, 2, "rank must be"),
        (0, 0, "world must be a whole number >= 1"),
        ("1", 2, "rank must be a whole number"),
    ):
        with pytest.raises(ValueError, match=message):
            PrepareOptions(rank=rank, world=world)
    with pytest.raises(ValueError, match="overwrite cannot be combined with world > 1"):
        PrepareOptions(rank=0, world=2, overwrite=True)
    assert process_rank(environ={}) == (0, 1)
    assert process_rank(environ={"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)  # torchrun
    assert process_rank(1, 2, environ={"RANK": "3", "WORLD_SIZE": "4"}) == (1, 2)  # the options win
    for env, args, message in (
        ({"RANK": "1"}, (), "needs the number of processes"),
        ({}, (None, 4), "needs this process's rank"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, (), "RANK='x' is not a whole number"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, (), r"in \[0, 3\] for world 4"),
    ):
        with pytest.raises(ValueError, match=message):
            process_rank(*args, environ=env)
    assert (
        main(
            [
                "prepare",
                "--preset",
                "debug",
                "--source",
                "folder",
                "--path",
                str(raw.folder),
                "--out",
                str(tmp_path / "c"),
                "--rank",
                "2",
                "--world",
                "2",
            ]
        )
        == 2
    )
    assert "rank must be a whole number in [0, 1] for world 2, not 2" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cli_ranks_started_together_write_the_cache_of_one_process(tmp_path, kl, minilm):
    """Two `fluid prepare` processes started at once on one folder (one given --rank/--world,
    the other torchrun's RANK/WORLD_SIZE) race to create the plan, split the units, and the
    last to finish writes the manifest: the files are those of a single process."""
    import os
    import subprocess
    import sys

    from fluid.shapes.scenes import all_captions
    from fluid.text.cache import save_embeddings

    kl.save(tmp_path / "tok")
    emb = save_embeddings(minilm, all_captions(), tmp_path / "emb.safetensors")

    def command(out, *extra):
        return [
            sys.executable,
            "-m",
            "fluid.cli",
            "prepare",
            "--preset",
            "debug",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--set",
            "data.resolution=32",
            f"text.encoder={emb}",
            "--source",
            "shapes",
            "--count",
            "40",
            "--shard-size",
            "8",
            "--workers",
            "0",
            "--out",
            str(out),
            *extra,
        ]

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            command(tmp_path / "many", "--rank", "0", "--world", "2"),
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
        subprocess.Popen(
            command(tmp_path / "many"),
            env={**env, "RANK": "1", "WORLD_SIZE": "2"},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
    ]
    subprocess.run(command(tmp_path / "one"), check=True, env=env, capture_output=True)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum("written" in s and s.get("done") is not False for s in summaries) >= 1  # the last one: the full summary
    for (_out, err), s in zip(outs, summaries):
        if s.get("done") is False:
            assert "finished its" in err and "remain" in err and "manifest.json" in err
    _same_files(tmp_path / "one", tmp_path / "many")


def test_strict_stops_at_the_first_bad_record(tmp_path, raw, kl, minilm):
    with pytest.raises(PrepareError, match="line4.*bad_metadata.*--strict"):
        prepare(FolderSource(raw.folder), tmp_path / "c", kl, minilm, POLICY, PrepareOptions(strict=True, **FAST))
    clean = [it for it in raw.items if not it.skip]
    m = prepare(
        FolderSource(write_folder(tmp_path / "clean", clean, bad_line=False)),
        tmp_path / "c2",
        kl,
        minilm,
        POLICY,
        PrepareOptions(strict=True, **FAST),
    ).manifest
    assert m["counts"]["written"] == len(clean) and m["counts"]["skipped"] == 0


def test_mismatched_caches_and_folders_are_refused(tmp_path, raw, kl, minilm):
    source = FolderSource(raw.folder, shard_size=50)
    prepare(source, tmp_path / "c", kl, minilm, POLICY, PrepareOptions(**FAST))
    cache = Cache(tmp_path / "c")
    cache.check(kl, minilm, 32)
    with pytest.raises(CacheMismatchError, match="tokenizer fluid-kl-f4:.*but this run uses"):
        cache.check(make_tokenizer("kl", seed=1))
    with pytest.raises(CacheMismatchError, match="text embeddings come from minilm"):
        cache.check(text_encoder=SimpleNamespace(identity=lambda: "t5-0123456789ab"))
    with pytest.raises(CacheMismatchError, match="prepared at 32px"):
        cache.check(resolution=64)
    cfg = DataConfig(source="cache", path=str(tmp_path / "c"), resolution=32)
    with pytest.raises(CacheMismatchError, match="Prepare a new cache"):
        TrainStream(cfg, 4, tokenizer=make_tokenizer("vq"))
    # Another preparation in the same folder is refused unless asked to overwrite.
    other = PrepareOptions(dtype="float32", **FAST)
    with pytest.raises(PrepareError, match="another preparation.*dtype"):
        prepare(source, tmp_path / "c", kl, minilm, POLICY, other)
    prepare(source, tmp_path / "c", kl, minilm, POLICY, PrepareOptions(dtype="float32", overwrite=True, **FAST))
    assert Cache(tmp_path / "c").manifest["dtype"] == "float32"
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata" / "precious.txt").write_text("keep me")
    with pytest.raises(PrepareError, match="not empty"):
        prepare(source, tmp_path / "userdata", kl, minilm, POLICY, PrepareOptions(**FAST))


def test_a_resumed_preparation_must_use_the_same_precision(tmp_path, raw, kl, minilm):
    source = FolderSource(raw.folder, shard_size=5)
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare(source, tmp_path / "c", kl, minilm, POLICY, PrepareOptions(**FAST), _fail_after=1)
    with pytest.raises(PrepareError, match="another preparation.*precision"):
        prepare(source, tmp_path / "c", kl, minilm, POLICY, PrepareOptions(precision="bf16", **FAST))


def test_cache_files_are_as_readable_as_any_other_file(tmp_path, raw, kl, minilm):
    import os
    import stat

    old = os.umask(0o022)
    try:
        prepare(FolderSource(raw.folder, shard_size=50), tmp_path / "c", kl, minilm, POLICY, PrepareOptions(**FAST))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_held_out_split(tmp_path, raw, kl, minilm):
    m = prepare(
        CocoSource(raw.coco, shard_size=7), tmp_path / "c", kl, minilm, POLICY, PrepareOptions(val_fraction=0.3, **FAST)
    ).manifest
    c = m["counts"]
    assert 0 < c["val"] < c["written"] and c["train"] + c["val"] == c["written"]
    cache = Cache(tmp_path / "c")
    assert sum(cache.sizes("train")) == c["train"] and sum(cache.sizes("val")) == c["val"]


def test_cli_prepare_then_train_from_the_cache(tmp_path, raw, kl, minilm, capsys):
    from fluid.cli import main
    from fluid.data.records import RecordError, clean_caption
    from fluid.text.cache import save_embeddings

    kl.save(tmp_path / "tok")
    captions = []
    for it in raw.items:
        try:
            captions.append(clean_caption(it.caption if isinstance(it.caption, (str, bytes)) else None))
        except RecordError:
            pass
    with warnings.catch_warnings():  # the long caption's truncation warning
        warnings.simplefilter("ignore")
        emb = save_embeddings(minilm, captions, tmp_path / "emb.safetensors")  # no encoder to load in the CLI
    common = [
        "--preset",
        "debug",
        "--tokenizer",
        str(tmp_path / "tok"),
        "--set",
        "data.resolution=32",
        f"text.encoder={emb}",
    ]
    args = [
        "prepare",
        *common,
        "--source",
        "folder",
        "--path",
        str(raw.folder),
        "--out",
        str(tmp_path / "cache"),
        "--workers",
        "1",
        "--max-pixels",
        str(BOMB_PIXELS),
        "--shard-size",
        "9",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seen, skips, _ = expected(raw.items, "folder")
    assert summary["seen"] == seen and summary["skipped_by_reason"] == dict(skips) and summary["images_per_s"] > 0
    assert (
        main(
            [
                "prepare",
                *common,
                "--source",
                "folder",
                "--path",
                str(raw.folder),
                "--out",
                str(tmp_path / "strict"),
                "--workers",
                "0",
                "--strict",
            ]
        )
        == 2
    )
    assert "--strict stops" in capsys.readouterr().err
    run = [
        "train",
        *common,
        "data.source=cache",
        f"data.path={tmp_path / 'cache'}",
        "train.val_every=0",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(run) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_moments_of_a_diffusers_vae_match_its_encode():
    from diffusers import AutoencoderKL

    from fluid.data.encode import sample_tokens
    from fluid.tokenizers.adapters import DiffusersKLTokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    tok = DiffusersKLTokenizer(vae.eval(), patch_size=2)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    mean, logvar = token_moments(tok, images)
    torch.testing.assert_close(mean, tok.encode(images, sample=False))
    # Many posterior samples from the moments have the spread of the tokenizer's own samples.
    ours = torch.stack([sample_tokens(mean, logvar, torch.Generator().manual_seed(s)) for s in range(200)])
    theirs = torch.stack([tok.encode(images, torch.Generator().manual_seed(1000 + s)) for s in range(200)])
    torch.testing.assert_close(ours.std(0), theirs.std(0), rtol=0.25, atol=1e-3)


def test_sigkill_mid_run_then_restart_gives_the_uninterrupted_cache(tmp_path, kl, minilm):
    """A real kill: SIGKILL to the whole `fluid prepare` process group (workers included)
    once some shards are finished, then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fluid.shapes.scenes import all_captions
    from fluid.text.cache import save_embeddings

    kl.save(tmp_path / "tok")
    emb = save_embeddings(minilm, all_captions(), tmp_path / "emb.safetensors")

    def command(out):
        return [
            sys.executable,
            "-m",
            "fluid.cli",
            "prepare",
            "--preset",
            "debug",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--set",
            "data.resolution=32",
            f"text.encoder={emb}",
            "--source",
            "shapes",
            "--count",
            "400",
            "--shard-size",
            "8",
            "--workers",
            "1",
            "--out",
            str(out),
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "full"), check=True, env=env, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(
        command(part), env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(part.glob("shard-*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (part / "manifest.json").exists()
    subprocess.run(command(part), check=True, env=env, capture_output=True)
    files = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert files == sorted(p.name for p in part.iterdir())
    for name in files:
        assert (tmp_path / "full" / name).read_bytes() == (part / name).read_bytes(), name
