"""``fluid eval``: its flags and its work live in :mod:`fluid.eval.run`."""

from __future__ import annotations

import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: ShapesEval, shapes_fd, validation loss, FID, GenEval export")
    from fluid.eval.run import add_eval_args

    add_eval_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.eval.run import eval_from_args

    t0 = time.perf_counter()
    records = eval_from_args(args)
    print(f"evaluated {len(records)} model(s) in {time.perf_counter() - t0:.1f} s -> {args.out}", file=sys.stderr)
    return 0
