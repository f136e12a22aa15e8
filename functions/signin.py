"""/oauth2/v2.0/initiate, /challenge and /introspect."""

import azure.functions as func

from shared.flows import signin

from ._http import endpoint

bp = func.Blueprint()

endpoint(bp, "signin_initiate", "oauth2/v2.0/initiate", signin.initiate)
endpoint(bp, "signin_challenge", "oauth2/v2.0/challenge", signin.challenge)
endpoint(bp, "signin_introspect", "oauth2/v2.0/introspect", signin.introspect)
