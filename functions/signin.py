"""/oauth2/v2.0/initiate, /challenge and /introspect."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "signin_initiate", "oauth2/v2.0/initiate", lazy("shared.flows.signin", "initiate"))
endpoint(bp, "signin_challenge", "oauth2/v2.0/challenge", lazy("shared.flows.signin", "challenge"))
endpoint(bp, "signin_introspect", "oauth2/v2.0/introspect", lazy("shared.flows.signin", "introspect"))
