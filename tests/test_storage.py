"""The storage layer against a real Azurite: ETag races, insert races, Azure's
limits enforced locally, operation counting, outages."""

from __future__ import annotations

import threading
import uuid

import pytest

from shared.protocol import http as protocol
from shared.storage import tables as storage
from shared.settings import Settings


@pytest.fixture
def table(server):
    return server.storage.table("limits")


def key() -> str:
    return "test-" + uuid.uuid4().hex


def test_insert_is_insert_if_absent(table):
    pk = key()
    etag = table.insert({"PartitionKey": pk, "RowKey": "r", "n": 1})
    assert etag
    with pytest.raises(storage.Conflict):
        table.insert({"PartitionKey": pk, "RowKey": "r", "n": 2})
    assert table.get(pk, "r")["n"] == 1


def test_update_with_stale_etag_is_modified(table):
    pk = key()
    table.insert({"PartitionKey": pk, "RowKey": "r", "n": 1})
    first = table.get(pk, "r")
    table.update({**first, "n": 2})
    with pytest.raises(storage.Modified):
        table.update({**first, "n": 3})  # still carries the old _etag
    assert table.get(pk, "r")["n"] == 2


def test_update_needs_an_etag(table):
    with pytest.raises(storage.StorageError):
        table.update({"PartitionKey": key(), "RowKey": "r", "n": 1})


def test_concurrent_inserts_exactly_one_wins(table):
    pk = key()
    results: list[str] = []
    barrier = threading.Barrier(10)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            table.insert({"PartitionKey": pk, "RowKey": "lock", "owner": i})
            results.append("won")
        except storage.Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(10)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results.count("won") == 1 and results.count("conflict") == 9


def test_concurrent_compare_and_swap_loses_no_increment(table):
    pk = key()
    table.insert({"PartitionKey": pk, "RowKey": "c", "n": 0})
    races = []

    def increment() -> None:
        for _ in range(50):
            e = table.get(pk, "c")
            try:
                table.update({**e, "n": e["n"] + 1})
                return
            except storage.Modified:
                races.append(1)
        raise AssertionError("too many retries")

    threads = [threading.Thread(target=increment) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert table.get(pk, "c")["n"] == 8
    assert races, "8 concurrent writers should have produced at least one 412"


def test_delete_with_etag(table):
    pk = key()
    table.insert({"PartitionKey": pk, "RowKey": "r"})
    e = table.get(pk, "r")
    table.update({**e, "x": 1})
    with pytest.raises(storage.Modified):
        table.delete(pk, "r", etag=e["_etag"])
    table.delete(pk, "r", etag=table.get(pk, "r")["_etag"])
    assert table.get(pk, "r") is None
    table.delete(pk, "r")  # deleting a missing entity is silent (the SDK swallows 404)


@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a#b", "a?b", "a\x01b", "a\x7fb", "a\x9fb", "x" * 1025, ""])
def test_forbidden_keys_are_refused_before_azure_would(table, bad):
    with pytest.raises(storage.LimitExceeded):
        table.insert({"PartitionKey": bad, "RowKey": "r"})
    with pytest.raises(storage.LimitExceeded):
        table.get("ok", bad)


def test_more_than_252_properties_refused(table):
    entity = {"PartitionKey": key(), "RowKey": "r", **{f"p{i}": i for i in range(253)}}
    with pytest.raises(storage.LimitExceeded):
        table.insert(entity)
    entity.pop("p252")
    table.insert(entity)  # 252 is fine


def test_filter_with_more_than_15_comparisons_refused(table):
    flt = " or ".join(f"RowKey eq @r{i}" for i in range(16))
    with pytest.raises(storage.LimitExceeded):
        table.query(flt, {f"r{i}": str(i) for i in range(16)})
    flt15 = " or ".join(f"RowKey eq @r{i}" for i in range(15))
    assert table.query(flt15, {f"r{i}": str(i) for i in range(15)}) == []


def test_query_values_are_parameters_not_text(table):
    pk = key()
    table.insert({"PartitionKey": pk, "RowKey": "r", "email": "a'or''eq'@example.com"})
    found = table.query("PartitionKey eq @pk and email eq @e", {"pk": pk, "e": "a'or''eq'@example.com"})
    assert len(found) == 1
    assert table.query("PartitionKey eq @pk and email eq @e", {"pk": pk, "e": "' or ''eq''"}) == []


def test_batch_limits(table):
    pk = key()
    with pytest.raises(storage.LimitExceeded):
        table.batch([("create", {"PartitionKey": pk, "RowKey": str(i)}) for i in range(101)])
    with pytest.raises(storage.LimitExceeded):
        table.batch([("create", {"PartitionKey": pk, "RowKey": "1"}), ("create", {"PartitionKey": key(), "RowKey": "2"})])
    table.batch([("create", {"PartitionKey": pk, "RowKey": str(i)}) for i in range(100)])
    assert len(table.query("PartitionKey eq @pk", {"pk": pk})) == 100


def test_operations_are_counted_per_request_context(table):
    ctx = protocol.Context("r", "c", None, None)
    token = protocol.enter(ctx)
    try:
        pk = key()
        table.insert({"PartitionKey": pk, "RowKey": "r"})
        table.get(pk, "r")
        table.get(pk, "missing")
    finally:
        protocol.leave(token)
    assert ctx.storage_ops == 3


def test_api_calls_report_their_storage_operations(server, api):
    r = api.post("oauth2/v2.0/initiate", username="nobody@example.com", challenge_type="password redirect")
    assert r.status == 200
    assert r.headers["x-storage-ops"] == "1"  # one user lookup (the start token is sealed: no flow insert, A115)
    assert r.headers["x-storage-trace"] == server.settings.table_prefix + "users.get"
    c = api.post("oauth2/v2.0/challenge", continuation_token=r["continuation_token"], challenge_type="password redirect")
    assert c.headers["x-storage-trace"] == server.settings.table_prefix + "flows.create"
    with server.override(storage_trace=False):   # the default: which tables a request touched is not shown
        r = api.post("oauth2/v2.0/initiate", username="nobody@example.com", challenge_type="password redirect")
    assert r.headers["x-storage-ops"] == "1" and "x-storage-trace" not in r.headers


def test_keys_hide_identifiers():
    k = storage.hash_key("email", "alice@example.com")
    assert "alice" not in k and len(k) == 64
    assert k == storage.hash_key("email", "alice@example.com") != storage.hash_key("phone", "alice@example.com")


def test_unreachable_storage_is_storage_unavailable(tmp_path):
    from devhost.azurite import connection_string, free_port

    settings = Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": connection_string(free_port())})
    s = storage.Storage(settings)
    with pytest.raises(storage.StorageUnavailable):
        s.table("users").get("a", "b")
    with pytest.raises(storage.StorageUnavailable):
        s.ping()


def test_tables_are_created(server):
    names = {t.name for t in server.storage._service.list_tables()}
    assert {server.settings.table_prefix + t for t in storage.TABLES} <= names


def test_a_batch_runs_inline_and_keeps_its_all_or_nothing_answers(table, monkeypatch):
    """Batches are prepared and parsed without azure-core's thread pool (a pool
    per batch was 12 % of the host's time under load), with the same results:
    a batch commits all its operations, a stale ETag or an existing row fails
    the whole batch as Modified or Conflict, and nothing of it is written."""
    import threading

    import azure.core

    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), real_start(self))[1])
    pk = key()
    table.batch([("create", {"PartitionKey": pk, "RowKey": str(i), "n": i}) for i in range(5)])
    rows = {r["RowKey"]: r for r in table.query("PartitionKey eq @pk", {"pk": pk})}
    assert sorted(rows) == ["0", "1", "2", "3", "4"]
    table.batch([("update", {**rows["0"], "n": 10}), ("update", {**rows["1"], "n": 11})])
    with pytest.raises(storage.Modified):   # rows["0"] carries the ETag from before the last batch
        table.batch([("update", {**rows["2"], "n": 12}), ("update", {**rows["0"], "n": 99})])
    with pytest.raises(storage.Conflict):
        table.batch([("create", {"PartitionKey": pk, "RowKey": "9"}), ("create", {"PartitionKey": pk, "RowKey": "3"})])
    after = {r["RowKey"]: r["n"] for r in table.query("PartitionKey eq @pk", {"pk": pk}) if "n" in r}
    assert after == {"0": 10, "1": 11, "2": 2, "3": 3, "4": 4}   # the failed batches wrote nothing
    assert table.get(pk, "9") is None
    if azure.core.__version__ == storage.PATCHED_AZURE_CORE:
        assert started == [], started
