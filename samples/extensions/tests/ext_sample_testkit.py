"""Test kit for the extensions sample: a real issuer (discovery + JWKS over HTTP),
token and JWE makers, Entra-shaped payloads, an HTTP client, and the fixtures.

Fixtures are imported by name into each test module (no conftest.py here, so this
folder can join the main test run without shadowing tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac as crypto_hmac, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SAMPLE = Path(__file__).resolve().parent.parent
CALLER = "99045fe1-7639-4a75-9d4a-577b6ca3810f"
AUDIENCE = "api://localhost/extensions"
EXTENSIONS_APP_ID = "b3a1d1e0-7c2f-4e1a-9d3b-1f2e3d4c5b6a"
CODE_ATTR = "extension_b3a1d1e07c2f4e1a9d3b1f2e3d4c5b6a_invitationCode"
TENANT = "aaaabbbb-0000-cccc-1111-dddd2222eeee"


def _load(name: str, path: Path):
    import sys
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


serve = _load("extensions_sample_serve", SAMPLE / "serve.py")


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING_KEY, SIGNING_KEY_2, FORGER_KEY, PASSWORD_KEY, OTHER_PASSWORD_KEY = (_rsa() for _ in range(5))


def pem(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------ the issuer

class Issuer:
    """Discovery and JWKS over real HTTP, laid out like the native-auth backend:
    <issuer>/.well-known/openid-configuration and <issuer>/discovery/v2.0/keys."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {"key-1": SIGNING_KEY.public_key()}
        self.hits: list[str] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                issuer.hits.append(self.path)
                if self.path == "/api/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/discovery/v2.0/keys"}
                elif self.path == "/api/discovery/v2.0/keys":
                    body = {"keys": [{**jwt.algorithms.RSAAlgorithm.to_jwk(k, as_dict=True), "kid": kid,
                                      "use": "sig", "alg": "RS256"} for kid, k in issuer.keys.items()]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def jwks_fetches(self) -> int:
        return sum(1 for h in self.hits if h.endswith("/keys"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_token(issuer: str, *, key=None, kid: str = "key-1", alg: str = "RS256", **overrides) -> str:
    """A bearer token like the backend's (and Entra's v2 tokens); overrides=None drops a claim."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "azp": CALLER, "appid": CALLER, "sub": CALLER, "tid": TENANT,
              "iat": now, "nbf": now, "exp": now + 300, "ver": "2.0", "jti": uuid.uuid4().hex}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    signing = key if key is not None else SIGNING_KEY
    if alg.startswith("HS"):  # alg confusion: HMAC keyed with the public key's PEM
        secret = signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return _hs_token(claims, secret, kid)
    return jwt.encode(claims, signing, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def _hs_token(claims: dict, secret: bytes, kid: str) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    mac = crypto_hmac.HMAC(secret, hashes.SHA256())
    mac.update(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{b64url(mac.finalize())}"


def unsigned_jwt(claims: dict) -> str:
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(claims).encode())}."


# ------------------------------------------------------------------ the password context (JWE)

def password_claims(username: str, password: str, nonce: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": "http://127.0.0.1:7071/api", "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600,
              "user-password": password, "username": username, "nonce": nonce}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def jwe_by_hand(plaintext: bytes, public_key, *, alg: str = "RSA-OAEP", kid: str = "password-key-1",
                compress: bool = True) -> str:
    """RSA-OAEP (SHA-1) + A128CBC-HS256 + zip DEF built from primitives with `cryptography`,
    as the backend does (RFC 7516/7518), so jwcrypto in the sample checks an independent encoder."""
    header = {"alg": alg, "enc": "A128CBC-HS256", "kid": kid}
    if compress:
        header["zip"] = "DEF"
        deflate = zlib.compressobj(wbits=-15)
        plaintext = deflate.compress(plaintext) + deflate.flush()
    protected = b64url(json.dumps(header, separators=(",", ":")).encode())
    cek = os.urandom(32)
    mac_key, enc_key = cek[:16], cek[16:]
    if alg == "RSA-OAEP":
        encrypted_key = public_key.encrypt(cek, rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA1()),
                                                                 algorithm=hashes.SHA1(), label=None))
    elif alg == "RSA1_5":
        encrypted_key = public_key.encrypt(cek, rsa_padding.PKCS1v15())
    else:
        raise ValueError(alg)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    aad = protected.encode("ascii")
    mac = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(aad + iv + ciphertext + (len(aad) * 8).to_bytes(8, "big"))
    tag = mac.finalize()[:16]
    return ".".join([protected, b64url(encrypted_key), b64url(iv), b64url(ciphertext), b64url(tag)])


def jwe_by_jwcrypto(plaintext: bytes, public_key) -> str:
    from jwcrypto import jwe, jwk
    key = jwk.JWK.from_pem(public_key.public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    token = jwe.JWE(plaintext, json.dumps({"alg": "RSA-OAEP", "enc": "A128CBC-HS256", "zip": "DEF"}))
    token.add_recipient(key)
    return token.serialize(compact=True)


def password_context(username: str, password: str, nonce: str, *, key=None, **overrides) -> str:
    return jwe_by_hand(unsigned_jwt(password_claims(username, password, nonce, **overrides)).encode(),
                       (key or PASSWORD_KEY).public_key())


# ------------------------------------------------------------------ legacy hashes and data files

def django_pbkdf2(password: str, salt: str = "seasalt2", iterations: int = 1000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


PASSWORDS = {"ada@example.com": "Analytical Engine 1843", "grace@example.com": "cobol forever & ever",
             "linus@example.com": "penguin-power", "mallory@example.com": "let me in please",
             "eve@example.com": "eavesdropping", "ken@example.com": "unix philosophy"}
LEGACY_USERS = {
    "ada@example.com": django_pbkdf2(PASSWORDS["ada@example.com"]),
    # bcrypt 5 via the library; cost 4 keeps the tests fast
    "Grace@Example.com": bcrypt.hashpw(PASSWORDS["grace@example.com"].encode(), bcrypt.gensalt(4)).decode(),
    "linus@example.com": {"hash": django_pbkdf2(PASSWORDS["linus@example.com"], "pepper", 1200),
                          "updatePassword": True},
    "mallory@example.com": {"hash": bcrypt.hashpw(PASSWORDS["mallory@example.com"].encode(), bcrypt.gensalt(4)).decode(),
                            "blocked": True, "title": "Account closed",
                            "message": "This account was closed in the old system. Contact support."},
    "eve@example.com": {"blocked": True},
    # Django's own test vector (Django 1.4 tests: make_password('letmein', 'seasalt', 'pbkdf2_sha256'))
    "django@example.com": "pbkdf2_sha256$10000$seasalt$FQCNpiZpTb0zub+HBsH6TOwyRxJ19FwvjbweatNmK/Y=",
    # a bcrypt vector made by Python's bcrypt, as published in the rust `bcrypt` crate's tests
    "vector@example.com": "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie",
    "ken@example.com": "md5$legacy$0123456789abcdef",  # a format the sample does not know
}
ROLES = {
    "ada@example.com": {"roles": ["Admin", "Editor"], "tenant": "contoso", "plan": "enterprise"},
    "90847c2a-e29d-4d2f-9f54-c5b4d3f26471": {"roles": ["Reader"], "tenant": "fabrikam", "plan": "free",
                                             "shoeSize": 44},
}


def settings_for(issuer_url: str, folder: Path, **extra) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "roles.json").write_text(json.dumps(ROLES))
    (folder / "legacy-users.json").write_text(json.dumps(LEGACY_USERS))
    (folder / "password-key.pem").write_bytes(pem(PASSWORD_KEY))
    settings = {
        "EXTENSION_ISSUER": issuer_url,
        "EXTENSION_AUDIENCE": AUDIENCE,
        "ROLES_FILE": str(folder / "roles.json"),
        "EXTENSIONS_APP_ID": EXTENSIONS_APP_ID,
        "INVITATION_CODES": "WELCOME-2026, friends-of-ada",
        "BLOCKED_CODES": "LEAKED-2025",
        "OTP_OUTBOX": str(folder / "outbox.jsonl"),
        "PASSWORD_PRIVATE_KEY_FILE": str(folder / "password-key.pem"),
        "LEGACY_USERS": str(folder / "legacy-users.json"),
        "JWKS_MIN_REFETCH_SECONDS": "0",
    }
    settings.update(extra)
    return settings


# ------------------------------------------------------------------ Entra-shaped payloads

def _context(user: dict | None = None, request_type: str | None = None) -> dict:
    sp = {"id": "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb", "appId": "00001111-aaaa-2222-bbbb-3333cccc4444",
          "appDisplayName": "My Test application", "displayName": "My Test application"}
    context = {"correlationId": str(uuid.uuid4()), "client": {"ip": "127.0.0.1", "locale": "en-us", "market": "en-us"},
               "protocol": "OAUTH2.0", "clientServicePrincipal": sp, "resourceServicePrincipal": sp}
    if request_type:
        context["requestType"] = request_type
    if user is not None:
        context["user"] = user
    return context


def envelope(event: str, callout: str, **data) -> dict:
    return {"type": f"microsoft.graph.authenticationEvent.{event}",
            "source": f"/tenants/{TENANT}/applications/00001111-aaaa-2222-bbbb-3333cccc4444",
            "data": {"@odata.type": f"microsoft.graph.{callout}", "tenantId": TENANT,
                     "authenticationEventListenerId": str(uuid.uuid4()),
                     "customAuthenticationExtensionId": str(uuid.uuid4()), **data}}


def token_issuance(user: dict | None) -> dict:
    return envelope("tokenIssuanceStart", "onTokenIssuanceStartCalloutData", authenticationContext=_context(user))


def string_attr(value, attribute_type: str = "builtIn") -> dict:
    return {"@odata.type": "microsoft.graph.stringDirectoryAttributeValue", "value": value,
            "attributeType": attribute_type}


def attribute_collection(event: str, attributes: dict, email: str = "ada@example.com") -> dict:
    callout = "onAttributeCollectionStartCalloutData" if event == "attributeCollectionStart" \
        else "onAttributeCollectionSubmitCalloutData"
    return envelope(event, callout, authenticationContext=_context(),
                    userSignUpInfo={"attributes": attributes,
                                    "identities": [{"signInType": "email", "issuer": "contoso.onmicrosoft.com",
                                                    "issuerAssignedId": email}]})


def signup_submit(code: str | None, display_name: str | None = "Ada Lovelace") -> dict:
    attributes = {"email": string_attr("ada@example.com")}
    if display_name is not None:
        attributes["displayName"] = string_attr(display_name)
    if code is not None:
        attributes[CODE_ATTR] = string_attr(code, "directorySchemaExtension")
    return attribute_collection("attributeCollectionSubmit", attributes)


def otp_send(identifier: str, code: str, channel: str | None = None, code_key: str = "oneTimeCode") -> dict:
    otp = {"identifier": identifier, code_key: code}
    if channel is not None:
        otp["channel"] = channel
    return envelope("emailOtpSend", "onOtpSendCalloutData", otpContext=otp,
                    authenticationContext=_context(request_type="signUp"))


def password_submit(context: str, user: dict | None = None) -> dict:
    return envelope("passwordSubmit", "onPasswordSubmitCalloutData", encryptedPasswordContext=context,
                    authenticationContext=_context(user or {"id": str(uuid.uuid4()), "userType": "Member"}))


# ------------------------------------------------------------------ HTTP

class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


class Client:
    def __init__(self, base_url: str, issuer_url: str):
        self.base_url, self.issuer_url = base_url, issuer_url

    def token(self, **kwargs) -> str:
        return make_token(self.issuer_url, **kwargs)

    def post(self, path: str, payload=None, *, token: str | None = "default", raw: bytes | None = None,
             authorization: str | None = None) -> Response:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {self.token() if token == 'default' else token}"
        data = raw if raw is not None else json.dumps(payload).encode()
        return http("POST", f"{self.base_url}/{path}", data, headers)


# ------------------------------------------------------------------ fixtures (module scope)

@pytest.fixture(scope="module")
def issuer():
    server = Issuer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    return tmp_path_factory.mktemp("extensions-sample")


@pytest.fixture(scope="module")
def sample_host(issuer, sample_files):
    host = serve.start_host(settings_for(issuer.url, sample_files))
    yield host
    host.stop()


@pytest.fixture(scope="module")
def client(sample_host, issuer):
    return Client(sample_host.base_url, issuer.url)
