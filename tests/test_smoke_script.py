"""scripts/smoke.py (the deployment smoke test) against the local host."""

from __future__ import annotations

import subprocess
import sys

from shared.security import policy

from conftest import ROOT

PW = "correct horse battery staple"


def run(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/smoke.py", "--base-url", server.host.base_url, "--outbox",
                           str(server.outbox.path), "--password-stdin", *args], input=PW + "\n", capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_smoke_sign_in_with_mfa(server, make_user):
    email, _ = make_user(methods=[{"id": "m", "channel": "sms", "target": "+4915100003333", "default": True, "created": 1}])
    policy.save(server.storage, {"name": "smoke mfa", "grant": {"require_second_factor": True}})
    try:
        r = run(server, "--username", email)
    finally:
        policy.delete(server.storage, "smoke mfa")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS  second-factor challenge (sms)" in r.stdout and "smoke test passed" in r.stdout
    assert "amr=['pwd', 'sms', 'mfa']" in r.stdout


def test_smoke_with_registration(server, make_user):
    email, _ = make_user()
    policy.save(server.storage, {"name": "smoke mfa 2", "grant": {"require_second_factor": True}})
    try:
        r = run(server, "--username", email, "--register-phone", "+4915100004444")
    finally:
        policy.delete(server.storage, "smoke mfa 2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS  registration continue" in r.stdout


def test_smoke_fails_loudly_on_a_wrong_password(server, make_user):
    email, _ = make_user(password="another long passphrase here")
    r = run(server, "--username", email)
    assert r.returncode == 1 and "FAIL  tokens" in r.stdout


def test_smoke_runs_the_readiness_report_first(server):
    """Against the local host the readiness report (/health/detail) runs
    before anything else; --readiness-only stops before the sign-in (the azd
    post-deploy hook has no test account)."""
    r = subprocess.run([sys.executable, "scripts/smoke.py", "--base-url", server.host.base_url, "--readiness-only"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    first_pass = next(i for i, line in enumerate(lines) if line.startswith("PASS"))
    assert lines[first_pass].startswith("PASS  readiness"), lines
    assert any("ok    tables:" in line for line in lines) and "PASS  jwks" in r.stdout
    assert "initiate" not in r.stdout
