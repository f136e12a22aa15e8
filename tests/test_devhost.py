"""Tests for devhost, the local stand-in for `func start`. Self-contained (no conftest fixtures)."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request

import azure.functions as func
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devhost.server import LocalHost, functions_of

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
timer_calls: list = []


def _echo(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({
        "method": req.method, "url": req.url, "params": dict(req.params),
        "route_params": dict(req.route_params), "headers": dict(req.headers),
        "body": req.get_body().decode("latin-1"),
    }), mimetype="application/json")


@app.route(route="oauth2/v2.0/token", methods=["POST"])
def token(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("token", status_code=200)


@app.route(route="echo/{name}", methods=["GET", "POST", "PUT"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req)


@app.route(route="items/{id:int}", methods=["GET"])
def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"id={req.route_params['id']}")


@app.route(route="items/{slug:alpha}", methods=["GET"])
def item_by_slug(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"slug={req.route_params['slug']}")


@app.route(route="items/special", methods=["GET"])
def item_special(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("special")


@app.route(route="items/{id:int}", methods=["DELETE"])
def item_delete(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(status_code=204)


@app.route(route="greet/{who?}", methods=["GET"], trigger_arg_name="request")
def greet(request: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"hello {request.route_params.get('who', 'nobody')}")


@app.route(route="files/{*rest}")
def files(req: func.HttpRequest) -> func.HttpResponse:
    return _echo(req)


@app.route(route="styled", methods=["GET", "HEAD"])
def styled(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse('{"ok": true}', status_code=201, mimetype="application/json",
                             charset="utf-8",
                             headers={"X-Custom": "yes", "Cache-Control": "no-store"})


@app.route(route="explicit", methods=["GET"])
def explicit(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(b"<x/>", headers={"Content-Type": "application/xml"})


@app.route(route="plain", methods=["GET"])
def plain(req: func.HttpRequest) -> str:
    return "just text"


@app.route(route="nothing", methods=["GET"])
def nothing(req: func.HttpRequest) -> None:
    return None


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret-token-do-not-leak")


@app.route(route="async/{name}", methods=["GET"])
async def async_fn(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0.01)
    return func.HttpResponse(f"async {req.route_params['name']}")


_together = threading.Barrier(5)


@app.route(route="together", methods=["GET"])
def together(req: func.HttpRequest) -> func.HttpResponse:
    """Answers only once five requests are in handlers at the same time (no wall-clock bound to judge)."""
    try:
        _together.wait(8)    # under the client's 10 s timeout
    except threading.BrokenBarrierError:
        return func.HttpResponse("not concurrent", status_code=500)
    return func.HttpResponse(threading.current_thread().name)


@app.route(route="nightly-cleanup-http", methods=["GET"])
def not_a_timer(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("x")


@app.timer_trigger(schedule="0 0 3 * * *", arg_name="timer", run_on_startup=False)
def nightly_cleanup(timer: func.TimerRequest) -> None:
    timer_calls.append(timer)
    return "cleaned"


fallback_app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@fallback_app.route(route="{*path}")
def fallback(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"fallback": req.route_params.get("path", "")}),
                             status_code=404, mimetype="application/json")


@fallback_app.route(route="hello", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("hello")


# --- helpers ---------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(url, method="GET", body=None, headers=None, context=None) -> Response:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.headers, err.read())


@pytest.fixture(scope="module")
def host():
    with LocalHost(app, route_prefix="api") as h:
        yield h


# --- tests -----------------------------------------------------------------

def test_base_url_and_function_names(host):
    assert host.base_url == f"http://127.0.0.1:{host.port}/api"
    assert "nightly_cleanup" in host.function_names()
    assert "token" in host.function_names()
    assert f"token: [POST] http://127.0.0.1:{host.port}/api/oauth2/v2.0/token" in host.describe()
    assert "nightly_cleanup: timerTrigger" in host.describe()


def test_functions_enumerated_once():
    a = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    a.route(route="x")(lambda req: "x")
    calls = []
    original = a.get_functions
    a.get_functions = lambda: calls.append(1) or original()
    LocalHost(a, route_prefix="api")
    LocalHost(a, route_prefix="api")
    assert len(calls) == 1 and functions_of(a) is functions_of(a)


def test_route_prefix_from_host_json(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps(
        {"version": "2.0", "extensions": {"http": {"routePrefix": "v1"}}}))
    assert LocalHost(app, host_json_path=tmp_path / "host.json").base_url.endswith(":0/v1")
    (tmp_path / "empty.json").write_text(json.dumps({"extensions": {"http": {"routePrefix": ""}}}))
    h = LocalHost(app, host_json_path=tmp_path / "empty.json")
    assert h.base_url == "http://127.0.0.1:0"
    assert h.resolve("POST", "/oauth2/v2.0/token")[0].name == "token"
    assert LocalHost(app, host_json_path=tmp_path / "missing.json").route_prefix == "api"


def test_literal_route_and_methods(host):
    r = request(host.base_url + "/oauth2/v2.0/token", "POST", body=b"grant_type=x")
    assert (r.status, r.body) == (200, b"token")
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    r = request(host.base_url + "/OAuth2/v2.0/Token", "POST", body=b"")
    assert r.status == 200  # literals are case-insensitive, like ASP.NET routing


def test_405_with_allow_header(host):
    r = request(host.base_url + "/oauth2/v2.0/token")
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert r.json()["error"] == "method_not_allowed"
    r = request(host.base_url + "/items/5", "PUT", body=b"")
    assert r.status == 405 and r.headers["Allow"] == "GET, DELETE"


def test_404(host):
    for path in ("/api/nope", "/api/oauth2/v2.0", "/api/items/5/extra", "/other/echo/x", "/"):
        r = request(f"http://127.0.0.1:{host.port}{path}")
        assert r.status == 404, path
        assert r.json()["error"] == "not_found"
        assert r.headers["Content-Type"].startswith("application/json")


def test_echo_params_headers_body(host):
    r = request(host.base_url + "/echo/J%C3%BCrgen%2Fx?a=1&a=2&b=&c=hello%20world", "POST",
                body=b'{"k": "v"}',
                headers={"X-Request-Id": "abc", "Content-Type": "application/json"})
    data = r.json()
    assert r.status == 200
    assert data["method"] == "POST"
    assert data["url"] == host.base_url + "/echo/J%C3%BCrgen%2Fx?a=1&a=2&b=&c=hello%20world"
    assert data["params"] == {"a": "1", "b": "", "c": "hello world"}
    assert data["route_params"] == {"name": "Jürgen/x"}
    assert data["headers"]["x-request-id"] == "abc"
    assert data["headers"]["content-type"] == "application/json"
    assert data["headers"]["host"] == f"127.0.0.1:{host.port}"
    assert data["body"] == '{"k": "v"}'


def test_route_constraints_and_precedence(host):
    assert request(host.base_url + "/items/42").body == b"id=42"
    assert request(host.base_url + "/items/-7").body == b"id=-7"
    assert request(host.base_url + "/items/abc").body == b"slug=abc"
    assert request(host.base_url + "/items/special").body == b"special"  # literal wins
    assert request(host.base_url + "/items/a1").status == 404  # neither int nor alpha
    assert request(host.base_url + "/items/99999999999").status == 404  # out of int32 range
    r = request(host.base_url + "/items/42", "DELETE")
    assert r.status == 204 and r.body == b""


def test_optional_parameter_and_custom_trigger_name(host):
    assert request(host.base_url + "/greet/ann").body == b"hello ann"
    assert request(host.base_url + "/greet").body == b"hello nobody"
    assert request(host.base_url + "/greet/").body == b"hello nobody"


def test_catch_all_and_default_methods(host):
    data = request(host.base_url + "/files/a/b/c.txt?x=1").json()
    assert data["route_params"] == {"rest": "a/b/c.txt"} and data["params"] == {"x": "1"}
    assert request(host.base_url + "/files").json()["route_params"] == {}
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):  # methods=None: all
        assert request(host.base_url + "/files/x", method).json()["method"] == method


def test_response_headers_and_content_type(host):
    r = request(host.base_url + "/styled")
    assert r.status == 201
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["X-Custom"] == "yes" and r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Length"] == str(len(r.body))
    assert r.json() == {"ok": True}
    r = request(host.base_url + "/styled", "HEAD")
    assert r.status == 201 and r.body == b"" and r.headers["Content-Length"] == "12"
    r = request(host.base_url + "/explicit")
    assert r.headers["Content-Type"] == "application/xml" and r.body == b"<x/>"


def test_str_and_none_returns(host):
    r = request(host.base_url + "/plain")
    assert (r.status, r.body, r.headers["Content-Type"]) == (200, b"just text", "text/plain; charset=utf-8")
    r = request(host.base_url + "/nothing")
    assert (r.status, r.body) == (204, b"")


def test_500_does_not_leak_traceback(host, caplog):
    with caplog.at_level(logging.ERROR, logger="devhost"):
        r = request(host.base_url + "/boom?password=hunter2")
    assert r.status == 500
    assert r.json()["error"] == "internal_server_error"
    assert b"secret-token" not in r.body and b"Traceback" not in r.body
    assert "secret-token-do-not-leak" in caplog.text  # the traceback goes to the log


def test_access_log_has_no_query_or_body(host, caplog):
    def logged():
        return any(r.name == "devhost.access" and r.getMessage().startswith("POST /api/echo/x 200 ")
                   and r.getMessage().endswith("ms") for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="devhost.access"):
        request(host.base_url + "/echo/x?password=hunter2", "POST", body=b"secret-body")
        deadline = time.monotonic() + 5  # the line is written just after the response is sent
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert logged()
    assert "hunter2" not in caplog.text and "secret-body" not in caplog.text


def test_async_function(host):
    r = request(host.base_url + "/async/bob")
    assert (r.status, r.body) == (200, b"async bob")


def test_413_for_oversized_body():
    with LocalHost(app, route_prefix="api", max_body_bytes=1024) as h:
        assert request(h.base_url + "/echo/x", "POST", body=b"x" * 1024).status == 200
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
        # Announce a huge body but send only a little: the host must answer without reading it all.
        conn.putrequest("POST", "/api/echo/x")
        conn.putheader("Content-Length", str(50 * 1024 * 1024))
        conn.endheaders(b"x" * 100)
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"] == "payload_too_large"
        assert resp.getheader("Connection") == "close"
        conn.close()


def test_chunked_body_rejected(host):
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    conn.request("POST", "/api/echo/x", body=iter([b"abc"]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 411
    conn.close()


def test_keep_alive_reuses_connection(host):
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    for i in range(3):
        conn.request("POST", f"/api/echo/{i}", body=b"body%d" % i)
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert (resp.status, data["body"], data["route_params"]["name"]) == (200, f"body{i}", str(i))
        if i == 0:
            sock = conn.sock
        assert conn.sock is sock  # the same TCP connection every time
    conn.request("GET", "/api/nothing")
    resp = conn.getresponse()
    assert resp.status == 204 and resp.read() == b""
    conn.request("GET", "/api/missing")
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["error"] == "not_found"
    conn.request("GET", "/api/plain")
    assert conn.getresponse().read() == b"just text" and conn.sock is sock
    conn.close()


def test_requests_run_concurrently(host):
    results = []

    def worker():
        results.append(request(host.base_url + "/together"))

    _together.reset()
    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status for r in results] == [200] * 5, [r.body for r in results]   # all five in handlers at once
    assert len({r.body for r in results}) == 5  # five different handler threads


def test_invoke_timer(host):
    timer_calls.clear()
    assert host.invoke_timer("nightly_cleanup") == "cleaned"
    assert len(timer_calls) == 1
    assert isinstance(timer_calls[0], func.TimerRequest) and timer_calls[0].past_due is False
    host.invoke_timer("nightly_cleanup", past_due=True)
    assert timer_calls[1].past_due is True
    with pytest.raises(ValueError):
        host.invoke_timer("not_a_timer")
    with pytest.raises(KeyError):
        host.invoke_timer("no_such_function")


def test_app_catch_all_fallback_has_lowest_precedence():
    with LocalHost(fallback_app, route_prefix="api") as h:
        assert request(h.base_url + "/hello").body == b"hello"
        r = request(h.base_url + "/nope/deeper")
        assert r.status == 404 and r.json() == {"fallback": "nope/deeper"}
        assert request(h.base_url + "/hello", "POST", body=b"").json() == {"fallback": "hello"}


def _self_signed_cert(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls(tmp_path):
    cert_file, key_file = _self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))
    with LocalHost(app, route_prefix="api", ssl_context=server_ctx) as h:
        assert h.base_url.startswith("https://127.0.0.1:")
        # A plain-http client and a client that does not trust the cert must not break the host.
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://127.0.0.1:{h.port}/api/plain", timeout=5).read()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(h.base_url + "/plain", timeout=5,
                                   context=ssl.create_default_context()).read()
        data = request(h.base_url + "/echo/x?q=1", "POST", body=b"over tls", context=client_ctx).json()
        assert data["url"] == h.base_url + "/echo/x?q=1" and data["body"] == "over tls"
        conn = http.client.HTTPSConnection("127.0.0.1", h.port, timeout=10, context=client_ctx)
        for _ in range(2):  # keep-alive over TLS
            conn.request("GET", "/api/plain")
            assert conn.getresponse().read() == b"just text"
        conn.close()


def test_stop_closes_idle_keep_alive_connections():
    h = LocalHost(app, route_prefix="api").start()
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    conn.request("GET", "/api/plain")
    assert conn.getresponse().read() == b"just text"
    started = time.perf_counter()
    h.stop()
    assert time.perf_counter() - started < 5
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/api/plain")
        conn.getresponse()
    conn.close()
