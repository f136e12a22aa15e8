"""GET /openapi.json: the OpenAPI 3.1 description shipped in openapi/openapi.json.

The file is read on first use and kept in memory; it is served byte for byte
(through the same pipeline as every other endpoint: request ids, CORS, the
log line, the contract's error shape if anything goes wrong).
"""

from __future__ import annotations

import threading
from pathlib import Path

import azure.functions as func

from shared.protocol.http import Request, Response
from shared.settings import Settings

from ._http import ANON, serve

bp = func.Blueprint()

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
_cache: bytes | None = None
_lock = threading.Lock()


def document() -> bytes:
    global _cache
    with _lock:
        if _cache is None:
            _cache = DOCUMENT.read_bytes()
        return _cache


def openapi_document(request: Request, settings: Settings) -> Response:
    return Response(200, document(), {"Cache-Control": "public, max-age=3600"})


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET", "OPTIONS"], auth_level=ANON)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return serve("openapi", req, openapi_document, methods="GET")
