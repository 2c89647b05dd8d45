"""Paddle Billing verification and event mapping, on the SDK's own payloads
(tests/fixtures/paddle), and end to end through the app to a local stand-in for Convert."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from sqlalchemy import select

from adapters import paddle
from adapters.paddle import SCHEME, SPEC, custom_data_attributes
from adapters.payload import rfc3339_seconds
from adapters.request import SignedRequest
from tests.config_file import config_document
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import body, fixture
from webhooks.core.errors import ConfigError, PayloadError, SignatureError
from webhooks.core.events import MAX_ATTRIBUTE_VALUE_CHARS, EventKind, ParseResult
from webhooks.core.settings import SourceSettings
from webhooks.storage.schema import events
from webhooks.wiring.config import settings_from_mapping

SECRET = "pdl_ntfset_01test0000000000000000000_secretOne"
OLD_SECRET = "pdl_ntfset_01test0000000000000000000_secretOld"
NOW = 1_800_000_000
TXN = "txn_01hv8wptq8987qeep44cyrewp9"
PAIRS = {"convert_experiments": "100-200"}


def paddle_event(name: str, event_id: str | None = None, **data_changes: Any) -> dict[str, Any]:
    """A fixture notification; keyword arguments replace fields of `data`."""
    event = fixture("paddle", name)
    if event_id is not None:
        event["event_id"] = event_id
    event["data"].update(data_changes)
    return event


def parse(event: dict[str, Any], headers: dict[str, str] | None = None) -> ParseResult:
    return SPEC.parse(headers or {}, body(event))


def totals(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = event["data"]["details"]["totals"]
    return found


# --- the signature ---------------------------------------------------------------------------

SETTINGS = SourceSettings("p", "paddle", (SECRET, OLD_SECRET), 5, False, "k", "total")
RAW = body(paddle_event("transaction_completed"))


def verify(header: str, raw: bytes = RAW, now: float = NOW) -> None:
    SPEC.verify(SignedRequest.post(raw, {"Paddle-Signature": header}), SETTINGS, now)


def signature(raw: bytes, secret: str = SECRET, at: float = NOW) -> str:
    return SCHEME.sign(raw, secret, at)["Paddle-Signature"]


def test_either_configured_secret_verifies_and_a_malformed_h1_beside_it_is_skipped() -> None:
    verify(signature(RAW))
    verify(signature(RAW, OLD_SECRET))
    good = signature(RAW).split(";")[1]
    verify(f"ts={NOW};h1=dummy;{good}")  # as in Paddle's own SDK test
    verify(f"ts={NOW};h1={'0' * 64};{good}")  # rotation: any h1 may match


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (f"ts={NOW};h1=dummy", "no h1"),
        (f"h1={'0' * 64}", "no timestamp"),
        (f"ts={NOW};h1={'0' * 64}", "matches"),
        (f"ts=\u0663;h1={'0' * 64}", "malformed"),
        (f"ts={NOW},h1={'0' * 64}", "malformed"),  # Stripe's separator is not Paddle's
    ],
)
def test_malformed_or_wrong_signatures_are_refused(header: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(header)


def test_the_window_is_five_seconds_unless_the_source_says_otherwise() -> None:
    verify(signature(RAW, at=NOW - 5))
    with pytest.raises(SignatureError, match="old"):
        verify(signature(RAW, at=NOW - 6))
    with pytest.raises(SignatureError, match="future"):
        verify(signature(RAW, at=NOW + 6))
    wider = SourceSettings("p", "paddle", (SECRET,), 60, False, "k", "total")
    request = SignedRequest.post(RAW, {"Paddle-Signature": signature(RAW, at=NOW - 59)})
    SPEC.verify(request, wider, NOW)


# --- purchases -------------------------------------------------------------------------------


def test_transaction_completed_is_a_purchase_with_grand_total_subtotal_and_item_count() -> None:
    event = paddle_event("transaction_completed", custom_data=PAIRS)
    result = parse(event)
    assert (result.delivery_key, result.topic) == (event["event_id"], "transaction.completed")
    (purchase,) = result.events
    assert purchase.kind is EventKind.PURCHASE
    assert purchase.platform == "paddle"
    assert purchase.order_id == TXN
    assert purchase.revenue("total").amount == Decimal("652.15")
    assert purchase.revenue("total").currency == "USD"
    assert purchase.revenue("subtotal").amount == Decimal("599.00")
    assert purchase.item_count == 10 + 1 + 1
    assert purchase.customer_id == "ctm_01hv6y1jedq4p1n0yqn5ba3ky4"
    assert purchase.email_digest is None  # Paddle sends no email
    assert purchase.attributes == PAIRS
    assert purchase.test_mode is False
    assert purchase.occurred_at == rfc3339_seconds("2023-08-21T11:57:47.390028Z")


def test_grand_total_is_the_total_after_account_credit() -> None:
    event = paddle_event("transaction_completed")
    totals(event).update(total="65215", credit="1215", grand_total="64000")
    assert parse(event).events[0].revenue("total").amount == Decimal("640.00")
    del totals(event)["grand_total"]  # older bodies: the total
    assert parse(event).events[0].revenue("total").amount == Decimal("652.15")
    totals(event).update(grand_total=None, total=None)
    with pytest.raises(PayloadError, match="'details.totals.total'"):
        parse(event)


def test_paid_and_completed_are_one_purchase_under_two_delivery_keys() -> None:
    paid, completed = (
        parse(paddle_event("transaction_paid")),
        parse(paddle_event("transaction_completed")),
    )
    assert paid.delivery_key != completed.delivery_key
    assert (paid.events[0].kind, paid.events[0].order_id) == (
        completed.events[0].kind,
        completed.events[0].order_id,
    )


@pytest.mark.parametrize("status", ["draft", "ready", "billed", "canceled", "past_due"])
def test_a_transaction_not_paid_is_stored_with_a_reason(status: str) -> None:
    result = parse(paddle_event("transaction_completed", status=status))
    assert result.events == ()
    assert result.reason == (
        f"transaction status is '{status}'; only a paid or completed transaction counts"
    )


@pytest.mark.parametrize("status", [None, ["paid"], "PAID", "paid\n", "<script>", 1])
def test_an_odd_status_is_not_paid_and_not_quoted(status: object) -> None:
    result = parse(paddle_event("transaction_completed", status=status))
    assert result.events == ()
    assert "missing" in (result.reason or "") or "an unexpected value" in (result.reason or "")
    assert "script" not in (result.reason or "")


@pytest.mark.parametrize(
    ("origin", "kind"),
    [
        ("web", EventKind.PURCHASE),
        ("api", EventKind.PURCHASE),
        ("subscription_charge", EventKind.PURCHASE),
        ("subscription_recurring", EventKind.SUBSCRIPTION_RENEWAL),
        ("subscription_update", EventKind.SUBSCRIPTION_RENEWAL),
        (None, EventKind.PURCHASE),
        ({"x": 1}, EventKind.PURCHASE),
    ],
)
def test_origin_tells_a_renewal_from_a_purchase(origin: object, kind: EventKind) -> None:
    (event,) = parse(paddle_event("transaction_completed", origin=origin)).events
    assert event.kind is kind
    assert event.order_id == TXN


def test_a_payment_method_change_is_no_sale() -> None:
    result = parse(
        paddle_event("transaction_completed", origin="subscription_payment_method_change")
    )
    assert result.events == ()
    assert "not a sale" in (result.reason or "")


def test_products_and_prices_custom_data_is_never_read() -> None:
    event = paddle_event("transaction_completed")  # the transaction's own custom_data is null
    event["data"]["items"][0]["price"]["custom_data"] = PAIRS
    product = event["data"]["details"]["line_items"][0]["product"]
    assert product["custom_data"]["features"]  # the SDK's own product custom data
    product["custom_data"]["convert_experiments"] = "1-2"
    assert parse(event).events[0].attributes == {}


def test_an_unused_event_type_is_stored_with_a_reason() -> None:
    result = parse(paddle_event("transaction_completed") | {"event_type": "customer.created"})
    assert (result.events, result.reason) == ((), "this event type is not used")


# --- refunds ---------------------------------------------------------------------------------


def test_an_approved_refund_adjustment_is_a_refund_of_its_transaction() -> None:
    (refund,) = parse(paddle_event("adjustment_updated")).events
    assert refund.kind is EventKind.REFUND
    assert refund.order_id == "adj_01hvgf2s84dr6reszzg29zbvcm"
    assert refund.refund_of == "txn_01hvcc93znj3mpqt1tenkjb04y"
    assert (refund.revenue("total").amount, refund.revenue("total").currency) == (
        Decimal("1.00"),
        "USD",
    )
    assert refund.item_count == 0


def test_created_and_updated_for_one_approved_refund_share_its_key() -> None:
    created = parse(paddle_event("adjustment_created", status="approved")).events[0]
    updated = parse(paddle_event("adjustment_updated")).events[0]
    assert (created.kind, created.order_id) == (updated.kind, updated.order_id)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, "refund status is 'pending_approval'; only an approved refund is recorded"),
        ({"status": "rejected"}, "refund status is 'rejected'; only an approved refund"),
        ({"action": "credit"}, "adjustment action is 'credit'; only a refund counts"),
        ({"action": "chargeback"}, "adjustment action is 'chargeback'; only a refund counts"),
        ({"action": ["refund"]}, "adjustment action is an unexpected value"),
    ],
)
def test_adjustments_that_are_not_approved_refunds_are_stored_with_a_reason(
    changes: dict[str, Any], reason: str
) -> None:
    result = parse(paddle_event("adjustment_created", **changes))
    assert result.events == ()
    assert (result.reason or "").startswith(reason)


# --- amounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "lowest", "major"),
    [
        ("USD", "65215", "652.15"),
        ("EUR", "1", "0.01"),
        ("JPY", "1000", "1000"),  # Paddle's own example: "1000" is ¥1000
        ("KRW", "15000", "15000"),
        ("VND", "250000", "250000"),
        ("CLP", "990", "990"),
        ("HUF", "1050", "10.50"),
        ("KWD", "12345", "12.345"),
        ("usd", "0", "0"),
    ],
)
def test_amounts_use_the_currency_exponent(currency: str, lowest: str, major: str) -> None:
    event = paddle_event("transaction_completed")
    totals(event).update(currency_code=currency, grand_total=lowest, subtotal=lowest)
    money = parse(event).events[0].revenue("total")
    assert (money.amount, money.currency) == (Decimal(major), currency.upper())


@pytest.mark.parametrize(
    "value",
    [
        "1e5",
        "12.50",
        "-100",
        "+100",
        " 100",
        "100 ",
        "1_000",
        "\u0663",  # Arabic-Indic three: a digit to Python, not to Paddle
        "\uff11",  # fullwidth one
        "NaN",
        "",
        "9" * 25,
        "9" * 20,  # digits, but past 10**12 major units
        65215,
        652.15,
        True,
        ["65215"],
    ],
)
def test_an_amount_that_is_not_a_digit_string_in_range_is_a_payload_error(value: object) -> None:
    event = paddle_event("transaction_completed")
    totals(event)["grand_total"] = value
    with pytest.raises(PayloadError) as caught:
        parse(event)
    # Our sentence, naming the field: never the value, which could be anything.
    assert str(caught.value) in {
        "field 'details.totals.grand_total' must be a string of digits in the lowest unit",
        "field 'details.totals.grand_total' is out of range",
    }


@pytest.mark.parametrize("code", ["US", "usdd", "ÅÄÖ", 840, None])
def test_a_bad_currency_is_a_payload_error_naming_the_field(code: object) -> None:
    event = paddle_event("transaction_completed")
    totals(event)["currency_code"] = code
    with pytest.raises(PayloadError, match="'details.totals.currency_code'"):
        parse(event)


def test_refund_amounts_are_checked_too() -> None:
    event = paddle_event("adjustment_updated")
    event["data"]["totals"]["total"] = "1.00"
    with pytest.raises(PayloadError, match="'totals.total'"):
        parse(event)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(value=st.text(max_size=30) | st.integers() | st.none() | st.booleans())
def test_any_amount_value_is_exact_or_a_payload_error(value: object) -> None:
    event = paddle_event("transaction_completed")
    totals(event).update(grand_total=value, total=value)  # a null grand_total means: the total
    try:
        money = parse(event).events[0].revenue("total")
    except PayloadError:
        return
    assert isinstance(value, str) and value.isascii() and value.isdigit()
    assert money.amount == Decimal(int(value)) / 100


# --- item counts, experiment data --------------------------------------------------------------


def test_item_count_sums_quantities_and_is_bounded() -> None:
    event = paddle_event("transaction_completed")
    items = event["data"]["items"]
    items[0]["quantity"] = "10"  # not an integer: skipped
    assert parse(event).events[0].item_count == 2
    items[0]["quantity"] = 10**6 + 1
    with pytest.raises(PayloadError, match="items"):
        parse(event)
    event["data"]["items"] = []
    assert parse(event).events[0].item_count == 1
    event["data"]["items"] = "none"
    assert parse(event).events[0].item_count == 1


def test_custom_data_strings_numbers_and_nested_values_become_attributes() -> None:
    data: dict[str, object] = {
        "convert_experiments": "100-200",
        "visitor": 42,
        "price": Decimal("9.99"),
        "pairs": {"100": "200"},
        "list": [{"experienceId": "100", "variationId": "200"}],
        "flag": True,
        "nothing": None,
    }
    assert custom_data_attributes(data) == {
        "convert_experiments": "100-200",
        "visitor": "42",
        "price": "9.99",
        "pairs": '{"100":"200"}',
        "list": '[{"experienceId":"100","variationId":"200"}]',
    }
    assert custom_data_attributes(["100-200"]) == {}
    assert custom_data_attributes(None) == {}


def test_nested_custom_data_that_is_too_deep_or_too_long_is_dropped_not_cut() -> None:
    deep: object = "x"
    for _ in range(9):
        deep = [deep]
    eight: object = "x"
    for _ in range(8):
        eight = [eight]
    long = ["x" * MAX_ATTRIBUTE_VALUE_CHARS]
    found = custom_data_attributes({"deep": deep, "eight": eight, "long": long, "k": "v"})
    assert found == {"eight": json.dumps(eight, separators=(",", ":")), "k": "v"}


def test_custom_data_from_the_body_keeps_non_ascii_and_drops_what_storage_cannot_hold() -> None:
    raw = (
        b'{"event_id":"evt_1","event_type":"transaction.completed",'
        b'"occurred_at":"2024-04-12T10:18:49Z","data":'
        + json.dumps(paddle_event("transaction_completed")["data"])[:-1].encode()
        + b',"custom_data":{"a":"caf\\u00e9","b":"\\ud800","c":{"d":"\\udc80"},'
        b'"e":"nul\\u0000","f":1.50}}}'
    )
    attributes = SPEC.parse({}, raw).events[0].attributes
    assert attributes == {"a": "café", "f": "1.50"}


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(
    custom=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )
)
def test_any_custom_data_gives_an_event(custom: object) -> None:
    (purchase,) = parse(paddle_event("transaction_completed", custom_data=custom)).events
    assert all(isinstance(value, str) for value in purchase.attributes.values())


# --- envelope and ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": None}, "'event_id'"),
        ({"event_id": "evt 1"}, "'event_id'"),
        ({"event_id": "evt_\u00e9"}, "'event_id'"),
        ({"event_id": "e" * 256}, "'event_id'"),
        ({"event_type": 5}, "'event_type'"),
        ({"data": []}, "'data'"),
        ({"occurred_at": None}, "'occurred_at'"),
        ({"occurred_at": "yesterday"}, "'occurred_at'"),
        ({"occurred_at": "2024-13-01T00:00:00Z"}, "'occurred_at'"),
        ({"occurred_at": 1712917129}, "'occurred_at'"),
    ],
)
def test_a_bad_envelope_is_a_payload_error_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError, match=field):
        parse(paddle_event("transaction_completed") | changes)


@pytest.mark.parametrize("txn_id", ["", "txn_\x00", "txn_\ud800", "t" * 256, 12, None])
def test_a_bad_transaction_id_is_a_payload_error(txn_id: object) -> None:
    with pytest.raises(PayloadError, match="'id'"):
        parse(paddle_event("transaction_completed", id=txn_id))


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"event_id": "evt_1"}', b"{" * 100_000, b'{"a": NaN}']
)
def test_malformed_bodies_are_payload_errors(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        SPEC.parse({}, raw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-10-12T07:20:50.52Z", 1728717650.52),  # Paddle's docs example
        ("2024-04-12T10:18:49.738971Z", 1712917129.738971),
        ("2024-04-12T10:18:49.738971123Z", 1712917129.738971),  # nanoseconds: cut
        ("2024-04-12T12:18:49+02:00", 1712917129.0),
        ("1970-01-01T00:00:00Z", 0.0),
        ("2024-04-12T10:18:49", None),  # no offset: not RFC 3339
        ("2024-04-12T10:18:60Z", None),
        ("2024-04-12T10:18:49+25:00", None),
        ("1969-12-31T23:59:59Z", None),
        ("\u0662024-04-12T10:18:49Z", None),
        ("2024-04-12T10:18:49Z" + " " * 100, None),
    ],
)
def test_rfc3339_times(text: str, expected: float | None) -> None:
    found = rfc3339_seconds(text)
    assert found == pytest.approx(expected) if expected is not None else found is None


def test_unsigned_headers_change_nothing() -> None:
    raw = body(paddle_event("transaction_paid", custom_data=PAIRS))
    plain = SPEC.parse({}, raw)
    noisy = SPEC.parse(
        {"paddle-signature": "ts=1;h1=x", "x-paddle-event": "adjustment.updated", "x": "y"}, raw
    )
    assert plain == noisy


# --- the sandbox option ----------------------------------------------------------------------


def test_a_sandbox_source_marks_its_events_test_mode() -> None:
    raw = body(paddle_event("transaction_completed"))
    assert SPEC.parser({"sandbox": True})({}, raw).events[0].test_mode is True
    assert SPEC.parser({"sandbox": False})({}, raw).events[0].test_mode is False
    assert SPEC.parser({})({}, raw).events[0].test_mode is False
    (refund,) = SPEC.parser({"sandbox": True})({}, body(paddle_event("adjustment_updated"))).events
    assert refund.test_mode is True


def test_the_options_schema_defaults_to_live_and_takes_only_booleans() -> None:
    assert paddle.Options().load({}) == {"sandbox": False}
    assert paddle.Options().load({"sandbox": True}) == {"sandbox": True}
    with pytest.raises(ValidationError):
        paddle.Options().load({"sandbox": "perhaps"})


def test_check_config_names_a_bad_paddle_key(sqlite_url: str) -> None:
    def load(source: dict[str, Any]) -> Any:
        doc = config_document(sqlite_url, "http://127.0.0.1:9", sources={"p": source})
        return settings_from_mapping(doc, {})

    ok = load({"platform": "paddle", "secrets": [SECRET], "sandbox": True})
    assert dict(ok.sources["p"].options) == {"sandbox": True}
    assert ok.sources["p"].tolerance_seconds == 5  # Paddle's own window
    with pytest.raises(ConfigError) as caught:
        load({"platform": "paddle", "secrets": [SECRET], "sandbox": "perhaps", "colour": 1})
    assert set(caught.value.problems) == {"sources.p.sandbox", "sources.p.colour"}


# --- end to end: signed deliveries through the app to Convert --------------------------------

PURCHASE_GOALS = "g=100%2C101&ga=2&t=100"


def track(pair: str, txn: str, value: str, count: int, goals: str = PURCHASE_GOALS) -> str:
    return f"/track/?c=1111&p=2222&e={pair}&{goals}%7C{txn}%7C{value}%7C{count}"


def paddle_service(make_service: Any, sqlite_url: str, **source: Any) -> Service:
    sources = {"paddle": {"platform": "paddle", "secrets": [SECRET], **source}}
    service: Service = make_service(sqlite_url, sources=sources)
    return service


def post(
    service: Service,
    event: dict[str, Any] | bytes,
    extra: dict[str, str] | None = None,
    at: float | None = None,
) -> Any:
    raw = event if isinstance(event, bytes) else body(event)
    signed_at = service.clock.now() if at is None else at
    headers = {**SCHEME.sign(raw, SECRET, signed_at), "Content-Type": "application/json"}
    return service.client.post("/webhooks/paddle", data=raw, headers={**headers, **(extra or {})})


def rows(service: Service) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def test_a_completed_transaction_becomes_one_convert_request(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = paddle_service(make_service, sqlite_url)
    response = post(service, paddle_event("transaction_completed", custom_data=PAIRS))
    assert (response.status_code, response.json["status"]) == (200, "accepted")
    service.drain()
    assert recorder.paths == [track("100-200", TXN, "652.15", 12)]


def test_paid_then_completed_counts_once(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = paddle_service(make_service, sqlite_url)
    assert post(service, paddle_event("transaction_paid", custom_data=PAIRS)).json["status"] == (
        "accepted"
    )
    completed = post(service, paddle_event("transaction_completed", custom_data=PAIRS))
    assert completed.json["status"] == "duplicate"  # a new event, the same purchase
    service.drain()
    assert recorder.paths == [track("100-200", TXN, "652.15", 12)]


def test_a_renewal_uses_the_renewal_goals(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = paddle_service(make_service, sqlite_url)
    renewal = paddle_event(
        "transaction_completed",
        origin="subscription_recurring",
        custom_data={"convert_experiments": "7-8"},
    )
    post(service, renewal)
    service.drain()
    assert recorder.paths == [f"/track/?c=1111&p=2222&e=7-8&t=300%7C{TXN}%7C652.15%7C12"]


def test_refunds_and_pending_refunds_are_stored_not_sent(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = paddle_service(make_service, sqlite_url)
    assert post(service, paddle_event("adjustment_created")).json["status"] == "ignored"
    assert post(service, paddle_event("adjustment_updated")).json["status"] == "accepted"
    service.drain()
    assert recorder.paths == []
    assert [(r.kind, r.state, r.amount) for r in rows(service)] == [("refund", "skipped", "1.00")]


def test_a_sandbox_source_stores_but_does_not_send_unless_allowed(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    sandbox = paddle_service(make_service, sqlite_url, sandbox=True)
    post(sandbox, paddle_event("transaction_completed", custom_data=PAIRS))
    sandbox.drain()
    assert recorder.paths == []
    assert rows(sandbox)[0].reason_code == "test_mode"
    allowing = paddle_service(
        make_service,
        sqlite_url.replace("webhooks.db", "allow.db"),
        sandbox=True,
        allow_test_events=True,
    )
    post(allowing, paddle_event("transaction_completed", custom_data=PAIRS))
    allowing.drain()
    assert recorder.paths == [track("100-200", TXN, "652.15", 12)]


def test_a_retry_signed_again_or_under_other_headers_is_a_duplicate(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = paddle_service(make_service, sqlite_url)
    raw = body(paddle_event("transaction_completed", custom_data=PAIRS))
    first = post(service, raw)
    service.clock.advance(30)
    again = post(service, raw, {"X-Paddle-Event": "adjustment.updated", "User-Agent": "x"})
    assert again.json["status"] == "duplicate"
    assert again.json["delivery_id"] == first.json["delivery_id"]
    service.drain()
    assert len(recorder.paths) == 1


def test_stale_or_unsigned_deliveries_are_refused_and_not_stored(
    make_service: Any, sqlite_url: str
) -> None:
    service = paddle_service(make_service, sqlite_url)
    raw = body(paddle_event("transaction_completed", custom_data=PAIRS))
    assert post(service, raw, at=service.clock.now() - 6).status_code == 401
    unsigned = service.client.post("/webhooks/paddle", data=raw)
    assert unsigned.status_code == 401
    assert rows(service) == []
    widened = paddle_service(
        make_service, sqlite_url.replace("webhooks.db", "wide.db"), tolerance_seconds=60
    )
    assert post(widened, raw, at=widened.clock.now() - 59).status_code == 200


def test_a_signed_bad_amount_is_a_400_naming_the_field_not_its_value(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    service = paddle_service(make_service, sqlite_url)
    event = paddle_event("transaction_completed", custom_data=PAIRS)
    totals(event)["grand_total"] = "6521.5"
    response = post(service, event)
    assert response.status_code == 400
    assert "details.totals.grand_total" in response.json["error"]
    assert "6521.5" not in response.json["error"]
    service.drain()
    assert recorder.paths == []
