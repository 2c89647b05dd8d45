"""Helpers for reading platform JSON safely: every bad shape becomes a PayloadError."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from webhooks.errors import PayloadError


def load_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a body; decimals stay Decimal and big integers stay int (never float)."""
    try:
        data = json.loads(raw, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PayloadError("body is not a JSON object")
    return data


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


def optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, dict):  # an expanded Stripe object: its id is what we keep
        value = value.get("id")
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def get_int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"field '{key}' must be an integer")
    return value


def string_map(value: object) -> dict[str, str]:
    """Keep the string-valued entries of a metadata object; anything else is dropped."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def email_digest(email: object) -> str | None:
    """A stable, non-reversible customer reference: we never store the address itself."""
    if not isinstance(email, str) or "@" not in email:
        return None
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()
