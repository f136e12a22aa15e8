"""The wire protocol, independent of the Functions runtime.

``functions/`` turns an ``azure.functions.HttpRequest`` into a
:class:`Request`, calls :func:`handle` with the endpoint's handler, and turns
the :class:`Response` back. Everything a client can observe about transport
lives here once: form parsing and its rejections, the contract's error JSON,
CORS, request/correlation ids and the one log line per request.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import re
import time
import uuid
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl

from shared.protocol import errors
from shared.protocol.context import Context, count_storage_op, current, enter, leave  # noqa: F401 - current/count re-exported
from shared.settings import Settings, SettingsError, get_settings
from shared.storage.tables import StorageUnavailable

log = logging.getLogger("nativeauth.request")

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 64
MAX_VALUE_CHARS = 8192
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
_HEADER_TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")


@dataclasses.dataclass
class Request:
    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]
    body: bytes
    client_ip: str | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclasses.dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON; bytes/str -> as is
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


class Form:
    """A parsed form body. Every value is a str; each name appears once."""

    def __init__(self, fields: Mapping[str, str]):
        self._fields = dict(fields)

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._fields.get(name)
        return default if value is None or value == "" else value

    def require(self, name: str, error: type[errors.AuthError] = errors.InvalidRequest) -> str:
        value = self.get(name)
        if value is None:
            raise error(f"The request body must contain the '{name}' parameter.")
        return value

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def names(self) -> list[str]:
        return list(self._fields)


def _body_text(request: Request, settings: Settings, content_type: str) -> str:
    """The body as text, after the checks every body passes: its content type, its size, UTF-8."""
    ctype = (request.header("content-type") or "").split(";")[0].strip().lower()
    if ctype != content_type:
        raise errors.InvalidRequest(f"The request body must be {content_type}.")
    if len(request.body) > settings.max_body_bytes:
        raise errors.InvalidRequest("The request body is too large.")
    try:
        return request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("The request body is not valid UTF-8.") from None


def parse_form(request: Request, settings: Settings, *, allow_query: bool = False) -> Form:
    """Strict form parsing: content type, size, UTF-8, one value per name."""
    text = _body_text(request, settings, FORM_CONTENT_TYPE)
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("The request body contains percent-encoded bytes that are not valid UTF-8.") from None
    except ValueError:
        raise errors.InvalidRequest("The request body is not a valid form or has too many fields.") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise errors.InvalidRequest(f"The parameter '{name}' appears more than once.")
        if len(value) > MAX_VALUE_CHARS:
            raise errors.InvalidRequest(f"The parameter '{name}' is too long.")
        if "\x00" in value or "\x00" in name:
            raise errors.InvalidRequest(f"The parameter '{name}' contains a NUL character.")
        fields[name] = value
    if allow_query:
        for name, value in request.query.items():
            fields.setdefault(name, value)
    ctx = current()
    if ctx is not None and fields.get("ui_locales"):
        ctx.locale = fields["ui_locales"][:100]  # the OIDC parameter wins over Accept-Language
    return Form(fields)


def parse_json(request: Request, settings: Settings, *, required: bool = True) -> dict[str, Any]:
    """A JSON object body (the account API): content type, size, UTF-8, no
    duplicate names, an object. An empty body is ``{}`` unless ``required``."""
    if not request.body and not required:
        return {}
    text = _body_text(request, settings, "application/json")

    def no_duplicates(pairs):
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise errors.InvalidRequest(f"The name '{key[:40]}' appears more than once.")
            seen[key] = value
        return seen

    try:
        data = _strict_json(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        raise errors.InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_json(text: str, **kwargs: Any) -> Any:
    """``json.loads`` without Python's extensions: no ``NaN``/``Infinity``, no
    number that overflows to infinity, and no string that is not Unicode
    (a lone surrogate written as ``\\ud800``: valid JSON syntax, but no text
    can hold it, and hashing, storing or signing it fails later)."""
    data = json.loads(text, parse_constant=_no_constant, **kwargs)
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string that is not Unicode") from None
        elif isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            raise ValueError("a number out of range")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


def json_field(value: str, name: str) -> Any:
    """A form field holding JSON (``attributes``, ``claims``). Malformed or
    absurdly nested JSON, or JSON no text can hold, is the client's mistake:
    ``invalid_request``."""
    try:
        return _strict_json(value)
    except (ValueError, RecursionError):
        raise errors.InvalidRequest(f"The {name} parameter is not valid JSON.") from None


def split_list(value: str | None) -> list[str]:
    """Space- or comma-separated list (capabilities come in both forms, §8 #1)."""
    if not value:
        return []
    return [v for v in re.split(r"[\s,]+", value.strip()) if v]


# ---------------------------------------------------------------- responses

def _timestamp(now: float | None = None) -> str:
    return _dt.datetime.fromtimestamp(now or time.time(), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def error_body(exc: errors.AuthError, ctx: Context) -> dict[str, Any]:
    stamp = _timestamp()
    code = exc.error_codes[0] if exc.error_codes else 0
    body: dict[str, Any] = {
        "error": exc.error,
        "error_description": (
            f"AADSTS{code}: {exc.description}\r\nTrace ID: {ctx.request_id}\r\n"
            f"Correlation ID: {ctx.correlation_id}\r\nTimestamp: {stamp}"
        ),
        "error_codes": list(exc.error_codes),
        "timestamp": stamp,
        "trace_id": ctx.request_id,
        "correlation_id": ctx.correlation_id,
    }
    if exc.suberror:
        body["suberror"] = exc.suberror
    body.update(exc.extra)
    return body


def error_response(exc: errors.AuthError, ctx: Context) -> Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **exc.headers}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after))
    return Response(exc.status, error_body(exc, ctx), headers)


def redirect_response(reason: str) -> Response:
    """The web-fallback answer (HTTP 200, contract §1 and §5.8)."""
    return Response(200, {"challenge_type": "redirect", "redirect_reason": reason})


def ok(body: dict[str, Any]) -> Response:
    return Response(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


# ---------------------------------------------------------------- CORS

def origin_allowed(origin: str | None, settings: Settings) -> bool:
    if not origin:
        return False
    origin = origin.rstrip("/")
    for allowed in settings.cors_allowed_origins:
        if allowed == "*" or allowed == origin:
            return True
        if allowed.endswith(":*"):
            base = allowed[:-2]
            if origin == base or (origin.startswith(base + ":") and origin[len(base) + 1:].isdigit()):
                return True
    return False


def cors_headers(request: Request, settings: Settings) -> dict[str, str]:
    origin = request.header("origin")
    if not origin_allowed(origin, settings):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,  # echo, never "*" with credentials
        "Access-Control-Expose-Headers": "x-ms-request-id, client-request-id, Retry-After, WWW-Authenticate",
        "Vary": "Origin",
    }


def preflight(request: Request, settings: Settings, methods: str) -> Response:
    headers = cors_headers(request, settings)
    if not headers:
        return Response(403, {"error": "invalid_request", "error_description": "Origin not allowed."})
    asked = request.header("access-control-request-headers") or ""
    names = [h.strip() for h in asked.split(",") if h.strip()]
    safe = [h for h in names if _HEADER_TOKEN_RE.match(h)][:50]
    headers.update({
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": ", ".join(safe) if safe else "content-type",
        "Access-Control-Max-Age": "600",
    })
    return Response(204, None, headers, content_type="text/plain")


# ---------------------------------------------------------------- pipeline

Handler = Callable[[Request, Settings], Response]


def client_ip_of(request: Request, settings: Settings) -> str | None:
    """The caller's IP: the entry the trusted front end added to
    X-Forwarded-For (counting ``trusted_proxy_hops`` from the right), so a
    client cannot choose its own IP by sending the header (A43)."""
    entries = [e.strip() for e in (request.header("x-forwarded-for") or "").split(",") if e.strip()]
    hops = settings.trusted_proxy_hops
    if not entries or hops == 0:
        return request.client_ip
    candidate = entries[-hops] if len(entries) >= hops else entries[0]
    return parse_ip(candidate)


def parse_ip(value: str) -> str | None:
    """An address as proxies write it in X-Forwarded-For: ``1.2.3.4``,
    ``1.2.3.4:5678`` (App Service adds ports), ``2001:db8::1``,
    ``[2001:db8::1]:443``, ``::ffff:1.2.3.4`` (IPv4-mapped: its IPv4 address)."""
    import ipaddress

    text = value.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1 and "." in text:
        text = text.split(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _new_context(request: Request) -> Context:
    request_id = str(uuid.uuid4())
    supplied = request.header("client-request-id") or request.query.get("client-request-id")
    correlation_id = supplied if supplied and _ID_RE.match(supplied) else request_id
    locale = request.header("accept-language")
    return Context(request_id, correlation_id, request.client_ip, locale)


def _misconfigured(name: str, request: Request, exc: Exception) -> Response:
    """Settings that cannot be used (missing, malformed, an unresolved Key Vault
    reference): nothing is issued; /health says why (setting names, never
    values); every other endpoint answers 503 in the contract's shape."""
    log.error("settings invalid, serving nothing: %s", exc)
    ctx = _new_context(request)
    if name == "health":
        response = Response(503, {"status": "misconfigured", "reason": str(exc)}, {"Retry-After": "30"})
    else:
        response = error_response(errors.ServiceUnavailable(
            "The service is not configured correctly (see /api/health).", retry_after=30), ctx)
    response.headers.setdefault("x-ms-request-id", ctx.request_id)
    response.headers.setdefault("client-request-id", ctx.correlation_id)
    return response


def handle(name: str, request: Request, handler: Handler, *, methods: str = "POST",
           settings: Settings | None = None,
           url_token_guard: Callable[[str, Settings], None] | None = None) -> Response:
    """Run one endpoint: CORS, method check, errors, ids and the log line.
    ``url_token_guard`` is called with a ``continuation_token`` found in the
    request URL, after the request, whatever its outcome (it burns the token:
    URLs are logged)."""
    if settings is None:
        try:
            settings = get_settings()
        except SettingsError as exc:
            return _misconfigured(name, request, exc)
    request.client_ip = client_ip_of(request, settings)
    ctx = _new_context(request)
    token = enter(ctx)
    started = time.perf_counter()
    try:
        if request.method == "OPTIONS":
            response = preflight(request, settings, methods + ", OPTIONS")
            ctx.outcome = "preflight"
        elif request.method not in methods.split(", "):
            exc = errors.MethodNotAllowed(f"This endpoint only accepts {methods}.", allow=methods + ", OPTIONS")
            response = error_response(exc, ctx)
            response.headers["Allow"] = exc.allow
            ctx.outcome = "method_not_allowed"
        else:
            try:
                response = handler(request, settings)
                ctx.outcome = ctx.outcome or ("redirect" if isinstance(response.body, dict) and response.body.get("challenge_type") == "redirect" else "ok")
            except errors.AuthError as exc:
                response = error_response(exc, ctx)
                ctx.outcome = exc.suberror or exc.error
                if isinstance(exc, errors.MethodNotAllowed):
                    response.headers["Allow"] = exc.allow
    except Exception:  # noqa: BLE001 - the client gets a generic error, the log gets the type
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, StorageUnavailable):
            response = error_response(errors.ServiceUnavailable(retry_after=5), ctx)
            ctx.outcome = "storage_unavailable"
        elif type(exc).__name__ == "KeyUnreadable":  # tokens.KeyUnreadable: a secret changed without the procedure
            log.error("signing keys unreadable in %s: %s", name, exc)
            response = error_response(errors.ServiceUnavailable(
                "The service cannot sign tokens right now (see /api/health).", retry_after=30), ctx)
            ctx.outcome = "signing_keys_unreadable"
        else:
            log.error("unhandled %s in %s (correlation %s)", type(exc).__name__, name, ctx.correlation_id,
                      exc_info=settings.is_local)
            response = error_response(errors.ServerError(), ctx)
            ctx.outcome = "server_error"
    finally:
        if url_token_guard is not None and request.method != "OPTIONS" and request.query.get("continuation_token"):
            try:
                url_token_guard(request.query["continuation_token"], settings)
            except Exception as exc:  # noqa: BLE001 - never fails the answer; logged
                log.warning("continuation token in a URL not burnt: %s", type(exc).__name__)
        leave(token)
    response.headers.setdefault("x-ms-request-id", ctx.request_id)
    response.headers.setdefault("client-request-id", ctx.correlation_id)
    response.headers.update(cors_headers(request, settings))
    log.info(
        "request %s",
        json.dumps({
            "function": name, "status": response.status, "outcome": ctx.outcome,
            "correlation_id": ctx.correlation_id, "request_id": ctx.request_id,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "storage_ops": ctx.storage_ops,
        }, separators=(",", ":")),
    )
    if settings.is_local:  # for the benchmark and tests; not shown in Azure
        response.headers["x-storage-ops"] = str(ctx.storage_ops)
        if settings.storage_trace:
            response.headers["x-storage-trace"] = ",".join(ctx.storage_trace)[:2000]
    return response
