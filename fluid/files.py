"""Reading and writing files the way a user and the rest of the system expect."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` with the permissions of any other new file.

    safetensors writes through a private temporary file and renames it, so its files come
    out ``0600`` where the JSON written beside them is ``0644``: a cache or checkpoint that
    another user (or a job running under another account) cannot read. Give the file the
    mode ``open()`` would have given it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())
    return path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: a reader
    sees the old file or the whole new one, never half of it. The temporary name is unique, so
    processes writing the same file at once do not tear each other's; on an error it is removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_lines(path: str | Path, what: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file (a prompts file, say), or an error that names
    the file and where it stops being text, rather than the codec's bare complaint."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{what} {path} is not UTF-8 text (line {line}, byte {e.start}): is it the right file?"
        ) from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def file_digest(path: str | Path, n: int = 16) -> str:
    """The first ``n`` hex digits of a file's SHA-256, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]
