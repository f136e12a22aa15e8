"""``python -m bench hardening``: the cost figures behind SECURITY.md's
enumeration and denial-of-service rows (A51-A54), measured against a real
host process (``python -m devhost``) and Azurite, as the main benchmark does.

1. A51 over-long passwords: time of the ``/token`` password call with a
   300-character password, known account vs unknown name (medians, ms);
2. A52 wrong codes: storage operations of a wrong email-code ``/token`` call
   and of a wrong reset code, known vs unknown (the app's own count);
   and 40 parallel wrong passwords: the answers for a known account and an
   unknown name;
3. A53 the strength estimator: CPU time of the password policy check on a
   72-character password of zxcvbn's l33t characters (in this process), the
   latency of one sign-up start carrying it, and how much 8 such starts in
   parallel slow other users' calls (median initiate latency, quiet vs
   during the burst);
4. A54 argon2 memory: the host's peak resident size (VmHWM) before and after
   60 parallel unknown-name password attempts.

Prints a table and writes ``bench/results/hardening.json``.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from devhost.azurite import Azurite, free_port

from bench.__main__ import CAPS, MFA_CLIENT, ROOT, SCOPE, Client, host_env, seed, start_host

L33T = "4@8({[<3691!|70$5+%2"


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _password_ct(c: Client, email: str) -> str:
    _, r = c.post("oauth2/v2.0/initiate", client_id=_client(), username=email, challenge_type="password redirect",
                  capabilities=CAPS)
    _, r = c.post("oauth2/v2.0/challenge", client_id=_client(), continuation_token=r["continuation_token"],
                  challenge_type="password redirect")
    return r["continuation_token"]


def _client() -> str:
    return MFA_CLIENT


def long_passwords(port: int, known: str, samples: int) -> dict:
    c = Client(port)
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    for i in range(samples):
        for kind, email in (("known", known), ("unknown", f"ghost{i}-{random.randrange(10**9)}@bench.example.com")):
            ct = _password_ct(c, email)
            t0 = time.perf_counter()
            status, body = c.post("oauth2/v2.0/token", client_id=_client(), continuation_token=ct, grant_type="password",
                                  password="z" * 300, scope=SCOPE)
            times[kind].append((time.perf_counter() - t0) * 1000)
            assert status == 400 and body["error_codes"] == [50126], body
    return {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2), "max_ms": round(max(v), 2)}
            for k, v in times.items()}


def wrong_code_ops(port: int, known_passwordless: str, known_with_password: str) -> dict:
    record: list = []
    c = Client(port, record)
    out = {}
    for kind, email in (("known", known_passwordless), ("unknown", f"ghost-{random.randrange(10**9)}@bench.example.com")):
        _, r = c.post("oauth2/v2.0/initiate", client_id=_client(), username=email, challenge_type="oob redirect")
        _, r = c.post("oauth2/v2.0/challenge", client_id=_client(), continuation_token=r["continuation_token"],
                      challenge_type="oob redirect")
        c.post("oauth2/v2.0/token", client_id=_client(), continuation_token=r["continuation_token"], grant_type="oob",
               oob="31415926", scope=SCOPE)
        out[f"signin_{kind}"] = record[-1][2]
    for kind, email in (("known", known_with_password), ("unknown", f"ghost-{random.randrange(10**9)}@bench.example.com")):
        _, r = c.post("resetpassword/v1.0/start", client_id=_client(), username=email, challenge_type="oob redirect")
        _, r = c.post("resetpassword/v1.0/challenge", client_id=_client(), continuation_token=r["continuation_token"],
                      challenge_type="oob redirect")
        c.post("resetpassword/v1.0/continue", client_id=_client(), continuation_token=r["continuation_token"],
               grant_type="oob", oob="31415926")
        out[f"reset_{kind}"] = record[-1][2]
    return out


def parallel_wrong_passwords(port: int, known: str, n: int = 40) -> dict:
    out = {}
    for kind, email in (("known", known), ("unknown", f"ghost-{random.randrange(10**9)}@bench.example.com")):
        cts = [_password_ct(Client(port), email) for _ in range(n)]
        answers: list = [None] * n
        barrier = threading.Barrier(n)

        def go(i: int) -> None:
            c = Client(port)
            barrier.wait()
            status, body = c.post("oauth2/v2.0/token", client_id=_client(), continuation_token=cts[i],
                                  grant_type="password", password="wrong in parallel", scope=SCOPE)
            answers[i] = f"{status} {body.get('error_codes')}"

        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        out[kind] = {a: answers.count(a) for a in sorted(set(answers))}
    return out


def strength_estimator(port: int) -> dict:
    from shared.security import passwords

    rng = random.Random(1)
    worst = "".join(rng.choice(L33T) for _ in range(72))
    t0 = time.process_time()
    try:
        passwords.check_policy(worst, min_length=15)
    except passwords.PasswordRejected:
        pass
    check_cpu_ms = (time.process_time() - t0) * 1000
    import zxcvbn

    t0 = time.process_time()
    zxcvbn.zxcvbn(worst)
    uncapped_cpu_ms = (time.process_time() - t0) * 1000

    def start(c: Client, password: str | None) -> float:
        t0 = time.perf_counter()
        c.post("signup/v1.0/start", client_id=_client(), username=f"s{random.randrange(10**9)}@bench.example.com",
               challenge_type="oob password redirect", password=password)
        return (time.perf_counter() - t0) * 1000

    one = statistics.median(start(Client(port), worst) for _ in range(5))

    def initiate_ms(c: Client) -> float:
        t0 = time.perf_counter()
        c.post("oauth2/v2.0/initiate", client_id=_client(), username="someone@bench.example.com",
               challenge_type="password redirect")
        return (time.perf_counter() - t0) * 1000

    probe = Client(port)
    quiet = statistics.median(initiate_ms(probe) for _ in range(40))
    stop = threading.Event()

    def attacker() -> None:
        c = Client(port)
        while not stop.is_set():
            start(c, "".join(rng.choice(L33T) for _ in range(72)))

    attackers = [threading.Thread(target=attacker, daemon=True) for _ in range(8)]
    [t.start() for t in attackers]
    time.sleep(0.5)
    busy = statistics.median(initiate_ms(probe) for _ in range(40))
    stop.set()
    [t.join(30) for t in attackers]
    return {"policy_check_cpu_ms_72_l33t": round(check_cpu_ms, 1), "uncapped_zxcvbn_cpu_ms": round(uncapped_cpu_ms, 1),
            "signup_start_ms_with_it": round(one, 1), "initiate_median_ms_quiet": round(quiet, 2),
            "initiate_median_ms_during_8_parallel": round(busy, 2), "slowdown": round(busy / quiet, 1)}


def argon2_memory(port: int, pid: int, n: int = 60) -> dict:
    c = Client(port)                                   # warm up: imports, keys, the dummy hash
    for i in range(3):
        c.post("oauth2/v2.0/token", client_id=_client(), continuation_token=_password_ct(c, f"warm{i}@bench.example.com"),
               grant_type="password", password="warming up", scope=SCOPE)
    before = _status(pid, "VmHWM")
    cts = [_password_ct(Client(port), f"ghost-{i}-{random.randrange(10**9)}@bench.example.com") for i in range(n)]
    barrier = threading.Barrier(n)
    answers: list = [None] * n

    def go(i: int) -> None:
        c = Client(port)
        barrier.wait()
        answers[i] = c.post("oauth2/v2.0/token", client_id=_client(), continuation_token=cts[i], grant_type="password",
                            password="wrong in a burst", scope=SCOPE)[0]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return {"parallel": n, "peak_rss_before_kb": before, "peak_rss_after_kb": _status(pid, "VmHWM"),
            "answers": {str(s): answers.count(s) for s in sorted(set(answers))},
            "burst_seconds": round(time.perf_counter() - t0, 2)}


def run() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nativeauth-hardening-"))
    out: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with Azurite() as azurite:
        outbox_path = tmp / "outbox.jsonl"
        env = host_env(azurite, outbox_path)
        env["AUTH_LOCKOUT_THRESHOLD"] = "100"
        users = seed(env, 4)
        from shared.storage import directory
        from shared.settings import Settings
        from shared.storage.tables import Storage

        storage = Storage(Settings.from_env(env))
        passwordless = "passwordless@bench.example.com"
        directory.create_user(storage, passwordless)
        port = free_port()
        host = start_host(env, port, tmp / "host.log")
        try:
            out["argon2_memory"] = argon2_memory(port, host.pid)          # first: peak RSS of a fresh host
            out["long_passwords"] = long_passwords(port, users[0]["email"], 40)
            out["wrong_code_storage_ops"] = wrong_code_ops(port, passwordless, users[1]["email"])
            out["parallel_wrong_passwords"] = parallel_wrong_passwords(port, users[2]["email"])
            out["strength_estimator"] = strength_estimator(port)
        finally:
            host.terminate()
            host.wait(10)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "hardening.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":  # pragma: no cover
    run()
