"""/resetpassword/v1.0/*."""

import azure.functions as func

from shared.flows import reset

from ._http import endpoint

bp = func.Blueprint()

endpoint(bp, "reset_start", "resetpassword/v1.0/start", reset.start)
endpoint(bp, "reset_challenge", "resetpassword/v1.0/challenge", reset.challenge)
endpoint(bp, "reset_continue", "resetpassword/v1.0/continue", reset.continue_)
endpoint(bp, "reset_submit", "resetpassword/v1.0/submit", reset.submit)
endpoint(bp, "reset_poll_completion", "resetpassword/v1.0/poll_completion", reset.poll_completion)
