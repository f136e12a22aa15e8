"""Sign-up: ``/signup/v1.0/start``, ``/challenge`` and ``/continue`` (contract §3.1–3.3, §5.6).

Flow states for ``kind = "signup"``::

    started --challenge--> code_sent --continue(oob)--> [credential_required] --challenge--> password_prompt
            --continue(password)--> [attributes_required] --continue(attributes)--> ready_for_token

After the email is verified, each ``continue`` answers the next thing still
missing (a password when the client can collect one, then required
attributes); when nothing is missing the account is created and the flow is
ready for ``/token`` with ``grant_type=continuation_token``.

Existing address with enumeration protection on: every answer looks the same
as for a new address, the owner gets a "someone tried to sign up" email
instead of a code, and the flow can never complete.
"""

from __future__ import annotations

import time

from shared.delivery import notify
from shared.flows import attributes, state as flows
from shared.protocol import errors
from shared.security import passwords
from shared.storage.directory import UserExists, create_user, get_user, get_user_by_key, user_key
from shared.protocol.identifiers import mask_email
from shared.protocol.http import Request, Response, ok, redirect_response
from shared.settings import Settings
from shared.flows.signin import begin, capabilities, challenge_types, username
from shared.storage.tables import Storage


class UserAlreadyExists(errors.AuthError):
    error = "user_already_exists"
    error_codes = (1003037,)
    description = "An account with this username already exists."


class CredentialRequired(errors.AuthError):
    error = "credential_required"
    error_codes = (55103,)
    description = "A password is required to create the account."


class AttributesRequired(errors.AuthError):
    error = "attributes_required"
    error_codes = (55106,)
    description = "Some required attributes are missing."


def _password_error(exc: passwords.PasswordRejected) -> errors.AuthError:
    return errors.InvalidGrant(str(exc), suberror=exc.suberror, error_codes=(399246,))


def hash_new_password(settings: Settings, password: str, email: str) -> str:
    context = (email.split("@")[0], email.split("@")[1].split(".")[0], settings.app_name.lower().replace(" ", ""))
    try:
        passwords.check_policy(password, min_length=settings.password_min_length, context=context)
    except passwords.PasswordRejected as exc:
        raise _password_error(exc) from None
    return passwords.hash_password(password)


def start(request: Request, settings: Settings) -> Response:
    form, storage, client_id, _ = begin(request, settings)
    email = username(form)
    types = challenge_types(form)
    if "oob" not in types:
        return redirect_response("Sign-up needs an email code; the client does not support oob.")
    from shared.security import limits

    limits.check_and_count_action(storage, settings, "signup_start", request.client_ip, settings.signup_starts_per_ip_hour)
    collected = attributes.accept(settings.signup_attributes, attributes.parse(form.get("attributes")))
    password = form.get("password")
    password_hash = hash_new_password(settings, password, email) if password else ""
    existing = get_user(storage, email)
    if existing is not None and not settings.enumeration_protection:
        raise UserAlreadyExists()
    flow = flows.start(storage, settings, "signup", client_id, ident=user_key(email), user_exists=existing is not None,
                       username=email, challenge_types=types, capabilities=capabilities(form),
                       password_hash=password_hash, attributes=collected,
                       needs_password="password" in types)
    return ok({"continuation_token": flow.token})


def challenge(request: Request, settings: Settings) -> Response:
    form, storage, client_id, flow = begin(request, settings, ("signup",))
    if form.get("challenge_type"):
        challenge_types(form)  # validated like everywhere else
    if flow["state"] in ("credential_required", "password_prompt"):
        flow = flows.advance(storage, flow, state="password_prompt")
        return ok({"continuation_token": flow.token, "challenge_type": "password"})
    if flow["state"] not in ("started", "code_sent"):
        raise errors.InvalidGrant("This flow does not expect a challenge now.")
    email = flow["username"]
    # The address is taken: its owner gets a notice instead of a code (the flow can
    # never complete); the send limits count it like a code, so a limit hit looks the same.
    flow, length = notify.deliver_code(storage, settings, flow, request, channel="email", to=email, purpose="signup_code",
                                       real_recipient=not flow["user_exists"], state="code_sent",
                                       notice_instead="signup_attempt_notice" if flow["user_exists"] else None)
    return ok({"continuation_token": flow.token, "challenge_type": "oob", "binding_method": "prompt",
               "challenge_channel": "email", "challenge_target_label": mask_email(email),
               "code_length": length, "interval": settings.resend_interval_seconds})


def continue_(request: Request, settings: Settings) -> Response:
    form, storage, client_id, flow = begin(request, settings, ("signup",))
    grant = form.get("grant_type")
    state = flow["state"]
    verified = bool(flow.get("email_verified"))
    if grant == "oob":
        if state != "code_sent":
            raise errors.InvalidGrant("No code is waiting to be verified in this flow.")
        flow = flows.redeem_code(storage, settings, flow, "signup_code", form.get("oob"))
        if flow["user_exists"]:
            raise errors.InvalidOob()  # unreachable: no code was sent to an existing address
        # The code is consumed; only now may the account be created (A55).
        flow.changes.update(email_verified=True, steps=["otp"], code_hash="", code_used=False)
    elif grant == "password":
        if state not in ("credential_required", "password_prompt"):
            raise errors.InvalidGrant("This flow does not expect a password now.")
        password = form.get("password")
        if not password:
            raise errors.InvalidRequest("The request body must contain the 'password' parameter.")
        flow = flows.count_password_try(storage, flow)
        flow.changes.update(password_hash=hash_new_password(settings, password, flow["username"]))
    elif grant == "attributes":
        if state not in ("started", "code_sent", "credential_required", "password_prompt", "attributes_required"):
            raise errors.InvalidGrant("This flow does not expect attributes now.")
        submitted = attributes.parse(form.get("attributes"))
        if not submitted:
            raise errors.InvalidRequest("The request body must contain the 'attributes' parameter.")
        merged = {**flow.json("attributes", {}), **attributes.accept(settings.signup_attributes, submitted)}
        flow.changes.update(attributes=merged)
        if not verified:  # attributes before verification: store them, the code comes next
            flow = flows.advance(storage, flow, **flow.changes)
            return ok({"continuation_token": flow.token})
    elif not grant:
        raise errors.InvalidRequest("The request body must contain the 'grant_type' parameter.")
    else:
        raise errors.UnsupportedGrantType()
    return _next_requirement(storage, settings, flow)


def _next_requirement(storage: Storage, settings: Settings, flow: flows.Flow) -> Response:
    """Ask for what is still missing, or create the account."""
    view = {**flow.entity, **{k: v for k, v in flow.changes.items()}}
    changes = dict(flow.changes)
    if view.get("needs_password") and not view.get("password_hash"):
        flow = flows.advance(storage, flow, state="credential_required", **changes)
        raise CredentialRequired(extra={"continuation_token": flow.token})
    collected = view.get("attributes")
    collected = collected if isinstance(collected, dict) else flow.json("attributes", {})
    missing = attributes.missing(settings.signup_attributes, collected)
    if missing:
        flow = flows.advance(storage, flow, state="attributes_required", **changes)
        raise AttributesRequired(extra={"continuation_token": flow.token, "required_attributes": missing})
    email = flow["username"]
    try:
        create_user(storage, email, password_hash=view.get("password_hash") or None,
                    display_name=collected.get("displayName", ""), attributes=collected,
                    extra={"created_by_flow": flow.id})
    except UserExists:
        existing = get_user_by_key(storage, user_key(email))
        if existing is None or existing.entity.get("created_by_flow") != flow.id:
            raise UserAlreadyExists() from None
        # Our own earlier attempt created it (then the flow write failed): finish the flow.
    steps = ["otp"] + (["pwd"] if view.get("password_hash") else [])
    flow = flows.advance(storage, flow, state="ready_for_token", user_exists=True, steps=steps,
                         password_hash="", **{k: v for k, v in changes.items() if k not in ("password_hash", "steps")})
    return ok({"continuation_token": flow.token, "expires_in": max(0, int(flow["expires_at"]) - int(time.time()))})
