"""The policy matrix: each assignment and condition alone and combined, block
vs require, report-only, off, freshness and method intersection; plus risk."""

from __future__ import annotations

import json

import pytest

from shared.security import policy, risk
from shared.storage.directory import User
from shared.settings import Settings

OID1 = "0b1c2d3e-0000-4000-8000-000000000001"
OID2 = "0b1c2d3e-0000-4000-8000-000000000002"
LOC = {"office": ["203.0.113.0/24"], "vpn": ["2001:db8::/32"]}


def sig(**kw) -> policy.Signals:
    base = dict(user_oid=OID1, user_email="a@example.com", groups=("staff",), client_id="app-1",
                ip="198.51.100.7", country="DE", risk="none", auth_contexts=())
    base.update(kw)
    return policy.Signals(**base)


def p(**kw) -> dict:
    kw.setdefault("name", "p")
    kw.setdefault("grant", {"require_second_factor": True})
    return policy.validate(kw)


def needs_mfa(pol: dict, s: policy.Signals) -> bool:
    return policy.evaluate([pol], s, LOC).require_second_factor


# --- assignments, one at a time
@pytest.mark.parametrize("users,expected", [
    ({"include": ["all"]}, True),
    ({"include": [OID1]}, True),
    ({"include": [OID1.upper()]}, True),
    ({"include": ["A@Example.COM"]}, True),
    ({"include": ["a@example.com"]}, True),
    ({"include": [OID2]}, False),
    ({"include": ["all"], "exclude": [OID1]}, False),
    ({"include": ["all"], "exclude": ["a@example.com"]}, False),
    ({"include": []}, False),
])
def test_user_assignment(users, expected):
    assert needs_mfa(p(assignments={"users": users}), sig()) is expected


@pytest.mark.parametrize("groups,expected", [
    ({"include": ["staff"]}, True),
    ({"include": ["admins"]}, False),
    ({"exclude": ["staff"]}, False),
])
def test_group_assignment(groups, expected):
    users = {"include": []} if "include" in groups else {"include": ["all"]}
    assert needs_mfa(p(assignments={"users": users, "groups": groups}), sig()) is expected


@pytest.mark.parametrize("clients,expected", [
    ({"include": ["all"]}, True), ({"include": ["app-1"]}, True), ({"include": ["app-2"]}, False),
    ({"include": ["all"], "exclude": ["app-1"]}, False),
])
def test_client_assignment(clients, expected):
    assert needs_mfa(p(assignments={"clients": clients}), sig()) is expected


# --- conditions, one at a time
@pytest.mark.parametrize("level,expected", [("none", False), ("low", False), ("medium", True), ("high", True)])
def test_risk_condition(level, expected):
    assert needs_mfa(p(conditions={"risk_levels": ["medium", "high"]}), sig(risk=level)) is expected


@pytest.mark.parametrize("ip,cond,expected", [
    ("203.0.113.9", {"include": ["office"]}, True),
    ("198.51.100.7", {"include": ["office"]}, False),
    ("203.0.113.9", {"exclude": ["office"]}, False),
    ("198.51.100.7", {"exclude": ["office"]}, True),
    ("2001:db8::1", {"include": ["vpn"]}, True),
    (None, {"include": ["office"]}, False),
    (None, {"exclude": ["office"]}, True),
    ("not-an-ip", {"exclude": ["office"]}, True),
])
def test_location_condition(ip, cond, expected):
    assert needs_mfa(p(conditions={"locations": cond}), sig(ip=ip)) is expected


@pytest.mark.parametrize("country,cond,expected", [
    ("DE", {"include": ["de"]}, True), ("FR", {"include": ["DE"]}, False),
    ("DE", {"exclude": ["DE"]}, False), (None, {"include": ["DE"]}, False), (None, {"exclude": ["DE"]}, True),
])
def test_country_condition(country, cond, expected):
    assert needs_mfa(p(conditions={"countries": cond}), sig(country=country)) is expected


@pytest.mark.parametrize("asked,expected", [((), False), (("c1",), True), (("c2",), False), (("c2", "c1"), True)])
def test_auth_context_condition(asked, expected):
    d = policy.evaluate([p(conditions={"auth_contexts": ["c1"]})], sig(auth_contexts=asked), LOC)
    assert d.require_second_factor is expected
    assert d.auth_contexts == (("c1",) if expected else ())


# --- combinations: every configured condition must hold
@pytest.mark.parametrize("risk_level,ip,country,expected", [
    ("high", "198.51.100.7", "DE", True),
    ("high", "203.0.113.9", "DE", False),   # inside the excluded location
    ("low", "198.51.100.7", "DE", False),   # risk too low
    ("high", "198.51.100.7", "US", False),  # country not included
])
def test_combined_conditions(risk_level, ip, country, expected):
    pol = p(assignments={"users": {"include": ["all"]}, "clients": {"include": ["app-1"]}},
            conditions={"risk_levels": ["high"], "locations": {"exclude": ["office"]}, "countries": {"include": ["DE"]}})
    assert needs_mfa(pol, sig(risk=risk_level, ip=ip, country=country)) is expected


# --- grants and states
def test_block_wins_over_require():
    d = policy.evaluate([p(name="a"), p(name="b", grant={"block": True})], sig(), LOC)
    assert d.block


def test_report_only_and_off_are_not_enforced():
    d = policy.evaluate([p(name="r", state="report-only", grant={"block": True}), p(name="o", state="off")], sig(), LOC)
    assert not d.block and not d.require_second_factor
    assert {"name": "r", "state": "report-only", "result": "block"} in d.results
    assert {"name": "o", "state": "off", "result": "not_evaluated"} in d.results


def test_methods_intersect_and_freshness_takes_the_strictest():
    d = policy.evaluate([
        p(name="a", grant={"require_second_factor": True, "methods": ["email", "sms"]}, session={"second_factor_freshness_seconds": 600}),
        p(name="b", grant={"require_second_factor": True, "methods": ["sms"]}, session={"second_factor_freshness_seconds": 60}),
    ], sig(), LOC)
    assert d.methods == ("sms",) and d.freshness_seconds == 60


def test_no_common_method_blocks():
    d = policy.evaluate([p(name="a", grant={"require_second_factor": True, "methods": ["email"]}),
                         p(name="b", grant={"require_second_factor": True, "methods": ["sms"]})], sig(), LOC)
    assert d.block


def test_policy_not_applying_requires_nothing():
    d = policy.evaluate([p(assignments={"users": {"include": ["someone-else@example.com"]}})], sig(), LOC)
    assert not d.require_second_factor and d.results == [{"name": "p", "state": "on", "result": "not_applied"}]


@pytest.mark.parametrize("bad", [
    {"name": ""}, {"name": "x", "state": "maybe"}, {"name": "x", "grant": {"methods": ["fax"]}},
    {"name": "x", "conditions": {"risk_levels": ["extreme"]}}, {"name": "x", "assignments": {"users": {"include": "all"}}},
    {"name": "x", "session": {"second_factor_freshness_seconds": -1}}, "not an object",
])
def test_invalid_policies_are_refused(bad):
    with pytest.raises(policy.PolicyError):
        policy.validate(bad)


def test_policies_round_trip_through_storage(server):
    saved = policy.save(server.storage, {"name": "stored", "state": "off", "grant": {"block": True}})
    try:
        loaded, _ = policy.load(server.storage)
        assert saved in loaded
        policy.set_state(server.storage, "stored", "report-only")
        loaded, _ = policy.load(server.storage)
        assert next(x for x in loaded if x["name"] == "stored")["state"] == "report-only"
    finally:
        policy.delete(server.storage, "stored")
    assert all(x["name"] != "stored" for x in policy.load(server.storage)[0])


# --- risk signals
def user(**entity) -> User:
    base = {"PartitionKey": "u", "RowKey": "user", "oid": "o", "email": "a@example.com"}
    base.update(entity)
    return User(base)


def settings(**env) -> Settings:
    return Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_RISK_IP_ACCOUNTS_PER_HOUR": "0", **env})


def test_risk_levels():
    import time
    s = settings(AUTH_ANONYMIZER_RANGES="192.0.2.0/24")
    assert risk.assess(None, s, user(), "198.51.100.7") == ("none", ())
    assert risk.assess(None, s, user(failed_logins=4, last_failed_at=int(time.time())), "198.51.100.7") == ("medium", ("recent_failures",))
    assert risk.assess(None, s, user(known_networks=json.dumps(["203.0.113.0/24"])), "198.51.100.7") == ("low", ("new_network",))
    assert risk.assess(None, s, user(known_networks=json.dumps(["198.51.100.0/24"])), "198.51.100.7") == ("none", ())
    level, reasons = risk.assess(None, s, user(), "192.0.2.55")
    assert level == "high" and reasons == ("anonymizer",)


def test_ip_velocity_trips_after_many_accounts(server):
    s = Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_RISK_IP_ACCOUNTS_PER_HOUR": "3"})
    ip = "198.51.100.%d" % (hash("velocity") % 200)
    levels = [risk.assess(server.storage, s, user(PartitionKey=f"user{i}" * 4), ip)[0] for i in range(5)]
    assert levels[:3] == ["none", "none", "none"] and levels[3:] == ["high", "high"]
