"""Sending one-time codes and account notices (email and SMS).

Public API
----------
``Message``           what to send (channel, normalized recipient, purpose, code...)
``DeliveryError``     raised by ``Sender.send``: ``retryable``, ``retry_after``, ``reason``
``Sender``            protocol: ``send(message) -> None``
``OutboxSender``      local development: one JSON line per message in a file
``AcsSmsSender``      Azure Communication Services SMS (``SmsClient``)
``AcsEmailSender``    Azure Communication Services Email (``EmailClient``)
``CompositeSender``   routes by ``message.channel``
``build_sender(settings)``  the sender the settings ask for
``mask_recipient(to)``      a loggable form of an address / phone number
``read_outbox(path)``       the outbox records (tests, local tooling)

The ACS SDKs, ``azure.core`` and ``azure.identity`` are imported lazily (in
constructors / on error), so importing this module is cheap and never pulls
in ``azure.communication``.

Time bounds (no request hangs for long)
---------------------------------------
Every SDK client gets ``connection_timeout=connect_timeout`` (default 3 s),
``read_timeout`` (SMS: ``timeout``, default 10 s; email: ``request_timeout``,
default 5 s) and a ``RetryPolicy(retry_total=1, retry_connect=1,
retry_read=0, retry_status=0, timeout=...)``:

* the send itself (a POST) is never retried by the SDK: azure-core does not
  retry POSTs after transport errors, and ``retry_status=0`` turns off the
  retry on 429/5xx -- which would otherwise *sleep for the server's
  Retry-After*, however long. The error surfaces at once as a
  ``DeliveryError`` carrying ``retry_after``; the caller decides.
* only the email status polls (GET) may be retried, once, on a connection
  failure.

So ``AcsSmsSender.send`` returns within about ``connect_timeout + timeout``
(13 s by default) and ``AcsEmailSender.send`` within about
``connect_timeout + request_timeout + timeout`` (18 s by default: the POST,
then at most ``timeout`` seconds waiting for the operation status). A status
wait that runs out raises ``DeliveryError(retryable=True)``; ACS had accepted
the message by then, so it may still arrive.

Privacy: codes and full recipient addresses are never logged, and
``DeliveryError.reason`` never contains either (SDK error messages, which can
echo the request, are not copied and not chained). ``OutboxSender`` is the
exception by design: it is for local development and prints the code.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import logging
import math
import os
import re
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shared.delivery import templates
from shared.delivery.templates import CODE_PURPOSES, PURPOSES, Rendered

log = logging.getLogger(__name__)

CHANNELS = ("email", "sms")
DEFAULT_TIMEOUT = 10.0          # SMS read timeout; email status wait
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_REQUEST_TIMEOUT = 5.0   # email: read timeout of each HTTP request
DEFAULT_POLL_INTERVAL = 1.0     # email: status poll interval (unless the service sends Retry-After)

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}\Z")
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f<>(),;:\"\[\]\\]+@[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?\Z")
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


# --------------------------------------------------------------------------
# Message and errors
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """One message to one recipient.

    ``to`` is normalized by the caller: a lower-case email address for
    ``channel="email"``, an E.164 phone number (``+4915112345678``) for
    ``channel="sms"``. ``code`` is required for the ``*_code`` purposes.
    ``locale`` is a ``ui_locales`` value or an ``Accept-Language`` header.
    ``origin_domain`` (SMS) adds the ``@domain #code`` WebOTP line.
    ``detail`` is an already masked value a notice names (``+49*******5678``).
    """

    channel: str
    to: str
    purpose: str
    code: str | None = None
    locale: str | None = None
    origin_domain: str | None = None
    detail: str | None = None  # a masked value a notice names (the method added or removed)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError("channel must be 'email' or 'sms'")
        if self.purpose not in PURPOSES:
            raise ValueError(f"unknown purpose {self.purpose!r}")
        if not isinstance(self.to, str):
            raise ValueError("recipient must be a string")
        if self.channel == "sms" and not _E164.match(self.to):
            raise ValueError("sms recipient must be an E.164 phone number")
        if self.channel == "email" and (self.to != self.to.lower() or len(self.to) > 254 or not _EMAIL.match(self.to)):
            raise ValueError("email recipient must be a normalized (lower-case) address")
        if self.purpose in CODE_PURPOSES and not self.code:
            raise ValueError(f"purpose {self.purpose!r} needs a code")

    def __repr__(self) -> str:  # never show the code or the full address
        return (f"Message(channel={self.channel!r}, to={mask_recipient(self.to)!r}, purpose={self.purpose!r}, "
                f"code={'***' if self.code else None}, locale={self.locale!r}, origin_domain={self.origin_domain!r})")

    __str__ = __repr__


class DeliveryError(Exception):
    """A message could not be handed to the provider.

    ``retryable``: trying again later may work (throttling, 5xx, timeouts,
    network). ``retry_after``: seconds the provider asked us to wait, if it
    said. ``reason``: short, safe to log and to show operators; holds no
    code, secret or recipient.
    """

    def __init__(self, reason: str, *, retryable: bool = False, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = bool(retryable)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"DeliveryError({self.reason!r}, retryable={self.retryable}, retry_after={self.retry_after})"


@runtime_checkable
class Sender(Protocol):
    def send(self, message: Message) -> None:
        """Deliver ``message`` or raise ``DeliveryError``."""


def mask_recipient(to: str) -> str:
    """``a***@example.com`` / ``+49*******78``: enough to correlate, not to identify."""
    if not isinstance(to, str) or not to:
        return "?"
    if "@" in to:
        local, _, domain = to.rpartition("@")
        return (local[:1] or "?") + "***@" + domain
    if len(to) <= 5:
        return "*" * len(to)
    return to[:3] + "*" * (len(to) - 5) + to[-2:]


def _render(message: Message, app_name: str) -> Rendered:
    try:
        return templates.render(message, app_name)
    except ValueError as exc:
        raise DeliveryError(f"cannot render message: {exc}", retryable=False) from None


# --------------------------------------------------------------------------
# Outbox (local development)
# --------------------------------------------------------------------------

_path_locks: dict[str, threading.Lock] = {}
_path_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.Lock:
    with _path_locks_guard:
        return _path_locks.setdefault(path, threading.Lock())


def _utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OutboxSender:
    """Appends one JSON object per line to ``path`` (local development only).

    Record fields: ``id``, ``sent_at`` (ISO-8601 UTC), ``channel``, ``to``,
    ``purpose``, ``code``, ``locale`` (language used), ``requested_locale``,
    ``origin_domain``, ``subject``, ``body`` (plain text; the SMS text for
    SMS), ``html`` (email, else null), ``sms`` (SMS, else null).

    Thread-safe (one lock per file path in this process, plus an advisory
    ``flock`` across processes where available; each record is one
    ``write`` in append mode, flushed). With ``echo`` a one-line summary,
    including the code, goes to stdout.
    """

    def __init__(self, path: str | os.PathLike, echo: bool = True, *, app_name: str = "Native Auth", stream: Any = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.echo = echo
        self.app_name = app_name
        self._stream = stream
        self._lock = _lock_for(self.path)

    def send(self, message: Message) -> None:
        rendered = _render(message, self.app_name)
        record = {
            "id": str(uuid.uuid4()),
            "sent_at": _utc_now_iso(),
            "channel": message.channel,
            "to": message.to,
            "purpose": message.purpose,
            "code": message.code,
            "locale": rendered.language,
            "requested_locale": message.locale,
            "origin_domain": message.origin_domain,
            "subject": rendered.subject,
            "body": rendered.text,
            "html": rendered.html,
            "sms": rendered.sms,
        }
        line = json.dumps(record, ensure_ascii=True) + "\n"  # ASCII: readable whatever the reader's encoding
        try:
            with self._lock:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                with open(self.path, "a", encoding="utf-8", newline="\n") as f:
                    _flock(f)
                    f.write(line)
                    f.flush()
        except OSError:
            raise DeliveryError("outbox write failed", retryable=True) from None
        if self.echo:
            out = self._stream or sys.stdout
            code = f" code={message.code}" if message.code else ""
            try:
                print(f"[outbox] {message.channel} {message.purpose} to {mask_recipient(message.to)}{code}", file=out, flush=True)
            except (OSError, ValueError):
                pass


def _flock(f: Any) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: the in-process lock still applies
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
    except OSError:
        pass


def read_outbox(path: str | os.PathLike) -> list[dict]:
    """All records in an outbox file, oldest first (missing file: [])."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------
# Azure Communication Services
# --------------------------------------------------------------------------

def _managed_identity(client_id: str | None) -> Any:
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def _sdk_kwargs(read_timeout: float, connect_timeout: float, extra: dict | None) -> dict:
    from azure.core.pipeline.policies import RetryPolicy

    kwargs: dict[str, Any] = {
        "retry_policy": RetryPolicy(
            retry_total=1,
            retry_connect=1,
            retry_read=0,
            retry_status=0,
            retry_backoff_factor=0.5,
            retry_backoff_max=2,
            timeout=connect_timeout + read_timeout,
        ),
        "connection_timeout": connect_timeout,
        "read_timeout": read_timeout,
    }
    kwargs.update(extra or {})
    return kwargs


def _retry_after_seconds(headers: Any) -> int | None:
    if not headers:
        return None
    try:
        for name in ("retry-after-ms", "x-ms-retry-after-ms"):
            value = headers.get(name)
            if value:
                return max(0, math.ceil(float(value) / 1000.0))
        value = headers.get("Retry-After")
        if not value:
            return None
        value = str(value).strip()
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
            return min(86400, math.ceil(float(value)))
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        delta = (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds()
        return min(86400, max(0, math.ceil(delta)))
    except (TypeError, ValueError, OverflowError):
        return None


def _error_code(exc: Any) -> str | None:
    try:
        code = getattr(getattr(exc, "error", None), "code", None)
    except Exception:  # pragma: no cover - defensive
        return None
    return code if isinstance(code, str) and _SAFE_CODE.match(code) else None


def _status_error(channel: str, status: int, retry_after: int | None = None, code: str | None = None) -> DeliveryError:
    suffix = f" {code}" if code else ""
    if status == 429:
        return DeliveryError(f"{channel}: throttled (429{suffix})", retryable=True, retry_after=retry_after)
    if status == 408 or status >= 500:
        return DeliveryError(f"{channel}: service error ({status}{suffix})", retryable=True, retry_after=retry_after)
    if status in (401, 403):
        return DeliveryError(f"{channel}: not authorized ({status}{suffix})", retryable=False)
    return DeliveryError(f"{channel}: rejected ({status}{suffix})", retryable=False)


def map_azure_error(exc: BaseException, channel: str) -> DeliveryError:
    """Translate an azure-core / azure-identity exception into ``DeliveryError``."""
    if isinstance(exc, DeliveryError):
        return exc
    try:
        from azure.core import exceptions as ae
    except ImportError:  # pragma: no cover
        return DeliveryError(f"{channel}: send failed ({type(exc).__name__})", retryable=False)

    if isinstance(exc, ae.HttpResponseError):
        status = getattr(exc, "status_code", None)
        response = getattr(exc, "response", None)
        if status is None and response is not None:
            status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            headers = getattr(response, "headers", None)
            return _status_error(channel, status, _retry_after_seconds(headers), _error_code(exc))
        if isinstance(exc, ae.ClientAuthenticationError):
            # No HTTP status: the credential could not get a token (IMDS hiccup...).
            try:
                from azure.identity import CredentialUnavailableError
            except ImportError:  # pragma: no cover
                CredentialUnavailableError = ()  # type: ignore[assignment]
            if CredentialUnavailableError and isinstance(exc, CredentialUnavailableError):
                return DeliveryError(f"{channel}: credential unavailable", retryable=False)
            return DeliveryError(f"{channel}: could not get a token", retryable=True)
        if isinstance(status, int):
            # A long-running operation that ended in Failed/Canceled (status 200 poll).
            code = _error_code(exc)
            return DeliveryError(f"{channel}: operation failed" + (f" ({code})" if code else ""), retryable=False)
        return DeliveryError(f"{channel}: bad response", retryable=True)
    if isinstance(exc, (ae.ServiceRequestTimeoutError, ae.ServiceResponseTimeoutError)):
        return DeliveryError(f"{channel}: timeout", retryable=True)
    if isinstance(exc, ae.ServiceRequestError):
        return DeliveryError(f"{channel}: connection failed", retryable=True)
    if isinstance(exc, ae.ServiceResponseError):
        return DeliveryError(f"{channel}: connection lost or timed out", retryable=True)
    if isinstance(exc, ae.AzureError):
        return DeliveryError(f"{channel}: service error ({type(exc).__name__})", retryable=True)
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"{channel}: timeout", retryable=True)
    return DeliveryError(f"{channel}: send failed ({type(exc).__name__})", retryable=False)


def _check_channel(message: Message, channel: str) -> None:
    if message.channel != channel:
        raise DeliveryError(f"{channel} sender cannot send {message.channel} messages", retryable=False)


class _AcsSender:
    channel = ""

    def __init__(self, *, sender: str, app_name: str, connection_string: str | None, endpoint: str | None,
                 client_id: str | None, credential: Any) -> None:
        if not sender:
            raise ValueError(f"{self.channel}: a sender address / number is required")
        if not connection_string and not endpoint:
            raise ValueError(f"{self.channel}: set an ACS connection string or endpoint")
        self.sender = sender
        self.app_name = app_name
        self._connection_string = connection_string
        self._endpoint = endpoint
        self._credential = None if connection_string else (credential or _managed_identity(client_id))

    def _log_ok(self, message: Message) -> None:
        log.info("delivery ok: %s %s to %s", message.channel, message.purpose, mask_recipient(message.to))

    def _log_fail(self, message: Message, err: DeliveryError) -> None:
        log.warning("delivery failed: %s %s to %s: %s (retryable=%s)", message.channel, message.purpose,
                    mask_recipient(message.to), err.reason, err.retryable)

    def close(self) -> None:
        try:
            self._client.close()  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover
            pass


class AcsSmsSender(_AcsSender):
    """SMS through ``azure.communication.sms.SmsClient``.

    Auth: ``connection_string`` (HMAC) if given, else ``endpoint`` with
    ``credential`` (default ``ManagedIdentityCredential(client_id=client_id)``).
    ``client_kwargs`` go to the SDK client (e.g. ``connection_verify``).
    """

    channel = "sms"

    def __init__(self, *, sender: str, app_name: str = "Native Auth", connection_string: str | None = None,
                 endpoint: str | None = None, client_id: str | None = None, credential: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 client_kwargs: dict | None = None) -> None:
        super().__init__(sender=sender, app_name=app_name, connection_string=connection_string,
                         endpoint=endpoint, client_id=client_id, credential=credential)
        from azure.communication.sms import SmsClient

        kwargs = _sdk_kwargs(timeout, connect_timeout, client_kwargs)
        if connection_string:
            self._client = SmsClient.from_connection_string(connection_string, **kwargs)
        else:
            self._client = SmsClient(endpoint, self._credential, **kwargs)

    def send(self, message: Message) -> None:
        _check_channel(message, "sms")
        rendered = _render(message, self.app_name)
        try:
            try:
                results = self._client.send(from_=self.sender, to=[message.to], message=rendered.sms)
            except Exception as exc:  # noqa: BLE001 - mapped below, never chained (may echo the request)
                raise map_azure_error(exc, "sms") from None
            result = next(iter(results or []), None)
            if result is None:
                raise DeliveryError("sms: empty response", retryable=True)
            if not getattr(result, "successful", False):
                status = getattr(result, "http_status_code", None) or 500
                raise _status_error("sms", int(status))
        except DeliveryError as err:
            self._log_fail(message, err)
            raise
        self._log_ok(message)


class AcsEmailSender(_AcsSender):
    """Email through ``azure.communication.email.EmailClient``.

    ``begin_send`` with a fresh ``operation_id`` (so SDK-level retries are
    idempotent at ACS), then waits at most ``timeout`` seconds for the
    operation status (``Succeeded``); a wait that runs out is a retryable
    ``DeliveryError``; ``Failed``/``Canceled`` are not retryable.
    """

    channel = "email"

    def __init__(self, *, sender: str, app_name: str = "Native Auth", connection_string: str | None = None,
                 endpoint: str | None = None, client_id: str | None = None, credential: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 client_kwargs: dict | None = None) -> None:
        super().__init__(sender=sender, app_name=app_name, connection_string=connection_string,
                         endpoint=endpoint, client_id=client_id, credential=credential)
        from azure.communication.email import EmailClient

        self.timeout = timeout
        self.poll_interval = poll_interval
        kwargs = _sdk_kwargs(request_timeout, connect_timeout, client_kwargs)
        if connection_string:
            self._client = EmailClient.from_connection_string(connection_string, **kwargs)
        else:
            self._client = EmailClient(endpoint, self._credential, **kwargs)

    def _payload(self, message: Message, rendered: Rendered) -> dict:
        return {
            "senderAddress": self.sender,
            "recipients": {"to": [{"address": message.to}]},
            "content": {"subject": rendered.subject, "plainText": rendered.text, "html": rendered.html},
            "userEngagementTrackingDisabled": True,
        }

    def send(self, message: Message) -> None:
        _check_channel(message, "email")
        rendered = _render(message, self.app_name)
        try:
            try:
                poller = self._client.begin_send(self._payload(message, rendered), operation_id=str(uuid.uuid4()),
                                                  polling_interval=self.poll_interval)
                result = poller.result(timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - mapped below, never chained
                raise map_azure_error(exc, "email") from None
            if not poller.done():
                raise DeliveryError("email: timed out waiting for the send status (accepted, may still arrive)",
                                    retryable=True)
            status = (result or {}).get("status") if isinstance(result, dict) else None
            if status != "Succeeded":
                raise DeliveryError(f"email: send status {status or 'unknown'}", retryable=False)
        except DeliveryError as err:
            self._log_fail(message, err)
            raise
        self._log_ok(message)


class CompositeSender:
    """Routes each message to the sender for its channel."""

    def __init__(self, email: Sender | None = None, sms: Sender | None = None) -> None:
        self.senders: dict[str, Sender] = {k: v for k, v in (("email", email), ("sms", sms)) if v is not None}

    def send(self, message: Message) -> None:
        sender = self.senders.get(message.channel)
        if sender is None:
            raise DeliveryError(f"{message.channel} delivery is not configured", retryable=False)
        sender.send(message)

    def close(self) -> None:
        for s in self.senders.values():
            close = getattr(s, "close", None)
            if close:
                close()


def build_sender(settings: Any) -> Sender:
    """``OutboxSender`` when ``settings.delivery == "outbox"``, else ACS senders
    for the channels that have a sender configured (``email_sender`` /
    ``sms_sender``). Raises ``SettingsError`` when ACS is selected but not
    configured."""
    if settings.delivery == "outbox":
        return OutboxSender(settings.outbox_path, echo=True, app_name=settings.app_name)

    from shared.settings import SettingsError

    conn = settings.acs_connection_string
    endpoint = settings.acs_endpoint
    if not conn and not endpoint:
        raise SettingsError("AUTH_DELIVERY=acs needs AUTH_ACS_ENDPOINT (managed identity) or AUTH_ACS_CONNECTION_STRING")
    if not settings.email_sender and not settings.sms_sender:
        raise SettingsError("AUTH_DELIVERY=acs needs AUTH_EMAIL_SENDER and/or AUTH_SMS_SENDER")
    credential = None if conn else _managed_identity(settings.acs_client_id)
    common = dict(app_name=settings.app_name, connection_string=conn, endpoint=endpoint,
                  client_id=settings.acs_client_id, credential=credential)
    email_sender = AcsEmailSender(sender=settings.email_sender, **common) if settings.email_sender else None
    sms_sender = AcsSmsSender(sender=settings.sms_sender, **common) if settings.sms_sender else None
    return CompositeSender(email=email_sender, sms=sms_sender)


__all__ = [
    "Message", "DeliveryError", "Sender", "OutboxSender", "AcsSmsSender", "AcsEmailSender",
    "CompositeSender", "build_sender", "mask_recipient", "read_outbox", "map_azure_error",
    "PURPOSES", "CHANNELS", "Rendered",
]
