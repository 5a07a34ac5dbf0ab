"""Sampling speed of the four variants at the same model size, and the KV cache's speedup
over recomputing the prefix, measured side by side in one run.

    python benchmarks/sampling.py --preset shapes-small --threads 1 \
        --out benchmarks/results/sampling.json

Per variant: images/s and per-image latency (random-order steps = min(64, tokens); CFG on;
100 diffusion-head steps for continuous tokens). Raster variants also at ``--long-tokens``
(default 256) with the cache and with prefix recomputation; continuous-raster once more
with one head step, which isolates the backbone (the head's cost does not change with the
cache). Weights are random: speed does not depend on them (the same number of steps and
tokens is always generated).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch
from common import emit  # benchmarks/common.py

from fluid.config import VARIANTS, SampleConfig, get_preset
from fluid.model import Generator
from fluid.sample.generate import Sampler
from fluid.sample.rng import ImageRNG


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def bench(
    variant: str, preset: str, num_tokens: int, batch: int, repeats: int, head_steps: int, use_cache: bool = True
) -> dict:
    cfg = get_preset(preset, variant=variant)
    cfg.model = dataclasses.replace(cfg.model, num_tokens=num_tokens)
    torch.manual_seed(0)
    model = Generator(cfg.model, cfg.text).eval()
    emb, mask = torch.randn(batch, 12, cfg.text.dim), torch.ones(batch, 12, dtype=torch.bool)
    scfg = SampleConfig(cfg=3.0, batch_size=batch)
    sampler = Sampler(model)  # one per model, as the pipeline keeps it
    seconds = timed(
        lambda: sampler.generate(
            emb, mask, scfg, ImageRNG.for_images(0, range(len(emb))), head_steps=head_steps, use_cache=use_cache
        ),
        repeats,
    )
    return {
        "variant": variant,
        "tokens": num_tokens,
        "kv_cache": use_cache if cfg.model.order.value == "raster" else None,
        "batch": batch,
        "seconds_per_batch": round(seconds, 4),
        "images_per_s": round(batch / seconds, 3),
        "latency_per_image_s": round(seconds / batch, 5),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="shapes-small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokens", type=int, default=None, help="default: the preset's token count")
    p.add_argument("--long-tokens", type=int, default=256)
    p.add_argument("--long-batch-size", type=int, default=4)
    p.add_argument("--head-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokens = args.tokens or get_preset(args.preset).model.num_tokens
    rows = [bench(v, args.preset, tokens, args.batch_size, args.repeats, args.head_steps) for v in VARIANTS]
    cache = []
    for v in ("discrete-raster", "continuous-raster"):
        with_cache = bench(v, args.preset, args.long_tokens, args.long_batch_size, 1, args.head_steps, True)
        without = bench(v, args.preset, args.long_tokens, args.long_batch_size, 1, args.head_steps, False)
        cache.append(
            {
                "variant": v,
                "tokens": args.long_tokens,
                "with_cache_s": with_cache["seconds_per_batch"],
                "recompute_s": without["seconds_per_batch"],
                "speedup": round(without["seconds_per_batch"] / with_cache["seconds_per_batch"], 2),
            }
        )
    # The continuous variant's end-to-end time is dominated by the diffusion head (head_steps
    # MLP calls per token, the same with or without the cache); with one head step the
    # ratio is the backbone's own speedup.
    with_cache = bench("continuous-raster", args.preset, args.long_tokens, args.long_batch_size, 1, 1, True)
    without = bench("continuous-raster", args.preset, args.long_tokens, args.long_batch_size, 1, 1, False)
    cache.append(
        {
            "variant": "continuous-raster",
            "tokens": args.long_tokens,
            "head_steps": 1,
            "with_cache_s": with_cache["seconds_per_batch"],
            "recompute_s": without["seconds_per_batch"],
            "speedup": round(without["seconds_per_batch"] / with_cache["seconds_per_batch"], 2),
        }
    )
    result = {
        "benchmark": "sampling",
        "preset": args.preset,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "head_steps": args.head_steps,
        "variants": rows,
        "kv_cache": cache,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
