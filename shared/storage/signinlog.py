"""The sign-in log: one record per flow outcome. Never a code, password or token.

PartitionKey = the UTC day, RowKey = inverted time + random, so a day's
records read newest first and old days are dropped by partition.

A successful sign-in's record is not written on the request path. It rides on
the flow's final write (``log_entry``, the If-Match write that ends the flow:
no extra operation), and this instance writes it to the log a moment later,
in batches (:func:`later`). If the instance dies first, the record is still in
the flow row, and the purge that deletes that flow writes it (:func:`ensure`)
before it deletes the row: nothing is lost, it is only late (at most the flow's
lifetime plus one purge interval, about 20 minutes), and its reason says it was
not confirmed (the same happens when the request failed after the flow's final
write: the sign-in succeeded, the tokens may not have gone out). Every other
record is written at once (:func:`record`).
"""

from __future__ import annotations

import atexit
import json
import logging
import secrets
import threading
import time
from collections import defaultdict
from typing import Any, Iterable

from shared.protocol.identifiers import mask_email
from shared.protocol.http import current
from shared.storage.tables import MAX_BATCH, Conflict, Storage, StorageError, check_entity

log = logging.getLogger("nativeauth.signinlog")
metrics = logging.getLogger("nativeauth.metrics")

MAX_TS = 10 ** 13
POLICIES_UP_TO = 20_000  # characters of policy results kept in a record: every record fits in the flow row's
                         # final write (a property holds 32 Ki characters; the rest of a record is under 6,000)
RIDES_UP_TO = 30_000     # characters of a record on the flow row; a larger one is written at once instead
UNCONFIRMED = "written by the purge: its instance did not write it (stopped, failed, or the request failed first)"


def entry(flow, user, result: str, reason: str, steps: list[str], risk: str, decision=None,
          ip: str | None = None) -> dict[str, Any]:
    """One record, complete with its keys."""
    now = time.time()
    ctx = current()
    out: dict[str, Any] = {
        "PartitionKey": time.strftime("%Y%m%d", time.gmtime(now)),
        "RowKey": f"{MAX_TS - int(now * 1000):013d}-{secrets.token_hex(4)}",
        "time": int(now), "result": result, "reason": reason,
        "flow": flow["kind"] if flow is not None else "", "client_id": flow["client_id"] if flow is not None else "",
        "user_oid": user.oid if user is not None else "", "user": mask_email(user.email) if user is not None else "",
        "ip": ip or (ctx.client_ip if ctx else "") or "", "factors": json.dumps(list(dict.fromkeys(steps))),
        "risk": risk, "policies": _policies(decision.results if decision is not None else []),
        "correlation_id": ctx.correlation_id if ctx else "",
        "expires_at": int(now) + 30 * 86400,
    }
    calls = (ctx.extra or {}).get("extensions") if ctx else None
    if calls:  # custom extensions called in this request: name, event, outcome, latency (never their answers)
        out["extensions"] = json.dumps(calls)[:4000]
    return out


def _policies(results: list[Any]) -> str:
    """The policy results as JSON, the last ones dropped (and counted) if they would not fit. Measured as the
    flow row stores it: encoded once more inside the record, where every quote and backslash doubles."""
    text = json.dumps(results)
    kept = len(results)
    while len(json.dumps(text)) > POLICIES_UP_TO and kept:
        kept = max(0, min(kept - 1, int(kept * 0.9)))
        text = json.dumps([*results[:kept], {"truncated": len(results) - kept}])
    return text


def fits(record: dict[str, Any]) -> bool:
    """Whether the record fits in the flow row's final write (a property holds 32 Ki characters)."""
    return len(json.dumps(record)) <= RIDES_UP_TO


def record(storage: Storage, flow, user, result: str, reason: str, steps: list[str], risk: str, decision=None,
           ip: str | None = None) -> None:
    """Write one record now."""
    write(storage, entry(flow, user, result, reason, steps, risk, decision, ip))


def write(storage: Storage, record: dict[str, Any]) -> None:
    try:
        storage.table("signinlog").insert(record)
    except StorageError:
        pass  # the log must not break a sign-in; the request log line still has the outcome


# ------------------------------------------------------------------ records written off the request path

class _Later:
    """Records whose flow row already holds them, written in batches by one
    background thread. ``flush`` writes what is waiting now (the readers of the
    log on this instance call it first, so they see their own sign-ins)."""

    def __init__(self) -> None:
        self._items: list[tuple[Storage, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()   # one writer at a time: a flush returns after a drain in progress
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._delay = 0.2   # seconds a record waits for others to share its batch (AUTH_SIGNINLOG_WRITE_MS)
        self._atexit = False

    def add(self, storage: Storage, record: dict[str, Any]) -> None:
        with self._lock:
            self._delay = storage.settings.signinlog_write_ms / 1000
            self._items.append((storage, record))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="signinlog-writer", daemon=True)
                self._thread.start()
                if not self._atexit:
                    atexit.register(self.flush)
                    self._atexit = True
            if len(self._items) >= MAX_BATCH:
                self._wake.set()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                items, self._items = self._items, []
            by_store: dict[int, tuple[Storage, list[dict[str, Any]]]] = {}
            for storage, record in items:
                by_store.setdefault(id(storage), (storage, []))[1].append(record)
            for storage, records in by_store.values():
                try:
                    trips = _create_all(storage, records)
                except StorageError as exc:   # the flow rows hold them: the purge writes them
                    log.warning("%d sign-in log records left to the purge: %s", len(records), type(exc).__name__)
                    continue
                metrics.info("metric %s", json.dumps({"metric": "signinlog_written", "records": len(records),
                                                       "round_trips": trips}))

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the writer must outlive any one failure
                log.exception("sign-in log writer")


_later = _Later()


def later(storage: Storage, record: dict[str, Any]) -> None:
    """Write a record that the flow's final write already holds, off the request path."""
    _later.add(storage, record)


def flush() -> None:
    """Write this instance's waiting records now."""
    _later.flush()


def _create_all(storage: Storage, records: list[dict[str, Any]]) -> int:
    """Insert records that may already be there (written by another path), in
    transactions per day; a record already there is left as it is. Returns the
    number of round trips. Raises StorageError when storage fails."""
    table = storage.table("signinlog")

    def insert_unless_there(record: dict[str, Any]) -> None:
        try:
            table.insert(record)
        except Conflict:
            pass

    return table.in_transactions("create", records, insert_unless_there, falls_back_on=(Conflict,))


def carried(flow_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sign-in records these flow rows carry. A row whose record cannot be read
    (only storage corruption or a hand edit makes one) is logged and skipped: it
    must not stop the purge of every other row."""
    out = []
    for row in flow_rows:
        if not row.get("log_entry"):
            continue
        try:
            record = json.loads(row["log_entry"])
            if not isinstance(record, dict) or not all(isinstance(v, (str, int, float, bool)) for v in record.values()):
                raise ValueError("not a record")
            check_entity(record)   # keys Azure accepts, sizes it accepts
        except (ValueError, StorageError):
            log.warning("flow %s carries an unreadable sign-in record: skipped", row.get("RowKey", "?")[:8])
            continue
        out.append(record)
    return out


def ensure(storage: Storage, records: Iterable[dict[str, Any]]) -> None:
    """Make sure these records are in the log (the purge, before it deletes the
    flow rows that hold them): one read of the keys per day and quarter hour of
    records to find the missing ones, then those are written. Raises StorageError."""
    table = storage.table("signinlog")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["PartitionKey"], r["RowKey"][:7])].append(r)   # 10^6 ms of inverted time: about 17 minutes
    for (day, _), group in groups.items():
        keys = sorted(r["RowKey"] for r in group)
        there = {e["RowKey"] for e in table.query("PartitionKey eq @d and RowKey ge @lo and RowKey le @hi",
                                                  {"d": day, "lo": keys[0], "hi": keys[-1]}, select=["RowKey"])}
        # Not written by its instance: it died, or the request failed after the flow's final write (then no
        # tokens may have gone out): the record says so.
        missing = [{**r, "reason": r.get("reason") or UNCONFIRMED} for r in group if r["RowKey"] not in there]
        if missing:
            _create_all(storage, missing)


def tail(storage: Storage, days: int = 1, limit: int = 50) -> list[dict[str, Any]]:
    """The newest records of the last ``days`` × 24 hours, newest first (just after midnight too: the
    day partitions back to the one that holds the window's start, each read newest first)."""
    flush()
    out: list[dict[str, Any]] = []
    now = time.time()
    # Row keys are inverted milliseconds: the window's start is an upper bound on the key (a key range).
    newest_key_after = f"{MAX_TS - (int(now) - days * 86400) * 1000 + 1:013d}"
    for d in range(days + 1):
        day = time.strftime("%Y%m%d", time.gmtime(now - d * 86400))
        out += storage.table("signinlog").query("PartitionKey eq @d and RowKey lt @k", {"d": day, "k": newest_key_after},
                                                limit=limit - len(out))
        if len(out) >= limit:
            break
    return out
