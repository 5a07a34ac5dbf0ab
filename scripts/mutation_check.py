"""Break the method on purpose, one mutant at a time, and check that the test suite notices.

Each mutant is a one-line textual change to the core code (model, diffusion, sampler) that
still imports, trains and samples; for each, the named test files run against a scratch copy
of the package with that change. A mutant is *killed* when a test fails. The report is
written as Markdown (docs/mutation-report.md in the repository):

    python scripts/mutation_check.py --out docs/mutation-report.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "random order sees its targets",
        "fluid/model/generator.py",
        "x = torch.where(known[..., None], x, self.special.to(x.dtype))",
        "x = x + 0 * self.special.to(x.dtype)",
        ("tests/test_method_guards.py",),
    ),
    Mutant(
        "uniform mask ratio instead of the cosine law",
        "fluid/model/masking.py",
        'ratio = truncated_normal_mask_ratio(u) if schedule == "truncnorm" else cosine_mask_ratio(u)',
        'ratio = truncated_normal_mask_ratio(u) if schedule == "truncnorm" else 1 - u',
        ("tests/test_method_guards.py", "tests/test_model.py"),
    ),
    Mutant(
        "confidence sampling may re-pick generated tokens",
        "fluid/sample/generate.py",
        "conf = conf.masked_fill(known, -math.inf)",
        "conf = conf",
        ("tests/test_method_guards.py",),
    ),
    Mutant(
        "guidance with the wrong sign (continuous)",
        "fluid/sample/generate.py",
        "eps = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])",
        "eps = uncond[:, :c] - scale * (cond[:, :c] - uncond[:, :c])",
        ("tests/test_method_guards.py",),
    ),
    Mutant(
        "guidance on swapped halves (discrete)",
        "fluid/sample/generate.py",
        "cond, uncond = logits.chunk(2)",
        "uncond, cond = logits.chunk(2)",
        ("tests/test_method_guards.py",),
    ),
    Mutant(
        "diffusion head ignores its condition",
        "fluid/model/heads.py",
        "return self.denoise(x, self.time_condition(t) + self.cond_proj(z))",
        "return self.denoise(x, self.time_condition(t) + 0 * self.cond_proj(z))",
        ("tests/test_method_guards.py",),
    ),
    Mutant(
        "raster model sees the future",
        "fluid/model/generator.py",
        "causal=self.causal and caches is None",
        "causal=False",
        ("tests/test_model.py",),
    ),
    Mutant(
        "discrete head untied from the input embedding",
        "fluid/model/heads.py",
        "return F.linear(h, embedding, self.bias)  # (..., V)",
        "return F.linear(h, embedding.detach().clone(), self.bias)  # (..., V)",
        ("tests/test_method_guards.py", "tests/test_model.py"),
    ),
    Mutant(
        "VLB weight ignored in the hybrid loss",
        "fluid/diffusion/gaussian.py",
        "loss = loss + vlb_weight * self.vlb_terms(frozen, x0.float(), xt.float(), t)",
        "loss = loss + 0.001 * self.vlb_terms(frozen, x0.float(), xt.float(), t)",
        ("tests/test_diffusion.py",),
    ),
]


def run_mutant(m: Mutant, scratch: Path) -> tuple[bool, float, str]:
    """(killed, seconds, the first failing test)."""
    path = scratch / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        raise RuntimeError(f"mutant {m.name!r}: the line to change is not found once in {m.file}")
    path.write_text(original.replace(m.old, m.new))
    env = {**os.environ, "PYTHONPATH": str(scratch), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", "0", *m.tests],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original)
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    return proc.returncode != 0, time.perf_counter() - t0, failed[0] if failed else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the Markdown report here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for part in ("fluid", "tests", "pyproject.toml"):
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, scratch / part)
        for m in MUTANTS:
            killed, seconds, test = run_mutant(m, scratch)
            rows.append((m, killed, seconds, test))
            print(f"{'killed' if killed else 'SURVIVED'}  {m.name}  ({seconds:.0f} s) {test}", flush=True)
    lines = [
        "# Mutation report",
        "",
        "Made by `python scripts/mutation_check.py --out docs/mutation-report.md`: each "
        "mutant is a one-line change to the core code that still trains and samples; it is killed when a "
        "test of the listed files fails.",
        "",
        "| mutant | file | tests run | result | first failing test |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, killed, seconds, test in rows:
        lines.append(
            f"| {m.name} | `{m.file}` | {', '.join(f'`{t}`' for t in m.tests)} | "
            f"{'killed' if killed else '**survived**'} ({seconds:.0f} s) | `{test}` |"
        )
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if all(k for _, k, _, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
