"""Sessions after sign-in: second-factor freshness bound to the session, and
conditional access evaluated again at every refresh: catalogue rows A47, A49, A57.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

import importlib

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers

# What msal-common (InteractionRequiredAuthError.isInteractionRequiredError) treats as
# "interaction required": these error values, or these suberrors.
MSAL_INTERACTION_ERRORS = ("interaction_required", "consent_required", "login_required", "bad_token",
                           "ui_not_allowed", "interrupted_user")
MSAL_INTERACTION_SUBERRORS = ("message_only", "additional_action", "basic_action", "user_password_expired",
                              "consent_required", "bad_token", "ui_not_allowed", "interrupted_user")


def assert_interaction_required(resp, code: int | None = None) -> None:
    assert resp.status == 400, (resp.status, resp.body)
    assert resp["error"] in MSAL_INTERACTION_ERRORS or resp.get("suberror") in MSAL_INTERACTION_SUBERRORS, resp.body
    assert_no_tokens(resp)
    if code is not None:
        assert resp["error_codes"][0] == code, resp.body


@pytest.fixture
def later(shift):
    """Move the clock of every module that judges time at refresh."""
    clocks = [shift(tokens)]
    for name in ("shared.security.gate",):
        try:
            clocks.append(shift(importlib.import_module(name)))
        except ModuleNotFoundError:
            pass

    def by(seconds: float) -> None:
        for c in clocks:
            c.offset = seconds
    return by


def mfa_session(api, outbox, email: str, phone: str, *, claims: str | None = None, scope: str = FULL_SCOPE):
    r = password_first_factor(api, email, claims=claims, scope=scope)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body
    t = prove_method(api, outbox, r["continuation_token"], phone, scope=scope)
    assert t.status == 200, t.body
    return t


def refresh_with(api, rt: str, claims: str | None = None, headers: dict | None = None):
    return api.post("oauth2/v2.0/token", headers, grant_type="refresh_token", refresh_token=rt, scope=FULL_SCOPE,
                    client_info="1", claims=claims)


# ====================================================================== A47: freshness belongs to the session

def test_A47_a_victims_second_factor_does_not_exempt_an_attacker_with_the_password(server, api, outbox, make_user,
                                                                                 policies):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True, "methods": ["sms"]},
             session={"second_factor_freshness_seconds": 3600})
    mfa_session(api, outbox, email, phone)                      # the victim, a minute ago
    attacker = password_first_factor(api, email)               # same client, same account, password only
    assert attacker.status == 400 and attacker["suberror"] == "mfa_required", attacker.body
    assert_no_tokens(attacker)


def test_A47_the_session_that_did_the_second_factor_keeps_it_for_the_window(server, api, outbox, make_user, policies,
                                                                           later):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True, "methods": ["sms"]},
             session={"second_factor_freshness_seconds": 3600})
    t = mfa_session(api, outbox, email, phone)
    later(600)
    r = refresh_with(api, t["refresh_token"])
    assert r.status == 200, r.body
    assert claims_of(r["id_token"])["amr"] == ["pwd", "sms", "mfa"]
    later(3700)                                                 # the session's second factor is too old now
    assert_interaction_required(refresh_with(api, r["refresh_token"]))


# ====================================================================== A49: policies at every refresh

def test_A49_a_block_policy_stops_refresh_at_once_and_is_lifted_cleanly(server, api, make_user, policies):
    email, _ = make_user()
    t = password_first_factor(api, email, scope=FULL_SCOPE)
    assert t.status == 200
    name = policies(assignments={"users": {"include": [email]}}, grant={"block": True})
    blocked = refresh_with(api, t["refresh_token"])
    assert_interaction_required(blocked, 53003)
    policy.delete(server.storage, name)
    policy.clear_cache()
    again = refresh_with(api, t["refresh_token"])          # the family was not revoked by the block
    assert again.status == 200, again.body


def test_A49_a_second_factor_required_later_stops_a_single_factor_session(server, api, make_user, policies):
    email, _ = make_user(methods=[sms_method(random_phone())])
    t = password_first_factor(api, email, scope=FULL_SCOPE)
    assert t.status == 200
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
    assert_interaction_required(refresh_with(api, t["refresh_token"]), 50076)


def test_A49_location_and_risk_are_judged_at_refresh(server, api, make_user, policies):
    name = f"refreshoffice{uuid.uuid4().hex[:8]}"
    policy.save_location(server.storage, name, ["203.0.113.0/24"])
    email, _ = make_user(methods=[sms_method(random_phone())])
    policies(assignments={"users": {"include": [email]}}, conditions={"locations": {"exclude": [name]}},
             grant={"require_second_factor": True})
    with server.override(trusted_proxy_hops=2):
        t = password_first_factor(api, email, scope=FULL_SCOPE, headers={"X-Forwarded-For": "203.0.113.9"})
        assert t.status == 200, t.body                           # in the office: one factor is enough
        inside = refresh_with(api, t["refresh_token"], headers={"X-Forwarded-For": "203.0.113.9"})
        assert inside.status == 200, inside.body
        outside = refresh_with(api, inside["refresh_token"], headers={"X-Forwarded-For": "198.51.100.20"})
        assert_interaction_required(outside, 50076)
    # Risk: an anonymizer range (high risk) with a block policy for high risk.
    email2, _ = make_user()
    t2 = password_first_factor(api, email2, scope=FULL_SCOPE)
    policies(assignments={"users": {"include": [email2]}}, conditions={"risk_levels": ["high"]}, grant={"block": True})
    with server.override(trusted_proxy_hops=2, anonymizer_ranges=("198.51.100.0/24",)):
        assert_interaction_required(refresh_with(api, t2["refresh_token"], headers={"X-Forwarded-For": "198.51.100.7"}), 53003)


def test_A49_ip_velocity_is_kept_and_judged_while_a_policy_reads_risk(server, api, make_user, policies):
    """The IP-velocity row (a read per first factor and refresh, a write per
    account new to the address) is kept only while a policy looks at the risk
    level. Then the accounts passing a first factor from an address are counted,
    and a session whose address carried too many this hour is refused at its
    refresh like any high-risk sign-in."""
    ip = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    headers = {"X-Forwarded-For": ip}
    email, _ = make_user()
    with server.override(trusted_proxy_hops=2, risk_ip_accounts_per_hour=2):
        t = password_first_factor(api, email, scope=FULL_SCOPE, headers=headers)
        assert t.status == 200, t.body
        assert "limits" not in t.headers.get("x-storage-trace", ""), t.headers.get("x-storage-trace")
        plain = refresh_with(api, t["refresh_token"], headers=headers)
        assert plain.status == 200, plain.body
        assert "limits" not in plain.headers.get("x-storage-trace", ""), plain.headers.get("x-storage-trace")
        policies(assignments={"users": {"include": [email]}}, conditions={"risk_levels": ["high"]},
                 grant={"block": True})
        judged = refresh_with(api, plain["refresh_token"], headers=headers)
        assert judged.status == 200, judged.body                  # read now, and no account counted there yet
        assert "limits.get" in judged.headers.get("x-storage-trace", ""), judged.headers.get("x-storage-trace")
        for _ in range(3):                                        # three accounts pass a first factor there
            other, _ = make_user()
            assert password_first_factor(api, other, scope=FULL_SCOPE, headers=headers).status == 200
        assert_interaction_required(refresh_with(api, judged["refresh_token"], headers=headers), 53003)
        elsewhere = refresh_with(api, judged["refresh_token"], headers={"X-Forwarded-For": "203.0.113.77"})
        assert elsewhere.status == 200, elsewhere.body           # another address: its own count


def test_A49_acrs_whose_conditions_lapsed_are_dropped_not_carried(server, api, outbox, make_user, policies, later):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, conditions={"auth_contexts": ["c1"]},
             grant={"require_second_factor": True, "methods": ["sms"]}, session={"second_factor_freshness_seconds": 600})
    t = mfa_session(api, outbox, email, phone, claims=context_claims("c1"))
    assert claims_of(t["access_token"])["acrs"] == ["c1"]
    later(60)
    fresh = refresh_with(api, t["refresh_token"])
    assert fresh.status == 200 and claims_of(fresh["access_token"]).get("acrs") == ["c1"], fresh.body
    later(700)
    stale = refresh_with(api, fresh["refresh_token"])
    assert stale.status == 200, stale.body                      # the session goes on, without the context
    assert not claims_of(stale["access_token"]).get("acrs")
    assert sensitive(api, stale["access_token"]).status == 401


def test_A49_a_removed_method_no_longer_vouches_for_the_session(server, api, outbox, make_user, policies):
    phone = random_phone()
    email, user = make_user(methods=[sms_method(phone)])
    req = policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
    t = mfa_session(api, outbox, email, phone)
    directory.change_user(server.storage, directory.get_user(server.storage, email), lambda u: {"methods": "[]"})
    assert_interaction_required(refresh_with(api, t["refresh_token"]), 50076)
    policy.delete(server.storage, req)
    policy.clear_cache()
    r = refresh_with(api, t["refresh_token"])
    assert r.status == 200 and claims_of(r["id_token"])["amr"] == ["pwd"] and claims_of(r["id_token"])["acr"] == "1"


# ====================================================================== A57: claims on a refresh

def test_A57_claims_on_refresh_for_an_unsatisfied_context_is_interaction_required(server, api, make_user, policies):
    email, _ = make_user(methods=[sms_method(random_phone())])
    policies(assignments={"users": {"include": [email]}}, conditions={"auth_contexts": ["c1"]},
             grant={"require_second_factor": True, "methods": ["sms"]})
    t = password_first_factor(api, email, scope=FULL_SCOPE)
    assert t.status == 200 and not claims_of(t["access_token"]).get("acrs")
    r = refresh_with(api, t["refresh_token"], claims=context_claims("c1"))
    assert_interaction_required(r, 50076)
    # The session is not harmed: a plain refresh still works.
    assert refresh_with(api, t["refresh_token"]).status == 200


def test_A57_claims_on_refresh_are_granted_from_the_sessions_fresh_second_factor(server, api, outbox, make_user,
                                                                                policies, later):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True, "methods": ["sms"]})
    policies(assignments={"users": {"include": [email]}}, conditions={"auth_contexts": ["c1"]},
             grant={"require_second_factor": True, "methods": ["sms"]}, session={"second_factor_freshness_seconds": 600})
    t = mfa_session(api, outbox, email, phone)
    assert not claims_of(t["access_token"]).get("acrs")
    later(60)
    r = refresh_with(api, t["refresh_token"], claims=context_claims("c1"))
    assert r.status == 200 and claims_of(r["access_token"])["acrs"] == ["c1"], r.body
    assert sensitive(api, r["access_token"]).status == 200
    later(700)
    assert_interaction_required(refresh_with(api, r["refresh_token"], claims=context_claims("c1")), 50076)


def test_A49_the_sign_in_mailbox_never_vouches_for_a_session(server, api, outbox, make_user, policies):
    """A family whose recorded second factor is the account's own sign-in
    mailbox (written while that still counted) is not multi-factor at refresh."""
    phone = random_phone()
    email = unique_email("mailbox-session")
    make_user(email=email, methods=[sms_method(phone), email_method(email, "e-self", default=False)])
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
    t = mfa_session(api, outbox, email, phone)
    pk, family = t["refresh_token"].split(".")[:2]
    table = server.storage.table("refresh")
    fam = table.get(pk, family)
    session = json.loads(fam["session"])
    session["second_factors"] = [{"id": "e-self", "channel": "email"}]
    table.update({"PartitionKey": pk, "RowKey": family, "session": json.dumps(session)}, fam["_etag"])
    assert_interaction_required(refresh_with(api, t["refresh_token"]), 50076)

