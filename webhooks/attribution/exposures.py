"""A place to look: the exposure store (what the shop's back end reported through
POST /api/exposures or the CSV import), by the platform customer id for the event's source,
then by the keyed email digest.

Of each experiment, the latest exposure at or before the purchase (the event's occurred_at)
wins: a customer shown variation 1 and later variation 2 of one experiment bought in
variation 2. The note says so when an experiment had several variations.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks.attribution.chain import Absent, Answer, Found, NotYet, Subject
from webhooks.core.clock import Clock
from webhooks.core.errors import StorageError
from webhooks.core.states import Reason
from webhooks.storage.digests import stored_digest
from webhooks.storage.exposures import (
    customer_filter,
    exposures_before_purchase,
    latest_per_experiment,
)

PLACE_BY_CUSTOMER = "exposure store (customer id)"
PLACE_BY_EMAIL = "exposure store (email)"
FORMAT = "exposure"
RETRY_SECONDS = 60.0  # the store could not be read: ask again then


class ExposureStore:
    def __init__(
        self, engine: Engine, clock: Clock, email_key: bytes | None, max_pairs: int
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.email_key = email_key
        self.max_pairs = max_pairs

    def find(self, subject: Subject) -> Answer:
        try:
            return self._find(subject)
        except (SQLAlchemyError, StorageError) as exc:
            # The database is the store: a failure to read it is "not yet", never "none".
            return NotYet(
                self.clock.now() + RETRY_SECONDS,
                f"exposure store could not be read ({type(exc).__name__})",
            )

    def _find(self, subject: Subject) -> Answer:
        if subject.customer_id:
            where = customer_filter(source=subject.source, customer_id=subject.customer_id)
            rows = exposures_before_purchase(self.engine, subject.event_id, where)
            if rows:
                return self._found(rows, PLACE_BY_CUSTOMER)
        # An event stored before the key was set carries the plain digest: keyed here.
        digest = stored_digest(self.email_key, subject.email_digest)
        if digest and self.email_key is not None:
            rows = exposures_before_purchase(
                self.engine, subject.event_id, customer_filter(email_digest=digest)
            )
            if rows:
                return self._found(rows, PLACE_BY_EMAIL)
        return Absent(Reason.NO_EXPERIMENT_DATA, _nothing(subject, self.email_key is not None))

    def _found(self, rows: Sequence[Any], place: str) -> Found:
        latest = latest_per_experiment(rows)
        kept = latest[: self.max_pairs]
        pairs = tuple(f"{row.experiment_id}-{row.variation_id}" for row in kept)
        visitor = next((row.visitor_id for row in kept if row.visitor_id), None)
        return Found(pairs, place, FORMAT, visitor_id=visitor, note=_note(rows, kept, latest))


def _nothing(subject: Subject, by_email: bool) -> str:
    keys = []
    if subject.customer_id:
        keys.append("customer id")
    if subject.email_digest and by_email:
        keys.append("email")
    if not keys:
        return "exposure store: the order names no customer id or email to look up"
    return f"exposure store: no exposure before the purchase for its {' or '.join(keys)}"


def _note(rows: Sequence[Any], kept: Sequence[Any], latest: Sequence[Any]) -> str | None:
    """Which exposure won where an experiment had several variations, and any left out."""
    parts = []
    for winner in kept:
        others = sorted(
            {
                row.variation_id
                for row in rows
                if row.experiment_id == winner.experiment_id
                and row.variation_id != winner.variation_id
            }
        )
        if others:
            parts.append(
                f"experiment {winner.experiment_id}: variation {winner.variation_id} exposed "
                f"{_iso(winner.exposed_at)} is the latest before the purchase (earlier: "
                f"{', '.join(others)})"
            )
    if len(kept) < len(latest):
        parts.append(f"kept the {len(kept)} most recent of {len(latest)} experiments")
    return "; ".join(parts) or None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
