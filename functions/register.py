"""/register/v1.0/*: registration of a second-factor method."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "register_introspect", "register/v1.0/introspect", lazy("shared.flows.register", "introspect"))
endpoint(bp, "register_challenge", "register/v1.0/challenge", lazy("shared.flows.register", "challenge"))
endpoint(bp, "register_continue", "register/v1.0/continue", lazy("shared.flows.register", "continue_"))
