"""/register/v1.0/*: just-in-time registration of a second-factor method."""

import azure.functions as func

from shared import register

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("register_introspect")
@bp.route(route="register/v1.0/introspect", methods=["POST", "OPTIONS"], auth_level=ANON)
def introspect(req: func.HttpRequest) -> func.HttpResponse:
    return serve("register_introspect", req, register.introspect)


@bp.function_name("register_challenge")
@bp.route(route="register/v1.0/challenge", methods=["POST", "OPTIONS"], auth_level=ANON)
def challenge(req: func.HttpRequest) -> func.HttpResponse:
    return serve("register_challenge", req, register.challenge)


@bp.function_name("register_continue")
@bp.route(route="register/v1.0/continue", methods=["POST", "OPTIONS"], auth_level=ANON)
def continue_(req: func.HttpRequest) -> func.HttpResponse:
    return serve("register_continue", req, register.continue_)
