"""Transformer building blocks: attention (self / cross, bidirectional / causal, with a KV
cache), MLP, the image block (self-attention, cross-attention, MLP) and the text block.

Pre-norm residual blocks; attention runs through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def take_rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D), pos: (B, K) -> (B, K, D), the rows of x at pos, in that order."""
    return x.gather(1, pos[..., None].expand(-1, -1, x.shape[-1]))


class KVCache:
    """Keys and values of one self-attention layer for incremental (raster) decoding.

    Allocated for the full sequence on the first write (taking the keys' device and dtype,
    which autocast decides); ``length`` is how many positions are filled.
    """

    def __init__(self, max_len: int):
        self.max_len, self.length = max_len, 0
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` (B, H, T, hd) after the filled positions; return all filled so far."""
        b, h, t, hd = k.shape
        if self.k is None:
            self.k = k.new_zeros(b, h, self.max_len, hd)  # (B, H, N, hd)
            self.v = v.new_zeros(b, h, self.max_len, hd)
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {t} > {self.max_len} positions")
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class Attention(nn.Module):
    """Multi-head attention. Self-attention when ``context`` is None, else cross-attention
    with queries from ``x`` and keys/values from ``context``."""

    def __init__(self, dim: int, heads: int, cross: bool = False, qk_norm: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.cross = heads, dim // heads, cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the cross-attention context (cacheable: the text is fixed)."""
        k, v = self.kv(context).chunk(2, dim=-1)  # (B, L, D) each
        return self.k_norm(self._split(k)), self._split(v)  # (B, H, L, hd)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, N, D). mask: (B, L) bool, True = attend (keys' padding mask).

        ``cache``: incremental causal decoding; x holds only the new positions.
        ``queries``: (B, K) positions of x whose outputs are wanted (self-attention, not
        causal): every position gives keys and values, only these ask; returns (B, K, D).
        """
        b, n, d = x.shape
        if self.cross:
            q = self.q_norm(self._split(self.q(x)))  # (B, H, N, hd)
            k, v = context_kv if context_kv is not None else self.context_kv(context)
        elif queries is not None:
            if causal or cache is not None:
                raise ValueError("attention at chosen queries is for bidirectional self-attention")
            w, bias = self.qkv.weight, self.qkv.bias  # rows: queries, keys, values
            k, v = F.linear(x, w[d:], bias[d:]).chunk(2, dim=-1)  # (B, N, D) each
            x = take_rows(x, queries)  # (B, K, D)
            n = x.shape[1]
            q = F.linear(x, w[:d], bias[:d])
            q, k, v = self.q_norm(self._split(q)), self.k_norm(self._split(k)), self._split(v)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            q, k, v = self.q_norm(self._split(q)), self.k_norm(self._split(k)), self._split(v)
            if cache is not None:
                # New queries attend to every cached position and to themselves; with one new
                # token per call no causal mask is needed within the call.
                if n > 1 and causal:
                    raise ValueError("a KV cache takes one new position per call in causal decoding")
                k, v = cache.append(k, v)
                causal = False
        attn_mask = mask[:, None, None, :] if mask is not None else None  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TextBlock(nn.Module):
    """Self-attention + MLP over text tokens (the text aligner's block)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)  # (B, L, D)
        return x + self.mlp(self.norm2(x))


class ImageBlock(nn.Module):
    """Self-attention over image tokens, cross-attention to the aligned text, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, qk_norm=qk_norm)
        self.cross_attn = Attention(dim, heads, cross=True, qk_norm=qk_norm)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor | None,
        text_mask: torch.Tensor,
        causal: bool = False,
        cache: KVCache | None = None,
        text_kv: tuple | None = None,
        queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D), or (B, K, D) at the ``queries`` positions (B, K) alone:
        every position still serves as a key, but only those go on through the block."""
        if queries is not None:
            a = self.self_attn(self.norm1(x), queries=queries)  # (B, K, D)
            x = take_rows(x, queries) + a
        else:
            x = x + self.self_attn(self.norm1(x), causal=causal, cache=cache)  # (B, N, D)
        x = x + self.cross_attn(self.norm2(x), context=text, mask=text_mask, context_kv=text_kv)
        return x + self.mlp(self.norm3(x))
