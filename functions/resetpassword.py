"""/resetpassword/v1.0/*: self-service password reset."""

import azure.functions as func

from shared import reset

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("reset_start")
@bp.route(route="resetpassword/v1.0/start", methods=["POST", "OPTIONS"], auth_level=ANON)
def start(req: func.HttpRequest) -> func.HttpResponse:
    return serve("reset_start", req, reset.start)


@bp.function_name("reset_challenge")
@bp.route(route="resetpassword/v1.0/challenge", methods=["POST", "OPTIONS"], auth_level=ANON)
def challenge(req: func.HttpRequest) -> func.HttpResponse:
    return serve("reset_challenge", req, reset.challenge)


@bp.function_name("reset_continue")
@bp.route(route="resetpassword/v1.0/continue", methods=["POST", "OPTIONS"], auth_level=ANON)
def continue_(req: func.HttpRequest) -> func.HttpResponse:
    return serve("reset_continue", req, reset.continue_)


@bp.function_name("reset_submit")
@bp.route(route="resetpassword/v1.0/submit", methods=["POST", "OPTIONS"], auth_level=ANON)
def submit(req: func.HttpRequest) -> func.HttpResponse:
    return serve("reset_submit", req, reset.submit)


@bp.function_name("reset_poll_completion")
@bp.route(route="resetpassword/v1.0/poll_completion", methods=["POST", "OPTIONS"], auth_level=ANON)
def poll_completion(req: func.HttpRequest) -> func.HttpResponse:
    return serve("reset_poll_completion", req, reset.poll_completion)
