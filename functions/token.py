"""/oauth2/v2.0/token: every grant_type."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "token", "oauth2/v2.0/token", lazy("shared.flows.signin", "token"))
