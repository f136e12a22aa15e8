"""The HTTP transport under the Table SDK, and the standard library's header parsing made cheap.

Every Table operation is one HTTP request through azure-core's pipeline and a transport. Measured with
py-spy under load (bench/RESULTS.md), the storage SDK is most of the host's Python time, and a good
part of it is not Table work at all but generic HTTP plumbing:

* requests (per-request setup, ~/.netrc lookups): replaced in the fourth pass by urllib3's pools
  (:func:`Urllib3Transport`);
* urllib3 itself (parsing and percent-encoding every URL twice, character by character, its response
  wrapper and header dict): for the common case, an origin without a proxy, :class:`DirectTransport`
  keeps its own pool of ``http.client`` connections and hands anything unusual to urllib3;
* ``http.client.parse_headers``, which runs every response's header block through the email
  package's feed parser, and for a transaction's answer (``multipart/mixed`` with a boundary that is
  new each time) compiles a new regular expression per response: :func:`install_fast_headers`
  builds the same message directly for the common shape of header block, and leaves every other
  shape to the email package.

The same guarantees as the requests transport the SDK would use, decided by requests' own rules
where it has them: certificates verified (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, a file or a
directory, else certifi's bundle); the environment's proxies and ``NO_PROXY``, decided once per
origin; no redirects followed; no retries of its own (the SDK's retry policy decides); the connect
and read timeouts the pipeline passes; every failure raised as the azure-core error the retry policy
and ``tables._translate`` expect, ``ServiceRequestError`` only when nothing was sent.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any

PATCHED_AZURE_CORE = "1.41.0"   # requirements.txt pins it; another version gets azure-core's requests transport
PATCHED_PYTHON = (3, 11)        # the Functions runtime infra/ deploys; another Python keeps its own header parser


def ca_bundle() -> str | None:
    """The CA bundle the environment names, as requests reads it (REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def make(*, connection_timeout: float = 5, read_timeout: float = 10) -> Any:
    """The transport for a Table service client: :class:`DirectTransport` with the pinned azure-core
    (urllib3 for what it does not handle), else azure-core's requests transport with the environment
    read once."""
    import azure.core

    if azure.core.__version__ == PATCHED_AZURE_CORE:
        install_fast_headers()
        return DirectTransport(connection_timeout=connection_timeout, read_timeout=read_timeout)
    from urllib.request import getproxies

    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    session.trust_env = False      # no ~/.netrc lookup per request; the environment is read once here
    session.proxies.update(getproxies())
    session.verify = ca_bundle() or True
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=False)


# ------------------------------------------------------------------ header blocks


@functools.lru_cache(maxsize=1)
def _header_block():
    import re

    # Lines of a field name of the characters the email parser accepts (printable ASCII but ':'), then the
    # value, then CRLF, with no other CR or LF (the email parser splits lines on either of them alone); then
    # the blank line.
    return re.compile(r"(?:[!-9;-~]+:[^\r\n]*\r\n)*\r\n")


def fast_message(lines: list[bytes], message_class: Any) -> Any:
    """The message ``email.parser.Parser(_class=message_class).parsestr(b"".join(lines).decode("iso-8859-1"))``
    returns for ``lines`` as ``http.client._read_headers`` reads them, built directly; or None when the
    block has any other shape (a folded line, a bare LF, a line without a name, a ``message/*`` type, a
    multipart type without a boundary or with another transfer encoding, a class that takes no policy or
    has its own ``set_raw``),
    which the email parser then reads as it always did.

    Equal by construction to what the parser does with the common shape, and compared with it
    attribute by attribute on real answers, hand-made blocks and generated ones
    (tests/test_storage_transport.py):

    * each line ``name: value`` becomes the raw pair ``(name, value without leading blanks)``, as the
      compat32 policy's ``header_source_parse`` makes it;
    * the body after the blank line is empty (``http.client`` reads the body itself), so the payload
      is ``""``;
    * a multipart type with a boundary and nothing after its headers gets the two defects the parser
      records for that (the start boundary never found, then no parts), and an empty epilogue.
    """
    text = b"".join(lines).decode("iso-8859-1")
    if not _header_block().fullmatch(text):
        return None
    from email._policybase import compat32
    from email.message import Message

    if getattr(message_class, "set_raw", None) is not Message.set_raw:
        return None            # a class with its own set_raw gets the parser, which calls it
    try:
        message = message_class(policy=compat32)     # as the parser makes it
    except TypeError:
        return None
    pairs = message._headers            # noqa: SLF001 - what Message.set_raw appends to
    if len(text) > 2:
        for line in text[:-4].split("\r\n"):
            name, _, value = line.partition(":")
            pairs.append((name, value.lstrip(" \t")))
    kind = message.get_content_maintype()
    if kind == "message":
        return None
    message.set_payload("")
    if kind == "multipart":
        if message.get_boundary() is None or str(message.get("content-transfer-encoding", "8bit")).lower() \
                not in ("7bit", "8bit", "binary"):
            return None
        from email import errors

        message.defects.append(errors.StartBoundaryNotFoundDefect())
        message.epilogue = ""
        message.defects.append(errors.MultipartInvariantViolationDefect())
    return message


_installed = False


def install_fast_headers() -> None:
    """Replace ``http.client.parse_headers`` (used by every ``http.client`` response, so by urllib3 and
    by ``http.server``) with one that builds the common header block directly (:func:`fast_message`)
    and reads every other one as before. Only on the Python it was compared on, and only over the
    standard library's own function."""
    global _installed
    import http.client

    if _installed or sys.version_info[:2] != PATCHED_PYTHON:
        return
    original = http.client.parse_headers
    if getattr(original, "__module__", None) != "http.client":
        return
    read_headers = http.client._read_headers    # noqa: SLF001 - the same reading, the same limits

    def parse_headers(fp, _class=http.client.HTTPMessage):
        lines = read_headers(fp)
        message = fast_message(lines, _class)
        if message is None:
            import email.parser

            message = email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))
        return message

    parse_headers.original = original
    http.client.parse_headers = parse_headers
    _installed = True


# ------------------------------------------------------------------ proxies


def _authority_end(url: str) -> int:
    """Where a URL's authority ends: its first '/', '?' or '#' after the scheme's '://' (or its end)."""
    after = url.find("://") + 3
    ends = [i for i in (url.find(c, after) for c in "/?#") if i >= 0]
    return min(ends) if ends else len(url)


class _Proxies:
    """Which proxy, if any, an origin goes through: requests' rules, decided once per origin."""

    def __init__(self) -> None:
        self._of: dict[str, str | None] = {}     # scheme://host[:port] -> proxy URL or None
        self._lock = threading.Lock()

    def __call__(self, url: str) -> str | None:
        origin = url[:_authority_end(url)]
        if origin not in self._of:
            from requests.utils import get_environ_proxies, prepend_scheme_if_needed, select_proxy

            with self._lock:
                if origin not in self._of:
                    # requests reads NO_PROXY itself here (given one, it would set and unset it in
                    # os.environ, under other threads' feet): once per origin, then cached.
                    proxy = select_proxy(url, get_environ_proxies(url))
                    self._of[origin] = prepend_scheme_if_needed(proxy, "http") if proxy else None
        return self._of[origin]


MAX_DECODED_BYTES = 256 * 1024 * 1024   # an answer's body once decoded (never asked for compressed: a bound)
MAX_CODINGS = 5                          # stacked content codings, as urllib3 allows


@functools.lru_cache(maxsize=1)
def _token():
    import re

    return re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # an HTTP method (RFC 9110 token), as urllib3 checks it


def check_request(method: str, headers, body: bytes | str | None) -> bytes | str | None:
    """Raise ValueError (or UnicodeError) for a request that cannot be written as built, before it is
    handed to a connection, so that it is refused with nothing sent: a method that is not a token, a header
    http.client would refuse (:func:`check_head`), a Content-Length that is not the body's length once text
    is encoded as UTF-8 (azure-core counts a text body's characters; the bytes past the stated length
    would be read by the server as the next request on a kept connection). Returns the body as sent."""
    if not isinstance(method, str) or not _token().fullmatch(method):
        raise ValueError(f"invalid method {method!r}")
    check_head(headers)
    encoded = body.encode("utf-8") if isinstance(body, str) else body
    stated = [v for k, v in headers.items() if k.lower() == "content-length"]
    if stated and isinstance(encoded, (bytes, bytearray)):
        if len(stated) != 1 or str(stated[0]).strip() != str(len(encoded)):
            raise ValueError("the request's Content-Length is not its body's length")
    return encoded


def check_head(headers) -> None:
    """Raise ValueError (or UnicodeError) for a header http.client would refuse to write (its own rules, as
    urllib3 applies them: a name with a colon or a line break, a value with a line break not followed by a
    blank, a character outside Latin-1), or whose value is not text or a number. Checked before a request
    is handed to a connection, so that such a request is refused with nothing sent."""
    import http.client

    legal_name = http.client._is_legal_header_name        # noqa: SLF001 - http.client's own checks
    illegal_value = http.client._is_illegal_header_value  # noqa: SLF001
    for name, value in (headers.items() if hasattr(headers, "items") else headers):
        if not isinstance(name, str) or not legal_name(name.encode("ascii")):
            raise ValueError(f"invalid header name {name!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int)) or illegal_value(str(value).encode("latin-1")):
            raise ValueError(f"invalid value for header {name!r}")


def _azure_response(request, raw, headers, data: bytes):
    """azure-core's response for an answer read whole (as the SDK reads it), from either transport."""
    from azure.core.rest._http_response_impl import HttpResponseImpl

    response = HttpResponseImpl(
        request=request, internal_response=raw, status_code=raw.status, reason=raw.reason or "",
        headers=headers, content_type=headers.get("content-type"), stream_download_generator=None)
    response._content = data   # noqa: SLF001 - the body, already read
    return response


# ------------------------------------------------------------------ the direct transport


@functools.lru_cache(maxsize=1)
def _direct_transport_class():
    """Built on first use (once), so importing this module loads none of azure-core's transports."""
    import http.client
    import re
    import select
    import ssl
    import zlib
    from urllib.parse import urlsplit

    from azure.core.exceptions import (
        ServiceRequestError, ServiceRequestTimeoutError, ServiceResponseError, ServiceResponseTimeoutError,
    )
    from azure.core.pipeline.transport import HttpTransport
    from azure.core.rest._requests_basic import _CaseInsensitiveDict

    # A target urllib3 sends as it is (it percent-encodes anything else, and a '%' not followed by two hex
    # digits; it writes hex digits in upper case): the SDK's own, whose keys and values are already encoded.
    plain_target = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-F]{2})*\Z")
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    plain_authority = re.compile(rf"(?:{label}(?:\.{label})*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?")
    obsolete_fold = re.compile(r"(?:(?<![ \t])[ \t]+)?\r\n[ \t]+")      # urllib3's own
    decoders = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

    class DirectTransport(HttpTransport):
        """azure-core's transport contract on ``http.client`` connections kept per origin, for an
        origin without a proxy, an ``http``/``https`` URL whose path and query are printable ASCII,
        and a body of bytes or text (all the Table SDK sends). Anything else (a proxied origin, a URL
        urllib3 would percent-encode, another kind of body) goes to :func:`Urllib3Transport`, built on
        first need. A kept connection the server has closed (or written to unasked) is dropped before
        it is reused, as urllib3 does."""

        def __init__(self, *, connection_timeout: float, read_timeout: float, max_idle: int = 64) -> None:
            self._timeouts = (connection_timeout, read_timeout)
            self._max_idle = max_idle
            self._proxy = _Proxies()
            self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
            self._lock = threading.Lock()
            self._tls: ssl.SSLContext | None = None
            self._fallback: Any = None
            self._generation = 0      # close() starts a new one: connections in flight then are not kept

        def _urllib3(self):
            if self._fallback is None:
                with self._lock:
                    if self._fallback is None:
                        self._fallback = Urllib3Transport(connection_timeout=self._timeouts[0],
                                                          read_timeout=self._timeouts[1], proxies=self._proxy)
            return self._fallback

        def _context(self) -> ssl.SSLContext:
            if self._tls is None:
                import certifi

                ca = ca_bundle() or certifi.where()
                context = (ssl.create_default_context(capath=ca) if os.path.isdir(ca)
                           else ssl.create_default_context(cafile=ca))
                self._tls = context      # verifies the chain and the host name; TLS 1.2 at least
            return self._tls

        def _take(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection | None:
            while True:
                with self._lock:
                    idle = self._idle.get(origin)
                    conn = idle.pop() if idle else None
                if conn is None:
                    return None
                sock = conn.sock
                if sock is not None and not _readable(sock):
                    return conn
                conn.close()      # closed by the server (or it wrote unasked): not reused

        def _give_back(self, origin: tuple[str, str, int], conn: http.client.HTTPConnection, generation: int) -> None:
            with self._lock:
                idle = self._idle.setdefault(origin, [])
                if len(idle) < self._max_idle and generation == self._generation:
                    idle.append(conn)
                    return
            conn.close()      # more than the pool keeps, or taken before a close(): not kept

        def send(self, request, **kwargs):
            connect = kwargs.pop("connection_timeout", self._timeouts[0])
            read = kwargs.pop("read_timeout", self._timeouts[1])
            if isinstance(connect, tuple):      # azure-core's older (connect, read) form
                connect, read = connect
            url = request.url
            body = request.data
            try:
                parts = urlsplit(url)
                scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
            except ValueError:
                scheme = host = port = None
            target = _direct_target(url) if host else None
            if (scheme not in ("http", "https") or not host or target is None or getattr(request, "files", None)
                    or not (body is None or isinstance(body, (bytes, str))) or not _plain_headers(request.headers)
                    or self._proxy(url)):
                # anything else as urllib3 sends it: a proxy, a target it would rewrite, a body in chunks
                return self._urllib3().send(request, connection_timeout=connect, read_timeout=read)
            origin = (scheme, host, port or (443 if scheme == "https" else 80))
            try:
                body = check_request(request.method, request.headers, body)
                head = _head(request, target, body)
            except (ValueError, TypeError, UnicodeError, http.client.HTTPException) as err:
                # a request that cannot be written as built (a line break in a header value, a length that is
                # not the body's): refused before a connection is even taken
                raise ServiceRequestError(err, error=err) from err
            generation = self._generation
            conn = self._take(origin)
            if conn is None:
                try:
                    if scheme == "https":
                        conn = http.client.HTTPSConnection(host, origin[2], timeout=connect, context=self._context())
                    else:
                        conn = http.client.HTTPConnection(host, origin[2], timeout=connect)
                    conn.connect()
                except TimeoutError as err:      # socket.timeout is TimeoutError
                    _close(conn)
                    raise ServiceRequestTimeoutError(err, error=err) from err
                except (OSError, http.client.HTTPException, ValueError) as err:
                    # refused, unreachable, name resolution, a host http.client cannot write, TLS (a
                    # certificate not trusted)
                    _close(conn)
                    raise ServiceRequestError(err, error=err) from err
            try:
                conn.sock.settimeout(read)
                conn.putrequest(request.method, target, **head.skips)
                for name, value in head.headers:
                    conn.putheader(name, value)
            except (ValueError, TypeError, UnicodeError, http.client.HTTPException, OSError) as err:
                # http.client writes nothing before the head is complete (checked above already)
                conn.close()
                raise ServiceRequestError(err, error=err) from err
            except BaseException:
                conn.close()
                raise
            broken = False
            try:
                try:
                    conn.endheaders(body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as sent:
                    # The server may have answered (a 413, a refusal) and closed before reading the whole
                    # body: read its answer, as urllib3 does; the error stands only if there is none.
                    broken = True
                    try:
                        raw = conn.getresponse()
                    except Exception:  # noqa: BLE001 - no answer: the send's own error is the one to report
                        raise sent from None
                else:
                    raw = conn.getresponse()
                if 100 <= raw.status < 200:
                    # http.client skips only 100 Continue; any other interim answer (103) would leave the final
                    # one on the connection for the next request to read
                    raise http.client.HTTPException(f"interim answer {raw.status} as the final one")
                if len(_lengths(raw.msg.get_all("content-length") or ())) > 1:
                    raise http.client.HTTPException("conflicting Content-Length headers")
                data = raw.read()
            except TimeoutError as err:      # socket.timeout is TimeoutError
                conn.close()
                raise ServiceResponseTimeoutError(err, error=err) from err
            except Exception as err:  # noqa: BLE001 - the request may have been sent: never ServiceRequestError
                # the connection broke, the answer is not HTTP, or its head could not be read
                conn.close()
                raise ServiceResponseError(err, error=err) from err
            except BaseException:
                conn.close()
                raise
            if raw.will_close or broken:
                conn.close()       # a connection whose send broke is not kept, answer or not
            else:
                self._give_back(origin, conn, generation)
            combined: dict[str, str] = {}
            spelling: dict[str, str] = {}
            for name, value in raw.msg.items():       # repeated headers joined as urllib3 joins them
                if "\r\n" in value:
                    value = obsolete_fold.sub(" ", value)    # a folded value unfolded as urllib3 unfolds it
                low = name.lower()
                if low in combined:
                    combined[low] += ", " + value
                else:
                    combined[low], spelling[low] = value, name
            headers = _CaseInsensitiveDict({spelling[k]: v for k, v in combined.items()})
            # Never asked for (http.client sends Accept-Encoding: identity), decoded anyway as urllib3 decodes
            # it: gzip and deflate, several in the order applied; an encoding it does not know is left as is.
            codings = [c.strip() for c in headers.get("content-encoding", "").lower().split(",")
                       if c.strip() and c.strip() != "identity"]
            if data and codings and all(c in decoders for c in codings):
                try:
                    if len(codings) > MAX_CODINGS:
                        raise zlib.error(f"{len(codings)} content codings stacked (at most {MAX_CODINGS})")
                    for coding in reversed(codings):
                        data = _inflate(data, decoders[coding], coding)
                except (zlib.error, MemoryError) as err:
                    raise ServiceResponseError(err, error=err) from err
            return _azure_response(request, raw, headers, data)

        def open(self) -> None:
            pass

        def close(self) -> None:
            with self._lock:
                kept, self._idle = [c for idle in self._idle.values() for c in idle], {}
                self._generation += 1
                fallback = self._fallback
            for conn in kept:
                conn.close()
            if fallback is not None:
                fallback.close()

        def __enter__(self):
            return self

        def __exit__(self, *args) -> None:
            self.close()

    def _direct_target(url: str) -> str | None:
        """The request target as it is written in the URL (path and query, not re-spelled by urlsplit), when
        both the authority and the target are ones urlsplit and urllib3 read alike and urllib3 would send
        unchanged: a host name or a bracketed IPv6 address and an optional port from 1 to 65535 (no user, no
        percent-encoding, no backslash), then a path right after it, only the characters urllib3 leaves
        alone, no dot segment (which it removes); else None."""
        after, start = url.find("://") + 3, _authority_end(url)
        m = plain_authority.fullmatch(url[after:start])
        if not m or (m.group(1) is not None and not 1 <= int(m.group(1)) <= 65535):
            return None
        if start == len(url) or url[start] != "/":
            return None        # no path, or a query or fragment right after the host: urllib3's reading
        target = url[start:]
        if not plain_target.match(target):
            return None
        path = target.split("?", 1)[0]
        if any(segment in (".", "..") for segment in path.split("/")):
            return None
        return target

    def _plain_headers(headers) -> bool:
        """Header names and values of text (or numbers) and no Transfer-Encoding (a body in chunks): urllib3
        frames and checks anything else its own way."""
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, (str, int)) or isinstance(value, bool):
                return False
            if name.lower() == "transfer-encoding":
                return False
        return True

    class _Head:
        __slots__ = ("headers", "skips")

    def _head(request, target: str, body: bytes | None) -> _Head:
        """The request's head as http.client will write it (check_request has checked it), with the length,
        when missing, as urllib3 sets it."""
        head = _Head()
        headers = [(str(k), str(v)) for k, v in request.headers.items()]
        names = {k.lower() for k, _ in headers}
        if "content-length" not in names and "transfer-encoding" not in names:
            if body is not None:
                headers.append(("Content-Length", str(len(body))))
            elif request.method.upper() not in ("GET", "HEAD", "DELETE", "TRACE", "OPTIONS", "CONNECT"):
                headers.append(("Content-Length", "0"))      # as urllib3 does
        head.headers = headers
        head.skips = {"skip_host": "host" in names, "skip_accept_encoding": "accept-encoding" in names}
        return head

    def _close(conn) -> None:
        if conn is not None:
            conn.close()

    def _readable(sock) -> bool:
        """Whether a kept connection has something to read: the server closed it (or wrote unasked)."""
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                return bool(poller.poll(0))
            return bool(select.select([sock], [], [], 0)[0])     # no poll (Windows): as urllib3 falls back
        except (OSError, ValueError):
            return True

    def _inflate(data: bytes, wbits: int, encoding: str) -> bytes:
        """One content coding undone, at most MAX_DECODED_BYTES of output (a small answer can inflate to
        gigabytes); a truncated stream is an error, not a shorter body."""
        if encoding == "deflate":
            try:
                return _bounded(zlib.decompressobj(wbits), data)[0]
            except zlib.error:
                return _bounded(zlib.decompressobj(-zlib.MAX_WBITS), data)[0]   # raw deflate, as urllib3 takes it
        out, size = [], 0
        while data:            # a gzip body may hold several members, one after the other
            chunk, data = _bounded(zlib.decompressobj(wbits), data, size)
            out.append(chunk)
            size += len(chunk)
        return b"".join(out)

    def _bounded(stream, data: bytes, already: int = 0) -> tuple[bytes, bytes]:
        room = MAX_DECODED_BYTES - already
        chunk = stream.decompress(data, room + 1)
        if len(chunk) > room or stream.unconsumed_tail:
            raise zlib.error(f"the decoded answer is larger than {MAX_DECODED_BYTES} bytes")
        if not stream.eof:
            raise zlib.error("truncated compressed stream")
        return chunk, stream.unused_data

    def _lengths(values) -> set[int | str]:
        """The Content-Length values of an answer, as urllib3 reads them (comma-separated, as numbers)."""
        found: set[int | str] = set()
        for value in values:
            for part in value.split(","):
                part = part.strip()
                found.add(int(part) if part.isdigit() else part)
        return found

    return DirectTransport


def DirectTransport(**kwargs):  # noqa: N802 - a class, built lazily
    return _direct_transport_class()(**kwargs)


# ------------------------------------------------------------------ urllib3, for everything else


@functools.lru_cache(maxsize=1)
def _urllib3_transport_class():
    """Built on first use (once), so importing this module loads neither urllib3 nor azure-core's transports."""
    import urllib3
    from azure.core.exceptions import (
        ServiceRequestError, ServiceRequestTimeoutError, ServiceResponseError, ServiceResponseTimeoutError,
    )
    from azure.core.pipeline.transport import HttpTransport
    from azure.core.rest._requests_basic import _CaseInsensitiveDict
    from requests.utils import get_auth_from_url

    class Urllib3Transport(HttpTransport):
        """azure-core's transport contract on urllib3's pools, without the requests
        layer between them (a quarter of the SDK's client-side cost, bench/RESULTS.md,
        fourth pass): for proxied origins and anything :class:`DirectTransport` does
        not send itself, with the guarantees the module's docstring lists (proxies:
        ``HTTP(S)_PROXY``, ``ALL_PROXY``, credentials in the proxy URL, a proxy
        without a scheme, ``NO_PROXY`` hosts, ports, suffixes and CIDR ranges)."""

        def __init__(self, *, connection_timeout: float, read_timeout: float, proxies: _Proxies | None = None) -> None:
            import certifi

            self._timeouts = (connection_timeout, read_timeout)
            ca = ca_bundle() or certifi.where()
            self._tls = {"ca_cert_dir": ca} if os.path.isdir(ca) else {"ca_certs": ca}
            self._proxy = proxies or _Proxies()
            self._pools: dict[str, urllib3.PoolManager] = {}
            self._lock = threading.Lock()

        def _pool(self, url: str) -> urllib3.PoolManager:
            proxy = self._proxy(url)
            key = proxy or ""
            pool = self._pools.get(key)
            if pool is None:
                with self._lock:
                    pool = self._pools.get(key)
                    if pool is None:
                        options = dict(num_pools=4, maxsize=64, block=False, cert_reqs="CERT_REQUIRED", **self._tls)
                        if proxy:
                            user, password = get_auth_from_url(proxy)
                            headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else {}
                            pool = urllib3.ProxyManager(proxy, proxy_headers=headers, **options)
                        else:
                            pool = urllib3.PoolManager(**options)
                        self._pools[key] = pool
            return pool

        def send(self, request, **kwargs):
            if getattr(request, "files", None):
                raise ServiceRequestError("multipart form uploads are not supported by this transport")
            connect = kwargs.pop("connection_timeout", self._timeouts[0])
            read = kwargs.pop("read_timeout", self._timeouts[1])
            if isinstance(connect, tuple):      # azure-core's older (connect, read) form
                connect, read = connect
            try:
                check_request(request.method, request.headers, request.data)
            except (ValueError, UnicodeError) as err:
                raise ServiceRequestError(err, error=err) from err      # nothing sent
            raw = None
            try:
                raw = self._pool(request.url).urlopen(
                    request.method, request.url, body=request.data, headers=dict(request.headers),
                    retries=False, redirect=False, timeout=urllib3.Timeout(connect=connect, read=read),
                    preload_content=False, decode_content=True)
                if 100 <= raw.status < 200:
                    # urllib3 takes any interim answer but 100 (a 103) for the answer and would pool the
                    # connection with the real one still on it: closed, refused
                    raw.close()
                    raise urllib3.exceptions.ProtocolError(f"interim answer {raw.status} as the final one")
                data = raw.read(decode_content=True)
                raw.release_conn()
            except urllib3.exceptions.NewConnectionError as err:      # (a ConnectTimeoutError subclass)
                raise ServiceRequestError(err, error=err) from err
            except urllib3.exceptions.ConnectTimeoutError as err:
                raise ServiceRequestTimeoutError(err, error=err) from err
            except (urllib3.exceptions.LocationValueError, urllib3.exceptions.ProxyError) as err:
                # a URL it cannot use, a proxy it could not reach: the request did not leave
                raise ServiceRequestError(err, error=err) from err
            except urllib3.exceptions.ReadTimeoutError as err:
                raise ServiceResponseTimeoutError(err, error=err) from err
            except Exception as err:  # noqa: BLE001 - past the connection, the request may have been sent
                # broken connections, answers that are not HTTP or whose head cannot be read, TLS errors
                # (at the handshake or later: which one is not said), anything urllib3 raises midway
                if raw is not None:
                    raw.close()
                    raw.release_conn()
                raise ServiceResponseError(err, error=err) from err
            headers = _CaseInsensitiveDict(raw.headers)
            return _azure_response(request, raw, headers, data)

        def open(self) -> None:
            pass

        def close(self) -> None:
            with self._lock:
                pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                pool.clear()

        def __enter__(self):
            return self

        def __exit__(self, *args) -> None:
            self.close()

    return Urllib3Transport


def Urllib3Transport(**kwargs):  # noqa: N802 - a class, built lazily
    return _urllib3_transport_class()(**kwargs)
