"""Retention: prune removes finished data older than the horizon, keeps pending and dead
events, and leaves idempotency inside the horizon intact; on a schedule in every worker."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.config_file import config_document, write_config
from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import stripe_event
from webhooks.cli import main
from webhooks.core.errors import ConfigError
from webhooks.core.settings import RetentionSettings
from webhooks.storage.database import make_engine
from webhooks.storage.retention import BATCH_SECONDS, PruneCounts, Pruner, _next_size, prune
from webhooks.storage.schema import attempts, deliveries, events, sends
from webhooks.wiring.replay import resend_events

DAY = 86400.0
OLD_IGNORED = 40  # enough old bodies to free whole pages


def intent(event_id: str, live: bool = True) -> dict[str, Any]:
    event = stripe_event(
        "payment_intent_succeeded",
        event_id,
        id=f"pi_{event_id}",
        metadata={"convert_experiments": "1-2"},
    )
    event["livemode"] = live
    return event


def unpaid(event_id: str) -> dict[str, Any]:
    return stripe_event(
        "checkout_session_completed", event_id, id=f"cs_{event_id}", payment_status="unpaid"
    )


def status(service: Service, event: dict[str, Any]) -> str:
    response = service.post_stripe(event)
    assert response.status_code == 200, response.json
    return str(response.json["status"])


def counts(service: Service) -> dict[str, int]:
    with service.runtime.engine.connect() as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (deliveries, events, sends, attempts)
        }


def states(service: Service) -> dict[str, str]:
    with service.runtime.engine.connect() as conn:
        return {
            r.order_id: r.state for r in conn.execute(select(events.c.order_id, events.c.state))
        }


def store_history(service: Service, recorder: ConvertRecorder) -> None:
    """Forty days of history: finished, dead and pending events, ignored and rejected
    deliveries; then, inside the horizon, one replayed dead event and one new purchase."""
    start = service.clock.now()
    assert status(service, intent("evt_sent")) == "accepted"
    service.drain()
    assert status(service, intent("evt_test", live=False)) == "accepted"  # skipped: test mode
    recorder.answer_next(404, 404)
    assert status(service, intent("evt_dead")) == "accepted"
    assert status(service, intent("evt_replayed")) == "accepted"
    service.drain()
    for i in range(OLD_IGNORED):
        assert status(service, unpaid(f"evt_unpaid_{i}")) == "ignored"
    raw = b'{"id": "evt_rejected", "type": "payment_intent.succeeded"}'
    assert service.post_stripe({}, raw=raw).status_code == 400
    service.clock.advance(39 * DAY)
    resend_events(service.runtime.engine, _ids(service, "pi_evt_replayed"), service.clock.now())
    service.drain()
    service.clock.advance(1 * DAY)
    assert status(service, intent("evt_recent")) == "accepted"
    service.drain()
    # Received on the first day and failed once; no dispatcher has run since (the clock goes
    # back to store it, then forward again without a round).
    now = service.clock.now()
    service.clock.current = start + 60
    recorder.answer_next(503)
    assert status(service, intent("evt_pending")) == "accepted"
    service.drain()
    service.clock.current = now


def _ids(service: Service, order_id: str) -> list[int]:
    with service.runtime.engine.connect() as conn:
        query = select(events.c.id).where(events.c.order_id == order_id)
        return list(conn.execute(query).scalars())


def test_prune_removes_old_finished_data_and_keeps_what_needs_an_operator(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    service = any_db_service
    store_history(service, recorder)
    before = counts(service)
    done = prune(service.runtime.engine, service.clock.now(), 30, batch_size=7)
    # Gone: the sent and the test-mode event with their deliveries, the ignored and the
    # rejected deliveries. Kept: dead, pending, the dead one replayed inside the horizon
    # (now sent, changed 1 day ago) and the recent purchase.
    assert (done.deliveries, done.events, done.sends, done.attempts) == (
        2 + OLD_IGNORED + 1,
        2,
        1,
        1,
    )
    assert done.kept == 3
    after = counts(service)
    assert after["deliveries"] == before["deliveries"] - done.deliveries == 4
    assert states(service) == {
        "pi_evt_dead": "dead",
        "pi_evt_replayed": "sent",
        "pi_evt_pending": "pending",
        "pi_evt_recent": "sent",
    }
    assert after["attempts"] == before["attempts"] - 1
    # Inside the horizon both idempotency levels hold: a redelivery is a duplicate, and so
    # is a purchase whose dead or pending event was kept.
    assert status(service, intent("evt_recent")) == "duplicate"
    assert status(service, intent("evt_dead")) == "duplicate"
    assert counts(service) == after
    # A second run finds nothing more.
    assert prune(service.runtime.engine, service.clock.now(), 30).deliveries == 0


def test_prune_frees_space_sqlite_can_reuse(
    service: Service, recorder: ConvertRecorder, sqlite_url: str
) -> None:
    store_history(service, recorder)
    path = sqlite_url.removeprefix("sqlite:///")

    def pages(pragma: str) -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute(f"PRAGMA {pragma}").fetchone()[0])
        finally:
            conn.close()

    free_before, size_before = pages("freelist_count"), pages("page_count")
    prune(service.runtime.engine, service.clock.now(), 30)
    assert pages("freelist_count") > free_before  # new webhooks reuse these pages
    conn = sqlite3.connect(path)
    conn.execute("VACUUM")  # what an operator runs to shrink the file
    conn.close()
    assert pages("page_count") < size_before


def test_dry_run_counts_and_deletes_nothing(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    service = any_db_service
    store_history(service, recorder)
    before = counts(service)
    engine, now = service.runtime.engine, service.clock.now()
    planned = prune(engine, now, 30, dry_run=True)
    assert counts(service) == before
    assert prune(engine, now, 30) == planned


def test_two_workers_pruning_at_once_delete_each_row_once(
    any_db_service: Service, recorder: ConvertRecorder
) -> None:
    service = any_db_service
    store_history(service, recorder)
    engines = [make_engine(service.settings.database_url, 5000) for _ in range(2)]
    results: list[PruneCounts] = []
    errors: list[BaseException] = []

    def run(engine: Any) -> None:
        try:
            results.append(prune(engine, service.clock.now(), 30, batch_size=3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert sum(r.deliveries for r in results) == 2 + OLD_IGNORED + 1
    assert sum(r.events for r in results) == 2
    assert counts(service)["deliveries"] == 4


def test_batches_shrink_while_they_hold_the_lock_too_long() -> None:
    """Without help from an index a batch can take seconds on a large table, all of it
    holding the lock the request path waits for."""
    assert _next_size(200, BATCH_SECONDS * 3, 200) == 100
    assert _next_size(1, BATCH_SECONDS * 3, 200) == 1
    assert _next_size(100, BATCH_SECONDS / 10, 200) == 200
    assert _next_size(200, BATCH_SECONDS / 10, 200) == 200
    assert _next_size(50, BATCH_SECONDS / 2, 200) == 50


def test_a_stopping_worker_ends_its_prune_between_batches(
    service: Service, recorder: ConvertRecorder
) -> None:
    store_history(service, recorder)
    before = counts(service)
    stop = threading.Event()
    stop.set()
    assert prune(service.runtime.engine, service.clock.now(), 30, stop=stop) == PruneCounts()
    assert counts(service) == before


def test_prune_refuses_a_horizon_shorter_than_platform_retries(service: Service) -> None:
    with pytest.raises(ConfigError, match="at least 7"):
        prune(service.runtime.engine, service.clock.now(), 3)


def test_prune_command(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    service.clock.current = time.time() - 40 * DAY  # the CLI runs on the system clock
    assert status(service, intent("evt_sent")) == "accepted"
    service.drain()
    recorder.answer_next(404)
    assert status(service, intent("evt_dead")) == "accepted"
    service.drain()
    service.clock.current = time.time()
    doc = config_document(service.settings.database_url, recorder.base_url)
    config = str(write_config(tmp_path / "cli.toml", doc))

    assert main(["--config", config, "prune", "--older-than-days", "3"]) == 2
    assert "at least 7" in capsys.readouterr().err
    assert main(["--config", config, "prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 1 deliveries, 1 events, 1 Convert requests and 1 attempts" in out
    assert "kept 1 older deliveries" in out and "replay --dead" in out
    assert counts(service)["deliveries"] == 2
    assert main(["--config", config, "prune"]) == 0
    assert "deleted 1 deliveries" in capsys.readouterr().out
    assert states(service) == {"pi_evt_dead": "dead"}


def test_runtime_starts_and_stops_the_scheduled_pruner(make_service: Any, sqlite_url: str) -> None:
    scheduled = make_service(sqlite_url, retention={"prune_interval_seconds": 60})
    scheduled.runtime.start_background()
    assert scheduled.runtime.pruner is not None and scheduled.runtime.pruner.running
    scheduled.runtime.stop_background(timeout=5)
    assert not scheduled.runtime.pruner.running
    off = make_service(sqlite_url, retention={"prune_interval_seconds": 0})
    off.runtime.start_background()
    assert off.runtime.pruner is None
    off.runtime.stop_background(timeout=5)


def test_scheduled_pruner_prunes(
    service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    store_history(service, recorder)
    pruner = Pruner(service.runtime.engine, RetentionSettings(30, 0.05), clock)
    pruner.start()
    try:
        deadline = time.monotonic() + 10
        while counts(service)["deliveries"] > 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pruner.stop(timeout=5)
    assert counts(service)["deliveries"] == 4
    assert not pruner.running


def test_a_late_second_topic_keeps_the_purchase_it_duplicates(service: Service) -> None:
    """A payment intent's purchase counted on day 0; its Checkout Session (the same purchase)
    arrives on day 25; prune on day 40 (horizon 30) must keep the event, or a third
    delivery naming the purchase would count it again."""
    assert status(service, intent("evt_first")) == "accepted"
    service.drain()
    service.clock.advance(25 * DAY)
    session = stripe_event(
        "checkout_session_completed",
        "evt_session",
        payment_intent="pi_evt_first",
        metadata={"convert_experiments": "1-2"},
    )
    session["livemode"] = True
    assert status(service, session) == "duplicate"
    service.clock.advance(15 * DAY)
    prune(service.runtime.engine, service.clock.now(), 30)
    assert states(service) == {"pi_evt_first": "sent"}
    again = intent("evt_first_again")
    again["data"]["object"]["id"] = "pi_evt_first"  # the same payment intent, redelivered
    assert status(service, again) == "duplicate"
