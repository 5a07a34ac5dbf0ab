"""The diffusion math against closed forms, and a head that learns a known 2-D mixture."""

import math

import numpy as np
import pytest
import torch

from fluid.diffusion import GaussianDiffusion, cosine_alpha_bar, cosine_betas, space_timesteps
from fluid.diffusion.gaussian import gaussian_nll, normal_kl
from fluid.model.heads import DiffusionHead


def test_cosine_schedule_matches_closed_form():
    T, s = 1000, 0.008
    ab = cosine_alpha_bar(T)
    t = np.array([0, 1, 250, 500, 999, 1000])
    expected = np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(ab[t], expected, rtol=1e-12)
    betas = cosine_betas(T)
    assert betas.shape == (T,) and betas.max() <= 0.999 and betas.min() > 0
    d = GaussianDiffusion(betas)
    # alpha-bar is the running product of (1 - beta), up to the clip at the very end.
    np.testing.assert_allclose(d.alphas_cumprod.numpy()[:-1], ab[1:-1], rtol=1e-9)


def test_q_sample_is_the_closed_form_marginal():
    d = GaussianDiffusion.cosine(1000)
    x0, noise = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900, 999])
    ab = d.alphas_cumprod[t][:, None]
    torch.testing.assert_close(d.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x_0) from the two Gaussians q(x_{t-1}|x_0) and q(x_t|x_{t-1}), numerically."""
    d = GaussianDiffusion.cosine(100)
    t = torch.tensor([37])
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.8]], dtype=torch.float64)
    ab_prev, beta = d.alphas_cumprod[36], d.betas[37]
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    logp = -((grid - ab_prev.sqrt() * 0.3) ** 2) / (2 * (1 - ab_prev)) - (-0.8 - (1 - beta).sqrt() * grid) ** 2 / (
        2 * beta
    )
    p = torch.softmax(logp, 0)
    mean = (p * grid).sum()
    var = (p * (grid - mean) ** 2).sum()
    m, logvar = d.q_posterior(x0, xt, t)
    assert abs(m.item() - mean.item()) < 1e-6
    assert abs(logvar.exp().item() - var.item()) / var.item() < 1e-4


def test_kl_and_nll_closed_forms():
    m1, lv1, m2, lv2 = map(torch.tensor, (0.5, -1.0, -0.2, 0.3))
    kl = normal_kl(m1, lv1, m2, lv2)
    expected = (
        math.log(math.exp(0.3) ** 0.5 / math.exp(-1.0) ** 0.5) + (math.exp(-1.0) + 0.7**2) / (2 * math.exp(0.3)) - 0.5
    )
    assert abs(kl.item() - expected) < 1e-6
    x = torch.tensor(1.2)
    nll = gaussian_nll(x, m2, lv2)
    ref = -torch.distributions.Normal(m2, (lv2 / 2).exp()).log_prob(x)
    assert abs(nll.item() - ref.item()) < 1e-6


def test_loss_is_mse_plus_weighted_vlb():
    d = GaussianDiffusion.cosine(1000)
    x0, noise = torch.randn(6, 3), torch.randn(6, 3)
    t = torch.tensor([0, 1, 2, 400, 998, 999])
    out = torch.randn(6, 6)
    loss = d.training_losses(lambda xt, tt, out=out: out, x0, t, noise, vlb_weight=0.5)
    mse = ((out[:, :3] - noise) ** 2).mean(1)
    vlb = d.vlb_terms(out, x0, d.q_sample(x0, t, noise), t)
    torch.testing.assert_close(loss, mse + 0.5 * vlb)
    # A perfect model of the posterior has zero KL terms.
    xt = d.q_sample(x0, t, noise)
    true_mean, true_logvar = d.q_posterior(x0, xt, t)
    assert torch.all(normal_kl(true_mean, true_logvar, true_mean, true_logvar) == 0)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    d = GaussianDiffusion.cosine(1000)
    keep = space_timesteps(1000, 100)
    assert len(keep) == 100 and keep[0] == 0 and keep[-1] == 999
    r = d.respace(100)
    np.testing.assert_allclose(r.alphas_cumprod.numpy(), d.alphas_cumprod.numpy()[keep], rtol=1e-10)
    assert r.timestep_map.tolist() == keep
    with pytest.raises(ValueError):
        space_timesteps(10, 11)


def test_one_step_respacing_returns_the_x0_estimate():
    d = GaussianDiffusion.cosine(1000)
    one = d.respace(1)
    assert one.timestep_map.tolist() == [999] and torch.isfinite(one.posterior_log_variance).all()
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)  # float64: 1/sqrt(alpha-bar) is 2e4 here

    def eps_fn(x, t):  # exact epsilon when every data point is mu
        ab = d.alphas_cumprod[t][:, None]  # the model sees original timesteps
        return torch.cat([(x - ab.sqrt() * mu) / (1 - ab).sqrt(), torch.zeros_like(x)], 1)

    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(one.sample(eps_fn, noise), mu.expand(8, 2), atol=1e-6, rtol=0)


def test_learned_variance_interpolates_between_bounds():
    d = GaussianDiffusion.cosine(1000)
    xt, t = torch.zeros(2, 2), torch.tensor([100, 100])
    lo = d.p_mean_variance(torch.cat([torch.zeros(2, 2), -torch.ones(2, 2)], 1), xt, t)[1]
    hi = d.p_mean_variance(torch.cat([torch.zeros(2, 2), torch.ones(2, 2)], 1), xt, t)[1]
    torch.testing.assert_close(lo, d.posterior_log_variance[100].float().expand(2, 2))
    torch.testing.assert_close(hi, d.log_betas[100].float().expand(2, 2))


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_ancestral_sampler_is_the_textbook_loop_over_p_mean_variance(learn_sigma):
    """``sample`` works on Python scalars of the schedule; step by step it must be
    x_{t-1} = mean + exp(logvar / 2) * z * temperature with p_mean_variance's mean and
    variance, and the x0 estimate at t = 0."""
    torch.manual_seed(0)
    d = GaussianDiffusion.cosine(1000, learn_sigma=learn_sigma).respace(12)
    w = torch.randn(3, 6 if learn_sigma else 3, dtype=torch.float64) * 0.3

    def model_fn(x, t):  # a smooth function of x and t; the variance half lies in [-1, 1]
        return torch.tanh(x @ w + t[:, None] / 1000)

    noise = torch.randn(5, 3, dtype=torch.float64)
    draws = [torch.randn(5, 3, dtype=torch.float64) for _ in range(d.num_steps)]
    it = iter(draws)
    fast = d.sample(model_fn, noise, temperature=0.7, x0_clip=2.0, draw_noise=lambda *shape: next(it))

    x, it = noise.clone(), iter(draws)
    for i in reversed(range(d.num_steps)):
        t = torch.full((5,), i, dtype=torch.long)
        out = model_fn(x, d.timestep_map[t])
        mean, logvar, x0 = d.p_mean_variance(out, x, t, x0_clip=2.0)
        x = mean if i == 0 else mean + torch.exp(0.5 * logvar) * next(it) * 0.7
    torch.testing.assert_close(fast, x, rtol=1e-6, atol=1e-6)
    assert not fast.data_ptr() == noise.data_ptr() and torch.isfinite(fast).all()


def _mixture(n, gen):
    """A known 2-D mixture: two anisotropic Gaussians, weights 0.3 / 0.7."""
    comp = torch.rand(n, generator=gen) < 0.3
    a = torch.randn(n, 2, generator=gen) * torch.tensor([0.3, 0.6]) + torch.tensor([-1.5, 0.5])
    b = torch.randn(n, 2, generator=gen) * torch.tensor([0.5, 0.2]) + torch.tensor([1.0, -0.5])
    return torch.where(comp[:, None], a, b)


def test_head_learns_a_2d_mixture():
    # Width 64 and 300 steps of 1024 points with a cosine-decayed LR (~15x cheaper than width
    # 128, 1500 steps of 512): the same assertions hold for seeds 0-4 with room to spare (mean
    # error <= 0.04, covariance error <= 0.07 against tolerances of >= 0.1).
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=2, cond_dim=8, width=64, depth=3)
    d = GaussianDiffusion.cosine(1000)
    steps, batch = 300, 1024
    opt = torch.optim.AdamW(head.parameters(), lr=4e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    z = torch.zeros(batch, 8)
    for _ in range(steps):
        x0 = _mixture(batch, gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        loss = d.training_losses(lambda xt, tt: head(xt, tt, z), x0, t, torch.randn(batch, 2, generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    head.eval()
    n = 4000
    zs = torch.zeros(n, 8)
    # x0_clip as the sampler uses it (SampleConfig.x0_clip): the data lie well inside +-5.
    with torch.no_grad():
        samples = d.respace(100).sample(
            lambda x, tt: head(x, tt, zs), torch.randn(n, 2, generator=gen), generator=gen, x0_clip=5.0
        )
    ref = _mixture(200_000, gen)
    assert torch.allclose(samples.mean(0), ref.mean(0), atol=0.08), (samples.mean(0), ref.mean(0))
    torch.testing.assert_close(torch.cov(samples.T), torch.cov(ref.T), atol=0.1, rtol=0.1)
    # Bimodality: both modes receive their share of samples.
    left = (samples[:, 0] < -0.25).float().mean().item()
    assert 0.22 < left < 0.38


def test_respaced_sampling_survives_small_epsilon_errors_with_x0_clip():
    """At the first respaced step alpha-bar is ~1e-8, so an epsilon error of 0.03 becomes an
    x0 error of ~600 and x_{t-1} lands ~10 away from anything seen in training. A trained
    network does not extrapolate there (the oracle below sees x clamped to +-4, the range of
    x_t during training), so without a clip the error compounds; clipping x0 to the data's
    range keeps the sampler on the data."""
    d = GaussianDiffusion.cosine(1000).respace(100)
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.5, -1.0])

    def eps_fn(x, t):  # the exact epsilon of N(mu, I) data inside the trained range, plus a small error
        ab = GaussianDiffusion.cosine(1000).alphas_cumprod[t].float()[:, None]
        eps = (x.clamp(-4, 4) - ab.sqrt() * mu) * (1 - ab).sqrt()  # E[eps | x_t] for unit-variance data
        return torch.cat([eps + 0.03 * torch.randn(x.shape, generator=gen), torch.zeros_like(x)], 1)

    noise = torch.randn(4000, 2, generator=gen)
    clipped = d.sample(eps_fn, noise, generator=gen, x0_clip=5.0)
    assert torch.allclose(clipped.mean(0), mu, atol=0.1) and torch.allclose(clipped.std(0), torch.ones(2), atol=0.15)
    unclipped = d.sample(eps_fn, noise, generator=gen)
    assert unclipped.std(0).min() > 10  # the failure the clip exists for


def _iddpm_lt_bits(
    betas: np.ndarray, t: int, x0: np.ndarray, eps_true: np.ndarray, eps_pred: np.ndarray, v: np.ndarray
) -> float:
    """Improved DDPM's L_{t-1} for one timestep t > 0, written from the paper's equations alone
    (eqs. 9-13 and 15 of Nichol & Dhariwal 2021), in float64 numpy: the mean over channels of
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), in bits."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = abar[t - 1]
    xt = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * eps_true  # eq. 9
    beta_tilde = (1 - abar_prev) / (1 - abar[t]) * betas[t]  # eq. 11
    mu_tilde = (
        np.sqrt(abar_prev) * betas[t] / (1 - abar[t]) * x0 + np.sqrt(alphas[t]) * (1 - abar_prev) / (1 - abar[t]) * xt
    )  # eq. 11
    mu_model = (xt - betas[t] / np.sqrt(1 - abar[t]) * eps_pred) / np.sqrt(alphas[t])  # eq. 13
    var_model = np.exp(v * np.log(betas[t]) + (1 - v) * np.log(beta_tilde))  # eq. 15, v in [0, 1]
    kl = 0.5 * (np.log(var_model / beta_tilde) + (beta_tilde + (mu_tilde - mu_model) ** 2) / var_model - 1.0)
    return float(kl.mean() / np.log(2.0))


def test_hybrid_loss_is_iddpm_lt_with_lambda_times_T():
    """The head's default loss is IDDPM's hybrid: the epsilon MSE plus lambda * T * L_t at the
    sampled t (lambda = 0.001, T = 1000, so weight 1), checked against the paper's equations."""
    from fluid.config import ModelConfig

    T, lam = 1000, 0.001
    d = GaussianDiffusion.cosine(T)
    betas = cosine_betas(T)
    rng = np.random.default_rng(0)
    c = 6
    for t in (1, 17, 400, 999):
        x0, eps_true = rng.normal(size=c), rng.normal(size=c)
        eps_pred = eps_true + 0.3 * rng.normal(size=c)  # an imperfect prediction
        v_net = rng.uniform(-1, 1, size=c)  # the network's raw output in [-1, 1]
        out = torch.tensor(np.concatenate([eps_pred, v_net]))[None]
        loss = d.training_losses(
            lambda xt, tt, out=out: out,
            torch.tensor(x0)[None],
            torch.tensor([t]),
            torch.tensor(eps_true)[None],
            vlb_weight=ModelConfig().vlb_weight,
        )
        expected = np.mean((eps_pred - eps_true) ** 2) + lam * T * _iddpm_lt_bits(
            betas, t, x0, eps_true, eps_pred, (v_net + 1) / 2
        )
        # The loss is computed in float32 (as in training), hence the tolerance.
        assert abs(loss.item() - expected) < 1e-5 * max(1.0, abs(expected)), (t, loss.item(), expected)


def _gaussian_data_eps(mu: torch.Tensor, s: torch.Tensor):
    """The exact epsilon (E[eps | x_t]) for data x_0 ~ N(mu, diag(s^2)): x_t ~ N(alpha mu,
    alpha^2 s^2 + sigma^2), so E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)."""
    base = GaussianDiffusion.cosine(1000)

    def eps_fn(x, t):  # the model sees original timesteps; the variance half is unused
        ab = base.alphas_cumprod[t][:, None]
        a, sg = ab.sqrt(), (1 - ab).sqrt()
        return torch.cat([sg * (x - a * mu) / (a**2 * s**2 + sg**2), torch.zeros_like(x)], 1)

    return base, eps_fn


def test_ddim_step_by_step_matches_its_closed_form_on_unit_variance_data():
    """For N(mu, I) data each DDIM step maps x_t = alpha_t mu + c z to alpha_s mu +
    (alpha_s alpha_t + sigma_s sigma_t) c z: the sampler's output is known in closed form for
    any spacing (the coefficients' product falls short of 1: DDIM's first-order error)."""
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    base, eps_fn = _gaussian_data_eps(mu, torch.ones(2, dtype=torch.float64))
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (1, 7, 25):
        d = base.respace(k)
        ab = d.alphas_cumprod.tolist()[::-1] + [1.0]  # x_T first, the clean end last
        shrink = math.prod(math.sqrt(ab[j] * ab[j + 1]) + math.sqrt((1 - ab[j]) * (1 - ab[j + 1])) for j in range(k))
        expected = mu + shrink * (noise - math.sqrt(ab[0]) * mu)
        # 1e-6: at alpha-bar_T ~ 1e-8 the x_0 estimate cancels ~8 digits of float64
        torch.testing.assert_close(d.sample_ode(eps_fn, noise, order=1), expected, atol=1e-6, rtol=0)


def test_ode_samplers_converge_to_the_exact_flow_of_gaussian_data():
    """The probability-flow ODE maps x_T to mu + s z, z = (x_T - alpha_T mu) / sqrt(var_T), for
    N(mu, diag(s^2)) data. DDIM (first order) and DPM-Solver++(2M) (second order) approach it
    as the steps grow, the second-order solver faster."""
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    s = torch.tensor([0.2, 1.0, 0.05], dtype=torch.float64)
    base, eps_fn = _gaussian_data_eps(mu, s)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab_T = base.alphas_cumprod[-1]
    exact = mu + s * (noise - ab_T.sqrt() * mu) / (ab_T * s**2 + 1 - ab_T).sqrt()
    err = {
        (k, order): (base.respace(k).sample_ode(eps_fn, noise, order=order) - exact).abs().max().item()
        for k in (50, 100, 400, 1000)
        for order in (1, 2)
    }
    assert err[1000, 1] < 5e-3 and err[1000, 2] < 1.5e-3, err
    assert err[100, 1] < 0.05 and err[100, 2] < 0.015, err
    for k in (50, 100, 400, 1000):
        assert err[k, 2] < 0.7 * err[k, 1], err  # second order beats first at every budget
    # The order of convergence, 4x the steps: first order ~1/4 the error, second order far less
    # (a wrong extrapolation weight, e.g. r for 1/r, still converges, but at first order).
    assert 3 < err[100, 1] / err[400, 1] < 5 and err[100, 2] / err[400, 2] > 10, err


def test_ode_sampler_lands_on_a_point_mass_and_refuses_other_orders():
    d = GaussianDiffusion.cosine(1000).respace(3)
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def eps_fn(x, t):  # exact epsilon when every data point is mu
        ab = GaussianDiffusion.cosine(1000).alphas_cumprod[t][:, None]
        return torch.cat([(x - ab.sqrt() * mu) / (1 - ab).sqrt(), torch.zeros_like(x)], 1)

    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for order in (1, 2):
        torch.testing.assert_close(d.sample_ode(eps_fn, noise, order=order), mu.expand(8, 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="order"):
        d.sample_ode(eps_fn, noise, order=3)


@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
def test_prediction_target_loss_and_x0_match_their_closed_forms(prediction):
    # A fixed "network" output on a tiny input: the loss and the implied x_0 of each target
    # against the formulas written out by hand in float64.
    d = GaussianDiffusion.cosine(1000, learn_sigma=False, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 3, 100, 500, 999])
    ab = torch.from_numpy(np.cumprod(1 - cosine_betas(1000)))[t][:, None]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    xt = a * x0 + s * noise
    loss = d.training_losses(lambda x, tt: out, x0, t, noise)
    x0_hat = d.predict_x0(out, xt, t)
    if prediction == "eps":
        want_loss, want_x0 = ((out - noise) ** 2).mean(-1), (xt - s * out) / a
    elif prediction == "v":
        want_loss, want_x0 = ((out - (a * noise - s * x0)) ** 2).mean(-1), a * xt - s * out
    else:
        snr = (ab / (1 - ab)).clamp(max=400.0)[:, 0]
        want_loss, want_x0 = snr * ((out - x0) ** 2).mean(-1), out
    torch.testing.assert_close(loss, want_loss.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0_hat, want_x0, rtol=1e-6, atol=1e-6)
    # The samplers use the same x_0: one respaced step lands on it.
    one = d.respace(1)
    noise_in = torch.randn(5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        one.sample_ode(lambda x, tt: out, noise_in), one.predict_x0(out, noise_in, torch.zeros(5, dtype=torch.long))
    )


def test_noise_draws_per_token_repeat_each_token_with_its_own_timestep_and_noise():
    # timestep_multiplier k: the head sees every predicted token k times, each with a fresh
    # timestep and noise, and the loss is the mean over all k*M rows.
    from fluid.config import get_preset
    from fluid.model.generator import Generator

    cfg = get_preset("debug")
    cfg.model.timestep_multiplier, cfg.model.learn_sigma = 3, False
    model = Generator(cfg.model, cfg.text)
    seen = {}

    def head(xt, t, z):
        seen.update(xt=xt, t=t, z=z)
        return torch.zeros_like(xt)  # eps_hat = 0: the loss is the mean squared noise

    model.head.forward = head
    z = torch.randn(4, cfg.model.width)
    target = torch.randn(4, cfg.model.token_dim)
    g = torch.Generator().manual_seed(1)
    loss = model.token_loss(z, target, generator=g)
    assert seen["xt"].shape == (12, cfg.model.token_dim)
    torch.testing.assert_close(seen["z"], z.repeat(3, 1))
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (12,), generator=g)
    noise = torch.randn(12, cfg.model.token_dim, generator=g)
    assert torch.equal(seen["t"], t) and len(set(t.tolist())) > 1
    torch.testing.assert_close(loss, (noise**2).mean())
    torch.testing.assert_close(seen["xt"], model.diffusion.q_sample(target.repeat(3, 1), t, noise))
