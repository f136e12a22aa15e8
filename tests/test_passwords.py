"""Password hashing: libsodium computes this service's argon2id, and nothing else changes.

``passwords.Argon2idHasher`` is argon2-cffi's PasswordHasher whose argon2id (v=19, p = 1, 16-byte
salt) is computed by libsodium (PyNaCl). These tests hold it to argon2-cffi itself: the same PHC
string for the same salt, each verifying the other's hashes, and the same verdict (True, or the same
exception class) on every mutation of a stored string; whatever libsodium does not compute goes to
argon2-cffi. The speed is measured in bench/, not here.
"""

from __future__ import annotations

import os
import random

import argon2
import pytest
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.security import passwords

OURS = dict(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID)
LIGHT = dict(time_cost=1, memory_cost=64, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID)


def outcome(fn):
    """What fn returned, or the class of the exception it raised."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the class is the outcome
        return type(exc)


def verdict(hasher, stored, password):
    """True, or the class of the exception verify raised."""
    return outcome(lambda: hasher.verify(stored, password))


@pytest.fixture
def sodium_calls(monkeypatch):
    calls: list[tuple] = []
    real = passwords._sodium_argon2id

    def spy(secret, salt, time_cost, memory_kib, length):
        calls.append((time_cost, memory_kib, length))
        return real(secret, salt, time_cost, memory_kib, length)

    monkeypatch.setattr(passwords, "_sodium_argon2id", spy)
    return calls


def test_the_service_hasher_writes_argon2_cffis_string_for_the_same_salt(sodium_calls):
    ref = argon2.PasswordHasher(**OURS)
    for password in ("correct horse battery staple", "pässwörd ünïcödé", "", "x" * 256, "密码\u00a0密码"):
        salt = os.urandom(16)
        ours = passwords._hasher.hash(password, salt=salt)
        assert ours == ref.hash(password, salt=salt)
        assert ours.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert len(sodium_calls) == 5 and set(sodium_calls) == {(2, 19456, 32)}   # all computed by libsodium


def test_each_verifies_the_others_hashes_and_refuses_a_wrong_password(sodium_calls):
    ref = argon2.PasswordHasher(**OURS)
    ours_hash, ref_hash = passwords.hash_password("Correct-Horse-9"), ref.hash("Correct-Horse-9")
    assert ref.verify(ours_hash, "Correct-Horse-9") and passwords.verify_password(ref_hash, "Correct-Horse-9")
    assert passwords.verify_password(ours_hash, "Correct-Horse-9")
    assert not passwords.verify_password(ours_hash, "Correct-Horse-8")
    with pytest.raises(VerifyMismatchError):
        passwords._hasher.verify(ref_hash, "correct-Horse-9")
    assert not passwords.needs_rehash(ours_hash)
    assert len(sodium_calls) == 5      # one hash, three verifications and the mismatch: none went to argon2-cffi


def test_other_parameters_of_the_same_form_are_libsodiums_and_equal(sodium_calls):
    """An imported argon2id with one lane and a 16-byte salt but other m, t or hash length: libsodium
    computes it, with argon2-cffi's result."""
    for params in (dict(LIGHT, memory_cost=8, hash_len=16), dict(LIGHT, memory_cost=1024, time_cost=3, hash_len=64),
                   dict(LIGHT, memory_cost=4096, time_cost=2, hash_len=17)):
        salt = os.urandom(16)
        ref = argon2.PasswordHasher(**params).hash("imported password", salt=salt)
        assert passwords.Argon2idHasher(**params).hash("imported password", salt=salt) == ref, params
        assert passwords._hasher.verify(ref, "imported password") is True, params
        assert verdict(passwords._hasher, ref, "imported passwort") is VerifyMismatchError, params
    assert len(sodium_calls) == 9


def test_what_libsodium_does_not_compute_is_argon2_cffis(sodium_calls):
    """An imported argon2id with several lanes or another salt length verifies exactly as before."""
    for params in (dict(LIGHT, parallelism=4), dict(LIGHT, salt_len=8), dict(LIGHT, hash_len=64, salt_len=32),
                   dict(LIGHT, type=argon2.Type.I)):
        stored = argon2.PasswordHasher(**params).hash("imported password")
        assert passwords._hasher.verify(stored, "imported password") is True, params
        assert verdict(passwords._hasher, stored, "wrong") in (VerifyMismatchError, VerificationError), params
    assert sodium_calls == []


def test_every_mutation_of_a_stored_hash_gets_argon2_cffis_verdict():
    """Differential: 600 single-character edits (and a few hand-made spellings) of a stored string,
    judged by this service's hasher and by argon2-cffi's; the verdicts are equal, a mutated hash never
    matches, and nothing but argon2-cffi's own exception classes comes out."""
    rng = random.Random(20261130)
    ours, ref = passwords.Argon2idHasher(**LIGHT), argon2.PasswordHasher(**LIGHT)
    password = "a password"
    stored = ours.hash(password)
    assert stored == ref.hash(password, salt=passwords._unb64(stored.split("$")[4]))
    alphabet = "$=,+/0123456789abcdefmptvAZaz \n-"
    salt_b64, hash_b64 = stored.split("$")[4:6]
    variants = {stored, stored + "=", stored + "\n", stored.replace("m=64", "m=064"), stored.replace("t=1", "t=01"),
                stored.replace("p=1", "p=01"), stored.replace("v=19", "v=16"), stored.replace("$v=19", ""),
                stored.replace("argon2id", "argon2i"), stored.replace("m=64,t=1", "t=1,m=64"), stored[:-1],
                stored.replace(salt_b64, salt_b64 + "=="), stored.replace(hash_b64, hash_b64 + "A"),
                stored.replace(hash_b64, hash_b64[:-1] + ("B" if hash_b64[-1] != "B" else "C")),   # other trailing bits
                stored.replace(hash_b64, hash_b64[:20]), stored.replace("m=64", "m=7"), stored.replace("t=1", "t=0")}
    while len(variants) < 600:
        i = rng.randrange(len(stored))
        variants.add(stored[:i] + rng.choice(alphabet) + stored[i + 1:])
    matched = 0
    for variant in variants:
        a, b = verdict(ours, variant, password), verdict(ref, variant, password)
        assert a == b, (variant, a, b)
        assert a is True or a in (VerifyMismatchError, VerificationError, InvalidHashError), (variant, a)
        matched += a is True
    # the original, and spellings that argon2 itself reads as the same hash (e.g. a changed bit past the hash's end)
    assert 1 <= matched <= 20, matched


def test_a_mutated_hash_never_matches_on_the_libsodium_path(sodium_calls):
    """Each character of the salt and of the hash, changed: libsodium computes every one of them and none matches."""
    stored = passwords.Argon2idHasher(**LIGHT).hash("pw")
    head, salt_b64, hash_b64 = stored.rsplit("$", 2)
    for field, make in ((salt_b64, lambda v: f"{head}${v}${hash_b64}"), (hash_b64, lambda v: f"{head}${salt_b64}${v}")):
        for i in range(len(field) - 1):       # the last character also holds padding bits
            changed = field[:i] + ("A" if field[i] != "A" else "B") + field[i + 1:]
            assert verdict(passwords.Argon2idHasher(**LIGHT), make(changed), "pw") is VerifyMismatchError
    assert len(sodium_calls) == 1 + 21 + 42


def test_unknown_names_cost_one_libsodium_verification_with_our_parameters(sodium_calls):
    """The dummy verification (no such user, no password) goes the same way as a real one (A116's premise)."""
    passwords._dummy()
    sodium_calls.clear()
    assert passwords.verify_password(None, "anything") is False
    assert passwords.verify_password("not a hash", "anything") is False
    assert sodium_calls == [(2, 19456, 32), (2, 19456, 32)]


def test_a_password_that_is_neither_text_nor_bytes_is_refused_as_argon2_cffi_refuses_it():
    stored = passwords.Argon2idHasher(**LIGHT).hash("pw")
    ref = argon2.PasswordHasher(**LIGHT)
    for odd in (5, bytearray(b"pw"), memoryview(b"pw"), None, [112, 119]):
        assert verdict(passwords.Argon2idHasher(**LIGHT), stored, odd) == verdict(ref, stored, odd), odd
        assert outcome(lambda: passwords.Argon2idHasher(**LIGHT).hash(odd)) == outcome(lambda: ref.hash(odd)) \
            == AttributeError, odd


def test_a_block_that_cannot_be_allocated_fails_as_argon2_cffi_fails():
    """With the address space capped so the 19 MiB block cannot be mapped, libsodium's failure comes out
    as argon2-cffi's (VerificationError, HashingError): a verification is a wrong password, not a 500."""
    import subprocess
    import sys
    import textwrap

    from conftest import ROOT

    script = textwrap.dedent('''
        import resource, argon2
        from nacl import bindings
        from shared.security import passwords as P
        stored = P.hash_password("correct horse battery")
        P._dummy()
        ref = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)
        size = int(open("/proc/self/statm").read().split()[0]) * 4096
        resource.setrlimit(resource.RLIMIT_AS, (size + 8 * 2**20, resource.RLIM_INFINITY))
        def outcome(fn):
            try:
                return repr(fn())
            except Exception as exc:
                return type(exc).__name__
        print(outcome(lambda: ref.verify(stored, "correct horse battery")),
              outcome(lambda: P._hasher.verify(stored, "correct horse battery")),
              outcome(lambda: P.verify_password(stored, "correct horse battery")),
              outcome(lambda: P.verify_password(None, "x")),
              outcome(lambda: ref.hash("x")), outcome(lambda: P.hash_password("x")))
    ''')
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["VerificationError", "VerificationError", "False", "False", "HashingError",
                                  "HashingError"], run.stdout


def test_the_dummy_hash_is_made_once_by_parallel_first_requests(monkeypatch):
    """A new instance's first requests for unknown names, all at once: one dummy hash is made, and every
    verification checks against that one."""
    import threading

    monkeypatch.setattr(passwords, "_dummy_hash", None)
    made: list[int] = []
    real = passwords.hash_password

    def counting(password):
        made.append(1)
        return real(password)

    monkeypatch.setattr(passwords, "hash_password", counting)
    start = threading.Barrier(8)

    def first_request():
        start.wait()
        return passwords.verify_password(None, "a guess")

    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(first_request())) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == [False] * 8 and len(made) == 1, (results, made)
