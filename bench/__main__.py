"""The benchmark: ``python -m bench`` (or ``make bench``).

Starts its own Azurite (in memory) and the app in a separate process
(``python -m devhost``), then measures, all in one run:

1. storage operations per API call and per complete flow (the app's own count,
   from the ``x-storage-ops`` header it sends in local mode);
2. latency p50/p95/p99 per endpoint under light load;
3. throughput of complete password + SMS second-factor sign-ins at
   concurrency 1, 4 and 16, with the error count;
4. the floor: the same number of bare Table operations issued directly with
   azure-data-tables plus one password verification, and the ratio;
5. cold start: importing ``function_app`` and serving the first request,
   next to importing ``azure.functions`` and ``azure.data.tables`` alone;
6. memory: the host's resident size after warm-up and after N more flows.

Prints a table and writes JSON (``bench/results/latest.json`` by default).
``--quick`` shortens everything for a smoke run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devhost.azurite import Azurite, free_port  # noqa: E402

MFA_CLIENT = "00000000-0000-0000-0000-000000000001"
PLAIN_CLIENT = "bench-no-second-factor"
PW = "a sturdy passphrase for load tests"
SCOPE = "openid profile offline_access"
CAPS = "mfa_required registration_required"


# ------------------------------------------------------------------ plumbing

class Outbox:
    """Tails the outbox file; latest code per recipient."""

    def __init__(self, path: Path):
        self.path = path
        self.codes: dict[str, tuple[int, str]] = {}
        self.cond = threading.Condition()
        self.count = 0
        self._stop = False
        threading.Thread(target=self._tail, daemon=True).start()

    def _tail(self):
        while not self.path.exists():
            time.sleep(0.05)
        with open(self.path, encoding="utf-8") as f:
            buf = ""
            while not self._stop:
                chunk = f.readline()
                if not chunk:
                    time.sleep(0.005)
                    continue
                buf += chunk
                if not buf.endswith("\n"):
                    continue
                entry, buf = json.loads(buf), ""
                if entry.get("code"):
                    with self.cond:
                        self.count += 1
                        self.codes[entry["to"]] = (self.count, entry["code"])
                        self.cond.notify_all()

    def wait_code(self, to: str, after: int, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = self.codes.get(to)
                if hit and hit[0] > after:
                    return hit[1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no code for {to}")
                self.cond.wait(left)

    def mark(self, to: str) -> int:
        with self.cond:
            return self.codes.get(to, (0, ""))[0]


class Client:
    """One keep-alive connection; records (endpoint, ms, storage ops) per call."""

    def __init__(self, port: int, record: list | None = None, client_ip: str | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.record = record
        # Traffic of many users comes from many addresses: the host trusts two
        # proxy hops in the benchmark, so this X-Forwarded-For entry is the client IP.
        self.headers = {"X-Forwarded-For": client_ip} if client_ip else {}

    def post(self, path: str, **form) -> tuple[int, dict]:
        # bytes, so http.client sends headers and body in one write (no Nagle/delayed-ACK stall)
        body = urlencode({k: v for k, v in form.items() if v is not None}).encode()
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", "/api/" + path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                             **self.headers})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            raise
        ms = (time.perf_counter() - t0) * 1000
        if self.record is not None:
            self.record.append((path, ms, int(resp.getheader("x-storage-ops") or 0)))
        return resp.status, json.loads(raw) if raw else {}

    def get(self, path: str) -> int:
        self.conn.request("GET", "/api/" + path)
        resp = self.conn.getresponse()
        resp.read()
        return resp.status


class FlowError(Exception):
    pass


def expect(cond: bool, what: str, body: dict) -> None:
    if not cond:
        raise FlowError(f"{what}: {json.dumps(body)[:200]}")


# ------------------------------------------------------------------ flows

def flow_password_sms(c: Client, outbox: Outbox, user: dict) -> None:
    s, r = c.post("oauth2/v2.0/initiate", client_id=MFA_CLIENT, username=user["email"],
                  challenge_type="password oob redirect", capabilities=CAPS)
    expect(s == 200, "initiate", r)
    s, r = c.post("oauth2/v2.0/challenge", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="password oob redirect")
    expect(s == 200, "challenge", r)
    s, r = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="password", password=PW, scope=SCOPE, client_info="1")
    expect(s == 400 and r.get("suberror") == "mfa_required", "token(password)", r)
    s, r = c.post("oauth2/v2.0/introspect", client_id=MFA_CLIENT, continuation_token=r["continuation_token"])
    expect(s == 200, "introspect", r)
    mark = outbox.mark(user["phone"])
    s, r = c.post("oauth2/v2.0/challenge", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  id=r["methods"][0]["id"], challenge_type="password oob redirect")
    expect(s == 200, "challenge(id)", r)
    code = outbox.wait_code(user["phone"], mark)
    s, r = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="mfa_oob", oob=code, scope=SCOPE, client_info="1")
    expect(s == 200, "token(mfa_oob)", r)


def flow_email_code(c: Client, outbox: Outbox, user: dict) -> None:
    s, r = c.post("oauth2/v2.0/initiate", client_id=PLAIN_CLIENT, username=user["email"], challenge_type="oob redirect")
    expect(s == 200, "initiate", r)
    mark = outbox.mark(user["email"])
    s, r = c.post("oauth2/v2.0/challenge", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="oob redirect")
    expect(s == 200, "challenge", r)
    code = outbox.wait_code(user["email"], mark)
    s, r = c.post("oauth2/v2.0/token", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="oob", oob=code, scope=SCOPE, client_info="1")
    expect(s == 200, "token(oob)", r)


def flow_password_plain(c: Client, outbox: Outbox, user: dict) -> None:
    s, r = c.post("oauth2/v2.0/initiate", client_id=PLAIN_CLIENT, username=user["email"], challenge_type="password redirect")
    expect(s == 200, "initiate", r)
    s, r = c.post("oauth2/v2.0/challenge", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="password redirect")
    s, r = c.post("oauth2/v2.0/token", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="password", password=PW, scope=SCOPE)
    expect(s == 200, "token(password)", r)


_signup_seq = iter(range(10 ** 9))


def flow_signup_register(c: Client, outbox: Outbox, user: dict) -> None:
    n = next(_signup_seq)
    email, phone = f"signup-{os.getpid()}-{n}@bench.example.com", f"+49152{(n * 7919 + 104729) % 10 ** 8:08d}"
    s, r = c.post("signup/v1.0/start", client_id=MFA_CLIENT, username=email, password=PW,
                  challenge_type="oob password redirect", capabilities=CAPS)
    expect(s == 200, "signup start", r)
    mark = outbox.mark(email)
    s, r = c.post("signup/v1.0/challenge", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="oob password redirect")
    expect(s == 200, "signup challenge", r)
    s, r = c.post("signup/v1.0/continue", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="oob", oob=outbox.wait_code(email, mark))
    expect(s == 200, "signup continue", r)
    s, r = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="continuation_token", username=email, scope=SCOPE, client_info="1")
    expect(s == 400 and r.get("suberror") == "registration_required", "token(continuation)", r)
    s, r = c.post("register/v1.0/introspect", client_id=MFA_CLIENT, continuation_token=r["continuation_token"])
    expect(s == 200, "register introspect", r)
    mark = outbox.mark(phone)
    s, r = c.post("register/v1.0/challenge", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="oob", challenge_channel="sms", challenge_target=phone)
    expect(s == 200, "register challenge", r)
    s, r = c.post("register/v1.0/continue", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="oob", oob=outbox.wait_code(phone, mark))
    expect(s == 200, "register continue", r)
    s, r = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="continuation_token", scope=SCOPE, client_info="1")
    expect(s == 200, "token(after registration)", r)
    s, r2 = c.post("oauth2/v2.0/token", client_id=MFA_CLIENT, grant_type="refresh_token", refresh_token=r["refresh_token"],
                   scope=SCOPE, client_info="1")
    expect(s == 200, "refresh", r2)
    user.setdefault("created", []).append(email)


def flow_reset(c: Client, outbox: Outbox, user: dict) -> None:
    user = user["reset_twin"]  # its own accounts: resets must not change the sign-in users' passwords
    s, r = c.post("resetpassword/v1.0/start", client_id=PLAIN_CLIENT, username=user["email"], challenge_type="oob redirect")
    expect(s == 200, "reset start", r)
    mark = outbox.mark(user["email"])
    s, r = c.post("resetpassword/v1.0/challenge", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  challenge_type="oob redirect")
    s, r = c.post("resetpassword/v1.0/continue", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="oob", oob=outbox.wait_code(user["email"], mark))
    expect(s == 200, "reset continue", r)
    user["reset_n"] = user.get("reset_n", 0) + 1
    s, r = c.post("resetpassword/v1.0/submit", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  new_password=f"{PW} number {user['reset_n']} again")
    expect(s == 200, "reset submit", r)
    s, r = c.post("resetpassword/v1.0/poll_completion", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"])
    expect(s == 200 and r.get("status") == "succeeded", "poll", r)
    s, r = c.post("oauth2/v2.0/token", client_id=PLAIN_CLIENT, continuation_token=r["continuation_token"],
                  grant_type="continuation_token", username=user["email"], scope=SCOPE, client_info="1")
    expect(s == 200, "token(after reset)", r)


FLOWS = {
    "password + SMS second factor": flow_password_sms,
    "email-code sign-in": flow_email_code,
    "sign-up + automatic sign-in + SMS registration": flow_signup_register,
    "password reset + automatic sign-in": flow_reset,
}


# ------------------------------------------------------------------ setup

def host_env(azurite: Azurite, outbox: Path) -> dict[str, str]:
    big = "100000"
    return {**os.environ, "AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "AUTH_OUTBOX_PATH": str(outbox), "AUTH_RESEND_INTERVAL_SECONDS": "0", "AUTH_LOCKOUT_THRESHOLD": "100",
            "AUTH_SMS_COOLDOWN_SECONDS": "0", "AUTH_EMAIL_COOLDOWN_SECONDS": "0",
            "AUTH_SMS_PER_DESTINATION_HOUR": big, "AUTH_SMS_PER_DESTINATION_DAY": big, "AUTH_SMS_PER_PREFIX_HOUR": big,
            "AUTH_SMS_GLOBAL_HOUR": big, "AUTH_EMAIL_PER_DESTINATION_HOUR": big, "AUTH_EMAIL_GLOBAL_MINUTE": big,
            "AUTH_EMAIL_GLOBAL_HOUR": big, "AUTH_SENDS_PER_IP_HOUR": big, "AUTH_SIGNUP_STARTS_PER_IP_HOUR": big, "AUTH_TRUSTED_PROXY_HOPS": "2",
            "PYTHONUNBUFFERED": "1"}


def start_host(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "devhost", "--port", str(port), "--settings", "/nonexistent"],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if Client(port).get("health") == 200:
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"host did not start; see {log}")


def seed(env: dict[str, str], users: int) -> list[dict]:
    os.environ.update({k: v for k, v in env.items() if k.startswith("AUTH_")})
    from shared.security import passwords, policy
    from shared.storage import directory
    from shared.settings import Settings
    from shared.storage.tables import Storage

    settings = Settings.from_env(env)
    storage = Storage(settings)
    storage.ensure_tables()
    directory.register_client(storage, PLAIN_CLIENT, "benchmark client without second factor")
    policy.save(storage, {"name": "bench: second factor", "assignments": {"clients": {"include": ["all"],
                                                                                          "exclude": [PLAIN_CLIENT]}},
                          "grant": {"require_second_factor": True, "methods": ["email", "sms"]}})
    h = passwords.hash_password(PW)
    out = []
    rng = __import__("random").Random(7)
    for i in range(users):
        # Numbers spread over many prefixes, like real users (sequential numbers
        # share one prefix counter, which real traffic does not; A14 limits it).
        email, phone = f"user{i}@bench.example.com", f"+49151{rng.randrange(10 ** 8):08d}"
        directory.create_user(storage, email, password_hash=h, methods=[
            {"id": "m1", "channel": "sms", "target": phone, "default": True, "created": 1}])
        twin = f"reset{i}@bench.example.com"
        directory.create_user(storage, twin, password_hash=h)
        out.append({"email": email, "phone": phone, "reset_twin": {"email": twin}})
    return out


def log_writes(host_log: Path) -> tuple[int, int]:
    """Sign-in log records the host wrote off the request path so far, and the round trips that took
    (its ``signinlog_written`` metric lines): they are in no response's x-storage-ops."""
    records = trips = 0
    for line in host_log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"metric": "signinlog_written"' in line:
            m = json.loads(line.partition(" INFO metric ")[2])
            records, trips = records + m["records"], trips + m["round_trips"]
    return records, trips


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p
    f = int(k)
    return values[f] + (values[min(f + 1, len(values) - 1)] - values[f]) * (k - f)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children[int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(p, [])
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ measurements

def run_flows(port: int, outbox: Outbox, flow, users: list[dict], concurrency: int, *, count: int | None = None,
              duration: float | None = None) -> dict:
    """Run flows on `concurrency` threads, each with its own users and connection."""
    record: list = []
    lock = threading.Lock()
    done, errors = [0], []
    stop_at = time.monotonic() + duration if duration else None
    remaining = [count] if count is not None else None
    shares = [users[i::concurrency] for i in range(concurrency)]

    def worker(mine: list[dict], n: int):
        ip = f"198.51.{n // 250}.{n % 250 + 1}"
        c = Client(port, [], ip)
        i = 0
        while True:
            if stop_at and time.monotonic() >= stop_at:
                break
            if remaining is not None:
                with lock:
                    if remaining[0] <= 0:
                        break
                    remaining[0] -= 1
            try:
                flow(c, outbox, mine[i % len(mine)])
                with lock:
                    done[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                c = Client(port, c.record, ip)
            i += 1
        with lock:
            record.extend(c.record)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(shares[i], i)) for i in range(concurrency)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.perf_counter() - t0
    return {"flows": done[0], "errors": len(errors), "error_samples": errors[:3], "seconds": elapsed,
            "per_second": done[0] / elapsed if elapsed else 0.0, "calls": record}


def storage_floor(azurite: Azurite, ops: int, samples: int = 30, *, app_transport: bool = False) -> dict:
    """The same number of bare Table operations (half reads, half If-Match
    updates) issued directly with azure-data-tables, plus one argon2 verification:
    with the SDK's own transport (as in every earlier pass), or with the app's
    (``app_transport``: shared/storage/transport.py)."""
    from azure.core import MatchConditions
    from azure.data.tables import TableServiceClient, UpdateMode

    from shared.security import passwords
    from shared.storage import transport

    options = {"transport": transport.make()} if app_transport else {}
    svc = TableServiceClient.from_connection_string(azurite.connection_string, **options)
    table = svc.create_table_if_not_exists("benchfloor")
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "n": 0})
    h = passwords.hash_password(PW)
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        etag = None
        for i in range(ops):
            if i % 2 == 0:
                e = table.get_entity("p", "r")
                etag = e.metadata["etag"]
            else:
                meta = table.update_entity({"PartitionKey": "p", "RowKey": "r", "n": i}, mode=UpdateMode.MERGE, etag=etag,
                                           match_condition=MatchConditions.IfNotModified)
                etag = meta["etag"]
        passwords.verify_password(h, PW)
        times.append((time.perf_counter() - t0) * 1000)
    return {"ops": ops, "median_ms": statistics.median(times)}


def cold_start(runs: int) -> dict:
    """Importing ``function_app`` next to importing ``azure.functions`` and ``azure.data.tables`` alone
    (whose bytecode pip compiled when it installed them), interleaved, from a copy of the app's Python
    sources in two forms: as a package without bytecode in a read-only place (every module compiled at
    import, as in a Flex Consumption package that ships none), and with the bytecode
    ``scripts/compile_bytecode.py`` adds before publishing (checked-hash: valid whatever the package's
    file times)."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("compile_bytecode", ROOT / "scripts" / "compile_bytecode.py")
    compiler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiler)

    def timed(code: str, cwd: Path) -> float:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                             check=True)
        return float(out.stdout.strip().splitlines()[-1])

    app = "import time; t=time.perf_counter(); import function_app; print(time.perf_counter()-t)"
    base = "import time; t=time.perf_counter(); import azure.functions, azure.data.tables; print(time.perf_counter()-t)"
    with tempfile.TemporaryDirectory() as tmp:
        sources, compiled = Path(tmp) / "sources", Path(tmp) / "compiled"
        for copy in (sources, compiled):
            copy.mkdir()
            for name in compiler.TARGETS:       # what function_app imports besides the installed packages
                if (ROOT / name).is_dir():
                    shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / name, copy)
        expect(compiler.compile_app(compiled), "bytecode compiled", {})
        a, c, b = [], [], []
        for _ in range(runs):  # interleaved
            a.append(timed(app, sources) * 1000)
            c.append(timed(app, compiled) * 1000)
            b.append(timed(base, ROOT) * 1000)
    return {"import_function_app_ms": statistics.median(a), "import_baseline_ms": statistics.median(b),
            "ratio": statistics.median(a) / statistics.median(b),
            "import_function_app_bytecode_ms": statistics.median(c),
            "ratio_bytecode": statistics.median(c) / statistics.median(b)}


def first_request(env: dict[str, str], runs: int, tmp: Path) -> tuple[float, float]:
    """Process start to the first /health answer, and to the first sign-in
    answer after it (its handler's modules load with that first request)."""
    health, signin = [], []
    for i in range(runs):
        port = free_port()
        t0 = time.perf_counter()
        proc = start_host(env, port, tmp / f"first{i}.log")
        health.append((time.perf_counter() - t0) * 1000)
        c = Client(port)
        s, r = c.post("oauth2/v2.0/initiate", client_id=PLAIN_CLIENT, username="first@bench.example.com",
                      challenge_type="password redirect")
        expect(s == 200, "first initiate", r)
        signin.append((time.perf_counter() - t0) * 1000)
        proc.terminate()
        proc.wait(10)
    return statistics.median(health), statistics.median(signin)


def soak(seconds: float, concurrency: int) -> dict:
    """A bounded mixed load (sign-up with registration and refresh, sign-in with
    SMS second factor) for `seconds`, then a consistency check: every account
    made during the soak exists once and can sign in."""
    tmp = Path(tempfile.mkdtemp(prefix="nativeauth-soak-"))
    with Azurite() as azurite:
        env = host_env(azurite, tmp / "outbox.jsonl")
        users = seed(env, 200)
        port = free_port()
        host = start_host(env, port, tmp / "host.log")
        outbox = Outbox(tmp / "outbox.jsonl")
        try:
            def mixed(c, ob, user):
                (flow_signup_register if user.setdefault("turn", 0) % 3 == 0 else flow_password_sms)(c, ob, user)
                user["turn"] += 1
            run = run_flows(port, outbox, mixed, users, concurrency, duration=seconds)
            created = [e for u in users for e in u.get("created", [])]
            from shared.storage import directory
            from shared.settings import Settings
            from shared.storage.tables import Storage

            storage = Storage(Settings.from_env(env))
            missing = [e for e in created if directory.get_user(storage, e) is None]
            c = Client(port)
            failed = []
            for e in created:
                try:
                    flow_password_plain(c, outbox, {"email": e})
                except Exception as exc:  # noqa: BLE001
                    failed.append(f"{e}: {exc}"[:120])
            rss = rss_kb(host.pid)
        finally:
            host.terminate()
            host.wait(10)
    out = {"seconds": round(run["seconds"], 1), "concurrency": concurrency, "flows": run["flows"], "errors": run["errors"],
           "error_samples": run["error_samples"], "flows_per_second": round(run["per_second"], 2),
           "accounts_created": len(created), "accounts_missing": len(missing), "sign_in_after_soak_failures": len(failed),
           "failure_samples": failed[:3], "host_rss_mib": round(rss / 1024, 1)}
    print(json.dumps(out, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["pumping"]:
        from bench import pumping

        sp = argparse.ArgumentParser(prog="python -m bench pumping")
        sp.add_argument("--seconds", type=float, default=60.0)
        pumping.run(sp.parse_args(argv[1:]).seconds)
        return 0
    if argv[:1] == ["extensions"]:
        from bench import extensions

        sp = argparse.ArgumentParser(prog="python -m bench extensions")
        sp.add_argument("--rounds", type=int, default=60)
        extensions.run(sp.parse_args(argv[1:]).rounds)
        return 0
    if argv[:1] == ["hardening"]:
        from bench import hardening

        argparse.ArgumentParser(prog="python -m bench hardening",
                                description="The hardening measurements (bench/results/hardening.json)").parse_args(argv[1:])
        hardening.run()
        return 0
    if argv[:1] == ["soak"]:
        sp = argparse.ArgumentParser(prog="python -m bench soak")
        sp.add_argument("--seconds", type=float, default=180.0)
        sp.add_argument("--concurrency", type=int, default=4)
        a = sp.parse_args(argv[1:])
        out = soak(a.seconds, a.concurrency)
        Path(ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "bench" / "results" / "soak.json").write_text(json.dumps(out, indent=2))
        ok = out["errors"] == 0 and out["accounts_missing"] == 0 and out["sign_in_after_soak_failures"] == 0
        print("soak passed" if ok else "soak FAILED")
        return 0 if ok else 1
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (smoke test of the benchmark)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per throughput level")
    p.add_argument("--memory-flows", type=int, default=10000, help="flows between the two memory readings")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.memory_flows = 3.0, 200
    tmp = Path(tempfile.mkdtemp(prefix="nativeauth-bench-"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with Azurite() as azurite:
        outbox_path = tmp / "outbox.jsonl"
        env = host_env(azurite, outbox_path)
        users = seed(env, 64 if args.quick else 400)
        port = free_port()
        host = start_host(env, port, tmp / "host.log")
        outbox = Outbox(outbox_path)
        try:
            print("warming up ...", flush=True)
            run_flows(port, outbox, flow_password_sms, users, 2, count=20)
            results["rss_after_warmup_kb"] = rss_kb(host.pid)

            # 1 + 2: storage operations and latency, light load (one flow at a time, then two)
            per_flow, calls = {}, []
            n = 5 if args.quick else 30
            for name, flow in FLOWS.items():
                run = run_flows(port, outbox, flow, users, 1, count=n)
                ops = sum(o for _, _, o in run["calls"]) / max(run["flows"], 1)
                ms = sum(m for _, m, _ in run["calls"]) / max(run["flows"], 1)
                per_flow[name] = {"flows": run["flows"], "errors": run["errors"], "storage_ops_per_flow": round(ops, 1),
                                  "calls_per_flow": round(len(run["calls"]) / max(run["flows"], 1), 1),
                                  "ms_per_flow": round(ms, 1), "error_samples": run["error_samples"]}
                calls += run["calls"]
            light = run_flows(port, outbox, flow_password_sms, users, 2, count=20 if args.quick else 150)
            calls += light["calls"]
            endpoints = defaultdict(lambda: {"ms": [], "ops": []})
            for path, ms, ops in calls:
                endpoints[path]["ms"].append(ms)
                endpoints[path]["ops"].append(ops)
            results["flows"] = per_flow
            results["endpoints"] = {path: {"calls": len(v["ms"]), "ops_mean": round(statistics.mean(v["ops"]), 2),
                                           "p50_ms": round(pct(v["ms"], .5), 1), "p95_ms": round(pct(v["ms"], .95), 1),
                                           "p99_ms": round(pct(v["ms"], .99), 1)} for path, v in sorted(endpoints.items())}
            results["ops_per_call_mean"] = round(sum(o for _, _, o in calls) / len(calls), 2)

            # 3: throughput
            results["throughput"] = {}
            written_before = log_writes(tmp / "host.log")
            for conc in (1, 4, 16):
                azurite_pid = azurite.proc.pid if azurite.proc else None
                cpu0 = (cpu_seconds(host.pid), cpu_seconds(azurite_pid) if azurite_pid else 0.0, time.process_time())
                run = run_flows(port, outbox, flow_password_sms, users, conc, duration=args.duration)
                cpu1 = (cpu_seconds(host.pid), cpu_seconds(azurite_pid) if azurite_pid else 0.0, time.process_time())
                n = max(run["flows"], 1)
                cpu_ms = {k: round((b - a) * 1000 / n, 1) for k, a, b in zip(("host", "azurite", "load_generator"), cpu0, cpu1)}
                by_path = defaultdict(list)
                for path, ms, _ in run["calls"]:
                    by_path[path].append(ms)
                results["throughput"][conc] = {"flows_per_second": round(run["per_second"], 2), "flows": run["flows"],
                                               "errors": run["errors"], "error_samples": run["error_samples"],
                                               "cpu_ms_per_flow": cpu_ms,
                                               "endpoints": {path: {"calls": len(v), "p50_ms": round(pct(v, .5), 1),
                                                                    "p95_ms": round(pct(v, .95), 1)}
                                                             for path, v in sorted(by_path.items())}}
                print(f"  concurrency {conc}: {run['per_second']:.1f} flows/s, {run['errors']} errors", flush=True)
            time.sleep(0.5)   # the host's sign-in log writer runs every 200 ms
            records, trips = (b - a for a, b in zip(written_before, log_writes(tmp / "host.log")))
            results["signinlog_off_request_path"] = {"records": records, "round_trips": trips,
                                                     "round_trips_per_sign_in": round(trips / max(records, 1), 3)}

            # 4: floor for the password + SMS flow
            name = "password + SMS second factor"
            floor = storage_floor(azurite, round(per_flow[name]["storage_ops_per_flow"]))
            same = storage_floor(azurite, round(per_flow[name]["storage_ops_per_flow"]), app_transport=True)
            results["floor"] = {**floor, "flow_ms": per_flow[name]["ms_per_flow"],
                                "ratio": round(per_flow[name]["ms_per_flow"] / floor["median_ms"], 2),
                                "median_ms_app_transport": same["median_ms"],
                                "ratio_app_transport": round(per_flow[name]["ms_per_flow"] / same["median_ms"], 2)}

            # 6: memory after many more flows (cheap password sign-ins keep this bounded in time)
            before = rss_kb(host.pid)
            mem = run_flows(port, outbox, flow_password_plain, users, 4, count=args.memory_flows)
            results["memory"] = {"rss_before_kb": before, "rss_after_kb": rss_kb(host.pid), "flows": mem["flows"],
                                 "errors": mem["errors"]}
        finally:
            host.terminate()
            host.wait(10)
        # 5: cold start
        results["cold_start"] = cold_start(3 if args.quick else 9)
        first_health, first_signin = first_request(env, 2 if args.quick else 5, tmp)
        results["cold_start"]["first_request_ms"] = round(first_health, 1)
        results["cold_start"]["first_signin_ms"] = round(first_signin, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    report(results)
    print(f"\nwrote {out}")
    return 0


def report(r: dict) -> None:
    print("\nStorage operations and time per complete flow (one at a time)")
    print(f"  {'flow':48} {'calls':>5} {'ops':>6} {'ms':>8} {'errors':>6}")
    for name, f in r["flows"].items():
        print(f"  {name:48} {f['calls_per_flow']:>5} {f['storage_ops_per_flow']:>6} {f['ms_per_flow']:>8} {f['errors']:>6}")
    print(f"\nMean storage operations per API call: {r['ops_per_call_mean']}")
    print("\nLatency per endpoint (light load)")
    print(f"  {'endpoint':36} {'calls':>6} {'ops':>5} {'p50':>7} {'p95':>7} {'p99':>7}")
    for path, e in r["endpoints"].items():
        print(f"  {path:36} {e['calls']:>6} {e['ops_mean']:>5} {e['p50_ms']:>7} {e['p95_ms']:>7} {e['p99_ms']:>7}")
    print("\nThroughput, password + SMS second factor (complete sign-ins per second)")
    for conc, t in r["throughput"].items():
        cpu = t.get("cpu_ms_per_flow") or {}
        print(f"  concurrency {conc:>2}: {t['flows_per_second']:>6} /s  ({t['flows']} flows, {t['errors']} errors); "
              f"CPU ms per sign-in: host {cpu.get('host')}, Azurite {cpu.get('azurite')}, "
              f"load generator {cpu.get('load_generator')}")
    w = r.get("signinlog_off_request_path")
    if w:
        print(f"  sign-in log written off the request path during these runs: {w['records']} records in "
              f"{w['round_trips']} round trips ({w['round_trips_per_sign_in']} per sign-in, in no call's count above)")
    print("\nLatency per endpoint under load, password + SMS sign-ins (p50 / p95 ms)")
    levels = [c for c in r["throughput"] if c in (1, 16, "1", "16")]
    print("  " + f"{'endpoint':36}" + "".join(f"{'concurrency ' + str(c):>22}" for c in levels))
    paths = sorted({p for c in levels for p in r["throughput"][c].get("endpoints", {})})
    for path in paths:
        cells = []
        for c in levels:
            e = r["throughput"][c].get("endpoints", {}).get(path)
            cells.append(f"{e['p50_ms']:>9} / {e['p95_ms']:<9}" if e else f"{'-':>22}")
        print(f"  {path:36}" + "".join(f"{x:>22}" for x in cells))
    f = r["floor"]
    print(f"\nFloor: {f['ops']} bare Table operations + 1 argon2 verification = {f['median_ms']:.1f} ms; "
          f"flow {f['flow_ms']} ms; ratio {f['ratio']} (with the app's own transport under the bare operations too: "
          f"{f['median_ms_app_transport']:.1f} ms, ratio {f['ratio_app_transport']})")
    c = r["cold_start"]
    print(f"\nCold start: import function_app {c['import_function_app_ms']:.0f} ms compiled at import, "
          f"{c['import_function_app_bytecode_ms']:.0f} ms with its bytecode, vs azure.functions + azure.data.tables "
          f"{c['import_baseline_ms']:.0f} ms (ratio {c['ratio']:.2f}; {c['ratio_bytecode']:.2f} with bytecode); "
          f"process start to first response "
          f"{c['first_request_ms']:.0f} ms (/health), {c['first_signin_ms']:.0f} ms (a first sign-in call after it)")
    m = r["memory"]
    print(f"\nMemory (host RSS): {m['rss_before_kb'] / 1024:.1f} MiB before, {m['rss_after_kb'] / 1024:.1f} MiB after "
          f"{m['flows']} more flows ({m['errors']} errors)")


if __name__ == "__main__":
    sys.exit(main())
