"""Password hashing (argon2id, OWASP/ASVS parameters) and timing-safe verification.

Parameters (security-baseline §8): argon2id, m = 19 MiB, t = 2, p = 1, 16-byte
salt. argon2-cffi writes and reads the PHC strings; libsodium (PyNaCl) computes the
argon2id itself whenever it can (:class:`Argon2idHasher`: the same bytes, about
14 ms instead of about 25 here). Unknown users are verified against a dummy hash with the same
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

Imported hashes (``python -m admin users import``): besides this service's
own argon2id, a user may carry the hash of the system they came from:
argon2id with other parameters, bcrypt (``$2a$``/``$2b$``/``$2y$``) or
Django's ``pbkdf2_sha256$iterations$salt$hash``. They are verified here
(the sign-in rehashes them to this service's argon2id on the first success,
:func:`needs_rehash`) and bounded when imported (:func:`check_importable`):
every verification, foreign or not, holds hashing slots, and an imported
argon2id hash with more memory than ours holds as many slots as it needs
19 MiB blocks (at most all four), so the memory ceiling stays 4 x 19 MiB.
The work is constant per stored hash, not across hashes: a bcrypt or
PBKDF2 account answers a wrong password at the speed of its own hash
(bcrypt cost 10: about 60 ms, PBKDF2 600,000 iterations: about 130 ms,
argon2id here: about 14 ms) until its first sign-in rehashes it. Unknown
names and accounts without a password always cost one argon2id verification
with this service's parameters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
import time
import unicodedata
from collections import deque
from typing import Literal

from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError, InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_CHARS = 256
ARGON2_CONCURRENCY = 4
ARGON2_QUEUE_SECONDS = 10.0
STRENGTH_CHECK_MAX_CHARS = 32
STRENGTH_QUEUE_SECONDS = 5.0

ARGON2_SLOT_KIB = 19 * 1024    # one slot is one of our argon2id blocks (m = 19 MiB)

# Bounds on imported hashes (check_importable): the work one sign-in attempt can cost.
IMPORT_ARGON2_MAX_KIB = ARGON2_CONCURRENCY * ARGON2_SLOT_KIB   # 76 MiB: argon2-cffi's default 64 MiB fits
IMPORT_ARGON2_MAX_TIME = 10
IMPORT_ARGON2_MAX_PARALLELISM = 8
IMPORT_BCRYPT_COST = (4, 13)          # cost 13 is about 0.5 s of one core here
IMPORT_PBKDF2_ITERATIONS = (1000, 2_000_000)
BCRYPT_MAX_BYTES = 72

_slot_cond = threading.Condition()
_slot_queue: deque[object] = deque()   # waiting tickets, first come first served
_slots_in_use = 0


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
_stats = {"running": 0, "peak": 0, "operations": 0, "compared": 0, "foreign": 0}
_strength_lock = threading.Lock()

def _b64(raw: bytes) -> str:
    """Base64 without padding, as the PHC string format (and argon2-cffi) writes salt and hash."""
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    """The bytes of a PHC base64 field, or None unless it is the one canonical spelling of them
    (what :func:`_b64` writes back): anything else is left to argon2-cffi to judge."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if _b64(raw) == text else None


# argon2id v=19 with one lane and a 16-byte salt: the form libsodium computes. Decimal numbers as
# argon2 writes them (no sign, no leading zero), bounded so a stored string cannot ask for absurd work.
_SODIUM_FORM = re.compile(r"^\$argon2id\$v=19\$m=([1-9][0-9]{0,7}),t=([1-9][0-9]?),p=1\$([A-Za-z0-9+/]{22})\$([A-Za-z0-9+/]{22,1366})\Z")
_SODIUM_MEMORY_KIB = (8, 4 * 1024 * 1024)


def _sodium_computes(memory_kib: int, time_cost: int, salt_len: int, hash_len: int) -> bool:
    """Whether libsodium computes an argon2id (v=19, one lane) with these parameters: a 16-byte salt (the
    only length its API takes), and bounds that keep a stored string from asking for absurd work."""
    return (salt_len == 16 and _SODIUM_MEMORY_KIB[0] <= memory_kib <= _SODIUM_MEMORY_KIB[1]
            and 1 <= time_cost <= 99 and 16 <= hash_len <= 1024)


def _sodium_argon2id(secret: bytes, salt: bytes, time_cost: int, memory_kib: int, length: int) -> bytes:
    """argon2id v=19, one lane, computed by libsodium (PyNaCl's bundled build, which picks the AVX2 or
    AVX-512 code for the CPU at run time). Runs without the GIL, like argon2-cffi's."""
    from nacl import bindings

    return bindings.crypto_pwhash_alg(length, secret, salt, time_cost, memory_kib * 1024,
                                      bindings.crypto_pwhash_ALG_ARGON2ID13)


class Argon2idHasher(PasswordHasher):
    """argon2-cffi's ``PasswordHasher``, with the same parameters, PHC strings, results and errors,
    whose argon2id is computed by libsodium whenever libsodium computes that form (argon2id v=19,
    p = 1, a 16-byte salt, which is every hash this service writes): the same bytes (compared in
    tests/test_passwords.py) in a little over half the time (bench/RESULTS.md). Every other hash (an
    imported one with p > 1, another salt length, a non-canonical spelling) is argon2-cffi's, as before.

    The algorithm, its parameters (security-baseline §8) and the stored strings are unchanged: only the
    implementation computing them is faster, which an attacker's already is."""

    def _sodium(self, password: str | bytes, salt: bytes, time_cost: int, memory_kib: int, length: int,
                error: type[Exception]) -> bytes:
        """libsodium's argon2id of the password encoded as argon2-cffi encodes it; a failure of libsodium's
        (e.g. the block could not be allocated) is raised as argon2-cffi's ``error`` for the same case."""
        from nacl.exceptions import CryptoError

        secret = password if isinstance(password, bytes) else password.encode(self.encoding)
        try:
            return _sodium_argon2id(secret, salt, time_cost, memory_kib, length)
        except CryptoError as exc:
            raise error(str(exc)) from None

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        salt = os.urandom(self.salt_len) if salt is None else salt
        if (self.type is not Type.ID or self.parallelism != 1
                or not _sodium_computes(self.memory_cost, self.time_cost, len(salt), self.hash_len)):
            return super().hash(password, salt=salt)
        raw = self._sodium(password, salt, self.time_cost, self.memory_cost, self.hash_len, HashingError)
        return f"$argon2id$v=19$m={self.memory_cost},t={self.time_cost},p=1${_b64(salt)}${_b64(raw)}"

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        form = _SODIUM_FORM.match(hash) if isinstance(hash, str) else None
        salt, expected = (_unb64(form.group(3)), _unb64(form.group(4))) if form else (None, None)
        if salt is None or expected is None:
            return super().verify(hash, password)
        memory, time_cost = int(form.group(1)), int(form.group(2))
        if not _sodium_computes(memory, time_cost, len(salt), len(expected)):
            return super().verify(hash, password)
        computed = self._sodium(password, salt, time_cost, memory, len(expected), VerificationError)
        if not hmac.compare_digest(computed, expected):
            raise VerifyMismatchError("The password does not match the supplied hash")
        return True


_hasher = Argon2idHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)
_dummy_hash: str | None = None


_dummy_lock = threading.Lock()


def _dummy() -> str:
    """Made on first use, not at import (it costs one argon2 hash: cold start); once, however many
    requests reach a new instance at the same moment (each used to make its own)."""
    global _dummy_hash
    if _dummy_hash is None:
        with _dummy_lock:
            if _dummy_hash is None:
                _dummy_hash = hash_password("dummy password for unknown users - never matches")
    return _dummy_hash


def _normalize(password: str) -> str:
    """NFKC, so the same password typed on different keyboards matches (NIST §3.1.1.2)."""
    return unicodedata.normalize("NFKC", password)


class _Slot:
    """Hashing slots (a queue, not an error, for normal bursts): ARGON2_CONCURRENCY
    in all, one per 19 MiB argon2 block. Our own hashes and bcrypt/PBKDF2 take
    one; an imported argon2id hash with more memory takes one per 19 MiB
    started (at most all). Waiters are served in arrival order, so a heavy
    hash is not starved by a stream of light ones."""

    def __init__(self, weight: int = 1) -> None:
        self.weight = max(1, min(int(weight), ARGON2_CONCURRENCY))

    def __enter__(self):
        global _slots_in_use
        ticket = object()
        deadline = time.monotonic() + ARGON2_QUEUE_SECONDS
        with _slot_cond:
            _slot_queue.append(ticket)
            try:
                while _slot_queue[0] is not ticket or _slots_in_use + self.weight > ARGON2_CONCURRENCY:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        from shared.protocol.errors import ServiceUnavailable

                        raise ServiceUnavailable("Too many sign-ins at once. Retry shortly.", retry_after=2)
                    _slot_cond.wait(remaining)
            finally:
                _slot_queue.remove(ticket)
                _slot_cond.notify_all()   # the next in line may fit now
            _slots_in_use += self.weight
        with _stats_lock:
            _stats["running"] += self.weight
            _stats["operations"] += 1
            _stats["peak"] = max(_stats["peak"], _stats["running"])
        return self

    def __exit__(self, *exc):
        global _slots_in_use
        with _stats_lock:
            _stats["running"] -= self.weight
        with _slot_cond:
            _slots_in_use -= self.weight
            _slot_cond.notify_all()


def argon2_operations() -> int:
    """Hashes and verifications done by this process, in hashing slots: argon2, and
    the bcrypt/PBKDF2 verifications of imported hashes (for tests and the benchmark)."""
    return _stats["operations"]


def foreign_verifications() -> int:
    """Verifications against an imported bcrypt or PBKDF2 hash (for tests)."""
    return _stats["foreign"]


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
    """True when the password matches the stored hash (ours or an imported one).
    Always does one verification in hashing slots: against the stored hash,
    or, without one (or with one in no known format), one argon2id
    verification against a dummy hash with our parameters."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    kind = hash_kind(stored_hash) if stored_hash else None
    if stored_hash:
        with _stats_lock:
            _stats["compared"] += 1
    if kind in ("bcrypt", "pbkdf2_sha256"):
        return _verify_foreign(kind, stored_hash, password)
    target = stored_hash if kind == "argon2" else _dummy()
    try:
        with _Slot(_argon2_weight(target)):
            ok = _hasher.verify(target, _normalize(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return bool(ok) and kind == "argon2"


def dummy_verify(password: str) -> None:
    verify_password(None, password[:MAX_PASSWORD_CHARS])


def needs_rehash(stored_hash: str) -> bool:
    """True for an imported hash (bcrypt, PBKDF2, argon2id with other
    parameters): the first successful sign-in stores our argon2id instead."""
    if hash_kind(stored_hash) != "argon2":
        return True
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


# ------------------------------------------------------------------ imported hashes

_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_PBKDF2_RE = re.compile(r"^pbkdf2_sha256\$(\d{1,9})\$([!-#%-~]{1,128})\$([A-Za-z0-9+/]{43}=)$")


def hash_kind(stored_hash: str | None) -> str | None:
    """``"argon2"``, ``"bcrypt"``, ``"pbkdf2_sha256"`` or None (not a hash this service verifies)."""
    if not stored_hash or not isinstance(stored_hash, str):
        return None
    if stored_hash.startswith("$argon2id$"):
        return "argon2"
    if _BCRYPT_RE.match(stored_hash):
        return "bcrypt"
    if _PBKDF2_RE.match(stored_hash):
        return "pbkdf2_sha256"
    return None


class UnsupportedHash(ValueError):
    """An imported hash this service will not store. The message never contains the hash."""


def check_importable(stored_hash: object) -> str:
    """The kind of an importable hash, or :class:`UnsupportedHash` (whose
    message names the rule, never the hash). The bounds keep one sign-in
    attempt's work in proportion: argon2id up to 76 MiB (four slots), t <= 10,
    p <= 8; bcrypt cost 4-13; PBKDF2-SHA256 1,000-2,000,000 iterations."""
    kind = hash_kind(stored_hash if isinstance(stored_hash, str) else None)
    if kind is None:
        raise UnsupportedHash("not a supported hash: argon2id ($argon2id$...), bcrypt ($2a$/$2b$/$2y$) or "
                              "Django's pbkdf2_sha256$iterations$salt$hash")
    if kind == "argon2":
        from argon2 import extract_parameters

        try:
            params = extract_parameters(stored_hash)
        except (InvalidHashError, ValueError):
            raise UnsupportedHash("argon2id hash that cannot be parsed") from None
        if params.version != 19:
            raise UnsupportedHash("argon2id: only version 19 (v=19)")
        if not (8 <= params.memory_cost <= IMPORT_ARGON2_MAX_KIB and 1 <= params.time_cost <= IMPORT_ARGON2_MAX_TIME
                and 1 <= params.parallelism <= IMPORT_ARGON2_MAX_PARALLELISM):
            raise UnsupportedHash(f"argon2id parameters out of bounds (m <= {IMPORT_ARGON2_MAX_KIB} KiB, "
                                  f"t <= {IMPORT_ARGON2_MAX_TIME}, p <= {IMPORT_ARGON2_MAX_PARALLELISM})")
        if params.salt_len < 8 or params.hash_len < 16:
            raise UnsupportedHash("argon2id: salt of 8 bytes and hash of 16 bytes at least")
    elif kind == "bcrypt":
        cost = int(_BCRYPT_RE.match(stored_hash).group(1))
        if not IMPORT_BCRYPT_COST[0] <= cost <= IMPORT_BCRYPT_COST[1]:
            raise UnsupportedHash(f"bcrypt cost {cost} out of bounds ({IMPORT_BCRYPT_COST[0]}-{IMPORT_BCRYPT_COST[1]})")
    else:
        iterations = int(_PBKDF2_RE.match(stored_hash).group(1))
        if not IMPORT_PBKDF2_ITERATIONS[0] <= iterations <= IMPORT_PBKDF2_ITERATIONS[1]:
            raise UnsupportedHash(f"pbkdf2_sha256: {iterations} iterations out of bounds "
                                  f"({IMPORT_PBKDF2_ITERATIONS[0]}-{IMPORT_PBKDF2_ITERATIONS[1]})")
    return kind


def _argon2_weight(stored_hash: str) -> int:
    """Slots an argon2 verification holds: one per 19 MiB block started."""
    if stored_hash is _dummy_hash:
        return 1
    try:
        from argon2 import extract_parameters

        memory = extract_parameters(stored_hash).memory_cost
    except (InvalidHashError, ValueError):
        return 1
    return max(1, -(-memory // ARGON2_SLOT_KIB))


def _verify_foreign(kind: str, stored_hash: str, password: str) -> bool:
    """bcrypt or Django PBKDF2-SHA256, on the password as typed (the source
    system hashed it without NFKC). bcrypt only ever saw the first 72 bytes
    (that is what the source system checked too); the rehash after the first
    success keeps the whole password."""
    raw = password.encode("utf-8")
    with _Slot(1):
        with _stats_lock:
            _stats["foreign"] += 1
        if kind == "bcrypt":
            import bcrypt

            try:
                return bcrypt.checkpw(raw[:BCRYPT_MAX_BYTES], stored_hash.encode("ascii"))
            except ValueError:
                return False
        _, iterations, salt, encoded = stored_hash.split("$", 3)
        derived = hashlib.pbkdf2_hmac("sha256", raw, salt.encode("utf-8"), int(iterations))
        return hmac.compare_digest(base64.b64encode(derived).decode("ascii"), encoded)


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
