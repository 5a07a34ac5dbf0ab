"""Image tokenizers: images (B, 3, H, W) in [-1, 1] <-> continuous (B, N, D) or discrete
(B, N) tokens. Our KL / VQ autoencoders, adapters for diffusers models, and loading;
their training recipe is :mod:`fluid.train.tokenizer` (it draws on the built-in data)."""

from fluid.tokenizers.base import ImageTokenizer, TokenizerKind, patchify, unpatchify
from fluid.tokenizers.load import load_tokenizer

__all__ = [
    "ImageTokenizer",
    "TokenizerKind",
    "load_tokenizer",
    "patchify",
    "unpatchify",
]
