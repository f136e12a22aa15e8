"""Delivery: templates, outbox, and the real ACS SDK clients against tests/fakeacs.py.

Run: .venv/bin/python -m pytest tests/test_delivery.py -q
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import fakeacs  # noqa: E402
from fakeacs import FakeAcs  # noqa: E402
from shared.delivery import templates  # noqa: E402
from shared.delivery.senders import (  # noqa: E402
    AcsEmailSender,
    AcsSmsSender,
    CompositeSender,
    DeliveryError,
    Message,
    OutboxSender,
    build_sender,
    mask_recipient,
    read_outbox,
)
from shared.settings import Settings, SettingsError  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PHONE = "+4915112345678"
EMAIL = "alice@example.com"
CODE = "73915284"
SMS_FROM = "+18005550100"
EMAIL_FROM = "DoNotReply@contoso.example"
CODE_PURPOSES = sorted(templates.CODE_PURPOSES)
NOTICE_PURPOSES = [p for p in templates.PURPOSES if p not in templates.CODE_PURPOSES]
EVIL = "<script>alert(1)</script>{{7*7}}\r\nBcc: x@evil.example"


def msg(channel: str, purpose: str, **kw) -> Message:
    to = PHONE if channel == "sms" else EMAIL
    code = kw.pop("code", CODE if purpose in templates.CODE_PURPOSES else None)
    return Message(channel=channel, to=to, purpose=purpose, code=code, **kw)


@pytest.fixture
def fake():
    with FakeAcs() as f:
        yield f


def sms_sender(fake: FakeAcs, **kw) -> AcsSmsSender:
    kw.setdefault("connection_string", fake.connection_string)
    kw.setdefault("client_kwargs", fake.client_kwargs)
    return AcsSmsSender(sender=SMS_FROM, app_name=kw.pop("app_name", "Contoso"), **kw)


def email_sender(fake: FakeAcs, **kw) -> AcsEmailSender:
    kw.setdefault("connection_string", fake.connection_string)
    kw.setdefault("client_kwargs", fake.client_kwargs)
    kw.setdefault("poll_interval", 0.02)
    return AcsEmailSender(sender=EMAIL_FROM, app_name=kw.pop("app_name", "Contoso"), **kw)


def assert_safe_reason(err: DeliveryError) -> None:
    for secret in (PHONE, EMAIL, CODE, PHONE[1:]):
        assert secret not in err.reason
        assert secret not in str(err)
    assert err.__cause__ is None


# --------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------

def test_importing_delivery_does_not_import_acs_sdks():
    code = (
        "import sys\n"
        "import shared.delivery.senders, shared.delivery.templates\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('azure.communication', 'azure.functions', 'azure.identity')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------
# Real SDK clients against the fake
# --------------------------------------------------------------------------

@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_sms_sdk_every_purpose(fake, purpose):
    sender = sms_sender(fake)
    m = msg("sms", purpose, origin_domain="login.contoso.example", locale="en-US")
    sender.send(m)
    [got] = fake.sms()
    expected = templates.render(m, "Contoso").sms
    assert got["to"] == PHONE and got["from"] == SMS_FROM
    assert got["message"] == expected
    recipient = got["body"]["smsRecipients"][0]
    uuid.UUID(recipient["repeatabilityRequestId"])
    assert recipient["repeatabilityFirstSent"].endswith("GMT")
    assert [r["status"] for r in fake.requests] == [202]  # signed correctly, one request


@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_email_sdk_every_purpose(fake, purpose):
    sender = email_sender(fake)
    m = msg("email", purpose, locale="de-DE,de;q=0.9,en;q=0.8")
    sender.send(m)
    [got] = fake.emails()
    r = templates.render(m, "Contoso")
    assert r.language == "de"
    assert got["to"] == EMAIL and got["from"] == EMAIL_FROM
    assert (got["subject"], got["plainText"], got["html"]) == (r.subject, r.text, r.html)
    assert got["body"]["userEngagementTrackingDisabled"] is True
    uuid.UUID(got["operation_id_header"])  # idempotency key sent
    statuses = [(q["method"], q["path"].split("?")[0].rsplit("/", 1)[0], q["status"]) for q in fake.requests]
    assert statuses == [("POST", "", 202), ("GET", "/emails/operations", 200)]
    if purpose in templates.CODE_PURPOSES:
        assert CODE in got["plainText"] and CODE in got["html"]
    else:
        assert CODE not in got["plainText"]


def test_email_waits_for_running_then_succeeded(fake):
    fake.email_polls_until_done = 3
    email_sender(fake).send(msg("email", "signin_code"))
    assert [q["method"] for q in fake.requests] == ["POST", "GET", "GET", "GET"]


def test_wrong_access_key_is_rejected_by_fake(fake):
    wrong = base64.b64encode(os.urandom(32)).decode()
    conn = f"endpoint={fake.endpoint}/;accesskey={wrong}"
    with pytest.raises(DeliveryError) as e1:
        sms_sender(fake, connection_string=conn).send(msg("sms", "signin_code"))
    with pytest.raises(DeliveryError) as e2:
        email_sender(fake, connection_string=conn).send(msg("email", "signin_code"))
    for e in (e1, e2):
        assert e.value.retryable is False and "401" in e.value.reason
        assert_safe_reason(e.value)
    assert fake.messages == []
    assert [q["status"] for q in fake.requests] == [401, 401]


def test_fake_signature_matches_sdk_policy_and_rejects_tampering(fake):
    """The fake's HMAC is the SDK's HMAC; tampered body, stale date, wrong host → 401."""
    from azure.communication.sms._shared.policy import HMACCredentialsPolicy
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest

    body = json.dumps({"from": SMS_FROM, "smsRecipients": [{"to": PHONE}], "message": "hi"})
    url = f"{fake.endpoint}/sms?api-version=2021-03-07"
    req = HttpRequest("POST", url, content=body, headers={"Content-Type": "application/json"})
    HMACCredentialsPolicy(fake.endpoint, fake.access_key).on_request(PipelineRequest(req, PipelineContext(None)))
    h = dict(req.headers)
    host = f"127.0.0.1:{fake.port}"
    ours = fakeacs.compute_signature(fake.access_key, "POST", "/sms?api-version=2021-03-07", h["x-ms-date"], host,
                                     h["x-ms-content-sha256"])
    assert h["Authorization"] == f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={ours}"

    ctx = ssl.create_default_context(cafile=fake.ca_file)

    def post(path: str, data: bytes, headers: dict) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", fake.port, context=ctx, timeout=10)
        try:
            conn.request("POST", path, body=data, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def signed(data: bytes, date: str | None = None, key: str | None = None, path="/sms?api-version=2021-03-07"):
        date = date or email.utils.formatdate(usegmt=True)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        sig = fakeacs.compute_signature(key or fake.access_key, "POST", path, date, host, digest)
        return {"x-ms-date": date, "x-ms-content-sha256": digest, "Content-Type": "application/json",
                "Authorization": f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"}

    data = body.encode()
    assert post("/sms?api-version=2021-03-07", data, h) == 202                     # the SDK's own headers
    assert post("/sms?api-version=2021-03-07", data, signed(data)) == 202
    assert post("/sms?api-version=2021-03-07", data.replace(b"hi", b"ho"), signed(data)) == 401  # body changed
    assert post("/sms?api-version=2021-03-07", data, signed(data, path="/sms?api-version=1")) == 401  # other URL
    stale = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert post("/sms?api-version=2021-03-07", data, signed(data, date=stale)) == 401
    assert post("/sms?api-version=2021-03-07", data, signed(data, key=base64.b64encode(b"k" * 32).decode())) == 401
    no_auth = {k: v for k, v in signed(data).items() if k != "Authorization"}
    assert post("/sms?api-version=2021-03-07", data, no_auth) == 401
    assert len(fake.sms()) == 2


def test_tls_certificate_is_really_verified(fake):
    # Without trusting the throwaway CA, the SDK refuses the connection.
    with pytest.raises(DeliveryError) as e:
        sms_sender(fake, client_kwargs={}).send(msg("sms", "signin_code"))
    assert e.value.retryable is True
    assert fake.messages == []


def test_plain_http_works_only_with_endpoint_and_key_credential():
    from azure.core.credentials import AzureKeyCredential

    with FakeAcs(tls=False) as fake:
        assert fake.endpoint.startswith("http://")
        sender = AcsSmsSender(sender=SMS_FROM, endpoint=fake.endpoint, credential=AzureKeyCredential(fake.access_key))
        sender.send(msg("sms", "signin_code"))
        assert len(fake.sms()) == 1
        # from_connection_string drops the scheme and forces https -> TLS handshake against plain HTTP fails.
        with pytest.raises(DeliveryError) as e:
            AcsSmsSender(sender=SMS_FROM, connection_string=fake.connection_string, timeout=2).send(msg("sms", "signin_code"))
        assert e.value.retryable is True


def test_build_sender_acs_end_to_end(fake, monkeypatch):
    # build_sender has no hook for client kwargs; trust the test CA via the env var requests honours.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_file)
    settings = Settings.from_env({
        "AUTH_ENVIRONMENT": "local", "AUTH_DELIVERY": "acs", "AUTH_ACS_CONNECTION_STRING": fake.connection_string,
        "AUTH_EMAIL_SENDER": EMAIL_FROM, "AUTH_SMS_SENDER": SMS_FROM, "AUTH_APP_NAME": "Fabrikam",
    })
    sender = build_sender(settings)
    assert isinstance(sender, CompositeSender)
    sender.send(msg("sms", "mfa_code"))
    sender.senders["email"].poll_interval = 0.02
    sender.send(msg("email", "password_changed"))
    assert [m["channel"] for m in fake.messages] == ["sms", "email"]
    assert "Fabrikam" in fake.sms()[0]["message"]


def test_build_sender_managed_identity_and_config_errors(tmp_path):
    base = {"AUTH_ENVIRONMENT": "local", "AUTH_DELIVERY": "acs"}
    s = Settings.from_env({**base, "AUTH_ACS_ENDPOINT": "https://x.communication.azure.com",
                           "AUTH_ACS_CLIENT_ID": "11111111-1111-1111-1111-111111111111", "AUTH_SMS_SENDER": SMS_FROM})
    sender = build_sender(s)
    assert set(sender.senders) == {"sms"}
    assert type(sender.senders["sms"]._credential).__name__ == "ManagedIdentityCredential"
    with pytest.raises(DeliveryError) as e:
        sender.send(msg("email", "signin_code"))
    assert e.value.retryable is False
    with pytest.raises(SettingsError):
        build_sender(Settings.from_env({**base, "AUTH_SMS_SENDER": SMS_FROM}))
    with pytest.raises(SettingsError):
        build_sender(Settings.from_env({**base, "AUTH_ACS_ENDPOINT": "https://x.communication.azure.com"}))
    out = build_sender(Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_OUTBOX_PATH": str(tmp_path / "o.jsonl")}))
    assert isinstance(out, OutboxSender)


# --------------------------------------------------------------------------
# Failures → DeliveryError
# --------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["sms", "email"])
def test_429_is_retryable_with_retry_after_and_not_retried_by_sdk(fake, channel):
    fake.fail_next("429", retry_after=30)
    sender = sms_sender(fake) if channel == "sms" else email_sender(fake)
    t0 = time.monotonic()
    with pytest.raises(DeliveryError) as e:
        sender.send(msg(channel, "signin_code"))
    assert time.monotonic() - t0 < 5  # did not sleep for the 30 s Retry-After
    assert e.value.retryable is True and e.value.retry_after == 30
    assert "429" in e.value.reason
    assert_safe_reason(e.value)
    assert [q["status"] for q in fake.requests] == [429]
    assert fake.messages == []


def test_429_without_retry_after(fake):
    fake.fail_next("429")
    with pytest.raises(DeliveryError) as e:
        sms_sender(fake).send(msg("sms", "signin_code"))
    assert e.value.retryable is True and e.value.retry_after is None


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("kind", ["500", "503"])
def test_5xx_is_retryable(fake, channel, kind):
    fake.fail_next(kind, count=5)
    sender = sms_sender(fake) if channel == "sms" else email_sender(fake)
    with pytest.raises(DeliveryError) as e:
        sender.send(msg(channel, "reset_code"))
    assert e.value.retryable is True and kind in e.value.reason
    assert_safe_reason(e.value)
    assert len(fake.requests) == 1  # no SDK retry of the POST


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_hanging_service_times_out_quickly(fake, channel):
    fake.fail_next("hang", seconds=5)
    sender = (sms_sender(fake, timeout=0.5) if channel == "sms"
              else email_sender(fake, request_timeout=0.5, timeout=0.5))
    t0 = time.monotonic()
    with pytest.raises(DeliveryError) as e:
        sender.send(msg(channel, "signup_code"))
    assert time.monotonic() - t0 < 3
    assert e.value.retryable is True and "timeout" in e.value.reason
    assert_safe_reason(e.value)


def test_email_status_wait_is_bounded():
    with FakeAcs(email_polls_until_done=10**6) as fake:
        t0 = time.monotonic()
        with pytest.raises(DeliveryError) as e:
            email_sender(fake, timeout=0.5).send(msg("email", "signin_code"))
        assert time.monotonic() - t0 < 3
        assert e.value.retryable is True and "timed out" in e.value.reason
        assert len(fake.emails()) == 1  # accepted by the service: it may still arrive


def test_email_status_poll_throttled(fake):
    fake.email_polls_until_done = 2
    fake.fail_next("429", retry_after=4, path_prefix="/emails/operations/")
    with pytest.raises(DeliveryError) as e:
        email_sender(fake).send(msg("email", "signin_code"))
    assert e.value.retryable is True and e.value.retry_after == 4


def test_email_failed_status_is_not_retryable(fake):
    fake.fail_email_addresses.add(EMAIL)
    with pytest.raises(DeliveryError) as e:
        email_sender(fake).send(msg("email", "signin_code"))
    assert e.value.retryable is False
    assert "EmailDroppedAllRecipientsSuppressed" in e.value.reason
    assert_safe_reason(e.value)


def test_sms_per_recipient_failure_is_checked(fake):
    fake.fail_sms_numbers.add(PHONE)
    with pytest.raises(DeliveryError) as e:
        sms_sender(fake).send(msg("sms", "signin_code"))
    assert e.value.retryable is False and "400" in e.value.reason
    assert_safe_reason(e.value)


def test_unreachable_service_is_retryable():
    with FakeAcs() as fake:
        conn, kwargs = fake.connection_string, fake.client_kwargs
    # server stopped: connection refused
    with pytest.raises(DeliveryError) as e:
        AcsSmsSender(sender=SMS_FROM, connection_string=conn, client_kwargs=kwargs, timeout=1).send(msg("sms", "signin_code"))
    assert e.value.retryable is True


def test_logs_never_contain_code_or_recipient(fake, caplog):
    caplog.set_level("DEBUG")
    sms_sender(fake).send(msg("sms", "signin_code"))
    email_sender(fake).send(msg("email", "signin_code"))
    fake.fail_next("429", retry_after=3)
    with pytest.raises(DeliveryError):
        sms_sender(fake).send(msg("sms", "signin_code"))
    assert "delivery ok" in caplog.text and "delivery failed" in caplog.text
    for secret in (CODE, PHONE, EMAIL):
        assert secret not in caplog.text


def test_sender_rejects_wrong_channel(fake):
    with pytest.raises(DeliveryError):
        sms_sender(fake).send(msg("email", "signin_code"))
    with pytest.raises(DeliveryError):
        email_sender(fake).send(msg("sms", "signin_code"))
    assert fake.requests == []


def test_composite_routes_by_channel():
    seen = []

    class Rec:
        def __init__(self, name):
            self.name = name

        def send(self, message):
            seen.append((self.name, message.channel))

    c = CompositeSender(email=Rec("e"), sms=Rec("s"))
    c.send(msg("sms", "signin_code"))
    c.send(msg("email", "password_changed"))
    assert seen == [("s", "sms"), ("e", "email")]
    with pytest.raises(DeliveryError):
        CompositeSender(email=Rec("e")).send(msg("sms", "signin_code"))


# --------------------------------------------------------------------------
# Message
# --------------------------------------------------------------------------

def test_message_validation_and_repr():
    with pytest.raises(ValueError):
        Message("fax", PHONE, "signin_code", code=CODE)
    with pytest.raises(ValueError):
        Message("sms", PHONE, "nope", code=CODE)
    with pytest.raises(ValueError):
        Message("sms", "015112345678", "signin_code", code=CODE)
    with pytest.raises(ValueError):
        Message("email", "Alice@Example.com", "signin_code", code=CODE)
    with pytest.raises(ValueError):
        Message("email", "alice@example.com\r\nbcc: x@evil.example", "signin_code", code=CODE)
    with pytest.raises(ValueError):
        Message("sms", PHONE, "signin_code")
    Message("email", EMAIL, "password_changed")  # notices need no code
    text = repr(msg("sms", "signin_code")) + str(msg("email", "signin_code"))
    assert CODE not in text and PHONE not in text and EMAIL not in text
    assert mask_recipient(EMAIL) == "a***@example.com"
    assert mask_recipient(PHONE).startswith("+49") and mask_recipient(PHONE).endswith("78")


# --------------------------------------------------------------------------
# Outbox
# --------------------------------------------------------------------------

def test_outbox_records(tmp_path, capsys):
    path = tmp_path / "nested" / "dir" / "outbox.jsonl"
    sender = OutboxSender(path, app_name="Contoso")
    sender.send(msg("email", "signup_code", locale="fr-CA,fr;q=0.9"))
    sender.send(msg("sms", "signin_code", origin_domain="login.contoso.example"))
    sender.send(msg("email", "signup_attempt_notice"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    recs = [json.loads(line) for line in lines]
    assert recs == read_outbox(path)
    e, s, n = recs
    for r in recs:
        assert {"channel", "to", "purpose", "code", "subject", "body", "html", "locale", "sent_at"} <= set(r)
        when = dt.datetime.fromisoformat(r["sent_at"].replace("Z", "+00:00"))
        assert when.utcoffset() == dt.timedelta(0) and r["sent_at"].endswith("Z")
        assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 60
    assert (e["channel"], e["to"], e["purpose"], e["code"], e["locale"]) == ("email", EMAIL, "signup_code", CODE, "fr")
    assert e["html"].startswith("<!DOCTYPE html>") and CODE in e["body"] and "inscription" in e["subject"]
    assert (s["channel"], s["to"], s["html"]) == ("sms", PHONE, None)
    assert s["body"] == s["sms"] and s["body"].splitlines()[-1] == f"@login.contoso.example #{CODE}"
    assert n["code"] is None and n["purpose"] == "signup_attempt_notice"
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and CODE in out[0] and "a***@example.com" in out[0]
    assert EMAIL not in "\n".join(out) and PHONE not in "\n".join(out)


def test_outbox_is_thread_safe(tmp_path):
    path = tmp_path / "outbox.jsonl"
    senders = [OutboxSender(path, echo=False) for _ in range(4)]  # separate instances, same file

    def work(i):
        for j in range(50):
            senders[i % 4].send(Message("sms", f"+1555000{i:02d}{j:02d}", "signin_code", code=f"{i:02d}{j:04d}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = read_outbox(path)
    assert len(recs) == 400
    assert len({r["code"] for r in recs}) == 400


def test_outbox_write_failure_is_delivery_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeliveryError) as e:
        OutboxSender(blocker / "outbox.jsonl", echo=False).send(msg("sms", "signin_code"))
    assert e.value.retryable is True


# --------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------

@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_template_escaping_of_interpolated_data(purpose):
    m = msg("email", purpose)
    r = templates.render(m, EVIL)
    assert "\r" not in r.subject and "\n" not in r.subject
    assert all(ord(c) >= 32 for c in r.subject)
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html
    assert "{{7*7}}" in r.html and "{{7*7}}" in r.text and "{{7*7}}" in r.subject
    assert "49" not in r.html + r.text + r.subject
    assert not any(line.lower().startswith("bcc:") for line in (r.text + "\n" + r.html).splitlines())
    assert "\r" not in r.text
    # the only tags are our own
    tags = set(re.findall(r"</?([a-zA-Z0-9]+)", r.html))
    assert tags <= {"html", "head", "meta", "title", "body", "div", "p", "h1"}

    s = templates.render(msg("sms", purpose, origin_domain="login.contoso.example"), EVIL)
    assert "\r" not in s.sms
    assert not any(line.lower().startswith("bcc:") for line in s.sms.splitlines())
    assert "{{7*7}}" in s.sms


def test_template_escaping_through_the_sdk(fake):
    email_sender(fake, app_name=EVIL).send(msg("email", "signin_code"))
    [got] = fake.emails()
    assert "\n" not in got["subject"] and "\r" not in got["subject"]
    assert "<script>" not in got["html"] and "{{7*7}}" in got["html"]


def test_template_code_and_domain_cannot_inject():
    r = templates.render(msg("email", "signin_code", code="<b>1</b>\r\n"), "Contoso")
    assert "<b>" not in r.html and "&lt;b&gt;1&lt;/b&gt;" in r.html
    # a forged WebOTP line in the domain is dropped, never emitted
    s = templates.render(msg("sms", "signin_code", origin_domain="evil.example #000000\n@evil.example"), "Contoso")
    assert "@" not in s.sms and "#" not in s.sms
    s = templates.render(msg("sms", "signin_code"), "Contoso\n\n@evil.example #000000")
    assert not any(line.startswith("@") for line in s.sms.splitlines())


def test_sms_origin_bound_line():
    s = templates.render(msg("sms", "signin_code", origin_domain="login.contoso.example"), "Contoso")
    lines = s.sms.split("\n")
    assert lines[-1] == f"@login.contoso.example #{CODE}"
    assert lines[-2] == ""  # blank line before it (iOS / WebOTP convention)
    assert lines[0].startswith(CODE) and "Contoso" in lines[0]
    assert any("not share" in line for line in lines)
    assert templates.render(msg("sms", "signin_code", origin_domain="https://Login.Contoso.Example:443/"),
                            "C").sms.endswith(f"\n@login.contoso.example #{CODE}")
    assert templates.render(msg("sms", "signin_code", origin_domain="bücher.example"),
                            "C").sms.endswith(f"\n@xn--bcher-kva.example #{CODE}")
    no_origin = templates.render(msg("sms", "signin_code"), "Contoso").sms
    assert "@" not in no_origin and "#" not in no_origin
    for purpose in NOTICE_PURPOSES:
        s = templates.render(msg("sms", purpose, origin_domain="login.contoso.example"), "Contoso").sms
        assert "@" not in s and "#" not in s


@pytest.mark.parametrize("lang", templates.SUPPORTED_LANGUAGES)
@pytest.mark.parametrize("purpose", templates.PURPOSES)
def test_sms_fits_one_gsm7_segment(lang, purpose):
    s = templates.render(msg("sms", purpose, locale=lang, origin_domain="login.contoso.example"), "Contoso").sms
    n = templates.gsm7_length(s)
    assert n is not None, f"non GSM-7 character in {s!r}"
    assert n <= 160, (n, s)
    assert "Contoso" in s


@pytest.mark.parametrize("locale,expected", [
    (None, "en"), ("", "en"), ("de", "de"), ("de-DE fr", "de"), ("fr-CA de", "fr"),
    ("de-DE,de;q=0.9,en;q=0.8", "de"), ("es-ES,fr;q=0.5,de;q=0.4", "fr"), ("es", "en"), ("es-MX pt", "en"),
    ("fr;q=0, de", "de"), ("EN-us", "en"), ("*", "en"), ("de_AT", "de"), ("en;q=0.5, de;q=0.8", "de"),
    ("de ; q=0.7 , fr ; q=0.9", "fr"), ("x" * 1000, "en"), ("zh-Hant-TW,zh;q=0.9", "en"),
])
def test_pick_language(locale, expected):
    assert templates.pick_language(locale) == expected


def test_localized_texts_and_fallback():
    en = templates.render(msg("email", "reset_code"), "Contoso")
    de = templates.render(msg("email", "reset_code", locale="de-CH"), "Contoso")
    fr = templates.render(msg("email", "reset_code", locale="fr"), "Contoso")
    xx = templates.render(msg("email", "reset_code", locale="ja-JP,ko;q=0.5"), "Contoso")
    assert (en.language, de.language, fr.language, xx.language) == ("en", "de", "fr", "en")
    assert "password reset" in en.subject and "Passwort" in de.subject and "mot de passe" in fr.subject
    assert xx.subject == en.subject and xx.text == en.text
    assert '<html lang="de">' in de.html
    sms_de = templates.render(msg("sms", "signin_code", locale="de-DE"), "Contoso").sms
    assert "Anmeldecode" in sms_de and "weiter" in sms_de
    # every language has every purpose and the same placeholders as English
    for lang in templates.SUPPORTED_LANGUAGES:
        for purpose in templates.PURPOSES:
            for key, value in templates._TEXTS["en"][purpose].items():
                other = templates._TEXTS[lang][purpose][key]
                assert set(re.findall(r"\{\w+\}", other)) == set(re.findall(r"\{\w+\}", value)), (lang, purpose, key)


def test_render_shapes():
    e = templates.render(msg("email", "mfa_code"), "Contoso")
    assert e.html and e.sms is None and CODE in e.text and CODE in e.html
    s = templates.render(msg("sms", "mfa_code"), "Contoso")
    assert s.html is None and s.sms == s.text and s.subject
    n = templates.render(msg("email", "password_changed"), "Contoso")
    assert "changed" in n.subject and "None" not in n.text
    with pytest.raises(ValueError):  # a code purpose without a code
        templates.render(SimpleNamespace(channel="email", purpose="signin_code", code=None, locale=None,
                                         origin_domain=None), "x")
    with pytest.raises(ValueError):
        templates.render(SimpleNamespace(channel="fax", purpose="signin_code", code=CODE, locale=None,
                                         origin_domain=None), "x")
