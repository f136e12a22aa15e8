"""Password submit (just-in-time migration): the JWE is opened with jwcrypto, the
password is checked against the legacy store, the nonce is echoed, and the
password never reaches a log."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest

from ext_sample_testkit import (  # noqa: F401  (fixtures)
    OTHER_PASSWORD_KEY, PASSWORD_KEY, PASSWORDS, SAMPLE, Client, client, issuer, jwe_by_hand,
    jwe_by_jwcrypto, password_claims, password_context, password_submit, sample_files, sample_host, serve,
    settings_for, unsigned_jwt,
)

DATA = "microsoft.graph.onPasswordSubmitResponseData"


def _submit(client, username: str, password: str, nonce: str | None = None, **kwargs):
    nonce = nonce or str(uuid.uuid4())
    return nonce, client.post("password-submit", password_submit(password_context(username, password, nonce, **kwargs)))


def _answer(response, nonce: str) -> dict:
    assert response.status == 200, response
    body = response.json()
    assert body["data"]["@odata.type"] == DATA
    assert body["data"]["nonce"] == nonce
    (action,) = body["data"]["actions"]
    return action


@pytest.mark.parametrize("username", ["ada@example.com", "ADA@example.com ", "grace@example.com",
                                      "Grace@Example.COM"])
def test_the_right_legacy_password_migrates(client, username):
    nonce, r = _submit(client, username, PASSWORDS[username.strip().lower()])
    assert r.json() == {"data": {"@odata.type": DATA,
                                 "actions": [{"@odata.type": "microsoft.graph.passwordSubmit.MigratePassword"}],
                                 "nonce": nonce}}


@pytest.mark.parametrize("username, password", [
    ("django@example.com", "letmein"),                    # Django's published pbkdf2_sha256 vector
    ("vector@example.com", "correctbatteryhorsestapler"),  # a published bcrypt vector
])
def test_published_hash_vectors_migrate(client, username, password):
    nonce, r = _submit(client, username, password)
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.MigratePassword"}
    nonce, r = _submit(client, username, password + "z")
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.Retry"}


@pytest.mark.parametrize("username", ["ada@example.com", "grace@example.com", "linus@example.com"])
def test_a_wrong_password_is_retry(client, username):
    nonce, r = _submit(client, username, PASSWORDS[username] + " ")
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.Retry"}


def test_an_unknown_user_is_retry(client):
    nonce, r = _submit(client, "nobody@example.com", "whatever it is")
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.Retry"}


def test_a_user_marked_for_a_password_change_is_update_password(client):
    nonce, r = _submit(client, "linus@example.com", PASSWORDS["linus@example.com"])
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.UpdatePassword"}


def test_a_blocked_user_with_the_right_password_is_blocked_with_title_and_message(client):
    nonce, r = _submit(client, "mallory@example.com", PASSWORDS["mallory@example.com"])
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.Block", "title": "Account closed",
                                 "message": "This account was closed in the old system. Contact support."}


def test_a_blocked_user_with_a_wrong_password_is_only_retry(client):
    """The block page does not tell someone without the password that the account exists and is blocked."""
    nonce, r = _submit(client, "mallory@example.com", "guess")
    assert _answer(r, nonce) == {"@odata.type": "microsoft.graph.passwordSubmit.Retry"}


def test_a_blocked_user_without_a_kept_hash_is_blocked_with_the_default_text(client):
    nonce, r = _submit(client, "eve@example.com", "anything")
    action = _answer(r, nonce)
    assert action["@odata.type"] == "microsoft.graph.passwordSubmit.Block"
    assert action["title"] == "Sign-in blocked" and "blocked" in action["message"]


def test_every_answer_echoes_its_own_nonce(client):
    nonces = [str(uuid.uuid4()) for _ in range(3)]
    for nonce, (user, pw) in zip(nonces, [("ada@example.com", PASSWORDS["ada@example.com"]),
                                          ("ada@example.com", "wrong"), ("nobody@example.com", "x")]):
        _, r = _submit(client, user, pw, nonce=nonce)
        assert r.json()["data"]["nonce"] == nonce


def test_the_username_falls_back_to_the_users_mail(client):
    nonce = str(uuid.uuid4())
    claims = password_claims(None, PASSWORDS["ada@example.com"], nonce)
    context = jwe_by_hand(unsigned_jwt(claims).encode(), PASSWORD_KEY.public_key())
    r = client.post("password-submit", password_submit(context, {"id": str(uuid.uuid4()), "mail": "ada@example.com"}))
    assert _answer(r, nonce)["@odata.type"] == "microsoft.graph.passwordSubmit.MigratePassword"


def test_a_jwe_made_by_jwcrypto_and_one_without_compression_open_too(client):
    for context in (
        jwe_by_jwcrypto(unsigned_jwt(password_claims("ada@example.com", PASSWORDS["ada@example.com"], "n-1")).encode(),
                        PASSWORD_KEY.public_key()),
        jwe_by_hand(unsigned_jwt(password_claims("ada@example.com", PASSWORDS["ada@example.com"], "n-1")).encode(),
                    PASSWORD_KEY.public_key(), compress=False),
    ):
        r = client.post("password-submit", password_submit(context))
        assert _answer(r, "n-1")["@odata.type"].endswith(".MigratePassword")


def _context(claims: dict | None = None, *, plaintext: bytes | None = None, key=None, **kwargs) -> str:
    if plaintext is None:
        plaintext = unsigned_jwt(claims).encode()
    return jwe_by_hand(plaintext, (key or PASSWORD_KEY).public_key(), **kwargs)


def _signed_inner() -> bytes:
    import jwt
    return jwt.encode(password_claims("ada@example.com", "x", "n"), "k" * 32, algorithm="HS256").encode()


@pytest.mark.parametrize("make, reason", [
    (lambda: "a.b.c.d.e", "cannot be decrypted"),
    (lambda: "not-a-jwe", "compact JWE"),
    (lambda: _context(password_claims("ada@example.com", "x", "n"), key=OTHER_PASSWORD_KEY), "cannot be decrypted"),
    (lambda: _context(password_claims("ada@example.com", "x", "n"), alg="RSA1_5"), "cannot be decrypted"),
    (lambda: _context(password_claims("ada@example.com", "x", "n", exp=int(time.time()) - 3600)), "expired"),
    (lambda: _context(password_claims("ada@example.com", "x", "n", exp=None)), "no exp"),
    (lambda: _context(password_claims("ada@example.com", "x", "n", nbf=int(time.time()) + 3600)), "not valid yet"),
    (lambda: _context(password_claims("ada@example.com", "x", "n", aud="api://someone-else")), "another audience"),
    (lambda: _context(password_claims("ada@example.com", "x", None)), "no nonce"),
    (lambda: _context(password_claims("ada@example.com", None, "n")), "no user-password"),
    (lambda: _context(plaintext=json.dumps(password_claims("ada@example.com", "x", "n")).encode()), "not an unsigned JWT"),
    (lambda: _context(plaintext=_signed_inner()), "not an unsigned JWT"),
])
def test_contexts_that_cannot_be_used_are_a_400(client, make, reason):
    r = client.post("password-submit", password_submit(make()))
    assert r.status == 400, r
    assert r.json()["error"] == "invalid_request"
    assert reason in r.json()["error_description"]


def test_a_tampered_ciphertext_is_a_400(client):
    context = password_context("ada@example.com", PASSWORDS["ada@example.com"], "n")
    parts = context.split(".")
    parts[3] = ("A" if parts[3][0] != "A" else "B") + parts[3][1:]
    assert client.post("password-submit", password_submit(".".join(parts))).status == 400


def test_an_unknown_hash_format_or_a_missing_key_file_is_a_500(client, issuer, sample_files):
    _, r = _submit(client, "ken@example.com", PASSWORDS["ken@example.com"])
    assert r.status == 500 and r.json()["error"] == "server_error"
    settings = settings_for(issuer.url, sample_files / "nokey", PASSWORD_PRIVATE_KEY_FILE=str(sample_files / "none.pem"))
    with serve.running(settings) as base_url:
        _, r = _submit(Client(base_url, issuer.url), "ada@example.com", PASSWORDS["ada@example.com"])
        assert r.status == 500


def test_a_key_made_by_make_password_key_works(issuer, sample_files, tmp_path):
    import importlib.util
    from cryptography.hazmat.primitives import serialization
    spec = importlib.util.spec_from_file_location("extensions_sample_make_key", SAMPLE / "make_password_key.py")
    make_key = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_key)
    public_jwk = make_key.make(tmp_path / "key.pem")
    assert public_jwk["kty"] == "RSA" and public_jwk["use"] == "enc"
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    public = serialization.load_pem_public_key((tmp_path / "key.pub.pem").read_bytes())
    settings = settings_for(issuer.url, sample_files / "madekey", PASSWORD_PRIVATE_KEY_FILE=str(tmp_path / "key.pem"))
    with serve.running(settings) as base_url:
        context = jwe_by_hand(unsigned_jwt(password_claims("ada@example.com", PASSWORDS["ada@example.com"], "n")).encode(),
                              public)
        r = Client(base_url, issuer.url).post("password-submit", password_submit(context))
        assert _answer(r, "n")["@odata.type"].endswith(".MigratePassword")


# ------------------------------------------------------------------ hashes, directly

def _passwords_module():
    import sys
    if str(SAMPLE) not in sys.path:
        sys.path.insert(0, str(SAMPLE))
    from extsample import passwords
    return passwords


def test_bcrypt_passwords_longer_than_72_bytes_compare_like_classic_bcrypt():
    import bcrypt
    passwords = _passwords_module()
    long_password = "ü" * 40  # 80 bytes
    legacy = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(4)).decode()
    assert passwords.verify_password(long_password, legacy)
    assert passwords.verify_password(long_password[:36] + "xx", legacy)  # same first 72 bytes, as legacy bcrypt did
    assert not passwords.verify_password(long_password[:35], legacy)


@pytest.mark.parametrize("encoded", ["md5$x$y", "pbkdf2_sha256$abc$salt$AAAA", "pbkdf2_sha256$0$salt$" + "A" * 44,
                                     "pbkdf2_sha256$99999999$salt$" + "A" * 44, "pbkdf2_sha256$1000$salt$not base64!",
                                     "$2b$04$short", ""])
def test_malformed_hashes_raise(encoded):
    passwords = _passwords_module()
    with pytest.raises(passwords.UnsupportedHash):
        passwords.verify_password("x", encoded)


def test_django_vectors_with_unicode():
    passwords = _passwords_module()
    encoded = "pbkdf2_sha256$10000$seasalt$CWWFdHOWwPnki7HvkcqN9iA2T3KLW1cf2uZ5kvArtVY="  # Django 1.5 tests, 'lètmein'
    assert passwords.verify_password("lètmein", encoded)
    assert not passwords.verify_password("lètmeinz", encoded)


# ------------------------------------------------------------------ no password in any log

def test_passwords_never_reach_a_log_or_the_console(client, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    secret = "Sup3r-secret legacy passphrase " + uuid.uuid4().hex
    for username in ("ada@example.com", "mallory@example.com", "nobody@example.com", "ken@example.com"):
        _submit(client, username, secret)
    _submit(client, "ada@example.com", PASSWORDS["ada@example.com"])
    client.post("password-submit", password_submit(_context(password_claims("ada@example.com", secret, "n",
                                                                             exp=int(time.time()) - 3600))))
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    captured = capsys.readouterr()
    assert "passwordSubmit" in text, "the sample's log was captured"
    for leaked in (secret, PASSWORDS["ada@example.com"]):
        assert leaked not in text
        assert leaked not in captured.out + captured.err
