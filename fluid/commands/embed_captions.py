"""``fluid embed-captions``: text embeddings of captions, for machines without the encoder."""

from __future__ import annotations

from fluid.commands._common import pick_device


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed-captions", help="precompute text embeddings of captions (for machines without the encoder)"
    )
    p.add_argument(
        "--captions", default="shapes", help="'shapes' (every built-in caption) or a text file, one per line"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.config import TextConfig
    from fluid.files import read_lines
    from fluid.shapes.scenes import all_captions
    from fluid.text.cache import save_embeddings
    from fluid.text.encoders import build_text_encoder

    if args.captions == "shapes":
        captions = all_captions()
    else:
        captions = read_lines(args.captions, "captions file")
    encoder = build_text_encoder(
        TextConfig(encoder=args.encoder, max_length=args.max_length, dim=args.dim), device=pick_device(args.device)
    )
    path = save_embeddings(encoder, captions, args.out)
    print(f"wrote {len(captions)} caption embeddings ({encoder.identity()}) to {path}")
    return 0
