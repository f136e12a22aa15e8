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


def test_azd_compiles_the_bytecode_before_every_packaging_and_goes_on_without_it():
    """A service-level prepackage hook (a project-level one does not run for azd deploy); optional: a machine
    without a suitable Python still deploys, without bytecode."""
    doc = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert "prepackage" not in (doc.get("hooks") or {})
    hook = doc["services"]["api"]["hooks"]["prepackage"]
    posix, windows = hook["posix"], hook["windows"]
    assert posix["shell"] == "sh" and windows["shell"] == "pwsh"
    assert posix.get("continueOnError") is True and windows.get("continueOnError") is True
    assert "scripts/compile_bytecode.py" in posix["run"] and "scripts/compile_bytecode.py" in windows["run"]
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    step = deploy.index("python scripts/compile_bytecode.py")
    assert deploy.index('func azure functionapp publish "$APP"', step) - step < 200     # the command right after it


def test_the_package_takes_only_the_apps_own_bytecode(tmp_path):
    """.funcignore read with gitignore's rules (git itself): the app's __pycache__ folders are uploaded, the
    tools' and tests' are not, and neither are local settings."""
    import subprocess as sp

    repo = tmp_path / "repo"
    paths = ["__pycache__/function_app.cpython-311.pyc", "functions/__pycache__/account.cpython-311.pyc",
             "shared/__pycache__/settings.cpython-311.pyc", "shared/flows/__pycache__/signin.cpython-311.pyc",
             "admin/__pycache__/cli.cpython-311.pyc", "scripts/__pycache__/smoke.cpython-311.pyc",
             "tests/__pycache__/conftest.cpython-311.pyc", "samples/extensions/__pycache__/app.cpython-311.pyc",
             "local.settings.json", "shared/settings.py"]
    for rel in paths:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    sp.run(["git", "init", "-q", str(repo)], check=True)
    out = sp.run(["git", "-C", str(repo), "ls-files", "--others", "--ignored",
                  f"--exclude-from={ROOT / '.funcignore'}"], capture_output=True, text=True, check=True).stdout
    ignored = set(out.split())
    assert ignored == {"admin/__pycache__/cli.cpython-311.pyc", "scripts/__pycache__/smoke.cpython-311.pyc",
                       "tests/__pycache__/conftest.cpython-311.pyc",
                       "samples/extensions/__pycache__/app.cpython-311.pyc", "local.settings.json"}, ignored


def _run_script(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_bytecode.py"), "--root", str(root)],
                          capture_output=True, text=True, timeout=120)


def test_the_script_leaves_nothing_of_a_deleted_module_and_no_build_paths(tmp_path, monkeypatch):
    """Bytecode keeps its source's constants: a module deleted since the last run must not ship as bytecode
    (second review). Also: paths in the bytecode are relative, and PYTHONPYCACHEPREFIX does not move it."""
    compiler = _compiler()
    app = _copy(tmp_path, (*compiler.TARGETS, "infra"))
    scratch = app / "shared" / "scratch_local.py"
    scratch.write_text('KEY = "not-a-real-secret-0123456789"\n')
    (app / "admin" / "__pycache__").mkdir(parents=True)
    (app / "admin" / "__pycache__" / "old.cpython-39.pyc").write_bytes(b"stale")
    assert _run_script(app).returncode == 0
    assert list((app / "shared" / "__pycache__").glob("scratch_local.*.pyc"))
    scratch.unlink()
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path / "elsewhere"))
    out = _run_script(app)
    assert out.returncode == 0, out.stderr
    everything = b"".join(p.read_bytes() for p in app.rglob("*.pyc"))
    assert b"not-a-real-secret" not in everything
    assert not (app / "admin" / "__pycache__").exists()
    if "%d.%d" % sys.version_info[:2] == compiler.runtime_version():
        assert list((app / "shared" / "__pycache__").glob("settings.*.pyc"))       # in the tree, not elsewhere
        assert str(tmp_path).encode() not in everything                          # no build machine's folders
        assert "checked-hash" in out.stdout


def test_another_python_version_writes_no_bytecode_and_does_not_fail(tmp_path):
    compiler = _compiler()
    app = _copy(tmp_path, (*compiler.TARGETS, "infra"))
    bicep = app / "infra" / "main.bicep"
    bicep.write_text(re.sub(r"var pythonVersion = '[0-9.]+'", "var pythonVersion = '3.99'",
                            bicep.read_text(encoding="utf-8")), encoding="utf-8")
    (app / "shared" / "__pycache__").mkdir(exist_ok=True)
    (app / "shared" / "__pycache__" / "settings.cpython-311.pyc").write_bytes(b"old")
    out = _run_script(app)
    assert out.returncode == 0 and "no bytecode written" in out.stderr and "3.99" in out.stderr
    assert not list(app.rglob("*.pyc"))
    assert compiler.runtime_version() == "3.11"
