"""/signup/v1.0/*."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "signup_start", "signup/v1.0/start", lazy("shared.flows.signup", "start"))
endpoint(bp, "signup_challenge", "signup/v1.0/challenge", lazy("shared.flows.signup", "challenge"))
endpoint(bp, "signup_continue", "signup/v1.0/continue", lazy("shared.flows.signup", "continue_"))
