"""Follow one command through Fluid's modules and count what a reader passes.

Runs ``fluid train`` (a tiny ``debug`` run, one step) or ``fluid sample`` (one prompt, one
seed, the shipped model) in this process with a profiler hook on every Python call, from the
moment the command's own code starts (``fluid/commands/<name>.py``'s ``run``, once
``fluid/cli.py``'s ``cmd_<name>``) with its parsed arguments; a training walk stops at the
optimiser's first step. Module bodies and class bodies (imports) are not counted. It prints:

- **places**: the distinct functions of ``fluid`` called (each counted once), and the
  modules they are in;
- **climbs**: the distinct module -> module moves (by a call or a return) that land in a
  higher layer than the one they leave (``LAYERS`` of ``tests/test_architecture.py``): each is
  a place where a reader goes back up before going down again, so fewer means a straighter
  path (a loop that repeats a move counts it once);
- **entries**: how often control comes into a module from another one, for the modules
  entered most often.

    python scripts/walk.py train            # the table, then the places in call order
    python scripts/walk.py sample --json    # one JSON line

The counts depend on the code only (not the machine); ``docs/architecture.md`` quotes them.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layers() -> list[list[str]]:
    """The layer table of this checkout's architecture test, read without importing it."""
    tree = ast.parse((ROOT / "tests" / "test_architecture.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LAYERS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("tests/test_architecture.py has no LAYERS table")


def layer_of(module: str, table: list[list[str]]) -> int:
    """The layer of the longest package prefix of ``module`` in the table."""
    best, level = -1, -1
    for i, packages in enumerate(table):
        for p in packages:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    return level


def _optimizer_file(filename: str) -> bool:
    """A torch optimiser's module (not the LR schedulers', whose constructors call their own step)."""
    return "torch/optim/" in filename and "lr_scheduler" not in filename


def module_name(filename: str) -> str | None:
    path = Path(filename)
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    if rel.parts[0] != "fluid" or path.suffix != ".py":
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class Walk:
    def __init__(self, command: str, stop_at_optimizer: bool):
        self.table = layers()
        self.start = {(f"fluid.commands.{command}", "run"), ("fluid.cli", f"cmd_{command}")}
        self.started = False
        self.stop_at_optimizer = stop_at_optimizer
        self.places: dict[tuple[str, str], int] = {}  # (module, function) -> order of first call
        self.climbs: set[tuple[str, str]] = set()
        self.entries: Counter[str] = Counter()
        self.current: str | None = None  # the module control is in
        self.done = False
        self._names: dict[object, str | None] = {}

    def _module(self, code) -> str | None:
        if code not in self._names:
            self._names[code] = module_name(code.co_filename)
        return self._names[code]

    def _fluid_frame(self, frame):
        """The nearest frame at or above ``frame`` that runs a function of fluid."""
        while frame is not None and (
            self._module(frame.f_code) is None or not frame.f_code.co_flags & inspect.CO_OPTIMIZED
        ):
            frame = frame.f_back
        return frame

    def _move(self, module: str) -> None:
        if module == self.current:
            return
        if self.current is not None and layer_of(module, self.table) > layer_of(self.current, self.table):
            self.climbs.add((self.current, module))
        self.entries[module] += 1
        self.current = module

    def __call__(self, frame, event, arg):
        if self.done or event not in ("call", "return"):
            return
        code = frame.f_code
        if event == "call" and self.stop_at_optimizer and code.co_name == "step" and _optimizer_file(code.co_filename):
            self.done = True
            return
        module = self._module(code)
        if module is None or not code.co_flags & inspect.CO_OPTIMIZED:  # not fluid, or a module / class body
            return
        name = getattr(code, "co_qualname", code.co_name)
        if not self.started:
            if event != "call" or (module, name) not in self.start:
                return
            self.started = True
        if event == "return":  # back to the fluid function that called this one
            caller = self._fluid_frame(frame.f_back)
            if caller is not None:
                self._move(self._module(caller.f_code))
            return
        if name.rsplit(".", 1)[-1] not in ("<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>", "<lambda>"):
            self.places.setdefault((module, name), len(self.places))
        self._move(module)

    def summary(self, command: str) -> dict:
        modules = {m for m, _ in self.places}
        return {
            "command": command,
            "places": len(self.places),
            "modules": len(modules),
            "climbs": len(self.climbs),
            "most_entered": self.entries.most_common(5),
        }


def run(command: str) -> Walk:
    from fluid.cli import main

    with tempfile.TemporaryDirectory(prefix="fluid-walk-") as tmp:
        if command == "train":
            argv = ["train", "--preset", "debug", "--steps", "1", "--out", f"{tmp}/run", "--set", "train.val_every=0"]
        else:
            argv = ["sample", "--prompt", "a red circle", "--seeds", "0", "--out", f"{tmp}/samples"]
        walk = Walk(command, stop_at_optimizer=command == "train")
        sys.setprofile(walk)
        try:
            main(argv)
        except SystemExit:
            pass
        finally:
            sys.setprofile(None)
    return walk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["train", "sample"])
    p.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = p.parse_args(argv)
    walk = run(args.command)
    out = walk.summary(args.command)
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"fluid {args.command}: {out['places']} places in {out['modules']} modules, {out['climbs']} climbs; "
        f"most entered: {', '.join(f'{m} x{n}' for m, n in out['most_entered'])}"
    )
    for (module, name), _ in sorted(walk.places.items(), key=lambda kv: kv[1]):
        print(f"  {module}.{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
