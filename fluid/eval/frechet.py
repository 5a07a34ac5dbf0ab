"""Frechet distances between feature distributions, FID's Inception features, and a cache
of reference statistics.

The Frechet distance between Gaussians N(mu_a, S_a) and N(mu_b, S_b) fitted to two feature
sets is ``|mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^(1/2)``. ``S_a S_b`` is not
symmetric, so we take the trace of its square root from the symmetric positive
semi-definite matrix ``S_a^(1/2) S_b S_a^(1/2)``, which has the same eigenvalues: two
``eigh`` calls in float64, no complex parts to discard.

FID is this distance in the 2048-d pool features of the TensorFlow Inception-v3 that
torch-fidelity reimplements (``FeatureExtractorInceptionV3``). Its weights are read from a
local file (``feature_extractor_weights_path``); nothing is downloaded. The file is checked
with ``torch.load(weights_only=True)`` before torch-fidelity reads it, so a file that would
run code when unpickled is refused.

Reference statistics (of real images) are computed once per dataset, protocol and feature
extractor and cached as ``.npz`` files (no pickles) under ``cache_dir()``. A file records the
key it was made for (dataset fingerprint, size, resolution, extractor identity) and is used
only if that record matches; a stale, foreign or unreadable file is recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from fluid.files import atomic_write, file_digest

INCEPTION_FEATURES = "2048"  # torch-fidelity's name of the pool3 features FID uses
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release file


@dataclasses.dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of N feature vectors, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        f = (
            features.detach().double().cpu().numpy()
            if isinstance(features, torch.Tensor)
            else np.asarray(features, np.float64)
        )
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
        return cls(f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), f.shape[0])

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n), "meta": np.array(json.dumps(meta or {}))}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to its name
                np.savez(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(z["mu"], z["sigma"], int(z["n"]))

    @staticmethod
    def load_meta(path: str | Path) -> dict:
        """The ``meta`` a file was saved with ({} if it has none)."""
        with np.load(Path(path), allow_pickle=False) as z:
            return json.loads(str(z["meta"])) if "meta" in z.files else {}


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues,
    from rounding, are taken as zero)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    root_a = _psd_sqrt(a.sigma)
    inner = root_a @ b.sigma @ root_a  # (D, D), symmetric PSD, same spectrum as S_a S_b
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_cross)


# ----------------------------------------------------------------------------- feature extractors


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 in [0, 255], as a PNG would store them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class InceptionFeatures:
    """FID's Inception-v3 pool features (B, 2048) of images (B, 3, H, W) in [-1, 1], from
    torch-fidelity with the weights in a local file. Images are quantised to uint8 first, as
    saved samples would be; torch-fidelity resizes them to 299 x 299."""

    dim = 2048

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu"):
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights {path} do not exist. FID needs torch-fidelity's Inception-v3 file "
                f"({INCEPTION_WEIGHTS_NAME}, from the torch-fidelity v0.2.0 release); download it once "
                f"where you have network and pass its path (--inception-weights)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- any unpickling problem means "not a plain weights file"
            raise ValueError(
                f"{path} is not a plain tensor state dict (torch.load weights_only=True failed: {e})"
            ) from None
        if not isinstance(state, dict) or "fc.weight" not in state or "Conv2d_1a_3x3.conv.weight" not in state:
            raise ValueError(f"{path} does not hold torch-fidelity InceptionV3 weights (keys like 'fc.weight')")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.model = FeatureExtractorInceptionV3(
            "inception-v3-compat", [INCEPTION_FEATURES], feature_extractor_weights_path=str(path)
        ).to(device)
        self.device = torch.device(device)
        self._identity = f"inception-v3-compat:{file_digest(path, 12)}"

    def identity(self) -> str:
        return self._identity

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (features,) = self.model(to_uint8(images).to(self.device))
        return features.float().cpu()  # (B, 2048)


def feature_stats(extractor: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor]) -> FeatureStats:
    """Statistics of ``extractor``'s features over an iterable of image batches."""
    feats = [extractor(b) for b in batches]
    if not feats:
        raise ValueError("no images to compute feature statistics from")
    return FeatureStats.from_features(torch.cat(feats))


# ----------------------------------------------------------------------------- reference cache


def cache_dir() -> Path:
    """Where reference statistics are kept: $FLUID_CACHE/fd-stats, else ~/.cache/fluid/fd-stats."""
    root = os.environ.get("FLUID_CACHE") or Path.home() / ".cache" / "fluid"
    return Path(root) / "fd-stats"


def cache_key(**parts) -> str:
    """A file-name-safe key from named parts (dataset, protocol, size, extractor identity...)."""
    text = "-".join(f"{k}={v}" for k, v in parts.items())
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:120]
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def cached_reference(
    key: str, compute: Callable[[], FeatureStats], directory: str | Path | None = None, meta: dict | None = None
) -> tuple[FeatureStats, Path, bool]:
    """Reference statistics for ``key``: read from the cache, or computed and stored.
    Returns (stats, file, whether it was read from the cache).

    The file is named after ``key`` and records it (with ``meta``); a file whose record does
    not match (written by an older version, or for other data behind a shortened name) or
    that cannot be read is recomputed and replaced, never trusted.
    """
    path = Path(directory if directory is not None else cache_dir()) / f"{key}.npz"
    record = {**(meta or {}), "key": key}
    if path.is_file():
        try:
            if FeatureStats.load_meta(path) == json.loads(json.dumps(record)):
                return FeatureStats.load(path), path, True
        except Exception:  # noqa: BLE001 -- truncated, not an npz, not ours: any unreadable file is recomputed
            pass
    stats = compute()
    stats.save(path, record)
    return stats, path, False
