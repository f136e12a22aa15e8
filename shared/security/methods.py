"""Second-factor methods: the registration rule, mailbox identity, and the
only code that adds or removes a method.

**The method-registration rule** (Entra's rule for security-info
registration; NIST SP 800-63B-4 §4.1): an account that has any registered
method must complete a challenge with one of its existing methods, in the
same flow, before a new method is registered. Just-in-time registration
without that proof is only for an account that has no method at all.
:func:`may_register` is the rule; the policy gate asks it before answering
``registration_required``, the register endpoints ask it again before
sending a code, and :func:`add_method` asks it once more inside the
conditional write that saves the method, so two flows racing to register
the first method of an account cannot both succeed without proof.

**The sign-in mailbox is never a second factor.** Whoever controls the
account's sign-in mailbox can reset its password by email code, so that
mailbox stands behind the first factor in every flow: an email method on it
(or on a plus-address, case or dot variant of it, :func:`mailbox_key`) adds
nothing against a mailbox thief. Such a method is not offered as a second
factor, does not count as proof, cannot be registered, and an account whose
only method it is counts as an account with no independent method: it may
register one after proving the mailbox by code (a password alone is not
enough), which is the proof a mailbox holder can always give (the accepted
risk of SECURITY.md §3.1).

Every method added or removed sends a notice to the account's address and
is written to the sign-in log.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from shared.delivery import notify
from shared.protocol import errors
from shared.storage import signinlog
from shared.storage.directory import User, change_user, get_user_by_key
from shared.protocol.identifiers import mask_email, mask_phone
from shared.settings import Settings
from shared.storage.tables import Storage

# Providers that ignore dots in the local part (gmail.com and its alias domain).
_DOTLESS_DOMAINS = ("gmail.com", "googlemail.com")


def mailbox_key(address: str) -> str:
    """The mailbox an (already normalized) address reaches: case folded,
    ``+tag`` dropped, and dots dropped where the provider ignores them."""
    local, _, domain = address.lower().partition("@")
    local = local.split("+", 1)[0]
    if domain in _DOTLESS_DOMAINS:
        local = local.replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


def is_sign_in_mailbox(method: dict[str, Any], user: User) -> bool:
    return method.get("channel") == "email" and mailbox_key(method.get("target", "")) == mailbox_key(user.email)


def independent_methods(user: User) -> list[dict[str, Any]]:
    """The account's methods that can be a second factor (all but its sign-in mailbox)."""
    return [m for m in user.methods if not is_sign_in_mailbox(m, user)]


def proof_methods(user: User) -> list[dict[str, Any]]:
    """The methods whose verification proves an existing method for the
    registration rule: the independent ones, or, for an account that has
    none, its sign-in mailbox methods (proof, never a second factor)."""
    independent = independent_methods(user)
    return independent or [m for m in user.methods if is_sign_in_mailbox(m, user)]


def proven_existing(user: User, flow) -> bool:
    """Did this flow verify a code of one of the account's (still registered)
    proof methods?"""
    ids = {m["id"] for m in proof_methods(user)}
    return any(f.get("existing") and f.get("id") in ids for f in flow.json("second_factors", []))


def may_register(user: User, flow) -> bool:
    """The method-registration rule (see the module docstring): an account
    with no method at all; or a flow that verified one of the account's
    existing methods; or, for an account whose only methods are its sign-in
    mailbox, a flow that verified that mailbox by code (an email-code first
    factor, a reset or a sign-up: ``otp`` in its steps). A password alone
    never opens registration on an account that has a method."""
    if not user.methods or proven_existing(user, flow):
        return True
    return not independent_methods(user) and "otp" in flow.steps


def may_go_on(user: User | None, flow) -> bool:
    """The account may still take this flow further: it exists, is enabled (and not
    being deleted), and its password was not reset after the flow began."""
    return user is not None and not user.disabled and not predates_credential_change(user, flow)


def predates_credential_change(user: User, flow) -> bool:
    """A flow started before the account's password was reset (or its sessions
    revoked) must not finish: what its first factor proved is void. The reset
    flow that made the change is the exception (its own automatic sign-in)."""
    if flow.get("kind") == "reset" and user.entity.get("reset_by_flow") == flow.id:
        return False
    return float(user.entity.get("rt_not_before") or 0) > float(flow.get("started") or flow.get("created") or 0)


def mask(channel: str, target: str) -> str:
    return mask_phone(target) if channel == "sms" else mask_email(target)


def add_method(storage: Storage, settings: Settings, flow, channel: str, target: str, request=None, *,
               user: User | None = None) -> str:
    """Save a verified method on the flow's account; returns its id.

    Idempotent (the same channel and target once: a retry after a failure
    finds it and adds nothing). The registration rule is checked against the
    account as stored, inside the conditional write. Refused with
    ``invalid_grant`` when the rule does not hold. ``user`` is the account as
    the caller just read it (saves a read; a stale copy only costs a retry)."""
    user = user or get_user_by_key(storage, flow["ident"])
    if user is None:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    added: dict[str, Any] = {}
    saved = change_user(storage, user, adding(flow, channel, target, added))
    if saved is None and added.get("new"):
        # Computed, never written: the account went (or another account has its address now).
        raise errors.InvalidGrant("The continuation_token is not valid.")
    if added.get("new"):
        _announce(storage, settings, saved, flow, "method_added", channel, target, request)
    return added["id"]


def announce_added(storage: Storage, settings: Settings, user: User, flow, channel: str, target: str,
                   request=None) -> None:
    _announce(storage, settings, user, flow, "method_added", channel, target, request)


def adding(flow, channel: str, target: str, added: dict[str, Any]):
    """The read-modify-write that adds a verified method to the flow's account (filling
    ``added`` with its id, and ``new``), or finds it there; refused with ``invalid_grant``
    when the registration rule does not hold on the account as it is then. For
    :func:`add_method`, and for a step that saves it with the flow's write (register)."""

    new_id = secrets.token_hex(8)    # one id however often the change is computed again

    def compute(u: User) -> dict | None:
        methods = u.methods
        existing = next((m for m in methods if m["channel"] == channel and m["target"] == target), None)
        if existing is not None:
            added.clear()
            added["id"] = existing["id"]
            return None
        if not may_go_on(u, flow) or not may_register(u, flow):
            raise errors.InvalidGrant("This account already has a sign-in method: verify it before adding another.")
        method = {"id": new_id, "channel": channel, "target": target, "default": not methods,
                  "created": int(time.time())}
        added.clear()
        added.update(id=method["id"], new=True)
        return {"methods": json.dumps(methods + [method])}

    return compute


def remove_method(storage: Storage, settings: Settings, user: User, method_id: str, *, flow=None,
                  request=None) -> bool:
    """Remove a method (the default moves to the next one). False when the
    account has no such method."""
    removed: dict[str, Any] = {}

    def compute(u: User) -> dict | None:
        methods = u.methods
        gone = next((m for m in methods if m["id"] == method_id), None)
        if gone is None:
            return None
        removed.update(gone)
        rest = [m for m in methods if m["id"] != method_id]
        if rest and not any(m.get("default") for m in rest):
            rest[0]["default"] = True
        return {"methods": json.dumps(rest)}

    saved = change_user(storage, user, compute)
    if saved is None or not removed:
        return False
    _announce(storage, settings, saved, flow, "method_removed", removed["channel"], removed["target"], request)
    return True


def _announce(storage: Storage, settings: Settings, user: User, flow, purpose: str, channel: str, target: str,
              request) -> None:
    notify.send_notice(storage, settings, to=user.email, purpose=purpose, request=request,
                       detail=mask(channel, target), count=True)
    signinlog.record(storage, flow, user, purpose, channel, flow.steps if flow is not None else [], "none")
