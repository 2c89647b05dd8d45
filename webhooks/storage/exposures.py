"""The exposure store: which experiment pairs a customer was shown, as the shop's back end
reported them (step 1 of Convert's back-end process: POST /api/exposures, the CSV import).

A customer is `source` + `customer_id` (the platform's id) and/or a keyed email digest
(storage/digests.py); a report of several pairs is one row per pair. A report repeated with
the same customer key, pair and time is a no-op (the unique key), so a back end can retry.
A customer's erasure (DELETE /api/exposures, a platform's redaction) deletes the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.sql.elements import ColumnElement

from webhooks.storage.database import transaction
from webhooks.storage.ingest import checked_transaction, insert_ignore
from webhooks.storage.schema import events, exposures

# A customer's reads are bounded: the newest this many rows (a back end reporting the same
# customer in thousands of experiments is not a customer).
MAX_ROWS_READ = 1000
_UNIQUE = ["source", "customer_id", "email_digest", "experiment_id", "variation_id", "exposed_at"]


@dataclass(frozen=True)
class Exposure:
    """One report: a customer (source + customer id and/or keyed email digest) was shown
    these (experiment, variation) pairs at `exposed_at`."""

    source: str | None
    customer_id: str | None
    email_digest: str | None  # keyed
    pairs: tuple[tuple[str, str], ...]
    exposed_at: float
    visitor_id: str | None = None


@dataclass(frozen=True)
class Stored:
    stored: int  # pair rows new
    known: int  # pair rows already there (the same customer key, pair and time)


def store_exposures(engine: Engine, reports: Iterable[Exposure], now: float) -> Stored:
    """Store every report in one transaction (all or nothing); a row already known is left
    as it is. UnstorableError if the database refuses a value, StorageError if down."""
    with checked_transaction(engine) as conn:
        return store_in(conn, reports, now)


def store_in(conn: Connection, reports: Iterable[Exposure], now: float) -> Stored:
    new = known = 0
    for report in reports:
        for experiment, variation in report.pairs:
            values = {
                "source": report.source or "",
                "customer_id": report.customer_id or "",
                "email_digest": report.email_digest or "",
                "experiment_id": experiment,
                "variation_id": variation,
                "visitor_id": report.visitor_id,
                "exposed_at": report.exposed_at,
                "recorded_at": now,
            }
            if insert_ignore(conn, exposures, values, _UNIQUE) is None:
                known += 1
            else:
                new += 1
    return Stored(new, known)


def customer_filter(
    source: str | None = None, customer_id: str | None = None, email_digest: str | None = None
) -> ColumnElement[bool]:
    """The rows of one customer: by source + customer id, or by keyed email digest."""
    if source and customer_id:
        return (exposures.c.source == source) & (exposures.c.customer_id == customer_id)
    if email_digest:
        return exposures.c.email_digest == email_digest
    raise ValueError("a customer is source + customer id, or an email digest")


def read_exposures(
    engine: Engine, where: ColumnElement[bool], before: float | None = None
) -> list[Any]:
    """A customer's rows, newest exposure first (then latest recorded), at most
    MAX_ROWS_READ; with `before`, only those exposed at or before that time."""
    query = (
        select(exposures)
        .where(where)
        .order_by(exposures.c.exposed_at.desc(), exposures.c.id.desc())
        .limit(MAX_ROWS_READ)
    )
    if before is not None:
        query = query.where(exposures.c.exposed_at <= before)
    with transaction(engine) as conn:
        return list(conn.execute(query).all())


def forget_exposures(engine: Engine, where: ColumnElement[bool]) -> int:
    with checked_transaction(engine) as conn:
        return int(conn.execute(delete(exposures).where(where)).rowcount)


def latest_per_experiment(rows: Sequence[Any]) -> list[Any]:
    """Of rows newest first, the first (latest exposure) of each experiment, newest first."""
    seen: dict[str, Any] = {}
    for row in rows:
        seen.setdefault(row.experiment_id, row)
    return list(seen.values())


def exposures_before_purchase(
    engine: Engine, event_id: int, where: ColumnElement[bool]
) -> list[Any]:
    """A customer's rows exposed at or before the event's purchase time (occurred_at),
    newest first, in one read."""
    occurred = select(events.c.occurred_at).where(events.c.id == event_id).scalar_subquery()
    query = (
        select(exposures)
        .where(where, exposures.c.exposed_at <= occurred)
        .order_by(exposures.c.exposed_at.desc(), exposures.c.id.desc())
        .limit(MAX_ROWS_READ)
    )
    with transaction(engine) as conn:
        return list(conn.execute(query).all())
