"""Per-image random streams: a seed fixes each image, not a batch.

Image ``i`` of a call with seed ``s`` draws all of its randomness (its generation order,
the diffusion head's noise, its discrete samples) from its own ``torch.Generator``, seeded by
a hash of ``(s, i)``. So ``000-seed0.png`` is the same image whether it was made alone, in a
batch of 16, or by one of several processes sharing a prompt list (given its index in that
list), and nearby seeds or indices give unrelated streams.

The sampler draws for a batch at a time; :class:`ImageRNG` splits each draw into equal,
image-major parts, one per image: rows ``[b * k, (b + 1) * k)`` of a ``(B * k, ...)`` draw
come from image ``b``'s generator.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable

import torch


def check_seed(seed) -> int:
    """A seed is any integer (it is hashed, so 2**64 and -1 are as good as 0); bools and
    floats are refused rather than truncated."""
    if isinstance(seed, bool):
        raise TypeError(f"a seed must be an integer, not {seed!r}")
    try:
        return operator.index(seed)
    except TypeError:
        raise TypeError(f"a seed must be an integer, not {type(seed).__name__} {seed!r}") from None


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index`` in a call with ``seed``."""
    digest = hashlib.sha256(f"fluid-image/{check_seed(seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ImageRNG:
    """One ``torch.Generator`` per image of a batch."""

    def __init__(self, seeds: Iterable[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        if not self.generators:
            raise ValueError("an ImageRNG needs at least one image")

    @classmethod
    def for_images(cls, seed: int, indices: Iterable[int], device: torch.device | str = "cpu") -> ImageRNG:
        """The streams of images ``indices`` of a call with ``seed``."""
        return cls([image_seed(seed, i) for i in indices], device)

    def __len__(self) -> int:
        return len(self.generators)

    def _per_image(self, draw: Callable[[tuple, torch.Generator], torch.Tensor], size: tuple) -> torch.Tensor:
        rows, rest = size[0], tuple(size[1:])
        k, left = divmod(rows, len(self.generators))
        if left:
            raise ValueError(f"{rows} rows do not split evenly over {len(self.generators)} images")
        return torch.cat([draw((k, *rest), g) for g in self.generators])  # (B * k, *rest)

    def rand(self, *size: int) -> torch.Tensor:
        """Uniform [0, 1) of ``size`` (rows image-major), float32."""
        return self._per_image(lambda s, g: torch.rand(s, generator=g, device=self.device), size)

    def randn(self, *size: int) -> torch.Tensor:
        """Standard normal of ``size`` (rows image-major), float32."""
        return self._per_image(lambda s, g: torch.randn(s, generator=g, device=self.device), size)

    def multinomial(self, probs: torch.Tensor) -> torch.Tensor:
        """One index per row of ``probs`` (rows, V) -> (rows,), each image's rows from its stream."""
        k, left = divmod(probs.shape[0], len(self.generators))
        if left:
            raise ValueError(f"{probs.shape[0]} rows do not split evenly over {len(self.generators)} images")
        return torch.cat(
            [torch.multinomial(p, 1, generator=g).squeeze(1) for p, g in zip(probs.split(k), self.generators)]
        )
