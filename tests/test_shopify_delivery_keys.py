"""Shopify's delivery key through the service: X-Shopify-Event-Id, else X-Shopify-Webhook-Id,
else (neither header, or an empty one: a proxy that drops them, a hand-made request) the
topic and the SHA-256 of the signed body. Shopify retries a delivery "with the original
payload from the time they were triggered" (shopify.dev/changelog/updates-to-webhook-retry-
mechanism), so the body digest is stable across retries and differs for different bodies."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import select

from tests.config_file import SHOPIFY_SECRET
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder, order_counts
from tests.payloads import body, experiments, shopify_order
from tests.signing import shopify_hmac
from webhooks.storage.schema import deliveries, events


def post(service: Service, topic: str, data: bytes, **ids: str) -> Any:
    """A signed Shopify request with only the id headers given (Service.post_shopify always
    adds a webhook id)."""
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, SHOPIFY_SECRET),
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "Content-Type": "application/json",
        **{f"X-Shopify-{name.replace('_', '-').title()}": value for name, value in ids.items()},
    }
    return service.client.post("/webhooks/shop", data=data, headers=headers)


def paid(order_id: int, **changes: Any) -> bytes:
    order = shopify_order(id=order_id, test=False, note_attributes=experiments("1-2"), **changes)
    return body(order)


def digest_key(topic: str, data: bytes) -> str:
    return f"{topic}:sha256:{hashlib.sha256(data).hexdigest()}"


def stored_keys(service: Service) -> list[tuple[str, str]]:
    with service.runtime.engine.connect() as conn:
        rows = conn.execute(select(deliveries).order_by(deliveries.c.id)).all()
    return [(r.delivery_key, r.status) for r in rows]


def event_count(service: Service) -> int:
    with service.runtime.engine.connect() as conn:
        return len(conn.execute(select(events.c.id)).all())


@pytest.mark.parametrize(
    "ids",
    [{}, {"event_id": ""}, {"webhook_id": ""}, {"event_id": "", "webhook_id": ""}],
    ids=["no-headers", "empty-event-id", "empty-webhook-id", "both-empty"],
)
def test_without_an_id_header_the_key_is_the_body_digest_and_a_retry_is_a_duplicate(
    any_db_service: Service, recorder: ConvertRecorder, ids: dict[str, str]
) -> None:
    svc = any_db_service
    data = paid(1)
    first = post(svc, "orders/paid", data, **ids)
    assert first.status_code == 200
    assert first.json["status"] == "accepted"
    retry = post(svc, "orders/paid", data, **ids)
    assert retry.status_code == 200
    assert retry.json == {
        "status": "duplicate",
        "delivery_id": first.json["delivery_id"],
        "reason": "delivery already received",
    }
    assert stored_keys(svc) == [(digest_key("orders/paid", data), "accepted")]
    assert event_count(svc) == 1
    svc.drain()
    assert order_counts(recorder.paths) == {"1": 1}


def test_different_bodies_get_different_digest_keys(
    service: Service, recorder: ConvertRecorder
) -> None:
    """Two orders; the same order with one field changed (a later update of the purchase);
    the same body under another topic: four deliveries, two purchases counted once each."""
    one, two = paid(1), paid(2)
    changed = paid(1, note="gift wrap")
    assert post(service, "orders/paid", one).json["status"] == "accepted"
    assert post(service, "orders/paid", two).json["status"] == "accepted"
    again = post(service, "orders/paid", changed).json
    assert (again["status"], again["reason"]) == (
        "duplicate",
        "purchase already counted from an earlier delivery",
    )
    assert post(service, "orders/create", one).json["status"] == "duplicate"
    assert stored_keys(service) == [
        (digest_key("orders/paid", one), "accepted"),
        (digest_key("orders/paid", two), "accepted"),
        (digest_key("orders/paid", changed), "duplicate"),
        (digest_key("orders/create", one), "duplicate"),
    ]
    assert len({key for key, _ in stored_keys(service)}) == 4
    service.drain()
    assert order_counts(recorder.paths) == {"1": 1, "2": 1}


def test_an_id_header_outranks_the_digest_and_the_event_id_outranks_the_webhook_id(
    service: Service,
) -> None:
    data = paid(1)
    post(service, "orders/paid", data, webhook_id="wh-1")
    post(service, "orders/paid", data, event_id="ev-1", webhook_id="wh-2")
    # Same body, same event id, another webhook id: Shopify's retry of that event.
    retry = post(service, "orders/paid", data, event_id="ev-1", webhook_id="wh-3")
    assert retry.json["reason"] == "delivery already received"
    assert [key for key, _ in stored_keys(service)] == [
        "orders/paid:webhook:wh-1",
        "orders/paid:event:ev-1",
    ]
