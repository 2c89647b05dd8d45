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
from webhooks.core.errors import PARSE_FAILURES, ConvertWebhooksError, PayloadError
from webhooks.core.events import ParseResult
from webhooks.core.logs import describe, escape
from webhooks.core.settings import Settings, SourceSettings
from webhooks.core.states import EventState, Reason, SendState
from webhooks.storage.ingest import Delivery, IngestOutcome, checked_transaction, store_events
from webhooks.storage.schema import deliveries, events, sends

RESENDABLE_STATES = (EventState.DEAD, EventState.SKIPPED, EventState.DRY_RUN)
MAX_ID = 2**63 - 1  # ids are BIGINT; a larger number names nothing (and SQLite cannot bind it)


class ReplayError(ConvertWebhooksError):
    """The thing asked for cannot be replayed (unknown, erased, its source is gone, or its
    body still cannot be read or stored)."""


def replay_delivery(
    engine: Engine, settings: Settings, delivery_id: int, now: float
) -> IngestOutcome:
    if not 0 < delivery_id <= MAX_ID:
        raise ReplayError(f"no delivery {delivery_id}")
    with checked_transaction(engine) as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
    if row is None:
        raise ReplayError(f"no delivery {delivery_id}")
    if row.redacted:
        raise ReplayError(f"delivery {delivery_id} was erased on the platform's request")
    source = settings.sources.get(row.source)
    if source is None:
        raise ReplayError(f"source '{escape(row.source)}' is no longer configured")
    headers = json.loads(row.headers)
    result = _parse(source, headers, row.body, delivery_id)
    delivery = Delivery(
        source,
        settings.convert.project_id,
        settings.goals,
        headers,
        row.body,
        result,
        email_key=settings.privacy.email_key,
        convert_format=settings.convert.format,  # events it stores now are new events
    )
    try:
        return store_events(engine, delivery, delivery_id, now)
    except PayloadError as exc:  # UnstorableError: the database refuses a value
        raise ReplayError(f"delivery {delivery_id} cannot be stored: {escape(str(exc))}") from exc


def _parse(
    source: SourceSettings, headers: dict[str, str], body: bytes, delivery_id: int
) -> ParseResult:
    """Parse a stored body again; a body that still fails says why (escaped: the message
    reaches a terminal), whatever the parser raised."""
    try:
        return REGISTRY[source.platform].parser(source.options)(headers, body)
    except PayloadError as exc:
        reason = escape(str(exc))
    except PARSE_FAILURES as exc:
        reason = f"unreadable payload ({describe(exc)})"
    raise ReplayError(f"delivery {delivery_id} still cannot be read: {reason}")


def resend_events(engine: Engine, event_ids: Sequence[int] | None, now: float) -> list[int]:
    """Queue events again (all dead ones when `event_ids` is None); returns the ids queued."""
    if event_ids is not None:
        event_ids = [i for i in event_ids if 0 < i <= MAX_ID]  # others name no event
    with checked_transaction(engine) as conn:
        query = select(events.c.id, events.c.state)
        query = (
            query.where(events.c.state == EventState.DEAD)
            if event_ids is None
            else query.where(events.c.id.in_(event_ids))
        )
        rows = conn.execute(query).all()
        chosen = [r.id for r in rows if r.state in RESENDABLE_STATES]
        if not chosen:
            return []
        conn.execute(
            update(sends)
            .where(
                sends.c.event_id.in_(chosen),
                sends.c.state.in_((SendState.DEAD, SendState.DRY_RUN)),
            )
            .values(state=SendState.PENDING)
        )
        values: dict[str, Any] = {
            "state": EventState.PENDING,
            "reason_code": Reason.QUEUED,
            "reason": "queued again by replay",
            "next_attempt_at": now,
            "horizon_start": now,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
        }
        conn.execute(update(events).where(events.c.id.in_(chosen)).values(**values))
        return chosen
