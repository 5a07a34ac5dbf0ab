"""``fluid presets``: the named configurations, with their size."""

from __future__ import annotations

from fluid.config import PRESETS, get_preset


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the named configurations")
    p.set_defaults(func=run)


def run(args) -> int:
    from fluid.model.counts import count_params

    for name in PRESETS:
        cfg = get_preset(name)
        n = count_params(cfg.model, cfg.text)["total"]
        m = cfg.model
        print(
            f"{name:14s} {n / 1e6:9.2f}M  width {m.width:5d} depth {m.depth:3d} heads {m.heads:3d} "
            f"tokens {m.num_tokens:4d}  text {cfg.text.encoder}"
        )
    return 0
