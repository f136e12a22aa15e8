"""Custom authentication extensions: what an administrator configures
(``python -m admin extensions ...``), stored in Table Storage next to the
policies (partition ``extension`` of the policies table) and cached per
instance for a few seconds.

One extension answers one event (Entra's event names):

* ``tokenIssuanceStart``: claims added to the access and/or ID token (``claims``
  maps the returned claim names to each token, like Entra's claims-mapping
  policy: a claim not mapped is not issued);
* ``attributeCollectionStart`` / ``attributeCollectionSubmit``: sign-up attributes
  (prefill, hide, validate, modify, block);
* ``otpSend``: one-time codes delivered by the extension instead of ACS (``channels``:
  email and/or SMS; ``fallback``: the built-in sender when the extension fails);
* ``passwordSubmit``: just-in-time migration of users imported with the
  migration marker (the password travels encrypted to ``encryption_key``).

An event has at most one extension per client (``clients``: ``all`` or client
ids); saving one that would overlap another is refused.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from shared.settings import Settings
from shared.storage.tables import InstanceCache, Storage

PK = "extension"
EVENTS = ("tokenIssuanceStart", "attributeCollectionStart", "attributeCollectionSubmit", "otpSend", "passwordSubmit")
ON_ERROR = ("fail", "continue")
CACHE_SECONDS = 10.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
CLAIM_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
MAX_TIMEOUT_MS = 10000
# Claims an extension can never set: the protocol's own and those Entra restricts (claims-mapping policy type).
# `roles` is deliberately settable: app roles from the customer's own data are what extensions are for (the
# issue's first use case); resource servers that act on them trust the customer's extension (SECURITY.md §3.6).
RESERVED_CLAIMS = frozenset(c.lower() for c in (
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "oid", "tid", "amr", "acr", "acrs", "scp", "azp",
    "azpacr", "appid", "appidacr", "ver", "auth_time", "sid", "nonce", "client_id", "idp", "idtyp", "at_hash",
    "c_hash", "email", "preferred_username", "upn", "unique_name", "name", "uti", "rh", "wids", "ipaddr", "cnf",
    "typ", "alg", "kid", "x5t", "onprem_sid", "pwd_exp", "pwd_url", "puid", "login_hint", "client_info", "ctry",
    "tenant_ctry", "tenant_region_scope", "xms_cc", "nickname", "family_name", "given_name", "hasgroups", "groups",
    # RFC 9068 / RFC 8693 / OIDC claims other resource servers act on (Spring reads `scope` before `scp`)
    "scope", "act", "may_act", "entitlements", "cid", "email_verified", "phone_number", "phone_number_verified",
    "s_hash", "events", "token_use",
))
MAX_CLAIMS_BYTES = 3 * 1024      # Entra: "The maximum claim size ... 3KB", keys and values together
MAX_CLAIM_VALUES = 100


class ExtensionConfigError(ValueError):
    """An extension definition that cannot be saved (the admin CLI prints it)."""


def validate(raw: dict[str, Any], settings: Settings, *, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete, normalized extension definition, or :class:`ExtensionConfigError`."""
    if not isinstance(raw, dict):
        raise ExtensionConfigError("an extension is a JSON object")
    unknown = set(raw) - {"name", "event", "url", "resource", "clients", "timeout_ms", "max_retries", "on_error",
                          "claims", "channels", "fallback", "encryption_key", "encryption_kid", "state", "id",
                          "listener_id"}
    if unknown:
        raise ExtensionConfigError(f"unknown fields: {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ExtensionConfigError("name: letters, digits, space, '.', '_' or '-', at most 64")
    event = raw.get("event")
    if event not in EVENTS:
        raise ExtensionConfigError(f"event: one of {', '.join(EVENTS)}")
    url = raw.get("url")
    check_url(url, settings)
    resource = raw.get("resource")
    if not isinstance(resource, str) or not resource.strip() or len(resource) > 256:
        raise ExtensionConfigError("resource: the audience of the token the extension receives (e.g. api://host/id)")
    own = {r.lower() for r in settings.resources} | {settings.account_resource.lower(), settings.issuer.lower()}
    if settings.dev_client_id:
        own.add(settings.dev_client_id.lower())
    if resource.strip().lower().rstrip("/") in {o.rstrip("/") for o in own}:
        raise ExtensionConfigError("resource: the extension's own audience, not one of this service's APIs or apps "
                                   "(the token it receives must not be usable at them)")
    clients = raw.get("clients", ["all"])
    if not isinstance(clients, list) or not clients or not all(isinstance(c, str) and c.strip() for c in clients):
        raise ExtensionConfigError('clients: a list of client ids, or ["all"]')
    clients = ["all"] if "all" in clients else sorted({c.strip().lower() for c in clients})
    timeout = raw.get("timeout_ms", 2000)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 200 <= timeout <= MAX_TIMEOUT_MS:
        raise ExtensionConfigError(f"timeout_ms: 200 to {MAX_TIMEOUT_MS} (Entra's default is 2000)")
    retries = raw.get("max_retries", 1)
    if retries not in (0, 1) or isinstance(retries, bool):
        raise ExtensionConfigError("max_retries: 0 or 1")
    on_error = raw.get("on_error", "fail")
    if on_error not in ON_ERROR:
        raise ExtensionConfigError("on_error: 'fail' (the step fails) or 'continue' (without the extension's output)")
    out: dict[str, Any] = {"name": name, "event": event, "url": url, "resource": resource.strip(), "clients": clients,
                           "timeout_ms": timeout, "max_retries": retries, "on_error": on_error,
                           "state": raw.get("state", "on"),
                           "id": (existing or {}).get("id") or raw.get("id") or str(uuid.uuid4()),
                           "listener_id": (existing or {}).get("listener_id") or raw.get("listener_id") or str(uuid.uuid4())}
    if out["state"] not in ("on", "off"):
        raise ExtensionConfigError("state: on or off")
    if event == "tokenIssuanceStart":
        claims = raw.get("claims")
        if not isinstance(claims, dict) or not set(claims) <= {"access_token", "id_token"} or not claims:
            raise ExtensionConfigError('claims: {"access_token": [names], "id_token": [names]} (which returned '
                                       "claims each token carries)")
        mapped: dict[str, list[str]] = {}
        for token, names in claims.items():
            if not isinstance(names, list) or not all(isinstance(n, str) and CLAIM_NAME_RE.match(n) for n in names):
                raise ExtensionConfigError(f"claims.{token}: a list of claim names")
            reserved = [n for n in names if n.lower() in RESERVED_CLAIMS or n.lower().startswith("xms_")]
            if reserved:
                raise ExtensionConfigError(f"claims.{token}: reserved claims cannot be set: {', '.join(reserved)}")
            mapped[token] = sorted(set(names))
        out["claims"] = mapped
    elif "claims" in raw:
        raise ExtensionConfigError("claims: only for tokenIssuanceStart")
    if event == "otpSend":
        channels = raw.get("channels", ["email"])
        if not isinstance(channels, list) or not channels or not set(channels) <= {"email", "sms"}:
            raise ExtensionConfigError('channels: ["email"], ["sms"] or both')
        fallback = raw.get("fallback", "none")
        if fallback not in ("none", "builtin"):
            raise ExtensionConfigError("fallback: 'builtin' (the configured sender delivers when the extension fails) or 'none'")
        out.update(channels=sorted(set(channels)), fallback=fallback)
    if event == "passwordSubmit":
        key = raw.get("encryption_key")
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa

            public = serialization.load_pem_public_key(key.encode()) if isinstance(key, str) else None
        except (ValueError, TypeError):
            public = None
        if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
            raise ExtensionConfigError("encryption_key: the extension's RSA public key (PEM, 2048 bits or more): "
                                       "the password travels encrypted to it")
        kid = raw.get("encryption_kid", "")
        if not isinstance(kid, str) or len(kid) > 128:
            raise ExtensionConfigError("encryption_kid: a key id (optional)")
        out.update(encryption_key=key.strip() + "\n", encryption_kid=kid)
    return out


def check_url(url: Any, settings: Settings) -> None:
    """HTTPS in Azure (HTTP allowed locally), no user info, no fragment; in
    Azure a literal private, loopback or link-local address is refused here
    and every resolved address is checked again at call time."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ExtensionConfigError("url: the extension's endpoint")
    parts = urlsplit(url)
    if parts.scheme not in (("http", "https") if settings.is_local else ("https",)):
        raise ExtensionConfigError("url: https only" + ("" if settings.is_local else " in Azure (http is allowed locally)"))
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise ExtensionConfigError("url: a host, no user info, no fragment")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
        parts.hostname.encode("idna")
    except (ValueError, UnicodeError):
        raise ExtensionConfigError("url: not a valid host and port") from None
    if not settings.is_local:
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return
        if not public_address(address):
            raise ExtensionConfigError("url: private, loopback and link-local addresses are refused in Azure")


# IPv6 forms that carry (or translate to) an IPv4 address, and site-local space: Python's ``is_global``
# lets some through (NAT64, IPv4-compatible, 6to4), so they are refused here unless what they carry is public.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"),)   # RFC 6052 well-known prefix: the v4 address in the last 32 bits
_REFUSED_V6 = (ipaddress.ip_network("::/96"), ipaddress.ip_network("fec0::/10"),
               ipaddress.ip_network("64:ff9b:1::/48"),      # local-use NAT64 (RFC 8215): v4 elsewhere in the address
               ipaddress.ip_network("::ffff:0:0:0/96"))     # SIIT IPv4-translated (RFC 2765)
# Azure's platform addresses: the wire server (168.63.129.16) is globally routed, yet only the platform's.
_REFUSED_V4 = (ipaddress.ip_network("168.63.129.16/32"),)


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address an extension may live at in Azure: globally routable, and
    not a v6 wrapper of a private v4 address."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return public_address(ip.sixtofour)
        if any(ip in net for net in _NAT64):
            return public_address(ipaddress.ip_address(int(ip) & 0xFFFFFFFF))
        if any(ip in net for net in _REFUSED_V6):
            return False
    elif any(ip in net for net in _REFUSED_V4):
        return False
    return ip.is_global and not ip.is_multicast


# ------------------------------------------------------------------ storage

_cache = InstanceCache(CACHE_SECONDS)


def load(storage: Storage, *, fresh: bool = False) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        out = []
        for row in storage.table("policies").query("PartitionKey eq @pk", {"pk": PK}):
            try:
                out.append(json.loads(row["definition"]))
            except (KeyError, ValueError):
                continue
        out.sort(key=lambda e: e["name"])
        return out

    return _cache.get(id(storage), read, fresh=fresh)


def clear_cache() -> None:
    _cache.forget()


def names_a_client(storage: Storage, settings: Settings, resource: str) -> bool:
    """Whether an extension's resource is (a spelling of) the client id of an app registered here: checked
    when it is saved and again before each call (an app may be registered after the extension)."""
    from shared.storage.directory import get_client

    value = resource.strip().rstrip("/")
    for prefix in ("api://", "spn:"):
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
    return any(get_client(storage, settings, c) is not None for c in dict.fromkeys((value, value.lower())))


def save(storage: Storage, settings: Settings, raw: dict[str, Any]) -> dict[str, Any]:
    existing = next((e for e in load(storage, fresh=True) if e["name"] == raw.get("name")), None)
    ext = validate(raw, settings, existing=existing)
    if names_a_client(storage, settings, ext["resource"]):
        raise ExtensionConfigError("resource: the extension's own audience, not the client id of an app registered "
                                   "here (the token it receives would be accepted by that app)")
    if ext["state"] == "on":
        for other in load(storage, fresh=True):
            if other["name"] == ext["name"] or other["event"] != ext["event"] or other.get("state") != "on":
                continue
            if "all" in other["clients"] or "all" in ext["clients"] or set(other["clients"]) & set(ext["clients"]):
                if ext["event"] != "otpSend" or set(other.get("channels", [])) & set(ext.get("channels", [])):
                    raise ExtensionConfigError(f"extension {other['name']!r} already answers {ext['event']} for "
                                               "some of these clients: one extension per event and client")
    storage.table("policies").put({"PartitionKey": PK, "RowKey": ext["name"], "definition": json.dumps(ext)})
    clear_cache()
    return ext


def delete(storage: Storage, name: str) -> bool:
    if storage.table("policies").get(PK, name) is None:
        return False
    storage.table("policies").delete(PK, name)
    clear_cache()
    return True


def for_event(storage: Storage, event: str, client_id: str | None, channel: str | None = None) -> dict[str, Any] | None:
    """The extension that answers ``event`` for this client (and OTP channel), if any."""
    client = (client_id or "").lower()
    for ext in load(storage):
        if ext["event"] != event or ext.get("state") != "on":
            continue
        if "all" not in ext["clients"] and client not in ext["clients"]:
            continue
        if channel is not None and channel not in ext.get("channels", ["email"]):
            continue
        return ext
    return None
