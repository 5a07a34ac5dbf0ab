"""`fluid bench --quick`: that it runs through the command line and writes well-formed
results (not how fast anything is)."""

import json

import pytest
import torch

from fluid.cli import main


def test_fluid_bench_quick_writes_json_and_a_markdown_table(tmp_path):
    threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "bench",
                "--quick",
                "--out",
                str(tmp_path),
                "--threads",
                "1",
                "--variants",
                "continuous-random",
                "discrete-raster",
                "--precisions",
                "fp32",
                "--gen-steps",
                "2",
                "--head-samplers",
                "ddpm:3",
                "dpm++2m:2",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["machine"]["cpu"] and result["peak_flops"]["fp32"]["wall"] > 0
    train = {(r["variant"], r["precision"]): r for r in result["training"]}
    assert set(train) == {("continuous-random", "fp32"), ("discrete-raster", "fp32")}
    for r in train.values():
        assert (
            r["images_per_s"] > 0
            and r["gflop_per_image"] > 0
            and 0 < r["mfu"] < 10
            and r["batch"] == 4
            and r["mfu_cpu_time"] > 0
        )
    sampling = {(r["variant"], r["head_sampler"], r["head_steps"]): r for r in result["sampling"]}
    assert set(sampling) == {
        ("continuous-random", "ddpm", 3),
        ("continuous-random", "dpm++2m", 2),
        ("discrete-raster", None, None),
    }
    for (variant, sampler, _), r in sampling.items():
        assert r["tokens"] == 16 and r["images_per_s"] > 0 and r["latency_s"] > 0  # the preset's token count
        assert r["generation_steps"] == (2 if variant.endswith("random") else 16)
        assert (r["head_share"] is None) == (sampler is None)
        if sampler:
            assert 0 < r["head_share"] < 1
    table = (tmp_path / "bench.md").read_text()
    assert table.count("\n| debug |") == len(result["training"]) + len(result["sampling"])


def test_bench_reports_true_medians_and_the_largest_peak_over_repeats():
    from benchmarks.bench import sampling_row, training_row

    spec = {"kind": "training", "preset": "debug", "variant": "continuous-random", "precision": "fp32", "batch": 4}
    peaks = {"fp32": {"wall": 1e10, "cpu": 1e10}}
    reps = [
        {"images_per_s": v, "images_per_cpu_s": v / 2, "peak_rss_mb": m, "baseline_rss_mb": 100.0}
        for v, m in ((1.0, 300.0), (9.0, 200.0), (4.0, 250.0))
    ]
    row = training_row(spec, reps, peaks)
    assert row["images_per_s"] == 4.0 and row["images_per_cpu_s"] == 2.0  # not the best or the worst run
    assert row["peak_rss_mb"] == 300.0 and row["runs_images_per_s"] == [1.0, 9.0, 4.0]
    assert training_row(spec, reps[:2], peaks)["images_per_s"] == 5.0  # even count: the mean of the middle two

    spec = {
        "kind": "sampling",
        "preset": "debug",
        "variant": "continuous-random",
        "precision": "fp32",
        "head_sampler": "ddpm",
        "head_steps": 5,
        "compile": False,
        "batch": 16,
        "gen_steps": 4,
    }
    reps = [{"seconds": s, "cpu_seconds": 2 * s, "head_share": 0.5} for s in (8.0, 2.0, 4.0)]
    row = sampling_row(spec, reps, {"images_per_s": 2.0, "batch": 16})
    assert row["latency_s"] == 4.0 and row["images_per_s"] == 4.0 and row["vs_mar"] == 2.0
    assert "vs_mar" not in sampling_row(spec, reps, {"images_per_s": 2.0, "batch": 8})  # not MAR's settings


def test_bench_needs_three_repeats_and_times_mar_beside_ours(tmp_path):
    with pytest.raises(SystemExit, match="at least 3"):
        main(["bench", "--out", str(tmp_path), "--repeats", "2"])
    # A stand-in for MAR's harness with its output format: 2 images in 4 s, whatever it is asked.
    mar = tmp_path / "mar"
    mar.mkdir()
    (mar / "bench_mar.py").write_text(
        "import json, os\n"
        "it = os.environ['SAMPLE_ITERS']\n"
        "json.dump({'threads': 2, f'sample_fp32_iter{it}': {'s_per_batch': 4.0, 'bsz': 2}}, "
        "open(os.environ['OUT_JSON'], 'w'))\n"
    )
    threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "bench",
                "--quick",
                "--out",
                str(tmp_path / "out"),
                "--threads",
                "1",
                "--variants",
                "continuous-random",
                "--precisions",
                "fp32",
                "--gen-steps",
                "2",
                "--head-samplers",
                "ddim:2",
                "--skip",
                "training",
                "--mar",
                str(mar),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert result["mar"]["images_per_s"] == 0.5 and result["mar"]["runs_s"] == [4.0]
    (row,) = result["sampling"]
    assert row["vs_mar"] == round(row["images_per_s"] / 0.5, 3)
    assert row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0  # measured in its own process
    assert "MAR reference" in (tmp_path / "out" / "bench.md").read_text()
