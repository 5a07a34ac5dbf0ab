"""`fluid train` stopped the hard way (SIGKILL) and the clean way (SIGTERM), then resumed:
the final weights, EMA, optimizer and RNG states equal an uninterrupted run's, bit for bit.

Real processes on the built-in data stream (with a render pool and flips), the shipped
tokenizer and the MiniLM text encoder behind its per-caption cache: the path a user takes.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS, CKPT_EVERY = 20, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # the same threads in every run: same arithmetic


def train_command(variant: str, out: Path, resume: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fluid.cli",
        "train",
        "--preset",
        "debug",
        "--variant",
        variant,
        "--steps",
        str(STEPS),
        "--out",
        str(out),
        *(["--resume"] if resume else []),
        "--set",
        f"train.ckpt_every={CKPT_EVERY}",
        "train.keep_checkpoints=20",
        "train.batch_size=4",
        "train.log_every=1",
        "train.val_every=10",
        "train.val_size=8",
        "data.pool=64",
        "data.flip=true",
    ]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(x)["step"] for x in lines[:-1]]  # the last line may be half-written


def assert_same(a, b, where: str) -> None:
    """Every tensor and value of two nested states is equal, exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def metrics_without_timing(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["continuous-random", "discrete-raster"])
def test_sigkill_then_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, variant):
    rng = random.Random()
    kill_after = rng.choice([CKPT_EVERY, 2 * CKPT_EVERY])  # a random checkpoint, then a random delay
    delay = rng.uniform(0.0, 0.15)
    note = f"(killed {delay:.3f} s after step {kill_after}'s checkpoint)"
    ref, run = tmp_path / "ref", tmp_path / "run"
    reference = subprocess.Popen(
        train_command(variant, ref), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    # 1. SIGKILL, some time after a checkpoint: no chance to save anything.
    proc = subprocess.Popen(
        train_command(variant, run),
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (run / f"step-{kill_after:07d}" / "training_state.pt").exists(), proc, f"checkpoint {kill_after}")
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run finished before it could be killed {note}"

    # 2. Resume, then SIGTERM a few steps later: a clean stop saves the step it is at.
    proc = subprocess.Popen(
        train_command(variant, run, resume=True), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    resumed_at = int(os.readlink(run / "latest").split("-")[1])
    wait_for(lambda: any(s > resumed_at + 1 for s in logged_steps(run)), proc, "two steps after the resume")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (note, err[-2000:])
    summary = json.loads(out.splitlines()[-1])
    stopped_at = summary["steps"]
    assert summary["stopped_by"] == "SIGTERM" and resumed_at < stopped_at < STEPS, (summary, note)
    assert os.readlink(run / "latest") == f"step-{stopped_at:07d}" and "--resume" in err

    # 3. Resume again, to the end.
    done = subprocess.run(train_command(variant, run, resume=True), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert reference.wait(timeout=180) == 0, reference.stderr.read()[-2000:]

    final = f"step-{STEPS:07d}"
    for name in ("model.safetensors", "ema.safetensors"):
        assert_same(load_file(str(ref / final / name)), load_file(str(run / final / name)), f"{name} {note}")
    state = lambda r: torch.load(r / final / "training_state.pt", weights_only=True)  # noqa: E731
    assert_same(state(ref), state(run), f"training_state {note}")  # optimizer, scheduler, RNG, loss window
    # The log too: the lines a killed run wrote past its checkpoint are replaced, not repeated.
    assert metrics_without_timing(ref) == metrics_without_timing(run), note
