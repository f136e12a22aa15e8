"""Password hashing (argon2id, OWASP/ASVS parameters) and timing-safe verification.

Parameters (security-baseline §8): argon2id, m = 19 MiB, t = 2, p = 1, 16-byte
salt. Unknown users are verified against a dummy hash with the same
parameters so that "no such user" costs the same time as "wrong password".
Passwords longer than MAX_PASSWORD_CHARS are refused before hashing (no
argon2 work on megabyte inputs, A36); nothing is truncated (A23).

Bounded work (A53, A54): at most ARGON2_CONCURRENCY hashes run at once per
process (19 MiB each: a memory ceiling of 4 x 19 MiB for hashing), the rest
wait their turn in a queue (up to ARGON2_QUEUE_SECONDS, then 503 with
Retry-After); the strength estimator (zxcvbn, pure Python, holding the GIL)
sees at most STRENGTH_CHECK_MAX_CHARS characters and runs one at a time, so
a crafted password costs a bounded ~0.3 s of one core and cannot stall the
other requests of the instance.
"""

from __future__ import annotations

import threading
import unicodedata

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_CHARS = 256
ARGON2_CONCURRENCY = 4
ARGON2_QUEUE_SECONDS = 10.0
STRENGTH_CHECK_MAX_CHARS = 32
STRENGTH_QUEUE_SECONDS = 5.0

_slots = threading.BoundedSemaphore(ARGON2_CONCURRENCY)


def _return_large_allocations_to_the_os() -> None:
    """glibc raises its mmap threshold after a large block is freed, so later
    19 MiB argon2 blocks come from per-thread malloc arenas and stay resident
    after the hash (measured: a 60-request burst took the host's peak to 484
    MiB with four hashes at a time; with this, 124 MiB). A fixed threshold
    keeps every such block an mmap that is returned when the hash ends, at
    the price of mapping it anew (about 5 ms more per hash here). No-op off
    glibc."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD = 4 MiB, and no dynamic raise
    except (OSError, AttributeError):
        pass


_return_large_allocations_to_the_os()
_stats_lock = threading.Lock()
_stats = {"running": 0, "peak": 0, "operations": 0, "compared": 0}
_strength_lock = threading.Lock()

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)
_dummy_hash: str | None = None


def _dummy() -> str:
    """Made on first use, not at import (it costs one argon2 hash: cold start)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password("dummy password for unknown users - never matches")
    return _dummy_hash


def _normalize(password: str) -> str:
    """NFKC, so the same password typed on different keyboards matches (NIST §3.1.1.2)."""
    return unicodedata.normalize("NFKC", password)


class _Slot:
    """One of the ARGON2_CONCURRENCY hashing slots (a queue, not an error, for normal bursts)."""

    def __enter__(self):
        if not _slots.acquire(timeout=ARGON2_QUEUE_SECONDS):
            from shared.protocol.errors import ServiceUnavailable

            raise ServiceUnavailable("Too many sign-ins at once. Retry shortly.", retry_after=2)
        with _stats_lock:
            _stats["running"] += 1
            _stats["operations"] += 1
            _stats["peak"] = max(_stats["peak"], _stats["running"])
        return self

    def __exit__(self, *exc):
        with _stats_lock:
            _stats["running"] -= 1
        _slots.release()


def argon2_operations() -> int:
    """Argon2 hashes and verifications done by this process (for tests and the benchmark)."""
    return _stats["operations"]


def passwords_compared() -> int:
    """Verifications against a real stored hash (not the dummy): for tests."""
    return _stats["compared"]


def peak_concurrency() -> int:
    return _stats["peak"]


def reset_peak_concurrency() -> None:
    with _stats_lock:
        _stats["peak"] = _stats["running"]


def hash_password(password: str) -> str:
    with _Slot():
        return _hasher.hash(_normalize(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when the password matches. Always does one argon2 verification."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    target = stored_hash or _dummy()
    if stored_hash:
        with _stats_lock:
            _stats["compared"] += 1
    try:
        with _Slot():
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


def _strength_score(password: str, user_inputs: list[str]) -> int:
    """zxcvbn's score of the first STRENGTH_CHECK_MAX_CHARS characters, one
    estimate at a time per process. zxcvbn's cost grows steeply with length
    and with l33t characters (72 of them took 1.6-2.4 s of CPU); 32 keep
    the worst case near 0.3 s. A longer password is judged by its first 32
    characters: a weak start is refused even if more follows (rare, and on
    the safe side)."""
    import zxcvbn as _zxcvbn

    if not _strength_lock.acquire(timeout=STRENGTH_QUEUE_SECONDS):
        from shared.protocol.errors import ServiceUnavailable

        raise ServiceUnavailable("Too many passwords are being checked right now. Retry shortly.", retry_after=2)
    try:
        return int(_zxcvbn.zxcvbn(password[:STRENGTH_CHECK_MAX_CHARS], user_inputs)["score"])
    finally:
        _strength_lock.release()


def check_policy(password: str, *, min_length: int, context: tuple[str, ...] = (),
                 previous_hashes: tuple[str, ...] = ()) -> None:
    """NIST 800-63B §3.1.1.2: length, blocklist, context words; no composition rules.
    Checked on the NFKC form, the form that is hashed (A59): length counts its
    Unicode code points. Raises PasswordRejected."""
    password = _normalize(password)
    n = len(password)
    if n < min_length:
        raise PasswordRejected("password_too_short", f"The password must have at least {min_length} characters.")
    if n > MAX_PASSWORD_CHARS:
        raise PasswordRejected("password_too_long", f"The password must have at most {MAX_PASSWORD_CHARS} characters.")
    lowered = password.lower()
    banned = banned_passwords()
    if lowered in banned or _core(password) in banned or any(w and len(w) >= 4 and w in lowered for w in context):
        raise PasswordRejected("password_banned", "This password is too common or too easy to guess.")
    if _strength_score(password, [w for w in context if w]) < 2:
        raise PasswordRejected("password_too_weak", "This password is too easy to guess.")
    for old in previous_hashes:
        if old and verify_password(old, password):
            raise PasswordRejected("password_recently_used", "This password was used recently. Choose another.")
