"""/oauth2/v2.0/initiate and /oauth2/v2.0/challenge."""

import azure.functions as func

from shared import signin

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("signin_initiate")
@bp.route(route="oauth2/v2.0/initiate", methods=["POST", "OPTIONS"], auth_level=ANON)
def initiate(req: func.HttpRequest) -> func.HttpResponse:
    return serve("signin_initiate", req, signin.initiate)


@bp.function_name("signin_challenge")
@bp.route(route="oauth2/v2.0/challenge", methods=["POST", "OPTIONS"], auth_level=ANON)
def challenge(req: func.HttpRequest) -> func.HttpResponse:
    return serve("signin_challenge", req, signin.challenge)


@bp.function_name("signin_introspect")
@bp.route(route="oauth2/v2.0/introspect", methods=["POST", "OPTIONS"], auth_level=ANON)
def introspect(req: func.HttpRequest) -> func.HttpResponse:
    return serve("signin_introspect", req, signin.introspect)
