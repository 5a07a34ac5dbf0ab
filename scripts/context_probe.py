"""Where does a random-order model go wrong: in its first tokens, or later?

For each ShapesEval prompt, k tokens of a real render of that prompt (through the model's own
tokenizer, posterior mean) are given to the model at the first k places of a random order;
the model generates the other 16 - k in random order as usual (same CFG, temperature and
head), and ShapesEval scores the result. k = 0 is plain generation. If the score rises
steeply with the first few revealed tokens, the model's failures are decided early — in the
tokens it draws with little context.

    python scripts/context_probe.py --variant continuous-random --revealed 0 1 2 4 8 12

Uses the prompts and seeds of the sampling sweep (prompt draw 1, seeds 10 and 11, 8 prompts
per family), which the reported evaluation does not use.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from fluid.config import VARIANTS, Precision
from fluid.model.masking import tokens_per_step
from fluid.sample.generate import _gather_rows, _pair, condition, guidance_scale, sample_from_head
from fluid.sample.pipeline import FluidPipeline
from fluid.sample.rng import ImageRNG
from fluid.shapes.eval.evaluation import ShapesEval


@torch.no_grad()
def generate_with_revealed(
    pipe: FluidPipeline, prompts: list[str], seed: int, real_tokens: torch.Tensor, k: int, **sample
) -> torch.Tensor:
    """Images for ``prompts`` whose first ``k`` random-order tokens are ``real_tokens``'s."""
    model, scfg = pipe.model, pipe.sample_config(**sample)
    emb, mask = pipe.text_encoder(list(prompts))
    b, n = len(prompts), model.cfg.num_tokens
    rng = ImageRNG.for_images(seed, range(b))  # each image its own random stream, as the pipeline
    cond = condition(model, emb, mask, guided=True)
    orders = rng.rand(b, n).argsort(dim=1)  # (B, N)
    rows = torch.arange(b)[:, None]
    known = torch.zeros(b, n, dtype=torch.bool)
    known[rows, orders[:, :k]] = True
    keep = known[..., None] if model.continuous else known
    tokens = torch.where(keep, real_tokens, torch.zeros_like(real_tokens))
    text_kvs = model.text_kv(cond.text)
    done = k
    for count in tokens_per_step(n - k, n - k) if n > k else []:
        x = model.embed_masked(_pair(tokens, True), _pair(known, True))  # (2B, N, W)
        h = model.backbone(x, cond.text, cond.mask, text_kvs=text_kvs)  # (2B, N, W)
        pos = orders[:, done : done + count]  # (B, count)
        new, _ = sample_from_head(
            pipe.sampler, _gather_rows(h, pos, True), guidance_scale(scfg, done + count, n), scfg, True, rng
        )
        tokens[rows, pos] = new.view(b, count, *tokens.shape[2:]).to(tokens.dtype)
        known[rows, pos] = True
        done += count
    return pipe.decode(tokens)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=[v for v in VARIANTS if v.endswith("random")], default="continuous-random")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--revealed", type=int, nargs="+", default=[0, 1, 2, 4, 8, 12])
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = FluidPipeline.from_pretrained(args.checkpoint, variant=args.variant, device="cpu")
    pipe.cfg.train.precision = Precision.FP32  # the same arithmetic on every machine
    evaluation = ShapesEval(8, [10, 11], prompt_seed=1)
    real_tokens = pipe.tokenizer.encode(evaluation.real_images(), sample=False)  # item order
    for k in args.revealed:
        calls = itertools.count()

        def source(prompts, seed, calls=calls, k=k):
            i = next(calls)  # ShapesEval asks family by family, seed by seed, in item order
            part = real_tokens[i * len(prompts) : (i + 1) * len(prompts)]
            return generate_with_revealed(pipe, prompts, seed, part, k, cfg=args.cfg, temperature=args.temperature)

        result, _ = evaluation(source, progress=False)
        print(
            json.dumps(
                {
                    "variant": args.variant,
                    "revealed": k,
                    "overall": round(result.overall, 4),
                    **{f: round(v, 3) for f, v in result.per_family.items()},
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
