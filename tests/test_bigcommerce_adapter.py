"""BigCommerce: the signature (Standard Webhooks keyed with the client secret), the thin order
webhooks mapped to events, the details function against a real local stand-in of the API, the
options, and hostile bodies and answers. End to end (webhook -> API -> Convert) in
tests/test_platform_details.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import bigcommerce
from adapters.base import Details, Later, NotAPurchase, StoredEvent
from adapters.request import SignedRequest
from tests.bigcommerce_api_standin import API_TOKEN, BigCommerceApiStandin
from tests.config_file import config_document
from tests.platform_api_standin import Reply
from webhooks.attribution.customers import PlatformApi
from webhooks.core.errors import ConfigError, FetchFailed, PayloadError, SignatureError
from webhooks.core.events import EventKind, Money
from webhooks.delivery.details import ApiFetch
from webhooks.wiring.config import settings_from_mapping

FIXTURES = Path(__file__).parent / "fixtures" / "bigcommerce"
SECRET = "bc_client_secret_for_tests_0001"
OPTIONS = {"store_hash": "abcde", "api_token": API_TOKEN}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def payload(name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(raw(name))
    return found


def parse(body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return bigcommerce.configure(OPTIONS)(headers or {}, data)


def stored(reference: str = "abcde/250") -> StoredEvent:
    return StoredEvent("bigcommerce", EventKind.PURCHASE, "250", reference, None, {}, False)


@pytest.fixture
def api() -> Iterator[BigCommerceApiStandin]:
    server = BigCommerceApiStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fetch() -> Iterator[ApiFetch]:
    client = PlatformApi(connect_timeout=0.5, read_timeout=1.0, total_seconds=2.0)
    yield ApiFetch(client)
    client.close()


def options(api: BigCommerceApiStandin, **more: str) -> dict[str, str]:
    return {**OPTIONS, "api_base": api.base_url, **more}


# --- signature --------------------------------------------------------------------------------


def test_the_known_answer_from_the_standard_webhooks_library_and_bigcommerce_s_example() -> None:
    case = json.loads((FIXTURES / "signatures" / "known_answer.json").read_text())
    body = case["body"].encode()
    request = SignedRequest.post(body, case["headers"])
    bigcommerce.SCHEME.verify(request, [case["secret"]], case["now"])
    signed = bigcommerce.SCHEME.sign(
        body, case["secret"], case["signed_at"], delivery_id=case["headers"]["webhook-id"]
    )
    assert signed == case["signed"]
    with pytest.raises(SignatureError):
        bigcommerce.SCHEME.verify(request, [case["secret"] + "x"], case["now"])
    # The client secret is the key itself: the same secret as a whsec_ (base64) value fails.
    with pytest.raises(SignatureError):
        bigcommerce.SCHEME.verify(request, ["whsec_" + case["secret"]], case["now"])


def test_the_client_secret_is_used_as_bigcommerce_shows_it() -> None:
    assert bigcommerce.SCHEME.secret_problem("a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p") is None
    for bad in ("has a space in it here", "tab\there-and-more", "caf\u00e9-secret-value-xx"):
        assert bigcommerce.SCHEME.secret_problem(bad) is not None
    assert bigcommerce.ClientSecretWebhooks.key("\udc80") is None


# --- parse ------------------------------------------------------------------------------------


def test_status_updated_to_a_paid_status_is_a_purchase_awaiting_its_details() -> None:
    result = parse(raw("store_order_statusUpdated.json"))
    assert (result.delivery_key, result.topic) == (
        "7ee67cd1cf2ca60bc1aa9e5fe957d2de373be4ca",
        "store/order/statusUpdated",
    )
    (event,) = result.events
    assert (event.kind, event.platform, event.order_id) == (
        EventKind.PURCHASE,
        "bigcommerce",
        "250",
    )
    assert event.amounts == {"total": Money(Decimal(0), "XXX")}
    assert (event.item_count, event.test_mode, event.occurred_at) == (0, False, 1561479335.0)
    assert event.details_ref == "abcde/250"
    assert (event.customer_id, event.email_digest, dict(event.attributes)) == (None, None, {})


@pytest.mark.parametrize("status", sorted(bigcommerce.PAID_STATUSES))
def test_every_paid_status_counts(status: int) -> None:
    body = payload("store_order_statusUpdated.json")
    body["data"]["status"]["new_status_id"] = status
    assert len(parse(body).events) == 1


@pytest.mark.parametrize("status", [0, 1, 4, 5, 6, 7, 12, 13, 14])
def test_an_unpaid_status_is_ignored_naming_it(status: int) -> None:
    body = payload("store_order_statusUpdated.json")
    body["data"]["status"]["new_status_id"] = status
    result = parse(body)
    name = bigcommerce.STATUS_NAMES[status]
    assert result.events == ()
    assert result.reason == (
        f"the order's new status is '{name}' ({status}); only a paid status counts"
    )


@pytest.mark.parametrize("status", [99, -1, 2**70, True, "11", None, [11], {"id": 11}])
def test_an_unexpected_status_is_named_as_such_never_echoed(status: object) -> None:
    body = payload("store_order_statusUpdated.json")
    body["data"]["status"]["new_status_id"] = status
    result = parse(body)
    assert result.reason == (
        "the order's new status is an unexpected status; only a paid status counts"
    )


def test_order_created_is_a_candidate_the_details_settle() -> None:
    (event,) = parse(raw("store_order_created.json")).events
    assert (event.order_id, event.details_ref, event.kind) == (
        "250",
        "abcde/250",
        EventKind.PURCHASE,
    )


def test_order_updated_is_not_used_and_a_refund_is_recorded() -> None:
    ignored = parse(raw("store_order_updated.json"))
    assert (ignored.events, ignored.reason) == ((), "this scope is not used")
    (refund,) = parse(raw("store_order_refund_created.json")).events
    assert (refund.kind, refund.order_id, refund.refund_of) == (
        EventKind.REFUND,
        "250:refund:3",
        "250",
    )


def test_a_delivery_from_another_store_is_ignored_and_the_plain_parse_takes_any() -> None:
    body = payload("store_order_statusUpdated.json")
    body["producer"] = "stores/other1"
    result = parse(body)
    assert (result.events, result.reason) == (
        (),
        "the delivery is from another store than store_hash",
    )
    (event,) = bigcommerce.parse({}, json.dumps(body).encode()).events
    assert event.details_ref == "other1/250"


def test_the_delivery_key_is_the_hash_else_the_webhook_id() -> None:
    body = payload("store_order_statusUpdated.json")
    del body["hash"]
    assert parse(body, {"webhook-id": "msg_2Lq9"}).delivery_key == "msg_2Lq9"
    with pytest.raises(PayloadError, match="'webhook-id'"):
        parse(body)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scope": None}, "'scope'"),
        ({"scope": "store/order/\u00e9"}, "'scope'"),
        ({"hash": "a b"}, "'hash'"),
        ({"hash": "x" * 256}, "'hash'"),
        ({"hash": 7}, "'hash'"),
        ({"producer": None}, "'producer'"),
        ({"producer": "stores/ABC"}, "'producer'"),
        ({"producer": "stores/abc/../x"}, "'producer'"),
        ({"data": []}, "'data'"),
        ({"data": {"type": "cart", "id": 250}}, "'data.type'"),
        ({"data": {"type": "order", "id": "250", "status": {}}}, "'data.id'"),
        ({"data": {"type": "order", "id": 0, "status": {}}}, "'data.id'"),
        ({"data": {"type": "order", "id": True, "status": {}}}, "'data.id'"),
        ({"data": {"type": "order", "id": 2**64, "status": {}}}, "'data.id'"),
        ({"data": {"type": "order", "id": 250}}, "'status'"),
        ({"created_at": "1561479335"}, "'created_at'"),
        ({"created_at": 10**13}, "'created_at'"),
    ],
)
def test_a_body_not_in_the_documented_shape_is_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    body = {**payload("store_order_statusUpdated.json"), **change}
    with pytest.raises(PayloadError, match=field):
        parse(body)


def test_a_refund_without_its_id_is_refused() -> None:
    body = payload("store_order_refund_created.json")
    body["data"]["refund"]["refund_id"] = "3"
    with pytest.raises(PayloadError, match="refund_id"):
        parse(body)


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30) | st.floats(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
        max_leaves=12,
    )
)
def test_any_json_in_any_field_is_an_event_a_reason_or_a_payload_error(value: Any) -> None:
    body = payload("store_order_statusUpdated.json")
    for key in ("scope", "hash", "producer", "data", "created_at"):
        changed = {**body, key: value}
        data = json.dumps(changed, allow_nan=True).encode()
        with contextlib.suppress(PayloadError):
            parse(data)


# --- details ----------------------------------------------------------------------------------


def test_the_order_gives_the_amount_items_customer_and_metafields(
    api: BigCommerceApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(250, {"convert_experiments": "100-200", "note": "gift"})
    got = bigcommerce.details(stored(), options(api), fetch)
    assert got == Details(
        amounts={
            "total": Money(Decimal("1008.74"), "USD"),
            "subtotal": Money(Decimal("924.47"), "USD"),
        },
        item_count=11,
        attributes={"convert_experiments": "100-200", "note": "gift"},
        customer_id="11",
        email_digest=hashlib.sha256(b"janedoe@email.com").hexdigest(),
    )


def test_the_transaction_currency_is_the_default_currency_not_the_display_one(
    api: BigCommerceApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(250, currency_code="EUR", default_currency_code="GBP", customer_id=0)
    got = bigcommerce.details(stored(), options(api), fetch)
    assert isinstance(got, Details) and got.amounts is not None
    assert got.amounts["total"] == Money(Decimal("1008.74"), "GBP")
    assert got.customer_id is None  # 0: a guest


def test_an_order_not_paid_deleted_or_missing_is_not_a_purchase(
    api: BigCommerceApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(250, status_id=7)
    assert bigcommerce.details(stored(), options(api), fetch) == NotAPurchase(
        "the order's status is 'Awaiting Payment' (7); it is not paid"
    )
    api.add_order(250, is_deleted=True)
    assert bigcommerce.details(stored(), options(api), fetch) == NotAPurchase(
        "the order was deleted"
    )
    assert bigcommerce.details(stored("abcde/999"), options(api), fetch) == NotAPurchase(
        "order 999 was not found in the store"
    )
    assert bigcommerce.details(stored("other1/250"), options(api), fetch) == NotAPurchase(
        "the order is from another store than the source's store_hash"
    )


def test_a_wrong_token_waits(api: BigCommerceApiStandin, fetch: ApiFetch) -> None:
    api.add_order(250)
    got = bigcommerce.details(stored(), options(api, api_token="not_the_token_1"), fetch)
    assert got == Later("the order answered HTTP 401")


def test_metafields_failing_wait_and_missing_ones_are_none(
    api: BigCommerceApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(250, {"convert_experiments": "1-2"})
    api.answer_next(Reply(200, api.orders[250]), Reply(403, {"status": 403}))
    assert bigcommerce.details(stored(), options(api), fetch) == Later(
        "the order's metafields answered HTTP 403"
    )
    api.answer_next(Reply(200, api.orders[250]), Reply(404, {}))
    got = bigcommerce.details(stored(), options(api), fetch)
    assert isinstance(got, Details) and dict(got.attributes) == {}


def test_metafields_keep_the_first_of_a_key_and_only_strings(
    api: BigCommerceApiStandin, fetch: ApiFetch
) -> None:
    api.add_order(250)
    entries = [
        {"key": "convert_experiments", "value": "1-2"},
        {"key": "convert_experiments", "value": "3-4"},
        {"key": "n", "value": 5},
        {"key": None, "value": "x"},
        "garbage",
    ]
    api.answer_next(Reply(200, api.orders[250]), Reply(200, {"data": entries}))
    got = bigcommerce.details(stored(), options(api), fetch)
    assert isinstance(got, Details) and dict(got.attributes) == {"convert_experiments": "1-2"}
    api.answer_next(Reply(200, api.orders[250]), Reply(200, {"data": {"key": "v"}}))
    with pytest.raises(PayloadError, match="'data'"):
        bigcommerce.details(stored(), options(api), fetch)


def test_a_throttled_or_failing_api_raises_fetch_failed_for_the_dispatcher(
    api: BigCommerceApiStandin, fetch: ApiFetch
) -> None:
    api.answer_next(Reply(429, {}, {"Retry-After": "30"}))
    with pytest.raises(FetchFailed) as caught:
        bigcommerce.details(stored(), options(api), fetch)
    assert caught.value.retry_after == 30.0


def test_a_stored_reference_that_is_not_one_is_refused(fetch: ApiFetch) -> None:
    for reference in ("250", "abcde/250/x", "abcde/0", "ABCDE/250", "abcde/25a"):
        with pytest.raises(PayloadError, match="details reference"):
            bigcommerce.details(stored(reference), OPTIONS, fetch)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "status_id",
                "total_inc_tax",
                "subtotal_ex_tax",
                "items_total",
                "customer_id",
                "default_currency_code",
                "billing_address",
                "is_deleted",
            ]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=12)
        | st.decimals(allow_nan=False)
        | st.lists(st.integers(), max_size=2),
        max_size=5,
    )
)
def test_any_order_answer_is_details_a_wait_or_not_a_purchase(changes: dict[str, Any]) -> None:
    order = json.loads((FIXTURES / "api" / "order_247.json").read_text()) | {"id": 250}
    answered = json.dumps(order | changes, default=str).encode()

    def answer(method: str, url: str, headers: Any, body: bytes | None) -> tuple[int, bytes]:
        return (200, answered) if "/v2/" in url else (200, b'{"data": []}')

    try:
        got = bigcommerce.details(stored(), OPTIONS, answer)
    except PayloadError:
        return
    assert isinstance(got, Details | Later | NotAPurchase)
    if isinstance(got, Details):
        assert got.amounts is not None and got.amounts["total"].currency != "XXX"


# --- options ----------------------------------------------------------------------------------


def _load(source: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    doc = config_document("sqlite:///unused.db", "http://127.0.0.1:9", sources={"bc": source})
    return settings_from_mapping(doc, env or {})


def test_options_load_with_the_token_from_the_environment() -> None:
    source = {
        "platform": "bigcommerce",
        "secrets": [SECRET],
        "store_hash": "abcde",
        "api_token": "${BIGCOMMERCE_API_TOKEN}",
    }
    loaded = _load(source, {"BIGCOMMERCE_API_TOKEN": API_TOKEN}).sources["bc"]
    assert dict(loaded.options) == {"store_hash": "abcde", "api_token": API_TOKEN}
    assert loaded.tolerance_seconds == 300  # Standard Webhooks' window


def test_bad_or_missing_options_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        _load({"platform": "bigcommerce", "secrets": ["has a space in the secret"]})
    assert set(caught.value.problems) >= {"sources.bc.store_hash", "sources.bc.api_token"}
    with pytest.raises(ConfigError) as caught:
        _load({"platform": "bigcommerce", "secrets": ["has a space in the secret"], **OPTIONS})
    assert list(caught.value.problems) == ["sources.bc.secrets[0]"]
    with pytest.raises(ConfigError) as caught:
        _load(
            {
                "platform": "bigcommerce",
                "secrets": [SECRET],
                "store_hash": "stores/abcde",
                "api_token": "short",
                "api_base": "ftp://x",
            }
        )
    assert set(caught.value.problems) == {
        "sources.bc.store_hash",
        "sources.bc.api_token",
        "sources.bc.api_base",
    }


def test_the_sample_is_the_documented_status_update_and_a_new_delivery_each_time() -> None:
    body = payload(bigcommerce.SAMPLE.fixture)
    headers: dict[str, str] = {}
    assert bigcommerce.SAMPLE.add_pairs is not None
    bigcommerce.SAMPLE.add_pairs(body, headers, "100-200")
    again = payload(bigcommerce.SAMPLE.fixture)
    bigcommerce.SAMPLE.add_pairs(again, headers, "100-200")
    assert body["hash"] != again["hash"] and len(body["hash"]) == 40
    assert parse(body).events[0].order_id == "250"
