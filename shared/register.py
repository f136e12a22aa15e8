"""Just-in-time registration of a second-factor method:
``/register/v1.0/introspect``, ``/challenge`` and ``/continue`` (contract §3.8–3.10, §5.4).

The method is stored on the user only after its code was verified (or, for
the ``preverified`` fast pass, when the address is the one this flow already
verified by code alongside a password). Then ``/token`` with
``grant_type=continuation_token`` issues tokens, after the policy gate.
"""

from __future__ import annotations

import json
import secrets
import time

from . import errors, flows
from .directory import change_user, get_user_by_key
from .identifiers import BlockedNumber, InvalidIdentifier, mask_email, normalize_email, normalize_phone
from .mfa import send_code
from .protocol import Request, Response, ok
from .settings import Settings
from .signin import begin, verify_code

FLOW_KINDS = ("signin", "signup", "reset")
INVALID_CONTACT = (901001,)
BLOCKED_CONTACT = (550024,)


BlockedContact = errors.BlockedContact


def _load(request: Request, settings: Settings):
    # Contract §8 #4: the docs show query-string parameters; the SDKs send a form.
    form, storage, client_id, flow = begin(request, settings, FLOW_KINDS, allow_query=True)
    return form, storage, flow


def _preverified_ok(flow: flows.Flow, target: str) -> bool:
    """The fast pass: this flow verified the address by code *and* the first
    factor is a password, so the email is a distinct second factor."""
    steps = flow.steps
    return target == flow["username"] and "otp" in steps and "pwd" in steps and bool(flow.get("email_verified"))


def introspect(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if flow["state"] not in ("registration_required", "register_challenge"):
        raise errors.InvalidGrant("This flow does not expect a method registration now.")
    allowed = flow.json("allowed_methods", ["email", "sms"])
    methods = []
    if "email" in allowed:
        methods.append({"id": "email", "challenge_type": "oob", "challenge_channel": "email",
                        "login_hint": mask_email(flow["username"])})
    if "sms" in allowed:
        methods.append({"id": "sms", "challenge_type": "oob", "challenge_channel": "sms", "login_hint": ""})
    flow = flows.advance(storage, flow, state="registration_required")
    return ok({"continuation_token": flow.token, "methods": methods})


def challenge(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if flow["state"] not in ("registration_required", "register_challenge"):
        raise errors.InvalidGrant("This flow does not expect a method registration now.")
    if (form.get("challenge_type") or "oob").split()[0] != "oob":
        raise errors.UnsupportedChallengeType()
    raw_target = form.get("challenge_target")
    if not raw_target:
        raise errors.InvalidRequest("The request body must contain the 'challenge_target' parameter.",
                                    error_codes=INVALID_CONTACT)
    channel = (form.get("challenge_channel") or ("email" if "@" in raw_target else "sms")).lower()
    allowed = flow.json("allowed_methods", ["email", "sms"])
    if channel not in ("email", "sms") or channel not in allowed:
        raise errors.InvalidRequest("This kind of method cannot be registered here.", error_codes=INVALID_CONTACT)
    try:
        if channel == "email":
            target = normalize_email(raw_target)
        else:
            target = normalize_phone(raw_target, region=settings.default_phone_region,
                                     allowed_countries=settings.sms_allowed_countries)
    except InvalidIdentifier:
        raise errors.InvalidRequest("The verification contact is not valid.", error_codes=INVALID_CONTACT) from None
    except BlockedNumber:
        raise BlockedContact() from None
    if channel == "email" and target == flow["username"]:
        if _preverified_ok(flow, target):
            flow = flows.advance(storage, flow, state="register_preverified", register_channel="email",
                                 register_target=target)
            return ok({"continuation_token": flow.token, "challenge_type": "preverified"})
        # Same channel twice is not two factors.
        raise errors.InvalidRequest("This address is already your first factor; choose another method.",
                                    error_codes=INVALID_CONTACT)
    return send_code(storage, settings, flow, request, channel, target, "register_code", state="register_challenge",
                     label_key="challenge_target", label=raw_target.strip(), register_channel=channel,
                     register_target=target)


def continue_(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    grant = form.get("grant_type")
    if grant == "oob" and flow["state"] == "register_challenge":
        flow = verify_code(storage, settings, flow, "register_code", form.get("oob"), get_user_by_key(storage, flow["ident"]))
    elif grant == "continuation_token" and flow["state"] == "register_preverified":
        pass
    elif grant not in ("oob", "continuation_token"):
        raise errors.UnsupportedGrantType() if grant else errors.InvalidRequest(
            "The request body must contain the 'grant_type' parameter.")
    else:
        raise errors.InvalidGrant("The continuation_token is not valid for this grant_type.")
    channel, target = flow["register_channel"], flow["register_target"]
    # Save the verified method first, then consume the code (If-Match). If the
    # second write loses a race or fails, the method is saved (idempotently)
    # and the flow is unchanged, so nothing verified is lost and no step is skipped.
    _add_method(storage, flow["ident"], channel, target)
    factor = "sms" if channel == "sms" else "otp"
    flow = flows.advance(storage, flow, state="ready_for_token", steps=flow.steps + [factor], mfa_done=True,
                         code_hash="")
    return ok({"continuation_token": flow.token})


def _add_method(storage, user_pk: str, channel: str, target: str) -> None:
    """Add the verified method (idempotent: the same channel and target once)."""
    user = get_user_by_key(storage, user_pk)
    if user is None:
        raise errors.InvalidGrant("The continuation_token is not valid.")

    def compute(u) -> dict | None:
        methods = u.methods
        if any(m["channel"] == channel and m["target"] == target for m in methods):
            return None
        methods.append({"id": secrets.token_hex(8), "channel": channel, "target": target,
                        "default": not methods, "created": int(time.time())})
        return {"methods": json.dumps(methods)}

    change_user(storage, user, compute)
