"""Sign-in risk from signals the server has: none, low, medium or high, with reasons.

* ``recent_failures``: several wrong passwords for this account in the last 12 h (medium);
* ``new_network``: an IP network (/24, or /48 for IPv6) never seen for this user (low);
* ``anonymizer``: the IP is in a configured anonymizer range (high);
* ``ip_velocity``: many different accounts passed a first factor from this
  IP in the current hour (high), counted in the shared ``limits`` table.
"""

from __future__ import annotations

import ipaddress
import json
import time

from shared.storage.directory import User
from shared.protocol.identifiers import ip_source
from shared.settings import Settings
from shared.storage.tables import Conflict, Modified, Storage, hash_key

LEVELS = ("none", "low", "medium", "high")
KNOWN_NETWORKS_KEPT = 20


def network_of(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def _max(a: str, b: str) -> str:
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


def assess(storage: Storage, settings: Settings, user: User, ip: str | None, *,
           record: bool = True, policies: list[dict] | None = None) -> tuple[str, tuple[str, ...]]:
    """The risk of this sign-in (``record``: count the account for the IP's
    velocity, as a first factor does; a refresh only reads it). Callers pass the
    ``policies`` they will evaluate: the IP-velocity row (a storage read, and a
    write for an account new to the IP) is read and kept only while one of them
    looks at the risk level, since nothing else acts on it (SECURITY.md §3.1)."""
    level, reasons = "none", []
    now = int(time.time())
    if int(user.entity.get("failed_logins") or 0) >= 3 and now - int(user.entity.get("last_failed_at") or 0) < 12 * 3600:
        level, reasons = _max(level, "medium"), reasons + ["recent_failures"]
    net = network_of(ip)
    known = json.loads(user.entity.get("known_networks") or "[]")
    if net and known and net not in known:
        level, reasons = _max(level, "low"), reasons + ["new_network"]
    if ip and settings.anonymizer_ranges:
        addr = ipaddress.ip_address(ip)
        if any(addr in ipaddress.ip_network(r, strict=False) for r in settings.anonymizer_ranges):
            level, reasons = _max(level, "high"), reasons + ["anonymizer"]
    velocity = policies is None or reads_risk(policies)
    if ip and settings.risk_ip_accounts_per_hour and velocity and _ip_velocity(storage, settings, ip, user.pk, record):
        level, reasons = _max(level, "high"), reasons + ["ip_velocity"]
    return level, tuple(reasons)


def reads_risk(policies: list[dict]) -> bool:
    """Does any policy that is evaluated (on or report-only) have a risk condition?"""
    return any(p.get("state") != "off" and (p.get("conditions") or {}).get("risk_levels") for p in policies)


def _ip_velocity(storage: Storage, settings: Settings, ip: str, user_pk: str, record: bool = True) -> bool:
    """Record this account for this IP and hour; True when the IP has carried
    more distinct accounts than the threshold this hour."""
    table = storage.table("limits")
    pk = "ipacct-" + hash_key("ip", ip_source(ip) or ip)[:40]  # an IPv6 client by its /64
    rk = time.strftime("%Y%m%d%H", time.gmtime())
    for _ in range(4):
        row = table.get(pk, rk)
        accounts = json.loads(row["accounts"]) if row else []
        tag = user_pk[:12]
        if tag in accounts or not record:
            return len(accounts) > settings.risk_ip_accounts_per_hour
        accounts = (accounts + [tag])[-200:]
        try:
            if row is None:
                table.insert({"PartitionKey": pk, "RowKey": rk, "accounts": json.dumps(accounts),
                              "expires_at": int(time.time()) + 7200})
            else:
                table.update({**row, "accounts": json.dumps(accounts)})
            return len(accounts) > settings.risk_ip_accounts_per_hour
        except (Conflict, Modified):
            continue
    return True  # contended beyond reason: treat as suspicious


def remember_network(user: User, ip: str | None) -> str | None:
    """The user's known-networks list with this IP's network added (JSON), or None if unchanged."""
    net = network_of(ip)
    if not net:
        return None
    known = json.loads(user.entity.get("known_networks") or "[]")
    if net in known:
        return None
    return json.dumps((known + [net])[-KNOWN_NETWORKS_KEPT:])
