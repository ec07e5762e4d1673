"""Dependencies point one way: CLI -> planner <- runtime. Read from the source (every import statement,
lazy ones inside functions included), so a new import that breaks the layering fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """Every module `path` (in `package`) imports, lazy imports included: `from a import b` is a.b when
    that is one of `modules`, else a (a parent package is not counted for its submodules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & modules
            out |= subs if len(subs) == len(node.names) else subs | {base}
    return out


def _graph(top: str) -> dict[str, set[str]]:
    every = {_module_name(f) for d in ("planner", "runtime") for f in (ROOT / d).rglob("*.py")}
    modules = {_module_name(f): f for f in sorted((ROOT / top).rglob("*.py"))}

    def package(name: str, f: Path) -> str:
        return name if f.name == "__init__.py" else name.rpartition(".")[0]

    return {name: {m for m in _imports(f, package(name, f), every) if m.split(".")[0] in ("planner", "runtime")}
            for name, f in modules.items()}


def _offenders(graph: dict[str, set[str]], forbidden: tuple[str, ...], skip: tuple[str, ...] = ()) -> list[str]:
    return sorted(f"{mod} imports {dep}" for mod, deps in graph.items() if not mod.startswith(skip)
                  for dep in deps if dep == forbidden or dep.startswith(forbidden))


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from planner.search import solve, SolveRequest\nimport runtime.tiers\n"
                   "from .refine import polish_split\nfrom . import ilp\n")
    found = _imports(src, "planner.search", {"planner.search.solve", "planner.search.ilp"})
    assert found == {"planner.search", "planner.search.solve", "runtime.tiers", "planner.search.refine",
                     "planner.search.ilp"}


def test_runtime_never_imports_the_search_or_the_cli():
    assert _offenders(_graph("runtime"), ("planner.search", "planner.cli")) == []


def test_planner_outside_the_cli_never_imports_the_runtime():
    assert _offenders(_graph("planner"), ("runtime",), skip=("planner.cli",)) == []


def test_no_import_cycles_among_planner_modules():
    graph = _graph("planner")
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert cycles == []
