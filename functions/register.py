"""/register/v1.0/*: registration of a second-factor method."""

import azure.functions as func

from shared.flows import register

from ._http import endpoint

bp = func.Blueprint()

endpoint(bp, "register_introspect", "register/v1.0/introspect", register.introspect)
endpoint(bp, "register_challenge", "register/v1.0/challenge", register.challenge)
endpoint(bp, "register_continue", "register/v1.0/continue", register.continue_)
