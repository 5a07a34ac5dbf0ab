"""The generator: text aligner + transformer backbone + output head, for all four variants.

Training (``forward``) follows the paper's algorithm step by step:

1. align the frozen text embeddings, dropping some prompts to the null embedding (CFG);
2. choose the tokens to predict: a random order and a cosine-schedule mask ratio per image
   (random order), or every token with inputs shifted by one (raster order);
3. embed the visible tokens ([MASK] elsewhere, or [BOS] first), add positions;
4. run the backbone: bidirectional (random) or causal (raster) self-attention, plus
   cross-attention to the aligned text, in every block;
5. score the predicted tokens: the diffusion loss of the per-token head (continuous) or the
   cross-entropy of the tied linear head (discrete).

Sampling loops live in ``fluid.sample.generate``; the methods they need are public here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fluid.config import ModelConfig, Order, TextConfig, TokenType
from fluid.diffusion import GaussianDiffusion
from fluid.model.aligner import TextAligner
from fluid.model.blocks import ImageBlock, KVCache
from fluid.model.heads import DiffusionHead, TiedLinearHead
from fluid.model.masking import random_orders, training_mask


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig, text_cfg: TextConfig):
        super().__init__()
        self.cfg, self.text_cfg = cfg, text_cfg
        self.continuous = cfg.token_type == TokenType.CONTINUOUS
        self.causal = cfg.order == Order.RASTER
        w = cfg.width
        self.aligner = TextAligner(
            text_cfg.dim, w, text_cfg.aligner_depth, cfg.heads, text_cfg.max_length, cfg.mlp_ratio, cfg.qk_norm
        )
        if self.continuous:
            self.token_in = nn.Linear(cfg.token_dim, w)
        else:
            self.token_in = nn.Embedding(cfg.vocab_size, w)
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_tokens, w))
        # [MASK] stands in for unknown tokens (random order); [BOS] starts the sequence (raster).
        self.special = nn.Parameter(torch.zeros(w))
        self.blocks = nn.ModuleList(ImageBlock(w, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(w)
        if self.continuous:
            self.head = DiffusionHead(cfg.token_dim, w, cfg.head_width_, cfg.head_depth, cfg.learn_sigma)
            self.diffusion = GaussianDiffusion.cosine(cfg.diffusion_steps, cfg.learn_sigma, cfg.prediction)
        else:
            self.head = TiedLinearHead(w, cfg.vocab_size)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Xavier for every linear map and zero biases: the usual ViT/MAE start.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Embeddings and learned tokens: small normal, as BERT/MaskGIT; the code embedding is
        # also the discrete head's output matrix, so it stays small.
        for p in (self.pos, self.special, self.aligner.pos, self.aligner.null):
            nn.init.normal_(p, std=0.02)
        if not self.continuous:
            nn.init.normal_(self.token_in.weight, std=0.02)
        if self.continuous and self.cfg.zero_init:
            self.head.zero_init()

    def _apply(self, fn, recurse=True):
        # Keep the (plain, non-module) noise schedule on the parameters' device.
        super()._apply(fn, recurse)
        if self.continuous:
            self.diffusion.to(self.pos.device)
        return self

    # ------------------------------------------------------------------------- training

    def forward(
        self,
        tokens: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        text_dropout: float | None = None,
        vlb_weight: float | None = None,
    ) -> torch.Tensor:
        """Mean loss over the predicted tokens.

        tokens: (B, N, C) continuous or (B, N) discrete; text_emb: (B, L, Dt); text_mask: (B, L).
        ``generator`` drives every random choice (dropout, orders, masks, timesteps, noise).
        ``text_dropout`` and ``vlb_weight`` override the config's (validation measures without
        dropout, and can measure the epsilon MSE alone with ``vlb_weight=0``).
        """
        b, n = tokens.shape[:2]
        p = self.cfg.text_dropout if text_dropout is None else text_dropout
        drop = torch.rand(b, generator=generator, device=tokens.device) < p  # (B,)
        text, text_mask = self.aligner(text_emb, text_mask, drop)  # (B, L, W)
        if self.causal:
            predict = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
            x = self.embed_shifted(tokens)  # (B, N, W)
        else:
            orders = random_orders(b, n, generator, tokens.device)  # (B, N)
            predict = training_mask(orders, generator, self.cfg.mask_schedule.value)  # (B, N)
            x = self.embed_masked(tokens, known=~predict)  # (B, N, W)
        h = self.backbone(x, text, text_mask)  # (B, N, W)
        return self.token_loss(h[predict], tokens[predict], generator, vlb_weight)  # (M, W), (M, C) or (M,)

    def token_loss(
        self,
        z: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
        vlb_weight: float | None = None,
    ) -> torch.Tensor:
        if not self.continuous:
            return F.cross_entropy(self.logits(z).float(), target)
        # The head sees each token at several timesteps: a cheap way to lower the loss's
        # variance, since the backbone ran once for all of them.
        k = self.cfg.timestep_multiplier
        z, target = z.repeat(k, 1), target.repeat(k, 1)  # (kM, W), (kM, C)
        t = torch.randint(0, self.diffusion.num_steps, (z.shape[0],), generator=generator, device=z.device)
        noise = torch.randn(target.shape, generator=generator, device=z.device, dtype=target.dtype)
        losses = self.diffusion.training_losses(
            lambda xt, tt: self.head(xt, tt, z),
            target,
            t,
            noise,
            vlb_weight=self.cfg.vlb_weight if vlb_weight is None else vlb_weight,
        )
        return losses.mean()

    # ------------------------------------------------------------------------- pieces

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) or (B, N) -> (B, N, W), without positions."""
        return self.token_in(tokens)

    def embed_masked(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Random order: known tokens embedded, the rest [MASK]; plus positions. known: (B, N) bool."""
        x = self.embed_tokens(tokens)  # (B, N, W)
        x = torch.where(known[..., None], x, self.special.to(x.dtype))
        return x + self.pos

    def embed_shifted(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raster order (teacher forcing): position i sees token i-1, position 0 sees [BOS]."""
        x = self.embed_tokens(tokens[:, :-1])  # (B, N-1, W)
        bos = self.special.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        return torch.cat([bos, x], dim=1) + self.pos  # (B, N, W)

    def embed_step(self, prev: torch.Tensor | None, i: int, batch: int) -> torch.Tensor:
        """Raster decoding input at position i: [BOS] (i = 0) or the embedding of token i-1."""
        if prev is None:
            x = self.special.expand(batch, 1, -1)  # (B, 1, W)
        else:
            x = self.embed_tokens(prev[:, None])  # (B, 1, W)
        return x + self.pos[:, i : i + 1]

    def backbone(
        self,
        x: torch.Tensor,
        text: torch.Tensor | None,
        text_mask: torch.Tensor,
        caches: list[KVCache] | None = None,
        text_kvs: list | None = None,
        outputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, W) -> (B, N, W). With ``caches``, x holds only new positions (raster decoding).

        ``outputs`` (B, K), random order only: the positions whose features are wanted, in
        that order, (B, K, W). No other position's output is read after the last block's
        keys and values, so the last block runs its queries, cross-attention and MLP at
        those positions alone: the same numbers as the full pass, up to rounding.
        """
        if outputs is not None and self.causal:
            raise ValueError("outputs= is for the bidirectional (random-order) backbone")
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                text,
                text_mask,
                causal=self.causal and caches is None,
                cache=caches[i] if caches is not None else None,
                text_kv=text_kvs[i] if text_kvs is not None else None,
                queries=outputs if i == last else None,
            )
        return self.norm(x)

    def text_kv(self, text: torch.Tensor) -> list:
        """Cross-attention keys/values of every block for a fixed text (computed once per sample)."""
        return [block.cross_attn.context_kv(text) for block in self.blocks]

    def new_caches(self) -> list[KVCache]:
        return [KVCache(self.cfg.num_tokens) for _ in self.blocks]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Discrete tokens: (..., W) -> (..., V), through the tied code embedding."""
        return self.head(h, self.token_in.weight)
