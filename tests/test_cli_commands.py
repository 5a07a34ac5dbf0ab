"""The command line as a user meets it: the main commands chained through the installed
``fluid`` entry point in subprocesses, and the smaller commands (`presets`, `export`,
`train-tokenizer`, `embed-captions`) with what they promise in the README."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import WordHashEncoder, make_tokenizer, random_inception_file, tiny_config
from PIL import Image
from safetensors.torch import load_file
from tiny_data import fake_coco

from fluid.cli import main
from fluid.config import PRESETS, get_preset
from fluid.model.counts import count_params

ROOT = Path(__file__).resolve().parents[1]


def fluid_command() -> list[str]:
    """The installed ``fluid`` script beside this Python (a virtual environment's bin/), or
    ``python -m fluid.cli`` where the package is not installed with its script."""
    script = Path(sys.executable).with_name("fluid")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fluid.cli"]


def run_fluid(*args) -> str:
    """``fluid ARGS`` in a child process that imports this checkout; its stdout, or a failure
    that shows its stderr."""
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*fluid_command(), *map(str, args)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"fluid {args[0]} exited with {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.mark.slow
def test_installed_fluid_prepares_trains_samples_exports_evaluates_and_demos(tmp_path, minilm):
    """One tiny project through the entry point, each command reading what the one before
    wrote: prepare a cache -> train from it -> sample and export the run -> evaluate the export
    (validation loss, FID with a local Inception file, GenEval export) -> the demo page."""
    from fluid.shapes.scenes import all_captions
    from fluid.text.cache import save_embeddings

    make_tokenizer("kl").save(tmp_path / "tok")
    coco_captions, coco_images = fake_coco(tmp_path)
    random_inception_file(tmp_path / "inception.pth")
    geneval = tmp_path / "evaluation_metadata.jsonl"
    geneval.write_text(json.dumps({"tag": "colors", "prompt": "a red square"}) + "\n")
    # Precomputed caption embeddings: the children need not load a text encoder.
    captions = all_captions() + [a["caption"] for a in json.loads(coco_captions.read_text())["annotations"]]
    emb = save_embeddings(minilm, captions, tmp_path / "emb.safetensors")
    common = [
        "--preset",
        "debug",
        "--tokenizer",
        tmp_path / "tok",
        "--set",
        "data.resolution=32",
        f"text.encoder={emb}",
    ]

    cache, run = tmp_path / "cache", tmp_path / "run"
    prepared = json.loads(
        run_fluid(
            "prepare",
            *common,
            "--source",
            "shapes",
            "--count",
            24,
            "--shard-size",
            8,
            "--val-fraction",
            0.25,
            "--workers",
            0,
            "--out",
            cache,
        ).splitlines()[-1]
    )
    assert prepared["written"] == 24 and prepared["tokenizer"] == make_tokenizer("kl").identity()

    trained = json.loads(
        run_fluid(
            "train",
            *common,
            "data.source=cache",
            f"data.path={cache}",
            "train.val_every=0",
            "--steps",
            2,
            "--batch-size",
            4,
            "--out",
            run,
        ).splitlines()[-1]
    )
    assert trained["steps"] == 2 and (run / "latest" / "ema.safetensors").is_file()
    assert json.loads((run / "latest" / "config.json").read_text())["data"]["path"] == str(cache)

    run_fluid(
        "sample",
        "--checkpoint",
        run,
        "--prompt",
        "a red square",
        "--prompt",
        "a blue circle",
        "--seeds",
        0,
        1,
        "--out",
        tmp_path / "samples",
    )
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["checkpoint"] == str(run) and len(record["images"]) == 4
    # 32 px: the run's own model drew them, not the shipped 64 px one.
    assert {Image.open(tmp_path / "samples" / r["file"]).size for r in record["images"]} == {(32, 32)}

    run_fluid("export", run, "--out", tmp_path / "export")
    exported = load_file(str(tmp_path / "export" / "ema.safetensors"))
    assert {v.dtype for v in exported.values() if v.is_floating_point()} == {torch.float16}

    run_fluid(
        "eval",
        "--checkpoint",
        tmp_path / "export",
        "--out",
        tmp_path / "eval",
        "--metrics",
        "val_loss",
        "fid",
        "geneval",
        "--val-size",
        4,
        "--inception-weights",
        tmp_path / "inception.pth",
        "--coco-captions",
        coco_captions,
        "--coco-images",
        coco_images,
        "--coco-size",
        2,
        "--geneval-metadata",
        geneval,
        "--geneval-samples",
        1,
        "--geneval-out",
        tmp_path / "geneval",
        "--cache-dir",
        tmp_path / "stats",
        "--threads",
        1,
        "--no-progress",
    )
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert m["fid"]["pairs"] == 2 and m["fid"]["value"] > 0 and m["val_loss"]["value"] > 0
    assert m["geneval"]["written"] == 1
    assert len(list((tmp_path / "geneval" / "00000" / "samples").glob("*.png"))) == 1

    # The two fastest shipped models (the page and its record are the same for all four).
    out = run_fluid("demo", "--variants", "discrete-raster", "discrete-random", "--out", tmp_path / "demo")
    assert "demo written to" in out
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    page = (tmp_path / "demo" / "index.html").read_text()
    assert list(demo["variants"]) == ["discrete-raster", "discrete-random"] and demo["side_by_side"] in page
    for entry in demo["variants"].values():
        assert entry["grid"] in page and entry["progress"] in page
        grid = Image.open(tmp_path / "demo" / entry["grid"])
        assert (
            grid.width > len(demo["seeds"]) * 64 and grid.height > len(demo["prompts"]) * 64
        )  # prompts x seeds, 64 px
    assert {p["family"] for p in demo["prompts"]} == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }  # GenEval's six task families


def test_installed_fluid_samples_an_image_alone_as_in_a_batch(tmp_path):
    # A fresh process, as a user runs it: the shipped Fluid's first image is the same bytes
    # alone and in a batch of five (an image is fixed by the seed and its index). On a Xeon with
    # AMX the PNGs differed when the decoder took the batch at once (fluid decodes one image at a
    # time on CPUs); MKL's strict mode, set on import, and fp32 sampling serve the same promise.
    prompts = ["a red square", "two blue circles", "a green cross left of a yellow triangle", "", "a purple circle"]
    fast = ["--variant", "continuous-random", "--seeds", "3", "--steps", "4", "--head-steps", "8"]
    run_fluid("sample", *fast, "--prompt", "a red square", "--out", tmp_path / "one")
    run_fluid(
        "sample", *fast, *[a for p in prompts for a in ("--prompt", p)], "--batch-size", "5", "--out", tmp_path / "many"
    )
    assert (tmp_path / "one" / "000-seed3.png").read_bytes() == (tmp_path / "many" / "000-seed3.png").read_bytes()


def test_presets_command_prints_every_preset_with_the_sizes_the_readme_states(capsys):
    assert main(["presets"]) == 0
    printed = {line.split()[0]: float(line.split()[1].rstrip("M")) for line in capsys.readouterr().out.splitlines()}
    assert list(printed) == list(PRESETS)
    for name, millions in printed.items():
        cfg = get_preset(name)
        assert millions == pytest.approx(count_params(cfg.model, cfg.text)["total"] / 1e6, abs=0.006), name
    # The README's preset table (rows "| `name` | 3.84M |") states the same sizes.
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `([\w.-]+)` \| ([\d.]+)M \|", readme, flags=re.M))
    assert {"debug", "shapes-small", "shapes-quick", "shapes-base", "ref-512"} <= set(table)
    for name, stated in table.items():
        digits = len(stated.split(".")[1]) if "." in stated else 0
        assert round(printed[name], digits) == float(stated), (name, printed[name], stated)


def test_export_writes_the_fp16_inference_only_form_of_the_shipped_models(tmp_path, capsys):
    from fluid.assets import generator_path
    from fluid.sample.pipeline import FluidPipeline
    from fluid.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(tiny_config(steps=2, ckpt_every=2), run, make_tokenizer("kl"), WordHashEncoder(), show_progress=False).fit()
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert files == {"config.json", "ema.safetensors", "meta.json"}  # no raw weights, no optimizer state
    assert files <= {p.name for p in generator_path("continuous-random").iterdir()}  # the shipped form
    ema, exported = (
        load_file(str(run / "latest" / "ema.safetensors")),
        load_file(str(tmp_path / "export" / "ema.safetensors")),
    )
    assert exported.keys() == ema.keys()
    for k, v in ema.items():
        assert exported[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
        assert torch.equal(exported[k], v.to(exported[k].dtype)), k  # the EMA weights, not the raw ones
    meta = json.loads((tmp_path / "export" / "meta.json").read_text())
    assert meta["inference_only"] and meta["dtype"] == "fp16" and meta["step"] == 2
    # The export samples as the checkpoint does, up to fp16 rounding of the weights.
    kw = dict(tokenizer=make_tokenizer("kl"), text_encoder=WordHashEncoder(), device="cpu")
    a = FluidPipeline.from_pretrained(run, **kw)(["a red square"], seed=0, output_type="tensor", head_steps=5)
    b = FluidPipeline.from_pretrained(tmp_path / "export", **kw)(
        ["a red square"], seed=0, output_type="tensor", head_steps=5
    )
    assert (a - b).abs().max() < 0.1
    assert main(["export", str(run), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    assert {v.dtype for v in load_file(str(tmp_path / "bf16" / "ema.safetensors")).values()} >= {torch.bfloat16}
    capsys.readouterr()
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_save_pretrained_command_writes_a_model_folder_that_samples_like_the_run(tmp_path, capsys):
    from fluid.sample.pipeline import FluidPipeline
    from fluid.train.trainer import Trainer

    run, folder = tmp_path / "run", tmp_path / "fluid-tiny"
    make_tokenizer("kl").save(tmp_path / "tok")
    cfg = tiny_config(steps=2, ckpt_every=2)
    cfg.tokenizer.path = str(tmp_path / "tok")  # what `fluid train --tokenizer` records
    Trainer(cfg, run, make_tokenizer("kl"), WordHashEncoder(), show_progress=False).fit()
    assert main(["save-pretrained", str(run), "--out", str(folder)]) == 0
    assert {"model_index.json", "generator", "tokenizer", "README.md"} <= {p.name for p in folder.iterdir()}
    kw = dict(text_encoder=WordHashEncoder(), device="cpu")
    a = FluidPipeline.from_pretrained(run, **kw)(["a red square"], seed=0, output_type="tensor", head_steps=5)
    (tmp_path / "tok").rename(tmp_path / "gone")  # the folder must not need it
    b = FluidPipeline.from_pretrained(folder, **kw)(["a red square"], seed=0, output_type="tensor", head_steps=5)
    assert torch.equal(a, b)  # the folder carries the weights and the tokenizer: no other source needed


def test_train_tokenizer_command_writes_a_loadable_tokenizer(tmp_path, capsys):
    from fluid.tokenizers.load import load_tokenizer

    out = tmp_path / "tok"
    assert (
        main(
            [
                "train-tokenizer",
                "--preset",
                "debug-vq",
                "--set",
                "codebook_size=32",
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tok = load_tokenizer(out)
    assert result["tokenizer"] == tok.identity() and tok.cfg.codebook_size == 32  # the --set override was applied
    images = torch.rand(2, 3, tok.cfg.resolution, tok.cfg.resolution) * 2 - 1
    codes = tok.encode(images)
    assert codes.shape == (2, 16) and int(codes.max()) < 32
    assert (out / "metrics.jsonl").read_text().strip()


def test_embed_captions_command_stores_the_encoders_embeddings(tmp_path, minilm, capsys):
    from fluid.text.base import UnknownCaptionError
    from fluid.text.cache import PrecomputedTextEncoder

    captions = ["a red square", "two blue circles", "a cross left of a triangle"]
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    assert (
        main(
            [
                "embed-captions",
                "--captions",
                str(tmp_path / "captions.txt"),
                "--out",
                str(tmp_path / "emb.safetensors"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "wrote 3 caption embeddings" in capsys.readouterr().out
    stored = PrecomputedTextEncoder(tmp_path / "emb.safetensors")
    for order in (captions, captions[::-1]):  # each caption gets its own embedding, whatever the order asked
        (emb, mask), (ref, ref_mask) = stored(order), minilm(order)
        assert torch.equal(mask, ref_mask)
        torch.testing.assert_close(emb.float()[mask], ref.float()[ref_mask], atol=2e-3, rtol=1e-2)
    with pytest.raises(UnknownCaptionError):
        stored(["a caption that was never embedded"])


def test_sampling_flags_are_made_from_sample_config_fields():
    import argparse

    from fluid.commands._common import field_docs, sample_args
    from fluid.config import HeadSampler, SampleConfig

    docs = field_docs(SampleConfig)
    assert docs["cfg"].startswith("Guidance scale") and "x0_clip" in docs  # the docstring under each field
    p = argparse.ArgumentParser()
    sample_args(p, "cfg", "head_sampler", "packed_head", "batch_size", "head_steps")
    args = p.parse_args([])
    assert (args.cfg, args.head_sampler, args.packed_head, args.batch_size, args.head_steps) == (
        None,
        None,
        False,
        None,
        None,
    )  # the model's own settings
    args = p.parse_args(["--cfg", "2.5", "--head-sampler", "ddim", "--packed-head", "--batch-size", "4"])
    assert (args.cfg, HeadSampler(args.head_sampler), args.packed_head, args.batch_size) == (
        2.5,
        HeadSampler.DDIM,
        True,
        4,
    )
    with pytest.raises(SystemExit):
        p.parse_args(["--head-sampler", "euler"])  # not a HeadSampler
    with pytest.raises(ValueError, match="no field"):
        sample_args(argparse.ArgumentParser(), "cfg_scale")


def test_sample_and_eval_share_their_sampling_flags():
    from fluid.cli import make_parser

    parser = make_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {
        name: {a.dest: (a.type, a.choices, a.default) for a in sub.choices[name]._actions}
        for name in ("sample", "eval")
    }
    for dest in (
        "cfg",
        "cfg_schedule",
        "temperature",
        "steps",
        "head_steps",
        "head_sampler",
        "batch_size",
        "guidance_refresh",
    ):
        assert flags["sample"][dest] == flags["eval"][dest], dest


def test_eval_sampling_overrides_are_the_eval_flags_and_sample_config_fields():
    """``fluid eval``'s sampling flags land in EvalOptions fields named as SampleConfig's, and
    only the values given reach the pipeline."""
    import dataclasses

    from fluid.cli import make_parser
    from fluid.config import SampleConfig
    from fluid.eval.run import EvalOptions

    sample_fields = {f.name for f in dataclasses.fields(SampleConfig)}
    shared = [f.name for f in dataclasses.fields(EvalOptions) if f.name in sample_fields]
    args = make_parser().parse_args(["eval", "--out", "unused", "--cfg", "2.5", "--head-steps", "7"])
    assert all(hasattr(args, name) for name in shared) and len(shared) == 8
    opts = EvalOptions(
        **{k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(EvalOptions)}}
    )
    assert opts.sample_overrides() == {"cfg": 2.5, "head_steps": 7}
