"""Generation orders and masks: random orders with MaskGIT's cosine mask schedule, and the
per-step token counts of iterative random-order sampling."""

from __future__ import annotations

import math

import torch


def cosine_mask_ratio(u: torch.Tensor | float):
    """MaskGIT's schedule gamma(u) = cos(pi/2 * u): the fraction still masked at progress u."""
    if isinstance(u, torch.Tensor):
        return torch.cos(math.pi / 2 * u)
    return math.cos(math.pi / 2 * u)


def random_orders(
    batch: int, num_tokens: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A uniformly random permutation of token positions per image: (B, N) long."""
    return torch.rand(batch, num_tokens, generator=generator, device=device).argsort(dim=1)


def truncated_normal_mask_ratio(
    u: torch.Tensor, mean: float = 1.0, std: float = 0.25, low: float = 0.7, high: float = 1.0
) -> torch.Tensor:
    """MAR's training mask ratio: a normal(mean, std) truncated to [low, high], drawn by the
    inverse CDF from u ~ U[0, 1) so that one generator drives it."""
    cdf = lambda x: 0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2))))  # noqa: E731
    a, b = cdf(low), cdf(high)
    return (mean + std * torch.special.ndtri(a + (b - a) * u)).clamp(low, high)


def training_mask(
    orders: torch.Tensor, generator: torch.Generator | None = None, schedule: str = "cosine"
) -> torch.Tensor:
    """Mask the first n positions of each order, n = ceil(r * N) >= 1, with the mask ratio r
    drawn per image: r = gamma(u), u ~ U[0, 1) (``cosine``: MaskGIT and the paper), or MAR's
    truncated normal on [0.7, 1] (``truncnorm``).

    Returns (B, N) bool, True = masked (to be predicted).
    """
    b, n = orders.shape
    u = torch.rand(b, generator=generator, device=orders.device)
    ratio = truncated_normal_mask_ratio(u) if schedule == "truncnorm" else cosine_mask_ratio(u)
    num_masked = torch.ceil(ratio * n).clamp(1, n)  # (B,)
    rank = torch.empty_like(orders)
    rank.scatter_(1, orders, torch.arange(n, device=orders.device).expand(b, n))  # position -> place in order
    return rank < num_masked[:, None]


def tokens_per_step(num_tokens: int, steps: int) -> list[int]:
    """How many tokens each of ``steps`` random-order sampling steps generates.

    After step k, ``floor(N * gamma((k+1)/S))`` tokens remain masked, but every step
    generates at least one token and the last step all that remain.
    """
    steps = max(1, min(steps, num_tokens))
    counts, masked = [], num_tokens
    for k in range(steps):
        remaining = 0 if k == steps - 1 else math.floor(num_tokens * cosine_mask_ratio((k + 1) / steps))
        # Leave at least one token for each later step, and generate at least one now.
        remaining = max(steps - 1 - k, min(masked - 1, remaining))
        counts.append(masked - remaining)
        masked = remaining
    return counts
