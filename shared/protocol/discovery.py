"""OIDC discovery document and JWKS (GET, public, cacheable)."""

from __future__ import annotations

from shared.tokens import issuance as tokens
from shared.protocol.http import Request, Response
from shared.settings import Settings
from shared.storage.tables import get_storage


def openid_configuration(request: Request, settings: Settings) -> Response:
    return Response(200, tokens.openid_configuration(settings), {"Cache-Control": "public, max-age=3600"})


def jwks(request: Request, settings: Settings) -> Response:
    ring = tokens.keyring(get_storage(settings), settings)
    return Response(200, ring.jwks(), {"Cache-Control": "public, max-age=300"})
