"""Replaying: re-run a stored delivery, or put dead events back in the queue.

Idempotency still holds: a replayed delivery goes through the same business-level unique
key, so a purchase already counted stays counted once; a resent event resends only the
Convert requests that did not succeed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update

from adapters import REGISTRY
from webhooks import reasons
from webhooks.config import Settings
from webhooks.database import transaction
from webhooks.errors import ConvertWebhooksError, PayloadError
from webhooks.schema import deliveries, events, sends
from webhooks.store import Delivery, IngestOutcome, store_events

RESENDABLE_STATES = ("dead", "skipped", "dry_run")


class ReplayError(ConvertWebhooksError):
    """The thing asked for cannot be replayed (unknown, erased, or its source is gone)."""


def replay_delivery(
    engine: Engine, settings: Settings, delivery_id: int, now: float
) -> IngestOutcome:
    with transaction(engine) as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
    if row is None:
        raise ReplayError(f"no delivery {delivery_id}")
    if row.redacted:
        raise ReplayError(f"delivery {delivery_id} was erased on the platform's request")
    source = settings.sources.get(row.source)
    if source is None:
        raise ReplayError(f"source '{row.source}' is no longer configured")
    headers = json.loads(row.headers)
    result = REGISTRY[source.platform].parse(headers, row.body)
    delivery = Delivery(
        source, settings.convert.project_id, settings.goals, headers, row.body, result
    )
    return store_events(engine, delivery, delivery_id, now)


def resend_events(engine: Engine, event_ids: Sequence[int] | None, now: float) -> list[int]:
    """Queue events again (all dead ones when `event_ids` is None); returns the ids queued."""
    with transaction(engine) as conn:
        query = select(events.c.id, events.c.state)
        query = (
            query.where(events.c.state == "dead")
            if event_ids is None
            else query.where(events.c.id.in_(event_ids))
        )
        rows = conn.execute(query).all()
        chosen = [r.id for r in rows if r.state in RESENDABLE_STATES]
        if not chosen:
            return []
        conn.execute(
            update(sends)
            .where(sends.c.event_id.in_(chosen), sends.c.state.in_(("dead", "dry_run")))
            .values(state="pending")
        )
        values: dict[str, Any] = {
            "state": "pending",
            "reason_code": reasons.QUEUED,
            "reason": "queued again by replay",
            "next_attempt_at": now,
            "horizon_start": now,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
        }
        conn.execute(update(events).where(events.c.id.in_(chosen)).values(**values))
        return chosen


__all__ = ["ReplayError", "replay_delivery", "resend_events", "PayloadError"]
