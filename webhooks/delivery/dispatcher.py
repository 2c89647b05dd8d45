"""The dispatcher: claims due events, attributes them, sends the Convert requests and records
what happened. Runs as a thread in every gunicorn worker (woken at once by the request that
stored an event, so the happy path does not wait for a poll) or as its own process.

A round: claim (a lease), plan each event, send concurrently, record each result as it comes
(group commits, see `SendRound`), then each event's new state. What keeps it exact:
- no send starts later than half the lease after the claim (the rest is released, due at
  once, for the next round), so a round ends well within its lease (config refuses a lease
  shorter than that worst case, `minimum_lease_seconds`);
- results are written while the round runs, and the write is retried until it lands, so a
  crash or a takeover repeats at most the requests whose outcome was not yet written;
- an error on one event (bad stored data, a bug) makes that event dead with a reason, never
  the round or the thread; a loop that fails anyway is restarted (`run_forever`,
  `ensure_running`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from webhooks.attribution.pairs import from_attributes
from webhooks.convert.http import Outcome, Sender
from webhooks.convert.legacy import ConvertRequest, build_requests
from webhooks.core import states as reasons
from webhooks.core.clock import Clock
from webhooks.core.errors import StorageError
from webhooks.core.events import EventKind
from webhooks.core.logs import describe
from webhooks.core.settings import Settings
from webhooks.delivery.breaker import Breaker
from webhooks.delivery.retry import RetryPolicy
from webhooks.delivery.sending import Job, SendRound, SentRound, Slots
from webhooks.storage import queue
from webhooks.storage.database import transaction
from webhooks.storage.queue import Finish, SendOutcome, SendState

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENTS_KEY = "convert_experiments"
_UNSENT = SendState("", "pending", None, None)
SEND_CONCURRENCY = 8
# Sends started and not yet durably recorded, per dispatcher: what a kill -9 can repeat. Twice
# the concurrency, so sending goes on while a group of results is being committed.
MAX_UNRECORDED = 2 * SEND_CONCURRENCY
DATABASE_ERRORS = (SQLAlchemyError, StorageError)
RECORD_RESERVE = 1.0  # of a stop's timeout, kept for recording after in-flight sends
MAX_CRASH_PAUSE = 30.0


@dataclass(frozen=True)
class Claim:
    token: str  # this round's lease owner: only it may write the events' state
    rows: list[Row[Any]]
    known: dict[int, dict[str, SendState]]
    send_until: float  # clock.monotonic(): no send starts after it


@dataclass(frozen=True)
class Planned:
    requests: list[ConvertRequest]
    note: str | None = None  # said with the event's final state (e.g. pairs left out)


Plan = Finish | Planned


class Dispatcher:
    def __init__(self, engine: Engine, settings: Settings, sender: Sender, clock: Clock) -> None:
        self.engine = engine
        self.settings = settings
        self.sender = sender
        self.clock = clock
        self.policy = RetryPolicy.from_settings(settings.dispatcher)
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self.breaker = Breaker()
        self._rounds = itertools.count(1)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._give_up_at: float | None = None  # time.monotonic(): a stopping round's last wait
        self._started = False
        self._crashes = 0
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._slots = Slots(MAX_UNRECORDED)
        self._pool = ThreadPoolExecutor(SEND_CONCURRENCY, thread_name_prefix="convert-send")

    # -- running ---------------------------------------------------------------------------
    def wake(self) -> None:
        self.ensure_running()
        self._wake.set()

    def start(self) -> None:
        self._started = True
        self.ensure_running()

    @property
    def running(self) -> bool:
        """Started, and its thread alive (for /readyz)."""
        thread = self._thread
        return self._started and thread is not None and thread.is_alive()

    def ensure_running(self) -> None:
        """Start a new thread if the dispatcher was started and its thread has died."""
        if not self._started or self._stop.is_set() or self.running:
            return
        with self._thread_lock:
            if self.running or self._stop.is_set():
                return
            if self._thread is not None:
                log.error("dispatcher thread had stopped; starting a new one")
            self._thread = threading.Thread(target=self.run_forever, name="dispatcher", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end after the current round (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Start no new send, wait up to about `timeout` for those in flight, record what
        completed and release the events not sent (due at once, for another worker)."""
        end = time.monotonic() + timeout
        self._give_up_at = end - min(RECORD_RESERVE, timeout / 4)
        self.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                log.warning("dispatcher did not stop within %.1f s", timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_forever(self) -> None:
        """The loop, supervised: an unexpected error is logged in one line, and after a short
        pause the loop goes on (one bad round must not end sending for good)."""
        log.info("dispatcher %s started", self.owner)
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as exc:
                self._crashes += 1
                pause = min(MAX_CRASH_PAUSE, 0.5 * 2 ** min(self._crashes - 1, 10))
                log.error("dispatcher: unexpected %s; going on in %.1f s", describe(exc), pause)
                self._stop.wait(pause)

    def _loop(self) -> None:
        d = self.settings.dispatcher
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                self._crashes = 0
            except DATABASE_ERRORS as exc:
                # The database is down or locked: keep the events where they are and retry.
                log.warning("dispatcher: database unavailable (%s); will retry", describe(exc))
                busy = 0
            if self.breaker.open:
                # Convert is unreachable: wait (new webhooks do not wake us), then probe.
                self._stop.wait(self.breaker.pause())
                continue
            if busy >= d.batch_size:
                continue  # a backlog: keep going
            woken = self._wake.wait(d.poll_seconds)
            self._wake.clear()
            if woken and busy > 1:
                # Under load (the last round found several events), gather briefly: one round
                # then serves many webhooks, and the database sees few commits per round
                # instead of two per webhook. A lone webhook goes out at once.
                self._stop.wait(d.linger_seconds)

    def drain(self, max_rounds: int = 1000) -> int:
        """Run rounds until nothing is due; the number of events handled."""
        total = 0
        for _ in range(max_rounds):
            handled = self.run_once()
            if not handled or self._stop.is_set():
                break
            total += handled
        return total

    # -- circuit breaker (kept as attributes for operators and tests) ---------------------
    @property
    def outage_rounds(self) -> int:
        return self.breaker.failed_rounds

    def outage_pause(self) -> float:
        return self.breaker.pause()

    # -- one round -------------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim, send outside any transaction (the lock is never held across the network),
        record. Returns the number of events handled."""
        claim = self._claim()
        if claim is None:
            return 0
        plans = {row.id: self._plan_safely(row) for row in claim.rows}
        jobs = [
            Job(row.id, request)
            for row in claim.rows
            if isinstance(plan := plans[row.id], Planned)
            for request in plan.requests
            if claim.known[row.id].get(request.pair, _UNSENT).state not in queue.DONE_SEND_STATES
        ]
        c = self.settings.convert
        sent = SendRound(
            self,
            self.sender,
            self._pool,
            self._slots,
            claim.send_until,
            c.connect_timeout + c.read_timeout,
        ).run(jobs)
        now = self.clock.now()
        finishes = self._finishes(claim, plans, sent, now)
        self._write(
            lambda conn: queue.record_round(conn, claim.token, now, sent.unrecorded, finishes),
            "the round's results",
        )
        self._slots.release(len(sent.unrecorded))
        if sent.unknown:
            log.warning(
                "%d event(s) had a Convert request still in flight when the round ended; "
                "they are sent again when their lease expires",
                len(sent.unknown),
            )
        self._after_round(sent.outcomes, now)
        return len(claim.rows)

    def _claim(self) -> Claim | None:
        d = self.settings.dispatcher
        token = f"{self.owner}-{next(self._rounds)}"
        started = self.clock.monotonic()  # before the lease starts: the budget errs short
        probing = self.breaker.open  # during an outage one event probes; the rest wait
        early = self.breaker.probe_due(started)
        with transaction(self.engine) as conn:
            rows = queue.claim_due(
                conn,
                token,
                self.clock.now(),
                1 if probing else d.batch_size,
                d.lease_seconds,
                lease_now=self.clock.lease_now(conn),
                ignore_due=early,
            )
            if not rows:
                return None
            known = queue.sends_of(conn, [row.id for row in rows])
        return Claim(token, rows, known, started + d.lease_seconds / 2)

    def _after_round(self, outcomes: Sequence[SendOutcome], now: float) -> None:
        results = [o.result for o in outcomes]
        since = self.breaker.observe(results, now, self.clock.monotonic())
        if since is None:
            return
        # Convert is back: what failed during the outage goes out now, not after its backoff.
        try:
            with transaction(self.engine) as conn:
                woken = queue.wake_deferred(conn, since, now)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not wake deferred events (%s); they wait out their backoff", describe(exc)
            )
            return
        if woken:
            log.info("%d event(s) deferred during the outage are due now", woken)
            self._wake.set()

    def _write(self, work: Callable[[Connection], None], what: str) -> bool:
        """Run `work` in a transaction until it commits: results of sends must never be
        dropped (a send forgotten is a send repeated). Backs off up to 2 s between tries while
        the process runs; once stopping, one last try."""
        pause = 0.05
        tries = 0
        while True:
            stopping = self._stop.is_set()
            tries += 1
            try:
                with transaction(self.engine) as conn:
                    work(conn)
            except DATABASE_ERRORS as exc:
                if stopping:
                    log.error("could not record %s before stopping (%s)", what, describe(exc))
                    return False
                if math.log10(tries).is_integer():  # the 1st, 10th, 100th... failure
                    log.warning(
                        "could not record %s (%s, %d tries); retrying", what, describe(exc), tries
                    )
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)
                continue
            if tries > 1:
                log.info("recorded %s after %d tries", what, tries)
            return True

    # -- what a SendRound asks ---------------------------------------------------------------
    def out_of_time(self, send_until: float) -> bool:
        return self._stop.is_set() or self.clock.monotonic() >= send_until

    def give_up_at(self) -> float | None:
        return self._give_up_at if self._stop.is_set() else None

    def record_group(self, outcomes: Sequence[SendOutcome]) -> bool:
        return self._write(
            lambda conn: queue.record_sends(conn, self.clock.now(), outcomes), "send results"
        )

    # -- planning and concluding -----------------------------------------------------------
    def _plan_safely(self, row: Row[Any]) -> Plan:
        try:
            return self._plan(row)
        except Exception as exc:
            return _internal_error(row, exc, "planning")

    def _plan(self, row: Row[Any]) -> Plan:
        source = self.settings.sources.get(row.source)
        key = source.experiments_key if source else DEFAULT_EXPERIMENTS_KEY
        attribution = from_attributes(
            json.loads(row.attributes),
            key,
            max_pairs=self.settings.attribution.max_pairs_per_order,
        )
        if not attribution.pairs:
            return Finish(
                "skipped",
                attribution.reason_code,
                attribution.reason,
                only_if_revision=row.revision,
            )
        goals = self.settings.goals.get(EventKind(row.kind))
        if goals is None or not (goals.conversion or goals.transaction):
            return Finish(
                "skipped", reasons.NO_GOALS, f"no Convert goals configured for {row.kind}"
            )
        requests = build_requests(
            self.settings.convert,
            goals,
            attribution.pairs,
            row.order_id,
            Decimal(row.amount),
            row.item_count,
        )
        return Planned(requests, attribution.note)

    def _finishes(
        self, claim: Claim, plans: dict[int, Plan], sent: SentRound, now: float
    ) -> list[tuple[Row[Any], Finish]]:
        for outcome in sent.outcomes:
            claim.known[outcome.event_id][outcome.request.pair] = queue.send_state(outcome)
        finishes = []
        for row in claim.rows:
            plan = plans[row.id]
            if isinstance(plan, Planned):
                if row.id in sent.unknown:
                    continue  # an outcome is not known: leave it leased (see run_once)
                plan = self._conclude_safely(row, plan, claim.known[row.id], sent, now)
            finishes.append((row, plan))
        return finishes

    def _conclude_safely(
        self,
        row: Row[Any],
        plan: Planned,
        known: dict[str, SendState],
        sent: SentRound,
        now: float,
    ) -> Finish:
        try:
            return _with_note(self._conclude(row, plan, known, sent, now), plan.note)
        except Exception as exc:
            return _internal_error(row, exc, "recording")

    def _conclude(
        self,
        row: Row[Any],
        plan: Planned,
        known: dict[str, SendState],
        sent: SentRound,
        now: float,
    ) -> Finish:
        mine = sent.by_event.get(row.id, [])
        attempted = bool(mine)
        error = next((o.result.detail for o in mine if o.result.outcome is Outcome.ERROR), None)
        if error is not None:
            return Finish("dead", reasons.INTERNAL_ERROR, error, attempted=attempted)
        failed = any(o.result.outcome in (Outcome.RETRY, Outcome.PERMANENT) for o in mine)
        if row.id in sent.unstarted and not failed:
            return Finish(
                "pending",
                reasons.QUEUED,
                "queued: the round ended before this event was sent",
                next_attempt_at=now,
            )
        sends = [known.get(r.pair, _UNSENT) for r in plan.requests]
        states = {send.state for send in sends}
        if states <= {"dry_run"}:
            return Finish(
                "dry_run", reasons.DRY_RUN, "dry run: Convert URLs logged, not sent", attempted=True
            )
        if states <= {"sent", "dry_run"}:
            return Finish("sent", None, None, attempted=attempted)
        if "pending" in states:
            waits = [o.result.retry_after for o in mine if o.result.retry_after is not None]
            return self._retry(row, sends, now, now + max(waits, default=0.0), attempted)
        dead = next(s for s in sends if s.state == "dead")
        return Finish(
            "dead",
            reasons.CONVERT_REJECTED,
            f"Convert answered {dead.last_error} for pair {dead.pair}",
            attempted=attempted,
        )

    def _retry(
        self,
        row: Row[Any],
        sends: Sequence[SendState],
        now: float,
        not_before: float,
        attempted: bool,
    ) -> Finish:
        last = next((s.last_error for s in sends if s.state == "pending" and s.last_error), None)
        tries = row.attempts + int(attempted)
        at = self.policy.next_attempt(now, max(tries, 1), row.horizon_start, not_before)
        if at is None:
            return Finish(
                "dead",
                reasons.RETRIES_EXHAUSTED,
                f"gave up after {tries} attempts; last error: {last}",
                attempted=attempted,
            )
        return Finish(
            "pending",
            reasons.RETRYING,
            f"will retry; last error: {last}",
            next_attempt_at=at,
            attempted=attempted,
        )


def _internal_error(row: Row[Any], exc: Exception, stage: str) -> Finish:
    """One event's failure: type and place only (the message could quote stored values)."""
    where = describe(exc)
    log.error("event %s: %s failed (%s); marked dead", row.id, stage, where)
    return Finish("dead", reasons.INTERNAL_ERROR, f"internal error while {stage}: {where}")


def _with_note(finish: Finish, note: str | None) -> Finish:
    if note is None:
        return finish
    if finish.state == "sent":
        return replace(finish, reason_code=reasons.PAIRS_CAPPED, reason=note)
    return replace(finish, reason=f"{finish.reason}; {note}" if finish.reason else note)
