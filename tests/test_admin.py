"""The admin CLI, run as a real subprocess against the test Azurite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from shared.security import policy
from shared.storage import directory

from conftest import ROOT, unique_email


def admin(server, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTH_ENVIRONMENT": "local",
           "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
           "AUTH_TABLE_PREFIX": server.settings.table_prefix}
    return subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_clients(server):
    out = ok(admin(server, "clients", "add", "33333333-0000-0000-0000-000000000003", "Mobile app"))
    assert "registered" in out
    assert "Mobile app" in ok(admin(server, "clients", "list"))
    directory.clear_client_cache()
    assert directory.get_client(server.storage, server.settings, "33333333-0000-0000-0000-000000000003").enabled
    ok(admin(server, "clients", "disable", "33333333-0000-0000-0000-000000000003"))
    directory.clear_client_cache()
    assert not directory.get_client(server.storage, server.settings, "33333333-0000-0000-0000-000000000003").enabled


def test_disabled_client_gets_invalid_client(server, api):
    ok(admin(server, "clients", "add", "44444444-0000-0000-0000-000000000004", "Old app"))
    ok(admin(server, "clients", "disable", "44444444-0000-0000-0000-000000000004"))
    directory.clear_client_cache()
    r = api.post("oauth2/v2.0/initiate", client_id="44444444-0000-0000-0000-000000000004", username="a@example.com",
                 challenge_type="password redirect")
    assert r.status == 400 and r["error"] == "invalid_client" and r["suberror"] == "nativeauthapi_disabled"


def test_policies_lifecycle(server, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": "cli policy", "state": "off", "grant": {"require_second_factor": True, "methods": ["sms"]}}))
    try:
        assert "saved policy 'cli policy' (off)" in ok(admin(server, "policies", "create", str(f)))
        policy.clear_cache()
        assert "cli policy" in ok(admin(server, "policies", "list"))
        ok(admin(server, "policies", "enable", "cli policy"))
        policy.clear_cache()
        assert next(p for p in policy.load(server.storage)[0] if p["name"] == "cli policy")["state"] == "on"
        ok(admin(server, "policies", "report-only", "cli policy"))
        policy.clear_cache()
        assert next(p for p in policy.load(server.storage)[0] if p["name"] == "cli policy")["state"] == "report-only"
        bad = admin(server, "policies", "create", "-", stdin='{"name": "x", "state": "sometimes"}')
        assert bad.returncode == 2 and "state" in bad.stderr
    finally:
        ok(admin(server, "policies", "delete", "cli policy"))
        policy.clear_cache()


def test_users(server, api):
    email = unique_email("cli")
    ok(admin(server, "users", "create", email, "--password-stdin", stdin="correct horse battery staple\n"))
    assert email in ok(admin(server, "users", "list"))
    assert api.signin_password(email, "correct horse battery staple").status == 200
    user = directory.get_user(server.storage, email)
    directory.update_user(server.storage, user, methods=json.dumps([
        {"id": "m1", "channel": "sms", "target": "+4915112345678", "default": True, "created": 1},
        {"id": "m2", "channel": "email", "target": "b@example.com", "default": False, "created": 2}]))
    shown = ok(admin(server, "users", "show", email))
    assert "m1" in shown and "m2" in shown
    ok(admin(server, "users", "remove-method", email, "m1"))
    methods = directory.get_user(server.storage, email).methods
    assert [m["id"] for m in methods] == ["m2"] and methods[0]["default"] is True
    ok(admin(server, "users", "disable", email))
    assert api.signin_password(email, "correct horse battery staple").status == 400
    ok(admin(server, "users", "enable", email))
    user = directory.get_user(server.storage, email)
    directory.update_user(server.storage, user, failed_logins=12, lockout_until=int(time.time()) + 900)
    assert api.signin_password(email, "correct horse battery staple").status == 400
    ok(admin(server, "users", "unlock", email))
    assert api.signin_password(email, "correct horse battery staple").status == 200
    ok(admin(server, "users", "groups", email, "staff", "admins"))
    assert directory.get_user(server.storage, email).entity["groups"] == "staff,admins"
    assert admin(server, "users", "show", "nobody@example.com").returncode != 0


def test_log_tail_shows_outcomes(server, api, make_user):
    from shared.storage import signinlog

    email, user = make_user()
    assert api.signin_password(email, "correct horse battery staple").status == 200
    signinlog.flush()      # the success record is written off the request path, by this process's writer
    out = ok(admin(server, "log", "tail", "--limit", "200"))
    rows = [line for line in out.splitlines() if user.oid in line]
    assert rows and all("success" in line for line in rows), out
    assert "correct horse" not in out


def test_sends_report_suspend_and_lift(server, api, make_user):
    """`python -m admin sends`: SMS sent and verified per country and prefix, and
    the suspensions of SMS to new numbers (the pumping defence), set and lifted."""
    import random

    from shared.security import limits

    number = "+49151" + "".join(random.choice("0123456789") for _ in range(8))
    limits.check_and_count(server.storage, server.settings, "sms", number, None, purpose="mfa_code")
    report = json.loads(ok(admin(server, "sends", "report", "--json")))
    assert report["countries"]["DE"]["sent"] >= 1 and number[:-4] in report["prefixes"]
    table = ok(admin(server, "sends"))
    assert "by country" in table and "DE" in table and "conversion" in table
    out = ok(admin(server, "sends", "suspend", "prefix", number[:-4], "--hours", "1"))
    assert "suspended" in out
    key = next(k for k, v in limits.suspensions(server.storage, fresh=True).items() if v["kind"] == "pfx"
               and v["label"] == number[:-6] + "**")
    assert key in ok(admin(server, "sends"))
    assert "lifted" in ok(admin(server, "sends", "lift", key))
    assert key not in limits.suspensions(server.storage, fresh=True)
    missing = admin(server, "sends", "lift", "pfx-nothing")
    assert missing.returncode == 2
