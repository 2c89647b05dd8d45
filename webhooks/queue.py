"""The dispatcher's storage: atomic, leased claims and recorded outcomes.

A claim sets a lease owner and expiry in one statement (PostgreSQL: FOR UPDATE SKIP LOCKED;
SQLite: the write lock of BEGIN IMMEDIATE), so several workers never take the same event. A
worker that dies leaves a lease that simply expires; its events are claimed again.
Functions take a Connection: the dispatcher groups them into two transactions per round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, or_, select, update

from webhooks.convert import ConvertRequest
from webhooks.schema import attempts, events, sends
from webhooks.sender import Outcome, SendResult
from webhooks.store import insert_ignore


@dataclass(frozen=True)
class Finish:
    """How a claimed event leaves the dispatcher."""

    state: str
    reason_code: str | None
    reason: str | None
    next_attempt_at: float | None = None
    attempted: bool = False  # Convert requests were made in this round
    only_if_revision: int | None = None  # skip the update if new data arrived meanwhile


def claim_due(
    conn: Connection, owner: str, now: float, limit: int, lease_seconds: int
) -> list[Row[Any]]:
    due = (
        select(events.c.id)
        .where(
            events.c.state == "pending",
            events.c.next_attempt_at <= now,
            or_(events.c.lease_until.is_(None), events.c.lease_until < now),
        )
        .order_by(events.c.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(events)
        .where(events.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=owner, lease_until=now + lease_seconds)
        .returning(*events.c)
    )
    return list(conn.execute(stmt).all())


def prepare_sends(
    conn: Connection, plan: Iterable[tuple[int, Sequence[ConvertRequest]]]
) -> list[Row[Any]]:
    """Create the per-pair send rows (once) and return those still to be sent."""
    event_ids = []
    for event_id, requests in plan:
        event_ids.append(event_id)
        for request in requests:
            values = {
                "event_id": event_id,
                "pair": request.pair,
                "url": request.url,
                "state": "pending",
                "attempts": 0,
            }
            insert_ignore(conn, sends, values, ["event_id", "pair"])
    if not event_ids:
        return []
    query = select(sends).where(sends.c.event_id.in_(event_ids), sends.c.state == "pending")
    return list(conn.execute(query.order_by(sends.c.id)).all())


_SEND_STATE = {
    Outcome.SENT: "sent",
    Outcome.DRY_RUN: "dry_run",
    Outcome.PERMANENT: "dead",
    Outcome.RETRY: "pending",
}


def record_results(
    conn: Connection, results: Sequence[tuple[Row[Any], SendResult]], now: float
) -> None:
    if not results:
        return
    conn.execute(
        insert(attempts),
        [
            {
                "send_id": row.id,
                "at": now,
                "outcome": str(result.outcome),
                "status_code": result.status_code,
                "detail": result.detail,
            }
            for row, result in results
        ],
    )
    for row, result in results:
        done = result.outcome in (Outcome.SENT, Outcome.DRY_RUN)
        conn.execute(
            update(sends)
            .where(sends.c.id == row.id)
            .values(
                state=_SEND_STATE[result.outcome],
                attempts=sends.c.attempts + 1,
                last_status=result.status_code,
                last_error=None if done else result.detail,
                sent_at=now if done else None,
            )
        )


def send_states(conn: Connection, event_ids: Sequence[int]) -> dict[int, list[Row[Any]]]:
    by_event: dict[int, list[Row[Any]]] = {event_id: [] for event_id in event_ids}
    if event_ids:
        for row in conn.execute(select(sends).where(sends.c.event_id.in_(event_ids))):
            by_event[row.event_id].append(row)
    return by_event


def finish(
    conn: Connection, owner: str, now: float, outcomes: Sequence[tuple[Row[Any], Finish]]
) -> None:
    """Record each event's new state and release its lease (only if we still hold it)."""
    for row, done in outcomes:
        where = and_(events.c.id == row.id, events.c.lease_owner == owner)
        if done.only_if_revision is not None:
            where = and_(where, events.c.revision == done.only_if_revision)
        values: dict[str, Any] = {
            "state": done.state,
            "reason_code": done.reason_code,
            "reason": done.reason,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
        }
        if done.next_attempt_at is not None:
            values["next_attempt_at"] = done.next_attempt_at
        if done.attempted:
            values["attempts"] = events.c.attempts + 1
        updated = conn.execute(update(events).where(where).values(**values)).rowcount
        if not updated and done.only_if_revision is not None:
            # New experiment data arrived while we worked: leave it due now.
            conn.execute(
                update(events)
                .where(events.c.id == row.id, events.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None, next_attempt_at=now)
            )
