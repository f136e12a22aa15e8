"""Table Storage access: entities, ETags, Azure's limits, operation counts.

A thin layer over ``azure-data-tables``. It exists for four reasons:

* state transitions happen only through :meth:`Table.insert` (insert-if-absent,
  409 → :class:`Conflict`) or :meth:`Table.update` with ``If-Match``
  (412 → :class:`Modified`); there is deliberately no upsert for state;
* Azurite accepts things Azure refuses (forbidden key characters, more than
  15 comparisons per filter, more than 252 properties, more than 100
  operations per batch); this layer refuses them itself so that code passing
  locally passes in Azure;
* every call is counted per request (``context.count_storage_op``) for the
  request log line and the benchmark;
* outages surface as one exception type, :class:`StorageUnavailable`, which the
  protocol layer turns into a 503 with ``Retry-After``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableServiceClient, UpdateMode

from shared.protocol import context
from shared.settings import Settings
from shared.storage import transport
from shared.storage.transport import PATCHED_AZURE_CORE

# The Azure SDKs log every request and response (headers included) at INFO, and
# the Functions host ships INFO: that is a log line per storage operation and a
# measurable CPU cost. Only their warnings and errors are kept.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
logging.getLogger("azure.identity").setLevel(logging.WARNING)

# Table name suffixes; the full name is settings.table_prefix + suffix.
TABLES = ("flows", "users", "refresh", "keys", "limits", "clients", "policies", "signinlog")

MAX_KEY_BYTES = 1024
MAX_PROPERTIES = 252  # Azure allows 255 including PartitionKey, RowKey, Timestamp
MAX_FILTER_COMPARISONS = 15
MAX_BATCH = 100
MAX_STRING_CHARS = 32 * 1024  # 64 KiB as UTF-16
_FORBIDDEN_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_COMPARISON = re.compile(r"\s(eq|ne|gt|ge|lt|le)\s", re.IGNORECASE)

Entity = dict[str, Any]
T = TypeVar("T")


class StorageError(Exception):
    index: int | None = None     # a failed transaction's operation, when the service names it (_translate)


class StorageUnavailable(StorageError):
    """Table Storage could not be reached or failed on its side (5xx)."""


class Conflict(StorageError):
    """Insert of an entity that already exists (HTTP 409)."""


class Modified(StorageError):
    """If-Match failed: someone changed the entity since it was read (HTTP 412)."""


class NotFound(StorageError):
    pass


class LimitExceeded(StorageError):
    """The operation would break a limit Azure enforces (and Azurite may not)."""


def hash_key(kind: str, value: str) -> str:
    """A key for an identifier: never the raw email or phone number."""
    return hashlib.sha256(f"{kind}:{value}".encode("utf-8")).hexdigest()


def check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise LimitExceeded("keys must be non-empty strings")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise LimitExceeded("key longer than 1 KiB")
    if _FORBIDDEN_KEY.search(key):
        raise LimitExceeded("key contains a character Azure Table Storage forbids")


def check_entity(entity: Mapping[str, Any]) -> None:
    check_key(entity["PartitionKey"])
    check_key(entity["RowKey"])
    props = [k for k in entity if k not in ("PartitionKey", "RowKey")]
    if len(props) > MAX_PROPERTIES:
        raise LimitExceeded(f"entity has {len(props)} properties; Azure allows {MAX_PROPERTIES}")
    for name, value in entity.items():
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise LimitExceeded(f"property {name} longer than 64 KiB")


def check_filter(query_filter: str) -> None:
    if len(_COMPARISON.findall(f" {query_filter} ")) > MAX_FILTER_COMPARISONS:
        raise LimitExceeded("filter has more than 15 comparisons")


def _translate(exc: Exception) -> Exception:
    out = _translated(exc)
    if isinstance(out, StorageError):
        # In a transaction: the index of the operation that failed, when the service says (else None or 0).
        out.index = getattr(exc, "index", None)
    return out


def _translated(exc: Exception) -> Exception:
    if isinstance(exc, ResourceExistsError):
        return Conflict(str(getattr(exc, "reason", "") or "conflict"))
    if isinstance(exc, ResourceModifiedError):
        return Modified("precondition failed")
    if isinstance(exc, ResourceNotFoundError):
        return NotFound("not found")
    if isinstance(exc, HttpResponseError):
        status = getattr(exc, "status_code", None)
        if status == 412:
            return Modified("precondition failed")
        if status == 409:
            return Conflict("conflict")
        if status == 404:
            return NotFound("not found")
        if status is None or status >= 500 or status == 429:
            return StorageUnavailable(f"table storage answered {status}")
        return StorageError(f"table storage answered {status}")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, AzureError, OSError)):
        return StorageUnavailable(type(exc).__name__)
    return exc


def _plain(entity: Mapping[str, Any]) -> Entity:
    out = dict(entity)
    meta = getattr(entity, "metadata", None) or {}
    if meta.get("etag"):
        out["_etag"] = meta["etag"]
    return out


def _strip(entity: Mapping[str, Any]) -> Entity:
    return {k: v for k, v in entity.items() if not k.startswith("_")}


class Table:
    """One table. Entities are plain dicts; a read entity carries ``_etag``."""

    def __init__(self, client: Any, name: str):
        self._client = client
        self.name = name

    def _call(self, fn, *args, **kwargs):
        context.count_storage_op(what=f"{self.name}.{fn.__name__.removesuffix('_entity')}")
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - translated into our small set
            raise _translate(exc) from exc

    def get(self, pk: str, rk: str) -> Entity | None:
        check_key(pk)
        check_key(rk)
        try:
            return _plain(self._call(self._client.get_entity, pk, rk))
        except NotFound:
            return None

    def insert(self, entity: Mapping[str, Any]) -> str:
        """Insert if absent. Returns the new ETag; :class:`Conflict` if it exists."""
        data = _strip(entity)
        check_entity(data)
        meta = self._call(self._client.create_entity, data)
        return meta.get("etag", "")

    def update(self, entity: Mapping[str, Any], etag: str | None = None, *, replace: bool = False) -> str:
        """Update only if unchanged since read (If-Match). :class:`Modified` on a race."""
        etag = etag or entity.get("_etag")
        if not etag:
            raise StorageError("update needs the ETag of the entity that was read")
        data = _strip(entity)
        check_entity(data)
        meta = self._call(
            self._client.update_entity, data, mode=UpdateMode.REPLACE if replace else UpdateMode.MERGE,
            etag=etag, match_condition=MatchConditions.IfNotModified,
        )
        return meta.get("etag", "")

    def put(self, entity: Mapping[str, Any]) -> str:
        """Unconditional write, for data that is not a state transition
        (log records, idempotent seeds). Never use it for flow state."""
        data = _strip(entity)
        check_entity(data)
        meta = self._call(self._client.upsert_entity, data, mode=UpdateMode.REPLACE)
        return meta.get("etag", "")

    def delete(self, pk: str, rk: str, etag: str | None = None) -> None:
        """Delete (If-Match when an ETag is given: Modified on a race).

        Deleting a missing entity succeeds silently (the SDK swallows the
        404), so a delete can never prove single use: state transitions use
        :meth:`update` instead."""
        kwargs: dict[str, Any] = {}
        if etag:
            kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        try:
            self._call(self._client.delete_entity, pk, rk, **kwargs)
        except NotFound:
            pass

    def query(self, query_filter: str, parameters: Mapping[str, Any] | None = None, *,
              select: list[str] | None = None, limit: int | None = None,
              deadline: float | None = None) -> list[Entity]:
        """Filtered query; values always go through ``parameters`` (never concatenated).
        ``deadline`` (``time.monotonic()``): no further page is fetched after it (a scan
        of a large table answers page by page, each up to 5 seconds of the service's time)."""
        check_filter(query_filter)
        context.count_storage_op(what=f"{self.name}.query")
        out: list[Entity] = []
        try:
            pages = self._client.query_entities(query_filter, parameters=dict(parameters or {}), select=select,
                                                results_per_page=min(limit or 1000, 1000)).by_page()
            for n in itertools.count():
                if n and deadline is not None and time.monotonic() > deadline:
                    return out                      # the next page is not fetched
                page = next(pages, None)            # fetches the page (a round trip)
                if page is None:
                    break
                if n:
                    context.count_storage_op(what=f"{self.name}.query+")  # each further page is another round trip
                for entity in page:
                    out.append(_plain(entity))
                    if limit is not None and len(out) >= limit:
                        return out
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc
        return out

    def batch(self, operations: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Atomic entity-group transaction: same partition, at most 100 operations.

        Operations are ``("create", entity)`` (insert-if-absent),
        ``("update", entity)`` (merge with If-Match on the entity's ``_etag``) or
        ``("delete", entity)`` (unconditional; a missing entity fails the whole
        batch with :class:`NotFound`, unlike :meth:`delete`).
        Any race fails the whole batch with :class:`Conflict` or :class:`Modified`.
        Returns each entity's new ETag, in the operations' order."""
        ops: list[tuple] = []
        for op, entity in operations:
            data = _strip(entity)
            if op == "update":
                if not entity.get("_etag"):
                    raise StorageError("a batch update needs the ETag of the entity that was read")
                ops.append(("update", data, {"mode": UpdateMode.MERGE, "etag": entity["_etag"],
                                             "match_condition": MatchConditions.IfNotModified}))
            elif op == "create":
                ops.append(("create", data))
            elif op == "delete":
                ops.append(("delete", {"PartitionKey": data["PartitionKey"], "RowKey": data["RowKey"]}))
            else:
                raise StorageError(f"unsupported batch operation {op!r}")
        if not ops:
            return []
        if len(ops) > MAX_BATCH:
            raise LimitExceeded("a batch holds at most 100 operations")
        if len({o[1]["PartitionKey"] for o in ops}) != 1:
            raise LimitExceeded("a batch must stay within one partition")
        for o in ops:
            check_entity(o[1])
        parts = self._call(self._client.submit_transaction, ops) or []
        return [str((part or {}).get("etag") or "") for part in parts]

    def in_transactions(self, op: str, entities: Iterable[Mapping[str, Any]], one: Callable[[Mapping[str, Any]], Any],
                        *, falls_back_on: tuple[type[Exception], ...]) -> int:
        """Apply ``op`` (as in :meth:`batch`) to many entities, up to 100 per
        transaction within a partition. A transaction that fails with one of
        ``falls_back_on`` (a row another writer got to first) is done again
        entity by entity with ``one``. Returns the round trips made."""
        partitions: dict[str, list[Mapping[str, Any]]] = {}
        for entity in entities:
            partitions.setdefault(entity["PartitionKey"], []).append(entity)
        trips = 0
        for same in partitions.values():
            for i in range(0, len(same), MAX_BATCH):
                chunk = same[i:i + MAX_BATCH]
                trips += 1
                try:
                    self.batch([(op, e) for e in chunk])
                    continue
                except falls_back_on:
                    pass
                for entity in chunk:
                    trips += 1
                    one(entity)
        return trips

    @property
    def address(self) -> str:
        """The table's account and name: tells apart tables of different accounts or prefixes."""
        return f"{self._client.url}/{self._client.table_name}"


class InstanceCache:
    """What an instance read from a table, kept for ``seconds`` (policies, clients,
    extension configurations, suspensions): every instance reads the same table,
    so all converge within that time; ``fresh`` reads again now."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._hits: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, load: Callable[[], T], *, fresh: bool = False) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._hits.get(key)
        if hit and hit[0] > now and not fresh:
            return hit[1]
        value = load()
        with self._lock:
            self._hits[key] = (now + self.seconds, value)
        return value

    def forget(self, key: Any = None) -> None:
        """Drop one key's value (or every value) so the next get reads again."""
        with self._lock:
            if key is None:
                self._hits.clear()
            else:
                self._hits.pop(key, None)


# ------------------------------------------------------------------ the HTTP client under the SDK
#
# Measured with py-spy under load (bench/RESULTS.md §0b): about a fifth of the host's time went to
# three things around the storage requests, not to them:
#
# * azure-core runs the policies of each part of a batch (and parses each part of its answer) on a
#   new ThreadPoolExecutor per batch: threads started and joined for a few microseconds of header
#   work, twice per batch (12 % of samples). With the pinned azure-core the parts are handled inline
#   instead (same policies, same order of effects; exceptions are raised the same way);
# * requests looks up ~/.netrc (a file-system call) on every request because the session trusts
#   the environment (4 %): the session here reads the environment's proxies and CA bundle once;
# * its connection pool keeps 10 connections per host: more concurrent requests opened new ones.
#
# Later (issue "Performance", fourth pass): the requests layer itself (preparing, merging settings,
# cookies and hooks for every request) was 0.28-0.35 ms of CPU per operation, a quarter of the SDK's
# client-side cost. With the pinned azure-core the transport is urllib3's pools directly
# (the same certificate checks, proxies, timeouts and azure-core errors). Sixth pass: urllib3 only for
# what http.client connections kept per origin do not send themselves, and the header blocks of the
# answers built without the email package (shared/storage/transport.py).

_patched = False


def _inline_multipart() -> None:
    global _patched
    import azure.core

    if _patched or azure.core.__version__ != PATCHED_AZURE_CORE:
        return
    from azure.core.pipeline import PipelineRequest, PipelineResponse
    from azure.core.pipeline import _base as pipeline_base
    from azure.core.pipeline._tools import await_result
    from azure.core.pipeline.transport import _base as transport_base
    from azure.core.rest import _http_response_impl as rest_impl
    from azure.core.utils import _pipeline_transport_rest_shared as shared_helpers

    def prepare(request) -> None:
        info = request.multipart_mixed_info
        if not info:
            return
        requests_, policies, options = info[0], info[1], info[3]
        for req in requests_:
            if req.multipart_mixed_info:
                prepare(req)
            pipeline_request = PipelineRequest(req, pipeline_base.PipelineContext(None, **options))
            for policy in policies:
                await_result(policy.on_request, pipeline_request)

    def parts(response):
        if not response.content_type or not response.content_type.startswith("multipart/mixed"):
            raise ValueError("You can't get parts if the response is not multipart/mixed")
        responses = response._get_raw_parts()  # noqa: SLF001 - as azure-core does
        if response.request.multipart_mixed_info:
            policies = response.request.multipart_mixed_info[1]
            for part in responses:
                context_ = pipeline_base.PipelineContext(None)
                pipeline_request = PipelineRequest(part.request, context_)
                pipeline_response = PipelineResponse(part.request, part, context=context_)
                for policy in policies:
                    await_result(policy.on_response, pipeline_request, pipeline_response)
        return responses

    pipeline_base.Pipeline._prepare_multipart_mixed_request = staticmethod(prepare)  # noqa: SLF001
    for module in (shared_helpers, transport_base, rest_impl):
        module._parts_helper = parts  # noqa: SLF001
    from azure.core.rest import _helpers as rest_helpers

    original_prepare, original_raw_parts = shared_helpers._prepare_multipart_body_helper, shared_helpers._get_raw_parts_helper  # noqa: SLF001
    for module in (rest_helpers, transport_base):
        module._prepare_multipart_body_helper = functools.partial(_multipart_body, original_prepare)  # noqa: SLF001
    for module in (rest_impl, transport_base):
        module._get_raw_parts_helper = functools.partial(_raw_parts, original_raw_parts)  # noqa: SLF001
    _patched = True


# Later (issue "Performance", fifth pass): with a sign-in's account changes riding on its flow's writes,
# transactions became 40 % of the host's Python time under load, and most of that was the email package
# building each batch's multipart body (email.generator) and parsing its answer (email.parser). The two
# helpers below write and read the same bytes directly; tests/test_storage.py checks them byte for byte
# against azure-core's own on generated batches and against Azurite's answers. Anything they do not
# recognise goes to azure-core's helper.

def _multipart_body(original, http_request, content_index: int = 0) -> int:
    """azure-core's _prepare_multipart_body_helper, without the email package: the body is the
    parts between ``--boundary`` lines, each with the headers email would write, the nested
    changeset's body as it serialises, and the closing ``--boundary--`` line."""
    info = http_request.multipart_mixed_info
    if not info:
        return 0
    requests_, boundary = info[0], info[2]
    start = content_index
    if not requests_ or not boundary or not _BOUNDARY_RE.match(boundary):
        return original(http_request, start)
    delimiter = b"--" + boundary.encode("ascii")
    body = []
    for req in requests_:
        if req.multipart_mixed_info:
            content_index = req.prepare_multipart_body(content_index=content_index)
            content_type = req.headers["Content-Type"]
            payload = req.serialize()
            payload = payload[payload.index(b"--"):]
            head = b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n"
        else:
            head = (b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: "
                    + str(content_index).encode("ascii") + b"\r\n\r\n")
            payload = req.serialize()
            content_index += 1
        bare = payload.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare or delimiter in payload or not payload.isascii():
            return original(http_request, start)     # email would rewrite (or refuse) such a payload: its own way
        body.append(delimiter + b"\r\n" + head + payload + b"\r\n")
    body.append(delimiter + b"--\r\n")
    http_request.set_bytes_body(b"".join(body))
    http_request.headers["Content-Type"] = "multipart/mixed; boundary=" + boundary
    return content_index


_BOUNDARY_RE = re.compile(r"^[A-Za-z0-9_-]{1,70}\Z")


class _Part:
    """What azure-core's _decode_parts_helper reads of an email part: its content type and payload."""

    def __init__(self, content_type: str, payload: Any):
        self._content_type, self._payload = content_type, payload

    def get_content_type(self) -> str:
        return self._content_type

    def get_payload(self, decode: bool = False) -> Any:
        return self._payload


def _split_multipart(content_type: str, body: bytes) -> "_Part | None":
    """A multipart/mixed body as the email parser would give it to azure-core (application/http
    parts and nested multipart/mixed ones), or None for anything else (azure-core parses it then)."""
    m = re.match(r"^multipart/mixed\s*;\s*boundary=(\"?)([A-Za-z0-9_-]{1,70})\1\s*\Z", content_type, re.IGNORECASE)
    if not m:
        return None
    delimiter = b"--" + m.group(2).encode("ascii")
    if not body.startswith(delimiter + b"\r\n"):
        return None
    end = body.find(b"\r\n" + delimiter + b"--")
    if end < 0 or body[end + len(delimiter) + 4:].lstrip(b" \t")[:2] not in (b"\r\n", b""):
        return None
    parts = []
    for chunk in body[len(delimiter) + 2:end].split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep or delimiter in chunk:
            return None     # a delimiter written another way (padding, a bare LF): the email parser's reading
        headers = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            name = name.lower()
            if not colon or not re.fullmatch(rb"[a-z0-9-]+", name) or name in headers:
                return None
            headers[name] = value.strip().decode("latin-1")
        kind = headers.get(b"content-type", "").split(";")[0].strip().lower()
        if kind == "application/http":
            if headers.get(b"content-transfer-encoding", "binary").lower() not in ("binary", "8bit", "7bit"):
                return None
            parts.append(_Part(kind, payload))
        elif kind == "multipart/mixed":
            nested = _split_multipart(headers[b"content-type"], payload)
            if nested is None:
                return None
            parts.append(nested)
        else:
            return None
    return _Part("multipart/mixed", parts)


def _raw_parts(original, response, http_response_type):
    """azure-core's _get_raw_parts_helper, without the email package (see _split_multipart)."""
    message = _split_multipart(response.content_type or "", response.body())
    if message is None:
        return original(response, http_response_type)
    requests_ = response.request.multipart_mixed_info[0]
    return response._decode_parts(message, http_response_type, requests_)  # noqa: SLF001 - as azure-core does


class Storage:
    """The app's tables. Connection string locally; endpoint + managed identity in Azure."""

    def __init__(self, settings: Settings):
        self.settings = settings
        _inline_multipart()
        kwargs = dict(retry_total=1, retry_backoff_factor=0.2, connection_timeout=5, read_timeout=10,
                      transport=transport.make(connection_timeout=5, read_timeout=10))
        if settings.storage_connection_string:
            self._service = TableServiceClient.from_connection_string(settings.storage_connection_string, **kwargs)
        else:
            # Lazy import: only without a connection string. The app in Azure uses its
            # user-assigned identity; tools on a workstation (admin CLI) use the
            # developer's sign-in (az login) through DefaultAzureCredential.
            from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

            credential = (ManagedIdentityCredential(client_id=settings.storage_client_id) if settings.storage_client_id
                          else DefaultAzureCredential(exclude_interactive_browser_credential=True))
            self._service = TableServiceClient(endpoint=settings.storage_table_endpoint, credential=credential, **kwargs)
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()

    def table(self, suffix: str) -> Table:
        if suffix not in TABLES:
            raise KeyError(suffix)
        table = self._tables.get(suffix)
        if table is None:
            with self._lock:
                table = self._tables.get(suffix)
                if table is None:
                    name = self.settings.table_prefix + suffix
                    table = Table(self._service.get_table_client(name), name)
                    self._tables[suffix] = table
        return table

    def ensure_tables(self) -> None:
        for suffix in TABLES:
            try:
                self._service.create_table(self.settings.table_prefix + suffix)
            except ResourceExistsError:
                pass
            except Exception as exc:  # noqa: BLE001
                raise _translate(exc) from exc

    def ping(self) -> None:
        """One cheap round trip; raises StorageUnavailable when storage is down."""
        try:
            next(iter(self._service.list_tables(results_per_page=1).by_page()), None)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc


_storage: Storage | None = None
_storage_lock = threading.Lock()


def get_storage(settings: Settings | None = None) -> Storage:
    """Process-wide storage; tables are created on first use (app start)."""
    global _storage
    if _storage is None:
        with _storage_lock:
            if _storage is None:
                from shared.settings import get_settings

                storage = Storage(settings or get_settings())
                storage.ensure_tables()
                _storage = storage
    return _storage


def reset_storage() -> None:
    global _storage
    _storage = None
