"""``fluid bench``: training and sampling speed per preset and variant, one JSON file and one
Markdown table, with the machine and every setting recorded beside the figures.

    fluid bench --out bench/                 # ref-512, the four variants, fp32 and the native bf16
    fluid bench --quick --out bench-quick/   # tiny settings: that it runs (seconds)

Accounting:

* Training runs the trainer's own step (``Trainer.fit``: autocast, backward, gradient
  clipping, AdamW, EMA, LR schedule) on one pre-encoded batch of random tokens and text
  that the stream hands out again and again, so the tokenizer, the text encoder and data
  loading are not part of it. Images/s is the trainer's own log over the measured steps,
  after warm-up steps.
* FLOPs per image are ``fluid.scaling.flops.flops_per_image`` (matmuls, 2 per MAC; forward +
  backward; the head on the mask schedule's mean share of tokens), which the tests check
  against ``torch.utils.flop_counter`` on built models.
* MFU = model FLOP/s over the matmul peak: a square matmul's FLOP/s (``--matmul`` size, 2048
  in every mode; median of repeats), measured at the start and again at the end of the run in
  the same precision and thread count, the higher of the two.
* Sampling: ``generate`` with CFG (linear, scale 3), at the preset's token count, random-order
  steps min(64, tokens), per head sampler; the head's share is the time spent in
  ``sample_from_head`` (every head step of every token, CFG included).
* Every measurement runs alone in a fresh process (``--worker``): no other model is built
  beside it, and its peak memory is its own. Configurations are interleaved within each
  repeat (at least 3 outside ``--quick``) and every figure is the true median over the
  repeats (``statistics.median``), the runs listed beside it. Each rate is also given per
  process CPU second (and MFU against the matmul's rate per CPU second): on a shared CPU with
  fixed threads, that is the closer estimate of what a quiet machine would do.
* Peak memory: the measuring process's peak resident set (CPU; it includes torch itself,
  whose share is given as ``baseline_rss_mb``), or the CUDA allocator's peak; the largest
  over the repeats.
* ``--mar DIR``: the MAR reference's sampling timed in the same repeats, through the harness
  ``bench_mar.py`` in DIR (a prepared MAR copy, see benchmarks/README.md), and each sampling
  row at MAR's settings (fp32, batch 16) gets its ratio to MAR.

Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import fluid.sample.generate as generate_module
from fluid.config import VARIANTS, HeadSampler, Precision, SampleConfig, get_preset
from fluid.model import Generator
from fluid.runtime import resolve_precision
from fluid.sample.rng import ImageRNG
from fluid.scaling.flops import flops_per_image
from fluid.train import probe
from fluid.train.probe import TEXT_LEN, random_batch

# ----------------------------------------------------------------------------- machine


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    info["cpu"] = fields.get("Model name", platform.processor() or platform.machine()).strip()
    flags = set(fields.get("Flags", "").split())
    info["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"})
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def precisions(device: torch.device, asked: list[str] | None) -> list[str]:
    """fp32, and bf16 where it is native (what ``precision=auto`` would pick)."""
    if asked:
        return asked
    native = resolve_precision(Precision.AUTO, device) == Precision.BF16
    return ["fp32", "bf16"] if native else ["fp32"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(precision: str, device: torch.device, n: int, repeats: int) -> dict:
    """FLOP/s of an n x n x n matmul in ``precision`` (bf16: autocast, as training uses it),
    per wall second and per process CPU second (medians)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    wall, cpu = [], []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(repeats + 1):
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            a @ b
            _sync(device)
            if i:  # the first is warm-up
                wall.append(2 * n**3 / (time.perf_counter() - t))
                cpu.append(2 * n**3 / max(time.process_time() - c, 1e-9))
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def _rss_mb() -> float:
    """The process's resident set now (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


@contextmanager
def peak_memory(device: torch.device, out: dict):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:  # ru_maxrss is in KiB on Linux
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ----------------------------------------------------------------------------- training


def train_once(cfg, precision: str, batch: int, steps: int, warmup: int, device: torch.device, run_dir: Path) -> dict:
    """Images/s of the trainer's step over ``steps`` steps after ``warmup`` steps."""
    return probe.train_once(
        cfg, precision, batch, steps, warmup, device, run_dir, memory=lambda row: peak_memory(device, row)
    )


# ----------------------------------------------------------------------------- sampling


def parse_head(spec: str) -> tuple[HeadSampler, int]:
    """'ddpm:100' -> (DDPM, 100)."""
    name, _, steps = spec.partition(":")
    try:
        return HeadSampler(name), int(steps or 100)
    except ValueError:
        msg = f"fluid bench: --head-samplers takes SAMPLER:STEPS (e.g. ddpm:100 dpm++2m:20), not {spec!r}"
        raise SystemExit(msg) from None


def sample_once(sampler, cfg, scfg: SampleConfig, head_steps: int, batch: int, precision: str, device) -> dict:
    emb, mask = random_batch(cfg, batch, device)[1:]
    head = [0.0]
    inner = generate_module.sample_from_head

    def timed_head(*a, **k):
        _sync(device)
        t = time.perf_counter()
        out = inner(*a, **k)
        _sync(device)
        head[0] += time.perf_counter() - t
        return out

    row: dict = {}
    generate_module.sample_from_head = timed_head
    try:
        with peak_memory(device, row), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            _sync(device)
            t, cpu = time.perf_counter(), time.process_time()
            sampler.generate(emb, mask, scfg, ImageRNG.for_images(0, range(batch), device), head_steps=head_steps)
            _sync(device)
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        generate_module.sample_from_head = inner
    return {"seconds": seconds, "cpu_seconds": round(cpu, 3), "head_share": head[0] / seconds, **row}


# ----------------------------------------------------------------------------- one measurement, alone

RESULT = "fluid-bench-result "  # the worker's result line on its stdout


def measure(spec: dict) -> dict:
    """One configuration measured once, in this process: the body of ``--worker``."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    baseline = _rss_mb()  # torch and fluid imported, nothing built
    cfg = get_preset(spec["preset"], variant=spec["variant"])
    if spec["kind"] == "training":
        with tempfile.TemporaryDirectory(prefix="fluid-bench-") as tmp:
            row = train_once(cfg, spec["precision"], spec["batch"], spec["steps"], spec["warmup"], device, Path(tmp))
    else:
        torch.manual_seed(0)
        model = Generator(cfg.model, cfg.text).to(device).eval()
        # One Sampler for the warm-up and the measured run: what it builds (packed head, compiled
        # functions) is built in the warm-up, as a pipeline keeps it between batches.
        tokens_sampler = generate_module.Sampler(model)
        head_sampler, steps = HeadSampler(spec["head_sampler"] or "ddpm"), spec["head_steps"]

        def run(gen_steps: int, head_steps: int | None) -> dict:
            scfg = SampleConfig(
                cfg=3.0,
                cfg_schedule="linear",
                steps=gen_steps,
                head_sampler=head_sampler,
                compile=spec["compile"],
                packed_head=spec.get("packed", False),
                guidance_refresh=spec.get("guidance_refresh", 1),
            )
            return sample_once(tokens_sampler, cfg, scfg, head_steps, spec["batch"], spec["precision"], device)

        # Warm-up with 2 generation steps and at most 2 head steps; a compiled configuration
        # with the measured ones (compilation happens there).
        if spec["compile"]:
            run(spec["gen_steps"], steps)
        else:
            run(2, min(2, steps) if steps else None)
        row = run(spec["gen_steps"], steps)
    if device.type != "cuda":
        row["baseline_rss_mb"] = baseline
    return row


def run_alone(spec: dict) -> dict:
    """``measure(spec)`` in a fresh Python process, so that nothing else built in this one
    shares its threads, caches or memory high-water mark."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--worker", json.dumps(spec)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise SystemExit(f"fluid bench: measuring {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def mar_once(mar_dir: Path, python: str, gen_steps: int) -> dict:
    """One timing of the MAR reference's sampling by its harness (``bench_mar.py`` in
    ``mar_dir``, fp32, batch 16, CFG 3 linear, temperature 1, 100 head steps)."""
    with tempfile.TemporaryDirectory(prefix="fluid-bench-mar-") as tmp:
        out = Path(tmp) / "mar.json"
        env = {**os.environ, "SAMPLE_ONLY": "1", "SAMPLE_ITERS": str(gen_steps), "REPS": "1", "OUT_JSON": str(out)}
        proc = subprocess.run([python, "bench_mar.py"], cwd=mar_dir, env=env, capture_output=True, text=True)
        if proc.returncode or not out.is_file():
            raise SystemExit(
                f"fluid bench: the MAR harness in {mar_dir} failed (exit {proc.returncode}):\n"
                f"{(proc.stderr or proc.stdout)[-3000:]}"
            )
        result = json.loads(out.read_text())
    r = result[f"sample_fp32_iter{gen_steps}"]
    return {"seconds": r["s_per_batch"], "batch": r["bsz"], "threads": result.get("threads")}


# ----------------------------------------------------------------------------- the plan


def plan(args, precs, heads, device) -> list[dict]:
    """Every configuration to measure, in the order of one repeat."""
    base = {"device": str(device), "threads": args.threads}
    specs = []
    if "training" not in args.skip:
        for preset in args.presets:
            for variant in args.variants:
                batch = args.train_batch or get_preset(preset, variant=variant).train.batch_size
                for prec in precs:
                    specs.append(
                        {
                            **base,
                            "kind": "training",
                            "preset": preset,
                            "variant": variant,
                            "precision": prec,
                            "batch": batch,
                            "steps": args.train_steps,
                            "warmup": args.warmup,
                        }
                    )
    if "sampling" not in args.skip:
        for preset in args.presets:
            for variant in args.variants:
                continuous = variant.startswith("continuous")
                for prec in precs:
                    for sampler, steps in heads if continuous else [(None, None)]:
                        for compiled in args.sample_compile if continuous else ["off"]:
                            packable = continuous and compiled == "off" and prec == "fp32"  # else it is the head itself
                            for packed, refresh in itertools.product(
                                args.sample_packed if packable else ["off"],
                                args.guidance_refresh if variant.endswith("random") else [1],
                            ):
                                specs.append(
                                    {
                                        **base,
                                        "kind": "sampling",
                                        "preset": preset,
                                        "variant": variant,
                                        "precision": prec,
                                        "head_sampler": sampler.value if sampler else None,
                                        "head_steps": steps,
                                        "compile": compiled == "on",
                                        "packed": packed == "on",
                                        "guidance_refresh": refresh,
                                        "batch": args.sample_batch,
                                        "gen_steps": args.gen_steps,
                                    }
                                )
    return specs


def _key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _memory(reps: list[dict]) -> dict:
    """The largest peak over the repeats, and the median baseline (what torch alone holds)."""
    out = {}
    for k in ("peak_memory_mb", "peak_rss_mb"):
        if any(k in r for r in reps):
            out[k] = max(r[k] for r in reps if k in r)
    if any("baseline_rss_mb" in r for r in reps):
        out["baseline_rss_mb"] = statistics.median(r["baseline_rss_mb"] for r in reps if "baseline_rss_mb" in r)
    return out


def training_row(spec: dict, reps: list[dict], peaks: dict) -> dict:
    cfg = get_preset(spec["preset"], variant=spec["variant"])
    flops = flops_per_image(cfg.model, cfg.text, text_len=TEXT_LEN)
    ips = statistics.median(r["images_per_s"] for r in reps)
    ipc = statistics.median(r["images_per_cpu_s"] for r in reps)
    peak = peaks[spec["precision"]]
    return {
        "preset": spec["preset"],
        "variant": spec["variant"],
        "precision": spec["precision"],
        "batch": spec["batch"],
        "images_per_s": round(ips, 2),
        "runs_images_per_s": [round(r["images_per_s"], 2) for r in reps],
        "gflop_per_image": round(flops / 1e9, 4),
        "model_gflop_per_s": round(ips * flops / 1e9, 2),
        "peak_gflop_per_s": round(peak["wall"] / 1e9, 2),
        "mfu": round(ips * flops / peak["wall"], 4),
        # The same per CPU second: what a busy machine's wall clock cannot show.
        "images_per_cpu_s": round(ipc, 2),
        "mfu_cpu_time": round(ipc * flops / peak["cpu"], 4),
        **_memory(reps),
    }


def sampling_row(spec: dict, reps: list[dict], mar: dict | None) -> dict:
    cfg = get_preset(spec["preset"], variant=spec["variant"])
    seconds = statistics.median(r["seconds"] for r in reps)
    b, n = spec["batch"], cfg.model.num_tokens
    row = {
        "preset": spec["preset"],
        "variant": spec["variant"],
        "precision": spec["precision"],
        "compile": spec["compile"],
        "packed_head": spec.get("packed", False),
        "guidance_refresh": spec.get("guidance_refresh", 1),
        "head_sampler": spec["head_sampler"],
        "head_steps": spec["head_steps"],
        "batch": b,
        "tokens": n,
        "generation_steps": min(spec["gen_steps"], n) if cfg.model.order.value == "random" else n,
        "images_per_s": round(b / seconds, 3),
        "latency_s": round(seconds, 3),
        "latency_per_image_s": round(seconds / b, 4),
        "runs_s": [round(r["seconds"], 3) for r in reps],
        "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in reps), 3),
        "head_share": round(statistics.median(r["head_share"] for r in reps), 3) if spec["head_sampler"] else None,
        **_memory(reps),
    }
    if mar and spec["precision"] == "fp32" and b == mar["batch"]:
        row["vs_mar"] = round(row["images_per_s"] / mar["images_per_s"], 3)
    return row


def run_plan(specs: list[dict], args, precs, device) -> dict:
    """The configurations interleaved within each repeat, each alone in its own process,
    with the matmul peak taken before and after, and MAR's sampling in every repeat."""
    from tqdm import tqdm

    start = {p: matmul_peak(p, device, args.matmul, args.matmul_repeats) for p in precs}
    runs: dict[str, list[dict]] = {_key(s): [] for s in specs}
    mar_runs = []
    bar = tqdm(total=args.repeats * (len(specs) + bool(args.mar)), desc="fluid bench", unit="run", file=sys.stderr)
    for _ in range(args.repeats):
        for spec in specs:
            bar.set_postfix_str(f"{spec['kind']} {spec['variant']} {spec['precision']}", refresh=False)
            runs[_key(spec)].append(run_alone(spec))
            bar.update()
        if args.mar:
            bar.set_postfix_str("MAR sampling", refresh=False)
            mar_runs.append(mar_once(Path(args.mar), args.mar_python or sys.executable, args.gen_steps))
            bar.update()
    bar.close()
    end = {p: matmul_peak(p, device, args.matmul, args.matmul_repeats) for p in precs}
    peaks = {
        p: {
            **max(start[p], end[p], key=lambda v: v["wall"]),
            "start_wall": start[p]["wall"],
            "end_wall": end[p]["wall"],
        }
        for p in precs
    }
    mar = None
    if mar_runs:
        seconds = statistics.median(r["seconds"] for r in mar_runs)
        mar = {
            "images_per_s": round(mar_runs[0]["batch"] / seconds, 3),
            "latency_s": round(seconds, 3),
            "batch": mar_runs[0]["batch"],
            "threads": mar_runs[0]["threads"],
            "generation_steps": args.gen_steps,
            "head_steps": 100,
            "runs_s": [round(r["seconds"], 3) for r in mar_runs],
        }
    return {
        "peak_flops": peaks,
        "mar": mar,
        "training": [training_row(s, runs[_key(s)], peaks) for s in specs if s["kind"] == "training"],
        "sampling": [sampling_row(s, runs[_key(s)], mar) for s in specs if s["kind"] == "sampling"],
    }


# ----------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    mc, s = result["machine"], result["settings"]
    lines = [
        f"# fluid bench{' --quick' if s['quick'] else ''}",
        "",
        f"{mc['cpu']} ({', '.join(mc['cpu_flags']) or 'no vector flags read'}; torch {mc['torch']}, "
        f"capability {mc['cpu_capability']}), {mc['threads']} threads, device {mc['device']}, "
        f"load average {mc['load_average_1min']} at the start; {s['repeats']} interleaved repeats, each "
        "configuration alone in its own process; medians.",
        "",
        "Matmul peak ("
        + f"{s['matmul']}^3, median of {s['matmul_repeats']}, the higher of the run's start and end): "
        + ", ".join(
            f"{p} {v['wall'] / 1e9:.1f} GFLOP/s ({v['cpu'] / 1e9:.1f} per CPU second)"
            for p, v in result["peak_flops"].items()
        )
        + ".",
        "",
    ]
    mar = result.get("mar")
    if mar:
        lines += [
            f"MAR reference (fp32, batch {mar['batch']}, {mar['generation_steps']} generation steps, "
            f"{mar['head_steps']} head steps, CFG 3 linear, {mar['threads']} threads), timed in the same repeats: "
            f"{mar['images_per_s']} images/s ({mar['latency_s']} s per batch; runs {mar['runs_s']}).",
            "",
        ]
    lines += [
        "## Training (the trainer's step)",
        "",
        "| preset | variant | precision | batch | images/s | GFLOP/image | GFLOP/s | MFU | images/CPU-s | "
        "MFU (CPU time) | peak memory MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["training"]:
        mem = r.get("peak_memory_mb", r.get("peak_rss_mb"))
        lines.append(
            f"| {r['preset']} | {r['variant']} | {r['precision']} | {r['batch']} | {r['images_per_s']} | "
            f"{r['gflop_per_image']} | {r['model_gflop_per_s']} | {r['mfu']:.1%} | {r['images_per_cpu_s']} | "
            f"{r['mfu_cpu_time']:.1%} | {mem} |"
        )
    lines += [
        "",
        "## Sampling (CFG 3, linear)",
        "",
        "| preset | variant | precision | compiled | packed head | guidance refresh | head sampler | head steps "
        "| batch | tokens | gen. steps | "
        "images/s | latency s | CPU s | head share | vs MAR | peak memory MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["sampling"]:
        mem = r.get("peak_memory_mb", r.get("peak_rss_mb"))
        share = f"{r['head_share']:.0%}" if r["head_share"] is not None else "-"
        lines.append(
            f"| {r['preset']} | {r['variant']} | {r['precision']} | {'yes' if r.get('compile') else 'no'} | "
            f"{'yes' if r.get('packed_head') else 'no'} | {r.get('guidance_refresh', 1)} | "
            f"{r['head_sampler'] or '-'} | "
            f"{r['head_steps'] or '-'} | {r['batch']} | {r['tokens']} | {r['generation_steps']} | "
            f"{r['images_per_s']} | {r['latency_s']} | {r['cpu_seconds']} | {share} | "
            f"{str(r['vs_mar']) + 'x' if 'vs_mar' in r else '-'} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fluid bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="bench", help="folder for bench.json and bench.md")
    p.add_argument("--quick", action="store_true", help="tiny settings (debug preset, a few steps): that it runs")
    p.add_argument("--presets", nargs="+", default=None, help="default: ref-512 (quick: debug)")
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="default: all four")
    p.add_argument(
        "--precisions", nargs="+", default=None, choices=["fp32", "bf16"], help="default: fp32, and bf16 where native"
    )
    p.add_argument(
        "--head-samplers",
        nargs="+",
        default=None,
        help="SAMPLER:STEPS for continuous variants (default: ddpm:100 dpm++2m:20)",
    )
    p.add_argument(
        "--sample-packed",
        nargs="+",
        default=["off"],
        choices=["off", "on"],
        help="sample with the diffusion head's weights prepacked for oneDNN (sample.packed_head; "
        "continuous variants in fp32, not with compile; default: off)",
    )
    p.add_argument(
        "--guidance-refresh",
        nargs="+",
        type=int,
        default=[1],
        help="random-order variants: run the unconditional branch on one generation step in K "
        "(sample.guidance_refresh; default: 1, every step)",
    )
    p.add_argument(
        "--sample-compile",
        nargs="+",
        default=["off"],
        choices=["off", "on"],
        help="sample eagerly and/or with sample.compile (continuous variants; default: off)",
    )
    p.add_argument("--train-batch", type=int, default=None, help="default: the preset's")
    p.add_argument("--train-steps", type=int, default=None, help="measured steps per run (default 10; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="steps before measuring (default 3; quick 1)")
    p.add_argument("--sample-batch", type=int, default=None, help="default 16 (quick 2)")
    p.add_argument("--gen-steps", type=int, default=64, help="random-order generation steps (capped at the tokens)")
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats, at least 3 outside --quick (default 3; quick 1)"
    )
    p.add_argument("--matmul", type=int, default=2048, help="matmul size for the peak (default 2048, in every mode)")
    p.add_argument("--matmul-repeats", type=int, default=None, help="default 10 (quick 3)")
    p.add_argument("--skip", nargs="+", default=[], choices=["training", "sampling"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--mar",
        default=None,
        metavar="DIR",
        help="a prepared MAR copy holding bench_mar.py: its sampling is timed in the same repeats",
    )
    p.add_argument("--mar-python", default=None, help="the Python that runs MAR's harness (default: this one)")
    return p


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    q = args.quick
    defaults = {
        "presets": ["debug"] if q else ["ref-512"],
        "variants": ["continuous-random", "discrete-raster"] if q else list(VARIANTS),
        "head_samplers": ["ddpm:5", "ddim:2"] if q else ["ddpm:100", "dpm++2m:20"],
        "train_batch": 4 if q else None,
        "train_steps": 2 if q else 10,
        "warmup": 1 if q else 3,
        "sample_batch": 2 if q else 16,
        "repeats": 1 if q else 3,
        "matmul_repeats": 3 if q else 10,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one measurement, in the process run_alone started
        print(RESULT + json.dumps(measure(json.loads(argv[1]))), flush=True)
        return 0
    args = fill_defaults(make_parser().parse_args(argv))
    if args.repeats < 3 and not args.quick:
        raise SystemExit(f"fluid bench: --repeats must be at least 3 for a median (or use --quick), not {args.repeats}")
    if any(k < 1 for k in args.guidance_refresh):
        raise SystemExit(f"fluid bench: --guidance-refresh takes whole numbers from 1, not {args.guidance_refresh}")
    if args.mar and not (Path(args.mar) / "bench_mar.py").is_file():
        raise SystemExit(f"fluid bench: --mar {args.mar}: no bench_mar.py there (see benchmarks/README.md)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    heads = [parse_head(h) for h in args.head_samplers]
    precs = precisions(device, args.precisions)
    result = {
        "benchmark": "fluid-bench/2",
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device", "mar", "mar_python")},
        "precisions": precs,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    result.update(run_plan(plan(args, precs, heads, device), args, precs, device))
    result["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
