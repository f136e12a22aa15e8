"""``python -m bench pumping``: simulated SMS pumping against the send limits,
interleaved with real users, on loopback (a real host process and Azurite, as
the main benchmark).

* The pump: accounts it made earlier (no method yet; a policy requires a
  second factor) sign in and register numbers of a few premium-looking prefixes
  ("+49151 7xxx"), from a different IPv4 address every time, and never enter
  a code. This is the JIT-registration door; numbers that accounts already have
  cannot be pumped without their first factor.
* Real users, at the same time: (a) existing users who sign in with their SMS
  second factor and verify it, (b) new users who register their own phone
  (numbers spread over prefixes) and verify it.

Production defaults for every limit (per IP, per prefix, per destination,
global budgets, pumping detection), with the loopback relief off. Reports the
SMS the pump got delivered before it was stopped, the time from its first
send to the first suspension, and real users' flows completed against
attempted. Writes ``bench/results/pumping.json``.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
from pathlib import Path

from devhost.azurite import Azurite, free_port

from bench.__main__ import CAPS, MFA_CLIENT, PW, ROOT, SCOPE, Client, Outbox, start_host

PUMP_PREFIXES = ("+491517001", "+491517002", "+491517003")


def _env(azurite: Azurite, outbox: Path) -> dict[str, str]:
    import os

    return {**os.environ, "AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "AUTH_OUTBOX_PATH": str(outbox), "AUTH_RESEND_INTERVAL_SECONDS": "0", "AUTH_TRUSTED_PROXY_HOPS": "2",
            "AUTH_LOCAL_DEVELOPER_RELIEF": "false", "AUTH_LOCKOUT_THRESHOLD": "100", "PYTHONUNBUFFERED": "1"}


def _seed(env: dict[str, str], pumps: int, existing: int, newcomers: int) -> dict[str, list[dict]]:
    import os

    os.environ.update({k: v for k, v in env.items() if k.startswith("AUTH_")})
    from shared.security import passwords, policy
    from shared.storage import directory
    from shared.settings import Settings
    from shared.storage.tables import Storage

    settings = Settings.from_env(env)
    storage = Storage(settings)
    storage.ensure_tables()
    policy.save(storage, {"name": "bench: second factor for everyone", "grant": {"require_second_factor": True,
                                                                                "methods": ["sms"]}})
    h = passwords.hash_password(PW)
    rng = random.Random(3)
    out: dict[str, list[dict]] = {"pumps": [], "existing": [], "newcomers": []}
    for i in range(pumps):
        email = f"pump{i}@bench.example.com"
        directory.create_user(storage, email, password_hash=h)
        out["pumps"].append({"email": email})
    for i in range(existing):
        email, phone = f"user{i}@bench.example.com", f"+49151{rng.randrange(10 ** 8):08d}"
        directory.create_user(storage, email, password_hash=h, methods=[
            {"id": "m1", "channel": "sms", "target": phone, "default": True, "created": 1}])
        out["existing"].append({"email": email, "phone": phone})
    for i in range(newcomers):
        email, phone = f"new{i}@bench.example.com", f"+49160{rng.randrange(10 ** 8):08d}"
        directory.create_user(storage, email, password_hash=h)
        out["newcomers"].append({"email": email, "phone": phone})
    return out


def _first_factor(c: Client, email: str) -> dict:
    _, r = c.post("oauth2/v2.0/initiate", client_id=MFA_CLIENT, username=email, challenge_type="password redirect",
                  capabilities=CAPS)
    _, r = c.post("oauth2/v2.0/challenge", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="password redirect")
    return c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="password", password=PW, scope=SCOPE)[1]


def run(seconds: float = 60.0) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nativeauth-pumping-"))
    results: dict = {"seconds": seconds, "pump": {"attempts": 0, "refused": {}}, "existing": {"attempted": 0, "completed": 0},
                     "newcomers": {"attempted": 0, "completed": 0}}
    with Azurite() as azurite:
        outbox_path = tmp / "outbox.jsonl"
        env = _env(azurite, outbox_path)
        people = _seed(env, pumps=400, existing=80, newcomers=80)
        from shared.security import limits
        from shared.settings import Settings
        from shared.storage.tables import Storage

        storage = Storage(Settings.from_env(env))
        port = free_port()
        host = start_host(env, port, tmp / "host.log")
        outbox = Outbox(outbox_path)
        stop_at = time.monotonic() + seconds
        started = time.time()
        first_pump_send: list[float] = []
        lock = threading.Lock()

        def pump() -> None:
            rng = random.Random()
            accounts = list(people["pumps"])
            while time.monotonic() < stop_at and accounts:
                acct = accounts.pop()
                c = Client(port, None, f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
                try:
                    t = _first_factor(c, acct["email"])
                    if t.get("suberror") != "registration_required":
                        continue
                    number = rng.choice(PUMP_PREFIXES) + f"{rng.randrange(10 ** 4):04d}"
                    status, r = c.post("register/v1.0/challenge", client_id=MFA_CLIENT,
                                       continuation_token=t["continuation_token"], challenge_type="oob",
                                       challenge_channel="sms", challenge_target=number)
                except (OSError, KeyError):
                    continue
                with lock:
                    results["pump"]["attempts"] += 1
                    if status == 200 and not first_pump_send:
                        first_pump_send.append(time.time())
                    if status != 200:
                        why = r.get("suberror") or r.get("error") or str(status)
                        results["pump"]["refused"][why] = results["pump"]["refused"].get(why, 0) + 1

        def real_user(kind: str) -> None:
            rng = random.Random()
            while time.monotonic() < stop_at:
                with lock:
                    if not people[kind]:
                        return
                    person = people[kind].pop()
                    results[kind]["attempted"] += 1
                c = Client(port, None, f"198.51.{rng.randrange(100)}.{rng.randrange(1, 255)}")
                try:
                    t = _first_factor(c, person["email"])
                    if kind == "existing":
                        _, i = c.post("oauth2/v2.0/introspect", client_id=MFA_CLIENT, continuation_token=t["continuation_token"])
                        mark = outbox.mark(person["phone"])
                        status, ch = c.post("oauth2/v2.0/challenge", client_id=MFA_CLIENT,
                                            continuation_token=i["continuation_token"], id="m1", challenge_type="oob redirect")
                        if status != 200:
                            continue
                        code = outbox.wait_code(person["phone"], mark)
                        status, done = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=ch["continuation_token"],
                                              grant_type="mfa_oob", oob=code, scope=SCOPE)
                    else:
                        mark = outbox.mark(person["phone"])
                        status, ch = c.post("register/v1.0/challenge", client_id=MFA_CLIENT,
                                            continuation_token=t["continuation_token"], challenge_type="oob",
                                            challenge_channel="sms", challenge_target=person["phone"])
                        if status != 200:
                            continue
                        code = outbox.wait_code(person["phone"], mark)
                        status, cont = c.post("register/v1.0/continue", client_id=MFA_CLIENT,
                                              continuation_token=ch["continuation_token"], grant_type="oob", oob=code)
                        status, done = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=cont["continuation_token"],
                                              grant_type="continuation_token", scope=SCOPE)
                    if status == 200 and done.get("access_token"):
                        with lock:
                            results[kind]["completed"] += 1
                except (OSError, KeyError, TimeoutError):
                    continue
                time.sleep(rng.uniform(0.2, 0.8))

        threads = [threading.Thread(target=pump) for _ in range(4)] + \
                  [threading.Thread(target=real_user, args=(k,)) for k in ("existing", "existing", "newcomers", "newcomers")]
        [t.start() for t in threads]
        suspended_at = None
        while any(t.is_alive() for t in threads):
            if suspended_at is None:
                active = limits.suspensions(storage, fresh=True)
                if active:
                    suspended_at = time.time()
                    results["suspensions"] = [{"what": s.get("label"), "reason": s.get("reason")} for s in active.values()]
            time.sleep(0.2)
        [t.join() for t in threads]
        host.terminate()
        host.wait(10)
        delivered = [json.loads(line) for line in outbox_path.read_text().splitlines() if line.strip()]
        pumped = [m for m in delivered if m["channel"] == "sms" and m["to"].startswith(PUMP_PREFIXES)]
        results["pump"]["sms_delivered"] = len(pumped)
        results["pump"]["seconds_to_first_suspension"] = (round(suspended_at - first_pump_send[0], 1)
                                                           if suspended_at and first_pump_send else None)
        results["elapsed_seconds"] = round(time.time() - started, 1)
        if "suspensions" not in results:
            results["suspensions"] = [{"what": s.get("label"), "reason": s.get("reason")}
                                      for s in limits.suspensions(storage, fresh=True).values()]
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "pumping.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results
