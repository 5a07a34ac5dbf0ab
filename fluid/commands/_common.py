"""What several commands share: the config flags, the sampling flags, the config they build,
device and threads."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import textwrap
import typing

from fluid.config import PRESETS, VARIANTS, FluidConfig, SampleConfig, apply_overrides, get_preset


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="shapes-small", help=f"named configuration ({', '.join(PRESETS)})")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="token type and order (default: the preset's)")
    p.add_argument("--config", default=None, help="a YAML/JSON config file (full, or {preset, overrides})")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config fields")


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name, on one line."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for field, doc in zip(body, body[1:]):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def _first_sentence(text: str) -> str:
    text = text.replace("``", "")
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def sample_args(p: argparse.ArgumentParser, *names: str) -> None:
    """Flags for the named :class:`~fluid.config.SampleConfig` fields, made from the fields
    themselves: ``--cfg-schedule`` for ``cfg_schedule``, the field's type (an enum's values as
    the choices, a bool as a switch, ``X | None`` as ``X``), the first sentence of its docstring
    as the help. Each defaults to None (False for a switch): the model's own setting."""
    fields = {f.name: f for f in dataclasses.fields(SampleConfig)}
    types, docs = typing.get_type_hints(SampleConfig), field_docs(SampleConfig)
    for name in names:
        if name not in fields:
            raise ValueError(f"SampleConfig has no field {name!r}")
        flag, tp, help_ = "--" + name.replace("_", "-"), types[name], _first_sentence(docs.get(name, ""))
        optional = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = optional[0] if len(optional) == 1 else tp  # int | None -> int
        if tp is bool:
            p.add_argument(flag, action="store_true", help=help_)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            p.add_argument(flag, choices=[m.value for m in tp], default=None, help=help_)
        else:
            p.add_argument(flag, type=tp, default=None, help=help_)


def build_config(args) -> FluidConfig:
    cfg = FluidConfig.load(args.config) if args.config else get_preset(args.preset)
    if args.variant:
        cfg = apply_overrides(
            cfg, {"model.token_type": args.variant.split("-")[0], "model.order": args.variant.split("-")[1]}
        )
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
