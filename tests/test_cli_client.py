"""``python -m client`` (the CLI client) as a subprocess against the real app.

Each test starts the CLI with ``sys.executable -m client`` from the repository
root and talks to it like a person: it waits for a prompt on the CLI's output
(read incrementally, with a timeout), then writes the answer to its stdin.
One-time codes are read from the local outbox only after the CLI has said a
code was sent, exactly as a person would read them from their phone or inbox.

The http app (``server`` fixture) exercises the built-in token store; a second
host serving the same app over TLS (throwaway CA, ``REQUESTS_CA_BUNDLE`` in the
subprocess) exercises the MSAL Python path (contract §7.9).
"""

from __future__ import annotations

import base64
import codecs
import http.server
import json
import os
import queue
import random
import re
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, send_json, unique_email
from shared.security import policy
from shared.storage import directory
from shared import settings as settings_mod

PW = "correct horse battery staple"
NEW_PW = "an entirely new passphrase 42"
RESOURCE = "api://native-auth"
RESOURCE_SCOPE = f"{RESOURCE}/access_as_user"
TIMEOUT = 60


def claims(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def header(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def wrong(code: str) -> str:
    return str((int(code) + 1) % 10 ** len(code)).zfill(len(code))


def random_phone() -> str:
    return "+49151" + "".join(random.choice("0123456789") for _ in range(8))


def sms_method(phone: str, mid: str = "m1", default: bool = True) -> dict:
    return {"id": mid, "channel": "sms", "target": phone, "default": default, "created": 1}


# ---------------------------------------------------------------------- driving the subprocess

class Cli:
    """An interactive CLI process: ``expect`` a prompt, then ``send`` a line."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.argv = argv
        self.proc = subprocess.Popen([sys.executable, "-m", "client", *argv], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = ""
        self.pos = 0
        self.eof = False
        self._chunks: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                self._chunks.put(decoder.decode(b"", final=True))
                self._chunks.put(None)
                return
            self._chunks.put(decoder.decode(chunk))

    def _take(self, timeout: float) -> None:
        try:
            item = self._chunks.get(timeout=max(0.01, timeout))
        except queue.Empty:
            return
        if item is None:
            self.eof = True
        else:
            self.output += item

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.output, self.pos)
            if m:
                self.pos = m.end()
                return m
            if self.eof:
                pytest.fail(f"CLI ended (rc={self.proc.poll()}) before {pattern!r}. Output:\n{self.output}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"Timed out waiting for {pattern!r}. Output:\n{self.output}")
            self._take(left)

    def send(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def finish(self, timeout: float = TIMEOUT) -> int:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"CLI did not exit. Output:\n{self.output}")
        deadline = time.monotonic() + 10
        while not self.eof and time.monotonic() < deadline:
            self._take(deadline - time.monotonic())
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATIVE_AUTH_")}
    env.update(PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               HOME=str(tmp_path / "home"))
    return env


@pytest.fixture
def cli(server, tmp_path, cli_env):
    """Start the CLI against a base URL (the http app by default)."""
    started: list[Cli] = []
    cache = tmp_path / "cache" / "cache.json"

    def start(*argv: str, base_url: str | None = None, env: dict[str, str] | None = None) -> Cli:
        proc = Cli(["--base-url", base_url or server.host.base_url, "--cache", str(cache), *argv],
                   {**cli_env, **(env or {})})
        started.append(proc)
        return proc

    def run(*argv: str, base_url: str | None = None, env: dict[str, str] | None = None,
            stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "client", "--base-url", base_url or server.host.base_url,
                               "--cache", str(cache), *argv], cwd=ROOT, env={**cli_env, **(env or {})},
                              input=stdin, capture_output=True, text=True, timeout=TIMEOUT)

    start.run = run
    start.cache = cache
    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def require_mfa(server):
    policy.save(server.storage, {"name": "cli: second factor for all",
                                 "grant": {"require_second_factor": True, "methods": ["email", "sms"]}})
    yield
    policy.delete(server.storage, "cli: second factor for all")
    policy.clear_cache()


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret was printed: {secret!r}"


# ---------------------------------------------------------------------- http: built-in token store

def test_signin_password_then_sms_mfa_then_token(server, outbox, make_user, require_mfa, cli):
    phone = random_phone()
    email, user = make_user(password=PW, methods=[
        sms_method(phone),
        {"id": "m2", "channel": "email", "target": unique_email("second"), "default": False, "created": 2}])

    p = cli("signin", email)
    p.expect(r"Password: ")
    p.send(PW)
    # The methods from /oauth2/v2.0/introspect: channel and masked login_hint.
    menu = p.expect(r"Where should the verification code go\?\n(.*\n)+?Choose 1-2 \[1\]: ").group(0)
    assert re.search(r"1\) SMS to \+49\*+\d{4}", menu) and phone not in menu, menu
    assert re.search(r"2\) email to \S+\*+\S+", menu), menu
    p.send("1")
    p.expect(r"A 6-digit code was sent by SMS to \+49\*+" + phone[-4:] + r"\.")
    p.expect(r"Enter the code \(or press Enter to get a new one\): ")
    first = outbox.last_code(phone)
    sends = outbox.count(phone)
    p.send("")  # resend: a new code, the old one is dead
    p.expect(r"A 6-digit code was sent by SMS")
    p.expect(r"Enter the code")
    assert outbox.count(phone) == sends + 1
    code = outbox.last_code(phone)
    p.send(first if first != code else wrong(code))
    p.expect(r"! That code is not correct\.")
    p.expect(r"Enter the code")
    p.send(code)
    p.expect(r"Signed in as " + re.escape(email) + r"\.")
    p.expect(r"Tokens are kept by built-in refresh \(MSAL Python needs https, this base URL is http\)")
    assert p.finish() == 0, p.output
    assert_no_secrets(p.output, PW, code)

    token_file = cli.cache.with_name("cache.builtin.json")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not cli.cache.exists(), "the http path must not write an MSAL cache"

    r = cli.run("token")
    assert r.returncode == 0, r.stderr
    at = r.stdout.strip()
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", at), r.stdout
    assert header(at)["alg"] == "RS256" and header(at)["typ"] == "at+jwt"
    c = claims(at)
    assert c["oid"] == user.oid and c["iss"] == server.host.base_url
    assert "mfa" in c["amr"] and "sms" in c["amr"]
    assert "from the cache" in r.stderr and "built-in refresh" in r.stderr

    forced = cli.run("token", "--force-refresh")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() != at and "refreshed from the server" in forced.stderr
    assert claims(forced.stdout.strip())["oid"] == user.oid

    who = cli.run("whoami")
    assert who.returncode == 0 and f"User:          {email}" in who.stdout, who.stdout

    out = cli.run("signout")
    assert out.returncode == 0 and not token_file.exists(), out.stdout
    gone = cli.run("token")
    assert gone.returncode == 1 and "Not signed in" in gone.stderr


def test_wrong_password_is_a_clear_error(make_user, cli):
    email, _ = make_user(password=PW)
    r = cli.run("signin", email, stdin="not the password at all\n")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Error: Wrong email or password." in r.stderr
    assert_no_secrets(r.stdout + r.stderr, "not the password at all")
    assert not cli.cache.with_name("cache.builtin.json").exists()


def test_unknown_user_is_named_when_enumeration_protection_is_off(server, cli):
    with server.override(enumeration_protection=False):
        r = cli.run("signin", unique_email("nobody"))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Error: No account exists for that email address." in r.stderr


def test_signup_with_attributes_then_sign_in_and_registration(server, outbox, require_mfa, cli):
    email, inbox = unique_email("cli-signup"), unique_email("cli-inbox")
    schema = settings_mod._attribute_schema(json.dumps([
        {"name": "displayName", "type": "string", "required": False},
        {"name": "city", "type": "string", "required": True, "regex": "[A-Za-z ]+"}]))
    with server.override(signup_attributes=schema):
        p = cli("signup", email, "-a", "displayName=Alice Example")
        p.expect(r"Verify your email address\.")
        p.expect(r"A 8-digit code was sent by email to \S+\*\S+\.")
        p.expect(r"Enter the code")
        code = outbox.last_code(email)
        p.send(code)
        # credential_required (55103) → /signup/v1.0/challenge → password
        p.expect(r"Choose a password: ")
        p.send("too short")
        p.expect(r"Repeat the password: ")
        p.send("too short")
        p.expect(r"! The password is too short\. \(The password must have at least \d+ characters\.\)")
        p.expect(r"Choose a password: ")
        p.send(PW)
        p.expect(r"Repeat the password: ")
        p.send(PW)
        # attributes_required (55106) with required_attributes
        p.expect(r"A few more details are needed:")
        p.expect(r"city \(string, matching \[A-Za-z \]\+\): ")
        p.send("Oslo 42")
        p.expect(r"! These attributes are not valid: city\.")
        p.expect(r"city \(string")
        p.send("Oslo")
        p.expect(r"Account created for " + re.escape(email))
        # automatic sign-in → registration_required → /register/v1.0/introspect
        p.expect(r"none is registered for this account yet")
        menu = p.expect(r"Choose a second factor to register:\n(.*\n)+?Choose 1-2 \[1\]: ").group(0)
        assert "Another email address" in menu and "A mobile phone (SMS)" in menu, menu
        p.send("1")
        p.expect(r"Email address for your codes \(another mailbox than the one you sign in with\): ")
        p.send(email)  # the sign-in address itself: refused, it is no second factor
        p.expect(r"! ")
        p.expect(r"Choose 1-2 \[1\]: ")
        p.send("1")
        p.expect(r"Email address for your codes")
        p.send(inbox)
        p.expect(r"A 8-digit code was sent by email")
        p.expect(r"Enter the code")
        p.send(outbox.last_code(inbox))
        p.expect(r"Your email second factor is registered\.")
        p.expect(r"Signed in as " + re.escape(email) + r"\.")
        assert p.finish() == 0, p.output
        assert_no_secrets(p.output, PW, code)

    user = directory.get_user(server.storage, email)
    assert user is not None and user.display_name == "Alice Example"
    assert json.loads(user.entity["attributes"])["city"] == "Oslo"
    assert [(m["channel"], m["target"]) for m in user.methods] == [("email", inbox)]
    who = cli.run("whoami", "--json")
    assert who.returncode == 0, who.stderr
    id_claims = json.loads(who.stdout)
    assert id_claims["preferred_username"] == email and "mfa" in id_claims["amr"]


def test_email_code_sign_in_then_sms_registration_with_slow_down(server, outbox, make_user, require_mfa, cli):
    email, _ = make_user(password=None)
    phone = random_phone()
    with server.override(resend_interval_seconds=60):
        p = cli("signin", email)
        p.expect(r"This account signs in with a one-time code\.")
        p.expect(r"A 8-digit code was sent by email to \S+\*\S+\.")
        p.expect(r"Enter the code")
        p.send("")  # too early for another code: slow_down with Retry-After
        p.expect(r"! Too many requests\. Wait \d+ seconds and try again\.")
        p.expect(r"Enter the code")
        p.send("123")
        p.expect(r"! The code has 8 digits\.")
        p.send(outbox.last_code(email))
        p.expect(r"none is registered for this account yet")
        p.expect(r"Choose 1-2 \[1\]: ")
        p.send("2")
        p.expect(r"Mobile number in international format")
        p.send("12")
        p.expect(r"! That email address or phone number cannot be used")
        p.expect(r"Choose 1-2 \[1\]: ")
        p.send("2")
        p.expect(r"Mobile number in international format")
        p.send(phone)
        p.expect(r"A 6-digit code was sent by SMS to " + re.escape(phone))
        p.expect(r"Enter the code")
        p.send(outbox.last_code(phone))
        p.expect(r"Your SMS second factor is registered\.")
        p.expect(r"Signed in as " + re.escape(email))
        assert p.finish() == 0, p.output
    user = directory.get_user(server.storage, email)
    assert [(m["channel"], m["target"]) for m in user.methods] == [("sms", phone)]


def test_step_up_proves_the_existing_method_then_registers_the_required_one(server, outbox, make_user, cli):
    """The method-registration rule, followed by the CLI: the account has an
    email method; a policy needs SMS; the server asks to verify the email
    method first, then to register a phone, and the CLI does both."""
    mailbox = unique_email("cli-mailbox")
    email, _ = make_user(password=PW, methods=[{"id": "e1", "channel": "email", "target": mailbox, "default": True,
                                                "created": 1}])
    phone = random_phone()
    name = f"cli: sms only for {email}"
    policy.save(server.storage, {"name": name, "assignments": {"users": {"include": [email]}},
                                 "grant": {"require_second_factor": True, "methods": ["sms"]}})
    try:
        p = cli("signin", email)
        p.expect(r"Password: ")
        p.send(PW)
        p.expect(r"A second factor is required\.")
        p.expect(r"A 8-digit code was sent by email")
        p.expect(r"Enter the code")
        p.send(outbox.last_code(mailbox))
        p.expect(r"Now register the kind of second factor this sign-in needs\.")
        p.expect(r"Mobile number in international format")
        p.send(phone)
        p.expect(r"A 6-digit code was sent by SMS")
        p.expect(r"Enter the code")
        p.send(outbox.last_code(phone))
        p.expect(r"Signed in as " + re.escape(email))
        assert p.finish() == 0, p.output
    finally:
        policy.delete(server.storage, name)
    user = directory.get_user(server.storage, email)
    assert [(m["channel"], m["target"]) for m in user.methods] == [("email", mailbox), ("sms", phone)]
    at = cli.run("token").stdout.strip()
    assert set(claims(at)["amr"]) >= {"pwd", "otp", "sms", "mfa"}


def test_reset_then_automatic_sign_in(server, api, outbox, make_user, cli):
    email, user = make_user(password=PW)
    p = cli("reset", email)
    p.expect(r"A 8-digit code was sent by email to \S+\*\S+\.")
    p.expect(r"Enter the code")
    code = outbox.last_code(email)
    p.send(wrong(code))
    p.expect(r"! That code is not correct\.")
    p.expect(r"Enter the code")
    p.send(code)
    p.expect(r"New password: ")
    p.send(PW)
    p.expect(r"Repeat the password: ")
    p.send(PW)
    p.expect(r"! That password was used recently; choose a new one\.")
    p.expect(r"New password: ")
    p.send(NEW_PW)
    p.expect(r"Repeat the password: ")
    started = time.monotonic()
    p.send(NEW_PW)
    p.expect(r"Your password was changed\. Signing you in")
    assert time.monotonic() - started >= 0.9, "poll_completion must wait poll_interval (1 s) first"
    p.expect(r"Signed in as " + re.escape(email))
    assert p.finish() == 0, p.output
    assert_no_secrets(p.output, PW, NEW_PW, code)

    assert api.signin_password(email, NEW_PW).status == 200
    old = api.signin_password(email, PW)
    assert old.status == 400 and 50126 in old["error_codes"]
    r = cli.run("token")
    assert r.returncode == 0 and claims(r.stdout.strip())["oid"] == user.oid, r.stderr


# ---------------------------------------------------------------------- web fallback

class _RedirectingApi(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        send_json(self, 200, {"challenge_type": "redirect", "redirect_reason": "Client is missing mfa_required capability"})

    def log_message(self, *args):
        pass


def test_redirect_means_the_browser_is_needed(cli):
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RedirectingApi)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        r = cli.run("signin", "someone@example.com", base_url=f"http://127.0.0.1:{stub.server_address[1]}/api")
    finally:
        stub.shutdown()
        stub.server_close()
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "the server asked for the browser" in r.stderr
    assert "Client is missing mfa_required capability" in r.stderr


# ---------------------------------------------------------------------- https: MSAL Python

def _generation(server, refresh_token_family: tuple[str, str]) -> int:
    return int(server.storage.table("refresh").get(*refresh_token_family)["generation"])


def test_https_base_url_hands_tokens_to_msal_python(server, make_user, tls_host, cli):
    host, ca_file = tls_host
    base = host.base_url
    assert base.startswith("https://127.0.0.1:")
    env = {"REQUESTS_CA_BUNDLE": str(ca_file)}
    email, user = make_user(password=PW)
    scope = f"{RESOURCE_SCOPE} openid profile offline_access"
    with server.override(issuer=base):
        p = cli("--scope", scope, "signin", email, base_url=base, env=env)
        p.expect(r"Password: ")
        p.send(PW)
        p.expect(r"Signed in as " + re.escape(email))
        p.expect(r"Tokens are kept by MSAL Python 1\.39\.0 \(oidc_authority=" + re.escape(base) + r"\)")
        assert p.finish() == 0, p.output

        # MSAL's own serialization, private to the user.
        assert stat.S_IMODE(cli.cache.stat().st_mode) == 0o600
        cached = json.loads(cli.cache.read_text())
        assert {"AccessToken", "RefreshToken", "IdToken", "Account"} <= set(cached)
        assert not cli.cache.with_name("cache.builtin.json").exists()
        (rt,) = cached["RefreshToken"].values()
        family = tuple(rt["secret"].split(".")[:2])
        # 1 = the native-auth sign-in, 2 = MSAL's acquire_token_by_refresh_token.
        assert _generation(server, family) == 2

        silent = cli.run("--scope", scope, "token", base_url=base, env=env)
        assert silent.returncode == 0, silent.stderr
        assert "from the cache" in silent.stderr and "MSAL Python" in silent.stderr
        assert _generation(server, family) == 2

        forced = cli.run("--scope", scope, "token", "--force-refresh", base_url=base, env=env)
        assert forced.returncode == 0, forced.stderr
        assert "refreshed from the server" in forced.stderr and "MSAL Python" in forced.stderr
        at = forced.stdout.strip()
        assert at != silent.stdout.strip()
        c = claims(at)
        assert c["aud"] == RESOURCE and c["scp"] == "access_as_user" and c["oid"] == user.oid and c["iss"] == base
        assert _generation(server, family) == 3, "MSAL Python redeemed (and rotated) the refresh token"

        who = cli.run("whoami", base_url=base, env=env)
        assert who.returncode == 0 and email in who.stdout and "MSAL Python" in who.stdout, who.stdout

        # Only OIDC scopes: MSAL adds them itself (and refuses to be given them), so it asks for none.
        own = cli.run("token", "--force-refresh", base_url=base, env=env)
        assert own.returncode == 0, own.stderr
        assert claims(own.stdout.strip())["aud"] == server.settings.dev_client_id
        assert _generation(server, family) == 4

        # Without the CA, TLS fails with a clear hint.
        no_ca = cli.run("token", "--force-refresh", base_url=base,
                        env={"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""})
        assert no_ca.returncode == 1 and "REQUESTS_CA_BUNDLE" in no_ca.stderr, no_ca.stderr
        out = cli.run("signout", "--username", email, base_url=base, env=env)
        assert out.returncode == 0 and f"Signed out {email}" in out.stdout, out.stdout
        assert json.loads(cli.cache.read_text())["RefreshToken"] == {}


# ---------------------------------------------------------------------- the account API (/me)

ACCOUNT_KEY = "api://native-auth/account"  # the built-in store keys access tokens by their (non-OIDC) scopes


def signed_in_by_cli(cli, email: str, password: str = PW) -> None:
    r = cli.run("signin", email, stdin=password + "\n")
    assert r.returncode == 0 and f"Signed in as {email}." in r.stdout, (r.stdout, r.stderr)


def cached_tokens(cli) -> list[dict]:
    path = cli.cache.with_name("cache.builtin.json")
    return json.loads(path.read_text())["accounts"] if path.exists() else []


def account_token(cli) -> dict:
    (entry,) = cached_tokens(cli)
    return claims(entry["access_tokens"][ACCOUNT_KEY]["access_token"])


def refresh(api, refresh_token: str):
    return api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=refresh_token,
                    scope="openid profile offline_access")


def test_account_shows_the_profile_and_sets_attributes(server, make_user, cli):
    phone = random_phone()
    email, user = make_user(password=PW, display_name="Ada", methods=[sms_method(phone)])
    assert cli.run("account").stderr.strip() == "Error: Not signed in. Run `python -m client signin` first."
    signed_in_by_cli(cli, email)

    r = cli.run("account")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"User:          {email}\n" in r.stdout and "Name:          Ada\n" in r.stdout, r.stdout
    assert f"Object id:     {user.oid}\n" in r.stdout and "Password:      set, last changed" in r.stdout
    assert re.search(r"Methods:       SMS to \+49\*+" + phone[-4:] + r" \(id m1, default, added 1970-01-01 00:00:01 UTC\)",
                     r.stdout), r.stdout
    assert phone not in r.stdout, "the profile shows methods masked"
    # The CLI asked for a token of the account API (the sign-in was for the OIDC scopes only).
    at = account_token(cli)
    assert at["aud"] == RESOURCE and at["scp"] == "account" and at["oid"] == user.oid

    schema = settings_mod._attribute_schema(json.dumps([
        {"name": "displayName", "type": "string", "required": False},
        {"name": "city", "type": "string", "required": False, "regex": "[A-Za-z ]+"}]))
    with server.override(signup_attributes=schema):
        r = cli.run("account", "set", "displayName=Grace Hopper", "city=Oslo")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "Saved: city, displayName." in r.stdout and "Name:          Grace Hopper\n" in r.stdout, r.stdout
        assert "Attributes:    city=Oslo, displayName=Grace Hopper\n" in r.stdout, r.stdout
        bad = cli.run("account", "set", "city=Oslo 42")
        assert bad.returncode == 1 and bad.stderr.strip() == "Error: These attributes are not valid: city.", bad.stderr
        mail = cli.run("account", "set", "email=other@example.com")
        assert mail.returncode == 1 and "cannot be changed" in mail.stderr and "Traceback" not in mail.stderr
    assert cli.run("account", "set").returncode == 2
    stored = directory.get_user(server.storage, email)
    assert stored.display_name == "Grace Hopper" and json.loads(stored.entity["attributes"])["city"] == "Oslo"
    as_json = cli.run("account", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["displayName"] == "Grace Hopper"


def test_password_change_refuses_a_wrong_current_password_then_signs_out_the_other_sessions(api, make_user, cli):
    email, _ = make_user(password=PW)
    signed_in_by_cli(cli, email)
    other = api.signin_password(email, PW)
    assert other.status == 200

    refused = cli.run("password", stdin=f"not my password\n{NEW_PW}\n{NEW_PW}\n")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stderr.strip() == "Error: The current password is not correct. The password was not changed."
    assert_no_secrets(refused.stdout + refused.stderr, "not my password", NEW_PW)
    assert api.signin_password(email, PW).status == 200

    p = cli("password")
    p.expect(r"Changing the password of " + re.escape(email) + r"\.")
    p.expect(r"Current password: ")
    p.send(PW)
    p.expect(r"New password: ")
    p.send(PW)
    p.expect(r"Repeat the password: ")
    p.send(PW)
    p.expect(r"! That password was used recently; choose a new one\.")
    p.expect(r"New password: ")
    p.send(NEW_PW)
    p.expect(r"Repeat the password: ")
    p.send(NEW_PW)
    p.expect(r"Your password was changed\.")
    p.expect(r"Every other session of the account was signed out; this one stays signed in\.")
    assert p.finish() == 0, p.output
    assert_no_secrets(p.output, PW, NEW_PW)

    assert refresh(api, other["refresh_token"]).status == 400               # the other session ended
    assert cli.run("account").returncode == 0                               # this one goes on
    assert api.signin_password(email, NEW_PW).status == 200
    assert api.signin_password(email, PW).status == 400

    # --keep-sessions: another session survives the next change.
    kept = api.signin_password(email, NEW_PW)
    r = cli.run("password", "--keep-sessions", stdin=f"{NEW_PW}\n{PW} again and again\n{PW} again and again\n")
    assert r.returncode == 0 and "Other sessions stay signed in." in r.stdout, (r.stdout, r.stderr)
    assert refresh(api, kept["refresh_token"]).status == 200


def test_methods_add_steps_up_by_signing_in_again_then_list_and_remove(server, outbox, make_user, cli):
    phone, new = random_phone(), random_phone()
    email, _ = make_user(password=PW, methods=[sms_method(phone)])
    signed_in_by_cli(cli, email)
    listed = cli.run("methods")
    assert listed.returncode == 0, listed.stderr
    assert f"Second factors of {email}:\n  SMS to +49" in listed.stdout and "(id m1, default," in listed.stdout
    assert "acrs" not in account_token(cli)

    p = cli("methods", "add", "sms", new)
    # 401 insufficient_claims → a refresh with the claims is refused (no second factor in this session)
    # → a new sign-in with the claims → mfa_required → the code → the call again.
    p.expect(r"This change needs a fresh second factor: sign in again as " + re.escape(email) + r"\.")
    p.expect(r"Password: ")
    p.send(PW)
    p.expect(r"A second factor is required\.")
    p.expect(r"A 6-digit code was sent by SMS to \+49\*+" + phone[-4:] + r"\.")
    p.expect(r"Enter the code")
    p.send(outbox.last_code(phone))
    p.expect(r"Signed in again\. Continuing")
    p.expect(r"A 6-digit code was sent by SMS to \+49\*+" + new[-4:] + r"\.")
    p.expect(r"Enter the code")
    code = outbox.last_code(new)
    p.send(wrong(code))
    p.expect(r"! That code is not correct\.")
    p.expect(r"Enter the code")
    p.send(code)
    added = p.expect(r"Added SMS to \+49\*+" + new[-4:] + r" as a second factor \(id (\S+)\)\.")
    assert p.finish() == 0, p.output
    assert_no_secrets(p.output, PW, code, new)
    user = directory.get_user(server.storage, email)
    assert [m["target"] for m in user.methods] == [phone, new]
    new_id = added.group(1)
    assert [m["id"] for m in user.methods][1] == new_id
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "method_added"
    # The step-up session replaced the old one in the store; its token carries the account context.
    assert account_token(cli)["acrs"] == [server.settings.account_auth_context]

    missing = cli.run("methods", "remove", "nope")
    assert missing.returncode == 1 and "has no method with id 'nope'" in missing.stderr, missing.stderr
    # Within the freshness window the step-up token is proof enough: no prompt at all.
    removed = cli.run("methods", "remove", new_id)
    assert removed.returncode == 0, (removed.stdout, removed.stderr)
    assert re.search(r"Removed SMS to \+49\*+" + new[-4:] + r" \(id " + re.escape(new_id) + r"\)\.", removed.stdout)
    assert "Password" not in removed.stdout
    assert [m["id"] for m in directory.get_user(server.storage, email).methods] == ["m1"]
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "method_removed"


def test_a_recent_second_factor_of_the_session_is_proof_enough(server, outbox, make_user, require_mfa, cli):
    """The session signed in with a second factor a moment ago: the refresh asking for the claims gets
    them, so removing a method needs no new sign-in; the last method is refused (a policy needs one)."""
    phone, second = random_phone(), random_phone()
    email, _ = make_user(password=PW, methods=[sms_method(phone), sms_method(second, "m2", False)])
    p = cli("signin", email)
    p.expect(r"Password: ")
    p.send(PW)
    p.expect(r"Choose 1-2 \[1\]: ")
    p.send("1")
    p.expect(r"Enter the code")
    p.send(outbox.last_code(phone))
    p.expect(r"Signed in as ")
    assert p.finish() == 0, p.output

    r = cli.run("methods", "remove", "m2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Removed SMS to +49" in r.stdout and "(id m2)" in r.stdout and "sign in again" not in r.stdout
    assert account_token(cli)["acrs"] == [server.settings.account_auth_context]
    last = cli.run("methods", "remove", "m1")
    assert last.returncode == 1, (last.stdout, last.stderr)
    assert "Error: This is the account's last second factor" in last.stderr
    assert [m["id"] for m in directory.get_user(server.storage, email).methods] == ["m1"]


def test_an_account_without_a_second_factor_confirms_by_email_code(server, outbox, make_user, cli):
    email, _ = make_user(password=PW)
    inbox = unique_email("cli-factor")
    signed_in_by_cli(cli, email)
    p = cli("methods", "add", "email", inbox)
    p.expect(r"This change needs a confirmation code, sent to the account's email address\.")
    p.expect(r"A 8-digit code was sent by email to \S+\*\S+\.")
    p.expect(r"Enter the code")
    confirmation = outbox.last_code(email)
    p.send(wrong(confirmation))
    p.expect(r"! That code is not correct\.")
    p.expect(r"Enter the code")
    p.send(confirmation)
    p.expect(r"A 8-digit code was sent by email to \S+\*\S+\.")
    p.expect(r"Enter the code")
    p.send(outbox.last_code(inbox))
    p.expect(r"Added email to \S+ as a second factor \(id \S+\)\.")
    assert p.finish() == 0, p.output
    assert "Password" not in p.output
    assert [(m["channel"], m["target"]) for m in directory.get_user(server.storage, email).methods] == [("email", inbox)]


def test_delete_asks_for_the_address_steps_up_and_forgets_the_tokens(server, outbox, make_user, cli):
    phone = random_phone()
    email, _ = make_user(password=PW, methods=[sms_method(phone)])
    signed_in_by_cli(cli, email)
    sends = outbox.count(phone)

    refused = cli.run("delete", stdin="someone-else@example.com\n")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert f"This deletes the account {email} for good" in refused.stdout
    assert refused.stderr.strip() == "Error: That is not the account's address. Nothing was deleted."
    assert directory.get_user(server.storage, email) is not None and outbox.count(phone) == sends

    p = cli("delete")
    p.expect(r"Type the account's email address to confirm: ")
    p.send(email.upper())
    p.expect(r"sign in again as " + re.escape(email))
    p.expect(r"Password: ")
    p.send(PW)
    p.expect(r"A 6-digit code was sent by SMS")
    p.expect(r"Enter the code")
    p.send(outbox.last_code(phone))
    p.expect(r"The account " + re.escape(email) + r" was deleted\.")
    p.expect(r"Its tokens were removed from built-in refresh")
    assert p.finish() == 0, p.output
    assert_no_secrets(p.output, PW)
    assert directory.get_user(server.storage, email) is None
    assert [m["purpose"] for m in outbox.messages(email)][-1] == "account_deleted"
    assert cached_tokens(cli) == []
    gone = cli.run("account")
    assert gone.returncode == 1 and "Not signed in" in gone.stderr


def test_signout_everywhere_ends_every_session(api, make_user, cli):
    email, _ = make_user(password=PW)
    signed_in_by_cli(cli, email)
    (entry,) = cached_tokens(cli)
    other = api.signin_password(email, PW)
    r = cli.run("signout", "--everywhere")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"Signed out everywhere: every session of {email} has ended, on every device." in r.stdout
    assert "Its tokens were removed from built-in refresh" in r.stdout
    assert cached_tokens(cli) == []
    for rt in (other["refresh_token"], entry["refresh_token"]):
        assert refresh(api, rt).status == 400
    again = cli.run("signout", "--everywhere")
    assert again.returncode == 1 and "Not signed in" in again.stderr


def test_export_writes_the_account_data(server, make_user, cli, tmp_path):
    phone = random_phone()
    email, user = make_user(password=PW, methods=[sms_method(phone)])
    signed_in_by_cli(cli, email)
    out = tmp_path / "export" / "account.json"
    r = cli.run("export", "-o", str(out))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert re.search(r"Exported the data of " + re.escape(email) + r" \(1 method, 1 session, \d+ sign-in log entr(y|ies)\) to "
                     + re.escape(str(out)), r.stdout), r.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = json.loads(out.read_text())
    assert data["profile"]["email"] == email and data["profile"]["id"] == user.oid
    assert data["methods"][0]["target"] == phone and data["sessions"] and data["signInLog"]
    assert user.password_hash not in out.read_text() and "password_hash" not in out.read_text()
    piped = cli.run("export")
    assert piped.returncode == 0 and json.loads(piped.stdout)["profile"]["email"] == email, piped.stderr
    assert f"Exported the data of {email}" in piped.stderr


def test_https_account_commands_through_msal_python_with_step_up(server, outbox, make_user, tls_host, cli):
    """The MSAL Python store: the account scope is refreshed by MSAL, the step-up's silent attempt
    (claims_challenge) is refused, the new sign-in replaces the session in MSAL's cache."""
    host, ca_file = tls_host
    base = host.base_url
    env = {"REQUESTS_CA_BUNDLE": str(ca_file)}
    phone = random_phone()
    email, _ = make_user(password=PW, methods=[sms_method(phone), sms_method(random_phone(), "m2", False)])
    with server.override(issuer=base):
        r = cli.run("signin", email, base_url=base, env=env, stdin=PW + "\n")
        assert r.returncode == 0 and "MSAL Python" in r.stdout, (r.stdout, r.stderr)
        shown = cli.run("account", base_url=base, env=env)
        assert shown.returncode == 0 and f"User:          {email}\n" in shown.stdout, (shown.stdout, shown.stderr)
        p = cli("methods", "remove", "m2", base_url=base, env=env)
        p.expect(r"sign in again as " + re.escape(email))
        p.expect(r"Password: ")
        p.send(PW)
        p.expect(r"Where should the verification code go\?\n(.*\n)+?Choose 1-2 \[1\]: ")
        p.send("1")
        p.expect(r"Enter the code")
        p.send(outbox.last_code(phone))
        p.expect(r"Removed SMS to \+49\*+\d{4} \(id m2\)\.")
        assert p.finish() == 0, p.output
    assert [m["id"] for m in directory.get_user(server.storage, email).methods] == ["m1"]
    cached = json.loads(cli.cache.read_text())
    assert len(cached["Account"]) == 1 and len(cached["RefreshToken"]) == 1, "the step-up session replaced the old one"
    targets = [at["target"].split() for at in cached["AccessToken"].values()]
    assert any(ACCOUNT_KEY in t for t in targets), targets
