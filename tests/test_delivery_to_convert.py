"""End to end through the dispatcher to a real local server standing in for Convert: exact
URLs, idempotency, retries, dead events. Storage runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, shopify_order, stripe_event
from webhooks.storage.schema import events

PURCHASE_GOALS = "g=100%2C101&ga=2&t=100"  # config: conversion 100,101; transaction 100


def track(pair: str, txn: str, value: str, count: int, goals: str = PURCHASE_GOALS) -> str:
    return f"/track/?c=1111&p=2222&e={pair}&{goals}%7C{txn}%7C{value}%7C{count}"


def live(name: str, pairs: str | None = "100-200", **changes: Any) -> dict[str, Any]:
    event = stripe_event(name, **changes)
    event["livemode"] = True
    if pairs is not None:
        event["data"]["object"]["metadata"] = {"convert_experiments": pairs}
    return event


def state_of(service: Service, order_id: str) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == order_id)).one()


def test_checkout_session_completed_sends_exact_urls_one_per_pair(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    event = live("checkout_session_completed", pairs="100-200,101-201")
    session = event["data"]["object"]
    assert any_db_service.post_stripe(event).json["status"] == "accepted"
    any_db_service.drain()
    pi = session["payment_intent"]
    # One request per pair; they go out concurrently, so in no fixed order.
    assert sorted(recorder.paths) == [
        track("100-200", pi, "30.00", 1),
        track("101-201", pi, "30.00", 1),
    ]
    assert all(r.headers["User-Agent"].startswith("ConvertAgent/") for r in recorder.requests)
    assert state_of(any_db_service, pi).state == "sent"


def test_shopify_orders_paid_sends_exact_url(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    order = shopify_order(note_attributes=experiments("100-200"), test=False)
    any_db_service.post_shopify("orders/paid", order, event_id="1")
    any_db_service.drain()
    items = sum(item["quantity"] for item in order["line_items"])
    assert recorder.paths == [track("100-200", "820982911946154508", "404.95", items)]


def test_renewal_uses_renewal_goals(service: Service, recorder: ConvertRecorder) -> None:
    event = live("invoice_paid_basil", pairs=None)
    invoice = event["data"]["object"]
    invoice["parent"]["subscription_details"]["metadata"] = {"convert_experiments": "7-8"}
    service.post_stripe(event)
    service.drain()
    assert recorder.paths == [f"/track/?c=1111&p=2222&e=7-8&t=300%7C{invoice['id']}%7C15.00%7C1"]


def test_first_subscription_invoice_after_its_checkout_session_counts_once(
    service: Service, recorder: ConvertRecorder
) -> None:
    invoice_event = live("invoice_paid_pre_basil", pairs=None)
    sub = invoice_event["data"]["object"]["subscription"]
    session = live(
        "checkout_session_completed", mode="subscription", subscription=sub, payment_intent=None
    )
    service.post_stripe(session)
    assert service.post_stripe(invoice_event).json["status"] == "duplicate"
    service.drain()
    assert recorder.paths == [track("100-200", sub, "30.00", 1)]


def test_invoice_paid_first_purchase_pre_basil(service: Service, recorder: ConvertRecorder) -> None:
    event = live("invoice_paid_pre_basil", pairs=None)
    invoice = event["data"]["object"]
    invoice["subscription_details"]["metadata"] = {"convert_experiments": "5-6"}
    service.post_stripe(event)
    service.drain()
    assert recorder.paths == [track("5-6", invoice["subscription"], "700.00", 7)]


def test_session_and_payment_intent_of_one_purchase_count_once(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    session = live("checkout_session_completed")
    pi_id = session["data"]["object"]["payment_intent"]
    intent = live("payment_intent_succeeded", id=pi_id, amount_received=3000)
    any_db_service.post_stripe(session)
    assert any_db_service.post_stripe(intent).json["status"] == "duplicate"
    any_db_service.drain()
    assert recorder.paths == [track("100-200", pi_id, "30.00", 1)]


def test_payment_intent_first_without_pairs_then_session_with_pairs_sends_once(
    service: Service, recorder: ConvertRecorder
) -> None:
    session = live("checkout_session_completed")
    pi_id = session["data"]["object"]["payment_intent"]
    intent = live("payment_intent_succeeded", pairs=None, id=pi_id, amount_received=3000)
    service.post_stripe(intent)
    service.drain()
    assert state_of(service, pi_id).reason_code == "no_experiment_data"
    service.post_stripe(session)
    service.drain()
    assert recorder.paths == [track("100-200", pi_id, "30.00", 1)]
    assert state_of(service, pi_id).state == "sent"


def test_async_payment_completes_a_delayed_session(
    service: Service, recorder: ConvertRecorder
) -> None:
    unpaid = live("checkout_session_completed", payment_status="unpaid")
    assert service.post_stripe(unpaid).json["status"] == "ignored"
    paid = live("checkout_session_async_payment_succeeded")
    paid["id"] = "evt_async"
    assert service.post_stripe(paid).json["status"] == "accepted"
    service.drain()
    assert len(recorder.paths) == 1


def test_orders_create_then_orders_paid_gives_one_transaction(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    order = shopify_order(
        "orders_create", note_attributes=experiments("1-2"), test=False, financial_status="paid"
    )
    assert any_db_service.post_shopify("orders/create", order, "a").json["status"] == "accepted"
    paid = any_db_service.post_shopify("orders/paid", order, "b")
    assert paid.json["status"] == "duplicate"
    any_db_service.drain()
    assert len(recorder.paths) == 1


def test_refunds_are_stored_not_sent(service: Service, recorder: ConvertRecorder) -> None:
    service.post_stripe(live("charge_refunded"))
    refund = live("refund_created")
    refund["id"] = "evt_refund"
    service.post_stripe(refund)
    service.drain()
    assert recorder.paths == []
    with service.runtime.engine.connect() as conn:
        rows = conn.execute(select(events)).all()
    assert [(r.kind, r.state, r.amount) for r in rows] == [("refund", "skipped", "1.00")] * 2


def test_test_mode_is_stored_not_sent_unless_allowed(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    svc = make_service(sqlite_url)
    test_event = stripe_event("payment_intent_succeeded", metadata={"convert_experiments": "1-2"})
    svc.post_stripe(test_event)
    svc.drain()
    assert recorder.paths == []
    assert state_of(svc, test_event["data"]["object"]["id"]).reason_code == "test_mode"
    sources = {
        "stripe": {
            "platform": "stripe",
            "secrets": ["whsec_test_secret_one"],
            "allow_test_events": True,
        }
    }
    allowing = make_service(sqlite_url.replace("webhooks.db", "allow.db"), sources=sources)
    allowing.post_stripe(test_event)
    allowing.drain()
    assert len(recorder.paths) == 1


def test_no_experiment_data_is_skipped_with_reason(
    service: Service, recorder: ConvertRecorder
) -> None:
    service.post_stripe(live("payment_intent_succeeded", pairs=None))
    service.post_stripe(live("checkout_session_completed", pairs="abc-1, 2-x"))
    service.drain()
    assert recorder.paths == []
    with service.runtime.engine.connect() as conn:
        reasons = sorted(r.reason_code for r in conn.execute(select(events)))
    assert reasons == ["malformed_experiment_data", "no_experiment_data"]


def test_replaying_a_delivery_sends_nothing_new(
    service: Service, recorder: ConvertRecorder
) -> None:
    from webhooks.wiring.replay import replay_delivery

    response = service.post_stripe(live("payment_intent_succeeded"))
    service.drain()
    outcome = replay_delivery(
        service.runtime.engine, service.settings, response.json["delivery_id"], service.clock.now()
    )
    service.drain()
    assert outcome.status == "duplicate"
    assert len(recorder.paths) == 1


def test_convert_failing_then_recovering_gives_exactly_one_delivery(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    recorder.answer_next(503, 429)
    any_db_service.post_stripe(live("payment_intent_succeeded"))
    any_db_service.drain()
    order = live("payment_intent_succeeded")["data"]["object"]["id"]
    first = state_of(any_db_service, order)
    assert (first.state, first.reason_code) == ("pending", "retrying")
    assert "HTTP 503" in first.reason
    assert any_db_service.drain() == 0  # not due yet: backoff
    any_db_service.clock.advance(first.next_attempt_at - any_db_service.clock.now())
    any_db_service.drain()
    any_db_service.clock.advance(3600)
    any_db_service.drain()
    assert [r.status for r in recorder.requests] == [503, 429, 200]
    assert state_of(any_db_service, order).state == "sent"
    any_db_service.clock.advance(86400)
    assert any_db_service.drain() == 0
    assert len(recorder.requests) == 3


def test_retry_after_partial_success_resends_only_what_failed(
    service: Service, recorder: ConvertRecorder
) -> None:
    recorder.answer_next(200, 500)
    service.post_stripe(live("payment_intent_succeeded", pairs="1-2,3-4"))
    service.drain()
    service.clock.advance(3600)
    service.drain()
    sent = [(r.path.split("&e=")[1].split("&")[0], r.status) for r in recorder.requests]
    failed = [pair for pair, status in sent[:2] if status == 500]
    assert sorted(pair for pair, _ in sent[:2]) == ["1-2", "3-4"]
    assert sent[2:] == [(failed[0], 200)]


def test_4xx_from_convert_makes_a_dead_event_with_its_reason(
    service: Service, recorder: ConvertRecorder
) -> None:
    recorder.answer_next(400)
    service.post_stripe(live("payment_intent_succeeded"))
    service.drain()
    service.clock.advance(86400)
    service.drain()
    order = live("payment_intent_succeeded")["data"]["object"]["id"]
    dead = state_of(service, order)
    assert (dead.state, dead.reason_code) == ("dead", "convert_rejected")
    assert "HTTP 400" in dead.reason
    assert len(recorder.requests) == 1


def test_retries_stop_at_the_horizon(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    svc = make_service(
        sqlite_url, dispatcher={"retry_horizon_seconds": 600, "retry_base_seconds": 60}
    )
    recorder.default_status = 502
    svc.post_stripe(live("payment_intent_succeeded"))
    for _ in range(20):
        svc.drain()
        svc.clock.advance(120)
    order = live("payment_intent_succeeded")["data"]["object"]["id"]
    dead = state_of(svc, order)
    assert (dead.state, dead.reason_code) == ("dead", "retries_exhausted")
    assert 2 <= len(recorder.requests) <= 10


def test_network_error_is_retried(make_service: Any, sqlite_url: str) -> None:
    svc = make_service(
        sqlite_url,
        convert={
            "account_id": "1111",
            "project_id": "2222",
            "endpoint": "http://127.0.0.1:9/track/",
            "connect_timeout_seconds": 0.5,
        },
    )
    svc.post_stripe(live("payment_intent_succeeded"))
    svc.drain()
    order = live("payment_intent_succeeded")["data"]["object"]["id"]
    pending = state_of(svc, order)
    assert (pending.state, pending.reason_code) == ("pending", "retrying")
    assert "ConnectionError" in pending.reason


def test_dry_run_logs_the_url_and_sends_nothing(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder, caplog: Any
) -> None:
    svc = make_service(
        sqlite_url,
        convert={
            "account_id": "1111",
            "project_id": "2222",
            "endpoint": recorder.base_url,
            "dry_run": True,
        },
    )
    caplog.set_level("INFO", logger="webhooks.convert.http")
    svc.post_stripe(live("payment_intent_succeeded"))
    svc.drain()
    assert recorder.paths == []
    order = live("payment_intent_succeeded")["data"]["object"]["id"]
    assert state_of(svc, order).state == "dry_run"
    expected = recorder.base_url.removesuffix("/track/") + track("100-200", order, "10.99", 1)
    assert f"dry run: would GET {expected}" in caplog.text


def test_outage_pauses_and_probes_with_one_event(
    service: Service, recorder: ConvertRecorder
) -> None:
    """While Convert fails every request, one event probes; when it answers, all resume."""
    for n in range(5):
        order = shopify_order(id=n + 1, test=False, note_attributes=experiments("1-2"))
        service.post_shopify("orders/paid", order, f"e{n}")
    dispatcher = service.runtime.dispatcher
    recorder.default_status = 503
    assert dispatcher.run_once() == 5
    assert (dispatcher.outage_rounds, dispatcher.outage_pause()) == (1, 1.0)
    service.clock.advance(3600)
    assert dispatcher.run_once() == 1  # a probe, not the whole batch
    assert (dispatcher.outage_rounds, dispatcher.outage_pause()) == (2, 2.0)
    recorder.default_status = 200
    assert dispatcher.run_once() == 1
    assert dispatcher.outage_rounds == 0
    service.clock.advance(3600)  # the first probe's own retry is due too by now
    assert dispatcher.run_once() == 4
    assert [r.status for r in recorder.requests].count(200) == 5
    assert len(recorder.requests) == 5 + 1 + 1 + 4
