"""End to end through Microsoft's MSAL JS custom-auth SDK (5.30.0) in headless
Chromium: sign-up (attributes, password later, automatic sign-in), password
reset with automatic sign-in, the second factor (MFA by email and by SMS,
just-in-time registration by email and by SMS, the sign-up address refused as
its own second factor),
the web fallback for an app without capabilities, and a forced refresh after
MFA (native-auth-contract.md §5.2-§5.8, §7.1, §7.5).

Only the SDK's public API is used: ``page.start`` calls an application method
(signUp, signIn, resetPassword), ``page.act`` a method of the current state
(submitCode, submitAttributes, requestChallenge, challengeAuthMethod, ...).
Each result says which state the SDK is in (``state``: its stateType), which
``isXxx()`` predicates hold, and what the state exposes (``info``: codeLength,
channel, sentTo, authMethods, requiredAttributes, ...). Codes come from the
local outbox, keyed by email address or E.164 number.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from conftest import unique_email, wait_until
from shared.security import policy
from shared.storage import directory
from shared.protocol.identifiers import mask_email, mask_phone
from shared.settings import _attribute_schema
from .e2e_harness import CLIENT_ID, unique_mobile, unverified_claims, wrong_code

PASSWORD = "Velvet-Harbor-Lantern-2718"
NEW_PASSWORD = "Copper-Finch-Orchard-9031"
EMAIL_CODE_LENGTH = 8
SMS_CODE_LENGTH = 6

DISPLAY_NAME = {"name": "displayName", "type": "string", "required": False}
CITY = {"name": "city", "type": "string", "required": True}


# ------------------------------------------------------------------ helpers

def attribute_schema(*specs: dict) -> tuple[dict, ...]:
    """A sign-up attribute schema, parsed the way AUTH_SIGNUP_ATTRIBUTES is."""
    return _attribute_schema(json.dumps(list(specs)))


def posts(page, server) -> list[tuple[str, str | None, int]]:
    """The page's POSTs to the API: (path under /api/, grant_type, status)."""
    api_host = urlsplit(server.host.base_url).netloc
    return [(urlsplit(r["url"]).path.removeprefix("/api/"), r["grantType"], r["status"])
            for r in page.network() if r["method"] == "POST" and urlsplit(r["url"]).netloc == api_host]


def code_sent(outbox, to: str, sent_before: int = 0) -> str:
    """The newest code sent to an address or number, once more than sent_before messages went there."""
    assert wait_until(lambda: outbox.count(to) > sent_before, timeout=10), f"no new message to {to}"
    return outbox.last_code(to)


def sms_method(number: str, method_id: str = "m-sms") -> dict:
    return {"id": method_id, "channel": "sms", "target": number, "default": True, "created": 1}


def email_method(address: str, method_id: str = "m-email") -> dict:
    return {"id": method_id, "channel": "email", "target": address, "default": True, "created": 1}


def stored_methods(server, email: str) -> list[tuple[str, str]]:
    return [(m["channel"], m["target"]) for m in directory.get_user(server.storage, email).methods]


def sign_up_with_password(page, outbox, email: str) -> None:
    """signUp({username, password}) -> submitCode -> SignUpCompletedState (the account exists)."""
    started = page.start("signUp", username=email, password=PASSWORD)
    assert started.is_("CodeRequired"), started
    done = page.act("submitCode", code_sent(outbox, email))
    assert done.is_("Completed") and done.state == "SignUpCompletedState", done


def registration_methods(result) -> dict[str, dict]:
    """The methods an AuthMethodRegistrationRequiredState offers, by id."""
    assert result.is_("AuthMethodRegistrationRequired"), result
    assert result.state == "AuthMethodRegistrationRequiredState", result
    assert not result.is_("Completed") and not result.is_("MfaRequired"), result
    return {m["id"]: m for m in result.info["authMethods"]}


# ------------------------------------------------------------------ sign-up

def test_sign_up_with_attributes_at_start_then_automatic_sign_in(page, server, outbox):
    """signUp({username, password, attributes}) -> submitCode -> SignUpCompletedState.signIn() (§5.6)."""
    email = unique_email("signup")
    with server.override(signup_attributes=attribute_schema(DISPLAY_NAME, CITY)):
        started = page.start("signUp", username=email, password=PASSWORD,
                             attributes={"displayName": "Ada Lovelace", "city": "London"})
        assert started.is_("CodeRequired") and started.state == "SignUpCodeRequiredState", started
        assert started.info["codeLength"] == EMAIL_CODE_LENGTH
        assert started.info["codeResendInterval"] == server.settings.resend_interval_seconds
        code = code_sent(outbox, email)
        assert len(code) == EMAIL_CODE_LENGTH

        done = page.act("submitCode", code)  # every required attribute was given at start
        assert done.is_("Completed") and done.state == "SignUpCompletedState", done
        assert not done.is_("AttributesRequired") and not done.is_("PasswordRequired"), done

    signed_in = page.act("signIn")  # automatic sign-in with the sign-up's continuation token
    assert signed_in.is_("Completed") and signed_in.state == "SignInCompletedState", signed_in
    assert signed_in.data["username"] == email
    claims = signed_in.data["claims"]
    assert claims["preferred_username"] == email and claims["name"] == "Ada Lovelace"
    assert claims["aud"] == CLIENT_ID
    assert page.current_account().data["username"] == email

    user = directory.get_user(server.storage, email)
    assert json.loads(user.entity["attributes"]) == {"displayName": "Ada Lovelace", "city": "London"}
    assert user.has_password and claims["oid"] == user.oid
    assert posts(page, server) == [
        ("signup/v1.0/start", None, 200),
        ("signup/v1.0/challenge", None, 200),
        ("signup/v1.0/continue", "oob", 200),
        ("oauth2/v2.0/token", "continuation_token", 200),
    ]


def test_sign_up_asks_for_a_missing_required_attribute(page, server, outbox):
    """A required attribute missing at start -> SignUpAttributesRequiredState -> submitAttributes (§3.3)."""
    email = unique_email("signup-attrs")
    city = {**CITY, "regex": "[A-Za-z .-]{2,40}"}
    with server.override(signup_attributes=attribute_schema(DISPLAY_NAME, city)):
        started = page.start("signUp", username=email, password=PASSWORD, attributes={"displayName": "Grace Hopper"})
        assert started.is_("CodeRequired"), started

        needed = page.act("submitCode", code_sent(outbox, email))
        assert needed.is_("AttributesRequired") and needed.state == "SignUpAttributesRequiredState", needed
        assert needed.info["requiredAttributes"] == [
            {"name": "city", "type": "string", "required": True, "options": {"regex": "[A-Za-z .-]{2,40}"}}]

        invalid = page.act("submitAttributes", {"city": "1234"})
        assert invalid.is_("Failed") and invalid.error_is("AttributesValidationFailed"), invalid
        assert invalid.error["subError"] == "attribute_validation_failed", invalid

        done = page.act("submitAttributes", {"city": "Oslo"})  # same state, as an app retries
        assert done.is_("Completed") and done.state == "SignUpCompletedState", done

    signed_in = page.act("signIn")
    assert signed_in.is_("Completed"), signed_in
    assert signed_in.data["username"] == email and signed_in.data["claims"]["name"] == "Grace Hopper"
    user = directory.get_user(server.storage, email)
    assert json.loads(user.entity["attributes"]) == {"displayName": "Grace Hopper", "city": "Oslo"}
    assert posts(page, server)[2:] == [
        ("signup/v1.0/continue", "oob", 400),  # attributes_required (55106)
        ("signup/v1.0/continue", "attributes", 400),  # attribute_validation_failed
        ("signup/v1.0/continue", "attributes", 200),
        ("oauth2/v2.0/token", "continuation_token", 200),
    ]


def test_sign_up_without_password_asks_for_it_after_the_code(page, server, outbox):
    """signUp({username}) -> submitCode -> SignUpPasswordRequiredState -> submitPassword (credential_required 55103)."""
    email = unique_email("signup-nopw")
    started = page.start("signUp", username=email)
    assert started.is_("CodeRequired"), started

    needs_password = page.act("submitCode", code_sent(outbox, email))
    assert needs_password.is_("PasswordRequired"), needs_password
    assert needs_password.state == "SignUpPasswordRequiredState", needs_password

    too_short = page.act("submitPassword", "short-one-1")
    assert too_short.is_("Failed") and too_short.error_is("InvalidPassword"), too_short
    assert too_short.error["subError"] == "password_too_short", too_short

    done = page.act("submitPassword", PASSWORD)
    assert done.is_("Completed") and done.state == "SignUpCompletedState", done
    signed_in = page.act("signIn")
    assert signed_in.is_("Completed") and signed_in.data["username"] == email, signed_in

    assert posts(page, server) == [
        ("signup/v1.0/start", None, 200),
        ("signup/v1.0/challenge", None, 200),
        ("signup/v1.0/continue", "oob", 400),  # credential_required (55103)
        ("signup/v1.0/challenge", None, 200),  # challenge_type password
        ("signup/v1.0/continue", "password", 400),
        ("signup/v1.0/continue", "password", 200),
        ("oauth2/v2.0/token", "continuation_token", 200),
    ]
    # The password chosen in the browser is the account's password.
    later = server.api.signin_password(email, PASSWORD)
    assert later.status == 200 and later.get("access_token"), later.body


# ------------------------------------------------------------------ sign-up, then just-in-time registration

def test_sign_up_then_registering_another_email_as_second_factor(page, server, outbox, second_factor_policy):
    """Policy on, no method yet: signIn() after sign-up -> registration required -> another email (§5.4)."""
    email, inbox = unique_email("jit-email"), unique_email("jit-inbox")
    second_factor_policy(email)
    sign_up_with_password(page, outbox, email)

    required = page.act("signIn")
    methods = registration_methods(required)
    assert methods["email"] == {"id": "email", "challenge_type": "oob", "challenge_channel": "email",
                                "login_hint": ""}  # no suggestion: the sign-in address cannot be a second factor
    assert methods["sms"]["challenge_channel"] == "sms" and methods["sms"]["challenge_type"] == "oob"

    verify = page.act("challengeAuthMethod", {"authMethodType": methods["email"], "verificationContact": inbox})
    assert verify.is_("VerificationRequired") and verify.state == "AuthMethodVerificationRequiredState", verify
    assert verify.info["channel"] == "email"
    assert verify.info["sentTo"] == inbox
    assert verify.info["codeLength"] == EMAIL_CODE_LENGTH
    code = code_sent(outbox, inbox)
    assert outbox.count(email) == 1  # only the sign-up code went to the account's own address (so far)

    wrong = page.act("submitChallenge", wrong_code(code))
    assert wrong.is_("Failed") and wrong.error_is("IncorrectChallenge"), wrong
    done = page.act("submitChallenge", code)
    assert done.is_("Completed") and done.state == "AuthMethodRegistrationCompletedState", done
    assert done.data["username"] == email
    assert "mfa" in done.data["claims"]["amr"] and done.data["claims"]["acr"] == "2", done.data["claims"]
    assert page.current_account().data["username"] == email

    assert stored_methods(server, email) == [("email", inbox)]
    assert [m["purpose"] for m in outbox.messages(email)] == ["signup_code", "method_added"]
    assert posts(page, server)[3:] == [
        ("oauth2/v2.0/token", "continuation_token", 400),  # registration_required
        ("register/v1.0/introspect", None, 200),
        ("register/v1.0/challenge", None, 200),
        ("register/v1.0/continue", "oob", 400),
        ("register/v1.0/continue", "oob", 200),
        ("oauth2/v2.0/token", "continuation_token", 200),
    ]


def test_sign_up_then_registering_a_phone_as_second_factor(page, server, outbox, second_factor_policy):
    """The same, registering an SMS method: a 6-digit code goes to the number."""
    email, number = unique_email("jit-sms"), unique_mobile()
    second_factor_policy(email)
    sign_up_with_password(page, outbox, email)

    methods = registration_methods(page.act("signIn"))
    verify = page.act("challengeAuthMethod", {"authMethodType": methods["sms"], "verificationContact": number})
    assert verify.is_("VerificationRequired") and verify.state == "AuthMethodVerificationRequiredState", verify
    assert verify.info["channel"] == "sms"
    assert verify.info["sentTo"] == number
    assert verify.info["codeLength"] == SMS_CODE_LENGTH
    code = code_sent(outbox, number)
    assert len(code) == SMS_CODE_LENGTH

    done = page.act("submitChallenge", code)
    assert done.is_("Completed") and done.state == "AuthMethodRegistrationCompletedState", done
    assert done.data["username"] == email
    assert {"sms", "mfa"} <= set(done.data["claims"]["amr"]), done.data["claims"]
    assert stored_methods(server, email) == [("sms", number)]


def test_sign_up_address_is_refused_as_its_own_second_factor(page, server, outbox, second_factor_policy):
    """Registering the address just verified at sign-up (Entra's `preverified` fast pass, §3.9 b) is
    refused: that mailbox can reset the password, so it is no second factor (SECURITY.md §3.3).
    The SDK reports a typed invalid-input error and the app asks for another address."""
    email, inbox = unique_email("jit-self"), unique_email("jit-other")
    second_factor_policy(email)
    sign_up_with_password(page, outbox, email)

    methods = registration_methods(page.act("signIn"))
    refused = page.act("challengeAuthMethod", {"authMethodType": methods["email"], "verificationContact": email})
    assert refused.is_("Failed") and refused.error_is("InvalidInput"), refused
    assert 901001 in refused.error["errorCodes"], refused.error
    assert outbox.count(email) == 1 and stored_methods(server, email) == []   # only the sign-up code was sent
    verify = page.act("challengeAuthMethod", {"authMethodType": methods["email"], "verificationContact": inbox})
    assert verify.is_("VerificationRequired"), verify
    done = page.act("submitChallenge", code_sent(outbox, inbox))
    assert done.is_("Completed") and done.state == "AuthMethodRegistrationCompletedState", done
    assert stored_methods(server, email) == [("email", inbox)]


# ------------------------------------------------------------------ MFA with a registered method

@pytest.mark.parametrize("channel", ["email", "sms"])
def test_password_sign_in_with_mfa_retries_a_wrong_code(page, server, outbox, make_user, second_factor_policy, channel):
    """signIn({username, password}) -> MfaAwaitingState -> requestChallenge(id) -> wrong code -> right code (§5.2, §5.3)."""
    if channel == "email":  # a second mailbox, so the code's destination is unambiguous
        target = unique_email("mfa-inbox")
        method, masked, length = email_method(target), mask_email(target), EMAIL_CODE_LENGTH
    else:
        target = unique_mobile()
        method, masked, length = sms_method(target), mask_phone(target), SMS_CODE_LENGTH
    email, _ = make_user(password=PASSWORD, methods=[method])
    second_factor_policy(email)

    awaiting = page.sign_in(email, password=PASSWORD)
    assert awaiting.is_("MfaRequired") and awaiting.state == "MfaAwaitingState", awaiting
    assert not awaiting.is_("Completed") and not awaiting.is_("AuthMethodRegistrationRequired"), awaiting
    assert awaiting.info["authMethods"] == [
        {"id": method["id"], "challenge_type": "oob", "challenge_channel": channel, "login_hint": masked}]

    verify = page.act("requestChallenge", method["id"])
    assert verify.is_("VerificationRequired") and verify.state == "MfaVerificationRequiredState", verify
    assert verify.info["channel"] == channel
    assert verify.info["sentTo"] == masked
    assert verify.info["codeLength"] == length
    code = code_sent(outbox, target)
    assert len(code) == length

    wrong = page.act("submitChallenge", wrong_code(code))
    assert wrong.is_("Failed") and wrong.error_is("IncorrectChallenge"), wrong
    assert wrong.error["subError"] == "invalid_oob_value", wrong

    done = page.act("submitChallenge", code)  # same state, same continuation token (§5.2 step 6)
    assert done.is_("Completed") and done.state == "MfaCompletedState", done
    assert done.data["username"] == email
    amr = done.data["claims"]["amr"]
    assert {"pwd", "otp" if channel == "email" else "sms", "mfa"} <= set(amr), amr
    assert page.current_account().data["username"] == email

    assert posts(page, server) == [
        ("oauth2/v2.0/initiate", None, 200),
        ("oauth2/v2.0/challenge", None, 200),
        ("oauth2/v2.0/token", "password", 400),  # mfa_required
        ("oauth2/v2.0/introspect", None, 200),
        ("oauth2/v2.0/challenge", None, 200),  # with the method id: the code is sent
        ("oauth2/v2.0/token", "mfa_oob", 400),
        ("oauth2/v2.0/token", "mfa_oob", 200),
    ]


def test_email_code_first_factor_then_sms_mfa(page, server, outbox, make_user, second_factor_policy):
    """Passwordless sign-in: submitCode -> MFA required -> SMS. The account's own address,
    whose code was the first factor, is not offered as the second (README "Second factor")."""
    email, number = unique_email("otp-sms"), unique_mobile()
    make_user(password=None, email=email,
              methods=[email_method(email, "m-same-address"), {**sms_method(number), "default": False, "created": 2}])
    second_factor_policy(email)

    started = page.sign_in(email)
    assert started.is_("CodeRequired"), started
    awaiting = page.submit_code(code_sent(outbox, email))
    assert awaiting.is_("MfaRequired") and awaiting.state == "MfaAwaitingState", awaiting
    assert awaiting.info["authMethods"] == [
        {"id": "m-sms", "challenge_type": "oob", "challenge_channel": "sms", "login_hint": mask_phone(number)}]

    verify = page.act("requestChallenge", "m-sms")
    assert verify.is_("VerificationRequired"), verify
    assert (verify.info["channel"], verify.info["sentTo"], verify.info["codeLength"]) == \
        ("sms", mask_phone(number), SMS_CODE_LENGTH)

    done = page.act("submitChallenge", code_sent(outbox, number))
    assert done.is_("Completed") and done.data["username"] == email, done
    assert {"otp", "sms", "mfa"} <= set(done.data["claims"]["amr"]), done.data["claims"]
    assert "pwd" not in done.data["claims"]["amr"]
    assert [p for p in posts(page, server) if p[1]] == [
        ("oauth2/v2.0/token", "oob", 400),  # mfa_required after the email code
        ("oauth2/v2.0/token", "mfa_oob", 200),
    ]


def test_step_up_that_needs_sms_for_an_account_with_only_an_email_method(page, server, outbox, make_user,
                                                                          second_factor_policy):
    """The method-registration rule through MSAL JS (README "Second factor").
    A step-up context needs SMS; the account only has an email method, so the
    only way forward is to verify the email method and then register a phone
    in the same sign-in (registration_required answered to the mfa_oob call).
    MSAL JS 5.30.0 cannot follow that: MfaVerificationRequiredState.submitChallenge
    expects tokens (src/custom_auth/core/interaction_client/mfa/MfaClient.ts,
    handleTokenResponse only) and turns any error into an MfaSubmitChallengeError;
    MSAL iOS and Android end in a generic error there. So a client that does not
    announce our `registration_after_mfa` capability gets the protocol's typed
    web-fallback answer right after the password, with the reason, before any
    code is sent: a RedirectError in the app, never tokens, nothing registered."""
    mailbox = unique_email("stepup-mailbox")
    email, _ = make_user(password=PASSWORD, methods=[email_method(mailbox)])
    second_factor_policy(email)                              # every sign-in: email or SMS
    context = server.settings.sample_auth_context
    name = f"e2e sms-only context {context}"
    policy.save(server.storage, {"name": name, "assignments": {"users": {"include": [email]}},
                                 "conditions": {"auth_contexts": [context]},
                                 "grant": {"require_second_factor": True, "methods": ["sms"]}})
    try:
        claims = json.dumps({"access_token": {"acrs": {"essential": True, "value": context}}})
        sent_before = outbox.count(mailbox)
        ended = page.start("signIn", username=email, password=PASSWORD, claims=claims)
        assert ended.is_("Failed") and ended.error_is("RedirectRequired"), ended
        assert ended.error["error"] == "redirect" and "(sms)" in ended.error["redirectReason"], ended.error
        assert page.current_account().error_is("CurrentAccountNotFound")       # no tokens reached the app
        assert outbox.count(mailbox) == sent_before and stored_methods(server, email) == [("email", mailbox)]
        assert [p for p in posts(page, server) if p[1]] == [("oauth2/v2.0/token", "password", 200)]
    finally:
        policy.delete(server.storage, name)


def test_forced_refresh_after_an_mfa_sign_in(page, server, outbox, make_user, second_factor_policy):
    """getAccessToken({forceRefresh: true}) after MFA: a refresh_token grant, new tokens, same sign-in facts."""
    number = unique_mobile()
    email, _ = make_user(password=PASSWORD, methods=[sms_method(number)])
    second_factor_policy(email)
    assert page.sign_in(email, password=PASSWORD).is_("MfaRequired")
    assert page.act("requestChallenge", "m-sms").is_("VerificationRequired")
    signed_in = page.act("submitChallenge", code_sent(outbox, number))
    assert signed_in.is_("Completed"), signed_in

    cached = page.get_access_token(force_refresh=False)
    assert cached.is_("Completed") and cached.data["fromCache"] is True, cached

    page.network(clear=True)
    refreshed = page.get_access_token(force_refresh=True)
    assert refreshed.is_("Completed"), refreshed
    assert refreshed.data["fromCache"] is False
    assert refreshed.data["accessToken"] != cached.data["accessToken"]
    assert refreshed.data["username"] == email
    assert posts(page, server) == [("oauth2/v2.0/token", "refresh_token", 200)]
    assert outbox.count(number) == 1  # the refresh asked for no new second factor

    before, after = unverified_claims(cached.data["accessToken"]), unverified_claims(refreshed.data["accessToken"])
    assert {"pwd", "sms", "mfa"} <= set(after["amr"]), after
    assert (after["amr"], after["acr"], after["auth_time"]) == (before["amr"], before["acr"], before["auth_time"])
    assert after["acr"] == "2" and after["oid"] == before["oid"]


# ------------------------------------------------------------------ password reset

def test_password_reset_then_automatic_sign_in(page, server, outbox, make_user):
    """resetPassword -> submitCode -> submitNewPassword -> signIn(); then only the new password works (§5.7)."""
    email, _ = make_user(password=PASSWORD)

    started = page.start("resetPassword", username=email)
    assert started.is_("CodeRequired") and started.state == "ResetPasswordCodeRequiredState", started
    assert started.info["codeLength"] == EMAIL_CODE_LENGTH
    needs_password = page.act("submitCode", code_sent(outbox, email))
    assert needs_password.is_("PasswordRequired"), needs_password
    assert needs_password.state == "ResetPasswordPasswordRequiredState", needs_password

    reused = page.act("submitNewPassword", PASSWORD)
    assert reused.is_("Failed") and reused.error_is("InvalidPassword"), reused
    assert reused.error["subError"] == "password_recently_used", reused

    done = page.act("submitNewPassword", NEW_PASSWORD)
    assert done.is_("Completed") and done.state == "ResetPasswordCompletedState", done
    signed_in = page.act("signIn")
    assert signed_in.is_("Completed") and signed_in.data["username"] == email, signed_in
    assert ("resetpassword/v1.0/poll_completion", None, 200) in posts(page, server)

    assert page.sign_out().is_("Completed")
    old = page.sign_in(email, password=PASSWORD)
    assert old.is_("Failed") and old.error_is("PasswordIncorrect"), old
    new = page.sign_in(email, password=NEW_PASSWORD)
    assert new.is_("Completed") and new.data["username"] == email, new


def test_password_reset_does_not_bypass_the_second_factor(page, server, outbox, make_user, second_factor_policy):
    """Policy on, user with a phone: signIn() after a reset still asks for MFA (the reset's
    email code is one factor); a resend (requestChallenge again) kills the previous code."""
    number = unique_mobile()
    email, _ = make_user(password=PASSWORD, methods=[sms_method(number)])
    second_factor_policy(email)
    assert page.start("resetPassword", username=email).is_("CodeRequired")
    assert page.act("submitCode", code_sent(outbox, email)).is_("PasswordRequired")
    assert page.act("submitNewPassword", NEW_PASSWORD).is_("Completed")

    awaiting = page.act("signIn")
    assert awaiting.is_("MfaRequired") and awaiting.state == "MfaAwaitingState", awaiting
    assert page.act("requestChallenge", "m-sms").is_("VerificationRequired")
    first = code_sent(outbox, number)
    resent = page.act("requestChallenge", "m-sms")  # MfaVerificationRequiredState can ask again
    assert resent.is_("VerificationRequired") and resent.info["sentTo"] == mask_phone(number), resent
    second = code_sent(outbox, number, 1)

    stale = page.act("submitChallenge", first)
    assert stale.is_("Failed") and stale.error_is("IncorrectChallenge"), stale
    done = page.act("submitChallenge", second)
    assert done.is_("Completed") and done.data["username"] == email, done
    assert {"otp", "sms", "mfa"} <= set(done.data["claims"]["amr"]), done.data["claims"]


# ------------------------------------------------------------------ web fallback

def test_app_without_capabilities_gets_the_redirect_error(make_page, server, outbox, make_user, second_factor_policy):
    """Policy on and an app that declares no capabilities: /token answers 200 `redirect`,
    the SDK raises RedirectError (isRedirectRequired) and issues no tokens (§1.1, §5.4, §5.8)."""
    number = unique_mobile()
    with_method, _ = make_user(password=PASSWORD, methods=[sms_method(number)])
    without_method, _ = make_user(password=PASSWORD)
    second_factor_policy(with_method, without_method)
    page = make_page(capabilities=[])

    for email, missing in ((with_method, "mfa_required"), (without_method, "registration_required")):
        result = page.sign_in(email, password=PASSWORD)
        assert result.is_("Failed") and result.state == "SignInFailedState", result
        assert not result.is_("MfaRequired") and not result.is_("AuthMethodRegistrationRequired"), result
        assert result.error_is("RedirectRequired"), result
        assert not result.error_is("PasswordIncorrect"), result
        assert result.error["error"] == "redirect", result  # RedirectError (class names are minified by the bundle)
        assert result.error["redirectReason"] == f"Client is missing {missing} capability", result

    assert page.current_account().error_is("CurrentAccountNotFound")
    assert outbox.count(number) == 0
    assert [p for p in posts(page, server) if p[0] == "oauth2/v2.0/token"] == \
        [("oauth2/v2.0/token", "password", 200)] * 2  # the redirect is a 200 body (§1)
