"""The account API of the signed-in user (``/me`` under the base URL).

Every call carries ``Authorization: Bearer`` with an access token for the
account scope (``api://native-auth/account`` by default), taken from the
token store like ``token`` does (cached, or refreshed silently). Three
answers are followed automatically, each at most once per call:

* **401 ``invalid_token``** with a cached token (e.g. the session was renewed
  by a password change): refresh it, call again.
* **401 ``insufficient_claims``** with a claims challenge in
  ``WWW-Authenticate`` (adding or removing a method, deleting the account
  need a fresh second factor): first a refresh asking for those claims (as
  MSAL's ``acquire_token_silent`` with ``claims_challenge`` does; enough when
  this session's own second factor is recent), then, when the server answers
  ``basic_action``, a new sign-in with the claims: password (or email code),
  then the second factor the server asks for. The new session replaces the
  old one in the token store, and the call is made again with its token.
* **401 ``confirmation_required``** (an account without an independent
  second factor): ``POST /me/confirmation`` sends a code to the account's
  email; the call is made again with ``confirmation`` and ``code``.

Nothing here prints a token, a code, a password or a verification handle.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from . import flows
from .api import ApiError, ClientError, NativeAuthApi
from .cache import InteractionRequired, TokenStore, split_scopes
from .prompts import Prompter

DEFAULT_ACCOUNT_SCOPE = "api://native-auth/account"
OIDC_SCOPES = "openid profile offline_access"


def account_scope(scope: str) -> str:
    """The scopes asked for: the account API's scope plus the OIDC ones (an ID
    token for the step-up sign-in, a refresh token to keep)."""
    return " ".join(dict.fromkeys(split_scopes(scope) + split_scopes(OIDC_SCOPES)))


def channel_name(channel: str | None) -> str:
    return flows._channel(channel)


def when(iso: Any) -> str:
    """``2024-05-01T10:00:00Z`` → ``2024-05-01 10:00:00 UTC`` (as ``whoami`` shows times)."""
    if not isinstance(iso, str) or not iso:
        return "never"
    try:
        moment = _dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_method(m: dict[str, Any]) -> str:
    return f"{channel_name(m.get('channel'))} to {m.get('target') or '(not shown)'}"


def code_challenge(answer: dict[str, Any], handle: str) -> dict[str, Any]:
    """An account API's ``{<handle>, channel, target, codeLength}`` in the shape
    :func:`flows.code_loop` announces (the handle stands in for the continuation token)."""
    value = answer.get(handle)
    if not isinstance(value, str) or not value:
        raise ClientError(f"The server's answer has no '{handle}'.")
    return {"continuation_token": value, "challenge_type": "oob", "challenge_channel": answer.get("channel"),
            "challenge_target_label": answer.get("target"), "code_length": answer.get("codeLength")}


class Account:
    """One signed-in account's calls to ``/me`` (see the module docstring)."""

    def __init__(self, api: NativeAuthApi, io: Prompter, store: TokenStore, scope: str, username: str | None):
        self.api, self.io, self.store = api, io, store
        self.scope = account_scope(scope)
        self.username = username
        self._token: str | None = None
        self._source = ""

    @property
    def ctx(self) -> flows.Context:
        return flows.Context(self.api, self.io, self.scope)

    def token(self, *, force_refresh: bool = False, claims: str | None = None) -> str:
        token, source, name = self.store.access_token(self.scope, self.username, force_refresh, claims)
        self._token, self._source, self.username = token, source, name
        return token

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        if self._token is None:
            self.token()
        return self.api.call(method, path, self._token, body)[1]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The answer's JSON (None for 204), after whatever proof the server asked for."""
        refreshed = silent_tried = signed_in = False
        while True:
            try:
                return self._send(method, path, body)
            except ApiError as exc:
                if exc.status != 401:
                    raise
                if exc.error == "invalid_token" and self._source == "cache" and not refreshed:
                    refreshed = True
                    self.token(force_refresh=True)
                    continue
                claims = exc.claims_challenge
                if exc.error == "insufficient_claims" and claims and not signed_in:
                    if not silent_tried:
                        silent_tried = True
                        if self._refresh_with(claims):
                            continue
                    signed_in = True
                    self._sign_in_again(claims)
                    continue
                if exc.error == "confirmation_required":
                    return self._confirm(method, path, body)
                raise

    # ------------------------------------------------------------------ step-up

    def _refresh_with(self, claims: str) -> bool:
        """A refresh asking for the claims: enough when this session's second factor is recent."""
        try:
            self.token(claims=claims)
        except InteractionRequired:
            return False
        return True

    def _sign_in_again(self, claims: str) -> None:
        io = self.io
        io.say(f"This change needs a fresh second factor: sign in again as {self.username}.")
        tokens = flows.sign_in(self.ctx, self.username or io.ask_nonempty("Email address: "), claims=claims)
        if not tokens.get("access_token"):
            raise ClientError("The new sign-in returned no access token.")
        self._token, self._source = tokens["access_token"], "identity_provider"
        self.username = self.store.save_sign_in(tokens, self.scope)  # the fresh session replaces the old one
        io.say("Signed in again. Continuing…")

    # ------------------------------------------------------------------ email confirmation

    def _confirm(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        self.io.say("This change needs a confirmation code, sent to the account's email address.")

        def send(_handle: str | None = None) -> dict[str, Any]:
            return code_challenge(self._send("POST", "me/confirmation", {}) or {}, "confirmation")

        def submit(confirmation: str, code: str) -> dict[str, Any]:
            return {"answer": self._send(method, path, {**(body or {}), "confirmation": confirmation, "code": code})}

        return flows.code_loop(self.ctx, send(), resend=send, submit=submit)["answer"]
