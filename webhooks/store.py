"""The request path's storage: one delivery and its events in one transaction.

Both idempotency levels are unique constraints (see schema.py), used with INSERT .. ON CONFLICT
DO NOTHING so a duplicate is an ordinary outcome, never an exception and never a 500.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, TextClause, and_, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from webhooks.config import GoalSet, SourceSettings
from webhooks.database import transaction
from webhooks.errors import StorageError
from webhooks.events import (
    SENDABLE_KINDS,
    CustomerRedaction,
    EventKind,
    NormalizedEvent,
    ParseResult,
)
from webhooks.reasons import NO_GOALS, NOT_SENT_KIND, QUEUED, TEST_MODE, WAITING_FOR_PAIRS
from webhooks.schema import deliveries, events

_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class IngestOutcome:
    status: str  # accepted | duplicate | ignored
    reason: str | None
    delivery_id: int | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_pending(self) -> bool:
        return any(e["state"] == "pending" for e in self.events)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "delivery_id": self.delivery_id}
        if self.reason:
            body["reason"] = self.reason
        if self.events:
            body["events"] = self.events
        return body


@dataclass(frozen=True)
class Delivery:
    """What a route hands to the store: who sent it, what it said, what it means."""

    source: SourceSettings
    project_id: str
    goals: Mapping[EventKind, GoalSet]
    headers: Mapping[str, str]
    body: bytes
    result: ParseResult


def insert_ignore(
    conn: Connection, table: Table, values: Mapping[str, Any], keys: list[str]
) -> int | None:
    """Insert a row unless it collides on `keys`; the new id, or None for a duplicate."""
    statement = _insert_ignore_statement(table, tuple(values), tuple(keys))
    return conn.execute(statement, dict(values)).scalar()


@functools.cache
def _insert_ignore_statement(
    table: Table, columns: tuple[str, ...], keys: tuple[str, ...]
) -> TextClause:
    # Plain SQL that SQLite (3.35+) and PostgreSQL both speak. SQLAlchemy's dialect inserts
    # with on_conflict_do_nothing() are never cached, so each request would compile one:
    # most of the request's CPU time. A text() statement is compiled once.
    names = ", ".join(columns)
    params = ", ".join(f":{c}" for c in columns)
    return text(
        f"INSERT INTO {table.name} ({names}) VALUES ({params}) "
        f"ON CONFLICT ({', '.join(keys)}) DO NOTHING RETURNING id"
    )


def ingest(engine: Engine, delivery: Delivery, now: float) -> IngestOutcome:
    """Store the delivery and its events atomically; StorageError if the database fails."""
    try:
        with transaction(engine) as conn:
            return _ingest(conn, delivery, now)
    except SQLAlchemyError as exc:
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc


def store_rejected(
    engine: Engine,
    source: SourceSettings,
    headers: Mapping[str, str],
    body: bytes,
    key: str,
    topic: str,
    reason: str,
    now: float,
) -> None:
    """Keep a signed body we could not parse, so nothing is lost and it can be replayed."""
    try:
        with transaction(engine) as conn:
            insert_ignore(
                conn,
                deliveries,
                _delivery_row(source, headers, body, key, topic, now)
                | {"status": "rejected", "reason": reason},
                ["source", "delivery_key"],
            )
    except SQLAlchemyError as exc:
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc


def _delivery_row(
    source: SourceSettings,
    headers: Mapping[str, str],
    body: bytes,
    key: str,
    topic: str,
    now: float,
) -> dict[str, Any]:
    kept = {k: v for k, v in headers.items() if k.lower() not in _PRIVATE_HEADERS}
    return {
        "source": source.name,
        "platform": source.platform,
        "delivery_key": key[:255],
        "topic": topic[:128],
        "received_at": now,
        "headers": json.dumps(kept, sort_keys=True),
        "body": body,
        "redacted": False,
    }


def _ingest(conn: Connection, d: Delivery, now: float) -> IngestOutcome:
    result = d.result
    row = _delivery_row(d.source, d.headers, d.body, result.delivery_key, result.topic, now)
    # The common outcome is written with the row; _store_events corrects it when it differs.
    status = "accepted" if result.events else "ignored"
    delivery_id = insert_ignore(
        conn, deliveries, row | {"status": status, "reason": None}, ["source", "delivery_key"]
    )
    if delivery_id is None:
        return IngestOutcome("duplicate", "delivery already received", _existing_delivery(conn, d))
    return _store_events(conn, d, delivery_id, now, written_status=status)


def store_events(engine: Engine, delivery: Delivery, delivery_id: int, now: float) -> IngestOutcome:
    """Store the events of an already stored delivery (a replay); same rules as ingest."""
    try:
        with transaction(engine) as conn:
            return _store_events(conn, delivery, delivery_id, now, written_status=None)
    except SQLAlchemyError as exc:
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc


def _store_events(
    conn: Connection, d: Delivery, delivery_id: int, now: float, written_status: str | None
) -> IngestOutcome:
    result = d.result
    stored = [_store_event(conn, d, delivery_id, event, now) for event in result.events]
    if result.redaction:
        redact(conn, d.source.name, d.source.platform, result.redaction)
        _strip_body(conn, deliveries.c.id == delivery_id)
    status, reason = _delivery_status(result, stored)
    if status != written_status or reason:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(status=status, reason=reason)
        )
    return IngestOutcome(status, reason, delivery_id, stored)


def _delivery_status(result: ParseResult, stored: list[dict[str, Any]]) -> tuple[str, str | None]:
    if not stored:
        return "ignored", result.reason
    if all(e["duplicate"] for e in stored):
        return "duplicate", "purchase already counted from an earlier delivery"
    return "accepted", None


def _existing_delivery(conn: Connection, d: Delivery) -> int | None:
    return conn.execute(
        select(deliveries.c.id).where(
            deliveries.c.source == d.source.name,
            deliveries.c.delivery_key == d.result.delivery_key[:255],
        )
    ).scalar()


def initial_state(d: Delivery, event: NormalizedEvent) -> tuple[str, str | None, str | None]:
    """(state, reason code, reason) for a newly stored event."""
    if event.kind not in SENDABLE_KINDS:
        return "skipped", NOT_SENT_KIND, f"{event.kind} events are recorded, not sent to Convert"
    if event.test_mode and not d.source.allow_test_events:
        return "skipped", TEST_MODE, "test-mode order; the source does not allow test events"
    goals = d.goals.get(event.kind)
    if goals is None or not (goals.conversion or goals.transaction):
        return "skipped", NO_GOALS, f"no Convert goals configured for {event.kind}"
    return "pending", QUEUED, "queued: the dispatcher sends it next"


def _store_event(
    conn: Connection, d: Delivery, delivery_id: int, event: NormalizedEvent, now: float
) -> dict[str, Any]:
    state, code, reason = initial_state(d, event)
    money = event.revenue(d.source.revenue)
    values = {
        "delivery_id": delivery_id,
        "source": d.source.name,
        "platform": event.platform,
        "project_id": d.project_id,
        "kind": str(event.kind),
        "order_id": event.order_id[:255],
        "refund_of": event.refund_of,
        "amount": str(money.amount),
        "currency": money.currency,
        "item_count": event.item_count,
        "customer_id": event.customer_id,
        "email_digest": event.email_digest,
        "attributes": json.dumps(dict(event.attributes)),
        "test_mode": event.test_mode,
        "occurred_at": event.occurred_at,
        "state": state,
        "reason_code": code,
        "reason": reason,
        "attempts": 0,
        "revision": 0,
        "created_at": now,
        "horizon_start": now,
        "next_attempt_at": now,
        "updated_at": now,
    }
    keys = ["project_id", "platform", "order_id", "kind"]
    event_id = insert_ignore(conn, events, values, keys)
    summary = {"kind": str(event.kind), "order_id": event.order_id}
    if event_id is not None:
        return summary | {"id": event_id, "state": state, "reason": reason, "duplicate": False}
    existing_id = _merge_into_existing(conn, d.project_id, event, now)
    return summary | {
        "id": existing_id,
        "state": "duplicate",
        "duplicate": True,
        "reason": "purchase already counted",
    }


def _merge_into_existing(
    conn: Connection, project_id: str, event: NormalizedEvent, now: float
) -> int:
    """Add experiment data a later delivery brings to the stored, not yet sent event."""
    row = conn.execute(
        select(events).where(
            events.c.project_id == project_id,
            events.c.platform == event.platform,
            events.c.order_id == event.order_id[:255],
            events.c.kind == str(event.kind),
        )
    ).one()
    known = json.loads(row.attributes)
    added = {k: v for k, v in event.attributes.items() if k not in known}
    waiting = row.state == "skipped" and row.reason_code in WAITING_FOR_PAIRS
    if added and (row.state == "pending" or waiting):
        wake = (
            {
                "state": "pending",
                "reason_code": QUEUED,
                "reason": "queued: a later delivery brought the experiment data",
                "next_attempt_at": now,
            }
            if waiting
            else {}
        )
        conn.execute(
            update(events)
            .where(events.c.id == row.id)
            .values(
                attributes=json.dumps(known | added),
                revision=row.revision + 1,
                updated_at=now,
                **wake,
            )
        )
    return int(row.id)


def redact(conn: Connection, source: str, platform: str, redaction: CustomerRedaction) -> int:
    """Erase personal data of one customer (or a whole shop): bodies and customer references.

    Event amounts and ids stay: they carry no personal data and keep idempotency intact.
    """
    scope = and_(events.c.source == source, events.c.platform == platform)
    if not redaction.whole_shop:
        matches = []
        if redaction.customer_id:
            matches.append(events.c.customer_id == redaction.customer_id)
        if redaction.order_ids:
            matches.append(events.c.order_id.in_(redaction.order_ids))
            matches.append(events.c.refund_of.in_(redaction.order_ids))
        if not matches:
            return 0
        scope = and_(scope, or_(*matches))
    delivery_ids = select(events.c.delivery_id).where(scope).scalar_subquery()
    _strip_body(conn, deliveries.c.id.in_(delivery_ids))
    if redaction.whole_shop:
        _strip_body(conn, deliveries.c.source == source)
    result = conn.execute(
        update(events).where(scope).values(customer_id=None, email_digest=None, attributes="{}")
    )
    return int(result.rowcount)


def _strip_body(conn: Connection, where: Any) -> None:
    conn.execute(update(deliveries).where(where).values(body=b"", headers="{}", redacted=True))
