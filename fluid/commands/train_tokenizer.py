"""``fluid train-tokenizer``: train a KL or VQ autoencoder from a tokenizer preset."""

from __future__ import annotations

import json

from fluid.commands._common import pick_device


def add_parser(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a KL or VQ autoencoder")
    p.add_argument("--preset", default="shapes-kl-f4", help="tokenizer preset (default: the shipped KL geometry)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override tokenizer config fields")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (the LR schedule anneals within it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.config import parse_overrides
    from fluid.config.autoencoder import get_tokenizer_preset
    from fluid.train.tokenizer import train_tokenizer

    cfg = get_tokenizer_preset(args.preset, **parse_overrides(args.set))
    result = train_tokenizer(
        cfg,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=pick_device(args.device),
        time_limit_s=None if args.minutes is None else 60 * args.minutes,
    )
    print(json.dumps(result))
    return 0
