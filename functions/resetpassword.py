"""/resetpassword/v1.0/*."""

import azure.functions as func

from ._http import endpoint, lazy

bp = func.Blueprint()

endpoint(bp, "reset_start", "resetpassword/v1.0/start", lazy("shared.flows.reset", "start"))
endpoint(bp, "reset_challenge", "resetpassword/v1.0/challenge", lazy("shared.flows.reset", "challenge"))
endpoint(bp, "reset_continue", "resetpassword/v1.0/continue", lazy("shared.flows.reset", "continue_"))
endpoint(bp, "reset_submit", "resetpassword/v1.0/submit", lazy("shared.flows.reset", "submit"))
endpoint(bp, "reset_poll_completion", "resetpassword/v1.0/poll_completion", lazy("shared.flows.reset", "poll_completion"))
