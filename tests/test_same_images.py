"""The shipped models give byte-identical images for a fixed prompt and seed.

The hashes are of the sampled uint8 image arrays (fp32, one thread), recorded before the
package layout was reorganised; a move of code that changes any number changes them. They
are per CPU instruction set, since fp32 kernels may round differently on another one, and
per vendor where they differ: MKL runs in strict mode on Intel CPUs only (``fluid/__init__.py``),
and the discrete model's logits then round differently on AMD CPUs with the same instruction set.
"""

import hashlib

import pytest
import torch

from fluid.sample.pipeline import FluidPipeline

PROMPTS = ["a red square", "two blue circles"]
RECORDED = {  # torch.backends.cpu.get_cpu_capability() -> variant -> sha256 of (2, 3, 64, 64) uint8
    "AVX512": {
        "continuous-random": "a18c36bb66e52a6702d7e18199205ffc942a5317e157d4ef3cd5081947800553",
        "discrete-random": "8d88cdf685ac55ceab4a69f1ce435cc392cf13ee8df538e0c68962e2d37cdddf",
    },
}
BY_VENDOR = {  # (capability, vendor) -> the variants whose hash differs there, or that only it records
    ("AVX512", "AuthenticAMD"): {
        "discrete-random": "e23a394d07c46db1f3369cc8bcf9468a2e3094b603ca1d39f757e800aa7f84b2",
    },
    ("AVX512", "GenuineIntel"): {  # a Xeon with AMX, by the code before the reorganisation (64ef167) and after
        "continuous-raster": "0be244510589b4946f1696c93d92ba0f96e6babab40b0a00b81ddf8f238a3154",
        "discrete-raster": "90c82715c21c2710c012d59825f29b86ccd90499a0fd1f8989ae252a1f558717",
    },
    ("AVX2", "AuthenticAMD"): {  # an AMD EPYC without AVX-512, recorded before the code was reformatted
        "continuous-random": "88d068a1ef3c8180acae7ffd1867da1166c4ebd947b4c2da3a67719067aa42bb",
        "continuous-raster": "cfee317cc6a2a90c123e276d0e5626abd12d7a0ae19f4b530b4a3bcc867b8ddf",
        "discrete-random": "e23a394d07c46db1f3369cc8bcf9468a2e3094b603ca1d39f757e800aa7f84b2",
        "discrete-raster": "90c82715c21c2710c012d59825f29b86ccd90499a0fd1f8989ae252a1f558717",
    },
}


def _vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "unknown"
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in text), "unknown")


@pytest.mark.parametrize("variant", ["continuous-random", "continuous-raster", "discrete-random", "discrete-raster"])
def test_shipped_generator_images_are_byte_identical(variant, minilm, one_thread):
    capability = torch.backends.cpu.get_cpu_capability()
    recorded = {**RECORDED.get(capability, {}), **BY_VENDOR.get((capability, _vendor()), {})}
    if variant not in recorded:
        pytest.skip(f"no hash recorded for {variant} on {capability} {_vendor()} CPUs")
    pipe = FluidPipeline.from_pretrained(variant=variant, device="cpu", text_encoder=minilm)
    pipe.cfg.train.precision = "fp32"  # auto would pick bf16 on some CPUs
    images = pipe(PROMPTS, seed=0, output_type="tensor")
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert pixels.shape == (2, 3, 64, 64)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == recorded[variant]


def test_a_sweep_run_recorded_before_the_shapes_code_moved_stays_fresh():
    from fluid.scaling.identity import SAME_RENDERER, renderer_digest, same_identity

    current = {"data": {"source": "shapes", "resolution": 64, "holdout": False, "renderer": renderer_digest()}}
    before = {"data": {**current["data"], "renderer": "c49a3c469f42"}}  # fluid/data/shapes.py, one file
    if SAME_RENDERER["c49a3c469f42"] != renderer_digest():
        pytest.skip("the renderer changed since the move: runs recorded before it are stale anyway")
    assert same_identity(before, current)
    assert not same_identity({"data": {**current["data"], "renderer": "000000000000"}}, current)
