"""Password submit: opening ``encryptedPasswordContext`` and checking legacy hashes.

The context is a compact JWE (observed from Entra and used by the native-auth
backend: ``{"alg": "RSA-OAEP", "enc": "A128CBC-HS256", "zip": "DEF"}``) encrypted
to the extension's RSA public key. Its plaintext is an unsigned JWT
(``{"alg": "none"}``, empty signature) with the claims ``user-password``,
``username``, ``nonce``, ``iss``, ``aud``, ``iat``, ``nbf``, ``exp``. Decryption
is jwcrypto's (the backend encrypts with ``cryptography`` by hand, so the two
implementations check each other).

Legacy hashes: Django's ``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`` and
bcrypt ``$2a$`` / ``$2b$`` / ``$2y$``. Nothing here logs or returns a password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable

import bcrypt
from jwcrypto import jwe, jwk

# Key-management and content-encryption algorithms accepted in the JWE header
# (RSA1_5 and the symmetric/password-based ones are not).
ALLOWED_JWE_ALGS = ["RSA-OAEP", "RSA-OAEP-256",
                    "A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512", "A128GCM", "A192GCM", "A256GCM"]
LEEWAY_SECONDS = 60
MAX_PBKDF2_ITERATIONS = 10_000_000
BCRYPT_MAX_BYTES = 72


class InvalidPasswordContext(Exception):
    """encryptedPasswordContext cannot be opened or its claims are not acceptable."""


class UnsupportedHash(Exception):
    """A legacy user's stored hash is in no format this sample knows (a data problem)."""


def load_private_key(pem: bytes) -> jwk.JWK:
    try:
        key = jwk.JWK.from_pem(pem)
    except Exception:  # noqa: BLE001 - jwcrypto/cryptography raise several types
        raise ValueError("not a PEM private key (unencrypted PKCS#1 or PKCS#8)") from None
    if key.get("kty") != "RSA" or not key.has_private:
        raise ValueError("not an RSA private key")
    return key


def _b64url_json(part: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidPasswordContext("the inner JWT is not base64url JSON") from None
    if not isinstance(value, dict):
        raise InvalidPasswordContext("the inner JWT is not a JSON object")
    return value


def open_password_context(compact: str, key: jwk.JWK, *, audiences: Iterable[str],
                          now: float | None = None) -> dict:
    """The claims of the unsigned JWT inside the JWE, after checking exp/nbf/aud."""
    token = jwe.JWE(algs=ALLOWED_JWE_ALGS)
    try:
        token.deserialize(compact, key=key)
        plaintext = token.payload
    except Exception:  # noqa: BLE001 - wrong key, tampering, bad format, disallowed alg
        raise InvalidPasswordContext("encryptedPasswordContext cannot be decrypted with the configured key") from None
    try:
        text = plaintext.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidPasswordContext("the decrypted context is not a JWT") from None
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[2]:
        raise InvalidPasswordContext("the decrypted context is not an unsigned JWT")
    header, claims = _b64url_json(parts[0]), _b64url_json(parts[1])
    if str(header.get("alg", "")).lower() != "none":
        raise InvalidPasswordContext("the inner JWT must be unsigned (alg none)")

    now = time.time() if now is None else now
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise InvalidPasswordContext("the inner JWT has no exp")
    if now > exp + LEEWAY_SECONDS:
        raise InvalidPasswordContext("the password context has expired")
    if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and now + LEEWAY_SECONDS < nbf:
        raise InvalidPasswordContext("the password context is not valid yet")
    if "aud" in claims:
        aud = claims["aud"]
        given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(a for a in given if isinstance(a, str)) & set(audiences):
            raise InvalidPasswordContext("the password context is for another audience")
    return claims


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a legacy hash. Raises UnsupportedHash for unknown formats."""
    secret = password.encode("utf-8")
    if encoded.startswith("pbkdf2_sha256$"):
        return _verify_pbkdf2_sha256(secret, encoded)
    if encoded.startswith(("$2a$", "$2b$", "$2y$")):
        # Classic bcrypt implementations silently used only the first 72 bytes, and
        # the legacy hashes were made that way; bcrypt 5 refuses longer input.
        try:
            return bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], encoded.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise UnsupportedHash("a malformed bcrypt hash") from None
    raise UnsupportedHash("an unknown hash format (expected pbkdf2_sha256$... or $2b$...)")


def _verify_pbkdf2_sha256(secret: bytes, encoded: str) -> bool:
    try:
        _, iterations_text, salt, digest_b64 = encoded.split("$", 3)
        iterations = int(iterations_text)
        expected = base64.b64decode(digest_b64, validate=True)
    except (ValueError, binascii.Error):
        raise UnsupportedHash("a malformed pbkdf2_sha256 hash") from None
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS or not 16 <= len(expected) <= 64 or "$" in salt:
        raise UnsupportedHash("a pbkdf2_sha256 hash with out-of-range parameters")
    actual = hashlib.pbkdf2_hmac("sha256", secret, salt.encode("utf-8"), iterations, dklen=len(expected))
    return hmac.compare_digest(actual, expected)
