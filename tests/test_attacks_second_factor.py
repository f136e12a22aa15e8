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


# ====================================================================== A45-A48, A50, A56: the method-registration rule

def _sms_only_for_context(policies, email: str, context: str = "c1") -> None:
    """Every sign-in of the user needs a second factor (email or SMS); the
    authentication context needs SMS."""
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True, "methods": ["email", "sms"]})
    policies(assignments={"users": {"include": [email]}}, conditions={"auth_contexts": [context]},
             grant={"require_second_factor": True, "methods": ["sms"]})


def _registration_refused(api, ct: str, attacker_phone: str) -> None:
    for path, form in (("register/v1.0/introspect", {}),
                       ("register/v1.0/challenge", {"challenge_type": "oob", "challenge_channel": "sms",
                                                    "challenge_target": attacker_phone}),
                       ("register/v1.0/continue", {"grant_type": "oob", "oob": "123456"})):
        r = api.post(path, continuation_token=ct, **form)
        assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)


def test_A45_password_alone_cannot_plant_a_factor_through_a_step_up_context(server, api, outbox, make_user, policies):
    """The attacker knows the password only. Asking for an SMS-only context
    must not turn the victim's email second factor into 'registration
    required': the account has a method, so that method must be proven first."""
    mailbox = unique_email("victim-mfa")
    email, _ = make_user(methods=[email_method(mailbox)])
    _sms_only_for_context(policies, email)
    attacker_phone = random_phone()
    # An MSAL client (no registration_after_mfa capability): a typed redirect, nothing sent.
    sdk = password_first_factor(api, email, claims=context_claims("c1"))
    assert sdk.status == 200 and sdk["challenge_type"] == "redirect" and "sms" in sdk["redirect_reason"], sdk.body
    r = password_first_factor(api, email, claims=context_claims("c1"), caps=CAPS_PROOF)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body      # prove the existing method first
    _registration_refused(api, r["continuation_token"], attacker_phone)
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    assert [m["challenge_channel"] for m in intro["methods"]] == ["email"]
    assert outbox.count(attacker_phone) == 0 and methods_of(server, email) == [("email", mailbox)]
    # Without the victim's mailbox the flow ends here: a wrong code gets no further.
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=intro["methods"][0]["id"],
                 challenge_type="password oob redirect")
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                 oob=wrong(outbox.last_code(mailbox)), scope=SCOPE)
    assert t.status == 400 and t["suberror"] == "invalid_oob_value"
    _registration_refused(api, c["continuation_token"], attacker_phone)
    assert methods_of(server, email) == [("email", mailbox)]


def test_A45_the_owner_proves_the_existing_method_then_registers_the_required_one(server, api, outbox, make_user, policies):
    mailbox = unique_email("owner-mfa")
    email, user = make_user(methods=[email_method(mailbox)])
    _sms_only_for_context(policies, email)
    phone = random_phone()
    r = password_first_factor(api, email, claims=context_claims("c1"), caps=CAPS_PROOF)
    assert r["suberror"] == "mfa_required"
    proven = prove_method(api, outbox, r["continuation_token"], mailbox)
    assert proven.status == 400 and proven["suberror"] == "registration_required", proven.body
    assert_no_tokens(proven)
    intro = api.post("register/v1.0/introspect", continuation_token=proven["continuation_token"])
    assert [m["challenge_channel"] for m in intro["methods"]] == ["sms"]             # only what the context allows
    t = register_method(api, outbox, intro["continuation_token"], "sms", phone, claims=context_claims("c1"))
    assert t.status == 200, t.body
    at, idt = claims_of(t["access_token"]), claims_of(t["id_token"])
    assert at["acrs"] == ["c1"] and idt["amr"] == ["pwd", "otp", "sms", "mfa"] and idt["acr"] == "2"
    assert methods_of(server, email) == [("email", mailbox), ("sms", phone)]
    # The next sign-in offers both methods.
    again = password_first_factor(api, email)
    listed = api.post("oauth2/v2.0/introspect", continuation_token=again["continuation_token"])
    assert sorted(m["challenge_channel"] for m in listed["methods"]) == ["email", "sms"]


def test_A45_risk_raised_by_wrong_passwords_does_not_open_registration(server, api, outbox, make_user, policies):
    mailbox = unique_email("risk-mfa")
    email, _ = make_user(methods=[email_method(mailbox)])
    policies(assignments={"users": {"include": [email]}}, conditions={"risk_levels": ["medium", "high"]},
             grant={"require_second_factor": True, "methods": ["sms"]})
    for _ in range(3):
        assert password_first_factor(api, email, "not the password at all").status == 400
    r = password_first_factor(api, email, caps=CAPS_PROOF)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body
    _registration_refused(api, r["continuation_token"], random_phone())


def test_A45_a_targeted_client_does_not_open_registration(server, api, outbox, make_user, policies):
    mailbox = unique_email("client-mfa")
    email, _ = make_user(methods=[email_method(mailbox)])
    client_id = f"attack-{uuid.uuid4().hex[:12]}"
    directory.register_client(server.storage, client_id, "A client with an SMS-only policy")
    policies(assignments={"users": {"include": [email]}, "clients": {"include": [client_id]}},
             grant={"require_second_factor": True, "methods": ["sms"]})
    other = RecordingApi(type(server.api)(server.api.base_url, client_id))
    r = password_first_factor(other, email, caps=CAPS_PROOF)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body
    _registration_refused(other, r["continuation_token"], random_phone())


def test_A45_just_in_time_registration_only_while_the_account_has_no_method(server, api, outbox, make_user, require_mfa):
    """Two registration flows for an account without a method: the first to
    finish registers; the other can no longer register without proving it."""
    email, _ = make_user()
    require_mfa(email)
    first, second = password_first_factor(api, email), password_first_factor(api, email)
    assert first["suberror"] == second["suberror"] == "registration_required"
    phone_a, phone_b = random_phone(), random_phone()
    ca = api.post("register/v1.0/challenge", continuation_token=first["continuation_token"], challenge_type="oob",
                  challenge_channel="sms", challenge_target=phone_a)
    cb = api.post("register/v1.0/challenge", continuation_token=second["continuation_token"], challenge_type="oob",
                  challenge_channel="sms", challenge_target=phone_b)
    assert ca.status == cb.status == 200
    done = api.post("register/v1.0/continue", continuation_token=ca["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(phone_a))
    assert done.status == 200
    late = api.post("register/v1.0/continue", continuation_token=cb["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(phone_b))
    assert late.status == 400 and late["error"] == "invalid_grant", late.body
    assert methods_of(server, email) == [("sms", phone_a)]
    # A flow that got registration_required before the first method existed cannot start a registration either.
    third = password_first_factor(api, email)
    assert third["suberror"] == "mfa_required"


def test_A46_the_sign_in_mailbox_is_never_offered_or_registered_as_a_second_factor(server, api, outbox, make_user,
                                                                                   require_mfa):
    """The victim's only method is their own sign-in address (what the old
    sign-up fast pass made). With only the mailbox, an email-code sign-in can
    neither use that address as the second factor nor register a variant of
    it: the account has no independent method, so it gets just-in-time
    registration of one (a phone or another mailbox), like any account
    without a method (SECURITY.md §3.3)."""
    email = unique_email("mailbox")
    make_user(email=email, methods=[email_method(email)])
    local, domain = email.split("@")
    require_mfa(email)
    r = email_first_factor(api, outbox, email)
    assert r.status == 400 and r["suberror"] == "registration_required", r.body
    assert_no_tokens(r)
    for variant in (email, f"{local.upper()}+mfa@{domain.upper()}"):
        c = api.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                     challenge_channel="email", challenge_target=variant)
        assert c.status == 400 and 901001 in c["error_codes"], c.body
    assert outbox.count(f"{local}+mfa@{domain}") == 0
    assert methods_of(server, email) == [("email", email)]


def test_A45_a_password_alone_cannot_register_on_an_account_whose_only_method_is_its_mailbox(server, api, outbox,
                                                                                           make_user, require_mfa):
    """The account's only method is its sign-in mailbox (the old fast pass). It
    is no second factor, but it is a method: registering needs it proven by a
    code (an email-code first factor, a reset, or an MFA proof), never a
    password alone."""
    email = unique_email("fastpass")
    make_user(email=email, methods=[email_method(email)])
    require_mfa(email)
    attacker_phone = random_phone()
    sdk = password_first_factor(api, email)                                  # an MSAL client: a typed redirect
    assert sdk.status == 200 and sdk["challenge_type"] == "redirect", sdk.body
    r = password_first_factor(api, email, caps=CAPS_PROOF)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body      # prove the mailbox first
    _registration_refused(api, r["continuation_token"], attacker_phone)
    assert outbox.count(attacker_phone) == 0 and methods_of(server, email) == [("email", email)]
    # The owner proves the mailbox, then registers a phone; the token counts only the phone.
    proven = prove_method(api, outbox, r["continuation_token"], email)
    assert proven["suberror"] == "registration_required", proven.body
    phone = random_phone()
    t = register_method(api, outbox, proven["continuation_token"], "sms", phone)
    assert t.status == 200, t.body
    assert claims_of(t["id_token"])["amr"] == ["pwd", "otp", "sms", "mfa"]
    assert methods_of(server, email) == [("email", email), ("sms", phone)]


def test_A45_a_disabled_account_cannot_finish_a_registration(server, api, outbox, make_user, require_mfa):
    email, _ = make_user()
    require_mfa(email)
    r = password_first_factor(api, email)
    phone = random_phone()
    c = api.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target=phone)
    assert c.status == 200
    directory.update_user(server.storage, directory.get_user(server.storage, email), disabled=True,
                          rt_not_before=time.time())
    done = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(phone))
    assert done.status == 400 and done["error"] == "invalid_grant", done.body
    assert methods_of(server, email) == []


def test_A45_a_flow_from_before_a_reset_sends_no_more_codes(server, api, outbox, make_user, require_mfa):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    require_mfa(email)
    r = password_first_factor(api, email)                                   # a phished password
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    reset_to_token(api, outbox, email, NEW_PW)                                # the owner resets
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id="m1",
                 challenge_type="password oob redirect")
    assert c.status == 400 and c["error"] == "invalid_grant", c.body
    assert outbox.count(phone) == 0


def test_A46_plus_and_case_variants_of_the_sign_in_mailbox_are_not_a_second_factor(server, api, outbox, make_user,
                                                                                    require_mfa):
    email, _ = make_user(password=None)                   # no method yet: just-in-time registration is allowed
    require_mfa(email)
    local, domain = email.split("@")
    r = email_first_factor(api, outbox, email)
    assert r["suberror"] == "registration_required"
    for variant in (f"{local}+mfa@{domain}", f"{local.upper()}@{domain}", f"{local}+x+y@{domain.upper()}"):
        before = outbox.count(variant.lower())
        c = api.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                     challenge_channel="email", challenge_target=variant)
        assert c.status == 400 and 901001 in c["error_codes"], (variant, c.body)
        assert outbox.count(variant.lower()) == before
    other = unique_email("really-another-mailbox")
    t = register_method(api, outbox, r["continuation_token"], "email", other)
    assert t.status == 200, t.body
    assert claims_of(t["id_token"])["amr"] == ["otp", "mfa"] and claims_of(t["id_token"])["acr"] == "2"
    # An alias of the sign-in mailbox stored earlier is not a second factor either (nor proof).
    alias_user, _ = make_user(password=None)
    a_local, a_domain = alias_user.split("@")
    directory.change_user(server.storage, directory.get_user(server.storage, alias_user),
                          lambda u: {"methods": json.dumps([email_method(f"{a_local}+mfa@{a_domain}")])})
    require_mfa(alias_user)
    r2 = email_first_factor(api, outbox, alias_user)
    assert r2.status == 400 and r2.get("suberror") != "mfa_required", r2.body
    assert_no_tokens(r2)


def test_A46_a_password_reset_does_not_turn_the_mailbox_into_a_second_factor(server, api, outbox, make_user,
                                                                            require_mfa):
    """With the mailbox alone: reset the password by email code, sign in with
    it, then offer the same mailbox as the second factor. The sign-in mailbox
    is never a second factor, so no token with acr 2 comes out of it; the
    account (no independent method) gets just-in-time registration."""
    email = unique_email("reset-mailbox")
    make_user(email=email, methods=[email_method(email)])
    require_mfa(email)
    ct = reset_to_token(api, outbox, email, NEW_PW)
    after = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", scope=SCOPE)
    assert_no_tokens(after)
    sdk = password_first_factor(api, email, NEW_PW)
    assert sdk.status == 200 and sdk["challenge_type"] == "redirect", sdk.body
    r = password_first_factor(api, email, NEW_PW, caps=CAPS_PROOF)
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body     # proof of the mailbox, not a factor
    t = prove_method(api, outbox, r["continuation_token"], email)
    assert t.status == 400 and t["suberror"] == "registration_required", t.body   # no acr 2 from the mailbox
    assert_no_tokens(t)
    c = api.post("register/v1.0/challenge", continuation_token=t["continuation_token"], challenge_type="oob",
                 challenge_channel="email", challenge_target=email)
    assert c.status == 400 and 901001 in c["error_codes"]


def test_A45_a_flow_started_before_a_password_reset_cannot_finish(server, api, outbox, make_user, require_mfa):
    """A phished password starts a flow; the victim resets the password; the
    old flow can neither register a method nor get tokens."""
    email, _ = make_user()
    require_mfa(email)
    r = password_first_factor(api, email)
    assert r["suberror"] == "registration_required"
    reset_to_token(api, outbox, email, NEW_PW)
    phone = random_phone()
    t = register_method(api, outbox, r["continuation_token"], "sms", phone)
    assert t.status == 400 and t["error"] == "invalid_grant", t.body
    assert outbox.count(phone) == 0 and methods_of(server, email) == []


def test_A45_a_method_removed_mid_flow_no_longer_counts_as_proof(server, api, outbox, make_user, policies):
    first, second = unique_email("proof-a"), unique_email("proof-b")
    email, _ = make_user(methods=[email_method(first, "e1"), email_method(second, "e2", default=False)])
    _sms_only_for_context(policies, email)
    r = password_first_factor(api, email, claims=context_claims("c1"), caps=CAPS_PROOF)
    proven = prove_method(api, outbox, r["continuation_token"], first, "e1")
    assert proven["suberror"] == "registration_required"
    directory.change_user(server.storage, directory.get_user(server.storage, email),   # e1 reported stolen
                          lambda u: {"methods": json.dumps([m for m in u.methods if m["id"] != "e1"])})
    t = register_method(api, outbox, proven["continuation_token"], "sms", random_phone())
    assert t.status == 400 and t["error"] == "invalid_grant", t.body
    assert methods_of(server, email) == [("email", second)]


def test_A48_a_context_added_at_the_last_step_is_checked_against_the_factor_done(server, api, outbox, make_user, policies):
    """Everyone: email or SMS; context c1: SMS only. Register an email method,
    then ask for c1 only on the final /token call: no acrs c1 from an email code."""
    email, _ = make_user()
    _sms_only_for_context(policies, email)
    r = password_first_factor(api, email)                                   # no claims here
    assert r["suberror"] == "registration_required"
    t = register_method(api, outbox, r["continuation_token"], "email", unique_email("second"), claims=context_claims("c1"))
    assert_no_tokens(t) if t.status != 200 else None
    if t.status == 200:
        assert "c1" not in (claims_of(t["access_token"]).get("acrs") or [])
    else:
        assert t.status == 400, t.body


def test_A50_every_method_added_notifies_the_account_and_is_logged(server, api, outbox, make_user, require_mfa):
    email, user = make_user()
    require_mfa(email)
    phone = random_phone()
    before = outbox.count(email)
    r = password_first_factor(api, email)
    t = register_method(api, outbox, r["continuation_token"], "sms", phone)
    assert t.status == 200
    notices = [m for m in outbox.messages(email)[before:] if m.get("purpose") == "method_added"]
    assert len(notices) == 1 and not notices[0].get("code")
    assert phone not in json.dumps(notices[0]) and phone[-4:] in json.dumps(notices[0])   # masked number
    entries = [e for e in signinlog.tail(server.storage, limit=300) if e["user_oid"] == user.oid]
    assert any(e["result"] == "method_added" and e["reason"] == "sms" for e in entries), entries


def test_A50_a_method_removed_by_the_admin_notifies_the_account_and_is_logged(server, outbox, make_user):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    phone = random_phone()
    email, user = make_user(methods=[sms_method(phone)])
    env = {**os.environ, "AUTH_ENVIRONMENT": "local", "AUTH_TABLE_PREFIX": server.settings.table_prefix,
           "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
           "AUTH_OUTBOX_PATH": server.settings.outbox_path}
    done = subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", "users", "remove-method", email, "m1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert methods_of(server, email) == []
    notices = [m for m in outbox.messages(email) if m.get("purpose") == "method_removed"]
    assert len(notices) == 1 and phone not in json.dumps(notices[0])
    entries = [e for e in signinlog.tail(server.storage, limit=300) if e["user_oid"] == user.oid]
    assert any(e["result"] == "method_removed" and e["reason"] == "sms" for e in entries), entries


def test_A56_step_up_inside_a_freshness_window_does_not_loop(server, api, outbox, make_user, policies):
    """A step-up policy with a freshness window: the first step-up works; a
    second sign-in with the same claims inside the window gets acrs again
    (a second factor is done or counted, never a token without acrs)."""
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, conditions={"auth_contexts": ["c1"]},
             grant={"require_second_factor": True, "methods": ["sms"]}, session={"second_factor_freshness_seconds": 3600})
    for _ in range(2):
        r = password_first_factor(api, email, claims=context_claims("c1"), scope=FULL_SCOPE)
        if r.status == 400:
            assert r["suberror"] == "mfa_required"
            r = prove_method(api, outbox, r["continuation_token"], phone, scope=FULL_SCOPE)
        assert r.status == 200, r.body
        assert claims_of(r["access_token"]).get("acrs") == ["c1"]
        assert sensitive(api, r["access_token"]).status == 200


def _register_sms(api, token: str, phone: str):
    """The attacker's move with a token read from a log: register their own phone."""
    return api.post("register/v1.0/challenge", continuation_token=token, challenge_type="oob", challenge_channel="sms",
                    challenge_target=phone)


def _registration_token(api, make_user, require_mfa) -> tuple[str, str]:
    """A user with a password and no method yet, and the token of their registration_required answer."""
    email, _ = make_user()
    require_mfa(email)
    first = password_first_factor(api, email)
    assert first["suberror"] == "registration_required", first.body
    return email, first["continuation_token"]


def test_A111_a_continuation_token_from_a_url_log_is_dead(server, api, outbox, make_user, require_mfa):
    """The register endpoints also read parameters from the query string (the docs show that form), and URLs
    end up in front-end, proxy and Application Insights logs. A token that arrived in a URL is burnt on
    arrival: its holder (someone reading the logs) cannot register their own phone, whatever the answer was
    (a read-only introspect, a wrong code, a refused challenge); the client continues with the successor the
    answer carries, errors included."""
    from urllib.parse import urlencode

    def url_post(path: str, **params):
        return api.request("POST", f"{path}?{urlencode({'client_id': api.client_id, **params})}", b"", FORM)

    def attacker_registers(token: str) -> bool:
        return _register_sms(api, token, random_phone()).status == 200

    email, logged = _registration_token(api, make_user, require_mfa)
    listed = url_post("register/v1.0/introspect", continuation_token=logged)          # a read-only step
    assert listed.status == 200 and listed["continuation_token"] != logged
    assert not attacker_registers(logged)
    bad = url_post("register/v1.0/challenge", continuation_token=listed["continuation_token"], challenge_type="oob",
                   challenge_channel="sms", challenge_target="not a number")          # a refused step
    assert bad.status == 400 and bad["continuation_token"] not in (listed["continuation_token"], logged)
    assert not attacker_registers(listed["continuation_token"])
    phone = random_phone()
    sent = url_post("register/v1.0/challenge", continuation_token=bad["continuation_token"], challenge_type="oob",
                    challenge_channel="sms", challenge_target=phone)
    assert sent.status == 200
    wrong = url_post("register/v1.0/continue", continuation_token=sent["continuation_token"], grant_type="oob",
                     oob="00000000")                                                 # a wrong code
    assert wrong.status == 400 and wrong["continuation_token"] != sent["continuation_token"]
    assert not attacker_registers(sent["continuation_token"])
    done = url_post("register/v1.0/continue", continuation_token=wrong["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(phone))                                     # the user carries on
    assert done.status == 200
    tokens = api.post("oauth2/v2.0/token", continuation_token=done["continuation_token"],
                      grant_type="continuation_token", scope=SCOPE)
    assert tokens.status == 200 and tokens["access_token"]
    user = directory.get_user(server.storage, email)
    assert [m["target"] for m in user.methods] == [phone]


@pytest.mark.parametrize("variant", ["a JSON body", "no client_id", "GET", "another token in the body",
                                     "a sign-in endpoint"])
def test_A111_a_url_token_is_dead_even_when_the_request_is_refused(server, api, outbox, make_user, require_mfa, variant):
    """The burn does not depend on the request being well formed: a token that was in any URL (refused for its
    content type, a missing client_id, a wrong method, a different token in the body, or sent to an endpoint
    that never reads the query string) cannot be used afterwards to register a method."""
    from urllib.parse import urlencode

    email, logged = _registration_token(api, make_user, require_mfa)
    query = {"client_id": api.client_id, "continuation_token": logged}
    if variant == "a JSON body":
        r = api.request("POST", f"register/v1.0/introspect?{urlencode(query)}", b"{}", {"Content-Type": "application/json"})
        assert r.status == 400
    elif variant == "no client_id":
        api.request("POST", f"register/v1.0/introspect?{urlencode({'continuation_token': logged})}", b"", FORM)
    elif variant == "GET":
        api.request("GET", f"register/v1.0/introspect?{urlencode(query)}", None, {})
    elif variant == "another token in the body":
        body = urlencode({"continuation_token": _registration_token(api, make_user, require_mfa)[1]}).encode()
        api.request("POST", f"register/v1.0/introspect?{urlencode(query)}", body, FORM)
    else:
        api.request("POST", f"oauth2/v2.0/challenge?{urlencode(query)}", b"", FORM)
    phone = random_phone()
    c = _register_sms(api, logged, phone)
    assert c.status == 400 and c["error"] == "invalid_grant", c.body
    assert outbox.count(phone) == 0
    assert directory.get_user(server.storage, email).methods == []
