"""The shipped models: they load, reconstruct, follow prompts, and the CLI uses them."""

import json

import pytest
import torch

from fluid.assets import generator_path, tokenizer_path
from fluid.checkpoint import read_meta
from fluid.cli import main
from fluid.config import VARIANTS, TokenType
from fluid.sample.pipeline import FluidPipeline
from fluid.shapes.dataset import ShapesDataset
from fluid.shapes.eval.classifier import load_shape_classifier
from fluid.shapes.eval.detector import detect, score
from fluid.tokenizers.load import load_tokenizer


def psnr(a, b):
    mse = ((a.clamp(-1, 1) - b) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse)).mean().item()


# Held-out PSNR bounds: measured 34.6 dB (KL) and 30.2 dB (VQ) on 512 validation images
# when the tokenizers were trained (docs/shipped-models.md); these are 2 dB below.
@pytest.mark.parametrize("token_type,bound", [(TokenType.CONTINUOUS, 32.6), (TokenType.DISCRETE, 28.2)])
def test_shipped_tokenizers_reconstruct_held_out_images(token_type, bound):
    tok = load_tokenizer(tokenizer_path(token_type))
    images, _ = ShapesDataset("test", 64).batch(range(64))
    with torch.no_grad():
        recon = tok.decode(tok.encode(images, sample=False))
    assert psnr(recon, images) > bound


@pytest.mark.parametrize("token_type", [TokenType.CONTINUOUS, TokenType.DISCRETE])
def test_shipped_tokenizer_reports_name_the_shipped_weights(token_type):
    folder = tokenizer_path(token_type)
    report = json.loads((folder / "eval.json").read_text())
    assert report["tokenizer"] == load_tokenizer(folder).identity() != report["trained_identity"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_generators_name_the_tokenizer_they_were_trained_with(variant):
    folder = generator_path(variant)
    token_type = TokenType(variant.split("-")[0])
    assert read_meta(folder)["tokenizer"] == load_tokenizer(tokenizer_path(token_type)).identity()


def test_shipped_fluid_draws_the_asked_colour_and_kind(minilm):
    # 4 colour prompts x 2 seeds; the detector reads kind and colour back, with the learned
    # kind reader that ShapesEval uses for decoded images.
    pipe = FluidPipeline.from_pretrained(variant="continuous-random", device="cpu", text_encoder=minilm)
    reader = load_shape_classifier()
    prompts = ["a red square", "a blue circle", "a yellow triangle", "a green cross"]
    hits = [
        score(p, detect(img, classifier=reader))
        for seed in (0, 1)
        for p, img in zip(prompts, pipe(prompts, seed=seed, output_type="tensor"))
    ]
    assert sum(hits) >= 6, hits


def test_cli_sample_writes_images_grid_and_json(tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--variant",
                "discrete-raster",
                "--prompt",
                "a red square",
                "--prompt",
                "",
                "--seeds",
                "0",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "samples.json").read_text())
    assert len(record["images"]) == 4 and (out / "grid.png").exists()
    assert all((out / r["file"]).exists() for r in record["images"])
    # Same prompt and seed, same image (the seed and the image's index fix its random draws).
    assert (
        main(
            [
                "sample",
                "--variant",
                "discrete-raster",
                "--prompt",
                "a red square",
                "--prompt",
                "",
                "--seeds",
                "0",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    assert (out / "000-seed0.png").read_bytes() == (tmp_path / "t" / "000-seed0.png").read_bytes()


def test_cli_sample_rejects_a_broken_checkpoint(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert (
        main(["sample", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "a circle", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "missing ema.safetensors" in capsys.readouterr().err


def test_shipped_fluid_follows_the_prompt_not_chance(minilm):
    """The colour test above fails with the prompts ignored: the same images drawn for an
    empty prompt (the learned null condition) score at most a quarter of the prompted ones."""
    pipe = FluidPipeline.from_pretrained(variant="continuous-random", device="cpu", text_encoder=minilm)
    reader = load_shape_classifier()
    prompts = ["a red square", "a blue circle", "a yellow triangle", "a green cross"]
    ignored = [
        score(p, detect(img, classifier=reader))
        for seed in (0, 1)
        for p, img in zip(prompts, pipe([""] * 4, seed=seed, output_type="tensor"))
    ]
    assert sum(ignored) <= 2, ignored


def test_shipped_model_beats_noise_and_prompt_free_samplers_on_shapes_eval(minilm):
    """ShapesEval with teeth: the shipped discrete-raster model against images of noise and
    against its own samples for prompts it was not given, same prompts and seeds."""
    from fluid.shapes.eval.evaluation import ShapesEval, pipeline_source

    pipe = FluidPipeline.from_pretrained(variant="discrete-raster", device="cpu", text_encoder=minilm)
    pipe.cfg.train.precision = "fp32"
    evaluation = ShapesEval(4, [0, 1])
    model, _ = evaluation(pipeline_source(pipe), progress=False)
    noise, _ = evaluation(
        lambda prompts, seed: (
            torch.rand(len(prompts), 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        ),
        progress=False,
    )
    unprompted, _ = evaluation(lambda prompts, seed: pipeline_source(pipe)([""] * len(prompts), seed), progress=False)
    assert noise.overall <= 0.05 and model.overall >= noise.overall + 0.5, (model.overall, noise.overall)
    assert model.overall >= unprompted.overall + 0.3, (model.overall, unprompted.overall)


def test_shipped_fluid_needs_its_guidance_on_two_object_prompts(minilm):
    """Guidance with teeth. Single objects and colours come out right without guidance, so
    the colour test above passes with CFG off; prompts that relate two objects (position,
    colour attribution) do not: with CFG (the shipped linear ramp to 3) the shipped Fluid
    scored 0.44 on these 16 images, with guidance off (cfg 1) 0.00, same prompts and seeds,
    fp32 (seeds 2-3 gave 0.19 vs 0.06). Fails with guidance off, ignored, or of the wrong sign."""
    from fluid.shapes.eval.evaluation import ShapesEval, pipeline_source

    pipe = FluidPipeline.from_pretrained(variant="continuous-random", device="cpu", text_encoder=minilm)
    pipe.cfg.train.precision = "fp32"  # the same draws on CPUs with and without native bf16
    evaluation = ShapesEval(4, [0, 1], families=["position", "color_attr"])
    guided, _ = evaluation(pipeline_source(pipe), progress=False)
    unguided, _ = evaluation(pipeline_source(pipe, cfg=1.0), progress=False)
    assert guided.overall >= unguided.overall + 0.25, (guided.overall, unguided.overall)
