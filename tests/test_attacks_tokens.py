"""JWTs, refresh tokens, JWKS and discovery: catalogue rows A27-A35.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import _QUIET  # noqa: F401
from conftest import flow_rows


def test_A27_to_A31_positive_control(api, bearer):
    ok = sensitive(api, bearer.forge())
    assert ok.status == 200, ok.body
    r = sensitive(api, bearer.access)            # genuine, but without the context: a claims challenge, not 'invalid'
    assert r.status == 401 and r["error"] == "insufficient_claims"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "noNE"])
def test_A27_alg_none_is_rejected(api, bearer, alg):
    header = {"alg": alg, "typ": "at+jwt", "kid": bearer.kid}
    unsigned = f"{b64json(header)}.{b64json(bearer.claims)}."
    assert_401(sensitive(api, unsigned))
    real_sig = bearer.forge().split(".")[2]
    assert_401(sensitive(api, f"{b64json(header)}.{b64json(bearer.claims)}.{real_sig}"))


def _public_key_forms(api, kid: str) -> dict[str, bytes]:
    jwk = next(k for k in api.get("discovery/v2.0/keys").body["keys"] if k["kid"] == kid)
    pub = RSAAlgorithm.from_jwk(json.dumps(jwk))
    return {
        "pem-spki": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "openssh": pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    }


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_A28_hmac_signed_with_the_public_key_is_rejected(api, bearer, alg):
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for form, secret in _public_key_forms(api, bearer.kid).items():
        signing_input = f"{b64json({'alg': alg, 'typ': 'at+jwt', 'kid': bearer.kid})}.{b64json(bearer.claims)}"
        token = f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"
        assert_401(sensitive(api, token))




def test_A29_kid_jku_x5u_jwk_header_injection(api, bearer):
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = {**json.loads(RSAAlgorithm.to_jwk(attacker.public_key())), "use": "sig", "alg": "RS256"}
    with Canary({"keys": [{**attacker_jwk, "kid": "attacker"}, {**attacker_jwk, "kid": bearer.kid}]}) as canary:
        for kid in ("attacker", "../../../../etc/passwd", "' or '1'='1", "", None, bearer.kid):
            header = {"alg": "RS256", "typ": "at+jwt"}
            if kid is not None:
                header["kid"] = kid
            for pointer in (None, "jku", "x5u", "jwk"):
                h = dict(header)
                if pointer == "jku":
                    h["jku"] = canary.url + "/jwks.json"
                elif pointer == "x5u":
                    h["x5u"] = canary.url + "/cert.pem"
                elif pointer == "jwk":
                    h["jwk"] = {**attacker_jwk, "kid": kid or "x"}
                assert_401(sensitive(api, sign_raw(h, bearer.claims, attacker)))
        # The app's own key with an unknown kid: keys are found by kid in our JWKS only.
        assert_401(sensitive(api, bearer.forge(header={"alg": "RS256", "typ": "at+jwt", "kid": "no-such-kid"})))
        # A genuine token that carries a jku: the header is ignored, never fetched.
        sensitive(api, bearer.forge(header={"alg": "RS256", "typ": "at+jwt", "kid": bearer.kid,
                                            "jku": canary.url + "/real"}))
        assert canary.hits == [], "the app fetched a key from a URL named in a token header"


def test_A30_token_type_confusion(api, bearer, make_user):
    assert_401(sensitive(api, bearer.id))                           # ID token as a bearer token
    assert_401(sensitive(api, bearer.refresh))                      # refresh token as an access token
    assert_401(sensitive(api, bearer.forge(header={"alg": "RS256", "typ": "JWT", "kid": bearer.kid})))  # id typ
    assert_401(sensitive(api, bearer.forge(header={"alg": "RS256", "kid": bearer.kid})))                # no typ
    email, _ = make_user()
    ct = password_challenge_ct(api, email)
    assert_401(sensitive(api, ct))                                  # continuation token as a bearer token
    for other in (bearer.access, bearer.id, bearer.refresh):        # tokens as continuation tokens
        for path, form in (("oauth2/v2.0/challenge", {"challenge_type": "password redirect"}),
                           ("oauth2/v2.0/token", {"grant_type": "continuation_token", "scope": SCOPE}),
                           ("register/v1.0/continue", {"grant_type": "continuation_token"})):
            r = api.post(path, continuation_token=other, **form)
            assert r.status == 400 and r["error"] == "invalid_grant", (path, r.body)
            assert_no_tokens(r)
    for other in (bearer.access, bearer.id, ct):                    # and as refresh tokens
        r = refresh(api, other)
        assert r.status == 400 and r["error"] == "invalid_grant", r.body
        assert_no_tokens(r)


def _claim_attacks(issuer: str, client_id: str) -> dict[str, dict]:
    now = int(time.time())
    beyond = tokens.LEEWAY_SECONDS + 60
    return {
        "expired": {"exp": now - beyond},
        "nbf-future": {"nbf": now + beyond},
        "iat-future": {"iat": now + 86400, "exp": now + 90000},
        "aud-other": {"aud": "api://other"},
        "aud-prefix": {"aud": RESOURCE[:-2]},
        "aud-suffix": {"aud": RESOURCE + "-evil"},
        "aud-client": {"aud": client_id},
        "iss-prefix": {"iss": issuer[:-1]},
        "iss-suffix": {"iss": issuer + "x"},
        "iss-subpath": {"iss": issuer + "/evil"},
        "iss-embedded": {"iss": "https://evil.example/?" + issuer},
        "iss-host-suffix": {"iss": issuer.replace("127.0.0.1", "127.0.0.1.evil.example")},
        "iss-case": {"iss": issuer.upper()},
        "sub-missing": {"sub": None},
        "exp-missing": {"exp": None},
        "iss-missing": {"iss": None},
        "aud-missing": {"aud": None},
    }


@pytest.mark.parametrize("case", list(_claim_attacks("http://127.0.0.1:1/api", DEV_CLIENT)))
def test_A31_bad_claims_are_rejected(api, server, bearer, case):
    changes = _claim_attacks(server.settings.issuer, DEV_CLIENT)[case]
    assert_401(sensitive(api, bearer.forge(**changes)))


def test_A31_leeway_is_small(api, bearer):
    now = int(time.time())
    assert 0 < tokens.LEEWAY_SECONDS <= 60
    assert sensitive(api, bearer.forge(exp=now - 5, nbf=now + 5)).status == 200
    assert_401(sensitive(api, bearer.forge(exp=now - tokens.LEEWAY_SECONDS - 5)))


# ====================================================================== A32-A35: refresh tokens, keys, discovery

def test_A32_refresh_token_reuse_revokes_the_family(server, api, make_user, shift):
    email, _ = make_user()
    rt1 = password_first_factor(api, email)["refresh_token"]
    r2 = refresh(api, rt1)
    assert r2.status == 200
    rt2 = r2["refresh_token"]
    assert rt2 != rt1
    clock = shift(tokens)
    clock.offset = get_settings().refresh_grace_seconds + 1          # the reuse comes after the grace
    reuse = refresh(api, rt1)
    assert reuse.status == 400 and reuse["error"] == "invalid_grant"
    assert_no_tokens(reuse)
    dead = refresh(api, rt2)                                          # the family is gone: re-authenticate
    assert dead.status == 400 and dead["error"] == "invalid_grant"
    pk, rk, _ = rt2.split(".")
    assert server.storage.table("refresh").get(pk, rk)["revoked"] is True


def test_A33_concurrent_refresh_within_the_grace(server, api, make_user):
    email, _ = make_user()
    rt1 = password_first_factor(api, email)["refresh_token"]
    results = parallel(2, lambda i: refresh(api, rt1))
    assert sorted(r.status for r in results) == [200, 400], [r.body for r in results]
    winner = next(r for r in results if r.status == 200)
    pk, rk, _ = rt1.split(".")
    assert server.storage.table("refresh").get(pk, rk)["revoked"] is False      # no family revocation
    late = refresh(api, rt1)                                                       # still within the grace
    assert late.status == 400 and server.storage.table("refresh").get(pk, rk)["revoked"] is False
    assert refresh(api, winner["refresh_token"]).status == 200                    # the successor works


def test_A34_refresh_token_idle_and_absolute_lifetime(server, api, make_user, shift):
    email, _ = make_user()
    clock = shift(tokens)
    with server.override(refresh_idle_seconds=60, refresh_absolute_seconds=120):
        rt = password_first_factor(api, email)["refresh_token"]
        idle_rt = password_first_factor(api, email)["refresh_token"]
        clock.offset = 50
        r = refresh(api, rt)
        assert r.status == 200 and r["refresh_token_expires_in"] <= 60
        rt = r["refresh_token"]
        clock.offset = 100
        r = refresh(api, rt)                                # used 50 s ago: within the idle window
        assert r.status == 200 and r["refresh_token_expires_in"] <= 20
        rt = r["refresh_token"]
        clock.offset = 121                                  # past the absolute lifetime, though used 21 s ago
        r = refresh(api, rt)
        assert r.status == 400 and r["error"] == "invalid_grant" and r["error_codes"] == [700082], r.body
        r = refresh(api, idle_rt)                           # never used for 121 s > 60 s idle
        assert r.status == 400 and r["error"] == "invalid_grant" and r["error_codes"] == [700082], r.body
    defaults = Settings.from_env({"AUTH_ENVIRONMENT": "local"})
    assert defaults.refresh_idle_seconds == 14 * 86400 and defaults.refresh_absolute_seconds == 90 * 86400
    assert defaults.refresh_grace_seconds <= 10


def test_A35_discovery_and_jwks(server, api, bearer):
    doc = api.get(".well-known/openid-configuration")
    assert doc.status == 200
    issuer = doc["issuer"]
    assert issuer == server.settings.issuer == claims_of(bearer.access)["iss"] == claims_of(bearer.id)["iss"]
    assert api.base_url.startswith(issuer)
    assert doc["jwks_uri"].startswith(issuer + "/") and doc["token_endpoint"].startswith(issuer + "/")
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    jwks = api.get(doc["jwks_uri"][len(api.base_url):])
    assert jwks.status == 200 and jwks.body == api.get("discovery/v2.0/keys").body
    keys = jwks["keys"]
    assert keys and len({k["kid"] for k in keys}) == len(keys)
    for k in keys:
        assert set(k) == {"kty", "use", "alg", "kid", "n", "e"}, k      # public parameters only
        assert k["kty"] == "RSA" and k["use"] == "sig" and k["alg"] == "RS256"
    assert bearer.kid in {k["kid"] for k in keys}


def test_A35_old_key_stays_published_across_a_rotation(server, api, bearer, make_user):
    before = {k["kid"] for k in api.get("discovery/v2.0/keys")["keys"]}
    tokens.keyring(server.storage, server.settings).force_rotation()
    after = {k["kid"] for k in api.get("discovery/v2.0/keys")["keys"]}
    assert before < after and len(after) == len(before) + 1
    new_kid = (after - before).pop()
    assert sensitive(api, bearer.forge()).status == 200         # tokens signed before the rotation still validate
    email, _ = make_user()
    fresh = password_first_factor(api, email, scope=FULL_SCOPE)
    kid = header_of(fresh["access_token"])["kid"]
    assert kid in after and kid != new_kid                       # a new key signs only after its publish delay


# ---------------------------------------------------------------- A115: sealed start tokens

def _start(api, email: str, kind: str) -> str:
    if kind == "sign-in":
        r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect", capabilities=CAPS)
    else:
        r = api.post("resetpassword/v1.0/start", username=email, challenge_type="oob redirect", capabilities=CAPS)
    assert r.status == 200, r.body
    return r["continuation_token"]


def _first_step(api, token: str, kind: str, **extra):
    if kind == "sign-in":
        return api.post("oauth2/v2.0/challenge", continuation_token=token, challenge_type="password oob redirect", **extra)
    return api.post("resetpassword/v1.0/challenge", continuation_token=token, challenge_type="oob redirect", **extra)


@pytest.mark.parametrize("kind", ["sign-in", "reset"])
def test_A115_a_start_token_is_used_once_even_by_a_parallel_burst(server, api, outbox, make_user, kind):
    """A sign-in's or a reset's start stores nothing: its token carries the flow's record, sealed, and the next
    step's write inserts that record (create-only). 24 simultaneous uses of one start token: exactly one goes
    on (one code for a reset), every other one is refused like a stale token, and so is any later use."""
    email, _ = make_user()
    token = _start(api, email, kind)
    answers = parallel(24, lambda i: _first_step(api, token, kind))
    won = [r for r in answers if r.status == 200]
    assert len(won) == 1, [(r.status, r.body) for r in answers]
    assert all(r.status == 400 and r["error"] == "invalid_grant" for r in answers if r.status != 200)
    assert _first_step(api, token, kind)["error"] == "invalid_grant"
    if kind == "reset":
        assert outbox.count(email) == 1
        r = api.post("resetpassword/v1.0/continue", continuation_token=won[0]["continuation_token"], grant_type="oob",
                     oob=outbox.last_code(email))
    else:
        r = password_grant(api, won[0]["continuation_token"], PW)
    assert r.status == 200, r.body      # the winner's flow is intact


@pytest.mark.parametrize("kind", ["sign-in", "reset"])
def test_A115_a_start_token_shows_nothing_and_its_length_does_not_depend_on_the_account(server, api, make_user, kind):
    """The sealed record holds the address and whether the account exists (and, for a sign-in, whether it has
    a password): it is encrypted, and flags are sealed as fixed-width numbers, so an account with a password, a
    disabled one, one without a password and no account at all give tokens of one length for names of one length
    (A17-A20: the token is not an oracle)."""
    import base64
    import uuid

    lengths = set()
    for case in ("password", "none", "disabled", "passwordless"):
        email = f"a115-{uuid.uuid4().hex[:12]}@example.com"
        if case == "password":
            make_user(email=email)
        elif case == "disabled":
            make_user(email=email)
            directory.update_user(server.storage, directory.get_user(server.storage, email), disabled=True)
        elif case == "passwordless":
            make_user(password=None, email=email)
        for _ in range(3):
            token = _start(api, email, kind)
            lengths.add(len(token))
            raw = token.split(".", 1)[1]
            blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            for needle in (email, email.split("@")[0], "user_exists", "started", api.client_id):
                assert needle.encode() not in blob and needle not in token
    assert len(lengths) == 1, lengths


def test_A115_a_start_token_under_another_key_or_altered_is_refused_and_a_rotation_keeps_it(server, api, make_user):
    """Only this deployment's key (or one still accepted during a rotation) opens a start token: a token sealed
    under a guessed key, with a record of the attacker's choosing, is refused like garbage; after a rotation
    that keeps the old key accepted, a token sealed before it still works."""
    import dataclasses

    from shared.flows import state

    email, _ = make_user()
    record, secret = state._unseal(server.settings, _start(api, email, "sign-in"))
    guessed = dataclasses.replace(server.settings, code_hash_key=b"a key the attacker guessed" * 2)
    forged = state._seal(guessed, {**record, "expires_at": record["expires_at"] + 10 ** 6}, secret)
    r = _first_step(api, forged, "sign-in")
    assert r.status == 400 and r["error"] == "invalid_grant"
    before_rotation = _start(api, email, "sign-in")
    with server.override(code_hash_key=b"the next code hash key, 32 bytes+",
                         code_hash_keys_accepted=(server.settings.code_hash_key,)):
        r = _first_step(api, before_rotation, "sign-in")
        assert r.status == 200, r.body
    with server.override(code_hash_key=b"the next code hash key, 32 bytes+", code_hash_keys_accepted=()):
        r = _first_step(api, _start(api, email, "sign-in"), "sign-in")       # sealed under the new key: fine
        assert r.status == 200, r.body
        r = _first_step(api, _start_under(server, api, email), "sign-in")   # the old key, no longer accepted
        assert r.status == 400 and r["error"] == "invalid_grant"


def _start_under(server, api, email: str) -> str:
    """A well-formed start token sealed under the suite's own key (while the app runs with another one)."""
    from shared.flows import state

    import time

    now = time.time()
    record = {"PartitionKey": "f2026010100a", "RowKey": "A" * 22, "kind": "signin", "client_id": api.client_id,
              "secret_hash": state._secret_hash("B" * 43), "created": int(now), "started": now,
              "expires_at": int(now) + 600, "state": "started", "steps": "[]",
              "username": email, "has_password": True, "user_exists": True, "challenge_types": '["password", "redirect"]',
              "capabilities": "[]", "ident": __import__("shared.storage.directory", fromlist=["x"]).user_key(email)}
    return state._seal(server.settings, record, "B" * 43)


@pytest.mark.usefixtures("steady_hour")      # its limit is counted per clock hour
@pytest.mark.parametrize("kind", ["sign-in", "reset"])
def test_A115_a_refused_first_send_keeps_the_start_token_usable_and_single_use(server, api, outbox, make_user, kind):
    """A send that a limit refuses at the first step stores the flow put back as it was sealed: the same start
    token retries at once, the refusal is logged once however often the client retries, and once a send went
    out the start token is dead."""
    from shared.storage import signinlog

    email, _ = make_user(password=None) if kind == "sign-in" else make_user()
    token = _start(api, email, kind)
    refused = set()
    with server.override(email_per_destination_hour=1):
        assert _first_step(api, _start(api, email, kind), kind).status == 200      # the hour's one email
        for _ in range(3):
            r = _first_step(api, token, kind)
            assert r.status == 400 and r["error"] == "slow_down", r.body
            refused.add(r["correlation_id"])
    assert outbox.count(email) == 1
    logged = [e for e in signinlog.tail(server.storage, 1, 500) if e.get("correlation_id") in refused]
    assert len(logged) == 1 and logged[0]["result"] == "throttled", logged
    r = _first_step(api, token, kind)               # the limit is back to the suite's: the same token goes on
    assert r.status == 200 and outbox.count(email) == 2, r.body
    assert _first_step(api, token, kind)["error"] == "invalid_grant"
    assert outbox.count(email) == 2


def test_A115_a_start_token_seen_in_a_url_is_dead(server, api, make_user):
    """A111 holds for start tokens too: one that appeared in a request URL is burnt (its record stored with a
    secret nobody has), whatever that request was."""
    from urllib.parse import urlencode

    email, _ = make_user()
    token = _start(api, email, "sign-in")
    api.request("POST", f"oauth2/v2.0/challenge?{urlencode({'client_id': api.client_id, 'continuation_token': token})}",
                b"", FORM)
    r = _first_step(api, token, "sign-in")
    assert r.status == 400 and r["error"] == "invalid_grant", r.body


def test_A115_a_start_token_cannot_skip_a_step_or_serve_another_flow_kind(server, api, make_user):
    """The sealed record is judged like a stored one: a sign-in start token at the token endpoint, at a reset
    step or at a sign-up step is refused and stores nothing; it still works for its own next step."""
    email, _ = make_user()
    token = _start(api, email, "sign-in")
    for r in (password_grant(api, token, PW),
              api.post("resetpassword/v1.0/challenge", continuation_token=token, challenge_type="oob redirect"),
              api.post("signup/v1.0/challenge", continuation_token=token, challenge_type="oob password redirect"),
              api.post("oauth2/v2.0/introspect", continuation_token=token)):
        assert r.status == 400 and r["error"] in ("invalid_grant", "invalid_request"), r.body
        assert_no_tokens(r)
    from shared.flows import state

    pk, rk, _, _ = state._parts(server.settings, token)
    assert server.storage.table(state._table_of(pk)).get(pk, rk) is None
    assert _first_step(api, token, "sign-in").status == 200


def _seal_raw(server, body: dict) -> str:
    """A start token around any payload, sealed with this deployment's key (what a holder of the key could make)."""
    import base64
    import json
    import secrets

    from shared.flows import state

    nonce = secrets.token_bytes(12)
    blob = state._seal_key(server.settings.code_hash_key).encrypt(nonce, json.dumps(body).encode(), state._SEAL_AAD)
    return state._SEAL_PREFIX + base64.urlsafe_b64encode(nonce + blob).rstrip(b"=").decode()


def _start_payload(api, email: str, now: float) -> dict:
    """What a real sign-in start seals for a password account (a fresh flow id each time)."""
    import json
    import secrets

    return {"k": "signin", "c": api.client_id, "i": secrets.token_urlsafe(16), "t": f"{now:.6f}", "x": int(now) + 600,
            "f": {"user_exists": 1, "username": email, "has_password": 1,
                  "challenge_types": json.dumps(["password", "redirect"]), "capabilities": "[]"},
            "b": ["has_password", "user_exists"], "s": "B" * 43}


def test_A115_even_the_key_seals_nothing_but_a_fresh_start(server, api, make_user):
    """A start token carries the client's choices and what the start found; the rest of the record is the
    template every start writes. So a holder of AUTH_CODE_HASH_KEY (or an old accepted key) cannot seal a flow
    that skips a step: a record claiming a finished first factor, extra fields, another kind, a lifetime past
    the longest a flow may have, or a malformed id all open as nothing (invalid_grant), and sealing such a
    record through the app's own sealing keeps only the fields a start has."""
    import json
    import time

    from shared.flows import state
    from shared.storage.tables import hash_key

    email, _ = make_user()
    now = time.time()
    good = _start_payload(api, email, now)
    assert _first_step(api, _seal_raw(server, good), "sign-in").status == 200          # the control: a fresh start
    future = now + 10 * 365 * 86400
    bad = [
        {**good, "i": "C" * 22, "f": {**good["f"], "state": "ready_for_token", "steps": '["pwd"]'}},
        {**good, "i": "D" * 22, "k": "signup"},
        {**good, "i": "E" * 22, "x": int(now) + 10 ** 6},
        {**good, "i": "short"},
        {**good, "i": "F" * 22, "s": "secret"},
        {**good, "i": "G" * 22, "f": {**good["f"], "user_exists": "1"}, "b": ["has_password"]} | {"x": "soon"},
        {"e": {"kind": "signin", "state": "ready_for_token"}, "s": "B" * 43},
        # The account named by its key, the code mailed to the attacker's address (review finding: honoured):
        {**good, "i": "I" * 22, "f": {**good["f"], "ident": hash_key("email", email), "username": "mallory@example.com"}},
        {**good, "i": "J" * 22, "t": f"{future:.6f}", "x": int(future) + 600},      # a start ten years ahead
        {**good, "i": "K" * 22, "t": "inf"}, {**good, "i": "L" * 22, "t": "1e18"}, {**good, "i": "M" * 22, "t": "-1e18"},
        {**good, "i": "N" * 22, "b": ["has_password", "user_exists", "username"]},
        {**good, "i": "O" * 22, "f": {**good["f"], "user_exists": 7}},
        {**good, "i": "P" * 22, "f": {**good["f"], "challenge_types": "not json"}},
        {**good, "i": "Q" * 22, "f": {**good["f"], "challenge_types": json.dumps(["password", "telepathy"])}},
        {**good, "i": "R" * 22, "f": {**good["f"], "username": "Mallory@Example.COM"}},
        {**good, "i": "S" * 22, "f": {k: v for k, v in good["f"].items() if k != "has_password"}, "b": ["user_exists"]},
    ]
    for body in bad:
        token = _seal_raw(server, body)
        for r in (_first_step(api, token, "sign-in"),
                  api.post("oauth2/v2.0/token", continuation_token=token, grant_type="continuation_token", scope=SCOPE)):
            assert r.status == 400 and r["error"] == "invalid_grant", (body, r.body)
            assert_no_tokens(r)
    forged = {"PartitionKey": "f2026010100a", "RowKey": "H" * 22, "kind": "signin", "client_id": api.client_id,
              "secret_hash": state._secret_hash("B" * 43), "created": int(now), "started": now,
              "expires_at": int(now) + 600, "state": "ready_for_token", "steps": '["pwd", "otp"]',
              "second_factors": '["sms"]', "ident": hash_key("email", email), "user_exists": True, "username": email,
              "has_password": True, "challenge_types": '["password", "redirect"]', "capabilities": "[]"}
    token = state._seal(server.settings, forged, "B" * 43)
    record, _ = state._unseal(server.settings, token)
    assert record["state"] == "started" and record["steps"] == "[]" and "second_factors" not in record
    r = api.post("oauth2/v2.0/token", continuation_token=token, grant_type="continuation_token", scope=SCOPE)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert_no_tokens(r)


def test_A115_a_verified_resets_record_outlives_its_start_token(server, api, outbox, make_user):
    """A verified reset has 10 minutes left (valid_until), but its record keeps the expiry its start token was
    sealed with: the purge, which deletes rows two minutes after their expiry, cannot remove the record while
    the start token is still valid, and a replay of the start token keeps meeting it (found by review: with the
    expiry itself shortened, a purge 12 minutes later let the start token store a new flow and send a code)."""
    from shared.flows import state
    from shared.storage import maintenance

    email, _ = make_user()
    token = _start(api, email, "reset")
    c = _first_step(api, token, "reset")
    v = api.post("resetpassword/v1.0/continue", continuation_token=c["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    assert v.status == 200 and 0 < v["expires_in"] <= 600, v.body
    s = api.post("resetpassword/v1.0/submit", continuation_token=v["continuation_token"], new_password=NEW_PW)
    assert s.status == 200, s.body
    pk, rk, _, sealed = state._parts(server.settings, token)
    row = server.storage.table(state._table_of(pk)).get(pk, rk)
    assert row["expires_at"] == sealed["expires_at"] and row["valid_until"] <= sealed["expires_at"] - 299
    maintenance.purge_expired(server.settings, now=int(row["valid_until"]) + 121)   # the timer, 12 minutes on
    assert server.storage.table(state._table_of(pk)).get(pk, rk) is not None
    sent = outbox.count(email)
    r = _first_step(api, token, "reset")
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert outbox.count(email) == sent


def test_A115_a_token_has_one_spelling(server, api, make_user):
    """A trailing newline (which a regex ending in $ lets through) is not another spelling of a token."""
    email, _ = make_user()
    token = _start(api, email, "sign-in")
    for variant in (token + "\n", token + "\r\n", " " + token):
        r = _first_step(api, variant, "sign-in")
        assert r.status == 400 and r["error"] == "invalid_grant", (variant, r.body)
    c = _first_step(api, token, "sign-in")
    assert c.status == 200
    r = password_grant(api, c["continuation_token"] + "\n", PW)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body


@pytest.mark.parametrize("extra", [
    {"capabilities": " ".join(f"cap{i}" for i in range(40))},           # more than the seal takes
    {"capabilities": "x" * 100},                                         # a capability longer than it takes
    {"challenge_type": " ".join(["password"] * 40) + " redirect"},       # duplicates
])
def test_A115_a_start_the_seal_does_not_take_is_stored_and_works(server, api, make_user, extra):
    """Whatever a client may send at the start, the token it gets is one its next step accepts: input the
    seal's schema does not take is stored as before (one more operation, for any account alike)."""
    email, _ = make_user()
    form = {"username": email, "challenge_type": "password oob redirect", "capabilities": CAPS, **extra}
    i = api.post("oauth2/v2.0/initiate", **form)
    assert i.status == 200, i.body
    c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password redirect")
    assert c.status == 200 and c["challenge_type"] == "password", c.body
    assert password_grant(api, c["continuation_token"], PW).status in (200, 400)
    unknown = api.post("oauth2/v2.0/initiate", **{**form, "username": "x" + email})
    assert unknown.status == 200 and len(unknown["continuation_token"].split(".")) == len(i["continuation_token"].split("."))


def test_A115_what_the_key_could_seal_is_refused_cleanly(server, api, make_user):
    """Payloads a start never writes, sealed with the real key, are invalid_grant, never a 500 (third review:
    not-JSON plaintext, deep nesting and an over-long number crashed the parse; extra keys, float flags, an
    unknown name without a password, challenge types without redirect and control characters were accepted)."""
    import json
    import time

    email, _ = make_user()
    now = time.time()
    good = _start_payload(api, email, now)

    def sealed_bytes(plain: bytes) -> str:
        import base64
        import secrets

        from shared.flows import state

        nonce = secrets.token_bytes(12)
        blob = state._seal_key(server.settings.code_hash_key).encrypt(nonce, plain, state._SEAL_AAD)
        return state._SEAL_PREFIX + base64.urlsafe_b64encode(nonce + blob).rstrip(b"=").decode()

    tokens = [
        sealed_bytes(b"\xff\xfe not json at all, but long enough for the token's shape...."),
        sealed_bytes(b"[" * 2500 + b"]" * 2500),
        sealed_bytes(json.dumps({**good, "x": "PLACEHOLDER"}).replace('"PLACEHOLDER"', "9" * 4400).encode()),
        _seal_raw(server, {**good, "f": {**good["f"], "capabilities": "[" * 2000 + "]" * 2000}}),
        _seal_raw(server, {**good, "state": "done"}),
        _seal_raw(server, {**good, "f": {**good["f"], "user_exists": 1.0}}),
        _seal_raw(server, {**good, "t": now}),
        _seal_raw(server, {**good, "t": f"  {now:.6f}\n"}),
        _seal_raw(server, {**good, "f": {**good["f"], "user_exists": 0, "has_password": 0}}),
        _seal_raw(server, {**good, "f": {**good["f"], "challenge_types": json.dumps(["password"])}}),
        _seal_raw(server, {**good, "f": {**good["f"], "challenge_types": "[]"}}),
        _seal_raw(server, {**good, "f": {**good["f"], "capabilities": json.dumps(["mfa_required\r\nx"])}}),
        _seal_raw(server, {**good, "f": {**good["f"], "capabilities": json.dumps(["\ud800"])}}),
    ]
    for token in tokens:
        r = _first_step(api, token, "sign-in")
        assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert _first_step(api, _seal_raw(server, good), "sign-in").status == 200       # the control


def test_A115_the_transport_leaves_the_environment_alone(server, monkeypatch):
    """Deciding the proxy for an origin reads NO_PROXY without writing os.environ (third review: requests'
    helper, given NO_PROXY, set and unset it under other threads' feet)."""
    import os

    from conftest import clear_proxy_env
    from shared.storage import transport as transports

    clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", ".core.windows.net")
    before = dict(os.environ)
    transport = transports.DirectTransport(connection_timeout=1, read_timeout=1)
    assert transport._proxy("https://acct.table.core.windows.net/t") is None
    assert transport._proxy("https://elsewhere.example.net/t") == "http://127.0.0.1:9"
    assert dict(os.environ) == before


@pytest.mark.parametrize("name", ["abc\n@example.com", "a" * 64 + "@" + ".".join(["ü" * 20] * 8) + ".de"])
def test_A115_an_address_that_does_not_normalise_to_itself_is_refused_at_the_start(api, name):
    """A trailing newline in the local part (a regex ending in $) and an address within 254 characters only
    before its domain is punycoded are not addresses: refused at the start, not sealed into a token the next
    step would refuse (third review)."""
    r = api.post("oauth2/v2.0/initiate", username=name, challenge_type="password oob redirect")
    assert r.status == 400 and r["error"] == "invalid_request" and r["error_codes"][0] == 90100, r.body


def test_A115_a_start_token_always_fits_the_deployments_body_limit(server, api, make_user):
    """With AUTH_MAX_BODY_BYTES at its lowest (1 KiB), a start whose sealed token would not leave room for the next
    step's other fields is stored as before, so the next step's body is never refused as too large (fourth review)."""
    import uuid

    email, _ = make_user(email="a" * 55 + "-" + uuid.uuid4().hex[:8] + "@" + "long-domain-name." * 8 + "example.com")
    with server.override(max_body_bytes=1024):
        caps = " ".join(f"capability_{i}" for i in range(20))
        i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect", capabilities=caps)
        assert i.status == 200, i.body
        assert len(i["continuation_token"]) <= 1024 - 512
        c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"],
                     challenge_type="password oob redirect")
        assert c.status == 200 and c["challenge_type"] == "password", c.body


# ====================================================================== A116: sign-ins and resets in the account's partition

def _flow_rows(server, email: str) -> list[dict]:
    return flow_rows(server.storage, directory.user_key(email))


def test_A116_a_flow_token_shows_nothing_links_nothing_and_has_one_length(server, api, make_user):
    """A sign-in's stored record lives in its address's partition of the users table, whose key is a plain hash
    of the address: the token carries it encrypted (with the flow id and secret), so it shows neither the address
    nor its hash, two tokens of one account share nothing but the prefix (no linking in logs), and known,
    disabled and unknown names give tokens of one length."""
    import base64
    import uuid

    lengths, seen = set(), []
    for case in ("password", "none", "disabled"):
        email = f"a116-{uuid.uuid4().hex[:12]}@example.com"
        if case != "none":
            make_user(email=email)
        if case == "disabled":
            directory.update_user(server.storage, directory.get_user(server.storage, email), disabled=True)
        key = directory.user_key(email)
        for _ in range(2):
            token = password_challenge_ct(api, email)
            assert token.startswith("u1."), token
            lengths.add(len(token))
            blob = base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4))
            for needle in (email, email.split("@")[0], key, key[:16]):
                assert needle not in token and needle.encode() not in blob
            assert bytes.fromhex(key) not in blob and bytes.fromhex(key)[:8] not in blob
            seen.append(token)
    assert len(lengths) == 1, lengths
    prefixes = {t[:12] for t in seen}
    assert len(prefixes) == len(seen)       # 9 hex-free random prefixes: nothing repeats between tokens


def test_A116_an_altered_or_foreign_flow_token_is_refused_and_a_rotation_keeps_it(server, api, make_user):
    """Any change to a stored flow's token (each position, the spare bits of its last character) is refused like
    garbage; a token made under a key this deployment does not accept is refused; a rotation that keeps the old
    key accepted keeps the flows it made going."""
    import dataclasses

    from shared.flows import state

    email, _ = make_user()
    token = password_challenge_ct(api, email)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for pos in (3, 10, 20, 60, 100, 140, len(token) - 2, len(token) - 1):
        c = token[pos]
        altered = token[:pos] + alphabet[(alphabet.index(c) + 1) % 64] + token[pos + 1:]
        r = password_grant(api, altered, PW)
        assert r.status == 400 and r["error"] == "invalid_grant", (pos, r.body)
    pk, flow_id, secret, _ = state._parts(server.settings, token)
    guessed = dataclasses.replace(server.settings, code_hash_key=b"a key the attacker guessed" * 2)
    r = password_grant(api, state._token(guessed, pk, flow_id, secret), PW)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    # another account's partition, with this flow's id and secret: no such row there
    other, _ = make_user()
    r = password_grant(api, state._token(server.settings, directory.user_key(other), flow_id, secret), PW)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    with server.override(code_hash_key=b"the next code hash key, 32 bytes+",
                         code_hash_keys_accepted=(server.settings.code_hash_key,)):
        r = password_grant(api, token, PW)
        assert r.status == 200, r.body
        assert "access_token" in r.body


def test_A116_each_step_costs_the_same_for_any_name(server, api, make_user):
    """The flow and the account are read in one partition query whether or not the account exists, is
    disabled or has no password for this client: each step's storage work is the same (A17-A20, A52)."""
    known, _ = make_user()
    disabled, _ = make_user()
    directory.update_user(server.storage, directory.get_user(server.storage, disabled), disabled=True)
    costs = {}
    # A first round warms this instance's caches (the extension configuration a wrong password reads, kept for
    # a while): whichever name comes first after they expire pays for that read, known or not.
    for label, email in (("warm-up", unique_email("warm")), ("known", known), ("unknown", unique_email("ghost")),
                         ("disabled", disabled)):
        i = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect", capabilities=CAPS)
        c = api.post("oauth2/v2.0/challenge", continuation_token=i["continuation_token"], challenge_type="password redirect")
        t = password_grant(api, c["continuation_token"], PW + "-wrong")
        again = password_grant(api, c["continuation_token"], PW + "-wrong")
        assert t["error_codes"] == again["error_codes"] == [BAD_CREDENTIALS], (label, t.body)
        costs[label] = tuple(int(r.headers["x-storage-ops"]) for r in (i, c, t, again))
    assert costs["known"] == costs["unknown"] == costs["disabled"], costs


def test_A116_a_right_passwords_take_back_survives_a_moved_account_row_and_a_refusal(server, api, make_user, monkeypatch):
    """The counted attempt of a right password is taken back with the flow's next write, in one transaction.
    When the account row changed in between (another device's sign-in, an admin), the transaction fails and the
    take-back is redone on the row as it is then; when the step ends without a flow write (the account must
    reset its password), it is written on its own. Either way the counter is back where it was."""
    from shared.security import gate as gate_mod

    email, user = make_user()
    real = gate_mod.gate
    moved = []

    def account_moves_first(storage, settings, flow, u, form, request=None):
        if not moved:
            moved.append(1)
            fresh = directory.get_user(storage, email)
            directory.update_user(storage, fresh, display_name="changed by an admin meanwhile")
        return real(storage, settings, flow, u, form, request)

    monkeypatch.setattr(gate_mod, "gate", account_moves_first)
    r = password_grant(api, password_challenge_ct(api, email), PW)
    assert r.status == 200 and moved, r.body
    after = directory.get_user(server.storage, email)
    assert int(after.entity.get("failed_logins") or 0) == 0 and after.display_name == "changed by an admin meanwhile"
    monkeypatch.setattr(gate_mod, "gate", real)

    for _ in range(2):    # two earlier failures stay counted (this sign-in's risk signal) ...
        assert password_grant(api, password_challenge_ct(api, email), PW + "-wrong")["error_codes"] == [BAD_CREDENTIALS]
    directory.update_user(server.storage, directory.get_user(server.storage, email), password_reset_required=True)
    r = password_grant(api, password_challenge_ct(api, email), PW)
    assert r.status == 400 and 50142 in r["error_codes"], r.body
    assert int(directory.get_user(server.storage, email).entity.get("failed_logins")) == 2   # ... and this one is not


def test_A116_a_take_back_never_lands_on_an_account_signed_up_again_at_the_address(server, api, make_user,
                                                                                   monkeypatch):
    """A right password's counted attempt is taken back on the account the step began with only: if that account
    was deleted and someone signed up again at the same address meanwhile (the same partition, another object
    id), the step is refused and the new account's failure counter is left as it is (it was lowered by one)."""
    from shared.flows import account as account_mod
    from shared.security import gate as gate_mod

    email, user = make_user()
    real = gate_mod.gate
    replaced = []

    def replaced_meanwhile(storage, settings, flow, u, form, request=None):
        if not replaced:
            account_mod.delete_user(storage, settings, directory.get_user(storage, email))
            new = directory.create_user(storage, email, password=PW + " of the new owner")
            directory.update_user(storage, new, failed_logins=3)
            replaced.append(new.oid)
        return real(storage, settings, flow, u, form, request)

    monkeypatch.setattr(gate_mod, "gate", replaced_meanwhile)
    r = password_grant(api, password_challenge_ct(api, email), PW)
    assert replaced and r.status == 400 and r["error"] == "invalid_grant", r.body
    assert_no_tokens(r)
    new = directory.get_user(server.storage, email)
    assert new.oid == replaced[0] and new.oid != user.oid
    assert int(new.entity.get("failed_logins") or 0) == 3, new.entity.get("failed_logins")


def test_A116_a_burst_of_right_passwords_on_one_flow_wins_once_and_counts_nothing(server, api, make_user):
    """20 simultaneous right passwords on one flow: one goes on, the others are refused like a used token, and
    every counted attempt is taken back (no lockout from a double-submitting client)."""
    email, _ = make_user()
    ct = password_challenge_ct(api, email)
    answers = parallel(20, lambda i: password_grant(api, ct, PW))
    assert sum(r.status == 200 for r in answers) == 1, [(r.status, r.body) for r in answers]
    assert all(r["error"] == "invalid_grant" for r in answers if r.status != 200)
    u = directory.get_user(server.storage, email)
    assert int(u.entity.get("failed_logins") or 0) == 0 and not u.locked_until()
    assert password_grant(api, password_challenge_ct(api, email), PW).status == 200


def test_A116_the_purge_never_touches_an_account_row_and_readers_see_no_flow_rows(server, api, make_user):
    """Flow rows of known and unknown names share the users table with the accounts: the purge removes every
    expired one (the filtered scan) and never an account row; the admin listing shows accounts only."""
    from shared.storage import maintenance
    from test_admin import admin

    email, _ = make_user()
    ghost = unique_email("ghost")
    for name in (email, ghost, email):
        password_challenge_ct(api, name)
    assert len(_flow_rows(server, email)) == 2 and len(_flow_rows(server, ghost)) == 1
    maintenance.purge_expired(server.settings, now=time.time() + server.settings.flow_ttl_seconds + 7200)
    assert _flow_rows(server, email) == [] and _flow_rows(server, ghost) == []
    assert directory.get_user(server.storage, email) is not None
    assert password_grant(api, password_challenge_ct(api, email), PW).status == 200
    password_challenge_ct(api, email)
    listed = admin(server, "users", "list")
    assert listed.returncode == 0, listed.stderr
    assert email in listed.stdout and ghost not in listed.stdout and "None" not in listed.stdout


def test_A116_a_deleted_accounts_open_flows_are_closed(server, api, make_user):
    """An account deletion finds its sign-ins and resets in its own partition (no scan): each is ended and its
    token refused, while the same address can sign up again as a new account."""
    from shared.flows import account

    email, user = make_user()
    ct = password_challenge_ct(api, email)
    account.delete_user(server.storage, server.settings, directory.get_user(server.storage, email))
    r = password_grant(api, ct, PW)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert [f["state"] for f in _flow_rows(server, email)] == ["done"]


def test_A116_a_sign_in_started_before_the_change_finishes_in_the_flows_table(server, api, make_user):
    """A sign-in stored by the code before this layout (flows table, ``<partition>.<id>.<secret>`` token) still
    finishes after a deployment: its token says where its record is."""
    email, _ = make_user()
    r = password_grant(api, _legacy_password_step(server, email), PW)
    assert r.status == 200 and "access_token" in r.body, r.body


def _legacy_password_step(server, email: str) -> str:
    """A sign-in at its password step as the code before A116 stored it (flows table), and its token."""
    import secrets as secrets_

    from shared.flows import state

    flow_id, secret = secrets_.token_urlsafe(16), secrets_.token_urlsafe(32)
    entity = state._fresh("signin", DEV_CLIENT, flow_id, secret, time.time(), int(time.time()) + 600,
                          {"ident": directory.user_key(email), "user_exists": True, "username": email,
                           "challenge_types": ["password", "redirect"], "capabilities": CAPS.split(),
                           "has_password": True}, located=False)
    entity["state"] = "password_challenge"
    server.storage.table("flows").insert(entity)
    return f"{entity['PartitionKey']}.{flow_id}.{secret}"


def test_A116_a_start_token_from_before_the_change_stays_single_use(server, api, make_user):
    """A start token sealed by the code before this layout (``s1.``) still works for its 15 minutes, in the flows
    table where that code stored its record: one it used or burnt before the deployment (the record stored there
    with a secret nobody has) is refused after it, and an unused one goes on once (review finding: it had been
    rebuilt into the users table, where no record stopped it)."""
    import base64
    import secrets

    from shared.flows import state

    def old_start(email: str) -> tuple[str, dict]:
        """A start token as the code before sealed it: the same payload under the v1 associated data."""
        token = _start(api, email, "sign-in")
        raw = token[3:]
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        key = state._seal_key(server.settings.code_hash_key)
        plain = key.decrypt(blob[:12], blob[12:], state._SEAL_AAD)
        nonce = secrets.token_bytes(12)
        aad, _ = state._SEAL_LAYOUTS["s1"]
        old = "s1." + base64.urlsafe_b64encode(nonce + key.encrypt(nonce, plain, aad)).rstrip(b"=").decode()
        legacy, _ = state._unseal(server.settings, old)
        assert legacy["PartitionKey"] == state._partition(legacy["started"], legacy["RowKey"])   # the flows table
        return old, legacy

    email, _ = make_user()
    used, record = old_start(email)
    server.storage.table("flows").insert({**record, "secret_hash": state._secret_hash(secrets.token_urlsafe(32))})
    r = _first_step(api, used, "sign-in")
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    fresh, _ = old_start(email)
    c = _first_step(api, fresh, "sign-in")
    assert c.status == 200, c.body
    assert _first_step(api, fresh, "sign-in")["error"] == "invalid_grant"
    assert password_grant(api, c["continuation_token"], PW).status == 200


def test_A116_a_take_back_whose_answer_was_lost_is_not_applied_twice(server, api, make_user, require_mfa,
                                                                     monkeypatch):
    """The transaction that takes a right password's attempt back and moves the flow to its second factor
    commits, but its answer is lost (storage unreachable just then): the take-back is not redone on its own, so
    it never erases an earlier counted failure (review finding: three failures ended counted as two)."""
    from shared.storage import tables as storage_mod

    email, _ = make_user(methods=[sms_method(random_phone())])
    require_mfa(email)
    for _ in range(3):
        assert password_grant(api, password_challenge_ct(api, email), PW + "-wrong")["error_codes"] == [BAD_CREDENTIALS]
    real = storage_mod.Table.batch

    def commits_then_loses_the_answer(self, operations):
        etags = real(self, operations)
        if self.name.endswith("users"):
            raise storage_mod.StorageUnavailable("the answer was lost")
        return etags

    ct = password_challenge_ct(api, email)
    monkeypatch.setattr(storage_mod.Table, "batch", commits_then_loses_the_answer)
    r = password_grant(api, ct, PW)
    monkeypatch.setattr(storage_mod.Table, "batch", real)
    assert r.status == 503, r.body
    assert int(directory.get_user(server.storage, email).entity.get("failed_logins")) == 3


def test_A116_a_finished_sign_in_clears_and_records_in_its_last_write(server, api, make_user):
    """What a finished sign-in clears and records on the account (earlier failures, the last sign-in, the
    network it came from) rides on the write that ends the flow, in one transaction: no write of its own."""
    email, _ = make_user()
    for _ in range(2):
        assert password_grant(api, password_challenge_ct(api, email), PW + "-wrong")["error_codes"] == [BAD_CREDENTIALS]
    r = password_grant(api, password_challenge_ct(api, email), PW, headers={"X-Forwarded-For": "198.51.100.23"})
    assert r.status == 200 and "access_token" in r.body, r.body
    trace = r.headers["x-storage-trace"].split(",")
    assert not any(t.endswith("users.update") for t in trace[2:]), trace   # the attempt counted, then one batch
    u = directory.get_user(server.storage, email)
    assert int(u.entity.get("failed_logins") or 0) == 0 and time.time() - int(u.entity["last_sign_in"]) < 60


def test_A116_a_finished_sign_in_never_overwrites_a_concurrent_change_of_the_account(server, api, make_user,
                                                                                     monkeypatch):
    """The account changes between the sign-in's read and its last write (an admin, another device, guesses on
    another flow): the transaction fails on the account's row, the account is read again, and what the finished
    sign-in takes back, clears and records is computed on the row as it is now: the other change is kept (the
    other network stays known, the new name stays), and the account is never written from the old read."""
    from shared.extensions import events as extension_events

    email, _ = make_user()
    for _ in range(2):
        assert password_grant(api, password_challenge_ct(api, email), PW + "-wrong")["error_codes"] == [BAD_CREDENTIALS]
    real = extension_events.token_claims

    def edited_meanwhile(storage, settings, client_id, user, **kwargs):
        fresh = directory.get_user(storage, email)
        directory.update_user(storage, fresh, display_name="renamed meanwhile",
                              known_networks=json.dumps(["203.0.113.0/24"]))
        return real(storage, settings, client_id, user, **kwargs)

    monkeypatch.setattr(extension_events, "token_claims", edited_meanwhile)
    r = password_grant(api, password_challenge_ct(api, email), PW, headers={"X-Forwarded-For": "198.51.100.23"})
    assert r.status == 200 and "access_token" in r.body, r.body
    u = directory.get_user(server.storage, email)
    assert u.display_name == "renamed meanwhile" and int(u.entity["failed_logins"]) == 0
    networks = set(json.loads(u.entity["known_networks"]))
    assert "203.0.113.0/24" in networks and len(networks) == 2      # the other network kept, this one added


@pytest.mark.parametrize("what", ["disabled", "being deleted", "password reset"])
def test_A116_an_account_changed_during_the_finishing_step_gets_no_tokens(server, api, make_user, monkeypatch, what):
    """An account disabled, marked for deletion or whose password was reset between the finishing step's read
    and its write gets no tokens: the transaction fails on the account's row, the account is read again and the
    sign-in refused; the right password's counted attempt is still taken back (review finding: tokens were
    issued in all three cases, as before this layout)."""
    from shared.extensions import events as extension_events
    from shared.security import passwords

    email, _ = make_user()
    real = extension_events.token_claims

    def changed_meanwhile(storage, settings, client_id, user, **kwargs):
        fresh = directory.get_user(storage, email)
        change = {"disabled": {"disabled": True}, "being deleted": {"deleting_at": time.time()},
                  "password reset": {"password_hash": passwords.hash_password("someone else's new passphrase"),
                                     "rt_not_before": time.time() + 1}}[what]
        directory.update_user(storage, fresh, **change)
        return real(storage, settings, client_id, user, **kwargs)

    monkeypatch.setattr(extension_events, "token_claims", changed_meanwhile)
    r = password_grant(api, password_challenge_ct(api, email), PW)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert_no_tokens(r)
    assert int(directory.get_user(server.storage, email).entity.get("failed_logins") or 0) == 0


def test_A116_a_failed_record_after_the_flow_ended_does_not_fail_the_sign_in(server, api, make_user, monkeypatch):
    """A sign-in stored before this layout (flows table) ends with the flow's write, then records on the account
    once (best effort): storage failing for that record does not turn the finished sign-in into a 503 (review
    finding)."""
    from shared.storage import tables as storage_mod

    email, _ = make_user()
    token = _legacy_password_step(server, email)
    real = storage_mod.Table.update

    def records_fail(self, entity, etag=None, **kwargs):
        if entity.get("RowKey") == "user" and "last_sign_in" in entity:
            raise storage_mod.StorageUnavailable("down just then")
        return real(self, entity, etag, **kwargs)

    monkeypatch.setattr(storage_mod.Table, "update", records_fail)
    r = password_grant(api, token, PW)
    assert r.status == 200 and "access_token" in r.body, r.body


_CHANGED_ACCOUNT = {"disabled": lambda: {"disabled": True}, "being deleted": lambda: {"deleting_at": time.time()},
                    "password reset": lambda: {"rt_not_before": time.time() + 1}}


def _account_changes_during_the_step(monkeypatch, email: str, change) -> None:
    from shared.extensions import events as extension_events

    real, hits = extension_events.token_claims, []

    def changed(storage, settings, client_id, user, **kwargs):
        if not hits:
            hits.append(1)
            directory.update_user(storage, directory.get_user(storage, email), **change())
        return real(storage, settings, client_id, user, **kwargs)

    monkeypatch.setattr(extension_events, "token_claims", changed)


@pytest.mark.parametrize("what", list(_CHANGED_ACCOUNT))
def test_A116_a_finishing_step_that_records_nothing_still_checks_the_account(server, api, outbox, make_user,
                                                                             monkeypatch, what):
    """A sign-in that finishes with nothing to record on the account (a second email-code sign-in within the hour
    from a known network) still puts the account's row in its last transaction (If-Match, no property), so an
    account disabled, being deleted or reset meanwhile gets no tokens (review finding: the check was skipped)."""
    email, _ = make_user()
    first = email_first_factor(api, outbox, email)
    assert first.status == 200 and "access_token" in first.body, first.body
    _account_changes_during_the_step(monkeypatch, email, _CHANGED_ACCOUNT[what])
    r = email_first_factor(api, outbox, email)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert_no_tokens(r)


@pytest.mark.parametrize("what", list(_CHANGED_ACCOUNT))
def test_A116_a_flow_from_before_the_change_checks_the_account_before_it_ends(server, api, make_user, monkeypatch,
                                                                              what):
    """A sign-in stored before this layout (flows table) reads the account again before its last write: one
    disabled, being deleted or reset meanwhile gets no tokens, and the right password's attempt is taken back."""
    email, _ = make_user()
    token = _legacy_password_step(server, email)
    _account_changes_during_the_step(monkeypatch, email, _CHANGED_ACCOUNT[what])
    r = password_grant(api, token, PW)
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert_no_tokens(r)
    assert int(directory.get_user(server.storage, email).entity.get("failed_logins") or 0) == 0


def test_A116_a_step_that_gives_up_on_a_busy_account_still_takes_the_attempt_back(server, api, make_user,
                                                                                monkeypatch):
    """When the account's row keeps changing under the finishing transaction until the step gives up ("the flow
    is busy"), the right password's counted attempt is still taken back (review finding: it stayed counted, so
    a stream of wrong guesses could turn the owner's right password into a failure)."""
    from shared.storage import tables as storage_mod

    email, _ = make_user()
    ct = password_challenge_ct(api, email)

    def the_account_always_moved(self, operations):
        exc = storage_mod.Modified("the account changed")
        exc.index = 1
        raise exc

    monkeypatch.setattr(storage_mod.Table, "batch", the_account_always_moved)
    r = password_grant(api, ct, PW)
    monkeypatch.undo()
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert int(directory.get_user(server.storage, email).entity.get("failed_logins") or 0) == 0


@pytest.mark.parametrize("what", ["the flow", "the flow and the account"])
def test_A116_a_flow_row_gone_before_the_last_write_is_invalid_grant(server, api, outbox, make_user, monkeypatch,
                                                                     what):
    """The flow's row (and the account's) deleted between the step's read and its write, as an account deletion
    or the purge does: the answer is invalid_grant, never a 500 (review finding)."""
    from shared.extensions import events as extension_events

    email, _ = make_user()
    c = email_code_challenge(api, email)
    code = outbox.last_code(email)
    real = extension_events.token_claims

    def gone(storage, settings, client_id, user, **kwargs):
        pk = directory.user_key(email)
        for row in storage.table("users").query("PartitionKey eq @p", {"p": pk}):
            if row["RowKey"] != "user" or what == "the flow and the account":
                storage.table("users").delete(pk, row["RowKey"])
        return real(storage, settings, client_id, user, **kwargs)

    monkeypatch.setattr(extension_events, "token_claims", gone)
    r = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob=code,
                 scope=SCOPE, client_info="1")
    assert r.status == 400 and r["error"] == "invalid_grant", r.body
    assert_no_tokens(r)
