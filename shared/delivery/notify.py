"""What leaves the service: one-time codes and notices, through the configured sender.

This is the single door to ``delivery``: it decides whether a message really
goes out (never to an unknown account under enumeration protection), picks
the locale from the request, and turns delivery failures into the contract's
error shape with a retry hint. Codes are never logged.
"""

from __future__ import annotations

import logging
import threading

from shared.protocol import errors
from shared.protocol.http import Request
from shared.settings import Settings
from shared.storage.tables import Storage

log = logging.getLogger("nativeauth.notify")

_sender = None
_sender_key: int | None = None
_lock = threading.Lock()


def sender(settings: Settings):
    global _sender, _sender_key
    with _lock:
        if _sender is None or _sender_key != id(settings):
            from shared.delivery.senders import build_sender

            _sender = build_sender(settings)
            _sender_key = id(settings)
        return _sender


def locale_of(request: Request | None) -> str | None:
    """``ui_locales`` from the form (kept on the request context), else Accept-Language."""
    from shared.protocol.http import current

    ctx = current()
    if ctx is not None and ctx.locale:
        return ctx.locale
    if request is not None:
        return request.header("accept-language")
    return None


def deliver_code(storage: Storage, settings: Settings, flow, request: Request | None, *, channel: str, to: str,
                 purpose: str, real_recipient: bool, state: str, same_target: bool = True,
                 notice_instead: str | None = None, **changes):
    """The one way a code leaves the service, for every flow: the send is
    reserved on the flow first, then counted, then sent.

    1. the flow's own rules (resend interval, five codes per flow) on the
       flow as read, and for SMS today's allow-list and line-type rules;
    2. the new code is written to the flow with ``If-Match`` (the step's one
       conditional write: it rotates the continuation token). Of parallel
       requests on one flow exactly one gets past here, so the per-flow cap
       cannot be raced into extra messages;
    3. the send limits count it (``limits.check_and_count``), the same for an
       account that does not exist (nothing is sent then) and for the
       "someone tried to sign up" notice sent instead of a sign-up code;
    4. the message goes out: through the client's ``otpSend`` custom extension
       when one answers this channel (then the built-in sender is not used;
       when it fails and its ``fallback`` is ``builtin``, the built-in sender
       delivers), else through the built-in sender. Nothing goes to the
       extension for an account that does not exist (nothing is sent then).

    If 3 or 4 fails (a failed extension call included), the flow is put back
    as it was and the cooldown released (the client may retry at once with
    the same continuation token); a refusal by a limit is written to the
    sign-in log with the limit's name. Returns ``(flow, code length)``."""
    from shared.flows import state as flows
    from shared.security import limits
    from shared.protocol.http import current
    from shared.storage.tables import StorageError

    if channel == "sms":
        # Numbers registered earlier are checked again against today's allow-list
        # and line-type rules, before anything is counted or sent (A13).
        from shared.protocol.identifiers import BlockedNumber, InvalidIdentifier, normalize_phone

        try:
            normalize_phone(to, allowed_countries=settings.sms_allowed_countries)
        except (BlockedNumber, InvalidIdentifier):
            raise errors.BlockedContact() from None
    flows.check_can_send(settings, flow, same_target=same_target)
    length = settings.sms_code_length if channel == "sms" else settings.email_code_length
    code = flows.new_code(settings, flow, purpose, channel, length, to)
    ctx = current()
    ip = ctx.client_ip if ctx else None
    plan = limits.plan(settings, channel, to, ip, purpose, account=flow.get("ident"),
                       real=real_recipient or bool(notice_instead))
    reserved = flows.advance(storage, flow, state=state, code_ticket=plan.ticket.to_json(), **code.changes, **changes)
    counted = False
    try:
        limits.check_and_count(storage, settings, channel, to, ip, purpose=purpose, the_plan=plan)
        counted = True
        if notice_instead:
            send_notice(storage, settings, to=to, purpose=notice_instead, request=request)
        elif not real_recipient:
            log.info("code not sent: no such account (purpose=%s channel=%s)", purpose, channel)
        else:
            _deliver(storage, settings, flow.get("client_id"), Message_of(channel, to, purpose, code.value, request))
    except (errors.AuthError, StorageError) as exc:
        throttled = isinstance(exc, (errors.SlowDown, errors.BlockedContact))
        # A refusal is written to the sign-in log once per flow: a client retrying the same
        # continuation token against a full limit does not fill the log.
        # (Judged on the flow as the reservation found it stored: a sealed start token's own record
        # knows nothing of earlier refusals, A115.)
        first_refusal = throttled and not reserved.get("throttle_logged")
        flows.restore(storage, flow, reserved,
                      **({"throttle_logged": 1} if throttled or reserved.get("throttle_logged") else {}))
        if counted:
            limits.release_cooldown(storage, plan.ticket)  # not delivered: the client may retry at once
        if first_refusal:
            from shared.storage import signinlog

            limit = ((ctx.extra or {}).get("limit") if ctx else None) or type(exc).__name__
            signinlog.record(storage, flow, None, "throttled", str(limit)[:200], flow.steps, "none")
        raise
    return reserved, length


def Message_of(channel: str, to: str, purpose: str, code: str, request: Request | None):  # noqa: N802 - a factory
    from shared.delivery.senders import Message

    try:
        return Message(channel=channel, to=to, purpose=purpose, code=code, locale=locale_of(request))
    except ValueError:
        raise errors.InvalidRequest("The code cannot be sent to this address.", error_codes=(901001,)) from None


def _deliver(storage: Storage, settings: Settings, client_id: str | None, message) -> None:
    """A code: the client's OTP-send extension first, else the built-in sender.
    ``ExtensionFailed`` (a 503 with Entra's code) when the extension failed and
    has no fallback: the caller puts the flow back and releases the cooldown."""
    from shared.extensions import events as extension_events

    outcome = extension_events.otp_send(storage, settings, client_id, message.channel, message.to, message.code)
    if outcome == "sent":
        log.info("code delivered by the otpSend extension (purpose=%s channel=%s)", message.purpose, message.channel)
        return
    if outcome == "fallback":
        log.warning("otpSend extension failed: the built-in sender delivers (purpose=%s channel=%s)",
                    message.purpose, message.channel)
    _send(settings, message)


def _send(settings: Settings, message) -> None:
    from shared.delivery.senders import DeliveryError

    try:
        sender(settings).send(message)
    except DeliveryError as exc:
        log.warning("delivery failed: %s (purpose=%s channel=%s retryable=%s)", exc.reason, message.purpose,
                    message.channel, exc.retryable)
        if exc.retryable:
            raise errors.ServiceUnavailable("The code could not be sent. Retry shortly.",
                                            retry_after=exc.retry_after or 5) from None
        raise errors.InvalidRequest("The code could not be sent to this address.", error_codes=(901001,)) from None


def send_notice(storage: Storage, settings: Settings, *, to: str, purpose: str, request: Request | None,
                detail: str | None = None, count: bool = False) -> None:
    """A notice without a code (password changed, someone tried to sign up, a
    method added or removed). Best effort: a failed notice never fails the
    user's request. ``count`` puts it in the send limits (counted, never
    refused: see ``limits.check_and_count``); ``detail`` is a masked value
    the text names (the method)."""
    from shared.delivery.senders import DeliveryError, Message

    if count:
        from shared.security import limits
        from shared.protocol.http import current
        from shared.storage.tables import StorageError

        ctx = current()
        try:
            limits.check_and_count(storage, settings, "email", to, ctx.client_ip if ctx else None, purpose=purpose,
                                   enforce=False)
        except StorageError as exc:
            log.warning("notice not counted: %s (purpose=%s)", type(exc).__name__, purpose)
    try:
        sender(settings).send(Message(channel="email", to=to, purpose=purpose, locale=locale_of(request), detail=detail))
    except (DeliveryError, ValueError) as exc:
        log.warning("notice not sent: %s (purpose=%s)", getattr(exc, "reason", type(exc).__name__), purpose)
