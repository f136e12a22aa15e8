"""One-time codes: generation, keyed hashing, constant-time verification.

Codes come from ``secrets`` (an approved RBG), are stored only as
HMAC-SHA256(server key, challenge id | purpose | code) (security-baseline
§6.2) and compared with ``hmac.compare_digest`` on fixed-length digests, so
neither the stored value nor the comparison time reveals the code. Attempt
counting and single use are enforced by the flow record under ETags
(``flows.py``), not here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def generate(length: int) -> str:
    return str(secrets.randbelow(10 ** length)).zfill(length)


def digest(key: bytes, challenge_id: str, purpose: str, code: str) -> str:
    msg = f"{challenge_id}|{purpose}|{code}".encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def matches(key: bytes, challenge_id: str, purpose: str, code: str, stored: str | None) -> bool:
    # Compare digests, not the raw user input: equal length, no early exit.
    candidate = digest(key, challenge_id, purpose, code)
    return bool(stored) and hmac.compare_digest(candidate, stored)
