"""The one place that converts between azure.functions and shared.protocol."""

from __future__ import annotations

from typing import Callable

import azure.functions as func

from shared import protocol

ANON = func.AuthLevel.ANONYMOUS


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


def serve(name: str, req: func.HttpRequest, handler: Callable, methods: str = "POST") -> func.HttpResponse:
    return to_response(protocol.handle(name, to_request(req), handler, methods=methods))
