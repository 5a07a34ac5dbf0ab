"""Compute accounting for the scaling study: parameters and training FLOPs of a run.

As in the paper, the parameter count is the trainable generator (text aligner, backbone,
token embedding and output head); the frozen text encoder and the image tokenizer are
excluded. Training FLOPs are the config's matmul count per image (forward + backward, the
diffusion head counted once per timestep copy on the masked tokens, at the mask schedule's
mean), times the images seen; ``fluid.scaling.flops.flops_per_image`` is checked against
``torch.utils.flop_counter`` on built models by the tests.
"""

from __future__ import annotations

from fluid.config import FluidConfig
from fluid.model.counts import count_params
from fluid.scaling.flops import flops_per_image, mean_mask_fraction

EXCLUDED = ("frozen text encoder", "image tokenizer")


def compute_summary(cfg: FluidConfig) -> dict:
    m = cfg.model
    params = count_params(m, cfg.text)
    per_image = flops_per_image(m, cfg.text)
    return {
        "params": params["total"],
        "params_by_part": {k: v for k, v in params.items() if k != "total"},
        "params_exclude": list(EXCLUDED),
        "batch_size": cfg.train.batch_size,
        "steps": cfg.train.steps,
        "train_flops_per_image": per_image,
        "train_flops": per_image * cfg.train.batch_size * cfg.train.steps,
        "mask_fraction": mean_mask_fraction(m.num_tokens, m.mask_schedule) if m.order.value == "random" else 1.0,
    }
