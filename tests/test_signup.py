"""Sign-up over HTTP (contract §3.1–3.3, §5.6): everything at start, password
and attributes after verification, validation, password policy, existing
addresses both ways, and automatic sign-in (with registration when policy
requires a second factor; the sign-up address is never its own second factor)."""

from __future__ import annotations

import json
import threading

import jwt
import pytest

from shared.security import policy
from shared.storage import directory

from conftest import unique_email

PW = "correct horse battery staple"
SCOPE = "openid profile offline_access"
TYPES = "oob password redirect"
CAPS = "mfa_required registration_required"
SCHEMA = [
    {"name": "displayName", "type": "string", "required": False},
    {"name": "city", "type": "string", "required": True, "regex": "^[A-Za-z .-]{2,40}$"},
    {"name": "extension_0123456789abcdef0123456789abcdef_age", "type": "int", "required": False},
    {"name": "extension_0123456789abcdef0123456789abcdef_hobbies", "type": "string", "required": False,
     "values": ["Dancing", "Swimming", "Traveling"]},
]


@pytest.fixture
def schema(server):
    from shared.settings import _attribute_schema

    with server.override(signup_attributes=_attribute_schema(json.dumps(SCHEMA))):
        yield


def start(api, email, **form):
    form.setdefault("challenge_type", TYPES)
    r = api.post("signup/v1.0/start", username=email, **form)
    assert r.status == 200, r.body
    return r["continuation_token"]


def verify(api, outbox, email, ct):
    c = api.post("signup/v1.0/challenge", continuation_token=ct, challenge_type=TYPES)
    assert c.status == 200 and c["challenge_type"] == "oob" and c["code_length"] == 8 and "interval" in c.body, c.body
    return api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(email))


def auto_sign_in(api, ct, email):
    return api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", username=email,
                    scope=SCOPE, client_info="1")


def test_everything_at_start(server, api, outbox, schema):
    email = unique_email("new")
    ct = start(api, email, password=PW, attributes=json.dumps({"displayName": "New User", "city": "Oslo",
                                                                 "unknownThing": "ignored"}))
    done = verify(api, outbox, email, ct)
    assert done.status == 200 and done["continuation_token"], done.body
    t = auto_sign_in(api, done["continuation_token"], email)
    assert t.status == 200
    idt = jwt.decode(t["id_token"], options={"verify_signature": False})
    assert idt["name"] == "New User" and idt["amr"] == ["otp", "pwd"] and idt["acr"] == "1"
    user = directory.get_user(server.storage, email)
    assert json.loads(user.entity["attributes"]) == {"displayName": "New User", "city": "Oslo"}
    assert api.signin_password(email, PW).status == 200


def test_password_after_verification(api, outbox):
    email = unique_email("later")
    ct = start(api, email)
    r = verify(api, outbox, email, ct)
    assert r.status == 400 and r["error"] == "credential_required" and 55103 in r["error_codes"] and r["continuation_token"]
    c = api.post("signup/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type=TYPES)
    assert c.status == 200 and c["challenge_type"] == "password"
    bad = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="password", password="short")
    assert bad.status == 400 and bad["error"] == "invalid_grant" and bad["suberror"] == "password_too_short"
    done = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="password", password=PW)
    assert done.status == 200
    assert auto_sign_in(api, done["continuation_token"], email).status == 200


def test_attributes_after_verification(api, outbox, schema):
    email = unique_email("attrs")
    ct = start(api, email, password=PW)
    r = verify(api, outbox, email, ct)
    assert r.status == 400 and r["error"] == "attributes_required" and 55106 in r["error_codes"]
    assert r["required_attributes"] == [{"name": "city", "type": "string", "required": True,
                                         "options": {"regex": "^[A-Za-z .-]{2,40}$"}}]
    bad = api.post("signup/v1.0/continue", continuation_token=r["continuation_token"], grant_type="attributes",
                   attributes=json.dumps({"city": "<script>"}))
    assert bad.status == 400 and bad["suberror"] == "attribute_validation_failed"
    assert bad["invalid_attributes"] == [{"name": "city"}]
    done = api.post("signup/v1.0/continue", continuation_token=r["continuation_token"], grant_type="attributes",
                    attributes=json.dumps({"city": "Oslo"}))
    assert done.status == 200
    assert auto_sign_in(api, done["continuation_token"], email).status == 200


@pytest.mark.parametrize("attrs,bad", [
    ({"extension_0123456789abcdef0123456789abcdef_age": "old"}, "extension_0123456789abcdef0123456789abcdef_age"),
    ({"extension_0123456789abcdef0123456789abcdef_hobbies": "Dancing,Hacking"}, "extension_0123456789abcdef0123456789abcdef_hobbies"),
    ({"city": "x" * 2000}, "city"),
    ({"city": ["Oslo"]}, "city"),
])
def test_attribute_validation_at_start(api, schema, attrs, bad):
    r = api.post("signup/v1.0/start", username=unique_email(), challenge_type=TYPES, attributes=json.dumps(attrs))
    assert r.status == 400 and r["suberror"] == "attribute_validation_failed" and r["invalid_attributes"] == [{"name": bad}]


def test_multi_value_and_custom_attributes_are_stored(server, api, outbox, schema):
    email = unique_email()
    ct = start(api, email, password=PW, attributes=json.dumps({
        "city": "Oslo", "extension_0123456789abcdef0123456789abcdef_age": "42",
        "extension_0123456789abcdef0123456789abcdef_hobbies": "Dancing, Swimming"}))
    assert verify(api, outbox, email, ct).status == 200
    stored = json.loads(directory.get_user(server.storage, email).entity["attributes"])
    assert stored["extension_0123456789abcdef0123456789abcdef_hobbies"] == "Dancing,Swimming"
    assert stored["extension_0123456789abcdef0123456789abcdef_age"] == "42"


@pytest.mark.parametrize("password,suberror", [
    ("short", "password_too_short"),
    ("x" * 257, "password_too_long"),
    ("Password123!", "password_too_short"),
    ("password1234567890", "password_banned"),
    ("qwertyuiopasdfghjkl", "password_too_weak"),
    ("1qaz2wsx3edc4rfv", "password_banned"),
    ("momsanaladventure", "password_banned"),
    ("aaaaaaaaaaaaaaaaaaaa", "password_too_weak"),
])
def test_password_policy(api, password, suberror):
    r = api.post("signup/v1.0/start", username=unique_email(), challenge_type=TYPES, password=password)
    assert r.status == 400 and r["error"] == "invalid_grant" and r["suberror"] == suberror, r.body


def test_password_containing_the_username_is_banned(api):
    email = unique_email("hunter")
    r = api.post("signup/v1.0/start", username=email, challenge_type=TYPES, password=email.split("@")[0] + " is my pass")
    assert r.status == 400 and r["suberror"] == "password_banned"


def test_long_unicode_passwords_are_accepted(api, outbox):
    email = unique_email()
    pw = "ünïcødé pässwörd wïth émöjï 🔐🔐🔐 and more" * 2
    ct = start(api, email, password=pw)
    assert verify(api, outbox, email, ct).status == 200
    assert api.signin_password(email, pw).status == 200


def test_passwordless_sign_up(server, api, outbox):
    email = unique_email("otp")
    ct = start(api, email, challenge_type="oob redirect")
    done = verify(api, outbox, email, ct)
    assert done.status == 200
    assert not directory.get_user(server.storage, email).has_password
    t = auto_sign_in(api, done["continuation_token"], email)
    assert t.status == 200 and jwt.decode(t["id_token"], options={"verify_signature": False})["amr"] == ["otp"]


def test_existing_address_with_protection_looks_the_same(api, outbox, make_user):
    email, _ = make_user()
    ct = start(api, email, password=PW)
    c = api.post("signup/v1.0/challenge", continuation_token=ct, challenge_type=TYPES)
    assert c.status == 200 and c["challenge_type"] == "oob"
    msgs = outbox.messages(email)
    assert msgs[-1]["purpose"] == "signup_attempt_notice" and not msgs[-1].get("code")
    r = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob", oob="12345678")
    assert r.status == 400 and r["suberror"] == "invalid_oob_value"


def test_existing_address_without_protection(server, api, make_user):
    email, _ = make_user()
    with server.override(enumeration_protection=False):
        r = api.post("signup/v1.0/start", username=email, challenge_type=TYPES)
    assert r.status == 400 and r["error"] == "user_already_exists"


def test_concurrent_sign_ups_of_one_address_make_one_account(server, api, outbox):
    email = unique_email("race")
    cts = []
    for _ in range(2):
        ct = start(api, email, password=PW)
        c = api.post("signup/v1.0/challenge", continuation_token=ct, challenge_type=TYPES)
        cts.append((c["continuation_token"], outbox.last_code(email)))
    results = []

    def go(ct, code):
        results.append(api.post("signup/v1.0/continue", continuation_token=ct, grant_type="oob", oob=code))

    threads = [threading.Thread(target=go, args=x) for x in cts]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(r.status for r in results) == [200, 400]
    assert next(r for r in results if r.status == 400)["error"] == "user_already_exists"
    rows = server.storage.table("users").query("PartitionKey eq @pk and RowKey eq @u", {"pk": directory.user_key(email), "u": "user"})  # accounts, not flows (A116)
    assert len(rows) == 1


def test_sign_up_tokens_are_single_use(api, outbox):
    email = unique_email()
    done = verify(api, outbox, email, start(api, email, password=PW))
    assert auto_sign_in(api, done["continuation_token"], email).status == 200
    assert auto_sign_in(api, done["continuation_token"], email).status == 400


def test_username_on_token_must_match(api, outbox):
    email = unique_email()
    done = verify(api, outbox, email, start(api, email, password=PW))
    assert auto_sign_in(api, done["continuation_token"], unique_email("other")).status == 400


def test_unverified_flow_cannot_get_tokens(api):
    email = unique_email()
    ct = start(api, email, password=PW)
    r = auto_sign_in(api, ct, email)
    assert r.status == 400 and r["error"] == "invalid_grant"


@pytest.fixture
def require_mfa(server):
    policy.save(server.storage, {"name": "signup mfa", "grant": {"require_second_factor": True}})
    yield
    policy.delete(server.storage, "signup mfa")


def test_sign_up_address_cannot_be_registered_as_its_own_second_factor(server, api, outbox, require_mfa):
    """The sign-up address (or a plus or case variant) can reset the password, so it is no second
    factor: refused with 901001 (no `preverified` fast pass); another mailbox registers."""
    email = unique_email("jit")
    ct = start(api, email, password=PW, capabilities=CAPS)
    done = verify(api, outbox, email, ct)
    t = auto_sign_in(api, done["continuation_token"], email)
    assert t.status == 400 and t["suberror"] == "registration_required"
    intro = api.post("register/v1.0/introspect", continuation_token=t["continuation_token"])
    assert [m["login_hint"] for m in intro["methods"]] == ["", ""]
    local, domain = email.split("@")
    for same in (email, email.upper(), f"{local}+mfa@{domain}"):
        c = api.post("register/v1.0/challenge", continuation_token=intro["continuation_token"], challenge_type="oob",
                     challenge_channel="email", challenge_target=same)
        assert c.status == 400 and c["error"] == "invalid_request" and 901001 in c["error_codes"], c.body
    other = unique_email("jit-inbox")
    c = api.post("register/v1.0/challenge", continuation_token=intro["continuation_token"], challenge_type="oob",
                 challenge_channel="email", challenge_target=other)
    assert c.status == 200 and c["challenge_type"] == "oob", c.body
    cont = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(other))
    tok = api.post("oauth2/v2.0/token", continuation_token=cont["continuation_token"], grant_type="continuation_token",
                   scope=SCOPE, client_info="1")
    assert tok.status == 200
    assert [m["target"] for m in directory.get_user(server.storage, email).methods] == [other]


def test_sign_up_then_registration_by_sms(server, api, outbox, require_mfa):
    email = unique_email("jitsms")
    done = verify(api, outbox, email, start(api, email, password=PW, capabilities=CAPS))
    t = auto_sign_in(api, done["continuation_token"], email)
    intro = api.post("register/v1.0/introspect", continuation_token=t["continuation_token"])
    c = api.post("register/v1.0/challenge", continuation_token=intro["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target="+4915122223333")
    assert c.status == 200 and c["challenge_type"] == "oob" and c["code_length"] == 6
    cont = api.post("register/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code("+4915122223333"))
    tok = api.post("oauth2/v2.0/token", continuation_token=cont["continuation_token"], grant_type="continuation_token",
                   scope=SCOPE, client_info="1")
    assert tok.status == 200 and "sms" in jwt.decode(tok["id_token"], options={"verify_signature": False})["amr"]


def test_passwordless_sign_up_cannot_use_its_own_email_as_second_factor(api, outbox, require_mfa):
    email = unique_email()
    done = verify(api, outbox, email, start(api, email, challenge_type="oob redirect", capabilities=CAPS))
    t = auto_sign_in(api, done["continuation_token"], email)
    c = api.post("register/v1.0/challenge", continuation_token=t["continuation_token"], challenge_type="oob",
                 challenge_channel="email", challenge_target=email)
    assert c.status == 400 and 901001 in c["error_codes"]
