"""Operators and policies: catalogue rows A58 (what the CLI shows and refuses)
and A60 (identifiers in policies are normalized).

Shared fixtures and helpers: tests/attack_kit.py. SECURITY.md §7 maps every
row to its tests.
"""

from __future__ import annotations

import os
import subprocess
import sys

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from conftest import ROOT


def admin(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTH_ENVIRONMENT": "local", "AUTH_TABLE_PREFIX": server.settings.table_prefix,
           "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
           "AUTH_OUTBOX_PATH": server.settings.outbox_path}
    return subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)


def test_A58_the_sign_in_log_shows_policy_results_and_the_user_object_id(server, api, make_user, policies):
    email, user = make_user()
    name = policies(name=f"report-only block {uuid.uuid4().hex[:6]}", state="report-only", grant={"block": True},
                    assignments={"users": {"include": [email]}})
    assert password_first_factor(api, email).status == 200
    out = admin(server, "log", "tail", "--limit", "200")
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if user.oid in line)
    assert name in line and "block" in line and "report-only" in line, line


def test_A58_deleting_an_unknown_policy_is_an_error(server):
    out = admin(server, "policies", "delete", f"no such policy {uuid.uuid4().hex}")
    assert out.returncode != 0 and "no policy" in (out.stderr + out.stdout).lower()


def test_A60_policy_assignments_by_email_match_whatever_the_case(server, api, make_user, policies):
    email, _ = make_user()
    local, domain = email.split("@")
    policies(assignments={"users": {"include": [f"{local.title()}@{domain.upper()}"]}}, grant={"block": True})
    r = password_first_factor(api, email)
    assert r.status == 400 and r["error"] == "access_denied", r.body


@pytest.mark.parametrize("bad", ["not an address", "a@b", "user@@example.com", "ＵＳＥＲ@example.com"])
def test_A60_identifiers_that_cannot_be_normalized_are_refused(server, bad):
    with pytest.raises(policy.PolicyError):
        policy.save(server.storage, {"name": f"bad {uuid.uuid4().hex[:6]}", "assignments": {"users": {"include": [bad]}},
                                     "grant": {"block": True}})
