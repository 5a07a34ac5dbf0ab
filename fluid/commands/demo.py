"""``fluid demo``: the demo page from the shipped models."""

from __future__ import annotations

import time
from pathlib import Path

from fluid.commands._common import pick_device, set_threads
from fluid.config import VARIANTS


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="generate the demo page from the shipped models")
    p.add_argument("--out", default="demo")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.sample.demo import run_demo

    set_threads(args.threads)
    t0 = time.perf_counter()
    record = run_demo(args.out, args.variants, device=pick_device(args.device))
    print(f"demo written to {Path(args.out) / 'index.html'} in {time.perf_counter() - t0:.1f} s")
    for v, e in record["variants"].items():
        print(f"  {v}: {e['grid']}, {e.get('progress', '')} ({e['seconds']} s)")
    return 0
