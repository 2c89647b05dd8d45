"""The dispatcher: claims due events, attributes them, sends the Convert requests and records
what happened. Runs as a thread in every gunicorn worker (woken at once by the request that
stored an event, so the happy path does not wait for a poll) or as its own process.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from webhooks import queue, reasons
from webhooks.attribution import from_attributes
from webhooks.clock import Clock
from webhooks.config import Settings
from webhooks.convert import ConvertRequest, build_requests
from webhooks.database import transaction
from webhooks.events import EventKind
from webhooks.queue import Finish, SendOutcome, SendState
from webhooks.retry import RetryPolicy
from webhooks.sender import Outcome, Sender

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENTS_KEY = "convert_experiments"
_UNSENT = SendState("", "pending", None, None)
SEND_CONCURRENCY = 8
OUTAGE_MAX_PAUSE = 60


class Dispatcher:
    def __init__(self, engine: Engine, settings: Settings, sender: Sender, clock: Clock) -> None:
        self.engine = engine
        self.settings = settings
        self.sender = sender
        self.clock = clock
        self.policy = RetryPolicy.from_settings(settings.dispatcher)
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self.outage_rounds = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(SEND_CONCURRENCY, thread_name_prefix="convert-send")

    # -- running ---------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run_forever, name="dispatcher", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end after the current round (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True)

    def run_forever(self) -> None:
        log.info("dispatcher %s started", self.owner)
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except SQLAlchemyError as exc:
                # The database is down or locked: keep the events where they are and retry.
                log.warning("dispatcher: database unavailable (%s); will retry", type(exc).__name__)
                busy = 0
            if self.outage_rounds:
                # Convert is unreachable: wait (new webhooks do not wake us), then probe.
                self._stop.wait(self.outage_pause())
                continue
            if busy >= self.settings.dispatcher.batch_size:
                continue  # a backlog: keep going
            woken = self._wake.wait(self.settings.dispatcher.poll_seconds)
            self._wake.clear()
            if woken and busy > 1:
                # Under load (the last round found several events), gather briefly: one round
                # then serves many webhooks, and the database sees two commits per round
                # instead of two per webhook. A lone webhook goes out at once.
                self._stop.wait(self.settings.dispatcher.linger_seconds)

    def drain(self, max_rounds: int = 1000) -> int:
        """Run rounds until nothing is due; the number of events handled."""
        total = 0
        for _ in range(max_rounds):
            handled = self.run_once()
            if not handled:
                break
            total += handled
        return total

    # -- one round -------------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim, send outside any transaction (the lock is never held across the network),
        record. Returns the number of events handled."""
        d = self.settings.dispatcher
        with transaction(self.engine) as conn:
            # During an outage one event probes; the rest keep their place in the queue.
            limit = 1 if self.outage_rounds else d.batch_size
            rows = queue.claim_due(conn, self.owner, self.clock.now(), limit, d.lease_seconds)
            if not rows:
                return 0
            known = queue.sends_of(conn, [row.id for row in rows])
        decisions = [(row, self._plan(row)) for row in rows]
        due = [
            (row.id, request)
            for row, decision in decisions
            if not isinstance(decision, Finish)
            for request in decision
            if known[row.id].get(request.pair, _UNSENT).state not in queue.DONE_SEND_STATES
        ]
        outcomes = list(self._pool.map(self._send, due))
        for outcome in outcomes:
            known[outcome.event_id][outcome.request.pair] = SendState(
                outcome.request.pair,
                queue.SEND_STATE[outcome.result.outcome],
                outcome.result.status_code,
                outcome.result.detail,
            )
        now = self.clock.now()
        finishes = [
            (
                row,
                decision
                if isinstance(decision, Finish)
                else self._conclude(row, list(known[row.id].values()), now),
            )
            for row, decision in decisions
        ]
        with transaction(self.engine) as conn:
            queue.record_round(conn, self.owner, now, outcomes, finishes)
        self._track_outage(outcomes)
        return len(rows)

    # -- circuit breaker -------------------------------------------------------------------
    def _track_outage(self, outcomes: Sequence[SendOutcome]) -> None:
        """Count rounds in which every request failed in a retryable way (Convert down,
        5xx, 429): then the loop pauses and probes with one event, instead of spending the
        database and the network on a whole batch of attempts that will fail too."""
        if not outcomes:
            return
        if all(o.result.outcome is Outcome.RETRY for o in outcomes):
            self.outage_rounds += 1
            if self.outage_rounds == 1:
                log.warning(
                    "Convert unreachable (%s); pausing, then probing with one event",
                    outcomes[0].result.detail,
                )
        elif self.outage_rounds:
            log.info("Convert reachable again after %d failed rounds", self.outage_rounds)
            self.outage_rounds = 0

    def outage_pause(self) -> float:
        """Seconds to wait before the next probe: doubling from 1 s, at most 60 s."""
        if not self.outage_rounds:
            return 0.0
        return float(min(OUTAGE_MAX_PAUSE, 2 ** (self.outage_rounds - 1)))

    def _send(self, item: tuple[int, ConvertRequest]) -> SendOutcome:
        event_id, request = item
        return SendOutcome(event_id, request, self.sender.get(request.url))

    def _plan(self, row: Row[Any]) -> Finish | list[ConvertRequest]:
        source = self.settings.sources.get(row.source)
        key = source.experiments_key if source else DEFAULT_EXPERIMENTS_KEY
        attribution = from_attributes(json.loads(row.attributes), key)
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
        return build_requests(
            self.settings.convert,
            goals,
            attribution.pairs,
            row.order_id,
            Decimal(row.amount),
            row.item_count,
        )

    def _conclude(self, row: Row[Any], sends: Sequence[SendState], now: float) -> Finish:
        states = {send.state for send in sends}
        if states <= {"dry_run"}:
            return Finish(
                "dry_run", reasons.DRY_RUN, "dry run: Convert URLs logged, not sent", attempted=True
            )
        if states <= {"sent", "dry_run"}:
            return Finish("sent", None, None, attempted=True)
        if "pending" in states:
            last = next(s for s in sends if s.state == "pending").last_error
            at = self.policy.next_attempt(now, row.attempts + 1, row.horizon_start)
            if at is None:
                return Finish(
                    "dead",
                    reasons.RETRIES_EXHAUSTED,
                    f"gave up after {row.attempts + 1} attempts; last error: {last}",
                    attempted=True,
                )
            return Finish(
                "pending",
                reasons.RETRYING,
                f"will retry; last error: {last}",
                next_attempt_at=at,
                attempted=True,
            )
        dead = next(s for s in sends if s.state == "dead")
        return Finish(
            "dead",
            reasons.CONVERT_REJECTED,
            f"Convert answered {dead.last_error} for pair {dead.pair}",
            attempted=True,
        )
