"""The account API (/api/me, shared/flows/account.py) from a browser app on MSAL JS
custom-auth 5.30.0: the SDK's access token for ``api://native-auth/account``
with ``fetch``, and the step-up round trip a change that needs a fresh second
factor asks for (deleting the account, adding a phone):

1. the call answers 401 ``insufficient_claims`` with a claims challenge;
2. a silent refresh asking for those claims (``getAccessToken({forceRefresh,
   scopes, claims})``) is refused while the session has no fresh second factor
   (``invalid_grant``: interaction required);
3. the app signs in again through the SDK with the claims
   (``signOut()`` first: the SDK refuses ``signIn`` while an account is cached,
   then ``signIn({username, password, scopes, claims})``); the server demands
   the second factor (MfaAwaitingState: ``requestChallenge``, ``submitChallenge``);
4. the call is repeated with the new access token (``acrs: ["acct"]``) and succeeds.

When the session's own second factor is fresh, step 2 already succeeds
(no new sign-in), which the last test shows.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from conftest import remember_secret, wait_until
from shared.storage import directory
from shared.tokens import stepup
from shared.protocol.identifiers import mask_phone
from .e2e_harness import ACCOUNT_SCOPE, unique_mobile, unverified_claims, wrong_code

PASSWORD = "Orchard-Lantern-Copper-6142"
remember_secret(PASSWORD)  # typed in the browser: tests/test_zz_no_secrets_in_logs.py checks no log has it
SCOPES = [ACCOUNT_SCOPE]


def sms_method(number: str, method_id: str = "m-sms") -> dict:
    return {"id": method_id, "channel": "sms", "target": number, "default": True, "created": 1}


def code_sent(outbox, to: str, sent_before: int = 0) -> str:
    assert wait_until(lambda: outbox.count(to) > sent_before, timeout=10), f"no new message to {to}"
    return outbox.last_code(to)


def expected_claims(server) -> dict:
    return {"access_token": {"acrs": {"essential": True, "value": server.settings.account_auth_context}}}


def header_claims(answer: dict) -> str | None:
    """The claims challenge of a 401 as the page read it (base64 JSON in
    WWW-Authenticate), decoded to the JSON string signIn({claims}) takes."""
    match = re.search(r'claims="([^"]+)"', answer.get("wwwAuthenticate") or "")
    return base64.b64decode(match.group(1)).decode() if match else None


def challenge_claims(answer: dict, server) -> str:
    """What the app passes as ``claims``: the header's challenge when the page can read
    it. The API does not expose WWW-Authenticate to cross-origin pages today (see
    test_the_claims_challenge_is_readable_by_a_cross_origin_page), so the page cannot;
    then the documented challenge for the account context, which is what the header says."""
    assert answer["status"] == 401 and answer["body"]["error"] == "insufficient_claims", answer
    claims = header_claims(answer)
    if claims is not None:
        assert json.loads(claims) == expected_claims(server)
        return claims
    return base64.b64decode(stepup.claims_challenge(server.settings.account_auth_context)).decode()


def step_up(page, outbox, email: str, number: str, claims: str, *, password_first: bool) -> dict:
    """Sign in again with the claims and answer the second factor; the new access token's claims."""
    out = page.sign_out()
    assert out.is_("Completed"), out
    if password_first:
        awaiting = page.sign_in(email, password=PASSWORD, scopes=SCOPES, claims=claims)
    else:  # the email first, then the password the server asks for
        asked = page.sign_in(email, scopes=SCOPES, claims=claims)
        assert asked.is_("PasswordRequired"), asked
        awaiting = page.submit_password(PASSWORD)
    assert awaiting.is_("MfaRequired") and awaiting.state == "MfaAwaitingState", awaiting
    assert [m["login_hint"] for m in awaiting.info["authMethods"]] == [mask_phone(number)]
    sent = outbox.count(number)
    verify = page.act("requestChallenge", awaiting.info["authMethods"][0]["id"])
    assert verify.is_("VerificationRequired"), verify
    done = page.act("submitChallenge", code_sent(outbox, number, sent))
    assert done.is_("Completed") and done.state == "MfaCompletedState", done
    assert done.data["username"] == email
    token = page.get_access_token(scopes=SCOPES)
    assert token.is_("Completed") and token.data["fromCache"] is True, token   # the step-up's own token
    return unverified_claims(token.data["accessToken"])


def test_delete_account_with_step_up(page, server, outbox, make_user):
    number = unique_mobile()
    email, _ = make_user(password=PASSWORD, methods=[sms_method(number)])
    signed_in = page.sign_in(email, password=PASSWORD, scopes=SCOPES)          # no policy: no second factor
    assert signed_in.is_("Completed"), signed_in
    profile = page.api("GET", "me")
    assert profile["status"] == 200 and profile["body"]["email"] == email, profile

    denied = page.api("DELETE", "me")
    claims = challenge_claims(denied, server)
    assert directory.get_user(server.storage, email) is not None

    fresh = step_up(page, outbox, email, number, claims, password_first=True)
    assert fresh["acrs"] == [server.settings.account_auth_context] and "mfa" in fresh["amr"], fresh

    deleted = page.api("DELETE", "me")
    assert deleted["status"] == 204, deleted
    assert unverified_claims(deleted["accessToken"])["acrs"] == fresh["acrs"]
    assert directory.get_user(server.storage, email) is None
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "account_deleted"
    # The session is gone with the account: the API and the SDK's refresh refuse it.
    assert page.api("GET", "me")["status"] == 401
    assert page.get_access_token(force_refresh=True, scopes=SCOPES).is_("Failed")


def test_add_phone_with_step_up(page, server, outbox, make_user):
    number, new = unique_mobile(), unique_mobile()
    email, _ = make_user(password=PASSWORD, methods=[sms_method(number)])
    assert page.sign_in(email, password=PASSWORD).is_("Completed")              # default scopes
    listed = page.api("GET", "me/methods")                                     # a refresh for the account scope
    assert listed["status"] == 200, listed
    assert [(m["id"], m["target"]) for m in listed["body"]["methods"]] == [("m-sms", mask_phone(number))]

    denied = page.api("POST", "me/methods", {"channel": "sms", "target": new})
    claims = challenge_claims(denied, server)
    assert outbox.count(new) == 0
    # The session has no second factor: a silent refresh asking for the claims is refused.
    silent = page.get_access_token(force_refresh=True, scopes=SCOPES, claims=claims)
    assert silent.is_("Failed") and silent.error["error"] == "invalid_grant", silent

    fresh = step_up(page, outbox, email, number, claims, password_first=False)
    assert fresh["acrs"] == [server.settings.account_auth_context], fresh

    sent = page.api("POST", "me/methods", {"channel": "sms", "target": new})
    assert sent["status"] == 202 and sent["body"]["codeLength"] == 6, sent
    assert sent["body"]["target"] == mask_phone(new)
    code = code_sent(outbox, new)
    wrong = page.api("POST", "me/methods/verify", {"verification": sent["body"]["verification"], "code": wrong_code(code)})
    assert wrong["status"] == 400 and wrong["body"]["suberror"] == "invalid_oob_value", wrong
    added = page.api("POST", "me/methods/verify", {"verification": sent["body"]["verification"], "code": code})
    assert added["status"] == 201 and added["body"]["channel"] == "sms", added
    assert [m["target"] for m in directory.get_user(server.storage, email).methods] == [number, new]
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "method_added"
    after = page.api("GET", "me/methods")
    assert [m["target"] for m in after["body"]["methods"]] == [mask_phone(number), mask_phone(new)], after


def test_a_fresh_second_factor_steps_up_silently(page, server, outbox, make_user, second_factor_policy):
    """Signed in with MFA a moment ago: the refresh with the claims gets acrs, no new sign-in."""
    number = unique_mobile()
    email, _ = make_user(password=PASSWORD, methods=[sms_method(number)])
    second_factor_policy(email)
    assert page.sign_in(email, password=PASSWORD, scopes=SCOPES).is_("MfaRequired")
    assert page.act("requestChallenge", "m-sms").is_("VerificationRequired")
    assert page.act("submitChallenge", code_sent(outbox, number)).is_("Completed")

    denied = page.api("DELETE", "me")
    claims = challenge_claims(denied, server)
    silent = page.get_access_token(force_refresh=True, scopes=SCOPES, claims=claims)
    assert silent.is_("Completed") and silent.data["fromCache"] is False, silent
    assert unverified_claims(silent.data["accessToken"])["acrs"] == [server.settings.account_auth_context]
    assert page.api("DELETE", "me")["status"] == 204
    assert directory.get_user(server.storage, email) is None
    assert outbox.count(number) == 1                                           # no second code


def test_the_claims_challenge_is_readable_by_a_cross_origin_page(page, server, make_user):
    email, _ = make_user(password=PASSWORD, methods=[sms_method(unique_mobile())])
    assert page.sign_in(email, password=PASSWORD, scopes=SCOPES).is_("Completed")
    denied = page.api("DELETE", "me")
    assert denied["status"] == 401 and denied["body"]["error"] == "insufficient_claims", denied
    assert header_claims(denied) is not None, denied["wwwAuthenticate"]
    assert json.loads(header_claims(denied)) == expected_claims(server)
