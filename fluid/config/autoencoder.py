"""The autoencoder config and the registry of named tokenizer presets.

One :class:`AutoencoderConfig` describes one of our autoencoders (KL or VQ) completely: it
is written as ``config.json`` into the tokenizer folder and rebuilds the model on its own.
The latent ``scale`` and ``shift`` are data-derived (set by ``train_tokenizer`` after
training) and live here so a folder carries everything the generator needs.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, fields

from fluid.config.coerce import from_plain


class AEKind(str, enum.Enum):
    KL = "kl"  # continuous: diagonal-Gaussian posterior (SD-VAE style)
    VQ = "vq"  # discrete: nearest-neighbour codebook (VQGAN style)


class ReconLoss(str, enum.Enum):
    L1 = "l1"
    L2 = "l2"


@dataclass
class AutoencoderConfig:
    kind: AEKind = AEKind.KL
    resolution: int = 64
    """Training resolution (the model is fully convolutional; any multiple of the
    downsampling factor works at inference)."""
    stem: int = 2
    """Space-to-depth factor at the input (``pixel_unshuffle``) and output (``pixel_shuffle``):
    1 is plain SD-VAE; 2 keeps 3x3 convs off the full-resolution grid (see ``nets``)."""
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    """Width of each resolution level as a multiple of ``base_channels``; ``len - 1``
    stride-2 downsamplings, so the downsampling factor is ``stem * 2 ** (len - 1)``."""
    num_res_blocks: int = 1
    """Residual blocks per encoder level (the decoder has one more per level, as SD-VAE)."""
    latent_channels: int = 4
    """KL: channels of the latent grid. VQ: ignored (the code vectors have ``code_dim``)."""
    patch_size: int = 2
    """KL: every ``patch_size`` x ``patch_size`` latent patch is one token. VQ: must be 1."""
    norm_groups: int = 32
    attention: bool = True
    """One self-attention layer in the encoder's and decoder's mid block."""

    # -- losses (the training recipe travels with the weights) ------------------------
    recon_loss: ReconLoss = ReconLoss.L2
    """L2 by default: with L1 the model sat on the all-background solution (measured on shapes:
    15.3 dB after 90 s against 19.4 dB for L2), the median pixel being background."""
    edge_weight: float = 0.5
    """Weight of an L1 loss on horizontal/vertical image differences: a cheap stand-in for
    a perceptual loss that keeps edges sharp (no pretrained network, no download)."""
    kl_weight: float = 1e-6
    """KL only: weight of KL(q(z|x) || N(0, I)) per latent element, as in SD-VAE."""

    # -- VQ ---------------------------------------------------------------------------
    codebook_size: int = 1024
    code_dim: int = 8
    """Factorised codes: the lookup happens in this low-dimensional, l2-normalised space."""
    commitment_beta: float = 0.25
    dead_code_steps: int = 100
    """Training steps a code may go unused before it is re-initialised from encoder outputs."""

    # -- data-derived ---------------------------------------------------------------------
    scale: float = 1.0
    shift: float = 0.0
    """KL tokens are ``(latent - shift) * scale``: zero mean, unit variance on the data."""

    def __post_init__(self):
        self.kind = AEKind(self.kind)
        self.recon_loss = ReconLoss(self.recon_loss)
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if self.stem < 1:
            raise ValueError(f"stem must be >= 1, not {self.stem}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, not {self.channel_mult}")
        for m in self.channel_mult:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(
                    f"every level width (base_channels * mult = {self.base_channels * m}) must be divisible "
                    f"by norm_groups ({self.norm_groups})"
                )
        if self.resolution % self.downsample:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of the downsampling factor {self.downsample}"
            )
        if self.kind == AEKind.VQ and self.patch_size != 1:
            raise ValueError(
                f"VQ tokenizers use one code per latent position: patch_size must be 1, not {self.patch_size}"
            )
        if (self.resolution // self.downsample) % self.patch_size:
            raise ValueError(
                f"latent grid {self.resolution // self.downsample} is not divisible by patch_size {self.patch_size}"
            )
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, not {self.scale}")

    @property
    def downsample(self) -> int:
        return self.stem * 2 ** (len(self.channel_mult) - 1)

    @property
    def token_dim(self) -> int:
        if self.kind == AEKind.KL:
            return self.latent_channels * self.patch_size**2
        return self.code_dim

    def num_tokens(self, resolution: int | None = None) -> int:
        r = resolution or self.resolution
        if r % (self.downsample * self.patch_size):
            raise ValueError(
                f"resolution {r} is not a multiple of {self.downsample * self.patch_size} (downsampling x patch)"
            )
        return (r // (self.downsample * self.patch_size)) ** 2

    # -- (de)serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"], d["recon_loss"] = self.kind.value, self.recon_loss.value
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown autoencoder config key(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes) -> AutoencoderConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- presets

TOKENIZER_PRESETS: dict[str, callable] = {
    # The paper's geometry: f8 -> 8x8x4 latents -> 2x2 patches -> 16 tokens of 16.
    "shapes-kl-f8": lambda: AutoencoderConfig(kind=AEKind.KL, stem=2, channel_mult=(1, 2, 4), patch_size=2),
    # The shipped one (f8 rounds off 13 px objects): f4 -> 16x16x4 -> 4x4 patches -> 16 tokens of 64.
    "shapes-kl-f4": lambda: AutoencoderConfig(kind=AEKind.KL, stem=2, channel_mult=(1, 2), patch_size=4),
    # 16-channel tokens without losing resolution: f4 -> 16x16x1 latents -> 4x4 patches -> 16
    # tokens of 16 (the f8 geometry's token count and width, at the f4 latent grid).
    "shapes-kl-f4c1": lambda: AutoencoderConfig(
        kind=AEKind.KL, stem=2, channel_mult=(1, 2), latent_channels=1, patch_size=4
    ),
    # The discrete tokenizer: f16 -> 4x4 = 16 codes from 8192 (the paper's codebook size).
    "shapes-vq-f16": lambda: AutoencoderConfig(
        kind=AEKind.VQ, stem=2, channel_mult=(1, 2, 4, 4), patch_size=1, codebook_size=8192, code_dim=8
    ),
    # Tiny ones for tests: 32x32 images, 16 tokens, a few thousand parameters.
    "debug-kl": lambda: AutoencoderConfig(
        kind=AEKind.KL,
        resolution=32,
        stem=2,
        base_channels=16,
        channel_mult=(1, 2),
        norm_groups=8,
        patch_size=2,
    ),
    "debug-vq": lambda: AutoencoderConfig(
        kind=AEKind.VQ,
        resolution=32,
        stem=2,
        base_channels=16,
        channel_mult=(1, 2, 2),
        norm_groups=8,
        patch_size=1,
        codebook_size=64,
        code_dim=4,
        dead_code_steps=5,
    ),
}


def get_tokenizer_preset(name: str, **overrides) -> AutoencoderConfig:
    """A tokenizer preset by name, with optional field overrides (values of the fields' types,
    or strings and lists from the command line, coerced to them; unknown keys raise)."""
    if name not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; available: {', '.join(TOKENIZER_PRESETS)}")
    cfg = TOKENIZER_PRESETS[name]()
    if not overrides:
        return cfg
    return from_plain(AutoencoderConfig, {**cfg.to_dict(), **overrides}, prefix="")
