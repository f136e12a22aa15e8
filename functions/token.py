"""/oauth2/v2.0/token: every grant_type."""

import azure.functions as func

from shared.flows import signin

from ._http import endpoint

bp = func.Blueprint()

endpoint(bp, "token", "oauth2/v2.0/token", signin.token)
