"""Vector quantiser with factorised, l2-normalised codes (as in ViT-VQGAN / "improved VQGAN").

The encoder emits low-dimensional vectors (``code_dim``, e.g. 8); both they and the
codebook entries are l2-normalised, so nearest neighbour = largest cosine similarity.
Lookup in a small normalised space keeps codebook usage high; codes that still go unused
for ``dead_code_steps`` training steps are re-initialised from recent encoder outputs.

Gradients: the straight-through estimator copies the decoder's gradient onto the encoder
output; the codebook learns from the codebook loss ``|sg[z] - e|^2`` and the encoder is
held near its code by the commitment loss ``beta * |z - sg[e]|^2``.

The lookup runs in float32 even under bf16 autocast: argmax over near-equal similarities
in bf16 would flip codes between otherwise identical runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (B, D, h, w) quantised, with straight-through gradient to z
    indices: torch.Tensor  # (B, h*w) long, raster order
    z: torch.Tensor  # (B*h*w, D) l2-normalised encoder outputs (for dead-code restarts)
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor  # exp(entropy) of this batch's code histogram


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, dead_code_steps: int = 100):
        super().__init__()
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(f"need codebook_size >= 2 and code_dim >= 1, got {codebook_size}, {code_dim}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.dead_code_steps = beta, dead_code_steps
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim))
        # Training bookkeeping, not model state: left out of the saved weights.
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long), persistent=False)

    def codes(self) -> torch.Tensor:
        return F.normalize(self.codebook.float(), dim=-1)  # (K, D)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        B, D, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D), raster order per image
            flat = F.normalize(flat, dim=-1)
            codes = self.codes()  # (K, D)
            idx = (flat @ codes.t()).argmax(dim=-1)  # (B*h*w,) max cosine = min l2 on the sphere
            q = codes[idx]  # (B*h*w, D)
            codebook_loss = F.mse_loss(q, flat.detach())
            commitment_loss = self.beta * F.mse_loss(flat, q.detach())
            q_st = flat + (q - flat).detach()  # straight-through: forward = q, backward = identity
            counts = torch.bincount(idx, minlength=self.codebook_size).float()  # (K,)
            p = counts / counts.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        if self.training and torch.is_grad_enabled():  # a training step, not an encode() call
            self._track_usage(counts)
        z_q = q_st.reshape(B, h, w, D).permute(0, 3, 1, 2)  # (B, D, h, w)
        indices = idx.reshape(B, h * w)  # (B, N), raster order
        return QuantizerOutput(z_q, indices, flat.detach(), codebook_loss, commitment_loss, perplexity)

    def lookup(self, indices: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Code vectors for ``indices`` (B, h*w) -> (B, D, h, w)."""
        if indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"code indices must be integers, not {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"code indices must lie in [0, {self.codebook_size}), got [{int(indices.min())}, {int(indices.max())}]"
            )
        B = indices.shape[0]
        q = self.codes()[indices.long()]  # (B, h*w, D)
        return q.reshape(B, h, w, self.code_dim).permute(0, 3, 1, 2)  # (B, D, h, w)

    # -- usage tracking and dead-code restarts ----------------------------------------------

    @torch.no_grad()
    def _track_usage(self, counts: torch.Tensor) -> None:
        self.steps_unused += 1
        self.steps_unused[counts > 0] = 0

    def usage(self) -> float:
        """Fraction of codes used within the last ``dead_code_steps`` training steps."""
        return (self.steps_unused < self.dead_code_steps).float().mean().item()

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-initialise every code unused for ``dead_code_steps`` steps with a randomly chosen
        recent encoder output ``z`` (N, D); returns how many were restarted."""
        dead = (self.steps_unused >= self.dead_code_steps).nonzero().squeeze(1)  # (n,)
        n = dead.numel()
        if n == 0 or z.shape[0] == 0:
            return 0
        if z.shape[0] >= n:  # distinct picks where possible, so revived codes do not coincide
            pick = torch.randperm(z.shape[0], generator=generator, device=z.device)[:n]
        else:
            pick = torch.randint(z.shape[0], (n,), generator=generator, device=z.device)
        self.codebook.data[dead] = z[pick].to(self.codebook.dtype)
        self.steps_unused[dead] = 0
        return n
