"""Guards on the method itself: each test here fails when a part of the paper's algorithm is
broken in a way that still trains and samples (targets visible to the random-order model,
another mask-ratio law, tokens never generated, guidance mixed the wrong way, a head that
ignores its condition)."""

import math
from unittest import mock

import pytest
import torch
from helpers import text_batch, tiny, tokens_for

import fluid.model.generator as generator_module
from fluid.config import SampleConfig
from fluid.model.masking import random_orders, training_mask
from fluid.sample.generate import Sampler, generate, sample_from_head
from fluid.sample.rng import ImageRNG


@pytest.mark.parametrize("variant", ["continuous-random", "discrete-random"])
def test_random_order_training_hides_the_tokens_it_predicts(variant):
    """The backbone's output may depend on the visible tokens only: changing the masked
    (to-be-predicted) tokens must leave it unchanged, and changing a visible one must not."""
    model = tiny(variant)
    emb, mask = text_batch()
    tokens = tokens_for(model)
    masked = torch.zeros(tokens.shape[:2], dtype=torch.bool)
    masked[:, ::2] = True  # every other position is to be predicted
    outputs = []
    hook = model.norm.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    other = tokens_for(model, seed=1)
    changed_masked = torch.where(masked[..., None] if model.continuous else masked, other, tokens)
    changed_visible = tokens.clone()
    changed_visible[:, 1] = other[:, 1]
    with mock.patch.object(generator_module, "training_mask", lambda orders, generator=None, schedule="cosine": masked):
        for t in (tokens, changed_masked, changed_visible):
            model(t, emb, mask, torch.Generator().manual_seed(0), text_dropout=0.0)
    hook.remove()
    assert torch.equal(outputs[0], outputs[1]), "the model sees the tokens it must predict"
    assert not torch.allclose(outputs[0], outputs[2]), "the model ignores its visible tokens"


def test_mask_ratio_follows_the_cosine_law_in_distribution():
    """P(masked <= k) = 1 - (2/pi) acos(k/N) for the cosine schedule (not just its mean)."""
    n, b = 16, 40_000
    g = torch.Generator().manual_seed(0)
    counts = training_mask(random_orders(b, n, g), g).sum(1)
    for k in range(1, n):
        expected = 1 - 2 / math.pi * math.acos(k / n)
        assert abs((counts <= k).float().mean().item() - expected) < 0.01, k
    # The model's own forward uses that law: the head scores ~0.665 of 16 tokens on average.
    model = tiny("discrete-random")
    seen = []
    real = generator_module.training_mask
    with mock.patch.object(generator_module, "training_mask", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]):
        emb, mask = text_batch(b=64)
        for seed in range(20):
            model(tokens_for(model, b=64, seed=seed), emb, mask, torch.Generator().manual_seed(seed))
    frac = torch.cat(seen).float().mean().item()
    assert abs(frac - 0.6652) < 0.02


@pytest.mark.parametrize(
    "variant, confidence",
    [
        ("continuous-random", False),
        ("discrete-random", False),
        ("discrete-random", True),
        ("continuous-raster", False),
        ("discrete-raster", False),
    ],
)
def test_every_sampler_generates_every_token_exactly_once(variant, confidence):
    model = tiny(variant)
    emb, mask = text_batch()
    record = []
    cfg = SampleConfig(steps=6, cfg=2.0, confidence=confidence)
    out = generate(
        model,
        emb,
        mask,
        cfg,
        ImageRNG.for_images(0, range(3)),
        head_steps=3,
        on_step=lambda *frame: record.append(frame),
    )
    n = model.cfg.num_tokens
    written = torch.zeros(3, n, dtype=torch.long)
    previous_known = torch.zeros(3, n, dtype=torch.bool)
    previous_tokens = None
    for _, tokens, known in record:
        new = known & ~previous_known
        assert torch.equal(known & previous_known, previous_known), "a generated token was forgotten"
        written += new.long()
        if previous_tokens is not None:  # generated tokens never change afterwards
            keep = previous_known[..., None] if model.continuous else previous_known
            assert torch.equal(torch.where(keep, tokens, 0 * tokens), torch.where(keep, previous_tokens, 0 * tokens))
        previous_known, previous_tokens = known, tokens
    assert torch.equal(written, torch.ones(3, n, dtype=torch.long)), "a token was never generated, or twice"
    assert torch.equal(record[-1][1], out)


def _head_inputs(model, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(m, model.cfg.width, generator=g).to(torch.get_default_dtype()) for _ in range(2))


@pytest.mark.parametrize("variant", ["continuous-random", "discrete-random"])
def test_guidance_is_uncond_plus_scale_times_cond_minus_uncond(variant, float64):
    """With the conditional rows first and the null rows second: scale 0 gives the
    unconditional result, scale 1 the conditional one, and the result is affine in the scale
    (a wrong sign or swapped halves breaks one of the three)."""
    model = tiny(variant)
    zc, zu = _head_inputs(model)
    cfg = SampleConfig(temperature=1.0, x0_clip=0.0)

    def run(z, scale, guided):
        # One head step: the sampler's output is then an affine function of epsilon.
        rng = ImageRNG.for_images(1, range(len(zc)))  # the same draws in every call
        out, logp = sample_from_head(Sampler(model), z, scale, cfg, guided, rng, head_steps=1)
        return logp if logp is not None else out

    both = torch.cat([zc, zu])
    at = {s: run(both, s, True) for s in (0.0, 1.0, 2.5)}
    cond, uncond = run(zc, 1.0, False), run(zu, 1.0, False)
    if not model.continuous:  # compare log-probabilities: logits_u + s (logits_c - logits_u)
        lc, lu = model.logits(zc).float(), model.logits(zu).float()  # the sampler works in float32
        torch.testing.assert_close(at[2.5], torch.log_softmax(lu + 2.5 * (lc - lu), -1), atol=1e-5, rtol=1e-5)
        cond, uncond = torch.log_softmax(lc, -1), torch.log_softmax(lu, -1)
    # float64 throughout: one respaced step divides by sqrt(alpha-bar) ~ 1e-4, amplifying rounding.
    tol = 1e-9 if model.continuous else 1e-5
    torch.testing.assert_close(at[1.0], cond, atol=tol, rtol=tol)
    torch.testing.assert_close(at[0.0], uncond, atol=tol, rtol=tol)
    if model.continuous:
        torch.testing.assert_close(at[2.5], uncond + 2.5 * (cond - uncond), atol=1e-7, rtol=1e-7)


def test_diffusion_head_depends_on_its_condition_and_timestep():
    model = tiny("continuous-random")
    head = model.head
    x = torch.randn(4, model.cfg.token_dim)
    z1, z2 = _head_inputs(model, m=4)
    t = torch.tensor([10, 10, 10, 10])
    out = head(x, t, z1)
    assert not torch.allclose(out, head(x, t, z2)), "the head ignores the backbone's condition"
    assert not torch.allclose(out, head(x, t + 500, z1)), "the head ignores the timestep"
    z = z1.clone().requires_grad_(True)
    head(x, t, z).square().sum().backward()
    assert z.grad.abs().sum() > 0


def test_discrete_output_layer_trains_the_input_embedding():
    """Tied weights: the gradient of the output logits reaches the code embedding (a detached
    or copied matrix would leave codes that are never inputs untrained by the output side)."""
    model = tiny("discrete-random")
    h = torch.randn(4, model.cfg.width)
    model.logits(h)[:, 7].sum().backward()  # code 7 is nobody's input here
    assert model.token_in.weight.grad is not None and model.token_in.weight.grad[7].abs().sum() > 0
