"""What /metrics reads from the database at scrape time: the open events (pending and dead)
by source, state and reason, and when the oldest pending one was stored.

Two queries, both limited to open events through `ix_events_due` (state, next_attempt_at):
their cost follows the queue, not the millions of sent events kept for retention. On SQLite
they run in a deferred (read) transaction on a pooled connection: WAL readers take no write
lock, so a scrape never holds up a webhook's commit the way `transaction()` (BEGIN IMMEDIATE
under the file lock) would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Select, func, select

from webhooks.core.states import EventState
from webhooks.storage.schema import events

OPEN_STATES = (EventState.PENDING, EventState.DEAD)


@dataclass(frozen=True)
class OpenEvents:
    source: str
    state: str
    reason: str | None
    count: int


@dataclass(frozen=True)
class QueueGauges:
    open_events: tuple[OpenEvents, ...]
    oldest_pending_at: float | None  # created_at of the oldest pending event; None: none

    def count(self, state: str) -> int:
        return sum(each.count for each in self.open_events if each.state == state)


def read_gauges(engine: Engine) -> QueueGauges:
    """The database's share of a scrape. Raises what the driver raises (the caller reports
    the database as unreadable and serves the rest)."""
    by_reason = (
        select(events.c.source, events.c.state, events.c.reason_code, func.count())
        .where(events.c.state.in_([str(state) for state in OPEN_STATES]))
        .group_by(events.c.source, events.c.state, events.c.reason_code)
    )
    oldest = select(func.min(events.c.created_at)).where(events.c.state == str(EventState.PENDING))
    with _reading(engine) as run:
        rows = run(by_reason)
        (first,) = run(oldest)
    return QueueGauges(
        tuple(OpenEvents(str(r[0]), str(r[1]), r[2], int(r[3])) for r in rows),
        None if first[0] is None else float(first[0]),
    )


Run = Callable[[Select[Any]], Sequence[Sequence[Any]]]


@contextmanager
def _reading(engine: Engine) -> Iterator[Run]:
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:  # bounded by the engine's statement and lock timeouts
            yield lambda statement: [tuple(row) for row in conn.execute(statement)]
            conn.rollback()
        return
    # SQLAlchemy's begin would be BEGIN IMMEDIATE (database.py): the driver's own connection
    # is used instead, in autocommit mode there, with a deferred transaction around the reads.
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN DEFERRED")
        try:
            yield lambda statement: _run_sqlite(cursor, engine, statement)
        finally:
            cursor.execute("ROLLBACK")
            cursor.close()
    finally:
        raw.close()


def _run_sqlite(cursor: Any, engine: Engine, statement: Select[Any]) -> list[tuple[Any, ...]]:
    # Only our own constants are bound here (states), so inlining them is safe.
    compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    cursor.execute(str(compiled))
    return [tuple(row) for row in cursor.fetchall()]
