"""``fluid save-pretrained``: a model folder (generator, tokenizer, text-encoder reference, model card)."""

from __future__ import annotations

from fluid.config import VARIANTS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "save-pretrained", help="write a model folder: generator, tokenizer, text-encoder reference, model card"
    )
    p.add_argument(
        "checkpoint", nargs="?", default=None, help="checkpoint, run or pipeline folder (default: a shipped model)"
    )
    p.add_argument("--variant", default="continuous-random", choices=VARIANTS, help="shipped model to use")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--metrics", default=None, help="`fluid eval`'s metrics.json of these weights (default: one found beside them)"
    )
    p.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default: the checkpoint's")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.sample.pipeline import FluidPipeline

    pipe = FluidPipeline.from_pretrained(args.checkpoint, variant=args.variant, device="cpu")
    out = pipe.save_pretrained(args.out, dtype=args.dtype, metrics=args.metrics)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote {out} ({size / 2**20:.1f} MiB): model_index.json, generator/, tokenizer/, README.md"
        + (", metrics.json" if (out / "metrics.json").exists() else "")
    )
    return 0
