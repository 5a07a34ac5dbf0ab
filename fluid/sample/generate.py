"""Token generation for the four variants, with classifier-free guidance.

* random order: ``steps`` rounds; each round runs the bidirectional backbone on the tokens
  known so far and fills in the next positions of a random order, as many as MaskGIT's
  cosine schedule says (or, for discrete tokens, optionally the most confident ones);
* raster order: one token per backbone call, keys and values of earlier positions kept in
  a KV cache (``use_cache=False`` recomputes the prefix instead, as a reference).

Guidance batches the conditional and unconditional (null-text) branches together and mixes
them where the head is applied: on the diffusion head's epsilon for continuous tokens, on
the logits for discrete tokens. With the linear schedule the scale ramps from 1 to ``cfg``
with the fraction of tokens generated.

Every random draw comes from the image's own stream (:class:`~fluid.sample.rng.ImageRNG`),
and the text is padded to the aligner's full length, so an image does not depend on the
other images of its batch: not their randomness, nor (on one CPU thread) their arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fluid.checkpoint import DistilledHead
from fluid.config import CFGSchedule, ConfigError, HeadSampler, SampleConfig
from fluid.diffusion.gaussian import GaussianDiffusion
from fluid.model.generator import Generator
from fluid.model.heads import PackedDenoise
from fluid.model.masking import tokens_per_step
from fluid.sample.rng import ImageRNG

OnStep = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called after every generation step with (step, tokens, known): copies of the tokens so far and
of the mask of those already generated, (B, N[, C]) and (B, N)."""


@dataclass
class Conditioning:
    """Aligned text for both CFG branches: (2B, L, W) when guided, else (B, L, W)."""

    text: torch.Tensor
    mask: torch.Tensor
    guided: bool


def guidance_scale(cfg: SampleConfig, generated: int, total: int) -> float:
    if cfg.cfg_schedule == CFGSchedule.CONSTANT:
        return cfg.cfg
    return 1.0 + (cfg.cfg - 1.0) * generated / total


def condition(model: Generator, text_emb: torch.Tensor, text_mask: torch.Tensor, guided: bool) -> Conditioning:
    # Pad to the aligner's full length: padded to the batch's longest prompt instead, a
    # prompt's attention would sum over a length set by the other prompts of its batch.
    b, length = text_emb.shape[:2]
    pad = model.aligner.max_length - length
    if pad > 0:
        text_emb = F.pad(text_emb, (0, 0, 0, pad))  # (B, max_length, Dt), zeros
        text_mask = F.pad(text_mask, (0, pad))  # (B, max_length), False
    if guided:
        drop = torch.arange(2 * b, device=text_emb.device) >= b  # second half: null text
        text, mask = model.aligner(torch.cat([text_emb, text_emb]), torch.cat([text_mask, text_mask]), drop)
    else:
        text, mask = model.aligner(text_emb, text_mask)
    return Conditioning(text, mask, guided)


class Sampler:
    """Generation for one model, owning what it builds from the model once and reuses for every
    batch: the head's respaced processes (one per step count), its packed weights
    (``sample.packed_head``) and the compiled backbone and head (``sample.compile``).

    Keep one per model to sample many batches (the pipeline does); :func:`generate` makes a
    fresh one per call. The model's weights are read where they live, so a checkpoint loaded
    into the same model in place is followed (the packed head re-packs when they change).
    """

    def __init__(self, model: Generator, distilled: DistilledHead | None = None):
        self.model, self.distilled = model, distilled
        self._respaced: dict = {}
        self._compiled: dict[str, Callable] = {}
        self._packed: dict[int, PackedDenoise] = {}

    def head(self, cfg: SampleConfig) -> torch.nn.Module:
        """The diffusion head ``cfg`` samples with: the model's, or its distilled one."""
        if cfg.head_sampler != HeadSampler.DISTILLED:
            return self.model.head
        if self.distilled is None:
            raise ConfigError("head_sampler 'distilled' needs a checkpoint with a distilled head (fluid distill-head)")
        return self.distilled.head.to(self.model.pos.device)

    def diffusion(self, steps: int, prediction: str | None = None):
        """The head's sampling process with ``steps`` respaced steps (its output read as
        ``prediction``, default the model's), on the model's device (a model moved after a first
        batch gets copies made on its new device)."""
        prediction = prediction or self.model.diffusion.prediction
        key = (steps, prediction, self.model.pos.device)
        if key not in self._respaced:
            base = self.model.diffusion
            if prediction != base.prediction:
                base = GaussianDiffusion(base.betas.cpu().numpy(), base.learn_sigma, prediction=prediction)
            self._respaced[key] = base.respace(steps).to(self.model.pos.device)
        return self._respaced[key]

    def compiled(self, name: str, fn: Callable) -> Callable:
        """``torch.compile(fn)`` made once; shapes vary with the tokens per step, so it is
        compiled for dynamic shapes."""
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=True)
        return self._compiled[name]

    def backbone(self, cfg: SampleConfig) -> Callable:
        return self.compiled("backbone", self.model.backbone) if cfg.compile else self.model.backbone

    def denoise(self, cfg: SampleConfig) -> Callable:
        """The head's denoiser (:meth:`head`) as ``cfg`` asks for it: compiled, packed (where
        oneDNN has the kernels) or the module's own."""
        head = self.head(cfg)
        if cfg.compile:
            return self.compiled("head" if head is self.model.head else "distilled-head", head.denoise)
        if cfg.packed_head and PackedDenoise.available():
            if id(head) not in self._packed:
                self._packed[id(head)] = PackedDenoise(head)
            return self._packed[id(head)]
        return head.denoise

    @torch.no_grad()
    def generate(
        self,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        cfg: SampleConfig,
        rng: ImageRNG,
        head_steps: int | None = None,
        force_guidance: bool = False,
        on_step: OnStep | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Tokens for a batch of encoded prompts, by the model's order; ``rng`` has one stream
        per prompt (``ImageRNG.for_images(seed, range(B))``).

        Guidance is skipped when it cannot change anything (scale 1 throughout) unless
        ``force_guidance`` (used by tests to check exactly that).
        """
        if len(rng) != text_emb.shape[0]:
            raise ValueError(f"{len(rng)} random streams for {text_emb.shape[0]} prompts")
        guided = force_guidance or cfg.cfg != 1.0
        cond = condition(self.model, text_emb, text_mask, guided)
        if self.model.causal:
            return generate_raster(self, cond, cfg, rng, head_steps, use_cache=use_cache, on_step=on_step)
        return generate_random(self, cond, cfg, rng, head_steps, on_step=on_step)


def sample_from_head(
    sampler: Sampler,
    z: torch.Tensor,
    scale: float,
    cfg: SampleConfig,
    guided: bool,
    rng: ImageRNG,
    head_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one token per row of z: (M, W) or, guided, (2M, W) with the null branch second.
    Rows are image-major (each image's rows together), as ``rng`` splits its draws.

    Returns the tokens (M, C) or (M,), and for discrete tokens the log-probabilities (M, V).
    """
    model = sampler.model
    if not model.continuous:
        logits = model.logits(z).float()  # (M or 2M, V)
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + scale * (cond - uncond)
        logp = F.log_softmax(logits / max(cfg.temperature, 1e-6), dim=-1)
        ids = rng.multinomial(logp.exp())  # (M,)
        return ids, logp
    c = model.cfg.token_dim
    m = z.shape[0] // 2 if guided else z.shape[0]
    head, denoise = sampler.head(cfg), sampler.denoise(cfg)
    if cfg.head_sampler == HeadSampler.DISTILLED:  # its own steps and output meaning
        diffusion = sampler.diffusion(sampler.distilled.steps, sampler.distilled.prediction)
    else:
        diffusion = sampler.diffusion(head_steps or cfg.head_steps or model.cfg.head_sample_steps)
    # The token condition is the same at every diffusion step, and the time condition the
    # same for every token: compute each once, not once per step and token.
    cz = head.cond_proj(z)  # (M or 2M, W)
    ct = head.time_condition(diffusion.timestep_map.to(z.device))  # (S, W)
    steps = iter(range(diffusion.num_steps - 1, -1, -1))  # the sampler walks the steps in this order

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = cz + ct[next(steps)]  # every row is at the same step
        if not guided:
            return denoise(x, cond)
        out = denoise(torch.cat([x, x]), cond).to(x.dtype)  # (2M, 2C)
        cond, uncond = out.chunk(2)
        eps = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=-1)  # the variance comes from the conditional branch

    noise = rng.randn(m, c)  # (M, C)
    if cfg.head_sampler == HeadSampler.DDPM:
        return diffusion.sample(
            eps_fn, noise, temperature=cfg.temperature, x0_clip=cfg.x0_clip, draw_noise=rng.randn
        ), None
    # A deterministic sampler has no later noise to scale: the temperature narrows the start.
    order = 2 if cfg.head_sampler == HeadSampler.DPM_SOLVER else 1
    return diffusion.sample_ode(eps_fn, noise * cfg.temperature, order=order, x0_clip=cfg.x0_clip), None


def _pair(x: torch.Tensor, guided: bool) -> torch.Tensor:
    return torch.cat([x, x]) if guided else x


@torch.no_grad()
def generate_random(
    sampler: Sampler,
    cond: Conditioning,
    cfg: SampleConfig,
    rng: ImageRNG,
    head_steps: int | None = None,
    on_step: OnStep | None = None,
) -> torch.Tensor:
    """Random-order generation; ``on_step``, if given, is called after each step."""
    model = sampler.model
    b = cond.text.shape[0] // (2 if cond.guided else 1)
    n, device = model.cfg.num_tokens, cond.text.device
    shape = (b, n, model.cfg.token_dim) if model.continuous else (b, n)
    tokens = torch.zeros(shape, device=device, dtype=model.pos.dtype if model.continuous else torch.long)
    known = torch.zeros(b, n, dtype=torch.bool, device=device)
    orders = rng.rand(b, n).argsort(dim=1)  # (B, N): a random order per image
    text_kvs = model.text_kv(cond.text)
    rows = torch.arange(b, device=device)[:, None]
    backbone = sampler.backbone(cfg)
    counts = tokens_per_step(n, cfg.steps)
    refresh = cfg.guidance_refresh if cond.guided and not cfg.confidence else 1
    if refresh > 1:
        half_kvs = [(k[:b], v[:b]) for k, v in text_kvs]  # the conditional branch's text keys/values
    residual, used = None, 0  # guidance residual (B, K, W) at the positions ahead; columns consumed
    done = 0
    for step, count in enumerate(counts):
        scale = guidance_scale(cfg, done + count, n)
        if cfg.confidence and not model.continuous:
            x = model.embed_masked(_pair(tokens, cond.guided), _pair(known, cond.guided))  # (B', N, W)
            h = backbone(x, cond.text, cond.mask, text_kvs=text_kvs)  # (B', N, W): every position competes
            # MaskGIT: sample every masked position, keep the `count` most confident ones
            # (annealed Gumbel noise on the log-probabilities keeps some diversity).
            ids, logp = sample_from_head(sampler, h.reshape(-1, h.shape[-1]), scale, cfg, cond.guided, rng)
            ids = ids.view(b, n)
            conf = logp.gather(1, ids.view(-1, 1)).view(b, n)
            u = rng.rand(b, n).clamp_(1e-20, 1.0)  # (B, N)
            conf = conf + 4.5 * (1 - (done + count) / n) * -torch.log(-torch.log(u))
            conf = conf.masked_fill(known, -math.inf)
            pos = conf.topk(count, dim=1).indices  # (B, count)
            new = ids.gather(1, pos)
        else:
            pos = orders[:, done : done + count]  # (B, count)
            if refresh > 1 and step % refresh:
                # A cached step: the conditional branch alone; the unconditional features are
                # the conditional ones minus the residual (cond - uncond) of the last full step.
                x = model.embed_masked(tokens, known)  # (B, N, W)
                hc = backbone(x, cond.text[:b], cond.mask[:b], text_kvs=half_kvs, outputs=pos)  # (B, count, W)
                h = torch.cat([hc, hc - residual[:, used : used + count].to(hc.dtype)])  # (2B, count, W)
                used += count
            elif refresh > 1:
                # A full step also reads the positions that the cached steps after it generate,
                # and keeps the guidance residual there.
                x = model.embed_masked(_pair(tokens, True), _pair(known, True))  # (2B, N, W)
                ahead = orders[:, done : done + sum(counts[step : step + refresh])]  # (B, K >= count)
                h = backbone(x, cond.text, cond.mask, text_kvs=text_kvs, outputs=_pair(ahead, True))  # (2B, K, W)
                residual, used = h[:b, count:] - h[b:, count:], 0
                h = h[:, :count]
            else:
                # Only this step's positions go through the last block (and on to the head).
                x = model.embed_masked(_pair(tokens, cond.guided), _pair(known, cond.guided))  # (B', N, W)
                h = backbone(x, cond.text, cond.mask, text_kvs=text_kvs, outputs=_pair(pos, cond.guided))  # (B', K, W)
            z = h.reshape(-1, h.shape[-1])  # (B'*count, W), image-major
            new, _ = sample_from_head(sampler, z, scale, cfg, cond.guided, rng, head_steps)
            new = new.view(b, count, *shape[2:])
        tokens[rows, pos] = new.to(tokens.dtype)
        known[rows, pos] = True
        done += count
        if on_step is not None:
            on_step(step, tokens.clone(), known.clone())
    return tokens


@torch.no_grad()
def generate_raster(
    sampler: Sampler,
    cond: Conditioning,
    cfg: SampleConfig,
    rng: ImageRNG,
    head_steps: int | None = None,
    use_cache: bool = True,
    on_step: OnStep | None = None,
) -> torch.Tensor:
    """Raster-order generation, one token per step, with a KV cache (or recomputing the prefix)."""
    model = sampler.model
    b = cond.text.shape[0] // (2 if cond.guided else 1)
    n, device = model.cfg.num_tokens, cond.text.device
    bb = cond.text.shape[0]
    shape = (b, n, model.cfg.token_dim) if model.continuous else (b, n)
    tokens = torch.zeros(shape, device=device, dtype=model.pos.dtype if model.continuous else torch.long)
    text_kvs = model.text_kv(cond.text)
    caches = model.new_caches() if use_cache else None
    prev = None
    for i in range(n):
        if use_cache:
            x = model.embed_step(prev, i, bb)  # (B', 1, W)
            h = model.backbone(x, cond.text, cond.mask, caches=caches, text_kvs=text_kvs)[:, 0]  # (B', W)
        else:
            x = model.embed_shifted(_pair(tokens, cond.guided))[:, : i + 1]  # (B', i+1, W)
            h = model.backbone(x, cond.text, cond.mask, text_kvs=text_kvs)[:, -1]  # (B', W)
        new, _ = sample_from_head(sampler, h, guidance_scale(cfg, i + 1, n), cfg, cond.guided, rng, head_steps)
        tokens[:, i] = new.to(tokens.dtype)
        prev = _pair(tokens[:, i], cond.guided)
        if on_step is not None:
            known = torch.zeros(b, n, dtype=torch.bool, device=device)
            known[:, : i + 1] = True
            on_step(i, tokens.clone(), known)
    return tokens


def generate(
    model: Generator,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    cfg: SampleConfig,
    rng: ImageRNG,
    head_steps: int | None = None,
    force_guidance: bool = False,
    on_step: OnStep | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """One batch's tokens with a fresh :class:`Sampler`: ``Sampler(model).generate(...)``, for a
    single call. To sample many batches (or compiled), keep a Sampler."""
    return Sampler(model).generate(text_emb, text_mask, cfg, rng, head_steps, force_guidance, on_step, use_cache)
