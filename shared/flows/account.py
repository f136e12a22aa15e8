"""The account API for the signed-in user: ``/api/me`` (README "Account API").

Every call carries ``Authorization: Bearer <access token>`` issued by this
service for ``AUTH_ACCOUNT_RESOURCE`` (``api://native-auth`` by default) with
the ``account`` scope. The token must belong to a live session (its ``sid``
names a refresh-token family that is not revoked, of this user, not signed
out by "sign out everywhere" or a password change) and to the account as it
is now (same object id: an account deleted and signed up again is another).

**Fresh proof.** Adding or removing a method and deleting the account need
a second factor at most ``AUTH_ACCOUNT_FRESHNESS_SECONDS`` old (the time the
session's second factor was verified, not the token's: refreshing does not
make it fresh), asked for
with the step-up the project already has: without it the answer is 401 with
a claims challenge for ``AUTH_ACCOUNT_AUTH_CONTEXT`` (``acct``); the app signs
in again passing those claims, the built-in policy (``policy.builtin``)
demands a second factor no older than ``AUTH_ACCOUNT_FRESHNESS_SECONDS``, and
the new access token (with ``acrs: ["acct"]``, of that session) is the proof. An account without an independent method proves itself with an
email code instead: ``POST /me/confirmation`` sends one, and the call carries
``confirmation`` and ``code``.

Every call is written to the sign-in log; the API has its own rate limits per
user (``limits.check_and_count_action``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from shared.delivery import notify
from shared.flows import attributes, state as flows
from shared.protocol import errors
from shared.security import gate, limits, methods, passwords
from shared.storage import signinlog
from shared.tokens import issuance as tokens, stepup
from shared.storage.directory import USER_RK, User, change_user, get_user_by_key
from shared.protocol.identifiers import BlockedNumber, InvalidIdentifier, mask_email, normalize_email, normalize_phone
from shared.protocol.http import Request, Response, parse_json
from shared.settings import Settings
from shared.storage.tables import Conflict, Modified, Storage, StorageError, Table, get_storage

log = logging.getLogger("nativeauth.account")

SCOPE = "account"
READS_PER_HOUR = 300
CHANGES_PER_HOUR = 30
DELETE_LOG_DAYS = 31


class Forbidden(errors.AuthError):
    error = "insufficient_scope"
    error_codes = (500011,)
    status = 403
    description = "The access token is not for the account API (it needs the 'account' scope)."


class MethodNotFound(errors.AuthError):
    error = "not_found"
    error_codes = (90010,)
    status = 404
    description = "This account has no such method."


class LastMethod(errors.AuthError):
    error = "last_method_required"
    error_codes = (50079,)
    status = 409
    description = ("A policy requires a second factor for this account, and this is its last method: "
                   "add another method before removing it.")


class TooManyRequests(errors.SlowDown):
    status = 429  # not a native-auth endpoint: plain HTTP semantics for app code


class ConfirmationRequired(errors.AuthError):
    headers = {"WWW-Authenticate": 'Bearer error="confirmation_required", error_description="POST /me/confirmation '
                                   'sends a code to the account\'s email"'}
    error = "confirmation_required"
    error_codes = (50076,)
    status = 401
    description = ("This change needs a fresh confirmation: POST /me/confirmation sends a code to the account's "
                   "email; repeat the call with 'confirmation' and 'code'.")


# ------------------------------------------------------------------ the caller

class Caller:
    def __init__(self, storage: Storage, settings: Settings, claims: dict[str, Any], user: User, family: dict[str, Any]):
        self.storage, self.settings, self.claims, self.user, self.family = storage, settings, claims, user, family

    @property
    def client_id(self) -> str:
        return self.claims.get("azp") or self.family.get("client_id", "")

    def log(self, result: str, reason: str = "") -> None:
        signinlog.record(self.storage, {"kind": "account", "client_id": self.client_id}, self.user, result, reason,
                         [], "none")


def _session(request: Request, settings: Settings) -> tuple[dict[str, Any], dict[str, Any] | None, User | None] | Response:
    """The access token's claims, its session (refresh-token family) and account, as stored now."""
    claims = stepup.bearer_claims(request, settings, (settings.account_resource,))
    if isinstance(claims, Response):
        return claims
    if SCOPE not in str(claims.get("scp") or "").split():
        raise Forbidden()
    storage = get_storage(settings)
    sid = claims.get("sid")
    family = None
    if isinstance(sid, str) and 8 <= len(sid) <= 64:
        import hashlib

        family = storage.table("refresh").get("r" + hashlib.sha256(sid.encode()).hexdigest()[:2], sid)
    user = get_user_by_key(storage, family["user_pk"]) if family else None
    return claims, family, user


def _being_deleted(session: tuple[dict[str, Any], dict[str, Any] | None, User | None] | Response) -> bool:
    """This session's account is being deleted right now (by a parallel DELETE of it)."""
    if isinstance(session, Response):
        return False
    claims, family, user = session
    return (family is not None and not family.get("revoked") and user is not None and user.oid == claims.get("oid")
            and family.get("oid") == user.oid and user.being_deleted and not tokens.session_ended(user, family))


def _caller(request: Request, settings: Settings, *, change: bool, session=None) -> Caller | Response:
    session = _session(request, settings) if session is None else session
    if isinstance(session, Response):
        return session
    claims, family, user = session
    storage = get_storage(settings)
    if family is None or family.get("revoked") or user is None or user.disabled or user.oid != claims.get("oid") \
            or family.get("oid") != user.oid or tokens.session_ended(user, family):
        return _ended(settings)
    limits.check_and_count_action(storage, settings, "me-change" if change else "me-read", None,
                                  CHANGES_PER_HOUR if change else READS_PER_HOUR, source=f"user:{user.oid}",
                                  error=TooManyRequests)
    return Caller(storage, settings, claims, user, family)


def _ended(settings: Settings) -> Response:
    """The answer for a session that has ended: signed out, or its account gone (also when it went during
    this request)."""
    return stepup.unauthorized(settings, "invalid_token", "The session of this access token has ended.")


def _deleted_session(request: Request, settings: Settings) -> bool:
    """A valid access token whose account no longer exists (deleted)."""
    claims = stepup.bearer_claims(request, settings, (settings.account_resource,))
    if isinstance(claims, Response):
        return False
    rows = get_storage(settings).table("signinlog").query(
        "PartitionKey ge @a and result eq @r and reason eq @o",
        {"a": time.strftime("%Y%m%d", time.gmtime(float(claims.get("iat") or 0))), "r": "account_deleted",
         "o": "oid:" + _alias(settings, str(claims.get("oid")))}, limit=1)
    return bool(rows)


def _alias(settings: Settings, oid: str) -> str:
    import hashlib
    import hmac

    return "deleted-" + hmac.new(settings.code_hash_key, oid.encode(), hashlib.sha256).hexdigest()[:16]


def _fresh(caller: Caller, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]] | Response:
    """The proof a change needs: the steps and verified methods to hand on (for
    the method-registration rule), or the answer that asks for it."""
    settings, claims = caller.settings, caller.claims
    independent = methods.independent_methods(caller.user)
    if independent:
        context = settings.account_auth_context
        session = tokens.Session.of_family(caller.family).keeping({m["id"] for m in independent})
        # Fresh = the session's second factor itself is recent (not the token: a refreshed token is new,
        # its second factor is not), and the token was minted for the account context.
        if context in (claims.get("acrs") or []) and session.second_factors \
                and time.time() - session.mfa_at <= settings.account_freshness_seconds:
            proof = [{"channel": f["channel"], "id": f["id"], "existing": True} for f in session.second_factors]
            return list(session.first_amr), proof
        return stepup.unauthorized(settings, "insufficient_claims",
                                   "This change needs a fresh second factor.", context)
    # No independent method: a code sent to the account's email by POST /me/confirmation.
    token, code = body.get("confirmation"), body.get("code")
    if not isinstance(token, str) or not isinstance(code, str) or not token or not code:
        raise ConfirmationRequired()
    flow = flows.load(caller.storage, settings, token, caller.client_id, ("account_confirm",))
    if flow["ident"] != caller.user.pk or flow.get("sid") != caller.claims.get("sid"):
        raise errors.InvalidGrant("This confirmation belongs to another session.")
    flow = flows.redeem_code(caller.storage, settings, flow, "account_code", code, caller.user)
    flows.finish(caller.storage, flow)
    return ["otp"], []


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, body, {"Cache-Control": "no-store", **(headers or {})})


# ------------------------------------------------------------------ GET / PATCH / DELETE /me

def me(request: Request, settings: Settings) -> Response:
    session = _session(request, settings)
    caller = _caller(request, settings, change=request.method != "GET", session=session)
    if isinstance(caller, Response) and request.method == "DELETE" and _being_deleted(session):
        # A parallel deletion of this account holds the mark: 204 once it is done; if it failed (and took its
        # mark back), this request deletes the account itself (if another waiter marked it first, wait for that
        # one); 503 if it is still running. Counted in the session's change limit before any wait.
        storage = get_storage(settings)
        limits.check_and_count_action(storage, settings, "me-change", None, CHANGES_PER_HOUR,
                                      source=f"user:{session[2].oid}", error=TooManyRequests)
        for _ in range(3):
            if not _other_deletion_failed(storage, session[2]):
                return _json(204, None)
            session = _session(request, settings)
            caller = _caller(request, settings, change=True, session=session)
            if not isinstance(caller, Response):
                return _delete(caller, request, parse_json(request, settings, required=False))
            if not _being_deleted(session):
                return caller
        raise errors.ServiceUnavailable("The account is being deleted; retry.", retry_after=5)
    if isinstance(caller, Response):
        if request.method == "DELETE" and _deleted_session(request, settings):
            return _json(204, None)  # idempotent: this session's account is already gone
        return caller
    if request.method == "GET":
        caller.log("account_read")
        return _json(200, profile(caller.user))
    if request.method == "PATCH":
        return _update(caller, parse_json(request, settings))
    return _delete(caller, request, parse_json(request, settings, required=False))


def profile(user: User) -> dict[str, Any]:
    return {
        "id": user.oid, "email": user.email, "displayName": user.display_name,
        "attributes": json.loads(user.entity.get("attributes") or "{}"),
        "methods": [_method_view(m) for m in user.methods], "hasPassword": user.has_password,
        "created": _iso(user.entity.get("created")), "lastSignIn": _iso(user.entity.get("last_sign_in")),
        "passwordChanged": _iso(user.entity.get("password_changed_at")),
    }


def _method_view(m: dict[str, Any]) -> dict[str, Any]:
    return {"id": m["id"], "channel": m["channel"], "target": methods.mask(m["channel"], m["target"]),
            "default": bool(m.get("default")), "created": _iso(m.get("created"))}


def _iso(ts: Any) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))


def _update(caller: Caller, body: dict[str, Any]) -> Response:
    submitted = body.get("attributes")
    if not isinstance(submitted, dict) or not submitted:
        raise errors.InvalidRequest("The body must be {\"attributes\": {...}} with at least one attribute.")
    if any(k.lower() in ("email", "username", "mail") for k in submitted):
        raise errors.InvalidRequest("The email address (the username) cannot be changed here.")
    accepted = attributes.accept(caller.settings.signup_attributes, submitted)
    if not accepted:
        raise errors.InvalidRequest("None of these attributes can be set (see AUTH_SIGNUP_ATTRIBUTES).")

    def compute(u: User) -> dict[str, Any]:
        merged = {**json.loads(u.entity.get("attributes") or "{}"), **accepted}
        out: dict[str, Any] = {"attributes": json.dumps(merged)}
        if "displayName" in accepted:
            out["display_name"] = accepted["displayName"]
        return out

    user = change_user(caller.storage, caller.user, compute)
    if user is None:
        return _ended(caller.settings)   # the account was deleted meanwhile: nothing changed
    caller.log("account_updated", ",".join(sorted(accepted)))
    return _json(200, profile(user))


# ------------------------------------------------------------------ password

def password(request: Request, settings: Settings) -> Response:
    caller = _caller(request, settings, change=True)
    if isinstance(caller, Response):
        return caller
    body = parse_json(request, settings)
    current, new = body.get("currentPassword"), body.get("newPassword")
    keep = body.get("signOutOtherSessions", True)
    if not isinstance(current, str) or not isinstance(new, str) or not isinstance(keep, bool):
        raise errors.InvalidRequest("The body needs currentPassword and newPassword (strings) and may have "
                                    "signOutOtherSessions (a boolean, true by default).")
    user = caller.user
    if not user.has_password or len(current) > passwords.MAX_PASSWORD_CHARS:
        passwords.dummy_verify(current[:passwords.MAX_PASSWORD_CHARS])
        raise errors.InvalidCredentials("The current password is not correct.")
    from shared.flows.signin import reserve_password_attempt, undo_password_attempt  # the lockout counts these attempts too

    counted = reserve_password_attempt(caller.storage, settings, user)
    if counted is None or not passwords.verify_password(counted.password_hash, current):
        if counted is None:
            passwords.dummy_verify(current)
        caller.log("account_password_failed")
        raise errors.InvalidCredentials("The current password is not correct.")
    user = change_user(caller.storage, counted, lambda u: undo_password_attempt(settings, u)) or counted
    previous = tuple([user.password_hash] + json.loads(user.entity.get("previous_passwords") or "[]"))
    local, domain = user.email.split("@")
    context = (local, domain.split(".")[0], settings.app_name.lower().replace(" ", ""))
    try:
        passwords.check_policy(new, min_length=settings.password_min_length, context=context, previous_hashes=previous)
    except passwords.PasswordRejected as exc:
        raise errors.InvalidGrant(str(exc), suberror=exc.suberror, error_codes=(399246,)) from None
    new_hash = passwords.hash_password(new)
    at: list[float] = []

    def change(u: User) -> dict[str, Any]:
        # The time of this very write, not of the first try: a sign-in that finished while the write was
        # retried (the attacker's own sign-ins make it retry) counts from before it, so it ends too (A118).
        at.append(time.time())
        return {"password_hash": new_hash, "password_changed_at": int(at[-1]), "password_reset_required": False,
                "previous_passwords": json.dumps([p for p in previous if p][:3]),
                **({"rt_not_before": at[-1]} if keep else {})}

    if change_user(caller.storage, user, change) is None:
        return _ended(settings)     # the account was deleted meanwhile: nothing changed
    if keep:
        # Every other session ends; this one is renewed (its family counts as issued after the change).
        _renew_family(caller.storage, caller.family, at[-1])
    notify.send_notice(caller.storage, settings, to=user.email, purpose="password_changed", request=request, count=True)
    caller.log("account_password_changed", "other sessions signed out" if keep else "other sessions kept")
    return _json(204, None)


def _renew_family(storage: Storage, family: dict[str, Any], now: float) -> None:
    try:
        storage.table("refresh").update({"PartitionKey": family["PartitionKey"], "RowKey": family["RowKey"],
                                         "issued_at": now + 0.001}, family["_etag"])
    except StorageError:
        pass  # a concurrent refresh won: this session signs in again, like the others


# ------------------------------------------------------------------ sessions

def revoke_sessions(request: Request, settings: Settings) -> Response:
    """Sign out everywhere: every refresh-token family of the user, this one too, at once."""
    caller = _caller(request, settings, change=True)
    if isinstance(caller, Response):
        return caller
    # Retried on a busy row (each sign-in writes it: a single If-Match write answered 500, A117).
    change_user(caller.storage, caller.user, lambda u: {"rt_not_before": time.time()})
    caller.log("account_signed_out_everywhere")
    return _json(204, None)


# ------------------------------------------------------------------ proof without a method

def confirmation(request: Request, settings: Settings) -> Response:
    """POST /me/confirmation: a code to the account's email, for an account
    without an independent second factor (the others use the step-up)."""
    caller = _caller(request, settings, change=True)
    if isinstance(caller, Response):
        return caller
    if methods.independent_methods(caller.user):
        return stepup.unauthorized(settings, "insufficient_claims",
                                   "This account has a second factor: sign in again with the claims instead.",
                                   settings.account_auth_context)
    flow = flows.start(caller.storage, settings, "account_confirm", caller.client_id, ident=caller.user.pk,
                       username=caller.user.email, user_exists=True, sid=caller.claims.get("sid"))
    flow, length = notify.deliver_code(caller.storage, settings, flow, request, channel="email", to=caller.user.email,
                                       purpose="account_code", real_recipient=True, state="code_sent")
    caller.log("account_confirmation_sent")
    return _json(202, {"confirmation": flow.token, "channel": "email", "target": mask_email(caller.user.email),
                       "codeLength": length, "expiresIn": settings.code_ttl_seconds})


# ------------------------------------------------------------------ methods

def methods_endpoint(request: Request, settings: Settings) -> Response:
    caller = _caller(request, settings, change=request.method != "GET")
    if isinstance(caller, Response):
        return caller
    if request.method == "GET":
        caller.log("account_methods_read")
        return _json(200, {"methods": [_method_view(m) for m in caller.user.methods]})
    body = parse_json(request, settings)
    channel, raw = body.get("channel"), body.get("target")
    if channel not in ("email", "sms") or not isinstance(raw, str) or not raw.strip():
        raise errors.InvalidRequest("The body needs channel ('email' or 'sms') and target.", error_codes=(901001,))
    try:
        target = normalize_email(raw) if channel == "email" else normalize_phone(
            raw, region=settings.default_phone_region, allowed_countries=settings.sms_allowed_countries)
    except InvalidIdentifier:
        raise errors.InvalidRequest("The verification contact is not valid.", error_codes=(901001,)) from None
    except BlockedNumber:
        raise errors.BlockedContact() from None
    if channel == "email" and methods.mailbox_key(target) == methods.mailbox_key(caller.user.email):
        raise errors.InvalidRequest("This is your sign-in address; a second factor must be another mailbox or a phone.",
                                    error_codes=(901001,))
    # The proof last: a mistyped target is refused before the user steps up (or spends a confirmation code).
    proof = _fresh(caller, body)
    if isinstance(proof, Response):
        return proof
    steps, proven = proof
    flow = flows.start(caller.storage, settings, "account_method", caller.client_id, ident=caller.user.pk,
                       username=caller.user.email, user_exists=True, sid=caller.claims.get("sid"),
                       steps=steps, second_factors=proven)
    flow, length = notify.deliver_code(caller.storage, settings, flow, request, channel=channel, to=target,
                                       purpose="register_code", real_recipient=True, state="register_challenge",
                                       register_channel=channel, register_target=target)
    caller.log("account_method_code_sent", channel)
    return _json(202, {"verification": flow.token, "channel": channel, "target": methods.mask(channel, target),
                       "codeLength": length, "expiresIn": settings.code_ttl_seconds})


def method_verify(request: Request, settings: Settings) -> Response:
    """POST /me/methods/verify {verification, code}: the method is added."""
    caller = _caller(request, settings, change=True)
    if isinstance(caller, Response):
        return caller
    body = parse_json(request, settings)
    token, code = body.get("verification"), body.get("code")
    if not isinstance(token, str) or not isinstance(code, str) or not token or not code:
        raise errors.InvalidRequest("The body needs verification and code.")
    flow = flows.load(caller.storage, settings, token, caller.client_id, ("account_method",))
    if flow["ident"] != caller.user.pk or flow.get("sid") != caller.claims.get("sid") \
            or flow["state"] != "register_challenge":
        raise errors.InvalidGrant("This verification does not belong to this session.")
    flow = flows.redeem_code(caller.storage, settings, flow, "register_code", code, caller.user)
    method_id = methods.add_method(caller.storage, settings, flow, flow["register_channel"], flow["register_target"],
                                   request, user=caller.user)
    flows.finish(caller.storage, flow)
    user = get_user_by_key(caller.storage, caller.user.pk) or caller.user
    added = next((m for m in user.methods if m["id"] == method_id), None)
    return _json(201, _method_view(added) if added else {"id": method_id})


def method_item(request: Request, settings: Settings) -> Response:
    """DELETE /me/methods/{id}."""
    caller = _caller(request, settings, change=True)
    if isinstance(caller, Response):
        return caller
    method_id = urlsplit(request.url).path.rstrip("/").rsplit("/", 1)[-1]
    target = next((m for m in caller.user.methods if m["id"] == method_id), None)
    if target is None:
        raise MethodNotFound()
    proof = _fresh(caller, parse_json(request, settings, required=False))
    if isinstance(proof, Response):
        return proof
    independent = methods.independent_methods(caller.user)
    if [m["id"] for m in independent] == [method_id] and _second_factor_required(caller, request):
        raise LastMethod()
    methods.remove_method(caller.storage, settings, caller.user, method_id, request=request)
    return _json(204, None)


def _second_factor_required(caller: Caller, request: Request) -> bool:
    """Would a sign-in of this user (now, from here) need a second factor?"""
    from shared.security import policy, risk

    policies, locations = gate.load_policies(caller.storage, caller.settings)
    ip = gate.client_ip(request)
    level, reasons = risk.assess(caller.storage, caller.settings, caller.user, ip, record=False, policies=policies)
    signals = policy.Signals(user_oid=caller.user.oid, user_email=caller.user.email,
                             groups=tuple(g for g in (caller.user.entity.get("groups") or "").split(",") if g),
                             client_id=caller.client_id, ip=ip, country=None, risk=level, risk_reasons=reasons)
    return policy.evaluate(policies, signals, locations).require_second_factor


# ------------------------------------------------------------------ export and deletion

def export(request: Request, settings: Settings) -> Response:
    """GET /me/export: everything stored about the user, without secrets or hashes (GDPR art. 15, 20)."""
    caller = _caller(request, settings, change=False)
    if isinstance(caller, Response):
        return caller
    caller.log("account_exported")
    return _json(200, export_data(caller.storage, caller.user), {"Content-Disposition": 'attachment; filename="account.json"'})


def export_data(storage: Storage, user: User) -> dict[str, Any]:
    secret = {"password_hash", "previous_passwords", "_etag", "PartitionKey", "RowKey", "created_by_flow",
              "reset_by_flow", "methods", "attributes"}
    stored = {k: v for k, v in user.entity.items() if k not in secret}
    sessions = [{"client": f.get("client_id"), "created": _iso(f.get("created")), "lastUsed": _iso(f.get("last_used")),
                 "expires": _iso(f.get("absolute_expires")), "revoked": bool(f.get("revoked")),
                 "signedInWith": json.loads(f.get("amr") or "[]")} for f in _families(storage, user)]
    log = [{k: e.get(k) for k in ("time", "result", "reason", "flow", "client_id", "ip", "factors", "risk")}
           for e in _log_entries(storage, user.oid)]
    return {"profile": profile(user),
            "methods": [{"id": m["id"], "channel": m["channel"], "target": m["target"], "created": _iso(m.get("created"))}
                        for m in user.methods],
            "account": stored, "sessions": sessions, "signInLog": log,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _families(storage: Storage, user: User) -> list[dict[str, Any]]:
    """The user's refresh-token families (a scan of the refresh table: fine for the rare export or deletion)."""
    return [f for f in storage.table("refresh").query("user_pk eq @pk", {"pk": user.pk}, limit=1000)
            if f.get("oid") == user.oid]


def _log_entries(storage: Storage, oid: str) -> list[dict[str, Any]]:
    """The user's sign-in log entries (kept 30 days): one query over the day partitions
    (this instance's sign-ins waiting for the log's writer are written first)."""
    signinlog.flush()
    now = time.time()
    first = time.strftime("%Y%m%d", time.gmtime(now - DELETE_LOG_DAYS * 86400))
    last = time.strftime("%Y%m%d", time.gmtime(now + 86400))
    return storage.table("signinlog").query("PartitionKey ge @a and PartitionKey le @b and user_oid eq @o",
                                            {"a": first, "b": last, "o": oid}, limit=2000)


def _delete(caller: Caller, request: Request, body: dict[str, Any]) -> Response:
    proof = _fresh(caller, body)
    if isinstance(proof, Response):
        return proof
    delete_user(caller.storage, caller.settings, caller.user, request=request, actor="self")
    return _json(204, None)


def delete_user(storage: Storage, settings: Settings, user: User, *, request: Request | None = None,
                actor: str = "admin") -> None:
    """Delete an account for good: the user (with its methods), its sessions,
    its open flows and codes (a sign-in's or reset's start token, which stores
    nothing until its next step, can still have one code mailed to the address
    within its 15 minutes: the code opens nothing, SECURITY.md A115); its sign-in
    log entries are made pseudonymous; a goodbye email is sent. Idempotent (a gone user is nothing to do); the
    address can sign up again as a new account (new object id)."""
    email, oid = user.email, user.oid
    # One deletion of parallel ones does the work (an If-Match mark; the others find it marked or gone);
    # a mark older than a minute is a deletion that died half-way, and is finished. The mark is retried like
    # every read-modify-write of the account (each sign-in writes the row: a busy row made the deletion give
    # up and answer 204 with the account still there, A117); if the row stays busy through every retry,
    # StorageUnavailable goes up as a 503: never a deletion that says it happened when it did not.
    for _ in range(2):
        marked = change_user(storage, user, lambda u: None if u.being_deleted else {"deleting_at": time.time()})
        if marked is not None:
            break
        # Gone, another account at this address, or another deletion marked it first: that one's outcome is
        # this one's (a 204 only once the account is gone; if it failed and took its mark back, mark again).
        if not _other_deletion_failed(storage, user):
            return
    else:
        raise errors.ServiceUnavailable("The account is being changed; retry.", retry_after=1)
    user = marked
    alias = _alias(settings, oid)
    # The log made pseudonymous before the account row goes: if storage fails here, the mark is taken back
    # and the account is as it was, so the client may simply try again.
    try:
        _pseudonymise(storage, user.pk, oid, alias)
    except StorageError:
        _unmark(storage, user)
        raise
    # The one record of the deletion (pseudonymous: an alias nobody can turn back into the id without the
    # code key), before the account row goes, so a parallel DELETE of this session already finds it.
    signinlog.record(storage, {"kind": f"account:{actor}", "client_id": ""}, None, "account_deleted", "oid:" + alias, [],
                     "none")
    storage.table("users").delete(user.pk, "user")
    for fam in _families(storage, user):
        storage.table("refresh").delete(fam["PartitionKey"], fam["RowKey"])
    try:   # once more: a sign-in that finished in between (the account was still there)
        _pseudonymise(storage, user.pk, oid, alias)
    except StorageError as exc:
        log.warning("account deleted; the second pass over its sign-in records failed: %s", type(exc).__name__)
    notify.send_notice(storage, settings, to=email, purpose="account_deleted", request=request, count=True)


def _pseudonymise(storage: Storage, user_pk: str, oid: str, alias: str) -> None:
    """End the account's flows and make its sign-in records pseudonymous: those in
    the log and those still carried by flow rows. Raises StorageError."""
    signinlog.flush()   # this instance's sign-ins not yet in the log: there now, so the loop below finds them
    # Every flow row of the account not yet purged: sign-ins and resets in the account's own partition
    # (shared/flows/state.py), other flows by a scan of the flows table (fine for the rare deletion).
    for name, found in (("users", storage.table("users").query("PartitionKey eq @p and RowKey ne @u",
                                                                {"p": user_pk, "u": USER_RK})),
                        ("flows", storage.table("flows").query("ident eq @i", {"i": user_pk}))):
        for f in found:
            _close_flow(storage, storage.table(name), f, oid, alias)
    table = storage.table("signinlog")

    def update_unless_changed(entity: dict[str, Any]) -> None:
        try:
            table.update(entity)
        except Modified:
            pass   # changed since read: a parallel deletion made it pseudonymous

    for _ in range(1000):   # 2,000 at a time (an active account has many), until none names the account
        entries = _log_entries(storage, oid)
        if not entries:
            return
        # 100 per transaction within a day; one changed since read (a parallel deletion): each on its own.
        table.in_transactions("update", [{"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"], "user_oid": alias,
                                          "user": "", "ip": _network(e.get("ip")), "_etag": e["_etag"]}
                                         for e in entries], update_unless_changed,
                              falls_back_on=(Modified, Conflict))
    raise StorageError("the account's sign-in records kept changing")


def _other_deletion_failed(storage: Storage, user: User, seconds: float = 5.0) -> bool:
    """Wait for a parallel deletion of this account (its mark) to end: False once the account is gone (or
    another account has its address), True if that deletion failed and took its mark back. Raises 503 while
    it still runs after ``seconds`` (a deletion is a few storage calls per hundred sign-in records)."""
    deadline = time.monotonic() + seconds
    while True:
        fresh = get_user_by_key(storage, user.pk)
        if fresh is None or fresh.oid != user.oid:
            return False
        if not fresh.being_deleted:
            return True
        if time.monotonic() > deadline:
            raise errors.ServiceUnavailable("The account is being deleted; retry.", retry_after=5)
        time.sleep(0.1)


def _unmark(storage: Storage, user: User) -> None:
    """Take back a deletion's mark (its first pass failed): the account is as it was (retried on a busy row;
    a mark that still stays is a minute's, DELETING_SECONDS)."""
    try:
        change_user(storage, user, lambda u: {"deleting_at": 0} if u.entity.get("deleting_at") else None)
    except StorageError as exc:
        log.warning("a failed deletion's mark could not be taken back: %s", type(exc).__name__)


def _close_flow(storage: Storage, table: Table, flow: dict[str, Any], oid: str, alias: str) -> None:
    """End a deleted account's flow and make the sign-in record it carries pseudonymous.

    The record may not be in the log yet (another instance's writer, or the
    purge, writes it later): its pseudonymous form goes in the log now and on
    the row, so a later insert of the original finds it there and stops. A
    sign-in finishing meanwhile (its If-Match write lands first) is read again
    until this write wins or the row is gone: its record is then on the row.
    Records of another account with the same address (deleted before) are left
    as they are. Raises StorageError when the log cannot be written."""
    for _ in range(10):
        changes: dict[str, Any] = {}
        if flow.get("state") != "done":
            changes.update(state="done", code_hash="", secret_hash="")
        carried = signinlog.carried([flow])
        if flow.get("log_entry") and not carried:
            changes["log_entry"] = ""   # unreadable: dropped rather than left
        elif carried and carried[0].get("user_oid") == oid:
            record = {**carried[0], "user_oid": alias, "user": ""}
            record["ip"] = _network(record.get("ip"))
            for attempt in range(3):
                try:
                    storage.table("signinlog").insert(record)
                    break
                except Conflict:
                    break   # already there: the loop over the log entries makes it pseudonymous
                except StorageError:
                    if attempt == 2:
                        raise
                    time.sleep(0.1 * (attempt + 1))
            changes["log_entry"] = json.dumps(record)
        if not changes:
            return
        try:
            table.update({"PartitionKey": flow["PartitionKey"], "RowKey": flow["RowKey"], **changes}, flow["_etag"])
            return
        except Modified:
            fresh = table.get(flow["PartitionKey"], flow["RowKey"])
            if fresh is None:
                return
            flow = fresh


def _network(ip: Any) -> str:
    from shared.security.risk import network_of

    return network_of(ip) or "" if isinstance(ip, str) else ""
