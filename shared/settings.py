"""One typed settings object, read once from the environment.

The variable names are the Function App setting names (and the names in
``local.settings.json``). ``infra/`` sets exactly these in Azure; the test
suite checks that the two lists agree (``SETTING_NAMES``).

Settings refuse to change once read (frozen dataclass); tests build their own
with ``Settings.from_env(env)``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
from typing import Mapping

# The longest a flow may live (AUTH_FLOW_TTL_SECONDS's bound; a sealed start token's expiry is checked
# against it, shared/flows/state.py).
MAX_FLOW_TTL_SECONDS = 900

DEV_CLIENT_ID = "00000000-0000-0000-0000-000000000001"
DEV_TENANT_ID = "00000000-0000-0000-0000-0000000000aa"
LOCAL_ISSUER = "http://127.0.0.1:7071/api"
# access_as_user: the sample API; account: the account API (/api/me) of the signed-in user.
DEFAULT_RESOURCES = {"api://native-auth": ["access_as_user", "account"]}
# SMS only to these countries unless configured (security-baseline §0 item 10: a conservative allow-list).
DEFAULT_SMS_COUNTRIES = "US,CA,GB,IE,DE,AT,CH,FR,NL,BE,LU,DK,SE,NO,FI,IS,ES,PT,IT,AU,NZ"
# Azurite's documented development account (public well-known key, not a secret).
AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


class SettingsError(ValueError):
    """A setting is missing or malformed (raised at start-up, not per request)."""


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


def _int(value: str, name: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from exc
    if not lo <= n <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {n}")
    return n


KEY_VAULT_REFERENCE = "@microsoft.keyvault("
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$|^[A-Za-z0-9_-]+={0,2}$")
# Azure table names: ^[A-Za-z][A-Za-z0-9]{2,62}$; the prefix is followed by the longest table suffix.
TABLE_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
TABLE_PREFIX_MAX = 63 - len("signinlog")


def unresolved_reference(value: str | None) -> bool:
    """App Service leaves ``@Microsoft.KeyVault(...)`` in a setting whose Key
    Vault reference it could not resolve (identity or role not ready, wrong
    secret URI): the literal text, which must never be used as a value."""
    return isinstance(value, str) and value.strip().lower().startswith(KEY_VAULT_REFERENCE)


def _secret(value: str, name: str) -> bytes:
    """Secrets are given as base64 (standard or URL-safe) or hex: 32 to 512
    bytes of key material, strictly parsed. Anything else (an unresolved Key
    Vault reference above all) is refused, never turned into a key."""
    raw = value.strip()
    if unresolved_reference(raw):
        raise SettingsError(f"{name} is an unresolved Key Vault reference: App Service could not read the secret "
                            "(the identity's 'Key Vault Secrets User' role may still be propagating, or the secret "
                            "URI is wrong); docs/deploy.md 'Key Vault references'")
    if _HEX.match(raw) and len(raw) >= 64:
        key = bytes.fromhex(raw)
    elif _BASE64.match(raw) and len(raw) % 4 != 1:
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_" if ("-" in raw or "_" in raw) else None,
                                   validate=True)
        except ValueError as exc:
            raise SettingsError(f"{name} is not valid base64 or hex key material") from exc
    else:
        raise SettingsError(f"{name} is not valid base64 or hex key material")
    if not 32 <= len(key) <= 512:
        raise SettingsError(f"{name} must hold 32 to 512 bytes of key material (got {len(key)})")
    return key


@dataclasses.dataclass(frozen=True)
class Settings:
    environment: str  # "local" or "azure"
    # storage
    storage_connection_string: str | None
    storage_table_endpoint: str | None
    storage_client_id: str | None
    table_prefix: str
    # identity of this issuer
    issuer: str
    tenant_id: str
    dev_client_id: str | None
    resources: Mapping[str, tuple[str, ...]]
    # secrets
    code_hash_key: bytes
    signing_key_secret: bytes
    code_hash_keys_accepted: tuple[bytes, ...]        # also accepted when checking codes (rotation)
    signing_key_secrets_accepted: tuple[bytes, ...]   # also tried when decrypting signing keys (rotation)
    # HTTP
    cors_allowed_origins: tuple[str, ...]
    max_body_bytes: int
    # behaviour
    enumeration_protection: bool
    email_code_length: int
    sms_code_length: int
    code_ttl_seconds: int
    code_max_attempts: int
    account_max_code_failures: int
    resend_interval_seconds: int
    flow_ttl_seconds: int
    lockout_threshold: int
    lockout_base_seconds: int
    lockout_max_seconds: int
    access_token_ttl_seconds: int
    id_token_ttl_seconds: int
    refresh_idle_seconds: int
    refresh_absolute_seconds: int
    refresh_grace_seconds: int
    signing_key_rotation_days: int
    # delivery
    delivery: str  # "outbox" or "acs"
    outbox_path: str
    acs_endpoint: str | None
    acs_connection_string: str | None
    acs_client_id: str | None
    email_sender: str | None
    sms_sender: str | None
    app_name: str
    # conditional access, risk and SMS fraud limits
    country_header: str | None
    anonymizer_ranges: tuple[str, ...]
    risk_ip_accounts_per_hour: int
    trusted_proxy_hops: int
    sms_allowed_countries: tuple[str, ...]
    default_phone_region: str | None
    sample_auth_context: str
    account_resource: str
    account_auth_context: str
    account_freshness_seconds: int
    # sign-up and passwords
    password_min_length: int
    signup_attributes: tuple[dict, ...]
    extensions_app_id: str
    # send limits (shared/security/limits.py)
    sms_per_destination_hour: int
    sms_per_destination_day: int
    sms_per_prefix_hour: int
    sms_global_hour: int
    sms_cooldown_seconds: int
    email_per_destination_hour: int
    email_global_minute: int
    email_global_hour: int
    email_cooldown_seconds: int
    sends_per_ip_hour: int
    sends_per_account_hour: int
    new_method_per_destination_hour: int
    new_method_unverified_per_account_hour: int
    signup_starts_per_ip_hour: int
    local_developer_relief: bool
    storage_trace: bool
    signinlog_write_ms: int
    pumping_prefix_unverified: int
    pumping_country_unverified: int
    pumping_min_conversion_percent: int
    pumping_suspend_seconds: int
    pumping_suspend_country: bool

    @property
    def is_local(self) -> bool:
        return self.environment == "local"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env

        unresolved = sorted(k for k, v in env.items() if k.startswith("AUTH_") and unresolved_reference(v))
        if unresolved:
            raise SettingsError(f"unresolved Key Vault reference in {', '.join(unresolved)}: App Service could not "
                                "read the secret (role still propagating, or a wrong secret URI); nothing is issued "
                                "until it resolves (docs/deploy.md 'Key Vault references')")

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else default

        environment = (get("AUTH_ENVIRONMENT", "azure") or "azure").lower()
        if environment not in ("local", "azure"):
            raise SettingsError("AUTH_ENVIRONMENT must be 'local' or 'azure'")
        local = environment == "local"

        conn = get("AUTH_STORAGE_CONNECTION_STRING")
        endpoint = get("AUTH_STORAGE_TABLE_ENDPOINT")
        if conn and conn.strip().lower() == "usedevelopmentstorage=true":
            conn = AZURITE_CONNECTION_STRING  # azure-data-tables does not understand the shorthand
        if not conn and not endpoint:
            if local:
                conn = AZURITE_CONNECTION_STRING
            else:
                raise SettingsError("set AUTH_STORAGE_TABLE_ENDPOINT (managed identity) or AUTH_STORAGE_CONNECTION_STRING")

        def secret(name: str) -> bytes:
            value = get(name)
            if value is None:
                if not local:
                    raise SettingsError(f"{name} is required outside local mode")
                # Local mode only: a stable development value derived from the name.
                return hashlib.sha256(b"local-development-only:" + name.encode()).digest()
            return _secret(value, name)

        def accepted(name: str) -> tuple[bytes, ...]:
            """Extra keys accepted for reading only (a rotation in progress: docs/deploy.md)."""
            return tuple(_secret(v, name) for v in (get(name, "") or "").split(",") if v.strip())

        table_prefix = get("AUTH_TABLE_PREFIX", "nativeauth") or "nativeauth"
        if not TABLE_PREFIX_RE.match(table_prefix) or len(table_prefix) > TABLE_PREFIX_MAX:
            raise SettingsError(f"AUTH_TABLE_PREFIX must be a letter followed by letters or digits, at most "
                                f"{TABLE_PREFIX_MAX} characters (table names are the prefix plus e.g. 'signinlog')")

        resources_raw = get("AUTH_RESOURCES")
        try:
            resources = json.loads(resources_raw) if resources_raw else DEFAULT_RESOURCES
            resources = {str(k): tuple(str(s) for s in v) for k, v in resources.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise SettingsError('AUTH_RESOURCES must be JSON like {"api://x": ["read"]}') from exc

        origins_default = "http://localhost:*,http://127.0.0.1:*" if local else ""
        origins = tuple(o.strip().rstrip("/") for o in (get("AUTH_CORS_ALLOWED_ORIGINS", origins_default) or "").split(",") if o.strip())

        delivery = (get("AUTH_DELIVERY", "outbox" if local else "acs") or "").lower()
        if delivery not in ("outbox", "acs"):
            raise SettingsError("AUTH_DELIVERY must be 'outbox' or 'acs'")
        if delivery == "outbox" and not local:
            raise SettingsError("AUTH_DELIVERY=outbox writes codes to a file and the console: local mode only")

        i = lambda name, default, lo, hi: _int(get(name, str(default)), name, lo, hi)  # noqa: E731
        return cls(
            environment=environment,
            storage_connection_string=conn,
            storage_table_endpoint=endpoint,
            storage_client_id=get("AUTH_STORAGE_CLIENT_ID"),
            table_prefix=table_prefix,
            issuer=(get("AUTH_ISSUER", LOCAL_ISSUER if local else None) or _missing("AUTH_ISSUER")).rstrip("/"),
            tenant_id=get("AUTH_TENANT_ID", DEV_TENANT_ID) or DEV_TENANT_ID,
            dev_client_id=(get("AUTH_DEV_CLIENT_ID", DEV_CLIENT_ID) if local else get("AUTH_DEV_CLIENT_ID")),
            resources=resources,
            code_hash_key=secret("AUTH_CODE_HASH_KEY"),
            signing_key_secret=secret("AUTH_SIGNING_KEY_SECRET"),
            code_hash_keys_accepted=accepted("AUTH_CODE_HASH_KEY_ACCEPTED"),
            signing_key_secrets_accepted=accepted("AUTH_SIGNING_KEY_SECRET_ACCEPTED"),
            cors_allowed_origins=origins,
            max_body_bytes=i("AUTH_MAX_BODY_BYTES", 64 * 1024, 1024, 1024 * 1024),
            enumeration_protection=_bool(get("AUTH_ENUMERATION_PROTECTION", "true"), "AUTH_ENUMERATION_PROTECTION"),
            email_code_length=i("AUTH_EMAIL_CODE_LENGTH", 8, 6, 10),
            sms_code_length=i("AUTH_SMS_CODE_LENGTH", 6, 6, 10),
            code_ttl_seconds=i("AUTH_CODE_TTL_SECONDS", 600, 60, 600),
            code_max_attempts=i("AUTH_CODE_MAX_ATTEMPTS", 5, 1, 10),
            account_max_code_failures=i("AUTH_ACCOUNT_MAX_CODE_FAILURES", 100, 5, 100),
            resend_interval_seconds=i("AUTH_RESEND_INTERVAL_SECONDS", 60, 0, 600),
            flow_ttl_seconds=i("AUTH_FLOW_TTL_SECONDS", 900, 60, MAX_FLOW_TTL_SECONDS),
            lockout_threshold=i("AUTH_LOCKOUT_THRESHOLD", 10, 3, 100),
            lockout_base_seconds=i("AUTH_LOCKOUT_BASE_SECONDS", 60, 1, 3600),
            lockout_max_seconds=i("AUTH_LOCKOUT_MAX_SECONDS", 900, 1, 86400),
            access_token_ttl_seconds=i("AUTH_ACCESS_TOKEN_TTL_SECONDS", 900, 60, 86400),
            id_token_ttl_seconds=i("AUTH_ID_TOKEN_TTL_SECONDS", 3600, 60, 86400),
            refresh_idle_seconds=i("AUTH_REFRESH_IDLE_SECONDS", 14 * 86400, 60, 90 * 86400),
            refresh_absolute_seconds=i("AUTH_REFRESH_ABSOLUTE_SECONDS", 90 * 86400, 60, 365 * 86400),
            refresh_grace_seconds=i("AUTH_REFRESH_GRACE_SECONDS", 10, 0, 10),
            signing_key_rotation_days=i("AUTH_SIGNING_KEY_ROTATION_DAYS", 30, 1, 365),
            delivery=delivery,
            outbox_path=get("AUTH_OUTBOX_PATH", ".local/outbox.jsonl") or ".local/outbox.jsonl",
            acs_endpoint=get("AUTH_ACS_ENDPOINT"),
            acs_connection_string=get("AUTH_ACS_CONNECTION_STRING"),
            acs_client_id=get("AUTH_ACS_CLIENT_ID"),
            email_sender=get("AUTH_EMAIL_SENDER"),
            sms_sender=get("AUTH_SMS_SENDER"),
            app_name=get("AUTH_APP_NAME", "Native Auth") or "Native Auth",
            country_header=(get("AUTH_COUNTRY_HEADER") or "").lower() or None,
            anonymizer_ranges=_cidrs(get("AUTH_ANONYMIZER_RANGES", ""), "AUTH_ANONYMIZER_RANGES"),
            risk_ip_accounts_per_hour=i("AUTH_RISK_IP_ACCOUNTS_PER_HOUR", 20, 0, 100000),
            trusted_proxy_hops=i("AUTH_TRUSTED_PROXY_HOPS", 1, 0, 5),
            sms_allowed_countries=tuple(c.strip().upper() for c in (get("AUTH_SMS_ALLOWED_COUNTRIES", DEFAULT_SMS_COUNTRIES) or "").split(",") if c.strip()),
            default_phone_region=(get("AUTH_DEFAULT_PHONE_REGION") or "").upper() or None,
            sample_auth_context=get("AUTH_SAMPLE_AUTH_CONTEXT", "c1") or "c1",
            account_resource=get("AUTH_ACCOUNT_RESOURCE", next(iter(resources))) or next(iter(resources)),
            account_auth_context=_context_id(get("AUTH_ACCOUNT_AUTH_CONTEXT", "acct") or "acct", "AUTH_ACCOUNT_AUTH_CONTEXT"),
            account_freshness_seconds=i("AUTH_ACCOUNT_FRESHNESS_SECONDS", 300, 60, 3600),
            password_min_length=i("AUTH_PASSWORD_MIN_LENGTH", 15, 8, 64),
            signup_attributes=_attribute_schema(get("AUTH_SIGNUP_ATTRIBUTES")),
            extensions_app_id=(get("AUTH_EXTENSIONS_APP_ID", "") or "").replace("-", "").lower(),
            sms_per_destination_hour=i("AUTH_SMS_PER_DESTINATION_HOUR", 10, 0, 100000),
            sms_per_destination_day=i("AUTH_SMS_PER_DESTINATION_DAY", 20, 0, 100000),
            sms_per_prefix_hour=i("AUTH_SMS_PER_PREFIX_HOUR", 30, 0, 100000),
            sms_global_hour=i("AUTH_SMS_GLOBAL_HOUR", 500, 0, 10000000),
            sms_cooldown_seconds=i("AUTH_SMS_COOLDOWN_SECONDS", 60, 0, 3600),
            email_per_destination_hour=i("AUTH_EMAIL_PER_DESTINATION_HOUR", 10, 0, 100000),
            email_global_minute=i("AUTH_EMAIL_GLOBAL_MINUTE", 25, 0, 10000000),
            email_global_hour=i("AUTH_EMAIL_GLOBAL_HOUR", 90, 0, 10000000),
            email_cooldown_seconds=i("AUTH_EMAIL_COOLDOWN_SECONDS", 30, 0, 3600),
            sends_per_ip_hour=i("AUTH_SENDS_PER_IP_HOUR", 30, 0, 10000000),
            # Codes one account can cause per hour (second factor and new methods, verified or not), and
            # codes to numbers/addresses being registered: one account holder cannot spend everyone's
            # budget, flood someone else's number, or pump (shared/security/limits.py).
            sends_per_account_hour=i("AUTH_SENDS_PER_ACCOUNT_HOUR", 20, 0, 100000),
            new_method_per_destination_hour=i("AUTH_NEW_METHOD_PER_DESTINATION_HOUR", 3, 0, 100000),
            new_method_unverified_per_account_hour=i("AUTH_NEW_METHOD_UNVERIFIED_PER_ACCOUNT_HOUR", 5, 0, 100000),
            # Sign-up starts run the password policy (zxcvbn): bounded per source. Local: one developer, generous.
            signup_starts_per_ip_hour=i("AUTH_SIGNUP_STARTS_PER_IP_HOUR", 1000 if local else 30, 0, 10000000),
            # Local mode: the developer's own (loopback) requests have no per-IP limit, ten times the
            # per-destination caps and no global budget (shared/security/limits.py). Never in Azure.
            local_developer_relief=local and _bool(get("AUTH_LOCAL_DEVELOPER_RELIEF", "true"), "AUTH_LOCAL_DEVELOPER_RELIEF"),
            # Local mode only, off by default: each response names the table operations it made (the tables
            # touched differ between a known and an unknown name, so never where anyone else can call it).
            storage_trace=local and _bool(get("AUTH_STORAGE_TRACE", "false"), "AUTH_STORAGE_TRACE"),
            # A successful sign-in's log record rides on the flow's final write and reaches the log this long
            # after, in one batch with the others of that moment (shared/storage/signinlog.py).
            signinlog_write_ms=i("AUTH_SIGNINLOG_WRITE_MS", 200, 10, 60000),
            pumping_prefix_unverified=i("AUTH_PUMPING_PREFIX_UNVERIFIED", 10, 0, 100000),
            pumping_country_unverified=i("AUTH_PUMPING_COUNTRY_UNVERIFIED", 50, 0, 1000000),
            pumping_min_conversion_percent=i("AUTH_PUMPING_MIN_CONVERSION_PERCENT", 30, 0, 100),
            pumping_suspend_seconds=i("AUTH_PUMPING_SUSPEND_SECONDS", 6 * 3600, 60, 30 * 86400),
            # A country-wide pump raises the alert; suspending a whole country is an operator's choice.
            pumping_suspend_country=_bool(get("AUTH_PUMPING_SUSPEND_COUNTRY", "false"), "AUTH_PUMPING_SUSPEND_COUNTRY"),
        )


def _context_id(value: str, name: str) -> str:
    if not (value.isalnum() and len(value) <= 16):
        raise SettingsError(f"{name} must be letters and digits, at most 16")
    return value


def _cidrs(value: str, name: str) -> tuple[str, ...]:
    import ipaddress

    out = []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError as exc:
            raise SettingsError(f"{name}: {part!r} is not an IP range") from exc
    return tuple(out)


DEFAULT_ATTRIBUTES = '[{"name": "displayName", "type": "string", "required": false}]'


def _attribute_schema(raw: str | None) -> tuple[dict, ...]:
    """AUTH_SIGNUP_ATTRIBUTES: JSON list of {name, type (string|int|boolean), required, regex?, values?}."""
    import re as _re

    try:
        items = json.loads(raw or DEFAULT_ATTRIBUTES)
        out = []
        for item in items:
            name = str(item["name"])
            kind = item.get("type", "string")
            if kind not in ("string", "int", "boolean") or not _re.match(r"^[A-Za-z][A-Za-z0-9_]{0,99}$", name):
                raise ValueError(name)
            if item.get("regex"):
                _re.compile(item["regex"])
            out.append({"name": name, "type": kind, "required": bool(item.get("required", False)),
                        "regex": item.get("regex"), "values": list(item.get("values") or [])})
        return tuple(out)
    except (ValueError, KeyError, TypeError, _re.error) as exc:
        raise SettingsError(f"AUTH_SIGNUP_ATTRIBUTES is not a valid attribute schema: {exc}") from exc


def _missing(name: str) -> str:
    raise SettingsError(f"{name} is required outside local mode")


# Every environment variable the app reads. infra/ must provide the ones
# needed in Azure; tests compare this list with the Bicep templates.
SETTING_NAMES = (
    "AUTH_ENVIRONMENT",
    "AUTH_STORAGE_CONNECTION_STRING",
    "AUTH_STORAGE_TABLE_ENDPOINT",
    "AUTH_STORAGE_CLIENT_ID",
    "AUTH_TABLE_PREFIX",
    "AUTH_CODE_HASH_KEY_ACCEPTED",
    "AUTH_SIGNING_KEY_SECRET_ACCEPTED",
    "AUTH_ISSUER",
    "AUTH_TENANT_ID",
    "AUTH_DEV_CLIENT_ID",
    "AUTH_RESOURCES",
    "AUTH_CODE_HASH_KEY",
    "AUTH_SIGNING_KEY_SECRET",
    "AUTH_CORS_ALLOWED_ORIGINS",
    "AUTH_MAX_BODY_BYTES",
    "AUTH_ENUMERATION_PROTECTION",
    "AUTH_EMAIL_CODE_LENGTH",
    "AUTH_SMS_CODE_LENGTH",
    "AUTH_CODE_TTL_SECONDS",
    "AUTH_CODE_MAX_ATTEMPTS",
    "AUTH_ACCOUNT_MAX_CODE_FAILURES",
    "AUTH_RESEND_INTERVAL_SECONDS",
    "AUTH_FLOW_TTL_SECONDS",
    "AUTH_LOCKOUT_THRESHOLD",
    "AUTH_LOCKOUT_BASE_SECONDS",
    "AUTH_LOCKOUT_MAX_SECONDS",
    "AUTH_ACCESS_TOKEN_TTL_SECONDS",
    "AUTH_ID_TOKEN_TTL_SECONDS",
    "AUTH_REFRESH_IDLE_SECONDS",
    "AUTH_REFRESH_ABSOLUTE_SECONDS",
    "AUTH_REFRESH_GRACE_SECONDS",
    "AUTH_SIGNING_KEY_ROTATION_DAYS",
    "AUTH_DELIVERY",
    "AUTH_OUTBOX_PATH",
    "AUTH_ACS_ENDPOINT",
    "AUTH_ACS_CONNECTION_STRING",
    "AUTH_ACS_CLIENT_ID",
    "AUTH_EMAIL_SENDER",
    "AUTH_SMS_SENDER",
    "AUTH_APP_NAME",
    "AUTH_COUNTRY_HEADER",
    "AUTH_ANONYMIZER_RANGES",
    "AUTH_RISK_IP_ACCOUNTS_PER_HOUR",
    "AUTH_TRUSTED_PROXY_HOPS",
    "AUTH_SMS_ALLOWED_COUNTRIES",
    "AUTH_DEFAULT_PHONE_REGION",
    "AUTH_SAMPLE_AUTH_CONTEXT",
    "AUTH_ACCOUNT_RESOURCE",
    "AUTH_ACCOUNT_AUTH_CONTEXT",
    "AUTH_ACCOUNT_FRESHNESS_SECONDS",
    "AUTH_PASSWORD_MIN_LENGTH",
    "AUTH_SIGNUP_ATTRIBUTES",
    "AUTH_EXTENSIONS_APP_ID",
    "AUTH_SMS_PER_DESTINATION_HOUR",
    "AUTH_SMS_PER_DESTINATION_DAY",
    "AUTH_SMS_PER_PREFIX_HOUR",
    "AUTH_SMS_GLOBAL_HOUR",
    "AUTH_SMS_COOLDOWN_SECONDS",
    "AUTH_EMAIL_PER_DESTINATION_HOUR",
    "AUTH_EMAIL_GLOBAL_MINUTE",
    "AUTH_EMAIL_GLOBAL_HOUR",
    "AUTH_EMAIL_COOLDOWN_SECONDS",
    "AUTH_SENDS_PER_IP_HOUR",
    "AUTH_SENDS_PER_ACCOUNT_HOUR",
    "AUTH_NEW_METHOD_PER_DESTINATION_HOUR",
    "AUTH_NEW_METHOD_UNVERIFIED_PER_ACCOUNT_HOUR",
    "AUTH_SIGNUP_STARTS_PER_IP_HOUR",
    "AUTH_LOCAL_DEVELOPER_RELIEF",
    "AUTH_STORAGE_TRACE",
    "AUTH_SIGNINLOG_WRITE_MS",
    "AUTH_PUMPING_PREFIX_UNVERIFIED",
    "AUTH_PUMPING_COUNTRY_UNVERIFIED",
    "AUTH_PUMPING_MIN_CONVERSION_PERCENT",
    "AUTH_PUMPING_SUSPEND_SECONDS",
    "AUTH_PUMPING_SUSPEND_COUNTRY",
)

_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def use_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (tests and the local host only)."""
    global _current
    _current = settings
