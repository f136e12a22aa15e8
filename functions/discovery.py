"""/.well-known/openid-configuration and the JWKS."""

import azure.functions as func

from shared import discovery

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("openid_configuration")
@bp.route(route=".well-known/openid-configuration", methods=["GET", "OPTIONS"], auth_level=ANON)
def openid_configuration(req: func.HttpRequest) -> func.HttpResponse:
    return serve("openid_configuration", req, discovery.openid_configuration, methods="GET")


@bp.function_name("jwks")
@bp.route(route="discovery/v2.0/keys", methods=["GET", "OPTIONS"], auth_level=ANON)
def jwks(req: func.HttpRequest) -> func.HttpResponse:
    return serve("jwks", req, discovery.jwks, methods="GET")
