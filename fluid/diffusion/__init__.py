"""Diffusion math (noise schedule, q_sample, hybrid loss, respaced sampler); imports nothing of ours."""

from .gaussian import GaussianDiffusion, cosine_alpha_bar, cosine_betas, space_timesteps

__all__ = ["GaussianDiffusion", "cosine_alpha_bar", "cosine_betas", "space_timesteps"]
