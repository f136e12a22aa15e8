"""What Microsoft's native-auth SDKs require of every answer, as executable rules.

Built from docs/sdk-compatibility.md (each rule names its row there, ``R<n>``,
which cites the SDK source file and function). ``check`` judges one answer of
one endpoint against the union of the three SDKs' rules (MSAL JS 5.30
custom-auth, MSAL iOS/macOS 2.13, MSAL Android 8.x): an answer any of them
would reject or misread is a violation.

tests/conftest.py applies it to every answer the app gives while the suite
runs (it wraps ``shared.protocol.handle``, so answers to the test client, to
MSAL JS in Chromium, to MSAL Python and to the CLI subprocesses are all
seen), and fails the test that caused a violation.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

# The native-auth endpoints by the function names of functions/*.py (tenant aliases share them).
NATIVE = {
    "signup_start", "signup_challenge", "signup_continue", "signin_initiate", "signin_challenge", "token",
    "signin_introspect", "register_introspect", "register_challenge", "register_continue", "reset_start",
    "reset_challenge", "reset_continue", "reset_submit", "reset_poll_completion",
}
CHALLENGE_TYPES = {"oob", "password", "redirect"}                  # R5: iOS decodes a strict enum
POLL_STATUSES = {"succeeded", "in_progress", "failed", "not_started"}  # R14
# Statuses the API may answer a native-auth call with, and why (R1-R3).
STATUSES = {200, 400, 500, 503}

_lock = threading.Lock()
_violations: list[str] = []
_checked = {"answers": 0}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonblank(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def check(name: str, method: str, form: dict[str, str], status: int, headers: dict[str, str], body: Any) -> list[str]:
    """Violations of the SDK rules by one answer (an empty list when it passes)."""
    out: list[str] = []

    def need(cond: bool, rule: str, what: str) -> None:
        if not cond:
            out.append(f"{name} {status}: {rule}: {what}")

    lower = {k.lower(): v for k, v in headers.items()}
    if name in ("openid_configuration",) and status == 200:
        for key in ("issuer", "authorization_endpoint", "token_endpoint"):       # R20 (iOS IdentityCore)
            need(_nonblank(body.get(key)), "R20", f"discovery needs a string {key}")
        return out
    if name not in NATIVE or method != "POST":
        return out
    need(status in STATUSES, "R1", f"status {status}: iOS and Android read error bodies only on 400")
    need(isinstance(body, dict), "R2", "a JSON object body")
    if not isinstance(body, dict):
        return out
    rid = lower.get("client-request-id")                                          # R4
    need(_nonblank(rid), "R4", "a client-request-id header")
    need(_nonblank(lower.get("x-ms-request-id")), "R4", "an x-ms-request-id header (MSAL JS)")
    if "retry-after" in lower:
        need(lower["retry-after"].isdigit() and int(lower["retry-after"]) > 0, "R3", "Retry-After in whole seconds")
    if status != 200:
        _error_rules(need, name, form, status, body)
        return out
    if "correlation_id" in body:                                                   # R6 (iOS UUID?)
        try:
            uuid.UUID(str(body["correlation_id"]))
        except ValueError:
            need(False, "R6", "correlation_id in a 200 body must be a UUID")
    if body.get("challenge_type") == "redirect":                                    # R7
        need(isinstance(body.get("redirect_reason", ""), str), "R7", "redirect_reason is a string")
        need(not {"access_token", "continuation_token"} & set(body), "R7", "a redirect carries nothing else")
        return out
    _success_rules(need, name, form, body)
    return out


def _error_rules(need, name: str, form: dict, status: int, body: dict) -> None:
    need(_nonblank(body.get("error")), "R2", "error is a non-empty string")
    need(isinstance(body.get("error_description"), str), "R2", "error_description is a string")
    codes = body.get("error_codes")
    need(isinstance(codes, list) and codes and all(_is_int(c) for c in codes), "R2", "error_codes: integers")
    for key in ("timestamp", "trace_id", "correlation_id"):
        need(isinstance(body.get(key), str), "R2", f"{key} is a string")
    if "suberror" in body:
        need(_nonblank(body["suberror"]), "R2", "suberror is a non-empty string")
    if status != 400:
        return
    sub, err = body.get("suberror"), body.get("error")
    if sub in ("mfa_required", "registration_required"):                             # R11
        need(_nonblank(body.get("continuation_token")), "R11", f"{sub} carries a continuation_token")
        need(name == "token", "R11", f"{sub} only from /token")
    if err == "credential_required":                                                 # R9 (MSAL JS)
        need(55103 in (body.get("error_codes") or []), "R9", "credential_required needs error code 55103")
        need(_nonblank(body.get("continuation_token")), "R9", "credential_required carries a continuation_token")
    if err == "attributes_required":                                                 # R9 (iOS Decodable)
        need(_nonblank(body.get("continuation_token")), "R9", "attributes_required carries a continuation_token")
        attrs = body.get("required_attributes")
        need(isinstance(attrs, list) and attrs, "R9", "a non-empty required_attributes")
        for a in attrs or []:
            need(isinstance(a, dict) and _nonblank(a.get("name")) and _nonblank(a.get("type"))
                 and isinstance(a.get("required"), bool), "R9", "required_attributes[] has name, type, required (bool)")
    if sub == "attribute_validation_failed":
        attrs = body.get("invalid_attributes")
        need(isinstance(attrs, list) and attrs and all(isinstance(a, dict) and _nonblank(a.get("name")) for a in attrs),
             "R9", "invalid_attributes[] with names")


def _oob(need, body: dict, label_key: str = "challenge_target_label") -> None:
    need(_nonblank(body.get("continuation_token")), "R8", "continuation_token")
    need(_nonblank(body.get(label_key)), "R8", f"{label_key} is a non-blank string (Android)")
    need(body.get("challenge_channel") in ("email", "sms"), "R8", "challenge_channel email or sms")
    need(_is_int(body.get("code_length")), "R8", "code_length is a JSON integer (iOS)")
    if "interval" in body:
        need(_is_int(body["interval"]), "R8", "interval is a JSON integer (iOS)")
    if "binding_method" in body:
        need(body["binding_method"] == "prompt", "R8", "binding_method is prompt")


def _methods(need, body: dict) -> None:
    need(_nonblank(body.get("continuation_token")), "R12", "continuation_token")
    methods = body.get("methods")
    need(isinstance(methods, list) and methods, "R12", "a non-empty methods list (iOS, Android)")
    for m in methods or []:
        need(isinstance(m, dict) and isinstance(m.get("id"), str) and m.get("id"), "R12", "method id is a string")
        need(m.get("challenge_type") == "oob", "R12", "method challenge_type oob (iOS enum)")
        need(m.get("challenge_channel") in ("email", "sms"), "R12", "method challenge_channel")
        need(isinstance(m.get("login_hint"), str), "R12", "login_hint present, a string (Android: non-null)")


def _success_rules(need, name: str, form: dict, body: dict) -> None:
    kind = body.get("challenge_type")
    if "challenge_type" in body and name != "register_challenge":
        need(kind in CHALLENGE_TYPES, "R5", f"challenge_type {kind!r} outside oob/password/redirect")
    if name in ("signin_initiate", "signup_start", "reset_start"):
        need(_nonblank(body.get("continuation_token")), "R8", "continuation_token")
    elif name in ("signin_challenge", "signup_challenge", "reset_challenge"):
        need(kind in ("oob", "password") if name != "reset_challenge" else kind == "oob", "R5",
             f"{name} answers {kind!r}")
        if kind == "oob":
            _oob(need, body)
        else:
            need(_nonblank(body.get("continuation_token")), "R8", "continuation_token")
    elif name == "signup_continue":
        need(_nonblank(body.get("continuation_token")), "R8", "continuation_token (MSAL JS)")
        if "expires_in" in body:
            need(_is_int(body["expires_in"]), "R8", "expires_in is a JSON integer")
    elif name == "token":
        for key in ("access_token", "id_token", "refresh_token", "client_info", "scope"):      # R13
            need(_nonblank(body.get(key)), "R13", f"{key} in every token response")
        need(body.get("token_type") == "Bearer", "R13", "token_type Bearer")
        need(_is_int(body.get("expires_in")) and body["expires_in"] > 0, "R13", "expires_in > 0, an integer")
    elif name in ("signin_introspect", "register_introspect"):
        _methods(need, body)
    elif name == "register_challenge":
        need(kind == "oob", "R5", f"register/challenge answers {kind!r}")
        _oob(need, body, "challenge_target")
    elif name == "register_continue":
        need(_nonblank(body.get("continuation_token")), "R8", "continuation_token (Android: non-blank)")
    elif name == "reset_continue":
        need(_nonblank(body.get("continuation_token")), "R8", "continuation_token")
        need(_is_int(body.get("expires_in")) and 0 <= body["expires_in"] <= 600, "R8", "expires_in integer ≤ 600")
    elif name == "reset_submit":
        need(_nonblank(body.get("continuation_token")), "R14", "continuation_token")
        need(_is_int(body.get("poll_interval")) and 1 <= body["poll_interval"] <= 15, "R14",
             "poll_interval an integer in 1..15 (iOS requires it; Android clamps outside)")
    elif name == "reset_poll_completion":
        need(body.get("status") in POLL_STATUSES, "R14", f"status {body.get('status')!r}")
        if body.get("status") == "succeeded":
            need(_nonblank(body.get("continuation_token")), "R14", "continuation_token for the sign-in after the reset")


# ------------------------------------------------------------------ the suite-wide hook

def observe(name: str, request, response) -> None:
    """Judge one answer of the running app (called by the wrapped protocol.handle)."""
    if name not in NATIVE and name != "openid_configuration":
        return
    form: dict[str, str] = {}
    try:
        from urllib.parse import parse_qsl

        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
    except Exception:  # noqa: BLE001 - a malformed request is judged by its answer alone
        pass
    body = response.body
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            pass
    elif body is not None:
        body = json.loads(json.dumps(body))  # what goes on the wire (types as the client sees them)
    found = check(name, request.method, form, response.status, response.headers, body)
    with _lock:
        _checked["answers"] += 1
        _violations.extend(found)


def take_violations() -> list[str]:
    with _lock:
        found = list(_violations)
        _violations.clear()
    return found


def answers_checked() -> int:
    return _checked["answers"]


def install() -> None:
    """Wrap shared.protocol.handle once for the whole test session."""
    from shared.protocol import http as protocol

    if getattr(protocol.handle, "_sdk_rules", False):
        return
    original = protocol.handle

    def handle(name, request, handler, **kwargs):
        response = original(name, request, handler, **kwargs)
        observe(name, request, response)
        return response

    handle._sdk_rules = True
    protocol.handle = handle
