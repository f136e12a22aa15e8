"""/oauth2/v2.0/token: every grant_type."""

import azure.functions as func

from shared import signin

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("token")
@bp.route(route="oauth2/v2.0/token", methods=["POST", "OPTIONS"], auth_level=ANON)
def token(req: func.HttpRequest) -> func.HttpResponse:
    return serve("token", req, signin.token)
