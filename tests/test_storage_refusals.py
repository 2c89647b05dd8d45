"""A value the database refuses is the sender's problem (400, the body kept as rejected), never
a 500, and never a 503 that the platform would retry forever; an unavailable database is a
503 with Retry-After. Ids are stored whole, never cut to fit a column.

Most bad values are refused at parse (the event model checks them); the storage-level guard
behind it is proven with events built past those checks (`unchecked`), as a future adapter
that forgot one would make them, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from adapters import REGISTRY, stripe
from adapters.base import PlatformSpec
from tests.conftest import Service
from tests.payloads import body, experiments, shopify_order, stripe_event
from webhooks.core.errors import StorageError, UnstorableError
from webhooks.core.events import NormalizedEvent, ParseResult
from webhooks.storage.ingest import Delivery, ingest
from webhooks.storage.schema import deliveries, events
from webhooks.wiring.replay import ReplayError, replay_delivery

LONG_A = "pi_" + "7" * 252 + "A" * 45  # 300 characters; the first 255 shared with LONG_B
LONG_B = "pi_" + "7" * 252 + "B" * 45


def unchecked(obj: Any, **changes: Any) -> Any:
    """A copy of a frozen event object with fields set past its own checks."""
    clone = copy.copy(obj)
    for name, value in changes.items():
        object.__setattr__(clone, name, value)
    return clone


def rows(service: Service, table: Any) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)))


def stripe_delivery(service: Service, event_id: str = "evt_1", **event_changes: Any) -> Delivery:
    """A real, parsed Stripe delivery whose event is then given `event_changes` unchecked."""
    raw = body(stripe_event("payment_intent_succeeded", event_id))
    result = REGISTRY["stripe"].parse({}, raw)
    if event_changes:
        event = unchecked(result.events[0], **event_changes)
        result = unchecked(result, events=(event,))
    settings = service.settings
    return Delivery(
        settings.sources["stripe"], settings.convert.project_id, settings.goals, {}, raw, result
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"item_count": 2**63},  # sqlite3: OverflowError; PostgreSQL: out of range
        {"item_count": -(2**64)},
        {"customer_id": "cus_\udc80"},  # a lone surrogate: neither driver can encode it
        {"order_id": "pi_\ud800x"},
    ],
)
def test_a_value_no_backend_can_hold_is_unstorable_and_nothing_is_kept(
    any_db_service: Service, changes: dict[str, Any]
) -> None:
    with pytest.raises(UnstorableError) as raised:
        ingest(any_db_service.runtime.engine, stripe_delivery(any_db_service, **changes), 0.0)
    assert "cannot be stored" in str(raised.value)
    assert rows(any_db_service, deliveries) == [] and rows(any_db_service, events) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"order_id": LONG_A},  # PostgreSQL: too long for VARCHAR(255)
        {"customer_id": "cus_\x00x"},  # PostgreSQL: NUL in text
        {"refund_of": "pi_" + "1" * 300},
    ],
)
def test_a_value_is_stored_whole_or_refused_never_cut(
    any_db_service: Service, changes: dict[str, Any]
) -> None:
    engine = any_db_service.runtime.engine
    delivery = stripe_delivery(any_db_service, **changes)
    if engine.dialect.name == "postgresql":
        with pytest.raises(UnstorableError):
            ingest(engine, delivery, 0.0)
        assert rows(any_db_service, events) == []
        return
    assert ingest(engine, delivery, 0.0).status == "accepted"  # SQLite holds any length
    (stored,) = rows(any_db_service, events)
    for name, value in changes.items():
        assert getattr(stored, name) == value


def test_nan_time_is_refused_where_the_database_refuses_it(any_db_service: Service) -> None:
    """SQLite binds NaN as NULL, which a NOT NULL column refuses (IntegrityError): a refusal,
    not an outage. PostgreSQL stores NaN."""
    engine = any_db_service.runtime.engine
    delivery = stripe_delivery(any_db_service, occurred_at=float("nan"))
    if engine.dialect.name == "sqlite":
        with pytest.raises(UnstorableError, match="IntegrityError"):
            ingest(engine, delivery, 0.0)
    else:
        assert ingest(engine, delivery, 0.0).status == "accepted"


def test_two_ids_sharing_255_characters_are_two_purchases(any_db_service: Service) -> None:
    """The second order was dropped as a duplicate of the first when ids were cut to 255."""
    engine = any_db_service.runtime.engine
    outcomes = []
    for event_id, order_id in (("evt_a", LONG_A), ("evt_b", LONG_B)):
        delivery = stripe_delivery(any_db_service, event_id, order_id=order_id)
        try:
            outcomes.append(ingest(engine, delivery, 0.0).status)
        except UnstorableError:
            outcomes.append("refused")
    expected = "refused" if engine.dialect.name == "postgresql" else "accepted"
    assert outcomes == [expected, expected]
    assert sorted(e.order_id for e in rows(any_db_service, events)) == (
        [] if expected == "refused" else [LONG_A, LONG_B]
    )


def test_two_delivery_keys_sharing_255_characters_are_two_deliveries(
    any_db_service: Service,
) -> None:
    engine = any_db_service.runtime.engine
    statuses = []
    for key, order in ((LONG_A, "pi_1"), (LONG_B, "pi_2")):
        delivery = stripe_delivery(any_db_service, order_id=order)
        delivery = replace(delivery, result=unchecked(delivery.result, delivery_key=key))
        try:
            statuses.append(ingest(engine, delivery, 0.0).status)
        except UnstorableError:
            statuses.append("refused")
    assert "duplicate" not in statuses
    if engine.dialect.name == "sqlite":
        assert [d.delivery_key for d in rows(any_db_service, deliveries)] == [LONG_A, LONG_B]


def refusing_stripe(**event_changes: Any) -> PlatformSpec:
    """Stripe's spec with a parser that lets an unstorable value through (a missed check)."""
    real = stripe.SPEC

    def parse(headers: Any, raw: bytes) -> ParseResult:
        result = real.parse(headers, raw)
        event: NormalizedEvent = unchecked(result.events[0], **event_changes)
        parsed: ParseResult = unchecked(result, events=(event,))
        return parsed

    return replace(real, parse=parse)


@pytest.mark.parametrize(
    "changes",
    [{"item_count": 2**63}, {"customer_id": "cus_\udc80"}, {"order_id": LONG_A + "\x00"}],
)
def test_route_answers_400_and_keeps_the_body_when_the_database_refuses_a_value(
    any_db_service: Service,
    changes: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(REGISTRY, "stripe", refusing_stripe(**changes))  # type: ignore[arg-type]
    event = stripe_event("payment_intent_succeeded", "evt_refused")
    response = any_db_service.post_stripe(event)
    if response.status_code == 200:  # SQLite holds a NUL and a long id
        assert any_db_service.runtime.engine.dialect.name == "sqlite"
        assert "\x00" in next(iter(changes.values()))
        return
    assert response.status_code == 400
    assert "cannot be stored" in response.json["error"]
    (kept,) = rows(any_db_service, deliveries)
    assert kept.status == "rejected" and kept.body == body(event)
    assert kept.delivery_key == f"rejected:sha256:{hashlib.sha256(body(event)).hexdigest()}"
    assert kept.topic == "payment_intent.succeeded"
    assert rows(any_db_service, events) == []
    assert "Traceback" not in caplog.text
    (line,) = [r for r in caplog.records if "refused a value" in r.getMessage()]
    assert "webhooks/storage/ingest.py" in line.getMessage()  # the place, with no value
    again = any_db_service.post_stripe(event)  # the platform's retry: the same answer
    assert again.status_code == 400 and len(rows(any_db_service, deliveries)) == 1


def test_unstorable_topic_is_kept_under_a_placeholder(
    any_db_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rejected path itself never fails on the value that was refused."""
    real = REGISTRY["stripe"]

    def parse(headers: Any, raw: bytes) -> ParseResult:
        parsed: ParseResult = unchecked(real.parse(headers, raw), topic="t\udc80\n" * 100)
        return parsed

    monkeypatch.setitem(REGISTRY, "stripe", replace(real, parse=parse))  # type: ignore[arg-type]
    response = any_db_service.post_stripe(stripe_event("payment_intent_succeeded"))
    assert response.status_code == 400
    (kept,) = rows(any_db_service, deliveries)
    assert (kept.status, kept.topic) == ("rejected", "(unreadable)")


@pytest.mark.parametrize(
    "quantity",
    [2**63, 2**31],  # past SQLite's INTEGER; past PostgreSQL's 32-bit item_count
)
def test_signed_order_with_an_item_count_no_column_holds_is_400_rejected(
    any_db_service: Service, quantity: int
) -> None:
    order = shopify_order(financial_status="paid", note_attributes=experiments("1-2"))
    order["line_items"][0]["quantity"] = quantity
    response = any_db_service.post_shopify("orders/paid", order, event_id="big")
    assert response.status_code == 400
    (kept,) = rows(any_db_service, deliveries)
    assert (kept.status, kept.body) == ("rejected", body(order))
    assert str(quantity) not in kept.reason


def test_signed_event_with_a_lone_surrogate_is_400_rejected(any_db_service: Service) -> None:
    raw = body(stripe_event("payment_intent_succeeded", customer="cus_X")).replace(
        b'"cus_X"', b'"cus_\\udc80"'
    )
    response = any_db_service.post_stripe({}, raw=raw)
    assert response.status_code == 400
    (kept,) = rows(any_db_service, deliveries)
    assert (kept.status, kept.body) == ("rejected", raw)


def test_signed_orders_whose_ids_share_255_digits_are_never_a_duplicate(
    any_db_service: Service,
) -> None:
    answers = []
    for tail in (1, 2):
        order = shopify_order(id=10**299 + tail, financial_status="paid")
        answers.append(any_db_service.post_shopify("orders/paid", order, event_id=f"e{tail}"))
    assert [a.status_code for a in answers] in ([200, 200], [400, 400])
    assert all(a.json.get("status") != "duplicate" for a in answers)
    kept = rows(any_db_service, deliveries)
    assert len(kept) == 2  # each body kept, accepted or rejected


@pytest.fixture
def impatient(make_service: Any, sqlite_url: str) -> Service:
    """A service that gives up on a held write lock after 200 ms."""
    svc: Service = make_service(sqlite_url, database={"url": sqlite_url, "busy_timeout_ms": 200})
    return svc


def test_database_locked_while_keeping_a_rejected_body_is_503_with_retry_after(
    impatient: Service, sqlite_url: str
) -> None:
    service = impatient
    raw = b'{"id": "evt_x", "type": "payment_intent.succeeded"}'
    service.runtime.ensure_schema()
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = service.post_stripe({}, raw=raw)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503  # not stored: the platform must retry, not drop it
    assert response.headers["Retry-After"].isdigit()
    assert rows(service, deliveries) == []
    assert service.post_stripe({}, raw=raw).status_code == 400
    assert [d.status for d in rows(service, deliveries)] == ["rejected"]


def test_unreachable_database_is_503_with_retry_after(make_service: Any) -> None:
    svc = make_service("postgresql://nobody@127.0.0.1:1/none")
    for response in (
        svc.post_stripe(stripe_event("payment_intent_succeeded")),
        svc.post_stripe({}, raw=b"{}"),  # the rejected path too
        svc.client.get("/readyz"),
    ):
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()


def test_storage_refusal_is_told_apart_from_unavailability(impatient: Service) -> None:
    """A database that cannot be written is a StorageError (retry), not a refusal (drop)."""
    service = impatient
    engine = service.runtime.engine
    service.runtime.ensure_schema()
    blocker = sqlite3.connect(engine.url.database or "", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError):
            ingest(engine, stripe_delivery(service, item_count=2**63), 0.0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_replay_of_a_body_that_still_fails_says_why(any_db_service: Service) -> None:
    raw = b'{"id": "evt_r", "type": "payment_intent.succeeded"}'
    assert any_db_service.post_stripe({}, raw=raw).status_code == 400
    (kept,) = rows(any_db_service, deliveries)
    with pytest.raises(ReplayError, match=f"delivery {kept.id} still cannot be read"):
        replay_delivery(any_db_service.runtime.engine, any_db_service.settings, kept.id, 0.0)
    with pytest.raises(ReplayError, match="no delivery"):
        replay_delivery(any_db_service.runtime.engine, any_db_service.settings, 2**70, 0.0)


def test_replay_whose_parser_crashes_or_storage_refuses_is_a_clear_error(
    any_db_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = stripe_event("payment_intent_succeeded", "evt_later")
    assert any_db_service.post_stripe(event).status_code == 200
    (kept,) = rows(any_db_service, deliveries)
    engine, settings = any_db_service.runtime.engine, any_db_service.settings

    def crash(headers: Any, raw: bytes) -> ParseResult:
        return json.loads(b"{")  # type: ignore[no-any-return]  # a parser bug: ValueError

    real = REGISTRY["stripe"]
    monkeypatch.setitem(REGISTRY, "stripe", replace(real, parse=crash))  # type: ignore[arg-type]
    with pytest.raises(ReplayError, match="unreadable payload"):
        replay_delivery(engine, settings, kept.id, 0.0)
    monkeypatch.setitem(REGISTRY, "stripe", refusing_stripe(item_count=2**63))  # type: ignore[arg-type]
    with pytest.raises(ReplayError, match="cannot be stored"):
        replay_delivery(engine, settings, kept.id, 0.0)
