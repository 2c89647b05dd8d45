"""Real platform payloads from tests/fixtures (sources in each folder's SOURCES.md), with the
few changes a test needs applied on a copy, then signed like the platform signs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(platform: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / platform / f"{name}.json").read_text())
    return copy.deepcopy(data)


def stripe_event(name: str, event_id: str | None = None, **object_changes: Any) -> dict[str, Any]:
    """A Stripe event fixture; keyword arguments replace fields of `data.object`."""
    event = fixture("stripe", name)
    if event_id:
        event["id"] = event_id
    event["data"]["object"].update(object_changes)
    return event


def shopify_order(name: str = "orders_paid", **changes: Any) -> dict[str, Any]:
    """Shopify's sample order. The published sample says `financial_status: "voided"` even for
    orders/paid (SOURCES.md); a real orders/paid body is paid, and the adapter counts only a
    body that shows it paid, so the orders/paid sample is made paid unless a test says else."""
    order = fixture("shopify", name)
    if name == "orders_paid":
        order["financial_status"] = "paid"
    order.update(changes)
    return order


def experiments(value: str, key: str = "convert_experiments") -> list[dict[str, str]]:
    """Shopify note_attributes carrying the experiment pairs."""
    return [{"name": key, "value": value}]


def body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
