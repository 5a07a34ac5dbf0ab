"""``fluid distill-head``: distil a checkpoint's diffusion head into a few-step one, saved
beside its weights; ``--head-sampler distilled`` then samples with it."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "distill-head",
        help="distil a continuous random-order checkpoint's diffusion head into a few-step head",
        description="Distil the diffusion head of a checkpoint (a checkpoint, run or pipeline folder, or a "
        "shipped variant) so that it samples in --steps DDIM steps what it sampled in --steps x --substeps, "
        "and save it in the checkpoint's folder (head-distilled.safetensors / .json).",
    )
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint folder (default: the shipped --variant)")
    p.add_argument("--variant", default="continuous-random", help="shipped model, when no checkpoint is given")
    p.add_argument("--steps", type=int, default=4, help="the student's DDIM steps")
    p.add_argument("--substeps", type=int, default=8, help="teacher DDIM steps per student step")
    p.add_argument("--iterations", type=int, default=3000, help="optimizer steps")
    p.add_argument("--images", type=int, default=8192, help="training images whose backbone conditions it learns on")
    p.add_argument("--batch-size", type=int, default=512, help="tokens per optimizer step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--per-branch",
        action="store_true",
        help="distil each guidance branch alone (default: the guided mix, at the checkpoint's CFG scales)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.assets import generator_path
    from fluid.commands._common import set_threads
    from fluid.train.distill import distill_checkpoint

    for name in ("steps", "substeps", "iterations", "images", "batch_size"):
        if getattr(args, name) < (2 if name == "steps" else 1):
            raise SystemExit(f"fluid distill-head: --{name.replace('_', '-')} is too small: {getattr(args, name)}")
    set_threads(args.threads)
    path = args.checkpoint or generator_path(args.variant)
    out = distill_checkpoint(
        path,
        steps=args.steps,
        substeps=args.substeps,
        iterations=args.iterations,
        images=args.images,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        guided=not args.per_branch,
    )
    print(f"distilled head ({args.steps} steps) -> {out}")
    return 0
