"""WooCommerce: signature, ping, order mapping and the path to Convert, on the REST v3 order
examples of WooCommerce's documentation (tests/fixtures/woocommerce/SOURCES.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters import woocommerce
from adapters.request import SignedRequest
from adapters.woocommerce import SPEC
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import body, fixture
from webhooks.core.errors import PayloadError, SignatureError
from webhooks.core.events import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_EVENTS_PER_DELIVERY,
    EventKind,
    ParseResult,
)
from webhooks.core.settings import SourceSettings
from webhooks.storage.schema import deliveries, events

SECRET = "wc_secret_current_0123456789"
OLD_SECRET = "wc_secret_previous_9876543210"
SETTINGS = SourceSettings("woo", "woocommerce", (OLD_SECRET, SECRET), 300, False, "k", "total")
SOURCE = {"woo": {"platform": "woocommerce", "secrets": [SECRET, OLD_SECRET]}}
PROCESSING = "order_updated_processing"
COMPLETED = "order_updated_completed"
PENDING = "order_created_pending"
REFUNDED = "order_completed_refunds"
PURCHASE_GOALS = "g=100%2C101&ga=2&t=100"  # tests/config_file.py: conversion 100,101; txn 100
HOSTILE_TEXT = ["1e5", "NaN", "Infinity", "\u0663", "\u00b2", "-29.35", " 29.35", "29,35", ""]
HOSTILE_TEXT += ["1_000", "0x10", "1" + "0" * 40, "29.35\x00", "\ud800", "\u202e29.35"]


def order(name: str = PROCESSING, **changes: Any) -> dict[str, Any]:
    payload = fixture("woocommerce", name)
    payload.update(changes)
    return payload


def with_meta(payload: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    payload["meta_data"] = [*payload["meta_data"], {"id": 99001, "key": key, "value": value}]
    return payload


def parse(payload: dict[str, Any] | bytes, topic: str = "order.updated") -> ParseResult:
    raw = payload if isinstance(payload, bytes) else body(payload)
    return SPEC.parse({"x-wc-webhook-topic": topic}, raw)


def signature(raw: bytes, secret: str = SECRET) -> str:
    return woocommerce.SCHEME.sign(raw, secret, 0)["X-WC-Webhook-Signature"]


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def wc_headers(raw: bytes, topic: str = "order.updated", secret: str = SECRET) -> dict[str, str]:
    """What class-wc-webhook.php `deliver` sends (a new delivery id every time)."""
    resource, _, event = topic.partition(".")
    return {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.9.9 Hookshot (WordPress/6.8)",
        "X-WC-Webhook-Source": "https://example.com/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": signature(raw, secret),
        "X-WC-Webhook-ID": "7",
        "X-WC-Webhook-Delivery-ID": hashlib.md5(raw + topic.encode()).hexdigest(),
    }


@pytest.fixture
def woo(make_service: Any, sqlite_url: str) -> Service:
    svc: Service = make_service(sqlite_url, sources=SOURCE)
    return svc


def post(service: Service, payload: dict[str, Any] | bytes, topic: str = "order.updated") -> Any:
    raw = payload if isinstance(payload, bytes) else body(payload)
    return service.client.post("/webhooks/woo", data=raw, headers=wc_headers(raw, topic))


def post_raw(service: Service, raw: bytes, headers: dict[str, str] | None = None) -> Any:
    """A request as is: no signature, only the headers given."""
    return service.client.post("/webhooks/woo", data=raw, headers=headers or {})


def stored(service: Service) -> tuple[list[Any], list[Any]]:
    with service.runtime.engine.connect() as conn:
        rows = conn.execute(select(deliveries).order_by(deliveries.c.id)).all()
        found = conn.execute(select(events).order_by(events.c.id)).all()
    return list(rows), list(found)


def track(pair: str, txn: str, value: str, count: int) -> str:
    return f"/track/?c=1111&p=2222&e={pair}&{PURCHASE_GOALS}%7C{txn}%7C{value}%7C{count}"


# --- the signature ----------------------------------------------------------------------------


def test_signature_is_base64_hmac_sha256_of_the_body_keyed_with_the_secret() -> None:
    """generate_signature: base64_encode(hash_hmac('sha256', $body, $secret, true)), computed
    here with hmac/hashlib directly, on the documented order (the contract suite pins the same
    scheme to WooCommerce's own test vector)."""
    raw = body(order())
    expected = base64.b64encode(hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()).decode()
    assert signature(raw) == expected
    for secret in SETTINGS.secrets:  # either secret while the webhook's secret is changed
        SPEC.verify(
            SignedRequest.post(raw, {"X-WC-Webhook-Signature": signature(raw, secret)}), SETTINGS, 0
        )
    hex_digest = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    for bad in (hex_digest, signature(raw + b"\n"), signature(raw, "other_secret_0123456789")):
        with pytest.raises(SignatureError):
            SPEC.verify(SignedRequest.post(raw, {"X-WC-Webhook-Signature": bad}), SETTINGS, 0)


def test_an_unsigned_or_wrongly_signed_order_is_refused_and_nothing_is_stored(woo: Service) -> None:
    raw = body(order())
    headers = wc_headers(raw)
    del headers["X-WC-Webhook-Signature"]
    assert woo.client.post("/webhooks/woo", data=raw, headers=headers).status_code == 401
    wrong = wc_headers(raw, secret="not_the_secret_0123456789")
    assert woo.client.post("/webhooks/woo", data=raw, headers=wrong).status_code == 401
    assert stored(woo) == ([], [])


# --- paid or not ------------------------------------------------------------------------------


def test_a_processing_order_with_date_paid_is_a_purchase() -> None:
    payload = order()
    raw = body(payload)
    result = parse(raw)
    (purchase,) = result.events
    assert result.delivery_key == f"order.updated:727:sha256:{hashlib.sha256(raw).hexdigest()}"
    assert result.topic == "order.updated"
    assert purchase.kind is EventKind.PURCHASE
    assert purchase.order_id == "727"
    assert (purchase.revenue("total").amount, purchase.revenue("total").currency) == (
        Decimal("29.35"),
        "USD",
    )
    assert purchase.revenue("subtotal").amount == Decimal("18.00")  # 6.00 + 12.00
    assert purchase.item_count == 3  # 2 + 1
    assert purchase.customer_id is None  # customer_id 0: a guest
    assert purchase.email_digest == hashlib.sha256(b"john.doe@example.com").hexdigest()
    assert purchase.test_mode is False  # WooCommerce has no test flag
    assert purchase.occurred_at == utc("2017-03-22T19:28:08")  # date_paid_gmt
    assert purchase.attributes == {
        "_download_permissions_granted": "yes",
        "pa_color": "black",  # line item meta, after the order's own
        "size": "M Test",
    }


@pytest.mark.parametrize("status", ["processing", "completed", "refunded"])
def test_paid_statuses_with_date_paid_count(status: str) -> None:
    (purchase,) = parse(order(status=status)).events
    assert purchase.kind is EventKind.PURCHASE and purchase.order_id == "727"


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("pending", "'pending'"),
        ("on-hold", "'on-hold'"),
        ("failed", "'failed'"),
        ("cancelled", "'cancelled'"),
        ("checkout-draft", "'checkout-draft'"),
        ("trash", "'trash'"),
        ("shipped-by-plugin", "an unexpected value"),
        ("\u202epaid", "an unexpected value"),
    ],
)
def test_other_statuses_are_not_paid_even_with_date_paid(status: str, shown: str) -> None:
    result = parse(order(status=status))
    assert result.events == ()
    assert result.reason is not None and f"order status {shown};" in result.reason


@pytest.mark.parametrize("status", ["processing", "completed"])
def test_a_paid_status_without_date_paid_is_not_paid(status: str) -> None:
    # Cash on delivery is "processing" until it is completed; the documented order 723 is
    # "completed" with date_paid null (SOURCES.md).
    result = parse(order(status=status, date_paid=None, date_paid_gmt=None))
    assert result.events == ()
    assert result.reason == (
        f"order status '{status}' without date_paid; a purchase counts once the order is"
        " processing or completed with date_paid set"
    )


def test_the_documented_pending_order_is_not_paid() -> None:
    result = parse(order(PENDING), "order.created")
    assert result.events == ()
    assert "'pending' without date_paid" in (result.reason or "")


def test_date_paid_alone_is_enough_and_gives_the_time() -> None:
    (purchase,) = parse(order(date_paid_gmt=None)).events
    assert purchase.occurred_at == utc("2017-03-22T16:28:08")  # the shop's zone, read as UTC
    (purchase,) = parse(order(date_paid_gmt="")).events  # empty: not set, date_paid decides
    assert purchase.order_id == "727"


@pytest.mark.parametrize(
    "value", ["yesterday", "2017-13-22T19:28:08", "2017-03-22", 1490210888, True, [], {}]
)
def test_a_date_paid_that_is_no_date_is_a_payload_error(value: object) -> None:
    with pytest.raises(PayloadError, match="date_paid_gmt"):
        parse(order(date_paid_gmt=value))


def test_a_renewal_order_of_woocommerce_subscriptions_is_a_renewal() -> None:
    renewal = with_meta(order(), "_subscription_renewal", "1275")
    (event,) = parse(renewal).events
    assert event.kind is EventKind.SUBSCRIPTION_RENEWAL and event.order_id == "727"
    for empty in ("", None, False, "0"):
        (event,) = parse(with_meta(order(), "_subscription_renewal", empty)).events
        assert event.kind is EventKind.PURCHASE


# --- one purchase, however many updates -------------------------------------------------------


def test_repeated_updates_of_one_order_count_once(woo: Service) -> None:
    processing = body(order())
    first = post(woo, processing)
    assert (first.status_code, first.json["status"]) == (200, "accepted")
    # The same state sent again (a second hook in the same change): the same delivery.
    again = post(woo, processing)
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert again.json["reason"] == "delivery already received"
    # Completed later, and the same body under order.created: new deliveries, one purchase.
    for raw, topic in ((body(order(COMPLETED)), "order.updated"), (processing, "order.created")):
        later = post(woo, raw, topic)
        assert (later.status_code, later.json["status"]) == (200, "duplicate")
        assert later.json["reason"] == "purchase already counted from an earlier delivery"
    rows, found = stored(woo)
    assert [r.status for r in rows] == ["accepted", "duplicate", "duplicate"]
    assert [(e.kind, e.order_id, e.amount) for e in found] == [("purchase", "727", "29.35")]


def test_the_delivery_key_follows_the_body_not_the_delivery_id() -> None:
    raw = body(order())
    key = parse(raw).delivery_key
    other_headers = {"x-wc-webhook-topic": "order.updated", "x-wc-webhook-delivery-id": "x"}
    assert SPEC.parse(other_headers, raw).delivery_key == key
    changed = body(with_meta(order(), "note", "x"))
    assert parse(changed).delivery_key != key
    assert parse(raw, "order.created").delivery_key != key  # the topic is part of it


def test_meta_data_added_by_a_later_update_reaches_the_waiting_purchase(
    woo: Service, recorder: ConvertRecorder
) -> None:
    """The shop saves the pairs after payment: the later body is a new delivery and its meta
    data joins the stored purchase, which is then sent, once."""
    post(woo, order())
    woo.drain()
    assert recorder.paths == []
    _, (purchase,) = stored(woo)
    assert purchase.reason_code == "no_experiment_data"
    later = with_meta(order(COMPLETED), "convert_experiments", "100-200")
    assert post(woo, later).json["status"] == "duplicate"
    woo.drain()
    assert recorder.paths == [track("100-200", "727", "29.35", 3)]


# --- refunds ----------------------------------------------------------------------------------


def test_each_refund_of_the_order_is_a_refund_event() -> None:
    # The documented order 723: completed without date_paid (no purchase), two refunds.
    result = parse(order(REFUNDED))
    assert [
        (e.kind, e.order_id, e.refund_of, e.revenue("total").amount) for e in result.events
    ] == [
        (EventKind.REFUND, "726", "723", Decimal("10.00")),
        (EventKind.REFUND, "724", "723", Decimal("9.00")),
    ]
    assert all(e.revenue("total").currency == "USD" and e.item_count == 0 for e in result.events)
    assert all(e.occurred_at == utc("2017-03-21T19:54:51") for e in result.events)
    assert "without date_paid" in (result.reason or "")


def test_a_paid_order_with_a_refund_gives_the_purchase_and_the_refund() -> None:
    payload = order(status="refunded", refunds=[{"id": 730, "reason": "", "total": "-29.35"}])
    purchase, refund = parse(payload).events
    assert (purchase.kind, purchase.order_id) == (EventKind.PURCHASE, "727")
    assert (refund.kind, refund.order_id, refund.refund_of) == (EventKind.REFUND, "730", "727")
    assert refund.revenue("total").amount == Decimal("29.35")


def test_a_refund_is_recorded_once_and_stays_when_it_is_deleted(woo: Service) -> None:
    refund = {"id": 730, "reason": "damaged", "total": "-5.00"}
    assert post(woo, order(refunds=[refund])).json["status"] == "accepted"
    # A second refund: order.updated again, listing both (newest first).
    second = {"id": 731, "reason": "", "total": "-1.50"}
    assert post(woo, order(refunds=[second, refund])).json["status"] == "accepted"
    # The first refund deleted: order.updated fires with only the second (Corrections).
    assert post(woo, order(refunds=[second])).json["status"] == "duplicate"
    _, found = stored(woo)
    assert [(e.kind, e.order_id, e.refund_of, e.amount, e.state) for e in found] == [
        ("purchase", "727", None, "29.35", "pending"),  # not drained: nothing sent yet
        ("refund", "730", "727", "5.00", "skipped"),
        ("refund", "731", "727", "1.50", "skipped"),
    ]


@pytest.mark.parametrize("total", ["-1e5", "--5", "NaN", "-\u0663", "", "-", "- 5", 5, None])
def test_odd_refund_totals_are_payload_errors(total: object) -> None:
    payload = order(refunds=[{"id": 730, "reason": "", "total": total}])
    with pytest.raises(PayloadError, match=r"refunds\[\]\.total") as caught:
        parse(payload)
    assert "1e5" not in str(caught.value)


def test_a_refund_total_without_its_minus_sign_is_read_as_the_amount() -> None:
    payload = order(refunds=[{"id": 730, "reason": "", "total": "5.00"}])
    assert parse(payload).events[1].revenue("total").amount == Decimal("5.00")


@pytest.mark.parametrize("refund_id", [0, -1, 2**64, True, "730", 7.5, None])
def test_refund_ids_must_be_positive_integers(refund_id: object) -> None:
    with pytest.raises(PayloadError, match=r"refunds\[\]\.id"):
        parse(order(refunds=[{"id": refund_id, "reason": "", "total": "-1.00"}]))


@pytest.mark.parametrize("refunds", [{}, "x", [1], [None], [["730"]]])
def test_refunds_of_the_wrong_shape_are_payload_errors(refunds: object) -> None:
    with pytest.raises(PayloadError, match="refunds"):
        parse(order(refunds=refunds))


def test_refunds_are_deduplicated_and_capped_to_fit_one_delivery() -> None:
    twice = order(refunds=[{"id": 730, "total": "-1.00"}, {"id": 730, "total": "-1.00"}])
    assert [e.order_id for e in parse(twice).events] == ["727", "730"]
    many = [{"id": 1000 + n, "total": "-0.01"} for n in range(150)]
    result = parse(order(refunds=many))
    assert len(result.events) == MAX_EVENTS_PER_DELIVERY
    assert result.events[-1].order_id == "1098"  # the newest 99, as WooCommerce lists them
    many.append({"id": "bad", "total": "-0.01"})  # entries past the cap are still checked
    with pytest.raises(PayloadError, match="refunds"):
        parse(order(refunds=many))


# --- amounts and other fields -----------------------------------------------------------------


@pytest.mark.parametrize("total", [*HOSTILE_TEXT, 29.35, 29, None, True, ["29.35"]])
def test_odd_order_totals_are_payload_errors_naming_the_field(total: object) -> None:
    with pytest.raises(PayloadError, match="total") as caught:
        parse(order(total=total))
    assert "1e5" not in str(caught.value) and "NaN" not in str(caught.value)


@pytest.mark.parametrize("subtotal", [*HOSTILE_TEXT, 6, None])
def test_odd_line_subtotals_are_payload_errors(subtotal: object) -> None:
    payload = order()
    payload["line_items"][0]["subtotal"] = subtotal
    with pytest.raises(PayloadError, match=r"line_items\[\]\.subtotal"):
        parse(payload)


@pytest.mark.parametrize("quantity", [-1, 10**6 + 1, 2**70])
def test_line_quantities_are_bounded(quantity: int) -> None:
    payload = order()
    payload["line_items"][0]["quantity"] = quantity
    with pytest.raises(PayloadError, match="quantity"):
        parse(payload)


def test_amounts_keep_their_decimals_and_the_currency_is_upper_cased() -> None:
    (purchase,) = parse(order(total="0.10", currency="eur")).events
    assert purchase.revenue("total").amount == Decimal("0.10")
    assert purchase.revenue("total").currency == "EUR"
    (free,) = parse(order(total="0.00")).events
    assert free.revenue("total").amount == Decimal("0.00")


@pytest.mark.parametrize("currency", ["US", "USDX", "\u00c5\u00c4\u00d6", "U$D", "", 840, None])
def test_odd_currencies_are_payload_errors(currency: object) -> None:
    with pytest.raises(PayloadError, match="currency"):
        parse(order(currency=currency))


@pytest.mark.parametrize(
    ("customer", "expected"), [(26, "26"), (0, None), (2**64 - 1, str(2**64 - 1))]
)
def test_customer_id_zero_is_a_guest(customer: int, expected: str | None) -> None:
    assert parse(order(customer_id=customer)).events[0].customer_id == expected


@pytest.mark.parametrize("customer", [-1, 2**64, True, False, "26", 2.5, [26]])
def test_odd_customer_ids_are_payload_errors(customer: object) -> None:
    with pytest.raises(PayloadError, match="customer_id"):
        parse(order(customer_id=customer))


@pytest.mark.parametrize("billing", [None, "x", [], {"email": 5}, {"email": "no-at-sign"}])
def test_an_unusable_billing_email_gives_no_digest(billing: object) -> None:
    assert parse(order(billing=billing)).events[0].email_digest is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", 0), ("id", "727"), ("id", True), ("id", 2**64), ("status", 1), ("status", None)]
    + [("line_items", {}), ("line_items", None), ("total", None), ("currency", None)],
)
def test_an_order_topic_with_a_body_that_is_no_order_is_a_payload_error(
    field: str, value: object
) -> None:
    with pytest.raises(PayloadError, match=field):
        parse({**order(), field: value})


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b"not json", b'{"id": 727}', b'{"total": NaN}', b"\xff\xfe", b"[" * 5000]
)
def test_malformed_bodies_under_an_order_topic_are_payload_errors(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse(raw)


# --- experiment data: meta_data ---------------------------------------------------------------


def test_meta_values_that_are_arrays_or_objects_are_kept_as_json() -> None:
    visitor = {"visitorId": "v1", "bucketing": [{"experienceId": "100", "variationId": "200"}]}
    payload = with_meta(order(), "convert_visitor", visitor)
    payload = with_meta(payload, "pairs_list", ["100-200", 7, "DECIMAL", None, True])
    payload = with_meta(payload, "number", 12)
    payload = with_meta(payload, "flag", True)
    payload = with_meta(payload, "nothing", None)
    raw = body(payload).replace(b'"DECIMAL"', b"1.50")  # a JSON number json.dumps cannot write
    attributes = parse(raw).events[0].attributes
    assert json.loads(attributes["convert_visitor"]) == visitor
    assert attributes["convert_visitor"] == json.dumps(visitor, separators=(",", ":"))
    assert attributes["pairs_list"] == '["100-200",7,1.50,null,true]'  # digits kept, no float
    assert attributes["number"] == "12"
    assert "flag" not in attributes and "nothing" not in attributes


def test_a_shops_own_underscore_meta_is_kept_and_the_first_of_a_name_wins() -> None:
    payload = with_meta(order(), "_convert_experiments", "100-200")
    payload = with_meta(payload, "_convert_experiments", "999-999")
    payload["line_items"][0]["meta_data"] = [{"id": 1, "key": "_convert_experiments", "value": "x"}]
    payload["line_items"][1]["meta_data"].append(
        {"id": 2, "key": "convert_experiments", "value": "1-2"}
    )
    attributes = parse(payload).events[0].attributes
    assert attributes["_convert_experiments"] == "100-200"
    assert attributes["convert_experiments"] == "1-2"  # only a line item has it


def test_unusable_meta_entries_are_dropped_not_fatal() -> None:
    deep: Any = "x"
    for _ in range(woocommerce.MAX_META_DEPTH + 2):
        deep = [deep]
    payload = order()
    payload["meta_data"] = [
        "not an object",
        {"id": 1, "key": 5, "value": "numeric key"},
        {"id": 2, "key": "nul", "value": "a\x00b"},
        {"id": 3, "key": "\ud800", "value": "lone surrogate key"},
        {"id": 4, "key": "deep", "value": deep},
        {"id": 5, "key": "huge", "value": ["y" * MAX_ATTRIBUTE_VALUE_CHARS]},
        {"id": 6, "key": "convert_experiments", "value": "100-200"},
    ]
    payload["line_items"][0]["meta_data"] = {"not": "a list"}
    attributes = parse(payload).events[0].attributes
    assert attributes == {"convert_experiments": "100-200", "pa_color": "black", "size": "M Test"}


def test_the_experiment_meta_after_many_other_entries_is_kept() -> None:
    payload = order()
    payload["meta_data"] = [{"id": n, "key": f"_plugin_{n}", "value": "v"} for n in range(200)]
    payload["meta_data"].append({"id": 999, "key": "big", "value": "z" * 60_000})
    payload["meta_data"].append({"id": 1000, "key": "convert_experiments", "value": "1-2"})
    assert parse(payload).events[0].attributes["convert_experiments"] == "1-2"


# --- topics: the header is not signed ---------------------------------------------------------


def test_the_topic_header_is_required_and_bounded() -> None:
    raw = body(order())
    for headers, message in (
        ({}, "missing X-WC-Webhook-Topic"),
        ({"x-wc-webhook-topic": ""}, "missing X-WC-Webhook-Topic"),
        ({"x-wc-webhook-topic": "order.updated\x00"}, "X-WC-Webhook-Topic"),
        ({"x-wc-webhook-topic": "order." + "u" * 200}, "X-WC-Webhook-Topic"),
        ({"x-wc-webhook-topic": "order updated"}, "X-WC-Webhook-Topic"),
    ):
        with pytest.raises(PayloadError, match=message):
            SPEC.parse(headers, raw)


def test_deleted_orders_and_other_topics_are_ignored_with_a_reason() -> None:
    deleted = parse(b'{"id":727}', "order.deleted")  # build_payload: only the id
    assert (deleted.events, deleted.topic) == ((), "order.deleted")
    assert deleted.reason == "order moved to the trash; a counted purchase stays counted"
    action = body({"action": "woocommerce_payment_complete", "arg": 727})
    for topic, raw in (("action.woocommerce_payment_complete", action), ("product.updated", b"{}")):
        result = parse(raw, topic)
        assert (result.events, result.reason) == ((), "this topic is not used")
        assert result.delivery_key == f"{topic}:sha256:{hashlib.sha256(raw).hexdigest()}"


ORDER_TOPICS = sorted(woocommerce.ORDER_TOPICS)
OTHER_TOPICS = ["order.deleted", "product.updated", "customer.created", "action.wc_x", "x"]


@pytest.mark.parametrize("fixture_name", [PROCESSING, COMPLETED, PENDING, REFUNDED])
@pytest.mark.parametrize("topic", ORDER_TOPICS + OTHER_TOPICS)
def test_a_signed_body_replayed_under_another_topic_means_no_more_than_the_order_says(
    fixture_name: str, topic: str
) -> None:
    """Paid or not is read from the order, never from the topic: under any order topic the
    body gives the same events; under any other topic it gives none."""
    raw = body(order(fixture_name))
    original = parse(raw, "order.updated")
    replayed = parse(raw, topic)
    assert replayed.delivery_key != original.delivery_key or topic == "order.updated"
    if topic in woocommerce.ORDER_TOPICS:
        assert replayed.events == original.events
    else:
        assert replayed.events == ()


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(topic=st.text(max_size=140))
def test_any_topic_header_gives_the_orders_own_events_none_or_a_payload_error(topic: str) -> None:
    raw = body(order())
    original = parse(raw).events
    try:
        result = SPEC.parse({"x-wc-webhook-topic": topic}, raw)
    except PayloadError:
        return
    assert result.events in ((), original)


def test_a_replay_under_an_ignored_topic_does_not_take_the_real_deliverys_place(
    woo: Service,
) -> None:
    raw = body(order())
    assert post(woo, raw, "product.updated").json["status"] == "ignored"
    assert post(woo, raw, "order.deleted").json["status"] == "ignored"
    assert post(woo, raw, "order.updated").json["status"] == "accepted"
    _, found = stored(woo)
    assert [(e.kind, e.order_id) for e in found] == [("purchase", "727")]


# --- the ping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
    ],
)
def test_the_ping_is_an_ignored_delivery_per_webhook(content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    result = woocommerce.ping(headers, b"webhook_id=42")
    assert result is not None
    assert (result.delivery_key, result.topic, result.events) == ("ping:42", "ping", ())
    assert SPEC.unsigned_ping(headers, b"webhook_id=" + b"9" * 20) is not None


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"webhook_id=42", "application/json"),
        (b"webhook_id=42", "text/plain"),
        (b"webhook_id=42", "multipart/form-data; boundary=x"),
        (b"webhook_id=42&status=active", None),
        (b"webhook_id=42&webhook_id=43", None),
        (b"status=active&webhook_id=42", None),
        (b"webhook_id=", None),
        (b"webhook_id=" + b"1" * 21, None),
        (b"webhook_id=" + b"1" * 10_000, None),
        ("webhook_id=\u0664\u0662".encode(), None),
        (b"webhook_id=\xd9\xa4", None),
        (b"webhook_id=42\n", None),
        (b"webhook_id=42\x00", None),
        (b" webhook_id=42", None),
        (b"webhook_id=-42", None),
        (b"webhook_id=4.2", None),
        (b"webhook_id=%34%32", None),
        (b"WEBHOOK_ID=42", None),
        (b"webhook_id=42;", None),
        (b'{"webhook_id": 42}', None),
        (b"", None),
    ],
)
def test_anything_that_is_not_exactly_a_ping_is_not_one(
    raw: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    assert woocommerce.ping(headers, raw) is None


def test_the_ping_through_the_app_is_answered_exactly_200_stored_and_not_verified(
    woo: Service,
) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    agent = {"User-Agent": "WooCommerce/9.9.9 Hookshot (WordPress/6.8)"}
    first = post_raw(woo, b"webhook_id=5", {**form, **agent})
    assert (first.status_code, first.json["status"]) == (200, "ignored")
    # Without a content type (WooCommerce does not always set one): a second ping, 200 too.
    again = post_raw(woo, b"webhook_id=5", agent)
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    rows, found = stored(woo)
    assert [(r.delivery_key, r.topic, r.status) for r in rows] == [("ping:5", "ping", "ignored")]
    assert rows[0].reason == "WooCommerce webhook ping (webhook saved active); nothing to count"
    assert found == []


@pytest.mark.parametrize(
    "raw",
    [
        b"webhook_id=5&x=1",
        b"webhook_id=" + b"5" * 21,
        "webhook_id=\u0665".encode(),
        b"webhook_id=5\n",
    ],
)
def test_a_ping_lookalike_through_the_app_is_refused_unsigned(woo: Service, raw: bytes) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = woo.client.post("/webhooks/woo", data=raw, headers=form)
    assert response.status_code == 401
    assert stored(woo) == ([], [])


def test_a_ping_body_with_a_json_content_type_is_refused_unsigned(woo: Service) -> None:
    headers = {"Content-Type": "application/json"}
    assert (
        woo.client.post("/webhooks/woo", data=b"webhook_id=5", headers=headers).status_code == 401
    )


def test_a_stored_ping_replays_as_the_same_ignored_delivery(woo: Service) -> None:
    from webhooks.wiring.replay import replay_delivery

    delivery_id = post_raw(woo, b"webhook_id=5").json["delivery_id"]
    outcome = replay_delivery(woo.runtime.engine, woo.settings, delivery_id, woo.clock.now())
    assert (outcome.status, outcome.events) == ("ignored", [])


# --- end to end -------------------------------------------------------------------------------


def test_a_paid_order_with_experiment_meta_becomes_one_convert_request(
    woo: Service, recorder: ConvertRecorder
) -> None:
    pending = with_meta(order(PENDING), "convert_experiments", "100-200")
    assert post(woo, pending, "order.created").json["status"] == "ignored"
    paid = with_meta(order(), "convert_experiments", "100-200")
    response = post(woo, paid)
    assert (response.status_code, response.json["status"]) == (200, "accepted")
    woo.drain()
    assert recorder.paths == [track("100-200", "727", "29.35", 3)]
    # Completed later, refunded later: nothing more is sent.
    post(woo, with_meta(order(COMPLETED), "convert_experiments", "100-200"))
    refunded = with_meta(order(status="refunded"), "convert_experiments", "100-200")
    refunded["refunds"] = [{"id": 730, "reason": "", "total": "-29.35"}]
    post(woo, refunded)
    woo.drain()
    assert len(recorder.paths) == 1
    _, found = stored(woo)
    assert [(e.kind, e.state) for e in found] == [("purchase", "sent"), ("refund", "skipped")]


def test_the_subtotal_basis_and_convert_json_meta_reach_convert(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    source = {"woo": {**SOURCE["woo"], "revenue": "subtotal"}}
    woo: Service = make_service(sqlite_url, sources=source)
    visitor = {"visitorId": "v1", "bucketing": [{"experienceId": "100", "variationId": "200"}]}
    post(woo, with_meta(order(), "convert_experiments", visitor))
    woo.drain()
    assert recorder.paths == [track("100-200", "727", "18.00", 3)]


# --- never a 500 ------------------------------------------------------------------------------

HOSTILE_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [*HOSTILE_TEXT, None, True, False, 0, -1, 2**64, 10**100, [], {}, [None], {"": []}]
) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
FIELDS = ["id", "status", "currency", "total", "customer_id", "billing", "date_paid_gmt"]
FIELDS += ["date_paid", "date_modified_gmt", "meta_data", "line_items", "refunds"]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), HOSTILE_VALUES, min_size=1, max_size=3))
def test_hostile_field_values_give_a_result_or_a_payload_error(changes: dict[str, Any]) -> None:
    for topic in ("order.updated", "order.created"):
        try:
            result = parse(order(**changes), topic)
        except PayloadError as exc:
            assert len(str(exc)) < 200
            continue
        assert all(e.order_id for e in result.events)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), HOSTILE_VALUES, min_size=1, max_size=2))
def test_hostile_signed_orders_through_the_app_are_200_or_400(
    woo: Service, changes: dict[str, Any]
) -> None:
    response = post(woo, order(**changes))
    assert response.status_code in (200, 400), response.json
    assert response.is_json
