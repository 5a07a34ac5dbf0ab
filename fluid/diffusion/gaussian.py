"""Per-token Gaussian diffusion, as Improved DDPM (Nichol & Dhariwal 2021) defines it.

Plain math, no ``nn.Module`` state: a :class:`GaussianDiffusion` holds a noise schedule
(float64 numpy arrays) and takes the network as a callable ``model_fn(x_t, t) -> output``.
The output is a prediction of the token (see ``PREDICTIONS``: epsilon, the clean token x_0
or the velocity), followed, when the variance is learned, by ``v`` in [-1, 1], which
interpolates the log-variance between the posterior's (beta-tilde) and beta. The training
loss is the hybrid ``L_simple + lambda * L_vlb`` where the VLB term sees the mean through a
stop-gradient, so it only trains the variance.

Tokens are flat vectors ``(B, C)``: this is the diffusion *head* of an autoregressive model,
one small denoising problem per image token, not an image diffusion model.

Nothing here creates a device tensor or draws random numbers on its own: noise comes in as
an argument or from the ``generator`` passed down.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# What the network's first C output channels predict, with x_t = a x_0 + s eps (a = sqrt(ab),
# s = sqrt(1 - ab)):
#   "eps": the noise eps (DDPM, IDDPM, MAR); L_simple = |eps_hat - eps|^2.
#   "x":   the clean token x_0 (JiT: a small network keeps working on high-dimensional tokens);
#          L_simple is the epsilon MSE it implies, min(SNR_t, MAX_SNR) |x0_hat - x0|^2, the SNR
#          capped so that the lowest noise levels (2.4% of the cosine schedule's steps) do not
#          weigh 1e4-fold.
#   "v":   the velocity v = a eps - s x_0 (Salimans & Ho 2022); L_simple = |v_hat - v|^2.
PREDICTIONS = ("eps", "x", "v")
MAX_SNR = 400.0  # = 1 / 0.05^2: x-prediction's loss weight stops growing below 5% noise


def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> np.ndarray:
    """alpha-bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), t = 0..T."""
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = 1 - alpha-bar(t+1) / alpha-bar(t), clipped at ``max_beta`` (IDDPM eq. 17)."""
    ab = cosine_alpha_bar(num_steps)
    return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)


def space_timesteps(num_steps: int, num_sample_steps: int) -> list[int]:
    """Evenly spaced subset of ``range(num_steps)`` with ``num_sample_steps`` elements,
    always containing 0 and ``num_steps - 1``."""
    if not 1 <= num_sample_steps <= num_steps:
        raise ValueError(f"cannot respace {num_steps} steps to {num_sample_steps}")
    if num_sample_steps == 1:
        return [num_steps - 1]
    return sorted({round(i * (num_steps - 1) / (num_sample_steps - 1)) for i in range(num_sample_steps)})


def _gather(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] broadcast to x's shape, as x's dtype."""
    out = a.to(x.device)[t].to(x.dtype)
    return out.view(-1, *([1] * (x.dim() - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x, mean, logvar) -> torch.Tensor:
    """-log N(x; mean, e^logvar), elementwise, in nats (continuous data: no discretisation)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


class GaussianDiffusion:
    """A discrete-time diffusion process over ``betas`` (optionally a respaced subset).

    ``timestep_map[i]`` is the original training timestep of respaced step ``i``; the model
    is always called with original timesteps so one network serves every spacing.
    """

    def __init__(
        self,
        betas: np.ndarray,
        learn_sigma: bool = True,
        timestep_map: list[int] | None = None,
        prediction: str = "eps",
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {prediction!r}")
        betas = np.asarray(betas, dtype=np.float64)
        self.num_steps = len(betas)
        self.learn_sigma = learn_sigma
        self.prediction = prediction
        ab = np.cumprod(1.0 - betas)
        ab_prev = np.append(1.0, ab[:-1])
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        t64 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
        self.betas = t64(betas)
        self.alphas_cumprod = t64(ab)
        self.sqrt_ab = t64(np.sqrt(ab))
        self.sqrt_1m_ab = t64(np.sqrt(1.0 - ab))
        self.sqrt_recip_ab = t64(np.sqrt(1.0 / ab))
        self.sqrt_recipm1_ab = t64(np.sqrt(1.0 / ab - 1.0))
        self.snr = t64(ab / (1.0 - ab))
        self.posterior_variance = t64(post_var)
        # beta-tilde_0 is 0: clip the log at t=0 to beta-tilde_1 (IDDPM does the same); a
        # one-step process has no beta-tilde_1 and uses beta_0 (its t=0 step adds no noise).
        first = post_var[1] if len(post_var) > 1 else betas[0]
        self.posterior_log_variance = t64(np.log(np.append(first, post_var[1:])))
        self.posterior_coef_x0 = t64(betas * np.sqrt(ab_prev) / (1.0 - ab))
        self.posterior_coef_xt = t64((1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab))
        self.log_betas = t64(np.log(betas))
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(self.num_steps))

    def to(self, device) -> GaussianDiffusion:
        """Move the schedule tensors to ``device`` (in place; returns self)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    # -- construction ------------------------------------------------------------------

    @classmethod
    def cosine(cls, num_steps: int = 1000, learn_sigma: bool = True, prediction: str = "eps") -> GaussianDiffusion:
        return cls(cosine_betas(num_steps), learn_sigma=learn_sigma, prediction=prediction)

    def respace(self, num_sample_steps: int) -> GaussianDiffusion:
        """The same process observed at fewer timesteps: new betas from the kept alpha-bars."""
        keep = space_timesteps(self.num_steps, num_sample_steps)
        ab = self.alphas_cumprod.cpu().numpy()
        betas, last = [], 1.0
        for i in keep:
            betas.append(1.0 - ab[i] / last)
            last = ab[i]
        orig = self.timestep_map.tolist()
        return GaussianDiffusion(np.array(betas), self.learn_sigma, [orig[i] for i in keep], self.prediction).to(
            self.betas.device
        )

    # -- forward process ---------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps."""
        return _gather(self.sqrt_ab, t, x0) * x0 + _gather(self.sqrt_1m_ab, t, x0) * noise

    def q_posterior(self, x0, xt, t):
        """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = _gather(self.posterior_coef_x0, t, xt) * x0 + _gather(self.posterior_coef_xt, t, xt) * xt
        return mean, _gather(self.posterior_log_variance, t, xt).expand_as(xt)

    def x0_coefficients(self, i: int) -> tuple[float, float]:
        """(c_x, c_p) with x0_hat = c_x * x_t + c_p * prediction at step ``i``, as Python floats."""
        if self.prediction == "x":
            return 0.0, 1.0
        if self.prediction == "v":
            return float(self.sqrt_ab[i]), -float(self.sqrt_1m_ab[i])
        return float(self.sqrt_recip_ab[i]), -float(self.sqrt_recipm1_ab[i])

    def predict_x0(self, pred: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean token implied by the network's prediction at (x_t, t)."""
        if self.prediction == "x":
            return pred
        if self.prediction == "v":  # x_0 = a x_t - s v
            return _gather(self.sqrt_ab, t, xt) * xt - _gather(self.sqrt_1m_ab, t, xt) * pred
        return _gather(self.sqrt_recip_ab, t, xt) * xt - _gather(self.sqrt_recipm1_ab, t, xt) * pred

    # -- reverse process ---------------------------------------------------------------

    def p_mean_variance(self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, x0_clip: float = 0.0):
        """From the network output at (x_t, t): (mean, log-variance, predicted x_0).

        ``x0_clip`` > 0 clips the x_0 estimate to [-x0_clip, x0_clip] (IDDPM's clip_denoised
        with the data's range) before it enters the posterior mean.
        """
        c = xt.shape[-1]
        pred = out[..., :c]
        if self.learn_sigma:
            v = out[..., c:]
            frac = (v + 1) / 2  # (B, C) in [0, 1]
            logvar = frac * _gather(self.log_betas, t, xt) + (1 - frac) * _gather(self.posterior_log_variance, t, xt)
        else:
            # Without a learned variance, beta (the upper bound) is the IDDPM "fixed large" choice.
            logvar = torch.cat([self.posterior_variance[1:2], self.betas[1:]]).log()
            logvar = _gather(logvar, t, xt).expand_as(xt)
        x0 = self.predict_x0(pred, xt, t)
        if x0_clip > 0:
            x0 = x0.clamp(-x0_clip, x0_clip)
        mean, _ = self.q_posterior(x0, xt, t)
        return mean, logvar, x0

    def training_losses(
        self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, vlb_weight: float = 0.001
    ) -> torch.Tensor:
        """Per-sample hybrid loss ``L_simple + vlb_weight * L_vlb`` (L_vlb in bits per dim);
        L_simple by the prediction target (see ``PREDICTIONS``)."""
        xt = self.q_sample(x0, t, noise)
        out = model_fn(xt, self.timestep_map.to(t.device)[t])
        c = x0.shape[-1]
        pred = out[..., :c].float()
        if self.prediction == "x":
            weight = self.snr.to(t.device)[t].clamp(max=MAX_SNR).float()  # (B,)
            loss = weight * ((pred - x0.float()) ** 2).mean(dim=-1)
        else:
            if self.prediction == "v":
                target = _gather(self.sqrt_ab, t, x0) * noise - _gather(self.sqrt_1m_ab, t, x0) * x0
            else:
                target = noise
            loss = ((pred - target.float()) ** 2).mean(dim=-1)  # (B,)
        if self.learn_sigma:
            # Stop-gradient on the mean: the VLB term trains the variance only (IDDPM sec. 3.1).
            frozen = torch.cat([out[..., :c].detach(), out[..., c:]], dim=-1).float()
            loss = loss + vlb_weight * self.vlb_terms(frozen, x0.float(), xt.float(), t)
        return loss

    def vlb_terms(self, out, x0, xt, t) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, -log p(x_0|x_1) at t = 0;
        per sample, averaged over channels, in bits."""
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        mean, logvar, _ = self.p_mean_variance(out, xt, t)
        kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(dim=-1) / math.log(2.0)
        nll = gaussian_nll(x0, mean, logvar).mean(dim=-1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        x0_clip: float = 0.0,
        draw_noise: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling from x_T = ``noise`` down to x_0.

        ``temperature`` scales the noise added at every step (MAR's "temperature"), which
        sharpens (< 1) or flattens (> 1) each token's distribution. ``x0_clip``: see
        :meth:`p_mean_variance`. The noise of each step is ``draw_noise(*x.shape)`` when given
        (e.g. one random stream per image), else ``torch.randn`` from ``generator``.

        Every row is at the same step, so the schedule enters as Python scalars: the same
        arithmetic as :meth:`p_mean_variance`, with a fraction of the tensor operations.
        """
        x, c = noise, noise.shape[-1]
        coef = [
            t.tolist()
            for t in (self.posterior_coef_x0, self.posterior_coef_xt, self.log_betas, self.posterior_log_variance)
        ]
        to_x0 = [self.x0_coefficients(i) for i in range(self.num_steps)]
        fixed = torch.cat([self.posterior_variance[1:2], self.betas[1:]]).log().tolist()
        for i in reversed(range(self.num_steps)):
            t = torch.full((x.shape[0],), int(self.timestep_map[i]), device=x.device, dtype=torch.long)
            out = model_fn(x, t).to(x.dtype)
            cx0, cxt, log_beta, log_post = (a[i] for a in coef)
            from_x, from_pred = to_x0[i]
            x0 = from_x * x + from_pred * out[..., :c]
            if x0_clip > 0:
                x0 = x0.clamp(-x0_clip, x0_clip)
            mean = cx0 * x0 + cxt * x
            if i == 0:
                return mean
            if self.learn_sigma:
                frac = (out[..., c:] + 1) / 2  # (B, C)
                std = torch.exp(0.5 * (frac * log_beta + (1 - frac) * log_post))
            else:
                std = math.exp(0.5 * fixed[i])
            if draw_noise is not None:
                z = draw_noise(*x.shape).to(x.dtype)
            else:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + std * z * temperature
        return x

    @torch.no_grad()
    def sample_ode(self, model_fn: ModelFn, noise: torch.Tensor, order: int = 1, x0_clip: float = 0.0) -> torch.Tensor:
        """Deterministic sampling along the probability-flow ODE, from x_T = ``noise`` down
        to x_0, one network call per (respaced) step: few steps suffice where the ancestral
        sampler needs ~100.

        ``order`` 1 is DDIM with eta = 0 (Song et al. 2021); ``order`` 2 is DPM-Solver++(2M)
        (Lu et al. 2022), a multistep solver that extrapolates the x_0 estimates of the last
        two steps. In the variables alpha = sqrt(ab), sigma = sqrt(1 - ab) and
        lambda = log(alpha / sigma), one step from t to the next (lower) time s is

            x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D,   h = lambda_s - lambda_t,

        with D the x_0 estimate (order 1) or ``(1 + 1/2r) x0_t - 1/2r x0_prev`` where
        r = h_prev / h (order 2; first order on the first step and on the last, which lands
        on alpha = 1, sigma = 0 and so returns D itself). Only the prediction half of the output
        is used (as the x_0 it implies): a deterministic sampler has no use for the learned variance. ``x0_clip``:
        see :meth:`p_mean_variance`. The caller scales ``noise`` for a temperature.
        """
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (DDIM) or 2 (DPM-Solver++(2M)), not {order}")
        x, c = noise, noise.shape[-1]
        ab = self.alphas_cumprod.tolist() + [1.0]  # index -1: the clean end, alpha 1, sigma 0
        alpha = [math.sqrt(a) for a in ab]
        sigma = [math.sqrt(1.0 - a) for a in ab]
        lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
        x0_prev, h_prev = None, None
        for i in reversed(range(self.num_steps)):
            t = torch.full((x.shape[0],), int(self.timestep_map[i]), device=x.device, dtype=torch.long)
            pred = model_fn(x, t)[..., :c].to(x.dtype)
            if self.prediction == "eps":
                x0 = (x - sigma[i] * pred) / alpha[i]
            else:
                from_x, from_pred = self.x0_coefficients(i)
                x0 = from_x * x + from_pred * pred
            if x0_clip > 0:
                x0 = x0.clamp(-x0_clip, x0_clip)
            if i == 0:  # sigma_next = 0: the step lands on the x_0 estimate
                return x0
            h = lam[i - 1] - lam[i]
            d = x0
            if order == 2 and x0_prev is not None:
                r = h_prev / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            x = (sigma[i - 1] / sigma[i]) * x + alpha[i - 1] * (-math.expm1(-h)) * d
            x0_prev, h_prev = x0, h
        return x
