"""The request path's storage: one delivery and its events in one transaction.

Both idempotency levels are unique constraints (see schema.py), used with INSERT .. ON CONFLICT
DO NOTHING so a duplicate is an ordinary outcome, never an exception and never a 500.

Values are stored as given, never cut to fit a column: a cut id could merge two purchases. A
value the database refuses anyway is an UnstorableError (400, the route keeps the body as
rejected); a database that cannot be reached or written is a StorageError (503, retried).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    TextClause,
    and_,
    delete,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.sql.elements import ColumnElement

from webhooks.core.errors import StorageError, UnstorableError
from webhooks.core.events import (
    SENDABLE_KINDS,
    CustomerRedaction,
    EventKind,
    NormalizedEvent,
    ParseResult,
)
from webhooks.core.logs import escape
from webhooks.core.settings import ConvertFormat, GoalSet, SourceSettings
from webhooks.core.states import WAITING_FOR_PAIRS, DeliveryStatus, EventState, Reason
from webhooks.storage.database import transaction
from webhooks.storage.digests import stored_digest
from webhooks.storage.schema import DETAILS_PENDING, deliveries, events, exposures

_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# What a driver raises for a value it cannot bind: sqlite3 an OverflowError for an int past
# 64 bits, both drivers a UnicodeEncodeError (a ValueError) for an unpaired surrogate.
VALUE_FAILURES = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)
MAX_STORED_REASON = 500
MAX_ADDRESS_CHARS = 320  # RFC 3696
UNREADABLE_TOPIC = "(unreadable)"
_TOPIC = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class IngestOutcome:
    status: str  # accepted | duplicate | ignored
    reason: str | None
    delivery_id: int | None
    events: list[dict[str, Any]] = field(default_factory=list)
    # (state, reason code) of each event this delivery newly stored (for the observer; not
    # in the answer).
    new_states: tuple[tuple[str, str], ...] = ()

    @property
    def has_pending(self) -> bool:
        return any(e["state"] == EventState.PENDING for e in self.events)

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
    # privacy.email_key: the email digests are stored keyed with it (storage/digests.py).
    email_key: bytes | None = field(default=None, repr=False)
    # convert.format when the delivery came: the events it stores keep it (a later switch of
    # format applies to new events only, so no purchase goes out in both).
    convert_format: ConvertFormat = ConvertFormat.LEGACY


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


@contextmanager
def checked_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction whose failures say whose fault they are: UnstorableError when the
    database refuses a value, StorageError when it is unavailable."""
    try:
        with transaction(engine) as conn:
            yield conn
    except StorageError:
        raise
    except SQLAlchemyError as exc:
        if is_refusal(exc):
            raise UnstorableError(refusal_message(exc)) from exc
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc
    except OSError as exc:  # the SQLite lock file or directory cannot be opened
        raise StorageError(f"database unavailable: {type(exc).__name__}") from exc
    except VALUE_FAILURES as exc:
        raise UnstorableError(refusal_message(exc)) from exc


def is_refusal(exc: SQLAlchemyError) -> bool:
    # DataError: too long for a PostgreSQL column, NUL in its text, out of range;
    # IntegrityError: a NOT NULL or foreign key broken by a value (our unique keys never
    # raise: ON CONFLICT DO NOTHING); a StatementError that is not the driver's wraps a bind
    # failure. The rest (OperationalError, InterfaceError, ...) is the database's state.
    if isinstance(exc, DataError | IntegrityError):
        return True
    return (
        isinstance(exc, StatementError)
        and not isinstance(exc, DBAPIError)
        and isinstance(exc.orig, VALUE_FAILURES)
    )


def refusal_message(exc: BaseException) -> str:
    """Names the kind of refusal, never the value (it may be personal data)."""
    orig = getattr(exc, "orig", None)
    cause = type(orig if isinstance(orig, BaseException) else exc).__name__
    return f"a value of the delivery cannot be stored ({cause})"


def ingest(engine: Engine, delivery: Delivery, now: float) -> IngestOutcome:
    """Store the delivery and its events atomically; UnstorableError if the database refuses
    a value, StorageError if it is unavailable."""
    with checked_transaction(engine) as conn:
        return ingest_into(conn, delivery, now)


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
    """Keep a signed body we could not parse or store, so nothing is lost and it can be
    replayed. Only values that always fit are written: the topic when it is a plain one, the
    reason escaped and capped, the headers as ASCII JSON, the body as bytes."""
    row = _delivery_row(source, headers, body, key, storable_topic(topic), now)
    with checked_transaction(engine) as conn:
        insert_ignore(
            conn,
            deliveries,
            row | {"status": DeliveryStatus.REJECTED, "reason": escape(reason)[:MAX_STORED_REASON]},
            ["source", "delivery_key"],
        )


def storable_topic(topic: str) -> str:
    """The topic if it is printable ASCII that fits its column, else a placeholder."""
    return topic if _TOPIC.fullmatch(topic) else UNREADABLE_TOPIC


def _delivery_row(
    source: SourceSettings,
    headers: Mapping[str, str],
    body: bytes,
    key: str,
    topic: str,
    now: float,
    refs: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    kept = {k: v for k, v in headers.items() if k.lower() not in _PRIVATE_HEADERS}
    return {
        "source": source.name,
        "platform": source.platform,
        "delivery_key": key,
        "topic": topic,
        "received_at": now,
        # ensure_ascii (the default): control characters and surrogates become \u escapes
        "headers": json.dumps(kept, sort_keys=True),
        "body": body,
        "redacted": False,
        "customer_id": refs[0],
        "email_digest": refs[1],
    }


def customer_refs(
    result: ParseResult, email_key: bytes | None = None
) -> tuple[str | None, str | None]:
    """Who the delivery is about (first customer id and email digest among its events), kept
    on the delivery row so a redaction finds every copy, duplicates included."""
    customer_id = next((e.customer_id for e in result.events if e.customer_id), None)
    digest = next((e.email_digest for e in result.events if e.email_digest), None)
    return customer_id, stored_digest(email_key, digest)


def ingest_into(conn: Connection, d: Delivery, now: float) -> IngestOutcome:
    result = d.result
    row = _delivery_row(
        d.source,
        d.headers,
        d.body,
        result.delivery_key,
        result.topic,
        now,
        customer_refs(result, d.email_key),
    )
    # The common outcome is written with the row; _store_events corrects it when it differs.
    status = DeliveryStatus.ACCEPTED if result.events else DeliveryStatus.IGNORED
    delivery_id = insert_ignore(
        conn, deliveries, row | {"status": status, "reason": None}, ["source", "delivery_key"]
    )
    if delivery_id is None:
        return IngestOutcome(
            DeliveryStatus.DUPLICATE, "delivery already received", _existing_delivery(conn, d))
    return _store_events(conn, d, delivery_id, now, written_status=status)


def store_events(engine: Engine, delivery: Delivery, delivery_id: int, now: float) -> IngestOutcome:
    """Store the events of an already stored delivery (a replay); same rules as ingest."""
    with checked_transaction(engine) as conn:
        return _store_events(conn, delivery, delivery_id, now, written_status=None)


def _store_events(
    conn: Connection, d: Delivery, delivery_id: int, now: float, written_status: str | None
) -> IngestOutcome:
    result = d.result
    made = [_store_event(conn, d, delivery_id, event, now) for event in result.events]
    stored = [summary for summary, _ in made]
    new_states = tuple(state for _, state in made if state is not None)
    if result.redaction:
        addresses = () if result.redaction.whole_shop else addresses_in(d.body)
        redact(
            conn, d.source.name, d.source.platform, result.redaction, addresses, d.email_key
        )
        _strip_body(conn, deliveries.c.id == delivery_id)
    status, reason = _delivery_status(result, stored)
    if written_status is None:  # a replay: the row may have been stored as rejected
        customer_id, digest = customer_refs(result, d.email_key)
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(status=status, reason=reason, customer_id=customer_id, email_digest=digest)
        )
    elif status != written_status or reason:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(status=status, reason=reason)
        )
    return IngestOutcome(status, reason, delivery_id, stored, new_states)


def _delivery_status(result: ParseResult, stored: list[dict[str, Any]]) -> tuple[str, str | None]:
    if not stored:
        return DeliveryStatus.IGNORED, result.reason
    if all(e["duplicate"] for e in stored):
        return DeliveryStatus.DUPLICATE, "purchase already counted from an earlier delivery"
    return DeliveryStatus.ACCEPTED, None


def _existing_delivery(conn: Connection, d: Delivery) -> int | None:
    return conn.execute(
        select(deliveries.c.id).where(
            deliveries.c.source == d.source.name,
            deliveries.c.delivery_key == d.result.delivery_key,
        )
    ).scalar()


def initial_state(d: Delivery, event: NormalizedEvent) -> tuple[EventState, Reason, str]:
    """(state, reason code, reason) for a newly stored event."""
    skipped = EventState.SKIPPED
    if event.kind not in SENDABLE_KINDS:
        return skipped, Reason.NOT_SENT_KIND, f"{event.kind} events are recorded, not sent"
    if event.test_mode and not d.source.allow_test_events:
        return skipped, Reason.TEST_MODE, "test-mode order; the source does not allow test events"
    goals = d.goals.get(event.kind)
    if goals is None or not (goals.conversion or goals.transaction):
        return skipped, Reason.NO_GOALS, f"no Convert goals configured for {event.kind}"
    return EventState.PENDING, Reason.QUEUED, "queued: the dispatcher sends it next"


def _store_event(
    conn: Connection, d: Delivery, delivery_id: int, event: NormalizedEvent, now: float
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The event's summary for the answer, and its (state, reason code) when newly stored."""
    state, code, reason = initial_state(d, event)
    money = event.revenue(d.source.revenue)
    values = {
        "delivery_id": delivery_id,
        "source": d.source.name,
        "platform": event.platform,
        "project_id": d.project_id,
        "kind": str(event.kind),
        "order_id": event.order_id,
        "refund_of": event.refund_of,
        "amount": str(money.amount),
        "currency": money.currency,
        "item_count": event.item_count,
        "customer_id": event.customer_id,
        "email_digest": stored_digest(d.email_key, event.email_digest),
        "attributes": json.dumps(dict(event.attributes)),
        "test_mode": event.test_mode,
        "occurred_at": event.occurred_at,
        # An event from a thin webhook waits for its details (never sent before them).
        "details": DETAILS_PENDING if event.details_ref is not None else None,
        "details_ref": event.details_ref,
        "convert_format": str(d.convert_format),
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
        made = {"id": event_id, "state": state, "reason": reason, "duplicate": False}
        return summary | made, (str(state), str(code))
    existing_id = _merge_into_existing(conn, d.project_id, event, now)
    duplicate = {
        "id": existing_id,
        "state": DeliveryStatus.DUPLICATE,
        "duplicate": True,
        "reason": "purchase already counted",
    }
    return summary | duplicate, None


def _merge_into_existing(
    conn: Connection, project_id: str, event: NormalizedEvent, now: float
) -> int:
    """Add experiment data a later delivery brings to the stored, not yet sent event."""
    row = conn.execute(
        select(events).where(
            events.c.project_id == project_id,
            events.c.platform == event.platform,
            events.c.order_id == event.order_id,
            events.c.kind == str(event.kind),
        )
    ).one()
    known = json.loads(row.attributes)
    added = {k: v for k, v in event.attributes.items() if k not in known}
    if _asks_again(row, event):
        _read_details_again(conn, row, event, json.dumps(known | added), now)
        return int(row.id)
    if row.state == EventState.PENDING and row.details == DETAILS_PENDING and event.details_ref:
        # A read of the order may be in flight with what it was a moment ago (unpaid): the
        # new revision makes that round leave the event due instead of settling on it.
        conn.execute(
            update(events)
            .where(events.c.id == row.id)
            .values(attributes=json.dumps(known | added), revision=row.revision + 1, updated_at=now)
        )
        return int(row.id)
    waiting = row.state == EventState.SKIPPED and row.reason_code in WAITING_FOR_PAIRS
    if not (added and (row.state == EventState.PENDING or waiting)):
        # Retention keeps an event for its horizon after the LAST delivery naming the purchase,
        # so a late second topic cannot outlive the record that makes it a duplicate.
        conn.execute(update(events).where(events.c.id == row.id).values(updated_at=now))
    else:
        wake = (
            {
                "state": EventState.PENDING,
                "reason_code": Reason.QUEUED,
                "reason": "queued: a later delivery brought the experiment data",
                "next_attempt_at": now,
            }
            if waiting or row.reason_code == Reason.LOOKUP_LATER  # waiting for late data
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


def _asks_again(row: Any, event: NormalizedEvent) -> bool:
    """A purchase the platform's API called "not a purchase" (skipped as not sent, with its
    details still pending), named again by a later delivery: the order may be paid now (a
    BigCommerce order read while incomplete, then a status change to a paid one)."""
    return (
        row.state == EventState.SKIPPED
        and row.reason_code == Reason.NOT_A_PURCHASE
        and row.details == DETAILS_PENDING
        and event.details_ref is not None
        and EventKind(row.kind) in SENDABLE_KINDS
    )


def _read_details_again(
    conn: Connection, row: Any, event: NormalizedEvent, attributes: str, now: float
) -> None:
    conn.execute(
        update(events)
        .where(events.c.id == row.id)
        .values(
            state=EventState.PENDING,
            reason_code=Reason.QUEUED,
            reason="queued: a later delivery names the order again; its details are read again",
            details_ref=event.details_ref,
            attributes=attributes,
            revision=row.revision + 1,
            horizon_start=now,
            next_attempt_at=now,
            updated_at=now,
        )
    )


def redact(
    conn: Connection,
    source: str,
    platform: str,
    redaction: CustomerRedaction,
    addresses: Sequence[str] = (),
    email_key: bytes | None = None,
) -> int:
    """Erase personal data of one customer (or a whole shop) from this source: every stored
    body and header that is about them, the customer references of their events, and their
    exposures (the exposure store). `addresses` are the customer's email addresses as the
    redaction request names them: used to find copies no parsed reference points to, never
    stored.

    Event amounts and ids stay: they carry no personal data and keep idempotency intact.
    """
    if redaction.whole_shop:
        _strip_body(conn, deliveries.c.source == source)
        # Exposures reported for this source; those reported by email alone name no shop.
        conn.execute(delete(exposures).where(exposures.c.source == source))
        shop = and_(events.c.source == source, events.c.platform == platform)
        return _forget_customers(conn, shop)
    customer_id = redaction.customer_id
    matches: list[ColumnElement[bool]] = []
    if customer_id:
        matches.append(events.c.customer_id == customer_id)
    if redaction.order_ids:
        matches.append(events.c.order_id.in_(redaction.order_ids))
        matches.append(events.c.refund_of.in_(redaction.order_ids))
    if not matches:
        return 0
    scope = and_(events.c.source == source, events.c.platform == platform, or_(*matches))
    _forget_exposures(conn, source, customer_id, scope, addresses, email_key)
    _strip_body(conn, and_(deliveries.c.source == source, _about(scope, customer_id)))
    terms = [*addresses, *redaction.order_ids] + ([customer_id] if customer_id else [])
    _strip_mentions(conn, source, terms)
    return _forget_customers(conn, scope)


def _forget_exposures(
    conn: Connection,
    source: str,
    customer_id: str | None,
    scope: Any,
    addresses: Sequence[str],
    email_key: bytes | None,
) -> None:
    """Delete the customer's exposures: this source's under their customer id, and any
    under an email digest of theirs (the redaction's addresses, their events' digests)."""
    if customer_id:
        conn.execute(
            delete(exposures).where(
                exposures.c.source == source, exposures.c.customer_id == customer_id
            )
        )
    if email_key is None:
        return  # without a key nothing was stored by email
    known = conn.execute(
        select(events.c.email_digest).where(scope, events.c.email_digest.is_not(None))
    ).scalars()
    plain = [_plain_email_digest(address) for address in addresses]
    digests = {stored_digest(email_key, d) for d in [*known, *plain] if d}
    if digests:
        conn.execute(delete(exposures).where(exposures.c.email_digest.in_(sorted(digests))))


def _plain_email_digest(address: str) -> str | None:
    """adapters.payload.email_digest's normalization (trim, lower-case, SHA-256), which
    storage cannot import (adapters are a sibling layer); a test holds the two equal."""
    try:
        return hashlib.sha256(address.strip().lower().encode()).hexdigest()
    except UnicodeEncodeError:
        return None


def _about(scope: Any, customer_id: str | None) -> Any:
    """Deliveries about the customer: those of their events, every copy (business duplicates
    too) with their customer id, and guest copies (no customer id) with an address their
    events carry. A delivery naming another customer is not theirs, whatever its address."""
    known = select(events.c.email_digest).where(scope, events.c.email_digest.is_not(None))
    theirs: ColumnElement[bool] = deliveries.c.customer_id.is_(None)
    matches: list[ColumnElement[bool]] = [
        deliveries.c.id.in_(select(events.c.delivery_id).where(scope))
    ]
    if customer_id:
        matches.append(deliveries.c.customer_id == customer_id)
        theirs = or_(theirs, deliveries.c.customer_id == customer_id)
    matches.append(and_(deliveries.c.email_digest.in_(known), theirs))
    return or_(*matches)


def addresses_in(body: bytes, limit: int = 20) -> tuple[str, ...]:
    """The email addresses a (parsed, hence valid JSON) redaction request names: every string
    with an "@" (Shopify's is `customer.email`), at most `limit`."""
    found: list[str] = []
    try:
        pending: list[Any] = [json.loads(body)]
    except (ValueError, RecursionError):  # a future platform's non-JSON request
        return ()
    while pending and len(found) < limit:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and "@" in value and len(value) <= MAX_ADDRESS_CHARS:
            found.append(value.strip())
    return tuple(found)


def _strip_mentions(conn: Connection, source: str, terms: list[str]) -> None:
    """Erase the bodies without customer references (rejected, ignored, duplicates of an order
    without a customer) that mention the customer's id, address or orders.

    Nothing parsed says whom such a body is about, so its bytes are searched. The scan reads
    only that source's unredacted rows without references and outside `accepted` (those are
    found through their events): rare rows, bounded by retention, and only for a redaction.
    """
    pattern = _mention_pattern(terms)
    if pattern is None:
        return
    candidates = conn.execute(
        select(deliveries.c.id, deliveries.c.body)
        .where(
            deliveries.c.source == source,
            deliveries.c.status != DeliveryStatus.ACCEPTED,
            deliveries.c.redacted.is_(False),
            deliveries.c.customer_id.is_(None),
            deliveries.c.email_digest.is_(None),
        )
        .execution_options(yield_per=200)  # bodies stream in batches, not all at once
    )
    hits = [row.id for row in candidates if pattern.search(row.body)]
    for start in range(0, len(hits), 500):
        _strip_body(conn, deliveries.c.id.in_(hits[start : start + 500]))


def _mention_pattern(terms: Iterable[str]) -> re.Pattern[bytes] | None:
    """Any term as a whole token, case-insensitive (an address may be written in any case):
    customer 42 is not a mention inside order 1042."""
    encoded = sorted({t.encode("utf-8", "replace") for t in terms if t}, key=len, reverse=True)
    if not encoded:
        return None
    alternatives = b"|".join(re.escape(t) for t in encoded)
    return re.compile(rb"(?<![0-9A-Za-z_.+-])(?:" + alternatives + rb")(?![0-9A-Za-z_-])", re.I)


def _forget_customers(conn: Connection, scope: Any) -> int:
    result = conn.execute(
        update(events).where(scope).values(customer_id=None, email_digest=None, attributes="{}")
    )
    return int(result.rowcount)


def _strip_body(conn: Connection, where: Any) -> None:
    conn.execute(
        update(deliveries)
        .where(where)
        .values(body=b"", headers="{}", redacted=True, customer_id=None, email_digest=None)
    )
