"""Parameter counts of a generator, read off a meta-device build (no weights are allocated).

As in the paper, the count is the trainable generator: the text aligner, the token
embedding, the backbone and the output head; the frozen text encoder and the image
tokenizer are not part of it.
"""

from __future__ import annotations

import torch

from fluid.config import ModelConfig, TextConfig
from fluid.model.generator import Generator

# The generator's top-level parameters and modules -> the part they are counted in.
PART_OF = {
    "aligner": "text_aligner",
    "token_in": "token_embed",
    "pos": "backbone",
    "special": "backbone",
    "blocks": "backbone",
    "norm": "backbone",
    "head": "head",
}


def meta_generator(m: ModelConfig, t: TextConfig) -> Generator:
    """The generator of a config with every tensor on the meta device: shapes, no storage."""
    with torch.device("meta"):
        return Generator(m, t)


def count_params(m: ModelConfig, t: TextConfig) -> dict[str, int]:
    """Trainable parameters of the generator by part (``text_aligner``, ``token_embed``,
    ``backbone``, ``head``) and their ``total``. The discrete head's output weights are the
    token embedding (tied), counted once, under ``token_embed``."""
    parts = dict.fromkeys(("text_aligner", "token_embed", "backbone", "head"), 0)
    for name, p in meta_generator(m, t).named_parameters():
        parts[PART_OF[name.split(".")[0]]] += p.numel()
    parts["total"] = sum(parts.values())
    return parts
