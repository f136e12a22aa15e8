"""Users, their attributes and registered methods, and client applications.

A user is one entity in the ``users`` table keyed by a hash of the
normalised email (never the raw address): PartitionKey = ``hash_key("email",
email)``, RowKey = ``"user"``. Registered second-factor methods live inside
the user entity (``methods`` JSON) so that a sign-in reads one entity.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared.security import passwords
from shared.settings import Settings
from shared.storage.tables import Conflict, Entity, InstanceCache, Storage, hash_key

USER_RK = "user"
DELETING_SECONDS = 60   # a deletion's mark guards this long (shared/flows/account.delete_user)
# The "migrate on first sign-in" marker of an imported user without a password
# (Entra's extension_<app>_requiresMigration): its first password is checked
# by the client's passwordSubmit extension (shared/flows/signin.py), then
# stored; a password reset clears it too.
MIGRATE_FIELD = "migrate_password"


class UserExists(Exception):
    pass


CODE_CHANNELS = ("email", "sms")


def code_failures_field(channel: str) -> str:
    """Wrong codes are counted per channel (per factor, NIST §3.2.2): failing
    email codes must not disable the SMS factor, and the reverse."""
    return "code_failures_sms" if channel == "sms" else "code_failures_email"


def all_code_failures_cleared() -> dict[str, int]:
    return {code_failures_field(c): 0 for c in CODE_CHANNELS}


def user_key(email: str) -> str:
    return hash_key("email", email)


@dataclass
class User:
    entity: Entity

    @property
    def pk(self) -> str:
        return self.entity["PartitionKey"]

    @property
    def oid(self) -> str:
        return self.entity["oid"]

    @property
    def email(self) -> str:
        return self.entity["email"]

    @property
    def display_name(self) -> str:
        return self.entity.get("display_name") or ""

    @property
    def password_hash(self) -> str:
        return self.entity.get("password_hash") or ""

    @property
    def has_password(self) -> bool:
        return bool(self.password_hash)

    @property
    def password_migrating(self) -> bool:
        """Imported with the migration marker and no password yet: the legacy
        system (the passwordSubmit extension) judges its first password."""
        return bool(self.entity.get(MIGRATE_FIELD)) and not self.has_password

    @property
    def signs_in_with_password(self) -> bool:
        """Offered the password challenge: a stored password, or one still to migrate."""
        return self.has_password or self.password_migrating

    @property
    def disabled(self) -> bool:
        """Disabled by an administrator, or being deleted right now (its first pass runs while the account
        row still exists, and nothing may sign in or refresh then)."""
        return bool(self.entity.get("disabled")) or self.being_deleted

    @property
    def being_deleted(self) -> bool:
        """A deletion's mark, for the minute it guards (shared/flows/account.delete_user); an older mark is a
        deletion that died half-way."""
        started = float(self.entity.get("deleting_at") or 0)
        return bool(started) and time.time() - started < DELETING_SECONDS

    @property
    def methods(self) -> list[dict[str, Any]]:
        return json.loads(self.entity.get("methods") or "[]")

    def locked_until(self) -> int:
        return int(self.entity.get("lockout_until") or 0)


def get_user(storage: Storage, email: str) -> User | None:
    entity = storage.table("users").get(user_key(email), USER_RK)
    return User(entity) if entity else None


def get_user_by_key(storage: Storage, pk: str) -> User | None:
    entity = storage.table("users").get(pk, USER_RK)
    return User(entity) if entity else None


def create_user(storage: Storage, email: str, *, password: str | None = None, password_hash: str | None = None,
                display_name: str = "",
                attributes: dict[str, Any] | None = None, methods: list[dict[str, Any]] | None = None,
                password_reset_required: bool = False, migrate_password: bool = False,
                extra: dict[str, Any] | None = None) -> User:
    """Insert-if-absent: two concurrent sign-ups of one address make one account.

    ``password_hash`` may be an imported hash (``passwords.check_importable``);
    ``migrate_password`` sets the migration marker, for a user without a password."""
    return create_account(storage, new_user_entity(
        email, password=password, password_hash=password_hash, display_name=display_name, attributes=attributes,
        methods=methods, password_reset_required=password_reset_required, migrate_password=migrate_password,
        extra=extra))


def create_account(storage: Storage, entity: Entity) -> User:
    """Insert a new account's row (:func:`new_user_entity`); ``UserExists`` if the address has one."""
    entity = dict(entity)
    try:
        etag = storage.table("users").insert(entity)
    except Conflict:
        raise UserExists(entity.get("email", "")) from None
    entity["_etag"] = etag
    return User(entity)


def new_user_entity(email: str, *, password: str | None = None, password_hash: str | None = None,
                    display_name: str = "", attributes: dict[str, Any] | None = None,
                    methods: list[dict[str, Any]] | None = None, password_reset_required: bool = False,
                    migrate_password: bool = False, extra: dict[str, Any] | None = None) -> Entity:
    """The row of a new account (:func:`create_user` inserts it; a sign-up inserts it with its flow's write)."""
    if migrate_password and (password or password_hash):
        raise ValueError("the migration marker is for users without a password")
    now = int(time.time())
    entity: Entity = {
        "PartitionKey": user_key(email), "RowKey": USER_RK,
        "oid": str(uuid.uuid4()), "email": email, "display_name": display_name,
        "password_hash": password_hash or (passwords.hash_password(password) if password else ""),
        "password_changed_at": now if (password or password_hash) else 0,
        "password_reset_required": password_reset_required,
        "attributes": json.dumps(attributes or {}),
        "methods": json.dumps(methods or []),
        "created": now, "failed_logins": 0, "lockout_until": 0, "code_failures_email": 0, "code_failures_sms": 0,
        "rt_not_before": 0.0, "disabled": False,
        **({MIGRATE_FIELD: True} if migrate_password else {}),
        **(extra or {}),
    }
    return entity


def update_user(storage: Storage, user: User, **changes: Any) -> User:
    """Merge changes with If-Match; raises storage.Modified on a concurrent change."""
    entity = {"PartitionKey": user.pk, "RowKey": USER_RK, **changes}
    etag = storage.table("users").update(entity, user.entity.get("_etag"))
    merged = {**user.entity, **changes, "_etag": etag}
    return User(merged)


def change_user(storage: Storage, user: User, compute, attempts: int = 10, *, counter: bool = False) -> User | None:
    """Read-modify-write of a user under If-Match, retried on races.

    ``compute(user)`` returns the changes for the user as currently stored
    (or None for "nothing to change"); on a 412 the user is read again and
    ``compute`` runs again, so no concurrent change is lost. Returns the
    updated user, or None when nothing was changed or the user is gone (also
    when another account has its address now: same partition, another oid).

    ``counter=True`` is for failure counters only (wrong passwords, wrong
    codes): it retries up to 40 times with a growing backoff (a burst of
    parallel failures is counted in full), and if the record stays contended
    through all of them this increment is given up instead of failing the
    request. One increment can then be lost (never more:
    nothing is written from a stale read, so a counter never goes down and a
    lock is never cleared), and the answer never differs from a quiet one
    (no 503 that an unknown name never gets: an enumeration oracle)."""
    import logging

    from shared.storage.tables import Modified, NotFound, StorageUnavailable

    changes = None
    if counter:
        attempts = max(attempts, 40)  # a burst of parallel failures must still count them all
    for attempt in range(attempts):
        changes = compute(user)
        if not changes:
            return None
        try:
            return update_user(storage, user, **changes)
        except NotFound:
            return None         # the row went (an account deleted meanwhile): as when it is gone at a re-read
        except Modified:
            import random

            time.sleep(random.uniform(0.002, 0.03 * min(attempt + 1, 4)))  # let the concurrent writer finish
            fresh = get_user_by_key(storage, user.pk)
            if fresh is None or fresh.oid != user.oid:
                # Gone, or deleted and signed up again at the address (the same partition, another object id):
                # a change meant for one account never lands on the next one (an account takeover, A117).
                return None
            user = fresh
    if counter:
        logging.getLogger("nativeauth.directory").warning("failure counter contended: one increment given up")
        return None
    raise StorageUnavailable("the user record stayed contended")


# ------------------------------------------------------------------ clients

@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    enabled: bool = True


CLIENT_CACHE_SECONDS = 60.0
_client_cache = InstanceCache(CLIENT_CACHE_SECONDS)
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


def register_client(storage: Storage, client_id: str, name: str, *, enabled: bool = True) -> Client:
    storage.table("clients").put({"PartitionKey": "client", "RowKey": client_id, "name": name, "enabled": enabled})
    _client_cache.forget(client_id)
    return Client(client_id, name, enabled)


def get_client(storage: Storage, settings: Settings, client_id: str) -> Client | None:
    """Registered public clients, cached briefly per instance. In local mode the
    development client id is always registered."""
    if not _CLIENT_ID_RE.match(client_id or ""):
        return None
    if settings.dev_client_id and client_id == settings.dev_client_id:
        return Client(client_id, "Local development client")

    def read() -> Client | None:
        entity = storage.table("clients").get("client", client_id)
        return Client(client_id, entity.get("name", ""), bool(entity.get("enabled", True))) if entity else None

    return _client_cache.get(client_id, read)


def clear_client_cache() -> None:
    _client_cache.forget()
