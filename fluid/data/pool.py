"""Decoding in worker processes, delivered in a fixed order.

Worker ``i`` of ``P`` decodes units ``i, i + P, i + 2P, ...`` of the list it is given and
sends chunks of decoded records through its own bounded queue; the consumer reads unit
``j`` from worker ``j % P``. So the result is in unit order whatever the timing, each
worker runs ahead by at most a few chunks (bounded memory), and one slow image never
reorders anything. ``workers=0`` decodes in the calling process.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import sys
import traceback
from collections.abc import Iterator

from fluid.data.images import ImagePolicy, decode_record
from fluid.data.records import Decoded, Source

Chunk = list  # list[Decoded | Rejected], at most ``chunk_size`` Decoded ones


def decode_unit(source: Source, unit: int, policy: ImagePolicy, chunk_size: int) -> Iterator[Chunk]:
    """The unit's records decoded, in chunks of ``chunk_size`` good ones (plus the bad ones
    met on the way). Consecutive records sharing an image (COCO captions) decode it once."""
    chunk: Chunk = []
    good = 0
    last_id, last = None, None
    for rec in source.read(unit):
        if rec.error is None and rec.image_id and rec.image_id == last_id and isinstance(last, Decoded):
            item = decode_record(rec.__class__(rec.key, rec.caption, array=last.image, image_id=rec.image_id), policy)
            if isinstance(item, Decoded):
                item.fixes = list(last.fixes)
        else:
            item = decode_record(rec, policy)
            last_id, last = rec.image_id, item
        chunk.append(item)
        if isinstance(item, Decoded):
            good += 1
            if good == chunk_size:
                yield chunk
                chunk, good = [], 0
    if chunk:
        yield chunk


def _worker(source: Source, units: list[int], policy: ImagePolicy, chunk_size: int, out) -> None:
    if "torch" in sys.modules:  # the shapes source renders with torch: one thread per worker
        import torch

        torch.set_num_threads(1)
    unit = None
    try:
        for unit in units:
            for chunk in decode_unit(source, unit, policy, chunk_size):
                out.put(("chunk", unit, chunk))
            out.put(("end", unit, None))
    except BaseException:
        out.put(("error", unit, traceback.format_exc()))


def decoded(
    source: Source, units: list[int], policy: ImagePolicy, workers: int = 2, chunk_size: int = 64, queue_size: int = 4
) -> Iterator[tuple[int, Chunk | None]]:
    """``(unit, chunk)`` for every chunk of every unit, then ``(unit, None)`` at the unit's end;
    units in the given order."""
    if workers <= 0 or len(units) == 0:
        for unit in units:
            for chunk in decode_unit(source, unit, policy, chunk_size):
                yield unit, chunk
            yield unit, None
        return
    # Fork starts in milliseconds (as DataLoader workers do); the workers only run Pillow and
    # numpy (and torch for the shapes source), never the parent's models or threads.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    P = min(workers, len(units))
    queues = [ctx.Queue(maxsize=queue_size) for _ in range(P)]
    procs = [
        ctx.Process(target=_worker, args=(source, units[i::P], policy, chunk_size, queues[i]), daemon=True)
        for i in range(P)
    ]
    for p in procs:
        p.start()
    try:
        for j, unit in enumerate(units):
            q, proc = queues[j % P], procs[j % P]
            while True:
                try:
                    kind, u, payload = q.get(timeout=2.0)
                except queue_mod.Empty:
                    if not proc.is_alive():
                        raise RuntimeError(
                            f"decode worker {j % P} died (exit code {proc.exitcode}) while decoding unit {unit}"
                        ) from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"decode worker {j % P} failed on unit {u}:\n{payload}")
                if u != unit:  # cannot happen with the static assignment above
                    raise RuntimeError(f"decode worker {j % P} sent unit {u}, expected {unit}")
                if kind == "end":
                    yield unit, None
                    break
                yield unit, payload
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
        for q in queues:
            q.cancel_join_thread()
            q.close()
