"""``fluid <command>``: the command line. The only module that sees every part.

One file because a command is two short pieces that belong side by side: a ``cmd_<name>``
function (it imports what it runs inside itself, so ``fluid --help`` loads nothing heavy)
and its block in :func:`make_parser`. Adding a command is those two pieces, here; the work
itself lives in the packages below.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

# Nothing we run may reach a model hub unless the user opts in (FLUID_ONLINE=1).
if os.environ.get("FLUID_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fluid.config import PRESETS, VARIANTS, ConfigError, FluidConfig, LRSchedule, apply_overrides, get_preset  # noqa: E402
from fluid.config import HeadSampler  # noqa: E402
from fluid.train.checkpoint import CheckpointError  # noqa: E402


# ----------------------------------------------------------------------------- helpers


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="shapes-small", help=f"named configuration ({', '.join(PRESETS)})")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="token type and order (default: the preset's)")
    p.add_argument("--config", default=None, help="a YAML/JSON config file (full, or {preset, overrides})")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config fields")


def build_config(args) -> FluidConfig:
    cfg = FluidConfig.load(args.config) if args.config else get_preset(args.preset)
    if args.variant:
        cfg = apply_overrides(cfg, {"model.token_type": args.variant.split("-")[0], "model.order": args.variant.split("-")[1]})
    return apply_overrides(cfg, args.set)


def _device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _threads(n: int | None) -> None:
    """CPU threads for PyTorch. Sampling the small shipped models runs thousands of tiny
    matmuls, for which one thread is as fast as two and does not collapse when other
    programs share the cores."""
    import torch

    if n:
        torch.set_num_threads(n)


def _text_encoder(cfg: FluidConfig, device: str, embeddings: str | None = None):
    from fluid.train.text_side import training_text_encoder

    return training_text_encoder(cfg, device, embeddings)


# ----------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from fluid.tokenizers.load import load_tokenizer, resolve_tokenizer
    from fluid.train import checkpoint as ckpt
    from fluid.train.distributed import setup, teardown
    from fluid.train.trainer import Trainer

    out = Path(args.out)
    if args.resume:
        cfg = ckpt.read_config(out)
        cfg = apply_overrides(cfg, args.set)
        if args.steps is not None and args.steps != cfg.train.steps and cfg.lr_schedule != LRSchedule.CONSTANT:
            print(f"note: --steps {args.steps} changes the {cfg.lr_schedule.value} learning-rate schedule, which the "
                  f"run so far followed for {cfg.train.steps} steps: the result will differ from an uninterrupted "
                  f"{args.steps}-step run", file=sys.stderr)
    else:
        cfg = build_config(args)
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.batch_size is not None:
        cfg.train.batch_size = args.batch_size
    if args.tokenizer:
        cfg.tokenizer.path = str(Path(args.tokenizer).resolve())
    dist = setup(args.device, cfg.train.dist_timeout_s)
    tokenizer = load_tokenizer(resolve_tokenizer(cfg), kind=cfg.tokenizer.kind, patch_size=cfg.tokenizer.patch_size)
    text_encoder = _text_encoder(cfg, dist.device, args.text_embeddings)
    trainer = Trainer(cfg, out, tokenizer, text_encoder, resume=args.resume, dist=dist)
    if dist.is_main:
        n = sum(p.numel() for p in trainer.model.parameters())
        print(f"training {cfg.model.variant} ({cfg.preset}, {n / 1e6:.2f}M parameters) on {dist.device} "
              f"x{dist.world} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    last = trainer.fit()
    if dist.is_main:
        summary = {"run": str(out), "variant": cfg.model.variant, "steps": trainer.step,
                   "seconds": round(time.perf_counter() - t0, 1), **last}
        if trainer.stopped_by:
            summary["stopped_by"] = trainer.stopped_by
            print(f"stopped by {trainer.stopped_by} at step {trainer.step} of {cfg.train.steps}, checkpoint saved; "
                  f"continue with: fluid train --out {out} --resume", file=sys.stderr)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))
    teardown()
    if trainer.stopped_by:
        # The shell's convention (128 + signal number) tells a job script that the run did
        # not finish, though it stopped cleanly.
        return 128 + getattr(signal, trainer.stopped_by, signal.SIGTERM)
    return 0


def cmd_sample(args) -> int:
    import torch

    from fluid.files import read_lines
    from fluid.sample.grid import image_grid
    from fluid.sample.pipeline import FluidPipeline

    _threads(args.threads)
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_lines(args.prompts_file, "prompts file")
    if not prompts:
        raise SystemExit("fluid sample: give at least one --prompt (an empty string '' samples unconditionally)")
    pipe = FluidPipeline.from_pretrained(args.checkpoint, variant=args.variant, device=_device(args.device),
                                         use_ema=not args.raw_weights)
    overrides = dict(cfg=args.cfg, cfg_schedule=args.cfg_schedule, temperature=args.temperature, steps=args.steps,
                     confidence=args.confidence or None, head_steps=args.head_steps, batch_size=args.batch_size,
                     head_sampler=args.head_sampler, compile=args.compile or None)
    used = pipe.settings(**overrides)  # checks every value before any sampling
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, files = [None] * (len(prompts) * len(args.seeds)), []
    for j, seed in enumerate(args.seeds):
        for i, img in enumerate(pipe(prompts, seed=seed, **overrides)):
            images[i * len(args.seeds) + j] = img
            name = f"{i:03d}-seed{seed}.png"
            img.save(out / name)
            files.append({"prompt": prompts[i], "seed": seed, "index": i, "file": name})
    image_grid(images, len(prompts), len(args.seeds), prompts, [f"seed {s}" for s in args.seeds]).save(out / "grid.png")
    record = {"checkpoint": str(args.checkpoint or f"shipped:{args.variant}"), "variant": pipe.cfg.model.variant,
              "sample": used, "threads": torch.get_num_threads(), "images": files}
    (out / "samples.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {len(files)} images and grid.png to {out}")
    return 0


def cmd_demo(args) -> int:
    from fluid.sample.demo import run_demo

    _threads(args.threads)
    t0 = time.perf_counter()
    record = run_demo(args.out, args.variants, device=_device(args.device))
    print(f"demo written to {Path(args.out) / 'index.html'} in {time.perf_counter() - t0:.1f} s")
    for v, e in record["variants"].items():
        print(f"  {v}: {e['grid']}, {e.get('progress', '')} ({e['seconds']} s)")
    return 0


def _served_models(args) -> dict[str, str | None]:
    """Name -> source for ``fluid serve``: the shipped variants, or the given folders (named
    ``NAME=PATH``, or by their variant), or both when both are asked for."""
    from fluid.train.checkpoint import read_config

    sources: dict[str, str | None] = {}
    if args.variants or not args.checkpoint:
        sources.update({v: None for v in args.variants or VARIANTS})
    for item in args.checkpoint or []:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            from fluid.sample.folder import resolve_source

            name = read_config(resolve_source(path)).model.variant
            if name in sources:
                name = Path(path).name
        if name in sources:
            raise ValueError(f"two served models are named {name!r}: name them with --checkpoint NAME=PATH")
        sources[name] = path
    return sources


def cmd_serve(args) -> int:
    import logging

    from fluid.serve.app import create_app, is_loopback, serve
    from fluid.serve.worker import ModelSet

    _threads(args.threads)
    logging.basicConfig(format="fluid serve: %(message)s")
    logging.getLogger("fluid.serve").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load is noise in a server's log
    models = ModelSet(_served_models(args), device=_device(args.device))
    app = create_app(models, max_pending=args.max_queue)
    if not is_loopback(args.host):
        print(f"fluid serve: warning: listening on {args.host}, not on this machine alone: anyone who can reach "
              f"it on port {args.port} can use the page and its CPU/GPU (no login, no TLS). Use the default "
              "--host 127.0.0.1 unless you mean that.", file=sys.stderr)
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"fluid serve: http://{shown}:{args.port}/  ({', '.join(models)}; models load in the background; "
          "Ctrl-C stops)", file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port)
    return 0


def cmd_save_pretrained(args) -> int:
    from fluid.sample.pipeline import FluidPipeline

    pipe = FluidPipeline.from_pretrained(args.checkpoint, variant=args.variant, device="cpu")
    out = pipe.save_pretrained(args.out, dtype=args.dtype, metrics=args.metrics)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB): model_index.json, generator/, tokenizer/, README.md"
          + (", metrics.json" if (out / "metrics.json").exists() else ""))
    return 0


def cmd_train_tokenizer(args) -> int:
    from fluid.tokenizers.presets import get_tokenizer_preset
    from fluid.train.tokenizer import train_tokenizer

    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k] = json.loads(v) if v[:1] in "[{0123456789-" or v in ("true", "false") else v
    cfg = get_tokenizer_preset(args.preset, **overrides)
    result = train_tokenizer(cfg, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, device=_device(args.device),
                             time_limit_s=None if args.minutes is None else 60 * args.minutes)
    print(json.dumps(result))
    return 0


def cmd_export(args) -> int:
    from fluid.train.checkpoint import export

    dst = export(args.checkpoint, args.out, dtype=args.dtype)
    size = sum(f.stat().st_size for f in dst.iterdir())
    print(f"exported {args.checkpoint} -> {dst} ({size / 2**20:.1f} MiB, {args.dtype})")
    return 0


def cmd_embed_captions(args) -> int:
    from fluid.config import TextConfig
    from fluid.shapes.scenes import all_captions
    from fluid.files import read_lines
    from fluid.text.cache import save_embeddings
    from fluid.text.encoders import build_text_encoder

    if args.captions == "shapes":
        captions = all_captions()
    else:
        captions = read_lines(args.captions, "captions file")
    encoder = build_text_encoder(TextConfig(encoder=args.encoder, max_length=args.max_length, dim=args.dim),
                                 device=_device(args.device))
    path = save_embeddings(encoder, captions, args.out)
    print(f"wrote {len(captions)} caption embeddings ({encoder.identity()}) to {path}")
    return 0


def cmd_eval(args) -> int:
    from fluid.eval.run import eval_from_args

    t0 = time.perf_counter()
    records = eval_from_args(args)
    print(f"evaluated {len(records)} model(s) in {time.perf_counter() - t0:.1f} s -> {args.out}", file=sys.stderr)
    return 0


def cmd_prepare(args) -> int:
    from fluid.data.images import ImagePolicy
    from fluid.data.prepare import PrepareOptions, prepare, process_rank
    from fluid.data.sources import open_source
    from fluid.text.encoders import build_text_encoder
    from fluid.tokenizers.load import load_tokenizer, resolve_tokenizer

    cfg = build_config(args)
    if args.resolution is not None:
        cfg = apply_overrides(cfg, {"data.resolution": args.resolution})
    if args.tokenizer:
        cfg.tokenizer.path = str(Path(args.tokenizer).resolve())
    kind = args.source or cfg.data.source
    if kind == "cache":
        raise ValueError("fluid prepare reads raw data: pass --source folder, coco, wds or shapes")
    rank, world = process_rank(args.rank, args.world)
    device = _device(args.device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process of a node
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    source = open_source(kind, args.path or cfg.data.path, images=args.images or cfg.data.images,
                         shard_size=args.shard_size, count=args.count, resolution=cfg.data.resolution,
                         holdout=cfg.data.holdout, outside_root=args.images_outside_root or cfg.data.images_outside_root)
    policy = ImagePolicy.from_data_config(cfg.data, small=args.small_images, max_aspect=args.max_aspect,
                                          max_pixels=args.max_pixels, background=args.background)
    tokenizer = load_tokenizer(resolve_tokenizer(cfg), kind=cfg.tokenizer.kind, patch_size=cfg.tokenizer.patch_size)
    tokenizer = tokenizer.to(device).eval()
    text_encoder = build_text_encoder(cfg.text, device=device)
    options = PrepareOptions(batch_size=args.batch_size, workers=args.workers, dtype=args.dtype, flip=not args.no_flip,
                             val_fraction=args.val_fraction, strict=args.strict, precision=args.precision,
                             overwrite=args.overwrite, rank=rank, world=world)
    result = prepare(source, args.out, tokenizer, text_encoder, policy, options)
    m = result.manifest
    if m is None:  # other processes' units are still to do: the last one to finish writes the manifest
        names = source.units()
        left = [names[u] for u in result.remaining]
        print(f"fluid prepare: rank {rank} of {world} finished its {result.units} unit(s); {len(left)} unit(s) of "
              f"rank(s) {sorted({u % world for u in result.remaining})} remain ({', '.join(left[:10])}"
              f"{', ...' if len(left) > 10 else ''}); the process that finishes last writes manifest.json",
              file=sys.stderr)
        print(json.dumps({"cache": str(args.out), "rank": rank, "world": world, "done": False,
                          "records": result.records, "written": result.written, "remaining_units": len(left),
                          "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 1)}))
        return 0
    print(json.dumps({"cache": str(args.out), **m["counts"], "skipped_by_reason": m["skipped"], "fixed_by_kind": m["fixed"],
                      "tokenizer": m["tokenizer"]["identity"], "text_encoder": m["text_encoder"]["identity"],
                      "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 1)}))
    return 0


def cmd_scale(args) -> int:
    from fluid.scaling.compute import compute_summary
    from fluid.scaling.runner import Runner, fitted_config
    from fluid.scaling.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    if args.list:
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs" + (f" ({sweep.description})" if sweep.description else ""))
        for run in sweep.runs:
            cfg = fitted_config(sweep, run)
            c = compute_summary(cfg)
            print(f"  {run.name:40s} {run.preset:12s} {cfg.model.variant:18s} {c['params'] / 1e6:8.2f}M "
                  f"{run.steps:7d} steps x {c['batch_size']:5d}  {c['train_flops']:.2e} FLOPs")
        return 0
    from fluid.scaling.analysis import analyze
    from fluid.scaling.runner import write_results

    command = f"fluid scale --sweep {args.sweep} --out {args.out}" + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    if args.analyze_only:
        write_results(Path(args.out), sweep)
        fits = analyze(args.out, sweep.name, command + " --analyze-only")
        print(json.dumps({"sweep": sweep.name, "out": str(args.out), "report": str(Path(args.out) / "report.md"),
                          "loss_vs_params": fits["loss_vs_params"]}))
        return 0
    from fluid.scaling.plan import make_plan

    unknown = sorted(set(args.only or ()) - {r.name for r in sweep.runs})
    if unknown:
        print(f"fluid scale: no run named {', '.join(unknown)} in sweep {sweep.name} (see --list)", file=sys.stderr)
        return 2
    runs = [r for r in sweep.runs if not args.only or r.name in args.only]
    plan = make_plan(sweep, args.out, runs, probe=not args.no_probe, threads=args.threads, device=args.device,
                     launcher=args.launcher, echo=lambda m: print(m, file=sys.stderr, flush=True))
    print(plan.format(), file=sys.stderr, flush=True)
    if args.plan:
        print(json.dumps({"sweep": sweep.name, "out": str(args.out), "plan": plan.to_dict()}))
        return 0
    runner = Runner(sweep, args.out, launcher=args.launcher, device=args.device, threads=args.threads,
                    redo_stale=args.redo_stale, echo=lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    records = runner.run_all(only=args.only, jobs=args.jobs)
    failed = [r["name"] for r in records if r["status"] == "failed"]
    analyze(args.out, sweep.name, command)
    print(json.dumps({"sweep": sweep.name, "out": str(args.out), "runs": len(records), "failed": failed,
                      "seconds": round(time.perf_counter() - t0, 1), "results": str(Path(args.out) / "results.csv"),
                      "report": str(Path(args.out) / "report.md")}))
    return 1 if failed else 0


def cmd_presets(args) -> int:
    from fluid.config import count_params

    for name in PRESETS:
        cfg = get_preset(name)
        n = count_params(cfg.model, cfg.text)["total"]
        m = cfg.model
        print(f"{name:14s} {n / 1e6:9.2f}M  width {m.width:5d} depth {m.depth:3d} heads {m.heads:3d} "
              f"tokens {m.num_tokens:4d}  text {cfg.text.encoder}")
    return 0


# ----------------------------------------------------------------------------- parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluid", description="Autoregressive text-to-image generation with continuous tokens")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate the demo page from the shipped models")
    p.add_argument("--out", default="demo")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="the interactive web page: type a prompt, watch the image form")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="shipped models to serve (default: all four)")
    p.add_argument("--checkpoint", action="append", metavar="[NAME=]PATH",
                   help="serve this pipeline, checkpoint or run folder (or hub id) instead (repeatable)")
    p.add_argument("--max-queue", type=int, default=100, help="requests that may wait; more are refused with a message")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("save-pretrained", help="write a model folder: generator, tokenizer, text-encoder reference, model card")
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint, run or pipeline folder (default: a shipped model)")
    p.add_argument("--variant", default="continuous-random", choices=VARIANTS, help="shipped model to use")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", default=None, help="`fluid eval`'s metrics.json of these weights (default: one found beside them)")
    p.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default: the checkpoint's")
    p.set_defaults(func=cmd_save_pretrained)

    p = sub.add_parser("train", help="train a generator")
    _config_args(p)
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="the global batch (over every process)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    p.add_argument("--text-embeddings", default=None, help="precomputed caption embeddings (safetensors)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images from prompts")
    p.add_argument("--checkpoint", default=None, help="checkpoint or run folder (default: the shipped model)")
    p.add_argument("--variant", default="continuous-random", choices=VARIANTS, help="shipped model to use")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--cfg-schedule", choices=["constant", "linear"], default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="random-order generation steps")
    p.add_argument("--head-steps", type=int, default=None, help="diffusion head sampling steps")
    p.add_argument("--head-sampler", choices=[h.value for h in HeadSampler], default=None,
                   help="diffusion head sampler (ddim / dpm++2m: deterministic, few steps)")
    p.add_argument("--confidence", action="store_true", help="discrete random order: MaskGIT confidence selection")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (does not change the images)")
    p.add_argument("--compile", action="store_true", help="torch.compile the head and backbone (pays off over many batches)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default="samples")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train-tokenizer", help="train a KL or VQ autoencoder")
    p.add_argument("--preset", default="shapes-kl-f4", help="tokenizer preset (default: the shipped KL geometry)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (the LR schedule anneals within it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_tokenizer)

    p = sub.add_parser("export", help="write an inference-only copy of a checkpoint (EMA weights, fp16)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("embed-captions", help="precompute text embeddings of captions (for machines without the encoder)")
    p.add_argument("--captions", default="shapes", help="'shapes' (every built-in caption) or a text file, one per line")
    p.add_argument("--out", required=True)
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_embed_captions)

    p = sub.add_parser("eval", help="evaluate a checkpoint: ShapesEval, shapes_fd, validation loss, FID, GenEval export")
    from fluid.eval.run import add_eval_args

    add_eval_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prepare", help="encode image-caption pairs into a training cache (tokens + text embeddings)")
    _config_args(p)
    p.add_argument("--source", choices=["folder", "coco", "wds", "shapes"], default=None, help="default: data.source")
    p.add_argument("--path", default=None, help="JSONL file or folder, COCO captions JSON, or tar shards (brace patterns, globs)")
    p.add_argument("--images", default=None, help="folder/coco: where the images are (default: next to the index)")
    p.add_argument("--images-outside-root", action="store_true",
                   help="folder/coco: follow image paths that lead outside the images folder (absolute, ..)")
    p.add_argument("--out", required=True, help="cache folder (rerun the same command to resume)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one for the variant)")
    p.add_argument("--resolution", type=int, default=None, help="default: data.resolution")
    p.add_argument("--count", type=int, default=None, help="shapes: how many items")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: none)")
    p.add_argument("--batch-size", type=int, default=64, help="images per tokenizer call")
    p.add_argument("--shard-size", type=int, default=1000, help="folder/coco/shapes: records per shard (wds: one shard per tar)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="storage of moments and embeddings")
    p.add_argument("--no-flip", action="store_true", help="do not also encode the mirrored images")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction for validation")
    p.add_argument("--small-images", choices=["upsample", "skip"], default=None, help="default: data.small_images")
    p.add_argument("--max-aspect", type=float, default=None, help="default: data.max_aspect (0: no limit)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images with more pixels (decompression bombs; default 89478485, Pillow's)")
    p.add_argument("--background", type=int, nargs=3, default=None, metavar=("R", "G", "B"), help="colour under transparency")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32", help="encoding precision")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace another preparation found in --out")
    p.add_argument("--rank", type=int, default=None,
                   help="this process prepares the units u with u %% world == rank (default: RANK, else 0)")
    p.add_argument("--world", type=int, default=None,
                   help="processes preparing --out at once, e.g. jobs of a cluster array (default: WORLD_SIZE, else 1)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_prepare)

    from fluid.scaling.sweep import named_sweeps

    p = sub.add_parser("scale", help="run a sweep (sizes x variants x steps): train, evaluate, collect results")
    p.add_argument("--sweep", required=True, help=f"a sweep YAML file or a named sweep ({', '.join(named_sweeps())})")
    p.add_argument("--out", default=None, help="sweep folder (runs/, results.csv); rerun the same command to resume")
    p.add_argument("--only", nargs="+", default=None, metavar="RUN", help="run only these runs (names from --list)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (several small runs sharing one GPU)")
    p.add_argument("--launcher", default=None, help="training launcher, e.g. 'torchrun --nproc_per_node=8'")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (OMP_NUM_THREADS)")
    p.add_argument("--redo-stale", action="store_true", help="archive runs made by another config or data and redo them")
    p.add_argument("--list", action="store_true", help="print the runs with their size and compute, and exit")
    p.add_argument("--analyze-only", action="store_true", help="only redo results.csv, fits, figures and report.md")
    p.add_argument("--plan", action="store_true",
                   help="print the plan (images, FLOPs and expected wall time per run on this machine) and exit")
    p.add_argument("--no-probe", action="store_true",
                   help="do not time the trainer's step for runs that no finished run on this machine prices")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("presets", help="list the named configurations")
    p.set_defaults(func=cmd_presets)

    # Its options are benchmarks/bench.py's own: main() hands every argument after "bench" over.
    sub.add_parser("bench", help="training and sampling speed, MFU, head share (fluid bench --help)")
    return parser


def cmd_bench(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]  # the source checkout: benchmarks/ beside fluid/
    if not (root / "benchmarks" / "bench.py").is_file():
        print("fluid bench: needs a source checkout (benchmarks/bench.py beside fluid/)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from benchmarks.bench import main as bench_main

    return bench_main(argv)


def _plain_warnings() -> None:
    """Our warnings as one line for the person at the terminal; Python's default format adds the
    source line that issued the warning, which means nothing to them."""
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if category.__module__.startswith("fluid."):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    args = make_parser().parse_args(argv)
    if args.command == "scale" and not args.list and not args.out:
        print("fluid scale: --out is required (unless --list)", file=sys.stderr)
        return 2
    _plain_warnings()
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"fluid {args.command}: configuration error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError, ValueError) as e:
        print(f"fluid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from fluid.train.distributed import CollectiveTimeout
        from fluid.train.trainer import NonFiniteError

        if isinstance(e, CollectiveTimeout):
            # A process group with a collective still pending cannot be torn down (the
            # backend aborts in its destructor, hiding this message): say why, then leave.
            print(f"fluid {args.command}: error: {e}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(4)

        if not isinstance(e, NonFiniteError):
            raise
        print(f"fluid {args.command}: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
