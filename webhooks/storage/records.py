"""Read-only views of what is stored, for the operator's CLI."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from webhooks.storage.database import transaction
from webhooks.storage.schema import attempts, deliveries, events, sends


def list_events(
    engine: Engine, state: str | None, source: str | None, limit: int, order: str | None = None
) -> list[Any]:
    query = select(events).order_by(events.c.id.desc()).limit(limit)
    if state:
        query = query.where(events.c.state == state)
    if source:
        query = query.where(events.c.source == source)
    if order:
        query = query.where((events.c.order_id == order) | (events.c.refund_of == order))
    with transaction(engine) as conn:
        return list(conn.execute(query).all())


MAX_ID = 2**63 - 1  # ids are BIGINT: a larger number names nothing (SQLite cannot bind it)


def event_detail(engine: Engine, event_id: int) -> dict[str, Any] | None:
    if not 0 < event_id <= MAX_ID:
        return None
    with transaction(engine) as conn:
        event = conn.execute(select(events).where(events.c.id == event_id)).first()
        if event is None:
            return None
        send_rows = conn.execute(
            select(sends).where(sends.c.event_id == event_id).order_by(sends.c.id)
        ).all()
        attempt_rows = conn.execute(
            select(attempts).where(attempts.c.event_id == event_id).order_by(attempts.c.id)
        ).all()
        delivery = conn.execute(
            select(deliveries.c.id, deliveries.c.topic, deliveries.c.delivery_key).where(
                deliveries.c.id == event.delivery_id
            )
        ).first()
    return {
        "event": dict(event._mapping),
        "delivery": dict(delivery._mapping) if delivery else None,
        "sends": [dict(s._mapping) for s in send_rows],
        "attempts": [dict(a._mapping) for a in attempt_rows],
    }


def list_deliveries(engine: Engine, status: str | None, limit: int) -> list[Any]:
    columns = [c for c in deliveries.c if c.name not in ("body", "headers")]
    query = select(*columns).order_by(deliveries.c.id.desc()).limit(limit)
    if status:
        query = query.where(deliveries.c.status == status)
    with transaction(engine) as conn:
        return list(conn.execute(query).all())
