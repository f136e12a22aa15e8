"""Sign-in over HTTP (contract §3.4–3.6, §5.1, §5.5): password and email-code
first factors, every error the SDKs branch on, resend, attempt limits,
replay, token binding, lockout and enumeration protection."""

from __future__ import annotations

import base64
import json
import threading
import time

import jwt
import pytest

from shared.storage import directory

from conftest import unique_email

PW = "correct horse battery staple"
SCOPE = "openid profile offline_access"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def start(api, email: str, types: str = "password oob redirect", **extra):
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type=types, **extra)
    assert r.status == 200, r.body
    assert set(r.body) == {"continuation_token"}
    return r["continuation_token"]


def challenge(api, ct: str, types: str = "password oob redirect"):
    return api.post("oauth2/v2.0/challenge", continuation_token=ct, challenge_type=types)


def email_code_flow(api, email: str):
    r = challenge(api, start(api, email, "oob redirect"), "oob redirect")
    assert r.status == 200, r.body
    return r


def redeem(api, ct: str, code: str, grant: str = "oob"):
    return api.post("oauth2/v2.0/token", continuation_token=ct, grant_type=grant, oob=code, scope=SCOPE, client_info="1")


def flow_entity(server, ct: str) -> dict:
    """The stored record of a token's flow (None while a sealed start token's is not stored yet)."""
    from shared.flows import state

    pk, rk, _, _ = state._parts(server.settings, ct)
    return server.storage.table(state._table_of(pk)).get(pk, rk)


def flow_record(server, ct: str) -> dict:
    """The record of a token's flow: stored, or carried by a sealed start token."""
    from shared.flows import state

    pk, rk, _, sealed = state._parts(server.settings, ct)
    return server.storage.table(state._table_of(pk)).get(pk, rk) or sealed


def edit_flow(server, ct: str, **changes) -> None:
    from shared.flows import state

    e = flow_entity(server, ct)
    server.storage.table(state._table_of(e["PartitionKey"])).update({**e, **changes})


def assert_token_set(r, email: str, amr: list[str]):
    assert r.status == 200, r.body
    assert r["token_type"] == "Bearer" and r["expires_in"] > 0
    for key in ("access_token", "id_token", "refresh_token", "client_info"):
        assert r[key], key
    idt = claims(r["id_token"])
    assert idt["preferred_username"] == email and idt["amr"] == amr
    info = json.loads(base64.urlsafe_b64decode(r["client_info"] + "=="))
    assert info["uid"] == idt["oid"] and info["utid"] == idt["tid"]
    return idt


# ---------------------------------------------------------------- password

def test_password_sign_in(api, make_user):
    email, user = make_user()
    r = api.signin_password(email, PW)
    idt = assert_token_set(r, email, ["pwd"])
    assert idt["oid"] == user.oid and idt["acr"] == "1" and abs(idt["auth_time"] - time.time()) < 60


def test_username_is_case_insensitive(api, make_user):
    email, _ = make_user()
    assert api.signin_password(email.upper(), PW).status == 200


def test_wrong_password_then_right_password_with_the_same_token(api, make_user):
    email, _ = make_user()
    ct = challenge(api, start(api, email))["continuation_token"]
    bad = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password="nope", scope=SCOPE)
    assert bad.status == 400 and bad["error"] == "invalid_grant" and bad["error_codes"] == [50126]
    good = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password=PW, scope=SCOPE)
    assert_token_set(good, email, ["pwd"])


def test_challenge_answers_password_for_password_users(api, make_user):
    email, _ = make_user()
    r = challenge(api, start(api, email))
    assert r.status == 200 and r["challenge_type"] == "password" and r["continuation_token"]


def test_each_step_rotates_the_continuation_token(api, make_user):
    email, _ = make_user()
    ct1 = start(api, email)
    ct2 = challenge(api, ct1)["continuation_token"]
    assert ct1 != ct2
    again = challenge(api, ct1)
    assert again.status == 400 and again["error"] == "invalid_grant"


def test_continuation_token_is_opaque_and_long(api, make_user):
    email, _ = make_user()
    ct = start(api, email)
    secret = ct.split(".")[-1]
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) * 8 >= 256
    assert email.split("@")[0] not in ct


def test_only_a_hash_of_the_token_is_stored(server, api, make_user):
    email, _ = make_user()
    ct = start(api, email)
    assert flow_entity(server, ct) is None          # a start stores nothing (A115): the token carries it
    c = challenge(api, ct)
    assert c.status == 200, c.body
    entity = flow_entity(server, c["continuation_token"])
    stored = json.dumps(entity, default=str)
    assert c["continuation_token"].split(".")[-1] not in stored and ct.split(".")[-1] not in stored
    assert email not in ct and email.split("@")[0] not in c["continuation_token"]


def test_password_reset_required_is_50142(api, make_user):
    email, _ = make_user(password_reset_required=True)
    r = api.signin_password(email, PW)
    assert r.status == 400 and r["error"] == "invalid_request" and 50142 in r["error_codes"]


def test_lockout_answers_like_a_wrong_password(server, api, make_user):
    email, _ = make_user()
    threshold = server.settings.lockout_threshold
    for _ in range(threshold):
        r = api.signin_password(email, "wrong password")
        assert r["error_codes"] == [50126]
    user = directory.get_user(server.storage, email)
    assert user.locked_until() > time.time()
    locked = api.signin_password(email, PW)  # the right password during lockout
    assert locked.status == 400 and locked["error"] == "invalid_grant" and locked["error_codes"] == [50126]
    directory.update_user(server.storage, user, lockout_until=0)
    ok = api.signin_password(email, PW)
    assert ok.status == 200
    assert directory.get_user(server.storage, email).entity["failed_logins"] == 0


def test_lockout_grows_progressively(server, api, make_user):
    email, _ = make_user()
    threshold = server.settings.lockout_threshold
    for _ in range(threshold):
        api.signin_password(email, "wrong")
    user = directory.get_user(server.storage, email)
    first = user.locked_until() - time.time()
    api.signin_password(email, "wrong")  # during the lockout: refused unchecked, not counted
    assert directory.get_user(server.storage, email).entity["failed_logins"] == threshold
    directory.update_user(server.storage, user, lockout_until=int(time.time()) - 1)  # the lock runs out
    api.signin_password(email, "wrong")
    second = directory.get_user(server.storage, email).locked_until() - time.time()
    assert second > first * 1.5


def test_huge_password_is_refused_without_error(api, make_user):
    email, _ = make_user()
    r = api.signin_password(email, "x" * 5000)
    assert r.status == 400 and r["error_codes"] == [50126]


def test_password_is_not_truncated(api, make_user):
    long_pw = "p" * 80
    email, _ = make_user(password=long_pw)
    assert api.signin_password(email, long_pw[:72]).status == 400
    assert api.signin_password(email, long_pw).status == 200


# ---------------------------------------------------------------- enumeration

def test_unknown_user_with_protection_looks_like_a_wrong_password(api, make_user):
    known, _ = make_user()
    a = api.signin_password(known, "wrong password")
    b = api.signin_password(unique_email("ghost"), "wrong password")
    assert a.status == b.status == 400
    strip = lambda body: {k: v for k, v in body.items() if k not in ("error_description", "timestamp", "trace_id", "correlation_id")}  # noqa: E731
    assert strip(a.body) == strip(b.body)


def test_unknown_user_email_code_is_never_sent(api, outbox):
    ghost = unique_email("ghost")
    r = email_code_flow(api, ghost)
    assert r["challenge_type"] == "oob" and r["code_length"] == 8
    assert outbox.count(ghost) == 0
    bad = redeem(api, r["continuation_token"], "12345678")
    assert bad.status == 400 and bad["suberror"] == "invalid_oob_value"


def test_protection_off_gives_user_not_found(server, api):
    with server.override(enumeration_protection=False):
        r = api.post("oauth2/v2.0/initiate", username=unique_email("ghost"), challenge_type="password redirect")
    assert r.status == 400 and r["error"] == "user_not_found" and 50034 in r["error_codes"]


# ---------------------------------------------------------------- challenge types and capabilities

@pytest.mark.parametrize("types", ["password oob", "password", "password oob sms redirect", "otp redirect"])
def test_challenge_type_lists_must_be_known_and_contain_redirect(api, types):
    r = api.post("oauth2/v2.0/initiate", username="a@example.com", challenge_type=types)
    assert r.status == 400 and r["error"] == "unsupported_challenge_type"
    assert "The challenge_type list parameter contains an unsupported challenge type" in r["error_description"]


def test_missing_challenge_type_is_invalid_request(api):
    r = api.post("oauth2/v2.0/initiate", username="a@example.com")
    assert r.status == 400 and r["error"] == "invalid_request"


def test_passwordless_user_with_a_password_only_client_gets_redirect(api, make_user):
    email, _ = make_user(password=None)
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect")
    assert r.status == 200 and r["challenge_type"] == "redirect" and r["redirect_reason"]


@pytest.mark.parametrize("field,value", [
    ("capabilities", "mfa_required registration_required"),
    ("capability", "registration_required,mfa_required"),
    ("capabilities", "mfa_required,registration_required"),
])
def test_both_capability_spellings_and_separators(server, api, make_user, field, value):
    email, _ = make_user()
    ct = start(api, email, **{field: value})
    assert set(json.loads(flow_record(server, ct)["capabilities"])) == {"mfa_required", "registration_required"}


@pytest.mark.parametrize("bad", ["", "not-an-email", "a@b", "a@@example.com", "аdmin@example.com", "a b@example.com"])
def test_invalid_username_is_90100(api, bad):
    r = api.post("oauth2/v2.0/initiate", username=bad, challenge_type="password redirect")
    assert r.status == 400 and r["error"] == "invalid_request" and r["error_codes"] == [90100]


# ---------------------------------------------------------------- email code

def test_email_code_sign_in(api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    assert r["challenge_type"] == "oob" and r["binding_method"] == "prompt" and r["challenge_channel"] == "email"
    assert r["code_length"] == 8 and "*" in r["challenge_target_label"] and email not in r["challenge_target_label"]
    assert "interval" in r.body
    code = outbox.last_code(email)
    assert len(code) == 8 and code.isdigit()
    assert_token_set(redeem(api, r["continuation_token"], code), email, ["otp"])


def test_password_user_with_an_oob_only_client_gets_an_email_code(api, make_user, outbox):
    email, _ = make_user()
    r = email_code_flow(api, email)
    assert r["challenge_type"] == "oob"
    assert redeem(api, r["continuation_token"], outbox.last_code(email)).status == 200


def test_code_is_stored_only_as_a_keyed_hash(server, api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    code = outbox.last_code(email)
    entity = flow_entity(server, r["continuation_token"])
    assert code not in json.dumps(entity, default=str)
    import hashlib
    assert hashlib.sha256(code.encode()).hexdigest() != entity["code_hash"]


def test_wrong_code_then_right_code_with_the_same_token(api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    code = outbox.last_code(email)
    wrong = str((int(code) + 1) % 10 ** 8).zfill(8)
    bad = redeem(api, r["continuation_token"], wrong)
    assert bad.status == 400 and bad["error"] == "invalid_grant" and bad["suberror"] == "invalid_oob_value"
    assert redeem(api, r["continuation_token"], code).status == 200


def test_resend_issues_a_new_code_and_kills_the_old_one(api, make_user, outbox):
    email, _ = make_user(password=None)
    first = email_code_flow(api, email)
    old = outbox.last_code(email)
    again = challenge(api, first["continuation_token"], "oob redirect")
    assert again.status == 200 and again["challenge_type"] == "oob"
    new = outbox.last_code(email)
    assert outbox.count(email) == 2
    if new != old:  # a 1 in 10^8 chance that the fresh code equals the old one
        assert redeem(api, again["continuation_token"], old)["suberror"] == "invalid_oob_value"
    assert redeem(api, again["continuation_token"], new).status == 200


def test_resend_interval_is_honoured(server, api, make_user, outbox):
    email, _ = make_user(password=None)
    with server.override(resend_interval_seconds=60):
        r = email_code_flow(api, email)
        assert r["interval"] == 60
        again = challenge(api, r["continuation_token"], "oob redirect")
    assert again.status == 400 and again["error"] == "slow_down" and int(again.headers["retry-after"]) > 0
    assert outbox.count(email) == 1


def test_five_wrong_codes_kill_the_challenge(api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    ct, code = r["continuation_token"], outbox.last_code(email)
    wrong = str((int(code) + 1) % 10 ** 8).zfill(8)
    for _ in range(5):
        assert redeem(api, ct, wrong)["error_codes"] == [50181]
    sixth = redeem(api, ct, wrong)
    assert sixth.status == 400 and sixth["error_codes"] == [50053]
    assert redeem(api, ct, code)["error_codes"] == [50053]  # the right code is dead too


def test_wrong_codes_count_per_account_across_resends(server, api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    ct = r["continuation_token"]
    for _ in range(3):
        redeem(api, ct, "00000000" if outbox.last_code(email) != "00000000" else "11111111")
    ct = challenge(api, ct, "oob redirect")["continuation_token"]  # resend
    for _ in range(2):
        redeem(api, ct, "00000000" if outbox.last_code(email) != "00000000" else "11111111")
    assert directory.get_user(server.storage, email).entity["code_failures_email"] == 5
    # A brand-new flow does not reset it either.
    email_code_flow(api, email)
    assert directory.get_user(server.storage, email).entity["code_failures_email"] == 5


def test_account_code_failure_ceiling_disables_email_codes(server, api, make_user, outbox):
    email, user = make_user(password=None)
    directory.update_user(server.storage, user, code_failures_email=server.settings.account_max_code_failures)
    r = email_code_flow(api, email)
    denied = redeem(api, r["continuation_token"], outbox.last_code(email))
    assert denied.status == 400 and denied["error_codes"] == [50053]


def test_expired_code_is_rejected(server, api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    edit_flow(server, r["continuation_token"], code_expires=int(time.time()) - 1)
    bad = redeem(api, r["continuation_token"], outbox.last_code(email))
    assert bad.status == 400 and bad["suberror"] == "invalid_oob_value" and "expired" in bad["error_description"]


def test_used_code_and_used_token_are_dead(api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    code = outbox.last_code(email)
    assert redeem(api, r["continuation_token"], code).status == 200
    replay = redeem(api, r["continuation_token"], code)
    assert replay.status == 400 and replay["error"] == "invalid_grant"


def test_parallel_correct_codes_yield_exactly_one_token_set(api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    ct, code = r["continuation_token"], outbox.last_code(email)
    results = []
    barrier = threading.Barrier(10)

    def go():
        barrier.wait()
        results.append(redeem(api, ct, code))

    threads = [threading.Thread(target=go) for _ in range(10)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(1 for x in results if x.status == 200) == 1
    assert all(x.status == 400 for x in results if x.status != 200)


def test_parallel_wrong_codes_never_pass_the_limit(api, make_user, outbox):
    email, _ = make_user(password=None)
    r = email_code_flow(api, email)
    ct, code = r["continuation_token"], outbox.last_code(email)
    wrong = str((int(code) + 1) % 10 ** 8).zfill(8)
    results = []
    barrier = threading.Barrier(20)

    def go():
        barrier.wait()
        results.append(redeem(api, ct, wrong))

    threads = [threading.Thread(target=go) for _ in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    counted = [x for x in results if x.status == 400 and x.body.get("error_codes") == [50181]]
    assert len(counted) <= 5
    assert all(x.status == 400 for x in results)
    assert redeem(api, ct, code)["error_codes"] == [50053]


# ---------------------------------------------------------------- binding

def test_code_from_another_flow_of_the_same_user_is_rejected(api, make_user, outbox):
    email, _ = make_user(password=None)
    x = email_code_flow(api, email)
    code_x = outbox.last_code(email)
    y = email_code_flow(api, email)
    code_y = outbox.last_code(email)
    if code_x != code_y:
        assert redeem(api, y["continuation_token"], code_x)["suberror"] == "invalid_oob_value"
    assert redeem(api, x["continuation_token"], code_x).status == 200


def test_tokens_of_one_user_do_not_work_with_another_users_code(api, make_user, outbox):
    a, _ = make_user(password=None)
    b, _ = make_user(password=None)
    fa = email_code_flow(api, a)
    email_code_flow(api, b)
    code_b = outbox.last_code(b)
    r = redeem(api, fa["continuation_token"], code_b)
    if code_b != outbox.last_code(a):
        assert r.status == 400


def _reverse_middle(t: str) -> str:
    parts = t.split(".")
    if len(parts) == 3:
        return parts[0] + "." + parts[1][::-1] + "." + parts[2]
    blob = parts[1]
    return parts[0] + "." + blob[:20] + blob[20:60][::-1] + blob[60:]


@pytest.mark.parametrize("which", ["start", "stored"])
@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
    _reverse_middle,
    lambda t: "garbage",
    lambda t: t + "x",
    lambda t: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    lambda t: "s2." + t.split(".")[-1] if not t.startswith("s2.") else "s2." + "A" * 120,
])
def test_tampered_tokens_are_invalid_grant(api, make_user, mutate, which):
    email, _ = make_user()
    ct = start(api, email)
    if which == "stored":       # the password step's token: its record is stored
        r = challenge(api, ct)
        assert r.status == 200, r.body
        r = api.post("oauth2/v2.0/token", continuation_token=mutate(r["continuation_token"]), grant_type="password",
                     password=PW, scope=SCOPE)
    else:                       # the sealed start token (A115)
        r = challenge(api, mutate(ct))
    assert r.status == 400 and r["error"] == "invalid_grant"


def test_token_is_bound_to_its_client(server, api, make_user):
    email, _ = make_user()
    ct = start(api, email)
    directory.register_client(server.storage, "22222222-0000-0000-0000-000000000002", "other app")
    r = api.post("oauth2/v2.0/challenge", client_id="22222222-0000-0000-0000-000000000002", continuation_token=ct,
                 challenge_type="password redirect")
    assert r.status == 400 and r["error"] == "invalid_grant"


def test_expired_flow_is_expired_token(server, api, make_user):
    email, _ = make_user()
    ct = challenge(api, start(api, email))["continuation_token"]
    edit_flow(server, ct, expires_at=int(time.time()) - 1)
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password=PW, scope=SCOPE)
    assert r.status == 400 and r["error"] == "expired_token"


def test_an_expired_start_token_is_expired_token(server, api, make_user):
    """A sealed start token carries its flow's expiry, sealed with it (A115)."""
    from shared.flows import state

    email, _ = make_user()
    record, secret = state._unseal(server.settings, start(api, email))
    started = time.time() - 1000         # a start 16 minutes ago, its 15 minutes over
    old = state._seal(server.settings, {**record, "started": started, "expires_at": int(started) + 900}, secret)
    r = challenge(api, old)
    assert r.status == 400 and r["error"] == "expired_token"


def test_step_skipping_is_refused(api, make_user):
    email, _ = make_user()
    ct = start(api, email)  # no challenge yet
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password=PW, scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_grant"
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_grant"


def test_password_grant_on_an_email_code_flow_is_refused(api, make_user):
    email, _ = make_user()
    r = email_code_flow(api, email)
    bad = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password",
                   password=PW, scope=SCOPE)
    assert bad.status == 400 and bad["error"] == "invalid_grant"


# ---------------------------------------------------------------- token endpoint errors

def test_token_endpoint_errors(api, make_user):
    email, _ = make_user()
    ct = challenge(api, start(api, email))["continuation_token"]
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="magic", scope=SCOPE)
    assert r.status == 400 and r["error"] == "unsupported_grant_type"
    r = api.post("oauth2/v2.0/token", continuation_token=ct, password=PW, scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_request"
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password=PW, scope="openid api://unknown/x")
    assert r.status == 400 and r["error"] == "invalid_scope"
    r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_request"
    # Still usable after all those mistakes.
    ok = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password=PW, scope=SCOPE, client_info="1")
    assert ok.status == 200


def test_native_clients_always_get_id_and_refresh_tokens(api, make_user):
    email, _ = make_user()
    r = api.signin_password(email, PW, scope="api://native-auth/access_as_user")
    assert r.status == 200 and r["id_token"] and r["refresh_token"]
    assert claims(r["access_token"])["aud"] == "api://native-auth"


# ---------------------------------------------------------------- purge

def test_purge_removes_expired_state(server, api, make_user):
    from shared.storage import maintenance

    email, _ = make_user()
    ct = start(api, email)
    rt = api.signin_password(email, PW)["refresh_token"]
    later = time.time() + 200 * 86400
    counts = maintenance.purge_expired(server.settings, now=later)
    assert counts["flows"] >= 1 and counts["refresh"] >= 1
    # Each run deletes a bounded batch (the timer runs every 5 minutes); the suite leaves thousands of flows.
    for _ in range(200):
        if not any(maintenance.purge_expired(server.settings, now=later, batch=5000).values()):
            break
    assert flow_entity(server, ct) is None
    pk, rk, _ = rt.split(".")
    assert server.storage.table("refresh").get(pk, rk) is None


def test_purge_timer_runs_and_keeps_live_state(server, api, make_user):
    email, _ = make_user()
    ct = start(api, email)
    server.host.invoke_timer("purge_expired")
    r = challenge(api, ct)                              # the start token still works
    assert r.status == 200, r.body
    server.host.invoke_timer("purge_expired")
    assert flow_entity(server, r["continuation_token"]) is not None


@pytest.mark.parametrize("how", ["ui_locales", "accept-language"])
def test_codes_are_sent_in_the_requested_language(api, make_user, outbox, how):
    email, _ = make_user(password=None)
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    extra = {"ui_locales": "de-DE"} if how == "ui_locales" else {}
    headers = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"} if how == "accept-language" else None
    api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect",
             headers=headers, **extra)
    message = outbox.messages(email)[-1]
    assert message["locale"] == "de", message
    assert message["subject"] != outbox_english_subject(api, make_user, outbox)


def outbox_english_subject(api, make_user, outbox) -> str:
    email, _ = make_user(password=None)
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect")
    return outbox.messages(email)[-1]["subject"]
