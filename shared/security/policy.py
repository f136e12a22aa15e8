"""Conditional access: policies as data, evaluated after every first factor
and again before any token leaves the server.

A policy (stored as JSON in the ``policies`` table, PartitionKey ``policy``)::

    {"name": "...", "state": "on" | "off" | "report-only",
     "assignments": {"users":   {"include": ["all" | oid | email], "exclude": [...]},
                     "groups":  {"include": [group], "exclude": [group]},
                     "clients": {"include": ["all" | client id], "exclude": [...]}},
     "conditions":  {"risk_levels": ["medium", "high"],
                     "locations": {"include": [named location], "exclude": [...]},
                     "countries": {"include": ["DE"], "exclude": [...]},
                     "auth_contexts": ["c1"]},
     "grant":   {"block": false, "require_second_factor": true, "methods": ["email", "sms"]},
     "session": {"second_factor_freshness_seconds": 0}}

A policy applies when every assignment and every configured condition
matches. Block wins over everything; otherwise every applying policy that
requires a second factor must be satisfied, with the methods all of them
allow. ``report-only`` policies are evaluated and recorded, never enforced.
Named locations are entities with PartitionKey ``location`` holding CIDRs.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field, replace as dataclasses_replace
from typing import Any, Iterable

from shared.storage.tables import InstanceCache, Storage

POLICY_PK = "policy"
LOCATION_PK = "location"
CACHE_SECONDS = 30.0
ALL_METHODS = ("email", "sms")
STATES = ("on", "off", "report-only")
RISK_ORDER = ("none", "low", "medium", "high")


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Signals:
    """Everything a policy may look at, gathered for one sign-in."""
    user_oid: str
    user_email: str
    groups: tuple[str, ...]
    client_id: str
    ip: str | None
    country: str | None
    risk: str = "none"
    risk_reasons: tuple[str, ...] = ()
    auth_contexts: tuple[str, ...] = ()


@dataclass
class Decision:
    block: bool = False
    require_second_factor: bool = False
    methods: tuple[str, ...] = ALL_METHODS
    # The strictest age limit for a session's second factor among the applying
    # policies that require one (None: no limit). Judged at refresh; a new
    # sign-in always does its own second factor.
    freshness_seconds: int | None = None
    auth_contexts: tuple[str, ...] = ()  # contexts a satisfied sign-in may claim in `acrs`
    results: list[dict[str, str]] = field(default_factory=list)  # per policy: name, state, result

    def to_json(self) -> str:
        return json.dumps({"block": self.block, "mfa": self.require_second_factor, "methods": list(self.methods),
                           "fresh": self.freshness_seconds, "acrs": list(self.auth_contexts)})


def validate(policy: dict[str, Any]) -> dict[str, Any]:
    """Normalise a policy definition; raise PolicyError with a clear message."""
    if not isinstance(policy, dict):
        raise PolicyError("a policy is a JSON object")
    name = policy.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 120:
        raise PolicyError("name: a non-empty string of at most 120 characters")
    state = policy.get("state", "on")
    if state not in STATES:
        raise PolicyError(f"state: one of {', '.join(STATES)}")
    a = policy.get("assignments") or {}
    c = policy.get("conditions") or {}
    g = policy.get("grant") or {}
    s = policy.get("session") or {}

    def inc_exc(obj: Any, what: str, default_include: list[str]) -> dict[str, list[str]]:
        obj = obj or {}
        if not isinstance(obj, dict):
            raise PolicyError(f"{what}: an object with include/exclude lists")
        out = {}
        for k, d in (("include", default_include), ("exclude", [])):
            v = obj.get(k, d)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise PolicyError(f"{what}.{k}: a list of strings")
            out[k] = v
        return out

    users = inc_exc(a.get("users"), "assignments.users", ["all"])
    users = {k: [_user_ref(x, f"assignments.users.{k}") for x in v] for k, v in users.items()}
    clients = inc_exc(a.get("clients"), "assignments.clients", ["all"])
    countries = inc_exc(c.get("countries"), "conditions.countries", [])
    for k, v in countries.items():
        if any(not (len(x.strip()) == 2 and x.strip().isalpha() and x.strip().isascii()) for x in v):
            raise PolicyError(f"conditions.countries.{k}: two-letter country codes (ISO 3166-1 alpha-2)")
        countries[k] = [x.strip().upper() for x in v]
    methods = g.get("methods", list(ALL_METHODS))
    if not isinstance(methods, list) or not methods or any(m not in ALL_METHODS for m in methods):
        raise PolicyError(f"grant.methods: a non-empty list of {', '.join(ALL_METHODS)}")
    risk_levels = c.get("risk_levels", [])
    if any(r not in RISK_ORDER for r in risk_levels):
        raise PolicyError(f"conditions.risk_levels: values from {', '.join(RISK_ORDER)}")
    block = bool(g.get("block", False))
    mfa = bool(g.get("require_second_factor", not block))
    fresh = s.get("second_factor_freshness_seconds", 0)
    if not isinstance(fresh, int) or fresh < 0 or fresh > 30 * 86400:
        raise PolicyError("session.second_factor_freshness_seconds: 0 to 2592000")
    return {
        "name": name.strip(), "state": state,
        "assignments": {
            "users": users,
            "groups": {k: [g.strip().casefold() for g in v] for k, v in inc_exc(a.get("groups"), "assignments.groups", []).items()},
            "clients": clients,
        },
        "conditions": {
            "risk_levels": list(risk_levels),
            "locations": inc_exc(c.get("locations"), "conditions.locations", []),
            "countries": countries,
            "auth_contexts": _contexts(c.get("auth_contexts", [])),
        },
        "grant": {"block": block, "require_second_factor": mfa and not block, "methods": methods},
        "session": {"second_factor_freshness_seconds": fresh},
    }


def _contexts(value: Any) -> list[str]:
    """Authentication context ids as clients ask for them in ``claims`` (``acrs``):
    letters and digits, at most 16 (``gate.requested_contexts`` keeps no other)."""
    if not isinstance(value, list) or not all(isinstance(x, str) and x.isalnum() and len(x) <= 16 for x in value):
        raise PolicyError("conditions.auth_contexts: a list of ids of letters and digits (at most 16), e.g. [\"c1\"]")
    return list(value)


def _user_ref(value: str, where: str) -> str:
    """A user in an assignment, in the form the directory stores: ``all``, an
    object id (lower-case UUID) or a normalized email address. Anything else
    is refused: an entry that can never match would silently fail open."""
    import uuid

    from shared.protocol.identifiers import InvalidIdentifier, normalize_email

    text = value.strip()
    if text.lower() == "all":
        return "all"
    try:
        return str(uuid.UUID(text))
    except ValueError:
        pass
    try:
        return normalize_email(text)
    except InvalidIdentifier:
        raise PolicyError(f"{where}: {value!r} is neither 'all', an object id nor an email address") from None


# ------------------------------------------------------------------ matching

def _users_match(users: dict, groups: dict, s: Signals) -> bool:
    ids = {s.user_oid, s.user_email}
    s = dataclasses_replace(s, groups=tuple(g.strip().casefold() for g in s.groups))
    included = "all" in users["include"] or bool(ids & set(users["include"])) or bool(set(s.groups) & set(groups["include"]))
    excluded = bool(ids & set(users["exclude"])) or bool(set(s.groups) & set(groups["exclude"]))
    return included and not excluded


def _clients_match(clients: dict, s: Signals) -> bool:
    return ("all" in clients["include"] or s.client_id in clients["include"]) and s.client_id not in clients["exclude"]


def _in_locations(ip: str | None, names: Iterable[str], locations: dict[str, list[str]]) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for name in names:
        for cidr in locations.get(name, []):
            try:
                if addr in ipaddress.ip_network(cidr, strict=False):
                    return True
            except ValueError:
                continue
    return False


def applies(policy: dict[str, Any], s: Signals, locations: dict[str, list[str]]) -> bool:
    a, c = policy["assignments"], policy["conditions"]
    if not _users_match(a["users"], a["groups"], s) or not _clients_match(a["clients"], s):
        return False
    if c["risk_levels"] and s.risk not in c["risk_levels"]:
        return False
    loc = c["locations"]
    if loc["include"] and not _in_locations(s.ip, loc["include"], locations):
        return False
    if loc["exclude"] and _in_locations(s.ip, loc["exclude"], locations):
        return False
    countries = c["countries"]
    if countries["include"] and (s.country or "").upper() not in {x.upper() for x in countries["include"]}:
        return False
    if countries["exclude"] and (s.country or "").upper() in {x.upper() for x in countries["exclude"]}:
        return False
    if c["auth_contexts"] and not set(c["auth_contexts"]) & set(s.auth_contexts):
        return False
    return True


def evaluate(policies: Iterable[dict[str, Any]], s: Signals, locations: dict[str, list[str]] | None = None) -> Decision:
    locations = locations or {}
    d = Decision()
    methods = set(ALL_METHODS)
    fresh: list[int] = []
    contexts: set[str] = set()
    for p in policies:
        if p["state"] == "off":
            d.results.append({"name": p["name"], "state": "off", "result": "not_evaluated"})
            continue
        hit = applies(p, s, locations)
        grant = p["grant"]
        result = "not_applied" if not hit else ("block" if grant["block"] else
                                                  "second_factor" if grant["require_second_factor"] else "grant")
        d.results.append({"name": p["name"], "state": p["state"], "result": result})
        if not hit or p["state"] != "on":
            continue
        if grant["block"]:
            d.block = True
        if grant["require_second_factor"]:
            d.require_second_factor = True
            methods &= set(grant["methods"])
            if p["session"]["second_factor_freshness_seconds"]:  # 0: no age limit
                fresh.append(int(p["session"]["second_factor_freshness_seconds"]))
            contexts |= set(p["conditions"]["auth_contexts"])
    d.methods = tuple(m for m in ALL_METHODS if m in methods)
    d.freshness_seconds = min(fresh) if fresh else None
    d.auth_contexts = tuple(sorted(contexts & set(s.auth_contexts)))
    if d.require_second_factor and not d.methods:
        d.block = True  # policies that allow no common method cannot be satisfied
    return d


# ------------------------------------------------------------------ storage

_cache = InstanceCache(CACHE_SECONDS)


def load(storage: Storage) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Policies and named locations, cached briefly per instance (every
    instance reads the same table, so all converge within CACHE_SECONDS)."""

    def read() -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        rows = storage.table("policies").query("PartitionKey eq @a or PartitionKey eq @b",
                                               {"a": POLICY_PK, "b": LOCATION_PK})
        policies = [_load_one(r) for r in rows if r["PartitionKey"] == POLICY_PK]
        policies.sort(key=lambda p: p["name"])
        locations = {r["RowKey"]: json.loads(r["cidrs"]) for r in rows if r["PartitionKey"] == LOCATION_PK}
        return policies, locations

    return _cache.get(id(storage), read)


def _load_one(row: dict[str, Any]) -> dict[str, Any]:
    """A stored policy, validated again (the rules may be stricter than when it
    was saved). One that no longer validates fails closed: it becomes a
    policy that blocks every sign-in, under its own name, so the sign-in log
    and ``python -m admin policies list`` show which one to fix."""
    try:
        return validate(json.loads(row["definition"]))
    except (PolicyError, ValueError, TypeError) as exc:
        import logging

        name = str(row.get("name") or row["RowKey"])
        logging.getLogger("nativeauth.policy").error("stored policy %r is invalid (%s): blocking until fixed", name, exc)
        return validate({"name": f"{name[:90]} (invalid: blocks all)", "state": "on", "grant": {"block": True}})


def clear_cache() -> None:
    _cache.forget()


def _row_key(name: str) -> str:
    from shared.storage.tables import hash_key

    return hash_key("policy", name.strip().lower())[:32]


def save(storage: Storage, policy: dict[str, Any]) -> dict[str, Any]:
    policy = validate(policy)
    storage.table("policies").put({"PartitionKey": POLICY_PK, "RowKey": _row_key(policy["name"]),
                                   "name": policy["name"], "definition": json.dumps(policy)})
    clear_cache()
    return policy


def delete(storage: Storage, name: str) -> None:
    """Delete a policy by name; PolicyError when there is none."""
    if storage.table("policies").get(POLICY_PK, _row_key(name)) is None:
        raise PolicyError(f"no policy named {name!r}")
    storage.table("policies").delete(POLICY_PK, _row_key(name))
    clear_cache()


def set_state(storage: Storage, name: str, state: str) -> dict[str, Any]:
    row = storage.table("policies").get(POLICY_PK, _row_key(name))
    if row is None:
        raise PolicyError(f"no policy named {name!r}")
    policy = json.loads(row["definition"])
    policy["state"] = state
    return save(storage, policy)


def save_location(storage: Storage, name: str, cidrs: list[str]) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise PolicyError(f"not an IP range: {cidr!r}") from None
    from shared.storage.tables import hash_key

    storage.table("policies").put({"PartitionKey": LOCATION_PK, "RowKey": name if name.isalnum() else hash_key("loc", name)[:32],
                                   "cidrs": json.dumps(cidrs)})
    clear_cache()


def builtin(account_context: str, freshness_seconds: int) -> list[dict[str, Any]]:
    """Policies the service always applies, next to the stored ones: changes to
    an account through the account API (/api/me: its methods, deleting it)
    need a second factor at most ``freshness_seconds`` old, asked for with
    the account's authentication context (the API's claims challenge)."""
    return [validate({
        "name": "built-in: account changes need a fresh second factor", "state": "on",
        "conditions": {"auth_contexts": [account_context]},
        "grant": {"require_second_factor": True, "methods": list(ALL_METHODS)},
        "session": {"second_factor_freshness_seconds": freshness_seconds},
    })]


DEFAULT_LOCAL_POLICY = {
    "name": "Require a second factor for every sign-in",
    "state": "on",
    "assignments": {"users": {"include": ["all"]}, "clients": {"include": ["all"]}},
    "grant": {"require_second_factor": True, "methods": ["email", "sms"]},
    "session": {"second_factor_freshness_seconds": 0},
}
