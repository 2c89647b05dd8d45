"""Shopify verification and topic mapping, on Shopify's sample payloads (tests/fixtures)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from adapters.shopify import ADAPTER
from tests.payloads import body, experiments, fixture, shopify_order
from tests.signing import shopify_hmac
from webhooks.config import SourceSettings
from webhooks.errors import PayloadError, SignatureError
from webhooks.events import EventKind

SECRET = "shpss_secret"
SETTINGS = SourceSettings("s", "shopify", ("shpss_rotated", SECRET), 300, False, "k", "total")
RAW = body(shopify_order())


def test_hmac_with_any_configured_secret_passes() -> None:
    for secret in SETTINGS.secrets:
        ADAPTER.verify({"x-shopify-hmac-sha256": shopify_hmac(RAW, secret)}, RAW, SETTINGS, 0)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing"),
        ({"x-shopify-hmac-sha256": ""}, "missing"),
        ({"x-shopify-hmac-sha256": "not base64 at all"}, "does not match"),
        ({"x-shopify-hmac-sha256": shopify_hmac(RAW, "wrong")}, "does not match"),
    ],
)
def test_missing_malformed_or_wrong_hmac_is_rejected(headers: dict[str, str], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        ADAPTER.verify(headers, RAW, SETTINGS, 0)


def test_changed_body_is_rejected() -> None:
    headers = {"x-shopify-hmac-sha256": shopify_hmac(RAW, SECRET)}
    with pytest.raises(SignatureError):
        ADAPTER.verify(headers, RAW.replace(b"404.95", b"4.95"), SETTINGS, 0)


def parse(topic: str, payload: dict[str, object], event_id: str = "ev-1"):  # type: ignore[no-untyped-def]
    headers = {"x-shopify-topic": topic, "x-shopify-event-id": event_id}
    return ADAPTER.parse(headers, body(payload))


def test_orders_paid_is_a_purchase_with_total_item_count_and_attributes() -> None:
    order = shopify_order(note_attributes=experiments("100-200,101-201"))
    result = parse("orders/paid", order)
    (purchase,) = result.events
    assert result.delivery_key == "orders/paid:event:ev-1"
    assert purchase.kind is EventKind.PURCHASE
    assert purchase.order_id == "820982911946154508"  # 64-bit id, digit for digit
    assert purchase.revenue("total").amount == Decimal(order["total_price"])
    assert purchase.revenue("total").currency == order["currency"]
    assert purchase.revenue("subtotal").amount == Decimal(order["subtotal_price"])
    assert purchase.item_count == sum(item["quantity"] for item in order["line_items"])
    assert purchase.attributes == {"convert_experiments": "100-200,101-201"}
    assert purchase.test_mode is True  # Shopify's sample order is a test order


def test_order_id_beyond_float_precision_is_kept_exactly() -> None:
    big = 2**63 - 1
    raw = body(shopify_order(id=0)).replace(b'"id": 0', f'"id": {big}'.encode(), 1)
    result = ADAPTER.parse({"x-shopify-topic": "orders/paid"}, raw)
    assert result.events[0].order_id == str(big)


def test_presentment_currency_is_offered_as_a_revenue_basis() -> None:
    order = shopify_order()
    order["total_price_set"]["presentment_money"] = {"amount": "370.00", "currency_code": "EUR"}
    money = parse("orders/paid", order).events[0].revenue("presentment_total")
    assert (money.amount, money.currency) == (Decimal("370.00"), "EUR")


def test_orders_create_counts_only_when_already_paid() -> None:
    unpaid = parse("orders/create", shopify_order("orders_create", financial_status="pending"))
    assert unpaid.events == ()
    assert "not paid" in (unpaid.reason or "")
    paid = parse("orders/create", shopify_order("orders_create", financial_status="paid"))
    assert paid.events[0].kind is EventKind.PURCHASE


def test_refunds_create_is_a_refund_of_its_order() -> None:
    refund = fixture("shopify", "refunds_create")
    (event,) = parse("refunds/create", refund).events
    assert event.kind is EventKind.REFUND
    assert event.order_id == str(refund["id"])
    assert event.refund_of == str(refund["order_id"])
    expected = sum(Decimal(t["amount"]) for t in refund["transactions"] if t["kind"] == "refund")
    assert event.revenue("total").amount == expected
    # the sample's refund transactions have currency null: the line items name it
    assert event.revenue("total").currency == "USD"


def test_customers_redact_names_customer_and_orders() -> None:
    payload = fixture("shopify", "customers_redact")
    result = parse("customers/redact", payload)
    assert result.events == ()
    assert result.redaction is not None
    assert result.redaction.customer_id == str(payload["customer"]["id"])
    assert result.redaction.order_ids == tuple(str(o) for o in payload["orders_to_redact"])


def test_shop_redact_and_data_request_are_answered_without_events() -> None:
    assert parse("shop/redact", fixture("shopify", "shop_redact")).redaction.whole_shop  # type: ignore[union-attr]
    request = parse("customers/data_request", fixture("shopify", "customers_data_request"))
    assert request.events == () and request.reason


def test_delivery_key_falls_back_to_webhook_id() -> None:
    headers = {"x-shopify-topic": "orders/paid", "x-shopify-webhook-id": "wh-9"}
    assert ADAPTER.parse(headers, RAW).delivery_key == "orders/paid:webhook:wh-9"


@pytest.mark.parametrize(
    ("topic", "raw"),
    [
        (None, RAW),
        ("orders/paid", b"{"),
        ("orders/paid", b'{"id": "x"}'),
        ("orders/paid", body(shopify_order(total_price="abc"))),
        ("orders/paid", body(shopify_order(currency=None))),
    ],
)
def test_malformed_deliveries_raise_payload_error(topic: str | None, raw: bytes) -> None:
    headers = {"x-shopify-topic": topic} if topic else {}
    with pytest.raises(PayloadError):
        ADAPTER.parse(headers, raw)
