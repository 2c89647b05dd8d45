"""customers/redact erases every stored copy of what a delivery said about the customer: the
delivery their event came from, the business duplicates of it, and the rejected and ignored
bodies that mention them, on SQLite and PostgreSQL. Nothing of another customer or another
source is touched."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select

from tests.conftest import Service
from tests.payloads import body, experiments, fixture, shopify_order, stripe_event
from webhooks.storage.ingest import addresses_in
from webhooks.storage.schema import deliveries, events, exposures

CUSTOMER = 191167  # tests/fixtures/shopify/customers_redact.json
EMAIL = "John.Doe@example.com"  # the redaction names it in lower case: found in any case


def order_of(customer: int, email: str, order_id: int, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": order_id,
        "financial_status": "paid",
        "email": email,
        "contact_email": email,
        "customer": {"id": customer, "email": email},
        "note_attributes": experiments("1-2"),
    }
    return shopify_order(**(fields | changes))


def redaction() -> dict[str, Any]:
    request = fixture("shopify", "customers_redact")
    request["customer"].update(id=CUSTOMER, email=EMAIL.lower())
    request["orders_to_redact"] = [5001]
    return request


def stored(service: Service) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


def mentions(row: Any, *terms: str) -> bool:
    text = (bytes(row.body) + row.headers.encode()).lower()
    return any(term.lower().encode() in text for term in terms)


def test_customers_redact_erases_duplicates_rejected_and_ignored_copies(
    any_db_service: Service,
) -> None:
    svc = any_db_service
    order = order_of(CUSTOMER, EMAIL, 5001)
    assert svc.post_shopify("orders/paid", order, event_id="w1").json["status"] == "accepted"
    # The same purchase again under another webhook id: a business duplicate.
    assert svc.post_shopify("orders/paid", order, event_id="w2").json["status"] == "duplicate"
    # A signed copy the parser cannot read (a total that is not a number), kept as rejected.
    broken = order_of(CUSTOMER, EMAIL, 5001, total_price="twelve")
    assert svc.post_shopify("orders/paid", broken, event_id="w3").status_code == 400
    # An unpaid orders/create: ignored, no event, yet it names the customer.
    unpaid = order_of(CUSTOMER, EMAIL, 5002, financial_status="pending")
    assert svc.post_shopify("orders/create", unpaid, event_id="w4").json["status"] == "ignored"
    # Kept: another customer whose id and address contain this one's; another source.
    other = order_of(1911670, "x" + EMAIL, 6001, total_price="n/a")
    assert svc.post_shopify("orders/paid", other, event_id="w5").status_code == 400
    intent = stripe_event("payment_intent_succeeded", receipt_email=EMAIL)
    assert svc.post_stripe(intent).status_code == 200

    assert svc.post_shopify("customers/redact", redaction(), event_id="r1").status_code == 200

    rows = stored(svc)
    shop = [r for r in rows if r.source == "shop"]
    assert [r.redacted for r in shop] == [True, True, True, True, False, True]
    for row in shop:
        if row.redacted:
            assert not mentions(row, EMAIL, str(CUSTOMER))
            assert (row.body, row.headers, row.customer_id, row.email_digest) == (
                b"",
                "{}",
                None,
                None,
            )
    assert bytes(shop[4].body) == body(other)
    (stripe_row,) = [r for r in rows if r.source == "stripe"]
    assert mentions(stripe_row, EMAIL) and not stripe_row.redacted
    with svc.runtime.engine.connect() as conn:
        (event,) = conn.execute(select(events).where(events.c.source == "shop"))
    assert (event.customer_id, event.email_digest, event.attributes) == (None, None, "{}")


def test_every_delivery_keeps_its_customer_refs_duplicates_too(service: Service) -> None:
    order = order_of(CUSTOMER, EMAIL, 5001)
    service.post_shopify("orders/paid", order, event_id="w1")
    service.post_shopify("orders/paid", order, event_id="w2")
    digest = hashlib.sha256(EMAIL.lower().encode()).hexdigest()
    assert [(r.status, r.customer_id, r.email_digest) for r in stored(service)] == [
        ("accepted", str(CUSTOMER), digest),
        ("duplicate", str(CUSTOMER), digest),
    ]


def test_a_guest_duplicate_is_found_by_the_address_its_event_carries(service: Service) -> None:
    """No customer id anywhere: the order listed in the redaction leads to its event's email
    digest, which finds the duplicate delivery."""
    guest = order_of(CUSTOMER, EMAIL, 5001)
    guest["customer"] = None
    service.post_shopify("orders/paid", guest, event_id="w1")
    service.post_shopify("orders/paid", guest, event_id="w2")
    request = redaction()
    request["customer"] = {"id": 1, "email": "someone-else@example.com"}
    service.post_shopify("customers/redact", request, event_id="r1")
    assert all(r.redacted and r.body == b"" for r in stored(service))


def test_a_delivery_naming_another_customer_is_kept_whatever_its_address(
    service: Service,
) -> None:
    service.post_shopify("orders/paid", order_of(CUSTOMER, EMAIL, 5001), event_id="w1")
    other = order_of(42, EMAIL, 7001)
    service.post_shopify("orders/paid", other, event_id="w2")
    service.post_shopify("customers/redact", redaction(), event_id="r1")
    kept = [r for r in stored(service) if not r.redacted]
    assert [(bytes(r.body), r.customer_id) for r in kept] == [(body(other), "42")]


def test_redaction_request_addresses_are_read_from_any_field() -> None:
    request = body({"customer": {"id": 1, "email": " a@b.co "}, "note": "x", "n": [{"e": "c@d"}]})
    assert sorted(addresses_in(request)) == ["a@b.co", "c@d"]
    assert addresses_in(b"not json") == ()


EXPOSURE_TOKEN = "expo_token_0123456789abcdef"


def exposure_rows(service: Service) -> list[tuple[str, str, bool]]:
    with service.runtime.engine.connect() as conn:
        rows = conn.execute(select(exposures).order_by(exposures.c.id))
        return [(r.source, r.customer_id, bool(r.email_digest)) for r in rows]


def report_exposure(service: Service, **customer: Any) -> None:
    answer = service.client.post(
        "/api/exposures",
        json={"pairs": ["100-1"], "exposed_at": "2026-01-01T00:00:00Z", **customer},
        headers={"Authorization": f"Bearer {EXPOSURE_TOKEN}"},
    )
    assert answer.status_code == 201, answer.json


def test_customers_redact_erases_the_customers_exposures(make_service: Any, db_url: str) -> None:
    """By their customer id in this source, by the address their orders carry, and by the
    address the redaction names (it may differ: the customer changed it); nothing of another
    customer, nor the same id in another source."""
    svc: Service = make_service(
        db_url,
        exposures={"tokens": [EXPOSURE_TOKEN]},
        privacy={"email_key": "email-digest-key-for-tests-0123456789"},
    )
    svc.post_shopify("orders/paid", order_of(CUSTOMER, EMAIL, 5001), event_id="w1")
    report_exposure(svc, source="shop", customer_id=str(CUSTOMER))
    report_exposure(svc, email=EMAIL)  # as the order has it
    report_exposure(svc, email=" NEW@example.com")  # as the redaction names it
    kept = [
        ("shop", "42", False),
        ("stripe", str(CUSTOMER), False),
        ("", "", True),
    ]
    report_exposure(svc, source="shop", customer_id="42")
    report_exposure(svc, source="stripe", customer_id=str(CUSTOMER))
    report_exposure(svc, email="x" + EMAIL)
    assert len(exposure_rows(svc)) == 6

    request = redaction()
    request["customer"]["email"] = "new@example.com"
    answer = svc.post_shopify("customers/redact", request, event_id="r1")
    assert (answer.status_code, answer.json["status"]) == (200, "ignored")
    assert exposure_rows(svc) == kept


def test_customers_redact_through_the_route_erases_exposures_by_customer_id(
    make_service: Any, sqlite_url: str
) -> None:
    svc: Service = make_service(
        sqlite_url,
        exposures={"tokens": [EXPOSURE_TOKEN]},
        privacy={"email_key": "email-digest-key-for-tests-0123456789"},
    )
    report_exposure(svc, source="shop", customer_id=str(CUSTOMER))
    report_exposure(svc, source="shop", customer_id="42")
    assert svc.post_shopify("customers/redact", redaction(), event_id="r1").status_code == 200
    assert exposure_rows(svc) == [("shop", "42", False)]


def test_shop_redact_erases_the_exposures_reported_for_that_source(service: Service) -> None:
    svc = service
    with svc.runtime.engine.begin() as conn:
        for source, customer, digest in [("shop", "1", ""), ("stripe", "1", ""), ("", "", "k:1")]:
            conn.execute(
                exposures.insert().values(
                    source=source,
                    customer_id=customer,
                    email_digest=digest,
                    experiment_id="1",
                    variation_id="2",
                    exposed_at=1.0,
                    recorded_at=1.0,
                )
            )
    assert svc.post_shopify("shop/redact", fixture("shopify", "shop_redact")).status_code == 200
    assert exposure_rows(svc) == [("stripe", "1", False), ("", "", True)]
