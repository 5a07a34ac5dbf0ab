"""A load test of a running ``fluid serve``: N clients submit at once and follow their
requests' event streams to the end, as the page does.

A request counts as served when its stream ends with status ``done`` and has brought at
least one frame and one final image per model; anything else (an HTTP error, a stream cut
short, a missing image) is a failure, and a request with no ``end`` at all is lost.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

PROMPTS = (
    "a red square",
    "a blue circle",
    "two triangles",
    "a green cross left of a yellow circle",
    "three circles",
    "a purple cross and an orange circle",
)


@dataclass
class Outcome:
    index: int
    status: str = "lost"  # done / cancelled / error / http-<code> / lost
    latency_s: float | None = None  # submit -> end event, as the client saw it
    first_frame_s: float | None = None  # submit -> first frame, as the client saw it
    frames: int = 0
    images: int = 0
    models: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.images == len(self.models) and self.frames >= len(self.models)


def read_events(response):
    """(event, data) pairs from a server-sent event stream."""
    kind, data = "message", []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def submit(base_url: str, fields: dict, timeout: float = 30, client: str = "") -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{base_url}/api/jobs",
        data=json.dumps(fields).encode(),
        headers={"content-type": "application/json", "x-fluid-client": client},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def run_one(
    base_url: str, index: int, fields: dict, timeout: float = 300, start: threading.Barrier | None = None
) -> Outcome:
    out = Outcome(index)
    if start is not None:
        start.wait()
    t0 = time.perf_counter()
    try:
        status, reply = submit(base_url, fields, timeout, client=f"load-{index}")  # one user each
        if status != 202:
            out.status, out.error = f"http-{status}", reply.get("error")
            return out
        out.models = reply["models"]
        with urllib.request.urlopen(base_url + reply["events"], timeout=timeout) as stream:
            for kind, data in read_events(stream):
                if kind == "frame":
                    out.frames += 1
                    if out.first_frame_s is None:
                        out.first_frame_s = time.perf_counter() - t0
                elif kind == "image":
                    out.images += 1
                elif kind == "failure":
                    out.error = data.get("message")
                elif kind == "end":
                    out.status = data["status"]
                    out.latency_s = time.perf_counter() - t0
                    break
    except (OSError, ValueError) as e:  # connection refused / reset / timeout, or a garbled reply
        out.error = f"{type(e).__name__}: {e}"
    return out


def load_test(
    base_url: str,
    requests: int = 50,
    concurrency: int | None = None,
    model: str | None = None,
    timeout: float = 300,
    **fields,
) -> dict:
    """``requests`` requests from ``concurrency`` clients (default: all at once); a summary
    with every request's outcome. ``fields``: form fields sent with each (seed = its index)."""
    concurrency = concurrency or requests
    barrier = threading.Barrier(min(concurrency, requests))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [
            pool.submit(
                run_one,
                base_url,
                i,
                {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, **({"model": model} if model else {}), **fields},
                timeout,
                barrier if i < concurrency else None,
            )
            for i in range(requests)
        ]
        outcomes = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
    first = [o.first_frame_s for o in outcomes if o.first_frame_s is not None]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "served": sum(o.ok for o in outcomes),
        "failures": sum(not o.ok for o in outcomes),
        "lost": sum(o.status == "lost" for o in outcomes),
        "latency_s": _stats(latencies),
        "first_frame_s": _stats(first),
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests / wall, 2),
        "outcomes": [asdict(o) | {"ok": o.ok} for o in outcomes],
    }


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    return {
        "median": round(statistics.median(xs), 3),
        "p90": round(xs[int(0.9 * (len(xs) - 1))], 3),
        "min": round(xs[0], 3),
        "max": round(xs[-1], 3),
    }
