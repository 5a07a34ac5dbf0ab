"""What several commands share: the config flags, the config they build, device and threads."""

from __future__ import annotations

import argparse

from fluid.config import PRESETS, VARIANTS, FluidConfig, apply_overrides, get_preset


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="shapes-small", help=f"named configuration ({', '.join(PRESETS)})")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="token type and order (default: the preset's)")
    p.add_argument("--config", default=None, help="a YAML/JSON config file (full, or {preset, overrides})")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config fields")


def build_config(args) -> FluidConfig:
    cfg = FluidConfig.load(args.config) if args.config else get_preset(args.preset)
    if args.variant:
        cfg = apply_overrides(cfg, {"model.token_type": args.variant.split("-")[0], "model.order": args.variant.split("-")[1]})
    return apply_overrides(cfg, args.set)


def pick_device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_threads(n: int | None) -> None:
    """CPU threads for PyTorch. Sampling the small shipped models runs thousands of tiny
    matmuls, for which one thread is as fast as two and does not collapse when other
    programs share the cores."""
    import torch

    if n:
        torch.set_num_threads(n)
