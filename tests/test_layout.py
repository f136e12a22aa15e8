"""The house rules of the layout (README "Layout"), checked on the source:
``shared/`` never imports ``azure.functions``, its modules import each other
without cycles (counting imports inside functions, which are often a way to
hide one), and ``functions/`` stays a thin adapter over ``shared/``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"


def _imports(path: Path) -> set[str]:
    """Every module name an import in the file names (absolute, or shared.<x> for relative)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    out.add("shared." + node.module.split(".")[0])
                else:
                    out |= {"shared." + a.name for a in node.names}
            elif node.module:
                out.add(node.module)
                if node.module == "shared":
                    out |= {"shared." + a.name for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in SHARED.glob("*.py")}
    return {p.stem: {m.split(".")[1] for m in _imports(p) if m.startswith("shared.") and m.split(".")[1] in modules}
            for p in SHARED.glob("*.py")}


def test_shared_never_imports_the_functions_runtime():
    offenders = [p.name for p in SHARED.glob("*.py") if any(m.startswith("azure.functions") for m in _imports(p))]
    assert offenders == []


def test_shared_has_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, f"import cycles in shared/: {sorted({' -> '.join(c) for c in cycles})[:5]}"


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    """The check above must be able to fail: two modules that import each other."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(__import__(__name__), "SHARED", tmp_path)
    graph = _graph()
    assert graph == {"a": {"b"}, "b": {"a"}}


def test_shared_stays_one_flat_package_of_at_most_thirty_modules():
    modules = sorted(p.stem for p in SHARED.glob("*.py") if p.stem != "__init__")
    assert len(modules) <= 30, f"{len(modules)} modules: regroup shared/ by concern in one move (DEVELOPERS.md)"
    assert not [p for p in SHARED.iterdir() if p.is_dir() and p.name != "__pycache__"]
