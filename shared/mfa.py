"""The second factor: the decision point, ``/oauth2/v2.0/introspect``,
``/oauth2/v2.0/challenge`` with ``id``, and ``/token`` with ``mfa_oob``
(contract §3.5–3.7, §5.2–5.4).

:func:`gate` is the one place that decides whether tokens may be issued for
a flow. It runs after every first factor and again inside token issuance, so
no request can skip a step: a flow gets tokens only when the policies are
satisfied by what the server itself recorded in the flow (``mfa_done``), or
by a second factor completed recently enough for this user and client
(session freshness).
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

from . import errors, flows, notify, policy, risk, signinlog
from .directory import User, get_user_by_key
from .identifiers import mask_email, mask_phone
from .protocol import Form, Request, Response, current, json_field, ok, redirect_response
from .settings import Settings
from .storage import Storage

MFA_REQUIRED_CODES = (50076,)  # choice documented in the contract (§3.6): the SDKs read the suberror
REGISTRATION_REQUIRED_CODES = (50079,)
BLOCKED_CODES = (53003,)


class Blocked(errors.AuthError):
    error = "access_denied"
    error_codes = BLOCKED_CODES
    description = "Access has been blocked by conditional access policies."


def requested_contexts(form: Form | None) -> tuple[str, ...]:
    """Authentication contexts asked for through ``claims`` (``acrs``)."""
    raw = form.get("claims") if form is not None else None
    if not raw:
        return ()
    claims = json_field(raw, "claims")
    try:
        acrs = claims.get("access_token", {}).get("acrs", {})
    except AttributeError:
        raise errors.InvalidRequest("The claims parameter is not a claims request object.") from None
    values: list[str] = []
    if isinstance(acrs, dict):
        if isinstance(acrs.get("value"), str):
            values.append(acrs["value"])
        if isinstance(acrs.get("values"), list):
            values += [v for v in acrs["values"] if isinstance(v, str)]
    return tuple(v for v in values if v.isalnum() and len(v) <= 16)


def usable_methods(user: User, allowed: tuple[str, ...], steps: list[str], username: str) -> list[dict[str, Any]]:
    """Registered methods that may serve as the second factor now, default first.

    Same channel twice is not two factors: after an email-code first factor,
    an email method for that same address does not count."""
    out = []
    for m in user.methods:
        if m.get("channel") not in allowed:
            continue
        if m["channel"] == "email" and m.get("target") == username and "otp" in steps and "pwd" not in steps:
            continue
        out.append(m)
    out.sort(key=lambda m: (not m.get("default"), m.get("created", 0)))
    return out


def gate(storage: Storage, settings: Settings, flow: flows.Flow, user: User, steps: list[str], form: Form | None,
         request: Request | None = None) -> tuple[Response | None, flows.Flow, policy.Decision]:
    """Decide what a flow whose first factor is done still needs.

    Returns ``(response, flow, decision)``: a response when the client must
    do more (or is blocked, or must fall back to the browser), or ``None`` when
    tokens may be issued."""
    contexts = tuple(flow.json("acrs_requested", [])) or requested_contexts(form)
    ctx = current()
    ip = _client_ip(request, settings) if request is not None else flow.get("ip")
    if flow.get("mfa_done") and flow.get("risk"):
        # Second pass (the second factor is done): the risk was assessed at the
        # first factor; policies are evaluated again (a block still wins).
        sig_risk, reasons = flow["risk"], tuple(flow.json("risk_reasons", []))
    else:
        sig_risk, reasons = risk.assess(storage, settings, user, ip)
    signals = policy.Signals(
        user_oid=user.oid, user_email=user.email, groups=tuple(user.entity.get("groups", "").split(",")) if user.entity.get("groups") else (),
        client_id=flow["client_id"], ip=ip, country=_country(request, settings), risk=sig_risk,
        risk_reasons=reasons, auth_contexts=contexts,
    )
    policies, locations = policy.load(storage)
    decision = policy.evaluate(policies, signals, locations)
    if ctx is not None:
        ctx.extra = {"risk": sig_risk, "risk_reasons": list(reasons), "policies": decision.results}
    if decision.block:
        signinlog.record(storage, flow, user, "blocked", "conditional access block", steps, sig_risk, decision, ip)
        raise Blocked()
    if not decision.require_second_factor or flow.get("mfa_done"):
        return None, flow, decision
    if decision.freshness_seconds:
        last = json.loads(user.entity.get("mfa_at") or "{}").get(flow["client_id"], 0)
        if time.time() - last <= decision.freshness_seconds:
            return None, flow, decision
    caps = flow.json("capabilities", [])
    methods = usable_methods(user, decision.methods, steps, flow["username"])
    common = dict(steps=steps, acrs_requested=list(contexts), decision=decision.to_json(), ip=ip or "",
                  risk=sig_risk, risk_reasons=list(reasons))
    if methods:
        if "mfa_required" not in caps:
            return redirect_response("Client is missing mfa_required capability"), flow, decision
        summary = [{"id": m["id"], "channel": m["channel"], "target": m["target"]} for m in methods]
        flow = flows.advance(storage, flow, state="mfa_required", mfa_methods=summary, **common)
        raise errors.InvalidGrant("A second factor is required.", suberror="mfa_required",
                                  error_codes=MFA_REQUIRED_CODES, extra={"continuation_token": flow.token})
    if "registration_required" not in caps:
        return redirect_response("Client is missing registration_required capability"), flow, decision
    flow = flows.advance(storage, flow, state="registration_required", allowed_methods=list(decision.methods), **common)
    raise errors.InvalidGrant("A second factor must be registered.", suberror="registration_required",
                              error_codes=REGISTRATION_REQUIRED_CODES, extra={"continuation_token": flow.token})


def _client_ip(request: Request | None, settings: Settings) -> str | None:
    if request is None:
        return None
    ip = request.client_ip
    try:
        return str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        return None


def _country(request: Request | None, settings: Settings) -> str | None:
    if request is None or not settings.country_header:
        return None
    value = (request.header(settings.country_header) or "").strip().upper()
    return value if len(value) == 2 and value.isalpha() else None


# ------------------------------------------------------------------ endpoints

def introspect(storage: Storage, settings: Settings, flow: flows.Flow) -> Response:
    if flow["state"] not in ("mfa_required", "mfa_challenge"):
        raise errors.InvalidGrant("This flow does not need a second factor now.")
    methods = flow.json("mfa_methods", [])
    flow = flows.advance(storage, flow, state="mfa_required")
    return ok({"continuation_token": flow.token, "methods": [
        {"id": m["id"], "challenge_type": "oob", "challenge_channel": m["channel"], "login_hint": _mask(m)}
        for m in methods]})


def _mask(method: dict[str, Any]) -> str:
    return mask_phone(method["target"]) if method["channel"] == "sms" else mask_email(method["target"])


def challenge(storage: Storage, settings: Settings, flow: flows.Flow, method_id: str, request: Request) -> Response:
    """Send a code through the chosen method (J sends ``id`` plus its full
    ``challenge_type`` list, which is ignored in this state: contract §8 #3)."""
    if flow["state"] not in ("mfa_required", "mfa_challenge"):
        raise errors.InvalidGrant("This flow does not need a second factor now.")
    method = next((m for m in flow.json("mfa_methods", []) if m["id"] == method_id), None)
    if method is None:
        raise errors.InvalidRequest("The id does not name one of this user's methods.")
    return send_code(storage, settings, flow, request, method["channel"], method["target"], "mfa_code",
                     state="mfa_challenge", mfa_method=method_id)


def send_code(storage: Storage, settings: Settings, flow: flows.Flow, request: Request, channel: str, target: str,
              purpose: str, *, state: str, label_key: str = "challenge_target_label", label: str | None = None,
              **changes: Any) -> Response:
    flows.check_can_send(settings, flow, same_target=flow.get("code_target") == target and flow.get("code_purpose") == purpose)
    length = settings.sms_code_length if channel == "sms" else settings.email_code_length
    code = flows.new_code(settings, flow, purpose, channel, length, target)
    notify.send_code(storage, settings, flow, channel=channel, to=target, purpose=purpose, code=code.value,
                     real_recipient=True, request=request)
    flow = flows.advance(storage, flow, state=state, **code.changes, **changes)
    body = {"continuation_token": flow.token, "challenge_type": "oob", "binding_method": "prompt",
            "challenge_channel": channel, label_key: label if label is not None else _mask({"channel": channel, "target": target}),
            "code_length": length, "interval": settings.resend_interval_seconds}
    return ok(body)


def token(storage: Storage, settings: Settings, flow: flows.Flow, form: Form, scopes, request: Request) -> Response:
    """``grant_type=mfa_oob`` (what the SDKs send) or ``oob`` (the docs) in the MFA state."""
    from . import signin

    user = get_user_by_key(storage, flow["ident"])
    if user is None or user.disabled:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    flow = signin.verify_code(storage, settings, flow, "mfa_code", form.get("oob"), user)
    factor = "sms" if flow["code_channel"] == "sms" else "otp"
    steps = flow.steps + [factor]
    return signin.issue_tokens(storage, settings, flow, user, steps, scopes, mfa_done=True, request=request)
