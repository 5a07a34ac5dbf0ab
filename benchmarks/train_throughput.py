"""Training throughput of a preset (images/s), fp32 and bf16 side by side in one run.

    python benchmarks/train_throughput.py --preset shapes-small --variant continuous-random \
        --batch-size 64 --steps 20 --out benchmarks/results/train_throughput.json

Times full optimisation steps on pre-encoded random tokens and text (the generator's cost
alone: tokenizer and text encoder excluded), after warm-up steps. Also reports the matmul
FLOP rate from the config's FLOP count and, for reference, a plain matmul's rate in the
same precision (the machine's practical peak).
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import nullcontext

import torch
from common import emit  # benchmarks/common.py

from fluid.config import VARIANTS, get_preset
from fluid.model import Generator
from fluid.scaling.flops import flops_per_image
from fluid.train.optim import build_optimizer


def matmul_peak(dtype, device, n=1024, reps=10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def measure(cfg, precision: str, batch: int, steps: int, warmup: int, device) -> dict:
    torch.manual_seed(0)
    model = Generator(cfg.model, cfg.text).to(device).train()
    opt = build_optimizer(model, cfg.train)
    m = cfg.model
    g = torch.Generator(device).manual_seed(0)
    shape = (batch, m.num_tokens, m.token_dim) if model.continuous else (batch, m.num_tokens)
    tokens = (
        torch.randn(shape, device=device) if model.continuous else torch.randint(0, m.vocab_size, shape, device=device)
    )
    emb, mask = (
        torch.randn(batch, 12, cfg.text.dim, device=device),
        torch.ones(batch, 12, dtype=torch.bool, device=device),
    )
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with ctx():
            loss = model(tokens, emb, mask, g)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ips = batch * steps / seconds
    flops = flops_per_image(m, cfg.text, text_len=12)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(dtype, device)
    return {
        "precision": precision,
        "images_per_s": round(ips, 2),
        "step_s": round(seconds / steps, 4),
        "model_tflops": round(ips * flops / 1e12, 4),
        "matmul_peak_tflops": round(peak / 1e12, 4),
        "fraction_of_peak": round(ips * flops / peak, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="shapes-small")
    p.add_argument("--variant", default="continuous-random", choices=VARIANTS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = get_preset(args.preset, variant=args.variant)
    device = torch.device(args.device)
    result = {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "variant": args.variant,
        "batch_size": args.batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in Generator(cfg.model, cfg.text).parameters()),
        "runs": [measure(cfg, prec, args.batch_size, args.steps, args.warmup, device) for prec in args.precisions],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
