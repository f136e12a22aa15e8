"""The house rules of the layout (README "Layout"), checked on the source:
``shared/`` never imports ``azure.functions``, its modules import each other
without cycles (counting imports inside functions, which are often a way to
hide one), it stays grouped by concern, and ``functions/`` stays a thin
adapter over ``shared/``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"
PACKAGES = ("protocol", "flows", "security", "tokens", "delivery", "storage", "extensions")
MAX_MODULES_PER_PACKAGE = 12


def _name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_name(p, root): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(path: Path, root: Path, known: set[str]) -> set[str]:
    """Every module of ``root``'s package an import in the file names (``from a.b import c``
    names ``a.b.c`` when that is a module, else ``a.b``; relative imports resolved)."""
    here = _name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known}


def _graph(root: Path = SHARED) -> dict[str, set[str]]:
    modules = _modules(root)
    known = set(modules)
    return {name: _imports(path, root, known) - {name} for name, path in modules.items()}


def test_shared_never_imports_the_functions_runtime():
    offenders = []
    for path in SHARED.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
                {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if any(m.startswith("azure.functions") for m in names):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return cycles


def test_shared_has_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles in shared/: {sorted({' -> '.join(c) for c in cycles})[:5]}"


def test_the_cycle_check_sees_a_cycle(tmp_path):
    """The check above must be able to fail: two modules of different packages that import each other."""
    root = tmp_path / "shared"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "__init__.py").write_text("")
    (root / "a" / "__init__.py").write_text("")
    (root / "b" / "__init__.py").write_text("")
    (root / "a" / "x.py").write_text("from shared.b import y\n")
    (root / "b" / "y.py").write_text("def f():\n    from ..a.x import thing\n")
    graph = _graph(root)
    assert graph["shared.a.x"] == {"shared.b.y"} and graph["shared.b.y"] == {"shared.a.x"}
    assert _cycles(graph)


def test_shared_is_grouped_by_concern():
    """One package per concern, each small enough to find a rule in; nothing
    at the top level but the settings (DEVELOPERS.md: regroup by concern)."""
    top = sorted(p.stem for p in SHARED.glob("*.py") if p.stem != "__init__")
    assert top == ["settings"], top
    packages = sorted(p.name for p in SHARED.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert packages == sorted(PACKAGES), packages
    for package in PACKAGES:
        modules = [p.stem for p in (SHARED / package).glob("*.py") if p.stem != "__init__"]
        assert 1 <= len(modules) <= MAX_MODULES_PER_PACKAGE, (package, modules)
        assert (SHARED / package / "__init__.py").read_text().strip().startswith('"""'), package  # says what it holds
        assert not [p for p in (SHARED / package).iterdir() if p.is_dir() and p.name != "__pycache__"], package


def test_every_test_the_security_catalogue_names_exists():
    """SECURITY.md §7 maps each attack row to its test: a renamed or deleted test
    must not leave a row pointing at nothing."""
    import re
    names = set(re.findall(r"(test_[A-Za-z0-9_]+)`", (ROOT / "SECURITY.md").read_text()))
    assert len(names) > 100
    sources = "".join(p.read_text() for base in ("tests", "samples")
                      for p in (ROOT / base).rglob("test_*.py"))
    missing = sorted(n for n in names if not re.search(rf"def {re.escape(n)}\b", sources))
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"


def test_function_app_indexes_without_the_domain_and_every_handler_resolves():
    """Cold start: importing function_app (what the Functions worker does to
    index the functions) loads no flow, policy, token or delivery module;
    those load with the first request that needs them. So a handler named
    wrongly would only fail at its first request: each one must resolve."""
    import importlib
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import function_app, sys; "
                          "print('\\n'.join(m for m in sys.modules if m.startswith('shared.')))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    heavy = [m for m in out if m.split(".")[1] in ("flows", "security", "tokens", "delivery", "extensions")]
    assert not heavy, f"function_app imports domain modules at index time: {heavy}"
    import function_app  # noqa: F401
    from functions._http import LAZY

    assert len(LAZY) >= 25
    for module, attr in LAZY:
        assert callable(getattr(importlib.import_module(module), attr)), (module, attr)
