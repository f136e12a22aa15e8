"""Password hashing (argon2id, OWASP/ASVS parameters) and timing-safe verification.

Parameters (security-baseline §8): argon2id, m = 19 MiB, t = 2, p = 1, 16-byte
salt. Unknown users are verified against a dummy hash with the same
parameters so that "no such user" costs the same time as "wrong password".
Passwords longer than MAX_PASSWORD_CHARS are refused before hashing (no
argon2 work on megabyte inputs, A36); nothing is truncated (A23).
"""

from __future__ import annotations

import unicodedata

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_CHARS = 256

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)
_dummy_hash: str | None = None


def _dummy() -> str:
    """Made on first use, not at import (it costs one argon2 hash: cold start)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("dummy password for unknown users - never matches")
    return _dummy_hash


def _normalize(password: str) -> str:
    """NFKC, so the same password typed on different keyboards matches (NIST §3.1.1.2)."""
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    return _hasher.hash(_normalize(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when the password matches. Always does one argon2 verification."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    target = stored_hash or _dummy()
    try:
        ok = _hasher.verify(target, _normalize(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return bool(ok) and bool(stored_hash)


def dummy_verify(password: str) -> None:
    verify_password(None, password[:MAX_PASSWORD_CHARS])


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


# ------------------------------------------------------------------ policy

class PasswordRejected(ValueError):
    """``suberror`` is the wire value (contract §4.2)."""

    def __init__(self, suberror: str, message: str):
        super().__init__(message)
        self.suberror = suberror


_banned: frozenset[str] | None = None


def banned_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of the zxcvbn project's list (ranked
    from breach corpora: Xato's 10 million passwords), lower-cased."""
    global _banned
    if _banned is None:
        from zxcvbn.frequency_lists import FREQUENCY_LISTS

        _banned = frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])
    return _banned


def _core(password: str) -> str:
    """'Password123!' -> 'password': what is left without trailing digits and symbols."""
    return password.lower().rstrip("0123456789!@#$%^&*()_+-=.,?~ ")


def check_policy(password: str, *, min_length: int, context: tuple[str, ...] = (),
                 previous_hashes: tuple[str, ...] = ()) -> None:
    """NIST 800-63B §3.1.1.2: length, blocklist, context words; no composition rules.
    Length counts Unicode code points. Raises PasswordRejected."""
    n = len(password)
    if n < min_length:
        raise PasswordRejected("password_too_short", f"The password must have at least {min_length} characters.")
    if n > MAX_PASSWORD_CHARS:
        raise PasswordRejected("password_too_long", f"The password must have at most {MAX_PASSWORD_CHARS} characters.")
    lowered = password.lower()
    banned = banned_passwords()
    if lowered in banned or _core(password) in banned or any(w and len(w) >= 4 and w in lowered for w in context):
        raise PasswordRejected("password_banned", "This password is too common or too easy to guess.")
    from zxcvbn import zxcvbn

    # zxcvbn analyses at most 72 characters; a longer password is judged by its first 72.
    if zxcvbn(password[:72], user_inputs=[w for w in context if w])["score"] < 2:
        raise PasswordRejected("password_too_weak", "This password is too easy to guess.")
    for old in previous_hashes:
        if old and verify_password(old, password):
            raise PasswordRejected("password_recently_used", "This password was used recently. Choose another.")
