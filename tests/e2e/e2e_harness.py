"""Harness for the browser end-to-end tests (MSAL JS custom auth in headless Chromium).

Pieces (wired together as fixtures in ``conftest.py``):

* :func:`build_site` bundles ``web/app.js`` (``@azure/msal-browser/custom-auth``)
  with esbuild into a temporary directory, next to ``web/index.html``.
* :class:`StaticSite` serves that directory on ``http://localhost:<port>/``
  (a secure context; the API is on ``127.0.0.1:<other port>``, so every API
  call is cross-origin and exercises CORS).
* :class:`Driver` runs ``tests/browser_driver.mjs`` (Node + puppeteer-core +
  Debian Chromium; the one driver of the e2e and the demo tests, which
  ``tests/test_demo_app.py`` also uses through this class) and talks to it
  with one JSON object per line.
* :class:`Page` is one browser page with the test app loaded; its methods call
  ``window.e2e`` in the page and return :class:`Result` objects (plain JSON
  descriptions of the SDK's results).
* :class:`AccessLog` records what the API server saw (method, path, status),
  e.g. the CORS preflights, from the local host's access log.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WEB = HERE / "web"
DRIVER = ROOT / "tests" / "browser_driver.mjs"  # shared with tests/test_demo_app.py
NODE_MODULES = ROOT / "node_modules"
ESBUILD = NODE_MODULES / ".bin" / "esbuild"

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CLIENT_ID = "00000000-0000-0000-0000-000000000001"
AUTHORITY = "https://native-auth.local/tenant"  # never contacted (contract §7.2)
ACCOUNT_SCOPE = "api://native-auth/account"  # the account API (/api/me) of the signed-in user

CHROMIUM_MISSING = (
    f"Chromium is required for the browser end-to-end tests and was not found at {CHROMIUM}. "
    "Install Debian's package with `sh scripts/install_chromium.sh` (as root; `make bootstrap` "
    "and `make test` do this), or set E2E_CHROMIUM to a Chromium binary."
)
NODE_MODULES_MISSING = (
    "The JavaScript test dependencies are missing ({what}). Run `npm ci` in the repository root "
    "(`make bootstrap` and `make test` do this)."
)


class HarnessError(RuntimeError):
    pass


# ------------------------------------------------------------------ prerequisites

def missing_prerequisites() -> list[str]:
    """Human-readable reasons the e2e suite cannot run; empty when it can."""
    problems = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problems.append(CHROMIUM_MISSING)
    if shutil.which("node") is None:
        problems.append("Node.js (`node`) is required for the browser end-to-end tests and is not on PATH.")
    for what in (ESBUILD, NODE_MODULES / "puppeteer-core" / "package.json",
                 NODE_MODULES / "@azure" / "msal-browser" / "package.json"):
        if not what.exists():
            problems.append(NODE_MODULES_MISSING.format(what=what.relative_to(ROOT)))
    return problems


def installed_version(package: str) -> str:
    return json.loads((NODE_MODULES / package / "package.json").read_text())["version"]


# ------------------------------------------------------------------ the page's files

def build_site(out_dir: Path) -> Path:
    """Bundle web/app.js into out_dir (never into the work tree) and copy index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(ESBUILD), str(WEB / "app.js"), "--bundle", "--format=iife", "--platform=browser",
           "--target=es2020", "--sourcemap", "--log-level=warning", f"--outfile={out_dir / 'app.js'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise HarnessError(f"esbuild failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    shutil.copyfile(WEB / "index.html", out_dir / "index.html")
    return out_dir


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        self.server.requests.append(self.path)

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class StaticSite:
    """The test page on http://localhost:<port>/ (served from 127.0.0.1)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.requests = []
        self.port = self._server.server_address[1]
        self.origin = f"http://localhost:{self.port}"
        self.url = self.origin + "/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="e2e-site", daemon=True)

    @property
    def requests(self) -> list[str]:
        return self._server.requests

    def start(self) -> "StaticSite":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ------------------------------------------------------------------ the driver process

class Driver:
    """tests/browser_driver.mjs: headless Chromium driven through puppeteer-core, JSON lines over stdio."""

    def __init__(self, user_data_dir: Path, log_path: Path, chromium: str = CHROMIUM):
        self.log_path = log_path
        env = dict(os.environ)
        env.update({  # puppeteer-core never downloads, but make sure nothing tries
            "PUPPETEER_SKIP_DOWNLOAD": "1",
            "PUPPETEER_SKIP_CHROME_DOWNLOAD": "1",
            "PUPPETEER_SKIP_CHROME_HEADLESS_SHELL_DOWNLOAD": "1",
        })
        self._log = open(log_path, "wb")
        self._proc = subprocess.Popen(
            ["node", str(DRIVER), "--chromium", chromium, "--user-data-dir", str(user_data_dir)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
            text=True, encoding="utf-8", bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="e2e-driver", daemon=True)
        self._reader.start()
        self._next_id = 0
        self._lock = threading.Lock()
        try:
            ready = self._receive(timeout=60, what="Chromium start-up")
            if ready.get("event") != "ready":
                raise HarnessError(f"unexpected first message from the driver: {ready}")
        except BaseException:
            self.close()
            raise
        self.browser_version = ready.get("version")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            self._log.flush()
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _receive(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"the browser driver gave no answer to {what} within {timeout:.0f} s\n"
                                   f"driver stderr:\n{self.stderr_tail()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._proc.wait(5)
                raise HarnessError(f"the browser driver exited ({self._proc.returncode}) during {what}\n"
                                   f"driver stderr:\n{self.stderr_tail()}")
            line = line.strip()
            if not line:
                continue
            try:
                return json.loads(line)
            except ValueError:
                raise HarnessError(f"the browser driver wrote a non-JSON line: {line[:500]!r}") from None

    def request(self, op: str, timeout: float = 60, **params: Any) -> Any:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            msg = {"id": msg_id, "op": op, "timeoutMs": int(timeout * 1000), **params}
            if self._proc.poll() is not None:
                raise HarnessError(f"the browser driver is not running (exit {self._proc.returncode})\n"
                                   f"driver stderr:\n{self.stderr_tail()}")
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()
            while True:
                reply = self._receive(timeout + 10, f"op {op}")
                if reply.get("id") == msg_id:
                    break
        if not reply.get("ok"):
            raise HarnessError(f"browser op {op} failed: {reply.get('error')}\n{reply.get('stack') or ''}")
        return reply.get("result")

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self.request("quit", timeout=15)
                except HarnessError:
                    pass
                try:
                    self._proc.wait(15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()  # our own child, by its handle
                    self._proc.wait(5)
        finally:
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except (OSError, AttributeError):
                    pass
            self._log.close()


# ------------------------------------------------------------------ results and pages

class Result(dict):
    """The JSON description of an SDK result (see `describe` in web/app.js):
    ``type``, ``state`` (the SDK's stateType), ``is`` (every isXxx() predicate),
    ``error`` (with its own ``is``, ``error``, ``errorCodes``, ``subError``...),
    ``data`` (account or authentication result) and ``info`` (the state's getters)."""

    @property
    def state(self) -> str | None:
        return self.get("state")

    def is_(self, name: str) -> bool:
        """r.is_("Completed") is r.isCompleted() in the page."""
        return self.get("is", {}).get("is" + name) is True

    @property
    def error(self) -> dict[str, Any] | None:
        return self.get("error")

    def error_is(self, name: str) -> bool:
        """r.error_is("PasswordIncorrect") is r.error.isPasswordIncorrect() in the page."""
        return bool(self.error) and self.error.get("is", {}).get("is" + name) is True

    @property
    def data(self) -> dict[str, Any] | None:
        return self.get("data")

    @property
    def info(self) -> dict[str, Any]:
        return self.get("info") or {}

    def __repr__(self) -> str:
        # Only the predicates that hold, so that assertion messages stay readable.
        def compact(d: dict[str, Any] | None) -> Any:
            if not isinstance(d, dict):
                return d
            return {k: ([p for p, v in val.items() if v is True] if k == "is" and isinstance(val, dict) else val)
                    for k, val in d.items()}
        view = compact(dict(self))
        if isinstance(view, dict) and self.error:
            view["error"] = compact(self.error)
        return "Result(" + json.dumps(view, default=str)[:4000] + ")"

    __str__ = __repr__


def msal_config(api_base_url: str, **custom_auth: Any) -> dict[str, Any]:
    """The CustomAuthPublicClientApplication configuration the tests use."""
    config: dict[str, Any] = {
        "auth": {"clientId": CLIENT_ID, "authority": AUTHORITY, "redirectUri": "/"},
        "customAuth": {
            "authApiProxyUrl": api_base_url,
            "challengeTypes": ["password", "oob"],
            "capabilities": ["mfa_required", "registration_required"],
        },
        "cache": {"cacheLocation": "sessionStorage"},
    }
    config["customAuth"].update(custom_auth)
    if os.environ.get("E2E_MSAL_LOG"):  # e.g. E2E_MSAL_LOG=3 (verbose) to see MSAL's own log
        config["system"] = {"loggerOptions": {"logLevel": int(os.environ["E2E_MSAL_LOG"]), "piiLoggingEnabled": False}}
    return config


class Page:
    """One page with the test app loaded and a CustomAuthPublicClientApplication created.

    Generic calls: :meth:`start` (an app method that begins a flow) and
    :meth:`act` (a method of the current flow state). The named helpers below
    are shorthands; new flows (sign-up, reset, MFA, JIT) need no new plumbing:
    ``page.start("signUp", username=..., password=...)``,
    ``page.act("submitAttributes", {...})``, ``page.act("requestChallenge", method_id)``.
    """

    def __init__(self, driver: Driver, url: str, config: dict[str, Any]):
        self.driver = driver
        self.config = config
        self.init = driver.request("open", url=url, config=config, timeout=60)

    def call(self, fn: str, *args: Any, timeout: float = 60) -> Any:
        return self.driver.request("call", fn=fn, args=list(args), timeout=timeout)

    def start(self, method: str, **inputs: Any) -> Result:
        return Result(self.call("start", method, {k: v for k, v in inputs.items() if v is not None}))

    def act(self, method: str, *args: Any) -> Result:
        return Result(self.call("act", method, *args))

    def flow_state(self) -> dict[str, Any] | None:
        return self.call("flowState")

    # sign-in
    def sign_in(self, username: str, password: str | None = None, scopes: list[str] | None = None,
                claims: str | None = None) -> Result:
        return self.start("signIn", username=username, password=password, scopes=scopes, claims=claims)

    def submit_code(self, code: str) -> Result:
        return self.act("submitCode", code)

    def resend_code(self) -> Result:
        return self.act("resendCode")

    def submit_password(self, password: str) -> Result:
        return self.act("submitPassword", password)

    # account
    def current_account(self) -> Result:
        return Result(self.call("currentAccount"))

    def get_access_token(self, force_refresh: bool = False, scopes: list[str] | None = None,
                         claims: str | None = None) -> Result:
        inputs: dict[str, Any] = {"forceRefresh": force_refresh}
        if scopes:
            inputs["scopes"] = scopes
        if claims:
            inputs["claims"] = claims
        return Result(self.call("accountAct", "getAccessToken", inputs))

    def sign_out(self) -> Result:
        return Result(self.call("accountAct", "signOut"))

    # this service's own API (/api/me...), called with the SDK's access token
    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            scopes: list[str] | None = None) -> dict[str, Any]:
        """``fetch`` in the page: {status, body, text, wwwAuthenticate, accessToken, fromCache},
        or {status: None, tokenError} when the SDK gave no access token."""
        return self.call("api", method, path, body, scopes or [ACCOUNT_SCOPE])

    # what happened
    def network(self, clear: bool = False) -> list[dict[str, Any]]:
        """Every request the page made: method, url, resourceType, grantType, status, failure."""
        return self.driver.request("network", clear=clear)

    def console(self) -> list[str]:
        return self.driver.request("console")

    def close(self) -> None:
        self.driver.request("close", timeout=30)


# ------------------------------------------------------------------ server side

class AccessLog(logging.Handler):
    """(method, path, status) for every request the local API host served,
    read from its ``devhost.access`` log ("%s %s %d %.1fms")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[tuple[str, str, int]] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3:
            with self._lock2:
                self.entries.append((str(args[0]), str(args[1]), int(args[2])))

    def clear(self) -> None:
        with self._lock2:
            self.entries.clear()

    def snapshot(self) -> list[tuple[str, str, int]]:
        with self._lock2:
            return list(self.entries)


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def wrong_code(code: str) -> str:
    """A code of the same length (the SDK checks the length) that differs in every position."""
    return "".join("1" if c != "1" else "2" for c in code)


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, without checking anything (to read ``amr``/``acr`` in a test)."""
    import base64

    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def unique_mobile() -> str:
    """A distinct valid German mobile number in E.164 (+49 151 and 8 digits)."""
    import random

    return "+49151" + "".join(random.choice("0123456789") for _ in range(8))
