"""``fluid sample``: images from prompts, one file per prompt and seed, a grid and samples.json."""

from __future__ import annotations

import json
from pathlib import Path

from fluid.commands._common import pick_device, sample_args, set_threads
from fluid.config import VARIANTS


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate images from prompts")
    p.add_argument("--checkpoint", default=None, help="checkpoint or run folder (default: the shipped model)")
    p.add_argument("--variant", default="continuous-random", choices=VARIANTS, help="shipped model to use")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    sample_args(
        p,
        "cfg",
        "cfg_schedule",
        "temperature",
        "steps",
        "head_sampler",
        "confidence",
        "batch_size",
        "compile",
        "packed_head",
        "head_steps",
        "guidance_refresh",
    )
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default="samples")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from fluid.files import read_lines
    from fluid.sample.grid import image_grid
    from fluid.sample.pipeline import FluidPipeline

    set_threads(args.threads)
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_lines(args.prompts_file, "prompts file")
    if not prompts:
        raise SystemExit("fluid sample: give at least one --prompt (an empty string '' samples unconditionally)")
    pipe = FluidPipeline.from_pretrained(
        args.checkpoint, variant=args.variant, device=pick_device(args.device), use_ema=not args.raw_weights
    )
    overrides = dict(
        cfg=args.cfg,
        cfg_schedule=args.cfg_schedule,
        temperature=args.temperature,
        steps=args.steps,
        confidence=args.confidence or None,
        head_steps=args.head_steps,
        batch_size=args.batch_size,
        head_sampler=args.head_sampler,
        compile=args.compile or None,
        packed_head=args.packed_head or None,
        guidance_refresh=args.guidance_refresh,
    )
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
    record = {
        "checkpoint": str(args.checkpoint or f"shipped:{args.variant}"),
        "variant": pipe.cfg.model.variant,
        "sample": used,
        "threads": torch.get_num_threads(),
        "images": files,
    }
    (out / "samples.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {len(files)} images and grid.png to {out}")
    return 0
