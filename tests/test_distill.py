"""The distilled few-step head: its jump targets in closed form, a student that learns a known
ODE, and the checkpoint files and sampler that carry it."""

import json

import pytest
import torch
from helpers import WordHashEncoder, make_tokenizer, tiny_config

from fluid.checkpoint import CheckpointError
from fluid.config import ConfigError
from fluid.diffusion.distill import Jumps, distill_head, teacher_walk
from fluid.diffusion.gaussian import GaussianDiffusion
from fluid.model.heads import DiffusionHead


def test_the_target_epsilon_makes_one_ddim_step_land_where_the_teacher_landed(float64):
    d = GaussianDiffusion.cosine(1000)
    jumps = Jumps(d)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([999, 700, 333, 50, 0])
    to = torch.tensor([666, 333, 0, -1, -1])
    x, x_to = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    eps, x0 = jumps.target_eps(x, t, x_to, to)
    torch.testing.assert_close(jumps.step(eps, x, t, to), x_to, atol=1e-9, rtol=0)
    torch.testing.assert_close(x0[3:], x_to[3:])  # landing on the clean end: x0 is the landing point
    # A walk of one substep is one DDIM step: on a grid the respaced sampler's own.
    eps_fn = lambda x, tt, z: 0.3 * x + 0.1  # noqa: E731
    grid = d.respace(2)  # timesteps 0 and 999
    start = torch.randn(4, 3, generator=g)
    walked = teacher_walk(eps_fn, jumps, start, None, torch.full((4,), 999), torch.full((4,), 0), 1)
    walked = teacher_walk(eps_fn, jumps, walked, None, torch.zeros(4, dtype=torch.long), torch.full((4,), -1), 1)
    torch.testing.assert_close(walked, grid.sample_ode(lambda x, tt: eps_fn(x, tt, None), start), atol=1e-9, rtol=1e-7)


def test_a_distilled_head_makes_in_three_steps_what_the_teacher_makes_in_24():
    """Unit-variance Gaussian data: the exact epsilon is sigma_t x_t and the probability-flow
    ODE is the identity (x_0 = x_T). DDIM with that teacher shrinks x by cos(step angle) per
    step: about 0.5 in 3 steps, 0.95 in 24. The student, fitted to the 24-step jumps, must
    make 3 steps land near the 24-step result, where the teacher's own 3 steps cannot."""
    torch.manual_seed(0)
    d = GaussianDiffusion.cosine(1000)
    sigma = (1 - d.alphas_cumprod).sqrt().float()
    teacher = lambda x, t, z: sigma[t][:, None] * x  # noqa: E731
    head = DiffusionHead(token_dim=2, cond_dim=4, width=64, depth=2)
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield torch.randn(256, 2, generator=g), torch.zeros(256, 4)

    student = distill_head(head, d, batches(), 3, 8, 200, lr=1e-3, teacher=teacher, generator=g)
    noise = torch.randn(512, 2, generator=g)
    z = torch.zeros(512, 4)
    v = GaussianDiffusion.cosine(1000, prediction="v").respace(3)
    with torch.no_grad():
        distilled = v.sample_ode(lambda x, t: student(x, t, z), noise)
    few = d.respace(3).sample_ode(lambda x, t: teacher(x, t, None), noise)
    many = d.respace(24).sample_ode(lambda x, t: teacher(x, t, None), noise)

    def err(x):
        return ((x - many).norm(dim=1) / noise.norm(dim=1)).mean().item()

    assert err(few) > 0.3  # the teacher's own 3 steps are far off
    assert err(distilled) < 0.1, err(distilled)


def test_distill_head_refuses_bad_settings():
    head = DiffusionHead(token_dim=2, cond_dim=4, width=8, depth=1)
    d = GaussianDiffusion.cosine(10)
    for kw in ({"steps": 1, "substeps": 2}, {"steps": 3, "substeps": 0}):
        with pytest.raises(ValueError):
            distill_head(head, d, iter(()), iterations=1, **kw)
    with pytest.raises(ValueError, match="prediction"):
        distill_head(head, d, iter(()), 3, 2, 1, prediction="x")


def test_a_checkpoints_distilled_head_samples_through_the_pipeline_and_travels_with_exports(tmp_path):
    from fluid.cli import main
    from fluid.sample.pipeline import FluidPipeline
    from fluid.train.distill import distill_checkpoint
    from fluid.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(tiny_config(steps=2, ckpt_every=2), run, make_tokenizer("kl"), WordHashEncoder(), show_progress=False).fit()
    kw = dict(tokenizer=make_tokenizer("kl"), text_encoder=WordHashEncoder(), device="cpu")
    with pytest.raises(ConfigError, match="distill-head"):
        FluidPipeline.from_pretrained(run, **kw).settings(head_sampler="distilled")
    info = distill_checkpoint(
        run,
        steps=3,
        substeps=2,
        iterations=3,
        images=8,
        batch_size=16,
        progress=False,
        tokenizer=kw["tokenizer"],
        text_encoder=kw["text_encoder"],
    )
    assert json.loads(info.read_text())["steps"] == 3

    pipe = FluidPipeline.from_pretrained(run, **kw)
    assert pipe.settings(head_sampler="distilled")["head_steps"] == 3
    with pytest.raises(ConfigError, match="3 steps"):
        pipe.settings(head_sampler="distilled", head_steps=5)
    a = pipe.generate_tokens(["a red square", "two blue circles"], seed=1, head_sampler="distilled")
    # The same as DDIM in 3 steps with the student's weights in the generator, read as v.
    by_hand = FluidPipeline.from_pretrained(run, **kw)
    by_hand.model.head.load_state_dict(pipe.distilled.head.state_dict())
    by_hand.model.diffusion = GaussianDiffusion.cosine(1000, by_hand.cfg.model.learn_sigma, prediction="v")
    b = by_hand.generate_tokens(["a red square", "two blue circles"], seed=1, head_sampler="ddim", head_steps=3)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    plain = pipe.generate_tokens(["a red square", "two blue circles"], seed=1, head_sampler="ddim", head_steps=3)
    assert not torch.equal(a, plain)  # the distilled weights were used, not the teacher's

    # An fp16 export keeps it, stamped with the rounded teacher it now belongs to.
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    exported = FluidPipeline.from_pretrained(tmp_path / "export", **kw)
    assert exported.distilled is not None and exported.distilled.steps == 3
    # A student paired with other weights than its teacher's is refused.
    path = tmp_path / "export" / "head-distilled.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "teacher_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="other head weights"):
        FluidPipeline.from_pretrained(tmp_path / "export", **kw)
