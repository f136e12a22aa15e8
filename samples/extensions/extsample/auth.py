"""The bearer-token check of every extension call, the way Entra documents it
("Protect your REST API"), against whichever issuer is configured:

* RS256 signature with a key of the issuer's JWKS, found through
  ``<EXTENSION_ISSUER>/.well-known/openid-configuration`` (``jwks_uri``);
  keys are cached and fetched again once when a token names an unknown ``kid``;
* ``iss`` == EXTENSION_ISSUER exactly, ``aud`` one of EXTENSION_AUDIENCE,
  ``exp`` required and not passed, ``nbf``/``iat`` not in the future (60 s leeway);
* ``azp`` (v2 tokens) and/or ``appid`` (v1 tokens): every one present must be
  the well-known caller id ``99045fe1-7639-4a75-9d4a-577b6ca3810f``, and at least one must be present.

Plain http is accepted for loopback issuers only (the local backend is
``http://127.0.0.1:7071/api``) unless EXTENSION_ALLOW_INSECURE_HTTP is true.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import jwt

from .config import AUTHORIZED_PARTY, ConfigError, Settings

log = logging.getLogger("extensions_sample.auth")

LEEWAY_SECONDS = 60
FETCH_TIMEOUT_SECONDS = 5
MAX_DOCUMENT_BYTES = 512 * 1024


class Unauthorized(Exception):
    """The call is not from the configured issuer's extension caller (answered 401)."""


class KeysUnavailable(Exception):
    """The issuer's discovery document or JWKS could not be fetched (answered 503)."""


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, allow_http: bool, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and (allow_http or _is_loopback(parts.hostname))):
        return
    raise ConfigError(f"{what} {url!r} must be https (http only for loopback hosts, "
                      "or with EXTENSION_ALLOW_INSECURE_HTTP=true)")


def _get_json(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            data = response.read(MAX_DOCUMENT_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise KeysUnavailable(f"GET {url} failed: {exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise KeysUnavailable(f"GET {url}: the document is too large")
    try:
        value = json.loads(data)
    except ValueError:
        raise KeysUnavailable(f"GET {url}: not JSON") from None
    if not isinstance(value, dict):
        raise KeysUnavailable(f"GET {url}: not a JSON object")
    return value


class _IssuerKeys:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.failed_at: float | None = None


class SigningKeys:
    """The signing keys of each issuer, cached.

    A key is looked up in the cache; the JWKS is fetched when the cache is empty
    or older than ``max_age``, and once more when a token names a ``kid`` the
    cache does not know, unless the last fetch is younger than ``min_refetch``
    (so a flood of made-up ``kid`` values cannot turn into a flood of fetches).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issuers: dict[str, _IssuerKeys] = {}
        self.fetches = 0  # JWKS downloads, for tests and curiosity

    def key(self, issuer: str, kid: str, *, max_age: float, min_refetch: float,
            allow_http: bool) -> jwt.PyJWK:
        with self._lock:
            entry = self._issuers.setdefault(issuer, _IssuerKeys())
        with entry.lock:  # one fetch at a time per issuer; the others wait for its result
            now = time.monotonic()
            if entry.fetched_at is None or now - entry.fetched_at >= max_age:
                wanted = True
            else:
                wanted = kid not in entry.keys and now - entry.fetched_at >= min_refetch
                if wanted:
                    log.info("Unknown signing key id; fetching the JWKS of %s again", issuer)
            if wanted:
                if entry.failed_at is not None and now - entry.failed_at < min_refetch:
                    if not entry.keys:
                        raise KeysUnavailable(f"the signing keys of {issuer} could not be fetched just now")
                else:
                    try:
                        self._refresh(issuer, entry, allow_http)
                        entry.failed_at = None
                    except KeysUnavailable as exc:
                        entry.failed_at = now
                        if not entry.keys:
                            raise
                        log.warning("%s; using the cached signing keys", exc)
            found = entry.keys.get(kid)
        if found is None:
            raise Unauthorized("the token's signing key (kid) is not one of the issuer's keys")
        return found

    def _refresh(self, issuer: str, entry: _IssuerKeys, allow_http: bool) -> None:
        discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        _check_url(discovery_url, allow_http, "The discovery document URL")
        discovery = _get_json(discovery_url)
        if discovery.get("issuer") not in (None, issuer):
            log.warning("The discovery document at %s names the issuer %r, not %r (tokens are checked "
                        "against EXTENSION_ISSUER)", discovery_url, discovery.get("issuer"), issuer)
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise KeysUnavailable(f"{discovery_url} has no jwks_uri")
        _check_url(jwks_uri, allow_http, "The jwks_uri")
        document = _get_json(jwks_uri)
        self.fetches += 1
        keys: dict[str, jwt.PyJWK] = {}
        for item in document.get("keys") or []:
            if not isinstance(item, dict) or item.get("kty") != "RSA" or not isinstance(item.get("kid"), str):
                continue
            if item.get("use") not in (None, "sig") or item.get("alg") not in (None, "RS256"):
                continue
            try:
                keys[item["kid"]] = jwt.PyJWK(item, algorithm="RS256")
            except jwt.PyJWTError:
                log.warning("Skipping an unusable key (kid %r) in %s", item["kid"], jwks_uri)
        entry.keys = keys
        entry.fetched_at = time.monotonic()
        log.info("Fetched %d signing key(s) of %s", len(keys), issuer)


def check_bearer(authorization: str | None, settings: Settings, keys: SigningKeys) -> dict:
    """The token's claims when the Authorization header is acceptable; raises Unauthorized otherwise."""
    issuer, audiences = settings.issuer, settings.audiences  # ConfigError first: a misconfiguration is not a 401
    allow_http = settings.flag("EXTENSION_ALLOW_INSECURE_HTTP")
    max_age = settings.seconds("JWKS_CACHE_SECONDS", 3600)
    min_refetch = settings.seconds("JWKS_MIN_REFETCH_SECONDS", 10)

    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a bearer token is required")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("the bearer token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise Unauthorized("the bearer token must be signed with RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("the bearer token has no key id (kid)")

    key = keys.key(issuer, kid, max_age=max_age, min_refetch=min_refetch, allow_http=allow_http)
    try:
        claims = jwt.decode(token, key=key, algorithms=["RS256"], audience=audiences, issuer=issuer,
                            leeway=LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the bearer token has expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("the bearer token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("the bearer token is from another issuer") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("the bearer token's signature is not valid") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the bearer token is not valid ({type(exc).__name__})") from None

    parties = [claims[name] for name in ("azp", "appid") if name in claims]
    if not parties:
        raise Unauthorized("the bearer token names no caller (azp or appid)")
    if any(not isinstance(p, str) or p.lower() != AUTHORIZED_PARTY for p in parties):
        raise Unauthorized("the bearer token was not issued to the custom authentication extension caller")
    return claims
