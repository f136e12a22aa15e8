"""``python -m bench extensions``: the latency a token-issuance extension adds
to every token response, with the sample extension (samples/extensions) as a
real local HTTP server next to the host (both on loopback, as the main
benchmark: a real host process and Azurite).

Measures ``/token`` with ``grant_type=refresh_token`` (the cheapest token
response: no password hash, so the extension's share is visible) and the
password sign-in's last call, each without and then with the extension, one
request at a time. Writes ``bench/results/extensions.json``.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path

from devhost.azurite import Azurite, free_port

from bench.__main__ import PLAIN_CLIENT, PW, ROOT, Client, host_env, pct, seed, start_host

SCOPE = "api://native-auth/access_as_user openid profile offline_access"
AUDIENCE = "api://localhost/bench-extension"


def _sample():
    spec = importlib.util.spec_from_file_location("ext_sample_serve", ROOT / "samples" / "extensions" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sign_in(c: Client, email: str) -> tuple[float, dict]:
    _, i = c.post("oauth2/v2.0/initiate", client_id=PLAIN_CLIENT, username=email, challenge_type="password oob redirect")
    _, ch = c.post("oauth2/v2.0/challenge", client_id=PLAIN_CLIENT, continuation_token=i["continuation_token"],
                   challenge_type="password oob redirect")
    t0 = time.perf_counter()
    status, t = c.post("oauth2/v2.0/token", client_id=PLAIN_CLIENT, continuation_token=ch["continuation_token"],
                       grant_type="password", password=PW, scope=SCOPE)
    assert status == 200, t
    return (time.perf_counter() - t0) * 1000, t


def _measure(port: int, users: list[dict], rounds: int) -> dict:
    c = Client(port)
    token_ms, refresh_ms = [], []
    for n in range(rounds):
        ms, t = _sign_in(c, users[n % len(users)]["reset_twin"]["email"])
        token_ms.append(ms)
        rt = t["refresh_token"]
        for _ in range(4):
            t0 = time.perf_counter()
            status, r = c.post("oauth2/v2.0/token", client_id=PLAIN_CLIENT, grant_type="refresh_token",
                               refresh_token=rt, scope=SCOPE)
            refresh_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200, r
            rt = r["refresh_token"]
    return {"password_token_p50": round(pct(token_ms, 0.5), 1), "password_token_p95": round(pct(token_ms, 0.95), 1),
            "refresh_p50": round(pct(refresh_ms, 0.5), 1), "refresh_p95": round(pct(refresh_ms, 0.95), 1),
            "samples": len(token_ms) + len(refresh_ms), "roles_claim": None}


def run(rounds: int = 60) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nativeauth-bench-ext-"))
    with Azurite() as azurite:
        env = host_env(azurite, tmp / "outbox.jsonl")
        users = seed(env, 40)
        port = free_port()
        issuer = f"http://127.0.0.1:{port}/api"
        env = {**env, "AUTH_ISSUER": issuer}        # the extension finds the JWKS through the issuer
        host = start_host(env, port, tmp / "host.log")
        roles = tmp / "roles.json"
        roles.write_text(json.dumps({u["reset_twin"]["email"]: {"roles": ["reader", "writer"], "plan": "gold"}
                                     for u in users}))
        try:
            _measure(port, users, 5)                                   # warm up
            without = _measure(port, users, rounds)
            with _sample().running({"EXTENSION_ISSUER": issuer, "EXTENSION_AUDIENCE": AUDIENCE,
                                    "ROLES_FILE": str(roles), "EXTENSION_ALLOW_INSECURE_HTTP": "true"}) as base:
                from shared.extensions import config
                from shared.settings import Settings
                from shared.storage.tables import Storage

                settings = Settings.from_env({**env, "AUTH_ISSUER": issuer})
                config.save(Storage(settings), settings, {
                    "name": "bench-claims", "event": "tokenIssuanceStart", "url": f"{base}/token-issuance-start",
                    "resource": AUDIENCE, "claims": {"access_token": ["roles", "plan"]}})
                time.sleep(config.CACHE_SECONDS + 1)                   # every instance sees it
                _measure(port, users, 5)                               # warm up (JWKS fetch by the sample)
                with_ext = _measure(port, users, rounds)
                c = Client(port)
                _, t = _sign_in(c, users[0]["reset_twin"]["email"])
                import jwt

                with_ext["roles_claim"] = jwt.decode(t["access_token"], options={"verify_signature": False}).get("roles")
        finally:
            host.terminate()
            host.wait(10)
    out = {"without": without, "with_extension": with_ext,
           "added_ms": {k: round(with_ext[k] - without[k], 1) for k in
                        ("password_token_p50", "password_token_p95", "refresh_p50", "refresh_p95")}}
    Path(ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "extensions.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out
