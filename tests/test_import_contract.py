"""The import contract of the four packages, read from the source (AST) without importing it.

- Rooms one way: flows -> tasks -> (sam_core, stores). sam_core and stores import neither each other nor tasks
  or flows; tasks never import flows.
- No import cycle between project modules (every import counts, deferred ones too, so a deferred import cannot
  hide a circle).
- A project import sits at the top of its module, where a reader sees it, unless DEFERRED names it with the
  reason it must wait.
- `sam-engine --help` (importing flows.cli) loads none of the heavy optional packages (HEAVY); this one check
  imports, in a child process.

Each rule is proved able to fail on a synthetic source at the bottom of this file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sam_core", "stores", "tasks", "flows")
# What each room may import from the project besides itself.
MAY_IMPORT = {
    "flows": {"tasks", "sam_core", "stores"},
    "tasks": {"sam_core", "stores"},
    "sam_core": set(),
    "stores": set(),
}

# (importing module, imported project module): why the import waits until the function runs. Empty today: the
# heavy optional packages (ray, label_studio_sdk) are third-party and stay deferred where they are used, so every
# project module can sit at the top (importing all of them costs `sam-engine --help` about 0.2 s).
DEFERRED: dict[tuple[str, str], str] = {}
HEAVY = ("ray", "label_studio_sdk")  # never loaded by `sam-engine --help`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_sources() -> dict[str, tuple[str, bool]]:
    """{module name: (source, is a package __init__)} of every module of the four packages."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            sources[_module_name(path)] = (path.read_text(), path.name == "__init__.py")
    return sources


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The project modules an import statement names ("from pkg import sub" names pkg.sub when it is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
    found = []
    for name in names:
        # "import tasks.models" imports that module; "import tasks.models.x" where x is no module, its parent.
        while name and name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name.split(".")[0] in PACKAGES and name != module and name not in found:
            found.append(name)
    return found


def import_edges(sources: dict[str, tuple[str, bool]]) -> list[tuple[str, str, int, bool]]:
    """[(importer, imported, line, deferred)] of every project import; deferred: inside a function."""
    known = set(sources)
    edges = []
    for module, (text, is_package) in sources.items():

        def visit(node: ast.AST, deferred: bool, module=module, is_package=is_package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _imported(module, is_package, child, known):
                        edges.append((module, target, child.lineno, deferred))
                inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, deferred or inner)

        visit(ast.parse(text), False)
    return edges


def room_violations(edges) -> list[str]:
    out = []
    for source, target, line, _ in edges:
        room, other = source.split(".")[0], target.split(".")[0]
        if room != other and other not in MAY_IMPORT[room]:
            out.append(f"{source}:{line} imports {target}: {room} may not import {other}")
    return out


def cycles(edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def deferred_violations(edges, allowed) -> list[str]:
    return [
        f"{source}:{line} imports {target} inside a function; move it to the top or add it to DEFERRED with a reason"
        for source, target, line, deferred in edges
        if deferred and (source, target) not in allowed
    ]


def contract_violations(sources, allowed=None) -> list[str]:
    edges = import_edges(sources)
    out = room_violations(edges)
    out += [f"import cycle: {' <-> '.join(component)}" for component in cycles(edges)]
    out += deferred_violations(edges, DEFERRED if allowed is None else allowed)
    return out


def test_the_project_keeps_its_import_contract():
    assert contract_violations(project_sources()) == []


def test_every_deferred_import_in_the_allow_list_exists_and_says_why():
    deferred = {(s, t) for s, t, _, d in import_edges(project_sources()) if d}
    stale = sorted(set(DEFERRED) - deferred)
    assert stale == [], f"DEFERRED names imports that are no longer deferred: {stale}"
    assert all(reason.strip() for reason in DEFERRED.values())


def test_the_cli_starts_without_the_heavy_optional_packages():
    code = "import sys, flows.cli; print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))"
    out = subprocess.run(
        [sys.executable, "-c", code, *HEAVY], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


SYNTHETIC = {
    "stores.table": ("import tasks.job\n", False),  # upward
    "tasks.job": ("from flows import cli\n", False),  # upward
    "flows": ("", True),
    "flows.cli": ("def main():\n    from tasks.job import run\n", False),  # deferred, not allowed
    "sam_core.a": ("from . import b\n", False),  # a <-> b
    "sam_core.b": ("def f():\n    from sam_core.a import g\n", False),  # the circle's deferred half
    "sam_core.c": ("from stores.table import x\n", False),  # sideways
}


@pytest.mark.parametrize(
    "expected",
    [
        "stores.table:1 imports tasks.job: stores may not import tasks",
        "tasks.job:1 imports flows.cli: tasks may not import flows",
        "sam_core.c:1 imports stores.table: sam_core may not import stores",
        "import cycle: sam_core.a <-> sam_core.b",
        "flows.cli:2 imports tasks.job inside a function",
        "sam_core.b:2 imports sam_core.a inside a function",
    ],
)
def test_the_contract_catches_a_synthetic_violation(expected):
    found = contract_violations(SYNTHETIC, allowed={})
    assert any(line.startswith(expected) for line in found), found


def test_an_allowed_deferred_import_passes_but_an_upward_one_never_does():
    sources = {
        "tasks.job": ("def run():\n    import tasks.heavy\n", False),
        "tasks.heavy": ("", False),
        "sam_core.x": ("def f():\n    import tasks.job\n", False),
    }
    found = contract_violations(
        sources, allowed={("tasks.job", "tasks.heavy"): "why", ("sam_core.x", "tasks.job"): "why"}
    )
    assert found == ["sam_core.x:2 imports tasks.job: sam_core may not import tasks"]
