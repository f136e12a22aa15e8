"""End to end: Microsoft's own MSAL JS custom-auth SDK (@azure/msal-browser 5.30.0,
``CustomAuthPublicClientApplication``) in headless Debian Chromium against this
app, through the SDK's public API only (native-auth-contract.md §7, Appendix A).

The page is on http://localhost:<port>, the API on http://127.0.0.1:<port>/api:
cross-origin, so every native-auth POST needs a CORS preflight (§7.3).
One-time codes are read from the local outbox and typed in through the SDK.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from conftest import unique_email, wait_until
from shared import settings as settings_mod
from .e2e_harness import CLIENT_ID, installed_version, missing_prerequisites, wrong_code

NATIVE_AUTH_PREFIX = "/api/oauth2/v2.0/"


def test_prerequisites_installed():
    """Debian chromium and the npm test dependencies are there (a clear failure, never a skip)."""
    problems = missing_prerequisites()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    assert installed_version("@azure/msal-browser") == "5.30.0"


# ------------------------------------------------------------------ helpers

def api_calls(page, server) -> list[dict]:
    """The page's requests to the API (everything else must be the page's own origin)."""
    api_host = urlsplit(server.host.base_url).netloc
    return [r for r in page.network() if urlsplit(r["url"]).netloc == api_host]


def assert_stayed_on_loopback(page, server, site) -> None:
    """Every request the page made went to the page's origin or to the API; none failed."""
    allowed = {urlsplit(site.origin).netloc, urlsplit(server.host.base_url).netloc}
    requests = page.network()
    assert requests, "the driver recorded no requests at all"
    strays = [r for r in requests if urlsplit(r["url"]).netloc not in allowed]
    assert not strays, f"requests left the two loopback origins: {strays}"
    failed = [r for r in requests if r["failure"]]
    assert not failed, f"requests failed in the browser (CORS?): {failed}"


def assert_preflighted(access_log, paths: set[str]) -> None:
    """Each native-auth path was preflighted (OPTIONS, 2xx) before its first POST reached the API.

    The host writes a request's access-log line after it sent the answer, so the
    browser may hold the last answer before its line is logged: wait for the lines."""
    def posted() -> bool:
        seen = {p for m, p, _ in access_log.snapshot() if m == "POST"}
        return paths <= seen

    wait_until(posted, timeout=10)
    entries = access_log.snapshot()
    for path in paths:
        first_post = next((i for i, (m, p, _) in enumerate(entries) if m == "POST" and p == path), None)
        assert first_post is not None, f"no POST {path} reached the API: {entries}"
        preflights = [(m, p, s) for m, p, s in entries[:first_post] if m == "OPTIONS" and p == path]
        assert preflights and all(200 <= s < 300 for _, _, s in preflights), \
            f"POST {path} was not preceded by a successful CORS preflight: {entries}"


def unknown_email() -> str:
    return unique_email("nobody")


def next_code(outbox, email: str, sent_before: int) -> str:
    assert wait_until(lambda: outbox.count(email) > sent_before, timeout=10), f"no new message to {email}"
    return outbox.last_code(email)


# ------------------------------------------------------------------ sign-in with a password

def test_password_sign_in_then_refresh_and_sign_out(page, server, e2e_site, access_log, make_user):
    email, _ = make_user(password="Correct-Horse-9-Battery")

    result = page.sign_in(email, password="Correct-Horse-9-Battery")
    assert result.is_("Completed"), result
    assert result.data["username"] == email
    claims = result.data["claims"]
    assert claims["preferred_username"] == email
    assert claims["aud"] == CLIENT_ID
    assert claims["iss"] == server.settings.issuer

    # initiate -> challenge -> token (contract §5.1), each preflighted, all cross-origin.
    posts = [urlsplit(r["url"]).path for r in api_calls(page, server) if r["method"] == "POST"]
    assert posts == [NATIVE_AUTH_PREFIX + "initiate", NATIVE_AUTH_PREFIX + "challenge", NATIVE_AUTH_PREFIX + "token"]
    assert_preflighted(access_log, {NATIVE_AUTH_PREFIX + p for p in ("initiate", "challenge", "token")})

    account = page.current_account()
    assert account.is_("Completed"), account
    assert account.data["username"] == email
    assert account.data["claims"]["preferred_username"] == email

    cached = page.get_access_token(force_refresh=False)
    assert cached.is_("Completed"), cached
    assert cached.data["fromCache"] is True

    page.network(clear=True)
    refreshed = page.get_access_token(force_refresh=True)
    assert refreshed.is_("Completed"), refreshed
    assert refreshed.data["fromCache"] is False
    assert refreshed.data["accessToken"] != cached.data["accessToken"]
    assert refreshed.data["username"] == email
    refreshes = [r for r in api_calls(page, server) if r["method"] == "POST"]
    assert [(urlsplit(r["url"]).path, r["grantType"], r["status"]) for r in refreshes] == \
        [(NATIVE_AUTH_PREFIX + "token", "refresh_token", 200)], refreshes
    # msal-common's refresh is a CORS "simple" request: no preflight (contract §3.16).
    assert "client-request-id=" in urlsplit(refreshes[0]["url"]).query
    assert not [r for r in api_calls(page, server) if r["method"] == "OPTIONS"]

    signed_out = page.sign_out()
    assert signed_out.is_("Completed"), signed_out
    gone = page.current_account()
    assert gone.is_("Failed") and gone.error_is("CurrentAccountNotFound"), gone

    assert_stayed_on_loopback(page, server, e2e_site)


def test_sign_in_prompts_for_password_and_retries_after_a_wrong_one(page, server, e2e_site, make_user):
    """signIn({username}) -> password required -> submitPassword(wrong) -> submitPassword(right)."""
    email, _ = make_user(password="Correct-Horse-9-Battery")

    result = page.sign_in(email)
    assert result.is_("PasswordRequired"), result

    wrong = page.submit_password("Not-The-Password-1")
    assert wrong.is_("Failed"), wrong
    assert wrong.error_is("InvalidPassword"), wrong
    assert wrong.error["error"] == "invalid_grant" and 50126 in wrong.error["errorCodes"], wrong

    done = page.submit_password("Correct-Horse-9-Battery")  # same state, as an app retries
    assert done.is_("Completed"), done
    assert done.data["username"] == email
    assert_stayed_on_loopback(page, server, e2e_site)


# ------------------------------------------------------------------ sign-in with an email code

def test_email_code_sign_in_with_resend_and_wrong_codes(page, server, e2e_site, access_log, outbox, make_user):
    email, _ = make_user(password=None)  # passwordless: the first factor is an email code (§5.5)

    sent = outbox.count(email)
    result = page.sign_in(email)
    assert result.is_("CodeRequired"), result
    assert result.info["codeLength"] == server.settings.email_code_length
    first_code = next_code(outbox, email, sent)
    assert len(first_code) == result.info["codeLength"]

    sent = outbox.count(email)
    resent = page.resend_code()
    assert resent.is_("CodeRequired"), resent
    new_code = next_code(outbox, email, sent)
    assert new_code != first_code

    wrong = page.submit_code(wrong_code(new_code))
    assert wrong.is_("Failed") and wrong.error_is("InvalidCode"), wrong
    assert wrong.error["subError"] == "invalid_oob_value", wrong

    stale = page.submit_code(first_code)  # a resend invalidates the previous code (§6)
    assert stale.is_("Failed") and stale.error_is("InvalidCode"), stale

    done = page.submit_code(new_code)
    assert done.is_("Completed"), done
    assert done.data["username"] == email
    assert done.data["claims"]["preferred_username"] == email

    posts = [(urlsplit(r["url"]).path, r["grantType"], r["status"])
             for r in api_calls(page, server) if r["method"] == "POST"]
    assert posts == [
        (NATIVE_AUTH_PREFIX + "initiate", None, 200),
        (NATIVE_AUTH_PREFIX + "challenge", None, 200),
        (NATIVE_AUTH_PREFIX + "challenge", None, 200),  # the resend
        (NATIVE_AUTH_PREFIX + "token", "oob", 400),
        (NATIVE_AUTH_PREFIX + "token", "oob", 400),
        (NATIVE_AUTH_PREFIX + "token", "oob", 200),
    ], posts
    assert_preflighted(access_log, {NATIVE_AUTH_PREFIX + p for p in ("initiate", "challenge", "token")})

    account = page.current_account()
    assert account.is_("Completed") and account.data["username"] == email, account
    assert_stayed_on_loopback(page, server, e2e_site)


# ------------------------------------------------------------------ typed errors

def test_wrong_password_is_a_typed_error(page, server, e2e_site, make_user):
    email, _ = make_user(password="Correct-Horse-9-Battery")
    result = page.sign_in(email, password="Not-The-Password-1")
    assert result.is_("Failed"), result
    assert result.error_is("PasswordIncorrect"), result
    assert not result.error_is("UserNotFound"), result
    assert result.error["error"] == "invalid_grant" and 50126 in result.error["errorCodes"], result
    assert page.current_account().error_is("CurrentAccountNotFound")
    assert_stayed_on_loopback(page, server, e2e_site)


def test_unknown_user_is_reported_when_enumeration_protection_is_off(page, server, e2e_site):
    with server.override(enumeration_protection=False):
        result = page.sign_in(unknown_email(), password="Whatever-Password-1")
    assert result.is_("Failed"), result
    assert result.error_is("UserNotFound"), result
    assert not result.error_is("PasswordIncorrect"), result
    assert result.error["error"] == "user_not_found", result
    assert_stayed_on_loopback(page, server, e2e_site)


def test_unknown_user_looks_like_a_wrong_password_when_protection_is_on(page, server, e2e_site, make_user):
    assert settings_mod.get_settings().enumeration_protection is True
    email, _ = make_user(password="Correct-Horse-9-Battery")
    known = page.sign_in(email, password="Not-The-Password-1")
    unknown = page.sign_in(unknown_email(), password="Not-The-Password-1")

    for result in (known, unknown):
        assert result.is_("Failed") and result.error_is("PasswordIncorrect"), result
        assert not result.error_is("UserNotFound"), result

    def shape(r):
        e = r.error
        return e["type"], e["dataType"], e["error"], sorted(e["errorCodes"]), e["subError"], e["is"]

    assert shape(unknown) == shape(known)
    # The same calls, with the same outcomes, for both (preflights are cached, so POSTs only).
    calls = [(urlsplit(r["url"]).path, r["grantType"], r["status"])
             for r in api_calls(page, server) if r["method"] == "POST"]
    half = len(calls) // 2
    assert calls[:half] == calls[half:], calls
    assert calls[half - 1] == (NATIVE_AUTH_PREFIX + "token", "password", 400), calls
    assert_stayed_on_loopback(page, server, e2e_site)
