"""A small local stand-in for `func start` (HTTP and timer triggers only).

It takes an ``azure.functions.FunctionApp``, routes requests the way the
Functions host does (route prefix from host.json, route templates with
optional / catch-all / constrained parameters, literal segments beating
parameters) and calls the user functions with real ``HttpRequest`` /
``TimerRequest`` objects.  Standard library only, plus azure.functions.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest

log = logging.getLogger("devhost")
access_log = logging.getLogger("devhost.access")

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
DEFAULT_MAX_BODY = 1024 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def functions_of(app) -> list:
    """``app.get_functions()``, called at most once per app instance.

    FunctionApp.get_functions() is not idempotent (a second call fails its
    duplicate-name check), so the list is cached on the app as
    ``_devhost_functions``; an app that already exposes that attribute is reused.
    """
    cached = getattr(app, "_devhost_functions", None)
    if cached is None:
        cached = list(app.get_functions())
        try:
            app._devhost_functions = cached
        except AttributeError:
            pass
    return cached


# --- route templates -------------------------------------------------------

def _is_int(v: str, bits: int) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", v)) and -(2 ** (bits - 1)) <= int(v) < 2 ** (bits - 1)


def _is_guid(v: str) -> bool:
    try:
        uuid.UUID(v)
        return True
    except ValueError:
        return False


CONSTRAINTS = {  # the common ASP.NET route constraints; others are ignored
    "int": lambda v: _is_int(v, 32),
    "long": lambda v: _is_int(v, 64),
    "alpha": lambda v: bool(re.fullmatch(r"[A-Za-z]+", v)),
    "guid": _is_guid,
    "bool": lambda v: v.lower() in ("true", "false"),
}


class _Param:
    def __init__(self, spec: str):
        self.catch_all = spec.startswith("*")
        spec = spec.lstrip("*")
        self.optional = spec.endswith("?")
        spec = spec.rstrip("?")
        spec, _, default = spec.partition("=")
        self.default = default or None
        self.name, *constraints = spec.split(":")
        self.checks = [CONSTRAINTS[c] for c in (c.split("(")[0].lower() for c in constraints)
                       if c in CONSTRAINTS]

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


class _Segment:
    """One '/'-separated piece of a template: literal, parameter(s), or both."""

    def __init__(self, text: str):
        self.params, pattern, pos = [], "", 0
        for m in re.finditer(r"\{([^{}]+)\}", text):
            pattern += re.escape(text[pos:m.start()]) + "(.+)"
            self.params.append(_Param(m.group(1)))
            pos = m.end()
        self.regex = re.compile(pattern + re.escape(text[pos:]), re.IGNORECASE | re.DOTALL)
        whole = len(self.params) == 1 and re.fullmatch(r"\{[^{}]+\}", text) is not None
        self.catch_all = whole and self.params[0].catch_all
        self.optional = whole and (self.params[0].optional or self.params[0].default is not None)
        # ASP.NET inbound precedence: lower sorts first.
        if not self.params:
            self.rank = 1
        elif not whole:
            self.rank = 2
        elif self.catch_all:
            self.rank = 5
        else:
            self.rank = 3 if self.params[0].checks else 4


class Route:
    """An HTTP-triggered function and its compiled route template."""

    def __init__(self, function, prefix: str):
        trigger = function.get_trigger()
        self.function = function
        self.name = function.get_function_name()
        self.template = (trigger.route if trigger.route is not None else self.name).strip("/")
        self.url_path = "/".join(p for p in (prefix, self.template) if p)
        methods = trigger.methods
        self.methods = (tuple(getattr(m, "value", m).upper() for m in methods)
                        if methods else ALL_METHODS)
        self.segments = [_Segment(s) for s in self.template.split("/")] if self.template else []
        self.precedence = tuple(s.rank for s in self.segments)

    def match(self, parts: list[str]) -> dict | None:
        values: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if seg.catch_all:
                p = seg.params[0]
                value = "/".join(parts[i:]) or p.default
                if value is not None:
                    if not p.accepts(value):
                        return None
                    values[p.name] = value
                return values
            if i >= len(parts):
                if not seg.optional:
                    return None
                if seg.params[0].default is not None:
                    values[seg.params[0].name] = seg.params[0].default
                continue
            m = seg.regex.fullmatch(parts[i])
            if m is None:
                return None
            for p, value in zip(seg.params, m.groups()):
                if not p.accepts(value):
                    return None
                values[p.name] = value
        return values if len(parts) <= len(self.segments) else None


# --- the host --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _wants_context(user_function) -> bool:
    """Whether a function takes the invocation context: read once per function, as the worker indexes it
    once (inspect.signature on every request was about 1 % of the host's Python time under load)."""
    return "context" in inspect.signature(user_function).parameters


def _read_route_prefix(host_json_path) -> str:
    path = Path(host_json_path) if host_json_path else Path("host.json")
    if not path.is_file():
        return "api"
    config = json.loads(path.read_text(encoding="utf-8"))
    return config.get("extensions", {}).get("http", {}).get("routePrefix", "api")


def _json(status: int, error: str, message: str, headers=()):
    body = json.dumps({"error": error, "message": message}).encode()
    return status, [("Content-Type", "application/json; charset=utf-8"), *headers], body


def _to_http(result):
    """(status, headers, body) for whatever the user function returned."""
    if result is None:
        return 204, [], b""
    if isinstance(result, str):
        return 200, [("Content-Type", "text/plain; charset=utf-8")], result.encode()
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"HTTP function returned unsupported type {type(result).__name__}")
    headers = [(k, v) for k, v in result.headers.items() if k.lower() not in _HOP_BY_HOP]
    if "content-type" not in result.headers:
        content_type = result.mimetype
        if result.charset:
            content_type += f"; charset={result.charset}"
        headers.append(("Content-Type", content_type))
    return int(result.status_code), headers, result.get_body() or b""


class LocalHost:
    """Serve a FunctionApp over HTTP(S) like the Functions host does locally."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, route_prefix: str | None = None,
                 host_json_path=None, ssl_context: ssl.SSLContext | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY, functions=None):
        self.functions = list(functions) if functions is not None else functions_of(app)
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self.max_body_bytes = max_body_bytes
        if route_prefix is None:
            route_prefix = _read_route_prefix(host_json_path)
        self.route_prefix = route_prefix.strip("/")
        self._prefix_parts = self.route_prefix.lower().split("/") if self.route_prefix else []
        self._by_name = {f.get_function_name(): f for f in self.functions}
        http_functions = [f for f in self.functions if _trigger_type(f) == "httpTrigger"]
        # Stable sort: equal precedence keeps declaration order.
        self.routes = sorted((Route(f, self.route_prefix) for f in http_functions),
                             key=lambda r: r.precedence)
        self._server = self._thread = self._loop = self._loop_thread = None
        self._loop_lock = threading.Lock()

    # lifecycle
    def start(self) -> "LocalHost":
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="devhost",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
            self._thread.join(5)
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._loop_thread.join(5)
            if not loop.is_running():
                loop.close()

    def __enter__(self) -> "LocalHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = "localhost" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/{self.route_prefix}".rstrip("/")

    def function_names(self) -> list[str]:
        return list(self._by_name)

    def describe(self) -> list[str]:
        """One line per function, formatted like `func start`."""
        lines = []
        for f in self.functions:
            name = f.get_function_name()
            route = next((r for r in self.routes if r.function is f), None)
            if route is None:
                lines.append(f"{name}: {_trigger_type(f)}")
            else:
                lines.append(f"{name}: [{','.join(route.methods)}] {self.origin}/{route.url_path}")
        return lines

    # invocation
    def invoke_timer(self, name: str, *, past_due: bool = False):
        """Run a timer-triggered function now; returns its result, raises its exceptions."""
        function = self._by_name[name]
        if _trigger_type(function) != "timerTrigger":
            raise ValueError(f"{name} is not a timer-triggered function")
        return self.call(function, TimerRequest(past_due=past_due))

    def call(self, function, trigger_value):
        """Call a function's user code with its trigger argument (sync or async)."""
        user = function.get_user_function()
        kwargs = {function.get_trigger().name: trigger_value}
        if _wants_context(user) and "context" not in kwargs:
            kwargs["context"] = SimpleNamespace(
                invocation_id=str(uuid.uuid4()), function_name=function.get_function_name(),
                function_directory=str(Path.cwd()), thread_local_storage=threading.local())
        result = user(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run_coroutine_threadsafe(_awaited(result), self._event_loop()).result()
        return result

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        # One shared loop for async functions, as in the Python worker.
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                                     name="devhost-asyncio", daemon=True)
                self._loop_thread.start()
            return self._loop

    def resolve(self, method: str, path: str):
        """(route, route_params, allowed_methods) for a request path; route None if no match."""
        raw = path.strip("/")
        parts = raw.split("/") if raw else []
        n = len(self._prefix_parts)
        if [p.lower() for p in parts[:n]] != self._prefix_parts:
            return None, None, []
        parts = [unquote(p) for p in parts[n:]]
        allowed: list[str] = []
        for route in self.routes:
            values = route.match(parts)
            if values is None:
                continue
            if method in route.methods:
                return route, values, []
            allowed += [m for m in route.methods if m not in allowed]
        return None, None, allowed

    def handle(self, method, url, path, query, headers, body):
        """(status, headers, body) for one request."""
        route, route_params, allowed = self.resolve(method, path)
        if route is None and allowed:
            allow = ", ".join(m for m in ALL_METHODS if m in allowed)
            return _json(405, "method_not_allowed", f"{method} is not allowed here",
                         [("Allow", allow)])
        if route is None:
            return _json(404, "not_found", "No function matches this path")
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(key, value)
        request = func.HttpRequest(method=method, url=url, headers=headers, params=params,
                                   route_params=route_params, body=body)
        try:
            return _to_http(self.call(route.function, request))
        except Exception:
            log.exception("Function %s failed (%s %s)", route.name, method, path)
            return _json(500, "internal_server_error", "The function failed; see the host log")


async def _awaited(awaitable):
    return await awaitable


def _trigger_type(function) -> str | None:
    return getattr(function.get_trigger(), "type", None)


class _Reject(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.response = _json(status, error, message, [("Connection", "close")])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, localhost: LocalHost):
        self.localhost = localhost
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request_thread(self, request, client_address):
        # The TLS handshake happens here, in the connection's own thread, not in accept().
        if self.localhost.ssl_context is not None:
            try:
                request.settimeout(_Handler.timeout)
                request = self.localhost.ssl_context.wrap_socket(request, server_side=True)
            except OSError as exc:  # includes ssl.SSLError
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        log.debug("Connection from %s ended with an error", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "devhost"
    timeout = 120  # idle keep-alive connections are closed after this

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format, *args):
        # The base class logs request lines, which include query strings.
        pass

    def handle_expect_100(self):
        self._expect_continue = True  # answered once the body is known to be acceptable
        return True

    def _handle(self):
        started = time.perf_counter()
        host: LocalHost = self.server.localhost
        target = urlsplit(self.path)
        path = target.path or "/"
        expect_continue = self.__dict__.pop("_expect_continue", False)
        try:
            body = self._read_body(host.max_body_bytes, expect_continue)
            authority = self.headers.get("Host") or f"{host.host}:{host.port}"
            scheme = "https" if host.ssl_context else "http"
            url = self.path if target.scheme else f"{scheme}://{authority}{self.path}"
            headers: dict[str, str] = {}
            for key, value in self.headers.items():
                key = key.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            # Like the App Service front end: append the peer address, so the
            # app's last X-Forwarded-For entry is the real client.
            peer = self.client_address[0]
            headers["x-forwarded-for"] = f"{headers['x-forwarded-for']}, {peer}" if headers.get("x-forwarded-for") else peer
            status, out_headers, out_body = host.handle(self.command, url, path, target.query,
                                                        headers, body)
        except _Reject as reject:
            status, out_headers, out_body = reject.response
        self._send(status, out_headers, out_body)
        access_log.info("%s %s %d %.1fms", self.command, path, status,
                        (time.perf_counter() - started) * 1000)
        if self.close_connection and status in (400, 411, 413):
            self._drain_and_close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _read_body(self, limit: int, expect_continue: bool) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _Reject(411, "length_required", "Chunked request bodies are not supported")
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise _Reject(400, "bad_request", "Invalid Content-Length")
        if int(length) > limit:
            raise _Reject(413, "payload_too_large", f"Request body exceeds {limit} bytes")
        if expect_continue:
            super().handle_expect_100()
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _drain_and_close(self) -> None:
        # Closing with unread request bytes makes the kernel send a RST that can destroy
        # the response in flight; read (and discard) a little before closing.
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _send(self, status: int, headers, body: bytes) -> None:
        self.send_response(status)  # adds Server and Date
        for key, value in headers:
            self.send_header(key, value)  # sets close_connection on "Connection: close"
        if status in (204, 304) or status < 200:
            body = b""
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
