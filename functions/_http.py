"""The one place that converts between azure.functions and shared.protocol."""

from __future__ import annotations

import importlib
from typing import Callable

import azure.functions as func

from shared.protocol import http as protocol

ANON = func.AuthLevel.ANONYMOUS
LAZY: list[tuple[str, str]] = []   # every lazy handler, for the test that each one resolves
# Packages the domain imports only when first needed (tokens, phone numbers, the password policy, hashing):
# the health check loads them too, so a deployment missing one is not green.
LAZY_PACKAGES = ("jwt", "phonenumbers", "zxcvbn", "argon2", "cryptography.hazmat.primitives.asymmetric.rsa")


def lazy(module: str, attr: str) -> Callable:
    """The handler ``module.attr``, imported on its first call: the Functions
    worker imports function_app to index the functions, and the domain
    modules (flows, policies, tokens) need not be loaded for that, only for
    the first request that uses them (cold start: bench/RESULTS.md §5)."""
    target: list[Callable] = []
    LAZY.append((module, attr))

    def call(*args, **kwargs):
        if not target:
            target.append(getattr(importlib.import_module(module), attr))
        return target[0](*args, **kwargs)

    call.__name__ = attr
    call.__qualname__ = f"{module}.{attr}"
    return call


_all_resolved = False


def unresolved() -> list[str]:
    """Import every lazy handler (once, then cached): the ones that fail to load.
    The health check answers 503 with them, so a broken deployment (a missing
    native wheel, an import-time error) is not green while its endpoints 500."""
    global _all_resolved
    if _all_resolved:
        return []
    broken = []
    for module, attr in list(LAZY) + [(name, "") for name in LAZY_PACKAGES]:
        try:
            loaded = importlib.import_module(module)
            if attr:
                getattr(loaded, attr)
        except Exception as exc:  # noqa: BLE001 - reported, never raised from the health check
            broken.append(f"{module}{'.' + attr if attr else ''}: {type(exc).__name__}")
    _all_resolved = not broken
    return broken


def to_request(req: func.HttpRequest) -> protocol.Request:
    headers = {k.lower(): v for k, v in req.headers.items()}
    # The client IP comes from X-Forwarded-For, read by protocol.handle with
    # the configured number of trusted proxy hops.
    return protocol.Request(
        method=req.method.upper(), url=req.url, headers=headers,
        query=dict(req.params), body=req.get_body() or b"",
    )


def to_response(resp: protocol.Response) -> func.HttpResponse:
    mimetype, charset = resp.content_type, "utf-8"
    return func.HttpResponse(
        body=resp.body_bytes(), status_code=resp.status, headers=resp.headers,
        mimetype=mimetype, charset=charset,
    )


_burn_url_token = lazy("shared.flows.state", "burn_url_token")


def serve(name: str, req: func.HttpRequest, handler: Callable, methods: str = "POST") -> func.HttpResponse:
    return to_response(protocol.handle(name, to_request(req), handler, methods=methods,
                                       url_token_guard=_burn_url_token))


def endpoint(bp: func.Blueprint, name: str, route: str, handler: Callable, methods: str = "POST",
             *, aliases: dict[str, str] | None = None, tenant_alias: bool = True) -> None:
    """Register one API endpoint as its own HTTP function (so the host and
    Application Insights see each step by name), at ``route`` and at every
    alias, each also under a tenant path segment: the SDKs build every URL
    from the app's authority, and an app may give ``https://host/api`` or a
    tenant form such as ``https://host/api/contoso.onmicrosoft.com``
    (Entra's shape; docs/sdk-compatibility.md). Routes are matched
    case-insensitively by the host (MSAL Android refreshes at ``oAuth2/v2.0/token``)."""
    verbs = [m.strip() for m in methods.split(",")] + ["OPTIONS"]
    for base, path in {name: route, **(aliases or {})}.items():
        for tenant in (False, True) if tenant_alias else (False,):
            fname = base + ("_tenant" if tenant else "")

            def run(req: func.HttpRequest) -> func.HttpResponse:
                return serve(name, req, handler, methods=methods)

            run.__name__ = fname
            bp.function_name(fname)(bp.route(route=("{tenant}/" if tenant else "") + path, methods=verbs,
                                              auth_level=ANON)(run))
