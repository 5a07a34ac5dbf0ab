"""The frozen tokenizer and text encoder: :class:`FrozenEncoder`, the one step from raw pairs
to what the generator trains on, and what a cache stores per record.

Continuous tokenizers: the posterior moments in *token space* (mean and log-variance of
``patchify((z - shift) * scale)``), so that training draws a fresh posterior sample each
time it sees a record, exactly as ``tokenizer.encode(images, generator)`` would:
``tokens = mean + exp(logvar / 2) * noise``. Discrete tokenizers: the code indices.
Both for the image and, when asked, its horizontal mirror.
"""

from __future__ import annotations

import math
import warnings

import torch

from fluid.config import TokenType
from fluid.data.batches import EncodedBatch, RawBatch
from fluid.runtime import Precision, autocast
from fluid.tokenizers.base import patchify


class FrozenEncoder:
    """Raw pairs -> :class:`EncodedBatch`: images through the frozen tokenizer (one posterior
    sample drawn with the caller's generator for continuous tokens, codes for discrete ones),
    captions through the frozen text encoder, both on ``device``.

    ``precision`` is the autocast the tokenizer runs under (``fluid.runtime.autocast``): the
    trainer's, so that its tokens are the ones it always used; fp32 for validation sets.
    """

    def __init__(self, tokenizer, text_encoder, device="cpu", precision: Precision | str = Precision.FP32):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.device, self.precision = torch.device(device), Precision(precision)

    def tokens(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, N, D) float32 tokens or (B, N) codes."""
        with torch.no_grad(), autocast(self.device, self.precision):
            tokens = self.tokenizer.encode(images.to(self.device), generator=generator)
        return tokens.float() if tokens.is_floating_point() else tokens

    def text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings (B, L, Dt), mask (B, L)) on the device."""
        emb, mask = self.text_encoder(captions)
        return emb.to(self.device), mask.to(self.device)

    def __call__(self, batch: RawBatch, generator: torch.Generator | None = None) -> EncodedBatch:
        tokens = self.tokens(batch.images, generator)
        return EncodedBatch(tokens, *self.text(batch.captions))


def token_moments(tokenizer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [-1, 1] -> token-space posterior (mean, logvar), each (B, N, D) float32."""
    if hasattr(tokenizer, "encode_moments"):  # a tokenizer that knows its own moments
        return tokenizer.encode_moments(images)
    from fluid.tokenizers.adapters import DiffusersKLTokenizer
    from fluid.tokenizers.autoencoder import KLAutoencoder

    tokenizer._check_images(images)
    with torch.no_grad():
        if isinstance(tokenizer, KLAutoencoder):
            mean, logvar = tokenizer.posterior(images)  # each (B, C, h, w)
            c = tokenizer.cfg
            scale, shift, p = c.scale, c.shift, c.patch_size
        elif isinstance(tokenizer, DiffusersKLTokenizer):
            dist = tokenizer.vae.encode(images).latent_dist
            mean, logvar = dist.mean.float(), dist.logvar.float()  # each (B, C, h, w)
            scale, shift, p = tokenizer.scale, tokenizer.shift, tokenizer.patch_size
        else:
            raise TypeError(
                f"cannot read posterior moments from a {type(tokenizer).__name__}; "
                f"give it an encode_moments(images) -> (mean, logvar) method"
            )
    # tokens = (z - shift) * scale with z ~ N(mean, exp(logvar)): the variance scales by scale**2.
    mean = patchify((mean.float() - shift) * scale, p)  # (B, N, D)
    logvar = patchify(logvar.float() + 2.0 * math.log(scale), p)  # (B, N, D)
    return mean, logvar


def sample_tokens(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One posterior sample per record from cached moments, float32."""
    mean, logvar = mean.float(), logvar.float()
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


@torch.no_grad()
def encode_images(tokenizer, images: torch.Tensor, views: int) -> dict[str, torch.Tensor]:
    """Cache tensors for a batch: ``mean``/``logvar`` (B, V, N, D) or ``codes`` (B, V, N);
    view 0 is the image, view 1 (when ``views == 2``) its horizontal mirror."""
    B = images.shape[0]
    x = images if views == 1 else torch.cat([images, images.flip(-1)])  # (V*B, 3, H, W)
    if tokenizer.token_type == TokenType.CONTINUOUS:
        mean, logvar = token_moments(tokenizer, x)  # each (V*B, N, D)
        split = lambda t: t.reshape(views, B, *t.shape[1:]).transpose(0, 1)  # noqa: E731  (B, V, N, D)
        return {"mean": split(mean).contiguous(), "logvar": split(logvar).contiguous()}
    codes = tokenizer.encode(x)  # (V*B, N)
    return {"codes": codes.reshape(views, B, -1).transpose(0, 1).contiguous()}  # (B, V, N)


def _hf_tokenizer(text_encoder):
    """The ``transformers`` tokenizer behind a text encoder (through caching wrappers), if any."""
    enc = text_encoder
    for _ in range(4):
        if callable(getattr(enc, "tokenizer", None)):
            return enc.tokenizer
        enc = getattr(enc, "encoder", None)
        if enc is None:
            return None
    return None


def caption_token_counts(text_encoder, captions: list[str]) -> list[int] | None:
    """Encoder tokens of each caption before truncation (None if the encoder does not say)."""
    tok = _hf_tokenizer(text_encoder)
    if tok is None or not captions:
        return None
    return [len(ids) for ids in tok(captions, add_special_tokens=True, verbose=False)["input_ids"]]


def encode_text(text_encoder, captions: list[str]) -> list[torch.Tensor]:
    """Each caption's unpadded embedding (len_i, dim) float32 on the CPU. Truncation warnings
    are silenced: preparation counts truncated captions itself."""
    from fluid.text.base import PromptTruncatedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        return [r.float().cpu() for r in text_encoder.rows(captions)]
