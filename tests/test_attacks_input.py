"""Input handling: catalogue rows A36-A41.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import _QUIET  # noqa: F401


@pytest.mark.parametrize("name,raw", [
    ("not-utf8", b"client_id=\xff\xfe&username=a%40example.com"),
    ("percent-not-utf8", b"username=%ff%fe"),
    ("nul", b"username=a%00b%40example.com&client_id=x"),
    ("duplicate-keys", b"username=a%40example.com&username=b%40example.com"),
    ("array-syntax", b"username[]=a%40example.com&username[]=b%40example.com"),
    ("too-many-fields", b"&".join(b"f%d=1" % i for i in range(100))),
    ("long-value", b"username=" + b"a" * 9000),
    ("json-as-form", b'{"username": "a@example.com", "client_id": "x"}'),
    ("crlf", b"username=a%0D%0ABcc%3A%20x%40evil.example%40example.com&challenge_type=password%20redirect"),
    ("empty", b""),
])
def test_A36_malformed_forms_are_clean_400s(api, name, raw):
    for path in ENDPOINTS:
        assert_clean_error(api.request("POST", path, raw, FORM))


def test_A36_wrong_content_types_and_json_bodies(api):
    for ctype, body in (("application/json", b'{"client_id":"x","username":"a@example.com"}'),
                        ("application/json", b'{"username":"a","username":"b"}'),
                        ("text/plain", b"client_id=x"), ("multipart/form-data; boundary=x", b"--x--")):
        for path in ENDPOINTS[:5]:
            assert_clean_error(api.request("POST", path, body, {"Content-Type": ctype}))


def test_A36_oversized_inputs_are_refused_quickly(api, make_user):
    email, _ = make_user()
    cases = [
        ("10 MB body", lambda: api.request("POST", "oauth2/v2.0/token", b"x=" + b"a" * (10 * 1024 * 1024), FORM), (413, 400)),
        ("1 MB password", lambda: api.post("oauth2/v2.0/token", continuation_token=password_challenge_ct(api, email),
                                           grant_type="password", password="p" * (1024 * 1024), scope=SCOPE), (413, 400)),
        ("10k-char email", lambda: api.post("oauth2/v2.0/initiate", username="a" * 10000 + "@example.com",
                                            challenge_type="password redirect"), (400,)),
        ("1000-char email", lambda: api.post("oauth2/v2.0/initiate", username="a" * 1000 + "@example.com",
                                             challenge_type="password redirect"), (400,)),
        ("sign-up 5000-char password", lambda: signup_start(api, "x" * 5000), (400,)),
    ]
    for name, call, statuses in cases:
        started = time.perf_counter()
        r = call()
        assert time.perf_counter() - started < 3, name
        assert_clean_error(r, *statuses)
    # A long (but in-limit) password is answered without hashing it.
    ct = password_challenge_ct(api, email)
    started = time.perf_counter()
    r = password_grant(api, ct, "p" * 8000)
    assert r["error_codes"] == [BAD_CREDENTIALS] and time.perf_counter() - started < 2
    assert password_grant(api, ct, PW).status == 200


def test_A36_wrong_json_types_and_odd_values_are_400_not_500(api, make_user):
    for attributes in ('{"displayName": ["x"]}', '{"displayName": {"$gt": ""}}', "[1, 2]", '"text"', "not json",
                       '{"displayName": "a", "displayName": "b"}', '{"displayName": null}', "1e999999"):
        r = api.post("signup/v1.0/start", username=unique_email(), challenge_type="oob password redirect",
                     attributes=attributes)
        assert r.status in (200, 400) and "Traceback" not in r.raw.decode(), (attributes, r.body)
    email, _ = make_user()
    for claims in ('{"access_token": []}', "[]", '"x"', "not json", '{"access_token": {"acrs": {"values": [1, {}]}}}'):
        ct = password_challenge_ct(api, email)
        r = api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="password", password=PW, scope=SCOPE,
                     claims=claims)
        assert r.status in (200, 400), (claims, r.body)
    for value in ("", " ", "\u202e", "\ufeff", "x" * 8000, "%00", "' or ''='", "../../x", "{}", "[]"):
        for path, field in (("oauth2/v2.0/initiate", "username"), ("oauth2/v2.0/initiate", "challenge_type"),
                            ("oauth2/v2.0/initiate", "capabilities"), ("oauth2/v2.0/token", "scope"),
                            ("oauth2/v2.0/token", "grant_type"), ("oauth2/v2.0/challenge", "continuation_token")):
            form = {"username": email, "challenge_type": "password redirect", field: value}
            r = api.post(path, **form)
            assert r.status < 500 and isinstance(r.body, dict), (path, field, value, r.body)


def test_A36_deeply_nested_json_is_a_400_not_a_500(api, make_user):
    r = api.post("signup/v1.0/start", username=unique_email(), challenge_type="oob password redirect",
                 attributes="[" * 5000)
    assert r.status == 400 and r["error"] == "invalid_request", r.body
    email, _ = make_user()
    r = api.post("oauth2/v2.0/token", continuation_token=password_challenge_ct(api, email), grant_type="password",
                 password=PW, scope=SCOPE, claims="[" * 5000)
    assert r.status == 400 and r["error"] == "invalid_request", r.body


def test_A37_no_header_or_template_injection_into_messages(server, api, outbox):
    # User-controlled text is either refused or never reaches a message.
    bad = api.post("signup/v1.0/start", username="x\r\nBcc: x@evil.example", challenge_type="oob redirect")
    assert bad.status == 400 and bad["error_codes"] == [90100]
    crlf = api.post("signup/v1.0/start", username=unique_email("inj"), challenge_type="oob redirect",
                    attributes=json.dumps({"displayName": "Eve\r\nBcc: x@evil.example"}))
    assert crlf.status == 400 and crlf["suberror"] == "attribute_validation_failed"
    address = unique_email("inj")
    hostile = "<script>alert(1)</script>{{7*7}}{code}${7*7}"
    s = api.post("signup/v1.0/start", username=address, challenge_type="oob password redirect", password=PW,
                 attributes=json.dumps({"displayName": hostile}))
    assert s.status == 200
    c = api.post("signup/v1.0/challenge", continuation_token=s["continuation_token"], challenge_type="oob password redirect")
    done = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                    oob=outbox.last_code(address))
    assert done.status == 200
    # A hostile operator-set app name (the only free text in messages) stays inert text.
    app_name = 'Evil <script>x</script> {{7*7}} {code}\r\nBcc: x@evil.example'
    with server.override(app_name=app_name):
        reset_to_token(api, outbox, address)
    msgs = outbox.messages(address)
    assert {m["to"] for m in msgs} == {address}
    assert [m["purpose"] for m in msgs] == ["signup_code", "reset_code", "password_changed"]
    for m in msgs:
        assert "\r" not in m["subject"] and "\n" not in m["subject"]           # one header line
        for part in (m["subject"], m["body"], m["html"] or ""):
            assert "alert(1)" not in part and "${7*7}" not in part             # the display name is never used
        assert "<script>" not in (m["html"] or "")                             # HTML escapes every value
    reset_msg = msgs[1]
    assert "&lt;script&gt;" in reset_msg["html"]
    assert "{{7*7}}" in reset_msg["subject"] and "{code}" in reset_msg["subject"]   # literal, not evaluated
    assert reset_msg["code"] and reset_msg["body"].count(reset_msg["code"]) == 1
    assert outbox.messages("x@evil.example") == []                                   # no extra recipient


def test_A38_issuer_and_discovery_ignore_host_headers(server, api, make_user):
    """No links are sent, so Host-header poisoning has nothing to poison; the
    issuer, discovery URLs and token ``iss`` come from AUTH_ISSUER only."""
    issuer = server.settings.issuer
    evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
            "Forwarded": "host=evil.example;proto=https"}
    doc = api.get(".well-known/openid-configuration", headers=evil)
    assert doc.status == 200
    for key, value in doc.body.items():
        if isinstance(value, str) and value.startswith("http"):
            assert value.startswith(issuer) and "evil" not in value, key
    email, _ = make_user()
    i = api.post("oauth2/v2.0/initiate", evil, username=email, challenge_type="password redirect")
    c = api.post("oauth2/v2.0/challenge", evil, continuation_token=i["continuation_token"], challenge_type="password redirect")
    t = api.post("oauth2/v2.0/token", evil, continuation_token=c["continuation_token"], grant_type="password", password=PW,
                 scope=FULL_SCOPE)
    assert t.status == 200
    assert claims_of(t["access_token"])["iss"] == claims_of(t["id_token"])["iss"] == issuer
    challenge = api.get("sample/sensitive", headers={**evil, "Authorization": "Bearer " + t["access_token"]})
    assert challenge.status == 401 and "evil" not in challenge.headers["www-authenticate"]
    assert f'realm="{issuer}"' in challenge.headers["www-authenticate"]


def test_A38_messages_carry_no_links(api, outbox, make_user):
    email, _ = make_user()
    reset_to_token(api, outbox, email)
    for m in outbox.messages(email):
        for part in (m["subject"], m["body"], m["html"] or ""):
            assert "http://" not in part and "https://" not in part and "evil" not in part


def test_A39_unicode_and_homoglyph_emails(server, api, outbox, make_user):
    local = f"uni{uuid.uuid4().hex[:10]}"
    email, user = make_user(email=f"{local}@example.com")
    for variant in (f"{local.upper()}@Example.COM", f"{local}@example.com.", f"{local}@ＥＸＡＭＰＬＥ.com",
                    f"  {local}@example.com  "):
        r = password_first_factor(api, variant)
        assert r.status == 200 and claims_of(r["id_token"])["oid"] == user.oid, variant
    idn_local = f"idn{uuid.uuid4().hex[:10]}"
    idn, idn_user = make_user(email=f"{idn_local}@xn--bcher-kva.de")
    for variant in (f"{idn_local}@bücher.de", f"{idn_local}@bu\u0308cher.de", f"{idn_local}@BÜCHER.de"):
        r = password_first_factor(api, variant)
        assert r.status == 200 and claims_of(r["id_token"])["oid"] == idn_user.oid, variant
    for homoglyph in (f"\u0430{local[1:]}@example.com",            # Cyrillic а
                      f"ｕ{local[1:]}@example.com",                 # fullwidth local part
                      f"u\u0301{local[1:]}@example.com"):          # combining accent
        r = api.post("oauth2/v2.0/initiate", username=homoglyph, challenge_type="password redirect")
        assert r.status == 400 and r["error_codes"] == [90100], homoglyph
        r = api.post("signup/v1.0/start", username=homoglyph, challenge_type="oob password redirect", password=PW)
        assert r.status == 400 and r["error_codes"] == [90100], homoglyph
    # One canonical form for sign-up and reset too: no second account, the code goes to the canonical address.
    with server.override(enumeration_protection=False):
        r = api.post("signup/v1.0/start", username=f"{local.upper()}@EXAMPLE.com.", challenge_type="oob redirect")
        assert r.status == 400 and r["error"] == "user_already_exists"
    c = reset_challenge(api, f"{local.upper()}@Example.com")
    assert c.status == 200 and outbox.messages(email)[-1]["purpose"] == "reset_code"
    # +tags are distinct mailboxes, hence distinct (unknown) accounts.
    r = password_first_factor(api, f"{local}+tag@example.com")
    assert r.status == 400 and r["error_codes"] == [BAD_CREDENTIALS]


def test_A40_phone_numbers_are_normalised_to_e164(server, api, outbox, make_user, require_mfa):
    email, _ = make_user()
    require_mfa(email)
    national = random_phone()[3:]                    # "151xxxxxxxx"
    e164 = "+49" + national
    formats = [f"+49 {national[:3]} {national[3:]}", f"0049{national}", f"+49 (0){national}",
               f"+49-{national[:3]}-{national[3:7]}-{national[7:]}", e164]
    ct = password_first_factor(api, email)["continuation_token"]
    for shown in formats:                            # the same number in five spellings, one destination
        r = api.post("register/v1.0/challenge", continuation_token=ct, challenge_type="oob", challenge_channel="sms",
                     challenge_target=shown)
        assert r.status == 200, (shown, r.body)
        ct = r["continuation_token"]
    assert outbox.count(e164) == len(formats)
    done = api.post("register/v1.0/continue", continuation_token=ct, grant_type="oob", oob=outbox.last_code(e164))
    assert done.status == 200
    assert [m["target"] for m in directory.get_user(server.storage, email).methods] == [e164]
    # Invalid, ambiguous and blocked inputs.
    other, _ = make_user()
    require_mfa(other)
    ct = password_first_factor(api, other)["continuation_token"]
    for value, error, code in (("2025550100", "invalid_request", 901001),      # no country, no default region
                               ("+4915112345678901234", "invalid_request", 901001),  # > 15 digits
                               ("+49151CALLME", "invalid_request", 901001),   # letters
                               ("+49 30 12345678", "invalid_request", 901001),  # a fixed line cannot get SMS
                               ("+1 900 555 0123", "access_denied", 550024)):   # premium rate
        r = api.post("register/v1.0/challenge", continuation_token=ct, challenge_type="oob", challenge_channel="sms",
                     challenge_target=value)
        assert r.status == 400 and r["error"] == error and r["error_codes"] == [code], (value, r.body)
    with server.override(default_phone_region="US"):  # the explicit region makes a national number parseable
        r = api.post("register/v1.0/challenge", continuation_token=ct, challenge_type="oob", challenge_channel="sms",
                     challenge_target="(202) 555-0100")
    assert r.status == 200 and outbox.count("+12025550100") >= 1


def test_A41_odata_and_key_injection(server, api, make_user, require_mfa):
    tag = uuid.uuid4().hex[:8]
    for local in (f"o'neil{tag}", f"a'or''eq'{tag}", f"x/y#z?w{tag}", f"pct%25{tag}"):
        email, user = make_user(email=f"{local}@example.com")
        r = password_first_factor(api, email)
        assert r.status == 200 and claims_of(r["id_token"])["oid"] == user.oid, email
        s = api.post("resetpassword/v1.0/start", username=email, challenge_type="oob redirect")
        assert s.status == 200
    # Filter-looking names match nothing else.
    r = password_first_factor(api, f"'or''eq''{tag}@example.com")
    assert r.status == 400 and r["error_codes"] == [BAD_CREDENTIALS]
    assert api.post("oauth2/v2.0/initiate", username="a\\b@example.com", challenge_type="password redirect")["error_codes"] == [90100]
    # Key-ish and filter-ish values in tokens, ids and client ids: clean 4xx, never 500.
    for value in ("f2026010100a.' or ''='.x", "a/b#c?d", "..\\..\\x", "PartitionKey eq 'x'", "r00.'or''='.x"):
        assert_clean_error(api.post("oauth2/v2.0/challenge", continuation_token=value, challenge_type="password redirect"))
        assert_clean_error(refresh(api, value))
        assert_clean_error(api.post("oauth2/v2.0/initiate", client_id=value, username="a@example.com",
                                    challenge_type="password redirect"))
    email, _ = make_user(methods=[sms_method(random_phone())])
    require_mfa(email)
    t = password_first_factor(api, email)
    for mid in ("' or ''='", "m1' or '1'='1", "../m1", "m1#"):
        assert_clean_error(api.post("oauth2/v2.0/challenge", continuation_token=t["continuation_token"], id=mid))
