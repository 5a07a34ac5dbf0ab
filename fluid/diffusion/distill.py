"""A few-step diffusion head distilled from a trained one (progressive distillation, Salimans &
Ho 2022, in one stage).

The student is a copy of the teacher's network that learns to make, in one deterministic
(DDIM) step, the jump that the teacher makes in ``substeps`` DDIM steps. The student's steps
are the ones :meth:`GaussianDiffusion.respace` gives for ``steps``, so the distilled head
samples with the ordinary ODE sampler (``sample_ode``, order 1) at that step count: nothing
in the sampler changes, only the weights.

One training example: a token x0 and its backbone condition z; a student step i drawn at
random, its time t = grid[i] and the next time s = grid[i - 1] (the clean token for i = 0);
x_t drawn from q(x_t | x0); the teacher walks from x_t to s in ``substeps`` DDIM steps and
lands at x_s. The epsilon that makes one DDIM step from x_t land exactly at x_s is

    x0~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - sigma_s alpha_t / sigma_t),
    eps~ = (x_t - alpha_t x0~) / sigma_t          (x0~ = x_s when s is the clean end),

and the student is fitted to it with the x0-space loss weighted by max(SNR(t), 1) (the paper's
"truncated SNR" weighting), so the first, noisiest steps are not ignored as a plain epsilon
loss would ignore them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch

from fluid.diffusion.gaussian import GaussianDiffusion, space_timesteps

# (x_t (M, C), t (M,) original timesteps, z (M, W)) -> epsilon (M, C)
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Jumps:
    """DDIM moves between arbitrary timesteps of one (unrespaced) process; timestep -1 is the
    clean end (alpha 1, sigma 0)."""

    def __init__(self, diffusion: GaussianDiffusion, x0_clip: float = 0.0):
        ab = diffusion.alphas_cumprod.double()
        self.alpha = torch.cat([ab.sqrt(), ab.new_ones(1)])  # index -1: the clean end
        self.sigma = torch.cat([(1 - ab).sqrt(), ab.new_zeros(1)])
        self.x0_clip = x0_clip

    def coefficients(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (x.dim() - 1)
        return self.alpha.to(x.device)[t].view(shape), self.sigma.to(x.device)[t].view(shape)

    def x0(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coefficients(t, x)
        x0 = (x.double() - s * eps.double()) / a
        return x0.clamp(-self.x0_clip, self.x0_clip) if self.x0_clip > 0 else x0

    def step(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
        """One DDIM (eta 0) step from x at t to timestep ``to`` (-1: the x0 estimate)."""
        x0 = self.x0(eps, x, t)
        a, s = self.coefficients(t, x)
        a_to, s_to = self.coefficients(to, x)
        eps_hat = (x.double() - a * x0) / s
        return (a_to * x0 + s_to * eps_hat).to(x.dtype)

    def target_eps(self, x: torch.Tensor, t: torch.Tensor, x_to: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
        """The epsilon with which one DDIM step from (x, t) lands at x_to at timestep ``to``,
        and the x0 it implies, both float64."""
        a, s = self.coefficients(t, x)
        a_to, s_to = self.coefficients(to, x)
        x, x_to = x.double(), x_to.double()
        clean = (to < 0).view((-1,) + (1,) * (x.dim() - 1))
        x0 = torch.where(clean, x_to, (x_to - (s_to / s) * x) / (a_to - s_to * a / s))
        return (x - a * x0) / s, x0


def teacher_walk(
    teacher: EpsFn, jumps: Jumps, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor, to: torch.Tensor, substeps: int
) -> torch.Tensor:
    """The teacher's DDIM path from (x, t) to ``to`` in ``substeps`` evenly spaced steps per
    row; a row bound for the clean end (-1) walks towards timestep 0 and takes its last step to
    the x0 estimate, as the sampler's last step does."""
    end = to.clamp(min=0)
    for k in range(substeps):
        a = torch.round(t + (end - t) * k / substeps).long()
        b = torch.round(t + (end - t) * (k + 1) / substeps).long()
        if k == substeps - 1:
            b = to
        moving = a != b
        if not moving.any():
            continue
        x = torch.where(moving[:, None], jumps.step(teacher(x, a, z), x, a, b), x)
    return x


def distill_head(
    head: torch.nn.Module,
    diffusion: GaussianDiffusion,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    substeps: int,
    iterations: int,
    lr: float = 1e-4,
    x0_clip: float = 5.0,
    prediction: str = "v",
    teacher: EpsFn | None = None,
    guidance: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.nn.Module:
    """A copy of ``head`` trained to sample in ``steps`` DDIM steps what ``head`` samples in
    ``steps * substeps`` (see the module's docstring). ``batches`` yields (x0 tokens (M, C),
    conditions z (M, W)); ``on_step(i, loss)`` is called after each update.

    ``prediction``: what the student's output means, ``v`` (x0 = alpha x_t - sigma v) by
    default. An epsilon student cannot make the first jump: from pure noise (alpha ~ 5e-5 at
    the last of 1000 cosine steps) its x0 is (x_t - sigma eps) / alpha, which would need the
    epsilon right to 1e-5; a v student's x0 there is -v, as well conditioned as anywhere.

    ``teacher``: the teacher's epsilon as a function (default: ``head`` itself, frozen); the
    student still starts from ``head``'s weights.

    ``guidance`` (lo, hi): distil the guided sampler instead. ``batches`` then yields conditions
    (M, 2, W), each token's with its caption and with the null one; every row draws a scale
    w ~ U[lo, hi], the teacher walks with out_null + w (out_cond - out_null) and the student
    is fitted through the same mix of its two outputs. Distilling each branch alone and mixing
    them at sampling time extrapolates the students' errors by w."""
    if prediction not in ("eps", "v"):
        raise ValueError(f"prediction must be eps or v, not {prediction!r}")
    if steps < 2:
        raise ValueError(f"a distilled head needs at least 2 steps (the last is the x0 estimate at t = 0), not {steps}")
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, not {substeps}")
    c = head.token_dim
    if teacher is None:
        frozen = copy.deepcopy(head).eval().requires_grad_(False)
        teacher = lambda x, t, z: frozen(x, t, z)[:, :c]  # noqa: E731
    student = copy.deepcopy(head).train().requires_grad_(True)
    jumps = Jumps(diffusion, x0_clip)
    grid = torch.tensor(space_timesteps(diffusion.num_steps, steps))  # ascending, grid[0] = 0
    ab = diffusion.alphas_cumprod.double()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)  # lr -> 0 at the end

    def mixed(fn: EpsFn, w: torch.Tensor | None) -> EpsFn:
        if w is None:
            return fn
        return lambda x, t, z: torch.lerp(fn(x, t, z[:, 1]), fn(x, t, z[:, 0]), w[:, None].to(x.dtype))

    for it in range(iterations):
        x0, z = next(batches)
        m = x0.shape[0]
        w = None
        if guidance is not None:
            lo, hi = guidance
            w = lo + (hi - lo) * torch.rand(m, generator=generator)
        i = torch.randint(0, steps, (m,), generator=generator)
        t = grid[i]
        to = torch.where(i > 0, grid[(i - 1).clamp(min=0)], torch.full_like(t, -1))
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        a, s = jumps.coefficients(t, x0)
        xt = (a * x0.double() + s * noise.double()).to(x0.dtype)
        with torch.no_grad():
            walk = teacher_walk(mixed(teacher, w), jumps, xt, z, t, to, substeps)
            _, x0_target = jumps.target_eps(xt, t, walk, to)
        eps = mixed(lambda x, tt, zz: student(x, tt, zz)[:, :c], w)(xt, t, z)
        if prediction == "v":
            x0_student = a * xt.double() - s * eps.double()
        else:
            x0_student = (xt.double() - s * eps.double()) / a
        weight = (ab[t] / (1 - ab[t])).clamp(min=1.0).to(x0.dtype)
        err = (x0_student - x0_target).float().pow(2).mean(dim=1)
        loss = (weight * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if on_step is not None:
            on_step(it, loss.item())
    return student.eval().requires_grad_(False)
