"""MSAL Python 1.39 as a real client of this server (contract §7.9).

MSAL Python has no native-auth support, so the user signs in through the
plain-HTTP test client; MSAL then takes over the refresh token. MSAL insists
on an ``https`` authority whose discovery ``issuer`` equals that authority, so
a second host serves the same app (same process, same settings) over TLS with
a throwaway CA, and the issuer is switched to that host's URL for the test.
"""

from __future__ import annotations

import base64
import hashlib
import json

import msal
import pytest
import requests

from conftest import DEV_CLIENT
from shared.tokens import issuance as tokens

PASSWORD = "correct horse battery staple"
RESOURCE = "api://native-auth"
RESOURCE_SCOPE = f"{RESOURCE}/access_as_user"


def _b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _claims(token: str) -> dict:
    return _b64url_json(token.split(".")[1])


def _family(server, refresh_token: str) -> dict:
    pk, rk, _ = refresh_token.split(".")
    entity = server.storage.table("refresh").get(pk, rk)
    assert entity is not None
    return entity


def _rt_hash(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.split(".")[2].encode("ascii")).hexdigest()


def test_tls_host_rejects_untrusted_clients(tls_host):
    """Sanity check of the setup: without the CA, TLS verification fails."""
    host, ca_file = tls_host
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(host.base_url + "/.well-known/openid-configuration", verify=True, timeout=10)
    r = requests.get(host.base_url + "/.well-known/openid-configuration", verify=str(ca_file), timeout=10)
    assert r.status_code == 200


def test_msal_python_redeems_and_rotates_refresh_tokens(server, api, make_user, tls_host, monkeypatch):
    host, ca_file = tls_host
    authority = host.base_url  # https://127.0.0.1:<port>/api
    assert authority.startswith("https://127.0.0.1:")
    scopes = [RESOURCE_SCOPE]

    with server.override(issuer=authority) as settings:
        email, user = make_user(password=PASSWORD)
        signin = api.signin_password(email, PASSWORD, scope=f"{RESOURCE_SCOPE} openid profile offline_access")
        assert signin.status == 200, signin.body
        rt1 = signin["refresh_token"]
        assert _claims(signin["id_token"])["iss"] == authority
        assert _family(server, rt1)["generation"] == 1

        # requests prefers REQUESTS_CA_BUNDLE over session.verify (contract §7.9).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        app = msal.PublicClientApplication(DEV_CLIENT, oidc_authority=authority)

        # 1. Redeem the refresh token from the native-auth sign-in.
        result = app.acquire_token_by_refresh_token(rt1, scopes=scopes)
        assert "error" not in result, result
        at1 = result["access_token"]
        assert at1
        c1 = tokens.validate(server.storage, settings, at1, audience=RESOURCE)
        assert c1["scp"] == "access_as_user"
        assert c1["oid"] == user.oid
        fam = _family(server, rt1)
        assert fam["generation"] == 2, "MSAL's redemption must rotate the family"
        assert fam["current_hash"] != _rt_hash(rt1)

        # MSAL built an account from the id_token and client_info.
        accounts = app.get_accounts()
        assert len(accounts) == 1, accounts
        account = accounts[0]
        assert account["username"] == email
        assert account["home_account_id"] == f"{user.oid}.{server.settings.tenant_id}"
        # The refresh token MSAL cached is the rotated one the server now expects.
        cached_rts = list(app.token_cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))
        assert [_rt_hash(rt["secret"]) for rt in cached_rts] == [fam["current_hash"]]

        # 2. A silent call without force_refresh is served from MSAL's cache (no rotation).
        cached = app.acquire_token_silent(scopes, account=account)
        assert cached and cached["access_token"] == at1
        assert _family(server, rt1)["generation"] == 2

        # 3. Forced silent refresh: MSAL redeems its cached (rotated) refresh token.
        silent = app.acquire_token_silent(scopes, account=account, force_refresh=True)
        assert silent is not None and "error" not in silent, silent
        at2 = silent["access_token"]
        assert at2 and at2 != at1
        assert _claims(at2)["jti"] != c1["jti"]
        assert _claims(at2)["aud"] == RESOURCE
        fam = _family(server, rt1)
        assert fam["generation"] == 3
        assert fam["revoked"] is False
        cached_rts = list(app.token_cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))
        assert [_rt_hash(rt["secret"]) for rt in cached_rts] == [fam["current_hash"]]

        # The original native-auth refresh token is two rotations old now: it is refused.
        stale = api.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=rt1,
                         scope="openid profile offline_access", client_info="1")
        assert stale.status == 400 and stale["error"] == "invalid_grant", stale.body
