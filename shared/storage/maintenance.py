"""Health, the not-found fallback, and purging expired state (Table Storage has no TTL)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Mapping
from urllib.parse import urlsplit

from shared.protocol import errors
from shared.protocol.http import Request, Response, ok
from shared.settings import Settings
from shared.storage import signinlog
from shared.storage.directory import USER_RK
from shared.storage.tables import Storage, StorageError, StorageUnavailable, get_storage

# Every POST endpoint of the native-auth API (contract §2), relative to /api.
ENDPOINTS = (
    "oauth2/v2.0/initiate", "oauth2/v2.0/challenge", "oauth2/v2.0/token", "oauth2/v2.0/introspect",
    "signup/v1.0/start", "signup/v1.0/challenge", "signup/v1.0/continue",
    "register/v1.0/introspect", "register/v1.0/challenge", "register/v1.0/continue",
    "resetpassword/v1.0/start", "resetpassword/v1.0/challenge", "resetpassword/v1.0/continue",
    "resetpassword/v1.0/submit", "resetpassword/v1.0/poll_completion",
)
# The GET endpoints (discovery, health, the sample API, the OpenAPI document).
GET_ENDPOINTS = (".well-known/openid-configuration", "v2.0/.well-known/openid-configuration", "discovery/v2.0/keys",
                 "health", "sample/sensitive", "openapi.json")
# The account API (functions/account.py) and the methods each path accepts.
ACCOUNT_ENDPOINTS = {"me": "GET, PATCH, DELETE", "me/password": "POST", "me/methods": "GET, POST",
                     "me/methods/verify": "POST", "me/methods/{id}": "DELETE", "me/revoke-sessions": "POST",
                     "me/export": "GET", "me/confirmation": "POST", "health/detail": "GET"}
# Served also under one tenant path segment (functions/_http.endpoint).
TENANT_ALIASED = ENDPOINTS + GET_ENDPOINTS[:3]
PURGE_BATCH = 500
PURGE_SECONDS = 240.0   # of the timer's 5 minutes
EXPIRED_GRACE_SECONDS = 120
log = logging.getLogger("nativeauth.maintenance")


def health(request: Request, settings: Settings) -> Response:
    """200 when the app can serve: settings valid (else protocol.handle
    answers 503 "misconfigured" with the reason), storage reachable, signing
    keys readable. ``python -m admin doctor`` checks much more."""
    from shared.tokens.issuance import KeyUnreadable, keyring

    try:
        storage = get_storage(settings)
        storage.ping()
    except StorageUnavailable:
        return Response(503, {"status": "unavailable", "storage": "unreachable"}, {"Retry-After": "5"})
    try:
        keyring(storage, settings).keys()
    except KeyUnreadable as exc:
        return Response(503, {"status": "misconfigured", "storage": "reachable", "signing_keys": "unreadable",
                              "reason": str(exc)}, {"Retry-After": "30"})
    return ok({"status": "ok", "storage": "reachable", "signing_keys": "readable"})


def not_found(request: Request, settings: Settings) -> Response:
    path = urlsplit(request.url).path
    rel = path.split("/api/", 1)[1] if "/api/" in path else path.lstrip("/")
    rel = rel.rstrip("/").lower()
    if "/" in rel and rel.split("/", 1)[1] in TENANT_ALIASED:
        rel = rel.split("/", 1)[1]  # /api/<tenant>/...
    if rel in ENDPOINTS:
        raise errors.MethodNotAllowed()
    if rel in GET_ENDPOINTS:
        raise errors.MethodNotAllowed("This endpoint only accepts GET.", allow="GET, OPTIONS")
    account = ACCOUNT_ENDPOINTS.get(rel) or (ACCOUNT_ENDPOINTS["me/methods/{id}"]
                                             if rel.startswith("me/methods/") and rel.count("/") == 2 else None)
    if account:
        raise errors.MethodNotAllowed(f"This endpoint only accepts {account}.", allow=account + ", OPTIONS")
    raise errors.NotFound(f"No endpoint at /{path.lstrip('/')[:200]}.")


def purge_expired(settings: Settings | None = None, *, now: float | None = None, batch: int = PURGE_BATCH,
                  storage: Storage | None = None, seconds: float = PURGE_SECONDS) -> dict[str, int]:
    """Delete expired flows, refresh-token families and limit windows, a bounded
    batch at a time, until none is left or ``seconds`` have passed (the timer runs
    every 5 minutes; the process's storage unless ``storage`` is given). Safe on
    several instances at once: deletes of already-deleted entities are ignored."""
    storage = storage or get_storage(settings)
    settings = storage.settings
    now = now or time.time()
    deadline = time.monotonic() + seconds
    counts = {"flows": 0, "refresh": 0, "limits": 0}
    # Flow partitions are named by creation hour: anything older than the
    # longest flow lifetime plus an hour is dead as a whole partition.
    cutoff = "f" + time.strftime("%Y%m%d%H", time.gmtime(now - settings.flow_ttl_seconds - 3600))
    flows, users = storage.table("flows"), storage.table("users")
    kept: set[tuple[str, str]] = set()
    # A flow that expired moments ago may have finished just before: its instance is still to write its
    # sign-in record (AUTH_SIGNINLOG_WRITE_MS): a grace of two minutes, so the purge does not write it first.
    expired = {"now": int(now) - EXPIRED_GRACE_SECONDS}
    # Sign-ins and resets live in their address's partition of the users table (shared/flows/state.py):
    # found there by a filtered scan (account rows carry no expires_at, and RowKey "user" is excluded too).
    for table, flt, params in ((flows, "PartitionKey lt @cutoff", {"cutoff": cutoff}),
                               (flows, "expires_at lt @now", expired),
                               (users, "expires_at lt @now and RowKey ne @user", {**expired, "user": USER_RK})):
        while True:
            # While the log is failing, only rows that carry no record (finished ones wait for the log, and
            # would otherwise fill every page).
            q, qp = (f"{flt} and state ne @done", {**params, "done": "done"}) if kept else (flt, params)
            dead = table.query(q, qp, select=["PartitionKey", "RowKey", "log_entry"], limit=batch, deadline=deadline)
            full = len(dead) >= batch
            # A finished sign-in's log record rides on its flow row until its instance's writer puts it in the
            # log; an instance that died first left it only there. Written (if missing) before the row goes; if
            # that fails, those rows stay for the next purge and the rest of the purge goes on.
            try:
                signinlog.ensure(storage, signinlog.carried(dead))
            except StorageError as exc:
                if not kept:
                    log.warning("sign-in log records not written (%s): their flow rows are kept", type(exc).__name__)
                kept.update((e["PartitionKey"], e["RowKey"]) for e in dead if e.get("log_entry"))
                dead = [e for e in dead if not e.get("log_entry")]
            counts["flows"] += _delete_all(table, dead)
            if not full or time.monotonic() > deadline:
                break
    if kept:
        counts["flows_kept"] = len(kept)
    for name in ("refresh", "limits"):
        table = storage.table(name)
        while True:
            dead = table.query("expires_at lt @now", {"now": int(now)}, select=["PartitionKey", "RowKey"], limit=batch)
            counts[name] += _delete_all(table, dead)
            if len(dead) < batch or time.monotonic() > deadline:
                break
    return counts


def _delete_all(table, rows: list[dict]) -> int:
    """Delete rows, 100 per transaction within a partition (one round trip instead of 100). A row already gone
    (another purge, on another instance or from the CLI, got there first) fails its transaction: those rows are
    then deleted one by one, which ignores a missing row."""
    table.in_transactions("delete", rows, lambda r: table.delete(r["PartitionKey"], r["RowKey"]),
                          falls_back_on=(StorageError,))
    return len(rows)


# ------------------------------------------------------------------ readiness (python -m admin doctor)

@dataclasses.dataclass
class Check:
    name: str
    status: str          # "ok", "warn", "fail" or "skip"
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# Settings read by the platform next to the app's own (AUTH_*): an unresolved reference there breaks it too.
PLATFORM_SETTINGS = ("APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
CLOCK_WARN_SECONDS = 60
CLOCK_FAIL_SECONDS = 300


def readiness(env: Mapping[str, str] | None = None, settings: Settings | None = None) -> list[Check]:
    """Everything an operator needs to know before trusting a deployment, each
    failing check with what to fix: settings (present, well formed, no
    unresolved Key Vault reference), storage and every table, signing keys
    (readable, published), code delivery (configured and authorized, nothing
    sent), monitoring, the clock. Reads only; sends nothing; no secret value
    in the output (fingerprints only)."""
    import os

    from shared.settings import SettingsError, unresolved_reference

    env = os.environ if env is None else env
    checks: list[Check] = []
    names = sorted(k for k, v in env.items() if (k.startswith("AUTH_") or k in PLATFORM_SETTINGS) and unresolved_reference(v))
    if names:
        checks.append(Check("key vault references", "fail", f"unresolved: {', '.join(names)}",
                            "grant the app's identity 'Key Vault Secrets User' on the vault (it can take minutes to "
                            "propagate), check each secret URI, then refresh the references (docs/deploy.md 'Key Vault references')"))
    if settings is None:
        try:
            settings = Settings.from_env(env)
        except SettingsError as exc:
            checks.append(Check("settings", "fail", str(exc), "fix the setting named above (docs/deploy.md)"))
            return checks
    checks.append(Check("settings", "ok", f"{settings.environment} mode, issuer {settings.issuer}, "
                                          f"table prefix {settings.table_prefix}, delivery {settings.delivery}"))
    checks.append(_fingerprints(settings))
    storage, date = _storage_check(settings, checks)
    if storage is None:
        return checks
    tables = _safe("tables", lambda: _tables_check(storage, settings))
    checks.append(tables)
    checks.append(_safe("signing keys", lambda: _keys_check(storage, settings)) if tables.status == "ok" else
                  Check("signing keys", "skip", "not checked: the keys table is missing"))
    checks.append(_safe("delivery", lambda: _delivery_check(settings)))
    checks.append(_safe("monitoring", lambda: _monitoring_check(settings, env)))
    checks.append(_clock_check(date))
    return checks


def _safe(name: str, run) -> Check:
    """One check; whatever it raises is that check's failure, never the report's."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001
        return Check(name, "fail", f"the check itself failed: {type(exc).__name__}", "see the app's log")


def fingerprint(key: bytes) -> str:
    """A short public name for a secret (compare instances and rotations without showing it)."""
    import hashlib
    import hmac

    return hmac.new(key, b"nativeauth key fingerprint", hashlib.sha256).hexdigest()[:12]


def _fingerprints(settings: Settings) -> Check:
    parts = [f"code hash key {fingerprint(settings.code_hash_key)}",
             f"signing key secret {fingerprint(settings.signing_key_secret)}"]
    if settings.code_hash_keys_accepted:
        parts.append("also accepted code hash keys " + ", ".join(fingerprint(k) for k in settings.code_hash_keys_accepted))
    if settings.signing_key_secrets_accepted:
        parts.append("also accepted signing key secrets " +
                     ", ".join(fingerprint(k) for k in settings.signing_key_secrets_accepted))
    return Check("secrets", "ok", "; ".join(parts))


def _storage_check(settings: Settings, checks: list[Check]):
    from shared.storage.tables import Storage, StorageError

    date: list[str] = []
    try:
        storage = Storage(settings)
        pages = storage._service.list_tables(results_per_page=1, raw_response_hook=lambda r: date.append(
            r.http_response.headers.get("Date", ""))).by_page()
        next(iter(pages), None)
    except (StorageError, Exception) as exc:  # noqa: BLE001 - any failure is the answer
        how = "managed identity (AUTH_STORAGE_CLIENT_ID)" if settings.storage_table_endpoint else "connection string"
        checks.append(Check("storage", "fail", f"not reachable through the {how}: {type(exc).__name__}",
                            "check AUTH_STORAGE_TABLE_ENDPOINT / AUTH_STORAGE_CONNECTION_STRING, the network rules, "
                            "and that the identity has 'Storage Table Data Contributor' on the account"))
        return None, None
    checks.append(Check("storage", "ok", settings.storage_table_endpoint or "connection string"))
    return storage, (date[0] if date else None)


def _tables_check(storage, settings: Settings) -> Check:
    from shared.storage.tables import TABLES

    present = {t.name for t in storage._service.query_tables("TableName ge @p and TableName lt @q",
                                                             parameters={"p": settings.table_prefix,
                                                                         "q": settings.table_prefix + "~"})}
    missing = [settings.table_prefix + t for t in TABLES if settings.table_prefix + t not in present]
    if missing:
        return Check("tables", "fail", f"missing: {', '.join(missing)}",
                     "deploy infra/main.bicep (it creates them) with tablePrefix equal to AUTH_TABLE_PREFIX, "
                     "or start the app once with a credential that may create tables")
    return Check("tables", "ok", f"{len(TABLES)} tables with prefix {settings.table_prefix}")


def _keys_check(storage, settings: Settings) -> Check:
    from shared.tokens import issuance as tokens

    rows = storage.table("keys").query("PartitionKey eq @pk", {"pk": tokens.KEYS_PK})
    if not rows:
        return Check("signing keys", "warn", "none yet", "nothing to do: the first token creates one")
    current, accepted, unreadable = [], [], []
    for row in rows:
        try:
            _, by_current = tokens.decrypt_key_pem(settings, row)
            (current if by_current else accepted).append(row)
        except tokens.KeyUnreadable:
            unreadable.append(row["RowKey"])
    if unreadable:
        return Check("signing keys", "fail", f"{len(unreadable)} of {len(rows)} cannot be decrypted: "
                                             f"{', '.join(unreadable[:5])}",
                     "AUTH_SIGNING_KEY_SECRET changed without the rotation procedure: put the previous value in "
                     "AUTH_SIGNING_KEY_SECRET_ACCEPTED (docs/deploy.md 'Rotating the two secrets')")
    published = {k["kid"] for k in tokens.keyring(storage, settings).jwks()["keys"]}
    period = settings.signing_key_rotation_days * 86400
    live = [r["RowKey"] for r in rows if time.time() - int(r["created"]) < 2 * period]
    unpublished = [kid for kid in live if kid not in published]
    if unpublished:
        return Check("signing keys", "fail", f"not published in the JWKS: {', '.join(unpublished)}",
                     "restart the app (the key cache may be stale) and report a bug if it stays")
    detail = f"{len(live)} in use, all published"
    if accepted:
        retire = max(int(r["created"]) for r in accepted) + 2 * period
        return Check("signing keys", "warn", detail + f"; {len(accepted)} still encrypted under an accepted (old) "
                                                      "secret", "keep AUTH_SIGNING_KEY_SECRET_ACCEPTED until " +
                     time.strftime("%Y-%m-%d", time.gmtime(retire)) + ", when the last of them retires")
    return Check("signing keys", "ok", detail)


def _delivery_check(settings: Settings) -> Check:
    if settings.delivery == "outbox":
        return Check("delivery", "skip", f"local outbox ({settings.outbox_path}): nothing is sent")
    missing = [n for n, v in (("AUTH_EMAIL_SENDER", settings.email_sender), ("AUTH_SMS_SENDER", settings.sms_sender))
               if not v]
    if not (settings.acs_endpoint or settings.acs_connection_string):
        return Check("delivery", "fail", "no ACS endpoint", "set AUTH_ACS_ENDPOINT (managed identity) or "
                                                            "AUTH_ACS_CONNECTION_STRING")
    status = _acs_authorized(settings)
    if status == 404:
        detail = "ACS authorized (a status read answered 404 for an unknown operation; nothing was sent)"
    elif status in (401, 403):
        return Check("delivery", "fail", f"ACS refused this app's credential (HTTP {status})",
                     "give the app's identity the 'Communication and Email Service Owner' role on the "
                     "Communication Services resource, or fix AUTH_ACS_CONNECTION_STRING")
    else:
        return Check("delivery", "fail", f"ACS not reachable or unexpected answer ({status})",
                     "check AUTH_ACS_ENDPOINT and the network")
    if missing:
        return Check("delivery", "fail", detail + f"; missing {', '.join(missing)}",
                     "set the sender address (a verified domain's MailFrom) and the SMS number bought in ACS")
    return Check("delivery", "ok", detail + f"; email from {settings.email_sender}, SMS from {settings.sms_sender}")


def _acs_authorized(settings: Settings) -> int | str:
    """The HTTP status of an authenticated read of a made-up email operation:
    404 means ACS accepted the credential (nothing is sent)."""
    import uuid

    try:
        from azure.communication.email import EmailClient
        from azure.core.rest import HttpRequest

        from shared.delivery.senders import _managed_identity, _sdk_kwargs

        kwargs = _sdk_kwargs(5.0, 5.0, getattr(settings, "acs_client_kwargs", None))
        client = EmailClient.from_connection_string(settings.acs_connection_string, **kwargs) \
            if settings.acs_connection_string else \
            EmailClient(settings.acs_endpoint, _managed_identity(settings.acs_client_id), **kwargs)
        response = client.send_request(HttpRequest("GET", f"/emails/operations/{uuid.uuid4()}?api-version=2023-03-31"))
        return response.status_code
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return type(exc).__name__


def _monitoring_check(settings: Settings, env: Mapping[str, str]) -> Check:
    conn = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or ""
    if not conn:
        if settings.is_local:
            return Check("monitoring", "skip", "no Application Insights locally (logs go to the console)")
        return Check("monitoring", "fail", "APPLICATIONINSIGHTS_CONNECTION_STRING is not set",
                     "deploy infra/main.bicep (it sets it), or set it: the pumping alert reads these logs")
    fields = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    if not fields.get("InstrumentationKey") or not fields.get("IngestionEndpoint", "").startswith("https://"):
        return Check("monitoring", "fail", "APPLICATIONINSIGHTS_CONNECTION_STRING is malformed",
                     "copy the connection string from the Application Insights resource")
    return Check("monitoring", "ok", "Application Insights at " + fields["IngestionEndpoint"])


def _clock_check(date: str | None) -> Check:
    from email.utils import parsedate_to_datetime

    if not date:
        return Check("clock", "warn", "storage sent no Date header to compare with", "")
    try:
        skew = time.time() - parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", "warn", f"storage's Date header is unreadable: {date[:40]}", "")
    text = f"{skew:+.0f} s against storage's clock"
    if abs(skew) > CLOCK_FAIL_SECONDS:
        return Check("clock", "fail", text, "fix the host clock (NTP): tokens and codes are time-bound")
    if abs(skew) > CLOCK_WARN_SECONDS:
        return Check("clock", "warn", text, "check the host clock (NTP)")
    return Check("clock", "ok", text)


def health_detail(request: Request, settings: Settings) -> Response:
    """GET /api/health/detail: the readiness report (admin key in Azure: the
    function's auth level is ``admin``). 503 when a check fails."""
    checks = readiness(settings=settings)
    failed = any(c.status == "fail" for c in checks)
    return Response(503 if failed else 200, {"status": "fail" if failed else "ok",
                                            "checks": [c.as_dict() for c in checks]}, {"Cache-Control": "no-store"})
