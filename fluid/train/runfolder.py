"""The run folder's files that training keeps beside its checkpoints: the folder checked
writable up front, and ``metrics.jsonl`` cut back to a resumed checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fluid.checkpoint import RunWriteError, write_failure
from fluid.files import atomic_write


def make_writable(run_dir: Path) -> None:
    """Create the run folder and check that files can be written in it: better to fail now
    than at the first checkpoint, hours later."""
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunWriteError(write_failure(f"in the run folder {run_dir}", e)) from e


def forget_metrics_after(path: Path, step: int) -> None:
    """Drop ``metrics.jsonl`` lines past the checkpoint (a killed run logged them; the
    resumed run logs them again), and a last line cut short by the kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
