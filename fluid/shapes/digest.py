"""The identity of the built-in data: a digest of the code that draws it.

Kept out of the digested modules themselves, so that this file can change without every
recorded run looking as if its data had changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def renderer_digest() -> str:
    """A digest of the code that makes the ``shapes`` data (its scenes, its drawing and its
    splits): what a cache of rendered or encoded items, or a sweep's finished run, must match."""
    from fluid.shapes import dataset, render, scenes

    return ",".join(hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()[:12] for m in (scenes, render, dataset))
