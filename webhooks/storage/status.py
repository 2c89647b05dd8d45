"""Read-only queries behind the status page (/admin): source health, counts by state, the
attribution rate, recent failures and the last Convert requests. Every list is bounded.

On SQLite these reads run on their own connection in a plain (deferred) read transaction,
not through `database.transaction()`: that one takes the write lock shared with the request
path, and a page of counts must never hold up a webhook. In WAL mode a reader and the writer
do not wait for each other. On PostgreSQL readers never block writers anyway; the
transaction is marked READ ONLY.
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, case, create_engine, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from webhooks.core.errors import StorageError
from webhooks.core.states import WAITING_FOR_PAIRS, DeliveryStatus, EventState, Reason
from webhooks.storage.database import sqlite_path, transaction
from webhooks.storage.schema import attempts, deliveries, events

MAX_ID = 2**63 - 1  # ids are BIGINT: a larger number names no event (SQLite cannot bind it)
RECENT_SECONDS = 86_400.0  # "deliveries in the last 24 hours"
ATTRIBUTION_SECONDS = 7 * 86_400.0  # the attribution rate covers a week of events
MAX_PLACES = 10  # places found listed per source
STATE_ORDER = (
    EventState.PENDING,
    EventState.SENT,
    EventState.DRY_RUN,
    EventState.SKIPPED,
    EventState.DEAD,
)


@dataclass(frozen=True)
class SourceHealth:
    name: str
    platform: str
    last_delivery_at: float | None  # the newest stored delivery (any status)
    deliveries_recent: int  # stored in the last RECENT_SECONDS
    rejected_recent: int  # of those: signed but unreadable or unstorable (answered 400)


@dataclass(frozen=True)
class StateCount:
    state: str
    reason_code: str | None
    count: int


@dataclass(frozen=True)
class Attribution:
    """Events of one source that went through attribution in the window: `attributed` had
    experiment pairs; the others were skipped for missing or unreadable data."""

    source: str
    decided: int
    attributed: int
    places: tuple[tuple[str, int], ...]  # where the pairs were found, most used first

    @property
    def percent(self) -> float:
        return 100.0 * self.attributed / self.decided if self.decided else 0.0


@dataclass(frozen=True)
class EventRow:
    id: int
    source: str
    kind: str
    order_id: str
    state: str
    reason_code: str | None
    reason: str | None
    attempts: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class RequestRow:
    """One attempt to send a hit to Convert."""

    at: float
    event_id: int
    source: str
    order_id: str
    pair: str
    outcome: str
    status_code: int | None


@dataclass(frozen=True)
class Status:
    sources: tuple[SourceHealth, ...]
    states: tuple[StateCount, ...]
    oldest_pending_at: float | None
    attribution: tuple[Attribution, ...]
    dead: tuple[EventRow, ...]
    dead_count: int
    skipped: tuple[EventRow, ...]
    requests: tuple[RequestRow, ...]

    def count(self, state: str) -> int:
        return sum(c.count for c in self.states if c.state == state)

    def by_state(self) -> list[tuple[str, int, list[StateCount]]]:
        """(state, events, the counts by reason) for every state, in the order of a life."""
        order = [str(s) for s in STATE_ORDER]
        known = order + sorted({c.state for c in self.states} - set(order))
        return [
            (state, self.count(state), [c for c in self.states if c.state == state])
            for state in known
        ]

    @property
    def attributed(self) -> tuple[int, int]:
        """(with experiment data, went through attribution) over every source."""
        return (
            sum(a.attributed for a in self.attribution),
            sum(a.decided for a in self.attribution),
        )


@dataclass(frozen=True)
class EventDetail:
    event: EventRow
    amount: str
    currency: str
    attributed_from: str | None
    requests: tuple[RequestRow, ...]


_EVENT_COLUMNS = (
    events.c.id,
    events.c.source,
    events.c.kind,
    events.c.order_id,
    events.c.state,
    events.c.reason_code,
    events.c.reason,
    events.c.attempts,
    events.c.created_at,
    events.c.updated_at,
)


def read_status(engine: Engine, sources: Mapping[str, str], now: float, limit: int) -> Status:
    """Everything the page shows; `sources` maps each configured source to its platform.
    StorageError when the database cannot be read."""
    with reading(engine) as conn:
        states = _states(conn)
        return Status(
            sources=_sources(conn, sources, now),
            states=states,
            oldest_pending_at=_oldest_pending(conn),
            attribution=_attribution(conn, now - ATTRIBUTION_SECONDS),
            dead=_events_in(conn, EventState.DEAD, limit),
            dead_count=sum(c.count for c in states if c.state == EventState.DEAD),
            skipped=_events_in(conn, EventState.SKIPPED, limit),
            requests=_requests(conn, limit),
        )


def read_event(engine: Engine, event_id: int, limit: int) -> EventDetail | None:
    """One event and its latest Convert requests; None when there is no such event."""
    if not 0 < event_id <= MAX_ID:
        return None
    with reading(engine) as conn:
        row = conn.execute(
            select(
                *_EVENT_COLUMNS,
                events.c.amount,
                events.c.currency,
                events.c.attributed_from,
            ).where(events.c.id == event_id)
        ).first()
        if row is None:
            return None
        requests = _requests(conn, limit, event_id)
    return EventDetail(_event_row(row), row.amount, row.currency, row.attributed_from, requests)


def count_dead(engine: Engine) -> int:
    with reading(engine) as conn:
        query = select(func.count()).select_from(events).where(events.c.state == EventState.DEAD)
        return int(conn.execute(query).scalar_one())


def _sources(
    conn: Connection, configured: Mapping[str, str], now: float
) -> tuple[SourceHealth, ...]:
    # The recent ones through the received_at index; only a source quiet for the whole
    # window costs a look at its own rows (through the (source, delivery_key) key).
    recent = conn.execute(
        select(
            deliveries.c.source,
            func.max(deliveries.c.received_at),
            func.count(),
            func.sum(case((deliveries.c.status == DeliveryStatus.REJECTED, 1), else_=0)),
        )
        .where(deliveries.c.received_at >= now - RECENT_SECONDS)
        .group_by(deliveries.c.source)
    ).all()
    seen = {row[0]: (float(row[1]), int(row[2]), int(row[3] or 0)) for row in recent}
    health = []
    for name, platform in sorted(configured.items()):
        last, count, rejected = seen.get(name, (None, 0, 0))
        if last is None:
            older = conn.execute(
                select(func.max(deliveries.c.received_at)).where(deliveries.c.source == name)
            ).scalar()
            last = None if older is None else float(older)
        health.append(SourceHealth(name, platform, last, count, rejected))
    return tuple(health)


def _states(conn: Connection) -> tuple[StateCount, ...]:
    rows = conn.execute(
        select(events.c.state, events.c.reason_code, func.count())
        .group_by(events.c.state, events.c.reason_code)
        .order_by(events.c.state, events.c.reason_code)
    ).all()
    return tuple(StateCount(r[0], r[1], int(r[2])) for r in rows)


def _oldest_pending(conn: Connection) -> float | None:
    oldest = conn.execute(
        select(func.min(events.c.created_at)).where(events.c.state == EventState.PENDING)
    ).scalar()
    return None if oldest is None else float(oldest)


def _attribution(conn: Connection, since: float) -> tuple[Attribution, ...]:
    unattributed = tuple(str(r) for r in WAITING_FOR_PAIRS)
    rows = conn.execute(
        select(events.c.source, events.c.attributed_from, func.count())
        .where(
            events.c.created_at >= since,
            events.c.attributed_from.is_not(None) | events.c.reason_code.in_(unattributed),
        )
        .group_by(events.c.source, events.c.attributed_from)
    ).all()
    by_source: dict[str, list[tuple[str | None, int]]] = {}
    for source, place, count in rows:
        by_source.setdefault(source, []).append((place, int(count)))
    result = []
    for source, counts in sorted(by_source.items()):
        places = sorted(((p, n) for p, n in counts if p is not None), key=lambda x: (-x[1], x[0]))
        attributed = sum(n for _, n in places)
        decided = sum(n for _, n in counts)
        result.append(Attribution(source, decided, attributed, tuple(places[:MAX_PLACES])))
    return tuple(result)


def _events_in(conn: Connection, state: EventState, limit: int) -> tuple[EventRow, ...]:
    query = select(*_EVENT_COLUMNS).where(events.c.state == state)
    if state == EventState.SKIPPED:
        # Refunds and other kinds that are only recorded are skipped by design, not failures.
        query = query.where(events.c.reason_code != Reason.NOT_SENT_KIND)
    rows = conn.execute(
        query.order_by(events.c.updated_at.desc(), events.c.id.desc()).limit(limit)
    ).all()
    return tuple(_event_row(r) for r in rows)


def _requests(conn: Connection, limit: int, event_id: int | None = None) -> tuple[RequestRow, ...]:
    if limit <= 0:
        return ()
    query = select(
        attempts.c.at,
        attempts.c.event_id,
        events.c.source,
        events.c.order_id,
        attempts.c.pair,
        attempts.c.outcome,
        attempts.c.status_code,
    ).join(events, events.c.id == attempts.c.event_id)
    if event_id is not None:
        query = query.where(attempts.c.event_id == event_id)
    rows = conn.execute(query.order_by(attempts.c.id.desc()).limit(limit)).all()
    return tuple(
        RequestRow(float(r.at), r.event_id, r.source, r.order_id, r.pair, r.outcome, r.status_code)
        for r in rows
    )


def _event_row(r: Any) -> EventRow:
    return EventRow(
        r.id,
        r.source,
        r.kind,
        r.order_id,
        r.state,
        r.reason_code,
        r.reason,
        int(r.attempts or 0),
        float(r.created_at),
        float(r.updated_at),
    )


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that never waits for, nor holds up, the writers."""
    try:
        reader = _sqlite_reader(engine)
        if reader is not None:
            with reader.begin() as conn:
                yield conn
            return
        with transaction(engine) as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield conn
    except StorageError:
        raise
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc


_READERS: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
READ_TIMEOUT_SECONDS = 5.0  # SQLite's busy wait (a WAL reader waits only in rare cases)


def _sqlite_reader(engine: Engine) -> Engine | None:
    """An engine on the same SQLite file that begins plain read transactions; None for other
    databases and for an in-memory one (another connection would see another database).
    The file is opened `mode=rw`: a missing file is an error, never created empty. NullPool:
    nothing stays open between pages."""
    path = sqlite_path(engine.url) if engine.dialect.name == "sqlite" else None
    if path is None:
        return None
    reader = _READERS.get(engine)
    if reader is None:
        uri = f"file:{quote(os.path.abspath(path))}?mode=rw"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(
                uri, uri=True, timeout=READ_TIMEOUT_SECONDS, check_same_thread=False
            )

        reader = create_engine("sqlite://", creator=connect, poolclass=NullPool)
        event.listen(reader, "connect", _read_only)
        event.listen(reader, "begin", _begin_deferred)
        _READERS[engine] = reader
    return reader


def _read_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off: ours below
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _begin_deferred(connection: Connection) -> None:
    # A deferred BEGIN takes no lock until the first read, and then only a reader's: one
    # consistent snapshot for the whole page.
    connection.exec_driver_sql("BEGIN")
