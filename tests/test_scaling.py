"""The scaling study's parts: compute accounting against a FLOP counter, sweep files, and a
micro sweep run end to end through ``fluid scale``."""

import json
import math
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import fluid.model.generator as generator_module
from fluid.config import VARIANTS, get_preset
from fluid.model import Generator
from fluid.model.counts import count_params
from fluid.model.masking import random_orders, training_mask
from fluid.scaling.compute import compute_summary
from fluid.scaling.flops import flops_per_image, mean_mask_fraction
from fluid.scaling.sweep import SweepError, load_sweep, named_sweeps, parse_sweep


def _counted_train_flops(preset: str, variant: str, masked: int) -> tuple[float, float]:
    """(FLOPs per image from torch's counter on one training step, the config's formula),
    with exactly ``masked`` tokens per image predicted in random order."""
    cfg = get_preset(preset, variant=variant)
    m = cfg.model
    torch.manual_seed(0)
    model = Generator(m, cfg.text)
    b, L = 3, cfg.text.max_length
    tokens = (
        torch.randn(b, m.num_tokens, m.token_dim)
        if model.continuous
        else torch.randint(0, m.vocab_size, (b, m.num_tokens))
    )
    emb, mask = torch.randn(b, L, cfg.text.dim), torch.ones(b, L, dtype=torch.bool)

    def fixed_mask(orders, generator=None, schedule="cosine"):
        out = torch.zeros_like(orders, dtype=torch.bool)
        out[:, :masked] = True
        return out

    # The math attention backend runs as plain matmuls, which the counter sees (the fused CPU
    # kernel is not counted).
    with (
        mock.patch.object(generator_module, "training_mask", fixed_mask),
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):
        model(tokens, emb, mask, torch.Generator().manual_seed(0)).backward()
    return counter.get_total_flops() / b, flops_per_image(m, cfg.text, mask_ratio=masked / m.num_tokens)


@pytest.mark.parametrize("preset", ["debug", "shapes-small"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_training_flops_formula_matches_the_flop_counter(preset, variant):
    counted, formula = _counted_train_flops(preset, variant, masked=5)
    assert abs(formula - counted) / counted < 1e-3, (counted, formula)


def test_mean_mask_fraction_is_the_training_masks_mean():
    g = torch.Generator().manual_seed(0)
    for schedule in ("cosine", "truncnorm"):
        empirical = training_mask(random_orders(20_000, 16, g), g, schedule).float().mean().item()
        assert abs(mean_mask_fraction(16, schedule) - empirical) < 0.01
    assert abs(mean_mask_fraction(4096) - 2 / 3.14159265) < 0.01  # ceil's effect vanishes with N


def test_compute_summary_counts_the_trained_generator_only():
    cfg = get_preset("shapes-small")
    c = compute_summary(cfg)
    assert c["params"] == count_params(cfg.model, cfg.text)["total"]
    assert set(c["params_exclude"]) == {"frozen text encoder", "image tokenizer"}
    assert c["train_flops"] == pytest.approx(c["train_flops_per_image"] * cfg.train.batch_size * cfg.train.steps)


def test_sweep_product_of_axes_and_overrides():
    sweep = parse_sweep(
        {
            "name": "t",
            "preset": "debug",
            "steps": 10,
            "eval_steps": [5, 99],
            "set": {"train.batch_size": 4},
            "axes": {
                "variant": ["continuous-random", "discrete-raster"],
                "size": {"s": {"model.width": 32, "model.heads": 2}, "m": {"steps": 20}},
            },
        }
    )
    assert [r.name for r in sweep.runs] == [
        "variant=continuous-random,size=s",
        "variant=continuous-random,size=m",
        "variant=discrete-raster,size=s",
        "variant=discrete-raster,size=m",
    ]
    small, medium = sweep.runs[2].config(), sweep.runs[3].config()
    assert small.model.variant == "discrete-raster" and small.model.width == 32 and small.train.batch_size == 4
    assert medium.train.steps == 20 and medium.model.width == get_preset("debug").model.width
    assert sweep.runs[0].eval_steps == [5, 10] and sweep.runs[1].eval_steps == [5, 20]  # 99 is past the end


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"axes": {"arm": ["a", "b"]}}, "list is only allowed"),
        ({"axes": {"arm": {"x": {"model.nope": 1}}}}, "model.nope"),
        ({"axes": {"variant": ["continuous-sideways"]}}, "unknown variant"),
        ({"sizes": {}}, "unknown sweep key"),
    ],
)
def test_bad_sweeps_are_refused_with_a_clear_message(bad, message):
    with pytest.raises((SweepError, ValueError), match=message):
        parse_sweep({"preset": "debug", **bad})


def test_named_sweeps_load():
    assert "fluid-ablation-cpu" in named_sweeps()
    for name in named_sweeps():
        assert load_sweep(name).runs


def test_scale_list_prints_the_cpu_mini_grid_with_sizes_and_compute(capsys):
    """`fluid scale --sweep cpu-mini --list`: 4 variants x 4 sizes, each with its parameters
    and training FLOPs, and nothing trained."""
    from fluid.cli import main
    from fluid.scaling.compute import compute_summary
    from fluid.scaling.identity import fitted_config

    sweep = load_sweep("cpu-mini")
    assert main(["scale", "--sweep", "cpu-mini", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sweep cpu-mini: 16 runs") and len(lines) == 17
    sizes = {}
    for run, line in zip(sweep.runs, lines[1:]):
        cfg = fitted_config(sweep, run)
        c = compute_summary(cfg)
        assert line.split()[0] == run.name and f"{c['params'] / 1e6:.2f}M" in line and f"{c['train_flops']:.2e}" in line
        sizes.setdefault(cfg.model.variant, set()).add(c["params"])
    assert len(sizes) == 4 and all(len(v) == 4 for v in sizes.values())


MICRO = """
name: micro
preset: debug
steps: 4
eval_steps: [2]
set: {train.batch_size: 4, train.val_size: 8, train.log_every: 2, train.val_every: 0, model.width: 32, model.heads: 2,
      data.pool: 12, data.pool_encoded: true, data.flip: false}
axes:
  variant: [continuous-random]
  size:
    a: {model.depth: 1}
    b: {}
eval: {metrics: [val_loss], val_size: 8}
"""


def _scale(*args, cwd):
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "fluid.cli", "scale", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_micro_sweep_end_to_end_resumes_and_refuses_stale_runs(tmp_path):
    sweep = tmp_path / "micro.yaml"
    sweep.write_text(MICRO)
    out = tmp_path / "out"
    proc = _scale("--sweep", str(sweep), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert [(r["run"], r["step"]) for r in rows] == [
        ("variant=continuous-random,size=a", 2),
        ("variant=continuous-random,size=a", 4),
        ("variant=continuous-random,size=b", 2),
        ("variant=continuous-random,size=b", 4),
    ]
    assert rows[0]["params"] < rows[2]["params"] and all(r["val_loss"] > 0 for r in rows)
    assert rows[1]["train_flops"] == pytest.approx(2 * rows[0]["train_flops"])
    header = (out / "results.csv").read_text().splitlines()[0]
    assert "val_loss" in header and "train_flops" in header
    # Both runs train on one tokenizer's encoded pool: encoded once, kept in the sweep's folder.
    assert len(list((out / "pool-cache").glob("pool-*.safetensors"))) == 1
    # Evaluated checkpoints are kept, the others pruned.
    kept = sorted(p.name for p in (out / "runs" / "variant=continuous-random,size=a" / "train").glob("step-*"))
    assert kept == ["step-0000002", "step-0000004"]
    # Each attempt records what `precision: auto` meant where it trained.
    from fluid.config import get_preset
    from fluid.runtime import resolve_precision
    from fluid.train.distributed import default_device

    record = json.loads((out / "runs" / "variant=continuous-random,size=a" / "run.json").read_text())
    expected = resolve_precision(get_preset("debug").train.precision, default_device()).value
    assert record["attempts"][0]["precision"] == expected

    # A second call finds everything done and trains nothing.
    again = _scale("--sweep", str(sweep), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and again.stderr.count("done before, skipped") == 2

    # Changing a run's config makes its results stale: refused, then redone on request.
    sweep.write_text(MICRO.replace("a: {model.depth: 1}", "a: {model.depth: 1, train.lr: 0.01}"))
    stale = _scale("--sweep", str(sweep), "--out", str(out), cwd=tmp_path)
    assert stale.returncode == 2 and "train.lr" in stale.stderr and "--redo-stale" in stale.stderr
    redo = _scale(
        "--sweep",
        str(sweep),
        "--out",
        str(out),
        "--redo-stale",
        "--only",
        "variant=continuous-random,size=a",
        cwd=tmp_path,
    )
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert len(list((out / "stale").iterdir())) == 1

    # A failing run is recorded with its error; the sweep goes on and exits non-zero.
    sweep.write_text(MICRO.replace("b: {}", "b: {data.source: cache, data.path: /nonexistent-cache}"))
    failed = _scale("--sweep", str(sweep), "--out", str(tmp_path / "out2"), cwd=tmp_path)
    assert failed.returncode == 1
    record = json.loads((tmp_path / "out2" / "runs" / "variant=continuous-random,size=b" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"]
    ok = json.loads((tmp_path / "out2" / "runs" / "variant=continuous-random,size=a" / "run.json").read_text())
    assert ok["status"] == "done"


def test_power_law_fit_recovers_a_known_exponent_and_band_covers_it():
    from fluid.scaling.fit import power_law_fit

    rng = np.random.default_rng(0)
    x = np.geomspace(1e6, 1e9, 8)
    y = 3.0 * x**-0.12 * np.exp(rng.normal(0, 0.01, size=x.shape))
    law = power_law_fit(x, y)
    assert abs(law.exponent + 0.12) < 0.01 and law.line.r2 > 0.98
    assert abs(law.coefficient / 3.0 - 1) < 0.2
    lo, hi = law.band(x)
    truth = 3.0 * x**-0.12
    assert np.mean((lo <= truth) & (truth <= hi)) >= 0.75  # a 95% band of the mean covers the true line
    exact = power_law_fit(x, 2.0 * x**0.5)
    assert exact.exponent == pytest.approx(0.5, abs=1e-9) and exact.line.r2 == pytest.approx(1.0)


def test_linear_fit_pearson_matches_numpy_and_known_correlation():
    from fluid.scaling.fit import linear_fit

    rng = np.random.default_rng(1)
    x = rng.normal(size=4000)
    y = -0.9 * x + math.sqrt(1 - 0.81) * rng.normal(size=4000)  # population r = -0.9
    fit = linear_fit(x, y)
    assert fit.pearson_r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert abs(fit.pearson_r + 0.9) < 0.03 and fit.p_value < 1e-10
    assert fit.r2 == pytest.approx(fit.pearson_r**2, abs=1e-12)
    with pytest.raises(ValueError):
        linear_fit([1.0, 1.0], [2.0, 3.0])


def test_pearson_interval_covers_the_true_r_at_its_stated_rate():
    from fluid.scaling.fit import linear_fit, pearson_interval

    rng = np.random.default_rng(2)
    hits, n = 0, 8
    for _ in range(400):
        x = rng.normal(size=n)
        y = -0.7 * x + math.sqrt(1 - 0.49) * rng.normal(size=n)  # population r = -0.7
        lo, hi = pearson_interval(linear_fit(x, y).pearson_r, n)
        assert -1 <= lo <= hi <= 1
        hits += lo <= -0.7 <= hi
    assert 0.90 <= hits / 400 <= 0.99  # a 95% interval
    assert pearson_interval(0.5, 3) == (-1.0, 1.0)
    narrow, wide = pearson_interval(0.9, 100), pearson_interval(0.9, 8)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_report_states_each_target_and_the_evidence_where_one_is_missed(tmp_path):
    """A study built to miss two targets: ShapesEval flat at a floor for one variant, and
    continuous-random not the best; the report says which, and gives the numbers behind it."""
    from fluid.scaling.analysis import analyze

    rows = []
    for variant, good in (("continuous-random", 0.0), ("continuous-raster", 0.2)):
        for i, params in enumerate([1e5, 4e5, 1.6e6, 6.4e6]):
            for step in (500, 1000):
                loss = 0.9 * params**-0.05 * (1.05 if step == 500 else 1.0)
                score = good * (1 - loss) + (0.01 * ((i + step // 500) % 2) if not good else 0)
                fams = {f"shapes_eval.{f}": (score if f == "colors" else 0.0) for f in ("single_object", "colors")}
                rows.append(
                    {
                        "run": f"{variant}-{i}",
                        "variant": variant,
                        "status": "done",
                        "step": step,
                        "params": params,
                        "images": step * 64,
                        "train_flops": 6 * params * step * 64,
                        "val_loss": loss,
                        "shapes_eval.overall": score,
                        "shapes_eval.images": 96,
                        "shapes_fd": 100 * loss,
                        **fams,
                        "train_s": 60.0,
                        "eval_s": 6.0,
                    }
                )
    (tmp_path / "results.json").write_text(json.dumps(rows))
    (tmp_path / "notes.md").write_text("## Notes\n\nWritten by hand.")
    fits = analyze(tmp_path, "synthetic", "test")
    t = fits["targets"]
    assert all(d["met"] for d in t["loss_power_law"].values())
    tracks = t["metric_tracks_loss"]["shapes_eval.overall"]
    assert tracks["continuous-raster"]["met"] and not tracks["continuous-random"]["met"]
    assert t["continuous_random_best"] == {"best": "continuous-raster", "met": False}
    assert t["evidence"]["continuous-random"]["family_scores_at_zero"] >= 8
    assert t["evidence"]["continuous-raster"]["images_per_checkpoint"] == 96
    report = (tmp_path / "report.md").read_text()
    assert report.count("**not met**") == 2 and "95% interval" in report and "binomial" in report
    assert "Written by hand." in report and "training 8.0 min" in report


def test_analysis_of_synthetic_results_writes_fits_figures_and_report(tmp_path):
    """Four variants x four sizes x two steps with known exponents: the analysis finds them."""
    from fluid.scaling.analysis import analyze

    rows, exps = (
        [],
        {"continuous-random": -0.10, "continuous-raster": -0.06, "discrete-random": -0.08, "discrete-raster": -0.05},
    )
    for variant, b in exps.items():
        for i, params in enumerate([1e5, 4e5, 1.6e6, 6.4e6]):
            for step in (500, 1000):
                loss = (0.9 if variant.startswith("continuous") else 6.0) * params**b * (1.05 if step == 500 else 1.0)
                rows.append(
                    {
                        "run": f"{variant}-{i}",
                        "variant": variant,
                        "status": "done",
                        "step": step,
                        "params": params,
                        "images": step * 64,
                        "train_flops": 6 * params * step * 64,
                        "val_loss": loss,
                        "shapes_eval.overall": 2.0 - loss if variant.startswith("c") else 1 - loss / 10,
                        "shapes_fd": 100 * loss,
                    }
                )
    rows.append({"run": "broken", "variant": "continuous-random", "status": "failed", "error": "out of memory"})
    (tmp_path / "results.json").write_text(json.dumps(rows))
    fits = analyze(tmp_path, "synthetic", "test")
    for variant, b in exps.items():
        assert fits["loss_vs_params"][variant]["exponent"] == pytest.approx(b, abs=1e-6)
        assert fits["loss_vs_params"][variant]["r2"] == pytest.approx(1.0)
        assert fits["metric_vs_loss"]["shapes_eval.overall"][variant]["pearson_r"] == pytest.approx(-1.0)
        assert fits["metric_vs_loss"]["shapes_fd"][variant]["pearson_r"] == pytest.approx(1.0)
    assert "continuous (pooled)" in fits["metric_vs_loss"]["shapes_fd"]
    assert fits["best_at_largest"]["shapes_eval.overall"]["best"] == "continuous-random"
    report = (tmp_path / "report.md").read_text()
    assert "out of memory" in report and "agrees" in report
    for name in fits["figures"].values():
        assert (tmp_path / name).stat().st_size > 10_000


def test_a_config_key_added_later_at_its_default_does_not_make_a_run_stale():
    from fluid.scaling.identity import run_identity, same_identity

    sweep = parse_sweep({"preset": "debug", "steps": 4, "axes": {"size": {"a": {"model.width": 32, "model.heads": 2}}}})
    current = run_identity(sweep, sweep.runs[0])
    old = json.loads(json.dumps(current))
    del old["config"]["train"]["keep_checkpoints"]  # as if written before the key existed
    assert same_identity(old, current)
    old["config"]["model"]["width"] = 48  # a real change
    assert not same_identity(old, current)
    assert not same_identity(None, current)


PLAN = MICRO.replace(
    "  size:\n    a: {model.depth: 1}\n    b: {}\n",
    "  lr:\n    x: {train.lr: 0.001}\n    y: {train.lr: 0.002}\n  size:\n    a: {model.depth: 1}\n    b: {}\n",
)


def test_plan_prices_runs_from_done_runs_on_this_machine_else_a_probe(tmp_path):
    import yaml

    from fluid.scaling.identity import fitted_config, run_identity
    from fluid.scaling.plan import PROBE_STEPS, machine, make_plan
    from fluid.scaling.records import RunFolder

    sweep = parse_sweep(yaml.safe_load(PLAN))
    out = tmp_path / "out"
    names = [r.name for r in sweep.runs]
    assert len(names) == 4
    per_image = {r.name: compute_summary(fitted_config(sweep, r))["train_flops_per_image"] for r in sweep.runs}

    # Nothing done, no probe: images and FLOPs are known, the time is not.
    plan = make_plan(sweep, out, probe=False, threads=1)
    assert [r.status for r in plan.runs] == ["new"] * 4 and plan.seconds is None
    assert plan.images_left == 4 * 4 * 4 and plan.flops_left == pytest.approx(16 * sum(per_image.values()))
    assert "unknown" in plan.format()

    # A run done on this machine prices the runs of the same model (another lr: same speed);
    # a partial run counts only the steps still to go; the other model is probed once.
    a_x, a_y = (r for r in sweep.runs if "size=a" in r.name)
    RunFolder(out, a_x).path.mkdir(parents=True)
    RunFolder(out, a_x).write(
        {
            "status": "done",
            "identity": run_identity(sweep, a_x),
            "attempts": [{"train_s": 8.0, "eval_s": 3.0, "machine": machine(1)}],
        }
    )
    partial = RunFolder(out, a_y).train / "step-0000003"
    partial.mkdir(parents=True)
    (partial / "meta.json").write_text('{"step": 3}')
    (RunFolder(out, a_y).train / "latest").symlink_to(partial.name)
    with mock.patch("fluid.scaling.plan.probe_seconds_per_image", return_value=0.5) as probe:
        plan = make_plan(sweep, out, probe=True, threads=1)
    by = {r.name: r for r in plan.runs}
    assert by[a_x.name].status == "done" and by[a_x.name].images_left == 0
    assert by[a_y.name].status == "partial" and by[a_y.name].images_left == 4
    assert by[a_y.name].train_s == pytest.approx(8.0 / 16 * 4) and by[a_y.name].eval_s == pytest.approx(3.0)
    assert by[a_y.name].source == f"done-run {a_x.name}"
    probed = [r for r in plan.runs if "size=b" in r.name]
    assert probe.call_count == 1 and all(r.source == "probe" and r.train_s == pytest.approx(8.0) for r in probed)
    assert plan.seconds == pytest.approx(2.0 + 3.0 + 8.0 + 8.0)
    assert plan.to_dict()["images_left"] == 4 + 16 + 16

    # Seconds measured on another machine (or thread count) are not used.
    with mock.patch("fluid.scaling.plan.probe_seconds_per_image", return_value=0.25):
        other = make_plan(sweep, out, probe=True, threads=2)
    assert {r.source for r in other.runs if r.status != "done"} == {"probe"}

    # A real probe: the trainer's step on the micro model, seconds per image > 0.
    from fluid.scaling.plan import probe_seconds_per_image

    assert PROBE_STEPS >= 2 and 0 < probe_seconds_per_image(fitted_config(sweep, a_x), threads=1) < 60


def test_scale_plan_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    from fluid.cli import main

    sweep = tmp_path / "plan.yaml"
    sweep.write_text(PLAN)
    out = tmp_path / "out"
    assert main(["scale", "--sweep", str(sweep), "--out", str(out), "--plan", "--no-probe"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out.strip().splitlines()[-1])["plan"]
    assert plan["images_left"] == 64 and len(plan["runs"]) == 4 and plan["seconds"] is None
    assert "plan: 4 of 4 runs to do, 64 images" in captured.err
    assert not (out / "runs").exists()
    assert main(["scale", "--sweep", str(sweep), "--out", str(out), "--only", "no-such-run"]) == 2
    assert "no run named no-such-run" in capsys.readouterr().err


def test_a_power_law_through_two_sizes_is_not_a_met_target():
    """Two sizes fit any power law exactly (R^2 = 1): the target waits for a third."""
    from fluid.scaling.findings import targets

    fits = {
        "loss_vs_params": {"two": {"r2": 1.0, "n": 2}, "three": {"r2": 0.95, "n": 3}, "bad": {"r2": 0.5, "n": 4}},
        "metric_vs_loss": {},
        "best_at_largest": {},
    }
    t = targets([], fits)["loss_power_law"]
    assert {v: d["met"] for v, d in t.items()} == {"two": False, "three": True, "bad": False}
    assert t["two"]["sizes"] == 2
