"""/sample/sensitive: a protected function that demands step-up (an authentication context)."""

import azure.functions as func

from shared.tokens import stepup

from ._http import ANON, serve

bp = func.Blueprint()


@bp.function_name("sample_sensitive")
@bp.route(route="sample/sensitive", methods=["GET", "OPTIONS"], auth_level=ANON)
def sensitive(req: func.HttpRequest) -> func.HttpResponse:
    return serve("sample_sensitive", req, stepup.sensitive, methods="GET")
