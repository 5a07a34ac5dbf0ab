"""What a sweep will cost before it starts: per run, the images and training FLOPs still to
do and the expected wall time on this machine, so a user can size a study.

The time per image of a run comes, in this order, from

1. a finished run of the same sweep folder with the same model and precision, trained on this
   machine (CPU model, threads and device recorded in its attempts): its training seconds per
   image, and its evaluation seconds per evaluated step;
2. a probe: the trainer's own step timed on a random batch (``fluid.train.probe``), a few
   steps after a warm-up; evaluation is then not included (it is said so);
3. nothing (``--no-probe`` and no finished run alike): the time is left unknown.

A probe leaves out data loading and checkpoints, so a plan's wall time is a lower bound where it
rests on probes; a finished run's seconds include them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
from pathlib import Path

import torch

from fluid.config import FluidConfig
from fluid.runtime import machine
from fluid.scaling.compute import compute_summary
from fluid.scaling.sweep import RunSpec, Sweep

PROBE_STEPS, PROBE_WARMUP = 3, 1
PROBE_BATCH = 64
"""Images per probe step at most: the probe's images/s is taken as the run's (a larger batch
is slightly more efficient, so this errs toward a longer estimate)."""


@dataclasses.dataclass
class PlannedRun:
    name: str
    status: str
    """``done``, ``partial`` (checkpoints up to ``steps_done``) or ``new``."""
    steps_done: int
    steps: int
    batch_size: int
    images_left: int
    flops_left: float
    train_s: float | None
    """Expected training seconds still to go (None: unknown)."""
    eval_s: float | None
    """Expected evaluation seconds still to go (None: unknown or not included)."""
    source: str
    """Where the times come from: ``done-run <name>``, ``probe``, ``probe failed: <why>``, ``done`` or ``unknown``."""


@dataclasses.dataclass
class Plan:
    runs: list[PlannedRun]
    machine: dict

    @property
    def images_left(self) -> int:
        return sum(r.images_left for r in self.runs)

    @property
    def flops_left(self) -> float:
        return sum(r.flops_left for r in self.runs)

    @property
    def seconds(self) -> float | None:
        """Training plus known evaluation seconds; None if any pending run's time is unknown."""
        todo = [r for r in self.runs if r.status != "done"]
        if any(r.train_s is None for r in todo):
            return None
        return sum(r.train_s + (r.eval_s or 0.0) for r in todo)

    def to_dict(self) -> dict:
        return {
            "machine": self.machine,
            "images_left": self.images_left,
            "flops_left": self.flops_left,
            "seconds": self.seconds,
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }

    def format(self) -> str:
        lines = [
            f"{'run':40s} {'status':>9s} {'steps':>13s} {'images left':>12s} {'FLOPs left':>10s} "
            f"{'train':>9s} {'eval':>8s}  from"
        ]
        for r in self.runs:
            lines.append(
                f"{r.name[:40]:40s} {r.status:>9s} {f'{r.steps_done}/{r.steps}':>13s} {r.images_left:>12,d} "
                f"{r.flops_left:>10.2e} {_duration(r.train_s):>9s} {_duration(r.eval_s):>8s}  {r.source}"
            )
        todo = [r for r in self.runs if r.status != "done"]
        m = self.machine
        total = self.seconds
        when = _duration(total) if total is not None else "unknown (a run has no time: see 'from')"
        no_eval = [r.name for r in todo if r.eval_s is None]
        lines.append(
            f"plan: {len(todo)} of {len(self.runs)} runs to do, {self.images_left:,d} images, "
            f"{self.flops_left:.2e} training FLOPs, about {when} on {m['cpu']} "
            f"({m['threads']} thread{'s' if m['threads'] != 1 else ''}, {m['device']})"
            + (f"; evaluation not included for {len(no_eval)} run(s)" if no_eval and total is not None else "")
        )
        return "\n".join(lines)


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _key(cfg: FluidConfig) -> str:
    """Runs with this key train at the same speed per image."""
    d = cfg.to_dict()
    return json.dumps({"model": d["model"], "text": d["text"], "precision": d["train"]["precision"]}, sort_keys=True)


def _steps_done(folder: Path) -> int:
    from fluid import checkpoint as ckpt

    if not (folder / "latest").exists():
        return 0
    return int(ckpt.read_meta(folder).get("step", 0))


def _measured_rates(sweep: Sweep, out: Path, here: dict) -> dict[str, tuple[float, float | None, str]]:
    """Config key -> (train seconds per image, eval seconds per evaluated step, run name), from
    finished runs whose every attempt ran on this machine."""
    from fluid.scaling.identity import fitted_config
    from fluid.scaling.records import RunFolder

    rates = {}
    for run in sweep.runs:
        rec = RunFolder(out, run).read()
        if not rec or rec.get("status") != "done":
            continue
        attempts = rec.get("attempts", [])
        if not attempts or any(a.get("machine") != here for a in attempts):
            continue  # made elsewhere (or before machines were recorded): its seconds say nothing here
        train_s = sum(a.get("train_s", 0.0) for a in attempts)
        eval_s = sum(a.get("eval_s", 0.0) for a in attempts)
        cfg = fitted_config(sweep, run)
        images = run.steps * cfg.train.batch_size
        if train_s > 0 and images:
            rates.setdefault(_key(cfg), (train_s / images, eval_s / max(1, len(run.eval_steps)), run.name))
    return rates


def probe_seconds_per_image(cfg: FluidConfig, threads: int | None = None, device: str | None = None) -> float:
    """The trainer's step on a random batch: seconds per image."""
    from fluid.train.probe import train_once

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            row = train_once(
                cfg,
                cfg.train.precision,
                min(PROBE_BATCH, cfg.train.batch_size),
                PROBE_STEPS,
                PROBE_WARMUP,
                torch.device(device or "cpu"),
            )
    finally:
        torch.set_num_threads(old)
    return 1.0 / row["images_per_s"]


def make_plan(
    sweep: Sweep,
    out: str | Path,
    runs: list[RunSpec] | None = None,
    *,
    probe: bool = True,
    threads: int | None = None,
    device: str | None = None,
    launcher: str | None = None,
    echo=None,
) -> Plan:
    """The plan of ``runs`` (default: all of the sweep's) in the sweep folder ``out``.

    With a ``launcher`` (several processes per run) a probe in this one process says nothing
    about the run's speed: only finished runs give times then."""
    from fluid.scaling.identity import fitted_config, run_identity, same_identity
    from fluid.scaling.records import RunFolder

    out = Path(out)
    here = machine(threads, device)
    if launcher:
        here["launcher"] = shlex.join(shlex.split(launcher))  # as the runner records it
    rates = _measured_rates(sweep, out, here)
    probed: dict[str, tuple[float | None, str]] = {}
    planned = []
    for run in runs if runs is not None else sweep.runs:
        cfg = fitted_config(sweep, run)
        comp = compute_summary(cfg)
        folder = RunFolder(out, run)
        rec = folder.read()
        batch = cfg.train.batch_size
        if rec and not same_identity(rec.get("identity"), run_identity(sweep, run)):
            rec = None  # stale: refused, or redone from scratch with --redo-stale
        if rec and rec.get("status") == "done":
            planned.append(PlannedRun(run.name, "done", run.steps, run.steps, batch, 0, 0.0, 0.0, 0.0, "done"))
            continue
        done = min(_steps_done(folder.train), run.steps) if rec is not None or not folder.read() else 0
        images = (run.steps - done) * batch
        key = _key(cfg)
        per_image, eval_per_step, source = None, None, "unknown"
        if key in rates:
            per_image, eval_per_step, name = rates[key]
            source = f"done-run {name}"
        elif probe and not launcher:
            if key not in probed:
                if echo:
                    echo(f"  timing the trainer's step for {run.name} ...")
                try:
                    probed[key] = (probe_seconds_per_image(cfg, threads, device), "probe")
                except Exception as e:  # the run itself fails the same way, is recorded and the sweep goes on
                    probed[key] = (None, f"probe failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            per_image, source = probed[key]
        train_s = per_image * images if per_image is not None else None
        evals_left = len(run.eval_steps)  # evaluation runs after training, over every evaluated step
        eval_s = eval_per_step * evals_left if eval_per_step is not None else None
        planned.append(
            PlannedRun(
                run.name,
                "partial" if done else "new",
                done,
                run.steps,
                batch,
                images,
                comp["train_flops_per_image"] * images,
                train_s,
                eval_s,
                source,
            )
        )
    return Plan(planned, here)
