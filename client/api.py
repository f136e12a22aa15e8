"""The wire layer: form-encoded POSTs to the native-auth endpoints (contract §1, §3),
and JSON calls with a bearer token to the account API (``/me``, :meth:`NativeAuthApi.call`).

Every native-auth call sends ``client_id``; a 2xx body with ``challenge_type: redirect``
becomes :class:`RedirectRequired` (web fallback, §5.8); a non-2xx JSON body
becomes :class:`ApiError` with the contract's fields (§1.2) and, for the
account API, the ``WWW-Authenticate`` header (its claims challenge). Nothing
here prints or logs request bodies or tokens, so passwords and codes never
leave this module except on the wire.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import uuid
from typing import Any

import requests

from . import __version__

#: What the client can handle, sent on every start/challenge (contract §1.1).
CHALLENGE_TYPES = "oob password redirect"
CODE_ONLY_CHALLENGE_TYPES = "oob redirect"
# registration_after_mfa: this client can register a method after verifying another (shared/security/gate.py)
CAPABILITIES = "mfa_required registration_required registration_after_mfa"
RESERVED_SCOPES = ("openid", "profile", "offline_access")
TIMEOUT = 30


class ClientError(Exception):
    """Anything the CLI reports as a one-line message and exit status 1."""


class TransportError(ClientError):
    """The server could not be reached or did not answer with JSON."""


class RedirectRequired(ClientError):
    """The server asked for the browser (``challenge_type: redirect``)."""

    def __init__(self, reason: str | None):
        self.reason = reason or ""
        super().__init__(self.reason)


class ApiError(ClientError):
    """A contract-shaped error answer (``error``, ``suberror``, ``error_codes`` …)."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None,
                 www_authenticate: str | None = None):
        self.status = status
        #: The ``WWW-Authenticate`` header of a 401 from a protected API (claims challenge).
        self.www_authenticate = www_authenticate or ""
        self.body = body if isinstance(body, dict) else {}
        self.error = str(self.body.get("error") or f"http_{status}")
        self.suberror = self.body.get("suberror") or None
        codes = self.body.get("error_codes") or []
        self.error_codes = [c for c in codes if isinstance(c, int)] if isinstance(codes, list) else []
        self.continuation_token = self.body.get("continuation_token")
        try:
            self.retry_after = int(retry_after) if retry_after is not None else None
        except ValueError:
            self.retry_after = None
        super().__init__(f"{self.error} {self.suberror or ''} {self.error_codes}".strip())

    @property
    def description(self) -> str:
        """The server's human text: first line of ``error_description``
        without the ``AADSTS<code>: `` prefix (no trace ids)."""
        raw = str(self.body.get("error_description") or "")
        first = raw.splitlines()[0] if raw else ""
        if first.startswith("AADSTS") and ": " in first:
            first = first.split(": ", 1)[1]
        return first.strip()

    def has_code(self, *codes: int) -> bool:
        return any(c in self.error_codes for c in codes)

    @property
    def claims_challenge(self) -> str | None:
        """The decoded ``claims`` of a ``WWW-Authenticate: Bearer … claims="<base64>"``
        challenge (Entra / CAE format), as the JSON text to send back as ``claims``."""
        m = re.search(r'\bclaims="([^"]*)"', self.www_authenticate)
        if not m:
            return None
        raw = m.group(1)
        try:
            text = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True).decode("utf-8")
            parsed = json.loads(text)
        except (ValueError, binascii.Error):
            return None
        return text if isinstance(parsed, dict) else None


class NativeAuthApi:
    """One base URL + client id. Paths are relative to the base (contract §2)."""

    def __init__(self, base_url: str, client_id: str, *, verbose: bool = False,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.verbose = verbose
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"native-auth-cli/{__version__} (python-requests)"

    # ------------------------------------------------------------------ transport
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request; every transport failure becomes a :class:`TransportError` that says what to check."""
        try:
            return self.session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise TransportError(
                f"TLS verification failed for {self.base_url}: {exc}. If the server uses a private CA, "
                "point REQUESTS_CA_BUNDLE at its certificate.") from None
        except requests.ConnectionError as exc:
            m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
            reason = m.group(1) if m else type(exc).__name__
            raise TransportError(f"Cannot reach {self.base_url} ({reason}). Is the server running?") from None
        except requests.RequestException as exc:
            raise TransportError(f"Cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from None

    def post(self, path: str, **form: Any) -> dict[str, Any]:
        url = f"{self.base_url}/{path.lstrip('/')}"
        data = {"client_id": self.client_id, **{k: v for k, v in form.items() if v is not None}}
        headers = {"client-request-id": str(uuid.uuid4()), "Accept": "application/json"}
        # requests encodes a dict as application/x-www-form-urlencoded.
        r = self._send("POST", url, data=data, headers=headers)
        try:
            body = r.json()
        except ValueError:
            body = None
        if self.verbose:
            shown = ""
            if isinstance(body, dict):
                shown = " ".join(f"{k}={body[k]}" for k in ("error", "suberror", "error_codes", "challenge_type",
                                                            "challenge_channel", "status") if k in body)
            print(f"[http] POST /{path.lstrip('/')} -> {r.status_code} {shown}".rstrip(), file=sys.stderr)
        if not isinstance(body, dict):
            raise TransportError(f"POST {url} answered HTTP {r.status_code} without a JSON object.")
        if 200 <= r.status_code < 300:
            if body.get("challenge_type") == "redirect":
                raise RedirectRequired(body.get("redirect_reason"))
            return body
        raise ApiError(r.status_code, body, r.headers.get("Retry-After"))

    def call(self, method: str, path: str, token: str, body: dict[str, Any] | None = None
             ) -> tuple[int, dict[str, Any] | None]:
        """A JSON call to a protected API of the same base URL (the account API,
        ``/me``) with ``Authorization: Bearer``; returns ``(status, body)``
        (``body`` None for 204). Errors become :class:`ApiError` carrying the
        ``WWW-Authenticate`` header. Neither the token nor any body is printed."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                   "client-request-id": str(uuid.uuid4())}
        r = self._send(method, url, json=body, headers=headers)
        try:
            parsed = r.json() if r.content else None
        except ValueError:
            parsed = None
        if self.verbose:
            shown = ""
            if isinstance(parsed, dict) and not 200 <= r.status_code < 300:
                shown = " ".join(f"{k}={parsed[k]}" for k in ("error", "suberror", "error_codes") if k in parsed)
            print(f"[http] {method} /{path.lstrip('/')} -> {r.status_code} {shown}".rstrip(), file=sys.stderr)
        if 200 <= r.status_code < 300:
            if r.status_code == 204 or parsed is None:
                return r.status_code, None
            if not isinstance(parsed, dict):
                raise TransportError(f"{method} {url} answered HTTP {r.status_code} without a JSON object.")
            return r.status_code, parsed
        if r.status_code == 404 and not (isinstance(parsed, dict) and parsed.get("error_codes")):
            # The host's own 404 (no such route), not an answer of the API.
            raise ClientError(f"{self.base_url} has no account API ({method} /{path.lstrip('/')} answered 404).")
        if isinstance(parsed, dict):
            raise ApiError(r.status_code, parsed, r.headers.get("Retry-After"), r.headers.get("WWW-Authenticate"))
        raise TransportError(f"{method} {url} answered HTTP {r.status_code} without a JSON object.")

    # ------------------------------------------------------------------ sign-in (§3.4–3.7)
    def initiate(self, username: str, challenge_type: str = CHALLENGE_TYPES) -> dict:
        return self.post("oauth2/v2.0/initiate", username=username, challenge_type=challenge_type,
                         capabilities=CAPABILITIES)

    def signin_challenge(self, ct: str, challenge_type: str = CHALLENGE_TYPES, method_id: str | None = None) -> dict:
        return self.post("oauth2/v2.0/challenge", continuation_token=ct, challenge_type=challenge_type, id=method_id)

    def token(self, grant_type: str, scope: str, **form: Any) -> dict:
        return self.post("oauth2/v2.0/token", grant_type=grant_type, scope=scope, client_info="1", **form)

    def mfa_introspect(self, ct: str) -> dict:
        return self.post("oauth2/v2.0/introspect", continuation_token=ct)

    # ------------------------------------------------------------------ registration (§3.8–3.10)
    def register_introspect(self, ct: str) -> dict:
        return self.post("register/v1.0/introspect", continuation_token=ct)

    def register_challenge(self, ct: str, channel: str, target: str, challenge_type: str = "oob") -> dict:
        return self.post("register/v1.0/challenge", continuation_token=ct, challenge_type=challenge_type,
                         challenge_channel=channel, challenge_target=target)

    def register_continue(self, ct: str, grant_type: str, oob: str | None = None) -> dict:
        return self.post("register/v1.0/continue", continuation_token=ct, grant_type=grant_type, oob=oob)

    # ------------------------------------------------------------------ sign-up (§3.1–3.3)
    def signup_start(self, username: str, challenge_type: str, attributes: str | None) -> dict:
        return self.post("signup/v1.0/start", username=username, challenge_type=challenge_type,
                         capabilities=CAPABILITIES, attributes=attributes)

    def signup_challenge(self, ct: str, challenge_type: str) -> dict:
        return self.post("signup/v1.0/challenge", continuation_token=ct, challenge_type=challenge_type)

    def signup_continue(self, ct: str, grant_type: str, **form: Any) -> dict:
        return self.post("signup/v1.0/continue", continuation_token=ct, grant_type=grant_type, **form)

    # ------------------------------------------------------------------ reset (§3.11–3.15)
    def reset_start(self, username: str) -> dict:
        return self.post("resetpassword/v1.0/start", username=username, challenge_type=CODE_ONLY_CHALLENGE_TYPES,
                         capabilities=CAPABILITIES)

    def reset_challenge(self, ct: str) -> dict:
        return self.post("resetpassword/v1.0/challenge", continuation_token=ct,
                         challenge_type=CODE_ONLY_CHALLENGE_TYPES)

    def reset_continue(self, ct: str, oob: str) -> dict:
        return self.post("resetpassword/v1.0/continue", continuation_token=ct, grant_type="oob", oob=oob)

    def reset_submit(self, ct: str, new_password: str) -> dict:
        return self.post("resetpassword/v1.0/submit", continuation_token=ct, new_password=new_password)

    def reset_poll(self, ct: str) -> dict:
        return self.post("resetpassword/v1.0/poll_completion", continuation_token=ct)
