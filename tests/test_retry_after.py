"""Convert's Retry-After (429 and 503) is honoured, by the event and by the circuit breaker;
the breaker's pause stays short, and when a probe succeeds after an outage the events that
failed during it go out at once instead of waiting out their backoff."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder, order_counts
from tests.payloads import experiments, shopify_order
from webhooks.convert.http import MAX_RETRY_AFTER, parse_retry_after
from webhooks.delivery.breaker import MAX_PAUSE
from webhooks.storage.schema import events

NOW = 1_900_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("86400", MAX_RETRY_AFTER),  # a day: capped
        ("99999999999999999999999", MAX_RETRY_AFTER),  # absurd, but a wait: capped
        ("1" + "0" * 100, MAX_RETRY_AFTER),  # 10^100: past int()'s digit limit too
        ("0000000000000000000007", 7.0),  # leading zeros are not size
        (formatdate(NOW + 600, usegmt=True), 600.0),
        (formatdate(NOW - 600, usegmt=True), 0.0),  # in the past: at once
        ("Sun, 06 Nov 1994 08:49:37 -0000", 0.0),
        (formatdate(NOW + 10 * 86400, usegmt=True), MAX_RETRY_AFTER),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("١٢٠", None),  # Arabic-Indic digits: int() would read them, HTTP does not
        ("Mon, 32 Foo 2020 99:99:99 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_capped_and_garbage_ignored(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, NOW) == seconds


def store(service: Service, *order_ids: int) -> None:
    for n in order_ids:
        order = shopify_order(
            id=n, test=False, financial_status="paid", note_attributes=experiments("1-2")
        )
        assert service.post_shopify("orders/paid", order, f"e{n}").json["status"] == "accepted"


def event_of(service: Service, order_id: int) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == str(order_id))).one()


@pytest.mark.parametrize("status", [429, 503])
def test_an_event_is_not_retried_before_convert_s_retry_after(
    any_db_service: Service, recorder: ConvertRecorder, status: int
) -> None:
    store(any_db_service, 1, 2)
    recorder.answer_next(status, retry_after="120")
    recorder.answer_next(status, retry_after=formatdate(time.time() + 900, usegmt=True))
    any_db_service.drain()
    now = any_db_service.clock.now()
    waits = sorted(event_of(any_db_service, n).next_attempt_at - now for n in (1, 2))
    assert waits[0] >= 120 and waits[1] >= 890  # the backoff alone would be 5-10 s
    any_db_service.clock.advance(119)
    assert any_db_service.drain() == 0


def test_a_garbage_retry_after_leaves_the_normal_backoff(
    service: Service, recorder: ConvertRecorder
) -> None:
    store(service, 1)
    recorder.answer_next(503, retry_after="tomorrow-ish")
    service.drain()
    wait = event_of(service, 1).next_attempt_at - service.clock.now()
    assert 5 <= wait <= 10  # retry_base_seconds 10, half of it random


def test_the_breaker_pauses_for_retry_after_and_otherwise_at_most_a_few_seconds(
    service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    store(service, 1, 2, 3)
    dispatcher = service.runtime.dispatcher
    recorder.default_status = 503
    recorder.answer_next(503, 503, 503, retry_after="30")
    assert dispatcher.run_once() == 3
    assert dispatcher.outage_pause() == 30
    for _ in range(8):  # probes that keep failing, each after its pause
        clock.advance(dispatcher.outage_pause())
        assert dispatcher.run_once() == 1
    assert dispatcher.outage_rounds == 9
    assert dispatcher.outage_pause() == MAX_PAUSE <= 10


def test_after_an_outage_the_deferred_events_go_out_when_the_probe_succeeds(
    service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    store(service, *range(1, 6))
    dispatcher = service.runtime.dispatcher
    recorder.default_status = 503
    assert dispatcher.run_once() == 5  # all fail: backoff of 5-10 s each, the breaker opens
    recorder.default_status = 200
    clock.advance(dispatcher.outage_pause())  # 1 s: no event's backoff has run out
    assert dispatcher.run_once() == 1  # the probe does not wait for a backoff
    assert dispatcher.outage_rounds == 0
    assert dispatcher.run_once() == 4  # the rest are due at once
    assert order_counts(recorder.paths) == {str(n): 2 for n in range(1, 6)}
    assert {event_of(service, n).state for n in range(1, 6)} == {"sent"}
