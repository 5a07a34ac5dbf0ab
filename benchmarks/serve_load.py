"""Load test of `fluid serve` on the shipped models: N clients submit at once on loopback and
follow their event streams to the end, as the page does; then one request alone, for the
time to first frame of an idle server.

    python benchmarks/serve_load.py --requests 50 --model discrete-raster \
        --out benchmarks/results/serve-load.json

Reports requests, failures (anything but a stream ending "done" with its frames and image),
lost requests (no end at all), latency (submit -> last event, as each client saw it:
mostly time spent waiting in the first-in first-out queue) and the time to first frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import urllib.request

import torch
from common import emit  # benchmarks/common.py

from fluid.config import VARIANTS
from fluid.serve.app import create_app, running_server
from fluid.serve.load import load_test, run_one
from fluid.serve.worker import ModelSet


def wait_loaded(url: str, n: int, timeout: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        with urllib.request.urlopen(url + "/healthz") as r:
            if len(json.loads(r.read())["loaded"]) == n:
                return time.perf_counter() - t0
        time.sleep(0.05)
    raise TimeoutError("models did not load")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=None, help="clients (default: one per request, all at once)")
    p.add_argument("--model", default="discrete-raster", choices=list(VARIANTS) + ["all"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    models = ModelSet.shipped()
    with running_server(create_app(models, max_pending=max(100, args.requests))) as url:
        up = time.perf_counter() - t0
        loaded = wait_loaded(url, len(models)) + up
        alone = run_one(url, -1, {"prompt": "a red square", "model": args.model})
        summary = load_test(url, requests=args.requests, concurrency=args.concurrency, model=args.model)
    outcomes = summary.pop("outcomes")
    emit(
        {
            "benchmark": "serve_load",
            "model": args.model,
            **summary,
            "idle_request": {
                "first_frame_s": round(alone.first_frame_s, 3),
                "latency_s": round(alone.latency_s, 3),
                "frames": alone.frames,
            },
            "server_up_s": round(up, 2),
            "models_loaded_s": round(loaded, 2),
            "problems": [o for o in outcomes if not o["ok"]][:5],
            "threads": args.threads,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
