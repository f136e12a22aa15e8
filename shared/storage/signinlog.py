"""The sign-in log: one record per flow outcome. Never a code, password or token.

PartitionKey = the UTC day, RowKey = inverted time + random, so a day's
records read newest first and old days are dropped by partition.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from shared.protocol.identifiers import mask_email
from shared.protocol.http import current
from shared.storage.tables import Storage, StorageError

MAX_TS = 10 ** 13


def record(storage: Storage, flow, user, result: str, reason: str, steps: list[str], risk: str, decision=None,
           ip: str | None = None) -> None:
    now = time.time()
    ctx = current()
    entry: dict[str, Any] = {
        "PartitionKey": time.strftime("%Y%m%d", time.gmtime(now)),
        "RowKey": f"{MAX_TS - int(now * 1000):013d}-{secrets.token_hex(4)}",
        "time": int(now), "result": result, "reason": reason,
        "flow": flow["kind"] if flow is not None else "", "client_id": flow["client_id"] if flow is not None else "",
        "user_oid": user.oid if user is not None else "", "user": mask_email(user.email) if user is not None else "",
        "ip": ip or (ctx.client_ip if ctx else "") or "", "factors": json.dumps(list(dict.fromkeys(steps))),
        "risk": risk, "policies": json.dumps(decision.results if decision is not None else []),
        "correlation_id": ctx.correlation_id if ctx else "",
        "expires_at": int(now) + 30 * 86400,
    }
    calls = (ctx.extra or {}).get("extensions") if ctx else None
    if calls:  # custom extensions called in this request: name, event, outcome, latency (never their answers)
        entry["extensions"] = json.dumps(calls)[:4000]
    try:
        storage.table("signinlog").insert(entry)
    except StorageError:
        pass  # the log must not break a sign-in; the request log line still has the outcome


def tail(storage: Storage, days: int = 1, limit: int = 50) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    now = time.time()
    for d in range(days):
        day = time.strftime("%Y%m%d", time.gmtime(now - d * 86400))
        out += storage.table("signinlog").query("PartitionKey eq @d", {"d": day}, limit=limit - len(out))
        if len(out) >= limit:
            break
    return out
