"""Training recipe for our autoencoders.

Loss: L2 (or L1) reconstruction + an L1 loss on image differences (keeps edges sharp; no
pretrained perceptual network) + the regulariser: a small KL weight (1e-6, as SD) for KL,
codebook + commitment losses for VQ. No GAN. AdamW, linear warm-up then cosine decay to
10% of the peak LR, gradient clipping. After training: the latent scale/shift (KL) from
2048 training images, a held-out PSNR on the val split, ``eval.json`` and ``recon.png``.

Progress (the LR schedule) is ``max(step / steps, elapsed / time_limit_s)`` so a run cut
by a wall-clock budget still anneals.

Precision: ``"auto"`` (``fluid.runtime.resolve_precision``) picks bf16 autocast only where
bf16 matmuls are fast (CUDA, or a CPU with AVX512-BF16 / AMX); on other CPUs bf16 is
emulated and ~100x slower than fp32.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fluid.config import Precision
from fluid.config.autoencoder import AEKind, AutoencoderConfig, ReconLoss
from fluid.runtime import resolve_precision
from fluid.tokenizers.autoencoder import Autoencoder, build_autoencoder
from fluid.train.tokenizer_metrics import caption_match, psnr, save_recon_grid, tokenizer_speed


class ImagePool:
    """Rendered training images, reused: each batch has ``fresh_fraction`` newly rendered
    images (rendering the shapes costs about as much as an autoencoder step on a CPU); the
    rest are drawn from the last ``capacity`` rendered images, stored as uint8."""

    def __init__(self, dataset, capacity: int = 8192, fresh_fraction: float = 0.25, device="cpu"):
        if not 0 < fresh_fraction <= 1:
            raise ValueError(f"fresh_fraction must be in (0, 1], not {fresh_fraction}")
        self.dataset, self.capacity, self.fresh_fraction = dataset, capacity, fresh_fraction
        self.device = torch.device(device)
        self.pool: torch.Tensor | None = None  # (capacity, 3, H, W) uint8
        self.filled = self.head = 0

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        n_fresh = batch_size if self.filled < batch_size else max(1, math.ceil(batch_size * self.fresh_fraction))
        idx = torch.randint(len(self.dataset), (n_fresh,), generator=generator).tolist()
        fresh = self.dataset.batch(idx, self.device)[0]  # (n, 3, H, W) in [-1, 1], rendered where it is used
        old = None
        if n_fresh < batch_size:
            pick = torch.randint(self.filled, (batch_size - n_fresh,), generator=generator).to(self.device)
            old = self.pool[pick].float() / 127.5 - 1.0  # (B - n, 3, H, W)
        self._store(fresh)
        return fresh if old is None else torch.cat([fresh, old])

    def _store(self, images: torch.Tensor) -> None:
        if self.pool is None:
            self.pool = torch.empty((self.capacity, *images.shape[1:]), dtype=torch.uint8, device=self.device)
        q = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[: self.capacity]  # (n, 3, H, W)
        slots = (self.head + torch.arange(len(q))) % self.capacity  # ring buffer positions
        self.pool[slots.to(self.device)] = q
        self.head = (self.head + len(q)) % self.capacity
        self.filled = min(self.filled + len(q), self.capacity)


def _shapes(split: str, resolution: int):
    from fluid.shapes.dataset import ShapesDataset

    return ShapesDataset(split, resolution=resolution)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, cfg: AutoencoderConfig) -> dict[str, torch.Tensor]:
    rec = F.l1_loss(recon, images) if cfg.recon_loss == ReconLoss.L1 else F.mse_loss(recon, images)
    out = {"recon": rec}
    if cfg.edge_weight:
        dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731  horizontal differences
        dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731  vertical differences
        out["edge"] = cfg.edge_weight * (F.l1_loss(dx(recon), dx(images)) + F.l1_loss(dy(recon), dy(images)))
    return out


def lr_at(progress: float, step: int, lr: float, warmup_steps: int, min_ratio: float = 0.1) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def compute_scale_shift(
    model: Autoencoder, dataset, n: int = 2048, batch_size: int = 128, seed: int = 0, autocast=contextlib.nullcontext
) -> tuple[float, float]:
    """Scalar (shift, scale) so that ``(z - shift) * scale`` has zero mean and unit variance
    over posterior samples of ``n`` images (the SD convention, with a shift as in SD3/Flux)."""
    g = torch.Generator(model.device).manual_seed(seed)
    s = s2 = count = 0.0
    for start in range(0, n, batch_size):
        images, _ = dataset.batch(list(range(start, min(n, start + batch_size))))
        with autocast():
            z = model.encode_latents(images.to(model.device), generator=g, sample=True).double()
        s, s2, count = s + z.sum().item(), s2 + z.pow(2).sum().item(), count + z.numel()
    mean = s / count
    std = math.sqrt(max(s2 / count - mean * mean, 1e-12))
    return mean, 1.0 / std


@torch.no_grad()
def evaluate(
    model: Autoencoder,
    dataset,
    n: int = 512,
    batch_size: int = 128,
    autocast=contextlib.nullcontext,
    shapes_check: bool | None = None,
) -> dict:
    """Held-out reconstruction through the tokenizer interface (KL: posterior mean): PSNR,
    code usage (VQ) or token statistics (KL), and for the shapes data (``shapes_check``,
    default: when the dataset is ShapesDataset) the fraction of originals and of
    reconstructions that the shapes detector reads as matching their caption."""
    if shapes_check is None:
        shapes_check = type(dataset).__name__ == "ShapesDataset"
    model.eval()
    psnrs, codes, tok_mean, tok_var, match_orig, match_recon = [], [], 0.0, 0.0, [], []
    for start in range(0, n, batch_size):
        images, captions = dataset.batch(list(range(start, min(n, start + batch_size))))
        images = images.to(model.device)
        with autocast():
            tokens = model.encode(images, sample=False)
            recon = model.decode(tokens)
        psnrs.append(psnr(recon, images))
        if shapes_check:
            match_orig += caption_match(images, captions)
            match_recon += caption_match(recon, captions)
        if model.cfg.kind == AEKind.VQ:
            codes.append(tokens.flatten())
        else:
            tok_mean += tokens.mean().item() * len(images) / n
            tok_var += tokens.var().item() * len(images) / n
    out = {"val_images": n, "psnr": torch.cat(psnrs).mean().item()}
    if shapes_check:
        out["caption_match_original"] = sum(match_orig) / len(match_orig)
        out["caption_match_recon"] = sum(match_recon) / len(match_recon)
    if codes:
        counts = torch.bincount(torch.cat(codes), minlength=model.cfg.codebook_size).float()
        p = counts / counts.sum()
        out["val_codes_used"] = int((counts > 0).sum())
        out["val_code_usage"] = (counts > 0).float().mean().item()
        out["val_perplexity"] = torch.exp(-(p * p.clamp_min(1e-10).log()).sum()).item()
    else:
        out["token_mean"], out["token_std"] = tok_mean, math.sqrt(tok_var)
    return out


def train_tokenizer(
    cfg: AutoencoderConfig,
    out_dir: str | Path,
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 2e-3,
    dataset=None,
    val_dataset=None,
    seed: int = 0,
    precision: str | Precision = "auto",
    log_every: int = 25,
    save_every: int = 250,
    time_limit_s: float | None = None,
    warmup_steps: int = 50,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    fresh_fraction: float = 0.25,
    pool_size: int = 8192,
    scale_images: int = 2048,
    val_images: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = True,
    measure_speed: bool = True,
) -> dict:
    """Train one autoencoder into ``out_dir`` (a tokenizer folder + metrics.jsonl + eval.json
    + recon.png) and return the eval results. ``dataset``/``val_dataset`` default to the
    built-in shapes train/val splits at ``cfg.resolution``; anything with ``len`` and
    ``batch(indices, device) -> (images, captions)`` works."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    dataset = dataset if dataset is not None else _shapes("train", cfg.resolution)
    val_dataset = val_dataset if val_dataset is not None else _shapes("val", cfg.resolution)
    prec = resolve_precision(precision, device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == Precision.BF16)  # noqa: E731

    torch.manual_seed(seed)  # weight init
    model = build_autoencoder(cfg.replace(scale=1.0, shift=0.0)).to(device).train()
    g = torch.Generator().manual_seed(seed)  # data order, posterior noise, dead-code restarts
    g_dev = g if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    pool = ImagePool(dataset, capacity=pool_size, fresh_fraction=fresh_fraction, device=device)
    metrics = (out_dir / "metrics.jsonl").open("w")
    t0 = time.perf_counter()
    window: dict[str, float] = {}
    bar = tqdm(range(steps), desc=f"train {model.name}", disable=not progress, dynamic_ncols=True)
    done = 0
    for step in bar:
        elapsed = time.perf_counter() - t0
        if time_limit_s is not None and elapsed >= time_limit_s:
            break
        frac = max(step / steps, elapsed / time_limit_s if time_limit_s else 0.0)
        for group in opt.param_groups:
            group["lr"] = lr_at(frac, step, lr, warmup_steps)
        images = pool.batch(batch_size, g)
        with autocast():
            out = model(images, generator=g_dev)
        losses = {**reconstruction_loss(out.recon, images, model.cfg), **out.losses}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        stats = {
            "loss": loss.item(),
            **{k: v.item() for k, v in losses.items()},
            **out.stats,
            "psnr": psnr(out.recon.detach(), images).mean().item(),
            "grad_norm": gnorm.item(),
        }
        if out.z is not None:
            stats["restarted"] = model.quantizer.restart_dead_codes(out.z, g_dev)
        for k, v in stats.items():
            window[k] = window.get(k, 0.0) + v
        window["n"] = window.get("n", 0) + 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            n = window.pop("n")
            row = {
                "step": step + 1,
                "images": (step + 1) * batch_size,
                "lr": opt.param_groups[0]["lr"],
                "elapsed_s": round(time.perf_counter() - t0, 2),
                **{k: v / n for k, v in window.items()},
            }
            if "restarted" in row:
                row["restarted"] *= n  # a count per logging window, not a mean
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.2f}")
            window = {}
        done = step + 1
        if save_every and done % save_every == 0:
            model.save(out_dir)
    steps_done = done
    train_s = time.perf_counter() - t0
    metrics.close()

    # Data-derived latent normalisation, then the final folder and held-out evaluation.
    model.eval()
    if cfg.kind == AEKind.KL:
        shift, scale = compute_scale_shift(model, dataset, scale_images, seed=seed, autocast=autocast)
        model.cfg = model.cfg.replace(scale=scale, shift=shift)
    model.save(out_dir)
    results = {
        "tokenizer": model.identity(),
        "steps": steps_done,
        "train_images": steps_done * batch_size,
        "train_s": round(train_s, 1),
        "precision": prec.value,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "scale": model.cfg.scale,
        "shift": model.cfg.shift,
        **evaluate(model, val_dataset, val_images, autocast=autocast),
    }
    if cfg.kind == AEKind.VQ:
        results["train_code_usage"] = model.quantizer.usage()
    if measure_speed:
        results.update(tokenizer_speed(model, cfg.resolution, autocast=autocast))
    images, _ = val_dataset.batch(list(range(8)))
    save_recon_grid(model, images.to(device), out_dir / "recon.png", autocast=autocast)
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
