"""``fluid prepare``: encode image-caption pairs into a training cache (tokens + text embeddings)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fluid.commands._common import build_config, config_args, pick_device
from fluid.config import apply_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="encode image-caption pairs into a training cache (tokens + text embeddings)")
    config_args(p)
    p.add_argument("--source", choices=["folder", "coco", "wds", "shapes"], default=None, help="default: data.source")
    p.add_argument(
        "--path", default=None, help="JSONL file or folder, COCO captions JSON, or tar shards (brace patterns, globs)"
    )
    p.add_argument("--images", default=None, help="folder/coco: where the images are (default: next to the index)")
    p.add_argument(
        "--images-outside-root",
        action="store_true",
        help="folder/coco: follow image paths that lead outside the images folder (absolute, ..)",
    )
    p.add_argument("--out", required=True, help="cache folder (rerun the same command to resume)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one for the variant)")
    p.add_argument("--resolution", type=int, default=None, help="default: data.resolution")
    p.add_argument("--count", type=int, default=None, help="shapes: how many items")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: none)")
    p.add_argument("--batch-size", type=int, default=64, help="images per tokenizer call")
    p.add_argument(
        "--shard-size", type=int, default=1000, help="folder/coco/shapes: records per shard (wds: one shard per tar)"
    )
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="storage of moments and embeddings",
    )
    p.add_argument("--no-flip", action="store_true", help="do not also encode the mirrored images")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction for validation")
    p.add_argument("--small-images", choices=["upsample", "skip"], default=None, help="default: data.small_images")
    p.add_argument("--max-aspect", type=float, default=None, help="default: data.max_aspect (0: no limit)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="skip images with more pixels (decompression bombs; default 89478485, Pillow's)",
    )
    p.add_argument(
        "--background", type=int, nargs=3, default=None, metavar=("R", "G", "B"), help="colour under transparency"
    )
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32", help="encoding precision")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace another preparation found in --out")
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process prepares the units u with u %% world == rank (default: RANK, else 0)",
    )
    p.add_argument(
        "--world",
        type=int,
        default=None,
        help="processes preparing --out at once, e.g. jobs of a cluster array (default: WORLD_SIZE, else 1)",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.data.images import ImagePolicy
    from fluid.data.outfolder import process_rank
    from fluid.data.prepare import PrepareOptions, prepare
    from fluid.data.sources import open_source
    from fluid.text.encoders import build_text_encoder
    from fluid.tokenizers.load import load_tokenizer, resolve_tokenizer

    cfg = build_config(args)
    shortcuts = {"data.resolution": args.resolution}
    if args.tokenizer:
        shortcuts["tokenizer.path"] = str(Path(args.tokenizer).resolve())
    cfg = apply_overrides(cfg, {k: v for k, v in shortcuts.items() if v is not None})
    kind = args.source or cfg.data.source
    if kind == "cache":
        raise ValueError("fluid prepare reads raw data: pass --source folder, coco, wds or shapes")
    rank, world = process_rank(args.rank, args.world)
    device = pick_device(args.device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process of a node
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    source = open_source(
        kind,
        args.path or cfg.data.path,
        images=args.images or cfg.data.images,
        shard_size=args.shard_size,
        count=args.count,
        resolution=cfg.data.resolution,
        holdout=cfg.data.holdout,
        outside_root=args.images_outside_root or cfg.data.images_outside_root,
    )
    policy = ImagePolicy.from_data_config(
        cfg.data,
        small=args.small_images,
        max_aspect=args.max_aspect,
        max_pixels=args.max_pixels,
        background=args.background,
    )
    tokenizer = load_tokenizer(resolve_tokenizer(cfg), kind=cfg.tokenizer.kind, patch_size=cfg.tokenizer.patch_size)
    tokenizer = tokenizer.to(device).eval()
    text_encoder = build_text_encoder(cfg.text, device=device)
    options = PrepareOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        dtype=args.dtype,
        flip=not args.no_flip,
        val_fraction=args.val_fraction,
        strict=args.strict,
        precision=args.precision,
        overwrite=args.overwrite,
        rank=rank,
        world=world,
    )
    result = prepare(source, args.out, tokenizer, text_encoder, policy, options)
    m = result.manifest
    if m is None:  # other processes' units are still to do: the last one to finish writes the manifest
        names = source.units()
        left = [names[u] for u in result.remaining]
        print(
            f"fluid prepare: rank {rank} of {world} finished its {result.units} unit(s); {len(left)} unit(s) of "
            f"rank(s) {sorted({u % world for u in result.remaining})} remain ({', '.join(left[:10])}"
            f"{', ...' if len(left) > 10 else ''}); the process that finishes last writes manifest.json",
            file=sys.stderr,
        )
        print(
            json.dumps(
                {
                    "cache": str(args.out),
                    "rank": rank,
                    "world": world,
                    "done": False,
                    "records": result.records,
                    "written": result.written,
                    "remaining_units": len(left),
                    "seconds": round(result.seconds, 2),
                    "images_per_s": round(result.images_per_s, 1),
                }
            )
        )
        return 0
    print(
        json.dumps(
            {
                "cache": str(args.out),
                **m["counts"],
                "skipped_by_reason": m["skipped"],
                "fixed_by_kind": m["fixed"],
                "tokenizer": m["tokenizer"]["identity"],
                "text_encoder": m["text_encoder"]["identity"],
                "seconds": round(result.seconds, 2),
                "images_per_s": round(result.images_per_s, 1),
            }
        )
    )
    return 0
