"""Training: the loss falls, checkpoints round-trip, resume is exact, bad folders fail clearly."""

import json
import os
import shutil

import pytest
import torch
from helpers import WordHashEncoder, make_tokenizer, tiny_config
from safetensors.torch import load_file

from fluid import checkpoint as ckpt
from fluid.config import VARIANTS, LRSchedule, SampleConfig
from fluid.sample.generate import generate
from fluid.sample.pipeline import FluidPipeline
from fluid.sample.rng import ImageRNG
from fluid.train.ema import EMA
from fluid.train.trainer import Trainer


def read_metrics(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_model_loss_falls(tmp_path, minilm, variant):
    kind = "kl" if variant.startswith("continuous") else "vq"
    # Constant LR for every variant: the discrete default (cosine) decays to 0 within the run.
    cfg = tiny_config(variant, steps=120, batch_size=16, lr=2e-3, ckpt_every=1000, lr_schedule=LRSchedule.CONSTANT)
    Trainer(cfg, tmp_path, make_tokenizer(kind), minilm, show_progress=False).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, minilm):
    tok = make_tokenizer("kl")
    cfg = tiny_config(steps=8, batch_size=4, ckpt_every=4, val_every=4, val_size=8)
    Trainer(cfg, tmp_path / "a", tok, minilm, show_progress=False).fit()
    Trainer(
        tiny_config(steps=8, batch_size=4, ckpt_every=4, val_every=4, val_size=8),
        tmp_path / "b",
        tok,
        minilm,
        show_progress=False,
    ).fit(steps=4)
    resumed = Trainer(
        tiny_config(steps=8, batch_size=4, ckpt_every=4, val_every=4, val_size=8),
        tmp_path / "b",
        tok,
        minilm,
        resume=True,
        show_progress=False,
    )
    assert resumed.step == 4
    resumed.fit()
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(tmp_path / "a/latest" / name)), load_file(str(tmp_path / "b/latest" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    val = lambda run: [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]  # noqa: E731
    assert val(tmp_path / "a") == val(tmp_path / "b")


@pytest.mark.parametrize("variant", ["continuous-random", "discrete-raster"])
def test_checkpoint_round_trip_gives_identical_samples(tmp_path, minilm, variant):
    tok = make_tokenizer("kl" if variant.startswith("continuous") else "vq")
    trainer = Trainer(
        tiny_config(variant, steps=3, batch_size=4, ckpt_every=3), tmp_path, tok, minilm, show_progress=False
    )
    trainer.fit()
    pipe = FluidPipeline.from_pretrained(tmp_path, tokenizer=tok, text_encoder=minilm, device="cpu")
    emb, mask = minilm(["a red circle", ""])
    scfg = SampleConfig(steps=4, cfg=2.0)
    a = generate(trainer.ema.model.eval(), emb, mask, scfg, ImageRNG.for_images(0, range(len(emb))), head_steps=4)
    b = generate(pipe.model, emb, mask, scfg, ImageRNG.for_images(0, range(len(emb))), head_steps=4)
    assert torch.equal(a, b)
    images = pipe(["a red circle"], seed=0, steps=4, head_steps=4)
    assert images[0].size == (32, 32)
    if not pipe.model.continuous:
        # The output layer is still the loaded input embedding, not a copy of it.
        h = torch.randn(2, pipe.model.cfg.width)
        before = pipe.model.logits(h)
        with torch.no_grad():
            pipe.model.token_in.weight[3] += 1.0
        assert not torch.allclose(before[:, 3], pipe.model.logits(h)[:, 3])


def test_checkpoint_rotation_keeps_the_newest_and_latest_resumes(tmp_path):
    """``train.keep_checkpoints``: only the newest k step folders stay, ``latest`` names the
    newest, and a run resumes from it; 0 keeps every checkpoint."""
    tok, enc = make_tokenizer("kl"), WordHashEncoder()
    run = tmp_path / "run"
    Trainer(
        tiny_config(steps=5, batch_size=2, ckpt_every=1, keep_checkpoints=2), run, tok, enc, show_progress=False
    ).fit()
    assert sorted(p.name for p in run.glob("step-*")) == ["step-0000004", "step-0000005"]
    assert ckpt.resolve(run).name == "step-0000005"
    resumed = Trainer(
        tiny_config(steps=6, batch_size=2, ckpt_every=1, keep_checkpoints=2),
        run,
        tok,
        enc,
        resume=True,
        show_progress=False,
    )
    assert resumed.step == 5
    resumed.fit()
    assert sorted(p.name for p in run.glob("step-*")) == ["step-0000005", "step-0000006"]
    Trainer(
        tiny_config(steps=3, batch_size=2, ckpt_every=1, keep_checkpoints=0),
        tmp_path / "all",
        tok,
        enc,
        show_progress=False,
    ).fit()
    assert len(list((tmp_path / "all").glob("step-*"))) == 3


def test_metrics_log_holds_what_the_readme_lists(tmp_path):
    """metrics.jsonl: loss, learning rate, gradient norm, images/s and EMA decay per logged
    step; validation loss of the EMA and of the raw weights every ``train.val_every`` steps."""
    cfg = tiny_config(steps=4, batch_size=2, ckpt_every=4, val_every=2, val_size=4)
    trainer = Trainer(cfg, tmp_path, make_tokenizer("kl"), WordHashEncoder(), show_progress=False)
    trainer.fit()
    rows = read_metrics(tmp_path)
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert r["loss"] > 0 and r["grad_norm"] > 0 and r["images_per_s"] > 0
        assert r["ema_decay"] == pytest.approx(trainer.ema.decay_at(r["step"]))
    assert [r["lr"] for r in train] == sorted(r["lr"] for r in train) and train[0]["lr"] < train[-1]["lr"]  # warm-up
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(r["val_loss"] > 0 and r["val_loss_raw"] > 0 and r["val_loss"] != r["val_loss_raw"] for r in val)


def test_precision_auto_is_bf16_only_where_bf16_is_native(monkeypatch):
    from fluid.config import Precision
    from fluid.runtime import resolve_precision

    assert resolve_precision("auto", "cuda") == Precision.BF16
    assert resolve_precision("fp32", "cuda") == Precision.FP32 and resolve_precision("bf16", "cpu") == Precision.BF16
    for amx, avx512_bf16, expected in [
        (False, False, Precision.FP32),
        (True, False, Precision.BF16),
        (False, True, Precision.BF16),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert resolve_precision("auto", "cpu") == expected


def test_sampling_auto_precision_is_fp32_on_cpus_and_bf16_on_gpus(monkeypatch):
    from fluid.config import Precision
    from fluid.runtime import sampling_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # training would pick bf16 here
    assert sampling_precision("auto", "cpu") == Precision.FP32
    assert sampling_precision("bf16", "cpu") == Precision.BF16 and sampling_precision("fp32", "cuda") == Precision.FP32
    assert sampling_precision("auto", "cuda") == Precision.BF16


def test_mkl_strict_mode_is_set_on_intel_cpus_only_and_never_over_the_users_choice(monkeypatch):
    import fluid

    for vendor, flags, expected in [
        ("GenuineIntel", "fma avx2 avx512f avx512bw avx512vl avx512dq", "AVX512,STRICT"),
        ("GenuineIntel", "fma avx2", "AVX2,STRICT"),
        ("GenuineIntel", "sse4_2", None),
        ("AuthenticAMD", "fma avx2 avx512f avx512bw avx512vl avx512dq", None),
    ]:
        info = f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu {flags}\n"
        monkeypatch.delenv("MKL_CBWR", raising=False)
        assert fluid._strict_mkl_on_intel(info) == expected and os.environ.get("MKL_CBWR") == expected
        monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
        assert fluid._strict_mkl_on_intel(info) is None and os.environ.get("MKL_CBWR") == "COMPATIBLE"


def test_broken_checkpoints_fail_with_clear_errors(tmp_path, minilm):
    tok = make_tokenizer("kl")
    Trainer(tiny_config(steps=2, batch_size=2, ckpt_every=2), tmp_path / "run", tok, minilm, show_progress=False).fit()
    good = ckpt.resolve(tmp_path / "run")
    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "ema.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing ema.safetensors"):
        FluidPipeline.from_pretrained(missing, tokenizer=tok, text_encoder=minilm, device="cpu")
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["model"]["width"] = 96
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="does not match config.json"):
        FluidPipeline.from_pretrained(wrong, tokenizer=tok, text_encoder=minilm, device="cpu")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve(tmp_path / "nowhere")
    # A run folder is refused as a fresh output (nothing gets overwritten) ...
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config(steps=2, batch_size=2), tmp_path / "run", tok, minilm, show_progress=False)


def test_ema_warmup_follows_the_weights_early():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**7) == 0.9999
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(200):
        ema.update(model, step)
    # With warm-up the average has all but forgotten the initial weights after 200 steps.
    assert torch.allclose(ema.model.weight, torch.ones(2, 2), atol=0.06)


def test_steps_is_the_runs_length_and_resuming_longer_says_when_the_schedule_changes(tmp_path, minilm, capsys):
    """`--steps 2` then `--steps 3 --resume` equals an uninterrupted 3-step run under the
    constant schedule (continuous variants); under the cosine one (discrete) it cannot, and
    the command says so."""
    from fluid.cli import main
    from fluid.shapes.scenes import all_captions
    from fluid.text.cache import save_embeddings

    emb = save_embeddings(minilm, all_captions(), tmp_path / "emb.safetensors")
    for kind, variant in (("kl", "continuous-random"), ("vq", "discrete-raster")):
        make_tokenizer(kind).save(tmp_path / kind)

        def train(run, *extra, variant=variant, kind=kind):
            return main(
                [
                    "train",
                    "--preset",
                    "debug",
                    "--variant",
                    variant,
                    "--tokenizer",
                    str(tmp_path / kind),
                    "--set",
                    "data.resolution=32",
                    f"text.encoder={emb}",
                    "train.val_every=0",
                    "train.warmup_steps=1",
                    "--batch-size",
                    "2",
                    "--out",
                    str(tmp_path / run),
                    *extra,
                ]
            )

        assert train(f"{kind}-once", "--steps", "3") == 0
        assert train(f"{kind}-twice", "--steps", "2") == 0
        capsys.readouterr()
        assert main(["train", "--out", str(tmp_path / f"{kind}-twice"), "--resume", "--steps", "3"]) == 0
        note = "changes the cosine learning-rate schedule" in capsys.readouterr().err
        a = load_file(str(tmp_path / f"{kind}-once" / "latest" / "model.safetensors"))
        b = load_file(str(tmp_path / f"{kind}-twice" / "latest" / "model.safetensors"))
        same = all(torch.equal(a[k], b[k]) for k in a)
        assert (note, same) == ((False, True) if kind == "kl" else (True, False)), variant
