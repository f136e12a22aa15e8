"""Calling an extension: one HTTP POST with a bearer token signed by this
service, the way Entra calls its custom authentication extensions.

* **The token**: RS256 with the service's own signing keys (JWKS at
  ``<issuer>/discovery/v2.0/keys``); ``iss`` this issuer, ``aud`` the
  extension's ``resource``, ``azp``/``appid`` Entra's well-known
  custom-extension caller id (:data:`CALLER_APP_ID`), so an extension written
  for Entra validates it by changing only the issuer. Cached per audience.
* **Bounded**: the configured timeout per attempt (Entra: 2 s), at most one
  retry on a timeout, a connection error or a 5xx; 64 KiB of answer at most;
  a circuit breaker per extension (5 failures in a row open it for 30 s, then
  one trial call). Never a hang, never a 500: every failure is an
  :class:`ExtensionFailed` with Entra's error code for it.
* **SSRF guard**: extensions are configured by administrators only; redirects
  are not followed (the answer must be 200); in Azure every address the host
  resolves to must be public, and the connection goes to the address that was
  checked (no second lookup an attacker's DNS could answer differently).
* **Nothing leaks**: the payload holds no secret but the code of an OTP send
  and the encrypted password of a password submit; nothing the extension
  returns is logged raw. Outcome and latency go to the request's context, and
  from there to the sign-in log.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from shared.protocol import errors
from shared.protocol.context import current
from shared.settings import Settings
from shared.storage.tables import Storage

from .config import ExtensionConfigError, check_url, names_a_client, public_address

log = logging.getLogger("nativeauth.extensions")

CALLER_APP_ID = "99045fe1-7639-4a75-9d4a-577b6ca3810f"  # Entra's custom authentication extension caller (azp)
MAX_RESPONSE_BYTES = 64 * 1024
BREAKER_FAILURES = 5
BREAKER_OPEN_SECONDS = 30.0
TOKEN_LIFETIME = 300

# Entra's error codes for custom extensions (Troubleshoot your custom authentication extension).
CODES = {"unexpected": 1003001, "status": 1003002, "body": 1003003, "throttled": 1003004, "timeout": 1003005,
         "content_type": 1003006, "null_claims": 1003007, "empty": 1003009, "actions": 1003010,
         "action_type": 1003012, "url": 1003020, "blocked": 1003023, "size": 1003024, "claims_size": 1003025,
         "claim_key": 1003026, "connection": 1003027}


class ExtensionFailed(errors.ServiceUnavailable):
    """An extension that failed, with ``on_error: fail``: the step fails with a
    503 the SDKs retry once, carrying Entra's error code for the failure."""
    description = "A custom authentication extension did not answer as expected. Retry shortly."

    def __init__(self, kind: str, name: str = "") -> None:
        # The extension's name is the administrator's: logged, never sent to the client.
        super().__init__(f"A custom authentication extension failed ({kind}). Retry shortly.",
                         error_codes=(CODES.get(kind, 1003001),), retry_after=5)
        self.kind, self.name = kind, name


class ExtensionError(Exception):
    """Raised by :func:`call` (the event decides between failing and continuing)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# ------------------------------------------------------------------ circuit breaker

class _Breaker:
    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.trial = False


_breakers: dict[str, _Breaker] = {}
_breakers_lock = threading.Lock()


def _breaker(name: str) -> _Breaker:
    with _breakers_lock:
        return _breakers.setdefault(name, _Breaker())


def reset_breakers() -> None:
    with _breakers_lock:
        _breakers.clear()


def _admit(name: str) -> None:
    b = _breaker(name)
    with _breakers_lock:
        now = time.monotonic()
        if b.open_until > now:
            raise ExtensionError("throttled", "circuit open")
        if b.open_until and not b.trial:
            b.trial = True          # half-open: this call is the trial
        elif b.open_until and b.trial:
            raise ExtensionError("throttled", "circuit half-open, trial in progress")


def _record(name: str, ok: bool) -> None:
    b = _breaker(name)
    with _breakers_lock:
        if ok:
            b.failures, b.open_until, b.trial = 0, 0.0, False
            return
        b.failures += 1
        if b.trial or b.failures >= BREAKER_FAILURES:
            b.open_until, b.trial = time.monotonic() + BREAKER_OPEN_SECONDS, False
            log.warning("extension %s: circuit open for %d s after %d failures", name, BREAKER_OPEN_SECONDS, b.failures)


# ------------------------------------------------------------------ the bearer token

_tokens: dict[tuple[str, str], tuple[float, str]] = {}
_tokens_lock = threading.Lock()


def bearer(storage: Storage, settings: Settings, audience: str) -> str:
    from shared.tokens.issuance import keyring, sign_jwt

    key = (settings.issuer, audience)
    now = time.time()
    with _tokens_lock:
        hit = _tokens.get(key)
        if hit and hit[0] - 60 > now:
            return hit[1]
    iat = int(now)
    token = sign_jwt(keyring(storage, settings), {
        "iss": settings.issuer, "aud": audience, "azp": CALLER_APP_ID, "appid": CALLER_APP_ID, "sub": CALLER_APP_ID,
        "tid": settings.tenant_id, "iat": iat, "nbf": iat, "exp": iat + TOKEN_LIFETIME, "ver": "2.0",
        "jti": str(uuid.uuid4()), "idtyp": "app"}, "JWT")
    with _tokens_lock:
        _tokens[key] = (iat + TOKEN_LIFETIME, token)
    return token


# ------------------------------------------------------------------ HTTP

class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


_resolver = None
_resolver_lock = threading.Lock()


def _getaddrinfo(host: str, port: int, timeout: float):
    """getaddrinfo within the attempt's time budget: a slow resolver for the extension's domain must not hold
    the request (the lookup runs on a small pool; one that overruns is abandoned, and a pool kept busy by a
    stuck resolver fails later lookups as timeouts rather than queueing requests behind it)."""
    global _resolver
    from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout

    with _resolver_lock:
        if _resolver is None:
            _resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ext-dns")
    future = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()
        raise ExtensionError("timeout", "dns") from None


def _resolve(host: str, port: int, settings: Settings, timeout: float = 10.0) -> str:
    try:
        infos = _getaddrinfo(host, port, timeout)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ExtensionError("connection", f"cannot resolve: {type(exc).__name__}") from None
    addresses = [info[4][0] for info in infos]
    if not settings.is_local:
        for a in addresses:
            if not public_address(ipaddress.ip_address(a.split("%")[0])):
                raise ExtensionError("url", "resolves to a private, loopback or link-local address")
    return addresses[0]


def _context() -> ssl.SSLContext:
    import os

    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()


def _post_once(url: str, body: bytes, token: str, timeout: float, settings: Settings) -> tuple[int, str, bytes]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)   # check_url (before every call) vetted it
    resolving = time.monotonic()
    address = _resolve(parts.hostname or "", port, settings, timeout)
    timeout = max(0.05, timeout - (time.monotonic() - resolving))   # one budget for the whole attempt
    conn = (_PinnedHTTPS(parts.hostname, port, address, timeout, _context()) if parts.scheme == "https"
            else _PinnedHTTP(parts.hostname, port, address, timeout))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The socket timeout restarts with every byte: an answer trickled one byte at a time would never time
    # out. A deadline for the whole attempt shuts the connection down.
    expired = threading.Event()

    def _expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    deadline = threading.Timer(timeout, _expire)
    deadline.daemon = True
    deadline.start()
    try:
        conn.request("POST", path, body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json",
            "User-Agent": "native-auth-backend custom-extension caller"})
        resp = conn.getresponse()
        data = resp.read(MAX_RESPONSE_BYTES + 1)
        if expired.is_set():
            raise ExtensionError("timeout", "deadline")
        return resp.status, resp.getheader("Content-Type") or "", data
    except (socket.timeout, TimeoutError):
        raise ExtensionError("timeout") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set():
            raise ExtensionError("timeout", "deadline") from None
        raise ExtensionError("connection", type(exc).__name__) from None
    finally:
        deadline.cancel()
        conn.close()


def call(storage: Storage, settings: Settings, ext: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """POST the payload; the parsed JSON answer (a dict) or :class:`ExtensionError`
    (whatever goes wrong: never another exception). Latency and outcome are
    noted in the request context."""
    name = ext["name"]
    try:
        client = payload["data"]["authenticationContext"]["clientServicePrincipal"]["appId"]
    except (KeyError, TypeError):
        client = ""
    # One breaker per extension and client: failures one app provokes do not close the extension for the others.
    breaker = f"{name}|{client}"
    started = time.perf_counter()
    outcome = "ok"
    tries = 0
    try:
        try:
            check_url(ext["url"], settings)
        except ExtensionConfigError:
            raise ExtensionError("url") from None
        if names_a_client(storage, settings, ext["resource"]):
            log.warning("extension %s: its resource is now a registered app's client id; not called", name)
            raise ExtensionError("url", "resource")
        _admit(breaker)
        body = json.dumps(payload, separators=(",", ":")).encode()
        token = bearer(storage, settings, ext["resource"])
        for attempt in range(1 + int(ext.get("max_retries", 1))):
            tries = attempt + 1
            try:
                status, ctype, data = _post_once(ext["url"], body, token, ext["timeout_ms"] / 1000.0, settings)
            except ExtensionError as exc:
                if exc.kind in ("timeout", "connection") and attempt < int(ext.get("max_retries", 1)):
                    continue
                raise
            if status >= 500 and attempt < int(ext.get("max_retries", 1)):
                continue
            if status == 429:
                raise ExtensionError("throttled", "429")
            if status != 200:
                raise ExtensionError("status", str(status))
            if len(data) > MAX_RESPONSE_BYTES:
                raise ExtensionError("size")
            if not data.strip():
                raise ExtensionError("empty")
            if ctype.split(";")[0].strip().lower() != "application/json":
                raise ExtensionError("content_type")
            try:
                parsed = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise ExtensionError("body", "not JSON") from None
            if not isinstance(parsed, dict):
                raise ExtensionError("body", "not an object")
            _record(breaker, True)
            return parsed
        raise ExtensionError("unexpected")
    except ExtensionError as exc:
        outcome = exc.kind
        if exc.kind != "throttled" or "circuit" not in str(exc):
            _record(breaker, False)
        raise
    except Exception as exc:  # noqa: BLE001 - a storage blip (the bearer), a bad port...: the extension's failure
        outcome = "unexpected"
        _record(breaker, False)   # also ends a half-open trial (it must never stay "in progress")
        log.warning("extension %s: unexpected %s", name, type(exc).__name__)
        raise ExtensionError("unexpected", type(exc).__name__) from None
    finally:
        ms = round((time.perf_counter() - started) * 1000, 1)
        ctx = current()
        if ctx is not None:
            ctx.extra = {**(ctx.extra or {})}
            ctx.extra.setdefault("extensions", []).append(
                {"name": name, "event": ext["event"], "ms": ms, "outcome": outcome, "tries": tries})
        log.info("extension %s (%s): %s in %.1f ms, %d tries", name, ext["event"], outcome, ms, tries)


def action_of(answer: dict[str, Any], response_type: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The one action of an answer, validated: ``(short action name, action)``.
    ``@odata.type`` values are compared case-insensitively (Entra's own docs
    and samples disagree on the casing)."""
    data = answer.get("data")
    if not isinstance(data, dict):
        raise ExtensionError("body", "no data")
    otype = data.get("@odata.type")
    if not isinstance(otype, str) or otype.lower().lstrip("#") != response_type.lower():
        raise ExtensionError("body", "wrong @odata.type")
    actions = data.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        raise ExtensionError("actions")
    action = actions[0]
    atype = action.get("@odata.type")
    short = {a.lower(): a for a in allowed}
    key = atype.lower().lstrip("#") if isinstance(atype, str) else ""
    if key not in short:
        raise ExtensionError("action_type")
    return short[key].rsplit(".", 1)[-1], action
