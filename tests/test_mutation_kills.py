"""Planning one claimed event, checked piece by piece (written for issue 6: the mutation run of
scripts/mutation showed that the dispatcher tests pass with most of the planner broken, since
they only look at what reaches Convert in the end). The event is a real row of a real SQLite
file, claimed the way a round claims it; the settings come from a config document through the
real loader; the Convert client is the real one (planning builds hits and sends nothing).
Also here: the attribution chain hands each lookup the event itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, Row, insert

from tests.config_file import STRIPE_SECRET, config_document
from webhooks.attribution.chain import Absent, Answer, Chain, Found, NotYet, Subject
from webhooks.convert.client import ConvertClient, make_client
from webhooks.core.events import EventKind
from webhooks.core.hits import Hit, HitFormat
from webhooks.core.settings import GoalSet, Settings
from webhooks.core.states import EventState, Reason
from webhooks.delivery.planner import Planned, Planner, default_chain
from webhooks.storage.database import make_engine, transaction
from webhooks.storage.migrations import migrate
from webhooks.storage.queue import Finish, claim_due
from webhooks.storage.schema import deliveries, events
from webhooks.wiring.config import settings_from_mapping

NOW = 1_800_000_000.0
ENDPOINT = "http://127.0.0.1:9/track/"  # never contacted: planning sends nothing
TRACK = f"{ENDPOINT}?c=1111&p=2222"


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    migrate(engine)
    yield engine
    engine.dispose()


def settings_for(sqlite_url: str, **sections: Any) -> Settings:
    return settings_from_mapping(config_document(sqlite_url, ENDPOINT, **sections), {})


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return settings_for(
        sqlite_url,
        sources={
            "stripe": {
                "platform": "stripe",
                "secrets": [STRIPE_SECRET],
                "experiments_key": "ab_tests",
            },
        },
        attribution={"max_pairs_per_order": 2},
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[ConvertClient]:
    made = make_client(settings.convert)
    yield made
    made.close()


def claimed(engine: Engine, **values: Any) -> Row[Any]:
    """One pending event stored with these values, claimed as a round claims it."""
    event: dict[str, Any] = {
        "source": "stripe",
        "platform": "stripe",
        "project_id": "2222",
        "kind": "purchase",
        "order_id": "pi_1",
        "amount": "49.90",
        "currency": "EUR",
        "item_count": 2,
        "customer_id": "cus_1",
        "email_digest": "d" * 64,
        "attributes": {"ab_tests": "1-2,3-4,5-6"},
        "test_mode": False,
        "occurred_at": NOW,
        "state": EventState.PENDING,
        "revision": 3,
        "created_at": NOW,
        "horizon_start": NOW,
        "next_attempt_at": NOW,
        "updated_at": NOW,
        **values,
    }
    event["attributes"] = json.dumps(event["attributes"])
    with transaction(engine) as conn:
        delivery_id = conn.execute(
            insert(deliveries).values(
                source=event["source"], platform=event["platform"], delivery_key="evt_1",
                topic="payment_intent.succeeded", status="accepted", received_at=NOW,
                headers="{}", body=b"{}",
            ).returning(deliveries.c.id)
        ).scalar_one()
        conn.execute(insert(events).values(delivery_id=delivery_id, **event))
        (row,) = claim_due(conn, "planner-test", NOW, 10, 60)
    return row


def test_the_pairs_found_become_one_hit_each_with_the_purchase_and_the_note(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    row = claimed(engine)
    plan = Planner(settings, client, default_chain(settings)).plan(row)
    shared = "&g=100%2C101&ga=2&t=100%7Cpi_1%7C49.90%7C2"
    assert plan == Planned(
        [
            Hit(row.id, "1-2", HitFormat.LEGACY_GET, f"{TRACK}&e=1-2{shared}"),
            Hit(row.id, "3-4", HitFormat.LEGACY_GET, f"{TRACK}&e=3-4{shared}"),
        ],
        "kept the first 2 of 3 experiment pairs",
    )


def test_a_renewal_with_transaction_goals_only_is_planned(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    row = claimed(engine, kind="subscription_renewal", attributes={"ab_tests": "1-2"})
    plan = Planner(settings, client, default_chain(settings)).plan(row)
    assert plan == Planned(
        [Hit(row.id, "1-2", HitFormat.LEGACY_GET, f"{TRACK}&e=1-2&t=300%7Cpi_1%7C49.90%7C2")]
    )


def test_an_event_of_a_source_no_longer_configured_is_read_under_the_default_key(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    row = claimed(
        engine, source="old-shop", attributes={"ab_tests": "1-2", "convert_experiments": "7-8"}
    )
    plan = Planner(settings, client, default_chain(settings)).plan(row)
    assert isinstance(plan, Planned) and [hit.pair for hit in plan.hits] == ["7-8"]


@pytest.mark.parametrize(
    ("kind", "goals"),
    [
        ("subscription_renewal", GoalSet((), ())),  # configured, but with no goal at all
        ("refund", None),  # a kind without goals in the config
    ],
)
def test_a_kind_without_goals_is_skipped_and_says_so(
    engine: Engine, settings: Settings, client: ConvertClient, kind: str, goals: GoalSet | None
) -> None:
    kinds = dict(settings.goals)
    if goals is None:
        kinds.pop(EventKind(kind), None)
    else:
        kinds[EventKind(kind)] = goals
    planner = Planner(replace(settings, goals=kinds), client, default_chain(settings))
    assert planner.plan(claimed(engine, kind=kind)) == Finish(
        EventState.SKIPPED, Reason.NO_GOALS, f"no Convert goals configured for {kind}"
    )


def test_no_pairs_skips_the_event_unless_a_new_delivery_revised_it(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    row = claimed(engine, attributes={"other": "1-2"})
    assert Planner(settings, client, default_chain(settings)).plan(row) == Finish(
        EventState.SKIPPED,
        Reason.NO_EXPERIMENT_DATA,
        "no 'ab_tests' attribute on the order",
        only_if_revision=3,
    )


def test_not_yet_leaves_the_event_pending_until_then_unless_revised(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    later = Recording(NotYet(NOW + 900, "customer API timed out"))
    plan = Planner(settings, client, Chain([later])).plan(claimed(engine))
    assert plan == Finish(
        EventState.PENDING,
        Reason.LOOKUP_LATER,
        "customer API timed out",
        next_attempt_at=NOW + 900,
        only_if_revision=3,
    )


class Recording:
    """A lookup that answers as told and keeps what it was asked about."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[Subject] = []

    def find(self, subject: Subject) -> Answer:
        self.asked.append(subject)
        return self.answer


def test_each_lookup_is_asked_about_the_claimed_event(
    engine: Engine, settings: Settings, client: ConvertClient
) -> None:
    row = claimed(engine)
    first = Recording(Absent(Reason.NO_EXPERIMENT_DATA, "no exposures"))
    second = Recording(Found(("1-2",), "exposure store", "plain"))
    Planner(settings, client, Chain([first, second])).plan(row)
    subject = Subject(
        row.id, "stripe", "stripe", "pi_1", "cus_1", "d" * 64, {"ab_tests": "1-2,3-4,5-6"}
    )
    assert first.asked == second.asked == [subject]


def test_an_empty_chain_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"^a chain needs at least one lookup$"):
        Chain([])
