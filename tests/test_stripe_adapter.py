"""Stripe verification and event mapping, on Stripe's own payloads (tests/fixtures/stripe)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.request import SignedRequest
from adapters.stripe import SPEC
from tests.payloads import body, stripe_event
from tests.signing import stripe_signature_header
from webhooks.core.errors import PayloadError, SignatureError
from webhooks.core.events import MAX_ATTRIBUTES, EventKind
from webhooks.core.settings import SourceSettings

SECRET = "whsec_abc"
NOW = 1_800_000_000
SETTINGS = SourceSettings("s", "stripe", ("whsec_new", SECRET), 300, False, "k", "total")
RAW = body(stripe_event("checkout_session_completed"))


def verify(header: str | None, raw: bytes = RAW, now: float = NOW) -> None:
    headers = {} if header is None else {"Stripe-Signature": header}
    SPEC.verify(SignedRequest.post(raw, headers), SETTINGS, now)


def test_valid_signature_with_any_configured_secret_passes() -> None:
    verify(stripe_signature_header(RAW, SECRET, NOW))
    verify(stripe_signature_header(RAW, "whsec_new", NOW))


def test_any_matching_v1_is_accepted_and_v0_is_ignored() -> None:
    good = stripe_signature_header(RAW, SECRET, NOW).split(",")[1]
    verify(f"t={NOW},v0=deadbeef,v1={'0' * 64},{good}")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "malformed"),
        ("t=abc,v1=00", "malformed"),
        (f"v1={'0' * 64}", "no timestamp"),
        (f"t={NOW}", "no v1"),
        (f"t={NOW},v0=abc", "no v1"),
        (f"t={NOW},v1={'0' * 64}", "matches"),
    ],
)
def test_missing_or_malformed_or_wrong_signature_is_rejected(
    header: str | None, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(header)


def test_signature_with_unknown_secret_is_rejected() -> None:
    with pytest.raises(SignatureError, match="matches"):
        verify(stripe_signature_header(RAW, "whsec_other", NOW))


def test_body_changed_after_signing_is_rejected() -> None:
    header = stripe_signature_header(RAW, SECRET, NOW)
    with pytest.raises(SignatureError):
        verify(header, raw=RAW + b"\n")


@pytest.mark.parametrize(("offset", "message"), [(-301, "old"), (301, "future")])
def test_timestamp_outside_window_is_rejected_both_ways(offset: int, message: str) -> None:
    header = stripe_signature_header(RAW, SECRET, NOW + offset)
    with pytest.raises(SignatureError, match=message):
        verify(header)


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_window_edge_is_accepted(offset: int) -> None:
    verify(stripe_signature_header(RAW, SECRET, NOW + offset))


def parse(event: dict[str, object]):  # type: ignore[no-untyped-def]
    return SPEC.parse({}, body(event))


def test_checkout_session_completed_paid_is_a_purchase_keyed_by_payment_intent() -> None:
    event = stripe_event("checkout_session_completed", metadata={"convert_experiments": "100-200"})
    result = parse(event)
    assert result.delivery_key == event["id"]
    assert result.topic == "checkout.session.completed"
    (purchase,) = result.events
    session = event["data"]["object"]
    assert purchase.kind is EventKind.PURCHASE
    assert purchase.order_id == session["payment_intent"]
    assert purchase.revenue("total").amount == Decimal(session["amount_total"]) / 100
    assert purchase.revenue("total").currency == session["currency"].upper()
    assert purchase.attributes == {"convert_experiments": "100-200"}
    assert purchase.test_mode is (event["livemode"] is False)


def test_unpaid_checkout_session_is_ignored_until_async_payment_succeeds() -> None:
    unpaid = parse(stripe_event("checkout_session_completed", payment_status="unpaid"))
    assert unpaid.events == ()
    assert "only a paid session counts" in (unpaid.reason or "")
    later = parse(stripe_event("checkout_session_async_payment_succeeded", event_id="evt_later"))
    assert later.events[0].kind is EventKind.PURCHASE
    assert later.events[0].order_id == unpaid_session_intent()


def unpaid_session_intent() -> str:
    intent: str = stripe_event("checkout_session_completed")["data"]["object"]["payment_intent"]
    return intent


def test_payment_intent_succeeded_is_a_purchase_with_its_own_id() -> None:
    event = stripe_event("payment_intent_succeeded", metadata={"convert_experiments": "1-2"})
    (purchase,) = parse(event).events
    intent = event["data"]["object"]
    assert purchase.order_id == intent["id"]
    assert purchase.revenue("total").amount == Decimal("10.99")
    assert purchase.attributes["convert_experiments"] == "1-2"


def test_session_and_its_payment_intent_share_one_business_key() -> None:
    session = stripe_event("checkout_session_completed")
    intent = stripe_event(
        "payment_intent_succeeded", id=session["data"]["object"]["payment_intent"]
    )
    assert parse(session).events[0].order_id == parse(intent).events[0].order_id


def test_first_invoice_pre_basil_shape_is_a_purchase_keyed_by_subscription() -> None:
    event = stripe_event("invoice_paid_pre_basil")
    invoice = event["data"]["object"]
    invoice["subscription_details"]["metadata"] = {"convert_experiments": "5-6"}
    (purchase,) = parse(event).events
    assert purchase.kind is EventKind.PURCHASE
    assert purchase.order_id == invoice["subscription"]
    assert purchase.revenue("total").amount == Decimal(invoice["amount_paid"]) / 100
    assert purchase.item_count == sum(line["quantity"] for line in invoice["lines"]["data"])
    assert purchase.attributes["convert_experiments"] == "5-6"


def test_renewal_invoice_basil_shape_reads_parent_subscription_details() -> None:
    event = stripe_event("invoice_paid_basil")
    invoice = event["data"]["object"]
    invoice["parent"]["subscription_details"]["metadata"] = {"convert_experiments": "7-8"}
    (renewal,) = parse(event).events
    assert invoice["billing_reason"] == "subscription_cycle"
    assert renewal.kind is EventKind.SUBSCRIPTION_RENEWAL
    assert renewal.order_id == invoice["id"]
    assert renewal.attributes["convert_experiments"] == "7-8"


def test_basil_first_invoice_is_keyed_by_parent_subscription() -> None:
    event = stripe_event("invoice_paid_basil", billing_reason="subscription_create")
    sub = event["data"]["object"]["parent"]["subscription_details"]["subscription"]
    assert parse(event).events[0].order_id == sub


def test_charge_refunded_is_a_refund_with_its_amount() -> None:
    event = stripe_event("charge_refunded")
    (refund,) = parse(event).events
    assert refund.kind is EventKind.REFUND
    assert refund.revenue("total").amount == Decimal("1.00")
    assert refund.refund_of == event["data"]["object"]["id"]


def test_refund_created_is_a_refund() -> None:
    event = stripe_event("refund_created")
    (refund,) = parse(event).events
    assert refund.kind is EventKind.REFUND
    assert refund.order_id == event["data"]["object"]["id"]
    assert refund.revenue("total").amount == Decimal("1.00")


@pytest.mark.parametrize(
    ("currency", "minor", "major"),
    [
        ("usd", 4999, "49.99"),
        ("jpy", 4999, "4999"),
        ("kwd", 12340, "12.340"),
        ("isk", 50000, "500.00"),
        ("ugx", 50000, "500.00"),
        ("huf", 1050, "10.50"),
    ],
)
def test_amounts_follow_stripe_currency_exponents(currency: str, minor: int, major: str) -> None:
    event = stripe_event("payment_intent_succeeded", currency=currency, amount_received=minor)
    money = parse(event).events[0].revenue("total")
    assert money.amount == Decimal(major)
    assert money.currency == currency.upper()


def test_unused_event_type_is_ignored_with_reason() -> None:
    event = stripe_event("payment_intent_succeeded")
    event["type"] = "customer.created"
    result = parse(event)
    assert result.events == ()
    assert result.reason == "this event type is not used"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"id": "evt_1"}',
        b'{"id": "evt_1", "type": "payment_intent.succeeded",'
        b' "created": 1, "data": {"object": {"id": "pi_1", "currency": "usd", "amount": 1.5}}}',
        b'{"id": "evt_1", "type": "payment_intent.succeeded", "created": 1, "data": []}',
    ],
)
def test_malformed_bodies_raise_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        SPEC.parse({}, raw)


# --- Stripe-Signature on unauthenticated input: every malformed header is a SignatureError --

V1 = "0" * 64


@pytest.mark.parametrize(
    "header",
    [
        f"t=\u00b2,v1={V1}",  # superscript two: str.isdigit() is true, int() raises
        f"t=\u0663,v1={V1}",  # Arabic-Indic three: isdigit() and int() both accept it
        f"t={'9' * 5000},v1={V1}",  # past int()'s 4,300-digit limit
        f"t={'1' * 13},v1={V1}",  # more than 12 digits
        f"t=-1,v1={V1}",
        f"t=+1,v1={V1}",
        f"t=1.5,v1={V1}",
        f"t=,v1={V1}",
        f"t={NOW},,v1={V1}",  # an empty item
        f"t={NOW},v1={V1},",  # a trailing comma
        f"t={NOW},t={NOW},v1={V1}",  # a duplicate t
        f"t={NOW},={V1}",
        f"t={NOW},v1={'z' * 64}",  # v1 not hex
        f"t={NOW},v1={'A' * 64}",  # Stripe's hex is lower case
        f"t={NOW},v1={V1[:10]}",
        f"t={NOW},v1={V1}," + ",".join([f"v1={V1}"] * 2000),  # ~140 KB
        f"t={NOW},v0={'x' * 100_000}",  # 100 KB
        ",",
        "=",
    ],
)
def test_every_malformed_signature_header_is_a_signature_error(header: str) -> None:
    with pytest.raises(SignatureError):
        verify(header)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    st.lists(
        st.sampled_from(["t", "v1", "v0", "", " t", "T"])
        .flatmap(lambda key: st.tuples(st.just(key), st.text(max_size=70)))
        .map(lambda kv: f"{kv[0]}={kv[1]}"),
        max_size=4,
    ).map(",".join)
    | st.text(max_size=200)
)
def test_any_signature_header_is_accepted_or_a_signature_error(header: str) -> None:
    try:
        verify(header)
    except SignatureError:
        return
    raise AssertionError("an unsigned header verified")


def test_signature_errors_do_not_quote_the_header() -> None:
    with pytest.raises(SignatureError) as caught:
        verify(f"t={NOW},v1=<script>")
    assert "<script>" not in str(caught.value)


# --- values checked at parse time: named fields, never quoted values ----------------------


def test_amounts_and_currency_out_of_bounds_are_payload_errors_naming_the_field() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount_received": 10**100}, "amount_received"),
        ({"amount_received": -5}, "amount_received"),
        ({"currency": "ÅÄÖ"}, "currency"),
        ({"currency": "us"}, "currency"),
    ]
    for changes, field in cases:
        with pytest.raises(PayloadError, match=f"'{field}'") as caught:
            parse(stripe_event("payment_intent_succeeded", **changes))
        assert "10000" not in str(caught.value) and "ÅÄÖ" not in str(caught.value)


def test_invoice_line_quantities_are_bounded() -> None:
    event = stripe_event("invoice_paid_basil")
    lines = event["data"]["object"]["lines"]
    lines["data"] = [{"quantity": 10**6 + 1}]
    with pytest.raises(PayloadError, match="quantity"):
        parse(event)
    lines["data"] = [{"quantity": 10**6}] * 2200  # 2.2e9: past a 32-bit column
    with pytest.raises(PayloadError, match="quantity"):
        parse(event)
    lines["data"] = [{"quantity": 10**6}] * 3
    assert parse(event).events[0].item_count == 3 * 10**6


def test_unpaid_session_reason_names_only_documented_statuses() -> None:
    unpaid = parse(stripe_event("checkout_session_completed", payment_status="unpaid"))
    expected = "checkout session payment_status is 'unpaid'; only a paid session counts"
    assert unpaid.reason == expected
    odd = parse(stripe_event("checkout_session_completed", payment_status=["x"]))
    assert "an unexpected value" in (odd.reason or "")
    mode = parse(stripe_event("checkout_session_completed", mode="a\nb"))
    assert mode.reason == "checkout session mode an unexpected value takes no payment"


def test_billing_reason_of_any_type_is_read_without_str() -> None:
    event = stripe_event("invoice_paid_basil", billing_reason=[[[]]])
    assert parse(event).events[0].kind is EventKind.PURCHASE


def test_invoice_and_subscription_metadata_survive_many_line_metadata_keys() -> None:
    # More distinct line keys than the entry bound: it must drop line keys, not the invoice's
    # or the subscription's experiment pairs (a silent loss of attribution otherwise).
    event = stripe_event("invoice_paid_basil")
    invoice = event["data"]["object"]
    per_line = MAX_ATTRIBUTES // 2
    lines = [
        {"quantity": 1, "metadata": {f"l{n}_{k}": "v" for k in range(per_line)}} for n in range(3)
    ]
    lines[0]["metadata"]["shared"] = "first line"
    lines[2]["metadata"]["shared"] = "last line"
    invoice["lines"]["data"] = lines
    invoice["parent"]["subscription_details"]["metadata"] = {"sub_key": "s", "plan": "sub"}
    invoice["metadata"] = {"convert_experiments": "1-2", "plan": "invoice"}
    attributes = parse(event).events[0].attributes
    assert len(attributes) == MAX_ATTRIBUTES
    assert attributes["convert_experiments"] == "1-2"
    assert (attributes["sub_key"], attributes["plan"]) == ("s", "invoice")
    assert attributes["shared"] == "last line"
