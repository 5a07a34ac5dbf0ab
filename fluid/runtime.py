"""What the machine is: the CPU's model and native bf16, the threads and device a run uses,
and the precision ``auto`` means on it.

The lowest layer: it imports nothing of Fluid, so configs, trainers, benchmarks and the
scaling plan all ask the same questions the same way.
"""

from __future__ import annotations

import enum
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


class Precision(str, enum.Enum):
    AUTO = "auto"  # bf16 where it is fast (CUDA, CPUs with AMX or AVX512-BF16), else fp32
    BF16 = "bf16"
    FP32 = "fp32"


def resolve_precision(precision: Precision | str, device) -> Precision:
    """``auto`` -> bf16 on CUDA and on CPUs with native bf16 matmuls, fp32 elsewhere.

    On a CPU without AMX / AVX512-BF16, bf16 matmuls are emulated and run ~100x slower than
    fp32, so "always bf16" would be the wrong default for laptops and many cloud CPUs.
    """
    precision = Precision(precision)
    if precision != Precision.AUTO:
        return precision
    import torch

    if torch.device(device).type == "cuda":
        return Precision.BF16
    return Precision.BF16 if native_bf16() else Precision.FP32


def autocast(device, precision: Precision | str):
    """bf16 autocast on ``device`` where ``precision`` resolves to bf16 (:func:`resolve_precision`),
    else a context that does nothing."""
    import contextlib

    import torch

    device = torch.device(device)
    if resolve_precision(precision, device) == Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sampling_precision(precision: Precision | str, device) -> Precision:
    """The precision images are sampled in: as :func:`resolve_precision`, except that ``auto``
    samples in fp32 on a CPU.

    Measured at the shipped size (one thread, batch 16): bf16 autocast sampled at 0.85-0.93x
    of fp32's speed on an AMD EPYC with AVX512-BF16 and at 0.84-0.89x on a Xeon with AMX, and on
    the Xeon its images changed in the last bits with the batch size (oneDNN's AMX kernels
    block by the matrix's shape), so a seed would no longer fix an image. fp32 rows do not
    depend on the batch (see ``fluid/__init__.py`` for MKL on Intel CPUs). Larger models gain
    from bf16 (1.78x at ``ref-512``, benchmarks/README.md): ask for it with ``bf16``.
    """
    import torch

    precision = Precision(precision)
    if precision == Precision.AUTO and torch.device(device).type != "cuda":
        return Precision.FP32
    return resolve_precision(precision, device)
