"""One round's Convert hits, sent concurrently and recorded as they complete.

Hits go out in batches of one format and up to the client's `max_hits` for it (one per
request for the legacy GET; the JSON API takes many), each batch one pool task and one slot.

Pool threads send; the dispatcher's thread collects their results and commits them in groups:
each commit carries everything that completed since the previous one began, so results are
durable within a commit or two of their arrival without one transaction per send (SQLite
fsyncs each commit). A send starts only with a free slot (at most `Slots` started and not yet
recorded: what a kill -9 can repeat) and within the round's budget; one that cannot start is
reported unstarted and its event goes back to the queue. The collector gives up on requests
that outlive their timeouts (its event keeps the lease, and is sent again when it expires), so
a round ends within the budget plus about one request's timeouts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Protocol

from webhooks.convert.client import ConvertClient
from webhooks.core.hits import Hit, HitFormat, HitResult, SendOutcome
from webhooks.core.logs import describe
from webhooks.core.states import Outcome

log = logging.getLogger(__name__)
_POLL = 0.25  # how often a waiting collector looks at a stop request
_SLOT_POLL = 0.05  # how often a sender waiting for a slot looks at the budget
GROUP_WAIT = 0.02  # longest a result waits for its group commit (when few results come)
STALL_GRACE = 1.0  # beyond a request's timeouts, before the round gives up on it


@dataclass(frozen=True)
class Batch:
    """Hits sent in one request."""

    hits: tuple[Hit, ...]


@dataclass(frozen=True)
class Sent:
    outcomes: list[SendOutcome]


@dataclass(frozen=True)
class Unstarted:
    batch: Batch


Report = Sent | Unstarted


def batches(hits: Sequence[Hit], size_of: Callable[[HitFormat], int]) -> list[Batch]:
    """The hits in order, cut into batches of one format each, at most `size_of(format)`."""
    by_format: dict[HitFormat, list[Hit]] = {}
    for hit in hits:
        by_format.setdefault(hit.format, []).append(hit)
    work = []
    for fmt, group in by_format.items():
        size = max(size_of(fmt), 1)
        work += [Batch(tuple(group[i : i + size])) for i in range(0, len(group), size)]
    return work


@dataclass
class SentRound:
    """What the sending part of a round learned."""

    outcomes: list[SendOutcome] = field(default_factory=list)  # every result, as they came
    by_event: dict[int, list[SendOutcome]] = field(default_factory=dict)  # the same, per event
    unrecorded: list[SendOutcome] = field(default_factory=list)  # to record with the round
    unrecorded_batches: int = 0  # the slots they hold
    batches_done: int = 0
    unstarted: set[int] = field(default_factory=set)  # events with a request never started
    unknown: set[int] = field(default_factory=set)  # events with a request given up on


class Slots:
    """Counts sends started and not yet recorded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore = threading.Semaphore(size)

    def take(self, timeout: float) -> bool:
        return self._semaphore.acquire(timeout=timeout)

    def release(self, count: int = 1) -> None:
        if count:
            self._semaphore.release(count)


class RoundHost(Protocol):
    """What a round needs from its dispatcher."""

    def out_of_time(self, send_until: float) -> bool:
        """No send may start any more (budget spent, or stopping)."""

    def give_up_at(self) -> float | None:
        """time.monotonic() at which a stopping dispatcher stops waiting, if stopping."""

    def record_group(self, outcomes: Sequence[SendOutcome]) -> bool:
        """Commit these results (retrying); False only if it could not before a stop."""


class _Flight:
    """Where pool threads report. The collector is woken once enough reports wait for it (not
    on each one: under load every wake-up costs a switch of the interpreter lock), and after
    it gave up on the round, reports are dropped."""

    def __init__(self, expected: int) -> None:
        self.reports: SimpleQueue[Report] = SimpleQueue()
        self.wake_after = 1  # reports that make it worth waking the collector
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._unseen = 0
        self._left = expected
        self._abandoned = False

    def report(self, item: Report, slots: Slots) -> None:
        with self._lock:
            if not self._abandoned:
                self.reports.put(item)
                self._unseen += 1
                self._left -= 1
                if self._unseen >= self.wake_after or not self._left:
                    self._arrived.set()
                return
        if isinstance(item, Sent):
            slots.release()  # nobody will record it; its events' leases run out instead
            for outcome in item.outcomes:
                log.warning("event %s: a late Convert answer was not recorded", outcome.event_id)

    def want(self, count: int) -> None:
        """Wake the collector once `count` reports wait for it. Reports that came while it
        wanted more count too: lowering the bar with enough of them waiting wakes it now (else
        a collector that records a group and then wants one report would sleep through the
        two that came during that commit, until a next report that may never come)."""
        with self._lock:
            self.wake_after = count
            if self._unseen >= count or not self._left:
                self._arrived.set()

    def wait(self, timeout: float) -> bool:
        return self._arrived.wait(timeout)

    def abandon(self) -> list[Report]:
        with self._lock:
            self._abandoned = True
        return self.ready()

    def ready(self) -> list[Report]:
        with self._lock:
            self._arrived.clear()
            self._unseen = 0
        items = []
        while True:
            try:
                items.append(self.reports.get_nowait())
            except Empty:
                return items


class SendRound:
    def __init__(
        self,
        host: RoundHost,
        client: ConvertClient,
        pool: ThreadPoolExecutor,
        slots: Slots,
        send_until: float,
        request_seconds: float,
    ) -> None:
        self.host = host
        self.client = client
        self.pool = pool
        self.slots = slots
        self.send_until = send_until
        self.request_seconds = request_seconds  # one request's connect + read timeouts
        self.group_size = max(1, slots.size // 2)
        self._starts: list[float] = []  # time.monotonic() of each request started
        self._last_start = time.monotonic()
        self._widest = 1  # hits in this round's largest batch

    def run(self, hits: Sequence[Hit]) -> SentRound:
        work = batches(hits, self.client.max_hits)
        self._widest = max((len(batch.hits) for batch in work), default=1)
        flight = _Flight(len(work))
        for batch in work:
            try:
                self.pool.submit(self._run_batch, batch, flight)
            except RuntimeError:  # the pool was shut down (a stop that timed out)
                flight.report(Unstarted(batch), self.slots)
        sent = SentRound()
        waiting = {(hit.event_id, hit.pair) for hit in hits}
        group: list[Sent] = []  # results not yet recorded, one entry per request (slot)
        group_due = math.inf  # time.monotonic() by which they are
        recording = True
        while waiting:
            # The first result starts a group's clock; then wake for a full group.
            flight.want(self.group_size - len(group) if recording and group else 1)
            ready = self._next_batch(flight, group_due, len(waiting), sent.batches_done)
            if ready is None:  # the round stops waiting: what is in flight stays unknown
                group += _sort(flight.abandon(), waiting, sent)
                sent.unknown = {event_id for event_id, _ in waiting}
                break
            fresh = _sort(ready, waiting, sent)
            if fresh and not group:
                group_due = time.monotonic() + GROUP_WAIT
            group += fresh
            if recording and waiting and group and self._group_ready(group, group_due):
                # False only when stopping with the database away: one more try at the end.
                recording = self.host.record_group(_outcomes(group))
                if recording:
                    self.slots.release(len(group))
                    group, group_due = [], math.inf
        sent.unrecorded = _outcomes(group)  # recorded with the round's end
        sent.unrecorded_batches = len(group)
        return sent

    def _group_ready(self, group: list[Sent], due: float) -> bool:
        """Commit once half the slots wait on it (the other half keep sending meanwhile), or
        when its first result has waited GROUP_WAIT: few commits, each soon enough."""
        return len(group) >= self.group_size or time.monotonic() >= due

    def _next_batch(
        self, flight: _Flight, soft: float, waiting: int, done: int
    ) -> list[Report] | None:
        """The reports ready once enough came or `soft` passed; None once the round stops
        waiting (stalled, or a stop's give-up time)."""
        while True:
            now = time.monotonic()
            give_up = self.host.give_up_at()
            if (give_up is not None and now >= give_up) or self._stalled(now, waiting, done):
                return None
            if now >= soft or flight.wait(min(soft - now, _POLL)):
                return flight.ready()

    def _stalled(self, now: float, waiting: int, done: int) -> bool:
        """Every request still out has outlived its timeouts (a server that trickles its
        answer defeats the read timeout, which bounds each read, not the whole): the last
        request started longer ago than one may take, and no hit is still to start."""
        if now < self._last_start + self.request_seconds + STALL_GRACE:
            return False
        in_flight = len(self._starts) - done
        return waiting <= in_flight * self._widest or self.host.out_of_time(self.send_until)

    # -- in a pool thread ------------------------------------------------------------------
    def _run_batch(self, batch: Batch, flight: _Flight) -> None:
        item: Report = Unstarted(batch)
        try:
            if self._take_slot():
                self._last_start = now = time.monotonic()
                self._starts.append(now)
                item = self._send(batch)
        finally:
            flight.report(item, self.slots)

    def _take_slot(self) -> bool:
        while not self.slots.take(_SLOT_POLL):
            if self.host.out_of_time(self.send_until):
                return False
        late = True  # if the check itself fails, the slot goes back before the error does
        try:
            late = self.host.out_of_time(self.send_until)
        finally:
            if late:
                self.slots.release()
        return not late

    def _send(self, batch: Batch) -> Sent:
        try:
            results = self.client.send(batch.hits)
            if len(results) != len(batch.hits):
                raise RuntimeError("the Convert client answered for another number of hits")
        except Exception as exc:
            # Not a network error (those are results): a bug. These events are dead, not the
            # round.
            where = describe(exc)
            ids = ",".join(sorted({str(hit.event_id) for hit in batch.hits}))
            log.error("event %s: sending failed (%s)", ids, where)
            failed = HitResult(Outcome.ERROR, None, f"internal error while sending: {where}")
            results = [failed] * len(batch.hits)
        return Sent([SendOutcome(hit, r) for hit, r in zip(batch.hits, results, strict=True)])


def _outcomes(group: Sequence[Sent]) -> list[SendOutcome]:
    return [outcome for sent in group for outcome in sent.outcomes]


def _sort(ready: list[Report], waiting: set[tuple[int, str]], sent: SentRound) -> list[Sent]:
    """File the reports; the requests that have results."""
    fresh = []
    for item in ready:
        if isinstance(item, Unstarted):
            for hit in item.batch.hits:
                waiting.discard((hit.event_id, hit.pair))
                sent.unstarted.add(hit.event_id)
            continue
        sent.batches_done += 1
        for outcome in item.outcomes:
            waiting.discard((outcome.event_id, outcome.hit.pair))
            sent.outcomes.append(outcome)
            sent.by_event.setdefault(outcome.event_id, []).append(outcome)
        fresh.append(item)
    return fresh
