"""Real-data throughput: preparation (images/s), and training from the cache vs from raw
images, measured side by side in one run.

    python benchmarks/data_throughput.py --images 512 --out benchmarks/results/data_throughput.json

Builds a folder of JPEG photos with unique captions (shapes scenes at random sizes around
320x240; or ``--folder`` for your own folder + JSONL), prepares a cache with ``--workers``
decoding processes, then trains the same generator twice per repeat, alternating: once
streaming raw images (decode + crop in DataLoader workers, tokenizer and text encoder in the
training loop, as ``data.source=folder`` does) and once from the cache (``data.source=cache``).
Training throughput is the trainer's own images/s over the second half of the steps, so
start-up and the first batches are not counted. The raw run's text encoder has no memo:
real captions are unique, so a memo would not help it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit  # benchmarks/common.py
from PIL import Image

from fluid.assets import tokenizer_path
from fluid.config import VARIANTS, apply_overrides, get_preset
from fluid.data.images import ImagePolicy
from fluid.data.prepare import PrepareOptions, prepare
from fluid.data.sources import FolderSource
from fluid.shapes.dataset import ShapesDataset
from fluid.text.encoders import build_text_encoder
from fluid.tokenizers.load import load_tokenizer
from fluid.train.trainer import Trainer


def make_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs of shapes scenes at random sizes (short side 200-300, aspect up to 1.6)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = ShapesDataset("train", 256)
    lines = []
    for start in range(0, n, 64):
        idx = list(range(start, min(n, start + 64)))
        images, captions = data.batch(idx)
        arr = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (b, 256, 256, 3)
        for i, a, c in zip(idx, arr, captions):
            short, aspect = int(rng.integers(200, 300)), float(rng.uniform(1.0, 1.6))
            size = (int(short * aspect), short) if i % 2 else (short, int(short * aspect))
            Image.fromarray(a).resize(size, Image.Resampling.BICUBIC).save(
                folder / "images" / f"{i:06d}.jpg", quality=90
            )
            lines.append(
                json.dumps({"image": f"images/{i:06d}.jpg", "caption": f"{c}, photo {i} of the benchmark set"})
            )
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def train_rate(cfg, run: Path, tokenizer, text_encoder, steps: int) -> float:
    """Images/s over the second half of ``2 * steps`` optimisation steps."""
    cfg = apply_overrides(
        cfg, {"train.steps": 2 * steps, "train.log_every": steps, "train.val_every": 0, "train.ckpt_every": 10**9}
    )
    trainer = Trainer(cfg, run, tokenizer, text_encoder, show_progress=False)
    trainer.fit()
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return [r["images_per_s"] for r in records if "images_per_s" in r][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512, help="photos to generate (ignored with --folder)")
    p.add_argument("--folder", default=None, help="your own folder + JSONL instead of generated photos")
    p.add_argument("--preset", default="shapes-small", help="tokenizer, text encoder and resolution come from it")
    p.add_argument("--presets", nargs="+", default=["debug", "shapes-small"], help="generators to train")
    p.add_argument("--variant", default="continuous-random", choices=VARIANTS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="measured steps per run (after as many warm-up steps)")
    p.add_argument("--repeats", type=int, default=2, help="raw / cache runs, alternating")
    p.add_argument("--workers", type=int, default=2, help="prepare decoders and training DataLoader workers")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on small shared CPUs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="fluid-data-bench-"))
    folder = Path(args.folder) if args.folder else make_photos(tmp / "photos", args.images)

    cfg = get_preset(args.preset, variant=args.variant)
    tokenizer = (
        load_tokenizer(
            cfg.tokenizer.path or tokenizer_path(cfg.model.token_type),
            kind=cfg.tokenizer.kind,
            patch_size=cfg.tokenizer.patch_size,
        )
        .to(device)
        .eval()
    )
    text_encoder = build_text_encoder(cfg.text, device=device)
    policy = ImagePolicy.from_data_config(cfg.data)

    source = FolderSource(folder, shard_size=256)
    result = prepare(
        source,
        tmp / "cache",
        tokenizer,
        text_encoder,
        policy,
        PrepareOptions(workers=args.workers, batch_size=64, progress=sys.stderr.isatty()),
    )
    counts = result.manifest["counts"]
    prep = {
        "images_per_s": round(result.images_per_s, 2),
        "seconds": round(result.seconds, 2),
        "records": result.records,
        "written": counts["written"],
        "skipped": counts["skipped"],
        "workers": args.workers,
        "views_encoded_per_image": len(result.manifest["views"]),
    }
    print(f"prepare: {prep['images_per_s']} images/s ({result.records} in {prep['seconds']} s)", file=sys.stderr)

    data = {"data.num_workers": args.workers, "data.flip": True, "train.batch_size": args.batch_size}
    train = {}
    for preset in args.presets:
        pcfg = get_preset(preset, variant=args.variant, overrides={"data.resolution": cfg.data.resolution})
        raw_cfg = apply_overrides(pcfg, {**data, "data.source": "folder", "data.path": str(folder)})
        cache_cfg = apply_overrides(pcfg, {**data, "data.source": "cache", "data.path": str(tmp / "cache")})
        rates: dict[str, list[float]] = {"raw": [], "cache": []}
        for r in range(args.repeats):
            for name, c in (("raw", raw_cfg), ("cache", cache_cfg)):
                ips = train_rate(c, tmp / f"run-{preset}-{name}-{r}", tokenizer, text_encoder, args.steps)
                rates[name].append(round(ips, 2))
                print(f"{preset}: train from {name}: {ips:.1f} images/s", file=sys.stderr)
        raw, cache = statistics.median(rates["raw"]), statistics.median(rates["cache"])
        train[preset] = {
            "raw_images_per_s": raw,
            "cache_images_per_s": cache,
            "cache_speedup": round(cache / raw, 2),
            "raw_runs": rates["raw"],
            "cache_runs": rates["cache"],
        }
    out = {
        "benchmark": "data_throughput",
        "device": str(device),
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "variant": args.variant,
        "batch_size": args.batch_size,
        "resolution": cfg.data.resolution,
        "tokenizer": tokenizer.identity(),
        "text_encoder": text_encoder.identity(),
        "dataset": {
            "folder": folder.name if args.folder is None else str(folder),
            "generated": args.folder is None,
            "records": counts["seen"],
        },
        "prepare": prep,
        "train": train,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
