"""User attributes collected at sign-up (contract §3.1, §3.3; D6).

The schema comes from ``AUTH_SIGNUP_ATTRIBUTES``: built-in names
(displayName, givenName, surname, city, country, postalCode, streetAddress,
state, jobTitle, ...) and custom ``extension_<appId>_<name>`` ones, each with
a type (string, int, boolean), a required flag, an optional regex and, for
multi-select values, the allowed ``values`` (sent as one comma-separated
string). Attributes not in the schema are ignored, as Entra does.
"""

from __future__ import annotations

import re
from typing import Any

from shared.protocol import errors
from shared.protocol.http import json_field

MAX_VALUE_CHARS = 1024


def parse(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    data = json_field(raw, "attributes")
    if not isinstance(data, dict):
        raise errors.InvalidRequest("The attributes parameter must be a JSON object.")
    return data


def _check(spec: dict[str, Any], value: Any) -> str | None:
    """The value as stored (a string), or None when invalid."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        if spec["type"] == "boolean" and isinstance(value, bool):
            return "true" if value else "false"
        return None
    text = str(value).strip()
    if not text or len(text) > MAX_VALUE_CHARS or any(ord(c) < 32 for c in text):
        return None
    if spec["type"] == "int":
        if not re.fullmatch(r"-?\d{1,18}", text):
            return None
    elif spec["type"] == "boolean":
        if text.lower() not in ("true", "false"):
            return None
        text = text.lower()
    if spec.get("values"):
        parts = [p.strip() for p in text.split(",")]
        if not all(p in spec["values"] for p in parts):
            return None
        text = ",".join(parts)
    if spec.get("regex") and not re.fullmatch(spec["regex"], text):
        return None
    return text


def valid_values(schema: tuple[dict[str, Any], ...], submitted: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``(accepted, invalid names)``: the values of known attributes as stored,
    and the names of known attributes whose value fails the schema. Unknown
    names are in neither (ignored, as Entra does)."""
    known = {s["name"]: s for s in schema}
    out: dict[str, str] = {}
    invalid: list[str] = []
    for name, value in submitted.items():
        spec = known.get(name)
        if spec is None:
            continue
        checked = _check(spec, value)
        if checked is None:
            invalid.append(name)
        else:
            out[name] = checked
    return out, invalid


def accept(schema: tuple[dict[str, Any], ...], submitted: dict[str, Any]) -> dict[str, str]:
    """Validated values for known attributes; unknown ones are ignored.
    Raises ``invalid_grant`` / ``attribute_validation_failed`` listing the bad ones."""
    out, invalid = valid_values(schema, submitted)
    if invalid:
        raise errors.InvalidGrant("One or more attributes are not valid.", suberror="attribute_validation_failed",
                                  error_codes=(55107,), extra={"invalid_attributes": [{"name": n} for n in invalid]})
    return out


def typed(schema: tuple[dict[str, Any], ...], values: dict[str, str]) -> dict[str, Any]:
    """Stored values (strings) with the schema's JSON types, as Entra sends them to
    custom extensions: ``int`` attributes as numbers, ``boolean`` ones as booleans,
    multi-value ones as one comma-separated string."""
    kinds = {s["name"]: s["type"] for s in schema}
    out: dict[str, Any] = {}
    for name, value in values.items():
        kind = kinds.get(name)
        if kind == "int" and re.fullmatch(r"-?\d{1,18}", str(value)):
            out[name] = int(value)
        elif kind == "boolean" and str(value) in ("true", "false"):
            out[name] = value == "true"
        else:
            out[name] = value
    return out


def _entry(spec: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec["name"], "type": spec["type"], "required": True}
    if spec.get("regex"):
        entry["options"] = {"regex": spec["regex"]}
    return entry


def missing(schema: tuple[dict[str, Any], ...], collected: dict[str, str]) -> list[dict[str, Any]]:
    """``required_attributes`` entries (iOS needs name, type and required) for what is still missing."""
    return [_entry(spec) for spec in schema if spec["required"] and not collected.get(spec["name"])]


def asked_again(schema: tuple[dict[str, Any], ...], names: list[str]) -> list[dict[str, Any]]:
    """``required_attributes`` entries for attributes a custom extension refused:
    the client must send them (again) before the account can be created."""
    wanted = set(names)
    return [_entry(spec) for spec in schema if spec["name"] in wanted]
