"""Group commit (storage/group_commit.py) on SQLite and PostgreSQL: many requests' deliveries
in one durable transaction, each still answered only after its own commit, with the same
outcomes a lone ingest gives.

Batches are made the way production makes them: writes are held by another connection (as
another process's transaction would hold them), the requests queue behind the writer, and
the next transaction takes them all.
"""

from __future__ import annotations

import http.client
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, func, select

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService, service_config
from tests.payloads import body, experiments, shopify_order
from tests.signing import shopify_hmac
from tests.test_storage_refusals import stripe_delivery, unchecked
from webhooks.core.errors import StorageError, UnstorableError
from webhooks.storage.group_commit import GroupCommitter
from webhooks.storage.ingest import Delivery, IngestOutcome
from webhooks.storage.schema import deliveries, events


@contextmanager
def writes_held(service: Service) -> Iterator[Callable[[], None]]:
    """Hold the database's write lock from another connection until the returned function is
    called (or the block ends)."""
    engine = service.runtime.engine
    url = engine.url
    if engine.dialect.name == "sqlite":
        other: Any = sqlite3.connect(url.database or "", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    else:
        other = psycopg.connect(url.set(drivername="postgresql").render_as_string(False))
        other.execute("LOCK TABLE deliveries IN SHARE ROW EXCLUSIVE MODE")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            other.rollback() if engine.dialect.name != "sqlite" else other.execute("ROLLBACK")
            other.close()

    try:
        yield release
    finally:
        release()


def run_all(
    committer: GroupCommitter, work: list[Delivery], start_gap: float = 0.0
) -> list[IngestOutcome | BaseException]:
    results: list[IngestOutcome | BaseException | None] = [None] * len(work)

    def one(i: int) -> None:
        try:
            results[i] = committer.ingest(work[i], 1_800_000_000.0)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
        time.sleep(start_gap)
    for thread in threads:
        thread.join(30)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def count(service: Service, table: Any) -> int:
    with service.runtime.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert check()


def queued(committer: GroupCommitter, n: int) -> Callable[[], bool]:
    return lambda: committer._queue.qsize() >= n


def behind_held_writes(
    service: Service, committer: GroupCommitter, work: list[Delivery]
) -> list[IngestOutcome | BaseException]:
    """The first delivery goes alone into a transaction that waits for the held write lock;
    the others queue behind it meanwhile; then writes are freed. So the writer makes exactly
    two batches: the first delivery, then all the others."""
    results: list[IngestOutcome | BaseException] = []
    with writes_held(service) as release:
        lead = threading.Thread(target=lambda: results.extend(run_all(committer, work[:1])))
        lead.start()
        wait_until(lambda: committer.stats.committing == 1)  # taken, waiting for the lock
        rest = threading.Thread(target=lambda: results.extend(run_all(committer, work[1:])))
        rest.start()
        wait_until(queued(committer, len(work) - 1))
        release()
        lead.join(30)
        rest.join(30)
    return results


def purchases(service: Service, count: int) -> list[Delivery]:
    """`count` deliveries of as many different purchases (real Stripe bodies)."""
    made = []
    for n in range(count):
        delivery = stripe_delivery(service, f"evt_{n}")
        event = unchecked(delivery.result.events[0], order_id=f"pi_{n}")
        made.append(replace(delivery, result=replace(delivery.result, events=(event,))))
    return made


def test_waiting_requests_share_one_transaction(any_db_service: Service) -> None:
    service = any_db_service
    committer = GroupCommitter(service.runtime.engine, 5000)
    work = purchases(service, 20)
    results: list[Any] = behind_held_writes(service, committer, work)
    assert sorted(r.status for r in results) == ["accepted"] * 20
    assert (committer.stats.batches, committer.stats.largest) == (2, 19)
    assert count(service, deliveries) == 20 and count(service, events) == 20


def test_duplicates_within_one_batch_count_once(any_db_service: Service) -> None:
    """The same delivery twice, and one purchase by two deliveries, in one transaction."""
    service = any_db_service
    committer = GroupCommitter(service.runtime.engine, 5000)
    first = stripe_delivery(service, "evt_same")
    other_delivery = stripe_delivery(service, "evt_other")  # the same payment intent
    work = [stripe_delivery(service, "evt_lead"), first, first, other_delivery]
    results: list[Any] = behind_held_writes(service, committer, work)
    assert (committer.stats.batches, committer.stats.largest) == (2, 3)
    statuses = sorted(r.status for r in results)
    assert statuses == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert count(service, deliveries) == 3  # evt_lead, evt_same, evt_other
    assert count(service, events) == 1  # one payment intent: one purchase


def test_a_refused_row_fails_alone_and_its_neighbours_are_committed(
    any_db_service: Service,
) -> None:
    service = any_db_service
    committer = GroupCommitter(service.runtime.engine, 5000)
    good = purchases(service, 6)
    bad = stripe_delivery(service, "evt_bad", item_count=2**63)
    work = [good[0], good[1], good[2], bad, good[3], good[4], good[5]]
    results: list[Any] = behind_held_writes(service, committer, work)
    assert committer.stats.largest == 6  # the bad one was in a batch with five others
    refused = [r for r in results if isinstance(r, UnstorableError)]
    assert len(refused) == 1
    assert [r.status for r in results if not isinstance(r, BaseException)] == ["accepted"] * 6
    assert count(service, deliveries) == 6 and count(service, events) == 6


def test_a_batch_that_cannot_commit_fails_exactly_its_own_requests(
    make_service: Any, db_url: str
) -> None:
    """Writes held past the budget: the batch waiting on them gets StorageError (503) and
    none of its rows exist; the batch after it, once writes are free, is committed. For each
    request: an outcome if and only if its row is there."""
    service = make_service(db_url, database={"url": db_url, "busy_timeout_ms": 400})
    committer = GroupCommitter(service.runtime.engine, 400)
    work = purchases(service, 8)
    with writes_held(service) as release:
        results: list[Any] = []
        # The first request alone in the held batch; the others queue behind it meanwhile.
        runner = threading.Thread(target=lambda: results.extend(run_all(committer, work, 0.03)))
        runner.start()
        wait_until(lambda: committer.stats.batches >= 1, 10)  # the first batch gave up
        release()
        runner.join(30)
    failed = [i for i, r in enumerate(results) if isinstance(r, StorageError)]
    stored = [i for i, r in enumerate(results) if isinstance(r, IngestOutcome)]
    assert failed and stored and sorted(failed + stored) == list(range(8))
    with service.runtime.engine.connect() as conn:
        keys = set(conn.execute(select(deliveries.c.delivery_key)).scalars())
    assert keys == {work[i].result.delivery_key for i in stored}
    assert {r.status for i, r in enumerate(results) if i in stored} == {"accepted"}


def test_a_lone_delivery_is_committed_without_waiting_for_company(
    any_db_service: Service,
) -> None:
    committer = GroupCommitter(any_db_service.runtime.engine, 5000)
    began = time.monotonic()
    outcome = committer.ingest(stripe_delivery(any_db_service, "evt_alone"), 0.0)
    assert outcome.status == "accepted"
    assert time.monotonic() - began < 1.0
    assert (committer.stats.batches, committer.stats.largest) == (1, 1)


def test_a_refusal_raised_directly_matches_a_lone_ingest(any_db_service: Service) -> None:
    committer = GroupCommitter(any_db_service.runtime.engine, 5000)
    with pytest.raises(UnstorableError, match="cannot be stored"):
        committer.ingest(stripe_delivery(any_db_service, "evt_x", item_count=2**63), 0.0)
    assert count(any_db_service, deliveries) == 0


def test_sigkill_under_concurrent_load_loses_no_acknowledged_delivery(
    tmp_path: Path, recorder: ConvertRecorder
) -> None:
    """Real gunicorn (threaded workers, group commit), 24 clients posting at once, SIGKILL in
    the middle: every delivery answered 2xx is in the database; the ones not answered are
    resent, as a platform does, and each purchase is then stored exactly once."""
    db_url = f"sqlite:///{tmp_path / 'kill.db'}"
    config = service_config(tmp_path / "kill.toml", db_url, recorder.base_url, dispatcher=False)
    env = {"SHOP_SECRET": KILL_SECRET}
    first = GunicornService(config, workers=2, env=env).start()
    total = 600
    answers: dict[int, int | None] = {}
    stop_posting = threading.Event()

    def client(numbers: range) -> None:
        for n in numbers:
            if stop_posting.is_set():
                return
            try:
                answers[n] = first.post("/webhooks/shop", *signed_order(n))[0]
            except (OSError, http.client.HTTPException):
                answers[n] = None  # the connection died with the workers: not acknowledged

    clients = [
        threading.Thread(target=client, args=(range(i + 1, total + 1, 24),)) for i in range(24)
    ]
    try:
        for thread in clients:
            thread.start()
        wait_until(lambda: sum(1 for s in answers.values() if s == 200) >= 100, 30)
        first.kill()
        stop_posting.set()
        for thread in clients:
            thread.join(30)
    finally:
        first.stop()
    acknowledged = {n for n, status in answers.items() if status == 200}
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = {int(o) for o in conn.execute(select(events.c.order_id)).scalars()}
        assert acknowledged <= stored  # nothing acknowledged was lost
        second = GunicornService(config, workers=2, env=env).start()
        try:
            for n in range(1, total + 1):
                if n not in acknowledged:  # the platform retries what was not answered 2xx
                    status, answer = second.post("/webhooks/shop", *signed_order(n))
                    assert status == 200, answer
        finally:
            second.stop()
        with engine.connect() as conn:
            orders = list(conn.execute(select(events.c.order_id)).scalars())
        assert sorted(int(o) for o in orders) == list(range(1, total + 1))  # each exactly once
        print(f"acknowledged before the kill: {len(acknowledged)}; stored: {len(stored)}")
    finally:
        engine.dispose()


KILL_SECRET = "shpss_group_commit_kill"


def signed_order(order_id: int) -> tuple[bytes, dict[str, str]]:
    order = shopify_order(id=order_id, test=False, note_attributes=experiments("10-20"))
    data = body(order)
    headers = {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Event-Id": f"ev-{order_id}",
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, KILL_SECRET),
        "Content-Type": "application/json",
    }
    return data, headers
