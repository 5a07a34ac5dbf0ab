"""``fluid eval``: its flags, and the evaluation of one checkpoint or of several shipped variants
(one folder each and a ``summary.md``) through :func:`fluid.eval.run.run_eval`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from fluid.commands._common import sample_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: ShapesEval, shapes_fd, validation loss, FID, GenEval export"
    )
    add_eval_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    t0 = time.perf_counter()
    records = eval_from_args(args)
    print(f"evaluated {len(records)} model(s) in {time.perf_counter() - t0:.1f} s -> {args.out}", file=sys.stderr)
    return 0


def add_eval_args(p: argparse.ArgumentParser) -> None:
    from fluid.config import VARIANTS
    from fluid.eval.run import DEFAULT_METRICS, EvalOptions, Metric

    d = EvalOptions()
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint or run folder (default: the shipped model of --variant)"
    )
    p.add_argument(
        "--variant",
        nargs="+",
        default=["continuous-random"],
        choices=[*VARIANTS, "all"],
        help="shipped model(s) to evaluate when no --checkpoint is given; several write one folder each",
    )
    p.add_argument("--out", required=True, help="output folder (metrics.json, report.md, grids)")
    p.add_argument(
        "--metrics", nargs="+", default=[m.value for m in DEFAULT_METRICS], choices=[m.value for m in Metric]
    )
    p.add_argument("--prompts-per-family", type=int, default=d.prompts_per_family)
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds per prompt (0..K-1)")
    p.add_argument("--strict", action="store_true", help="ShapesEval: also fail images with extra objects")
    p.add_argument("--val-size", type=int, default=d.val_size, help="validation pairs (val split)")
    p.add_argument("--detector-per-family", type=int, default=d.detector_per_family)
    p.add_argument(
        "--fd-reference", type=int, default=d.fd_reference, help="real renders behind the shapes_fd reference"
    )
    p.add_argument("--inception-weights", default=None, help="torch-fidelity Inception-v3 weights file (FID)")
    p.add_argument("--coco-captions", default=None, help="captions_val2014.json")
    p.add_argument("--coco-images", default=None, help="the val2014 images folder")
    p.add_argument("--coco-size", type=int, default=d.coco_size)
    p.add_argument("--coco-seed", type=int, default=d.coco_seed)
    p.add_argument("--geneval-metadata", default=None, help="GenEval's evaluation_metadata.jsonl")
    p.add_argument("--geneval-samples", type=int, default=d.geneval_samples)
    p.add_argument("--geneval-out", default=None)
    p.add_argument(
        "--geneval-overwrite",
        action="store_true",
        help="replace a GenEval export made by another model or with other sampling settings",
    )
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default ~/.cache/fluid/fd-stats)")
    sample_args(
        p, "cfg", "cfg_schedule", "temperature", "steps", "head_sampler", "batch_size", "head_steps", "guidance_refresh"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")


def eval_from_args(args: argparse.Namespace) -> dict:
    """Run ``fluid eval``; several variants get a subfolder each and a ``summary.md``."""
    import torch

    from fluid.config import VARIANTS
    from fluid.eval.run import EvalOptions, run_eval, summary_row

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    names = {f.name for f in dataclasses.fields(EvalOptions)}
    options = {k: v for k, v in vars(args).items() if k in names}
    if args.checkpoint:
        targets = {Path(args.out): args.checkpoint}
    else:
        variants = list(VARIANTS) if "all" in args.variant else list(dict.fromkeys(args.variant))
        targets = {Path(args.out) / v if len(variants) > 1 else Path(args.out): v for v in variants}
    records = {}
    for out, target in targets.items():
        rec = run_eval(target, out, args.metrics, progress=not args.no_progress, **options)
        records[rec["checkpoint"]["name"]] = rec
        print(
            json.dumps({"checkpoint": rec["checkpoint"]["name"], **summary_row(rec), "report": rec["files"]["report"]})
        )
    if len(records) > 1:
        write_summary(Path(args.out), records)
    return records


def write_summary(out: Path, records: dict[str, dict]) -> None:
    from fluid.eval.run import summary_row

    rows = {name: summary_row(r) for name, r in records.items()}
    cols = list(dict.fromkeys(k for r in rows.values() for k in r))
    lines = ["| model | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for name, r in rows.items()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
