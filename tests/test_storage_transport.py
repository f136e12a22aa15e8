"""The HTTP transport under the Table SDK (shared/storage/transport.py): the direct ``http.client``
transport against urllib3's on the same answers, its connection handling, and the fast header
parsing against the email package's, attribute by attribute."""

from __future__ import annotations

import gzip
import http.client
import io
import random
import socket
import threading
import time
import uuid
import zlib

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpRequest

from shared.settings import Settings
from shared.storage import tables as storage
from shared.storage import transport

from conftest import clear_proxy_env, wait_until

KINDS = ["DirectTransport", "Urllib3Transport"]


# ------------------------------------------------------------------ header blocks


def _state(message) -> dict:
    """Everything a parsed header block holds, in comparable form."""
    out = {k: v for k, v in vars(message).items() if k not in ("policy", "defects")}
    out["defects"] = [(type(d).__name__, str(d)) for d in message.defects]
    out["policy"] = message.policy
    out["class"] = type(message)
    out["items"] = message.items()
    out["multipart"] = message.is_multipart()
    return out


def _original(lines: list[bytes], message_class=http.client.HTTPMessage):
    import email.parser

    return email.parser.Parser(_class=message_class).parsestr(b"".join(lines).decode("iso-8859-1"))


def _lines(block: bytes) -> list[bytes]:
    return http.client._read_headers(io.BytesIO(block))     # noqa: SLF001 - exactly what parse_headers reads


def _compare(block: bytes, message_class=http.client.HTTPMessage) -> bool:
    """The fast message equals the email parser's; returns whether the fast path took it."""
    lines = _lines(block)
    fast = transport.fast_message(lines, message_class)
    if fast is not None:
        assert _state(fast) == _state(_original(lines, message_class)), block
    return fast is not None


HAND_MADE = [
    b"Content-Type: application/json;odata=nometadata\r\nContent-Length: 2\r\nETag: W/\"datetime'2026'\"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=batchresponse_" + uuid.uuid4().hex.encode() + b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=\"quoted boundary\"\r\nX:  spaced value \t\r\n\r\n",
    b"Content-Type: multipart/mixed\r\n\r\n",                               # no boundary: the parser's path
    b"Content-Type: multipart/mixed; boundary=x\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Type: message/delivery-status\r\n\r\n",
    b"Content-Type: text/plain\r\nX-Folded: a\r\n b\r\n\r\n",              # a folded line
    b"X-Bare-LF: a\n\r\n",
    b"X-CR: a\rb\r\n\r\n",
    b": no name\r\n\r\n",
    b"From nobody\r\nX: y\r\n\r\n",
    b"No colon here\r\nX: y\r\n\r\n",
    b"X-Space : before colon\r\n\r\n",
    b"X-Empty:\r\nX-Blank:   \r\n\r\n",
    b"X-Latin: caf\xe9 \xff\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nset-cookie: c=3\r\n\r\n",
    b"Content-Type: TEXT/HTML; charset=utf-8\r\nCONTENT-TYPE: multipart/mixed; boundary=b\r\n\r\n",
    b"Content-Type: nonsense\r\n\r\n",
    b"Content-Type: multipart/\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary*=utf-8''%41%42\r\n\r\n",
    b"X: a:b:c\r\n\r\n",
    b"\r\n",
    b"",
    b"X: unterminated\r\n",
]


def test_fast_header_blocks_equal_the_email_parsers_on_hand_made_blocks():
    taken = [_compare(block) for block in HAND_MADE]
    assert taken[0] and taken[1] and taken[2] and taken[-3]     # the common shapes do take the fast path
    assert not any(taken[3:13])                                   # the unusual ones do not
    # A message class whose own default policy is not compat32 gets compat32, as from the parser.
    from email.message import EmailMessage

    assert [_compare(block, EmailMessage) for block in HAND_MADE] == taken


def test_fast_header_blocks_equal_the_email_parsers_on_generated_blocks():
    rng = random.Random(20261130)
    pieces = ["Content-Type", "X-Ms-Version", "ETag", "From", "from ", "X", "", " ", "\t", ":", "::", "a b",
              "multipart/mixed", "message/rfc822", "text/plain", "; boundary=", "batch_1", '"q q"', "base64",
              "Content-Transfer-Encoding", "\xe9", "\x7f", "\r", "\n", "\r\n", "=", ";", "W/\"x\""]
    fast = 0
    for _ in range(6000):
        lines = []
        for _ in range(rng.randint(0, 6)):
            line = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
            if rng.random() < 0.7:
                line = rng.choice(["Content-Type", "X-A", "Content-Transfer-Encoding", "From"]) + ": " + line
            lines.append(line.replace("\r\n", "") + rng.choice(["\r\n"] * 8 + ["\n"]))
        block = "".join(lines).encode("latin-1") + b"\r\n"
        fast += _compare(block)
    assert fast > 1000, fast        # the generator reaches the fast path often, and the other one too


def test_fast_header_blocks_equal_the_email_parsers_on_real_answers(server):
    """Every kind of answer the Table service gives (Azurite's): read, query, insert, conflict,
    precondition failed, a transaction committed and refused, a missing table."""
    conn = server.settings.storage_connection_string
    port = int(conn.split("127.0.0.1:")[1].split("/")[0])
    # Read the raw header blocks off the wire through a forwarder that records what Azurite answers.
    forwarder = _Forwarder(port, record=True)
    try:
        s = storage.Storage(Settings.from_env({
            "AUTH_ENVIRONMENT": "local", "AUTH_TABLE_PREFIX": "tr" + uuid.uuid4().hex[:8],
            "AUTH_STORAGE_CONNECTION_STRING": conn.replace(f"127.0.0.1:{port}", f"127.0.0.1:{forwarder.port}")}))
        _every_kind_of_answer(s)
    finally:
        forwarder.close()
    heads = [chunk.split(b"\r\n", 1)[1].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
             for chunk in forwarder.answers if chunk.startswith(b"HTTP/1.1 ")]
    assert len(heads) >= 10, len(heads)
    assert all(_compare(head) for head in heads)       # every one of them is the common shape
    assert any(b"multipart/mixed" in head for head in heads)


def test_the_fast_header_parsing_is_installed_over_the_standard_librarys_only():
    import sys

    import azure.core

    transport.make()
    installed = http.client.parse_headers
    if sys.version_info[:2] == transport.PATCHED_PYTHON and azure.core.__version__ == transport.PATCHED_AZURE_CORE:
        assert installed.original.__module__ == "http.client"
        transport.install_fast_headers()
        assert http.client.parse_headers is installed          # not wrapped twice
        message = installed(io.BytesIO(b"X-A: 1\r\nX-B: 2\r\n\r\nbody"))
        assert message.items() == [("X-A", "1"), ("X-B", "2")]
        folded = installed(io.BytesIO(b"X-A: 1\r\n  more\r\n\r\n"))      # the email parser's reading
        assert folded["X-A"] == "1\r\n  more"
        with pytest.raises(http.client.HTTPException):                     # the same limits
            installed(io.BytesIO(b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"))
    else:
        assert installed.__module__ == "http.client"


# ------------------------------------------------------------------ a test server and a TCP forwarder


class _Listener:
    """A TCP listener on 127.0.0.1 that hands each connection to ``on_connection`` in a thread of its own."""

    def __init__(self, backlog: int = 32):
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.on_connection, args=(sock,), daemon=True).start()

    def on_connection(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def close(self):
        self.listener.close()


class _Canned(_Listener):
    """An HTTP/1.1 server answering each path with a canned raw answer (status line, headers, body)."""

    def __init__(self, answers: dict[str, bytes]):
        self.answers = answers
        self.requests: list[bytes] = []
        self._open: list[socket.socket] = []
        super().__init__()

    def on_connection(self, sock):
        self._open.append(sock)
        self._serve(sock)

    def _serve(self, sock):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                length, chunked = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                        chunked = True
                if chunked:
                    body = b""
                    while True:
                        while b"\r\n" not in buf:
                            buf += sock.recv(65536)
                        size_line, buf = buf.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        while len(buf) < size + 2:
                            buf += sock.recv(65536)
                        body, buf = body + buf[:size], buf[size + 2:]
                        if size == 0:
                            break
                else:
                    while len(buf) < length:
                        buf += sock.recv(65536)
                    body, buf = buf[:length], buf[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                if not self.respond(sock, head.split(b" ")[1].decode("latin-1")):
                    return
        except OSError:
            return
        finally:
            sock.close()

    def respond(self, sock, path: str) -> bool:
        """Answer one request; False closes the connection."""
        answer = self.answers.get(path.split("?")[0], self.answers.get("*"))
        if answer is None:
            return False          # close without answering
        if answer == b"hang":
            time.sleep(30)
            return False
        sock.sendall(answer)
        return b"Connection: close" not in answer.split(b"\r\n\r\n")[0]

    def close_idle(self):
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        super().close()
        self.close_idle()


class _Forwarder(_Listener):
    """A TCP forwarder to 127.0.0.1:port that counts connections and can drop them (a server closing
    kept connections), optionally recording what the server answers."""

    def __init__(self, port: int, record: bool = False):
        self.target = port
        self.record = record
        self.answers: list[bytes] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        super().__init__(backlog=64)

    def on_connection(self, client):
        upstream = socket.create_connection(("127.0.0.1", self.target))
        self._pairs.append((client, upstream))
        threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
        self._pipe(upstream, client, True)

    def _pipe(self, src, dst, answers):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if answers and self.record:
                    self.answers.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop_all(self):
        for client, upstream in self._pairs:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        time.sleep(0.2)

    def close(self):
        super().close()
        self.drop_all()


def _every_kind_of_answer(s: storage.Storage) -> None:
    s.ensure_tables()
    t = s.table("limits")
    pk = uuid.uuid4().hex
    t.insert({"PartitionKey": pk, "RowKey": "r", "n": 1, "text": "ü€😀 \"quoted\" \\ / ünïcödé"})
    with pytest.raises(storage.Conflict):
        t.insert({"PartitionKey": pk, "RowKey": "r", "n": 1})
    row = t.get(pk, "r")
    assert row["text"] == "ü€😀 \"quoted\" \\ / ünïcödé"
    t.update({**row, "n": 2})
    with pytest.raises(storage.Modified):
        t.update({**row, "n": 3})
    t.batch([("create", {"PartitionKey": pk, "RowKey": str(i), "v": "ä" * i}) for i in range(3)])
    with pytest.raises(storage.StorageError):
        t.batch([("create", {"PartitionKey": pk, "RowKey": "9"}), ("create", {"PartitionKey": pk, "RowKey": "0"})])
    assert t.get(pk, "missing") is None
    assert len(t.query("PartitionKey eq @p", {"p": pk})) == 4
    t.delete(pk, "0")
    assert t.get(pk, "r")["n"] == 2


def _settings(conn: str) -> Settings:
    return Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": conn,
                              "AUTH_TABLE_PREFIX": "tr" + uuid.uuid4().hex[:8]})


def _via(server, forwarder: _Forwarder) -> str:
    conn = server.settings.storage_connection_string
    port = conn.split("127.0.0.1:")[1].split("/")[0]
    return conn.replace(f"127.0.0.1:{port}", f"127.0.0.1:{forwarder.port}")


# ------------------------------------------------------------------ the direct transport


def test_every_kind_of_operation_works_over_one_kept_connection(server, monkeypatch):
    """Inserts, conflicts, reads, If-Match updates and refusals, transactions committed and refused,
    queries, deletes, with text that is not ASCII: all over one kept connection, sequentially."""
    clear_proxy_env(monkeypatch)
    conn = server.settings.storage_connection_string
    forwarder = _Forwarder(int(conn.split("127.0.0.1:")[1].split("/")[0]))
    try:
        s = storage.Storage(_settings(_via(server, forwarder)))
        _every_kind_of_answer(s)
        assert forwarder.connections == 1, forwarder.connections
    finally:
        forwarder.close()


def test_a_kept_connection_the_server_closed_is_not_reused(server, monkeypatch):
    """Azure and Azurite close idle kept connections: the next operation opens a new one instead of
    failing on the dead one (the SDK's retry is off here, so it is not the retry that saves it)."""
    from azure.data.tables import TableServiceClient

    clear_proxy_env(monkeypatch)
    conn = server.settings.storage_connection_string
    forwarder = _Forwarder(int(conn.split("127.0.0.1:")[1].split("/")[0]))
    try:
        service = TableServiceClient.from_connection_string(
            _via(server, forwarder), retry_total=0, transport=transport.DirectTransport(connection_timeout=2,
                                                                                         read_timeout=5))
        name = "tr" + uuid.uuid4().hex[:8] + "kept"
        service.create_table(name)
        t = storage.Table(service.get_table_client(name), name)
        for round_ in range(3):
            t.insert({"PartitionKey": "p", "RowKey": str(round_)})
            forwarder.drop_all()
            assert t.get("p", str(round_)) is not None
        assert forwarder.connections == 4, forwarder.connections
    finally:
        forwarder.close()


def test_fifty_parallel_operations_share_the_kept_connections(server, monkeypatch):
    clear_proxy_env(monkeypatch)
    conn = server.settings.storage_connection_string
    forwarder = _Forwarder(int(conn.split("127.0.0.1:")[1].split("/")[0]))
    try:
        s = storage.Storage(_settings(_via(server, forwarder)))
        s.ensure_tables()
        t = s.table("limits")
        pk = uuid.uuid4().hex
        errors: list[BaseException] = []

        def one(i):
            try:
                t.insert({"PartitionKey": pk, "RowKey": str(i), "v": "ö" * i})
                assert t.get(pk, str(i))["v"] == "ö" * i
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        for _ in range(2):
            threads = [threading.Thread(target=one, args=(i + 100 * _,)) for i in range(50)]
            [th.start() for th in threads]
            [th.join() for th in threads]
        assert not errors, errors[:3]
        assert len(t.query("PartitionKey eq @p", {"p": pk})) == 100
        opened = forwarder.connections
        assert opened <= 60, opened         # the second burst reused the first one's connections
    finally:
        forwarder.close()


RAW = {
    "/json": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": \"\xc3\xbc\"}",
    "/dup": b"HTTP/1.1 200 OK\r\nX-Dup: a\r\nx-dup: b\r\nSet-Cookie: c=1\r\nContent-Length: 0\r\n\r\n",
    "/chunked": b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
    "/gzip": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
              % len(gzip.compress(b"zipped"))) + gzip.compress(b"zipped"),
    "/deflate": (b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n"
                 % len(zlib.compress(b"deflated"))) + zlib.compress(b"deflated"),
    "/nocontent": b"HTTP/1.1 204 No Content\r\nETag: W/\"x\"\r\n\r\n",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "/redirect": b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n",
    "/error": (b"HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json;odata=minimalmetadata\r\n"
               b"Content-Length: 2\r\n\r\n{}"),
    "/folded": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "/twice": (b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate, gzip\r\nContent-Length: %d\r\n\r\n"
               % len(gzip.compress(zlib.compress(b"twice")))) + gzip.compress(zlib.compress(b"twice")),
    "/merge": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/members": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                 % len(gzip.compress(b"hello ") + gzip.compress(b"world"))) + gzip.compress(b"hello ") + gzip.compress(b"world"),
}


@pytest.mark.parametrize("path", sorted(RAW))
def test_the_direct_transport_answers_what_urllib3_answers(monkeypatch, path):
    """The same request to the same answer through both transports: the same status, reason, headers
    (repeated ones joined the same way), content type and (decoded) body; no redirect followed."""
    clear_proxy_env(monkeypatch)
    canned = _Canned(RAW)
    try:
        seen = []
        for kind in KINDS:
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            body = {"key": "välue"} if path == "/json" else None
            method = "POST" if body else "MERGE" if path == "/merge" else "GET"
            request = HttpRequest(method, f"http://127.0.0.1:{canned.port}{path}?q=1", json=body,
                                  headers={"User-Agent": "azsdk-python-data-tables"})     # as the SDK always sends
            r = sender.send(request)
            seen.append((r.status_code, r.reason, {k.lower(): v for k, v in r.headers.items()}, r.content_type,
                         r.body()))
            sender.close()
        assert seen[0] == seen[1], seen
        assert len(canned.requests) == 2
        first, second = (req.split(b"\r\n\r\n", 1) for req in canned.requests)
        assert first[1] == second[1]                      # the same body bytes (UTF-8 JSON)
        heads = [sorted(h.lower() for h in head.split(b"\r\n")[1:]) for head in (first[0], second[0])]
        assert heads[0] == heads[1], heads               # the same header lines
    finally:
        canned.close()


def test_a_connection_the_server_closes_is_not_kept_and_an_unanswered_request_is_a_response_error(monkeypatch):
    clear_proxy_env(monkeypatch)
    canned = _Canned({"/close": RAW["/close"], "/json": RAW["/json"]})
    try:
        sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
        assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/close")).body() == b"ok"
        assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/json")).status_code == 200
        assert canned.connections == 2
        with pytest.raises(ServiceResponseError):     # the server read it and closed: it may have acted on it
            sender.send(HttpRequest("DELETE", f"http://127.0.0.1:{canned.port}/unanswered"))
        with pytest.raises(ServiceRequestError):      # nothing listens: nothing was sent
            sender.send(HttpRequest("GET", "http://127.0.0.1:9/x"))
    finally:
        canned.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_that_cannot_be_written_sends_nothing(monkeypatch, kind):
    """A header value with a line break is refused before a byte leaves: ServiceRequestError (safe to retry)."""
    clear_proxy_env(monkeypatch)
    canned = _Canned({"*": RAW["/json"]})
    try:
        sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
        sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/warm"))
        with pytest.raises(ServiceRequestError):
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/x", headers={"x-a": "1\r\nInjected: 1"}))
        with pytest.raises(ServiceRequestError):
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/x", headers={"x-a": "\u20ac"}))
        time.sleep(0.2)
        assert len(canned.requests) == 1, canned.requests
        assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/after")).status_code == 200
    finally:
        canned.close()


def test_what_the_direct_transport_does_not_send_itself_goes_to_urllib3(monkeypatch):
    """A target with characters urllib3 percent-encodes, and a body that is not bytes or text, are sent by
    urllib3 exactly as it sends them; so is everything for an origin behind a proxy."""
    clear_proxy_env(monkeypatch)
    canned = _Canned({"*": RAW["/json"]})
    try:
        for kind in KINDS:
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/a b/ü?x=ä ö"))
            sender.send(HttpRequest("PUT", f"http://127.0.0.1:{canned.port}/iter", content=iter([b"ab", b"cd"])))
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/a\"b|c{{d}}^`"))
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/%2f%zz%41?q=%e9"))
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/acct/t/../x/./y"))
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/a?"))
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}?comp=properties"))
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/a\tb"))
            chunks = HttpRequest("PUT", f"http://127.0.0.1:{canned.port}/chunks", content=b"hello")
            del chunks.headers["Content-Length"]
            chunks.headers["Transfer-Encoding"] = "chunked"      # framed by urllib3, not sent raw
            sender.send(chunks)
        n = len(canned.requests) // 2
        targets = [req.split(b" ")[1] for req in canned.requests]
        assert targets[:n] == targets[n:], targets
        assert b"/a%22b%7Cc%7Bd%7D%5E%60" in targets[:n], targets      # urllib3's encoding, not the raw characters
        assert b"/acct/x/y" in targets[:n] and b"/a?" in targets[:n] and b"/a%09b" in targets[:n], targets
        assert b"/?comp=properties" in targets[:n], targets      # a query right after the host keeps its query
        chunked = [req for req in canned.requests if req.startswith(b"PUT /chunks")]
        assert len(chunked) == 2 and chunked[0] == chunked[1] and chunked[0].endswith(b"\r\n\r\nhello"), chunked
        assert b"transfer-encoding: chunked" in chunked[0].lower()
        assert canned.requests[1].endswith(b"abcd") and canned.requests[n + 1].endswith(b"abcd")
    finally:
        canned.close()


# ------------------------------------------------------------------ the first review's findings


class _EarlyAnswer(_Listener):
    """A server that answers after the request's head, without reading its body, and closes (the unread
    body makes the kernel reset the connection under the client's send)."""

    def __init__(self, answer: bytes):
        self.answer = answer
        super().__init__(backlog=8)

    def on_connection(self, sock):
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        sock.sendall(self.answer)
        time.sleep(0.05)
        sock.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_sent_before_the_body_was_read_is_read(monkeypatch, kind):
    """A refusal (413) the server sends before reading an 8 MiB body, then closes: the answer, not a broken
    connection (review finding: the direct transport lost it to the reset)."""
    clear_proxy_env(monkeypatch)
    answer = (b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: 25\r\n\r\n{\"odata.error\": \"large\"}\n")
    listener = _EarlyAnswer(answer)
    try:
        sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
        r = sender.send(HttpRequest("POST", f"http://127.0.0.1:{listener.port}/t",
                                    content=b"x" * (8 << 20)))
        assert r.status_code == 413 and b"large" in r.body()
    finally:
        listener.close()


def test_an_answer_whose_head_the_parser_cannot_read_is_a_response_error_and_closes_the_connection(monkeypatch):
    """A Content-Type whose parameters make the email package raise TypeError (review finding: a raw TypeError
    reached the app and the connection stayed open): ServiceResponseError, through the app StorageUnavailable."""
    from azure.data.tables import TableServiceClient

    from devhost.azurite import ACCOUNT, KEY

    clear_proxy_env(monkeypatch)
    bad = (b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary*=a; boundary*0=b\r\n"
           b"Content-Length: 0\r\n\r\n")
    canned = _Canned({"*": bad})
    try:
        sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
        with pytest.raises(ServiceResponseError):
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/x"))
        assert not sender._idle.get(("http", "127.0.0.1", canned.port))
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"TableEndpoint=http://127.0.0.1:{canned.port}/{ACCOUNT};")
        service = TableServiceClient.from_connection_string(conn, retry_total=0, transport=sender)
        with pytest.raises(storage.StorageUnavailable):
            storage.Table(service.get_table_client("t"), "t").get("a", "b")
    finally:
        canned.close()


@pytest.mark.parametrize("url,content", [("http://a b/x", None), ("http://a\x00b/x", None),
                                         ("http://127.0.0.1:9/x", "\ud800")])
def test_a_host_or_body_that_cannot_be_written_is_a_request_error(monkeypatch, url, content):
    clear_proxy_env(monkeypatch)
    for kind in KINDS:
        sender = getattr(transport, kind)(connection_timeout=1, read_timeout=1)
        with pytest.raises(ServiceRequestError):
            sender.send(HttpRequest("POST", url, content=content))


def test_a_content_length_that_is_not_the_bodys_is_refused_before_sending(monkeypatch):
    """azure-core counts a text body's characters for Content-Length; sent as UTF-8 the body is longer, and the
    bytes past the stated length would be read by the server as the next request on the kept connection."""
    clear_proxy_env(monkeypatch)
    canned = _Canned({"*": RAW["/json"]})
    try:
        for kind in KINDS:        # urllib3 too (third review)
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            with pytest.raises(ServiceRequestError):
                sender.send(HttpRequest("POST", f"http://127.0.0.1:{canned.port}/x", content="é"))
            assert sender.send(HttpRequest("POST", f"http://127.0.0.1:{canned.port}/y",
                                           content=b"\xc3\xa9")).status_code == 200
        assert len(canned.requests) == 2 and all(r.endswith(b"\r\n\r\n\xc3\xa9") for r in canned.requests)
    finally:
        canned.close()


def test_connections_in_flight_when_the_transport_closes_are_not_kept(monkeypatch):
    clear_proxy_env(monkeypatch)
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    canned = _Canned({"*": slow})
    original = canned._serve

    def delayed(sock):
        time.sleep(0.3)
        original(sock)

    canned._serve = delayed
    try:
        sender = transport.DirectTransport(connection_timeout=5, read_timeout=5)
        threads = [threading.Thread(target=sender.send, args=(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/s"),))
                   for _ in range(5)]
        [t.start() for t in threads]
        # every send has its connection open (so it read the generation) before the close; a fixed
        # sleep here let a thread started late on a loaded machine begin after the close and keep its own
        assert wait_until(lambda: len(canned._open) == 5, timeout=10)
        sender.close()
        [t.join() for t in threads]
        assert sum(len(v) for v in sender._idle.values()) == 0
        assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/after")).status_code == 200
        assert sum(len(v) for v in sender._idle.values()) == 1        # a transport used again keeps again
    finally:
        canned.close()


# ------------------------------------------------------------------ the second review's findings


class _Hinting(_Canned):
    """Answers /hint with a 103 interim answer and, a moment later, the final one; anything else at once."""

    def __init__(self):
        super().__init__({})

    def respond(self, sock, path):
        if path == "/hint":
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
            time.sleep(0.3)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path.encode()))
        return True


def test_an_interim_answer_is_not_taken_for_the_final_one(monkeypatch):
    """http.client skips only 100 Continue: a 103 taken as the answer would leave the real one on the kept
    connection for the next request (second review). Refused, and the next request reads its own answer."""
    clear_proxy_env(monkeypatch)
    listener = _Hinting()
    port = listener.port
    try:
        for kind in KINDS:        # urllib3 too (third review: it pooled the connection with the answer on it)
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            with pytest.raises(ServiceResponseError):
                sender.send(HttpRequest("GET", f"http://127.0.0.1:{port}/hint"))
            assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{port}/second")).body() == b"/second"
            assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{port}/third")).body() == b"/third"
    finally:
        listener.close()


def _refused_then(sender, port: int, refused, good: str, body: bytes) -> None:
    """Each of ``refused`` is a ServiceResponseError; then ``good`` answers ``body`` on the same transport."""
    for path in refused:
        with pytest.raises(ServiceResponseError):
            sender.send(HttpRequest("GET", f"http://127.0.0.1:{port}{path}"))
    assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{port}{good}")).body() == body


def test_conflicting_content_lengths_in_an_answer_are_refused(monkeypatch):
    clear_proxy_env(monkeypatch)
    canned = _Canned({"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
                      "/list": b"HTTP/1.1 200 OK\r\nContent-Length: 3, 5\r\n\r\nabcde",
                      "/same": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc"})
    try:
        for kind in KINDS:
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            _refused_then(sender, canned.port, ("/two", "/list"), "/same", b"abc")
    finally:
        canned.close()


def test_after_sending_every_failure_is_a_response_error_on_both_transports(monkeypatch):
    """An answer whose head the email package cannot read came back as "nothing sent" from the urllib3
    transport (second review): the request had been sent, so ServiceResponseError on both."""
    clear_proxy_env(monkeypatch)
    bad = (b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary*=a; boundary*0=b\r\n"
           b"Content-Length: 0\r\n\r\n")
    canned = _Canned({"*": bad})
    try:
        for kind in KINDS:
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            with pytest.raises(ServiceResponseError):
                sender.send(HttpRequest("POST", f"http://127.0.0.1:{canned.port}/x", content=b"{}"))
        assert len(canned.requests) == 2
    finally:
        canned.close()


@pytest.mark.parametrize("value", [None, b"raw", True, "a\r\nInjected: 1"])
def test_a_header_value_that_is_not_text_is_refused_before_sending(monkeypatch, value):
    clear_proxy_env(monkeypatch)
    canned = _Canned({"*": RAW["/json"]})
    try:
        for kind in KINDS:
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            request = HttpRequest("GET", f"http://127.0.0.1:{canned.port}/x")
            request.headers["x-odd"] = value
            with pytest.raises(ServiceRequestError):
                sender.send(request)
        assert canned.requests == []
    finally:
        canned.close()


def test_a_connection_whose_send_broke_is_not_kept_even_with_an_answer(monkeypatch):
    clear_proxy_env(monkeypatch)
    answer = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 5\r\n\r\nlarge"      # no Connection: close
    listener = _EarlyAnswer(answer)
    try:
        sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
        r = sender.send(HttpRequest("POST", f"http://127.0.0.1:{listener.port}/t",
                                    content=b"x" * (8 << 20)))
        assert r.status_code == 413
        assert sum(len(v) for v in sender._idle.values()) == 0
    finally:
        listener.close()


def test_without_poll_kept_connections_are_still_reused(monkeypatch):
    """On a system without select.poll (Windows) the liveness check falls back to select, as urllib3's does
    (second review: every request opened a new connection)."""
    import select

    clear_proxy_env(monkeypatch)
    monkeypatch.delattr(select, "poll")
    canned = _Canned({"*": RAW["/json"]})
    try:
        sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
        for _ in range(3):
            assert sender.send(HttpRequest("GET", f"http://127.0.0.1:{canned.port}/x")).status_code == 200
        assert canned.connections == 1
    finally:
        canned.close()


def test_a_class_with_its_own_set_raw_gets_the_email_parser():
    import email.message

    class Lowering(http.client.HTTPMessage):
        def set_raw(self, name, value):
            super().set_raw(name.lower(), value)

    lines = _lines(b"X-A: 1\r\n\r\n")
    assert transport.fast_message(lines, Lowering) is None
    assert transport.fast_message(lines, email.message.EmailMessage) is not None
    transport.install_fast_headers()
    assert http.client.parse_headers(io.BytesIO(b"X-A: 1\r\n\r\n"), _class=Lowering).items() == [("x-a", "1")]


# ------------------------------------------------------------------ the third review's findings


def test_an_answer_sent_before_the_body_was_read_is_read_over_tls(monkeypatch):
    """Over TLS the early answer's close shows as an SSL EOF, not a reset (third review: the 413 was lost)."""
    import ssl

    from fakeacs import _make_certs

    ca, cert, private = _make_certs()
    clear_proxy_env(monkeypatch)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    answer = (b"HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 5\r\n\r\nlarge")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, private)

    class Tls(_EarlyAnswer):
        def on_connection(self, sock):
            super().on_connection(context.wrap_socket(sock, server_side=True))

    listener = Tls(answer)
    try:
        for _ in range(3):
            sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
            r = sender.send(HttpRequest("POST", f"https://localhost:{listener.port}/t", content=b"x" * (8 << 20)))
            assert r.status_code == 413 and r.body() == b"large"
    finally:
        listener.close()


def test_a_compressed_answer_is_decoded_within_bounds(monkeypatch):
    """Never asked for (Accept-Encoding: identity), decoded anyway, but a small answer must not inflate without
    bound, nor through more codings than urllib3 allows (third review)."""
    clear_proxy_env(monkeypatch)
    monkeypatch.setattr(transport, "MAX_DECODED_BYTES", 1 << 20)
    bomb = gzip.compress(b"\0" * (2 << 20))
    stacked = b"x"
    for _ in range(7):
        stacked = gzip.compress(stacked)
    canned = _Canned({
        "/bomb": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb,
        "/stacked": (b"HTTP/1.1 200 OK\r\nContent-Encoding: " + b", ".join([b"gzip"] * 7)
                     + b"\r\nContent-Length: %d\r\n\r\n" % len(stacked) + stacked),
        "/identity": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, identity\r\nContent-Length: %d\r\n\r\n"
                      % len(gzip.compress(b"plain")) + gzip.compress(b"plain")),
    })
    try:
        sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
        _refused_then(sender, canned.port, ("/bomb", "/stacked"), "/identity", b"plain")
    finally:
        canned.close()


def test_a_method_that_is_not_a_token_is_refused_before_sending(monkeypatch):
    clear_proxy_env(monkeypatch)
    canned = _Canned({"*": RAW["/json"]})
    try:
        for kind in KINDS:
            sender = getattr(transport, kind)(connection_timeout=2, read_timeout=5)
            with pytest.raises(ServiceRequestError):
                sender.send(HttpRequest("GE T", f"http://127.0.0.1:{canned.port}/x"))
        assert canned.requests == []
    finally:
        canned.close()


@pytest.mark.parametrize("authority", ["user:pw@127.0.0.1:{port}", "127.0.0.1:{port}\\@."])
def test_an_authority_urlsplit_and_urllib3_may_read_differently_goes_to_urllib3(monkeypatch, authority):
    """A user in the URL, a backslash: the host and port are whatever urllib3 makes of them, never urlsplit's
    reading (third review: `host:8080\\@./` went to host '.' port 80)."""
    clear_proxy_env(monkeypatch)
    canned = _Canned({"*": RAW["/json"]})
    try:
        sender = transport.DirectTransport(connection_timeout=2, read_timeout=5)
        try:
            sender.send(HttpRequest("GET", f"http://{authority.format(port=canned.port)}/x"))
        except (ServiceRequestError, ServiceResponseError):
            pass             # urllib3's own answer to it; what matters is who sent it
        assert sender._fallback is not None and not sender._idle
    finally:
        canned.close()
