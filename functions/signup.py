"""/signup/v1.0/*: sign-up with email verification, password and attributes."""

import azure.functions as func

from shared import signup

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("signup_start")
@bp.route(route="signup/v1.0/start", methods=["POST", "OPTIONS"], auth_level=ANON)
def start(req: func.HttpRequest) -> func.HttpResponse:
    return serve("signup_start", req, signup.start)


@bp.function_name("signup_challenge")
@bp.route(route="signup/v1.0/challenge", methods=["POST", "OPTIONS"], auth_level=ANON)
def challenge(req: func.HttpRequest) -> func.HttpResponse:
    return serve("signup_challenge", req, signup.challenge)


@bp.function_name("signup_continue")
@bp.route(route="signup/v1.0/continue", methods=["POST", "OPTIONS"], auth_level=ANON)
def continue_(req: func.HttpRequest) -> func.HttpResponse:
    return serve("signup_continue", req, signup.continue_)
