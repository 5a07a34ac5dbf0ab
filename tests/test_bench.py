"""`fluid bench --quick`: that it runs through the command line and writes well-formed
results (not how fast anything is)."""

import json

import torch

from fluid.cli import main


def test_fluid_bench_quick_writes_json_and_a_markdown_table(tmp_path):
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "--quick", "--out", str(tmp_path), "--threads", "1", "--variants", "continuous-random",
                   "discrete-raster", "--precisions", "fp32", "--gen-steps", "2", "--head-samplers", "ddpm:3",
                   "dpm++2m:2"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["machine"]["cpu"] and result["peak_flops"]["fp32"]["wall"] > 0
    train = {(r["variant"], r["precision"]): r for r in result["training"]}
    assert set(train) == {("continuous-random", "fp32"), ("discrete-raster", "fp32")}
    for r in train.values():
        assert r["images_per_s"] > 0 and r["gflop_per_image"] > 0 and 0 < r["mfu"] < 10 and r["batch"] == 4 and r["mfu_cpu_time"] > 0
    sampling = {(r["variant"], r["head_sampler"], r["head_steps"]): r for r in result["sampling"]}
    assert set(sampling) == {("continuous-random", "ddpm", 3), ("continuous-random", "dpm++2m", 2),
                             ("discrete-raster", None, None)}
    for (variant, sampler, _), r in sampling.items():
        assert r["tokens"] == 16 and r["images_per_s"] > 0 and r["latency_s"] > 0  # the preset's token count
        assert r["generation_steps"] == (2 if variant.endswith("random") else 16)
        assert (r["head_share"] is None) == (sampler is None)
        if sampler:
            assert 0 < r["head_share"] < 1
    table = (tmp_path / "bench.md").read_text()
    assert table.count("\n| debug |") == len(result["training"]) + len(result["sampling"])
