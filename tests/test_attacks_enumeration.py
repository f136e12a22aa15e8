"""Enumeration and brute force: catalogue rows A17-A21.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import _QUIET  # noqa: F401


def test_A17_login_unknown_and_wrong_password_look_the_same(api, make_user):
    known, _ = make_user(email=unique_email("know"))
    ghost = unique_email("ghst")
    steps = {}
    for who in (known, ghost):
        i = api.post("oauth2/v2.0/initiate", username=who, challenge_type="password oob redirect", capabilities=CAPS)
        c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                     challenge_type="password oob redirect")
        t = password_grant(api, c["continuation_token"], "definitely not the password")
        steps[who] = [shape(i), shape(c), shape(t)]
    assert steps[known] == steps[ghost]
    assert steps[known][2][0] == 400 and steps[known][2][1]["error_codes"] == [BAD_CREDENTIALS]


def test_A17_email_code_sign_in_unknown_and_known_look_the_same(api, outbox, make_user):
    known, _ = make_user(password=None, email=unique_email("know"))
    ghost = unique_email("ghst")
    steps = {}
    for who in (known, ghost):
        i = api.post("oauth2/v2.0/initiate", username=who, challenge_type="oob redirect", capabilities=CAPS)
        c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")
        t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob="12345678",
                     scope=SCOPE)
        steps[who] = [shape(i), shape(c), shape(t)]
    assert steps[known] == steps[ghost]
    assert outbox.count(known) == 1 and outbox.count(ghost) == 0


def test_A17_documented_residual_oracle_passwordless_accounts(api, make_user):
    """Unknown names look like *password* accounts. An existing account without
    a password is answered with the code challenge (or a redirect for a
    password-only client), as Entra does; SECURITY.md records this residual
    oracle (it reveals email-code-only accounts, not password accounts)."""
    passwordless, _ = make_user(password=None)
    with_password, _ = make_user()
    ghost = unique_email("ghost")

    def first_challenge(who):
        i = api.post("oauth2/v2.0/initiate", username=who, challenge_type="password oob redirect")
        return api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                        challenge_type="password oob redirect")["challenge_type"]

    assert first_challenge(ghost) == first_challenge(with_password) == "password"
    assert first_challenge(passwordless) == "oob"


def test_A17_enumeration_protection_off_is_entra_user_not_found(server, api, make_user):
    """The documented setting: with AUTH_ENUMERATION_PROTECTION=false the API
    answers Entra's explicit user_not_found (an oracle, by choice)."""
    with server.override(enumeration_protection=False):
        r = api.post("oauth2/v2.0/initiate", username=unique_email("ghost"), challenge_type="password redirect")
    assert r.status == 400 and r["error"] == "user_not_found" and r["error_codes"] == [50034]
    assert server.settings.enumeration_protection is True  # on by default


def test_A18_sign_up_with_an_existing_address_looks_like_a_new_one(server, api, outbox, make_user):
    existing, _ = make_user(email=unique_email("know"))
    new = unique_email("newx")
    steps = {}
    for who in (existing, new):
        s = api.post("signup/v1.0/start", username=who, challenge_type="oob password redirect", password=PW)
        c = api.post("signup/v1.0/challenge", continuation_token=s["continuation_token"],
                     challenge_type="oob password redirect")
        r = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob="12345678")
        steps[who] = [shape(s), shape(c), shape(r)]
    assert steps[existing] == steps[new]
    notice = outbox.messages(existing)[-1]
    assert notice["purpose"] == "signup_attempt_notice" and not notice.get("code")   # the owner is told, no code
    assert outbox.messages(new)[-1]["purpose"] == "signup_code"
    with server.override(enumeration_protection=False):
        r = api.post("signup/v1.0/start", username=existing, challenge_type="oob password redirect")
    assert r.status == 400 and r["error"] == "user_already_exists" and r["error_codes"] == [1003037]


def test_A19_password_reset_unknown_and_known_look_the_same(server, api, outbox, make_user):
    known, _ = make_user(email=unique_email("know"))
    passwordless, _ = make_user(password=None, email=unique_email("nopw"))
    ghost = unique_email("ghst")
    steps = {}
    for who in (known, passwordless, ghost):
        s = api.post("resetpassword/v1.0/start", username=who, challenge_type="oob redirect")
        c = api.post("resetpassword/v1.0/challenge", continuation_token=s["continuation_token"], challenge_type="oob redirect")
        v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                     oob="12345678")
        steps[who] = [shape(s), shape(c), shape(v)]
    assert steps[known] == steps[passwordless] == steps[ghost]
    assert outbox.count(known) == 1 and outbox.count(passwordless) == 0 and outbox.count(ghost) == 0
    with server.override(enumeration_protection=False):   # the documented Entra-compatible mode
        r = api.post("resetpassword/v1.0/start", username=ghost, challenge_type="oob redirect")
        assert r.status == 400 and r["error"] == "user_not_found"
        r = api.post("resetpassword/v1.0/start", username=passwordless, challenge_type="oob redirect")
        assert r.status == 400 and r["error_codes"][0] == 500222


def test_A20_locked_account_answers_like_a_wrong_password_and_an_unknown_name(server, api, make_user):
    email, _ = make_user()
    ghost = unique_email("ghost")
    with server.override(lockout_threshold=3):
        wrong_pw = [password_grant(api, password_challenge_ct(api, email), "wrong guess number %d" % i) for i in range(3)]
        assert directory.get_user(server.storage, email).locked_until() > time.time()
        locked = password_grant(api, password_challenge_ct(api, email), PW)       # the right password, while locked
        unknown = [password_grant(api, password_challenge_ct(api, ghost), "wrong guess number %d" % i) for i in range(4)]
    assert shape(locked) == shape(wrong_pw[0]) == shape(unknown[-1])
    assert locked["error_codes"] == [BAD_CREDENTIALS]
    assert_no_tokens(locked)


def test_A20_send_limits_trip_identically_for_known_and_unknown(server, api, outbox, make_user):
    known, _ = make_user(email=unique_email("know"))
    ghost = unique_email("ghst")
    with server.override(email_per_destination_hour=2):
        k = [reset_challenge(api, known) for _ in range(3)]
        g = [reset_challenge(api, ghost) for _ in range(3)]
    assert [r.status for r in k] == [r.status for r in g] == [200, 200, 400]
    assert [shape(r) for r in k] == [shape(r) for r in g]
    assert outbox.count(known) == 2 and outbox.count(ghost) == 0


def test_A21_progressive_lockout_per_account(server, api, make_user, shift):
    email, _ = make_user()
    clock = shift(signin)
    with server.override(lockout_threshold=3, lockout_base_seconds=60, lockout_max_seconds=900):
        for i in range(3):
            assert password_grant(api, password_challenge_ct(api, email), f"guess number {i}")["error_codes"] == [BAD_CREDENTIALS]
        entity = user_entity(server, email)
        first_lock = entity["lockout_until"] - clock.time()
        assert 50 <= first_lock <= 61
        assert password_grant(api, password_challenge_ct(api, email), PW).status == 400   # refused while locked
        clock.offset = first_lock + 1                                                    # the lock runs out
        assert password_grant(api, password_challenge_ct(api, email), "guess number 4")["error_codes"] == [BAD_CREDENTIALS]
        second_lock = user_entity(server, email)["lockout_until"] - clock.time()
        assert second_lock > 1.5 * first_lock                                            # doubling
        assert password_grant(api, password_challenge_ct(api, email), PW).status == 400
        clock.offset += second_lock + 1
        assert password_grant(api, password_challenge_ct(api, email), PW).status == 200  # and then it is over


def test_A21_parallel_burst_still_ends_in_a_lockout(server, api, make_user):
    """A burst of concurrent wrong passwords ends in a (long) lockout."""
    email, _ = make_user()
    with server.override(lockout_threshold=3, lockout_max_seconds=900):
        cts = [password_challenge_ct(api, email) for _ in range(10)]
        results = parallel(10, lambda i: password_grant(api, cts[i], f"parallel guess {i}"))
        assert {r["error_codes"][0] for r in results} == {BAD_CREDENTIALS}
        assert directory.get_user(server.storage, email).locked_until() > time.time()
        assert password_grant(api, password_challenge_ct(api, email), PW).status == 400


def test_A21_a_parallel_burst_compares_no_more_guesses_than_the_threshold(server, api, make_user):
    """Each attempt is counted before its password is compared, so a burst of
    40 parallel guesses gets exactly `lockout_threshold` comparisons; the
    rest are refused as locked without being compared (it was every guess of
    the burst: the lock was read when each request started, and the hashing
    queue held them there)."""
    from shared.security import passwords

    email, _ = make_user()
    with server.override(lockout_threshold=10, lockout_max_seconds=900):
        cts = [password_challenge_ct(api, email) for _ in range(40)]
        before = passwords.passwords_compared()
        results = parallel(40, lambda i: password_grant(api, cts[i], f"burst guess {i}"))
        compared = passwords.passwords_compared() - before
    assert {tuple(r["error_codes"]) for r in results} == {(BAD_CREDENTIALS,)}
    assert compared == 10, compared
    assert int(user_entity(server, email)["failed_logins"]) == 10
    assert directory.get_user(server.storage, email).locked_until() > time.time()


def test_A21_legitimate_user_recovers_a_locked_account_through_reset(server, api, outbox, make_user):
    email, _ = make_user()
    with server.override(lockout_threshold=3):
        for i in range(3):
            password_grant(api, password_challenge_ct(api, email), f"attacker guess {i}")
        assert directory.get_user(server.storage, email).locked_until() > time.time()
        reset_to_token(api, outbox, email)
        assert password_first_factor(api, email, NEW_PW).status == 200


def test_A21_one_password_over_many_accounts_from_one_ip_raises_risk(server, api, make_user, policies):
    """Credential stuffing from one IP: once more distinct accounts than
    AUTH_RISK_IP_ACCOUNTS_PER_HOUR pass a first factor from it, sign-in risk
    is high and a risk policy applies (here: block). There is no per-IP
    throttle on *failed* passwords yet (SECURITY.md, gaps)."""
    accounts = [make_user()[0] for _ in range(3)]
    policies(assignments={"users": {"include": accounts}}, conditions={"risk_levels": ["high"]}, grant={"block": True})
    ip = {"X-Forwarded-For": random_ip()}
    with server.override(risk_ip_accounts_per_hour=2, trusted_proxy_hops=2):
        results = [password_first_factor(api, a, headers=ip) for a in accounts]
    assert [r.status for r in results[:2]] == [200, 200]
    assert results[2].status == 400 and results[2]["error"] == "access_denied" and results[2]["error_codes"] == [53003]
    assert_no_tokens(results[2])


# ====================================================================== A22-A26: passwords and reset


# ====================================================================== A51-A52: the same work for known and unknown names

def _ops(resp) -> int:
    return int(resp.headers["x-storage-ops"])


def test_A51_over_long_passwords_do_the_same_work_for_known_and_unknown_names(server, api, make_user):
    from shared.security import passwords

    email, _ = make_user()
    long_pw = "x" * 300
    answers, ops, hashes = [], [], []
    for name in (email, unique_email("ghost"), email, unique_email("ghost")):
        ct = password_challenge_ct(api, name)
        before = passwords.argon2_operations()
        r = password_grant(api, ct, long_pw)
        hashes.append(passwords.argon2_operations() - before)
        answers.append(shape(r))
        ops.append(_ops(r))
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert answers[0][0] == 400 and answers[0][1]["error_codes"] == [BAD_CREDENTIALS]
    assert ops[0] == ops[1] and ops[2] == ops[3], ops
    assert hashes[0] == hashes[1] == hashes[2] == hashes[3] == 0, hashes   # nothing to hash: it can never match


def test_A52_wrong_codes_cost_the_same_storage_work_for_known_and_unknown_addresses(server, api, outbox, make_user):
    known, _ = make_user(password=None)
    signin_ops, reset_ops = [], []
    for name in (known, unique_email("ghost")):
        c = email_code_challenge(api, name)
        assert c.status == 200
        r = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob="31415926",
                     scope=SCOPE)
        assert r.status == 400 and r["error_codes"] == [WRONG_CODE]
        signin_ops.append(_ops(r))
    known_pw, _ = make_user()
    for name in (known_pw, unique_email("ghost")):
        c = reset_challenge(api, name)
        r = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                     oob="31415926")
        assert r.status == 400 and r["error_codes"] == [WRONG_CODE]
        reset_ops.append(_ops(r))
    assert signin_ops[0] == signin_ops[1], signin_ops
    assert reset_ops[0] == reset_ops[1], reset_ops


def test_A52_parallel_wrong_passwords_get_the_same_answers_for_known_and_unknown(server, api, make_user):
    email, _ = make_user()
    ghost = unique_email("ghost")
    with server.override(lockout_threshold=10 ** 6):
        for name in (email, ghost):
            cts = [password_challenge_ct(api, name) for _ in range(40)]
            results = parallel(40, lambda i: password_grant(api, cts[i], "not the password, in parallel"))
            statuses = {(r.status, tuple(r["error_codes"])) for r in results}
            assert statuses == {(400, (BAD_CREDENTIALS,))}, (name == email, statuses)


def test_A52_a_contended_failure_counter_gives_up_one_increment_never_goes_down(server, api, outbox, make_user,
                                                                               monkeypatch):
    """When the account record stays contended through every retry, the wrong
    code is still answered as one (no 503), and nothing is written from a
    stale read (the counter keeps its value; it was merged backwards before)."""
    from shared.storage import directory as directory_mod
    from shared.storage.tables import Modified

    email, _ = make_user(password=None)
    directory.change_user(server.storage, directory.get_user(server.storage, email),
                          lambda u: {"code_failures_email": 7})
    c = email_code_challenge(api, email)

    def always_contended(*args, **kwargs):
        raise Modified("injected: another writer won")

    monkeypatch.setattr(directory_mod, "update_user", always_contended)
    r = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob="31415926",
                 scope=SCOPE)
    monkeypatch.undo()
    assert r.status == 400 and r["error_codes"] == [WRONG_CODE], r.body
    assert int(user_entity(server, email)["code_failures_email"]) == 7

