"""A44 / ASVS 16.2.5: after everything else in the run, no secret that any test
sent or received appears in any log record of the run (request lines, the
host's access log, the app's warnings and errors, tracebacks).

Named test_zz_* so it runs after the other modules of the same pytest run.
"""

from __future__ import annotations

import base64
import json
import re

import conftest
from shared.tokens import issuance as tokens


def _private_key_material(server) -> list[str]:
    ring = tokens.keyring(server.storage, server.settings)
    out = []
    for key in ring.keys():
        pem = key.private_pem.decode()
        body = "".join(line for line in pem.splitlines() if "-----" not in line)
        out += [body[i:i + 40] for i in range(0, len(body) - 40, 200)]  # samples of the key body
    return out


def test_secrets_were_collected(server, api, make_user, outbox):
    # Make sure this module alone also produces secrets and logs (so the check below is meaningful).
    email, _ = make_user(password=None)
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    c = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect")
    api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob", oob="00000000",
             scope="openid")
    api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="oob",
             oob=outbox.last_code(email), scope="openid")
    assert len(conftest.SEEN_SECRETS) >= 4
    assert any("request" in line for line in conftest.LOG_LINES), "the request log lines were not captured"


def test_no_secret_in_any_log_line(server):
    secrets = set(conftest.SEEN_SECRETS) | set(_private_key_material(server))
    secrets.add(base64.b64encode(server.settings.code_hash_key).decode())
    secrets.add(base64.b64encode(server.settings.signing_key_secret).decode())
    secrets.add(server.settings.code_hash_key.hex())
    leaked = _leaked(secrets, conftest.LOG_LINES)
    assert not leaked, f"{len(leaked)} secrets found in logs, e.g. {json.dumps(leaked[:3])[:300]}"


def test_the_check_finds_a_planted_secret():
    lines = ["nativeauth.request: request {\"x\": 1}", "host: code 12345678 sent to a@b.c",
             "x: refresh rAb.fam-ily_1.secret-part and the password \"correct horse battery\""]
    found = _leaked({"12345678", "rAb.fam-ily_1.secret-part", "correct horse battery", "1234567", "abc.def"}, lines)
    assert found == ["12345678", "correct horse battery", "rAb.fam-ily_1.secret-part"]


def _leaked(secrets, lines) -> list[str]:
    blob = "\n".join(lines)
    # Whole-token matches: a 6-digit code must not be "found" inside a UUID or a number. One pass collects
    # every token of the logs; a secret can only be there if each of its own tokens is (its boundaries are
    # token boundaries), and only those candidates are searched for exactly. (A regex per secret over the
    # whole log took minutes once the suite passed a few thousand secrets.)
    word = re.compile(r"[0-9A-Za-z_-]+")
    logged = set(word.findall(blob))
    candidates = [s for s in secrets if s and all(part in logged for part in word.findall(s))]
    return sorted(s for s in candidates
                  if re.search(r"(?<![0-9A-Za-z_-])" + re.escape(s) + r"(?![0-9A-Za-z_-])", blob))


def test_request_log_lines_are_structured_and_complete():
    lines = [l.split("request ", 1)[1] for l in conftest.LOG_LINES if l.startswith("nativeauth.request: request {")]
    assert lines
    entry = json.loads(lines[-1])
    assert {"function", "status", "outcome", "correlation_id", "duration_ms", "storage_ops"} <= set(entry)
