"""The sign-in log off the request path (issue "Performance"): a successful
sign-in's record rides on the write that ends its flow, is written to the log a
moment later by the instance's writer, and is never lost: an instance that dies
first leaves it on the flow row, where the purge finds it before deleting the
row. Real processes (a host killed with SIGKILL), real Azurite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from shared.storage import directory, maintenance, signinlog
from shared.storage import tables as storage_mod
from shared.settings import Settings

from conftest import DEV_CLIENT, Api, flow_rows, settings_env, storage_trace, unique_email
from devhost.azurite import free_port

ROOT = Path(__file__).resolve().parent.parent
PW = "correct horse battery staple"


def _sign_in(api: Api, email: str) -> dict:
    r = api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect")
    r = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
    t = api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password", password=PW,
                 scope="openid")
    assert t.status == 200 and t.body.get("access_token"), t.body
    return t


def _records(storage, oid: str) -> list[dict]:
    """The account's records of today and yesterday (UTC days: a test may run across midnight)."""
    now = time.time()
    return storage.table("signinlog").query("PartitionKey ge @a and PartitionKey le @b and user_oid eq @o",
                                            {"a": time.strftime("%Y%m%d", time.gmtime(now - 86400)),
                                             "b": time.strftime("%Y%m%d", time.gmtime(now)), "o": oid})


def _flows_with_record(storage, oid: str) -> list[dict]:
    return [f for name in ("flows", "users") for f in storage.table(name).query("state eq @s", {"s": "done"})
            if f.get("log_entry") and json.loads(f["log_entry"])["user_oid"] == oid]


def _flow_rows(storage, user) -> list[dict]:
    return flow_rows(storage, user.pk)


class _Host:
    """The app in a process of its own (python -m devhost), as func start would run it."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "devhost", "--port", str(self.port), "--settings",
                                      "/nonexistent"], cwd=ROOT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.api = Api(f"http://127.0.0.1:{self.port}/api", DEV_CLIENT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.api.get("health").status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"host did not start; see {log}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _signed_in_then_killed(env: dict[str, str], storage, tmp_path: Path, name: str):
    """A new account signs in on a host whose log writer waits a minute, then the host is killed (SIGKILL)."""
    email = unique_email(name)
    user = directory.create_user(storage, email, password=PW)
    host = _Host({**env, "AUTH_SIGNINLOG_WRITE_MS": "60000"}, tmp_path / "host.log")
    try:
        _sign_in(host.api, email)
    finally:
        host.kill()
    return user


def _log_table_gone(settings: Settings) -> None:
    """The sign-in log failing, for real: its table deleted."""
    TableServiceClient.from_connection_string(settings.storage_connection_string).delete_table(
        settings.table_prefix + "signinlog")


def _log_table_back(storage) -> None:
    for _ in range(60):   # Azurite may refuse to recreate a table for a moment after deleting it
        try:
            storage.ensure_tables()
            return
        except storage_mod.StorageError:
            time.sleep(0.5)
    raise AssertionError("the sign-in log table could not be created again")


@pytest.fixture
def own_tables(azurite, tmp_path):
    """Settings with tables of their own (the purge below deletes every expired flow of its tables)."""
    env = settings_env(azurite, tmp_path, AUTH_TABLE_PREFIX="log" + uuid.uuid4().hex[:10],
                       AUTH_ISSUER="http://127.0.0.1/api")
    settings = Settings.from_env(env)
    storage = storage_mod.Storage(settings)
    storage.ensure_tables()
    return env, settings, storage


def test_a_sign_in_writes_no_log_record_on_its_request_path_and_the_record_arrives(server, api, make_user):
    """The token call makes no sign-in log write of its own (x-storage-trace); the record is on the flow row the
    same write ended, and reaches the log within the writer's delay (200 ms by default), exactly once."""
    email, user = make_user()
    t = _sign_in(api, email)
    assert "signinlog" not in t.headers.get("x-storage-trace", ""), t.headers.get("x-storage-trace")
    rows = _flows_with_record(server.storage, user.oid)
    assert len(rows) == 1
    deadline = time.monotonic() + 5
    while not _records(server.storage, user.oid) and time.monotonic() < deadline:
        time.sleep(0.05)
    records = _records(server.storage, user.oid)
    assert [(r["result"], json.loads(r["factors"])) for r in records] == [("success", ["pwd"])], records
    on_flow = json.loads(rows[0]["log_entry"])
    assert (records[0]["RowKey"], records[0]["correlation_id"]) == (on_flow["RowKey"], on_flow["correlation_id"])


def test_a_record_survives_its_instance_dying_before_the_log_write(own_tables, tmp_path):
    """SIGKILL the host right after the sign-in, with its writer still waiting: the record is not in the log, it is
    on the flow row; the purge that deletes that flow writes it first, once; a second purge adds nothing."""
    env, settings, storage = own_tables
    user = _signed_in_then_killed(env, storage, tmp_path, "crash")
    assert _records(storage, user.oid) == []                      # the writer never ran: the instance died
    assert len(_flows_with_record(storage, user.oid)) == 1        # but the flow row holds the record
    later = time.time() + settings.flow_ttl_seconds + 7200
    counts = maintenance.purge_expired(now=later, storage=storage)
    assert counts["flows"] >= 1 and _flows_with_record(storage, user.oid) == []
    records = _records(storage, user.oid)
    assert [(r["result"], r["client_id"], json.loads(r["factors"])) for r in records] == [("success", DEV_CLIENT, ["pwd"])]
    assert records[0]["reason"] == signinlog.UNCONFIRMED   # an operator can tell it was not confirmed by its instance
    maintenance.purge_expired(now=later, storage=storage)
    assert len(_records(storage, user.oid)) == 1


def test_a_purge_that_cannot_write_the_log_keeps_the_flow_rows(own_tables, tmp_path):
    """The log table failing (here: gone) while the purge runs: the purge deletes no flow row that still holds a
    record (and goes on with the rest); once the table is back, the next purge writes the record, then deletes
    the row."""
    env, settings, storage = own_tables
    user = _signed_in_then_killed(env, storage, tmp_path, "nolog")
    _log_table_gone(settings)
    later = time.time() + settings.flow_ttl_seconds + 7200
    counts = maintenance.purge_expired(now=later, storage=storage)
    assert counts.get("flows_kept", 0) >= 1 and len(_flows_with_record(storage, user.oid)) == 1
    _log_table_back(storage)
    maintenance.purge_expired(now=later, storage=storage)
    assert _flows_with_record(storage, user.oid) == []
    assert [r["result"] for r in _records(storage, user.oid)] == ["success"]


def test_a_deleted_account_keeps_no_identifying_record_written_late_by_another_instance(server, tmp_path, azurite):
    """Instance A signs the user in and holds the record in memory (its writer waits 3 s); instance B deletes the
    account at once. When A's writer runs, the log holds only the pseudonymous record (the deletion wrote it from
    the flow row first): no record names the deleted account's object id or its address."""
    from shared.flows import account

    email = unique_email("gone")
    user = directory.create_user(server.storage, email, password=PW)
    env = settings_env(azurite, server.tmp, AUTH_ISSUER=server.settings.issuer, AUTH_SIGNINLOG_WRITE_MS="10000")
    host = _Host(env, tmp_path / "host-a.log")
    try:
        _sign_in(host.api, email)
        assert _records(server.storage, user.oid) == []      # A's writer waits 10 s: ample for a slow runner
        row = _flows_with_record(server.storage, user.oid)[0]
        account.delete_user(server.storage, server.settings, directory.get_user(server.storage, email), actor="admin")
        deadline = time.monotonic() + 30                     # until A's writer has run (its metric line)
        while "signinlog_written" not in (tmp_path / "host-a.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "signinlog_written" in (tmp_path / "host-a.log").read_text()
    finally:
        host.kill()
    assert _records(server.storage, user.oid) == []
    key = json.loads(row["log_entry"])["RowKey"]
    record = server.storage.table("signinlog").get(json.loads(row["log_entry"])["PartitionKey"], key)
    assert record is not None and record["result"] == "success"
    assert record["user_oid"] != user.oid and record["user"] == "" and record["ip"] != "127.0.0.1", record


def test_a_deletion_racing_a_sign_in_that_finishes_reads_the_flow_again(own_tables, tmp_path):
    """The deletion read the account's flow while the sign-in was still open; the sign-in's final write (with its
    record) lands before the deletion's write to that flow. The deletion's If-Match write fails, it reads the flow
    again and makes the record pseudonymous there and in the log: neither the purge nor a late writer can bring
    back the object id (found by an attack review: the failed write was ignored, and the purge later wrote the
    record under the real object id)."""
    from shared.flows import account

    env, settings, storage = own_tables
    email = unique_email("race")
    user = directory.create_user(storage, email, password=PW)
    host = _Host({**env, "AUTH_SIGNINLOG_WRITE_MS": "60000"}, tmp_path / "host.log")
    try:
        r = host.api.post("oauth2/v2.0/initiate", username=email, challenge_type="password redirect")
        r = host.api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"],
                          challenge_type="password redirect")
        [open_row] = _flow_rows(storage, user)   # what the deletion read
        t = host.api.post("oauth2/v2.0/token", continuation_token=r["continuation_token"], grant_type="password",
                          password=PW, scope="openid")
        assert t.status == 200, t.body
    finally:
        host.kill()
    alias = account._alias(settings, user.oid)
    account._close_flow(storage, storage.table("users"), open_row, user.oid, alias)
    [row] = _flow_rows(storage, user)
    on_row = json.loads(row["log_entry"])
    assert (row["state"], on_row["user_oid"], on_row["user"]) == ("done", alias, "")
    assert storage.table("signinlog").get(on_row["PartitionKey"], on_row["RowKey"])["user_oid"] == alias
    maintenance.purge_expired(now=time.time() + settings.flow_ttl_seconds + 7200, storage=storage)
    assert _records(storage, user.oid) == []


def test_an_unreadable_record_on_a_flow_row_does_not_stop_the_purge(own_tables, tmp_path):
    """A flow row whose record cannot be read or written (storage corruption, a hand edit: not JSON, a key Azure
    refuses, a value that is not a scalar) is skipped with a warning; the other rows' records are written and
    every expired row is purged (a review found one such row kept its whole page of rows, or stopped the purge)."""
    env, settings, storage = own_tables
    user = _signed_in_then_killed(env, storage, tmp_path, "broken")
    [row] = _flow_rows(storage, user)
    good = json.loads(row["log_entry"])
    for i, bad in enumerate(("{not json", json.dumps({**good, "RowKey": "x/y"}),          # a key Azure refuses
                             json.dumps({**good, "RowKey": good["RowKey"] + "n", "nested": {"a": 1}}))):
        storage.table("users").insert({"PartitionKey": row["PartitionKey"], "RowKey": f"broken-{i}", "state": "done",
                                       "expires_at": 0, "log_entry": bad})
    maintenance.purge_expired(now=time.time() + settings.flow_ttl_seconds + 7200, storage=storage)
    assert _flow_rows(storage, user) == []
    assert [r["result"] for r in _records(storage, user.oid)] == ["success"]


def test_a_deletion_that_fails_part_way_keeps_the_account_and_can_be_finished(own_tables, tmp_path):
    """The log unwritable while an account is deleted: the deletion fails before the account row goes and takes
    its mark back, so the account is as it was (no `account_deleted` record that would end its sessions) and
    running the deletion again at once finishes it, with no record naming the object id. Found by reviews: the
    account row was deleted first (a failure after it left identifying records nobody could clean), then a retry
    within a minute answered as done and deleted nothing."""
    from shared.flows import account

    env, settings, storage = own_tables
    user = _signed_in_then_killed(env, storage, tmp_path, "partway")
    _log_table_gone(settings)
    with pytest.raises(storage_mod.StorageError):
        account.delete_user(storage, settings, directory.get_user_by_key(storage, user.pk))
    left = directory.get_user_by_key(storage, user.pk)
    assert left is not None and left.oid == user.oid and not left.entity.get("deleting_at")
    _log_table_back(storage)
    alias = account._alias(settings, user.oid)
    assert [r for r in storage.table("signinlog").query("result eq @r", {"r": "account_deleted"})] == []
    account.delete_user(storage, settings, directory.get_user_by_key(storage, user.pk))
    assert directory.get_user_by_key(storage, user.pk) is None
    maintenance.purge_expired(now=time.time() + settings.flow_ttl_seconds + 7200, storage=storage)
    assert _records(storage, user.oid) == []
    assert [r["result"] for r in _records(storage, alias)] == ["success"]


def test_every_record_fits_on_its_flow_row():
    """A record with thousands of policy results, plain or full of quotes, still rides on the flow's final write:
    the last results are dropped and counted (reviews found a record too large to ride written after the flow
    ended, where a deletion in between could not see it, and then quotes doubling past the property's limit)."""
    for name in ("policy number {}", 'a "quoted" \\ name {} ' + '"' * 120):   # quotes double when stored
        class Decision:
            results = [{"name": name.format(i), "result": "notApplied", "report_only": False} for i in range(3000)]

        record = signinlog.entry({"kind": "signin", "client_id": "c"}, None, "success", "", ["pwd"], "none", Decision())
        storage_mod.check_entity({**record, "log_entry": json.dumps(record)})
        assert signinlog.fits(record) and len(json.dumps(record)) < 32_000
        kept = json.loads(record["policies"])
        assert kept[-1]["truncated"] == 3000 - (len(kept) - 1) and len(kept) > 20


def _flow_row(storage, pk: str, rk: str, *, expires_at: int, record: dict | None = None) -> None:
    storage.table("flows").insert({"PartitionKey": pk, "RowKey": rk, "state": "done" if record else "started",
                                   "expires_at": expires_at, **({"log_entry": json.dumps(record)} if record else {})})


def test_a_failing_log_does_not_stop_the_purge_of_rows_without_records(own_tables):
    """The log failing while more finished rows (with records) have expired than fit a page: the rows without a
    record are still purged, the others kept once each (a review found the kept rows filled every page)."""
    _, settings, storage = own_tables
    pk = "f" + time.strftime("%Y%m%d%H", time.gmtime(time.time() - 3 * 86400)) + "0"
    day = time.strftime("%Y%m%d", time.gmtime())
    for i in range(3):
        _flow_row(storage, pk, f"a{i}", expires_at=1, record={"PartitionKey": day, "RowKey": f"0000000000000-{i}",
                                                               "result": "success"})
    for i in range(6):
        _flow_row(storage, pk, f"b{i}", expires_at=1)
    _log_table_gone(settings)
    counts = maintenance.purge_expired(now=time.time(), storage=storage, batch=3)
    assert (counts["flows"], counts["flows_kept"]) == (6, 3), counts
    assert sorted(r["RowKey"] for r in storage.table("flows").query("PartitionKey eq @p", {"p": pk})) == ["a0", "a1", "a2"]
    _log_table_back(storage)


def test_a_flow_that_expired_moments_ago_waits_for_its_instance_to_write_the_record(own_tables):
    """A flow that finished just before it expired: its instance's writer is still to write the record, so the
    purge leaves it for two minutes rather than write it first and mark it unconfirmed (a review)."""
    _, settings, storage = own_tables
    now = int(time.time())
    pk = "f" + time.strftime("%Y%m%d%H", time.gmtime(now)) + "0"
    _flow_row(storage, pk, "just", expires_at=now - 30, record={"PartitionKey": time.strftime("%Y%m%d"),
                                                                "RowKey": "0000000000000-j", "result": "success"})
    _flow_row(storage, pk, "long", expires_at=now - 300)
    maintenance.purge_expired(now=now, storage=storage)
    assert [r["RowKey"] for r in storage.table("flows").query("PartitionKey eq @p", {"p": pk})] == ["just"]
    assert storage.table("signinlog").get(time.strftime("%Y%m%d"), "0000000000000-j") is None


def test_an_account_with_thousands_of_records_is_deleted_without_leaving_one(own_tables):
    """More sign-in records than one query returns (2,000; an active account reaches that in a month of GET /me):
    the deletion pages until none names the account (a review found 500 of 4,500 left), in transactions of 100."""
    from shared.flows import account

    _, settings, storage = own_tables
    user = directory.create_user(storage, unique_email("busy"), password=PW)
    day = time.strftime("%Y%m%d", time.gmtime())
    table = storage.table("signinlog")
    for start in range(0, 4300, 100):   # more than two queries of 2,000 (the old deletion made two passes)
        table.batch([("create", {"PartitionKey": day, "RowKey": f"{signinlog.MAX_TS - i:013d}-busy", "result": "account",
                                 "user_oid": user.oid, "user": "b***@example.com", "ip": "203.0.113.9",
                                 "expires_at": int(time.time()) + 86400}) for i in range(start, start + 100)])
    account.delete_user(storage, settings, user)
    assert _records(storage, user.oid) == []
    alias = account._alias(settings, user.oid)
    left = _records(storage, alias)
    assert len([r for r in left if r["result"] == "account"]) == 4300
    assert all(r["ip"] != "203.0.113.9" and r["user"] == "" for r in left)


def test_the_purge_deletes_a_partition_a_transaction_at_a_time(own_tables):
    """250 expired flows of one partition: three transactions of deletes, not 250 round trips; a row another purge
    deleted first (it is gone when the transaction runs) makes that transaction fall back to one by one, and every
    row still goes."""
    _, settings, storage = own_tables
    pk = "f" + time.strftime("%Y%m%d%H", time.gmtime(time.time() - 3 * 86400)) + "1"
    for start in range(0, 250, 100):
        storage.table("flows").batch([("create", {"PartitionKey": pk, "RowKey": f"r{i:03d}", "state": "started",
                                                  "expires_at": 1}) for i in range(start, min(start + 100, 250))])
    counts, trace = storage_trace(lambda: maintenance.purge_expired(now=time.time(), storage=storage))
    deletes = [op for op in trace if op.endswith("flows.submit_transaction") or op.endswith("flows.delete")]
    assert counts["flows"] == 250 and len(deletes) == 3, (counts, deletes)
    assert storage.table("flows").query("PartitionKey eq @p", {"p": pk}) == []
    rows = [{"PartitionKey": pk, "RowKey": f"s{i}"} for i in range(3)]
    for r in rows[1:]:
        storage.table("flows").insert({**r, "expires_at": 1})
    assert maintenance._delete_all(storage.table("flows"), rows) == 3   # s0 is already gone
    assert storage.table("flows").query("PartitionKey eq @p", {"p": pk}) == []


def test_tail_shows_the_last_24_hours_across_midnight(own_tables):
    """`python -m admin log tail --days 1` is the last 24 hours, newest first: a record from yesterday evening is
    in it just after midnight (the log is partitioned by UTC day; tail read only today's partition), one older
    than 24 hours is not."""
    _, _, storage = own_tables
    now = int(time.time())

    def record(at: int, name: str) -> None:
        storage.table("signinlog").insert({"PartitionKey": time.strftime("%Y%m%d", time.gmtime(at)),
                                           "RowKey": f"{signinlog.MAX_TS - at * 1000:013d}-{name}", "time": at,
                                           "result": name, "expires_at": now + 86400})

    record(now - 5, "today")
    record(now - 86400 + 600, "yesterday")         # 23 h 50 min ago: always in an earlier day's partition
    record(now - 86400 - 600, "too-old")
    record(now - 3 * 86400, "older")
    assert [r["result"] for r in signinlog.tail(storage, days=1)] == ["today", "yesterday"]
    assert [r["result"] for r in signinlog.tail(storage, days=1, limit=1)] == ["today"]
    assert [r["result"] for r in signinlog.tail(storage, days=4)] == ["today", "yesterday", "too-old", "older"]
