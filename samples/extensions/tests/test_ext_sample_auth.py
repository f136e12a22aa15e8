"""Every endpoint checks the bearer token as an Entra extension should (against the
configured issuer), and refuses bodies that are not the event's JSON."""

from __future__ import annotations

import base64
import json
import socket
import time

import jwt
import pytest

from ext_sample_testkit import (  # noqa: F401  (fixtures)
    AUDIENCE, CALLER, attribute_collection, http, FORGER_KEY, SIGNING_KEY_2, Client, client, issuer, make_token, sample_files, sample_host,
    serve, settings_for, signup_submit, token_issuance,
)

ENDPOINTS = {
    "token-issuance-start": lambda: token_issuance({"id": "90847c2a-e29d-4d2f-9f54-c5b4d3f26471"}),
    "attribute-collection-start": lambda: attribute_collection("attributeCollectionStart", {}),
    "attribute-collection-submit": lambda: signup_submit("WELCOME-2026"),
    "otp-send": lambda: {"type": "microsoft.graph.authenticationEvent.emailOtpSend",
                         "data": {"@odata.type": "microsoft.graph.onOtpSendCalloutData",
                                  "otpContext": {"identifier": "a@example.com", "oneTimeCode": "12345678"}}},
    "password-submit": lambda: {"type": "microsoft.graph.authenticationEvent.passwordSubmit",
                                "data": {"@odata.type": "microsoft.graph.onPasswordSubmitCalloutData",
                                         "encryptedPasswordContext": "a.b.c.d.e"}},
}


def _assert_401(response, fragment: str = "") -> None:
    assert response.status == 401, response
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"] == "invalid_token"
    assert fragment in body["error_description"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_good_token_is_accepted_and_bad_ones_are_refused_on_every_endpoint(client, path):
    payload = ENDPOINTS[path]()
    if path != "password-submit":  # its made-up JWE is a 400, after the token passed
        assert client.post(path, payload).status == 200
    else:
        assert client.post(path, payload).status == 400
    _assert_401(client.post(path, payload, token=None), "bearer token is required")
    _assert_401(client.post(path, payload, token=client.token(exp=int(time.time()) - 3600)), "expired")
    _assert_401(client.post(path, payload, token=client.token(aud="api://someone-else")), "another audience")
    _assert_401(client.post(path, payload, token=client.token(azp="11111111-2222-3333-4444-555555555555")),
                "not issued to")


def test_missing_or_wrong_authorization_header(client):
    payload = ENDPOINTS["token-issuance-start"]()
    _assert_401(client.post("token-issuance-start", payload, authorization="Basic dXNlcjpwYXNz"))
    _assert_401(client.post("token-issuance-start", payload, authorization="Bearer"))
    _assert_401(client.post("token-issuance-start", payload, authorization="Bearer not.a.jwt"), "not a JWT")
    _assert_401(client.post("token-issuance-start", payload, authorization="Bearer abc"))
    ok = client.token()
    assert client.post("token-issuance-start", payload, authorization=f"bearer   {ok}").status == 200


@pytest.mark.parametrize("overrides, fragment", [
    ({"iss": "https://login.microsoftonline.com/aaaabbbb-0000-cccc-1111-dddd2222eeee/v2.0"}, "another issuer"),
    ({"iss": None}, ""),
    ({"aud": None}, ""),
    ({"exp": None}, ""),
    ({"aud": ["api://someone-else", "api://another"]}, "another audience"),
    ({"nbf": int(time.time()) + 3600}, ""),
    ({"iat": int(time.time()) + 3600}, ""),
    ({"azp": None, "appid": None}, "names no caller"),
    ({"azp": CALLER, "appid": "11111111-2222-3333-4444-555555555555"}, "not issued to"),
    ({"azp": "11111111-2222-3333-4444-555555555555", "appid": CALLER}, "not issued to"),
    ({"azp": 42}, "not issued to"),
])
def test_claims_that_are_refused(client, overrides, fragment):
    response = client.post("token-issuance-start", ENDPOINTS["token-issuance-start"](),
                           token=client.token(**overrides))
    _assert_401(response, fragment)


def test_v1_tokens_with_appid_only_and_v2_tokens_with_azp_only_are_accepted(client):
    payload = ENDPOINTS["token-issuance-start"]()
    assert client.post("token-issuance-start", payload, token=client.token(azp=None, ver="1.0")).status == 200
    assert client.post("token-issuance-start", payload, token=client.token(appid=None)).status == 200
    # the caller id compares case-insensitively, as the Entra SDK does
    assert client.post("token-issuance-start", payload, token=client.token(azp=CALLER.upper(), appid=None)).status == 200
    # an audience list that includes ours
    assert client.post("token-issuance-start", payload, token=client.token(aud=["x", AUDIENCE])).status == 200


def test_a_token_expired_within_the_leeway_passes_and_beyond_it_fails(client):
    payload = ENDPOINTS["token-issuance-start"]()
    now = int(time.time())
    assert client.post("token-issuance-start", payload, token=client.token(exp=now - 30)).status == 200
    _assert_401(client.post("token-issuance-start", payload, token=client.token(exp=now - 120)), "expired")


def test_forged_and_confused_signatures_are_refused(client):
    payload = ENDPOINTS["token-issuance-start"]()
    # another key under our kid
    _assert_401(client.post("token-issuance-start", payload, token=client.token(key=FORGER_KEY)), "signature")
    # HS256 keyed with the public key (algorithm confusion), and alg none
    _assert_401(client.post("token-issuance-start", payload, token=client.token(alg="HS256")), "RS256")
    good = client.token()
    header, body, _ = good.split(".")
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "key-1"}).encode()).rstrip(b"=").decode()
    _assert_401(client.post("token-issuance-start", payload, token=f"{none_header}.{body}."), "RS256")
    # a tampered payload under a genuine signature
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["aud"] = AUDIENCE + "x"
    other = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _assert_401(client.post("token-issuance-start", payload, token=f"{header}.{other}.{good.split('.')[2]}"))
    # a token without a kid
    no_kid = jwt.encode({"iss": client.issuer_url, "aud": AUDIENCE, "azp": CALLER, "exp": int(time.time()) + 60},
                        FORGER_KEY, algorithm="RS256")
    _assert_401(client.post("token-issuance-start", payload, token=no_kid), "no key id")


def test_keys_are_cached_and_fetched_again_once_for_an_unknown_kid(issuer, sample_files):
    host = serve.start_host(settings_for(issuer.url, sample_files / "rotation"))
    try:
        c = Client(host.base_url, issuer.url)
        payload = ENDPOINTS["token-issuance-start"]()
        before = issuer.jwks_fetches()
        for _ in range(5):
            assert c.post("token-issuance-start", payload).status == 200
        assert issuer.jwks_fetches() - before == 1, "the keys are fetched once, then cached"
        assert host.app.signing_keys.fetches == 1

        # an unknown kid: one more fetch, then 401
        _assert_401(c.post("token-issuance-start", payload, token=c.token(kid="key-unknown")), "kid")
        assert issuer.jwks_fetches() - before == 2

        # key rotation: the issuer adds key-2; a token signed with it triggers one fetch and passes
        issuer.keys["key-2"] = SIGNING_KEY_2.public_key()
        try:
            assert c.post("token-issuance-start", payload, token=c.token(key=SIGNING_KEY_2, kid="key-2")).status == 200
            assert issuer.jwks_fetches() - before == 3
            assert c.post("token-issuance-start", payload, token=c.token(key=SIGNING_KEY_2, kid="key-2")).status == 200
            assert c.post("token-issuance-start", payload).status == 200
            assert issuer.jwks_fetches() - before == 3
        finally:
            del issuer.keys["key-2"]
    finally:
        host.stop()


def test_unknown_kids_do_not_cause_a_fetch_per_request_within_the_minimum_interval(issuer, sample_files):
    host = serve.start_host(settings_for(issuer.url, sample_files / "throttle", JWKS_MIN_REFETCH_SECONDS="60"))
    try:
        c = Client(host.base_url, issuer.url)
        payload = ENDPOINTS["token-issuance-start"]()
        assert c.post("token-issuance-start", payload).status == 200
        for i in range(5):
            _assert_401(c.post("token-issuance-start", payload, token=c.token(kid=f"made-up-{i}")))
        assert host.app.signing_keys.fetches == 1
    finally:
        host.stop()


def test_an_unreachable_issuer_is_a_503_and_a_missing_setting_a_500(sample_files):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/api"
    with serve.running(settings_for(dead, sample_files / "dead")) as base_url:
        c = Client(base_url, dead)
        r = c.post("token-issuance-start", ENDPOINTS["token-issuance-start"]())
        assert r.status == 503 and r.json()["error"] == "temporarily_unavailable"
    settings = settings_for(dead, sample_files / "dead")
    del settings["EXTENSION_AUDIENCE"]
    with serve.running(settings) as base_url:
        c = Client(base_url, dead)
        r = c.post("token-issuance-start", ENDPOINTS["token-issuance-start"]())
        assert r.status == 500 and r.json() == {"error": "server_error",
                                                "error_description": "The extension is misconfigured; see its log."}


def test_a_plain_http_issuer_is_refused_unless_it_is_loopback_or_allowed(sample_files):
    settings = settings_for("http://issuer.example/api", sample_files / "http")
    with serve.running(settings) as base_url:
        r = http("POST", f"{base_url}/token-issuance-start", b"{}",
                 {"Authorization": "Bearer " + make_token("http://issuer.example/api")})
        assert r.status == 500  # a configuration problem, logged


# ------------------------------------------------------------------ bodies

@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"42", b'"text"', b"{}", b'{"data": []}',
                                 b'{"data": {}}', b'{"type": "microsoft.graph.authenticationEvent.tokenIssuanceStart"}',
                                 '{"data": {"@odata.type": "microsoft.graph.onTokenIssuanceStartCalloutData"'.encode(),
                                 b"\xff\xfe\x00"])
def test_malformed_bodies_are_a_400(client, raw):
    r = client.post("token-issuance-start", raw=raw)
    assert r.status == 400, r
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "invalid_request"


@pytest.mark.parametrize("path, payload", [
    # the body of another event
    ("token-issuance-start", signup_submit("WELCOME-2026")),
    ("attribute-collection-submit", token_issuance(None)),
    # right data type, wrong event type
    ("token-issuance-start", token_issuance(None) | {"type": "microsoft.graph.authenticationEvent.passwordSubmit"}),
    ("attribute-collection-submit", {"data": {"@odata.type": "microsoft.graph.onAttributeCollectionSubmitCalloutData"}}),
    ("otp-send", {"data": {"@odata.type": "microsoft.graph.onOtpSendCalloutData"}}),
    ("otp-send", {"data": {"@odata.type": "microsoft.graph.onOtpSendCalloutData",
                           "otpContext": {"identifier": "a@example.com"}}}),
    ("otp-send", {"data": {"@odata.type": "microsoft.graph.onOtpSendCalloutData",
                           "otpContext": {"identifier": "a@example.com", "oneTimeCode": "1", "channel": "fax"}}}),
    ("password-submit", {"data": {"@odata.type": "microsoft.graph.onPasswordSubmitCalloutData"}}),
    ("password-submit", {"data": {"@odata.type": "microsoft.graph.onPasswordSubmitCalloutData",
                                  "encryptedPasswordContext": 5}}),
])
def test_bodies_of_the_wrong_shape_are_a_400(client, path, payload):
    r = client.post(path, payload)
    assert r.status == 400, r
    assert r.json()["error"] == "invalid_request"


def test_the_token_is_checked_before_the_body(client):
    _assert_401(client.post("token-issuance-start", raw=b"not json", token=None))


def test_odata_types_and_keys_are_matched_case_insensitively(client):
    payload = token_issuance({"id": "90847c2a-e29d-4d2f-9f54-c5b4d3f26471"})
    payload["type"] = payload["type"].upper()
    data = payload.pop("data")
    del data["@odata.type"]
    data["@odata.Type"] = "#Microsoft.Graph.OnTokenIssuanceStartCallOutData"
    payload["Data"] = data
    r = client.post("token-issuance-start", payload)
    assert r.status == 200, r
    assert r.json()["data"]["actions"][0]["claims"]["tenant"] == "fabrikam"


def test_only_post_is_routed_and_health_needs_no_token(client):
    r = http("GET", f"{client.base_url}/token-issuance-start")
    assert r.status == 405
    r = http("GET", f"{client.base_url}/health")
    assert r.status == 200 and r.json() == {"status": "ok"}
