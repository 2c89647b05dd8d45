"""Retention: delete delivered data older than a horizon, in short batches.

A delivery is pruned when it was received before the horizon and each of its events is
finished (sent, dry_run or skipped) and was last changed before the horizon; its events, their
Convert requests (sends) and attempts go with it. Deliveries without events (ignored,
duplicate, rejected) older than the horizon go too. Pending and dead events stay, with their
delivery: a pending one is still being sent, and a dead one waits for an operator to act
(`convert-webhooks replay --dead`).

Nothing inside the horizon is touched, so both idempotency levels hold there as before; the
horizon (at least MIN_KEEP_DAYS) is longer than any platform's retry window. Each batch is one
short transaction, because the database lock is shared with the request path. Several workers
may prune at once: on PostgreSQL a batch skips the rows another pruner holds, on SQLite the
batches take turns.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from webhooks.core.clock import Clock
from webhooks.core.errors import ConfigError, StorageError
from webhooks.core.logs import describe
from webhooks.core.settings import MIN_KEEP_DAYS, RetentionSettings
from webhooks.core.states import EventState
from webhooks.storage.database import is_postgres, transaction
from webhooks.storage.schema import attempts, deliveries, events, readiness, sends

log = logging.getLogger(__name__)

FINISHED_STATES = (EventState.SENT, EventState.DRY_RUN, EventState.SKIPPED)
BATCH_SIZE = 200
# A batch holds the lock the request path waits for: batches shrink while one takes longer
# than this (a large table, a slow disk) and grow back while they are quick.
BATCH_SECONDS = 0.05
DAY = 86400.0


@dataclass
class PruneCounts:
    deliveries: int = 0
    events: int = 0
    sends: int = 0
    attempts: int = 0
    kept: int = 0  # deliveries older than the horizon kept for their pending or dead events

    def add(self, other: PruneCounts) -> None:
        for each in fields(self):
            setattr(self, each.name, getattr(self, each.name) + getattr(other, each.name))


def horizon(now: float, keep_days: float) -> float:
    """Data received (or last changed) before this time may be pruned."""
    if keep_days < MIN_KEEP_DAYS:
        raise ConfigError(
            {"retention.keep_days": f"must be at least {MIN_KEEP_DAYS:g} days (platform retries)"}
        )
    return now - keep_days * DAY


def prune(
    engine: Engine,
    now: float,
    keep_days: float,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    pause: float = 0.0,
    stop: threading.Event | None = None,
) -> PruneCounts:
    """Delete (or with `dry_run` only count) what is older than `keep_days` and finished;
    `stop` ends it between two batches (a worker shutting down)."""
    before = horizon(now, keep_days)
    counts = PruneCounts()
    last = _last_old_delivery(engine, before)
    after, size = 0, batch_size
    while after < last and not (stop and stop.is_set()):
        started = time.monotonic()
        batch, after = _batch(engine, before, after, last, size, dry_run)
        counts.add(batch)
        size = _next_size(size, time.monotonic() - started, batch_size)
        if pause:
            time.sleep(pause)  # let the request path have the lock between batches
    if not dry_run:
        with transaction(engine) as conn:
            conn.execute(delete(readiness).where(readiness.c.checked_at < before))
    return counts


def _next_size(size: int, took: float, largest: int) -> int:
    if took > BATCH_SECONDS:
        return max(1, size // 2)
    if took < BATCH_SECONDS / 4:
        return min(largest, size * 2)
    return size


def _last_old_delivery(engine: Engine, before: float) -> int:
    """The id of the newest delivery received before the horizon (0 if none): the batches
    walk ids up to it, so they never scan the recent deliveries."""
    query = (
        select(deliveries.c.id)
        .where(deliveries.c.received_at < before)
        .order_by(deliveries.c.received_at.desc())
        .limit(1)
    )
    with transaction(engine) as conn:
        return int(conn.execute(query).scalar() or 0)


def _batch(
    engine: Engine, before: float, after: int, last: int, size: int, dry_run: bool
) -> tuple[PruneCounts, int]:
    """One transaction over up to `size` old deliveries with ids in (after, last]."""
    with transaction(engine) as conn:
        window = (
            select(deliveries.c.id)
            .where(deliveries.c.id > after, deliveries.c.id <= last)
            .where(deliveries.c.received_at < before)
            .order_by(deliveries.c.id)
            .limit(size)
        )
        ids = [row.id for row in conn.execute(_locked(engine, window, skip=True))]
        if not ids:
            return PruneCounts(), last
        rows = conn.execute(
            _locked(
                engine,
                select(events.c.id, events.c.delivery_id, events.c.state, events.c.updated_at)
                .where(events.c.delivery_id.in_(ids))
                .order_by(events.c.id),
            )
        ).all()
        keep = {r.delivery_id for r in rows if r.state not in FINISHED_STATES}
        keep |= {r.delivery_id for r in rows if r.updated_at >= before}
        gone = [i for i in ids if i not in keep]
        event_ids = [r.id for r in rows if r.delivery_id not in keep]
        counts = _count(conn, gone, event_ids) if dry_run else _delete(conn, gone, event_ids)
        counts.kept = len(keep)
        return counts, ids[-1]


def _locked(engine: Engine, query: Any, skip: bool = False) -> Any:
    """Rows locked until the batch commits (PostgreSQL; SQLite's write lock covers it): an
    event cannot be replayed, nor a delivery get a new event, between the check and the
    delete. `skip`: rows another pruner holds are left to it."""
    return query.with_for_update(skip_locked=skip) if is_postgres(engine) else query


def _delete(conn: Connection, delivery_ids: Sequence[int], event_ids: Sequence[int]) -> PruneCounts:
    counts = PruneCounts()
    if event_ids:
        counts.attempts = _rowcount(
            conn, delete(attempts).where(attempts.c.event_id.in_(event_ids))
        )
        counts.sends = _rowcount(conn, delete(sends).where(sends.c.event_id.in_(event_ids)))
        counts.events = _rowcount(conn, delete(events).where(events.c.id.in_(event_ids)))
    if delivery_ids:
        counts.deliveries = _rowcount(
            conn, delete(deliveries).where(deliveries.c.id.in_(delivery_ids))
        )
    return counts


def _rowcount(conn: Connection, statement: Any) -> int:
    return int(conn.execute(statement).rowcount)


def _count(conn: Connection, delivery_ids: Sequence[int], event_ids: Sequence[int]) -> PruneCounts:
    def children(table: Any) -> int:
        if not event_ids:
            return 0
        query = select(func.count()).select_from(table).where(table.c.event_id.in_(event_ids))
        return int(conn.execute(query).scalar_one())

    return PruneCounts(len(delivery_ids), len(event_ids), children(sends), children(attempts))


class Pruner:
    """Prunes on a schedule in a background thread (one per worker; see the module doc for
    why several at once are harmless). The first run comes after a random part of the
    interval, so workers started together do not prune together."""

    def __init__(self, engine: Engine, settings: RetentionSettings, clock: Clock) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="pruner", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        interval = self.settings.prune_interval_seconds
        delay = random.uniform(0.1, 1.0) * interval
        while not self._stop.wait(delay):
            self.run_once()
            delay = interval

    def run_once(self) -> PruneCounts | None:
        """One prune; a failure is logged and the next run tries again."""
        keep_days = self.settings.keep_days
        try:
            counts = prune(self.engine, self.clock.now(), keep_days, pause=0.01, stop=self._stop)
        except (StorageError, SQLAlchemyError) as exc:
            log.warning(
                "prune: database unavailable (%s); next run tries again", type(exc).__name__
            )
            return None
        except Exception as exc:  # the schedule must outlive any one failure
            log.error("prune failed (%s); next run tries again", describe(exc))
            return None
        if counts.deliveries or counts.kept:
            log.info(
                "pruned %d deliveries, %d events, %d sends, %d attempts older than %g days; "
                "kept %d older deliveries whose events are pending, dead or changed since",
                counts.deliveries,
                counts.events,
                counts.sends,
                counts.attempts,
                keep_days,
                counts.kept,
            )
        return counts
