"""Fuzzing.

1. schemathesis, for every operation of openapi/openapi.json (examples,
   coverage and fuzzing phases; positive and negative inputs), sent through
   the local host to the running app. The document is the one the app serves:
   the module first checks that GET /api/openapi.json returns exactly this
   file. Checks: no 5xx, status / content type / headers / body conform to
   the document, and every app error (>= 400) has the contract's shape.
   The account API (/me) is fuzzed with real sessions: each generated case
   is sent, in turn, with the Authorization header schemathesis generated
   (never a valid token: 401 invalid_token), a token without the account
   scope (403), and live tokens of three users made through the real
   sign-in (no method; an SMS method; an SMS method and the step-up, whose
   token is the fresh proof); the document's examples with each of these.
   A session a case ended (sign out everywhere, a deleted account, a
   removed method) is replaced by a new user. Besides the document: tokens
   that are not live are refused, nothing changes without fresh proof, and
   the 401s are RFC 6750 challenges (the step-up one asking for the
   account context).
2. Hand-written malformed forms on every POST endpoint: huge usernames and
   passwords (a 1 MB password is refused at once, never hashed), control
   characters, invalid UTF-8, duplicate keys, PHP-style array names, too many
   fields: always 400 with the contract's error shape, never 5xx.
3. Hand-written malformed JSON on every account API operation with a body,
   with a live token: not JSON, not an object, duplicate names, deep
   nesting, huge numbers, invalid UTF-8, a BOM, wrong content types, lone
   surrogates and wrong types in every field the API reads: never 5xx,
   every answer as the document says.

Bounded: FUZZ_MAX_EXAMPLES (default 40) generated cases per operation in the
fuzzing phase; derandomized (stable) unless FUZZ_RANDOM=1.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import random
import re
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

from shared.flows import account
from shared.storage import directory
from shared.storage.maintenance import ENDPOINTS

from conftest import DEV_CLIENT, ROOT, Api, unique_email

DOC_FILE = ROOT / "openapi" / "openapi.json"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))
EXAMPLE_DEADLINE = timedelta(seconds=10)  # one request and its checks
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
ERROR_KEYS = {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"}
OPTIONAL_ERROR_KEYS = {"suberror", "continuation_token", "required_attributes", "invalid_attributes"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SCOPE = "openid profile offline_access"
DOC: dict[str, Any] = json.loads(DOC_FILE.read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# The account API: "METHOD /path" -> operationId (preflights are fuzzed like every OPTIONS operation).
ACCOUNT_LABELS = {f"{m.upper()} {p}": op["operationId"] for p, item in DOC["paths"].items() if p.startswith("/me")
                  for m, op in item.items() if m in HTTP_METHODS}
# Operations that change something only with fresh proof (step-up token, or confirmation and code).
PROOF_OPS = {"account_me_delete", "account_methods", "account_method"}
ACCOUNT_SCOPE = "api://native-auth/account " + SCOPE
OTHER_SCOPE = "api://native-auth/access_as_user " + SCOPE
PW = "correct horse battery staple"


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
    host's 413. (The account API's 401s: ``assert_account_error``.)"""
    if status < 400 or status == 413:
        return False
    if method == "OPTIONS" and status == 403:
        return False
    if (path, status) in (("/sample/sensitive", 401), ("/health", 503)):
        return False
    return True


def _header(headers, name: str) -> str:
    """One header of a schemathesis response (lower-case names, lists of values) or a requests one."""
    value = headers.get(name.lower()) if isinstance(headers, dict) else headers.get(name)
    if isinstance(value, list):
        value = ", ".join(value)
    return value or ""


def assert_account_error(status: int, body: Any, headers, where: str, context: str) -> None:
    """An account API error (>= 400, not the host's 413): a 401 is an RFC 6750
    challenge (``invalid_token``, or ``insufficient_claims`` whose ``claims``
    asks for the account context) or the contract's ``confirmation_required``;
    everything else is the contract's error, with the account API's values."""
    if status == 401 and isinstance(body, dict) and body.get("error") in ("invalid_token", "insufficient_claims"):
        assert set(body) == {"error", "error_description"}, f"{where}: {body}"
        challenge = _header(headers, "WWW-Authenticate")
        assert challenge.startswith("Bearer "), f"{where}: WWW-Authenticate {challenge!r}"
        params = dict(re.findall(r'([a-z_]+)="([^"]*)"', challenge))
        assert params.get("error") == body["error"], f"{where}: {challenge}"
        if body["error"] == "insufficient_claims":
            asked = json.loads(base64.b64decode(params["claims"]))
            assert asked == {"access_token": {"acrs": {"essential": True, "value": context}}}, f"{where}: {asked}"
        else:
            assert "claims" not in params, f"{where}: {challenge}"
        return
    assert_contract_error(status, body, where)
    expected = {401: {"confirmation_required"}, 403: {"insufficient_scope"}, 404: {"not_found"},
                409: {"last_method_required"}, 429: {"slow_down"}, 503: {"temporarily_unavailable"}}
    if status in expected:
        assert body["error"] in expected[status], f"{where}: {status} {body['error']}"
    if status == 429 or body["error"] == "slow_down":
        assert int(_header(headers, "Retry-After") or "0") > 0, f"{where}: slow_down without Retry-After"


def documented_elsewhere(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The documented operation a concrete (method, path) reaches through a path
    template, e.g. DELETE /me/methods/verify is DELETE /me/methods/{id}."""
    for template, item in DOC["paths"].items():
        if method.lower() in item and "{" in template and \
                re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            return template, item[method.lower()]
    return None


# ---------------------------------------------------------------- live sessions of the account API

def _phone() -> str:
    # Not the random module: hypothesis seeds it per example, and each user needs a number of its own.
    return "+49151" + "".join(random.SystemRandom().choice("0123456789") for _ in range(8))


class AccountSessions:
    """Access tokens for the account API, made through the real flows: ``plain``
    (a user without a method), ``mfa`` (a user with an SMS method), ``fresh``
    (another such user after the step-up: the token is fresh proof) and
    ``other_scope`` (a token of this server without the ``account`` scope).
    Each mode has its own user, so ending one session leaves the others."""

    MODES = ("as_generated", "plain", "mfa", "fresh", "other_scope")
    RENEWALS = 3  # new users per mode and test at most; after that a dead session stays dead (401 is documented)

    def __init__(self, server):
        self.server, self.api = server, Api(server.host.base_url)
        self.tokens: dict[str, tuple[str, float]] = {}
        self.dead: set[str] = set()
        self.renewals: dict[str, int] = {}
        self.cases: dict[str, int] = {}

    def begin(self) -> None:
        self.renewals.clear()

    def token(self, mode: str) -> str:
        current = self.tokens.get(mode)
        stale = mode == "fresh" and current is not None and \
            time.time() - current[1] > self.server.settings.account_freshness_seconds / 2
        if current is None or stale or (mode in self.dead and self.renewals.get(mode, 0) < self.RENEWALS):
            if current is not None and not stale:
                self.renewals[mode] = self.renewals.get(mode, 0) + 1
            self.tokens[mode] = (self._new_session(mode), time.time())
            self.dead.discard(mode)
        return self.tokens[mode][0]

    def ended(self, mode: str) -> None:
        self.dead.add(mode)

    def _sign_in(self, email: str, scope: str = ACCOUNT_SCOPE, claims: str | None = None):
        i = self.api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect",
                          capabilities="mfa_required registration_required")
        c = self.api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                          challenge_type="password oob redirect")
        return self.api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                             password=PW, scope=scope, client_info="1", claims=claims)

    def _new_session(self, mode: str) -> str:
        email, number = unique_email(f"fuzz-{mode.replace('_', '-')}"), _phone()
        methods = [{"id": "m1", "channel": "sms", "target": number, "default": True, "created": 1}] \
            if mode in ("mfa", "fresh") else []
        directory.create_user(self.server.storage, email, password=PW, methods=methods)
        if mode != "fresh":
            t = self._sign_in(email, OTHER_SCOPE if mode == "other_scope" else ACCOUNT_SCOPE)
            assert t.status == 200, t.body
            return t["access_token"]
        context = self.server.settings.account_auth_context
        r = self._sign_in(email, claims=json.dumps({"access_token": {"acrs": {"essential": True, "value": context}}}))
        assert r.status == 400 and r["suberror"] == "mfa_required", r.body
        intro = self.api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
        c = self.api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id="m1")
        t = self.api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                          oob=self.server.outbox.last_code(number), scope=ACCOUNT_SCOPE, client_info="1")
        assert t.status == 200, t.body
        return t["access_token"]


_mode_cycle: dict[str, Any] = {}


@pytest.fixture(scope="module")
def _account_pool(served):
    """One pool for the module, with the API's per-user hourly limits lifted:
    otherwise most cases would end in 429 (documented, and exercised by
    test_openapi and test_account) instead of reaching the handlers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(account, "READS_PER_HOUR", 1_000_000)
        mp.setattr(account, "CHANGES_PER_HOUR", 1_000_000)
        yield AccountSessions(served)


@pytest.fixture
def sessions(_account_pool):
    _account_pool.begin()
    return _account_pool


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


def _phase(case) -> str:
    name = getattr(getattr(case.meta, "phase", None), "name", None)
    return str(getattr(name, "value", name))


def fuzz_operation(case, served, sessions):
    method = case.method.upper()
    op_id = ACCOUNT_LABELS.get(case.operation.label) if method == case.operation.method.upper() else None
    if op_id is None:
        return _fuzz_once(case, served, sessions, None, None)
    # The account API: each case with the next authorization mode of this operation (a fixed
    # rotation, so the cases stay stable); the document's own examples with every mode.
    if _phase(case) == "examples":
        modes = list(AccountSessions.MODES)
    else:
        modes = [next(_mode_cycle.setdefault(op_id, itertools.cycle(AccountSessions.MODES)))]
    generated = case.headers
    for mode in modes:
        case.headers = generated
        if mode != "as_generated":
            from requests.structures import CaseInsensitiveDict

            case.headers = CaseInsensitiveDict(generated or {})
            case.headers["Authorization"] = "Bearer " + sessions.token(mode)
        with _seen_lock:
            sessions.cases[op_id] = sessions.cases.get(op_id, 0) + 1
        _fuzz_once(case, served, sessions, op_id, mode)


def _fuzz_once(case, served, sessions, op_id: str | None, mode: str | None) -> None:
    # requests sends a body that encodes to "" with Transfer-Encoding: chunked
    # (no Content-Length), which the devhost refuses with 411 (Azure accepts
    # it); send such an empty form the way browsers do, with Content-Length: 0.
    headers = {"Content-Length": "0"} if _empty_form(case) else None
    response = case.call(base_url=served.host.base_url, headers=headers, timeout=30)
    method, path, status = case.method.upper(), case.path, response.status_code
    where = f"{method} {path} ({case.operation.label}{', ' + mode if mode else ''})"
    with _seen_lock:
        SEEN.setdefault(case.operation.label, set()).add(status)
    assert status < 500, f"{where}: {status} {response.text[:500]}"
    assert "Traceback" not in response.text and 'File "/' not in response.text, f"{where}: {response.text[:500]}"
    if method != case.operation.method.upper():
        # The coverage phase's unexpected-method probe: the catch-all answers
        # 405 on the native-auth POST paths. (GET-only paths answer 404: see
        # test_openapi.test_wrong_method_on_a_get_endpoint_is_405; so do the
        # account API's paths.) A concrete path that a template serves with
        # this method (DELETE /me/methods/verify is DELETE /me/methods/{id})
        # is answered by that operation.
        other = documented_elsewhere(method, path)
        if other is not None:
            assert str(status) in other[1]["responses"], f"{where}: {status} not documented for {other[0]}"
            if status >= 400:
                assert_account_error(status, response.json(), response.headers, where,
                                     served.settings.account_auth_context)
            return
        expected = {405} if path.lstrip("/") in ENDPOINTS else {404, 405}
        assert status in expected, f"{where}: {status}"
        assert_contract_error(status, response.json(), where)
        return
    case.validate_response(response, checks=CHECKS)
    if op_id is not None:
        check_account_answer(op_id, mode, status, response, where, served, sessions)
    elif is_app_error(status, path, method):
        assert_contract_error(status, response.json(), where)


# Operations after whose success a session (or the user's proof) is gone.
SESSION_ENDING = {"account_revoke_sessions", "account_me_delete", "account_method", "account_password"}


def check_account_answer(op_id: str, mode: str, status: int, response, where: str, served, sessions) -> None:
    """What must hold for an account API answer beyond the document."""
    body = response.json() if response.content else None
    error = body.get("error") if isinstance(body, dict) and status >= 400 else None
    if status >= 400 and status != 413:
        assert_account_error(status, body, response.headers, where, served.settings.account_auth_context)
    if mode == "as_generated":
        # Whatever schemathesis put in Authorization, it is not an access token of ours.
        assert (status, error) == (401, "invalid_token"), f"{where}: {status} {body}"
        return
    if mode == "other_scope":
        assert (status, error) == (403, "insufficient_scope"), f"{where}: {status} {body}"
        return
    if error == "invalid_token":
        # A live token is refused only when its session has ended (a case before this one ended it).
        assert mode in sessions.dead, f"{where}: a live session's token was refused: {body}"
    if op_id in PROOF_OPS and mode in ("plain", "mfa"):
        # No change without fresh proof: these modes have none (a confirmation code cannot be guessed).
        assert not 200 <= status < 300, f"{where}: changed without fresh proof: {status}"
        if status == 401 and mode not in sessions.dead:
            assert error == ("confirmation_required" if mode == "plain" else "insufficient_claims"), f"{where}: {body}"
    if op_id in PROOF_OPS and mode == "fresh" and mode not in sessions.dead:
        assert error != "insufficient_claims", f"{where}: the step-up token is not accepted as fresh proof"
    if (op_id in SESSION_ENDING and 200 <= status < 300) or error == "invalid_token":
        sessions.ended(mode)


# One pytest test per operation (test_fuzz_<operationId>), each running the
# examples, coverage and fuzzing phases for that operation.
OPERATION_IDS = [op["operationId"] for item in json.loads(DOC_FILE.read_text(encoding="utf-8"))["paths"].values()
                 for op in item.values() if isinstance(op, dict) and "operationId" in op]
for _op_id in OPERATION_IDS:
    def _test(case, served, sessions):
        fuzz_operation(case, served, sessions)

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
    """Lengths of every password that reached argon2 (any PasswordHasher, the service's own
    libsodium-backed one included) during the test."""
    import argon2

    from shared.security import passwords

    seen: list[int] = []
    for cls in (argon2.PasswordHasher, passwords.Argon2idHasher):
        real_hash, real_verify = cls.__dict__["hash"], cls.__dict__["verify"]

        def spy_hash(self, password, *a, _real=real_hash, **k):
            seen.append(len(password))
            return _real(self, password, *a, **k)

        def spy_verify(self, hash_, password, *a, _real=real_verify, **k):
            seen.append(len(password))
            return _real(self, hash_, password, *a, **k)

        monkeypatch.setattr(cls, "hash", spy_hash)
        monkeypatch.setattr(cls, "verify", spy_verify)
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


# ---------------------------------------------------------------- hand-written malformed JSON (the account API)

def send_json(served, op_id: str, url: str, body: bytes | None, token: str | None,
              headers: dict[str, str] | None = None):
    """Send exactly these bytes to an account API operation and check the answer
    against the document (the same checks as the fuzzer) and the error shapes."""
    import requests

    operation = schema.find_operation_by_id(op_id)
    h = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        h["Authorization"] = "Bearer " + token
    h.update(headers or {})
    started = time.perf_counter()
    response = requests.request(operation.method.upper(), served.host.base_url + url, data=body, headers=h, timeout=30)
    elapsed = time.perf_counter() - started
    where = f"{operation.method.upper()} {url} {body[:80] if body else body!r}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    assert "Traceback" not in response.text, where
    operation.Case(path_parameters={"id": url.rsplit("/", 1)[-1]} if "{id}" in operation.path else None
                   ).validate_response(response, checks=CHECKS)
    if response.status_code >= 400 and response.status_code != 413:
        assert_account_error(response.status_code, response.json(), response.headers, where,
                             served.settings.account_auth_context)
    assert elapsed < 5, f"{where}: took {elapsed:.1f}s"
    return response


# The account operations with a JSON body and the live session each one is tried with: the body is
# read before any proof is checked, so a malformed body is 400 whatever the account has. (DELETE
# /me/methods/{id} reads it after finding the method: the mfa user's m1.)
JSON_OPERATIONS = {
    "account_me_update": ("/me", "plain"), "account_me_delete": ("/me", "plain"),
    "account_password": ("/me/password", "plain"), "account_methods": ("/me/methods", "plain"),
    "account_method_verify": ("/me/methods/verify", "plain"), "account_method": ("/me/methods/m1", "mfa"),
}
OPTIONAL_BODY = {"account_me_delete", "account_method"}
MALFORMED_JSON: dict[str, bytes] = {
    "not_json": b"not json",
    "truncated": b'{"attributes": {"displayName": "x"',
    "array": b'[{"attributes": {"displayName": "x"}}]',
    "string": b'"attributes"',
    "number": b"1",
    "null": b"null",
    "duplicate_names": b'{"code": "1", "code": "2"}',
    "duplicate_nested_names": b'{"attributes": {"displayName": "a", "displayName": "b"}}',
    "deep_array_nesting": b"[" * 50_000,
    "deep_object_nesting": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "huge_integer": b'{"attributes": {"displayName": ' + b"9" * 5000 + b"}}",
    "invalid_utf8": b'{"attributes": {"displayName": "\xff\xfe"}}',
    "utf16": '{"attributes": {"displayName": "x"}}'.encode("utf-16"),
    "utf8_bom": b'\xef\xbb\xbf{"attributes": {"displayName": "x"}}',
    "over_the_app_limit": b'{"attributes": {"displayName": "' + b"x" * 70_000 + b'"}}',
    "nul_bytes": b'{"attributes"\x00: {}}',
}


@pytest.mark.parametrize("case_name", sorted(MALFORMED_JSON))
@pytest.mark.parametrize("op_id", sorted(JSON_OPERATIONS))
def test_malformed_json_is_400_contract_error(served, sessions, op_id, case_name):
    url, mode = JSON_OPERATIONS[op_id]
    r = send_json(served, op_id, url, MALFORMED_JSON[case_name], sessions.token(mode))
    assert r.status_code == 400, f"{op_id} {case_name}: {r.status_code} {r.text[:300]}"
    assert r.json()["error"] == "invalid_request" and r.json()["error_codes"] == [90100], r.text[:300]


@pytest.mark.parametrize("op_id", sorted(JSON_OPERATIONS))
def test_account_content_types(served, sessions, op_id):
    """Only application/json (any parameters) is read; a missing or other type is 400."""
    url, mode = JSON_OPERATIONS[op_id]
    token = sessions.token(mode)
    body = b'{"attributes": {"displayName": 1}'  # truncated: a body that is read answers 400 invalid JSON
    for ctype in (None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "multipart/form-data",
                  "application/json-patch+json", "text/json"):
        r = send_json(served, op_id, url, body, token, {"Content-Type": ctype})  # None: no Content-Type
        assert r.status_code == 400 and "application/json" in r.json()["error_description"], (ctype, r.text[:300])
    r = send_json(served, op_id, url, body, token, {"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error_description"], r.text[:300]
    if op_id in OPTIONAL_BODY:  # no body at all: read as {} (proof missing, or the method)
        r = send_json(served, op_id, url, None, token)
        assert r.status_code == 401, r.text[:300]
    else:
        r = send_json(served, op_id, url, b"", token)
        assert r.status_code == 400, r.text[:300]


# Each JSON field the account API reads, with wrong types and hostile strings, per operation and
# session mode (``fresh``: past the proof, so channel and target are really read).
SURROGATE = "\ud800"
FIELD_CASES: list[tuple[str, str, str, dict[str, Any]]] = []
for _field, _op, _mode, _base in (
        ("attributes", "account_me_update", "plain", {}),
        ("currentPassword", "account_password", "plain", {"newPassword": "a completely different passphrase"}),
        ("newPassword", "account_password", "plain", {"currentPassword": "not the password"}),
        ("signOutOtherSessions", "account_password", "plain",
         {"currentPassword": "not the password", "newPassword": "a completely different passphrase"}),
        ("channel", "account_methods", "fresh", {"target": "+4915112345678"}),
        ("target", "account_methods", "fresh", {"channel": "sms"}),
        ("confirmation", "account_methods", "plain", {"channel": "sms", "target": "+4915112345678", "code": "12345678"}),
        ("code", "account_methods", "plain", {"channel": "sms", "target": "+4915112345678", "confirmation": "x"}),
        ("verification", "account_method_verify", "plain", {"code": "123456"}),
        ("code", "account_method_verify", "plain", {"verification": "x"}),
        ("confirmation", "account_me_delete", "plain", {"code": "12345678"}),
        ("code", "account_me_delete", "plain", {"confirmation": "x"})):
    for _value_name, _value in (("null", None), ("number", 12345678), ("float", 1e308), ("bool", True),
                                ("array", ["sms"]), ("object", {"a": "b"}), ("empty", ""),
                                ("nul", "a\u0000b"), ("control", "\u001b[31m\r\n"), ("rtl", "\u202e+4915112345678"),
                                ("long", "x" * 60_000), ("surrogate", SURROGATE), ("surrogates", "a" + SURROGATE * 20)):
        FIELD_CASES.append((f"{_op}-{_field}-{_value_name}", _op, _mode, {**_base, _field: _value}))
    if _field == "attributes":
        for _value_name, _value in (("name_surrogate", {SURROGATE: "x"}), ("value_surrogate", {"displayName": SURROGATE}),
                                    ("value_object", {"displayName": {"a": 1}}), ("value_null", {"displayName": None}),
                                    ("value_huge", {"displayName": "x" * 2000}), ("email", {"Email": "a@example.com"})):
            FIELD_CASES.append((f"{_op}-{_field}-{_value_name}", _op, _mode, {_field: _value}))
del _field, _op, _mode, _base, _value_name, _value

# Found by this fuzzer (fixed: shared.protocol._strict_json): a lone surrogate escape ("\ud800" is valid
# JSON syntax) reached argon2 in /me/password (500) and was stored by PATCH /me; NaN, Infinity and 1e999
# were accepted. Every JSON body and JSON form field now refuses them (400).
@pytest.mark.parametrize("name,op_id,mode,body", [pytest.param(*c, id=c[0]) for c in FIELD_CASES])
def test_hostile_json_fields_never_5xx(served, sessions, name, op_id, mode, body):
    url = JSON_OPERATIONS[op_id][0]
    r = send_json(served, op_id, url, json.dumps(body).encode(), sessions.token(mode))
    if name == "account_methods-target-rtl":
        # A phone number behind an invisible bidi control is normalized to the number (E.164), as at
        # registration in the native-auth flow: the code goes to it, the control character is not kept.
        assert r.status_code == 202 and r.json()["target"] == "+49*******5678", r.text[:300]
        return
    # Wrong types and hostile strings are refused: 400, or 401 where the proof is asked for
    # before the field is read (a confirmation that is not a string: confirmation_required).
    assert r.status_code in (400, 401), f"{name}: {r.status_code} {r.text[:300]}"
    if r.status_code == 401:
        assert op_id in PROOF_OPS and r.json()["error"] == "confirmation_required", f"{name}: {r.text[:300]}"
        assert name.split("-")[1] in ("confirmation", "code"), name
    if op_id == "account_password":
        assert r.json()["error_codes"][0] in (90100, 50126), f"{name}: {r.text[:300]}"


def test_lone_surrogate_in_a_new_password_is_a_clean_400(served, sessions):
    """The right current password and a new one with a lone surrogate: refused
    with the contract's error (never hashed), the password unchanged."""
    email = unique_email("fuzz-surrogate")
    directory.create_user(served.storage, email, password=PW)
    t = sessions._sign_in(email)
    assert t.status == 200, t.body
    body = json.dumps({"currentPassword": PW, "newPassword": "zebra quantum " + SURROGATE + " nebula violin 42"})
    r = send_json(served, "account_password", "/me/password", body.encode(), t["access_token"])
    assert r.status_code == 400, r.text[:300]
    assert sessions._sign_in(email).status == 200  # unchanged


def test_every_operation_was_fuzzed(request):
    """Runs after the fuzz items: each operation produced responses (only
    meaningful when the whole module ran)."""
    doc = json.loads(DOC_FILE.read_text())
    labels = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item if m in (*HTTP_METHODS, "options")}
    fuzz_items = [i for i in request.session.items if i.name.startswith("test_fuzz_")]
    if len(fuzz_items) < len(labels):
        pytest.skip("only meaningful when every fuzz item ran")
    missing = labels - set(SEEN)
    assert not missing, f"never fuzzed: {sorted(missing)}"


def test_account_operations_were_fuzzed_with_live_sessions(request, sessions):
    """Runs after the fuzz items: every account operation got answers past the
    token check (not only 401/403), and its success status at least once where a
    generated case can succeed (only meaningful when the whole module ran)."""
    ran = {i.name.split("[")[0] for i in request.session.items}
    if not {f"test_fuzz_{op_id}" for op_id in ACCOUNT_LABELS.values()} <= ran:
        pytest.skip("only meaningful when every account fuzz item ran")
    print(f"\naccount API fuzz cases: {sum(sessions.cases.values())} {dict(sorted(sessions.cases.items()))}")
    for label, op_id in ACCOUNT_LABELS.items():
        seen = SEEN.get(label, set())
        assert {401, 403} <= seen, (label, seen)
        assert seen - {401, 403}, f"{label}: never past the token check: {seen}"
        assert sessions.cases[op_id] >= len(AccountSessions.MODES), (op_id, sessions.cases[op_id])
    for label, status in (("GET /me", 200), ("PATCH /me", 200), ("DELETE /me", 204), ("GET /me/methods", 200),
                          ("POST /me/methods", 202), ("DELETE /me/methods/{id}", 204), ("GET /me/export", 200),
                          ("POST /me/revoke-sessions", 204), ("POST /me/confirmation", 202)):
        assert status in SEEN.get(label, set()), (label, SEEN.get(label))
