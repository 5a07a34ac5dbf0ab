"""Adapters that make pretrained diffusers autoencoders speak the tokenizer interface.

- :class:`DiffusersKLTokenizer`: a ``diffusers.AutoencoderKL`` (the SD-VAE). Latents are
  normalised with the model's own ``shift_factor`` (if set) and ``scaling_factor``, then
  patchified into ``patch_size`` x ``patch_size`` tokens.
- :class:`DiffusersVQTokenizer`: a ``diffusers.VQModel`` (a VQGAN). Tokens are the code
  indices of its quantiser; decoding looks them up in its codebook.

Weights load with ``use_safetensors=True``: a folder with only pickled ``.bin`` weights is
refused rather than unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fluid.config import TokenType
from fluid.tokenizers.base import ImageTokenizer, patchify, unpatchify

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _check_local(folder: str) -> None:
    p = Path(folder)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"tokenizer folder {p}: missing config.json")
        if not (p / DIFFUSERS_WEIGHTS).is_file():
            raise FileNotFoundError(
                f"tokenizer folder {p}: missing {DIFFUSERS_WEIGHTS} (pickled weights are not loaded)"
            )


class DiffusersKLTokenizer(ImageTokenizer):
    token_type = TokenType.CONTINUOUS
    vocab_size = 0

    def __init__(self, vae, patch_size: int = 2):
        super().__init__()
        self.vae = vae
        c = vae.config
        self.patch_size = patch_size
        self.downsample = 2 ** (len(c.block_out_channels) - 1)
        self.latent_channels = c.latent_channels
        self.token_dim = c.latent_channels * patch_size**2
        self.scale = float(c.scaling_factor if c.scaling_factor is not None else 1.0)
        self.shift = float(c.shift_factor) if getattr(c, "shift_factor", None) is not None else 0.0
        self.name = f"diffusers-kl-f{self.downsample}"

    @classmethod
    def from_pretrained(cls, path: str, patch_size: int = 2) -> DiffusersKLTokenizer:
        from diffusers import AutoencoderKL

        _check_local(path)
        return cls(AutoencoderKL.from_pretrained(path, use_safetensors=True).eval(), patch_size)

    def grid_size(self, resolution: int) -> int:
        step = self.downsample * self.patch_size
        if resolution % step:
            raise ValueError(f"{self.name}: resolution {resolution} is not a multiple of {step} (downsampling x patch)")
        return resolution // step

    @torch.no_grad()
    def encode(self, images, generator=None, sample=True) -> torch.Tensor:
        self._check_images(images)
        dist = self.vae.encode(images).latent_dist
        if sample:
            mean, std = dist.mean.float(), dist.std.float()
            z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        else:
            z = dist.mean.float()  # (B, C, h, w)
        z = (z - self.shift) * self.scale
        return patchify(z, self.patch_size)  # (B, N, C*p*p)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"{self.name}: tokens must be (B, N, {self.token_dim}), got {tuple(tokens.shape)}")
        s = self._grid_from_tokens(tokens.shape[1]) * self.patch_size
        z = unpatchify(tokens.float(), self.patch_size, s, s)  # (B, C, h, w)
        z = z / self.scale + self.shift
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(z.to(dtype)).sample.float().clamp(-1, 1)  # (B, 3, H, W)

    def save(self, folder) -> None:
        self.vae.save_pretrained(str(folder), safe_serialization=True)


class DiffusersVQTokenizer(ImageTokenizer):
    token_type = TokenType.DISCRETE

    def __init__(self, vq):
        super().__init__()
        self.vq = vq
        c = vq.config
        self.downsample = 2 ** (len(c.block_out_channels) - 1)
        self.vocab_size = c.num_vq_embeddings
        self.token_dim = c.vq_embed_dim or c.latent_channels
        self.name = f"diffusers-vq-f{self.downsample}"

    @classmethod
    def from_pretrained(cls, path: str) -> DiffusersVQTokenizer:
        from diffusers import VQModel

        _check_local(path)
        return cls(VQModel.from_pretrained(path, use_safetensors=True).eval())

    def grid_size(self, resolution: int) -> int:
        if resolution % self.downsample:
            raise ValueError(f"{self.name}: resolution {resolution} is not a multiple of {self.downsample}")
        return resolution // self.downsample

    @torch.no_grad()
    def encode(self, images, generator=None, sample=True) -> torch.Tensor:
        """Code indices (B, N); ``generator``/``sample`` unused (quantisation is deterministic)."""
        self._check_images(images)
        h = self.vq.encode(images).latents  # (B, D, h, w)
        B, _, gh, gw = h.shape
        # The quantiser flattens (B, h, w) row-major, so indices come out in raster order.
        _, _, (_, _, idx) = self.vq.quantize(h)  # idx (B*h*w,)
        return idx.reshape(B, gh * gw)  # (B, N)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"{self.name}: tokens must be (B, N) code indices, got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"{self.name}: code indices must lie in [0, {self.vocab_size})")
        B, N = tokens.shape
        s = self._grid_from_tokens(N)
        z_q = self.vq.quantize.get_codebook_entry(tokens.reshape(-1).long(), (B, s, s, self.token_dim))  # (B, D, s, s)
        return self.vq.decode(z_q, force_not_quantize=True).sample.float().clamp(-1, 1)  # (B, 3, H, W)

    def save(self, folder) -> None:
        self.vq.save_pretrained(str(folder), safe_serialization=True)
