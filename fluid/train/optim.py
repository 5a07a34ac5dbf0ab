"""AdamW with the paper's weight-decay rule and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fluid.config import LRSchedule, TrainConfig

_NO_DECAY_MODULES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.Embedding)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices of linear/conv layers only: norms, biases and embeddings (including
    learned position embeddings and special tokens, held as bare Parameters) are exempt."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_matrix = isinstance(module, (nn.Linear, nn.Conv2d)) and name == "weight"
            (decay if is_matrix and not isinstance(module, _NO_DECAY_MODULES) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, warmup: int, total: int, schedule: LRSchedule) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up, then constant or cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == LRSchedule.CONSTANT:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, schedule: LRSchedule):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, schedule))
