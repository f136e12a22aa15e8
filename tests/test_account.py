"""The account API (/api/me) over HTTP against Azurite: profile, attributes,
password change, methods with step-up, sign out everywhere, export, deletion,
and the tokens it refuses."""

from __future__ import annotations

import base64
import json
import random
import time

import jwt
import pytest

from shared.flows import account
from shared.storage import directory, signinlog
from shared.tokens import issuance as tokens

from conftest import unique_email

PW = "correct horse battery staple"
NEW_PW = "a completely different passphrase"
CAPS = "mfa_required registration_required"
ACCOUNT_SCOPE = "api://native-auth/account openid profile offline_access"
JSON = {"Content-Type": "application/json"}


def phone() -> str:
    return "+49151" + "".join(random.choice("0123456789") for _ in range(8))


def sms(number: str, mid: str = "m1", default: bool = True) -> dict:
    return {"id": mid, "channel": "sms", "target": number, "default": default, "created": 1}


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def sign_in(api, email: str, *, password: str = PW, scope: str = ACCOUNT_SCOPE, claims: str | None = None):
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect", capabilities=CAPS)
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password oob redirect")
    return api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                    password=password, scope=scope, client_info="1", claims=claims)


def step_up(api, outbox, email: str, number: str, server):
    """Sign in again with the account context's claims: the built-in policy asks for the second factor."""
    ctx = server.settings.account_auth_context
    claims = json.dumps({"access_token": {"acrs": {"essential": True, "value": ctx}}})
    r = sign_in(api, email, claims=claims)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=intro["methods"][0]["id"])
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                 oob=outbox.last_code(number), scope=ACCOUNT_SCOPE, client_info="1")
    assert t.status == 200 and claims_of(t["access_token"])["acrs"] == [ctx], t.body
    return t


def call(api, method: str, path: str, token: str | None, body: dict | None = None):
    headers = dict(JSON) if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return api.request(method, path, json.dumps(body).encode() if body is not None else None, headers)


@pytest.fixture
def signed_in(api, make_user):
    def make(**kwargs):
        email, user = make_user(**kwargs)
        t = sign_in(api, email)
        assert t.status == 200, t.body
        return email, user, t
    return make


# ------------------------------------------------------------------ profile and attributes

def test_profile_shows_the_account_with_methods_masked(api, signed_in):
    number = phone()
    email, user, t = signed_in(methods=[sms(number)], display_name="Ada")
    r = call(api, "GET", "me", t["access_token"])
    assert r.status == 200, r.body
    assert r["id"] == user.oid and r["email"] == email and r["displayName"] == "Ada" and r["hasPassword"] is True
    assert r["methods"] == [{"id": "m1", "channel": "sms", "target": r["methods"][0]["target"], "default": True,
                             "created": "1970-01-01T00:00:01Z"}]
    assert number not in json.dumps(r.body) and number[-4:] in r["methods"][0]["target"]
    assert r["created"] and r["lastSignIn"]
    assert "password" not in json.dumps(r.body).lower().replace("haspassword", "").replace("passwordchanged", "")


def test_attributes_are_updated_through_the_sign_up_schema(server, api, signed_in):
    from shared.settings import _attribute_schema

    email, user, t = signed_in()
    schema = _attribute_schema(json.dumps([{"name": "displayName", "type": "string", "required": False},
                                           {"name": "city", "type": "string", "required": True, "regex": "[A-Za-z ]+"}]))
    with server.override(signup_attributes=schema):
        ok = call(api, "PATCH", "me", t["access_token"], {"attributes": {"displayName": "Grace", "city": "Oslo"}})
        assert ok.status == 200 and ok["displayName"] == "Grace" and ok["attributes"]["city"] == "Oslo", ok.body
        bad = call(api, "PATCH", "me", t["access_token"], {"attributes": {"city": "Oslo 42"}})
        assert bad.status == 400 and bad["suberror"] == "attribute_validation_failed"
        assert bad["invalid_attributes"] == [{"name": "city"}]
        mail = call(api, "PATCH", "me", t["access_token"], {"attributes": {"email": "other@example.com"}})
        assert mail.status == 400 and mail["error"] == "invalid_request"
    assert directory.get_user(server.storage, email).display_name == "Grace"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"a":1,"a":2}', b"{" * 5000])
def test_bad_bodies_are_clean_400s(api, signed_in, body):
    _, _, t = signed_in()
    r = api.request("PATCH", "me", body, {**JSON, "Authorization": "Bearer " + t["access_token"]})
    assert r.status == 400 and r["error"] == "invalid_request" and r["error_codes"], r.body


# ------------------------------------------------------------------ tokens it refuses

def test_tokens_for_anything_else_are_refused(server, api, signed_in, make_user):
    email, user, t = signed_in()
    no_resource = sign_in(api, email, scope="openid profile offline_access")         # aud: the client
    assert call(api, "GET", "me", no_resource["access_token"]).status == 401
    other_scope = sign_in(api, email, scope="api://native-auth/access_as_user openid")
    wrong = call(api, "GET", "me", other_scope["access_token"])
    assert wrong.status == 403 and wrong["error"] == "insufficient_scope"
    assert call(api, "GET", "me", t["id_token"]).status == 401                         # an ID token
    assert call(api, "GET", "me", t["refresh_token"]).status == 401
    assert call(api, "GET", "me", None).status == 401
    # A token of ours for another user's session (forged with the app's key: sid of A, oid of B).
    other, other_user = make_user()
    key = tokens.keyring(server.storage, server.settings).active()
    forged = {**claims_of(t["access_token"]), "oid": other_user.oid, "sub": other_user.oid}
    bad = jwt.encode(forged, key.private_key, algorithm="RS256", headers={"kid": key.kid, "typ": "at+jwt"})
    assert call(api, "GET", "me", bad).status == 401


def test_expired_tokens_are_refused(server, api, signed_in):
    """The same token with its lifetime over (signed with the app's key, everything else intact)."""
    _, _, t = signed_in()
    key = tokens.keyring(server.storage, server.settings).active()
    old = {**claims_of(t["access_token"]), "exp": int(time.time()) - 120, "iat": int(time.time()) - 1000,
           "nbf": int(time.time()) - 1000}
    expired = jwt.encode(old, key.private_key, algorithm="RS256", headers={"kid": key.kid, "typ": "at+jwt"})
    assert call(api, "GET", "me", expired).status == 401
    assert call(api, "GET", "me", t["access_token"]).status == 200


# ------------------------------------------------------------------ password

def test_password_change_signs_out_the_other_sessions_not_this_one(server, api, outbox, signed_in):
    email, _, t = signed_in()
    other = sign_in(api, email)
    wrong = call(api, "POST", "me/password", t["access_token"], {"currentPassword": "nope nope nope", "newPassword": NEW_PW})
    assert wrong.status == 400 and wrong["error_codes"] == [50126]
    weak = call(api, "POST", "me/password", t["access_token"], {"currentPassword": PW, "newPassword": "passwordpassword"})
    assert weak.status == 400 and weak["suberror"] in ("password_banned", "password_too_weak"), weak.body
    reused = call(api, "POST", "me/password", t["access_token"], {"currentPassword": PW, "newPassword": PW})
    assert reused.status == 400 and reused["suberror"] == "password_recently_used"
    ok = call(api, "POST", "me/password", t["access_token"], {"currentPassword": PW, "newPassword": NEW_PW})
    assert ok.status == 204, ok.body
    refresh = lambda rt: api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=rt, scope=ACCOUNT_SCOPE)  # noqa: E731
    assert refresh(other["refresh_token"]).status == 400                              # the other session ended
    assert refresh(t["refresh_token"]).status == 200                                   # this one goes on
    assert sign_in(api, email, password=NEW_PW).status == 200 and sign_in(api, email).status == 400
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "password_changed"


def test_password_change_can_keep_the_other_sessions(api, signed_in):
    email, _, t = signed_in()
    other = sign_in(api, email)
    ok = call(api, "POST", "me/password", t["access_token"],
              {"currentPassword": PW, "newPassword": NEW_PW, "signOutOtherSessions": False})
    assert ok.status == 204
    assert api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=other["refresh_token"],
                    scope=ACCOUNT_SCOPE).status == 200


# ------------------------------------------------------------------ methods, with step-up

def test_adding_a_method_needs_a_fresh_second_factor_through_the_claims_challenge(server, api, outbox, signed_in):
    number = phone()
    email, user, t = signed_in(methods=[sms(number)])
    new = phone()
    denied = call(api, "POST", "me/methods", t["access_token"], {"channel": "sms", "target": new})
    assert denied.status == 401 and denied["error"] == "insufficient_claims"
    challenge = denied.headers["www-authenticate"].split('claims="')[1].split('"')[0]
    ctx = server.settings.account_auth_context
    assert json.loads(base64.b64decode(challenge)) == {"access_token": {"acrs": {"essential": True, "value": ctx}}}
    fresh = step_up(api, outbox, email, number, server)
    sent = call(api, "POST", "me/methods", fresh["access_token"], {"channel": "sms", "target": new})
    assert sent.status == 202 and sent["codeLength"] == 6 and new not in json.dumps(sent.body), sent.body
    wrong = call(api, "POST", "me/methods/verify", fresh["access_token"], {"verification": sent["verification"], "code": "000000"})
    assert wrong.status == 400 and wrong["suberror"] == "invalid_oob_value"
    added = call(api, "POST", "me/methods/verify", fresh["access_token"],
                 {"verification": sent["verification"], "code": outbox.last_code(new)})
    assert added.status == 201 and added["channel"] == "sms", added.body
    assert [m["target"] for m in directory.get_user(server.storage, email).methods] == [number, new]
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "method_added"
    again = call(api, "POST", "me/methods/verify", fresh["access_token"],
                 {"verification": sent["verification"], "code": outbox.last_code(new)})
    assert again.status == 400                                                         # single use


def test_a_stale_step_up_token_is_not_fresh(server, api, outbox, signed_in, monkeypatch):
    number = phone()
    email, _, t = signed_in(methods=[sms(number)])
    fresh = step_up(api, outbox, email, number, server)
    real = time.time
    monkeypatch.setattr(account, "time", type("T", (), {"time": staticmethod(lambda: real() + server.settings.account_freshness_seconds + 5),
                                                        "strftime": staticmethod(time.strftime), "gmtime": staticmethod(time.gmtime)}))
    r = call(api, "POST", "me/methods", fresh["access_token"], {"channel": "sms", "target": phone()})
    assert r.status == 401 and r["error"] == "insufficient_claims"


def test_removing_methods_and_the_last_one(server, api, outbox, signed_in, policies):
    number, second = phone(), phone()
    email, _, t = signed_in(methods=[sms(number), sms(second, "m2", False)])
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
    assert call(api, "DELETE", "me/methods/nope", t["access_token"]).status == 404
    assert call(api, "DELETE", "me/methods/m2", t["access_token"]).status == 401    # not fresh
    fresh = step_up(api, outbox, email, number, server)
    assert call(api, "DELETE", "me/methods/m2", fresh["access_token"]).status == 204
    last = call(api, "DELETE", "me/methods/m1", fresh["access_token"])
    assert last.status == 409 and last["error"] == "last_method_required", last.body
    assert [m["id"] for m in directory.get_user(server.storage, email).methods] == ["m1"]
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "method_removed"


def test_an_account_without_a_method_confirms_by_email_code(server, api, outbox, signed_in):
    email, _, t = signed_in()
    needs = call(api, "POST", "me/methods", t["access_token"], {"channel": "sms", "target": phone()})
    assert needs.status == 401 and needs["error"] == "confirmation_required"
    conf = call(api, "POST", "me/confirmation", t["access_token"], {})
    assert conf.status == 202 and conf["codeLength"] == 8, conf.body
    new = phone()
    sent = call(api, "POST", "me/methods", t["access_token"],
                {"channel": "sms", "target": new, "confirmation": conf["confirmation"], "code": outbox.last_code(email)})
    assert sent.status == 202, sent.body
    added = call(api, "POST", "me/methods/verify", t["access_token"],
                 {"verification": sent["verification"], "code": outbox.last_code(new)})
    assert added.status == 201
    other = call(api, "POST", "me/methods", t["access_token"], {"channel": "email", "target": unique_email("other")})
    assert other.status == 401 and other["error"] == "insufficient_claims"   # now it has a method: step-up, not a code
    own = call(api, "POST", "me/methods", t["access_token"], {"channel": "email", "target": email})
    assert own.status == 400 and own["error"] == "invalid_request"  # refused before any proof is asked for


# ------------------------------------------------------------------ sessions, export, deletion

def test_sign_out_everywhere(api, signed_in):
    email, _, t = signed_in()
    other = sign_in(api, email)
    assert call(api, "POST", "me/revoke-sessions", t["access_token"]).status == 204
    for rt in (t["refresh_token"], other["refresh_token"]):
        assert api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=rt, scope=ACCOUNT_SCOPE).status == 400
    assert call(api, "GET", "me", t["access_token"]).status == 401                    # at once for this API too


def test_export_holds_everything_but_secrets(server, api, signed_in):
    number = phone()
    email, user, t = signed_in(methods=[sms(number)])
    r = call(api, "GET", "me/export", t["access_token"])
    assert r.status == 200 and "attachment" in r.headers["content-disposition"]
    blob = json.dumps(r.body)
    assert r["profile"]["email"] == email and r["methods"][0]["target"] == number
    assert r["sessions"] and r["signInLog"]
    for secret in ("argon2", "password_hash", "current_hash", "code_hash", "secret_hash", user.password_hash):
        assert secret not in blob, secret


def test_deleting_the_account(server, api, outbox, signed_in):
    number = phone()
    email, user, t = signed_in(methods=[sms(number)])
    assert call(api, "DELETE", "me", t["access_token"]).status == 401                 # needs a fresh second factor
    fresh = step_up(api, outbox, email, number, server)
    assert call(api, "DELETE", "me", fresh["access_token"]).status == 204
    assert directory.get_user(server.storage, email) is None
    assert call(api, "DELETE", "me", fresh["access_token"]).status == 204             # idempotent
    assert call(api, "GET", "me", fresh["access_token"]).status == 401
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "account_deleted"
    entries = [e for e in signinlog.tail(server.storage, limit=1000) if e.get("user_oid") == user.oid]
    assert entries == []                                                              # only pseudonymous records left
    # The address can sign up again, as a new account the old sessions cannot reach.
    again, _ = directory.create_user(server.storage, email, password=PW), None
    assert again.oid != user.oid
    assert api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=t["refresh_token"],
                    scope=ACCOUNT_SCOPE).status == 400


def test_admin_deletes_an_account(server, api, signed_in):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    email, _, t = signed_in()
    env = {**os.environ, "AUTH_ENVIRONMENT": "local", "AUTH_TABLE_PREFIX": server.settings.table_prefix,
           "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
           "AUTH_OUTBOX_PATH": server.settings.outbox_path}
    run = lambda: subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", "users", "delete", email],  # noqa: E731
                                 capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    first = run()
    assert first.returncode == 0 and "deleted" in first.stdout, first.stderr
    assert directory.get_user(server.storage, email) is None
    second = run()
    assert second.returncode == 0 and "nothing to delete" in second.stdout
    assert api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=t["refresh_token"],
                    scope=ACCOUNT_SCOPE).status == 400


def test_the_api_has_its_own_rate_limit(server, api, signed_in, monkeypatch):
    _, _, t = signed_in()
    monkeypatch.setattr(account, "CHANGES_PER_HOUR", 2)
    answers = [call(api, "POST", "me/revoke-sessions", t["access_token"]).status for _ in range(1)]
    assert answers == [204]
    _, _, t2 = signed_in()
    statuses = [call(api, "PATCH", "me", t2["access_token"], {"attributes": {"displayName": f"n{i}"}}).status
                for i in range(3)]
    assert statuses == [200, 200, 429], statuses


def test_cors_preflight_for_the_account_api(api):
    r = api.request("OPTIONS", "me", None, {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "DELETE",
                                             "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status == 204 and "DELETE" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
