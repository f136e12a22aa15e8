"""Fuzzing.

1. schemathesis, for every operation of openapi/openapi.json (examples,
   coverage and fuzzing phases; positive and negative inputs), sent through
   the local host to the running app. The document is the one the app serves:
   the module first checks that GET /api/openapi.json returns exactly this
   file. Checks: no 5xx, status / content type / headers / body conform to
   the document, and every app error (>= 400) has the contract's shape.
2. Hand-written malformed forms on every POST endpoint: huge usernames and
   passwords (a 1 MB password is refused at once, never hashed), control
   characters, invalid UTF-8, duplicate keys, PHP-style array names, too many
   fields: always 400 with the contract's error shape, never 5xx.

Bounded: FUZZ_MAX_EXAMPLES (default 40) generated cases per operation in the
fuzzing phase; derandomized (stable) unless FUZZ_RANDOM=1.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from requests.models import RequestEncodingMixin
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.maintenance import ENDPOINTS

from conftest import DEV_CLIENT, ROOT, unique_email

DOC_FILE = ROOT / "openapi" / "openapi.json"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))
EXAMPLE_DEADLINE = timedelta(seconds=10)  # one request and its checks
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
ERROR_KEYS = {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"}
OPTIONAL_ERROR_KEYS = {"suberror", "continuation_token", "required_attributes", "invalid_attributes"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SCOPE = "openid profile offline_access"


def assert_contract_error(status: int, body: Any, where: str) -> None:
    """The contract's error shape (§1.2), checked independently of the document."""
    assert isinstance(body, dict), f"{where}: {status} body is not a JSON object: {body!r:.300}"
    missing = ERROR_KEYS - set(body)
    assert not missing, f"{where}: {status} error body lacks {sorted(missing)}: {body}"
    extra = set(body) - ERROR_KEYS - OPTIONAL_ERROR_KEYS
    assert not extra, f"{where}: {status} error body has unexpected keys {sorted(extra)}"
    assert isinstance(body["error"], str) and body["error"], where
    codes = body["error_codes"]
    assert isinstance(codes, list) and codes and all(isinstance(c, int) for c in codes), where
    assert body["error_description"].startswith(f"AADSTS{codes[0]}: "), where
    assert body["trace_id"] and body["correlation_id"], where


def is_app_error(status: int, path: str, method: str) -> bool:
    """Responses whose body must be the contract's error: every status >= 400
    the app produces, except the documented non-native-auth shapes (the sample
    API's RFC 6750 401, a refused CORS preflight's 403, /health's 503) and the
    host's 413."""
    if status < 400 or status == 413:
        return False
    if method == "OPTIONS" and status == 403:
        return False
    if (path, status) in (("/sample/sensitive", 401), ("/health", 503)):
        return False
    return True


# ---------------------------------------------------------------- schemathesis

# Methods the coverage phase tries on each path besides the documented ones.
# TRACE and QUERY are left out: the local devhost has no handler for them and
# http.server answers 501 with an HTML page before the app is reached (the
# Azure front end answers them itself).
UNEXPECTED_METHODS = ["get", "put", "post", "delete", "patch"]

schema = schemathesis.openapi.from_path(
    DOC_FILE, config=schemathesis.Config.from_dict({
        "phases": {"coverage": {"unexpected-methods": UNEXPECTED_METHODS}},
        "generation": {"database": "none"},
    }))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
SEEN: dict[str, set[int]] = {}
_seen_lock = threading.Lock()


@pytest.fixture(scope="module")
def served(server):
    """The schema fuzzed here is the document the app serves."""
    from conftest import Api

    r = Api(server.host.base_url).get("openapi.json")
    assert r.status == 200 and r.raw == DOC_FILE.read_bytes(), "GET /api/openapi.json differs from the file"
    return server


def _empty_form(case) -> bool:
    if not isinstance(case.body, dict) or not (case.media_type or "").startswith("application/x-www-form"):
        return False
    return RequestEncodingMixin._encode_params(case.body) == ""


def fuzz_operation(case, served):
    # requests sends a body that encodes to "" with Transfer-Encoding: chunked
    # (no Content-Length), which the devhost refuses with 411 (Azure accepts
    # it); send such an empty form the way browsers do, with Content-Length: 0.
    headers = {"Content-Length": "0"} if _empty_form(case) else None
    response = case.call(base_url=served.host.base_url, headers=headers, timeout=30)
    method, path, status = case.method.upper(), case.path, response.status_code
    where = f"{method} {path} ({case.operation.label})"
    with _seen_lock:
        SEEN.setdefault(case.operation.label, set()).add(status)
    assert status < 500, f"{where}: {status} {response.text[:500]}"
    if method != case.operation.method.upper():
        # The coverage phase's unexpected-method probe: the catch-all answers
        # 405 on the native-auth POST paths. (GET-only paths answer 404: see
        # test_openapi.test_wrong_method_on_a_get_endpoint_is_405.)
        expected = {405} if path.lstrip("/") in ENDPOINTS else {404, 405}
        assert status in expected, f"{where}: {status}"
        assert_contract_error(status, response.json(), where)
        return
    case.validate_response(response, checks=CHECKS)
    if is_app_error(status, path, method):
        assert_contract_error(status, response.json(), where)


# One pytest test per operation (test_fuzz_<operationId>), each running the
# examples, coverage and fuzzing phases for that operation.
OPERATION_IDS = [op["operationId"] for item in json.loads(DOC_FILE.read_text(encoding="utf-8"))["paths"].values()
                 for op in item.values() if isinstance(op, dict) and "operationId" in op]
for _op_id in OPERATION_IDS:
    def _test(case, served):
        fuzz_operation(case, served)

    _test.__name__ = _test.__qualname__ = f"test_fuzz_{_op_id}"
    globals()[_test.__name__] = pytest.mark.timeout(120)(schema.include(operation_id=_op_id).parametrize()(
        settings(max_examples=MAX_EXAMPLES, deadline=EXAMPLE_DEADLINE, database=None, derandomize=not RANDOM,
                 suppress_health_check=list(HealthCheck))(_test)))
del _test, _op_id


# ---------------------------------------------------------------- hand-written malformed forms

POST_PATHS = sorted(ENDPOINTS)
MB = 1_000_000
MAX_PASSWORD_CHARS = 256  # the longest password the policy allows (README: maximum 256)


@pytest.fixture
def hashed_lengths(monkeypatch):
    """Lengths of every password that reached argon2 (any PasswordHasher) during the test."""
    import argon2

    seen: list[int] = []
    real_hash, real_verify = argon2.PasswordHasher.hash, argon2.PasswordHasher.verify

    def spy_hash(self, password, *a, **k):
        seen.append(len(password))
        return real_hash(self, password, *a, **k)

    def spy_verify(self, hash_, password, *a, **k):
        seen.append(len(password))
        return real_verify(self, hash_, password, *a, **k)

    monkeypatch.setattr(argon2.PasswordHasher, "hash", spy_hash)
    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy_verify)
    return seen


def send(api, path: str, body: bytes, headers: dict[str, str] | None = None):
    """POST exactly these bytes and headers (http.client adds only Host and
    Content-Length; urllib would add a form Content-Type of its own)."""
    from conftest import Resp

    url = urlsplit(api.base_url + "/" + path)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    started = time.perf_counter()
    try:
        conn.request("POST", url.path, body=body, headers=FORM if headers is None else headers)
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return Resp(r.status, parsed, {k.lower(): v for k, v in r.getheaders()}, raw), elapsed


def expect_error(r, where: str, status: int = 400) -> None:
    assert r.status == status, f"{where}: expected {status}, got {r.status}: {r.body!r:.300}"
    assert r.headers.get("content-type", "").startswith("application/json"), where
    assert r.headers.get("x-ms-request-id"), where
    assert_contract_error(r.status, r.body, where)


def form(**fields: str) -> bytes:
    from urllib.parse import urlencode

    return urlencode(fields).encode()


BASE = {"client_id": DEV_CLIENT, "continuation_token": "x", "grant_type": "password", "scope": SCOPE,
        "challenge_type": "password oob redirect"}

# name -> the raw body; each must be refused with 400 on every POST endpoint
MALFORMED: dict[str, bytes] = {
    "huge_username_over_value_limit": form(**BASE, username="a" * 10_000 + "@example.com"),
    "huge_username_over_body_limit": form(**BASE, username="a" * 100_000 + "@example.com"),
    "1mb_password": form(**BASE, username="a@example.com", password="p" * MB),
    "1mb_new_password": form(**BASE, new_password="p" * MB),
    "60kb_password_over_value_limit": form(**BASE, username="a@example.com", password="p" * 60_000),
    "nul_in_client_id": form(**{**BASE, "client_id": DEV_CLIENT + "\x00"}),
    "nul_in_name": b"client_id=" + DEV_CLIENT.encode() + b"&user%00name=a%40example.com",
    "control_chars_in_client_id": form(**{**BASE, "client_id": "\x01\x02\x1b[31m\x7f"}),
    "crlf_in_client_id": form(**{**BASE, "client_id": DEV_CLIENT + "\r\nX-Injected: 1"}),
    "raw_invalid_utf8": b"client_id=\xff\xfe\xfd&username=a%40example.com",
    "percent_encoded_invalid_utf8": b"client_id=%FF%FE&username=a%40example.com",
    "overlong_utf8": b"client_id=%C0%AF&username=a%40example.com",
    "lone_surrogate_utf8": b"client_id=%ED%A0%80&username=a%40example.com",
    "duplicate_client_id": form(**BASE) + b"&client_id=" + DEV_CLIENT.encode(),
    "duplicate_same_value_twice": b"client_id=" + DEV_CLIENT.encode() + b"&client_id=" + DEV_CLIENT.encode(),
    "array_client_id": b"client_id%5B%5D=" + DEV_CLIENT.encode() + b"&username%5B%5D=a%40example.com",
    "array_username_and_token": (b"client_id=" + DEV_CLIENT.encode() + b"&username[]=a&challenge_type=oob+redirect"
                                 b"&continuation_token[]=x&grant_type[]=password"),
    "indexed_array_client_id": b"client_id[0]=" + DEV_CLIENT.encode() + b"&client_id[1]=x",
    "too_many_fields": b"&".join(b"f%d=v" % i for i in range(70)) + b"&client_id=" + DEV_CLIENT.encode(),
    "empty_body": b"",
    "only_separators": b"&&&&=&=",
}


@pytest.mark.parametrize("case_name", sorted(MALFORMED))
@pytest.mark.parametrize("path", POST_PATHS)
def test_malformed_form_is_400_contract_error(api, hashed_lengths, path, case_name):
    r, elapsed = send(api, path, MALFORMED[case_name])
    expect_error(r, f"{path} {case_name}")
    assert elapsed < 5, f"{path} {case_name}: took {elapsed:.1f}s"
    assert all(n <= MAX_PASSWORD_CHARS for n in hashed_lengths), hashed_lengths


@pytest.mark.parametrize("path", POST_PATHS)
def test_wrong_content_types_are_400_contract_error(api, path):
    body = form(client_id=DEV_CLIENT, username="a@example.com", challenge_type="oob redirect")
    for headers in ({}, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"},
                    {"Content-Type": "multipart/form-data; boundary=x"},
                    {"Content-Type": "application/x-www-form-urlencodedx"}):
        r, _ = send(api, path, body, headers)
        expect_error(r, f"{path} {headers}")


@pytest.mark.parametrize("path", POST_PATHS)
def test_huge_but_in_limit_values_never_5xx(api, hashed_lengths, path):
    """8000-character values (inside every transport limit) in every field an
    endpoint reads: refused with the contract's error, nothing long hashed."""
    long = "x" * 8000
    fields = {"client_id": DEV_CLIENT, "username": long + "@example.com", "password": long, "new_password": long,
              "oob": long, "continuation_token": long, "challenge_type": long, "capabilities": long,
              "attributes": long, "scope": long, "claims": long, "refresh_token": long, "id": long,
              "challenge_target": long, "challenge_channel": long, "grant_type": "password"}
    r, elapsed = send(api, path, form(**fields))
    expect_error(r, path)
    assert elapsed < 5
    assert all(n <= MAX_PASSWORD_CHARS for n in hashed_lengths), hashed_lengths


def test_long_passwords_in_real_flows_are_refused_without_hashing(api, outbox, make_user, hashed_lengths):
    """Where a password is really checked or hashed (sign-in, sign-up, reset):
    8000 characters get 400 quickly and never reach argon2."""
    long = "p" * 8000
    email, _ = make_user()
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"])
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                 password=long, scope=SCOPE)
    expect_error(t, "token password")
    assert t["error"] == "invalid_grant"
    s = api.post("signup/v1.0/start", username=unique_email("long"), challenge_type="oob password redirect",
                 password=long)
    expect_error(s, "signup start")
    assert s["suberror"] == "password_too_long"
    r = api.post("resetpassword/v1.0/start", username=email, challenge_type="oob redirect")
    c = api.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"])
    v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    sub = api.post("resetpassword/v1.0/submit", continuation_token=v["continuation_token"], new_password=long)
    expect_error(sub, "reset submit")
    assert sub["suberror"] == "password_too_long"
    assert hashed_lengths, "the spy saw no argon2 call at all (make_user hashes the password)"
    assert all(n <= MAX_PASSWORD_CHARS for n in hashed_lengths), hashed_lengths
    # The 1 MB version of the same request never gets past the body limit.
    started = time.perf_counter()
    big = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                   password="p" * MB, scope=SCOPE)
    expect_error(big, "token 1 MB password")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("path", POST_PATHS)
def test_control_characters_in_the_username_or_token(api, path):
    for value in ("a\x01b@example.com", "a@exa\x00mple.com", "a@example.com\r\nBcc: x@example.com",
                  "\u202ea@example.com", "a@example.com\x7f", "ａ@example.com"):
        r, _ = send(api, path, form(client_id=DEV_CLIENT, username=value, continuation_token=value,
                                    challenge_type="oob redirect"))
        expect_error(r, f"{path} {value!r}")


def test_every_operation_was_fuzzed(request):
    """Runs after the fuzz items: each operation produced responses (only
    meaningful when the whole module ran)."""
    doc = json.loads(DOC_FILE.read_text())
    labels = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item if m in ("get", "post", "options")}
    fuzz_items = [i for i in request.session.items if i.name.startswith("test_fuzz_")]
    if len(fuzz_items) < len(labels):
        pytest.skip("only meaningful when every fuzz item ran")
    missing = labels - set(SEEN)
    assert not missing, f"never fuzzed: {sorted(missing)}"
