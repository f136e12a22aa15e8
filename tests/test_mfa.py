"""Second factor over HTTP (contract §3.5–3.10, §5.2–5.4): the policy gate,
MFA by email and SMS, just-in-time registration, capabilities, bypass
attempts, step-up, and the sign-in log."""

from __future__ import annotations

import base64
import json
import threading
import time

import jwt
import pytest

from shared.security import policy
from shared.storage import directory, signinlog

from conftest import unique_email

PW = "correct horse battery staple"
SCOPE = "openid profile offline_access"
CAPS = "mfa_required registration_required"
PHONE = "+4915112345678"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def require_mfa(policies):
    return policies(name="mfa for all", grant={"require_second_factor": True, "methods": ["email", "sms"]})


def method(channel: str, target: str, default: bool = False, mid: str | None = None) -> dict:
    return {"id": mid or f"{channel}-{abs(hash(target)) % 10**8}", "channel": channel, "target": target,
            "default": default, "created": int(time.time())}


def password_first_factor(api, email: str, caps: str | None = CAPS, claims_param: str | None = None):
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect", capabilities=caps)
    r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password oob redirect")
    return api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password",
                    password=PW, scope=SCOPE, client_info="1", claims=claims_param)


def email_first_factor(api, outbox, email: str, caps: str | None = CAPS):
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect", capabilities=caps)
    r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect")
    return api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(email), scope=SCOPE, client_info="1")


def mfa_complete(api, outbox, ct: str, target: str, *, pick=0, grant="mfa_oob"):
    r = api.post("oauth2/v2.0/introspect", continuation_token=ct)
    assert r.status == 200, r.body
    m = r["methods"][pick]
    c = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], id=m["id"],
                 challenge_type="password oob redirect")
    assert c.status == 200, c.body
    return c, api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type=grant,
                       oob=outbox.last_code(target), scope=SCOPE, client_info="1")


# ---------------------------------------------------------------- MFA

def test_password_then_email_mfa(api, outbox, make_user, require_mfa):
    second = unique_email("second")
    email, _ = make_user(methods=[method("email", second, True)])
    r = password_first_factor(api, email)
    assert r.status == 400 and r["error"] == "invalid_grant" and r["suberror"] == "mfa_required"
    assert r["continuation_token"]
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    assert intro.status == 200
    m = intro["methods"][0]
    assert m["challenge_type"] == "oob" and m["challenge_channel"] == "email"
    assert "*" in m["login_hint"] and second not in m["login_hint"]
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=m["id"],
                 challenge_type="password oob redirect")
    assert c.status == 200 and c["challenge_type"] == "oob" and c["challenge_channel"] == "email"
    assert c["code_length"] == 8 and c["challenge_target_label"] and "interval" in c.body and c["binding_method"] == "prompt"
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                 oob=outbox.last_code(second), scope=SCOPE, client_info="1")
    assert t.status == 200, t.body
    idt = claims(t["id_token"])
    assert idt["amr"] == ["pwd", "otp", "mfa"] and idt["acr"] == "2"


def test_password_then_sms_mfa_with_the_documented_oob_grant(api, outbox, make_user, require_mfa):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    assert r["suberror"] == "mfa_required"
    c, t = mfa_complete(api, outbox, r["continuation_token"], PHONE, grant="oob")
    assert c["challenge_channel"] == "sms" and c["code_length"] == 6
    assert c["challenge_target_label"].startswith("+49") and "5678" in c["challenge_target_label"] and PHONE != c["challenge_target_label"]
    assert t.status == 200 and claims(t["id_token"])["amr"] == ["pwd", "sms", "mfa"]


def test_email_code_first_factor_then_sms(api, outbox, make_user, require_mfa):
    email, _ = make_user(password=None, methods=[method("sms", PHONE)])
    r = email_first_factor(api, outbox, email)
    assert r["suberror"] == "mfa_required"
    _, t = mfa_complete(api, outbox, r["continuation_token"], PHONE)
    assert t.status == 200 and claims(t["id_token"])["amr"] == ["otp", "sms", "mfa"]


def test_same_email_cannot_be_both_factors(api, outbox, make_user, require_mfa):
    """The sign-in address is never a second factor (it can reset the
    password): an account whose only method it is counts as having none, and
    the address (or a variant) cannot be registered."""
    email = unique_email()
    make_user(email=email, password=None, methods=[method("email", email, True)])
    r = email_first_factor(api, outbox, email)
    assert r.status == 400 and r["suberror"] == "registration_required", r.body
    reg = api.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                   challenge_channel="email", challenge_target=email)
    assert reg.status == 400 and reg["error"] == "invalid_request" and 901001 in reg["error_codes"]


def test_default_method_comes_first(api, make_user, require_mfa):
    email, _ = make_user(methods=[method("email", unique_email("b")), method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    assert [m["challenge_channel"] for m in intro["methods"]] == ["sms", "email"]


def test_wrong_second_factor_code_then_right_one(api, outbox, make_user, require_mfa):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=intro["methods"][0]["id"])
    code = outbox.last_code(PHONE)
    wrong = str((int(code) + 1) % 10 ** 6).zfill(6)
    bad = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob", oob=wrong, scope=SCOPE)
    assert bad.status == 400 and bad["suberror"] == "invalid_oob_value"
    good = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob", oob=code, scope=SCOPE)
    assert good.status == 200


def test_mfa_resend_by_calling_challenge_again(api, outbox, make_user, require_mfa):
    second = unique_email("second")
    email, _ = make_user(methods=[method("email", second, True)])
    r = password_first_factor(api, email)
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    mid = intro["methods"][0]["id"]
    c1 = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=mid)
    old = outbox.last_code(second)
    c2 = api.post("oauth2/v2.0/challenge", continuation_token=c1["continuation_token"], id=mid)
    assert c2.status == 200 and outbox.count(second) == 2
    new = outbox.last_code(second)
    if new != old:
        assert api.post("oauth2/v2.0/token", continuation_token=c2["continuation_token"], grant_type="mfa_oob",
                        oob=old, scope=SCOPE)["suberror"] == "invalid_oob_value"
    assert api.post("oauth2/v2.0/token", continuation_token=c2["continuation_token"], grant_type="mfa_oob",
                    oob=new, scope=SCOPE).status == 200


def test_unknown_method_id_is_invalid_request(api, make_user, require_mfa):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    c = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], id="not-a-method")
    assert c.status == 400 and c["error"] == "invalid_request"


def test_no_policy_means_no_second_factor(api, make_user):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    assert password_first_factor(api, email).status == 200


# ---------------------------------------------------------------- capabilities

def test_missing_mfa_capability_gets_redirect(api, make_user, require_mfa):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email, caps="registration_required")
    assert r.status == 200 and r["challenge_type"] == "redirect"
    assert r["redirect_reason"] == "Client is missing mfa_required capability"


def test_missing_registration_capability_gets_redirect(api, make_user, require_mfa):
    email, _ = make_user()
    r = password_first_factor(api, email, caps=None)
    assert r.status == 200 and r["challenge_type"] == "redirect"
    assert r["redirect_reason"] == "Client is missing registration_required capability"


# ---------------------------------------------------------------- registration

def register_and_finish(api, outbox, ct: str, channel: str, target: str, echo: str | None = None):
    intro = api.post("register/v1.0/introspect", continuation_token=ct)
    assert intro.status == 200, intro.body
    assert {m["id"] for m in intro["methods"]} == {"email", "sms"}
    c = api.post("register/v1.0/challenge", continuation_token=intro["continuation_token"], challenge_type="oob",
                 challenge_channel=channel, challenge_target=echo or target)
    assert c.status == 200, c.body
    assert c["challenge_type"] == "oob" and c["challenge_target"] == (echo or target) and c["challenge_channel"] == channel
    assert "challenge_target_label" not in c.body
    cont = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(target))
    assert cont.status == 200 and cont["continuation_token"], cont.body
    return api.post("oauth2/v2.0/token", continuation_token=cont["continuation_token"], grant_type="continuation_token",
                    scope=SCOPE, client_info="1")


def test_registration_by_email(server, api, outbox, make_user, require_mfa):
    email, _ = make_user()
    r = password_first_factor(api, email)
    assert r.status == 400 and r["suberror"] == "registration_required" and r["continuation_token"]
    second = unique_email("jit")
    t = register_and_finish(api, outbox, r["continuation_token"], "email", second)
    assert t.status == 200 and claims(t["id_token"])["amr"] == ["pwd", "otp", "mfa"]
    methods = directory.get_user(server.storage, email).methods
    assert [(m["channel"], m["target"], m["default"]) for m in methods] == [("email", second, True)]
    # Next sign-in: MFA with the registered method.
    assert password_first_factor(api, email)["suberror"] == "mfa_required"


def test_registration_by_sms_normalizes_the_number(server, api, outbox, make_user, require_mfa):
    email, _ = make_user()
    r = password_first_factor(api, email)
    t = register_and_finish(api, outbox, r["continuation_token"], "sms", PHONE, echo="+49 151 1234 5678")
    assert t.status == 200 and "sms" in claims(t["id_token"])["amr"]
    assert directory.get_user(server.storage, email).methods[0]["target"] == PHONE


def test_method_is_stored_only_after_verification(server, api, outbox, make_user, require_mfa):
    email, _ = make_user()
    r = password_first_factor(api, email)
    intro = api.post("register/v1.0/introspect", continuation_token=r["continuation_token"])
    c = api.post("register/v1.0/challenge", continuation_token=intro["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target=PHONE)
    assert c.status == 200
    assert directory.get_user(server.storage, email).methods == []
    bad = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob="000000"
                   if outbox.last_code(PHONE) != "000000" else "111111")
    assert bad.status == 400 and bad["suberror"] == "invalid_oob_value"
    assert directory.get_user(server.storage, email).methods == []
    # Registration does not give tokens without the code.
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="continuation_token", scope=SCOPE)
    assert t.status == 400 and t["error"] == "invalid_grant"


@pytest.mark.parametrize("target,error,code", [
    ("+123", "invalid_request", 901001),
    ("not a phone", "invalid_request", 901001),
    ("+442079460018", "invalid_request", 901001),   # a fixed line cannot receive SMS
    ("+19005550123", "access_denied", 550024),      # premium rate
    ("+18005550199", "access_denied", 550024),      # toll free
    ("+8613812345678", "access_denied", 550024),    # outside the SMS country allow-list
])
def test_bad_or_blocked_phone_numbers(api, outbox, make_user, require_mfa, target, error, code):
    email, _ = make_user()
    r = password_first_factor(api, email)
    before = len(outbox.messages())
    c = api.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target=target)
    assert c.status == 400 and c["error"] == error and code in c["error_codes"]
    if error == "access_denied":
        assert c["suberror"] == "provider_blocked_by_rep"
    assert len(outbox.messages()) == before  # blocked before any send


def test_register_accepts_query_string_parameters(api, outbox, make_user, require_mfa):
    email, _ = make_user()
    r = password_first_factor(api, email)
    from urllib.parse import urlencode
    q = urlencode({"continuation_token": r["continuation_token"], "client_id": api.client_id})
    resp = api.request("POST", f"register/v1.0/introspect?{q}", b"", {"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200 and resp.body["methods"]


# ---------------------------------------------------------------- bypass attempts

def test_first_factor_token_cannot_skip_the_second_factor(api, outbox, make_user, require_mfa):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    ct = r["continuation_token"]
    for grant, extra in (("continuation_token", {}), ("mfa_oob", {"oob": "123456"}), ("password", {"password": PW}),
                         ("oob", {"oob": "123456"})):
        t = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type=grant, scope=SCOPE, **extra)
        assert t.status == 400 and t["error"] == "invalid_grant", (grant, t.body)
    # register endpoints refuse an MFA-state flow too
    assert api.post("register/v1.0/continue", continuation_token=ct, grant_type="continuation_token").status == 400


def test_second_factor_code_of_another_user_is_rejected(api, outbox, make_user, require_mfa):
    phone_b = "+4915199999999"
    a, _ = make_user(methods=[method("sms", PHONE, True)])
    b, _ = make_user(methods=[method("sms", phone_b, True)])
    ra = password_first_factor(api, a)
    ia = api.post("oauth2/v2.0/introspect", continuation_token=ra["continuation_token"])
    ca = api.post("oauth2/v2.0/challenge", continuation_token=ia["continuation_token"], id=ia["methods"][0]["id"])
    code_a = outbox.last_code(PHONE)
    rb = password_first_factor(api, b)
    ib = api.post("oauth2/v2.0/introspect", continuation_token=rb["continuation_token"])
    cb = api.post("oauth2/v2.0/challenge", continuation_token=ib["continuation_token"], id=ib["methods"][0]["id"])
    if code_a != outbox.last_code(phone_b):
        t = api.post("oauth2/v2.0/token", continuation_token=cb["continuation_token"], grant_type="mfa_oob", oob=code_a, scope=SCOPE)
        assert t.status == 400
    assert api.post("oauth2/v2.0/token", continuation_token=ca["continuation_token"], grant_type="mfa_oob",
                    oob=code_a, scope=SCOPE).status == 200


def test_method_ids_of_another_user_are_refused(api, make_user, require_mfa):
    a, ua = make_user(methods=[method("sms", PHONE, True, mid="aaaa")])
    b, _ = make_user(methods=[method("sms", "+4915199999999", True, mid="bbbb")])
    rb = password_first_factor(api, b)
    c = api.post("oauth2/v2.0/challenge", continuation_token=rb["continuation_token"], id="aaaa")
    assert c.status == 400


def test_parallel_correct_second_factor_codes_yield_one_token_set(api, outbox, make_user, require_mfa):
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    intro = api.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=intro["methods"][0]["id"])
    code, ct = outbox.last_code(PHONE), c["continuation_token"]
    results = []
    barrier = threading.Barrier(10)

    def go():
        barrier.wait()
        results.append(api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="mfa_oob", oob=code, scope=SCOPE))

    threads = [threading.Thread(target=go) for _ in range(10)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [x.status for x in results].count(200) == 1


def test_forwarded_for_cannot_choose_the_ip(server, api, make_user, policies):
    policy.save_location(server.storage, "office", ["203.0.113.0/24"])
    policies(name="mfa outside office", conditions={"locations": {"exclude": ["office"]}},
             grant={"require_second_factor": True})
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    # Behind two proxies (say Front Door, then the App Service front end, played
    # here by devhost which appends the peer): the entry the outer trusted proxy
    # added is the second from the right. Whatever the client put first is ignored.
    with server.override(trusted_proxy_hops=2):
        r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
        r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
        t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                     scope=SCOPE, headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.9"})
        assert t.status == 400 and t["suberror"] == "mfa_required"
        r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
        r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
        t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                     scope=SCOPE, headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.7"})
        assert t.status == 200


# ---------------------------------------------------------------- policies over HTTP

def test_block_policy(api, make_user, policies):
    email, _ = make_user()
    policies(name="block", grant={"block": True})
    r = password_first_factor(api, email)
    assert r.status == 400 and r["error"] == "access_denied" and 53003 in r["error_codes"]


def test_report_only_is_not_enforced_but_logged(server, api, make_user, policies):
    email, user = make_user()
    policies(name="report block", state="report-only", grant={"block": True})
    r = password_first_factor(api, email)
    assert r.status == 200
    entries = [e for e in signinlog.tail(server.storage, limit=200) if e["user_oid"] == user.oid]
    assert entries and entries[0]["result"] == "success"
    assert {"name": "report block", "state": "report-only", "result": "block"} in json.loads(entries[0]["policies"])


def test_freshness_belongs_to_the_session_not_the_account(server, api, outbox, make_user, policies):
    """A new sign-in always does its own second factor (another session's does
    not count); the session that did it refreshes within the window."""
    policies(name="fresh", grant={"require_second_factor": True}, session={"second_factor_freshness_seconds": 3600})
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    r = password_first_factor(api, email)
    assert r["suberror"] == "mfa_required"
    _, t = mfa_complete(api, outbox, r["continuation_token"], PHONE)
    assert t.status == 200
    again = password_first_factor(api, email)
    assert again.status == 400 and again["suberror"] == "mfa_required"
    rt = api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=t["refresh_token"], scope=SCOPE)
    assert rt.status == 200 and claims(rt["id_token"])["amr"] == ["pwd", "sms", "mfa"]


def test_excluded_user_and_client(server, api, make_user, policies):
    email, user = make_user(methods=[method("sms", PHONE, True)])
    policies(name="all but one", assignments={"users": {"include": ["all"], "exclude": [user.oid]}},
             grant={"require_second_factor": True})
    assert password_first_factor(api, email).status == 200


def test_sign_in_log_records_outcomes_without_secrets(server, api, make_user):
    email, user = make_user()
    password_first_factor(api, email)
    api.signin_password(email, "wrong password")
    entries = [e for e in signinlog.tail(server.storage, limit=500) if e["user_oid"] == user.oid]
    results = [e["result"] for e in entries]
    assert "success" in results and "failure" in results
    blob = json.dumps(entries, default=str)
    assert PW not in blob and "wrong password" not in blob and email not in blob
    ok = next(e for e in entries if e["result"] == "success")
    assert json.loads(ok["factors"]) == ["pwd"] and ok["correlation_id"] and ok["risk"]


# ---------------------------------------------------------------- step-up

def test_step_up_round_trip(server, api, outbox, make_user, policies):
    ctx = server.settings.sample_auth_context
    policies(name="step-up", conditions={"auth_contexts": [ctx]}, grant={"require_second_factor": True})
    email, _ = make_user(methods=[method("sms", PHONE, True)])
    assert api.get("sample/sensitive").status == 401
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
    r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
    t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                 scope="api://native-auth/access_as_user openid profile offline_access")
    assert t.status == 200  # no context asked: no second factor
    denied = api.get("sample/sensitive", headers={"Authorization": "Bearer " + t["access_token"]})
    assert denied.status == 401 and denied["error"] == "insufficient_claims"
    www = denied.headers["www-authenticate"]
    challenge_claims = www.split('claims="')[1].split('"')[0]
    claims_value = base64.b64decode(challenge_claims).decode()
    assert json.loads(claims_value) == {"access_token": {"acrs": {"essential": True, "value": ctx}}}
    # Sign in again with that claims value: the policy for the context demands the second factor.
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
    r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
    t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                 scope="api://native-auth/access_as_user openid profile offline_access", claims=claims_value)
    assert t.status == 400 and t["suberror"] == "mfa_required"
    intro = api.post("oauth2/v2.0/introspect", continuation_token=t["continuation_token"])
    c = api.post("oauth2/v2.0/challenge", continuation_token=intro["continuation_token"], id=intro["methods"][0]["id"])
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                 oob=outbox.last_code(PHONE), scope="api://native-auth/access_as_user openid profile offline_access")
    assert t.status == 200 and claims(t["access_token"])["acrs"] == [ctx]
    allowed = api.get("sample/sensitive", headers={"Authorization": "Bearer " + t["access_token"]})
    assert allowed.status == 200 and allowed["acrs"] == [ctx]


def test_sample_endpoint_rejects_garbage_tokens(api):
    for value in ("Bearer", "Bearer x.y.z", "Basic abc", "Bearer " + "a" * 9000):
        r = api.get("sample/sensitive", headers={"Authorization": value})
        assert r.status == 401 and r["error"] == "invalid_token"
