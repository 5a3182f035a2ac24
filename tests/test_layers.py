"""The package imports downward only and has no import cycle (issue 19).

Every module of ``innerloop/`` is parsed (nothing is imported): module-level, function-local and
``TYPE_CHECKING`` imports all count, relative imports are resolved, and ``from X import name`` points at
the module ``X.name`` when there is one (``from . import _common`` imports ``_common``, not the package).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "innerloop"

# Lowest first: a module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("innerloop._version", "innerloop.errors", "innerloop.validate", "innerloop.stats", "innerloop.presets"),
    ("innerloop.core", "innerloop.tasks", "innerloop.models", "innerloop.data"),
    ("innerloop.algorithms", "innerloop.unroll"),  # unroll: meta-trains update rules (core, tasks, models, data)
    ("innerloop.rl",),
    ("innerloop.registry",),  # the entries of algorithms, networks, task families, update rules (read by training)
    ("innerloop.training",),
    ("innerloop.plots", "innerloop.demo", "innerloop.analysis"),  # analysis reads checkpoints via training
    ("innerloop.cli", "innerloop.__main__"),
    ("innerloop",),  # the root package: the public API, built from the layers below
]
ROOT_IMPORTERS = ("innerloop.cli", "innerloop.__main__")  # besides the root itself, only these may import it


def modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file, for every ``.py`` under ``package`` (a package is named by its ``__init__.py``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(package: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over the modules of ``package``, every import statement included."""
    known = modules(package)
    top = package.name
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges: dict[str, int] = {}
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in known else source)
            for target in targets:
                if target == top or target.startswith(top + "."):
                    assert target in known, f"{path}:{node.lineno} imports {target}, which is no module of {top}/"
                    if target != name:
                        edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """``a (line) -> b (line) -> ...``: the imports that hold one component together."""
    members = set(component)
    return "; ".join(f"{a}:{line} -> {b}" for a in component for b, line in graph[a].items() if b in members)


def layer(name: str) -> int:
    """The index in :data:`LAYERS` of a module (the root room ``innerloop`` holds only the root package)."""
    for i, rooms in enumerate(LAYERS):
        if any(name == room or (room != "innerloop" and name.startswith(room + ".")) for room in rooms):
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in {Path(__file__).name}")


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Each import of a higher layer, and of the root package by anything but the root and the CLI."""
    bad = []
    for name, edges in sorted(graph.items()):
        own = layer(name)  # every module has a layer, importing or not
        for target, line in sorted(edges.items()):
            if target == "innerloop":
                if not (name == "innerloop" or name.startswith(ROOT_IMPORTERS)):
                    bad.append(f"{name}:{line} imports the root package innerloop (import the module that defines it)")
            elif layer(target) > own:
                bad.append(f"{name}:{line} imports {target}, a higher layer")
    return bad


def test_innerloop_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    found = [describe_cycle(graph, c) for c in cycles(graph)]
    assert not found, "import cycles (move what both sides need into a module below them):\n" + "\n".join(found)


def test_innerloop_imports_downward_only():
    """core, tasks, models, data <- algorithms <- rl <- training <- cli; only the root and the CLI import the root."""
    assert upward_imports(import_graph(PACKAGE)) == []


MAX_LINES = 400  # issue 19: a module that outgrows this is split by job


def long_modules(package: Path, limit: int = MAX_LINES) -> list[str]:
    """``path (N lines)`` for every module of ``package`` longer than ``limit`` lines."""
    counts = {path: len(path.read_text().splitlines()) for path in sorted(package.rglob("*.py"))}
    return [f"{p.relative_to(package.parent)} ({n} lines)" for p, n in counts.items() if n > limit]


def test_no_module_of_innerloop_exceeds_400_lines():
    found = long_modules(PACKAGE)
    assert not found, f"split these modules by job (at most {MAX_LINES} lines each): " + ", ".join(found)


def test_the_line_count_sees_a_long_module(tmp_path):
    package = _write(tmp_path, {"__init__.py": "", "core/__init__.py": "", "core/long.py": "x = 1\n" * 401})
    (package / "core" / "short.py").write_text("x = 1\n" * 400)
    assert long_modules(package) == ["innerloop/core/long.py (401 lines)"]


def named_families(folder: Path, names: set[str]) -> list[str]:
    """``file:line 'literal'`` for each string literal under ``folder`` that is one of ``names``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    return found


def test_the_cli_names_no_algorithm_task_family_or_class():
    """The CLI asks the registry (a task family's kind, whether it draws trajectories), never compares names."""
    from innerloop import registry

    classes = {
        n.name for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ClassDef)
    }
    names = set(registry.algorithms()) | set(registry.task_families()) | set(registry.models()) | classes
    assert named_families(PACKAGE / "cli", names) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "innerloop" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "innerloop"


def test_the_checker_sees_local_type_checking_and_relative_imports(tmp_path):
    """On a made-up package: each kind of import is an edge to the right module, so the tests above can fail."""
    package = _write(
        tmp_path,
        {
            "__init__.py": "from .algorithms import maml\n",
            "core/__init__.py": "",
            "core/engine.py": "def f():\n    from ..training import trainer\n",  # function-local, upward, a cycle
            "algorithms/__init__.py": "",
            "algorithms/maml.py": "from . import base\nfrom ..core.engine import f\n",
            "algorithms/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .maml import X\n",
            "training/__init__.py": "",
            "training/trainer.py": "import innerloop.core.engine\n",
            "rl/__init__.py": "from ..training.trainer import Trainer\nfrom innerloop import __version__\n",
        },
    )
    graph = import_graph(package)
    assert graph["innerloop.algorithms.maml"] == {"innerloop.algorithms.base": 1, "innerloop.core.engine": 2}
    assert graph["innerloop.algorithms.base"] == {"innerloop.algorithms.maml": 3}
    assert graph["innerloop.core.engine"] == {"innerloop.training.trainer": 2}
    assert graph["innerloop.training.trainer"] == {"innerloop.core.engine": 1}
    assert graph["innerloop.rl"] == {"innerloop.training.trainer": 1, "innerloop": 2}
    assert cycles(graph) == [
        ["innerloop.algorithms.base", "innerloop.algorithms.maml"],
        ["innerloop.core.engine", "innerloop.training.trainer"],
    ]
    assert upward_imports(graph) == [
        "innerloop.core.engine:2 imports innerloop.training.trainer, a higher layer",
        "innerloop.rl:2 imports the root package innerloop (import the module that defines it)",
        "innerloop.rl:1 imports innerloop.training.trainer, a higher layer",
    ]
