"""Tokens: the token response, signatures and discovery (A35), the validation
helper against JWT attacks (A27-A31), refresh-token rotation, reuse detection,
concurrency and expiry (A32-A34), and signing-key rotation.

Everything that a client can observe goes over HTTP through the conftest
fixtures. ``tokens.validate`` is called in-process (it is the helper protected
endpoints use). Forged tokens are built either with a freshly generated
attacker key or by re-encoding real claims with the app's own signing key, so
that each negative case changes exactly one thing; a positive control next to
each group shows that the forging itself yields a valid token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import types
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from conftest import Canary, DEV_CLIENT, unique_email
from shared.storage import directory
from shared.tokens import issuance as tokens

PASSWORD = "correct horse battery staple"
RESOURCE = "api://native-auth"
RESOURCE_SCOPE = f"{RESOURCE}/access_as_user"
FULL_SCOPE = f"{RESOURCE_SCOPE} openid profile offline_access"
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


# ------------------------------------------------------------------ helpers

def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def header_of(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[0]))


def claims_of(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[1]))


def family_key(refresh_token: str) -> tuple[str, str]:
    pk, rk, _secret = refresh_token.split(".")
    return pk, rk


def family(server, refresh_token: str) -> dict:
    entity = server.storage.table("refresh").get(*family_key(refresh_token))
    assert entity is not None, "refresh-token family not found in storage"
    return entity


def edit_family(server, refresh_token: str, **changes) -> None:
    entity = family(server, refresh_token)
    pk, rk = family_key(refresh_token)
    server.storage.table("refresh").update({"PartitionKey": pk, "RowKey": rk, **changes}, entity["_etag"])


def refresh(api, refresh_token: str, *, client_id: str = DEV_CLIENT, scope: str = "openid profile offline_access"):
    """grant_type=refresh_token, shaped like MSAL JS's RefreshTokenClient
    (contract §3.16): telemetry in the body and client-request-id in the query."""
    form = {
        "client_id": client_id, "scope": scope, "grant_type": "refresh_token", "client_info": "1",
        "refresh_token": refresh_token,
        "x-client-SKU": "msal.js.browser", "x-client-VER": "5.30.0",
        "x-ms-lib-capability": "retry-after, h429",
        "x-client-current-telemetry": "5|61,0,,,|,", "x-client-last-telemetry": "5|0|||0,0",
        "X-AnchorMailbox": "Oid:00000000-0000-0000-0000-000000000000@" + "00000000-0000-0000-0000-0000000000aa",
    }
    return api.post(f"oauth2/v2.0/token?client-request-id={uuid.uuid4()}", **form)


def assert_invalid_grant(resp) -> None:
    assert resp.status == 400, (resp.status, resp.body)
    assert resp.get("error") == "invalid_grant", resp.body
    assert "refresh_token" not in resp.body and "access_token" not in resp.body


def jwks_by_kid(api) -> dict:
    r = api.get("discovery/v2.0/keys")
    assert r.status == 200, r.body
    return {k.key_id: k for k in jwt.PyJWKSet.from_dict(r.body).keys}


def real_key(server, token: str) -> tokens.SigningKey:
    """The app's signing key that signed this token (white box, for forging)."""
    kid = header_of(token)["kid"]
    ring = tokens.keyring(server.storage, server.settings)
    return next(k for k in ring.keys() if k.kid == kid)


def sign_rs256(claims: dict, private_key, headers: dict) -> str:
    return jwt.encode(claims, private_key, algorithm="RS256", headers=headers)


def sign_rs256_raw(header: dict, claims: dict, private_key) -> str:
    """RS256 with the header exactly as given (PyJWT would drop or add fields)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    sig = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(sig)}"


def validate(server, token: str, *, audience: str = RESOURCE, typ: str = "at+jwt") -> dict:
    return tokens.validate(server.storage, server.settings, token, audience=audience, typ=typ)


@pytest.fixture(scope="module")
def signed_in(server):
    """One password sign-in with the resource scope, shared by the read-only tests."""
    email = unique_email("tok")
    directory.create_user(server.storage, email, password=PASSWORD, display_name="Token Tester")
    r = server.api.signin_password(email, PASSWORD, scope=FULL_SCOPE)
    assert r.status == 200, r.body
    return types.SimpleNamespace(email=email, resp=r, access=r["access_token"], id=r["id_token"],
                                 refresh=r["refresh_token"])


@pytest.fixture(scope="module")
def attacker_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fresh_rt(api, make_user):
    """A brand-new refresh-token family (the rotation tests consume it)."""
    email, _user = make_user(password=PASSWORD)
    r = api.signin_password(email, PASSWORD, scope=FULL_SCOPE)
    assert r.status == 200, r.body
    return r["refresh_token"]


# ------------------------------------------------------------------ the token response

def test_token_response_shape(signed_in):
    body = signed_in.resp.body
    assert body["token_type"] == "Bearer"  # case-sensitive in MSAL JS
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    for field in ("access_token", "id_token", "refresh_token", "client_info"):
        assert isinstance(body.get(field), str) and body[field], field
    assert set(body["scope"].split()) == set(FULL_SCOPE.split())
    assert signed_in.resp.headers.get("cache-control") == "no-store"

    info = json.loads(b64url_decode(body["client_info"]))
    id_claims = claims_of(body["id_token"])
    assert info == {"uid": id_claims["oid"], "utid": id_claims["tid"]}
    assert claims_of(body["access_token"])["oid"] == info["uid"]


def test_signatures_verify_against_served_jwks(api, signed_in):
    keys = jwks_by_kid(api)
    for token, typ in ((signed_in.access, "at+jwt"), (signed_in.id, "JWT")):
        header = header_of(token)
        assert header["alg"] == "RS256"
        assert header["typ"] == typ
        assert header.get("kid") in keys, "token kid is not published in the JWKS"
    at = jwt.decode(signed_in.access, keys[header_of(signed_in.access)["kid"]].key, algorithms=["RS256"],
                    audience=RESOURCE)
    # The same check with the key built straight from the JWK JSON.
    raw = next(k for k in api.get("discovery/v2.0/keys").body["keys"] if k["kid"] == header_of(signed_in.id)["kid"])
    idt = jwt.decode(signed_in.id, RSAAlgorithm.from_jwk(json.dumps(raw)), algorithms=["RS256"], audience=DEV_CLIENT)
    assert at["sub"] == idt["sub"]

    # A single flipped signature bit must fail against the same JWKS.
    head, payload, sig = signed_in.access.split(".")
    bad = bytearray(b64url_decode(sig))
    bad[-1] ^= 1
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{head}.{payload}.{b64url(bytes(bad))}", keys[header_of(signed_in.access)["kid"]].key,
                   algorithms=["RS256"], audience=RESOURCE)


def test_id_token_claims_after_password_signin(server, signed_in):
    c = claims_of(signed_in.id)
    assert c["aud"] == DEV_CLIENT
    assert c["iss"] == server.settings.issuer
    assert c["sub"] and c["oid"] and c["tid"] == server.settings.tenant_id
    assert c["preferred_username"] == signed_in.email
    assert c["name"] == "Token Tester"
    assert c["amr"] == ["pwd"]
    assert c["acr"] == "1"  # one factor, no MFA
    assert isinstance(c["auth_time"], int) and c["auth_time"] <= c["iat"] < c["exp"]


def test_access_token_for_requested_resource(server, signed_in):
    c = claims_of(signed_in.access)
    assert c["aud"] == RESOURCE
    assert c["scp"] == "access_as_user"
    assert c["iss"] == server.settings.issuer
    assert c["azp"] == DEV_CLIENT
    assert c["sub"] == claims_of(signed_in.id)["sub"]
    assert c["exp"] > c["iat"]


@pytest.mark.parametrize("scope", [
    "api://native-auth/admin openid profile offline_access",  # unknown scope of a known resource
    "api://unknown/access_as_user openid",                     # unknown resource
    "https://graph.microsoft.com/User.Read openid",
    "openid api://native-auth",                                # resource without a scope
])
def test_unknown_scope_is_invalid_scope(api, make_user, scope):
    email, _ = make_user(password=PASSWORD)
    r = api.signin_password(email, PASSWORD, scope=scope)
    assert r.status == 400, r.body
    assert r["error"] == "invalid_scope"
    assert "access_token" not in r.body


def test_refresh_with_unknown_scope_is_invalid_scope(api, fresh_rt):
    r = refresh(api, fresh_rt, scope="api://native-auth/admin openid")
    assert r.status == 400 and r["error"] == "invalid_scope", r.body


# ------------------------------------------------------------------ discovery and JWKS (A35)

def test_discovery_document(api, signed_in):
    r = api.get(".well-known/openid-configuration")
    assert r.status == 200, r.body
    doc = r.body
    issuer = doc["issuer"]
    assert issuer == claims_of(signed_in.access)["iss"] == claims_of(signed_in.id)["iss"]
    assert issuer == api.base_url  # the URL the document was fetched from starts with the issuer
    assert doc["jwks_uri"].startswith(issuer + "/")
    assert doc["token_endpoint"] == issuer + "/oauth2/v2.0/token"
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert "authorization_endpoint" in doc  # MSAL Python needs it (contract §7.9)
    assert "refresh_token" in doc["grant_types_supported"]


def test_jwks_has_only_public_members(api, signed_in):
    r = api.get("discovery/v2.0/keys")
    assert r.status == 200
    keys = r.body["keys"]
    assert keys
    assert len({k["kid"] for k in keys}) == len(keys), "kids must be unique"
    for k in keys:
        assert not PRIVATE_JWK_MEMBERS & set(k), f"private member published: {set(k) & PRIVATE_JWK_MEMBERS}"
        assert k["kty"] == "RSA"
        assert k["use"] == "sig"
        assert k["alg"] == "RS256"
        assert k["kid"]
        assert k["n"] and k["e"]
    # The discovery jwks_uri serves the same document.
    jwks_uri = api.get(".well-known/openid-configuration")["jwks_uri"]
    assert api.get(jwks_uri[len(api.base_url):]).body == r.body


# ------------------------------------------------------------------ tokens.validate: positive controls

def test_validate_accepts_fresh_access_token(server, signed_in):
    claims = validate(server, signed_in.access)
    assert claims["sub"] == claims_of(signed_in.access)["sub"]
    assert claims["scp"] == "access_as_user"


def test_validate_accepts_reencoded_real_claims(server, signed_in):
    """Control for the forging helpers below: unchanged claims, real key -> valid."""
    key = real_key(server, signed_in.access)
    token = sign_rs256(claims_of(signed_in.access), key.private_key, {"kid": key.kid, "typ": "at+jwt"})
    assert validate(server, token)["oid"] == claims_of(signed_in.access)["oid"]


# ------------------------------------------------------------------ A27 alg=none

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "noNE"])
def test_validate_rejects_alg_none(server, signed_in, alg):
    header = {**header_of(signed_in.access), "alg": alg}
    token = f"{b64json(header)}.{signed_in.access.split('.')[1]}."
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)
    # And with the original signature left in place.
    with pytest.raises(tokens.InvalidToken):
        validate(server, f"{b64json(header)}.{signed_in.access.split('.', 1)[1]}")


# ------------------------------------------------------------------ A28 HS256 with the public key as secret

def _public_key_forms(api, kid: str) -> dict[str, bytes]:
    jwk = next(k for k in api.get("discovery/v2.0/keys").body["keys"] if k["kid"] == kid)
    pub = RSAAlgorithm.from_jwk(json.dumps(jwk))
    return {
        "pem-spki": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der-spki": pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk-json-served": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "jwk-json-sorted": json.dumps(jwk, sort_keys=True).encode(),
        "openssh": pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    }


@pytest.mark.parametrize("form", ["pem-spki", "pem-pkcs1", "der-spki", "jwk-json-served", "jwk-json-compact",
                                  "jwk-json-sorted", "openssh"])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_validate_rejects_hmac_with_public_key(server, api, signed_in, form, alg):
    header = header_of(signed_in.access)
    secret = _public_key_forms(api, header["kid"])[form]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    forged_header = {**header, "alg": alg}
    signing_input = f"{b64json(forged_header)}.{signed_in.access.split('.')[1]}"
    token = f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


# ------------------------------------------------------------------ A29 kid / jku / x5u / jwk headers



def _attacker_jwk(attacker_key, kid: str) -> dict:
    jwk = json.loads(RSAAlgorithm.to_jwk(attacker_key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.mark.parametrize("kid", ["attacker-kid", "../../etc/passwd", "../../../../dev/null", "' or '1'='1",
                                 "", None])
def test_validate_rejects_unknown_kid_signed_by_attacker(server, signed_in, attacker_key, kid):
    headers = {"typ": "at+jwt"}
    if kid is not None:
        headers["kid"] = kid
    token = sign_rs256(claims_of(signed_in.access), attacker_key, headers)
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


@pytest.mark.parametrize("kid", ["no-such-kid", "../../etc/passwd", None])
def test_validate_rejects_unknown_kid_even_with_the_real_signature(server, signed_in, kid):
    """Keys are looked up by kid only in our JWKS: no fallback to 'try every key'."""
    key = real_key(server, signed_in.access)
    headers = {"typ": "at+jwt"}
    if kid is not None:
        headers["kid"] = kid
    token = sign_rs256(claims_of(signed_in.access), key.private_key, headers)
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


@pytest.mark.parametrize("kid_choice", ["attacker", "real"])
@pytest.mark.parametrize("pointer", ["jku", "x5u", "jwk", "x5c+jku"])
def test_validate_ignores_key_pointers_in_header(server, signed_in, attacker_key, pointer, kid_choice):
    """An attacker-signed token that names its own key (by URL or embedded)
    must fail, and nothing is fetched from the URL."""
    real_kid = header_of(signed_in.access)["kid"]
    kid = "attacker-kid" if kid_choice == "attacker" else real_kid
    jwk = _attacker_jwk(attacker_key, kid)
    with Canary({"keys": [jwk]}) as canary:
        headers = {"typ": "at+jwt", "kid": kid}
        if pointer in ("jku", "x5c+jku"):
            headers["jku"] = canary.url + "/jwks.json"
        if pointer == "x5u":
            headers["x5u"] = canary.url + "/cert.pem"
        if pointer == "jwk":
            headers["jwk"] = jwk
        if pointer == "x5c+jku":
            headers["x5c"] = ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]
        token = sign_rs256(claims_of(signed_in.access), attacker_key, headers)
        with pytest.raises(tokens.InvalidToken):
            validate(server, token)
        assert canary.hits == [], "the validator fetched a key from a URL in the token header"


@pytest.mark.parametrize("pointer", ["jku", "x5u"])
def test_validate_never_fetches_header_urls_even_for_a_real_token(server, signed_in, pointer):
    """A correctly signed token carrying jku/x5u: those headers are ignored (no fetch)."""
    key = real_key(server, signed_in.access)
    with Canary({"keys": []}) as canary:
        token = sign_rs256(claims_of(signed_in.access), key.private_key,
                           {"typ": "at+jwt", "kid": key.kid, pointer: canary.url + "/k"})
        try:
            validate(server, token)
        except tokens.InvalidToken:
            pass  # rejecting is fine too
        assert canary.hits == []


# ------------------------------------------------------------------ A30 token-type confusion

def test_validate_rejects_id_token_as_access_token(server, signed_in):
    # The id token's aud is the client id; asking for that audience isolates the typ check.
    assert claims_of(signed_in.id)["aud"] == DEV_CLIENT
    with pytest.raises(tokens.InvalidToken):
        validate(server, signed_in.id, audience=DEV_CLIENT)
    with pytest.raises(tokens.InvalidToken):
        validate(server, signed_in.id, audience=RESOURCE)
    # It is a genuine token of ours: accepted only when an id token is what is asked for.
    assert validate(server, signed_in.id, audience=DEV_CLIENT, typ="JWT")["sub"]


def test_validate_rejects_access_token_as_id_token(server, signed_in):
    with pytest.raises(tokens.InvalidToken):
        validate(server, signed_in.access, audience=RESOURCE, typ="JWT")


def test_validate_rejects_refresh_token_as_access_token(server, signed_in):
    with pytest.raises(tokens.InvalidToken):
        validate(server, signed_in.refresh)


@pytest.mark.parametrize("garbage", ["", "a", "a.b", "a.b.c", "..", "eyJ.eyJ.", "x" * 5000])
def test_validate_rejects_garbage(server, garbage):
    with pytest.raises(tokens.InvalidToken):
        validate(server, garbage)


@pytest.mark.parametrize("typ", [None, 1, ["at+jwt"], {"a": 1}])
def test_validate_rejects_non_string_typ_with_invalid_token(server, signed_in, typ):
    """A malformed header must end as InvalidToken (401), never another exception (500)."""
    key = real_key(server, signed_in.access)
    token = sign_rs256_raw({"alg": "RS256", "kid": key.kid, "typ": typ}, claims_of(signed_in.access), key.private_key)
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


def test_validate_rejects_missing_typ(server, signed_in):
    key = real_key(server, signed_in.access)
    # Control: the same raw signing with the right typ is accepted.
    good = sign_rs256_raw({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims_of(signed_in.access), key.private_key)
    assert validate(server, good)["sub"]
    token = sign_rs256_raw({"alg": "RS256", "kid": key.kid}, claims_of(signed_in.access), key.private_key)
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


# ------------------------------------------------------------------ A31 claims

def _claim_cases(issuer: str):
    now = int(time.time())
    past = now - 3600
    beyond = tokens.LEEWAY_SECONDS + 60  # clearly outside the leeway, whatever it is up to 60 s
    return {
        "expired-long-ago": {"exp": past, "iat": past - 900, "nbf": past - 900},
        "expired-beyond-leeway": {"exp": now - beyond},
        "nbf-in-future": {"nbf": now + beyond},
        "nbf-far-future": {"nbf": now + 86400, "iat": now, "exp": now + 90000},
        "iat-in-future": {"iat": now + 86400, "nbf": now, "exp": now + 90000},
        "aud-other-resource": {"aud": "api://other"},
        "aud-prefix": {"aud": "api://native"},
        "aud-suffix": {"aud": "api://native-auth-evil"},
        "aud-client-id": {"aud": DEV_CLIENT},
        "aud-list-without-resource": {"aud": ["api://other", DEV_CLIENT]},
        "iss-prefix": {"iss": issuer[:-1]},
        "iss-suffix": {"iss": issuer + "x"},
        "iss-trailing-slash": {"iss": issuer + "/"},
        "iss-subpath": {"iss": issuer + "/evil"},
        "iss-host-suffix": {"iss": issuer.replace("127.0.0.1", "127.0.0.1.evil.example")},
        "iss-embedded": {"iss": "https://evil.example/?" + issuer},
        "iss-scheme": {"iss": issuer.replace("http://", "https://", 1) if issuer.startswith("http://")
                       else issuer.replace("https://", "http://", 1)},
        "iss-case": {"iss": issuer.upper()},
        "iss-list": {"iss": [issuer]},
        "sub-missing": {"sub": None},
        "exp-missing": {"exp": None},
        "iss-missing": {"iss": None},
        "aud-missing": {"aud": None},
        "nbf-missing": {"nbf": None},
        "iat-missing": {"iat": None},
    }


@pytest.mark.parametrize("case", list(_claim_cases("http://127.0.0.1:1/api")))
def test_validate_rejects_bad_claims(server, signed_in, case):
    changes = _claim_cases(server.settings.issuer)[case]
    claims = dict(claims_of(signed_in.access))
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    key = real_key(server, signed_in.access)
    token = sign_rs256_raw({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims, key.private_key)
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


def test_validate_leeway_is_small_but_present(server, signed_in):
    """Clock skew of a few seconds is tolerated (exp just passed, nbf just ahead);
    the leeway itself is at most 60 s (security baseline A31)."""
    assert 0 < tokens.LEEWAY_SECONDS <= 60
    now = int(time.time())
    key = real_key(server, signed_in.access)
    claims = {**claims_of(signed_in.access), "exp": now - 5, "nbf": now + 5}
    token = sign_rs256(claims, key.private_key, {"kid": key.kid, "typ": "at+jwt"})
    assert validate(server, token)["sub"]


def test_validate_rejects_attacker_signed_real_claims(server, signed_in, attacker_key):
    """Real claims and real kid, wrong key: the signature check is what stops it."""
    token = sign_rs256(claims_of(signed_in.access), attacker_key,
                       {"kid": header_of(signed_in.access)["kid"], "typ": "at+jwt"})
    with pytest.raises(tokens.InvalidToken):
        validate(server, token)


# ------------------------------------------------------------------ refresh rotation

def test_refresh_rotates_and_ignores_telemetry_fields(server, api, fresh_rt):
    r = refresh(api, fresh_rt, scope=FULL_SCOPE)
    assert r.status == 200, r.body
    assert r["token_type"] == "Bearer" and r["expires_in"] > 0
    rt2 = r["refresh_token"]
    assert rt2 != fresh_rt
    assert family_key(rt2) == family_key(fresh_rt), "rotation stays in the same family"
    assert family(server, rt2)["generation"] == 2
    # The new tokens describe the same sign-in (amr carried over) and are valid.
    assert claims_of(r["id_token"])["amr"] == ["pwd"]
    assert validate(server, r["access_token"])["scp"] == "access_as_user"
    assert json.loads(b64url_decode(r["client_info"]))["uid"] == claims_of(r["id_token"])["oid"]

    r3 = refresh(api, rt2)
    assert r3.status == 200, r3.body
    assert r3["refresh_token"] not in (fresh_rt, rt2)
    assert family(server, rt2)["generation"] == 3


def test_reuse_within_grace_is_refused_without_revoking(server, api, fresh_rt):
    assert server.settings.refresh_grace_seconds > 0
    r2 = refresh(api, fresh_rt)
    assert r2.status == 200, r2.body
    rt2 = r2["refresh_token"]

    again = refresh(api, fresh_rt)  # e.g. a second tab refreshing at the same moment
    assert_invalid_grant(again)
    assert family(server, rt2)["revoked"] is False

    r3 = refresh(api, rt2)
    assert r3.status == 200, r3.body
    assert r3["refresh_token"] != rt2


def test_reuse_after_grace_revokes_the_family(server, api, fresh_rt):
    """A32 with the default grace: the rotation is made to look older than the grace."""
    r2 = refresh(api, fresh_rt)
    assert r2.status == 200, r2.body
    rt2 = r2["refresh_token"]
    edit_family(server, rt2, rotated_at=int(time.time()) - server.settings.refresh_grace_seconds - 5)

    assert_invalid_grant(refresh(api, fresh_rt))
    assert family(server, rt2)["revoked"] is True
    assert_invalid_grant(refresh(api, rt2))  # the newest token is dead too: re-authenticate


class _FrozenClock:
    """Stands in for the ``time`` module inside shared.tokens: wall-clock time
    stops at one second, everything else is the real module."""

    def __init__(self, at: int):
        self._at = at

    def time(self) -> float:
        return float(self._at)

    def __getattr__(self, name):
        return getattr(time, name)


def test_reuse_with_zero_grace_revokes_the_family(server, api, fresh_rt, monkeypatch):
    """A32: grace 0 means any second presentation of a rotated token is reuse.
    The server's clock is frozen so that rotation and reuse fall in the same
    second (the boundary case), which makes the outcome independent of timing."""
    monkeypatch.setattr(tokens, "time", _FrozenClock(int(time.time())))
    with server.override(refresh_grace_seconds=0):
        r2 = refresh(api, fresh_rt)
        assert r2.status == 200, r2.body
        rt2 = r2["refresh_token"]

        assert_invalid_grant(refresh(api, fresh_rt))
        assert family(server, rt2)["revoked"] is True
        assert_invalid_grant(refresh(api, rt2))


def test_reuse_with_zero_grace_one_second_later_revokes_the_family(server, api, fresh_rt, monkeypatch):
    """A32 with grace 0 when the reuse comes a second after the rotation."""
    start = int(time.time())
    clock = _FrozenClock(start)
    monkeypatch.setattr(tokens, "time", clock)
    with server.override(refresh_grace_seconds=0):
        r2 = refresh(api, fresh_rt)
        assert r2.status == 200, r2.body
        rt2 = r2["refresh_token"]
        clock._at = start + 1

        assert_invalid_grant(refresh(api, fresh_rt))
        assert family(server, rt2)["revoked"] is True
        assert_invalid_grant(refresh(api, rt2))


def test_concurrent_refresh_has_exactly_one_winner(server, api, fresh_rt):
    """A33: six clients present the same refresh token at once."""
    n = 6
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = refresh(api, fresh_rt)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results), "a refresh request did not finish"

    statuses = sorted(r.status for r in results)
    assert statuses == [200] + [400] * (n - 1), [(r.status, r.body) for r in results]
    for r in results:
        if r.status == 400:
            assert_invalid_grant(r)
    winner = next(r for r in results if r.status == 200)
    fam = family(server, fresh_rt)
    assert fam["revoked"] is False
    assert fam["generation"] == 2  # rotated exactly once

    successor = refresh(api, winner["refresh_token"])
    assert successor.status == 200, successor.body


def test_idle_expiry(server, api, fresh_rt):
    """A34: not used within the idle window."""
    edit_family(server, fresh_rt, expires_at=int(time.time()) - 1)
    r = refresh(api, fresh_rt)
    assert_invalid_grant(r)


def test_absolute_expiry(server, api, fresh_rt):
    """A34: past the absolute lifetime, even though it was used recently."""
    now = int(time.time())
    edit_family(server, fresh_rt, absolute_expires=now - 1, expires_at=now + 3600)
    r = refresh(api, fresh_rt)
    assert_invalid_grant(r)


def test_refresh_extends_idle_window_but_not_past_absolute(server, api, fresh_rt):
    now = int(time.time())
    edit_family(server, fresh_rt, absolute_expires=now + 120)
    r = refresh(api, fresh_rt)
    assert r.status == 200, r.body
    fam = family(server, fresh_rt)
    assert fam["expires_at"] <= fam["absolute_expires"] == now + 120


def test_refresh_token_of_another_client_is_refused(server, api, fresh_rt):
    other = "other-client-" + uuid.uuid4().hex[:8]
    directory.register_client(server.storage, other, "Another app")
    r = refresh(api, fresh_rt, client_id=other)
    assert_invalid_grant(r)  # not unauthorized_client: the client is registered, the token is not its own


@pytest.mark.parametrize("garbage", [
    "garbage",
    "a.b.c",
    "r00.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # well-formed, no such family
    "r00.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.extra",
    "../../etc/passwd",
    "rzz.'or''='.x",
    "r00.AAAAAAAAAAAAAAAAAAAA/A.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "ŕ00.ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ.é",
    "x" * 8000,
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
])
def test_garbage_refresh_token_is_invalid_grant(api, garbage):
    r = refresh(api, garbage)
    assert_invalid_grant(r)


def test_forged_secret_for_real_family_is_refused(server, api, fresh_rt):
    pk, rk = family_key(fresh_rt)
    r = refresh(api, f"{pk}.{rk}.{'A' * 43}")
    assert_invalid_grant(r)


def test_missing_refresh_token_is_invalid_request(api):
    r = api.post("oauth2/v2.0/token", grant_type="refresh_token", scope="openid", client_info="1")
    assert r.status == 400 and r["error"] == "invalid_request", r.body


# ------------------------------------------------------------------ signing-key rotation

def test_key_rotation_keeps_old_key_published(server, api, signed_in):
    before = set(jwks_by_kid(api))
    old_kid = header_of(signed_in.access)["kid"]
    assert old_kid in before

    tokens.keyring(server.storage, server.settings).force_rotation()

    after = jwks_by_kid(api)
    assert before < set(after), "the JWKS must list the old and the new key (overlap)"
    assert len(after) == len(before) + 1
    # Tokens signed before the rotation still validate.
    assert validate(server, signed_in.access)["sub"]
    # Tokens issued now are signed by a published key and validate.
    email = unique_email("rot")
    directory.create_user(server.storage, email, password=PASSWORD)
    r = api.signin_password(email, PASSWORD, scope=FULL_SCOPE)
    assert r.status == 200, r.body
    assert header_of(r["access_token"])["kid"] in after
    assert validate(server, r["access_token"])["sub"]
