"""Health, the not-found fallback, and purging expired state (Table Storage has no TTL)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from . import errors
from .protocol import Request, Response, ok
from .settings import Settings
from .storage import StorageUnavailable, get_storage

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
# Served also under one tenant path segment (functions/_http.endpoint).
TENANT_ALIASED = ENDPOINTS + GET_ENDPOINTS[:3]
PURGE_BATCH = 500


def health(request: Request, settings: Settings) -> Response:
    try:
        get_storage(settings).ping()
    except StorageUnavailable:
        return Response(503, {"status": "unavailable", "storage": "unreachable"}, {"Retry-After": "5"})
    return ok({"status": "ok", "storage": "reachable"})


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
    raise errors.NotFound(f"No endpoint at /{path.lstrip('/')[:200]}.")


def purge_expired(settings: Settings | None = None, *, now: float | None = None, batch: int = PURGE_BATCH) -> dict[str, int]:
    """Delete expired flows, refresh-token families and limit windows, in bounded
    batches. Safe on several instances at once: deletes of already-deleted
    entities are ignored."""
    storage = get_storage(settings)
    settings = storage.settings
    now = now or time.time()
    counts = {"flows": 0, "refresh": 0, "limits": 0}
    # Flow partitions are named by creation hour: anything older than the
    # longest flow lifetime plus an hour is dead as a whole partition.
    cutoff = "f" + time.strftime("%Y%m%d%H", time.gmtime(now - settings.flow_ttl_seconds - 3600))
    flows = storage.table("flows")
    for e in flows.query("PartitionKey lt @cutoff", {"cutoff": cutoff}, select=["PartitionKey", "RowKey"], limit=batch):
        flows.delete(e["PartitionKey"], e["RowKey"])
        counts["flows"] += 1
    for name in ("flows", "refresh", "limits"):
        table = storage.table(name)
        for e in table.query("expires_at lt @now", {"now": int(now)}, select=["PartitionKey", "RowKey"], limit=batch):
            table.delete(e["PartitionKey"], e["RowKey"])
            counts[name] += 1
    return counts
