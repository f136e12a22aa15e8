"""A programmable custom-extension endpoint for the tests: a real HTTP server
(thread) that records every call (headers, JSON body) and answers what the
test tells it to, including slow, broken and hostile answers. The sample app
(samples/extensions) is the well-behaved extension; this one misbehaves on
purpose.

    with ExtensionServer() as ext:
        ext.answer = claims_answer({"roles": ["admin"]})
        ext.delay = 3.0            # seconds before answering
        ext.status = 500           # or a sequence: ext.script = [(500, ...), (200, ...)]
        ext.calls                  # [{"path", "headers", "body"}]
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def claims_answer(claims: Any) -> dict[str, Any]:
    return {"data": {"@odata.type": "microsoft.graph.onTokenIssuanceStartResponseData",
                     "actions": [{"@odata.type": "microsoft.graph.tokenIssuanceStart.provideClaimsForToken",
                                  "claims": claims}]}}


class ExtensionServer:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer: Any = claims_answer({})
        self.status = 200
        self.content_type = "application/json"
        self.delay = 0.0
        self.raw: bytes | None = None                 # answer these bytes instead of JSON
        self.script: list[tuple[int, Any]] = []       # per call: (status, answer), consumed first
        self.headers: dict[str, str] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with outer._lock:
                    outer.calls.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body})
                    status, answer = outer.script.pop(0) if outer.script else (outer.status, outer.answer)
                    delay, ctype, extra, raw_answer = outer.delay, outer.content_type, dict(outer.headers), outer.raw
                if delay:
                    time.sleep(delay)
                data = raw_answer if raw_answer is not None else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/token-issuance-start"

    def __enter__(self) -> "ExtensionServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.script.clear()
            self.answer, self.status, self.delay, self.raw = claims_answer({}), 200, 0.0, None
            self.content_type, self.headers = "application/json", {}


# ------------------------------------------------------------------ shared by the extension tests

AUDIENCE = "api://localhost/extensions"   # the resource the tests' extensions are configured with


def sample_serve_module():
    """samples/extensions/serve.py, loaded by path (the sample is its own app, not a package of ours)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ext_sample_serve", Path(__file__).resolve().parent.parent / "samples" / "extensions" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_settings(server, **extra: str) -> dict[str, str]:
    """Settings for the sample extension pointed at the test server (http on loopback)."""
    return {"EXTENSION_ISSUER": server.settings.issuer, "EXTENSION_AUDIENCE": AUDIENCE,
            "EXTENSION_ALLOW_INSECURE_HTTP": "true", "JWKS_MIN_REFETCH_SECONDS": "0", **extra}


import pytest  # noqa: E402 - the fixtures below are imported by the test modules that use them


@pytest.fixture
def extensions(server):
    """Save extension definitions for one test; all removed (and breakers reset) afterwards."""
    from shared.extensions import caller, config

    saved: list[str] = []

    def add(**definition):
        ext = config.save(server.storage, server.settings, {"resource": AUDIENCE, **definition})
        if ext["name"] not in saved:
            saved.append(ext["name"])
        return ext

    caller.reset_breakers()
    yield add
    for name in saved:
        config.delete(server.storage, name)
    caller.reset_breakers()


@pytest.fixture
def hostile():
    with ExtensionServer() as ext:
        yield ext


@pytest.fixture
def sample(server, tmp_path):
    """The sample extension app (samples/extensions) serving on loopback, with an empty roles file: (base url, roles path)."""
    roles = tmp_path / "roles.json"
    roles.write_text("{}")
    with sample_serve_module().running(sample_settings(server, ROLES_FILE=str(roles))) as base:
        yield base, roles
