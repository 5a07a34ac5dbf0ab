"""Exponential moving average of the weights, with a warm-up of the decay."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """Keeps ``self.model``, an averaged copy of a model.

    With ``warmup`` the decay at step s is min(decay, (1 + s) / (10 + s)): early on the
    average follows the weights closely, so a short run's EMA is not dominated by the random
    initialisation (a fixed 0.9999 would still hold ~80% of the initial weights after 2k steps).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
