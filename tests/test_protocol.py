"""Wire basics over HTTP (contract §1): form bodies only, the error shape,
request/correlation ids, CORS, 404/405, and no 500 for client mistakes."""

from __future__ import annotations

import re

import pytest

ERROR_KEYS = {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def assert_error(resp, error: str, status: int = 400, code: int | None = None):
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith("application/json")
    assert ERROR_KEYS <= set(resp.body), resp.body
    assert resp.body["error"] == error
    assert isinstance(resp.body["error_codes"], list) and all(isinstance(c, int) for c in resp.body["error_codes"])
    assert re.match(r"^AADSTS\d+: ", resp.body["error_description"])
    assert "Traceback" not in resp.raw.decode("utf-8", "replace")
    if code is not None:
        assert code in resp.body["error_codes"]
    return resp.body


def test_empty_post_is_invalid_request(api):
    r = api.request("POST", "oauth2/v2.0/initiate")
    assert_error(r, "invalid_request")


def test_missing_username_uses_the_description_the_sdks_match(api):
    body = assert_error(api.post("oauth2/v2.0/initiate", challenge_type="password redirect"), "invalid_request", code=90100)
    assert "username parameter is empty or not valid" in body["error_description"]


@pytest.mark.parametrize("ctype,body", [
    ("application/json", b'{"client_id":"x"}'),
    ("text/plain", b"client_id=x"),
    ("", b"client_id=x"),
])
def test_wrong_content_type_is_rejected(api, ctype, body):
    headers = {"Content-Type": ctype}
    body_ = assert_error(api.request("POST", "oauth2/v2.0/initiate", body, headers), "invalid_request")
    assert "x-www-form-urlencoded" in body_["error_description"]


def test_charset_parameter_is_accepted(api):
    # MSAL's refresh sends "application/x-www-form-urlencoded;charset=utf-8".
    r = api.request("POST", "oauth2/v2.0/initiate", b"client_id=00000000-0000-0000-0000-000000000001",
                    {"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
    assert_error(r, "invalid_request", code=90100)  # got past parsing to the username check


@pytest.mark.parametrize("raw,needle", [
    (b"client_id=\xff\xfe&username=a", "UTF-8"),
    (b"client_id=%ff%fe&username=a", "UTF-8"),
    (b"client_id=a&client_id=b", "more than once"),
    (b"username=a%00b&client_id=x", "NUL"),
    (b"&".join(b"f%d=1" % i for i in range(100)), "too many"),
    (b"username=" + b"a" * 9000, "too long"),
])
def test_malformed_forms_are_invalid_request(api, raw, needle):
    body = assert_error(api.request("POST", "oauth2/v2.0/initiate", raw, FORM), "invalid_request")
    assert needle in body["error_description"]


def test_body_over_the_app_limit_is_invalid_request(api):
    r = api.request("POST", "oauth2/v2.0/token", b"x=" + b"a" * (70 * 1024), FORM)
    body = assert_error(r, "invalid_request")
    assert "too large" in body["error_description"]


def test_body_over_the_host_limit_is_413(api):
    r = api.request("POST", "oauth2/v2.0/token", b"x=" + b"a" * (2 * 1024 * 1024), FORM)
    assert r.status == 413


def test_unknown_client_is_unauthorized_client(api):
    assert_error(api.post("oauth2/v2.0/initiate", client_id="11111111-2222-3333-4444-555555555555",
                          username="a@example.com", challenge_type="password redirect"), "unauthorized_client")


@pytest.mark.parametrize("client_id", ["a/b", "a#b", "x" * 200, "a?b", "ü"])
def test_malformed_client_id_is_unauthorized_client_not_500(api, client_id):
    assert_error(api.post("oauth2/v2.0/initiate", client_id=client_id, username="a@example.com",
                          challenge_type="password redirect"), "unauthorized_client")


def test_every_response_has_a_request_id_and_honours_client_request_id(api):
    r = api.post("oauth2/v2.0/initiate", headers={"client-request-id": "0f3c2c5e-1111-2222-3333-444455556666"})
    assert re.match(r"^[0-9a-f-]{36}$", r.headers["x-ms-request-id"])
    assert r.body["correlation_id"] == "0f3c2c5e-1111-2222-3333-444455556666"
    assert r.body["trace_id"] == r.headers["x-ms-request-id"]
    assert "Correlation ID: 0f3c2c5e-1111-2222-3333-444455556666" in r.body["error_description"]


def test_invalid_client_request_id_is_replaced(api):
    r = api.post("oauth2/v2.0/initiate", headers={"client-request-id": "bad id with spaces"})
    assert r.body["correlation_id"] == r.headers["x-ms-request-id"]


def test_unknown_path_is_404_json(api):
    body = assert_error(api.get("no/such/thing"), "not_found", status=404)
    assert "no/such/thing" in body["error_description"]
    assert_error(api.post("oauth2/v2.0/nope"), "not_found", status=404)


def test_wrong_method_on_an_endpoint_is_405_json(api):
    r = api.get("oauth2/v2.0/initiate")
    assert_error(r, "invalid_request", status=405)
    assert "POST" in r.headers.get("allow", "")
    assert_error(api.request("PUT", "signup/v1.0/start", b"", FORM), "invalid_request", status=405)


def test_cors_preflight_from_localhost_is_answered(api):
    r = api.request("OPTIONS", "oauth2/v2.0/initiate", None, {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "client-request-id,x-client-cpu,x-client-current-telemetry,"
                                          "x-client-last-telemetry,x-client-os,x-client-sku,x-client-ver",
    })
    assert r.status == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"client-request-id", "x-client-sku", "x-client-current-telemetry"} <= allowed


def test_cors_preflight_from_another_origin_is_refused(api):
    r = api.request("OPTIONS", "oauth2/v2.0/initiate", None, {
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status == 403
    assert "access-control-allow-origin" not in r.headers


def test_cors_headers_on_post_expose_the_request_id(api):
    r = api.post("oauth2/v2.0/initiate", headers={"Origin": "http://localhost:5173"})
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "x-ms-request-id" in r.headers["access-control-expose-headers"]
    r = api.post("oauth2/v2.0/initiate", headers={"Origin": "http://localhost.evil.example:80"})
    assert "access-control-allow-origin" not in r.headers


def test_health_reports_storage(api):
    r = api.get("health")
    assert r.status == 200 and r.body == {"status": "ok", "storage": "reachable", "signing_keys": "readable"}


def test_errors_are_never_cached(api):
    r = api.post("oauth2/v2.0/initiate")
    assert r.headers["cache-control"] == "no-store"


def test_client_ip_in_every_form_a_proxy_writes():
    """X-Forwarded-For entries as App Service and other proxies write them: with a
    port, bracketed IPv6 with a port, IPv4-mapped IPv6 (counted as its IPv4)."""
    from shared.protocol.identifiers import ip_source
    from shared.protocol.http import parse_ip

    assert parse_ip("203.0.113.7") == "203.0.113.7"
    assert parse_ip("203.0.113.7:50123") == "203.0.113.7"
    assert parse_ip("[2001:db8::7]:443") == "2001:db8::7"
    assert parse_ip("2001:db8::7") == "2001:db8::7"
    assert parse_ip("::ffff:203.0.113.7") == "203.0.113.7"
    assert parse_ip("unknown") is None and parse_ip("") is None
    assert ip_source("2001:db8:1:2:3:4:5:6") == ip_source("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert ip_source("203.0.113.7") == "203.0.113.7"
