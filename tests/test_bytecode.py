"""The app ships its bytecode (scripts/compile_bytecode.py): a cold start in the read-only package imports
the app's modules from it instead of compiling them, and an edited source never runs as its stale bytecode."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compiler():
    spec = importlib.util.spec_from_file_location("compile_bytecode", ROOT / "scripts" / "compile_bytecode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path, targets) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    for name in targets:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, app)
    return app


def _import_verbose(app: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-v", "-c", code], cwd=app, env=env, capture_output=True, text=True,
                          check=True, timeout=120)


def test_a_cold_import_reads_every_app_module_from_the_shipped_bytecode(tmp_path):
    compiler = _compiler()
    app = _copy(tmp_path, compiler.TARGETS)
    assert compiler.compile_app(app)
    for pyc in app.rglob("*.pyc"):       # checked-hash (PEP 552 flags = 0b11): valid whatever the file times
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11, pyc
    # The package's file times are not the ones compiled against: still used.
    for source in app.rglob("*.py"):
        os.utime(source, (1, 1))
    for folder in [app, *app.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o555)        # read-only, as the mounted package is
    try:
        out = _import_verbose(app, "import function_app")
    finally:
        for folder in [app, *app.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)
    # python -v says where each module's code object came from: its bytecode, or its source compiled now.
    loaded = re.findall(r"^# code object from '?([^'\n]+?)'?$", out.stderr, re.MULTILINE)
    app_modules = [p for p in loaded if p.startswith(str(app))]
    assert len(app_modules) >= 20, out.stderr[-2000:]
    assert all(p.endswith(".pyc") for p in app_modules), [p for p in app_modules if not p.endswith(".pyc")]


def test_an_edited_source_is_compiled_again_not_run_from_stale_bytecode(tmp_path):
    compiler = _compiler()
    app = _copy(tmp_path, compiler.TARGETS)
    assert compiler.compile_app(app)
    settings = app / "shared" / "settings.py"
    settings.write_text(settings.read_text(encoding="utf-8") + "\nEDITED_AFTER_COMPILING = 1\n", encoding="utf-8")
    out = _import_verbose(app, "import shared.settings as s; print(s.EDITED_AFTER_COMPILING)")
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_azd_compiles_the_bytecode_before_packaging_and_the_package_keeps_it():
    doc = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    hook = doc["hooks"]["prepackage"]
    posix, windows = hook["posix"], hook["windows"]
    assert posix["shell"] == "sh" and windows["shell"] == "pwsh"
    assert posix.get("continueOnError") is False and windows.get("continueOnError") is False
    lines = [ln.strip() for ln in posix["run"].splitlines() if ln.strip()]
    assert "set -e" in lines and "scripts/compile_bytecode.py" in lines[-1]
    assert "scripts/compile_bytecode.py" in windows["run"] and "$LASTEXITCODE -ne 0" in windows["run"]
    ignored = [ln.strip() for ln in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()]
    assert not [p for p in ignored if "pycache" in p or p.endswith(".pyc") or p in ("*.py[cod]", "*.py[co]")]
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    step = deploy.index("python scripts/compile_bytecode.py")
    assert deploy.index('func azure functionapp publish "$APP"', step) - step < 200     # the command right after it


def test_the_script_warns_when_its_python_is_not_the_runtimes(tmp_path):
    compiler = _compiler()
    assert compiler.runtime_version() == "3.11"
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_bytecode.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if "%d.%d" % sys.version_info[:2] != "3.11":
        assert "will ignore this bytecode" in out.stderr
    else:
        assert out.stderr == "" and "checked-hash" in out.stdout
