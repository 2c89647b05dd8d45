"""The dispatcher's storage: atomic, leased claims and recorded outcomes.

A claim sets a lease owner and expiry in one statement (PostgreSQL: FOR UPDATE SKIP LOCKED;
SQLite: the write lock of BEGIN IMMEDIATE), so several workers never take the same event. A
worker that dies leaves a lease that simply expires; its events are claimed again. Each round
claims under its own owner token, and an event's state is only ever written by the round that
holds its lease, so a round that lost its lease cannot overwrite the work of the next owner.

Send results are facts (Convert got the request, or answered so): they are recorded while the
round runs, in small group commits, whoever holds the lease by then, and a `sent` request stays
sent. A worker taking over an expired lease reads them and resends only what is not known.
Statements run once per group (executemany), not once per event: the database lock is shared
with the request path, so its hold time is kept small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, func, or_, select, text, update

from webhooks.core.hits import SendOutcome
from webhooks.core.settings import ConvertFormat
from webhooks.core.states import SEND_STATE_OF, EventState, Outcome, Reason, SendState
from webhooks.storage.schema import DETAILS_FETCHED, events, sends


@dataclass(frozen=True)
class Attributed:
    """Where an event's experiment pairs were found."""

    place: str  # e.g. "order attribute 'convert_experiments'"
    format: str  # e.g. "plain"
    visitor_id: str | None = None


@dataclass(frozen=True)
class FetchedDetails:
    """An event's details as the platform's API gave them, in the form of its columns: they
    replace the provisional values (see schema.py, `details`)."""

    amount: str  # Decimal as text
    currency: str
    item_count: int
    attributes: str  # JSON object: the event's own attributes and the ones the API added
    customer_id: str | None
    email_digest: str | None  # as stored (keyed when a key is configured)


@dataclass(frozen=True)
class Finish:
    """How a claimed event leaves the dispatcher."""

    state: EventState
    reason_code: Reason | None
    reason: str | None
    next_attempt_at: float | None = None
    attempted: bool = False  # Convert requests were made in this round
    only_if_revision: int | None = None  # skip the update if new data arrived meanwhile
    attributed: Attributed | None = None  # None: not attributed (yet)
    details: FetchedDetails | None = None  # read from the platform's API in this round


@dataclass(frozen=True)
class KnownSend:
    """What is known of one (event, experiment pair) Convert hit."""

    pair: str
    state: SendState
    last_status: int | None
    last_error: str | None


UNSENT = KnownSend("", SendState.PENDING, None, None)


def claim_due(
    conn: Connection,
    owner: str,
    now: float,
    limit: int,
    lease_seconds: int,
    lease_now: float | None = None,
    ignore_due: bool = False,
) -> list[Row[Any]]:
    """Lease up to `limit` pending events due by `now` (the host's clock, which wrote the due
    times) whose lease ended by `lease_now` (the clock leases are kept on, see clock.py).
    `ignore_due` takes the earliest pending events even if not due yet: the probe after an
    outage, so recovery is noticed without waiting out the backoff."""
    lease_now = now if lease_now is None else lease_now
    conditions = [
        events.c.state == EventState.PENDING,
        or_(events.c.lease_until.is_(None), events.c.lease_until < lease_now),
    ]
    if not ignore_due:
        conditions.append(events.c.next_attempt_at <= now)
    due = select(events.c.id).where(*conditions).order_by(events.c.next_attempt_at).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(events)
        .where(events.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=owner, lease_until=lease_now + lease_seconds)
        .returning(*events.c)
    )
    return list(conn.execute(stmt).all())


def sends_of(conn: Connection, event_ids: Sequence[int]) -> dict[int, dict[str, KnownSend]]:
    found: dict[int, dict[str, KnownSend]] = {event_id: {} for event_id in event_ids}
    if not event_ids:
        return found
    query = select(
        sends.c.event_id, sends.c.pair, sends.c.state, sends.c.last_status, sends.c.last_error
    ).where(sends.c.event_id.in_(event_ids))
    for row in conn.execute(query):
        found[row.event_id][row.pair] = KnownSend(
            row.pair, SendState(row.state), row.last_status, row.last_error
        )
    return found


def known_send(outcome: SendOutcome) -> KnownSend:
    result = outcome.result
    return KnownSend(
        outcome.hit.pair, SEND_STATE_OF[result.outcome], result.status_code, result.detail
    )


# A request Convert accepted stays `sent`: a late result of the same request from a round
# that lost its lease (a 503 on its copy) must not make it look unsent.
_KEEP_IF_SENT = (
    f"CASE WHEN sends.state = '{SendState.SENT}' THEN sends.{{0}} ELSE excluded.{{0}} END"
)
_UPSERT_SEND = text(
    "INSERT INTO sends (event_id, pair, format, payload, state, attempts, last_status,"
    " last_error, sent_at) VALUES (:event_id, :pair, :format, :payload, :state, 1,"
    " :last_status, :last_error, :sent_at)"
    " ON CONFLICT (event_id, pair) DO UPDATE SET format = excluded.format,"
    " payload = excluded.payload,"
    f" state = {_KEEP_IF_SENT.format('state')}, attempts = sends.attempts + 1,"
    f" last_status = {_KEEP_IF_SENT.format('last_status')},"
    f" last_error = {_KEEP_IF_SENT.format('last_error')},"
    f" sent_at = {_KEEP_IF_SENT.format('sent_at')}"
)
_INSERT_ATTEMPT = text(
    "INSERT INTO attempts (event_id, pair, at, outcome, status_code, detail)"
    " VALUES (:event_id, :pair, :at, :outcome, :status_code, :detail)"
)
_FINISH_EVENT = text(
    "UPDATE events SET state = :state, reason_code = :reason_code, reason = :reason,"
    " next_attempt_at = COALESCE(:next_attempt_at, next_attempt_at),"
    " attempts = attempts + :increment, lease_owner = NULL, lease_until = NULL,"
    " attributed_from = :place, attribution_format = :format, visitor_id = :visitor_id,"
    " amount = COALESCE(:d_amount, amount), currency = COALESCE(:d_currency, currency),"
    " item_count = COALESCE(:d_items, item_count),"
    " attributes = COALESCE(:d_attributes, attributes),"
    " customer_id = COALESCE(:d_customer, customer_id),"
    " email_digest = COALESCE(:d_digest, email_digest), details = COALESCE(:d_state, details),"
    " updated_at = :now WHERE id = :id AND lease_owner = :owner"
)


def record_round(
    conn: Connection,
    owner: str,
    now: float,
    outcomes: Sequence[SendOutcome],
    finishes: Sequence[tuple[Row[Any], Finish]],
) -> None:
    """Send results, attempts, and each event's new state, releasing its lease."""
    record_sends(conn, now, outcomes)
    finish_events(conn, owner, now, finishes)


def record_sends(conn: Connection, now: float, outcomes: Sequence[SendOutcome]) -> None:
    """What Convert answered (or that it could not be reached), and one attempt row each."""
    if not outcomes:
        return
    conn.execute(_UPSERT_SEND, [_send_row(o, now) for o in outcomes])
    conn.execute(
        _INSERT_ATTEMPT,
        [
            {
                "event_id": o.event_id,
                "pair": o.hit.pair,
                "at": now,
                "outcome": str(o.result.outcome),
                "status_code": o.result.status_code,
                "detail": o.result.detail,
            }
            for o in outcomes
        ],
    )


def finish_events(
    conn: Connection, owner: str, now: float, finishes: Sequence[tuple[Row[Any], Finish]]
) -> None:
    """Each event's new state, releasing its lease; only where `owner` still holds it."""
    plain = [(row, done) for row, done in finishes if done.only_if_revision is None]
    if plain:
        conn.execute(
            _FINISH_EVENT,
            [
                {
                    "id": row.id,
                    "owner": owner,
                    "now": now,
                    "state": done.state,
                    "reason_code": done.reason_code,
                    "reason": done.reason,
                    "next_attempt_at": done.next_attempt_at,
                    "increment": int(done.attempted),
                    **_attribution(done),
                    **_details(done.details),
                }
                for row, done in plain
            ],
        )
    for row, done in finishes:
        if done.only_if_revision is not None:
            _finish_unless_revised(conn, owner, now, row, done)


def _attribution(done: Finish) -> dict[str, str | None]:
    found = done.attributed
    return {
        "place": found.place if found else None,
        "format": found.format if found else None,
        "visitor_id": found.visitor_id if found else None,
    }


_NO_DETAILS = {
    "d_amount": None,
    "d_currency": None,
    "d_items": None,
    "d_attributes": None,
    "d_customer": None,
    "d_digest": None,
    "d_state": None,
}


def _details(found: FetchedDetails | None) -> dict[str, Any]:
    """The columns the details replace (None: each keeps its value, via COALESCE)."""
    if found is None:
        return _NO_DETAILS
    return {
        "d_amount": found.amount,
        "d_currency": found.currency,
        "d_items": found.item_count,
        "d_attributes": found.attributes,
        "d_customer": found.customer_id,
        "d_digest": found.email_digest,
        "d_state": DETAILS_FETCHED,
    }


def _details_values(found: FetchedDetails | None) -> dict[str, Any]:
    """The same as column values for an update() (only what the details give)."""
    if found is None:
        return {}
    values: dict[str, Any] = {
        "amount": found.amount,
        "currency": found.currency,
        "item_count": found.item_count,
        "attributes": found.attributes,
        "details": DETAILS_FETCHED,
    }
    if found.customer_id is not None:
        values["customer_id"] = found.customer_id
    if found.email_digest is not None:
        values["email_digest"] = found.email_digest
    return values


def _send_row(outcome: SendOutcome, now: float) -> dict[str, Any]:
    result = outcome.result
    done = result.outcome in (Outcome.SENT, Outcome.DRY_RUN)
    return {
        "event_id": outcome.event_id,
        "pair": outcome.hit.pair,
        "format": outcome.hit.format,
        "payload": outcome.hit.payload,
        "state": SEND_STATE_OF[result.outcome],
        "last_status": result.status_code,
        "last_error": None if done else result.detail,
        "sent_at": now if done else None,
    }


def _finish_unless_revised(
    conn: Connection, owner: str, now: float, row: Row[Any], done: Finish
) -> None:
    held = and_(events.c.id == row.id, events.c.lease_owner == owner)
    released = {"lease_owner": None, "lease_until": None, "updated_at": now}
    due = {} if done.next_attempt_at is None else {"next_attempt_at": done.next_attempt_at}
    found = done.attributed
    updated = conn.execute(
        update(events)
        .where(held, events.c.revision == done.only_if_revision)
        .values(
            state=done.state,
            reason_code=done.reason_code,
            reason=done.reason,
            attributed_from=found.place if found else None,
            attribution_format=found.format if found else None,
            visitor_id=found.visitor_id if found else None,
            **_details_values(done.details),
            **due,
            **released,
        )
    ).rowcount
    if not updated:
        # New experiment data arrived while we worked: leave it due now. Details read in this
        # round are not kept (their attributes would replace the new data): read again.
        conn.execute(update(events).where(held).values(next_attempt_at=now, **released))


_WAKE_DEFERRED = text(
    f"UPDATE events SET next_attempt_at = :now WHERE state = '{EventState.PENDING}'"
    " AND reason_code = :retrying AND next_attempt_at > :now AND updated_at >= :since"
    " AND lease_owner IS NULL"
)


def wake_deferred(conn: Connection, since: float, now: float) -> int:
    """Make events that failed retryably since `since` (an outage) due now; their number."""
    result = conn.execute(_WAKE_DEFERRED, {"now": now, "since": since, "retrying": Reason.RETRYING})
    return int(result.rowcount)


def pending_by_format(conn: Connection) -> dict[str, int]:
    """Pending events per Convert format they were stored with (NULL, stored before the
    choice existed, counts as legacy)."""
    fmt = func.coalesce(events.c.convert_format, ConvertFormat.LEGACY.value)
    query = select(fmt, func.count()).where(events.c.state == EventState.PENDING).group_by(fmt)
    return {str(name): int(count) for name, count in conn.execute(query)}
