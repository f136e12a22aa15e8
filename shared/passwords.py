"""Password hashing (argon2id, OWASP/ASVS parameters) and timing-safe verification.

Parameters (security-baseline §8): argon2id, m = 19 MiB, t = 2, p = 1, 16-byte
salt. Unknown users are verified against a dummy hash with the same
parameters so that "no such user" costs the same time as "wrong password".
Passwords longer than MAX_PASSWORD_CHARS are refused before hashing (no
argon2 work on megabyte inputs, A36); nothing is truncated (A23).
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_CHARS = 256

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)
_DUMMY_HASH = _hasher.hash("dummy password for unknown users - never matches")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when the password matches. Always does one argon2 verification."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    target = stored_hash or _DUMMY_HASH
    try:
        ok = _hasher.verify(target, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return bool(ok) and bool(stored_hash)


def dummy_verify(password: str) -> None:
    verify_password(None, password[:MAX_PASSWORD_CHARS])


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)
