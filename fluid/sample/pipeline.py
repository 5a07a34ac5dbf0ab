"""Prompts -> images: ``FluidPipeline.from_pretrained(folder)(prompts)``.

The pipeline bundles the three frozen/trained parts that a checkpoint names: the text
encoder (frozen), the generator (EMA weights by default) and the image tokenizer's decoder.

A seed fixes each image: prompt ``i`` of a call is drawn from a random stream seeded by
``(seed, first_index + i)`` (:mod:`fluid.sample.rng`), whatever the batch size, so a process
given part of a prompt list makes the same images as one given all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from fluid.assets import generator_path
from fluid.checkpoint import DistilledHead
from fluid.checkpoint.folder import Checkpoint
from fluid.config import ConfigError, FluidConfig, HeadSampler, Order, Precision, SampleConfig
from fluid.model import Generator
from fluid.runtime import sampling_precision
from fluid.sample.folder import resolve_source
from fluid.sample.generate import OnStep, Sampler
from fluid.sample.rng import ImageRNG, check_seed


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
        self._sampler: Sampler | None = None
        self.distilled: DistilledHead | None = None
        """The checkpoint's distilled few-step head (``sample.head_sampler: distilled``), if any."""

    @property
    def sampler(self) -> Sampler:
        """The :class:`~fluid.sample.generate.Sampler` of ``self.model`` (its packed head, compiled
        functions and respaced processes are built once and kept; a new model gets a new one)."""
        if self._sampler is None or self._sampler.model is not self.model:
            self._sampler = Sampler(self.model, self.distilled)
        return self._sampler

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        variant: str = "continuous-random",
        device: str | None = None,
        use_ema: bool = True,
        tokenizer=None,
        text_encoder=None,
    ) -> FluidPipeline:
        """Load a pipeline folder (``save_pretrained``), a checkpoint or run folder, or a hub id
        ("owner/name", where the network allows); default: the shipped model of ``variant``."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        checkpoint = Checkpoint.open(resolve_source(path) if path is not None else generator_path(variant))
        model = checkpoint.generator(ema=use_ema)
        if tokenizer is None:
            tokenizer = checkpoint.tokenizer()
        if text_encoder is None:  # not `or`: an empty CachedTextEncoder is falsy (it has __len__)
            text_encoder = checkpoint.text_encoder(device)
        pipe = cls(model.to(device), tokenizer.to(device), text_encoder, checkpoint.config, device)
        pipe.source, pipe.distilled = checkpoint.folder, checkpoint.distilled_head(model)
        return pipe

    def save_pretrained(
        self, folder: str | Path, dtype: str | None = None, metrics: str | Path | dict | None = None
    ) -> Path:
        """Write a folder ``from_pretrained`` loads: generator, tokenizer, text-encoder reference,
        evaluation record and model card (see ``fluid.sample.folder``)."""
        from fluid.sample.folder import save_pipeline

        return save_pipeline(self, folder, dtype=dtype, metrics=metrics)

    def sample_config(self, **overrides) -> SampleConfig:
        """The checkpoint's sample config with ``overrides`` (None keeps a value); its values are
        checked (:class:`~fluid.config.ConfigError` for a NaN, a negative scale, zero steps...)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(SampleConfig)})
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(unknown)}")
        return dataclasses.replace(self.cfg.sample, **given)

    def head_steps(
        self, head_steps: int | None = None, head_sampler: HeadSampler | str = HeadSampler.DDPM
    ) -> int | None:
        """The diffusion head's sampling steps, checked: ``head_steps`` (a sample config's, which
        :meth:`sample_config` resolves), else the model's ``head_sample_steps``; the distilled
        head's own steps for ``head_sampler`` ``distilled``; None for discrete tokens, which
        have no head."""
        if not self.model.continuous:
            return None
        if HeadSampler(head_sampler) == HeadSampler.DISTILLED:
            if self.distilled is None:
                raise ConfigError(
                    "head_sampler 'distilled' needs a distilled head beside the checkpoint's weights "
                    "(make one with fluid distill-head); this checkpoint has none"
                )
            if head_steps not in (None, self.distilled.steps):
                raise ConfigError(f"the distilled head samples in {self.distilled.steps} steps, not {head_steps!r}")
            return self.distilled.steps
        steps = self.cfg.model.head_sample_steps if head_steps is None else head_steps
        limit = self.cfg.model.diffusion_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
            raise ConfigError(f"head_steps must be an integer in [1, {limit}] (the training timesteps), not {steps!r}")
        return steps

    def settings(self, head_steps: int | None = None, **sample_overrides) -> dict:
        """The sampling values a call with these arguments uses, after checks and caps: what
        ``samples.json`` and evaluation records hold (not merely what was asked)."""
        scfg = self.sample_config(head_steps=head_steps, **sample_overrides)
        m = self.cfg.model
        random_order = m.order == Order.RANDOM
        if scfg.confidence and (self.model.continuous or not random_order):
            raise ConfigError(f"confidence selection is for discrete random-order models, not {m.variant}")
        return {
            "cfg": scfg.cfg,
            "cfg_schedule": scfg.cfg_schedule.value,
            "temperature": scfg.temperature,
            "steps": min(scfg.steps, m.num_tokens) if random_order else m.num_tokens,  # raster: one per token
            "head_steps": self.head_steps(scfg.head_steps, scfg.head_sampler),
            "x0_clip": scfg.x0_clip if self.model.continuous else None,
            "confidence": scfg.confidence,
            "batch_size": scfg.batch_size,
            "head_sampler": scfg.head_sampler.value if self.model.continuous else None,
            "compile": scfg.compile,
            "packed_head": scfg.packed_head and self.model.continuous,
            "guidance_refresh": scfg.guidance_refresh if random_order and not scfg.confidence else None,
        }

    @torch.no_grad()
    def generate_tokens(
        self,
        prompts: Sequence[str],
        seed: int = 0,
        on_step: OnStep | None = None,
        head_steps: int | None = None,
        use_cache: bool = True,
        first_index: int = 0,
        **sample_overrides,
    ) -> torch.Tensor:
        """Tokens for ``prompts`` (one image each), in batches of ``sample.batch_size``;
        prompt ``i`` is image ``first_index + i`` of ``seed``."""
        seed = check_seed(seed)
        self.settings(head_steps, **sample_overrides)  # every value checked before any work
        scfg = self.sample_config(head_steps=head_steps, **sample_overrides)
        head_steps = self.head_steps(scfg.head_steps, scfg.head_sampler)
        out = []
        for start in range(0, len(prompts), scfg.batch_size):
            batch = list(prompts[start : start + scfg.batch_size])
            rng = ImageRNG.for_images(seed, range(first_index + start, first_index + start + len(batch)), self.device)
            emb, mask = self.text_encoder(batch)
            with self.autocast():
                out.append(
                    self.sampler.generate(
                        emb.to(self.device),
                        mask.to(self.device),
                        scfg,
                        rng,
                        head_steps=head_steps,
                        on_step=on_step,
                        use_cache=use_cache,
                    )
                )
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from tokens. On a CPU one image at a time: oneDNN picks its
        convolution kernels by the batch's shape (on a Xeon with AMX, an image decoded alone
        and in a batch of 5 differed in the last bits), and a seed must fix an image whatever
        the batch. Measured cost: 70 ms instead of 58 ms for 16 shipped-size images."""
        parts = tokens.split(1) if self.device.type == "cpu" and len(tokens) > 1 else (tokens,)
        with self.autocast():
            return torch.cat([self.tokenizer.decode(p) for p in parts]).float().clamp(-1, 1)

    def autocast(self):
        bf16 = sampling_precision(self.cfg.train.precision, self.device) == Precision.BF16
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def __call__(
        self,
        prompts: str | Sequence[str],
        seed: int = 0,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        first_index: int = 0,
        **sample_overrides,
    ):
        """Images for ``prompts``: a list of PIL images (or a (B, 3, H, W) tensor in [-1, 1]).

        Image ``i`` (prompts repeated ``num_images_per_prompt`` times) is fixed by ``(seed,
        first_index + i)``, whatever the batch size. Keyword overrides of the sample config:
        ``cfg``, ``cfg_schedule``, ``temperature``, ``steps``, ``confidence``, ``batch_size``;
        and ``head_steps`` for the diffusion head.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        n = num_images_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, not {n!r}")
        if output_type not in ("pil", "tensor"):
            raise ValueError(f"output_type must be 'pil' or 'tensor', not {output_type!r}")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        images = self.decode(self.generate_tokens(prompts, seed=seed, first_index=first_index, **sample_overrides))
        return images if output_type == "tensor" else to_pil(images)
