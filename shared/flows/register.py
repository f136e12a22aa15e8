"""Registration of a second-factor method:
``/register/v1.0/introspect``, ``/challenge`` and ``/continue`` (contract §3.8–3.10, §5.4).

The policy gate answers ``registration_required`` only when the
method-registration rule allows it (``methods.may_register``: the account
has no method yet, or this flow proved one of its existing methods); the
rule is checked again before a code is sent and inside the write that saves
the method. The method is saved only after its code was consumed; then
``/token`` with ``grant_type=continuation_token`` issues tokens, after the
policy gate.

The account's sign-in mailbox (or a plus, case or dot variant of it) cannot
be registered: it can reset the password, so it is no second factor
(``shared/security/methods.py``). That is why this server never answers the
``preverified`` fast pass (contract §3.9 b), which registers exactly that
address without a code.
"""

from __future__ import annotations

import contextvars

from shared.flows import state as flows
from shared.protocol import errors
from shared.security import methods
from shared.protocol.identifiers import BlockedNumber, InvalidIdentifier, normalize_email, normalize_phone
from shared.flows.mfa import send_code
from shared.protocol.http import Request, Response, ok
from shared.settings import Settings
from shared.storage.tables import StorageUnavailable
from shared.flows.signin import begin

FLOW_KINDS = ("signin", "signup", "reset")
_successor_token: contextvars.ContextVar[str] = contextvars.ContextVar("register_successor_token", default="")
INVALID_CONTACT = (901001,)
BLOCKED_CONTACT = (550024,)


BlockedContact = errors.BlockedContact


def _load(request: Request, settings: Settings):
    # Contract §8 #4: the docs show query-string parameters; the SDKs send a form.
    form, storage, client_id, flow = begin(request, settings, FLOW_KINDS, allow_query=True)
    if request.query.get("continuation_token") and form.get("continuation_token") == request.query["continuation_token"]:
        # A token in a URL is in front-end, proxy and Application Insights logs: it is burnt on arrival
        # (one write), and every answer, errors included, carries its successor. Otherwise a read-only
        # step or a wrong code would leave the logged token live for whoever reads the logs.
        flow = flows.advance(storage, flow)
        _successor_token.set(flow.token)
    return form, storage, flow


def _successor(handler):
    """Errors of a request whose URL token was burnt carry the new token."""
    def run(request: Request, settings: Settings) -> Response:
        reset = _successor_token.set("")
        try:
            return handler(request, settings)
        except errors.AuthError as exc:
            successor = _successor_token.get()
            if successor and "continuation_token" not in exc.extra:
                exc.extra["continuation_token"] = successor
            raise
        except StorageUnavailable:
            successor = _successor_token.get()
            if not successor:
                raise
            # The 503 the protocol layer would give, with the successor: a retry of this request can continue.
            raise errors.ServiceUnavailable(retry_after=5, extra={"continuation_token": successor}) from None
        finally:
            _successor_token.reset(reset)
    run.__name__, run.__doc__ = handler.__name__, handler.__doc__
    return run


@_successor
def introspect(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if flow["state"] not in ("registration_required", "register_challenge"):
        raise errors.InvalidGrant("This flow does not expect a method registration now.")
    allowed = flow.json("allowed_methods", ["email", "sms"])
    offered = []
    if "email" in allowed:
        # No suggestion: the sign-in address itself cannot be registered.
        offered.append({"id": "email", "challenge_type": "oob", "challenge_channel": "email", "login_hint": ""})
    if "sms" in allowed:
        offered.append({"id": "sms", "challenge_type": "oob", "challenge_channel": "sms", "login_hint": ""})
    return ok({"continuation_token": flows.listing_token(storage, flow, "registration_required"), "methods": offered})


@_successor
def challenge(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if flow["state"] not in ("registration_required", "register_challenge"):
        raise errors.InvalidGrant("This flow does not expect a method registration now.")
    if (form.get("challenge_type") or "oob").split()[0] != "oob":
        raise errors.UnsupportedChallengeType()
    user = flows.account(storage, flow)
    if not methods.may_go_on(user, flow) or not methods.may_register(user, flow):
        raise errors.InvalidGrant("This account already has a sign-in method: verify it before adding another.")
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
    if channel == "email" and methods.mailbox_key(target) == methods.mailbox_key(user.email):
        raise errors.InvalidRequest("This is your sign-in address; a second factor must be another mailbox or a phone.",
                                    error_codes=INVALID_CONTACT)
    return send_code(storage, settings, flow, request, channel, target, "register_code", state="register_challenge",
                     label_key="challenge_target", label=raw_target.strip(), register_channel=channel,
                     register_target=target)


@_successor
def continue_(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    grant = form.get("grant_type")
    user = None
    if grant == "oob" and flow["state"] == "register_challenge":
        user = flows.account(storage, flow)
        if user is not None and flow.table == "users":
            # The method is saved by the write that consumes its code and moves the flow on: one transaction
            # (the flow lives in the account's partition, A116), never a method before its code (A55).
            return flows.redeem_code_then(storage, settings, flow, "register_code", form.get("oob"), user,
                                          lambda proven: _saved_with_the_step(storage, settings, proven, user, request))
        flow = flows.redeem_code(storage, settings, flow, "register_code", form.get("oob"), user)
    elif grant not in ("oob", "continuation_token"):
        raise errors.UnsupportedGrantType() if grant else errors.InvalidRequest(
            "The request body must contain the 'grant_type' parameter.")
    else:
        raise errors.InvalidGrant("The continuation_token is not valid for this grant_type.")
    channel, target = flow["register_channel"], flow["register_target"]
    # The code is consumed; now the method is saved (idempotently: a retry of
    # this request after a failure below finds it and continues).
    method_id = methods.add_method(storage, settings, flow, channel, target, request, user=user)
    flow = _registered(storage, flow, channel, method_id)
    return ok({"continuation_token": flow.token})


def _saved_with_the_step(storage, settings: Settings, flow: flows.Flow, user, request: Request) -> Response:
    channel, target = flow["register_channel"], flow["register_target"]
    added: dict = {}
    view = flows.defer_account_change(flow, user, methods.adding(flow, channel, target, added), tied=True)
    moved = _registered(storage, flow, channel, added["id"])
    if added.get("new"):
        methods.announce_added(storage, settings, view, flow, channel, target, request)
    return ok({"continuation_token": moved.token})


def _registered(storage, flow: flows.Flow, channel: str, method_id: str) -> flows.Flow:
    """The flow's step once its method is saved (or with the write that saves it)."""
    done = [f for f in flow.json("second_factors", []) if f["id"] != method_id]
    return flows.advance(storage, flow, state="ready_for_token", steps=flow.steps + ["sms" if channel == "sms" else "otp"],
                         second_factors=done + [{"channel": channel, "id": method_id, "existing": False}],
                         code_hash="", code_used=False)
