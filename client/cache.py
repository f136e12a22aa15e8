"""Where tokens live after a flow, and how they are refreshed.

Two stores, chosen by the base URL's scheme (``--token-cache auto``):

* :class:`MsalStore` (``https``): MSAL Python 1.39 takes over.
  ``PublicClientApplication(client_id, oidc_authority=base_url,
  token_cache=SerializableTokenCache)``; the refresh token from the flow is
  handed over with ``acquire_token_by_refresh_token`` and later tokens come
  from ``acquire_token_silent`` (MSAL refreshes through the discovery
  document's ``token_endpoint``). The cache is MSAL's own serialization, in
  the ``--cache`` file.
* :class:`BuiltinStore` (``http``): MSAL Python refuses non-https authorities
  (``msal.authority.canonicalize``; contract §7.9), so the client redeems
  refresh tokens itself (``grant_type=refresh_token``, rotating the stored
  one) and keeps tokens in a sibling file ``<cache>.builtin.json``.

Both files are written atomically with mode 0600 in a 0700 directory. The
MSAL scopes exclude ``openid profile offline_access``, which MSAL always
adds itself (and refuses to be given).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .api import RESERVED_SCOPES, ApiError, ClientError, NativeAuthApi, TransportError
from .messages import describe

EXPIRY_MARGIN_SECONDS = 300  # like MSAL: a token expiring within 5 minutes is refreshed


class NotSignedIn(ClientError):
    pass


class InteractionRequired(ClientError):
    """A refresh asking for ``claims`` the session cannot satisfy (``invalid_grant``
    with suberror ``basic_action``): sign in again with those claims. A refused
    refresh changes nothing on the server, so the cached session is kept."""


def _interaction_required(suberror: Any) -> bool:
    return suberror == "basic_action"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (for display only)."""
    try:
        part = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return {}


def _client_info(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except ValueError:
        return {}


def write_private(path: Path, text: str) -> None:
    """Atomic replace; the file is 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.chmod(path, 0o600)


def split_scopes(scope: str) -> list[str]:
    return [s for s in scope.split() if s]


def msal_scopes(scope: str) -> list[str]:
    return [s for s in split_scopes(scope) if s not in RESERVED_SCOPES]


def builtin_path(cache_path: Path) -> Path:
    return cache_path.with_name(f"{cache_path.stem}.builtin{cache_path.suffix or '.json'}")


class TokenStore:
    kind = ""

    def describe(self) -> str:
        raise NotImplementedError

    def save_sign_in(self, tokens: dict[str, Any], scope: str) -> str:
        """Keep the outcome of a flow; returns the account's username."""
        raise NotImplementedError

    def access_token(self, scope: str, username: str | None, force_refresh: bool,
                     claims: str | None = None) -> tuple[str, str, str]:
        """``(access_token, source, username)``; source is ``cache`` or ``identity_provider``.

        With ``claims`` (a claims challenge of a protected API) the cache is
        bypassed and the refresh asks for them; :class:`InteractionRequired`
        when the session cannot satisfy them."""
        raise NotImplementedError

    def id_token_claims(self, username: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def usernames(self) -> list[str]:
        raise NotImplementedError

    def remove(self, username: str) -> bool:
        raise NotImplementedError


def _pick(items: list[Any], username: str | None, name_of, recency=None) -> Any:
    """The account named by ``username``; without one, the only account or,
    among several, the most recently used one (``recency``)."""
    if username:
        found = [i for i in items if (name_of(i) or "").lower() == username.lower()]
        if not found:
            raise NotSignedIn(f"{username} is not signed in here. Run `python -m client signin {username}`.")
        return found[0]
    if not items:
        raise NotSignedIn("Not signed in. Run `python -m client signin` first.")
    if len(items) > 1 and recency is not None:
        return max(items, key=recency)
    return items[0]


# ---------------------------------------------------------------------- MSAL Python (https)

class MsalStore(TokenStore):
    kind = "msal"

    def __init__(self, base_url: str, client_id: str, path: Path):
        import msal  # imported here: the http path never needs it

        self._msal = msal
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.path = path
        self.cache = msal.SerializableTokenCache()
        if path.exists():
            try:
                self.cache.deserialize(path.read_text(encoding="utf-8"))
            except ValueError:
                raise ClientError(f"The token cache {path} is not valid; remove it or run `python -m client signout`.") from None
        self._app = None

    @property
    def app(self):
        if self._app is None:
            try:
                self._app = self._msal.PublicClientApplication(
                    self.client_id, oidc_authority=self.base_url, token_cache=self.cache, instance_discovery=False)
            except ValueError as exc:
                raise ClientError(f"MSAL Python cannot use {self.base_url} as its OIDC authority: {exc}") from None
            except OSError as exc:  # requests' errors are OSErrors
                hint = (" If the server uses a private CA, point REQUESTS_CA_BUNDLE at its certificate."
                        if "SSL" in type(exc).__name__ or "CERTIFICATE" in str(exc) else "")
                raise TransportError(f"MSAL Python could not read {self.base_url}/.well-known/openid-configuration "
                                     f"({type(exc).__name__}).{hint}") from None
        return self._app

    def describe(self) -> str:
        return (f"MSAL Python {self._msal.__version__} (oidc_authority={self.base_url}), token cache {self.path}")

    def _persist(self) -> None:
        if self.cache.has_state_changed:
            write_private(self.path, self.cache.serialize())
            self.cache.has_state_changed = False

    def _fail(self, result: dict[str, Any]) -> ClientError:
        err = ApiError(400, result)
        return ClientError(describe(err))

    def save_sign_in(self, tokens: dict[str, Any], scope: str) -> str:
        result = self.app.acquire_token_by_refresh_token(tokens["refresh_token"], scopes=msal_scopes(scope))
        if "error" not in result:
            self._forget_older_sessions(result.get("refresh_token"))
        self._persist()
        if "error" in result:
            raise self._fail(result)
        claims = result.get("id_token_claims") or decode_jwt(tokens.get("id_token", ""))
        return claims.get("preferred_username") or claims.get("email") or claims.get("sub") or "?"

    def _forget_older_sessions(self, kept: str | None) -> None:
        """A new sign-in replaces the account's session: MSAL keys refresh tokens by
        scope too, so one of an earlier sign-in (other scopes) would stay next to it."""
        rt_type = self._msal.TokenCache.CredentialType.REFRESH_TOKEN
        mine = list(self.cache.search(rt_type, query={"client_id": self.client_id}))
        new = next((rt for rt in mine if kept and rt.get("secret") == kept), None)
        if new is None:
            return
        for rt in mine:
            if rt is not new and rt.get("home_account_id") == new.get("home_account_id") \
                    and rt.get("environment") == new.get("environment"):
                self.cache.remove_rt(rt)

    def _accounts(self) -> list[dict[str, Any]]:
        return self.app.get_accounts()

    def _last_used(self, account: dict[str, Any]) -> int:
        """When MSAL last wrote this account's refresh token (sign-in or refresh)."""
        rts = self.cache.search(self._msal.TokenCache.CredentialType.REFRESH_TOKEN,
                                query={"home_account_id": account.get("home_account_id"), "client_id": self.client_id})
        return max((int(rt.get("last_modification_time") or 0) for rt in rts), default=0)

    def access_token(self, scope: str, username: str | None, force_refresh: bool,
                     claims: str | None = None) -> tuple[str, str, str]:
        account = _pick(self._accounts(), username, lambda a: a.get("username"), self._last_used)
        # claims_challenge bypasses MSAL's access-token cache; MSAL keeps the refresh token on invalid_grant.
        result = self.app.acquire_token_silent_with_error(msal_scopes(scope), account, force_refresh=force_refresh,
                                                          claims_challenge=claims)
        self._persist()
        if not result:
            raise NotSignedIn("No token is cached for this scope and none could be refreshed. Sign in again.")
        if "error" in result:
            if claims and _interaction_required(result.get("suberror")):
                raise InteractionRequired(describe(ApiError(400, result)))
            raise self._fail(result)
        return result["access_token"], result.get("token_source", "cache"), account.get("username") or "?"

    def id_token_claims(self, username: str | None) -> dict[str, Any]:
        # Read the cache directly: no network needed to say who is signed in.
        accounts = list(self.cache.search(self._msal.TokenCache.CredentialType.ACCOUNT))
        host = urlparse(self.base_url).hostname
        accounts = [a for a in accounts if a.get("environment") == host]
        account = _pick(accounts, username, lambda a: a.get("username"), self._last_used)
        ids = list(self.cache.search(self._msal.TokenCache.CredentialType.ID_TOKEN,
                                     query={"home_account_id": account["home_account_id"], "client_id": self.client_id}))
        if not ids:
            raise NotSignedIn("No ID token is cached for this account. Sign in again.")
        return decode_jwt(ids[0]["secret"])

    def usernames(self) -> list[str]:
        host = urlparse(self.base_url).hostname
        return sorted({a.get("username", "?") for a in self.cache.search(self._msal.TokenCache.CredentialType.ACCOUNT)
                       if a.get("environment") == host})

    def remove(self, username: str) -> bool:
        accounts = [a for a in self._accounts() if (a.get("username") or "").lower() == username.lower()]
        for account in accounts:
            self.app.remove_account(account)
        self._persist()
        return bool(accounts)


# ---------------------------------------------------------------------- built-in (http)

class BuiltinStore(TokenStore):
    """Tokens per (base URL, client id, account) in a JSON file; refresh with
    ``grant_type=refresh_token`` and keep the rotated refresh token."""

    kind = "builtin"
    VERSION = 1

    def __init__(self, base_url: str, client_id: str, path: Path, api: NativeAuthApi):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.path = path
        self.api = api
        self.data: dict[str, Any] = {"version": self.VERSION, "accounts": []}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict) and isinstance(loaded.get("accounts"), list):
                    self.data = loaded
            except ValueError:
                raise ClientError(f"The token file {path} is not valid; remove it or run `python -m client signout`.") from None

    def describe(self) -> str:
        scheme = urlparse(self.base_url).scheme
        why = f"MSAL Python needs https, this base URL is {scheme}" if scheme != "https" \
            else "chosen with --token-cache builtin"
        return f"built-in refresh ({why}), token file {self.path}"

    def _mine(self) -> list[dict[str, Any]]:
        return [a for a in self.data["accounts"]
                if a.get("base_url") == self.base_url and a.get("client_id") == self.client_id]

    def _save(self) -> None:
        write_private(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    @staticmethod
    def _scope_key(scope: str) -> str:
        return " ".join(sorted(set(msal_scopes(scope))))

    def _apply(self, entry: dict[str, Any], tokens: dict[str, Any], scope: str) -> None:
        now = int(time.time())
        entry["refresh_token"] = tokens["refresh_token"]
        if tokens.get("id_token"):
            entry["id_token"] = tokens["id_token"]
        entry.setdefault("access_tokens", {})[self._scope_key(scope)] = {
            "access_token": tokens["access_token"], "scope": tokens.get("scope", scope),
            "expires_at": now + int(tokens.get("expires_in") or 0)}
        entry["updated_at"] = time.time()

    def save_sign_in(self, tokens: dict[str, Any], scope: str) -> str:
        claims = decode_jwt(tokens.get("id_token", ""))
        info = _client_info(tokens.get("client_info"))
        home = f"{info['uid']}.{info['utid']}" if info.get("uid") and info.get("utid") else claims.get("oid", "")
        username = claims.get("preferred_username") or claims.get("email") or claims.get("sub") or "?"
        mine = {id(a) for a in self._mine()}
        self.data["accounts"] = [a for a in self.data["accounts"] if not (
            id(a) in mine and (a.get("home_account_id") == home or a.get("username", "").lower() == username.lower()))]
        entry = {"base_url": self.base_url, "client_id": self.client_id, "home_account_id": home,
                 "username": username, "access_tokens": {}}
        self._apply(entry, tokens, scope)
        self.data["accounts"].append(entry)
        self._save()
        return username

    def access_token(self, scope: str, username: str | None, force_refresh: bool,
                     claims: str | None = None) -> tuple[str, str, str]:
        entry = _pick(self._mine(), username, lambda a: a.get("username"), self._last_used)
        cached = (entry.get("access_tokens") or {}).get(self._scope_key(scope))
        if cached and not force_refresh and not claims \
                and cached.get("expires_at", 0) - EXPIRY_MARGIN_SECONDS > time.time():
            return cached["access_token"], "cache", entry.get("username", "?")
        try:
            tokens = self.api.token("refresh_token", scope, refresh_token=entry["refresh_token"], claims=claims)
        except ApiError as exc:
            if claims and exc.error == "invalid_grant" and _interaction_required(exc.suberror):
                raise InteractionRequired(describe(exc)) from None  # the refresh token is still good
            if exc.error == "invalid_grant":
                self.data["accounts"] = [a for a in self.data["accounts"] if a is not entry]
                self._save()
                raise NotSignedIn(describe(exc) + " (The cached session was removed; sign in again.)") from None
            raise
        self._apply(entry, tokens, scope)  # the old refresh token is dead now: keep the rotated one at once
        self._save()
        return tokens["access_token"], "identity_provider", entry.get("username", "?")

    @staticmethod
    def _last_used(entry: dict[str, Any]) -> float:
        return float(entry.get("updated_at") or 0)

    def id_token_claims(self, username: str | None) -> dict[str, Any]:
        entry = _pick(self._mine(), username, lambda a: a.get("username"), self._last_used)
        return decode_jwt(entry.get("id_token", ""))

    def usernames(self) -> list[str]:
        return sorted(a.get("username", "?") for a in self._mine())

    def remove(self, username: str) -> bool:
        before = len(self.data["accounts"])
        mine = {id(a) for a in self._mine()}
        self.data["accounts"] = [a for a in self.data["accounts"] if not (
            id(a) in mine and a.get("username", "").lower() == username.lower())]
        if len(self.data["accounts"]) != before:
            self._save()
            return True
        return False


# ---------------------------------------------------------------------- choice

def open_store(choice: str, base_url: str, client_id: str, cache_path: Path, api: NativeAuthApi) -> TokenStore:
    scheme = urlparse(base_url).scheme.lower()
    if choice == "auto":
        choice = "msal" if scheme == "https" else "builtin"
    if choice == "msal":
        if scheme != "https":
            raise ClientError(f"MSAL Python accepts only https authorities, and {base_url} is {scheme} "
                              "(contract §7.9). Use --token-cache auto or builtin.")
        return MsalStore(base_url, client_id, cache_path)
    return BuiltinStore(base_url, client_id, builtin_path(cache_path), api)
