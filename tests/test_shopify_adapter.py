"""Shopify verification and topic mapping, on Shopify's sample payloads (tests/fixtures)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from adapters.request import SignedRequest
from adapters.shopify import SPEC
from tests.payloads import body, experiments, fixture, shopify_order
from tests.signing import shopify_hmac
from webhooks.core.errors import PayloadError, SignatureError
from webhooks.core.events import MAX_ATTRIBUTES, EventKind
from webhooks.core.settings import SourceSettings

SECRET = "shpss_secret"
SETTINGS = SourceSettings("s", "shopify", ("shpss_rotated", SECRET), 300, False, "k", "total")


def paid_order(**changes: Any) -> dict[str, Any]:
    """Shopify's sample order says financial_status "voided" (see SOURCES.md); an orders/paid
    delivery counts only when its body shows it paid."""
    return shopify_order(**{"financial_status": "paid", **changes})


RAW = body(paid_order())


def verify(headers: dict[str, str], raw: bytes = RAW) -> None:
    SPEC.verify(SignedRequest.post(raw, headers), SETTINGS, 0)


def test_hmac_with_any_configured_secret_passes() -> None:
    for secret in SETTINGS.secrets:
        verify({"X-Shopify-Hmac-Sha256": shopify_hmac(RAW, secret)})


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
        verify(headers)


def test_changed_body_is_rejected() -> None:
    headers = {"x-shopify-hmac-sha256": shopify_hmac(RAW, SECRET)}
    with pytest.raises(SignatureError):
        verify(headers, RAW.replace(b"404.95", b"4.95"))


def parse(topic: str, payload: dict[str, object], event_id: str = "ev-1"):  # type: ignore[no-untyped-def]
    headers = {"x-shopify-topic": topic, "x-shopify-event-id": event_id}
    return SPEC.parse(headers, body(payload))


def test_orders_paid_is_a_purchase_with_total_item_count_and_attributes() -> None:
    order = paid_order(note_attributes=experiments("100-200,101-201"))
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
    raw = body(paid_order(id=0)).replace(b'"id": 0', f'"id": {big}'.encode(), 1)
    result = SPEC.parse({"x-shopify-topic": "orders/paid"}, raw)
    assert result.events[0].order_id == str(big)


def test_presentment_currency_is_offered_as_a_revenue_basis() -> None:
    order = paid_order()
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
    assert SPEC.parse(headers, RAW).delivery_key == "orders/paid:webhook:wh-9"


@pytest.mark.parametrize(
    ("topic", "raw"),
    [
        (None, RAW),
        ("orders/paid", b"{"),
        ("orders/paid", b'{"id": "x"}'),
        ("orders/paid", body(paid_order(total_price="abc"))),
        ("orders/paid", body(paid_order(currency=None))),
    ],
)
def test_malformed_deliveries_raise_payload_error(topic: str | None, raw: bytes) -> None:
    headers = {"x-shopify-topic": topic} if topic else {}
    with pytest.raises(PayloadError):
        SPEC.parse(headers, raw)


# --- the unsigned topic header: each topic's body must have that topic's shape ------------

BODIES = {
    "orders/paid": "orders_paid",
    "orders/create": "orders_create",
    "refunds/create": "refunds_create",
    "customers/redact": "customers_redact",
    "customers/data_request": "customers_data_request",
    "shop/redact": "shop_redact",
}


@pytest.mark.parametrize(("topic", "name"), sorted(BODIES.items()))
def test_each_real_sample_parses_under_its_own_topic(topic: str, name: str) -> None:
    parse(topic, fixture("shopify", name))


@pytest.mark.parametrize(
    ("name", "topic"),
    [
        (name, topic)
        for name in sorted(set(BODIES.values()))
        for topic in sorted(BODIES)
        # orders/create and orders/paid carry the same order body
        if not (name.startswith("orders") and topic.startswith("orders/")) and BODIES[topic] != name
    ],
)
def test_a_body_under_another_topic_is_a_payload_error(name: str, topic: str) -> None:
    with pytest.raises(PayloadError, match=f"not a {topic} body"):
        parse(topic, fixture("shopify", name))


def test_shop_redact_refuses_a_body_with_customer_or_order_fields() -> None:
    extras: list[dict[str, Any]] = [{"customer": {"id": 1}}, {"orders_to_redact": []}, {"id": 5}]
    for extra in extras:
        with pytest.raises(PayloadError, match="shop/redact"):
            parse("shop/redact", {**fixture("shopify", "shop_redact"), **extra})


# --- a purchase counts only when the body shows it paid -----------------------------------


@pytest.mark.parametrize("status", ["paid", "partially_refunded", "refunded"])
@pytest.mark.parametrize("topic", ["orders/paid", "orders/create"])
def test_paid_then_refunded_orders_were_paid_and_count(topic: str, status: str) -> None:
    (purchase,) = parse(topic, paid_order(financial_status=status)).events
    assert purchase.kind is EventKind.PURCHASE


@pytest.mark.parametrize(
    "status", ["pending", "authorized", "partially_paid", "voided", None, "PAID", ["paid"]]
)
def test_orders_paid_whose_body_is_not_paid_is_ignored_with_a_reason(status: object) -> None:
    result = parse("orders/paid", paid_order(financial_status=status))
    assert result.events == ()
    assert "not paid" in (result.reason or "")


def test_shopifys_own_orders_paid_sample_is_voided_and_not_counted() -> None:
    result = parse("orders/paid", fixture("shopify", "orders_paid"))
    assert result.events == ()
    assert result.reason == "orders/paid body is not paid (financial_status 'voided'); not counted"


# --- values checked at parse time ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"total_price": "1e30"}, "total_price"),
        ({"total_price": "\u0663"}, "total_price"),
        ({"subtotal_price": "-1.00"}, "subtotal_price"),
        ({"currency": "ÅÄÖ"}, "currency"),
        ({"id": 2**64}, "id"),
        ({"id": -1}, "id"),
        ({"customer": {"id": "c" * 256}}, "id"),
        ({"line_items": [{"quantity": 10**6 + 1}]}, "quantity"),
        ({"line_items": [{"quantity": -1}]}, "quantity"),
    ],
)
def test_order_values_out_of_bounds_are_payload_errors(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError, match=field) as caught:
        parse("orders/paid", paid_order(**changes))
    assert "ÅÄÖ" not in str(caught.value) and "1e30" not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-shopify-topic": "orders/paid\x00"}, "X-Shopify-Topic"),
        ({"x-shopify-topic": "orders/" + "p" * 200}, "X-Shopify-Topic"),
        ({"x-shopify-topic": "orders/paid", "x-shopify-event-id": "e" * 300}, "Event-Id"),
        ({"x-shopify-topic": "orders/paid", "x-shopify-event-id": "e\u00e9"}, "Event-Id"),
        ({"x-shopify-topic": "orders/paid", "x-shopify-webhook-id": "w x"}, "Webhook-Id"),
    ],
)
def test_unsigned_headers_must_fit_their_columns(headers: dict[str, str], message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        SPEC.parse(headers, RAW)


def test_unused_topic_reason_is_printable_ascii() -> None:
    assert parse("orders/updated", paid_order()).reason == "this topic is not used"


def test_refund_ids_and_amounts_are_checked() -> None:
    refund = fixture("shopify", "refunds_create")
    refund["transactions"][0]["amount"] = "1e30"
    with pytest.raises(PayloadError, match="transactions"):
        parse("refunds/create", refund)
    many = fixture("shopify", "refunds_create")
    many["transactions"] = [dict(many["transactions"][0], amount="999999999999.00")] * 3
    with pytest.raises(PayloadError, match="transactions"):  # the sum is out of range
        parse("refunds/create", many)


def test_redaction_order_ids_must_be_ids() -> None:
    payload = fixture("shopify", "customers_redact")
    for bad in (["x"], [-1], [2**64], list(range(1, 10_002))):
        with pytest.raises(PayloadError):
            parse("customers/redact", {**payload, "orders_to_redact": bad})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01T00:00:00Z", 1_704_067_200.0),
        ("2024-01-01T00:00:00", 1_704_067_200.0),  # no offset: UTC, not the server's zone
        ("2024-01-01T01:00:00+01:00", 1_704_067_200.0),
        ("9999-12-31T23:59:59-14:00", 0.0),  # past year 9999 in UTC
        ("1969-12-31T23:59:59Z", 0.0),
        ("0001-01-01T00:00:00+14:00", 0.0),
        ("not a time", 0.0),
    ],
)
def test_order_times_are_bounded(value: str, expected: float) -> None:
    order = paid_order(processed_at=value)
    assert parse("orders/paid", order).events[0].occurred_at == expected


def test_hmac_header_of_100_kb_is_a_signature_error() -> None:
    with pytest.raises(SignatureError):
        verify({"x-shopify-hmac-sha256": "A" * 100_000})


def test_note_attributes_are_bounded() -> None:
    entries: list[dict[str, Any]] = [
        {"name": f"k{n}", "value": str(n)} for n in range(MAX_ATTRIBUTES + 150)
    ]
    entries.insert(0, {"name": "big", "value": "x" * 1_000_000})
    entries.insert(1, {"name": "n", "value": 12})
    entries.insert(2, {"name": "\ud800", "value": "dropped"})
    attributes = parse("orders/paid", paid_order(note_attributes=entries)).events[0].attributes
    assert len(attributes) == MAX_ATTRIBUTES
    assert len(attributes["big"]) == 65_536 and attributes["n"] == "12"
    assert "\ud800" not in attributes


TOPIC_FIXTURES = {
    "orders/paid": "orders_paid",
    "orders/create": "orders_create",
    "refunds/create": "refunds_create",
    "customers/redact": "customers_redact",
    "customers/data_request": "customers_data_request",
    "shop/redact": "shop_redact",
}
ORDER_TOPICS = {"orders/paid", "orders/create"}


@pytest.mark.parametrize(
    ("body_topic", "header_topic"),
    [(b, h) for b in TOPIC_FIXTURES for h in TOPIC_FIXTURES if b != h],
)
def test_a_signed_body_replayed_under_any_other_topic_is_refused_or_the_same_order(
    body_topic: str, header_topic: str
) -> None:
    # Only the body is signed: a body replayed under another handled topic header is a
    # PayloadError, except between the two order topics, whose bodies share one shape; there
    # it can only give the same purchase (one business key), and only when the body is paid.
    name = TOPIC_FIXTURES[body_topic]
    if body_topic in ORDER_TOPICS:
        payload = shopify_order(name, financial_status="paid")
    else:
        payload = fixture("shopify", name)
    raw = body(payload)
    headers = {"x-shopify-topic": header_topic, "x-shopify-event-id": "replayed"}
    if {body_topic, header_topic} != ORDER_TOPICS:
        with pytest.raises(PayloadError, match=f"not a {header_topic} body"):
            SPEC.parse(headers, raw)
        return
    replayed = SPEC.parse(headers, raw)
    original = SPEC.parse({**headers, "x-shopify-topic": body_topic}, raw)
    (event,) = replayed.events
    (same,) = original.events
    assert (event.kind, event.order_id, event.amounts) == (same.kind, same.order_id, same.amounts)
    assert replayed.redaction is None


def test_experiment_attribute_after_many_other_cart_attributes_is_kept() -> None:
    """A shop's theme may write dozens of cart attributes before the experiment pairs."""
    attributes = [{"name": f"theme_field_{n}", "value": "x"} for n in range(120)]
    attributes.append({"name": "convert_experiments", "value": "100-200"})
    result = parse("orders/paid", paid_order(note_attributes=attributes))
    assert result.events[0].attributes["convert_experiments"] == "100-200"
