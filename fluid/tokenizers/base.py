"""The image-tokenizer interface the generator sees, and patchify/unpatchify.

Continuous tokens are ``(B, N, D)`` float, already normalised (``(latent - shift) * scale``
so they have about zero mean and unit variance on the data); discrete tokens are ``(B, N)``
long code indices. ``N`` runs over the token grid in raster (row-major) order.

``encode``/``decode`` are inference entry points: they run without gradients (the
tokenizer is frozen inside the generator) and follow whatever autocast context the caller
set; they always return float32 tokens / images.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from fluid.config import TokenType


class TokenizerKind(str, enum.Enum):
    """What a tokenizer folder holds (``TokenizerConfig.kind``)."""

    AUTO = "auto"  # detect from the folder's config.json
    FLUID = "fluid"  # our KL / VQ autoencoder
    DIFFUSERS_KL = "diffusers-kl"  # diffusers.AutoencoderKL (e.g. the SD-VAE)
    DIFFUSERS_VQ = "diffusers-vq"  # diffusers.VQModel (e.g. a VQGAN)


FLUID_FORMAT = "fluid-tokenizer"  # the "format" key of our config.json


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, (h/p)*(w/p), C*p*p): one token per p x p patch, raster order,
    channels of a token ordered (C, p_row, p_col)."""
    B, C, h, w = latents.shape
    if h % p or w % p:
        raise ValueError(f"latent grid {h}x{w} is not divisible by patch size {p}")
    x = latents.reshape(B, C, h // p, p, w // p, p)  # (B, C, h/p, p, w/p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h/p, w/p, C, p, p)
    return x.reshape(B, (h // p) * (w // p), C * p * p)  # (B, N, D)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, (h/p)*(w/p), C*p*p) -> (B, C, h, w)."""
    B, N, D = tokens.shape
    if h % p or w % p or N != (h // p) * (w // p) or D % (p * p):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not tile a {h}x{w} latent grid with patch size {p}")
    C = D // (p * p)
    x = tokens.reshape(B, h // p, w // p, C, p, p)  # (B, h/p, w/p, C, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h/p, p, w/p, p)
    return x.reshape(B, C, h, w)  # (B, C, h, w)


def weights_hash(module: nn.Module, n: int = 12, extra: str = "") -> str:
    """Short sha256 of the state dict (names, dtypes, shapes and bytes), in key order, and of
    ``extra`` (e.g. the config, whose latent scale/shift change the tokens too)."""
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)  # (numel,): view() as bytes needs >= 1 dim
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n]


class ImageTokenizer(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> tokens. Subclasses set the attributes below."""

    token_type: TokenType
    token_dim: int  # continuous: channels per token; discrete: code embedding dim (informational)
    vocab_size: int = 0  # discrete only
    name: str = "tokenizer"  # identity prefix

    def num_tokens(self, resolution: int) -> int:
        s = self.grid_size(resolution)
        return s * s

    def grid_size(self, resolution: int) -> int:
        """Side of the square token grid for a ``resolution`` x ``resolution`` image."""
        raise NotImplementedError

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save(self, folder: str | Path) -> None:
        raise NotImplementedError

    def identity(self) -> str:
        return f"{self.name}:{weights_hash(self)}"

    def freeze(self) -> ImageTokenizer:
        """Eval mode, no parameter gradients: how the generator uses a tokenizer."""
        self.eval().requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        self.grid_size(images.shape[-1])  # raises on a resolution the tokenizer cannot tile
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be square, got {images.shape[-2]}x{images.shape[-1]}")

    def _grid_from_tokens(self, n: int) -> int:
        s = int(round(n**0.5))
        if s * s != n:
            raise ValueError(f"token count {n} is not a square number")
        return s


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer folder {path.parent}: missing {path.name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer folder {path.parent}: {path.name} is not valid JSON ({e})") from None
