"""Output heads: the per-token diffusion head (continuous tokens) and the tied linear head
(discrete tokens)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class AdaLNResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x), shift, scale)), with (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)  # (M, W) each
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DiffusionHead(nn.Module):
    """A small MLP that denoises one token, conditioned on the backbone's output z for it.

    Input: noisy token x_t (M, C), timestep t (M,), condition z (M, cond_dim).
    Output: epsilon, plus the variance interpolation v when ``learn_sigma`` (M, 2C).
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, learn_sigma: bool = True):
        super().__init__()
        self.token_dim = token_dim
        self.input_proj = nn.Linear(token_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, 2 * token_dim if learn_sigma else token_dim)

    def zero_init(self) -> None:
        # Every residual block starts as the identity and the output as zero: the head begins
        # by predicting eps = 0 and the mid-range variance, a stable start (DiT / MAR).
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final_ada[-1].weight)
        nn.init.zeros_(self.final_ada[-1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """(M,) timesteps -> (M, W); a sampler computes it once per respaced step."""
        return self.time_mlp(timestep_embedding(t).to(self.input_proj.weight.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.time_condition(t) + self.cond_proj(z))

    def denoise(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The network given its full condition c = time + token condition, (M, W)."""
        h = self.input_proj(x)  # (M, W)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))  # (M, 2C)


class PackedDenoise:
    """``DiffusionHead.denoise`` for sampling on a CPU in fp32, its linears' weights reordered
    once into oneDNN's blocked layout (``sample.packed_head``).

    At sampling sizes the head's matmuls are a few dozen rows against 512-1536-wide weights,
    bound by reading the weights; the blocked layout and the SiLU fused into the first linear of
    each MLP make the head 1.5-1.7x faster on an AVX-512 CPU (benchmarks/README.md). The math is
    the same fp32 math in another summation order (results differ from eager in the last bits),
    and a row's output does not depend on the other rows.
    Weights are reordered again when the head's parameters change in place (a new checkpoint
    loaded into the same model); anywhere else (autocast, another dtype or device) it calls
    the head itself.
    """

    def __init__(self, head: DiffusionHead):
        self.head = head
        self._versions: list[int] | None = None

    @staticmethod
    def available() -> bool:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

    def _pack(self) -> None:
        reorder = torch.ops.mkldnn._reorder_linear_weight

        def pack(linear: nn.Linear):
            return reorder(linear.weight.detach(), None), linear.bias.detach()

        h = self.head
        self._input, self._final, self._out = pack(h.input_proj), pack(h.final_ada[1]), pack(h.out)
        self._blocks = [(pack(b.mlp[0]), pack(b.mlp[2]), pack(b.ada[1]), b.norm) for b in h.blocks]
        self._versions = [p._version for p in h.parameters()]

    def __call__(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.head
        weight = h.input_proj.weight
        if (
            x.device.type != "cpu"
            or weight.dtype != torch.float32
            or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
            or torch.is_grad_enabled()
        ):
            return h.denoise(x, c)
        if self._versions != [p._version for p in h.parameters()]:
            self._pack()
        linear = torch.ops.mkldnn._linear_pointwise
        y = linear(x, *self._input, "none", [], "")  # (M, W)
        sc = F.silu(c)  # every adaLN takes SiLU(c): computed once
        for first, second, ada, norm in self._blocks:
            shift, scale, gate = linear(sc, *ada, "none", [], "").chunk(3, dim=-1)
            inner = linear(modulate(norm(y), shift, scale), *first, "swish", [], "")
            y = y + gate * linear(inner, *second, "none", [], "")
        shift, scale = linear(sc, *self._final, "none", [], "").chunk(2, dim=-1)
        return linear(modulate(h.final_norm(y), shift, scale), *self._out, "none", [], "")  # (M, 2C)


class TiedLinearHead(nn.Module):
    """MaskGIT-style output for discrete tokens: a transform, then logits against the input
    code embedding (weights tied) plus a per-code bias."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """h: (..., W); embedding: the generator's input code embedding (V, W), passed in
        rather than held, so the tie is one tensor in the state dict."""
        h = self.norm(F.gelu(self.transform(h), approximate="tanh"))  # (..., W)
        return F.linear(h, embedding, self.bias)  # (..., V)
