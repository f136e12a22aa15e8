"""What leaves the service: one-time codes and notices, through the configured sender.

This is the single door to ``delivery``: it decides whether a message really
goes out (never to an unknown account under enumeration protection), picks
the locale from the request, and turns delivery failures into the contract's
error shape with a retry hint. Codes are never logged.
"""

from __future__ import annotations

import logging
import threading

from . import errors
from .protocol import Request
from .settings import Settings
from .storage import Storage

log = logging.getLogger("nativeauth.notify")

_sender = None
_sender_key: int | None = None
_lock = threading.Lock()


def sender(settings: Settings):
    global _sender, _sender_key
    with _lock:
        if _sender is None or _sender_key != id(settings):
            from .delivery import build_sender

            _sender = build_sender(settings)
            _sender_key = id(settings)
        return _sender


def locale_of(request: Request | None) -> str | None:
    """``ui_locales`` from the form (kept on the request context), else Accept-Language."""
    from .protocol import current

    ctx = current()
    if ctx is not None and ctx.locale:
        return ctx.locale
    if request is not None:
        return request.header("accept-language")
    return None


def send_code(storage: Storage, settings: Settings, flow, *, channel: str, to: str, purpose: str, code: str,
              real_recipient: bool, request: Request | None) -> None:
    """Send a code, or pretend to for an account that does not exist. The send
    limits count both alike, so a limit hit reveals nothing about the account."""
    from . import limits
    from .protocol import current

    if channel == "sms":
        # Numbers registered earlier are checked again against today's allow-list
        # and line-type rules, before anything is counted or sent (A13).
        from .identifiers import BlockedNumber, InvalidIdentifier, normalize_phone

        try:
            normalize_phone(to, allowed_countries=settings.sms_allowed_countries)
        except (BlockedNumber, InvalidIdentifier):
            raise errors.BlockedContact() from None
    ctx = current()
    limits.check_and_count(storage, settings, channel, to, ctx.client_ip if ctx else None)
    if not real_recipient:
        log.info("code not sent: no such account (purpose=%s channel=%s)", purpose, channel)
        return
    from .delivery import DeliveryError, Message

    try:
        message = Message(channel=channel, to=to, purpose=purpose, code=code, locale=locale_of(request))
    except ValueError:
        raise errors.InvalidRequest("The code cannot be sent to this address.", error_codes=(901001,)) from None
    try:
        sender(settings).send(message)
    except DeliveryError as exc:
        log.warning("delivery failed: %s (purpose=%s channel=%s retryable=%s)", exc.reason, purpose, channel, exc.retryable)
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
    from .delivery import DeliveryError, Message

    if count:
        from . import limits
        from .protocol import current
        from .storage import StorageError

        ctx = current()
        try:
            limits.check_and_count(storage, settings, "email", to, ctx.client_ip if ctx else None, enforce=False)
        except StorageError as exc:
            log.warning("notice not counted: %s (purpose=%s)", type(exc).__name__, purpose)
    try:
        sender(settings).send(Message(channel="email", to=to, purpose=purpose, locale=locale_of(request), detail=detail))
    except (DeliveryError, ValueError) as exc:
        log.warning("notice not sent: %s (purpose=%s)", getattr(exc, "reason", type(exc).__name__), purpose)
