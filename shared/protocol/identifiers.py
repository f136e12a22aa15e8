"""Canonical forms of the identifiers users type, and their masked display forms.

Email (security-baseline A39): NFC-normalised, trimmed, lower-cased; the domain
IDNA-encoded (``bücher.de`` and ``xn--bcher-kva.de`` are one domain) with any
trailing dot removed; the local part must be printable ASCII, so homoglyph
local parts (Cyrillic ``а``) and fullwidth forms are refused rather than
silently creating a look-alike account. ``+tags`` are kept: they are distinct
mailboxes to the mail server, so they are distinct accounts here.
"""

from __future__ import annotations

import re
import unicodedata

_LOCAL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}\Z")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class InvalidIdentifier(ValueError):
    pass


def normalize_email(value: str | None) -> str:
    if not value:
        raise InvalidIdentifier("empty")
    text = unicodedata.normalize("NFC", value).strip()
    if len(text) > 254 or text.count("@") != 1:
        raise InvalidIdentifier("not an email address")
    local, domain = text.rsplit("@", 1)
    if not _LOCAL_RE.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidIdentifier("local part")
    domain = domain.rstrip(".")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidIdentifier("domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise InvalidIdentifier("domain")
    normal = f"{local.lower()}@{ascii_domain}"
    if len(normal) > 254:   # the limit holds for the address as mail carries it (its domain in punycode)
        raise InvalidIdentifier("not an email address")
    return normal


def mask_email(email: str) -> str:
    """``contoso@example.com`` → ``c*****o@e******.com`` (contract §3.2 style)."""
    local, _, domain = email.partition("@")
    name, dot, tld = domain.rpartition(".")
    return f"{_mask(local)}@{_mask(name)}{dot}{tld}"


def _mask(part: str) -> str:
    if len(part) <= 2:
        return part[:1] + "*"
    return part[0] + "*" * (len(part) - 2) + part[-1]


def mask_phone(e164: str) -> str:
    """``+4915112345678`` → ``+49*******5678``: country code and last four digits."""
    if len(e164) <= 6:
        return "*" * len(e164)
    return e164[:3] + "*" * (len(e164) - 7) + e164[-4:]


# ------------------------------------------------------------------ phones

class BlockedNumber(ValueError):
    """A valid number SMS must not go to (line type or country)."""


BLOCKED_LINE_TYPES = ("PREMIUM_RATE", "SHARED_COST", "TOLL_FREE", "VOIP", "UAN", "PAGER", "VOICEMAIL")


def normalize_phone(value: str | None, *, region: str | None = None,
                    allowed_countries: tuple[str, ...] = ()) -> str:
    """E.164 (``+`` and at most 15 digits) for an SMS-capable number.

    Raises InvalidIdentifier for anything that is not a valid number, and
    BlockedNumber for premium-rate, shared-cost, toll-free, VoIP and similar
    line types or a country outside the allow-list (security-baseline A13, A40)."""
    import phonenumbers
    from phonenumbers import PhoneNumberType, number_type

    if not value or len(value) > 32 or any(c.isalpha() for c in value):
        raise InvalidIdentifier("phone")
    text = value.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise InvalidIdentifier("phone") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier("phone")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) > 16:
        raise InvalidIdentifier("phone")
    kind = number_type(number)
    blocked = {getattr(PhoneNumberType, name) for name in BLOCKED_LINE_TYPES}
    if kind in blocked:
        raise BlockedNumber("line type")
    if kind not in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE):
        raise InvalidIdentifier("not a mobile number")
    country = phonenumbers.region_code_for_number(number)
    if allowed_countries and country not in allowed_countries:
        raise BlockedNumber("country")
    return e164


# ------------------------------------------------------------------ client addresses

IPV6_SOURCE_PREFIX = 64


def ip_source(ip: str | None) -> str | None:
    """The unit per-IP limits and the IP-velocity risk signal count: an IPv4
    address as it is, an IPv6 address by its /64 (one subscriber usually holds
    a whole /64 and can rotate through it at will), an IPv4-mapped IPv6
    address as its IPv4 address. None for anything that is not an address."""
    import ipaddress

    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/{IPV6_SOURCE_PREFIX}", strict=False))
    return str(addr)
