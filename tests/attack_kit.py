"""Shared kit of the attack catalogue tests (``tests/test_attacks_*.py``): the
rows of ../shared/security-baseline.md §7 and SECURITY.md §7, over HTTP.

Every row A1-A44 has a test (or a small parametrized group) named
``test_Axx_<what>``; each asserts the row's expected outcome against the real
app (devhost + Azurite, the ``server`` fixture), or, where the product
deliberately differs from the row, the behaviour SECURITY.md documents.
SECURITY.md ends with the row -> test table.

Conventions used throughout:

* Only what a client can observe is asserted through HTTP. A few white-box
  reads (the user's failure counters, a refresh-token family, the limits
  table) confirm *why* an answer came out as it did; the only white-box
  writes are the policies a test installs (always removed again) and tokens
  forged with the app's own signing key for the JWT rows, so that each
  negative case changes exactly one thing next to a positive control.
* Time is moved, never waited for: ``shift(module)`` replaces the ``time``
  module seen by one app module (flows, signin or tokens) with a clock that
  runs ``offset`` seconds ahead.
* Every secret the module sends or receives (passwords, codes, continuation,
  refresh, access and ID tokens) is remembered, and every log record of the
  module is kept, for A44 (the last test of the module).
* A row whose expected outcome the app does not meet yet has its failing
  check in a separate test marked ``xfail(strict=True)`` with the reason;
  nothing else in the row's group is weakened.

Timing (A17, A19): here only status and body shape are compared; the
statistical timing comparison lives in tests/test_timing.py.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import re
import threading
import time
import uuid
from typing import Any, Callable

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from shared.flows import signin, state as flows
from shared.security import policy
from shared.storage import directory, signinlog
from shared.tokens import issuance as tokens
from shared.settings import Settings, SettingsError, get_settings
from shared.storage.tables import hash_key

from conftest import Canary, DEV_CLIENT, unique_email

PW = "correct horse battery staple"
NEW_PW = "an entirely new passphrase, thanks"
SCOPE = "openid profile offline_access"
RESOURCE = "api://native-auth"
FULL_SCOPE = f"{RESOURCE}/access_as_user {SCOPE}"
CAPS = "mfa_required registration_required"
# Our extension: the client can register a method after verifying another (shared/security/gate.py); no MSAL SDK sends it.
CAPS_PROOF = CAPS + " registration_after_mfa"
VOLATILE = ("error_description", "timestamp", "trace_id", "correlation_id")
WRONG_CODE = 50181      # invalid_grant / invalid_oob_value: a wrong (or expired) code
DEAD_CHALLENGE = 50053  # invalid_grant / invalid_oob_value: too many attempts (challenge or account)
BAD_CREDENTIALS = 50126


# ====================================================================== A44 plumbing
# Every secret the module sends or receives, and every log record emitted
# while the module runs (root logger and "nativeauth", at DEBUG).

SECRETS: set[str] = set()
LOG_TEXT: list[str] = []
_SENT_SECRET_FIELDS = ("password", "new_password", "oob", "refresh_token", "continuation_token")
_RECEIVED_SECRET_FIELDS = ("continuation_token", "refresh_token", "access_token", "id_token")


def remember(*values: Any) -> None:
    for value in values:
        if isinstance(value, str) and len(value) >= 6:
            SECRETS.add(value)


class _KeepLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is still text to search
            text = f"{record.msg} {record.args}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + record.stack_info
        LOG_TEXT.append(f"{record.name}:{record.levelname}: {text}")


# The Azure SDK's and urllib3's own transport logging (every storage round
# trip, several lines each, at INFO/DEBUG) is kept at WARNING for the module to
# keep it fast; A44 turns it on at DEBUG for its own tour of every flow.
_QUIET = ("azure", "urllib3")


@pytest.fixture(scope="module", autouse=True)
def keep_logs():
    handler = _KeepLogs(level=logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("nativeauth")] + [logging.getLogger(n) for n in _QUIET]
    saved = [lg.level for lg in loggers]
    loggers[0].addHandler(handler)
    loggers[0].setLevel(logging.DEBUG)
    loggers[1].setLevel(logging.DEBUG)
    for lg in loggers[2:]:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        loggers[0].removeHandler(handler)
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


class RecordingApi:
    """The conftest client, remembering every secret that crosses the wire."""

    def __init__(self, inner):
        self.inner = inner
        self.base_url = inner.base_url
        self.client_id = inner.client_id

    def _seen(self, resp):
        if isinstance(resp.body, dict):
            for name in _RECEIVED_SECRET_FIELDS:
                remember(resp.body.get(name))
        return resp

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        auth = (headers or {}).get("Authorization", "")
        remember(auth[7:] if auth.startswith("Bearer ") else None)
        return self._seen(self.inner.request(method, path, body, headers))

    def post(self, path: str, headers: dict | None = None, **form: Any):
        for name in _SENT_SECRET_FIELDS:
            remember(form.get(name))
        auth = (headers or {}).get("Authorization", "")
        remember(auth[7:] if auth.startswith("Bearer ") else None)
        return self._seen(self.inner.post(path, headers, **form))

    def get(self, path: str, headers: dict | None = None):
        return self.request("GET", path, None, headers)


class RecordingOutbox:
    def __init__(self, inner):
        self.inner = inner

    def messages(self, to: str | None = None) -> list[dict]:
        return self.inner.messages(to)

    def count(self, to: str) -> int:
        return self.inner.count(to)

    def last_code(self, to: str) -> str:
        code = self.inner.last_code(to)
        remember(code)
        return code


@pytest.fixture
def api(server) -> RecordingApi:
    return RecordingApi(server.api)


_HASHES: dict[str, str] = {}


@pytest.fixture
def make_user(server):
    """Like conftest's make_user, but a password's argon2 hash is computed
    once per module and reused (argon2 is the slow part of these tests; a
    shared salt changes nothing that is tested here)."""
    from shared.security import passwords

    def make(password: str | None = PW, **kwargs: Any):
        email = kwargs.pop("email", None) or unique_email()
        if password is not None and "password_hash" not in kwargs:
            if password not in _HASHES:
                _HASHES[password] = passwords.hash_password(password)
            kwargs["password_hash"] = _HASHES[password]
        user = directory.create_user(server.storage, email, **kwargs)
        return email, user
    return make


@pytest.fixture
def outbox(server) -> RecordingOutbox:
    return RecordingOutbox(server.outbox)


# ====================================================================== small helpers

def shape(resp, *, opaque: tuple[str, ...] = ("continuation_token",)) -> tuple[int, dict]:
    """Status and body without the per-request fields; opaque values replaced
    by a marker and masked labels by their pattern, so two answers can be
    compared for 'looks the same'."""
    body = dict(resp.body) if isinstance(resp.body, dict) else {"_raw": resp.body}
    for key in VOLATILE:
        body.pop(key, None)
    for key in opaque:
        if key in body:
            body[key] = "<opaque>"
    if "challenge_target_label" in body:
        body["challenge_target_label"] = re.sub(r"[A-Za-z0-9]", "x", body["challenge_target_label"])
    return resp.status, body


def wrong(code: str) -> str:
    return str((int(code) + 1) % 10 ** len(code)).zfill(len(code))


def random_phone(prefix: str = "+49151") -> str:
    """A random German mobile number (valid for phonenumbers, in the SMS allow-list)."""
    return prefix + "".join(random.choice("0123456789") for _ in range(14 - len(prefix)))


def random_ip() -> str:
    """An address from the IPv6 documentation range, unique to this run."""
    return "2001:db8:%x:%x::%x" % (random.getrandbits(16), random.getrandbits(16), random.getrandbits(16) or 1)


def sms_method(number: str, mid: str = "m1") -> dict:
    return {"id": mid, "channel": "sms", "target": number, "default": True, "created": 1}


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def user_entity(server, email: str) -> dict:
    user = directory.get_user(server.storage, email)
    assert user is not None, email
    return user.entity


def assert_no_tokens(resp) -> None:
    assert not (isinstance(resp.body, dict) and ({"access_token", "id_token", "refresh_token"} & set(resp.body))), resp.body


def parallel(n: int, fn: Callable[[int], Any], timeout: float = 60) -> list:
    """Run fn(i) for i in range(n) in threads released together; results in order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert all(r is not None for r in results), "a request did not finish"
    return results


class ShiftedClock:
    """Stands in for the ``time`` module inside one app module: ``time()``
    runs ``offset`` seconds ahead, everything else is the real module."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def shift(monkeypatch):
    def install(module) -> ShiftedClock:
        clock = ShiftedClock()
        monkeypatch.setattr(module, "time", clock)
        return clock
    return install


@pytest.fixture
def require_mfa(policies):
    """require_mfa(email, ...): a policy demanding a second factor, scoped to
    those users only (so nothing else in the test is affected)."""
    def add(*users: str, methods: tuple[str, ...] = ("email", "sms")) -> str:
        return policies(assignments={"users": {"include": list(users)}},
                        grant={"require_second_factor": True, "methods": list(methods)})
    return add


# ---------------------------------------------------------------- flows

def password_first_factor(api, email: str, password: str = PW, *, caps: str | None = CAPS, headers: dict | None = None,
                          scope: str = SCOPE, claims: str | None = None):
    i = api.post("oauth2/v2.0/initiate", headers, username=email, challenge_type="password oob redirect", capabilities=caps)
    assert i.status == 200, i.body
    c = api.post("oauth2/v2.0/challenge", headers, continuation_token=i["continuation_token"],
                 challenge_type="password oob redirect")
    assert c.status == 200 and c["challenge_type"] == "password", c.body
    return api.post("oauth2/v2.0/token", headers, continuation_token=c["continuation_token"], grant_type="password",
                    password=password, scope=scope, client_info="1", claims=claims)


def password_challenge_ct(api, email: str, caps: str | None = CAPS) -> str:
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=caps)
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password redirect")
    assert c.status == 200 and c["challenge_type"] == "password", c.body
    return c["continuation_token"]


def password_grant(api, ct: str, password: str, headers: dict | None = None):
    return api.post("oauth2/v2.0/token", headers, continuation_token=ct, grant_type="password", password=password,
                    scope=SCOPE, client_info="1")


def email_code_challenge(api, email: str, headers: dict | None = None):
    i = api.post("oauth2/v2.0/initiate", headers, username=email, challenge_type="oob redirect", capabilities=CAPS)
    assert i.status == 200, i.body
    return api.post("oauth2/v2.0/challenge", headers, continuation_token=i["continuation_token"], challenge_type="oob redirect")


def email_first_factor(api, outbox, email: str):
    c = email_code_challenge(api, email)
    assert c.status == 200 and c["challenge_type"] == "oob", c.body
    return api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(email), scope=SCOPE, client_info="1")


def reset_challenge(api, email: str, headers: dict | None = None):
    s = api.post("resetpassword/v1.0/start", headers, username=email, challenge_type="oob redirect", capabilities=CAPS)
    assert s.status == 200, s.body
    return api.post("resetpassword/v1.0/challenge", headers, continuation_token=s["continuation_token"],
                    challenge_type="oob redirect")


def reset_to_token(api, outbox, email: str, new_password: str = NEW_PW) -> str:
    """A whole password reset; returns the continuation token for /token."""
    c = reset_challenge(api, email)
    assert c.status == 200, c.body
    v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    assert v.status == 200, v.body
    s = api.post("resetpassword/v1.0/submit", continuation_token=v["continuation_token"], new_password=new_password)
    assert s.status == 200, s.body
    p = api.post("resetpassword/v1.0/poll_completion", continuation_token=s["continuation_token"])
    assert p.status == 200 and p["status"] == "succeeded", p.body
    return p["continuation_token"]


def mfa_challenge(api, ct_mfa_required: str, method_id: str = "m1", headers: dict | None = None):
    intro = api.post("oauth2/v2.0/introspect", headers, continuation_token=ct_mfa_required)
    assert intro.status == 200, intro.body
    return api.post("oauth2/v2.0/challenge", headers, continuation_token=intro["continuation_token"], id=method_id,
                    challenge_type="password oob redirect")


def refresh(api, rt: str, scope: str = SCOPE):
    return api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=rt, scope=scope, client_info="1")


# ---------------------------------------------------------------- one open code challenge, of any purpose

@dataclasses.dataclass
class Challenge:
    """An open one-time-code challenge: submit(code) redeems it, resend()
    asks for a new code in the same flow; the continuation token follows."""
    kind: str
    ct: str
    target: str   # where the code went (outbox address)
    email: str    # the account (or the address signing up)
    length: int
    _submit: Callable[[str, str], Any]
    _resend: Callable[[str], Any]
    _outbox: Any

    def code(self) -> str:
        return self._outbox.last_code(self.target)

    def submit(self, code: str, ct: str | None = None):
        return self._submit(ct or self.ct, code)

    def resend(self):
        r = self._resend(self.ct)
        if r.status == 200:
            self.ct = r["continuation_token"]
        return r

    @property
    def issues_tokens(self) -> bool:
        return self.kind in ("signin", "mfa")

    def succeeded(self, resp) -> bool:
        if resp.status != 200 or not isinstance(resp.body, dict):
            return False
        return bool(resp.get("access_token")) if self.issues_tokens else bool(resp.get("continuation_token"))


KINDS = ("signin", "mfa", "reset", "signup", "register")


@pytest.fixture
def open_challenge(server, api, outbox, make_user, require_mfa):
    """open_challenge(kind, email=None) -> Challenge, for every code purpose:
    signin (email code first factor), mfa (SMS second factor), reset (SSPR
    email code), signup (email verification), register (SMS to a method
    being registered)."""

    def open_(kind: str, email: str | None = None) -> Challenge:
        if kind == "signin":
            if email is None:
                email, _ = make_user(password=None)
            c = email_code_challenge(api, email)
            assert c.status == 200 and c["challenge_type"] == "oob", c.body
            return Challenge(kind, c["continuation_token"], email, email, 8,
                             lambda ct, code: api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="oob",
                                                       oob=code, scope=SCOPE, client_info="1"),
                             lambda ct: api.post("oauth2/v2.0/challenge", continuation_token=ct,
                                                 challenge_type="oob redirect"), outbox)
        if kind == "mfa":
            if email is None:
                email, _ = make_user(password=None, methods=[sms_method(random_phone())])
                require_mfa(email)
            phone = directory.get_user(server.storage, email).methods[0]["target"]
            t = email_first_factor(api, outbox, email)
            assert t.status == 400 and t["suberror"] == "mfa_required", t.body
            c = mfa_challenge(api, t["continuation_token"])
            assert c.status == 200 and c["challenge_channel"] == "sms", c.body
            return Challenge(kind, c["continuation_token"], phone, email, 6,
                             lambda ct, code: api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="mfa_oob",
                                                       oob=code, scope=SCOPE, client_info="1"),
                             lambda ct: api.post("oauth2/v2.0/challenge", continuation_token=ct, id="m1",
                                                 challenge_type="password oob redirect"), outbox)
        if kind == "reset":
            if email is None:
                email, _ = make_user()
            c = reset_challenge(api, email)
            assert c.status == 200, c.body
            return Challenge(kind, c["continuation_token"], email, email, 8,
                             lambda ct, code: api.post("resetpassword/v1.0/continue", continuation_token=ct,
                                                       grant_type="oob", oob=code),
                             lambda ct: api.post("resetpassword/v1.0/challenge", continuation_token=ct,
                                                 challenge_type="oob redirect"), outbox)
        if kind == "signup":
            email = email or unique_email("signup")
            s = api.post("signup/v1.0/start", username=email, challenge_type="oob redirect", capabilities=CAPS)
            assert s.status == 200, s.body
            c = api.post("signup/v1.0/challenge", continuation_token=s["continuation_token"],
                         challenge_type="oob redirect")
            assert c.status == 200 and c["challenge_type"] == "oob", c.body
            return Challenge(kind, c["continuation_token"], email, email, 8,
                             lambda ct, code: api.post("signup/v1.0/continue", continuation_token=ct, grant_type="oob",
                                                       oob=code),
                             lambda ct: api.post("signup/v1.0/challenge", continuation_token=ct,
                                                 challenge_type="oob redirect"), outbox)
        if kind == "register":
            if email is None:
                email, _ = make_user(password=None)
                require_mfa(email)
            phone = random_phone()
            t = email_first_factor(api, outbox, email)
            assert t.status == 400 and t["suberror"] == "registration_required", t.body
            c = api.post("register/v1.0/challenge", continuation_token=t["continuation_token"], challenge_type="oob",
                         challenge_channel="sms", challenge_target=phone)
            assert c.status == 200 and c["challenge_type"] == "oob", c.body
            return Challenge(kind, c["continuation_token"], phone, email, 6,
                             lambda ct, code: api.post("register/v1.0/continue", continuation_token=ct,
                                                       grant_type="oob", oob=code),
                             lambda ct: api.post("register/v1.0/challenge", continuation_token=ct, challenge_type="oob",
                                                 challenge_channel="sms", challenge_target=phone), outbox)
        raise ValueError(kind)

    return open_


# ====================================================================== A1-A8: one-time codes

# ====================================================================== shared by several areas

def code_failures(server, email: str) -> int:
    """Wrong codes counted for the account, over both channels (they are counted per channel)."""
    e = user_entity(server, email)
    return int(e.get("code_failures_email") or 0) + int(e.get("code_failures_sms") or 0)


def limit_row(server, channel: str, to: str):
    now = time.time()
    pk = "lim" + time.strftime("%Y%m%d", time.gmtime(now))
    d = hash_key(channel, to)[:32]
    rows = server.storage.table("limits").query("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                                                {"pk": pk, "lo": "cd-", "hi": "cd."})
    return next((r for r in rows if r["RowKey"].endswith("-" + d)), None)  # a cooldown row: written by every counted send


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def header_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))


def sign_raw(header: dict, claims: dict, private_key) -> str:
    """RS256 with the header exactly as given."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    sig = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(sig)}"


@dataclasses.dataclass
class Bearer:
    access: str
    id: str
    refresh: str
    claims: dict          # the access token's claims plus the sample's authentication context
    kid: str
    private_key: Any      # the app's signing key (white box, for forging)

    def forge(self, *, header: dict | None = None, **claim_changes: Any) -> str:
        claims = dict(self.claims)
        for name, value in claim_changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return sign_raw(header or {"alg": "RS256", "typ": "at+jwt", "kid": self.kid}, claims, self.private_key)


@pytest.fixture(scope="module")
def bearer(server) -> Bearer:
    api = RecordingApi(server.api)
    email = unique_email("jwt")
    directory.create_user(server.storage, email, password=PW, display_name="JWT target")
    r = password_first_factor(api, email, scope=FULL_SCOPE)
    assert r.status == 200, r.body
    kid = header_of(r["access_token"])["kid"]
    key = next(k for k in tokens.keyring(server.storage, server.settings).keys() if k.kid == kid)
    claims = {**claims_of(r["access_token"]), "acrs": [server.settings.sample_auth_context]}
    return Bearer(r["access_token"], r["id_token"], r["refresh_token"], claims, kid, key.private_key)


def sensitive(api, token: str):
    return api.get("sample/sensitive", headers={"Authorization": f"Bearer {token}"})


def assert_401(resp) -> None:
    assert resp.status == 401, (resp.status, resp.body)
    assert resp["error"] == "invalid_token", resp.body
    assert resp.headers["www-authenticate"].startswith("Bearer ")


from shared.storage.maintenance import ENDPOINTS  # noqa: E402 - every POST endpoint of the API
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def assert_clean_error(resp, *statuses: int) -> None:
    assert resp.status in (statuses or (400,)), (resp.status, resp.body)
    raw = resp.raw.decode("utf-8", "replace")
    assert "Traceback" not in raw and 'File "' not in raw
    if resp.status != 413:
        assert isinstance(resp.body, dict) and resp.body.get("error") and resp.body.get("error_codes"), resp.body


def signup_start(api, password: str, username: str | None = None):
    return api.post("signup/v1.0/start", username=username or unique_email("pw"), challenge_type="oob password redirect",
                    password=password)


# ====================================================================== second factor helpers (A45 onward)

def email_method(address: str, mid: str = "e1", default: bool = True) -> dict:
    return {"id": mid, "channel": "email", "target": address, "default": default, "created": 1}


def context_claims(*contexts: str) -> str:
    """The claims request a client sends for a step-up (the WWW-Authenticate challenge, decoded)."""
    if len(contexts) == 1:
        return json.dumps({"access_token": {"acrs": {"essential": True, "value": contexts[0]}}})
    return json.dumps({"access_token": {"acrs": {"essential": True, "values": list(contexts)}}})


def prove_method(api, outbox, ct_mfa_required: str, target: str, method_id: str | None = None, *, claims: str | None = None,
                 scope: str = SCOPE):
    """Introspect, challenge the given (or first offered) method and submit its code: the /token answer."""
    intro = api.post("oauth2/v2.0/introspect", continuation_token=ct_mfa_required)
    assert intro.status == 200, intro.body
    mid = method_id or intro["methods"][0]["id"]
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=mid,
                 challenge_type="password oob redirect")
    assert c.status == 200, c.body
    return api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                    oob=outbox.last_code(target), scope=scope, client_info="1", claims=claims)


def register_method(api, outbox, ct_registration_required: str, channel: str, target: str, *,
                    claims: str | None = None, scope: str = SCOPE):
    """register/challenge + register/continue + /token (continuation_token): the /token answer
    (or the first refusal on the way)."""
    c = api.post("register/v1.0/challenge", continuation_token=ct_registration_required, challenge_type="oob",
                 challenge_channel=channel, challenge_target=target)
    if c.status != 200:
        return c
    cont = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(target))
    if cont.status != 200:
        return cont
    return api.post("oauth2/v2.0/token", continuation_token=cont["continuation_token"], grant_type="continuation_token",
                    scope=scope, client_info="1", claims=claims)


def methods_of(server, email: str) -> list[tuple[str, str]]:
    return [(m["channel"], m["target"]) for m in directory.get_user(server.storage, email).methods]
