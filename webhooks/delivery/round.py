"""One dispatcher round: claim, plan, send, decide, record.

- claim: lease a batch of due events and read what is known of their hits (one transaction);
- plan: the attribution chain and the Convert client turn each event into hits, or into its
  final state without sending (planner.py);
- send: outside any transaction, concurrently, results recorded in group commits as they come
  (sending.py), no send starting later than half the lease after the claim;
- decide: each event's next state, a pure function (decide.py);
- record: the rest of the results and every event's state, fenced on this round's lease
  token (one transaction).
An error on one event makes that event dead with a reason, never the round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, Row

from webhooks.convert.client import ConvertClient
from webhooks.core.clock import Clock
from webhooks.core.hits import Hit, SendOutcome
from webhooks.core.logs import describe
from webhooks.core.observe import FinishSeen, Observer, RoundSeen
from webhooks.core.settings import ConvertFormat, Settings
from webhooks.core.states import DONE_SEND_STATES
from webhooks.delivery.breaker import Breaker
from webhooks.delivery.decide import decide, internal_error, with_note
from webhooks.delivery.planner import Plan, Planned, Planner
from webhooks.delivery.recording import DATABASE_ERRORS, Writer
from webhooks.delivery.retry import RetryPolicy
from webhooks.delivery.sending import SendRound, SentRound, Slots
from webhooks.storage import queue
from webhooks.storage.database import transaction
from webhooks.storage.queue import UNSENT, Finish, KnownSend

log = logging.getLogger(__name__)
V1_POSTS_PER_ROUND = 4  # half the send pool: the rest keeps sending while results are recorded


@dataclass(frozen=True)
class Claim:
    token: str  # this round's lease owner: only it may write the events' state
    rows: list[Row[Any]]
    known: dict[int, dict[str, KnownSend]]
    send_until: float  # clock.monotonic(): no send starts after it


@dataclass
class RoundParts:
    """What every round of one dispatcher shares."""

    engine: Engine
    settings: Settings
    client: ConvertClient
    clock: Clock
    planner: Planner
    breaker: Breaker
    pool: ThreadPoolExecutor
    slots: Slots
    writer: Writer
    observer: Observer
    stop: threading.Event
    give_up_at: Callable[[], float | None]  # a stopping dispatcher's last wait, if stopping
    wake: Callable[[], None]  # run another round soon


class Round:
    def __init__(self, parts: RoundParts, token: str) -> None:
        self.parts = parts
        self.token = token
        self.policy = RetryPolicy.from_settings(parts.settings.dispatcher)

    def run(self) -> int:
        """Claim, send outside any transaction (the lock is never held across the network),
        record. Returns the number of events handled."""
        p = self.parts
        began = p.clock.monotonic()
        claim = self._claim()
        if claim is None:
            return 0
        planned_at = p.clock.now()
        plans = {row.id: self._plan_safely(row, planned_at) for row in claim.rows}
        hits = [
            hit
            for row in claim.rows
            if isinstance(plan := plans[row.id], Planned)
            for hit in plan.hits
            if claim.known[row.id].get(hit.pair, UNSENT).state not in DONE_SEND_STATES
        ]
        c = p.settings.convert
        sent = SendRound(
            self, p.client, p.pool, p.slots, claim.send_until, c.connect_timeout + c.read_timeout
        ).run(hits)
        now = p.clock.now()
        finishes = self._finishes(claim, plans, sent, now)
        p.writer.write(
            lambda conn: queue.record_round(conn, claim.token, now, sent.unrecorded, finishes),
            "the round's results",
        )
        p.slots.release(sent.unrecorded_batches)
        if sent.unrecorded:
            _tell(lambda: p.observer.sends(sent.unrecorded))
        if sent.unknown:
            log.warning(
                "%d event(s) had a Convert request still in flight when the round ended; "
                "they are sent again when their lease expires",
                len(sent.unknown),
            )
        self._after_round(sent.outcomes, now)
        seen = RoundSeen(
            len(claim.rows),
            len(sent.outcomes),
            len(sent.unknown),
            p.clock.monotonic() - began,
            tuple(_finish_seen(row, done) for row, done in finishes),
        )
        _tell(lambda: p.observer.round(seen))
        return len(claim.rows)

    def _claim(self) -> Claim | None:
        p = self.parts
        d = p.settings.dispatcher
        started = p.clock.monotonic()  # before the lease starts: the budget errs short
        probing = p.breaker.open  # during an outage one event probes; the rest wait
        early = p.breaker.probe_due(started)
        with transaction(p.engine) as conn:
            rows = queue.claim_due(
                conn,
                self.token,
                p.clock.now(),
                1 if probing else claim_size(p.settings),
                d.lease_seconds,
                lease_now=p.clock.lease_now(conn),
                ignore_due=early,
            )
            if not rows:
                return None
            known = queue.sends_of(conn, [row.id for row in rows])
        return Claim(self.token, rows, known, started + d.lease_seconds / 2)

    def _after_round(self, outcomes: Sequence[SendOutcome], now: float) -> None:
        p = self.parts
        since = p.breaker.observe([o.result for o in outcomes], now, p.clock.monotonic())
        if since is None:
            return
        # Convert is back: what failed during the outage goes out now, not after its backoff.
        try:
            with transaction(p.engine) as conn:
                woken = queue.wake_deferred(conn, since, now)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not wake deferred events (%s); they wait out their backoff", describe(exc)
            )
            return
        if woken:
            log.info("%d event(s) deferred during the outage are due now", woken)
            p.wake()

    # -- what a SendRound asks ---------------------------------------------------------------
    def out_of_time(self, send_until: float) -> bool:
        return self.parts.stop.is_set() or self.parts.clock.monotonic() >= send_until

    def give_up_at(self) -> float | None:
        return self.parts.give_up_at()

    def record_group(self, outcomes: Sequence[SendOutcome]) -> bool:
        p = self.parts
        _tell(lambda: p.observer.sends(outcomes))
        return p.writer.write(
            lambda conn: queue.record_sends(conn, p.clock.now(), outcomes), "send results"
        )

    # -- planning and deciding ---------------------------------------------------------------
    def _plan_safely(self, row: Row[Any], now: float) -> Plan:
        try:
            return self.parts.planner.plan(row, now)
        except Exception as exc:
            return _internal_error(row, exc, "planning")

    def _finishes(
        self, claim: Claim, plans: dict[int, Plan], sent: SentRound, now: float
    ) -> list[tuple[Row[Any], Finish]]:
        for outcome in sent.outcomes:
            claim.known[outcome.event_id][outcome.hit.pair] = queue.known_send(outcome)
        finishes = []
        for row in claim.rows:
            plan = plans[row.id]
            if isinstance(plan, Planned):
                if row.id in sent.unknown:
                    continue  # an outcome is not known: leave it leased (see run)
                decided = self._decide_safely(row, plan.hits, plan.note, claim, sent, now)
                done = replace(decided, attributed=plan.attributed, details=plan.details)
                finishes.append((row, done))
                continue
            finishes.append((row, plan))
        return finishes

    def _decide_safely(
        self,
        row: Row[Any],
        hits: Sequence[Hit],
        note: str | None,
        claim: Claim,
        sent: SentRound,
        now: float,
    ) -> Finish:
        def next_attempt(tries: int, not_before: float) -> float | None:
            return self.policy.next_attempt(now, tries, row.horizon_start, not_before)

        try:
            finish = decide(
                [hit.pair for hit in hits],
                claim.known[row.id],
                [o.result for o in sent.by_event.get(row.id, [])],
                row.id in sent.unstarted,
                row.attempts,
                now,
                next_attempt,
            )
            return with_note(finish, note)
        except Exception as exc:
            return _internal_error(row, exc, "recording")


def _internal_error(row: Row[Any], exc: Exception, stage: str) -> Finish:
    where = describe(exc)
    log.error("event %s: %s failed (%s); marked dead", row.id, stage, where)
    return internal_error(stage, where)


def claim_size(settings: Settings) -> int:
    """Events a round claims: dispatcher.batch_size, and with the JSON API at least enough to
    fill V1_POSTS_PER_ROUND requests, which then go out at once (one request per round would
    leave the round's fixed cost, two commits and a claim, to each batch)."""
    size = settings.dispatcher.batch_size
    if settings.convert.format is ConvertFormat.V1:
        size = max(size, settings.convert.v1.batch_size * V1_POSTS_PER_ROUND)
    return size


def _finish_seen(row: Row[Any], done: Finish) -> FinishSeen:
    place = done.attributed.place if done.attributed is not None else None
    reason = str(done.reason_code) if done.reason_code is not None else None
    return FinishSeen(row.source, str(done.state), reason, place)


def _tell(call: Callable[[], None]) -> None:
    """An observer never breaks a round."""
    try:
        call()
    except Exception as exc:
        log.warning("observer failed: %s", describe(exc))
