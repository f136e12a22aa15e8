"""Custom authentication extensions in sign-up (attributeCollectionStart and
attributeCollectionSubmit) and in every code sent (otpSend), end to end: a
real Azurite, the app under devhost, and the sample extension app
(samples/extensions) as a real HTTP server (prefill on start, the
invitation-code check and display-name clean-up on submit, the console OTP
sender writing a JSONL outbox). A programmable extension
(tests/extension_server.py) plays the broken and hostile ones.

Rows A95-A104 of the attack catalogue (SECURITY.md §7)."""

from __future__ import annotations

import json
import socket
import statistics
import time
from pathlib import Path

import jwt
import pytest

from shared.extensions import caller, config
from shared.flows import signup as signup_flow
from shared.settings import _attribute_schema
from shared.storage import directory

from conftest import ROOT, SEEN_SECRETS, unique_email
from attack_kit import parallel
from extension_server import AUDIENCE, ExtensionServer, extensions, hostile, sample_serve_module  # noqa: F401

PW = "correct horse battery staple"
SCOPE = "openid profile offline_access"
TYPES = "oob password redirect"
CAPS = "mfa_required registration_required"
APP = "b3a1d1e07c2f4e1a9d3b1f2e3d4c5b6a"
CODE = f"extension_{APP}_invitationCode"
NEWS = f"extension_{APP}_newsletter"
AGE = f"extension_{APP}_age"
SCHEMA = [
    {"name": "displayName", "type": "string", "required": False},
    {"name": "city", "type": "string", "required": True, "regex": "^[A-Za-z .-]{2,40}$"},
    {"name": CODE, "type": "string", "required": False},
    {"name": NEWS, "type": "boolean", "required": False},
    {"name": AGE, "type": "int", "required": False},
]
INVITE = "WELCOME-2026"
REVOKED = "REVOKED-1"
PREFILL = {"city": "London", NEWS: True, "notInSchema": "x", "email": "someone-else@example.com"}

START_DATA = "microsoft.graph.onAttributeCollectionStartResponseData"
SUBMIT_DATA = "microsoft.graph.onAttributeCollectionSubmitResponseData"


def action(data_type: str, action_type: str, **fields) -> dict:
    return {"data": {"@odata.type": data_type, "actions": [{"@odata.type": action_type, **fields}]}}


def start_answer(kind: str, **fields) -> dict:
    return action(START_DATA, f"microsoft.graph.attributeCollectionStart.{kind}", **fields)


def submit_answer(kind: str, **fields) -> dict:
    return action(SUBMIT_DATA, f"microsoft.graph.attributeCollectionSubmit.{kind}", **fields)


OTP_SENT = action("microsoft.graph.OnOtpSendResponseData", "microsoft.graph.OtpSend.continueWithDefaultBehavior")


# ------------------------------------------------------------------ fixtures

class Sample:
    """The sample extension app on a port of its own; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self, server, tmp: Path, port: int = 0):
        self.serve = sample_serve_module()
        self.outbox = tmp / f"otp-{time.monotonic_ns()}.jsonl"
        self.settings = {"EXTENSION_ISSUER": server.settings.issuer, "EXTENSION_AUDIENCE": AUDIENCE,
                         "EXTENSIONS_APP_ID": APP, "INVITATION_CODES": INVITE, "BLOCKED_CODES": REVOKED,
                         "PREFILL": json.dumps(PREFILL), "OTP_OUTBOX": str(self.outbox),
                         "JWKS_MIN_REFETCH_SECONDS": "0"}
        self.port = port
        self.base = ""
        self._stop = None

    def start(self) -> Sample:
        self.base, self._stop = self.serve.start(self.settings, port=self.port)
        self.port = int(self.base.split(":")[2].split("/")[0])
        return self

    def stop(self) -> None:
        if self._stop:
            self._stop()
            self._stop = None

    def url(self, endpoint: str) -> str:
        return f"{self.base}/{endpoint}"

    def messages(self, to: str | None = None) -> list[dict]:
        if not self.outbox.exists():
            return []
        out = [json.loads(line) for line in self.outbox.read_text().splitlines() if line.strip()]
        return [m for m in out if to is None or m["identifier"] == to]

    def last_code(self, to: str) -> str:
        msgs = self.messages(to)
        assert msgs, f"the extension sent no code to {to}"
        SEEN_SECRETS.add(msgs[-1]["code"])       # the suite's no-secrets-in-logs check covers them too
        return msgs[-1]["code"]


@pytest.fixture(scope="module")
def sample(server, tmp_path_factory):
    s = Sample(server, tmp_path_factory.mktemp("sample")).start()
    yield s
    s.stop()


@pytest.fixture
def schema(server):
    with server.override(signup_attributes=_attribute_schema(json.dumps(SCHEMA)), extensions_app_id=APP):
        yield


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/nothing"


def start_ext(extensions, url: str, **over):
    return extensions(name="ac-start", event="attributeCollectionStart", url=url, **over)


def submit_ext(extensions, url: str, **over):
    return extensions(name="ac-submit", event="attributeCollectionSubmit", url=url, **over)


def otp_ext(extensions, url: str, **over):
    over.setdefault("channels", ["email", "sms"])
    return extensions(name="otp", event="otpSend", url=url, **over)


# ------------------------------------------------------------------ flow helpers

def signup_start(api, email: str, attrs: dict | None = None, *, password: str | None = PW) -> str:
    r = api.post("signup/v1.0/start", username=email, challenge_type=TYPES, password=password,
                 attributes=json.dumps(attrs) if attrs is not None else None)
    assert r.status == 200, r.body
    return r["continuation_token"]


def signup_challenge(api, ct: str) -> str:
    c = api.post("signup/v1.0/challenge", continuation_token=ct, challenge_type=TYPES)
    assert c.status == 200 and c["challenge_type"] == "oob", c.body
    return c["continuation_token"]


def submit_code(api, ct: str, code: str):
    return api.post("signup/v1.0/continue", continuation_token=ct, grant_type="oob", oob=code)


def submit_attributes(api, ct: str, attrs: dict):
    return api.post("signup/v1.0/continue", continuation_token=ct, grant_type="attributes", attributes=json.dumps(attrs))


def sign_up_to_code(api, outbox, email: str, attrs: dict | None = None, **kw) -> tuple[str, str]:
    """Start and challenge: (the continuation token of the code step, the code from the built-in outbox)."""
    ct = signup_challenge(api, signup_start(api, email, attrs, **kw))
    return ct, outbox.last_code(email)


def auto_sign_in(api, ct: str, email: str):
    return api.post("oauth2/v2.0/token", continuation_token=ct, grant_type="continuation_token", username=email,
                    scope=SCOPE, client_info="1")


def stored_attributes(server, email: str) -> dict:
    user = directory.get_user(server.storage, email)
    assert user is not None, f"no account for {email}"
    return json.loads(user.entity["attributes"])


def email_challenge(api, email: str):
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    assert i.status == 200, i.body
    return api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")


def redeem(api, ct: str, code: str, grant: str = "oob"):
    return api.post("oauth2/v2.0/token", continuation_token=ct, grant_type=grant, oob=code, scope=SCOPE,
                    client_info="1")


def assert_extension_failed(r, code: int):
    assert r.status == 503 and r["error"] == "temporarily_unavailable" and r["error_codes"] == [code], r.body
    assert r.headers["retry-after"] == "5" and "continuation_token" not in r.body


# ------------------------------------------------------------------ attributeCollectionStart

def test_prefill_gives_defaults_the_client_did_not_send(server, api, outbox, schema, extensions, sample):
    start_ext(extensions, sample.url("attribute-collection-start"))
    # city is required: the prefill answers it, so the code step completes the sign-up.
    email = unique_email("prefill")
    ct, code = sign_up_to_code(api, outbox, email, {"displayName": "Pre Fill"})
    done = submit_code(api, ct, code)
    assert done.status == 200, done.body
    assert stored_attributes(server, email) == {"displayName": "Pre Fill", "city": "London", NEWS: "true"}
    assert auto_sign_in(api, done["continuation_token"], email).status == 200
    # A value the client sent wins over the prefill.
    email2 = unique_email("prefill-own")
    ct, code = sign_up_to_code(api, outbox, email2, {"city": "Oslo", NEWS: False})
    assert submit_code(api, ct, code).status == 200
    assert stored_attributes(server, email2) == {"city": "Oslo", NEWS: "false"}
    assert directory.get_user(server.storage, "someone-else@example.com") is None


def test_start_is_called_once_per_flow_with_entras_payload(server, api, outbox, schema, extensions, hostile):
    start_ext(extensions, hostile.url)
    hostile.answer = start_answer("setPrefillValues", inputs={"city": "Paris"})
    email = unique_email("once")
    # No password at start: code, then the password, then the account; the start event fires once.
    ct, code = sign_up_to_code(api, outbox, email, {AGE: "42", NEWS: "true"}, password=None)
    r = submit_code(api, ct, code)
    assert r.status == 400 and r["error"] == "credential_required", r.body
    c = api.post("signup/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type=TYPES)
    done = api.post("signup/v1.0/continue", continuation_token=c["continuation_token"], grant_type="password",
                    password=PW)
    assert done.status == 200, done.body
    assert len(hostile.calls) == 1
    data = hostile.calls[0]["body"]["data"]
    assert data["@odata.type"] == "microsoft.graph.onAttributeCollectionStartCalloutData"
    attrs = data["userSignUpInfo"]["attributes"]
    assert attrs["email"]["value"] == email
    assert attrs[AGE] == {"@odata.type": "microsoft.graph.int64DirectoryAttributeValue", "value": 42,
                          "attributeType": "directorySchemaExtension"}
    assert attrs[NEWS]["value"] is True and attrs[NEWS]["@odata.type"] == "microsoft.graph.booleanDirectoryAttributeValue"
    assert PW not in json.dumps(hostile.calls[0]["body"])
    assert stored_attributes(server, email)["city"] == "Paris"


def test_start_block_ends_the_flow(server, api, outbox, schema, extensions, hostile):
    start_ext(extensions, hostile.url)
    hostile.answer = start_answer("showBlockPage", title="Closed", message="Sign-ups are closed this week.")
    email = unique_email("startblock")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    r = submit_code(api, ct, code)
    assert r.status == 400 and r["error"] == "access_denied" and r["error_codes"] == [1003023], r.body
    assert "Sign-ups are closed this week." in r["error_description"]
    again = submit_code(api, ct, code)
    assert again.status == 400 and again["error"] == "invalid_grant"          # the flow has ended
    assert directory.get_user(server.storage, email) is None and len(hostile.calls) == 1


# ------------------------------------------------------------------ attributeCollectionSubmit

def test_submit_validation_error_then_a_corrected_resubmit(server, api, outbox, schema, extensions, sample):
    submit_ext(extensions, sample.url("attribute-collection-submit"))
    email = unique_email("invite")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo", "displayName": "Val Idation"})
    # Nothing is missing after the code, but the extension wants an invitation code: on the code
    # step the SDKs can act on attributes_required (not on attribute_validation_failed).
    r = submit_code(api, ct, code)
    assert r.status == 400 and r["error"] == "attributes_required" and r["error_codes"] == [55106], r.body
    assert r["required_attributes"] == [{"name": CODE, "type": "string", "required": True}]
    assert "Enter the invitation code you received." in r["error_description"]
    ct2 = r["continuation_token"]
    wrong = submit_attributes(api, ct2, {CODE: "GUESS-0001"})
    assert wrong.status == 400 and wrong["error"] == "invalid_grant", wrong.body
    assert wrong["suberror"] == "attribute_validation_failed" and wrong["error_codes"] == [55107]
    assert wrong["invalid_attributes"] == [{"name": CODE}] and wrong["continuation_token"] == ct2
    assert "This invitation code is not valid." in wrong["error_description"]
    assert directory.get_user(server.storage, email) is None
    # The SDKs resubmit with the token they hold: it still works.
    done = submit_attributes(api, ct2, {CODE: " welcome-2026 "})
    assert done.status == 200, done.body
    assert stored_attributes(server, email) == {"city": "Oslo", "displayName": "Val Idation", CODE: "welcome-2026"}
    assert auto_sign_in(api, done["continuation_token"], email).status == 200


def test_submit_modify_stores_the_normalized_display_name(server, api, outbox, schema, extensions, sample):
    submit_ext(extensions, sample.url("attribute-collection-submit"))
    email = unique_email("modify")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo", CODE: INVITE,
                                                     "displayName": "Ada\u00a0\u00a0 Lovelace"})
    done = submit_code(api, ct, code)
    assert done.status == 200, done.body
    user = directory.get_user(server.storage, email)
    assert user.display_name == "Ada Lovelace" and stored_attributes(server, email)["displayName"] == "Ada Lovelace"
    t = auto_sign_in(api, done["continuation_token"], email)
    assert t.status == 200 and jwt.decode(t["id_token"], options={"verify_signature": False})["name"] == "Ada Lovelace"


def test_submit_block_ends_the_flow(server, api, outbox, schema, extensions, sample):
    submit_ext(extensions, sample.url("attribute-collection-submit"))
    email = unique_email("revoked")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo", CODE: REVOKED})
    r = submit_code(api, ct, code)
    assert r.status == 400 and r["error"] == "access_denied" and r["error_codes"] == [1003023], r.body
    assert "can no longer be used" in r["error_description"]
    assert submit_code(api, ct, code)["error"] == "invalid_grant"
    assert directory.get_user(server.storage, email) is None


def test_extension_down_with_on_error_fail_then_back(server, api, outbox, schema, extensions, tmp_path):
    down = Sample(server, tmp_path).start()
    start_ext(extensions, down.url("attribute-collection-start"))
    submit_ext(extensions, down.url("attribute-collection-submit"))
    down.stop()
    try:
        email = unique_email("down")
        ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo", CODE: INVITE})
        for _ in range(2):
            assert_extension_failed(submit_code(api, ct, code), 1003027)
        assert directory.get_user(server.storage, email) is None
        down.start()                                               # back, on the same port
        done = submit_code(api, ct, code)                          # the same token and the same code
        assert done.status == 200, done.body
        assert stored_attributes(server, email) == {"city": "Oslo", CODE: INVITE, NEWS: "true"}
        # A submit extension down on the attributes step: 503, then the same token works.
        down.stop()
        email2 = unique_email("down2")
        ct, code = sign_up_to_code(api, outbox, email2, {CODE: INVITE})
        r = submit_code(api, ct, code)             # the start extension is down first
        assert_extension_failed(r, 1003027)
        down.start()
        r = submit_code(api, ct, code)
        assert r.status == 200, r.body                             # London was prefilled
        down.stop()
        email3 = unique_email("down3")
        ct, code = sign_up_to_code(api, outbox, email3, {CODE: INVITE, "city": "Rome"})
        config.delete(server.storage, "ac-start")
        r = submit_code(api, ct, code)
        assert_extension_failed(r, 1003027)
        down.start()
        r = submit_code(api, ct, code)
        assert r.status == 200, r.body
    finally:
        down.stop()


def test_extension_down_with_on_error_continue(server, api, outbox, schema, extensions):
    start_ext(extensions, dead_url(), on_error="continue", max_retries=0)
    submit_ext(extensions, dead_url(), on_error="continue", max_retries=0)
    email = unique_email("continue")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    done = submit_code(api, ct, code)
    assert done.status == 200, done.body
    assert stored_attributes(server, email) == {"city": "Oslo"}                 # no prefill, no check
    assert auto_sign_in(api, done["continuation_token"], email).status == 200


# ------------------------------------------------------------------ otpSend

def test_otp_by_email_through_the_extension(server, api, outbox, extensions, sample, make_user):
    otp_ext(extensions, sample.url("otp-send"), channels=["email"])
    email = unique_email("otpmail")
    ct = signup_challenge(api, signup_start(api, email))
    assert outbox.count(email) == 0                                 # the built-in sender was not used
    assert sample.messages(email)[-1]["channel"] == "email"
    done = submit_code(api, ct, sample.last_code(email))
    assert done.status == 200, done.body
    # Sign-in by email code (another purpose) goes the same way.
    c = email_challenge(api, email)
    assert c.status == 200 and c["code_length"] == 8, c.body
    t = redeem(api, c["continuation_token"], sample.last_code(email))
    assert t.status == 200, t.body
    assert outbox.count(email) == 0 and len(sample.messages(email)) == 2


def test_otp_by_sms_through_the_extension(server, api, outbox, extensions, sample, make_user, policies):
    policies(grant={"require_second_factor": True})
    otp_ext(extensions, sample.url("otp-send"), channels=["sms"])
    number = "+49151" + str(time.time_ns())[-8:]
    email, _ = make_user(methods=[{"id": "m", "channel": "sms", "target": number, "default": True, "created": 1}])
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password redirect")
    t = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password", password=PW,
                 scope=SCOPE)
    assert t["suberror"] == "mfa_required", t.body
    sms = api.post("oauth2/v2.0/challenge", continuation_token=t["continuation_token"], id="m")
    assert sms.status == 200 and sms["challenge_channel"] == "sms" and sms["code_length"] == 6, sms.body
    assert outbox.count(number) == 0 and sample.messages(number)[-1]["channel"] == "sms"
    done = redeem(api, sms["continuation_token"], sample.last_code(number), grant="mfa_oob")
    assert done.status == 200 and "sms" in jwt.decode(done["id_token"], options={"verify_signature": False})["amr"]
    # The extension answers SMS only: email codes still go through the built-in sender.
    other = unique_email("builtin")
    signup_challenge(api, signup_start(api, other))
    assert outbox.count(other) == 1 and sample.messages(other) == []


def test_otp_falls_back_to_the_builtin_sender(server, api, outbox, extensions, make_user):
    email, _ = make_user()
    otp_ext(extensions, dead_url(), fallback="builtin")
    c = email_challenge(api, email)
    assert c.status == 200, c.body
    assert redeem(api, c["continuation_token"], outbox.last_code(email)).status == 200


def test_a_failed_otp_extension_restores_the_flow_and_releases_the_cooldown(server, api, outbox, extensions, sample,
                                                                             make_user):
    email, _ = make_user()
    otp_ext(extensions, dead_url())                        # fallback "none": Entra's default
    with server.override(email_cooldown_seconds=30, resend_interval_seconds=30):
        i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
        failed = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                          challenge_type="oob redirect")
        assert_extension_failed(failed, 1003027)
        assert outbox.count(email) == 0 and sample.messages(email) == []
        otp_ext(extensions, sample.url("otp-send"))       # fixed
        c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")
        assert c.status == 200, c.body                     # at once: no cooldown, no per-flow interval held
    assert redeem(api, c["continuation_token"], sample.last_code(email)).status == 200


def test_send_limits_still_apply_with_the_extension(server, api, outbox, extensions, sample, make_user):
    email, _ = make_user()
    otp_ext(extensions, sample.url("otp-send"))
    with server.override(email_per_destination_hour=3):
        results = [email_challenge(api, email) for _ in range(4)]
    assert [r.status for r in results] == [200, 200, 200, 400]
    assert results[-1]["error"] == "slow_down" and int(results[-1].headers["retry-after"]) > 0
    assert len(sample.messages(email)) == 3 and outbox.count(email) == 0
    # The per-flow cap too: five codes in one flow, the sixth is refused before any send.
    email2, _ = make_user()
    c = email_challenge(api, email2)
    statuses = [c.status]
    for _ in range(5):
        c2 = api.post("oauth2/v2.0/challenge", continuation_token=c["continuation_token"], challenge_type="oob redirect")
        statuses.append(c2.status)
        c = c2 if c2.status == 200 else c
    assert statuses == [200, 200, 200, 200, 200, 400] and len(sample.messages(email2)) == 5


def _challenge_ms(api, email: str) -> float:
    i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    t0 = time.perf_counter()
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")
    elapsed = (time.perf_counter() - t0) * 1000
    assert c.status == 200, c.body
    return elapsed


def test_timing_of_codes_for_known_and_unknown_names_with_an_otp_extension(server, api, extensions, sample,
                                                                         make_user, hostile):
    """Measured, not equalized: a code for a known name costs one extension call
    that a name without an account does not (nothing is sent to it). The figures
    are printed (run with -s); the bound only catches a runaway."""
    email, _ = make_user()
    samples = 15
    figures = {}
    for label, url in (("builtin", None), ("sample", sample.url("otp-send")), ("extension +50 ms", hostile.url)):
        if url:
            otp_ext(extensions, url)
        hostile.delay = 0.05
        hostile.answer = OTP_SENT
        known, unknown = [], []
        with server.override(email_per_destination_hour=10 ** 6):
            for _ in range(samples):                          # interleaved: drift hits both alike
                known.append(_challenge_ms(api, email))
                unknown.append(_challenge_ms(api, unique_email("ghost")))
        figures[label] = (statistics.median(known), statistics.median(unknown))
    print("\nemail code challenge, median ms (known, unknown):",
          {k: (round(a, 1), round(b, 1)) for k, (a, b) in figures.items()})
    assert figures["extension +50 ms"][0] - figures["extension +50 ms"][1] > 30     # the call is on the known side only
    assert all(a < 2000 and b < 2000 for a, b in figures.values())


# ------------------------------------------------------------------ attacks (SECURITY.md §7, A95-A104)

def test_A95_modify_cannot_set_anything_outside_the_attribute_schema(server, api, outbox, schema, extensions, hostile):
    """An extension answering modifyAttributeValues with email, oid, password_hash, disabled, …: only schema attributes change."""
    submit_ext(extensions, hostile.url)
    email = unique_email("a95")
    hostile.answer = submit_answer("modifyAttributeValues", attributes={
        "email": "attacker@example.net", "oid": "00000000-0000-0000-0000-000000000666", "password_hash": "x",
        "disabled": "true", "created_by_flow": "x", "methods": "[]", "notInSchema": "y", "displayName": "Fine Name"})
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    done = submit_code(api, ct, code)
    assert done.status == 200, done.body
    user = directory.get_user(server.storage, email)
    assert user.email == email and user.oid != "00000000-0000-0000-0000-000000000666" and user.has_password
    assert not user.entity.get("disabled") and user.methods == []
    assert stored_attributes(server, email) == {"city": "Oslo", "displayName": "Fine Name"}
    assert directory.get_user(server.storage, "attacker@example.net") is None
    t = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=t["continuation_token"], challenge_type="password redirect")
    assert api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="password",
                    password=PW, scope=SCOPE, client_info="1").status == 200


@pytest.mark.parametrize("values", [{"city": "<script>alert(1)</script>"}, {"displayName": "x" * 5000},
                                    {AGE: "not a number"}, {"city": ""}],
                         ids=["regex", "too-long", "type", "blank-required"])
def test_A96_modified_values_pass_the_same_validation_as_the_users(server, api, outbox, schema, extensions, hostile,
                                                                   values):
    """modifyAttributeValues with values the schema refuses: a broken answer (503 1003003, no account); on_error continue keeps the user's values."""
    submit_ext(extensions, hostile.url)
    hostile.answer = submit_answer("modifyAttributeValues", attributes=values)
    email = unique_email("a96")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo", "displayName": "Mine"})
    assert_extension_failed(submit_code(api, ct, code), 1003003)
    assert directory.get_user(server.storage, email) is None
    submit_ext(extensions, hostile.url, on_error="continue")
    done = submit_code(api, ct, code)
    assert done.status == 200, done.body
    assert stored_attributes(server, email) == {"city": "Oslo", "displayName": "Mine"}


def test_A97_a_huge_answer_is_refused_and_the_flow_survives(server, api, outbox, schema, extensions, hostile):
    """A 100 KiB answer (a modify of a giant value, or padding): refused unread past 64 KiB (1003024), no account, the same token works after."""
    submit_ext(extensions, hostile.url)
    hostile.raw = json.dumps(submit_answer("modifyAttributeValues", attributes={"displayName": "A" * 100_000})).encode()
    email = unique_email("a97")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    assert_extension_failed(submit_code(api, ct, code), 1003024)
    assert directory.get_user(server.storage, email) is None
    hostile.raw = None
    hostile.answer = submit_answer("continueWithDefaultBehavior")
    assert submit_code(api, ct, code).status == 200
    assert stored_attributes(server, email) == {"city": "Oslo"}


OTHER_EVENT_ANSWERS = {
    "submit<-start-prefill": ("attributeCollectionSubmit",
                              action(SUBMIT_DATA, "microsoft.graph.attributeCollectionStart.setPrefillValues",
                                     inputs={"city": "Evil"}), 1003012),
    "submit<-token-claims": ("attributeCollectionSubmit",
                             action(SUBMIT_DATA, "microsoft.graph.tokenIssuanceStart.provideClaimsForToken",
                                    claims={"roles": ["admin"]}), 1003012),
    "submit<-start-envelope": ("attributeCollectionSubmit", start_answer("continueWithDefaultBehavior"), 1003003),
    "start<-submit-modify": ("attributeCollectionStart",
                             action(START_DATA, "microsoft.graph.attributeCollectionSubmit.modifyAttributeValues",
                                    attributes={"city": "Evil"}), 1003012),
    "start<-otp": ("attributeCollectionStart", OTP_SENT, 1003003),
    "otp<-submit-continue": ("otpSend", submit_answer("continueWithDefaultBehavior"), 1003003),
    "otp<-otp-envelope-start-action": ("otpSend", action("microsoft.graph.OnOtpSendResponseData",
                                                         "microsoft.graph.attributeCollectionStart.continueWithDefaultBehavior"),
                                       1003012),
}


@pytest.mark.parametrize("case", sorted(OTHER_EVENT_ANSWERS))
def test_A98_an_answer_claiming_another_events_action_is_refused(server, api, outbox, schema, extensions, hostile, case):
    """An extension answering with another event's action or envelope (prefill on submit, claims, modify on start, OTP): refused, nothing done."""
    event, answer, code = OTHER_EVENT_ANSWERS[case]
    hostile.answer = answer
    email = unique_email("a98")
    if event == "otpSend":
        otp_ext(extensions, hostile.url)
        ct = signup_start(api, email)
        r = api.post("signup/v1.0/challenge", continuation_token=ct, challenge_type=TYPES)
        assert_extension_failed(r, code)
        assert outbox.count(email) == 0                     # no fallback configured: nothing sent anywhere
        return
    extensions(name="a98", event=event, url=hostile.url)
    ct, code_sent = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    assert_extension_failed(submit_code(api, ct, code_sent), code)
    assert directory.get_user(server.storage, email) is None


@pytest.mark.parametrize("errors_", [{"email": "taken", "password": "weak", f"extension_{'0' * 32}_invitationCode": "no"},
                                     {}], ids=["unknown-names", "message-only"])
def test_A99_a_validation_error_naming_no_schema_attribute_fails_closed(server, api, outbox, schema, extensions, hostile,
                                                                        errors_):
    """showValidationError naming attributes that do not exist (or none): 503 1003003 even with on_error continue; never an account, never a loop."""
    submit_ext(extensions, hostile.url, on_error="continue")
    hostile.answer = submit_answer("showValidationError", message="Fix these.", attributeErrors=errors_)
    email = unique_email("a99")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    assert_extension_failed(submit_code(api, ct, code), 1003003)
    assert directory.get_user(server.storage, email) is None
    # Names in the schema mixed with unknown ones: the known ones are asked for, the rest dropped.
    hostile.answer = submit_answer("showValidationError", attributeErrors={"city": "Not here.", "oid": "x"})
    r = submit_code(api, ct, code)
    assert r["error"] == "attributes_required" and [a["name"] for a in r["required_attributes"]] == ["city"], r.body


def test_A100_extension_messages_cannot_forge_lines_of_the_error(server, api, outbox, schema, extensions, hostile):
    """Block and validation messages with CR/LF and a fake "Trace ID:" line: one printable line each, one real Trace ID."""
    submit_ext(extensions, hostile.url)
    forged = "Nope.\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: forged\x00\x1b[31m"
    hostile.answer = submit_answer("showValidationError", message=forged, attributeErrors={"city": forged})
    email = unique_email("a100")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    r = submit_code(api, ct, code)
    assert r["error"] == "attributes_required", r.body
    hostile.answer = submit_answer("showBlockPage", message=forged)
    b = submit_attributes(api, r["continuation_token"], {"city": "Rome"})
    assert b["error"] == "access_denied", b.body
    for answer in (r, b):
        lines = answer["error_description"].split("\r\n")
        assert len(lines) == 4 and "Nope." in lines[0] and lines[0].isprintable(), lines
        assert [x for x in lines if x.startswith("Trace ID:")] == [f"Trace ID: {answer['trace_id']}"]
        assert [x for x in lines if x.startswith("Correlation ID:")] == [f"Correlation ID: {answer['correlation_id']}"]


def test_A101_invitation_codes_cannot_be_guessed_through_the_submit_extension(server, api, outbox, schema, extensions,
                                                                               sample):
    """No submit call before the address is verified, and at most 10 refused submissions per verified flow."""
    submit_ext(extensions, sample.url("attribute-collection-submit"))
    email = unique_email("a101")
    ct = signup_start(api, email, {"city": "Oslo"})
    early = submit_attributes(api, ct, {CODE: "GUESS-0000"})       # before the code: stored, never checked
    assert early.status == 200 and set(early.body) == {"continuation_token"}
    ct = signup_challenge(api, early["continuation_token"])
    r = submit_code(api, ct, outbox.last_code(email))
    assert r["error"] == "attributes_required"
    ct = r["continuation_token"]
    for i in range(1, signup_flow.MAX_EXTENSION_REFUSALS_PER_FLOW):
        g = submit_attributes(api, ct, {CODE: f"GUESS-{i:04d}"})
        assert g["suberror"] == "attribute_validation_failed", g.body
    over = submit_attributes(api, ct, {CODE: INVITE})                # even the right one, after the cap
    assert over.status == 400 and over["error"] == "invalid_grant" and "suberror" not in over.body, over.body
    assert directory.get_user(server.storage, email) is None


def test_A101_parallel_guesses_on_one_token_reach_the_extension_once_each_round(server, api, outbox, schema, extensions,
                                                                                 hostile):
    """3 × 40 parallel submissions of different invitation codes on one continuation token (the
    token is not rotated on attributes): each check is counted before the call, so at most 10
    guesses per flow reach the extension (an outside review saw 120 of 120 judged)."""
    hostile.delay = 0.2
    hostile.answer = submit_answer("showValidationError", message="Wrong code.", attributeErrors={CODE: "Wrong code."})
    submit_ext(extensions, hostile.url)
    email = unique_email("a101-parallel")
    ct = signup_challenge(api, signup_start(api, email, {"city": "Oslo"}))
    r = submit_code(api, ct, outbox.last_code(email))
    assert r["error"] == "attributes_required", r.body
    ct = r["continuation_token"]
    for round_ in range(3):
        parallel(40, lambda i: submit_attributes(api, ct, {CODE: f"GUESS-{round_}-{i:03d}"}))
    # Each guess is counted (If-Match) before the extension sees it: never more than the cap per flow.
    assert len(hostile.calls) <= signup_flow.MAX_EXTENSION_REFUSALS_PER_FLOW, len(hostile.calls)
    from shared.flows import state

    pk, rk, _, _ = state._parts(server.settings, ct)
    counted = int(server.storage.table(state._table_of(pk)).get(pk, rk).get("attr_refusals") or 0)
    assert counted >= len(hostile.calls), (counted, len(hostile.calls))       # no guess judged without being counted
    assert directory.get_user(server.storage, email) is None


def test_A102_a_slow_otp_extension_holds_no_cooldown_and_no_flow(server, api, outbox, extensions, hostile, make_user):
    """An OTP extension that does not answer in time: 503 1003005 within the bound, nothing sent, and the same token gets a code at once."""
    email, _ = make_user()
    otp_ext(extensions, hostile.url, timeout_ms=300)
    hostile.delay, hostile.answer = 3.0, OTP_SENT
    with server.override(email_cooldown_seconds=30, resend_interval_seconds=30):
        i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
        t0 = time.monotonic()
        r = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")
        assert_extension_failed(r, 1003005)
        assert time.monotonic() - t0 < 2.5 and len(hostile.calls) == 2
        assert outbox.count(email) == 0
        hostile.delay = 0.0
        ok = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="oob redirect")
        assert ok.status == 200, ok.body
    code = hostile.calls[-1]["body"]["data"]["otpContext"]["oneTimeCode"]
    SEEN_SECRETS.add(code)
    assert hostile.calls[-1]["body"]["data"]["otpContext"] == {"identifier": email, "oneTimeCode": code,
                                                                "channel": "email"}
    assert redeem(api, ok["continuation_token"], code).status == 200


def test_A103_the_otp_extension_never_hears_of_unknown_or_taken_addresses(server, api, outbox, extensions, hostile,
                                                                          make_user):
    """Codes for names without an account are not sent, so the extension is not called; a taken address's sign-up notice is no code either."""
    email, _ = make_user()
    otp_ext(extensions, hostile.url)
    hostile.answer = OTP_SENT
    ghost = unique_email("ghost")
    assert email_challenge(api, ghost).status == 200
    r = api.post("resetpassword/v1.0/start", username=ghost, challenge_type="oob redirect")
    assert api.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"],
                    challenge_type="oob redirect").status == 200
    signup_challenge(api, signup_start(api, email))            # taken: a notice by the built-in sender
    assert hostile.calls == []
    assert outbox.messages(email)[-1]["purpose"] == "signup_attempt_notice"
    assert email_challenge(api, email).status == 200 and len(hostile.calls) == 1


def test_A104_a_prefill_cannot_override_the_user_or_reach_outside_the_schema(server, api, outbox, schema, extensions,
                                                                             hostile):
    """setPrefillValues with other values for what the user sent, the email, non-schema and invalid values: only valid defaults for unsent schema attributes."""
    start_ext(extensions, hostile.url)
    hostile.answer = start_answer("setPrefillValues", inputs={
        "city": "Evil City", "displayName": "Injected", "email": "attacker@example.net", "password": "x",
        AGE: "not a number", NEWS: True})
    email = unique_email("a104")
    ct, code = sign_up_to_code(api, outbox, email, {"city": "Oslo"})
    done = submit_code(api, ct, code)
    assert done.status == 200, done.body
    assert stored_attributes(server, email) == {"city": "Oslo", "displayName": "Injected", NEWS: "true"}
    assert directory.get_user(server.storage, email).email == email
    assert directory.get_user(server.storage, "attacker@example.net") is None
