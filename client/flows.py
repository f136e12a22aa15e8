"""The interactive flows (contract §5): sign-in, sign-up, password reset,
and what may follow any first factor: the second factor (§5.2/5.3) or the
just-in-time registration of one (§5.4).

Every flow returns the token response of ``/oauth2/v2.0/token``; the CLI then
hands it to a token store. Errors the person can fix on the spot (a wrong
code, a rejected password, an invalid attribute, a bad phone number, a resend
that came too early) are shown and asked again with the same continuation
token (the server keeps it valid for these); everything else propagates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from .api import (CHALLENGE_TYPES, CODE_ONLY_CHALLENGE_TYPES, ApiError, ClientError, NativeAuthApi)
from .messages import PASSWORD_SUBERRORS, describe
from .prompts import Prompter

POLL_TIMEOUT_SECONDS = 300  # what MSAL JS allows for poll_completion (contract §3.15)
DEFAULT_POLL_INTERVAL = 2  # MSAL JS replaces poll_interval 0 with 2 (contract §3.14)


@dataclass
class Context:
    api: NativeAuthApi
    io: Prompter
    scope: str
    sleep: Callable[[float], None] = time.sleep


def _channel(name: str | None) -> str:
    return {"sms": "SMS", "email": "email", "voice": "voice call"}.get((name or "").lower(), name or "a message")


def _rate_limited(err: ApiError) -> bool:
    return err.error == "slow_down" or err.status == 429


# ---------------------------------------------------------------------- codes

def code_loop(ctx: Context, challenge: dict[str, Any], *, resend: Callable[[str], dict[str, Any]],
              submit: Callable[[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Ask for the code announced by ``challenge`` until ``submit`` accepts it.

    An empty answer asks for a new code (the server invalidates the old one).
    Wrong codes keep the continuation token, so the next try reuses it.
    """
    io = ctx.io

    def announce(ch: dict[str, Any]) -> int:
        if ch.get("challenge_type") not in (None, "oob"):
            raise ClientError(f"The server asked for '{ch.get('challenge_type')}' where a code was expected.")
        length = int(ch.get("code_length") or 0)
        target = ch.get("challenge_target_label") or ch.get("challenge_target") or "your address"
        digits = f"{length}-digit " if length > 0 else ""
        io.say(f"A {digits}code was sent by {_channel(ch.get('challenge_channel'))} to {target}.")
        return length

    length = announce(challenge)
    while True:
        code = io.ask("Enter the code (or press Enter to get a new one): ")
        if not code:
            try:
                challenge = resend(challenge["continuation_token"])
            except ApiError as exc:
                if _rate_limited(exc):
                    io.warn(describe(exc))
                    continue
                raise
            length = announce(challenge)
            continue
        if length > 0 and (len(code) != length or not code.isdigit()):
            io.warn(f"The code has {length} digits.")
            continue
        try:
            return submit(challenge["continuation_token"], code)
        except ApiError as exc:
            if exc.suberror == "invalid_oob_value" or _rate_limited(exc):
                io.warn(describe(exc))
                continue
            raise


# ---------------------------------------------------------------------- after a first factor

def complete_sign_in(ctx: Context, obtain: Callable[[], dict[str, Any]], username: str | None, *,
                     proved: bool = False) -> dict[str, Any]:
    """Run ``obtain`` (a call ending at ``/token``); follow ``mfa_required``
    and ``registration_required`` (contract §3.6) to the token response.

    They can follow each other: when the sign-in needs a kind of method the
    account does not have, the server first asks to verify an existing one
    (``mfa_required``), then to register the needed one (``registration_required``)."""
    try:
        return obtain()
    except ApiError as exc:
        if exc.suberror == "mfa_required" and exc.continuation_token:
            ct = exc.continuation_token
            ctx.io.say("A second factor is required.")
            return complete_sign_in(ctx, lambda: second_factor(ctx, ct), username, proved=True)
        if exc.suberror == "registration_required" and exc.continuation_token:
            ctx.io.say("Now register the kind of second factor this sign-in needs." if proved
                       else "A second factor is required, and none is registered for this account yet.")
            return register_method(ctx, exc.continuation_token, username)
        raise


def second_factor(ctx: Context, ct: str) -> dict[str, Any]:
    """``/oauth2/v2.0/introspect`` → pick → ``/challenge`` with ``id`` → code → ``/token`` (``mfa_oob``)."""
    api, io = ctx.api, ctx.io
    listed = api.mfa_introspect(ct)
    ct = listed["continuation_token"]
    methods = [m for m in listed.get("methods") or [] if isinstance(m, dict) and m.get("id")]
    while True:
        if not methods:
            raise ClientError("The server requires a second factor but offers no method to use.")
        options = [f"{_channel(m.get('challenge_channel'))} to {m.get('login_hint') or '(not shown)'}" for m in methods]
        method = methods[io.choose("Where should the verification code go?", options)]
        try:
            challenge = api.signin_challenge(ct, method_id=method["id"])
        except ApiError as exc:
            if exc.suberror == "provider_blocked_by_rep" or exc.has_code(550024):
                io.warn(describe(exc))
                methods = [m for m in methods if m is not method]
                continue
            raise
        break
    return code_loop(
        ctx, challenge,
        resend=lambda token: api.signin_challenge(token, method_id=method["id"]),
        submit=lambda token, code: api.token("mfa_oob", ctx.scope, continuation_token=token, oob=code))


def register_method(ctx: Context, ct: str, username: str | None) -> dict[str, Any]:
    """``/register/v1.0/introspect`` → email or phone → ``/challenge`` (a code)
    → ``/continue`` → ``/token`` (``continuation_token``). The sign-in
    address itself is refused by the server (it is no second factor)."""
    api, io = ctx.api, ctx.io
    listed = api.register_introspect(ct)
    ct = listed["continuation_token"]
    methods = [m for m in listed.get("methods") or [] if isinstance(m, dict)]
    if not methods:
        raise ClientError("The server requires a second factor but offers no method to register.")
    options = []
    for m in methods:
        channel = (m.get("challenge_channel") or m.get("id") or "").lower()
        hint = m.get("login_hint")
        options.append("Another email address" + (f" (suggested: {hint})" if hint else "") if channel == "email"
                       else "A mobile phone (SMS)" if channel == "sms" else _channel(channel))
    while True:
        method = methods[io.choose("Choose a second factor to register:", options)]
        channel = (method.get("challenge_channel") or method.get("id") or "email").lower()
        if channel == "email":
            target = io.ask("Email address for your codes (another mailbox than the one you sign in with): ") or ""
        else:
            target = io.ask("Mobile number in international format (e.g. +4915112345678): ")
        if not target:
            io.warn("An address or number is required.")
            continue
        try:
            challenge = api.register_challenge(ct, channel, target, method.get("challenge_type") or "oob")
        except ApiError as exc:
            if exc.has_code(901001, 550024) or exc.suberror == "provider_blocked_by_rep" or _rate_limited(exc):
                io.warn(describe(exc))
                continue
            raise
        break
    done = code_loop(
        ctx, challenge,
        resend=lambda token: api.register_challenge(token, channel, target, method.get("challenge_type") or "oob"),
        submit=lambda token, code: api.register_continue(token, "oob", oob=code))
    io.say(f"Your {_channel(channel)} second factor is registered.")
    # J omits username here (contract §3.10).
    return api.token("continuation_token", ctx.scope, continuation_token=done["continuation_token"])


# ---------------------------------------------------------------------- sign-in (§5.1–5.5)

def sign_in(ctx: Context, username: str, *, email_code: bool = False, claims: str | None = None) -> dict[str, Any]:
    """``claims``: a protected API's claims challenge (step-up), sent with the
    first-factor ``/token`` call; the server then asks for the second factor."""
    api, io = ctx.api, ctx.io
    types = CODE_ONLY_CHALLENGE_TYPES if email_code else CHALLENGE_TYPES
    started = api.initiate(username, types)
    challenge = api.signin_challenge(started["continuation_token"], types)
    kind = challenge.get("challenge_type")
    if kind == "password":
        password = io.secret("Password: ")
        return complete_sign_in(ctx, lambda: api.token("password", ctx.scope, continuation_token=challenge["continuation_token"],
                                                       password=password, claims=claims), username)
    if kind == "oob":
        if not email_code:
            io.say("This account signs in with a one-time code.")
        return complete_sign_in(ctx, lambda: code_loop(
            ctx, challenge,
            resend=lambda token: api.signin_challenge(token, types),
            submit=lambda token, code: api.token("oob", ctx.scope, continuation_token=token, oob=code,
                                                 claims=claims)), username)
    raise ClientError(f"The server answered the sign-in challenge with an unexpected type '{kind}'.")


# ---------------------------------------------------------------------- sign-up (§5.6)

def _ask_attribute(io: Prompter, spec: dict[str, Any]) -> str:
    name = str(spec.get("name"))
    kind = str(spec.get("type") or "string")
    regex = (spec.get("options") or {}).get("regex") if isinstance(spec.get("options"), dict) else None
    hint = kind + (f", matching {regex}" if regex else "")
    while True:
        value = io.ask(f"{name} ({hint}): ")
        if kind == "boolean":
            low = value.lower()
            if low in ("y", "yes", "true", "1"):
                return "true"
            if low in ("n", "no", "false", "0"):
                return "false"
            io.warn("Please answer yes or no.")
            continue
        if kind == "int" and not value.lstrip("-").isdigit():
            io.warn("Please type a whole number.")
            continue
        if value or not spec.get("required", True):
            return value
        io.warn(f"{name} is required.")


def _attributes_step(ctx: Context, ct: str, required: list[dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        io = ctx.io
        io.say("A few more details are needed:")
        values = {str(spec.get("name")): _ask_attribute(io, spec) for spec in required if isinstance(spec, dict)}
        while True:
            try:
                return ctx.api.signup_continue(ct, "attributes", attributes=json.dumps(values))
            except ApiError as exc:
                if exc.suberror != "attribute_validation_failed":
                    raise
                io.warn(describe(exc))
                bad = {str(a.get("name")) for a in exc.body.get("invalid_attributes") or [] if isinstance(a, dict)}
                specs = {str(s.get("name")): s for s in required if isinstance(s, dict)}
                for name in bad or set(values):
                    values[name] = _ask_attribute(io, specs.get(name, {"name": name, "type": "string"}))
    return run


def _password_step(ctx: Context, ct: str) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        while True:
            password = ctx.io.new_password("Choose a password: ")
            try:
                return ctx.api.signup_continue(ct, "password", password=password)
            except ApiError as exc:
                if exc.suberror not in PASSWORD_SUBERRORS:
                    raise
                ctx.io.warn(describe(exc))
    return run


def sign_up(ctx: Context, username: str, *, attributes: dict[str, str] | None = None,
            passwordless: bool = False) -> dict[str, Any]:
    """Start → email code → (password, attributes as the server asks) → account
    → automatic sign-in (with a second factor or its registration)."""
    api, io = ctx.api, ctx.io
    types = CODE_ONLY_CHALLENGE_TYPES if passwordless else CHALLENGE_TYPES
    started = api.signup_start(username, types, json.dumps(attributes) if attributes else None)
    challenge = api.signup_challenge(started["continuation_token"], types)

    def step_for(ch: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        if ch.get("challenge_type") == "password":
            return _password_step(ctx, ch["continuation_token"])
        io.say("Verify your email address.")
        return lambda: code_loop(
            ctx, ch,
            resend=lambda token: api.signup_challenge(token, types),
            submit=lambda token, code: api.signup_continue(token, "oob", oob=code))

    step = step_for(challenge)
    while True:
        try:
            done = step()
            break
        except ApiError as exc:
            if exc.error == "credential_required" and exc.continuation_token:
                step = step_for(api.signup_challenge(exc.continuation_token, types))
            elif exc.error == "attributes_required" and exc.continuation_token:
                step = _attributes_step(ctx, exc.continuation_token, list(exc.body.get("required_attributes") or []))
            else:
                raise
    io.say(f"Account created for {username}. Signing you in…")
    return complete_sign_in(ctx, lambda: api.token("continuation_token", ctx.scope,
                                                   continuation_token=done["continuation_token"], username=username),
                            username)


# ---------------------------------------------------------------------- reset (§5.7)

def _poll(ctx: Context, submitted: dict[str, Any]) -> tuple[str, str]:
    try:
        interval = float(submitted.get("poll_interval") or 0)
    except (TypeError, ValueError):
        interval = 0
    interval = interval if interval > 0 else DEFAULT_POLL_INTERVAL
    ct = submitted["continuation_token"]
    deadline = time.monotonic() + POLL_TIMEOUT_SECONDS
    while True:
        ctx.sleep(interval)  # poll_interval: the minimum time between polls
        try:
            polled = ctx.api.reset_poll(ct)
        except ApiError as exc:
            if _rate_limited(exc) and time.monotonic() < deadline:
                ctx.sleep(exc.retry_after or interval)
                continue
            raise
        ct = polled.get("continuation_token") or ct
        status = polled.get("status")
        if status in ("succeeded", "failed"):
            return status, ct
        if status not in ("in_progress", "not_started"):
            raise ClientError(f"The server reported an unknown reset status '{status}'.")
        if time.monotonic() >= deadline:
            raise ClientError("The password change did not complete within 5 minutes. Please try again.")


def reset_password(ctx: Context, username: str) -> dict[str, Any]:
    api, io = ctx.api, ctx.io
    started = api.reset_start(username)
    challenge = api.reset_challenge(started["continuation_token"])
    verified = code_loop(ctx, challenge, resend=api.reset_challenge, submit=api.reset_continue)
    ct = verified["continuation_token"]
    while True:
        password = io.new_password("New password: ")
        try:
            submitted = api.reset_submit(ct, password)
        except ApiError as exc:
            if exc.suberror not in PASSWORD_SUBERRORS:
                raise
            io.warn(describe(exc))
            continue
        status, ct = _poll(ctx, submitted)
        if status == "succeeded":
            break
        io.warn("The new password could not be set. Please choose another one.")
    io.say("Your password was changed. Signing you in…")
    return complete_sign_in(ctx, lambda: api.token("continuation_token", ctx.scope, continuation_token=ct,
                                                   username=username), username)
