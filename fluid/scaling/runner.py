"""Running a sweep: train every run, evaluate its checkpoints, collect one table.

Each run is a folder ``<out>/runs/<name>/``:

* ``run.json``     what made it (the full config, the data, tokenizer and text identities), its
                   status (``training``, ``evaluating``, ``done`` or ``failed`` with the error)
                   and the history of attempts;
* ``train/``       the run folder of ``fluid train`` (checkpoints, ``metrics.jsonl``);
* ``eval/step-N/`` ``fluid eval`` of the checkpoint at step N (``metrics.json``);
* ``train.log``, ``eval.log``: the commands' output.

Training and evaluation run as ``fluid`` subprocesses (optionally behind a launcher such as
``torchrun --nproc_per_node=8``), so a crash or an out-of-memory in one run is recorded and
the sweep goes on, and a killed sweep resumes where it stopped: a finished run is skipped
only if its recorded identity equals the current one; a run whose config or data changed
is refused (or archived and redone with ``redo_stale``); an interrupted run continues from
its latest checkpoint. ``jobs > 1`` runs several runs at once (small models sharing a GPU).

The results go to ``<out>/results.csv`` and ``results.json`` (one row per run and evaluated
step), rewritten after every run.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fluid.config import FluidConfig
from fluid.files import file_digest
from fluid.runtime import machine, resolve_precision
from fluid.scaling.compute import compute_summary
from fluid.scaling.identity import (
    differences,
    fitted_config,
    run_identity,
    same_identity,
    tokenizer_for,
    with_new_defaults,
)
from fluid.scaling.records import RunFolder, summarize_eval, write_results
from fluid.scaling.sweep import RunSpec, Sweep
from fluid.train.distributed import default_device

FORMAT = "fluid-sweep-run/1"


class StaleRunError(ValueError):
    """A run folder made by another config or other data than the sweep now asks for."""


# ----------------------------------------------------------------------------- one run


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _checkpoint_plan(run: RunSpec, cfg: FluidConfig) -> tuple[int, int]:
    """(ckpt_every, keep): checkpoints fall on every evaluated step, and often enough to
    resume a killed run without losing much; every one is kept until the run is evaluated."""
    every = math.gcd(*run.eval_steps, max(1, min(cfg.train.ckpt_every, run.steps)))
    return every, run.steps // every + 1


class Runner:
    def __init__(
        self,
        sweep: Sweep,
        out: str | Path,
        *,
        launcher: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        redo_stale: bool = False,
        python: str | None = None,
        echo=print,
    ):
        self.sweep, self.out = sweep, Path(out)
        self.launcher = shlex.split(launcher) if launcher else None
        self.device, self.threads, self.redo_stale = device, threads, redo_stale
        self.python = python or sys.executable
        self.echo = echo

    # -- commands ------------------------------------------------------------------------

    def _fluid(self, train: bool) -> list[str]:
        if train and self.launcher:
            return (
                [*self.launcher, "-m", "fluid.cli"]
                if self.launcher[0].endswith("torchrun")
                else [*self.launcher, self.python, "-m", "fluid.cli"]
            )
        return [self.python, "-m", "fluid.cli"]

    def _env(self) -> dict:
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def _call(self, cmd: list[str], log: Path) -> None:
        with open(log, "a") as f:
            f.write(f"\n$ {shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=self._env())
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"`{shlex.join(cmd[-6:])}` exited with {proc.returncode}:\n" + "\n".join(tail))

    # -- lifecycle -----------------------------------------------------------------------

    def prepare(self, folder: RunFolder, identity: dict) -> dict:
        """The run's record: new, continued, or refused / archived when stale."""
        record = folder.read()
        if record is not None and not same_identity(record.get("identity"), identity):
            diff = differences(with_new_defaults(record.get("identity", {})), identity)
            if not self.redo_stale:
                raise StaleRunError(
                    f"{folder.path} was made by another config or other data "
                    f"({'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}); "
                    f"pass --redo-stale to archive it and run again, or use another --out"
                )
            archive = self.out / "stale" / f"{folder.run.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            archive.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder.path), str(archive))
            self.echo(f"  archived the stale run to {archive}")
            record = None
        if record is not None:
            record["identity"] = identity  # the same run, recorded with today's full config
        if record is None and folder.path.exists() and any(folder.path.iterdir()):
            if (folder.train / "latest").exists():
                # A record lost to a kill, checkpoints intact: resuming needs the same config.
                from fluid import checkpoint as ckpt

                if ckpt.read_config(folder.train).to_dict() != identity["config"]:
                    raise StaleRunError(
                        f"{folder.train} holds checkpoints of another config; remove it or use another --out"
                    )
        folder.path.mkdir(parents=True, exist_ok=True)
        return record or {
            "format": FORMAT,
            "name": folder.run.name,
            "tags": folder.run.tags,
            "identity": identity,
            "status": "new",
            "attempts": [],
        }

    def train(self, folder: RunFolder, cfg: FluidConfig) -> None:
        from fluid import checkpoint as ckpt

        done = 0
        if (folder.train / "latest").exists():
            done = int(ckpt.read_meta(folder.train).get("step", 0))
        if done >= folder.run.steps:
            return
        cfg_path = folder.path / "config.json"
        cfg.save(cfg_path)
        args = ["train", "--out", str(folder.train), "--steps", str(folder.run.steps)]
        args += ["--resume"] if done else ["--config", str(cfg_path)]
        args += ["--pool-cache", str(self.out / "pool-cache")]  # a pool is encoded once per tokenizer
        tok = tokenizer_for(self.sweep, cfg)
        if tok and not done:
            args += ["--tokenizer", tok]
        if self.sweep.text_embeddings:
            args += ["--text-embeddings", self.sweep.text_embeddings]
        if self.device:
            args += ["--device", self.device]
        self._call([*self._fluid(train=True), *args], folder.path / "train.log")

    def evaluate(self, folder: RunFolder) -> dict[int, dict]:
        """``fluid eval`` of every evaluated step's checkpoint (skipping those already done
        for these very weights and options)."""
        results = {}
        opts = dict(self.sweep.eval)
        metrics = opts.pop("metrics", ["shapes_eval", "shapes_fd", "val_loss"])
        for step in folder.run.eval_steps:
            ckpt_dir = folder.train / f"step-{step:07d}"
            out = folder.path / "eval" / f"step-{step}"
            metrics_file = out / "metrics.json"
            if not ckpt_dir.exists():
                raise RuntimeError(f"{ckpt_dir} is missing: the checkpoint of an evaluated step was not kept")
            weights = file_digest(ckpt_dir / "ema.safetensors", 12)
            if metrics_file.exists():
                rec = json.loads(metrics_file.read_text())
                if (
                    rec.get("checkpoint", {}).get("weights_sha256") == weights
                    and rec.get("sweep_eval") == self.sweep.eval
                ):
                    results[step] = rec
                    continue
            args = ["eval", "--checkpoint", str(ckpt_dir), "--out", str(out), "--metrics", *metrics, "--no-progress"]
            for k, v in opts.items():
                args += [f"--{k.replace('_', '-')}", str(v)]
            if self.device:
                args += ["--device", self.device]
            if self.threads:
                args += ["--threads", str(self.threads)]
            self._call([*self._fluid(train=False), *args], folder.path / "eval.log")
            rec = json.loads(metrics_file.read_text())
            rec["sweep_eval"] = self.sweep.eval  # the options this evaluation answered
            metrics_file.write_text(json.dumps(rec, indent=2) + "\n")
            results[step] = rec
        return results

    def prune(self, folder: RunFolder) -> None:
        """Drop the checkpoints kept only for resuming; evaluated ones and ``latest`` stay."""
        keep = {f"step-{s:07d}" for s in folder.run.eval_steps}
        latest = (folder.train / "latest").resolve().name if (folder.train / "latest").exists() else None
        for p in folder.train.glob("step-*"):
            if p.name not in keep and p.name != latest:
                shutil.rmtree(p, ignore_errors=True)

    def execute(self, run: RunSpec) -> dict:
        """Train and evaluate one run; returns its record (status ``done`` or ``failed``)."""
        folder = RunFolder(self.out, run)
        identity = run_identity(self.sweep, run)
        record = self.prepare(folder, identity)
        if record["status"] == "done":
            self.echo(f"  {run.name}: done before, skipped")
            return record
        cfg = run.config()
        every, keep = _checkpoint_plan(run, cfg)
        cfg.train.ckpt_every, cfg.train.keep_checkpoints = every, keep
        if cfg.train.val_every:
            cfg.train.val_every = math.gcd(cfg.train.val_every, every) if cfg.train.val_every < run.steps else run.steps
        attempt = {"started": _now(), "machine": machine(self.threads, self.device)}  # plan.py reuses its seconds
        # What `precision: auto` means where this attempt trains (bf16 on CUDA and CPUs with native
        # bf16, else fp32): runs of one sweep on different machines can differ in it.
        attempt["precision"] = resolve_precision(cfg.train.precision, self.device or default_device()).value
        attempt["machine"].update({"launcher": shlex.join(self.launcher)} if self.launcher else {})
        record["attempts"].append(attempt)
        t0 = time.perf_counter()
        try:
            record["status"] = "training"
            folder.write(record)
            self.train(folder, cfg)
            attempt["train_s"] = round(time.perf_counter() - t0, 1)
            record["status"] = "evaluating"
            folder.write(record)
            t1 = time.perf_counter()
            evals = self.evaluate(folder)
            attempt["eval_s"] = round(time.perf_counter() - t1, 1)
            self.prune(folder)
            record["results"] = {str(s): summarize_eval(r) for s, r in evals.items()}
            record["compute"] = compute_summary(fitted_config(self.sweep, run))
            record["status"] = "done"
            record.pop("error", None)
        except (RuntimeError, OSError, ValueError) as e:
            record["status"], record["error"] = "failed", str(e)
            attempt["error"] = str(e)
        attempt["ended"] = _now()
        folder.write(record)
        return record

    def run_all(self, only: list[str] | None = None, jobs: int = 1) -> list[dict]:
        runs = [r for r in self.sweep.runs if not only or r.name in only]
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "sweep.json").write_text(
            json.dumps(
                {"name": self.sweep.name, "source": self.sweep.source, "runs": [r.name for r in self.sweep.runs]},
                indent=2,
            )
            + "\n"
        )
        # Refuse stale runs up front, before hours of training elsewhere.
        if not self.redo_stale:
            for run in runs:
                rec = RunFolder(self.out, run).read()
                if rec is not None and not same_identity(rec.get("identity"), run_identity(self.sweep, run)):
                    self.prepare(RunFolder(self.out, run), run_identity(self.sweep, run))
        records = []
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            futures = {pool.submit(self.execute, run): run for run in runs}
            for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                run = futures[fut]
                rec = fut.result()
                records.append(rec)
                msg = rec["status"] if rec["status"] != "failed" else "FAILED: " + rec["error"].splitlines()[0]
                self.echo(f"[{i}/{len(runs)}] {run.name}: {msg}")
                write_results(self.out, self.sweep)
        return records
