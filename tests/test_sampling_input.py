"""Sampling as a user drives it: a seed fixes each image (alone, in a batch, in a share of a
prompt list), bad values are refused with a clear message, and what was used is recorded."""

import json

import pytest
import torch

from fluid.cli import main
from fluid.config import ConfigError
from fluid.sample.pipeline import FluidPipeline

PROMPTS = ["a red square", "two blue circles", "a green cross left of a yellow triangle", "", "a purple circle"]


@pytest.mark.parametrize(
    "variant,options", [("discrete-raster", {}), ("continuous-random", {"head_steps": 4, "steps": 4})]
)
def test_a_seed_fixes_each_image_not_the_batch(variant, options, minilm, one_thread):
    pipe = FluidPipeline.from_pretrained(variant=variant, device="cpu", text_encoder=minilm)
    batch = pipe(PROMPTS, seed=7, output_type="tensor", **options)
    alone = pipe(PROMPTS[:1], seed=7, output_type="tensor", **options)
    assert torch.equal(alone[0], batch[0])
    assert torch.equal(pipe(PROMPTS, seed=7, output_type="tensor", batch_size=2, **options), batch)
    # A process given the last two prompts of the list (and their place in it) makes the same images.
    assert torch.equal(pipe(PROMPTS[3:], seed=7, first_index=3, output_type="tensor", **options), batch[3:])
    # Images of one prompt, and one image under other seeds, still differ.
    repeated = pipe(PROMPTS[:1], seed=7, num_images_per_prompt=2, output_type="tensor", **options)
    assert torch.equal(repeated[0], alone[0]) and not torch.equal(repeated[1], alone[0])
    assert not torch.equal(pipe(PROMPTS[:1], seed=8, output_type="tensor", **options)[0], alone[0])


def test_cli_image_alone_equals_the_image_in_a_batch_of_16(tmp_path):
    prompts = [p for _ in range(4) for p in PROMPTS[1:]]  # 16 prompts
    assert main(["sample", "--variant", "discrete-raster", "--prompt", PROMPTS[0], "--out", str(tmp_path / "one")]) == 0
    assert (
        main(
            [
                "sample",
                "--variant",
                "discrete-raster",
                "--prompt",
                PROMPTS[0],
                *[a for p in prompts[:15] for a in ("--prompt", p)],
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / "many"),
            ]
        )
        == 0
    )
    assert (tmp_path / "one" / "000-seed0.png").read_bytes() == (tmp_path / "many" / "000-seed0.png").read_bytes()
    # Huge and negative seeds are fine: they are hashed with the image's index.
    assert (
        main(
            [
                "sample",
                "--variant",
                "discrete-raster",
                "--prompt",
                "a circle",
                "--seeds",
                str(2**64),
                "-1",
                "--out",
                str(tmp_path / "big"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--cfg", "nan"], "sample.cfg must be a finite number"),
        (["--cfg", "inf"], "sample.cfg must be a finite number"),
        (["--cfg", "-1"], "sample.cfg must be a finite number >= 0"),
        (["--temperature", "-1"], "sample.temperature must be a finite number >= 0"),
        (["--steps", "0"], "sample.steps must be an integer >= 1"),
        (["--steps", "-3"], "sample.steps must be an integer >= 1"),
        (["--batch-size", "0"], "sample.batch_size must be an integer >= 1"),
        (["--variant", "continuous-random", "--head-steps", "0"], "head_steps must be an integer in [1, 1000]"),
        (["--variant", "continuous-random", "--head-steps", "1001"], "head_steps must be an integer in [1, 1000]"),
        (["--confidence"], "confidence selection is for discrete random-order models"),
    ],
)
def test_cli_refuses_bad_sampling_values(tmp_path, capsys, args, message):
    argv = ["sample", "--prompt", "a circle", "--out", str(tmp_path / "s"), *args]
    if "--variant" not in args:
        argv += ["--variant", "discrete-raster"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s" / "samples.json").exists()


def test_pipeline_and_eval_refuse_bad_values(tmp_path, minilm, capsys):
    pipe = FluidPipeline.from_pretrained(variant="discrete-raster", device="cpu", text_encoder=minilm)
    for bad in ({"cfg": float("nan")}, {"temperature": -0.5}, {"steps": 0}, {"steps": 2.5}):
        with pytest.raises(ConfigError):
            pipe(["a circle"], **bad)
    with pytest.raises(TypeError, match="seed must be an integer"):
        pipe(["a circle"], seed=1.5)
    with pytest.raises(TypeError, match="unknown sampling option"):
        pipe(["a circle"], temprature=0.5)
    rc = main(
        [
            "eval",
            "--variant",
            "discrete-raster",
            "--out",
            str(tmp_path / "e"),
            "--metrics",
            "shapes_eval",
            "--cfg",
            "nan",
            "--no-progress",
        ]
    )
    assert rc == 2 and "sample.cfg must be a finite number" in capsys.readouterr().err


def test_samples_json_records_the_values_used(tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--variant",
                "discrete-random",
                "--prompt",
                "a circle",
                "--steps",
                "100",
                "--cfg",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    used = json.loads((out / "samples.json").read_text())["sample"]
    assert used["steps"] == 16 and used["cfg"] == 2.0  # capped at the 16 tokens
    assert used["head_steps"] is None and used["x0_clip"] is None  # no diffusion head
    record = json.loads((out / "samples.json").read_text())
    assert record["images"][0]["index"] == 0 and record["threads"] == 1
    assert used["packed_head"] is False  # off unless asked for; a discrete model has no head to pack either
    assert (
        main(["sample", "--variant", "discrete-random", "--prompt", "a circle", "--packed-head", "--out", str(out)])
        == 0
    )
    assert json.loads((out / "samples.json").read_text())["sample"]["packed_head"] is False


def test_a_binary_prompts_file_is_named(tmp_path, capsys):
    path = tmp_path / "prompts.bin"
    path.write_bytes(b"a red square\n\xff\xfe\x00binary")
    assert (
        main(["sample", "--variant", "discrete-raster", "--prompts-file", str(path), "--out", str(tmp_path / "s")]) == 2
    )
    err = capsys.readouterr().err
    assert str(path) in err and "not UTF-8" in err and "line 2" in err


def test_sample_config_head_steps_is_the_default_an_argument_overrides(minilm, one_thread):
    """``sample.head_steps`` in the config sets the diffusion head's steps when a call gives
    none; a call's ``head_steps`` wins; the same check (against the training timesteps) holds."""
    pipe = FluidPipeline.from_pretrained(variant="continuous-random", device="cpu", text_encoder=minilm)
    assert pipe.cfg.sample.head_steps is None and pipe.settings()["head_steps"] == pipe.cfg.model.head_sample_steps
    explicit = pipe(PROMPTS[:2], seed=3, output_type="tensor", head_steps=4, steps=4)
    pipe.cfg.sample.head_steps = 4
    assert pipe.settings()["head_steps"] == 4 and pipe.settings(head_steps=6)["head_steps"] == 6
    assert torch.equal(pipe(PROMPTS[:2], seed=3, output_type="tensor", steps=4), explicit)
    assert not torch.equal(pipe(PROMPTS[:2], seed=3, output_type="tensor", steps=4, head_steps=5), explicit)
    pipe.cfg.sample.head_steps = 0
    with pytest.raises(ConfigError, match=r"head_steps must be an integer in \[1, 1000\]"):
        pipe.settings()
