"""``fluid export``: an inference-only copy of a checkpoint (EMA weights, fp16 by default)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write an inference-only copy of a checkpoint (EMA weights, fp16)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.checkpoint import export

    dst = export(args.checkpoint, args.out, dtype=args.dtype)
    size = sum(f.stat().st_size for f in dst.iterdir())
    print(f"exported {args.checkpoint} -> {dst} ({size / 2**20:.1f} MiB, {args.dtype})")
    return 0
