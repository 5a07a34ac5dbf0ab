"""The trainable text aligner: a few transformer blocks on top of the frozen text encoder.

It also owns the condition dropout of classifier-free guidance: a dropped (or empty)
prompt is replaced by a learned null embedding, so "unconditional" is a prompt the model
has actually been trained on.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fluid.model.blocks import TextBlock


class TextAligner(nn.Module):
    def __init__(
        self,
        text_dim: int,
        width: int,
        depth: int,
        heads: int,
        max_length: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.max_length = max_length
        self.proj = nn.Linear(text_dim, width)
        self.pos = nn.Parameter(torch.zeros(1, max_length, width))
        self.null = nn.Parameter(torch.zeros(width))
        self.blocks = nn.ModuleList(TextBlock(width, heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None):
        """emb: (B, L, text_dim) frozen-encoder tokens; mask: (B, L) bool, True = real token;
        drop: (B,) bool, True = use the null embedding (CFG's unconditional branch).

        Returns aligned text (B, L, W) and its mask; a dropped or empty row has exactly one
        valid position holding the null embedding.
        """
        b, length, _ = emb.shape
        if length == 0:  # every prompt in the batch is empty
            emb, mask, length = emb.new_zeros(b, 1, emb.shape[-1]), mask.new_zeros(b, 1), 1
        if length > self.max_length:
            raise ValueError(f"text has {length} tokens but the aligner was built for at most {self.max_length}")
        null_row = ~mask.any(dim=1)  # (B,) empty prompts are unconditional
        if drop is not None:
            null_row = null_row | drop
        x = self.proj(emb)  # (B, L, W)
        null_x = torch.zeros_like(x)
        null_x[:, 0] = self.null.to(x.dtype)
        x = torch.where(null_row[:, None, None], null_x, x)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        mask = torch.where(null_row[:, None], null_mask, mask)
        x = x + self.pos[:, :length]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x), mask
