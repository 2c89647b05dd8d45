"""Lemon Squeezy verification and event mapping, on the documentation's own examples
(tests/fixtures/lemonsqueezy), and end to end through the app to a local stand-in for Convert."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters.lemonsqueezy import SCHEME, SPEC
from adapters.payload import email_digest
from adapters.request import SignedRequest
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import body, fixture
from webhooks.core.errors import PayloadError, SignatureError
from webhooks.core.events import EventKind, ParseResult
from webhooks.core.settings import SourceSettings
from webhooks.storage.schema import events

SECRET = "ls_signing_secret_1"
OLD_SECRET = "ls_signing_secret_0"
PAIRS = {"convert_experiments": "100-200"}
INVOICE = "subscription-invoice:1"


def ls_event(name: str, meta: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """A fixture body; keyword arguments replace fields of `data.attributes`, `meta` of meta."""
    event = fixture("lemonsqueezy", name)
    event["data"]["attributes"].update(changes)
    event["meta"].update(meta or {})
    return event


def parse(event: dict[str, Any], headers: dict[str, str] | None = None) -> ParseResult:
    return SPEC.parse(headers or {}, body(event))


def attrs(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = event["data"]["attributes"]
    return found


# --- the signature ---------------------------------------------------------------------------

SETTINGS = SourceSettings("l", "lemonsqueezy", (SECRET, OLD_SECRET), 300, False, "k", "total")
RAW = body(ls_event("order_created"))


def verify(headers: dict[str, str], raw: bytes = RAW) -> None:
    SPEC.verify(SignedRequest.post(raw, headers), SETTINGS, 0)


def test_either_secret_verifies_the_raw_body_whatever_the_event_name_header() -> None:
    verify(SCHEME.sign(RAW, SECRET, 0))
    verify({**SCHEME.sign(RAW, OLD_SECRET, 0), "X-Event-Name": "order_refunded"})


@pytest.mark.parametrize(
    "header",
    ["", "sha256=" + "0" * 64, "0" * 64, "A" * 64, "z" * 200, "\u00e9" * 64],
)
def test_a_wrong_or_malformed_signature_is_refused(header: str) -> None:
    with pytest.raises(SignatureError):
        verify({"X-Signature": header})


def test_the_signature_is_lower_case_hex_of_the_body() -> None:
    signed = SCHEME.sign(RAW, SECRET, 0)["X-Signature"]
    verify({"X-Signature": f"  {signed} "})  # surrounding blanks are not part of it
    with pytest.raises(SignatureError):
        verify({"X-Signature": signed.upper()})
    with pytest.raises(SignatureError):
        verify({"X-Signature": signed}, RAW + b"\n")


# --- purchases -------------------------------------------------------------------------------


def test_order_created_is_a_purchase_keyed_by_the_order_id() -> None:
    event = ls_event("order_created", meta={"custom_data": PAIRS})
    result = parse(event)
    assert (result.delivery_key, result.topic) == ("order_created:1", "order_created")
    (purchase,) = result.events
    assert purchase.kind is EventKind.PURCHASE
    assert purchase.platform == "lemonsqueezy"
    assert purchase.order_id == "1"
    assert (purchase.revenue("total").amount, purchase.revenue("total").currency) == (
        Decimal("11.99"),
        "USD",
    )
    assert purchase.revenue("subtotal").amount == Decimal("9.99")
    assert purchase.item_count == 1  # the docs' example has no quantity
    assert purchase.customer_id == "1"
    assert purchase.email_digest == email_digest("johndoe@example.com")
    assert purchase.attributes == PAIRS
    assert purchase.test_mode is False
    assert purchase.occurred_at == 1629193553.0  # created_at 2021-08-17T09:45:53Z


def test_the_docs_custom_data_becomes_attributes_as_text() -> None:
    assert parse(ls_event("order_created")).events[0].attributes == {"customer_id": "25"}


@pytest.mark.parametrize("status", ["paid", "refunded", "partial_refund"])
def test_an_order_that_was_paid_counts(status: str) -> None:
    assert parse(ls_event("order_created", status=status)).events[0].kind is EventKind.PURCHASE


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("pending", "'pending'"),
        ("failed", "'failed'"),
        (None, "missing"),
        (["paid"], "an unexpected value"),
    ],
)
def test_an_unpaid_order_is_stored_with_a_reason(status: object, shown: str) -> None:
    result = parse(ls_event("order_created", status=status))
    assert result.events == ()
    assert result.reason == f"order status is {shown}; only a paid order counts"


@pytest.mark.parametrize(
    ("quantity", "count"),
    [
        (3, 3),
        (1, 1),
        (10**6, 10**6),
        (0, 1),
        (-2, 1),
        (10**6 + 1, 1),
        (True, 1),
        ("2", 1),
        (2.5, 1),
        (None, 1),
    ],
)
def test_item_count_is_the_first_item_quantity_when_believable(
    quantity: object, count: int
) -> None:
    event = ls_event("order_created")
    attrs(event)["first_order_item"]["quantity"] = quantity
    assert parse(event).events[0].item_count == count


def test_a_body_replayed_under_another_event_name_header_means_what_it_says() -> None:
    raw = body(ls_event("order_created", meta={"custom_data": PAIRS}))
    plain = SPEC.parse({}, raw)
    for name in ("order_refunded", "subscription_payment_success", "license_key_created", "x"):
        assert SPEC.parse({"x-event-name": name}, raw) == plain


def test_a_resend_has_the_same_delivery_key_and_another_order_another() -> None:
    first = parse(ls_event("order_created"))
    resend = parse(ls_event("order_created", updated_at="2021-08-18T00:00:00.000000Z"))
    assert first.delivery_key == resend.delivery_key
    other = ls_event("order_created")
    other["data"]["id"] = "2"
    assert parse(other).delivery_key == "order_created:2"


# --- renewals --------------------------------------------------------------------------------


def test_subscription_payment_success_is_a_renewal_keyed_by_its_invoice() -> None:
    result = parse(ls_event("subscription_payment_success", meta={"custom_data": PAIRS}))
    assert result.delivery_key == "subscription_payment_success:1"
    (renewal,) = result.events
    assert renewal.kind is EventKind.SUBSCRIPTION_RENEWAL
    assert renewal.order_id == INVOICE  # order 1 and invoice 1 are different things
    assert renewal.revenue("total").amount == Decimal("9.99")
    assert renewal.item_count == 1
    assert renewal.attributes == PAIRS
    assert renewal.occurred_at == 1674044184.0


def test_the_first_invoice_of_a_subscription_is_not_counted_again() -> None:
    result = parse(ls_event("subscription_payment_success", billing_reason="initial"))
    assert result.events == ()
    assert "order_created counts that sale" in (result.reason or "")
    updated = parse(ls_event("subscription_payment_success", billing_reason="updated"))
    assert updated.events[0].kind is EventKind.SUBSCRIPTION_RENEWAL


@pytest.mark.parametrize("status", ["pending", "void", None])
def test_an_unpaid_invoice_is_stored_with_a_reason(status: object) -> None:
    result = parse(ls_event("subscription_payment_success", status=status))
    assert result.events == ()
    assert "only a paid invoice counts" in (result.reason or "")


def test_an_order_body_under_an_invoice_event_name_is_refused() -> None:
    wrong = ls_event("order_created", meta={"event_name": "subscription_payment_success"})
    with pytest.raises(PayloadError, match="does not fit subscription_payment_success"):
        parse(wrong)
    invoice = ls_event("subscription_payment_success", meta={"event_name": "order_created"})
    with pytest.raises(PayloadError, match="does not fit order_created"):
        parse(invoice)


# --- refunds ---------------------------------------------------------------------------------


def test_order_refunded_is_a_refund_keyed_by_the_refunded_amount() -> None:
    result = parse(ls_event("order_refunded"))
    assert result.delivery_key == "order_refunded:1:100"
    (refund,) = result.events
    assert refund.kind is EventKind.REFUND
    assert refund.order_id == "1:refunded:100"
    assert refund.refund_of == "1"
    assert refund.revenue("total").amount == Decimal("1.00")
    assert refund.item_count == 0


def test_a_second_partial_refund_is_a_new_refund_and_a_resend_is_not() -> None:
    first = parse(ls_event("order_refunded"))
    again = parse(ls_event("order_refunded"))
    second = parse(ls_event("order_refunded", refunded_amount=1199, status="refunded"))
    assert again.delivery_key == first.delivery_key
    assert second.delivery_key == "order_refunded:1:1199"
    assert second.events[0].order_id != first.events[0].order_id
    assert second.events[0].revenue("total").amount == Decimal("11.99")


def test_an_older_refund_body_without_refunded_amount_refunds_the_total() -> None:
    event = ls_event("order_refunded", refunded=True, status="refunded")
    del attrs(event)["refunded_amount"]
    (refund,) = parse(event).events
    assert refund.order_id == "1:refunded:1199"
    assert refund.revenue("total").amount == Decimal("11.99")
    attrs(event)["refunded"] = False
    with pytest.raises(PayloadError, match="'refunded_amount'"):
        parse(event)


def test_a_refund_body_showing_nothing_refunded_is_stored_with_a_reason() -> None:
    result = parse(ls_event("order_refunded", refunded_amount=0))
    assert (result.events, result.reason) == ((), "the body shows nothing refunded")


def test_a_refunded_subscription_payment_refunds_its_invoice() -> None:
    event = ls_event(
        "subscription_payment_success",
        meta={"event_name": "subscription_payment_refunded"},
        refunded=True,
        refunded_amount=999,
        status="refunded",
    )
    (refund,) = parse(event).events
    assert refund.refund_of == INVOICE
    assert refund.order_id == f"{INVOICE}:refunded:999"


# --- test mode, amounts, bad input ------------------------------------------------------------


def test_test_mode_is_the_attributes_flag_not_meta() -> None:
    assert parse(ls_event("order_created", test_mode=True)).events[0].test_mode is True
    assert parse(ls_event("order_created", test_mode=False)).events[0].test_mode is False
    in_meta = ls_event("order_created", meta={"test_mode": True})
    assert parse(in_meta).events[0].test_mode is False
    with pytest.raises(PayloadError, match="'test_mode'"):
        parse(ls_event("order_created", test_mode="true"))


@pytest.mark.parametrize(
    ("currency", "minor", "major"),
    [
        ("USD", 1199, "11.99"),
        ("EUR", 5, "0.05"),
        ("JPY", 1199, "1199"),
        ("KRW", 15000, "15000"),
        ("KWD", 1199, "1.199"),
        ("gbp", 0, "0"),
    ],
)
def test_amounts_use_the_currency_exponent(currency: str, minor: int, major: str) -> None:
    (purchase,) = parse(ls_event("order_created", currency=currency, total=minor)).events
    money = purchase.revenue("total")
    assert (money.amount, money.currency) == (Decimal(major), currency.upper())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"total": "1199"}, "'total'"),
        ({"total": 11.99}, "'total'"),
        ({"total": True}, "'total'"),
        ({"total": -1}, "'total'"),
        ({"total": 10**20}, "'total'"),
        ({"total": None}, "'total'"),
        ({"subtotal": "999"}, "'subtotal'"),
        ({"currency": "US"}, "'currency'"),
        ({"currency": "\u00c5\u00c4\u00d6"}, "'currency'"),
        ({"customer_id": 0}, "'customer_id'"),
        ({"customer_id": "c\x00"}, "'customer_id'"),
        ({"customer_id": 2**64}, "'customer_id'"),
    ],
)
def test_bad_values_are_payload_errors_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError, match=field) as caught:
        parse(ls_event("order_created", **changes))
    assert "1199" not in str(caught.value) and "\u00c5" not in str(caught.value)


@pytest.mark.parametrize("data_id", ["", "1 2", "\u00e9", "1" * 65, 1, None, "\x00"])
def test_a_bad_resource_id_is_a_payload_error(data_id: object) -> None:
    event = ls_event("order_created")
    event["data"]["id"] = data_id
    with pytest.raises(PayloadError, match="'id'"):
        parse(event)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"data": {}}',
        b'{"meta": [], "data": {}}',
        b'{"meta": {"event_name": "order created"}, "data": {}}',
        b'{"meta": {"event_name": "order_created"}, "data": []}',
        b'{"meta": {"event_name": "order_created"}, "data": {"type": "orders", "id": "1"}}',
        b"{" * 100_000,
    ],
)
def test_malformed_bodies_are_payload_errors(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        SPEC.parse({}, raw)


def test_unused_events_are_stored_with_a_reason_under_the_body_hash() -> None:
    created = ls_event("order_created", meta={"event_name": "subscription_created"})
    first, again = parse(created), parse(created)
    assert first.events == () and first.reason == "this event is not used"
    assert first.delivery_key == again.delivery_key
    assert first.delivery_key.startswith("subscription_created:sha256:")
    changed = parse(ls_event("order_created", meta={"event_name": "subscription_created"}, x=1))
    assert changed.delivery_key != first.delivery_key


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(
    custom=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )
)
def test_any_custom_data_gives_a_purchase(custom: object) -> None:
    (purchase,) = parse(ls_event("order_created", meta={"custom_data": custom})).events
    assert all(isinstance(value, str) for value in purchase.attributes.values())


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(quantity=st.integers() | st.text(max_size=5) | st.none() | st.booleans() | st.floats())
def test_any_quantity_gives_a_count_from_one_to_the_line_bound(quantity: object) -> None:
    event = ls_event("order_created")
    attrs(event)["first_order_item"]["quantity"] = quantity
    try:
        raw = json.dumps(event, allow_nan=False).encode()
    except ValueError:
        return  # NaN and Infinity are not JSON: nothing a platform can sign
    count = SPEC.parse({}, raw).events[0].item_count
    assert 1 <= count <= 10**6


# --- end to end: signed deliveries through the app to Convert --------------------------------

PURCHASE_GOALS = "g=100%2C101&ga=2&t=100"


def track(pair: str, txn: str, value: str, count: int, goals: str = PURCHASE_GOALS) -> str:
    return f"/track/?c=1111&p=2222&e={pair}&{goals}%7C{txn}%7C{value}%7C{count}"


def ls_service(make_service: Any, sqlite_url: str, **source: Any) -> Service:
    sources = {"lemon": {"platform": "lemonsqueezy", "secrets": [SECRET], **source}}
    service: Service = make_service(sqlite_url, sources=sources)
    return service


def post(service: Service, event: dict[str, Any] | bytes, name: str | None = None) -> Any:
    raw = event if isinstance(event, bytes) else body(event)
    header = name or json.loads(raw)["meta"]["event_name"]
    headers = {
        **SCHEME.sign(raw, SECRET, service.clock.now()),
        "X-Event-Name": header,
        "Content-Type": "application/json",
    }
    return service.client.post("/webhooks/lemon", data=raw, headers=headers)


def rows(service: Service) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def test_a_paid_order_becomes_one_convert_request_and_a_resend_none(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = ls_service(make_service, sqlite_url)
    raw = body(ls_event("order_created", meta={"custom_data": PAIRS}, test_mode=False))
    assert post(service, raw).json["status"] == "accepted"
    service.clock.advance(125)  # Lemon Squeezy's last retry, or a resend from the dashboard
    assert post(service, raw).json["status"] == "duplicate"
    service.drain()
    assert recorder.paths == [track("100-200", "1", "11.99", 1)]


def test_an_order_posted_under_another_event_name_header_is_still_that_order(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = ls_service(make_service, sqlite_url)
    event = ls_event("order_created", meta={"custom_data": PAIRS})
    assert post(service, event, name="order_refunded").json["status"] == "accepted"
    service.drain()
    assert recorder.paths == [track("100-200", "1", "11.99", 1)]
    assert [r.kind for r in rows(service)] == ["purchase"]


def test_a_renewal_uses_the_renewal_goals_and_the_first_invoice_sends_nothing(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = ls_service(make_service, sqlite_url)
    meta = {"custom_data": {"convert_experiments": "7-8"}}
    first = ls_event("subscription_payment_success", meta=meta, billing_reason="initial")
    first["data"]["id"] = "2"
    assert post(service, first).json["status"] == "ignored"
    post(service, ls_event("subscription_payment_success", meta=meta))
    service.drain()
    txn = quote(INVOICE, safe="")  # "subscription-invoice%3A1"
    assert recorder.paths == [f"/track/?c=1111&p=2222&e=7-8&t=300%7C{txn}%7C9.99%7C1"]


def test_refunds_are_stored_not_sent_and_each_partial_refund_once(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = ls_service(make_service, sqlite_url)
    assert post(service, ls_event("order_refunded")).json["status"] == "accepted"
    assert post(service, ls_event("order_refunded")).json["status"] == "duplicate"
    full = ls_event("order_refunded", refunded_amount=1199, refunded=True, status="refunded")
    assert post(service, full).json["status"] == "accepted"
    service.drain()
    assert recorder.paths == []
    assert [(r.kind, r.state, r.amount, r.refund_of) for r in rows(service)] == [
        ("refund", "skipped", "1.00", "1"),
        ("refund", "skipped", "11.99", "1"),
    ]


def test_test_mode_orders_are_stored_not_sent(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = ls_service(make_service, sqlite_url)
    post(service, ls_event("order_created", meta={"custom_data": PAIRS}, test_mode=True))
    service.drain()
    assert recorder.paths == []
    assert rows(service)[0].reason_code == "test_mode"


def test_unsigned_or_wrongly_signed_orders_are_refused_and_not_stored(
    make_service: Any, sqlite_url: str
) -> None:
    service = ls_service(make_service, sqlite_url)
    raw = body(ls_event("order_created", meta={"custom_data": PAIRS}))
    headers = {"X-Event-Name": "order_created", "Content-Type": "application/json"}
    assert service.client.post("/webhooks/lemon", data=raw, headers=headers).status_code == 401
    forged = {**headers, **SCHEME.sign(raw, "not-the-secret", 0)}
    assert service.client.post("/webhooks/lemon", data=raw, headers=forged).status_code == 401
    assert rows(service) == []


def test_a_signed_bad_total_is_a_400_naming_the_field(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = ls_service(make_service, sqlite_url)
    response = post(service, ls_event("order_created", total="11.99"))
    assert response.status_code == 400
    assert "'total'" in response.json["error"] and "11.99" not in response.json["error"]
    service.drain()
    assert recorder.paths == []
