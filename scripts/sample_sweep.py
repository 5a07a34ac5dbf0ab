"""ShapesEval of a generator over a grid of CFG scales and temperatures, on prompts and seeds
that the reported evaluation does not use (prompt draw 1, seeds 10 and 11), to choose the
sampling defaults written into a shipped model's config.

    python scripts/sample_sweep.py --variant continuous-random --cfg 3 5 --temperature 0.6 0.8 1.0
    python scripts/sample_sweep.py --variant continuous-random --cfg 2 3 --temperature 0.6 \
        --cfg-schedule linear constant
    python scripts/sample_sweep.py --checkpoint runs/quick --families single_object colors --temperature 0.3 0.6 \
        --head-sampler ddpm:100 ddim:25
"""

from __future__ import annotations

import argparse
import json

import torch

from fluid.config import VARIANTS
from fluid.sample.pipeline import FluidPipeline
from fluid.shapes.eval.evaluation import ShapesEval, pipeline_source
from fluid.shapes.scenes import FAMILIES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=VARIANTS, default="continuous-random", help="shipped model")
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder instead of a shipped model")
    p.add_argument("--cfg", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--temperature", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    p.add_argument(
        "--cfg-schedule",
        nargs="+",
        default=[None],
        choices=["constant", "linear"],
        help="CFG schedules to try (default: the model's)",
    )
    p.add_argument(
        "--head-sampler",
        nargs="+",
        default=[None],
        metavar="SAMPLER[:STEPS]",
        help="diffusion-head samplers to try, e.g. ddpm:100 ddim:25 dpm++2m:20 (default: the model's)",
    )
    p.add_argument(
        "--families",
        nargs="+",
        default=None,
        choices=[f.value for f in FAMILIES],
        help="ShapesEval families to score (default: all six)",
    )
    p.add_argument("--prompts-per-family", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    p.add_argument("--prompt-seed", type=int, default=1, help="the reported evaluation draws with 0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="sampling precision (fp32: the same numbers on every CPU)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = FluidPipeline.from_pretrained(args.checkpoint, variant=args.variant, device="cpu")
    pipe.cfg.train.precision = args.precision
    evaluation = ShapesEval(
        args.prompts_per_family,
        args.seeds,
        prompt_seed=args.prompt_seed,
        **({"families": args.families} if args.families else {}),
    )
    if args.head_sampler != [None] and not pipe.model.continuous:
        p.error("--head-sampler is for continuous-token models")
    for head in args.head_sampler:
        sampler, _, steps = (head or "").partition(":")
        head_options = {"head_sampler": sampler or None, "head_steps": int(steps) if steps else None}
        for schedule in args.cfg_schedule:
            for cfg in args.cfg:
                for temperature in args.temperature:
                    source = pipeline_source(
                        pipe, cfg=cfg, temperature=temperature, cfg_schedule=schedule, **head_options
                    )
                    result, _ = evaluation(source, progress=False)
                    settings = pipe.settings(head_options["head_steps"], head_sampler=head_options["head_sampler"])
                    row = {
                        "model": args.checkpoint or args.variant,
                        "cfg": cfg,
                        "temperature": temperature,
                        "cfg_schedule": schedule or pipe.cfg.sample.cfg_schedule.value,
                        "head_sampler": settings["head_sampler"],
                        "head_steps": settings["head_steps"],
                        "overall": round(result.overall, 4),
                        **{k: round(v, 4) for k, v in result.per_family.items()},
                    }
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
