"""Matmul FLOPs per image of a config, for training (forward + backward) and for sampling.

The scaling study's compute axis and the benchmarks' MFU figures read them from here; the
tests check both against ``torch.utils.flop_counter`` on built models.
"""

from __future__ import annotations

from fluid.config import MaskSchedule, ModelConfig, Order, TextConfig, TokenType


def mean_mask_fraction(num_tokens: int, schedule: MaskSchedule | str = "cosine", samples: int = 20_001) -> float:
    """Expected fraction of an image's tokens masked in random-order training (the tokens the
    head is trained on), with the rounding of ``fluid.model.masking.training_mask``: about
    2/pi = 0.64 for the cosine schedule (0.665 at 16 tokens), 0.90 for MAR's truncated normal."""
    import numpy as np

    u = (np.arange(samples) + 0.5) / samples  # midpoint rule over U[0, 1)
    if MaskSchedule(schedule) == MaskSchedule.TRUNCNORM:
        from scipy.stats import truncnorm

        ratio = truncnorm.ppf(u, (0.7 - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
    else:
        ratio = np.cos(np.pi / 2 * u)
    return float(np.clip(np.ceil(ratio * num_tokens), 1, num_tokens).mean() / num_tokens)


def flops_per_image(
    m: ModelConfig, t: TextConfig, text_len: int | None = None, train: bool = True, mask_ratio: float | None = None
) -> float:
    """Matmul FLOPs per image (forward + backward when ``train``), counting 2 per MAC.

    Training: every token goes through the backbone; the output head sees the predicted
    tokens (random order: ``mask_ratio`` of them, by default the schedule's mean; raster: all),
    the diffusion head ``timestep_multiplier`` times each. Backward is twice the forward,
    less the input gradients nobody needs (of the token embedding, the text projection and
    the head's input and timestep layers). Sampling counts one full generation without CFG
    (double it for CFG). Checked against ``torch.utils.flop_counter`` by the tests.
    """
    n, w, L = m.num_tokens, m.width, text_len or t.max_length
    hidden = int(m.mlp_ratio * w)
    hw = m.head_width_
    continuous = m.token_type == TokenType.CONTINUOUS
    if mask_ratio is None:
        mask_ratio = mean_mask_fraction(n, m.mask_schedule)
    # Per block: self-attention q, k, v, out and cross-attention q, out on every image token;
    # cross-attention k, v on every text token; QK^T and AV against n image and L text keys.
    per_block = n * 2 * (4 * w * w + 2 * w * w + 2 * w * hidden) + L * 2 * 2 * w * w + n * 2 * 2 * w * (n + L)
    backbone = m.depth * per_block
    text_in = 2 * L * t.dim * w  # frozen embeddings -> width
    aligner = t.aligner_depth * L * 2 * (4 * w * w + 2 * w * hidden + 2 * w * L) + text_in
    token_in = 2 * n * m.token_dim * w if continuous else 0  # discrete: an embedding lookup
    c, out_c = m.token_dim, (2 if m.learn_sigma else 1) * m.token_dim
    # Diffusion head, per row: input, timestep MLP, condition, AdaLN blocks (3 hw^2 modulation
    # + 2 hw^2 MLP each), final modulation and output.
    head_in = 2 * (c * hw + 256 * hw)  # inputs without gradient: x_t and the timestep features
    head_row = head_in + 2 * (hw * hw + w * hw + m.head_depth * 5 * hw * hw + 2 * hw * hw + hw * out_c)
    if train:
        rows = n * (mask_ratio if m.order == Order.RANDOM else 1.0)  # predicted tokens
        if continuous:
            head = rows * m.timestep_multiplier * head_row
            no_grad = rows * m.timestep_multiplier * head_in
        else:
            head, no_grad = rows * 2 * (w * w + w * m.vocab_size), 0
        forward = backbone + aligner + token_in + head
        return 3 * forward - token_in - text_in - no_grad
    head = n * (m.head_sample_steps * head_row if continuous else 2 * (w * w + w * m.vocab_size))
    if m.order == Order.RASTER:  # KV cache: each token passes once
        return backbone + aligner + token_in + head
    return min(64, n) * (backbone + token_in) + aligner + head
