"""Send limits against SMS pumping and email-quota exhaustion, shared by every
instance through the ``limits`` table (security-baseline §0 item 10, A13–A16).

All counters touched by one send live in one partition per UTC day
(``lim<yyyymmdd>``), so one send costs two storage round trips whatever the
number of counters: one query reads them, one entity-group transaction
increments them all with ``If-Match`` (a concurrent send makes it fail with
412 and the check is repeated). If the store is unreachable the send is
refused (fail closed): a limiter that cannot count must not let SMS through.

Counters (defaults in ``Settings``):

* per destination: hourly and daily caps, and a cooldown since the last send;
* per client IP: hourly cap;
* SMS per number prefix (E.164 without its last 3 digits): hourly velocity;
* global: hourly SMS budget (a circuit breaker), email per minute and per hour.

A limit hit is ``slow_down`` (HTTP 400, as every contract error) with ``Retry-After``, the same whether
or not the account exists (unknown accounts are counted too, by destination).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from . import errors
from .identifiers import ip_source
from .settings import Settings
from .storage import Conflict, Modified, Storage, hash_key

MAX_RETRIES = 10
# Global budgets are split over shards (one picked at random per send) so that
# concurrent sends do not all race on one entity; each shard allows its share.
GLOBAL_SHARDS = 8


@dataclass(frozen=True)
class Rule:
    key: str  # RowKey
    limit: int
    retry_after: int
    what: str


def _global(key: str, limit: int, retry_after: int, what: str) -> Rule:
    """One shard of a global budget: ceil(limit / shards) each, so the total
    never exceeds the budget by more than the rounding (at most shards - 1)."""
    share = -(-limit // GLOBAL_SHARDS) if limit > 0 else 0
    return Rule(f"{key}-{random.randrange(GLOBAL_SHARDS)}", share, retry_after, what)


def _rules(settings: Settings, channel: str, to: str, ip: str | None, now: float) -> list[Rule]:
    hour = time.strftime("%H", time.gmtime(now))
    minute = time.strftime("%H%M", time.gmtime(now))
    to_hash = hash_key(channel, to)[:32]
    until_next_hour = 3600 - int(now) % 3600
    until_next_day = 86400 - int(now) % 86400
    if channel == "sms":
        rules = [
            Rule(f"h{hour}-dest-{to_hash}", settings.sms_per_destination_hour, until_next_hour, "destination hourly"),
            Rule(f"d-dest-{to_hash}", settings.sms_per_destination_day, until_next_day, "destination daily"),
            Rule(f"h{hour}-prefix-{hash_key('prefix', to[:-3])[:32]}", settings.sms_per_prefix_hour, until_next_hour,
                 "number prefix hourly"),
            _global(f"h{hour}-sms-global", settings.sms_global_hour, until_next_hour, "global SMS budget"),
        ]
    else:
        rules = [
            Rule(f"h{hour}-dest-{to_hash}", settings.email_per_destination_hour, until_next_hour, "destination hourly"),
            _global(f"m{minute}-email-global", settings.email_global_minute, 60 - int(now) % 60, "global email per minute"),
            _global(f"h{hour}-email-global", settings.email_global_hour, until_next_hour, "global email per hour"),
        ]
    source = ip_source(ip)
    if source:  # an IPv6 client by its /64
        rules.append(Rule(f"h{hour}-ip-{hash_key('ip', source)[:32]}", settings.sends_per_ip_hour, until_next_hour, "IP hourly"))
    return [r for r in rules if r.limit > 0]


def check_and_count(storage: Storage, settings: Settings, channel: str, to: str, ip: str | None, *,
                    enforce: bool = True) -> None:
    """Count one send, or raise ``slow_down`` when any counter is at its limit.

    ``enforce=False`` counts without refusing: for security notices (a method
    was added or removed), which only an authenticated change can cause and
    which an attacker must not be able to suppress by exhausting the
    account's address limits first."""
    now = time.time()
    rules = _rules(settings, channel, to, ip, now)
    if not rules:
        return
    pk = "lim" + time.strftime("%Y%m%d", time.gmtime(now))
    cooldown_key = f"d-dest-{hash_key(channel, to)[:32]}"
    table = storage.table("limits")
    # Spaces around the parentheses: the SDK substitutes @names between spaces.
    flt = "PartitionKey eq @pk and ( " + " or ".join(f"RowKey eq @r{i}" for i in range(len(rules))) + " )"
    params = {"pk": pk, **{f"r{i}": r.key for i, r in enumerate(rules)}}
    expires = int(now) + 2 * 86400
    for _ in range(MAX_RETRIES):
        rows = {e["RowKey"]: e for e in table.query(flt, params)}
        cooldown = settings.sms_cooldown_seconds if channel == "sms" else settings.email_cooldown_seconds
        last = rows.get(cooldown_key, {}).get("last_sent", 0)
        if enforce and cooldown and last and now - float(last) < cooldown:
            wait = int(cooldown - (now - float(last))) + 1
            raise errors.SlowDown(f"Wait {wait} seconds before asking for another code.", retry_after=wait)
        ops = []
        for rule in rules:
            row = rows.get(rule.key)
            count = int(row.get("count", 0)) if row else 0
            if enforce and count >= rule.limit:
                raise errors.SlowDown("Too many codes were requested. Try again later.", retry_after=rule.retry_after)
            fields = {"PartitionKey": pk, "RowKey": rule.key, "count": count + 1, "expires_at": expires}
            if rule.key == cooldown_key:
                fields["last_sent"] = now
            ops.append(("update", {**fields, "_etag": row["_etag"]}) if row else ("create", fields))
        try:
            table.batch(ops)
            return
        except (Conflict, Modified):
            # Another send counted at the same time: back off a little, read again, re-check.
            time.sleep(random.uniform(0.002, 0.02))
            continue
    raise errors.SlowDown("Too many codes are being requested right now. Try again shortly.", retry_after=2)


def check_and_count_action(storage: Storage, settings: Settings, action: str, ip: str | None, limit: int) -> None:
    """Count one request of ``action`` (for example ``signup_start``) from this
    client IP in the current hour, or raise ``slow_down`` past ``limit``.
    One read and one conditional write in the day's partition; 0 disables."""
    source = ip_source(ip)  # an IPv6 client by its /64
    if not source or limit <= 0:
        return
    now = time.time()
    pk = "lim" + time.strftime("%Y%m%d", time.gmtime(now))
    rk = f"h{time.strftime('%H', time.gmtime(now))}-{action}-{hash_key('ip', source)[:32]}"
    table = storage.table("limits")
    for _ in range(MAX_RETRIES):
        row = table.get(pk, rk)
        count = int(row.get("count", 0)) if row else 0
        if count >= limit:
            raise errors.SlowDown("Too many requests from this network. Try again later.",
                                  retry_after=3600 - int(now) % 3600)
        try:
            if row is None:
                table.insert({"PartitionKey": pk, "RowKey": rk, "count": 1, "expires_at": int(now) + 2 * 86400})
            else:
                table.update({"PartitionKey": pk, "RowKey": rk, "count": count + 1}, row["_etag"])
            return
        except (Conflict, Modified):
            time.sleep(random.uniform(0.002, 0.02))
    raise errors.SlowDown("Too many requests right now. Try again shortly.", retry_after=2)
