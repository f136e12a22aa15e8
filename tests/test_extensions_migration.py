"""Just-in-time password migration (issue 17: Entra's passwordSubmit event) and
``python -m admin users import``, against the real app (devhost + Azurite) and
the sample extension app (samples/extensions, started by its serve.py) as the
real legacy system: it decrypts our JWE with jwcrypto and checks passwords
against a legacy-users JSON with PBKDF2/bcrypt hashes.

The sample keeps no call log, so its devhost's ``handle`` is wrapped here (in
the test, nothing added to the sample): every password-submit call is
counted, with the user's failure counter as stored at the moment of the call.

Attack rows A85 onward (SECURITY.md §7) are the ``test_A8x``/``test_A9x`` tests.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
from pathlib import Path

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import LOG_TEXT, _QUIET  # noqa: F401

import argon2
import bcrypt

from shared.extensions import caller as ext_caller, config as ext_config
from shared.security import passwords

from conftest import ROOT, Api

MIG_CLIENT = "5a5a5a5a-0000-4000-8000-00000000a017"
AUDIENCE = "api://localhost/extensions"
OUR_ARGON2 = "$argon2id$v=19$m=19456,t=2,p=1$"

_spec = importlib.util.spec_from_file_location("extensions_sample_serve", ROOT / "samples/extensions/serve.py")
serve = sys.modules.get("extensions_sample_serve")
if serve is None:
    serve = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(serve)
    sys.modules["extensions_sample_serve"] = serve


def django_pbkdf2(password: str, iterations: int = 20000) -> str:
    salt = secrets.token_urlsafe(16).replace("-", "a").replace("_", "b")[:22]
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def legacy_password(tag: str = "") -> str:
    """A password that passes this service's policy (length, banned list, strength)."""
    return f"velvet {secrets.token_hex(3)} orbit {tag} lantern quiz".replace("  ", " ")


# ====================================================================== the legacy system (the sample app)

class Legacy:
    """The sample extension app on a free port, with its legacy-users file and
    a count of its password-submit calls."""

    def __init__(self, server, tmp: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_file = tmp / "password-key.pem"
        self.private_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        self.public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.users_file = tmp / "legacy-users.json"
        self.users: dict[str, object] = {}
        self._write()
        self.server = server
        self.calls: list[dict] = []
        self.jwes: list[str] = []
        self._lock = threading.Lock()
        self.host = serve.start_host({
            "EXTENSION_ISSUER": server.settings.issuer, "EXTENSION_AUDIENCE": AUDIENCE,
            "PASSWORD_PRIVATE_KEY_FILE": str(self.private_file), "LEGACY_USERS": str(self.users_file)})
        self.url = f"{self.host.base_url}/password-submit"
        inner = self.host.handle

        def counting(method, url, path, query, headers, body):
            if path.endswith("/password-submit"):
                record: dict = {}
                try:
                    data = json.loads(body)["data"]
                    record["mail"] = data["authenticationContext"]["user"]["mail"]
                    self.jwes.append(data["encryptedPasswordContext"])
                except (ValueError, KeyError, TypeError):
                    pass
                if record.get("mail"):
                    user = directory.get_user(server.storage, record["mail"])
                    record["failed_logins"] = int(user.entity.get("failed_logins") or 0) if user else None
                with self._lock:
                    self.calls.append(record)
            return inner(method, url, path, query, headers, body)

        self.host.handle = counting

    def _write(self) -> None:
        self.users_file.write_text(json.dumps(self.users))
        stamp = time.time_ns()
        os.utime(self.users_file, ns=(stamp, stamp))   # the sample re-reads on (mtime, size)

    def add(self, email: str, entry) -> None:
        self.users[email] = entry
        self._write()

    def calls_for(self, email: str) -> list[dict]:
        with self._lock:
            return [c for c in self.calls if c.get("mail") == email]

    def stop(self) -> None:
        self.host.stop()


@pytest.fixture(scope="module")
def legacy(server, tmp_path_factory):
    directory.register_client(server.storage, MIG_CLIENT, "Migration tests")
    system = Legacy(server, tmp_path_factory.mktemp("legacy"))
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture
def mig_api(server) -> RecordingApi:
    return RecordingApi(Api(server.host.base_url, client_id=MIG_CLIENT))


@pytest.fixture
def extension(server, legacy):
    """extension(**changes): the passwordSubmit extension of MIG_CLIENT pointing at the
    sample (saved through shared.extensions.config.save), removed afterwards."""
    from shared.flows import signin

    names: list[str] = []
    ext_caller.reset_breakers()
    signin._latencies.clear()

    def add(**changes):
        raw = {"name": f"legacy-{secrets.token_hex(4)}", "event": "passwordSubmit", "url": legacy.url,
               "resource": AUDIENCE, "clients": [MIG_CLIENT], "timeout_ms": 2000, "max_retries": 1,
               "on_error": "fail", "encryption_key": legacy.public_pem, "encryption_kid": "legacy-key-1", **changes}
        for name in names:
            ext_config.delete(server.storage, name)
        names.clear()
        saved = ext_config.save(server.storage, server.settings, raw)
        names.append(saved["name"])
        return saved

    try:
        yield add
    finally:
        for name in names:
            ext_config.delete(server.storage, name)
        ext_config.clear_cache()
        ext_caller.reset_breakers()
        signin._latencies.clear()


def migrating_user(server, legacy, password: str | None = None, *, entry=None, iterations: int = 20000,
                   prefix: str = "mig") -> tuple[str, str]:
    """An imported user with the migration marker, and its record in the legacy store."""
    email = unique_email(prefix)
    password = password or legacy_password()
    directory.create_user(server.storage, email, migrate_password=True, display_name="Legacy Person")
    legacy.add(email, entry if entry is not None else django_pbkdf2(password, iterations))
    return email, password


def sign_in(api, email: str, password: str):
    return password_first_factor(api, email, password, caps=None)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/password-submit"


# ====================================================================== migration

def test_migration_then_normal_sign_in_without_the_extension(server, legacy, extension, mig_api):
    ext = extension()
    email, password = migrating_user(server, legacy)
    i = mig_api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect")
    c = mig_api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                     challenge_type="password oob redirect")
    assert c.status == 200 and c["challenge_type"] == "password", c.body    # offered like a password user
    r = mig_api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                     password=password, scope=SCOPE, client_info="1")
    assert r.status == 200 and r["access_token"] and r["refresh_token"], r.body
    assert "pwd" in claims_of(r["id_token"])["amr"]
    assert len(legacy.calls_for(email)) == 1
    stored = user_entity(server, email)
    assert stored["password_hash"].startswith(OUR_ARGON2)
    assert stored[directory.MIGRATE_FIELD] is False and int(stored["failed_logins"]) == 0
    assert passwords.verify_password(stored["password_hash"], password)

    # Migrated: judged here from now on, the legacy system is never asked again.
    assert sign_in(mig_api, email, password).status == 200
    assert sign_in(mig_api, email, "not the password at all").status == 400
    ext_config.delete(server.storage, ext["name"])
    assert sign_in(mig_api, email, password).status == 200
    assert len(legacy.calls_for(email)) == 1


def test_a_migrated_password_below_the_policy_must_be_reset(server, legacy, extension, mig_api, outbox):
    """Entra: "If password is weak, triggers UpdatePassword flow": the legacy
    system said MigratePassword, but the password fails this service's policy."""
    extension()
    email, password = migrating_user(server, legacy, "short1234")
    r = sign_in(mig_api, email, password)
    assert r.status == 400 and r["error"] == "invalid_request" and r["error_codes"] == [50142], r.body
    stored = user_entity(server, email)
    assert stored[directory.MIGRATE_FIELD] is True and not stored["password_hash"]
    assert int(stored["failed_logins"]) == 0          # a right password is not a failure


def test_update_password_then_reset_clears_the_marker(server, legacy, extension, mig_api, outbox):
    extension()
    email, password = migrating_user(server, legacy, entry=None)
    legacy.add(email, {"hash": django_pbkdf2(password), "updatePassword": True})
    r = sign_in(mig_api, email, password)
    assert r.status == 400 and r["error"] == "invalid_request" and r["error_codes"] == [50142], r.body
    assert_no_tokens(r)
    assert user_entity(server, email)[directory.MIGRATE_FIELD] is True
    # The normal reset flow (a migrating user is a password user to it): code, new password, sign-in.
    ct = reset_to_token(mig_api, outbox, email, NEW_PW)
    done = mig_api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", scope=SCOPE,
                        client_info="1")
    assert done.status == 200, done.body
    stored = user_entity(server, email)
    assert stored[directory.MIGRATE_FIELD] is False and stored["password_hash"].startswith(OUR_ARGON2)
    calls = len(legacy.calls_for(email))
    assert sign_in(mig_api, email, NEW_PW).status == 200
    assert sign_in(mig_api, email, password).status == 400          # the legacy password is gone
    assert len(legacy.calls_for(email)) == calls                    # no legacy call after the reset


def test_block_answers_the_extensions_message(server, legacy, extension, mig_api):
    extension()
    email, password = migrating_user(server, legacy)
    legacy.add(email, {"hash": django_pbkdf2(password), "blocked": True, "title": "Sign-in blocked",
                       "message": "This account was closed. Please contact support."})
    r = sign_in(mig_api, email, password)
    assert r.status == 400 and r["error"] == "access_denied" and r["error_codes"] == [1003023], r.body
    assert "This account was closed. Please contact support." in r["error_description"]
    assert_no_tokens(r)
    assert user_entity(server, email)[directory.MIGRATE_FIELD] is True
    oid = directory.get_user(server.storage, email).oid
    rows = server.storage.table("signinlog").query("PartitionKey ge @d and user_oid eq @o",   # today, or across midnight
                                                   {"d": time.strftime("%Y%m%d", time.gmtime(time.time() - 3600)),
                                                    "o": oid})
    assert [(row["result"], row["reason"]) for row in rows] == [("failure", "1003023")], rows
    # The sample answers Retry to a wrong password of a blocked user: the block page needs the password.
    assert sign_in(mig_api, email, "a wrong password for this one")["error_codes"] == [BAD_CREDENTIALS]


def test_no_extension_means_a_migrating_password_is_wrong(server, legacy, mig_api):
    email, password = migrating_user(server, legacy)
    r = sign_in(mig_api, email, password)
    assert r.status == 400 and r["error_codes"] == [BAD_CREDENTIALS]
    assert shape(r) == shape(sign_in(mig_api, unique_email("ghost"), password))
    assert user_entity(server, email)[directory.MIGRATE_FIELD] is True
    assert int(user_entity(server, email)["failed_logins"]) == 1
    assert legacy.calls_for(email) == []


def test_extension_down_fail_is_503_and_continue_is_a_wrong_password(server, legacy, extension, mig_api):
    extension(url=closed_port_url(), on_error="fail", timeout_ms=500)
    email, password = migrating_user(server, legacy)
    r = sign_in(mig_api, email, password)
    assert r.status == 503 and r["error"] == "temporarily_unavailable" and r["error_codes"] == [1003027], r.body
    assert r.headers.get("retry-after")
    assert_no_tokens(r)
    stored = user_entity(server, email)
    assert stored[directory.MIGRATE_FIELD] is True and int(stored["failed_logins"]) == 1   # counted before the call

    extension(url=closed_port_url(), on_error="continue", timeout_ms=500)
    r = sign_in(mig_api, email, password)
    assert r.status == 400 and r["error_codes"] == [BAD_CREDENTIALS], r.body
    assert shape(r) == shape(sign_in(mig_api, unique_email("ghost"), password))
    # Back up: the same password migrates.
    extension()
    assert sign_in(mig_api, email, password).status == 200


# ====================================================================== attack rows

def test_A85_a_migrating_account_answers_like_an_unknown_name(server, legacy, extension, mig_api, make_user):
    """Enumeration through migration: a migrating account must answer (and work) like an unknown name and a password account."""
    extension()
    email, password = migrating_user(server, legacy)
    known, _ = make_user()
    ghost = unique_email("ghost")
    warm, _ = migrating_user(server, legacy)
    sign_in(mig_api, warm, "warm up the caches")        # the extension's config and bearer token
    answers, ops, hashes = {}, {}, {}
    for label, name in (("migrating", email), ("unknown", ghost), ("password", known)):
        i = mig_api.post("oauth2/v2.0/initiate", username=name, challenge_type="password oob redirect")
        c = mig_api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                         challenge_type="password oob redirect")
        before = passwords.argon2_operations()
        r = mig_api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                         password="wrong guess for all three", scope=SCOPE, client_info="1")
        hashes[label] = passwords.argon2_operations() - before
        ops[label] = int(r.headers["x-storage-ops"])
        answers[label] = (shape(i), shape(c), shape(r))
    assert answers["migrating"] == answers["unknown"] == answers["password"], answers
    assert answers["migrating"][2][1]["error_codes"] == [BAD_CREDENTIALS]
    assert hashes == {"migrating": 1, "unknown": 1, "password": 1}, hashes     # one hash verification each
    assert ops["migrating"] == ops["unknown"] == ops["password"], ops
    assert len(legacy.calls_for(email)) == 1


def test_A86_wrong_passwords_take_as_long_as_a_legacy_check(server, legacy, extension, mig_api, make_user):
    """Timing oracle: the legacy call's latency must not single out migrating accounts among unknown names and password accounts."""
    extension()
    with server.override(lockout_threshold=10 ** 6):
        email, _ = migrating_user(server, legacy, iterations=200000)   # about 50 ms of PBKDF2 in the sample
        known, _ = make_user()

        def token_ms(name: str) -> float:
            ct = password_challenge_ct(mig_api, name, caps=None)
            t0 = time.perf_counter()
            r = password_grant(mig_api, ct, "not the password at all")
            assert r.status == 400 and r["error_codes"] == [BAD_CREDENTIALS], r.body
            return (time.perf_counter() - t0) * 1000

        for _ in range(6):                      # the instance learns the legacy check's latency
            token_ms(email)
        samples = {"migrating": [], "unknown": [], "password": []}
        for _ in range(12):                     # interleaved, so drift hits all alike
            samples["migrating"].append(token_ms(email))
            samples["unknown"].append(token_ms(unique_email("ghost")))
            samples["password"].append(token_ms(known))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\nA86 medians (ms): {medians}")
    spread = max(medians.values()) - min(medians.values())
    assert spread < max(0.5 * medians["migrating"], 40.0), medians
    # The control: without the pause an unknown name answers clearly faster than a legacy check.
    from shared.flows import signin

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(signin, "_legacy_check_seconds", lambda ext: 0.0)
        fast = statistics.median(token_ms(unique_email("ghost")) for _ in range(8))
    print(f"A86 unknown name without the pause: {fast:.1f} ms")
    assert medians["migrating"] - fast > max(spread, 20.0), (medians, fast)


def test_A87_the_attempt_is_counted_before_the_legacy_call(server, legacy, extension, mig_api):
    """The legacy endpoint as a brute-force oracle through us: every attempt is counted by the lockout before the call, and a locked account calls nothing."""
    extension()
    email, password = migrating_user(server, legacy)
    with server.override(lockout_threshold=3, lockout_max_seconds=900):
        for i in range(3):
            r = sign_in(mig_api, email, f"guess number {i} of the attacker")
            assert r["error_codes"] == [BAD_CREDENTIALS]
        seen = [c["failed_logins"] for c in legacy.calls_for(email)]
        assert seen == [1, 2, 3], seen                            # counted before each call
        assert directory.get_user(server.storage, email).locked_until() > time.time()
        r = sign_in(mig_api, email, password)                      # the right password, while locked
        assert r.status == 400 and r["error_codes"] == [BAD_CREDENTIALS], r.body
        assert len(legacy.calls_for(email)) == 3                   # not asked
        assert user_entity(server, email)[directory.MIGRATE_FIELD] is True


def test_A88_parallel_sign_ins_of_a_migrating_user_store_one_hash(server, legacy, extension, mig_api, monkeypatch):
    """Parallel first sign-ins (double submits, retrying clients) of a migrating user: a bounded number of legacy calls, exactly one hash stored."""
    extension()
    email, password = migrating_user(server, legacy, iterations=100000)
    passwords._dummy()      # made by an earlier test in a full run; alone, it would be counted as a hash here
    hashed: list[int] = []
    real_hash = passwords.hash_password

    def counting_hash(pw: str) -> str:
        hashed.append(1)
        return real_hash(pw)

    monkeypatch.setattr(passwords, "hash_password", counting_hash)
    cts = [password_challenge_ct(mig_api, email, caps=None) for _ in range(20)]
    results = parallel(20, lambda i: password_grant(mig_api, cts[i], password))
    statuses = sorted(r.status for r in results)
    calls = len(legacy.calls_for(email))
    print(f"\nA88: 20 parallel first sign-ins: {calls} legacy call(s), {len(hashed)} hash(es) stored, "
          f"statuses {statuses}")
    assert calls <= server.settings.lockout_threshold and calls == 1, calls   # one instance: one shared call
    assert len(hashed) == 1, hashed
    assert all(r.status in (200, 400) for r in results)
    assert sum(r.status == 200 for r in results) >= 1
    # Each refusal is the lockout's (every attempt is counted before it is judged: twenty at once pass the
    # threshold) or the retryable "flow is busy" (55200): twenty writers on one account row can exhaust a
    # request's If-Match retries (about 1 run in 10 since hashing got faster). Neither issues a token.
    refused = [r.body for r in results if r.status == 400]
    assert all(b["error_codes"] in ([BAD_CREDENTIALS], [55200]) for b in refused), refused
    assert not any({"access_token", "refresh_token", "id_token"} & set(b) for b in refused), refused
    stored = user_entity(server, email)
    assert stored["password_hash"].startswith(OUR_ARGON2) and stored[directory.MIGRATE_FIELD] is False
    monkeypatch.undo()
    assert sign_in(mig_api, email, password).status == 200


def test_A89_a_parallel_burst_of_guesses_makes_at_most_threshold_legacy_calls(server, legacy, extension, mig_api):
    """A burst of parallel guesses against a migrating account: at most lockout_threshold reach the legacy system, then it is locked."""
    extension()
    email, password = migrating_user(server, legacy)
    with server.override(lockout_threshold=5, lockout_max_seconds=900):
        cts = [password_challenge_ct(mig_api, email, caps=None) for _ in range(30)]
        results = parallel(30, lambda i: password_grant(mig_api, cts[i], f"parallel guess {i} of 30"))
        calls = len(legacy.calls_for(email))
        print(f"\nA89: 30 parallel guesses: {calls} legacy calls")
        assert {tuple(r["error_codes"]) for r in results} == {(BAD_CREDENTIALS,)}
        assert calls == 5, calls
        assert directory.get_user(server.storage, email).locked_until() > time.time()
        assert sign_in(mig_api, email, password)["error_codes"] == [BAD_CREDENTIALS]
        assert len(legacy.calls_for(email)) == 5


def test_A90_a_stored_password_wins_over_the_marker(server, legacy, extension, mig_api, make_user):
    """Marker left on an account with a password (a reset raced a migration, a bad import): the legacy system is never asked and cannot replace the password."""
    extension()
    email, _ = make_user(extra={directory.MIGRATE_FIELD: True})
    legacy.add(email, django_pbkdf2("the legacy one, different"))
    assert sign_in(mig_api, email, "the legacy one, different")["error_codes"] == [BAD_CREDENTIALS]
    assert sign_in(mig_api, email, PW).status == 200
    assert legacy.calls_for(email) == []


def test_A91_the_password_never_reaches_a_log(server, legacy, extension, mig_api):
    """Secrets in logs: no legacy password and no encrypted password context in any log record (ours or the sample's)."""
    extension()
    email, password = migrating_user(server, legacy)
    sign_in(mig_api, email, password + " wrong")
    assert sign_in(mig_api, email, password).status == 200
    text = "\n".join(LOG_TEXT)
    assert "passwordSubmit" in text or "password-submit" in text      # the calls were logged
    for secret in [password, password + " wrong"] + legacy.jwes:
        assert secret not in text
    for part in {jwe.split(".")[1] for jwe in legacy.jwes} | {jwe.split(".")[3] for jwe in legacy.jwes}:
        assert part not in text                                      # not even the wrapped key or ciphertext


# ====================================================================== python -m admin users import

def admin(server, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "AUTH_ENVIRONMENT": "local",
               "AUTH_STORAGE_CONNECTION_STRING": server.settings.storage_connection_string,
               "AUTH_TABLE_PREFIX": server.settings.table_prefix, **(env or {})}
    return subprocess.run([sys.executable, "-m", "admin", "--settings", "/nonexistent", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=environ, timeout=120)


def test_import_each_hash_kind_then_sign_in_rehashes(server, legacy, mig_api, tmp_path):
    pw = {kind: legacy_password(kind) for kind in ("argon2", "bcrypt", "bcrypt2y", "pbkdf2")}
    hashes = {
        "argon2": argon2.PasswordHasher().hash(pw["argon2"]),            # argon2-cffi's defaults: 64 MiB, t=3, p=4
        "bcrypt": bcrypt.hashpw(pw["bcrypt"].encode(), bcrypt.gensalt(10)).decode(),
        "bcrypt2y": bcrypt.hashpw(pw["bcrypt2y"].encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1),
        "pbkdf2": django_pbkdf2(pw["pbkdf2"], 600000),
    }
    emails = {kind: unique_email(f"imp-{kind}") for kind in hashes}
    lines = [json.dumps({"email": emails[k].upper(), "passwordHash": h, "displayName": f"Imported {k}"})
             for k, h in hashes.items()]
    file = tmp_path / "users.jsonl"
    file.write_text("\n".join(lines) + "\n")
    out = admin(server, "users", "import", str(file))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "imported 4 users" in out.stdout and "skipped 0 existing, 0 bad lines" in out.stdout, out.stdout
    for h in hashes.values():
        assert h not in out.stdout + out.stderr and h.split("$")[-1] not in out.stdout + out.stderr

    for kind, email in emails.items():
        stored = user_entity(server, email)
        assert stored["password_hash"] == hashes[kind] and stored["display_name"] == f"Imported {kind}"
        assert sign_in(mig_api, email, pw[kind] + "x")["error_codes"] == [BAD_CREDENTIALS]
        assert user_entity(server, email)["password_hash"] == hashes[kind]      # a failure rehashes nothing
        before = passwords.foreign_verifications()
        r = sign_in(mig_api, email, pw[kind])
        assert r.status == 200, (kind, r.body)
        assert passwords.foreign_verifications() - before == (0 if kind == "argon2" else 1)
        rehashed = user_entity(server, email)["password_hash"]
        assert rehashed.startswith(OUR_ARGON2), (kind, rehashed[:30])
        assert int(user_entity(server, email)["failed_logins"]) == 0
        before = passwords.foreign_verifications()
        assert sign_in(mig_api, email, pw[kind]).status == 200                   # now our own hash
        assert passwords.foreign_verifications() == before
    assert not any(legacy.calls_for(email) for email in emails.values())

    again = admin(server, "users", "import", str(file))                          # idempotent per email
    assert again.returncode == 0 and "imported 0 users" in again.stdout and "skipped 4 existing" in again.stdout
    assert again.stdout.count("skipped:") == 4


def test_import_migrate_attributes_and_methods(server, legacy, extension, mig_api, tmp_path):
    extension()
    schema = json.dumps([{"name": "displayName", "type": "string", "required": False},
                         {"name": "city", "type": "string", "required": False},
                         {"name": "loyaltyLevel", "type": "int", "required": False}])
    email = unique_email("imp-mig")
    password = legacy_password("imported")
    legacy.add(email, bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode())
    plain = unique_email("imp-nopw")
    line = {"email": email, "displayName": "Mig Rated", "migrate": True,
            "attributes": {"city": " Berlin ", "loyaltyLevel": 3},
            "methods": [{"channel": "sms", "target": "+49 151 1234 5678"},
                        {"channel": "email", "target": "Backup@Example.org", "default": True},
                        {"channel": "sms", "target": "004915112345678"}]}
    out = admin(server, "users", "import", "-", stdin=json.dumps(line) + "\n\n" + json.dumps({"email": plain}) + "\n",
                env={"AUTH_SIGNUP_ATTRIBUTES": schema})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "imported 2 users (1 to migrate at first sign-in, 1 without a password" in out.stdout, out.stdout
    user = directory.get_user(server.storage, email)
    assert user.password_migrating and not user.has_password and user.display_name == "Mig Rated"
    assert json.loads(user.entity["attributes"]) == {"displayName": "Mig Rated", "city": "Berlin", "loyaltyLevel": "3"}
    got = [(m["channel"], m["target"], m["default"]) for m in user.methods]
    assert got == [("sms", "+4915112345678", False), ("email", "backup@example.org", True)], got
    assert not directory.get_user(server.storage, plain).signs_in_with_password
    shown = admin(server, "users", "show", email)
    assert "to migrate at first sign-in" in shown.stdout
    # Bcrypt in the legacy store, through the sample, then ours.
    assert sign_in(mig_api, email, password).status == 200
    assert user_entity(server, email)["password_hash"].startswith(OUR_ARGON2)


def test_import_reports_bad_lines_by_number_and_never_prints_a_hash(server, tmp_path):
    good = unique_email("imp-good")
    weak_bcrypt = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode().replace("$04$", "$31$")
    huge_argon = argon2.PasswordHasher(memory_cost=262144, time_cost=1, parallelism=1).hash("x")
    mine = unique_email("imp-mine")
    lines = [
        json.dumps({"email": good, "migrate": True}),                                     # 1 ok
        "{not json",                                                                       # 2
        json.dumps(["a", "list"]),                                                         # 3
        json.dumps({"email": "not-an-address"}),                                           # 4
        json.dumps({"email": unique_email(), "password": "plain text"}),                   # 5
        json.dumps({"email": unique_email(), "passwordHash": "md5$abc$0123456789abcdef"}), # 6
        json.dumps({"email": unique_email(), "passwordHash": weak_bcrypt}),                # 7
        json.dumps({"email": unique_email(), "passwordHash": huge_argon}),                 # 8
        json.dumps({"email": unique_email(), "migrate": True, "passwordHash": django_pbkdf2("p")}),  # 9
        json.dumps({"email": unique_email(), "attributes": {"favouriteColour": "blue"}}),  # 10
        json.dumps({"email": unique_email(), "methods": [{"channel": "sms", "target": "+4990012345678"}]}),  # 11 premium
        json.dumps({"email": mine, "methods": [{"channel": "email", "target": mine.replace("@", "+2fa@")}]}),  # 12
        json.dumps({"email": unique_email(), "displayName": "Line\nbreak"}),               # 13
        json.dumps({"email": good.upper()}),                                               # 14 duplicate of 1
        json.dumps({"email": unique_email(), "migrate": "yes"}),                           # 15
        json.dumps({"email": unique_email(), "methods": [{"channel": "fax", "target": "1"}]}),  # 16
    ]
    out = admin(server, "users", "import", "-", stdin="\n".join(lines) + "\n")
    assert out.returncode == 2, out.stdout + out.stderr
    bad = sorted(int(l.split(":")[0].split()[1]) for l in out.stdout.splitlines() if ": bad:" in l)
    assert bad == list(range(2, 17)), out.stdout
    assert "imported 1 user (1 to migrate at first sign-in), skipped 0 existing, 15 bad lines" in out.stdout
    for secret in (weak_bcrypt, huge_argon, "plain text", "0123456789abcdef"):
        assert secret not in out.stdout + out.stderr
    assert "line 14: bad: the same address as line 1" in out.stdout
    assert "line 12: bad: methods[1]: the sign-in address cannot be its own second factor" in out.stdout
    assert directory.get_user(server.storage, good).password_migrating
    assert directory.get_user(server.storage, mine) is None

    dry = admin(server, "users", "import", "--dry-run", "-", stdin=json.dumps({"email": unique_email("dry")}) + "\n")
    assert dry.returncode == 0 and "would import 1 user" in dry.stdout


def test_A92_an_outage_of_the_legacy_system_with_continue_tells_nothing(server, legacy, extension, mig_api):
    """Enumeration during a legacy outage: with on_error continue a migrating account answers like an unknown name; with fail it is a 503 (documented residual)."""
    extension(url=closed_port_url(), on_error="continue", timeout_ms=500)
    email, password = migrating_user(server, legacy)
    ghost = unique_email("ghost")
    for _ in range(6):                                  # through the circuit breaker opening too
        a, b = sign_in(mig_api, email, password), sign_in(mig_api, ghost, password)
        assert shape(a) == shape(b) and a["error_codes"] == [BAD_CREDENTIALS], (a.body, b.body)
    extension(url=closed_port_url(), on_error="fail", timeout_ms=500)
    assert sign_in(mig_api, email, password).status == 503
    assert sign_in(mig_api, ghost, password)["error_codes"] == [BAD_CREDENTIALS]   # the residual: see the report


def test_A93_imported_hashes_are_bounded_and_share_the_hashing_slots(server, monkeypatch):
    """Work amplification through imported hashes: parameters are bounded at import, and a 64 MiB argon2id hash holds as many slots as 19 MiB blocks, so the memory ceiling stays four of ours."""
    big = argon2.PasswordHasher().hash("big memory password")         # 64 MiB, t=3, p=4: importable
    assert passwords.check_importable(big) == "argon2"
    ours = passwords.hash_password("our own password")
    slow_bcrypt = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode().replace("$04$", "$14$")
    for refused in (argon2.PasswordHasher(memory_cost=128 * 1024, time_cost=1, parallelism=1).hash("x"),
                    argon2.PasswordHasher(time_cost=20, memory_cost=1024, parallelism=1).hash("x"),
                    slow_bcrypt, django_pbkdf2("x", 999), "pbkdf2_sha256$5000000$salt$" + "A" * 43 + "="):
        with pytest.raises(passwords.UnsupportedHash) as info:
            passwords.check_importable(refused)
        assert refused not in str(info.value)


    class Metered:
        """The real hasher, measuring the argon2 memory in use at once."""

        def __init__(self, inner):
            self.inner, self.lock, self.now, self.peak = inner, threading.Lock(), 0, 0

        def verify(self, stored, password):
            kib = argon2.extract_parameters(stored).memory_cost
            with self.lock:
                self.now += kib
                self.peak = max(self.peak, self.now)
            try:
                return self.inner.verify(stored, password)
            finally:
                with self.lock:
                    self.now -= kib

        def __getattr__(self, name):
            return getattr(self.inner, name)

    meter = Metered(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", meter)
    results = parallel(12, lambda i: passwords.verify_password(big if i % 2 else ours, f"guess {i}"))
    assert results == [False] * 12
    print(f"\nA93: peak argon2 memory {meter.peak // 1024} MiB (ceiling {passwords.IMPORT_ARGON2_MAX_KIB // 1024})")
    assert 64 * 1024 <= meter.peak <= passwords.ARGON2_CONCURRENCY * passwords.ARGON2_SLOT_KIB, meter.peak
    monkeypatch.undo()
    assert passwords.verify_password(big, "big memory password") and passwords.needs_rehash(big)
    assert not passwords.needs_rehash(ours)
