"""Sign-in: ``/oauth2/v2.0/initiate``, ``/challenge`` and ``/token``
(native-auth-contract.md §3.4–3.6, §5.1, §5.5).

Flow states for ``kind = "signin"``::

    started --challenge--> password_challenge --token(password)--> (tokens)
    started --challenge--> oob_challenge --token(oob)--> (tokens)
    oob_challenge --challenge--> oob_challenge   (resend: new code, old one dead)

Enumeration protection (setting, on by default): an unknown username gets a
flow like any other; no message is sent, and every later step fails with the
same error a wrong password or wrong code gets.

Just-in-time password migration (Entra's passwordSubmit event): a user
imported with the migration marker and no password is offered the password
challenge like any password user; its first password is judged by the
client's passwordSubmit extension (the legacy system), after the attempt was
counted by the lockout. ``MigratePassword`` stores the password (argon2id)
and clears the marker, if it meets this service's password policy (Entra:
"if the password is weak, triggers UpdatePassword"); ``UpdatePassword``
answers ``PasswordResetRequired`` (the reset clears the marker); ``Retry``,
no extension, or a failed one with ``on_error: continue`` answer exactly
like a wrong password; ``Block`` answers the extension's block. The lockout
bounds the legacy calls (every instance counts on the same record), and
concurrent attempts of one user with the same password share one call in an
instance (double submits: the others use the password it stored). While a
passwordSubmit extension serves the client, every wrong-password answer the
legacy system did not give (unknown names, locked accounts, password
accounts) waits about as long as a legacy check takes, so the extension's
latency does not tell which names are accounts still to migrate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections import deque
from typing import Any

from shared.delivery import notify
from shared.extensions import config as extension_config, events as extension_events
from shared.extensions.caller import ExtensionFailed
from shared.flows import mfa, state as flows
from shared.protocol import errors
from shared.security import gate, passwords
from shared.storage import signinlog
from shared.tokens import issuance as tokens
from shared.storage.directory import (MIGRATE_FIELD, User, change_user, get_client, get_user, get_user_by_key,
                                     user_key)
from shared.protocol.identifiers import InvalidIdentifier, mask_email, normalize_email
from shared.protocol.http import Form, Request, Response, ok, parse_form, redirect_response, split_list
from shared.settings import Settings
from shared.storage.tables import Storage, get_storage

KNOWN_CHALLENGE_TYPES = flows.CHALLENGE_TYPES
LOCKOUT_RESET_SECONDS = 12 * 3600

log = logging.getLogger("nativeauth.signin")


# ------------------------------------------------------------------ shared request checks

def require_client(storage: Storage, settings: Settings, form: Form) -> str:
    client_id = form.get("client_id")
    if not client_id:
        raise errors.InvalidRequest("The request body must contain the 'client_id' parameter.")
    client = get_client(storage, settings, client_id)
    if client is None:
        raise errors.UnauthorizedClient()
    if not client.enabled:
        raise errors.InvalidClient(suberror="nativeauthapi_disabled")
    return client_id


def begin(request: Request, settings: Settings, kinds: tuple[str, ...] | None = None, *,
          allow_query: bool = False) -> tuple[Form, Storage, str, flows.Flow | None]:
    """What every native-auth endpoint does first: parse the form, check the
    client, and (given the flow kinds it accepts) load the flow of the
    continuation token. Returns (form, storage, client_id, flow or None)."""
    form = parse_form(request, settings, allow_query=allow_query)
    storage = get_storage(settings)
    client_id = require_client(storage, settings, form)
    flow = flows.load(storage, settings, form.get("continuation_token"), client_id, kinds) if kinds else None
    return form, storage, client_id, flow


def challenge_types(form: Form, *, required: bool = True) -> list[str]:
    types = [t.lower() for t in split_list(form.get("challenge_type"))]
    if not types:
        if required:
            raise errors.InvalidRequest("The request body must contain the 'challenge_type' parameter.")
        return []
    if any(t not in KNOWN_CHALLENGE_TYPES for t in types) or "redirect" not in types:
        raise errors.UnsupportedChallengeType()
    return types


def capabilities(form: Form) -> list[str]:
    """Both spellings and both separators (contract §1.1, §8 #1)."""
    return [c.lower() for c in split_list(form.get("capabilities")) + split_list(form.get("capability"))]


def username(form: Form) -> str:
    try:
        return normalize_email(form.get("username"))
    except InvalidIdentifier:
        raise errors.InvalidUsername() from None


# ------------------------------------------------------------------ endpoints

def initiate(request: Request, settings: Settings) -> Response:
    form, storage, client_id, _ = begin(request, settings)
    email = username(form)
    types = challenge_types(form)
    caps = capabilities(form)
    user = get_user(storage, email)
    if user is None and not settings.enumeration_protection:
        raise errors.UserNotFound()
    # Unknown users look like password users; users still to migrate are password users.
    has_password = user.signs_in_with_password if user else True
    if not _first_factor(types, has_password):
        return redirect_response("The client does not support a challenge type this account can use.")
    flow = flows.start(storage, settings, "signin", client_id, sealed=True, ident=user_key(email),
                       user_exists=user is not None,
                       username=email, challenge_types=types, capabilities=caps, has_password=has_password)
    return ok({"continuation_token": flow.token})


def _first_factor(types: list[str], has_password: bool) -> str | None:
    if has_password and "password" in types:
        return "password"
    if "oob" in types:
        return "oob"
    return None


def challenge(request: Request, settings: Settings) -> Response:
    form, storage, client_id, flow = begin(request, settings, ("signin", "signup", "reset"))
    if form.get("id") or flow["state"] in ("mfa_required", "mfa_challenge"):
        if not form.get("id"):
            raise errors.InvalidRequest("Choose a method: the request must contain the 'id' parameter.",
                                        suberror="introspect_required")
        return mfa.challenge(storage, settings, flow, form.get("id"), request)
    if flow["kind"] != "signin" or flow["state"] not in ("started", "password_challenge", "oob_challenge"):
        raise errors.InvalidGrant("This flow does not expect a challenge now.")
    types = challenge_types(form, required=False) or flow.json("challenge_types", [])
    factor = _first_factor(types, bool(flow["has_password"]))
    if factor is None:
        return redirect_response("The client does not support a challenge type this account can use.")
    if factor == "password":
        flow = flows.advance(storage, flow, state="password_challenge")
        return ok({"continuation_token": flow.token, "challenge_type": "password"})
    return send_email_code(storage, settings, flow, "signin_code", request)


def send_email_code(storage: Storage, settings: Settings, flow: flows.Flow, purpose: str, request: Request,
                    *, state: str = "oob_challenge") -> Response:
    """Send (or resend) an email code for this flow and answer the oob challenge."""
    email = flow["username"]
    flow, length = notify.deliver_code(storage, settings, flow, request, channel="email", to=email, purpose=purpose,
                                       real_recipient=bool(flow["user_exists"]), state=state)
    return ok({
        "continuation_token": flow.token, "challenge_type": "oob", "binding_method": "prompt",
        "challenge_channel": "email", "challenge_target_label": mask_email(email),
        "code_length": length, "interval": settings.resend_interval_seconds,
    })


def token(request: Request, settings: Settings) -> Response:
    form, storage, client_id, _ = begin(request, settings)
    grant = form.get("grant_type")
    if not grant:
        raise errors.InvalidRequest("The request body must contain the 'grant_type' parameter.")
    if grant == "refresh_token":
        return ok(tokens.redeem_refresh_token(
            storage, settings, client_id, form.get("refresh_token"), form.get("scope"),
            judge=lambda family, user: gate.refresh_subject(storage, settings, family, user, form, request)))
    if grant not in ("password", "oob", "mfa_oob", "continuation_token"):
        raise errors.UnsupportedGrantType()
    scopes = tokens.parse_scopes(settings, form.get("scope"))
    flow = flows.load(storage, settings, form.get("continuation_token"), client_id,
                      ("signin", "signup", "reset", "register"))
    try:
        if grant == "password" and flow["kind"] == "signin" and flow["state"] == "password_challenge":
            return _password_grant(storage, settings, flow, form, scopes, request)
        if grant == "oob" and flow["kind"] == "signin" and flow["state"] == "oob_challenge":
            return _oob_grant(storage, settings, flow, form, scopes, request)
        if grant in ("mfa_oob", "oob") and flow["state"] == "mfa_challenge":
            return mfa.token(storage, settings, flow, form, scopes, request)
        if grant == "continuation_token" and (flow["state"] == "ready_for_token"
                                              or (flow["kind"] == "reset" and flow["state"] == "reset_done")):
            return complete(storage, settings, flow, scopes, form, request)
    except (errors.InvalidCredentials, errors.InvalidOob, errors.PasswordResetRequired,
            errors.ExtensionBlocked) as exc:
        # The grant handlers attach the user they read (None for unknown users): no second read.
        signinlog.record(storage, flow, getattr(exc, "log_user", None), "failure",
                         exc.suberror or str(exc.error_codes[0]), flow.steps, "none")
        raise
    raise errors.InvalidGrant("The continuation_token is not valid for this grant_type.")


def _password_grant(storage: Storage, settings: Settings, flow: flows.Flow, form: Form, scopes: tokens.Scopes,
                    request: Request) -> Response:
    password = form.get("password")
    if password is None:
        raise errors.InvalidRequest("The request body must contain the 'password' parameter.")
    if len(password) > passwords.MAX_PASSWORD_CHARS:
        # No stored password is that long, so it cannot match: the same
        # answer at once for every name, known or not (A51), with no hashing.
        raise _failed(errors.InvalidCredentials(), None)
    # Read the user even for an unknown name: the same storage work either way.
    user = flows.account(storage, flow)
    if user is None or user.disabled or not user.signs_in_with_password:
        # Same work and the same answer as a wrong password (no oracle): one
        # argon2 verification and one write.
        passwords.dummy_verify(password)
        _record_unknown_failure(storage, flow["ident"])
        raise _wrong_password(storage, flow, user)
    # The attempt is counted before the password is compared (A21): a burst of
    # parallel guesses cannot all be judged against the lock state they read
    # when they started; the guess that reaches the threshold sets the lock,
    # and later ones are refused without being compared. The same holds for
    # a password the legacy system judges (migration): counted before the call.
    counted = reserve_password_attempt(storage, settings, user)
    if counted is None:  # locked (or the record stayed contended): not compared, same answer and work
        passwords.dummy_verify(password)
        _record_unknown_failure(storage, flow["ident"])
        raise _wrong_password(storage, flow, user)
    try:
        if counted.password_migrating:
            user = _migrate(storage, settings, flow, counted, password)
        else:
            user = _check_stored_password(storage, settings, flow, counted, password)
        if user.entity.get("password_reset_required"):
            raise _failed(errors.PasswordResetRequired(), user)
        flow.entity["steps"] = json.dumps(flow.steps + ["pwd"])
        return gate.issue_tokens(storage, settings, flow, user, scopes, form=form, request=request)
    finally:
        # A right password's take-back rides on the flow's next write (the gate's); a step that
        # ends without one (refused, redirected, failed) writes it here.
        flows.settle_account_change(storage, flow)


def _check_stored_password(storage: Storage, settings: Settings, flow: flows.Flow, counted: User, password: str,
                           *, pad: bool = True) -> User:
    """The password against the stored hash (the attempt is counted). Right:
    the attempt is taken back (earlier failures stay until the sign-in
    completes: they are this sign-in's risk signal; issue_tokens clears
    them), and an imported or outdated hash is replaced by our argon2id in
    the same write. Wrong: the wrong-password answer."""
    stored = counted.password_hash
    if not passwords.verify_password(stored, password):
        raise _wrong_password(storage, flow, counted, pad=pad)
    new_hash = passwords.hash_password(password) if passwords.needs_rehash(stored) else None

    def compute(u: User) -> dict[str, Any]:
        changes = undo_password_attempt(settings, u)
        if new_hash and u.password_hash == stored:   # not if the password changed meanwhile
            changes["password_hash"] = new_hash
        return changes

    # Taken back with the flow's next write (one transaction: the flow lives in the account's
    # partition), or on its own if the step ends without one (_password_grant).
    user = flows.defer_account_change(flow, counted, compute)
    if new_hash and user.password_hash == new_hash:
        log.info("password of user %s rehashed to argon2id (was %s)", user.oid, passwords.hash_kind(stored))
    return user


# ------------------------------------------------------------------ just-in-time password migration

class _Pending:
    """A legacy check in progress in this instance, shared by concurrent attempts with the same password."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.action: str | None = None
        self.message = ""
        self.failure: Exception | None = None


_inflight: dict[bytes, _Pending] = {}
_inflight_lock = threading.Lock()
_inflight_key = secrets.token_bytes(32)          # per process: the in-flight keys never outlive it
_latencies: dict[str, deque[float]] = {}         # extension name -> recent legacy check durations (seconds)
_latency_lock = threading.Lock()
LATENCY_SAMPLES = 64
LATENCY_MIN_SAMPLES = 5
_random = random.SystemRandom()


def _migrate(storage: Storage, settings: Settings, flow: flows.Flow, counted: User, password: str) -> User:
    """The first password of a user imported with the migration marker, judged
    by the client's passwordSubmit extension (the attempt is already counted:
    the lockout bounds the legacy calls, across instances too). Returns the
    user with the password stored (the attempt taken back), or raises the
    answer. Concurrent attempts in this instance with the same password share
    one legacy call (a double submit, a retrying client); different passwords
    are judged side by side, so a burst of guesses is not serialized (which
    would time differently from an unknown name)."""
    ext = extension_config.for_event(storage, "passwordSubmit", flow["client_id"])
    if ext is None:  # nothing can judge it: a wrong password (same work as one)
        passwords.dummy_verify(password)
        raise _wrong_password(storage, flow, counted)
    key = hmac.new(_inflight_key, counted.pk.encode() + b"\0" + password.encode("utf-8", "surrogatepass"),
                   hashlib.sha256).digest()
    with _inflight_lock:
        pending = _inflight.get(key)
        leader = pending is None
        if leader:
            pending = _inflight[key] = _Pending()
    if leader:
        try:
            return _legacy_verdict(storage, settings, flow, counted, password, ext, pending)
        except Exception as exc:
            if pending.action is None:
                pending.failure = exc
            raise
        finally:
            with _inflight_lock:
                if _inflight.get(key) is pending:
                    del _inflight[key]
            pending.done.set()
    # The call is bounded by the extension's timeouts, the hashing and strength check by their queues.
    bound = ext["timeout_ms"] / 1000.0 * (1 + int(ext.get("max_retries", 1))) \
        + passwords.ARGON2_QUEUE_SECONDS + passwords.STRENGTH_QUEUE_SECONDS
    pending.done.wait(bound)
    if pending.action is None:
        if isinstance(pending.failure, ExtensionFailed):
            raise ExtensionFailed(pending.failure.kind, ext["name"])
        raise errors.ServiceUnavailable(retry_after=5)
    fresh = get_user_by_key(storage, counted.pk)
    if fresh is not None and not fresh.disabled and fresh.has_password:
        return _check_stored_password(storage, settings, flow, fresh, password, pad=False)  # migrated by the leader
    return _apply_verdict(storage, settings, flow, fresh or counted, password,
                          "Retry" if pending.action == "MigratePassword" else pending.action, pending.message)


def _legacy_verdict(storage: Storage, settings: Settings, flow: flows.Flow, user: User, password: str,
                    ext: dict[str, Any], pending: _Pending) -> User:
    called = time.perf_counter()
    # ExtensionFailed (on_error "fail") goes up as the 503 it is; the attempt stays counted.
    action, message = extension_events.password_submit(storage, settings, flow["client_id"], user, flow["username"],
                                                       password, ext=ext)
    _note_latency(ext["name"], time.perf_counter() - called)
    if action == "MigratePassword":
        email = user.email
        context = (email.split("@")[0], email.split("@")[1].split(".")[0], settings.app_name.lower().replace(" ", ""))
        try:
            passwords.check_policy(password, min_length=settings.password_min_length, context=context)
        except passwords.PasswordRejected as exc:
            # Right, but not a password this service accepts: it must be changed (Entra does the same).
            log.info("legacy password of user %s is right but below the password policy (%s): reset required",
                     user.oid, exc.suberror)
            action = "UpdatePassword"
    try:
        return _apply_verdict(storage, settings, flow, user, password, action, message)
    finally:
        pending.action, pending.message = action, message   # after the password is stored


def _apply_verdict(storage: Storage, settings: Settings, flow: flows.Flow, user: User, password: str, action: str,
                   message: str) -> User:
    if action == "MigratePassword":
        new_hash = passwords.hash_password(password)
        now = int(time.time())

        def compute(u: User) -> dict[str, Any] | None:
            if u.has_password or u.disabled or not u.password_migrating:
                return None  # a reset (or another instance's migration) got there first
            return {**undo_password_attempt(settings, u), "password_hash": new_hash, "password_changed_at": now,
                    MIGRATE_FIELD: False, "password_migrated_at": now}

        saved = change_user(storage, user, compute)
        if saved is None:
            fresh = get_user_by_key(storage, user.pk)
            if fresh is not None and not fresh.disabled and fresh.has_password:
                return _check_stored_password(storage, settings, flow, fresh, password, pad=False)
            raise _wrong_password(storage, flow, fresh, pad=False)
        log.info("password of user %s migrated from the legacy system", saved.oid)
        return saved
    if action == "UpdatePassword":
        # The password is right (not a failure), but must be changed first: the marker stays.
        user = change_user(storage, user, lambda u: undo_password_attempt(settings, u)) or user
        raise _failed(errors.PasswordResetRequired(), user)
    if action == "Block":
        raise _failed(errors.ExtensionBlocked(message or None), user)
    passwords.dummy_verify(password)  # Retry: the same hashing work as a wrong password here
    raise _wrong_password(storage, flow, user, pad=False)


def _note_latency(name: str, seconds: float) -> None:
    with _latency_lock:
        _latencies.setdefault(name, deque(maxlen=LATENCY_SAMPLES)).append(seconds)


def _legacy_check_seconds(ext: dict[str, Any]) -> float:
    """A duration drawn from this instance's recent legacy checks (so that a
    wrong password anywhere takes what one of a migrating account takes), or,
    while there are too few (a new instance), from 5% to 25% of the extension's
    timeout (100-500 ms at Entra's 2 s)."""
    with _latency_lock:
        recent = list(_latencies.get(ext["name"], ()))
    if len(recent) >= LATENCY_MIN_SAMPLES:
        return _random.choice(recent)
    timeout = ext["timeout_ms"] / 1000.0
    return _random.uniform(0.05 * timeout, 0.25 * timeout)


def _wrong_password(storage: Storage, flow: flows.Flow, user: User | None, *, pad: bool = True) -> errors.AuthError:
    """The wrong-password answer (50126). While a passwordSubmit extension
    serves this client, one not judged by the legacy system comes no sooner
    than a legacy check would (``pad``): unknown names, locked accounts and
    password accounts must not answer faster than accounts still to migrate."""
    if pad:
        ext = extension_config.for_event(storage, "passwordSubmit", flow["client_id"])
        if ext is not None:
            time.sleep(min(_legacy_check_seconds(ext), ext["timeout_ms"] / 1000.0 * 2))
    return _failed(errors.InvalidCredentials(), user)


def _failed(exc: errors.AuthError, user: User | None) -> errors.AuthError:
    exc.log_user = user  # for the sign-in log; never sent to the client
    return exc


def _record_unknown_failure(storage: Storage, ident: str) -> None:
    """Failures for names without an account are counted per identifier too
    (security-baseline §6.1: limits must not only count existing accounts),
    which also gives the unknown path the same one write as the known one."""
    now = int(time.time())
    storage.table("limits").put({"PartitionKey": "pwfail-" + ident[:40], "RowKey": time.strftime("%Y%m%d%H", time.gmtime(now)),
                                 "last_failed_at": now, "expires_at": now + 86400})


def reserve_password_attempt(storage: Storage, settings: Settings, user: User) -> User | None:
    """Count one password attempt (If-Match, retried on races) before it is
    compared. Progressive lockout: the attempt that reaches
    ``lockout_threshold`` failures locks for base * 2^(n - threshold)
    seconds, capped; counts reset after 12 h idle. Returns the user as
    written, or None when the account is locked (nothing counted) or its
    record stayed contended (then the attempt is not compared at all)."""
    locked = {"now": False}

    def compute(u: User) -> dict[str, Any] | None:
        now = int(time.time())
        if u.locked_until() > now:
            locked["now"] = True
            return None
        locked["now"] = False
        last = int(u.entity.get("last_failed_at") or 0)
        n = (0 if now - last > LOCKOUT_RESET_SECONDS else int(u.entity.get("failed_logins") or 0)) + 1
        lock = 0
        if n >= settings.lockout_threshold:
            lock = now + min(settings.lockout_base_seconds * 2 ** (n - settings.lockout_threshold), settings.lockout_max_seconds)
        return {"failed_logins": n, "last_failed_at": now, "lockout_until": lock}

    counted = change_user(storage, user, compute, counter=True)
    return None if locked["now"] else counted


def undo_password_attempt(settings: Settings, u: User) -> dict[str, Any]:
    n = max(0, int(u.entity.get("failed_logins") or 0) - 1)
    return {"failed_logins": n, "lockout_until": int(u.entity.get("lockout_until") or 0) if n >= settings.lockout_threshold else 0}


def _oob_grant(storage: Storage, settings: Settings, flow: flows.Flow, form: Form, scopes: tokens.Scopes,
               request: Request) -> Response:
    # Read the user even for an unknown name: the same storage work either way (A52).
    user = flows.account(storage, flow)
    account = user if flow["user_exists"] else None

    def proven(flow: flows.Flow) -> Response:
        if account is None or account.disabled:
            raise errors.InvalidOob()  # unreachable in practice: no code was ever sent
        flow.entity["steps"] = json.dumps(flow.steps + ["otp"])
        return gate.issue_tokens(storage, settings, flow, account, scopes, form=form, request=request)

    return flows.redeem_code_then(storage, settings, flow, "signin_code", form.get("oob"), account, proven,
                                  ident=flow["ident"])


def complete(storage: Storage, settings: Settings, flow: flows.Flow, scopes: tokens.Scopes, form: Form,
             request: Request) -> Response:
    """``grant_type=continuation_token`` after sign-up, reset or registration."""
    user = flows.account(storage, flow)
    if user is None or user.disabled:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    if form.get("username"):  # optional (J omits it after registration); when sent it must match
        try:
            same = normalize_email(form.get("username")) == flow["username"]
        except InvalidIdentifier:
            same = False
        if not same:
            raise errors.InvalidGrant("The username does not match this flow.")
    return gate.issue_tokens(storage, settings, flow, user, scopes, form=form, request=request)


def introspect(request: Request, settings: Settings) -> Response:
    """``/oauth2/v2.0/introspect``: the user's registered second-factor methods."""
    form, storage, client_id, flow = begin(request, settings, ("signin", "signup", "reset"))
    return mfa.introspect(storage, settings, flow)
