"""Measurements shared by tokenizer training, benchmarks and tests: PSNR, encode/decode
throughput, and an originals-vs-reconstructions picture."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch


def psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2), shape (B,)."""
    mse = (recon.float().clamp(-1, 1) - images.float()).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def tokenizer_speed(
    tokenizer, resolution: int, batch_size: int = 128, repeats: int = 3, autocast=contextlib.nullcontext
) -> dict:
    """Encode and decode images/s at ``batch_size`` (after one warm-up call), on random
    images / tokens; encode uses posterior sampling as the generator's trainer does."""
    was_training = tokenizer.training
    tokenizer.eval()
    g = torch.Generator(tokenizer.device).manual_seed(0)
    images = torch.rand(batch_size, 3, resolution, resolution, generator=g, device=tokenizer.device) * 2 - 1
    out = {"speed_batch": batch_size, "speed_threads": torch.get_num_threads()}
    with autocast():
        tokens = tokenizer.encode(images, generator=g)
        t = time.perf_counter()
        for _ in range(repeats):
            tokens = tokenizer.encode(images, generator=g)
        out["encode_img_s"] = repeats * batch_size / (time.perf_counter() - t)
        tokenizer.decode(tokens)
        t = time.perf_counter()
        for _ in range(repeats):
            tokenizer.decode(tokens)
        out["decode_img_s"] = repeats * batch_size / (time.perf_counter() - t)
    tokenizer.train(was_training)
    return out


@torch.no_grad()
def save_recon_grid(
    tokenizer, images: torch.Tensor, path: str | Path, autocast=contextlib.nullcontext, upscale: int = 2
) -> None:
    """A PNG with originals on the top row and reconstructions (KL: posterior mean) below."""
    from PIL import Image

    with autocast():
        tokens = tokenizer.encode(images, sample=False)
        recon = tokenizer.decode(tokens)
    B, _, H, W = images.shape
    grid = torch.cat([images.float().cpu(), recon.float().cpu()], dim=0)  # (2B, 3, H, W)
    grid = grid.reshape(2, B, 3, H, W).permute(0, 3, 1, 4, 2).reshape(2 * H, B * W, 3)  # (2H, BW, 3)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    img = Image.fromarray(pixels)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)


def caption_match(images: torch.Tensor, captions: list[str]) -> list[bool]:
    """Whether the classical shapes detector reads each image as satisfying its caption
    (GenEval's rule per family). Run on reconstructions it says whether shapes survive the
    tokenizer; run on the originals it gives the detector's own ceiling."""
    from fluid.shapes.eval.detector import detect_batch, score

    return [score(c, d) for c, d in zip(captions, detect_batch(images.float().cpu()))]
