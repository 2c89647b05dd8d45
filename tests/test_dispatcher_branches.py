"""Dispatcher branches that no other test reaches, each driven through the service (signed
posts, `drain`, `run_once`) with the clock patched and Convert played by the local recorder:
- the revision guard: experiment data that arrives while a round that found none runs;
- the no-goals skip, at ingest and when the goals change between ingest and dispatch;
- the outage breaker's pause cap, over many failed rounds and under a huge Retry-After;
- a retry count past what a float power of two can hold (was a bug: the event died).
Only public behaviour is read: answers, the events table, what Convert received."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder, order_counts
from tests.payloads import experiments, shopify_order, stripe_event
from webhooks.storage.schema import events

PURCHASE_GOALS = "g=100%2C101&ga=2&t=100"  # tests/config_file.py: conversion 100,101; txn 100
NO_PURCHASE_GOALS: dict[str, Any] = {"purchase": {"conversion": [], "transaction": []}}
UNREACHABLE = "http://127.0.0.1:9/track/"  # nothing listens on the discard port: refused at once
# README "Retries": Convert's Retry-After is honoured for at most 1 h; without one the pause
# doubles from 1 s to 8 s. (Literal values: the tests must not import the delivery layer.)
MAX_RETRY_AFTER = 3600.0
MAX_PAUSE = 8.0


def track(pair: str, txn: str, value: str, count: int) -> str:
    return f"/track/?c=1111&p=2222&e={pair}&{PURCHASE_GOALS}%7C{txn}%7C{value}%7C{count}"


def live(name: str, pairs: str | None, **changes: Any) -> dict[str, Any]:
    event = stripe_event(name, **changes)
    event["livemode"] = True
    event["data"]["object"]["metadata"] = {"convert_experiments": pairs} if pairs else {}
    return event


def event_row(service: Service, order_id: str) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == order_id)).one()


def store_orders(service: Service, *order_ids: int, pairs: str = "1-2") -> None:
    for n in order_ids:
        order = shopify_order(id=n, test=False, note_attributes=experiments(pairs))
        assert service.post_shopify("orders/paid", order, f"e{n}").json["status"] == "accepted"


# --- the revision guard ---------------------------------------------------------------------


def test_pairs_arriving_while_a_round_finds_none_are_sent_once_not_left_skipped(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    """payment_intent.succeeded (no pairs) and a Shopify order are claimed by one round; the
    order's send is held at Convert, and meanwhile checkout.session.completed of the same
    purchase brings the pairs. The round planned "no experiment data" from what it claimed;
    it must not write that over the newer data: the event goes out in the next round."""
    svc = any_db_service
    intent = live("payment_intent_succeeded", pairs=None, amount_received=3000)
    pi = intent["data"]["object"]["id"]
    session = live("checkout_session_completed", pairs="100-200", payment_intent=pi)
    assert svc.post_stripe(intent).json["status"] == "accepted"
    store_orders(svc, 1)
    recorder.hold(0, 1)  # the round's only request (order 1) waits at Convert
    with ThreadPoolExecutor(1) as pool:
        draining = pool.submit(svc.drain)
        try:
            assert recorder.wait_for_arrivals(1) == 1
            # The round is between its claim and its record: the intent is claimed, unsent.
            claimed = event_row(svc, pi)
            assert (claimed.state, claimed.lease_owner is not None) == ("pending", True)
            merged = svc.post_stripe(session).json
        finally:
            recorder.release()
        handled = draining.result(timeout=30)
    assert merged["status"] == "duplicate"  # one purchase: the session only adds its pairs
    assert handled == 3  # two events in the held round, the revised one again in the next
    assert sorted(recorder.paths) == sorted(
        [track("100-200", pi, "30.00", 1), track("1-2", "1", "404.95", 5)]
    )
    done = event_row(svc, pi)
    assert (done.state, done.reason_code) == ("sent", None)
    assert svc.drain() == 0  # nothing left over to send twice
    assert order_counts(recorder.paths) == {pi: 1, "1": 1}


# --- the no-goals skip ----------------------------------------------------------------------


def test_a_kind_without_goals_is_skipped_at_ingest_and_nothing_is_sent(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    svc = make_service(sqlite_url, goals=NO_PURCHASE_GOALS)
    intent = live("payment_intent_succeeded", pairs="100-200")
    pi = intent["data"]["object"]["id"]
    answer = svc.post_stripe(intent).json
    reason = "no Convert goals configured for purchase"
    assert answer["status"] == "accepted"
    assert [(e["order_id"], e["state"], e["reason"]) for e in answer["events"]] == [
        (pi, "skipped", reason)
    ]
    stored = event_row(svc, pi)
    assert (stored.state, stored.reason_code, stored.reason) == ("skipped", "no_goals", reason)
    # Renewals still have their goal (300): the skip is for the kind without goals only.
    renewal = live("invoice_paid_basil", pairs=None)
    invoice = renewal["data"]["object"]
    invoice["parent"]["subscription_details"]["metadata"] = {"convert_experiments": "7-8"}
    assert svc.post_stripe(renewal).json["events"][0]["state"] == "pending"
    assert svc.drain() == 1
    assert recorder.paths == [f"/track/?c=1111&p=2222&e=7-8&t=300%7C{invoice['id']}%7C15.00%7C1"]
    assert event_row(svc, pi).state == "skipped"


def test_a_kind_with_conversion_goals_only_is_not_skipped(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    """The boundary of "no goals": conversion goals alone are goals (and transaction goals
    alone are, see the renewal above)."""
    svc = make_service(sqlite_url, goals={"purchase": {"conversion": ["100"], "transaction": []}})
    intent = live("payment_intent_succeeded", pairs="100-200")
    assert svc.post_stripe(intent).json["events"][0]["state"] == "pending"
    assert svc.drain() == 1
    assert recorder.paths == ["/track/?c=1111&p=2222&e=100-200&g=100&ga=1"]
    assert event_row(svc, intent["data"]["object"]["id"]).state == "sent"


def test_goals_removed_between_ingest_and_dispatch_skip_the_event_with_no_goals(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    """Stored while purchase had goals; the service restarts with a config that has none
    for purchase: the dispatcher skips the event, it neither sends nor fails it."""
    before = make_service(sqlite_url)
    intent = live("payment_intent_succeeded", pairs="100-200")
    pi = intent["data"]["object"]["id"]
    assert before.post_stripe(intent).json["events"][0]["state"] == "pending"
    after = make_service(sqlite_url, goals=NO_PURCHASE_GOALS)
    assert after.drain() == 1
    row = event_row(after, pi)
    assert (row.state, row.reason_code, row.reason) == (
        "skipped",
        "no_goals",
        "no Convert goals configured for purchase",
    )
    assert recorder.arrived_paths() == []
    assert after.drain() == 0


# --- the outage pause cap -------------------------------------------------------------------


def test_the_outage_pause_never_passes_its_cap_however_many_rounds_fail(
    make_service: Any, sqlite_url: str
) -> None:
    """Past 1,024 failed rounds a doubling pause computed as a float would overflow; the
    pause stays at 8 s and the probes go on. Convert is refused at once (nothing listens),
    so a round costs milliseconds. Three events share the probes, so none reaches the retry
    count of the many-attempts test below."""
    svc = make_service(
        sqlite_url,
        convert={"account_id": "1111", "project_id": "2222", "endpoint": UNREACHABLE},
    )
    store_orders(svc, 1, 2, 3)
    dispatcher = svc.runtime.dispatcher
    assert dispatcher.run_once() == 3
    pauses = [dispatcher.outage_pause()]
    for _ in range(1030):
        svc.clock.advance(pauses[-1])
        assert dispatcher.run_once() == 1  # a probe with one event, each after the pause
        pauses.append(dispatcher.outage_pause())
    assert dispatcher.outage_rounds == 1031
    assert pauses[:5] == [1.0, 2.0, 4.0, MAX_PAUSE, MAX_PAUSE]
    assert max(pauses) == MAX_PAUSE
    with svc.runtime.engine.connect() as conn:
        rows = conn.execute(select(events.c.state, events.c.reason_code)).all()
    assert set(rows) == {("pending", "retrying")}


@pytest.mark.parametrize(
    "retry_after",
    [
        "86400",  # a day
        "9" * 40,  # beyond any clock
        "Fri, 31 Dec 9999 23:59:59 GMT",  # the latest HTTP-date
    ],
)
def test_a_huge_retry_after_pauses_the_breaker_for_an_hour_at_most_and_only_once(
    service: Service, recorder: ConvertRecorder, retry_after: str
) -> None:
    store_orders(service, 1, 2)
    dispatcher = service.runtime.dispatcher
    recorder.answer_next(503, 503, retry_after=retry_after)
    assert dispatcher.run_once() == 2
    assert dispatcher.outage_pause() == MAX_RETRY_AFTER
    recorder.default_status = 503  # still down, now without a Retry-After
    service.clock.advance(MAX_RETRY_AFTER)
    assert dispatcher.run_once() == 1
    # The last round's Retry-After counts, not the largest ever seen: 2 s after two rounds.
    assert (dispatcher.outage_rounds, dispatcher.outage_pause()) == (2, 2.0)
    recorder.answer_next(429, retry_after=retry_after)
    service.clock.advance(2.0)
    assert dispatcher.run_once() == 1
    assert (dispatcher.outage_rounds, dispatcher.outage_pause()) == (3, MAX_RETRY_AFTER)
    # The probed event waits out the capped Retry-After too (its own backoff, at most 1 h
    # here, is shorter), not a day or a millennium.
    now = service.clock.now()
    waits = [event_row(service, n).next_attempt_at - now for n in ("1", "2")]
    assert max(waits) == MAX_RETRY_AFTER, waits


# --- a retry count past a float's range -----------------------------------------------------


def test_an_event_with_many_attempts_is_still_retried_not_dead(
    service: Service, recorder: ConvertRecorder
) -> None:
    store_orders(service, 1)
    with service.runtime.engine.begin() as conn:  # storage-level test data: a long outage
        conn.execute(update(events).where(events.c.order_id == "1").values(attempts=1100))
    recorder.answer_next(503)
    assert service.drain() == 1
    row = event_row(service, "1")
    assert (row.state, row.reason_code) == ("pending", "retrying"), row.reason
