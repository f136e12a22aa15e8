"""Storage operations per flow never rise above the documented numbers
(bench/RESULTS.md §1, issue "Performance"): each Table operation is a network
round trip and a billed transaction in Azure.

The app counts its operations per request (the ``x-storage-ops`` header, and
``x-storage-trace`` naming each one, both in local mode only). These tests run
the benchmark's four flows one at a time against the real app on Azurite and
compare each call with its budget. A change that adds an operation must update
the budget here and the breakdown in bench/RESULTS.md, on purpose.
"""

from __future__ import annotations

import uuid

import pytest

from shared.security import limits
from shared.storage import directory

PW = "a sturdy passphrase for budget tests"
SCOPE = "openid profile offline_access"
CAPS = "mfa_required registration_required"

# (endpoint, budget) per call, in order. The flow total is their sum.
BUDGETS = {
    "password + SMS second factor": [
        # A sign-in's record lives in its address's partition of the users table (A116): "users.query" reads the
        # flow and the account in one round trip, and a write to both is one transaction ("users.batch").
        ("oauth2/v2.0/initiate", 1),        # users.get (the start token is sealed: no write, A115)
        ("oauth2/v2.0/challenge", 1),       # users.create (the start token's record, create-only: single use)
        ("oauth2/v2.0/token", 3),           # users.query (flow + account), users.update (attempt counted before
                                            # the compare, A21), users.batch (attempt taken back + the flow's write;
                                            # the IP-velocity row, limits.get, only while a policy reads risk: none here)
        ("oauth2/v2.0/introspect", 1),      # users.query (a read: the same token back)
        ("oauth2/v2.0/challenge", 4),       # users.query (flow + account), users.update (send reserved on the
                                            # flow), limits.query, limits.batch
        ("oauth2/v2.0/token", 4),           # users.query, users.update (the code consumed by the write that
                                            # ends the flow, A55, A112; it carries the sign-in log record, written
                                            # to the log off the request path), limits.batch (send credited on the
                                            # rows as the send left them; + a query on an instance that did not
                                            # count it, or when a row changed since), refresh
    ],
    "email-code sign-in": [
        ("oauth2/v2.0/initiate", 1),
        ("oauth2/v2.0/challenge", 3),       # users.create (send reserved), limits.query, limits.batch
        ("oauth2/v2.0/token", 4),           # as the SMS token
    ],
    "sign-up + automatic sign-in + SMS registration": [
        # A sign-up's record also lives in its address's partition of the users table (A116).
        ("signup/v1.0/start", 4),           # limits.get + write (starts per IP, A53), users.get, users.create (flow)
        ("signup/v1.0/challenge", 4),       # users.query (flow + account), users.update (send reserved),
                                            # limits.query, limits.batch
        ("signup/v1.0/continue", 3),        # users.query, users.batch (the account created with the flow's write
                                            # that consumes the code, A55: one transaction), credit (1)
        ("oauth2/v2.0/token", 2),           # users.query (flow + account), users.update (registration_required)
        ("register/v1.0/introspect", 1),
        ("register/v1.0/challenge", 4),     # users.query, users.update, limits.query, limits.batch
        ("register/v1.0/continue", 6),      # users.query, users.batch (the method saved with the flow's write
                                            # that consumes the code, A55: one transaction), credit (1), notice
                                            # counted (2), signinlog
        ("oauth2/v2.0/token", 3),           # users.query, users.batch (finish + log record, with what the finished
                                            # sign-in records on the account: last sign-in, network), refresh
        ("oauth2/v2.0/token", 3),           # refresh: refresh.get, users.get, refresh.update (the IP-velocity row
                                            # only while a policy reads risk)
    ],
    "password reset + automatic sign-in": [
        ("resetpassword/v1.0/start", 1),    # users.get (sealed start token, A115)
        ("resetpassword/v1.0/challenge", 3),   # users.create (send reserved), limits.query, limits.batch
        ("resetpassword/v1.0/continue", 3),  # users.query (flow + account, A116), users.update (consumed +
                                             # verified), credit (1)
        ("resetpassword/v1.0/submit", 3),   # users.query, users.update (counted, A53), users.batch (the password
                                            # saved with the flow's step)
        ("resetpassword/v1.0/poll_completion", 1),   # a read: the same token back
        ("oauth2/v2.0/token", 3),           # users.query, users.update (finish + log record), refresh
    ],
}


@pytest.fixture(scope="module")
def clients(server):
    from shared.security import policy

    mfa, plain = f"budget-mfa-{uuid.uuid4().hex[:8]}", f"budget-plain-{uuid.uuid4().hex[:8]}"
    directory.register_client(server.storage, mfa, "budget: second factor")
    directory.register_client(server.storage, plain, "budget: no second factor")
    name = f"budget second factor {uuid.uuid4().hex[:8]}"
    policy.save(server.storage, {"name": name, "assignments": {"clients": {"include": [mfa]}},
                                 "grant": {"require_second_factor": True, "methods": ["email", "sms"]}})
    policy.clear_cache()
    try:
        yield mfa, plain
    finally:
        policy.delete(server.storage, name)
        policy.clear_cache()


class Recorder:
    def __init__(self, api, client_id: str, ip: str):
        self.api, self.client_id, self.ip = api, client_id, ip
        self.calls: list[tuple[str, int, str]] = []

    def post(self, path: str, **form):
        r = self.api.post(path, headers={"X-Forwarded-For": self.ip}, client_id=self.client_id, **form)
        self.calls.append((path, int(r.headers["x-storage-ops"]), r.headers.get("x-storage-trace", "")))
        return r


def _phone() -> str:
    return f"+49151{uuid.uuid4().int % 10 ** 8:08d}"  # a valid German mobile number


def run_password_sms(rec: Recorder, outbox, email: str, phone: str) -> None:
    r = rec.post("oauth2/v2.0/initiate", username=email, challenge_type="password oob redirect", capabilities=CAPS)
    r = rec.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password oob redirect")
    r = rec.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                 scope=SCOPE, client_info="1")
    assert r.status == 400 and r["suberror"] == "mfa_required", r.body
    r = rec.post("oauth2/v2.0/introspect", continuation_token=r["continuation_token"])
    assert r.status == 200, r.body
    r = rec.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], id=r["methods"][0]["id"],
                 challenge_type="password oob redirect")
    assert r.status == 200, r.body
    r = rec.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="mfa_oob",
                 oob=outbox.last_code(phone), scope=SCOPE, client_info="1")
    assert r.status == 200, r.body


def run_email_code(rec: Recorder, outbox, email: str) -> None:
    r = rec.post("oauth2/v2.0/initiate", username=email, challenge_type="oob redirect")
    r = rec.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect")
    assert r.status == 200, r.body
    r = rec.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email), scope=SCOPE, client_info="1")
    assert r.status == 200, r.body


def run_signup_register(rec: Recorder, outbox, email: str, phone: str) -> None:
    r = rec.post("signup/v1.0/start", username=email, password=PW, challenge_type="oob password redirect",
                 capabilities=CAPS)
    assert r.status == 200, r.body
    r = rec.post("signup/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob password redirect")
    r = rec.post("signup/v1.0/continue", continuation_token=r["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    assert r.status == 200, r.body
    r = rec.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="continuation_token",
                 username=email, scope=SCOPE, client_info="1")
    assert r.status == 400 and r["suberror"] == "registration_required", r.body
    r = rec.post("register/v1.0/introspect", continuation_token=r["continuation_token"])
    r = rec.post("register/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob",
                 challenge_channel="sms", challenge_target=phone)
    assert r.status == 200, r.body
    r = rec.post("register/v1.0/continue", continuation_token=r["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(phone))
    assert r.status == 200, r.body
    r = rec.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="continuation_token",
                 scope=SCOPE, client_info="1")
    assert r.status == 200, r.body
    r = rec.post("oauth2/v2.0/token", grant_type="refresh_token", refresh_token=r["refresh_token"], scope=SCOPE,
                 client_info="1")
    assert r.status == 200, r.body


def run_reset(rec: Recorder, outbox, email: str) -> None:
    r = rec.post("resetpassword/v1.0/start", username=email, challenge_type="oob redirect")
    r = rec.post("resetpassword/v1.0/challenge", continuation_token=r["continuation_token"], challenge_type="oob redirect")
    r = rec.post("resetpassword/v1.0/continue", continuation_token=r["continuation_token"], grant_type="oob",
                 oob=outbox.last_code(email))
    assert r.status == 200, r.body
    r = rec.post("resetpassword/v1.0/submit", continuation_token=r["continuation_token"],
                 new_password=f"{PW} and a new one {uuid.uuid4().hex[:6]}")
    assert r.status == 200, r.body
    r = rec.post("resetpassword/v1.0/poll_completion", continuation_token=r["continuation_token"])
    assert r.status == 200 and r["status"] == "succeeded", r.body
    r = rec.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="continuation_token",
                 username=email, scope=SCOPE, client_info="1")
    assert r.status == 200, r.body


def _run(name: str, server, clients) -> Recorder:
    """Run the flow twice from one address and return the second run: the first
    warms the caches (policies, clients, extensions, suspensions: each read once
    per 10 s per instance) and, for a returning user, records their network (one
    more write the first time, not in the budget)."""
    mfa, plain = clients
    # The budget is that of an instance whose recent credit guesses were right (limits.credit): tests earlier in
    # this process change counter rows behind its back on purpose, which would make it read first for a while.
    limits._seen.clear()
    ip = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    email, phone = f"budget-{uuid.uuid4().hex[:10]}@example.com", _phone()
    if name == "password + SMS second factor":
        directory.create_user(server.storage, email, password=PW, methods=[
            {"id": "m1", "channel": "sms", "target": phone, "default": True, "created": 1}])
    elif name in ("email-code sign-in", "password reset + automatic sign-in"):
        directory.create_user(server.storage, email, password=PW)
    rec = None
    for _ in range(2):
        rec = Recorder(server.api, mfa if name.startswith(("password +", "sign-up")) else plain, ip)
        if name == "password + SMS second factor":
            run_password_sms(rec, server.outbox, email, phone)
        elif name == "email-code sign-in":
            run_email_code(rec, server.outbox, email)
        elif name == "sign-up + automatic sign-in + SMS registration":
            email, phone = f"budget-{uuid.uuid4().hex[:10]}@example.com", _phone()   # a new account each time
            run_signup_register(rec, server.outbox, email, phone)
        else:
            run_reset(rec, server.outbox, email)
    return rec


@pytest.mark.parametrize("name", list(BUDGETS))
def test_storage_operations_per_flow_stay_within_the_documented_budget(name, server, clients):
    budget = BUDGETS[name]
    # Per-instance caches (policies, clients, extension configuration: 10 s; suspensions: 30 s) are read again
    # when they expire, and a slow machine can cross that moment inside the measured run: a call over its
    # budget is measured again (up to three runs, the least of each call counts); a real regression stays over.
    rec = _run(name, server, clients)
    for _ in range(2):
        if all(used <= allowed for (_, used, _), (_, allowed) in zip(rec.calls, budget)):
            break
        again = _run(name, server, clients)
        rec.calls = [min(a, b, key=lambda c: c[1]) for a, b in zip(rec.calls, again.calls)]
    assert [p for p, _, _ in rec.calls] == [p for p, _ in budget]
    over = [(path, used, allowed, trace) for (path, used, trace), (_, allowed) in zip(rec.calls, budget) if used > allowed]
    total = sum(u for _, u, _ in rec.calls)
    print(f"{name}: {total} operations ({', '.join(str(u) for _, u, _ in rec.calls)})")
    for path, used, trace in rec.calls:
        print(f"  {path:40} {used:2}  {trace}")
    assert not over, f"{name}: over budget (path, used, budget, trace): {over}"
    assert total <= sum(b for _, b in budget)
