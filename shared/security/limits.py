"""Send limits that stop SMS pumping and budget exhaustion, not the user
(security-baseline §0 item 10, A13–A16; SECURITY.md "Send limits").

Every code or notice is counted in the ``limits`` table, shared by all
instances. All counters of one send live in one partition per UTC day
(``lim<yyyymmdd>``): one query reads them, one entity-group transaction
increments them with ``If-Match`` (a concurrent send makes it fail with 412
and the check is repeated). If the store is unreachable nothing is sent
(fail closed): a limiter that cannot count must not let SMS through.

**Conversion-aware.** Pumping sends codes that are never verified; users
verify theirs. A send records where it was counted (its :class:`Ticket`, kept
in the flow); when its code is verified, :func:`credit` marks it verified on
the same counters. A verified send no longer holds its destination's
cooldown, and no longer counts against the per-IP and per-prefix velocity,
which limit *unverified* sends only (at today's thresholds).

**Budgets by trust.** The global budgets (a cost and quota circuit breaker)
are split into buckets, each with its own share, so a flood in one never
empties another:

* ``second_factor``: a code to a method the account already has (after its
  first factor): nobody without the first factor can spend it;
* ``new_method``: a code to a method being registered (JIT, the pumper's door);
* ``sign_in``: email codes for sign-in and reset, for known and unknown names
  alike (separate budgets for the two would make exhaustion an existence oracle);
* ``sign_up``: sign-up codes and "someone tried to sign up" notices.

**Pumping defence.** Per country and per number prefix (E.164 without its
last four digits), SMS sends and verifications are counted by hour. When the
unverified volume of a prefix (or country) reaches its threshold while its
conversion is below ``AUTH_PUMPING_MIN_CONVERSION_PERCENT``, SMS to new
numbers there is suspended for ``AUTH_PUMPING_SUSPEND_SECONDS`` (codes to
numbers accounts already have keep going), an error line
``pumping suspected`` is logged (the infra alert rule watches it) and
``python -m admin sends`` shows it. Suspensions live in the ``suspend``
partition and are cached per instance for 30 s.

**Local development.** In local mode a loopback client (the developer) has
no per-IP limit and ten times the per-destination caps, and the outbox has
no global budget: ``make run`` prints this.

A limit hit is ``slow_down`` (HTTP 400, as every contract error, with
``Retry-After``), the same whether or not the account exists; the sign-in log
records which limit. A suspended prefix or country is
``access_denied``/``provider_blocked_by_rep`` (550024), which the SDKs turn
into "use another method".
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import threading
import time
from typing import Any

from shared.protocol import errors
from shared.protocol.identifiers import ip_source
from shared.settings import Settings
from shared.storage.tables import Conflict, InstanceCache, Modified, Storage, StorageError, hash_key

log = logging.getLogger("nativeauth.limits")
metrics = logging.getLogger("nativeauth.metrics")

MAX_RETRIES = 10
GLOBAL_SHARDS = 16  # each global budget bucket is spread over rows so that concurrent sends rarely collide
PUMP_SHARDS = 16    # the country counter takes every SMS to that country (and its verifications): the hottest row
SUSPEND_PK = "suspend"
SUSPENSION_CACHE_SECONDS = 30.0
LOCAL_DESTINATION_FACTOR = 10

PURPOSE_BUCKET = {
    "mfa_code": "second_factor", "register_code": "new_method", "signin_code": "sign_in", "reset_code": "sign_in",
    "signup_code": "sign_up", "signup_attempt_notice": "sign_up",
    "account_code": "second_factor",  # only a signed-in user (a valid access token) can ask for one
}
# Shares of the global budgets (AUTH_EMAIL_GLOBAL_*, AUTH_SMS_GLOBAL_HOUR) per bucket: their sum is 1, so all
# buckets together never exceed the configured budget (kept below ACS's default email quota).
EMAIL_SHARES = {"second_factor": 0.35, "new_method": 0.15, "sign_in": 0.3, "sign_up": 0.2}
SMS_SHARES = {"second_factor": 0.6, "new_method": 0.4}


@dataclasses.dataclass(frozen=True)
class Rule:
    key: str          # RowKey (a shard prefix for global budgets)
    limit: int
    retry_after: int
    what: str
    unverified: bool = False   # only unverified sends count
    shards: int = 0            # > 0: a global budget spread over this many rows, one chosen with room
    counted: bool = True       # False: checked, not counted (a send that does not go out)


@dataclasses.dataclass(frozen=True)
class Ticket:
    """Where one send was counted, kept with the flow so that its verification
    can be credited to the same counters (:func:`credit`)."""
    pk: str
    verified_keys: tuple[str, ...]   # counters with a `verified` column
    cooldown_key: str
    number_key: str = ""             # SMS: the number's hourly row, which says whether its pumping shards were credited

    def to_json(self) -> str:
        return json.dumps({"pk": self.pk, "keys": list(self.verified_keys), "cd": self.cooldown_key,
                           **({"nk": self.number_key} if self.number_key else {})}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None) -> "Ticket | None":
        if not raw:
            return None
        data = json.loads(raw)
        return cls(data["pk"], tuple(data["keys"]), data["cd"], data.get("nk", ""))

    @property
    def keys(self) -> tuple[str, ...]:
        """Every row its credit touches."""
        return (*self.verified_keys, self.cooldown_key, *((self.number_key,) if self.number_key else ()))


@dataclasses.dataclass(frozen=True)
class Plan:
    pk: str
    rules: tuple[Rule, ...]
    ticket: Ticket
    pump_keys: tuple[tuple[str, str, str], ...]  # (RowKey of this send's shard, kind, value): pumping counters (SMS)
    channel: str
    bucket: str
    to: str


def _loopback_developer(settings: Settings, ip: str | None) -> bool:
    """The developer's own requests in local mode (``AUTH_LOCAL_DEVELOPER_RELIEF``, on by default there)
    while codes go to the local outbox. The address comes from X-Forwarded-For, which a caller can
    write under ``func start``: so the relief never applies when real messages are sent
    (``AUTH_DELIVERY=acs``), where it would make them free to pump."""
    import ipaddress

    if not settings.is_local or not settings.local_developer_relief or not ip or settings.delivery != "outbox":
        return False
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def plan(settings: Settings, channel: str, to: str, ip: str | None, purpose: str, now: float | None = None, *,
         account: str | None = None, real: bool = True) -> Plan:
    """The counters one send touches (computed before the send is reserved, so
    the flow can keep its ticket in the same write).

    ``account`` (the user's key) adds the per-account caps to second-factor and
    new-method sends. ``real=False`` (an unknown name: nothing goes out) checks
    the global budget without spending it, so made-up names cannot empty the
    budget real users' codes need; every other counter counts it as a send, so
    the answer is the same as for an account that exists."""
    now = time.time() if now is None else now
    hour = time.strftime("%H", time.gmtime(now))
    minute = time.strftime("%H%M", time.gmtime(now))
    pk = "lim" + time.strftime("%Y%m%d", time.gmtime(now))
    d = hash_key(channel, to)[:32]
    until_hour = 3600 - int(now) % 3600
    until_day = 86400 - int(now) % 86400
    developer = _loopback_developer(settings, ip)
    factor = LOCAL_DESTINATION_FACTOR if developer else 1
    bucket = PURPOSE_BUCKET.get(purpose, "notice")
    # Per destination and bucket: registering someone's number as a new method, or asking sign-in codes
    # for their address, does not use up the caps of their own second factor.
    db = f"{bucket}-{d}"
    hourly_key = f"h{hour}-dest-{db}"   # also the number's row that says whether its pumping shards were credited
    rules: list[Rule] = []
    verified_keys: list[str] = []
    pump: list[tuple[str, str, str]] = []
    if channel == "sms":
        hourly = settings.sms_per_destination_hour
        if bucket == "new_method":
            hourly = min(hourly, settings.new_method_per_destination_hour)
        rules += [
            Rule(hourly_key, hourly * factor, until_hour, "destination hourly"),
            Rule(f"dd-dest-{db}", settings.sms_per_destination_day * factor, until_day, "destination daily"),
            Rule(f"h{hour}-prefix-{hash_key('prefix', to[:-3])[:32]}", settings.sms_per_prefix_hour, until_hour,
                 "number prefix hourly", unverified=True),
        ]
        verified_keys.append(rules[-1].key)
        country = _country(to)
        # The pumping counters count numbers: every send to a number this hour draws the same shard, the
        # one its first send counted on, so the number's verification is credited where it was counted.
        # Keyed, so that nobody can pick numbers that all land on one shard of a country's counter.
        shard = hmac.new(settings.code_hash_key, f"pumpshard|{hour}|{to}".encode(), hashlib.sha256).digest()[0] \
            % PUMP_SHARDS
        for kind, value in (("pfx", to[:-4]), ("cty", country)):
            # Sharded (the shard is chosen here, so the flow's ticket can credit it): under load every
            # send and every verification to one country would otherwise retry on one row.
            key = f"{pump_base(hour, kind, hash_key(kind, value)[:32])}{shard}"
            pump.append((key, kind, value))
            verified_keys.append(key)
        share = SMS_SHARES.get(bucket, 0)
        if share and settings.sms_global_hour > 0 and not developer:
            rules.append(Rule(f"h{hour}-gsms-{bucket}-", max(1, int(settings.sms_global_hour * share)), until_hour,
                              f"global SMS budget ({bucket})", shards=GLOBAL_SHARDS, counted=real))
    else:
        hourly = settings.email_per_destination_hour
        if bucket == "new_method":
            hourly = min(hourly, settings.new_method_per_destination_hour)
        rules.append(Rule(hourly_key, hourly * factor, until_hour, "destination hourly"))
        share = EMAIL_SHARES.get(bucket, 0)
        if share and not developer:
            if settings.email_global_minute > 0:
                rules.append(Rule(f"m{minute}-gmail-{bucket}-", max(1, int(settings.email_global_minute * share)),
                                  60 - int(now) % 60, f"global email per minute ({bucket})", shards=GLOBAL_SHARDS,
                                  counted=real))
            if settings.email_global_hour > 0:
                rules.append(Rule(f"h{hour}-gmail-{bucket}-", max(1, int(settings.email_global_hour * share)), until_hour,
                                  f"global email per hour ({bucket})", shards=GLOBAL_SHARDS, counted=real))
    if account and bucket in ("second_factor", "new_method") and not developer:
        a = hash_key("acct", account)[:32]
        rules.append(Rule(f"h{hour}-acct-{a}", settings.sends_per_account_hour, until_hour, "account hourly"))
        if bucket == "new_method":
            rules.append(Rule(f"h{hour}-acctnew-{a}", settings.new_method_unverified_per_account_hour, until_hour,
                              "account new methods hourly", unverified=True))
            verified_keys.append(rules[-1].key)
    source = ip_source(ip)  # an IPv6 client by its /64
    if source and not developer:
        rules.append(Rule(f"h{hour}-ip-{hash_key('ip', source)[:32]}", settings.sends_per_ip_hour, until_hour,
                          "IP hourly", unverified=True))
        verified_keys.append(rules[-1].key)
    rules = [r for r in rules if r.limit > 0]
    return Plan(pk, tuple(rules), Ticket(pk, tuple(verified_keys), f"cd-{db}", hourly_key if pump else ""),
                tuple(pump), channel, bucket, to)


def _country(e164: str) -> str:
    try:
        import phonenumbers

        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None)) or "ZZ"
    except Exception:  # noqa: BLE001 - a number the allow-list already accepted; be safe anyway
        return "ZZ"


def pump_base(hour: str, kind: str, digest: str) -> str:
    """The RowKey prefix of a pumping counter's shards (``<base><0..PUMP_SHARDS-1>``); ``digest`` is
    ``hash_key(kind, value)[:32]``."""
    return f"h{hour}-pump{kind}-{digest}-"


def _base(key: str) -> str:
    return key[:key.rindex("-") + 1]


def _shard_range(base: str) -> tuple[str, str]:
    """RowKey bounds holding every shard ``<base><n>`` and nothing else ('-' < '.')."""
    return base, base[:-1] + "."


def _filter(p: Plan) -> tuple[str, dict[str, Any]]:
    keys = [r.key for r in p.rules if not r.shards] + [p.ticket.cooldown_key]
    params: dict[str, Any] = {"pk": p.pk}
    terms = []
    for i, key in enumerate(dict.fromkeys(keys)):
        params[f"r{i}"] = key
        terms.append(f"RowKey eq @r{i}")
    ranges = [r.key for r in p.rules if r.shards] + [_base(k) for k, _, _ in p.pump_keys]
    for j, base in enumerate(ranges):
        params[f"lo{j}"], params[f"hi{j}"] = _shard_range(base)
        terms.append(f"( RowKey ge @lo{j} and RowKey lt @hi{j} )")
    # Spaces around the parentheses: the SDK substitutes @names between spaces.
    return "PartitionKey eq @pk and ( " + " or ".join(terms) + " )", params


def check_and_count(storage: Storage, settings: Settings, channel: str, to: str, ip: str | None, *,
                    purpose: str = "notice", enforce: bool = True, the_plan: Plan | None = None) -> Plan:
    """Count one send, or raise ``slow_down`` when a counter is at its limit
    (``BlockedContact`` when SMS to new numbers of this prefix or country is
    suspended). ``enforce=False`` counts without refusing: for security
    notices, which only an authenticated change can cause and which an
    attacker must not be able to suppress by exhausting the address's limits."""
    p = the_plan or plan(settings, channel, to, ip, purpose)
    if channel == "sms" and enforce and p.bucket == "new_method":
        _refuse_if_suspended(storage, settings, p)
    table = storage.table("limits")
    flt, params = _filter(p)
    now = time.time()
    expires = int(now) + 2 * 86400
    for _ in range(MAX_RETRIES):
        rows = {e["RowKey"]: e for e in table.query(flt, params)}
        _seen.remember(table.address, p.pk, p.ticket, rows)
        ops = []
        cd = rows.get(p.ticket.cooldown_key)
        cooldown = settings.sms_cooldown_seconds if channel == "sms" else settings.email_cooldown_seconds
        if p.bucket == "notice":
            cooldown = 0  # a notice neither waits for nor starts a destination's cooldown
        if enforce and cooldown and cd:
            last, verified_at = float(cd.get("last_sent") or 0), float(cd.get("last_verified") or 0)
            if last and verified_at < last and now - last < cooldown:  # a verified send holds no cooldown
                wait = int(cooldown - (now - last)) + 1
                _refused(p, "destination cooldown")
                raise errors.SlowDown(f"Wait {wait} seconds before asking for another code.", retry_after=wait)
        if p.bucket != "notice":
            fields = {"PartitionKey": p.pk, "RowKey": p.ticket.cooldown_key, "last_sent": now, "expires_at": expires}
            ops.append(("update", {**fields, "_etag": cd["_etag"]}) if cd else ("create", {**fields, "last_verified": 0.0}))
        for rule in p.rules:
            if rule.shards:
                shard_rows = {k: v for k, v in rows.items() if k.startswith(rule.key)}
                counts = {f"{rule.key}{i}": int(shard_rows.get(f"{rule.key}{i}", {}).get("count", 0))
                          for i in range(rule.shards)}
                # All shards are read: refused exactly when their sum is at the budget. Each shard holds its
                # own slice of the budget (the slices add up to it) and a send is written, If-Match, to a
                # shard with room in its slice, chosen at random: concurrent sends spread over the rows, and
                # two of them can never both take a slice's last place, so a burst cannot pass the budget.
                # If a shard holds more than its slice (the budget was lowered within the window), every send
                # goes to the first shard instead: the others no longer change, so the If-Match on that one
                # row keeps the sum exact.
                if enforce and sum(counts.values()) >= rule.limit:
                    _refused(p, rule.what)
                    raise errors.SlowDown("Too many codes were requested. Try again later.", retry_after=rule.retry_after)
                slices = [rule.limit // rule.shards + (i < rule.limit % rule.shards) for i in range(rule.shards)]
                keys = list(counts)
                if any(counts[k] > slices[i] for i, k in enumerate(keys)):
                    key = keys[0]
                else:
                    room = [k for i, k in enumerate(keys) if counts[k] < slices[i]]
                    key = random.choice(room) if room else keys[0]
                row = shard_rows.get(key)
            else:
                key, row = rule.key, rows.get(rule.key)
            count = int(row.get("count", 0)) if row else 0
            verified = int(row.get("verified", 0)) if row else 0
            used = count - verified if rule.unverified else count
            if enforce and not rule.shards and used >= rule.limit:
                _refused(p, rule.what)
                raise errors.SlowDown("Too many codes were requested. Try again later.", retry_after=rule.retry_after)
            if not rule.counted:
                continue
            fields = {"PartitionKey": p.pk, "RowKey": key, "count": count + 1, "expires_at": expires}
            ops.append(("update", {**fields, "_etag": row["_etag"]}) if row else ("create", {**fields, "verified": 0}))
        pump_rows = []
        # The pumping counters count numbers, not sends: only the first send to a number this hour
        # (a user retrying their own number ten times is one number, not a pumped prefix).
        hourly = next((r.key for r in p.rules if r.key.startswith("h") and "-dest-" in r.key), None)
        first_to_number = not hourly or not int((rows.get(hourly) or {}).get("count", 0))
        for key, kind, value in p.pump_keys if first_to_number else ():
            row = rows.get(key)
            fields = {"PartitionKey": p.pk, "RowKey": key, "kind": kind, "value": value,
                      "count": (int(row.get("count", 0)) if row else 0) + 1, "expires_at": expires}
            ops.append(("update", {**fields, "_etag": row["_etag"]}) if row else ("create", {**fields, "verified": 0}))
            shards = [r for k, r in rows.items() if k.startswith(_base(key))]
            pump_rows.append((kind, value, sum(int(r.get("count", 0)) for r in shards) + 1,
                              sum(int(r.get("verified", 0)) for r in shards)))
        try:
            etags = table.batch(ops)
        except (Conflict, Modified):
            # Another send counted at the same time: back off a little, read again, re-check.
            time.sleep(random.uniform(0.002, 0.02))
            continue
        _seen.remember_written(table.address, p.pk, p.ticket, rows, ops, etags)
        if channel == "sms":
            metrics.info("metric %s", json.dumps({"metric": "sms_sent", "bucket": p.bucket,
                                                   "country": next((v for _, k, v in p.pump_keys if k == "cty"), ""),
                                                   "prefix_hash": hash_key("pfx", to[:-4])[:12]}))
            _detect_pumping(storage, settings, pump_rows)
        return p
    raise errors.SlowDown("Too many codes are being requested right now. Try again shortly.", retry_after=2)


def _refused(p: Plan, what: str) -> None:
    """Say in the request's log context which limit refused (the sign-in log records it)."""
    from shared.protocol.context import current

    ctx = current()
    if ctx is not None:
        ctx.extra = {**(ctx.extra or {}), "limit": what}
    log.info("send refused by limit: %s (channel=%s bucket=%s)", what, p.channel, p.bucket)


def credit(storage: Storage, ticket: Ticket | None) -> None:
    """Mark a send verified on the counters it was counted on (its code was
    just verified). Best effort: a failure here never fails the user's step.

    The first try writes the rows as this instance last saw them, when it saw
    them all (the send was usually counted here): no read. Its If-Match fails
    if any changed since, and then the rows are read and the credit retried."""
    if ticket is None:
        return
    table = storage.table("limits")
    params: dict[str, Any] = {"pk": ticket.pk}
    keys = list(dict.fromkeys(ticket.keys))
    params.update({f"r{i}": k for i, k in enumerate(keys)})
    flt = "PartitionKey eq @pk and ( " + " or ".join(f"RowKey eq @r{i}" for i in range(len(keys))) + " )"
    remembered = _seen.recall(table.address, ticket)
    try:
        for attempt in range(MAX_RETRIES + (remembered is not None)):   # a wrong guess is not one of the tries
            rows = remembered if remembered is not None else table.query(flt, params)
            ops = []
            number = next((r for r in rows if r["RowKey"] == ticket.number_key), None) if ticket.number_key else None
            # A number's pumping shards are credited once an hour, by its first verified send (they count
            # numbers, and a repeat send was not counted on them).
            pumped_credited = bool(number is not None and number.get("pump_verified"))
            for row in rows:
                if row["RowKey"] == ticket.cooldown_key:
                    ops.append(("update", {"PartitionKey": ticket.pk, "RowKey": row["RowKey"], "last_verified": time.time(),
                                           "_etag": row["_etag"]}))
                elif row["RowKey"] == ticket.number_key:
                    if not pumped_credited:
                        ops.append(("update", {"PartitionKey": ticket.pk, "RowKey": row["RowKey"], "pump_verified": 1,
                                               "_etag": row["_etag"]}))
                elif row.get("kind") in ("pfx", "cty") and pumped_credited:
                    continue
                else:
                    verified = min(int(row.get("verified", 0)) + 1, int(row.get("count", 0)))
                    ops.append(("update", {"PartitionKey": ticket.pk, "RowKey": row["RowKey"], "verified": verified,
                                           "_etag": row["_etag"]}))
            try:
                etags = table.batch(ops)
            except (Conflict, Modified):
                if remembered is None:
                    time.sleep(random.uniform(0.002, 0.02) * min(attempt + 1, 4))   # a busy row: back off more
                else:
                    _seen.outcome(False)
                remembered = None   # changed since this instance saw them: read them
                continue
            if remembered is not None:
                _seen.outcome(True)
            _seen.remember_written(table.address, ticket.pk, ticket, {r["RowKey"]: r for r in rows}, ops, etags)
            for row in rows:   # per verified send, like sms_sent per send (the alert compares the two)
                if row.get("kind") == "cty":
                    metrics.info("metric %s", json.dumps({"metric": "sms_verified", "country": row.get("value", "")}))
            return
        log.warning("verified send not credited: its counters stayed contended for %d tries", MAX_RETRIES)
    except StorageError as exc:
        log.warning("verified send not credited: %s", type(exc).__name__)


class _SeenRows:
    """The counter rows of recent sends' tickets as this instance last read or wrote
    them, with their ETags, so that a verification's credit can write them without
    reading them first (:func:`credit`).

    Only ever a first guess: every write made from it is If-Match, so a row another
    send or another instance changed since fails that write and is read again. The
    counts stay exact whatever this holds. A wrong guess costs one more operation
    than reading first (the failed batch), a right one saves one; so the guess is
    only made while most recent guesses were right (a busy country's shared rows,
    or many instances, make them wrong), with one guess in ``PROBE`` made anyway to
    notice when they would be right again. Bounded: least recently used rows go."""

    FIELDS = ("PartitionKey", "RowKey", "count", "verified", "kind", "value", "pump_verified", "_etag")
    PROBE = 16

    def __init__(self, size: int):
        self.size = size
        self._rows: collections.OrderedDict[tuple[str, str, str], dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._rate = 1.0      # moving share of guesses that were right
        self._skipped = 0

    def remember(self, address: str, pk: str, ticket: Ticket, rows: dict[str, dict[str, Any]]) -> None:
        """The ticket's rows as a read found them (a read covers every key of the
        ticket: those it did not return do not exist)."""
        with self._lock:
            for key in ticket.keys:
                row = rows.get(key)
                known = self._rows.get((address, pk, key))
                if row is not None and row.get("_etag"):
                    slim = {k: row[k] for k in self.FIELDS if k in row}
                elif known is not None and not known.get("_absent"):
                    # A read that began before another send created the row can end after that send
                    # remembered it: "missing" is then stale (a day's counter rows are never deleted).
                    self._rows.move_to_end((address, pk, key))
                    continue
                else:
                    slim = {"PartitionKey": pk, "RowKey": key, "_absent": True}
                self._rows[(address, pk, key)] = slim
                self._rows.move_to_end((address, pk, key))
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)

    def remember_written(self, address: str, pk: str, ticket: Ticket, before: dict[str, dict[str, Any]],
                         ops: list[tuple[str, dict[str, Any]]], etags: list[str]) -> None:
        """The ticket's rows as a batch that just succeeded left them (what was read, merged with what was written)."""
        if len(etags) != len(ops) or not all(etags):
            with self._lock:   # cannot tell how they were left: guess nothing about them
                for key in ticket.keys:
                    self._rows.pop((address, pk, key), None)
            return
        written = {entity["RowKey"]: {**(before.get(entity["RowKey"]) or {}), **entity, "_etag": etag}
                   for (_, entity), etag in zip(ops, etags)}
        self.remember(address, pk, ticket, {**before, **written})

    def recall(self, address: str, ticket: Ticket) -> list[dict[str, Any]] | None:
        """The ticket's rows that exist, or None: unless this instance has seen every
        key of it, or while guesses are mostly wrong. A key last seen missing (a pumping
        shard a repeat send to a number does not count on) has nothing to credit, as
        when a read does not return it."""
        with self._lock:
            if self._rate < 0.5:
                self._skipped += 1
                if self._skipped % self.PROBE:
                    return None
            rows = [self._rows.get((address, ticket.pk, key)) for key in dict.fromkeys(ticket.keys)]
        if any(row is None for row in rows):
            return None
        return [dict(row) for row in rows if not row.get("_absent")]   # type: ignore[union-attr]

    def outcome(self, right: bool) -> None:
        with self._lock:
            self._rate = 0.9 * self._rate + 0.1 * (1.0 if right else 0.0)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._rate, self._skipped = 1.0, 0


_seen = _SeenRows(20000)


# ------------------------------------------------------------------ pumping defence

_suspended = InstanceCache(SUSPENSION_CACHE_SECONDS)


def suspensions(storage: Storage, *, fresh: bool = False) -> dict[str, dict[str, Any]]:
    """Active suspensions by RowKey (``pfx-<hash>`` / ``cty-<CC>``), cached per instance."""

    def read() -> dict[str, dict[str, Any]]:
        rows = storage.table("limits").query("PartitionKey eq @pk", {"pk": SUSPEND_PK})
        return {r["RowKey"]: r for r in rows if float(r.get("until") or 0) > time.time()}

    return _suspended.get(id(storage), read, fresh=fresh)


def clear_cache() -> None:
    _suspended.forget()


def _suspension_key(kind: str, value: str) -> str:
    return f"cty-{value}" if kind == "cty" else f"pfx-{hash_key('pfx', value)[:32]}"


def _refuse_if_suspended(storage: Storage, settings: Settings, p: Plan) -> None:
    active = suspensions(storage)
    for _, kind, value in p.pump_keys:
        row = active.get(_suspension_key(kind, value))
        if row is not None and not row.get("alert_only"):
            _refused(p, f"SMS to new numbers suspended ({'country ' + value if kind == 'cty' else 'number prefix'})")
            raise errors.BlockedContact()


def _detect_pumping(storage: Storage, settings: Settings, rows: list[tuple[str, str, int, int]]) -> None:
    """Every SMS bucket feeds detection (second-factor codes to numbers an account
    holds can be pumped too); a suspension refuses only codes to new numbers."""
    for kind, value, count, verified in rows:
        threshold = settings.pumping_country_unverified if kind == "cty" else settings.pumping_prefix_unverified
        if threshold <= 0:
            continue
        unverified = count - verified
        if unverified >= threshold and verified * 100 < settings.pumping_min_conversion_percent * count:
            if _suspension_key(kind, value) in suspensions(storage):
                continue  # already suspended (or alerted): one alert per suspension
            suspend(storage, settings, kind, value, f"{unverified} unverified numbers of {count} sent to this hour "
                                                    f"({100 * verified // max(count, 1)}% verified)",
                    alert_only=kind == "cty" and not settings.pumping_suspend_country)


def suspend(storage: Storage, settings: Settings, kind: str, value: str, reason: str,
            seconds: int | None = None, *, alert_only: bool = False) -> None:
    """Suspend SMS to new numbers of a prefix (``pfx``, E.164 without its last
    four digits) or a country (``cty``, ISO code) and raise the alert.
    ``alert_only`` records and alerts without refusing anything (a country, by
    default: one account could otherwise close SMS registration in a whole
    country)."""
    until = time.time() + (seconds if seconds is not None else settings.pumping_suspend_seconds)
    key = _suspension_key(kind, value)
    try:
        storage.table("limits").put({"PartitionKey": SUSPEND_PK, "RowKey": key, "kind": kind,
                                     "label": value if kind == "cty" else value[:-2] + "**", "until": until,
                                     "reason": reason[:200], "created": time.time(), "expires_at": int(until) + 86400,
                                     "alert_only": alert_only})
    except StorageError as exc:
        log.warning("suspension not stored: %s", type(exc).__name__)
        return
    clear_cache()
    log.error("pumping suspected: SMS to new numbers of %s %s %s for %d s: %s",
              "country" if kind == "cty" else "prefix", key, "alerted, not suspended," if alert_only else "suspended",
              int(until - time.time()), reason)


def lift(storage: Storage, key: str) -> bool:
    """End a suspension (admin). False when there was none. The hour's
    unverified count of that prefix or country is forgiven too, so the next
    genuine send does not suspend it again at once."""
    table = storage.table("limits")
    row = table.get(SUSPEND_PK, key)
    if row is None:
        return False
    table.delete(SUSPEND_PK, key)
    kind = row.get("kind", key[:3])
    digest = hash_key("cty", key[4:])[:32] if kind == "cty" else key[4:]
    now = time.time()
    pk = "lim" + time.strftime("%Y%m%d", time.gmtime(now))
    lo, hi = _shard_range(pump_base(time.strftime("%H", time.gmtime(now)), kind, digest))
    shards = table.query("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi", {"pk": pk, "lo": lo, "hi": hi})
    for shard in shards:   # shard by shard: a busy country must not make one 16-row batch fail for good
        for _ in range(MAX_RETRIES * 3):
            try:
                table.update({"PartitionKey": pk, "RowKey": shard["RowKey"], "count": int(shard.get("verified", 0))},
                             shard["_etag"])
                break
            except (Conflict, Modified):
                time.sleep(random.uniform(0.002, 0.02))
                shard = table.get(pk, shard["RowKey"]) or shard
        else:
            log.warning("lift %s: the hour's count of one shard could not be forgiven (contended)", key)
    clear_cache()
    return True


def release_cooldown(storage: Storage, ticket: Ticket) -> None:
    """A counted send that could not be delivered holds no cooldown: the client
    may retry at once (the counters keep it: it was an attempt)."""
    try:
        storage.table("limits").put({"PartitionKey": ticket.pk, "RowKey": ticket.cooldown_key, "last_sent": 0.0,
                                     "last_verified": 0.0, "expires_at": int(time.time()) + 2 * 86400})
    except StorageError as exc:
        log.warning("cooldown not released: %s", type(exc).__name__)


def report(storage: Storage, day: str | None = None) -> dict[str, Any]:
    """Sends, verifications and conversion per country and prefix for one UTC
    day, and the active suspensions (``python -m admin sends``)."""
    day = day or time.strftime("%Y%m%d", time.gmtime())
    rows = storage.table("limits").query("PartitionKey eq @pk", {"pk": "lim" + day})
    out: dict[str, dict[str, dict[str, int]]] = {"cty": {}, "pfx": {}}
    for r in rows:
        if r.get("kind") in out:
            agg = out[r["kind"]].setdefault(r.get("value", "?"), {"sent": 0, "verified": 0})
            agg["sent"] += int(r.get("count", 0))
            agg["verified"] += int(r.get("verified", 0))
    return {"day": day, "countries": out["cty"], "prefixes": out["pfx"],
            "suspensions": list(suspensions(storage, fresh=True).values())}


# ------------------------------------------------------------------ requests per client IP

def check_and_count_action(storage: Storage, settings: Settings, action: str, ip: str | None, limit: int, *,
                           source: str | None = None, error: type[errors.SlowDown] = errors.SlowDown) -> None:
    """Count one request of ``action`` (for example ``signup_start``) from this
    client (an IPv6 client by its /64) in the current hour, or raise
    ``slow_down`` past ``limit``. One read and one conditional write; 0
    disables; a loopback developer in local mode is not limited."""
    if source is None:  # by client IP (``source`` counts something else, e.g. a user)
        source = ip_source(ip)
        if not source or _loopback_developer(settings, ip):
            return
    if limit <= 0:
        return
    now = time.time()
    pk = "lim" + time.strftime("%Y%m%d", time.gmtime(now))
    rk = f"h{time.strftime('%H', time.gmtime(now))}-{action}-{hash_key('ip', source)[:32]}"
    table = storage.table("limits")
    for _ in range(MAX_RETRIES):
        row = table.get(pk, rk)
        count = int(row.get("count", 0)) if row else 0
        if count >= limit:
            raise error("Too many requests. Try again later.", retry_after=3600 - int(now) % 3600)
        try:
            if row is None:
                table.insert({"PartitionKey": pk, "RowKey": rk, "count": 1, "expires_at": int(now) + 2 * 86400})
            else:
                table.update({"PartitionKey": pk, "RowKey": rk, "count": count + 1}, row["_etag"])
            return
        except (Conflict, Modified):
            time.sleep(random.uniform(0.002, 0.02))
    raise error("Too many requests right now. Try again shortly.", retry_after=2)
