"""/sample/sensitive: a protected function that demands step-up (an authentication context)."""

import azure.functions as func

from ._http import ANON, lazy, serve

bp = func.Blueprint()
_sensitive = lazy("shared.tokens.stepup", "sensitive")


@bp.function_name("sample_sensitive")
@bp.route(route="sample/sensitive", methods=["GET", "OPTIONS"], auth_level=ANON)
def sensitive(req: func.HttpRequest) -> func.HttpResponse:
    return serve("sample_sensitive", req, _sensitive, methods="GET")
