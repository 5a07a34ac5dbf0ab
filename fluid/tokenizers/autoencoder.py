"""Our autoencoders: a KL autoencoder (SD-VAE style, continuous tokens) and a VQ
autoencoder (VQGAN style with factorised l2-normalised codes, discrete tokens).

Two paths through each model:

- ``forward(images, generator)`` is the training path: reconstruction plus the regulariser
  terms, with gradients.
- ``encode``/``decode`` are the frozen tokenizer interface of :class:`ImageTokenizer`.

A tokenizer folder is ``config.json`` (the :class:`AutoencoderConfig` plus a ``format``
tag) and ``model.safetensors``; loading never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fluid.config import TokenType
from fluid.config.autoencoder import AEKind, AutoencoderConfig
from fluid.files import save_safetensors
from fluid.tokenizers.base import FLUID_FORMAT, ImageTokenizer, patchify, read_json, unpatchify, weights_hash
from fluid.tokenizers.nets import Decoder, Encoder
from fluid.tokenizers.quantizer import VectorQuantizer

WEIGHTS = "model.safetensors"


@dataclass
class AEOutput:
    recon: torch.Tensor  # (B, 3, H, W), not clamped
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # regulariser terms, already weighted
    stats: dict[str, float] = field(default_factory=dict)  # for logging only
    z: torch.Tensor | None = None  # VQ: normalised encoder outputs (N, D), for dead-code restarts


class Autoencoder(ImageTokenizer):
    """Shared parts of our two autoencoders: config, geometry, saving."""

    def __init__(self, cfg: AutoencoderConfig, enc_out: int, dec_in: int):
        super().__init__()
        self.cfg = cfg
        self.name = f"fluid-{cfg.kind.value}-f{cfg.downsample}"
        args = (cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks)
        kw = dict(groups=cfg.norm_groups, attention=cfg.attention, stem=cfg.stem)
        self.encoder = Encoder(*args, out_ch=enc_out, **kw)
        self.decoder = Decoder(*args, in_ch=dec_in, **kw)
        self.token_dim = cfg.token_dim

    def grid_size(self, resolution: int) -> int:
        step = self.cfg.downsample * self.cfg.patch_size
        if resolution % step:
            raise ValueError(f"{self.name}: resolution {resolution} is not a multiple of {step} (downsampling x patch)")
        return resolution // step

    def identity(self) -> str:
        """Name + hash of weights and config: same weights with another scale/shift give
        other tokens, so they must not share an identity."""
        return f"{self.name}:{weights_hash(self, extra=json.dumps(self.cfg.to_dict(), sort_keys=True))}"

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_safetensors(state, folder / WEIGHTS)
        cfg = {"format": FLUID_FORMAT, **self.cfg.to_dict()}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    return KLAutoencoder(cfg) if cfg.kind == AEKind.KL else VQAutoencoder(cfg)


def load_autoencoder(folder: str | Path) -> Autoencoder:
    """Rebuild one of our autoencoders from its folder; clear errors for a missing file or
    weights that do not fit the config."""
    folder = Path(folder)
    d = read_json(folder / "config.json")
    if d.pop("format", None) != FLUID_FORMAT:
        raise ValueError(
            f"tokenizer folder {folder}: config.json is not a Fluid tokenizer config (format != {FLUID_FORMAT!r})"
        )
    try:
        cfg = AutoencoderConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tokenizer folder {folder}: bad config.json: {e}") from None
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"tokenizer folder {folder}: missing {WEIGHTS}")
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"tokenizer folder {folder}: cannot read {WEIGHTS} ({e})") from None
    model = build_autoencoder(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatch(es) (e.g. {k}: file {tuple(state[k].shape)} vs config "
                f"{tuple(expected[k].shape)})"
            )
        raise ValueError(f"tokenizer folder {folder}: {WEIGHTS} does not match config.json: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model.eval()


class KLAutoencoder(Autoencoder):
    token_type = TokenType.CONTINUOUS
    vocab_size = 0

    def __init__(self, cfg: AutoencoderConfig):
        if cfg.kind != AEKind.KL:
            raise ValueError(f"KLAutoencoder needs kind='kl', got {cfg.kind.value!r}")
        # The encoder emits mean and log-variance for every latent channel.
        super().__init__(cfg, enc_out=2 * cfg.latent_channels, dec_in=cfg.latent_channels)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each (B, C, h, w), float32."""
        moments = self.encoder(images).float()  # (B, 2C, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # each (B, C, h, w)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample_posterior(mean, logvar, generator=None) -> torch.Tensor:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> AEOutput:
        mean, logvar = self.posterior(images)
        z = self.sample_posterior(mean, logvar, generator)  # (B, C, h, w)
        recon = self.decoder(z).float()  # (B, 3, H, W)
        # KL(N(mean, var) || N(0, 1)) summed over latent elements, averaged over the batch (SD).
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return AEOutput(recon, {"kl": self.cfg.kl_weight * kl}, {"kl": kl.item(), "latent_std": mean.std().item()})

    @torch.no_grad()
    def encode_latents(self, images, generator=None, sample=True) -> torch.Tensor:
        """Raw latents (B, C, h, w) before scale/shift."""
        mean, logvar = self.posterior(images)
        return self.sample_posterior(mean, logvar, generator) if sample else mean

    @torch.no_grad()
    def encode(self, images, generator=None, sample=True) -> torch.Tensor:
        self._check_images(images)
        z = self.encode_latents(images, generator, sample)  # (B, C, h, w)
        z = (z - self.cfg.shift) * self.cfg.scale
        return patchify(z, self.cfg.patch_size).float()  # (B, N, C*p*p)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"{self.name}: tokens must be (B, N, {self.token_dim}), got {tuple(tokens.shape)}")
        s = self._grid_from_tokens(tokens.shape[1]) * self.cfg.patch_size  # latent side
        z = unpatchify(tokens.float(), self.cfg.patch_size, s, s)  # (B, C, h, w)
        z = z / self.cfg.scale + self.cfg.shift
        return self.decoder(z).float().clamp(-1, 1)  # (B, 3, H, W)


class VQAutoencoder(Autoencoder):
    token_type = TokenType.DISCRETE

    def __init__(self, cfg: AutoencoderConfig):
        if cfg.kind != AEKind.VQ:
            raise ValueError(f"VQAutoencoder needs kind='vq', got {cfg.kind.value!r}")
        super().__init__(cfg, enc_out=cfg.code_dim, dec_in=cfg.code_dim)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.commitment_beta, cfg.dead_code_steps)
        self.vocab_size = cfg.codebook_size

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> AEOutput:
        q = self.quantizer(self.encoder(images))  # z_q (B, D, h, w)
        recon = self.decoder(q.z_q).float()  # (B, 3, H, W)
        losses = {"codebook": q.codebook_loss, "commitment": q.commitment_loss}
        stats = {"perplexity": q.perplexity.item(), "usage": self.quantizer.usage()}
        return AEOutput(recon, losses, stats, z=q.z)

    @torch.no_grad()
    def encode(self, images, generator=None, sample=True) -> torch.Tensor:
        """Code indices (B, N) long; ``generator``/``sample`` are unused (quantisation is
        deterministic) and accepted for the common interface."""
        self._check_images(images)
        return self.quantizer(self.encoder(images)).indices  # (B, N)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"{self.name}: tokens must be (B, N) code indices, got {tuple(tokens.shape)}")
        s = self._grid_from_tokens(tokens.shape[1])
        z_q = self.quantizer.lookup(tokens, s, s)  # (B, D, s, s)
        return self.decoder(z_q).float().clamp(-1, 1)  # (B, 3, H, W)
