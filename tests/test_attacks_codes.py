"""One-time codes and continuation tokens: catalogue rows A1-A12.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import _QUIET  # noqa: F401


@pytest.mark.parametrize("kind", KINDS)
def test_A01_otp_brute_force_within_one_challenge(open_challenge, kind):
    ch = open_challenge(kind)
    code = ch.code()
    bad = wrong(code)
    answers = [ch.submit(bad) for _ in range(5)]
    for r in answers:
        assert r.status == 400 and r["error"] == "invalid_grant" and r["suberror"] == "invalid_oob_value", r.body
        assert r["error_codes"] == [WRONG_CODE]
    assert len({json.dumps(shape(r), sort_keys=True) for r in answers}) == 1, "attempts 1-5 must look the same"
    sixth = ch.submit(bad)
    assert sixth.status == 400 and sixth["error_codes"] == [DEAD_CHALLENGE] and sixth["suberror"] == "invalid_oob_value"
    dead = ch.submit(code)  # the right code is dead too
    assert dead.status == 400 and dead["error_codes"] == [DEAD_CHALLENGE]
    assert_no_tokens(dead)


def test_A02_brute_force_across_resends_keeps_the_account_counter(server, api, outbox, make_user, open_challenge):
    """The per-account counter survives resends and new flows; at the ceiling
    (100 by default, 7 here) the email code is refused even when right, and
    only a success resets it (consecutive failures, NIST §3.2.2)."""
    email, _ = make_user(password=None)
    with server.override(account_max_code_failures=7):
        ch = open_challenge("signin", email)
        for _ in range(3):
            assert ch.submit(wrong(ch.code()))["error_codes"] == [WRONG_CODE]
        assert ch.resend().status == 200                 # resend: a new code, fresh per-challenge budget ...
        for _ in range(3):
            assert ch.submit(wrong(ch.code()))["error_codes"] == [WRONG_CODE]
        assert code_failures(server, email) == 6  # ... but the account counter kept growing
        other = open_challenge("signin", email)           # a brand-new flow does not reset it either
        assert other.submit(wrong(other.code()))["error_codes"] == [WRONG_CODE]
        assert code_failures(server, email) == 7
        refused = other.submit(other.code())              # the ceiling: the right code is refused
        assert refused.status == 400 and refused["error_codes"] == [DEAD_CHALLENGE]
        assert_no_tokens(refused)
        third = open_challenge("signin", email)
        assert third.submit(third.code())["error_codes"] == [DEAD_CHALLENGE]


def test_A02_account_ceiling_also_guards_the_second_factor(server, make_user, open_challenge, require_mfa):
    email, _ = make_user(password=None, methods=[sms_method(random_phone())])
    require_mfa(email)
    with server.override(account_max_code_failures=6):
        ch = open_challenge("mfa", email)
        for _ in range(5):
            assert ch.submit(wrong(ch.code()))["error_codes"] == [WRONG_CODE]
        assert ch.resend().status == 200
        assert ch.submit(wrong(ch.code()))["error_codes"] == [WRONG_CODE]
        assert code_failures(server, email) == 6
        refused = ch.submit(ch.code())
        assert refused.status == 400 and refused["error_codes"] == [DEAD_CHALLENGE]
        assert_no_tokens(refused)


def test_A02_a_success_resets_the_consecutive_count(server, make_user, open_challenge):
    email, _ = make_user(password=None)
    ch = open_challenge("signin", email)
    for _ in range(2):
        ch.submit(wrong(ch.code()))
    assert code_failures(server, email) == 2
    assert ch.succeeded(ch.submit(ch.code()))
    assert code_failures(server, email) == 0


@pytest.mark.parametrize("kind", ["reset", "register"])
def test_A02_account_ceiling_applies_to_every_code_of_the_account(server, make_user, open_challenge, require_mfa, kind):
    """At the ceiling the email code is refused in password reset too (and
    registration codes as well): otherwise reset flows would be an unlimited
    guessing path around it. Recovery is an administrator's unlock."""
    email, user = make_user()
    if kind == "register":
        require_mfa(email)
    ch = open_challenge(kind, email)
    directory.update_user(server.storage, directory.get_user(server.storage, email),
                          code_failures_email=server.settings.account_max_code_failures,
                          code_failures_sms=server.settings.account_max_code_failures)
    r = ch.submit(ch.code())
    assert r.status == 400 and r["error_codes"] == [DEAD_CHALLENGE], r.body
    assert_no_tokens(r)


def test_A02_email_code_failures_do_not_disable_the_sms_factor(server, api, outbox, make_user, open_challenge,
                                                               require_mfa):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])          # password + SMS second factor
    require_mfa(email)
    with server.override(account_max_code_failures=5):
        attacker = open_challenge("signin", email)              # email-code sign-in: needs only the address
        for _ in range(5):
            attacker.submit(wrong(attacker.code()))
        t = password_first_factor(api, email)                   # the owner: right password ...
        c = mfa_challenge(api, t["continuation_token"])
        done = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                        oob=outbox.last_code(phone), scope=SCOPE)   # ... and the right SMS code
    assert done.status == 200, done.body


def test_A02_parallel_wrong_codes_are_all_counted_against_the_account(server, api, outbox, make_user):
    """Wrong codes sent in parallel over several flows of one account: every
    one answered 'wrong code' is counted against the account (read-modify-
    write under If-Match, retried); none is silently dropped."""
    email, _ = make_user(password=None)
    cts = [email_code_challenge(api, email)["continuation_token"] for _ in range(8)]
    guess = wrong(outbox.last_code(email))
    results = parallel(32, lambda i: api.post("oauth2/v2.0/token", continuation_token=cts[i % 8], grant_type="oob",
                                              oob=guess, scope=SCOPE))
    answered_wrong = sum(1 for r in results if r.get("error_codes") == [WRONG_CODE])
    for r in results:
        assert r.get("error_codes") == [WRONG_CODE], r.body   # never a 503 (an unknown name never gets one: A52)
        assert_no_tokens(r)
    assert answered_wrong == 32
    assert code_failures(server, email) == answered_wrong


@pytest.mark.parametrize("kind", ["signin", "mfa"])
def test_A03_parallel_brute_force_on_one_challenge(server, open_challenge, kind):
    """50 concurrent wrong codes: at most 5 are answered (and counted) as
    wrong, every other one is refused; afterwards the challenge is dead.
    Attempts are counted with an ETag compare-and-swap on the flow record;
    the comparison itself happens before the increment (see SECURITY.md)."""
    ch = open_challenge(kind)
    code = ch.code()
    bad = wrong(code)
    before = code_failures(server, ch.email)
    results = parallel(50, lambda i: ch.submit(bad))
    # Evaluated as wrong: answered so, or (rarely) 503 because the account
    # counter stayed contended after the flow had already counted the attempt.
    evaluated = [r for r in results if r.get("error_codes") == [WRONG_CODE] or r.status == 503]
    assert 1 <= len(evaluated) <= 5
    for r in results:
        assert_no_tokens(r)
        if r.status != 503:
            assert r.status == 400 and r["error"] == "invalid_grant", r.body
            assert r["error_codes"] in ([WRONG_CODE], [DEAD_CHALLENGE], [55200]), r.body
    assert ch.submit(code)["error_codes"] == [DEAD_CHALLENGE]
    assert code_failures(server, ch.email) - before <= 5


@pytest.mark.parametrize("kind", KINDS)
def test_A04_replay_of_a_used_code(open_challenge, kind):
    ch = open_challenge(kind)
    code = ch.code()
    first = ch.submit(code)
    assert ch.succeeded(first), first.body
    again = ch.submit(code)
    assert again.status == 400 and again["error"] == "invalid_grant", again.body
    assert_no_tokens(again)


@pytest.mark.parametrize("kind", KINDS)
def test_A05_parallel_double_redemption_succeeds_once(server, open_challenge, kind):
    ch = open_challenge(kind)
    code = ch.code()
    results = parallel(12, lambda i: ch.submit(code))
    winners = [r for r in results if ch.succeeded(r)]
    assert len(winners) == 1, [(r.status, r.body) for r in results]
    for r in results:
        if r is not winners[0]:
            assert 400 <= r.status < 500 and r["error"] == "invalid_grant", r.body
            assert_no_tokens(r)
    if kind == "register":
        assert len(directory.get_user(server.storage, ch.email).methods) == 1
    if kind == "signup":
        rows = server.storage.table("users").query("PartitionKey eq @pk and RowKey eq @u", {"pk": directory.user_key(ch.email), "u": "user"})  # accounts, not flows (A116)
        assert len(rows) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_A06_expired_code_is_rejected(shift, open_challenge, kind):
    ch = open_challenge(kind)
    code = ch.code()
    clock = shift(flows)
    clock.offset = get_settings().code_ttl_seconds + 1
    late = ch.submit(code)
    assert late.status == 400 and late["error"] == "invalid_grant" and late["suberror"] == "invalid_oob_value"
    assert late["error_codes"] == [WRONG_CODE] and "expired" in late["error_description"]
    assert_no_tokens(late)
    # Control: a code asked for now (same flow, same moved clock) is accepted.
    assert ch.resend().status == 200
    assert ch.succeeded(ch.submit(ch.code()))


def test_A06_code_lifetime_is_at_most_ten_minutes(server):
    assert server.settings.code_ttl_seconds <= 600
    assert Settings.from_env({"AUTH_ENVIRONMENT": "local"}).code_ttl_seconds == 600
    with pytest.raises(SettingsError):
        Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_CODE_TTL_SECONDS": "601"})


@pytest.mark.parametrize("kind", KINDS)
def test_A07_resend_kills_the_old_code(open_challenge, kind):
    """Documented policy: a resend issues a new code and the old one dies
    (never two valid codes at once)."""
    ch = open_challenge(kind)
    old_ct, old_code = ch.ct, ch.code()
    assert ch.resend().status == 200
    new_code = ch.code()
    assert ch.ct != old_ct
    stale = ch.submit(old_code, ct=old_ct)          # the old token was rotated away
    assert stale.status == 400 and stale["error"] == "invalid_grant"
    if new_code != old_code:                         # 1 in 10^6 (SMS) / 10^8 (email) they coincide
        r = ch.submit(old_code)
        assert r.status == 400 and r["error_codes"] == [WRONG_CODE], r.body
    assert ch.succeeded(ch.submit(new_code))


@pytest.mark.parametrize("kind", ["signin", "mfa", "reset"])
def test_A08_code_is_bound_to_its_transaction(make_user, open_challenge, require_mfa, kind):
    email = None
    if kind == "mfa":
        email, _ = make_user(password=None, methods=[sms_method(random_phone())])
        require_mfa(email)
    x = open_challenge(kind, email)
    code_x = x.code()
    y = open_challenge(kind, x.email)     # same user, another flow
    code_y = y.code()
    if code_x != code_y:
        r = y.submit(code_x)
        assert r.status == 400 and r["error_codes"] == [WRONG_CODE], r.body
        assert_no_tokens(r)
    assert x.succeeded(x.submit(code_x))
    assert y.succeeded(y.submit(code_y))


# ====================================================================== A9-A12: binding and steps

@pytest.mark.parametrize("kind", ["signin", "mfa"])
def test_A09_continuation_token_swap_between_users(open_challenge, kind):
    a = open_challenge(kind)
    b = open_challenge(kind)
    code_a, code_b = a.code(), b.code()
    if code_a != code_b:
        for r in (a.submit(code_b), b.submit(code_a)):     # A's token + B's code, and vice versa
            assert r.status == 400 and r["error"] == "invalid_grant", r.body
            assert_no_tokens(r)
    # Each token still yields its own user's tokens only.
    ta, tb = a.submit(code_a), b.submit(code_b)
    assert claims_of(ta["id_token"])["preferred_username"] == a.email
    assert claims_of(tb["id_token"])["preferred_username"] == b.email


def test_A09_completed_flow_cannot_be_claimed_for_another_user(api, outbox, make_user):
    a, _ = make_user()
    b, _ = make_user()
    ct = reset_to_token(api, outbox, a)
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", username=b, scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_grant"
    assert_no_tokens(r)


def _tamperings(settings, ct: str, other: str) -> dict[str, str]:
    """A sign-in's token is ``u1.<sealed locator>`` (A116): the recombinations of its parts are made with the
    deployment's own key (an attacker without it can only splice the ciphertext, also tried), and the parts
    in the clear in the old format."""
    pk, fid, secret, _ = flows._parts(settings, ct)
    opk, ofid, osecret, _ = flows._parts(settings, other)
    flip = ("A" if secret[0] != "A" else "B") + secret[1:]     # the first character: no spare bits there
    mid = len(ct) // 2
    return {
        "flipped-secret-char": flows._token(settings, pk, fid, flip),
        "other-flow-id": flows._token(settings, pk, ofid, secret),          # change the embedded flow (user) id
        "other-secret": flows._token(settings, pk, fid, osecret),
        "other-partition": flows._token(settings, opk, fid, secret),
        "clear-parts": f"{pk}.{fid}.{secret}",
        "clear-parts-old-partition": f"f2000010100a.{fid}.{secret}",
        "spliced": ct[:mid] + other[mid:],
        "flipped-last-char": ct[:-1] + ("A" if ct[-1] != "A" else "B"),
        "truncated": ct[:-1],
        "extended": ct + "A",
        "jwt-shaped": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.",
        "empty-secret": f"{pk}.{fid}.",
        "garbage": "not-a-token",
    }


def test_A10_continuation_token_tampering(server, api, make_user):
    email, _ = make_user()
    other, _ = make_user()
    ct = password_challenge_ct(api, email)
    ct_other = password_challenge_ct(api, other)
    for name, forged in _tamperings(server.settings, ct, ct_other).items():
        for path, form in (("oauth2/v2.0/token", {"grant_type": "password", "password": PW, "scope": SCOPE}),
                           ("oauth2/v2.0/challenge", {"challenge_type": "password redirect"}),
                           ("oauth2/v2.0/introspect", {}),
                           ("register/v1.0/introspect", {}),
                           ("resetpassword/v1.0/submit", {"new_password": NEW_PW}),
                           ("signup/v1.0/continue", {"grant_type": "oob", "oob": "12345678"})):
            r = api.post(path, continuation_token=forged, **form)
            assert r.status == 400 and r["error"] == "invalid_grant", (name, path, r.body)
            assert_no_tokens(r)
    # The genuine tokens were not harmed by all that.
    assert password_grant(api, ct, PW).status == 200
    assert password_grant(api, ct_other, PW).status == 200


def test_A10_continuation_token_is_single_use_after_completion(api, make_user):
    email, _ = make_user()
    ct = password_challenge_ct(api, email)
    assert password_grant(api, ct, PW).status == 200
    for path, form in (("oauth2/v2.0/token", {"grant_type": "password", "password": PW, "scope": SCOPE}),
                       ("oauth2/v2.0/token", {"grant_type": "continuation_token", "scope": SCOPE}),
                       ("oauth2/v2.0/challenge", {"challenge_type": "password redirect"})):
        r = api.post(path, continuation_token=ct, **form)
        assert r.status == 400 and r["error"] == "invalid_grant", r.body
        assert_no_tokens(r)


def test_A10_continuation_token_expires(api, make_user, shift):
    email, _ = make_user()
    ct = password_challenge_ct(api, email)
    assert get_settings().flow_ttl_seconds <= 900
    clock = shift(flows)
    clock.offset = get_settings().flow_ttl_seconds + 1
    r = password_grant(api, ct, PW)
    assert r.status == 400 and r["error"] == "expired_token", r.body
    assert_no_tokens(r)
    clock.offset = 0
    assert password_grant(api, ct, PW).status == 200  # only the clock made it fail


def test_A10_continuation_token_is_bound_to_its_client(server, api, make_user):
    email, _ = make_user()
    ct = password_challenge_ct(api, email)
    other = f"attacks-{uuid.uuid4().hex[:8]}"
    directory.register_client(server.storage, other, "another app")
    r = api.post("oauth2/v2.0/token", client_id=other, continuation_token=ct, grant_type="password", password=PW,
                 scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_grant"
    assert_no_tokens(r)


def test_A11_token_endpoint_refuses_a_first_factor_token_when_mfa_is_required(api, outbox, make_user, require_mfa):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    require_mfa(email)
    t = password_first_factor(api, email)
    assert t.status == 400 and t["suberror"] == "mfa_required"
    ct = t["continuation_token"]
    for grant, extra in (("continuation_token", {}), ("password", {"password": PW}), ("mfa_oob", {"oob": "123456"}),
                         ("oob", {"oob": "123456"}), ("refresh_token", {"refresh_token": ct})):
        r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type=grant, scope=SCOPE, **extra)
        assert r.status == 400, (grant, r.body)
        assert_no_tokens(r)
    for path, form in (("register/v1.0/continue", {"grant_type": "continuation_token"}),
                       ("register/v1.0/continue", {"grant_type": "oob", "oob": "123456"}),
                       ("signup/v1.0/continue", {"grant_type": "oob", "oob": "123456"}),
                       ("resetpassword/v1.0/poll_completion", {})):
        r = api.post(path, continuation_token=ct, **form)
        assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)
    # The second factor still works afterwards: nothing was skipped, nothing broken.
    c = mfa_challenge(api, ct)
    done = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                    oob=outbox.last_code(phone), scope=SCOPE)
    assert done.status == 200 and "mfa" in claims_of(done["id_token"])["amr"]


def test_A11_no_second_factor_step_for_a_flow_whose_password_failed(api, outbox, make_user, require_mfa):
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    require_mfa(email)
    ct = password_challenge_ct(api, email)
    bad = password_grant(api, ct, "not the password at all")
    assert bad.status == 400 and bad["error_codes"] == [BAD_CREDENTIALS]
    for path, form in (("oauth2/v2.0/introspect", {}),
                       ("oauth2/v2.0/challenge", {"id": "m1"}),
                       ("oauth2/v2.0/token", {"grant_type": "mfa_oob", "oob": "123456", "scope": SCOPE}),
                       ("oauth2/v2.0/token", {"grant_type": "continuation_token", "scope": SCOPE}),
                       ("register/v1.0/challenge", {"challenge_type": "oob", "challenge_channel": "sms",
                                                    "challenge_target": random_phone()})):
        r = api.post(path, continuation_token=ct, **form)
        assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)
        assert_no_tokens(r)
    assert outbox.count(phone) == 0


def test_A11_reset_and_sign_up_steps_cannot_be_skipped(server, api, make_user):
    email, _ = make_user()
    s = api.post("resetpassword/v1.0/start", username=email, challenge_type="oob redirect")
    ct = s["continuation_token"]
    for path, form in (("resetpassword/v1.0/submit", {"new_password": NEW_PW}),
                       ("resetpassword/v1.0/poll_completion", {}),
                       ("oauth2/v2.0/token", {"grant_type": "continuation_token", "scope": SCOPE})):
        r = api.post(path, continuation_token=ct, **form)
        assert r.status == 400, (path, r.body)
        assert_no_tokens(r)
    new = unique_email("skip")
    s = api.post("signup/v1.0/start", username=new, challenge_type="oob password redirect", password=PW)
    for path, form in (("signup/v1.0/continue", {"grant_type": "password", "password": PW}),
                       ("oauth2/v2.0/token", {"grant_type": "continuation_token", "scope": SCOPE})):
        r = api.post(path, continuation_token=s["continuation_token"], **form)
        assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)
    assert password_first_factor(api, email).status == 200          # the old password still works
    assert directory.get_user(server.storage, new) is None          # no account was made


def test_A12_purpose_confusion_sign_up_code_elsewhere(api, outbox, make_user, require_mfa):
    """A sign-up email code presented at the reset, MFA, registration and
    sign-in endpoints is refused; it still works where it belongs."""
    address = unique_email("purpose")
    s = api.post("signup/v1.0/start", username=address, challenge_type="oob password redirect", password=PW)
    c = api.post("signup/v1.0/challenge", continuation_token=s["continuation_token"], challenge_type="oob password redirect")
    ct, code = c["continuation_token"], outbox.last_code(address)
    for path, form in (("resetpassword/v1.0/continue", {"grant_type": "oob"}),
                       ("oauth2/v2.0/token", {"grant_type": "oob", "scope": SCOPE}),
                       ("oauth2/v2.0/token", {"grant_type": "mfa_oob", "scope": SCOPE}),
                       ("register/v1.0/continue", {"grant_type": "oob"})):
        r = api.post(path, continuation_token=ct, oob=code, **form)
        assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)
        assert_no_tokens(r)
    # The same code in other flows that expect a code for this address:
    # a reset flow for the address (not yet an account) and an MFA challenge
    # whose method is this address.
    reset = reset_challenge(api, address)
    r = api.post("resetpassword/v1.0/continue", continuation_token=reset["continuation_token"], grant_type="oob", oob=code)
    assert r.status == 400 and r["error_codes"] == [WRONG_CODE]
    holder, _ = make_user(methods=[{"id": "m1", "channel": "email", "target": address, "default": True, "created": 1}])
    require_mfa(holder)
    t = password_first_factor(api, holder)
    m = mfa_challenge(api, t["continuation_token"])
    mfa_code = outbox.last_code(address)
    if mfa_code != code:
        r = api.post("oauth2/v2.0/token", continuation_token=m["continuation_token"], grant_type="mfa_oob", oob=code,
                     scope=SCOPE)
        assert r.status == 400 and r["error_codes"] == [WRONG_CODE]
        assert_no_tokens(r)
    done = api.post("signup/v1.0/continue", continuation_token=ct, grant_type="oob", oob=code)
    assert done.status == 200, done.body


def test_A12_purpose_confusion_reset_and_sign_in_codes(api, outbox, make_user):
    email, _ = make_user()
    reset = reset_challenge(api, email)
    reset_code = outbox.last_code(email)
    si = email_code_challenge(api, email)
    signin_code = outbox.last_code(email)
    # A reset token with its code at the sign-in token endpoint and at sign-up.
    for path, form in (("oauth2/v2.0/token", {"grant_type": "oob", "scope": SCOPE}),
                       ("signup/v1.0/continue", {"grant_type": "oob"})):
        r = api.post(path, continuation_token=reset["continuation_token"], oob=reset_code, **form)
        assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)
        assert_no_tokens(r)
    # The sign-in token with its code at the reset endpoint.
    r = api.post("resetpassword/v1.0/continue", continuation_token=si["continuation_token"], grant_type="oob",
                 oob=signin_code)
    assert r.status == 400 and r["error"] == "invalid_grant"
    # Each code in the other's flow.
    if reset_code != signin_code:
        r = api.post("oauth2/v2.0/token", continuation_token=si["continuation_token"], grant_type="oob", oob=reset_code,
                     scope=SCOPE)
        assert r.status == 400 and r["error_codes"] == [WRONG_CODE]
        assert_no_tokens(r)


# ====================================================================== A55: parallel guesses, side effects after the code is consumed

@pytest.mark.parametrize("kind", ["signin", "mfa", "register"])
def test_A55_the_right_code_in_a_burst_after_the_limit_answers_like_a_wrong_one(server, open_challenge, kind):
    """Four wrong codes used; then 12 wrong codes and the right one at once.
    The right one either wins (it was judged while a try was left) or gets the
    same answer as the wrong ones after the limit: never a distinct answer."""
    for attempt in range(3):
        ch = open_challenge(kind)
        right = ch.code()
        for _ in range(server.settings.code_max_attempts - 1):
            assert ch.submit(wrong(right)).status == 400
        guesses = [wrong(right)] * 6 + [right] + [wrong(right)] * 6
        results = parallel(len(guesses), lambda i: ch.submit(guesses[i]))
        mine = results[6]
        others = {tuple(r["error_codes"]) for i, r in enumerate(results) if i != 6}
        if not ch.succeeded(mine):
            assert mine.status == 400 and mine["error_codes"] == [DEAD_CHALLENGE], mine.body
            assert_no_tokens(mine)
            assert others <= {(WRONG_CODE,), (DEAD_CHALLENGE,)}, others
        # (After a success the challenge is gone: the rest are refused as for a used token.)
        assert sum(ch.succeeded(r) for r in results) <= 1


@contextlib.contextmanager
def before_a_flow_write(monkeypatch, matches: Callable[[dict], bool], act: Callable[[Any, dict], None]):
    """``act(table, entity)`` runs once, just before the first update of a
    flow row whose entity ``matches`` (its own writes pass through): in the flows
    table, or a sign-in's or reset's in its address's partition of the users table (A116)."""
    from shared.storage import tables as storage_mod

    real, real_batch = storage_mod.Table.update, storage_mod.Table.batch
    state = {"armed": True, "fired": 0}

    def before(table, entity):
        is_flow = table.name.endswith("flows") or (table.name.endswith("users") and entity.get("RowKey") != "user")
        if state["armed"] and is_flow and matches(entity):
            state["armed"] = False
            state["fired"] += 1
            act(table, entity)

    def update(self, entity, etag=None, **kwargs):
        before(self, entity)
        return real(self, entity, etag, **kwargs)

    def batch(self, operations):     # a flow's write in one transaction with its account's (A116)
        operations = list(operations)
        for op, entity in operations:
            if op == "update":
                before(self, entity)
        return real_batch(self, operations)

    monkeypatch.setattr(storage_mod.Table, "update", update)
    monkeypatch.setattr(storage_mod.Table, "batch", batch)
    try:
        yield state
    finally:
        monkeypatch.setattr(storage_mod.Table, "update", real)
        monkeypatch.setattr(storage_mod.Table, "batch", real_batch)


def first_flow_write_fails(monkeypatch):
    """The next write to the flows table fails (storage gone at that moment)."""
    from shared.storage.tables import StorageUnavailable

    def fail(table, entity):
        raise StorageUnavailable("injected")

    return before_a_flow_write(monkeypatch, lambda entity: True, fail)


def test_A55_no_method_is_saved_before_its_code_is_consumed(server, api, outbox, make_user, require_mfa, monkeypatch):
    email, _ = make_user()
    require_mfa(email)
    r = password_first_factor(api, email)
    phone = random_phone()
    c = api.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target=phone)
    code = outbox.last_code(phone)
    with first_flow_write_fails(monkeypatch):
        failed = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob=code)
    assert failed.status == 503, failed.body
    assert methods_of(server, email) == []                  # nothing saved while the code was not consumed
    retry = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob=code)
    assert retry.status == 200, retry.body
    assert methods_of(server, email) == [("sms", phone)]


def test_A55_no_account_is_created_before_its_code_is_consumed(server, api, outbox, monkeypatch):
    email = unique_email("consume")
    s = api.post("signup/v1.0/start", username=email, challenge_type="oob password redirect", password=NEW_PW)
    c = api.post("signup/v1.0/challenge", continuation_token=s["continuation_token"], challenge_type="oob password redirect")
    code = outbox.last_code(email)
    with first_flow_write_fails(monkeypatch):
        failed = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob=code)
    assert failed.status == 503, failed.body
    assert directory.get_user(server.storage, email) is None
    retry = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob=code)
    assert retry.status == 200, retry.body
    assert directory.get_user(server.storage, email) is not None


def test_A55_a_used_code_is_not_accepted_again_after_it_expires(server, api, outbox, make_user, policies, shift):
    """A right code consumed by a request that then failed (claims wider than
    the flow started with) may be repeated by the same request, but only
    while the code is still valid."""
    phone = random_phone()
    email, _ = make_user(methods=[sms_method(phone)])
    policies(assignments={"users": {"include": [email]}}, grant={"require_second_factor": True})
    r = password_first_factor(api, email)
    c = mfa_challenge(api, r["continuation_token"])
    code = outbox.last_code(phone)
    wider = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob", oob=code,
                     scope=SCOPE, claims=json.dumps({"access_token": {"acrs": {"essential": True, "value": "c9"}}}))
    assert wider.status == 400 and wider["error"] == "invalid_request", wider.body
    shift(flows).offset = server.settings.code_ttl_seconds + 5
    late = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob", oob=code,
                    scope=SCOPE)
    assert late.status == 400 and late["error"] == "invalid_grant", late.body
    assert_no_tokens(late)



# ====================================================================== A112: the code consumed by the step's own write

def another_guess_counted(table, pk: str, rk: str) -> None:
    """Another request's wrong guess, counted on the flow (as redeem_code does)."""
    row = table.get(pk, rk)
    table.update({"PartitionKey": pk, "RowKey": rk, "code_attempts": int(row.get("code_attempts") or 0) + 1},
                 row["_etag"])


def a_wrong_guess_lands_first(monkeypatch):
    """Just before the write that would consume a right code (a flow update
    touching ``code_used`` and not counting an attempt), another guess's
    attempt is written on the same flow: the race a burst produces, made certain."""
    return before_a_flow_write(monkeypatch, lambda entity: "code_used" in entity and "code_attempts" not in entity,
                               lambda table, entity: another_guess_counted(table, entity["PartitionKey"],
                                                                           entity["RowKey"]))


@pytest.mark.parametrize("kind", ["signin", "mfa", "reset", "signup", "register"])
def test_A112_a_right_code_whose_write_loses_a_race_is_judged_again(server, open_challenge, monkeypatch, kind):
    """Sign-in and reset codes are consumed by the step's own conditional write
    (one round trip). When another guess changes the flow first, that write
    fails and the code is judged again on the flow as it is now: with tries
    left it succeeds once; with the limit reached meanwhile it gets the answer
    every wrong code gets (never a distinct one, A55)."""
    ch = open_challenge(kind)
    with a_wrong_guess_lands_first(monkeypatch) as race:
        won = ch.submit(ch.code())
    assert race["fired"] == 1
    assert ch.succeeded(won), won.body
    again = ch.submit(ch.code())
    assert not ch.succeeded(again) and again.status == 400, again.body   # still single use

    ch = open_challenge(kind)
    right = ch.code()
    for _ in range(server.settings.code_max_attempts - 1):
        assert ch.submit(wrong(right))["error_codes"] == [WRONG_CODE]
    with a_wrong_guess_lands_first(monkeypatch) as race:
        lost = ch.submit(right)                                # judged with one try left; the race took it
    assert race["fired"] == 1
    assert lost.status == 400 and lost["error_codes"] == [DEAD_CHALLENGE], lost.body
    assert_no_tokens(lost)
    assert ch.submit(right)["error_codes"] == [DEAD_CHALLENGE]
    if kind == "signup":     # the account is made in the same transaction as the code's consumption (A116)
        assert directory.get_user(server.storage, ch.email) is None
    if kind == "register":   # and so is a method saved (A116)
        assert ch.target not in [m["target"] for m in directory.get_user(server.storage, ch.email).methods]


@pytest.mark.parametrize("kind", ["signin", "mfa", "reset", "signup", "register"])
def test_A112_a_storage_failure_at_the_consuming_write_leaves_the_code_usable(server, open_challenge, monkeypatch,
                                                                            kind):
    """The write that consumes the code is the step's own: when it fails, nothing
    was consumed, issued or advanced, and the same request then succeeds once."""
    ch = open_challenge(kind)
    code = ch.code()
    with first_flow_write_fails(monkeypatch):
        failed = ch.submit(code)
    assert failed.status == 503, failed.body
    assert_no_tokens(failed)
    retry = ch.submit(code)
    assert ch.succeeded(retry), retry.body
    assert not ch.succeeded(ch.submit(code))


def _bad_claims(kind: str) -> str:
    # An email-code sign-in has not fixed its contexts yet: malformed claims are refused in the gate. A
    # second factor's contexts were fixed at the first factor: asking for another one is refused there.
    return context_claims("c9zz") if kind == "mfa" else "{not json"


@pytest.mark.parametrize("kind", ["signin", "mfa"])
def test_A112_a_right_code_refused_before_its_write_is_still_judged_against_the_limit(server, open_challenge,
                                                                                   monkeypatch, kind):
    """The gate may refuse a right code before the write that would consume it
    (claims the attacker chose, a block policy). That answer must not reveal a
    right code the limit has meanwhile killed: another guess lands while the
    gate runs, and the right code then gets 50053 like every wrong one. With
    tries left, the refusal is answered and the code is consumed, as a code
    consumed before the gate always was (a retry of the same code continues)."""
    from shared.security import gate as gate_mod

    def submit(ch, code, **extra):
        grant = "mfa_oob" if kind == "mfa" else "oob"
        return server.api.post("oauth2/v2.0/token", continuation_token=ch.ct, grant_type=grant, oob=code,
                               scope=SCOPE, client_info="1", **extra)

    ch = open_challenge(kind)
    right = ch.code()
    refused = submit(ch, right, claims=_bad_claims(kind))
    assert refused.status == 400 and refused["error"] == "invalid_request", refused.body
    assert ch.succeeded(submit(ch, right))                                # consumed, and the same code continues

    ch = open_challenge(kind)
    right = ch.code()
    for _ in range(server.settings.code_max_attempts - 1):
        assert submit(ch, wrong(right))["error_codes"] == [WRONG_CODE]
    real = gate_mod._flow_contexts
    fired = []

    def guess_lands(flow, form):
        if not fired:
            fired.append(1)
            another_guess_counted(server.storage.table(flow.table), flow.pk, flow.id)
        return real(flow, form)

    monkeypatch.setattr(gate_mod, "_flow_contexts", guess_lands)
    lost = submit(ch, right, claims=_bad_claims(kind))
    monkeypatch.setattr(gate_mod, "_flow_contexts", real)
    assert fired
    assert lost.status == 400 and lost["error_codes"] == [DEAD_CHALLENGE], lost.body
    assert submit(ch, wrong(right), claims=_bad_claims(kind))["error_codes"] == [DEAD_CHALLENGE]
    assert submit(ch, right)["error_codes"] == [DEAD_CHALLENGE]


def test_A116_a_method_whose_account_changed_meanwhile_is_saved_on_the_account_as_it_is_now(server, open_challenge,
                                                                                          monkeypatch):
    """A method is saved in one transaction with the flow's write that consumes its code: when the account's row
    changed between the step's read and that write (an admin, another device), the transaction fails on the
    account's row only (the service names it), the change is computed again on the row as it is now (one read)
    and written with the flow's step: the step succeeds once, and the other change is kept."""
    from shared.flows import state

    kind = "register"
    ch = open_challenge(kind)
    code = ch.code()
    reads = []
    real_read = state.get_user_by_key
    monkeypatch.setattr(state, "get_user_by_key", lambda storage, pk: reads.append(pk) or real_read(storage, pk))

    def admin_edits(table, entity):
        fresh = directory.get_user(server.storage, ch.email)
        directory.update_user(server.storage, fresh, display_name="edited meanwhile")

    with before_a_flow_write(monkeypatch, lambda entity: "code_used" in entity and "code_attempts" not in entity,
                             admin_edits) as race:
        r = ch.submit(code)
    assert race["fired"] == 1 and ch.succeeded(r), r.body
    assert len(reads) == 1            # the account read again once: the transaction named the account's row
    u = directory.get_user(server.storage, ch.email)
    assert u.display_name == "edited meanwhile" and ch.target in [m["target"] for m in u.methods]


def test_A116_a_reset_submit_whose_step_lost_saves_no_password(server, api, outbox, make_user, monkeypatch):
    """Two submits of one verified reset, with different passwords: the one whose step wins sets its password,
    the other one, refused, saves nothing (its password and the step are one transaction; review finding: the
    refused submit's password had been saved over the winner's)."""
    from shared.security import passwords
    from shared.storage import tables as storage_mod

    email, _ = make_user()
    c = reset_challenge(api, email)
    v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    assert v.status == 200, v.body
    ct, other = v["continuation_token"], "yet another different passphrase 42"
    real = storage_mod.Table.batch
    seen, armed = {}, [True]

    def the_other_submit_lands_first(self, operations):
        operations = list(operations)
        if armed[0] and self.name.endswith("users"):
            armed[0] = False
            seen["b"] = api.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=other)
        return real(self, operations)

    monkeypatch.setattr(storage_mod.Table, "batch", the_other_submit_lands_first)
    a = api.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=NEW_PW)
    monkeypatch.setattr(storage_mod.Table, "batch", real)
    assert seen["b"].status == 200, seen["b"].body
    assert a.status == 400 and a["error"] == "invalid_grant", a.body
    stored = directory.get_user(server.storage, email).password_hash
    assert passwords.verify_password(stored, other) and not passwords.verify_password(stored, NEW_PW)


def test_A116_no_extension_hears_of_a_sign_up_before_its_code_is_consumed(server, open_challenge, monkeypatch):
    """With an attributeCollectionStart extension, a right sign-up code is consumed by a write of its own before
    the extension is called: a right code that loses to the attempt limit meanwhile answers like a wrong one,
    makes no account and never reaches the extension (review finding: it had, a side effect and a timing tell)."""
    from shared.extensions import config as extension_config, events as extension_events

    ch = open_challenge("signup")
    right = ch.code()
    for _ in range(server.settings.code_max_attempts - 1):
        assert ch.submit(wrong(right))["error_codes"] == [WRONG_CODE]
    calls = []
    real_for_event = extension_config.for_event
    monkeypatch.setattr(extension_config, "for_event", lambda storage, event, client_id: (
        {"name": "probe", "on_error": "fail"} if event == "attributeCollectionStart"
        else real_for_event(storage, event, client_id)))
    monkeypatch.setattr(extension_events, "attribute_collection_start",
                        lambda storage, settings, client_id, email, attributes, **kw: calls.append(email) or {})
    with a_wrong_guess_lands_first(monkeypatch) as race:
        lost = ch.submit(right)
    assert race["fired"] == 1
    assert lost.status == 400 and lost["error_codes"] == [DEAD_CHALLENGE], lost.body
    assert calls == [] and directory.get_user(server.storage, ch.email) is None


@pytest.mark.parametrize("kind", ["signup", "register"])
def test_A116_an_answer_lost_after_the_commit_is_a_503(server, open_challenge, monkeypatch, kind):
    """The transaction that consumes the code and makes the account (or saves the method) commits, but its
    answer is lost: the client gets 503 (try again), not a refusal made up from the flow having moved on (review
    finding), and the account or the method exists once."""
    from shared.storage import tables as storage_mod

    ch = open_challenge(kind)
    real = storage_mod.Table.batch
    armed = [True]

    def commits_then_loses_the_answer(self, operations):
        etags = real(self, list(operations))
        if armed[0] and self.name.endswith("users"):
            armed[0] = False
            raise storage_mod.StorageUnavailable("the answer was lost")
        return etags

    monkeypatch.setattr(storage_mod.Table, "batch", commits_then_loses_the_answer)
    r = ch.submit(ch.code())
    monkeypatch.setattr(storage_mod.Table, "batch", real)
    assert r.status == 503, r.body
    u = directory.get_user(server.storage, ch.email)
    assert u is not None
    if kind == "register":
        assert [m["target"] for m in u.methods].count(ch.target) == 1
