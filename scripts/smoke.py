#!/usr/bin/env python3
"""Smoke test of a running deployment: health, discovery, JWKS, then a full
sign-in with the second factor, signature check and one refresh.

    python scripts/smoke.py --base-url https://<app>.azurewebsites.net/api \\
        --client-id <registered client id> --username test@example.com --password-stdin

Codes are asked for on the terminal (they go to the user's real email or
phone). Against a local run, ``--outbox .local/outbox.jsonl`` reads them from
the local outbox instead. If the account has no second-factor method and a
policy requires one, pass ``--register-phone +4915112345678`` or
``--register-email other@example.com``. Exit status 0 means every check passed.
Standard library plus PyJWT (installed with the app's requirements).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

import jwt

CAPS = "mfa_required registration_required"
SCOPE = "openid profile offline_access"


class Smoke:
    def __init__(self, args):
        self.args = args
        self.base = args.base_url.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None

    def call(self, method: str, path: str, form: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        data = None
        headers = dict(headers or {})
        if form is not None:
            form = {"client_id": self.args.client_id, **{k: v for k, v in form.items() if v is not None}}
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(f"{self.base}/{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ctx) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, {"raw": body.decode("utf-8", "replace")[:200]}

    def code_for(self, target_label: str, since: float) -> str:
        if self.args.outbox:
            deadline = time.time() + 10
            while time.time() < deadline:
                with open(self.args.outbox, encoding="utf-8") as f:
                    entries = [json.loads(line) for line in f if line.strip()]
                fresh = [e for e in entries if e.get("code") and e.get("sent_at", "") >= time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.gmtime(since - 1))]
                if fresh:
                    return fresh[-1]["code"]
                time.sleep(0.2)
            raise SystemExit("no code appeared in the outbox")
        print(f"  code sent to {target_label}: ", end="", flush=True)
        return sys.stdin.readline().strip()


def step(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  - ' + detail if detail else ''}", flush=True)
    if not ok:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--client-id", default="00000000-0000-0000-0000-000000000001")
    p.add_argument("--username", help="a test account (required unless --readiness-only)")
    p.add_argument("--admin-key", default=os.environ.get("SMOKE_ADMIN_KEY"),
                   help="the Function App's admin (master) key: the readiness report /health/detail runs first "
                        "(default $SMOKE_ADMIN_KEY)")
    p.add_argument("--readiness-only", action="store_true",
                   help="stop after readiness, health, discovery and JWKS (no sign-in; the azd post-deploy hook)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--password", help="the password (prefer --password-stdin)")
    p.add_argument("--outbox", help="read codes from this local outbox file instead of prompting")
    p.add_argument("--register-phone")
    p.add_argument("--register-email")
    p.add_argument("--ca-file", help="extra CA bundle for https (test deployments)")
    args = p.parse_args(argv)
    s = Smoke(args)
    if args.admin_key or args.base_url.startswith(("http://127.0.0.1", "http://localhost")):
        # The readiness report first (python -m admin doctor, served to the admin key): what is wrong, and how to fix it.
        status, report = s.call("GET", "health/detail", headers={"x-functions-key": args.admin_key} if args.admin_key else {})
        for c in report.get("checks", []):
            print(f"      {c['status']:4}  {c['name']}: {c['detail']}" + (f"  (fix: {c['fix']})" if c.get("fix")
                                                                           and c["status"] in ("warn", "fail") else ""))
        step("readiness", status == 200, f"{status} {report.get('status', report.get('error', ''))}")
    else:
        print("      (no --admin-key: the readiness report /health/detail is skipped)")
    if not args.readiness_only:
        if not args.username:
            p.error("--username is required (or --readiness-only)")
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else args.password
        if not password:
            p.error("give the password with --password-stdin or --password")

    status, body = s.call("GET", "health")
    step("health", status == 200 and body.get("storage") == "reachable", f"{status} {body}")
    status, disco = s.call("GET", ".well-known/openid-configuration")
    step("discovery", status == 200 and disco.get("issuer") == s.base, f"issuer {disco.get('issuer')}")
    status, jwks = s.call("GET", "discovery/v2.0/keys")
    step("jwks", status == 200 and bool(jwks.get("keys")), f"{len(jwks.get('keys', []))} key(s)")
    if args.readiness_only:
        return 0

    status, r = s.call("POST", "oauth2/v2.0/initiate", {"username": args.username, "challenge_type": "password oob redirect",
                                                         "capabilities": CAPS})
    step("initiate", status == 200 and "continuation_token" in r, r.get("error", ""))
    status, r = s.call("POST", "oauth2/v2.0/challenge", {"continuation_token": r["continuation_token"],
                                                          "challenge_type": "password oob redirect"})
    step("challenge", status == 200 and r.get("challenge_type") == "password", r.get("challenge_type") or r.get("error", ""))
    status, t = s.call("POST", "oauth2/v2.0/token", {"continuation_token": r["continuation_token"], "grant_type": "password",
                                                      "password": password, "scope": SCOPE, "client_info": "1"})
    if status == 400 and t.get("suberror") == "mfa_required":
        step("password (second factor required)", True)
        status, m = s.call("POST", "oauth2/v2.0/introspect", {"continuation_token": t["continuation_token"]})
        step("introspect", status == 200 and bool(m.get("methods")), f"{len(m.get('methods', []))} method(s)")
        method = m["methods"][0]
        since = time.time()
        status, c = s.call("POST", "oauth2/v2.0/challenge", {"continuation_token": m["continuation_token"], "id": method["id"],
                                                              "challenge_type": "password oob redirect"})
        step(f"second-factor challenge ({method['challenge_channel']})", status == 200 and c.get("challenge_type") == "oob",
             c.get("challenge_target_label", c.get("error", "")))
        status, t = s.call("POST", "oauth2/v2.0/token", {"continuation_token": c["continuation_token"], "grant_type": "mfa_oob",
                                                          "oob": s.code_for(c["challenge_target_label"], since),
                                                          "scope": SCOPE, "client_info": "1"})
    elif status == 400 and t.get("suberror") == "registration_required":
        step("password (registration required)", True)
        target, channel = (args.register_phone, "sms") if args.register_phone else (args.register_email, "email")
        if not target:
            step("registration", False, "pass --register-phone or --register-email")
        since = time.time()
        status, c = s.call("POST", "register/v1.0/challenge", {"continuation_token": t["continuation_token"],
                                                                "challenge_type": "oob", "challenge_channel": channel,
                                                                "challenge_target": target})
        step("registration challenge", status == 200, c.get("challenge_type") or c.get("error", ""))
        if c.get("challenge_type") == "oob":
            status, c = s.call("POST", "register/v1.0/continue", {"continuation_token": c["continuation_token"],
                                                                   "grant_type": "oob", "oob": s.code_for(target, since)})
        else:
            status, c = s.call("POST", "register/v1.0/continue", {"continuation_token": c["continuation_token"],
                                                                   "grant_type": "continuation_token"})
        step("registration continue", status == 200, c.get("error", ""))
        status, t = s.call("POST", "oauth2/v2.0/token", {"continuation_token": c["continuation_token"],
                                                          "grant_type": "continuation_token", "scope": SCOPE, "client_info": "1"})
    step("tokens", status == 200 and all(t.get(k) for k in ("access_token", "id_token", "refresh_token", "client_info")),
         t.get("error_description", "").split("\r\n")[0] if status != 200 else "")

    key_set = jwt.PyJWKSet.from_dict(jwks)
    kid = jwt.get_unverified_header(t["id_token"])["kid"]
    key = next((k for k in key_set.keys if k.key_id == kid), None)
    claims = jwt.decode(t["id_token"], key.key if key else "", algorithms=["RS256"], audience=args.client_id,
                        issuer=disco["issuer"]) if key else {}
    step("id token signature and claims", bool(claims), f"amr={claims.get('amr')} acr={claims.get('acr')}")
    status, r2 = s.call("POST", "oauth2/v2.0/token", {"grant_type": "refresh_token", "refresh_token": t["refresh_token"],
                                                       "scope": SCOPE, "client_info": "1"})
    step("refresh", status == 200 and r2.get("refresh_token") not in (None, t["refresh_token"]), r2.get("error", ""))
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
