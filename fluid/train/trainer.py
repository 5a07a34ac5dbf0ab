"""The training loop: one file, read top to bottom.

``Trainer(cfg, run_dir, tokenizer, text_encoder).fit()`` trains the generator on encoded
batches (tokens + text embeddings), keeps an EMA, logs ``metrics.jsonl``, evaluates the
validation loss at an interval and writes checkpoint folders from which ``resume`` continues
exactly: same weights as an uninterrupted run, on the same machine.

Multi-GPU / multi-node runs go through ``torchrun`` (DDP); the model code stays single-device.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from fluid.config import FluidConfig, Precision, TokenType, resolve_precision
from fluid.data.stream import TrainStream
from fluid.eval.validation import ValidationSet, validation_loss
from fluid.model import Generator
from fluid.train import checkpoint as ckpt
from fluid.train.distributed import DistInfo, all_reduce_mean, wrap_ddp
from fluid.train.ema import EMA
from fluid.train.optim import build_optimizer, build_scheduler


def autocast(device: torch.device, precision: Precision):
    if resolve_precision(precision, device) == Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def fit_config_to_tokenizer(cfg: FluidConfig, tokenizer) -> FluidConfig:
    """Set the token geometry on the config from the tokenizer, refusing a mismatched type."""
    if tokenizer.token_type != cfg.model.token_type:
        raise ValueError(f"the {cfg.model.variant} model needs a {cfg.model.token_type.value} tokenizer, "
                         f"got a {tokenizer.token_type.value} one")
    cfg.model.num_tokens = tokenizer.num_tokens(cfg.data.resolution)
    if tokenizer.token_type == TokenType.CONTINUOUS:
        cfg.model.token_dim = tokenizer.token_dim
    else:
        cfg.model.vocab_size = tokenizer.vocab_size
    return cfg


class Trainer:
    def __init__(self, cfg: FluidConfig, run_dir: str | Path, tokenizer, text_encoder, *, resume: bool = False,
                 device: str | torch.device | None = None, dist: DistInfo | None = None, show_progress: bool = True):
        self.dist = dist or DistInfo()
        self.device = torch.device(device or self.dist.device)
        self.cfg = fit_config_to_tokenizer(cfg, tokenizer)
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.show_progress = show_progress and self.dist.is_main
        t = cfg.train

        torch.manual_seed(t.seed)  # initial weights: identical on every rank
        self.model = Generator(cfg.model, cfg.text).to(self.device)
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup)
        self.opt = build_optimizer(self.model, t)
        self.sched = build_scheduler(self.opt, t, cfg.lr_schedule)
        # One generator per rank drives every random choice of training (posterior samples,
        # text dropout, orders, masks, timesteps, noise); its state is checkpointed.
        self.gen = torch.Generator(self.device).manual_seed(t.seed * 1_000_003 + 7919 * self.dist.rank + 1)
        self.step = 0
        if resume:
            self._resume()
        elif self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if any(self.run_dir.glob("step-*")):
                raise FileExistsError(f"{self.run_dir} already holds checkpoints: pass --resume to continue "
                                      f"that run, or choose another output folder")
        # The stream refuses a prepared cache made by another tokenizer or text encoder.
        self.stream = TrainStream(cfg.data, t.batch_size, rank=self.dist.rank, world=self.dist.world,
                                  start=self.step, device=self.device, tokenizer=self.tokenizer,
                                  text_encoder=self.text_encoder)
        self.train_model = wrap_ddp(self.model, self.dist)
        if t.compile:
            self.train_model = torch.compile(self.train_model, dynamic=True)
        self.valset = None

    # ------------------------------------------------------------------------- state

    def _resume(self) -> None:
        folder = ckpt.resolve(self.run_dir)
        ckpt.load_weights(self.model, folder, ema=False)
        ckpt.load_weights(self.ema.model, folder, ema=True)
        state = ckpt.load_training_state(folder)
        if state.get("world", 1) != self.dist.world:
            raise ValueError(f"{folder} was written by a run of {state.get('world', 1)} processes; "
                             f"resume it with the same number (got {self.dist.world})")
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generators"][self.dist.rank])
        self.step = int(state["step"])

    def _training_state(self) -> dict:
        gens = self.dist.gather_states(self.gen.get_state())
        return {"step": self.step, "world": self.dist.world, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "generators": gens}

    def save(self) -> Path | None:
        state = self._training_state()  # collective: every rank takes part
        if not self.dist.is_main:
            return None
        folder = self.run_dir / f"step-{self.step:07d}"
        meta = {"step": self.step, "variant": self.cfg.model.variant, "tokenizer": self.tokenizer.identity(),
                "text_encoder": self.text_encoder.identity(),
                "params": sum(p.numel() for p in self.model.parameters())}
        ckpt.save_checkpoint(folder, self.cfg, self.model, self.ema.model, state, meta)
        ckpt.update_latest(self.run_dir, folder, self.cfg.train.keep_checkpoints)
        return folder

    # ------------------------------------------------------------------------- loop

    def encode(self, images: torch.Tensor, captions: list[str]):
        """Raw pairs -> (tokens, text embeddings, text mask), with the frozen tokenizer and encoder."""
        with torch.no_grad(), autocast(self.device, self.cfg.train.precision):
            tokens = self.tokenizer.encode(images.to(self.device), generator=self.gen)
        emb, mask = self.text_encoder(captions)
        return tokens.float() if tokens.is_floating_point() else tokens, emb.to(self.device), mask.to(self.device)

    def validate(self) -> dict:
        if self.valset is None:
            self.valset = ValidationSet.build(self.cfg, self.tokenizer, self.text_encoder, self.device)
        out = {"val_loss": validation_loss(self.ema.model, self.valset, self.cfg.train.precision)}
        out["val_loss_raw"] = validation_loss(self.model, self.valset, self.cfg.train.precision)
        return out

    def fit(self, steps: int | None = None) -> dict:
        """Train until ``steps`` (default: the config's) and return the last logged metrics."""
        t = self.cfg.train
        total = steps if steps is not None else t.steps
        log_path = self.run_dir / "metrics.jsonl"
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.cfg.model.variant}", unit="step",
                   disable=not self.show_progress, dynamic_ncols=True)
        last: dict = {}
        loss_sum, n_loss, t0, images = torch.zeros((), device=self.device), 0, time.perf_counter(), 0
        self.model.train()
        it = iter(self.stream)
        while self.step < total:
            item = next(it)
            tokens, emb, mask = self.encode(*item) if isinstance(item[1], list) else item
            with autocast(self.device, t.precision):
                loss = self.train_model(tokens, emb, mask, self.gen)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.update(self.model, self.step)
            self.step += 1
            loss_sum += loss.detach()
            n_loss += 1
            images += tokens.shape[0] * self.dist.world
            bar.update(1)

            if self.step % t.log_every == 0 or self.step == total:
                elapsed = time.perf_counter() - t0
                last = {"step": self.step, "loss": all_reduce_mean(loss_sum / n_loss, self.dist),
                        "lr": self.sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                        "images_per_s": images / elapsed, "ema_decay": self.ema.decay_at(self.step)}
                bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{last['images_per_s']:.0f}")
                loss_sum.zero_()
                n_loss, t0, images = 0, time.perf_counter(), 0
                self._log(log_path, last)
            if t.val_every and (self.step % t.val_every == 0 or self.step == total) and self.dist.is_main:
                v = {"step": self.step, **self.validate()}
                self._log(log_path, v)
                last.update(v)
                self.model.train()
                t0 = time.perf_counter()  # validation time is not training throughput
            if self.step % t.ckpt_every == 0 or self.step == total:
                self.save()
                t0 = time.perf_counter()
        bar.close()
        return last

    def _log(self, path: Path, record: dict) -> None:
        if self.dist.is_main:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
