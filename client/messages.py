"""Human messages for the contract's errors (contract §1.2, §4).

The mapping keys on ``error_codes`` first (what the SDKs branch on, §4.3),
then ``suberror``, then ``error``; the server's own sentence is appended where
it carries a useful detail (e.g. the minimum password length).
"""

from __future__ import annotations

from .api import ApiError

PASSWORD_SUBERRORS = {
    "password_too_short": "The password is too short.",
    "password_too_long": "The password is too long (at most 256 characters).",
    "password_too_weak": "The password is too easy to guess.",
    "password_banned": "That password is too common or too easy to guess; choose another one.",
    "password_recently_used": "That password was used recently; choose a new one.",
    "password_is_invalid": "The password contains characters that are not allowed.",
}


def _with_detail(message: str, detail: str) -> str:
    if detail and detail.rstrip(".").lower() not in message.lower():
        return f"{message} ({detail.rstrip('.')}.)"
    return message


def describe(err: ApiError) -> str:
    """One clear sentence for an API error; never contains secrets (the
    server's error bodies carry none)."""
    detail = err.description
    sub = err.suberror
    if err.error == "slow_down" or err.status == 429:
        if err.retry_after is not None:
            return f"Too many requests. Wait {err.retry_after} seconds and try again."
        return _with_detail("Too many requests. Wait a moment and try again", detail)
    if err.has_code(50126):
        return "Wrong email or password."
    if sub == "invalid_oob_value":
        if err.has_code(50053):
            return "Too many wrong codes for this code. Ask for a new code (press Enter) or start again."
        if "expired" in detail.lower():
            return "That code has expired. Press Enter to get a new one."
        return "That code is not correct."
    if sub in PASSWORD_SUBERRORS:
        return _with_detail(PASSWORD_SUBERRORS[sub], detail)
    if sub == "attribute_validation_failed":
        names = [str(a.get("name")) for a in err.body.get("invalid_attributes") or [] if isinstance(a, dict)]
        return "These attributes are not valid: " + (", ".join(names) or "(not named by the server)") + "."
    if sub == "mfa_required":
        return "A second factor is required."
    if sub == "registration_required":
        return "A second factor must be registered first."
    if err.error == "user_not_found" or err.has_code(50034):
        return "No account exists for that email address."
    if err.error == "user_already_exists":
        return "An account with that email address already exists. Sign in, or reset its password."
    if err.error == "expired_token":
        return "This took too long and the session expired. Please start again."
    if err.has_code(50142):
        return "The password must be reset before signing in: run `python -m client reset`."
    if err.has_code(500222):
        return "This account has no password. Sign in with an email code: `python -m client signin --email-code`."
    if err.has_code(90100) and "username" in detail.lower() and "cannot be changed" not in detail.lower():
        return "That is not a valid email address."
    if sub == "provider_blocked_by_rep" or err.has_code(550024):
        return "This method cannot be used (it is blocked). Choose a different one."
    if err.has_code(901001):
        return _with_detail("That email address or phone number cannot be used", detail)
    if err.error == "access_denied" and err.has_code(53004):
        return _with_detail("This sign-in needs a second factor this account cannot provide here", detail)
    if err.error == "access_denied":
        return _with_detail("Access was blocked by a conditional-access policy", detail)
    if sub in ("basic_action", "message_only"):
        return "The session needs a fresh sign-in (a policy asks for it). Sign in again."
    # The account API (/me): plain HTTP statuses, the same error shape.
    if err.error == "invalid_token":
        return _with_detail("The account API did not accept the access token. Sign in again "
                            "(`python -m client signin`)", detail)
    if err.error == "insufficient_scope":
        return "The access token is not for the account API: it needs the 'account' scope (see --account-scope)."
    if err.error == "insufficient_claims":
        return "This change needs a fresh second factor, and the new sign-in did not provide one."
    if err.error == "confirmation_required":
        return "This change needs a confirmation code sent to the account's email address."
    if err.error == "last_method_required":
        return ("This is the account's last second factor and a policy requires one: "
                "add another method before removing it.")
    if err.error == "not_found" and err.status == 404:
        return detail or "Not found."
    if err.error == "unauthorized_client":
        return "This client id is not registered on the server (see --client-id)."
    if err.error == "invalid_client":
        return "This client id may not use native authentication on this server."
    if err.error == "unsupported_challenge_type":
        return "The server does not accept the challenge types this client offers."
    if err.error == "invalid_scope":
        return _with_detail("The requested scope is not valid (see --scope)", detail)
    if err.error == "invalid_grant" and err.has_code(9002313, 700082):
        return "The session has expired or was revoked. Sign in again."
    if err.error in ("temporarily_unavailable", "server_error"):
        return _with_detail("The server had a problem; try again later", detail)
    if err.error == "invalid_grant" and err.has_code(55200):
        return _with_detail("The server did not accept this step; please start again", detail)
    codes = ", ".join(str(c) for c in err.error_codes)
    label = err.error + (f"/{sub}" if sub else "") + (f", code {codes}" if codes else "")
    return f"{detail or 'The server refused the request'} ({label})."


def browser_needed(reason: str) -> str:
    text = "This step cannot be completed in the terminal: the server asked for the browser (web fallback)."
    if reason:
        text += f" Reason: {reason}."
    return text + " Sign in through the app's browser sign-in instead."
