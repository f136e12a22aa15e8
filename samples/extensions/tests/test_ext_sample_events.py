"""Token issuance start, attribute collection start/submit and OTP send: the
documented Entra responses, byte for byte where the reference shows one."""

from __future__ import annotations

import json

import pytest

from ext_sample_testkit import (  # noqa: F401  (fixtures)
    CODE_ATTR, Client, attribute_collection, client, issuer, otp_send, sample_files, sample_host, serve,
    settings_for, signup_submit, string_attr, token_issuance,
)

ADA = {"displayName": "Ada Lovelace", "id": "7f122226-0000-0000-0000-000000000000",
       "mail": "Ada@Example.com", "userPrincipalName": "7f122226-0000-0000-0000-000000000000@contoso.onmicrosoft.com",
       "userType": "Member"}


def _ok(response) -> dict:
    assert response.status == 200, response
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    return response.json()


# ------------------------------------------------------------------ token issuance start

def test_claims_for_a_user_found_by_email(client):
    body = _ok(client.post("token-issuance-start", token_issuance(ADA)))
    assert body == {"data": {
        "@odata.type": "microsoft.graph.onTokenIssuanceStartResponseData",
        "actions": [{"@odata.type": "microsoft.graph.tokenIssuanceStart.provideClaimsForToken",
                     "claims": {"roles": ["Admin", "Editor"], "tenant": "contoso", "plan": "enterprise"}}]}}


def test_claims_for_a_user_found_by_object_id_leave_out_unsupported_value_types(client):
    user = {"id": "90847C2A-E29D-4D2F-9F54-C5B4D3F26471", "mail": "casey@contoso.com", "userType": "Member"}
    claims = _ok(client.post("token-issuance-start", token_issuance(user)))["data"]["actions"][0]["claims"]
    assert claims == {"roles": ["Reader"], "tenant": "fabrikam", "plan": "free"}  # shoeSize (a number) left out


@pytest.mark.parametrize("user", [
    {"id": "00aa00aa-bb11-cc22-dd33-44ee44ee44ee", "mail": "nobody@example.com", "userType": "Guest"},
    {"id": "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"},
    None,
])
def test_an_unknown_user_gets_empty_claims(client, user):
    body = _ok(client.post("token-issuance-start", token_issuance(user)))
    assert body["data"]["actions"] == [{"@odata.type": "microsoft.graph.tokenIssuanceStart.provideClaimsForToken",
                                        "claims": {}}]


def test_an_edited_roles_file_takes_effect_without_a_restart(issuer, sample_files):
    settings = settings_for(issuer.url, sample_files / "edit")
    with serve.running(settings) as base_url:
        c = Client(base_url, issuer.url)
        user = {"id": "11111111-0000-0000-0000-000000000000", "mail": "new@example.com"}
        assert _ok(c.post("token-issuance-start", token_issuance(user)))["data"]["actions"][0]["claims"] == {}
        with open(settings["ROLES_FILE"], "w") as f:
            json.dump({"new@example.com": {"roles": ["Writer"], "tenant": "t", "plan": "p"}, "x": {}}, f)
        claims = _ok(c.post("token-issuance-start", token_issuance(user)))["data"]["actions"][0]["claims"]
        assert claims == {"roles": ["Writer"], "tenant": "t", "plan": "p"}
        with open(settings["ROLES_FILE"], "w") as f:
            f.write("{broken")
        r = c.post("token-issuance-start", token_issuance(user))
        assert r.status == 500 and r.json()["error"] == "server_error"


# ------------------------------------------------------------------ attribute collection start

def test_start_continues_by_default(client):
    body = _ok(client.post("attribute-collection-start", attribute_collection("attributeCollectionStart", {
        "EmailAddress": string_attr("ada@example.com")})))
    assert body == {"data": {"@odata.type": "microsoft.graph.onAttributeCollectionStartResponseData",
                             "actions": [{"@odata.type":
                                          "microsoft.graph.attributeCollectionStart.continueWithDefaultBehavior"}]}}


def test_start_prefills_from_the_prefill_setting(issuer, sample_files):
    prefill = {"city": "London", CODE_ATTR: "WELCOME-2026", "extension_x_memberSince": 2023,
               "extension_x_mailingList": False}
    with serve.running(settings_for(issuer.url, sample_files / "prefill", PREFILL=json.dumps(prefill))) as base_url:
        body = _ok(Client(base_url, issuer.url).post("attribute-collection-start",
                                                     attribute_collection("attributeCollectionStart", {})))
    assert body == {"data": {"@odata.type": "microsoft.graph.onAttributeCollectionStartResponseData",
                             "actions": [{"@odata.type": "microsoft.graph.attributeCollectionStart.setPrefillValues",
                                          "inputs": prefill}]}}


def test_a_broken_prefill_setting_is_a_500_for_start_only(issuer, sample_files):
    with serve.running(settings_for(issuer.url, sample_files / "badprefill", PREFILL="[1, 2")) as base_url:
        c = Client(base_url, issuer.url)
        assert c.post("attribute-collection-start", attribute_collection("attributeCollectionStart", {})).status == 500
        assert c.post("attribute-collection-submit", signup_submit("WELCOME-2026")).status == 200


# ------------------------------------------------------------------ attribute collection submit

SUBMIT_DATA = "microsoft.graph.onAttributeCollectionSubmitResponseData"


def _action(body: dict) -> dict:
    assert body["data"]["@odata.type"] == SUBMIT_DATA
    (action,) = body["data"]["actions"]
    return action


@pytest.mark.parametrize("code", ["WELCOME-2026", "  welcome-2026 ", "Friends-Of-Ada"])
def test_a_valid_code_and_a_clean_name_continue(client, code):
    action = _action(_ok(client.post("attribute-collection-submit", signup_submit(code))))
    assert action == {"@odata.type": "microsoft.graph.attributeCollectionSubmit.continueWithDefaultBehavior"}


@pytest.mark.parametrize("raw, clean", [
    ("  Ada   Lovelace ", "Ada Lovelace"),
    ("Ada\tAugusta\n King", "Ada Augusta King"),
    ("Ada\u00a0Lovelace", "Ada Lovelace"),
    ("Ade\u0300le", "Adèle"),  # NFC
])
def test_a_valid_code_with_a_messy_name_modifies_the_name(client, raw, clean):
    action = _action(_ok(client.post("attribute-collection-submit", signup_submit("WELCOME-2026", raw))))
    assert action == {"@odata.type": "microsoft.graph.attributeCollectionSubmit.modifyAttributeValues",
                      "attributes": {"displayName": clean}}


def test_a_valid_code_without_a_display_name_attribute_continues(client):
    action = _action(_ok(client.post("attribute-collection-submit", signup_submit("WELCOME-2026", None))))
    assert action["@odata.type"].endswith(".continueWithDefaultBehavior")


def test_a_name_of_only_spaces_is_a_validation_error(client):
    action = _action(_ok(client.post("attribute-collection-submit", signup_submit("WELCOME-2026", "   "))))
    assert action["@odata.type"] == "microsoft.graph.attributeCollectionSubmit.showValidationError"
    assert action["attributeErrors"] == {"displayName": "Enter a display name."}


@pytest.mark.parametrize("code, message", [
    ("NOT-A-CODE", "This invitation code is not valid."),
    ("", "Enter the invitation code you received."),
    ("   ", "Enter the invitation code you received."),
    (None, "Enter the invitation code you received."),
])
def test_a_wrong_or_missing_code_is_a_validation_error_on_that_attribute(client, code, message):
    action = _action(_ok(client.post("attribute-collection-submit", signup_submit(code))))
    assert action == {"@odata.type": "microsoft.graph.attributeCollectionSubmit.showValidationError",
                      "message": "Please fix the below errors to proceed.",
                      "attributeErrors": {CODE_ATTR: message}}


def test_the_attribute_name_keeps_the_request_spelling_and_odata_type_case_does_not_matter(client):
    payload = signup_submit(None)
    attrs = payload["data"]["userSignUpInfo"]["attributes"]
    attrs[CODE_ATTR.upper()] = {"@odata.Type": "microsoft.graph.stringDirectoryAttributeValue", "Value": "nope",
                                "attributeType": "directorySchemaExtension"}
    action = _action(_ok(client.post("attribute-collection-submit", payload)))
    assert action["attributeErrors"] == {CODE_ATTR.upper(): "This invitation code is not valid."}


@pytest.mark.parametrize("code", ["LEAKED-2025", " leaked-2025"])
def test_a_blocked_code_shows_the_block_page(client, code):
    action = _action(_ok(client.post("attribute-collection-submit", signup_submit(code, "  messy   name"))))
    assert action["@odata.type"] == "microsoft.graph.attributeCollectionSubmit.showBlockPage"
    assert action["title"] and action["message"]
    assert set(action) == {"@odata.type", "title", "message"}


def test_a_code_listed_as_valid_and_blocked_is_blocked(issuer, sample_files):
    settings = settings_for(issuer.url, sample_files / "both", INVITATION_CODES="A1,B2", BLOCKED_CODES="b2")
    with serve.running(settings) as base_url:
        c = Client(base_url, issuer.url)
        assert _action(_ok(c.post("attribute-collection-submit", signup_submit("B2"))))["@odata.type"].endswith(
            ".showBlockPage")
        assert _action(_ok(c.post("attribute-collection-submit", signup_submit("a1"))))["@odata.type"].endswith(
            ".continueWithDefaultBehavior")


def test_submit_without_attributes_is_a_400(client):
    payload = signup_submit("WELCOME-2026")
    del payload["data"]["userSignUpInfo"]
    assert client.post("attribute-collection-submit", payload).status == 400


def test_no_invitation_codes_configured_means_no_code_is_valid(issuer, sample_files):
    settings = settings_for(issuer.url, sample_files / "nocodes")
    del settings["INVITATION_CODES"]
    with serve.running(settings) as base_url:
        action = _action(_ok(Client(base_url, issuer.url).post("attribute-collection-submit",
                                                                signup_submit("WELCOME-2026"))))
    assert action["@odata.type"].endswith(".showValidationError")


# ------------------------------------------------------------------ OTP send

OTP_ANSWER = {"data": {"@odata.type": "microsoft.graph.OnOtpSendResponseData",
                       "actions": [{"@odata.type": "microsoft.graph.OtpSend.continueWithDefaultBehavior"}]}}


def _outbox(sample_host) -> list[dict]:
    path = sample_host.app_settings["OTP_OUTBOX"]
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("channel, identifier, code_key", [
    (None, "ada@example.com", "oneTimeCode"),       # Entra's email event (no channel)
    ("email", "grace@example.com", "onetimecode"),  # the official samples' lower-case key
    ("sms", "+4915112345678", "oneTimeCode"),       # our SMS addition
    ("SMS", "+14255550123", "OneTimeCode"),
])
def test_otp_send_prints_the_code_writes_the_outbox_and_continues(client, sample_host, capsys, channel,
                                                                 identifier, code_key):
    code = "%08d" % (abs(hash(identifier)) % 10 ** 8)
    body = _ok(client.post("otp-send", otp_send(identifier, code, channel, code_key)))
    assert body == OTP_ANSWER
    expected_channel = (channel or "email").lower()
    assert f"OTP for {identifier} ({expected_channel}): {code}" in capsys.readouterr().out.splitlines()
    last = _outbox(sample_host)[-1]
    assert {k: last[k] for k in ("identifier", "channel", "code")} == {
        "identifier": identifier, "channel": expected_channel, "code": code}
    assert last["time"].endswith("Z") and len(last["time"]) == 20


def test_the_console_line_cannot_be_forged_through_the_identifier(client, capsys):
    _ok(client.post("otp-send", otp_send("a@example.com\nOTP for b@example.com (email): 000000", "123456")))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("OTP for")]
    assert lines == ["OTP for a@example.com?OTP for b@example.com (email): 000000 (email): 123456"]


def test_without_an_outbox_only_the_console_gets_the_code(issuer, sample_files, capsys):
    settings = settings_for(issuer.url, sample_files / "nooutbox")
    del settings["OTP_OUTBOX"]
    with serve.running(settings) as base_url:
        assert _ok(Client(base_url, issuer.url).post("otp-send", otp_send("x@example.com", "424242"))) == OTP_ANSWER
    assert "OTP for x@example.com (email): 424242" in capsys.readouterr().out
    assert not (sample_files / "nooutbox" / "outbox.jsonl").exists()
