"""Square: the signature (notification URL + body, the SDK's known answers), payment and refund
events, the environment pin, amounts in the currency's smallest unit, the details function
against a real local stand-in of the Orders API, the options, and hostile bodies and answers.
End to end (webhook -> Orders API -> Convert) in tests/test_platform_details.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import square
from adapters.base import Details, Later, StoredEvent
from adapters.request import SignedRequest
from tests.config_file import config_document
from tests.platform_api_standin import Reply
from tests.square_api_standin import ACCESS_TOKEN, SquareApiStandin
from webhooks.attribution.customers import PlatformApi
from webhooks.core.errors import ConfigError, PayloadError, SignatureError
from webhooks.core.events import MAX_LINE_QUANTITY, EventKind, Money
from webhooks.delivery.details import ApiFetch
from webhooks.wiring.config import settings_from_mapping

FIXTURES = Path(__file__).parent / "fixtures" / "square"
PAYMENT_ID = "bP9mAsEMYPUGjjGNaNO5ZDVyLhSZY"
ORDER_ID = "d7eKah653Z579f3gVtjlxpSlmUcZY"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def payload(name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return found


def parse(
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
    **options: str,
) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return square.configure(options)(headers or {}, data)


def stored(reference: str = ORDER_ID) -> StoredEvent:
    return StoredEvent("square", EventKind.PURCHASE, PAYMENT_ID, reference, None, {}, False)


@pytest.fixture
def api() -> Iterator[SquareApiStandin]:
    server = SquareApiStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fetch() -> Iterator[ApiFetch]:
    client = PlatformApi(connect_timeout=0.5, read_timeout=1.0, total_seconds=2.0)
    yield ApiFetch(client)
    client.close()


def options(api: SquareApiStandin, **more: str) -> dict[str, str]:
    return {"access_token": ACCESS_TOKEN, "api_base": api.base_url, **more}


# --- signature --------------------------------------------------------------------------------


def test_the_square_sdk_known_answers_verify_at_their_url_and_are_what_we_sign() -> None:
    case = json.loads((FIXTURES / "signatures" / "known_answer.json").read_text())
    body, url = case["body"].encode(), case["url"]
    square.SCHEME.verify(SignedRequest.post(body, case["headers"], url), [case["secret"]], 0)
    assert square.SCHEME.sign(body, case["secret"], case["signed_at"], url=url) == case["signed"]
    escaped = case["escaped"]
    header = {square.SCHEME.header: escaped["signature"]}
    request = SignedRequest.post(escaped["body"].encode(), header, escaped["url"])
    square.SCHEME.verify(request, [escaped["secret"]], 0)
    # The SDK's negative cases: another URL, another key, another header, a reformatted body.
    bad_url = url.replace("679a4f3a", "79a4f3a")
    refusals = [
        (SignedRequest.post(body, case["headers"], bad_url), case["secret"]),
        (SignedRequest.post(body, case["headers"], url), "MCmhFRxGX82xMwg5FsaoQA"),
        (
            SignedRequest.post(body, {square.SCHEME.header: "1z2n3DEJJiUPKcPzQo1ftvbxGdw="}, url),
            case["secret"],
        ),
        (SignedRequest.post(body + b"\n", case["headers"], url), case["secret"]),
        (SignedRequest.post(body, case["headers"]), case["secret"]),  # no url configured
    ]
    for request, secret in refusals:
        with pytest.raises(SignatureError):
            square.SCHEME.verify(request, [secret], 0)


# --- parse ------------------------------------------------------------------------------------


def test_a_completed_payment_is_a_purchase_keyed_by_the_payment() -> None:
    result = parse(payload("payment_updated.json"), access_token=ACCESS_TOKEN)
    assert (result.delivery_key, result.topic) == (
        "6a8f5f28-54a1-4eb0-a98a-3111513fd4fc",
        "payment.updated",
    )
    (event,) = result.events
    assert (event.kind, event.order_id, event.test_mode) == (EventKind.PURCHASE, PAYMENT_ID, False)
    assert event.amounts == {
        "total": Money(Decimal("5.55"), "USD"),
        "subtotal": Money(Decimal("5.55"), "USD"),
    }
    assert event.item_count == 1
    assert dict(event.attributes) == {"note": "Test Note"}
    assert event.details_ref == ORDER_ID
    assert event.occurred_at == pytest.approx(1634153674.339)


def test_without_an_access_token_the_payment_does_not_wait_for_its_order() -> None:
    (event,) = parse(payload("payment_updated.json")).events
    assert event.details_ref is None


def test_payment_created_counts_only_when_completed() -> None:
    created = payload("payment_created.json")
    assert parse(created).reason == (
        "payment status is 'APPROVED'; only a COMPLETED payment counts"
    )
    created["data"]["object"]["payment"]["status"] = "COMPLETED"
    assert parse(created).events[0].order_id == PAYMENT_ID


@pytest.mark.parametrize("status", ["PENDING", "CANCELED", "FAILED", None, 7, "completed"])
def test_a_payment_not_completed_is_ignored(status: object) -> None:
    body = payload("payment_updated.json")
    body["data"]["object"]["payment"]["status"] = status
    assert parse(body).events == ()


def test_a_completed_refund_is_recorded_against_its_payment() -> None:
    (refund,) = parse(payload("refund_updated.json")).events
    assert (refund.kind, refund.refund_of) == (EventKind.REFUND, PAYMENT_ID)
    assert refund.amounts["total"] == Money(Decimal("5.55"), "USD")
    body = payload("refund_updated.json")
    body["data"]["object"]["refund"]["status"] = "PENDING"
    assert parse(body).reason == "refund status is 'PENDING'; only a COMPLETED one counts"


@pytest.mark.parametrize(
    ("currency", "amount", "major"),
    [("USD", 555, "5.55"), ("JPY", 555, "555"), ("KWD", 5550, "5.550"), ("eur", 1, "0.01")],
)
def test_amounts_use_the_currency_exponent(currency: str, amount: int, major: str) -> None:
    body = payload("payment_updated.json")
    money = {"amount": amount, "currency": currency}
    body["data"]["object"]["payment"].update(total_money=money, amount_money=money)
    (event,) = parse(body).events
    assert event.amounts["total"] == Money(Decimal(major), currency.upper())


def test_the_environment_comes_from_the_source_and_a_mismatching_header_is_refused() -> None:
    body = payload("payment_updated.json")
    assert parse(body, {"square-environment": "Production"}).events[0].test_mode is False
    sandbox = parse(body, {"square-environment": "Sandbox"}, environment="sandbox")
    assert sandbox.events[0].test_mode is True
    assert parse(body, environment="sandbox").events[0].test_mode is True  # no header
    with pytest.raises(PayloadError, match="says Sandbox; the source's environment is production"):
        parse(body, {"square-environment": "Sandbox"})
    with pytest.raises(PayloadError, match="says Production; the source's environment is sandbox"):
        parse(body, {"square-environment": "Production"}, environment="sandbox")
    with pytest.raises(PayloadError, match="must be Production or Sandbox"):
        parse(body, {"square-environment": "Staging\x00"})


def test_other_event_types_are_stored_and_ignored() -> None:
    body = payload("payment_updated.json")
    body["type"] = "order.updated"
    assert parse(body).reason == "this event type is not used"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2021-10-13T19:34:34.339Z", 1634153674.339),
        ("2022-07-13T20:30:59.037339943Z", 1657744259.037339943),
        ("2020-01-25T18:25:34-08:00", 1580005534.0),
        ("2020-01-26T02:25:34+00:00", 1580005534.0),
    ],
)
def test_rfc3339_times(text: str, seconds: float) -> None:
    assert square.rfc3339(text, "created_at") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "2021-13-01T00:00:00Z",
        "2021-10-13T19:34:34",
        "2021-10-13 19:34:34Z",
        "2021-10-13T19:34:34+24:00",
        "0000-01-01T00:00:00Z",
        "\u0662021-10-13T19:34:34Z",
        "2021-10-13T19:34:34.1234567890Z",
        1634153674,
        None,
    ],
)
def test_times_that_are_not_rfc3339_are_refused(text: object) -> None:
    with pytest.raises(PayloadError, match="'created_at'"):
        square.rfc3339(text, "created_at")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_id": None}, "'event_id'"),
        ({"event_id": "a b"}, "'event_id'"),
        ({"type": ["payment.updated"]}, "'type'"),
        ({"data": None}, "'data'"),
        ({"created_at": "yesterday"}, "'created_at'"),
    ],
)
def test_an_envelope_not_in_the_documented_shape_is_refused(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError, match=field):
        parse({**payload("payment_updated.json"), **change})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"total_money": {"amount": "555", "currency": "USD"}}, "total_money.amount"),
        ({"total_money": {"amount": 5.55, "currency": "USD"}}, "total_money.amount"),
        ({"total_money": {"amount": True, "currency": "USD"}}, "total_money.amount"),
        ({"total_money": {"amount": -1, "currency": "USD"}}, "total_money.amount"),
        ({"total_money": {"amount": 10**40, "currency": "USD"}}, "total_money.amount"),
        ({"total_money": {"amount": 1, "currency": "US$"}}, "total_money.currency"),
        ({"total_money": {"amount": 1, "currency": "\u0130SD"}}, "total_money.currency"),
        ({"total_money": None}, "'total_money'"),
        ({"id": "pay\x00ment"}, "'id'"),
        ({"id": "\ud800"}, "'id'"),
        ({"customer_id": "c" * 300}, "'customer_id'"),
    ],
)
def test_a_hostile_payment_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    body = payload("payment_updated.json")
    body["data"]["object"]["payment"].update(change)
    with pytest.raises(PayloadError, match=field.replace(".", r"\.")):
        parse(body)


def test_an_order_id_that_cannot_go_in_a_url_is_not_read() -> None:
    body = payload("payment_updated.json")
    body["data"]["object"]["payment"]["order_id"] = "../../v2/payments"
    (event,) = parse(body, access_token=ACCESS_TOKEN).events
    assert event.details_ref is None


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
        max_leaves=12,
    ),
    st.sampled_from(["status", "total_money", "amount_money", "order_id", "note", "id"]),
)
def test_any_value_in_a_payment_field_is_an_event_a_reason_or_a_payload_error(
    value: Any, key: str
) -> None:
    body = payload("payment_updated.json")
    body["data"]["object"]["payment"][key] = value
    with contextlib.suppress(PayloadError):
        parse(body, access_token=ACCESS_TOKEN)


# --- details ----------------------------------------------------------------------------------


def test_the_order_gives_the_item_count_metadata_and_customer(
    api: SquareApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(ORDER_ID, ["1", "2", "0.5"], {"convert_experiments": "100-200"}, "CUST1")
    got = square.details(stored(), options(api), fetch)
    assert got == Details(
        item_count=4, attributes={"convert_experiments": "100-200"}, customer_id="CUST1"
    )
    (seen,) = api.requests
    assert seen.path == f"/v2/orders/{ORDER_ID}"
    assert seen.headers["square-version"] == square.API_VERSION


def test_the_api_version_and_the_sandbox_base_are_options(
    api: SquareApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(ORDER_ID, ["3"])
    got = square.details(stored(), options(api, api_version="2024-10-17"), fetch)
    assert got == Details(item_count=3, attributes={})
    assert api.requests[0].headers["square-version"] == "2024-10-17"
    assert square.API_BASES["sandbox"] == "https://connect.squareupsandbox.com"


def test_an_unknown_order_or_a_wrong_token_waits_never_drops_the_payment(
    api: SquareApiStandin, fetch: ApiFetch
) -> None:
    # The payment is COMPLETED: an order the token cannot see is a configuration problem.
    got = square.details(stored(), options(api), fetch)
    assert isinstance(got, Later) and "not found with the source's access_token" in got.reason
    api.add_order(ORDER_ID, ["1"])
    got = square.details(stored(), options(api, access_token="EAAAwrongtoken00"), fetch)
    assert got == Later("the order answered HTTP 401")


def test_without_a_token_nothing_is_asked(api: SquareApiStandin, fetch: ApiFetch) -> None:
    assert square.details(stored(), {"api_base": api.base_url}, fetch) == Details()
    assert api.count() == 0


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ({"errors": [{"code": "INTERNAL_SERVER_ERROR"}]}, None),
        ({"order": {"id": "another"}}, "'order.id'"),
        ({"order": []}, "'order'"),
        ({"order": {"id": ORDER_ID, "line_items": [{"quantity": 2}]}}, "quantity"),
        ({"order": {"id": ORDER_ID, "line_items": [{"quantity": "1e3"}]}}, "quantity"),
        ({"order": {"id": ORDER_ID, "line_items": [{"quantity": "\u0663"}]}}, "quantity"),
        ({"order": {"id": ORDER_ID, "line_items": [{"quantity": "-1"}]}}, "quantity"),
        ({"order": {"id": ORDER_ID, "line_items": [{"quantity": "1000001"}]}}, "quantity"),
    ],
)
def test_an_order_answer_not_in_the_documented_shape_waits(
    api: SquareApiStandin, fetch: ApiFetch, answer: dict[str, Any], said: str | None
) -> None:
    api.answer_next(Reply(200, answer))
    if said is None:
        assert square.details(stored(), options(api), fetch) == Later(
            "the order answer holds errors"
        )
        return
    with pytest.raises(PayloadError, match=said):
        square.details(stored(), options(api), fetch)


@pytest.mark.parametrize(
    ("quantities", "count"),
    [(["1"], 1), (["1", "2"], 3), (["1.5"], 1), (["2.0"], 2), (["0"], 0), ([], None)],
)
def test_line_item_quantities_are_decimal_strings(quantities: list[str], count: int | None) -> None:
    lines = [{"quantity": q} for q in quantities]
    assert square.line_item_count(lines) == count
    assert square.line_item_count(None) is None


@FUZZ
@given(st.lists(st.text(alphabet="0123456789.-e", max_size=12), max_size=5))
def test_any_quantities_give_a_bounded_count_or_a_payload_error(quantities: list[str]) -> None:
    try:
        count = square.line_item_count([{"quantity": q} for q in quantities])
    except PayloadError:
        return
    assert count is None or 0 <= count <= len(quantities) * MAX_LINE_QUANTITY


# --- options ----------------------------------------------------------------------------------


def _load(source: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    doc = config_document("sqlite:///unused.db", "http://127.0.0.1:9", sources={"sq": source})
    return settings_from_mapping(doc, env or {})


def test_options_load_and_the_url_is_required() -> None:
    source = {
        "platform": "square",
        "secrets": ["square_signature_key_0001"],
        "url": "https://hooks.example.com/webhooks/sq",
        "environment": "sandbox",
        "access_token": "${SQUARE_ACCESS_TOKEN}",
        "api_version": "2025-01-23",
    }
    loaded = _load(source, {"SQUARE_ACCESS_TOKEN": ACCESS_TOKEN}).sources["sq"]
    assert dict(loaded.options) == {
        "environment": "sandbox",
        "access_token": ACCESS_TOKEN,
        "api_version": "2025-01-23",
    }
    with pytest.raises(ConfigError) as caught:
        _load(
            {**source, "environment": "live", "api_version": "latest"},
            {"SQUARE_ACCESS_TOKEN": ACCESS_TOKEN},
        )
    assert set(caught.value.problems) == {"sources.sq.environment", "sources.sq.api_version"}
    without_url = {k: v for k, v in source.items() if k != "url"}
    with pytest.raises(ConfigError) as caught:
        _load(without_url, {"SQUARE_ACCESS_TOKEN": ACCESS_TOKEN})
    assert list(caught.value.problems) == ["sources.sq.url"]


def test_the_sample_is_signed_for_the_configured_url_and_is_a_new_event_each_time() -> None:
    body = payload(square.SAMPLE.fixture)
    assert square.SAMPLE.add_pairs is not None
    square.SAMPLE.add_pairs(body, {}, "100-200")
    again = payload(square.SAMPLE.fixture)
    square.SAMPLE.add_pairs(again, {}, "100-200")
    assert body["event_id"] != again["event_id"]
    (event,) = parse(body, dict(square.SAMPLE.headers)).events
    assert event.attributes["note"] == "100-200"
