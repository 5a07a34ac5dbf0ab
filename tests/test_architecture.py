"""The layout's rules, read from the source with ``ast`` (nothing is imported):

- no import cycle between modules of ``fluid``;
- every import runs down the layers below (or stays inside its own package);
- no old module path is kept working: no module of ``fluid`` defines a module-level
  ``__getattr__`` (names forwarded from their old home) or imports ``fluid.moved``.

Imports inside functions count like top-level ones. One kind does not: those under
``if TYPE_CHECKING:`` (annotations only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import its own package and any package of a lower layer;
# packages of one layer do not import each other. docs/architecture.md explains each.
LAYERS = [
    ["fluid.runtime"],  # what the machine is: CPU model, native bf16, threads
    ["fluid", "fluid.config", "fluid.files", "fluid.diffusion"],  # foundation: plain data and math
    ["fluid.assets"],  # where the shipped weights are
    ["fluid.model", "fluid.text", "fluid.tokenizers"],  # the parts of the method
    ["fluid.shapes"],  # the built-in world: scenes, captions, renderer, dataset
    ["fluid.shapes.eval"],  # reading it back: detector, classifier, shapes_fd features, ShapesEval
    ["fluid.data", "fluid.checkpoint"],  # sources, caches, training streams; checkpoint folders
    ["fluid.train"],  # trainers, checkpoints, validation loss
    ["fluid.sample"],  # prompts -> images
    ["fluid.eval"],  # metrics and reports over samples
    ["fluid.scaling", "fluid.serve"],  # studies over many runs; the web demo
    ["fluid.commands"],  # one module per command: its flags and its work
    ["fluid.cli"],  # `fluid <command>`: the parser from the commands, the dispatch
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
    return skip


def _walk(node: ast.AST, skip: set[int]):
    for child in ast.iter_child_nodes(node):
        if id(child) in skip:
            continue
        yield child
        yield from _walk(child, skip)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` reads from (``package``: the importer's)."""
    base = node.module or ""
    if node.level:
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
    return base


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
            base = _absolute(node, package)
            # `from pkg import sub` depends on pkg.sub when sub is a module, else on pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names]
        for t in targets:
            if t and t != name and t.split(".")[0] == "fluid":
                found.setdefault(t, node.lineno)
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    modules = module_files(root)
    return {name: imports(name, path, modules) for name, path in modules.items()}


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


def _module_level(body: list[ast.stmt]):
    """The statements that run at import time: the body, and inside its if / try / with
    blocks (not inside functions or classes)."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _module_level(getattr(node, field, []))
        for handler in getattr(node, "handlers", []):
            yield from _module_level(handler.body)


def old_path_keepers(modules: dict[str, Path]) -> list[str]:
    """Code that keeps an old path or name working: a module-level ``__getattr__`` (defined
    or assigned) and any import of ``fluid.moved``, anywhere in a module."""
    bad = []
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for node in _module_level(tree.body):
            defined = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__"
            assigned = isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and any(
                isinstance(t, ast.Name) and t.id == "__getattr__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
            if defined or assigned:
                bad.append(f"{where}:{node.lineno}: {name} defines a module-level __getattr__")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            if any(t == "fluid.moved" or t.startswith("fluid.moved.") for t in targets):
                bad.append(f"{where}:{node.lineno}: {name} imports fluid.moved")
    return bad


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


def test_no_old_path_is_kept_working():
    # Nothing was released: code that moves takes every import with it, and no module
    # forwards names from an old home (module-level __getattr__) or uses a table of moved paths.
    bad = old_path_keepers(module_files())
    assert not bad, "import the new home directly:\n" + "\n".join(bad)


def test_the_old_path_check_catches_a_getattr_and_a_moved_import(tmp_path):
    (tmp_path / "fluid" / "text").mkdir(parents=True)
    sources = {
        "fluid.text.old": "def __getattr__(name):\n    raise AttributeError(name)\n",
        "fluid.text.later": "import sys\nif sys:\n    __getattr__ = print\n",
        "fluid.text.uses": "def f():\n    from fluid.moved import alias\n",
        "fluid.text.relative": "from .. import moved\n",
        "fluid.text.fine": "class A:\n    def __getattr__(self, name):\n        return name\n",
    }
    files = {}
    for name, source in sources.items():
        files[name] = tmp_path / (name.replace(".", "/") + ".py")
        files[name].write_text(source)
    assert [v.split(": ", 1)[1] for v in old_path_keepers(files)] == [
        "fluid.text.later defines a module-level __getattr__",
        "fluid.text.old defines a module-level __getattr__",
        "fluid.text.relative imports fluid.moved",
        "fluid.text.uses imports fluid.moved",
    ]


def test_the_checks_catch_a_cycle_and_an_upward_import():
    # A hand-made graph: model imports train (upward) and two data modules import each other.
    fake = {
        "fluid.model.x": {"fluid.train.y": 3},
        "fluid.train.y": {},
        "fluid.data.a": {"fluid.data.b": 1},
        "fluid.data.b": {"fluid.data.a": 1},
    }
    files = {m: ROOT / "fluid" / (m.split(".", 1)[1].replace(".", "/") + ".py") for m in fake}
    assert cycles(fake) == [["fluid.data.a", "fluid.data.b"]]
    assert [v.split(": ", 1)[1] for v in layering_violations(fake, files)] == [
        "fluid.model.x (layer 3, fluid.model) imports fluid.train.y (layer 7, fluid.train)"
    ]


def test_files_stay_short_or_say_why():
    # Practice 12: a file over ~400 lines states at its top why it is one file.
    long = []
    for path in module_files().values():
        text = path.read_text()
        if text.count("\n") > 420 and "One file because" not in text[:2000]:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not long, "split by idea, or say at the top why not:\n" + "\n".join(long)
