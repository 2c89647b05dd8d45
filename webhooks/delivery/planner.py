"""Planning one claimed event: read its details from the platform's API when its webhook was
thin (details.py), find its experiment pairs (the attribution chain), check that its kind has
goals, and build its hits with the Convert client. A plan is either the hits to send or the
event's final state without sending (`Finish`); either carries the details read, which the
round stores with the event's state."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, Row

from webhooks.attribution.chain import Absent, Chain, Found, NotYet, Subject
from webhooks.attribution.customers import Backoff, PlatformApi, customer_records
from webhooks.attribution.enrich import CheckoutItemCounts
from webhooks.attribution.exposures import ExposureStore
from webhooks.attribution.order import DEFAULT_EXPERIMENTS_KEY, OrderAttributes
from webhooks.convert.client import ConvertClient
from webhooks.convert.visitor import pseudonymous_visitor_id
from webhooks.core.clock import Clock
from webhooks.core.events import PROVISIONAL_CURRENCY, EventKind
from webhooks.core.hits import Hit, Purchase
from webhooks.core.settings import ConvertFormat, Settings
from webhooks.core.states import EventState, Reason
from webhooks.delivery.details import DetailsStep, Wait
from webhooks.storage.queue import Attributed, FetchedDetails, Finish
from webhooks.storage.schema import DETAILS_PENDING

_NO_VISITOR_KEY = (
    "stored for the v1 format, whose pseudonymous visitor id needs privacy.email_key, which is "
    "not configured; set it and replay the event"
)


@dataclass(frozen=True)
class Planned:
    hits: list[Hit]
    attributed: Attributed
    note: str | None = None  # said with the event's final state (e.g. pairs left out)
    details: FetchedDetails | None = None  # read from the platform's API in this round


Plan = Finish | Planned


def default_chain(
    settings: Settings, engine: Engine, clock: Clock, api: PlatformApi, backoff: Backoff
) -> Chain:
    """Where pairs are looked for, in order: the order's own attributes (the configured key,
    then Convert's own attribute names; Convert data of another project is refused), the
    platform's customer record (through its API), the exposure store."""

    def key_of(source: str) -> str:
        found = settings.sources.get(source)
        return found.experiments_key if found else DEFAULT_EXPERIMENTS_KEY

    max_pairs = settings.attribution.max_pairs_per_order
    order = OrderAttributes(
        key_of,
        max_pairs,
        account_id=settings.convert.account_id,
        project_id=settings.convert.project_id,
    )
    records = customer_records(settings, clock, api, backoff)
    exposures = ExposureStore(engine, clock, settings.privacy.email_key, max_pairs)
    return Chain([order, records, exposures])


class Planner:
    def __init__(
        self,
        settings: Settings,
        client: ConvertClient,
        chain: Chain,
        item_counts: CheckoutItemCounts | None = None,
        details: DetailsStep | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.chain = chain
        self.item_counts = item_counts  # the real count where the webhook lacks it (Stripe)
        self.details = details  # what thin webhooks leave to the platform's API

    def plan(self, row: Row[Any], now: float) -> Plan:
        if row.details != DETAILS_PENDING:
            return self._plan(row, now)
        if self.details is None:
            raise LookupError("the event awaits its details and no details step is configured")
        read = self.details.read(row)
        if isinstance(read, Wait):
            return self._not_yet(row, NotYet(read.at, read.reason), now, "the order's details")
        if isinstance(read, FetchedDetails):
            plan = self._plan(with_details(row, read), now)
            return replace(plan, details=read)
        return Finish(
            EventState.SKIPPED,
            Reason.NOT_A_PURCHASE,
            f"not a purchase: {read.reason}",
            only_if_revision=row.revision,
        )

    def _plan(self, row: Any, now: float) -> Plan:
        if row.currency == PROVISIONAL_CURRENCY:
            # Never reached (an event awaiting details is planned after them); never a hit
            # with an amount that is not known.
            raise ValueError("the event's amount is not known yet")
        subject = subject_of(row)
        answer = self.chain.find(subject)
        if isinstance(answer, Absent):
            answer = self._wait_for_late_data(row, answer, now)
        if isinstance(answer, NotYet):
            return self._not_yet(row, answer, now, "the experiment data")
        if not isinstance(answer, Found):
            return Finish(
                EventState.SKIPPED,
                answer.reason_code,
                answer.reason,
                only_if_revision=row.revision,
            )
        goals = self.settings.goals.get(EventKind(row.kind))
        if goals is None or not (goals.conversion or goals.transaction):
            return Finish(
                EventState.SKIPPED, Reason.NO_GOALS, f"no Convert goals configured for {row.kind}"
            )
        # Only for an attributed event with goals: an unattributed one costs no API call.
        counted = self.item_counts.item_count(subject) if self.item_counts else None
        items = counted if counted is not None else row.item_count
        fmt = event_format(row)
        visitor = answer.visitor_id
        if fmt is ConvertFormat.V1 and not visitor:
            key = self.settings.privacy.email_key
            if key is None:
                return Finish(EventState.DEAD, Reason.INTERNAL_ERROR, _NO_VISITOR_KEY)
            visitor = pseudonymous_visitor_id(
                key, row.source, row.customer_id, row.email_digest, row.order_id
            )
        purchase = Purchase(row.id, row.order_id, Decimal(row.amount), items, fmt, visitor)
        attributed = Attributed(answer.place, answer.format, answer.visitor_id)
        return Planned(self.client.hits(goals, purchase, answer.pairs), attributed, answer.note)

    def _not_yet(self, row: Any, answer: NotYet, now: float, what: str) -> Finish:
        if now >= row.horizon_start + self.settings.dispatcher.retry_horizon_seconds:
            # A platform API that keeps failing (a revoked key) must not keep an event
            # pending for ever: past the retry horizon it is dead, and replayable.
            return Finish(
                EventState.DEAD,
                Reason.RETRIES_EXHAUSTED,
                f"gave up waiting for {what}: {answer.reason}",
                only_if_revision=row.revision,
            )
        # Not an attempt: the event waits for its data, and a new delivery may still
        # bring it sooner (the revision guard then leaves it due at once).
        return Finish(
            EventState.PENDING,
            Reason.LOOKUP_LATER,
            answer.reason,
            next_attempt_at=answer.at,
            only_if_revision=row.revision,
        )

    def _wait_for_late_data(self, row: Any, absent: Absent, now: float) -> Absent | NotYet:
        """Within the grace period after the event was stored, "nothing found" means "not
        yet": the back end may record the exposure a moment after the order."""
        a = self.settings.attribution
        until = row.created_at + a.grace_seconds
        if now >= until:
            return absent
        when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reason = f"{absent.reason}; looking again until {when}"
        return NotYet(min(now + a.recheck_seconds, until), reason)


def event_format(row: Any) -> ConvertFormat:
    """The format the event was stored with; NULL (stored before there was a choice): legacy."""
    return ConvertFormat(row.convert_format) if row.convert_format else ConvertFormat.LEGACY


def with_details(row: Row[Any], details: FetchedDetails) -> SimpleNamespace:
    """The claimed row as the details read in this round make it (the row itself is the
    stored state; the round stores the details with the event's new state)."""
    return SimpleNamespace(
        **{
            **row._mapping,
            "amount": details.amount,
            "currency": details.currency,
            "item_count": details.item_count,
            "attributes": details.attributes,
            "customer_id": details.customer_id,
            "email_digest": details.email_digest,
        }
    )


def subject_of(row: Any) -> Subject:
    return Subject(
        event_id=row.id,
        source=row.source,
        platform=row.platform,
        order_id=row.order_id,
        customer_id=row.customer_id,
        email_digest=row.email_digest,
        attributes=json.loads(row.attributes),
    )
