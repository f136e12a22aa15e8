"""The second factor and method registration: catalogue rows A42-A43.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import _QUIET  # noqa: F401


# ====================================================================== A42-A44

def test_A42_no_method_can_be_added_outside_a_registration_required_flow(server, api, outbox, make_user, require_mfa):
    """There is no self-service method change. The registration endpoints add
    a method only in a flow the policy gate put in registration_required (the
    user has no usable method); every other token is refused."""
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    require_mfa(email)
    attacker_phone = random_phone()
    refused: dict[str, str] = {}
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
    refused["started (no first factor)"] = i["continuation_token"]
    refused["password challenge"] = password_challenge_ct(api, email)
    mfa_state = password_first_factor(api, email)          # the attacker knows the password; MFA is owed
    assert mfa_state["suberror"] == "mfa_required"
    refused["mfa_required (has a method)"] = mfa_state["continuation_token"]
    victim_ct = password_challenge_ct(api, email, caps=None)
    v = password_grant(api, victim_ct, PW)                  # no capabilities: a redirect, flow left as is
    assert v.status == 200 and v["challenge_type"] == "redirect"
    refused["redirected flow"] = victim_ct
    reset_ct = reset_challenge(api, email)
    rv = api.post("resetpassword/v1.0/continue", continuation_token=reset_ct["continuation_token"], grant_type="oob",
                  oob=outbox.last_code(email))
    refused["verified password reset"] = rv["continuation_token"]
    plain, _ = make_user()
    done_ct = password_challenge_ct(api, plain)
    session = password_grant(api, done_ct, PW)
    assert session.status == 200
    refused["completed flow"] = done_ct
    refused["access token"] = session["access_token"]
    refused["refresh token"] = session["refresh_token"]
    for name, ct in refused.items():
        for path, form in (("register/v1.0/introspect", {}),
                           ("register/v1.0/challenge", {"challenge_type": "oob", "challenge_channel": "sms",
                                                        "challenge_target": attacker_phone}),
                           ("register/v1.0/continue", {"grant_type": "oob", "oob": "123456"}),
                           ("register/v1.0/continue", {"grant_type": "continuation_token"})):
            r = api.post(path, {"Authorization": "Bearer " + session["access_token"]}, continuation_token=ct, **form)
            assert r.status == 400 and r["error"] == "invalid_grant", (name, path, r.body)
    assert outbox.count(attacker_phone) == 0
    assert [m["target"] for m in directory.get_user(server.storage, email).methods] == [phone]
    assert directory.get_user(server.storage, plain).methods == []
    # After a registration, the flow cannot register a second method.
    newbie, _ = make_user()
    require_mfa(newbie)
    t = password_first_factor(api, newbie)
    first = random_phone()
    c = api.post("register/v1.0/challenge", continuation_token=t["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target=first)
    cont = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(first))
    assert cont.status == 200
    again = api.post("register/v1.0/challenge", continuation_token=cont["continuation_token"], challenge_type="oob",
                     challenge_channel="sms", challenge_target=attacker_phone)
    assert again.status == 400 and again["error"] == "invalid_grant"
    assert [m["target"] for m in directory.get_user(server.storage, newbie).methods] == [first]


@pytest.fixture
def office(server, policies, make_user):
    """A user whose second factor is required everywhere except from the
    named location 'office' (203.0.113.0/24)."""
    name = f"attacksoffice{uuid.uuid4().hex[:8]}"
    policy.save_location(server.storage, name, ["203.0.113.0/24"])
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, conditions={"locations": {"exclude": [name]}},
             grant={"require_second_factor": True})
    return email


BYPASS_HEADERS = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Real-IP": "203.0.113.7", "X-Client-IP": "203.0.113.7", "True-Client-IP": "203.0.113.7",
    "CF-Connecting-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7",
    "X-Debug": "1", "X-Test-Mode": "true", "X-Bypass-MFA": "1", "X-Skip-MFA": "true",
    "X-MS-CLIENT-PRINCIPAL-ID": "00000000-0000-0000-0000-000000000000", "X-MS-CLIENT-PRINCIPAL-NAME": "admin",
    "X-Original-URL": "/api/oauth2/v2.0/token", "X-Rewrite-URL": "/api/health", "X-HTTP-Method-Override": "GET",
    "CF-IPCountry": "DE", "X-Country": "DE", "X-Azure-ClientIP": "203.0.113.7", "X-Azure-SocketIP": "203.0.113.7",
}


def test_A43_spoofed_client_ip_and_debug_headers_do_not_skip_mfa(server, api, office):
    # Control: behind two trusted proxies, the entry the outer proxy added is
    # believed, and the office is exempt (shows the location condition works).
    with server.override(trusted_proxy_hops=2):
        ok = password_first_factor(api, office, headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    assert ok.status == 200
    # Default (one trusted hop): whatever the client writes is left of the peer the front end appended.
    r = password_first_factor(api, office, headers=BYPASS_HEADERS)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body
    for name, value in BYPASS_HEADERS.items():
        r = password_first_factor(api, office, headers={name: value})
        assert r.status == 400 and r["suberror"] == "mfa_required", (name, r.body)
        assert_no_tokens(r)


def test_A43_no_alternate_path_issues_tokens_past_the_second_factor(api, make_user, require_mfa):
    email, _ = make_user(methods=[sms_method(random_phone())])
    require_mfa(email)
    t = password_first_factor(api, email)
    ct = t["continuation_token"]
    paths = ["oauth2/v2.0/authorize", "oauth2/v2.0/authorize-challenge", "oauth2/token", "oauth2/v2.0/token/",
             "OAUTH2/V2.0/TOKEN", "oauth2//v2.0/token", "oauth2/v2.0/./token", "v1.0/token", "debug/token",
             "test/token", "admin/users", "resetpassword/v1.0/complete", "oauth2/v2.0/token;x=1",
             "signin/v1.0/token"]
    forms = [{"grant_type": g, "scope": SCOPE, "password": PW, "oob": "123456", "username": email}
             for g in ("continuation_token", "password", "mfa_oob", "client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer")]
    for path in paths:
        for form in forms:
            r = api.post(path, continuation_token=ct, **form)
            assert r.status in (200, 400, 401, 404, 405), (path, r.status, r.body)
            assert_no_tokens(r)
        for method in ("GET", "PUT", "PATCH", "DELETE", "HEAD"):
            r = api.request(method, f"{path}?continuation_token={ct}&grant_type=continuation_token", b"", FORM)
            assert r.status in (400, 401, 404, 405), (method, path, r.status)
            assert_no_tokens(r)


def test_A43_unconfigured_country_header_is_ignored(server, api, policies, make_user):
    email, _ = make_user(methods=[sms_method(random_phone())])
    policies(assignments={"users": {"include": [email]}}, conditions={"countries": {"exclude": ["DE"]}},
             grant={"require_second_factor": True})
    assert server.settings.country_header is None
    for header in ("CF-IPCountry", "X-Country", "X-Azure-Country", "X-Geo-Country"):
        r = password_first_factor(api, email, headers={header: "DE"})
        assert r.status == 400 and r["suberror"] == "mfa_required", header
