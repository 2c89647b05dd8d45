"""The test configuration, as a document and as the TOML file the CLI and gunicorn read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STRIPE_SECRET = "whsec_test_secret_one"
STRIPE_OLD_SECRET = "whsec_test_secret_old"
SHOPIFY_SECRET = "shpss_test_client_secret"


def config_document(db_url: str, endpoint: str, **sections: Any) -> dict[str, Any]:
    """The config every test starts from; keyword arguments replace keys of a section."""
    doc: dict[str, Any] = {
        "convert": {"account_id": "1111", "project_id": "2222", "endpoint": endpoint},
        "goals": {
            "purchase": {"conversion": ["100", "101"], "transaction": ["100"]},
            "subscription_renewal": {"conversion": [], "transaction": ["300"]},
        },
        "sources": {
            "stripe": {"platform": "stripe", "secrets": [STRIPE_SECRET, STRIPE_OLD_SECRET]},
            "shop": {"platform": "shopify", "secrets": [SHOPIFY_SECRET]},
        },
        "database": {"url": db_url, "busy_timeout_ms": 2000},
        "dispatcher": {"retry_base_seconds": 10, "retry_max_delay_seconds": 3600},
        # Most tests are not about late data: an event without pairs settles at once. The
        # late-data tests (tests/test_late_data.py) use the default grace period.
        "attribution": {"grace_seconds": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(doc.get(section), dict):
            doc[section] = {**doc[section], **values}
        else:
            doc[section] = values
    return doc


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(_toml(doc))
    return path


def _toml(doc: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for a config document: tables of strings, numbers, booleans and lists."""
    plain = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and plain else []
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in plain.items()]
    text = "\n".join(lines) + "\n"
    for key, value in doc.items():
        if isinstance(value, dict):
            text += _toml(value, f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key))
    return text
