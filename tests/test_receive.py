"""The request path: every answer a client can get, and what is (not) stored with it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.config_file import STRIPE_OLD_SECRET, STRIPE_SECRET
from tests.conftest import Service
from tests.payloads import body, experiments, fixture, shopify_order, stripe_event
from tests.signing import stripe_signature_header
from webhooks.storage.schema import deliveries, events


def count(service: Service, table: Any) -> int:
    with service.runtime.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_health_and_readiness(service: Service) -> None:
    assert service.client.get("/healthz").json == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert (ready.status_code, ready.json) == (200, {"status": "ready"})


def test_readiness_is_503_when_the_database_is_unreachable(make_service: Any) -> None:
    svc = make_service("postgresql://nobody@127.0.0.1:1/none")
    response = svc.client.get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"


def test_unknown_source_is_404_json(service: Service) -> None:
    response = service.post_stripe(stripe_event("payment_intent_succeeded"), source="nope")
    assert response.status_code == 404
    assert response.json == {"error": "unknown source 'nope'"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Stripe-Signature": "nonsense"},
        {"Stripe-Signature": "t=1,v1=00"},
        {"Stripe-Signature": "t=,v1="},
    ],
)
def test_bad_stripe_signature_is_401_and_stores_nothing(
    service: Service, headers: dict[str, str]
) -> None:
    response = service.client.post("/webhooks/stripe", data=b"{}", headers=headers)
    assert response.status_code == 401
    assert "error" in response.json
    assert count(service, deliveries) == 0


def test_stale_stripe_timestamp_is_401(service: Service) -> None:
    event = stripe_event("payment_intent_succeeded")
    response = service.post_stripe(event, timestamp=int(service.clock.now()) - 301)
    assert response.status_code == 401
    assert "old" in response.json["error"]


def test_rotated_stripe_secret_still_verifies(service: Service) -> None:
    response = service.post_stripe(
        stripe_event("payment_intent_succeeded"), secret=STRIPE_OLD_SECRET
    )
    assert response.status_code == 200


def test_bad_shopify_hmac_is_401_even_for_compliance_topics(service: Service) -> None:
    for topic in ("orders/paid", "customers/redact", "shop/redact", "customers/data_request"):
        response = service.post_shopify(
            topic, fixture("shopify", "customers_redact"), secret="wrong"
        )
        assert response.status_code == 401
    assert count(service, deliveries) == 0


def test_signed_but_unreadable_body_is_400_and_kept_as_rejected(service: Service) -> None:
    raw = b'{"id": "evt_x", "type": "payment_intent.succeeded"}'
    response = service.post_stripe({}, raw=raw)
    assert response.status_code == 400
    assert response.json == {"error": "field 'data' must be an object"}
    with service.runtime.engine.connect() as conn:
        row = conn.execute(select(deliveries)).one()
    assert (row.status, row.reason, row.body) == (
        "rejected",
        "field 'data' must be an object",
        raw,
    )


def test_oversized_body_is_413(make_service: Any, sqlite_url: str) -> None:
    svc = make_service(sqlite_url, server={"max_body_bytes": 2048})
    response = svc.post_stripe({}, raw=b"{" + b" " * 4096 + b"}")
    assert response.status_code == 413
    assert "error" in response.json


def test_wrong_method_is_json_405(service: Service) -> None:
    response = service.client.get("/webhooks/stripe")
    assert response.status_code == 405
    assert "error" in response.json


def test_accepted_delivery_answers_with_its_events(service: Service) -> None:
    event = stripe_event(
        "payment_intent_succeeded", metadata={"convert_experiments": "1-2"}, livemode=True
    )
    event["livemode"] = True
    response = service.post_stripe(event)
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    (stored,) = response.json["events"]
    assert stored["kind"] == "purchase" and stored["state"] == "pending"
    assert stored["reason"].startswith("queued")  # every unsent event says why


def test_same_delivery_twice_is_a_duplicate(service: Service) -> None:
    event = stripe_event("payment_intent_succeeded")
    first = service.post_stripe(event)
    second = service.post_stripe(event)
    assert first.json["status"] == "accepted"
    assert second.json == {
        "status": "duplicate",
        "delivery_id": first.json["delivery_id"],
        "reason": "delivery already received",
    }
    assert count(service, deliveries) == 1


def test_ignored_topic_is_200_with_reason_and_stored(service: Service) -> None:
    unpaid = stripe_event("checkout_session_completed", payment_status="unpaid")
    response = service.post_stripe(unpaid)
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert "only a paid session counts" in response.json["reason"]
    assert count(service, deliveries) == 1
    assert count(service, events) == 0


def test_storage_failure_is_503_and_the_platform_retries(service: Service, sqlite_url: str) -> None:
    # Another process holds SQLite's write lock longer than our busy timeout.
    path = sqlite_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = service.post_stripe(stripe_event("payment_intent_succeeded"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "database unavailable" in response.json["error"]
    retried = service.post_stripe(stripe_event("payment_intent_succeeded"))
    assert retried.json["status"] == "accepted"


def test_customers_redact_erases_what_we_hold_about_the_customer(service: Service) -> None:
    redact = fixture("shopify", "customers_redact")
    order = shopify_order(
        note_attributes=experiments("1-2"),
        customer={"id": redact["customer"]["id"], "email": "buyer@example.com"},
    )
    service.post_shopify("orders/paid", order, event_id="e1")
    other = shopify_order(
        id=5, email="other@example.com", customer={"id": 42, "email": "other@example.com"}
    )
    service.post_shopify("orders/paid", other, event_id="e2")
    # A guest order of theirs, found only through `orders_to_redact`.
    guest = shopify_order(
        id=redact["orders_to_redact"][0], customer=None, email=None, contact_email=None
    )
    service.post_shopify("orders/paid", guest, event_id="e4")
    with service.runtime.engine.connect() as conn:
        stored = conn.execute(select(events.c.email_digest).where(events.c.order_id == "5"))
        # The address itself is never stored: only its digest.
        assert stored.scalar() == hashlib.sha256(b"other@example.com").hexdigest()
    response = service.post_shopify("customers/redact", redact, event_id="e3")
    assert response.status_code == 200
    with service.runtime.engine.connect() as conn:
        rows = {r.order_id: r for r in conn.execute(select(events))}
        bodies = {r.id: r for r in conn.execute(select(deliveries))}
    erased = rows[str(order["id"])]
    assert (erased.customer_id, erased.email_digest) == (None, None)
    assert bodies[erased.delivery_id].body == b"" and bodies[erased.delivery_id].redacted
    by_order = rows[str(guest["id"])]
    assert bodies[by_order.delivery_id].body == b"" and bodies[by_order.delivery_id].redacted
    kept = rows["5"]
    assert kept.customer_id == "42" and kept.email_digest
    assert bodies[kept.delivery_id].body == body(other)
    assert all(not r.body for r in bodies.values() if r.topic == "customers/redact")


def test_shopify_data_request_and_shop_redact_answer_200(service: Service) -> None:
    for topic, name in (
        ("customers/data_request", "customers_data_request"),
        ("shop/redact", "shop_redact"),
    ):
        response = service.post_shopify(topic, fixture("shopify", name))
        assert response.status_code == 200
        assert response.json["status"] == "ignored"


def test_signature_is_checked_on_raw_bytes_not_reserialized_json(service: Service) -> None:
    event = stripe_event("payment_intent_succeeded")
    raw = body(event).replace(b", ", b",   ")  # same JSON, other bytes
    header = stripe_signature_header(raw, "whsec_test_secret_one", int(service.clock.now()))
    response = service.client.post(
        "/webhooks/stripe", data=raw, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 200


def test_shop_redact_erases_every_delivery_of_the_source(service: Service) -> None:
    order = shopify_order(customer={"id": 7, "email": "a@example.com"})
    service.post_shopify("orders/paid", order, event_id="o1")
    service.post_stripe(stripe_event("payment_intent_succeeded"))  # another source: kept
    service.post_shopify("shop/redact", fixture("shopify", "shop_redact"), event_id="r1")
    with service.runtime.engine.connect() as conn:
        rows = {r.source: r for r in conn.execute(select(deliveries)) if r.topic != "shop/redact"}
        event = conn.execute(select(events).where(events.c.source == "shop")).one()
    assert rows["shop"].body == b"" and rows["shop"].redacted
    assert rows["stripe"].body and not rows["stripe"].redacted
    assert (event.customer_id, event.email_digest) == (None, None)


def test_credentials_in_request_headers_are_never_stored(service: Service) -> None:
    event = stripe_event("payment_intent_succeeded", "evt_private_headers")
    data = body(event)
    t = int(service.clock.now())
    response = service.client.post(
        "/webhooks/stripe",
        data=data,
        headers={
            "Stripe-Signature": stripe_signature_header(data, STRIPE_SECRET, t),
            "Authorization": "Bearer proxy-credential-123",
            "Cookie": "session=cookie-value-456",
            "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        },
    )
    assert response.status_code == 200
    with service.runtime.engine.connect() as conn:
        stored = conn.execute(select(deliveries.c.headers)).scalar_one()
    kept = {name.lower() for name in json.loads(stored)}
    assert "stripe-signature" in kept  # headers are kept, for replay
    assert not kept & {"authorization", "cookie", "proxy-authorization"}
    for secret in ("proxy-credential-123", "cookie-value-456", "cHJveHk6c2VjcmV0"):
        assert secret not in stored
