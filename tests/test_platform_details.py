"""The details step end to end: a signed thin webhook is stored with a provisional amount,
the dispatcher reads the order from the platform's API (a real local server standing in for
BigCommerce or Square) before the attribution chain, stores what it read on the event, and
sends Convert the real amount and item count. The API down, slow, throttling, answering 404
or garbage: the event waits (or is recorded as not a purchase) and is never sent with the
provisional amount. The app, the dispatcher and the storage are the real ones."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from adapters import bigcommerce, square
from adapters.base import Details, Later, StoredEvent, provisional_amount
from tests.bigcommerce_api_standin import API_TOKEN, BigCommerceApiStandin, order
from tests.config_file import config_document
from tests.conftest import START, FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.platform_api_standin import Reply
from tests.square_api_standin import ACCESS_TOKEN, SquareApiStandin
from webhooks.attribution.customers import Backoff, PlatformApi
from webhooks.attribution.customers import parse_retry_after as retry_after
from webhooks.core.errors import FetchFailed, PayloadError
from webhooks.core.events import EventKind, Money, NormalizedEvent
from webhooks.delivery.details import ApiFetch, DetailsStep, Wait
from webhooks.storage.schema import events
from webhooks.web.app import create_app
from webhooks.wiring.config import settings_from_mapping
from webhooks.wiring.replay import resend_events

FIXTURES = Path(__file__).parent / "fixtures"
CLIENT_SECRET = "bc_client_secret_for_tests_0001"
SQUARE_KEY = "square_signature_key_for_tests_0001"
SQUARE_URL = "https://hooks.example.com/webhooks/sq"
ENV = {"BIGCOMMERCE_API_TOKEN": API_TOKEN, "SQUARE_ACCESS_TOKEN": ACCESS_TOKEN}
GOALS = "g=100%2C101&ga=2&t=100"  # config: conversion 100,101; transaction 100
PAYMENT_ID = "bP9mAsEMYPUGjjGNaNO5ZDVyLhSZY"
SQUARE_ORDER = "d7eKah653Z579f3gVtjlxpSlmUcZY"


def track(pair: str, txn: str, value: str, count: int) -> str:
    return f"/track/?c=1111&p=2222&e={pair}&{GOALS}%7C{txn}%7C{value}%7C{count}"


def fixture(platform: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((FIXTURES / platform / name).read_text())
    return found


@pytest.fixture
def bc_api() -> Iterator[BigCommerceApiStandin]:
    server = BigCommerceApiStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sq_api() -> Iterator[SquareApiStandin]:
    server = SquareApiStandin()
    server.start()
    yield server
    server.stop()


Make = Callable[..., Service]


@pytest.fixture
def make_details_service(
    clock: FakeClock,
    recorder: ConvertRecorder,
    bc_api: BigCommerceApiStandin,
    sq_api: SquareApiStandin,
) -> Iterator[Make]:
    made: list[Service] = []

    def make(
        db: str, bc: dict[str, Any] | None = None, sq: dict[str, Any] | None = None, **sections: Any
    ) -> Service:
        doc = config_document(db, recorder.base_url, **sections)
        doc["sources"]["bc"] = {
            "platform": "bigcommerce",
            "secrets": [CLIENT_SECRET],
            "store_hash": "abcde",
            # The token from the environment, as the README tells users to write it.
            "api_token": "${BIGCOMMERCE_API_TOKEN}",
            "api_base": bc_api.base_url,
            **(bc or {}),
        }
        doc["sources"]["sq"] = {
            "platform": "square",
            "secrets": [SQUARE_KEY],
            "url": SQUARE_URL,
            "access_token": "${SQUARE_ACCESS_TOKEN}",
            "api_base": sq_api.base_url,
            **(sq or {}),
        }
        for source in ("bc", "sq"):  # None: the key is left out
            doc["sources"][source] = {
                k: v for k, v in doc["sources"][source].items() if v is not None
            }
        app = create_app(settings_from_mapping(doc, ENV), clock=clock)
        made.append(Service(app, clock))
        return made[-1]

    yield make
    for service in made:
        service.runtime.close()


@pytest.fixture
def svc(make_details_service: Make, sqlite_url: str) -> Service:
    return make_details_service(sqlite_url)


def post_bigcommerce(service: Service, payload: dict[str, Any], source: str = "bc") -> Any:
    raw = json.dumps(payload).encode()
    headers = bigcommerce.SCHEME.sign(raw, CLIENT_SECRET, service.clock.now())
    headers["Content-Type"] = "application/json"
    return service.client.post(f"/webhooks/{source}", data=raw, headers=headers)


def post_square(service: Service, payload: dict[str, Any], environment: str = "Production") -> Any:
    raw = json.dumps(payload).encode()
    headers = square.SCHEME.sign(raw, SQUARE_KEY, service.clock.now(), url=SQUARE_URL)
    headers |= {"Content-Type": "application/json", "square-environment": environment}
    return service.client.post("/webhooks/sq", data=raw, headers=headers)


def status_updated(order_id: int = 250, new: int = 11, hash_: str | None = None) -> dict[str, Any]:
    payload = fixture("bigcommerce", "store_order_statusUpdated.json")
    payload["data"]["id"] = order_id
    payload["data"]["status"]["new_status_id"] = new
    payload["hash"] = hash_ or hashlib.sha1(f"{order_id}-{new}".encode()).hexdigest()
    return payload


def created(order_id: int = 250) -> dict[str, Any]:
    payload = fixture("bigcommerce", "store_order_created.json")
    payload["data"]["id"] = order_id
    return payload


def payment_updated(event_id: str = "evt-1", **changes: Any) -> dict[str, Any]:
    payload = fixture("square", "payment_updated.json")
    payload["event_id"] = event_id
    payload["data"]["object"]["payment"].update(changes)
    return payload


def row_of(service: Service, order_id: str) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == order_id)).one()


def never_provisional(recorder: ConvertRecorder) -> None:
    """No Convert request ever carried the provisional amount."""
    assert not any("%7C0%7C" in path for path in recorder.arrived_paths())


# --- BigCommerce ------------------------------------------------------------------------------


def test_a_thin_webhook_is_stored_provisional_then_sent_with_the_order_read_from_the_api(
    make_details_service: Make,
    db_url: str,
    bc_api: BigCommerceApiStandin,
    recorder: ConvertRecorder,
) -> None:
    service = make_details_service(db_url)
    bc_api.add_order(250, {"convert_experiments": "100-200"})
    answer = post_bigcommerce(service, status_updated())
    assert answer.status_code == 200 and answer.json["status"] == "accepted"
    stored = row_of(service, "250")
    assert (stored.amount, stored.currency, stored.item_count) == ("0", "XXX", 0)
    assert (stored.details, stored.details_ref) == ("pending", "abcde/250")
    service.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]
    sent = row_of(service, "250")
    assert (sent.state, sent.amount, sent.currency, sent.item_count) == (
        "sent",
        "1008.74",
        "USD",
        11,
    )
    assert sent.details == "fetched"
    assert sent.customer_id == "11"
    assert sent.email_digest == hashlib.sha256(b"janedoe@email.com").hexdigest()
    assert json.loads(sent.attributes) == {"convert_experiments": "100-200"}
    order_call, metafields_call = bc_api.requests
    assert (order_call.method, order_call.path) == ("GET", "/stores/abcde/v2/orders/250")
    assert order_call.headers["x-auth-token"] == API_TOKEN
    assert order_call.headers["accept"] == "application/json"
    assert metafields_call.path == "/stores/abcde/v3/orders/250/metafields?limit=250"


def test_the_api_down_keeps_the_event_pending_and_it_is_sent_when_the_api_is_back(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    bc_api.add_order(250, {"convert_experiments": "100-200"})
    bc_api.answer_next(Reply(503, {"status": 503, "title": "Service Unavailable"}))
    post_bigcommerce(svc, status_updated())
    svc.drain()
    waiting = row_of(svc, "250")
    assert (waiting.state, waiting.reason_code) == ("pending", "lookup_later")
    assert "bigcommerce order details: HTTP 503" in waiting.reason
    assert (waiting.amount, waiting.currency, waiting.details) == ("0", "XXX", "pending")
    assert recorder.arrived_paths() == []
    svc.drain()  # not due yet: no request while the source backs off
    assert bc_api.count() == 1
    svc.clock.advance(waiting.next_attempt_at - svc.clock.now() + 1)
    svc.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]
    never_provisional(recorder)


def test_an_api_that_stays_down_ends_dead_at_the_horizon_and_replay_sends_it(
    make_details_service: Make,
    sqlite_url: str,
    bc_api: BigCommerceApiStandin,
    recorder: ConvertRecorder,
) -> None:
    down = make_details_service(
        sqlite_url,
        bc={"api_base": "http://127.0.0.1:9"},
        dispatcher={"retry_horizon_seconds": 3600},
    )
    post_bigcommerce(down, status_updated())
    horizon = down.settings.dispatcher.retry_horizon_seconds
    for _ in range(40):
        down.drain()
        row = row_of(down, "250")
        if row.state != "pending":
            break
        down.clock.advance(max(1.0, row.next_attempt_at - down.clock.now() + 1))
    assert (row.state, row.reason_code) == ("dead", "retries_exhausted")
    assert row.reason.startswith("gave up waiting for the order's details: ")
    assert down.clock.now() >= START + horizon
    assert recorder.arrived_paths() == []
    # The API is configured right again: replay queues the event, the details are read.
    bc_api.add_order(250, {"convert_experiments": "100-200"})
    back = make_details_service(sqlite_url)
    assert resend_events(back.runtime.engine, None, back.clock.now()) == [row.id]
    back.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]


def test_a_429_is_waited_out_for_its_retry_after(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    bc_api.add_order(250, {"convert_experiments": "100-200"})
    bc_api.answer_next(Reply(429, {"status": 429}, {"Retry-After": "600"}))
    post_bigcommerce(svc, status_updated())
    svc.drain()
    waiting = row_of(svc, "250")
    assert waiting.next_attempt_at >= svc.clock.now() + 600
    svc.clock.advance(599)
    svc.drain()
    assert bc_api.count() == 1 and recorder.arrived_paths() == []
    svc.clock.advance(2)
    svc.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]


def test_an_order_the_store_does_not_have_is_not_sent_and_says_why(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    post_bigcommerce(svc, status_updated(order_id=404))
    svc.drain()
    row = row_of(svc, "404")
    assert (row.state, row.reason_code) == ("skipped", "not_a_purchase")
    assert row.reason == "not a purchase: order 404 was not found in the store"
    assert (row.amount, row.currency) == ("0", "XXX")
    assert recorder.arrived_paths() == []


def test_an_order_read_while_unpaid_is_read_again_when_its_status_changes(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    bc_api.add_order(250, {"convert_experiments": "100-200"}, status_id=0, status="Incomplete")
    assert post_bigcommerce(svc, created()).json["status"] == "accepted"
    assert post_bigcommerce(svc, created()).json["status"] == "duplicate"  # the same hash
    svc.drain()
    row = row_of(svc, "250")
    assert (row.state, row.reason_code) == ("skipped", "not_a_purchase")
    assert row.reason == "not a purchase: the order's status is 'Incomplete' (0); it is not paid"
    bc_api.orders[250]["status_id"] = 11
    answer = post_bigcommerce(svc, status_updated())
    assert answer.json["status"] == "duplicate"  # one purchase: the event is asked again
    assert row_of(svc, "250").state == "pending"
    svc.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]
    post_bigcommerce(svc, status_updated(new=2))  # shipped later: still one purchase
    svc.drain()
    assert len(recorder.paths) == 1


def test_a_paid_status_read_as_refunded_still_counts_and_a_cancelled_one_does_not(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    bc_api.add_order(250, {"convert_experiments": "100-200"}, status_id=4)
    bc_api.add_order(251, {"convert_experiments": "100-200"}, status_id=5)
    post_bigcommerce(svc, status_updated(250))
    post_bigcommerce(svc, status_updated(251))
    svc.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]
    assert row_of(svc, "251").reason == (
        "not a purchase: the order's status is 'Cancelled' (5); it is not paid"
    )


def _order_bytes(**changes: Any) -> bytes:
    text = json.dumps(order(250, **{k: v for k, v in changes.items() if k != "raw_total"}))
    if "raw_total" in changes:
        text = text.replace(
            '"total_inc_tax": "1008.74"', f'"total_inc_tax": {changes["raw_total"]}'
        )
    return text.encode()


HOSTILE_ANSWERS = {
    "not JSON": (b"<html>Bad gateway</html>", "body is not JSON"),
    "a JSON list": (b"[1, 2]", "body is not a JSON object"),
    "a total of 1e400": (_order_bytes(raw_total="1e400"), "total_inc_tax"),
    "a 5000-digit total": (_order_bytes(raw_total="9" * 5000), "too many digits"),
    "a negative total": (_order_bytes(total_inc_tax="-5.00"), "total_inc_tax"),
    "NaN": (_order_bytes(total_inc_tax="NaN"), "total_inc_tax"),
    "a status as text": (_order_bytes(status_id="11"), "status_id"),
    "items as text": (_order_bytes(items_total="11"), "items_total"),
    "a boolean customer": (_order_bytes(customer_id=True), "customer_id"),
    "no currency": (_order_bytes(default_currency_code=None), "default_currency_code"),
    "another order": (_order_bytes(id=251), "not the order asked for"),
    "a huge answer": (b'{"id": 250, "pad": "' + b"x" * 1_100_000 + b'"}', "larger than"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ANSWERS))
def test_a_hostile_answer_waits_and_is_never_sent(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder, name: str
) -> None:
    body, said = HOSTILE_ANSWERS[name]
    bc_api.add_order(250, {"convert_experiments": "100-200"})
    bc_api.answer_next(Reply(200, body))
    post_bigcommerce(svc, status_updated())
    svc.drain()
    row = row_of(svc, "250")
    assert (row.state, row.reason_code, row.details) == ("pending", "lookup_later", "pending")
    assert said in row.reason
    assert len(row.reason) <= 500 and "Bad gateway" not in row.reason
    assert recorder.arrived_paths() == []


def test_a_delivery_from_another_store_is_ignored(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    payload = status_updated()
    payload["producer"] = "stores/zzzzz"
    answer = post_bigcommerce(svc, payload)
    assert answer.json == {
        "status": "ignored",
        "delivery_id": answer.json["delivery_id"],
        "reason": "the delivery is from another store than store_hash",
    }
    svc.drain()
    assert bc_api.count() == 0 and recorder.arrived_paths() == []


# --- Square -----------------------------------------------------------------------------------


def test_a_square_payment_naming_an_order_gets_its_items_and_metadata(
    make_details_service: Make, db_url: str, sq_api: SquareApiStandin, recorder: ConvertRecorder
) -> None:
    service = make_details_service(db_url)
    sq_api.add_order(SQUARE_ORDER, ["1", "2"], {"convert_experiments": "100-200"})
    assert post_square(service, payment_updated()).json["status"] == "accepted"
    stored = row_of(service, PAYMENT_ID)
    assert (stored.amount, stored.currency, stored.details) == ("5.55", "USD", "pending")
    service.drain()
    assert recorder.paths == [track("100-200", PAYMENT_ID, "5.55", 3)]
    (seen,) = sq_api.requests
    assert seen.path == f"/v2/orders/{SQUARE_ORDER}"
    assert seen.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert seen.headers["square-version"] == square.API_VERSION
    row = row_of(service, PAYMENT_ID)
    assert (row.item_count, row.details) == (3, "fetched")
    assert json.loads(row.attributes) == {"note": "Test Note", "convert_experiments": "100-200"}


def test_a_completed_payment_updated_again_counts_once(
    svc: Service, sq_api: SquareApiStandin, recorder: ConvertRecorder
) -> None:
    sq_api.add_order(SQUARE_ORDER, ["1"], {"convert_experiments": "100-200"})
    post_square(svc, payment_updated("evt-1"))
    svc.drain()
    again = post_square(svc, payment_updated("evt-2", processing_fee=[]))  # fees settled
    assert again.json["status"] == "duplicate"
    created_event = fixture("square", "payment_created.json")
    created_event["data"]["object"]["payment"]["status"] = "COMPLETED"
    assert post_square(svc, created_event).json["status"] == "duplicate"
    svc.drain()
    assert recorder.paths == [track("100-200", PAYMENT_ID, "5.55", 1)]


def test_without_an_access_token_the_payment_alone_is_sent_with_one_item(
    make_details_service: Make, sqlite_url: str, sq_api: SquareApiStandin, recorder: ConvertRecorder
) -> None:
    service = make_details_service(sqlite_url, sq={"access_token": None, "experiments_key": "note"})
    assert post_square(service, payment_updated(note="100-200")).json["status"] == "accepted"
    assert row_of(service, PAYMENT_ID).details is None
    service.drain()
    assert recorder.paths == [track("100-200", PAYMENT_ID, "5.55", 1)]
    assert sq_api.count() == 0


def test_a_square_api_failure_waits_then_the_order_is_read(
    svc: Service, sq_api: SquareApiStandin, recorder: ConvertRecorder
) -> None:
    sq_api.add_order(SQUARE_ORDER, ["2"], {"convert_experiments": "100-200"})
    sq_api.answer_next(Reply(500, {"errors": [{"category": "API_ERROR"}]}))
    post_square(svc, payment_updated())
    svc.drain()
    row = row_of(svc, PAYMENT_ID)
    assert (row.state, row.reason_code) == ("pending", "lookup_later")
    assert recorder.arrived_paths() == []
    svc.clock.advance(row.next_attempt_at - svc.clock.now() + 1)
    svc.drain()
    assert recorder.paths == [track("100-200", PAYMENT_ID, "5.55", 2)]


def test_an_order_the_token_cannot_find_waits_then_is_sent_once_the_order_is_there(
    svc: Service, sq_api: SquareApiStandin, recorder: ConvertRecorder
) -> None:
    """A completed payment is a purchase: an order the token cannot see (a token of another
    seller or environment) keeps it pending with the cause, never drops it."""
    post_square(svc, payment_updated(note="100-200"))
    svc.drain()
    row = row_of(svc, PAYMENT_ID)
    assert (row.state, row.reason_code) == ("pending", "lookup_later")
    assert "order was not found with the source's access_token" in row.reason
    assert recorder.arrived_paths() == []
    # The token fixed: the order (and the pairs in its metadata) is visible now.
    sq_api.add_order(SQUARE_ORDER, ["2"], {"convert_experiments": "100-200"})
    svc.clock.advance(row.next_attempt_at - svc.clock.now() + 1)
    svc.drain()
    assert row_of(svc, PAYMENT_ID).state == "sent"
    assert len(recorder.arrived_paths()) == 1


def test_the_environment_header_is_checked_against_the_source_not_trusted(
    make_details_service: Make, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    live = make_details_service(sqlite_url)
    refused = post_square(live, payment_updated(), environment="Sandbox")
    assert refused.status_code == 400
    assert refused.json["error"] == (
        "header 'square-environment' says Sandbox; the source's environment is production"
    )
    assert post_square(live, payment_updated("evt-2")).json["status"] == "accepted"


def test_a_sandbox_source_stores_test_events_not_sent(
    make_details_service: Make, tmp_path: Path, recorder: ConvertRecorder
) -> None:
    sandbox = make_details_service(
        f"sqlite:///{tmp_path / 'sandbox.db'}", sq={"environment": "sandbox"}
    )
    answer = post_square(sandbox, payment_updated(), environment="Sandbox")
    assert answer.json["events"][0]["state"] == "skipped"
    assert row_of(sandbox, PAYMENT_ID).reason_code == "test_mode"
    sandbox.drain()
    assert recorder.arrived_paths() == []


# --- the mechanism ----------------------------------------------------------------------------


def test_an_amount_not_known_yet_needs_a_details_reference() -> None:
    fields: dict[str, Any] = {
        "kind": EventKind.PURCHASE,
        "platform": "bigcommerce",
        "order_id": "250",
        "amounts": {"total": provisional_amount()},
        "item_count": 0,
        "test_mode": False,
        "occurred_at": START,
    }
    with pytest.raises(PayloadError, match="needs a details reference"):
        NormalizedEvent(**fields)
    assert NormalizedEvent(**fields, details_ref="abcde/250").details_ref == "abcde/250"
    # A refund is recorded, never sent: "no currency" is allowed there (Shopify's refunds).
    assert NormalizedEvent(**{**fields, "kind": EventKind.REFUND}).details_ref is None
    for bad in ("", "a\x00b", "x" * 256):
        with pytest.raises(PayloadError, match="details reference"):
            NormalizedEvent(**fields, details_ref=bad)


def test_details_are_checked_like_an_event() -> None:
    usd = Money(Decimal("1"), "USD")
    assert Details(amounts={"total": usd}, item_count=2).item_count == 2
    for bad in (
        {"amounts": {"subtotal": usd}},
        {"amounts": {"total": provisional_amount()}},
        {"item_count": -1},
        {"item_count": True},
        {"customer_id": "a\nb"},
        {"email_digest": "not a digest"},
        {"attributes": {"k": "v\x00"}},
    ):
        with pytest.raises(PayloadError):
            Details(**bad)


def test_a_hanging_api_times_out_within_the_bound_and_waits(
    sqlite_url: str, bc_api: BigCommerceApiStandin
) -> None:
    bc_api.add_order(250)
    bc_api.delay = 3.0
    api = PlatformApi(connect_timeout=0.5, read_timeout=0.5, total_seconds=1.0)
    clock = FakeClock()
    doc = config_document(sqlite_url, "http://127.0.0.1:9")
    doc["sources"]["bc"] = {
        "platform": "bigcommerce",
        "secrets": [CLIENT_SECRET],
        "store_hash": "abcde",
        "api_token": API_TOKEN,
        "api_base": bc_api.base_url,
    }
    settings = settings_from_mapping(doc, {})
    step = DetailsStep(settings.sources, api, Backoff(clock, jitter=lambda: 0.0))
    row = _row("bc", "bigcommerce", "250", "abcde/250")
    try:
        first = step.read(row)
        assert isinstance(first, Wait) and "timed out" in first.reason
        assert first.at == clock.now() + 30
        second = step.read(row)  # backing off: no second request
        assert isinstance(second, Wait) and "the API is failing" in second.reason
        assert bc_api.count() == 1
    finally:
        api.close()


def test_redirects_are_not_followed_with_the_credential(
    bc_api: BigCommerceApiStandin, sq_api: SquareApiStandin
) -> None:
    bc_api.answer_next(Reply(302, {}, {"Location": f"{sq_api.base_url}/v2/orders/x"}))
    api = PlatformApi()
    try:
        status, _ = ApiFetch(api)("GET", f"{bc_api.base_url}/x", {"X-Auth-Token": "t"}, None)
    finally:
        api.close()
    assert status == 302
    assert sq_api.count() == 0


def test_the_fetch_turns_throttling_and_server_errors_into_waits(
    bc_api: BigCommerceApiStandin,
) -> None:
    api = PlatformApi()
    fetch = ApiFetch(api)
    bc_api.answer_next(
        Reply(429, {}, {"Retry-After": "120"}),
        Reply(502, {}),
        Reply(404, {}),
        Reply(401, {}),
    )
    try:
        with pytest.raises(FetchFailed) as throttled:
            fetch("GET", f"{bc_api.base_url}/a", {}, None)
        assert (throttled.value.reason, throttled.value.retry_after) == ("HTTP 429", 120.0)
        with pytest.raises(FetchFailed, match="HTTP 502"):
            fetch("GET", f"{bc_api.base_url}/a", {}, None)
        assert fetch("GET", f"{bc_api.base_url}/a", {}, None)[0] == 404  # the platform judges
        assert fetch("GET", f"{bc_api.base_url}/a", {}, None)[0] == 401
    finally:
        api.close()
    assert retry_after("99999") == 3600.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after("\u0663") is None


def test_a_later_delivery_during_a_read_makes_the_event_read_again(
    svc: Service, bc_api: BigCommerceApiStandin, recorder: ConvertRecorder
) -> None:
    """created is read while the order is incomplete; statusUpdated arrives while that read
    is in flight: the revision guard leaves the event due, not skipped."""
    bc_api.add_order(250, {"convert_experiments": "100-200"}, status_id=0)
    post_bigcommerce(svc, created())
    before = row_of(svc, "250").revision
    post_bigcommerce(svc, status_updated())  # while the first is still pending
    assert row_of(svc, "250").revision == before + 1
    bc_api.orders[250]["status_id"] = 11
    svc.drain()
    assert recorder.paths == [track("100-200", "250", "1008.74", 11)]


def test_a_fetch_failure_inside_a_details_function_is_a_wait(sqlite_url: str) -> None:
    def failing(event: StoredEvent, options: Any, fetch: Any) -> Any:
        raise FetchFailed("network error (ConnectionError)")

    def later(event: StoredEvent, options: Any, fetch: Any) -> Any:
        return Later("the order answered HTTP 401", retry_after=30)

    clock = FakeClock()
    doc = config_document(sqlite_url, "http://127.0.0.1:9")
    doc["sources"]["bc"] = {
        "platform": "bigcommerce",
        "secrets": [CLIENT_SECRET],
        "store_hash": "abcde",
        "api_token": API_TOKEN,
    }
    settings = settings_from_mapping(doc, {})
    api = PlatformApi()
    try:
        for function, said in ((failing, "network error"), (later, "HTTP 401")):
            spec = replace(bigcommerce.SPEC, details=function)
            step = DetailsStep(
                settings.sources, api, Backoff(clock), registry={"bigcommerce": spec}
            )
            got = step.read(_row("bc", "bigcommerce", "250", "abcde/250"))
            assert isinstance(got, Wait) and said in got.reason
    finally:
        api.close()


def _row(source: str, platform: str, order_id: str, ref: str) -> Any:
    return SimpleNamespace(
        source=source,
        platform=platform,
        kind="purchase",
        order_id=order_id,
        details_ref=ref,
        customer_id=None,
        email_digest=None,
        attributes="{}",
        test_mode=False,
        amount="0",
        currency="XXX",
        item_count=0,
    )
