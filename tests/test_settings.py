"""The settings object: defaults, validation, immutability, and the list of names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from shared.settings import DEV_CLIENT_ID, SETTING_NAMES, Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
SECRET = "A" * 64  # base64 of 48 bytes


def azure_env(**extra: str) -> dict[str, str]:
    env = {"AUTH_ENVIRONMENT": "azure", "AUTH_STORAGE_TABLE_ENDPOINT": "https://x.table.core.windows.net",
           "AUTH_ISSUER": "https://app.example.net/api/", "AUTH_CODE_HASH_KEY": SECRET, "AUTH_SIGNING_KEY_SECRET": SECRET}
    env.update(extra)
    return env


def test_local_defaults():
    s = Settings.from_env({"AUTH_ENVIRONMENT": "local"})
    assert s.is_local and s.dev_client_id == DEV_CLIENT_ID == "00000000-0000-0000-0000-000000000001"
    assert s.issuer == "http://127.0.0.1:7071/api"
    assert "127.0.0.1:10002" in s.storage_connection_string
    assert s.email_code_length == 8 and s.sms_code_length == 6
    assert s.code_ttl_seconds == 600 and s.code_max_attempts == 5
    assert s.enumeration_protection is True
    assert s.delivery == "outbox"
    assert len(s.code_hash_key) >= 32 and s.code_hash_key != s.signing_key_secret


def test_use_development_storage_shorthand_is_translated():
    s = Settings.from_env({"AUTH_ENVIRONMENT": "local", "AUTH_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    assert "TableEndpoint=http://127.0.0.1:10002" in s.storage_connection_string


def test_azure_mode_has_no_dev_client_and_needs_secrets():
    s = Settings.from_env(azure_env())
    assert not s.is_local and s.dev_client_id is None
    assert s.issuer == "https://app.example.net/api"
    assert s.delivery == "acs" and s.cors_allowed_origins == ()
    for missing in ("AUTH_CODE_HASH_KEY", "AUTH_SIGNING_KEY_SECRET", "AUTH_ISSUER"):
        env = azure_env()
        env.pop(missing)
        with pytest.raises(SettingsError, match=missing):
            Settings.from_env(env)
    env = azure_env()
    env.pop("AUTH_STORAGE_TABLE_ENDPOINT")
    with pytest.raises(SettingsError):
        Settings.from_env(env)


@pytest.mark.parametrize("name,value", [
    ("AUTH_ENVIRONMENT", "prod"),
    ("AUTH_ENUMERATION_PROTECTION", "maybe"),
    ("AUTH_EMAIL_CODE_LENGTH", "4"),
    ("AUTH_CODE_TTL_SECONDS", "3600"),
    ("AUTH_CODE_MAX_ATTEMPTS", "x"),
    ("AUTH_CODE_HASH_KEY", "c2hvcnQ="),
    ("AUTH_RESOURCES", "[1,2]"),
    ("AUTH_DELIVERY", "pigeon"),
])
def test_bad_values_are_refused_at_start(name, value):
    with pytest.raises(SettingsError):
        Settings.from_env(azure_env(**{name: value}))


def test_settings_are_frozen():
    s = Settings.from_env({"AUTH_ENVIRONMENT": "local"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.enumeration_protection = False  # type: ignore[misc]


def test_resources_and_cors_parse():
    s = Settings.from_env(azure_env(AUTH_RESOURCES='{"api://orders": ["read", "write"]}',
                                    AUTH_CORS_ALLOWED_ORIGINS="https://a.example, https://b.example/"))
    assert s.resources == {"api://orders": ("read", "write")}
    assert s.cors_allowed_origins == ("https://a.example", "https://b.example")


def test_setting_names_list_every_variable_the_code_reads():
    read: set[str] = set()
    for path in (ROOT / "shared").rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"SETTING_NAMES = \(.*?\n\)", "", text, flags=re.S)  # the list itself does not count
        read |= set(re.findall(r"""["'](AUTH_[A-Z0-9_]+)["']""", text))
    assert read, "the scan found nothing: the pattern is broken"
    assert read <= set(SETTING_NAMES), read - set(SETTING_NAMES)
    assert set(SETTING_NAMES) <= read, set(SETTING_NAMES) - read


def test_local_settings_example_only_uses_known_names():
    import json

    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    unknown = {k for k in values if k.startswith("AUTH_")} - set(SETTING_NAMES)
    assert not unknown
