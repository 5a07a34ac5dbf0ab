"""``fluid train``: train a generator, or resume a run; exit 128 + signal when a signal stopped it."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from fluid.commands._common import build_config, config_args
from fluid.config import FluidConfig, LRSchedule, apply_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a generator")
    config_args(p)
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="the global batch (over every process)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    p.add_argument("--text-embeddings", default=None, help="precomputed caption embeddings (safetensors)")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--pool-cache",
        default=None,
        help="folder that keeps encoded shapes pools (data.pool_encoded) for runs with the same tokenizer and pool",
    )
    p.set_defaults(func=run)


def _text_encoder(cfg: FluidConfig, device: str, embeddings: str | None = None):
    from fluid.train.text_side import training_text_encoder

    return training_text_encoder(cfg, device, embeddings)


def run(args) -> int:
    from fluid import checkpoint as ckpt
    from fluid.tokenizers.load import load_tokenizer, resolve_tokenizer
    from fluid.train.distributed import setup, teardown
    from fluid.train.trainer import Trainer

    out = Path(args.out)
    if args.resume:
        cfg = ckpt.read_config(out)
        cfg = apply_overrides(cfg, args.set)
        if args.steps is not None and args.steps != cfg.train.steps and cfg.lr_schedule != LRSchedule.CONSTANT:
            print(
                f"note: --steps {args.steps} changes the {cfg.lr_schedule.value} learning-rate schedule, which the "
                f"run so far followed for {cfg.train.steps} steps: the result will differ from an uninterrupted "
                f"{args.steps}-step run",
                file=sys.stderr,
            )
    else:
        cfg = build_config(args)
    shortcuts = {"train.steps": args.steps, "train.batch_size": args.batch_size}
    if args.tokenizer:
        shortcuts["tokenizer.path"] = str(Path(args.tokenizer).resolve())
    cfg = apply_overrides(cfg, {k: v for k, v in shortcuts.items() if v is not None})
    dist = setup(args.device, cfg.train.dist_timeout_s)
    tokenizer = load_tokenizer(resolve_tokenizer(cfg), kind=cfg.tokenizer.kind, patch_size=cfg.tokenizer.patch_size)
    text_encoder = _text_encoder(cfg, dist.device, args.text_embeddings)
    trainer = Trainer(cfg, out, tokenizer, text_encoder, resume=args.resume, dist=dist, pool_cache=args.pool_cache)
    if dist.is_main:
        n = sum(p.numel() for p in trainer.model.parameters())
        print(
            f"training {cfg.model.variant} ({cfg.preset}, {n / 1e6:.2f}M parameters) on {dist.device} "
            f"x{dist.world} -> {out}",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    last = trainer.fit()
    if dist.is_main:
        summary = {
            "run": str(out),
            "variant": cfg.model.variant,
            "steps": trainer.step,
            "seconds": round(time.perf_counter() - t0, 1),
            **last,
        }
        if trainer.stopped_by:
            summary["stopped_by"] = trainer.stopped_by
            print(
                f"stopped by {trainer.stopped_by} at step {trainer.step} of {cfg.train.steps}, checkpoint saved; "
                f"continue with: fluid train --out {out} --resume",
                file=sys.stderr,
            )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))
    teardown()
    if trainer.stopped_by:
        # The shell's convention (128 + signal number) tells a job script that the run did
        # not finish, though it stopped cleanly.
        return 128 + getattr(signal, trainer.stopped_by, signal.SIGTERM)
    return 0
