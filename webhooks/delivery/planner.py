"""Planning one claimed event: find its experiment pairs (the attribution chain), check that
its kind has goals, and build its hits with the Convert client. A plan is either the hits to
send or the event's final state without sending (`Finish`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Row

from webhooks.attribution.chain import Absent, Chain, Found, NotYet, Subject
from webhooks.attribution.customers import Backoff, PlatformApi, customer_records
from webhooks.attribution.enrich import CheckoutItemCounts
from webhooks.attribution.exposures import ExposureStore
from webhooks.attribution.order import DEFAULT_EXPERIMENTS_KEY, OrderAttributes
from webhooks.convert.client import ConvertClient
from webhooks.core.clock import Clock
from webhooks.core.events import EventKind
from webhooks.core.hits import Hit, Purchase
from webhooks.core.settings import Settings
from webhooks.core.states import EventState, Reason
from webhooks.storage.queue import Attributed, Finish


@dataclass(frozen=True)
class Planned:
    hits: list[Hit]
    attributed: Attributed
    note: str | None = None  # said with the event's final state (e.g. pairs left out)


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
    ) -> None:
        self.settings = settings
        self.client = client
        self.chain = chain
        self.item_counts = item_counts  # the real count where the webhook lacks it (Stripe)

    def plan(self, row: Row[Any], now: float) -> Plan:
        subject = subject_of(row)
        answer = self.chain.find(subject)
        if isinstance(answer, Absent):
            answer = self._wait_for_late_data(row, answer, now)
        if isinstance(answer, NotYet):
            if now >= row.horizon_start + self.settings.dispatcher.retry_horizon_seconds:
                # A platform API that keeps failing (a revoked key) must not keep an event
                # pending for ever: past the retry horizon it is dead, and replayable.
                return Finish(
                    EventState.DEAD,
                    Reason.RETRIES_EXHAUSTED,
                    f"gave up waiting for the experiment data: {answer.reason}",
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
        purchase = Purchase(row.id, row.order_id, Decimal(row.amount), items)
        attributed = Attributed(answer.place, answer.format, answer.visitor_id)
        return Planned(self.client.hits(goals, purchase, answer.pairs), attributed, answer.note)


    def _wait_for_late_data(self, row: Row[Any], absent: Absent, now: float) -> Absent | NotYet:
        """Within the grace period after the event was stored, "nothing found" means "not
        yet": the back end may record the exposure a moment after the order."""
        a = self.settings.attribution
        until = row.created_at + a.grace_seconds
        if now >= until:
            return absent
        when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reason = f"{absent.reason}; looking again until {when}"
        return NotYet(min(now + a.recheck_seconds, until), reason)


def subject_of(row: Row[Any]) -> Subject:
    return Subject(
        event_id=row.id,
        source=row.source,
        platform=row.platform,
        order_id=row.order_id,
        customer_id=row.customer_id,
        email_digest=row.email_digest,
        attributes=json.loads(row.attributes),
    )
