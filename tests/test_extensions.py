"""Custom authentication extensions: token issuance start end to end (the
sample app as a real extension), and the caller's bounds against a
programmable extension that is slow, broken or hostile (timeout, 5xx,
malformed answers, reserved claims, oversize, circuit breaker, both error
behaviours, SSRF guard); the admin CLI; the sign-in log.

Rows A105-A110 of the attack catalogue (SECURITY.md §7)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import jwt
import pytest

from shared.extensions import caller, config
from shared.storage import signinlog

from conftest import ROOT, unique_email
from extension_server import AUDIENCE, claims_answer, extensions, hostile, sample, sample_serve_module, sample_settings  # noqa: F401

PW = "correct horse battery staple"
SCOPE = "api://native-auth/access_as_user openid profile offline_access"


def sign_in(api, email: str, password: str = PW):
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password oob redirect")
    return api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                    password=password, scope=SCOPE, client_info="1")


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _token_ext(extensions, url: str, **over):
    return extensions(name="claims", event="tokenIssuanceStart", url=url,
                      claims={"access_token": ["roles", "plan"], "id_token": ["roles"]}, **over)


# ------------------------------------------------------------------ the sample as a real extension

def test_claims_from_the_extension_are_in_the_tokens_and_stay_current_at_refresh(server, api, make_user, extensions,
                                                                                  sample):
    base, roles = sample
    email, _ = make_user()
    roles.write_text(json.dumps({email: {"roles": ["reader", "writer"], "plan": "gold", "tenant": "contoso"}}))
    _token_ext(extensions, f"{base}/token-issuance-start")
    t = sign_in(api, email)
    assert t.status == 200, t.body
    at, idt = claims(t["access_token"]), claims(t["id_token"])
    assert at["roles"] == ["reader", "writer"] and at["plan"] == "gold"
    assert idt["roles"] == ["reader", "writer"] and "plan" not in idt       # the mapping decides per token
    assert "tenant" not in at                                                 # returned, not mapped: not issued
    assert at["iss"] == server.settings.issuer and at["oid"] == claims(t["id_token"])["oid"]
    roles.write_text(json.dumps({email: {"roles": ["reader"], "plan": "silver"}}))
    r = api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=t["refresh_token"], scope=SCOPE)
    assert r.status == 200 and claims(r["access_token"])["roles"] == ["reader"]
    assert claims(r["access_token"])["plan"] == "silver"
    entries = [e for e in signinlog.tail(server.storage, limit=100) if e.get("user_oid") == at["oid"]]
    logged = json.loads(entries[0]["extensions"])
    assert logged[0]["name"] == "claims" and logged[0]["outcome"] == "ok" and logged[0]["ms"] >= 0


def test_the_extension_receives_entras_payload_and_a_token_it_can_validate(server, api, make_user, extensions, hostile):
    email, user = make_user()
    _token_ext(extensions, hostile.url)
    hostile.answer = claims_answer({"roles": ["x"]})
    assert sign_in(api, email).status == 200
    call = hostile.calls[-1]
    body = call["body"]
    assert body["type"] == "microsoft.graph.authenticationEvent.tokenIssuanceStart"
    assert body["source"].startswith(f"/tenants/{server.settings.tenant_id}/applications/")
    data = body["data"]
    assert data["@odata.type"] == "microsoft.graph.onTokenIssuanceStartCalloutData"
    ctx = data["authenticationContext"]
    assert ctx["user"]["id"] == user.oid and ctx["user"]["mail"] == email and ctx["protocol"] == "OAUTH2.0"
    assert ctx["clientServicePrincipal"]["appId"] == api.client_id
    token = call["headers"]["authorization"].split(" ", 1)[1]
    jwks = jwt.PyJWKClient(f"{server.settings.issuer}/discovery/v2.0/keys")
    verified = jwt.decode(token, jwks.get_signing_key_from_jwt(token).key, algorithms=["RS256"], audience=AUDIENCE,
                          issuer=server.settings.issuer)
    assert verified["azp"] == caller.CALLER_APP_ID == verified["appid"]
    assert PW not in json.dumps(body)


# ------------------------------------------------------------------ failures: bounded, clean, never a 500

@pytest.mark.parametrize("setup, code", [
    (lambda h: setattr(h, "status", 500), 1003002),
    (lambda h: setattr(h, "status", 302), 1003002),
    (lambda h: setattr(h, "raw", b"{not json"), 1003003),
    (lambda h: setattr(h, "raw", b""), 1003009),
    (lambda h: setattr(h, "content_type", "text/html"), 1003006),
    (lambda h: setattr(h, "answer", {"data": {"@odata.type": "microsoft.graph.onTokenIssuanceStartResponseData",
                                              "actions": [claims_answer({})["data"]["actions"][0]] * 2}}), 1003010),
    (lambda h: setattr(h, "answer", {"data": {"@odata.type": "microsoft.graph.onTokenIssuanceStartResponseData",
                                              "actions": [{"@odata.type": "microsoft.graph.tokenIssuanceStart.other"}]}}),
     1003012),
    (lambda h: setattr(h, "answer", claims_answer(None)), 1003007),
    (lambda h: setattr(h, "answer", claims_answer({"roles": True})), 1003003),
    (lambda h: setattr(h, "answer", claims_answer({"roles": [{"a": 1}]})), 1003003),
    (lambda h: setattr(h, "answer", claims_answer({"": "x"})), 1003026),
    (lambda h: setattr(h, "answer", claims_answer({"roles": ["r" * 200] * 20})), 1003025),
    (lambda h: setattr(h, "raw", b'{"data": "' + b"x" * 70000 + b'"}'), 1003024),
], ids=["500", "redirect", "not-json", "empty", "content-type", "two-actions", "unknown-action", "null-claims",
        "boolean", "object-value", "empty-key", "claims-over-3kb", "answer-over-64kib"])
def test_a_broken_extension_fails_the_step_cleanly(server, api, make_user, extensions, hostile, setup, code):
    email, _ = make_user()
    _token_ext(extensions, hostile.url)
    setup(hostile)
    r = sign_in(api, email)
    assert r.status == 503 and r["error"] == "temporarily_unavailable" and r["error_codes"] == [code], r.body
    assert "access_token" not in r.body and r.headers["retry-after"] == "5"


@pytest.mark.parametrize("name", ["sub", "oid", "aud", "scp", "acrs", "WIDS", "xms_pdl", "email", "amr", "tid"])
def test_A105_an_extension_cannot_set_a_reserved_claim(server, api, make_user, extensions, hostile, name):
    """A compromised or careless extension returns `sub`, `oid`, `scp`, `acrs`, …:
    the answer is refused as malformed, no token carries it (it cannot even be mapped)."""
    email, user = make_user()
    _token_ext(extensions, hostile.url)
    hostile.answer = claims_answer({name: "attacker", "roles": ["r"]})
    r = sign_in(api, email)
    assert r.status == 503 and r["error_codes"] == [1003003], r.body
    with pytest.raises(config.ExtensionConfigError, match="reserved"):
        config.validate({"name": "x", "event": "tokenIssuanceStart", "url": hostile.url, "resource": AUDIENCE,
                         "claims": {"access_token": [name]}}, server.settings)


def test_A106_a_slow_extension_never_hangs_a_sign_in(server, api, make_user, extensions, hostile):
    """An extension that answers after 5 s with a 300 ms timeout: two attempts
    (one retry), then 1003005; the sign-in answers in well under a second per
    attempt, and the same continuation token works once the extension is fast."""
    email, _ = make_user()
    _token_ext(extensions, hostile.url, timeout_ms=300)
    hostile.delay = 5.0
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password oob redirect")
    started = time.monotonic()
    r = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password", password=PW,
                 scope=SCOPE)
    elapsed = time.monotonic() - started
    assert r.status == 503 and r["error_codes"] == [1003005], r.body
    assert len(hostile.calls) == 2 and elapsed < 4, (len(hostile.calls), elapsed)   # bounded, not a speed test
    hostile.delay = 0.0
    ok = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password", password=PW,
                  scope=SCOPE)
    assert ok.status == 200, ok.body                       # nothing was issued, the flow was not ended


def test_a_5xx_is_retried_once(server, api, make_user, extensions, hostile):
    email, _ = make_user()
    _token_ext(extensions, hostile.url)
    hostile.script = [(503, {}), (200, claims_answer({"roles": ["after-retry"]}))]
    r = sign_in(api, email)
    assert r.status == 200 and claims(r["access_token"])["roles"] == ["after-retry"] and len(hostile.calls) == 2
    hostile.reset()
    _token_ext(extensions, hostile.url, max_retries=0)
    hostile.script = [(503, {}), (200, claims_answer({"roles": ["x"]}))]
    assert sign_in(api, email).status == 503 and len(hostile.calls) == 1


def test_A107_a_failing_extension_trips_its_circuit_breaker(server, api, make_user, extensions, hostile, monkeypatch):
    """Five failures in a row open the circuit: the next sign-ins fail at once
    without calling the extension (1003004); after the open period one trial
    call goes through, and a success closes it."""
    email, _ = make_user()
    _token_ext(extensions, hostile.url, max_retries=0)
    hostile.status = 500
    for _ in range(caller.BREAKER_FAILURES):
        assert sign_in(api, email)["error_codes"] == [1003002]
    calls = len(hostile.calls)
    r = sign_in(api, email)
    assert r.status == 503 and r["error_codes"] == [1003004] and len(hostile.calls) == calls
    monkeypatch.setattr(caller, "BREAKER_OPEN_SECONDS", 0.2)
    key = f"claims|{api.client_id}"                 # one breaker per extension and client
    caller._breakers[key].open_until = time.monotonic() - 0.01
    hostile.status, hostile.answer = 200, claims_answer({"roles": ["back"]})
    r = sign_in(api, email)
    assert r.status == 200 and claims(r["access_token"])["roles"] == ["back"]
    assert caller._breakers[key].failures == 0


def test_on_error_continue_issues_tokens_without_the_claims(server, api, make_user, extensions, hostile):
    email, _ = make_user()
    _token_ext(extensions, hostile.url, on_error="continue", timeout_ms=200, max_retries=0)
    hostile.delay = 1.0
    r = sign_in(api, email)
    assert r.status == 200 and "roles" not in claims(r["access_token"])
    entry = next(e for e in signinlog.tail(server.storage, limit=50) if e.get("extensions"))
    assert json.loads(entry["extensions"])[0]["outcome"] == "timeout"


def test_an_extension_applies_only_to_its_clients(server, api, make_user, extensions, hostile):
    email, _ = make_user()
    _token_ext(extensions, hostile.url, clients=["11111111-2222-3333-4444-555555555555"])
    hostile.answer = claims_answer({"roles": ["x"]})
    r = sign_in(api, email)
    assert r.status == 200 and "roles" not in claims(r["access_token"]) and hostile.calls == []


def test_A108_ssrf_guard(server):
    """Only administrators configure extensions, and still: in Azure mode an
    http URL, a literal private address and a name that resolves to a private
    address are refused (at save and at call time); redirects are never followed."""
    azure = dataclasses.replace(server.settings, environment="azure")
    base = {"name": "x", "event": "tokenIssuanceStart", "resource": AUDIENCE, "claims": {"access_token": ["roles"]}}
    for url in ("http://example.com/x", "https://10.0.0.5/x", "https://169.254.169.254/metadata", "https://[::1]/x",
                "https://user:pw@example.com/x", "ftp://example.com/x", "https://example.com/x#frag"):
        with pytest.raises(config.ExtensionConfigError):
            config.validate({**base, "url": url}, azure)
    ext = config.validate({**base, "url": "https://localhost:9/x"}, azure)    # a name: checked when called
    with pytest.raises(caller.ExtensionError) as err:
        caller.call(server.storage, azure, ext, {"probe": True})
    assert err.value.kind == "url"


def test_A109_one_extension_per_event_and_client(server, extensions, hostile):
    """Two extensions answering the same event for the same client would make
    which one decides depend on their names: the second is refused."""
    _token_ext(extensions, hostile.url)
    with pytest.raises(config.ExtensionConfigError, match="already answers"):
        extensions(name="claims-2", event="tokenIssuanceStart", url=hostile.url, claims={"access_token": ["roles"]})
    extensions(name="claims-off", event="tokenIssuanceStart", url=hostile.url, claims={"access_token": ["roles"]},
               state="off")


@pytest.mark.parametrize("bad", [
    {"timeout_ms": 50}, {"timeout_ms": 60000}, {"max_retries": 3}, {"on_error": "ignore"}, {"event": "onSignIn"},
    {"claims": {"refresh_token": ["x"]}}, {"claims": {"access_token": ["bad name!"]}}, {"unknown": 1},
    {"resource": ""}, {"clients": []},
])
def test_invalid_definitions_are_refused(server, hostile, bad):
    base = {"name": "x", "event": "tokenIssuanceStart", "url": hostile.url, "resource": AUDIENCE,
            "claims": {"access_token": ["roles"]}}
    with pytest.raises(config.ExtensionConfigError):
        config.validate({**base, **bad}, server.settings)


def test_A110_nothing_the_extension_returns_is_logged_raw(server, api, make_user, extensions, hostile, caplog):
    """An extension returning a secret-looking claim value: the tokens carry
    it (mapped), the logs never do."""
    email, _ = make_user()
    _token_ext(extensions, hostile.url)
    marker = "secret-marker-" + unique_email("m").split("@")[0]
    hostile.answer = claims_answer({"roles": [marker]})
    with caplog.at_level("DEBUG"):
        r = sign_in(api, email)
    assert r.status == 200 and claims(r["access_token"])["roles"] == [marker]
    assert marker not in caplog.text


def admin(server, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTH_ENVIRONMENT": "local",
           "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
           "AUTH_TABLE_PREFIX": server.settings.table_prefix, "AUTH_ISSUER": server.settings.issuer}
    return subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_admin_configures_and_test_calls_extensions(server, make_user, hostile):
    email, _ = make_user()
    definition = {"name": "cli-claims", "event": "tokenIssuanceStart", "url": hostile.url, "resource": AUDIENCE,
                  "claims": {"access_token": ["roles"]}, "clients": ["33333333-0000-0000-0000-000000000009"]}
    try:
        out = admin(server, "extensions", "create", "-", stdin=json.dumps(definition))
        assert out.returncode == 0 and "saved extension 'cli-claims'" in out.stdout, out.stderr
        listed = admin(server, "extensions", "list")
        assert "cli-claims" in listed.stdout and "tokenIssuanceStart" in listed.stdout
        hostile.answer = claims_answer({"roles": ["from-cli"]})
        tested = admin(server, "extensions", "test", "cli-claims", "--user", email)
        assert tested.returncode == 0 and "from-cli" in tested.stdout, tested.stdout + tested.stderr
        hostile.status = 500
        failed = admin(server, "extensions", "test", "cli-claims", "--user", email)
        assert failed.returncode == 1 and "AADSTS1003002" in failed.stdout
        bad = admin(server, "extensions", "create", "-", stdin=json.dumps({**definition, "timeout_ms": 1}))
        assert bad.returncode == 2 and "timeout_ms" in bad.stderr
        assert admin(server, "extensions", "disable", "cli-claims").returncode == 0
        assert admin(server, "extensions", "delete", "cli-claims").returncode == 0
        assert admin(server, "extensions", "delete", "cli-claims").returncode == 2
    finally:
        config.delete(server.storage, "cli-claims")


def test_A106_an_answer_trickled_byte_by_byte_is_cut_at_the_deadline(server, api, make_user, extensions):
    """The socket timeout restarts with every byte; the attempt has its own deadline (an outside
    review held a sign-in for 16 s with a 300 ms timeout this way)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                listener.settimeout(0.2)
                conn, _ = listener.accept()
            except OSError:
                continue
            body = json.dumps(claims_answer({"roles": ["slow"]})).encode()
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n")
                for byte in body:
                    if stop.is_set():
                        break
                    conn.sendall(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        email, _ = make_user()
        _token_ext(extensions, f"http://127.0.0.1:{listener.getsockname()[1]}/x", timeout_ms=300)
        started = time.monotonic()
        r = sign_in(api, email)
        assert r.status == 503 and r["error_codes"] == [1003005], r.body
        assert time.monotonic() - started < 3, "two attempts of 300 ms, not the trickle's pace"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("on_error", ["fail", "continue"])
def test_a_deeply_nested_answer_is_a_body_error_and_the_breaker_recovers(server, api, make_user, extensions, hostile,
                                                                         on_error):
    """`[` × 60000 made json.loads raise RecursionError: a 500, even with continue, and a half-open
    breaker stuck for good (outside review F3/F4)."""
    email, _ = make_user()
    _token_ext(extensions, hostile.url, on_error=on_error, max_retries=0)
    hostile.raw = b"[" * 60000
    r = sign_in(api, email)
    if on_error == "fail":
        assert r.status == 503 and r["error_codes"] == [1003003], r.body
    else:
        assert r.status == 200 and "roles" not in claims(r["access_token"])
    key = f"claims|{api.client_id}"
    b = caller._breakers[key]
    b.failures, b.open_until, b.trial = caller.BREAKER_FAILURES, time.monotonic() - 1, False   # open, period over
    r = sign_in(api, email)                                       # the trial call meets the bad answer again
    assert not caller._breakers[key].trial, "a failed trial must not leave the breaker half-open"
    hostile.raw, hostile.answer = None, claims_answer({"roles": ["ok"]})
    caller._breakers[key].open_until = time.monotonic() - 1
    r = sign_in(api, email)
    assert r.status == 200 and claims(r["access_token"])["roles"] == ["ok"], r.body


def test_a_failing_client_does_not_open_the_breaker_for_another(server, api, make_user, extensions, hostile):
    from shared.storage import directory as directory_mod

    other = "44444444-0000-0000-0000-0000000000e1"
    directory_mod.register_client(server.storage, other, "another app")
    email, _ = make_user()
    _token_ext(extensions, hostile.url, max_retries=0)
    hostile.status = 500
    for _ in range(caller.BREAKER_FAILURES):
        sign_in(api, email)
    assert sign_in(api, email)["error_codes"] == [1003004]           # open for this client
    hostile.status, hostile.answer = 200, claims_answer({"roles": ["other-app"]})
    i = api.post("oauth2/v2.0/initiate", client_id=other, username=email, challenge_type="password oob redirect")
    c = api.post("oauth2/v2.0/challenge", client_id=other, continuation_token=i["continuation_token"],
                 challenge_type="password oob redirect")
    t = api.post("oauth2/v2.0/token", client_id=other, continuation_token=c["continuation_token"],
                 grant_type="password", password=PW, scope=SCOPE)
    assert t.status == 200 and claims(t["access_token"])["roles"] == ["other-app"], t.body


@pytest.mark.parametrize("url", ["https://example.com:99999/x", "https://a..b/x", "https://" + "a" * 64 + ".com/x",
                                 "https://[64:ff9b::a9fe:a9fe]/x", "https://[2002:7f00:1::]/x", "https://[::127.0.0.1]/x",
                                 "https://[fec0::1]/x", "https://[::ffff:0:7f00:1]/x",
                                 "https://[64:ff9b:1:7f00:0:100:808:808]/x", "https://[ff0e::1]/x",
                                 "https://168.63.129.16/x"])
def test_A108_more_urls_the_guard_refuses(server, url):
    azure = dataclasses.replace(server.settings, environment="azure")
    with pytest.raises(config.ExtensionConfigError):
        config.validate({"name": "x", "event": "tokenIssuanceStart", "url": url, "resource": AUDIENCE,
                         "claims": {"access_token": ["roles"]}}, azure)


def test_A105_claims_other_apis_act_on_and_this_services_own_audiences_are_refused(server, hostile):
    base = {"name": "x", "event": "tokenIssuanceStart", "url": hostile.url, "resource": AUDIENCE}
    for name in ("scope", "act", "entitlements", "email_verified", "phone_number", "cid"):
        with pytest.raises(config.ExtensionConfigError, match="reserved"):
            config.validate({**base, "claims": {"access_token": [name]}}, server.settings)
    for resource in ("api://native-auth", server.settings.account_resource, server.settings.issuer):
        with pytest.raises(config.ExtensionConfigError, match="resource"):
            config.validate({**base, "resource": resource, "claims": {"access_token": ["roles"]}}, server.settings)


def test_A105_the_client_id_of_a_registered_app_is_refused_as_resource_and_roles_stay_settable(server, hostile):
    """The extension's bearer token has `aud` = its resource: the client id of an app registered here would
    make it a token that app accepts. `roles` (app roles from the customer's data) is what extensions are
    for, so it stays settable; `wids` and `groups` do not."""
    import uuid

    from shared.storage import directory as directory_mod

    other = f"app-{uuid.uuid4().hex[:8]}"
    directory_mod.register_client(server.storage, other, "another app")
    base = {"name": f"r-{uuid.uuid4().hex[:6]}", "event": "tokenIssuanceStart", "url": hostile.url}
    for spelling in (other, other.upper(), other + "/", f"api://{other}", f"spn:{other}"):
        with pytest.raises(config.ExtensionConfigError, match="resource"):
            config.save(server.storage, server.settings, {**base, "resource": spelling, "claims": {"access_token": ["plan"]}})
    later = f"app-{uuid.uuid4().hex[:8]}"          # an app registered after the extension was saved
    assert not config.names_a_client(server.storage, server.settings, f"api://{later}")
    directory_mod.register_client(server.storage, later, "registered later")
    assert config.names_a_client(server.storage, server.settings, f"api://{later}")   # checked before each call too
    assert "roles" not in config.RESERVED_CLAIMS and {"wids", "groups", "scp"} <= config.RESERVED_CLAIMS
    assert not any("_" in c and c.startswith("roles") for c in config.RESERVED_CLAIMS)


def test_a_slow_resolver_is_bounded_by_the_attempt_timeout(monkeypatch):
    """Name resolution runs inside the attempt's budget: a resolver that hangs is a timeout, not a held request."""
    import socket
    import time as time_mod

    def hang(*args, **kwargs):
        time_mod.sleep(3)
        raise OSError("late")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    started = time_mod.monotonic()
    with pytest.raises(caller.ExtensionError) as info:
        caller._getaddrinfo("slow.example.com", 443, 0.3)
    assert info.value.kind == "timeout" and time_mod.monotonic() - started < 1.5
