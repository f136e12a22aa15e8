"""Custom authentication extensions through MSAL JS custom-auth (5.30.0) in
headless Chromium: a custom claim from a token-issuance extension (the sample
app, samples/extensions, as a real HTTP server) in the access token the SDK
hands the app, and a sign-up blocked by an attribute-collection extension."""

from __future__ import annotations

import json

import pytest

from conftest import unique_email, wait_until
from extension_server import ExtensionServer, extensions, sample, sample_serve_module, sample_settings  # noqa: F401
from .e2e_harness import unverified_claims

PASSWORD = "Velvet-Harbor-Lantern-2718"
SCOPES = ["api://native-auth/access_as_user"]


def test_a_custom_claim_reaches_the_app_in_the_access_token(page, server, make_user, extensions, sample):
    base, roles = sample
    email, _ = make_user(password=PASSWORD)
    roles.write_text(json.dumps({email: {"roles": ["editor"], "plan": "team"}}))
    extensions(name="e2e-claims", event="tokenIssuanceStart", url=f"{base}/token-issuance-start",
                     claims={"access_token": ["roles", "plan"], "id_token": ["roles"]})
    done = page.sign_in(email, password=PASSWORD, scopes=SCOPES)
    assert done.is_("Completed"), done
    token = page.get_access_token(scopes=SCOPES)
    assert not token.error, token
    claims = unverified_claims(token.data["accessToken"])
    assert claims["roles"] == ["editor"] and claims["plan"] == "team", claims
    account = page.current_account()
    assert account.data["claims"]["roles"] == ["editor"], account     # the ID token's claims, as the SDK keeps them
    assert "plan" not in account.data["claims"]                            # mapped to the access token only


def test_a_sign_up_blocked_by_an_extension_ends_with_the_extensions_message(page, server, outbox, extensions):
    with ExtensionServer() as ext:
        ext.answer = {"data": {"@odata.type": "microsoft.graph.onAttributeCollectionSubmitResponseData",
                               "actions": [{"@odata.type": "microsoft.graph.attributeCollectionSubmit.showBlockPage",
                                            "message": "Sign-ups from this domain are closed."}]}}
        extensions(name="e2e-block", event="attributeCollectionSubmit", url=ext.url)
        email = unique_email("e2e-blocked")
        started = page.start("signUp", username=email, password=PASSWORD)
        assert started.is_("CodeRequired"), started
        assert wait_until(lambda: outbox.count(email) > 0, timeout=10)
        result = page.act("submitCode", outbox.last_code(email))
        assert result.is_("Failed") and not result.is_("Completed"), result
        assert "Sign-ups from this domain are closed." in json.dumps(result.error), result
        assert len(ext.calls) == 1 and ext.calls[0]["body"]["data"]["@odata.type"] == \
            "microsoft.graph.onAttributeCollectionSubmitCalloutData"
    from shared.storage import directory

    assert directory.get_user(server.storage, email) is None            # no account was created
    assert page.current_account().error_is("CurrentAccountNotFound")
