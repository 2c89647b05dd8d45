"""Planning one claimed event: find its experiment pairs (the attribution chain), check that
its kind has goals, and build its hits with the Convert client. A plan is either the hits to
send or the event's final state without sending (`Finish`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Row

from webhooks.attribution.chain import Chain, Found, NotYet, Subject
from webhooks.attribution.order import DEFAULT_EXPERIMENTS_KEY, OrderAttributes
from webhooks.convert.client import ConvertClient
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


def default_chain(settings: Settings) -> Chain:
    """Where pairs are looked for, in order. Today: the order's own attributes."""

    def key_of(source: str) -> str:
        found = settings.sources.get(source)
        return found.experiments_key if found else DEFAULT_EXPERIMENTS_KEY

    return Chain([OrderAttributes(key_of, settings.attribution.max_pairs_per_order)])


class Planner:
    def __init__(self, settings: Settings, client: ConvertClient, chain: Chain) -> None:
        self.settings = settings
        self.client = client
        self.chain = chain

    def plan(self, row: Row[Any]) -> Plan:
        answer = self.chain.find(subject_of(row))
        if isinstance(answer, NotYet):
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
        purchase = Purchase(row.id, row.order_id, Decimal(row.amount), row.item_count)
        attributed = Attributed(answer.place, answer.format, answer.visitor_id)
        return Planned(self.client.hits(goals, purchase, answer.pairs), attributed, answer.note)


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
