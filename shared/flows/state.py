"""Flow records and continuation tokens.

Every flow (sign-in, sign-up, reset, registration) is one entity in the
``flows`` table. The continuation token handed to the client is
``<partition>.<flow id>.<secret>``: the partition is the flow's creation hour
plus a shard character (so purging drops whole old partitions and no
partition is hot), the flow id is 128 random bits, the secret 256 random
bits. The table stores only SHA-256 of the secret. Every successful step
writes a new secret (rotation) with ``If-Match``; a wrong code keeps the
token (clients retry with it) and counts the attempt under the same ETag
rule, so attempts cannot race past the limit and a code is accepted once.

A sign-in or reset *start* writes nothing (:func:`start` with ``sealed``):
its token is ``s2.<sealed>``, the new flow's record encrypted and
authenticated (AES-256-GCM under a key derived from ``AUTH_CODE_HASH_KEY``),
and the next step's write *inserts* the record (create-only) instead of
updating it. A second use of the same start token meets the record and is
refused like any stale token (the insert's 409, then the secret compare), so
the start token is single use as before, one round trip cheaper at each of the
two steps (A115).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from shared.protocol import errors
from shared.security import otp
from shared.settings import MAX_FLOW_TTL_SECONDS, Settings
from shared.storage.directory import (USER_RK, User, UserExists, change_user, code_failures_field, get_user_by_key,
                                     update_user, user_key)
from shared.storage.tables import Conflict, Entity, Modified, NotFound, Storage, StorageError

_log = logging.getLogger("nativeauth.flows")

# \Z, not $: "$" also matches before a final newline, which would give a token a second spelling.
_TOKEN_RE = re.compile(r"^(f\d{10}[0-9a-f])\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})\Z")
_SEALED_RE = re.compile(r"^(s[12])\.([A-Za-z0-9_-]{64,8000})\Z")
# s2: the record goes to its address's partition of the users table (A116). s1 (before that layout, still
# accepted for the 15 minutes a start token lives): to the flows table, where the code before it stored it
# when used or burnt, so that a start token used before a deployment stays used after it (review finding).
_SEAL_AAD = b"nativeauth flow start v2"
_SEAL_PREFIX = "s2."
_SEAL_LAYOUTS = {"s1": (b"nativeauth flow start v1", False), "s2": (_SEAL_AAD, True)}
SEALED_KINDS = ("signin", "reset")
# A sign-in's, a reset's and a sign-up's record lives in its address's partition of the users table
# (PartitionKey = the address's key, RowKey = the flow id), beside the account's row when there is one:
# each step reads the flow and the account in one partition query, and writes to both go in one
# transaction. Its token is ``u1.<sealed locator>`` (the address's key is a plain hash of the address: it
# never travels in the clear). Flows of a name without an account are stored the same way (the same
# work, A17-A20, A52).
LOCATED_KINDS = ("signin", "reset", "signup")
_LOCATED_RE = re.compile(r"^u1\.([A-Za-z0-9_-]{150})\Z")
_LOCATE_INFO = b"nativeauth flow locator v1"
_USER_PK_RE = re.compile(r"^[0-9a-f]{64}\Z")
# The fields a sealed start may have besides the flow's id, client, times and secret: the client's
# choices and what the start found (``ident`` is not sealed: it is derived from the address again).
# Everything else is rebuilt from the template a start writes (_fresh), so even a holder of the key
# can seal nothing but a fresh start (A115).
SEALED_FIELDS = ("ident", "user_exists", "username", "challenge_types", "capabilities", "has_password")
CHALLENGE_TYPES = ("password", "oob", "redirect")   # the challenge types this service knows (contract §1.1)
MAX_CAS_RETRIES = 8
MAX_SENDS_PER_FLOW = 5  # security-baseline §8: at most 5 sends per challenge
T = TypeVar("T")


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _partition(now: float, flow_id: str) -> str:
    return "f" + time.strftime("%Y%m%d%H", time.gmtime(now)) + hashlib.sha256(flow_id.encode()).hexdigest()[0]


@dataclass
class Flow:
    entity: Entity
    secret: str  # the secret of the token the client presented (or was just given)
    token: str = ""  # set when the caller must hand a new token to the client
    changes: dict[str, Any] = field(default_factory=dict)
    # A right code judged but not yet consumed (redeem_code(defer=True)): the flow's next
    # conditional write (advance) carries its consumption and then credits the send.
    pending: dict[str, Any] = field(default_factory=dict)
    # The sealed start token this flow came from while its record is not stored yet
    # (no ``_etag``): its next write inserts the record.
    sealed: str = ""
    # The token the client presented (handed back unchanged by a step that only reads).
    given: str = ""
    # The account's row as read with the flow in one partition query (a flow in the users
    # table): ``account`` hands it out once, instead of a read of its own.
    account_row: Entity | None = None
    account_read: bool = False
    # Changes to the account that ride on the flow's next write, in one transaction with it
    # when the flow lives in the account's partition (:func:`defer_account_change`).
    account_changes: list["AccountChange"] = field(default_factory=list)

    @property
    def pk(self) -> str:
        return self.entity["PartitionKey"]

    @property
    def id(self) -> str:
        return self.entity["RowKey"]

    def __getitem__(self, name: str) -> Any:
        return self.entity.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.entity.get(name)
        return default if value is None else value

    def json(self, name: str, default: Any = None) -> Any:
        raw = self.entity.get(name)
        return json.loads(raw) if raw else default

    @property
    def steps(self) -> list[str]:
        return self.json("steps", [])

    @property
    def table(self) -> str:
        return _table_of(self.pk)


def _table_of(pk: str) -> str:
    """Where a flow's record lives: its address's partition of the users table, or the flows table."""
    return "users" if _USER_PK_RE.match(pk) else "flows"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """The bytes of a base64url text in its one spelling (no padding, no spare bits set), or None."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return raw if _b64(raw) == text else None


def _token(settings: Settings, pk: str, flow_id: str, secret: str) -> str:
    if _table_of(pk) == "flows":
        return f"{pk}.{flow_id}.{secret}"
    # The locator (the address's key and the flow id) and the secret, encrypted and authenticated under a
    # key of its own for each token (HKDF-like: HMAC of the seal key and 16 random bytes), so no nonce is
    # ever reused however many tokens one key makes.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = secrets.token_bytes(16)
    plain = bytes.fromhex(pk) + _unb64(flow_id) + _unb64(secret)   # 32 + 16 + 32 bytes
    box = AESGCM(_locator_key(settings.code_hash_key, salt)).encrypt(salt[:12], plain, _LOCATE_INFO)
    return "u1." + _b64(salt + box)


def _locator_key(key: bytes, salt: bytes) -> bytes:
    return hmac.new(_locator_root(key), salt, hashlib.sha256).digest()


@functools.lru_cache(maxsize=8)
def _locator_root(key: bytes) -> bytes:
    """The locators' key under one code hash key (derived once per key, not per token)."""
    return hmac.new(key, _LOCATE_INFO, hashlib.sha256).digest()


def _open_locator(settings: Settings, token: str) -> tuple[str, str, str] | None:
    """(partition, flow id, secret) of a ``u1.`` token one of this deployment's keys made, or None."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    m = _LOCATED_RE.match(token)
    blob = _unb64(m.group(1)) if m else None
    if blob is None or len(blob) != 16 + 80 + 16:
        return None
    salt, box = blob[:16], blob[16:]
    for key in (settings.code_hash_key, *settings.code_hash_keys_accepted):
        try:
            plain = AESGCM(_locator_key(key, salt)).decrypt(salt[:12], box, _LOCATE_INFO)
        except InvalidTag:
            continue
        return plain[:32].hex(), _b64(plain[32:48]), _b64(plain[48:])
    return None


# ------------------------------------------------------------------ sealed start tokens

@functools.lru_cache(maxsize=8)
def _seal_key(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(hmac.new(key, b"nativeauth continuation seal v1", hashlib.sha256).digest())


def _fresh(kind: str, client_id: str, flow_id: str, secret: str, started: float, expires_at: int,
           fields: dict[str, Any], *, located: bool = True) -> Entity:
    """The record a start writes (or seals): the one template of a new flow. ``located``
    False: in the flows table whatever its kind (a start token sealed before A116)."""
    ident = fields["ident"] if "ident" in fields else None
    located = located and kind in LOCATED_KINDS and isinstance(ident, str) and bool(_USER_PK_RE.match(ident))
    entity: Entity = {
        "PartitionKey": ident if located else _partition(started, flow_id), "RowKey": flow_id, "kind": kind, "client_id": client_id,
        "secret_hash": _secret_hash(secret), "created": int(started), "started": started,
        "expires_at": expires_at, "state": "started", "steps": "[]",
        "code_hash": "", "code_attempts": 0, "code_sends": 0, "code_sent_at": 0, "code_expires": 0,
    }
    entity.update({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in fields.items()})
    return entity


def _seal(settings: Settings, entity: Entity, secret: str) -> str:
    """The start token: what a fresh start's record is made of, and its secret,
    encrypted and authenticated.

    Only the flow's id, kind, client, start time, expiry and SEALED_FIELDS travel
    (the address's key not even that: it is derived from the address again); the
    rest is the template's. Booleans travel as 0/1 (named in ``b``) and the start
    time with six decimals, so two records that differ only in a flag
    (``user_exists``, ``has_password``) seal to tokens of the same length: the
    token's length depends only on what the client sent (A115, A17)."""
    if entity.get("ident") != user_key(entity["username"]):
        raise ValueError("a sealed start's key is its address's")
    fields = {k: entity[k] for k in SEALED_FIELDS if k in entity and k != "ident"}
    flags = sorted(k for k, v in fields.items() if isinstance(v, bool))
    body = {"k": entity["kind"], "c": entity["client_id"], "i": entity["RowKey"], "t": f"{float(entity['started']):.6f}",
            "x": int(entity["expires_at"]), "f": {k: (int(v) if isinstance(v, bool) else v) for k, v in fields.items()},
            "b": flags, "s": secret}
    plain = json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")
    nonce = secrets.token_bytes(12)
    sealed = _seal_key(settings.code_hash_key).encrypt(nonce, plain, _SEAL_AAD)
    return _SEAL_PREFIX + _b64(nonce + sealed)


def _unseal(settings: Settings, token: str) -> tuple[Entity, str] | None:
    """The record and secret in a start token, or None when no key (the current
    one, or one still accepted during a rotation) opens it."""
    from cryptography.exceptions import InvalidTag

    m = _SEALED_RE.match(token)
    if not m:
        return None
    aad, located = _SEAL_LAYOUTS[m.group(1)]
    # Only the one spelling this deployment wrote: base64's spare low bits in the last
    # character would otherwise give each token several spellings.
    blob = _unb64(m.group(2))
    if blob is None or len(blob) < 12 + 16:
        return None
    for key in (settings.code_hash_key, *settings.code_hash_keys_accepted):
        try:
            plain = _seal_key(key).decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            continue
        try:
            data = json.loads(plain)
        except (ValueError, RecursionError):     # not UTF-8, not JSON, nested too deep, a number too long
            return None
        return _rebuild(data, located=located) if isinstance(data, dict) else None
    return None


# What _rebuild accepts: exactly what _seal writes for a start.
_BODY_KEYS = {"k", "c", "i", "t", "x", "f", "b", "s"}
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}\Z")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")
_STARTED_RE = re.compile(r"^\d{10}\.\d{6}\Z")
_CAPABILITY_RE = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
_FLAGS = {"signin": ("has_password", "user_exists"), "reset": ("user_exists",)}
CLOCK_SKEW_SECONDS = 300
BODY_ROOM = 512   # of a request body, for the fields a step sends beside its continuation token


def _string_list(raw: Any, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    """The JSON list of short strings a start stores (each one of ``allowed``, or a plain capability name), or None."""
    try:
        values = json.loads(raw) if isinstance(raw, str) and len(raw) <= 4096 else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(values, list) or len(values) > 32 or not all(isinstance(v, str) for v in values):
        return None
    if not all((v in allowed) if allowed is not None else bool(_CAPABILITY_RE.match(v)) for v in values):
        return None
    return values


def _rebuild(data: Any, *, located: bool = True) -> tuple[Entity, str] | None:
    """A sealed start's record, rebuilt from the template; None unless it is one a
    start makes: each field is checked as a start writes it (even a holder of the
    key can seal nothing else, A115), and the address's key is derived from the
    address, never taken from the token."""
    from shared.protocol.identifiers import InvalidIdentifier, normalize_email

    try:
        if set(data) != _BODY_KEYS or not isinstance(data["t"], str) or not _STARTED_RE.match(data["t"]):
            return None
        kind, client_id, flow_id, secret = data["k"], data["c"], data["i"], data["s"]
        started, expires_at, fields, flags = float(data["t"]), data["x"], data["f"], data["b"]
        now = time.time()
        types = _string_list(fields["challenge_types"], CHALLENGE_TYPES) if isinstance(fields, dict) else None
        ok = (kind in SEALED_KINDS and isinstance(client_id, str) and 0 < len(client_id) <= 256
              and isinstance(expires_at, int) and not isinstance(expires_at, bool)
              and isinstance(flow_id, str) and _ID_RE.match(flow_id) is not None
              and isinstance(secret, str) and _SECRET_RE.match(secret) is not None
              and now - MAX_FLOW_TTL_SECONDS - CLOCK_SKEW_SECONDS <= started <= now + CLOCK_SKEW_SECONDS
              and 0 < expires_at - int(started) <= MAX_FLOW_TTL_SECONDS
              and isinstance(fields, dict) and isinstance(flags, list)
              and set(fields) == {"username", "challenge_types", "capabilities", *_FLAGS[kind]}
              and sorted(flags) == sorted(_FLAGS[kind])
              and all(type(fields[f]) is int and fields[f] in (0, 1) for f in flags)
              # an unknown name looks like a password account (signin.initiate)
              and (kind != "signin" or fields["user_exists"] == 1 or fields["has_password"] == 1)
              and isinstance(fields["username"], str) and normalize_email(fields["username"]) == fields["username"]
              and types is not None and "redirect" in types and (kind != "reset" or "oob" in types)
              and _string_list(fields["capabilities"]) is not None)
    except (KeyError, TypeError, ValueError, OverflowError, OSError, RecursionError, InvalidIdentifier):
        return None
    if not ok:
        return None
    values: dict[str, Any] = {k: (bool(v) if k in flags else v) for k, v in fields.items()}
    values["ident"] = user_key(values["username"])
    return _fresh(kind, client_id, flow_id, secret, started, expires_at, values, located=located), secret


def _parts(settings: Settings, token: str) -> tuple[str, str, str, Entity | None] | None:
    """(partition, flow id, secret, sealed record or None) of a well-formed token
    this deployment issued; None for anything else."""
    m = _TOKEN_RE.match(token or "")
    if m:
        pk, flow_id, secret = m.groups()
        return pk, flow_id, secret, None
    located = _open_locator(settings, token or "")
    if located is not None:
        return (*located, None)
    opened = _unseal(settings, token or "")
    if opened is None:
        return None
    entity, secret = opened
    return entity["PartitionKey"], entity["RowKey"], secret, entity


def burn_url_token(token: str, settings: Settings) -> None:
    """A continuation token that appeared in a request URL is in front-end, proxy
    and Application Insights logs: it is made useless (its flow's secret replaced
    by one nobody holds), whatever the request was and however it ended. The
    register endpoints, which accept the query-string form the docs show, replace
    it first and hand the client its successor; everywhere else (and for a register
    request refused before that) the flow must be started again. Best effort:
    a storage failure is logged."""
    from shared.storage.tables import StorageError, get_storage

    parts = _parts(settings, token)
    if parts is None:
        return
    pk, flow_id, secret, sealed = parts
    burnt = _secret_hash(secrets.token_urlsafe(32))
    try:
        table = get_storage(settings).table(_table_of(pk))
        if sealed is not None:   # a start token whose record is not stored yet: store it burnt
            try:
                table.insert({**sealed, "secret_hash": burnt})
                return
            except Conflict:
                pass
        entity = table.get(pk, flow_id)
        if entity is None or not hmac.compare_digest(_secret_hash(secret), entity.get("secret_hash", "")):
            return   # unknown, or already replaced (the register endpoints did it, with a successor)
        table.update({"PartitionKey": pk, "RowKey": flow_id, "secret_hash": burnt}, entity["_etag"])
    except Modified:
        return       # the flow moved on meanwhile: its token changed with it
    except StorageError as exc:
        _log.warning("a continuation token seen in a URL was not burnt: %s", type(exc).__name__)


def presented(flow: Flow) -> str:
    """The continuation token the client presented, handed back unchanged by
    a step that only reads (introspect): nothing was consumed or proven, so
    nothing needs a new token (and no write is spent on one)."""
    if flow.given or flow.token:
        return flow.given or flow.token
    raise ValueError("a flow neither loaded nor just written has no token to hand back")


def listing_token(storage: Storage, flow: Flow, state: str) -> str:
    """The token a listing step (an introspect) answers with: the presented one,
    without a write, when the flow is already in ``state``; after a challenge
    the flow goes back to ``state`` (one write, a new token)."""
    return presented(flow) if flow["state"] == state else advance(storage, flow, state=state).token


def start(storage: Storage, settings: Settings, kind: str, client_id: str, *, sealed: bool = False,
          **fields: Any) -> Flow:
    """Create a flow and its first continuation token (insert-if-absent).

    ``sealed``: nothing is written; the token carries the record (see the module
    docstring), and the flow's first write stores it. Only for records without
    secrets (a sign-in's or a reset's start: the address, the client's choices),
    since the client holds them, encrypted."""
    now = time.time()
    flow_id = secrets.token_urlsafe(16)
    secret = secrets.token_urlsafe(32)
    if sealed:
        if kind not in SEALED_KINDS or not set(fields) <= set(SEALED_FIELDS):
            raise ValueError("only a sign-in's or a reset's start, with its own fields, is sealed")
        now = float(f"{now:.6f}")    # as sealed, so the record is the same before and after
    entity = _fresh(kind, client_id, flow_id, secret, now, int(now) + settings.flow_ttl_seconds, fields)
    pk = entity["PartitionKey"]
    if sealed:
        token = _seal(settings, entity, secret)
        # A token this start hands out is one its next step accepts: what the client sent that the seal's
        # schema (or the token's length, or the deployment's body limit with room for the step's other
        # fields) does not take (dozens of capabilities, say) is stored as before. That depends only on
        # what the client sent, never on the account (A17).
        if len(token) <= settings.max_body_bytes - BODY_ROOM and _unseal(settings, token) == (entity, secret):
            return Flow(entity, secret, token, sealed=token)
    entity["_etag"] = storage.table(_table_of(pk)).insert(entity)
    return Flow(entity, secret, _token(settings, pk, flow_id, secret))


def load(storage: Storage, settings: Settings, token: str | None, client_id: str, kinds: tuple[str, ...]) -> Flow:
    """The flow a continuation token belongs to, or the contract's error.

    The token must be well-formed, its secret must be the current one, the
    flow must belong to this client and be of an expected kind, and it must
    not have expired. All failures other than expiry look the same.
    """
    if not token:
        raise errors.InvalidRequest("The request body must contain the 'continuation_token' parameter.")
    parts = _parts(settings, token)
    if parts is None:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    pk, flow_id, secret, sealed = parts
    # A sealed start token is judged on the record it carries, without a read: if the
    # record was stored since, the flow's first write meets it (advance, A115).
    account: Entity | None = None
    if sealed is not None:
        entity = sealed
    elif _table_of(pk) == "users":
        # The flow and its account (if any) in one partition query: one round trip, either way.
        rows = storage.table("users").query("PartitionKey eq @p and ( RowKey eq @f or RowKey eq @u )",
                                            {"p": pk, "f": flow_id, "u": USER_RK})
        entity = next((r for r in rows if r["RowKey"] == flow_id), None)
        account = next((r for r in rows if r["RowKey"] == USER_RK), None)
    else:
        entity = storage.table("flows").get(pk, flow_id)
    if entity is None:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    # Constant-time compare of fixed-length digests.
    if not hmac.compare_digest(_secret_hash(secret), entity.get("secret_hash", "")):
        raise errors.InvalidGrant("The continuation_token is not valid.")
    if entity.get("client_id") != client_id or entity.get("kind") not in kinds:
        raise errors.InvalidGrant("The continuation_token is not valid.")
    if time.time() >= min(int(entity.get("expires_at") or 0), int(entity.get("valid_until") or 2 ** 40)):
        raise errors.ExpiredToken()
    return Flow(entity, secret, sealed=token if sealed is not None else "", given=token,
                account_row=account, account_read=sealed is None and _table_of(pk) == "users")


def account(storage: Storage, flow: Flow) -> User | None:
    """The flow's account as it is now (None for a name without one): the row read
    with the flow in the same query when the flow lives in the account's partition
    (handed out once: a later need reads again), else a read of its own."""
    if not flow["ident"]:
        return None
    if flow.account_read and flow.pk == flow["ident"]:
        row, flow.account_row, flow.account_read = flow.account_row, None, False
        return User(row) if row is not None else None
    return get_user_by_key(storage, flow["ident"])


def reload(storage: Storage, flow: Flow) -> Flow:
    """Re-read after a 412; the presented secret must still be current."""
    entity = storage.table(flow.table).get(flow.pk, flow.id)
    if entity is None or not hmac.compare_digest(_secret_hash(flow.secret), entity.get("secret_hash", "")):
        raise errors.InvalidGrant("The continuation_token is no longer valid.")
    return Flow(entity, flow.secret)


@dataclass
class AccountChange:
    """A change of the account deferred to the flow's next write (:func:`_update`).

    ``view`` is the account as it will be (the caller goes on with it; its ETag is the
    row's as read until the change is written, then the new one); ``compute`` makes the
    change from a row, again when the row changed meanwhile. Kinds:

    * must land (the default: a password attempt's take-back): if the transaction
      cannot carry it, it is written on its own, before the flow's write;
    * ``tied`` (an account made, a method saved, a new password: what the step exists
      for): written only together with the flow's write, never before or without it;
    * ``best_effort`` (what a finished sign-in clears and records): written with the
      flow's write, or once after it from the row as last read, or dropped.

    ``check`` refuses the step (raises) for an account that changed so it may no
    longer go on (disabled, being deleted, a password reset since the flow began)."""
    view: User
    changes: dict[str, Any]
    base: User
    compute: Callable[[User], dict[str, Any] | None] | None
    best_effort: bool = False
    create: bool = False      # ``changes`` is a new account's row, inserted create-only
    tied: bool = False
    check: Callable[[User], None] | None = None


def defer_account_create(flow: Flow, entity: Entity) -> User:
    """Create an account with the flow's next write: one transaction (the account's row
    create-only and the flow's If-Match), so the account exists exactly when the flow
    says so. ``UserExists`` from that write when the account's row exists."""
    if flow.account_changes or flow.table != "users" or flow.pk != entity["PartitionKey"]:
        raise ValueError("an account is created with a write of a flow in its partition, and nothing else")
    view = User(dict(entity))
    flow.account_changes.append(AccountChange(view, dict(entity), User(dict(entity)), None, create=True, tied=True))
    return view


def defer_account_change(flow: Flow, base: User, compute: Callable[[User], dict[str, Any] | None], *,
                         best_effort: bool = False, tied: bool = False,
                         check: Callable[[User], None] | None = None) -> User:
    """Change the account with the flow's next write (see :class:`AccountChange`). Several
    changes in one step are written together, later ones over earlier ones. Returns the
    account as it will be (``base`` itself, changed in place, when a change is already
    deferred)."""
    if tied and (flow.account_changes or flow.table != "users" or flow.pk != base.pk):
        raise ValueError("a tied change is the step's only one, on the account whose partition holds the flow")
    if flow.account_changes and flow.account_changes[0].tied:
        raise ValueError("a tied change is the step's only one")
    changes = compute(base) or {}
    if flow.account_changes:
        view = flow.account_changes[0].view
        if base is not view:
            raise ValueError("a second deferred change must be made on the account the first one returned")
        view.entity.update(changes)
    else:
        view = User({**base.entity, **changes})
    if changes or check is not None:
        flow.account_changes.append(AccountChange(view, changes, User(dict(base.entity)), compute, best_effort,
                                                  tied=tied, check=check))
    return view


def _recompute(changes: list[AccountChange], fresh: User) -> None:
    """Every change computed again, in order, on the account's row as it is now."""
    entity = dict(fresh.entity)
    for change in changes:
        if change.create:
            continue
        change.base = User(dict(entity))
        change.changes = (change.compute(change.base) or {}) if change.compute is not None else {}
        entity.update(change.changes)
    view = changes[0].view
    view.entity.clear()
    view.entity.update(entity)


def _same_account(changes: list[AccountChange], fresh: User | None) -> User | None:
    """The row read again, if it is still the account the step began with (not one signed up at the same
    address after a deletion: its partition is the same, its object id is not)."""
    return fresh if fresh is not None and fresh.oid == changes[0].base.oid else None


def _write_must_land(storage: Storage, changes: list[AccountChange]) -> None:
    """The changes that must land, on their own: a read-modify-write retried on races, on the
    account the step began with only."""
    for change in changes:
        if change.best_effort or change.tied or change.compute is None:
            continue
        written = change_user(storage, change.base, change.compute)   # never onto another account (its oid)
        if written is None and _same_account([change], get_user_by_key(storage, change.base.pk)) is None:
            # The account is gone (deleted meanwhile, perhaps signed up again): the step cannot go on for it.
            raise errors.InvalidGrant("The continuation_token is not valid.")
        if written is not None:
            change.view.entity.clear()
            change.view.entity.update(written.entity)


def _write_best_effort(storage: Storage, changes: list[AccountChange]) -> None:
    """The best-effort changes once, computed on the account as last read, If-Match on it:
    another change since wins (nothing here is a counter that must not be lost)."""
    for change in changes:
        if not change.best_effort or change.compute is None:
            continue
        current = User(dict(change.view.entity))
        wanted = change.compute(current) or {}
        if not wanted:
            continue
        try:
            written = update_user(storage, current, **wanted)
            change.view.entity.update(written.entity)
        except (Modified, NotFound):
            pass
        except StorageError as exc:   # the flow is already written: the step has succeeded
            _log.warning("a finished step's account record was not written: %s", type(exc).__name__)


def _refuse_unless_allowed(storage: Storage, changes: list[AccountChange], fresh: User | None) -> None:
    """Run the changes' checks on the account as read again (gone: refused too); a step
    refused so still writes what must land (a take-back) on that account, then raises."""
    try:
        if fresh is None:
            raise errors.InvalidGrant("The continuation_token is not valid.")
        for change in changes:
            if change.check is not None:
                change.check(fresh)
    except errors.AuthError:
        for change in changes:
            change.base = fresh or change.base
        _write_must_land(storage, changes)
        raise


def settle_account_change(storage: Storage, flow: Flow) -> None:
    """Write the deferred changes that must land (a take-back) on their own, if no flow
    write has carried them; tied and best-effort ones are dropped (the step did not happen)."""
    changes, flow.account_changes = flow.account_changes, []
    _write_must_land(storage, changes)


def _update(storage: Storage, flow: Flow, data: dict[str, Any]) -> str:
    """The flow's If-Match write, with the deferred account changes in the same transaction
    when both rows share a partition.

    If the transaction fails because the flow changed, a ``tied`` change is not written
    and the write is refused as a lost race (A55, A112). If it failed on the account's
    row (the service names the failed operation), the account is read again, the step
    refused if it may no longer go on (``check``; what must land is written first), and
    every change computed again on the row as it is now and the transaction retried (a
    create finds the account exists: ``UserExists``). Otherwise (the flows table, or the
    flow changed), what must land is written on its own, then the flow's write alone
    (which fails when the flow changed), then the best-effort changes once."""
    changes, flow.account_changes = flow.account_changes, []
    table = storage.table(flow.table)
    row = {"PartitionKey": flow.pk, "RowKey": flow.id, **data}
    tied = any(c.tied for c in changes)
    checked = any(c.check is not None for c in changes)
    if changes and flow.table == "users" and all(c.base.pk == flow.pk for c in changes):
        for attempt in range(MAX_CAS_RETRIES):
            merged = {k: v for c in changes for k, v in c.changes.items()}
            if not merged and not checked:
                return table.update(row, flow.entity["_etag"])
            # With nothing to change but a ``check``, the account's row is still in the transaction (an
            # If-Match merge of no property): the step goes through only on the account it checked (review
            # finding: a sign-in recording nothing skipped the check).
            account = (("create", merged) if changes[0].create else
                       ("update", {"PartitionKey": flow.pk, "RowKey": USER_RK, **merged,
                                   "_etag": changes[0].base.entity["_etag"]}))
            try:
                etags = table.batch([("update", {**row, "_etag": flow.entity["_etag"]}), account])
                changes[0].view.entity["_etag"] = etags[1]
                return etags[0]
            except (Conflict, Modified, NotFound) as exc:
                # Only the create can conflict; otherwise the service names the failed operation (0, or no
                # index at all, is judged as the flow's: the safe reading for a tied change).
                if not (isinstance(exc, Conflict) or exc.index == 1):
                    if tied:
                        raise Modified("the flow changed") from None
                    break
                if changes[0].create:
                    raise UserExists(str(merged.get("email", ""))) from None
                fresh = _same_account(changes, get_user_by_key(storage, flow.pk))
                if fresh is None:
                    raise errors.InvalidGrant("The continuation_token is not valid.") from None
                _refuse_unless_allowed(storage, changes, fresh)
                _recompute(changes, fresh)
                time.sleep(random.uniform(0.002, 0.01 * (attempt + 1)))   # let the other writer finish
            # Any other StorageError goes up as it is: unknown whether it was written (an answer lost after the
            # commit), so the changes are not redone and a take-back is never applied twice (one counted
            # attempt too many at worst).
        else:
            _write_must_land(storage, changes)     # a take-back lands even when the step gives up (review finding)
            raise errors.InvalidGrant("The flow is busy; retry.")
    if checked and flow.table != "users":
        # A flow stored before A116 (flows table): the account is read again before the step's write.
        _refuse_unless_allowed(storage, changes, _same_account(changes, get_user_by_key(storage, changes[0].base.pk)))
    _write_must_land(storage, changes)
    etag = table.update(row, flow.entity["_etag"])
    _write_best_effort(storage, changes)
    return etag


class CodeRaced(errors.InvalidGrant):
    """The write that was to consume a right code (judged with ``defer``) lost a
    race: the code must be judged again on the flow as it is now."""


def advance(storage: Storage, flow: Flow, *, rotate: bool = True, **changes: Any) -> Flow:
    """Write a step with If-Match. A concurrent step on the same flow makes
    this fail with ``invalid_grant`` (so one code yields one success). A code
    judged right but not yet consumed (``flow.pending``) is consumed by this
    same write, and its send credited once the write has won."""
    if "expires_at" in changes:
        # The purge deletes a row soon after its expires_at, and a start token sealed with the first expiry
        # would then store the flow again (A115): a step shortens a flow's life through valid_until instead.
        raise ValueError("a flow's expires_at is never changed; set valid_until")
    data = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
            for k, v in {**flow.pending, **changes}.items()}
    if not flow.entity.get("_etag"):
        settle_account_change(storage, flow)     # a start's first write carries no account change
        flow, inserted = _store(storage, flow, data, rotate)
        if inserted:
            return flow
    secret = flow.secret
    if rotate:
        secret = secrets.token_urlsafe(32)
        data["secret_hash"] = _secret_hash(secret)
    try:
        etag = _update(storage, flow, data)
    except Modified:
        if flow.pending:
            raise CodeRaced("The continuation_token was already used.") from None
        raise errors.InvalidGrant("The continuation_token was already used.") from None
    except NotFound:   # the flow's row is gone (an account deletion, the purge): like any dead token
        raise errors.InvalidGrant("The continuation_token is not valid.") from None
    entity = {**flow.entity, **data, "_etag": etag}
    if flow.pending:
        _credit(storage, flow)
        flow.pending = {}      # written: redeem_code_then sees the code consumed
    if rotate:
        return Flow(entity, secret, _token(storage.settings, flow.pk, flow.id, secret))
    return Flow(entity, secret, given=flow.given or flow.token)   # the token the client holds stays current


def _store(storage: Storage, flow: Flow, data: dict[str, Any], rotate: bool) -> tuple[Flow, bool]:
    """The first write of a flow that came from a sealed start token: insert the
    record with the step's changes and a new secret (create-only), so one use of
    the start token wins and every other one meets the record. The record holds
    the start token's secret again only when a refused send put the flow back
    (:func:`restore`): then the token continues from the stored record, in the
    state it was sealed in. Returns ``(the inserted flow and its token, True)``
    or ``(the stored flow, False)`` for the caller to update."""
    if not rotate or flow.pending:
        # Every step after a start moves the flow on with a new token; a write that
        # would keep the start token (or carry a code) is not a step a start allows.
        raise errors.InvalidGrant("This flow does not expect that now.")
    secret = secrets.token_urlsafe(32)
    entity = {**{k: v for k, v in flow.entity.items() if not k.startswith("_")}, **data, "secret_hash": _secret_hash(secret)}
    try:
        etag = storage.table(flow.table).insert(entity)
    except Conflict:
        stored = reload(storage, flow)   # the secret must be the start token's: refused otherwise
        if stored["state"] != flow["state"]:
            raise errors.InvalidGrant("The continuation_token was already used.") from None
        return stored, False
    return Flow({**entity, "_etag": etag}, secret, _token(storage.settings, flow.pk, flow.id, secret)), True


def _credit(storage: Storage, flow: Flow) -> None:
    from shared.security import limits

    limits.credit(storage, limits.Ticket.from_json(flow.get("code_ticket")))  # a verified send


def restore(storage: Storage, before: Flow, after: Flow, **extra: Any) -> None:
    """Put a flow back as it was before ``after`` was written (a send that was
    reserved but then refused or failed): the same fields, the same secret, so
    the client may retry at once with its continuation token; ``extra`` fields
    are written with it. Best effort: if the flow changed again meanwhile, or
    storage is gone, it stays as is."""
    from shared.storage.tables import StorageError

    keys = [k for k in after.entity if not k.startswith("_") and k not in ("PartitionKey", "RowKey")
            and after.entity.get(k) != before.entity.get(k)]
    data = {k: before.entity.get(k, "") if before.entity.get(k) is not None else "" for k in keys}
    data.update(extra)
    try:
        storage.table(before.table).update({"PartitionKey": before.pk, "RowKey": before.id, **data}, after.entity["_etag"])
    except (Modified, StorageError):
        pass


def finish(storage: Storage, flow: Flow, **changes: Any) -> None:
    """End the flow: an If-Match update to ``done`` with a secret nobody has
    (``changes``: what else the same write carries, such as the sign-in log record).

    Not a delete: Table Storage answers a delete of a missing entity like a
    success (the SDK swallows the 404), so two racing deletes would both
    "win". Two racing updates cannot: the loser gets 412. The purge removes
    done flows with their partition.
    """
    advance(storage, flow, rotate=True, **changes, state="done", code_hash="")


MAX_PASSWORD_TRIES_PER_FLOW = 10


def count_password_try(storage: Storage, flow: Flow) -> Flow:
    """Count a new password submitted in this flow (sign-up, reset) before its
    policy check runs: each check costs up to ~0.35 s of CPU (zxcvbn) and an
    argon2 verification per previous password, so one flow may try only
    MAX_PASSWORD_TRIES_PER_FLOW of them; then it must start again (A53)."""
    tries = int(flow.get("password_tries") or 0)
    if tries >= MAX_PASSWORD_TRIES_PER_FLOW:
        raise errors.InvalidGrant("Too many passwords were tried in this flow. Start again.")
    return advance(storage, flow, rotate=False, password_tries=tries + 1)


# ------------------------------------------------------------------ codes

@dataclass(frozen=True)
class Code:
    value: str
    changes: dict[str, Any]


def new_code(settings: Settings, flow: Flow, purpose: str, channel: str, length: int, target: str = "") -> Code:
    """A fresh code for this flow. The changes replace any previous code, so a
    resend kills the old one (A7), and keep the per-flow send count."""
    now = int(time.time())
    value = otp.generate(length)
    sends = int(flow.get("code_sends", 0)) + 1
    challenge_id = f"{flow.id}:{sends}"
    return Code(value, {
        "code_hash": otp.digest(settings.code_hash_key, challenge_id, purpose, value),
        "code_purpose": purpose, "code_channel": channel, "code_target": target,
        "code_length": length, "code_attempts": 0, "code_sends": sends, "code_sent_at": now,
        "code_expires": now + settings.code_ttl_seconds, "code_used": False,
    })


def check_can_send(settings: Settings, flow: Flow, *, same_target: bool = True) -> None:
    """The per-flow send rules: the resend interval (for the same target) and at
    most MAX_SENDS_PER_FLOW codes per flow. Raises ``slow_down`` (HTTP 400 with Retry-After)."""
    wait = resend_wait(settings, flow)
    if wait and same_target:
        raise errors.SlowDown(f"Wait {wait} seconds before asking for another code.", retry_after=wait)
    if int(flow.get("code_sends", 0)) >= MAX_SENDS_PER_FLOW:
        raise errors.SlowDown("Too many codes were requested in this flow. Start again later.", retry_after=60)


def resend_wait(settings: Settings, flow: Flow) -> int:
    """Seconds until another code may be sent in this flow (0 = now)."""
    last = int(flow.get("code_sent_at", 0))
    if not last:
        return 0
    return max(0, last + settings.resend_interval_seconds - int(time.time()))


def code_matches(settings: Settings, flow: Flow, purpose: str, code: str) -> bool:
    challenge_id = f"{flow.id}:{int(flow.get('code_sends', 0))}"
    # The current key, then any key still accepted while a rotation reaches every instance (docs/deploy.md).
    return any(otp.matches(key, challenge_id, purpose, code, flow.get("code_hash"))
               for key in (settings.code_hash_key, *settings.code_hash_keys_accepted))


def redeem_code(storage: Storage, settings: Settings, flow: Flow, purpose: str, code: str | None,
                user=None, *, ident: str | None = None, defer: bool = False) -> Flow:
    """Verify a submitted code against the flow's open challenge and consume
    it, in one If-Match write; the only place codes are judged.

    * The comparison takes effect only through a write conditioned on the
      flow record it was made against: a right code marks the code used
      (``code_used``), a wrong one counts the attempt. If any other request
      changed the flow in between (another guess), the write fails, the flow
      is read again and judged again. So a right code that arrives in a burst
      after the attempt limit was reached gets the answer every wrong code
      gets (``TooManyAttempts``), never a distinct one (A03, A55).
    * Side effects (an account, a method) happen only after this returns, so
      never before the code is consumed (A55). The code stays readable by
      the flow: a retry of the same request with the same right code, after
      a later step failed, continues instead of being refused; any other
      code is refused once the code is used.
    * Wrong codes are also counted per account and channel (NIST §3.1.3.2:
      the count survives resends and flows). For a name without an account
      (``user`` None, ``ident`` given) the same work is done on a counter of
      its own, so a wrong code costs the same storage work either way (A52).

    * ``defer`` (through :func:`redeem_code_then` only): a right code is not
      written here; the flow returned carries its consumption to the next
      conditional write (the step's own), one round trip instead of two.

    Returns the flow (with its new ETag) when the code is right."""
    if not code:
        raise errors.InvalidRequest("The request body must contain the 'oob' parameter.")
    field = code_failures_field(flow.get("code_channel") or "email")
    if user is not None and int(user.entity.get(field) or 0) >= settings.account_max_code_failures:
        raise errors.TooManyAttempts("Too many wrong codes for this account on this channel. Contact support.")
    well_formed = len(code) <= 16 and code.isdigit()
    for _ in range(MAX_CAS_RETRIES):
        if flow.get("code_purpose") != purpose or not flow.get("code_hash"):
            raise errors.InvalidGrant("No code is waiting to be verified in this flow.")
        if flow.get("code_used"):
            if well_formed and time.time() < int(flow.get("code_expires", 0)) and code_matches(settings, flow, purpose, code):
                return flow  # the same request again, after a later step failed
            raise errors.InvalidGrant("No code is waiting to be verified in this flow.")
        attempts = int(flow.get("code_attempts", 0))
        if attempts >= settings.code_max_attempts:
            raise errors.TooManyAttempts()
        if time.time() >= int(flow.get("code_expires", 0)):
            raise errors.InvalidOob("The code has expired. Request a new code.")
        right = well_formed and code_matches(settings, flow, purpose, code)
        try:
            if right and defer:
                return Flow({**flow.entity, "code_used": True}, flow.secret, flow.token, flow.changes,
                            pending={"code_used": True})
            if right:
                used = advance(storage, flow, rotate=False, code_used=True)
                _credit(storage, used)
                return used
            flow = advance(storage, flow, rotate=False, code_attempts=attempts + 1)
        except errors.InvalidGrant:
            flow = reload(storage, flow)
            continue
        exc = errors.InvalidOob()
        if user is not None:
            change_user(storage, user, lambda u: {field: int(u.entity.get(field) or 0) + 1}, counter=True)
        elif ident:
            _count_unknown_code_failure(storage, ident, field)
        exc.log_user = user
        raise exc
    raise errors.InvalidGrant("The flow is busy; retry.")


def redeem_code_then(storage: Storage, settings: Settings, flow: Flow, purpose: str, code: str | None, user,
                     then: Callable[[Flow], T], *, ident: str | None = None) -> T:
    """Judge a code and continue with ``then``, whose first conditional write on
    the flow also consumes the code: for steps whose next effect *is* that write
    (a sign-in's end or its next requirement, a reset's verified state).

    * If that write loses a race, the code is judged again on the flow as it is
      now, through its own write (so a right code that lost to the attempt
      limit answers like a wrong one, A55), and ``then`` runs again.
    * If ``then`` answers before that write (the gate refused the claims,
      blocked, redirected), the code is consumed first by its own write, as a
      code consumed before the gate always was: that write may lose to the
      limit too, and then the limit's answer goes out instead, never a
      distinct one for a right code (A112)."""
    deferred = redeem_code(storage, settings, flow, purpose, code, user, ident=ident, defer=True)
    try:
        result = then(deferred)
    except CodeRaced:
        fresh = reload(storage, flow)
        return then(redeem_code(storage, settings, fresh, purpose, code, user, ident=ident))
    except StorageError:
        # Unknown whether the step's write happened (an answer lost after the commit): the code is not judged
        # again here, where the flow may have moved on (its refusal would replace the 503 the client must
        # see); an unwritten code stays waiting for the retry.
        raise
    except Exception:
        if deferred.pending:
            redeem_code(storage, settings, flow, purpose, code, user, ident=ident)
        raise
    if deferred.pending:
        redeem_code(storage, settings, flow, purpose, code, user, ident=ident)
    return result


def _count_unknown_code_failure(storage: Storage, ident: str, field: str) -> None:
    """The one write a known account's wrong code costs, for a name without one."""
    now = int(time.time())
    storage.table("limits").put({"PartitionKey": "codefail-" + ident[:40], "RowKey": time.strftime("%Y%m%d%H", time.gmtime(now)),
                                 "channel": field, "last_failed_at": now, "expires_at": now + 86400})
