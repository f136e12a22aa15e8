"""The second-factor endpoints: ``/oauth2/v2.0/introspect``,
``/oauth2/v2.0/challenge`` with ``id``, and ``/token`` with ``mfa_oob``
(contract §3.5–3.7, §5.2–5.4), and the one function that sends a code to a
method (:func:`send_code`, also used by registration).

What is required, and whether it is satisfied, is decided by the policy gate
(``shared/security/gate.py``); this module only lets the user verify one of the
methods the gate offered.
"""

from __future__ import annotations

import json
from typing import Any

from shared.delivery import notify
from shared.flows import state as flows
from shared.protocol import errors
from shared.security import gate, methods as methods_mod
from shared.security.methods import mask
from shared.protocol.http import Form, Request, Response, ok
from shared.settings import Settings
from shared.storage.tables import Storage


# ------------------------------------------------------------------ endpoints

def introspect(storage: Storage, settings: Settings, flow: flows.Flow) -> Response:
    if flow["state"] not in ("mfa_required", "mfa_challenge"):
        raise errors.InvalidGrant("This flow does not need a second factor now.")
    methods = flow.json("mfa_methods", [])
    return ok({"continuation_token": flows.listing_token(storage, flow, "mfa_required"), "methods": [
        {"id": m["id"], "challenge_type": "oob", "challenge_channel": m["channel"], "login_hint": mask(m["channel"], m["target"])}
        for m in methods]})


def challenge(storage: Storage, settings: Settings, flow: flows.Flow, method_id: str, request: Request) -> Response:
    """Send a code through the chosen method (J sends ``id`` plus its full
    ``challenge_type`` list, which is ignored in this state: contract §8 #3)."""
    if flow["state"] not in ("mfa_required", "mfa_challenge"):
        raise errors.InvalidGrant("This flow does not need a second factor now.")
    method = next((m for m in flow.json("mfa_methods", []) if m["id"] == method_id), None)
    if method is None:
        raise errors.InvalidRequest("The id does not name one of this user's methods.")
    # The account as it is now: no code to a method removed since the offer, to a
    # disabled account, or for a sign-in that started before a password reset.
    user = flows.account(storage, flow)
    if not methods_mod.may_go_on(user, flow) or method_id not in {m["id"] for m in user.methods}:
        raise errors.InvalidGrant("This sign-in can no longer continue. Start again.")
    return send_code(storage, settings, flow, request, method["channel"], method["target"], "mfa_code",
                     state="mfa_challenge", mfa_method=method_id)


def send_code(storage: Storage, settings: Settings, flow: flows.Flow, request: Request, channel: str, target: str,
              purpose: str, *, state: str, label_key: str = "challenge_target_label", label: str | None = None,
              **changes: Any) -> Response:
    """Send a code to a method (this flow's second factor, or one being registered) and answer the oob challenge."""
    same_target = flow.get("code_target") == target and flow.get("code_purpose") == purpose
    flow, length = notify.deliver_code(storage, settings, flow, request, channel=channel, to=target, purpose=purpose,
                                       real_recipient=True, state=state, same_target=same_target, **changes)
    body = {"continuation_token": flow.token, "challenge_type": "oob", "binding_method": "prompt",
            "challenge_channel": channel, label_key: label if label is not None else mask(channel, target),
            "code_length": length, "interval": settings.resend_interval_seconds}
    return ok(body)


def token(storage: Storage, settings: Settings, flow: flows.Flow, form: Form, scopes, request: Request) -> Response:
    """``grant_type=mfa_oob`` (what the SDKs send) or ``oob`` (the docs) in the MFA state."""
    user = flows.account(storage, flow)
    if user is None or user.disabled:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    method = next((m for m in flow.json("mfa_methods", []) if m["id"] == flow["mfa_method"]), None)
    if method is None or method["id"] not in {m["id"] for m in user.methods}:
        raise errors.InvalidGrant("This method is no longer registered. Start again.")

    def proven(flow: flows.Flow) -> Response:
        # What this flow has now proven, written (with the code's consumption) by the gate's next conditional write.
        done = [f for f in flow.json("second_factors", []) if f["id"] != method["id"]]
        flow.entity["second_factors"] = json.dumps(done + [{"channel": method["channel"], "id": method["id"],
                                                            "existing": True}])
        flow.entity["steps"] = json.dumps(flow.steps + ["sms" if method["channel"] == "sms" else "otp"])
        return gate.issue_tokens(storage, settings, flow, user, scopes, form=form, request=request)

    return flows.redeem_code_then(storage, settings, flow, "mfa_code", form.get("oob"), user, proven)

