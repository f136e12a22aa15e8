"""Settings and the JSON data files they point to.

Settings are read per request from a mapping (``os.environ`` in Azure, or an
explicit dict given to ``function_app.create_app``), so a changed app setting or
an edited data file takes effect without a restart. Data files are re-read when
their modification time or size changes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Entra's well-known client id of the service that calls custom authentication
# extensions ("Azure AD authentication events service"). The native-auth backend
# puts the same value in `azp`/`appid`, so this check is the same for both.
AUTHORIZED_PARTY = "99045fe1-7639-4a75-9d4a-577b6ca3810f"


class ConfigError(Exception):
    """The extension is misconfigured (answered 500; the detail goes to the log only)."""


class Settings:
    def __init__(self, values: Mapping[str, str]):
        self._values = values

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name)
        if value is None or not str(value).strip():
            return default
        return str(value).strip()

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigError(f"the setting {name} is missing")
        return value

    def csv(self, name: str) -> list[str]:
        return [part.strip() for part in (self.get(name) or "").split(",") if part.strip()]

    def flag(self, name: str) -> bool:
        return (self.get(name) or "").lower() in ("1", "true", "yes", "on")

    def seconds(self, name: str, default: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"the setting {name} must be a number of seconds") from None
        if value < 0:
            raise ConfigError(f"the setting {name} must not be negative")
        return value

    def path(self, name: str) -> Path:
        """A file named by a required setting (relative paths: to the working directory)."""
        return Path(self.require(name)).expanduser()

    # the two values that differ between this project and Entra
    @property
    def issuer(self) -> str:
        return self.require("EXTENSION_ISSUER")

    @property
    def audiences(self) -> list[str]:
        values = self.csv("EXTENSION_AUDIENCE")
        if not values:
            raise ConfigError("the setting EXTENSION_AUDIENCE is missing")
        return values

    @property
    def extension_attribute_prefix(self) -> str:
        app_id = self.require("EXTENSIONS_APP_ID").replace("-", "").lower()
        return f"extension_{app_id}_"


class FileCache:
    """Parsed files, re-read when (mtime, size) changes. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}

    def load(self, path: Path, parse, kind: str = "json") -> Any:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        key = (kind, str(path))
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        value = parse(data, path)
        with self._lock:
            self._entries[key] = (stamp, value)
        return value

    def json_object(self, path: Path) -> dict:
        return self.load(path, _parse_json_object, "json")


def _parse_json_object(data: bytes, path: Path) -> dict:
    try:
        value = json.loads(data)
    except ValueError as exc:
        # The position only: the message of some decoders quotes the document.
        raise ConfigError(f"{path} is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return value
