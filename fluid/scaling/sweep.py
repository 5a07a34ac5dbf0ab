"""Sweeps: a set of training runs described once, as the product of named axes.

A sweep file (YAML) names a base (preset, variant, steps, config overrides), the axes whose
product gives the runs, and how every run is evaluated::

    name: fluid-ablation
    preset: shapes-small
    variant: continuous-random
    steps: 400
    set: {train.batch_size: 128, train.lr: 1.0e-3}
    axes:
      arm:                                   # value name -> what changes
        baseline: {}
        vlb-1: {model.vlb_weight: 1.0}
        raster: {variant: continuous-raster}
    eval: {metrics: [shapes_eval, shapes_fd, val_loss], prompts_per_family: 8, seeds: 2}

An axis is either a list of variant names (axis ``variant``) or a mapping from a value's name
to what it changes: config overrides (``section.key: value``) and the special keys
``preset``, ``variant`` and ``steps``. Runs are named by their axis values
(``arm=vlb-1``), so a run's folder says what it is. ``eval_steps`` lists the training steps
whose checkpoints are evaluated (default: the last only).

Named sweeps live beside this module (``fluid/scaling/sweeps/*.yaml``).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from fluid.config import FluidConfig, get_preset, parse_variant

SWEEPS_DIR = Path(__file__).resolve().parent / "sweeps"
SPECIAL = ("preset", "variant", "steps")


class SweepError(ValueError):
    """A sweep file that cannot be used."""


@dataclasses.dataclass
class RunSpec:
    """One run of a sweep: a full config and the axis values that name it."""

    name: str
    tags: dict[str, str]
    preset: str
    variant: str | None
    steps: int
    overrides: dict[str, Any]
    eval_steps: list[int]

    def config(self) -> FluidConfig:
        cfg = get_preset(self.preset, variant=self.variant, overrides=self.overrides or None)
        cfg.train.steps = self.steps
        return cfg


@dataclasses.dataclass
class Sweep:
    name: str
    description: str
    runs: list[RunSpec]
    eval: dict[str, Any]
    tokenizers: dict[str, str]
    """Token type (``continuous`` / ``discrete``) -> tokenizer folder; default: the shipped ones."""
    text_embeddings: str | None
    source: str | None = None

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise SweepError(f"no run {name!r} in sweep {self.name!r}; runs: {', '.join(r.name for r in self.runs)}")


def named_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def load_sweep(name_or_path: str | Path) -> Sweep:
    """A sweep by file path or by name (``fluid/scaling/sweeps/<name>.yaml``)."""
    path = Path(name_or_path)
    if not path.exists():
        path = SWEEPS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SweepError(
                f"no sweep file {name_or_path!r} and no named sweep of that name; "
                f"named sweeps: {', '.join(named_sweeps())}"
            )
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise SweepError(f"{path} must hold a mapping (name, preset, axes, ...)")
    sweep = parse_sweep(d, default_name=path.stem)
    sweep.source = str(path)
    return sweep


def _axis_values(axis: str, values) -> list[tuple[str, dict]]:
    """An axis as (value name, changes) pairs."""
    if isinstance(values, list):
        if axis not in ("variant", "preset", "steps"):
            raise SweepError(
                f"axis {axis!r}: a list is only allowed for variant, preset or steps; "
                f"give a mapping from value name to overrides"
            )
        return [(str(v), {axis: v}) for v in values]
    if not isinstance(values, dict) or not values:
        raise SweepError(f"axis {axis!r} must be a non-empty list or mapping")
    out = []
    for name, changes in values.items():
        changes = changes or {}
        if not isinstance(changes, dict):
            raise SweepError(f"axis {axis!r}, value {name!r}: expected a mapping of overrides, got {changes!r}")
        out.append((str(name), changes))
    return out


def _run_name(tags: dict[str, str]) -> str:
    name = ",".join(f"{k}={v}" for k, v in tags.items()) or "run"
    return re.sub(r"[^A-Za-z0-9=,._-]", "_", name)


def parse_sweep(d: dict, default_name: str = "sweep") -> Sweep:
    known = {
        "name",
        "description",
        "preset",
        "variant",
        "steps",
        "set",
        "axes",
        "eval",
        "eval_steps",
        "tokenizers",
        "text_embeddings",
    }
    unknown = set(d) - known
    if unknown:
        raise SweepError(f"unknown sweep key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    base_set = dict(d.get("set") or {})
    axes = d.get("axes") or {}
    if not isinstance(axes, dict):
        raise SweepError("axes must be a mapping from axis name to values")
    expanded = [[(axis, name, ch) for name, ch in _axis_values(axis, vals)] for axis, vals in axes.items()]
    runs = []
    for combo in itertools.product(*expanded) if expanded else [()]:
        spec = {"preset": d.get("preset", "shapes-small"), "variant": d.get("variant"), "steps": d.get("steps")}
        overrides = dict(base_set)
        tags = {}
        for axis, name, changes in combo:
            tags[axis] = name
            for k, v in changes.items():
                if k in SPECIAL:
                    spec[k] = v
                else:
                    overrides[k] = v
        if spec["variant"] is not None:
            parse_variant(str(spec["variant"]))
        preset_steps = get_preset(spec["preset"]).train.steps
        steps = int(spec["steps"] or preset_steps)
        eval_steps = sorted({int(s) for s in (d.get("eval_steps") or []) if 0 < int(s) <= steps} | {steps})
        run = RunSpec(_run_name(tags), tags, spec["preset"], spec["variant"], steps, overrides, eval_steps)
        try:
            run.config()  # fail now, not after an hour of other runs
        except ValueError as e:
            raise SweepError(f"run {run.name}: {e}") from None
        runs.append(run)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SweepError("two runs have the same name; give axis values distinct names")
    return Sweep(
        name=str(d.get("name", default_name)),
        description=str(d.get("description", "")).strip(),
        runs=runs,
        eval=dict(d.get("eval") or {}),
        tokenizers=dict(d.get("tokenizers") or {}),
        text_embeddings=d.get("text_embeddings"),
    )
