"""Small shipped checkpoints for the built-in data, and where to find them.

    assets/tokenizers/shapes-kl/      KL autoencoder (continuous tokens)
    assets/tokenizers/shapes-vq/      VQ autoencoder (discrete tokens)
    assets/generators/<variant>/      one generator per variant, e.g. continuous-random

Each was made by a command in ``docs/shipped-models.md``; none is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from fluid.config import TokenType, parse_variant

ROOT = Path(__file__).resolve().parent
TOKENIZERS = {TokenType.CONTINUOUS: "shapes-kl", TokenType.DISCRETE: "shapes-vq"}


class MissingAssetError(FileNotFoundError):
    pass


def _need(path: Path, what: str, how: str) -> Path:
    if not (path / "config.json").exists():
        raise MissingAssetError(f"the shipped {what} is not at {path}; {how}")
    return path


def tokenizer_path(token_type: TokenType | str) -> Path:
    name = TOKENIZERS[TokenType(token_type)]
    return _need(
        ROOT / "tokenizers" / name,
        f"{TokenType(token_type).value} tokenizer",
        "make it with the commands in docs/shipped-models.md or pass --tokenizer",
    )


def generator_path(variant: str) -> Path:
    parse_variant(variant)  # clear error for an unknown name
    return _need(
        ROOT / "generators" / variant,
        f"{variant} generator",
        "make it with the commands in docs/shipped-models.md or pass a checkpoint",
    )
