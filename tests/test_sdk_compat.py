"""Microsoft's native SDKs (MSAL iOS/macOS, MSAL Android) unchanged, as far as their
source shows (docs/sdk-compatibility.md): the URLs they build from the authority, the
status codes they read, and the answers that depend on what a given SDK can follow.
The rules for every answer's fields and types are applied to the whole suite by
tests/sdk_rules.py; its own tests are at the end of this module."""

from __future__ import annotations

import json
import random

import pytest

import sdk_rules
from conftest import unique_email

PW = "correct horse battery staple"
NEW_PW = "an entirely new passphrase, thanks"
SCOPE = "openid profile offline_access"
CAPS = "mfa_required registration_required"
IOS = {"x-client-SKU": "MSAL.iOS", "x-client-Ver": "2.13.0", "client-request-id": "8a3d7c52-6f7e-4a0e-9b8c-1f2d3e4a5b6c"}
ANDROID = {"x-client-SKU": "MSAL.Android", "x-client-Ver": "8.1.0"}
JS = {"x-client-SKU": "msal.browser", "x-client-VER": "5.30.0"}


def sms(number: str) -> dict:
    return {"id": "m1", "channel": "sms", "target": number, "default": True, "created": 1}


def sign_in(api, email: str, *, prefix: str = "", headers: dict | None = None, password: str = PW):
    i = api.post(prefix + "oauth2/v2.0/initiate", headers, username=email, challenge_type="password oob redirect",
                 capabilities=CAPS)
    assert i.status == 200, i.body
    c = api.post(prefix + "oauth2/v2.0/challenge", headers, continuation_token=i["continuation_token"],
                 challenge_type="password oob redirect")
    assert c.status == 200 and c["challenge_type"] == "password", c.body
    return api.post(prefix + "oauth2/v2.0/token", headers, continuation_token=c["continuation_token"],
                    grant_type="password", password=password, scope=SCOPE, client_info="true")


# ------------------------------------------------------------------ item 1: URLs built from the authority

@pytest.mark.parametrize("path", [".well-known/openid-configuration", "v2.0/.well-known/openid-configuration",
                                  "contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration",
                                  "contoso.onmicrosoft.com/.well-known/openid-configuration",
                                  "00000000-0000-0000-0000-0000000000aa/v2.0/.well-known/openid-configuration"])
def test_discovery_where_every_sdk_looks_for_it(server, api, path):
    """iOS's silent refresh loads <authority>/v2.0/.well-known/openid-configuration
    (IdentityCore MSIDAADEndpointProvider) and needs issuer, authorization_endpoint
    and token_endpoint as strings; MSAL Python loads <authority>/.well-known/…"""
    r = api.get(path)
    assert r.status == 200, (path, r.body)
    assert r["issuer"] == server.settings.issuer
    assert r["token_endpoint"] == server.settings.issuer + "/oauth2/v2.0/token"
    assert isinstance(r["authorization_endpoint"], str)


def test_a_tenant_path_authority_reaches_every_endpoint(server, api, make_user):
    """An app may give Entra's authority shape (https://host/api/<tenant>): every URL the
    SDKs build from it works, and the tokens are the same."""
    email, user = make_user()
    t = sign_in(api, email, prefix="contoso.onmicrosoft.com/")
    assert t.status == 200, t.body
    r = api.post("contoso.onmicrosoft.com/oauth2/v2.0/token", grant_type="refresh_token",
                 refresh_token=t["refresh_token"], scope=SCOPE)
    assert r.status == 200, r.body
    keys = api.get("contoso.onmicrosoft.com/discovery/v2.0/keys")
    assert keys.status == 200 and keys["keys"]
    wrong_method = api.get("contoso.onmicrosoft.com/oauth2/v2.0/token")
    assert wrong_method.status == 405 and "POST" in wrong_method.headers["allow"]
    assert api.post("contoso.onmicrosoft.com/nothing/here").status == 404


def test_android_refreshes_at_oAuth2_with_a_capital_A(server, api, make_user):
    """MSAL Android posts the refresh to <authority>/oAuth2/v2.0/token
    (MicrosoftStsOAuth2Configuration, never loading discovery)."""
    email, _ = make_user()
    t = sign_in(api, email)
    r = api.post("oAuth2/v2.0/token", ANDROID, grant_type="refresh_token", refresh_token=t["refresh_token"],
                 scope=SCOPE, client_info="true")
    assert r.status == 200 and r["id_token"] and r["client_info"], r.body


# ------------------------------------------------------------------ item 3: every contract error is a 400

def test_slow_down_is_a_400_with_retry_after(server, api, make_user):
    """iOS and Android read error bodies only with 400 (iOS also 401): a 429
    reached the app as an unexpected response, without its retry hint."""
    email, _ = make_user(password=None)
    with server.override(resend_interval_seconds=60):
        i = api.post("oauth2/v2.0/initiate", IOS, username=email, challenge_type="oob redirect")
        c = api.post("oauth2/v2.0/challenge", IOS, continuation_token=i["continuation_token"], challenge_type="oob redirect")
        again = api.post("oauth2/v2.0/challenge", IOS, continuation_token=c["continuation_token"], challenge_type="oob redirect")
    assert again.status == 400 and again["error"] == "slow_down" and 0 < int(again.headers["retry-after"]) <= 60
    assert again.headers["client-request-id"] == IOS["client-request-id"]      # iOS reads it as a UUID


# ------------------------------------------------------------------ item 2: answers each SDK can follow

@pytest.fixture
def account_with_sms(make_user, policies):
    def make():
        number = "+49151" + "".join(random.choice("0123456789") for _ in range(8))
        email, _ = make_user(methods=[sms(number)])
        policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
        return email, number
    return make


def reset_then_sign_in(api, outbox, email: str, headers: dict):
    s = api.post("resetpassword/v1.0/start", headers, username=email, challenge_type="oob redirect", capabilities=CAPS)
    c = api.post("resetpassword/v1.0/challenge", headers, continuation_token=s["continuation_token"],
                 challenge_type="oob redirect")
    v = api.post("resetpassword/v1.0/continue", headers, continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    sub = api.post("resetpassword/v1.0/submit", headers, continuation_token=v["continuation_token"], new_password=NEW_PW)
    p = api.post("resetpassword/v1.0/poll_completion", headers, continuation_token=sub["continuation_token"])
    assert p["status"] == "succeeded", p.body
    return api.post("oauth2/v2.0/token", headers, continuation_token=p["continuation_token"],
                    grant_type="continuation_token", username=email, scope=SCOPE, client_info="true")


def test_ios_gets_a_redirect_where_it_cannot_follow_mfa_after_a_reset(server, api, outbox, account_with_sms):
    """MSAL iOS answers mfa_required on the sign-in after a reset with a general error
    (MSALNativeAuthSignInController signIn(username:grantType:continuationToken:)); the
    redirect is its typed browserRequired. MSAL JS and Android 8 follow mfa_required."""
    email, _ = account_with_sms()
    ios = reset_then_sign_in(api, outbox, email, IOS)
    assert ios.status == 200 and ios["challenge_type"] == "redirect" and ios["redirect_reason"], ios.body
    assert "access_token" not in ios.body
    for headers in (JS, ANDROID, {}):
        email, _ = account_with_sms()
        other = reset_then_sign_in(api, outbox, email, headers)
        assert other.status == 400 and other["suberror"] == "mfa_required", (headers, other.body)


def test_ios_still_follows_registration_after_a_reset(server, api, outbox, make_user, policies):
    email, _ = make_user()
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
    r = reset_then_sign_in(api, outbox, email, IOS)
    assert r.status == 400 and r["suberror"] == "registration_required", r.body


# ------------------------------------------------------------------ the validator itself

def _answer(name: str, status: int, body: dict, headers: dict | None = None) -> list[str]:
    h = {"client-request-id": "8a3d7c52-6f7e-4a0e-9b8c-1f2d3e4a5b6c", "x-ms-request-id": "x"}
    h.update(headers or {})
    return sdk_rules.check(name, "POST", {}, status, h, json.loads(json.dumps(body)))


ERROR = {"error": "invalid_grant", "error_description": "d", "error_codes": [55200], "timestamp": "t",
         "trace_id": "t", "correlation_id": "c"}
OOB = {"continuation_token": "ct", "challenge_type": "oob", "binding_method": "prompt", "challenge_channel": "sms",
       "challenge_target_label": "+49*****5678", "code_length": 6, "interval": 60}


@pytest.mark.parametrize("name,status,body,rule", [
    ("signin_challenge", 429, {**ERROR, "error": "slow_down"}, "R1"),
    ("signin_challenge", 200, {**OOB, "code_length": "6"}, "R8"),
    ("signin_challenge", 200, {**OOB, "challenge_target_label": ""}, "R8"),
    ("signin_challenge", 200, {**OOB, "challenge_type": "otp"}, "R5"),
    ("signin_introspect", 200, {"continuation_token": "ct", "methods": []}, "R12"),
    ("signin_introspect", 200, {"continuation_token": "ct", "methods": [{"id": 7, "challenge_type": "oob",
                                                                           "challenge_channel": "sms"}]}, "R12"),
    ("register_challenge", 200, {**OOB}, "R8"),
    ("token", 200, {"token_type": "bearer", "access_token": "a", "id_token": "i", "refresh_token": "r",
                    "client_info": "c", "scope": "s", "expires_in": 10}, "R13"),
    ("token", 400, {**ERROR, "suberror": "mfa_required"}, "R11"),
    ("signup_continue", 400, {**ERROR, "error": "credential_required", "continuation_token": "ct"}, "R9"),
    ("signup_continue", 400, {**ERROR, "error": "attributes_required", "continuation_token": "ct",
                              "required_attributes": [{"name": "city", "type": "string"}]}, "R9"),
    ("reset_submit", 200, {"continuation_token": "ct", "poll_interval": 0}, "R14"),
    ("reset_poll_completion", 200, {"status": "done"}, "R14"),
    ("signin_initiate", 400, {**ERROR, "error_codes": ["55200"]}, "R2"),
    ("signin_initiate", 200, {"continuation_token": "ct", "correlation_id": "not-a-uuid"}, "R6"),
])
def test_the_validator_catches_what_an_sdk_rejects(name, status, body, rule):
    found = _answer(name, status, body)
    assert any(f": {rule}:" in f for f in found), found


def test_the_validator_passes_good_answers():
    assert _answer("signin_challenge", 200, OOB) == []
    assert _answer("register_challenge", 200, {**{k: v for k, v in OOB.items() if k != "challenge_target_label"},
                                               "challenge_target": "+4915112345678"}) == []
    assert _answer("token", 400, {**ERROR, "suberror": "mfa_required", "continuation_token": "ct"}) == []
    assert _answer("signin_challenge", 200, {"challenge_type": "redirect", "redirect_reason": "r"}) == []
    assert _answer("signin_initiate", 400, {**ERROR, "error": "slow_down"}, {"Retry-After": "12"}) == []
