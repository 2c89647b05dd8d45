"""Helpers for reading platform JSON safely: every bad shape or value becomes a PayloadError.

Messages name the field, never its value: a 400 body and a stored reason must not carry the
buyer's data. The bounds themselves live with the event model (webhooks/events.py), which
checks them again whatever the adapter did.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ID_CHARS,
    MAX_ITEM_COUNT,
    MAX_LINE_QUANTITY,
    MAX_TIMESTAMP,
    bounded_attributes,
    check_count,
    check_id,
    check_key,
    check_timestamp,
)

# Platform integer ids (Shopify's are 64-bit): positive and below 2**64, kept as exact text.
MAX_INT_ID = 2**64 - 1
MAX_EMAIL_CHARS = 320  # RFC 3696: 64 + 1 + 255


def load_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a body; decimals stay Decimal and big integers stay int (never float).

    NaN and Infinity are not JSON (RFC 8259) and are refused, as are numbers Decimal cannot
    hold and integers past Python's 4,300-digit limit (a ValueError inside json)."""
    try:
        data = json.loads(raw, parse_float=_decimal, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not JSON (line {exc.lineno}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise PayloadError("body is not UTF-8 JSON") from exc
    except RecursionError as exc:
        raise PayloadError("body nests too deeply") from exc
    except ValueError as exc:
        raise PayloadError("body holds a number with too many digits") from exc
    if not isinstance(data, dict):
        raise PayloadError("body is not a JSON object")
    return data


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # e.g. an exponent past Decimal's limits
        raise PayloadError("body holds a number out of range") from exc


def _no_constant(name: str) -> Any:
    raise PayloadError("body holds NaN or Infinity, which JSON does not allow")


def get_object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise PayloadError(f"field '{key}' must be an object")
    return value


def get_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"field '{key}' must be a non-empty string")
    return value


def get_id(data: Mapping[str, Any], key: str) -> str:
    """A required string id, within its column and free of control characters."""
    return check_id(get_str(data, key), f"field '{key}'")


def get_key(data: Mapping[str, Any], key: str, limit: int) -> str:
    """A required machine key (event type, event id): printable ASCII, at most `limit`."""
    return check_key(get_str(data, key), f"field '{key}'", limit)


def get_int_id(data: Mapping[str, Any], key: str) -> str:
    """A required positive integer id (Shopify's 64-bit ids), as exact decimal text."""
    return int_id(data.get(key), key)


def int_id(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INT_ID:
        raise PayloadError(f"field '{what}' must be a positive 64-bit integer id")
    return str(value)


def optional_id(data: Mapping[str, Any], key: str) -> str | None:
    """An optional id: a string, a positive integer or an expanded object's `id`.

    Absent or of another type: None. Present but unusable (too long, control characters,
    out of range): PayloadError, since storing it cut or altered would be wrong."""
    value = data.get(key)
    if isinstance(value, dict):  # an expanded Stripe object: its id is what we keep
        value = value.get("id")
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int_id(value, key)
    if isinstance(value, str):
        return check_id(value, f"field '{key}'", MAX_ID_CHARS)
    return None


def get_timestamp(data: Mapping[str, Any], key: str) -> float:
    """A required Unix time in seconds, from 1970 to the year 9999."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"field '{key}' must be an integer")
    return check_timestamp(value, f"field '{key}'")


def get_int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"field '{key}' must be an integer")
    return value


def quantity_sum(lines: Iterable[object], what: str) -> int:
    """Sum of line-item quantities. A line whose quantity is not an integer is skipped (as
    before); an integer outside 0..MAX_LINE_QUANTITY, or a sum past a 32-bit column, is a
    PayloadError naming the field."""
    total = 0
    for line in lines:
        quantity = line.get("quantity") if isinstance(line, dict) else None
        if type(quantity) is not int:
            continue
        total += check_count(quantity, f"field '{what}'", MAX_LINE_QUANTITY)
        if total > MAX_ITEM_COUNT:
            raise PayloadError(f"field '{what}' adds up to more than {MAX_ITEM_COUNT}")
    return total


def string_map(value: object) -> dict[str, str]:
    """The string-valued entries of a metadata object, bounded (see bounded_attributes)."""
    if not isinstance(value, dict):
        return {}
    return bounded_attributes(value.items())


def described(value: object, known: Collection[str]) -> str:
    """A payload value for a reason text: quoted when it is one of the platform's documented
    values, otherwise only said to be missing or unexpected (it could be anything, e.g. an
    email address, a control character or a megabyte)."""
    if value is None:
        return "missing"
    if isinstance(value, str) and value in known:
        return repr(value)
    return "an unexpected value"


def email_digest(email: object) -> str | None:
    """A stable, non-reversible customer reference: we never store the address itself.

    A value that cannot be an address (no "@", longer than 320 characters, or not encodable
    as UTF-8, e.g. an unpaired surrogate) gives no digest."""
    if not isinstance(email, str) or "@" not in email or len(email) > MAX_EMAIL_CHARS:
        return None
    try:
        encoded = email.strip().lower().encode()
    except UnicodeEncodeError:
        return None
    return hashlib.sha256(encoded).hexdigest()


# --- free-form values a shop stores (Paddle custom_data, WooCommerce meta, ...) ---------------

# Nested values are kept as compact JSON while they are no deeper than attribution reads JSON
# (attribution/formats.py MAX_JSON_DEPTH is 8; a PHP array saved as meta can be deeper, so
# a platform may allow more): a shop may store the pairs as {"100": "200"} or a list.
MAX_ATTRIBUTE_NESTING = 32


def attribute_text(value: object, max_depth: int = MAX_ATTRIBUTE_NESTING) -> str | None:
    """A stored value as attribute text: strings as they are, numbers as their JSON text,
    objects and lists as compact JSON (Decimal keeps its digits). None (dropped): true,
    false, null, JSON deeper than `max_depth`, or longer than an attribute value may be (cut
    JSON would mislead)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, dict | list):
        text = _json_text(value, 0, max_depth)
        if text is not None and len(text) <= MAX_ATTRIBUTE_VALUE_CHARS:
            return text
    return None


def attribute_map(value: object, max_depth: int = MAX_ATTRIBUTE_NESTING) -> dict[str, str]:
    """A JSON object of a shop's own data (custom_data) as bounded attributes; not an object:
    none."""
    if not isinstance(value, dict):
        return {}
    return bounded_attributes((key, attribute_text(item, max_depth)) for key, item in value.items())


def _json_text(value: object, depth: int, max_depth: int) -> str | None:
    """Compact JSON of a parsed value (json.dumps would need a float for a Decimal). Recursion
    is bounded by max_depth; None when the value nests deeper."""
    if depth > max_depth:
        return None
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | Decimal):
        return str(value)
    parts: list[str] = []
    if isinstance(value, list):
        for element in value:
            text = _json_text(element, depth + 1, max_depth)
            if text is None:
                return None
            parts.append(text)
        return "[" + ",".join(parts) + "]"
    if isinstance(value, dict):
        for name, element in value.items():
            text = _json_text(element, depth + 1, max_depth)
            if text is None:
                return None
            parts.append(json.dumps(str(name), ensure_ascii=False) + ":" + text)
        return "{" + ",".join(parts) + "}"
    return None


# --- times -----------------------------------------------------------------------------------

# RFC 3339 as platforms send it ("2024-04-12T10:18:49.738971Z"); ASCII digits only.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def rfc3339_seconds(value: object) -> float | None:
    """Unix seconds of an RFC 3339 time, or None when absent, unreadable or outside
    1970..9999. Fractions past microseconds are cut (datetime holds no more)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    try:
        zone = UTC if match.group(8) else _offset(*match.groups()[8:])
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
        seconds = moment.timestamp()
    except (ValueError, OverflowError):  # month 13, second 60, offset 25:00, year 0
        return None
    return seconds if 0 <= seconds <= MAX_TIMESTAMP else None


def _offset(sign: str, hours: str, minutes: str) -> timezone:
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return timezone(-delta if sign == "-" else delta)
