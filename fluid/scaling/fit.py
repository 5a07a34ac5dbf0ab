"""Fits of the scaling study: power laws in log-log space and linear correlations.

Plain least squares with the usual t-based intervals, so every number in ``fits.json`` can be
checked by hand: a power law ``y = A * x^b`` is the line ``log10 y = log10 A + b log10 x``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass
class LinearFit:
    """y = intercept + slope * x, by ordinary least squares."""

    slope: float
    intercept: float
    r2: float
    pearson_r: float
    p_value: float
    slope_stderr: float
    n: int
    x_mean: float
    sxx: float
    residual_std: float

    def predict(self, x) -> np.ndarray:
        return self.intercept + self.slope * np.asarray(x, dtype=np.float64)

    def band(self, x, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Confidence band of the fitted line (the mean response) at ``x``."""
        x = np.asarray(x, dtype=np.float64)
        y = self.predict(x)
        if self.n <= 2:
            return y, y
        t = stats.t.ppf(0.5 + confidence / 2, self.n - 2)
        half = t * self.residual_std * np.sqrt(1.0 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        return y - half, y + half

    def to_dict(self) -> dict:
        return {
            k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in dataclasses.asdict(self).items()
            if k not in ("x_mean", "sxx", "residual_std")
        }


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a fit needs at least two points with different x")
    n = len(x)
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    resid = y - (intercept + slope * x)
    ss_res, ss_tot = float((resid**2).sum()), float(((y - ym) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    if n > 2 and ss_tot > 0 and np.ptp(y) > 0:
        r, p = stats.pearsonr(x, y)
        r, p = float(r), float(p)
    else:
        r, p = (math.copysign(1.0, slope) if slope else 0.0), float("nan")
    residual_std = math.sqrt(ss_res / (n - 2)) if n > 2 else 0.0
    return LinearFit(
        slope,
        intercept,
        r2,
        r,
        p,
        residual_std / math.sqrt(sxx) if n > 2 else float("nan"),
        n,
        float(xm),
        sxx,
        residual_std,
    )


def pearson_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Pearson r from ``n`` points (Fisher's z transform). With
    fewer than four points nothing is known: (-1, 1)."""
    if n < 4 or math.isnan(r):
        return -1.0, 1.0
    z = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12))
    half = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


@dataclasses.dataclass
class PowerLaw:
    """y = coefficient * x^exponent, fitted as a line in log10-log10 space."""

    line: LinearFit

    @property
    def exponent(self) -> float:
        return self.line.slope

    @property
    def coefficient(self) -> float:
        return 10**self.line.intercept

    def predict(self, x) -> np.ndarray:
        return 10 ** self.line.predict(np.log10(x))

    def band(self, x, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.line.band(np.log10(x), confidence)
        return 10**lo, 10**hi

    def to_dict(self) -> dict:
        return {
            "exponent": round(self.exponent, 6),
            "coefficient": self.coefficient,
            "r2": round(self.line.r2, 6),
            "exponent_stderr": round(self.line.slope_stderr, 6),
            "n": self.line.n,
            "space": "log10-log10",
        }


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power law needs positive x and y")
    return PowerLaw(linear_fit(np.log10(x), np.log10(y)))
