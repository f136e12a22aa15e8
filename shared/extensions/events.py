"""The five events, with the request and response JSON Entra documents
(Microsoft Learn: "Custom claims provider reference", the
OnAttributeCollectionStart/Submit references, the email OTP send event, and
just-in-time password migration): each builds Entra's payload, calls the
extension, validates the answer strictly and returns what the flow needs.

Every event takes the extension's ``on_error`` into account: ``fail`` raises
:class:`~shared.extensions.caller.ExtensionFailed` (a 503 the SDKs retry once,
with Entra's error code), ``continue`` goes on without the extension's output.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
import zlib
from typing import Any

from shared.protocol.context import current
from shared.settings import Settings
from shared.storage.tables import Storage

from . import config
from .caller import ExtensionError, ExtensionFailed, action_of, call

from .config import MAX_CLAIM_VALUES, MAX_CLAIMS_BYTES, RESERVED_CLAIMS  # noqa: E402,F401


def _context(settings: Settings, client_id: str | None, client_name: str = "", user=None,
             resource: str | None = None) -> dict[str, Any]:
    ctx = current()
    locale = ((ctx.locale if ctx else None) or "en-us").split(",")[0].split(";")[0].strip().lower() or "en-us"
    app = client_id or ""
    out: dict[str, Any] = {
        "correlationId": ctx.correlation_id if ctx else str(uuid.uuid4()),
        "client": {"ip": (ctx.client_ip if ctx else None) or "", "locale": locale, "market": locale},
        "protocol": "OAUTH2.0",
        "clientServicePrincipal": {"id": app, "appId": app, "appDisplayName": client_name or app,
                                   "displayName": client_name or app},
        "resourceServicePrincipal": {"id": resource or app, "appId": resource or app,
                                     "appDisplayName": resource or client_name or app,
                                     "displayName": resource or client_name or app},
    }
    if user is not None:
        attrs = json.loads(user.entity.get("attributes") or "{}")
        created = user.entity.get("created")
        out["user"] = {k: v for k, v in {
            "id": user.oid, "mail": user.email, "userPrincipalName": user.email, "displayName": user.display_name,
            "userType": "Member", "givenName": attrs.get("givenName"), "surname": attrs.get("surname"),
            "companyName": attrs.get("companyName"), "preferredLanguage": attrs.get("preferredLanguage"),
            "createdDateTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(created))) if created else None,
        }.items() if v not in (None, "")}
    return out


def _envelope(settings: Settings, ext: dict[str, Any], event: str, odata: str, context: dict[str, Any],
              resource_app: str, **data: Any) -> dict[str, Any]:
    return {
        "type": f"microsoft.graph.authenticationEvent.{event}",
        "source": f"/tenants/{settings.tenant_id}/applications/{resource_app}",
        "data": {"@odata.type": odata, "tenantId": settings.tenant_id,
                 "authenticationEventListenerId": ext["listener_id"], "customAuthenticationExtensionId": ext["id"],
                 **data, "authenticationContext": context},
    }


def _run(storage: Storage, settings: Settings, ext: dict[str, Any], payload: dict[str, Any], parse):
    """Call and parse; on failure, ``fail`` raises, ``continue`` returns None."""
    try:
        return parse(call(storage, settings, ext, payload))
    except ExtensionError as exc:
        if ext.get("on_error") == "continue":
            return None
        raise ExtensionFailed(exc.kind, ext["name"]) from None


# ------------------------------------------------------------------ token issuance start

def token_claims(storage: Storage, settings: Settings, client_id: str, user, *, scopes=None,
                 client_name: str = "", ext: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Claims for the access token and the ID token from the client's
    token-issuance extension (``{"access_token": {...}, "id_token": {...}}``),
    empty without one. Called before every token response, refresh included."""
    ext = ext or config.for_event(storage, "tokenIssuanceStart", client_id)
    if ext is None:
        return {}
    resource = getattr(scopes, "resource", None) or client_id
    payload = _envelope(settings, ext, "tokenIssuanceStart", "microsoft.graph.onTokenIssuanceStartCalloutData",
                        _context(settings, client_id, client_name, user, resource), resource)

    def parse(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
        _, action = action_of(answer, "microsoft.graph.onTokenIssuanceStartResponseData",
                              ("microsoft.graph.tokenIssuanceStart.provideClaimsForToken",))
        claims = action.get("claims")
        if not isinstance(claims, dict):
            raise ExtensionError("null_claims")
        size = 0
        for key, value in claims.items():
            if not key or not config.CLAIM_NAME_RE.match(key):
                raise ExtensionError("claim_key")
            if key.lower() in RESERVED_CLAIMS or key.lower().startswith("xms_"):
                raise ExtensionError("body", f"reserved claim {key}")
            if isinstance(value, list):
                if len(value) > MAX_CLAIM_VALUES or not all(isinstance(v, str) for v in value):
                    raise ExtensionError("body", f"claim {key}: strings only")
            elif not isinstance(value, str):
                raise ExtensionError("body", f"claim {key}: a string or an array of strings")
            size += len(key.encode()) + len(json.dumps(value, ensure_ascii=False).encode())
        if size > MAX_CLAIMS_BYTES:
            raise ExtensionError("claims_size")
        mapping = ext.get("claims", {})
        return {token: {n: claims[n] for n in names if n in claims} for token, names in mapping.items()}

    return _run(storage, settings, ext, payload, parse) or {}


# ------------------------------------------------------------------ attribute collection

def _attribute_values(attributes: dict[str, Any], custom_prefix: str) -> dict[str, Any]:
    out = {}
    for name, value in attributes.items():
        if isinstance(value, bool):
            otype = "microsoft.graph.booleanDirectoryAttributeValue"
        elif isinstance(value, int):
            otype = "microsoft.graph.int64DirectoryAttributeValue"
        else:
            otype, value = "microsoft.graph.stringDirectoryAttributeValue", str(value)
        out[name] = {"@odata.type": otype, "value": value,
                     "attributeType": "directorySchemaExtension" if name.startswith(custom_prefix) else "builtIn"}
    return out


def _sign_up_info(settings: Settings, email: str, attributes: dict[str, Any]) -> dict[str, Any]:
    prefix = f"extension_{settings.extensions_app_id}_" if settings.extensions_app_id else "extension_"
    return {"@odata.type": "microsoft.graph.userSignUpInfo",
            "attributes": _attribute_values({**attributes, "email": email}, prefix),  # the verified address wins
            "identities": [{"signInType": "email", "issuer": settings.issuer, "issuerAssignedId": email}]}


def _answered_values(action: dict[str, Any], field: str) -> dict[str, Any]:
    """An action's attribute values (prefill ``inputs``, modified ``attributes``): names to strings, numbers or
    booleans, or the answer is malformed."""
    values = action.get(field)
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, bool))
                                               for k, v in values.items()):
        raise ExtensionError("body", field)
    return values


def attribute_collection_start(storage: Storage, settings: Settings, client_id: str, email: str,
                               attributes: dict[str, Any], *, ext: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"prefill": {...}}`` or ``{"block": message}`` (or ``{}``): before the
    sign-up's attributes are collected (after the email is verified)."""
    ext = ext or config.for_event(storage, "attributeCollectionStart", client_id)
    if ext is None:
        return {}
    payload = _envelope(settings, ext, "attributeCollectionStart", "microsoft.graph.onAttributeCollectionStartCalloutData",
                        _context(settings, client_id), client_id,
                        userSignUpInfo=_sign_up_info(settings, email, attributes))

    def parse(answer: dict[str, Any]) -> dict[str, Any]:
        kind, action = action_of(answer, "microsoft.graph.onAttributeCollectionStartResponseData", (
            "microsoft.graph.attributeCollectionStart.continueWithDefaultBehavior",
            "microsoft.graph.attributeCollectionStart.setPrefillValues",
            "microsoft.graph.attributeCollectionStart.showBlockPage"))
        if kind == "setPrefillValues":
            return {"prefill": _answered_values(action, "inputs")}
        if kind == "showBlockPage":
            return {"block": _message(action)}
        return {}

    return _run(storage, settings, ext, payload, parse) or {}


def attribute_collection_submit(storage: Storage, settings: Settings, client_id: str, email: str,
                                attributes: dict[str, Any], *, ext: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"modify": {...}}``, ``{"errors": {name: message}, "message": ...}``,
    ``{"block": message}`` or ``{}``: before the account is created."""
    ext = ext or config.for_event(storage, "attributeCollectionSubmit", client_id)
    if ext is None:
        return {}
    payload = _envelope(settings, ext, "attributeCollectionSubmit", "microsoft.graph.onAttributeCollectionSubmitCalloutData",
                        _context(settings, client_id), client_id,
                        userSignUpInfo=_sign_up_info(settings, email, attributes))

    def parse(answer: dict[str, Any]) -> dict[str, Any]:
        kind, action = action_of(answer, "microsoft.graph.onAttributeCollectionSubmitResponseData", (
            "microsoft.graph.attributeCollectionSubmit.continueWithDefaultBehavior",
            "microsoft.graph.attributeCollectionSubmit.modifyAttributeValues",
            "microsoft.graph.attributeCollectionSubmit.showValidationError",
            "microsoft.graph.attributeCollectionSubmit.showBlockPage"))
        if kind == "modifyAttributeValues":
            return {"modify": _answered_values(action, "attributes")}
        if kind == "showValidationError":
            errs = action.get("attributeErrors") or {}
            if not isinstance(errs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in errs.items()):
                raise ExtensionError("body", "attributeErrors")
            return {"errors": errs, "message": _message(action)}
        if kind == "showBlockPage":
            return {"block": _message(action)}
        return {}

    return _run(storage, settings, ext, payload, parse) or {}


def _message(action: dict[str, Any]) -> str:
    """The extension's message as one printable line (it ends up in an error
    description: no line breaks or control characters to forge lines with)."""
    message = action.get("message")
    if not isinstance(message, str):
        return "This request was blocked."
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in message).split())
    return line[:500] or "This request was blocked."


# ------------------------------------------------------------------ OTP send

def otp_send(storage: Storage, settings: Settings, client_id: str | None, channel: str, to: str, code: str, *,
             ext: dict[str, Any] | None = None) -> str:
    """Deliver a code through the client's OTP extension: ``"sent"``, ``"none"``
    (no extension: the built-in sender delivers) or ``"fallback"`` (it failed
    and its ``fallback`` is the built-in sender). Otherwise raises."""
    ext = ext or config.for_event(storage, "otpSend", client_id, channel)
    if ext is None:
        return "none"
    context = _context(settings, client_id)
    payload = _envelope(settings, ext, "emailOtpSend", "microsoft.graph.onOtpSendCalloutData", context,
                        client_id or "", otpContext={"identifier": to, "oneTimeCode": code, "channel": channel})

    def parse(answer: dict[str, Any]) -> str:
        action_of(answer, "microsoft.graph.OnOtpSendResponseData", ("microsoft.graph.OtpSend.continueWithDefaultBehavior",))
        return "sent"

    try:
        return parse(call(storage, settings, ext, payload))
    except ExtensionError as exc:
        if ext.get("fallback") == "builtin":
            return "fallback"
        raise ExtensionFailed(exc.kind, ext["name"]) from None


# ------------------------------------------------------------------ password submit (just-in-time migration)

def password_submit(storage: Storage, settings: Settings, client_id: str, user, username: str,
                    password: str, *, ext: dict[str, Any] | None = None) -> tuple[str, str]:
    """The legacy system's verdict on the first password of a user imported
    with the migration marker: ``(action, message)``, action one of
    ``MigratePassword``, ``UpdatePassword``, ``Retry``, ``Block``. Without an
    extension, or when it fails with ``on_error: continue``, ``("Retry", "")``:
    an unverifiable password is a wrong one."""
    ext = ext or config.for_event(storage, "passwordSubmit", client_id)
    if ext is None:
        return "Retry", ""
    nonce = str(uuid.uuid4())
    now = int(time.time())
    inner = _unsigned_jwt({"iss": settings.issuer, "aud": ext["resource"], "iat": now, "nbf": now, "exp": now + 600,
                           "user-password": password, "username": username, "nonce": nonce})
    encrypted = jwe_encrypt(ext["encryption_key"], inner.encode(), kid=ext.get("encryption_kid") or None)
    payload = _envelope(settings, ext, "passwordSubmit", "microsoft.graph.onPasswordSubmitCalloutData",
                        _context(settings, client_id, user=user), client_id, encryptedPasswordContext=encrypted)

    def parse(answer: dict[str, Any]) -> tuple[str, str]:
        kind, action = action_of(answer, "microsoft.graph.onPasswordSubmitResponseData", (
            "microsoft.graph.passwordSubmit.MigratePassword", "microsoft.graph.passwordSubmit.UpdatePassword",
            "microsoft.graph.passwordSubmit.Retry", "microsoft.graph.passwordSubmit.Block"))
        if answer["data"].get("nonce") != nonce:
            raise ExtensionError("body", "nonce")
        return kind, (_message(action) if kind == "Block" else "")

    return _run(storage, settings, ext, payload, parse) or ("Retry", "")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unsigned_jwt(claims: dict[str, Any]) -> str:
    return (_b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." +
            _b64url(json.dumps(claims, separators=(",", ":")).encode()) + ".")


def jwe_encrypt(public_pem: str, plaintext: bytes, *, kid: str | None = None) -> str:
    """Compact JWE as Entra sends the password: ``RSA-OAEP`` key wrapping,
    ``A128CBC-HS256`` content encryption, ``zip: DEF`` (RFC 7516/7518)."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.asymmetric import padding as asym
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    header = {"alg": "RSA-OAEP", "enc": "A128CBC-HS256", "zip": "DEF", **({"kid": kid} if kid else {})}
    protected = _b64url(json.dumps(header, separators=(",", ":")).encode())
    cek = os.urandom(32)
    mac_key, enc_key = cek[:16], cek[16:]
    public = serialization.load_pem_public_key(public_pem.encode())
    wrapped = public.encrypt(cek, asym.OAEP(mgf=asym.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = deflate.compress(plaintext) + deflate.flush()
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(compressed) + padder.finalize()
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    aad = protected.encode("ascii")
    al = (len(aad) * 8).to_bytes(8, "big")
    tag = hmac.new(mac_key, aad + iv + ciphertext + al, hashlib.sha256).digest()[:16]
    return ".".join((protected, _b64url(wrapped), _b64url(iv), _b64url(ciphertext), _b64url(tag)))


def call_event(storage: Storage, settings: Settings, ext: dict[str, Any], kind: str, **kw: Any) -> Any:
    """One call of ``ext`` for its event with the given inputs (``python -m admin extensions test``)."""
    if kind == "token":
        return token_claims(storage, settings, kw["client_id"], kw["user"], ext=ext)
    if kind == "attributeCollectionStart":
        return attribute_collection_start(storage, settings, kw["client_id"], kw["email"], kw["attributes"], ext=ext)
    if kind == "attributeCollectionSubmit":
        return attribute_collection_submit(storage, settings, kw["client_id"], kw["email"], kw["attributes"], ext=ext)
    if kind == "otp":
        return otp_send(storage, settings, kw["client_id"], "email", kw["to"], kw["code"], ext=ext)
    return password_submit(storage, settings, kw["client_id"], kw["user"], kw["user"].email, kw["password"], ext=ext)
