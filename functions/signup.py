"""/signup/v1.0/*."""

import azure.functions as func

from shared.flows import signup

from ._http import endpoint

bp = func.Blueprint()

endpoint(bp, "signup_start", "signup/v1.0/start", signup.start)
endpoint(bp, "signup_challenge", "signup/v1.0/challenge", signup.challenge)
endpoint(bp, "signup_continue", "signup/v1.0/continue", signup.continue_)
