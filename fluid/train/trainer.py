"""The training loop: one file, read top to bottom.

``Trainer(cfg, run_dir, tokenizer, text_encoder).fit()`` trains the generator on encoded
batches (tokens + text embeddings), keeps an EMA, logs ``metrics.jsonl``, evaluates the
validation loss at an interval and writes checkpoint folders from which ``resume`` continues
exactly: same weights as an uninterrupted run, on the same machine.

Faults: a step whose loss or gradients are not finite is skipped (no update) and logged;
``train.max_nonfinite`` of them in a row stop the run with :class:`NonFiniteError` after a
checkpoint of the last good weights. SIGTERM / SIGINT save a checkpoint after the current
step and return (:mod:`fluid.train.stop`). A run folder that cannot be written (full disk,
permissions) raises :class:`~fluid.checkpoint.RunWriteError`; checkpoints already
written stay loadable.

Multi-GPU / multi-node runs go through ``torchrun``; ``train.batch_size`` is the global batch,
split over the processes and gradient-accumulation micro-steps, with DDP or FSDP2 applied
around the single-device model (:mod:`fluid.train.parallel`). FSDP2 runs write sharded
checkpoints (:mod:`fluid.checkpoint.sharded`); every run resumes on any number of processes.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fluid import checkpoint as ckpt
from fluid.checkpoint import RunWriteError, write_failure
from fluid.checkpoint import sharded as dcp
from fluid.config import FluidConfig, TokenType
from fluid.data.encode import FrozenEncoder
from fluid.data.heldout import check_heldout
from fluid.data.stream import TrainStream, encoded
from fluid.model import Generator
from fluid.runtime import autocast
from fluid.train.distributed import DistInfo, all_reduce_mean, any_rank, explain_timeouts
from fluid.train.ema import EMA
from fluid.train.optim import build_optimizer, build_scheduler
from fluid.train.parallel import batch_split, clip_grad_norm, gradient_sync, is_sharded, parallelize, slot_seed
from fluid.train.runfolder import forget_metrics_after, make_writable
from fluid.train.stop import StopSignals
from fluid.train.validation import ValidationSet, validation_loss


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient: the run stopped."""


def fit_config_to_tokenizer(cfg: FluidConfig, tokenizer) -> FluidConfig:
    """Set the token geometry on the config from the tokenizer, refusing a mismatched type."""
    if tokenizer.token_type != cfg.model.token_type:
        raise ValueError(
            f"the {cfg.model.variant} model needs a {cfg.model.token_type.value} tokenizer, "
            f"got a {tokenizer.token_type.value} one"
        )
    cfg.model.num_tokens = tokenizer.num_tokens(cfg.data.resolution)
    if tokenizer.token_type == TokenType.CONTINUOUS:
        cfg.model.token_dim = tokenizer.token_dim
    else:
        cfg.model.vocab_size = tokenizer.vocab_size
    return cfg


class Trainer:
    def __init__(
        self,
        cfg: FluidConfig,
        run_dir: str | Path,
        tokenizer,
        text_encoder,
        *,
        resume: bool = False,
        device: str | torch.device | None = None,
        dist: DistInfo | None = None,
        show_progress: bool = True,
        pool_cache: str | Path | None = None,
    ):
        self.dist = dist or DistInfo()
        self.device = torch.device(device or self.dist.device)
        self.cfg = fit_config_to_tokenizer(cfg, tokenizer)
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.encoder = FrozenEncoder(self.tokenizer, text_encoder, self.device, cfg.train.precision)
        self.show_progress = show_progress and self.dist.is_main
        t = cfg.train

        # Each process runs `accum` micro-batches of `micro` images per step: the global batch
        # t.batch_size is the same on any number of processes.
        self.micro, self.accum = batch_split(t, self.dist.world)
        if t.val_every:
            check_heldout(cfg.data)  # fail now, not at the first validation hours later

        torch.manual_seed(t.seed)  # initial weights: identical on every rank
        self.model = Generator(cfg.model, cfg.text).to(self.device)
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup)
        self.train_model = parallelize(self.model, self.ema.model, self.dist, t)  # before the optimizer (FSDP2)
        self.opt = build_optimizer(self.model, t)
        self.sched = build_scheduler(self.opt, t, cfg.lr_schedule)
        # One generator drives every random choice of training (posterior samples, text
        # dropout, orders, masks, timesteps, noise); it is reseeded for each micro-batch from
        # (seed, step, slot), so a step's draws do not depend on the number of processes.
        self.gen = torch.Generator(self.device)
        self.step = 0
        # Training-loss average over the current log window, and skipped (non-finite) steps:
        # checkpointed, so that a resumed run logs what the uninterrupted one would.
        self.loss_sum, self.loss_count = torch.zeros((), dtype=torch.float64), 0
        self.nonfinite_total = self.nonfinite_in_a_row = 0
        self.stopped_by: str | None = None  # the signal that stopped fit(), if one did
        if resume:
            self._resume()
        elif self.dist.is_main:
            make_writable(self.run_dir)
            if any(self.run_dir.glob("step-*")):
                raise FileExistsError(
                    f"{self.run_dir} already holds checkpoints: pass --resume to continue "
                    f"that run, or choose another output folder"
                )
        # The stream refuses a prepared cache made by another tokenizer or text encoder.
        self.stream = TrainStream(
            cfg.data,
            self.micro,
            rank=self.dist.rank,
            world=self.dist.world,
            start=self.step * self.accum,
            device=self.device,
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            accum=self.accum,
            pool_cache=pool_cache,
        )
        if t.compile:
            self.train_model = torch.compile(self.train_model, dynamic=True)
        self.valset = None

    # ------------------------------------------------------------------------- state

    def _resume(self) -> None:
        folder = ckpt.resolve(self.run_dir)
        state = ckpt.load_training_state(folder)
        old_world = state.get("world", 1)
        if "global_batch" not in state and old_world != 1:  # written when train.batch_size was per process
            per_process = ckpt.read_config(folder).train.batch_size
            if self.cfg.train.batch_size != per_process * old_world:
                raise ValueError(
                    f"{folder} was written by {old_world} processes when train.batch_size was per "
                    f"process; it is now the global batch: resume with --set train.batch_size="
                    f"{per_process * old_world}"
                )
        if dcp.is_sharded_checkpoint(folder):
            dcp.load_sharded(folder, self.model, self.ema.model, self.opt)
        elif is_sharded(self.model):
            raise ValueError(f"{folder} is a train.parallel=ddp checkpoint: resume it with --set train.parallel=ddp")
        else:
            ckpt.load_weights(self.model, folder, ema=False)
            ckpt.load_weights(self.ema.model, folder, ema=True)
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        log = state.get("log", {})
        self.loss_sum = log.get("loss_sum", self.loss_sum)
        self.loss_count = int(log.get("loss_count", 0))
        self.nonfinite_total = int(log.get("nonfinite_total", 0))
        self.nonfinite_in_a_row = int(log.get("nonfinite_in_a_row", 0))
        if self.dist.is_main:
            make_writable(self.run_dir)
            forget_metrics_after(self.run_dir / "metrics.jsonl", self.step)

    def _training_state(self) -> dict:
        # No random state: a step's draws are a function of (seed, step, slot), its data of the step.
        log = {
            "loss_sum": self.loss_sum.cpu(),
            "loss_count": self.loss_count,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }
        state = {
            "step": self.step,
            "world": self.dist.world,
            "global_batch": self.cfg.train.batch_size,
            "micro_batch": self.micro,
            "scheduler": self.sched.state_dict(),
            "log": log,
        }
        if not is_sharded(self.model):
            state["optimizer"] = self.opt.state_dict()  # sharded runs keep it in the DCP shards
        return state

    def save(self) -> Path | None:
        """Write ``step-XXXXXXX`` and point ``latest`` at it; :class:`RunWriteError` if the
        folder cannot be written (the previous checkpoints are left as they were)."""
        folder = self.run_dir / f"step-{self.step:07d}"
        state = self._training_state()
        meta = {
            "step": self.step,
            "variant": self.cfg.model.variant,
            "tokenizer": self.tokenizer.identity(),
            "text_encoder": self.text_encoder.identity(),
            "params": sum(p.numel() for p in self.model.parameters()),
        }  # DTensors count their global size
        try:
            if is_sharded(self.model):  # every rank writes its shards
                dcp.save_sharded(
                    folder,
                    self.model,
                    self.ema.model,
                    self.opt,
                    self.dist.is_main,
                    lambda tmp: ckpt.save_checkpoint(folder, self.cfg, None, None, state, meta, tmp=tmp),
                )
            elif self.dist.is_main:
                ckpt.save_checkpoint(folder, self.cfg, self.model, self.ema.model, state, meta)
            if not self.dist.is_main:
                return None
            ckpt.update_latest(self.run_dir, folder, self.cfg.train.keep_checkpoints)
        except RunWriteError as e:
            raise RunWriteError(f"{e}; {self._last_good()}") from e
        except OSError as e:
            raise RunWriteError(f"{write_failure(f'the latest link in {self.run_dir}', e)}; {self._last_good()}") from e
        return folder

    def _last_good(self) -> str:
        try:
            return f"the last good checkpoint, {ckpt.resolve(self.run_dir)}, is untouched (--resume continues from it)"
        except ckpt.CheckpointError:
            return "no checkpoint of this run was written yet"

    # ------------------------------------------------------------------------- loop

    def validate(self) -> dict:
        """Validation loss of the EMA and raw weights; every rank evaluates its share of the
        batches (kept in host memory) and the sums are all-reduced."""
        if self.valset is None:
            full = ValidationSet.build(self.cfg, self.tokenizer, self.text_encoder, self.device)
            self.valset = full.shard(self.dist.rank, self.dist.world)
        kw = {"precision": self.cfg.train.precision, "device": self.device}
        out = {"val_loss": validation_loss(self.ema.model, self.valset, **kw)}
        out["val_loss_raw"] = validation_loss(self.model, self.valset, **kw)
        return out

    def fit(self, steps: int | None = None) -> dict:
        """Train until ``steps`` (default: the config's) and return the last logged metrics.

        Returns early, after a checkpoint, when SIGTERM or SIGINT arrives (``stopped_by``).
        """
        t = self.cfg.train
        total = steps if steps is not None else t.steps
        log_path = self.run_dir / "metrics.jsonl"
        bar = tqdm(
            total=total,
            initial=self.step,
            desc=f"train {self.cfg.model.variant}",
            unit="step",
            disable=not self.show_progress,
            dynamic_ncols=True,
        )
        last: dict = {}
        t0, images = time.perf_counter(), 0
        self.model.train()
        it = encoded(self.stream, self.encoder, self.gen)
        with StopSignals() as signals, explain_timeouts(t.dist_timeout_s, self.dist):
            while self.step < total:
                loss = self.accumulate(it)
                grad_norm = clip_grad_norm(self.model, t.grad_clip)
                # One small collective per step: every rank must skip the same steps and stop
                # at the same step, or the next all-reduce would wait forever.
                bad, stop = any_rank(
                    [~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)), signals.requested], self.dist
                )
                if bad:
                    self._skip_step(loss, grad_norm, log_path)
                else:
                    self.opt.step()
                    self.ema.update(self.model, self.step)
                    self.loss_sum += loss.detach().double().cpu()
                    self.loss_count += 1
                    self.nonfinite_in_a_row = 0
                self._step_scheduler(after_update=not bad)
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                images += t.batch_size
                bar.update(1)

                if self.step % t.log_every == 0 or self.step == total:
                    elapsed = time.perf_counter() - t0
                    mean = all_reduce_mean(self.loss_sum / max(1, self.loss_count), self.dist)
                    last = {
                        "step": self.step,
                        "loss": mean if self.loss_count else None,  # None: all skipped
                        "lr": self.sched.get_last_lr()[0],
                        "grad_norm": float(grad_norm) if not bad else None,  # JSON has no NaN
                        "images_per_s": images / elapsed,
                        "ema_decay": self.ema.decay_at(self.step),
                        "skipped_nonfinite": self.nonfinite_total,
                    }
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{last['images_per_s']:.0f}")
                    self.loss_sum, self.loss_count = torch.zeros((), dtype=torch.float64), 0
                    t0, images = time.perf_counter(), 0
                    self._log(log_path, last)
                if t.val_every and (self.step % t.val_every == 0 or self.step == total):  # every rank: sharded
                    v = {"step": self.step, **self.validate()}
                    self._log(log_path, v)
                    last.update(v)
                    self.model.train()
                    t0 = time.perf_counter()  # validation time is not training throughput
                give_up = self.nonfinite_in_a_row >= t.max_nonfinite
                if self.step % t.ckpt_every == 0 or self.step == total or stop or give_up:
                    self.save()
                    t0 = time.perf_counter()
                if give_up:
                    bar.close()
                    raise NonFiniteError(
                        f"the loss or the gradients were not finite for {self.nonfinite_in_a_row} steps in a row "
                        f"(train.max_nonfinite={t.max_nonfinite}), up to step {self.step}; the run "
                        "stopped. Those steps "
                        "changed nothing: the last good weights are saved in "
                        f"{self.run_dir / f'step-{self.step:07d}'}. "
                        f"Continue with a lower learning rate: --resume --set train.lr=..."
                    )
                if stop:
                    self.stopped_by = signals.signal_name or "a signal on another rank"
                    break
        bar.close()
        return last

    def accumulate(self, it) -> torch.Tensor:
        """Forward and backward of this process's micro-batches of one step; gradients are
        summed locally and averaged over the ranks on the last one. Returns the mean loss.

        Micro-batch ``a`` of rank ``r`` fills slot ``a * world + r`` of the global batch: its
        data and its random draws depend on (seed, step, slot) only."""
        losses = []
        for a in range(self.accum):
            self.gen.manual_seed(slot_seed(self.cfg.train.seed, self.step, a * self.dist.world + self.dist.rank))
            tokens, emb, mask = next(it)
            with gradient_sync(self.train_model, self.model, sync=a == self.accum - 1):
                with autocast(self.device, self.cfg.train.precision):
                    loss = self.train_model(tokens, emb, mask, self.gen)
                (loss / self.accum).backward()
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    def _skip_step(self, loss: torch.Tensor, grad_norm: torch.Tensor, log_path: Path) -> None:
        """A non-finite loss or gradient: no update of the weights, the optimizer or the EMA;
        the batch is consumed and the step counted, so that a resumed run stays in step."""
        self.nonfinite_total += 1
        self.nonfinite_in_a_row += 1
        loss = loss.detach()
        value, what = (float(loss), "loss") if not torch.isfinite(loss) else (float(grad_norm), "gradient norm")
        # JSON has no NaN or infinity: the value goes into the text.
        self._log(
            log_path,
            {
                "step": self.step + 1,
                "skipped": f"{what} {value}",
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "skipped_nonfinite": self.nonfinite_total,
            },
        )

    def _step_scheduler(self, after_update: bool) -> None:
        # The learning rate follows the step count, skipped steps included; PyTorch warns when
        # the schedule moves before the optimizer's first step, which a skipped first step does.
        with warnings.catch_warnings():
            if not after_update:
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.sched.step()

    def _log(self, path: Path, record: dict) -> None:
        if not self.dist.is_main:
            return
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise RunWriteError(f"{write_failure(path, e)}; {self._last_good()}") from e
