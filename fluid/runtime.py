"""What the machine is: the CPU's model and native bf16, the threads and device a run uses.

The lowest layer: it imports nothing of Fluid, so configs, trainers, benchmarks and the
scaling plan all ask the same questions the same way.
"""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16); elsewhere
    bf16 is emulated and far slower than fp32."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def machine(threads: int | None = None, device: str | None = None) -> dict:
    """What a time per image depends on: the CPU model, the threads and the device."""
    import torch

    return {
        "cpu": cpu_name(),
        "threads": int(threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()),
        "device": device or "cpu",
    }
