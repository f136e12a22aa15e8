"""Self-service password reset: ``/resetpassword/v1.0/start``, ``/challenge``,
``/continue``, ``/submit``, ``/poll_completion`` (contract §3.11–3.15, §5.7).

Flow states for ``kind = "reset"``::

    started --challenge--> code_sent --continue(oob)--> code_verified --submit--> reset_done
            (--poll_completion: succeeded, the same token) --/token grant_type=continuation_token--> done

The reset is done synchronously in ``/submit``, so the first poll already says
``succeeded``. It revokes every refresh token of the user (``rt_not_before``)
and sends a "your password was changed" notice. The automatic sign-in after
a reset carries only the email code as its factor, so a policy that requires
a second factor still asks for one (a reset never bypasses it, A24).

Enumeration protection: an unknown address (and, while protection is on, an
account without a password) gets the same answers and no message; with
protection off they get ``user_not_found`` and ``500222``.
"""

from __future__ import annotations

import json
import time

from shared.delivery import notify
from shared.flows import state as flows
from shared.protocol import errors
from shared.security import passwords
from shared.storage.directory import MIGRATE_FIELD, User, all_code_failures_cleared, change_user, get_user, user_key
from shared.protocol.http import Request, Response, ok, redirect_response
from shared.settings import Settings
from shared.flows.signin import begin, capabilities, challenge_types, username
from shared.flows.signup import _password_error

VERIFIED_LIFETIME = 600  # contract §3.13: expires_in at most 600 s
POLL_INTERVAL = 1
PREVIOUS_PASSWORDS_KEPT = 3


class NoPassword(errors.InvalidRequest):
    error_codes = (500222,)
    description = "The user does not have a password. Sign in with a one-time code."


def _load(request: Request, settings: Settings):
    form, storage, client_id, flow = begin(request, settings, ("reset",))
    return form, storage, flow


def start(request: Request, settings: Settings) -> Response:
    form, storage, client_id, _ = begin(request, settings)
    email = username(form)
    types = challenge_types(form)
    if "oob" not in types:
        return redirect_response("Password reset needs an email code; the client does not support oob.")
    user = get_user(storage, email)
    if user is None and not settings.enumeration_protection:
        from shared.protocol.errors import UserNotFound

        raise UserNotFound()
    # A user still to migrate (imported with the marker) has a password, in the legacy system:
    # resetting it is how an UpdatePassword verdict is answered, and it clears the marker.
    if user is not None and not user.signs_in_with_password and not settings.enumeration_protection:
        raise NoPassword()
    real = user is not None and user.signs_in_with_password and not user.disabled
    flow = flows.start(storage, settings, "reset", client_id, sealed=True, ident=user_key(email), user_exists=real,
                       username=email, challenge_types=types, capabilities=capabilities(form))
    return ok({"continuation_token": flow.token})


def challenge(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if form.get("challenge_type"):
        challenge_types(form)
    if flow["state"] not in ("started", "code_sent"):
        raise errors.InvalidGrant("This flow does not expect a challenge now.")
    from shared.flows.signin import send_email_code

    return send_email_code(storage, settings, flow, "reset_code", request, state="code_sent")


def continue_(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    grant = form.get("grant_type")
    if grant != "oob":
        raise errors.InvalidRequest("grant_type must be 'oob'.") if grant else errors.InvalidRequest(
            "The request body must contain the 'grant_type' parameter.")
    if flow["state"] != "code_sent":
        raise errors.InvalidGrant("No code is waiting to be verified in this flow.")
    # Read the user even for an unknown address: the same storage work either way (A52).
    found = flows.account(storage, flow)
    user = found if flow["user_exists"] else None

    def verified(flow: flows.Flow) -> Response:
        if user is None:
            raise errors.InvalidOob()  # unreachable: no code was sent
        expires = min(int(flow["expires_at"]), int(time.time()) + VERIFIED_LIFETIME)
        flow = flows.advance(storage, flow, state="code_verified", steps=["otp"], email_verified=True, code_hash="",
                             code_used=False, valid_until=expires)   # also consumes the code
        return ok({"continuation_token": flow.token, "expires_in": max(0, expires - int(time.time()))})

    return flows.redeem_code_then(storage, settings, flow, "reset_code", form.get("oob"), user, verified,
                                  ident=flow["ident"])


def submit(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if flow["state"] != "code_verified":
        raise errors.InvalidGrant("This flow does not expect a new password now.")
    password = form.get("new_password")
    if not password:
        raise errors.InvalidRequest("The request body must contain the 'new_password' parameter.")
    user = flows.account(storage, flow)
    if user is None:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    email = user.email
    if user.entity.get("reset_by_flow") == flow.id and passwords.verify_password(user.password_hash, password):
        # Our own earlier attempt saved this password, then failed to record the step: finish it.
        flow = flows.advance(storage, flow, state="reset_done")
        return ok({"continuation_token": flow.token, "poll_interval": POLL_INTERVAL})
    flow = flows.count_password_try(storage, flow)
    previous = tuple(_password_history(user))
    context = (email.split("@")[0], email.split("@")[1].split(".")[0], settings.app_name.lower().replace(" ", ""))
    try:
        passwords.check_policy(password, min_length=settings.password_min_length, context=context,
                               previous_hashes=previous)
    except passwords.PasswordRejected as exc:
        raise _password_error(exc) from None
    new_hash = passwords.hash_password(password)
    now = int(time.time())

    def saved(u: User) -> dict:
        return {"password_hash": new_hash, "password_changed_at": now, "password_reset_required": False,
                "previous_passwords": json.dumps([p for p in _password_history(u) if p][:PREVIOUS_PASSWORDS_KEPT]),
                "rt_not_before": time.time(), "failed_logins": 0, "lockout_until": 0, **all_code_failures_cleared(),
                "reset_by_flow": flow.id, **({MIGRATE_FIELD: False} if u.entity.get(MIGRATE_FIELD) else {})}

    if flow.table == "users":
        # Saved with the step, in one transaction (the flow lives in the account's partition, A116): never
        # without it (a parallel submit whose step lost saves nothing), again on the account as it is now
        # if it changed meanwhile.
        flows.defer_account_change(flow, user, saved, tied=True)
        flow = flows.advance(storage, flow, state="reset_done")
    else:
        # A reset stored before A116: the password saved first (If-Match on the user), then the step; a
        # failure in between leaves a flow that a retry of the same request completes (reset_by_flow).
        if change_user(storage, user, saved) is None:
            raise errors.InvalidGrant("The continuation_token is not valid.")
        flow = flows.advance(storage, flow, state="reset_done")
    notify.send_notice(storage, settings, to=email, purpose="password_changed", request=request)
    return ok({"continuation_token": flow.token, "poll_interval": POLL_INTERVAL})


def _password_history(user: User) -> list[str]:
    """The account's password and the ones before it (what a new password must not repeat)."""
    return [user.password_hash] + json.loads(user.entity.get("previous_passwords") or "[]")


def poll_completion(request: Request, settings: Settings) -> Response:
    form, storage, flow = _load(request, settings)
    if flow["state"] == "reset_done":
        # A read (SDKs poll it): the same token back, no write; /token ends the flow.
        return ok({"status": "succeeded", "continuation_token": flows.presented(flow)})
    if flow["state"] == "code_verified":
        return ok({"status": "not_started", "continuation_token": form.get("continuation_token")})
    raise errors.InvalidGrant("This flow has no reset to report on.")
