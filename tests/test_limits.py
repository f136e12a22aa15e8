"""Send limits (security-baseline A13–A16): per destination, cooldown, per IP,
per number prefix, global budgets; identical for unknown accounts; fail closed."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest

from shared.protocol import errors
from shared.security import limits, policy
from shared.storage import tables as storage_mod
from shared.settings import Settings

from conftest import storage_trace, unique_email

# the send limits are counted per UTC clock hour: no test here may straddle one
pytestmark = pytest.mark.usefixtures("steady_hour")

PW = "correct horse battery staple"
CAPS = "mfa_required registration_required"


def phone() -> str:
    return "+49151" + "".join(random.choice("0123456789") for _ in range(8))


@pytest.fixture
def require_mfa(server):
    policy.save(server.storage, {"name": "limits mfa", "grant": {"require_second_factor": True}})
    yield
    policy.delete(server.storage, "limits mfa")


def sms_challenge(api, email: str, headers=None):
    """Password first factor, then ask for an SMS code through the user's method."""
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
    r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
    t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                 scope="openid")
    assert t.get("suberror") == "mfa_required", t.body
    return api.post("oauth2/v2.0/challenge", continuation_token=t["continuation_token"], id="m", headers=headers)


def email_challenge(api, email: str, headers=None):
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect", headers=headers)
    return api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect",
                    headers=headers)


def sms_user(make_user, number: str) -> str:
    email, _ = make_user(methods=[{"id": "m", "channel": "sms", "target": number, "default": True, "created": 1}])
    return email


def test_sms_per_destination_hourly_cap(server, api, outbox, make_user, require_mfa):
    number = phone()
    email = sms_user(make_user, number)
    with server.override(sms_per_destination_hour=3):
        results = [sms_challenge(api, email) for _ in range(4)]
    assert [r.status for r in results] == [200, 200, 200, 400]
    assert results[-1]["error"] == "slow_down" and int(results[-1].headers["retry-after"]) > 0
    assert outbox.count(number) == 3


def test_sms_cooldown_across_flows(server, api, outbox, make_user, require_mfa):
    number = phone()
    email = sms_user(make_user, number)
    with server.override(sms_cooldown_seconds=60):
        first, second = sms_challenge(api, email), sms_challenge(api, email)
    assert first.status == 200 and second.status == 400 and 0 < int(second.headers["retry-after"]) <= 61
    assert outbox.count(number) == 1


def test_sms_prefix_velocity(server, api, outbox, make_user, require_mfa):
    prefix = phone()[:-3]
    numbers = [prefix + f"{i:03d}" for i in range(4)]
    emails = [sms_user(make_user, n) for n in numbers]
    with server.override(sms_per_prefix_hour=3):
        statuses = [sms_challenge(api, e).status for e in emails]
    assert statuses == [200, 200, 200, 400]
    assert outbox.count(numbers[-1]) == 0


def isolated(server, **env: str):
    """Settings and storage of their own (a fresh table prefix): global budgets without the suite's traffic."""
    base = {"AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
            "AUTH_SMS_COOLDOWN_SECONDS": "0", "AUTH_EMAIL_COOLDOWN_SECONDS": "0",
            "AUTH_SMS_PER_DESTINATION_HOUR": "0", "AUTH_SMS_PER_DESTINATION_DAY": "0", "AUTH_SMS_PER_PREFIX_HOUR": "0",
            "AUTH_EMAIL_PER_DESTINATION_HOUR": "0", "AUTH_SENDS_PER_IP_HOUR": "0",
            "AUTH_PUMPING_PREFIX_UNVERIFIED": "0", "AUTH_PUMPING_COUNTRY_UNVERIFIED": "0",
            "AUTH_TABLE_PREFIX": "lim" + "".join(random.choice("abcdefghij") for _ in range(8))}
    settings = Settings.from_env({**base, **env})
    store = storage_mod.Storage(settings)
    store.ensure_tables()
    return settings, store


def sends(store, settings, n: int, channel: str, purpose: str) -> int:
    allowed = 0
    for _ in range(n):
        try:
            limits.check_and_count(store, settings, channel, phone() if channel == "sms" else unique_email("g"),
                                   "198.51.100.1", purpose=purpose)
            allowed += 1
        except errors.SlowDown:
            pass
    return allowed


def test_global_sms_budget_is_an_exact_circuit_breaker_per_bucket(server):
    """The budget is split by trust; each bucket's share is exact (all its shards are read), never
    refused while it has room (a full shard used to refuse with others empty)."""
    settings, store = isolated(server, AUTH_SMS_GLOBAL_HOUR="20")
    second = int(20 * limits.SMS_SHARES["second_factor"])
    new = int(20 * limits.SMS_SHARES["new_method"])
    assert sends(store, settings, new + 5, "sms", "register_code") == new            # a flood of new numbers...
    assert sends(store, settings, second + 5, "sms", "mfa_code") == second            # ...leaves the MFA budget whole


def test_global_email_budgets_by_trust(server):
    """Sign-in codes for made-up addresses (counted like real ones) and sign-ups cannot use up the
    budget of the second factor of existing accounts."""
    settings, store = isolated(server, AUTH_EMAIL_GLOBAL_MINUTE="100000", AUTH_EMAIL_GLOBAL_HOUR="40")
    budget = {b: int(40 * share) for b, share in limits.EMAIL_SHARES.items()}
    assert sends(store, settings, budget["sign_in"] + 10, "email", "signin_code") == budget["sign_in"]
    assert sends(store, settings, budget["sign_up"] + 10, "email", "signup_code") == budget["sign_up"]
    assert sends(store, settings, budget["second_factor"], "email", "mfa_code") == budget["second_factor"]
    assert sends(store, settings, 3, "email", "reset_code") == 0                      # reset shares sign-in's budget


def test_global_email_per_minute(server):
    settings, store = isolated(server, AUTH_EMAIL_GLOBAL_MINUTE="10", AUTH_EMAIL_GLOBAL_HOUR="100000")
    share = int(10 * limits.EMAIL_SHARES["sign_in"])
    now = time.gmtime()
    allowed = sends(store, settings, share + 3, "email", "signin_code")
    assert allowed == share or time.gmtime().tm_min != now.tm_min   # the minute may roll over


def test_per_ip_cap(server, api, outbox):
    ip = f"198.51.100.{random.randint(1, 254)}"
    headers = {"X-Forwarded-For": ip}
    with server.override(trusted_proxy_hops=2, sends_per_ip_hour=2):
        statuses = [email_challenge(api, unique_email("ip"), headers).status for _ in range(3)]
        other = email_challenge(api, unique_email("ip"), {"X-Forwarded-For": "198.51.100.255" if ip != "198.51.100.255" else "198.51.100.254"})
    assert statuses == [200, 200, 400] and other.status == 200


def test_email_destination_cap_is_the_same_for_unknown_accounts(server, api, outbox, make_user):
    known, _ = make_user(password=None)
    ghost = unique_email("ghost")
    with server.override(email_per_destination_hour=2):
        k = [email_challenge(api, known) for _ in range(3)]
        g = [email_challenge(api, ghost) for _ in range(3)]
    assert [r.status for r in k] == [r.status for r in g] == [200, 200, 400]
    strip = lambda b: {x: y for x, y in b.items() if x not in ("error_description", "timestamp", "trace_id", "correlation_id")}  # noqa: E731
    assert strip(k[-1].body) == strip(g[-1].body)
    assert outbox.count(known) == 2 and outbox.count(ghost) == 0


def test_concurrent_sends_do_not_overshoot(server, api, outbox):
    import threading

    target = unique_email("burst")
    results = []
    with server.override(email_per_destination_hour=3):
        def go():
            results.append(email_challenge(api, target).status)
        threads = [threading.Thread(target=go) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert results.count(200) == 0 or outbox.count(target) <= 3
    assert sum(1 for s in results if s == 200) <= 3


def test_limiter_fails_closed_when_storage_is_down():
    from devhost.azurite import connection_string, free_port

    settings = Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": connection_string(free_port())})
    with pytest.raises(storage_mod.StorageUnavailable):
        limits.check_and_count(storage_mod.Storage(settings), settings, "sms", "+4915112345678", "198.51.100.1")


def test_limit_errors_have_the_contract_shape():
    exc = errors.SlowDown("x", retry_after=5)
    assert exc.status == 400 and exc.error == "slow_down" and exc.retry_after == 5


def test_verifications_under_load_are_all_credited(server):
    """Conversion is what tells users from pumps: a verification lost under load
    makes a busy country look like a pumped one. 32 parallel sends to one
    country, then their 32 verifications in parallel: every one is counted and
    credited (the country counter is sharded: on one row, concurrent sends and
    credits ran out of retries)."""
    from concurrent.futures import ThreadPoolExecutor

    settings, store = isolated(server)
    numbers = [f"+3725{random.randrange(10 ** 7):07d}" for _ in range(32)]   # Estonia: no other test sends there
    before = limits.report(store)["countries"].get("EE", {"sent": 0, "verified": 0})
    with ThreadPoolExecutor(16) as pool:
        plans = list(pool.map(lambda n: limits.check_and_count(store, settings, "sms", n, f"203.0.113.{random.randint(1, 254)}",
                                                                purpose="mfa_code"), numbers))
        list(pool.map(lambda p: limits.credit(store, p.ticket), plans))
    after = limits.report(store)["countries"]["EE"]
    assert after["sent"] - before["sent"] == 32
    assert after["verified"] - before["verified"] == 32


@pytest.mark.parametrize("channel,purpose,env,share", [
    ("sms", "mfa_code", {"AUTH_SMS_GLOBAL_HOUR": "10"}, ("SMS", "second_factor", 10)),
    ("email", "signup_code", {"AUTH_EMAIL_GLOBAL_MINUTE": "100000", "AUTH_EMAIL_GLOBAL_HOUR": "25"},
     ("EMAIL", "sign_up", 25)),
])
def test_a_parallel_burst_never_passes_a_global_budget(server, channel, purpose, env, share):
    """48 sends at once against a small budget: exactly the budget passes (each shard holds its own slice and
    takes its last place with If-Match; with one shared total read by all, sends that read the same sum and
    wrote to different shards overshot it)."""
    from concurrent.futures import ThreadPoolExecutor

    settings, store = isolated(server, **env)
    kind, bucket, total = share
    budget = int(total * getattr(limits, f"{kind}_SHARES")[bucket])

    def one(i: int) -> bool:
        to = f"+49151{random.randrange(10 ** 8):08d}" if channel == "sms" else unique_email(f"b{i}")
        try:
            limits.check_and_count(store, settings, channel, to, f"203.0.113.{i % 250 + 1}", purpose=purpose)
            return True
        except errors.SlowDown:
            return False

    with ThreadPoolExecutor(16) as pool:
        allowed = sum(pool.map(one, range(48)))
    assert allowed == budget, (allowed, budget)


def test_a_budget_lowered_within_its_window_is_still_exact_under_a_burst(server):
    """16 sends under a budget of 32 (two per shard), then the budget lowered to 20 (some shards now hold more
    than their new slice) and 30 sends at once: exactly 4 more pass (a review measured 7 when the shards with
    room were filled in parallel on a stale sum)."""
    from concurrent.futures import ThreadPoolExecutor

    def burst(settings, store, n: int) -> int:
        def one(i: int) -> bool:
            try:
                limits.check_and_count(store, settings, "sms", f"+49151{random.randrange(10 ** 8):08d}",
                                       f"203.0.113.{i % 250 + 1}", purpose="register_code")
                return True
            except errors.SlowDown:
                return False
        with ThreadPoolExecutor(16) as pool:
            return sum(pool.map(one, range(n)))

    settings, store = isolated(server, AUTH_SMS_GLOBAL_HOUR="80")          # new_method share: 32
    assert int(80 * limits.SMS_SHARES["new_method"]) == 32
    assert sum(burst(settings, store, 1) for _ in range(16)) == 16         # one at a time: two per shard
    lowered = dataclasses.replace(settings, sms_global_hour=50)              # new_method share: 20
    assert burst(lowered, store, 30) == 4


def _traced(fn):
    """Run ``fn`` inside a request context; return the storage operations it made (without the table)."""
    return [op.rsplit(".", 1)[1] for op in storage_trace(fn)[1]]


def _counters(store, ticket) -> dict[str, tuple[int, int]]:
    rows = store.table("limits").query("PartitionKey eq @pk", {"pk": ticket.pk})
    return {r["RowKey"]: (int(r.get("count", 0)), int(r.get("verified", 0))) for r in rows
            if r["RowKey"] in ticket.verified_keys}


def _counted_keep(server, number: str, ip: str):
    """One SMS send counted on counters of their own; what this instance learnt about its guesses is kept."""
    settings, store = isolated(server, AUTH_SMS_PER_PREFIX_HOUR="50", AUTH_SENDS_PER_IP_HOUR="50")
    return settings, store, limits.check_and_count(store, settings, "sms", number, ip, purpose="mfa_code")


def _counted(server, number: str, ip: str):
    limits._seen.clear()   # this instance as it starts: no guess known to be wrong yet
    return _counted_keep(server, number, ip)


def test_a_verification_on_the_instance_that_counted_its_send_is_credited_without_a_read(server):
    """The verification's credit writes the counter rows as the send left them (one If-Match batch, no query),
    and every counter of the send is credited exactly once."""
    _, store, plan = _counted(server, f"+3725{random.randrange(10 ** 7):07d}", "203.0.113.7")
    before = _counters(store, plan.ticket)
    assert len(before) == 4 and all(c == (1, 0) for c in before.values()), before   # prefix, IP, 2 pumping shards
    assert _traced(lambda: limits.credit(store, plan.ticket)) == ["submit_transaction"]
    assert _counters(store, plan.ticket) == {k: (1, 1) for k in before}


def test_a_counter_changed_since_the_send_is_read_again_and_credited_once(server):
    """Another instance (or another send) changed a counter between the send and its verification: the write made
    from what this instance saw fails its If-Match, the rows are read again, and each counter is credited once
    on top of the other change, never overwriting it."""
    _, store, plan = _counted(server, f"+3725{random.randrange(10 ** 7):07d}", "203.0.113.8")
    table = store.table("limits")
    ip_key = next(k for k in plan.ticket.verified_keys if "-ip-" in k)
    row = table.get(plan.ticket.pk, ip_key)
    table.update({"PartitionKey": plan.ticket.pk, "RowKey": ip_key, "count": int(row["count"]) + 5}, row["_etag"])
    assert _traced(lambda: limits.credit(store, plan.ticket)) == ["submit_transaction", "query", "submit_transaction"]
    after = _counters(store, plan.ticket)
    assert after[ip_key] == (6, 1)
    assert all(v == (1, 1) for k, v in after.items() if k != ip_key), after


def test_a_verification_on_another_instance_reads_the_counters_and_credits_them(server):
    """An instance that did not count the send has not seen its rows: it reads them, then credits them."""
    _, store, plan = _counted(server, f"+3725{random.randrange(10 ** 7):07d}", "203.0.113.9")
    limits._seen.clear()   # what another instance knows of these rows: nothing
    assert _traced(lambda: limits.credit(store, plan.ticket)) == ["query", "submit_transaction"]
    assert all(v == (1, 1) for v in _counters(store, plan.ticket).values())


def test_a_credit_never_exceeds_the_sends_even_when_replayed(server):
    """Crediting the same ticket twice (say, a stale row guess replayed after a failure) cannot push a counter's
    verified past its count: the bound is computed on the row the If-Match write replaces."""
    _, store, plan = _counted(server, f"+3725{random.randrange(10 ** 7):07d}", "203.0.113.10")
    limits.credit(store, plan.ticket)
    limits.credit(store, plan.ticket)
    assert all(v == (1, 1) for v in _counters(store, plan.ticket).values())


def test_pumping_counters_count_and_credit_each_number_once_an_hour(server):
    """The pumping counters compare numbers texted with numbers verified. Every send to a number within the hour
    draws the shard its first send counted on, and the number's first verified send credits it, once, whichever
    instance verifies and whichever of its sends it was. An attacker verifying repeat codes to their own number
    cannot raise a country's conversion (found by an attack review: repeat sends credited shards other numbers
    had been counted on)."""
    settings, store = isolated(server, AUTH_SMS_PER_PREFIX_HOUR="50", AUTH_SENDS_PER_IP_HOUR="50",
                               AUTH_SMS_PER_DESTINATION_HOUR="50", AUTH_SMS_PER_DESTINATION_DAY="50")
    own, other, late = (f"+3725{random.randrange(10 ** 7):07d}" for _ in range(3))

    def send(number):
        return limits.check_and_count(store, settings, "sms", number, "203.0.113.11", purpose="mfa_code")

    first = send(own)
    limits.credit(store, first.ticket)
    send(other)                                   # counted, never verified
    for i in range(4):                            # repeat codes to the attacker's own number, all verified
        again = send(own)
        assert again.pump_keys == first.pump_keys
        if i % 2:
            limits._seen.clear()                  # verified on another instance
        limits.credit(store, again.ticket)
    unverified = send(late)                       # a number whose first code is lost, its second verified
    repeat = send(late)
    limits.credit(store, repeat.ticket)
    del unverified
    estonia = limits.report(store)["countries"]["EE"]
    assert (estonia["sent"], estonia["verified"]) == (3, 2), estonia


def test_while_most_guesses_are_wrong_a_credit_reads_first(server):
    """A wrong guess costs one more operation than reading first (the failed batch). After a run of them (a busy
    country's shared shard, or sends verified on other instances) the credit reads first, and one credit in 16
    still guesses, so the guessing comes back when it would be right again."""
    def stale_credit():
        _, store, plan = _counted_keep(server, f"+3725{random.randrange(10 ** 7):07d}", "203.0.113.12")
        table = store.table("limits")
        row = table.get(plan.ticket.pk, plan.ticket.cooldown_key)
        table.update({"PartitionKey": plan.ticket.pk, "RowKey": plan.ticket.cooldown_key, "touched": 1}, row["_etag"])
        return _traced(lambda: limits.credit(store, plan.ticket))

    limits._seen.clear()
    traces = [stale_credit() for _ in range(7)]
    assert all(t == ["submit_transaction", "query", "submit_transaction"] for t in traces), traces
    traces = [stale_credit() for _ in range(16)]
    guessed = [t for t in traces if t[0] == "submit_transaction"]
    assert len(guessed) == 1 and len(traces) - len(guessed) == 15, traces
    assert all(t == ["query", "submit_transaction"] for t in traces if t[0] == "query"), traces
    limits._seen.clear()


def test_a_stale_read_of_a_missing_row_does_not_hide_a_row_written_since():
    """A read that began before another send created a row can finish after that send remembered it: the row is
    not then remembered as missing (its credit would skip it: found by an attack review, a country shard counted
    1 and credited 0)."""
    seen = limits._SeenRows(100)
    ticket = limits.Ticket("lim1", ("k",), "cd", "")
    written = {"PartitionKey": "lim1", "RowKey": "k", "count": 1, "verified": 0, "_etag": "e1"}
    seen.remember("t", "lim1", ticket, {"k": written, "cd": {**written, "RowKey": "cd", "_etag": "e2"}})
    seen.remember("t", "lim1", ticket, {})               # the stale read: neither row there
    assert sorted(r["RowKey"] for r in seen.recall("t", ticket)) == ["cd", "k"]
    fresh = limits._SeenRows(100)
    fresh.remember("t", "lim1", ticket, {})               # missing and never seen otherwise: remembered missing
    assert fresh.recall("t", ticket) == []


def test_the_conversion_metrics_count_sends_and_verified_sends_alike(server, caplog):
    """sms_sent is logged per send and sms_verified per verified send (the alert compares them), also when a
    number's pumping shard is credited only once (a review found four verified sign-ins to one number logged four
    sends and one verification, which makes busy legitimate countries look pumped)."""
    import logging

    settings, store = isolated(server, AUTH_SMS_PER_PREFIX_HOUR="50", AUTH_SENDS_PER_IP_HOUR="50",
                               AUTH_SMS_PER_DESTINATION_HOUR="50", AUTH_SMS_PER_DESTINATION_DAY="50")
    number = f"+3725{random.randrange(10 ** 7):07d}"
    with caplog.at_level(logging.INFO, logger="nativeauth.metrics"):
        for _ in range(4):
            sent = limits.check_and_count(store, settings, "sms", number, "203.0.113.14", purpose="mfa_code")
            limits.credit(store, sent.ticket)
    names = [json.loads(r.getMessage().split("metric ", 1)[1])["metric"] for r in caplog.records
             if r.name == "nativeauth.metrics"]
    assert (names.count("sms_sent"), names.count("sms_verified")) == (4, 4), names
    estonia = limits.report(store)["countries"]["EE"]
    assert (estonia["sent"], estonia["verified"]) == (1, 1)   # the counters count the number once
