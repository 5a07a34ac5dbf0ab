"""The output folder of ``fluid prepare`` (:mod:`fluid.data.prepare`), shared by the processes
that prepare it: its plan, files written atomically, and the manifest built from the per-shard
stats files once every unit is done. Layout: :mod:`fluid.data.cache`.

Every file is written under a temporary name of its own and renamed, so a reader never sees
half a file and two processes writing the same file (the manifest) do not mix their bytes.
``plan.json`` is created once: of processes starting together, one writes it and the others
compare theirs with it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from pathlib import Path

from fluid.data.cache import MANIFEST, PLAN, REPORT, stats_file
from fluid.files import atomic_write


class PrepareError(ValueError):
    """Preparation cannot go on: a bad record under ``--strict``, or a folder holding another preparation."""


def check_rank(rank, world) -> None:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a whole number >= 1 (how many processes prepare the folder), not {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be a whole number in [0, {world - 1}] for world {world}, not {rank!r}")


def process_rank(rank: int | None = None, world: int | None = None, environ=None) -> tuple[int, int]:
    """(rank, world) of this process: the given values, else torchrun's ``RANK`` and
    ``WORLD_SIZE``, else (0, 1). Raises ValueError on values that do not fit together."""
    env = os.environ if environ is None else environ

    def from_env(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ValueError(f"environment variable {name}={env[name]!r} is not a whole number") from None

    rank = from_env("RANK") if rank is None and "RANK" in env else rank
    world = from_env("WORLD_SIZE") if world is None and "WORLD_SIZE" in env else world
    if rank is None and world not in (None, 1):
        raise ValueError(f"world {world} needs this process's rank (--rank 0..{world - 1}, or RANK)")
    if world is None and rank is not None:
        raise ValueError(f"rank {rank} needs the number of processes (--world, or WORLD_SIZE)")
    rank, world = (0 if rank is None else rank), (1 if world is None else world)
    check_rank(rank, world)
    return rank, world


def write_json(path: Path, obj) -> None:
    # ASCII JSON: keys and details may hold undecodable bytes (lone surrogates), which UTF-8 cannot write.
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1) + "\n"))


def open_folder(out: Path, plan: dict, overwrite: bool) -> bool:
    """Create or check the output folder; True if it already holds this finished cache."""
    ours = lambda p: p.name in (MANIFEST, PLAN, REPORT) or p.name.startswith("shard-")  # noqa: E731
    plan = json.loads(json.dumps(plan))  # as it reads back
    out.mkdir(parents=True, exist_ok=True)
    old = _read_plan(out)
    # Another process starting at the same time may be creating plan.json: its temporary file does not count.
    if old is None and not overwrite and any(not _plan_tmp(p) for p in out.iterdir()):
        old = _read_plan(out)
        if old is None:
            raise PrepareError(f"{out} is not empty and holds no preparation; choose an empty or new --out")
    if old is not None and old != plan and not overwrite:
        raise _mismatch(out, old, plan)
    if overwrite and old != plan:
        for p in out.iterdir():
            if ours(p) and p.is_file():
                p.unlink()
        old = None
    if old is None and not _create_plan(out, plan):
        old = _read_plan(out)  # created by a process that started at the same time
        if old != plan:
            raise _mismatch(out, old, plan)
    return (out / MANIFEST).is_file()


def _read_plan(out: Path) -> dict | None:
    try:
        return json.loads((out / PLAN).read_text())
    except FileNotFoundError:
        return None


def _plan_tmp(p: Path) -> bool:
    return p.name.startswith(f"{PLAN}.") and p.name.endswith(".tmp")


def _mismatch(out: Path, old: dict, plan: dict) -> PrepareError:
    diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
    return PrepareError(
        f"{out} holds another preparation (differs in: {', '.join(diff)}); "
        f"choose another --out, or pass --overwrite to replace it"
    )


def _create_plan(out: Path, plan: dict) -> bool:
    """Write ``plan.json`` unless it exists (atomically: of processes starting together, one
    writes it); False if it existed."""
    tmp = out / f"{PLAN}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(plan, indent=1) + "\n")
    try:
        os.link(tmp, out / PLAN)  # fails if it exists, never replaces
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if (out / PLAN).exists():
            return False
        os.replace(tmp, out / PLAN)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def finish(out: Path, plan: dict) -> dict:
    """Build ``manifest.json`` and ``report.jsonl`` from the per-shard stats (in unit order)."""
    shards, skipped, fixed = [], Counter(), Counter()
    lines = []
    for u, name in enumerate(plan["units"]):
        s = json.loads((out / stats_file(u)).read_text())
        shards.append(
            {k: s[k] for k in ("file", "unit", "seen", "count", "train", "val")} | {"skipped": len(s["skipped"])}
        )
        for key, reason, detail in s["skipped"]:
            skipped[reason] += 1
            lines.append({"key": key, "unit": name, "status": "skipped", "reason": reason, "detail": detail})
        for key, fixes in s["fixed"]:
            fixed.update(fixes)
            lines.append({"key": key, "unit": name, "status": "fixed", "fixes": fixes})
    counts = {
        "seen": sum(s["seen"] for s in shards),
        "written": sum(s["count"] for s in shards),
        "train": sum(s["train"] for s in shards),
        "val": sum(s["val"] for s in shards),
        "skipped": sum(skipped.values()),
        "fixed": sum(1 for ln in lines if ln["status"] == "fixed"),
    }
    manifest = {
        **plan,
        "counts": counts,
        "skipped": dict(sorted(skipped.items())),
        "fixed": dict(sorted(fixed.items())),
        "report": REPORT,
        "shards": shards,
    }
    try:
        atomic_write(out / REPORT, lambda p: p.write_text("".join(json.dumps(ln) + "\n" for ln in lines)))
        write_json(out / MANIFEST, manifest)
    except FileNotFoundError:
        # Another process finishing at the same time wrote both files (the same ones), then
        # removed the temporary files, ours among them.
        if not (out / MANIFEST).is_file():
            raise
    # Leftovers of a run killed mid-write: our atomic writes' ``*.tmp`` and the ``.tmpXXXXXX``
    # files safetensors writes a shard into before renaming it.
    for tmp in [*out.glob("*.tmp"), *out.glob(".tmp*")]:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
    return manifest
