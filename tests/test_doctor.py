"""A deployment that fails safe and says what is wrong (issue: deployment
safety): strict secrets, unresolved Key Vault references, table prefixes,
secret rotation with accepted keys, /api/health and the readiness report
(`python -m admin doctor`, `GET /api/health/detail`), against the test
Azurite and a fake ACS over TLS."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from shared.protocol import http as protocol
from shared.storage import maintenance
from shared.tokens import issuance as tokens
from shared import settings as settings_mod

from conftest import ROOT, unique_email

PW = "correct horse battery staple"
REFERENCE = "@Microsoft.KeyVault(SecretUri=https://kvexample.vault.azure.net/secrets/auth-code-hash-key)"
KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()


def doctor(server, **env: str) -> tuple[int, dict[str, dict]]:
    base = {**os.environ, "AUTH_ENVIRONMENT": "local",
            "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
            "AUTH_TABLE_PREFIX": server.settings.table_prefix, "AUTH_OUTBOX_PATH": server.settings.outbox_path}
    base = {k: v for k, v in {**base, **env}.items() if v is not None}
    run = subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", "doctor", "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=base, timeout=120)
    assert run.returncode in (0, 1) and run.stdout.startswith("{"), (run.returncode, run.stdout[-500:], run.stderr[-2000:])
    return run.returncode, {c["name"]: c for c in json.loads(run.stdout)["checks"]}


# ------------------------------------------------------------------ settings: strict secrets

@pytest.mark.parametrize("value, why", [
    (REFERENCE, "unresolved Key Vault reference"),
    ("@Microsoft.KeyVault(VaultName=kv;SecretName=auth-code-hash-key)", "unresolved Key Vault reference"),
    ("this is not base64!", "not valid base64 or hex"),
    (base64.b64encode(b"x" * 16).decode(), "32 to 512 bytes"),
    ("a" * 65, "not valid base64 or hex"),
])
def test_a_secret_that_is_not_key_material_is_refused(value, why):
    env = {"AUTH_ENVIRONMENT": "azure", "AUTH_STORAGE_TABLE_ENDPOINT": "https://x.table.core.windows.net",
           "AUTH_ISSUER": "https://example.net/api", "AUTH_CODE_HASH_KEY": value, "AUTH_SIGNING_KEY_SECRET": KEY_A,
           "AUTH_ACS_ENDPOINT": "https://x.communication.azure.com"}
    with pytest.raises(settings_mod.SettingsError, match=why):
        settings_mod.Settings.from_env(env)


def test_the_old_parser_turned_a_reference_into_a_key():
    """The finding itself: `b64decode(validate=False)` made 65 bytes of key out of the literal reference."""
    junk = base64.b64decode(REFERENCE + "=" * (-len(REFERENCE) % 4), validate=False)
    assert len(junk) >= 32                                   # what used to become key material
    with pytest.raises(settings_mod.SettingsError):
        settings_mod._secret(REFERENCE, "AUTH_CODE_HASH_KEY")


def test_any_unresolved_reference_is_named_and_none_is_used():
    env = {"AUTH_ENVIRONMENT": "local", "AUTH_EMAIL_SENDER": REFERENCE.replace("auth-code-hash-key", "sender"),
           "AUTH_SMS_SENDER": REFERENCE}
    with pytest.raises(settings_mod.SettingsError, match="AUTH_EMAIL_SENDER, AUTH_SMS_SENDER"):
        settings_mod.Settings.from_env(env)


@pytest.mark.parametrize("prefix", ["native-auth", "1auth", "auth_x", "a" * 55, "ünicode"])
def test_table_prefixes_that_make_invalid_table_names_are_refused(prefix):
    with pytest.raises(settings_mod.SettingsError, match="AUTH_TABLE_PREFIX"):
        settings_mod.Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_TABLE_PREFIX": prefix})
    assert settings_mod.Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_TABLE_PREFIX": "a" * 54}).table_prefix


# ------------------------------------------------------------------ the running app with broken settings

def test_unusable_settings_serve_nothing_and_health_says_why(server, monkeypatch):
    monkeypatch.setenv("AUTH_ENVIRONMENT", "azure")
    monkeypatch.setenv("AUTH_CODE_HASH_KEY", REFERENCE)
    settings_mod.use_settings(None)
    try:
        health = protocol.handle("health", protocol.Request("GET", "http://h/api/health", {}, {}, b""),
                                 maintenance.health, methods="GET")
        assert health.status == 503 and health.body["status"] == "misconfigured", health.body
        assert "AUTH_CODE_HASH_KEY" in health.body["reason"] and "vault.azure.net" not in health.body["reason"]
        from shared.flows import signin

        r = protocol.handle("signin_initiate", protocol.Request("POST", "http://h/api/oauth2/v2.0/initiate",
                                                                {"content-type": "application/x-www-form-urlencoded"},
                                                                {}, b"client_id=x&username=a%40b.c"), signin.initiate)
        assert r.status == 503 and r.body["error"] == "temporarily_unavailable" and r.headers["Retry-After"] == "30"
    finally:
        settings_mod.use_settings(server.settings)


def test_a_changed_signing_secret_stops_issuance_cleanly_until_the_old_one_is_accepted(server, api, make_user):
    email, _ = make_user()
    tokens.keyring(server.storage, server.settings).keys()          # a key exists, under the current secret
    old = server.settings.signing_key_secret
    with server.override(signing_key_secret=b"N" * 32):
        health = api.get("health")
        assert health.status == 503 and health["signing_keys"] == "unreadable", health.body
        assert "AUTH_SIGNING_KEY_SECRET_ACCEPTED" in health["reason"]
        r = _password_sign_in(api, email)
        assert r.status == 503 and r["error"] == "temporarily_unavailable", r.body      # never a 500
    with server.override(signing_key_secret=b"N" * 32, signing_key_secrets_accepted=(old,)):
        assert api.get("health").status == 200
        assert _password_sign_in(api, email).status == 200


def _password_sign_in(api, email: str):
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password oob redirect")
    return api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                    password=PW, scope="openid offline_access")


def test_a_code_sent_before_a_code_key_rotation_is_still_accepted(server, api, outbox, make_user):
    """Instances hold different versions for a while: a code hashed under the
    old key is accepted by an instance that has the new key and accepts the old."""
    email, _ = make_user(password=None)
    old = server.settings.code_hash_key
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")
    code = outbox.last_code(email)
    from shared.flows import state

    pk, flow_id, secret, _ = state._parts(server.settings, c["continuation_token"])
    with server.override(code_hash_key=b"R" * 32) as new:               # the new key only: the old code fails
        # A sign-in's token is sealed under the key too (A116): under the new key only, it is refused first;
        # the same flow's token made under the new key reaches the code, which fails.
        stale = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob=code,
                         scope="openid offline_access")
        assert stale.status == 400 and stale["error"] == "invalid_grant", stale.body
        wrong = api.post("oauth2/v2.0/token", continuation_token=state._token(new, pk, flow_id, secret),
                         grant_type="oob", oob=code, scope="openid offline_access")
        assert wrong.status == 400 and wrong["suberror"] == "invalid_oob_value"
    with server.override(code_hash_key=b"R" * 32, code_hash_keys_accepted=(old,)):
        t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob=code,
                     scope="openid offline_access")
        assert t.status == 200, t.body


# ------------------------------------------------------------------ python -m admin doctor

def test_doctor_against_the_local_host_is_green(server):
    code, checks = doctor(server)
    assert code == 0, checks
    for name in ("settings", "secrets", "storage", "tables", "signing keys", "delivery", "monitoring", "clock"):
        assert name in checks, name
    assert checks["tables"]["status"] == "ok" and checks["storage"]["status"] == "ok"
    assert checks["signing keys"]["status"] in ("ok", "warn") and checks["delivery"]["status"] == "skip"
    assert checks["clock"]["status"] == "ok", checks["clock"]
    secrets = json.dumps(checks)
    for value in (server.settings.code_hash_key, server.settings.signing_key_secret):
        assert base64.b64encode(value).decode() not in secrets and value.hex() not in secrets


def test_doctor_names_each_problem_of_a_broken_configuration(server):
    code, checks = doctor(server, AUTH_CODE_HASH_KEY=REFERENCE)
    assert code == 1 and checks["key vault references"]["status"] == "fail"
    assert "AUTH_CODE_HASH_KEY" in checks["key vault references"]["detail"] and "Key Vault Secrets User" in \
        checks["key vault references"]["fix"]
    code, checks = doctor(server, AUTH_TABLE_PREFIX="doctorprobe" + unique_email("x")[:6].replace("-", "x"))
    assert code == 1 and checks["tables"]["status"] == "fail" and "missing" in checks["tables"]["detail"]
    code, checks = doctor(server, AUTH_STORAGE_CONNECTION_STRING=server.settings.storage_connection_string.replace(
        f":{server.azurite.port}", ":9"))
    assert code == 1 and checks["storage"]["status"] == "fail"
    code, checks = doctor(server, AUTH_SIGNING_KEY_SECRET=KEY_B)
    assert code == 1 and checks["signing keys"]["status"] == "fail"
    assert "AUTH_SIGNING_KEY_SECRET_ACCEPTED" in checks["signing keys"]["fix"]
    code, checks = doctor(server, AUTH_TABLE_PREFIX="bad-prefix")
    assert code == 1 and checks["settings"]["status"] == "fail" and "AUTH_TABLE_PREFIX" in checks["settings"]["detail"]


def test_doctor_checks_acs_without_sending_and_monitoring(server, monkeypatch):
    from fakeacs import FakeAcs

    with FakeAcs() as fake:
        env = {"REQUESTS_CA_BUNDLE": fake.ca_file, "AUTH_DELIVERY": "acs",
               "AUTH_ACS_CONNECTION_STRING": fake.connection_string, "AUTH_EMAIL_SENDER": "DoNotReply@example.net",
               "AUTH_SMS_SENDER": "+18005550100"}
        code, checks = doctor(server, **env)
        assert checks["delivery"]["status"] == "ok", checks["delivery"]
        assert fake.messages == []                                               # nothing sent
        wrong_key = fake.connection_string.split("accesskey=")[0] + "accesskey=" + KEY_B
        code, checks = doctor(server, **{**env, "AUTH_ACS_CONNECTION_STRING": wrong_key})
        assert code == 1 and checks["delivery"]["status"] == "fail" and "401" in checks["delivery"]["detail"]
        code, checks = doctor(server, **{**env, "AUTH_SMS_SENDER": None})
        assert code == 1 and "AUTH_SMS_SENDER" in checks["delivery"]["detail"]
    code, checks = doctor(server, APPLICATIONINSIGHTS_CONNECTION_STRING="garbage")
    assert checks["monitoring"]["status"] == "fail"
    code, checks = doctor(server, APPLICATIONINSIGHTS_CONNECTION_STRING=
                          "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                          "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/")
    assert checks["monitoring"]["status"] == "ok"


def test_health_detail_is_the_readiness_report(server, api):
    r = api.get("health/detail")
    assert r.status == 200 and r["status"] == "ok", r.body
    assert {c["name"] for c in r["checks"]} >= {"settings", "storage", "tables", "signing keys", "clock"}


def test_the_rotation_script_waits_for_what_the_readiness_report_shows(server):
    """scripts/rotate_secret.sh greps /health/detail for the new fingerprint:
    the patterns it uses match the report's text in each phase."""
    import dataclasses
    import re

    script = (ROOT / "scripts" / "rotate_secret.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "rotate_secret.sh")]).returncode == 0
    new = b"N" * 32
    fp = maintenance.fingerprint(new)
    phase1 = dataclasses.replace(server.settings, code_hash_keys_accepted=(new,))
    assert re.search(f"also accepted.*{fp}", maintenance._fingerprints(phase1).detail)
    assert not re.search(f"also accepted.*{fp}", maintenance._fingerprints(server.settings).detail)
    phase2 = dataclasses.replace(server.settings, code_hash_key=new, code_hash_keys_accepted=(server.settings.code_hash_key,))
    assert f"code hash key {fp}" in maintenance._fingerprints(phase2).detail
    assert f"code hash key {fp}" not in maintenance._fingerprints(phase1).detail
    assert 's/AUTH_CODE_HASH_KEY/code hash key/' in script and "also accepted.*$fp" in script
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "scripts/rotate_secret.sh" in deploy and "configreferences/appsettings/refresh" in deploy


def test_health_is_not_green_while_a_handler_cannot_load(server, api, monkeypatch):
    """Handlers load with their first request (cold start); the health check loads them all, so a deployment
    whose domain cannot be imported answers 503 with the reason instead of 200 while every endpoint fails."""
    import functions._http as adapter

    monkeypatch.setattr(adapter, "_all_resolved", False)
    monkeypatch.setattr(adapter, "LAZY", adapter.LAZY + [("shared.flows.no_such_module", "handler")])
    r = api.get("health")
    assert r.status == 503 and r["handlers"] == "failed to load", r.body
    assert "shared.flows.no_such_module.handler: ModuleNotFoundError" in r["reason"]
    monkeypatch.setattr(adapter, "LAZY", [e for e in adapter.LAZY if e[0] != "shared.flows.no_such_module"])
    monkeypatch.setattr(adapter, "LAZY_PACKAGES", adapter.LAZY_PACKAGES + ("no_such_package_for_tokens",))
    r = api.get("health")                      # a package the domain imports on first use is missing
    assert r.status == 503 and "no_such_package_for_tokens: ModuleNotFoundError" in r["reason"], r.body
    monkeypatch.setattr(adapter, "LAZY_PACKAGES", adapter.LAZY_PACKAGES[:-1])
    assert api.get("health").status == 200
