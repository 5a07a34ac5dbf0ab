"""Loading a tokenizer folder (ours or a diffusers model), and which folder a config names.

Kept apart from :mod:`fluid.tokenizers.base` (the interface) because it imports every
implementation, and every implementation imports the interface.
"""

from __future__ import annotations

from pathlib import Path

from fluid.assets import tokenizer_path
from fluid.config import FluidConfig
from fluid.tokenizers.base import FLUID_FORMAT, ImageTokenizer, TokenizerKind, read_json


def resolve_tokenizer(cfg: FluidConfig) -> str | Path:
    """The tokenizer a config trains or samples with: ``tokenizer.path``, else the shipped one."""
    return cfg.tokenizer.path or tokenizer_path(cfg.model.token_type)


def detect_kind(folder: Path) -> TokenizerKind:
    cfg = read_json(folder / "config.json")
    if cfg.get("format") == FLUID_FORMAT:
        return TokenizerKind.FLUID
    cls = cfg.get("_class_name")
    if cls == "AutoencoderKL":
        return TokenizerKind.DIFFUSERS_KL
    if cls == "VQModel":
        return TokenizerKind.DIFFUSERS_VQ
    raise ValueError(
        f"tokenizer folder {folder}: config.json is neither a Fluid tokenizer (format={FLUID_FORMAT!r}) "
        f"nor a diffusers AutoencoderKL / VQModel (_class_name={cls!r})"
    )


def _resolve_folder(path: Path) -> Path:
    """A folder with config.json, or a diffusers pipeline folder's ``vae``/``vqvae`` subfolder."""
    if (path / "config.json").is_file():
        return path
    for sub in ("vae", "vqvae"):
        if (path / sub / "config.json").is_file():
            return path / sub
    return path


def load_tokenizer(path: str | Path, kind: str | TokenizerKind = "auto", patch_size: int = 2) -> ImageTokenizer:
    """Load a tokenizer folder: ours (``config.json`` + ``model.safetensors``) or a diffusers
    ``AutoencoderKL`` / ``VQModel`` folder (``kind="auto"`` detects which). ``patch_size``
    applies to diffusers KL models (ours carry theirs in the config). With an explicit
    ``diffusers-*`` kind, ``path`` may also be a hub id (needs network)."""
    try:
        kind = TokenizerKind(kind)
    except ValueError:
        raise ValueError(
            f"unknown tokenizer kind {kind!r}; choose one of {', '.join(k.value for k in TokenizerKind)}"
        ) from None
    folder = Path(path)
    if not folder.is_dir():
        if kind in (TokenizerKind.AUTO, TokenizerKind.FLUID):
            raise FileNotFoundError(
                f"tokenizer folder {folder} does not exist (for a diffusers hub id pass "
                "kind='diffusers-kl' or 'diffusers-vq')"
            )
    else:
        folder = _resolve_folder(folder)
        if kind == TokenizerKind.AUTO:
            kind = detect_kind(folder)
    if kind == TokenizerKind.FLUID:
        from fluid.tokenizers.autoencoder import load_autoencoder

        return load_autoencoder(folder)
    from fluid.tokenizers.adapters import DiffusersKLTokenizer, DiffusersVQTokenizer

    if kind == TokenizerKind.DIFFUSERS_KL:
        return DiffusersKLTokenizer.from_pretrained(
            str(folder) if folder.is_dir() else str(path), patch_size=patch_size
        )
    return DiffusersVQTokenizer.from_pretrained(str(folder) if folder.is_dir() else str(path))
