"""The layout's rules, read from the source with ``ast`` (nothing is imported):

- no import cycle between modules of ``fluid``;
- every import runs down the layers below (or stays inside its own package);
- no module of ``fluid`` imports an old, deprecated module path (``fluid/moved.py``).

Imports inside functions count like top-level ones. Two kinds do not: those under
``if TYPE_CHECKING:`` (annotations only, never run), and those inside a module-level
``__getattr__`` (a deprecated name re-exported for one release, resolved on first use).
The modules that stand for moved paths (``fluid.moved.MOVED``) are skipped too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fluid.moved import MOVED

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import its own package and any package of a lower layer;
# packages of one layer do not import each other. docs/architecture.md explains each.
LAYERS = [
    ["fluid", "fluid.config", "fluid.files", "fluid.diffusion", "fluid.moved"],  # foundation: plain data and math
    ["fluid.assets"],  # where the shipped weights are
    ["fluid.model", "fluid.text", "fluid.tokenizers"],  # the parts of the method
    ["fluid.shapes"],  # the built-in world: scenes, captions, renderer, its readers, ShapesEval
    ["fluid.data"],  # sources, caches, training streams
    ["fluid.train"],  # trainers, checkpoints, validation loss
    ["fluid.sample"],  # prompts -> images
    ["fluid.eval"],  # metrics and reports over samples
    ["fluid.scaling", "fluid.serve"],  # studies over many runs; the web demo
    ["fluid.cli"],  # `fluid <command>`
]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted((root / "fluid").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _skipped_blocks(tree: ast.Module) -> set[int]:
    """ids of the nodes whose imports do not count (see the module docstring)."""
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.add(id(node))
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skip.add(id(node))
    return skip


def _walk(node: ast.AST, skip: set[int]):
    for child in ast.iter_child_nodes(node):
        if id(child) in skip:
            continue
        yield child
        yield from _walk(child, skip)


def imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The ``fluid`` modules that module ``name`` imports -> line of the first such import."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(target: str) -> str | None:  # the module a dotted name lives in
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found: dict[str, int] = {}
    for node in _walk(tree, _skipped_blocks(tree)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [known(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import sub` depends on pkg.sub when sub is a module, else on pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names]
        for t in targets:
            if t and t != name and t.split(".")[0] == "fluid":
                found.setdefault(t, node.lineno)
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    modules = module_files(root)
    return {name: imports(name, path, modules) for name, path in modules.items() if name not in MOVED}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, package) of a module: the longest package prefix named in LAYERS."""
    best = None
    for i, layer in enumerate(LAYERS):
        for package in layer:
            inside = module == package or (package != "fluid" and module.startswith(package + "."))
            if inside and (best is None or len(package) > len(best[1])):
                best = (i, package)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and docs/architecture.md)")
    return best


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layering_violations(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        here, own = layer_of(module)
        for target, line in sorted(targets.items()):
            there, other = layer_of(target)
            if other == own or there < here:
                continue
            where = f"{modules[module].relative_to(ROOT)}:{line}"
            bad.append(f"{where}: {module} (layer {here}, {own}) imports {target} (layer {there}, {other})")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_run_down_the_layers(graph):
    bad = layering_violations(graph, module_files())
    assert not bad, "imports against the layering (tests/test_architecture.py LAYERS):\n" + "\n".join(bad)


def test_nothing_imports_a_moved_path(graph):
    users = [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in targets if t in MOVED]
    assert not users, "use the new paths (fluid/moved.py):\n" + "\n".join(users)


def test_every_moved_path_stands_for_its_new_home():
    import importlib
    import warnings

    for old, new in MOVED.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        if isinstance(new, str):
            assert module is importlib.import_module(new), old
        else:  # split: every public name of every part
            for part in map(importlib.import_module, new):
                assert all(getattr(module, n) is v for n, v in vars(part).items() if not n.startswith("_")), (old, part)
        assert caught == [] or any(issubclass(w.category, DeprecationWarning) for w in caught), old


def test_the_checks_catch_a_cycle_and_an_upward_import():
    # A hand-made graph: model imports train (upward) and two data modules import each other.
    fake = {"fluid.model.x": {"fluid.train.y": 3}, "fluid.train.y": {},
            "fluid.data.a": {"fluid.data.b": 1}, "fluid.data.b": {"fluid.data.a": 1}}
    files = {m: ROOT / "fluid" / (m.split(".", 1)[1].replace(".", "/") + ".py") for m in fake}
    assert cycles(fake) == [["fluid.data.a", "fluid.data.b"]]
    assert [v.split(": ", 1)[1] for v in layering_violations(fake, files)] == [
        "fluid.model.x (layer 2, fluid.model) imports fluid.train.y (layer 5, fluid.train)"]


def test_files_stay_short_or_say_why():
    # Practice 12: a file over ~400 lines states at its top why it is one file.
    long = []
    for path in module_files().values():
        text = path.read_text()
        if text.count("\n") > 420 and "One file because" not in text[:2000]:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not long, "split by idea, or say at the top why not:\n" + "\n".join(long)
