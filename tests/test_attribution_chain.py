"""Attribution as a chain of lookups: the first place that finds pairs wins; with none found
the earliest "not yet" decides; else every place tried is named. Lookups here are small real
implementations of the Lookup protocol (the chain is what is under test); the order lookup is
the real one, and a "not yet" goes through a real dispatcher round."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select, update

from tests.conftest import Service
from tests.payloads import stripe_event
from webhooks.attribution.chain import Absent, Answer, Chain, Found, NotYet, Subject
from webhooks.attribution.order import OrderAttributes
from webhooks.core.states import EventState, Reason
from webhooks.delivery.worker import Dispatcher
from webhooks.storage.database import transaction
from webhooks.storage.schema import events


def live_payment() -> dict[str, object]:
    event = stripe_event("payment_intent_succeeded")
    event["livemode"] = True
    return event


SUBJECT = Subject(1, "stripe", "stripe", "pi_1", "cus_1", None, {"convert_experiments": "1-2"})


@dataclass
class Fixed:
    answer: Answer
    asked: int = 0

    def find(self, subject: Subject) -> Answer:
        self.asked += 1
        return self.answer


def test_the_first_place_that_finds_pairs_wins_and_later_places_are_not_asked() -> None:
    first = Fixed(Absent(Reason.NO_EXPERIMENT_DATA, "nothing on the order"))
    second = Fixed(Found(("3-4",), "customer metadata", "plain"))
    third = Fixed(Found(("5-6",), "exposure store", "plain"))
    answer = Chain([first, second, third]).find(SUBJECT)
    assert answer == Found(("3-4",), "customer metadata", "plain")
    assert (first.asked, second.asked, third.asked) == (1, 1, 0)


def test_found_beats_not_yet_wherever_it_is() -> None:
    later = Fixed(NotYet(2_000.0, "customer API timed out"))
    found = Fixed(Found(("1-2",), "exposure store", "plain", visitor_id="1004"))
    answer = Chain([later, found]).find(SUBJECT)
    assert isinstance(answer, Found) and answer.visitor_id == "1004"


def test_without_pairs_the_earliest_not_yet_decides_and_names_every_wait() -> None:
    chain = Chain(
        [
            Fixed(NotYet(3_000.0, "exposures may still arrive")),
            Fixed(Absent(Reason.NO_EXPERIMENT_DATA, "nothing on the order")),
            Fixed(NotYet(2_000.0, "customer API timed out")),
        ]
    )
    assert chain.find(SUBJECT) == NotYet(
        2_000.0, "exposures may still arrive; customer API timed out"
    )


def test_nothing_anywhere_names_every_place_and_malformed_data_outranks_none() -> None:
    none = Chain(
        [
            Fixed(Absent(Reason.NO_EXPERIMENT_DATA, "nothing on the order")),
            Fixed(Absent(Reason.NO_EXPERIMENT_DATA, "no exposures")),
        ]
    ).find(SUBJECT)
    assert none == Absent(Reason.NO_EXPERIMENT_DATA, "nothing on the order; no exposures")
    bad = Chain(
        [
            Fixed(Absent(Reason.NO_EXPERIMENT_DATA, "nothing on the order")),
            Fixed(Absent(Reason.MALFORMED_EXPERIMENT_DATA, "cookie unreadable")),
        ]
    ).find(SUBJECT)
    assert bad == Absent(
        Reason.MALFORMED_EXPERIMENT_DATA, "nothing on the order; cookie unreadable"
    )


def test_a_lone_place_answers_unchanged() -> None:
    only = Absent(Reason.MALFORMED_EXPERIMENT_DATA, "'convert_experiments' holds no pair")
    assert Chain([Fixed(only)]).find(SUBJECT) is only


def test_an_empty_chain_is_refused() -> None:
    try:
        Chain([])
    except ValueError as exc:
        assert "at least one lookup" in str(exc)
    else:
        raise AssertionError("an empty chain was accepted")


def test_the_order_lookup_reads_the_sources_key_and_says_where() -> None:
    keys = {"stripe": "ab_tests"}
    lookup = OrderAttributes(lambda source: keys.get(source, "convert_experiments"), 2)
    subject = Subject(1, "stripe", "stripe", "pi_1", None, None, {"ab_tests": "1-2,3-4,5-6"})
    found = lookup.find(subject)
    assert found == Found(
        ("1-2", "3-4"),
        "order attribute 'ab_tests'",
        "plain",
        note="kept the first 2 of 3 experiment pairs",
    )
    other = Subject(2, "shop", "shopify", "1", None, None, {"ab_tests": "1-2"})
    assert lookup.find(other) == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "no 'convert_experiments', '__data', '_conv_attrs' or '_conv_v' attribute on the order",
    )


def test_a_not_yet_leaves_the_event_pending_until_then_without_counting_an_attempt(
    service: Service,
) -> None:
    """Through a real round: the planner turns "not yet" into pending, due at that time."""
    due = service.clock.now() + 900
    assert service.post_stripe(live_payment()).json["events"][0]["state"] == "pending"
    rt = service.runtime
    waiting = Dispatcher(
        rt.engine,
        rt.settings,
        rt.client,
        rt.clock,
        chain=Chain([Fixed(NotYet(due, "customer API timed out"))]),
    )
    try:
        assert waiting.run_once() == 1
    finally:
        waiting.stop(timeout=1)
    with rt.engine.connect() as conn:
        row = conn.execute(select(events)).one()
    assert (row.state, row.reason_code, row.reason) == (
        EventState.PENDING,
        Reason.LOOKUP_LATER,
        "customer API timed out",
    )
    assert (row.next_attempt_at, row.attempts, row.lease_owner) == (due, 0, None)
    assert service.drain() == 0  # not due yet: the service's own dispatcher leaves it


def test_a_not_yet_does_not_hide_data_that_arrived_during_the_round(service: Service) -> None:
    """The revision guard: a delivery that added data while the round looked is not
    overwritten by the round's "not yet"; the event stays due now."""
    assert service.post_stripe(live_payment()).json["events"][0]["state"] == "pending"
    rt = service.runtime

    class Racing:
        def find(self, subject: Subject) -> Answer:
            with transaction(rt.engine) as conn:  # a new delivery merging data meanwhile
                conn.execute(
                    update(events).values(
                        revision=events.c.revision + 1,
                        attributes=json.dumps({"convert_experiments": "1-2"}),
                    )
                )
            return NotYet(rt.clock.now() + 900, "customer API timed out")

    racing = Dispatcher(rt.engine, rt.settings, rt.client, rt.clock, chain=Chain([Racing()]))
    try:
        assert racing.run_once() == 1
    finally:
        racing.stop(timeout=1)
    with rt.engine.connect() as conn:
        row = conn.execute(select(events)).one()
    assert (row.state, row.next_attempt_at, row.lease_owner) == (
        EventState.PENDING,
        rt.clock.now(),
        None,
    )


def test_a_not_yet_that_lasts_past_the_retry_horizon_ends_the_wait(service: Service) -> None:
    """A platform API that keeps failing (a revoked key) does not keep the event pending for
    ever: past the retry horizon it is dead with the reason, and replayable."""
    assert service.post_stripe(live_payment()).json["events"][0]["state"] == "pending"
    rt = service.runtime
    horizon = rt.settings.dispatcher.retry_horizon_seconds
    waiting = Dispatcher(
        rt.engine,
        rt.settings,
        rt.client,
        rt.clock,
        chain=Chain([Fixed(NotYet(rt.clock.now() + 10**9, "customer API answered 401"))]),
    )
    try:
        service.clock.advance(horizon - 1)
        assert waiting.run_once() == 1
        with rt.engine.connect() as conn:
            assert conn.execute(select(events.c.state)).scalar_one() == "pending"
        with rt.engine.begin() as conn:  # due again now
            conn.execute(update(events).values(next_attempt_at=rt.clock.now()))
        service.clock.advance(1)
        assert waiting.run_once() == 1
    finally:
        waiting.stop(timeout=1)
    with rt.engine.connect() as conn:
        row = conn.execute(select(events)).one()
    assert (row.state, row.reason_code, row.reason) == (
        "dead",
        "retries_exhausted",
        "gave up waiting for the experiment data: customer API answered 401",
    )
