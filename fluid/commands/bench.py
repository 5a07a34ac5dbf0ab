"""``fluid bench``: training and sampling speed, MFU, head share. Its options are
``benchmarks/bench.py``'s own: :func:`fluid.cli.main` hands every argument after ``bench``
to :func:`run` before any parsing, so the subparser here only names it in ``fluid --help``."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    # Its options are benchmarks/bench.py's own: main() hands every argument after "bench" over.
    sub.add_parser("bench", help="training and sampling speed, MFU, head share (fluid bench --help)")


def run(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]  # the source checkout: benchmarks/ beside fluid/
    if not (root / "benchmarks" / "bench.py").is_file():
        print("fluid bench: needs a source checkout (benchmarks/bench.py beside fluid/)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from benchmarks.bench import main as bench_main

    return bench_main(argv)
