"""The generator: parameter accounting, masks, attention structure, guidance, KV cache."""

import dataclasses
import re

import pytest
import torch
from helpers import text_batch, tiny, tokens_for

from fluid.config import PRESETS, VARIANTS, SampleConfig, get_preset
from fluid.model import Generator
from fluid.model.counts import count_params
from fluid.model.masking import cosine_mask_ratio, random_orders, tokens_per_step, training_mask
from fluid.sample.generate import Sampler, generate
from fluid.sample.rng import ImageRNG
from fluid.scaling.flops import flops_per_image


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_config_param_count_matches_the_model(preset, variant):
    cfg = get_preset(preset, variant=variant)
    with torch.device("meta"):  # no memory, even for 10B parameters
        model = Generator(cfg.model, cfg.text)
    assert count_params(cfg.model, cfg.text)["total"] == sum(p.numel() for p in model.parameters())
    assert flops_per_image(cfg.model, cfg.text) > 0 and flops_per_image(cfg.model, cfg.text, train=False) > 0


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("fluid-")])
def test_paper_presets_land_within_5_percent_of_their_names(name):
    value, unit = re.fullmatch(r"fluid-([\d.]+)([mb])", name).groups()
    target = float(value) * (1e6 if unit == "m" else 1e9)
    cfg = get_preset(name)
    assert abs(count_params(cfg.model, cfg.text)["total"] / target - 1) < 0.05


def test_training_mask_follows_the_order_and_the_cosine_schedule():
    g = torch.Generator().manual_seed(0)
    orders = random_orders(20_000, 16, g)
    assert torch.equal(orders.sort(1).values, torch.arange(16).expand(20_000, 16))
    mask = training_mask(orders, g)
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= 16
    # The masked positions are exactly the first `count` of each order.
    first = torch.arange(16)[None] < counts[:, None]
    assert torch.equal(mask.gather(1, orders), first)
    # E[ceil(16 cos(pi u / 2))] / 16, by quadrature: the empirical mean ratio must match it.
    u = torch.linspace(0, 1, 200_001)[:-1] + 0.5 / 200_000
    expected = torch.ceil(16 * cosine_mask_ratio(u)).clamp(1, 16).mean() / 16
    assert abs(counts.float().mean() / 16 - expected) < 0.01


@pytest.mark.parametrize("n,steps", [(16, 16), (16, 64), (64, 64), (256, 64), (16, 5), (7, 3)])
def test_tokens_per_step(n, steps):
    counts = tokens_per_step(n, steps)
    assert sum(counts) == n and min(counts) >= 1 and len(counts) == min(n, steps)
    # Fewer tokens early, more late: the cosine schedule's shape.
    assert counts[0] <= counts[-1]


@pytest.mark.parametrize("token_type", ["continuous", "discrete"])
def test_causal_attention_hides_later_tokens(token_type):
    model = tiny(f"{token_type}-raster")
    emb, mask = text_batch()
    text, tmask = model.aligner(emb, mask)
    tokens = tokens_for(model)
    changed = tokens.clone()
    j = 9
    changed[:, j] = tokens_for(model, seed=1)[:, j]
    with torch.no_grad():
        a = model.backbone(model.embed_shifted(tokens), text, tmask)
        b = model.backbone(model.embed_shifted(changed), text, tmask)
    # Position i sees tokens < i: outputs up to and including position j are untouched.
    assert torch.equal(a[:, : j + 1], b[:, : j + 1])
    assert not torch.allclose(a[:, j + 1 :], b[:, j + 1 :])


def test_random_order_attention_is_bidirectional():
    model = tiny("continuous-random")
    emb, mask = text_batch()
    text, tmask = model.aligner(emb, mask)
    tokens, known = tokens_for(model), torch.ones(3, 16, dtype=torch.bool)
    changed = tokens.clone()
    changed[:, 15] += 1.0
    with torch.no_grad():
        a = model.backbone(model.embed_masked(tokens, known), text, tmask)
        b = model.backbone(model.embed_masked(changed, known), text, tmask)
    assert not torch.allclose(a[:, 0], b[:, 0])


@pytest.mark.parametrize("qk_norm", [False, True])
def test_backbone_outputs_at_chosen_positions_match_the_full_pass(qk_norm):
    """The last block at the sampled positions alone (sampling's shortcut) gives the rows of the
    full pass, in the order asked for, with any mix of known and masked tokens."""
    model = tiny("continuous-random", qk_norm=qk_norm)
    emb, mask = text_batch()
    text, tmask = model.aligner(emb, mask)
    g = torch.Generator().manual_seed(3)
    known = torch.rand(3, 16, generator=g) < 0.5
    x = model.embed_masked(tokens_for(model), known)
    pos = torch.stack([torch.randperm(16, generator=g)[:5] for _ in range(3)])  # (3, 5), unsorted
    with torch.no_grad():
        full = model.backbone(x, text, tmask)  # (3, 16, W)
        part = model.backbone(x, text, tmask, outputs=pos)  # (3, 5, W)
    assert part.shape == (3, 5, full.shape[-1])
    torch.testing.assert_close(part, full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1])))
    with pytest.raises(ValueError, match="bidirectional"):
        tiny("continuous-raster").backbone(x, text, tmask, outputs=pos)


def test_empty_prompt_and_dropped_prompt_are_the_null_condition():
    model = tiny("continuous-random")
    emb, mask = text_batch()
    empty_mask = mask.clone()
    empty_mask[2] = False  # row 2: an empty prompt
    text_a, mask_a = model.aligner(emb, empty_mask)
    text_b, mask_b = model.aligner(emb, mask, drop=torch.tensor([False, False, True]))
    torch.testing.assert_close(text_a[2, 0], text_b[2, 0])
    assert mask_a[2].tolist() == [True] + [False] * 4 and torch.equal(mask_a[2], mask_b[2])
    torch.testing.assert_close(text_a[0], text_b[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_guidance_at_scale_one_equals_the_conditional_model(variant, float64):
    model = tiny(variant)
    emb, mask = text_batch()
    cfg = SampleConfig(steps=4, cfg=1.0, cfg_schedule="constant")
    plain = generate(model, emb, mask, cfg, ImageRNG.for_images(3, range(len(emb))), head_steps=5)
    guided = generate(model, emb, mask, cfg, ImageRNG.for_images(3, range(len(emb))), head_steps=5, force_guidance=True)
    if model.continuous:
        torch.testing.assert_close(plain, guided, atol=1e-8, rtol=1e-8)
    else:
        assert torch.equal(plain, guided)
    # ... and guidance does change the result at scale 4.
    strong = generate(
        model, emb, mask, dataclasses.replace(cfg, cfg=4.0), ImageRNG.for_images(3, range(len(emb))), head_steps=5
    )
    assert not torch.equal(plain, strong)


@pytest.mark.parametrize("token_type", ["continuous", "discrete"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_kv_cache_gives_the_tokens_of_prefix_recomputation(token_type, cfg_scale, float64):
    model = tiny(f"{token_type}-raster")
    emb, mask = text_batch()
    cfg = SampleConfig(cfg=cfg_scale)
    cached = generate(model, emb, mask, cfg, ImageRNG.for_images(5, range(len(emb))), head_steps=8)
    recomputed = generate(model, emb, mask, cfg, ImageRNG.for_images(5, range(len(emb))), head_steps=8, use_cache=False)
    if model.continuous:
        torch.testing.assert_close(cached, recomputed, atol=1e-8, rtol=1e-8)
    else:
        assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_seeds_make_sampling_reproducible(variant):
    model = tiny(variant)
    emb, mask = text_batch()
    cfg = SampleConfig(steps=4, cfg=2.0)
    a = generate(model, emb, mask, cfg, ImageRNG.for_images(11, range(len(emb))), head_steps=5)
    b = generate(model, emb, mask, cfg, ImageRNG.for_images(11, range(len(emb))), head_steps=5)
    c = generate(model, emb, mask, cfg, ImageRNG.for_images(12, range(len(emb))), head_steps=5)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("variant", ["continuous-random", "continuous-raster"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_few_step_head_samplers_are_deterministic_given_the_seed(variant, sampler):
    model = tiny(variant)
    emb, mask = text_batch()
    cfg = SampleConfig(steps=4, cfg=2.0, head_sampler=sampler)
    run = lambda c, seed: generate(model, emb, mask, c, ImageRNG.for_images(seed, range(len(emb))), head_steps=6)  # noqa: E731
    a, b, c = run(cfg, 11), run(cfg, 11), run(cfg, 12)
    assert a.shape == (3, model.cfg.num_tokens, model.cfg.token_dim) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, run(dataclasses.replace(cfg, head_sampler="ddpm"), 11))
    # Temperature scales the only noise an ODE sampler draws: at 0 a raster model's tokens
    # no longer depend on the seed.
    if variant.endswith("raster"):
        cold = dataclasses.replace(cfg, temperature=0.0)
        assert torch.equal(run(cold, 11), run(cold, 12))


@pytest.mark.slow
def test_compiled_sampling_gives_the_eager_tokens():
    """``sample.compile``: the head network and the random-order backbone go through
    torch.compile; the tokens agree with eager sampling up to the last bits' rounding."""
    model = tiny("continuous-random")
    emb, mask = text_batch()
    cfg = SampleConfig(steps=4, cfg=2.0)
    sampler = Sampler(model)
    run = lambda c: sampler.generate(emb, mask, c, ImageRNG.for_images(11, range(len(emb))), head_steps=5)  # noqa: E731
    eager = run(cfg)
    fast = run(dataclasses.replace(cfg, compile=True))
    assert set(sampler._compiled) == {"head", "backbone"}
    torch.testing.assert_close(fast, eager, rtol=1e-3, atol=1e-3)
    assert not torch.equal(run(dataclasses.replace(cfg, compile=True, cfg=3.0)), fast)  # not a cached answer


def test_discrete_head_is_tied_to_the_input_embedding():
    model = tiny("discrete-random")
    h = torch.randn(4, model.cfg.width)
    before = model.logits(h)
    with torch.no_grad():
        model.token_in.weight[7] += 1.0
    after = model.logits(h)
    assert not torch.allclose(before[:, 7], after[:, 7]) and torch.allclose(before[:, 8], after[:, 8])
    assert not any("head" in k and "embed" in k for k in model.state_dict())
    assert model.state_dict()["token_in.weight"].shape == (model.cfg.vocab_size, model.cfg.width)


def test_confidence_sampling_runs_and_fills_every_token():
    model = tiny("discrete-random")
    emb, mask = text_batch()
    out = generate(model, emb, mask, SampleConfig(steps=6, confidence=True), ImageRNG.for_images(0, range(len(emb))))
    assert out.shape == (3, 16) and out.min() >= 0 and out.max() < model.cfg.vocab_size


def test_record_shows_tokens_filling_in():
    model = tiny("continuous-random")
    emb, mask = text_batch()
    record = []
    generate(
        model,
        emb,
        mask,
        SampleConfig(steps=16, cfg=1.0),
        ImageRNG.for_images(0, range(len(emb))),
        head_steps=3,
        on_step=lambda *frame: record.append(frame),
    )
    known = [int(k[0].sum()) for _, _, k in record]
    assert known == sorted(known) and known[-1] == 16 and len(record) == 16


def test_packed_head_is_the_head_in_fp32_row_by_row_and_follows_new_weights():
    from fluid.model.heads import DiffusionHead, PackedDenoise

    if not PackedDenoise.available():
        pytest.skip("this torch has no oneDNN linear")
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=6, cond_dim=24, width=32, depth=2)
    for p in head.parameters():  # zero-initialised layers would hide a wrong wiring
        torch.nn.init.normal_(p, std=0.3)
    packed = PackedDenoise(head)
    x, c = torch.randn(9, 6), torch.randn(9, 32)
    with torch.no_grad():
        out = packed(x, c)
        torch.testing.assert_close(out, head.denoise(x, c), rtol=1e-5, atol=1e-5)
        assert torch.equal(packed(x[2:3], c[2:3]), out[2:3]) and torch.equal(packed(x[:4], c[:4]), out[:4])
        head.load_state_dict({k: v * 1.5 for k, v in head.state_dict().items()})  # in place, as a checkpoint load
        new = packed(x, c)
        torch.testing.assert_close(new, head.denoise(x, c), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(new, out, atol=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(packed(x, c), head.denoise(x, c))  # not fp32: the head itself
    assert torch.equal(packed(x, c), head.denoise(x, c))  # with gradients: the head itself


def test_packed_head_sampling_gives_the_eager_tokens():
    from fluid.model.heads import PackedDenoise

    if not PackedDenoise.available():
        pytest.skip("this torch has no oneDNN linear")
    model = tiny("continuous-random")
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    emb, mask = text_batch()
    cfg = SampleConfig(steps=4, cfg=2.0, packed_head=True)
    sampler = Sampler(model)
    run = lambda c, ids: sampler.generate(emb[ids], mask[ids], c, ImageRNG.for_images(11, ids), head_steps=5)  # noqa: E731
    fast = run(cfg, [0, 1, 2])
    packed = sampler.denoise(cfg)
    assert isinstance(packed, PackedDenoise) and sampler.denoise(cfg) is packed  # packed once, and kept
    torch.testing.assert_close(fast, run(dataclasses.replace(cfg, packed_head=False), [0, 1, 2]), rtol=1e-3, atol=1e-3)
    assert not torch.equal(run(dataclasses.replace(cfg, cfg=3.0), [0, 1, 2]), fast)  # not a cached answer


@pytest.mark.parametrize("refresh", [1, 2, 3])
def test_guidance_refresh_runs_the_null_branch_every_kth_step_and_reuses_its_residual(refresh, monkeypatch):
    """With ``guidance_refresh`` k, the head sees, on steps that are not a multiple of k, the
    conditional features of the current tokens beside those features minus the residual
    (conditional - unconditional) of the last full step; on the others (and always for k = 1)
    both branches of the current tokens. Checked against full backbone passes, step by step."""
    import fluid.sample.generate as gen

    model = tiny("continuous-random")
    emb, mask = text_batch()
    b, n, c = emb.shape[0], model.cfg.num_tokens, model.cfg.token_dim
    seen = []

    def head(sampler, z, scale, cfg, guided, rng, head_steps=None):
        # A stand-in for the head: a token that depends on the conditional features only.
        seen.append(z.clone())
        m = z.shape[0] // 2
        return torch.tanh(z[:m, :1]).expand(m, c).contiguous(), None

    monkeypatch.setattr(gen, "sample_from_head", head)
    cfg = SampleConfig(steps=7, cfg=3.0, guidance_refresh=refresh)
    out = generate(model, emb, mask, cfg, ImageRNG.for_images(5, range(b)))

    cond = gen.condition(model, emb, mask, True)
    orders = ImageRNG.for_images(5, range(b)).rand(b, n).argsort(dim=1)
    tokens, known = torch.zeros(b, n, c), torch.zeros(b, n, dtype=torch.bool)
    rows, done = torch.arange(b)[:, None], 0
    counts = tokens_per_step(n, cfg.steps)
    assert len(seen) == len(counts)

    def at(t, pos):  # (B, N, W) at pos (B, K) -> (B*K, W)
        return t.gather(1, pos[..., None].expand(-1, -1, t.shape[-1])).reshape(-1, t.shape[-1])

    with torch.no_grad():
        for step, count in enumerate(counts):
            pos = orders[:, done : done + count]
            x = model.embed_masked(torch.cat([tokens] * 2), torch.cat([known] * 2))
            h = model.backbone(x, cond.text, cond.mask)  # (2B, N, W): both branches, every position
            if step % refresh == 0:
                residual = h[:b] - h[b:]  # (B, N, W), kept until the next full step
            uncond = h[b:] if step % refresh == 0 else h[:b] - residual
            torch.testing.assert_close(seen[step], torch.cat([at(h[:b], pos), at(uncond, pos)]))
            tokens[rows, pos] = torch.tanh(at(h[:b], pos)[:, :1]).expand(-1, c).reshape(b, count, c)
            known[rows, pos] = True
            done += count
    torch.testing.assert_close(out, tokens)


def test_guidance_refresh_must_be_a_whole_number_from_one():
    from fluid.config import ConfigError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="guidance_refresh"):
            SampleConfig(guidance_refresh=bad)
