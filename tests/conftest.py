"""Shared fixtures: a real Azurite (Table) process, the app served by the local
host over HTTP, an HTTP client speaking the native-auth form protocol, the
local outbox, and users made through the directory module."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devhost.azurite import Azurite  # noqa: E402
from shared import settings as settings_mod  # noqa: E402
from shared.storage import directory, tables as storage_mod

import sdk_rules  # noqa: E402

# Every answer the app gives during the suite is judged against the SDKs' rules
# (tests/sdk_rules.py, docs/sdk-compatibility.md); a violation fails the test that caused it.
sdk_rules.install()


@pytest.fixture(autouse=True)
def _sdk_rules_guard():
    sdk_rules.take_violations()
    yield
    found = sdk_rules.take_violations()
    if found:
        pytest.fail("answers an MSAL SDK would reject (docs/sdk-compatibility.md):\n  " + "\n  ".join(found[:10]),
                    pytrace=False)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"SDK rules: {sdk_rules.answers_checked()} native-auth answers checked "
                                "against MSAL JS, iOS and Android rules")

DEV_CLIENT = settings_mod.DEV_CLIENT_ID
_functions_cache: list | None = None

# ---------------------------------------------------------------- suite-wide log capture (A44)
# Every log record of the whole run is kept, and every secret the tests send or
# receive is remembered, so tests/test_zz_no_secrets_in_logs.py can check that
# no code, password, continuation/refresh/access token or key ever reached a log.
# Codes are remembered when read from the outbox (real codes), not from what tests send as "oob"
# (tests send made-up wrong codes such as 00000000, which are not secrets).
SECRET_FIELDS_SENT = ("password", "new_password", "refresh_token", "continuation_token")
SECRET_FIELDS_RECEIVED = ("continuation_token", "refresh_token", "access_token", "id_token")
SEEN_SECRETS: set[str] = set()
LOG_LINES: list[str] = []


class _KeepAll(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            text = str(record.msg)
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        LOG_LINES.append(f"{record.name}: {text}")


_keep_all = _KeepAll(level=logging.DEBUG)
logging.getLogger().addHandler(_keep_all)
for _name in ("nativeauth", "devhost"):
    logging.getLogger(_name).setLevel(logging.DEBUG)


def remember_secret(value: Any) -> None:
    if isinstance(value, str) and len(value) >= 6:
        SEEN_SECRETS.add(value)


def app_functions() -> list:
    """function_app.app.get_functions() may be called once per app instance."""
    global _functions_cache
    if _functions_cache is None:
        import function_app

        _functions_cache = list(function_app.app.get_functions())
    return _functions_cache


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    # On disk (not in memory) so fault tests can stop and restart it without losing state.
    with Azurite(location=tmp_path_factory.mktemp("azurite")) as az:
        yield az


def make_settings(azurite: Azurite, tmp: Path, **env: str) -> settings_mod.Settings:
    return settings_mod.Settings.from_env(settings_env(azurite, tmp, **env))


def settings_env(azurite: Azurite, tmp: Path, **env: str) -> dict[str, str]:
    """The suite's settings as environment variables (for a host in a process of its own)."""
    base = {
        "AUTH_ENVIRONMENT": "local",
        "AUTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AUTH_OUTBOX_PATH": str(tmp / "outbox.jsonl"),
        "AUTH_RESEND_INTERVAL_SECONDS": "0",
        # Send limits out of the way of functional tests (tests/test_limits.py sets its own).
        "AUTH_SMS_COOLDOWN_SECONDS": "0", "AUTH_EMAIL_COOLDOWN_SECONDS": "0",
        "AUTH_SMS_PER_DESTINATION_HOUR": "100000", "AUTH_SMS_PER_DESTINATION_DAY": "100000",
        "AUTH_SMS_PER_PREFIX_HOUR": "100000", "AUTH_SMS_GLOBAL_HOUR": "1000000",
        "AUTH_EMAIL_PER_DESTINATION_HOUR": "100000", "AUTH_EMAIL_GLOBAL_MINUTE": "1000000",
        "AUTH_EMAIL_GLOBAL_HOUR": "1000000", "AUTH_SENDS_PER_IP_HOUR": "1000000",
        "AUTH_SENDS_PER_ACCOUNT_HOUR": "100000", "AUTH_NEW_METHOD_PER_DESTINATION_HOUR": "100000",
        "AUTH_NEW_METHOD_UNVERIFIED_PER_ACCOUNT_HOUR": "100000",
        # The suite exercises the production limits: no local-developer relief; pumping detection off
        # (the suite sends many unverified SMS to German numbers; tests/test_attacks_limits.py turns it on).
        "AUTH_LOCAL_DEVELOPER_RELIEF": "false", "AUTH_STORAGE_TRACE": "true",
        "AUTH_PUMPING_PREFIX_UNVERIFIED": "0", "AUTH_PUMPING_COUNTRY_UNVERIFIED": "0",
    }
    base.update(env)
    return base


@dataclasses.dataclass
class Resp:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default) if isinstance(self.body, dict) else default


class Api:
    def __init__(self, base_url: str, client_id: str = DEV_CLIENT):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Resp:
        req = urllib.request.Request(self.base_url + "/" + path.lstrip("/"), data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        if isinstance(parsed, dict):
            for field in SECRET_FIELDS_RECEIVED:
                remember_secret(parsed.get(field))
        return Resp(status, parsed, {k.lower(): v for k, v in hdrs.items()}, raw)

    def post(self, path: str, headers: dict[str, str] | None = None, **form: Any) -> Resp:
        form.setdefault("client_id", self.client_id)
        form = {k: v for k, v in form.items() if v is not None}
        for field in SECRET_FIELDS_SENT:
            remember_secret(form.get(field))
        body = urlencode(form).encode()
        h = {"Content-Type": "application/x-www-form-urlencoded"}
        h.update(headers or {})
        return self.request("POST", path, body, h)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Resp:
        return self.request("GET", path, None, headers)

    # -- flows
    def signin_password(self, username: str, password: str, *, scope: str = "openid profile offline_access",
                        challenge_type: str = "password oob redirect", capabilities: str | None = None) -> Resp:
        r = self.post("oauth2/v2.0/initiate", username=username, challenge_type=challenge_type, capabilities=capabilities)
        assert r.status == 200, r.body
        r = self.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type=challenge_type)
        assert r.status == 200 and r["challenge_type"] == "password", r.body
        return self.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password",
                         password=password, scope=scope, client_info="1")


class Outbox:
    def __init__(self, path: Path):
        self.path = path

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [m for m in out if to is None or m.get("to") == to]

    def last_code(self, to: str) -> str:
        msgs = [m for m in self.messages(to) if m.get("code")]
        assert msgs, f"no code sent to {to}"
        SEEN_SECRETS.add(msgs[-1]["code"])
        return msgs[-1]["code"]

    def count(self, to: str) -> int:
        return len(self.messages(to))


@dataclasses.dataclass
class Server:
    host: Any
    settings: settings_mod.Settings
    api: Api
    outbox: Outbox
    azurite: Azurite
    tmp: Path

    @property
    def storage(self) -> storage_mod.Storage:
        return storage_mod.get_storage(self.settings)

    @contextlib.contextmanager
    def override(self, **changes: Any):
        """Temporarily change settings for the running app (same process)."""
        old = settings_mod.get_settings()
        settings_mod.use_settings(dataclasses.replace(old, **changes))
        try:
            yield settings_mod.get_settings()
        finally:
            settings_mod.use_settings(old)


@pytest.fixture(scope="session")
def server(azurite, tmp_path_factory):
    from devhost.server import LocalHost

    tmp = tmp_path_factory.mktemp("app")
    host = LocalHost(None, functions=app_functions()).start()
    settings = make_settings(azurite, tmp, AUTH_ISSUER=host.base_url)
    settings_mod.use_settings(settings)
    storage_mod.reset_storage()
    storage_mod.get_storage(settings)
    yield Server(host, settings, Api(host.base_url), Outbox(Path(settings.outbox_path)), azurite, tmp)
    host.stop()
    storage_mod.reset_storage()
    settings_mod.use_settings(None)


@pytest.fixture(scope="module")
def tls_host(server):
    """The same app served over https by a second LocalHost in this process, with
    a throwaway CA (tests/fakeacs.py makes it); yields (host, ca_file)."""
    import ssl

    from devhost.server import LocalHost
    from fakeacs import _make_certs

    ca_file, cert_file, key_file = _make_certs()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    host = LocalHost(None, functions=app_functions(), ssl_context=ctx).start()
    try:
        yield host, ca_file
    finally:
        host.stop()


@pytest.fixture
def api(server) -> Api:
    return server.api


@pytest.fixture
def outbox(server) -> Outbox:
    return server.outbox


PROXY_VARIABLES = ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


def clear_proxy_env(monkeypatch) -> None:
    """No proxy settings from the machine's environment in this test (it sets its own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def flow_rows(storage, pk: str) -> list[dict]:
    """The flow rows (sign-ins, resets) in an account's partition of the users table: every row but the account's
    (shared/flows/state.py)."""
    return storage.table("users").query("PartitionKey eq @p and RowKey ne @u", {"p": pk, "u": "user"})


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture
def make_user(server):
    def make(password: str | None = "correct horse battery staple", **kwargs: Any) -> tuple[str, directory.User]:
        email = kwargs.pop("email", None) or unique_email()
        user = directory.create_user(server.storage, email, password=password, **kwargs)
        return email, user
    return make


@pytest.fixture
def policies(server):
    """``policies(**definition)`` saves a conditional-access policy for one
    test (a unique name unless given) and returns its name; every policy
    saved is deleted afterwards, whatever happens (one the test deleted
    itself is skipped)."""
    from shared.security import policy

    names: list[str] = []

    def add(**definition: Any) -> str:
        definition.setdefault("name", f"test policy {uuid.uuid4().hex[:10]}")
        saved = policy.save(server.storage, definition)
        names.append(saved["name"])
        return saved["name"]

    try:
        yield add
    finally:
        for name in names:
            try:
                policy.delete(server.storage, name)
            except policy.PolicyError:
                pass  # the test deleted it itself
        policy.clear_cache()


@pytest.fixture
def caplog_all(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


STEADY_HOUR_MARGIN_SECONDS = 45


@pytest.fixture
def steady_hour():
    """For a test that counts sends against limits kept per UTC clock hour (and day): if the hour ends
    within the margin, wait for the next one first, so the counters the test fills cannot reset halfway
    (a run crossing the hour would see a send the test expects refused go through)."""
    left = 3600 - time.time() % 3600
    if left < STEADY_HOUR_MARGIN_SECONDS:
        time.sleep(left + 0.5)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def storage_trace(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``fn`` in-process inside a request context: its result and the storage operations it made
    (``table.operation``, in order), as ``x-storage-trace`` reports them for a request."""
    from shared.protocol import context

    ctx = context.Context("t", "t", None, None)
    token = context.enter(ctx)
    try:
        result = fn()
    finally:
        context.leave(token)
    return result, list(ctx.storage_trace)


def send_json(handler, status: int, body) -> None:
    """Answer a test HTTP server's request (an ``http.server`` handler) with ``body`` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class Canary:
    """A local HTTP server standing in for an attacker's key host (jku/x5u): records every hit."""

    def __init__(self, body: dict):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                send_json(self, 200, body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
