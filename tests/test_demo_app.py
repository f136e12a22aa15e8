"""The demo web app (demo/): built with esbuild, served on http://localhost:<port>/
against the test server, and used in headless Debian Chromium like a person
would (tests/browser_driver.mjs types and clicks; one-time codes come from the
outbox): a password sign-in with an SMS second factor (a wrong code, a resend),
the signed-in view with the ID token's claims, a token refresh and sign-out;
a sign-up with a required attribute and just-in-time phone registration; a
password reset with automatic sign-in; the account view (/api/me with the
SDK's access token): profile, password change, an email method confirmed by a
code to the account's address, sign out everywhere; a phone added through the
step-up round trip (claims challenge, silent attempt refused, sign-in again
with the claims and the SMS second factor) and removed; the account deleted
after a silent step-up.

A screenshot of the signed-in view goes to the test's tmp path (and to
$DEMO_SCREENSHOT when that is set). Missing Chromium, Node or node_modules
make the test fail with the command that fixes it; it is never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import ROOT, remember_secret, unique_email, wait_until
from demo.serve import DemoError, build, serve
from e2e.e2e_harness import Driver, HarnessError
from shared.security import policy
from shared.storage import directory
from shared.protocol.identifiers import mask_phone
from shared.settings import _attribute_schema

NODE_MODULES = ROOT / "node_modules"
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "Lantern-Orchard-Velvet-5821"
NEW_PASSWORD = "Harbor-Copper-Finch-4417"
for _secret in (PASSWORD, "Not-" + PASSWORD, NEW_PASSWORD):
    remember_secret(_secret)  # typed in the browser: tests/test_zz_no_secrets_in_logs.py checks no log has them


# ------------------------------------------------------------------ prerequisites

def missing_prerequisites() -> list[str]:
    problems = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"Chromium was not found at {CHROMIUM}: the demo app test drives it headless. Install Debian's "
                        "package with `sh scripts/install_chromium.sh` (as root; `make test` does this), or set "
                        "E2E_CHROMIUM to a Chromium binary.")
    if shutil.which("node") is None:
        problems.append("Node.js (`node`) is required for the demo app test and is not on PATH.")
    for what in (NODE_MODULES / ".bin" / "esbuild", NODE_MODULES / "puppeteer-core" / "package.json",
                 NODE_MODULES / "@azure" / "msal-browser" / "package.json"):
        if not what.exists():
            problems.append(f"{what.relative_to(ROOT)} is missing: run `npm ci` in the repository root "
                            "(`make bootstrap` and `make test` do this).")
    return problems


# ------------------------------------------------------------------ the driver process

DriverError = HarnessError


class Browser(Driver):
    """tests/browser_driver.mjs (the driver the e2e suite uses too), with what a person
    does on the demo: ``browser(op, **params)`` sends one op and returns its result."""

    def __init__(self, user_data_dir: Path, log_path: Path):
        super().__init__(user_data_dir=user_data_dir, log_path=log_path, chromium=CHROMIUM)
        self.version = self.browser_version

    def __call__(self, op: str, timeout: float = 30, **params: Any) -> Any:
        return self.request(op, timeout=timeout, **params)

    # what a person does
    def type(self, selector: str, text: str) -> None:
        assert self("type", selector=selector, text=text) == text

    def click(self, selector: str) -> None:
        self("click", selector=selector)

    def wait_view(self, view: str) -> dict[str, Any]:
        return self("waitView", view=view)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def demo_site(server, tmp_path_factory):
    problems = missing_prerequisites()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    out = tmp_path_factory.mktemp("demo-site")
    try:
        build(out)  # esbuild, into pytest's tmp directory (never the work tree)
    except DemoError as exc:
        pytest.fail(str(exc), pytrace=False)
    site = serve(0, server.host.base_url, out)
    yield site
    site.stop()


@pytest.fixture(scope="module")
def browser(demo_site, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-chromium")
    (tmp / "profile").mkdir()
    try:
        b = Browser(tmp / "profile", tmp / "driver.log")
    except DriverError as exc:
        pytest.fail(f"could not start headless Chromium ({CHROMIUM}) through puppeteer-core: {exc}", pytrace=False)
    yield b
    b.close()


@pytest.fixture
def second_factor_for(server):
    """second_factor_for(email): a policy requiring a second factor for that user only, deleted afterwards."""
    names: list[str] = []

    def enable(email: str) -> None:
        names.append(f"demo mfa {uuid.uuid4().hex[:12]}")
        policy.save(server.storage, {"name": names[-1], "assignments": {"users": {"include": [email]}},
                                     "grant": {"require_second_factor": True}})

    try:
        yield enable
    finally:
        for name in names:
            policy.delete(server.storage, name)


def unique_mobile() -> str:
    return "+49151" + "".join(random.choice("0123456789") for _ in range(8))


def code_sent(outbox, to: str, sent_before: int) -> str:
    assert wait_until(lambda: outbox.count(to) > sent_before, timeout=10), f"no new code sent to {to}"
    return outbox.last_code(to)


def keep_screenshot(path: Path) -> None:
    target = os.environ.get("DEMO_SCREENSHOT")
    if target:
        dest = Path(target)
        if dest.is_dir():
            dest = dest / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


def dump(browser: Browser, tmp_path: Path) -> None:
    """What the page saw, printed when a test fails (pytest shows it with the failure)."""
    try:
        print("--- browser console ---\n" + "\n".join(browser("console")))
        print("--- page network ---\n" + "\n".join(
            f"{r['method']} {r['url']} -> {r['status']} {r['failure'] or ''}" for r in browser("network")))
        browser("screenshot", path=str(tmp_path / "demo-failure.png"))
        print(f"failure screenshot: {tmp_path / 'demo-failure.png'}")
    except (DriverError, OSError):
        print("--- driver stderr ---\n" + browser.stderr_tail())


def close(browser: Browser) -> None:
    try:
        browser("close")
    except (DriverError, OSError):
        pass


@contextlib.contextmanager
def watching(browser: Browser, tmp_path: Path):
    """A test's page: what it saw is printed if the test fails, and it is closed either way."""
    try:
        yield
    except BaseException:
        dump(browser, tmp_path)
        raise
    finally:
        close(browser)


# ------------------------------------------------------------------ the tests

def test_password_sign_in_with_sms_mfa_in_the_demo_app(demo_site, browser, make_user, second_factor_for, outbox,
                                                       tmp_path):
    """The email, then the password the server asks for, then the SMS second factor
    (a wrong code, a resend, the new code); the claims; a refresh; sign-out."""
    number = unique_mobile()
    email, _ = make_user(password=PASSWORD, email=unique_email("demo"),
                         methods=[{"id": "m1", "channel": "sms", "target": number, "default": True, "created": 1}])
    second_factor_for(email)
    masked = mask_phone(number)
    with watching(browser, tmp_path):
        screen = browser("open", url=demo_site.url)
        assert screen["view"] == "signin" and screen["heading"] == "Sign in", screen
        browser("screenshot", path=str(tmp_path / "demo-sign-in.png"))

        # 1. the email; the server asks for the password
        browser.type("#signin-email", email)
        browser.click("#signin-submit")
        screen = browser.wait_view("password")
        assert screen["heading"] == "Enter your password" and not screen["alert"], screen
        assert browser("texts", selector="#password-form .who-name") == [email]

        # 2. a wrong password: a clear error, same screen; then the password. The policy
        #    asks for a second factor, and the SMS method is offered (masked)
        browser.type("#password-input", "Not-" + PASSWORD)
        browser.click("#password-submit")
        screen = browser("waitText", selector="#alert", text="email and password don't match")
        assert screen["view"] == "password" and not screen["busy"], screen
        browser.type("#password-input", PASSWORD)
        browser.click("#password-submit")
        screen = browser.wait_view("mfa")
        assert screen["heading"] == "Verify it's you" and not screen["alert"], screen
        assert browser("texts", selector="#mfa-methods .choice") == [f"Text message\n{masked}"]
        browser("screenshot", path=str(tmp_path / "demo-mfa-choose.png"))

        # 3. send a code by SMS
        browser.click("#mfa-submit")
        screen = browser.wait_view("code")
        assert screen["heading"] == "Check your phone", screen
        lead = browser("texts", selector="#code-lead")[0]
        assert "6-digit" in lead and masked in lead, lead
        first = code_sent(outbox, number, 0)

        # 4. a wrong code: a clear error, same screen
        wrong = "".join(str((int(d) + 1) % 10) for d in first)
        browser.type("#code-input", wrong)
        browser.click("#code-submit")
        screen = browser("waitText", selector="#alert", text="code isn't right")
        assert screen["view"] == "code" and not screen["busy"], screen
        browser("screenshot", path=str(tmp_path / "demo-wrong-code.png"))

        # 5. resend: a new code, the old one is dead
        browser.click("#code-resend")
        screen = browser("waitText", selector="#notice", text="new code")
        assert screen["view"] == "code" and not screen["alert"], screen
        second = code_sent(outbox, number, 1)

        # 6. the right code: signed in
        browser.type("#code-input", second)
        browser.click("#code-submit")
        screen = browser.wait_view("account")
        assert not screen["alert"], screen
        assert email in browser("texts", selector=".profile-text")[0]

        claims = browser("claims")
        assert claims["preferred_username"] == email, claims
        amr = claims["amr"].split()
        assert {"pwd", "sms", "mfa"} <= set(amr), claims
        assert claims["aud"] == "00000000-0000-0000-0000-000000000001", claims
        assert "Multi-factor" in browser("texts", selector="#account-facts")[0]
        token = browser("texts", selector="#token-info")[0]
        assert "openid" in token and "From the cache" in token, token

        shot = tmp_path / "demo-signed-in.png"
        browser("screenshot", path=str(shot))
        assert shot.stat().st_size > 10_000
        keep_screenshot(shot)
        print(f"\nscreenshot: {shot}")

        # 7. refresh (a refresh_token grant) and sign out
        browser("network", clear=True)
        browser.click("#refresh")
        screen = browser("waitText", selector="#notice", text="Tokens refreshed")
        assert screen["view"] == "account" and not screen["alert"], screen
        assert "Refreshed" in browser("texts", selector="#token-info")[0]
        posts = [r for r in browser("network") if r["method"] == "POST"]
        assert [(urlsplit(r["url"]).path, r["status"]) for r in posts] == [("/api/oauth2/v2.0/token", 200)], posts

        browser.click("#signout")
        screen = browser.wait_view("signin")
        assert screen["notice"] == "You're signed out." and not screen["alert"], screen
        assert outbox.count(number) == 2  # the refresh asked for no new code
        # no script error and no Content-Security-Policy violation (the API's 400s are expected)
        problems = [line for line in browser("console") if line.startswith(("error:", "pageerror:"))
                    and "the server responded with a status of 400" not in line]
        assert not problems, problems


def test_sign_up_with_attributes_then_phone_registration_in_the_demo_app(demo_site, browser, server, outbox, tmp_path,
                                                                         second_factor_for):
    """Sign-up (name at start, a required attribute asked for after the code), automatic
    sign-in, then just-in-time registration of a phone as the second factor."""
    email, number = unique_email("demo-signup"), unique_mobile()
    second_factor_for(email)
    schema = _attribute_schema(json.dumps([{"name": "displayName", "type": "string", "required": False},
                                           {"name": "city", "type": "string", "required": True}]))
    with watching(browser, tmp_path):
        with server.override(signup_attributes=schema):
            browser("open", url=demo_site.url)
            browser.click("#signin-form [data-go=signup]")
            screen = browser.wait_view("signup")
            assert screen["heading"] == "Create your account", screen

            browser.click("#signup-submit")  # empty form: the fields say what is missing
            screen = browser("screen")
            assert screen["view"] == "signup" and screen["fieldErrors"] == [
                "Enter your email address.", "Enter a password."], screen

            browser.type("#signup-email", email)
            browser.type("#signup-name", "Ada Lovelace")
            browser.type("#signup-password", PASSWORD)
            browser.click("#signup-submit")
            screen = browser.wait_view("code")
            assert screen["heading"] == "Confirm your email", screen
            browser.type("#code-input", code_sent(outbox, email, 0))
            browser.click("#code-submit")

            screen = browser.wait_view("attributes")
            assert screen["heading"] == "A few more details", screen
            assert browser("texts", selector="#attributes-fields label") == ["City"]
            browser("screenshot", path=str(tmp_path / "demo-attributes.png"))
            browser.type("#attr-city", "London")
            browser.click("#attributes-submit")

        # the account exists; the automatic sign-in meets the policy: register a method
        screen = browser.wait_view("register")
        assert screen["heading"] == "Add a second step", screen
        assert screen["notice"] == "Your account is ready.", screen
        assert browser("texts", selector="#register-methods .choice") == [
            "Text message\nGet codes on your mobile phone", "Email\nGet codes by email"]
        browser("screenshot", path=str(tmp_path / "demo-register.png"))
        browser.type("#register-contact", number)
        browser.click("#register-submit")

        screen = browser.wait_view("code")
        assert screen["heading"] == "Confirm your phone", screen
        assert number in browser("texts", selector="#code-lead")[0]
        browser.type("#code-input", code_sent(outbox, number, 0))
        browser.click("#code-submit")

        screen = browser.wait_view("account")
        assert screen["notice"] == "Your second factor is set up, and you're signed in.", screen
        claims = browser("claims")
        assert claims["name"] == "Ada Lovelace" and claims["preferred_username"] == email, claims
        assert {"sms", "mfa"} <= set(claims["amr"].split()), claims
        assert browser("texts", selector="#account-name") == ["Ada Lovelace"]
        browser("screenshot", path=str(tmp_path / "demo-registered.png"))
        assert [(m["channel"], m["target"]) for m in directory.get_user(server.storage, email).methods] == \
            [("sms", number)]


def test_password_reset_then_automatic_sign_in_in_the_demo_app(demo_site, browser, make_user, outbox, tmp_path):
    """Forgot password: email, code, a new password (a reused one is refused), signed in."""
    email, _ = make_user(password=PASSWORD, email=unique_email("demo-reset"))
    with watching(browser, tmp_path):
        browser("open", url=demo_site.url)
        browser.type("#signin-email", email)
        browser.click("#signin-submit")
        browser.wait_view("password")
        browser.click("#password-forgot")
        screen = browser.wait_view("reset")
        assert screen["heading"] == "Reset your password", screen
        browser.click("#reset-submit")  # the address is carried over
        screen = browser.wait_view("code")
        assert screen["heading"] == "Check your email", screen
        browser.type("#code-input", code_sent(outbox, email, 0))
        browser.click("#code-submit")

        screen = browser.wait_view("password")
        assert screen["heading"] == "Choose a new password", screen
        browser.type("#password-input", PASSWORD)
        browser.click("#password-submit")
        screen = browser("waitText", selector="#alert", text="used that password recently")
        assert screen["view"] == "password", screen
        browser("screenshot", path=str(tmp_path / "demo-reset-reused.png"))
        browser.type("#password-input", NEW_PASSWORD)
        browser.click("#password-submit")

        screen = browser.wait_view("account")
        assert browser("claims")["preferred_username"] == email
        assert "pwd" not in browser("claims")["amr"].split()  # the reset's email code was the factor


# ------------------------------------------------------------------ the account view (/api/me)

def api_calls(browser: Browser, demo_site) -> list[tuple[str, str, int | None]]:
    """The page's requests to the API (method, path under /api/, status), preflights left out."""
    api_host = urlsplit(demo_site.api_base).netloc
    return [(r["method"], urlsplit(r["url"]).path.removeprefix("/api/"), r["status"]) for r in browser("network")
            if urlsplit(r["url"]).netloc == api_host and r["method"] != "OPTIONS"]


def sign_in_on_page(browser: Browser, demo_site, email: str, password: str = PASSWORD, *,
                    then: str = "account") -> None:
    """Email, then the password, up to the view ``then`` (the account view when
    no second factor is asked: no policy for this user)."""
    browser("open", url=demo_site.url)
    browser.type("#signin-email", email)
    browser.click("#signin-submit")
    browser.wait_view("password")
    browser.type("#password-input", password)
    browser.click("#password-submit")
    browser.wait_view(then)


def open_account_view(browser: Browser) -> dict[str, Any]:
    browser.click("#open-manage")
    screen = browser.wait_view("manage")
    assert screen["heading"] == "Your account" and not screen["alert"], screen
    return screen


def no_page_errors(browser: Browser) -> None:
    """No script error and no CSP violation; the API's 4xx answers (expected here) aside."""
    problems = [line for line in browser("console") if line.startswith(("error:", "pageerror:"))
                and "the server responded with a status of 4" not in line]
    assert not problems, problems


def test_account_view_profile_password_email_method_and_sign_out_everywhere(demo_site, browser, server, api, outbox,
                                                                            make_user, tmp_path):
    """The account view of a user without a second factor: the profile (a new name), a
    password change (a wrong current password, then one that signs out the other
    session), an email address added as a second factor (the account has no method,
    so the change is confirmed by a code to its own address, then the new address's
    code), and "sign out everywhere"."""
    email, other_mailbox = unique_email("demo-acct"), unique_email("demo-acct-second")
    make_user(password=PASSWORD, email=email, display_name="Ada")
    other = api.signin_password(email, PASSWORD)                 # another session, elsewhere
    assert other.status == 200, other.body
    with watching(browser, tmp_path):
        sign_in_on_page(browser, demo_site, email)
        open_account_view(browser)
        info = browser("texts", selector="#profile-info")[0]
        assert email in info and "Ada" in info, info
        assert browser("texts", selector="#methods-list li") == ["None yet. Add a phone or another email address."]

        # the profile
        browser.type("#profile-name", "Ada Lovelace")
        browser.click("#profile-save")
        screen = browser("waitText", selector="#notice", text="Your profile is saved.")
        assert not screen["alert"], screen
        assert "Ada Lovelace" in browser("texts", selector="#profile-info")[0]
        assert directory.get_user(server.storage, email).display_name == "Ada Lovelace"

        # the password: a wrong current one is a clear error; then the change
        browser.type("#current-password", "Not-" + PASSWORD)
        browser.type("#new-password", NEW_PASSWORD)
        browser.click("#change-password-submit")
        screen = browser("waitText", selector="#alert", text="Your current password isn't right.")
        assert screen["view"] == "manage" and "50126" in screen["alert"], screen
        browser.type("#current-password", PASSWORD)
        browser.type("#new-password", NEW_PASSWORD)
        browser.click("#change-password-submit")
        screen = browser("waitText", selector="#notice", text="Your password has been changed")
        assert not screen["alert"] and "other sessions are signed out" in screen["notice"], screen
        assert api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=other["refresh_token"]).status == 400
        assert [m["purpose"] for m in outbox.messages(email)][-1] == "password_changed"

        # an email address as second factor: first a code to the account's own address
        before = outbox.count(email)
        browser("select", selector="#method-channel", value="email")
        browser.type("#method-target", other_mailbox)
        browser.click("#method-add")
        screen = browser("waitText", selector="#confirm-lead", text="code we emailed to")
        assert "no second step yet" in screen["notice"] and not screen["alert"], screen
        browser.type("#confirm-code", code_sent(outbox, email, before))
        browser.click("#confirm-submit")
        screen = browser("waitText", selector="#method-verify-lead", text="code we emailed to")
        assert not screen["alert"], screen
        browser.type("#method-code", code_sent(outbox, other_mailbox, 0))
        browser.click("#method-verify")
        screen = browser("waitText", selector="#notice", text="is added")
        assert not screen["alert"], screen
        [row] = browser("texts", selector="#methods-list li")
        assert row.startswith("Email") and other_mailbox not in row and "Remove" in row, row  # masked
        assert [(m["channel"], m["target"]) for m in directory.get_user(server.storage, email).methods] == \
            [("email", other_mailbox)]
        browser("screenshot", path=str(tmp_path / "demo-account.png"))

        # sign out everywhere: this page too
        browser.click("#revoke-sessions")
        screen = browser.wait_view("signin")
        assert screen["notice"] == "You're signed out everywhere, on this device too.", screen
        calls = api_calls(browser, demo_site)
        assert ("POST", "me/revoke-sessions", 204) in calls, calls
        # the page's session is over at the server: the API refuses its token family
        assert float(directory.get_user(server.storage, email).entity.get("rt_not_before") or 0) > 0
        no_page_errors(browser)


def test_account_view_adds_a_phone_through_the_step_up_then_removes_it(demo_site, browser, server, outbox, make_user,
                                                                       tmp_path):
    """Adding a phone needs a fresh second factor: the API's claims challenge, a silent
    token request with the claims (refused: this session had none), the step-up screen
    (a wrong password, then the right one), the SDK's second factor, then the phone's
    own code. Removing it right after needs nothing more (the step-up is fresh)."""
    number, new = unique_mobile(), unique_mobile()
    email, _ = make_user(password=PASSWORD, email=unique_email("demo-stepup"),
                         methods=[{"id": "m1", "channel": "sms", "target": number, "default": True, "created": 1}])
    with watching(browser, tmp_path):
        sign_in_on_page(browser, demo_site, email)
        open_account_view(browser)
        [row] = browser("texts", selector="#methods-list li")
        assert mask_phone(number) in row and "Default" in row, row

        browser("network", clear=True)
        browser.type("#method-target", new)
        browser.click("#method-add")
        screen = browser.wait_view("stepup")
        assert screen["heading"] == "Confirm it's you" and not screen["alert"], screen
        assert "To add a phone number, sign in again" in browser("texts", selector="#stepup-lead")[0]
        calls = api_calls(browser, demo_site)
        assert calls[-2:] == [("POST", "me/methods", 401), ("POST", "oauth2/v2.0/token", 400)], calls  # silent: refused
        assert [r["grantType"] for r in browser("network")
                if urlsplit(r["url"]).path.endswith("/token")] == ["refresh_token"]
        browser("screenshot", path=str(tmp_path / "demo-step-up.png"))

        # a wrong password: a clear error, the same screen
        browser.type("#stepup-password", "Not-" + PASSWORD)
        browser.click("#stepup-submit")
        screen = browser("waitText", selector="#alert", text="email and password don't match")
        assert screen["view"] == "stepup", screen
        browser.type("#stepup-password", PASSWORD)
        browser.click("#stepup-submit")
        screen = browser.wait_view("mfa")
        assert browser("texts", selector="#mfa-methods .choice") == [f"Text message\n{mask_phone(number)}"]
        browser.click("#mfa-submit")
        browser.wait_view("code")
        browser.type("#code-input", code_sent(outbox, number, 0))
        browser.click("#code-submit")

        # back in the account view, the change resumed: the new phone's code
        screen = browser.wait_view("manage")
        assert not screen["alert"] and screen["notice"] == f"We sent a code to {mask_phone(new)}.", screen
        code = code_sent(outbox, new, 0)
        browser.type("#method-code", "".join(str((int(d) + 1) % 10) for d in code))
        browser.click("#method-verify")
        screen = browser("waitText", selector="#alert", text="That code isn't right")
        assert "invalid_oob_value" in screen["alert"], screen
        browser.type("#method-code", code)
        browser.click("#method-verify")
        screen = browser("waitText", selector="#notice", text=f"Phone {mask_phone(new)} is added")
        rows = browser("texts", selector="#methods-list li")
        assert len(rows) == 2 and mask_phone(new) in rows[1], rows
        user = directory.get_user(server.storage, email)
        assert [m["target"] for m in user.methods] == [number, new]
        new_id = user.methods[1]["id"]

        # removing it: the step-up is still fresh, no new sign-in
        browser.click(f'#methods-list button[data-id="{new_id}"]')
        screen = browser("waitText", selector="#notice", text=f"Phone {mask_phone(new)} is removed")
        assert screen["view"] == "manage" and not screen["alert"], screen
        assert [m["target"] for m in directory.get_user(server.storage, email).methods] == [number]
        assert len(browser("texts", selector="#methods-list li")) == 1
        assert outbox.count(number) == 1  # one second factor for both changes
        no_page_errors(browser)


def test_account_view_deletes_the_account_with_a_silent_step_up(demo_site, browser, server, outbox, make_user,
                                                                second_factor_for, tmp_path):
    """Signed in with an SMS second factor a moment ago, the claims challenge of the
    deletion is met by the SDK's refresh with the claims: no new sign-in, no new code."""
    number = unique_mobile()
    email, _ = make_user(password=PASSWORD, email=unique_email("demo-delete"),
                         methods=[{"id": "m1", "channel": "sms", "target": number, "default": True, "created": 1}])
    second_factor_for(email)
    with watching(browser, tmp_path):
        sign_in_on_page(browser, demo_site, email, then="mfa")
        browser.click("#mfa-submit")
        browser.wait_view("code")
        browser.type("#code-input", code_sent(outbox, number, 0))
        browser.click("#code-submit")
        browser.wait_view("account")
        open_account_view(browser)

        browser.type("#delete-confirm", "someone-else@example.com")
        browser.click("#delete-account")
        screen = browser("screen")
        assert screen["fieldErrors"] == ["That isn't your account's email address."], screen
        assert directory.get_user(server.storage, email) is not None

        browser("network", clear=True)
        browser.type("#delete-confirm", email)
        browser.click("#delete-account")
        screen = browser.wait_view("signin")
        assert screen["notice"] == "Your account is deleted. We've emailed you a confirmation.", screen
        assert not screen["alert"], screen
        assert directory.get_user(server.storage, email) is None
        assert [m["purpose"] for m in outbox.messages(email)][-1] == "account_deleted"
        assert outbox.count(number) == 1
        calls = api_calls(browser, demo_site)
        assert calls == [("DELETE", "me", 401), ("POST", "oauth2/v2.0/token", 200), ("DELETE", "me", 204)], calls
        no_page_errors(browser)


def test_the_demo_shows_claims_added_by_an_extension(demo_site, browser, server, make_user, tmp_path):
    """A token-issuance extension (the sample app, samples/extensions, as a real HTTP server) adds
    `roles` to the ID token: the signed-in view's claims table shows it."""
    from extension_server import AUDIENCE, sample_serve_module, sample_settings
    from shared.extensions import caller, config

    email, _ = make_user(password=PASSWORD, email=unique_email("demo-claims"))
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({email: {"roles": ["editor", "billing"]}}))
    caller.reset_breakers()
    with sample_serve_module().running(sample_settings(server, ROLES_FILE=str(roles))) as base:
        config.save(server.storage, server.settings, {
            "name": "demo-claims", "event": "tokenIssuanceStart", "url": f"{base}/token-issuance-start",
            "resource": AUDIENCE, "claims": {"id_token": ["roles"], "access_token": ["roles"]}})
        try:
            sign_in_on_page(browser, demo_site, email)
            claims = browser("claims")
            assert claims["roles"].split() == ["editor", "billing"], claims
            browser("screenshot", path=str(tmp_path / "demo-extension-claims.png"))
        except BaseException:
            dump(browser, tmp_path)
            raise
        finally:
            config.delete(server.storage, "demo-claims")
