"""Bad input is judged at the edge: a parser validates every value it passes on, so storage and
the dispatcher only see values they can hold. Real platform payloads (tests/fixtures) with one
value made hostile, through the HTTP route where the answer matters (a 400 keeps the delivery
as rejected), and directly against the central checks in webhooks/core/events.py, which no adapter
can skip. Property tests substitute any JSON value anywhere in every fixture."""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import Row

from adapters import shopify, stripe
from adapters.payload import email_digest, load_json_object, string_map
from tests.config_file import config_document
from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import FIXTURES, body, experiments, fixture, shopify_order, stripe_event
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_TOTAL_CHARS,
    MAX_TIMESTAMP,
    CustomerRedaction,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
)
from webhooks.core.money import (
    as_currency_code,
    checked_amount,
    from_decimal_string,
    from_minor_units,
)
from webhooks.storage.schema import deliveries, events
from webhooks.web.app import create_app
from webhooks.wiring.config import settings_from_mapping

EMAIL = "buyer@example.com"
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,  # no .hypothesis folder in the shared tree
    derandomize=True,  # the shared suite stays deterministic; raise max_examples locally
    suppress_health_check=[HealthCheck.too_slow],
)
PARSE_PROPERTY = settings(PROPERTY, max_examples=200)  # pure parsing: a few ms an example


# --- a service shared by this module: one app, one SQLite file, one teardown ---------------


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    recorder = ConvertRecorder().start()
    clock = FakeClock()
    db: Path = tmp_path_factory.mktemp("edge") / "webhooks.db"
    doc = config_document(f"sqlite:///{db}", recorder.base_url)
    service = Service(create_app(settings_from_mapping(doc, {}), clock=clock), clock)
    yield service
    service.runtime.close()
    recorder.stop()


def stored_deliveries(service: Service, raw: bytes) -> list[Row[Any]]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(deliveries).where(deliveries.c.body == raw)))


def stored_events(service: Service, order_id: str) -> list[Row[Any]]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(events).where(events.c.order_id == order_id)))


def assert_rejected(service: Service, response: Any, raw: bytes, field: str) -> None:
    """400 naming the field, and the signed body kept as a rejected delivery."""
    assert response.status_code == 400, response.json
    assert field in response.json["error"]
    (row,) = stored_deliveries(service, raw)
    assert row.status == "rejected"
    assert field in row.reason


def paid_order(**changes: Any) -> dict[str, Any]:
    """Shopify's sample order says "voided" (SOURCES.md); orders/paid needs a paid body."""
    return shopify_order(**{"financial_status": "paid", "test": False, **changes})


# --- 1. amounts, currencies, ids, counts, timestamps through the route -----------------------


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("payment_intent_succeeded", "amount_received", 10**100),
        ("payment_intent_succeeded", "amount_received", -1),
        ("checkout_session_completed", "amount_total", 10**14),  # 10**12 dollars
        ("refund_created", "amount", -100),
    ],
)
def test_stripe_amount_out_of_range_is_400_kept_as_rejected(
    edge: Service, name: str, field: str, value: int
) -> None:
    event = stripe_event(name, event_id=f"evt_amount_{name}_{value}", **{field: value})
    response = edge.post_stripe(event)
    assert_rejected(edge, response, body(event), f"'{field}'")
    assert str(value) not in response.json["error"]


@pytest.mark.parametrize(
    "value", ["1e30", "1E+30", "1e-999999", "NaN", "Infinity", "-5.00", "\u0663", "\u00b2", "1_0"]
)
def test_shopify_total_price_that_is_not_a_plain_amount_is_400(edge: Service, value: str) -> None:
    order = paid_order(id=7001, total_price=value)
    response = edge.post_shopify("orders/paid", order, event_id=f"price-{value.encode().hex()}")
    assert_rejected(edge, response, body(order), "'total_price'")
    assert stored_events(edge, "7001") == []


def test_shopify_negative_zero_total_is_stored_as_zero(edge: Service) -> None:
    order = paid_order(id=7002, total_price="-0", subtotal_price="-0.00")
    assert edge.post_shopify("orders/paid", order, event_id="zero").status_code == 200
    (row,) = stored_events(edge, "7002")
    assert row.amount == "0"


def test_currency_must_be_three_ascii_letters(edge: Service) -> None:
    assert "ÅÄÖ".isalpha()  # why isalpha() alone let it through
    order = paid_order(id=7003, currency="ÅÄÖ")
    response = edge.post_shopify("orders/paid", order, event_id="currency")
    assert_rejected(edge, response, body(order), "'currency'")
    for currency in ("ÅÄÖ", "ß"):  # "ß".upper() == "SS": two letters
        event = stripe_event("payment_intent_succeeded", f"evt_cur_{ord(currency[0])}")
        event["data"]["object"]["currency"] = currency
        assert_rejected(edge, edge.post_stripe(event), body(event), "'currency'")


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("id", "pi_" + "x" * 300),  # the order id: never cut to 255
        ("id", "pi_\u0000"),
        ("id", "pi_\ud800"),  # JSON "\ud800": an unpaired surrogate
        ("id", "pi_\n1"),
        ("id", "pi_\u202e1"),
        ("customer", "cus_" + "y" * 300),
        ("customer", "cus_\x1b[31m"),
    ],
)
def test_stripe_ids_too_long_or_with_control_characters_are_400(
    edge: Service, where: str, value: str
) -> None:
    event_id = f"evt_id_{where}_{len(value)}_{ord(value[-1])}"
    event = stripe_event("payment_intent_succeeded", event_id)
    event["data"]["object"][where] = value
    response = edge.post_stripe(event)
    assert_rejected(edge, response, body(event), f"'{where}'")
    if "\ud800" not in value:  # a lone surrogate cannot even be a query parameter
        assert stored_events(edge, value) == [] and stored_events(edge, value[:255]) == []


def test_event_id_and_type_too_long_are_400_not_cut(edge: Service) -> None:
    long_id = stripe_event("payment_intent_succeeded", "evt_" + "k" * 300)
    assert_rejected(edge, edge.post_stripe(long_id), body(long_id), "'id'")
    long_type = stripe_event("payment_intent_succeeded", "evt_long_type")
    long_type["type"] = "customer." + "z" * 10_000
    assert_rejected(edge, edge.post_stripe(long_type), body(long_type), "'type'")
    nul_type = stripe_event("payment_intent_succeeded", "evt_nul_type")
    nul_type["type"] = "customer.created\u0000"
    assert_rejected(edge, edge.post_stripe(nul_type), body(nul_type), "'type'")


def test_shopify_event_id_header_too_long_is_400_not_cut(edge: Service) -> None:
    order = paid_order(id=7004)
    response = edge.post_shopify("orders/paid", order, event_id="e" * 300)
    assert_rejected(edge, response, body(order), "X-Shopify-Event-Id")
    assert stored_events(edge, "7004") == []


def test_shopify_order_id_beyond_64_bits_is_400(edge: Service) -> None:
    order = paid_order(id=2**64)
    assert_rejected(edge, edge.post_shopify("orders/paid", order, "big"), body(order), "'id'")


@pytest.mark.parametrize("created", [10**30, -1, MAX_TIMESTAMP + 1])
def test_stripe_created_out_of_range_is_400(edge: Service, created: float) -> None:
    event = stripe_event("payment_intent_succeeded", f"evt_created_{created}")
    event["created"] = created
    assert_rejected(edge, edge.post_stripe(event), body(event), "'created'")


def test_number_past_the_digit_limit_is_a_named_400_not_a_mapping_failure(
    edge: Service, caplog: pytest.LogCaptureFixture
) -> None:
    raw = b'{"id": "evt_digits", "type": "x.y", "n": ' + b"9" * 5000 + b"}"
    response = edge.post_stripe({}, raw=raw)
    assert response.status_code == 400
    assert "digits" in response.json["error"]
    assert "mapping failed" not in caplog.text


# --- 2. messages and reasons name fields, never values ---------------------------------------


def test_400_bodies_and_stored_reasons_never_quote_payload_values(edge: Service) -> None:
    session = stripe_event("checkout_session_completed", "evt_email_amount", amount_total=EMAIL)
    order = paid_order(id=7005, total_price=EMAIL)
    responses = [
        (edge.post_stripe(session), body(session)),
        (edge.post_shopify("orders/paid", order, "email-price"), body(order)),
    ]
    for response, raw in responses:
        assert response.status_code == 400
        assert EMAIL not in response.get_data(as_text=True)
        (row,) = stored_deliveries(edge, raw)
        assert EMAIL not in row.reason


def test_ignored_reasons_do_not_carry_payload_values(edge: Service) -> None:
    hostile = f"{EMAIL}\n\x1b[2J" + "z" * 10_000
    session = stripe_event("checkout_session_completed", "evt_status", payment_status=hostile)
    created = shopify_order("orders_create", id=7006, financial_status=hostile)
    for response, raw in (
        (edge.post_stripe(session), body(session)),
        (edge.post_shopify("orders/create", created, "status"), body(created)),
    ):
        assert response.status_code == 200
        reason = response.json["reason"]
        assert EMAIL not in reason and "\n" not in reason and len(reason) < 200
        assert "an unexpected value" in reason
        (row,) = stored_deliveries(edge, raw)
        assert row.reason == reason


# --- 3. Stripe-Signature: unauthenticated input never reaches a 500 -------------------------


@pytest.mark.parametrize("t", ["\u00b2", "9" * 5000, "1" * 13, "-1", "+1"])
def test_malformed_stripe_timestamp_is_401_and_stores_nothing(edge: Service, t: str) -> None:
    raw = body(stripe_event("payment_intent_succeeded", "evt_sig_t"))
    before = len(stored_deliveries(edge, raw))
    response = edge.client.post(
        "/webhooks/stripe", data=raw, headers={"Stripe-Signature": f"t={t},v1={'0' * 64}"}
    )
    assert response.status_code == 401
    assert len(stored_deliveries(edge, raw)) == before


# --- 4. Shopify's unsigned topic header: the body must have the shape of its topic ----------


def test_signed_order_replayed_as_shop_redact_is_400_and_erases_nothing(edge: Service) -> None:
    order = paid_order(id=7007, customer={"id": 77, "email": EMAIL})
    assert edge.post_shopify("orders/paid", order, "replay-order").json["status"] == "accepted"
    response = edge.post_shopify("shop/redact", order, "replay-redact")
    assert response.status_code == 400
    assert "shop/redact" in response.json["error"]
    rows = stored_deliveries(edge, body(order))
    assert {r.status for r in rows} == {"accepted", "rejected"}
    kept = next(r for r in rows if r.status == "accepted")
    assert kept.body == body(order) and not kept.redacted
    (event,) = stored_events(edge, "7007")
    assert event.customer_id == "77" and event.email_digest


def test_unpaid_order_replayed_as_orders_paid_is_not_counted(edge: Service) -> None:
    unpaid = shopify_order("orders_create", id=7008, financial_status="pending", test=False)
    response = edge.post_shopify("orders/paid", unpaid, "replay-unpaid")
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert "not paid" in response.json["reason"] and "'pending'" in response.json["reason"]
    assert stored_events(edge, "7008") == []


# --- 5. attribute maps are bounded at parse time ---------------------------------------------


def test_a_megabyte_of_cart_attributes_is_not_stored_with_the_event(edge: Service) -> None:
    attributes = experiments("1-2") + [{"name": f"a{n}", "value": "v"} for n in range(1000)]
    attributes.insert(1, {"name": "big", "value": "x" * 200_000})
    order = paid_order(id=7009, note_attributes=attributes)
    assert edge.post_shopify("orders/paid", order, "attrs").status_code == 200
    (row,) = stored_events(edge, "7009")
    stored = json.loads(row.attributes)
    assert len(stored) == MAX_ATTRIBUTES
    assert stored["convert_experiments"] == "1-2"
    assert len(stored["big"]) == MAX_ATTRIBUTE_VALUE_CHARS
    assert len(row.attributes) < 100_000


def test_stripe_metadata_is_bounded_and_unstorable_entries_dropped() -> None:
    metadata: dict[str, Any] = {f"k{n}": "v" for n in range(MAX_ATTRIBUTES + 50)}
    metadata.update({"nul": "a\u0000b", "\ud800": "x", "": "empty", "ctl\n": "x", "n": 5})
    kept = string_map(metadata)
    assert list(kept) == [f"k{n}" for n in range(MAX_ATTRIBUTES)]
    assert string_map({"nul": "a\u0000b", "\ud800": "x", "ok": "1-2"}) == {"ok": "1-2"}


# --- 6. the same class of fault elsewhere -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": ' + b"9" * 5000 + b"}",  # ValueError inside json, past int()'s digit limit
        b'{"n": 1e999999999999999999999999999}',  # InvalidOperation inside Decimal
        b'{"n": NaN}',  # not JSON (RFC 8259); Python would give a float nan
        b'{"n": -Infinity}',
        b"\xff\xfe",
    ],
)
def test_load_json_object_turns_every_failure_into_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        load_json_object(raw)
    assert "999" not in str(caught.value)


def test_an_email_that_cannot_be_encoded_gives_no_digest_instead_of_a_crash() -> None:
    assert email_digest("\ud800@example.com") is None
    assert email_digest("a@" + "b" * 400) is None
    assert email_digest(EMAIL) is not None
    event = stripe_event("payment_intent_succeeded", receipt_email="\ud800@example.com")
    (purchase,) = stripe.SPEC.parse({}, body(event)).events
    assert purchase.email_digest is None


def test_unknown_stripe_event_type_reason_names_a_safe_type() -> None:
    event = stripe_event("payment_intent_succeeded")
    event["type"] = "customer.created"
    assert stripe.SPEC.parse({}, body(event)).reason == "this event type is not used"
    event["type"] = "customer created"  # a space: not a Stripe event type
    with pytest.raises(PayloadError, match="'type'"):
        stripe.SPEC.parse({}, body(event))


# --- the central checks: no adapter, present or future, can skip them -----------------------


def event(**changes: Any) -> NormalizedEvent:
    fields: dict[str, Any] = {
        "kind": EventKind.PURCHASE,
        "platform": "test",
        "order_id": "o-1",
        "amounts": {"total": Money(Decimal("1.00"), "USD")},
        "item_count": 1,
        "test_mode": False,
        "occurred_at": 1_700_000_000.0,
    }
    return NormalizedEvent(**{**fields, **changes})


def test_a_valid_event_passes_the_central_checks() -> None:
    assert event().order_id == "o-1"
    assert event(customer_id="c" * 255, refund_of="r", attributes={"k": "v"}).customer_id


@pytest.mark.parametrize(
    "changes",
    [
        {"order_id": "o" * 256},
        {"order_id": ""},
        {"order_id": "o\x00"},
        {"order_id": "o\ud800"},
        {"customer_id": "c" * 256},
        {"refund_of": "r\x7f"},
        {"item_count": -1},
        {"item_count": 2**31},
        {"item_count": True},
        {"occurred_at": 1e30},
        {"occurred_at": -1.0},
        {"occurred_at": math.nan},
        {"attributes": {f"k{n}": "v" for n in range(MAX_ATTRIBUTES + 1)}},
        {"attributes": {"k": "v" * (MAX_ATTRIBUTE_VALUE_CHARS + 1)}},
        {"attributes": {"k": "\ud800"}},
        {"email_digest": EMAIL},
        {"amounts": {}},
        {"platform": "a b"},
    ],
)
def test_normalized_event_refuses_values_storage_cannot_hold(changes: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        event(**changes)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (Decimal("1e30"), "USD"),
        (Decimal("NaN"), "USD"),
        (Decimal("Infinity"), "USD"),
        (Decimal("-1"), "USD"),
        (Decimal("-0"), "USD"),  # canonical amounts have no sign: checked_amount drops it
        (Decimal("1E+2"), "USD"),  # canonical amounts have no exponent notation
        (Decimal("1E-7"), "USD"),
        (Decimal(10**12), "USD"),
        (Decimal("1.00"), "ÅÄÖ"),
        (Decimal("1.00"), "usd"),
        (Decimal("1.00"), "USDD"),
    ],
)
def test_money_refuses_amounts_and_currencies_out_of_bounds(amount: Decimal, currency: str) -> None:
    with pytest.raises(PayloadError):
        Money(amount, currency)


def test_parse_result_refuses_keys_topics_and_reasons_that_do_not_fit() -> None:
    for key, topic, reason in [
        ("k" * 256, "t", None),
        ("k", "t" * 129, None),
        ("k\n", "t", None),
        ("k", "orders/paid\x00", None),
        ("k", "t", "r" * 501),
        ("k", "t", "line\nbreak"),
    ]:
        with pytest.raises(PayloadError):
            ParseResult(key, topic, reason=reason)
    with pytest.raises(PayloadError):
        CustomerRedaction("c", order_ids=tuple(str(n) for n in range(1, 10_002)))
    with pytest.raises(PayloadError):
        CustomerRedaction("c\x00")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("49.00", "49.00"),
        ("-0", "0"),
        ("0.10000000", "0.100000"),
        (Decimal("1E+2"), "100"),
        (12, "12"),
        ("999999999999.999999", "999999999999.999999"),
    ],
)
def test_amounts_come_out_canonical(value: Any, expected: str) -> None:
    assert str(from_decimal_string(value, "x")) == expected


def test_amount_helpers_bound_digits_exponents_and_sign() -> None:
    assert str(from_minor_units(99_999_999_999_999, 2)) == "999999999999.99"
    for bad in (10**14, -1, 10**5000):
        with pytest.raises(PayloadError, match="'amount'"):
            from_minor_units(bad, 2)
    for text in ("1e30", "0.0000001", "1" * 13, " 1", "1.", ".5", "\u0663"):
        with pytest.raises(PayloadError, match="'x'"):
            from_decimal_string(text, "x")
    with pytest.raises(PayloadError, match="decimal places"):
        checked_amount(Decimal("1e-999999"), "x")


# --- property tests: any JSON value anywhere in a real fixture --------------------------------

DELETE = object()
SPECIAL_STRINGS = [
    "\ud800",
    "1e30",
    "1e-999999",
    "NaN",
    "Infinity",
    "-0",
    "\u0663",
    "\u00b2",
    "ÅÄÖ",
    "usd",
    "paid",
    "payment",
    "subscription",
    "subscription_create",
    "refund",
    "success",
    "\x00",
    "x" * 300,
    EMAIL,
    "2024-01-01T00:00:00",
    "9999-12-31T23:59:59-14:00",
]
SPECIAL_INTS = [0, -1, 1, 2**31, 2**63, 2**64, 10**6 + 1, 10**12, 10**15, 10**100, 10**30]
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(SPECIAL_INTS)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(SPECIAL_STRINGS)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def all_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        found.append((*prefix, key))
        if isinstance(child, dict | list) and child:
            found.extend(all_paths(child, (*prefix, key)))
    return found


def substituted(payload: dict[str, Any], changes: list[tuple[Any, Any]]) -> dict[str, Any]:
    mutated = copy.deepcopy(payload)
    for path, value in changes:
        parent: Any = mutated
        for step in path[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                break
        else:
            last = path[-1]
            if isinstance(parent, dict) and value is DELETE:
                parent.pop(last, None)
            elif isinstance(parent, dict):
                parent[last] = value
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                if value is DELETE:
                    del parent[last]
                else:
                    parent[last] = value
    return mutated


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def assert_storable(result: ParseResult) -> None:
    """What storage and the dispatcher rely on, stated without the code under test."""
    assert 0 < len(result.delivery_key) <= 255 and result.delivery_key.isascii()
    assert 0 < len(result.topic) <= 128 and result.topic.isprintable() and result.topic.isascii()
    if result.reason is not None:
        assert len(result.reason) <= 500 and not _CONTROL.search(result.reason)
        assert EMAIL not in result.reason
    ids = [result.redaction.customer_id, *result.redaction.order_ids] if result.redaction else []
    for e in result.events:
        ids += [e.order_id, e.customer_id, e.refund_of]
        for money in e.amounts.values():
            text = str(money.amount)
            assert re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,6})?", text), text
            assert re.fullmatch(r"[A-Z]{3}", money.currency)
        assert 0 <= e.item_count <= 2**31 - 1
        assert 0 <= e.occurred_at <= MAX_TIMESTAMP
        assert len(e.attributes) <= MAX_ATTRIBUTES
        json.dumps(dict(e.attributes), ensure_ascii=False).encode()  # UTF-8: no surrogates
        assert all(len(v) <= MAX_ATTRIBUTE_VALUE_CHARS for v in e.attributes.values())
        assert e.email_digest is None or re.fullmatch(r"[0-9a-f]{64}", e.email_digest)
    for value in ids:
        if value is not None:
            assert 0 < len(value) <= 255 and not _CONTROL.search(value)


def changes_for(payload: dict[str, Any]) -> st.SearchStrategy[list[tuple[Any, Any]]]:
    paths = all_paths(payload)
    # Half the draws from the first three levels, where the fields the adapters read live.
    shallow = [p for p in paths if len(p) <= 3]
    where = st.sampled_from(shallow) | st.sampled_from(paths)
    change = st.tuples(where, JSON_VALUES | st.just(DELETE))
    return st.lists(change, min_size=1, max_size=3)


STRIPE_FIXTURES = sorted(p.stem for p in (FIXTURES / "stripe").glob("*.json"))
SHOPIFY_TOPICS = {
    "orders/paid": "orders_paid",
    "orders/create": "orders_create",
    "refunds/create": "refunds_create",
    "customers/redact": "customers_redact",
    "customers/data_request": "customers_data_request",
    "shop/redact": "shop_redact",
}


@pytest.mark.parametrize("name", STRIPE_FIXTURES)
def test_any_json_value_anywhere_in_a_stripe_event_is_storable_or_a_payload_error(
    name: str,
) -> None:
    event = fixture("stripe", name)
    assert_storable(stripe.SPEC.parse({}, body(event)))
    outcomes: Counter[str] = Counter()

    @PARSE_PROPERTY
    @given(changes_for(event))
    def check(changes: list[tuple[Any, Any]]) -> None:
        raw = json.dumps(substituted(event, changes)).encode()
        try:
            result = stripe.SPEC.parse({}, raw)
        except PayloadError:
            outcomes["refused"] += 1
            return
        assert_storable(result)
        outcomes["parsed"] += 1

    check()
    # Not vacuous either way: a parser that refused everything would pass the check above.
    assert outcomes["parsed"] > 0 and outcomes["refused"] > 0, outcomes


@pytest.mark.parametrize(("topic", "name"), sorted(SHOPIFY_TOPICS.items()))
def test_any_json_value_anywhere_in_a_shopify_body_is_storable_or_a_payload_error(
    topic: str, name: str
) -> None:
    payload = fixture("shopify", name)
    if name.startswith("orders"):
        payload["financial_status"] = "paid"  # reach the purchase mapping, not the unpaid exit
    assert_storable(shopify.SPEC.parse({"x-shopify-topic": topic}, body(payload)))
    outcomes: Counter[str] = Counter()

    @PARSE_PROPERTY
    @given(changes_for(payload))
    def check(changes: list[tuple[Any, Any]]) -> None:
        raw = json.dumps(substituted(payload, changes)).encode()
        try:
            result = shopify.SPEC.parse({"x-shopify-topic": topic}, raw)
        except PayloadError:
            outcomes["refused"] += 1
            return
        assert_storable(result)
        outcomes["parsed"] += 1

    check()
    # shop/redact has two fields, both required with a type: about 1 substitution in 70
    # leaves a readable body, so its examples may all be refusals.
    assert outcomes["refused"] > 0 and (outcomes["parsed"] > 0 or name == "shop_redact"), outcomes


# Header values arrive from WSGI as latin-1 text: any of those characters is possible.
HEADER_TEXT = st.text(alphabet=st.characters(max_codepoint=255), max_size=300)


@PROPERTY
@given(topic=HEADER_TEXT, event_id=HEADER_TEXT)
def test_any_shopify_topic_or_event_id_header_is_storable_or_a_payload_error(
    topic: str, event_id: str
) -> None:
    headers = {"x-shopify-topic": topic, "x-shopify-event-id": event_id}
    try:
        result = shopify.SPEC.parse(headers, body(paid_order()))
    except PayloadError:
        return
    assert_storable(result)


# Bodies rejected so far: one rejected again (the same Shopify body under another topic) is
# kept once, as it was first rejected (and a redaction since may have erased that copy).
REJECTED_BODIES: set[bytes] = set()


def assert_answer_matches_parse(
    service: Service, response: Any, raw: bytes, parse: Callable[[], ParseResult]
) -> None:
    """The route answers what the parser (checked on its own above) makes of the body: its
    PayloadError as a 400 with the body kept as rejected for that reason, or its result as a
    200 with the delivery stored under its key (never a 400 from a refused value: the parser
    passes on only values storage can hold)."""
    try:
        result = parse()
    except PayloadError as exc:
        assert (response.status_code, response.json) == (400, {"error": str(exc)})
        if raw not in REJECTED_BODIES:
            REJECTED_BODIES.add(raw)
            kept = [(d.status, d.reason) for d in stored_deliveries(service, raw)]
            assert [k for k in kept if k[0] == "rejected"] == [("rejected", str(exc))]
        return
    assert response.status_code == 200, response.json
    answer = response.json
    orders = [(e["kind"], e["order_id"]) for e in answer.get("events", [])]
    assert orders == [(str(e.kind), e.order_id) for e in result.events]
    if result.events:
        assert answer["status"] in ("accepted", "duplicate")
    else:
        assert (answer["status"], answer["reason"]) == ("ignored", result.reason)
    with service.runtime.engine.connect() as conn:
        row = conn.execute(
            select(deliveries).where(deliveries.c.delivery_key == result.delivery_key)
        ).one()
    assert (row.id, row.status) == (answer["delivery_id"], answer["status"])


@settings(PROPERTY, max_examples=40)
@given(data=st.data())
def test_signed_hostile_deliveries_get_the_answer_their_parse_gives(
    edge: Service, data: st.DataObject
) -> None:
    original = fixture("stripe", data.draw(st.sampled_from(STRIPE_FIXTURES)))
    event = substituted(original, data.draw(changes_for(original)))
    event["id"] = f"evt_prop_{uuid.uuid4().hex}"  # each example a new delivery
    raw = body(event)
    response = edge.post_stripe(event)
    assert_answer_matches_parse(edge, response, raw, lambda: stripe.SPEC.parse({}, raw))
    topic = data.draw(st.sampled_from(sorted(SHOPIFY_TOPICS)))
    # The topic's own body, or a paid order replayed under it (only the body is signed).
    own = fixture("shopify", SHOPIFY_TOPICS[topic])
    if topic.startswith("orders/"):
        own["financial_status"] = "paid"
    payload = own if data.draw(st.booleans()) else paid_order()
    shop_body = substituted(payload, data.draw(changes_for(payload)))
    raw = body(shop_body)
    event_id = uuid.uuid4().hex
    headers = {"x-shopify-topic": topic, "x-shopify-event-id": event_id}
    response = edge.post_shopify(topic, shop_body, event_id=event_id)
    assert_answer_matches_parse(edge, response, raw, lambda: shopify.SPEC.parse(headers, raw))


def test_attribute_bounds_at_each_cap_plus_or_minus_one() -> None:
    cap = MAX_ATTRIBUTE_VALUE_CHARS
    for length, kept in ((cap - 1, cap - 1), (cap, cap), (cap + 1, cap)):  # cut, never dropped
        assert len(bounded_attributes([("a", "x" * length)])["a"]) == kept
    names = bounded_attributes([("k" * 255, "v"), ("k" * 256, "v")])
    assert list(names) == ["k" * 255]
    budget = MAX_ATTRIBUTES_TOTAL_CHARS
    exact = bounded_attributes([("a", "x" * (cap - 1)), ("b", "x" * (budget - cap - 1))])
    assert sum(len(k) + len(v) for k, v in exact.items()) == budget
    over = bounded_attributes([("a", "x" * (cap - 1)), ("b", "x" * (budget - cap)), ("c", "")])
    assert list(over) == ["a", "c"]  # "b" would pass the total by one; later entries still fit
    first_50 = bounded_attributes((f"k{n}", "v") for n in range(MAX_ATTRIBUTES + 1))
    assert list(first_50) == [f"k{n}" for n in range(MAX_ATTRIBUTES)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("usd", "USD"),
        ("Eur", "EUR"),
        ("\u0131sk", None),
        ("\u017fek", None),
        ("US", None),
        ("USDX", None),
        ("U1D", None),
        (None, None),
        (840, None),
    ],
)
def test_as_currency_code_is_ascii_letters_in_any_case(value: object, expected: str | None) -> None:
    # "ı".upper() == "I" and "ſ".upper() == "S": ASCII is checked before upper-casing.
    assert as_currency_code(value) == expected
