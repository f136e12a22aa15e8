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

Custom authentication extensions (``shared/extensions``), as Entra calls them:

* ``attributeCollectionStart``: once per flow, right after the email is
  verified and before anything else is asked for (remembered in the flow as
  ``attr_start``, written with that step; a step that fails after the call
  calls it again when retried). ``showBlockPage`` ends the flow (``access_denied``
  1003023 with the extension's message). ``setPrefillValues`` gives
  *defaults*: each value that passes the attribute schema is used for an
  attribute the client has not sent (a client value always wins), so a
  prefilled required attribute is not asked for. Native auth has no form to
  show a prefilled value in: the user never sees it unless the app asks for
  it anyway, and it is stored with the account (and shown to the submit
  extension) like a value the user typed. Values outside the schema or
  failing it are dropped.
* ``attributeCollectionSubmit``: when nothing is missing, right before the
  account is created, with every collected attribute (typed as the schema
  says). ``modifyAttributeValues`` replaces values after the same schema
  validation (names outside the schema are ignored, as Entra does; a value
  that fails the schema is a broken answer, below). ``showValidationError``:
  on ``grant_type=attributes`` the answer is ``invalid_grant`` /
  ``attribute_validation_failed`` with ``invalid_attributes`` and the same
  continuation token, which stays valid (the SDKs resubmit with the token
  they hold); on the code or password step, where the SDKs cannot resubmit
  attributes after that error, it is ``attributes_required`` naming the
  refused attributes (a new token). Either way the flow waits for
  attributes again, without the refused values. Names outside the schema are
  dropped; a validation error that names none of the schema's attributes
  cannot be shown to anyone and fails closed like a broken answer with
  ``on_error: fail``, whatever ``on_error`` says (``continue`` would create
  an account the extension refused). ``showBlockPage`` ends the flow. At
  most ``MAX_EXTENSION_REFUSALS_PER_FLOW`` validation errors per flow (an
  invitation code must not be guessable at HTTP speed): then the flow
  answers ``invalid_grant`` without calling the extension. Attributes sent
  before the email is verified are stored, never shown to an extension.
* A failed call follows the extension's ``on_error``: ``fail`` is the
  caller's 503 (``ExtensionFailed``) with nothing written, so the same
  continuation token (and, on the code step, the same code) works once the
  extension is back; ``continue`` goes on as if there were no extension.
"""

from __future__ import annotations

import logging
import time

from shared.delivery import notify
from shared.extensions import config as extension_config, events as extension_events
from shared.extensions.caller import ExtensionFailed
from shared.flows import attributes, state as flows
from shared.protocol import errors
from shared.security import passwords
from shared.storage.directory import (UserExists, create_account, get_user, get_user_by_key, new_user_entity,
                                     user_key)
from shared.protocol.identifiers import mask_email
from shared.protocol.http import Request, Response, ok, redirect_response
from shared.settings import Settings
from shared.flows.signin import begin, capabilities, challenge_types, username
from shared.storage.tables import Storage

log = logging.getLogger("nativeauth.signup")


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
        token = form.get("continuation_token") or ""

        def code_right(flow: flows.Flow) -> Response:
            if flow["user_exists"]:
                raise errors.InvalidOob()  # unreachable: no code was sent to an existing address
            # The code is consumed by the step's first conditional write (the one that creates the account, in
            # the same transaction, or asks for what is missing): never an account before its code (A55).
            flow.changes.update(email_verified=True, steps=["otp"], code_hash="", code_used=False)
            return _next_requirement(storage, settings, flow, grant=grant, token=token)

        if flow.table != "users":   # a sign-up stored before A116: its code consumed by a write of its own, as then
            return code_right(flows.redeem_code(storage, settings, flow, "signup_code", form.get("oob")))
        return flows.redeem_code_then(storage, settings, flow, "signup_code", form.get("oob"), None, code_right)
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
    return _next_requirement(storage, settings, flow, grant=grant, token=form.get("continuation_token") or "")


def _next_requirement(storage: Storage, settings: Settings, flow: flows.Flow, *, grant: str = "",
                      token: str = "") -> Response:
    """Ask for what is still missing, or create the account. ``grant`` is the
    step that brought the flow here and ``token`` the continuation token the
    client presented (for the answer to an extension's validation error)."""
    view = {**flow.entity, **{k: v for k, v in flow.changes.items()}}
    changes = dict(flow.changes)
    collected = view.get("attributes")
    collected = collected if isinstance(collected, dict) else flow.json("attributes", {})
    if view.get("email_verified") and not view.get("attr_start"):
        ext = extension_config.for_event(storage, "attributeCollectionStart", flow["client_id"])
        if ext is not None and flow.pending:
            # No extension hears of the address before its code is consumed (A55): a write of its own first.
            flow = flows.advance(storage, flow, rotate=False)
        collected = _collection_start(storage, settings, flow, collected, ext=ext)
        changes.update(attributes=collected, attr_start=1)
    if view.get("needs_password") and not view.get("password_hash"):
        flow = flows.advance(storage, flow, state="credential_required", **changes)
        raise CredentialRequired(extra={"continuation_token": flow.token})
    missing = attributes.missing(settings.signup_attributes, collected)
    if missing:
        flow = flows.advance(storage, flow, state="attributes_required", **changes)
        raise AttributesRequired(extra={"continuation_token": flow.token, "required_attributes": missing})
    flow, collected = _collection_submit(storage, settings, flow, collected, changes, grant=grant, token=token)
    changes["attributes"] = collected
    email = flow["username"]
    steps = ["otp"] + (["pwd"] if view.get("password_hash") else [])
    done = dict(state="ready_for_token", user_exists=True, steps=steps, password_hash="",
                **{k: v for k, v in changes.items() if k not in ("password_hash", "steps")})
    account = new_user_entity(email, password_hash=view.get("password_hash") or None,
                              display_name=collected.get("displayName", ""), attributes=collected,
                              extra={"created_by_flow": flow.id})
    try:
        if flow.table == "users":
            # The account and the flow's step in one transaction (the flow lives in the address's partition, A116).
            flows.defer_account_create(flow, account)
        else:   # a sign-up stored before A116 (its code already consumed): the account, then the step
            create_account(storage, account)
        flow = flows.advance(storage, flow, **done)
    except UserExists:
        existing = get_user_by_key(storage, user_key(email))
        if existing is None or existing.entity.get("created_by_flow") != flow.id:
            raise UserAlreadyExists() from None
        # Our own earlier attempt created it (then the flow write failed): finish the flow.
        flow = flows.advance(storage, flow, **done)
    return ok({"continuation_token": flow.token, "expires_in": max(0, int(flow["expires_at"]) - int(time.time()))})


# ------------------------------------------------------------------ custom extensions

MAX_MESSAGE_CHARS = 300
# Validation errors from the submit extension per flow: an invitation code checked by an extension
# must not be guessable at HTTP speed once one address is verified (A101).
MAX_EXTENSION_REFUSALS_PER_FLOW = 10


def _clean(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An extension's text as one printable line (it ends up in error_description,
    whose lines the SDKs and people read: no forged "Trace ID:" line)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())[:limit]


def _blocked(storage: Storage, flow: flows.Flow, message: str) -> errors.ExtensionBlocked:
    """The extension's block page: the flow ends (its token is dead), the message is the answer."""
    try:
        flows.finish(storage, flow)
    except errors.AuthError:
        pass  # another request moved the flow on meanwhile: it is not ours to end
    return errors.ExtensionBlocked(_clean(message) or errors.ExtensionBlocked.description)


def _collection_start(storage: Storage, settings: Settings, flow: flows.Flow,
                      collected: dict[str, str], *, ext: dict | None) -> dict[str, str]:
    """attributeCollectionStart (``ext``, the client's, or None): the attributes with the
    extension's prefill as defaults (client values win), or the block page."""
    if ext is None:
        return collected
    schema = settings.signup_attributes
    answer = extension_events.attribute_collection_start(storage, settings, flow["client_id"], flow["username"],
                                                         attributes.typed(schema, collected), ext=ext)
    if "block" in answer:
        raise _blocked(storage, flow, answer["block"])
    prefill = answer.get("prefill") or {}
    if not prefill:
        return collected
    accepted, invalid = attributes.valid_values(schema, prefill)
    ignored = len(prefill) - len(accepted) - len(invalid)
    if invalid or ignored:
        log.warning("attributeCollectionStart: %d prefill value(s) failing the schema and %d outside it were dropped",
                    len(invalid), ignored)
    return {**accepted, **collected}


def _collection_submit(storage: Storage, settings: Settings, flow: flows.Flow, collected: dict[str, str],
                       changes: dict, *, grant: str, token: str) -> tuple[flows.Flow, dict[str, str]]:
    """attributeCollectionSubmit: the flow and the attributes to create the
    account with, or the answer that sends the client back to its attributes,
    or the block page."""
    ext = extension_config.for_event(storage, "attributeCollectionSubmit", flow["client_id"])
    if ext is None:
        return flow, collected
    checks = int(flow.get("attr_refusals") or 0)
    if checks >= MAX_EXTENSION_REFUSALS_PER_FLOW:
        raise errors.InvalidGrant("Too many attribute submissions were refused in this flow. Start again.")
    # The check is counted before the extension sees it, with If-Match: of parallel submissions on one
    # continuation token exactly one reaches the extension (guessing an invitation code, A101).
    flow = flows.advance(storage, flow, rotate=False, attr_refusals=checks + 1)
    schema = settings.signup_attributes
    answer = extension_events.attribute_collection_submit(storage, settings, flow["client_id"], flow["username"],
                                                          attributes.typed(schema, collected), ext=ext)
    known = {spec["name"] for spec in schema}
    if "block" in answer:
        raise _blocked(storage, flow, answer["block"])
    if "modify" in answer:
        wanted = {k: v for k, v in answer["modify"].items() if k in known}
        if len(wanted) < len(answer["modify"]):
            log.warning("attributeCollectionSubmit: %d modified value(s) outside the attribute schema were ignored",
                        len(answer["modify"]) - len(wanted))
        modified, invalid = attributes.valid_values(schema, wanted)
        if invalid:
            log.warning("attributeCollectionSubmit: extension %s modified %d value(s) so they fail the schema",
                        ext["name"], len(invalid))
            if ext.get("on_error") == "continue":
                return flow, collected  # as if there were no extension
            raise ExtensionFailed("body", ext["name"])
        return flow, {**collected, **modified}
    if "errors" in answer:
        names = [n for n in answer["errors"] if n in known]
        if not names:
            # A refusal nobody can act on: never "continue" past it (that would create the account).
            log.warning("attributeCollectionSubmit: extension %s refused attributes outside the schema", ext["name"])
            raise ExtensionFailed("body", ext["name"])
        _refused(storage, settings, flow, collected, changes, names, answer, grant=grant, token=token)
    return flow, collected


def _refused(storage: Storage, settings: Settings, flow: flows.Flow, collected: dict[str, str], changes: dict,
             names: list[str], answer: dict, *, grant: str, token: str) -> None:
    """The extension's validation error, as the SDKs can act on it (raises)."""
    details = "; ".join(f"{n}: {_clean(answer['errors'][n], 200)}" for n in names if _clean(answer["errors"][n], 200))
    page = _clean(answer.get("message") or "")
    description = " ".join(p for p in ("One or more attributes are not valid.", page, details) if p)[:1500]
    kept = {k: v for k, v in collected.items() if k not in names}
    rest = {k: v for k, v in changes.items() if k != "attributes"}
    if grant == "attributes":
        # MSAL JS, iOS and Android resubmit with the continuation token they hold: it stays valid.
        flows.advance(storage, flow, rotate=False, state="attributes_required", attributes=kept, **rest)
        raise errors.InvalidGrant(description, suberror="attribute_validation_failed", error_codes=(55107,),
                                  extra={"invalid_attributes": [{"name": n} for n in names],
                                         "continuation_token": token})
    # After a code or a password the SDKs end the flow on attribute_validation_failed;
    # attributes_required takes them to their attribute-collection state instead.
    flow = flows.advance(storage, flow, state="attributes_required", attributes=kept, **rest)
    raise AttributesRequired(description, extra={"continuation_token": flow.token,
                                                 "required_attributes": attributes.asked_again(
                                                     settings.signup_attributes, names)})
