"""A loopback imitation of Azure Communication Services (SMS + Email) for tests.

Endpoints (same shapes the real SDKs use; see
``azure/communication/sms/_generated/operations/_sms_operations.py`` and
``azure/communication/email/_operations/_operations.py``):

* ``POST /sms?api-version=2021-03-07``
  body ``{"from", "smsRecipients": [{"to", "repeatabilityRequestId",
  "repeatabilityFirstSent"}], "message", "smsSendOptions"}`` ->
  ``202 {"value": [{"to", "messageId", "httpStatusCode", "repeatabilityResult",
  "successful", "errorMessage"}]}``
* ``POST /emails:send?api-version=2025-09-01`` (optional ``Operation-Id``
  header; repeated ids are idempotent) -> ``202 {"id", "status": "Running"}``
  with ``Operation-Location: <endpoint>/emails/operations/<id>?api-version=...``
* ``GET /emails/operations/<id>?api-version=...`` -> ``200 {"id", "status"}``;
  ``Running`` for ``email_polls_until_done - 1`` polls, then ``Succeeded``
  (or ``Failed`` with an ``error`` for addresses in ``fail_email_addresses``).

Every request must carry a valid ACS HMAC signature, checked the way the
service checks it (and the way ``azure/communication/*/_shared/security/policy.py``
computes it)::

    x-ms-content-sha256 = base64(sha256(body))
    Authorization       = "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=<sig>"
    sig = base64(HMAC-SHA256(base64decode(access_key),
                 VERB + "\\n" + path_and_query + "\\n" + x-ms-date + ";" + host + ";" + content_hash))

Bad or missing signatures, a body that does not match its hash, or an
``x-ms-date`` more than 15 minutes off are answered ``401``.

TLS: ``SmsClient/EmailClient.from_connection_string`` drop the scheme of the
endpoint and always use ``https://`` (``parse_connection_str`` returns the
host only; the constructor prefixes ``https://``), so by default the fake
serves HTTPS with a throwaway CA + leaf certificate made with
``cryptography`` (SAN ``127.0.0.1`` / ``localhost``). Clients trust it via
the azure-core transport option ``connection_verify=fake.ca_file`` (see
``fake.client_kwargs``); nothing global (no ``SSL_CERT_FILE``) is changed.
``FakeAcs(tls=False)`` serves plain HTTP, usable only with the constructor
form ``SmsClient("http://127.0.0.1:PORT", AzureKeyCredential(key))``.

Faults: ``fake.fail_next("429", count, retry_after=7)``, ``fail_next("500")``,
``fail_next("hang", seconds=2)`` apply to the next ``count`` authenticated
requests (optionally only those whose path starts with ``path_prefix``).
A hung request is answered normally afterwards (if the client still listens),
like a slow service that did accept the message.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import json
import os
import re
import ssl
import tempfile
import threading
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_SKEW = dt.timedelta(minutes=15)

_cert_lock = threading.Lock()
_cert_files: tuple[str, str, str] | None = None  # (ca_file, cert_file, key_file)


def _make_certs() -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (cached per process)."""
    global _cert_files
    with _cert_lock:
        if _cert_files and all(os.path.exists(p) for p in _cert_files):
            return _cert_files
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakeacs test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        d = tempfile.mkdtemp(prefix="fakeacs-")
        ca_file, cert_file, key_file = (os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key"))
        with open(ca_file, "wb") as f:
            f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        _cert_files = (ca_file, cert_file, key_file)
        return _cert_files


def compute_signature(access_key: str, verb: str, path_and_query: str, date: str, host: str, content_hash: str) -> str:
    string_to_sign = f"{verb.upper()}\n{path_and_query}\n{date};{host};{content_hash}"
    digest = hmac.new(base64.b64decode(access_key), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context: ssl.SSLContext | None = None
    fake: "FakeAcs"

    def finish_request(self, request, client_address):  # TLS handshake in the worker thread
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):  # keep test output quiet
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_PUT(self) -> None:
        self.server.fake._handle(self)

    def do_DELETE(self) -> None:
        self.server.fake._handle(self)


class FakeAcs:
    """Start with ``with FakeAcs() as fake:`` or ``fake.start()`` / ``fake.stop()``."""

    def __init__(self, *, tls: bool = True, access_key: str | None = None, email_polls_until_done: int = 1,
                 email_retry_after: int | None = None) -> None:
        self.tls = tls
        self.access_key = access_key or base64.b64encode(os.urandom(32)).decode("ascii")
        self.email_polls_until_done = email_polls_until_done
        self.email_retry_after = email_retry_after
        self.fail_sms_numbers: set[str] = set()        # per-recipient failure (httpStatusCode 400)
        self.fail_email_addresses: set[str] = set()    # operation ends "Failed"
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self._requests: list[dict] = []
        self._faults: deque = deque()
        self._operations: dict[str, dict] = {}
        self._sms_repeatability: dict[str, dict] = {}
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_file: str | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "FakeAcs":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        if self.tls:
            ca_file, cert_file, key_file = _make_certs()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert_file, key_file)
            server.ssl_context = ctx
            self.ca_file = ca_file
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakeacs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "FakeAcs":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def client_kwargs(self) -> dict:
        """Extra SDK client kwargs so the azure-core transport trusts our CA."""
        return {"connection_verify": self.ca_file} if self.tls else {}

    # -- inspection -------------------------------------------------------
    @property
    def messages(self) -> list[dict]:
        """Accepted messages, oldest first: dicts with ``channel``, ``to``, ``from``
        and ``message`` (SMS) or ``subject``/``plainText``/``html`` (email), ``body``."""
        with self._lock:
            return list(self._messages)

    def sms(self) -> list[dict]:
        return [m for m in self.messages if m["channel"] == "sms"]

    def emails(self) -> list[dict]:
        return [m for m in self.messages if m["channel"] == "email"]

    @property
    def requests(self) -> list[dict]:
        """Every request seen: ``method``, ``path``, ``status``."""
        with self._lock:
            return list(self._requests)

    def fail_next(self, kind: str, count: int = 1, *, retry_after: int | None = None, seconds: float = 5.0,
                  path_prefix: str | None = None) -> None:
        """Make the next ``count`` authenticated requests fail: ``"429"`` (with
        ``Retry-After: retry_after`` if given), ``"500"``, ``"503"`` or
        ``"hang"`` (sleep ``seconds`` before answering normally)."""
        if kind not in ("429", "500", "503", "hang"):
            raise ValueError(kind)
        with self._lock:
            for _ in range(count):
                self._faults.append({"kind": kind, "retry_after": retry_after, "seconds": seconds,
                                     "path_prefix": path_prefix})

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self._requests.clear()
            self._faults.clear()

    # -- request handling -------------------------------------------------
    def _take_fault(self, path: str) -> dict | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault["path_prefix"] is None or path.startswith(fault["path_prefix"]):
                    del self._faults[i]
                    return fault
        return None

    def _respond(self, h: _Handler, status: int, body: Any = None, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        with self._lock:
            self._requests.append({"method": h.command, "path": h.path, "status": status})
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; charset=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("x-ms-request-id", str(uuid.uuid4()))
            client_request_id = h.headers.get("x-ms-client-request-id")
            if client_request_id:
                h.send_header("x-ms-client-request-id", client_request_id)
            for k, v in (headers or {}).items():
                h.send_header(k, str(v))
            h.end_headers()
            if data:
                h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            h.close_connection = True

    @staticmethod
    def _error(code: str, message: str) -> dict:
        return {"error": {"code": code, "message": message}}

    def verify_signature(self, method: str, target: str, headers: Any, body: bytes) -> str | None:
        """None when the request is properly signed, else why not."""
        auth = headers.get("Authorization") or ""
        m = re.fullmatch(r"HMAC-SHA256 (.+)", auth)
        if not m:
            return "missing HMAC-SHA256 authorization"
        params: dict[str, str] = {}
        for part in m.group(1).split("&"):
            k, sep, v = part.partition("=")
            if not sep:
                return "malformed authorization"
            params[k.strip()] = v.strip()
        signed_headers = params.get("SignedHeaders", "")
        signature = params.get("Signature", "")
        names = [n.strip().lower() for n in signed_headers.split(";") if n.strip()]
        if not signature or not {"host", "x-ms-content-sha256"} <= set(names) or not ({"x-ms-date", "date"} & set(names)):
            return "signed headers incomplete"
        content_hash = headers.get("x-ms-content-sha256") or ""
        expected_hash = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        if not hmac.compare_digest(content_hash, expected_hash):
            return "content hash mismatch"
        date = headers.get("x-ms-date") or headers.get("Date") or ""
        try:
            when = email.utils.parsedate_to_datetime(date)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
        except (TypeError, ValueError):
            return "bad date"
        if abs(dt.datetime.now(dt.timezone.utc) - when) > MAX_SKEW:
            return "date outside allowed skew"
        values = []
        for name in names:
            value = headers.get(name)
            if value is None:
                return f"signed header {name} missing"
            values.append(value)
        string_to_sign = f"{method.upper()}\n{target}\n" + ";".join(values)
        digest = hmac.new(base64.b64decode(self.access_key), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode("ascii"), signature):
            return "signature mismatch"
        return None

    def _handle(self, h: _Handler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        target = h.path
        path, _, query = target.partition("?")

        problem = self.verify_signature(h.command, target, h.headers, body)
        if problem:
            self._respond(h, 401, self._error("Denied", "Denied by the resource provider."),
                          {"WWW-Authenticate": "HMAC-SHA256"})
            return

        fault = self._take_fault(path)
        if fault:
            if fault["kind"] == "hang":
                if self._stop.wait(fault["seconds"]):
                    h.close_connection = True
                    return
            elif fault["kind"] == "429":
                headers = {"Retry-After": fault["retry_after"]} if fault["retry_after"] is not None else {}
                self._respond(h, 429, self._error("TooManyRequests", "Rate limit exceeded."), headers)
                return
            else:
                self._respond(h, int(fault["kind"]), self._error("InternalServerError", "Something went wrong."))
                return

        if "api-version=" not in query:
            self._respond(h, 400, self._error("MissingApiVersionParameter", "The api-version query parameter is required."))
            return
        if h.command == "POST" and path == "/sms":
            self._sms(h, body)
        elif h.command == "POST" and path == "/emails:send":
            self._email_send(h, body, query)
        elif h.command == "GET" and path.startswith("/emails/operations/"):
            self._email_status(h, path.rsplit("/", 1)[1])
        else:
            self._respond(h, 404, self._error("NotFound", "Resource not found."))

    def _json(self, h: _Handler, body: bytes) -> dict | None:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        if not isinstance(data, dict):
            self._respond(h, 400, self._error("BadRequest", "Request body is not a JSON object."))
            return None
        return data

    def _sms(self, h: _Handler, body: bytes) -> None:
        data = self._json(h, body)
        if data is None:
            return
        recipients = data.get("smsRecipients")
        if not data.get("from") or not isinstance(data.get("message"), str) or not data["message"] \
                or not isinstance(recipients, list) or not recipients:
            self._respond(h, 400, self._error("BadRequest", "from, message and smsRecipients are required."))
            return
        items = []
        for r in recipients:
            to = (r or {}).get("to", "")
            rid = (r or {}).get("repeatabilityRequestId")
            if not re.fullmatch(r"\+[1-9][0-9]{6,14}", to or ""):
                items.append({"to": to, "httpStatusCode": 400, "successful": False,
                              "errorMessage": "Invalid To phone number format."})
                continue
            if to in self.fail_sms_numbers:
                items.append({"to": to, "httpStatusCode": 400, "successful": False,
                              "errorMessage": "Recipient rejected."})
                continue
            with self._lock:
                if rid and rid in self._sms_repeatability:
                    items.append(dict(self._sms_repeatability[rid], repeatabilityResult="accepted"))
                    continue
                item = {"to": to, "messageId": f"Outgoing_{uuid.uuid4().hex}_noam", "httpStatusCode": 202,
                        "repeatabilityResult": "accepted", "successful": True}
                if rid:
                    self._sms_repeatability[rid] = item
                self._messages.append({"channel": "sms", "to": to, "from": data["from"], "message": data["message"],
                                       "body": data, "id": item["messageId"]})
            items.append(item)
        self._respond(h, 202, {"value": items})

    def _email_send(self, h: _Handler, body: bytes, query: str) -> None:
        data = self._json(h, body)
        if data is None:
            return
        content = data.get("content") or {}
        to_list = (data.get("recipients") or {}).get("to") or []
        if not data.get("senderAddress") or not to_list or not all(isinstance(t, dict) and t.get("address") for t in to_list) \
                or not content.get("subject") or not (content.get("plainText") or content.get("html")):
            self._respond(h, 400, self._error("BadRequest", "senderAddress, recipients.to and content are required."))
            return
        op_id = h.headers.get("Operation-Id") or str(uuid.uuid4())
        with self._lock:
            if op_id not in self._operations:
                failed = any(t["address"] in self.fail_email_addresses for t in to_list)
                self._operations[op_id] = {"polls": 0, "failed": failed}
                for t in to_list:
                    self._messages.append({
                        "channel": "email", "to": t["address"], "from": data["senderAddress"],
                        "subject": content.get("subject"), "plainText": content.get("plainText"),
                        "html": content.get("html"), "body": data, "id": op_id,
                        "operation_id_header": h.headers.get("Operation-Id"),
                    })
        headers = {"Operation-Location": f"{self.endpoint}/emails/operations/{op_id}?{query}"}
        if self.email_retry_after is not None:
            headers["Retry-After"] = self.email_retry_after
        self._respond(h, 202, {"id": op_id, "status": "Running"}, headers)

    def _email_status(self, h: _Handler, op_id: str) -> None:
        with self._lock:
            op = self._operations.get(op_id)
            if op is not None:
                op["polls"] += 1
                polls, failed = op["polls"], op["failed"]
        if op is None:
            self._respond(h, 404, self._error("NotFound", "Operation not found."))
            return
        if polls < self.email_polls_until_done:
            headers = {"Retry-After": self.email_retry_after} if self.email_retry_after is not None else {}
            self._respond(h, 200, {"id": op_id, "status": "Running"}, headers)
        elif failed:
            self._respond(h, 200, {"id": op_id, "status": "Failed",
                                   "error": {"code": "EmailDroppedAllRecipientsSuppressed",
                                             "message": "Message dropped because all recipients were suppressed."}})
        else:
            self._respond(h, 200, {"id": op_id, "status": "Succeeded"})
