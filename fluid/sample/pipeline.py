"""Prompts -> images: ``FluidPipeline.from_pretrained(folder)(prompts)``.

The pipeline bundles the three frozen/trained parts that a checkpoint names: the text
encoder (frozen), the generator (EMA weights by default) and the image tokenizer's decoder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from fluid.assets import generator_path, tokenizer_path
from fluid.config import FluidConfig, Precision, SampleConfig, resolve_precision
from fluid.model import Generator
from fluid.sample.folder import bundled_tokenizer, resolve_source
from fluid.sample.generate import generate
from fluid.text.encoders import build_text_encoder
from fluid.tokenizers.base import load_tokenizer
from fluid.train import checkpoint as ckpt


def resolve_tokenizer(cfg: FluidConfig) -> str | Path:
    return cfg.tokenizer.path or tokenizer_path(cfg.model.token_type)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class FluidPipeline:
    source: Path | None = None
    """The checkpoint folder the weights came from (``from_pretrained``), for ``save_pretrained``."""

    def __init__(self, model: Generator, tokenizer, text_encoder, cfg: FluidConfig, device: str | torch.device = "cpu"):
        self.model, self.tokenizer, self.text_encoder = model.eval(), tokenizer.eval(), text_encoder
        self.cfg, self.device = cfg, torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, variant: str = "continuous-random",
                        device: str | None = None, use_ema: bool = True, tokenizer=None, text_encoder=None) -> "FluidPipeline":
        """Load a pipeline folder (``save_pretrained``), a checkpoint or run folder, or a hub id
        ("owner/name", where the network allows); default: the shipped model of ``variant``."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        folder = ckpt.resolve(resolve_source(path) if path is not None else generator_path(variant))
        cfg = ckpt.read_config(folder)
        model = Generator(cfg.model, cfg.text)
        ckpt.load_weights(model, folder, ema=use_ema)
        if tokenizer is None:
            tokenizer = load_tokenizer(bundled_tokenizer(folder) or resolve_tokenizer(cfg), kind=cfg.tokenizer.kind,
                                       patch_size=cfg.tokenizer.patch_size)
        if text_encoder is None:  # not `or`: an empty CachedTextEncoder is falsy (it has __len__)
            text_encoder = build_text_encoder(cfg.text, device=device)
        pipe = cls(model.to(device), tokenizer.to(device), text_encoder, cfg, device)
        pipe.source = folder
        return pipe

    def save_pretrained(self, folder: str | Path, dtype: str | None = None, metrics: str | Path | dict | None = None) -> Path:
        """Write a folder ``from_pretrained`` loads: generator, tokenizer, text-encoder reference,
        evaluation record and model card (see ``fluid.sample.folder``)."""
        from fluid.sample.folder import save_pipeline

        return save_pipeline(self, folder, dtype=dtype, metrics=metrics)

    def sample_config(self, **overrides) -> SampleConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self.cfg.sample, **given)

    @torch.no_grad()
    def generate_tokens(self, prompts: Sequence[str], seed: int = 0, record: list | None = None,
                        head_steps: int | None = None, use_cache: bool = True, **sample_overrides) -> torch.Tensor:
        """Tokens for ``prompts`` (one image each), in batches of ``sample.batch_size``."""
        scfg = self.sample_config(**sample_overrides)
        gen = torch.Generator(self.device).manual_seed(seed)
        out = []
        for start in range(0, len(prompts), scfg.batch_size):
            emb, mask = self.text_encoder(list(prompts[start:start + scfg.batch_size]))
            with self.autocast():
                out.append(generate(self.model, emb.to(self.device), mask.to(self.device), scfg, gen,
                                    head_steps=head_steps, record=record, use_cache=use_cache))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.tokenizer.decode(tokens).float().clamp(-1, 1)

    def autocast(self):
        bf16 = resolve_precision(self.cfg.train.precision, self.device) == Precision.BF16
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def __call__(self, prompts: str | Sequence[str], seed: int = 0, num_images_per_prompt: int = 1,
                 output_type: str = "pil", **sample_overrides):
        """Images for ``prompts``: a list of PIL images (or a (B, 3, H, W) tensor in [-1, 1]).

        Keyword overrides of the sample config: ``cfg``, ``cfg_schedule``, ``temperature``,
        ``steps``, ``confidence``, ``batch_size``; and ``head_steps`` for the diffusion head.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        images = self.decode(self.generate_tokens(prompts, seed=seed, **sample_overrides))
        return images if output_type == "tensor" else to_pil(images)
