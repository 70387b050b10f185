"""The import graph, measured from the source: no cycles, and no layer imports one above it (DESIGN.md).

Every ``import``/``from ... import`` of an ``agentrl`` module anywhere in a module (top level or
inside a function: a lazy import is still a dependency) is an edge. Layers, bottom to top:

    errors                             agentrl's error types (they import nothing)
    kernels, sandboxes                 know nothing of agentrl but its error types
    core, registry, trajectory, ...    the env contract and the records every part shares
    environments                       benchmarks: import only the layers below
    algorithms                         pure functions: know nothing of environments, policies or training
    policies, agents, rollout, store   the data plane
    training, distributed, retroformer, evaluation, recipes
    cli                                the top: nothing imports it
"""

from __future__ import annotations

import ast
from pathlib import Path

import agentrl

ROOT = Path(agentrl.__file__).resolve().parent.parent
FOLDERS = {"agentrl": "agentrl", "environments": "agentrl.environments", "sandboxes": "agentrl.sandboxes",
           "kernels": "agentrl.kernels", "recipes": "agentrl.recipes"}  # fmt: skip


def module_files() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if folder == "agentrl" and parts[0] in ("environments", "sandboxes", "kernels", "recipes"):
                continue
            if "migrations" in parts:  # Alembic scripts: the schema's history, loaded by Alembic only
                continue
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """agentrl modules ``name`` imports (a package import counts as its ``__init__``)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            # ``from pkg import sub`` depends on the submodule; ``from pkg import name`` on the package
            # (parent packages initialise on every import, so they are not counted as edges otherwise)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imports(name, path, known) for name, path in files.items()}


LAYERS = [
    ("errors", ["agentrl.errors"]),
    ("kernels", ["agentrl.kernels"]),
    ("sandboxes", ["agentrl.sandboxes"]),
    ("contract", ["agentrl.core", "agentrl.registry", "agentrl.checker", "agentrl.trajectory", "agentrl.config", "agentrl.provenance",
                  "agentrl.interrupts", "agentrl.progress",
                  "agentrl.testing", "agentrl.plotting", "agentrl"]),
    ("environments", ["agentrl.environments"]),
    ("algorithms", ["agentrl.algorithms"]),
    ("data plane", ["agentrl.policies", "agentrl.agents", "agentrl.rollout", "agentrl.store"]),
    ("learning", ["agentrl.training", "agentrl.distributed", "agentrl.retroformer", "agentrl.evaluation", "agentrl.viewer",
                  "agentrl.recipes", "agentrl.envserver", "agentrl.remote"]),
    ("cli", ["agentrl.cli"]),
]  # fmt: skip
#: Layers that import nothing of agentrl but themselves and the error types (``agentrl.errors``).
MAY_NOT_IMPORT = {
    "kernels": "everything else in agentrl",
    "sandboxes": "everything else in agentrl",
}


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    # ``agentrl/__init__`` re-exports the contract; its submodules importing ``agentrl`` itself is not a cycle of code
    cycles = [c for c in cycles if "agentrl" not in c]
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_upward_imports():
    edges = graph()
    upward = []
    for module, targets in sorted(edges.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if LAYERS[mine][0] in MAY_NOT_IMPORT and target.split(".")[:2] != module.split(".")[:2] and theirs > 0:
                upward.append(f"{module} -> {target} ({LAYERS[mine][0]} imports nothing else of agentrl)")
            elif theirs > mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) -> {target} ({LAYERS[theirs][0]})")
    assert upward == [], "imports that go up a layer:\n" + "\n".join(upward)


def test_the_graph_is_measured():
    """The measurement itself: known edges are found (a parser that found nothing would pass the checks above)."""
    edges = graph()
    assert "agentrl.trajectory" in edges["agentrl.training.batch"]
    assert "agentrl.core" in edges["agentrl.environments.textworld.env"]
    assert "agentrl.algorithms.registry" in edges["agentrl.algorithms.empg"]  # a relative-free, in-package edge
    assert len(edges) > 100
