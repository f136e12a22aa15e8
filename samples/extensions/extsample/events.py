"""The four events: parse Entra's request JSON, decide, answer Entra's response JSON.

Input keys and ``@odata.type`` values are matched case-insensitively (Entra's own
documents mix ``@odata.type`` / ``@odata.Type``, ``oneTimeCode`` / ``onetimecode``);
output uses the casing of the Microsoft Learn reference pages.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import passwords
from .config import ConfigError, FileCache, Settings

log = logging.getLogger("extensions_sample")

EVENT_TYPE_PREFIX = "microsoft.graph.authenticationEvent."
CLAIMS_SIZE_LIMIT = 3 * 1024  # Entra: "the sum of all the key and value pairs"


class BadRequest(Exception):
    """The request body is not the event's JSON (answered 400)."""


def field(obj: Any, name: str, default: Any = None) -> Any:
    """obj[name], matching the key case-insensitively when there is no exact match."""
    if not isinstance(obj, Mapping):
        return default
    if name in obj:
        return obj[name]
    wanted = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value
    return default


def _odata(value: Any) -> str:
    return value.lstrip("#").lower() if isinstance(value, str) else ""


def answer(data_type: str, action_type: str, **fields: Any) -> dict:
    """The response envelope: one action, as every documented example has."""
    extra = fields.pop("_data", {})
    return {"data": {"@odata.type": data_type, "actions": [{"@odata.type": action_type, **fields}], **extra}}


class State:
    """What lives as long as the app: parsed data files and the outbox lock."""

    def __init__(self) -> None:
        self.files = FileCache()
        self.outbox_lock = threading.Lock()

    def private_key(self, path: Path):
        def parse(data: bytes, p: Path):
            try:
                return passwords.load_private_key(data)
            except ValueError as exc:
                raise ConfigError(f"{p}: {exc}") from None
        return self.files.load(path, parse, "pem")


@dataclass(frozen=True)
class Event:
    name: str               # as in the payload's `type`, after "microsoft.graph.authenticationEvent."
    callout_type: str       # data.@odata.type of the request
    handler: Callable[[dict, Settings, State], dict]
    type_suffixes: tuple[str, ...] = ()  # other accepted `type` values (lower case, after the prefix)

    def handle(self, body: Any, settings: Settings, state: State) -> dict:
        if not isinstance(body, Mapping):
            raise BadRequest("the body must be a JSON object")
        event_type = field(body, "type")
        if event_type is not None:
            accepted = {(EVENT_TYPE_PREFIX + self.name).lower(), *(EVENT_TYPE_PREFIX.lower() + s for s in self.type_suffixes)}
            if not isinstance(event_type, str) or event_type.lower() not in accepted:
                raise BadRequest(f"type must be {EVENT_TYPE_PREFIX}{self.name}")
        data = field(body, "data")
        if not isinstance(data, Mapping):
            raise BadRequest("data must be a JSON object")
        if _odata(field(data, "@odata.type")) != self.callout_type.lower():
            raise BadRequest(f"data.@odata.type must be {self.callout_type}")
        return self.handler(data, settings, state)


def _correlation_id(data: Mapping) -> str:
    value = field(field(data, "authenticationContext"), "correlationId")
    return value if isinstance(value, str) else "-"


# --------------------------------------------------------------- token issuance start

def _parse_roles(raw: bytes, path: Path) -> dict[str, dict]:
    try:
        table = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path} must map user email addresses or object ids to claim objects")
    out: dict[str, dict] = {}
    for number, (key, entry) in enumerate(table.items(), 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: entry {number} is not a JSON object of claims")
        out[str(key).strip().lower()] = entry
    return out


def _claims_of(entry: Mapping) -> dict:
    """String and string-array values only: the claim types Entra supports."""
    claims: dict[str, Any] = {}
    for name, value in entry.items():
        if not isinstance(name, str) or not name:
            continue
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            claims[name] = value
        else:
            log.warning("Claim %r is not a string or an array of strings; left out", name)
    return claims


def token_issuance_start(data: dict, settings: Settings, state: State) -> dict:
    user = field(field(data, "authenticationContext"), "user")
    path = settings.get("ROLES_FILE")
    claims: dict = {}
    if path is None:
        log.warning("ROLES_FILE is not set: no custom claims for anyone")
    elif isinstance(user, Mapping):
        table = state.files.load(Path(path).expanduser(), _parse_roles, "roles")
        for key in ("id", "mail", "userPrincipalName"):
            value = field(user, key)
            if isinstance(value, str) and value.strip().lower() in table:
                claims = _claims_of(table[value.strip().lower()])
                break
    size = len(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > CLAIMS_SIZE_LIMIT:
        log.warning("The claims are %d bytes; Entra refuses more than %d", size, CLAIMS_SIZE_LIMIT)
    log.info("tokenIssuanceStart: %d claim(s) (correlationId %s)", len(claims), _correlation_id(data))
    return answer("microsoft.graph.onTokenIssuanceStartResponseData",
                  "microsoft.graph.tokenIssuanceStart.provideClaimsForToken", claims=claims)


# --------------------------------------------------------------- attribute collection

START_DATA = "microsoft.graph.onAttributeCollectionStartResponseData"
SUBMIT_DATA = "microsoft.graph.onAttributeCollectionSubmitResponseData"


def attribute_collection_start(data: dict, settings: Settings, state: State) -> dict:
    raw = settings.get("PREFILL")
    inputs: dict = {}
    if raw is not None:
        try:
            inputs = json.loads(raw)
        except ValueError:
            raise ConfigError("PREFILL is not valid JSON") from None
        if not isinstance(inputs, dict) or not all(
                isinstance(v, (str, int, float, bool)) for v in inputs.values()):
            raise ConfigError('PREFILL must be a JSON object of attribute values, e.g. {"city": "Berlin"}')
    log.info("attributeCollectionStart: %s (correlationId %s)",
             "prefill" if inputs else "default", _correlation_id(data))
    if not inputs:
        return answer(START_DATA, "microsoft.graph.attributeCollectionStart.continueWithDefaultBehavior")
    return answer(START_DATA, "microsoft.graph.attributeCollectionStart.setPrefillValues", inputs=inputs)


def _attribute(attributes: Mapping, name: str) -> tuple[str, Any]:
    """(the key as the request spells it, the attribute's value) or (name, None)."""
    for key, entry in attributes.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return key, field(entry, "value") if isinstance(entry, Mapping) else None
    return name, None


def normalize_display_name(value: str) -> str:
    """NFC, control characters dropped, runs of whitespace collapsed to one space, trimmed."""
    text = unicodedata.normalize("NFC", value)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch.isspace())
    return " ".join(text.split())


def _code_set(settings: Settings, name: str) -> set[str]:
    return {code.casefold() for code in settings.csv(name)}


def attribute_collection_submit(data: dict, settings: Settings, state: State) -> dict:
    attributes = field(field(data, "userSignUpInfo"), "attributes")
    if not isinstance(attributes, Mapping):
        raise BadRequest("data.userSignUpInfo.attributes must be a JSON object")
    code_key, code = _attribute(attributes, settings.extension_attribute_prefix + "invitationCode")
    code = code.strip().casefold() if isinstance(code, str) else ""
    correlation = _correlation_id(data)

    if code and code in _code_set(settings, "BLOCKED_CODES"):
        log.info("attributeCollectionSubmit: blocked invitation code (correlationId %s)", correlation)
        return answer(SUBMIT_DATA, "microsoft.graph.attributeCollectionSubmit.showBlockPage",
                      title="Sign-up blocked",
                      message="This invitation code can no longer be used. "
                              "Please ask the person who invited you for a new one.")
    if not code or code not in _code_set(settings, "INVITATION_CODES"):
        log.info("attributeCollectionSubmit: %s invitation code (correlationId %s)",
                 "a wrong" if code else "no", correlation)
        return answer(SUBMIT_DATA, "microsoft.graph.attributeCollectionSubmit.showValidationError",
                      message="Please fix the below errors to proceed.",
                      attributeErrors={code_key: "Enter the invitation code you received." if not code
                                       else "This invitation code is not valid."})

    name_key, display_name = _attribute(attributes, "displayName")
    if isinstance(display_name, str):
        normalized = normalize_display_name(display_name)
        if not normalized and display_name:
            return answer(SUBMIT_DATA, "microsoft.graph.attributeCollectionSubmit.showValidationError",
                          message="Please fix the below errors to proceed.",
                          attributeErrors={name_key: "Enter a display name."})
        if normalized != display_name:
            log.info("attributeCollectionSubmit: display name normalized (correlationId %s)", correlation)
            return answer(SUBMIT_DATA, "microsoft.graph.attributeCollectionSubmit.modifyAttributeValues",
                          attributes={name_key: normalized})
    log.info("attributeCollectionSubmit: accepted (correlationId %s)", correlation)
    return answer(SUBMIT_DATA, "microsoft.graph.attributeCollectionSubmit.continueWithDefaultBehavior")


# --------------------------------------------------------------- OTP send (console sender)

def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def otp_send(data: dict, settings: Settings, state: State) -> dict:
    otp = field(data, "otpContext")
    if not isinstance(otp, Mapping):
        raise BadRequest("data.otpContext must be a JSON object")
    identifier, code = field(otp, "identifier"), field(otp, "oneTimeCode")  # also "onetimecode"
    channel = field(otp, "channel", "email")  # our SMS addition; absent means email
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    if not isinstance(identifier, str) or not identifier.strip():
        raise BadRequest("data.otpContext.identifier is required")
    if not isinstance(code, str) or not code.strip():
        raise BadRequest("data.otpContext.oneTimeCode is required")
    if not isinstance(channel, str) or channel.lower() not in ("email", "sms"):
        raise BadRequest('data.otpContext.channel must be "email" or "sms"')
    identifier, channel = identifier.strip(), channel.lower()

    # The point of this sender: the code on the console (and in the outbox file). Nowhere else.
    print(f"OTP for {_printable(identifier)} ({channel}): {_printable(code)}", flush=True)
    outbox = settings.get("OTP_OUTBOX")
    if outbox:
        line = json.dumps({"identifier": identifier, "channel": channel, "code": code,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
        path = Path(outbox).expanduser()
        try:
            with state.outbox_lock:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as out:
                    out.write(line)
        except OSError as exc:
            raise ConfigError(f"cannot write OTP_OUTBOX {path}: {exc.strerror}") from None
    log.info("otpSend: %s code delivered to the console (correlationId %s)", channel, _correlation_id(data))
    return answer("microsoft.graph.OnOtpSendResponseData", "microsoft.graph.OtpSend.continueWithDefaultBehavior")


# --------------------------------------------------------------- password submit (JIT migration)

PASSWORD_DATA = "microsoft.graph.onPasswordSubmitResponseData"
PASSWORD_ACTION = "microsoft.graph.passwordSubmit."


def _parse_legacy_users(raw: bytes, path: Path) -> dict[str, dict]:
    try:
        table = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path} must map email addresses to hashes or user objects")
    out: dict[str, dict] = {}
    for number, (email, entry) in enumerate(table.items(), 1):
        if isinstance(entry, str):
            entry = {"hash": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("hash", ""), str):
            raise ConfigError(f"{path}: entry {number} must be a hash string or an object with \"hash\"")
        out[str(email).strip().lower()] = entry
    return out


def password_submit(data: dict, settings: Settings, state: State) -> dict:
    compact = field(data, "encryptedPasswordContext")
    if not isinstance(compact, str) or compact.count(".") != 4:
        raise BadRequest("data.encryptedPasswordContext must be a compact JWE")
    key = state.private_key(settings.path("PASSWORD_PRIVATE_KEY_FILE"))
    try:
        claims = passwords.open_password_context(compact, key, audiences=settings.audiences)
    except passwords.InvalidPasswordContext as exc:
        raise BadRequest(str(exc)) from None
    nonce, password, username = claims.get("nonce"), claims.get("user-password"), claims.get("username")
    if not isinstance(nonce, str) or not nonce:
        raise BadRequest("the password context has no nonce")
    if not isinstance(password, str):
        raise BadRequest("the password context has no user-password")
    if not isinstance(username, str) or not username.strip():
        user = field(field(data, "authenticationContext"), "user")
        username = field(user, "mail") or field(user, "userPrincipalName")
    correlation = _correlation_id(data)

    def reply(action: str, **fields: Any) -> dict:
        log.info("passwordSubmit: %s (correlationId %s)", action, correlation)
        return answer(PASSWORD_DATA, PASSWORD_ACTION + action, **fields, _data={"nonce": nonce})

    users = state.files.load(settings.path("LEGACY_USERS"), _parse_legacy_users, "legacy-users")
    entry = users.get(username.strip().lower()) if isinstance(username, str) else None
    if entry is None:
        log.warning("passwordSubmit: the user is not in the legacy store (correlationId %s)", correlation)
        return reply("Retry")
    blocked = entry.get("blocked") is True
    stored = entry.get("hash") or ""
    if stored:
        try:
            correct = passwords.verify_password(password, stored)
        except passwords.UnsupportedHash as exc:
            raise ConfigError(f"LEGACY_USERS: a user's hash is {exc}") from None
        if not correct:
            return reply("Retry")
    elif not blocked:
        raise ConfigError("LEGACY_USERS: a user has neither a hash nor \"blocked\": true")
    # A blocked user sees the block page only after the right password (or when no
    # hash is kept), so the page does not tell strangers which accounts are blocked.
    if blocked:
        return reply("Block", title=str(entry.get("title") or "Sign-in blocked"),
                     message=str(entry.get("message") or "Your account has been blocked. Please contact support."))
    if entry.get("updatePassword") is True:
        return reply("UpdatePassword")
    return reply("MigratePassword")


# --------------------------------------------------------------- the table of events

TOKEN_ISSUANCE_START = Event("tokenIssuanceStart", "microsoft.graph.onTokenIssuanceStartCalloutData",
                             token_issuance_start)
ATTRIBUTE_COLLECTION_START = Event("attributeCollectionStart", "microsoft.graph.onAttributeCollectionStartCalloutData",
                                   attribute_collection_start)
ATTRIBUTE_COLLECTION_SUBMIT = Event("attributeCollectionSubmit",
                                    "microsoft.graph.onAttributeCollectionSubmitCalloutData",
                                    attribute_collection_submit)
OTP_SEND = Event("emailOtpSend", "microsoft.graph.onOtpSendCalloutData", otp_send,
                 type_suffixes=("otpsend", "smsotpsend"))
PASSWORD_SUBMIT = Event("passwordSubmit", "microsoft.graph.onPasswordSubmitCalloutData", password_submit)
