"""Self-service password reset over HTTP (contract §3.11–3.15, §5.7)."""

from __future__ import annotations

import time

import jwt
import pytest

from shared.security import policy
from shared.storage import directory

from conftest import unique_email

OLD = "correct horse battery staple"
NEW = "a completely different passphrase"
SCOPE = "openid profile offline_access"
TYPES = "oob redirect"


def reset_to_verified(api, outbox, email, caps=None):
    r = api.post("resetpassword/v1.0/start", username=email, challenge_type=TYPES, capabilities=caps)
    assert r.status == 200, r.body
    c = api.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type=TYPES)
    assert c.status == 200 and c["challenge_type"] == "oob" and c["challenge_channel"] == "email", c.body
    assert c["code_length"] == 8 and c["challenge_target_label"] and c["binding_method"] == "prompt"
    v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    assert v.status == 200 and 0 < v["expires_in"] <= 600, v.body
    return v["continuation_token"]


def submit_and_poll(api, ct, password=NEW):
    s = api.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=password)
    assert s.status == 200 and s["poll_interval"] >= 1, s.body
    p = api.post("resetpassword/v1.0/poll_completion", continuation_token=s["continuation_token"])
    assert p.status == 200 and p["status"] == "succeeded" and p["continuation_token"]
    return p["continuation_token"]


def test_reset_end_to_end(server, api, outbox, make_user):
    email, _ = make_user(password=OLD)
    rt_old = api.signin_password(email, OLD)["refresh_token"]
    ct = submit_and_poll(api, reset_to_verified(api, outbox, email))
    t = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", username=email,
                 scope=SCOPE, client_info="1")
    assert t.status == 200
    assert jwt.decode(t["id_token"], options={"verify_signature": False})["amr"] == ["otp"]
    assert api.signin_password(email, NEW).status == 200
    assert api.signin_password(email, OLD)["error_codes"] == [50126]
    refresh = api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=rt_old, scope=SCOPE)
    assert refresh.status == 400 and refresh["error"] == "invalid_grant"
    notices = [m for m in outbox.messages(email) if m["purpose"] == "password_changed"]
    assert len(notices) == 1 and not notices[0].get("code")


def test_new_password_is_checked(api, outbox, make_user):
    email, _ = make_user(password=OLD)
    ct = reset_to_verified(api, outbox, email)
    for pw, sub in (("short", "password_too_short"), ("1qaz2wsx3edc4rfv", "password_banned"), (OLD, "password_recently_used")):
        r = api.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=pw)
        assert r.status == 400 and r["error"] == "invalid_grant" and r["suberror"] == sub, (pw, r.body)
    submit_and_poll(api, ct)


def test_recently_used_covers_earlier_passwords(api, outbox, make_user):
    email, _ = make_user(password=OLD)
    submit_and_poll(api, reset_to_verified(api, outbox, email), NEW)
    ct = reset_to_verified(api, outbox, email)
    r = api.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=OLD)
    assert r["suberror"] == "password_recently_used"


def test_unknown_address_looks_the_same_and_sends_nothing(api, outbox):
    ghost = unique_email("ghost")
    r = api.post("resetpassword/v1.0/start", username=ghost, challenge_type=TYPES)
    assert r.status == 200
    c = api.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type=TYPES)
    assert c.status == 200 and c["challenge_type"] == "oob"
    assert outbox.count(ghost) == 0
    v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob="12345678")
    assert v.status == 400 and v["suberror"] == "invalid_oob_value"


def test_unknown_address_without_protection(server, api):
    with server.override(enumeration_protection=False):
        r = api.post("resetpassword/v1.0/start", username=unique_email("ghost"), challenge_type=TYPES)
    assert r.status == 400 and r["error"] == "user_not_found"


def test_passwordless_account(server, api, outbox, make_user):
    email, _ = make_user(password=None)
    with server.override(enumeration_protection=False):
        r = api.post("resetpassword/v1.0/start", username=email, challenge_type=TYPES)
    assert r.status == 400 and r["error"] == "invalid_request" and r["error_codes"][0] == 500222
    # With protection on it looks like any other address, and no code goes out.
    r = api.post("resetpassword/v1.0/start", username=email, challenge_type=TYPES)
    c = api.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type=TYPES)
    assert c.status == 200 and outbox.count(email) == 0


def test_expired_continuation_token(server, api, outbox, make_user):
    email, _ = make_user(password=OLD)
    ct = reset_to_verified(api, outbox, email)
    from shared.flows import state

    pk, rk, _, _ = state._parts(server.settings, ct)
    e = server.storage.table(state._table_of(pk)).get(pk, rk)
    server.storage.table(state._table_of(pk)).update({**e, "expires_at": int(time.time()) - 1})
    r = api.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=NEW)
    assert r.status == 400 and r["error"] == "expired_token"
    assert api.signin_password(email, OLD).status == 200  # nothing changed


def test_steps_cannot_be_skipped(api, outbox, make_user):
    email, _ = make_user(password=OLD)
    r = api.post("resetpassword/v1.0/start", username=email, challenge_type=TYPES)
    s = api.post("resetpassword/v1.0/submit", continuation_token=r["continuation_token"], new_password=NEW)
    assert s.status == 400 and s["error"] == "invalid_grant"
    t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="continuation_token", scope=SCOPE)
    assert t.status == 400
    c = api.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type=TYPES)
    p = api.post("resetpassword/v1.0/poll_completion", continuation_token=c["continuation_token"])
    assert p.status == 400


def test_a_reset_never_bypasses_the_second_factor(server, api, outbox, make_user):
    email, _ = make_user(password=OLD, methods=[{"id": "m", "channel": "sms", "target": "+4915112345678",
                                                 "default": True, "created": 1}])
    policy.save(server.storage, {"name": "reset mfa", "grant": {"require_second_factor": True}})
    try:
        ct = submit_and_poll(api, reset_to_verified(api, outbox, email, caps="mfa_required registration_required"))
        t = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", username=email,
                     scope=SCOPE, client_info="1")
        assert t.status == 400 and t["suberror"] == "mfa_required"
        intro = api.post("oauth2/v2.0/introspect", continuation_token=t["continuation_token"])
        c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id="m")
        tok = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                       oob=outbox.last_code("+4915112345678"), scope=SCOPE, client_info="1")
        assert tok.status == 200
        assert jwt.decode(tok["id_token"], options={"verify_signature": False})["amr"] == ["otp", "sms", "mfa"]
    finally:
        policy.delete(server.storage, "reset mfa")


def test_reset_without_capabilities_redirects_when_mfa_is_required(server, api, outbox, make_user):
    email, _ = make_user(password=OLD)
    policy.save(server.storage, {"name": "reset mfa 2", "grant": {"require_second_factor": True}})
    try:
        ct = submit_and_poll(api, reset_to_verified(api, outbox, email))
        t = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", scope=SCOPE)
        assert t.status == 200 and t["challenge_type"] == "redirect"
        assert directory.get_user(server.storage, email) is not None
    finally:
        policy.delete(server.storage, "reset mfa 2")
