"""A sample protected API that needs step-up: ``GET /api/sample/sensitive``.

It accepts only an access token we issued (``tokens.validate``) that carries
the authentication context ``settings.sample_auth_context`` in ``acrs``.
Without it the answer is 401 with a claims challenge in ``WWW-Authenticate``
(the Entra / CAE format): the client signs in again passing that value as the
``claims`` parameter, a policy scoped to the context demands the second
factor, and the new access token carries ``acrs``.
"""

from __future__ import annotations

import base64
import json

from shared.tokens import issuance as tokens
from shared.protocol.http import Request, Response
from shared.settings import Settings
from shared.storage.tables import get_storage


def claims_challenge(context: str) -> str:
    claims = json.dumps({"access_token": {"acrs": {"essential": True, "value": context}}}, separators=(",", ":"))
    return base64.b64encode(claims.encode()).decode()


def unauthorized(settings: Settings, error: str, description: str, context: str | None = None) -> Response:
    """401 with a ``WWW-Authenticate`` Bearer challenge; with ``context``, the
    claims challenge (Entra / CAE format) the app answers by signing in again
    with ``claims``: the one step-up answer of this service."""
    parts = [f'Bearer realm="{settings.issuer}"', f'error="{error}"', f'error_description="{description}"']
    if context:
        parts.append(f'authorization_uri="{settings.issuer}/oauth2/v2.0/authorize"')
        parts.append(f'claims="{claims_challenge(context)}"')
    return Response(401, {"error": error, "error_description": description},
                    {"WWW-Authenticate": ", ".join(parts), "Cache-Control": "no-store"})


def bearer_claims(request: Request, settings: Settings, audiences) -> dict | Response:
    """The claims of a valid access token of ours for one of ``audiences``, or the 401 answer."""
    auth = request.header("authorization") or ""
    if not auth.lower().startswith("bearer ") or len(auth) > 8192:
        return unauthorized(settings, "invalid_token", "An access token is required.")
    token = auth[7:].strip()
    storage = get_storage(settings)
    for audience in audiences:
        try:
            return tokens.validate(storage, settings, token, audience=audience)
        except tokens.InvalidToken:
            continue
    return unauthorized(settings, "invalid_token", "The access token is not valid.")


def sensitive(request: Request, settings: Settings) -> Response:
    claims = bearer_claims(request, settings, settings.resources)
    if isinstance(claims, Response):
        return claims
    context = settings.sample_auth_context
    if context not in (claims.get("acrs") or []):
        return unauthorized(settings, "insufficient_claims", "This action needs a fresh second factor.", context)
    return Response(200, {"message": "Sensitive action allowed.", "sub": claims["sub"], "acrs": claims["acrs"],
                          "amr": claims.get("amr", [])}, {"Cache-Control": "no-store"})
