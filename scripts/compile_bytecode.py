"""Compile the app's Python sources to bytecode before publishing it.

    python scripts/compile_bytecode.py [--root DIR]

``azd package`` / ``deploy`` / ``up`` run it before every packaging (azure.yaml, the service's ``prepackage``
hook); with Core Tools, run it before ``func azure functionapp publish`` (docs/deploy.md).

Why: a Flex Consumption app runs from its package, read-only, so Python cannot write the bytecode it
compiles; without bytecode in the package, every cold start compiles every module of the app before the
first answer (bench/RESULTS.md, "cold import", measures the import both ways).

What it does:

* removes every ``__pycache__`` folder of the checkout (not of ``.venv`` or ``node_modules``) first, so that
  nothing is left of a module deleted since (bytecode keeps the constants of its source) and nothing of
  another Python version; ``.funcignore`` uploads only the app's own ``__pycache__`` folders anyway;
* compiles ``function_app.py``, ``functions/`` and ``shared/`` as *checked-hash* bytecode: used whatever file
  times the package gives the sources, ignored as soon as a source differs from the one compiled (a module
  edited without compiling again is compiled at import, as without this script; nothing stale runs), with
  paths relative to the checkout (no build machine's folders in the package);
* only with the Python version the Function App runs (``pythonVersion`` in infra/main.bicep): with another
  one it says so and leaves no bytecode (the runtime would ignore it), and publishing goes on without it.
"""

from __future__ import annotations

import argparse
import compileall
import py_compile
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("function_app.py", "functions", "shared")
KEEP = {".venv", "node_modules", ".git"}      # caches that are not the checkout's own


def runtime_version(root: Path = ROOT) -> str | None:
    """The Python version infra/main.bicep deploys (``var pythonVersion = '3.11'``)."""
    bicep = root / "infra" / "main.bicep"
    if not bicep.exists():
        bicep = ROOT / "infra" / "main.bicep"
    m = re.search(r"var\s+pythonVersion\s*=\s*'(\d+\.\d+)'", bicep.read_text(encoding="utf-8")) if bicep.exists() else None
    return m.group(1) if m else None


def clean(root: Path = ROOT) -> int:
    """Remove the checkout's ``__pycache__`` folders; returns how many."""
    import os

    found = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if d not in KEEP]
        if "__pycache__" in dirs:
            found.append(Path(folder) / "__pycache__")
            dirs.remove("__pycache__")
    for folder in found:
        shutil.rmtree(folder, ignore_errors=True)
    return len(found)


def compile_app(root: Path = ROOT) -> bool:
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    previous, sys.pycache_prefix = sys.pycache_prefix, None     # in the tree, where the package takes it
    try:
        ok = True
        for name in TARGETS:
            path = root / name
            options = dict(quiet=1, force=True, invalidation_mode=mode, stripdir=str(root))
            if path.is_dir():
                ok = compileall.compile_dir(str(path), **options) and ok
            else:
                ok = compileall.compile_file(str(path), **options) and ok
        return bool(ok)
    finally:
        sys.pycache_prefix = previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to compile (default: this one)")
    root = parser.parse_args(argv).root.resolve()
    removed = clean(root)
    have = "%d.%d" % sys.version_info[:2]
    want = runtime_version(root)
    if want and have != want:
        print(f"compile_bytecode: this is Python {have}, the Function App runs {want}: no bytecode written (the "
              f"runtime would ignore it), so each cold start compiles the sources; run this script with Python "
              f"{want} to ship it", file=sys.stderr)
        return 0
    if not compile_app(root):
        print("compile_bytecode: a source did not compile (above)", file=sys.stderr)
        return 1
    print(f"compile_bytecode: {', '.join(TARGETS)} compiled for Python {have} (checked-hash); "
          f"{removed} old __pycache__ folders removed first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
