"""Wire errors as small classes (Authlib style).

Each class carries the wire values as class attributes: ``error``,
``error_codes``, ``suberror`` and the HTTP ``status``. Raising one anywhere in
``shared/`` ends the request with the contract's JSON error shape
(native-auth-contract.md §1.2); ``protocol.error_body`` renders it.
"""

from __future__ import annotations

from typing import Any


class AuthError(Exception):
    headers: dict[str, str] = {}   # extra response headers of this kind of error
    error: str = "invalid_request"
    error_codes: tuple[int, ...] = (90100,)
    status: int = 400
    suberror: str | None = None
    description: str = "The request is not valid."

    def __init__(self, description: str | None = None, *, suberror: str | None = None,
                 error_codes: tuple[int, ...] | None = None, extra: dict[str, Any] | None = None,
                 retry_after: int | None = None) -> None:
        self.description = description or self.description
        if suberror is not None:
            self.suberror = suberror
        if error_codes is not None:
            self.error_codes = tuple(error_codes)
        self.extra = dict(extra or {})
        self.retry_after = retry_after
        super().__init__(self.description)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r}, suberror={self.suberror!r})"


class InvalidRequest(AuthError):
    error = "invalid_request"
    error_codes = (90100,)
    description = "The request is not valid."


class InvalidUsername(InvalidRequest):
    # J and iOS match this description text and code 90100 (contract §4.3).
    description = "username parameter is empty or not valid."


class InvalidClient(AuthError):
    error = "invalid_client"
    error_codes = (7000218,)
    description = "The client is not allowed to use native authentication."


class UnauthorizedClient(AuthError):
    error = "unauthorized_client"
    error_codes = (700016,)
    description = "The application identifier is not registered here."


class UnsupportedChallengeType(AuthError):
    error = "unsupported_challenge_type"
    error_codes = (901007,)
    description = "The challenge_type list parameter contains an unsupported challenge type."


class InvalidGrant(AuthError):
    error = "invalid_grant"
    error_codes = (55200,)
    description = "The grant or continuation_token is not valid."


class InvalidCredentials(InvalidGrant):
    # J isPasswordIncorrect needs 50126 in error_codes; iOS reads error_codes[0].
    error_codes = (50126,)
    description = "Error validating credentials due to invalid username or password."


class InvalidOob(InvalidGrant):
    suberror = "invalid_oob_value"
    error_codes = (50181,)
    description = "The code is not valid."


class TooManyAttempts(InvalidGrant):
    # After the attempt limit the challenge is dead; the client must start again.
    suberror = "invalid_oob_value"
    error_codes = (50053,)
    description = "Too many wrong codes. Request a new code or start again."


class ExpiredToken(AuthError):
    error = "expired_token"
    error_codes = (552003,)
    description = "The continuation_token has expired. Start the flow again."


class UserNotFound(AuthError):
    error = "user_not_found"
    error_codes = (50034,)
    description = "The user account does not exist."


class PasswordResetRequired(InvalidRequest):
    error_codes = (50142,)
    description = "The password must be reset before signing in."


class InvalidScope(AuthError):
    error = "invalid_scope"
    error_codes = (70011,)
    description = "The requested scope is not valid."


class UnsupportedGrantType(AuthError):
    error = "unsupported_grant_type"
    error_codes = (70003,)
    description = "The grant_type is not supported here."


class SlowDown(AuthError):
    """Rate limit hit: HTTP 400 with ``Retry-After``. Not 429: MSAL iOS and
    Android parse error bodies only on 400 (iOS also 401) and report any other
    status as an unexpected response (docs/sdk-compatibility.md), so a 429
    reached the app as a generic error and lost its retry hint."""
    error = "slow_down"
    error_codes = (50196,)
    status = 400
    description = "Too many requests. Retry later."


class ServiceUnavailable(AuthError):
    error = "temporarily_unavailable"
    error_codes = (50196,)
    status = 503
    description = "The service is temporarily unavailable. Retry later."


class ServerError(AuthError):
    error = "server_error"
    error_codes = (50000,)
    status = 500
    description = "An unexpected error occurred."


class NotFound(AuthError):
    error = "not_found"
    error_codes = (90010,)
    status = 404
    description = "No such endpoint."


class MethodNotAllowed(AuthError):
    error = "invalid_request"
    error_codes = (90010,)
    status = 405
    description = "This endpoint only accepts POST."

    def __init__(self, description: str | None = None, *, allow: str = "POST, OPTIONS", **kwargs):
        super().__init__(description, **kwargs)
        self.allow = allow  # the Allow header of the 405


class BlockedContact(AuthError):
    """SMS to this number is not allowed (country allow-list, line type)."""
    error = "access_denied"
    suberror = "provider_blocked_by_rep"
    error_codes = (550024,)
    description = "Configuring multi-factor authentication method is blocked."


class Blocked(AuthError):
    """A conditional-access policy blocks this sign-in."""
    error = "access_denied"
    error_codes = (53003,)
    description = "Access has been blocked by conditional access policies."


class ExtensionBlocked(AuthError):
    """A custom authentication extension blocked the step (Entra's ``showBlockPage``
    or ``passwordSubmit.Block``): its message is the description."""
    error = "access_denied"
    error_codes = (1003023,)
    description = "This request was blocked."


class CannotSatisfy(AuthError):
    """A second factor is required, and this account has no method that can
    serve as one in this sign-in, nor one it could prove before registering
    another (AADSTS53004: the user must complete registration elsewhere)."""
    error = "access_denied"
    error_codes = (53004,)
    description = ("This sign-in needs a second factor this account cannot provide here. "
                   "Sign in with your password, or ask support to add a sign-in method.")


class InteractionRequired(InvalidGrant):
    """A refresh the session cannot satisfy: a second factor (or a fresher
    one) is required. ``basic_action`` is a suberror every MSAL treats as
    "interaction required" (msal-common InteractionRequiredAuthSubErrorMessage),
    so the app signs in again, passing the claims it asked for."""
    suberror = "basic_action"
    error_codes = (50076,)
    description = "A fresh second factor is required for this request. Sign in again."


class RefreshBlocked(InvalidGrant):
    """A refresh blocked by a conditional-access policy (``message_only`` is
    also an "interaction required" suberror for MSAL)."""
    suberror = "message_only"
    error_codes = (53003,)
    description = "Access has been blocked by conditional access policies."
