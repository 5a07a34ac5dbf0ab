"""``ShapesDataset``: numbered, deterministic splits of the ``shapes`` world; item ``i`` of a
split is drawn from a random stream seeded by ``(split, i)`` and rendered on demand."""

from __future__ import annotations

import random
from typing import Sequence

import torch

from fluid.shapes.render import render
from fluid.shapes.scenes import COLORS, FAMILIES, HELD_OUT, KINDS, SPLITS, Family, SceneSpec, item_seed, sample_spec


class ShapesDataset:
    """Deterministic shapes text-image pairs: item ``i`` of a split is the same everywhere.

    Args:
        split: "train", "val" or "test" (different random streams, so different scenes).
        resolution: image side in pixels.
        holdout: train split only: no object ever has a HELD_OUT (colour, kind) combination.
        size: number of items; defaults to 10**9 for train (effectively unbounded) and 10_000
            for val and test.
        families: the families to draw from (default all six).
        family_weights: relative frequency of each entry of ``families`` (default equal).
    """

    DEFAULT_SIZES = {"train": 10**9, "val": 10_000, "test": 10_000}

    def __init__(
        self,
        split: str = "train",
        resolution: int = 64,
        holdout: bool = False,
        size: int | None = None,
        families: Sequence[Family | str] | None = None,
        family_weights: Sequence[float] | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        if int(resolution) != resolution or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, not {resolution!r}")
        self.split, self.resolution, self.holdout = split, int(resolution), bool(holdout)
        self.size = self.DEFAULT_SIZES[split] if size is None else int(size)
        if self.size <= 0:
            raise ValueError(f"size must be positive, not {size!r}")
        try:
            self.families = tuple(Family(f) for f in (families if families is not None else FAMILIES))
        except ValueError as e:
            raise ValueError(f"{e}; families are {', '.join(f.value for f in FAMILIES)}") from None
        if not self.families:
            raise ValueError("families must not be empty")
        weights = [1.0] * len(self.families) if family_weights is None else [float(w) for w in family_weights]
        if len(weights) != len(self.families) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"family_weights must be {len(self.families)} non-negative numbers"
                f" with a positive sum, not {family_weights!r}"
            )
        self.family_weights = tuple(weights)
        held = set(HELD_OUT) if (self.holdout and split == "train") else set()
        self._allowed = {k: [c for c in COLORS if (c, k) not in held] for k in KINDS}

    def __len__(self) -> int:
        return self.size

    def spec(self, index: int) -> SceneSpec:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a {self.split} split of {self.size}")
        rng = random.Random(item_seed(self.split, int(index)))
        family = rng.choices(self.families, weights=self.family_weights)[0]
        return sample_spec(rng, family, self._allowed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        spec = self.spec(index)
        return render([spec], self.resolution)[0], spec.caption

    def batch(self, indices: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[str]]:
        """Images (B, 3, H, W) in [-1, 1] rendered in one vectorised call, and captions."""
        specs = [self.spec(int(i)) for i in indices]
        return render(specs, self.resolution, device), [s.caption for s in specs]
