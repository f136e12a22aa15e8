"""Logging (runs after the other attack modules): catalogue row A44.

Shared fixtures and helpers: tests/attack_kit.py (see its docstring for the
conventions). SECURITY.md §7 maps every row to its tests.
"""

from __future__ import annotations

from attack_kit import *  # noqa: F401,F403 - the kit's fixtures and helpers
from attack_kit import _QUIET  # noqa: F401


_WORD = re.compile(r"[A-Za-z0-9_-]+")


def find_leaks(secrets: set[str], texts: list[str]) -> list[str]:
    """Secrets that occur in the texts. Token-like secrets (codes, the secret
    part of continuation and refresh tokens, JWT signatures) must occur as a
    whole word (so a 6-digit code does not 'occur' inside a longer number);
    anything else (passwords) as a substring."""
    words: set[str] = set()
    for text in texts:
        words.update(_WORD.findall(text))
    blob = None
    leaked = []
    for secret in secrets:
        if "." in secret and _WORD.fullmatch(secret.rsplit(".", 1)[1] or "-") and len(secret.rsplit(".", 1)[1]) >= 20:
            probe = secret.rsplit(".", 1)[1]      # a token: its secret part (or signature) gives it away
        else:
            probe = secret
        if _WORD.fullmatch(probe):
            if probe in words:
                leaked.append(probe)
        else:
            blob = blob if blob is not None else "\n".join(texts)
            if probe in blob:
                leaked.append(probe)
    return leaked


def test_A44_no_secrets_in_logs(server, api, outbox, make_user, require_mfa, caplog):
    """Runs last in this module. A tour of every flow under caplog (DEBUG on the
    root logger and on "nativeauth"), then: no code, password, continuation,
    refresh, access or ID token used anywhere in this module appears in any
    log record of the module; and outcomes reach the sign-in log with their
    factor types (without secrets)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="nativeauth")
    for name in _QUIET:
        caplog.set_level(logging.DEBUG, logger=name)
    phone = random_phone()
    email, user = make_user(password=PW, methods=[sms_method(phone)])
    require_mfa(email)
    password_first_factor(api, email, "a wrong password, logged?")
    t = password_first_factor(api, email)
    c = mfa_challenge(api, t["continuation_token"])
    api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
             oob=wrong(outbox.last_code(phone)), scope=SCOPE)
    done = api.post("oauth2/v2.0/token", continuation_token=c["continuation_token"], grant_type="mfa_oob",
                    oob=outbox.last_code(phone), scope=SCOPE)
    assert done.status == 200
    rotated = refresh(api, done["refresh_token"])
    refresh(api, done["refresh_token"])                    # a reuse within the grace
    sensitive(api, rotated["access_token"])
    passwordless, _ = make_user(password=None)
    e = email_code_challenge(api, passwordless)
    api.post("oauth2/v2.0/token", continuation_token=e["continuation_token"], grant_type="oob",
             oob=outbox.last_code(passwordless), scope=SCOPE)
    newcomer = unique_email("logs")
    s = api.post("signup/v1.0/start", username=newcomer, challenge_type="oob password redirect", password=NEW_PW)
    sc = api.post("signup/v1.0/challenge", continuation_token=s["continuation_token"], challenge_type="oob password redirect")
    api.post("signup/v1.0/continue", continuation_token=sc["continuation_token"], grant_type="oob",
             oob=outbox.last_code(newcomer))
    reset_to_token(api, outbox, make_user()[0])
    api.post("oauth2/v2.0/token", continuation_token="f2026010100a.AAAAAAAAAAAAAAAAAAAAAA." + "B" * 43,
             grant_type="continuation_token", scope=SCOPE)

    records = [f"{r.name}: {r.getMessage()}" + (("\n" + logging.Formatter().formatException(r.exc_info)) if r.exc_info else "")
               for r in caplog.records]
    assert any(r.name.startswith("nativeauth") for r in caplog.records), "no app log records were captured"
    secrets = {s for s in SECRETS if s}
    assert len(secrets) > 25, "the attack modules should have remembered their secrets"
    leaked = find_leaks(secrets, LOG_TEXT + records)
    assert not leaked, f"{len(leaked)} secret(s) found in log records, e.g. {leaked[:2]}"
    # The sign-in log: successes and failures with their factor types, no secrets.
    entries = [x for x in signinlog.tail(server.storage, limit=500) if x["user_oid"] == user.oid]
    results = {(x["result"], x["factors"]) for x in entries}
    assert ("success", json.dumps(["pwd", "sms", "mfa"])) in results
    assert any(r == "failure" for r, _ in results)
    dump = json.dumps(entries, default=str)
    assert not [s for s in secrets if s in dump] and email not in dump
