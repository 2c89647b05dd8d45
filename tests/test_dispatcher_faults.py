"""The dispatcher under faults: one bad stored event, an error in its loop, a dead thread, a
database that cannot be written for a while, a round that would outlive its lease, a worker
taking over an expired lease, a graceful stop with Convert slow. Real SQLite files (and
PostgreSQL where the fault is not SQLite's), a real local server standing in for Convert, and
a fake clock the tests move; never a patched dispatcher."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.config_file import config_document
from tests.conftest import FakeClock, Service
from tests.convert_recorder import ConvertRecorder, order_counts
from tests.payloads import experiments, shopify_order
from webhooks.delivery.sending import Batch, Slots, Unstarted, _Flight
from webhooks.delivery.worker import SEND_CONCURRENCY, Dispatcher
from webhooks.storage.clock import SystemClock
from webhooks.storage.queue import claim_due
from webhooks.storage.records import event_detail
from webhooks.storage.schema import attempts, events, sends
from webhooks.web.app import create_app
from webhooks.wiring.config import settings_from_mapping


def store(service: Service, *order_ids: int, pairs: str = "1-2") -> None:
    for n in order_ids:
        order = shopify_order(
            id=n, test=False, financial_status="paid", note_attributes=experiments(pairs)
        )
        assert service.post_shopify("orders/paid", order, f"e{n}").json["status"] == "accepted"


def event_of(service: Service, order_id: int) -> Any:
    with service.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == str(order_id))).one()


def all_events(service: Service) -> list[Any]:
    with service.runtime.engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)).all())


def overwrite(service: Service, order_id: int, **values: Any) -> None:
    """Storage-level test data: a stored value no parser would pass on today."""
    with service.runtime.engine.begin() as conn:
        conn.execute(update(events).where(events.c.order_id == str(order_id)).values(**values))


def eventually(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


# -- one bad event -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("amount", "1E+100", "InvalidOperation"),  # Stripe amount_total 10^100
        ("amount", "NaN", "ValueError"),  # would have gone out as "NaN"
        ("attributes", "not json", "JSONDecodeError"),
        ("attributes", "[1, 2]", "AttributeError"),
        ("kind", "bogus", "ValueError"),
    ],
)
def test_one_bad_stored_event_is_dead_with_a_reason_and_the_others_are_sent(
    any_db_service: Service, recorder: ConvertRecorder, column: str, value: str, error: str
) -> None:
    store(any_db_service, 1, 2, 3)
    overwrite(any_db_service, 2, **{column: value})
    assert any_db_service.drain() == 3
    assert order_counts(recorder.paths) == {"1": 1, "3": 1}
    bad = event_of(any_db_service, 2)
    assert (bad.state, bad.reason_code) == ("dead", "internal_error")
    assert bad.reason.startswith("internal error while planning: ") and error in bad.reason
    assert value not in bad.reason  # the type and place, never the stored value
    assert {event_of(any_db_service, n).state for n in (1, 3)} == {"sent"}


def test_a_bad_event_does_not_stop_the_dispatcher_thread(
    service: Service, recorder: ConvertRecorder
) -> None:
    """The reported failure: the thread died on the absurd amount, and nothing was sent
    after it while the health checks said all was well."""
    store(service, 1)
    overwrite(service, 1, amount="1E+100")
    dispatcher = service.runtime.dispatcher
    dispatcher.start()
    assert eventually(lambda: event_of(service, 1).state == "dead")
    store(service, 2)
    recorder.wait_for(1, timeout=10)
    assert order_counts(recorder.paths) == {"2": 1}
    assert dispatcher.running


# -- the loop and the thread ---------------------------------------------------------------
class FailingClock(FakeClock):
    """A fake clock whose next reading of `now()` in the dispatcher's thread raises."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_with: BaseException | None = None

    def now(self) -> float:
        error = self.fail_with
        if error is not None and threading.current_thread().name == "dispatcher":
            self.fail_with = None
            raise error
        return super().now()


@pytest.fixture
def failing(sqlite_url: str, recorder: ConvertRecorder) -> Iterator[Service]:
    clock = FailingClock()
    app = create_app(
        settings_from_mapping(config_document(sqlite_url, recorder.base_url), {}), clock=clock
    )
    service = Service(app, clock)
    yield service
    service.runtime.close()


def test_an_unexpected_error_in_the_loop_is_logged_and_the_loop_goes_on(
    failing: Service, recorder: ConvertRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    clock = failing.clock
    assert isinstance(clock, FailingClock)
    clock.fail_with = RuntimeError("clock broke")
    dispatcher = failing.runtime.dispatcher
    dispatcher.start()
    dispatcher.wake()
    store(failing, 5)
    recorder.wait_for(1, timeout=10)
    assert order_counts(recorder.paths) == {"5": 1}
    assert clock.fail_with is None  # it did fail once
    assert dispatcher.running
    assert "dispatcher: unexpected RuntimeError" in caplog.text
    assert "clock broke" not in caplog.text  # type and place, not the message


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_dispatcher_thread_is_restarted_by_the_next_webhook(
    failing: Service, recorder: ConvertRecorder
) -> None:
    clock = failing.clock
    assert isinstance(clock, FailingClock)
    clock.fail_with = SystemExit()  # not an Exception: it ends the thread
    dispatcher = failing.runtime.dispatcher
    dispatcher.start()
    dispatcher.wake()
    assert eventually(lambda: not dispatcher.running)
    store(failing, 6)  # the request path wakes the dispatcher, which starts a new thread
    recorder.wait_for(1, timeout=10)
    assert order_counts(recorder.paths) == {"6": 1}
    assert dispatcher.running


# -- experiment pairs beyond the cap -------------------------------------------------------
def test_pairs_beyond_the_cap_are_left_out_and_the_event_says_so(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    svc: Service = make_service(sqlite_url, attribution={"max_pairs_per_order": 3})
    store(svc, 1, pairs=",".join(f"{n}-{n + 100}" for n in range(1, 8)))
    svc.drain()
    sent_pairs = sorted(path.split("&e=")[1].split("&")[0] for path in recorder.paths)
    assert sent_pairs == ["1-101", "2-102", "3-103"]
    detail = event_detail(svc.runtime.engine, event_of(svc, 1).id)
    assert detail is not None
    event = detail["event"]
    assert (event["state"], event["reason_code"]) == ("sent", "pairs_capped")
    assert event["reason"] == "kept the first 3 of 7 experiment pairs"


# -- recording while the database is locked ------------------------------------------------
class DatabaseLock:
    """Holds a SQLite file's write lock from another connection (and, optionally, the file
    lock webhooks.storage.database takes first) for a while, then lets go."""

    def __init__(self, path: Path, file_lock: bool) -> None:
        self.path = path
        self.file_lock = file_lock
        self.released = threading.Event()
        self.taken = False

    def hold_for(self, seconds: float) -> None:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if self.file_lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        self.taken = True

        def let_go() -> None:
            conn.execute("ROLLBACK")
            conn.close()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self.released.set()

        threading.Timer(seconds, let_go).start()


@pytest.mark.parametrize("file_lock", [False, True], ids=["sqlite-lock", "sqlite-and-file-lock"])
def test_results_are_kept_while_the_database_is_locked_and_nothing_is_resent(
    make_service: Any, tmp_path: Path, recorder: ConvertRecorder, file_lock: bool
) -> None:
    db = tmp_path / "locked.db"
    svc: Service = make_service(f"sqlite:///{db}", database={"busy_timeout_ms": 200})
    store(svc, 1, 2, 3)
    lock = DatabaseLock(db, file_lock)
    # Taken as Convert receives the first request: every write of the round's results then
    # waits out the busy timeout and fails, for three times as long.
    recorder.on_arrival = lambda index: lock.hold_for(0.6) if index == 0 else None
    assert svc.drain() == 3
    assert lock.taken and lock.released.wait(5)
    assert {e.state for e in all_events(svc)} == {"sent"}
    svc.clock.advance(svc.settings.dispatcher.lease_seconds + 1)
    assert svc.drain() == 0
    assert order_counts(recorder.paths) == {"1": 1, "2": 1, "3": 1}


# -- a round and its lease -----------------------------------------------------------------
def test_no_send_starts_later_than_half_the_lease_after_the_claim(
    service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    store(service, *range(1, 31))
    lease = service.settings.dispatcher.lease_seconds
    recorder.on_arrival = lambda _: clock.advance(lease / 10)  # Convert slow, in fake time
    assert service.runtime.dispatcher.run_once() == 30
    started = len(recorder.arrivals)
    # Five requests take half the lease; those already in flight then may still finish.
    assert 5 <= started <= 5 + SEND_CONCURRENCY
    unsent = [e for e in all_events(service) if e.state != "sent"]
    assert len(unsent) == 30 - started
    for event in unsent:  # back in the queue, due at once, no attempt counted
        assert (event.state, event.reason_code, event.attempts) == ("pending", "queued", 0)
        assert event.lease_owner is None and event.next_attempt_at <= clock.now()
    recorder.on_arrival = None
    service.drain()
    assert order_counts(recorder.paths) == {str(n): 1 for n in range(1, 31)}


def test_a_takeover_after_the_lease_resends_only_the_requests_not_recorded(
    any_db_service: Service, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    """Worker A's round stalls with requests in flight past its lease; worker B takes the
    events over. B must see what A already sent, and A's late answers must not undo B's."""
    store(any_db_service, *range(1, 21))
    rt = any_db_service.runtime
    first = rt.dispatcher
    second = Dispatcher(rt.engine, rt.settings, rt.client, rt.clock)
    stalled = range(10, 10 + SEND_CONCURRENCY)
    recorder.hold(stalled.start, len(stalled))
    round_a = threading.Thread(target=first.run_once)
    round_a.start()
    try:
        recorded = eventually(lambda: sent_count(any_db_service) == 10)
        seen = f"{len(recorder.arrived_paths())} arrived, {len(recorder.paths)} answered"
        assert recorded, f"A records as it goes: {sent_count(any_db_service)} sent, {seen}"
        assert recorder.wait_for_arrivals(stalled.stop) == stalled.stop
        clock.advance(rt.settings.dispatcher.lease_seconds + 1)
        assert second.drain() == 20
        second.stop()
        recorder.answer_next(*[503] * len(stalled))  # A's late answers: failures
    finally:
        recorder.release()
        round_a.join(15)
    assert not round_a.is_alive()
    counts = order_counts(recorder.arrived_paths())
    assert set(counts) == {str(n) for n in range(1, 21)}
    assert sum(counts.values()) - 20 == len(stalled)  # only the requests in flight, twice
    assert {e.state for e in all_events(any_db_service)} == {"sent"}
    assert sent_count(any_db_service) == 20  # a late 503 does not make a sent request unsent
    with rt.engine.connect() as conn:
        late = conn.execute(select(attempts).where(attempts.c.status_code == 503)).all()
    assert len(late) == len(stalled)  # A's answers are still recorded as attempts


def test_reports_that_came_while_the_collector_wanted_more_wake_it_when_it_wants_fewer() -> None:
    """The collector records a group, then wants one report; two came during that commit
    (while it wanted seven). It must wake for them now: the requests still out may be held
    for a long time, and their results must not wait for them (this lost the race under load
    before: two answered results unrecorded while eight requests hung)."""
    flight = _Flight(expected=10)
    slots = Slots(16)
    flight.want(7)
    for _ in (1, 2):
        flight.report(Unstarted(Batch(())), slots)
    assert not flight.wait(0)  # two of the seven wanted
    flight.want(1)
    assert flight.wait(0)
    assert len(flight.ready()) == 2


class SkewedClock(SystemClock):
    """A host whose clock runs an hour ahead of the other hosts and of the database."""

    def now(self) -> float:
        return time.time() + 3600


def test_on_postgresql_a_host_with_a_skewed_clock_does_not_take_a_held_lease(
    pg_url: str, recorder: ConvertRecorder
) -> None:
    settings = settings_from_mapping(config_document(pg_url, recorder.base_url), {})
    service = Service(create_app(settings, clock=SystemClock()), FakeClock(time.time()))
    try:
        store(service, 1)
        rt = service.runtime
        with rt.engine.begin() as conn:  # a worker on a host with a right clock, mid-round
            held = claim_due(conn, "other-host", time.time(), 10, settings.dispatcher.lease_seconds)
        assert len(held) == 1
        skewed = Dispatcher(rt.engine, settings, rt.client, SkewedClock())
        assert skewed.drain() == 0  # the lease is compared on the database's clock
        skewed.stop()
        assert recorder.paths == []
    finally:
        service.runtime.close()


def sent_count(service: Service) -> int:
    with service.runtime.engine.connect() as conn:
        return len(conn.execute(select(sends.c.id).where(sends.c.state == "sent")).all())


# -- a broken Convert -----------------------------------------------------------------------
def timed(work: Any) -> float:
    begun = time.monotonic()
    work()
    return time.monotonic() - begun


def test_an_endless_answer_is_read_no_further_and_its_status_counts(
    service: Service, recorder: ConvertRecorder
) -> None:
    store(service, 1)
    recorder.misbehave[0] = "endless"  # a 200 whose body never ends
    assert timed(service.drain) < 4  # not the 8 s (and 50 MB) the server would go on for
    assert event_of(service, 1).state == "sent"


def test_an_answer_that_trickles_in_is_given_up_on_and_the_round_goes_on(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder, clock: FakeClock
) -> None:
    timeouts = {"connect_timeout_seconds": 0.5, "read_timeout_seconds": 0.5}
    convert = {"account_id": "1111", "project_id": "2222", "endpoint": recorder.base_url}
    svc: Service = make_service(sqlite_url, convert=convert | timeouts)
    store(svc, 1, 2, 3)
    recorder.misbehave[0] = "trickle"  # a byte every 0.1 s: no single read ever times out
    assert timed(svc.drain) < 5  # its timeouts and a second of grace, not the 8 s trickle
    stuck = order_counts(recorder.arrived_paths()[:1])
    (stuck_order,) = stuck
    for n in (1, 2, 3):
        event = event_of(svc, n)
        if str(n) == stuck_order:  # outcome unknown: it keeps its lease, then goes again
            assert (event.state, event.attempts) == ("pending", 0)
            assert event.lease_owner is not None
        else:
            assert event.state == "sent"
    recorder.misbehave.clear()
    clock.advance(svc.settings.dispatcher.lease_seconds + 1)
    assert svc.drain() == 1
    assert event_of(svc, int(stuck_order)).state == "sent"


# -- graceful stop -------------------------------------------------------------------------
def test_stop_waits_for_sends_in_flight_records_them_and_releases_the_rest(
    service: Service, recorder: ConvertRecorder
) -> None:
    store(service, *range(1, 41))
    recorder.delay = 0.4
    dispatcher = service.runtime.dispatcher
    dispatcher.start()
    assert recorder.wait_for_arrivals(SEND_CONCURRENCY) == SEND_CONCURRENCY
    begun = time.monotonic()
    dispatcher.stop(timeout=3)
    assert time.monotonic() - begun < 3.5
    in_flight = recorder.arrived_paths()
    assert len(in_flight) < 40  # no new send started after the stop
    time.sleep(0.5)
    assert recorder.arrived_paths() == in_flight
    assert not dispatcher.running
    sent = {e.order_id for e in all_events(service) if e.state == "sent"}
    assert sent == set(order_counts(in_flight))  # each one in flight was recorded
    for event in all_events(service):
        if event.state != "sent":  # released for another worker, at once
            assert (event.state, event.lease_owner, event.attempts) == ("pending", None, 0)
    recorder.delay = 0
    rt = service.runtime
    other = Dispatcher(rt.engine, rt.settings, rt.client, rt.clock)
    other.drain()
    other.stop()
    assert order_counts(recorder.arrived_paths()) == {str(n): 1 for n in range(1, 41)}
