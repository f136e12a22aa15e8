#!/usr/bin/env python3
"""azd postdeploy hook (azure.yaml -> hooks.postdeploy): smoke-test the deployed API.

azd runs this after every `azd deploy` / `azd up`, from the project root, with the
azd environment (.azure/<env>/.env) in the process environment: the Bicep outputs
of infra/main.bicep (API_BASE_URL = https://<app host>/api, the issuer) plus the
values set with `azd env set`:

    SMOKE_ADMIN_KEY      optional: the Function App's admin key; scripts/smoke.py then
                         shows the readiness report (/health/detail) first. Read by
                         smoke.py from the environment, never put on a command line.
    SMOKE_USERNAME       optional: a test account. Set, the full sign-in runs
    SMOKE_PASSWORD         (second factor, ID-token signature, refresh) with the
    SMOKE_CLIENT_ID        client registered with `python -m admin clients add`.
    SMOKE_REGISTER_PHONE / SMOKE_REGISTER_EMAIL
                         optional: when a policy makes the account register a method.
    SMOKE_WAIT_SECONDS   how long to wait for /health to answer 200 first (default 180;
                         a fresh deployment may still be starting).

Without SMOKE_USERNAME the anonymous part runs (`--readiness-only`: readiness when an
admin key is given, health, discovery, JWKS), which needs no account, so a first
`azd up` is checked too. Any failure exits non-zero, and azd stops with "failed
running post hooks" (continueOnError is false in azure.yaml).

The password goes to scripts/smoke.py on its standard input (--password-stdin), never
on a command line; later terminal lines (one-time codes, which smoke.py asks for when
the account has a second factor) are passed through, which is why the hook is
`interactive: true`. Standard library only; scripts/smoke.py itself needs PyJWT
(requirements.txt), so azure.yaml runs this with the project's .venv when it exists.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts" / "smoke.py"
PREFIX = "postdeploy smoke test:"


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def fail(message: str) -> int:
    print(f"{PREFIX} FAILED - {message}", file=sys.stderr, flush=True)
    return 1


def wait_for_health(base_url: str, seconds: float) -> bool:
    """Poll <base>/health until it answers 200."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=15) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))


def supports_readiness_only() -> bool:
    try:
        return "--readiness-only" in SMOKE.read_text(encoding="utf-8")
    except OSError:
        return False


def run_smoke(args: list[str], env: dict[str, str], password: str | None = None) -> int:
    cmd = [sys.executable, str(SMOKE), *args]
    if password is None:
        return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdin is not None
    proc.stdin.write(password + "\n")
    proc.stdin.flush()

    def forward_terminal() -> None:
        # Codes typed at the terminal go on to smoke.py; at the end of input (no
        # terminal, e.g. CI) its stdin is closed, so a code prompt fails instead of hanging.
        try:
            for line in sys.stdin:
                proc.stdin.write(line)
                proc.stdin.flush()
        except (OSError, ValueError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    threading.Thread(target=forward_terminal, daemon=True).start()
    return proc.wait()


def main(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    base_url = env.get("API_BASE_URL", "").strip().rstrip("/")
    if not base_url:
        return fail("API_BASE_URL is not set: it is an output of infra/main.bicep (run azd provision first)")
    username = env.get("SMOKE_USERNAME", "").strip()
    args = ["--base-url", base_url]
    password = None
    if username:
        client_id = env.get("SMOKE_CLIENT_ID", "").strip()
        if not client_id:
            return fail("SMOKE_USERNAME is set but SMOKE_CLIENT_ID is not (a client registered with "
                        "python -m admin clients add)")
        password = env.get("SMOKE_PASSWORD", "")
        if not password:
            return fail("SMOKE_USERNAME is set but SMOKE_PASSWORD is not")
        args += ["--client-id", client_id, "--username", username, "--password-stdin"]
        for name, flag in (("SMOKE_REGISTER_PHONE", "--register-phone"), ("SMOKE_REGISTER_EMAIL", "--register-email")):
            if env.get(name, "").strip():
                args += [flag, env[name].strip()]
    elif supports_readiness_only():
        args.append("--readiness-only")
        say("no test account (SMOKE_USERNAME): anonymous checks only; set SMOKE_CLIENT_ID, SMOKE_USERNAME and "
            "SMOKE_PASSWORD with azd env set for the full sign-in")
    else:
        say("skipped: SMOKE_USERNAME is not set and scripts/smoke.py has no --readiness-only mode; set "
            "SMOKE_CLIENT_ID, SMOKE_USERNAME and SMOKE_PASSWORD with azd env set to run it")
        return 0

    try:
        wait = float(env.get("SMOKE_WAIT_SECONDS", "").strip() or 180)
    except ValueError:
        return fail(f"SMOKE_WAIT_SECONDS must be a number of seconds, got {env['SMOKE_WAIT_SECONDS']!r}")
    say(f"waiting up to {wait:.0f}s for {base_url}/health")
    if not wait_for_health(base_url, wait):
        say(f"{base_url}/health did not answer 200; running the smoke test anyway to show what fails")

    say(f"python scripts/smoke.py {shlex.join(args)}")
    code = run_smoke(args, env, password)
    if code != 0:
        return fail(f"scripts/smoke.py exited with status {code} against {base_url}; the deployment is not healthy "
                    "(see the FAIL line above)")
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
