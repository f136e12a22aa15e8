"""The policy gate: the one place that decides whether tokens may leave the
server, for a flow (:func:`issue_tokens`, the only door tokens leave through)
and for a session (:func:`refresh_subject`, at every refresh).

**What a flow has proven** is what the server itself recorded in it, never
what the client says:

* ``steps``: the factors verified, in order (``pwd``, ``otp``, ``sms``);
* ``second_factors``: the second-factor codes verified in this flow, each
  ``{"channel", "id", "existing"}``; only ``mfa.token`` (a method the account
  already had) and ``register.continue_`` (a method just registered) add one,
  and one whose method has been removed since no longer counts;
* ``acrs_requested``: the authentication contexts asked for (``claims``) when
  the gate first ran for the flow. A later call may repeat them but not add
  any (a context asked for only at the last step is refused, A48).

**When a second factor is required and not yet satisfied**, the answer is,
in this order: ``mfa_required`` with the account's methods the policies
allow; ``registration_required`` when the method-registration rule allows it
(``methods.may_register``: the account has no method, or this flow proved
one of its existing methods); ``mfa_required`` with the existing methods the
policies do not allow (prove one first, then register an allowed one, A45);
otherwise ``access_denied`` (53004). The account's sign-in mailbox is never
one of these methods (``methods.independent_methods``). A flow that started
before the account's password was reset cannot finish. A requirement is satisfied only by a
second factor verified in this flow through a method the *final* decision
allows (so a policy or context that changes mid-flow is checked against the
factor actually done, A48).

**Sessions.** A new sign-in is a new session: it never skips the second
factor because another session did one (A47). A refresh-token family
remembers its session's second factor (method ids, channels, time); every
refresh evaluates the policies again with the request's IP, country and
risk, and the claims it asks for (:func:`refresh_subject`, A49, A57).
``second_factor_freshness_seconds`` is how old the session's second factor
may be to satisfy a policy at refresh.
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

from shared.extensions import events as extension_events
from shared.flows import state as flows
from shared.protocol import errors
from shared.security import methods as methods_mod, policy, risk
from shared.storage import signinlog
from shared.tokens import issuance as tokens
from shared.storage.directory import User, code_failures_field
from shared.protocol.http import Form, Request, Response, current, json_field, ok, redirect_response
from shared.settings import Settings
from shared.storage.tables import Storage

# Our extension of the protocol's capabilities: a client that can follow
# "verify an existing method (mfa_oob), then register the one the sign-in needs"
# (registration_required answered to the mfa_oob /token call). No MSAL SDK can
# (docs/sdk-compatibility.md), so without it that case is a redirect.
REGISTRATION_AFTER_MFA = "registration_after_mfa"
# MSAL iOS/macOS (x-client-SKU) up to at least 2.14 cannot continue to the
# second factor from the sign-in after a password reset (MSALNativeAuthSignInController
# signIn(username:grantType:continuationToken:) answers .awaitingMFA with a general error).
SKUS_WITHOUT_MFA_AFTER_CONTINUATION = ("msal.ios", "msal.osx")
MFA_REQUIRED_CODES = (50076,)  # choice documented in the contract (§3.6): the SDKs read the suberror
REGISTRATION_REQUIRED_CODES = (50079,)


# ------------------------------------------------------------------ inputs

def requested_contexts(form: Form | None) -> tuple[str, ...] | None:
    """Authentication contexts asked for through ``claims`` (``acrs``); None
    when the request has no ``claims``."""
    raw = form.get("claims") if form is not None else None
    if not raw:
        return None
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
    return tuple(dict.fromkeys(v for v in values if v.isalnum() and len(v) <= 16))


def _flow_contexts(flow: flows.Flow, form: Form | None) -> tuple[str, ...]:
    asked = requested_contexts(form)
    if flow.get("acrs_fixed"):
        fixed = tuple(flow.json("acrs_requested", []))
        if asked is not None and not set(asked) <= set(fixed):
            raise errors.InvalidRequest("The claims parameter asks for more than this sign-in started with. "
                                        "Start a new sign-in with these claims.")
        return fixed
    return asked or ()


def client_ip(request: Request | None) -> str | None:
    if request is None or not request.client_ip:
        return None
    try:
        return str(ipaddress.ip_address(request.client_ip))
    except ValueError:
        return None


def _sku(request: Request | None) -> str:
    """The client library (``x-client-SKU`` header or form field, as MSAL sends it), lower-case."""
    if request is None:
        return ""
    return (request.header("x-client-sku") or "").strip().lower()


def _country(request: Request | None, settings: Settings) -> str | None:
    if request is None or not settings.country_header:
        return None
    value = (request.header(settings.country_header) or "").strip().upper()
    return value if len(value) == 2 and value.isalpha() else None


def _signals(settings: Settings, user: User, client_id: str, ip: str | None, country: str | None, level: str,
             reasons: tuple[str, ...], contexts: tuple[str, ...]) -> policy.Signals:
    groups = tuple(user.entity.get("groups", "").split(",")) if user.entity.get("groups") else ()
    return policy.Signals(user_oid=user.oid, user_email=user.email, groups=groups, client_id=client_id, ip=ip,
                          country=country, risk=level, risk_reasons=reasons, auth_contexts=contexts)


def load_policies(storage: Storage, settings: Settings) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The stored policies and the built-in ones (policy.builtin)."""
    stored, locations = policy.load(storage)
    return stored + policy.builtin(settings.account_auth_context, settings.account_freshness_seconds), locations


def satisfied(decision: policy.Decision, channels, mfa_at: int = 0, now: float | None = None,
              *, session: bool = False) -> bool:
    """Does a second factor through one of ``channels`` (done at ``mfa_at``)
    satisfy the decision? In a flow the factor was just done; for a session
    (refresh) the policies' freshness bounds its age."""
    if not decision.require_second_factor:
        return True
    if not any(c in decision.methods for c in channels):
        return False
    if session and decision.freshness_seconds:
        return (now or time.time()) - mfa_at <= decision.freshness_seconds
    return True


# ------------------------------------------------------------------ the flow gate

def gate(storage: Storage, settings: Settings, flow: flows.Flow, user: User, form: Form | None,
         request: Request | None = None) -> tuple[Response | None, flows.Flow, policy.Decision]:
    """Decide what a flow whose first factor is done still needs.

    Returns ``(response, flow, decision)``: a response when the client must
    fall back to the browser, or ``None`` when tokens may be issued; raises
    the contract's error when the client must do more or is blocked."""
    contexts = _flow_contexts(flow, form)
    ctx = current()
    ip = client_ip(request) if request is not None else flow.get("ip") or None
    policies, locations = load_policies(storage, settings)
    if flow.get("risk"):
        # Later passes: the risk was assessed at the first factor; policies are evaluated again.
        level, reasons = flow["risk"], tuple(flow.json("risk_reasons", []))
    else:
        level, reasons = risk.assess(storage, settings, user, ip, policies=policies)
    signals = _signals(settings, user, flow["client_id"], ip, _country(request, settings), level, reasons, contexts)
    decision = policy.evaluate(policies, signals, locations)
    if ctx is not None:
        ctx.extra = {"risk": level, "risk_reasons": list(reasons), "policies": decision.results}
    steps = flow.steps
    if decision.block:
        signinlog.record(storage, flow, user, "blocked", "conditional access block", steps, level, decision, ip)
        raise errors.Blocked()
    if methods_mod.predates_credential_change(user, flow):
        raise errors.InvalidGrant("The account's password changed after this sign-in started. Start again.")
    done = _counted(user, flow)
    if satisfied(decision, [f["channel"] for f in done]):
        return None, flow, decision
    caps = flow.json("capabilities", [])
    used = {f["id"] for f in flow.json("second_factors", [])}
    independent = sorted(methods_mod.independent_methods(user), key=lambda m: (not m.get("default"), m.get("created", 0)))
    # Proof candidates: the account's methods not yet verified in this flow (for an account
    # whose only methods are its sign-in mailbox, that mailbox: proof, never a second factor).
    candidates = [m for m in methods_mod.proof_methods(user) if m["id"] not in used]
    candidates.sort(key=lambda m: (not m.get("default"), m.get("created", 0)))
    allowed = [m for m in independent if m["id"] not in used and m["channel"] in decision.methods]
    common: dict[str, Any] = dict(steps=steps, second_factors=flow.json("second_factors", []),
                                  acrs_requested=list(contexts), acrs_fixed=True,
                                  decision=decision.to_json(), ip=ip or "", risk=level, risk_reasons=list(reasons),
                                  code_hash="", code_used=False)
    offer = allowed or ([] if methods_mod.may_register(user, flow) else candidates)
    if offer:
        if "mfa_required" not in caps:
            return redirect_response("Client is missing mfa_required capability"), flow, decision
        if not allowed and REGISTRATION_AFTER_MFA not in caps:
            # Verifying an existing method would lead to a registration the client cannot follow.
            return redirect_response("This sign-in needs a kind of second factor the account does not have yet ("
                                     + ", ".join(decision.methods) + "): add one to the account, then try again."), \
                flow, decision
        if flow["kind"] in ("signup", "reset") and _sku(request) in SKUS_WITHOUT_MFA_AFTER_CONTINUATION:
            return redirect_response("Sign in with your password to complete the second factor."), flow, decision
        summary = [{"id": m["id"], "channel": m["channel"], "target": m["target"]} for m in offer]
        flow = flows.advance(storage, flow, state="mfa_required", mfa_methods=summary, **common)
        raise errors.InvalidGrant("A second factor is required." if allowed else
                                  "Verify one of your sign-in methods before adding the one this sign-in needs.",
                                  suberror="mfa_required", error_codes=MFA_REQUIRED_CODES,
                                  extra={"continuation_token": flow.token})
    if not methods_mod.may_register(user, flow):
        signinlog.record(storage, flow, user, "failure", "no usable second factor", steps, level, decision, ip)
        raise errors.CannotSatisfy()
    if "registration_required" not in caps:
        return redirect_response("Client is missing registration_required capability"), flow, decision
    flow = flows.advance(storage, flow, state="registration_required", allowed_methods=list(decision.methods), **common)
    raise errors.InvalidGrant("A second factor must be registered.", suberror="registration_required",
                              error_codes=REGISTRATION_REQUIRED_CODES, extra={"continuation_token": flow.token})


def _counted(user: User, flow: flows.Flow) -> list[dict[str, Any]]:
    """The second factors this flow verified that count: through a method the
    account still has, and never its sign-in mailbox (a proof at most)."""
    ids = {m["id"] for m in methods_mod.independent_methods(user)}
    return [f for f in flow.json("second_factors", []) if f["id"] in ids]


def issue_tokens(storage: Storage, settings: Settings, flow: flows.Flow, user: User, scopes: tokens.Scopes, *,
                 form: Form | None = None, request: Request | None = None) -> Response:
    """The only way tokens leave the server in a flow: the policy gate, then
    the end of the flow (single use, If-Match), then the token set."""
    response, flow, decision = gate(storage, settings, flow, user, form, request)
    if response is not None:
        return response
    # The client's token-issuance extension, before the flow ends: if it fails (on_error: fail),
    # nothing was issued and the flow is as it was.
    extra = extension_events.token_claims(storage, settings, flow["client_id"], user, scopes=scopes)
    judged = time.time()      # before the flow's last write: the session counts from here (A118)
    now = int(judged)
    steps = flow.steps
    done = _counted(user, flow)
    first = list(steps)
    for f in reversed(done):  # the factors that count as second factors leave the first factors' amr
        value = tokens.AMR_OF_CHANNEL.get(f["channel"], "otp")
        if value in first:
            del first[len(first) - 1 - first[::-1].index(value)]
    session = tokens.Session(first_amr=tuple(dict.fromkeys(first)),
                             second_factors=tuple({"id": f["id"], "channel": f["channel"]} for f in done),
                             mfa_at=now if done else 0)
    subject = tokens.Subject(user.pk, user.oid, user.email, user.display_name, session.amr, session.acr, now,
                             tuple(decision.auth_contexts), session, extra, since=judged)
    ip = flow.get("ip") or client_ip(request)
    # The sign-in log record rides on the write that ends the flow (no round trip of its own); it reaches
    # the log a moment after the tokens are out, or, if this instance does not write it (it stops, or the
    # request fails first), through the purge of this flow row.
    record = signinlog.entry(flow, user, "success", "", list(subject.amr),
                             (current().extra.get("risk") if current() else "") or "none", decision, ip)
    rides = signinlog.fits(record)   # always, unless a field outgrew its cap: then written at once, after the end

    def finished(u: User) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if u.entity.get("failed_logins") or u.entity.get("lockout_until"):
            changes.update(failed_logins=0, lockout_until=0)
        for step, channel in (("otp", "email"), ("sms", "sms")):  # a correct code clears its channel's counter
            if step in steps and u.entity.get(code_failures_field(channel)):
                changes[code_failures_field(channel)] = 0
        if now - int(u.entity.get("last_sign_in") or 0) >= 3600:  # shown by GET /me; at most one write an hour
            changes["last_sign_in"] = now
        networks = risk.remember_network(u, ip)
        if networks:
            changes["known_networks"] = networks
        return changes

    def still_allowed(u: User) -> None:
        if not methods_mod.may_go_on(u, flow):
            raise errors.InvalidGrant("This sign-in can no longer continue. Start again.")

    # What a finished sign-in clears and records on the account rides on the write that ends the flow (one
    # transaction: the flow lives in the account's partition, A116). If the account changed since it was
    # read, it is read again: the sign-in ends for an account disabled, being deleted or whose password was
    # reset meanwhile, and what it records is computed on the account as it is now (never written over
    # another change). Best effort where the flow is in the flows table: dropped if the account changed.
    flows.defer_account_change(flow, user, finished, best_effort=True, check=still_allowed)
    flows.finish(storage, flow, **({"log_entry": record} if rides else {}))
    issued = tokens.issue(storage, settings, flow["client_id"], subject, scopes)
    if rides:
        signinlog.later(storage, record)   # only once the tokens are out; else the purge writes it, marked unconfirmed
    else:
        signinlog.write(storage, record)
    return ok(issued)


# ------------------------------------------------------------------ the session gate (refresh)

def refresh_subject(storage: Storage, settings: Settings, family: dict[str, Any], user: User,
                    form: Form | None, request: Request | None) -> tokens.Subject:
    """Conditional access at a refresh (Entra evaluates it whenever a token is
    minted). Raises ``RefreshBlocked`` or ``InteractionRequired`` (both
    ``invalid_grant`` with a suberror MSAL treats as "interaction required");
    returns the subject of the new tokens, with only the ``amr`` and ``acrs``
    whose conditions still hold."""
    now = time.time()
    session = tokens.Session.of_family(family)
    # A method removed since (or the sign-in mailbox, which is never a second factor) does not vouch.
    session = session.keeping({m["id"] for m in methods_mod.independent_methods(user)})
    channels = [f["channel"] for f in session.second_factors]
    ip = client_ip(request)
    policies, locations = load_policies(storage, settings)
    level, reasons = risk.assess(storage, settings, user, ip, record=False, policies=policies)
    country = _country(request, settings)

    def decide(contexts: tuple[str, ...]) -> policy.Decision:
        return policy.evaluate(policies, _signals(settings, user, family["client_id"], ip, country, level, reasons,
                                                  contexts), locations)

    base = decide(())
    if base.block:
        _log_refused(storage, family, user, "blocked at refresh", level, base, ip)
        raise errors.RefreshBlocked()
    if not satisfied(base, channels, session.mfa_at, now, session=True):
        _log_refused(storage, family, user, "second factor required at refresh", level, base, ip)
        raise errors.InteractionRequired()
    asked = requested_contexts(form) or ()
    carried = tuple(json.loads(family.get("acrs") or "[]"))
    granted = []
    for context in sorted(set(asked) | set(carried)):
        d = decide((context,))
        if not d.block and context in d.auth_contexts and satisfied(d, channels, session.mfa_at, now, session=True):
            granted.append(context)
        elif context in asked:
            _log_refused(storage, family, user, f"context {context} not satisfied at refresh", level, d, ip)
            raise errors.RefreshBlocked() if d.block else errors.InteractionRequired()
    # Claims stay current: the token-issuance extension is asked again at every refresh.
    try:
        scopes = tokens.parse_scopes(settings, form.get("scope")) if form else None
    except errors.AuthError:
        scopes = None  # the refresh itself refuses bad scopes; the extension sees the client as the resource
    extra = extension_events.token_claims(storage, settings, family["client_id"], user, scopes=scopes)
    return tokens.Subject(user.pk, user.oid, user.email, user.display_name, session.amr, session.acr,
                          int(family.get("auth_time") or now), tuple(granted), session, extra)


def _log_refused(storage: Storage, family: dict[str, Any], user: User, reason: str, level: str,
                 decision: policy.Decision, ip: str | None) -> None:
    signinlog.record(storage, {"kind": "refresh", "client_id": family["client_id"]}, user, "refresh_denied", reason,
                     list(json.loads(family.get("amr") or "[]")), level, decision, ip)
