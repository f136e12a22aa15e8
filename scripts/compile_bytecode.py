"""Compile the app's Python sources to bytecode before publishing it.

    python scripts/compile_bytecode.py

``azd deploy`` / ``azd up`` run it before packaging (azure.yaml, ``prepackage``); with Core Tools, run it
before ``func azure functionapp publish`` (docs/deploy.md).

Why: a Flex Consumption app runs from its package, read-only, so Python cannot write the bytecode it
compiles; without bytecode in the package, every cold start compiles every module of the app before the
first answer (bench/RESULTS.md, "cold import", measures the import both ways).

The bytecode is *checked-hash*: it is used whatever file times the package gives the sources, and it is
ignored as soon as a source differs from the one compiled (a module edited without compiling again is
compiled at import, as without this script; nothing stale ever runs). It is compiled by the interpreter
that runs this script, so run it with the Python version the Function App runs (``pythonVersion`` in
infra/main.bicep); bytecode of another version is ignored by the runtime, which the script says.
"""

from __future__ import annotations

import compileall
import py_compile
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("function_app.py", "functions", "shared")


def runtime_version() -> str | None:
    """The Python version infra/main.bicep deploys (``var pythonVersion = '3.11'``)."""
    bicep = ROOT / "infra" / "main.bicep"
    m = re.search(r"var\s+pythonVersion\s*=\s*'(\d+\.\d+)'", bicep.read_text(encoding="utf-8")) if bicep.exists() else None
    return m.group(1) if m else None


def compile_app(root: Path = ROOT) -> bool:
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    ok = True
    for name in TARGETS:
        path = root / name
        if path.is_dir():
            ok = compileall.compile_dir(str(path), quiet=1, force=True, invalidation_mode=mode) and ok
        else:
            ok = compileall.compile_file(str(path), quiet=1, force=True, invalidation_mode=mode) and ok
    return bool(ok)


def main() -> int:
    have = "%d.%d" % sys.version_info[:2]
    want = runtime_version()
    if want and have != want:
        print(f"compile_bytecode: this is Python {have}, the Function App runs {want}: its runtime will ignore this "
              f"bytecode and compile the sources at each cold start (run this script with Python {want})",
              file=sys.stderr)
    if not compile_app():
        print("compile_bytecode: a source did not compile (above)", file=sys.stderr)
        return 1
    print(f"compile_bytecode: {', '.join(TARGETS)} compiled for Python {have} (checked-hash)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
