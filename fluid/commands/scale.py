"""``fluid scale``: run a sweep (sizes x variants x steps): plan, train, evaluate, collect results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_parser(sub) -> None:
    from fluid.scaling.sweep import named_sweeps

    p = sub.add_parser("scale", help="run a sweep (sizes x variants x steps): train, evaluate, collect results")
    p.add_argument("--sweep", required=True, help=f"a sweep YAML file or a named sweep ({', '.join(named_sweeps())})")
    p.add_argument("--out", default=None, help="sweep folder (runs/, results.csv); rerun the same command to resume")
    p.add_argument("--only", nargs="+", default=None, metavar="RUN", help="run only these runs (names from --list)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (several small runs sharing one GPU)")
    p.add_argument("--launcher", default=None, help="training launcher, e.g. 'torchrun --nproc_per_node=8'")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (OMP_NUM_THREADS)")
    p.add_argument(
        "--redo-stale", action="store_true", help="archive runs made by another config or data and redo them"
    )
    p.add_argument("--list", action="store_true", help="print the runs with their size and compute, and exit")
    p.add_argument("--analyze-only", action="store_true", help="only redo results.csv, fits, figures and report.md")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the plan (images, FLOPs and expected wall time per run on this machine) and exit",
    )
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="do not time the trainer's step for runs that no finished run on this machine prices",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.scaling.compute import compute_summary
    from fluid.scaling.identity import fitted_config
    from fluid.scaling.runner import Runner
    from fluid.scaling.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    if args.list:
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs" + (f" ({sweep.description})" if sweep.description else ""))
        for r in sweep.runs:
            cfg = fitted_config(sweep, r)
            c = compute_summary(cfg)
            print(
                f"  {r.name:40s} {r.preset:12s} {cfg.model.variant:18s} {c['params'] / 1e6:8.2f}M "
                f"{r.steps:7d} steps x {c['batch_size']:5d}  {c['train_flops']:.2e} FLOPs"
            )
        return 0
    from fluid.scaling.analysis import analyze
    from fluid.scaling.records import write_results

    command = f"fluid scale --sweep {args.sweep} --out {args.out}" + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    if args.analyze_only:
        write_results(Path(args.out), sweep)
        fits = analyze(args.out, sweep.name, command + " --analyze-only")
        print(
            json.dumps(
                {
                    "sweep": sweep.name,
                    "out": str(args.out),
                    "report": str(Path(args.out) / "report.md"),
                    "loss_vs_params": fits["loss_vs_params"],
                }
            )
        )
        return 0
    from fluid.scaling.plan import make_plan

    unknown = sorted(set(args.only or ()) - {r.name for r in sweep.runs})
    if unknown:
        print(f"fluid scale: no run named {', '.join(unknown)} in sweep {sweep.name} (see --list)", file=sys.stderr)
        return 2
    runs = [r for r in sweep.runs if not args.only or r.name in args.only]
    plan = make_plan(
        sweep,
        args.out,
        runs,
        probe=not args.no_probe,
        threads=args.threads,
        device=args.device,
        launcher=args.launcher,
        echo=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(plan.format(), file=sys.stderr, flush=True)
    if args.plan:
        print(json.dumps({"sweep": sweep.name, "out": str(args.out), "plan": plan.to_dict()}))
        return 0
    runner = Runner(
        sweep,
        args.out,
        launcher=args.launcher,
        device=args.device,
        threads=args.threads,
        redo_stale=args.redo_stale,
        echo=lambda m: print(m, file=sys.stderr, flush=True),
    )
    t0 = time.perf_counter()
    records = runner.run_all(only=args.only, jobs=args.jobs)
    failed = [r["name"] for r in records if r["status"] == "failed"]
    analyze(args.out, sweep.name, command)
    print(
        json.dumps(
            {
                "sweep": sweep.name,
                "out": str(args.out),
                "runs": len(records),
                "failed": failed,
                "seconds": round(time.perf_counter() - t0, 1),
                "results": str(Path(args.out) / "results.csv"),
                "report": str(Path(args.out) / "report.md"),
            }
        )
    )
    return 1 if failed else 0
