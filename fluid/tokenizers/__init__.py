"""Image tokenizers: images (B, 3, H, W) in [-1, 1] <-> continuous (B, N, D) or discrete
(B, N) tokens. Our KL / VQ autoencoders, adapters for diffusers models, and loading;
their training recipe is :mod:`fluid.train.tokenizer` (it draws on the built-in data)."""

from fluid.tokenizers.base import ImageTokenizer, TokenizerKind, patchify, unpatchify
from fluid.tokenizers.load import load_tokenizer
from fluid.tokenizers.presets import (
    TOKENIZER_PRESETS,
    AEKind,
    AutoencoderConfig,
    ReconLoss,
    get_tokenizer_preset,
)

__all__ = [
    "AEKind",
    "AutoencoderConfig",
    "ImageTokenizer",
    "ReconLoss",
    "TOKENIZER_PRESETS",
    "TokenizerKind",
    "get_tokenizer_preset",
    "load_tokenizer",
    "patchify",
    "unpatchify",
]
