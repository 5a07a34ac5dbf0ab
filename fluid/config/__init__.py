"""Typed configuration: one tree (:class:`FluidConfig`) of per-component options, a
registry of named presets, YAML files and ``section.key=value`` overrides.

A :class:`FluidConfig` is plain data: it is written as ``config.json`` into every
checkpoint folder and is all that is needed to rebuild the model. The components' options
and their checks are in :mod:`fluid.config.options`, the conversion from and to plain data
in :mod:`fluid.config.coerce`; this module holds the tree, the overrides and the presets,
and is where every other module reads any of them from. What the machine can do (native
bf16, the precision ``auto`` means) is ``fluid.runtime``'s; parameter counts come from a
meta-device build of the model (``fluid.model.counts``), FLOP counts sit beside the scaling
code (``fluid.scaling.flops``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fluid.config.coerce import from_plain, to_plain
from fluid.config.options import (
    VARIANTS,
    CFGSchedule,
    ConfigError,
    DataConfig,
    HeadSampler,
    LRSchedule,
    MaskSchedule,
    ModelConfig,
    Order,
    Parallel,
    SampleConfig,
    TextConfig,
    TokenizerConfig,
    TokenType,
    TrainConfig,
    parse_variant,
    variant_name,
)
from fluid.runtime import Precision

__all__ = [
    "PRESETS",
    "VARIANTS",
    "CFGSchedule",
    "ConfigError",
    "DataConfig",
    "FluidConfig",
    "HeadSampler",
    "LRSchedule",
    "MaskSchedule",
    "ModelConfig",
    "Order",
    "Parallel",
    "Precision",
    "SampleConfig",
    "TextConfig",
    "TokenType",
    "TokenizerConfig",
    "TrainConfig",
    "apply_overrides",
    "get_preset",
    "parse_overrides",
    "parse_variant",
    "variant_name",
]


@dataclass
class FluidConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str = "custom"
    """The preset this config started from (informational)."""

    @property
    def lr_schedule(self) -> LRSchedule:
        if self.train.lr_schedule is not None:
            return self.train.lr_schedule
        return LRSchedule.COSINE if self.model.token_type == TokenType.DISCRETE else LRSchedule.CONSTANT

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FluidConfig:
        return from_plain(cls, d, prefix="")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FluidConfig:
        path = Path(path)
        text = path.read_text()
        d = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        if "preset" in d and set(d) == {"preset", "overrides"}:  # a short YAML: preset + overrides
            return get_preset(d["preset"], overrides=d.get("overrides") or {})
        return cls.from_dict(d)

    def replace(self, **sections) -> FluidConfig:
        return dataclasses.replace(self, **sections)


# ----------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str], form: str = "key=value") -> dict[str, Any]:
    """``["model.width=512", "data.flip=true"]`` -> ``{"model.width": 512, "data.flip": True}``:
    each value read as YAML (numbers, booleans, lists; anything else stays a string), to be
    coerced to its field's type by :func:`fluid.config.coerce.from_plain`."""
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form {form}")
        k, v = item.split("=", 1)
        pairs[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    return pairs


def apply_overrides(cfg: FluidConfig, overrides: dict[str, Any] | list[str]) -> FluidConfig:
    """Apply ``{"model.width": 512}`` or ``["model.width=512", ...]``; unknown keys raise."""
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides, form="section.key=value")
    d = cfg.to_dict()
    for key, value in overrides.items():
        if "." not in key:
            if isinstance(value, dict) and key in d and isinstance(d[key], dict):
                for k, v in value.items():
                    _set(d, f"{key}.{k}", v)
                continue
            raise ConfigError(
                f"override key {key!r} must be section.key (sections: {', '.join(k for k in d if k != 'preset')})"
            )
        _set(d, key, value)
    return FluidConfig.from_dict(d)


def _set(d: dict, key: str, value) -> None:
    section, name = key.split(".", 1)
    if section not in d or not isinstance(d[section], dict):
        raise ConfigError(f"unknown config section {section!r} in {key!r}")
    if name not in d[section]:
        raise ConfigError(f"unknown config key {key!r}; valid keys in {section}: {', '.join(sorted(d[section]))}")
    d[section][name] = value


# ----------------------------------------------------------------------------- presets


def _paper(width: int, depth: int, heads: int, **train) -> FluidConfig:
    """The paper's setup at one size: 256x256 images, SD-VAE / VQGAN tokens (256 per
    image), frozen T5-XXL + 6-block aligner, global batch 2048, 1M steps."""
    return FluidConfig(
        model=ModelConfig(width=width, depth=depth, heads=heads, num_tokens=256, token_dim=16, vocab_size=8192),
        text=TextConfig(encoder="t5", name_or_path="google/t5-v1_1-xxl", max_length=128, dim=4096),
        tokenizer=TokenizerConfig(kind="auto"),
        data=DataConfig(source="wds", resolution=256),
        train=TrainConfig(
            steps=1_000_000,
            batch_size=2048,
            lr=1e-4,
            warmup_steps=65_000,
            ema_decay=0.9999,
            compile=True,
            val_every=10_000,
            val_size=30_000,
            ckpt_every=10_000,
            **train,
        ),
    )


def _shapes(
    width: int,
    depth: int,
    heads: int,
    *,
    steps: int,
    batch_size: int,
    head_depth: int = 6,
    aligner_depth: int = 6,
    num_tokens: int = 16,
    lr: float = 4e-4,
) -> FluidConfig:
    """The built-in data: 64x64 shapes, 16 tokens, offline MiniLM text encoder."""
    return FluidConfig(
        model=ModelConfig(width=width, depth=depth, heads=heads, num_tokens=num_tokens, head_depth=head_depth),
        text=TextConfig(aligner_depth=aligner_depth),
        train=TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=min(1000, steps // 10),
            ema_decay=0.999,
            val_every=max(1, steps // 20),
            val_size=512,
            ckpt_every=max(1, steps // 10),
        ),
    )


def _quick() -> FluidConfig:
    cfg = _shapes(128, 4, 4, steps=5000, batch_size=64, head_depth=3, aligner_depth=1, lr=1e-3)
    cfg.model.head_width = 256
    cfg.data.pool, cfg.data.pool_encoded = 16384, True
    cfg.train.warmup_steps, cfg.train.ckpt_every, cfg.train.val_every, cfg.train.val_size = 200, 500, 1000, 256
    # Sampling chosen on held-out prompts (scripts/sample_sweep.py; README "The laptop recipe"):
    # a model trained this briefly draws tokens whose edges disagree where they meet unless the
    # head stays close to its mean path (temperature 0.1: single objects and colours 0.88 / 0.78
    # there, against 0.25 / 0.41 at the shipped models' 0.6).
    cfg.sample.cfg, cfg.sample.temperature, cfg.sample.cfg_schedule = 3.0, 0.1, CFGSchedule.CONSTANT
    return cfg


PRESETS: dict[str, callable] = {
    # A few seconds on a laptop: tests and smoke runs.
    "debug": lambda: _shapes(64, 2, 2, steps=200, batch_size=16, head_depth=2, aligner_depth=2, lr=1e-3),
    # The shipped models for the built-in data: small enough to ship (a few MB in fp16) and
    # to sample on a laptop CPU; the aligner and head are shallower than the paper's.
    "shapes-small": lambda: _shapes(160, 6, 5, steps=20_000, batch_size=256, head_depth=4, aligner_depth=2),
    # A laptop recipe: Fluid on the built-in data in about half an hour on 2 CPU cores. Smaller
    # backbone and aligner, a head wider than the 64-channel tokens, the pool encoded once (the
    # tokenizer's encoder would otherwise take most of each step), checkpoints every few minutes.
    "shapes-quick": lambda: _quick(),
    # More capacity for users with a GPU.
    "shapes-base": lambda: _shapes(384, 8, 6, steps=100_000, batch_size=256),
    # The performance-pass reference (DESIGN section 6): 64 tokens of 16 channels.
    "ref-512": lambda: _shapes(512, 8, 8, steps=100_000, batch_size=64, num_tokens=64),
    # The paper's sizes. Counts cover every trained part (6-block aligner, backbone, 6-block
    # head as wide as the backbone), not the frozen T5 or tokenizer. The paper does not give
    # depth/width; with our blocks these land within 3% of each name (checked by a test).
    "fluid-166m": lambda: _paper(768, 11, 12),  # 170.3M
    "fluid-369m": lambda: _paper(1024, 15, 16),  # 368.2M
    "fluid-665m": lambda: _paper(1280, 18, 20),  # 652.3M
    # DDP keeps ~16 bytes of training state per parameter on every GPU (docs/distributed.md):
    # past ~1B parameters the weights are sharded (FSDP2) with per-block recomputation.
    "fluid-3.1b": lambda: _paper(2048, 39, 16, parallel=Parallel.FSDP, activation_checkpointing=True),  # 3.07B
    "fluid-10.5b": lambda: _paper(4096, 32, 32, parallel=Parallel.FSDP, activation_checkpointing=True),  # 10.39B
}


def get_preset(name: str, variant: str | None = None, overrides: dict | list | None = None) -> FluidConfig:
    """A preset by name, optionally switched to another variant and overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    cfg.preset = name
    if variant is not None:
        token_type, order = parse_variant(variant)
        cfg.model.token_type, cfg.model.order = token_type, order
    if overrides:
        cfg = apply_overrides(cfg, overrides)
        cfg.preset = name
    return cfg
